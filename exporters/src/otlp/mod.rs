//! OTLP export of the stack's metrics and spans, over gRPC or
//! HTTP/protobuf, configured by a builder and the standard `OTEL_*`
//! environment variables.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tower_cql_core::Collectors;
//! use tower_cql_exporters::otlp::{OtlpExporter, Protocol};
//! use tracing_subscriber::prelude::*;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, ... apply unless set here.
//! let otlp = OtlpExporter::builder()
//!     .protocol(Protocol::Grpc)
//!     .endpoint("http://127.0.0.1:4317")
//!     .header("api-key", "secret")            // never printed by Debug
//!     .service_name("checkout")
//!     .install()?;                             // inside a Tokio runtime
//!
//! // Spans of the tracing layers, through tracing-opentelemetry:
//! tracing_subscriber::registry().with(otlp.tracing_layer()).init();
//! // Metrics: the stack's close() flushes both metrics and spans.
//! let collectors = Collectors::with([Arc::new(otlp.collector())]);
//! // ... StackBuilder::new(collectors).build_on(session)?, run, stack.close().await ...
//! # let _ = collectors;
//! otlp.shutdown().await?;                      // flush and stop both providers
//! # Ok(()) }
//! ```
//!
//! # Settings
//! Each setting comes from the builder if called, else from its variable,
//! else from the default. Invalid values are refused by
//! [`install`](OtlpExporterBuilder::install) with an [`OtlpError`] that
//! names the setting or variable and says what to write.
//!
//! | builder | variable | default |
//! |---|---|---|
//! | [`protocol`](OtlpExporterBuilder::protocol) | `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, `http/protobuf`; per signal below) | `grpc` when the `otlp-grpc` feature is on, else `http/protobuf` |
//! | [`endpoint`](OtlpExporterBuilder::endpoint) | `OTEL_EXPORTER_OTLP_ENDPOINT` | `http://localhost:4317` (gRPC), `http://localhost:4318` (HTTP) |
//! | [`header`](OtlpExporterBuilder::header) | `OTEL_EXPORTER_OTLP_HEADERS` (`k=v,k2=v2`, percent-encoded) | none; builder headers replace same-named ones |
//! | [`export_timeout`](OtlpExporterBuilder::export_timeout) | `OTEL_EXPORTER_OTLP_TIMEOUT` (ms) | 10 s |
//! | [`service_name`](OtlpExporterBuilder::service_name) | `OTEL_SERVICE_NAME` | `unknown_service` |
//! | [`resource_attribute`](OtlpExporterBuilder::resource_attribute) | `OTEL_RESOURCE_ATTRIBUTES` (`k=v,...`) | the `telemetry.sdk.*` attributes |
//! | [`metric_export_interval`](OtlpExporterBuilder::metric_export_interval) | `OTEL_METRIC_EXPORT_INTERVAL` (ms) | 60 s |
//! | [`server_trace_ratio`](OtlpExporterBuilder::server_trace_ratio) | `TOWER_CQL_SERVER_TRACE_RATIO` (0..=1; tower-cql's own) | unset: [`server_trace_config`](OtlpExporter::server_trace_config) is `None` |
//!
//! The endpoint is a base URL: gRPC sends to it as is, HTTP/protobuf posts
//! to `<endpoint>/v1/metrics` and `<endpoint>/v1/traces`.
//!
//! Protocol, endpoint, headers and timeout can also be set per signal, as in
//! `opentelemetry-otlp`: [`ENV_TRACES_PROTOCOL`], [`ENV_METRICS_PROTOCOL`]
//! (spans over HTTP/protobuf and metrics over gRPC, say; without an
//! endpoint each goes to its protocol's default port),
//! [`ENV_TRACES_ENDPOINT`], [`ENV_METRICS_ENDPOINT`]
//! (URLs used as is, no path appended), [`ENV_TRACES_HEADERS`],
//! [`ENV_METRICS_HEADERS`] (instead of `OTEL_EXPORTER_OTLP_HEADERS`),
//! [`ENV_TRACES_TIMEOUT`], [`ENV_METRICS_TIMEOUT`]. A signal's variable wins
//! over the general one; a builder call wins over both. They are validated
//! as strictly as the others. Only `http://`
//! is accepted: no TLS stack is built in (send to a local collector, which
//! forwards over TLS). `opentelemetry-otlp` itself still reads the
//! variables not listed here (`..._COMPRESSION`, `..._INSECURE`,
//! `..._TEMPORALITY_PREFERENCE`, ...), and the SDK its own
//! (`OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`); the settings above win over them.
//!
//! # Header values are secrets
//! They often carry API keys: `Debug` of the builder, the exporter and
//! every error shows header names only, errors never quote a value, and
//! the values are added to requests by this module (a gRPC interceptor, an
//! HTTP client wrapper), never handed to code that logs its configuration.
//!
//! Nor are they sent in clear text to another machine: with headers and a
//! plain `http://` endpoint whose host is not loopback (`localhost`,
//! 127.0.0.0/8, `::1`), [`install`](OtlpExporterBuilder::install) fails
//! with [`OtlpError::InsecureHeaders`] unless
//! [`allow_insecure_headers(true)`](OtlpExporterBuilder::allow_insecure_headers)
//! says the network on the way is trusted. That counts the headers of the
//! builder, of `OTEL_EXPORTER_OTLP_HEADERS`, and of the variables
//! `opentelemetry-otlp` reads from the process by itself
//! (`OTEL_EXPORTER_OTLP_METRICS_HEADERS`, `..._TRACES_HEADERS`).
//!
//! # Bound values stay in the process
//! [`tracing_layer`](OtlpExporter::tracing_layer) leaves out the scylla
//! driver's spans and events, whose `TRACE` spans record partition key
//! values; [`tracing_layer_with_driver_spans`](OtlpExporter::tracing_layer_with_driver_spans)
//! exports them, for those who filter the driver's `TRACE` level out or
//! may let the values leave.
//!
//! # When the endpoint cannot be reached
//! [`OtlpExporter::flush`] and [`OtlpExporter::shutdown`] fail with a
//! [`FlushError`] holding one [`ExportFailure`] per signal that failed:
//! the endpoint it was sent to (spans and metrics may go to different
//! ones), the [`ExportCause`] (connection refused, DNS lookup failed,
//! timed out, connection closed, an HTTP or gRPC status from the
//! collector) and, in its `Display`, what to do, e.g.
//! `spans to http://127.0.0.1:4317: connection refused — nothing listens
//! there: start the collector, or correct the endpoint (set by ...)`.
//!
//! What could not be exported is counted: spans and metric points in
//! exports that failed, those the collector took an export without
//! (an OTLP partial success, [`ExportCause::Rejected`]; seen over
//! HTTP/protobuf only, the gRPC exporter keeping the answer to itself),
//! and spans the SDK's batch span processor dropped because its queue was
//! full (the SDK only logs those two).
//! [`OtlpExporter::lost`] returns the counts, every [`FlushError`] carries
//! them, and [`OtlpExporter::shutdown`] fails whenever anything was lost,
//! e.g. `OTLP export failed, 7 spans and 3 metric points lost so far: ...`.
//!
//! # Self-observability
//! With [`self_observability(true)`](OtlpExporterBuilder::self_observability)
//! the same counts are metrics of the exporter's own, sent with the
//! others (scope `tower-cql`), named as the OpenTelemetry conventions for
//! SDK metrics name them, with `otel.component.type`
//! (`otlp_grpc_span_exporter`, `otlp_http_metric_exporter`, ...,
//! `batching_span_processor`):
//!
//! | counter | counts |
//! |---|---|
//! | `otel.sdk.exporter.span.exported` | spans whose export finished: taken by the collector (no `error.type`), or lost, with `error.type` |
//! | `otel.sdk.exporter.metric_data_point.exported` | the same for metric data points |
//! | `otel.sdk.processor.span.processed` | spans the batch span processor handed to an export, and those it dropped (`error.type` `queue_full`, counted as [`lost`](OtlpExporter::lost) counts them) |
//!
//! `error.type` is `rejected` for the items of a partial success, else the
//! cause of the failed export: `connection_refused`, `dns_failure`,
//! `timeout`, `connection_closed`, the HTTP status (`503`), the gRPC
//! status (`Unavailable`), or `_OTHER`. Over gRPC a partial success is not
//! seen (see above): its rejected items count as taken. Off by default:
//! the conventions for these metrics are still in development, and they
//! add a few series to every export.
//!
//! # Runtime
//! The SDK exports from its own threads; the connections run on the Tokio
//! runtime `install()` was called in. Flushing blocks the calling thread
//! until the export is done, so never flush from a runtime worker thread
//! yourself: the stack's `close()` and [`OtlpExporter::shutdown`] flush on
//! a blocking thread.

