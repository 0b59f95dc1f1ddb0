//! [`Registry`]: a concurrent map for read-mostly keyed state, read
//! without locks and written by read-copy-update.
//!
//! ```
//! use std::sync::Arc;
//! use tower_cql_core::registry::Registry;
//!
//! let handles: Registry<&str, Arc<String>> = Registry::new();
//! // First use registers the value; later uses find it with one atomic load.
//! let a = handles.get_or_insert_with("get_user", || Arc::new("handle".to_string()));
//! let b = handles.get_or_insert_with("get_user", || unreachable!("registered already"));
//! assert!(Arc::ptr_eq(&a, &b));
//! assert_eq!(handles.get("get_user").as_deref().map(String::as_str), Some("handle"));
//!
//! // A bound: nothing is added once `max` keys are registered.
//! assert!(handles.get_or_insert_bounded("put_user", 1, || Arc::new("x".into())).is_none());
//!
//! // Removal, conditional on the value found.
//! assert!(handles.remove_if("get_user", |v| Arc::ptr_eq(v, &a)));
//! assert!(handles.is_empty());
//! ```
//!
//! The map behind a registry is immutable: a lookup is one `ArcSwap` load
//! and a hash probe, with no lock and no reference count touched; a write
//! copies the map, changes the copy and swaps it in (retrying if another
//! write came first). Writes cost O(n), so a registry suits keys that are
//! added rarely and read on every request: label sets, prepared
//! statements, a cluster's nodes. Every tower-cql map of that kind is one.
//!
//! Keys are hashed with foldhash, not SipHash (lookups are on the request
//! path): use a registry for keys the application or the cluster chose,
//! not for data a remote party controls.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use crate::sync::{Swap, SwapGuard};

/// foldhash: fast, and seeded per process (a little resistance to
/// flooding, though keys here are never a remote party's data).
type Map<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;

/// A key's borrowed view: look a key up by something that hashes and
/// compares like it, without building the key (every `Q` that `K`
/// borrows as is one). Re-exported from `hashbrown`.
pub use hashbrown::Equivalent;

/// A concurrent map read without locks and written by read-copy-update;
/// see the [module docs](self).
pub struct Registry<K, V> {
    map: Swap<Map<K, V>>,
}

impl<K, V> fmt::Debug for Registry<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("len", &self.len())
            .finish()
    }
}

impl<K, V> Default for Registry<K, V> {
    fn default() -> Registry<K, V> {
        Registry::new()
    }
}

impl<K, V> Registry<K, V> {
    /// An empty registry.
    pub fn new() -> Registry<K, V> {
        Registry {
            map: Swap::from_pointee(Map::default()),
        }
    }

    /// The number of entries now.
    pub fn len(&self) -> usize {
        self.map.load().len()
    }

    /// Whether the registry has no entry now.
    pub fn is_empty(&self) -> bool {
        self.map.load().is_empty()
    }

    /// The entries as they are now: a consistent view that later writes
    /// do not change. It pins the map it views (like an `arc_swap` guard):
    /// hold it briefly.
    pub fn snapshot(&self) -> Snapshot<K, V> {
        Snapshot {
            map: self.map.load(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Registry<K, V> {
    /// The value of `key`, cloned: one atomic load and a hash probe.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.map.load().get(key).cloned()
    }

    /// Whether `key` has a value.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.map.load().contains_key(key)
    }

    /// The value of `key`, inserting `make()` if it has none. When
    /// several threads insert the same key at once, one value wins and
    /// every caller gets it. `make` runs at most once, and only if `key`
    /// was missing.
    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> V {
        match self.get_or_insert_bounded(key, usize::MAX, make) {
            Some(v) => v,
            None => unreachable!("no bound to reach"),
        }
    }

    /// [`get_or_insert_with`](Self::get_or_insert_with), except that
    /// nothing is inserted once the registry holds `max` entries: then a
    /// missing key gives `None` (and `make` does not run).
    pub fn get_or_insert_bounded(&self, key: K, max: usize, make: impl FnOnce() -> V) -> Option<V> {
        if let Some(v) = self.map.load().get(&key) {
            return Some(v.clone());
        }
        let mut make = Some(make);
        let mut made: Option<V> = None;
        let mut chosen: Option<V> = None;
        self.map.rcu(|map| {
            if let Some(v) = map.get(&key) {
                chosen = Some(v.clone());
                return Arc::clone(map);
            }
            if map.len() >= max {
                chosen = None;
                return Arc::clone(map);
            }
            let v = match &made {
                Some(v) => v.clone(),
                None => {
                    let make = make.take().expect("made once");
                    made.insert(make()).clone()
                }
            };
            chosen = Some(v.clone());
            let mut next = Map::clone(map);
            next.insert(key.clone(), v);
            Arc::new(next)
        });
        chosen
    }

    /// Sets `key` to `value`. If `key` is new and the registry holds
    /// `capacity` entries already, an arbitrary entry is evicted first.
    pub fn insert_evicting(&self, key: K, value: V, capacity: usize) {
        self.map.rcu(|map| {
            let mut next = Map::clone(map);
            if next.len() >= capacity
                && !next.contains_key(&key)
                && let Some(k) = next.keys().next().cloned()
            {
                next.remove(&k);
            }
            next.insert(key.clone(), value.clone());
            Arc::new(next)
        });
    }

    /// Removes `key` if its value satisfies `pred`; whether it did.
    pub fn remove_if<Q>(&self, key: &Q, mut pred: impl FnMut(&V) -> bool) -> bool
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        let mut removed = false;
        self.map.rcu(|map| {
            removed = map.get(key).is_some_and(&mut pred);
            if !removed {
                return Arc::clone(map);
            }
            let mut next = Map::clone(map);
            next.remove(key);
            Arc::new(next)
        });
        removed
    }
}

/// The entries of a [`Registry`] at one moment; see
/// [`Registry::snapshot`].
pub struct Snapshot<K, V> {
    map: SwapGuard<Map<K, V>>,
}

impl<K, V> fmt::Debug for Snapshot<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("len", &self.len())
            .finish()
    }
}

