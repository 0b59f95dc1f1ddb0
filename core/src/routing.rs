//! Steering the attempts of one logical request to different nodes.
//!
//! The driver's load-balancing policy picks each attempt's node on its
//! own, so a retry can go back to the node that just failed, and a hedged
//! read can send its speculative attempts to the slow node its first
//! attempt is waiting on. A [`RouteHint`] carried by the request (the
//! retry and hedge layers attach one when they make a second attempt)
//! lists the nodes this request has already tried; the
//! [`DriverService`](crate::DriverService) runs the attempt with a policy
//! that puts those nodes last in the driver's plan. Nothing is excluded:
//! when every replica has been tried, the plan is the driver's own.
//!
//! ```
//! use std::net::SocketAddr;
//! use tower_cql_core::CqlRequest;
//! use tower_cql_core::routing::RouteHint;
//!
//! let mut req = CqlRequest::query("SELECT v FROM ks.t WHERE k = 1");
//! let hint = req.meta_mut().route_hint();      // created on first use, shared by clones
//! let slow: SocketAddr = "10.0.0.2:9042".parse().unwrap();
//! hint.avoid(slow);
//! assert!(hint.avoids(slow));
//! assert!(req.clone().meta_mut().route_hint().avoids(slow));
//! ```
//!
//! Requests without a hint cost nothing extra: the policy looks for a
//! hint in the attempt's task (a Tokio task-local set by the driver
//! service only around attempts that carry one) and otherwise hands the
//! decision straight to the driver's policy. The hint is a few atomics,
//! written and read by the one task that runs the request.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use scylla::cluster::{ClusterState, NodeRef};
use scylla::errors::RequestAttemptError;
use scylla::policies::load_balancing::{FallbackPlan, LoadBalancingPolicy, RoutingInfo};
use scylla::routing::Shard;

/// Nodes remembered per request, at most: enough for a retry budget and
/// hedging; a fifth tried node is not remembered.
const SLOTS: usize = 4;

/// The nodes one logical request has tried (or was told to avoid); see
/// the [module docs](self).
#[derive(Default)]
pub struct RouteHint {
    nodes: [AtomicU64; SLOTS],
    len: AtomicUsize,
}

impl fmt::Debug for RouteHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteHint")
            .field("avoided", &self.len.load(Ordering::Acquire).min(SLOTS))
            .finish()
    }
}

/// A node's address folded into a non-zero word.
fn key(addr: SocketAddr) -> u64 {
    // FNV-1a over the address bytes and the port: stable, cheap, and a
    // collision would only make one node be tried a little later.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    match addr {
        SocketAddr::V4(a) => a.ip().octets().into_iter().for_each(&mut eat),
        SocketAddr::V6(a) => a.ip().octets().into_iter().for_each(&mut eat),
    }
    addr.port().to_be_bytes().into_iter().for_each(&mut eat);
    h.max(1)
}

impl RouteHint {
    /// An empty hint.
    pub fn new() -> RouteHint {
        RouteHint::default()
    }

    /// Puts `node` last in the plans of this request's later attempts.
    pub fn avoid(&self, node: SocketAddr) {
        self.remember(key(node));
    }

    /// Whether `node` is avoided.
    pub fn avoids(&self, node: SocketAddr) -> bool {
        self.contains(key(node))
    }

    /// How many nodes are avoided.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire).min(SLOTS)
    }

    /// Whether no node is avoided.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn contains(&self, k: u64) -> bool {
        self.nodes[..self.len()]
            .iter()
            .any(|n| n.load(Ordering::Acquire) == k)
    }

    fn remember(&self, k: u64) {
        if self.contains(k) {
            return;
        }
        // One writer in practice (the request's task); with several, a
        // slot is claimed first, so no two writers share one.
        let i = self.len.fetch_add(1, Ordering::AcqRel);
        if i < SLOTS {
            self.nodes[i].store(k, Ordering::Release);
        }
    }
}

tokio::task_local! {
    /// The hint of the attempt this task is running, if it has one.
    static ROUTE: Arc<RouteHint>;
}

pin_project_lite::pin_project! {
    /// One attempt, run with its hint (if any) visible to [`Steering`].
    ///
    /// One type for attempts with and without a hint, so the driver
    /// service's future holds the attempt once (an `async` wrapper around
    /// `ROUTE.scope` held it twice more: 9,424 bytes against 4,656, all
    /// copied into the response future's box on every call).
    pub(crate) struct Steered<F> {
        #[pin]
        inner: F,
        hint: Option<Arc<RouteHint>>,
    }
}

