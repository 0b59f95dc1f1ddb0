//! `overhead`: what the full default tower-cql stack costs against the raw
//! scylla `Session`, end to end, against one CQL server, in one run.
//!
//! ```text
//! cargo build --release -p tower-cql-testkit --bin cql-testkit
//! cargo run --release -p tower-cql-benches --bin overhead -- --json
//! cargo run --release -p tower-cql-benches --bin overhead -- --json --uri 127.0.0.1:9042
//! # one configuration's series, each run on its own, judged together
//! for i in 1 2 3 4; do target/release/overhead --json > s_$i.json; done
//! target/release/overhead --pool s_*.json
//! ```
//!
//! Each round runs the raw session and then the stack (the order alternates
//! from round to round, so a drift of the machine hits both alike) for
//! `--round-secs`, at the same concurrency, with the same prepared
//! statement (`SELECT v FROM load.kv WHERE k = ?`) over the same session.
//! The stack is `StackBuilder`'s defaults (gate, request span, metrics,
//! retry, attempt span, timeout) plus a rate limit and a concurrency limit
//! that never bind, emitting into an in-memory collector, with a
//! `tracing-opentelemetry` layer over an OpenTelemetry `SdkTracerProvider`
//! whose batch processor exports into a sink that counts and discards.
//!
//! Without `--uri` it starts `cql-testkit` (found next to this executable)
//! as a separate process, so the client CPU time measured here
//! (`CLOCK_PROCESS_CPUTIME_ID`: every thread of this process, user and
//! system; the same clock `getrusage(RUSAGE_SELF)` sums) excludes the
//! server's.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;
use serde_json::{Value, json};
use tower::{Service, ServiceExt};
use tower_cql_core::{
    Collectors, CqlError, CqlRequest, DriverService, InMemoryCollector, Statement,
};
use tower_cql_exporters::spans::{KeepPresampled, SpanCollector};
use tower_cql_middleware::concurrency::ConcurrencyConfig;
use tower_cql_middleware::rate_limit::{RateLimitConfig, RateLimitMode};
use tower_cql_middleware::stack::{SessionService, StackBuilder};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

