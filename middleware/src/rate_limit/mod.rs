//! A token-bucket rate limit shared by every clone of the service.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_cql_core::{Collectors, CqlError, CqlRequest, ErrorKind};
//! use tower_cql_middleware::rate_limit::{RateLimitConfig, RateLimitLayer, RateLimitMode};
//! use tower_layer::Layer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = RateLimitLayer::new(
//!     RateLimitConfig {
//!         rate_per_second: 100.0,
//!         burst: 2,
//!         mode: RateLimitMode::Reject,
//!     },
//!     Collectors::new(),
//! )?;
//! // A mock inner service (a real stack has the driver service here).
//! let inner = service_fn(|_req: CqlRequest| async { Ok::<_, CqlError>("done") });
//! let mut svc = layer.layer(inner);
//! let req = || CqlRequest::query("SELECT v FROM ks.t WHERE k = 1");
//! // The burst passes at once ...
//! assert_eq!(svc.ready().await?.call(req()).await?, "done");
//! assert_eq!(svc.ready().await?.call(req()).await?, "done");
//! // ... and the third request within the same 10 ms is refused.
//! let err = svc.ready().await?.call(req()).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::RateLimited);
//! # Ok(()) }
//! ```
//!
//! # How it works
//! The bucket is the generic cell rate algorithm (GCRA, as in governor's
//! `InMemoryState`): its whole state is one `AtomicU64` holding the
//! "theoretical arrival time" of the next request, in nanoseconds since the
//! layer was built, updated with `compare_exchange`. Taking a token is one
//! CAS; there is no lock and no refill task. Tokens refill continuously at
//! `rate_per_second`, and up to `burst` may be taken at once.
//!
//! # Shared by clones, and by every service a layer makes
//! The bucket lives in an `Arc` owned by the [`RateLimitLayer`]: every
//! service it makes and every clone of those services draw from the same
//! bucket, so the configured rate is the rate of the whole process (for
//! that layer). tower's own `RateLimit` is not `Clone` (tower issue #794),
//! and a per-clone bucket would multiply the rate by the number of clones.
//!
//! # Wait and Reject
//! - [`RateLimitMode::Wait`]: `poll_ready` reserves a token; when the next
//!   one is in the future it sleeps until then (backpressure: the caller's
//!   `ready().await` waits). When the token is further away than
//!   `max_wait`, nothing is reserved and the call fails at once with
//!   [`ErrorKind::RateLimited`].
//!   Each clone keeps one reusable timer (`Pin<Box<Sleep>>`, reset for each
//!   wait, as tower's rate limit does).
//! - [`RateLimitMode::Reject`]: no token now means the call fails at once.
//!
//! The wait happens in `poll_ready`, before the request is known, so the
//! request's deadline is checked in `call`: a request whose deadline passed
//! while the service waited for its token fails with `RateLimited`, and the
//! token goes back to the bucket.
//!
//! # Events
//! Every request that waited or was refused emits
//! [`Event::Throttle`] with `limiter:
//! "rate_limit"`, the time waited and whether it was refused (`queue_depth`
//! is always 0: waiters are not queued, they hold reservations). Requests
//! admitted at once emit nothing.

pub mod future;
mod layer;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
#[cfg(not(tower_cql_loom))]
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(tower_cql_loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower_cql_core::event::ThrottleEvent;
use tower_cql_core::{Collectors, CqlError, CqlRequest, ErrorKind, Event};
use tower_service::Service;

use crate::config::ConfigError;

pub use self::future::ResponseFuture;
pub use self::layer::RateLimitLayer;

/// What to do when no token is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitMode {
    /// Wait in `poll_ready` for the next token, up to `max_wait`; a token
    /// further away than that fails the call with `RateLimited` at once.
    /// `max_wait: Duration::ZERO` is the same as [`RateLimitMode::Reject`].
    Wait {
        /// The longest a request may wait for its token.
        max_wait: Duration,
    },
    /// Fail the call with `RateLimited` at once.
    Reject,
}

