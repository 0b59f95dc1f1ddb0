//! The span collector end to end: queries through the stack (tracing
//! layers off) against testkit with the real driver, spans read back from
//! the SDK's in-memory exporter.

mod support;

use std::sync::Arc;

use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _,
};
use opentelemetry::{Context, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider, SpanData};
use tower::{Service, ServiceExt};
use tower_cql_core::{Collectors, Statement};
use tower_cql_exporters::spans::{KeepPresampled, SpanCollector};
use tower_cql_middleware::stack::{SessionStack, StackBuilder};
use tower_cql_testkit::{Cluster, Fault, InjectedError, Opcode};

struct Env {
    cluster: Cluster,
    stack: SessionStack,
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
}

async fn env(sampler: Sampler) -> Env {
    env_with(sampler, None).await
}

// `ratio`: the collector samples itself (`sample_ratio`), and the
// provider's sampler is `KeepPresampled` around `sampler`
async fn env_with(sampler: Sampler, ratio: Option<f64>) -> Env {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone());
    let provider = match ratio {
        Some(_) => provider.with_sampler(KeepPresampled::new(sampler)),
        None => provider.with_sampler(sampler),
    }
    .build();
    let spans = SpanCollector::new(provider.tracer("tower-cql"));
    let spans = match ratio {
        Some(r) => spans.sample_ratio(r),
        None => spans,
    };
    let collectors = Collectors::with([Arc::new(spans)]);
    let (cluster, driver) = support::driver(&collectors).await;
    let stack = StackBuilder::new(collectors)
        .without_trace()
        .build(driver)
        .unwrap();
    let mut svc = stack.service();
    support::create_kv(&mut svc).await;
    Env {
        cluster,
        stack,
        exporter,
        provider,
    }
}

fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn str_attr(s: &SpanData, key: &str) -> Option<String> {
    attr(s, key).map(|v| v.as_str().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_span_per_request_with_the_db_conventions() {
    conventions(None).await;
}

/// The same span when the collector samples itself (its attributes given
/// to the tracer's builder, not set on the span).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_span_per_request_with_the_db_conventions_when_presampled() {
    conventions(Some(1.0)).await;
}

async fn conventions(ratio: Option<f64>) {
    let e = env_with(Sampler::AlwaysOn, ratio).await;
    let mut svc = e.stack.service();
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?")
        .operation("get")
        .keyspace("ks")
        .table("kv")
        .idempotent(true);
    for _ in 0..5 {
        svc.ready()
            .await
            .unwrap()
            .call(
                get.request()
                    .bind((424_242i32,))
                    .consistency(scylla::statement::Consistency::LocalQuorum),
            )
            .await
            .unwrap();
    }
    // a failure: every attempt of a write overloaded (the retries too)
    let _fault = e.cluster.faults().add(
        Fault::error(InjectedError::Overloaded)
            .opcode(Opcode::Execute)
            .times(100),
    );
    // idempotent, so Overloaded is retried (it may have reached replicas)
    let put = Statement::new("INSERT INTO ks.kv (k, v) VALUES (?, 'literal-717171')")
        .operation("put")
        .keyspace("ks")
        .table("kv")
        .idempotent(true);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(put.request().bind((424_242i32,)))
        .await
        .unwrap_err();
    assert_eq!(err.kind().as_str(), "overloaded");
    e.provider.force_flush().unwrap();

    let spans = e.exporter.get_finished_spans().unwrap();
    // 2 DDL + 5 gets + 1 failed put: one span each, nothing else
    assert_eq!(
        spans.len(),
        8,
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let gets: Vec<_> = spans.iter().filter(|s| s.name == "SELECT ks.kv").collect();
    assert_eq!(gets.len(), 5);
    for s in &gets {
        assert_eq!(s.span_kind, SpanKind::Client);
        assert_eq!(s.status, Status::Unset);
        assert!(s.end_time >= s.start_time);
        assert_eq!(str_attr(s, "db.system.name").as_deref(), Some("cassandra"));
        assert_eq!(str_attr(s, "db.namespace").as_deref(), Some("ks"));
        assert_eq!(str_attr(s, "db.collection.name").as_deref(), Some("kv"));
        assert_eq!(str_attr(s, "db.operation.name").as_deref(), Some("get"));
        assert_eq!(
            str_attr(s, "db.query.summary").as_deref(),
            Some("SELECT ks.kv")
        );
        assert_eq!(
            str_attr(s, "db.query.text").as_deref(),
            Some("SELECT v FROM ks.kv WHERE k = ?")
        );
        assert_eq!(str_attr(s, "server.address").as_deref(), Some("127.0.0.1"));
        assert!(matches!(attr(s, "server.port"), Some(Value::I64(p)) if *p > 0));
        assert_eq!(attr(s, "cql.attempts"), Some(&Value::I64(1)));
        assert_eq!(attr(s, "db.response.returned_rows"), Some(&Value::I64(0)));
        assert_eq!(
            attr(s, "db.cassandra.idempotence"),
            Some(&Value::Bool(true))
        );
        assert_eq!(attr(s, "error.type"), None);
        assert_eq!(
            str_attr(s, "db.cassandra.consistency_level").as_deref(),
            Some("local_quorum")
        );
    }
    let failed: Vec<_> = spans.iter().filter(|s| s.name == "INSERT ks.kv").collect();
    assert_eq!(failed.len(), 1);
    let f = failed[0];
    assert!(matches!(&f.status, Status::Error { .. }), "{:?}", f.status);
    assert_eq!(str_attr(f, "error.type").as_deref(), Some("overloaded"));
    // The Cassandra conventions: "Cassandra protocol error code represented
    // as a string", their examples `102`, `40020`: the number in decimal
    // (Overloaded is 0x1001), not the protocol spec's hex notation.
    assert_eq!(
        str_attr(f, "db.response.status_code").as_deref(),
        Some("4097")
    );
    assert_eq!(
        attr(f, "cql.attempts"),
        Some(&Value::I64(i64::from(err.attempts())))
    );
    assert!(err.attempts() > 1, "retried first");
    assert_eq!(
        str_attr(f, "db.query.text").as_deref(),
        Some("INSERT INTO ks.kv (k, v) VALUES (?, ?)"),
        "literals are replaced"
    );
    // bound values and literals reach no attribute
    for s in &spans {
        for kv in &s.attributes {
            let v = kv.value.as_str();
            assert!(!v.contains("424242") && !v.contains("717171"), "{kv:?}");
        }
    }
    e.stack.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_not_sampled_make_no_span() {
    let e = env(Sampler::AlwaysOff).await;
    let mut svc = e.stack.service();
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?").idempotent(true);
    for k in 0..20i32 {
        svc.ready()
            .await
            .unwrap()
            .call(get.request().bind((k,)))
            .await
            .unwrap();
    }
    e.provider.force_flush().unwrap();
    assert_eq!(e.exporter.get_finished_spans().unwrap().len(), 0);

    // a ratio sampler keeps about that share (200 requests at 0.5: 100 ± 7)
    let e = env(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        0.5,
    ))))
    .await;
    let mut svc = e.stack.service();
    for k in 0..200i32 {
        svc.ready()
            .await
            .unwrap()
            .call(get.request().bind((k,)))
            .await
            .unwrap();
    }
    e.provider.force_flush().unwrap();
    let kept = e
        .exporter
        .get_finished_spans()
        .unwrap()
        .iter()
        .filter(|s| s.name.starts_with("SELECT"))
        .count();
    assert!((50..=150).contains(&kept), "kept {kept} of 200");
}

#[tokio::test(flavor = "current_thread")]
async fn the_current_context_is_the_parent() {
    let e = env(Sampler::ParentBased(Box::new(Sampler::AlwaysOff))).await;
    let mut svc = e.stack.service();
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?").idempotent(true);
    // Without a parent, the parent-based sampler's root decision (off) holds.
    svc.ready()
        .await
        .unwrap()
        .call(get.request().bind((1i32,)))
        .await
        .unwrap();
    // Under a sampled parent (a span of the caller's, made sampled by hand
    // through a second, always-on tracer), the request's span is kept and
    // is its child.
    let always = SdkTracerProvider::builder()
        .with_simple_exporter(e.exporter.clone())
        .build();
    let handler = always.tracer("app").start("handler");
    let handler_cx = handler.span_context().clone();
    let cx = Context::current_with_span(handler);
    {
        let _attached = cx.clone().attach();
        svc.ready()
            .await
            .unwrap()
            .call(get.request().bind((2i32,)))
            .await
            .unwrap();
    }
    cx.span().end();
    e.provider.force_flush().unwrap();
    always.force_flush().unwrap();
    let spans = e.exporter.get_finished_spans().unwrap();
    let cql: Vec<_> = spans.iter().filter(|s| s.name != "handler").collect();
    assert_eq!(cql.len(), 1, "only the request under the sampled parent");
    assert_eq!(cql[0].parent_span_id, handler_cx.span_id());
    assert_eq!(cql[0].span_context.trace_id(), handler_cx.trace_id());
}

