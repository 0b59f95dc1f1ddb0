//! An adaptive concurrency limit: AIMD (additive increase, multiplicative
//! decrease) driven by overload errors and latency.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_cql_core::{Collectors, CqlError, CqlRequest, ErrorKind};
//! use tower_cql_middleware::concurrency::{AdaptiveAlgorithm, AdaptiveConcurrencyLayer, AdaptiveConfig};
//! use tower_layer::Layer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = AdaptiveConcurrencyLayer::new(
//!     AdaptiveConfig {
//!         initial: 10,
//!         min: 2,
//!         max: 100,
//!         algorithm: AdaptiveAlgorithm::Aimd {
//!             increase_by: 1,
//!             decrease_factor: 0.5,
//!             latency_threshold: Duration::from_millis(200),
//!         },
//!         ..AdaptiveConfig::default()
//!     },
//!     Collectors::new(),
//! );
//! // The server says it is overloaded: the limit halves.
//! let inner = service_fn(|_req: CqlRequest| async {
//!     Err::<(), _>(CqlError::new(ErrorKind::Overloaded, "busy"))
//! });
//! let mut svc = layer.layer(inner);
//! let _ = svc.ready().await?.call(CqlRequest::query("SELECT v FROM ks.t")).await;
//! assert_eq!(layer.current_limit(), 5);
//! # Ok(()) }
//! ```
//!
//! # The algorithm
//! When a request completes (its response future resolves):
//! - it is a *congestion signal* when its error is
//!   [`ErrorKind::Overloaded`](tower_cql_core::ErrorKind::Overloaded) or [`ErrorKind::ClientTimeout`](tower_cql_core::ErrorKind::ClientTimeout) (what the one classifier, [`tower_cql_core::classify`], calls overload), or its
//!   latency (from admission to completion: the time queued for this
//!   limit is excluded, it measures the limit and not the servers) is above
//!   `latency_threshold`. The limit becomes `max(min, floor(limit *
//!   decrease_factor))`, at most once per round trip: only a request that
//!   started after the last decrease can decrease it again, so a burst of
//!   failures from requests sent together counts once;
//! - otherwise it counts towards a window of successes: after `limit` of
//!   them the limit becomes `min(max, limit + increase_by)`.
//!
//! Other errors (a syntax error, an unavailable replica set) count as
//! successes here: the node answered in time. A response future dropped
//! before it completes (its caller gave up) is a congestion signal when
//! it had been in flight longer than `latency_threshold` (it was slow,
//! whatever it would have answered: callers that time out must not hide
//! slow requests from the limit while the fast ones raise it), and
//! otherwise counts as nothing.
//!
//! Admission is the same as the fixed limit's (see the
//! [parent module](super)): a compare-and-swap of the in-flight count
//! against the current limit in `call`, a bounded queue in the response
//! future, ended by its timeout or the request's deadline, waiters
//! sleeping on a `Notify` (woken when a slot frees or the limit grows).
//! When the limit shrinks below the requests in flight, none is cancelled:
//! new ones wait until enough complete.
//!
//! # Observing it
//! [`AdaptiveConcurrencyLayer::current_limit`] reads the limit; each change
//! emits [`Event::Limit`] with `limiter:
//! "adaptive"`, the new limit and the requests in flight. Waits and
//! refusals emit `Event::Throttle` with `limiter: "adaptive"`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower_cql_core::event::LimitEvent;
use tower_cql_core::{Collectors, CqlError, CqlRequest, Event};
use tower_cql_core::{classify::classify, clock};
use tower_layer::Layer;
use tower_service::Service;

use super::slots::Core;
use super::{Admission, ResponseFuture, validate_queue_timeout};
use crate::config::ConfigError;
use crate::toggle::PassThrough;

/// How the adaptive limit moves.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum AdaptiveAlgorithm {
    /// Additive increase, multiplicative decrease; see the
    /// [module docs](self).
    Aimd {
        /// Added to the limit after a window of `limit` successes (at least 1).
        increase_by: usize,
        /// The limit is multiplied by this on congestion (`0 < f < 1`).
        decrease_factor: f64,
        /// A request slower than this is a congestion signal (not zero).
        latency_threshold: Duration,
    },
}

