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
//! );
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
//! `rate_per_second`, and up to `burst` may be taken at once. A token due
//! later is *reserved* by the same CAS (the bucket moves past it), so
//! waiters are served in the order they reserved, and a reservation that
//! goes unused gives its token back while it is still the newest; one
//! with a later reservation behind it does not (that later waiter already
//! sleeps until the slot after it, and moving the bucket back would let
//! the next request in beside it: more than `burst` at once), and its
//! token is lost.
//!
//! Why not `governor`: it answers "now or not until T" and has no way to
//! hold a token for a waiter and give it back when the waiter is dropped or
//! its deadline passes; without that, cancelled waiters would burn tokens
//! the next requests are owed. The algorithm is the same; the bucket is
//! about a hundred lines with a loom model.
//!
//! # Shared by clones, and by every service a layer makes
//! The bucket lives in an `Arc` owned by the [`RateLimitLayer`]: every
//! service it makes and every clone of those services draw from the same
//! bucket, so the configured rate is the rate of the whole process (for
//! that layer). tower's own `RateLimit` is not `Clone` (tower issue #794),
//! and a per-clone bucket would multiply the rate by the number of clones.
//!
//! # Where the wait happens: inside the request
//! `poll_ready` is the inner service's `poll_ready`: the limit reserves
//! nothing there and never makes it wait, because a wait there comes
//! before the request exists — outside its latency, its span and its
//! deadline. `call` takes the token:
//! - one is there now: the inner service is called at once;
//! - [`RateLimitMode::Wait`], and the next token is due within `max_wait`
//!   and before the request's deadline: it is reserved, and the response
//!   future sleeps until it is due, then calls the inner service (which
//!   goes into the future, polled ready; the service keeps a clone, to be
//!   polled ready before its next call: the `mem::replace` idiom of
//!   tower's `Service` docs). The wait is then part of the request: in
//!   the metrics layer's latency and the `cql.request` span above, and
//!   inside the shutdown gate;
//! - the next token is due within `max_wait` but after the request's
//!   deadline: nothing is reserved, the future waits until the deadline
//!   and fails then with [`ErrorKind::DeadlineExceeded`] (not sent);
//! - the next token is further away than `max_wait` (in
//!   [`RateLimitMode::Reject`]: any wait at all): the call fails at once
//!   with [`ErrorKind::RateLimited`].
//!
//! A response future dropped while it waits (its caller gave up) gives
//! its token back, unless a later token was reserved since.
//!
//! # Backpressure
//! A caller that awaits its requests is held to the rate by the futures
//! it awaits. Tokens are reserved at most `max_wait` ahead, so at most
//! about `rate_per_second × max_wait` requests wait at once; past that,
//! requests are refused, not piled up. Backpressure from below still
//! reaches the caller: `poll_ready` is pending while the inner service
//! is.
//!
//! Under a load shedder, build the layer
//! [`for_load_shed`](RateLimitLayer::for_load_shed) (the stack builder
//! does): then `poll_ready` takes a token and is pending until one is due,
//! so the load shedder refuses the request instead of letting it wait. It
//! asks the service below first, and takes the token only once that is
//! ready: a request shed because the concurrency limit below is full
//! costs no token (a token given back after a later one was taken would
//! be lost; the slot the limit below took always goes back).
//! A request this limit refuses (`RateLimited`) gives back what the
//! service below reserved for it (the slot of a concurrency limit built
//! `for_load_shed`), as every refusal in this crate does.
//!
//! # Events
//! Every request that waited or was refused emits
//! [`Event::Throttle`] with `limiter: "rate_limit"`, the time waited and
//! `rejected` — whether it did not get through: refused at once, its
//! deadline passed while it waited, or it was dropped while it waited
//! (the metrics layer reports that request as cancelled). The event is
//! emitted when the wait ends. `queue_depth` is always 0: waiters are not
//! queued, they hold reservations. Requests admitted at once emit
//! nothing.

mod bucket;
pub mod future;
mod layer;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower_cql_core::{Collectors, CqlError, CqlRequest, ErrorKind, Event};
use tower_cql_core::{clock, event::ThrottleEvent};
use tower_service::Service;

use self::bucket::{Bucket, Reservation, Take};
use crate::config::ConfigError;
use crate::wait;

