//! The hazards of an async database wrapper, each made a test against the
//! real driver and testkit: open/close cycles that must leave no task or
//! connection behind, collectors that panic or block, and bad input that
//! must come back as a clear error of the right kind with nothing lost.
//!
//! Size: `TOWER_CQL_STRESS_CYCLES` stack open/close cycles (default 1,000)
//! and `TOWER_CQL_STRESS_SESSIONS` whole-session cycles (default 20).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use scylla::client::session_builder::SessionBuilder;
use tower::ServiceExt;
use tower_cql_core::event::{AttemptEvent, RequestEvent};
use tower_cql_core::{
    Background, Collector, Collectors, CqlRequest, DriverService, ErrorKind, InMemoryCollector,
    Statement,
};
use tower_cql_middleware::retry::RetryConfig;
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_middleware::stack_config::StackConfig;
use tower_cql_testkit::{Cluster, Fault, Opcode};

mod support;
use support::setup;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Waits up to 10 s for `f` to hold.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_close_cycles_leave_no_task_or_connection_behind() {
    let (cluster, driver, collectors, memory) = setup().await;
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?").idempotent(true);
    driver.execute(get.request().bind((1i32,))).await.unwrap();
    // some attempts are slow, so close() meets requests in flight
    cluster.faults().add(
        Fault::delay(Duration::from_millis(5))
            .opcode(Opcode::Execute)
            .probability(0.3),
    );
    let runtime = tokio::runtime::Handle::current().metrics();
    let tasks_before = runtime.num_alive_tasks();

    // Stacks opened and closed over one session, each closed while its
    // requests are in flight: every request resolves, Ok or ShutDown.
    let cycles = env("TOWER_CQL_STRESS_CYCLES", 1_000);
    let (mut ok, mut shut) = (0u64, 0u64);
    for c in 0..cycles {
        let stack = StackBuilder::new(collectors.clone())
            .build(driver.clone())
            .unwrap();
        let calls: Vec<_> = (0..4)
            .map(|i| {
                let svc = stack.service();
                let req = get.request().bind(((c * 4 + i) as i32 % 50,));
                tokio::spawn(async move { svc.oneshot(req).await })
            })
            .collect();
        if c % 2 == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::timeout(Duration::from_secs(10), stack.close())
            .await
            .expect("close() hung");
        assert_eq!(stack.gate().in_flight(), 0);
        for call in calls {
            match tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .expect("a request hung")
                .expect("a request panicked")
            {
                Ok(_) => ok += 1,
                Err(e) if e.kind() == ErrorKind::ShutDown => shut += 1,
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
    }
    println!(
        "{cycles} stack open/close cycles with 4 requests each: {ok} ok, {shut} refused by the \
         closing gate, 0 hung, 0 panicked"
    );
    assert_eq!(ok + shut, cycles * 4);
    assert!(ok > 0 && shut > 0, "ok {ok}, shut down {shut}");
    // the gate is outermost: a refused request never reached the metrics
    // layer; an admitted one is one request event
    assert_eq!(memory.snapshot().requests_total(), ok);
    // the stacks' tasks ended with them (the server's and the driver's
    // own tasks are unchanged)
    eventually("no task is left behind", || {
        runtime.num_alive_tasks() <= tasks_before
    })
    .await;

    // Whole sessions opened and closed: their connections close with them.
    let base_connections = cluster.open_connections();
    let sessions = env("TOWER_CQL_STRESS_SESSIONS", 20);
    for _ in 0..sessions {
        let session = SessionBuilder::new()
            .known_nodes_addr(cluster.contact_points())
            .build()
            .await
            .unwrap();
        let driver = DriverService::builder(Arc::new(session))
            .collectors(collectors.clone())
            .build()
            .unwrap();
        let stack = StackBuilder::new(collectors.clone()).build(driver).unwrap();
        stack
            .service()
            .oneshot(get.request().bind((1i32,)))
            .await
            .unwrap();
        assert!(cluster.open_connections() > base_connections);
        stack.close().await;
        drop(stack);
    }
    eventually("every closed session's connections are closed", || {
        cluster.open_connections() == base_connections
    })
    .await;
    eventually("no task is left behind", || {
        runtime.num_alive_tasks() <= tasks_before
    })
    .await;
    println!(
        "{sessions} sessions opened and closed: open connections back to {base_connections}, \
         tasks back to {}",
        runtime.num_alive_tasks()
    );
}

/// Panics on every request event (without the panic hook's report, which
/// would only fill the test's output).
struct Panics;
impl Collector for Panics {
    fn on_request(&self, _: &RequestEvent<'_>) {
        std::panic::resume_unwind(Box::new("a collector bug"));
    }
}

/// Blocks its thread for 20 ms per request and attempt event.
#[derive(Default)]
struct Blocks(AtomicU64);
impl Blocks {
    fn block(&self) {
        std::thread::sleep(Duration::from_millis(20));
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}
impl Collector for Blocks {
    fn on_request(&self, _: &RequestEvent<'_>) {
        self.block();
    }
    fn on_attempt(&self, _: &AttemptEvent<'_>) {
        self.block();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_and_a_blocking_collector_fail_no_query() {
    let (_cluster, driver, collectors, memory) = setup().await;
    let panics = collectors.add(Arc::new(Panics));
    let blocks = Arc::new(Blocks::default());
    let background = Arc::new(Background::new(blocks.clone(), 64));
    collectors.add(background.clone());
    let stack = StackBuilder::new(collectors.clone()).build(driver).unwrap();
    let n = 2_000u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let svc = stack.service();
        tasks.push(tokio::spawn(async move {
            let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?");
            for i in 0..n / 16 {
                svc.clone()
                    .oneshot(get.request().bind(((w * 1000 + i) as i32,)))
                    .await
                    .expect("no query fails because of a collector");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    stack.close().await; // flushes: the background queue is drained
    let delivered = blocks.0.load(Ordering::SeqCst);
    println!(
        "{n} queries with a panicking collector and one blocking 20 ms per event behind \
         Background: 0 failed in {took:?}; {} panics caught, {delivered} events delivered to the \
         blocking one, {} dropped",
        collectors.failures_of(panics),
        background.dropped()
    );
    // every panic was caught and counted, one per request
    assert_eq!(collectors.failures_of(panics), n);
    // the blocking collector got what its queue could hold, the rest were
    // counted as dropped: nothing vanished unaccounted (one request and
    // one attempt event per query)
    assert_eq!(delivered + background.dropped(), 2 * n);
    assert!(background.dropped() > 0);
    // the other collectors saw everything
    assert_eq!(memory.snapshot().requests_total(), n);
    // and the queries did not wait for the blocking one (2n × 20 ms inline)
    assert!(took < Duration::from_millis(20) * n as u32 / 4, "{took:?}");
}

/// A page size below 1 (scylla's `set_page_size` panics on one) is a
/// `BadRequest` naming the size, not sent, through the stack (a call and a
/// paged read), and through the driver service alone: not a panic in the
/// request's task. The statement is run prepared (from its text, and as
/// the caller prepared it) and unprepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_size_below_one_is_a_clear_error_not_a_panic() {
    let (_cluster, driver, collectors, memory) = setup().await;
    let stack = StackBuilder::new(collectors).build(driver.clone()).unwrap();
    const GET: &str = "SELECT v FROM ks.kv WHERE k = ?";
    let mut requests = vec![
        ("prepared text", Statement::new(GET).idempotent(true)),
        (
            "unprepared text",
            Statement::unprepared(GET).idempotent(true),
        ),
    ];
    let prepared = driver.session().prepare(GET).await.unwrap();
    requests.push((
        "caller's prepared",
        Statement::prepared(prepared).idempotent(true),
    ));
    let check = |what: String,
                 joined: Result<Result<(), tower_cql_core::CqlError>, tokio::task::JoinError>,
                 size: i32| {
        let err = match joined {
            Err(p) => panic!("{what}: the request panicked: {p}"),
            Ok(Ok(())) => panic!("{what}: a page size of {size} was accepted"),
            Ok(Err(e)) => e,
        };
        assert_eq!(err.kind(), ErrorKind::BadRequest, "{what}: {err}");
        assert!(err.was_not_sent(), "{what}: {err}");
        assert!(
            err.to_string()
                .contains(&format!("page size must be at least 1, got {size}")),
            "{what}: {err}"
        );
    };
    let stack = Arc::new(stack);
    let mut failed = 0;
    for (what, statement) in &requests {
        for size in [0, -1, i32::MIN] {
            let req = statement.request().bind((1i32,)).page_size(size);
            let (svc, r) = (stack.service(), req.clone());
            let call = tokio::spawn(async move { svc.oneshot(r).await.map(|_| ()) });
            check(format!("{what}, call"), call.await, size);
            let (s, r) = (stack.clone(), req.clone());
            let stream =
                tokio::spawn(async move { s.stream::<(Option<String>,)>(r).await.map(|_| ()) });
            check(format!("{what}, stream"), stream.await, size);
            let d = driver.clone();
            let alone = tokio::spawn(async move { d.execute(req).await.map(|_| ()) });
            check(format!("{what}, driver service"), alone.await, size);
            failed += 2;
        }
    }
    // each refusal through the stack is one request event with its error
    assert_eq!(memory.snapshot().errors.values().sum::<u64>(), failed);
    // and the session is fine
    stack
        .call(Statement::new(GET).request().bind((1i32,)).page_size(1))
        .await
        .unwrap();
    stack.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_through_the_stack_is_a_clear_error_and_nothing_is_lost() {
    let cluster = Cluster::builder()
        .max_frame_bytes(256 * 1024)
        .start()
        .await
        .unwrap();
    let session = SessionBuilder::new()
        .known_nodes_addr(cluster.contact_points())
        .build()
        .await
        .unwrap();
    let memory = Arc::new(InMemoryCollector::new());
    let collectors = Collectors::with([memory.clone()]);
    let driver = DriverService::builder(Arc::new(session))
        .collectors(collectors.clone())
        .build()
        .unwrap();
    let stack = StackBuilder::new(collectors.clone())
        .retry(RetryConfig {
            max_attempts: 4,
            ..RetryConfig::default()
        })
        .build(driver)
        .unwrap();
    let svc = stack.service();
    let run = |req: CqlRequest| {
        let svc = svc.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), svc.oneshot(req))
                .await
                .expect("bad input must not hang")
        }
    };
    for cql in [
        "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE ks.kv (k int PRIMARY KEY, v text)",
    ] {
        run(CqlRequest::unprepared(cql)).await.unwrap();
    }
    let mut expected_errors = 0;

    // invalid CQL: Syntax, not retried, says what to do
    let err = run(Statement::new("SELEC v FROM ks.kv")
        .idempotent(true)
        .request())
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Syntax, "{err}");
    assert_eq!(err.attempts(), 1, "a syntax error is not retried");
    assert!(err.to_string().contains("fix the CQL statement"), "{err}");
    expected_errors += 1;

    // unknown keyspace: Invalid, naming it
    let err = run(CqlRequest::query("SELECT v FROM nope.kv WHERE k = ?").bind((1i32,)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
    expected_errors += 1;

    // wrong value type: refused before it is sent
    let err = run(CqlRequest::query("INSERT INTO ks.kv (k, v) VALUES (?, ?)").bind(("one", 1i32)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Serialization, "{err}");
    assert!(err.was_not_sent());
    expected_errors += 1;

    // an oversized value: the server refuses the request, the connection
    // and the session stay usable
    let big = "x".repeat(512 * 1024);
    let err = run(Statement::new("INSERT INTO ks.kv (k, v) VALUES (?, ?)")
        .idempotent(true)
        .request()
        .bind((1i32, big)))
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("too big"), "{err}");
    assert!(err.to_string().contains("send smaller values"), "{err}");
    assert_eq!(err.attempts(), 1, "a refused request is not retried");
    expected_errors += 1;
    run(CqlRequest::query("INSERT INTO ks.kv (k, v) VALUES (?, ?)").bind((1i32, "small")))
        .await
        .unwrap();

    // nothing lost: every request, failed or not, is one request event
    let snap = memory.snapshot();
    assert_eq!(snap.errors.values().sum::<u64>(), expected_errors);
    assert_eq!(snap.requests_total(), expected_errors + 3);
    stack.close().await;

    // invalid configuration: refused when the stack is built, naming the
    // field and the allowed values
    let err = StackBuilder::new(Collectors::new())
        .retry(RetryConfig {
            max_attempts: 0,
            ..RetryConfig::default()
        })
        .layers()
        .unwrap_err();
    assert!(err.to_string().contains("retry.max_attempts"), "{err}");
    let err = StackConfig::from_toml("[retry]\nmax_attempts = 3\nmax_atempts = 4\n").unwrap_err();
    assert!(err.to_string().contains("max_atempts"), "{err}");

    // an unreachable cluster: a clear error in bounded time, not a hang
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        SessionBuilder::new().known_node_addr(addr).build(),
    )
    .await
    .expect("connecting to an unreachable cluster must not hang")
    .expect_err("an unreachable cluster is an error");
    let err = tower_cql_core::CqlError::from(err);
    println!("unreachable cluster after {:?}: {err}", started.elapsed());
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
}
