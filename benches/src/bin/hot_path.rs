//! `hot_path`: a fixed number of requests through one case of the `layers`
//! bench (a layer or the default stack around a no-op service), for
//! instruction counts under callgrind, which repeat exactly even on a busy
//! machine:
//!
//! ```text
//! cargo build --release -p tower-cql-benches --bin hot_path
//! for n in 10000 20000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n \
//!     target/release/hot_path --case stack --iters $n
//! done
//! # instructions per request = (Ir(20000) - Ir(10000)) / 10000
//! ```
//!
//! The difference of two runs removes start-up, warm-up and the creation
//! of series; `--case noop` gives the loop's own cost to subtract.

use std::sync::Arc;

use clap::{Parser, ValueEnum};
use tower::{Service, ServiceExt, service_fn};
use tower_cql_core::{
    Collectors, CqlError, CqlRequest, CqlResponse, ExecutionInfo, Gate, InMemoryCollector,
    Statement,
};
use tower_cql_middleware::concurrency::ConcurrencyConfig;
use tower_cql_middleware::metrics::{MetricsConfig, MetricsLayer};
use tower_cql_middleware::rate_limit::{RateLimitConfig, RateLimitMode};
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_middleware::timeout::TimeoutConfig;
use tower_cql_middleware::trace::{TraceConfig, TraceLayer};
use tower_layer::Layer;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Case {
    /// The no-op service alone (the loop's own cost).
    Noop,
    /// The metrics layer into an in-memory collector.
    Metrics,
    /// The request-span layer, no subscriber.
    Trace,
    /// The default stack into an in-memory collector, no subscriber.
    Stack,
    /// The default stack with a per-attempt timeout (5 s: it never fires),
    /// so every attempt races a timer.
    Timed,
    /// The default stack with a rate limit and a concurrency limit that
    /// never bind (the `overhead` bench's stack), no subscriber.
    Limits,
    /// The metrics layer into the OpenTelemetry metrics collector
    /// (`OtelCollector`, what `OtlpExporter::collector` records through)
    /// on an SDK meter provider whose reader does not fire during the run.
    Otel,
    /// The metrics layer into the `metrics` bridge (`MetricsBridge`), with
    /// the Prometheus recorder installed as the global `metrics` recorder.
    Prometheus,
    /// Only the default stack's switched-on layers (gate, request span,
    /// metrics, retry, attempt span, timeout), composed by hand: against
    /// `stack`, what its switched-off layers cost as pass-throughs.
    OnOnly,
}

/// Requests through one layer or the stack, for callgrind.
#[derive(Debug, Parser)]
#[command(name = "hot_path", version)]
struct Args {
    /// What to run.
    #[arg(long, value_enum, default_value = "stack")]
    case: Case,
    /// Requests.
    #[arg(long, default_value_t = 10_000)]
    iters: u64,
    /// Clone the service for each request (`svc.clone().oneshot(req)`, the
    /// usual pattern in handlers), as the `overhead` bench does.
    #[arg(long)]
    clone_per_request: bool,
}

fn answer(_: CqlRequest) -> std::future::Ready<Result<CqlResponse, CqlError>> {
    std::future::ready(Ok(CqlResponse::synthetic(ExecutionInfo {
        attempts: 1,
        rows: 1,
        ..ExecutionInfo::default()
    })))
}

fn drive<S>(mut svc: S, iters: u64, clone: bool)
where
    S: Service<CqlRequest, Response = CqlResponse, Error = CqlError> + Clone,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let get = Statement::new("SELECT v FROM ks.t WHERE k = ?")
        .operation("get")
        .idempotent(true);
    if std::env::var_os("HOT_PATH_SIZES").is_some() {
        let f = svc.call(get.request());
        eprintln!(
            "the service: {} B, its future: {} B",
            std::mem::size_of_val(&svc),
            std::mem::size_of_val(&f)
        );
    }
    rt.block_on(async {
        for i in 0..iters {
            let req = get.request().bind((i as i32,));
            let resp = if clone {
                svc.clone().oneshot(req).await.unwrap()
            } else {
                svc.ready().await.unwrap().call(req).await.unwrap()
            };
            std::hint::black_box(resp);
        }
    });
}