pub use self::future::ResponseFuture;
pub use self::layer::RateLimitLayer;

/// What to do when no token is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitMode {
    /// Wait for the next token, up to `max_wait` (and never past the
    /// request's deadline), inside the request: in its response future. A
    /// token further away than `max_wait` fails the call with
    /// `RateLimited` at once. `max_wait: Duration::ZERO` is the same as
    /// [`RateLimitMode::Reject`].
    Wait {
        /// The longest a request may wait for its token.
        max_wait: Duration,
    },
    /// Fail the call with `RateLimited` at once.
    Reject,
}

impl RateLimitMode {
    /// The longest a request may wait for its token: zero in `Reject`
    /// mode (a request with no token now is refused, `RateLimited`, also
    /// under a load shedder, which then has nothing to shed for it).
    pub(crate) fn max_wait(&self) -> Duration {
        match *self {
            RateLimitMode::Wait { max_wait } => max_wait,
            RateLimitMode::Reject => Duration::ZERO,
        }
    }
}

/// Configures a [`RateLimitLayer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// Tokens added per second (finite, in `(0, 1e9]`, at least one per
    /// 100 years). Default 1000.
    pub rate_per_second: f64,
    /// Tokens that may be taken at once: the bucket's size (at least 1;
    /// `burst / rate_per_second`, the time an empty bucket takes to fill,
    /// at most 100 years). Default 100.
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
        // The bucket keeps its depth (the time an empty one takes to
        // fill, burst / rate) in nanoseconds of a u64: past 584 years it
        // overflowed and let every request through. Like every duration
        // a configuration gives, it is held to a hundred years.
        let longest = crate::config::LONGEST.as_secs_f64();
        const YEAR: f64 = 365.0 * 24.0 * 60.0 * 60.0;
        let interval = 1.0 / rate;
        if interval > longest {
            return Err(ConfigError::new(
                "rate_limit.rate_per_second",
                format!(
                    "must be at least one token per 100 years, got one per {:.0} years; for no limit, leave the rate limit off",
                    interval / YEAR
                ),
            ));
        }
        let fill = f64::from(self.burst) * interval;
        if fill > longest {
            return Err(ConfigError::new(
                "rate_limit.burst",
                format!(
                    "takes burst / rate_per_second = {:.0} years to refill, more than 100 years: lower burst or raise rate_per_second (for no limit, leave the rate limit off); got {}",
                    fill / YEAR,
                    self.burst
                ),
            ));
        }
        Ok(())
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

/// What `call` decides for a request (see the module docs).
pub(crate) enum Admit {
    /// A token now.
    Now,
    /// A token reserved, due after `wait`.
    After {
        wait: Duration,
        reservation: Reservation,
    },
    /// The next token is due after the request's deadline (within
    /// `max_wait`): nothing reserved.
    NotBefore(Instant),
    /// The next token is `next_in` away, further than `max_wait`.
    Refused { next_in: Duration },
}

impl Shared {
    fn max_wait(&self) -> Duration {
        self.config.mode.max_wait()
    }

    /// Takes or reserves a token at `now` for a request due by `deadline`:
    /// the wait is bounded by `max_wait` and by the deadline.
    pub(crate) fn admit(self: &Arc<Shared>, now: Instant, deadline: Option<Instant>) -> Admit {
        let max_wait = self.max_wait();
        let bound = deadline.map_or(max_wait, |d| max_wait.min(d.saturating_duration_since(now)));
        match self.bucket.take(now, bound) {
            (Take::Taken(wait), _) if wait.is_zero() => Admit::Now,
            (Take::Taken(wait), stamp) => Admit::After {
                wait,
                reservation: Reservation::new(self.clone(), stamp),
            },
            (Take::Refused(next_in), _) => match deadline {
                Some(deadline) if next_in <= max_wait => Admit::NotBefore(deadline),
                _ => Admit::Refused { next_in },
            },
        }
    }

    fn refusal(&self, next_in: Duration) -> CqlError {
        let config = &self.config;
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
        CqlError::new(ErrorKind::RateLimited, message)
    }