mod clear_text;
mod config;
mod error;
#[cfg(feature = "otlp-grpc")]
mod grpc;
#[cfg(feature = "otlp-http")]
mod http_client;
mod watch;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

use crate::otel::OtelCollector;

pub use self::config::{
    DEFAULT_EXPORT_TIMEOUT, DEFAULT_METRIC_EXPORT_INTERVAL, ENV_ENDPOINT, ENV_HEADERS,
    ENV_METRIC_EXPORT_INTERVAL, ENV_METRICS_ENDPOINT, ENV_METRICS_HEADERS, ENV_METRICS_PROTOCOL,
    ENV_METRICS_TIMEOUT, ENV_PROTOCOL, ENV_RESOURCE_ATTRIBUTES, ENV_SERVER_TRACE_RATIO,
    ENV_SERVICE_NAME, ENV_TIMEOUT, ENV_TRACES_ENDPOINT, ENV_TRACES_HEADERS, ENV_TRACES_PROTOCOL,
    ENV_TRACES_TIMEOUT, Protocol, Signal,
};
use self::config::{Env, Explicit, Resolved};
pub use self::error::{ExportCause, ExportFailure, FlushError, Lost, Origin, OtlpError};
use self::watch::{Counted, Watch, Watched, cause_of_sdk_error};

// The SDK's sampler variable, which the SDK reads from the process itself.
const ENV_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";

/// The instrumentation scope of the meter and tracer.
const SCOPE: &str = "tower-cql";

/// Self-observability: spans whose export finished (the SDK conventions' name).
const SPANS_EXPORTED: &str = "otel.sdk.exporter.span.exported";
/// Self-observability: metric data points whose export finished.
const POINTS_EXPORTED: &str = "otel.sdk.exporter.metric_data_point.exported";
/// Self-observability: spans the batch span processor handed on or dropped.
const SPANS_PROCESSED: &str = "otel.sdk.processor.span.processed";

/// Configures and installs an [`OtlpExporter`]; see the module docs.
#[derive(Clone)]
pub struct OtlpExporterBuilder {
    env: Env,
    explicit: Explicit,
    sampler: Option<SamplerSetting>,
    self_observability: bool,
}

// Sampler is not Clone; keep what is needed to make one.
#[derive(Debug, Clone, Copy)]
enum SamplerSetting {
    Ratio(f64),
}

