//! The cost of each layer and of the full stack, around an in-process no-op
//! inner service (no network), in ns per request; and the cost of
//! collector dispatch (an arc-swap load plus an in-memory histogram record).
//!
//! `cargo bench -p tower-cql-benches --bench layers`
//!
//! Results and the machine they were measured on are in BENCHMARKS.md.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Service, ServiceExt, service_fn};
use tower_cql_core::event::{Event, RequestEvent};
use tower_cql_core::{
    Collectors, CqlError, CqlRequest, CqlResponse, ExecutionInfo, InMemoryCollector, Statement,
};
use tower_cql_middleware::metrics::{MetricsConfig, MetricsLayer};
use tower_cql_middleware::rate_limit::{RateLimitConfig, RateLimitLayer, RateLimitMode};
use tower_cql_middleware::retry::{RetryConfig, RetryLayer};
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_middleware::timeout::{TimeoutConfig, TimeoutLayer};
use tower_cql_middleware::trace::{TraceConfig, TraceLayer};
use tower_layer::Layer;

type Noop =
    tower::util::ServiceFn<fn(CqlRequest) -> std::future::Ready<Result<CqlResponse, CqlError>>>;

fn noop() -> Noop {
    fn answer(_: CqlRequest) -> std::future::Ready<Result<CqlResponse, CqlError>> {
        std::future::ready(Ok(CqlResponse::synthetic(ExecutionInfo {
            attempts: 1,
            rows: 1,
            ..ExecutionInfo::default()
        })))
    }
    service_fn(answer as fn(CqlRequest) -> _)
}

fn memory() -> (Collectors, Arc<InMemoryCollector>) {
    let m = Arc::new(InMemoryCollector::new());
    (Collectors::with([m.clone()]), m)
}

fn bench_layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let get = Statement::new("SELECT v FROM ks.t WHERE k = ?")
        .operation("get")
        .idempotent(true);
    let mut g = c.benchmark_group("layer");

    macro_rules! run {
        ($name:literal, $svc:expr) => {{
            let mut svc = $svc;
            g.bench_function($name, |b| {
                b.iter(|| {
                    rt.block_on(async {
                        let req = get.request().bind((1i32,));
                        svc.ready().await.unwrap().call(req).await.unwrap()
                    })
                })
            });
        }};
    }

    run!("noop (baseline)", noop());
    let (c1, _) = memory();
    run!(
        "metrics",
        MetricsLayer::new(MetricsConfig::default(), c1).layer(noop())
    );
    run!(
        "trace (no subscriber)",
        TraceLayer::new(TraceConfig::default()).layer(noop())
    );
    run!(
        "retry",
        RetryLayer::new(RetryConfig::default(), Collectors::new()).layer(noop())
    );
    run!(
        "timeout (per attempt)",
        TimeoutLayer::new(TimeoutConfig {
            per_attempt: Some(Duration::from_secs(1)),
            honour_deadline: true
        })
        .layer(noop())
    );
    run!(
        "rate limit (never waits)",
        RateLimitLayer::new(
            RateLimitConfig {
                rate_per_second: 1e9,
                burst: 1_000_000,
                mode: RateLimitMode::Reject
            },
            Collectors::new()
        )
        .layer(noop())
    );
    let (c2, _) = memory();
    let stack = StackBuilder::new(c2).build(noop()).unwrap();
    run!(
        "default stack (gate, trace, metrics, retry, attempt trace, timeout)",
        stack.service()
    );
    g.finish();
}

fn bench_dispatch(c: &mut Criterion) {
    let req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").operation("get");
    let (collectors, _m) = memory();
    let mut g = c.benchmark_group("collectors");
    g.bench_function("emit to the in-memory collector", |b| {
        b.iter(|| {
            collectors.emit(Event::Request({
                let mut e = RequestEvent::new(req.meta(), Duration::from_micros(350), None);
                e.rows = 1;
                e
            }))
        })
    });
    let empty = Collectors::new();
    g.bench_function("emit with no collector", |b| {
        b.iter(|| {
            empty.emit(Event::Request({
                let mut e = RequestEvent::new(req.meta(), Duration::from_micros(350), None);
                e.rows = 1;
                e
            }))
        })
    });
    g.finish();
}

criterion_group!(benches, bench_layers, bench_dispatch);
criterion_main!(benches);