/// Configures a [`RateLimitLayer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// Tokens added per second (finite, in `(0, 1e9]`). Default 1000.
    pub rate_per_second: f64,
    /// Tokens that may be taken at once: the bucket's size (at least 1).
    /// Default 100.
    pub burst: u32,
    /// What to do when the bucket is empty. Default: wait up to 500 ms.
    pub mode: RateLimitMode,
}

impl Default for RateLimitConfig {
    fn default() -> RateLimitConfig {
        RateLimitConfig {
            rate_per_second: 1000.0,
            burst: 100,
            mode: RateLimitMode::Wait {
                max_wait: Duration::from_millis(500),
            },
        }
    }
}

impl RateLimitConfig {
    /// No limit: an infinite rate and the largest burst. What a
    /// [pass-through](RateLimit::pass_through) reports as its configuration;
    /// [`validate`](RateLimitConfig::validate) refuses it, as no bucket can
    /// be built for it.
    pub const UNLIMITED: RateLimitConfig = RateLimitConfig {
        rate_per_second: f64::INFINITY,
        burst: u32::MAX,
        mode: RateLimitMode::Reject,
    };

    /// Checks every field; the error names the field and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rate = self.rate_per_second;
        if !rate.is_finite() || rate <= 0.0 || rate > 1e9 {
            return Err(ConfigError::new(
                "rate_limit.rate_per_second",
                format!("must be a finite number in (0, 1e9] tokens per second, got {rate}"),
            ));
        }
        if self.burst == 0 {
            return Err(ConfigError::new(
                "rate_limit.burst",
                "must be at least 1 (the bucket's size), got 0",
            ));
        }
        Ok(())
    }
}

/// The bucket: GCRA over one atomic, shared by every clone.
pub(crate) struct Bucket {
    /// Theoretical arrival time of the next request, ns since `start`.
    tat: AtomicU64,
    start: Instant,
    /// Nanoseconds between tokens.
    interval: u64,
    /// The bucket's depth in nanoseconds (`interval * burst`).
    tolerance: u64,
}

/// The outcome of trying to take a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// Taken; usable after this wait (zero: now).
    Taken(Duration),
    /// Not taken: the next token is this far away, more than allowed.
    Refused(Duration),
}

impl Bucket {
    pub(crate) fn new(config: &RateLimitConfig) -> Bucket {
        let interval = (1e9 / config.rate_per_second).round().max(1.0);
        // `as` saturates: a rate so small that one interval overflows u64
        // means one token, ever.
        let interval = interval as u64;
        Bucket {
            tat: AtomicU64::new(0),
            start: Instant::now(),
            interval,
            tolerance: interval.saturating_mul(u64::from(config.burst)),
        }
    }

    fn nanos_since_start(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes a token at `now` if it is available within `max_wait`.
    pub(crate) fn take(&self, now: Instant, max_wait: Duration) -> Take {
        let mut now = self.nanos_since_start(now);
        let max_wait = u64::try_from(max_wait.as_nanos()).unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Ordering::Acquire);
        let mut fresh_clock = false;
        loop {
            let next = tat.max(now).saturating_add(self.interval);
            // Conforming when `next - t <= tolerance`: from `next - tolerance` on.
            let wait = next.saturating_sub(self.tolerance).saturating_sub(now);
            if wait > max_wait {
                // `now` may be stale: this thread can be descheduled after
                // reading the clock while others move the bucket past it,
                // and with a tolerance of microseconds (a high rate) that
                // alone would refuse. Judge once more on a fresh clock.
                if !fresh_clock {
                    fresh_clock = true;
                    let fresh = self.nanos_since_start(Instant::now());
                    if fresh > now {
                        now = fresh;
                        continue;
                    }
                }
                return Take::Refused(Duration::from_nanos(wait));
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Take::Taken(Duration::from_nanos(wait)),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Gives back a token taken but not used.
    pub(crate) fn refund(&self) {
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.saturating_sub(self.interval))
            });
    }
}