    pub(crate) fn emit(&self, req: &CqlRequest, waited: Duration, rejected: bool) {
        let collectors = &self.collectors;
        if collectors.is_active() {
            collectors.emit(Event::Throttle(ThrottleEvent::new(
                req.meta(),
                "rate_limit",
                waited,
                rejected,
                0,
            )));
        }
    }
}

/// Limits the rate of requests to its inner service; see the
/// [module docs](self).
pub struct RateLimit<S> {
    inner: S,
    /// `None`: a pass-through.
    shared: Option<Arc<Shared>>,
    /// `poll_ready` takes the token (see
    /// [`RateLimitLayer::for_load_shed`]).
    shed: bool,
    /// The token `poll_ready` took (under a load shedder).
    held: Option<Reservation>,
    /// The timer `poll_ready` waits on under a load shedder, made on first
    /// wait and reset for each one.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .field("for_load_shed", &self.shed)
            .field("holds_token", &self.held.is_some())
            .finish()
    }
}

impl<S: Clone> Clone for RateLimit<S> {
    /// A clone shares the bucket; it holds no token.
    fn clone(&self) -> RateLimit<S> {
        RateLimit {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            shed: self.shed,
            held: None,
            sleep: None,
        }
    }
}

impl<S> RateLimit<S> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>, shed: bool) -> RateLimit<S> {
        RateLimit {
            inner,
            shared: Some(shared),
            shed,
            held: None,
            sleep: None,
        }
    }

    /// A service that limits nothing and only forwards to `inner` (see
    /// [`toggle`](crate::toggle)): no bucket, no clock read.
    pub fn pass_through(inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            shared: None,
            shed: false,
            held: None,
            sleep: None,
        }
    }

    /// Whether this service passes requests through unlimited.
    pub fn is_pass_through(&self) -> bool {
        self.shared.is_none()
    }

    /// Wraps `inner` with its own bucket (use [`RateLimitLayer`] to share
    /// one bucket between several services).
    ///
    /// # Panics
    /// If `config` is invalid (see [`RateLimitConfig::validate`]).
    #[track_caller]
    pub fn new(inner: S, config: RateLimitConfig, collectors: Collectors) -> RateLimit<S> {
        RateLimitLayer::new(config, collectors).service(inner)
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

    /// The inner service. A token held for `call` is given back to the
    /// bucket, which takes it back only while no later token was taken
    /// (see the bucket's refund); otherwise it is spent.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Under a load shedder: takes a token now, or sleeps until the next
    /// is due (pending). In `Reject` mode there is never a wait: the call
    /// is refused, as without a load shedder.
    fn poll_token(&mut self, shared: &Arc<Shared>, cx: &mut Context<'_>) -> Poll<()> {
        if self.held.is_some() || shared.max_wait().is_zero() {
            return Poll::Ready(());
        }
        loop {
            let now = clock::now();
            match shared.bucket.take(now, Duration::ZERO) {
                (Take::Taken(_), stamp) => {
                    self.held = Some(Reservation::new(shared.clone(), stamp));
                    return Poll::Ready(());
                }
                (Take::Refused(next_in), _) => {
                    let until = now + next_in;
                    let sleep = match &mut self.sleep {
                        Some(sleep) => {
                            sleep.as_mut().reset(until);
                            sleep
                        }
                        None => self.sleep.insert(Box::pin(tokio::time::sleep_until(until))),
                    };
                    ready!(sleep.as_mut().poll(cx));
                }
            }
        }
    }
}

