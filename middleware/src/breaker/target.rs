//! The breakers: a [`Target`] per node and per `keyspace.table`, each with
//! its state word and window, and [`Breakers`], the registry of them
//! shared by a layer and its services: admission, outcome recording, the
//! transitions and the events they emit.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower_cql_core::event::BreakerEvent;
use tower_cql_core::registry::Registry;
use tower_cql_core::routing::{NodeObserver, RouteHint};
use tower_cql_core::{BreakerState, Collectors, CqlError, CqlResponse, Event, Label, RequestMeta};
use tower_cql_core::{classify::NodeVerdict, clock};

use super::BreakerConfig;
use super::state::{
    CLOSED, HALF_OPEN, OPEN, PAYLOAD_MASK, generation, half_open_counts, kind, next_word, payload,
    state_of, with_half_open_counts,
};
use super::window::{BUCKETS, Outcome};

/// What a target says about admitting a request.
pub(super) enum Admit {
    Pass,
    /// Let through as a half-open probe of this generation.
    Probe(u64),
    Refuse(Refusal),
}

/// Why a target refuses (turned into words only when a request is
/// refused: a node that refuses is usually routed around).
#[derive(Debug, Clone, Copy)]
pub(super) enum Refusal {
    /// Open, for this long more.
    Open(Duration),
    /// Half-open, with this many probes in flight.
    Probing(u64),
}

impl Refusal {
    pub(super) fn describe(self, name: &str, b: &Breakers) -> String {
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
    pub(super) name: String,
    /// A node's address; `None` for a `keyspace.table`.
    pub(super) addr: Option<SocketAddr>,
    pub(super) state: AtomicU64,
    pub(super) buckets: [AtomicU64; BUCKETS],
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
    pub(super) fn new(name: String, addr: Option<SocketAddr>) -> Target {
        Target {
            name,
            addr,
            state: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    pub(super) fn transition(&self, b: &Breakers, from: u64, to: u64) -> bool {
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
            b.collectors.emit(Event::Breaker(BreakerEvent::new(
                &self.name,
                state_of(from),
                state_of(to),
            )));
        }
        true
    }

    /// The state a request arriving at `now` would find.
    pub(super) fn effective_state(&self, b: &Breakers, now: u64) -> BreakerState {
        let s = self.state.load(Ordering::Acquire);
        if kind(s) == OPEN && b.cooled_down(s, now) {
            BreakerState::HalfOpen
        } else {
            state_of(s)
        }
    }

    pub(super) fn admit(&self, b: &Breakers, now: u64) -> Admit {
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
    pub(super) fn end_probe(&self, probe_generation: u64) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                let (in_flight, successes) = half_open_counts(s);
                (kind(s) == HALF_OPEN && generation(s) == probe_generation && in_flight > 0)
                    .then(|| with_half_open_counts(s, in_flight - 1, successes))
            });
    }

    /// Records an outcome at `now`. `probe`: the generation of the
    /// half-open probe the request held on this target, if any. Half-open,
    /// only a probe of the current generation is heard: a request sent
    /// before the breaker opened (or one that got in without a probe) says
    /// nothing about the node now, and must not close or re-open it while
    /// the probes are out.
    pub(super) fn record(&self, b: &Breakers, outcome: Outcome, now: u64, probe: Option<u64>) {
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
                HALF_OPEN if probe != Some(generation(s)) => return,
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
}

pub(super) type TableKey = (Option<Label>, Option<Label>);

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
    pub(super) config: BreakerConfig,
    pub(super) collectors: Collectors,
    pub(super) start: Instant,
    pub(super) bucket_us: u64,
    pub(super) cool_down_us: u64,
    pub(super) nodes: Registry<SocketAddr, Arc<Target>>,
    pub(super) tables: Registry<TableKey, Arc<Target>>,
    /// Nodes whose breaker is not closed (open or half-open): while it
    /// is 0, admission looks at no node.
    pub(super) open_nodes: AtomicUsize,
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

pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Breakers {
    pub(crate) fn new(config: BreakerConfig, collectors: Collectors) -> Breakers {
        Breakers {
            config,
            collectors,
            start: clock::now(),
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
    pub(super) fn now(&self) -> u64 {
        micros(clock::now().saturating_duration_since(self.start)) & PAYLOAD_MASK
    }

    pub(super) fn cooled_down(&self, open_word: u64, now: u64) -> bool {
        now.saturating_sub(payload(open_word)) >= self.cool_down_us
    }

    pub(super) fn node(&self, addr: SocketAddr) -> Arc<Target> {
        self.nodes
            .get_or_insert_with(addr, || Arc::new(Target::new(addr.to_string(), Some(addr))))
    }

    /// The breaker of the statement's `keyspace.table`: keyed by the
    /// statement's own names, not by the request's labels, which the
    /// metrics layer's cardinality guard may have folded into `other`.
    pub(super) fn table(&self, meta: &RequestMeta) -> Arc<Target> {
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
    /// `probes`: the probe places it held, of the table's half-open
    /// breaker (which then hears the outcome too) and of a node's.
    pub(crate) fn complete(
        &self,
        table: &Target,
        probes: &[Option<Probe>; 2],
        hint: &RouteHint,
        result: &Result<CqlResponse, CqlError>,
    ) {
        let table_probe = probes[0].as_ref().map(|p| p.generation);
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
                    let node_probe = probes[1]
                        .as_ref()
                        .filter(|p| p.target.addr == Some(addr))
                        .map(|p| p.generation);
                    self.node(addr).record(self, outcome, now, node_probe);
                }
                if table_probe.is_some() {
                    table.record(self, outcome, now, table_probe);
                }
            }
            None if hint.reported() > 0 && table_probe.is_none() => {}
            None => table.record(self, outcome, now, table_probe),
        }
    }
}

impl NodeObserver for Breakers {
    fn on_attempt(&self, node: SocketAddr, verdict: NodeVerdict) {
        let outcome = match verdict {
            NodeVerdict::Healthy => Outcome::Success,
            NodeVerdict::Failed => Outcome::Failure,
            NodeVerdict::NotJudged => return,
        };
        // a request holding no node's probe (see [`ProbeObserver`])
        self.node(node).record(self, outcome, self.now(), None);
    }
}

/// The observer of a request holding a node's half-open probe: that
/// node's outcomes are the probe's, one success at most (the request is
/// one probe, however many of its attempts the node answered: a hedge's,
/// a retry's), every failure (one reopens the breaker); others' are
/// heard as any request's.
pub(super) struct ProbeObserver {
    pub(super) breakers: Arc<Breakers>,
    pub(super) node: SocketAddr,
    pub(super) generation: u64,
    /// Whether the probe's success was recorded already.
    pub(super) succeeded: AtomicBool,
}

impl NodeObserver for ProbeObserver {
    fn on_attempt(&self, node: SocketAddr, verdict: NodeVerdict) {
        let outcome = match verdict {
            NodeVerdict::Healthy => Outcome::Success,
            NodeVerdict::Failed => Outcome::Failure,
            NodeVerdict::NotJudged => return,
        };
        let b = &*self.breakers;
        let probe = (node == self.node
            && (outcome == Outcome::Failure || !self.succeeded.swap(true, Ordering::AcqRel)))
        .then_some(self.generation);
        b.node(node).record(b, outcome, b.now(), probe);
    }
}

/// A half-open probe's place; given back when dropped.
pub(crate) struct Probe {
    pub(super) target: Arc<Target>,
    pub(super) generation: u64,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.target.end_probe(self.generation);
    }
}
