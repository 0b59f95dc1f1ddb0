//! Server traces as OpenTelemetry spans: a request's
//! [`ServerTraceEvent`] becomes one child span of its client span per
//! node that worked on it (the coordinator, each replica), with the
//! node's steps as span events.
//!
//! ```
//! use std::sync::Arc;
//! use opentelemetry::trace::TracerProvider as _;
//! use opentelemetry_sdk::trace::SdkTracerProvider;
//! use tower_cql_core::Collectors;
//! use tower_cql_exporters::spans::SpanCollector;
//!
//! // SpanCollector parents a request's server spans itself: turn server
//! // tracing on in the stack (StackBuilder::server_trace) and that is all.
//! let provider = SdkTracerProvider::builder().build();
//! let collectors = Collectors::with([Arc::new(SpanCollector::new(provider.tracer("tower-cql")))]);
//! # let _ = collectors;
//! ```
//!
//! With the stack's `tracing` spans exported by `tracing-opentelemetry`
//! instead, add `OtlpExporter::server_trace_collector()` (feature `otlp`)
//! to the collector set: it remembers the request span's OpenTelemetry
//! context when the request ends and parents the server spans on it.
//!
//! # The spans
//! - name `cql.server.coordinator` or `cql.server.replica`, kind server;
//! - `server.address` and `network.peer.address`: the node that wrote the
//!   steps; `db.system.name = cassandra`; `db.cassandra.trace_id`: the
//!   tracing session id; on the coordinator's, `db.cassandra.consistency_level`
//!   and `cql.server.request` (`Execute CQL3 prepared query`);
//! - start and end: the coordinator's from the session's `started_at`
//!   plus its steps' `source_elapsed` (and the session's `duration`); a
//!   replica's from the time in its first step's `event_id` less that
//!   step's `source_elapsed` (its own clock, so skew between nodes shows),
//!   plus its steps' `source_elapsed`;
//! - one span event per step: the sanitised activity text, at its time,
//!   with `thread` and `source_elapsed_us`.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Mutex;

use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanKind, TraceContextExt as _, Tracer,
};
use opentelemetry::{Context, KeyValue};
use tower_cql_core::event::ServerTraceEvent;
use tower_cql_core::server_trace::session_id_string;

/// Traced requests remembered at once, awaiting their server trace; the
/// oldest is forgotten past it (its trace then makes no spans).
pub(crate) const REMEMBERED: usize = 1024;

/// The span contexts of traced requests, by tracing session id: a small
/// bounded map, touched only for traced requests.
#[derive(Debug, Default)]
pub(crate) struct Remembered(Mutex<VecDeque<([u8; 16], SpanContext)>>);

impl Remembered {
    pub(crate) fn remember(&self, id: [u8; 16], cx: SpanContext) {
        if !cx.is_valid() || !cx.is_sampled() {
            return;
        }
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= REMEMBERED {
            q.pop_front();
        }
        q.push_back((id, cx));
    }

    pub(crate) fn take(&self, id: &[u8; 16]) -> Option<SpanContext> {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let i = q.iter().position(|(k, _)| k == id)?;
        q.remove(i).map(|(_, cx)| cx)
    }
}

/// Makes the server spans of `e` under `parent`.
pub(crate) fn export<T: Tracer>(tracer: &T, parent: SpanContext, e: &ServerTraceEvent<'_>) {
    let parent = Context::new().with_remote_span_context(parent);
    let trace_id = session_id_string(&e.session_id);
    for source in e.sources() {
        let steps: Vec<_> = e.steps.iter().filter(|s| s.source == source).collect();
        let coordinator = source == e.coordinator;
        let anchor = if coordinator {
            e.started_at
        } else {
            steps
                .first()
                .and_then(|s| s.recorded_at()?.checked_sub(s.elapsed))
                .map_or(e.started_at, |t| t.max(e.started_at))
        };
        let last = steps.iter().map(|s| s.elapsed).max().unwrap_or_default();
        let end = anchor
            + if coordinator {
                last.max(e.duration)
            } else {
                last
            };
        let role = if coordinator {
            "coordinator"
        } else {
            "replica"
        };
        let mut attrs = vec![
            KeyValue::new("db.system.name", "cassandra"),
            KeyValue::new("cql.server.role", role),
            KeyValue::new("db.cassandra.trace_id", trace_id.clone()),
        ];
        if let Some(ip) = source {
            attrs.push(KeyValue::new("server.address", ip.to_string()));
            attrs.push(KeyValue::new("network.peer.address", ip.to_string()));
        }
        if coordinator {
            if !e.request.is_empty() {
                attrs.push(KeyValue::new("cql.server.request", e.request.to_string()));
            }
            if let Some(c) = e.consistency {
                attrs.push(KeyValue::new(
                    "db.cassandra.consistency_level",
                    c.to_ascii_lowercase(),
                ));
            }
        }
        let name = if coordinator {
            "cql.server.coordinator"
        } else {
            "cql.server.replica"
        };
        let mut span = tracer.build_with_context(
            SpanBuilder::from_name(Cow::Borrowed(name))
                .with_kind(SpanKind::Server)
                .with_start_time(anchor)
                .with_attributes(attrs),
            &parent,
        );
        for s in steps {
            span.add_event_with_timestamp(
                s.activity.clone(),
                anchor + s.elapsed,
                vec![
                    KeyValue::new("thread", s.thread.clone()),
                    KeyValue::new("source_elapsed_us", s.elapsed.as_micros() as i64),
                ],
            );
        }
        span.end_with_timestamp(end);
    }
}

/// For the `tracing` path (the stack's `TraceLayer` spans exported by
/// `tracing-opentelemetry`): remembers the OpenTelemetry context of the
/// request's `tracing` span when a traced request ends (its request event
/// is emitted inside that span), and makes the server spans under it
/// through `tracer`. Made by `OtlpExporter::server_trace_collector()`.
/// Keep it out of [`Background`](tower_cql_core::Background), which would
/// run it outside the request's span.
#[cfg(feature = "_otlp")]
pub struct ServerTraceCollector<T> {
    tracer: T,
    traced: Remembered,
}

#[cfg(feature = "_otlp")]
impl<T> std::fmt::Debug for ServerTraceCollector<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTraceCollector")
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "_otlp")]
impl<T: Tracer> ServerTraceCollector<T> {
    /// Server spans through `tracer`.
    pub fn new(tracer: T) -> ServerTraceCollector<T> {
        ServerTraceCollector {
            tracer,
            traced: Remembered::default(),
        }
    }
}

#[cfg(feature = "_otlp")]
impl<T> tower_cql_core::Collector for ServerTraceCollector<T>
where
    T: Tracer + Send + Sync + 'static,
    T::Span: Send + Sync + 'static,
{
    fn on_request(&self, e: &tower_cql_core::event::RequestEvent<'_>) {
        if let Some(id) = e.tracing_id {
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            let cx = tracing::Span::current().context();
            self.traced.remember(id, cx.span().span_context().clone());
        }
    }

    fn on_server_trace(&self, e: &ServerTraceEvent<'_>) {
        if let Some(parent) = self.traced.take(&e.session_id) {
            export(&self.tracer, parent, e);
        }
    }
}
