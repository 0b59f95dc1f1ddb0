//! Waits in the limiters, seen from the outside of the default stack: the
//! time a request spends waiting for a rate-limit token or a concurrency
//! slot is in its request event and its `cql.request` span, the request's
//! deadline bounds the wait, and a request dropped while it waits is
//! still reported. A stand-in driver and a paused Tokio clock make every
//! duration exact.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tower_cql_core::event::{Event, OwnedEvent, RequestEvent, ThrottleEvent};
use tower_cql_core::{
    Collector, Collectors, CqlError, CqlRequest, CqlResponse, ErrorKind, ExecutionInfo,
};
use tower_cql_middleware::concurrency::{AdaptiveConfig, ConcurrencyConfig, ConcurrencyLimitLayer};
use tower_cql_middleware::rate_limit::{RateLimitConfig, RateLimitLayer, RateLimitMode};
use tower_cql_middleware::stack::{Stack, StackBuilder, StackService};
use tower_layer::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

const MS: Duration = Duration::from_millis(1);

/// A stand-in for the driver service: every call takes `delay`.
#[derive(Clone)]
struct Driver {
    delay: Duration,
    calls: Arc<AtomicU32>,
}

impl Driver {
    fn new(delay: Duration) -> Driver {
        Driver {
            delay,
            calls: Arc::new(AtomicU32::new(0)),
        }
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

type DriverFuture = Pin<Box<dyn Future<Output = Result<CqlResponse, CqlError>> + Send>>;

impl Service<CqlRequest> for Driver {
    type Response = CqlResponse;
    type Error = CqlError;
    type Future = DriverFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: CqlRequest) -> DriverFuture {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(CqlResponse::synthetic(ExecutionInfo {
                attempts: 1,
                ..ExecutionInfo::default()
            }))
        })
    }
}

/// Keeps every event, in order.
#[derive(Default)]
struct Recorder(Mutex<Vec<OwnedEvent>>);

impl Collector for Recorder {
    fn on_request(&self, e: &RequestEvent<'_>) {
        self.0.lock().unwrap().push(Event::Request(*e).to_owned());
    }
    fn on_throttle(&self, e: &ThrottleEvent<'_>) {
        self.0.lock().unwrap().push(Event::Throttle(*e).to_owned());
    }
}

impl Recorder {
    /// (operation, duration, error kind) of each request event.
    fn requests(&self) -> Vec<(String, Duration, Option<ErrorKind>)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e.as_event() {
                Event::Request(r) => Some((
                    r.meta
                        .operation()
                        .map(|o| o.to_string())
                        .unwrap_or_default(),
                    r.duration,
                    r.error.map(|e| e.kind()),
                )),
                _ => None,
            })
            .collect()
    }

    /// (operation, limiter, waited, rejected) of each throttle event.
    fn throttles(&self) -> Vec<(String, &'static str, Duration, bool)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e.as_event() {
                Event::Throttle(t) => Some((
                    t.meta
                        .operation()
                        .map(|o| o.to_string())
                        .unwrap_or_default(),
                    t.limiter,
                    t.waited,
                    t.rejected,
                )),
                _ => None,
            })
            .collect()
    }
}

/// When a span opened, on the Tokio clock (paused in these tests).
struct Opened(Instant);

/// Keeps the name and duration (Tokio clock) of every span that closes.
#[derive(Clone, Default)]
struct SpanTimes(Arc<Mutex<Vec<(&'static str, Duration)>>>);

impl<S> tracing_subscriber::Layer<S> for SpanTimes
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        _: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let span = ctx.span(id).expect("a new span is registered");
        span.extensions_mut().insert(Opened(Instant::now()));
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let span = ctx.span(&id).expect("a closing span is registered");
        let opened = span
            .extensions()
            .get::<Opened>()
            .expect("set when opened")
            .0;
        self.0.lock().unwrap().push((span.name(), opened.elapsed()));
    }
}

