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
//! - **Sampling** (by the metrics layer, in the request's `call`,
//!   lock-free; server tracing needs the metrics layer on): a request is traced
//!   when a thread-local random draw falls under `sample_ratio`, or when
//!   its operation (its operation, keyspace and table labels and its
//!   statement kind) is armed by the slow rule. The layer sets the
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
//!   `max_fetches_per_second` started in any one-second interval, whenever
//!   it begins, that many at once if they come together (the rest
//!   skipped), and reads the session row until the
//!   server has finished it (`duration` set; `fetch_attempts` reads,
//!   `fetch_backoff` doubling between them), then its events, a page at
//!   a time, up to `max_events_per_trace` (a trace with more is cut there,
//!   says so in its event's `truncated` and is counted in the stats'
//!   `truncated`): two reads per trace, more for a long one. At most `max_concurrent_fetches` fetches read at once; a
//!   fetch waiting between its reads holds no slot, so a trace the server
//!   writes late (Scylla flushes them every 2 s) or never does not hold
//!   up the others (up to `queue_capacity` fetches are under way). A failed fetch is counted, logged at `DEBUG` (target
//!   `tower_cql::server_trace`) and never reaches the request, which had
//!   completed before the fetch began. A collector that panics on the
//!   event is caught and counted by [`Collectors`].
//! - **Close**: [`Stack::close`](crate::stack::Stack::close) drains the
//!   requests, then the fetcher (what is queued is fetched, for up to
//!   `close_timeout`; what is left then, queued or in flight, is abandoned
//!   and counted skipped before `close` returns), then flushes the
//!   collectors, so the last traces are exported.
//!
//! # A failed request's trace is not fetched
//! A traced request that fails still has a trace on the server (it sends
//! the tracing id with its error response too), but the `scylla` driver
//! (1.x) does not pass that id on: its errors (`ExecutionError`,
//! `RequestAttemptError::DbError`) and its history listener carry none,
//! and `tracing_id` is only on a successful `QueryResult`. Such requests
//! are counted `without_trace`. To read the trace of a failing request,
//! look for it in `system_traces.sessions` by its `started_at` and
//! `client` (or trace it from `cqlsh`).
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
//! Off (the default), nothing: no layer of its own (the metrics layer
//! runs it), no clock read, no atomic, no allocation. On, a request costs
//! one random draw (and, with the slow rule, an atomic load; its latency
//! is the metrics layer's); a traced request
//! costs the server the trace's writes (a row per step on every node
//! involved) and the stack two reads of `system_traces`.

mod cap;
mod close;
mod fetch;
mod sample;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use scylla::client::session::Session;
use tower_cql_core::server_trace::ServerTraceConfig;
use tower_cql_core::{Collectors, CqlError, CqlResponse, RequestMeta};

/// The sampler, fetcher and counters shared by a layer's services.
pub(crate) struct Shared {
    sampler: sample::Sampler,
    fetcher: fetch::Fetcher,
    counters: Arc<fetch::Counters>,
    config: ServerTraceConfig,
}

/// A request's server-trace bookkeeping, from the metrics layer's `call`
/// to its response: the operation's key for the slow rule, and whether the
/// request carries the tracing flag.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watch {
    slow_key: Option<u64>,
    traced: bool,
}

impl Watch {
    /// Whether the request's trace will be fetched (keep its meta).
    pub(crate) fn traced(&self) -> bool {
        self.traced
    }
}

impl Shared {
    /// Samples the request (setting its tracing flag when chosen).
    pub(crate) fn begin(&self, meta: &mut RequestMeta) -> Watch {
        let slow_key = self
            .sampler
            .slow_threshold()
            .map(|_| sample::operation_key(meta));
        if meta.tracing() {
            // a request the caller asked to trace is fetched too
            self.counters.caller_traced.fetch_add(1, Ordering::Relaxed);
        } else if self.sampler.sample(slow_key.unwrap_or(0)) {
            meta.set_tracing(true);
            self.counters.sampled.fetch_add(1, Ordering::Relaxed);
        }
        Watch {
            slow_key,
            traced: meta.tracing(),
        }
    }

