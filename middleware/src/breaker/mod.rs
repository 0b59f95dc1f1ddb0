//! A circuit breaker per target: per node, and per `keyspace.table` when no
//! node is known. A request is routed around the nodes whose breaker is
//! open, and refused only when no usable node is left.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_cql_core::{
//!     BreakerState, Collectors, CqlError, CqlRequest, CqlResponse, ErrorKind, ExecutionInfo,
//! };
//! use tower_cql_middleware::breaker::{BreakerConfig, CircuitBreakerLayer};
//! use tower_layer::Layer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = CircuitBreakerLayer::new(
//!     BreakerConfig { min_requests: 4, ..BreakerConfig::default() },
//!     Collectors::new(),
//! )?;
//! // Two nodes: 10.0.0.1 answers every request with Overloaded, 10.0.0.2
//! // serves it. A stand-in for the driver takes them in turn, skipping a
//! // node that the request's route hint excludes.
//! let bad: SocketAddr = "10.0.0.1:9042".parse()?;
//! let good: SocketAddr = "10.0.0.2:9042".parse()?;
//! let turn = Arc::new(AtomicUsize::new(0));
//! let inner = service_fn(move |req: CqlRequest| {
//!     let first = turn.fetch_add(1, Ordering::Relaxed) % 2 == 0;
//!     let excluded = req.meta().route().is_some_and(|hint| hint.excludes(bad));
//!     async move {
//!         if first && !excluded {
//!             Err(CqlError::new(ErrorKind::Overloaded, "busy").with_node(bad))
//!         } else {
//!             let info = ExecutionInfo { coordinator: Some(good), ..ExecutionInfo::default() };
//!             Ok(CqlResponse::synthetic(info))
//!         }
//!     }
//! });
//! let mut svc = layer.layer(inner);
//! let req = || CqlRequest::query("SELECT v FROM ks.users WHERE id = 1");
//! for i in 0..8 {
//!     let result = svc.ready().await?.call(req()).await;
//!     assert_eq!(result.is_ok(), i % 2 == 1);
//! }
//! // Four failures out of four: the breaker of 10.0.0.1 is open, and every
//! // request now goes to 10.0.0.2.
//! assert_eq!(layer.state("10.0.0.1:9042"), Some(BreakerState::Open));
//! for _ in 0..4 {
//!     let resp = svc.ready().await?.call(req()).await?;
//!     assert_eq!(resp.info().coordinator, Some(good));
//! }
//!
//! // With 10.0.0.1 the only node a breaker has seen, and open, nothing is
//! // left: the request is refused without being sent.
//! let alone = CircuitBreakerLayer::new(
//!     BreakerConfig { min_requests: 4, ..BreakerConfig::default() },
//!     Collectors::new(),
//! )?;
//! let mut svc = alone.layer(service_fn(move |_req: CqlRequest| async move {
//!     Err::<CqlResponse, _>(CqlError::new(ErrorKind::Overloaded, "busy").with_node(bad))
//! }));
//! for _ in 0..4 {
//!     let _ = svc.ready().await?.call(req()).await;
//! }
//! let err = svc.ready().await?.call(req()).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::CircuitOpen);
//! assert!(err.was_not_sent());
//! # Ok(()) }
//! ```
//!
//! # Targets
//! Every **attempt** is recorded against the node it went to, as it ends:
//! the breaker gives each request it admits a
//! [`RouteHint`] with itself as the
//! [`NodeObserver`], and the
//! [`DriverService`](tower_cql_core::DriverService) reports each answer
//! (the coordinator of a response, [`CqlError::node`] of an error) while
//! the per-attempt timeout layer reports a timeout against the node the
//! attempt was waiting on (the node the steering policy picked for it).
//! So a node failing behind retries that succeed elsewhere opens, and a
//! slow node's timeouts open that node, not its tables. With an inner
//! service that reports nothing, the request's final outcome goes to the
//! node that produced it, or to the statement's `keyspace.table` when no
//! node is known. Tables are keyed by the statement's own keyspace and
//! table ([`Statement::keyspace_name`](tower_cql_core::Statement::keyspace_name)),
//! never by the labels the metrics layer's cardinality guard may have
//! folded into `other`. Target names are the node's address
//! (`"10.0.0.1:9042"`) or `"keyspace.table"` (`"table"` without a
//! keyspace, `"keyspace.*"` without a table, `"*"` with neither).
//!
//! # Routing around open nodes
//! The node of a request is chosen by the driver's load-balancing policy,
//! below the breaker, so the breaker does not refuse a request because
//! some node is open: it **excludes** every node whose breaker is open
//! (or half-open with its probes in flight) on the request's
//! [`RouteHint`], and the
//! [`DriverService`](tower_cql_core::DriverService) drops those nodes from
//! the driver's plan, so the request goes to a healthy node. A request is
//! refused with [`ErrorKind::CircuitOpen`] (not sent) only when the
//! breaker of its `keyspace.table` is open, or when every node the breaker
//! has seen is open (the refusal names them; a node is seen once it has
//! answered a request through the breaker). The driver service fails it
//! the same way when nothing is left of the driver's plan once the
//! excluded nodes are dropped (for example a policy that keeps to one
//! datacenter, whose nodes are all open).
//!
//! While no node's breaker is open (the common case) admission costs one
//! atomic load beyond the table's breaker, and the hint excludes nothing.
//! A hint excludes up to eight nodes; with more open at once, the rest
//! stay in the driver's plan. The exclusions need an inner service that
//! reads route hints: the driver service does (unless built with
//! `keep_driver_retries`, which keeps the session's own policy as it is);
//! another service sends the request wherever it would. Outside the retry
//! and hedge layers (where [`StackBuilder`](crate::stack::StackBuilder)
//! puts it), the exclusions made when a request is admitted hold for all
//! its attempts; inside them, each attempt is admitted and routed on its
//! own.
//!
//! # States
//! - **closed**: requests flow; each target keeps a rolling window (ten
//!   buckets over `window`) of successes and failures. When at least
//!   `min_requests` outcomes are in the window and the share of failures
//!   is at least `failure_rate`, it opens.
//! - **open**: for `cool_down`, a node is excluded from every request's
//!   route, and a `keyspace.table` refuses its requests with
//!   [`ErrorKind::CircuitOpen`] (not sent).
//! - **half-open**: after the cool-down, up to `half_open_probes` requests
//!   at a time are probes: a node stays in a probe's route (a request
//!   takes the probe place of one node at most), and is excluded from the
//!   others. A failure re-opens it for another cool-down;
//!   `half_open_probes` successes close it (with an empty window). A probe
//!   that the driver sends to another node leaves the state as it was and
//!   frees its place for the next request. A probe of a `keyspace.table`
//!   breaker reports its outcome to the table as well as to the node that
//!   answered it.
//!
//! What counts against a node is the one classifier's answer
//! ([`NodeVerdict`], in [`tower_cql_core::classify`]): a failure says
//! something is wrong with the node (`Overloaded`, `Unavailable`,
//! `ReadTimeout`, `WriteTimeout`, `ClientTimeout`, `Connection`,
//! `ServerError`, `IsBootstrapping`); refusals made on the client are not
//! counted at all; any other answer (rows, a syntax error, ...) is a
//! success: the node answered.
//!
//! # Lock-free
//! The targets live in a [`Registry`] per kind (nodes by
//! address, tables by their labels, so that looking one up allocates
//! nothing); a target seen for the first time is added by read-copy-update.
//! Each target's state is one `AtomicU64` (state, generation, and the
//! open time or the half-open counters) changed by compare-and-swap, and
//! its window is ten `AtomicU64` buckets (bucket number and both counts
//! packed); the number of nodes not closed is one more atomic, changed
//! with the state. No lock is taken on the request path.
//!
//! # Events
//! Every state change emits [`Event::Breaker`]
//! with the target and the states; every refusal by the breaker emits
//! [`Event::Shed`] with `reason: CircuitOpen,
//! layer: "breaker"` (a request routed around an open node is not a
//! refusal). [`CircuitBreakerLayer::state`] reads a target's state.

