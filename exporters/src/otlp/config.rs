//! Settings: what the builder was told, what the environment says, and the
//! validated result, per signal. Explicit calls win over the environment;
//! in the environment a signal's own variable
//! (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) wins over the general one
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`), as in `opentelemetry-otlp`, whose
//! variable names these are; a general variable never overrides a signal's.
//! What is added here is the strictness: a bad value is an error naming
//! its variable, where the library skips it.
//!
//! # Why the variables are read here and not left to `opentelemetry-otlp`
//! `opentelemetry-otlp` 0.33 reads the same variables itself when an
//! exporter is built without the setting (`TonicExporterBuilder::build_channel`
//! and `HttpExporterBuilder::build_client`, per signal). Leaning on that
//! would lose what this module is for:
//!
//! - **It reads the process environment only** (`std::env::var` in
//!   `read_env_var`, `resolve_timeout`, `parse_headers_from_env`,
//!   `resolve_http_endpoint`, `TonicExporterBuilder::resolve_endpoint`):
//!   [`OtlpExporterBuilder::from_vars`](super::OtlpExporterBuilder::from_vars)
//!   (variables from a config file, or a test: `set_var` is unsafe and not
//!   used in this codebase) has no way in.
//! - **It does not say what it resolved** (`ExportConfig` is private), and
//!   the resolved values are needed before and after: the endpoint of each
//!   signal for the clear-text header check (before anything is sent), for
//!   [`ExportFailure`](super::ExportFailure) and the endpoint accessors;
//!   the timeout for the HTTP client built here (`HyperClient` takes it) and
//!   for [`ExportCause::TimedOut`](super::ExportCause::TimedOut).
//! - **It accepts what it cannot use, silently**:
//!   `OTEL_EXPORTER_OTLP[_SIGNAL]_TIMEOUT` that does not parse (`10s`) is
//!   skipped for the next variable or the 10 s default (`parse().ok()` in
//!   `resolve_timeout`), and `0` is taken as a zero timeout;
//!   a header item without `=`, with an empty key or value, or a name or
//!   value HTTP cannot carry is dropped (`parse_header_key_value_string`,
//!   `filter_map` in `build_client`), a bad percent-escape kept as written
//!   (`url_decode` failing falls back to the raw value); a gRPC endpoint
//!   without a scheme becomes `https://...` (`apply_insecure_scheme`) and
//!   is then refused for want of a TLS feature of `opentelemetry-otlp`;
//!   an `https://` HTTP/protobuf endpoint fails only when the first export
//!   does; a query string or credentials in the URL are taken as given.
//! - **`OTEL_RESOURCE_ATTRIBUTES`** (the SDK's `EnvResourceDetector`) is
//!   not percent-decoded at all, though the specification says its values
//!   are, and malformed items are skipped.
//!
//! So every value the exporter uses is read and validated here, and handed
//! to the SDK explicitly (the transport, `with_tonic` or `with_http`, per
//! signal: the SDK reads `OTEL_EXPORTER_OTLP_{SIGNAL}_PROTOCOL` only in the
//! `build()` that chooses it, which an explicit transport skips;
//! `with_endpoint`, `with_timeout`, the headers
//! through our interceptor or HTTP client, `with_interval`, the resource):
//! an explicit setting wins over the SDK's own reading, so the two cannot
//! disagree. Left to the SDK, because nothing here needs their values:
//! `OTEL_EXPORTER_OTLP[_SIGNAL]_COMPRESSION`, `..._INSECURE` (schemeless
//! gRPC endpoints only, refused here), `..._METRICS_TEMPORALITY_PREFERENCE`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`. One overlap remains: the SDK still
//! adds the header variables of the *process* environment to each export
//! (ours replace same-named ones), which `clear_text::refuse_headers_in_clear`
//! takes into account. The variable names and defaults are the SDK's
//! constants; the `key=value,...` lists are decoded with the
//! `percent-encoding` crate.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use http::Uri;
use opentelemetry::{KeyValue, Value};
use opentelemetry_otlp as otlp;

use super::error::{Origin, OtlpError, positive_millis};

