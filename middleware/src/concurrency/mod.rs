//! Concurrency limits: a fixed limit with a bounded wait queue, and an
//! adaptive (AIMD) limit in [`adaptive`].
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_cql_core::{Collectors, CqlError, CqlRequest, ErrorKind};
//! use tower_cql_middleware::concurrency::{ConcurrencyConfig, ConcurrencyLimitLayer};
//! use tower_layer::Layer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = ConcurrencyLimitLayer::new(
//!     ConcurrencyConfig {
//!         max_in_flight: 1,
//!         max_queue: 0, // no queue: refuse when full
//!         queue_timeout: None,
//!     },
//!     Collectors::new(),
//! )?;
//! let inner = service_fn(|_req: CqlRequest| async { Ok::<_, CqlError>("done") });
//! let mut a = layer.layer(inner);
//! let mut b = a.clone();
//! let req = || CqlRequest::query("SELECT v FROM ks.t WHERE k = 1");
//!
//! let first = a.ready().await?.call(req()); // holds the only slot until it completes
//! assert_eq!(layer.in_flight(), 1);
//! let err = b.ready().await?.call(req()).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::Shed);
//! assert_eq!(first.await?, "done");
//! assert_eq!(layer.in_flight(), 0);
//! # Ok(()) }
//! ```
//!
//! # One limit for the whole layer
//! The limit is shared by every service a [`ConcurrencyLimitLayer`] makes
//! and every clone of them: `max_in_flight` bounds the process (for that
//! layer). tower's `ConcurrencyLimitLayer` makes a new semaphore for each
//! `layer()` call, so services built from one layer do not share a limit.
//!
//! # Admission and the queue
//! A request takes a slot in `poll_ready` (reserved there, used by `call`,
//! released when the response future completes or is dropped). When none
//! is free it joins the queue and `poll_ready` is pending until a slot
//! frees (backpressure). The queue is bounded:
//! - with `max_queue` requests already waiting, the call fails at once
//!   with [`ErrorKind::Shed`];
//! - a request that waited `queue_timeout` fails with `Shed` ("timed out in
//!   the queue");
//! - the wait happens before the request is known, so its deadline is
//!   checked when it gets its slot: a request whose deadline passed while
//!   it queued fails with `Shed` and its slot is released at once.
//!
//! Slots are counted with atomics (a compare-and-swap admits a request)
//! and waiters sleep on a `tokio::sync::Notify`, registered before they
//! re-check the count so that no release is missed. `Notify` wakes the
//! oldest waiter first; a request arriving just as a slot frees may take it
//! before the woken waiter does (no strict FIFO). A `tokio::sync::Semaphore`
//! is not used because waiting on it from `poll_ready` needs its unnamed
//! acquire future boxed (tower does it through tokio-util's
//! `PollSemaphore`); `Notify::notified_owned` gives a named future, kept in
//! one reusable box per service clone. The same core serves the adaptive
//! limit, whose limit moves.
//!
//! # Observing it
//! [`ConcurrencyLimitLayer::in_flight`] and [`ConcurrencyLimitLayer::queued`]
//! (and the same on the service) read the counters. Every request that
//! waited or was refused emits
//! [`Event::Throttle`] with `limiter:
//! "concurrency_limit"`, the time it waited, whether it was refused, and
//! the queue depth behind it when it was admitted or refused.

pub mod adaptive;
pub mod future;
mod layer;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};
use tower_cql_core::event::ThrottleEvent;
use tower_cql_core::{Collectors, CqlError, CqlRequest, ErrorKind, Event};
use tower_service::Service;

use crate::config::ConfigError;

pub use self::adaptive::{
    AdaptiveAlgorithm, AdaptiveConcurrency, AdaptiveConcurrencyLayer, AdaptiveConfig,
};
pub use self::future::ResponseFuture;
pub use self::layer::ConcurrencyLimitLayer;

/// Configures a [`ConcurrencyLimitLayer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyConfig {
    /// Requests in flight at most (at least 1). Default 256.
    pub max_in_flight: usize,
    /// Requests that may wait for a slot; 0 refuses at once when full.
    /// Default 1024.
    pub max_queue: usize,
    /// The longest a request waits in the queue (`None`: no limit; not
    /// zero). Default 1 s.
    pub queue_timeout: Option<Duration>,
}

