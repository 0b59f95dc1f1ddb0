//! Request tracing like Cassandra 4.x: a request whose frame carries the
//! tracing flag (0x02) is answered with the flag and its trace session id,
//! and leaves a row in `system_traces.sessions` and its events in
//! `system_traces.events`.
//!
//! testkit has one shared store, so there is no real replication to
//! trace; the replica steps are those Cassandra would take for the
//! statement (the partition's replicas on the ring, as many as the
//! consistency level asks for reads, every live one for writes), each
//! stamped with the real time it was recorded at on the node it names.
//! Time spent in an injected delay fault is spent on the node the fault
//! targets (the one serving the request), so that node's events after it
//! carry it in `source_elapsed`.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::db::Database;
use crate::fault::StatementKind;
use crate::schema::{ColumnKind as K, Keyspace, PartitionKey, Table};

/// The storage port Cassandra's nodes talk to each other on, shown in
/// trace activities ("Sending READ_REQ message to /127.0.0.2:7000") and in
/// `sessions.coordinator_port` / `events.source_port`.
pub(crate) const STORAGE_PORT: u16 = 7000;

/// How many trace sessions the cluster keeps by default.
pub(crate) const DEFAULT_KEPT_SESSIONS: usize = 1000;

/// The `system_traces` keyspace, with Cassandra 4.x's tables.
pub(crate) fn keyspace() -> Keyspace {
    let stored = |name: &str, cols: &[(&str, &str, K)]| {
        let mut t = Table::system(
            "system_traces",
            name,
            crate::schema::VirtualTable::SchemaEmpty,
            cols,
        );
        // rows are stored like a user table's; the server writes them
        t.virtual_table = None;
        (name.to_string(), std::sync::Arc::new(t))
    };
    Keyspace {
        name: "system_traces".into(),
        replication: vec![
            (
                "class".into(),
                "org.apache.cassandra.locator.SimpleStrategy".into(),
            ),
            ("replication_factor".into(), "2".into()),
        ],
        durable_writes: true,
        replication_factor: 2,
        tables: [
            stored(
                "sessions",
                &[
                    ("session_id", "uuid", K::PartitionKey),
                    ("client", "inet", K::Regular),
                    ("command", "text", K::Regular),
                    ("coordinator", "inet", K::Regular),
                    ("coordinator_port", "int", K::Regular),
                    ("duration", "int", K::Regular),
                    ("parameters", "map<text,text>", K::Regular),
                    ("request", "text", K::Regular),
                    ("started_at", "timestamp", K::Regular),
                ],
            ),
            stored(
                "events",
                &[
                    ("session_id", "uuid", K::PartitionKey),
                    ("event_id", "timeuuid", K::Clustering),
                    ("activity", "text", K::Regular),
                    ("source", "inet", K::Regular),
                    ("source_elapsed", "int", K::Regular),
                    ("source_port", "int", K::Regular),
                    ("thread", "text", K::Regular),
                ],
            ),
        ]
        .into_iter()
        .collect(),
        is_system: true,
    }
}

/// The trace sessions kept, oldest first, how many to keep, and how long
/// after its request's answer a trace is written.
#[derive(Debug)]
pub(crate) struct Traces {
    kept: Mutex<VecDeque<[u8; 16]>>,
    pub(crate) capacity: AtomicUsize,
    /// Nanoseconds; 0: written before the answer.
    write_delay_ns: AtomicU64,
}

impl Default for Traces {
    fn default() -> Traces {
        Traces {
            kept: Mutex::new(VecDeque::new()),
            capacity: AtomicUsize::new(DEFAULT_KEPT_SESSIONS),
            write_delay_ns: AtomicU64::new(0),
        }
    }
}

impl Traces {
    /// Traces are written `delay` after their request's answer.
    pub(crate) fn set_write_delay(&self, delay: Duration) {
        let ns = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.write_delay_ns.store(ns, Ordering::Relaxed);
    }

    /// The ids of the sessions kept, oldest first.
    pub(crate) fn ids(&self) -> Vec<[u8; 16]> {
        self.kept
            .lock()
            .expect("traces lock")
            .iter()
            .copied()
            .collect()
    }
}

/// One event of a trace being recorded.
#[derive(Debug, Clone)]
struct TraceEvent {
    /// Its time, in 100 ns intervals since 1582-10-15 (the timeuuid clock).
    ts: u64,
    activity: String,
    source: usize,
    elapsed_us: i32,
    thread: &'static str,
}

