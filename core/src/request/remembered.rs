//! The prepared statement a [`Statement`](super::Statement) remembers
//! for the driver service that ran it first, and the fresh one that takes
//! its place once it is outdated (its table made again with another
//! type for a column).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use scylla::statement::prepared::PreparedStatement;

/// The `driver` of an entry another took the place of (driver services'
/// ids start at 1).
const SUPERSEDED: u64 = 0;

/// A prepared statement remembered for driver service `driver` (its id)
/// in the session keyspace `keyspace`; once outdated, `next` holds the
/// one that takes its place and `driver` is [`SUPERSEDED`], so the check
/// a kept statement's request makes (its driver and keyspace) is the
/// same one load, and only a request that misses walks on. The chain
/// grows by one entry each time the statement's table is made again with
/// another type.
pub(crate) struct Remembered {
    driver: AtomicU64,
    keyspace: Option<Arc<String>>,
    prepared: PreparedStatement,
    next: OnceLock<Box<Remembered>>,
}

impl Remembered {
    /// `prepared`, remembered for `driver` in `keyspace`.
    pub(crate) fn new(
        driver: u64,
        keyspace: Option<Arc<String>>,
        prepared: PreparedStatement,
    ) -> Remembered {
        Remembered {
            driver: AtomicU64::new(driver),
            keyspace,
            prepared,
            next: OnceLock::new(),
        }
    }

    /// The statement remembered for `driver` in `keyspace`, if it is.
    #[inline(always)]
    pub(crate) fn get(&self, driver: u64, keyspace: Option<&str>) -> Option<&PreparedStatement> {
        if self.is_for(driver, keyspace) {
            return Some(&self.prepared);
        }
        self.get_superseding(driver, keyspace)
    }

    #[inline(always)]
    fn is_for(&self, driver: u64, keyspace: Option<&str>) -> bool {
        self.driver.load(Ordering::Relaxed) == driver
            && self.keyspace.as_deref().map(String::as_str) == keyspace
    }

    /// [`get`](Self::get) past this entry, when another took its place.
    #[cold]
    #[inline(never)]
    fn get_superseding(&self, driver: u64, keyspace: Option<&str>) -> Option<&PreparedStatement> {
        let live = self.live()?;
        live.is_for(driver, keyspace).then_some(&live.prepared)
    }

    /// The entry no other took the place of (`None` while one that took
    /// a place is not visible yet: the caller then does without).
    fn live(&self) -> Option<&Remembered> {
        let mut at = self;
        while at.driver.load(Ordering::Acquire) == SUPERSEDED {
            at = at.next.get()?;
        }
        Some(at)
    }

    /// Puts `fresh()` in the place of the statement remembered for `driver`
    /// in `keyspace`, if one is and `outdated` says it is; returns whether
    /// it did (another task may have first).
    pub(crate) fn supersede(
        &self,
        driver: u64,
        keyspace: Option<&str>,
        outdated: impl FnOnce(&PreparedStatement) -> bool,
        fresh: impl FnOnce() -> PreparedStatement,
    ) -> bool {
        let Some(live) = self.live() else {
            return false;
        };
        if !live.is_for(driver, keyspace) || !outdated(&live.prepared) {
            return false;
        }
        let next = Remembered::new(driver, live.keyspace.clone(), fresh());
        if live.next.set(Box::new(next)).is_err() {
            return false;
        }
        live.driver.store(SUPERSEDED, Ordering::Release);
        true
    }
}
