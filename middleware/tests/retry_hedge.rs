//! The retry and hedge layers end to end: the real driver against testkit,
//! with faults injected at the server and its counters as the evidence.

use std::sync::Arc;
use std::time::{Duration, Instant};

use scylla::client::session_builder::SessionBuilder;
use tower::{Layer, ServiceExt};
use tower_cql_core::{
    AttemptReason, Collector, Collectors, CqlRequest, DriverService, ErrorKind, InMemoryCollector,
    Statement,
};
use tower_cql_middleware::hedge::{HedgeConfig, HedgeDelay, HedgeLayer};
use tower_cql_middleware::retry::{RetryConfig, RetryLayer};
use tower_cql_testkit::{Cluster, Fault, InjectedError, Opcode};

struct Env {
    cluster: Cluster,
    driver: DriverService,
    collectors: Collectors,
    memory: Arc<InMemoryCollector>,
}

async fn env(nodes: usize) -> Env {
    let cluster = Cluster::builder().nodes(nodes).start().await.unwrap();
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
    let create = format!(
        "CREATE KEYSPACE ks WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': {nodes}}}"
    );
    driver
        .execute(CqlRequest::unprepared(create))
        .await
        .unwrap();
    driver
        .execute(CqlRequest::unprepared(
            "CREATE TABLE ks.kv (k int PRIMARY KEY, v text)",
        ))
        .await
        .unwrap();
    for k in 0..50 {
        driver
            .execute(CqlRequest::unprepared(format!(
                "INSERT INTO ks.kv (k, v) VALUES ({k}, 'value {k}')"
            )))
            .await
            .unwrap();
    }
    Env {
        cluster,
        driver,
        collectors,
        memory,
    }
}