pub mod future;
mod layer;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower_cql_core::classify::NodeVerdict;
use tower_cql_core::event::{BreakerEvent, ShedEvent};
use tower_cql_core::registry::Registry;
use tower_cql_core::routing::{NodeObserver, RouteHint};
use tower_cql_core::{
    Collectors, CqlError, CqlRequest, CqlResponse, ErrorKind, Event, Label, RequestMeta,
};
use tower_service::Service;

use crate::config::ConfigError;

pub use self::future::ResponseFuture;
pub use self::layer::CircuitBreakerLayer;
pub use tower_cql_core::BreakerState;

/// Configures a [`CircuitBreakerLayer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// The share of failures in the window that opens the breaker
    /// (`0 < r <= 1`). Default 0.5.
    pub failure_rate: f64,
    /// Outcomes needed in the window before it may open (at least 1).
    /// Default 20.
    pub min_requests: u32,
    /// The rolling window outcomes are counted over (not zero). Default 10 s.
    pub window: Duration,
    /// How long a breaker stays open (a node routed around, a table
    /// refused) before letting probes through (not zero). Default 5 s.
    pub cool_down: Duration,
    /// Probes let through at a time when half-open, and successes needed
    /// to close (at least 1). Default 1.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            failure_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(5),
            half_open_probes: 1,
        }
    }
}

