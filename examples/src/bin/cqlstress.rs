//! `cqlstress`: reads and writes through the full tower-cql stack, shown
//! live, with a summary (or one JSON object with `--json`) at the end.
//!
//! ```text
//! cqlstress --duration 10 --concurrency 32 --read-ratio 0.8 --fault overloaded=0.02
//! cqlstress --uri 127.0.0.1:9042 --rate 5000 --json
//! ```
//!
//! Without `--uri` it runs against an embedded testkit cluster (`--nodes`),
//! where `--fault` injects server-side faults and the summary adds what the
//! server counted (executions, duplicate writes, faults injected).
//!
//! `--otlp http://127.0.0.1:4317` exports the stack's metrics and a sample
//! of its spans (`--otlp-trace-ratio`) to an OpenTelemetry collector, over
//! gRPC (or HTTP/protobuf: `--otlp-protocol http/protobuf`, or a URL on port
//! 4318); the standard `OTEL_*` variables apply. The last data is flushed at
//! the end of the run and on Ctrl-C.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use scylla::client::session_builder::SessionBuilder;
use tower::ServiceExt;
use tower_cql_core::{
    Collector, Collectors, CqlRequest, DriverService, ErrorKind, InMemoryCollector, Statement,
};
use tower_cql_exporters::metrics_bridge::MetricsBridge;
use tower_cql_exporters::otlp::{ENV_PROTOCOL, OtlpExporter, Protocol};
use tower_cql_exporters::prometheus::PrometheusExporter;
use tower_cql_middleware::rate_limit::{RateLimitConfig, RateLimitMode};
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_testkit::{Cluster, Fault, FaultId, InjectedError, Opcode, WriteType};

/// Load generator for CQL clusters, through the full tower-cql stack.
#[derive(Debug, Parser)]
#[command(name = "cqlstress", version)]
struct Args {
    /// A real cluster's contact point (host:port); default: an embedded testkit cluster.
    #[arg(long)]
    uri: Option<String>,
    /// Nodes of the embedded cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Requests per second in all (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Fraction of requests that are reads, 0..1.
    #[arg(long, default_value_t = 0.8)]
    read_ratio: f64,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    rows: i32,
    /// Page size of reads.
    #[arg(long, default_value_t = 100)]
    page_size: i32,
    /// Mark writes non-idempotent (they are then never retried once they may have been applied).
    #[arg(long)]
    non_idempotent_writes: bool,
    /// Inject a fault (embedded cluster only), repeatable: overloaded=P, unavailable=P,
    /// read_timeout=P, server_error=P (instead of executing); write_timeout=P,
    /// overloaded_after_apply=P, server_error_after_apply=P (writes: applied, then failed);
    /// delay_ms=N, node_down=K.
    #[arg(long = "fault", value_name = "KIND=VALUE")]
    faults: Vec<String>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long)]
    prometheus: Option<SocketAddr>,
    /// Export metrics and spans to this OTLP endpoint, e.g. http://127.0.0.1:4317
    /// (OTEL_EXPORTER_OTLP_HEADERS, OTEL_SERVICE_NAME, ... apply).
    #[arg(long, value_name = "URL")]
    otlp: Option<String>,
    /// OTLP protocol: grpc or http/protobuf (default: OTEL_EXPORTER_OTLP_PROTOCOL,
    /// else http/protobuf for a URL on port 4318, else grpc).
    #[arg(long, value_name = "PROTOCOL", requires = "otlp")]
    otlp_protocol: Option<String>,
    /// Fraction of requests whose spans are exported with --otlp, 0..1.
    #[arg(long, default_value_t = 0.01, requires = "otlp")]
    otlp_trace_ratio: f64,
    /// Print one JSON object at the end instead of the live table.
    #[arg(long)]
    json: bool,
}

