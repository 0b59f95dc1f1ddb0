//! Steering the attempts of one logical request to different nodes.
//!
//! The driver's load-balancing policy picks each attempt's node on its
//! own, so a retry can go back to the node that just failed, and a hedged
//! read can send its speculative attempts to the slow node its first
//! attempt is waiting on. A [`RouteHint`] carried by the request (the
//! retry and hedge layers attach one when they make a second attempt)
//! lists the nodes this request has already tried; the
//! [`DriverService`](crate::DriverService) runs the attempt with a policy
//! that puts those nodes last in the driver's plan. Avoiding excludes
//! nothing: when every replica has been tried, the plan is the driver's
//! own.
//!
//! A retry the classifier advises on the **same node** (a `ReadTimeout`
//! with the data present, `Unprepared`: see [`crate::classify`]) is sent
//! back instead: the retry layer names the node for that attempt
//! ([`RouteHint::return_to`]) and the policy puts it first in that
//! attempt's plan, though the request avoids it (if it is in the driver's
//! plan and not excluded; otherwise the attempt is steered as any other).
//!
//! A hint can also **exclude** nodes: an excluded node is dropped from
//! the plan altogether, for every attempt of the request. The circuit
//! breaker excludes the nodes whose breaker is open, so that a request
//! goes to the healthy nodes instead of being refused. When nothing is
//! left once the excluded nodes are dropped, no attempt is made and the
//! request fails with [`ErrorKind::CircuitOpen`](crate::ErrorKind::CircuitOpen)
//! (not sent), saying that every node it could use has an open breaker.
//!
//! ```
//! use std::net::SocketAddr;
//! use tower_cql_core::CqlRequest;
//! use tower_cql_core::routing::RouteHint;
//!
//! let mut req = CqlRequest::query("SELECT v FROM ks.t WHERE k = 1");
//! let hint = req.meta_mut().route_hint();      // created on first use, shared by clones
//! let slow: SocketAddr = "10.0.0.2:9042".parse().unwrap();
//! hint.avoid(slow);                             // tried last
//! assert!(hint.avoids(slow));
//! let broken: SocketAddr = "10.0.0.3:9042".parse().unwrap();
//! hint.exclude(broken);                         // never tried
//! assert!(hint.excludes(broken) && !hint.avoids(broken));
//! assert!(!hint.excludes(slow));
//! hint.return_to(1, slow);                      // attempt 1: back to `slow`, first
//! assert!(hint.returns_to(1, slow) && !hint.returns_to(2, slow));
//! let copy = req.clone();
//! assert!(copy.meta().route().unwrap().avoids(slow));
//! assert!(copy.meta().route().unwrap().excludes(broken));
//! ```
//!
//! Requests without a hint cost nothing extra: the policy looks for a
//! hint in the attempt's task (a Tokio task-local set by the driver
//! service only around attempts that carry one) and otherwise hands the
//! decision straight to the driver's policy. The hint is a few atomics,
//! written and read by the one task that runs the request. It remembers
//! up to four avoided and up to eight excluded nodes; a node past that is
//! not remembered (an avoided one may be tried again sooner, an excluded
//! one stays in the plan).

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use scylla::cluster::{ClusterState, NodeRef};
use scylla::errors::RequestAttemptError;
use scylla::policies::load_balancing::{FallbackPlan, LoadBalancingPolicy, RoutingInfo};
use scylla::routing::Shard;

use crate::classify::NodeVerdict;

/// Nodes avoided per request, at most: enough for a retry budget and
/// hedging; a fifth tried node is not remembered.
const SLOTS: usize = 4;

/// Nodes excluded per request, at most: the breaker excludes every node
/// whose breaker is open, and more than eight at once is an outage.
const EXCLUDED: usize = 8;

/// A small set of node keys, added to and read without a lock.
struct Nodes<const N: usize> {
    keys: [AtomicU64; N],
    len: AtomicUsize,
}

impl<const N: usize> Default for Nodes<N> {
    fn default() -> Self {
        Nodes {
            keys: std::array::from_fn(|_| AtomicU64::new(0)),
            len: AtomicUsize::new(0),
        }
    }
}

impl<const N: usize> Nodes<N> {
    fn len(&self) -> usize {
        self.len.load(Ordering::Acquire).min(N)
    }

    fn contains(&self, k: u64) -> bool {
        self.keys[..self.len()]
            .iter()
            .any(|n| n.load(Ordering::Acquire) == k)
    }

