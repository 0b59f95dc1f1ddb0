//! Server-side query traces, sampled, fetched off the request path and
//! delivered to the collectors as
//! [`ServerTraceEvent`](tower_cql_core::event::ServerTraceEvent)s (and from
//! there, by `tower-cql-exporters`, as OpenTelemetry child spans of the
//! request's client span, one per node).
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_cql_core::Collectors;
//! use tower_cql_core::server_trace::ServerTraceConfig;
//! use tower_cql_middleware::stack::StackBuilder;
//!
//! # async fn demo(session: scylla::client::session::Session) -> Result<(), Box<dyn std::error::Error>> {
//! let stack = StackBuilder::new(Collectors::new())
//!     .server_trace(ServerTraceConfig {
//!         sample_ratio: 0.001,                              // 1 request in 1,000
//!         slow_threshold: Some(Duration::from_millis(250)), // and after a slow one ...
//!         trace_next: 3,                                    // ... the next 3 of its operation
//!         ..ServerTraceConfig::default()
//!     })
//!     .build_on(session)?;
//! // ... requests ...
//! stack.close().await; // pending fetches finish (or are abandoned after close_timeout)
//! let stats = stack.server_traces().unwrap().stats();
//! println!("{} traces fetched, {} skipped, {} failed", stats.fetched, stats.skipped, stats.failed);
//! # Ok(()) }
//! ```
//!
//! # How it works
//! - **Sampling** (in the request's `call`, lock-free): a request is traced
//!   when a thread-local random draw falls under `sample_ratio`, or when
//!   its operation (its operation label; without one, its statement kind,
//!   keyspace and table) is armed by the slow rule. The layer sets the
//!   protocol's tracing flag on it; the server then writes the trace to
//!   `system_traces.sessions` and `system_traces.events`.
//! - **Slow rule** (with `slow_threshold` set): a request slower than the
//!   threshold arms its operation: the next `trace_next` requests of that
//!   operation are traced. The arming lives in 64 atomic slots keyed by
//!   the operation's hash; two operations armed at once in one slot share
//!   it (the last armed wins).
//! - **Fetch**: when a traced request completes with its tracing session
//!   id, the id is queued (bounded, never waited for: when full, the trace
//!   is counted skipped). One background task takes the queue, at most
//!   `max_fetches_per_second` per second (the rest skipped) and
//!   `max_concurrent_fetches` at once, and reads the session row until the
//!   server has finished it (`duration` set; `fetch_attempts` reads,
//!   `fetch_backoff` doubling between them), then its events: two reads
//!   per trace. A failed fetch is counted, logged at `DEBUG` (target
//!   `tower_cql::server_trace`) and never reaches the request, which had
//!   completed before the fetch began. A collector that panics on the
//!   event is caught and counted by [`Collectors`](tower_cql_core::Collectors).
//! - **Close**: [`Stack::close`](crate::stack::Stack::close) drains the
//!   requests, then the fetcher (what is queued is fetched, for up to
//!   `close_timeout`; what is left then is abandoned and counted skipped),
//!   then flushes the collectors, so the last traces are exported.
//!
//! The queries read only the columns Cassandra 3.x, 4.x and Scylla all
//! have: `sessions` (`coordinator`, `duration`, `started_at`, `request`,
//! `client`, `parameters`) and `events` (`event_id`, `activity`, `source`,
//! `source_elapsed`, `thread`), at consistency `ONE`. Of `parameters`,
//! only `consistency_level` is kept: the others hold the query text and,
//! on Cassandra, the bound values of an `EXECUTE`. Activity texts are
//! sanitised
//! ([`sanitize_activity`](tower_cql_core::server_trace::sanitize_activity)).
//!
//! # Cost
//! Off (the default), the layer is a pass-through: no clock read, no
//! atomic, no allocation. On, a request costs one random draw (and, with
//! the slow rule, one atomic load and two clock reads); a traced request
//! costs the server the trace's writes (a row per step on every node
//! involved) and the stack two reads of `system_traces`.

mod fetch;
pub mod future;
mod layer;
mod sample;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_cql_core::server_trace::ServerTraceConfig;
use tower_cql_core::{CqlError, CqlRequest, CqlResponse};

pub use self::future::ResponseFuture;
pub use self::layer::ServerTraceLayer;

/// The sampler, fetcher and counters shared by a layer's services.
pub(crate) struct Shared {
    sampler: sample::Sampler,
    fetcher: fetch::Fetcher,
    counters: Arc<fetch::Counters>,
    config: ServerTraceConfig,
}

/// The server trace service; see [`ServerTraceLayer`].
#[derive(Clone)]
pub struct ServerTrace<S> {
    inner: S,
    /// `None`: a pass-through.
    on: Option<Arc<Shared>>,
}

impl<S: fmt::Debug> fmt::Debug for ServerTrace<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTrace")
            .field("inner", &self.inner)
            .field("on", &self.on.is_some())
            .finish()
    }
}

impl<S> ServerTrace<S> {
    /// A service that traces nothing and only forwards to `inner` (see
    /// [`toggle`](crate::toggle)).
    pub fn pass_through(inner: S) -> ServerTrace<S> {
        ServerTrace { inner, on: None }
    }

    /// Whether this service passes requests through untouched.
    pub fn is_pass_through(&self) -> bool {
        self.on.is_none()
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> tower_service::Service<CqlRequest> for ServerTrace<S>
where
    S: tower_service::Service<CqlRequest, Response = CqlResponse, Error = CqlError>,
{
    type Response = CqlResponse;
    type Error = CqlError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: CqlRequest) -> Self::Future {
        let Some(shared) = &self.on else {
            return ResponseFuture::pass_through(self.inner.call(req));
        };
        let slow = shared
            .sampler
            .slow_threshold()
            .map(|_| (sample::operation_key(req.meta()), Instant::now()));
        if !req.meta().tracing() && shared.sampler.sample(slow.map_or(0, |(k, _)| k)) {
            req.meta_mut().set_tracing(true);
            shared.counters.sampled.fetch_add(1, Ordering::Relaxed);
        }
        // a request the caller asked to trace is fetched too
        let traced = req.meta().tracing().then(|| req.meta().clone());
        ResponseFuture::new(self.inner.call(req), shared.clone(), traced, slow)
    }
}

/// What happened to the server traces so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerTraceStats {
    /// Requests the layer chose to trace (sampled or after a slow one).
    pub sampled: u64,
    /// Traces fetched and delivered to the collectors.
    pub fetched: u64,
    /// Traces not fetched: over `max_fetches_per_second`, the queue full,
    /// or abandoned on close.
    pub skipped: u64,
    /// Fetches that failed (a read failed, or the trace was not finished
    /// after `fetch_attempts` reads).
    pub failed: u64,
}

/// A handle on a server trace layer: its counters, and the drain run on
/// close.
#[derive(Clone)]
pub struct ServerTraceHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for ServerTraceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTraceHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

impl ServerTraceHandle {
    /// The counters now.
    pub fn stats(&self) -> ServerTraceStats {
        let c = &self.shared.counters;
        ServerTraceStats {
            sampled: c.sampled.load(Ordering::Relaxed),
            fetched: c.fetched.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        }
    }

    /// Stops taking traces and waits (blocking, for up to the config's
    /// `close_timeout`) for the queued ones to be fetched; what is left is
    /// abandoned. The stack runs this on close, before the collectors'
    /// last flush; call it yourself only when you compose the layers by
    /// hand (and then on a thread that may block).
    pub fn drain(&self) {
        self.shared.fetcher.drain();
    }
}