impl Default for AdaptiveAlgorithm {
    fn default() -> AdaptiveAlgorithm {
        AdaptiveAlgorithm::Aimd {
            increase_by: 1,
            decrease_factor: 0.9,
            latency_threshold: Duration::from_millis(500),
        }
    }
}

/// Configures an [`AdaptiveConcurrencyLayer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveConfig {
    /// The limit to start with (`min <= initial <= max`). Default 20.
    pub initial: usize,
    /// The lowest the limit goes (at least 1). Default 1.
    pub min: usize,
    /// The highest the limit goes. Default 256.
    pub max: usize,
    /// How the limit moves. Default AIMD: +1, ×0.9, 500 ms.
    pub algorithm: AdaptiveAlgorithm,
    /// Requests that may wait for a slot; 0 refuses at once when full.
    /// Default 1024.
    pub max_queue: usize,
    /// The longest a request waits in the queue (`None`: no limit; not
    /// zero, at most 100 years; `None` with `max_queue: 0`, where nothing
    /// waits). Default 1 s.
    pub queue_timeout: Option<Duration>,
}

impl Default for AdaptiveConfig {
    fn default() -> AdaptiveConfig {
        AdaptiveConfig {
            initial: 20,
            min: 1,
            max: 256,
            algorithm: AdaptiveAlgorithm::default(),
            max_queue: 1024,
            queue_timeout: Some(Duration::from_secs(1)),
        }
    }
}

impl AdaptiveConfig {
    /// Checks every field; the error names the field and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.min == 0 {
            return Err(ConfigError::new(
                "adaptive.min",
                "must be at least 1, got 0",
            ));
        }
        if self.max < self.min {
            return Err(ConfigError::new(
                "adaptive.max",
                format!("must be at least min ({}), got {}", self.min, self.max),
            ));
        }
        if self.initial < self.min || self.initial > self.max {
            return Err(ConfigError::new(
                "adaptive.initial",
                format!(
                    "must be in [min, max] = [{}, {}], got {}",
                    self.min, self.max, self.initial
                ),
            ));
        }
        match self.algorithm {
            AdaptiveAlgorithm::Aimd {
                increase_by,
                decrease_factor,
                latency_threshold,
            } => {
                if increase_by == 0 {
                    return Err(ConfigError::new(
                        "adaptive.algorithm.increase_by",
                        "must be at least 1, got 0",
                    ));
                }
                if !(decrease_factor > 0.0 && decrease_factor < 1.0) {
                    return Err(ConfigError::new(
                        "adaptive.algorithm.decrease_factor",
                        format!("must be in (0, 1) (exclusive), got {decrease_factor}"),
                    ));
                }
                if latency_threshold.is_zero() {
                    return Err(ConfigError::new(
                        "adaptive.algorithm.latency_threshold",
                        "must be greater than zero, got 0",
                    ));
                }
            }
        }
        validate_queue_timeout("adaptive.queue_timeout", self.max_queue, self.queue_timeout)
    }
}

/// The AIMD state: atomics only.
pub(crate) struct Aimd {
    min: usize,
    max: usize,
    increase_by: usize,
    decrease_factor: f64,
    latency_threshold: Duration,
    /// Successes counted towards the next increase.
    successes: AtomicUsize,
    /// When the limit last decreased: nanoseconds since `start`, plus one
    /// (0: never).
    decreased_at: AtomicU64,
    start: Instant,
}

impl Aimd {
    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Feeds one completed request to the algorithm.
    pub(crate) fn on_complete(&self, core: &Core, started: Instant, error: Option<&CqlError>) {
        let now = clock::now();
        let latency = now.saturating_duration_since(started);
        // The one classifier says what signals overload; idempotency does
        // not change that answer.
        let overload = error.is_some_and(|e| classify(e, false).overload);
        if overload || latency > self.latency_threshold {
            self.decrease(core, started, now);
        } else {
            self.count_success(core);
        }
    }