/// State shared by a layer and every service it makes.
pub(crate) struct Shared {
    pub(crate) bucket: Bucket,
    pub(crate) config: RateLimitConfig,
    pub(crate) collectors: Collectors,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitShared")
            .field("config", &self.config)
            .field("interval_ns", &self.bucket.interval)
            .finish()
    }
}

/// A token taken for a request that has not been called yet: goes back
/// to the bucket if dropped unused (the service clone was dropped, or the
/// deadline passed while waiting).
struct Reservation(Option<Arc<Shared>>);

impl Reservation {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.bucket.refund();
        }
    }
}

enum State {
    /// Nothing reserved.
    Idle,
    /// A token is reserved for `until`; sleeping until then.
    Waiting {
        since: Instant,
        reservation: Reservation,
    },
    /// A token is reserved and usable now.
    Ready {
        waited: Duration,
        /// Present when the request waited (so an unused token is refunded).
        reservation: Option<Reservation>,
    },
    /// No token within the allowed wait: the next call fails.
    Refused { next_in: Duration },
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Idle => f.write_str("Idle"),
            State::Waiting { since, .. } => {
                f.debug_struct("Waiting").field("since", since).finish()
            }
            State::Ready { waited, .. } => f.debug_struct("Ready").field("waited", waited).finish(),
            State::Refused { next_in } => {
                f.debug_struct("Refused").field("next_in", next_in).finish()
            }
        }
    }
}

/// Limits the rate of requests to its inner service; see the
/// [module docs](self).
pub struct RateLimit<S> {
    inner: S,
    /// `None`: a pass-through.
    shared: Option<Arc<Shared>>,
    /// The reusable timer, made on first wait (making a `Sleep` needs a
    /// runtime, and most clones never wait).
    sleep: Option<Pin<Box<Sleep>>>,
    state: State,
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .field("state", &self.state)
            .finish()
    }
}

impl<S: Clone> Clone for RateLimit<S> {
    /// A clone shares the bucket; it has reserved nothing (call
    /// `poll_ready` on it before `call`).
    fn clone(&self) -> RateLimit<S> {
        RateLimit {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            sleep: None,
            state: State::Idle,
        }
    }
}

