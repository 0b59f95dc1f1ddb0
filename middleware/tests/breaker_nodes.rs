//! The circuit breaker sees nodes: it learns from every attempt (retried
//! and timed-out ones included), charges a per-attempt timeout to the node
//! the attempt was waiting on, and keys its tables by the statement, not by
//! the labels the metrics layer's cardinality guard may have folded.
//!
//! The real driver against a three-node testkit cluster, through the
//! stack, with faults injected at the server.

use std::sync::Arc;
use std::time::Duration;

use tower::{ServiceExt, service_fn};
use tower_cql_core::{Collectors, CqlError, CqlRequest, CqlResponse, ErrorKind, ExecutionInfo};
use tower_cql_middleware::breaker::BreakerConfig;
use tower_cql_middleware::metrics::MetricsConfig;
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_middleware::timeout::TimeoutConfig;
use tower_cql_testkit::{Fault, InjectedError, Opcode};

mod support;

use support::{BreakerLog, GET, cluster, fast_retries, read};

/// Node 0 fails every read; retries hide it (every request succeeds on
/// another node), yet its breaker opens: the breaker learns from attempts.
/// Before, it learned only the final outcome, a success from node 1 or 2,
/// and node 0 stayed closed for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_node_hidden_behind_retries_opens_its_breaker() {
    let (cluster, driver) = cluster(&Collectors::new()).await;
    let log = Arc::new(BreakerLog::default());
    let collectors = Collectors::with([log.clone()]);
    cluster.faults().add(
        Fault::error(InjectedError::ServerError)
            .opcode(Opcode::Execute)
            .matching(GET)
            .node(0),
    );
    let stack = StackBuilder::new(collectors)
        .retry(fast_retries(3))
        .breaker(BreakerConfig {
            min_requests: 5,
            cool_down: Duration::from_secs(30),
            ..BreakerConfig::default()
        })
        .build(driver)
        .unwrap();
    for i in 0..60 {
        stack
            .service()
            .oneshot(read(i % 3))
            .await
            .expect("retries hide the failing node");
    }
    let bad = cluster.node_addr(0).to_string();
    println!("breaker transitions: {:?}", log.all());
    assert!(log.opened(&bad), "node 0's breaker opened: {:?}", log.all());
    for i in [1, 2] {
        let good = cluster.node_addr(i).to_string();
        assert!(
            !log.opened(&good),
            "node {i} stayed closed: {:?}",
            log.all()
        );
    }
    stack.close().await;
}

/// Node 0 answers reads 400 ms late; the per-attempt timeout is 40 ms and
/// there is no retry. The timeouts are charged to node 0, the node the
/// attempts were waiting on: its breaker opens, reads are routed to the
/// other nodes, and the table's breaker never opens. Before, a
/// `ClientTimeout` carried no node, so the whole `ks.kv` table opened and
/// every read was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_node_s_timeouts_open_that_node_not_the_table() {
    let (cluster, driver) = cluster(&Collectors::new()).await;
    let log = Arc::new(BreakerLog::default());
    let collectors = Collectors::with([log.clone()]);
    cluster.faults().add(
        Fault::delay(Duration::from_millis(400))
            .opcode(Opcode::Execute)
            .matching(GET)
            .node(0),
    );
    let stack = StackBuilder::new(collectors)
        .without_retry()
        .timeout(TimeoutConfig {
            per_attempt: Some(Duration::from_millis(40)),
            ..TimeoutConfig::default()
        })
        .breaker(BreakerConfig {
            min_requests: 5,
            failure_rate: 0.2,
            cool_down: Duration::from_secs(30),
            ..BreakerConfig::default()
        })
        .build(driver)
        .unwrap();
    let mut ok = 0;
    let mut errors = Vec::new();
    for i in 0..60 {
        match stack.service().oneshot(read(i % 3)).await {
            Ok(_) => ok += 1,
            Err(e) => errors.push(e.kind()),
        }
    }
    println!(
        "slow node 0: {ok} ok, errors {errors:?}, transitions {:?}",
        log.all()
    );
    let slow = cluster.node_addr(0).to_string();
    assert!(
        log.opened(&slow),
        "node 0's breaker opened: {:?}",
        log.all()
    );
    assert!(
        !log.opened("ks.kv"),
        "the table stayed closed: {:?}",
        log.all()
    );
    assert!(
        !errors.contains(&ErrorKind::CircuitOpen),
        "no read was refused: {errors:?}"
    );
    assert!(ok >= 50, "reads went around node 0: {ok} of 60 ok");
    stack.close().await;
}

/// With room for one label set, the metrics layer folds the labels of
/// `ks.bad` and `ks.good` into `other`; a breaker keyed by those labels
/// merged the two tables, so `ks.bad`'s failures refused `ks.good`. Keyed
/// by the statement's own keyspace and table they stay apart.
#[tokio::test(flavor = "current_thread")]
async fn tables_folded_by_the_metrics_guard_keep_breakers_of_their_own() {
    let log = Arc::new(BreakerLog::default());
    let collectors = Collectors::with([log.clone()]);
    // A stand-in for a service that fails `ks.bad` without naming a node.
    let inner = service_fn(|req: CqlRequest| async move {
        if req.statement().text().is_some_and(|t| t.contains("ks.bad")) {
            Err(CqlError::new(ErrorKind::ServerError, "bad table"))
        } else {
            Ok(CqlResponse::synthetic(ExecutionInfo::default()))
        }
    });
    let stack = StackBuilder::new(collectors)
        .without_retry()
        .metrics(MetricsConfig { max_label_sets: 1 })
        .breaker(BreakerConfig {
            min_requests: 5,
            cool_down: Duration::from_secs(30),
            ..BreakerConfig::default()
        })
        .build(inner)
        .unwrap();
    let q = |t: &str| CqlRequest::query(format!("SELECT v FROM ks.{t} WHERE k = 1"));
    // the one label set goes to ks.first; the others fold into `other`
    stack.service().oneshot(q("first")).await.unwrap();
    for _ in 0..20 {
        let _ = stack.service().oneshot(q("bad")).await;
    }
    assert!(log.opened("ks.bad"), "{:?}", log.all());
    for _ in 0..20 {
        stack
            .service()
            .oneshot(q("good"))
            .await
            .expect("ks.good is not refused for ks.bad's failures");
    }
    stack.close().await;
}