impl Default for ConcurrencyConfig {
    fn default() -> ConcurrencyConfig {
        ConcurrencyConfig {
            max_in_flight: 256,
            max_queue: 1024,
            queue_timeout: Some(Duration::from_secs(1)),
        }
    }
}

impl ConcurrencyConfig {
    /// Checks every field; the error names the field and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_in_flight == 0 {
            return Err(ConfigError::new(
                "concurrency.max_in_flight",
                "must be at least 1, got 0",
            ));
        }
        validate_queue_timeout("concurrency.queue_timeout", self.queue_timeout)
    }
}

pub(crate) fn validate_queue_timeout(
    field: &'static str,
    timeout: Option<Duration>,
) -> Result<(), ConfigError> {
    if timeout.is_some_and(|t| t.is_zero()) {
        return Err(ConfigError::new(
            field,
            "must be greater than zero, or None for no limit; got 0",
        ));
    }
    Ok(())
}

/// The counters and the wait list, shared by a layer and every service
/// it makes.
pub(crate) struct Core {
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    queued: AtomicUsize,
    max_queue: usize,
    queue_timeout: Option<Duration>,
    notify: Arc<Notify>,
    pub(crate) collectors: Collectors,
    /// `"concurrency_limit"` or `"adaptive"`, for events.
    limiter: &'static str,
    /// The adaptive algorithm's state, for the adaptive limit.
    pub(crate) adaptive: Option<adaptive::Aimd>,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyCore")
            .field("limiter", &self.limiter)
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .field("max_queue", &self.max_queue)
            .field("queue_timeout", &self.queue_timeout)
            .finish()
    }
}