impl fmt::Debug for OtlpExporterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = &self.explicit;
        f.debug_struct("OtlpExporterBuilder")
            .field("env_set", &self.env)
            .field("protocol", &x.protocol)
            .field(
                "endpoint",
                &x.endpoint.as_deref().map(config::shown_endpoint),
            )
            .field("headers", &RedactedNames(x.headers.iter().map(|(k, _)| k)))
            .field("service_name", &x.service_name)
            .field("resource", &x.resource)
            .field("metric_export_interval", &x.metric_export_interval)
            .field("export_timeout", &x.export_timeout)
            .field("allow_insecure_headers", &x.allow_insecure_headers)
            .field("server_trace_ratio", &x.server_trace_ratio)
            .field("sampler", &self.sampler)
            .field("self_observability", &self.self_observability)
            .finish()
    }
}

/// Shows `name: <redacted>` for each header.
struct RedactedNames<I>(I);

impl<I, N> fmt::Debug for RedactedNames<I>
where
    I: Iterator<Item = N> + Clone,
    N: fmt::Display,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.clone().map(|n| (n.to_string(), "<redacted>")))
            .finish()
    }
}

impl OtlpExporterBuilder {
    /// A builder over the process environment (the `OTEL_*` variables in
    /// the module docs, read now).
    pub fn from_env() -> OtlpExporterBuilder {
        OtlpExporterBuilder::with_env(Env::from_process())
    }

    /// A builder over the given variables instead of the process
    /// environment, e.g. from a config file or a test. Other names are ignored.
    pub fn from_vars<I, K, V>(vars: I) -> OtlpExporterBuilder
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.into()))
            .collect();
        OtlpExporterBuilder::with_env(Env::from_lookup(|name| {
            vars.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }))
    }

    fn with_env(env: Env) -> OtlpExporterBuilder {
        OtlpExporterBuilder {
            env,
            explicit: Explicit::default(),
            sampler: None,
            self_observability: false,
        }
    }

    /// The transport of both signals (else each signal's own variable,
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `..._METRICS_PROTOCOL`, else
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`, else gRPC when built in).
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.explicit.protocol = Some(protocol);
        self
    }

    /// The base URL, `http://host:port[/path]` (else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, else the protocol's default port on
    /// localhost). HTTP/protobuf appends `/v1/metrics` and `/v1/traces`.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.explicit.endpoint = Some(endpoint.into());
        self
    }

    /// A header (gRPC metadata) sent with every export, e.g. an API key.
    /// Replaces a header of the same name from `OTEL_EXPORTER_OTLP_HEADERS`.
    /// The value is never shown by `Debug` or in errors.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.explicit.headers.push((name.into(), value.into()));
        self
    }

    /// The `service.name` resource attribute (else `OTEL_SERVICE_NAME`,
    /// else `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else `unknown_service`).
    /// An empty (or blank) name is refused by [`install`](Self::install)
    /// ([`OtlpError::InvalidResourceAttribute`]).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.explicit.service_name = Some(name.into());
        self
    }

    /// A resource attribute, added to those of `OTEL_RESOURCE_ATTRIBUTES`
    /// (replacing one with the same key). An empty key, or an empty
    /// `service.name`, is refused by [`install`](Self::install)
    /// ([`OtlpError::InvalidResourceAttribute`]), as in the variable.
    pub fn resource_attribute(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.explicit
            .resource
            .push(KeyValue::new(key.into(), value.into()));
        self
    }

    /// Time between metric exports (else `OTEL_METRIC_EXPORT_INTERVAL`,
    /// else 60 s); must be more than zero. The stack's `close()` and
    /// [`OtlpExporter::shutdown`] export whatever is left regardless.
    pub fn metric_export_interval(mut self, interval: Duration) -> Self {
        self.explicit.metric_export_interval = Some(interval);
        self
    }

    /// Time limit of one export (else `OTEL_EXPORTER_OTLP_TIMEOUT`, else
    /// 10 s); must be more than zero.
    pub fn export_timeout(mut self, timeout: Duration) -> Self {
        self.explicit.export_timeout = Some(timeout);
        self
    }

    /// Keep this fraction of traces (clamped to 0..=1, NaN counting as 0;
    /// parent-based, so a sampled caller's trace is always kept). Default:
    /// the SDK's, i.e. `OTEL_TRACES_SAMPLER`, else every trace (as a ratio
    /// of 1, parent-based). The
    /// [`span_collector`](OtlpExporter::span_collector) then samples its
    /// requests at this ratio itself, before the tracer is asked, which
    /// costs far less per request not sampled.
    pub fn trace_sample_ratio(mut self, ratio: f64) -> Self {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self.sampler = Some(SamplerSetting::Ratio(ratio));
        self
    }

    /// Traces this fraction of requests on the server (`0..=1`), for
    /// [`OtlpExporter::server_trace_config`]; wins over
    /// `TOWER_CQL_SERVER_TRACE_RATIO`. Checked by [`install`](Self::install),
    /// which refuses a value outside `0..=1` (or NaN) with
    /// [`OtlpError::InvalidRatio`] naming this call.
    pub fn server_trace_ratio(mut self, ratio: f64) -> Self {
        self.explicit.server_trace_ratio = Some(ratio);
        self
    }

    /// Sends the headers even though the endpoint is plain `http://` on a
    /// host other than this machine (default: refused by
    /// [`install`](Self::install) with [`OtlpError::InsecureHeaders`]).
    ///
    /// Header values are usually API keys, and over `http://` anyone on
    /// the way can read them. Allow it only when the network between is
    /// trusted; else send to a collector on loopback (a sidecar) that
    /// forwards over TLS. Loopback endpoints (`localhost`, 127.0.0.0/8,
    /// `::1`) never need this.
    pub fn allow_insecure_headers(mut self, allow: bool) -> Self {
        self.explicit.allow_insecure_headers = allow;
        self
    }

    /// Counts what became of every export in metrics of the exporter's
    /// own, sent with the others (default: off). See "Self-observability"
    /// in the module docs.
    pub fn self_observability(mut self, on: bool) -> Self {
        self.self_observability = on;
        self
    }

    /// The validated settings `install()` uses: those of the builder and
    /// its variables, and no header in clear text to another host (nor any
    /// the SDK would add from the process environment) unless allowed.
    fn resolve(&self) -> Result<Resolved, OtlpError> {
        let cfg = config::resolve(&self.env, &self.explicit)?;
        clear_text::refuse_headers_in_clear(&cfg, self.explicit.allow_insecure_headers, |var| {
            std::env::var(var).ok()
        })?;
        Ok(cfg)
    }

    /// Validates the settings, builds the metric and span exporters and
    /// their providers. Must be called inside a Tokio runtime.
    pub fn install(self) -> Result<OtlpExporter, OtlpError> {
        let cfg = self.resolve()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| OtlpError::NoRuntime)?;
        let watches = Arc::new(Watches::new(&cfg));
        let (metric_exporter, span_exporter) = exporters(&cfg, &runtime, &watches)?;
        let metric_exporter = Watched {
            inner: metric_exporter,
            watch: watches.metrics.clone(),
        };
        let span_exporter = Watched {
            inner: span_exporter,
            watch: watches.traces.clone(),
        };

        let resource = Resource::builder_empty()
            .with_detector(Box::new(TelemetryResourceDetector))
            .with_attributes(cfg.resource.iter().cloned())
            .build();
        let meter_provider = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(
                PeriodicReader::builder(metric_exporter)
                    .with_interval(cfg.metric_export_interval)
                    .build(),
            )
            .build();
        if self.self_observability {
            watches.observe_on(&meter_provider);
        }
        let mut tracer_provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_span_processor(Counted {
                inner: BatchSpanProcessor::builder(span_exporter).build(),
                ended: watches.spans_ended.clone(),
            });
        let trace_ratio = match self.sampler {
            Some(SamplerSetting::Ratio(r)) => Some(r),
            // The SDK's own default when the process sets no
            // `OTEL_TRACES_SAMPLER` (which the SDK reads itself): every
            // trace, parent-based. Said here as a ratio of 1, so that the
            // span collector samples first there too.
            None if std::env::var_os(ENV_TRACES_SAMPLER).is_none_or(|v| v.is_empty()) => Some(1.0),
            None => None,
        };
        if let Some(r) = trace_ratio {
            // the span collector samples its requests itself at the same
            // ratio (cheaper than asking this sampler): keep those
            let root = if r >= 1.0 {
                Sampler::AlwaysOn
            } else {
                Sampler::TraceIdRatioBased(r)
            };
            tracer_provider = tracer_provider.with_sampler(crate::spans::KeepPresampled::new(
                Sampler::ParentBased(Box::new(root)),
            ));
        }
        let tracer_provider = tracer_provider.build();
        let tracer = tracer_provider.tracer_with_scope(scope());
        Ok(OtlpExporter {
            cfg,
            watches,
            meter_provider,
            tracer_provider,
            tracer,
            trace_ratio,
        })
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(SCOPE)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

