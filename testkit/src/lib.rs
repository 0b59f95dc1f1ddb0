//! An in-process CQL server for tests: native protocol v4 over real TCP, an
//! in-memory store that is a small real database, several nodes on
//! `127.0.0.x`, and faults you control while traffic flows.
//!
//! Any CQL driver connects to it as to a real cluster: it answers the
//! system tables drivers read (`system.local`, `system.peers`,
//! `system_schema.*`, built from the live topology and schema), hands out
//! tokens so token-aware routing works, pages with `paging_state`, pushes
//! schema and status events, and speaks LZ4 and Snappy.
//!
//! ```no_run
//! use tower_cql_testkit::{Cluster, Fault, InjectedError};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Three nodes on 127.0.0.1-3, one port chosen by the OS.
//! let cluster = Cluster::builder().nodes(3).start().await?;
//! let session = scylla::client::session_builder::SessionBuilder::new()
//!     .known_nodes_addr(cluster.contact_points())
//!     .build()
//!     .await?;
//! session
//!     .query_unpaged(
//!         "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 3}",
//!         &[],
//!     )
//!     .await?;
//!
//! // Every fifth read of ks.users is answered with Overloaded.
//! let id = cluster.faults().add(
//!     Fault::error(InjectedError::Overloaded).table("ks", "users").reads().probability(0.2),
//! );
//! // ... run the code under test ...
//! println!("overloaded answered {} times", cluster.faults().fired(id));
//!
//! // Prove that no write was applied twice.
//! assert_eq!(cluster.counters().duplicate_writes(), 0);
//!
//! // Take node 1 (the second, on 127.0.0.2) down and bring it back.
//! cluster.stop_node(1).await;
//! cluster.start_node(1).await?;
//! cluster.stop().await;
//! # Ok(())
//! # }
//! ```
//!
//! The standalone binary `cql-testkit --listen 127.0.0.1:9042 --nodes 3`
//! runs the same server until interrupted.
//!
//! # Node numbering
//! Nodes are numbered from 0, everywhere in this crate: node `i` listens on
//! the `i`-th address counting up from [`ClusterBuilder::first_ip`], so in
//! a default three-node cluster node 0 is `127.0.0.1` and node 2 is
//! `127.0.0.3`. Every API that names a node takes or gives that index:
//! [`Cluster::node_addr`], [`Cluster::contact_points`] (in index order),
//! [`Cluster::is_running`], [`Cluster::stop_node`], [`Cluster::start_node`],
//! [`Cluster::restart_node`], [`Fault::node`] and
//! [`ExecutionCounters::node_executions`]. So `stop_node(i)` stops the node
//! at `node_addr(i)`, and `Fault::node(i)` hits the requests that node
//! serves, which `node_executions(i)` counts.
//!
//! # Tracing
//! A request whose frame sets the tracing flag (0x02; the scylla driver's
//! `Statement::set_tracing(true)`, the Python driver's `trace=True`) is
//! traced as Cassandra 4.x traces it: its response (result or error)
//! carries the flag and the trace session id, and the request leaves one
//! row in `system_traces.sessions` and its events in
//! `system_traces.events`, with Cassandra 4.x's columns:
//!
//! - `sessions (session_id uuid PRIMARY KEY, client inet, command text,
//!   coordinator inet, coordinator_port int, duration int, parameters
//!   map<text,text>, request text, started_at timestamp)`
//! - `events (session_id uuid, event_id timeuuid, activity text, source
//!   inet, source_elapsed int, source_port int, thread text, PRIMARY KEY
//!   (session_id, event_id))`
//!
//! So `SELECT * FROM system_traces.sessions WHERE session_id = ?`, the
//! scylla driver's `Session::get_tracing_info` and the Python driver's
//! `ResultSet.get_query_trace()` work. The session row and its events are
//! written before the response is sent, `duration` (µs) last, or, with
//! [`ClusterBuilder::trace_write_delay`], that long after it, as a server
//! that writes its traces in the background does.
//!
//! Events name the node that took each step (`source`, the node's address:
//! node `i` is [`Cluster::node_addr`]`(i)`, `127.0.0.{i+1}` by default)
//! and `source_elapsed`, the microseconds since that node began its part:
//! the coordinator (the node the driver sent the request to) from the
//! request's arrival, a replica from the message it received. testkit has
//! one shared store and no replication, so the replica steps are the ones
//! Cassandra takes: for a read, as many of the partition's replicas as the
//! consistency level needs, the coordinator first when it is one
//! ("Sending READ_REQ message to /127.0.0.2:7000", "READ_REQ message
//! received from /127.0.0.1:7000", "Executing single-partition query on
//! kv", "Read 1 live rows and 0 tombstone cells", "Enqueuing response to
//! /127.0.0.1:7000", "Processing response from /127.0.0.2:7000"); for a
//! write, every live replica ("Sending MUTATION_REQ message ...",
//! "Appending to commitlog", "Adding to kv memtable"); then "Request
//! complete". For a QUERY or PREPARE the coordinator starts with
//! "Parsing" followed by the statement text, then "Preparing statement". A statement's partition
//! is known from its bound values; with a literal key the coordinator is
//! taken as its first replica. Port 7000 is Cassandra's storage port, shown
//! as Cassandra shows it. The time a [`Fault::delay`] holds a request is
//! spent on the node it targets (the node serving the request, see
//! [`Fault::node`]): that node's events after it count it in
//! `source_elapsed`, and the session's `duration` counts it.
//!
//! No activity and no parameter ever holds a bound value (Cassandra 4
//! records EXECUTE's bound values in `parameters`; testkit does not).
//! Parameters are `consistency_level`, `page_size`, `query` (the statement
//! text), `serial_consistency_level` and `user_timestamp`, when set.
//!
//! Traces are bounded: the cluster keeps the last 1,000 sessions
//! ([`ClusterBuilder::trace_sessions`] changes it) and drops the oldest
//! with its events. [`Cluster::trace_session_ids`] lists the sessions
//! kept.
//!
//! # Many requests at once
//! Every request is answered, however many are in flight on a connection
//! (all 32,767 stream ids pipelined, frames cut anywhere). The stress
//! tests count answers: `tests/stress.rs` (scylla driver, uncompressed,
//! LZ4, Snappy) and `tests/python/stress.py` (DataStax Python driver, run
//! from `tests/other_drivers.rs`), sized by `TESTKIT_STRESS_REQUESTS`
//! (and `TESTKIT_STRESS_ROUNDS` for the Python one).
//!
//! # What the store supports
//! CREATE/DROP/ALTER KEYSPACE and TABLE, CREATE/DROP INDEX, TRUNCATE, USE;
//! INSERT (`IF NOT EXISTS`), UPDATE (counters, collection `+`/`-`,
//! element assignment, `IF` conditions), DELETE (rows, ranges, columns,
//! elements); SELECT by partition key with clustering equality and ranges,
//! full scans in token order, `IN`, `ORDER BY`, `LIMIT`, `PER PARTITION
//! LIMIT`, `DISTINCT`, `COUNT(*)`, `WRITETIME`, `token()`, native
//! functions (`now()`, `toTimestamp(...)`, ...) and `CAST`, `ALLOW
//! FILTERING`; logged, unlogged, counter and single-partition conditional
//! batches. Types: ascii, bigint, blob, boolean, counter, date, decimal,
//! double, float, inet, int, smallint, text/varchar, time, timestamp,
//! timeuuid, tinyint, uuid, varint, tuples, and list/set/map of them.
//! Consistency is checked against the replicas that are up (a stopped node
//! makes `ALL` unavailable).
//!
//! Not supported (each answered with a clear error): user-defined types
//! and functions, aggregates other than `COUNT(*)`, materialized views,
//! non-zero TTLs, JSON, `GROUP BY` and authentication. The crate's
//! `README.md` has the full table: what is supported, and what is
//! answered differently from Cassandra, and why.