fn main() {
    let args = Args::parse();
    if std::env::var_os("HOT_PATH_SIZES").is_some() {
        eprintln!(
            "CqlResponse {} B, CqlError {} B, CqlRequest {} B, output {} B",
            std::mem::size_of::<CqlResponse>(),
            std::mem::size_of::<CqlError>(),
            std::mem::size_of::<CqlRequest>(),
            std::mem::size_of::<Result<CqlResponse, CqlError>>()
        );
    }
    let memory = Arc::new(InMemoryCollector::new());
    let collectors = Collectors::with([memory]);
    let noop = service_fn(answer);
    match args.case {
        Case::Noop => drive(noop, args.iters, args.clone_per_request),
        Case::Metrics => drive(
            MetricsLayer::new(MetricsConfig::default(), collectors).layer(noop),
            args.iters,
            args.clone_per_request,
        ),
        Case::Trace => drive(
            TraceLayer::new(TraceConfig::default()).layer(noop),
            args.iters,
            args.clone_per_request,
        ),
        Case::Limits => drive(
            StackBuilder::new(collectors)
                .rate_limit(RateLimitConfig {
                    rate_per_second: 1e7,
                    burst: 100_000,
                    mode: RateLimitMode::Reject,
                })
                .concurrency(ConcurrencyConfig {
                    max_in_flight: 256,
                    ..ConcurrencyConfig::default()
                })
                .build(noop)
                .expect("config")
                .service(),
            args.iters,
            args.clone_per_request,
        ),
        Case::Otel => {
            use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader};
            // a reader that never fires during the run (its interval is
            // an hour): the instruments aggregate as in a real pipeline
            let reader = PeriodicReader::builder(InMemoryMetricExporter::default())
                .with_interval(std::time::Duration::from_secs(3600))
                .build();
            let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
                .with_reader(reader)
                .build();
            let otel = Arc::new(tower_cql_exporters::otel::OtelCollector::with_provider(
                &provider,
            ));
            drive(
                MetricsLayer::new(MetricsConfig::default(), Collectors::with([otel])).layer(noop),
                args.iters,
                args.clone_per_request,
            )
        }
        Case::Prometheus => {
            // the recorder's upkeep task is spawned on a runtime of its
            // own, which is never driven: no upkeep during the run
            let upkeep = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            let _recorder = {
                let _entered = upkeep.enter();
                tower_cql_exporters::prometheus::PrometheusExporter::builder()
                    .install_recorder()
                    .expect("the global metrics recorder")
            };
            let bridge = Arc::new(tower_cql_exporters::metrics_bridge::MetricsBridge::new());
            drive(
                MetricsLayer::new(MetricsConfig::default(), Collectors::with([bridge])).layer(noop),
                args.iters,
                args.clone_per_request,
            )
        }
        Case::OnOnly => {
            let l = StackBuilder::new(collectors.clone())
                .layers()
                .expect("config");
            const ON: &str = "on in the default stack";
            let s = l.timeout.expect(ON).layer(noop);
            let s = l.attempt_trace.expect(ON).layer(s);
            let s = l.retry.expect(ON).layer(s);
            let s = l.metrics.expect(ON).layer(s);
            let s = l.trace.expect(ON).layer(s);
            let gate = Gate::with_collectors(collectors);
            drive(gate.wrap(s), args.iters, args.clone_per_request)
        }
        Case::Timed => drive(
            StackBuilder::new(collectors)
                .timeout(TimeoutConfig {
                    per_attempt: Some(std::time::Duration::from_secs(5)),
                    ..TimeoutConfig::default()
                })
                .build(noop)
                .expect("config")
                .service(),
            args.iters,
            args.clone_per_request,
        ),
        Case::Stack => drive(
            StackBuilder::new(collectors)
                .build(noop)
                .expect("config")
                .service(),
            args.iters,
            args.clone_per_request,
        ),
    }
}