type Exporters = (
    opentelemetry_otlp::MetricExporter,
    opentelemetry_otlp::SpanExporter,
);

/// Each signal's [`Watch`], shared by its exporter and transport, and the
/// count of what was lost.
#[derive(Debug)]
struct Watches {
    traces: Arc<Watch>,
    metrics: Arc<Watch>,
    /// Sampled spans ended, i.e. handed to the batch span processor.
    spans_ended: Arc<AtomicU64>,
    /// Spans the batch span processor dropped, as of the last flush whose
    /// span export succeeded.
    spans_dropped: AtomicU64,
    /// Shut down: the processor holds no span any more.
    shut_down: AtomicBool,
}

/// What the counts were when a flush or shutdown began.
#[derive(Debug, Clone, Copy)]
struct Before {
    failures: [u64; 2],
    lost: Lost,
    spans_ended: u64,
}

impl Watches {
    fn new(cfg: &Resolved) -> Watches {
        let watch = |signal| {
            let t = cfg.target(signal);
            Arc::new(Watch::new(signal, t.protocol, t.url.clone(), t.timeout))
        };
        Watches {
            traces: watch(Signal::Traces),
            metrics: watch(Signal::Metrics),
            spans_ended: Arc::new(AtomicU64::new(0)),
            spans_dropped: AtomicU64::new(0),
            shut_down: AtomicBool::new(false),
        }
    }

    /// Spans lost: in failed exports, and never handed to an export (the
    /// queue was full). Once shut down, every span ended was handed to an
    /// export or dropped; before, some may still wait in the queue, so the
    /// last flush's count stands.
    fn lost(&self) -> Lost {
        Lost {
            spans: self.traces.failed_items() + self.spans_dropped(),
            metric_points: self.metrics.failed_items(),
        }
    }

    /// Spans the batch span processor dropped (its queue was full): see
    /// [`lost`](Self::lost).
    fn spans_dropped(&self) -> u64 {
        if self.shut_down.load(Ordering::Acquire) {
            let ended = self.spans_ended.load(Ordering::Acquire);
            ended.saturating_sub(self.traces.delivered())
        } else {
            self.spans_dropped.load(Ordering::Acquire)
        }
    }

