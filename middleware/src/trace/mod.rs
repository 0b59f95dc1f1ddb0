//! Tracing: one client span per logical request, named and attributed per
//! the OpenTelemetry database semantic conventions, and a child span per
//! attempt.
//!
//! ```
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_cql_core::{CqlRequest, CqlResponse, ExecutionInfo};
//! use tower_cql_middleware::trace::{TraceConfig, TraceLayer};
//! use tower_layer::Layer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let inner = service_fn(|_req: CqlRequest| async {
//!     Ok::<_, tower_cql_core::CqlError>(CqlResponse::synthetic(ExecutionInfo::default()))
//! });
//! let mut svc = TraceLayer::new(TraceConfig::default()).layer(inner);
//! // With a subscriber installed (e.g. tracing-opentelemetry), this makes a
//! // span "SELECT ks.users" with db.system.name = "cassandra", ...
//! svc.ready().await.unwrap().call(CqlRequest::query("SELECT name FROM ks.users WHERE id = ?")).await.unwrap();
//! # }
//! ```
//!
//! # The request span (`cql.request`)
//! Fields, recorded — not only declared (scylla's own "Request" span
//! declares fields it never fills, scylla issue #1832):
//!
//! | field | value |
//! |---|---|
//! | `otel.name` | `db.query.summary`, e.g. `SELECT ks.users` (tracing-opentelemetry uses it as the span name) |
//! | `otel.kind` | `client` |
//! | `otel.status_code` | `error` when the request failed or was cancelled |
//! | `db.system.name` | `cassandra` |
//! | `db.namespace` | keyspace |
//! | `db.collection.name` | table |
//! | `db.operation.name` | the operation name if given, else the statement kind (`SELECT`, ...) |
//! | `db.query.summary` | `SELECT ks.users` |
//! | `db.query.text` | the statement with every literal replaced by `?` (optional) |
//! | `db.response.status_code` | the CQL error code in decimal, as the conventions write it (`4097` for Overloaded, `0x1001`), on server errors |
//! | `error.type` | the [`ErrorKind`](tower_cql_core::ErrorKind) name, on failure; `cancelled` for a request dropped before it ended |
//! | `server.address`, `server.port` | the coordinator (or the node that failed) |
//! | `db.cassandra.consistency_level` | when set on the request |
//! | `db.cassandra.page_size` | when set |
//! | `db.cassandra.idempotence` | whether the request counts as idempotent |
//! | `db.cassandra.speculative_execution_count` | hedged attempts |
//! | `db.response.returned_rows` | rows returned |
//! | `cql.attempts` | attempts made |
//!
//! Bound values are never recorded, and statement text only sanitised.
//!
//! # The attempt span (`cql.attempt`)
//! [`AttemptTraceLayer`] sits under the retry and hedge layers (the stack
//! builder puts it there) and opens a child span per attempt with
//! `cql.attempt.index`, `cql.attempt.reason` (`initial`, `retry`,
//! `speculative`), `server.address`, `server.port` and `error.type` (an
//! attempt cut short is `cancelled` when it lost a hedge race or its
//! request was dropped, as its attempt event says). Its
//! level is [`TraceConfig::attempt_level`], `DEBUG` by default: under an
//! `INFO` filter there is one span per request, not two.
//!
//! # Trace context propagation
//! The CQL protocol can carry a custom payload with each request, where a
//! W3C `traceparent` could travel to the server. scylla 1.9 has no API to
//! attach a custom payload to a request (it only reads response payloads,
//! for tablets), so tower-cql cannot inject trace context today; the
//! server-side tracing id is recorded instead when tracing is requested.

pub mod future;
mod layer;

use std::fmt;
use std::task::{Context, Poll};

use tower_cql_core::{CqlError, CqlRequest, CqlResponse, RequestMeta};
use tracing::{Level, Span, field::Empty};

pub use self::future::{AttemptFuture, ResponseFuture};
pub use self::layer::{AttemptTraceLayer, TraceLayer};
use crate::config::ConfigError;

/// `db.system.name` for every span.
pub const DB_SYSTEM_NAME: &str = "cassandra";

