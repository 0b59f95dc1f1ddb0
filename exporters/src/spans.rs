//! A collector that makes one OpenTelemetry client span per request,
//! straight through an OpenTelemetry `Tracer`, from the stack's request
//! events: the cheap way to trace with sampling.
//!
//! ```
//! use std::sync::Arc;
//! use opentelemetry::trace::TracerProvider as _;
//! use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
//! use tower_cql_core::Collectors;
//! use tower_cql_exporters::spans::SpanCollector;
//!
//! let provider = SdkTracerProvider::builder()
//!     .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.01))))
//!     .build();
//! let spans = SpanCollector::new(provider.tracer("tower-cql"));
//! let collectors = Collectors::with([Arc::new(spans)]);
//! // then: StackBuilder::new(collectors).without_trace().build(driver)
//! # let _ = collectors;
//! ```
//!
//! # Why, and when to use it instead of the tracing layers
//! The stack's [`TraceLayer`](../../tower_cql_middleware/trace/index.html)
//! makes `tracing` spans, which reach OpenTelemetry through
//! `tracing-opentelemetry`. That path builds each span's attributes, its
//! registry entry and its OpenTelemetry context whether or not the span
//! will be sampled, and enters the span on every poll: measured here,
//! 17,000–26,000 instructions per span, sampled or not (`BENCHMARKS.md`). This
//! collector asks the tracer's sampler first, when the request has
//! finished, and builds nothing for a request that is not sampled; a
//! sampled request costs one span with its attributes.
//!
//! # Sampling
//! By default the tracer's sampler decides. Asking it still costs about
//! 750 instructions per request not sampled: the SDK makes a trace id, a
//! span id and a span context before its sampler answers. With
//! [`sample_ratio`](SpanCollector::sample_ratio) the collector decides
//! itself, for about 70: a request under a parent span follows that
//! span's decision (parent-based, as the SDK's `ParentBased`), any other
//! is kept at the ratio; only the requests kept reach the tracer. Give it
//! a tracer whose sampler keeps what it is handed: the SDK's default
//! (`ParentBased(AlwaysOn)`), or, when the same provider samples other
//! spans at a ratio, [`KeepPresampled`] around that sampler.
//! [`OtlpExporter::span_collector`](crate::otlp::OtlpExporter::span_collector)
//! does all of this when its trace ratio is set:
//!
//! ```
//! use opentelemetry::trace::TracerProvider as _;
//! use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
//! use tower_cql_exporters::spans::{KeepPresampled, SpanCollector};
//!
//! // other spans of the service: 1% of traces, as before
//! let provider = SdkTracerProvider::builder()
//!     .with_sampler(KeepPresampled::new(Sampler::ParentBased(Box::new(
//!         Sampler::TraceIdRatioBased(0.01),
//!     ))))
//!     .build();
//! // requests: 1%, decided before the tracer is asked
//! let spans = SpanCollector::new(provider.tracer("tower-cql")).sample_ratio(0.01);
//! # let _ = spans;
//! ```
//!
//! What it gives up: the span is made after the request, from its event,
//! so it has no children (the driver's spans, per-attempt spans) and cannot
//! be entered by your code; attempts, retries and hedged attempts are
//! attributes (`cql.attempts`, `db.cassandra.speculative_execution_count`).
//! Use it with the stack's tracing layers turned off
//! ([`StackBuilder::without_trace`](../../tower_cql_middleware/stack/struct.StackBuilder.html)),
//! or you get each request twice.
//!
//! # Parent
//! The span's parent is the OpenTelemetry context current when the request
//! ends: the span your code had entered around the call when
//! `tracing-opentelemetry` activates contexts on entry (its default), or a
//! context you attached yourself. Keep this collector out of
//! [`Background`](tower_cql_core::collector::Background), which would run it
//! on another thread, without that context.
//!
//! # Attributes
//! The span is named by `db.query.summary` (`SELECT ks.users`), of kind
//! client, with the same attributes as the tracing layer's request span:
//! `db.system.name`, `db.namespace`, `db.collection.name`,
//! `db.operation.name`, `db.query.summary`, `db.query.text` (sanitised, if
//! on), `server.address`, `server.port`, `db.response.returned_rows`,
//! `cql.attempts` (0 for a request refused before any attempt),
//! `db.cassandra.speculative_execution_count`,
//! `db.cassandra.consistency_level`, `db.cassandra.idempotence`, and on
//! failure `error.type`, `db.response.status_code` and an error status.
//! Bound values are never recorded.
//!
//! # Server traces
//! With server tracing on in the stack, a traced request's server trace
//! becomes child spans of its span, one per node (see
//! [`server_spans`](crate::server_spans)).

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{
    Link, Span as _, SpanBuilder, SpanKind, Status, TraceContextExt, TraceId, Tracer,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, ShouldSample};