impl Core {
    pub(crate) fn new(
        limiter: &'static str,
        limit: usize,
        max_queue: usize,
        queue_timeout: Option<Duration>,
        collectors: Collectors,
        adaptive: Option<adaptive::Aimd>,
    ) -> Core {
        Core {
            limit: AtomicUsize::new(limit),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            max_queue,
            queue_timeout,
            notify: Arc::new(Notify::new()),
            collectors,
            limiter,
            adaptive,
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Sets the limit (adaptive); wakes the waiters when it grew.
    pub(crate) fn set_limit(&self, from: usize, to: usize) -> bool {
        if self
            .limit
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        if to > from {
            self.notify.notify_waiters();
        }
        true
    }

    /// Takes a slot if one is free (the count is below the limit).
    fn try_acquire(self: &Arc<Core>) -> Option<Permit> {
        let mut cur = self.in_flight.load(Ordering::SeqCst);
        loop {
            if cur >= self.limit.load(Ordering::SeqCst) {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Some(Permit(self.clone())),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Joins the queue if it has room.
    fn try_enqueue(self: &Arc<Core>) -> Result<QueueSlot, usize> {
        let mut cur = self.queued.load(Ordering::SeqCst);
        loop {
            if cur >= self.max_queue {
                return Err(cur);
            }
            match self.queued.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Ok(QueueSlot(self.clone())),
                Err(actual) => cur = actual,
            }
        }
    }

    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        // SeqCst pairs with the waiter's `queued += 1` then re-check: either
        // we see the waiter and wake one, or it sees the freed slot.
        if self.queued.load(Ordering::SeqCst) > 0 {
            self.notify.notify_one();
        }
    }

    fn emit(&self, req: &CqlRequest, waited: Duration, rejected: bool, queue_depth: usize) {
        if self.collectors.is_active() {
            self.collectors.emit(Event::Throttle(ThrottleEvent {
                meta: req.meta(),
                limiter: self.limiter,
                waited,
                rejected,
                queue_depth,
            }));
        }
    }
}

/// A slot in flight; dropping it frees the slot and wakes a waiter.
pub(crate) struct Permit(Arc<Core>);

impl Permit {
    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.0
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Permit")
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A place in the queue; dropping it leaves the queue.
struct QueueSlot(Arc<Core>);

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    QueueFull,
    QueueTimeout(Duration),
}

enum AdmissionState {
    Idle,
    Waiting {
        since: Instant,
        _slot: QueueSlot,
    },
    Admitted {
        permit: Permit,
        waited: Duration,
        depth: usize,
    },
    Refused {
        refusal: Refusal,
        waited: Duration,
        depth: usize,
    },
}

/// What `poll_ready` decided, for `call`.
pub(crate) enum Decision {
    Admitted(Permit),
    Refused(CqlError),
}

/// One service clone's side of admission: its decision between
/// `poll_ready` and `call`, and its reusable wait future and timer.
pub(crate) struct Admission {
    core: Arc<Core>,
    state: AdmissionState,
    notified: Option<Pin<Box<OwnedNotified>>>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            AdmissionState::Idle => "idle",
            AdmissionState::Waiting { .. } => "waiting",
            AdmissionState::Admitted { .. } => "admitted",
            AdmissionState::Refused { .. } => "refused",
        };
        f.debug_struct("Admission")
            .field("core", &self.core)
            .field("state", &state)
            .finish()
    }
}

impl Admission {
    pub(crate) fn new(core: Arc<Core>) -> Admission {
        Admission {
            core,
            state: AdmissionState::Idle,
            notified: None,
            sleep: None,
        }
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// A new admission on the same core, holding nothing (for a clone of
    /// the service).
    pub(crate) fn fresh(&self) -> Admission {
        Admission::new(self.core.clone())
    }

    pub(crate) fn is_admitted(&self) -> bool {
        matches!(self.state, AdmissionState::Admitted { .. })
    }

    /// A fresh wait registration, enabled (in the wait list) before the
    /// caller re-checks the count, so that no release is missed.
    fn arm(&mut self) {
        let fresh = self.core.notify.clone().notified_owned();
        let n = match &mut self.notified {
            Some(n) => {
                n.set(fresh);
                n
            }
            None => self.notified.insert(Box::pin(fresh)),
        };
        n.as_mut().enable();
    }

    /// Leaves the wait list (a notification it got goes to the next waiter).
    fn disarm(&mut self) {
        if let Some(n) = &mut self.notified {
            n.set(self.core.notify.clone().notified_owned());
        }
    }

    /// Drives admission until a slot is held or the request is refused.
    pub(crate) fn poll_admit(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &self.state {
                AdmissionState::Admitted { .. } | AdmissionState::Refused { .. } => {
                    return Poll::Ready(());
                }
                AdmissionState::Idle => {
                    if let Some(permit) = self.core.try_acquire() {
                        self.state = AdmissionState::Admitted {
                            permit,
                            waited: Duration::ZERO,
                            depth: 0,
                        };
                        continue;
                    }
                    match self.core.try_enqueue() {
                        Ok(slot) => {
                            let since = Instant::now();
                            if let Some(t) = self.core.queue_timeout {
                                match &mut self.sleep {
                                    Some(s) => s.as_mut().reset(since + t),
                                    None => {
                                        self.sleep =
                                            Some(Box::pin(tokio::time::sleep_until(since + t)))
                                    }
                                }
                            }
                            self.arm();
                            self.state = AdmissionState::Waiting { since, _slot: slot };
                        }
                        Err(depth) => {
                            self.state = AdmissionState::Refused {
                                refusal: Refusal::QueueFull,
                                waited: Duration::ZERO,
                                depth,
                            };
                        }
                    }
                }
                AdmissionState::Waiting { since, .. } => {
                    let since = *since;
                    if let Some(permit) = self.core.try_acquire() {
                        self.disarm();
                        // The others still waiting (this one leaves the queue).
                        let depth = self.core.queued().saturating_sub(1);
                        self.state = AdmissionState::Admitted {
                            permit,
                            waited: Instant::now().saturating_duration_since(since),
                            depth,
                        };
                        continue;
                    }
                    let notified = self.notified.as_mut().expect("armed when waiting");
                    if notified.as_mut().poll(cx).is_ready() {
                        // Woken: register again, then re-check.
                        self.arm();
                        continue;
                    }
                    if let Some(t) = self.core.queue_timeout {
                        let sleep = self
                            .sleep
                            .as_mut()
                            .expect("set when waiting with a timeout");
                        ready!(sleep.as_mut().poll(cx));
                        self.disarm();
                        let depth = self.core.queued().saturating_sub(1);
                        self.state = AdmissionState::Refused {
                            refusal: Refusal::QueueTimeout(t),
                            waited: Instant::now().saturating_duration_since(since),
                            depth,
                        };
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Takes the decision for `req` and emits its event: a refusal, or an
    /// admission that waited (a request whose deadline passed while it
    /// waited is refused, and its slot released).
    pub(crate) fn decide(&mut self, req: &CqlRequest) -> Decision {
        match std::mem::replace(&mut self.state, AdmissionState::Idle) {
            AdmissionState::Admitted {
                permit,
                waited,
                depth,
            } => {
                if waited.is_zero() {
                    return Decision::Admitted(permit);
                }
                let deadline_passed = req
                    .meta()
                    .deadline()
                    .is_some_and(|d| tokio::time::Instant::from_std(d) <= Instant::now());
                if deadline_passed {
                    drop(permit);
                    self.core.emit(req, waited, true, depth);
                    return Decision::Refused(CqlError::new(
                        ErrorKind::Shed,
                        format!(
                            "{}: timed out in the queue: the request's deadline passed while it waited {waited:?} for a slot",
                            self.core.limiter
                        ),
                    ));
                }
                self.core.emit(req, waited, false, depth);
                Decision::Admitted(permit)
            }
            AdmissionState::Refused {
                refusal,
                waited,
                depth,
            } => {
                self.core.emit(req, waited, true, depth);
                let limiter = self.core.limiter;
                let message = match refusal {
                    Refusal::QueueFull => format!(
                        "{limiter}: {} requests in flight (limit {}) and {depth} queued (max_queue {})",
                        self.core.in_flight(),
                        self.core.limit(),
                        self.core.max_queue
                    ),
                    Refusal::QueueTimeout(t) => format!(
                        "{limiter}: timed out in the queue after {waited:?} (queue_timeout {t:?})"
                    ),
                };
                Decision::Refused(CqlError::new(ErrorKind::Shed, message))
            }
            AdmissionState::Idle | AdmissionState::Waiting { .. } => panic!(
                "{}: call without a ready poll_ready: poll_ready must return Ready first",
                self.core.limiter
            ),
        }
    }
}

/// Limits the requests in flight to its inner service, with a bounded
/// wait queue; see the [module docs](self).
#[derive(Debug)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    /// `None`: a pass-through.
    admission: Option<Admission>,
}

impl<S: Clone> Clone for ConcurrencyLimit<S> {
    /// A clone shares the limit; it holds no slot (call `poll_ready` on it
    /// before `call`).
    fn clone(&self) -> ConcurrencyLimit<S> {
        ConcurrencyLimit {
            inner: self.inner.clone(),
            admission: self.admission.as_ref().map(Admission::fresh),
        }
    }
}

impl<S> ConcurrencyLimit<S> {
    pub(crate) fn from_core(inner: S, core: Arc<Core>) -> ConcurrencyLimit<S> {
        ConcurrencyLimit {
            inner,
            admission: Some(Admission::new(core)),
        }
    }

    /// A service with no limit that only forwards to `inner` (see
    /// [`toggle`](crate::toggle)): it counts nothing and never queues.
    pub fn pass_through(inner: S) -> ConcurrencyLimit<S> {
        ConcurrencyLimit {
            inner,
            admission: None,
        }
    }

    /// Whether this service passes requests through unlimited.
    pub fn is_pass_through(&self) -> bool {
        self.admission.is_none()
    }

    /// Wraps `inner` with its own limit (use [`ConcurrencyLimitLayer`] to
    /// share one limit between several services).
    pub fn new(
        inner: S,
        config: ConcurrencyConfig,
        collectors: Collectors,
    ) -> Result<ConcurrencyLimit<S>, ConfigError> {
        Ok(ConcurrencyLimitLayer::new(config, collectors)?.service(inner))
    }

    /// Requests in flight (under this limit, across every clone; 0 for a
    /// pass-through, which counts nothing).
    pub fn in_flight(&self) -> usize {
        self.admission.as_ref().map_or(0, |a| a.core.in_flight())
    }

    /// Requests waiting for a slot (0 for a pass-through).
    pub fn queued(&self) -> usize {
        self.admission.as_ref().map_or(0, |a| a.core.queued())
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service (a held slot is released).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, R> Service<CqlRequest> for ConcurrencyLimit<S>
where
    S: Service<CqlRequest, Response = R, Error = CqlError>,
{
    type Response = R;
    type Error = CqlError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        let Some(admission) = &mut self.admission else {
            return self.inner.poll_ready(cx);
        };
        ready!(admission.poll_admit(cx));
        if admission.is_admitted() {
            self.inner.poll_ready(cx)
        } else {
            // Refused: the call fails without touching the inner service.
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, req: CqlRequest) -> Self::Future {
        let Some(admission) = &mut self.admission else {
            return ResponseFuture::pass_through(self.inner.call(req));
        };
        match admission.decide(&req) {
            Decision::Admitted(permit) => ResponseFuture::called(self.inner.call(req), permit),
            Decision::Refused(error) => ResponseFuture::refused(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;
    use tower::{ServiceExt, service_fn};
    use tower_cql_core::Collector;
    use tower_cql_core::event::OwnedEvent;
    use tower_layer::Layer;

    /// Keeps every throttle event.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<OwnedEvent>>);
    impl Collector for Recorder {
        fn on_throttle(&self, e: &ThrottleEvent<'_>) {
            self.0.lock().unwrap().push(Event::Throttle(*e).to_owned());
        }
    }
    impl Recorder {
        /// (waited, rejected, queue_depth) of each throttle event.
        fn throttles(&self) -> Vec<(Duration, bool, usize)> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .filter_map(|e| match e.as_event() {
                    Event::Throttle(t) => {
                        assert_eq!(t.limiter, "concurrency_limit");
                        Some((t.waited, t.rejected, t.queue_depth))
                    }
                    _ => None,
                })
                .collect()
        }
    }

    fn req() -> CqlRequest {
        CqlRequest::query("SELECT v FROM ks.t WHERE k = 1")
    }

    fn layer(
        max_in_flight: usize,
        max_queue: usize,
        queue_timeout: Option<Duration>,
    ) -> (ConcurrencyLimitLayer, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let collectors = Collectors::with([recorder.clone() as Arc<dyn Collector>]);
        let config = ConcurrencyConfig {
            max_in_flight,
            max_queue,
            queue_timeout,
        };
        (
            ConcurrencyLimitLayer::new(config, collectors).unwrap(),
            recorder,
        )
    }

    /// An inner service whose calls take `d`, counting the most in flight.
    fn slow(
        d: Duration,
        peak: Arc<AtomicUsize>,
    ) -> impl Service<CqlRequest, Response = (), Error = CqlError, Future: Send> + Clone + Send
    {
        let now = Arc::new(AtomicUsize::new(0));
        service_fn(move |_req: CqlRequest| {
            let now = now.clone();
            let peak = peak.clone();
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(d).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
    }

    fn poll_once<S: Service<CqlRequest, Error = CqlError>>(
        svc: &mut S,
    ) -> Poll<Result<(), CqlError>> {
        let waker = futures::task::noop_waker();
        svc.poll_ready(&mut Context::from_waker(&waker))
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_queue_a_full_limit_refuses_at_once() {
        let (layer, rec) = layer(2, 0, None);
        let peak = Arc::new(AtomicUsize::new(0));
        let svc = layer.layer(slow(Duration::from_millis(100), peak.clone()));
        let a = svc.clone().oneshot(req());
        let b = svc.clone().oneshot(req());
        let c = svc.clone().oneshot(req());
        let (a, b, c) = tokio::join!(a, b, c);
        assert!(a.is_ok() && b.is_ok());
        let err = c.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Shed);
        assert!(err.message().contains("max_queue 0"), "{err}");
        assert_eq!(rec.throttles(), vec![(Duration::ZERO, true, 0)]);
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(layer.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_is_bounded_and_its_depth_observed() {
        let (layer, rec) = layer(1, 2, None);
        let peak = Arc::new(AtomicUsize::new(0));
        let svc = layer.layer(slow(Duration::from_millis(100), peak.clone()));
        // One in flight, two queued.
        let running = tokio::spawn(svc.clone().oneshot(req()));
        tokio::task::yield_now().await;
        assert_eq!(layer.in_flight(), 1);
        let q1 = tokio::spawn(svc.clone().oneshot(req()));
        tokio::task::yield_now().await;
        let q2 = tokio::spawn(svc.clone().oneshot(req()));
        tokio::task::yield_now().await;
        assert_eq!(layer.queued(), 2);
        // The queue is full: refused at once, with the depth in the event.
        let err = svc.clone().oneshot(req()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Shed);
        assert_eq!(rec.throttles(), vec![(Duration::ZERO, true, 2)]);
        running.await.unwrap().unwrap();
        q1.await.unwrap().unwrap();
        q2.await.unwrap().unwrap();
        // The first waiter waited 100 ms with one behind it; the second 200 ms.
        assert_eq!(
            rec.throttles()[1..],
            [
                (Duration::from_millis(100), false, 1),
                (Duration::from_millis(200), false, 0)
            ]
        );
        assert_eq!(peak.load(Ordering::SeqCst), 1);
        assert_eq!((layer.in_flight(), layer.queued()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waiting_past_queue_timeout_is_shed() {
        let (layer, rec) = layer(1, 4, Some(Duration::from_millis(50)));
        let svc = layer.layer(slow(
            Duration::from_millis(100),
            Arc::new(AtomicUsize::new(0)),
        ));
        let running = tokio::spawn(svc.clone().oneshot(req()));
        tokio::task::yield_now().await;
        let t0 = Instant::now();
        let err = svc.clone().oneshot(req()).await.unwrap_err();
        assert_eq!(t0.elapsed(), Duration::from_millis(50));
        assert_eq!(err.kind(), ErrorKind::Shed);
        assert!(err.message().contains("timed out in the queue"), "{err}");
        assert_eq!(rec.throttles(), vec![(Duration::from_millis(50), true, 0)]);
        assert_eq!(layer.queued(), 0);
        running.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_that_passes_in_the_queue_is_shed_and_frees_the_slot() {
        let (layer, rec) = layer(1, 4, None);
        let svc = layer.layer(slow(
            Duration::from_millis(100),
            Arc::new(AtomicUsize::new(0)),
        ));
        let running = tokio::spawn(svc.clone().oneshot(req()));
        tokio::task::yield_now().await;
        let deadline = Instant::now() + Duration::from_millis(30);
        let err = svc
            .clone()
            .oneshot(req().deadline(deadline.into_std()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Shed);
        assert!(err.message().contains("timed out in the queue"), "{err}");
        assert_eq!(rec.throttles(), vec![(Duration::from_millis(100), true, 0)]);
        assert_eq!(layer.in_flight(), 0, "the slot was released");
        running.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn poll_ready_is_pending_while_queued_and_a_dropped_waiter_leaves_the_queue() {
        let (layer, _) = layer(1, 4, None);
        let mut a = layer.layer(slow(
            Duration::from_millis(100),
            Arc::new(AtomicUsize::new(0)),
        ));
        let mut b = a.clone();
        let mut c = a.clone();
        assert!(matches!(poll_once(&mut a), Poll::Ready(Ok(()))));
        assert_eq!(layer.in_flight(), 1, "reserved in poll_ready");
        assert!(poll_once(&mut b).is_pending());
        assert!(poll_once(&mut c).is_pending());
        assert_eq!(b.queued(), 2);
        drop(b);
        assert_eq!(layer.queued(), 1);
        // Dropping the ready service frees its slot for the waiter.
        drop(a);
        assert_eq!(layer.in_flight(), 0);
        assert!(matches!(poll_once(&mut c), Poll::Ready(Ok(()))));
        assert_eq!((layer.in_flight(), layer.queued()), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn services_made_by_one_layer_share_the_limit() {
        let (layer, _) = layer(1, 0, None);
        let peak = Arc::new(AtomicUsize::new(0));
        let mut a = layer.layer(slow(Duration::from_millis(10), peak.clone()));
        let mut b = layer.layer(slow(Duration::from_millis(10), peak));
        let fut = a.ready().await.unwrap().call(req());
        let err = b.ready().await.unwrap().call(req()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Shed);
        fut.await.unwrap();
        assert!(b.ready().await.unwrap().call(req()).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_than_the_limit_under_contention() {
        let (layer, _) = layer(3, 1000, None);
        let peak = Arc::new(AtomicUsize::new(0));
        let svc = layer.layer(slow(Duration::from_micros(200), peak.clone()));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    for _ in 0..20 {
                        svc.clone().oneshot(req()).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        assert_eq!((layer.in_flight(), layer.queued()), (0, 0));
    }

    #[test]
    fn config_validation_names_the_field() {
        assert_eq!(ConcurrencyConfig::default().validate(), Ok(()));
        let err = ConcurrencyConfig {
            max_in_flight: 0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.field, "concurrency.max_in_flight");
        assert!(err.message.contains("at least 1"));
        let err = ConcurrencyConfig {
            queue_timeout: Some(Duration::ZERO),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.field, "concurrency.queue_timeout");
        assert!(err.message.contains("greater than zero"));
        // No queue and no timeout are both allowed.
        assert!(
            ConcurrencyConfig {
                max_in_flight: 1,
                max_queue: 0,
                queue_timeout: None
            }
            .validate()
            .is_ok()
        );
    }
}