const GET: &str = "SELECT v FROM ks.kv WHERE k = ?";
const PUT: &str = "INSERT INTO ks.kv (k, v) VALUES (?, ?)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_recover_an_idempotent_read_from_two_overloaded() {
    let e = env(1).await;
    let svc = RetryLayer::new(RetryConfig::default(), e.collectors.clone()).layer(e.driver.clone());
    let get = Statement::new(GET).idempotent(true);
    // warm the prepared-statement cache, then count from here (not with
    // `counters().reset()`: statements prepared before a reset keep
    // counting into the stats it dropped)
    svc.clone()
        .oneshot(get.request().bind((1i32,)))
        .await
        .unwrap();
    let executed_before = e.cluster.counters().executions(GET);

    let fault = e.cluster.faults().add(
        Fault::error(InjectedError::Overloaded)
            .opcode(Opcode::Execute)
            .times(2),
    );
    let resp = svc
        .clone()
        .oneshot(get.request().bind((7i32,)))
        .await
        .unwrap();
    assert_eq!(resp.info().attempts, 3);
    assert_eq!(resp.single_row::<(String,)>().unwrap().0, "value 7");
    assert_eq!(e.cluster.faults().fired(fault), 2);
    // the two refused attempts never executed: the statement ran once
    assert_eq!(e.cluster.counters().executions(GET) - executed_before, 1);
    let snap = e.memory.snapshot();
    assert_eq!(snap.retries_total(), 2);
    assert_eq!(
        e.memory.snapshot().attempts_by_reason(AttemptReason::Retry),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_idempotent_write_that_may_have_applied_is_not_retried() {
    let e = env(1).await;
    let svc = RetryLayer::new(RetryConfig::default(), e.collectors.clone()).layer(e.driver.clone());
    let put = Statement::new(PUT); // not idempotent
    assert_eq!(e.cluster.counters().applied(PUT), 0);
    let fault = e
        .cluster
        .faults()
        .add(Fault::write_timeout_after_apply().times(1));
    let err = svc
        .clone()
        .oneshot(put.request().bind((100i32, "once")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WriteTimeout);
    assert_eq!(err.attempts(), 1);
    assert_eq!(e.cluster.faults().fired(fault), 1);
    assert_eq!(
        e.cluster.counters().applied(PUT),
        1,
        "applied, then timed out"
    );
    assert_eq!(e.cluster.counters().duplicate_writes(), 0);
    assert_eq!(e.memory.snapshot().retries_total(), 0);

    // The same write refused with Unavailable (nothing executed) is
    // retried, and still applied only once.
    let fault = e.cluster.faults().add(
        Fault::error(InjectedError::Unavailable)
            .opcode(Opcode::Execute)
            .times(1),
    );
    let resp = svc
        .clone()
        .oneshot(put.request().bind((101i32, "once")))
        .await
        .unwrap();
    assert_eq!(resp.info().attempts, 2);
    assert_eq!(e.cluster.faults().fired(fault), 1);
    assert_eq!(e.cluster.counters().applied(PUT), 2);
    assert_eq!(e.cluster.counters().duplicate_writes(), 0);

    // Refused with Overloaded, which a coordinator can send after some
    // replicas took the mutation: a non-idempotent write is not retried.
    let fault = e.cluster.faults().add(
        Fault::error(InjectedError::Overloaded)
            .opcode(Opcode::Execute)
            .times(1),
    );
    let err = svc
        .oneshot(put.request().bind((102i32, "once")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Overloaded);
    assert_eq!(err.attempts(), 1);
    assert_eq!(e.cluster.faults().fired(fault), 1);
    assert_eq!(
        e.memory.snapshot().retries_total(),
        1,
        "only the Unavailable one"
    );
}

/// A counter update marked idempotent is still never retried after it
/// may have been applied, however its column is quoted: `"n" = n + 1`
/// is `n = n + 1` (an unquoted name is its lower-case quoted form), and
/// so is the shorthand `n += 1`. Taken for two columns, or the shorthand
/// for no counter update at all, it was retried after an applied-then-
/// WriteTimeout and the counter moved by 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_update_marked_idempotent_is_applied_once_however_quoted() {
    let e = env(1).await;
    e.driver
        .execute(CqlRequest::unprepared(
            "CREATE TABLE ks.c (k int PRIMARY KEY, n counter)",
        ))
        .await
        .unwrap();
    let svc = RetryLayer::new(RetryConfig::default(), e.collectors.clone()).layer(e.driver.clone());
    for (k, text) in [
        (1i32, "UPDATE ks.c SET n = n + 1 WHERE k = ?"),
        (2, "UPDATE ks.c SET \"n\" = n + 1 WHERE k = ?"),
        (3, "UPDATE ks.c SET n = \"n\" + 1 WHERE k = ?"),
        // Cassandra's shorthand for `n = n + 1`
        (4, "UPDATE ks.c SET n += 1 WHERE k = ?"),
    ] {
        let fault = e
            .cluster
            .faults()
            .add(Fault::write_timeout_after_apply().matching(text).times(1));
        let upd = Statement::new(text).idempotent(true); // marked, wrongly
        let out = svc.clone().oneshot(upd.request().bind((k,))).await;
        assert_eq!(e.cluster.faults().fired(fault), 1, "{text}");
        let n = e
            .driver
            .execute(CqlRequest::query("SELECT n FROM ks.c WHERE k = ?").bind((k,)))
            .await
            .unwrap()
            .single_row::<(scylla::value::Counter,)>()
            .unwrap()
            .0
            .0;
        assert_eq!(n, 1, "{text}: the counter update was applied {n} times");
        let err = out.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WriteTimeout, "{text}");
        assert_eq!(err.attempts(), 1, "{text}");
    }
    assert_eq!(e.memory.snapshot().retries_total(), 0);
}

/// An insert whose key the server makes (`now()`, or Cassandra 5's
/// `current_timeuuid()`, its snake-case name) is a new row each time it
/// runs: marked idempotent, it is still never retried after it may have
/// been applied. The snake-case names were not known: the insert was
/// retried after an applied-then-WriteTimeout, and made two rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_of_a_server_made_timeuuid_is_applied_once_whatever_its_function_is_called() {
    let e = env(1).await;
    e.driver
        .execute(CqlRequest::unprepared(
            "CREATE TABLE ks.ev (k int, id timeuuid, v text, PRIMARY KEY (k, id))",
        ))
        .await
        .unwrap();
    let svc = RetryLayer::new(RetryConfig::default(), e.collectors.clone()).layer(e.driver.clone());
    for (k, text) in [
        (1i32, "INSERT INTO ks.ev (k, id, v) VALUES (?, now(), 'x')"),
        (
            2,
            "INSERT INTO ks.ev (k, id, v) VALUES (?, current_timeuuid(), 'x')",
        ),
        (
            3,
            "INSERT INTO ks.ev (k, id, v) VALUES (?, CURRENT_TIMEUUID(), 'x')",
        ),
    ] {
        let fault = e
            .cluster
            .faults()
            .add(Fault::write_timeout_after_apply().matching(text).times(1));
        let ins = Statement::new(text).idempotent(true); // marked, wrongly
        let out = svc.clone().oneshot(ins.request().bind((k,))).await;
        assert_eq!(e.cluster.faults().fired(fault), 1, "{text}");
        let rows = e
            .driver
            .execute(CqlRequest::query("SELECT id FROM ks.ev WHERE k = ?").bind((k,)))
            .await
            .unwrap()
            .rows::<(scylla::value::CqlTimeuuid,)>()
            .unwrap()
            .len();
        assert_eq!(rows, 1, "{text}: the insert made {rows} rows");
        let err = out.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WriteTimeout, "{text}");
        assert_eq!(err.attempts(), 1, "{text}");
    }
    assert_eq!(e.memory.snapshot().retries_total(), 0);
}