impl<K, V> Snapshot<K, V> {
    /// The number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.map.iter()
    }

    /// The keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.map.keys()
    }

    /// The values, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.map.values()
    }
}

impl<K: Hash + Eq, V> Snapshot<K, V> {
    /// The value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.map.get(key)
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn get_or_insert_makes_once_and_keeps_the_first() {
        let r: Registry<String, Arc<u32>> = Registry::new();
        let made = AtomicUsize::new(0);
        let make = |v| {
            made.fetch_add(1, Ordering::Relaxed);
            Arc::new(v)
        };
        let a = r.get_or_insert_with("k".into(), || make(1));
        let b = r.get_or_insert_with("k".into(), || make(2));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(made.load(Ordering::Relaxed), 1);
        assert_eq!(r.get("k").as_deref(), Some(&1));
        assert!(r.contains_key("k"));
        assert!(!r.contains_key("nope"));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn bounded_refuses_new_keys_when_full_without_making() {
        let r: Registry<u32, u32> = Registry::new();
        assert_eq!(r.get_or_insert_bounded(1, 2, || 10), Some(10));
        assert_eq!(r.get_or_insert_bounded(2, 2, || 20), Some(20));
        assert_eq!(r.get_or_insert_bounded(3, 2, || panic!("full")), None);
        // a key present is found even when full
        assert_eq!(
            r.get_or_insert_bounded(1, 2, || panic!("present")),
            Some(10)
        );
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn insert_evicting_keeps_the_capacity() {
        let r: Registry<u32, u32> = Registry::new();
        for k in 0..10 {
            r.insert_evicting(k, k * 10, 3);
            assert!(r.len() <= 3);
            assert_eq!(r.get(&k), Some(k * 10));
        }
        // overwriting a present key evicts nothing
        r.insert_evicting(9, 1, 3);
        assert_eq!(r.len(), 3);
        assert_eq!(r.get(&9), Some(1));
    }

    #[test]
    fn remove_if_checks_the_value() {
        let r: Registry<u32, u32> = Registry::new();
        r.get_or_insert_with(1, || 10);
        assert!(!r.remove_if(&1, |v| *v == 11));
        assert!(!r.remove_if(&2, |_| true));
        assert!(r.remove_if(&1, |v| *v == 10));
        assert!(r.is_empty());
    }

    #[test]
    fn snapshot_is_unchanged_by_later_writes() {
        let r: Registry<u32, u32> = Registry::new();
        r.get_or_insert_with(1, || 10);
        let snap = r.snapshot();
        r.get_or_insert_with(2, || 20);
        assert_eq!(snap.len(), 1);
        assert_eq!(snap.get(&1), Some(&10));
        assert_eq!(snap.iter().collect::<Vec<_>>(), vec![(&1, &10)]);
        assert_eq!(r.snapshot().values().sum::<u32>(), 30);
        assert_eq!(r.snapshot().keys().count(), 2);
    }

    #[test]
    fn concurrent_inserts_agree_on_one_value() {
        let r: Arc<Registry<u32, Arc<usize>>> = Arc::new(Registry::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .map(|k| r.get_or_insert_with(k, || Arc::new(t)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let seen: Vec<Vec<Arc<usize>>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(r.len(), 100);
        for k in 0..100u32 {
            let winner = r.get(&k).unwrap();
            for s in &seen {
                assert!(Arc::ptr_eq(&s[k as usize], &winner));
            }
        }
    }
}

#[cfg(all(test, tower_cql_loom))]
mod loom_tests {
    use super::*;

    /// Two threads registering the same key at once get the same value,
    /// and the registry keeps exactly that one.
    #[test]
    fn loom_racing_inserts_agree() {
        loom::model(|| {
            let r: Arc<Registry<u32, Arc<u32>>> = Arc::new(Registry::new());
            let other = {
                let r = r.clone();
                loom::thread::spawn(move || r.get_or_insert_with(7, || Arc::new(1)))
            };
            let mine = r.get_or_insert_with(7, || Arc::new(2));
            let theirs = other.join().unwrap();
            assert!(Arc::ptr_eq(&mine, &theirs));
            assert!(Arc::ptr_eq(&r.get(&7).unwrap(), &mine));
            assert_eq!(r.len(), 1);
        });
    }

    /// A conditional removal racing a registration of another key loses
    /// neither write.
    #[test]
    fn loom_remove_and_insert_lose_nothing() {
        loom::model(|| {
            let r: Arc<Registry<u32, u32>> = Arc::new(Registry::new());
            r.get_or_insert_with(1, || 10);
            let other = {
                let r = r.clone();
                loom::thread::spawn(move || r.get_or_insert_with(2, || 20))
            };
            assert!(r.remove_if(&1, |v| *v == 10));
            assert_eq!(other.join().unwrap(), 20);
            assert_eq!(r.get(&1), None);
            assert_eq!(r.get(&2), Some(20));
        });
    }
}