/// Configuration of the tracing layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceConfig {
    /// Record `db.query.text` (sanitised: literals replaced by `?`).
    /// Default true.
    pub record_query_text: bool,
    /// The level of the request spans: `INFO` (default) or `DEBUG`.
    pub level: Level,
    /// The level of the attempt spans: `DEBUG` (default) or `INFO`. At
    /// `DEBUG` a subscriber filtering at `INFO` (the usual production
    /// setting) makes no attempt span, which halves what tracing costs per
    /// request; the request span still says how many attempts there were
    /// (`cql.attempts`, `db.cassandra.speculative_execution_count`). Set
    /// `INFO`, or filter the `tower_cql` targets at `DEBUG`, to see each
    /// attempt as a span of its own.
    pub attempt_level: Level,
}

impl Default for TraceConfig {
    fn default() -> TraceConfig {
        TraceConfig {
            record_query_text: true,
            level: Level::INFO,
            attempt_level: Level::DEBUG,
        }
    }
}

impl TraceConfig {
    /// Rejects impossible values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.level != Level::INFO && self.level != Level::DEBUG {
            return Err(ConfigError::new(
                "trace.level",
                format!("must be INFO or DEBUG, got {}", self.level),
            ));
        }
        if self.attempt_level != Level::INFO && self.attempt_level != Level::DEBUG {
            return Err(ConfigError::new(
                "trace.attempt_level",
                format!("must be INFO or DEBUG, got {}", self.attempt_level),
            ));
        }
        Ok(())
    }
}

/// The request-span service; see [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
    /// `None`: a pass-through.
    config: Option<TraceConfig>,
}

impl<S> Trace<S> {
    /// A service that opens no span and only forwards to `inner` (see
    /// [`toggle`](crate::toggle)).
    pub fn pass_through(inner: S) -> Trace<S> {
        Trace {
            inner,
            config: None,
        }
    }

    /// Whether this service passes requests through without a span.
    pub fn is_pass_through(&self) -> bool {
        self.config.is_none()
    }

    /// The configuration (`None`: a pass-through), without the inner
    /// service.
    pub(crate) fn into_config(self) -> Option<TraceConfig> {
        self.config
    }
}

/// Makes the request span for `meta` (disabled when no subscriber wants it).
///
/// Every value known before the request runs is given when the span is
/// made, so a subscriber sees one `new_span` and no `record` (each
/// `record` is a lookup of the span and a visit of its own; the outcome is
/// recorded in one call when the request ends).
pub fn request_span(meta: &RequestMeta, config: &TraceConfig) -> Span {
    request_span_with_fields(meta, config).0
}

pub(crate) fn request_span_with_fields(
    meta: &RequestMeta,
    config: &TraceConfig,
) -> (Span, Option<&'static future::OutcomeFields>) {
    macro_rules! make {
        ($lvl:expr, $name:literal, $cache:ident) => {{
            static $cache: std::sync::OnceLock<future::OutcomeFields> = std::sync::OnceLock::new();
            let span = tracing::span!(
                $lvl,
                $name,
                otel.name = %meta.query_summary(),
                otel.kind = "client",
                otel.status_code = Empty,
                db.system.name = DB_SYSTEM_NAME,
                db.namespace = meta.keyspace().map(|k| k.as_str()),
                db.collection.name = meta.table().map(|t| t.as_str()),
                db.operation.name = meta.operation().map_or(meta.kind().as_str(), |o| o.as_str()),
                db.query.summary = %meta.query_summary(),
                db.query.text = if config.record_query_text { meta.sanitized_text() } else { None },
                db.response.status_code = Empty,
                error.type = Empty,
                server.address = Empty,
                server.port = Empty,
                db.cassandra.consistency_level = meta.consistency().map(tower_cql_core::semconv::consistency_level),
                db.cassandra.page_size = meta.page_size().map(i64::from),
                db.cassandra.idempotence = meta.is_idempotent(),
                db.cassandra.speculative_execution_count = Empty,
                db.response.returned_rows = Empty,
                cql.attempts = Empty,
                cql.page.index = meta.page_index().map(i64::from),
            );
            let fields = future::OutcomeFields::cached(&$cache, &span);
            (span, fields)
        }};
    }
    // One page of a paged read is a `cql.page` span (under the stream's
    // `cql.stream` span); any other request a `cql.request` span.
    match (config.level == Level::DEBUG, meta.page_index().is_some()) {
        (true, false) => make!(Level::DEBUG, "cql.request", DEBUG_FIELDS),
        (false, false) => make!(Level::INFO, "cql.request", INFO_FIELDS),
        (true, true) => make!(Level::DEBUG, "cql.page", DEBUG_PAGE_FIELDS),
        (false, true) => make!(Level::INFO, "cql.page", INFO_PAGE_FIELDS),
    }
}