use tower_cql_core::event::{RequestEvent, ServerTraceEvent};
use tower_cql_core::semconv::consistency_level;
use tower_cql_core::{Collector, Label};

/// One client span per request, made through `tracer`; see the
/// [module docs](self).
pub struct SpanCollector<T> {
    tracer: T,
    record_query_text: bool,
    // the collector's own sampling ratio (see `sample_ratio`); `None`:
    // the tracer's sampler decides
    ratio: Option<f64>,
    traced: crate::server_spans::Remembered,
}

impl<T> fmt::Debug for SpanCollector<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpanCollector")
            .field("record_query_text", &self.record_query_text)
            .field("sample_ratio", &self.ratio)
            .finish_non_exhaustive()
    }
}

thread_local! {
    // Set while a `SpanCollector` hands its tracer a request it sampled
    // itself: what `KeepPresampled` reads. The sampler runs inside the
    // tracer's `build_with_context`, on the calling thread.
    static PRESAMPLED: Cell<bool> = const { Cell::new(false) };
}

// Clears `PRESAMPLED` when the span is built, or if building it panicked.
struct Presampled;

impl Presampled {
    fn set() -> Presampled {
        PRESAMPLED.set(true);
        Presampled
    }
}

impl Drop for Presampled {
    fn drop(&mut self) {
        PRESAMPLED.set(false);
    }
}

/// A sampler that keeps every span a [`SpanCollector`] with a
/// [`sample_ratio`](SpanCollector::sample_ratio) sampled itself, and asks
/// `sampler` about every other span: put it around the provider's sampler
/// when that provider also makes other spans, sampled at a ratio (without
/// it, a request the collector kept at 1% would be kept again at 1% by
/// the provider: 0.01%). See the [module docs](self#sampling).
#[derive(Debug, Clone)]
pub struct KeepPresampled {
    sampler: Arc<dyn ShouldSample>,
}

impl KeepPresampled {
    /// Keeps the collector's sampled requests, and asks `sampler` about
    /// the rest.
    pub fn new(sampler: impl ShouldSample + 'static) -> KeepPresampled {
        KeepPresampled {
            sampler: Arc::new(sampler),
        }
    }
}

impl ShouldSample for KeepPresampled {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if PRESAMPLED.get() {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: parent_context
                    .map(|cx| cx.span().span_context().trace_state().clone())
                    .unwrap_or_default(),
            };
        }
        self.sampler
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

impl<T> SpanCollector<T>
where
    T: Tracer + Send + Sync + 'static,
    T::Span: Send + Sync + 'static,
{
    /// Spans through `tracer`, with `db.query.text` recorded (sanitised).
    pub fn new(tracer: T) -> SpanCollector<T> {
        SpanCollector {
            tracer,
            record_query_text: true,
            ratio: None,
            traced: Default::default(),
        }
    }

    /// Samples requests here, before the tracer is asked: a request whose
    /// current context has a parent span is kept if that span is sampled,
    /// any other with probability `ratio` (clamped to 0..=1, NaN counting
    /// as 0), like the SDK's `ParentBased(TraceIdRatioBased(ratio))`, for
    /// about 70 instructions instead of 750 per request not sampled. The
    /// tracer's sampler must keep what it is handed; see the
    /// [module docs](self#sampling). Default: the tracer's sampler decides.
    pub fn sample_ratio(mut self, ratio: f64) -> SpanCollector<T> {
        self.ratio = Some(if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        });
        self
    }

    /// Whether to record `db.query.text` (the statement with every literal
    /// replaced by `?`). Default true.
    pub fn record_query_text(mut self, on: bool) -> SpanCollector<T> {
        self.record_query_text = on;
        self
    }
}

/// A label's text as an attribute value, without copying it (a static
/// string, or a clone of its `Arc`).
/// A request's start and end in wall time: from the instant it started
/// (read now against the wall clock, so a late event keeps its time), or,
/// for an event that does not say, ending now.
fn wall_time(e: &RequestEvent<'_>) -> (SystemTime, SystemTime) {
    let now = SystemTime::now();
    let start = match e.started {
        Some(at) => now.checked_sub(at.elapsed()).unwrap_or(now),
        None => now.checked_sub(e.duration).unwrap_or(now),
    };
    (start, start + e.duration)
}

