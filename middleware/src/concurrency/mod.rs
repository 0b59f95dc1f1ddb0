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
//! );
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
//! # Where the wait happens: inside the request
//! `poll_ready` is the inner service's `poll_ready`: the limit takes
//! nothing there and never makes it wait, because a wait there comes
//! before the request exists — outside its latency, its span and its
//! deadline. `call` admits the request:
//! - a slot is free: it is taken (a compare-and-swap of the in-flight
//!   count) and the inner service called at once; the slot is released
//!   when the response future completes or is dropped;
//! - none is free and the queue has room: the request takes a place in
//!   the queue and its response future waits for a slot, then calls the
//!   inner service (which goes into the future, polled ready; the service
//!   keeps a clone, to be polled ready before its next call: the
//!   `mem::replace` idiom of tower's `Service` docs). The time queued is
//!   then part of the request: in the metrics layer's latency and the
//!   `cql.request` span above, and inside the shutdown gate;
//! - `max_queue` requests are already queued: the call fails at once with
//!   [`ErrorKind::Shed`].
//!
//! A queued request waits until the sooner of `queue_timeout` (then it
//! fails with `Shed`, "timed out in the queue") and its deadline (then it
//! fails with [`ErrorKind::DeadlineExceeded`], marked not sent), at that
//! moment. A response future dropped while queued (its caller gave up)
//! leaves the queue.
//!
//! # Backpressure
//! A caller that awaits its requests is held back by the futures it
//! awaits; the queue is bounded, so past `max_queue` waiting requests the
//! limit refuses rather than piling them up. Backpressure from below still
//! reaches the caller: `poll_ready` is pending while the inner service is.
//!
//! Under a load shedder, build the layer
//! [`for_load_shed`](ConcurrencyLimitLayer::for_load_shed) (the stack
//! builder does): then `poll_ready` takes the slot and is pending while
//! none is free, so the load shedder refuses the request instead of
//! letting it queue.
//!
//! # How it waits
//! Slots are counted with atomics and waiters sleep on a
//! `tokio::sync::Notify`: a queued request registers, then checks for a
//! slot again, and a release wakes one queued request; a `SeqCst` fence on
//! each side makes sure one of the two sees the other (the protocol and
//! its `loom` model are in `slots.rs`). `Notify` wakes the oldest waiter
//! first; a request arriving just as a slot frees may take it before the
//! woken waiter does (no strict FIFO). A `tokio::sync::Semaphore` is not
//! used because waiting on it needs its unnamed acquire future boxed;
//! `Notify::notified_owned` gives a named future, kept inside the response
//! future with the queue timer, so a queued request allocates nothing of
//! its own. The same core serves the adaptive limit, whose limit moves.
//!
//! # Observing it
//! [`ConcurrencyLimitLayer::in_flight`] and [`ConcurrencyLimitLayer::queued`]
//! (and the same on the service) read the counters. Every request that
//! waited or was refused emits [`Event::Throttle`](tower_cql_core::Event::Throttle)
//! with `limiter: "concurrency_limit"`, the time it waited, the queue
//! depth behind it when its wait ended, and `rejected` — whether it did
//! not get through: refused at once, timed out, its deadline passed, or
//! dropped by its caller while queued (the metrics layer reports that
//! request as cancelled). The event is emitted when the wait ends;
//! requests admitted at once emit nothing.

pub mod adaptive;
pub mod future;
mod layer;
mod slots;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tower_cql_core::{Collectors, CqlError, CqlRequest, ErrorKind, clock};
use tower_service::Service;

use self::slots::{Core, Permit, Watch};
use crate::config::ConfigError;
use crate::wait;

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
    /// zero, at most 100 years; `None` with `max_queue: 0`, where nothing
    /// waits). Default 1 s.
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
        validate_queue_timeout(
            "concurrency.queue_timeout",
            self.max_queue,
            self.queue_timeout,
        )
    }
}

/// A concurrency limit's (fixed or adaptive) queue timeout, `field`: not
/// zero, at most 100 years, and none without a queue (`max_queue` 0: no
/// request waits, so the timeout would bound nothing).
pub(crate) fn validate_queue_timeout(
    field: &'static str,
    max_queue: usize,
    timeout: Option<Duration>,
) -> Result<(), ConfigError> {
    crate::config::optional_limit(field, timeout, "no limit")?;
    match timeout {
        Some(t) if max_queue == 0 => Err(ConfigError::new(
            field,
            format!(
                "is {t:?}, the longest a request waits in the queue, but max_queue is 0, where no request waits (it is refused when the limit is full): set queue_timeout: None, or give max_queue the requests that may wait"
            ),
        )),
        _ => Ok(()),
    }
}

/// One service clone's side of admission: whether it is under a load
/// shedder, and there the slot `poll_ready` took for `call`.
pub(crate) struct Admission {
    core: Arc<Core>,
    /// `poll_ready` is pending while no slot is free (see
    /// [`ConcurrencyLimitLayer::for_load_shed`]).
    shed: bool,
    /// The slot `poll_ready` took (under a load shedder).
    held: Option<Permit>,
    /// Registered for the next release while `poll_ready` is pending.
    watch: Option<Watch>,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("core", &self.core)
            .field("for_load_shed", &self.shed)
            .field("holds_slot", &self.held.is_some())
            .finish()
    }
}

