//! The stack builder: the default tower-cql stack around a driver service,
//! in the documented order, validated when built.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tower::{Service, ServiceExt};
//! use tower_cql_core::{Collectors, CqlRequest, DriverService};
//! use tower_cql_middleware::stack::StackBuilder;
//! use tower_cql_middleware::retry::RetryConfig;
//!
//! # async fn demo(session: scylla::client::session::Session) -> Result<(), Box<dyn std::error::Error>> {
//! let collectors = Collectors::new();
//! // options of the driver service: built by hand, wrapped in the stack
//! let driver = DriverService::builder(Arc::new(session)).cache_capacity(4096).build()?;
//! let stack = StackBuilder::new(collectors)
//!     .retry(RetryConfig { max_attempts: 4, ..Default::default() })
//!     .build(driver)?;
//! let mut svc = stack.service();
//! svc.ready().await?.call(CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").bind((1i32,))).await?;
//! stack.close().await; // drain in-flight requests, flush the collectors
//! # Ok(()) }
//! ```
//!
//! # Order
//! Outermost first (each layer sees what the ones inside it do):
//!
//! 1. **shutdown gate** — refuses new requests once `close()` begins, so
//!    close drains everything below;
//! 2. **tracing** (`cql.request` span) — the span covers the whole logical
//!    request, so every layer below logs inside it;
//! 3. **metrics** — one event per logical request, timed around queueing,
//!    retries and hedging: the latency the caller felt; with server
//!    tracing on (off by default), it also sets the tracing flag on the
//!    requests it samples and, after their request event, queues their
//!    traces for the background fetch (see
//!    [`server_trace`](crate::server_trace));
//! 4. **load shed** (off by default) and **circuit breaker** (off by
//!    default) — refuse early, before a request takes capacity;
//! 5. **rate limit**, **concurrency limit**, **adaptive concurrency** (all
//!    off by default) — a request takes capacity once, not once per retry;
//!    a request that must wait for it waits in its response future, so
//!    the time queued is inside the latency and the span above, and the
//!    wait ends at the request's deadline if that comes first (see
//!    [`rate_limit`](crate::rate_limit) and
//!    [`concurrency`](crate::concurrency); under load shedding the limits
//!    are built `for_load_shed` and a request that would wait is shed);
//! 6. **retry** — budgeted, per-attempt events from the driver service;
//! 7. **hedge** (off by default) — speculative attempts for idempotent reads,
//!    charged to the retry layer's budget (one budget, built once, bounds
//!    retries and speculative attempts together; a hedge config with a
//!    `budget` of its own, or retries off, gives the hedge its own);
//! 8. **attempt tracing** (`cql.attempt` span per attempt);
//! 9. **timeout** per attempt, and the request deadline;
//! 10. the **driver service**.
//!
//! Insert your own layers innermost by wrapping the driver before
//! [`StackBuilder::build`], and outermost by wrapping [`Stack::service`].
//! To drop a layer use its `without_*` method; to use another order, take
//! the validated layers from [`StackBuilder::layers`] and compose them with
//! `tower::ServiceBuilder` yourself ([`Toggle`] keeps one service type
//! whether a layer is on or off).
//!
//! The built stack is one concrete type ([`StackService`]), not boxed,
//! whatever is switched on. While the six layers the default stack has
//! off (load shed, the breaker, the three limits, hedging) are all off,
//! they are absent from the request's path; once one is on, every layer
//! is there and those that are off are pass-throughs, which only forward
//! to the layer inside them (see [`StackLayers::service`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use scylla::deserialize::row::DeserializeRow;
use std::sync::Arc;
use tower::util::BoxCloneSyncService;

use scylla::serialize::row::SerializeRow;
use tower_cql_core::{
    Collectors, CqlError, CqlRequest, CqlResponse, DriverService, Gate, GateService, GateState,
    RowStream, Statement,
};
use tower_layer::Layer;

mod lean;

use crate::breaker::{BreakerConfig, CircuitBreaker, CircuitBreakerLayer};
use crate::concurrency::{
    AdaptiveConcurrency, AdaptiveConcurrencyLayer, AdaptiveConfig, ConcurrencyConfig,
    ConcurrencyLimit, ConcurrencyLimitLayer,
};
use crate::config::ConfigError;
use crate::hedge::{Hedge, HedgeConfig, HedgeLayer};
use crate::load_shed::{LoadShed, LoadShedLayer};
use crate::metrics::{Metrics, MetricsConfig, MetricsLayer};
use crate::rate_limit::{RateLimit, RateLimitConfig, RateLimitLayer};
use crate::retry::{Retry, RetryConfig, RetryLayer};
use crate::server_trace::{ServerTraceHandle, ServerTracer};
use crate::timeout::{Timeout, TimeoutConfig, TimeoutLayer};
use crate::toggle::Toggle;
use crate::trace::{AttemptTrace, AttemptTraceLayer, Trace, TraceConfig, TraceLayer};
use tower_cql_core::server_trace::ServerTraceConfig;

/// Every layer of the default stack, validated; `None` when switched off.
#[derive(Debug, Clone)]
pub struct StackLayers {
    /// The request span.
    pub trace: Option<TraceLayer>,
    /// Request events (and server-side tracing of sampled requests, when
    /// configured: see [`MetricsLayer::with_server_trace`]).
    pub metrics: Option<MetricsLayer>,
    /// Load shedding.
    pub load_shed: Option<LoadShedLayer>,
    /// The circuit breaker.
    pub breaker: Option<CircuitBreakerLayer>,
    /// The rate limit.
    pub rate_limit: Option<RateLimitLayer>,
    /// The fixed concurrency limit.
    pub concurrency: Option<ConcurrencyLimitLayer>,
    /// Adaptive concurrency.
    pub adaptive: Option<AdaptiveConcurrencyLayer>,
    /// Retries.
    pub retry: Option<RetryLayer>,
    /// Hedging. With `retry` on, it draws on `retry`'s budget (see
    /// [`HedgeLayer::inside`]): keep the two together.
    pub hedge: Option<HedgeLayer>,
    /// Attempt spans.
    pub attempt_trace: Option<AttemptTraceLayer>,
    /// Timeouts.
    pub timeout: Option<TimeoutLayer>,
}