    fn insert(&self, k: u64) {
        if self.contains(k) {
            return;
        }
        // One writer in practice (the request's task); with several, a
        // slot is claimed first, so no two writers share one.
        let i = self.len.fetch_add(1, Ordering::AcqRel);
        if i < N {
            self.keys[i].store(k, Ordering::Release);
        }
    }
}

/// The nodes one logical request has tried (or was told to avoid), and
/// the nodes it must not be sent to; see the [module docs](self).
#[derive(Default)]
pub struct RouteHint {
    avoided: Nodes<SLOTS>,
    excluded: Nodes<EXCLUDED>,
    /// The node each attempt (by index) was sent to, as the steering
    /// policy picked it or the attempt's answer named it.
    attempt_nodes: [OnceLock<SocketAddr>; ATTEMPTS],
    /// The node (its key; 0: none) each attempt (by index) is sent back
    /// to, first in its plan (see [`RouteHint::return_to`]).
    returns: [AtomicU64; ATTEMPTS],
    /// Told how each attempt went for its node (the circuit breaker).
    observer: OnceLock<Arc<dyn NodeObserver>>,
    /// Attempt outcomes reported to the observer.
    reported: AtomicUsize,
}

/// Attempts whose node a hint remembers (by attempt index, the first
/// [`ATTEMPTS`]): enough for a retry budget and hedging.
pub const ATTEMPTS: usize = 8;

/// Hears how every attempt of a request went for the node it went to,
/// as the attempt ends: the circuit breaker's view of the nodes, which a
/// request's final outcome hides (a retry that succeeded elsewhere, a
/// per-attempt timeout that names no node).
///
/// ```
/// use std::net::SocketAddr;
/// use std::sync::{Arc, Mutex};
/// use tower_cql_core::classify::NodeVerdict;
/// use tower_cql_core::routing::{NodeObserver, RouteHint};
///
/// #[derive(Default)]
/// struct Seen(Mutex<Vec<(SocketAddr, NodeVerdict)>>);
/// impl NodeObserver for Seen {
///     fn on_attempt(&self, node: SocketAddr, verdict: NodeVerdict) {
///         self.0.lock().unwrap().push((node, verdict));
///     }
/// }
///
/// let seen = Arc::new(Seen::default());
/// let hint = RouteHint::new();
/// hint.set_observer(seen.clone());
/// let node: SocketAddr = "10.0.0.1:9042".parse().unwrap();
/// hint.report(node, NodeVerdict::Failed); // what the driver service or the timeout layer do
/// hint.report(node, NodeVerdict::NotJudged); // says nothing about the node: not passed on
/// assert_eq!(*seen.0.lock().unwrap(), vec![(node, NodeVerdict::Failed)]);
/// assert_eq!(hint.reported(), 1);
/// ```
pub trait NodeObserver: Send + Sync + 'static {
    /// An attempt sent to `node` ended; `verdict` is never
    /// [`NodeVerdict::NotJudged`].
    fn on_attempt(&self, node: SocketAddr, verdict: NodeVerdict);
}