impl<S, R> Service<CqlRequest> for RateLimit<S>
where
    S: Service<CqlRequest, Response = R, Error = CqlError> + Clone,
{
    type Response = R;
    type Error = CqlError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        // Under a load shedder the service below is asked first and the
        // token taken last: what the service below reserves (a
        // concurrency slot) always goes back whole when the request is
        // shed, a token only while no later one was taken (see
        // `Bucket::refund`). So a request shed because the limit below is
        // full costs no token.
        ready!(self.inner.poll_ready(cx))?;
        if self.shed
            && let Some(shared) = self.shared.clone()
        {
            ready!(self.poll_token(&shared, cx));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: CqlRequest) -> Self::Future {
        let Some(shared) = &self.shared else {
            return ResponseFuture::called(self.inner.call(req));
        };
        if let Some(token) = self.held.take() {
            token.keep();
            return ResponseFuture::called(self.inner.call(req));
        }
        let now = clock::now();
        let (until, reservation) = match shared.admit(now, wait::deadline(&req)) {
            Admit::Now => return ResponseFuture::called(self.inner.call(req)),
            Admit::Refused { next_in } => {
                // what the inner service reserved for this call goes back
                crate::refusal::release(&mut self.inner);
                shared.emit(&req, Duration::ZERO, true);
                return ResponseFuture::refused(shared.refusal(next_in));
            }
            Admit::After { wait, reservation } => (now + wait, Some(reservation)),
            Admit::NotBefore(deadline) => (deadline, None),
        };
        // `inner` was polled ready: it goes with the request, and this
        // service keeps a clone (polled ready before its own call)
        let ready = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, ready);
        ResponseFuture::waiting(shared.clone(), ready, req, now, until, reservation)
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
        let collectors = Collectors::with([recorder.clone()]);
        let config = RateLimitConfig {
            rate_per_second: rate,
            burst,
            mode,
        };
        (RateLimit::new(mock(), config, collectors), recorder)
    }

    /// Calls once; `Ok(waited)` when admitted (the mock answers at once,
    /// so the request's whole time is its wait).
    async fn once(svc: &mut RateLimit<Mock>) -> Result<Duration, ErrorKind> {
        let t0 = Instant::now();
        let out = svc.ready().await.unwrap().call(req()).await;
        out.map(|()| t0.elapsed()).map_err(|e| e.kind())
    }

    fn poll_ready<S: Service<CqlRequest, Error = CqlError>>(
        svc: &mut S,
    ) -> Poll<Result<(), CqlError>> {
        let waker = futures::task::noop_waker();
        svc.poll_ready(&mut Context::from_waker(&waker))
    }

    fn poll_fut<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let waker = futures::task::noop_waker();
        Pin::new(f).poll(&mut Context::from_waker(&waker))
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
    async fn wait_mode_waits_in_the_response_future_until_the_next_token() {
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
        );
        use tower_layer::Layer;
        let mut c = layer.layer(mock());
        let mut d = layer.layer(mock());
        assert!(c.ready().await.unwrap().call(req()).await.is_ok());
        assert!(d.ready().await.unwrap().call(req()).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_before_the_next_token_fails_at_the_deadline_taking_nothing() {
        let max_wait = Duration::from_secs(1);
        let (mut svc, rec) = limited(10.0, 1, RateLimitMode::Wait { max_wait });
        assert!(once(&mut svc).await.is_ok());
        // the next token is 100 ms away, the deadline 50 ms
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_millis(50);
        let ready = svc.ready().await.unwrap();
        let err = ready
            .call(req().deadline(deadline.into_std()))
            .await
            .unwrap_err();
        assert_eq!(t0.elapsed(), Duration::from_millis(50), "at the deadline");
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
        assert!(err.was_not_sent());
        assert!(err.message().contains("waited 50ms for a token"), "{err}");
        assert_eq!(rec.throttles(), vec![(Duration::from_millis(50), true)]);
        // it reserved nothing: the next token is still due at 100 ms
        assert_eq!(once(&mut svc).await, Ok(Duration::from_millis(50)));
        // a deadline already passed: failed on the first poll
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(req().deadline(t0.into_std()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_due_before_the_deadline_is_waited_for() {
        let max_wait = Duration::from_secs(1);
        let (mut svc, _) = limited(10.0, 1, RateLimitMode::Wait { max_wait });
        assert!(once(&mut svc).await.is_ok());
        let t0 = Instant::now();
        // due at 100 ms, the deadline at 100 ms: the token is in time
        let deadline = t0 + Duration::from_millis(100);
        let ready = svc.ready().await.unwrap();
        ready
            .call(req().deadline(deadline.into_std()))
            .await
            .unwrap();
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiting_future_gives_its_token_back() {
        let max_wait = Duration::from_secs(1);
        let (mut svc, rec) = limited(10.0, 1, RateLimitMode::Wait { max_wait });
        assert!(once(&mut svc).await.is_ok());
        let mut waiting = Box::pin(svc.ready().await.unwrap().call(req()));
        assert!(poll_fut(&mut waiting).is_pending());
        tokio::time::advance(Duration::from_millis(30)).await;
        drop(waiting);
        assert_eq!(rec.throttles(), vec![(Duration::from_millis(30), true)]);
        // the token due at 100 ms is free again: 70 ms away, not 170 ms
        assert_eq!(once(&mut svc).await, Ok(Duration::from_millis(70)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_with_a_later_one_behind_it_gives_nothing_back() {
        // 10/s, burst 1: A reserves the token due at 100 ms, B the one
        // due at 200 ms; A is dropped at 10 ms. Its token cannot go back
        // (B already sleeps until 200 ms): C is due at 300 ms, not with
        // B at 200 ms.
        let max_wait = Duration::from_secs(1);
        let (mut svc, _) = limited(10.0, 1, RateLimitMode::Wait { max_wait });
        let t0 = Instant::now();
        assert!(once(&mut svc).await.is_ok());
        let mut a = Box::pin(svc.ready().await.unwrap().call(req()));
        assert!(poll_fut(&mut a).is_pending());
        let mut b = Box::pin(svc.ready().await.unwrap().call(req()));
        assert!(poll_fut(&mut b).is_pending());
        tokio::time::advance(Duration::from_millis(10)).await;
        drop(a);
        let c = svc.ready().await.unwrap().call(req());
        let (b_at, c_at) = tokio::join!(
            async {
                b.await.unwrap();
                t0.elapsed()
            },
            async {
                c.await.unwrap();
                t0.elapsed()
            }
        );
        assert_eq!(b_at, Duration::from_millis(200));
        assert_eq!(
            c_at,
            Duration::from_millis(300),
            "burst 1 at 10/s: B and C admitted together"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn for_load_shed_poll_ready_takes_the_token_and_is_pending_until_due() {
        let layer = RateLimitLayer::new(
            RateLimitConfig {
                rate_per_second: 10.0,
                burst: 1,
                mode: RateLimitMode::Wait {
                    max_wait: Duration::from_secs(1),
                },
            },
            Collectors::new(),
        )
        .for_load_shed();
        use tower_layer::Layer;
        let mut a = layer.layer(mock());
        let mut b = a.clone();
        assert!(matches!(poll_ready(&mut a), Poll::Ready(Ok(()))));
        // a holds the token: b is not ready until the next is due
        assert!(poll_ready(&mut b).is_pending());
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(poll_ready(&mut b).is_pending());
        // a ready service dropped before its call gives its token back
        drop(a);
        assert!(matches!(poll_ready(&mut b), Poll::Ready(Ok(()))));
        b.call(req()).await.unwrap();
        assert!(poll_ready(&mut b).is_pending());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(matches!(poll_ready(&mut b), Poll::Ready(Ok(()))));
        b.call(req()).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_under_load_shedding_frees_the_capacity_reserved_below() {
        // load shed -> rate limit (Reject, 1/s, burst 1) -> concurrency
        // limit (1, built for load shedding: poll_ready takes the slot).
        // A long-lived service whose request the rate limit refuses must
        // not keep that slot while it is idle.
        use crate::concurrency::{ConcurrencyConfig, ConcurrencyLimitLayer};
        use crate::load_shed::LoadShedLayer;
        use tower_layer::Layer;
        let rate = RateLimitLayer::new(
            RateLimitConfig {
                rate_per_second: 1.0,
                burst: 1,
                mode: RateLimitMode::Reject,
            },
            Collectors::new(),
        )
        .for_load_shed();
        let limit = ConcurrencyLimitLayer::new(
            ConcurrencyConfig {
                max_in_flight: 1,
                max_queue: 0,
                queue_timeout: None,
            },
            Collectors::new(),
        )
        .for_load_shed();
        let shed = LoadShedLayer::new(Collectors::new());
        let stack = || shed.layer(rate.layer(limit.layer(mock())));
        let mut long_lived = stack();
        long_lived.ready().await.unwrap().call(req()).await.unwrap();
        let err = long_lived.ready().await.unwrap().call(req()).await;
        assert_eq!(err.unwrap_err().kind(), ErrorKind::RateLimited);
        // a second later a token is due and nothing is in flight: another
        // request is not shed for want of the slot the refused one kept
        tokio::time::advance(Duration::from_secs(1)).await;
        let out = stack().oneshot(req()).await;
        assert!(
            out.is_ok(),
            "nothing in flight and a token due, yet refused: {:?}",
            out.err().map(|e| e.to_string())
        );
        assert_eq!(limit.in_flight(), 0, "nothing in flight");
        drop(long_lived);
    }

    #[tokio::test(start_paused = true)]
    async fn under_load_shedding_a_full_concurrency_limit_costs_no_token() {
        // load shed -> rate limit (burst 3, one token per 1000 s) ->
        // concurrency limit (1), both built for load shedding. X holds the
        // slot; A and B are polled ready at once (two threads do that) and
        // shed. A token given back behind a later one is lost (see
        // `Bucket::refund`), so neither may take one for a request the
        // concurrency limit refuses anyway.
        use crate::concurrency::{ConcurrencyConfig, ConcurrencyLimitLayer};
        use crate::load_shed::LoadShedLayer;
        use tower_layer::Layer;
        let rate = RateLimitLayer::new(
            RateLimitConfig {
                rate_per_second: 0.001,
                burst: 3,
                mode: RateLimitMode::Wait {
                    max_wait: Duration::from_secs(1),
                },
            },
            Collectors::new(),
        )
        .for_load_shed();
        let limit = ConcurrencyLimitLayer::new(
            ConcurrencyConfig {
                max_in_flight: 1,
                max_queue: 0,
                queue_timeout: None,
            },
            Collectors::new(),
        )
        .for_load_shed();
        let shed = LoadShedLayer::new(Collectors::new());
        let inner = service_fn(|_: CqlRequest| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, CqlError>(())
        });
        let stack = || shed.layer(rate.layer(limit.layer(inner)));
        let mut x = Box::pin(stack().oneshot(req()));
        assert!(poll_fut(&mut x).is_pending(), "X holds the slot");
        let (mut a, mut b) = (stack(), stack());
        assert!(matches!(poll_ready(&mut a), Poll::Ready(Ok(()))));
        assert!(matches!(poll_ready(&mut b), Poll::Ready(Ok(()))));
        for svc in [&mut a, &mut b] {
            let err = svc.call(req()).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Shed);
        }
        x.await.unwrap();
        // X spent one token of three: two requests are served
        for i in 0..2 {
            let out = stack().oneshot(req()).await;
            assert!(
                out.is_ok(),
                "request {i} after X: {:?} (a shed request cost a token)",
                out.err().map(|e| e.to_string())
            );
        }
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
    fn a_bucket_too_deep_for_its_clock_is_refused() {
        // One token per 3,000 years, or a burst that takes 630 years to
        // refill: the bucket's depth in nanoseconds does not fit its u64
        // clock, and such a bucket let every request through. (Refused
        // above 100 years, the bound of every configured duration.)
        let cases = [
            (1e-11, 1, "rate_limit.rate_per_second"),
            (1e-6, 20_000, "rate_limit.burst"),
            (1e-6, 4_000, "rate_limit.burst"),
        ];
        for (rate_per_second, burst, field) in cases {
            let config = RateLimitConfig {
                rate_per_second,
                burst,
                mode: RateLimitMode::Reject,
            };
            let err = config.validate().err().unwrap_or_else(|| {
                let bucket = Bucket::new(&config);
                let now = bucket.start;
                let n = burst + 1000;
                let taken = (0..n)
                    .filter(|_| matches!(bucket.take(now, Duration::ZERO).0, Take::Taken(_)))
                    .count();
                panic!("{config:?} accepted: {taken} of {n} requests at once let through")
            });
            assert_eq!(err.field, field, "{config:?}");
            assert!(err.message.contains("100 years"), "{err}");
        }
        // a deep bucket accepted (95 years to refill) counts as configured
        let config = RateLimitConfig {
            rate_per_second: 1e-6,
            burst: 3_000,
            mode: RateLimitMode::Reject,
        };
        assert_eq!(config.validate(), Ok(()));
        let bucket = Bucket::new(&config);
        let now = bucket.start;
        let taken = (0..3_001)
            .take_while(|_| matches!(bucket.take(now, Duration::ZERO).0, Take::Taken(_)))
            .count();
        assert_eq!(taken, 3_000);
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
        let msg = crate::config::panic_message(|| {
            let config = RateLimitConfig {
                burst: 0,
                ..Default::default()
            };
            RateLimitLayer::new(config, Collectors::new())
        });
        assert!(msg.contains("rate_limit.burst"), "{msg}");
    }
}

/// The admission path under `loom`: requests reserving tokens they will
/// wait for, one of them dropped while it waits (its reservation gives
/// the token back unless the other reserved after it) or bounded by its
/// deadline (it reserves nothing), while another reserves and keeps its
/// own. No interleaving lets a request in beside the kept one, and none
/// loses a token but the one that could not go back.
/// `RUSTFLAGS="--cfg tower_cql_loom" cargo test -p tower-cql-middleware --release --lib loom`
#[cfg(all(test, tower_cql_loom))]
mod loom_tests {
    use super::*;
    use loom::thread;

    /// One token per second, a burst of one; the first token taken.
    fn shared() -> Arc<Shared> {
        let config = RateLimitConfig {
            rate_per_second: 1.0,
            burst: 1,
            mode: RateLimitMode::Wait {
                max_wait: Duration::from_secs(10),
            },
        };
        let shared = Arc::new(Shared {
            bucket: Bucket::new(&config),
            config,
            collectors: Collectors::new(),
        });
        let start = shared.bucket.start;
        assert!(matches!(shared.admit(start, None), Admit::Now));
        shared
    }

    /// Tokens that can be taken at once at `at`.
    fn available_at(shared: &Shared, at: Instant) -> u32 {
        let mut n = 0;
        while n < 5 && matches!(shared.bucket.take(at, Duration::ZERO).0, Take::Taken(_)) {
            n += 1;
        }
        n
    }

    /// Reserves the next token and keeps it (the request is called when
    /// it is due, after the wait returned).
    fn reserve_and_keep(shared: &Arc<Shared>) -> Duration {
        match shared.admit(shared.bucket.start, None) {
            Admit::After { reservation, wait } => {
                reservation.keep();
                wait
            }
            _ => panic!("the next token is reserved within max_wait"),
        }
    }

    #[test]
    fn loom_a_waiter_dropped_while_another_waits_never_admits_two_at_once() {
        loom::model(|| {
            let shared = shared();
            let dropped = {
                let shared = shared.clone();
                thread::spawn(move || match shared.admit(shared.bucket.start, None) {
                    // the caller gives up while it waits
                    Admit::After { reservation, .. } => drop(reservation),
                    _ => panic!("the next token is reserved within max_wait"),
                })
            };
            let kept = {
                let shared = shared.clone();
                thread::spawn(move || reserve_and_keep(&shared))
            };
            dropped.join().unwrap();
            let kept = kept.join().unwrap();
            // The kept token is due at 1 s (the dropped waiter reserved
            // after it, or gave its token back before it reserved), or at
            // 2 s (the dropped one reserved the 1 s token first and could
            // not give it back behind the later reservation).
            let second = Duration::from_secs(1);
            assert!(kept == second || kept == 2 * second, "kept due in {kept:?}");
            // Either way nothing is let in beside the kept one, and the
            // next token is due a second after it (none lost beyond the
            // one that could not go back).
            let due = shared.bucket.start + kept;
            assert_eq!(available_at(&shared, due), 0, "kept due in {kept:?}");
            assert_eq!(
                available_at(&shared, due + second),
                1,
                "kept due in {kept:?}"
            );
        });
    }

    #[test]
    fn loom_a_wait_bounded_by_the_deadline_reserves_nothing() {
        loom::model(|| {
            let shared = shared();
            let start = shared.bucket.start;
            let bounded = {
                let shared = shared.clone();
                thread::spawn(move || {
                    // the next token is 1 s or 2 s away; the deadline 500 ms
                    let deadline = start + Duration::from_millis(500);
                    assert!(matches!(
                        shared.admit(start, Some(deadline)),
                        Admit::NotBefore(d) if d == deadline
                    ));
                })
            };
            let kept = {
                let shared = shared.clone();
                thread::spawn(move || reserve_and_keep(&shared))
            };
            bounded.join().unwrap();
            kept.join().unwrap();
            let two_s = start + Duration::from_secs(2);
            assert_eq!(available_at(&shared, two_s), 1);
        });
    }
}
