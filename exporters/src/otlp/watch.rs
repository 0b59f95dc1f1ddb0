//! What became of each export: the SDK's exporters wrapped so that a failed
//! export is recorded with its signal, its endpoint and why it failed, in
//! words (the SDK keeps the cause to itself: its metric reader answers a
//! failed flush with "Failed to flush", its HTTP exporter with "network
//! error").
//!
//! The cause comes from the transport where we hold it (the HTTP client
//! wrapper sees the error of each request), else from the exporter's
//! message (the gRPC exporter renders tonic's error chain into it), else
//! from the time the export took (no answer within the export timeout).

use std::error::Error as StdError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

use super::config::{Protocol, Signal};
use super::error::{ExportCause, ExportFailure};

/// One signal's exports: where they go and what became of them.
#[derive(Debug)]
pub(crate) struct Watch {
    signal: Signal,
    protocol: Protocol,
    endpoint: String,
    timeout: Duration,
    /// What the transport saw during the current export (HTTP only).
    seen: Mutex<Option<ExportCause>>,
    /// The last failed export.
    last_failure: Mutex<Option<ExportFailure>>,
    /// How many exports failed.
    failures: AtomicU64,
    /// Items (spans, metric points) handed to exports.
    delivered: AtomicU64,
    /// Items in exports that failed.
    failed_items: AtomicU64,
    /// Items whose export finished and the collector took.
    taken: AtomicU64,
    /// Items whose export failed or that the collector rejected, by their
    /// `error.type` ([`ExportCause::error_type`]; a handful of values).
    failed_by_type: Mutex<Vec<(String, u64)>>,
}

impl Watch {
    pub(crate) fn new(
        signal: Signal,
        protocol: Protocol,
        endpoint: String,
        timeout: Duration,
    ) -> Watch {
        Watch {
            signal,
            protocol,
            endpoint,
            timeout,
            seen: Mutex::new(None),
            last_failure: Mutex::new(None),
            failures: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            failed_items: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            failed_by_type: Mutex::new(Vec::new()),
        }
    }

    /// What became of the items whose export finished: how many the
    /// collector took, and how many were lost, by `error.type`.
    pub(crate) fn outcomes(&self) -> (u64, Vec<(String, u64)>) {
        (
            self.taken.load(Ordering::Acquire),
            lock(&self.failed_by_type).clone(),
        )
    }

    /// The signal.
    pub(crate) fn signal(&self) -> Signal {
        self.signal
    }

    /// The protocol its exports use.
    pub(crate) fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Items handed to exports so far, exported or not.
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Acquire)
    }

    /// Items in exports that failed so far.
    pub(crate) fn failed_items(&self) -> u64 {
        self.failed_items.load(Ordering::Acquire)
    }

    /// How many exports failed so far.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Acquire)
    }

    /// The last failed export, if any.
    pub(crate) fn last_failure(&self) -> Option<ExportFailure> {
        lock(&self.last_failure).clone()
    }

    /// A failure of this signal with the given cause (e.g. from the SDK's
    /// answer to a flush, when no export recorded one).
    pub(crate) fn failure(&self, cause: ExportCause) -> ExportFailure {
        ExportFailure {
            signal: self.signal,
            protocol: self.protocol,
            endpoint: self.endpoint.clone(),
            cause,
        }
    }

    /// Called by the transport with what one request ended in: `None` on
    /// success. The last request of an export (after the SDK's retries)
    /// is the one that counts.
    pub(crate) fn saw(&self, cause: Option<ExportCause>) {
        *lock(&self.seen) = cause;
    }

    /// Called by the transport with the body of a successful export's
    /// answer: an OTLP partial success that rejected items (the collector
    /// took the export but not all of it, e.g. over a limit of its own) is
    /// a failed export of those items, which the SDK would only log.
    #[cfg(feature = "otlp-http")]
    pub(crate) fn saw_answer(&self, body: &[u8]) {
        if let Some((items, message)) = rejected_items(self.signal, body) {
            self.failed(items, ExportCause::Rejected { items, message });
        }
    }

    /// Records a failed export of `items` spans or points.
    fn failed(&self, items: u64, cause: ExportCause) {
        let error_type = cause.error_type();
        {
            let mut by_type = lock(&self.failed_by_type);
            match by_type.iter_mut().find(|(t, _)| *t == error_type) {
                Some((_, n)) => *n += items,
                None => by_type.push((error_type, items)),
            }
        }
        *lock(&self.last_failure) = Some(self.failure(cause));
        self.failed_items.fetch_add(items, Ordering::AcqRel);
        self.failures.fetch_add(1, Ordering::AcqRel);
    }

    /// Runs one export of `items` spans or points and records its
    /// failure, if it fails.
    pub(crate) async fn export<F>(&self, items: u64, export: F) -> OTelSdkResult
    where
        F: Future<Output = OTelSdkResult>,
    {
        self.delivered.fetch_add(items, Ordering::AcqRel);
        self.saw(None);
        let failed_before = self.failed_items();
        let start = Instant::now();
        let result = export.await;
        match &result {
            Err(e) => {
                let seen = lock(&self.seen).take();
                let cause =
                    seen.unwrap_or_else(|| cause_of_sdk_error(e, start.elapsed(), self.timeout));
                self.failed(items, cause);
            }
            Ok(()) => {
                // all but those the collector's answer rejected
                let rejected = self.failed_items().saturating_sub(failed_before);
                self.taken
                    .fetch_add(items.saturating_sub(rejected), Ordering::AcqRel);
            }
        }
        result
    }
}

