//! Per-thread free lists: memory a request needs and gives back, kept
//! for the thread's next request instead of freed.
//!
//! At many requests in flight, the allocator's own per-thread cache
//! (seven blocks a size, in glibc) runs out, and each allocation and free
//! goes through its bins: a few hundred instructions a pair. A
//! [`FreeList`] is one thread's (no lock, no atomic) and keeps at most
//! [`KEEP`] items. What a list keeps must hold nothing alive: its users
//! empty an item before they keep it. The driver service keeps its
//! futures' blocks this way, the response its parts.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Items a list keeps at most: enough for the requests a worker thread
/// has in flight at once in most services; more are dropped.
pub(crate) const KEEP: usize = 64;

/// One thread's free list of `T`, in a `thread_local!`.
pub(crate) struct FreeList<T>(RefCell<Vec<T>>);

impl<T> FreeList<T> {
    /// An empty list.
    pub(crate) const fn new() -> FreeList<T> {
        FreeList(RefCell::new(Vec::new()))
    }

    /// An item kept here, the last kept first.
    #[inline(always)]
    pub(crate) fn take(&self) -> Option<T> {
        self.0.try_borrow_mut().ok()?.pop()
    }

    /// Keeps `item` for the next [`take`](Self::take); drops it when the
    /// list holds [`KEEP`] items already.
    #[inline(always)]
    pub(crate) fn keep(&self, item: T) {
        if let Ok(mut list) = self.0.try_borrow_mut()
            && list.len() < KEEP
        {
            list.push(item);
        }
    }

    /// [`take`](Self::take) from this thread's list in `key` (none once
    /// the thread's list is gone, at thread exit).
    #[inline(always)]
    pub(crate) fn take_from(key: &'static LocalKey<FreeList<T>>) -> Option<T> {
        key.try_with(FreeList::take).ok().flatten()
    }

    /// [`keep`](Self::keep) in this thread's list in `key` (dropped once
    /// the thread's list is gone, at thread exit).
    #[inline(always)]
    pub(crate) fn keep_in(key: &'static LocalKey<FreeList<T>>, item: T) {
        let _ = key.try_with(move |list| list.keep(item));
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;

    thread_local! {
        static LIST: FreeList<Box<u32>> = const { FreeList::new() };
    }

    /// What a thread keeps it takes back, last first; past `KEEP` items
    /// are dropped, not kept; another thread has a list of its own.
    #[test]
    fn a_thread_takes_back_what_it_kept_up_to_keep_items() {
        assert_eq!(FreeList::take_from(&LIST), None);
        for i in 0..KEEP as u32 + 3 {
            FreeList::keep_in(&LIST, Box::new(i));
        }
        std::thread::spawn(|| assert_eq!(FreeList::take_from(&LIST), None))
            .join()
            .unwrap();
        let mut taken = Vec::new();
        while let Some(b) = FreeList::take_from(&LIST) {
            taken.push(*b);
        }
        let expected: Vec<u32> = (0..KEEP as u32).rev().collect();
        assert_eq!(taken, expected);
    }
}