impl<S> tower_service::Service<CqlRequest> for Trace<S>
where
    S: tower_service::Service<CqlRequest, Response = CqlResponse, Error = CqlError>,
{
    type Response = CqlResponse;
    type Error = CqlError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        self.inner.poll_ready(cx)
    }

    #[inline(always)]
    fn call(&mut self, req: CqlRequest) -> Self::Future {
        let Some(config) = &self.config else {
            return ResponseFuture::pass_through(self.inner.call(req));
        };
        let (span, fields) = request_span_with_fields(req.meta(), config);
        let inner = {
            let _enter = span.enter();
            self.inner.call(req)
        };
        ResponseFuture::new(inner, span, fields)
    }
}

/// What an [`AttemptTrace`] does with each attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttemptMode {
    Info,
    Debug,
    PassThrough,
}

/// The attempt-span service; see [`AttemptTraceLayer`].
#[derive(Debug, Clone)]
pub struct AttemptTrace<S> {
    inner: S,
    mode: AttemptMode,
}

impl<S> AttemptTrace<S> {
    /// A service that opens no span and only forwards to `inner` (see
    /// [`toggle`](crate::toggle)).
    pub fn pass_through(inner: S) -> AttemptTrace<S> {
        AttemptTrace {
            inner,
            mode: AttemptMode::PassThrough,
        }
    }

    /// Whether this service passes attempts through without a span.
    pub fn is_pass_through(&self) -> bool {
        self.mode == AttemptMode::PassThrough
    }
}

impl<S> tower_service::Service<CqlRequest> for AttemptTrace<S>
where
    S: tower_service::Service<CqlRequest, Response = CqlResponse, Error = CqlError>,
{
    type Response = CqlResponse;
    type Error = CqlError;
    type Future = AttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        self.inner.poll_ready(cx)
    }

    #[inline(always)]
    fn call(&mut self, req: CqlRequest) -> Self::Future {
        if self.mode == AttemptMode::PassThrough {
            return AttemptFuture::pass_through(self.inner.call(req));
        }
        let meta = req.meta();
        macro_rules! make {
            ($lvl:expr, $cache:ident) => {{
                static $cache: std::sync::OnceLock<future::OutcomeFields> =
                    std::sync::OnceLock::new();
                let span = tracing::span!(
                    $lvl,
                    "cql.attempt",
                    otel.name = "cql.attempt",
                    otel.kind = "client",
                    otel.status_code = Empty,
                    cql.attempt.index = i64::from(meta.attempt_index()),
                    cql.attempt.reason = meta.attempt_reason().as_str(),
                    server.address = Empty,
                    server.port = Empty,
                    error.type = Empty,
                );
                let fields = future::OutcomeFields::cached(&$cache, &span);
                (span, fields)
            }};
        }
        let (span, fields) = if self.mode == AttemptMode::Debug {
            make!(Level::DEBUG, DEBUG_FIELDS)
        } else {
            make!(Level::INFO, INFO_FIELDS)
        };
        let inner = {
            let _enter = span.enter();
            self.inner.call(req)
        };
        AttemptFuture::attempt(inner, span, fields)
    }
}

impl fmt::Display for TraceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "level {}, attempt level {}, query text {}",
            self.level, self.attempt_level, self.record_query_text
        )
    }
}