impl<F> Steered<F> {
    /// `fut` with `hint` in scope while it is polled.
    pub(crate) fn new(hint: Option<Arc<RouteHint>>, fut: F) -> Steered<F> {
        Steered { inner: fut, hint }
    }
}

impl<F: std::future::Future> std::future::Future for Steered<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        match this.hint {
            Some(h) => ROUTE.sync_scope(h.clone(), || this.inner.poll(cx)),
            None => this.inner.poll(cx),
        }
    }
}

/// Runs `fut` (one attempt) with `hint` visible to [`Steering`].
#[cfg(test)]
async fn with_hint<F: std::future::Future>(hint: Arc<RouteHint>, fut: F) -> F::Output {
    Steered::new(Some(hint), fut).await
}

fn current() -> Option<Arc<RouteHint>> {
    ROUTE.try_with(Arc::clone).ok()
}

fn addr(node: NodeRef<'_>) -> SocketAddr {
    SocketAddr::new(node.address.ip(), node.address.port())
}

/// The load-balancing policy the driver service installs: the session's
/// own policy, with the nodes a request's hint avoids moved to the end
/// of its plan, and the node picked remembered in the hint.
#[derive(Debug)]
pub(crate) struct Steering {
    inner: Arc<dyn LoadBalancingPolicy>,
}

impl Steering {
    pub(crate) fn new(inner: Arc<dyn LoadBalancingPolicy>) -> Steering {
        Steering { inner }
    }
}

impl LoadBalancingPolicy for Steering {
    fn pick<'a>(
        &'a self,
        request: &'a RoutingInfo<'_>,
        cluster: &'a ClusterState,
    ) -> Option<(NodeRef<'a>, Option<Shard>)> {
        let Some(hint) = current() else {
            return self.inner.pick(request, cluster);
        };
        let first = self.inner.pick(request, cluster);
        let chosen = match first {
            Some((node, _)) if hint.avoids(addr(node)) => self
                .inner
                .fallback(request, cluster)
                .find(|(n, _)| !hint.avoids(addr(n)))
                .or(first),
            _ => first,
        };
        if let Some((node, _)) = chosen {
            hint.avoid(addr(node));
        }
        chosen
    }

    fn fallback<'a>(
        &'a self,
        request: &'a RoutingInfo<'_>,
        cluster: &'a ClusterState,
    ) -> FallbackPlan<'a> {
        let plan = self.inner.fallback(request, cluster);
        let Some(hint) = current() else {
            return plan;
        };
        let (mut fresh, tried): (Vec<_>, Vec<_>) = plan.partition(|(n, _)| !hint.avoids(addr(n)));
        fresh.extend(tried);
        Box::new(fresh.into_iter())
    }

    fn on_request_success(&self, request: &RoutingInfo<'_>, latency: Duration, node: NodeRef<'_>) {
        self.inner.on_request_success(request, latency, node);
    }

    fn on_request_failure(
        &self,
        request: &RoutingInfo<'_>,
        latency: Duration,
        node: NodeRef<'_>,
        error: &RequestAttemptError,
    ) {
        self.inner.on_request_failure(request, latency, node, error);
    }

    fn name(&self) -> String {
        format!("Steering({})", self.inner.name())
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;

    #[test]
    fn remembers_up_to_four_distinct_nodes() {
        let h = RouteHint::new();
        let a: SocketAddr = "127.0.0.1:9042".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:9042".parse().unwrap();
        let c: SocketAddr = "[::1]:9042".parse().unwrap();
        assert!(h.is_empty() && !h.avoids(a));
        h.avoid(a);
        h.avoid(a);
        assert_eq!(h.len(), 1);
        h.avoid(b);
        h.avoid(c);
        assert!(h.avoids(a) && h.avoids(b) && h.avoids(c));
        assert!(!h.avoids("127.0.0.1:9043".parse().unwrap()));
        for i in 3..10u8 {
            h.avoid(SocketAddr::from(([10, 0, 0, i], 9042)));
        }
        assert_eq!(h.len(), SLOTS);
        assert!(h.avoids(a), "the first ones stay");
    }

    #[tokio::test]
    async fn the_hint_is_visible_inside_the_attempt_only() {
        let h = Arc::new(RouteHint::new());
        assert!(current().is_none());
        let seen = with_hint(h.clone(), async { current().is_some() }).await;
        assert!(seen);
        assert!(current().is_none());
    }
}