    /// Registers the self-observability counters on `provider` (see the
    /// module docs), each observing these counts when metrics are
    /// collected.
    fn observe_on(self: &Arc<Watches>, provider: &SdkMeterProvider) {
        use opentelemetry::metrics::MeterProvider as _;
        let meter = provider.meter_with_scope(scope());
        for watch in [&self.traces, &self.metrics] {
            let (name, unit, items, kind) = match watch.signal() {
                Signal::Traces => (SPANS_EXPORTED, "{span}", "spans", "span"),
                Signal::Metrics => (
                    POINTS_EXPORTED,
                    "{data_point}",
                    "metric data points",
                    "metric",
                ),
            };
            let component = KeyValue::new(
                "otel.component.type",
                format!(
                    "otlp_{}_{kind}_exporter",
                    match watch.protocol() {
                        Protocol::Grpc => "grpc",
                        Protocol::HttpProtobuf => "http",
                    }
                ),
            );
            let watch = watch.clone();
            let _ = meter
                .u64_observable_counter(name)
                .with_unit(unit)
                .with_description(format!(
                    "The number of {items} for which the export has finished, either successful or failed"
                ))
                .with_callback(move |o| {
                    let (taken, failed) = watch.outcomes();
                    if taken > 0 {
                        o.observe(taken, std::slice::from_ref(&component));
                    }
                    for (error_type, n) in failed {
                        o.observe(
                            n,
                            &[component.clone(), KeyValue::new("error.type", error_type)],
                        );
                    }
                })
                .build();
        }
        let watches = self.clone();
        let component = KeyValue::new("otel.component.type", "batching_span_processor");
        let _ = meter
            .u64_observable_counter(SPANS_PROCESSED)
            .with_unit("{span}")
            .with_description(
                "The number of spans for which the processing has finished, either successful or failed",
            )
            .with_callback(move |o| {
                let handed = watches.traces.delivered();
                if handed > 0 {
                    o.observe(handed, std::slice::from_ref(&component));
                }
                let dropped = watches.spans_dropped();
                if dropped > 0 {
                    o.observe(
                        dropped,
                        &[component.clone(), KeyValue::new("error.type", "queue_full")],
                    );
                }
            })
            .build();
    }

    fn before(&self) -> Before {
        Before {
            failures: [self.traces.failures(), self.metrics.failures()],
            lost: self.lost(),
            spans_ended: self.spans_ended.load(Ordering::Acquire),
        }
    }

    /// The outcome of a flush or shutdown, from the SDK's answers for spans
    /// and metrics and the counts before it began. A signal failed if one
    /// of its exports failed meanwhile (its SDK answer may still be Ok:
    /// the span processor answers for its last batch only), or if the SDK
    /// says so. A shutdown also fails if anything was lost before it, and
    /// names the last failure of each signal that lost something.
    fn report(
        &self,
        before: Before,
        answers: [Option<OTelSdkError>; 2],
        shutdown: bool,
    ) -> Result<(), FlushError> {
        let already = |a: &Option<OTelSdkError>| matches!(a, Some(OTelSdkError::AlreadyShutdown));
        if shutdown && answers.iter().all(already) {
            return Ok(()); // a second shutdown does nothing
        }
        if shutdown {
            self.shut_down.store(true, Ordering::Release);
        } else if answers[0].is_none() {
            // Every span ended before the flush began was handed to an
            // export by it, or dropped.
            let dropped = before.spans_ended.saturating_sub(self.traces.delivered());
            self.spans_dropped.fetch_max(dropped, Ordering::AcqRel);
        }
        let lost = self.lost();
        let lost_by = [lost.spans, lost.metric_points];
        let mut failures = Vec::new();
        for (((watch, before), answer), lost) in [&self.traces, &self.metrics]
            .into_iter()
            .zip(before.failures)
            .zip(answers)
            .zip(lost_by)
        {
            let answer = answer.filter(|e| !matches!(e, OTelSdkError::AlreadyShutdown));
            if watch.failures() > before
                && let Some(failure) = watch.last_failure()
            {
                failures.push(failure);
            } else if let Some(e) = answer {
                failures.push(watch.failure(cause_of_sdk_error(&e, Duration::ZERO, Duration::MAX)));
            } else if shutdown
                && lost > 0
                && let Some(failure) = watch.last_failure()
            {
                failures.push(failure);
            }
        }
        let lost_before = shutdown && !lost.is_none();
        if failures.is_empty() && lost == before.lost && !lost_before {
            Ok(())
        } else {
            Err(FlushError { failures, lost })
        }
    }
}

/// Each signal's exporter, over its own protocol.
#[allow(unused_variables)]
fn exporters(
    cfg: &Resolved,
    runtime: &tokio::runtime::Handle,
    watches: &Watches,
) -> Result<Exporters, OtlpError> {
    // (never called: `resolve` refuses a protocol that is not built in)
    let not_enabled = |p: Protocol| OtlpError::ProtocolNotEnabled {
        protocol: p.as_str(),
        feature: p.feature(),
        origin: Origin::Builder("protocol"),
    };
    let (m, t) = (&cfg.metrics, &cfg.traces);
    #[allow(unreachable_patterns)]
    let metrics = match m.protocol {
        #[cfg(feature = "otlp-grpc")]
        Protocol::Grpc => grpc::metric_exporter(m)?,
        #[cfg(feature = "otlp-http")]
        Protocol::HttpProtobuf => http_client::metric_exporter(m, runtime, &watches.metrics)?,
        p => return Err(not_enabled(p)),
    };
    #[allow(unreachable_patterns)]
    let spans = match t.protocol {
        #[cfg(feature = "otlp-grpc")]
        Protocol::Grpc => grpc::span_exporter(t)?,
        #[cfg(feature = "otlp-http")]
        Protocol::HttpProtobuf => http_client::span_exporter(t, runtime, &watches.traces)?,
        p => return Err(not_enabled(p)),
    };
    Ok((metrics, spans))
}