async fn run_gets(e: &Env, n: i32) -> usize {
    let mut svc = e.stack.service();
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?").idempotent(true);
    for k in 0..n {
        svc.ready()
            .await
            .unwrap()
            .call(get.request().bind((k,)))
            .await
            .unwrap();
    }
    e.provider.force_flush().unwrap();
    let kept = e
        .exporter
        .get_finished_spans()
        .unwrap()
        .iter()
        .filter(|s| s.name.starts_with("SELECT"))
        .count();
    e.exporter.reset();
    kept
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_with_a_ratio_samples_before_the_tracer_and_the_provider_keeps_it() {
    // The collector decides: at 0 nothing reaches an always-on provider.
    let e = env_with(Sampler::AlwaysOn, Some(0.0)).await;
    assert_eq!(run_gets(&e, 20).await, 0);
    e.stack.close().await;
    // At 1 every request is kept, though the provider's own sampler keeps
    // nothing: KeepPresampled keeps what the collector sampled.
    let e = env_with(Sampler::AlwaysOff, Some(1.0)).await;
    assert_eq!(run_gets(&e, 20).await, 20);
    e.stack.close().await;
    // At 0.5 about half, once: the provider's ratio sampler (also 0.5) is
    // not applied again on top (400 requests: 200 ± 10 standard
    // deviations of 10; sampled twice it would be about 100).
    let e = env_with(
        Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.5))),
        Some(0.5),
    )
    .await;
    let kept = run_gets(&e, 400).await;
    assert!((150..=250).contains(&kept), "kept {kept} of 400");
    e.stack.close().await;
    // NaN counts as 0, above 1 as 1.
    let e = env_with(Sampler::AlwaysOn, Some(f64::NAN)).await;
    assert_eq!(run_gets(&e, 10).await, 0);
    e.stack.close().await;
    let e = env_with(Sampler::AlwaysOff, Some(7.0)).await;
    assert_eq!(run_gets(&e, 10).await, 10);
    e.stack.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_collector_with_a_ratio_follows_the_parent_spans_decision() {
    // ratio 0: only a sampled parent makes the request's span
    let e = env_with(Sampler::AlwaysOff, Some(0.0)).await;
    let mut svc = e.stack.service();
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?").idempotent(true);
    let always = SdkTracerProvider::builder()
        .with_simple_exporter(e.exporter.clone())
        .build();
    let never = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOff)
        .build();
    let sampled = always.tracer("app").start("handler");
    let sampled_cx = sampled.span_context().clone();
    let unsampled = never.tracer("app").start("handler");
    assert!(unsampled.span_context().is_valid() && !unsampled.span_context().is_sampled());
    for (cx, k) in [
        (Context::current_with_span(sampled), 1i32),
        (Context::current_with_span(unsampled), 2),
    ] {
        {
            let _attached = cx.clone().attach();
            svc.ready()
                .await
                .unwrap()
                .call(get.request().bind((k,)))
                .await
                .unwrap();
        }
        cx.span().end();
    }
    always.force_flush().unwrap();
    e.provider.force_flush().unwrap();
    let spans = e.exporter.get_finished_spans().unwrap();
    let cql: Vec<_> = spans.iter().filter(|s| s.name != "handler").collect();
    assert_eq!(
        cql.len(),
        1,
        "only the request under the sampled parent: {cql:?}"
    );
    assert_eq!(cql[0].parent_span_id, sampled_cx.span_id());
    assert_eq!(cql[0].span_context.trace_id(), sampled_cx.trace_id());
    e.stack.close().await;

    // ratio 1: a parent that is not sampled still makes none
    let e = env_with(Sampler::AlwaysOn, Some(1.0)).await;
    let mut svc = e.stack.service();
    let unsampled = never.tracer("app").start("handler");
    let cx = Context::current_with_span(unsampled);
    {
        let _attached = cx.clone().attach();
        svc.ready()
            .await
            .unwrap()
            .call(get.request().bind((3i32,)))
            .await
            .unwrap();
    }
    e.provider.force_flush().unwrap();
    let spans = e.exporter.get_finished_spans().unwrap();
    assert!(
        spans.iter().all(|s| !s.name.starts_with("SELECT")),
        "a request under an unsampled parent: {spans:?}"
    );
    e.stack.close().await;
}