/// The overhead of the default stack against the raw scylla session.
#[derive(Debug, Parser)]
#[command(name = "overhead", version)]
struct Args {
    /// Server (`host:port`); default: start `cql-testkit` as a child process.
    #[arg(long)]
    uri: Option<String>,
    /// Rounds; each runs the raw session once and the stack once.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds each side runs per round.
    #[arg(long, default_value_t = 3.0)]
    round_secs: f64,
    /// Requests in flight (closed loop, one task per request in flight).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds of warm-up for each side before the first round.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Rows in the table read from.
    #[arg(long, default_value_t = 1000)]
    rows: i32,
    /// Worker threads of the client's runtime (default: one per core).
    #[arg(long)]
    client_threads: Option<usize>,
    /// Worker threads of the spawned `cql-testkit` (default: its own).
    #[arg(long)]
    server_threads: Option<usize>,
    /// Path of the `cql-testkit` binary (default: next to this executable).
    #[arg(long)]
    testkit: Option<PathBuf>,
    /// What to compare with the raw session: the full stack (default), or,
    /// to split the cost, the driver service alone (`driver`) or without
    /// its node attribution (`driver-plain`: attempts name no node).
    #[arg(long, value_enum, default_value = "stack")]
    compare: Compare,
    /// Run one side only (for profilers such as callgrind: instructions
    /// per request are then the whole process's count over the requests).
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Install no tracing subscriber (the spans are then disabled): to see
    /// what the OpenTelemetry pipeline itself costs.
    #[arg(long)]
    no_otel: bool,
    /// Sample traces at this ratio (a parent-based `TraceIdRatioBased`
    /// sampler on the provider) instead of recording every one. With
    /// `--span-collector`, as `OtlpExporter::span_collector` does: the
    /// collector samples requests itself at the ratio
    /// (`SpanCollector::sample_ratio`), and the provider's sampler keeps
    /// them (`KeepPresampled`); without it, `--span-collector` samples
    /// every request that way (a ratio of 1: the exporter's default).
    #[arg(long)]
    trace_ratio: Option<f64>,
    /// Leave out the attributes `tracing-opentelemetry` adds to every span
    /// by default (code location, thread, target, busy/idle time).
    #[arg(long)]
    otel_lean: bool,
    /// Make the spans with `tower_cql_exporters::spans::SpanCollector`
    /// (one span per request through the tracer, sampled first) instead of
    /// the tracing layers and `tracing-opentelemetry`.
    #[arg(long)]
    span_collector: bool,
    /// The stack as `StackBuilder::new` makes it (the default stack: no
    /// rate or concurrency limit), instead of the default stack with a
    /// rate and a concurrency limit that never bind (this tool's stack
    /// since #8, kept for comparison with its earlier figures).
    #[arg(long)]
    no_limits: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Run nothing: pool the `--json` outputs of earlier runs (each file
    /// one series, all of one configuration) and print, for the
    /// throughput and the client CPU ratios, the median of the series'
    /// medians, its 95% interval (bootstrap over the series) and how many
    /// series meet each of #17's thresholds.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pool: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Only {
    Raw,
    Stack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Compare {
    Stack,
    Driver,
    DriverPlain,
}

/// A span exporter that counts what it is given and keeps nothing.
#[derive(Debug, Clone, Default)]
struct Discard(Arc<AtomicU64>);

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// A `cql-testkit` child process, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_testkit(args: &Args) -> Result<(Server, String), String> {
    let path = match &args.testkit {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("cql-testkit"),
    };
    if !path.exists() {
        return Err(format!(
            "no cql-testkit binary at {}: build it with `cargo build --release -p tower-cql-testkit --bin cql-testkit` (same CARGO_TARGET_DIR), pass --testkit PATH, or point --uri at a running server",
            path.display()
        ));
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut cmd = Command::new(&path);
    cmd.arg("--listen").arg(addr.to_string());
    if let Some(t) = args.server_threads {
        cmd.arg("--threads").arg(t.to_string());
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("cql-testkit did not listen on {addr} within 20 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((server, addr.to_string()))
}

/// CPU time (all threads, user + system) of the spawned `cql-testkit`,
/// from `/proc/<pid>/stat` (clock ticks, 10 ms at the usual 100 Hz: about
/// 0.5% of a 3 s round at 0.7 cores); `None` for an external server or
/// where `/proc` cannot be read.
fn server_cpu(pid: Option<u32>) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    let hz = rustix::param::clock_ticks_per_second();
    Some(Duration::from_secs_f64(
        stat_cpu_ticks(&stat)? as f64 / hz as f64,
    ))
}

/// User and system CPU, in clock ticks, of a `/proc/<pid>/stat` line.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // the fields after the command name, which is in parentheses and may
    // hold spaces and parentheses: utime and stime are the 14th and 15th
    // of the line
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time of this process (all threads, user + system).
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// One side of one round.
#[derive(Debug, Clone)]
struct Side {
    ops: u64,
    secs: f64,
    cpu: Duration,
    /// The spawned server's CPU time over the same interval (`None`: an
    /// external server).
    server_cpu: Option<Duration>,
    /// Latencies in nanoseconds, sorted.
    lat: Vec<u32>,
}

impl Side {
    fn ops_s(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    fn pct_us(&self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return 0.0;
        }
        let i = ((self.lat.len() as f64 * p) as usize).min(self.lat.len() - 1);
        f64::from(self.lat[i]) / 1000.0
    }
    fn cpu_us_per_op(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }
    fn server_cpu_us_per_op(&self) -> Option<f64> {
        Some(self.server_cpu?.as_secs_f64() * 1e6 / self.ops.max(1) as f64)
    }
    /// Client and server CPU together per request (the client's alone
    /// for an external server).
    fn total_cpu_us_per_op(&self) -> f64 {
        self.cpu_us_per_op() + self.server_cpu_us_per_op().unwrap_or(0.0)
    }
    fn json(&self) -> Value {
        json!({
            "server_cpu_us_per_op": self.server_cpu_us_per_op().map(round3),
            "server_cpu_cores": self.server_cpu.map(|c| round3(c.as_secs_f64() / self.secs)),
            "ops": self.ops,
            "secs": round3(self.secs),
            "ops_s": self.ops_s().round(),
            "p50_us": round3(self.pct_us(0.5)),
            "p99_us": round3(self.pct_us(0.99)),
            "cpu_us_per_op": round3(self.cpu_us_per_op()),
            "cpu_cores": round3(self.cpu.as_secs_f64() / self.secs),
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The service the stack side calls.
// Boxing the larger variant would add the allocation this tool must not.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Target {
    /// The built stack, as `stack.service()` gives it.
    Stack(SessionService),
    /// The driver service alone (`--compare driver`).
    Driver(DriverService),
}

/// Runs `concurrency` closed-loop tasks calling `op` for `secs` (the CPU
/// of `server`, the spawned server's process, read around them).
async fn closed_loop<F, Fut>(
    concurrency: usize,
    rows: i32,
    secs: f64,
    server: Option<u32>,
    op: F,
) -> Result<Side, String>
where
    F: Fn(i32) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let server0 = server_cpu(server);
    let cpu0 = process_cpu();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for t in 0..concurrency {
        let op = op.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 14);
            let mut k = (t as i32 * 7919) % rows;
            while !stop.load(Ordering::Relaxed) {
                let s = Instant::now();
                op(k).await?;
                lat.push(u32::try_from(s.elapsed().as_nanos()).unwrap_or(u32::MAX));
                k = (k + 1) % rows;
            }
            Ok::<_, String>(lat)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.map_err(|e| e.to_string())??);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = process_cpu().saturating_sub(cpu0);
    let server_cpu = server_cpu(server)
        .zip(server0)
        .map(|(b, a)| b.saturating_sub(a));
    lat.sort_unstable();
    Ok(Side {
        ops: lat.len() as u64,
        secs,
        cpu,
        server_cpu,
        lat,
    })
}

async fn setup(session: &Session, rows: i32) -> Result<PreparedStatement, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    session
        .query_unpaged("CREATE KEYSPACE IF NOT EXISTS load WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}", &[])
        .await
        .map_err(|x| e(&x))?;
    session
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS load.kv (k int PRIMARY KEY, v text)",
            &[],
        )
        .await
        .map_err(|x| e(&x))?;
    let insert = session
        .prepare("INSERT INTO load.kv (k, v) VALUES (?, ?)")
        .await
        .map_err(|x| e(&x))?;
    for k in 0..rows {
        session
            .execute_unpaged(&insert, (k, format!("value-{k}")))
            .await
            .map_err(|x| e(&x))?;
    }
    session.prepare(SELECT).await.map_err(|x| e(&x))
}

fn statement_for_sizes() -> CqlRequest {
    Statement::new(SELECT).request().bind((1i32,))
}

const SELECT: &str = "SELECT v FROM load.kv WHERE k = ?";

fn stats(v: &[f64]) -> Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let med = if s.is_empty() {
        0.0
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    json!({
        "min": round3(*s.first().unwrap_or(&0.0)),
        "median": round3(med),
        "max": round3(*s.last().unwrap_or(&0.0)),
    })
}

fn median(v: &[f64]) -> f64 {
    stats(v)["median"].as_f64().unwrap_or(0.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default()
}

async fn run(args: Args) -> Result<Value, String> {
    let load_start = loadavg();
    let (server, uri) = match &args.uri {
        Some(u) => (None, u.clone()),
        None => {
            let (s, u) = start_testkit(&args)?;
            (Some(s), u)
        }
    };
    let server_pid = server.as_ref().map(|s| s.0.id());

    // Tracing: tracing-opentelemetry over an SDK provider with a batch
    // processor exporting into a discarding sink. INFO and above, the
    // level of the stack's spans; the driver's TRACE spans stay off for
    // both sides.
    let exported = Discard::default();
    let mut provider = SdkTracerProvider::builder().with_batch_exporter(exported.clone());
    // the span collector's ratio: as the OTLP exporter's, 1 by default
    let trace_ratio = args.trace_ratio.or(args.span_collector.then_some(1.0));
    if let Some(ratio) = trace_ratio {
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)));
        provider = if args.span_collector {
            provider.with_sampler(KeepPresampled::new(sampler))
        } else {
            provider.with_sampler(sampler)
        };
    }
    let provider = provider.build();
    let tracer = provider.tracer("tower-cql-overhead");
    if !args.no_otel && !args.span_collector {
        let lean = args.otel_lean;
        tracing_subscriber::registry()
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_location(!lean)
                    .with_threads(!lean)
                    .with_tracked_inactivity(!lean)
                    .with_target(!lean)
                    .with_filter(LevelFilter::INFO),
            )
            .try_init()
            .map_err(|e| e.to_string())?;
    }

    let session = Arc::new(
        SessionBuilder::new()
            .known_node(&uri)
            .build()
            .await
            .map_err(|e| format!("cannot connect to {uri}: {e}"))?,
    );
    let prepared = setup(&session, args.rows).await?;

    let memory = Arc::new(InMemoryCollector::new());
    let collectors = Collectors::with([memory.clone()]);
    if args.span_collector {
        // (with the span collector, `trace_ratio` is set: 1 by default)
        collectors.add(Arc::new(
            SpanCollector::new(provider.tracer("tower-cql-overhead"))
                .sample_ratio(trace_ratio.unwrap_or(1.0)),
        ));
    }
    let make_driver = || {
        DriverService::builder(session.clone())
            .node_attribution(args.compare != Compare::DriverPlain)
            .build()
            .map_err(|e| e.to_string())
    };
    let driver = make_driver()?;
    if std::env::var_os("OVERHEAD_SIZES").is_some() {
        let f = session.execute_unpaged(&prepared, (1i32,));
        eprintln!(
            "raw execute_unpaged future: {} bytes",
            std::mem::size_of_val(&f)
        );
        drop(f);
        let f = driver.execute(statement_for_sizes());
        eprintln!(
            "DriverService::execute future: {} bytes",
            std::mem::size_of_val(&f)
        );
        drop(f);
        let f = tower::Service::call(&mut driver.clone(), statement_for_sizes());
        eprintln!(
            "DriverService::call future: {} bytes (a handle to its block, which holds the execute future)",
            std::mem::size_of_val(&f)
        );
    }
    // (its own driver service: the stack's is given to the stack alone,
    // as `build_on` does, so it emits into the stack's collectors itself)
    let driver_for_compare = make_driver()?;
    let builder = StackBuilder::new(collectors.clone());
    // with the span collector, the tracing layers are off (no double spans)
    let builder = if args.span_collector {
        builder.without_trace()
    } else {
        builder
    };
    let builder = if args.no_limits {
        builder
    } else {
        builder
            .rate_limit(RateLimitConfig {
                // far above what 2 cores reach; 1e9/s with a burst of 1e6 once
                // refused a request ("next token is 5.2 ms away"): reported
                rate_per_second: 1e7,
                burst: 100_000,
                mode: RateLimitMode::Reject,
            })
            .concurrency(ConcurrencyConfig {
                max_in_flight: args.concurrency.max(1) * 4,
                ..ConcurrencyConfig::default()
            })
    };
    let stack = builder.build(driver).map_err(|e| e.to_string())?;
    let statement = Statement::new(SELECT)
        .operation("get")
        .keyspace("load")
        .table("kv")
        .idempotent(true);

    let raw_op = {
        let session = session.clone();
        let prepared = prepared.clone();
        move |k: i32| {
            let session = session.clone();
            let prepared = prepared.clone();
            async move {
                session
                    .execute_unpaged(&prepared, (k,))
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        }
    };
    // The stack side calls the stack's own service (what `stack.service()`
    // hands a user, cloned per request) or the bare driver service: each as
    // it is, not boxed once more to share a type.
    let target = if args.compare == Compare::Stack {
        Target::Stack(stack.service())
    } else {
        Target::Driver(driver_for_compare)
    };
    let stack_op = {
        let statement = statement.clone();
        move |k: i32| {
            let target = target.clone();
            let req = statement.request().bind((k,));
            // (shaped as the raw side's: the result mapped inside the
            // async block, not by a combinator around it, whose extra
            // poll level and copies are the harness's cost, not the
            // stack's)
            async move {
                let resp = match target {
                    Target::Stack(mut svc) => match svc.ready().await {
                        Ok(svc) => svc.call(req).await,
                        Err(e) => Err(e),
                    },
                    Target::Driver(mut svc) => match svc.ready().await {
                        Ok(svc) => svc.call(req).await,
                        Err(e) => Err(e),
                    },
                };
                resp.map(drop).map_err(|e: CqlError| e.to_string())
            }
        }
    };

    let (c, rows) = (args.concurrency, args.rows);
    let run_raw = args.only != Some(Only::Stack);
    let run_stack = args.only != Some(Only::Raw);
    let skipped = || Side {
        ops: 0,
        secs: 1.0,
        cpu: Duration::ZERO,
        server_cpu: None,
        lat: Vec::new(),
    };
    if args.warmup_secs > 0.0 {
        if run_raw {
            closed_loop(c, rows, args.warmup_secs, server_pid, raw_op.clone()).await?;
        }
        if run_stack {
            closed_loop(c, rows, args.warmup_secs, server_pid, stack_op.clone()).await?;
        }
    }
    let warm_stack_requests = memory.snapshot().requests_total();

    let mut rounds = Vec::new();
    let mut stack_ops_total = 0;
    for r in 0..args.rounds {
        let mut raw = skipped();
        let mut stk = skipped();
        for side in [r % 2 == 0, r % 2 != 0] {
            if side && run_raw {
                raw = closed_loop(c, rows, args.round_secs, server_pid, raw_op.clone()).await?;
            } else if !side && run_stack {
                stk = closed_loop(c, rows, args.round_secs, server_pid, stack_op.clone()).await?;
            }
        }
        stack_ops_total += stk.ops;
        if !args.json {
            eprintln!(
                "round {r}: raw {:.0} ops/s p50 {:.1} us cpu {:.2} us/op | stack {:.0} ops/s p50 {:.1} us cpu {:.2} us/op",
                raw.ops_s(),
                raw.pct_us(0.5),
                raw.cpu_us_per_op(),
                stk.ops_s(),
                stk.pct_us(0.5),
                stk.cpu_us_per_op()
            );
        }
        rounds.push((raw, stk));
    }
    stack.close().await;
    let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;

    let col = |f: &dyn Fn(&(Side, Side)) -> f64| rounds.iter().map(f).collect::<Vec<f64>>();
    let raw_ops = col(&|(r, _)| r.ops_s());
    let stack_ops = col(&|(_, s)| s.ops_s());
    let ratio = col(&|(r, s)| s.ops_s() / r.ops_s());
    let raw_p50 = col(&|(r, _)| r.pct_us(0.5));
    let stack_p50 = col(&|(_, s)| s.pct_us(0.5));
    let added_p50 = col(&|(r, s)| s.pct_us(0.5) - r.pct_us(0.5));
    let raw_cpu = col(&|(r, _)| r.cpu_us_per_op());
    let stack_cpu = col(&|(_, s)| s.cpu_us_per_op());
    let cpu_ratio = col(&|(r, s)| s.cpu_us_per_op() / r.cpu_us_per_op());
    // the spawned server's share: with both processes on the machine's
    // cores, a saturated machine's throughput ratio is about the inverse
    // of the ratio of client and server CPU together per request
    let server_cols = rounds.iter().all(|(r, s)| {
        (!run_raw || r.server_cpu.is_some()) && (!run_stack || s.server_cpu.is_some())
    });
    let raw_server = col(&|(r, _)| r.server_cpu_us_per_op().unwrap_or(0.0));
    let stack_server = col(&|(_, s)| s.server_cpu_us_per_op().unwrap_or(0.0));
    let total_cpu_ratio = col(&|(r, s)| s.total_cpu_us_per_op() / r.total_cpu_us_per_op());
    let server_summary = server_cols.then(|| {
        json!({
            "raw_server_cpu_us_per_op": stats(&raw_server),
            "stack_server_cpu_us_per_op": stats(&stack_server),
            "total_cpu_ratio": stats(&total_cpu_ratio),
        })
    });
    let recorded = memory.snapshot().requests_total() - warm_stack_requests;

    Ok(json!({
        "uri": uri,
        "server": if args.uri.is_some() { "external" } else { "cql-testkit child process" },
        "machine": {
            "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "cpu_model": cpu_model(),
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
        },
        "otel": !args.no_otel,
        "otel_lean": args.otel_lean,
        "no_limits": args.no_limits,
        "client_threads": args.client_threads,
        "server_threads": args.server_threads,
        "span_collector": args.span_collector,
        "trace_ratio": args.trace_ratio,
        "compare": format!("{:?}", args.compare),
        "concurrency": c,
        "round_secs": args.round_secs,
        "warmup_secs": args.warmup_secs,
        "rounds": args.rounds,
        "raw_ops_s": median(&raw_ops).round(),
        "stack_ops_s": median(&stack_ops).round(),
        "ratio": round3(median(&ratio)),
        "raw_p50_us": round3(median(&raw_p50)),
        "stack_p50_us": round3(median(&stack_p50)),
        "added_p50_us": round3(median(&added_p50)),
        "raw_cpu_us_per_op": round3(median(&raw_cpu)),
        "stack_cpu_us_per_op": round3(median(&stack_cpu)),
        "cpu_ratio": round3(median(&cpu_ratio)),
        "server_cpu": server_summary,
        "summary": {
            "raw_ops_s": stats(&raw_ops),
            "stack_ops_s": stats(&stack_ops),
            "ratio": stats(&ratio),
            "raw_p50_us": stats(&raw_p50),
            "stack_p50_us": stats(&stack_p50),
            "added_p50_us": stats(&added_p50),
            "raw_cpu_us_per_op": stats(&raw_cpu),
            "stack_cpu_us_per_op": stats(&stack_cpu),
            "cpu_ratio": stats(&cpu_ratio),
        },
        // #17's goals for this tool's medians (the instructions' goal is
        // measured by `benches/callgrind.sh`)
        "goals": {
            "about": "#17 at 64 in flight against cql-testkit: throughput >= 0.90 and CPU <= 1.25 with 1%-sampled SpanCollector spans (--no-otel --span-collector --trace-ratio 0.01), CPU <= 1.6 with every request in a span",
            "throughput_ratio_ge_0_90": median(&ratio) >= 0.90,
            "cpu_ratio_le_1_25": median(&cpu_ratio) <= 1.25,
            "cpu_ratio_le_1_6": median(&cpu_ratio) <= 1.6,
        },
        "per_round": rounds.iter().enumerate().map(|(i, (r, s))| json!({
            "round": i,
            "order": if i % 2 == 0 { "raw,stack" } else { "stack,raw" },
            "raw": r.json(),
            "stack": s.json(),
            "ratio": round3(s.ops_s() / r.ops_s()),
            "added_p50_us": round3(s.pct_us(0.5) - r.pct_us(0.5)),
            "cpu_ratio": round3(s.cpu_us_per_op() / r.cpu_us_per_op()),
            "total_cpu_ratio": server_cols
                .then(|| round3(s.total_cpu_us_per_op() / r.total_cpu_us_per_op())),
        })).collect::<Vec<_>>(),
        "checks": {
            "stack_requests_in_rounds": stack_ops_total,
            "request_events_recorded": recorded,
            "spans_exported": exported.0.load(Ordering::Relaxed),
        },
    }))
}