/// Configures the default stack; see the module docs.
#[derive(Clone)]
pub struct StackBuilder {
    collectors: Collectors,
    trace: Option<TraceConfig>,
    server_trace: Option<ServerTraceConfig>,
    server_trace_session: Option<Arc<scylla::client::session::Session>>,
    metrics: Option<MetricsConfig>,
    load_shed: bool,
    breaker: Option<BreakerConfig>,
    rate_limit: Option<RateLimitConfig>,
    concurrency: Option<ConcurrencyConfig>,
    adaptive: Option<AdaptiveConfig>,
    retry: Option<RetryConfig>,
    hedge: Option<HedgeConfig>,
    timeout: Option<TimeoutConfig>,
}

impl fmt::Debug for StackBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackBuilder")
            .field("trace", &self.trace)
            .field("server_trace", &self.server_trace)
            .field("metrics", &self.metrics)
            .field("load_shed", &self.load_shed)
            .field("breaker", &self.breaker)
            .field("rate_limit", &self.rate_limit)
            .field("concurrency", &self.concurrency)
            .field("adaptive", &self.adaptive)
            .field("retry", &self.retry)
            .field("hedge", &self.hedge)
            .field("timeout", &self.timeout)
            .finish()
    }
}

macro_rules! setters {
    ($($field:ident: $ty:ty, $with:ident, $without:ident, $doc:literal;)*) => {
        $(
            #[doc = concat!("Turns ", $doc, " on with `config`.")]
            pub fn $with(mut self, config: $ty) -> Self {
                self.$field = Some(config);
                self
            }

            #[doc = concat!("Turns ", $doc, " off.")]
            pub fn $without(mut self) -> Self {
                self.$field = None;
                self
            }
        )*
    };
}

impl StackBuilder {
    /// The default stack emitting into `collectors`: tracing, metrics,
    /// retry (4 attempts, budgeted), attempt tracing and the deadline; the
    /// limits, load shedding, the breaker and hedging are off.
    pub fn new(collectors: Collectors) -> StackBuilder {
        StackBuilder {
            collectors,
            trace: Some(TraceConfig::default()),
            server_trace: None,
            server_trace_session: None,
            metrics: Some(MetricsConfig::default()),
            load_shed: false,
            breaker: None,
            rate_limit: None,
            concurrency: None,
            adaptive: None,
            retry: Some(RetryConfig::default()),
            hedge: None,
            timeout: Some(TimeoutConfig::default()),
        }
    }

    setters! {
        trace: TraceConfig, trace, without_trace, "the request and attempt spans";
        metrics: MetricsConfig, metrics, without_metrics, "request events";
        breaker: BreakerConfig, breaker, without_breaker, "the circuit breaker";
        rate_limit: RateLimitConfig, rate_limit, without_rate_limit, "the rate limit";
        concurrency: ConcurrencyConfig, concurrency, without_concurrency, "the fixed concurrency limit";
        adaptive: AdaptiveConfig, adaptive, without_adaptive, "adaptive concurrency";
        retry: RetryConfig, retry, without_retry, "retries";
        hedge: HedgeConfig, hedge, without_hedge, "hedging of idempotent reads";
        timeout: TimeoutConfig, timeout, without_timeout, "per-attempt timeouts and the deadline";
        server_trace: ServerTraceConfig, server_trace, without_server_trace, "server-side tracing of sampled requests (see [`server_trace`](crate::server_trace))";
    }

    /// The session server traces are read through (`system_traces`):
    /// needed when the stack is built with [`build`](Self::build) on a
    /// driver that is not a plain [`DriverService`]; without it,
    /// [`build_on`](Self::build_on) and `build(DriverService)` use the
    /// driver's session (given, it may be a session of its own for the
    /// trace reads).
    ///
    /// The requests whose text names no keyspace are labelled with the
    /// keyspace of the moment of the session they run on (the gate calls
    /// [`RequestMeta::label_session_keyspace`](tower_cql_core::RequestMeta::label_session_keyspace)):
    /// a plain [`DriverService`]'s own session, whatever is given here;
    /// for another driver, the session given here, so give it the session
    /// that driver runs on.
    pub fn server_trace_session(mut self, session: Arc<scylla::client::session::Session>) -> Self {
        self.server_trace_session = Some(session);
        self
    }

    /// Sheds requests when the limits below are full instead of queueing:
    /// the limits are built `for_load_shed` (their `poll_ready` is pending
    /// while they have no capacity now, see
    /// [`ConcurrencyLimitLayer::for_load_shed`]), and the load shedder
    /// above them refuses what they are not ready for. It needs a limit
    /// that would make a request wait, to shed for: a concurrency limit,
    /// or a rate limit in `Wait` mode with a `max_wait` above zero (one
    /// that never lets a request wait refuses it itself, `RateLimited`);
    /// without one the stack is refused when built.
    ///
    /// Nothing waits then, so the concurrency limits' queue must be off:
    /// a `max_queue` above 0 or a `queue_timeout` on the fixed or the
    /// adaptive limit is refused when the stack is built (give them
    /// `max_queue: 0, queue_timeout: None`), naming the field. The rate
    /// limit's `max_wait` counts only as zero or not (`Wait` with a
    /// non-zero `max_wait`: a request with no token is shed; `Reject`,
    /// or a zero `max_wait`: the rate limit refuses it itself,
    /// `RateLimited`); a TOML configuration, where it is a key given or
    /// not, refuses `max_wait_ms` above 0 (see
    /// [`stack_config`](crate::stack_config)).
    pub fn load_shed(mut self, on: bool) -> Self {
        self.load_shed = on;
        self
    }

    /// The collector set the layers emit into.
    pub fn collectors(&self) -> &Collectors {
        &self.collectors
    }

