//! The cluster-wide state every node shares: schema, data, topology,
//! execution counters, fault rules and the event bus.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;
use tokio::sync::broadcast;

use crate::fault::Faults;
use crate::schema::Schema;

/// One node's identity and liveness.
#[derive(Debug)]
pub(crate) struct NodeInfo {
    pub(crate) addr: SocketAddr,
    pub(crate) host_id: [u8; 16],
    pub(crate) tokens: Vec<i64>,
    pub(crate) data_center: String,
    pub(crate) rack: String,
    pub(crate) running: AtomicBool,
    pub(crate) executions: AtomicU64,
}

/// The ring.
#[derive(Debug)]
pub(crate) struct Topology {
    pub(crate) cluster_name: String,
    pub(crate) nodes: Vec<NodeInfo>,
    /// (token, node index), sorted by token.
    pub(crate) ring: Vec<(i64, usize)>,
}

impl Topology {
    pub(crate) fn new(
        cluster_name: &str,
        addrs: &[SocketAddr],
        vnodes: usize,
        data_center: &str,
    ) -> Topology {
        let n = addrs.len();
        let total = (n * vnodes).max(1) as i128;
        let span = u64::MAX as i128 + 1;
        let mut ring = Vec::with_capacity(n * vnodes);
        let nodes = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let tokens: Vec<i64> = (0..vnodes)
                    .map(|v| {
                        let slot = (v * n + i) as i128;
                        (i64::MIN as i128 + span * slot / total + span / total / 2) as i64
                    })
                    .collect();
                ring.extend(tokens.iter().map(|&t| (t, i)));
                let mut host_id = crate::schema::name_uuid(&format!("{cluster_name}/{addr}"));
                host_id[6] = (host_id[6] & 0x0F) | 0x40;
                NodeInfo {
                    addr: *addr,
                    host_id,
                    tokens,
                    data_center: data_center.to_string(),
                    rack: "rack1".to_string(),
                    running: AtomicBool::new(false),
                    executions: AtomicU64::new(0),
                }
            })
            .collect();
        ring.sort_unstable();
        Topology {
            cluster_name: cluster_name.to_string(),
            nodes,
            ring,
        }
    }

    /// How many of the `rf` replicas of `token` are up: (replicas, alive).
    pub(crate) fn alive_replicas(&self, token: i64, rf: usize) -> (usize, usize) {
        let n = self.nodes.len();
        let rf_eff = rf.min(n);
        if self.nodes.iter().all(|n| n.running.load(Ordering::Relaxed)) {
            return (rf_eff, rf_eff);
        }
        let start = self.ring.partition_point(|(t, _)| *t < token);
        let mut seen = Vec::with_capacity(rf_eff);
        for k in 0..self.ring.len() {
            if seen.len() == rf_eff {
                break;
            }
            let node = self.ring[(start + k) % self.ring.len()].1;
            if !seen.contains(&node) {
                seen.push(node);
            }
        }
        let alive = seen
            .iter()
            .filter(|&&i| self.nodes[i].running.load(Ordering::Relaxed))
            .count();
        (rf_eff, alive)
    }

    /// Nodes that are up.
    pub(crate) fn alive_count(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.running.load(Ordering::Relaxed))
            .count()
    }
}

/// A schema change, as results and events carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SchemaChange {
    pub(crate) change: &'static str,
    pub(crate) target: &'static str,
    pub(crate) keyspace: String,
    pub(crate) name: Option<String>,
}

/// A server-pushed event.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    Schema(SchemaChange),
    Status { up: bool, addr: SocketAddr },
}

impl Event {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Event::Schema(_) => "SCHEMA_CHANGE",
            Event::Status { .. } => "STATUS_CHANGE",
        }
    }
}

/// Per-statement counters.
#[derive(Debug, Default)]
pub(crate) struct StatementStats {
    pub(crate) executions: AtomicU64,
    pub(crate) applied: AtomicU64,
}

const SHARDS: usize = 16;

