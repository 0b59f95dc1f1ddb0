//! Errors of the OTLP exporter. Messages name the setting (or the
//! environment variable it came from) and say what to write instead; they
//! never contain a header value.

use std::fmt;
use std::time::Duration;

use super::config::{ENV_ENDPOINT, ENV_HEADERS, ENV_TIMEOUT, Protocol, Signal};

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
    /// A resource attribute that is not a `key=value` pair, has an empty
    /// key, or an empty `service.name`.
    #[error(
        "malformed resource attribute {which} (from {origin}): {reason}; resource attributes are key=value pairs with a key (in OTEL_RESOURCE_ATTRIBUTES separated by commas, e.g. service.namespace=shop,deployment.environment.name=prod)"
    )]
    InvalidResourceAttribute {
        /// The attribute's key when it could be read, else its position.
        which: String,
        /// What is wrong.
        reason: &'static str,
        /// Where it came from.
        origin: Origin,
    },
    /// A ratio (the server trace ratio) that is not a number in `0..=1`.
    #[error(
        "invalid {what} {value:?} (from {origin}): {reason}; give a fraction of requests between 0 and 1, e.g. 0.001"
    )]
    InvalidRatio {
        /// Which setting (`server trace ratio`).
        what: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong with it.
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

/// Why one signal's export failed: what happened at the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExportCause {
    /// The connection was refused: nothing listens at that address and port.
    ConnectionRefused,
    /// The endpoint's host name could not be resolved.
    DnsFailure,
    /// No answer within the time given (the export timeout, or the SDK's
    /// own limit on a flush).
    TimedOut(Duration),
    /// The endpoint closed the connection, or answered with something that
    /// is not OTLP over plain HTTP (e.g. a port that speaks TLS).
    ConnectionClosed,
    /// The collector answered with this HTTP status (not a success).
    HttpStatus(u16),
    /// The collector answered with this gRPC status code (e.g. `Unauthenticated`).
    GrpcStatus(String),
    /// The collector took the export but rejected this many of its spans
    /// or points (an OTLP partial success, e.g. over a limit of its own),
    /// saying why in `message`. Seen over HTTP/protobuf only: the gRPC
    /// exporter keeps the collector's answer to itself, and only logs it.
    Rejected {
        /// The spans or points rejected.
        items: u64,
        /// The collector's reason (may be empty).
        message: String,
    },
    /// Anything else, in the exporter's words.
    Other(String),
}

impl ExportCause {
    /// The `error.type` of items whose export ended so, in the
    /// self-observability metrics (see the module docs): `rejected`,
    /// `connection_refused`, `dns_failure`, `timeout`,
    /// `connection_closed`, the HTTP status (`503`), the gRPC status
    /// (`Unauthenticated`), else `_OTHER`. Few values: never a message.
    pub(crate) fn error_type(&self) -> String {
        match self {
            ExportCause::ConnectionRefused => "connection_refused".into(),
            ExportCause::DnsFailure => "dns_failure".into(),
            ExportCause::TimedOut(_) => "timeout".into(),
            ExportCause::ConnectionClosed => "connection_closed".into(),
            ExportCause::HttpStatus(code) => code.to_string(),
            ExportCause::GrpcStatus(code) => code.clone(),
            ExportCause::Rejected { .. } => "rejected".into(),
            ExportCause::Other(_) => "_OTHER".into(),
        }
    }
}

impl fmt::Display for ExportCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportCause::ConnectionRefused => f.write_str("connection refused"),
            ExportCause::DnsFailure => f.write_str("DNS lookup failed"),
            ExportCause::TimedOut(d) => write!(f, "timed out after {d:?}"),
            ExportCause::ConnectionClosed => {
                f.write_str("connection closed without an OTLP answer")
            }
            ExportCause::HttpStatus(code) => write!(f, "the collector answered HTTP {code}"),
            ExportCause::GrpcStatus(code) => write!(f, "the collector answered gRPC status {code}"),
            ExportCause::Rejected { items, message } if message.is_empty() => {
                write!(f, "the collector rejected {items} of them")
            }
            ExportCause::Rejected { items, message } => {
                write!(f, "the collector rejected {items} of them: {message}")
            }
            ExportCause::Other(msg) => f.write_str(msg),
        }
    }
}

/// One signal's failed export: where it went and why it failed.
///
/// Its `Display` says both and what to do, e.g. `spans to
/// http://127.0.0.1:4317: connection refused — nothing listens there: start
/// the collector, or correct the endpoint (set by ...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportFailure {
    /// Spans or metrics.
    pub signal: Signal,
    /// The protocol the export used.
    pub protocol: Protocol,
    /// The URL the export was sent to.
    pub endpoint: String,
    /// What happened there.
    pub cause: ExportCause,
}