    /// Validates every configuration ([`validate`](Self::validate)) and
    /// makes the layers.
    pub fn layers(&self) -> Result<StackLayers, ConfigError> {
        let c = &self.collectors;
        self.validate()?;
        let retry = self.retry.clone().map(|r| RetryLayer::new(r, c.clone()));
        // one budget for retries and speculative attempts: the retry
        // layer's, built once above (unless the hedge config asks for one
        // of its own)
        let hedge = match (&self.hedge, &retry) {
            (Some(h), Some(r)) => Some(HedgeLayer::inside(h.clone(), c.clone(), r)),
            (Some(h), None) => Some(HedgeLayer::new(h.clone(), c.clone())),
            (None, _) => None,
        };
        // under a load shedder a limit says "not ready" rather than letting
        // a request wait, so that the shedder refuses it
        let shed = self.load_shed;
        let server_trace = match (self.server_trace, &self.server_trace_session) {
            (Some(st), Some(session)) if st.is_on() => {
                Some(ServerTracer::new(st, session.clone(), c.clone()))
            }
            (Some(st), None) if st.is_on() => {
                return Err(ConfigError::new(
                    "server_trace",
                    "server tracing needs the session to read system_traces through: build the stack with build_on(session) or build(DriverService), or give it with server_trace_session(session)",
                ));
            }
            _ => None,
        };
        Ok(StackLayers {
            trace: self.trace.clone().map(TraceLayer::new),
            metrics: self.metrics.clone().map(|m| {
                let l = MetricsLayer::new(m, c.clone());
                match server_trace {
                    Some(t) => l.with_server_trace(t),
                    None => l,
                }
            }),
            load_shed: shed.then(|| LoadShedLayer::new(c.clone())),
            breaker: self.breaker.map(|b| CircuitBreakerLayer::new(b, c.clone())),
            rate_limit: self.rate_limit.map(|r| {
                let l = RateLimitLayer::new(r, c.clone());
                if shed { l.for_load_shed() } else { l }
            }),
            concurrency: self.concurrency.map(|r| {
                let l = ConcurrencyLimitLayer::new(r, c.clone());
                if shed { l.for_load_shed() } else { l }
            }),
            adaptive: self.adaptive.map(|r| {
                let l = AdaptiveConcurrencyLayer::new(r, c.clone());
                if shed { l.for_load_shed() } else { l }
            }),
            retry,
            hedge,
            attempt_trace: self.trace.as_ref().map(AttemptTraceLayer::with_config),
            timeout: self.timeout.map(TimeoutLayer::new),
        })
    }

    /// Checks every configuration, each with its own `validate()`, and the
    /// cross-layer rules (a fixed and an adaptive concurrency limit
    /// together are refused, load shedding needs a limit to shed for, one
    /// that would make a request wait: a concurrency limit, or a rate
    /// limit in `Wait` mode with a `max_wait` above zero, and under load
    /// shedding a concurrency limit has no queue; a hedge's delay must be
    /// shorter than the per-attempt timeout):
    /// the one place a stack's settings are judged. The layers'
    /// constructors, called after it, cannot fail.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.concurrency.is_some() && self.adaptive.is_some() {
            return Err(ConfigError::new(
                "stack.concurrency",
                "a fixed and an adaptive concurrency limit are both set: keep one",
            ));
        }
        // a rate limit that never lets a request wait refuses it itself
        let waits_for_a_token = self
            .rate_limit
            .is_some_and(|r| !r.mode.max_wait().is_zero());
        if self.load_shed
            && self.concurrency.is_none()
            && self.adaptive.is_none()
            && !waits_for_a_token
        {
            let message = if self.rate_limit.is_some() {
                "load shedding is on but nothing is set to shed for: the only limit, the rate limit, never lets a request wait (mode Reject, or Wait with a zero max_wait), so it refuses a request with no token itself (RateLimited). Give the rate limit mode Wait with a max_wait above zero (a request with no token is then shed), add a concurrency limit, or turn load shedding off"
            } else {
                "load shedding is on but no rate or concurrency limit is set to shed for"
            };
            return Err(ConfigError::new("stack.load_shed", message));
        }
        // (before each limit's own rules: under load shedding, a queue
        // setting is first of all unused)
        if self.load_shed {
            if let Some(c) = &self.concurrency {
                no_queue_under_load_shed(
                    ["concurrency.max_queue", "concurrency.queue_timeout"],
                    c.max_queue,
                    c.queue_timeout,
                )?;
            }
            if let Some(a) = &self.adaptive {
                no_queue_under_load_shed(
                    ["adaptive.max_queue", "adaptive.queue_timeout"],
                    a.max_queue,
                    a.queue_timeout,
                )?;
            }
        }
        if let Some(t) = &self.trace {
            t.validate()?;
        }
        if let Some(t) = &self.server_trace {
            t.validate()?;
            if t.is_on() && self.metrics.is_none() {
                return Err(ConfigError::new(
                    "stack.server_trace",
                    "server tracing is run by the metrics layer (it sees each request begin and end): turn metrics back on, or server tracing off",
                ));
            }
        }
        if let Some(m) = &self.metrics {
            m.validate()?;
        }
        if let Some(b) = &self.breaker {
            b.validate()?;
        }
        if let Some(r) = &self.rate_limit {
            r.validate()?;
        }
        if let Some(r) = &self.concurrency {
            r.validate()?;
        }
        if let Some(r) = &self.adaptive {
            r.validate()?;
        }
        if let Some(r) = &self.retry {
            r.validate()?;
        }
        if let Some(h) = &self.hedge {
            h.validate()?;
        }
        if let Some(t) = &self.timeout {
            t.validate()?;
        }
        if let (Some(h), Some(t)) = (&self.hedge, &self.timeout) {
            hedges_before_the_timeout(h, t)?;
        }
        Ok(())
    }

    /// Builds the stack around `driver` (usually a
    /// [`tower_cql_core::DriverService`]; wrap it in your own layers first
    /// to insert them innermost, and wrap [`Stack::service`] to insert them
    /// outermost). The stack's events go to one set, this builder's
    /// collectors, whatever collectors the driver service was built with:
    /// a [`DriverService`] given here with no clone of it kept elsewhere
    /// adopts them ([`DriverService::adopt_collectors`]; so does
    /// [`build_on`](Self::build_on)'s), and otherwise every request
    /// carries them from the stack's gate to the driver service, which
    /// emits its attempt events there.
    ///
    /// Whatever is switched on, the stack is one concrete type,
    /// [`StackService<S>`], not boxed: a layer that is off is absent from
    /// the request's path or present as its pass-through (see
    /// [`StackLayers::service`] and [`toggle`](crate::toggle)), which
    /// only forwards to the layer inside it. No layer is boxed: the stack's
    /// service is small to clone (the full composition's, several times
    /// the lean one's, is boxed whole, so a clone of it allocates), and a
    /// request's state is in one box (the lean composition's; the full
    /// one's future is boxed whole), so what the caller holds and moves is
    /// a pointer, not ~700 bytes. A layer that is off costs neither a
    /// clock read, an atomic, an allocation, an event nor a span. To name the
    /// type, use [`SessionStack`] (built on a [`DriverService`]) or
    /// [`Stack::boxed`] (one [`BoxService`], whatever is inside).
    pub fn build<S>(mut self, mut driver: S) -> Result<Stack<StackService<S>>, ConfigError>
    where
        S: tower_service::Service<CqlRequest, Response = CqlResponse, Error = CqlError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        // A driver service given as it is: its session serves server
        // tracing (unless one was set), and, when no clone of it is kept
        // elsewhere, it emits into the stack's collectors itself, so the
        // requests need not carry them to it.
        let mut adopted = false;
        // The session whose keyspace labels the requests whose text names
        // none: the one the requests run on. Only for a driver that is not
        // a plain driver service is that the one given for server tracing.
        let mut runs_requests = None;
        if let Some(d) = (&mut driver as &mut dyn std::any::Any).downcast_mut::<DriverService>() {
            if self.server_trace_session.is_none() {
                self.server_trace_session = Some(d.session().clone());
            }
            runs_requests = Some(d.session().clone());
            adopted = d.adopt_collectors(&self.collectors);
        }
        let l = self.layers()?;
        let server_trace = l
            .metrics
            .as_ref()
            .and_then(MetricsLayer::server_tracer)
            .map(ServerTracer::handle);
        let gate = match &server_trace {
            // the fetcher is drained before the collectors' last flush
            Some(h) => {
                let h = h.clone();
                Gate::with_collectors_and_drain(self.collectors.clone(), move || h.drain())
            }
            None => Gate::with_collectors(self.collectors.clone()),
        };
        let gate = if adopted { gate.adopted() } else { gate };
        // (the driver service's session, or the one given for server
        // tracing when the driver is wrapped)
        let gate = match runs_requests.or(self.server_trace_session) {
            Some(session) => gate.labelling_session_keyspace(session),
            None => gate,
        };
        Ok(Stack {
            service: gate.wrap(l.service(driver)),
            gate,
            collectors: self.collectors,
            server_trace,
        })
    }
}