/// The installed exporter: owns the meter and tracer providers; hands out
/// the stack's collector and the tracing layer. See the module docs.
///
/// Call [`shutdown`](OtlpExporter::shutdown) before the process exits.
/// Without it the SDK shuts the providers down when their last handle is
/// dropped, blocking that thread for up to 5 s per provider while it
/// exports, and on a runtime worker thread the export may need that very
/// thread.
pub struct OtlpExporter {
    cfg: Resolved,
    watches: Arc<Watches>,
    meter_provider: SdkMeterProvider,
    tracer_provider: SdkTracerProvider,
    tracer: SdkTracer,
    // the ratio the span collector samples at: `trace_sample_ratio`, or 1
    // when neither it nor `OTEL_TRACES_SAMPLER` is set; `None`: the
    // SDK's sampler from that variable decides
    trace_ratio: Option<f64>,
}

impl fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpExporter")
            .field("protocol", &self.cfg.protocol)
            .field("endpoint", &self.cfg.endpoint)
            .field("traces", &self.cfg.traces)
            .field("metrics", &self.cfg.metrics)
            .field("resource", &self.cfg.resource)
            .field("metric_export_interval", &self.cfg.metric_export_interval)
            .field("trace_sample_ratio", &self.trace_ratio)
            .finish()
    }
}

impl OtlpExporter {
    /// A builder over the process environment; same as
    /// [`OtlpExporterBuilder::from_env`].
    pub fn builder() -> OtlpExporterBuilder {
        OtlpExporterBuilder::from_env()
    }

    /// The protocol in use: the builder's, else `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// else the default. A signal's own variable ([`ENV_TRACES_PROTOCOL`],
    /// [`ENV_METRICS_PROTOCOL`]) may choose another for that signal, unless
    /// the builder set one; an export's [`ExportFailure::protocol`] says
    /// which it used.
    pub fn protocol(&self) -> Protocol {
        self.cfg.protocol
    }

    /// The base endpoint in use (no trailing `/`): the builder's, else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, else the protocol's default.
    pub fn endpoint(&self) -> &str {
        &self.cfg.endpoint
    }

    /// The URL spans are sent to: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as
    /// is, unless the builder set an endpoint; else the base endpoint
    /// (HTTP/protobuf: with `/v1/traces`).
    pub fn traces_endpoint(&self) -> &str {
        &self.cfg.traces.url
    }

    /// The URL metrics are sent to: `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`
    /// as is, unless the builder set an endpoint; else the base endpoint
    /// (HTTP/protobuf: with `/v1/metrics`).
    pub fn metrics_endpoint(&self) -> &str {
        &self.cfg.metrics.url
    }

    /// The `service.name` resource attribute sent.
    pub fn service_name(&self) -> String {
        self.cfg
            .resource_value("service.name")
            .map(|v| v.as_str().into_owned())
            .unwrap_or_default()
    }

    /// The interval between metric exports.
    pub fn metric_export_interval(&self) -> Duration {
        self.cfg.metric_export_interval
    }

    /// The stack's server tracing as this exporter was configured
    /// ([`OtlpExporterBuilder::server_trace_ratio`], else
    /// `TOWER_CQL_SERVER_TRACE_RATIO`): that ratio and the other settings'
    /// defaults, or `None` when neither is set. Pass it to
    /// `StackBuilder::server_trace`; the server spans then reach this
    /// exporter through [`span_collector`](Self::span_collector), or with
    /// [`tracing_layer`](Self::tracing_layer) through
    /// [`server_trace_collector`](Self::server_trace_collector) in the
    /// collector set. A ratio of 0 is a config that traces nothing (the
    /// stack then adds no layer).
    pub fn server_trace_config(&self) -> Option<tower_cql_core::server_trace::ServerTraceConfig> {
        self.cfg
            .server_trace_ratio
            .map(|r| tower_cql_core::server_trace::ServerTraceConfig {
                sample_ratio: r,
                ..Default::default()
            })
    }

    /// A collector recording the stack's metrics on this exporter's meter
    /// provider. Its `flush()`, which the stack's `close()` calls, exports
    /// the pending metrics and spans; a flush that fails counts as its
    /// failure (`Collectors::failures`). `close()` waits for that flush
    /// for both signals' export timeouts and 5 s more, never less than
    /// [`DEFAULT_FLUSH_TIMEOUT`](tower_cql_core::DEFAULT_FLUSH_TIMEOUT)
    /// (see [`OtelCollector::with_flush_timeout`]). Add one per
    /// [`Collectors`] set: two would record every event twice into the
    /// same instruments.
    ///
    /// [`Collectors`]: tower_cql_core::Collectors
    pub fn collector(&self) -> OtelCollector {
        let traces = self.tracer_provider.clone();
        // the flush exports the metrics, then the spans, each bounded by
        // its signal's timeout
        let exports =
            self.cfg.target(Signal::Metrics).timeout + self.cfg.target(Signal::Traces).timeout;
        let bound = (exports + Duration::from_secs(5)).max(tower_cql_core::DEFAULT_FLUSH_TIMEOUT);
        OtelCollector::with_provider(&self.meter_provider)
            .also_flush(Arc::new(move || traces.force_flush()))
            .with_flush_timeout(bound)
    }

