//! The command line: flags, faults, and their validation (every bad value
//! is an error naming the flag and what it takes).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use tower_cql_exporters::otlp::Protocol;
use tower_cql_testkit::{InjectedError, WriteType};

/// Load generator for CQL clusters, through the full tower-cql stack.
#[derive(Debug, Parser)]
#[command(name = "cqlstress", version)]
pub(crate) struct Args {
    /// A real cluster's contact point (host:port); default: an embedded testkit cluster.
    #[arg(long)]
    pub(crate) uri: Option<String>,
    /// Nodes of the embedded cluster.
    #[arg(long, default_value_t = 3)]
    pub(crate) nodes: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
    /// Requests per second in all (default: as fast as possible).
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Fraction of requests that are reads, 0..1.
    #[arg(long, default_value_t = 0.8)]
    pub(crate) read_ratio: f64,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    pub(crate) rows: i32,
    /// Page size of reads (and of each page of a --scan).
    #[arg(long, default_value_t = 100)]
    pub(crate) page_size: i32,
    /// Reads are full-partition reads, paged by --page-size through the
    /// stack, of --rows partitions holding --partition-rows rows each.
    #[arg(long)]
    pub(crate) scan: bool,
    /// Rows per partition with --scan.
    #[arg(long, default_value_t = 100, requires = "scan")]
    pub(crate) partition_rows: i32,
    /// The stack's configuration, a TOML file (the `StackConfig` format;
    /// see the README), instead of the default stack: load-test your own.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Mark writes non-idempotent (they are then never retried once they may have been applied).
    #[arg(long)]
    pub(crate) non_idempotent_writes: bool,
    /// Inject a fault (embedded cluster only), repeatable: overloaded=P, unavailable=P,
    /// read_timeout=P, server_error=P (instead of executing); write_timeout=P,
    /// overloaded_after_apply=P, server_error_after_apply=P (writes: applied, then failed);
    /// delay_ms=N, node_down=K (K counts from 1 here: node_down=1 stops the
    /// first node, testkit's node 0).
    #[arg(long = "fault", value_name = "KIND=VALUE")]
    pub(crate) faults: Vec<String>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long)]
    pub(crate) prometheus: Option<SocketAddr>,
    /// Export metrics and spans to this OTLP endpoint, e.g. http://127.0.0.1:4317
    /// (OTEL_EXPORTER_OTLP_HEADERS, OTEL_SERVICE_NAME, ... apply).
    #[arg(long, value_name = "URL")]
    pub(crate) otlp: Option<String>,
    /// OTLP protocol: grpc or http/protobuf (default: OTEL_EXPORTER_OTLP_PROTOCOL,
    /// else http/protobuf for a URL on port 4318, else grpc).
    #[arg(long, value_name = "PROTOCOL", requires = "otlp")]
    pub(crate) otlp_protocol: Option<String>,
    /// Send OTLP headers (OTEL_EXPORTER_OTLP_HEADERS, usually API keys) over
    /// plain http:// to a host that is not loopback: refused without this.
    #[arg(long, requires = "otlp")]
    pub(crate) otlp_insecure_headers: bool,
    /// Fraction of requests whose spans are exported with --otlp, 0..1.
    #[arg(long, default_value_t = 0.01, requires = "otlp")]
    pub(crate) otlp_trace_ratio: f64,
    /// Fraction of requests traced on the server (the protocol's tracing
    /// flag); with --otlp their server traces are exported as child spans
    /// of the request spans (2 reads of system_traces per trace, at most
    /// 10 per second). Overrides TOWER_CQL_SERVER_TRACE_RATIO; off unless
    /// one of them is given.
    #[arg(long, value_name = "RATIO", requires = "otlp")]
    pub(crate) server_trace_ratio: Option<f64>,
    /// Print one JSON object at the end instead of the live table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// A fault asked for on the command line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FaultSpec {
    /// Answer with the error instead of executing.
    Error(&'static str, InjectedError, f64),
    /// Apply the write, then answer with the error.
    ErrorAfterApply(&'static str, InjectedError, f64),
    DelayMs(u64),
    /// Stop node K, counted from 1 as on the command line (testkit's node K - 1).
    NodeDown(usize),
}

fn parse_fault(s: &str) -> Result<FaultSpec, String> {
    let (kind, value) = s
        .split_once('=')
        .ok_or_else(|| format!("--fault {s}: expected KIND=VALUE, e.g. overloaded=0.05"))?;
    let prob = || -> Result<f64, String> {
        let p: f64 = value
            .parse()
            .map_err(|_| format!("--fault {s}: {value} is not a probability (0..1)"))?;
        if (0.0..=1.0).contains(&p) {
            Ok(p)
        } else {
            Err(format!("--fault {s}: the probability must be within 0..1"))
        }
    };
    Ok(match kind {
        "overloaded" => FaultSpec::Error("overloaded", InjectedError::Overloaded, prob()?),
        "unavailable" => FaultSpec::Error("unavailable", InjectedError::Unavailable, prob()?),
        "read_timeout" => FaultSpec::Error("read_timeout", InjectedError::ReadTimeout, prob()?),
        "write_timeout" => FaultSpec::ErrorAfterApply(
            "write_timeout",
            InjectedError::WriteTimeout(WriteType::Simple),
            prob()?,
        ),
        "server_error" => FaultSpec::Error("server_error", InjectedError::ServerError, prob()?),
        "overloaded_after_apply" => {
            FaultSpec::ErrorAfterApply("overloaded_after_apply", InjectedError::Overloaded, prob()?)
        }
        "server_error_after_apply" => FaultSpec::ErrorAfterApply(
            "server_error_after_apply",
            InjectedError::ServerError,
            prob()?,
        ),
        "delay_ms" => FaultSpec::DelayMs(
            value
                .parse()
                .map_err(|_| format!("--fault {s}: {value} is not a number of milliseconds"))?,
        ),
        "node_down" => FaultSpec::NodeDown(
            value
                .parse()
                .map_err(|_| format!("--fault {s}: {value} is not a node number (1-based)"))?,
        ),
        other => {
            return Err(format!(
                "--fault {s}: unknown kind {other:?}; use overloaded, unavailable, read_timeout, server_error, write_timeout, overloaded_after_apply, server_error_after_apply, delay_ms or node_down"
            ));
        }
    })
}

pub(crate) fn validate(a: &Args) -> Result<Vec<FaultSpec>, String> {
    if !(0.0..=1.0).contains(&a.read_ratio) {
        return Err(format!(
            "--read-ratio must be within 0..1, got {}",
            a.read_ratio
        ));
    }
    if a.duration <= 0.0 || !a.duration.is_finite() {
        return Err(format!(
            "--duration must be a positive number of seconds, got {}",
            a.duration
        ));
    }
    if a.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if a.rows < 1 {
        return Err("--rows must be at least 1".into());
    }
    if a.page_size < 1 {
        return Err("--page-size must be at least 1".into());
    }
    if a.partition_rows < 1 {
        return Err("--partition-rows must be at least 1".into());
    }
    if a.rate.is_some_and(|r| r <= 0.0 || !r.is_finite()) {
        return Err("--rate must be a positive number of requests per second".into());
    }
    if a.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    if let Some(p) = &a.otlp_protocol
        && Protocol::parse(p).is_none()
    {
        return Err(format!("--otlp-protocol {p}: use grpc or http/protobuf"));
    }
    if let Some(r) = a.server_trace_ratio
        && !(0.0..=1.0).contains(&r)
    {
        return Err(format!("--server-trace-ratio must be within 0..1, got {r}"));
    }
    if !(0.0..=1.0).contains(&a.otlp_trace_ratio) {
        return Err(format!(
            "--otlp-trace-ratio must be within 0..1, got {}",
            a.otlp_trace_ratio
        ));
    }
    let faults = a
        .faults
        .iter()
        .map(|f| parse_fault(f))
        .collect::<Result<Vec<_>, _>>()?;
    if a.uri.is_some() && !faults.is_empty() {
        return Err("--fault needs the embedded cluster: faults cannot be injected into a real cluster (drop --uri)".into());
    }
    for f in &faults {
        if let FaultSpec::NodeDown(k) = f
            && (*k == 0 || *k > a.nodes)
        {
            return Err(format!(
                "--fault node_down={k}: the embedded cluster has nodes 1..={}",
                a.nodes
            ));
        }
    }
    Ok(faults)
}
