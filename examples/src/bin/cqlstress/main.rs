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

mod args;
mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use scylla::client::session_builder::SessionBuilder;
use tower_cql_core::{Collector, Collectors, DriverService, ErrorKind, InMemoryCollector};
use tower_cql_exporters::metrics_bridge::MetricsBridge;
use tower_cql_exporters::otlp::{ENV_PROTOCOL, OtlpExporter, Protocol};
use tower_cql_exporters::prometheus::PrometheusExporter;
use tower_cql_middleware::rate_limit::{RateLimitConfig, RateLimitMode};
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_middleware::stack_config::StackConfig;

use crate::args::{Args, FaultSpec, validate};
use crate::workload::ScanTally;
use tower_cql_testkit::{Cluster, Fault, FaultId, InjectedError, Opcode};

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
        .trace_sample_ratio(a.otlp_trace_ratio)
        .allow_insecure_headers(a.otlp_insecure_headers);
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
    // else TOWER_CQL_SERVER_TRACE_RATIO, read by the builder
    if let Some(r) = a.server_trace_ratio {
        b = b.server_trace_ratio(r);
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
    // --server-trace-ratio, else the exporter's setting
    // (TOWER_CQL_SERVER_TRACE_RATIO); --server-trace-ratio requires --otlp
    let server_trace = otlp.as_ref().and_then(OtlpExporter::server_trace_config);
    if let Some(o) = &otlp {
        // flushed (metrics and spans) by the stack's close()
        list.push(Arc::new(o.collector()));
        if server_trace.is_some() {
            // parents server traces on the request spans of tracing_layer()
            list.push(Arc::new(o.server_trace_collector()));
        }
    }
    let collectors = Collectors::with(list);
    let driver = DriverService::builder(Arc::new(session))
        .build()
        .map_err(|e| e.to_string())?;
    let mut builder = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--config {}: cannot read it: {e}", path.display()))?;
            StackConfig::from_toml(&text)
                .and_then(|c| c.into_builder(collectors))
                .map_err(|e| format!("--config {}: {e}", path.display()))?
        }
        None => StackBuilder::new(collectors),
    };
    if let Some(rate) = a.rate {
        builder = builder.rate_limit(RateLimitConfig {
            rate_per_second: rate,
            burst: (rate / 10.0).ceil().max(1.0) as u32,
            mode: RateLimitMode::Wait {
                max_wait: Duration::from_secs(5),
            },
        });
    }
    if let Some(config) = server_trace {
        builder = builder.server_trace(config);
    }
    let stack = builder.build(driver).map_err(|e| match &a.config {
        Some(path) => format!("--config {}: {e}", path.display()),
        None => e.to_string(),
    })?;
    let svc = stack.service();
    workload::create(&svc, &a).await?;
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
                // --fault node_down=K is 1-based; testkit counts from 0.
                FaultSpec::NodeDown(k) => c.stop_node(k - 1).await,
            }
        }
        c.counters().reset();
    }

    let a = Arc::new(a);
    let stop = Arc::new(AtomicBool::new(false));
    let seq = Arc::new(AtomicU64::new(0));
    let scans = Arc::new(ScanTally::default());
    let started = Instant::now();
    let workers: Vec<_> = (0..a.concurrency)
        .map(|w| {
            tokio::spawn(workload::worker(
                stack.clone(),
                a.clone(),
                w,
                stop.clone(),
                seq.clone(),
                scans.clone(),
            ))
        })
        .collect();

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
    if let Some(t) = stack.server_traces() {
        let t = t.stats();
        eprintln!(
            "server traces: {} sampled, {} fetched, {} skipped (over the rate cap), {} failed",
            t.sampled, t.fetched, t.skipped, t.failed
        );
    }
    if let Some(o) = &otlp
        && let Err(e) = o.shutdown().await
    {
        eprintln!("warning: OTLP export to {}: {e}", o.endpoint());
    }

    let s = memory.snapshot();
    let mut lat = s.request_latency(Some("read"));
    lat.merge(&s.request_latency(Some("write")));
    lat.merge(&s.request_latency(Some("scan")));
    // a scan is one operation, however many pages (requests) it took
    let scanned = scans.complete.load(Ordering::Relaxed)
        + scans.failed.load(Ordering::Relaxed)
        + scans.short.load(Ordering::Relaxed);
    let ops = lat.count() - s.request_latency(Some("scan")).count() + scanned;
    let errors: BTreeMap<&str, u64> = s
        .errors
        .iter()
        .filter(|(k, _)| **k != ErrorKind::ShutDown)
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    // errors of scans are counted once per scan, not per page request
    let failed: u64 = if a.scan {
        let page_errors: u64 = s
            .requests
            .iter()
            .filter(|r| {
                r.labels
                    .operation
                    .as_ref()
                    .is_some_and(|o| o.as_str() == "scan")
            })
            .filter(|r| r.labels.error.is_some_and(|e| e != ErrorKind::ShutDown))
            .map(|r| r.histogram.count())
            .sum();
        errors.values().sum::<u64>() - page_errors + scans.failed.load(Ordering::Relaxed)
    } else {
        errors.values().sum()
    };
    let attempts_total = s.attempt_latency(None).count();
    let attempts_cancelled = s
        .attempt_errors
        .get(&ErrorKind::Cancelled)
        .copied()
        .unwrap_or(0);
    let attempts_error = s.attempt_errors.values().sum::<u64>() - attempts_cancelled;
    let mut json = format!(
        "{{\"ops\":{ops},\"ok\":{},\"errors\":{{{}}},\"retries\":{},\"throttled\":{},\"throughput_ops_s\":{:.1},\"latency_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}},\"duration_s\":{elapsed:.3},\"interrupted\":{interrupted},\"attempts\":{{\"total\":{attempts_total},\"ok\":{},\"error\":{attempts_error},\"cancelled\":{attempts_cancelled}}},\"pages\":{},\"rows\":{},\"scans\":{{\"complete\":{},\"failed\":{},\"short\":{}}}",
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
        attempts_total - attempts_error - attempts_cancelled,
        s.pages,
        s.page_rows,
        scans.complete.load(Ordering::Relaxed),
        scans.failed.load(Ordering::Relaxed),
        scans.short.load(Ordering::Relaxed),
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