fn label_value(l: &Label) -> Value {
    match (l.as_static(), l.as_shared()) {
        (Some(s), _) => Value::from(s),
        (None, Some(s)) => Value::from(s.clone()),
        (None, None) => Value::from(l.as_str().to_string()),
    }
}

/// Node addresses' texts a thread keeps (see [`ip_value`]).
const IP_TEXTS: usize = 8;

/// The texts of the last [`IP_TEXTS`] node addresses a thread wrote into
/// spans, and where the next one goes.
type IpTexts = (usize, [Option<(IpAddr, Arc<str>)>; IP_TEXTS]);

thread_local! {
    static IP_TEXT_CACHE: RefCell<IpTexts> = const { RefCell::new((0, [const { None }; IP_TEXTS])) };
}

/// `ip` as an attribute value: a clone of the text this thread made for
/// it last, when it is among the last [`IP_TEXTS`] addresses it wrote (a
/// cluster's few nodes recur on every span), else [`ip_text`], kept. A
/// span's `server.address` then costs no formatting, allocation or free.
fn ip_value(ip: IpAddr) -> Value {
    let cached = IP_TEXT_CACHE.try_with(|cache| {
        let mut cache = cache.try_borrow_mut().ok()?;
        let (next, texts) = &mut *cache;
        if let Some((_, text)) = texts.iter().flatten().find(|(a, _)| *a == ip) {
            return Some(text.clone());
        }
        let text: Arc<str> = Arc::from(ip_text(ip));
        texts[*next] = Some((ip, text.clone()));
        *next = (*next + 1) % IP_TEXTS;
        Some(text)
    });
    match cached {
        Ok(Some(text)) => Value::from(text),
        // (the thread's cache is gone, at its exit)
        _ => Value::from(ip_text(ip)),
    }
}

/// `ip` as text: IPv4 written digit by digit (`Display` goes through the
/// formatting machinery, about 1,400 instructions a span), IPv6 by
/// `Display`.
fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut s = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if octet >= 100 {
                    s.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    s.push(char::from(b'0' + octet / 10 % 10));
                }
                s.push(char::from(b'0' + octet % 10));
            }
            s
        }
        IpAddr::V6(_) => ip.to_string(),
    }
}

impl<T> SpanCollector<T> {
    /// The span's attributes, and its status on failure.
    fn attributes(&self, e: &RequestEvent<'_>, summary: &Arc<str>) -> (Vec<KeyValue>, Status) {
        let m = e.meta;
        let mut attrs = Vec::with_capacity(16);
        attrs.push(KeyValue::new("db.system.name", "cassandra"));
        if let Some(k) = m.keyspace() {
            attrs.push(KeyValue::new("db.namespace", label_value(k)));
        }
        if let Some(t) = m.table() {
            attrs.push(KeyValue::new("db.collection.name", label_value(t)));
        }
        attrs.push(KeyValue::new(
            "db.operation.name",
            m.operation()
                .map_or_else(|| Value::from(m.kind().as_str()), label_value),
        ));
        attrs.push(KeyValue::new(
            "db.query.summary",
            Value::from(summary.clone()),
        ));
        if self.record_query_text
            && let Some(text) = m.sanitized_shared()
        {
            // (the statement's own string, shared: no copy a span)
            attrs.push(KeyValue::new("db.query.text", Value::from(text.clone())));
        }
        if let Some(c) = m.consistency() {
            attrs.push(KeyValue::new(
                "db.cassandra.consistency_level",
                consistency_level(c),
            ));
        }
        attrs.push(KeyValue::new("db.cassandra.idempotence", m.is_idempotent()));
        if let Some(n) = e.node {
            attrs.push(KeyValue::new("server.address", ip_value(n.ip())));
            attrs.push(KeyValue::new("server.port", i64::from(n.port())));
        }
        // as the event says: at least 1 for a success, 0 for a request
        // refused before any attempt (shed, rate limited, circuit open)
        attrs.push(KeyValue::new("cql.attempts", i64::from(e.attempts)));
        attrs.push(KeyValue::new(
            "db.cassandra.speculative_execution_count",
            i64::from(e.speculative),
        ));
        let status = match e.error {
            None => {
                attrs.push(KeyValue::new("db.response.returned_rows", e.rows as i64));
                Status::Unset
            }
            Some(err) => {
                attrs.push(KeyValue::new(
                    "error.type",
                    tower_cql_core::classify::error_type(err),
                ));
                if let Some(code) = err.status_code() {
                    attrs.push(KeyValue::new(
                        "db.response.status_code",
                        tower_cql_core::semconv::response_status_code(code),
                    ));
                }
                Status::error(err.kind().as_str())
            }
        };
        (attrs, status)
    }
}