#![cfg_attr(docsrs, feature(doc_cfg))]

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod compression;
pub mod cql;
mod db;
mod error;
mod exec;
mod fault;
mod frame;
mod functions;
mod murmur3;
#[cfg(feature = "otlp-receiver")]
pub mod otlp;
mod schema;
mod server;
mod system;
mod trace;
#[cfg(feature = "tracing-setup")]
pub mod tracing_setup;
mod types;

pub use error::{Consistency, WriteType};
pub use fault::{Fault, FaultAction, FaultId, InjectedError, StatementKind};
pub use frame::Opcode;
pub use murmur3::token;
#[doc(hidden)]
pub use server::fuzzing;

/// TEST-ONLY certificates (feature `tls`), valid for 100 years: a CA, a
/// node certificate for 127.0.0.1–127.0.0.4 and `localhost`, and a client
/// certificate for mutual TLS, all PEM. `certs/gen.sh` makes new ones.
#[cfg(feature = "tls")]
pub mod certs {
    /// The CA that signed both certificates.
    pub const CA_PEM: &[u8] = include_bytes!("../certs/ca.pem");
    /// The nodes' certificate.
    pub const NODE_PEM: &[u8] = include_bytes!("../certs/node.pem");
    /// The nodes' private key (PKCS#8).
    pub const NODE_KEY: &[u8] = include_bytes!("../certs/node.key");
    /// A client certificate, for mutual TLS.
    pub const CLIENT_PEM: &[u8] = include_bytes!("../certs/client.pem");
    /// The client certificate's private key (PKCS#8).
    pub const CLIENT_KEY: &[u8] = include_bytes!("../certs/client.key");
}

