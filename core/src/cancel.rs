//! Why an attempt was cancelled, told to the attempt as it is dropped.
//!
//! A future that is dropped cannot be told why. The layers that cancel an
//! attempt on purpose (the per-attempt timeout, the hedge dropping the
//! attempts that lost its race) drop it inside [`cancelling`], and the
//! [`DriverService`](crate::DriverService), whose attempt emits its
//! [`AttemptEvent`](crate::event::AttemptEvent) as it is dropped, reads the
//! reason with [`reason`]; an attempt dropped outside any such scope was
//! dropped by the caller. The reason lives in a thread-local cell for the
//! length of the synchronous drop: nothing is allocated, nothing is
//! locked.
//!
//! ```
//! use tower_cql_core::cancel::{cancelling, reason, CancelReason};
//!
//! assert_eq!(reason(), CancelReason::Dropped);
//! let seen = cancelling(CancelReason::TimedOut, reason);
//! assert_eq!(seen, CancelReason::TimedOut);
//! // scopes nest and restore what was there before
//! cancelling(CancelReason::LostRace, || {
//!     assert_eq!(cancelling(CancelReason::TimedOut, reason), CancelReason::TimedOut);
//!     assert_eq!(reason(), CancelReason::LostRace);
//! });
//! assert_eq!(reason(), CancelReason::Dropped);
//! ```

use std::cell::Cell;

/// Why an attempt ended before it completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CancelReason {
    /// The per-attempt timeout fired.
    TimedOut,
    /// The request's deadline passed.
    DeadlinePassed,
    /// Another attempt of the same request (a hedge) answered first.
    LostRace,
    /// The caller dropped the request (or a layer above did, for no
    /// reason it told).
    Dropped,
}

impl CancelReason {
    /// A stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            CancelReason::TimedOut => "timed_out",
            CancelReason::DeadlinePassed => "deadline_passed",
            CancelReason::LostRace => "lost_race",
            CancelReason::Dropped => "dropped",
        }
    }
}

thread_local! {
    static REASON: Cell<Option<CancelReason>> = const { Cell::new(None) };
}

/// Runs `f` (which drops what it cancels) with `why` as the reason any
/// attempt dropped meanwhile on this thread was cancelled.
pub fn cancelling<R>(why: CancelReason, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<CancelReason>);
    impl Drop for Restore {
        fn drop(&mut self) {
            REASON.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(REASON.with(|r| r.replace(Some(why))));
    f()
}

/// Why an attempt being dropped now is cancelled:
/// [`CancelReason::Dropped`] outside [`cancelling`].
pub fn reason() -> CancelReason {
    REASON.with(Cell::get).unwrap_or(CancelReason::Dropped)
}