impl fmt::Debug for RouteHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteHint")
            .field("avoided", &self.avoided.len())
            .field("excluded", &self.excluded.len())
            .field("observed", &self.observer.get().is_some())
            .field("reported", &self.reported.load(Ordering::Relaxed))
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
        self.avoided.insert(key(node));
    }

    /// Whether `node` is avoided.
    pub fn avoids(&self, node: SocketAddr) -> bool {
        self.avoided.contains(key(node))
    }

    /// How many nodes are avoided.
    pub fn len(&self) -> usize {
        self.avoided.len()
    }

    /// Whether no node is avoided.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends attempt `index` back to `node`: first in that attempt's
    /// plan, though the request avoids it. For a retry the classifier
    /// advises on the same node (a read timeout with the data present,
    /// `Unprepared`); the retry layer sets it. An excluded node stays
    /// excluded, and a node the driver's plan does not hold is not added
    /// (the attempt is then steered as any other); indexes from
    /// [`ATTEMPTS`] on are not remembered.
    pub fn return_to(&self, index: u32, node: SocketAddr) {
        if let Some(slot) = self.returns.get(index as usize) {
            slot.store(key(node), Ordering::Release);
        }
    }

    /// Whether attempt `index` is sent back to `node` (see
    /// [`return_to`](Self::return_to)).
    pub fn returns_to(&self, index: u32, node: SocketAddr) -> bool {
        self.returned(index) == Some(key(node))
    }

    /// The key of the node attempt `index` is sent back to, if any.
    fn returned(&self, index: u32) -> Option<u64> {
        let k = self.returns.get(index as usize)?.load(Ordering::Acquire);
        (k != 0).then_some(k)
    }

    /// Drops `node` from the plans of this request's attempts: it is not
    /// sent there at all (up to eight nodes; see the [module docs](self)).
    pub fn exclude(&self, node: SocketAddr) {
        self.excluded.insert(key(node));
    }

    /// Whether `node` is excluded.
    pub fn excludes(&self, node: SocketAddr) -> bool {
        self.excluded.contains(key(node))
    }

    /// How many nodes are excluded.
    pub fn excluded_len(&self) -> usize {
        self.excluded.len()
    }

    /// Remembers that attempt `index` went to `node` (the first node
    /// given for an index is kept; indexes from [`ATTEMPTS`] on are not
    /// remembered).
    pub fn set_attempt_node(&self, index: u32, node: SocketAddr) {
        if let Some(slot) = self.attempt_nodes.get(index as usize) {
            let _ = slot.set(node);
        }
    }

    /// The node attempt `index` went to, where known: the node a
    /// per-attempt timeout was waiting on.
    pub fn attempt_node(&self, index: u32) -> Option<SocketAddr> {
        self.attempt_nodes.get(index as usize)?.get().copied()
    }

    /// Has `observer` told of every attempt's outcome from now on (the
    /// first observer set is kept).
    pub fn set_observer(&self, observer: Arc<dyn NodeObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Tells the observer, if any, that an attempt sent to `node` ended
    /// with `verdict`; a [`NodeVerdict::NotJudged`] is not passed on.
    pub fn report(&self, node: SocketAddr, verdict: NodeVerdict) {
        if verdict == NodeVerdict::NotJudged {
            return;
        }
        if let Some(o) = self.observer.get() {
            o.on_attempt(node, verdict);
            self.reported.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Attempt outcomes passed on to the observer so far.
    pub fn reported(&self) -> usize {
        self.reported.load(Ordering::Relaxed)
    }
}

tokio::task_local! {
    /// The hint of the attempt this task is running, if it has one, and
    /// the attempt's index.
    static ROUTE: (Arc<RouteHint>, u32);
}

thread_local! {
    /// The node of the attempt being polled on this thread, as
    /// [`Steering`] last saw it: the node it picked (or took from its
    /// fallback plan), then the node the driver reported a failure for.
    /// Cleared before, and read after, each poll of a [`Steered`] attempt
    /// that records it (the driver calls the policy from within that
    /// poll).
    static SEEN: std::cell::Cell<Option<SocketAddr>> = const { std::cell::Cell::new(None) };

    /// How many nodes [`Steering`] dropped, for the hint's exclusions,
    /// from the plan it made last on this thread (an attempt with a
    /// hint): set by `pick` for its node and by `fallback` for the whole
    /// plan, which the driver asks for when `pick` gave none. The driver
    /// makes the plan and finds it empty in one poll, so an empty plan
    /// reads the count of its own plan (see [`excluded_now`]).
    static DROPPED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn saw(node: NodeRef<'_>) {
    SEEN.with(|s| s.set(Some(addr(node))));
}

pin_project_lite::pin_project! {
    /// One attempt, run with its hint (if any) visible to [`Steering`],
    /// and the node the attempt went to, as [`Steering`] saw it, written
    /// to `node` (when given) after each poll: the node it picked for the
    /// attempt, or, once the driver reports a failed attempt, the node it
    /// reports (a successful one's is its response's coordinator). (A
    /// history listener per request told the node before, for about 250
    /// instructions more per request; this costs two thread-local
    /// accesses per poll.)
    ///
    /// One type for attempts with and without a hint, so the driver
    /// service's future holds the attempt once (an `async` wrapper around
    /// `ROUTE.scope` held it twice more: 9,424 bytes against 4,656, all
    /// copied into the response future's box on every call).
    pub(crate) struct Steered<'n, F> {
        #[pin]
        inner: F,
        hint: Option<(Arc<RouteHint>, u32)>,
        node: Option<&'n mut Option<SocketAddr>>,
    }
}

impl<'n, F> Steered<'n, F> {
    /// `fut` (attempt `index`) with `hint` in scope while it is polled,
    /// the node it goes to written to `node`.
    pub(crate) fn new(
        hint: Option<Arc<RouteHint>>,
        index: u32,
        node: Option<&'n mut Option<SocketAddr>>,
        fut: F,
    ) -> Steered<'n, F> {
        Steered {
            inner: fut,
            hint: hint.map(|h| (h, index)),
            node,
        }
    }
}

impl<F: std::future::Future> std::future::Future for Steered<'_, F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        if this.node.is_some() {
            SEEN.with(|s| s.set(None));
        }
        let out = match this.hint {
            Some(h) => ROUTE.sync_scope(h.clone(), || this.inner.poll(cx)),
            None => this.inner.poll(cx),
        };
        if let Some(node) = this.node
            && let Some(seen) = SEEN.with(|s| s.take())
        {
            **node = Some(seen);
        }
        out
    }
}