use db::{Database, Topology};
use server::Node;

/// Configures and starts a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    nodes: usize,
    port: u16,
    first_ip: Ipv4Addr,
    cluster_name: String,
    data_center: String,
    vnodes: usize,
    track_writes: bool,
    max_frame_bytes: usize,
    trace_sessions: usize,
    trace_write_delay: Duration,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ClusterBuilder {
    fn default() -> ClusterBuilder {
        ClusterBuilder {
            nodes: 1,
            port: 0,
            first_ip: Ipv4Addr::new(127, 0, 0, 1),
            cluster_name: "testkit".into(),
            data_center: "datacenter1".into(),
            vnodes: 8,
            track_writes: true,
            max_frame_bytes: 256 * 1024 * 1024,
            trace_sessions: trace::DEFAULT_KEPT_SESSIONS,
            trace_write_delay: Duration::ZERO,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl ClusterBuilder {
    /// Number of nodes (default 1). Node `i` (0-based, see
    /// [node numbering](crate#node-numbering)) listens on the `i`-th address
    /// counting up from [`ClusterBuilder::first_ip`], all on one port.
    pub fn nodes(mut self, n: usize) -> ClusterBuilder {
        self.nodes = n;
        self
    }

    /// The port every node listens on; 0 (the default) lets the OS choose
    /// one that is free on every node's address.
    pub fn port(mut self, port: u16) -> ClusterBuilder {
        self.port = port;
        self
    }

    /// Node 0's address (default `127.0.0.1`). Keep it on loopback.
    pub fn first_ip(mut self, ip: Ipv4Addr) -> ClusterBuilder {
        self.first_ip = ip;
        self
    }

    /// The name `system.local` reports.
    pub fn cluster_name(mut self, name: impl Into<String>) -> ClusterBuilder {
        self.cluster_name = name.into();
        self
    }

    /// The data center every node reports (default `datacenter1`).
    pub fn data_center(mut self, dc: impl Into<String>) -> ClusterBuilder {
        self.data_center = dc.into();
        self
    }

    /// Tokens per node (default 8).
    pub fn vnodes(mut self, n: usize) -> ClusterBuilder {
        self.vnodes = n.max(1);
        self
    }

    /// Whether to fingerprint every applied write to detect duplicates
    /// (default on; costs a hash-map entry per distinct write).
    pub fn track_writes(mut self, on: bool) -> ClusterBuilder {
        self.track_writes = on;
        self
    }

    /// How many trace sessions `system_traces` keeps (default 1,000, at
    /// least 1); past that, the oldest session and its events are dropped
    /// as each new one is written. See [tracing](crate#tracing).
    pub fn trace_sessions(mut self, n: usize) -> ClusterBuilder {
        self.trace_sessions = n.max(1);
        self
    }

    /// How long after a traced request is answered its trace is written
    /// (default 0: before the answer). A server writes traces in the
    /// background: Scylla flushes them every 2 s (its tracing
    /// `write_period`), Cassandra on its tracing stage; a reader that
    /// looks too soon finds no session row, or one without `duration`.
    /// See [tracing](crate#tracing).
    pub fn trace_write_delay(mut self, delay: Duration) -> ClusterBuilder {
        self.trace_write_delay = delay;
        self
    }

    /// The largest request frame body a node accepts (default and most:
    /// the protocol's 256 MiB), like Cassandra's
    /// `native_transport_max_frame_size`. A larger request is answered
    /// with a protocol error on its stream ("Request is too big") and
    /// skipped; the connection stays open.
    pub fn max_frame_bytes(mut self, bytes: usize) -> ClusterBuilder {
        self.max_frame_bytes = bytes;
        self
    }

    /// Serves TLS only (feature `tls`): every node presents
    /// `cert_chain_pem` with `key_pem` (PKCS#8, SEC1 or PKCS#1), and with
    /// `client_ca_pem` it also requires a client certificate signed by
    /// that CA (mutual TLS). [`certs`] has a test CA and certificates for
    /// 127.0.0.1–4.
    #[cfg(feature = "tls")]
    pub fn tls(
        mut self,
        cert_chain_pem: &[u8],
        key_pem: &[u8],
        client_ca_pem: Option<&[u8]>,
    ) -> io::Result<ClusterBuilder> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let invalid = |what: &str, e: &dyn std::fmt::Display| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("testkit TLS: {what}: {e}"),
            )
        };
        let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("the certificate chain is not PEM", &e))?;
        if chain.is_empty() {
            return Err(invalid("no certificate in the chain", &"empty"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| invalid("the private key is not PEM", &e))?;
        let builder = rustls::ServerConfig::builder();
        let builder = match client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    let cert = cert.map_err(|e| invalid("the client CA is not PEM", &e))?;
                    roots
                        .add(cert)
                        .map_err(|e| invalid("the client CA was refused", &e))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .map_err(|e| invalid("the client CA cannot verify", &e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| invalid("the certificate and key do not fit", &e))?;
        self.tls = Some(Arc::new(config));
        Ok(self)
    }

    /// Binds every node and starts serving. Must be called inside a Tokio
    /// runtime.
    pub async fn start(self) -> io::Result<Cluster> {
        if self.nodes == 0 || self.nodes > 250 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a cluster needs 1 to 250 nodes, not {}", self.nodes),
            ));
        }
        let ips: Vec<IpAddr> = (0..self.nodes)
            .map(|i| {
                let [a, b, c, d] = self.first_ip.octets();
                IpAddr::V4(Ipv4Addr::new(a, b, c, d.wrapping_add(i as u8)))
            })
            .collect();
        // Find a port free on every address (retry when the OS's choice for
        // the first address is taken on another).
        let mut attempt = 0;
        let listeners = loop {
            attempt += 1;
            match bind_all(&ips, self.port).await {
                Ok(l) => break l,
                Err(e)
                    if self.port == 0 && attempt < 20 && e.kind() == io::ErrorKind::AddrInUse =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
        };
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<io::Result<_>>()?;
        let topology = Topology::new(&self.cluster_name, &addrs, self.vnodes, &self.data_center);
        let db = Arc::new(Database::new(topology));
        db.counters
            .track_writes
            .store(self.track_writes, Ordering::Relaxed);
        db.traces
            .capacity
            .store(self.trace_sessions, Ordering::Relaxed);
        db.traces.set_write_delay(self.trace_write_delay);
        let nodes: Vec<NodeSlot> = listeners
            .into_iter()
            .enumerate()
            .map(|(i, listener)| {
                #[allow(unused_mut)]
                let mut node = Node::new(i, db.clone(), self.max_frame_bytes);
                #[cfg(feature = "tls")]
                {
                    node.tls = self.tls.clone();
                }
                let node = Arc::new(node);
                let running = spawn_node(listener, node.clone());
                db.topology.nodes[i].running.store(true, Ordering::SeqCst);
                NodeSlot {
                    node,
                    running: Mutex::new(Some(running)),
                }
            })
            .collect();
        Ok(Cluster {
            inner: Arc::new(Inner { db, nodes }),
        })
    }
}

