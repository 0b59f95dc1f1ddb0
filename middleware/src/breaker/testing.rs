//! Test fixtures of the breaker: mock nodes, a mock cluster, a recorder
//! of events, and helpers that send requests through a layer.

pub(super) use std::net::SocketAddr;
pub(super) use std::sync::atomic::{AtomicUsize, Ordering};
pub(super) use std::sync::{Arc, Mutex};
pub(super) use std::task::{Context, Poll};
pub(super) use std::time::Duration;

pub(super) use tower::ServiceExt;
pub(super) use tower_cql_core::event::{BreakerEvent, ShedEvent};
pub(super) use tower_cql_core::{
    Collector, Collectors, CqlError, CqlRequest, CqlResponse, ErrorKind, ExecutionInfo,
};
pub(super) use tower_layer::Layer;
pub(super) use tower_service::Service;

pub(super) use super::{BreakerConfig, BreakerState, CircuitBreakerLayer};

/// Keeps breaker transitions and shed events.
#[derive(Default)]
pub(super) struct Recorder {
    pub(super) transitions: Mutex<Vec<(String, BreakerState, BreakerState)>>,
    pub(super) sheds: Mutex<Vec<(ErrorKind, &'static str)>>,
}
impl Collector for Recorder {
    fn on_breaker(&self, e: &BreakerEvent<'_>) {
        self.transitions
            .lock()
            .unwrap()
            .push((e.target.to_string(), e.from, e.to));
    }
    fn on_shed(&self, e: &ShedEvent<'_>) {
        self.sheds.lock().unwrap().push((e.reason, e.layer));
    }
}

/// How the mock answers.
#[derive(Debug, Clone, Copy)]
pub(super) enum Answer {
    Ok,
    Fail(ErrorKind),
    /// An error that names no node.
    FailNoNode(ErrorKind),
    /// Never answers.
    Hang,
}

/// A node at `addr` that answers as told, counting the calls.
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub(super) addr: SocketAddr,
    pub(super) answer: Arc<Mutex<Answer>>,
    pub(super) calls: Arc<AtomicUsize>,
}

impl Node {
    pub(super) fn new(addr: &str) -> Node {
        Node {
            addr: addr.parse().unwrap(),
            answer: Arc::new(Mutex::new(Answer::Ok)),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }
    pub(super) fn set(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }
    pub(super) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<CqlRequest> for Node {
    type Response = CqlResponse;
    type Error = CqlError;
    type Future = futures::future::Either<
        std::future::Ready<Result<CqlResponse, CqlError>>,
        std::future::Pending<Result<CqlResponse, CqlError>>,
    >;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: CqlRequest) -> Self::Future {
        use futures::future::Either;
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = *self.answer.lock().unwrap();
        Either::Left(std::future::ready(match answer {
            Answer::Ok => Ok(CqlResponse::synthetic(ExecutionInfo {
                coordinator: Some(self.addr),
                attempts: 1,
                ..ExecutionInfo::default()
            })),
            Answer::Fail(k) => Err(CqlError::new(k, "injected").with_node(self.addr)),
            Answer::FailNoNode(k) => Err(CqlError::new(k, "injected")),
            Answer::Hang => return Either::Right(std::future::pending()),
        }))
    }
}

/// Several nodes behind one service, standing in for the driver: a
/// request goes to the first node its route hint does not exclude
/// (none left: `CircuitOpen`, as the driver service says then).
#[derive(Debug, Clone)]
pub(super) struct Cluster {
    pub(super) nodes: Vec<Node>,
    /// Requests that came with a route hint.
    pub(super) hinted: Arc<AtomicUsize>,
}

impl Cluster {
    pub(super) fn new(nodes: &[&Node]) -> Cluster {
        Cluster {
            nodes: nodes.iter().map(|&n| n.clone()).collect(),
            hinted: Arc::new(AtomicUsize::new(0)),
        }
    }
    pub(super) fn hinted(&self) -> usize {
        self.hinted.load(Ordering::SeqCst)
    }
}

impl Service<CqlRequest> for Cluster {
    type Response = CqlResponse;
    type Error = CqlError;
    type Future = <Node as Service<CqlRequest>>::Future;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: CqlRequest) -> Self::Future {
        let route = req.meta().route().cloned();
        if route.as_ref().is_some_and(|h| h.excluded_len() > 0) {
            self.hinted.fetch_add(1, Ordering::SeqCst);
        }
        let usable = self
            .nodes
            .iter_mut()
            .find(|n| !route.as_ref().is_some_and(|h| h.excludes(n.addr)));
        match usable {
            Some(node) => node.call(req),
            None => futures::future::Either::Left(std::future::ready(Err(CqlError::new(
                ErrorKind::CircuitOpen,
                "every node excluded",
            )))),
        }
    }
}

pub(super) const NODE: &str = "10.0.0.1:9042";
pub(super) const GOOD: &str = "10.0.0.2:9042";

pub(super) fn config() -> BreakerConfig {
    BreakerConfig {
        failure_rate: 0.5,
        min_requests: 4,
        window: Duration::from_secs(10),
        cool_down: Duration::from_secs(5),
        half_open_probes: 1,
    }
}

pub(super) fn breaker(config: BreakerConfig) -> (CircuitBreakerLayer, Node, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let collectors = Collectors::with([rec.clone()]);
    (
        CircuitBreakerLayer::new(config, collectors),
        Node::new(NODE),
        rec,
    )
}

pub(super) fn req() -> CqlRequest {
    CqlRequest::query("SELECT v FROM ks.users WHERE id = 1")
}

/// One request through the breaker to `inner`; a request that does
/// not resolve within a minute (of the paused clock) fails the test.
pub(super) async fn send_to<S>(
    layer: &CircuitBreakerLayer,
    inner: &S,
) -> Result<CqlResponse, ErrorKind>
where
    S: Service<CqlRequest, Response = CqlResponse, Error = CqlError> + Clone,
{
    tokio::time::timeout(
        Duration::from_secs(60),
        layer.layer(inner.clone()).oneshot(req()),
    )
    .await
    .expect("a request hung")
    .map_err(|e| e.kind())
}

pub(super) async fn send(
    layer: &CircuitBreakerLayer,
    node: &Node,
) -> Result<CqlResponse, ErrorKind> {
    send_to(layer, node).await
}

/// The node that served a request.
pub(super) fn served_by(result: Result<CqlResponse, ErrorKind>) -> String {
    match result {
        Ok(resp) => resp.info().coordinator.unwrap().to_string(),
        Err(kind) => panic!("not served: {kind:?}"),
    }
}

/// The number of nodes not closed, as admission reads it.
pub(super) fn open_nodes(layer: &CircuitBreakerLayer) -> usize {
    let svc = layer.layer(());
    let breakers = svc.breakers.as_ref().expect("not a pass-through");
    breakers.open_nodes.load(Ordering::Acquire)
}

pub(super) use BreakerState::{Closed, HalfOpen, Open};
