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
//!
//! // a layer that cancels one attempt learns the node it had gone to
//! use tower_cql_core::cancel::{cancel_attempt, tell_node};
//! let node = "10.0.0.1:9042".parse().unwrap();
//! let told = cancel_attempt(CancelReason::TimedOut, || tell_node(node));
//! assert_eq!(told, Some(node));
//! ```

use std::cell::Cell;
use std::net::SocketAddr;

use crate::error::ErrorKind;

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
    /// The kind of error an attempt (or request) cancelled for this reason
    /// ends with, in its event and its span: `ClientTimeout` for the
    /// per-attempt timeout, `DeadlineExceeded` for the deadline,
    /// `Cancelled` for a lost race or a caller that stopped waiting.
    pub const fn error_kind(self) -> ErrorKind {
        match self {
            CancelReason::TimedOut => ErrorKind::ClientTimeout,
            CancelReason::DeadlinePassed => ErrorKind::DeadlineExceeded,
            CancelReason::LostRace | CancelReason::Dropped => ErrorKind::Cancelled,
        }
    }

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
    /// The node the attempt being dropped had gone to, as it told.
    static NODE: Cell<Option<SocketAddr>> = const { Cell::new(None) };
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

/// Like [`cancelling`], for a layer that drops one attempt and wants to
/// know the node it had gone to (the per-attempt timeout names it in its
/// `ClientTimeout`, so a retry avoids that node): the node the attempt
/// told with [`tell_node`] as it was dropped, if it knew one.
pub fn cancel_attempt(why: CancelReason, drop_it: impl FnOnce()) -> Option<SocketAddr> {
    NODE.with(|n| n.set(None));
    cancelling(why, drop_it);
    NODE.with(Cell::take)
}

/// Called by an attempt as it is dropped (the
/// [`DriverService`](crate::DriverService)'s does): the node it had gone
/// to, for [`cancel_attempt`].
pub fn tell_node(node: SocketAddr) {
    NODE.with(|n| n.set(Some(node)));
}
