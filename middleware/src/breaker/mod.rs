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
//! );
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
//! );
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
//! A refused request gives back whatever the inner service reserved for
//! it in `poll_ready` (the slot or token of a limit built
//! `for_load_shed`): the breaker drops its ready inner service for a
//! clone, which holds nothing, so the inner service must be `Clone`.
//!
//! While no node's breaker is open (the common case) admission costs one
//! atomic load beyond the table's breaker, and the hint excludes nothing.
//! A hint excludes up to eight nodes; with more open at once, the rest
//! stay in the driver's plan. The exclusions need an inner service that
//! reads route hints: the driver service does (with
//! `keep_driver_retries`, for the statements it prepares and unprepared
//! text, not for a statement the caller prepared or a batch, which keep
//! their own execution profile); another service sends the request
//! wherever it would. Outside the retry
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
//!   `half_open_probes` successes close it (with an empty window). Only
//!   probes are heard: the outcome of a request sent before it opened
//!   (or of one let in without a probe) neither closes nor re-opens it,
//!   as an open breaker ignores such outcomes too. A probe
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
//!
//! [`RouteHint`]: tower_cql_core::routing::RouteHint
//! [`NodeObserver`]: tower_cql_core::routing::NodeObserver
//! [`NodeVerdict`]: tower_cql_core::classify::NodeVerdict
//! [`Registry`]: tower_cql_core::registry::Registry

pub mod future;
mod layer;
mod routing;
mod state;
mod target;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
mod window;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_cql_core::event::ShedEvent;
use tower_cql_core::{Collectors, CqlError, CqlRequest, CqlResponse, ErrorKind, Event};
use tower_service::Service;

use crate::config::ConfigError;
use crate::refusal::release;

pub use self::future::ResponseFuture;
pub use self::layer::CircuitBreakerLayer;
pub use tower_cql_core::BreakerState;

use self::state::COUNT_MASK;
use self::target::{Admit, Breakers, Probe, ProbeObserver};

/// Configures a [`CircuitBreakerLayer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// The share of failures in the window that opens the breaker
    /// (`0 < r <= 1`). Default 0.5.
    pub failure_rate: f64,
    /// Outcomes needed in the window before it may open (at least 1, at
    /// most 10,485,750: the failures the window counts). Default 20.
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
        // the most failures the window counts (each bucket's saturate):
        // a node failing every request never reaches more
        let most = self::window::BUCKETS as u64 * self::window::TALLY_MASK;
        if u64::from(self.min_requests) > most {
            return Err(ConfigError::new(
                "breaker.min_requests",
                format!(
                    "must be at most {most} (the failures the window counts: {} buckets of {} at most; a node failing every request would never reach more, so its breaker would never open), got {}",
                    self::window::BUCKETS,
                    self::window::TALLY_MASK,
                    self.min_requests
                ),
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
    ///
    /// # Panics
    /// If `config` is invalid (see [`BreakerConfig::validate`]).
    #[track_caller]
    pub fn new(inner: S, config: BreakerConfig, collectors: Collectors) -> CircuitBreaker<S> {
        CircuitBreakerLayer::new(config, collectors).service(inner)
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
    S: Service<CqlRequest, Response = CqlResponse, Error = CqlError> + Clone,
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
        let table = b.table(req.meta());
        let mut probes: [Option<Probe>; 2] = [None, None];
        match table.admit(b, now) {
            Admit::Refuse(why) => {
                release(&mut self.inner);
                return refuse(b, &req, why.describe(&table.name, b));
            }
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
            release(&mut self.inner);
            return refuse(b, &req, why);
        }
        // The observer is set before the call: a request holding a node's
        // probe reports that node's outcomes as the probe's.
        match &probes[1] {
            Some(probe) => hint.set_observer(Arc::new(ProbeObserver {
                breakers: breakers.clone(),
                node: probe.target.addr.expect("a node's probe"),
                generation: probe.generation,
                succeeded: Default::default(),
            })),
            None => hint.set_observer(breakers.clone()),
        }
        ResponseFuture::called(self.inner.call(req), breakers.clone(), table, hint, probes)
    }
}

/// Refuses `req` with [`ErrorKind::CircuitOpen`] (not sent), emitting the
/// shed event.
fn refuse<F>(b: &Breakers, req: &CqlRequest, why: String) -> ResponseFuture<F> {
    if b.collectors.is_active() {
        b.collectors.emit(Event::Shed(ShedEvent::new(
            req.meta(),
            ErrorKind::CircuitOpen,
            "breaker",
        )));
    }
    ResponseFuture::refused(CqlError::new(ErrorKind::CircuitOpen, why))
}

#[cfg(test)]
mod config_tests {
    use super::*;

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
            let msg = crate::config::panic_message(|| {
                CircuitBreakerLayer::new(config, Collectors::new())
            });
            assert!(msg.contains(field), "{msg}");
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

    /// The window counts at most 2^20 - 1 failures a bucket, ten buckets:
    /// a `min_requests` above that is never reached by a node failing
    /// every request, whose breaker then never opens. Refused, naming
    /// the field (accepted before); the most it can count is fine.
    #[test]
    fn a_min_requests_the_window_cannot_count_is_refused() {
        use self::window::{BUCKETS, TALLY_MASK};
        let most = u32::try_from(BUCKETS as u64 * TALLY_MASK).unwrap();
        let d = BreakerConfig::default();
        for min_requests in [most + 1, u32::MAX] {
            let err = match (BreakerConfig { min_requests, ..d }).validate() {
                Ok(()) => panic!("min_requests {min_requests}: accepted"),
                Err(e) => e,
            };
            assert_eq!(err.field, "breaker.min_requests", "{err}");
            assert!(err.message.contains(&most.to_string()), "{err}");
        }
        assert_eq!(
            BreakerConfig {
                min_requests: most,
                ..d
            }
            .validate(),
            Ok(())
        );
    }
}