/// Under load shedding a concurrency limit (fixed or adaptive: `fields`
/// names its `max_queue` and `queue_timeout`) lets no request wait, so a
/// queue or a queue timeout would be unused: refused, saying what to do.
fn no_queue_under_load_shed(
    [max_queue_field, timeout_field]: [&'static str; 2],
    max_queue: usize,
    queue_timeout: Option<std::time::Duration>,
) -> Result<(), ConfigError> {
    let unused = if max_queue != 0 {
        (
            max_queue_field,
            format!("is {max_queue} requests that may wait for a slot"),
        )
    } else if let Some(t) = queue_timeout {
        (
            timeout_field,
            format!("is {t:?}, the longest a request waits in the queue"),
        )
    } else {
        return Ok(());
    };
    Err(ConfigError::new(
        unused.0,
        format!(
            "{}, but load shedding is on (load_shed(true)), where no request waits: a request the limit cannot admit at once is refused (Shed). To shed, set max_queue: 0 and queue_timeout: None; to let requests wait, turn load shedding off",
            unused.1
        ),
    ))
}

/// Refuses a hedge delay that the per-attempt timeout `timeout` always
/// cuts short: the timeout is inside the hedge, so an attempt not
/// answered by then has failed, and a race whose only attempt failed
/// ends before a delay at or beyond it comes. A fixed delay, or a
/// percentile's `min` (the shortest it can be), not shorter than the
/// timeout hedges no read at all. (A percentile whose `max` is beyond it
/// hedges once latencies are known, and is accepted.)
fn hedges_before_the_timeout(
    hedge: &HedgeConfig,
    timeout: &TimeoutConfig,
) -> Result<(), ConfigError> {
    use crate::hedge::HedgeDelay;
    let Some(per_attempt) = timeout.per_attempt else {
        return Ok(());
    };
    let (field, shortest) = match hedge.delay {
        HedgeDelay::Fixed(d) => ("hedge.delay", d),
        HedgeDelay::Percentile { min, .. } => ("hedge.delay.min", min),
    };
    if shortest < per_attempt {
        return Ok(());
    }
    Err(ConfigError::new(
        field,
        format!(
            "must be shorter than timeout.per_attempt ({per_attempt:?}), got {shortest:?}: an attempt not answered by then is timed out before the speculative attempt is due, so no read would ever be hedged; shorten the delay, lengthen the per-attempt timeout, or leave hedging off"
        ),
    ))
}

impl StackBuilder {
    /// Builds the whole thing on a scylla `Session`: the
    /// [`DriverService`] (driver retries off, statements prepared once and
    /// cached) and the stack around it, every event going to this
    /// builder's collectors. For driver service options, build it by hand
    /// and use [`build`](Self::build), which sends its events to the same
    /// set.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use tower_cql_middleware::prelude::*;
    ///
    /// let session = scylla::client::session_builder::SessionBuilder::new()
    ///     .known_node("127.0.0.1:9042")
    ///     .build()
    ///     .await?;
    /// let memory = Arc::new(InMemoryCollector::new());
    /// let stack = StackBuilder::new(Collectors::with([memory.clone()])).build_on(session)?;
    /// let get_user = Statement::new("SELECT name FROM app.users WHERE id = ?").idempotent(true);
    /// let names: Vec<(String,)> = stack.execute(&get_user, (42i64,)).await?.rows()?;
    /// stack.close().await;
    /// # Ok(()) }
    /// ```
    pub fn build_on(
        self,
        session: impl Into<Arc<scylla::client::session::Session>>,
    ) -> Result<SessionStack, ConfigError> {
        // no collectors of its own: it adopts the stack's (see build)
        self.build(DriverService::builder(session.into()).build()?)
    }
}

impl StackLayers {
    /// The layers around `inner` in the stack's order: what
    /// [`StackBuilder::build`] wraps in its gate.
    ///
    /// When the six layers the default stack has off (load shed, the
    /// breaker, the three limits and hedging) are all `None`, they are
    /// absent from the request's path: the service is the lean
    /// composition, request span, metrics, retry, attempt span and
    /// timeout, each `None` among them as its pass-through. When any of
    /// the six is on, every layer is present, those that are `None` as
    /// their pass-throughs. Either way the order is the documented one
    /// and the type is [`StackService<S>`].
    pub fn service<S: Clone>(self, inner: S) -> StackService<S> {
        let lean = self.load_shed.is_none()
            && self.breaker.is_none()
            && self.rate_limit.is_none()
            && self.concurrency.is_none()
            && self.adaptive.is_none()
            && self.hedge.is_none();
        let composition = if lean {
            Composition::Lean(self.lean(inner))
        } else {
            Composition::Full(Box::new(self.full(inner)))
        };
        StackService { composition }
    }

    /// Every layer, those that are `None` as pass-throughs.
    fn full<S>(self, inner: S) -> Full<S> {
        let s = Toggle::new(self.timeout).layer(inner);
        let s = Toggle::new(self.attempt_trace).layer(s);
        let s = Toggle::new(self.hedge).layer(s);
        let s = Toggle::new(self.retry).layer(s);
        let s = Toggle::new(self.adaptive).layer(s);
        let s = Toggle::new(self.concurrency).layer(s);
        let s = Toggle::new(self.rate_limit).layer(s);
        let s = Toggle::new(self.breaker).layer(s);
        let s = Toggle::new(self.load_shed).layer(s);
        let s = Toggle::new(self.metrics).layer(s);
        Toggle::new(self.trace).layer(s)
    }

    /// The layers that are on in the default stack (the others must be
    /// `None`: see [`service`](Self::service)): the attempt span and the
    /// timeout as services, the three outer layers as one (see
    /// [`lean`]).
    fn lean<S: Clone>(self, inner: S) -> Lean<S> {
        let s = Toggle::new(self.timeout).layer(inner);
        let attempt = Toggle::new(self.attempt_trace).layer(s);
        lean::LeanService::new(
            Toggle::new(self.trace).layer(()).into_config(),
            Toggle::new(self.metrics).layer(()).into_on(),
            Toggle::new(self.retry).layer(()).into_shared(),
            attempt,
        )
    }
}

/// Every layer, outermost first.
type Full<S> = Trace<
    Metrics<
        LoadShed<
            CircuitBreaker<
                RateLimit<
                    ConcurrencyLimit<AdaptiveConcurrency<Retry<Hedge<AttemptTrace<Timeout<S>>>>>>,
                >,
            >,
        >,
    >,
>;

/// The layers the default stack has on: request span, metrics and retry
/// as one service (see [`lean`]) around the attempt span and the timeout.
type Lean<S> = lean::LeanService<AttemptTrace<Timeout<S>>>;

/// The stack around a service `S`, outermost first (see
/// [`StackLayers::service`]): one concrete type whatever is switched on,
/// with the six layers the default stack has off absent from the
/// request's path while all six are off.
#[derive(Clone, Debug)]
pub struct StackService<S> {
    composition: Composition<S>,
}

#[derive(Clone, Debug)]
enum Composition<S> {
    Lean(Lean<S>),
    // boxed: the full composition's service is several times the size of
    // the lean one's, and an enum is as large as its largest variant (a
    // clone per request, and every future that holds one, copy it all)
    Full(Box<Full<S>>),
}

impl<S> StackService<S> {
    /// Whether the six layers the default stack has off are absent from
    /// this service's path (all six were off when it was built).
    pub fn is_lean(&self) -> bool {
        matches!(self.composition, Composition::Lean(_))
    }
}

impl<S> tower_service::Service<CqlRequest> for StackService<S>
where
    Lean<S>: tower_service::Service<CqlRequest, Response = CqlResponse, Error = CqlError>,
    Full<S>: tower_service::Service<CqlRequest, Response = CqlResponse, Error = CqlError>,
{
    type Response = CqlResponse;
    type Error = CqlError;
    type Future = StackFuture<
        <Lean<S> as tower_service::Service<CqlRequest>>::Future,
        <Full<S> as tower_service::Service<CqlRequest>>::Future,
    >;

    #[inline(always)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        match &mut self.composition {
            Composition::Lean(s) => s.poll_ready(cx),
            Composition::Full(s) => s.poll_ready(cx),
        }
    }

    #[inline(always)]
    fn call(&mut self, request: CqlRequest) -> Self::Future {
        let kind = match &mut self.composition {
            Composition::Lean(s) => FutureKind::Lean {
                future: s.call(request),
            },
            Composition::Full(s) => FutureKind::Full {
                future: Box::pin(s.call(request)),
            },
        };
        StackFuture { kind }
    }
}