impl SpanTimes {
    /// Durations of the `cql.request` spans closed so far, in order.
    fn requests(&self) -> Vec<Duration> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(name, _)| *name == "cql.request")
            .map(|(_, d)| *d)
            .collect()
    }
}

/// The default stack (tracing, metrics, retry, timeout) plus what
/// `configure` adds, around `driver`, emitting into a recorder.
fn stack(
    driver: &Driver,
    configure: impl FnOnce(StackBuilder) -> StackBuilder,
) -> (Stack<StackService<Driver>>, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let collectors = Collectors::with([recorder.clone()]);
    let stack = configure(StackBuilder::new(collectors))
        .build(driver.clone())
        .unwrap();
    (stack, recorder)
}

fn req(operation: &'static str) -> CqlRequest {
    CqlRequest::query("SELECT v FROM ks.kv WHERE k = 1").operation(operation)
}

/// A request whose deadline is `left` from now (on the Tokio clock).
fn req_within(operation: &'static str, left: Duration) -> CqlRequest {
    req(operation).deadline((Instant::now() + left).into_std())
}

fn one_token_per(interval: Duration, max_wait: Duration) -> RateLimitConfig {
    RateLimitConfig {
        rate_per_second: 1.0 / interval.as_secs_f64(),
        burst: 1,
        mode: RateLimitMode::Wait { max_wait },
    }
}

fn one_in_flight(queue_timeout: Option<Duration>) -> ConcurrencyConfig {
    ConcurrencyConfig {
        max_in_flight: 1,
        max_queue: 8,
        queue_timeout,
    }
}

#[tokio::test(start_paused = true)]
async fn the_wait_for_a_token_is_in_the_request_latency_and_span() {
    tower_cql_testkit::tracing_setup::global_registry();
    let spans = SpanTimes::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let driver = Driver::new(5 * MS);
    let (stack, rec) = stack(&driver, |b| {
        b.rate_limit(one_token_per(100 * MS, Duration::from_secs(1)))
    });
    let mut svc = stack.service();
    // the first takes the only token and is done at 5 ms; the second
    // waits until the next token is due, at 100 ms, then takes 5 ms
    for op in ["first", "second"] {
        svc.ready().await.unwrap().call(req(op)).await.unwrap();
    }
    assert_eq!(
        rec.requests(),
        [
            ("first".into(), 5 * MS, None),
            ("second".into(), 100 * MS, None)
        ]
    );
    assert_eq!(spans.requests(), [5 * MS, 100 * MS]);
    // the wait is also its own series
    assert_eq!(
        rec.throttles(),
        [("second".into(), "rate_limit", 95 * MS, false)]
    );
}