/// Reads distinct keys until the (one-shot) fault `id` has fired; returns
/// how long that read took and its response's speculative count.
async fn read_until_fired<S>(e: &Env, svc: S, id: tower_cql_testkit::FaultId) -> (Duration, u32)
where
    S: tower::Service<
            CqlRequest,
            Response = tower_cql_core::CqlResponse,
            Error = tower_cql_core::CqlError,
        > + Clone,
{
    let get = Statement::new(GET).idempotent(true);
    for k in 0..200 {
        let start = Instant::now();
        let resp = svc
            .clone()
            .oneshot(get.request().bind((k % 50,)))
            .await
            .unwrap();
        let took = start.elapsed();
        assert_eq!(resp.rows::<(String,)>().unwrap().len(), 1);
        if e.cluster.faults().fired(id) == 1 {
            return (took, resp.info().speculative);
        }
    }
    panic!("no read reached node 0 in 200 tries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_read_does_not_wait_for_a_slow_node() {
    let e = env(3).await;
    let stall = Duration::from_secs(1);
    // warm every node's prepared statement
    let get = Statement::new(GET).idempotent(true);
    for k in 0..20 {
        e.driver.execute(get.request().bind((k,))).await.unwrap();
    }

    // Without hedging, the read that meets the stalled node waits it out.
    let id = e
        .cluster
        .faults()
        .add(Fault::delay(stall).opcode(Opcode::Execute).node(0).times(1));
    let (took, _) = read_until_fired(&e, e.driver.clone(), id).await;
    assert!(took >= stall, "unhedged: {took:?}");

    // With hedging after 50 ms, it does not.
    let svc = HedgeLayer::new(
        HedgeConfig {
            delay: HedgeDelay::Fixed(Duration::from_millis(50)),
            max_speculative: 2,
            ..HedgeConfig::default()
        },
        e.collectors.clone(),
    )
    .layer(e.driver.clone());
    let id = e
        .cluster
        .faults()
        .add(Fault::delay(stall).opcode(Opcode::Execute).node(0).times(1));
    let speculative_before = e
        .memory
        .snapshot()
        .attempts_by_reason(AttemptReason::Speculative);
    let (took, speculative) = read_until_fired(&e, svc, id).await;
    assert!(took < stall / 2, "hedged: {took:?}");
    assert!(speculative >= 1);
    // the speculative attempt that won was reported by the driver service
    assert!(
        e.memory
            .snapshot()
            .attempts_by_reason(AttemptReason::Speculative)
            > speculative_before
    );
}

/// Keeps the index and reason of every attempt event.
#[derive(Default)]
struct Attempts(std::sync::Mutex<Vec<(u32, AttemptReason)>>);

impl Collector for Attempts {
    fn on_attempt(&self, e: &tower_cql_core::event::AttemptEvent<'_>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((e.index, e.reason));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_of_a_retried_and_hedged_read_has_its_own_index() {
    let e = env(1).await;
    let svc = RetryLayer::new(RetryConfig::default(), e.collectors.clone()).layer(
        HedgeLayer::new(
            HedgeConfig {
                delay: HedgeDelay::Fixed(Duration::from_millis(20)),
                max_speculative: 1,
                ..HedgeConfig::default()
            },
            e.collectors.clone(),
        )
        .layer(e.driver.clone()),
    );
    let get = Statement::new(GET).idempotent(true);
    svc.clone()
        .oneshot(get.request().bind((1i32,)))
        .await
        .unwrap();
    let attempts = Arc::new(Attempts::default());
    e.collectors.add(attempts.clone());

    // The first attempt is refused with Overloaded after 500 ms; the
    // speculative one started meanwhile is refused at once; the retry
    // answers.
    let slow = e.cluster.faults().add(
        Fault::delay(Duration::from_millis(500))
            .opcode(Opcode::Execute)
            .times(1),
    );
    let refuse = e.cluster.faults().add(
        Fault::error(InjectedError::Overloaded)
            .opcode(Opcode::Execute)
            .times(2),
    );
    let resp = svc.oneshot(get.request().bind((7i32,))).await.unwrap();
    assert_eq!(resp.single_row::<(String,)>().unwrap().0, "value 7");
    assert_eq!(e.cluster.faults().fired(slow), 1);
    assert_eq!(e.cluster.faults().fired(refuse), 2);

    let mut seen = attempts.0.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        [
            (0, AttemptReason::Initial),
            (1, AttemptReason::Speculative),
            (2, AttemptReason::Retry),
        ],
        "one index per attempt"
    );
}

/// Keeps the index and node of every attempt event.
#[derive(Default)]
struct Nodes(std::sync::Mutex<Vec<(u32, Option<std::net::SocketAddr>)>>);

impl Collector for Nodes {
    fn on_attempt(&self, e: &tower_cql_core::event::AttemptEvent<'_>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((e.index, e.node));
    }
}

impl Nodes {
    /// The nodes of attempts 0 and 1 of the request just made, and forgets
    /// them.
    fn take_two(&self) -> (std::net::SocketAddr, std::net::SocketAddr) {
        let mut seen = std::mem::take(&mut *self.0.lock().unwrap());
        seen.sort();
        match seen[..] {
            [(0, Some(a)), (1, Some(b))] => (a, b),
            _ => panic!("two attempts with their nodes expected: {seen:?}"),
        }
    }
}

/// README, "Retry rules": a `ReadTimeout` is "retried: same node if the
/// data replica answered late, else next" (enough replicas answered, the
/// data not among them; as the drivers' default policies read it). Three
/// replicas: the retry after a read timeout whose data replica was late
/// goes back to the node that timed out, and the one after a read timeout
/// short of replicas goes to another node; through the retry layer alone
/// (the first attempt carries no route hint) and with the hedge layer
/// inside it (every attempt carries one, so the steering policy avoids
/// the nodes already tried unless told otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_timeout_whose_data_replica_was_late_is_retried_on_the_same_node() {
    let e = env(3).await;
    let retry = || {
        RetryLayer::new(
            RetryConfig {
                max_attempts: 2,
                ..RetryConfig::default()
            },
            e.collectors.clone(),
        )
    };
    let alone = tower::util::BoxCloneSyncService::new(retry().layer(e.driver.clone()));
    let hedged = tower::util::BoxCloneSyncService::new(
        retry().layer(
            HedgeLayer::new(
                HedgeConfig {
                    // never due: the hedge layer only routes here
                    delay: HedgeDelay::Fixed(Duration::from_secs(30)),
                    ..HedgeConfig::default()
                },
                e.collectors.clone(),
            )
            .layer(e.driver.clone()),
        ),
    );
    let get = Statement::new(GET).idempotent(true);
    for k in 0..3 {
        e.driver.execute(get.request().bind((k,))).await.unwrap();
    }
    let nodes = Arc::new(Nodes::default());
    e.collectors.add(nodes.clone());
    for (name, svc) in [("retry alone", alone), ("retry over hedge", hedged)] {
        for (injected, same) in [
            (InjectedError::ReadTimeoutDataLate, true),
            (InjectedError::ReadTimeout, false),
        ] {
            for k in 0..10 {
                let fault = e
                    .cluster
                    .faults()
                    .add(Fault::error(injected).opcode(Opcode::Execute).times(1));
                let resp = svc.clone().oneshot(get.request().bind((k,))).await.unwrap();
                assert_eq!(e.cluster.faults().fired(fault), 1);
                assert_eq!(resp.info().attempts, 2);
                let (first, retry) = nodes.take_two();
                assert_eq!(
                    first == retry,
                    same,
                    "{name}, {injected:?}: attempt 0 on {first}, the retry on {retry}"
                );
            }
        }
    }
}

/// A write applied, then its connection closed before the answer: the
/// stack does not retry it (not idempotent), and the error the caller
/// gets says it may have been applied, as a write timeout's does, so
/// that the caller does not run it again blindly. Before, it said only
/// "check that the cluster is reachable": a broken connection's advice,
/// as if nothing had been sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_connection_broke_after_it_applied_says_it_may_have_been_applied() {
    let e = env(1).await;
    let stack = tower_cql_middleware::stack::StackBuilder::new(e.collectors.clone())
        .build(e.driver.clone())
        .unwrap();
    let fault = e
        .cluster
        .faults()
        .add(Fault::close_connection_after_apply().matching(PUT).times(1));
    let err = stack
        .call(Statement::new(PUT).request().bind((300i32, "once")))
        .await
        .unwrap_err();
    assert_eq!(e.cluster.faults().fired(fault), 1);
    assert_eq!(
        e.cluster.counters().applied(PUT),
        1,
        "applied, then cut off"
    );
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert_eq!(err.attempts(), 1, "not retried: {err}");
    assert!(err.may_have_been_applied(), "{err}");
    let shown = err.to_string();
    assert!(shown.contains("may have been applied"), "{shown}");
    stack.close().await;
}