/// Runs `fut` (one attempt) with `hint` visible to [`Steering`].
#[cfg(test)]
async fn with_hint<F: std::future::Future>(hint: Arc<RouteHint>, fut: F) -> F::Output {
    Steered::new(Some(hint), 0, None, fut).await
}

fn current() -> Option<(Arc<RouteHint>, u32)> {
    ROUTE.try_with(|(h, i)| (h.clone(), *i)).ok()
}

/// How many nodes the hint of the attempt this task is running dropped
/// from the attempt's plan (0 without a hint): an empty plan then means
/// that the breaker left no node to try. Nodes it excludes that the plan
/// never held (the session's policy left them out) do not count: a plan
/// the policy left empty is not the breaker's.
pub(crate) fn excluded_now() -> usize {
    ROUTE.try_with(|_| DROPPED.get()).unwrap_or(0)
}

/// A node's address (not a connection's: see
/// [`Coordinator::connection_address`](scylla::response::Coordinator::connection_address)).
pub(crate) fn addr(node: NodeRef<'_>) -> SocketAddr {
    SocketAddr::new(node.address.ip(), node.address.port())
}

/// The load-balancing policy the driver service installs: the session's
/// own policy, with the nodes a request's hint excludes dropped from its
/// plan, the nodes it avoids moved to the end, and the node picked
/// remembered in the hint.
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
        let Some((hint, index)) = current() else {
            let first = self.inner.pick(request, cluster);
            if let Some((node, _)) = first {
                saw(node);
            }
            return first;
        };
        let usable = |n: NodeRef<'_>| !hint.excludes(addr(n));
        let fresh = |n: NodeRef<'_>| usable(n) && !hint.avoids(addr(n));
        let first = self.inner.pick(request, cluster);
        // (a plan is empty only when `pick` gives none: then `fallback`
        // counts the whole plan's)
        DROPPED.set(usize::from(first.is_some_and(|(n, _)| !usable(n))));
        // sent back to the node an earlier attempt failed on (a retry
        // advised on the same node), when the plan holds it
        let back = hint.returned(index).and_then(|k| {
            let back = |n: NodeRef<'_>| key(addr(n)) == k && usable(n);
            match first {
                Some((node, _)) if back(node) => first,
                _ => self
                    .inner
                    .fallback(request, cluster)
                    .find(|&(n, _)| back(n)),
            }
        });
        let chosen = match first {
            _ if back.is_some() => back,
            Some((node, _)) if !fresh(node) => self
                .inner
                .fallback(request, cluster)
                .find(|&(n, _)| fresh(n))
                .or(first.filter(|&(n, _)| usable(n)))
                .or_else(|| {
                    self.inner
                        .fallback(request, cluster)
                        .find(|&(n, _)| usable(n))
                }),
            _ => first,
        };
        if let Some((node, _)) = chosen {
            hint.avoid(addr(node));
            hint.set_attempt_node(index, addr(node));
            saw(node);
        }
        chosen
    }

    fn fallback<'a>(
        &'a self,
        request: &'a RoutingInfo<'_>,
        cluster: &'a ClusterState,
    ) -> FallbackPlan<'a> {
        // (asked only when the picked node is not the last target tried:
        // each node the driver takes from the plan is the one its next
        // attempt goes to, until it reports the attempt's outcome)
        let plan = self.inner.fallback(request, cluster);
        let Some((hint, _)) = current() else {
            return Box::new(plan.inspect(|&(n, _)| saw(n)));
        };
        let mut dropped = 0;
        let (mut fresh, tried): (Vec<_>, Vec<_>) = plan
            .filter(|&(n, _)| {
                let excluded = hint.excludes(addr(n));
                dropped += usize::from(excluded);
                !excluded
            })
            .partition(|&(n, _)| !hint.avoids(addr(n)));
        DROPPED.set(dropped);
        fresh.extend(tried);
        Box::new(fresh.into_iter().inspect(|&(n, _)| saw(n)))
    }

    fn on_request_success(&self, request: &RoutingInfo<'_>, latency: Duration, node: NodeRef<'_>) {
        // (not `saw`: a successful attempt's node is its response's
        // coordinator, and the node seen is read for failed and cancelled
        // attempts only)
        self.inner.on_request_success(request, latency, node);
    }

    fn on_request_failure(
        &self,
        request: &RoutingInfo<'_>,
        latency: Duration,
        node: NodeRef<'_>,
        error: &RequestAttemptError,
    ) {
        saw(node);
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

    #[test]
    fn returns_to_a_node_per_attempt_index() {
        let h = RouteHint::new();
        let a: SocketAddr = "127.0.0.1:9042".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:9042".parse().unwrap();
        assert!(!h.returns_to(1, a));
        h.return_to(1, a);
        h.return_to(3, b);
        assert!(h.returns_to(1, a) && !h.returns_to(1, b));
        assert!(h.returns_to(3, b) && !h.returns_to(2, a) && !h.returns_to(2, b));
        assert!(h.is_empty(), "sending back avoids nothing");
        // past the remembered attempts: not remembered, no panic
        h.return_to(ATTEMPTS as u32, a);
        assert!(!h.returns_to(ATTEMPTS as u32, a));
    }

    #[test]
    fn excludes_up_to_eight_nodes_apart_from_the_avoided_ones() {
        let h = RouteHint::new();
        let a: SocketAddr = "127.0.0.1:9042".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:9042".parse().unwrap();
        h.avoid(a);
        h.exclude(b);
        h.exclude(b);
        assert!(h.avoids(a) && !h.excludes(a));
        assert!(h.excludes(b) && !h.avoids(b));
        assert_eq!((h.len(), h.excluded_len()), (1, 1));
        for i in 3..20u8 {
            h.exclude(SocketAddr::from(([10, 0, 0, i], 9042)));
        }
        assert_eq!(h.excluded_len(), EXCLUDED);
        assert!(h.excludes(b), "the first ones stay");
        assert_eq!(h.len(), 1, "excluding avoids nothing");
    }

    #[tokio::test]
    async fn the_hint_is_visible_inside_the_attempt_only() {
        let h = Arc::new(RouteHint::new());
        assert!(current().is_none());
        let seen = with_hint(h.clone(), async { current().is_some() }).await;
        assert!(seen);
        assert!(current().is_none());
    }

    /// Against a three-node testkit cluster, through the real driver.
    mod cluster {
        use super::*;
        use crate::{CqlError, CqlRequest, DriverService, ErrorKind};
        use scylla::client::session::Session;
        use scylla::client::session_builder::SessionBuilder;
        use scylla::policies::load_balancing::Plan;
        use tower_cql_testkit::Cluster;

        async fn start() -> (Cluster, Arc<Session>, Vec<SocketAddr>) {
            let cluster = Cluster::builder().nodes(3).start().await.unwrap();
            let session = SessionBuilder::new()
                .known_nodes_addr(cluster.contact_points())
                .build()
                .await
                .unwrap();
            let nodes = (0..3).map(|i| cluster.node_addr(i)).collect();
            (cluster, Arc::new(session), nodes)
        }

        /// The steering policy around the session's own.
        fn steering(session: &Session) -> Steering {
            let policy = session
                .get_default_execution_profile_handle()
                .to_profile()
                .get_load_balancing_policy()
                .clone();
            Steering::new(policy)
        }

        /// The node recorded for the attempt is the plan's element the
        /// driver took last (the picked one, then each fallback one), with
        /// a hint and without.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn the_node_seen_is_the_plan_element_taken_last() {
            let (_cluster, session, nodes) = start().await;
            let steering = steering(&session);
            let state = session.get_cluster_state();
            let info = RoutingInfo::default();
            let walk = || {
                SEEN.with(|s| s.set(None));
                let mut taken = 0;
                for (node, _) in Plan::new(&steering, &info, &state) {
                    assert_eq!(SEEN.with(|s| s.get()), Some(addr(node)));
                    taken += 1;
                }
                assert_eq!(taken, nodes.len());
            };
            walk();
            let hint = Arc::new(RouteHint::new());
            hint.avoid(nodes[0]);
            with_hint(hint, async { walk() }).await;
        }

        /// The plan the steering policy makes with `hint` in scope.
        async fn plan(session: &Session, hint: Arc<RouteHint>) -> Vec<SocketAddr> {
            let steering = steering(session);
            let state = session.get_cluster_state();
            with_hint(hint, async {
                let info = RoutingInfo::default();
                Plan::new(&steering, &info, &state)
                    .map(|(n, _)| addr(n))
                    .collect()
            })
            .await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn an_excluded_node_is_never_in_the_plan() {
            let (_cluster, session, nodes) = start().await;
            let everyone = plan(&session, Arc::new(RouteHint::new())).await;
            assert_eq!(everyone.len(), 3, "{everyone:?}");
            for _ in 0..30 {
                let hint = Arc::new(RouteHint::new());
                hint.exclude(nodes[1]);
                let p = plan(&session, hint).await;
                assert_eq!(p.len(), 2, "{p:?}");
                assert!(!p.contains(&nodes[1]), "{p:?}");
            }
            // Avoided and excluded: the avoided node comes last, the
            // excluded one not at all.
            for _ in 0..30 {
                let hint = Arc::new(RouteHint::new());
                hint.avoid(nodes[0]);
                hint.exclude(nodes[1]);
                assert_eq!(plan(&session, hint).await, vec![nodes[2], nodes[0]]);
            }
            // Sent back: attempt 0 (the index `plan` runs) goes to the
            // node named for it first, though it is avoided; a node named
            // for another attempt changes nothing; an excluded one stays
            // out.
            for _ in 0..30 {
                let hint = Arc::new(RouteHint::new());
                hint.avoid(nodes[0]);
                hint.avoid(nodes[1]);
                hint.return_to(0, nodes[1]);
                assert_eq!(plan(&session, hint).await[0], nodes[1]);
                let hint = Arc::new(RouteHint::new());
                hint.avoid(nodes[1]);
                hint.return_to(1, nodes[1]);
                let p = plan(&session, hint).await;
                assert_eq!(p.last(), Some(&nodes[1]), "{p:?}");
                let hint = Arc::new(RouteHint::new());
                hint.exclude(nodes[1]);
                hint.return_to(0, nodes[1]);
                let p = plan(&session, hint).await;
                assert!(!p.contains(&nodes[1]), "{p:?}");
            }
            // Every node excluded: an empty plan.
            let hint = Arc::new(RouteHint::new());
            nodes.iter().for_each(|&n| hint.exclude(n));
            assert_eq!(plan(&session, hint).await, vec![]);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn excluded_nodes_get_no_request_and_none_left_is_circuit_open() {
            use tower_cql_testkit::{Fault, InjectedError};
            const GET: &str = "SELECT v FROM ks.kv WHERE k = 1";
            let (cluster, session, nodes) = start().await;
            let driver = DriverService::builder(session).build().unwrap();
            for cql in [
                "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 3}",
                "CREATE TABLE ks.kv (k int PRIMARY KEY, v text)",
            ] {
                driver.execute(CqlRequest::unprepared(cql)).await.unwrap();
            }
            // node 0 fails the read: a request sent there fails
            let node0 = cluster.faults().add(
                Fault::error(InjectedError::Overloaded)
                    .matching(GET)
                    .node(0),
            );
            let get = |hint: &dyn Fn(&RouteHint)| {
                let mut req = CqlRequest::unprepared(GET);
                hint(req.meta_mut().route_hint());
                req
            };
            for _ in 0..30 {
                driver.execute(get(&|h| h.exclude(nodes[0]))).await.unwrap();
            }
            assert_eq!(cluster.faults().fired(node0), 0);
            // without the exclusion node 0 gets its share
            for _ in 0..30 {
                let _ = driver.execute(get(&|_| {})).await;
            }
            assert!(cluster.faults().fired(node0) > 0);

            let err = driver
                .execute(get(&|h| nodes.iter().for_each(|&n| h.exclude(n))))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::CircuitOpen, "{err}");
            assert!(err.was_not_sent());
            assert!(err.message().contains("open circuit breaker"), "{err}");
            // Without exclusions an empty plan is still a connection error:
            // the mapping reads the attempt's hint only.
            let err = CqlError::from_execution(scylla::errors::ExecutionError::EmptyPlan);
            assert_eq!(err.kind(), ErrorKind::Connection);
        }
    }
}