impl<S> RateLimit<S> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> RateLimit<S> {
        RateLimit {
            inner,
            shared: Some(shared),
            sleep: None,
            state: State::Idle,
        }
    }

    /// A service that limits nothing and only forwards to `inner` (see
    /// [`toggle`](crate::toggle)): no bucket, no clock read.
    pub fn pass_through(inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            shared: None,
            sleep: None,
            state: State::Idle,
        }
    }

    /// Whether this service passes requests through unlimited.
    pub fn is_pass_through(&self) -> bool {
        self.shared.is_none()
    }

    /// Wraps `inner` with its own bucket (use [`RateLimitLayer`] to share
    /// one bucket between several services).
    pub fn new(
        inner: S,
        config: RateLimitConfig,
        collectors: Collectors,
    ) -> Result<RateLimit<S>, ConfigError> {
        Ok(RateLimitLayer::new(config, collectors)?.service(inner))
    }

    /// The configuration. A [pass-through](RateLimit::pass_through)'s is
    /// [`RateLimitConfig::UNLIMITED`].
    pub fn config(&self) -> &RateLimitConfig {
        match &self.shared {
            Some(shared) => &shared.config,
            None => &RateLimitConfig::UNLIMITED,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service (a reserved token goes back to the bucket).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl Shared {
    fn max_wait(&self) -> Duration {
        match self.config.mode {
            RateLimitMode::Wait { max_wait } => max_wait,
            RateLimitMode::Reject => Duration::ZERO,
        }
    }

    fn emit(&self, req: &CqlRequest, waited: Duration, rejected: bool) {
        let collectors = &self.collectors;
        if collectors.is_active() {
            collectors.emit(Event::Throttle(ThrottleEvent {
                meta: req.meta(),
                limiter: "rate_limit",
                waited,
                rejected,
                queue_depth: 0,
            }));
        }
    }
}

impl<S, R> Service<CqlRequest> for RateLimit<S>
where
    S: Service<CqlRequest, Response = R, Error = CqlError>,
{
    type Response = R;
    type Error = CqlError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        let Some(shared) = &self.shared else {
            return self.inner.poll_ready(cx);
        };
        loop {
            match &self.state {
                State::Idle => {
                    let now = Instant::now();
                    match shared.bucket.take(now, shared.max_wait()) {
                        Take::Taken(wait) if wait.is_zero() => {
                            self.state = State::Ready {
                                waited: Duration::ZERO,
                                reservation: None,
                            };
                        }
                        Take::Taken(wait) => {
                            let until = now + wait;
                            match &mut self.sleep {
                                Some(sleep) => sleep.as_mut().reset(until),
                                None => {
                                    self.sleep = Some(Box::pin(tokio::time::sleep_until(until)))
                                }
                            }
                            self.state = State::Waiting {
                                since: now,
                                reservation: Reservation(Some(shared.clone())),
                            };
                        }
                        Take::Refused(next_in) => self.state = State::Refused { next_in },
                    }
                }
                State::Waiting { since, .. } => {
                    let since = *since;
                    if let Some(sleep) = &mut self.sleep {
                        ready!(sleep.as_mut().poll(cx));
                    }
                    let State::Waiting { reservation, .. } =
                        std::mem::replace(&mut self.state, State::Idle)
                    else {
                        unreachable!("matched Waiting above")
                    };
                    self.state = State::Ready {
                        waited: Instant::now().saturating_duration_since(since),
                        reservation: Some(reservation),
                    };
                }
                State::Ready { .. } => return self.inner.poll_ready(cx),
                // The call fails without touching the inner service.
                State::Refused { .. } => return Poll::Ready(Ok(())),
            }
        }
    }

    fn call(&mut self, req: CqlRequest) -> Self::Future {
        let Some(shared) = &self.shared else {
            return ResponseFuture::called(self.inner.call(req));
        };
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Ready {
                waited,
                reservation,
            } => {
                if let Some(reservation) = reservation {
                    let deadline_passed = req
                        .meta()
                        .deadline()
                        .is_some_and(|d| Instant::from_std(d) <= Instant::now());
                    if deadline_passed {
                        drop(reservation); // the token goes back
                        shared.emit(&req, waited, true);
                        return ResponseFuture::refused(CqlError::new(
                            ErrorKind::RateLimited,
                            format!(
                                "rate limit: the request's deadline passed while it waited {waited:?} for a token"
                            ),
                        ));
                    }
                    reservation.keep();
                }
                if !waited.is_zero() {
                    shared.emit(&req, waited, false);
                }
                ResponseFuture::called(self.inner.call(req))
            }
            State::Refused { next_in } => {
                shared.emit(&req, Duration::ZERO, true);
                let config = &shared.config;
                let message = match config.mode {
                    RateLimitMode::Wait { max_wait } if !max_wait.is_zero() => format!(
                        "rate limit of {}/s (burst {}) reached: the next token is {next_in:?} away, more than max_wait {max_wait:?}",
                        config.rate_per_second, config.burst
                    ),
                    _ => format!(
                        "rate limit of {}/s (burst {}) reached: the next token is {next_in:?} away",
                        config.rate_per_second, config.burst
                    ),
                };
                ResponseFuture::refused(CqlError::new(ErrorKind::RateLimited, message))
            }
            State::Idle | State::Waiting { .. } => {
                panic!(
                    "RateLimit::call without a ready poll_ready: poll_ready must return Ready first"
                )
            }
        }
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tower::{ServiceExt, service_fn};
    use tower_cql_core::Collector;
    use tower_cql_core::event::OwnedEvent;

    /// Keeps every throttle event.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<OwnedEvent>>);
    impl Collector for Recorder {
        fn on_throttle(&self, e: &ThrottleEvent<'_>) {
            self.0.lock().unwrap().push(Event::Throttle(*e).to_owned());
        }
    }
    impl Recorder {
        /// (waited, rejected) of each throttle event.
        fn throttles(&self) -> Vec<(Duration, bool)> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .filter_map(|e| match e.as_event() {
                    Event::Throttle(t) => {
                        assert_eq!(t.limiter, "rate_limit");
                        Some((t.waited, t.rejected))
                    }
                    _ => None,
                })
                .collect()
        }
    }

    type Mock = tower::util::ServiceFn<fn(CqlRequest) -> std::future::Ready<Result<(), CqlError>>>;

    fn mock() -> Mock {
        service_fn((|_| std::future::ready(Ok(()))) as fn(_) -> _)
    }

    fn req() -> CqlRequest {
        CqlRequest::query("SELECT v FROM ks.t WHERE k = 1")
    }

    fn limited(rate: f64, burst: u32, mode: RateLimitMode) -> (RateLimit<Mock>, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let collectors = Collectors::with([recorder.clone() as Arc<dyn Collector>]);
        let config = RateLimitConfig {
            rate_per_second: rate,
            burst,
            mode,
        };
        (
            RateLimit::new(mock(), config, collectors).unwrap(),
            recorder,
        )
    }

    /// Calls once; `Ok(waited)` when admitted.
    async fn once(svc: &mut RateLimit<Mock>) -> Result<Duration, ErrorKind> {
        let t0 = Instant::now();
        let svc = svc.ready().await.unwrap();
        let waited = t0.elapsed();
        svc.call(req()).await.map(|()| waited).map_err(|e| e.kind())
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_clock_reading_is_not_a_refusal() {
        // a high rate: the bucket's tolerance is 1 µs
        let bucket = Bucket::new(&RateLimitConfig {
            rate_per_second: 1e9,
            burst: 1000,
            ..RateLimitConfig::default()
        });
        let stale = Instant::now();
        tokio::time::advance(Duration::from_millis(5)).await;
        // another caller, with a current reading, moves the bucket on
        assert_eq!(
            bucket.take(Instant::now(), Duration::ZERO),
            Take::Taken(Duration::ZERO)
        );
        // this one read the clock 5 ms ago (descheduled since): it is
        // judged on a fresh reading, not refused for being late
        assert_eq!(
            bucket.take(stale, Duration::ZERO),
            Take::Taken(Duration::ZERO)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn burst_is_honoured_then_reject() {
        let (mut svc, rec) = limited(10.0, 3, RateLimitMode::Reject);
        for _ in 0..3 {
            assert_eq!(once(&mut svc).await, Ok(Duration::ZERO));
        }
        assert_eq!(once(&mut svc).await, Err(ErrorKind::RateLimited));
        // Only the refusal is an event.
        assert_eq!(rec.throttles(), vec![(Duration::ZERO, true)]);
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_refill_at_the_configured_rate() {
        let (mut svc, _) = limited(10.0, 2, RateLimitMode::Reject);
        assert!(once(&mut svc).await.is_ok());
        assert!(once(&mut svc).await.is_ok());
        assert!(once(&mut svc).await.is_err());
        // One token per 100 ms: none after 50 ms, one after 100 ms.
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(once(&mut svc).await.is_err());
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(once(&mut svc).await.is_ok());
        assert!(once(&mut svc).await.is_err());
        // A long pause refills at most `burst` tokens.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(once(&mut svc).await.is_ok());
        assert!(once(&mut svc).await.is_ok());
        assert!(once(&mut svc).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn wait_mode_sleeps_in_poll_ready_until_the_next_token() {
        let max_wait = Duration::from_secs(1);
        let (mut svc, rec) = limited(10.0, 1, RateLimitMode::Wait { max_wait });
        assert_eq!(once(&mut svc).await, Ok(Duration::ZERO));
        assert_eq!(once(&mut svc).await, Ok(Duration::from_millis(100)));
        assert_eq!(once(&mut svc).await, Ok(Duration::from_millis(100)));
        let events = rec.throttles();
        assert_eq!(
            events,
            vec![
                (Duration::from_millis(100), false),
                (Duration::from_millis(100), false)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn poll_ready_is_pending_while_waiting() {
        let max_wait = Duration::from_secs(1);
        let (mut svc, _) = limited(10.0, 1, RateLimitMode::Wait { max_wait });
        assert!(once(&mut svc).await.is_ok());
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(svc.poll_ready(&mut cx).is_pending());
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(svc.poll_ready(&mut cx).is_pending());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_longer_than_max_wait_is_refused_at_once() {
        let max_wait = Duration::from_millis(100);
        let (mut svc, rec) = limited(1.0, 1, RateLimitMode::Wait { max_wait });
        assert!(once(&mut svc).await.is_ok());
        let t0 = Instant::now();
        let err = svc.ready().await.unwrap().call(req()).await.unwrap_err();
        assert_eq!(t0.elapsed(), Duration::ZERO, "refused without waiting");
        assert_eq!(err.kind(), ErrorKind::RateLimited);
        assert!(err.message().contains("max_wait"), "{err}");
        assert!(err.was_not_sent());
        assert_eq!(rec.throttles(), vec![(Duration::ZERO, true)]);
        // Nothing was reserved: after 1 s exactly one token is there.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(once(&mut svc).await, Ok(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn clones_draw_from_one_bucket() {
        let (mut a, _) = limited(10.0, 2, RateLimitMode::Reject);
        let mut b = a.clone();
        assert!(once(&mut a).await.is_ok());
        assert!(once(&mut b).await.is_ok());
        assert!(once(&mut a).await.is_err());
        assert!(once(&mut b).await.is_err());
        // So do services made by one layer.
        let layer = RateLimitLayer::new(
            RateLimitConfig {
                rate_per_second: 10.0,
                burst: 1,
                mode: RateLimitMode::Reject,
            },
            Collectors::new(),
        )
        .unwrap();
        use tower_layer::Layer;
        let mut c = layer.layer(mock());
        let mut d = layer.layer(mock());
        assert!(c.ready().await.unwrap().call(req()).await.is_ok());
        assert!(d.ready().await.unwrap().call(req()).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_that_passes_while_waiting_fails_and_refunds() {
        let max_wait = Duration::from_secs(1);
        let (mut svc, rec) = limited(10.0, 1, RateLimitMode::Wait { max_wait });
        assert!(once(&mut svc).await.is_ok());
        let deadline = Instant::now() + Duration::from_millis(50);
        let ready = svc.ready().await.unwrap(); // waits 100 ms
        let err = ready
            .call(req().deadline(deadline.into_std()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::RateLimited);
        assert!(err.message().contains("deadline"), "{err}");
        assert_eq!(rec.throttles(), vec![(Duration::from_millis(100), true)]);
        // The token went back: the next request needs no wait.
        assert_eq!(once(&mut svc).await, Ok(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiting_clone_gives_its_token_back() {
        let max_wait = Duration::from_secs(1);
        let (mut svc, _) = limited(10.0, 1, RateLimitMode::Wait { max_wait });
        assert!(once(&mut svc).await.is_ok());
        let mut waiting = svc.clone();
        let waker = futures::task::noop_waker();
        assert!(
            waiting
                .poll_ready(&mut Context::from_waker(&waker))
                .is_pending()
        );
        drop(waiting);
        assert_eq!(once(&mut svc).await, Ok(Duration::from_millis(100)));
    }

    #[tokio::test(start_paused = true)]
    async fn sustained_load_is_held_to_the_rate() {
        // 50/s, burst 10, for 2 s of virtual time: 10 + 2 * 50 admitted.
        let (svc, _) = limited(
            50.0,
            10,
            RateLimitMode::Wait {
                max_wait: Duration::from_secs(60),
            },
        );
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let mut svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u32;
                while Instant::now() < start + Duration::from_secs(2) {
                    svc.ready().await.unwrap().call(req()).await.unwrap();
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        // Each of the 4 tasks may overshoot the end by its one reservation.
        assert!((110..=114).contains(&total), "{total}");
    }

    #[test]
    fn config_validation_names_the_field() {
        assert_eq!(RateLimitConfig::default().validate(), Ok(()));
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 2e9] {
            let err = RateLimitConfig {
                rate_per_second: rate,
                ..Default::default()
            }
            .validate()
            .unwrap_err();
            assert_eq!(err.field, "rate_limit.rate_per_second");
            assert!(err.message.contains("(0, 1e9]"), "{err}");
        }
        let err = RateLimitConfig {
            burst: 0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.field, "rate_limit.burst");
        assert!(err.to_string().contains("at least 1"), "{err}");
        assert!(
            RateLimitLayer::new(
                RateLimitConfig {
                    burst: 0,
                    ..Default::default()
                },
                Collectors::new()
            )
            .is_err()
        );
    }

    #[test]
    fn the_bucket_is_exact_at_high_rates() {
        // 1e9/s: one token per nanosecond, taken without waiting.
        let b = Bucket::new(&RateLimitConfig {
            rate_per_second: 1e9,
            burst: 1,
            mode: RateLimitMode::Reject,
        });
        let t = b.start + Duration::from_secs(1);
        assert_eq!(b.take(t, Duration::ZERO), Take::Taken(Duration::ZERO));
        assert_eq!(
            b.take(t, Duration::ZERO),
            Take::Refused(Duration::from_nanos(1))
        );
    }
}

/// The bucket's atomic protocol under `loom`: every interleaving of
/// callers taking (and refunding) tokens at one instant.
/// `RUSTFLAGS="--cfg tower_cql_loom" cargo test -p tower-cql-middleware --release --lib loom`
#[cfg(all(test, tower_cql_loom))]
mod loom_tests {
    use super::*;
    use loom::thread;

    fn bucket(burst: u32) -> Arc<Bucket> {
        Arc::new(Bucket::new(&RateLimitConfig {
            rate_per_second: 1.0,
            burst,
            ..RateLimitConfig::default()
        }))
    }

    fn taken(b: &Bucket) -> bool {
        matches!(b.take(b.start, Duration::ZERO), Take::Taken(w) if w.is_zero())
    }

    #[test]
    fn concurrent_takers_get_exactly_the_burst() {
        loom::model(|| {
            let b = bucket(2);
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let b = b.clone();
                    thread::spawn(move || u32::from(taken(&b)) + u32::from(taken(&b)))
                })
                .collect();
            let got: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
            assert_eq!(got, 2, "two tokens in a burst of two, whatever the order");
            assert!(!taken(&b), "and none left");
        });
    }

    #[test]
    fn a_refund_is_never_lost_nor_doubled() {
        loom::model(|| {
            let b = bucket(1);
            let refunder = {
                let b = b.clone();
                thread::spawn(move || {
                    let got = taken(&b);
                    if got {
                        b.refund();
                    }
                    got
                })
            };
            let other = {
                let b = b.clone();
                thread::spawn(move || taken(&b))
            };
            let (r, o) = (refunder.join().unwrap(), other.join().unwrap());
            // one token: whoever held it, the refunded one is available
            // again unless the other caller already has it
            let left = taken(&b);
            assert_eq!(
                u32::from(o) + u32::from(left),
                1,
                "refunder {r}, other {o}, left {left}"
            );
            assert!(!taken(&b));
        });
    }
}
