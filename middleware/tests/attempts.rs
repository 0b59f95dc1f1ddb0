//! Nothing goes unobserved: every attempt that started is an attempt
//! event, whatever ended it (an answer, an error, the per-attempt timeout,
//! a hedge race lost, a caller that stopped waiting), with the node it went
//! to; a request the caller dropped is a request event. The server's own
//! per-node execution counters are the evidence.
//!
//! The real driver against a three-node testkit cluster, through the
//! stack. Size: `TOWER_CQL_CHAOS_REQUESTS` (default 400 reads).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::{Service, ServiceExt};
use tower_cql_core::event::{AttemptEvent, RequestEvent};
use tower_cql_core::{Collector, Collectors, ErrorKind};
use tower_cql_middleware::breaker::BreakerConfig;
use tower_cql_middleware::hedge::{HedgeConfig, HedgeDelay};
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_middleware::timeout::TimeoutConfig;
use tower_cql_testkit::{Fault, InjectedError, Opcode};

mod support;

use support::{GET, cluster, fast_retries, read};

/// Attempt events by node and by outcome, and request events by outcome.
#[derive(Default)]
struct Seen {
    attempts: Mutex<BTreeMap<Option<SocketAddr>, u64>>,
    attempt_outcomes: Mutex<BTreeMap<&'static str, u64>>,
    /// By node and outcome.
    node_outcomes: Mutex<BTreeMap<(Option<SocketAddr>, &'static str), u64>>,
    requests: Mutex<BTreeMap<&'static str, u64>>,
}

impl Collector for Seen {
    fn on_attempt(&self, e: &AttemptEvent<'_>) {
        *self.attempts.lock().unwrap().entry(e.node).or_default() += 1;
        let outcome = e.error.map_or("ok", |e| e.kind().as_str());
        *self
            .attempt_outcomes
            .lock()
            .unwrap()
            .entry(outcome)
            .or_default() += 1;
        *self
            .node_outcomes
            .lock()
            .unwrap()
            .entry((e.node, outcome))
            .or_default() += 1;
    }

    fn on_request(&self, e: &RequestEvent<'_>) {
        let outcome = e.error.map_or("ok", |e| e.kind().as_str());
        *self.requests.lock().unwrap().entry(outcome).or_default() += 1;
    }
}

fn size() -> i32 {
    std::env::var("TOWER_CQL_CHAOS_REQUESTS")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(400, |n| (n / 10).max(50))
}

/// Node 1 answers reads 2 s late; the stack hedges after 20 ms (the
/// attempts sent to node 1 lose the race) and times each attempt out after
/// 1 s, far beyond a hedge's answer even on a loaded machine (with 150 ms
/// and node 1 300 ms late, 2 of 140 cut attempts were timed out before
/// their hedge won under load: 138 `cancelled` for 140 executions).
/// Before, the cut attempts left no event, so node 1 looked idle
/// while it was the problem (node 1: 0 attempt events for 122 server
/// executions). Now the attempt events per node are the server's
/// executions per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_that_started_is_an_event_with_its_node_under_hedging() {
    every_attempt_is_an_event(true).await;
}

/// The same without hedging: the attempts sent to node 1 are cut by the
/// per-attempt timeout (100 ms) and retried elsewhere; each is an attempt
/// event (`client_timeout`) naming node 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_that_started_is_an_event_with_its_node_under_timeouts() {
    every_attempt_is_an_event(false).await;
}