/// A trace session being recorded for one request.
#[derive(Debug, Clone)]
pub(crate) struct Trace {
    pub(crate) id: [u8; 16],
    started: Instant,
    /// The timeuuid clock at `started`.
    start_ts: u64,
    started_at_ms: i64,
    coordinator: usize,
    client: IpAddr,
    request: &'static str,
    parameters: Vec<(String, String)>,
    events: Vec<TraceEvent>,
    /// When each node other than the coordinator began its part.
    node_starts: Vec<(usize, Instant)>,
}

/// 100 ns intervals between 1582-10-15 and 1970-01-01.
const UUID_EPOCH_OFFSET: u64 = 0x01B2_1DD2_1381_4000;

/// A version-1 UUID at `ts` (timeuuid clock) with random node bits.
fn timeuuid_at(ts: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&(ts as u32).to_be_bytes());
    b[4..6].copy_from_slice(&((ts >> 32) as u16).to_be_bytes());
    b[6..8].copy_from_slice(&((((ts >> 48) as u16) & 0x0FFF) | 0x1000).to_be_bytes());
    b[8..16].copy_from_slice(&fastrand::u64(..).to_be_bytes());
    b[8] = (b[8] & 0x3F) | 0x80;
    b
}

/// The name Cassandra gives a consistency level code.
pub(crate) fn consistency_name(code: u16) -> String {
    let names = [
        "ANY",
        "ONE",
        "TWO",
        "THREE",
        "QUORUM",
        "ALL",
        "LOCAL_QUORUM",
        "EACH_QUORUM",
        "SERIAL",
        "LOCAL_SERIAL",
        "LOCAL_ONE",
    ];
    names
        .get(usize::from(code))
        .map_or_else(|| code.to_string(), |s| (*s).to_string())
}

/// What the coordinator knows of a statement when it traces its steps.
#[derive(Debug, Clone, Default)]
pub(crate) struct Step<'a> {
    pub(crate) kind: Option<StatementKind>,
    pub(crate) keyspace: Option<&'a str>,
    pub(crate) table: Option<&'a str>,
    /// The partition's token, when known.
    pub(crate) token: Option<i64>,
    /// The statement names one partition (a write, or a read with the
    /// whole partition key): without its token, the coordinator is taken
    /// for its first replica.
    pub(crate) single_partition: bool,
    pub(crate) consistency: u16,
    /// Rows read, for a read.
    pub(crate) rows: Option<i32>,
}

impl Trace {
    /// Starts a session on `coordinator` for a request from `client`.
    /// `request` is Cassandra's `sessions.request` text.
    pub(crate) fn new(coordinator: usize, client: IpAddr, request: &'static str) -> Trace {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let start_ts = (now.as_nanos() / 100) as u64 + UUID_EPOCH_OFFSET;
        Trace {
            id: timeuuid_at(start_ts),
            started: Instant::now(),
            start_ts,
            started_at_ms: now.as_millis() as i64,
            coordinator,
            client,
            request,
            parameters: Vec::new(),
            events: Vec::new(),
            node_starts: Vec::new(),
        }
    }

    /// Adds a `sessions.parameters` entry.
    pub(crate) fn parameter(&mut self, key: &str, value: impl Into<String>) {
        self.parameters.push((key.to_string(), value.into()));
    }

    /// Records an event on `source`, now.
    pub(crate) fn event(&mut self, source: usize, thread: &'static str, activity: String) {
        let now = Instant::now();
        let since_start = now.duration_since(self.started);
        let node_start = if source == self.coordinator {
            self.started
        } else if let Some((_, t)) = self.node_starts.iter().find(|(n, _)| *n == source) {
            *t
        } else {
            self.node_starts.push((source, now));
            now
        };
        let mut ts = self.start_ts + (since_start.as_nanos() / 100) as u64;
        // event ids sort by time: keep them strictly increasing
        if let Some(last) = self.events.last() {
            ts = ts.max(last.ts + 1);
        }
        self.events.push(TraceEvent {
            ts,
            activity,
            source,
            elapsed_us: micros(now.duration_since(node_start)),
            thread,
        });
    }

    /// Records the coordinator's first steps: parsing (for a text) and
    /// preparing the statement.
    pub(crate) fn parsing(&mut self, text: Option<&str>) {
        let c = self.coordinator;
        if let Some(text) = text {
            self.event(c, COORDINATOR, format!("Parsing {text}"));
        }
        self.event(c, COORDINATOR, "Preparing statement".into());
    }

