//! The limit, timeout and breaker layers end to end: the real scylla driver
//! (through `DriverService`) over TCP against a testkit cluster.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::maybe_done;
use scylla::client::session_builder::SessionBuilder;
use tower::{Service, ServiceExt, service_fn};
use tower_cql_core::{
    BreakerState, Collector, Collectors, CqlError, CqlRequest, DriverService, ErrorKind, Statement,
    event::{BreakerEvent, ThrottleEvent},
};
use tower_cql_middleware::breaker::{BreakerConfig, CircuitBreakerLayer};
use tower_cql_middleware::concurrency::{ConcurrencyConfig, ConcurrencyLimitLayer};
use tower_cql_middleware::rate_limit::{RateLimitConfig, RateLimitLayer, RateLimitMode};
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_middleware::timeout::{TimeoutConfig, TimeoutLayer};
use tower_cql_testkit::{Cluster, Fault, InjectedError, Opcode};
use tower_layer::Layer;

/// Counts throttle events and keeps breaker transitions.
#[derive(Default)]
struct Events {
    waited: AtomicUsize,
    rejected: AtomicUsize,
    max_queue_depth: AtomicUsize,
    breaker: std::sync::Mutex<Vec<(String, BreakerState, BreakerState)>>,
}

impl Collector for Events {
    fn on_throttle(&self, e: &ThrottleEvent<'_>) {
        if e.rejected {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        } else {
            self.waited.fetch_add(1, Ordering::Relaxed);
        }
        self.max_queue_depth
            .fetch_max(e.queue_depth, Ordering::Relaxed);
    }
    fn on_breaker(&self, e: &BreakerEvent<'_>) {
        self.breaker
            .lock()
            .unwrap()
            .push((e.target.to_string(), e.from, e.to));
    }
}

struct Setup {
    cluster: Cluster,
    driver: DriverService,
    events: Arc<Events>,
    collectors: Collectors,
}

async fn setup(nodes: usize) -> Setup {
    let cluster = Cluster::builder().nodes(nodes).start().await.unwrap();
    let session = SessionBuilder::new()
        .known_nodes_addr(cluster.contact_points())
        .build()
        .await
        .unwrap();
    let events = Arc::new(Events::default());
    let collectors = Collectors::with([events.clone()]);
    let driver = DriverService::builder(Arc::new(session))
        .collectors(collectors.clone())
        .build()
        .unwrap();
    for cql in [
        "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE ks.kv (k int PRIMARY KEY, v text)",
        "INSERT INTO ks.kv (k, v) VALUES (1, 'one')",
    ] {
        driver
            .execute(CqlRequest::unprepared(cql))
            .await
            .unwrap_or_else(|e| panic!("{cql}: {e}"));
    }
    Setup {
        cluster,
        driver,
        events,
        collectors,
    }
}