/// The keys of a run's output that name its configuration: series are
/// pooled only when these agree (a key an older output lacks counts as
/// `null`).
const CONFIG_KEYS: [&str; 13] = [
    "server",
    "otel",
    "otel_lean",
    "span_collector",
    "trace_ratio",
    "compare",
    "concurrency",
    "round_secs",
    "warmup_secs",
    "rounds",
    "no_limits",
    "client_threads",
    "server_threads",
];

/// One ratio over pooled series: the median of their medians, its 95%
/// interval by bootstrap over the series (`resamples` resamples with a
/// fixed seed, so the same files give the same interval), and the
/// series' spread.
fn pooled(values: &[f64], resamples: usize) -> Value {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    // xorshift64*: enough to draw indices, and the same on every machine
    let mut next = |n: usize| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    };
    let mut medians: Vec<f64> = (0..resamples)
        .map(|_| {
            let draw: Vec<f64> = (0..values.len())
                .map(|_| values[next(values.len())])
                .collect();
            median(&draw)
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    let at = |q: f64| medians[((q * resamples as f64) as usize).min(resamples - 1)];
    let mut v = stats(values);
    v["ci95"] = json!([round3(at(0.025)), round3(at(0.975))]);
    v
}

/// `--pool`: the series in `files` (each an `--json` output) pooled; an
/// error naming the file when one cannot be read or its configuration
/// differs from the first's.
fn pool(files: &[PathBuf]) -> Result<Value, String> {
    let mut config: Option<(Value, &PathBuf)> = None;
    let (mut ratio, mut cpu) = (Vec::new(), Vec::new());
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let run: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not an `overhead --json` output: {e}", f.display()))?;
        let this = Value::Object(
            CONFIG_KEYS
                .iter()
                .map(|k| (k.to_string(), run.get(*k).cloned().unwrap_or(Value::Null)))
                .collect(),
        );
        match &config {
            None => config = Some((this, f)),
            Some((first, first_file)) if *first != this => {
                return Err(format!(
                    "{} was run with {this} but {} with {first}: pool series of one configuration",
                    f.display(),
                    first_file.display()
                ));
            }
            Some(_) => {}
        }
        let median_of = |key: &str| {
            run["summary"][key]["median"]
                .as_f64()
                .ok_or_else(|| format!("{}: no summary.{key}.median", f.display()))
        };
        ratio.push(median_of("ratio")?);
        cpu.push(median_of("cpu_ratio")?);
    }
    let Some((config, _)) = config else {
        return Err("--pool needs at least one file".into());
    };
    let count = |v: &[f64], meets: fn(f64) -> bool| v.iter().filter(|x| meets(**x)).count();
    Ok(json!({
        "series": files.len(),
        "config": config,
        "throughput_ratio": pooled(&ratio, 20_000),
        "cpu_ratio": pooled(&cpu, 20_000),
        "series_meeting": {
            "throughput_ratio_ge_0_90": count(&ratio, |x| x >= 0.90),
            "cpu_ratio_le_1_25": count(&cpu, |x| x <= 1.25),
            "cpu_ratio_le_1_6": count(&cpu, |x| x <= 1.6),
        },
    }))
}