impl BreakerConfig {
    /// Checks every field; the error names the field and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let r = self.failure_rate;
        if !(r > 0.0 && r <= 1.0) {
            return Err(ConfigError::new(
                "breaker.failure_rate",
                format!("must be in (0, 1] (a share of failures), got {r}"),
            ));
        }
        if self.min_requests == 0 {
            return Err(ConfigError::new(
                "breaker.min_requests",
                "must be at least 1, got 0",
            ));
        }
        if self.window.is_zero() {
            return Err(ConfigError::new(
                "breaker.window",
                "must be greater than zero, got 0",
            ));
        }
        if self.cool_down.is_zero() {
            return Err(ConfigError::new(
                "breaker.cool_down",
                "must be greater than zero, got 0",
            ));
        }
        if self.half_open_probes == 0 || u64::from(self.half_open_probes) > COUNT_MASK {
            return Err(ConfigError::new(
                "breaker.half_open_probes",
                format!(
                    "must be in [1, {COUNT_MASK}], got {}",
                    self.half_open_probes
                ),
            ));
        }
        Ok(())
    }
}

// ---- the state word: [kind:2][generation:14][payload:48] ----
// closed: payload 0; open: payload = opened-at (µs since start);
// half-open: payload = [probes in flight:24][successes:24].
const KIND_SHIFT: u32 = 62;
const GEN_SHIFT: u32 = 48;
const GEN_MASK: u64 = (1 << 14) - 1;
const PAYLOAD_MASK: u64 = (1 << 48) - 1;
const COUNT_MASK: u64 = (1 << 24) - 1;
const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;

fn kind(s: u64) -> u64 {
    s >> KIND_SHIFT
}

fn generation(s: u64) -> u64 {
    (s >> GEN_SHIFT) & GEN_MASK
}

fn payload(s: u64) -> u64 {
    s & PAYLOAD_MASK
}

/// A state word of `kind` one generation after `prev`.
fn next_word(prev: u64, kind: u64, payload: u64) -> u64 {
    let generation = (generation(prev) + 1) & GEN_MASK;
    (kind << KIND_SHIFT) | (generation << GEN_SHIFT) | (payload & PAYLOAD_MASK)
}

fn half_open_counts(s: u64) -> (u64, u64) {
    let p = payload(s);
    (p >> 24, p & COUNT_MASK)
}

fn with_half_open_counts(s: u64, in_flight: u64, successes: u64) -> u64 {
    (s & !PAYLOAD_MASK) | (in_flight << 24) | successes
}

fn state_of(s: u64) -> BreakerState {
    match kind(s) {
        OPEN => BreakerState::Open,
        HALF_OPEN => BreakerState::HalfOpen,
        _ => BreakerState::Closed,
    }
}

// ---- a window bucket: [bucket number:24][failures:20][successes:20] ----
const BUCKETS: usize = 10;
const EPOCH_MASK: u64 = (1 << 24) - 1;
const TALLY_MASK: u64 = (1 << 20) - 1;

/// Whether an outcome counts against the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    /// How a result counts, as the one classifier
    /// ([`NodeVerdict::of`]) says; `None` for outcomes that judge no node
    /// (refusals made on the client).
    pub(crate) fn of(result: &Result<CqlResponse, CqlError>) -> Option<Outcome> {
        match NodeVerdict::of(result) {
            NodeVerdict::Healthy => Some(Outcome::Success),
            NodeVerdict::Failed => Some(Outcome::Failure),
            NodeVerdict::NotJudged => None,
        }
    }
}