impl fmt::Display for ExportFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [endpoint_var, headers_var, timeout_var] = self.signal.vars();
        let where_set =
            format!("set by OtlpExporterBuilder::endpoint, {endpoint_var} or {ENV_ENDPOINT}");
        write!(f, "{} to {}: {} — ", self.signal, self.endpoint, self.cause)?;
        match &self.cause {
            ExportCause::ConnectionRefused => write!(
                f,
                "nothing listens there: start the collector, or correct the endpoint ({where_set})"
            ),
            ExportCause::DnsFailure => write!(
                f,
                "the host name does not resolve: correct the host in the endpoint ({where_set})"
            ),
            ExportCause::TimedOut(_) => write!(
                f,
                "no answer in time: check that an OTLP collector speaking {} listens there, or give the export more time (set by OtlpExporterBuilder::export_timeout, {timeout_var} or {ENV_TIMEOUT})",
                self.protocol
            ),
            ExportCause::ConnectionClosed => write!(
                f,
                "check that the endpoint speaks OTLP {} over plain http:// (this build has no TLS; a TLS port closes plain connections)",
                self.protocol
            ),
            _ if self.is_refused_for_credentials() => {
                write!(
                    f,
                    "the collector refused the credentials: check the headers (set by OtlpExporterBuilder::header, {headers_var} or {ENV_HEADERS})"
                )
            }
            ExportCause::HttpStatus(404) => f.write_str(
                "no OTLP receiver at that path: HTTP/protobuf posts to <endpoint>/v1/traces and /v1/metrics, a signal's own endpoint variable is used as is",
            ),
            ExportCause::Rejected { .. } => f.write_str(
                "it took the rest: the collector's message and logs say why (often a limit of its own on size or attributes)",
            ),
            ExportCause::GrpcStatus(code) if code == "Unimplemented" => f.write_str(
                "the endpoint does not serve OTLP over gRPC: is it an HTTP/protobuf port (4318)? then choose Protocol::HttpProtobuf",
            ),
            _ => f.write_str("see the collector's logs"),
        }
    }
}

impl ExportFailure {
    fn is_refused_for_credentials(&self) -> bool {
        match &self.cause {
            ExportCause::HttpStatus(code) => matches!(code, 401 | 403),
            ExportCause::GrpcStatus(code) => {
                matches!(code.as_str(), "Unauthenticated" | "PermissionDenied")
            }
            _ => false,
        }
    }
}

/// What could not be exported since the exporter was installed: see
/// [`OtlpExporter::lost`](super::OtlpExporter::lost).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Lost {
    /// Spans in exports that failed, spans the collector rejected
    /// ([`ExportCause::Rejected`]; HTTP/protobuf only), and spans the batch
    /// span processor dropped because its queue was full (`OTEL_BSP_MAX_QUEUE_SIZE`,
    /// 2048 by default). The drops are known exactly once the exporter is
    /// shut down; before, as of the last flush whose export succeeded
    /// (exactly, unless spans ended during that flush).
    pub spans: u64,
    /// Metric data points in exports that failed, and those the collector
    /// rejected ([`ExportCause::Rejected`]; HTTP/protobuf only). A point is one series
    /// (instrument and attribute set) of one export: with the default
    /// cumulative temporality a later export that succeeds carries the
    /// series' totals again.
    pub metric_points: u64,
}

impl Lost {
    /// Whether nothing was lost.
    pub fn is_none(&self) -> bool {
        self.spans == 0 && self.metric_points == 0
    }
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |n: u64| if n == 1 { "" } else { "s" };
        write!(
            f,
            "{} span{} and {} metric point{}",
            self.spans,
            s(self.spans),
            self.metric_points,
            s(self.metric_points)
        )
    }
}

/// Why [`OtlpExporter::flush`](super::OtlpExporter::flush) or
/// [`OtlpExporter::shutdown`](super::OtlpExporter::shutdown) could not
/// export everything (e.g. the collector was unreachable): each failed
/// signal with its endpoint and the cause, and how much was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushError {
    /// One entry per signal that failed, spans first.
    pub failures: Vec<ExportFailure>,
    /// What was lost since the exporter was installed, as of this error.
    pub lost: Lost,
}

impl std::error::Error for FlushError {}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OTLP export failed, {} lost so far: ", self.lost)?;
        if self.failures.is_empty() {
            f.write_str(
                "spans were dropped by the batch span processor, whose queue was full (more spans ended than it holds, OTEL_BSP_MAX_QUEUE_SIZE, 2048 by default, before they could be exported); export fewer spans (OtlpExporterBuilder::trace_sample_ratio) or check that the collector keeps up",
            )?;
        }
        for (i, failure) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
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