/// A fault asked for on the command line.
#[derive(Debug, Clone, PartialEq)]
enum FaultSpec {
    /// Answer with the error instead of executing.
    Error(&'static str, InjectedError, f64),
    /// Apply the write, then answer with the error.
    ErrorAfterApply(&'static str, InjectedError, f64),
    DelayMs(u64),
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

fn validate(a: &Args) -> Result<Vec<FaultSpec>, String> {
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

fn us(n: Option<u64>) -> f64 {
    n.map_or(0.0, |v| (v as f64 / 1000.0 * 10.0).round() / 10.0)
}

/// The OTLP exporter for `--otlp`: the flags win over the `OTEL_*`
/// variables, the variables over cqlstress's own defaults (service name
/// `cqlstress`, metrics every 5 s). Must run inside the runtime.
fn install_otlp(a: &Args, url: &str) -> Result<OtlpExporter, String> {
    let env = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    let mut b = OtlpExporter::builder()
        .endpoint(url)
        .trace_sample_ratio(a.otlp_trace_ratio);
    let protocol = match &a.otlp_protocol {
        Some(p) => Protocol::parse(p),
        None if !env(ENV_PROTOCOL) && url.trim_end_matches('/').ends_with(":4318") => {
            Some(Protocol::HttpProtobuf)
        }
        None => None,
    };
    if let Some(p) = protocol {
        b = b.protocol(p);
    }
    if !env("OTEL_SERVICE_NAME") {
        b = b.service_name("cqlstress");
    }
    if !env("OTEL_METRIC_EXPORT_INTERVAL") {
        b = b.metric_export_interval(Duration::from_secs(5));
    }
    b.install().map_err(|e| format!("--otlp {url}: {e}"))
}

async fn run(a: Args, faults: Vec<FaultSpec>, otlp: Option<OtlpExporter>) -> Result<(), String> {
    if let Some(o) = &otlp {
        use tracing_subscriber::prelude::*;
        // The stack's spans only (not the driver's own TRACE spans).
        let layer = o
            .tracing_layer()
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.target().starts_with("tower_cql")
            }));
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
        eprintln!(
            "exporting metrics and spans to {} over OTLP {} (service.name={})",
            o.endpoint(),
            o.protocol(),
            o.service_name()
        );
    }
    let _exporter = match a.prometheus {
        Some(addr) => Some(
            PrometheusExporter::builder()
                .listen(addr)
                .install()
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let (nodes, cluster) = match &a.uri {
        Some(u) => (vec![u.clone()], None),
        None => {
            let c = Cluster::builder()
                .nodes(a.nodes)
                .start()
                .await
                .map_err(|e| format!("cannot start the embedded cluster: {e}"))?;
            (
                c.contact_points().iter().map(ToString::to_string).collect(),
                Some(c),
            )
        }
    };
    let session = tokio::time::timeout(
        Duration::from_secs(15),
        SessionBuilder::new().known_nodes(&nodes).build(),
    )
    .await
    .map_err(|_| format!("cannot connect to {nodes:?}: timed out after 15 s (is the cluster up?)"))?
    .map_err(|e| format!("cannot connect to {nodes:?}: {e}"))?;
    let memory = Arc::new(InMemoryCollector::new());
    let mut list: Vec<Arc<dyn Collector>> = vec![memory.clone()];
    if a.prometheus.is_some() {
        list.push(Arc::new(MetricsBridge::new()));
    }
    if let Some(o) = &otlp {
        // flushed (metrics and spans) by the stack's close()
        list.push(Arc::new(o.collector()));
    }
    let collectors = Collectors::with(list);
    let driver = DriverService::builder(Arc::new(session))
        .collectors(collectors.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let mut builder = StackBuilder::new(collectors);
    if let Some(rate) = a.rate {
        builder = builder.rate_limit(RateLimitConfig {
            rate_per_second: rate,
            burst: (rate / 10.0).ceil().max(1.0) as u32,
            mode: RateLimitMode::Wait {
                max_wait: Duration::from_secs(5),
            },
        });
    }
    let stack = builder.build(driver).map_err(|e| e.to_string())?;
    let svc = stack.service();
    for cql in [
        "CREATE KEYSPACE IF NOT EXISTS stress WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE IF NOT EXISTS stress.kv (k int PRIMARY KEY, v bigint)",
    ] {
        svc.clone()
            .oneshot(CqlRequest::unprepared(cql))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut injected: Vec<(&'static str, FaultId)> = Vec::new();
    if let Some(c) = &cluster {
        for f in &faults {
            match f {
                FaultSpec::Error(name, e, p) | FaultSpec::ErrorAfterApply(name, e, p) => {
                    let fault = match f {
                        FaultSpec::ErrorAfterApply(..) => Fault::error_after_apply(*e),
                        _ if *e == InjectedError::ReadTimeout => Fault::error(*e).reads(),
                        _ => Fault::error(*e),
                    };
                    injected.push((
                        name,
                        c.faults().add(
                            fault
                                .opcode(Opcode::Execute)
                                .keyspace("stress")
                                .probability(*p),
                        ),
                    ));
                }
                FaultSpec::DelayMs(ms) => {
                    c.faults()
                        .add(Fault::delay(Duration::from_millis(*ms)).opcode(Opcode::Execute));
                }
                FaultSpec::NodeDown(k) => c.stop_node(k - 1).await,
            }
        }
        c.counters().reset();
    }

    let read = Statement::new("SELECT v FROM stress.kv WHERE k = ?")
        .operation("read")
        .idempotent(true);
    let write = Statement::new("INSERT INTO stress.kv (k, v) VALUES (?, ?)")
        .operation("write")
        .idempotent(!a.non_idempotent_writes);
    let stop = Arc::new(AtomicBool::new(false));
    let seq = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..a.concurrency {
        let (svc, read, write, stop, seq) = (
            svc.clone(),
            read.clone(),
            write.clone(),
            stop.clone(),
            seq.clone(),
        );
        let (rows, read_ratio, page) = (a.rows, a.read_ratio, a.page_size);
        workers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(w as u64 + 1);
            while !stop.load(Ordering::Relaxed) {
                let k = rng.i32(0..rows);
                let req = if rng.f64() < read_ratio {
                    read.request().bind((k,)).page_size(page)
                } else {
                    // unique values: a write applied twice is visible to the server's counters
                    let v = seq.fetch_add(1, Ordering::Relaxed) as i64;
                    write.request().bind((k, v))
                };
                let _ = svc
                    .clone()
                    .oneshot(req.timeout(Duration::from_secs(10)))
                    .await;
            }
        }));
    }

    let deadline = started + Duration::from_secs_f64(a.duration);
    // A progress bar on a terminal (hidden when stderr is not one); the
    // table lines go above it.
    let bar = (!a.json).then(|| {
        let pb = indicatif::ProgressBar::new((a.duration * 1000.0) as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{bar:40.cyan/blue} {elapsed_precise} {msg}")
                .expect("a valid template"),
        );
        pb
    });
    let show = |line: String| match &bar {
        Some(pb) if !pb.is_hidden() => pb.println(line),
        _ => println!("{line}"),
    };
    if !a.json {
        show(format!(
            "{:>6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>6}  errors",
            "time", "ops/s", "p50 µs", "p99 µs", "p999 µs", "retries", "throttled", "limit"
        ));
    }
    let mut last_ops = 0u64;
    let mut interrupted = false;
    // One Ctrl-C listener for the whole run, in place from the first tick
    // on: a new one per tick misses a signal that comes between two ticks.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let tick = (deadline - now).min(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = &mut ctrl_c => { interrupted = true; break; }
        }
        if !a.json {
            let s = memory.snapshot();
            let h = s.request_latency(None);
            let ops = s.requests_total();
            show(format!(
                "{:>5.1}s {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>6}  {:?}",
                started.elapsed().as_secs_f64(),
                ops - last_ops,
                us(h.quantile(0.5)),
                us(h.quantile(0.99)),
                us(h.quantile(0.999)),
                s.retries_total(),
                s.throttled,
                s.current_limit,
                s.errors
            ));
            if let Some(pb) = &bar {
                pb.set_position(started.elapsed().as_millis() as u64);
                pb.set_message(format!(
                    "{} ops/s, {} retries",
                    ops - last_ops,
                    s.retries_total()
                ));
            }
            last_ops = ops;
        }
    }
    if let Some(pb) = &bar {
        pb.finish_and_clear();
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stack.close().await;
    if let Some(o) = &otlp
        && let Err(e) = o.shutdown().await
    {
        eprintln!("warning: OTLP export to {}: {e}", o.endpoint());
    }

    let s = memory.snapshot();
    let data = s.request_latency(Some("read"));
    let mut lat = data.clone();
    lat.merge(&s.request_latency(Some("write")));
    let ops = lat.count();
    let errors: BTreeMap<&str, u64> = s
        .errors
        .iter()
        .filter(|(k, _)| **k != ErrorKind::ShutDown)
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    let failed: u64 = errors.values().sum();
    let mut json = format!(
        "{{\"ops\":{ops},\"ok\":{},\"errors\":{{{}}},\"retries\":{},\"throttled\":{},\"throughput_ops_s\":{:.1},\"latency_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}},\"duration_s\":{elapsed:.3},\"interrupted\":{interrupted}",
        ops - failed,
        errors
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect::<Vec<_>>()
            .join(","),
        s.retries_total(),
        s.throttled,
        ops as f64 / elapsed,
        us(lat.quantile(0.5)),
        us(lat.quantile(0.9)),
        us(lat.quantile(0.99)),
        us(lat.quantile(0.999)),
        us(lat.max()),
    );
    if let Some(c) = &cluster {
        json.push_str(&format!(
            ",\"server_executions\":{},\"duplicate_writes\":{},\"injected\":{{{}}}",
            c.counters().total_executions(),
            c.counters().duplicate_writes(),
            injected
                .iter()
                .map(|(k, id)| format!("\"{k}\":{}", c.faults().fired(*id)))
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    json.push('}');
    if a.json {
        println!("{json}");
    } else {
        println!();
        println!("summary: {json}");
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    let faults = match validate(&args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let otlp = match &args.otlp {
        Some(url) => {
            let _in_runtime = rt.enter();
            match install_otlp(&args, url) {
                Ok(o) => Some(o),
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(2);
                }
            }
        }
        None => None,
    };
    if let Err(e) = rt.block_on(run(args, faults, otlp)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