/// `OTEL_EXPORTER_OTLP_ENDPOINT`: the base URL (HTTP appends `/v1/metrics`, `/v1/traces`).
pub const ENV_ENDPOINT: &str = otlp::OTEL_EXPORTER_OTLP_ENDPOINT;
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the URL spans go to, used as is;
/// wins over [`ENV_ENDPOINT`].
pub const ENV_TRACES_ENDPOINT: &str = otlp::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
/// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`: the URL metrics go to, used as
/// is; wins over [`ENV_ENDPOINT`].
pub const ENV_METRICS_ENDPOINT: &str = otlp::OTEL_EXPORTER_OTLP_METRICS_ENDPOINT;
/// `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` or `http/protobuf`.
pub const ENV_PROTOCOL: &str = otlp::OTEL_EXPORTER_OTLP_PROTOCOL;
/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`: the protocol of span exports;
/// wins over [`ENV_PROTOCOL`].
pub const ENV_TRACES_PROTOCOL: &str = otlp::OTEL_EXPORTER_OTLP_TRACES_PROTOCOL;
/// `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`: the protocol of metric exports;
/// wins over [`ENV_PROTOCOL`].
pub const ENV_METRICS_PROTOCOL: &str = otlp::OTEL_EXPORTER_OTLP_METRICS_PROTOCOL;
/// `OTEL_EXPORTER_OTLP_HEADERS`: `key=value,...`, values percent-encoded.
pub const ENV_HEADERS: &str = otlp::OTEL_EXPORTER_OTLP_HEADERS;
/// `OTEL_EXPORTER_OTLP_TRACES_HEADERS`: the headers of span exports,
/// instead of [`ENV_HEADERS`].
pub const ENV_TRACES_HEADERS: &str = otlp::OTEL_EXPORTER_OTLP_TRACES_HEADERS;
/// `OTEL_EXPORTER_OTLP_METRICS_HEADERS`: the headers of metric exports,
/// instead of [`ENV_HEADERS`].
pub const ENV_METRICS_HEADERS: &str = otlp::OTEL_EXPORTER_OTLP_METRICS_HEADERS;
/// `OTEL_EXPORTER_OTLP_TIMEOUT`: milliseconds per export.
pub const ENV_TIMEOUT: &str = otlp::OTEL_EXPORTER_OTLP_TIMEOUT;
/// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`: milliseconds per span export;
/// wins over [`ENV_TIMEOUT`].
pub const ENV_TRACES_TIMEOUT: &str = otlp::OTEL_EXPORTER_OTLP_TRACES_TIMEOUT;
/// `OTEL_EXPORTER_OTLP_METRICS_TIMEOUT`: milliseconds per metric export;
/// wins over [`ENV_TIMEOUT`].
pub const ENV_METRICS_TIMEOUT: &str = otlp::OTEL_EXPORTER_OTLP_METRICS_TIMEOUT;
/// `OTEL_SERVICE_NAME`: the `service.name` resource attribute.
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value,...`, values percent-encoded.
pub const ENV_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// `OTEL_METRIC_EXPORT_INTERVAL`: milliseconds between metric exports.
pub const ENV_METRIC_EXPORT_INTERVAL: &str =
    opentelemetry_sdk::metrics::OTEL_METRIC_EXPORT_INTERVAL;

/// `TOWER_CQL_SERVER_TRACE_RATIO`: the fraction of requests traced on the
/// server, in `0..=1` (tower-cql's own, not an OpenTelemetry variable); see
/// [`OtlpExporter::server_trace_config`](super::OtlpExporter::server_trace_config).
pub const ENV_SERVER_TRACE_RATIO: &str = "TOWER_CQL_SERVER_TRACE_RATIO";

/// Every variable the builder reads.
const VARS: [&str; 16] = [
    ENV_ENDPOINT,
    ENV_TRACES_ENDPOINT,
    ENV_METRICS_ENDPOINT,
    ENV_PROTOCOL,
    ENV_TRACES_PROTOCOL,
    ENV_METRICS_PROTOCOL,
    ENV_HEADERS,
    ENV_TRACES_HEADERS,
    ENV_METRICS_HEADERS,
    ENV_TIMEOUT,
    ENV_TRACES_TIMEOUT,
    ENV_METRICS_TIMEOUT,
    ENV_SERVICE_NAME,
    ENV_RESOURCE_ATTRIBUTES,
    ENV_METRIC_EXPORT_INTERVAL,
    ENV_SERVER_TRACE_RATIO,
];

/// The default metric export interval (the specification's 60 s).
pub const DEFAULT_METRIC_EXPORT_INTERVAL: Duration =
    opentelemetry_sdk::metrics::OTEL_METRIC_EXPORT_INTERVAL_DEFAULT;
/// The default export timeout (the specification's 10 s).
pub const DEFAULT_EXPORT_TIMEOUT: Duration = otlp::OTEL_EXPORTER_OTLP_TIMEOUT_DEFAULT;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// gRPC (HTTP/2), default port 4317; needs the `otlp-grpc` feature.
    Grpc,
    /// Protobuf over HTTP/1.1 `POST /v1/metrics` and `/v1/traces`, default
    /// port 4318; needs the `otlp-http` feature.
    HttpProtobuf,
}

impl Protocol {
    /// The name used by `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc`, `http/protobuf`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }

    /// Parses `grpc` or `http/protobuf` (ASCII case-insensitive, trimmed).
    pub fn parse(s: &str) -> Option<Protocol> {
        [Protocol::Grpc, Protocol::HttpProtobuf]
            .into_iter()
            .find(|p| s.trim().eq_ignore_ascii_case(p.as_str()))
    }

    /// The specification's default endpoint for this protocol.
    pub const fn default_endpoint(self) -> &'static str {
        match self {
            Protocol::Grpc => "http://localhost:4317",
            Protocol::HttpProtobuf => "http://localhost:4318",
        }
    }

    /// The cargo feature of this crate that provides the protocol.
    pub const fn feature(self) -> &'static str {
        match self {
            Protocol::Grpc => "otlp-grpc",
            Protocol::HttpProtobuf => "otlp-http",
        }
    }

    /// Whether this build includes the protocol.
    pub const fn is_enabled(self) -> bool {
        match self {
            Protocol::Grpc => cfg!(feature = "otlp-grpc"),
            Protocol::HttpProtobuf => cfg!(feature = "otlp-http"),
        }
    }

    /// What is used when neither the builder nor the environment names a
    /// protocol: gRPC when built in (as `opentelemetry-otlp` does),
    /// HTTP/protobuf otherwise.
    pub const fn default_for_build() -> Protocol {
        if cfg!(feature = "otlp-grpc") {
            Protocol::Grpc
        } else {
            Protocol::HttpProtobuf
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind of telemetry, exported on its own connection with its own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// Spans, sent to the traces endpoint.
    Traces,
    /// Metric points, sent to the metrics endpoint.
    Metrics,
}

impl Signal {
    /// What HTTP/protobuf appends to a base endpoint.
    const fn path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }

    /// The signal's own protocol variable, winning over the general one.
    const fn protocol_var(self) -> &'static str {
        match self {
            Signal::Traces => ENV_TRACES_PROTOCOL,
            Signal::Metrics => ENV_METRICS_PROTOCOL,
        }
    }

    /// The signal's own variables (endpoint, headers, timeout), each
    /// winning over the general one (its protocol's too:
    /// [`ENV_TRACES_PROTOCOL`], [`ENV_METRICS_PROTOCOL`]).
    pub const fn vars(self) -> [&'static str; 3] {
        match self {
            Signal::Traces => [ENV_TRACES_ENDPOINT, ENV_TRACES_HEADERS, ENV_TRACES_TIMEOUT],
            Signal::Metrics => [
                ENV_METRICS_ENDPOINT,
                ENV_METRICS_HEADERS,
                ENV_METRICS_TIMEOUT,
            ],
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Traces => "spans",
            Signal::Metrics => "metrics",
        })
    }
}

/// A snapshot of the variables the builder reads. Values are kept only
/// until `install()`; `Debug` shows which variables are set, not their values.
#[derive(Clone, Default)]
pub(crate) struct Env(BTreeMap<&'static str, String>);

impl Env {
    pub(crate) fn from_process() -> Env {
        Env::from_lookup(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()))
    }

    pub(crate) fn from_lookup(mut lookup: impl FnMut(&str) -> Option<String>) -> Env {
        let mut m = BTreeMap::new();
        for var in VARS {
            // Empty means unset, as in the specification.
            if let Some(v) = lookup(var).filter(|v| !v.trim().is_empty()) {
                m.insert(var, v);
            }
        }
        Env(m)
    }

    pub(crate) fn get(&self, var: &'static str) -> Option<&str> {
        self.0.get(var).map(String::as_str)
    }

    /// The first of `vars` that is set, and where it came from.
    fn first(&self, vars: [&'static str; 2]) -> Option<(&str, Origin)> {
        vars.into_iter()
            .find_map(|v| Some((self.get(v)?, Origin::Env(v))))
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// What the builder was told explicitly.
#[derive(Clone, Default)]
pub(crate) struct Explicit {
    pub(crate) protocol: Option<Protocol>,
    pub(crate) endpoint: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) service_name: Option<String>,
    pub(crate) resource: Vec<KeyValue>,
    pub(crate) metric_export_interval: Option<Duration>,
    pub(crate) export_timeout: Option<Duration>,
    pub(crate) allow_insecure_headers: bool,
    pub(crate) server_trace_ratio: Option<f64>,
}

/// A validated header: the name lowercased; the value stays out of `Debug`.
#[derive(Clone)]
pub(crate) struct Header {
    pub(crate) name: http::HeaderName,
    pub(crate) value: http::HeaderValue,
    pub(crate) origin: Origin,
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: <redacted>", self.name)
    }
}

/// Where one signal goes and how.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The transport of its exports.
    pub(crate) protocol: Protocol,
    /// The URL exports are sent to (HTTP: with its `/v1/...` path).
    pub(crate) url: String,
    pub(crate) headers: Vec<Header>,
    pub(crate) timeout: Duration,
}

/// The settings `install()` uses.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// The general protocol (a signal's own variable may choose another:
    /// see each [`Target`]).
    pub(crate) protocol: Protocol,
    /// The base endpoint, normalised (no trailing `/`).
    pub(crate) endpoint: String,
    pub(crate) traces: Target,
    pub(crate) metrics: Target,
    /// Resource attributes, later entries overriding earlier ones.
    pub(crate) resource: Vec<KeyValue>,
    pub(crate) metric_export_interval: Duration,
    /// The server trace ratio, if set.
    pub(crate) server_trace_ratio: Option<f64>,
}

impl Resolved {
    pub(crate) fn target(&self, signal: Signal) -> &Target {
        match signal {
            Signal::Traces => &self.traces,
            Signal::Metrics => &self.metrics,
        }
    }

    /// The value of a resource attribute after overrides.
    pub(crate) fn resource_value(&self, key: &str) -> Option<&Value> {
        self.resource
            .iter()
            .rev()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }
}

/// The protocol `var` names, if set: known and built in, else an error
/// naming `var`.
fn protocol_from_env(env: &Env, var: &'static str) -> Result<Option<Protocol>, OtlpError> {
    let Some(s) = env.get(var) else {
        return Ok(None);
    };
    let origin = Origin::Env(var);
    let p = Protocol::parse(s).ok_or_else(|| OtlpError::UnknownProtocol {
        value: s.to_string(),
        origin,
    })?;
    enabled(p, origin).map(Some)
}

/// `p` if this build includes it.
fn enabled(p: Protocol, origin: Origin) -> Result<Protocol, OtlpError> {
    if p.is_enabled() {
        Ok(p)
    } else {
        Err(OtlpError::ProtocolNotEnabled {
            protocol: p.as_str(),
            feature: p.feature(),
            origin,
        })
    }
}

pub(crate) fn resolve(env: &Env, x: &Explicit) -> Result<Resolved, OtlpError> {
    let protocol = match x.protocol {
        Some(p) => enabled(p, Origin::Builder("protocol"))?,
        None => match protocol_from_env(env, ENV_PROTOCOL)? {
            Some(p) => p,
            None => enabled(Protocol::default_for_build(), Origin::Builder("protocol"))?,
        },
    };

    // The endpoint set for both signals, if any (else each signal's
    // protocol's default).
    let base = match (&x.endpoint, env.get(ENV_ENDPOINT)) {
        (Some(e), _) => Some(validate_endpoint(e, Origin::Builder("endpoint"))?),
        (None, Some(e)) => Some(validate_endpoint(e, Origin::Env(ENV_ENDPOINT))?),
        (None, None) => None,
    };
    let endpoint = base
        .clone()
        .unwrap_or_else(|| protocol.default_endpoint().to_string());
    let target = |signal: Signal| -> Result<Target, OtlpError> {
        let [endpoint_var, headers_var, timeout_var] = signal.vars();
        // The builder's protocol is for both signals; a signal's own
        // variable wins over the general one.
        let protocol = match x.protocol {
            Some(_) => protocol,
            None => protocol_from_env(env, signal.protocol_var())?.unwrap_or(protocol),
        };
        // The builder's endpoint is a base for both signals; a signal's
        // own variable is its URL as is, and wins over the general one.
        let url = match (&x.endpoint, env.get(endpoint_var)) {
            (None, Some(url)) => validate_endpoint(url, Origin::Env(endpoint_var))?,
            _ => {
                let base = base.as_deref().unwrap_or(protocol.default_endpoint());
                match protocol {
                    Protocol::Grpc => base.to_string(),
                    Protocol::HttpProtobuf => format!("{base}{}", signal.path()),
                }
            }
        };
        let mut headers: Vec<Header> = Vec::new();
        let builder_headers = x
            .headers
            .iter()
            .map(|(n, v)| (n, v, Origin::Builder("header")));
        let env_headers = match env.first([headers_var, ENV_HEADERS]) {
            Some((s, origin)) => parse_pairs(s, origin, header_error)?,
            None => Vec::new(),
        };
        let env_headers = env_headers.iter().map(|(n, v, o)| (n, v, *o));
        for (name, value, origin) in env_headers.chain(builder_headers) {
            let h = header(name, value, origin)?;
            headers.retain(|old| old.name != h.name);
            headers.push(h);
        }
        let is_bin = |h: &&Header| h.name.as_str().ends_with("-bin");
        if let Some(h) = headers
            .iter()
            .find(is_bin)
            .filter(|_| protocol == Protocol::Grpc)
        {
            return Err(OtlpError::InvalidHeader {
                which: h.name.to_string(),
                reason: "binary gRPC metadata (a name ending in -bin) is not supported",
                origin: h.origin,
            });
        }
        let timeout = match (x.export_timeout, env.first([timeout_var, ENV_TIMEOUT])) {
            (Some(d), _) => positive(d, "export timeout", "export_timeout")?,
            (None, Some((s, origin))) => positive_millis("export timeout", s, origin)?,
            (None, None) => DEFAULT_EXPORT_TIMEOUT,
        };
        Ok(Target {
            protocol,
            url,
            headers,
            timeout,
        })
    };
    let (traces, metrics) = (target(Signal::Traces)?, target(Signal::Metrics)?);

    let mut resource = vec![KeyValue::new("service.name", "unknown_service")];
    if let Some(s) = env.get(ENV_RESOURCE_ATTRIBUTES) {
        let origin = Origin::Env(ENV_RESOURCE_ATTRIBUTES);
        for (i, (k, v, _)) in parse_pairs(s, origin, resource_error)?
            .into_iter()
            .enumerate()
        {
            resource.push(resource_attribute(KeyValue::new(k, v), i, origin)?);
        }
    }
    if let Some(name) = env.get(ENV_SERVICE_NAME) {
        resource.push(KeyValue::new("service.name", name.trim().to_string()));
    }
    for (i, kv) in x.resource.iter().enumerate() {
        let origin = Origin::Builder("resource_attribute");
        resource.push(resource_attribute(kv.clone(), i, origin)?);
    }
    if let Some(name) = &x.service_name {
        let kv = KeyValue::new("service.name", name.clone());
        resource.push(resource_attribute(kv, 0, Origin::Builder("service_name"))?);
    }

    let what = "metric export interval";
    let metric_export_interval = match (
        x.metric_export_interval,
        env.get(ENV_METRIC_EXPORT_INTERVAL),
    ) {
        (Some(d), _) => positive(d, what, "metric_export_interval")?,
        (None, Some(s)) => positive_millis(what, s, Origin::Env(ENV_METRIC_EXPORT_INTERVAL))?,
        (None, None) => DEFAULT_METRIC_EXPORT_INTERVAL,
    };

    let server_trace_ratio = match (x.server_trace_ratio, env.get(ENV_SERVER_TRACE_RATIO)) {
        (Some(r), _) => Some(ratio(
            r,
            &r.to_string(),
            Origin::Builder("server_trace_ratio"),
        )?),
        (None, Some(s)) => {
            let origin = Origin::Env(ENV_SERVER_TRACE_RATIO);
            let r = s
                .trim()
                .parse::<f64>()
                .map_err(|_| OtlpError::InvalidRatio {
                    what: "server trace ratio",
                    value: s.to_string(),
                    reason: "not a number",
                    origin,
                })?;
            Some(ratio(r, s, origin)?)
        }
        (None, None) => None,
    };

    Ok(Resolved {
        protocol,
        endpoint,
        traces,
        metrics,
        resource,
        metric_export_interval,
        server_trace_ratio,
    })
}

/// `kv`, the `i`-th resource attribute `origin` gives, if OTLP can carry
/// it: its key is not empty (attributes have one), and a `service.name`
/// names something (an empty `OTEL_SERVICE_NAME` counts as unset; an empty
/// name given would be sent as the service's).
fn resource_attribute(kv: KeyValue, i: usize, origin: Origin) -> Result<KeyValue, OtlpError> {
    let key = kv.key.as_str();
    if key.trim().is_empty() {
        return Err(resource_error(
            format!("#{}", i + 1),
            "the key is empty",
            origin,
        ));
    }
    if key == "service.name" && kv.value.as_str().trim().is_empty() {
        return Err(resource_error(
            format!("{key:?}"),
            "the service name is empty (give the service's name, or leave it unset)",
            origin,
        ));
    }
    Ok(kv)
}

/// `r` if it is a fraction in `0..=1`.
fn ratio(r: f64, as_given: &str, origin: Origin) -> Result<f64, OtlpError> {
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(OtlpError::InvalidRatio {
            what: "server trace ratio",
            value: as_given.to_string(),
            reason: "it must be between 0 and 1",
            origin,
        })
    }
}

fn positive(d: Duration, what: &'static str, call: &'static str) -> Result<Duration, OtlpError> {
    if d.is_zero() {
        return Err(OtlpError::InvalidDuration {
            what,
            value: format!("{d:?}"),
            reason: "it must be more than zero",
            origin: Origin::Builder(call),
        });
    }
    Ok(d)
}

/// `endpoint` as errors and `Debug` show it: credentials in its URL
/// (`user:password@`) and a query string replaced by `<redacted>`.
pub(crate) fn shown_endpoint(endpoint: &str) -> String {
    let (scheme, rest) = match endpoint.find("://") {
        Some(i) => endpoint.split_at(i + 3),
        None => ("", endpoint),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("<redacted>{}", &authority[at..]),
        None => authority.to_string(),
    };
    let path = match path.find('?') {
        Some(q) => format!("{}?<redacted>", &path[..q]),
        None => path.to_string(),
    };
    format!("{scheme}{authority}{path}")
}

fn validate_endpoint(endpoint: &str, origin: Origin) -> Result<String, OtlpError> {
    let err = |reason: &str| OtlpError::InvalidEndpoint {
        endpoint: shown_endpoint(endpoint),
        reason: reason.to_string(),
        origin,
    };
    let trimmed = endpoint.trim();
    let uri: Uri = trimmed.parse().map_err(|e| err(&format!("{e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(OtlpError::TlsNotAvailable {
                endpoint: shown_endpoint(endpoint),
                origin,
            });
        }
        Some(other) => return Err(err(&format!("the scheme {other:?} is not http"))),
        None => return Err(err("it has no scheme (http://)")),
    }
    match uri.authority() {
        Some(a) if a.as_str().contains('@') => Err(err(
            "credentials in the URL are not supported (put them in a header)",
        )),
        Some(a) if !a.host().is_empty() && uri.query().is_none() => {
            Ok(trimmed.trim_end_matches('/').to_string())
        }
        Some(a) if !a.host().is_empty() => Err(err("a query string is not supported")),
        _ => Err(err("it has no host")),
    }
}

fn header(name: &str, value: &str, origin: Origin) -> Result<Header, OtlpError> {
    let name = name.trim();
    let invalid = |which, reason| OtlpError::InvalidHeader {
        which,
        reason,
        origin,
    };
    let n = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        // (only up to a space or a colon: `Authorization: Basic <token>`,
        // written `name: value`, must not quote its token)
        let shown = name
            .split(|c: char| c.is_whitespace() || c == ':')
            .next()
            .unwrap_or_default();
        let which = if shown.len() < name.len() {
            format!("{shown:?}… (the rest left out)")
        } else {
            format!("{name:?}")
        };
        invalid(which, "the name is not a valid HTTP header name")
    })?;
    let mut v = http::HeaderValue::from_str(value.trim()).map_err(|_| {
        invalid(n.to_string(), "the value has characters an HTTP header cannot carry (only visible ASCII; percent-encode the rest in the environment variable)")
    })?;
    v.set_sensitive(true);
    Ok(Header {
        name: n,
        value: v,
        origin,
    })
}

type PairError = fn(String, &'static str, Origin) -> OtlpError;

fn header_error(which: String, reason: &'static str, origin: Origin) -> OtlpError {
    OtlpError::InvalidHeader {
        which,
        reason,
        origin,
    }
}

fn resource_error(which: String, reason: &'static str, origin: Origin) -> OtlpError {
    OtlpError::InvalidResourceAttribute {
        which,
        reason,
        origin,
    }
}

/// Parses `k1=v1,k2=v2` (the format of `OTEL_EXPORTER_OTLP_HEADERS` and
/// `OTEL_RESOURCE_ATTRIBUTES`): items trimmed, empty items skipped, values
/// percent-decoded. Unlike `opentelemetry-otlp`, which skips what it cannot
/// read, a malformed item is an error naming the key, or the item's
/// position when no key could be read, never the value.
fn parse_pairs(
    s: &str,
    origin: Origin,
    error: PairError,
) -> Result<Vec<(String, String, Origin)>, OtlpError> {
    let mut out = Vec::new();
    for (i, item) in s.split(',').map(str::trim).enumerate() {
        if item.is_empty() {
            continue;
        }
        let which = || format!("#{}", i + 1);
        let Some((k, v)) = item.split_once('=') else {
            return Err(error(which(), "it has no '='", origin));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(error(which(), "the key is empty", origin));
        }
        let v = v.trim();
        // Every '%' starts two hex digits, and the bytes are UTF-8.
        let escapes_ok = v
            .split('%')
            .skip(1)
            .all(|rest| rest.len() >= 2 && rest.as_bytes()[..2].iter().all(u8::is_ascii_hexdigit));
        let decoded = percent_encoding::percent_decode_str(v).decode_utf8();
        let (true, Ok(v)) = (escapes_ok, decoded) else {
            let reason = "the value is not valid percent-encoding";
            return Err(error(format!("{k:?}"), reason, origin));
        };
        out.push((k.to_string(), v.into_owned(), origin));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Env {
        Env::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    fn attr(r: &Resolved, k: &str) -> Option<String> {
        r.resource_value(k).map(|v| v.as_str().into_owned())
    }

    #[test]
    fn defaults_without_environment() {
        let r = resolve(&env(&[]), &Explicit::default()).unwrap();
        assert_eq!(r.protocol, Protocol::default_for_build());
        assert_eq!(r.endpoint, r.protocol.default_endpoint());
        assert_eq!(r.traces.url, r.protocol.default_endpoint());
        assert!(r.traces.headers.is_empty() && r.metrics.headers.is_empty());
        assert_eq!(r.metric_export_interval, Duration::from_secs(60));
        assert_eq!(r.traces.timeout, Duration::from_secs(10));
        assert_eq!(attr(&r, "service.name").as_deref(), Some("unknown_service"));
    }

    #[test]
    fn every_variable_is_read() {
        let r = resolve(
            &env(&[
                (ENV_ENDPOINT, "http://collector:9999/base/"),
                (ENV_PROTOCOL, "http/protobuf"),
                (ENV_HEADERS, " api-key = s%3Dcr%20t , x-tenant=acme,"),
                (ENV_TIMEOUT, "2500"),
                (ENV_SERVICE_NAME, "checkout"),
                (
                    ENV_RESOURCE_ATTRIBUTES,
                    "service.name=ignored,deployment.environment.name=prod%20eu",
                ),
                (ENV_METRIC_EXPORT_INTERVAL, "1500"),
            ]),
            &Explicit::default(),
        );
        #[cfg(not(feature = "otlp-http"))]
        assert!(matches!(r, Err(OtlpError::ProtocolNotEnabled { .. })));
        #[cfg(feature = "otlp-http")]
        {
            let r = r.unwrap();
            assert_eq!(r.protocol, Protocol::HttpProtobuf);
            assert_eq!(r.endpoint, "http://collector:9999/base");
            assert_eq!(r.metrics.url, "http://collector:9999/base/v1/metrics");
            assert_eq!(r.traces.url, "http://collector:9999/base/v1/traces");
            let h: Vec<_> = r
                .traces
                .headers
                .iter()
                .map(|h| (h.name.as_str(), h.value.to_str().unwrap()))
                .collect();
            assert_eq!(h, vec![("api-key", "s=cr t"), ("x-tenant", "acme")]);
            assert_eq!(r.traces.timeout, Duration::from_millis(2500));
            assert_eq!(r.metric_export_interval, Duration::from_millis(1500));
            // OTEL_SERVICE_NAME beats service.name in OTEL_RESOURCE_ATTRIBUTES
            assert_eq!(attr(&r, "service.name").as_deref(), Some("checkout"));
            assert_eq!(
                attr(&r, "deployment.environment.name").as_deref(),
                Some("prod eu")
            );
        }
    }

    #[test]
    fn explicit_settings_win_over_the_environment() {
        let e = env(&[
            (ENV_ENDPOINT, "http://from-env:1"),
            (ENV_PROTOCOL, "not-a-protocol"),
            (ENV_HEADERS, "api-key=from-env,x-env=1"),
            (ENV_TIMEOUT, "0"),
            (ENV_SERVICE_NAME, "env-service"),
            (ENV_RESOURCE_ATTRIBUTES, "team=env"),
            (ENV_METRIC_EXPORT_INTERVAL, "nope"),
        ]);
        let x = Explicit {
            protocol: Some(Protocol::default_for_build()),
            endpoint: Some("http://127.0.0.1:4317".into()),
            headers: vec![("API-Key".into(), "explicit".into())],
            service_name: Some("explicit-service".into()),
            resource: vec![KeyValue::new("team", "explicit")],
            metric_export_interval: Some(Duration::from_millis(100)),
            export_timeout: Some(Duration::from_secs(1)),
            allow_insecure_headers: false,
            server_trace_ratio: Some(0.25),
        };
        let r = resolve(&e, &x).unwrap();
        assert_eq!(r.endpoint, "http://127.0.0.1:4317");
        let h: Vec<_> = r
            .metrics
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.to_str().unwrap()))
            .collect();
        assert_eq!(h, vec![("x-env", "1"), ("api-key", "explicit")]);
        assert_eq!(r.metric_export_interval, Duration::from_millis(100));
        assert_eq!(r.metrics.timeout, Duration::from_secs(1));
        assert_eq!(
            attr(&r, "service.name").as_deref(),
            Some("explicit-service")
        );
        assert_eq!(attr(&r, "team").as_deref(), Some("explicit"));
        assert_eq!(r.server_trace_ratio, Some(0.25));
    }

    #[test]
    fn the_server_trace_ratio_is_read_and_validated() {
        let ratio = |vars: &[(&str, &str)], x: Option<f64>| {
            resolve(
                &env(vars),
                &Explicit {
                    server_trace_ratio: x,
                    ..Explicit::default()
                },
            )
            .map(|r| r.server_trace_ratio)
            .map_err(|e| e.to_string())
        };
        assert_eq!(ratio(&[], None), Ok(None));
        assert_eq!(
            ratio(&[(ENV_SERVER_TRACE_RATIO, " 0.01 ")], None),
            Ok(Some(0.01))
        );
        assert_eq!(ratio(&[(ENV_SERVER_TRACE_RATIO, "")], None), Ok(None));
        // the builder wins, even over a bad variable
        assert_eq!(
            ratio(&[(ENV_SERVER_TRACE_RATIO, "lots")], Some(1.0)),
            Ok(Some(1.0))
        );
        assert_eq!(
            ratio(&[(ENV_SERVER_TRACE_RATIO, "1%")], None).unwrap_err(),
            "invalid server trace ratio \"1%\" (from TOWER_CQL_SERVER_TRACE_RATIO): not a number; give a fraction of requests between 0 and 1, e.g. 0.001"
        );
        assert_eq!(
            ratio(&[(ENV_SERVER_TRACE_RATIO, "2")], None).unwrap_err(),
            "invalid server trace ratio \"2\" (from TOWER_CQL_SERVER_TRACE_RATIO): it must be between 0 and 1; give a fraction of requests between 0 and 1, e.g. 0.001"
        );
        for bad in [-0.5, 1.5, f64::NAN] {
            let e = ratio(&[], Some(bad)).unwrap_err();
            assert!(
                e.contains(
                    "(from OtlpExporterBuilder::server_trace_ratio): it must be between 0 and 1"
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn invalid_settings_are_rejected_with_what_to_do() {
        let cases: Vec<(Env, Explicit, &str)> = vec![
            (
                env(&[(ENV_ENDPOINT, "not a url")]),
                Explicit::default(),
                "invalid OTLP endpoint \"not a url\" (from OTEL_EXPORTER_OTLP_ENDPOINT)",
            ),
            (
                env(&[]),
                Explicit {
                    endpoint: Some("127.0.0.1:4317".into()),
                    ..Explicit::default()
                },
                "(from OtlpExporterBuilder::endpoint): it has no scheme (http://); write an absolute URL such as http://127.0.0.1:4317",
            ),
            (
                env(&[(ENV_ENDPOINT, "ftp://x:1")]),
                Explicit::default(),
                "the scheme \"ftp\" is not http",
            ),
            (
                env(&[(ENV_ENDPOINT, "https://collector.example:4317")]),
                Explicit::default(),
                "uses https, but tower-cql-exporters is built without TLS",
            ),
            (
                env(&[(ENV_PROTOCOL, "http/json")]),
                Explicit::default(),
                "unknown OTLP protocol \"http/json\" (from OTEL_EXPORTER_OTLP_PROTOCOL); use \"grpc\" or \"http/protobuf\"",
            ),
            (
                env(&[(ENV_PROTOCOL, "carrier-pigeon")]),
                Explicit::default(),
                "unknown OTLP protocol \"carrier-pigeon\"",
            ),
            (
                env(&[(ENV_METRIC_EXPORT_INTERVAL, "0")]),
                Explicit::default(),
                "invalid metric export interval \"0\" (from OTEL_METRIC_EXPORT_INTERVAL): it must be more than zero",
            ),
            (
                env(&[]),
                Explicit {
                    metric_export_interval: Some(Duration::ZERO),
                    ..Explicit::default()
                },
                "(from OtlpExporterBuilder::metric_export_interval): it must be more than zero",
            ),
            (
                env(&[(ENV_TIMEOUT, "10s")]),
                Explicit::default(),
                "invalid export timeout \"10s\" (from OTEL_EXPORTER_OTLP_TIMEOUT): not a whole number of milliseconds; give a positive number of milliseconds",
            ),
            (
                env(&[(ENV_HEADERS, "x-ok=1,api-key")]),
                Explicit::default(),
                "malformed OTLP header #2 (from OTEL_EXPORTER_OTLP_HEADERS): it has no '='",
            ),
            (
                env(&[(ENV_HEADERS, "=value")]),
                Explicit::default(),
                "malformed OTLP header #1 (from OTEL_EXPORTER_OTLP_HEADERS): the key is empty",
            ),
            (
                env(&[(ENV_HEADERS, "api-key=%zz")]),
                Explicit::default(),
                "malformed OTLP header \"api-key\" (from OTEL_EXPORTER_OTLP_HEADERS): the value is not valid percent-encoding",
            ),
            (
                env(&[]),
                Explicit {
                    headers: vec![("bad header".into(), "v".into())],
                    ..Explicit::default()
                },
                "malformed OTLP header \"bad\"… (the rest left out) (from OtlpExporterBuilder::header): the name is not a valid HTTP header name",
            ),
            (
                env(&[]),
                Explicit {
                    headers: vec![("api-key".into(), "line\nbreak".into())],
                    ..Explicit::default()
                },
                "malformed OTLP header api-key (from OtlpExporterBuilder::header): the value has characters",
            ),
            (
                env(&[(ENV_RESOURCE_ATTRIBUTES, "team")]),
                Explicit::default(),
                "malformed resource attribute #1 (from OTEL_RESOURCE_ATTRIBUTES): it has no '='",
            ),
            // the builder's resource settings, as strictly as the variables'
            (
                env(&[]),
                Explicit {
                    resource: vec![KeyValue::new("team", "a"), KeyValue::new(" ", "b")],
                    ..Explicit::default()
                },
                "malformed resource attribute #2 (from OtlpExporterBuilder::resource_attribute): the key is empty",
            ),
            (
                env(&[]),
                Explicit {
                    service_name: Some("  ".into()),
                    ..Explicit::default()
                },
                "malformed resource attribute \"service.name\" (from OtlpExporterBuilder::service_name): the service name is empty",
            ),
            (
                env(&[(ENV_RESOURCE_ATTRIBUTES, "team=a,service.name=")]),
                Explicit::default(),
                "malformed resource attribute \"service.name\" (from OTEL_RESOURCE_ATTRIBUTES): the service name is empty",
            ),
        ];
        for (e, x, want) in cases {
            let got = resolve(&e, &x).expect_err(want).to_string();
            assert!(got.contains(want), "want {want:?}\n got {got:?}");
        }
    }

    #[test]
    fn a_signal_variable_wins_over_the_general_one() {
        let e = env(&[
            (ENV_PROTOCOL, "http/protobuf"),
            (ENV_ENDPOINT, "http://general:4318"),
            (ENV_TRACES_ENDPOINT, "http://traces:1234/custom"),
            (ENV_HEADERS, "x-general=1"),
            (ENV_METRICS_HEADERS, "x-metrics=2"),
            (ENV_TIMEOUT, "3000"),
            (ENV_TRACES_TIMEOUT, "700"),
        ]);
        let r = resolve(&e, &Explicit::default()).unwrap();
        // the signal's own endpoint is used as is, with no path appended
        assert_eq!(r.traces.url, "http://traces:1234/custom");
        assert_eq!(r.metrics.url, "http://general:4318/v1/metrics");
        let names = |t: &Target| {
            t.headers
                .iter()
                .map(|h| h.name.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&r.traces), ["x-general"]);
        assert_eq!(names(&r.metrics), ["x-metrics"]);
        assert_eq!(r.traces.timeout, Duration::from_millis(700));
        assert_eq!(r.metrics.timeout, Duration::from_millis(3000));
        // an endpoint given to the builder wins over both variables
        let x = Explicit {
            endpoint: Some("http://127.0.0.1:4318".into()),
            ..Explicit::default()
        };
        let r = resolve(&e, &x).unwrap();
        assert_eq!(r.traces.url, "http://127.0.0.1:4318/v1/traces");
        // and the signal variables are validated as strictly, by name
        for (var, value, want) in [
            (
                ENV_TRACES_ENDPOINT,
                "traces:4317",
                "(from OTEL_EXPORTER_OTLP_TRACES_ENDPOINT): it has no scheme",
            ),
            (
                ENV_METRICS_TIMEOUT,
                "5s",
                "invalid export timeout \"5s\" (from OTEL_EXPORTER_OTLP_METRICS_TIMEOUT)",
            ),
            (
                ENV_TRACES_HEADERS,
                "k=%4",
                "malformed OTLP header \"k\" (from OTEL_EXPORTER_OTLP_TRACES_HEADERS)",
            ),
        ] {
            let got = resolve(&env(&[(var, value)]), &Explicit::default()).unwrap_err();
            assert!(got.to_string().contains(want), "want {want:?}\n got {got}");
        }
    }

    /// A signal's own protocol variable chooses that signal's transport
    /// (and so its default endpoint and its path), winning over the
    /// general variable; the builder's protocol wins over both; an unknown
    /// value is refused, naming the variable.
    #[cfg(all(feature = "otlp-grpc", feature = "otlp-http"))]
    #[test]
    fn a_signal_protocol_variable_wins_over_the_general_one() {
        let e = env(&[
            (ENV_PROTOCOL, "grpc"),
            (ENV_TRACES_PROTOCOL, "http/protobuf"),
        ]);
        let r = resolve(&e, &Explicit::default()).unwrap();
        assert_eq!(r.protocol, Protocol::Grpc);
        assert_eq!(
            (r.traces.protocol, r.traces.url.as_str()),
            (Protocol::HttpProtobuf, "http://localhost:4318/v1/traces")
        );
        assert_eq!(
            (r.metrics.protocol, r.metrics.url.as_str()),
            (Protocol::Grpc, "http://localhost:4317")
        );
        // a general endpoint is each signal's base, with its own path
        let e = env(&[
            (ENV_ENDPOINT, "http://127.0.0.1:4318"),
            (ENV_METRICS_PROTOCOL, "http/protobuf"),
        ]);
        let r = resolve(&e, &Explicit::default()).unwrap();
        assert_eq!(r.traces.protocol, Protocol::default_for_build());
        assert_eq!(r.metrics.url, "http://127.0.0.1:4318/v1/metrics");
        // the builder's protocol is both signals'
        let x = Explicit {
            protocol: Some(Protocol::Grpc),
            ..Explicit::default()
        };
        let r = resolve(&env(&[(ENV_TRACES_PROTOCOL, "http/protobuf")]), &x).unwrap();
        assert_eq!(r.traces.protocol, Protocol::Grpc);
        let got = resolve(
            &env(&[(ENV_METRICS_PROTOCOL, "http/json")]),
            &Explicit::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            got.contains(
                "unknown OTLP protocol \"http/json\" (from OTEL_EXPORTER_OTLP_METRICS_PROTOCOL)"
            ),
            "{got}"
        );
    }

    #[test]
    fn header_values_stay_out_of_errors_and_debug() {
        let secret = "sk-very-secret-0123";
        for (e, x) in [
            // no '=': the whole item could be the secret
            (
                env(&[(ENV_HEADERS, &format!("x=1,{secret}"))]),
                Explicit::default(),
            ),
            (
                env(&[(ENV_HEADERS, &format!("api-key={secret}%"))]),
                Explicit::default(),
            ),
            (
                env(&[]),
                Explicit {
                    headers: vec![("api-key".into(), format!("{secret}\u{7}"))],
                    ..Explicit::default()
                },
            ),
        ] {
            assert!(!format!("{e:?}").contains(secret));
            let err = resolve(&e, &x).unwrap_err();
            assert!(!err.to_string().contains(secret), "{err}");
            assert!(!format!("{err:?}").contains(secret), "{err:?}");
        }
        let r = resolve(
            &env(&[(ENV_HEADERS, &format!("api-key={secret}"))]),
            &Explicit::default(),
        )
        .unwrap();
        let dbg = format!("{r:?}");
        assert!(dbg.contains("api-key"), "{dbg}");
        assert!(!dbg.contains(secret), "{dbg}");
    }

    #[test]
    fn protocol_names() {
        assert_eq!(Protocol::parse(" GRPC "), Some(Protocol::Grpc));
        assert_eq!(
            Protocol::parse("http/protobuf"),
            Some(Protocol::HttpProtobuf)
        );
        assert_eq!(Protocol::parse("http/json"), None);
        assert_eq!(Protocol::parse(""), None);
        for p in [Protocol::Grpc, Protocol::HttpProtobuf] {
            assert_eq!(Protocol::parse(p.as_str()), Some(p));
        }
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let r = resolve(
            &env(&[(ENV_ENDPOINT, ""), (ENV_PROTOCOL, "  "), (ENV_TIMEOUT, "")]),
            &Explicit::default(),
        )
        .unwrap();
        assert_eq!(r.endpoint, r.protocol.default_endpoint());
    }
}
