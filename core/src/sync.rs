//! std or loom primitives, chosen by `--cfg tower_cql_loom`.
//!
//! Under loom, [`Swap`] (an `ArcSwap` normally) becomes a loom mutex around
//! an `Arc`, with the same `load` / `rcu` semantics, so that loom can explore
//! every interleaving of the code that uses it. `ArcSwap` itself is
//! verified by its own test suite.

#[cfg(not(tower_cql_loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(tower_cql_loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};

#[cfg(not(tower_cql_loom))]
pub(crate) type Swap<T> = arc_swap::ArcSwap<T>;

/// What [`Swap::load`] returns: an `arc_swap` guard (no reference count
/// touched), or under loom an `Arc`.
#[cfg(not(tower_cql_loom))]
pub(crate) type SwapGuard<T> = arc_swap::Guard<std::sync::Arc<T>>;

#[cfg(tower_cql_loom)]
pub(crate) type SwapGuard<T> = std::sync::Arc<T>;

#[cfg(tower_cql_loom)]
pub(crate) use loom_swap::Swap;

#[cfg(tower_cql_loom)]
mod loom_swap {
    use std::sync::Arc;

    /// `ArcSwap`'s interface over a loom mutex.
    #[derive(Debug)]
    pub(crate) struct Swap<T>(loom::sync::Mutex<Arc<T>>);

    impl<T> Swap<T> {
        pub(crate) fn from_pointee(v: T) -> Swap<T> {
            Swap(loom::sync::Mutex::new(Arc::new(v)))
        }

        pub(crate) fn load(&self) -> Arc<T> {
            self.0.lock().unwrap().clone()
        }

        pub(crate) fn load_full(&self) -> Arc<T> {
            self.load()
        }

        pub(crate) fn rcu<R: Into<Arc<T>>>(&self, mut f: impl FnMut(&Arc<T>) -> R) -> Arc<T> {
            let mut cur = self.0.lock().unwrap();
            let new = f(&cur).into();
            std::mem::replace(&mut *cur, new)
        }
    }
}