impl<T> Collector for SpanCollector<T>
where
    T: Tracer + Send + Sync + 'static,
    T::Span: Send + Sync + 'static,
{
    fn on_request(&self, e: &RequestEvent<'_>) {
        // With a ratio of its own, the collector decides first: the
        // parent's decision if there is a parent span, else the ratio's.
        let presampled = match self.ratio {
            None => None,
            Some(ratio) => {
                let parent = Context::map_current(|cx| {
                    let span = cx.span();
                    let sc = span.span_context();
                    sc.is_valid().then(|| sc.is_sampled())
                });
                if !parent.unwrap_or_else(|| fastrand::f64() < ratio) {
                    return;
                }
                Some(Presampled::set())
            }
        };
        let (start, end) = wall_time(e);
        let parent = Context::current();
        let builder = SpanBuilder::from_name(Cow::Borrowed("cql.request"))
            .with_kind(SpanKind::Client)
            .with_start_time(start);
        let mut span = if presampled.is_some() {
            // Sampled already: everything goes in the builder, whose
            // attributes the SDK keeps as they are (set one by one on the
            // span, they grow its list four times).
            let summary = e.meta.summary_shared();
            let (attrs, status) = self.attributes(e, &summary);
            let mut builder = builder.with_attributes(attrs);
            builder.name = Cow::Owned(summary.to_string());
            let mut span = self.tracer.build_with_context(builder, &parent);
            drop(presampled);
            span.set_status(status);
            span
        } else {
            // The tracer's sampler decides here, before any attribute is
            // built.
            let mut span = self.tracer.build_with_context(builder, &parent);
            if !span.is_recording() {
                return;
            }
            let summary = e.meta.summary_shared();
            let (attrs, status) = self.attributes(e, &summary);
            span.update_name(summary.to_string());
            span.set_attributes(attrs);
            span.set_status(status);
            span
        };
        if !span.is_recording() {
            return;
        }
        if let Some(id) = e.tracing_id {
            // its server trace arrives later, to be parented on this span
            self.traced.remember(id, span.span_context().clone());
        }
        span.end_with_timestamp(end);
    }

    /// The request's server trace, as child spans of its client span
    /// (see [`server_spans`](crate::server_spans)); none if that span was
    /// not sampled.
    fn on_server_trace(&self, e: &ServerTraceEvent<'_>) {
        if let Some(parent) = self.traced.take(&e.session_id) {
            crate::server_spans::export(&self.tracer, parent, e);
        }
    }

    /// Server traces that made no spans because their request span's
    /// context had been pushed out of its slot before they came (see
    /// [`server_spans`](crate::server_spans)).
    fn failures(&self) -> u64 {
        self.traced.lost()
    }
}

#[cfg(test)]
mod tests {
    use super::{IP_TEXTS, ip_text, ip_value};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn ip_text_writes_what_display_writes() {
        let mut n = 0u32;
        for _ in 0..20_000 {
            // every octet width, and the edges
            n = n.wrapping_mul(2_654_435_761).wrapping_add(12_345);
            let ip = IpAddr::V4(Ipv4Addr::from(n));
            assert_eq!(ip_text(ip), ip.to_string());
        }
        for ip in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(10, 0, 100, 9),
        ] {
            assert_eq!(ip_text(IpAddr::V4(ip)), ip.to_string());
        }
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(ip_text(v6), "::1");
    }

    #[test]
    fn ip_value_is_the_text_kept_per_thread_for_recurring_nodes() {
        // more addresses than a thread keeps, so they are evicted and made
        // again: each value is the address's text all the same
        let n = IP_TEXTS as u8 * 2 + 3;
        for round in 0..3u8 {
            for i in 0..n {
                let ip = IpAddr::V4(Ipv4Addr::new(10, round % 2, 0, i));
                assert_eq!(ip_value(ip).as_str(), ip_text(ip).as_str());
            }
        }
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(ip_value(v6).as_str(), "::1");
        // a recurring node's text is the one kept (the same string, not a
        // copy of it)
        let ip = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 7));
        let (a, b) = (ip_value(ip), ip_value(ip));
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr());
        // and another thread makes its own
        let c = std::thread::spawn(move || ip_value(ip).as_str().as_ptr() as usize)
            .join()
            .unwrap();
        assert_ne!(c, a.as_str().as_ptr() as usize);
    }
}