    /// Records the replica steps Cassandra takes for `step`.
    pub(crate) fn execution(&mut self, db: &Database, step: &Step<'_>) {
        let c = self.coordinator;
        let topo = &db.topology;
        let (Some(kind), Some(table)) = (step.kind, step.table) else {
            return;
        };
        let rf = step
            .keyspace
            .and_then(|ks| {
                db.schema
                    .load()
                    .keyspaces
                    .get(ks)
                    .map(|k| k.replication_factor)
            })
            .unwrap_or(1)
            .clamp(1, topo.nodes.len());
        let alive = |i: &usize| topo.nodes[*i].running.load(Ordering::Relaxed) || *i == c;
        // the partition's replicas in ring order; without a partition,
        // the coordinator and the nodes after it
        let mut replicas: Vec<usize> = match step.token {
            Some(token) => {
                let start = topo.ring.partition_point(|(t, _)| *t < token);
                let mut seen = Vec::with_capacity(rf);
                for k in 0..topo.ring.len() {
                    if seen.len() == rf {
                        break;
                    }
                    let n = topo.ring[(start + k) % topo.ring.len()].1;
                    if !seen.contains(&n) {
                        seen.push(n);
                    }
                }
                seen
            }
            None => (0..rf).map(|k| (c + k) % topo.nodes.len()).collect(),
        };
        replicas.retain(alive);
        let ip = |n: usize| topo.nodes[n].addr.ip();
        let cip = ip(c);
        match kind {
            StatementKind::Read => {
                let rows = step.rows.unwrap_or(0);
                if !step.single_partition {
                    self.event(c, COORDINATOR, "Computing ranges to query".into());
                    self.event(
                        c,
                        COORDINATOR,
                        format!(
                            "Submitting range requests on {} ranges with a concurrency of 1",
                            topo.ring.len()
                        ),
                    );
                    self.event(
                        c,
                        READ_STAGE,
                        format!(
                            "Executing seq scan across 0 sstables for (min({}), max({})]",
                            i64::MIN,
                            i64::MAX
                        ),
                    );
                    self.event(
                        c,
                        READ_STAGE,
                        format!("Read {rows} live rows and 0 tombstone cells"),
                    );
                    return;
                }
                // the closest replicas first: the coordinator when it is one
                replicas.sort_by_key(|n| *n != c);
                let wanted = crate::error::Consistency::from_code(step.consistency)
                    .map_or(1, |cl| cl.required(rf))
                    .clamp(1, replicas.len().max(1));
                for &r in replicas.iter().take(wanted) {
                    if r == c {
                        self.replica_read(r, table, rows);
                        continue;
                    }
                    let rip = ip(r);
                    self.event(
                        c,
                        COORDINATOR,
                        format!("Sending READ_REQ message to /{rip}:{STORAGE_PORT}"),
                    );
                    self.event(
                        r,
                        MESSAGING,
                        format!("READ_REQ message received from /{cip}:{STORAGE_PORT}"),
                    );
                    self.replica_read(r, table, rows);
                    self.event(
                        r,
                        READ_STAGE,
                        format!("Enqueuing response to /{cip}:{STORAGE_PORT}"),
                    );
                    self.event(
                        r,
                        MESSAGING,
                        format!("Sending READ_RSP message to /{cip}:{STORAGE_PORT}"),
                    );
                    self.event(
                        c,
                        MESSAGING,
                        format!("READ_RSP message received from /{rip}:{STORAGE_PORT}"),
                    );
                    self.event(
                        c,
                        RESPONSE_STAGE,
                        format!("Processing response from /{rip}:{STORAGE_PORT}"),
                    );
                }
            }
            StatementKind::Write => {
                self.event(c, COORDINATOR, "Determining replicas for mutation".into());
                for &r in &replicas {
                    if r == c {
                        self.replica_write(r, table);
                        continue;
                    }
                    let rip = ip(r);
                    self.event(
                        c,
                        COORDINATOR,
                        format!("Sending MUTATION_REQ message to /{rip}:{STORAGE_PORT}"),
                    );
                    self.event(
                        r,
                        MESSAGING,
                        format!("MUTATION_REQ message received from /{cip}:{STORAGE_PORT}"),
                    );
                    self.replica_write(r, table);
                    self.event(
                        r,
                        MUTATION_STAGE,
                        format!("Enqueuing response to /{cip}:{STORAGE_PORT}"),
                    );
                    self.event(
                        r,
                        MESSAGING,
                        format!("Sending MUTATION_RSP message to /{cip}:{STORAGE_PORT}"),
                    );
                    self.event(
                        c,
                        MESSAGING,
                        format!("MUTATION_RSP message received from /{rip}:{STORAGE_PORT}"),
                    );
                    self.event(
                        c,
                        RESPONSE_STAGE,
                        format!("Processing response from /{rip}:{STORAGE_PORT}"),
                    );
                }
            }
        }
    }

    fn replica_read(&mut self, r: usize, table: &str, rows: i32) {
        self.event(
            r,
            READ_STAGE,
            format!("Executing single-partition query on {table}"),
        );
        self.event(r, READ_STAGE, "Acquiring sstable references".into());
        self.event(r, READ_STAGE, "Merging memtable contents".into());
        self.event(
            r,
            READ_STAGE,
            format!("Read {rows} live rows and 0 tombstone cells"),
        );
    }