fn main() {
    let args = Args::parse();
    if !args.pool.is_empty() {
        match pool(&args.pool) {
            Ok(v) if args.json => println!("{v}"),
            Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.client_threads {
        rt.worker_threads(n);
    }
    let rt = rt.build().expect("tokio runtime");
    let json = args.json;
    match rt.block_on(run(args)) {
        Ok(v) if json => println!("{v}"),
        Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `overhead --json` output of one series with these medians.
    fn series(dir: &std::path::Path, name: &str, ratio: f64, cpu: f64, trace: f64) -> PathBuf {
        let path = dir.join(name);
        let run = json!({
            "server": "cql-testkit child process",
            "concurrency": 64,
            "trace_ratio": trace,
            "summary": {"ratio": {"median": ratio}, "cpu_ratio": {"median": cpu}},
        });
        std::fs::write(&path, run.to_string()).unwrap();
        path
    }

    #[test]
    fn pooled_series_give_the_median_of_their_medians_and_its_interval() {
        let dir = std::env::temp_dir().join(format!("overhead-pool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ratios = [0.80, 0.85, 0.88, 0.90, 0.91, 0.93, 0.97];
        let cpus = [1.30, 1.26, 1.24, 1.22, 1.20, 1.18, 1.10];
        let files: Vec<PathBuf> = (0..7)
            .map(|i| series(&dir, &format!("s{i}.json"), ratios[i], cpus[i], 0.01))
            .collect();
        let v = pool(&files).unwrap();
        assert_eq!(v["series"], 7);
        assert_eq!(v["throughput_ratio"]["median"], 0.90);
        assert_eq!(v["throughput_ratio"]["min"], 0.80);
        assert_eq!(v["cpu_ratio"]["median"], 1.22);
        let ci = |k: &str| {
            let c = v[k]["ci95"].as_array().unwrap();
            (c[0].as_f64().unwrap(), c[1].as_f64().unwrap())
        };
        let (lo, hi) = ci("throughput_ratio");
        assert!(
            (0.80..0.90).contains(&lo) && 0.90 < hi && hi <= 0.97,
            "{lo} {hi}"
        );
        assert_eq!(
            pool(&files).unwrap(),
            v,
            "the same files, the same interval"
        );
        assert_eq!(v["series_meeting"]["throughput_ratio_ge_0_90"], 4);
        assert_eq!(v["series_meeting"]["cpu_ratio_le_1_25"], 5);
        // one series of another configuration is refused, by name
        let other = series(&dir, "other.json", 0.9, 1.2, 1.0);
        let err = pool(&[files[0].clone(), other]).unwrap_err();
        assert!(
            err.contains("other.json") && err.contains("one configuration"),
            "{err}"
        );
        let missing = pool(&[dir.join("none.json")]).unwrap_err();
        assert!(missing.contains("none.json"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stat_lines_cpu_is_its_utime_and_stime() {
        // a command name with a space and a parenthesis of its own
        let line = "4242 (cql (kit) x) S 1 4242 4242 0 -1 4194560 1015 0 0 0 \
                    731 69 0 0 20 0 3 0 123 456 789";
        assert_eq!(stat_cpu_ticks(line), Some(800));
        assert_eq!(stat_cpu_ticks("4242 (short) S 1"), None);
        assert_eq!(stat_cpu_ticks("no parentheses"), None);
    }

    #[test]
    fn a_processs_cpu_read_from_proc_is_what_the_clock_says() {
        let pid = Some(std::process::id());
        let (Some(a), c0) = (server_cpu(pid), process_cpu()) else {
            eprintln!("skipped: /proc/<pid>/stat cannot be read here");
            return;
        };
        // spin a quarter of a second of CPU on this thread
        let until = c0 + Duration::from_millis(250);
        let mut x = 0u64;
        while process_cpu() < until {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let (b, c1) = (server_cpu(pid).unwrap(), process_cpu());
        let proc_ms = (b - a).as_secs_f64() * 1e3;
        let clock_ms = (c1 - c0).as_secs_f64() * 1e3;
        // (ticks are 10 ms at the usual 100 Hz, and the readings are not
        // taken at the same instant)
        assert!(
            (proc_ms - clock_ms).abs() < 60.0,
            "/proc says {proc_ms:.0} ms, the clock {clock_ms:.0} ms"
        );
    }
}