async fn bind_all(ips: &[IpAddr], port: u16) -> io::Result<Vec<TcpListener>> {
    let first = TcpListener::bind((ips[0], port)).await.map_err(|e| {
        io::Error::new(e.kind(), format!("cannot listen on {}:{port}: {e}", ips[0]))
    })?;
    let port = first.local_addr()?.port();
    let mut out = vec![first];
    for ip in &ips[1..] {
        out.push(
            TcpListener::bind((*ip, port)).await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {ip}:{port}: {e}"))
            })?,
        );
    }
    Ok(out)
}

#[derive(Debug)]
struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

fn spawn_node(listener: TcpListener, node: Arc<Node>) -> Running {
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(server::accept_loop(listener, node, stop_rx));
    Running { stop, task }
}

#[derive(Debug)]
struct NodeSlot {
    node: Arc<Node>,
    running: Mutex<Option<Running>>,
}

#[derive(Debug)]
struct Inner {
    db: Arc<Database>,
    nodes: Vec<NodeSlot>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for slot in &self.nodes {
            if let Some(r) = slot.running.lock().expect("node lock").take() {
                let _ = r.stop.send(true);
                r.task.abort();
            }
        }
    }
}

/// A running in-process cluster. Cloning gives another handle to the same
/// cluster; it stops when the last handle is dropped or [`Cluster::stop`]
/// is called.
#[derive(Debug, Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl Cluster {
    /// A builder for a one-node cluster on `127.0.0.1` and an OS-chosen port.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Starts a one-node cluster with defaults.
    pub async fn start() -> io::Result<Cluster> {
        ClusterBuilder::default().start().await
    }

    /// Every node's address, for a driver's known nodes, in node order:
    /// element `i` is [`Cluster::node_addr`]`(i)`.
    pub fn contact_points(&self) -> Vec<SocketAddr> {
        self.inner.nodes.iter().map(|n| n.node.address()).collect()
    }

    /// Node 0's address as `host:port`.
    pub fn uri(&self) -> String {
        self.inner.nodes[0].node.address().to_string()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.inner.nodes.len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.inner.nodes.is_empty()
    }

    /// Node `index`'s address (0-based, see
    /// [node numbering](crate#node-numbering)).
    ///
    /// # Panics
    /// When `index` is not a node of this cluster.
    pub fn node_addr(&self, index: usize) -> SocketAddr {
        self.inner.nodes[index].node.address()
    }

    /// Whether node `index` (0-based) is serving.
    ///
    /// # Panics
    /// When `index` is not a node of this cluster.
    pub fn is_running(&self, index: usize) -> bool {
        self.inner.db.topology.nodes[index]
            .running
            .load(Ordering::SeqCst)
    }

    /// Stops node `index` (0-based: the node at
    /// [`Cluster::node_addr`]`(index)`): closes its listener and every
    /// connection to it, and tells the other nodes' event listeners it is
    /// DOWN. Its replicas count as dead for consistency checks until it is
    /// started again.
    ///
    /// # Panics
    /// When `index` is not a node of this cluster.
    pub async fn stop_node(&self, index: usize) {
        let running = self.inner.nodes[index]
            .running
            .lock()
            .expect("node lock")
            .take();
        if let Some(r) = running {
            server::set_running(&self.inner.db, index, false);
            let _ = r.stop.send(true);
            let _ = r.task.await;
        }
    }

    /// Starts stopped node `index` (0-based) again on its address; it has
    /// forgotten its prepared statements, like a restarted server.
    ///
    /// # Panics
    /// When `index` is not a node of this cluster.
    pub async fn start_node(&self, index: usize) -> io::Result<()> {
        let slot = &self.inner.nodes[index];
        if slot.running.lock().expect("node lock").is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(slot.node.address()).await?;
        slot.node.clear_prepared();
        let running = spawn_node(listener, slot.node.clone());
        *slot.running.lock().expect("node lock") = Some(running);
        server::set_running(&self.inner.db, index, true);
        Ok(())
    }

    /// Stops and starts node `index` (0-based).
    ///
    /// # Panics
    /// When `index` is not a node of this cluster.
    pub async fn restart_node(&self, index: usize) -> io::Result<()> {
        self.stop_node(index).await;
        self.start_node(index).await
    }

    /// Stops every node and waits until all connections are closed.
    pub async fn stop(&self) {
        for i in 0..self.inner.nodes.len() {
            self.stop_node(i).await;
        }
    }

    /// Client connections open now, over every node (a driver keeps one
    /// control connection plus its pool per node). Tests use it to show
    /// that closed sessions leave no connection behind.
    pub fn open_connections(&self) -> usize {
        self.inner
            .nodes
            .iter()
            .map(|n| n.node.connections.load(Ordering::SeqCst))
            .sum()
    }

    /// The fault rules.
    pub fn faults(&self) -> Faults<'_> {
        Faults { cluster: self }
    }

    /// The execution counters.
    pub fn counters(&self) -> ExecutionCounters {
        ExecutionCounters {
            db: self.inner.db.clone(),
        }
    }

    /// The ids of the trace sessions `system_traces` holds, oldest first,
    /// as `u128`s (`uuid::Uuid::from_u128`): one per traced request, the
    /// id its response carried. See [tracing](crate#tracing).
    pub fn trace_session_ids(&self) -> Vec<u128> {
        self.inner
            .db
            .traces
            .ids()
            .into_iter()
            .map(u128::from_be_bytes)
            .collect()
    }
}