    /// Feeds one request dropped before it completed (its caller gave
    /// up): in flight longer than `latency_threshold`, it was slow,
    /// whatever it would have answered, so it signals congestion; sooner,
    /// nothing is known of it, and it counts as nothing.
    pub(crate) fn on_dropped(&self, core: &Core, started: Instant) {
        let now = clock::now();
        if now.saturating_duration_since(started) > self.latency_threshold {
            self.decrease(core, started, now);
        }
    }

    fn decrease(&self, core: &Core, started: Instant, now: Instant) {
        let last = self.decreased_at.load(Ordering::Acquire);
        // Sent before (or at) the last decrease: that one accounted for it.
        if last != 0 && self.nanos(started) < last {
            return;
        }
        if self
            .decreased_at
            .compare_exchange(
                last,
                self.nanos(now) + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return; // another completion decreased it just now
        }
        self.successes.store(0, Ordering::Release);
        loop {
            let limit = core.limit();
            let lowered = ((limit as f64) * self.decrease_factor).floor() as usize;
            let next = lowered.max(self.min);
            if next == limit {
                return; // at the floor
            }
            if let Some(change) = core.set_limit(limit, next) {
                emit(core, next, change);
                return;
            }
        }
    }

    fn count_success(&self, core: &Core) {
        let mut seen = self.successes.load(Ordering::Acquire);
        loop {
            let limit = core.limit();
            if seen + 1 < limit {
                match self.successes.compare_exchange_weak(
                    seen,
                    seen + 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return,
                    Err(actual) => seen = actual,
                }
                continue;
            }
            // This success completes the window.
            match self
                .successes
                .compare_exchange_weak(seen, 0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let next = limit.saturating_add(self.increase_by).min(self.max);
                    if next != limit
                        && let Some(change) = core.set_limit(limit, next)
                    {
                        emit(core, next, change);
                    }
                    return;
                }
                Err(actual) => seen = actual,
            }
        }
    }
}

/// The event of a change of the limit, made as a request ended (from
/// [`Aimd::on_complete`], while that request still holds its slot, which
/// it frees right after): the requests in flight without it.
fn emit(core: &Core, limit: usize, change: u32) {
    if core.collectors.is_active() {
        let in_flight = core.in_flight().saturating_sub(1);
        core.collectors.emit(Event::Limit(
            LimitEvent::new("adaptive", limit, in_flight).with_change(change),
        ));
    }
}

/// Makes [`AdaptiveConcurrency`] services that all share this layer's one
/// adaptive limit (cloning the layer shares it too).
#[derive(Clone)]
pub struct AdaptiveConcurrencyLayer {
    core: Arc<Core>,
    config: AdaptiveConfig,
    shed: bool,
}

impl fmt::Debug for AdaptiveConcurrencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveConcurrencyLayer")
            .field("config", &self.config)
            .field("current_limit", &self.current_limit())
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .field("for_load_shed", &self.shed)
            .finish()
    }
}

impl AdaptiveConcurrencyLayer {
    /// A layer starting at `config.initial`.
    ///
    /// # Panics
    /// If `config` is invalid (see its `validate()`, which says why);
    /// [`StackBuilder`](crate::stack::StackBuilder) returns that as an error.
    #[track_caller]
    pub fn new(config: AdaptiveConfig, collectors: Collectors) -> AdaptiveConcurrencyLayer {
        crate::config::checked(config.validate());
        let AdaptiveAlgorithm::Aimd {
            increase_by,
            decrease_factor,
            latency_threshold,
        } = config.algorithm;
        let aimd = Aimd {
            min: config.min,
            max: config.max,
            increase_by,
            decrease_factor,
            latency_threshold,
            successes: AtomicUsize::new(0),
            decreased_at: AtomicU64::new(0),
            start: clock::now(),
        };
        AdaptiveConcurrencyLayer {
            core: Arc::new(Core::new(
                "adaptive",
                config.initial,
                config.max_queue,
                config.queue_timeout,
                collectors,
                Some(aimd),
            )),
            config,
            shed: false,
        }
    }

