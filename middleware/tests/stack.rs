//! The default stack end to end against testkit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tower::{Service, ServiceExt};
use tower_cql_core::{AttemptReason, CqlRequest, ErrorKind, Statement};
use tower_cql_middleware::retry::RetryConfig;
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_middleware::stack_config::StackConfig;
use tower_cql_testkit::{Fault, InjectedError, Opcode};
use tower_layer::Layer;

mod support;
use support::setup;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_retried_twice_is_one_logical_event_and_three_attempts() {
    tower_cql_testkit::tracing_setup::global_registry();
    let (cluster, driver, collectors, memory) = setup().await;
    let stack = StackBuilder::new(collectors)
        .retry(RetryConfig {
            max_attempts: 3,
            ..Default::default()
        })
        .build(driver)
        .unwrap();
    let mut svc = stack.service();
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?")
        .operation("get")
        .idempotent(true);
    svc.ready()
        .await
        .unwrap()
        .call(get.request().bind((1i32,)))
        .await
        .unwrap();
    let before = memory.snapshot();
    cluster.faults().add(
        Fault::error(InjectedError::Overloaded)
            .opcode(Opcode::Execute)
            .times(2),
    );
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(get.request().bind((1i32,)))
        .await
        .unwrap();
    assert_eq!(resp.info().attempts, 3);
    let after = memory.snapshot();
    assert_eq!(
        after.request_latency(Some("get")).count() - before.request_latency(Some("get")).count(),
        1
    );
    assert_eq!(
        after.attempt_latency(Some("get")).count() - before.attempt_latency(Some("get")).count(),
        3
    );
    assert_eq!(
        after.attempts_by_reason(AttemptReason::Initial)
            - before.attempts_by_reason(AttemptReason::Initial),
        1
    );
    assert_eq!(after.attempts_by_reason(AttemptReason::Retry), 2);
    assert_eq!(after.retries.get(&ErrorKind::Overloaded), Some(&2));
    assert_eq!(after.attempt_errors.get(&ErrorKind::Overloaded), Some(&2));

    // A non-idempotent write applied then timed out is not retried.
    cluster
        .faults()
        .add(Fault::write_timeout_after_apply().times(1));
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(CqlRequest::query("INSERT INTO ks.kv (k, v) VALUES (?, ?)").bind((9i32, "x")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WriteTimeout);
    assert_eq!(err.attempts(), 1);
    assert_eq!(cluster.counters().duplicate_writes(), 0);

    stack.close().await;
    assert!(!stack.is_open());
    let err = stack.service().ready().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ShutDown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_validates_and_takes_user_layers() {
    tower_cql_testkit::tracing_setup::global_registry();
    let (_cluster, driver, collectors, _memory) = setup().await;
    // impossible configurations are refused when built, naming the field
    let err = StackBuilder::new(collectors.clone())
        .retry(RetryConfig {
            max_attempts: 0,
            ..Default::default()
        })
        .build(driver.clone())
        .unwrap_err();
    assert!(err.to_string().contains("retry.max_attempts"), "{err}");
    let err = StackBuilder::new(collectors.clone())
        .load_shed(true)
        .build(driver.clone())
        .unwrap_err();
    assert!(err.to_string().contains("load_shed"), "{err}");
    let err = StackConfig::from_toml("[retry]\nmax_attempt = 3").unwrap_err();
    assert!(err.to_string().contains("max_attempt"), "{err}");
    let err = StackConfig::from_toml("[breaker]\nenabled = true\nfailure_rate = 1.5")
        .unwrap()
        .into_builder(collectors.clone())
        .unwrap_err();
    assert!(err.to_string().contains("failure_rate"), "{err}");

    // a user layer innermost (around the driver) and outermost (around the stack)
    #[derive(Clone)]
    struct Count(Arc<AtomicU64>);
    #[derive(Clone)]
    struct Counted<S>(S, Arc<AtomicU64>);
    impl<S> Layer<S> for Count {
        type Service = Counted<S>;
        fn layer(&self, inner: S) -> Counted<S> {
            Counted(inner, self.0.clone())
        }
    }
    impl<S: Service<CqlRequest>> Service<CqlRequest> for Counted<S> {
        type Response = S::Response;
        type Error = S::Error;
        type Future = S::Future;
        fn poll_ready(
            &mut self,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), S::Error>> {
            self.0.poll_ready(cx)
        }
        fn call(&mut self, req: CqlRequest) -> S::Future {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.call(req)
        }
    }
    let inner_count = Count(Arc::new(AtomicU64::new(0)));
    let outer_count = Count(Arc::new(AtomicU64::new(0)));
    let config = StackConfig::from_toml(
        r#"
        [retry]
        max_attempts = 2
        [timeout]
        per_attempt_ms = 2000
        [concurrency]
        enabled = true
        max_in_flight = 8
        "#,
    )
    .unwrap();
    let stack = config
        .into_builder(collectors)
        .unwrap()
        .build(inner_count.layer(driver))
        .unwrap();
    let mut svc = outer_count.layer(stack.service());
    for k in 0..5i32 {
        svc.ready()
            .await
            .unwrap()
            .call(CqlRequest::query("SELECT v FROM ks.kv WHERE k = ?").bind((k,)))
            .await
            .unwrap();
    }
    assert_eq!(inner_count.0.load(Ordering::Relaxed), 5);
    assert_eq!(outer_count.0.load(Ordering::Relaxed), 5);
    tokio::time::timeout(Duration::from_secs(5), stack.close())
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------
// Every layer subset is one stack type: the layers switched off are
// pass-throughs. A stand-in driver (no cluster) and a paused clock.

mod subsets {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use tower::{Service, ServiceExt};
    use tower_cql_core::event::{
        AttemptEvent, BreakerEvent, LimitEvent, RequestEvent, RetryEvent, ShedEvent, ThrottleEvent,
    };
    use tower_cql_core::{
        Collector, Collectors, CqlError, CqlRequest, CqlResponse, ErrorKind, ExecutionInfo,
    };
    use tower_cql_middleware::breaker::BreakerConfig;
    use tower_cql_middleware::concurrency::{AdaptiveConfig, ConcurrencyConfig};
    use tower_cql_middleware::hedge::{HedgeConfig, HedgeDelay};
    use tower_cql_middleware::rate_limit::{RateLimitConfig, RateLimitMode};
    use tower_cql_middleware::retry::{Backoff, RetryConfig};
    use tower_cql_middleware::stack::StackBuilder;
    use tower_cql_middleware::timeout::TimeoutConfig;
    use tower_cql_middleware::trace::TraceConfig;
    use tracing_subscriber::layer::SubscriberExt;

    const MS: Duration = Duration::from_millis(1);

    /// A stand-in for the driver service: call `n` takes `delays[n]` (the
    /// last delay for every later call) and fails with `Overloaded` while
    /// `failures` remain. It emits nothing.
    #[derive(Clone)]
    struct Driver {
        calls: Arc<AtomicU32>,
        failures: Arc<AtomicU32>,
        delays: Arc<Vec<Duration>>,
    }

    impl Driver {
        fn new(failures: u32, delays: &[Duration]) -> Driver {
            Driver {
                calls: Arc::new(AtomicU32::new(0)),
                failures: Arc::new(AtomicU32::new(failures)),
                delays: Arc::new(delays.to_vec()),
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

        fn call(&mut self, _req: CqlRequest) -> DriverFuture {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) as usize;
            let fail = self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
                .is_ok();
            let delay = self.delays[n.min(self.delays.len() - 1)];
            Box::pin(async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if fail {
                    Err(CqlError::new(ErrorKind::Overloaded, "injected"))
                } else {
                    Ok(CqlResponse::synthetic(ExecutionInfo {
                        attempts: 1,
                        ..ExecutionInfo::default()
                    }))
                }
            })
        }
    }

    /// Counts every event, by kind (and limiter or layer where it has one).
    #[derive(Default)]
    struct Counting {
        request: AtomicU64,
        attempt: AtomicU64,
        retry: AtomicU64,
        throttle_rate: AtomicU64,
        throttle_limit: AtomicU64,
        shed_load_shed: AtomicU64,
        shed_other: AtomicU64,
        breaker: AtomicU64,
        limit: AtomicU64,
    }

    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::SeqCst);
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::SeqCst)
    }

    impl Collector for Counting {
        fn on_request(&self, _: &RequestEvent<'_>) {
            bump(&self.request);
        }
        fn on_attempt(&self, _: &AttemptEvent<'_>) {
            bump(&self.attempt);
        }
        fn on_retry(&self, _: &RetryEvent<'_>) {
            bump(&self.retry);
        }
        fn on_throttle(&self, e: &ThrottleEvent<'_>) {
            match e.limiter {
                "rate_limit" => bump(&self.throttle_rate),
                _ => bump(&self.throttle_limit),
            }
        }
        fn on_shed(&self, e: &ShedEvent<'_>) {
            match e.layer {
                "load_shed" => bump(&self.shed_load_shed),
                _ => bump(&self.shed_other),
            }
        }
        fn on_breaker(&self, _: &BreakerEvent<'_>) {
            bump(&self.breaker);
        }
        fn on_limit(&self, _: &LimitEvent) {
            bump(&self.limit);
        }
    }

    impl Counting {
        fn total(&self) -> u64 {
            [
                &self.request,
                &self.attempt,
                &self.retry,
                &self.throttle_rate,
                &self.throttle_limit,
                &self.shed_load_shed,
                &self.shed_other,
                &self.breaker,
                &self.limit,
            ]
            .into_iter()
            .map(get)
            .sum()
        }
    }

    /// Counts the spans made.
    struct SpanCount(Arc<AtomicU64>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanCount {
        fn on_new_span(
            &self,
            _: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Limit {
        None,
        Fixed,
        Adaptive,
    }

    /// Which layers are on.
    #[derive(Debug, Clone, Copy)]
    struct Shape {
        trace: bool,
        metrics: bool,
        breaker: bool,
        rate_limit: bool,
        limit: Limit,
        shed: bool,
        retry: bool,
        hedge: bool,
        timeout: bool,
    }

    const ALL_OFF: Shape = Shape {
        trace: false,
        metrics: false,
        breaker: false,
        rate_limit: false,
        limit: Limit::None,
        shed: false,
        retry: false,
        hedge: false,
        timeout: false,
    };

    const ALL_ON: Shape = Shape {
        trace: true,
        metrics: true,
        breaker: true,
        rate_limit: true,
        limit: Limit::Fixed,
        shed: true,
        retry: true,
        hedge: true,
        timeout: true,
    };

    impl Shape {
        fn builder(self, collectors: Collectors) -> StackBuilder {
            let mut b = StackBuilder::new(collectors)
                .without_trace()
                .without_metrics()
                .without_retry()
                .without_timeout();
            if self.trace {
                b = b.trace(TraceConfig::default());
            }
            if self.metrics {
                b = b.metrics(Default::default());
            }
            if self.breaker {
                b = b.breaker(BreakerConfig::default());
            }
            if self.rate_limit {
                b = b.rate_limit(RateLimitConfig {
                    rate_per_second: 1.0,
                    burst: 2,
                    mode: RateLimitMode::Reject,
                });
            }
            match self.limit {
                Limit::None => {}
                Limit::Fixed => {
                    b = b.concurrency(ConcurrencyConfig {
                        max_in_flight: 1,
                        // (under load shedding nothing waits: no queue)
                        max_queue: if self.shed { 0 } else { 8 },
                        queue_timeout: None,
                    })
                }
                Limit::Adaptive => {
                    b = b.adaptive(AdaptiveConfig {
                        initial: 1,
                        min: 1,
                        max: 1,
                        // (under load shedding nothing waits: no queue)
                        max_queue: if self.shed { 0 } else { 8 },
                        queue_timeout: None,
                        ..AdaptiveConfig::default()
                    })
                }
            }
            b = b.load_shed(self.shed);
            if self.retry {
                b = b.retry(RetryConfig {
                    max_attempts: 3,
                    backoff: Backoff { base: MS, max: MS },
                    ..RetryConfig::default()
                });
            }
            if self.hedge {
                b = b.hedge(HedgeConfig {
                    delay: HedgeDelay::Fixed(20 * MS),
                    max_speculative: 1,
                    ..HedgeConfig::default()
                });
            }
            if self.timeout {
                b = b.timeout(TimeoutConfig {
                    per_attempt: Some(Duration::from_secs(2)),
                    honour_deadline: true,
                });
            }
            b
        }
    }

    /// The shapes tried: none, all (with either limit), the default, each
    /// layer alone, and all but each one.
    fn shapes() -> Vec<Shape> {
        let mut shapes = vec![
            ALL_OFF,
            ALL_ON,
            Shape {
                limit: Limit::Adaptive,
                ..ALL_ON
            },
            Shape {
                trace: true,
                metrics: true,
                retry: true,
                timeout: true,
                ..ALL_OFF
            },
        ];
        type Toggle = fn(&mut Shape, bool);
        let toggles: [Toggle; 8] = [
            |s, on| s.trace = on,
            |s, on| s.metrics = on,
            |s, on| s.breaker = on,
            |s, on| s.rate_limit = on,
            |s, on| s.retry = on,
            |s, on| s.hedge = on,
            |s, on| s.timeout = on,
            |s, on| {
                s.limit = if on { Limit::Fixed } else { Limit::None };
                s.shed = on;
            },
        ];
        for toggle in toggles {
            let mut alone = ALL_OFF;
            toggle(&mut alone, true);
            let mut all_but = ALL_ON;
            toggle(&mut all_but, false);
            shapes.extend([alone, all_but]);
        }
        // a limit without shedding, alone and under everything else
        shapes.push(Shape {
            limit: Limit::Adaptive,
            ..ALL_OFF
        });
        shapes.push(Shape {
            shed: false,
            ..ALL_ON
        });
        shapes
    }

    fn read() -> CqlRequest {
        CqlRequest::query("SELECT v FROM ks.kv WHERE k = ?")
            .bind((1i32,))
            .idempotent(true)
    }

    fn write() -> CqlRequest {
        CqlRequest::query("INSERT INTO ks.kv (k, v) VALUES (?, ?)").bind((1i32, "v"))
    }

    /// Runs every scenario against a stack of `shape` and checks what it
    /// did against what the layers switched on should do.
    async fn exercise(shape: Shape, collectors: &Collectors) {
        let build = |driver: &Driver| {
            shape
                .builder(collectors.clone())
                .build(driver.clone())
                .unwrap_or_else(|e| panic!("{shape:?}: {e}"))
        };

        // a binding rate limit refuses the third request at once
        let driver = Driver::new(0, &[Duration::ZERO]);
        let stack = build(&driver);
        let mut svc = stack.service();
        for i in 0..3 {
            let out = svc.ready().await.unwrap().call(read()).await;
            match out {
                Err(e) if shape.rate_limit && i == 2 => {
                    assert_eq!(e.kind(), ErrorKind::RateLimited, "{shape:?}")
                }
                out => assert!(out.is_ok(), "{shape:?}: request {i}: {out:?}"),
            }
        }
        let calls = if shape.rate_limit { 2 } else { 3 };
        assert_eq!(driver.calls(), calls, "{shape:?}");

        // retries: overloaded twice, then served (an idempotent write:
        // Overloaded may come after some replicas took it)
        let driver = Driver::new(2, &[Duration::ZERO]);
        let stack = build(&driver);
        let out = stack.service().oneshot(write().idempotent(true)).await;
        if shape.retry {
            let resp = out.unwrap_or_else(|e| panic!("{shape:?}: {e}"));
            assert_eq!(resp.info().attempts, 3, "{shape:?}");
            assert_eq!(driver.calls(), 3, "{shape:?}");
        } else {
            let err = out.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Overloaded, "{shape:?}");
            assert_eq!(err.attempts(), 1, "{shape:?}");
            assert_eq!(driver.calls(), 1, "{shape:?}");
        }

        // the per-attempt timeout (2 s) against a 10 s write
        let driver = Driver::new(0, &[Duration::from_secs(10)]);
        let stack = build(&driver);
        let out = stack.service().oneshot(write()).await;
        if shape.timeout {
            assert_eq!(
                out.unwrap_err().kind(),
                ErrorKind::ClientTimeout,
                "{shape:?}"
            );
        } else {
            assert!(out.is_ok(), "{shape:?}: {out:?}");
        }

        // hedging: the first attempt is stuck for a second, the next is quick
        let driver = Driver::new(0, &[Duration::from_secs(1), 2 * MS]);
        let stack = build(&driver);
        let started = tokio::time::Instant::now();
        let resp = stack.service().oneshot(read()).await.unwrap();
        if shape.hedge {
            assert_eq!(resp.info().speculative, 1, "{shape:?}");
            assert!(started.elapsed() < 100 * MS, "{shape:?}");
        } else {
            assert_eq!(resp.info().speculative, 0, "{shape:?}");
            assert!(started.elapsed() >= Duration::from_secs(1), "{shape:?}");
        }

        // a limit of one in flight: a second request waits for the first,
        // or is shed at once under load shedding
        let driver = Driver::new(0, &[Duration::from_secs(1)]);
        let stack = build(&driver);
        let first = tokio::spawn(stack.service().oneshot(write()));
        tokio::time::sleep(10 * MS).await;
        let started = tokio::time::Instant::now();
        let second = stack.service().oneshot(write()).await;
        let limited = shape.limit != Limit::None;
        if limited && shape.shed {
            assert_eq!(second.unwrap_err().kind(), ErrorKind::Shed, "{shape:?}");
        } else {
            assert!(second.is_ok(), "{shape:?}: {second:?}");
            let waited = started.elapsed() >= Duration::from_secs(1) + 900 * MS;
            assert_eq!(waited, limited, "{shape:?}: {:?}", started.elapsed());
        }
        assert!(first.await.unwrap().is_ok(), "{shape:?}");
        stack.close().await;
    }

    #[tokio::test(start_paused = true)]
    async fn every_layer_subset_builds_and_behaves() {
        tower_cql_testkit::tracing_setup::global_registry();
        let shapes = shapes();
        assert!(shapes.len() > 16);
        for shape in shapes {
            exercise(shape, &Collectors::new()).await;
        }
        // a fixed and an adaptive limit together, or shedding without a
        // limit, are still refused
        let both = Shape {
            limit: Limit::Fixed,
            ..ALL_OFF
        }
        .builder(Collectors::new())
        .adaptive(AdaptiveConfig::default());
        assert!(both.build(Driver::new(0, &[MS])).is_err());
        let shed_alone = Shape {
            shed: true,
            ..ALL_OFF
        };
        assert!(
            shed_alone
                .builder(Collectors::new())
                .build(Driver::new(0, &[MS]))
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_layer_switched_off_emits_no_event_and_opens_no_span() {
        tower_cql_testkit::tracing_setup::global_registry();
        for shape in shapes() {
            // (other tests of this binary run the stack at the same time
            // with no subscriber; the global registry every test installs
            // first keeps them from caching the stack's span callsites as
            // "never", which made this thread see no span: see
            // `tower_cql_testkit::tracing_setup`)
            let counting = Arc::new(Counting::default());
            let collectors = Collectors::with([counting.clone()]);
            let spans = Arc::new(AtomicU64::new(0));
            let subscriber = tracing_subscriber::registry().with(SpanCount(spans.clone()));
            let guard = tracing::subscriber::set_default(subscriber);
            exercise(shape, &collectors).await;
            drop(guard);

            let c = &*counting;
            let limited = shape.limit != Limit::None;
            let expect = |what: &str, count: u64, on: bool| {
                assert_eq!(count > 0, on, "{shape:?}: {what} events: {count}");
            };
            expect("request", get(&c.request), shape.metrics);
            expect("retry", get(&c.retry), shape.retry);
            expect("rate limit", get(&c.throttle_rate), shape.rate_limit);
            expect("load shed", get(&c.shed_load_shed), limited && shape.shed);
            expect("limit", get(&c.throttle_limit), limited && !shape.shed);
            // the driver stand-in makes no attempt events, and no breaker
            // trips, no adaptive limit moves in these scenarios
            assert_eq!(get(&c.attempt), 0);
            assert_eq!(get(&c.breaker) + get(&c.shed_other) + get(&c.limit), 0);
            let spans = spans.load(Ordering::SeqCst);
            assert_eq!(spans > 0, shape.trace, "{shape:?}: {spans} spans");
            if !(shape.metrics || shape.retry || shape.rate_limit || limited) {
                assert_eq!(c.total(), 0, "{shape:?}");
            }
        }
    }
}

/// `build_on(session)`: the collectors are given once, and both the
/// stack's request events and the driver's attempt events reach them;
/// `stack.execute(&statement, values)` is the scylla-shaped call site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_on_a_session_gives_the_collectors_once() {
    use tower_cql_middleware::prelude::*;
    tower_cql_testkit::tracing_setup::global_registry();
    let cluster = tower_cql_testkit::Cluster::start().await.unwrap();
    let session = support::session(&cluster).await;
    let memory = Arc::new(InMemoryCollector::new());
    let stack = StackBuilder::new(Collectors::with([memory.clone()]))
        .build_on(session)
        .unwrap();
    for cql in [
        "CREATE KEYSPACE app WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE app.users (id bigint PRIMARY KEY, name text)",
    ] {
        stack.call(CqlRequest::unprepared(cql)).await.unwrap();
    }
    let put = Statement::new("INSERT INTO app.users (id, name) VALUES (?, ?)").operation("put");
    let get = Statement::new("SELECT name FROM app.users WHERE id = ?").operation("get");
    stack.execute(&put, (42i64, "Ada")).await.unwrap();
    let names: Vec<(String,)> = stack.execute(&get, (42i64,)).await.unwrap().rows().unwrap();
    assert_eq!(names, vec![("Ada".to_string(),)]);
    stack.close().await;
    let snap = memory.snapshot();
    for op in ["put", "get"] {
        assert_eq!(
            snap.request_latency(Some(op)).count(),
            1,
            "{op}: request event"
        );
        assert_eq!(
            snap.attempt_latency(Some(op)).count(),
            1,
            "{op}: the driver's attempt event"
        );
    }
}

/// A driver service built by hand, with no collectors or other ones, and
/// wrapped in a user layer: inside the stack its attempt events still go to
/// the stack's collectors (the gate hands them to each request), so the
/// two sets cannot differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_built_driver_emits_into_the_stacks_collectors() {
    use tower_cql_middleware::prelude::*;
    tower_cql_testkit::tracing_setup::global_registry();
    let cluster = tower_cql_testkit::Cluster::start().await.unwrap();
    let session = support::session(&cluster).await;
    let other = Arc::new(InMemoryCollector::new());
    let driver = DriverService::builder(Arc::new(session))
        .collectors(Collectors::with([other.clone()]))
        .build()
        .unwrap();
    let inner = tower::ServiceBuilder::new()
        .map_request(|r: CqlRequest| r)
        .service(driver.clone());
    let memory = Arc::new(InMemoryCollector::new());
    let stack = StackBuilder::new(Collectors::with([memory.clone()]))
        .build(inner)
        .unwrap();
    stack
        .call(CqlRequest::unprepared(
            "CREATE KEYSPACE app WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        ))
        .await
        .unwrap();
    let get = Statement::new("SELECT keyspace_name FROM system_schema.keyspaces").operation("get");
    stack.execute(&get, ()).await.unwrap();
    // outside the stack, the driver service's own collectors
    driver.execute(get.request()).await.unwrap();
    stack.close().await;
    let snap = memory.snapshot();
    assert_eq!(snap.request_latency(Some("get")).count(), 1);
    assert_eq!(
        snap.attempt_latency(Some("get")).count(),
        1,
        "the driver's attempt event goes to the stack's collectors"
    );
    assert_eq!(other.snapshot().attempt_latency(Some("get")).count(), 1);
}

/// A driver service given to the stack with no clone of it kept adopts
/// the stack's collectors (it emits into them itself, and requests do not
/// carry them): its attempt events go to the stack's set, collectors
/// installed in that set later included, and none to the set it was built
/// with. Given with a clone kept elsewhere, it keeps its own set, and the
/// requests carry the stack's to it: its events inside the stack still go
/// to the stack's set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_given_alone_adopts_the_stacks_collectors() {
    use tower_cql_middleware::prelude::*;
    tower_cql_testkit::tracing_setup::global_registry();
    let cluster = tower_cql_testkit::Cluster::start().await.unwrap();
    let session = Arc::new(support::session(&cluster).await);
    let get = Statement::new("SELECT keyspace_name FROM system_schema.keyspaces").operation("get");
    let driver = |own: &Arc<InMemoryCollector>| {
        DriverService::builder(session.clone())
            .collectors(Collectors::with([own.clone()]))
            .build()
            .unwrap()
    };

    // alone: adopted
    let own = Arc::new(InMemoryCollector::new());
    let memory = Arc::new(InMemoryCollector::new());
    let set = Collectors::with([memory.clone()]);
    let stack = StackBuilder::new(set.clone()).build(driver(&own)).unwrap();
    stack.execute(&get, ()).await.unwrap();
    let later = Arc::new(InMemoryCollector::new());
    set.add(later.clone());
    stack.execute(&get, ()).await.unwrap();
    stack.close().await;
    assert_eq!(memory.snapshot().attempt_latency(Some("get")).count(), 2);
    assert_eq!(memory.snapshot().request_latency(Some("get")).count(), 2);
    assert_eq!(
        later.snapshot().attempt_latency(Some("get")).count(),
        1,
        "a collector added to the stack's set after the build sees the driver's attempts"
    );
    assert_eq!(own.snapshot().attempt_latency(Some("get")).count(), 0);

    // a clone kept: not adopted, the requests carry the stack's set
    let own = Arc::new(InMemoryCollector::new());
    let kept = driver(&own);
    let memory = Arc::new(InMemoryCollector::new());
    let set = Collectors::with([memory.clone()]);
    let stack = StackBuilder::new(set.clone()).build(kept.clone()).unwrap();
    assert!(!kept.collectors().same_set(&set));
    stack.execute(&get, ()).await.unwrap();
    kept.execute(get.request()).await.unwrap();
    stack.close().await;
    assert_eq!(
        memory.snapshot().attempt_latency(Some("get")).count(),
        1,
        "inside the stack, the kept driver's attempt event goes to the stack's set"
    );
    assert_eq!(
        own.snapshot().attempt_latency(Some("get")).count(),
        1,
        "outside it, to its own"
    );
}

/// A request through the stack reads the clock twice: at its call (a
/// reading every layer shares, the driver's attempt start included) and
/// as its attempt ends (the driver's reading, kept in the response for
/// the request's end). A request answered by its one attempt therefore
/// has exactly its attempt's latency, in the events and in the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_attempt_request_is_timed_by_its_attempts_readings() {
    use std::sync::Mutex;
    use tower_cql_core::event::{AttemptEvent, RequestEvent};
    use tower_cql_middleware::prelude::*;
    tower_cql_testkit::tracing_setup::global_registry();

    #[derive(Default)]
    struct Durations {
        requests: Mutex<Vec<Duration>>,
        attempts: Mutex<Vec<Duration>>,
    }
    impl Collector for Durations {
        fn on_request(&self, e: &RequestEvent<'_>) {
            self.requests.lock().unwrap().push(e.duration);
        }
        fn on_attempt(&self, e: &AttemptEvent<'_>) {
            self.attempts.lock().unwrap().push(e.duration);
        }
    }

    let cluster = tower_cql_testkit::Cluster::start().await.unwrap();
    let session = support::session(&cluster).await;
    let seen = Arc::new(Durations::default());
    let stack = StackBuilder::new(Collectors::with([seen.clone()]))
        .build_on(session)
        .unwrap();
    let get = Statement::new("SELECT keyspace_name FROM system_schema.keyspaces").operation("get");
    for _ in 0..20 {
        let resp = stack.execute(&get, ()).await.unwrap();
        assert!(
            resp.attempt_ended().is_some(),
            "the driver's response keeps its end"
        );
        let requests = seen.requests.lock().unwrap().pop().unwrap();
        let attempts = seen.attempts.lock().unwrap().pop().unwrap();
        assert!(attempts > Duration::ZERO);
        assert_eq!(requests, attempts, "one reading at each end");
        assert_eq!(resp.info().attempt_latency, attempts);
    }
    stack.close().await;
}

/// Text that names no keyspace runs in the session's keyspace: its
/// requests and attempts are labelled with that keyspace (the one in force
/// when each request enters the stack), as a qualified text's are with
/// the keyspace it names. A label given by the caller wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unqualified_text_is_labelled_with_the_sessions_keyspace() {
    use tower_cql_middleware::prelude::*;
    tower_cql_testkit::tracing_setup::global_registry();
    let cluster = tower_cql_testkit::Cluster::start().await.unwrap();
    let session = support::session(&cluster).await;
    let memory = Arc::new(InMemoryCollector::new());
    let stack = StackBuilder::new(Collectors::with([memory.clone()]))
        .build_on(session)
        .unwrap();
    for ks in ["app", "other"] {
        for cql in [
            format!(
                "CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            format!("CREATE TABLE {ks}.users (id bigint PRIMARY KEY, name text)"),
        ] {
            stack.call(CqlRequest::unprepared(cql)).await.unwrap();
        }
    }
    let put = Statement::new("INSERT INTO users (id, name) VALUES (?, ?)").operation("put");
    let get = Statement::new("SELECT name FROM users WHERE id = ?").operation("get");
    let labelled = Statement::new("SELECT name FROM users WHERE id = ?")
        .operation("labelled")
        .keyspace("mine");
    for ks in ["app", "other"] {
        stack
            .call(CqlRequest::unprepared(format!("USE {ks}")))
            .await
            .unwrap();
        stack.execute(&put, (42i64, ks)).await.unwrap();
        let names: Vec<(String,)> = stack.execute(&get, (42i64,)).await.unwrap().rows().unwrap();
        assert_eq!(names, vec![(ks.to_string(),)]);
        // a request naming its own operation (its own labels)
        stack
            .call(get.request().bind((42i64,)).operation("get_own"))
            .await
            .unwrap();
        stack.execute(&labelled, (42i64,)).await.unwrap();
    }
    stack.close().await;
    let snap = memory.snapshot();
    let keyspaces = |series: &[tower_cql_core::memory::SeriesSnapshot], op: &str| {
        let mut ks: Vec<Option<String>> = series
            .iter()
            .filter(|s| {
                s.labels
                    .operation
                    .as_ref()
                    .is_some_and(|o| o.as_str() == op)
            })
            .map(|s| s.labels.keyspace.as_ref().map(|k| k.as_str().to_string()))
            .collect();
        ks.sort();
        ks
    };
    let both = vec![Some("app".to_string()), Some("other".to_string())];
    for op in ["put", "get", "get_own"] {
        assert_eq!(keyspaces(&snap.requests, op), both, "{op}: request series");
        assert_eq!(keyspaces(&snap.attempts, op), both, "{op}: attempt series");
    }
    assert_eq!(
        keyspaces(&snap.requests, "labelled"),
        vec![Some("mine".to_string())],
        "the caller's label wins"
    );
}

/// A stack built on a driver service labels the requests whose text
/// names no keyspace with the keyspace of the session that driver runs
/// them on, also when another session is given to read server traces
/// through (a session of its own for `system_traces`, in no keyspace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unqualified_text_is_labelled_with_the_drivers_session_not_the_trace_readers() {
    use tower_cql_middleware::prelude::*;
    tower_cql_testkit::tracing_setup::global_registry();
    let cluster = tower_cql_testkit::Cluster::start().await.unwrap();
    let runs_requests = Arc::new(support::session(&cluster).await);
    let reads_traces = Arc::new(support::session(&cluster).await);
    let memory = Arc::new(InMemoryCollector::new());
    let driver = DriverService::builder(runs_requests.clone())
        .build()
        .unwrap();
    let stack = StackBuilder::new(Collectors::with([memory.clone()]))
        .server_trace_session(reads_traces)
        .build(driver)
        .unwrap();
    for cql in [
        "CREATE KEYSPACE app WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE app.users (id bigint PRIMARY KEY, name text)",
        "USE app",
    ] {
        stack.call(CqlRequest::unprepared(cql)).await.unwrap();
    }
    let put = Statement::new("INSERT INTO users (id, name) VALUES (?, ?)").operation("put");
    stack.execute(&put, (42i64, "ann")).await.unwrap();
    stack.close().await;
    let snap = memory.snapshot();
    let keyspaces: Vec<Option<&str>> = snap
        .requests
        .iter()
        .filter(|s| {
            s.labels
                .operation
                .as_ref()
                .is_some_and(|o| o.as_str() == "put")
        })
        .map(|s| s.labels.keyspace.as_ref().map(|k| k.as_str()))
        .collect();
    assert_eq!(
        keyspaces,
        vec![Some("app")],
        "the request ran in the driver's session, in keyspace app"
    );
}