/// Adds, removes and counts fault rules; changes apply to the next request.
#[derive(Debug, Clone, Copy)]
pub struct Faults<'a> {
    cluster: &'a Cluster,
}

impl Faults<'_> {
    /// Installs a rule; rules are matched in the order they were added.
    pub fn add(&self, fault: Fault) -> FaultId {
        self.cluster.inner.db.faults.add(fault)
    }

    /// Removes a rule; false if it was not installed.
    pub fn remove(&self, id: FaultId) -> bool {
        self.cluster.inner.db.faults.remove(id)
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.cluster.inner.db.faults.clear()
    }

    /// How many times rule `id` fired (0 once removed).
    pub fn fired(&self, id: FaultId) -> u64 {
        self.cluster.inner.db.faults.fired(id)
    }
}

/// How often the server executed statements and applied writes: the
/// evidence a test needs to prove a write was never applied twice.
#[derive(Debug, Clone)]
pub struct ExecutionCounters {
    db: Arc<Database>,
}

impl ExecutionCounters {
    /// How many times the statement with exactly this text was executed
    /// (as a QUERY, an EXECUTE of its prepared form, or in a BATCH),
    /// including executions answered with an injected error after applying.
    pub fn executions(&self, statement: &str) -> u64 {
        self.db
            .counters
            .get(statement)
            .map_or(0, |s| s.executions.load(Ordering::Relaxed))
    }