#[tokio::test(start_paused = true)]
async fn the_time_queued_for_a_slot_is_in_the_request_latency_and_span() {
    tower_cql_testkit::tracing_setup::global_registry();
    for adaptive in [false, true] {
        let spans = SpanTimes::default();
        let _guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
        let driver = Driver::new(50 * MS);
        let (stack, rec) = stack(&driver, |b| {
            if adaptive {
                b.adaptive(AdaptiveConfig {
                    initial: 1,
                    min: 1,
                    max: 1,
                    max_queue: 8,
                    queue_timeout: None,
                    ..AdaptiveConfig::default()
                })
            } else {
                b.concurrency(one_in_flight(None))
            }
        });
        let first = tokio::spawn(stack.service().oneshot(req("first")));
        tokio::time::sleep(10 * MS).await;
        // queued 40 ms behind the first, then 50 ms of its own
        stack.service().oneshot(req("second")).await.unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(
            rec.requests(),
            [
                ("first".into(), 50 * MS, None),
                ("second".into(), 90 * MS, None)
            ],
            "adaptive: {adaptive}"
        );
        assert_eq!(spans.requests(), [50 * MS, 90 * MS], "adaptive: {adaptive}");
        let limiter = if adaptive {
            "adaptive"
        } else {
            "concurrency_limit"
        };
        assert_eq!(
            rec.throttles(),
            [("second".into(), limiter, 40 * MS, false)],
            "adaptive: {adaptive}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_deadline_that_passes_while_waiting_for_a_token_fails_then() {
    tower_cql_testkit::tracing_setup::global_registry();
    let t0 = Instant::now();
    let driver = Driver::new(MS);
    let (stack, rec) = stack(&driver, |b| {
        b.rate_limit(one_token_per(
            Duration::from_secs(1),
            Duration::from_secs(1),
        ))
    });
    let mut svc = stack.service();
    svc.ready().await.unwrap().call(req("first")).await.unwrap();
    // the next token is 1 s away (within max_wait); the deadline is 20 ms away
    let started = Instant::now();
    let late = req_within("late", 20 * MS);
    let err = svc.ready().await.unwrap().call(late).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    assert!(err.was_not_sent());
    assert_eq!(started.elapsed(), 20 * MS);
    assert_eq!(driver.calls(), 1);
    assert_eq!(
        rec.requests()[1],
        ("late".into(), 20 * MS, Some(ErrorKind::DeadlineExceeded))
    );
    assert_eq!(
        rec.throttles(),
        [("late".into(), "rate_limit", 20 * MS, true)]
    );
    // it took no token: the next one is still due at 1 s
    tokio::time::sleep_until(t0 + Duration::from_secs(1) - 10 * MS).await;
    let t = Instant::now();
    svc.ready().await.unwrap().call(req("next")).await.unwrap();
    assert_eq!(
        t.elapsed(),
        11 * MS,
        "10 ms for the token, 1 ms in the driver"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_that_passes_in_the_queue_fails_then_and_the_queue_timeout_still_holds() {
    tower_cql_testkit::tracing_setup::global_registry();
    let driver = Driver::new(Duration::from_secs(5));
    let (stack, rec) = stack(&driver, |b| {
        b.concurrency(one_in_flight(Some(Duration::from_secs(1))))
            .without_timeout()
    });
    let first = tokio::spawn(stack.service().oneshot(req("first")));
    tokio::time::sleep(MS).await;
    // queued behind a 5 s request with a 1 s queue timeout: the 20 ms
    // deadline ends the wait
    let started = Instant::now();
    let err = stack
        .service()
        .oneshot(req_within("late", 20 * MS))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    assert!(err.was_not_sent());
    assert_eq!(started.elapsed(), 20 * MS);
    // a deadline later than the queue timeout: the queue timeout ends it
    let started = Instant::now();
    let err = stack
        .service()
        .oneshot(req_within("patient", Duration::from_secs(3)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Shed, "{err}");
    assert!(err.message().contains("timed out in the queue"), "{err}");
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(driver.calls(), 1);
    assert_eq!(
        rec.throttles(),
        [
            ("late".into(), "concurrency_limit", 20 * MS, true),
            (
                "patient".into(),
                "concurrency_limit",
                Duration::from_secs(1),
                true
            )
        ]
    );
    assert_eq!(
        rec.requests(),
        [
            ("late".into(), 20 * MS, Some(ErrorKind::DeadlineExceeded)),
            (
                "patient".into(),
                Duration::from_secs(1),
                Some(ErrorKind::Shed)
            )
        ]
    );
    first.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_while_queued_is_one_cancelled_request_and_frees_its_place() {
    tower_cql_testkit::tracing_setup::global_registry();
    let driver = Driver::new(100 * MS);
    let (stack, rec) = stack(&driver, |b| b.concurrency(one_in_flight(None)));
    let first = tokio::spawn(stack.service().oneshot(req("first")));
    tokio::time::sleep(MS).await;
    // the caller gives up on the queued request after 10 ms
    let dropped = tokio::time::timeout(10 * MS, stack.service().oneshot(req("dropped"))).await;
    assert!(dropped.is_err(), "still queued when dropped");
    assert_eq!(
        rec.requests(),
        [("dropped".into(), 10 * MS, Some(ErrorKind::Cancelled))]
    );
    assert_eq!(
        rec.throttles(),
        [("dropped".into(), "concurrency_limit", 10 * MS, true)]
    );
    first.await.unwrap().unwrap();
    // nothing was lost: the slot is free, and the next request is not queued
    let t = Instant::now();
    stack.service().oneshot(req("next")).await.unwrap();
    assert_eq!(t.elapsed(), 100 * MS);
    assert_eq!(rec.requests().len(), 3);
    assert_eq!(rec.throttles().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_while_waiting_for_a_token_is_one_cancelled_request_and_gives_it_back() {
    tower_cql_testkit::tracing_setup::global_registry();
    let driver = Driver::new(Duration::ZERO);
    let (stack, rec) = stack(&driver, |b| {
        b.rate_limit(one_token_per(100 * MS, Duration::from_secs(1)))
    });
    let start = Instant::now();
    stack.service().oneshot(req("first")).await.unwrap();
    let dropped = tokio::time::timeout(10 * MS, stack.service().oneshot(req("dropped"))).await;
    assert!(dropped.is_err(), "still waiting when dropped");
    assert_eq!(
        rec.requests()[1],
        ("dropped".into(), 10 * MS, Some(ErrorKind::Cancelled))
    );
    assert_eq!(
        rec.throttles(),
        [("dropped".into(), "rate_limit", 10 * MS, true)]
    );
    // the token it had reserved (due at 100 ms) went back: the next
    // request gets it at 100 ms, not 200 ms
    stack.service().oneshot(req("next")).await.unwrap();
    assert_eq!(start.elapsed(), 100 * MS);
    assert_eq!(rec.requests().len(), 3);
    assert_eq!(driver.calls(), 2);
}

/// An inner service that holds its caller to tower's contract: `call`
/// panics unless `poll_ready` returned Ready on the same instance since
/// its last call (a clone starts not ready). Ready while its switch is
/// on; pending otherwise, without a wake-up (poll it by hand).
#[derive(Debug)]
struct Strict {
    ready: bool,
    open: Arc<AtomicBool>,
    calls: Arc<AtomicU32>,
}

impl Strict {
    fn new() -> Strict {
        Strict {
            ready: false,
            open: Arc::new(AtomicBool::new(true)),
            calls: Arc::new(AtomicU32::new(0)),
        }
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Clone for Strict {
    fn clone(&self) -> Strict {
        Strict {
            ready: false,
            open: self.open.clone(),
            calls: self.calls.clone(),
        }
    }
}

impl Service<CqlRequest> for Strict {
    type Response = ();
    type Error = CqlError;
    type Future = std::future::Ready<Result<(), CqlError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        if self.open.load(Ordering::SeqCst) {
            self.ready = true;
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, _: CqlRequest) -> Self::Future {
        assert!(
            std::mem::take(&mut self.ready),
            "called without a ready poll_ready on this instance"
        );
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(()))
    }
}

fn poll_ready<S: Service<CqlRequest, Error = CqlError>>(svc: &mut S) -> Poll<Result<(), CqlError>> {
    let waker = futures::task::noop_waker();
    svc.poll_ready(&mut Context::from_waker(&waker))
}

fn poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    let waker = futures::task::noop_waker();
    Pin::new(f).poll(&mut Context::from_waker(&waker))
}

macro_rules! assert_ready_ok {
    ($e:expr) => {
        match $e {
            Poll::Ready(Ok(v)) => v,
            other => panic!("expected Ready(Ok(_)), got {other:?}"),
        }
    };
}

macro_rules! assert_pending {
    ($e:expr) => {
        assert!($e.is_pending(), "expected Pending")
    };
}

#[tokio::test(start_paused = true)]
async fn a_full_concurrency_limit_is_ready_and_its_response_future_queues() {
    tower_cql_testkit::tracing_setup::global_registry();
    let rec = Arc::new(Recorder::default());
    let collectors = Collectors::with([rec.clone()]);
    let layer = ConcurrencyLimitLayer::new(one_in_flight(None), collectors);
    let inner = Strict::new();
    let mut a = layer.layer(inner.clone());
    let mut b = a.clone();
    let mut c = a.clone();
    assert_ready_ok!(poll_ready(&mut a));
    let mut fa = Box::pin(a.call(req("a")));
    assert_eq!(layer.in_flight(), 1);
    // full: poll_ready is still ready (a wait there would be outside the
    // request); the calls queue in their response futures, up to max_queue
    assert_ready_ok!(poll_ready(&mut b));
    let mut fb = Box::pin(b.call(req("b")));
    assert_ready_ok!(poll_ready(&mut c));
    let mut fc = Box::pin(c.call(req("c")));
    assert_eq!(layer.queued(), 2);
    assert_pending!(poll(&mut fb));
    assert_pending!(poll(&mut fc));
    assert_eq!(inner.calls(), 1, "only a is called");
    // b's caller gives up: b leaves the queue, and says so
    tokio::time::advance(5 * MS).await;
    drop(fb);
    assert_eq!(layer.queued(), 1);
    assert_eq!(
        rec.throttles(),
        [("b".into(), "concurrency_limit", 5 * MS, true)]
    );
    // a completes: c takes the slot and calls the inner service that was
    // made ready for it (Strict panics otherwise) ...
    assert_ready_ok!(poll(&mut fa));
    drop(fa);
    assert_ready_ok!(poll(&mut fc));
    assert_eq!(inner.calls(), 2);
    assert_eq!((layer.in_flight(), layer.queued()), (0, 0));
    // ... and c's service kept a clone, made ready again for its next call
    assert_ready_ok!(poll_ready(&mut c));
    c.call(req("c")).await.unwrap();
    // backpressure from below still reaches the caller
    inner.open.store(false, Ordering::SeqCst);
    assert_pending!(poll_ready(&mut c));
}

#[tokio::test(start_paused = true)]
async fn an_empty_rate_limit_is_ready_and_its_response_future_waits() {
    tower_cql_testkit::tracing_setup::global_registry();
    let rec = Arc::new(Recorder::default());
    let collectors = Collectors::with([rec.clone()]);
    let layer = RateLimitLayer::new(one_token_per(100 * MS, Duration::from_secs(1)), collectors);
    let inner = Strict::new();
    let mut svc = layer.layer(inner.clone());
    assert_ready_ok!(poll_ready(&mut svc));
    svc.call(req("first")).await.unwrap();
    // the bucket is empty: poll_ready is still ready (it reserves
    // nothing); the call's future waits for the token
    assert_ready_ok!(poll_ready(&mut svc));
    let mut waiting = Box::pin(svc.call(req("second")));
    assert_pending!(poll(&mut waiting));
    tokio::time::advance(99 * MS).await;
    assert_pending!(poll(&mut waiting));
    assert_eq!(inner.calls(), 1);
    tokio::time::advance(MS).await;
    // the inner service made ready for it is called (Strict panics
    // otherwise) ...
    assert_ready_ok!(poll(&mut waiting));
    assert_eq!(inner.calls(), 2);
    assert_eq!(
        rec.throttles(),
        [("second".into(), "rate_limit", 100 * MS, false)]
    );
    // ... and the service kept a clone, made ready again for its call
    tokio::time::advance(100 * MS).await;
    assert_ready_ok!(poll_ready(&mut svc));
    svc.call(req("third")).await.unwrap();
    // backpressure from below still reaches the caller
    inner.open.store(false, Ordering::SeqCst);
    assert_pending!(poll_ready(&mut svc));
}