async fn every_attempt_is_an_event(hedged: bool) {
    let seen = Arc::new(Seen::default());
    let collectors = Collectors::with([seen.clone()]);
    let (cluster, driver) = cluster(&collectors).await;
    // node 1's lateness: beyond the per-attempt timeout
    let late = Duration::from_millis(if hedged { 2000 } else { 300 });
    cluster.faults().add(
        Fault::delay(late)
            .opcode(Opcode::Execute)
            .matching(GET)
            .node(1),
    );
    let builder = StackBuilder::new(collectors.clone()).retry(fast_retries(3));
    let builder = if hedged {
        builder
            .hedge(HedgeConfig {
                delay: HedgeDelay::Fixed(Duration::from_millis(20)),
                max_speculative: 1,
                ..HedgeConfig::default()
            })
            .timeout(TimeoutConfig {
                per_attempt: Some(Duration::from_millis(1000)),
                ..TimeoutConfig::default()
            })
    } else {
        builder.timeout(TimeoutConfig {
            per_attempt: Some(Duration::from_millis(100)),
            ..TimeoutConfig::default()
        })
    };
    let stack = builder.build(driver).unwrap();
    // count from here: the setup's own statements are not part of it
    seen.attempts.lock().unwrap().clear();
    seen.attempt_outcomes.lock().unwrap().clear();
    seen.requests.lock().unwrap().clear();
    let before: Vec<u64> = (0..3)
        .map(|i| cluster.counters().node_executions(i))
        .collect();
    let n = size();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let svc = stack.service();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in (w..n).step_by(8) {
                if svc.clone().oneshot(read(i)).await.is_ok() {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    // the server finishes the attempts the client gave up on
    tokio::time::sleep(late + Duration::from_millis(600)).await;
    let executions: Vec<u64> = (0..3)
        .map(|i| cluster.counters().node_executions(i) - before[i])
        .collect();
    let attempts = seen.attempts.lock().unwrap().clone();
    let per_node: Vec<u64> = (0..3)
        .map(|i| {
            attempts
                .get(&Some(cluster.node_addr(i)))
                .copied()
                .unwrap_or(0)
        })
        .collect();
    println!(
        "attempts: {n} reads ({ok} ok), node 1 answers {late:?} late, {}: \
         attempt events per node {per_node:?} (without a node: {}), server executions per node \
         {executions:?}; attempt outcomes {:?}; requests {:?}",
        if hedged {
            "hedge 20 ms, timeout 1 s"
        } else {
            "timeout 100 ms, 3 attempts"
        },
        attempts.get(&None).copied().unwrap_or(0),
        seen.attempt_outcomes.lock().unwrap(),
        seen.requests.lock().unwrap(),
    );
    assert_eq!(ok, n, "hedging and retries serve every read");
    assert!(executions[1] > 0, "node 1 was sent reads");
    let cut = if hedged {
        "cancelled"
    } else {
        "client_timeout"
    };
    // (on a loaded machine a fast node's attempt can also lose a hedge
    // race or time out now and then: only node 1's are counted here)
    assert_eq!(
        seen.node_outcomes
            .lock()
            .unwrap()
            .get(&(Some(cluster.node_addr(1)), cut))
            .copied(),
        Some(executions[1]),
        "every attempt sent to node 1 was cut ({cut})"
    );
    for i in 0..3 {
        assert!(
            per_node[i] >= executions[i],
            "node {i}: {} attempt events < {} server executions",
            per_node[i],
            executions[i]
        );
    }
    // an event may have no execution (an attempt cancelled before its
    // request reached the server), but hardly ever
    let (events, execs): (u64, u64) = (per_node.iter().sum(), executions.iter().sum());
    assert!(
        events - execs <= execs / 50 + 2,
        "{events} attempt events for {execs} server executions"
    );
    assert!(
        !attempts.contains_key(&None),
        "every attempt names its node: {attempts:?}"
    );
    stack.close().await;
}

/// A request the caller stops waiting for is a request event (outcome
/// `cancelled`), and its attempt is an attempt event with its node. Before,
/// neither was reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_caller_dropped_is_reported_cancelled() {
    let seen = Arc::new(Seen::default());
    let collectors = Collectors::with([seen.clone()]);
    let (cluster, driver) = cluster(&collectors).await;
    cluster.faults().add(
        Fault::delay(Duration::from_millis(500))
            .opcode(Opcode::Execute)
            .matching(GET),
    );
    let stack = StackBuilder::new(collectors.clone()).build(driver).unwrap();
    seen.attempts.lock().unwrap().clear();
    seen.attempt_outcomes.lock().unwrap().clear();
    seen.requests.lock().unwrap().clear();
    let gave_up = tokio::time::timeout(Duration::from_millis(50), stack.service().oneshot(read(1)))
        .await
        .is_err();
    assert!(gave_up);
    let requests = seen.requests.lock().unwrap().clone();
    let outcomes = seen.attempt_outcomes.lock().unwrap().clone();
    let attempts = seen.attempts.lock().unwrap().clone();
    println!("dropped: requests {requests:?}, attempts {outcomes:?} by node {attempts:?}");
    let cancelled = ErrorKind::Cancelled.as_str();
    assert_eq!(requests.get(cancelled), Some(&1), "{requests:?}");
    assert_eq!(outcomes.get(cancelled), Some(&1), "{outcomes:?}");
    assert!(
        attempts.keys().all(Option::is_some),
        "the attempt names its node: {attempts:?}"
    );
    stack.close().await;
}

/// The request events (outcome, attempts) and the attempt events by
/// outcome of the requests dropped in [`dropped_during`].
#[derive(Default)]
struct Dropped {
    requests: Mutex<Vec<(&'static str, u32)>>,
    attempts: Mutex<BTreeMap<&'static str, u32>>,
}

impl Collector for Dropped {
    fn on_attempt(&self, e: &AttemptEvent<'_>) {
        let outcome = e.error.map_or("ok", |e| e.kind().as_str());
        *self.attempts.lock().unwrap().entry(outcome).or_default() += 1;
    }

    fn on_request(&self, e: &RequestEvent<'_>) {
        let outcome = e.error.map_or("ok", |e| e.kind().as_str());
        self.requests.lock().unwrap().push((outcome, e.attempts));
    }
}

/// One read through the stack `builder` makes, its first attempt answered
/// `Unavailable` when `first_fails` (retried at once on another node),
/// every other attempt 500 ms late; the caller stops waiting after
/// `wait` (zero: the call is dropped before it is ever polled). Returns the request event's (outcome, attempts) and the
/// attempt events by outcome, once every attempt has reported.
async fn dropped_during(
    builder: impl FnOnce(Collectors) -> StackBuilder,
    first_fails: bool,
    wait: Duration,
) -> (Vec<(&'static str, u32)>, BTreeMap<&'static str, u32>) {
    let seen = Arc::new(Dropped::default());
    let collectors = Collectors::with([seen.clone()]);
    let (cluster, driver) = cluster(&collectors).await;
    if first_fails {
        cluster.faults().add(
            Fault::error(InjectedError::Unavailable)
                .opcode(Opcode::Execute)
                .matching(GET)
                .times(1),
        );
    }
    cluster.faults().add(
        Fault::delay(Duration::from_millis(500))
            .opcode(Opcode::Execute)
            .matching(GET),
    );
    let stack = builder(collectors.clone()).build(driver).unwrap();
    seen.requests.lock().unwrap().clear();
    seen.attempts.lock().unwrap().clear();
    let mut svc = stack.service();
    let call = svc.ready().await.unwrap().call(read(1));
    if wait.is_zero() {
        drop(call);
    } else {
        let gave_up = tokio::time::timeout(wait, call).await.is_err();
        assert!(
            gave_up,
            "the read was still running when the caller gave up"
        );
    }
    let requests = seen.requests.lock().unwrap().clone();
    let attempts = seen.attempts.lock().unwrap().clone();
    stack.close().await;
    (requests, attempts)
}

/// How many attempt events there were.
fn total(attempts: &BTreeMap<&'static str, u32>) -> u32 {
    attempts.values().sum()
}

/// A request dropped during its second attempt (the first failed and was
/// retried) says 2 attempts, as many as its attempt events, through the
/// lean composition (the default stack) and the full one (the breaker
/// on). Before, a dropped request said 0 whatever its attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_during_a_retry_counts_its_attempts() {
    let lean = |c| StackBuilder::new(c).retry(fast_retries(3));
    let full = |c| {
        StackBuilder::new(c)
            .retry(fast_retries(3))
            .breaker(BreakerConfig::default())
    };
    for (name, builder) in [
        ("lean", &lean as &dyn Fn(Collectors) -> StackBuilder),
        ("full", &full),
    ] {
        let (requests, attempts) = dropped_during(builder, true, Duration::from_millis(150)).await;
        println!("{name}: request events {requests:?}, attempt events {attempts:?}");
        assert_eq!(
            attempts,
            BTreeMap::from([("cancelled", 1), ("unavailable", 1)]),
            "{name}"
        );
        assert_eq!(
            requests,
            [("cancelled", 2)],
            "{name}: (outcome, attempts) of the request event"
        );
    }
}

/// A request dropped during its only attempt says 1, without retries too
/// (lean and full: no layer outside counted it); one dropped before it was
/// ever polled made no attempt, and says 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_during_its_only_attempt_counts_it() {
    let lean = |c| StackBuilder::new(c).without_retry();
    let full = |c| {
        StackBuilder::new(c)
            .without_retry()
            .breaker(BreakerConfig::default())
    };
    for (name, builder) in [
        ("lean", &lean as &dyn Fn(Collectors) -> StackBuilder),
        ("full", &full),
    ] {
        let (requests, attempts) = dropped_during(builder, false, Duration::from_millis(100)).await;
        println!("{name}: request events {requests:?}, attempt events {attempts:?}");
        assert_eq!(attempts, BTreeMap::from([("cancelled", 1)]), "{name}");
        assert_eq!(requests, [("cancelled", 1)], "{name}");
        // never polled: no attempt, no attempt event
        let (requests, attempts) = dropped_during(builder, false, Duration::ZERO).await;
        assert_eq!(total(&attempts), 0, "{name}: {attempts:?}");
        assert_eq!(requests, [("cancelled", 0)], "{name}");
    }
}

/// A hedged request dropped mid-race says every attempt its races
/// started: the race's first attempt and its speculative one (2); with a
/// failed first attempt retried before, 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_request_dropped_mid_race_counts_every_attempt_started() {
    let hedged = |c| {
        StackBuilder::new(c)
            .retry(fast_retries(3))
            .hedge(HedgeConfig {
                delay: HedgeDelay::Fixed(Duration::from_millis(20)),
                max_speculative: 1,
                ..HedgeConfig::default()
            })
    };
    for (first_fails, expected) in [(false, 2), (true, 3)] {
        let (requests, attempts) =
            dropped_during(hedged, first_fails, Duration::from_millis(150)).await;
        println!(
            "first fails: {first_fails}: request events {requests:?}, attempt events {attempts:?}"
        );
        assert_eq!(total(&attempts), expected, "{attempts:?}");
        assert_eq!(attempts.get("cancelled"), Some(&2), "{attempts:?}");
        assert_eq!(
            requests,
            [("cancelled", expected)],
            "first fails: {first_fails}"
        );
    }
}