    /// How many times a write statement with this text was applied.
    pub fn applied(&self, statement: &str) -> u64 {
        self.db
            .counters
            .get(statement)
            .map_or(0, |s| s.applied.load(Ordering::Relaxed))
    }

    /// Every statement executed, on every node.
    pub fn total_executions(&self) -> u64 {
        self.db.counters.executions.load(Ordering::Relaxed)
    }

    /// Statements executed by node `index` (0-based, see
    /// [node numbering](crate#node-numbering)): the node at
    /// [`Cluster::node_addr`]`(index)`. A BATCH counts once.
    ///
    /// # Panics
    /// When `index` is not a node of this cluster.
    pub fn node_executions(&self, index: usize) -> u64 {
        self.db.topology.nodes[index]
            .executions
            .load(Ordering::Relaxed)
    }

    /// Writes applied, in all.
    pub fn writes_applied(&self) -> u64 {
        self.db.counters.writes_applied.load(Ordering::Relaxed)
    }

    /// Distinct writes (same statement text and same bound values) the
    /// server applied more than once. A correct client never makes this
    /// non-zero by retrying a non-idempotent write.
    pub fn duplicate_writes(&self) -> u64 {
        self.db.counters.duplicate_writes.load(Ordering::Relaxed)
    }

    /// Sets every counter back to zero.
    pub fn reset(&self) {
        self.db.counters.reset();
        for n in &self.db.topology.nodes {
            n.executions.store(0, Ordering::Relaxed);
        }
    }
}