pin_project! {
    /// The response future of [`StackService`]: the lean or the full
    /// composition's.
    pub struct StackFuture<L, F> {
        #[pin]
        kind: FutureKind<L, F>,
    }
}

pin_project! {
    #[project = FutureKindProj]
    enum FutureKind<L, F> {
        Lean { #[pin] future: L },
        // boxed: the full composition's future is larger than the lean
        // one's, and an enum is as large as its largest variant
        Full { future: Pin<Box<F>> },
    }
}

impl<L, F> fmt::Debug for StackFuture<L, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let composition = match self.kind {
            FutureKind::Lean { .. } => "lean",
            FutureKind::Full { .. } => "full",
        };
        f.debug_struct("StackFuture")
            .field("composition", &composition)
            .finish()
    }
}

impl<L, F> Future for StackFuture<L, F>
where
    L: Future<Output = Result<CqlResponse, CqlError>>,
    F: Future<Output = Result<CqlResponse, CqlError>>,
{
    type Output = Result<CqlResponse, CqlError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            FutureKindProj::Lean { future } => future.poll(cx),
            FutureKindProj::Full { future } => future.as_mut().poll(cx),
        }
    }
}

/// A type-erased, cloneable, `Send + Sync` service of CQL requests: what
/// [`Stack::boxed`] wraps a stack in, once, for code that wants one type
/// whatever the stack holds (it costs an allocation per request for the
/// response future, and one per clone).
pub type BoxService = BoxCloneSyncService<CqlRequest, CqlResponse, CqlError>;

/// The stack [`StackBuilder::build_on`] builds (and [`StackBuilder::build`]
/// around a [`DriverService`]): the type to name in a struct field.
pub type SessionStack = Stack<StackService<DriverService>>;

/// The service a [`SessionStack`] hands out ([`Stack::service`]: its
/// layers behind its gate): the type to name in a struct field, or a
/// function's parameter, that holds one.
pub type SessionService = GateService<StackService<DriverService>>;

/// A built stack: the service (clone it per task) and its shutdown gate.
#[derive(Clone)]
pub struct Stack<S> {
    service: GateService<S>,
    gate: Gate,
    collectors: Collectors,
    server_trace: Option<ServerTraceHandle>,
}

impl<S> fmt::Debug for Stack<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stack").field("gate", &self.gate).finish()
    }
}

impl<S: Clone> Stack<S> {
    /// A handle to the stack's service.
    pub fn service(&self) -> GateService<S> {
        self.service.clone()
    }
}

