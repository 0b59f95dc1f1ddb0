//! The breaker's state machine and windows, through the service: opening,
//! cool-down, half-open probes, closing, table breakers.

use super::testing::*;

#[tokio::test(start_paused = true)]
async fn opens_at_the_failure_rate_once_min_requests_are_seen() {
    let (layer, node, rec) = breaker(config());
    assert_eq!(layer.state(NODE), None, "not seen yet");
    node.set(Answer::Fail(ErrorKind::Overloaded));
    for _ in 0..3 {
        assert_eq!(
            send(&layer, &node).await.unwrap_err(),
            ErrorKind::Overloaded
        );
    }
    assert_eq!(layer.state(NODE), Some(Closed), "3 < min_requests");
    assert_eq!(
        send(&layer, &node).await.unwrap_err(),
        ErrorKind::Overloaded
    );
    assert_eq!(layer.state(NODE), Some(Open));
    assert_eq!(
        *rec.transitions.lock().unwrap(),
        vec![(NODE.to_string(), Closed, Open)]
    );
    assert_eq!(open_nodes(&layer), 1);
    // The only node seen is open: no node is left, and the request is
    // refused without reaching it.
    let calls = node.calls();
    let err = layer.layer(node.clone()).oneshot(req()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
    assert!(err.was_not_sent());
    assert!(err.message().contains("every node seen (1)"), "{err}");
    assert!(err.message().contains(NODE), "{err}");
    assert_eq!(node.calls(), calls);
    assert_eq!(
        *rec.sheds.lock().unwrap(),
        vec![(ErrorKind::CircuitOpen, "breaker")]
    );
}

#[tokio::test(start_paused = true)]
async fn stays_closed_below_the_failure_rate() {
    let (layer, node, _) = breaker(config());
    for i in 0..10 {
        node.set(if i % 5 >= 3 {
            Answer::Fail(ErrorKind::WriteTimeout)
        } else {
            Answer::Ok
        });
        let _ = send(&layer, &node).await;
    }
    assert_eq!(layer.state(NODE), Some(Closed), "4 of 10 < 0.5");
    // Errors that say nothing about the node's health count as successes,
    // and refusals made on the client count for nothing.
    node.set(Answer::Fail(ErrorKind::Syntax));
    for _ in 0..10 {
        let _ = send(&layer, &node).await;
    }
    node.set(Answer::Fail(ErrorKind::Shed));
    for _ in 0..50 {
        let _ = send(&layer, &node).await;
    }
    assert_eq!(layer.state(NODE), Some(Closed));
}

#[tokio::test(start_paused = true)]
async fn old_failures_leave_the_window() {
    let (layer, node, _) = breaker(config());
    node.set(Answer::Fail(ErrorKind::ReadTimeout));
    for _ in 0..3 {
        let _ = send(&layer, &node).await;
    }
    tokio::time::advance(Duration::from_secs(11)).await;
    let _ = send(&layer, &node).await;
    assert_eq!(
        layer.state(NODE),
        Some(Closed),
        "only 1 failure in the window"
    );
    for _ in 0..3 {
        let _ = send(&layer, &node).await;
    }
    assert_eq!(layer.state(NODE), Some(Open));
}

#[tokio::test(start_paused = true)]
async fn closed_open_half_open_closed() {
    let (layer, node, rec) = breaker(config());
    let good = Node::new(GOOD);
    assert!(send(&layer, &good).await.is_ok(), "both nodes seen");
    // The stand-in driver sends to `node` first, unless it is excluded.
    let cluster = Cluster::new(&[&node, &good]);
    node.set(Answer::Fail(ErrorKind::Overloaded));
    for _ in 0..4 {
        let _ = send_to(&layer, &cluster).await;
    }
    assert_eq!(layer.state(NODE), Some(Open));
    assert_eq!(open_nodes(&layer), 1);
    // Open: requests go around it, to the healthy node.
    tokio::time::advance(Duration::from_millis(4999)).await;
    let calls = node.calls();
    assert_eq!(served_by(send_to(&layer, &cluster).await), GOOD);
    assert_eq!(node.calls(), calls);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(layer.state(NODE), Some(HalfOpen), "the cool-down is over");
    // The node recovered: the probe is let through to it (it is not
    // excluded) and closes the breaker.
    node.set(Answer::Ok);
    assert_eq!(served_by(send_to(&layer, &cluster).await), NODE);
    assert_eq!(layer.state(NODE), Some(Closed));
    assert_eq!(open_nodes(&layer), 0);
    assert_eq!(
        *rec.transitions.lock().unwrap(),
        vec![
            (NODE.to_string(), Closed, Open),
            (NODE.to_string(), Open, HalfOpen),
            (NODE.to_string(), HalfOpen, Closed),
        ]
    );
    assert!(rec.sheds.lock().unwrap().is_empty(), "nothing refused");
    // Closed with an empty window: one failure does not re-open it.
    node.set(Answer::Fail(ErrorKind::Overloaded));
    let _ = send_to(&layer, &cluster).await;
    assert_eq!(layer.state(NODE), Some(Closed));
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_for_another_cool_down() {
    let (layer, node, rec) = breaker(config());
    let good = Node::new(GOOD);
    assert!(send(&layer, &good).await.is_ok(), "both nodes seen");
    let cluster = Cluster::new(&[&node, &good]);
    node.set(Answer::Fail(ErrorKind::ServerError));
    for _ in 0..4 {
        let _ = send_to(&layer, &cluster).await;
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    // The probe goes to the node, which still fails.
    assert_eq!(
        send_to(&layer, &cluster).await.unwrap_err(),
        ErrorKind::ServerError
    );
    assert_eq!(layer.state(NODE), Some(Open));
    assert_eq!(open_nodes(&layer), 1);
    assert_eq!(
        rec.transitions.lock().unwrap()[1..],
        [
            (NODE.to_string(), Open, HalfOpen),
            (NODE.to_string(), HalfOpen, Open),
        ]
    );
    tokio::time::advance(Duration::from_secs(4)).await;
    let calls = node.calls();
    assert_eq!(served_by(send_to(&layer, &cluster).await), GOOD);
    assert_eq!(node.calls(), calls, "open again: routed around");
    tokio::time::advance(Duration::from_secs(1)).await;
    node.set(Answer::Ok);
    assert_eq!(served_by(send_to(&layer, &cluster).await), NODE);
    assert_eq!(layer.state(NODE), Some(Closed));
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_only_its_probes_and_a_dropped_probe_frees_its_place() {
    let (layer, node, _) = breaker(BreakerConfig {
        half_open_probes: 2,
        ..config()
    });
    let good = Node::new(GOOD);
    assert!(send(&layer, &good).await.is_ok(), "both nodes seen");
    let cluster = Cluster::new(&[&node, &good]);
    node.set(Answer::Fail(ErrorKind::Unavailable));
    for _ in 0..4 {
        let _ = send_to(&layer, &cluster).await;
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    // Two probes reach the node, which never answers them.
    node.set(Answer::Hang);
    let mut svc = layer.layer(cluster.clone());
    let calls = node.calls();
    let p1 = svc.ready().await.unwrap().call(req());
    let p2 = svc.ready().await.unwrap().call(req());
    assert_eq!(node.calls(), calls + 2);
    assert_eq!(layer.state(NODE), Some(HalfOpen));
    assert_eq!(open_nodes(&layer), 1, "half-open counts");
    // Its probe places are taken: the next request goes around it.
    assert_eq!(served_by(send_to(&layer, &cluster).await), GOOD);
    assert_eq!(node.calls(), calls + 2);
    drop(p1);
    node.set(Answer::Ok);
    // The dropped probe's place is free: one success, then a second closes.
    assert_eq!(served_by(send_to(&layer, &cluster).await), NODE);
    assert_eq!(layer.state(NODE), Some(HalfOpen), "1 of 2 successes");
    assert_eq!(served_by(send_to(&layer, &cluster).await), NODE);
    assert_eq!(layer.state(NODE), Some(Closed));
    assert_eq!(open_nodes(&layer), 0);
    drop(p2);
}

#[tokio::test(start_paused = true)]
async fn errors_without_a_node_count_against_the_table() {
    let (layer, node, _) = breaker(config());
    node.set(Answer::FailNoNode(ErrorKind::ClientTimeout));
    for _ in 0..4 {
        let _ = send(&layer, &node).await;
    }
    assert_eq!(layer.state("ks.users"), Some(Open));
    assert_eq!(layer.state(NODE), None);
    assert_eq!(
        send(&layer, &node).await.unwrap_err(),
        ErrorKind::CircuitOpen
    );
    // Another table is not affected.
    node.set(Answer::Ok);
    let other = CqlRequest::query("SELECT v FROM ks.orders WHERE id = 1");
    assert!(layer.layer(node.clone()).oneshot(other).await.is_ok());
    assert_eq!(
        layer.states(),
        vec![
            ("10.0.0.1:9042".to_string(), Closed),
            ("ks.orders".to_string(), Closed),
            ("ks.users".to_string(), Open),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_table_breaker_closes_when_its_probe_is_answered() {
    let (layer, node, rec) = breaker(config());
    node.set(Answer::FailNoNode(ErrorKind::Connection));
    for _ in 0..4 {
        let _ = send(&layer, &node).await;
    }
    assert_eq!(layer.state("ks.users"), Some(Open));
    tokio::time::advance(Duration::from_secs(5)).await;
    // The probe is answered by a node: the table's breaker closes too.
    node.set(Answer::Ok);
    assert!(send(&layer, &node).await.is_ok());
    assert_eq!(layer.state("ks.users"), Some(Closed));
    assert_eq!(layer.state(NODE), Some(Closed));
    assert_eq!(
        *rec.transitions.lock().unwrap(),
        vec![
            ("ks.users".to_string(), Closed, Open),
            ("ks.users".to_string(), Open, HalfOpen),
            ("ks.users".to_string(), HalfOpen, Closed),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_refusal_under_load_shedding_frees_the_capacity_reserved_below() {
    // load shed -> breaker -> concurrency limit (1, built for load
    // shedding: poll_ready takes the slot). A long-lived service whose
    // request the breaker refuses must not keep that slot.
    use crate::concurrency::{ConcurrencyConfig, ConcurrencyLimitLayer};
    use crate::load_shed::LoadShedLayer;
    let (layer, node, _) = breaker(config());
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
    let stack = |layer: &CircuitBreakerLayer| shed.layer(layer.layer(limit.layer(node.clone())));
    node.set(Answer::Fail(ErrorKind::Overloaded));
    for _ in 0..4 {
        let _ = stack(&layer).oneshot(req()).await;
    }
    assert_eq!(layer.state(NODE), Some(Open));
    let mut long_lived = stack(&layer);
    let err = long_lived.ready().await.unwrap().call(req()).await;
    assert_eq!(err.unwrap_err().kind(), ErrorKind::CircuitOpen);
    assert_eq!(limit.in_flight(), 0, "nothing in flight");
    // the node's breaker half-opens: its probe is not shed for want of
    // the slot the refused request kept
    tokio::time::advance(Duration::from_secs(5)).await;
    node.set(Answer::Ok);
    let out = stack(&layer).oneshot(req()).await;
    assert!(
        out.is_ok(),
        "nothing in flight, yet the probe was refused: {:?}",
        out.err().map(|e| e.to_string())
    );
    drop(long_lived);
}

#[tokio::test(start_paused = true)]
async fn a_stale_outcome_does_not_move_a_half_open_breaker_while_its_probe_is_out() {
    let (layer, node, rec) = breaker(config());
    // two requests sent while the node is closed, heard later: one
    // served, one failed
    let mut svc = layer.layer(node.clone());
    let stale_ok = svc.ready().await.unwrap().call(req());
    node.set(Answer::Fail(ErrorKind::Overloaded));
    let stale_failed = svc.ready().await.unwrap().call(req());
    for _ in 0..4 {
        let _ = send(&layer, &node).await;
    }
    assert_eq!(layer.state(NODE), Some(Open));
    tokio::time::advance(Duration::from_secs(5)).await;
    // the one probe (half_open_probes 1), still out
    node.set(Answer::Hang);
    let mut probe = Box::pin(layer.layer(node.clone()).oneshot(req()));
    assert!(futures::poll!(probe.as_mut()).is_pending());
    assert_eq!(layer.state(NODE), Some(HalfOpen));
    // the stale requests' outcomes count for nothing
    stale_ok.await.unwrap();
    assert_eq!(
        layer.state(NODE),
        Some(HalfOpen),
        "a success of a request sent before the node opened closed its half-open breaker"
    );
    stale_failed.await.unwrap_err();
    assert_eq!(
        layer.state(NODE),
        Some(HalfOpen),
        "nor does a stale failure re-open it"
    );
    // the probe's own outcome decides
    drop(probe);
    node.set(Answer::Ok);
    send(&layer, &node).await.unwrap();
    assert_eq!(layer.state(NODE), Some(Closed));
    assert_eq!(
        *rec.transitions.lock().unwrap(),
        vec![
            (NODE.to_string(), Closed, Open),
            (NODE.to_string(), Open, HalfOpen),
            (NODE.to_string(), HalfOpen, Closed),
        ]
    );
}

/// A service whose one call the node answered twice: two attempts of
/// the request (a hedge's first and speculative attempts, or a retry
/// after an answer that is not the node's failure), each reported to the
/// request's route hint as the driver service reports them.
#[derive(Clone)]
struct AnsweredTwice(SocketAddr);

impl Service<CqlRequest> for AnsweredTwice {
    type Response = CqlResponse;
    type Error = CqlError;
    type Future = std::future::Ready<Result<CqlResponse, CqlError>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: CqlRequest) -> Self::Future {
        use tower_cql_core::classify::NodeVerdict;
        let hint = req
            .meta()
            .route()
            .expect("the breaker gives every request a hint");
        hint.report(self.0, NodeVerdict::Healthy);
        hint.report(self.0, NodeVerdict::Healthy);
        std::future::ready(Ok(CqlResponse::synthetic(ExecutionInfo {
            coordinator: Some(self.0),
            attempts: 2,
            ..ExecutionInfo::default()
        })))
    }
}

/// A half-open node's probe is one request: however many of its attempts
/// the node answers, it is one probe's success. Counted once per
/// attempt, one request answered twice closed a breaker that asks for
/// two probes to succeed.
#[tokio::test(start_paused = true)]
async fn a_probe_answered_by_two_attempts_is_one_success() {
    let (layer, node, _) = breaker(BreakerConfig {
        half_open_probes: 2,
        ..config()
    });
    node.set(Answer::Fail(ErrorKind::Overloaded));
    for _ in 0..4 {
        let _ = send(&layer, &node).await;
    }
    assert_eq!(layer.state(NODE), Some(Open));
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(layer.state(NODE), Some(HalfOpen));
    let twice = AnsweredTwice(NODE.parse().unwrap());
    assert!(send_to(&layer, &twice).await.is_ok());
    assert_eq!(
        layer.state(NODE),
        Some(HalfOpen),
        "one probe request, 1 of 2 successes"
    );
    assert!(send_to(&layer, &twice).await.is_ok());
    assert_eq!(layer.state(NODE), Some(Closed));
}