    /// The request ended after `duration`: feeds the slow rule, and queues
    /// the trace of a traced request that got an answer (`meta` is its
    /// meta, kept when [`Watch::traced`]); a traced request with no trace
    /// to fetch (it failed: the driver gives no tracing id with an error) is counted so.
    pub(crate) fn end(
        &self,
        watch: Watch,
        duration: Duration,
        meta: Option<RequestMeta>,
        out: &Result<CqlResponse, CqlError>,
    ) {
        if let Some(key) = watch.slow_key {
            self.sampler.observe(key, duration);
        }
        if watch.traced
            && let Some(meta) = meta
            && let Ok(resp) = out
            && let Some(id) = resp.info().tracing_id
        {
            self.fetcher.enqueue(fetch::Job { id, meta });
        } else if watch.traced {
            self.counters.without_trace.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The request was dropped before it ended: a traced one has no trace
    /// to fetch.
    pub(crate) fn dropped(&self, watch: Watch) {
        if watch.traced {
            self.counters.without_trace.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Samples requests for server-side tracing and fetches their traces in
/// the background; see the [module docs](self). The metrics layer runs it
/// ([`MetricsLayer::with_server_trace`](crate::metrics::MetricsLayer::with_server_trace)):
/// it is the layer that sees each logical request begin and end, with its
/// latency, so the sampling costs no layer of its own and no clock read.
#[derive(Clone)]
pub struct ServerTracer {
    shared: Arc<Shared>,
}

impl fmt::Debug for ServerTracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTracer")
            .field("config", &self.shared.config)
            .field("stats", &self.handle().stats())
            .finish()
    }
}

impl ServerTracer {
    /// A tracer per `config`, reading traces through `session` (the one
    /// the stack runs on) and emitting them into `collectors`.
    ///
    /// # Panics
    /// If `config` is invalid (see its `validate()`, which says why);
    /// [`StackBuilder`](crate::stack::StackBuilder) returns that as an error.
    #[track_caller]
    pub fn new(
        config: ServerTraceConfig,
        session: Arc<Session>,
        collectors: Collectors,
    ) -> ServerTracer {
        crate::config::checked(config.validate());
        let counters = Arc::new(fetch::Counters::default());
        ServerTracer {
            shared: Arc::new(Shared {
                sampler: sample::Sampler::new(&config),
                fetcher: fetch::Fetcher::new(session, collectors, config, counters.clone()),
                counters,
                config,
            }),
        }
    }

    /// The counters, and the drain [`Stack::close`](crate::stack::Stack::close)
    /// runs before the collectors' last flush.
    pub fn handle(&self) -> ServerTraceHandle {
        ServerTraceHandle {
            shared: self.shared.clone(),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// What happened to the server traces so far.
///
/// Every traced request is counted once as traced (`sampled` or
/// `caller_traced`) and, once it has ended and its trace been dealt with,
/// once as what came of it (`fetched`, `skipped`, `failed` or
/// `without_trace`). Once [`Stack::close`](crate::stack::Stack::close)
/// (or [`ServerTraceHandle::drain`]) has returned,
/// `sampled + caller_traced == fetched + skipped + failed + without_trace`,
/// and the counters stay so (unless the fetcher's runtime could not run:
/// see `drain`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerTraceStats {
    /// Requests the layer chose to trace (sampled or after a slow one).
    pub sampled: u64,
    /// Requests that came traced by their caller
    /// ([`CqlRequest::tracing`](tower_cql_core::CqlRequest::tracing)):
    /// their traces are fetched too.
    pub caller_traced: u64,
    /// Traced requests that ended with no trace to fetch: they failed or
    /// their caller dropped them (the driver gives no tracing id with an
    /// error; see [failed requests](crate::server_trace#a-failed-requests-trace-is-not-fetched)).
    pub without_trace: u64,
    /// Traces fetched and delivered to the collectors.
    pub fetched: u64,
    /// Traces not fetched: over `max_fetches_per_second`, the queue full,
    /// or abandoned on close (queued, or in flight: a read close stopped
    /// waiting for counts here, not in `failed`).
    pub skipped: u64,
    /// Fetches that failed (a read failed, or the trace was not finished
    /// after `fetch_attempts` reads).
    pub failed: u64,
    /// Of the traces `fetched`, those cut at `max_events_per_trace` (their
    /// events say `truncated`); not an outcome of its own, so not in the
    /// sum above.
    pub truncated: u64,
}

/// A handle on a server tracer: its counters, and the drain run on
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
            caller_traced: c.caller_traced.load(Ordering::Relaxed),
            without_trace: c.without_trace.load(Ordering::Relaxed),
            fetched: c.fetched.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            truncated: c.truncated.load(Ordering::Relaxed),
        }
    }

    /// Stops taking traces and waits (blocking, for up to the config's
    /// `close_timeout`) for the queued ones to be fetched; what is left,
    /// queued or in flight, is abandoned and counted skipped before this
    /// returns (the fetcher stops at once; this waits up to a second more
    /// for it, in case its runtime cannot run it). The stack runs this on
    /// close, before the collectors' last flush; call it yourself only
    /// when you compose the layers by hand (and then once the requests
    /// have ended, on a thread that may block). A request that ends
    /// while it runs, or after, has its trace fetched before this
    /// returns or counted skipped: no fetch starts once it has returned.
    pub fn drain(&self) {
        self.shared.fetcher.drain();
    }
}