    fn replica_write(&mut self, r: usize, table: &str) {
        self.event(r, MUTATION_STAGE, "Appending to commitlog".into());
        self.event(r, MUTATION_STAGE, format!("Adding to {table} memtable"));
    }

    /// Ends the session: "Request complete", then the rows, the session's
    /// `duration` last, now or after the cluster's trace write delay.
    /// Drops the oldest sessions past the cap.
    pub(crate) fn finish(mut self, db: &Arc<Database>) {
        let c = self.coordinator;
        self.event(c, COORDINATOR, "Request complete".into());
        let duration = micros(self.started.elapsed());
        let delay = Duration::from_nanos(db.traces.write_delay_ns.load(Ordering::Relaxed));
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if !delay.is_zero() => {
                let db = db.clone();
                drop(rt.spawn(async move {
                    tokio::time::sleep(delay).await;
                    self.write(&db, duration);
                }));
            }
            _ => self.write(db, duration),
        }
    }

    /// Writes the session's rows (`duration` last) and drops the oldest
    /// sessions past the cap.
    fn write(self, db: &Database, duration: i32) {
        let schema = db.schema.load();
        let (Ok(sessions), Ok(events)) = (
            schema.table("system_traces", "sessions"),
            schema.table("system_traces", "events"),
        ) else {
            return;
        };
        let topo = &db.topology;
        let inet = |ip: IpAddr| -> Option<Bytes> {
            Some(match ip {
                IpAddr::V4(v) => Bytes::copy_from_slice(&v.octets()),
                IpAddr::V6(v) => Bytes::copy_from_slice(&v.octets()),
            })
        };
        let int = |v: i32| Some(Bytes::copy_from_slice(&v.to_be_bytes()));
        let text = |s: &str| Some(Bytes::copy_from_slice(s.as_bytes()));
        let id = Some(Bytes::copy_from_slice(&self.id));
        let mut params = self.parameters.clone();
        params.sort();
        let params = (!params.is_empty()).then(|| {
            crate::types::encode_map(params.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
        });
        let coordinator = topo.nodes[self.coordinator].addr.ip();
        {
            let mut data = events.data.write().expect("table lock");
            for e in &self.events {
                put(
                    events,
                    &mut data,
                    &[
                        ("session_id", id.clone()),
                        ("event_id", Some(Bytes::copy_from_slice(&timeuuid_at(e.ts)))),
                        ("activity", text(&e.activity)),
                        ("source", inet(topo.nodes[e.source].addr.ip())),
                        ("source_elapsed", int(e.elapsed_us)),
                        ("source_port", int(i32::from(STORAGE_PORT))),
                        ("thread", text(e.thread)),
                    ],
                );
            }
        }
        {
            let mut data = sessions.data.write().expect("table lock");
            put(
                sessions,
                &mut data,
                &[
                    ("session_id", id),
                    ("client", inet(self.client)),
                    ("command", text("QUERY")),
                    ("coordinator", inet(coordinator)),
                    ("coordinator_port", int(i32::from(STORAGE_PORT))),
                    ("parameters", params),
                    ("request", text(self.request)),
                    (
                        "started_at",
                        Some(Bytes::copy_from_slice(&self.started_at_ms.to_be_bytes())),
                    ),
                    // written last, as Cassandra does: readers wait for it
                    ("duration", int(duration)),
                ],
            );
        }
        let dropped: Vec<[u8; 16]> = {
            let mut kept = db.traces.kept.lock().expect("traces lock");
            kept.push_back(self.id);
            let cap = db.traces.capacity.load(Ordering::Relaxed).max(1);
            let n = kept.len().saturating_sub(cap);
            kept.drain(..n).collect()
        };
        for old in dropped {
            let key = PartitionKey::from_components(&[&old]);
            for t in [sessions, events] {
                t.data.write().expect("table lock").partitions.remove(&key);
            }
        }
    }
}

pub(crate) const COORDINATOR: &str = "Native-Transport-Requests-1";
const READ_STAGE: &str = "ReadStage-1";
const MUTATION_STAGE: &str = "MutationStage-1";
const MESSAGING: &str = "Messaging-EventLoop-3-1";
const RESPONSE_STAGE: &str = "RequestResponseStage-1";

fn micros(d: Duration) -> i32 {
    i32::try_from(d.as_micros()).unwrap_or(i32::MAX)
}

/// Inserts a row given as (column name, value) pairs, written now.
fn put(t: &Table, data: &mut crate::schema::TableData, cells: &[(&str, Option<Bytes>)]) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    crate::system::put_at(t, data, cells, now);
}