/// A collector that reaches the span collector late, as one behind a
/// busy [`Background`](tower_cql_core::Background) queue does.
struct Late<C>(C, std::time::Duration);

impl<C: tower_cql_core::Collector> tower_cql_core::Collector for Late<C> {
    fn on_request(&self, e: &tower_cql_core::event::RequestEvent<'_>) {
        std::thread::sleep(self.1);
        self.0.on_request(e);
    }
}

/// A client span is stamped with when its request ran, not when its event
/// reached the collector: behind a queue that delivers it 300 ms late, the
/// span still ends by the time the caller had its answer (it used to end
/// at the delivery, and start the request's duration before it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_delivered_late_keeps_its_requests_time() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let spans = SpanCollector::new(provider.tracer("tower-cql"));
    let late = Late(spans, std::time::Duration::from_millis(300));
    let collectors = Collectors::with([Arc::new(tower_cql_core::Background::new(
        Arc::new(late),
        64,
    ))]);
    let (_cluster, driver) = support::driver(&Collectors::new()).await;
    let stack = StackBuilder::new(collectors.clone())
        .without_trace()
        .build(driver)
        .unwrap();
    let mut svc = stack.service();
    let before = std::time::SystemTime::now();
    svc.ready()
        .await
        .unwrap()
        .call(Statement::new("SELECT now() FROM system.local").request())
        .await
        .unwrap();
    let after = std::time::SystemTime::now();
    collectors.flush();
    let got = exporter.get_finished_spans().unwrap();
    let span = got
        .iter()
        .find(|s| s.span_kind == SpanKind::Client)
        .unwrap_or_else(|| panic!("no client span in {got:?}"));
    // (a generous slack for a loaded machine, far below the 300 ms)
    let slack = std::time::Duration::from_millis(100);
    assert!(
        span.end_time <= after + slack,
        "ended {:?} after the answer",
        span.end_time.duration_since(after).unwrap_or_default()
    );
    assert!(
        span.start_time + slack >= before,
        "started {:?} before the call",
        before.duration_since(span.start_time).unwrap_or_default()
    );
}

/// A request the stack refuses before any attempt (here the rate limit,
/// in reject mode with its one token taken) never reached a node: its
/// span says `cql.attempts = 0`, as its request event and the tracing
/// layer's span do, not 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_before_any_attempt_has_no_attempt() {
    use tower_cql_core::ErrorKind;
    use tower_cql_middleware::rate_limit::{RateLimitConfig, RateLimitMode};
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let collectors = Collectors::with([Arc::new(SpanCollector::new(provider.tracer("t")))]);
    let (_cluster, driver) = support::driver(&collectors).await;
    let stack = StackBuilder::new(collectors)
        .without_trace()
        .rate_limit(RateLimitConfig {
            rate_per_second: 0.001,
            burst: 1,
            mode: RateLimitMode::Reject,
        })
        .build(driver)
        .unwrap();
    let mut svc = stack.service();
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?").idempotent(true);
    // the one token: whatever it ends in, it was tried
    let _ = svc
        .ready()
        .await
        .unwrap()
        .call(get.request().bind((1,)))
        .await;
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(get.request().bind((2,)))
        .await
        .expect_err("no token left");
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(err.attempts(), 0, "refused before any attempt");
    let spans = exporter.get_finished_spans().unwrap();
    let refused: Vec<_> = spans
        .iter()
        .filter(|s| str_attr(s, "error.type").as_deref() == Some("rate_limited"))
        .collect();
    assert_eq!(refused.len(), 1, "{spans:?}");
    assert_eq!(
        attr(refused[0], "cql.attempts"),
        Some(&Value::I64(0)),
        "the span of a request refused before any attempt"
    );
}
