//! Routing around open nodes: before a request is sent, every node whose
//! breaker refuses it is excluded from its route hint, so that the driver
//! sends it elsewhere; it is refused only when every node seen refuses.

use std::sync::atomic::Ordering;

use tower_cql_core::CqlRequest;

use super::state::{CLOSED, kind};
use super::target::{Admit, Breakers, Probe, Refusal};

impl Breakers {
    /// Excludes from `req`'s route every node whose breaker refuses it
    /// (open, or half-open with its probes in flight), so that the driver
    /// sends it to another node; takes the probe place of at most one
    /// node whose cool-down is over (that node stays in the route). `Err`
    /// with the reasons when every node seen refuses.
    pub(super) fn route_around(
        &self,
        req: &mut CqlRequest,
        now: u64,
        probe: &mut Option<Probe>,
    ) -> Result<(), String> {
        /// Refusals named in the message, at most.
        const LISTED: usize = 4;
        let nodes = self.nodes.snapshot();
        let mut excluded = 0;
        let mut refused = 0;
        let mut reasons: [Option<(&str, Refusal)>; LISTED] = [None; LISTED];
        for node in nodes.values() {
            let Some(addr) = node.addr else { continue };
            if kind(node.state.load(Ordering::Acquire)) == CLOSED {
                continue;
            }
            if probe.is_none() {
                match node.admit(self, now) {
                    Admit::Pass => continue,
                    Admit::Probe(generation) => {
                        *probe = Some(Probe {
                            target: node.clone(),
                            generation,
                        });
                        continue;
                    }
                    Admit::Refuse(why) => {
                        if let Some(slot) = reasons.get_mut(refused) {
                            *slot = Some((&node.name, why));
                        }
                        refused += 1;
                    }
                }
            }
            // Refused, or this request holds another node's probe place
            // already (one per request; this node waits for the next
            // request): routed around.
            req.meta_mut().route_hint().exclude(addr);
            excluded += 1;
        }
        if excluded == 0 || excluded < nodes.len() {
            return Ok(());
        }
        // Every node seen refuses (and none gave a probe place, so each
        // said why).
        let mut why = format!(
            "circuit breaker open for every node seen ({excluded}), none left to send the request to: "
        );
        for (i, (name, refusal)) in reasons.iter().flatten().enumerate() {
            if i > 0 {
                why.push_str("; ");
            }
            match refusal {
                Refusal::Open(left) => why.push_str(&format!("{name} open for {left:?} more")),
                Refusal::Probing(n) => {
                    why.push_str(&format!("{name} half-open, {n} probe(s) in flight"))
                }
            }
        }
        if refused > LISTED {
            why.push_str(&format!("; and {} more", refused - LISTED));
        }
        why.push_str(&format!(" (cool_down {:?})", self.config.cool_down));
        Err(why)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[tokio::test(start_paused = true)]
    async fn requests_go_around_an_open_node_to_a_healthy_one() {
        let (layer, bad, rec) = breaker(config());
        let good = Node::new(GOOD);
        assert!(send(&layer, &good).await.is_ok());
        bad.set(Answer::Fail(ErrorKind::Overloaded));
        for _ in 0..4 {
            let _ = send(&layer, &bad).await;
        }
        assert_eq!(layer.state(NODE), Some(Open));
        // ks.users was last served by the open node, ks.orders by the
        // healthy one: both flow, to the healthy node.
        let cluster = Cluster::new(&[&bad, &good]);
        let orders = || CqlRequest::query("SELECT v FROM ks.orders WHERE id = 1");
        for _ in 0..10 {
            assert_eq!(served_by(send_to(&layer, &cluster).await), GOOD);
            let resp = layer.layer(cluster.clone()).oneshot(orders()).await;
            assert_eq!(served_by(resp.map_err(|e| e.kind())), GOOD);
        }
        assert_eq!(bad.calls(), 4, "the open node got nothing more");
        assert_eq!(cluster.hinted(), 20, "each request carried the exclusion");
        assert!(rec.sheds.lock().unwrap().is_empty(), "nothing refused");
    }

    #[tokio::test(start_paused = true)]
    async fn no_exclusion_while_every_node_is_closed() {
        let (layer, node, _) = breaker(config());
        let good = Node::new(GOOD);
        let cluster = Cluster::new(&[&node, &good]);
        for _ in 0..20 {
            assert!(send_to(&layer, &cluster).await.is_ok());
        }
        assert_eq!(cluster.hinted(), 0);
        assert_eq!(open_nodes(&layer), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_node_seen_is_open_requests_are_refused() {
        let (layer, a, rec) = breaker(config());
        let b = Node::new(GOOD);
        for node in [&a, &b] {
            assert!(send(&layer, node).await.is_ok(), "both nodes seen");
        }
        for node in [&a, &b] {
            node.set(Answer::Fail(ErrorKind::Overloaded));
            for _ in 0..3 {
                let _ = send(&layer, node).await;
            }
        }
        assert_eq!(
            (layer.state(NODE), layer.state(GOOD)),
            (Some(Open), Some(Open))
        );
        assert_eq!(open_nodes(&layer), 2);
        let cluster = Cluster::new(&[&a, &b]);
        let err = tokio::time::timeout(
            Duration::from_secs(60),
            layer.layer(cluster.clone()).oneshot(req()),
        )
        .await
        .expect("hung")
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CircuitOpen);
        assert!(err.was_not_sent());
        assert!(err.message().contains("every node seen (2)"), "{err}");
        assert!(
            err.message().contains(NODE) && err.message().contains(GOOD),
            "{err}"
        );
        assert_eq!((a.calls(), b.calls()), (4, 4), "neither was sent it");
        assert_eq!(
            *rec.sheds.lock().unwrap(),
            vec![(ErrorKind::CircuitOpen, "breaker")]
        );
        // After the cool-down a request is a probe of one node (the other
        // is excluded from it) and is served again.
        tokio::time::advance(Duration::from_secs(5)).await;
        a.set(Answer::Ok);
        b.set(Answer::Ok);
        assert!(send_to(&layer, &cluster).await.is_ok());
        assert_eq!(open_nodes(&layer), 1, "the probed node closed");
        assert!(send_to(&layer, &cluster).await.is_ok());
        assert_eq!(a.calls() + b.calls(), 10, "both served by a node");
    }
}