    /// For use under a [`LoadShedLayer`](crate::load_shed::LoadShedLayer):
    /// `poll_ready` takes a slot and is pending while none is free, so the
    /// load shedder refuses instead of letting the request queue; see
    /// [`ConcurrencyLimitLayer::for_load_shed`](super::ConcurrencyLimitLayer::for_load_shed).
    pub fn for_load_shed(mut self) -> AdaptiveConcurrencyLayer {
        self.shed = true;
        self
    }

    /// Whether the services are for use under a load shedder.
    pub fn is_for_load_shed(&self) -> bool {
        self.shed
    }

    /// The configuration.
    pub fn config(&self) -> &AdaptiveConfig {
        &self.config
    }

    /// The limit now.
    pub fn current_limit(&self) -> usize {
        self.core.limit()
    }

    /// Requests in flight, across every service this layer made.
    pub fn in_flight(&self) -> usize {
        self.core.in_flight()
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> usize {
        self.core.queued()
    }
}

impl<S> Layer<S> for AdaptiveConcurrencyLayer {
    type Service = AdaptiveConcurrency<S>;

    fn layer(&self, inner: S) -> AdaptiveConcurrency<S> {
        AdaptiveConcurrency {
            inner,
            admission: Some(Admission::new(self.core.clone(), self.shed)),
        }
    }
}

impl<S> PassThrough<S> for AdaptiveConcurrencyLayer {
    fn pass_through(inner: S) -> AdaptiveConcurrency<S> {
        AdaptiveConcurrency::pass_through(inner)
    }
}

/// Limits the requests in flight to its inner service with a limit that
/// adapts; see the [module docs](self).
#[derive(Debug)]
pub struct AdaptiveConcurrency<S> {
    inner: S,
    /// `None`: a pass-through.
    admission: Option<Admission>,
}

impl<S: Clone> Clone for AdaptiveConcurrency<S> {
    /// A clone shares the limit; it holds no slot.
    fn clone(&self) -> AdaptiveConcurrency<S> {
        AdaptiveConcurrency {
            inner: self.inner.clone(),
            admission: self.admission.as_ref().map(Admission::fresh),
        }
    }
}

impl<S> AdaptiveConcurrency<S> {
    /// Wraps `inner` with its own adaptive limit (use
    /// [`AdaptiveConcurrencyLayer`] to share one between services).
    ///
    /// # Panics
    /// If `config` is invalid (see [`AdaptiveConfig::validate`]).
    #[track_caller]
    pub fn new(inner: S, config: AdaptiveConfig, collectors: Collectors) -> AdaptiveConcurrency<S> {
        AdaptiveConcurrencyLayer::new(config, collectors).layer(inner)
    }

    /// A service with no limit that only forwards to `inner` (see
    /// [`toggle`](crate::toggle)): it counts nothing, measures nothing and
    /// never queues.
    pub fn pass_through(inner: S) -> AdaptiveConcurrency<S> {
        AdaptiveConcurrency {
            inner,
            admission: None,
        }
    }

    /// Whether this service passes requests through unlimited.
    pub fn is_pass_through(&self) -> bool {
        self.admission.is_none()
    }

    /// The limit now (`usize::MAX` for a pass-through: no limit).
    pub fn current_limit(&self) -> usize {
        self.admission
            .as_ref()
            .map_or(usize::MAX, |a| a.core().limit())
    }

    /// Requests in flight (across every clone; 0 for a pass-through, which
    /// counts nothing).
    pub fn in_flight(&self) -> usize {
        self.admission.as_ref().map_or(0, |a| a.core().in_flight())
    }