/// How often the server executed each statement and applied each write.
#[derive(Debug)]
pub(crate) struct Counters {
    statements: RwLock<HashMap<Arc<str>, Arc<StatementStats>>>,
    writes: [Mutex<HashMap<u64, u32>>; SHARDS],
    pub(crate) duplicate_writes: AtomicU64,
    pub(crate) writes_applied: AtomicU64,
    pub(crate) executions: AtomicU64,
    pub(crate) track_writes: AtomicBool,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            statements: RwLock::default(),
            writes: std::array::from_fn(|_| Mutex::default()),
            duplicate_writes: AtomicU64::new(0),
            writes_applied: AtomicU64::new(0),
            executions: AtomicU64::new(0),
            track_writes: AtomicBool::new(true),
        }
    }
}

impl Counters {
    /// The stats of a statement text, created on first use.
    pub(crate) fn statement(&self, text: &str) -> Arc<StatementStats> {
        if let Some(s) = self.statements.read().expect("counters lock").get(text) {
            return s.clone();
        }
        self.statements
            .write()
            .expect("counters lock")
            .entry(Arc::from(text))
            .or_default()
            .clone()
    }

    pub(crate) fn get(&self, text: &str) -> Option<Arc<StatementStats>> {
        self.statements
            .read()
            .expect("counters lock")
            .get(text)
            .cloned()
    }

    /// Records that a write (statement text + bound values) was applied.
    pub(crate) fn record_write(
        &self,
        stats: &StatementStats,
        text: &str,
        values: &[crate::frame::Value<'_>],
    ) {
        stats.applied.fetch_add(1, Ordering::Relaxed);
        self.writes_applied.fetch_add(1, Ordering::Relaxed);
        if !self.track_writes.load(Ordering::Relaxed) {
            return;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        for v in values {
            match v {
                crate::frame::Value::Bytes(b) => {
                    1u8.hash(&mut h);
                    b.hash(&mut h);
                }
                crate::frame::Value::Null => 2u8.hash(&mut h),
                crate::frame::Value::Unset => 3u8.hash(&mut h),
            }
        }
        let fp = h.finish();
        let mut shard = self.writes[(fp as usize) % SHARDS]
            .lock()
            .expect("counters lock");
        let n = shard.entry(fp).or_insert(0);
        *n += 1;
        if *n == 2 {
            self.duplicate_writes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Zeroes every counter. The per-statement entries stay (zeroed):
    /// prepared statements hold theirs from PREPARE on.
    pub(crate) fn reset(&self) {
        for s in self.statements.read().expect("counters lock").values() {
            s.executions.store(0, Ordering::Relaxed);
            s.applied.store(0, Ordering::Relaxed);
        }
        for s in &self.writes {
            s.lock().expect("counters lock").clear();
        }
        self.duplicate_writes.store(0, Ordering::Relaxed);
        self.writes_applied.store(0, Ordering::Relaxed);
        self.executions.store(0, Ordering::Relaxed);
    }
}

/// Everything the nodes of one cluster share.
#[derive(Debug)]
pub(crate) struct Database {
    pub(crate) schema: ArcSwap<Schema>,
    pub(crate) ddl: Mutex<()>,
    pub(crate) topology: Topology,
    pub(crate) counters: Counters,
    pub(crate) faults: Faults,
    pub(crate) events: broadcast::Sender<(usize, Event)>,
    /// The trace sessions `system_traces` holds.
    pub(crate) traces: crate::trace::Traces,
}

impl Database {
    pub(crate) fn new(topology: Topology) -> Database {
        Database {
            schema: ArcSwap::from_pointee(Schema::initial()),
            ddl: Mutex::new(()),
            topology,
            counters: Counters::default(),
            faults: Faults::default(),
            events: broadcast::channel(1024).0,
            traces: crate::trace::Traces::default(),
        }
    }

    /// Publishes an event from node `origin` (usize::MAX: from the cluster).
    pub(crate) fn publish(&self, origin: usize, event: Event) {
        // No receivers is fine: nobody registered.
        let _ = self.events.send((origin, event));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_keeps_the_counters_prepared_statements_hold() {
        let counters = Counters::default();
        // a prepared statement takes its stats once, at PREPARE
        let held = counters.statement("UPDATE ks.t SET n = n + 1 WHERE k = ?");
        held.executions.fetch_add(3, Ordering::Relaxed);
        counters.reset();
        held.executions.fetch_add(1, Ordering::Relaxed);
        let seen = counters
            .get("UPDATE ks.t SET n = n + 1 WHERE k = ?")
            .map(|s| s.executions.load(Ordering::Relaxed));
        assert_eq!(seen, Some(1));
    }
}