impl<S> Stack<S>
where
    S: tower_service::Service<CqlRequest, Response = CqlResponse, Error = CqlError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    /// The same stack behind one [`BoxService`]: one type whatever the
    /// stack holds, for an allocation per request (see [`BoxService`]).
    pub fn boxed(self) -> Stack<BoxService> {
        Stack {
            service: self.gate.wrap(BoxService::new(self.service.into_inner())),
            gate: self.gate,
            collectors: self.collectors,
            server_trace: self.server_trace,
        }
    }

    /// Executes `statement` with `values` through the stack: the call a
    /// scylla user knows (`session.execute_unpaged(&prepared, values)`),
    /// with every layer around it. For per-request options (consistency,
    /// timeout, page size), build the request with
    /// [`Statement::request`](tower_cql_core::Statement::request) and use
    /// [`call`](Self::call).
    pub async fn execute(
        &self,
        statement: &Statement,
        values: impl SerializeRow + Send + Sync + 'static,
    ) -> Result<CqlResponse, CqlError> {
        self.call(statement.request().bind(values)).await
    }

    /// Sends `request` through the stack (waiting until it is ready).
    pub async fn call(&self, request: CqlRequest) -> Result<CqlResponse, CqlError> {
        tower::ServiceExt::oneshot(self.service(), request).await
    }

    /// Starts a paged read of `req` (set its page size with
    /// [`CqlRequest::page_size`]), decoding rows as `T`. Every page is a
    /// request through the whole stack: the gate, the limits, the
    /// breaker, retry (an idempotent read's failed page is retried with its
    /// paging state), the timeout, metrics (a request event per page) and
    /// tracing (a `cql.page` span per page, under the stream's
    /// `cql.stream` span). The next page is in flight while the current
    /// one is read, never more. [`close`](Self::close) waits for the page
    /// in flight (which finishes on its own: `close` does not wait for the
    /// stream's owner to read on; its page event is in close's flush),
    /// then ends the stream, its completion event in that flush (failed,
    /// `ShutDown`, with the pages fetched and the rows handed out): the
    /// stream hands out no further row and fetches no further page, its
    /// next poll gets `ShutDown`, then `None`. Resolves once the first
    /// page is in; fails (no stream) when it failed, or with `ShutDown`
    /// when the stack is closed.
    ///
    /// ```no_run
    /// # async fn demo(stack: tower_cql_middleware::stack::SessionStack) -> Result<(), tower_cql_core::CqlError> {
    /// use futures::TryStreamExt;
    /// use tower_cql_core::Statement;
    ///
    /// let scan = Statement::new("SELECT c, v FROM ks.t WHERE k = ?").idempotent(true);
    /// let mut rows = stack.stream::<(i32, String)>(scan.request().bind((1,)).page_size(100)).await?;
    /// while let Some((c, v)) = rows.try_next().await? {
    ///     println!("{c} {v}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn stream<T>(&self, req: CqlRequest) -> Result<RowStream<T, GateService<S>>, CqlError>
    where
        T: for<'f, 'm> DeserializeRow<'f, 'm> + Send + Unpin + 'static,
    {
        RowStream::start_in(&self.gate, self.service(), self.collectors.clone(), req).await
    }
}

impl<S> Stack<S> {
    /// The shutdown gate.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The server tracer's counters, when server tracing is on.
    pub fn server_traces(&self) -> Option<&ServerTraceHandle> {
        self.server_trace.as_ref()
    }

    /// Stops admitting requests, waits for those in flight, ends the
    /// streams still open (see [`stream`](Self::stream)), flushes the
    /// collectors. Idempotent, and safe to cancel (e.g. with
    /// `tokio::time::timeout`): the flush goes on without it, and a later
    /// `close()` waits for that same flush. See [`Gate::close`].
    pub async fn close(&self) {
        self.gate.close().await
    }

    /// [`Stack::close`] with a limit, kept even when a collector's flush
    /// never finishes (an exporter waiting on an endpoint that does not
    /// answer). `Err(n)` if not closed after `limit`: `n` requests still in
    /// flight, or `0` when only the flush was still running. See
    /// [`Gate::close_timeout`].
    pub async fn close_timeout(&self, limit: std::time::Duration) -> Result<(), u64> {
        self.gate.close_timeout(limit).await
    }