impl Admission {
    pub(crate) fn new(core: Arc<Core>, shed: bool) -> Admission {
        Admission {
            core,
            shed,
            held: None,
            watch: None,
        }
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// A new admission on the same core, holding nothing (for a clone of
    /// the service).
    pub(crate) fn fresh(&self) -> Admission {
        Admission::new(self.core.clone(), self.shed)
    }

    /// `poll_ready`: the inner service's readiness; under a load shedder,
    /// first a slot taken now (pending, and woken by the next release,
    /// while none is free).
    pub(crate) fn poll_ready<S>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), CqlError>>
    where
        S: Service<CqlRequest, Error = CqlError>,
    {
        if self.shed {
            ready!(self.poll_slot(cx));
        }
        inner.poll_ready(cx)
    }

    fn poll_slot(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.held.is_some() {
                self.watch = None;
                return Poll::Ready(());
            }
            if let Some(permit) = self.core.try_acquire() {
                self.held = Some(permit);
                continue;
            }
            match &mut self.watch {
                // registered: check once more before sleeping
                None => self.watch = Some(self.core.watch()),
                Some(watch) => {
                    ready!(watch.notified.as_mut().poll(cx));
                    self.watch = None;
                }
            }
        }
    }

    /// `call`: admits `req` now when a slot is free, or queues it in its
    /// response future, or refuses it (the queue is full).
    pub(crate) fn call<S>(&mut self, inner: &mut S, req: CqlRequest) -> ResponseFuture<S>
    where
        S: Service<CqlRequest, Error = CqlError> + Clone,
    {
        let permit = match self.held.take() {
            Some(permit) => Some(permit),
            None if self.shed => panic!(
                "{}: call without a ready poll_ready: poll_ready must return Ready first",
                self.core.limiter
            ),
            None => self.core.try_acquire(),
        };
        if let Some(permit) = permit {
            return ResponseFuture::called(inner.call(req), permit);
        }
        let core = &self.core;
        match core.try_enqueue() {
            Ok(slot) => {
                let since = clock::now();
                let end = wait::end(since, core.queue_timeout, wait::deadline(&req));
                // `inner` was polled ready: it goes with the request, and
                // this service keeps a clone (polled ready before its call)
                let ready = inner.clone();
                let ready = std::mem::replace(inner, ready);
                ResponseFuture::queued(core.clone(), slot, ready, req, since, end)
            }
            Err(depth) => {
                // what the inner service reserved for this call goes back
                crate::refusal::release(inner);
                core.emit(&req, Duration::ZERO, true, depth);
                ResponseFuture::refused(CqlError::new(
                    ErrorKind::Shed,
                    format!(
                        "{}: {} requests in flight (limit {}) and {depth} queued (max_queue {})",
                        core.limiter,
                        core.in_flight(),
                        core.limit(),
                        core.max_queue
                    ),
                ))
            }
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
    pub(crate) fn from_core(inner: S, core: Arc<Core>, shed: bool) -> ConcurrencyLimit<S> {
        ConcurrencyLimit {
            inner,
            admission: Some(Admission::new(core, shed)),
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
    ///
    /// # Panics
    /// If `config` is invalid (see [`ConcurrencyConfig::validate`]).
    #[track_caller]
    pub fn new(inner: S, config: ConcurrencyConfig, collectors: Collectors) -> ConcurrencyLimit<S> {
        ConcurrencyLimitLayer::new(config, collectors).service(inner)
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

    /// The inner service (a slot held for `call` is released).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, R> Service<CqlRequest> for ConcurrencyLimit<S>
where
    S: Service<CqlRequest, Response = R, Error = CqlError> + Clone,
{
    type Response = R;
    type Error = CqlError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        match &mut self.admission {
            Some(admission) => admission.poll_ready(&mut self.inner, cx),
            None => self.inner.poll_ready(cx),
        }
    }

    fn call(&mut self, req: CqlRequest) -> Self::Future {
        match &mut self.admission {
            Some(admission) => admission.call(&mut self.inner, req),
            None => ResponseFuture::pass_through(self.inner.call(req)),
        }
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;
    use tower::{ServiceExt, service_fn};
    use tower_cql_core::event::{Event, OwnedEvent, ThrottleEvent};
    use tower_cql_core::{Collector, ErrorKind};
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
        let collectors = Collectors::with([recorder.clone()]);
        let config = ConcurrencyConfig {
            max_in_flight,
            max_queue,
            queue_timeout,
        };
        (ConcurrencyLimitLayer::new(config, collectors), recorder)
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
    async fn a_deadline_that_passes_in_the_queue_fails_then() {
        let (layer, rec) = layer(1, 4, Some(Duration::from_secs(1)));
        let svc = layer.layer(slow(
            Duration::from_millis(100),
            Arc::new(AtomicUsize::new(0)),
        ));
        let running = tokio::spawn(svc.clone().oneshot(req()));
        tokio::task::yield_now().await;
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_millis(30);
        let err = svc
            .clone()
            .oneshot(req().deadline(deadline.into_std()))
            .await
            .unwrap_err();
        assert_eq!(t0.elapsed(), Duration::from_millis(30), "at the deadline");
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
        assert!(err.was_not_sent());
        assert!(err.message().contains("waited 30ms for a slot"), "{err}");
        assert_eq!(rec.throttles(), vec![(Duration::from_millis(30), true, 0)]);
        assert_eq!(layer.queued(), 0, "it left the queue");
        running.await.unwrap().unwrap();
        assert_eq!(layer.in_flight(), 0);
    }

    #[test]
    fn a_queue_timeout_too_long_for_the_clock_is_refused() {
        // `Duration::MAX`, a common way to say "as long as it takes", cannot
        // be added to an instant: accepted, it panicked the caller's task
        // of the first request that queued, under load
        let long = Some(Duration::MAX);
        let cases = [
            (
                "concurrency.queue_timeout",
                ConcurrencyConfig {
                    queue_timeout: long,
                    ..Default::default()
                }
                .validate(),
            ),
            (
                "adaptive.queue_timeout",
                AdaptiveConfig {
                    queue_timeout: long,
                    ..Default::default()
                }
                .validate(),
            ),
        ];
        for (field, result) in cases {
            let err = result.expect_err("accepted, and the first request to queue panics");
            assert_eq!(err.field, field);
            assert!(err.message.contains("None for no limit"), "{err}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_longest_queue_timeout_accepted_waits_as_long_as_it_takes() {
        let longest = crate::config::LONGEST;
        assert!(validate_queue_timeout("q", 4, Some(longest)).is_ok());
        let (layer, rec) = layer(1, 4, Some(longest));
        let svc = layer.layer(slow(
            Duration::from_millis(100),
            Arc::new(AtomicUsize::new(0)),
        ));
        let running = tokio::spawn(svc.clone().oneshot(req()));
        tokio::task::yield_now().await;
        // the limit is full: the next request queues until the slot frees
        svc.clone().oneshot(req()).await.unwrap();
        running.await.unwrap().unwrap();
        assert_eq!(
            rec.throttles(),
            vec![(Duration::from_millis(100), false, 0)]
        );
        assert_eq!((layer.in_flight(), layer.queued()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn for_load_shed_poll_ready_takes_the_slot_and_is_pending_while_full() {
        let (layer, rec) = layer(1, 4, None);
        let layer = layer.for_load_shed();
        let mut a = layer.layer(slow(Duration::ZERO, Arc::new(AtomicUsize::new(0))));
        let mut b = a.clone();
        assert!(matches!(poll_once(&mut a), Poll::Ready(Ok(()))));
        assert_eq!(layer.in_flight(), 1, "taken in poll_ready");
        assert!(poll_once(&mut b).is_pending(), "full: not ready");
        assert_eq!(layer.queued(), 0, "nothing queues");
        // a ready service dropped before its call frees its slot, and the
        // release wakes the service waiting in poll_ready
        let waiting = tokio::spawn(async move {
            b.ready().await.unwrap();
            b
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(a);
        let mut b = tokio::time::timeout(Duration::from_millis(1), waiting)
            .await
            .expect("woken by the release")
            .unwrap();
        assert_eq!(layer.in_flight(), 1);
        b.call(req()).await.unwrap();
        assert_eq!(layer.in_flight(), 0);
        assert!(rec.throttles().is_empty(), "nothing waited in a limit");
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

    /// A queue timeout with no queue (`max_queue: 0`) bounds a wait no
    /// request makes (a request is refused when the limit is full): it is
    /// refused, naming the field and what to do, for the fixed and the
    /// adaptive limit alike, and so by the stack builder (the TOML
    /// configuration refused the same key; the builder took it).
    #[test]
    fn a_queue_timeout_without_a_queue_is_refused_naming_it() {
        let timeout = Some(Duration::from_secs(1));
        let fixed = ConcurrencyConfig {
            max_in_flight: 4,
            max_queue: 0,
            queue_timeout: timeout,
        };
        let adaptive = AdaptiveConfig {
            max_queue: 0,
            queue_timeout: timeout,
            ..AdaptiveConfig::default()
        };
        for (err, field) in [
            (fixed.validate(), "concurrency.queue_timeout"),
            (adaptive.validate(), "adaptive.queue_timeout"),
            (
                crate::stack::StackBuilder::new(Collectors::new())
                    .concurrency(fixed)
                    .validate(),
                "concurrency.queue_timeout",
            ),
        ] {
            let err = err.expect_err(field);
            assert_eq!(err.field, field, "{err}");
            assert!(err.message.contains("max_queue"), "{err}");
        }
        // a timeout with a queue, or no queue without one: accepted
        let queue = ConcurrencyConfig {
            max_queue: 1,
            ..fixed
        };
        assert_eq!(queue.validate(), Ok(()));
        let none = AdaptiveConfig {
            queue_timeout: None,
            ..adaptive
        };
        assert_eq!(none.validate(), Ok(()));
    }
}