    /// Requests waiting for a slot (0 for a pass-through).
    pub fn queued(&self) -> usize {
        self.admission.as_ref().map_or(0, |a| a.core().queued())
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

impl<S, R> Service<CqlRequest> for AdaptiveConcurrency<S>
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tower::{ServiceExt, service_fn};
    use tower_cql_core::{Collector, ErrorKind};

    /// Keeps the limit of every limit event, and the requests in flight
    /// it says.
    #[derive(Default)]
    struct Limits(Mutex<Vec<usize>>, Mutex<Vec<usize>>);
    impl Collector for Limits {
        fn on_limit(&self, e: &LimitEvent) {
            assert_eq!(e.limiter, "adaptive");
            self.0.lock().unwrap().push(e.limit);
            self.1.lock().unwrap().push(e.in_flight);
        }
    }

    fn req() -> CqlRequest {
        CqlRequest::query("SELECT v FROM ks.t WHERE k = 1")
    }

    fn layer(initial: usize, min: usize, max: usize) -> (AdaptiveConcurrencyLayer, Arc<Limits>) {
        let limits = Arc::new(Limits::default());
        let collectors = Collectors::with([limits.clone()]);
        let config = AdaptiveConfig {
            initial,
            min,
            max,
            algorithm: AdaptiveAlgorithm::Aimd {
                increase_by: 1,
                decrease_factor: 0.5,
                latency_threshold: Duration::from_millis(200),
            },
            max_queue: 100,
            queue_timeout: None,
        };
        (AdaptiveConcurrencyLayer::new(config, collectors), limits)
    }

    /// An inner service answering after `delay` with `kind` (or Ok).
    fn answering(
        delay: Duration,
        kind: Option<ErrorKind>,
    ) -> impl Service<CqlRequest, Response = (), Error = CqlError, Future: Send> + Clone + Send
    {
        service_fn(move |_req: CqlRequest| async move {
            tokio::time::sleep(delay).await;
            match kind {
                Some(k) => Err(CqlError::new(k, "injected")),
                None => Ok(()),
            }
        })
    }

    /// Limit events emitted from different threads can reach a
    /// collector in another order than the changes were made (here the
    /// first change's emission is held until the second's has passed, as
    /// a slow collector before it, or a descheduled thread, does): the
    /// in-memory collector's `current_limit` still ends at the limit in
    /// force, not at whichever event arrived last.
    #[test]
    fn the_reported_limit_is_the_last_change_not_the_last_event() {
        use std::sync::Condvar;
        use tower_cql_core::InMemoryCollector;
        /// Holds the first limit event until a second one has passed.
        #[derive(Default)]
        struct HoldFirst(Mutex<usize>, Condvar);
        impl Collector for HoldFirst {
            fn on_limit(&self, _: &LimitEvent) {
                let mut seen = self.0.lock().unwrap();
                *seen += 1;
                if *seen == 1 {
                    let _ = self
                        .1
                        .wait_timeout_while(seen, Duration::from_secs(5), |n| *n < 2)
                        .unwrap();
                } else {
                    self.1.notify_all();
                }
            }
        }
        let memory = Arc::new(InMemoryCollector::new());
        let hold: Arc<dyn Collector> = Arc::new(HoldFirst::default());
        let collectors = Collectors::with([hold, memory.clone()]);
        let config = AdaptiveConfig {
            initial: 8,
            min: 1,
            max: 64,
            algorithm: AdaptiveAlgorithm::Aimd {
                increase_by: 1,
                decrease_factor: 0.5,
                latency_threshold: Duration::from_secs(10),
            },
            max_queue: 100,
            queue_timeout: None,
        };
        let layer = AdaptiveConcurrencyLayer::new(config, collectors);
        let run = |layer: AdaptiveConcurrencyLayer, kind: Option<ErrorKind>, n: usize| {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    for _ in 0..n {
                        let svc = layer.layer(answering(Duration::ZERO, kind));
                        let _ = svc.oneshot(req()).await;
                    }
                });
            })
        };
        // 8 -> 4, its event held
        let first = run(layer.clone(), Some(ErrorKind::Overloaded), 1);
        while layer.current_limit() != 4 {
            std::thread::yield_now();
        }
        // 4 -> 5 after a window of 4 successes, its event passing first
        run(layer.clone(), None, 4).join().unwrap();
        first.join().unwrap();
        assert_eq!(layer.current_limit(), 5);
        assert_eq!(
            memory.snapshot().current_limit,
            5,
            "the limit in force, not the last event to arrive"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn overloaded_decreases_the_limit() {
        let (layer, limits) = layer(10, 1, 100);
        let svc = layer.layer(answering(Duration::ZERO, Some(ErrorKind::Overloaded)));
        assert!(svc.clone().oneshot(req()).await.is_err());
        assert_eq!(layer.current_limit(), 5);
        assert_eq!(*limits.0.lock().unwrap(), vec![5]);
    }

    /// A limit changes as a request ends: its event counts the requests
    /// still in flight, not the one that ended (it still held its slot
    /// while the limit was judged).
    #[tokio::test(start_paused = true)]
    async fn a_limit_event_does_not_count_the_request_that_ended() {
        let (layer, limits) = layer(10, 1, 100);
        let svc = layer.layer(answering(Duration::ZERO, Some(ErrorKind::Overloaded)));
        assert!(svc.clone().oneshot(req()).await.is_err());
        assert_eq!(*limits.0.lock().unwrap(), vec![5]);
        assert_eq!(
            *limits.1.lock().unwrap(),
            vec![0],
            "one request, ended: none in flight"
        );
        assert_eq!(layer.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_failures_decreases_once() {
        let (layer, limits) = layer(10, 1, 100);
        let svc = layer.layer(answering(
            Duration::from_millis(10),
            Some(ErrorKind::Overloaded),
        ));
        // Eight requests sent together, all failing together.
        let calls: Vec<_> = (0..8).map(|_| svc.clone().oneshot(req())).collect();
        for r in futures::future::join_all(calls).await {
            assert_eq!(r.unwrap_err().kind(), ErrorKind::Overloaded);
        }
        assert_eq!(layer.current_limit(), 5);
        // A request sent after the decrease may decrease it again.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(svc.clone().oneshot(req()).await.is_err());
        assert_eq!(layer.current_limit(), 2);
        assert_eq!(*limits.0.lock().unwrap(), vec![5, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_holds() {
        let (layer, limits) = layer(10, 4, 100);
        let svc = layer.layer(answering(Duration::ZERO, Some(ErrorKind::ClientTimeout)));
        for _ in 0..5 {
            let _ = svc.clone().oneshot(req()).await;
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(layer.current_limit(), 4);
        assert_eq!(*limits.0.lock().unwrap(), vec![5, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_of_successes_increases_up_to_the_ceiling() {
        let (layer, limits) = layer(2, 1, 4);
        let svc = layer.layer(answering(Duration::from_millis(5), None));
        for _ in 0..2 {
            svc.clone().oneshot(req()).await.unwrap();
        }
        assert_eq!(layer.current_limit(), 3);
        for _ in 0..3 {
            svc.clone().oneshot(req()).await.unwrap();
        }
        assert_eq!(layer.current_limit(), 4);
        for _ in 0..20 {
            svc.clone().oneshot(req()).await.unwrap();
        }
        assert_eq!(layer.current_limit(), 4, "the ceiling holds");
        assert_eq!(*limits.0.lock().unwrap(), vec![3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_responses_decrease_and_other_errors_count_as_successes() {
        let (layer, _) = layer(8, 1, 100);
        let slow = layer.layer(answering(Duration::from_millis(300), None));
        slow.oneshot(req()).await.unwrap();
        assert_eq!(layer.current_limit(), 4, "300 ms > the 200 ms threshold");
        let invalid = layer.layer(answering(Duration::ZERO, Some(ErrorKind::Invalid)));
        for _ in 0..4 {
            let _ = invalid.clone().oneshot(req()).await;
        }
        assert_eq!(layer.current_limit(), 5);
    }

    /// A request its caller gives up on (a caller's timeout, a `select!`)
    /// after it has been in flight longer than `latency_threshold` was
    /// slow, whatever it would have answered: it is a congestion signal.
    /// Before, a dropped request counted as nothing, so callers that time
    /// out hid every slow request from the limit, and the fast ones alone
    /// kept raising it: the limit drifted up while the servers were slow.
    /// One dropped sooner than the threshold still counts as nothing
    /// (nothing is known of it).
    #[tokio::test(start_paused = true)]
    async fn a_request_dropped_after_the_latency_threshold_decreases_the_limit() {
        let (layer, limits) = layer(8, 1, 100);
        let hangs = layer.layer(answering(Duration::from_secs(3600), None));
        let quick = Duration::from_millis(100);
        let gave_up = tokio::time::timeout(quick, hangs.clone().oneshot(req())).await;
        assert!(gave_up.is_err(), "the caller gave up");
        assert_eq!(layer.current_limit(), 8, "dropped within the threshold");
        let late = Duration::from_secs(1);
        let gave_up = tokio::time::timeout(late, hangs.clone().oneshot(req())).await;
        assert!(gave_up.is_err(), "the caller gave up");
        assert_eq!(layer.in_flight(), 0);
        assert_eq!(
            layer.current_limit(),
            4,
            "in flight 1 s (threshold 200 ms), then dropped: slow"
        );
        assert_eq!(*limits.0.lock().unwrap(), vec![4]);
    }

    #[tokio::test(start_paused = true)]
    async fn admission_follows_the_limit_and_an_increase_wakes_waiters() {
        let (layer, _) = layer(1, 1, 4);
        let svc = layer.layer(answering(Duration::from_secs(1), None));
        let first = tokio::spawn(svc.clone().oneshot(req()));
        tokio::task::yield_now().await;
        assert_eq!(layer.in_flight(), 1);
        // full: the second queues in its response future
        let waiting = tokio::spawn(svc.clone().oneshot(req()));
        tokio::task::yield_now().await;
        assert_eq!((layer.in_flight(), layer.queued()), (1, 1));
        // The limit grows while the first still holds its slot: the waiter
        // is woken and admitted.
        assert!(layer.core.set_limit(1, 2).is_some());
        tokio::task::yield_now().await;
        assert_eq!((layer.in_flight(), layer.queued()), (2, 0));
        assert!(!first.is_finished());
        first.await.unwrap().unwrap();
        waiting.await.unwrap().unwrap();
    }

    #[test]
    fn config_validation_names_each_field() {
        assert_eq!(AdaptiveConfig::default().validate(), Ok(()));
        let base = AdaptiveConfig::default();
        let aimd = |increase_by, decrease_factor, latency_threshold| AdaptiveConfig {
            algorithm: AdaptiveAlgorithm::Aimd {
                increase_by,
                decrease_factor,
                latency_threshold,
            },
            ..base
        };
        let ms = Duration::from_millis(1);
        let cases = [
            (
                AdaptiveConfig {
                    min: 0,
                    initial: 0,
                    ..base
                },
                "adaptive.min",
            ),
            (
                AdaptiveConfig {
                    min: 5,
                    max: 4,
                    initial: 4,
                    ..base
                },
                "adaptive.max",
            ),
            (
                AdaptiveConfig {
                    min: 2,
                    initial: 1,
                    ..base
                },
                "adaptive.initial",
            ),
            (
                AdaptiveConfig {
                    initial: 300,
                    max: 256,
                    ..base
                },
                "adaptive.initial",
            ),
            (aimd(0, 0.5, ms), "adaptive.algorithm.increase_by"),
            (aimd(1, 0.0, ms), "adaptive.algorithm.decrease_factor"),
            (aimd(1, 1.0, ms), "adaptive.algorithm.decrease_factor"),
            (aimd(1, f64::NAN, ms), "adaptive.algorithm.decrease_factor"),
            (
                aimd(1, 0.5, Duration::ZERO),
                "adaptive.algorithm.latency_threshold",
            ),
            (
                AdaptiveConfig {
                    queue_timeout: Some(Duration::ZERO),
                    ..base
                },
                "adaptive.queue_timeout",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err();
            assert_eq!(err.field, field, "{config:?}");
            let msg = crate::config::panic_message(|| {
                AdaptiveConcurrencyLayer::new(config, Collectors::new())
            });
            assert!(msg.contains(field), "{msg}");
        }
    }
}