/// What a target says about admitting a request.
enum Admit {
    Pass,
    /// Let through as a half-open probe of this generation.
    Probe(u64),
    Refuse(Refusal),
}

/// Why a target refuses (turned into words only when a request is
/// refused: a node that refuses is usually routed around).
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// Open, for this long more.
    Open(Duration),
    /// Half-open, with this many probes in flight.
    Probing(u64),
}

impl Refusal {
    fn describe(self, name: &str, b: &Breakers) -> String {
        match self {
            Refusal::Open(left) => format!(
                "circuit breaker open for {name}: refusing requests for {left:?} more (cool_down {:?})",
                b.config.cool_down
            ),
            Refusal::Probing(in_flight) => format!(
                "circuit breaker half-open for {name}: {in_flight} probe(s) already in flight"
            ),
        }
    }
}

/// One breaker: a node or a `keyspace.table`.
pub(crate) struct Target {
    name: String,
    /// A node's address; `None` for a `keyspace.table`.
    addr: Option<SocketAddr>,
    state: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("state", &state_of(self.state.load(Ordering::Acquire)))
            .finish()
    }
}

impl Target {
    fn new(name: String, addr: Option<SocketAddr>) -> Target {
        Target {
            name,
            addr,
            state: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn transition(&self, b: &Breakers, from: u64, to: u64) -> bool {
        if self
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        if kind(to) == CLOSED {
            for bucket in &self.buckets {
                bucket.store(0, Ordering::Release);
            }
        }
        // A node leaving or entering the closed state: the count admission
        // reads (a successful swap, so each change is counted once).
        if self.addr.is_some() {
            match (kind(from) == CLOSED, kind(to) == CLOSED) {
                (true, false) => {
                    b.open_nodes.fetch_add(1, Ordering::AcqRel);
                }
                (false, true) => {
                    b.open_nodes.fetch_sub(1, Ordering::AcqRel);
                }
                _ => {}
            }
        }
        if b.collectors.is_active() {
            b.collectors.emit(Event::Breaker(BreakerEvent {
                target: &self.name,
                from: state_of(from),
                to: state_of(to),
            }));
        }
        true
    }

    /// The state a request arriving at `now` would find.
    fn effective_state(&self, b: &Breakers, now: u64) -> BreakerState {
        let s = self.state.load(Ordering::Acquire);
        if kind(s) == OPEN && b.cooled_down(s, now) {
            BreakerState::HalfOpen
        } else {
            state_of(s)
        }
    }

    fn admit(&self, b: &Breakers, now: u64) -> Admit {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            match kind(s) {
                OPEN => {
                    if !b.cooled_down(s, now) {
                        let left = b
                            .cool_down_us
                            .saturating_sub(now.saturating_sub(payload(s)));
                        return Admit::Refuse(Refusal::Open(Duration::from_micros(left)));
                    }
                    let half = next_word(s, HALF_OPEN, 0);
                    self.transition(b, s, half);
                    s = self.state.load(Ordering::Acquire);
                }
                HALF_OPEN => {
                    let (in_flight, successes) = half_open_counts(s);
                    if in_flight >= u64::from(b.config.half_open_probes) {
                        return Admit::Refuse(Refusal::Probing(in_flight));
                    }
                    let next = with_half_open_counts(s, in_flight + 1, successes);
                    match self.state.compare_exchange_weak(
                        s,
                        next,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Admit::Probe(generation(s)),
                        Err(actual) => s = actual,
                    }
                }
                _ => return Admit::Pass,
            }
        }
    }

    /// A probe of `probe_generation` finished (or was dropped): its place is free.
    fn end_probe(&self, probe_generation: u64) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                let (in_flight, successes) = half_open_counts(s);
                (kind(s) == HALF_OPEN && generation(s) == probe_generation && in_flight > 0)
                    .then(|| with_half_open_counts(s, in_flight - 1, successes))
            });
    }

    fn record(&self, b: &Breakers, outcome: Outcome, now: u64) {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            match kind(s) {
                CLOSED => {
                    self.tally(b, outcome, now);
                    let (successes, failures) = self.window(b, now);
                    let total = successes + failures;
                    if total >= u64::from(b.config.min_requests)
                        && failures as f64 >= b.config.failure_rate * total as f64
                    {
                        self.transition(b, s, next_word(s, OPEN, now));
                    }
                    return;
                }
                HALF_OPEN => {
                    let next = match outcome {
                        Outcome::Failure => next_word(s, OPEN, now),
                        Outcome::Success => {
                            let (in_flight, successes) = half_open_counts(s);
                            if successes + 1 >= u64::from(b.config.half_open_probes) {
                                next_word(s, CLOSED, 0)
                            } else {
                                with_half_open_counts(s, in_flight, successes + 1)
                            }
                        }
                    };
                    if kind(next) == HALF_OPEN {
                        match self.state.compare_exchange_weak(
                            s,
                            next,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        ) {
                            Ok(_) => return,
                            Err(actual) => s = actual,
                        }
                    } else if self.transition(b, s, next) {
                        return;
                    } else {
                        s = self.state.load(Ordering::Acquire);
                    }
                }
                // Open: outcomes of requests sent before it opened count for nothing.
                _ => return,
            }
        }
    }

    fn tally(&self, b: &Breakers, outcome: Outcome, now: u64) {
        let number = now / b.bucket_us;
        let epoch = number & EPOCH_MASK;
        let bucket = &self.buckets[(number % BUCKETS as u64) as usize];
        let _ = bucket.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            let (mut failures, mut successes) = if v >> 40 == epoch {
                ((v >> 20) & TALLY_MASK, v & TALLY_MASK)
            } else {
                (0, 0) // a stale bucket: start it over
            };
            match outcome {
                Outcome::Failure => failures = (failures + 1).min(TALLY_MASK),
                Outcome::Success => successes = (successes + 1).min(TALLY_MASK),
            }
            Some((epoch << 40) | (failures << 20) | successes)
        });
    }

    /// (successes, failures) in the window ending at `now`.
    fn window(&self, b: &Breakers, now: u64) -> (u64, u64) {
        let current = (now / b.bucket_us) & EPOCH_MASK;
        let mut sums = (0, 0);
        for bucket in &self.buckets {
            let v = bucket.load(Ordering::Acquire);
            let age = current.wrapping_sub(v >> 40) & EPOCH_MASK;
            if age < BUCKETS as u64 {
                sums.0 += v & TALLY_MASK;
                sums.1 += (v >> 20) & TALLY_MASK;
            }
        }
        sums
    }
}