/// The items an export's answer (an `Export*ServiceResponse` of `signal`)
/// says the collector rejected, with its reason, if it rejected any.
#[cfg(feature = "otlp-http")]
fn rejected_items(signal: Signal, body: &[u8]) -> Option<(u64, String)> {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    use prost::Message as _;
    let (rejected, message) = match signal {
        Signal::Traces => {
            let p = ExportTraceServiceResponse::decode(body)
                .ok()?
                .partial_success?;
            (p.rejected_spans, p.error_message)
        }
        Signal::Metrics => {
            let p = ExportMetricsServiceResponse::decode(body)
                .ok()?
                .partial_success?;
            (p.rejected_data_points, p.error_message)
        }
    };
    // (none rejected, with a message: a warning, nothing lost)
    let rejected = u64::try_from(rejected).ok().filter(|n| *n > 0)?;
    Some((rejected, message))
}

/// An SDK exporter whose failed exports are recorded in a [`Watch`].
#[derive(Debug)]
pub(crate) struct Watched<E> {
    pub(crate) inner: E,
    pub(crate) watch: Arc<Watch>,
}

impl<E: SpanExporter> SpanExporter for Watched<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        self.watch
            .export(batch.len() as u64, self.inner.export(batch))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for Watched<E> {
    fn export(&self, metrics: &ResourceMetrics) -> impl Future<Output = OTelSdkResult> + Send {
        self.watch
            .export(data_points(metrics), self.inner.export(metrics))
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// The data points of a collection: what a failed metric export loses.
fn data_points(metrics: &ResourceMetrics) -> u64 {
    fn of<T>(data: &MetricData<T>) -> usize {
        match data {
            MetricData::Gauge(d) => d.data_points().count(),
            MetricData::Sum(d) => d.data_points().count(),
            MetricData::Histogram(d) => d.data_points().count(),
            MetricData::ExponentialHistogram(d) => d.data_points().count(),
        }
    }
    metrics
        .scope_metrics()
        .flat_map(|s| s.metrics())
        .map(|m| match m.data() {
            AggregatedMetrics::F64(d) => of(d),
            AggregatedMetrics::U64(d) => of(d),
            AggregatedMetrics::I64(d) => of(d),
        } as u64)
        .sum()
}

/// The SDK's batch span processor, counting the spans handed to it: those
/// it never hands to an export were dropped (its queue was full), which
/// it only logs.
#[derive(Debug)]
pub(crate) struct Counted<P> {
    pub(crate) inner: P,
    /// Sampled spans ended (those the batch processor queues).
    pub(crate) ended: Arc<AtomicU64>,
}

impl<P: SpanProcessor> SpanProcessor for Counted<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        // Counted before it is queued, so that a span is never seen
        // delivered and not ended; unsampled spans are not queued.
        if span.span_context.is_sampled() {
            self.ended.fetch_add(1, Ordering::AcqRel);
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The cause of a failed export from the exporter's message, which is all
/// the SDK returns. The gRPC exporter renders tonic's error chain into it
/// (`... gRPC code: Unavailable: transport error: tcp connect error:
/// Connection refused (os error 111)`); an export that took the whole
/// timeout timed out whatever it says (`gRPC code: Cancelled` for tonic's
/// own deadline).
pub(crate) fn cause_of_sdk_error(
    e: &OTelSdkError,
    took: Duration,
    timeout: Duration,
) -> ExportCause {
    let msg = match e {
        OTelSdkError::Timeout(d) => return ExportCause::TimedOut(*d),
        OTelSdkError::InternalFailure(m) => m.as_str(),
        other => return ExportCause::Other(other.to_string()),
    };
    if let Some(cause) = cause_of_message(msg) {
        return cause;
    }
    if took >= timeout {
        return ExportCause::TimedOut(timeout);
    }
    if let Some(code) = msg
        .split_once("gRPC code: ")
        .map(|(_, rest)| {
            rest.split(|c: char| !c.is_ascii_alphanumeric())
                .next()
                .unwrap_or("")
        })
        .filter(|code| !code.is_empty())
    {
        return ExportCause::GrpcStatus(code.to_string());
    }
    ExportCause::Other(msg.to_string())
}

/// A cause recognised in an error's text (the SDK's message, or one error
/// of a chain).
fn cause_of_message(msg: &str) -> Option<ExportCause> {
    let lower = msg.to_ascii_lowercase();
    if lower.contains("connection refused") {
        Some(ExportCause::ConnectionRefused)
    } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
        Some(ExportCause::DnsFailure)
    } else if lower.contains("connection reset")
        || lower.contains("connection closed")
        || lower.contains("broken pipe")
        || lower.contains("invalid http version")
        || lower.contains("frame with invalid size")
        // hyper, when the pooled connection was closed by the peer before
        // the request could go out on it
        || lower.contains("connection was not ready")
    {
        Some(ExportCause::ConnectionClosed)
    } else {
        None
    }
}

/// The cause of a failed HTTP request, from the client's error chain.
#[cfg_attr(not(feature = "otlp-http"), allow(dead_code))]
pub(crate) fn cause_of_http_error(e: &(dyn StdError + 'static), timeout: Duration) -> ExportCause {
    let mut next: Option<&(dyn StdError + 'static)> = Some(e);
    let mut text = String::new();
    while let Some(err) = next {
        if err.is::<tokio::time::error::Elapsed>() {
            return ExportCause::TimedOut(timeout);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            match io.kind() {
                K::ConnectionRefused => return ExportCause::ConnectionRefused,
                K::TimedOut => return ExportCause::TimedOut(timeout),
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                    return ExportCause::ConnectionClosed;
                }
                _ => {}
            }
        }
        if let Some(cause) = cause_of_message(&err.to_string()) {
            return cause;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&err.to_string());
        next = err.source();
    }
    ExportCause::Other(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_of_the_sdk_messages() {
        let t = Duration::from_secs(1);
        let short = Duration::from_millis(10);
        let cases = [
            (
                "TonicTracesClient export failed with gRPC code: Unavailable: transport error: tcp connect error: tcp connect error: Connection refused (os error 111)",
                short,
                ExportCause::ConnectionRefused,
            ),
            (
                "TonicTracesClient export failed with gRPC code: Unavailable: transport error: dns error: dns error: failed to lookup address information: Name or service not known",
                short,
                ExportCause::DnsFailure,
            ),
            (
                "TonicMetricsClient export failed with gRPC code: Cancelled",
                t,
                ExportCause::TimedOut(t),
            ),
            (
                "TonicMetricsClient export failed with gRPC code: Unauthenticated",
                short,
                ExportCause::GrpcStatus("Unauthenticated".into()),
            ),
            (
                // hyper's pooled connection, closed by the endpoint
                "client error (Canceled): operation was canceled: connection was not ready",
                short,
                ExportCause::ConnectionClosed,
            ),
            (
                "HTTP export failed with status code: 404",
                short,
                ExportCause::Other("HTTP export failed with status code: 404".into()),
            ),
        ];
        for (msg, took, want) in cases {
            let e = OTelSdkError::InternalFailure(msg.into());
            assert_eq!(cause_of_sdk_error(&e, took, t), want, "{msg}");
        }
        assert_eq!(
            cause_of_sdk_error(&OTelSdkError::Timeout(t), short, t),
            ExportCause::TimedOut(t)
        );
    }

    /// A partial success that rejected items is a loss of those items; one
    /// that rejected none (a warning), an empty answer or one that does
    /// not decode is not.
    #[cfg(feature = "otlp-http")]
    #[test]
    fn rejected_items_of_an_answer() {
        use opentelemetry_proto::tonic::collector::metrics::v1::{
            ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
        };
        use opentelemetry_proto::tonic::collector::trace::v1::{
            ExportTracePartialSuccess, ExportTraceServiceResponse,
        };
        use prost::Message as _;
        let spans = |rejected_spans, error_message: &str| {
            ExportTraceServiceResponse {
                partial_success: Some(ExportTracePartialSuccess {
                    rejected_spans,
                    error_message: error_message.into(),
                }),
            }
            .encode_to_vec()
        };
        assert_eq!(
            rejected_items(Signal::Traces, &spans(3, "too big")),
            Some((3, "too big".into()))
        );
        assert_eq!(rejected_items(Signal::Traces, &spans(0, "slow down")), None);
        assert_eq!(rejected_items(Signal::Traces, &spans(-1, "")), None);
        assert_eq!(rejected_items(Signal::Traces, &[]), None);
        assert_eq!(rejected_items(Signal::Traces, b"not protobuf \xff"), None);
        let points = ExportMetricsServiceResponse {
            partial_success: Some(ExportMetricsPartialSuccess {
                rejected_data_points: 5,
                error_message: String::new(),
            }),
        }
        .encode_to_vec();
        assert_eq!(
            rejected_items(Signal::Metrics, &points),
            Some((5, String::new()))
        );
    }

    #[test]
    fn causes_of_http_client_errors() {
        let t = Duration::from_millis(300);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            cause_of_http_error(&refused, t),
            ExportCause::ConnectionRefused
        );
        let other = std::io::Error::other("something else");
        assert_eq!(
            cause_of_http_error(&other, t),
            ExportCause::Other("something else".into())
        );
    }
}