    /// A `tracing` layer exporting spans (the tracing middleware's
    /// `cql.request`/`cql.attempt` spans among them) to this exporter.
    ///
    /// It leaves out two sets of crates, spans and events alike:
    /// - **the scylla driver** (targets `scylla`, `scylla_cql`, ...): its
    ///   `TRACE` spans (`Request`, ...) record bound values such as the
    ///   partition key, which must not leave the process; opt in with
    ///   [`tracing_layer_with_driver_spans`](Self::tracing_layer_with_driver_spans);
    /// - the crates that carry the export (`h2`, `hyper`, `tonic`,
    ///   `tower`, `opentelemetry*`, `tokio`): exporting them would make
    ///   more of them, for ever.
    ///
    /// Everything else passes, your own spans included (so they can be the
    /// parents of the stack's). Add a filter of your own to narrow it
    /// further, e.g. to the targets starting with `tower_cql`.
    pub fn tracing_layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        self.layer(Driver::LeftOut)
    }

    /// [`tracing_layer`](Self::tracing_layer) with the scylla driver's own
    /// spans and events exported too.
    ///
    /// **Warning:** at `TRACE` the driver records bound values in its
    /// spans (the partition key of every request, in scylla 1.9), and with
    /// this layer they are sent to the OTLP endpoint. Filter the `scylla`
    /// targets to `DEBUG` or above (e.g. `RUST_LOG=info,scylla=debug`)
    /// unless the values may leave the process.
    pub fn tracing_layer_with_driver_spans<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        self.layer(Driver::Exported)
    }

    fn layer<S>(&self, driver: Driver) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.clone())
            .with_filter(filter_fn(move |m| {
                let t = m.target();
                !is_transport(t) && (driver == Driver::Exported || !is_driver(t))
            }))
    }

    /// The server traces of the stack's requests (server tracing on in the
    /// stack) as child spans of the request's `tracing` span exported by
    /// [`tracing_layer`](Self::tracing_layer): add it to the collector set.
    /// With [`span_collector`](Self::span_collector) instead, that one does
    /// it; see [`server_spans`](crate::server_spans).
    pub fn server_trace_collector(&self) -> crate::server_spans::ServerTraceCollector<SdkTracer> {
        crate::server_spans::ServerTraceCollector::new(self.tracer.clone())
    }

    /// One span per request made from the stack's request events through
    /// this exporter's tracer, sampled before anything is built: the cheap
    /// alternative to [`tracing_layer`](Self::tracing_layer) (about 4,500
    /// instructions per sampled request against 17,000–26,000 per span
    /// sampled or not; see [`crate::spans`]). With
    /// [`trace_sample_ratio`](OtlpExporterBuilder::trace_sample_ratio) set,
    /// or neither it nor `OTEL_TRACES_SAMPLER` (every request, then), the
    /// collector samples at that ratio itself
    /// ([`SpanCollector::sample_ratio`](crate::spans::SpanCollector::sample_ratio),
    /// about 70 instructions per request not sampled) and the exporter's
    /// sampler keeps what it sampled
    /// ([`KeepPresampled`](crate::spans::KeepPresampled)); with
    /// `OTEL_TRACES_SAMPLER` set and no ratio, the tracer's sampler (the
    /// SDK's, from that variable) decides, for about 750. Add it to the collector set beside
    /// [`collector`](Self::collector) (which flushes it on close), and turn
    /// the stack's tracing layers off with `StackBuilder::without_trace`.
    pub fn span_collector(&self) -> crate::spans::SpanCollector<SdkTracer> {
        let spans = crate::spans::SpanCollector::new(self.tracer.clone());
        match self.trace_ratio {
            Some(r) => spans.sample_ratio(r),
            None => spans,
        }
    }

    /// What could not be exported so far: spans and metric points in
    /// exports that failed or that the collector rejected (HTTP/protobuf:
    /// [`ExportCause::Rejected`]), and spans the batch span processor dropped
    /// because its queue was full (which the SDK only logs). The drops are
    /// counted exactly after [`shutdown`](Self::shutdown); before, as of
    /// the last [`flush`](Self::flush) whose
    /// span export succeeded.
    pub fn lost(&self) -> Lost {
        self.watches.lost()
    }

    /// The tracer (scope `tower-cql`), for spans of your own.
    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// The meter provider, e.g. for meters of your own.
    pub fn meter_provider(&self) -> &SdkMeterProvider {
        &self.meter_provider
    }

    /// The tracer provider.
    pub fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.tracer_provider
    }

    /// Exports pending spans and metrics now, on a blocking thread.
    ///
    /// The error names each signal that failed, the endpoint it was sent
    /// to and the cause ([`ExportCause`]: connection refused, timed out,
    /// ...), says what to do, and how much was [`lost`](Self::lost) so far;
    /// it is returned when an export failed during the flush, or more was
    /// lost meanwhile.
    pub async fn flush(&self) -> Result<(), FlushError> {
        let (t, m) = (self.tracer_provider.clone(), self.meter_provider.clone());
        let before = self.watches.before();
        let answers = off_runtime(move || [t.force_flush().err(), m.force_flush().err()]).await;
        self.watches.report(before, answers, false)
    }

    /// Exports what is pending and stops both providers (on a blocking
    /// thread). Call it before the process exits; calling it again is a
    /// no-op. Spans first, so that metrics recorded while they ended go too.
    ///
    /// Fails as [`flush`](Self::flush) does, and also when anything was
    /// lost before: the error says how many spans and metric points were
    /// lost in all ([`FlushError::lost`], exact now that no span is left
    /// in the queue) and why (the last failure of each signal).
    pub async fn shutdown(&self) -> Result<(), FlushError> {
        let (t, m) = (self.tracer_provider.clone(), self.meter_provider.clone());
        let before = self.watches.before();
        let answers = off_runtime(move || [t.shutdown().err(), m.shutdown().err()]).await;
        self.watches.report(before, answers, true)
    }
}

/// Targets of the crates an export goes through.
const TRANSPORT_TARGETS: [&str; 10] = [
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
    "opentelemetry_http",
    "tokio",
];