    /// Whether the stack still admits requests.
    pub fn is_open(&self) -> bool {
        self.gate.state() == GateState::Open
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tower::ServiceExt;
    use tower_cql_core::event::{RequestEvent, RetryEvent, ThrottleEvent};
    use tower_cql_core::{Collector, Collectors, ErrorKind, Statement};

    use super::*;
    use crate::rate_limit::RateLimitMode;
    use crate::retry::mock::{Mock, Step, fail, fail_with, ok};

    const MS: Duration = Duration::from_millis(1);

    /// Keeps the request, retry and throttle events, in order, as text; a
    /// request event's start as the time since the first one's (two runs
    /// of one script start at different instants).
    #[derive(Default)]
    struct Log(Mutex<Vec<String>>, Mutex<Option<std::time::Instant>>);

    impl Log {
        fn events(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }

        fn push(&self, e: Event<'_>) {
            self.0.lock().unwrap().push(format!("{:?}", e.to_owned()));
        }
    }

    impl Collector for Log {
        fn on_request(&self, e: &RequestEvent<'_>) {
            let mut e = *e;
            let started = e.started.take().expect("the stack says when it started");
            let first = *self.1.lock().unwrap().get_or_insert(started);
            self.push(Event::Request(e));
            let since = started.saturating_duration_since(first);
            self.0.lock().unwrap().push(format!("started +{since:?}"));
        }
        fn on_retry(&self, e: &RetryEvent<'_>) {
            self.push(Event::Retry(*e));
        }
        fn on_throttle(&self, e: &ThrottleEvent<'_>) {
            self.push(Event::Throttle(*e));
        }
    }

    use tower_cql_core::Event;

    /// Keeps every span's name, fields and recorded outcome, in the order
    /// they close.
    #[derive(Clone, Default)]
    struct Spans(Arc<Mutex<Vec<String>>>);

    struct Fields(String);

    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
            self.0.push_str(&format!(" {}={:?}", field.name(), value));
        }
    }

    impl<S> tracing_subscriber::Layer<S> for Spans
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            id: &tracing::span::Id,
            ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut f = Fields(attrs.metadata().name().to_string());
            attrs.record(&mut f);
            ctx.span(id).unwrap().extensions_mut().insert(f);
        }

        fn on_record(
            &self,
            id: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let span = ctx.span(id).unwrap();
            let mut ext = span.extensions_mut();
            let f = ext.get_mut::<Fields>().unwrap();
            f.0.push_str(" |");
            values.record(f);
        }

        fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
            let span = ctx.span(&id).unwrap();
            let parent = span.parent().map(|p| p.name()).unwrap_or("-");
            let f = span.extensions().get::<Fields>().unwrap().0.clone();
            self.0.lock().unwrap().push(format!("{f} (in {parent})"));
        }
    }

    /// Two requests that succeed, one after a retry; one that runs out of
    /// attempts; one that fails without a retry; one whose first attempt
    /// the per-attempt timeout cuts short; one dropped by its caller while
    /// its attempt runs.
    fn script() -> Vec<Step> {
        vec![
            ok(MS),
            // (naming its node: the retry makes the request's route hint)
            fail_with(
                CqlError::new(ErrorKind::Overloaded, "scripted overloaded")
                    .with_node("127.0.0.9:9042".parse().unwrap()),
                2 * MS,
            ),
            ok(3 * MS),
            fail(ErrorKind::Unavailable, MS),
            fail(ErrorKind::Overloaded, MS),
            fail(ErrorKind::Overloaded, MS),
            fail(ErrorKind::Overloaded, MS),
            fail(ErrorKind::Syntax, MS),
            ok(30 * MS),
            ok(MS),
            ok(50 * MS),
        ]
    }

    /// The outcomes, events and spans of the script's requests through one
    /// composition of `builder`'s layers.
    async fn observe(
        lean: bool,
        builder: fn(Collectors) -> StackBuilder,
    ) -> (Vec<String>, Vec<String>, Vec<String>) {
        use tracing_subscriber::layer::SubscriberExt;
        // the backoff's jitter draws from the thread's generator: the same
        // draws for both compositions
        fastrand::seed(17);
        let spans = Spans::default();
        tower_cql_testkit::tracing_setup::global_registry();
        let _subscriber =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
        let log = Arc::new(Log::default());
        let layers = builder(Collectors::with([log.clone()])).layers().unwrap();
        let mock = Mock::new(script());
        let composition = if lean {
            Composition::Lean(layers.lean(mock))
        } else {
            Composition::Full(Box::new(layers.full(mock)))
        };
        let svc = StackService { composition };
        assert_eq!(svc.is_lean(), lean);
        let get = Statement::new("SELECT v FROM ks.t WHERE k = ?")
            .operation("get")
            .idempotent(true);
        let mut outcomes = Vec::new();
        for k in 0..6 {
            let call = svc.clone().oneshot(get.request().bind((k,)));
            // the last caller stops waiting before the per-attempt timeout
            let wait = if k == 5 { 10 * MS } else { 1000 * MS };
            let out = match tokio::time::timeout(wait, call).await {
                Ok(out) => out,
                Err(_) => {
                    outcomes.push("dropped".to_string());
                    continue;
                }
            };
            outcomes.push(match out {
                Ok(r) => format!("ok after {} attempts", r.info().attempts),
                Err(e) => format!("{} after {} attempts", e.kind(), e.attempts()),
            });
        }
        let spans = spans.0.lock().unwrap().clone();
        (outcomes, log.events(), spans)
    }

    /// The default stack with a per-attempt timeout the script's slow
    /// attempt exceeds.
    fn timed(c: Collectors) -> StackBuilder {
        StackBuilder::new(c).timeout(crate::timeout::TimeoutConfig {
            per_attempt: Some(20 * MS),
            honour_deadline: true,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_lean_composition_observes_what_the_full_one_does() {
        let lean = observe(true, timed).await;
        let full = observe(false, timed).await;
        assert_eq!(
            lean.0,
            [
                "ok after 1 attempts",
                "ok after 2 attempts",
                "overloaded after 4 attempts",
                "syntax after 1 attempts",
                "ok after 2 attempts",
                "dropped"
            ],
            "{:#?}",
            lean.1
        );
        assert!(lean.1.len() >= 6 + 4, "{:#?}", lean.1);
        assert!(lean.2.len() >= 6 + 10, "{:#?}", lean.2);
        assert_eq!(lean, full);
    }

    /// With retry off (one attempt, no budget), and with the metrics and
    /// the spans off, the three outer layers' pass-throughs: the same.
    #[tokio::test(start_paused = true)]
    async fn the_lean_composition_with_layers_off_observes_what_the_full_one_does() {
        let cases: [fn(Collectors) -> StackBuilder; 3] = [
            |c| timed(c).without_retry(),
            |c| timed(c).without_metrics(),
            |c| timed(c).without_trace(),
        ];
        for case in cases {
            let lean = observe(true, case).await;
            let full = observe(false, case).await;
            assert_eq!(lean, full);
        }
    }

    /// Under load shedding no request waits for a concurrency limit (one
    /// that would is shed), so a queue or a queue timeout given to the
    /// builder would be silently unused: the stack is refused when built,
    /// naming the field and what to do, as the TOML configuration refuses
    /// the same keys. The same limits without load shedding, or with no
    /// queue, are accepted.
    #[test]
    fn a_wait_setting_load_shedding_leaves_unused_is_refused_naming_it() {
        let shed = || StackBuilder::new(Collectors::new()).load_shed(true);
        let secs = Some(Duration::from_secs(30));
        let fixed = |max_queue, queue_timeout| ConcurrencyConfig {
            max_in_flight: 4,
            max_queue,
            queue_timeout,
        };
        let adaptive = |max_queue, queue_timeout| AdaptiveConfig {
            max_queue,
            queue_timeout,
            ..AdaptiveConfig::default()
        };
        for (builder, field) in [
            (shed().concurrency(fixed(10, secs)), "concurrency.max_queue"),
            (shed().concurrency(fixed(10, None)), "concurrency.max_queue"),
            (
                shed().concurrency(fixed(0, secs)),
                "concurrency.queue_timeout",
            ),
            (shed().adaptive(adaptive(10, None)), "adaptive.max_queue"),
            (shed().adaptive(adaptive(0, secs)), "adaptive.queue_timeout"),
        ] {
            let err = match builder.validate() {
                Ok(()) => panic!("{field}: accepted under load shedding"),
                Err(e) => e,
            };
            assert_eq!(err.field, field, "{err}");
            assert!(err.message.contains("load shedding"), "{err}");
            let err = builder
                .build(tower::service_fn(|_: CqlRequest| async {
                    Ok::<_, CqlError>(CqlResponse::synthetic(Default::default()))
                }))
                .map(|_| ())
                .unwrap_err();
            assert_eq!(err.field, field, "build: {err}");
        }
        // no queue under load shedding; any queue without it: accepted
        assert!(shed().concurrency(fixed(0, None)).validate().is_ok());
        assert!(shed().adaptive(adaptive(0, None)).validate().is_ok());
        let plain = StackBuilder::new(Collectors::new());
        assert!(
            plain
                .clone()
                .concurrency(fixed(10, secs))
                .validate()
                .is_ok()
        );
        assert!(plain.adaptive(AdaptiveConfig::default()).validate().is_ok());
    }

    /// Load shedding sheds the requests a limit would make wait. A rate
    /// limit that never lets a request wait (`Reject`, or `Wait` with a
    /// zero `max_wait`) refuses them itself (`RateLimited`), so with no
    /// other limit the load shedder would shed nothing: the stack is
    /// refused when built, naming load shedding and what to do, as it is
    /// with no limit at all.
    #[test]
    fn load_shedding_with_nothing_that_waits_is_refused() {
        let rate = |mode| RateLimitConfig {
            rate_per_second: 10.0,
            burst: 1,
            mode,
        };
        let never_waits = [
            RateLimitMode::Reject,
            RateLimitMode::Wait {
                max_wait: Duration::ZERO,
            },
        ];
        for mode in never_waits {
            let b = StackBuilder::new(Collectors::new())
                .load_shed(true)
                .rate_limit(rate(mode));
            let err = match b.validate() {
                Ok(()) => panic!("{mode:?}: accepted, and nothing is ever shed"),
                Err(e) => e,
            };
            assert_eq!(err.field, "stack.load_shed", "{err}");
            assert!(err.message.contains("Reject"), "{err}");
            // with a concurrency limit to shed for, accepted
            let limit = ConcurrencyConfig {
                max_in_flight: 4,
                max_queue: 0,
                queue_timeout: None,
            };
            assert_eq!(b.concurrency(limit).validate(), Ok(()));
        }
        // a rate limit that lets requests wait: shed instead, accepted
        let waits = RateLimitMode::Wait {
            max_wait: Duration::from_millis(100),
        };
        let b = StackBuilder::new(Collectors::new()).load_shed(true);
        assert_eq!(b.rate_limit(rate(waits)).validate(), Ok(()));
    }

    /// The hedge is outside the per-attempt timeout: an attempt not
    /// answered by `timeout.per_attempt` is cut then, and a race whose
    /// only attempt failed ends. A hedge delay at or beyond the timeout
    /// (a fixed one, or a percentile's `min`, the shortest it can be)
    /// hedges no read ever, while the stack says hedging is on: refused,
    /// naming the field. Accepted before, silently.
    #[test]
    fn a_hedge_delay_the_per_attempt_timeout_cuts_short_is_refused() {
        use crate::hedge::HedgeDelay;
        use crate::stack_config::StackConfig;
        use crate::timeout::TimeoutConfig;
        let c = Collectors::new();
        let timeout = TimeoutConfig {
            per_attempt: Some(50 * MS),
            honour_deadline: true,
        };
        let percentile = |min, max| HedgeDelay::Percentile {
            percentile: 0.95,
            min,
            max,
        };
        let built = |delay| {
            StackBuilder::new(c.clone())
                .hedge(HedgeConfig {
                    delay,
                    ..HedgeConfig::default()
                })
                .timeout(timeout)
                .layers()
        };
        for (delay, field) in [
            (HedgeDelay::Fixed(50 * MS), "hedge.delay"),
            (HedgeDelay::Fixed(80 * MS), "hedge.delay"),
            (percentile(50 * MS, 100 * MS), "hedge.delay.min"),
            (percentile(60 * MS, 60 * MS), "hedge.delay.min"),
        ] {
            let err = match built(delay) {
                Ok(_) => panic!("{delay:?} with a 50 ms per-attempt timeout: accepted"),
                Err(e) => e,
            };
            assert_eq!(err.field, field, "{delay:?}: {err}");
            assert!(err.message.contains("timeout.per_attempt"), "{err}");
        }
        let err = StackConfig::from_toml(
            "[hedge]\nenabled = true\ndelay_ms = 50\n[timeout]\nper_attempt_ms = 50",
        )
        .unwrap()
        .into_builder(c.clone())
        .unwrap_err();
        assert_eq!(err.field, "hedge.delay", "{err}");
        // a delay shorter than the timeout hedges; so does a percentile
        // whose cap is beyond it, once latencies are known; and without a
        // per-attempt timeout any delay does
        for delay in [HedgeDelay::Fixed(49 * MS), percentile(MS, 100 * MS)] {
            built(delay).unwrap_or_else(|e| panic!("{delay:?}: {e}"));
        }
        StackBuilder::new(c)
            .hedge(HedgeConfig {
                delay: HedgeDelay::Fixed(80 * MS),
                ..HedgeConfig::default()
            })
            .layers()
            .unwrap();
    }

    #[test]
    fn the_default_stack_is_lean_and_any_of_the_six_makes_it_full() {
        let noop = tower::service_fn(|_: CqlRequest| async {
            Ok::<_, CqlError>(CqlResponse::synthetic(Default::default()))
        });
        let c = Collectors::new();
        let built = |b: StackBuilder| b.layers().unwrap().service(noop).is_lean();
        assert!(built(StackBuilder::new(c.clone())));
        assert!(built(
            StackBuilder::new(c.clone())
                .without_retry()
                .without_trace()
                .without_metrics()
                .without_timeout()
        ));
        let limit = ConcurrencyConfig::default();
        assert!(!built(StackBuilder::new(c.clone()).concurrency(limit)));
        assert!(!built(
            StackBuilder::new(c.clone()).adaptive(AdaptiveConfig::default())
        ));
        assert!(!built(
            StackBuilder::new(c.clone()).breaker(BreakerConfig::default())
        ));
        assert!(!built(
            StackBuilder::new(c.clone()).hedge(HedgeConfig::default())
        ));
        assert!(!built(
            StackBuilder::new(c.clone())
                .rate_limit(RateLimitConfig::default())
                .load_shed(true)
        ));
        assert!(!built(
            StackBuilder::new(c).rate_limit(RateLimitConfig::default())
        ));
    }
}