fn get() -> Statement {
    Statement::new("SELECT v FROM ks.kv WHERE k = ?")
        .operation("get")
        .idempotent(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_a_burst_of_200_to_the_configured_rate() {
    let s = setup(1).await;
    let get = get();
    s.driver.execute(get.request().bind((1i32,))).await.unwrap(); // prepare
    let executions_before = s.cluster.counters().total_executions();
    let layer = RateLimitLayer::new(
        RateLimitConfig {
            rate_per_second: 100.0,
            burst: 10,
            mode: RateLimitMode::Wait {
                max_wait: Duration::from_secs(10),
            },
        },
        s.collectors.clone(),
    );
    let svc = layer.layer(s.driver.clone());
    let start = Instant::now();
    // 200 requests at once from 8 tasks, each with its own clone (one bucket).
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let mut svc = svc.clone();
            let get = get.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    let resp = svc
                        .ready()
                        .await
                        .unwrap()
                        .call(get.request().bind((1i32,)))
                        .await
                        .unwrap();
                    assert_eq!(resp.rows::<(String,)>().unwrap(), vec![("one".into(),)]);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    // 10 at once, then 190 at 100/s: 1.9 s.
    assert!(
        elapsed >= Duration::from_millis(1850) && elapsed < Duration::from_secs(6),
        "{elapsed:?}"
    );
    assert_eq!(
        s.cluster.counters().total_executions() - executions_before,
        200
    );
    assert!(s.events.waited.load(Ordering::Relaxed) >= 180);
    assert_eq!(s.events.rejected.load(Ordering::Relaxed), 0);
    s.cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_never_lets_more_than_n_through() {
    let s = setup(1).await;
    let get = get();
    s.driver.execute(get.request().bind((1i32,))).await.unwrap(); // prepare
    s.cluster.faults().add(
        Fault::delay(Duration::from_millis(20))
            .table("ks", "kv")
            .opcode(Opcode::Execute),
    );
    let layer = ConcurrencyLimitLayer::new(
        ConcurrencyConfig {
            max_in_flight: 4,
            max_queue: 100,
            queue_timeout: Some(Duration::from_secs(10)),
        },
        s.collectors.clone(),
    );
    // Count what reaches the driver at once.
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let driver = s.driver.clone();
    let counted = service_fn({
        let (now, peak) = (now.clone(), peak.clone());
        move |req: CqlRequest| {
            let (driver, now, peak) = (driver.clone(), now.clone(), peak.clone());
            async move {
                peak.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                let r = driver.execute(req).await;
                now.fetch_sub(1, Ordering::SeqCst);
                r
            }
        }
    });
    let svc = layer.layer(counted);
    let start = Instant::now();
    let calls: Vec<_> = (0..40)
        .map(|_| tokio::spawn(svc.clone().oneshot(get.request().bind((1i32,)))))
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    let elapsed = start.elapsed();
    assert_eq!(peak.load(Ordering::SeqCst), 4);
    // 40 requests, 4 at a time, 20 ms each on the server: at least 200 ms.
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(s.events.waited.load(Ordering::Relaxed) >= 20);
    assert!(s.events.max_queue_depth.load(Ordering::Relaxed) >= 5);
    assert_eq!((layer.in_flight(), layer.queued()), (0, 0));
    s.cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_on_an_overloaded_node_and_recovers_after_cool_down() {
    let s = setup(1).await;
    let get = get();
    s.driver.execute(get.request().bind((1i32,))).await.unwrap(); // prepare
    let node = s.cluster.node_addr(0).to_string();
    let layer = CircuitBreakerLayer::new(
        BreakerConfig {
            failure_rate: 0.5,
            min_requests: 5,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(1),
            half_open_probes: 1,
        },
        s.collectors.clone(),
    );
    let svc = layer.layer(s.driver.clone());
    let fault = s.cluster.faults().add(
        Fault::error(InjectedError::Overloaded)
            .node(0)
            .table("ks", "kv"),
    );
    for _ in 0..5 {
        let err = svc
            .clone()
            .oneshot(get.request().bind((1i32,)))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Overloaded, "{err}");
    }
    assert_eq!(
        layer.state(&node),
        Some(BreakerState::Open),
        "{:?}",
        layer.states()
    );
    // Open: refused without reaching the server.
    let fired = s.cluster.faults().fired(fault);
    let err = svc
        .clone()
        .oneshot(get.request().bind((1i32,)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
    assert_eq!(s.cluster.faults().fired(fault), fired);
    // The node recovers; after the cool-down a probe goes through and closes it.
    assert!(s.cluster.faults().remove(fault));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(layer.state(&node), Some(BreakerState::HalfOpen));
    let resp = svc
        .clone()
        .oneshot(get.request().bind((1i32,)))
        .await
        .unwrap();
    assert_eq!(resp.rows::<(String,)>().unwrap(), vec![("one".into(),)]);
    assert_eq!(layer.state(&node), Some(BreakerState::Closed));
    assert_eq!(
        *s.events.breaker.lock().unwrap(),
        vec![
            (node.clone(), BreakerState::Closed, BreakerState::Open),
            (node.clone(), BreakerState::Open, BreakerState::HalfOpen),
            (node.clone(), BreakerState::HalfOpen, BreakerState::Closed),
        ]
    );
    s.cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_tells_a_slow_attempt_from_a_passed_deadline() {
    let s = setup(1).await;
    let get = get();
    s.driver.execute(get.request().bind((1i32,))).await.unwrap(); // prepare
    s.cluster.faults().add(
        Fault::delay(Duration::from_millis(500))
            .table("ks", "kv")
            .opcode(Opcode::Execute),
    );
    let layer = TimeoutLayer::new(TimeoutConfig {
        per_attempt: Some(Duration::from_millis(100)),
        honour_deadline: true,
    });
    let svc = layer.layer(s.driver.clone());
    // A deadline that passed before the attempt: refused, never sent. (A
    // deadline that passes during the attempt is also the driver's own
    // request timeout, which the driver service reports as ClientTimeout,
    // usually a moment before this layer's timer fires.)
    let executions = s.cluster.counters().total_executions();
    let req = get.request().bind((1i32,)).timeout(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let err = svc.clone().oneshot(req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    assert!(err.was_not_sent());
    assert_eq!(s.cluster.counters().total_executions(), executions);
    let start = Instant::now();
    let err: CqlError = svc
        .clone()
        .oneshot(get.request().bind((1i32,)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ClientTimeout, "{err}");
    assert!(start.elapsed() < Duration::from_millis(400));
    s.cluster.stop().await;
}

/// Under load shedding, nothing waits for capacity: a request the limits
/// cannot admit at once is shed, whatever wait their configuration
/// allows. A concurrency limit (with no queue: the builder refuses one
/// under load shedding), and a rate limit that lets a request wait 30 s
/// for its token, built into a load-shedding stack: the request behind
/// the one in flight (or behind the spent token) is refused with `Shed`,
/// not sent, while the first is still running (it takes 3 s at the
/// server; the refusal takes no wait). So `max_wait` has no effect there
/// beyond being above zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_shedding_the_limits_wait_settings_have_no_effect() {
    let s = setup(1).await;
    let get = get();
    s.driver.execute(get.request().bind((1i32,))).await.unwrap(); // prepare
    let generous = Duration::from_secs(30);
    let concurrency = ConcurrencyConfig {
        max_in_flight: 1,
        max_queue: 0,
        queue_timeout: None,
    };
    let rate_limit = RateLimitConfig {
        rate_per_second: 0.01,
        burst: 1,
        mode: RateLimitMode::Wait { max_wait: generous },
    };
    let stacks = [
        (
            "concurrency",
            StackBuilder::new(s.collectors.clone()).concurrency(concurrency),
        ),
        (
            "rate_limit",
            StackBuilder::new(s.collectors.clone()).rate_limit(rate_limit),
        ),
    ];
    for (limit, builder) in stacks {
        let stack = builder
            .without_retry()
            .load_shed(true)
            .build(s.driver.clone())
            .unwrap();
        // the first request holds the slot (or spent the token) for 3 s
        let slow = s.cluster.faults().add(
            Fault::delay(Duration::from_secs(3))
                .table("ks", "kv")
                .opcode(Opcode::Execute)
                .times(1),
        );
        let first = tokio::spawn(stack.service().oneshot(get.request().bind((1i32,))));
        let arrived = Instant::now();
        while s.cluster.faults().fired(slow) == 0 {
            assert!(
                arrived.elapsed() < generous,
                "{limit}: the first request never arrived"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let executions = s.cluster.counters().total_executions();
        let err = stack
            .service()
            .oneshot(get.request().bind((1i32,)))
            .await
            .expect_err("the second request is shed, not queued or kept waiting");
        assert!(
            !first.is_finished(),
            "{limit}: the first request was still in flight"
        );
        assert_eq!(err.kind(), ErrorKind::Shed, "{limit}: {err}");
        assert!(err.was_not_sent(), "{limit}: {err}");
        assert_eq!(
            s.cluster.counters().total_executions(),
            executions,
            "{limit}"
        );
        first
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{limit}: {e}"));
        stack.close().await;
    }
    s.cluster.stop().await;
}

/// Rate limit, burst 1, through the built stack: X takes the token, A
/// and B reserve the next two (each request polled once, which takes or
/// reserves its token); A's caller gives up, then C arrives. A's token
/// cannot go back, as B already waits for the slot after it: C gets the
/// slot after B's, a full interval later. Before (bcfab6f) a dropped
/// reservation moved the bucket back whatever its place, and C was let
/// in on B's slot: two requests at once where the burst allows one.
/// (Only lower bounds on when B and C get through: on a loaded machine a
/// request is admitted late, never early.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_given_up_before_another_never_lets_two_in_at_once() {
    let s = setup(1).await;
    let get = get();
    s.driver.execute(get.request().bind((1i32,))).await.unwrap(); // prepare
    // a token every 500 ms, none saved up
    let stack = StackBuilder::new(s.collectors.clone())
        .without_retry()
        .rate_limit(RateLimitConfig {
            rate_per_second: 2.0,
            burst: 1,
            mode: RateLimitMode::Wait {
                max_wait: Duration::from_secs(10),
            },
        })
        .build(s.driver.clone())
        .unwrap();
    let call = || Box::pin(stack.service().oneshot(get.request().bind((1i32,))));
    // each request polled once: it takes or reserves its token (or, X,
    // may even be answered in that poll)
    let start = Instant::now();
    let mut x = maybe_done(call());
    let _ = futures::poll!(&mut x);
    let mut a = call();
    let _ = futures::poll!(a.as_mut());
    let mut b = maybe_done(call());
    let _ = futures::poll!(&mut b);
    // A's caller gives up; C arrives
    drop(a);
    let mut c = maybe_done(call());
    let _ = futures::poll!(&mut c);
    let (_, b_at, c_at) = tokio::join!(
        &mut x,
        async {
            (&mut b).await;
            start.elapsed()
        },
        async {
            (&mut c).await;
            start.elapsed()
        },
    );
    for (name, mut out) in [("X", x), ("B", b), ("C", c)] {
        let out = Pin::new(&mut out).take_output().expect("done");
        out.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(b_at >= Duration::from_secs(1), "B through at {b_at:?}");
    assert!(
        c_at >= Duration::from_millis(1500),
        "burst 1 at 2/s: C through at {c_at:?}, on B's slot (B at {b_at:?}), not the one after it"
    );
    stack.close().await;
    s.cluster.stop().await;
}