fn is_transport(target: &str) -> bool {
    TRANSPORT_TARGETS.iter().any(|t| {
        target
            .strip_prefix(t)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// Whether the tracing layer exports the scylla driver's spans and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    LeftOut,
    Exported,
}

/// A target of the scylla driver's crates: `scylla`, or `scylla_*`
/// (`scylla_cql`, ...), alone or followed by `::`.
fn is_driver(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    krate == "scylla" || krate.starts_with("scylla_")
}

/// Runs `f` (which blocks until the SDK's threads answer) on a blocking
/// thread when inside a runtime.
async fn off_runtime(
    f: impl FnOnce() -> [Option<OTelSdkError>; 2] + Send + 'static,
) -> [Option<OTelSdkError>; 2] {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
            let e = || {
                Some(OTelSdkError::InternalFailure(format!(
                    "flush thread failed: {e}"
                )))
            };
            [e(), e()]
        }),
        Err(_) => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::{OtlpError, OtlpExporterBuilder, is_driver, is_transport};

    #[tokio::test]
    async fn the_server_trace_ratio_reaches_the_stack_config() {
        let install = |b: OtlpExporterBuilder| b.endpoint("http://127.0.0.1:4317").install();
        let none = install(OtlpExporterBuilder::from_vars(Vec::<(&str, &str)>::new())).unwrap();
        assert_eq!(none.server_trace_config(), None);
        let vars = [(super::ENV_SERVER_TRACE_RATIO, "0.02")];
        let from_env = install(OtlpExporterBuilder::from_vars(vars)).unwrap();
        let c = from_env.server_trace_config().unwrap();
        assert_eq!(c.sample_ratio, 0.02);
        assert_eq!(
            tower_cql_core::server_trace::ServerTraceConfig {
                sample_ratio: 0.0,
                ..c
            },
            tower_cql_core::server_trace::ServerTraceConfig::default(),
            "the other settings are the defaults"
        );
        let explicit =
            install(OtlpExporterBuilder::from_vars(vars).server_trace_ratio(0.5)).unwrap();
        assert_eq!(explicit.server_trace_config().unwrap().sample_ratio, 0.5);
        let err =
            install(OtlpExporterBuilder::from_vars(vars).server_trace_ratio(1.5)).unwrap_err();
        assert!(matches!(err, OtlpError::InvalidRatio { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("(from OtlpExporterBuilder::server_trace_ratio)"),
            "{err}"
        );
        for e in [none, from_env, explicit] {
            let _ = e.shutdown().await; // nothing listens there: only the providers matter
        }
    }

    /// The collector's flush, which the stack's `close()` waits for up to
    /// the collector's `flush_timeout`, exports the metrics and then the
    /// spans, each export bounded by its signal's export timeout: a bound
    /// shorter than the two gave up on a slow but working export (and
    /// counted it as a failure). It was `DEFAULT_FLUSH_TIMEOUT` (30 s)
    /// whatever the export timeouts.
    #[tokio::test]
    async fn the_collectors_flush_bound_covers_both_exports() {
        use std::time::Duration;
        use tower_cql_core::Collector as _;
        let install = |b: OtlpExporterBuilder| b.endpoint("http://127.0.0.1:4317").install();
        let slow = install(
            OtlpExporterBuilder::from_vars(Vec::<(&str, &str)>::new())
                .export_timeout(Duration::from_secs(20)),
        )
        .unwrap();
        let bound = slow.collector().flush_timeout();
        assert!(
            bound > Duration::from_secs(40),
            "exports of 20 s each, a flush bound of {bound:?}"
        );
        let quick = install(
            OtlpExporterBuilder::from_vars(Vec::<(&str, &str)>::new())
                .export_timeout(Duration::from_millis(100)),
        )
        .unwrap();
        assert_eq!(
            quick.collector().flush_timeout(),
            tower_cql_core::DEFAULT_FLUSH_TIMEOUT,
            "never shorter than the default"
        );
        for e in [slow, quick] {
            let _ = e.shutdown().await; // nothing listens there
        }
    }

    #[test]
    fn allow_insecure_headers_lets_headers_go_to_another_host() {
        // resolve() is what install() checks first: no exporter is built,
        // nothing is sent
        let b = OtlpExporterBuilder::from_vars([(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector.internal:4317",
        )])
        .header("api-key", "k");
        let err = b.clone().resolve().unwrap_err();
        assert!(matches!(err, OtlpError::InsecureHeaders { .. }), "{err:?}");
        let b = b.allow_insecure_headers(true);
        assert!(format!("{b:?}").contains("allow_insecure_headers: true"));
        let cfg = b.resolve().expect("allowed explicitly");
        assert_eq!(cfg.endpoint, "http://collector.internal:4317");
        assert_eq!(cfg.traces.headers.len(), 1);
    }

    #[test]
    fn driver_targets_are_the_scylla_crates_and_nothing_else() {
        for t in [
            "scylla",
            "scylla::network::connection",
            "scylla::observability::tracing",
            "scylla_cql::frame",
            "scylla_cql_core",
        ] {
            assert!(is_driver(t), "{t}");
        }
        for t in [
            "tower_cql_core::driver",
            "tower_cql_middleware::trace",
            "scyllamigrate",
            "my_app::scylla",
            "h2",
        ] {
            assert!(!is_driver(t), "{t}");
        }
    }

    #[test]
    fn transport_targets_are_left_out_and_nothing_else() {
        for t in [
            "h2",
            "h2::proto",
            "hyper::client",
            "tonic::transport",
            "tower::buffer",
        ] {
            assert!(is_transport(t), "{t}");
        }
        for t in [
            "tower_cql_middleware::trace",
            "scylla::network",
            "h2o",
            "towering",
            "my_app",
        ] {
            assert!(!is_transport(t), "{t}");
        }
    }
}
