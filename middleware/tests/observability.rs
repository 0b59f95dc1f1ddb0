//! The metrics and tracing layers end to end: the real driver against
//! testkit, spans checked with a capturing subscriber (not by scraping
//! text), metrics through the in-memory collector.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use scylla::client::session_builder::SessionBuilder;
use tower::{Service, ServiceExt};
use tower_cql_core::{
    Collectors, CqlError, CqlRequest, CqlResponse, DriverService, ErrorKind, InMemoryCollector,
    Statement,
};
use tower_cql_middleware::metrics::{MetricsConfig, MetricsLayer};
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_middleware::trace::{AttemptTraceLayer, TraceConfig, TraceLayer};
use tower_cql_testkit::{Cluster, Fault, InjectedError, Opcode};
use tower_layer::Layer as _;
use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone, Default)]
struct SpanRecord {
    id: u64,
    name: &'static str,
    parent: Option<u64>,
    fields: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<SpanRecord>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut rec = SpanRecord {
            id: id.into_u64(),
            name: attrs.metadata().name(),
            parent: ctx
                .span(id)
                .and_then(|s| s.parent())
                .map(|p| p.id().into_u64()),
            fields: BTreeMap::new(),
        };
        attrs.record(&mut Fields(&mut rec.fields));
        self.0.lock().unwrap().push(rec);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some(rec) = spans.iter_mut().find(|r| r.id == id.into_u64()) {
            values.record(&mut Fields(&mut rec.fields));
        }
    }
}

impl Capture {
    fn spans(&self) -> Vec<SpanRecord> {
        self.0.lock().unwrap().clone()
    }
}

struct Env {
    cluster: Cluster,
    driver: DriverService,
    collectors: Collectors,
    memory: Arc<InMemoryCollector>,
}

