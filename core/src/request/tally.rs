//! What a request carries from the stack it is in, for the driver
//! service: the stack's collectors, and the tally of its attempts.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::Collectors;

/// A request's link to its stack, in one pointer (a request without one
/// is no larger, and moves and clones no more, for the tally's sake).
pub(crate) struct StackLink {
    /// The stack's collectors, which its gate gives its requests (see
    /// [`crate::GateService`]): the driver service emits attempt events
    /// there, so a stack's events go to one set whatever the driver
    /// service was built with.
    pub(crate) collectors: Option<Collectors>,
    /// Where the driver service counts the request's attempts, when a
    /// layer asked ([`CqlRequest::count_attempts`](crate::CqlRequest::count_attempts)):
    /// `None` in the link a gate shares among all its requests.
    pub(crate) attempts: Option<AtomicU32>,
    /// For a `USE`, a hold on the gate that admitted it: a `USE` runs to
    /// its end in a task of its own, which keeps a clone of the request
    /// (see `driver::attempt::run_use`), so the gate counts it until it
    /// ends, even after its caller stopped waiting, and `close()` waits
    /// for it (see [`CqlRequest::hold_gate`](crate::CqlRequest::hold_gate)).
    pub(crate) gate: std::sync::OnceLock<crate::gate::GateGuard>,
}

impl StackLink {
    /// The link a gate gives every request it admits: its collectors,
    /// no tally.
    pub(crate) fn shared(collectors: Collectors) -> Arc<StackLink> {
        Arc::new(StackLink {
            collectors: Some(collectors),
            attempts: None,
            gate: std::sync::OnceLock::new(),
        })
    }
}

/// Counts the attempts the [`DriverService`](crate::DriverService) starts
/// for one logical request (its retries and a hedge's speculative
/// attempts included: they are clones of the request, and share the
/// tally it carries): one for each attempt event, counted where the
/// attempt is armed to report itself, however it ends.
///
/// For a layer that must know, when the request is dropped, how many
/// attempts the layers below it had started, and cannot ask them (they
/// are generic, and dropped after it): the metrics layer gives one to
/// each request it measures ([`CqlRequest::count_attempts`]). It is an
/// allocation per request and an atomic add per attempt, so the stack's
/// lean composition, which reads the count its retries keep, has none.
///
/// ```
/// use tower_cql_core::CqlRequest;
///
/// let mut req = CqlRequest::query("SELECT v FROM ks.t WHERE k = 1");
/// let tally = req.count_attempts();
/// // (the driver service counts each attempt it starts for `req`)
/// assert_eq!(tally.started(), 0);
/// req.attempt_tally().unwrap().count();
/// assert_eq!(tally.started(), 1);
/// ```
///
/// [`CqlRequest::count_attempts`]: crate::CqlRequest::count_attempts
#[derive(Clone)]
pub struct AttemptTally(pub(crate) Arc<StackLink>);

impl AttemptTally {
    /// Attempts started so far.
    pub fn started(&self) -> u32 {
        self.0
            .attempts
            .as_ref()
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }

    /// One more attempt started: what the driver service does as each
    /// attempt of the request starts (and what a service standing in for
    /// it, a test's, should do, with
    /// [`CqlRequest::attempt_tally`](crate::CqlRequest::attempt_tally)).
    pub fn count(&self) {
        if let Some(a) = &self.0.attempts {
            a.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for AttemptTally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AttemptTally")
            .field(&self.started())
            .finish()
    }
}