type TableKey = (Option<Label>, Option<Label>);

fn table_name(key: &TableKey) -> String {
    match key {
        (Some(k), Some(t)) => format!("{k}.{t}"),
        (None, Some(t)) => t.to_string(),
        (Some(k), None) => format!("{k}.*"),
        (None, None) => "*".to_string(),
    }
}

/// Every target's breaker, shared by a layer and every service it makes.
pub(crate) struct Breakers {
    config: BreakerConfig,
    collectors: Collectors,
    start: Instant,
    bucket_us: u64,
    cool_down_us: u64,
    nodes: Registry<SocketAddr, Arc<Target>>,
    tables: Registry<TableKey, Arc<Target>>,
    /// Nodes whose breaker is not closed (open or half-open): while it
    /// is 0, admission looks at no node.
    open_nodes: AtomicUsize,
}

impl fmt::Debug for Breakers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breakers")
            .field("config", &self.config)
            .field("nodes", &self.nodes.len())
            .field("tables", &self.tables.len())
            .finish()
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Breakers {
    pub(crate) fn new(config: BreakerConfig, collectors: Collectors) -> Breakers {
        Breakers {
            config,
            collectors,
            start: Instant::now(),
            bucket_us: (micros(config.window) / BUCKETS as u64).max(1),
            cool_down_us: micros(config.cool_down),
            nodes: Registry::new(),
            tables: Registry::new(),
            open_nodes: AtomicUsize::new(0),
        }
    }

    pub(crate) fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Microseconds since the layer was built (the open time is kept in 48
    /// bits: good for nine years).
    fn now(&self) -> u64 {
        micros(Instant::now().saturating_duration_since(self.start)) & PAYLOAD_MASK
    }

    fn cooled_down(&self, open_word: u64, now: u64) -> bool {
        now.saturating_sub(payload(open_word)) >= self.cool_down_us
    }

    fn node(&self, addr: SocketAddr) -> Arc<Target> {
        self.nodes
            .get_or_insert_with(addr, || Arc::new(Target::new(addr.to_string(), Some(addr))))
    }

    /// The breaker of the statement's `keyspace.table`: keyed by the
    /// statement's own names, not by the request's labels, which the
    /// metrics layer's cardinality guard may have folded into `other`.
    fn table(&self, meta: &RequestMeta) -> Arc<Target> {
        let st = meta.statement();
        let key: TableKey = (st.keyspace_name().cloned(), st.table_name().cloned());
        if let Some(t) = self.tables.get(&key) {
            return t;
        }
        let name = table_name(&key);
        self.tables
            .get_or_insert_with(key, || Arc::new(Target::new(name, None)))
    }

    pub(crate) fn state(&self, target: &str) -> Option<BreakerState> {
        let now = self.now();
        if let Ok(addr) = target.parse::<SocketAddr>() {
            return self.nodes.get(&addr).map(|t| t.effective_state(self, now));
        }
        self.tables
            .snapshot()
            .values()
            .find(|t| t.name == target)
            .map(|t| t.effective_state(self, now))
    }

    pub(crate) fn states(&self) -> Vec<(String, BreakerState)> {
        let now = self.now();
        let nodes = self.nodes.snapshot();
        let tables = self.tables.snapshot();
        let mut all: Vec<_> = nodes
            .values()
            .chain(tables.values())
            .map(|t| (t.name.clone(), t.effective_state(self, now)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Records how a request for `table` ended. Its attempts were
    /// reported to the nodes they went to as they ended (through the
    /// request's hint: [`NodeObserver`]); when none was (an inner service
    /// that reports nothing), the final outcome goes to the node that
    /// produced it. An outcome with no node goes to the table.
    /// `table_probe`: it was let through as a probe of the table's
    /// half-open breaker, which then hears the outcome too.
    pub(crate) fn complete(
        &self,
        table: &Target,
        table_probe: bool,
        hint: &RouteHint,
        result: &Result<CqlResponse, CqlError>,
    ) {
        let Some(outcome) = Outcome::of(result) else {
            return;
        };
        let node = match result {
            Ok(resp) => resp.info().coordinator,
            Err(e) => e.node(),
        };
        let now = self.now();
        match node {
            Some(addr) => {
                if hint.reported() == 0 {
                    self.node(addr).record(self, outcome, now);
                }
                if table_probe {
                    table.record(self, outcome, now);
                }
            }
            None if hint.reported() > 0 && !table_probe => {}
            None => table.record(self, outcome, now),
        }
    }

    /// Excludes from `req`'s route every node whose breaker refuses it
    /// (open, or half-open with its probes in flight), so that the driver
    /// sends it to another node; takes the probe place of at most one
    /// node whose cool-down is over (that node stays in the route). `Err`
    /// with the reasons when every node seen refuses.
    fn route_around(
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

impl NodeObserver for Breakers {
    fn on_attempt(&self, node: SocketAddr, verdict: NodeVerdict) {
        let outcome = match verdict {
            NodeVerdict::Healthy => Outcome::Success,
            NodeVerdict::Failed => Outcome::Failure,
            NodeVerdict::NotJudged => return,
        };
        self.node(node).record(self, outcome, self.now());
    }
}

/// A half-open probe's place; given back when dropped.
pub(crate) struct Probe {
    target: Arc<Target>,
    generation: u64,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.target.end_probe(self.generation);
    }
}

/// Routes requests around failing nodes, and refuses them when no node
/// is left; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    /// `None`: a pass-through.
    breakers: Option<Arc<Breakers>>,
}

impl<S> CircuitBreaker<S> {
    pub(crate) fn from_shared(inner: S, breakers: Arc<Breakers>) -> CircuitBreaker<S> {
        CircuitBreaker {
            inner,
            breakers: Some(breakers),
        }
    }

    /// A service with no breaker that only forwards to `inner` (see
    /// [`toggle`](crate::toggle)): it records nothing, routes nothing
    /// around, refuses nothing.
    pub fn pass_through(inner: S) -> CircuitBreaker<S> {
        CircuitBreaker {
            inner,
            breakers: None,
        }
    }

    /// Whether this service passes requests through without a breaker.
    pub fn is_pass_through(&self) -> bool {
        self.breakers.is_none()
    }

    /// Wraps `inner` with its own breakers (use [`CircuitBreakerLayer`] to
    /// share them between several services).
    pub fn new(
        inner: S,
        config: BreakerConfig,
        collectors: Collectors,
    ) -> Result<CircuitBreaker<S>, ConfigError> {
        Ok(CircuitBreakerLayer::new(config, collectors)?.service(inner))
    }

    /// The state of `target` (a node address such as `"10.0.0.1:9042"`, or
    /// `"keyspace.table"`) as the next request would find it; `None` for a
    /// target not seen yet (always, for a pass-through).
    pub fn state(&self, target: &str) -> Option<BreakerState> {
        self.breakers.as_ref()?.state(target)
    }

    /// Every target seen, with its state, sorted by name (none, for a
    /// pass-through).
    pub fn states(&self) -> Vec<(String, BreakerState)> {
        self.breakers.as_ref().map_or_else(Vec::new, |b| b.states())
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<CqlRequest> for CircuitBreaker<S>
where
    S: Service<CqlRequest, Response = CqlResponse, Error = CqlError>,
{
    type Response = CqlResponse;
    type Error = CqlError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: CqlRequest) -> Self::Future {
        let Some(breakers) = &self.breakers else {
            return ResponseFuture::pass_through(self.inner.call(req));
        };
        let b = &**breakers;
        let now = b.now();
        let mut req = req;
        // Every attempt of the request reports to the breaker through its
        // hint, as the attempt ends (retried and timed-out ones included).
        let hint = req.meta_mut().route_hint().clone();
        hint.set_observer(breakers.clone());
        let table = b.table(req.meta());
        let mut probes: [Option<Probe>; 2] = [None, None];
        match table.admit(b, now) {
            Admit::Refuse(why) => return refuse(b, &req, why.describe(&table.name, b)),
            Admit::Probe(generation) => {
                probes[0] = Some(Probe {
                    target: table.clone(),
                    generation,
                });
            }
            Admit::Pass => {}
        }
        // Some node's breaker is open: route around it (one load when none is).
        if b.open_nodes.load(Ordering::Acquire) > 0
            && let Err(why) = b.route_around(&mut req, now, &mut probes[1])
        {
            drop(probes); // a table probe taken before every node refused
            return refuse(b, &req, why);
        }
        ResponseFuture::called(self.inner.call(req), breakers.clone(), table, hint, probes)
    }
}

/// Refuses `req` with [`ErrorKind::CircuitOpen`] (not sent), emitting the
/// shed event.
fn refuse<F>(b: &Breakers, req: &CqlRequest, why: String) -> ResponseFuture<F> {
    if b.collectors.is_active() {
        b.collectors.emit(Event::Shed(ShedEvent {
            meta: req.meta(),
            reason: ErrorKind::CircuitOpen,
            layer: "breaker",
        }));
    }
    ResponseFuture::refused(CqlError::new(ErrorKind::CircuitOpen, why))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;
    use tower::ServiceExt;
    use tower_cql_core::{Collector, ExecutionInfo};
    use tower_layer::Layer;

    /// Keeps breaker transitions and shed events.
    #[derive(Default)]
    struct Recorder {
        transitions: Mutex<Vec<(String, BreakerState, BreakerState)>>,
        sheds: Mutex<Vec<(ErrorKind, &'static str)>>,
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
    enum Answer {
        Ok,
        Fail(ErrorKind),
        /// An error that names no node.
        FailNoNode(ErrorKind),
        /// Never answers.
        Hang,
    }

    /// A node at `addr` that answers as told, counting the calls.
    #[derive(Debug, Clone)]
    struct Node {
        addr: SocketAddr,
        answer: Arc<Mutex<Answer>>,
        calls: Arc<AtomicUsize>,
    }

    impl Node {
        fn new(addr: &str) -> Node {
            Node {
                addr: addr.parse().unwrap(),
                answer: Arc::new(Mutex::new(Answer::Ok)),
                calls: Arc::new(AtomicUsize::new(0)),
            }
        }
        fn set(&self, a: Answer) {
            *self.answer.lock().unwrap() = a;
        }
        fn calls(&self) -> usize {
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
    struct Cluster {
        nodes: Vec<Node>,
        /// Requests that came with a route hint.
        hinted: Arc<AtomicUsize>,
    }

    impl Cluster {
        fn new(nodes: &[&Node]) -> Cluster {
            Cluster {
                nodes: nodes.iter().map(|&n| n.clone()).collect(),
                hinted: Arc::new(AtomicUsize::new(0)),
            }
        }
        fn hinted(&self) -> usize {
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

    const NODE: &str = "10.0.0.1:9042";
    const GOOD: &str = "10.0.0.2:9042";

    fn config() -> BreakerConfig {
        BreakerConfig {
            failure_rate: 0.5,
            min_requests: 4,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(5),
            half_open_probes: 1,
        }
    }

    fn breaker(config: BreakerConfig) -> (CircuitBreakerLayer, Node, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let collectors = Collectors::with([rec.clone() as Arc<dyn Collector>]);
        (
            CircuitBreakerLayer::new(config, collectors).unwrap(),
            Node::new(NODE),
            rec,
        )
    }

    fn req() -> CqlRequest {
        CqlRequest::query("SELECT v FROM ks.users WHERE id = 1")
    }

    /// One request through the breaker to `inner`; a request that does
    /// not resolve within a minute (of the paused clock) fails the test.
    async fn send_to<S>(layer: &CircuitBreakerLayer, inner: &S) -> Result<CqlResponse, ErrorKind>
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

    async fn send(layer: &CircuitBreakerLayer, node: &Node) -> Result<CqlResponse, ErrorKind> {
        send_to(layer, node).await
    }

    /// The node that served a request.
    fn served_by(result: Result<CqlResponse, ErrorKind>) -> String {
        match result {
            Ok(resp) => resp.info().coordinator.unwrap().to_string(),
            Err(kind) => panic!("not served: {kind:?}"),
        }
    }

    /// The number of nodes not closed, as admission reads it.
    fn open_nodes(layer: &CircuitBreakerLayer) -> usize {
        let svc = layer.layer(());
        let breakers = svc.breakers.as_ref().expect("not a pass-through");
        breakers.open_nodes.load(Ordering::Acquire)
    }

    use BreakerState::{Closed, HalfOpen, Open};

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

    #[test]
    fn config_validation_names_each_field() {
        assert_eq!(BreakerConfig::default().validate(), Ok(()));
        let d = BreakerConfig::default();
        let cases = [
            (
                BreakerConfig {
                    failure_rate: 0.0,
                    ..d
                },
                "breaker.failure_rate",
            ),
            (
                BreakerConfig {
                    failure_rate: 1.5,
                    ..d
                },
                "breaker.failure_rate",
            ),
            (
                BreakerConfig {
                    failure_rate: f64::NAN,
                    ..d
                },
                "breaker.failure_rate",
            ),
            (
                BreakerConfig {
                    min_requests: 0,
                    ..d
                },
                "breaker.min_requests",
            ),
            (
                BreakerConfig {
                    window: Duration::ZERO,
                    ..d
                },
                "breaker.window",
            ),
            (
                BreakerConfig {
                    cool_down: Duration::ZERO,
                    ..d
                },
                "breaker.cool_down",
            ),
            (
                BreakerConfig {
                    half_open_probes: 0,
                    ..d
                },
                "breaker.half_open_probes",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err();
            assert_eq!(err.field, field, "{config:?}");
            assert!(CircuitBreakerLayer::new(config, Collectors::new()).is_err());
        }
        assert!(
            BreakerConfig {
                failure_rate: 1.0,
                ..d
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn state_words_round_trip() {
        let open = next_word(0, OPEN, 12_345);
        assert_eq!(
            (kind(open), generation(open), payload(open)),
            (OPEN, 1, 12_345)
        );
        let half = with_half_open_counts(next_word(open, HALF_OPEN, 0), 3, 7);
        assert_eq!(kind(half), HALF_OPEN);
        assert_eq!(generation(half), 2);
        assert_eq!(half_open_counts(half), (3, 7));
        let wrapped = next_word(GEN_MASK << GEN_SHIFT, CLOSED, 0);
        assert_eq!(generation(wrapped), 0);
    }
}
