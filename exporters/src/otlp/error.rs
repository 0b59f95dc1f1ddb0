//! Errors of the OTLP exporter. Messages name the setting (or the
//! environment variable it came from) and say what to write instead; they
//! never contain a header value.

use std::fmt;
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkError;

/// Where a setting came from: a builder call or an environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A call on [`OtlpExporterBuilder`](super::OtlpExporterBuilder), e.g. `.endpoint(..)`.
    Builder(&'static str),
    /// An environment variable, e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`.
    Env(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Builder(call) => write!(f, "OtlpExporterBuilder::{call}"),
            Origin::Env(var) => write!(f, "{var}"),
        }
    }
}

/// Why [`OtlpExporterBuilder::install`](super::OtlpExporterBuilder::install)
/// refused the configuration or could not start the exporters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtlpError {
    /// The endpoint is not an absolute `http://host:port` URL.
    #[error(
        "invalid OTLP endpoint {endpoint:?} (from {origin}): {reason}; write an absolute URL such as http://127.0.0.1:4317 (gRPC) or http://127.0.0.1:4318 (HTTP/protobuf)"
    )]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
        /// Where it came from.
        origin: Origin,
    },
    /// An `https://` endpoint: no TLS stack is built into the exporter.
    #[error(
        "the OTLP endpoint {endpoint:?} (from {origin}) uses https, but tower-cql-exporters is built without TLS; send to a local collector over http:// (e.g. an OpenTelemetry Collector sidecar) and let it forward over TLS"
    )]
    TlsNotAvailable {
        /// The endpoint as given.
        endpoint: String,
        /// Where it came from.
        origin: Origin,
    },
    /// Headers, usually API keys, would be sent in clear text (plain
    /// `http://`) to a host that is not this machine. The values are never
    /// part of the message.
    #[error(
        "OTLP headers (from {origin}) would be sent in clear text over http:// to {endpoint:?}, which is not a loopback address, and headers usually carry API keys; send to a collector on this machine (e.g. http://127.0.0.1:4317, an OpenTelemetry Collector sidecar that forwards over TLS), or, if the network on the way is trusted, call OtlpExporterBuilder::allow_insecure_headers(true)"
    )]
    InsecureHeaders {
        /// The endpoint the headers would go to.
        endpoint: String,
        /// Where the (first) header came from.
        origin: Origin,
    },
    /// A protocol name other than `grpc` or `http/protobuf`.
    #[error(
        "unknown OTLP protocol {value:?} (from {origin}); use \"grpc\" or \"http/protobuf\" (\"http/json\" is not supported)"
    )]
    UnknownProtocol {
        /// The protocol as given.
        value: String,
        /// Where it came from.
        origin: Origin,
    },
    /// A protocol whose cargo feature is not enabled.
    #[error(
        "the OTLP protocol {protocol} (from {origin}) needs the `{feature}` feature of tower-cql-exporters; enable it, or choose the other protocol"
    )]
    ProtocolNotEnabled {
        /// The protocol asked for.
        protocol: &'static str,
        /// The cargo feature that provides it.
        feature: &'static str,
        /// Where it came from.
        origin: Origin,
    },
    /// A header that is not a valid `key=value` pair, or whose name or value
    /// HTTP/gRPC cannot carry. The value is never part of the message.
    #[error(
        "malformed OTLP header {which} (from {origin}): {reason}; headers are key=value pairs separated by commas, values percent-encoded (e.g. api-key=abc%20def)"
    )]
    InvalidHeader {
        /// The header's name when it could be read, else its position.
        which: String,
        /// What is wrong (never the value).
        reason: &'static str,
        /// Where it came from.
        origin: Origin,
    },
    /// A duration that is not a positive whole number of milliseconds.
    #[error(
        "invalid {what} {value:?} (from {origin}): {reason}; give a positive number of milliseconds, e.g. 10000"
    )]
    InvalidDuration {
        /// Which setting (`metric export interval`, `export timeout`).
        what: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
        /// Where it came from.
        origin: Origin,
    },
    /// A resource attribute that is not a `key=value` pair.
    #[error(
        "malformed resource attribute {which} (from {origin}): {reason}; resource attributes are key=value pairs separated by commas, e.g. service.namespace=shop,deployment.environment.name=prod"
    )]
    InvalidResourceAttribute {
        /// The attribute's key when it could be read, else its position.
        which: String,
        /// What is wrong.
        reason: &'static str,
        /// Where it came from.
        origin: Origin,
    },
    /// `install()` was called outside a Tokio runtime.
    #[error(
        "the OTLP exporter must be installed inside a Tokio runtime (its connections run there); call install() from async code or within Runtime::enter()"
    )]
    NoRuntime,
    /// `opentelemetry-otlp` refused to build an exporter.
    #[error("cannot build the OTLP {signal} exporter: {source}")]
    Exporter {
        /// `metrics` or `traces`.
        signal: &'static str,
        /// The exporter's error.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Why [`OtlpExporter::flush`](super::OtlpExporter::flush) or
/// [`OtlpExporter::shutdown`](super::OtlpExporter::shutdown) could not
/// export everything (e.g. the collector was unreachable).
#[derive(Debug, thiserror::Error)]
#[error("OTLP export: {}", describe(.metrics, .traces))]
pub struct FlushError {
    /// The meter provider's error, if it had one.
    pub metrics: Option<OTelSdkError>,
    /// The tracer provider's error, if it had one.
    pub traces: Option<OTelSdkError>,
}

fn describe(metrics: &Option<OTelSdkError>, traces: &Option<OTelSdkError>) -> String {
    let mut parts = Vec::new();
    if let Some(e) = metrics {
        parts.push(format!("metrics: {e}"));
    }
    if let Some(e) = traces {
        parts.push(format!("traces: {e}"));
    }
    parts.join("; ")
}

pub(crate) fn positive_millis(
    what: &'static str,
    value: &str,
    origin: Origin,
) -> Result<Duration, OtlpError> {
    let err = |reason| OtlpError::InvalidDuration {
        what,
        value: value.to_string(),
        reason,
        origin,
    };
    let ms: u64 = value
        .trim()
        .parse()
        .map_err(|_| err("not a whole number of milliseconds"))?;
    if ms == 0 {
        return Err(err("it must be more than zero"));
    }
    Ok(Duration::from_millis(ms))
}