async fn env() -> Env {
    let cluster = Cluster::start().await.unwrap();
    let session = SessionBuilder::new()
        .known_nodes_addr(cluster.contact_points())
        .build()
        .await
        .unwrap();
    let memory = Arc::new(InMemoryCollector::new());
    let collectors = Collectors::with([memory.clone()]);
    let driver = DriverService::builder(Arc::new(session))
        .collectors(collectors.clone())
        .build()
        .unwrap();
    for cql in [
        "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE ks.kv (k int PRIMARY KEY, v text)",
        "INSERT INTO ks.kv (k, v) VALUES (42, 'the answer')",
    ] {
        driver.execute(CqlRequest::unprepared(cql)).await.unwrap();
    }
    Env {
        cluster,
        driver,
        collectors,
        memory,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn request_and_attempt_spans_follow_the_db_conventions() {
    tower_cql_testkit::tracing_setup::global_registry();
    let e = env().await;
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let mut svc = TraceLayer::new(TraceConfig::default())
        .layer(AttemptTraceLayer::new().layer(e.driver.clone()));

    let secret = "s3cr3t-bound-value";
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = 42 AND v = ? ALLOW FILTERING")
        .operation("get_answer");
    svc.ready()
        .await
        .unwrap()
        .call(get.request().bind((secret,)))
        .await
        .unwrap();

    let spans = capture.spans();
    let req = spans
        .iter()
        .find(|s| s.name == "cql.request")
        .expect("a request span");
    let f = &req.fields;
    assert_eq!(f["otel.name"], "SELECT ks.kv");
    assert_eq!(f["otel.kind"], "client");
    assert_eq!(f["db.system.name"], "cassandra");
    assert_eq!(f["db.namespace"], "ks");
    assert_eq!(f["db.collection.name"], "kv");
    assert_eq!(f["db.operation.name"], "get_answer");
    assert_eq!(f["db.query.summary"], "SELECT ks.kv");
    assert_eq!(
        f["db.query.text"],
        "SELECT v FROM ks.kv WHERE k = ? AND v = ? ALLOW FILTERING"
    );
    assert_eq!(f["server.address"], "127.0.0.1");
    assert_eq!(f["server.port"], e.cluster.node_addr(0).port().to_string());
    assert_eq!(f["db.response.returned_rows"], "0");
    assert_eq!(f["cql.attempts"], "1");
    assert!(!f.contains_key("error.type"));
    let attempt = spans
        .iter()
        .find(|s| s.name == "cql.attempt")
        .expect("an attempt span");
    assert_eq!(
        attempt.parent,
        Some(req.id),
        "the attempt span is a child of the request span"
    );
    assert_eq!(attempt.fields["cql.attempt.reason"], "initial");
    assert_eq!(attempt.fields["cql.attempt.index"], "0");
    // no bound value and no literal anywhere
    for s in &spans {
        for (k, v) in &s.fields {
            assert!(!v.contains(secret), "{k} = {v}");
            if k.starts_with("db.") {
                // (not server.port: the OS-chosen port may contain "42")
                assert!(!v.contains("42"), "{k} = {v}");
            }
        }
    }

    // A failure: error.type, the CQL status code, the node.
    e.cluster.faults().add(
        Fault::error(InjectedError::Overloaded)
            .opcode(Opcode::Execute)
            .times(1),
    );
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(
            CqlRequest::query("SELECT v FROM ks.kv WHERE k = ?")
                .bind((1i32,))
                .consistency(scylla::statement::Consistency::Quorum)
                .page_size(50),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Overloaded);
    let spans = capture.spans();
    let failed = spans
        .iter()
        .rev()
        .find(|s| s.name == "cql.request")
        .unwrap();
    assert_eq!(failed.fields["error.type"], "overloaded");
    assert_eq!(failed.fields["otel.status_code"], "error");
    // in decimal, as the Cassandra conventions write it (Overloaded, 0x1001)
    assert_eq!(failed.fields["db.response.status_code"], "4097");
    assert_eq!(failed.fields["server.address"], "127.0.0.1");
    assert_eq!(failed.fields["db.cassandra.consistency_level"], "quorum");
    assert_eq!(failed.fields["db.cassandra.page_size"], "50");
    assert_eq!(failed.fields["db.cassandra.idempotence"], "false");
    assert_eq!(failed.fields["db.operation.name"], "SELECT");
    let failed_attempt = spans
        .iter()
        .rev()
        .find(|s| s.name == "cql.attempt")
        .unwrap();
    assert_eq!(failed_attempt.fields["error.type"], "overloaded");
    drop(e.collectors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_event_per_logical_request_beside_attempt_events() {
    tower_cql_testkit::tracing_setup::global_registry();
    let e = env().await;
    let layer = MetricsLayer::new(MetricsConfig::default(), e.collectors.clone());
    let mut svc = layer.layer(e.driver.clone());
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?")
        .operation("get")
        .idempotent(true);
    for k in 30..50i32 {
        svc.ready()
            .await
            .unwrap()
            .call(get.request().bind((k,)))
            .await
            .unwrap();
    }
    e.cluster.faults().add(
        Fault::error(InjectedError::ReadTimeout)
            .opcode(Opcode::Execute)
            .times(3),
    );
    for k in 0..3i32 {
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(get.request().bind((k,)))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ReadTimeout);
    }
    let snap = e.memory.snapshot();
    assert_eq!(snap.request_latency(Some("get")).count(), 23);
    assert_eq!(snap.ok, 20);
    assert_eq!(snap.errors.get(&ErrorKind::ReadTimeout), Some(&3));
    assert_eq!(
        snap.attempt_latency(Some("get")).count(),
        23,
        "one attempt each without a retry layer"
    );
    assert_eq!(snap.rows, 1, "only k = 42 exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cardinality_guard_folds_label_sets_past_the_limit() {
    tower_cql_testkit::tracing_setup::global_registry();
    let e = env().await;
    let layer = MetricsLayer::new(MetricsConfig { max_label_sets: 3 }, e.collectors.clone());
    let mut svc = layer.layer(e.driver.clone());
    for i in 0..10 {
        let req = CqlRequest::query("SELECT v FROM ks.kv WHERE k = ?")
            .bind((i,))
            .operation(format!("generated_{i}"));
        svc.ready().await.unwrap().call(req).await.unwrap();
    }
    assert_eq!(layer.folded(), 7);
    let snap = e.memory.snapshot();
    let ops: std::collections::BTreeSet<String> = snap
        .requests
        .iter()
        .filter_map(|s| s.labels.operation.as_ref().map(|l| l.to_string()))
        .collect();
    assert_eq!(ops.len(), 4, "{ops:?}");
    assert!(ops.contains("other"));
    assert_eq!(snap.request_latency(Some("other")).count(), 7);
    assert_eq!(
        snap.attempt_latency(Some("other")).count(),
        7,
        "attempts are folded too"
    );
    // refused when the stack is built
    let err = StackBuilder::new(e.collectors.clone())
        .metrics(MetricsConfig { max_label_sets: 0 })
        .build(e.driver.clone())
        .unwrap_err();
    assert!(err.to_string().contains("metrics.max_label_sets"), "{err}");
}

/// A paged read through the stack: one `cql.stream` span, and under it
/// one `cql.page` span per page (with its index), each the request span of
/// that page's trip through the stack.
#[tokio::test(flavor = "current_thread")]
async fn a_paged_read_is_a_stream_span_with_a_page_span_per_page() {
    use futures::TryStreamExt;
    tower_cql_testkit::tracing_setup::global_registry();
    let e = env().await;
    e.driver
        .execute(CqlRequest::unprepared(
            "CREATE TABLE ks.wide (k int, c int, PRIMARY KEY (k, c))",
        ))
        .await
        .unwrap();
    for c in 0..25 {
        e.driver
            .execute(CqlRequest::query("INSERT INTO ks.wide (k, c) VALUES (1, ?)").bind((c,)))
            .await
            .unwrap();
    }
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let stack = tower_cql_middleware::stack::StackBuilder::new(e.collectors.clone())
        .build(e.driver.clone())
        .unwrap();
    let rows: Vec<(i32,)> = stack
        .stream::<(i32,)>(
            CqlRequest::query("SELECT c FROM ks.wide WHERE k = 1")
                .idempotent(true)
                .page_size(10),
        )
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(rows.len(), 25);
    let spans = capture.spans();
    let streams: Vec<_> = spans.iter().filter(|s| s.name == "cql.stream").collect();
    assert_eq!(streams.len(), 1, "{spans:?}");
    let pages: Vec<_> = spans.iter().filter(|s| s.name == "cql.page").collect();
    assert_eq!(pages.len(), 3, "25 rows in pages of 10: {spans:?}");
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(p.parent, Some(streams[0].id), "{p:?}");
        assert_eq!(
            p.fields.get("cql.page.index").map(String::as_str),
            Some(i.to_string().as_str())
        );
    }
    assert!(
        !spans.iter().any(|s| s.name == "cql.request"),
        "pages are not plain request spans: {spans:?}"
    );
    stack.close().await;
}

/// The guard remembers in a statement that it admitted the statement's
/// own labels (its later requests skip the lookup): only for that guard,
/// only for those labels, and not once the statement's labels change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cardinality_guard_remembers_admitted_statements_per_guard_and_labels() {
    tower_cql_testkit::tracing_setup::global_registry();
    let e = env().await;
    let get = |op: &str| {
        Statement::new("SELECT v FROM ks.kv WHERE k = ?")
            .operation(op.to_string())
            .idempotent(true)
    };
    let a = MetricsLayer::new(MetricsConfig { max_label_sets: 1 }, e.collectors.clone());
    let b = MetricsLayer::new(MetricsConfig { max_label_sets: 1 }, e.collectors.clone());
    let mut via_a = a.layer(e.driver.clone());
    let mut via_b = b.layer(e.driver.clone());
    // `rounds` times, each statement in turn through `svc`
    async fn send<S>(svc: &mut S, rounds: usize, statements: &[&Statement])
    where
        S: Service<CqlRequest, Response = CqlResponse, Error = CqlError>,
    {
        for _ in 0..rounds {
            for s in statements {
                svc.ready()
                    .await
                    .unwrap()
                    .call(s.request().bind((1,)))
                    .await
                    .unwrap();
            }
        }
    }
    let (x, y) = (get("x"), get("y"));
    // a admits x (and remembers it in x), and folds y every time
    send(&mut via_a, 3, &[&x, &y]).await;
    assert_eq!(a.folded(), 3);
    // b admits y first; x, admitted by a, is folded by b every time
    send(&mut via_b, 3, &[&y, &x]).await;
    assert_eq!(b.folded(), 3, "x is remembered as admitted by a, not by b");
    // x renamed: new labels, which a has not admitted
    let z = x.operation("z");
    send(&mut via_a, 2, &[&z]).await;
    assert_eq!(
        a.folded(),
        5,
        "a statement's new labels go through the guard again"
    );
    let snap = e.memory.snapshot();
    assert_eq!(snap.request_latency(Some("x")).count(), 3, "x through a");
    assert_eq!(snap.request_latency(Some("y")).count(), 3, "y through b");
    assert_eq!(snap.request_latency(Some("z")).count(), 0);
    assert_eq!(snap.request_latency(Some("other")).count(), 8);
}

/// Counts request and attempt events.
#[derive(Default)]
struct CountEvents {
    requests: std::sync::atomic::AtomicU64,
    attempts: std::sync::atomic::AtomicU64,
}

impl tower_cql_core::Collector for CountEvents {
    fn on_request(&self, _: &tower_cql_core::event::RequestEvent<'_>) {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn on_attempt(&self, _: &tower_cql_core::event::AttemptEvent<'_>) {
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A collector added while a request is in flight sees the request as
/// it ends: its attempt event and its request event, whatever the
/// composition, with and without retries. (Before, the metrics layer
/// decided at the call whether the request would have an event, from
/// the set of that moment: a set empty then gave the new collector the
/// attempt without its request, in the full composition and in the lean
/// one without retries.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_added_mid_request_gets_its_request_event() {
    tower_cql_testkit::tracing_setup::global_registry();
    let e = env().await;
    e.cluster.faults().add(
        Fault::delay(std::time::Duration::from_millis(200))
            .opcode(Opcode::Execute)
            .matching("SELECT v FROM ks.kv"),
    );
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?").idempotent(true);
    for (name, full, retry) in [
        ("lean", false, true),
        ("lean, no retry", false, false),
        ("full", true, true),
        ("full, no retry", true, false),
    ] {
        let collectors = Collectors::new();
        let driver = DriverService::builder(e.driver.session().clone())
            .build()
            .unwrap();
        let mut b = StackBuilder::new(collectors.clone());
        if full {
            b = b.concurrency(tower_cql_middleware::concurrency::ConcurrencyConfig {
                max_in_flight: 100,
                max_queue: 100,
                queue_timeout: None,
            });
        }
        if !retry {
            b = b.without_retry();
        }
        let stack = b.build(driver).unwrap();
        let call = {
            let svc = stack.service();
            let req = get.request().bind((42i32,));
            tokio::spawn(async move { svc.oneshot(req).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let count = Arc::new(CountEvents::default());
        collectors.add(count.clone());
        call.await.unwrap().unwrap();
        stack.close().await;
        let seen = (
            count.requests.load(std::sync::atomic::Ordering::SeqCst),
            count.attempts.load(std::sync::atomic::Ordering::SeqCst),
        );
        assert_eq!(seen, (1, 1), "{name}: (request events, attempt events)");
    }
}

/// Sums the attempts the request events report, and counts the attempt
/// events, by the request's outcome.
#[derive(Default)]
struct AttemptTally(Mutex<BTreeMap<String, (u64, u64)>>);

impl tower_cql_core::Collector for AttemptTally {
    fn on_request(&self, e: &tower_cql_core::event::RequestEvent<'_>) {
        let key = e.error.map_or("ok".to_string(), |e| e.kind().to_string());
        self.0.lock().unwrap().entry(key).or_default().0 += u64::from(e.attempts);
    }
    fn on_attempt(&self, e: &tower_cql_core::event::AttemptEvent<'_>) {
        let key = e.error.map_or("ok".to_string(), |e| e.kind().to_string());
        self.0.lock().unwrap().entry(key).or_default().1 += 1;
    }
}

/// A request refused before any attempt (rate limited, bad settings)
/// reports no attempt: the attempts the request events report are the
/// attempt events there were, whatever the outcome. (A refusal reported
/// one attempt, which no attempt event matched.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_before_any_attempt_reports_none() {
    let e = env().await;
    let tally = Arc::new(AttemptTally::default());
    e.collectors.add(tally.clone());
    let stack = StackBuilder::new(e.collectors.clone())
        .rate_limit(tower_cql_middleware::rate_limit::RateLimitConfig {
            rate_per_second: 0.01,
            burst: 1,
            mode: tower_cql_middleware::rate_limit::RateLimitMode::Reject,
        })
        .build(e.driver.clone())
        .unwrap();
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?").idempotent(true);
    stack.call(get.request().bind((42,))).await.unwrap();
    let err = stack.call(get.request().bind((42,))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited, "{err}");
    assert_eq!(err.attempts(), 0, "{err}");
    // settings the driver refuses before sending (no token needed: a
    // stack of its own)
    let stack = StackBuilder::new(e.collectors.clone())
        .build(e.driver.clone())
        .unwrap();
    let err = stack
        .call(get.request().bind((42,)).page_size(0))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadRequest, "{err}");
    let tally = tally.0.lock().unwrap().clone();
    for (outcome, (reported, events)) in &tally {
        assert_eq!(
            reported, events,
            "{outcome}: attempts reported, attempt events: {tally:?}"
        );
    }
    assert_eq!(tally.len(), 3, "{tally:?}");
}

/// A request whose deadline passes while it waits for a token (or a
/// slot) was never sent: it reports no attempt, as many as its attempt
/// events (none). It reported one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_deadline_passes_while_it_waits_reports_no_attempt() {
    let e = env().await;
    let tally = Arc::new(AttemptTally::default());
    e.collectors.add(tally.clone());
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?").idempotent(true);
    let stack = StackBuilder::new(e.collectors.clone())
        .rate_limit(tower_cql_middleware::rate_limit::RateLimitConfig {
            rate_per_second: 0.01,
            burst: 1,
            mode: tower_cql_middleware::rate_limit::RateLimitMode::Wait {
                max_wait: std::time::Duration::from_secs(3600),
            },
        })
        .build(e.driver.clone())
        .unwrap();
    stack.call(get.request().bind((42,))).await.unwrap();
    // the next token is 100 s away: the 50 ms deadline passes first
    let err = stack
        .call(
            get.request()
                .bind((42,))
                .timeout(std::time::Duration::from_millis(50)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    assert!(err.was_not_sent(), "{err}");
    assert_eq!(err.attempts(), 0, "{err}");
    let tally = tally.0.lock().unwrap().clone();
    for (outcome, (reported, events)) in &tally {
        assert_eq!(
            reported, events,
            "{outcome}: attempts reported, attempt events: {tally:?}"
        );
    }
}

/// A request the caller stops waiting for ends its spans as cancelled,
/// as its request and attempt events say (`error.type = cancelled`), not
/// as spans with no status, which a trace view shows as successes.
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_request_ends_its_spans_cancelled() {
    tower_cql_testkit::tracing_setup::global_registry();
    let e = env().await;
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let svc = TraceLayer::new(TraceConfig::default())
        .layer(AttemptTraceLayer::new().layer(e.driver.clone()));
    const GET: &str = "SELECT v FROM ks.kv WHERE k = ?";
    e.cluster.faults().add(
        Fault::delay(std::time::Duration::from_secs(5))
            .matching(GET)
            .opcode(tower_cql_testkit::Opcode::Execute),
    );
    // prepared first (not delayed), then executed on a node
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(50),
        svc.oneshot(CqlRequest::query(GET).bind((42,))),
    )
    .await
    .is_err();
    assert!(gave_up);
    let spans = capture.spans();
    for name in ["cql.request", "cql.attempt"] {
        let span = spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("a {name} span: {spans:?}"));
        assert_eq!(
            span.fields.get("error.type").map(String::as_str),
            Some("cancelled"),
            "{name}: {:?}",
            span.fields
        );
        assert_eq!(
            span.fields.get("otel.status_code").map(String::as_str),
            Some("error"),
            "{name}: {:?}",
            span.fields
        );
    }
    // the node the attempt in flight had gone to, as for a failure (the
    // request's span leaves it to its attempts' spans)
    let attempt = &spans
        .iter()
        .find(|s| s.name == "cql.attempt")
        .unwrap()
        .fields;
    let node = e.cluster.contact_points()[0];
    assert_eq!(
        attempt.get("server.address"),
        Some(&node.ip().to_string()),
        "{attempt:?}"
    );
    assert_eq!(
        attempt.get("server.port"),
        Some(&node.port().to_string()),
        "{attempt:?}"
    );
}

/// The attempt that lost a hedge race ends its span cancelled, as its
/// attempt event says; the winner's span is a success.
#[tokio::test(flavor = "current_thread")]
async fn the_attempt_that_lost_a_hedge_race_ends_its_span_cancelled() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;
    use tower_cql_middleware::hedge::{HedgeConfig, HedgeDelay, HedgeLayer};
    tower_cql_testkit::tracing_setup::global_registry();
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    // the first attempt hangs, the speculative one answers
    let calls = Arc::new(AtomicU32::new(0));
    let inner = tower::service_fn(move |_req: CqlRequest| {
        let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                std::future::pending::<()>().await;
            }
            Ok::<_, CqlError>(CqlResponse::synthetic(Default::default()))
        }
    });
    let svc = HedgeLayer::new(
        HedgeConfig {
            delay: HedgeDelay::Fixed(Duration::from_millis(5)),
            max_speculative: 1,
            ..HedgeConfig::default()
        },
        Collectors::new(),
    )
    .layer(AttemptTraceLayer::new().layer(inner));
    let read = CqlRequest::query("SELECT v FROM ks.kv WHERE k = 1").idempotent(true);
    tokio::time::timeout(Duration::from_secs(30), svc.oneshot(read))
        .await
        .expect("the speculative attempt answers")
        .unwrap();
    let spans = capture.spans();
    let attempt = |reason: &str| {
        spans
            .iter()
            .find(|s| s.name == "cql.attempt" && s.fields["cql.attempt.reason"] == reason)
            .unwrap_or_else(|| panic!("a {reason} attempt span: {spans:?}"))
            .fields
            .clone()
    };
    let lost = attempt("initial");
    assert_eq!(
        lost.get("error.type").map(String::as_str),
        Some("cancelled"),
        "{lost:?}"
    );
    assert_eq!(
        lost.get("otel.status_code").map(String::as_str),
        Some("error"),
        "{lost:?}"
    );
    let won = attempt("speculative");
    assert!(!won.contains_key("error.type"), "{won:?}");
}
