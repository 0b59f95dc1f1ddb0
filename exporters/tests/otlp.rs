//! OTLP export end to end, over both transports: real queries with the
//! scylla driver against a testkit cluster, through a stack with the
//! metrics and tracing layers, exported by `OtlpExporter` to the testkit's
//! in-process OTLP receiver, and checked as the receiver decoded them.

mod support;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use tower::{Service, ServiceExt};
use tower_cql_core::{Collector, Collectors, Statement};
use tower_cql_exporters::instruments;
use tower_cql_exporters::otlp::{OtlpError, OtlpExporterBuilder, Protocol};
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_testkit::otlp::{
    FoundMetric, KeyValue, OtlpReceiver, Transport, attribute_str, metrics,
};
use tower_cql_testkit::{Fault, InjectedError, Opcode};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;
use tracing_subscriber::prelude::*;

const SECRET: &str = "sk-test-4f1c9a7e-do-not-print";

/// The tests here export through OpenTelemetry's SDK, whose pieces keep
/// process-wide state; run concurrently in one binary, one test's spans
/// were seen going to another's exporter ("no spans arrived"). One at a
/// time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Writes every span field and event that passes through `tracing` into a
/// string, to prove the header value never does.

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<String>>);

struct Writer<'a>(&'a mut String);

impl Visit for Writer<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: Context<'_, S>,
    ) {
        let mut s = self.0.lock().unwrap();
        s.push_str(attrs.metadata().name());
        attrs.record(&mut Writer(&mut s));
        s.push('\n');
    }

    fn on_record(
        &self,
        _: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: Context<'_, S>,
    ) {
        let mut s = self.0.lock().unwrap();
        values.record(&mut Writer(&mut s));
        s.push('\n');
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut s = self.0.lock().unwrap();
        s.push_str(event.metadata().target());
        event.record(&mut Writer(&mut s));
        s.push('\n');
    }
}

/// A builder that ignores the process environment.
fn no_env() -> OtlpExporterBuilder {
    OtlpExporterBuilder::from_vars(std::iter::empty::<(&str, &str)>())
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attribute_str(attrs, key)
}

fn histogram_points<'a>(
    m: &'a FoundMetric,
    operation: &str,
) -> Vec<&'a metrics::HistogramDataPoint> {
    m.histogram()
        .unwrap_or_else(|| panic!("{} is a histogram: {:?}", m.metric.name, m.metric.data))
        .data_points
        .iter()
        .filter(|p| attr(&p.attributes, "db.operation.name").as_deref() == Some(operation))
        .collect()
}

async fn export_end_to_end(protocol: Protocol, transport: Transport) {
    let receiver = OtlpReceiver::start().await.unwrap();
    // A given environment (the process one is not touched): the builder's
    // calls must win over it where both say something.
    let otlp = OtlpExporterBuilder::from_vars([
        ("OTEL_SERVICE_NAME", "from-env"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=ci%20run,team=storage",
        ),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-tenant=acme,api-key=from-env",
        ),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
    ])
    .protocol(protocol)
    .endpoint(receiver.endpoint())
    .header("api-key", SECRET)
    .service_name("otlp-test")
    // Nothing is exported on a timer during the test: what arrives was
    // sent by the stack's close().
    .metric_export_interval(Duration::from_secs(3600))
    .export_timeout(Duration::from_secs(5))
    .install()
    .unwrap();
    assert_eq!(otlp.protocol(), protocol);
    assert_eq!(otlp.service_name(), "otlp-test");

    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry()
        .with(capture.clone())
        .with(otlp.tracing_layer());
    let _guard = tracing::subscriber::set_default(subscriber);

    let collectors = Collectors::with([Arc::new(otlp.collector())]);
    let (cluster, driver) = support::driver(&collectors).await;
    let stack = StackBuilder::new(collectors).build(driver).unwrap();
    let mut svc = stack.service();
    support::create_kv(&mut svc).await;
    let put = Statement::new("INSERT INTO ks.kv (k, v) VALUES (?, ?)")
        .operation("put")
        .idempotent(true);
    for k in 0..5i32 {
        svc.ready()
            .await
            .unwrap()
            .call(put.request().bind((k, format!("v{k}"))))
            .await
            .unwrap();
    }
    // Two reads are answered Overloaded once and retried.
    let fault = cluster.faults().add(
        Fault::error(InjectedError::Overloaded)
            .opcode(Opcode::Execute)
            .reads()
            .times(2),
    );
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?")
        .operation("get")
        .idempotent(true);
    for k in 0..20i32 {
        svc.ready()
            .await
            .unwrap()
            .call(get.request().bind((k,)))
            .await
            .unwrap();
    }
    // One request that fails for good.
    let broken = Statement::new("SELECT nope FROM ks.kv WHERE k = ?")
        .operation("broken")
        .idempotent(true);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(broken.request().bind((1i32,)))
        .await
        .expect_err("an unknown column");
    let broken_kind = err.kind().as_str();
    // A paged read of the 5 rows, 2 a page, read to its end.
    let scan = Statement::new("SELECT k, v FROM ks.kv")
        .operation("scan")
        .idempotent(true);
    let mut rows = stack
        .stream::<(i32, String)>(scan.request().page_size(2))
        .await
        .unwrap();
    let mut read = 0u64;
    while rows.try_next().await.unwrap().is_some() {
        read += 1;
    }
    assert_eq!(read, 5);
    let pages_read = u64::from(rows.pages());
    assert!(pages_read >= 3, "{pages_read} pages of 2 rows for 5 rows");
    drop(rows);
    stack.close().await; // the only flush: no force_flush here
    assert_eq!(cluster.faults().fired(fault), 2);

    // Every request came over the transport asked for, with the headers.
    let metric_requests = receiver.metrics_requests();
    let trace_requests = receiver.trace_requests();
    assert!(!metric_requests.is_empty(), "no metrics arrived");
    assert!(!trace_requests.is_empty(), "no spans arrived");
    for (t, headers) in metric_requests
        .iter()
        .map(|r| (r.transport, r.header("api-key").zip(r.header("x-tenant"))))
        .chain(
            trace_requests
                .iter()
                .map(|r| (r.transport, r.header("api-key").zip(r.header("x-tenant")))),
        )
    {
        assert_eq!(t, transport);
        // the builder's api-key replaced the environment's; x-tenant kept
        assert_eq!(headers, Some((SECRET, "acme")));
    }

    // Metrics: names, units, attributes and counts.
    let names = receiver.metric_names();
    for n in [
        "db.client.operation.duration",
        "db.client.attempt.duration",
        "db.client.response.returned_rows",
        "db.client.retries",
    ] {
        assert!(names.iter().any(|m| m == n), "{n} missing from {names:?}");
    }
    let duration = receiver.metric("db.client.operation.duration").unwrap();
    assert_eq!(duration.transport, transport);
    assert_eq!(duration.metric.unit, "s");
    assert_eq!(
        duration.scope.as_ref().map(|s| s.name.as_str()),
        Some("tower-cql")
    );
    let resource = &duration.resource.as_ref().expect("a resource").attributes;
    assert_eq!(attr(resource, "service.name").as_deref(), Some("otlp-test"));
    assert_eq!(
        attr(resource, "deployment.environment.name").as_deref(),
        Some("ci run")
    );
    assert_eq!(attr(resource, "team").as_deref(), Some("storage"));
    assert_eq!(
        attr(resource, "telemetry.sdk.language").as_deref(),
        Some("rust")
    );

    let gets = histogram_points(&duration, "get");
    assert_eq!(gets.len(), 1, "one series for get: {gets:?}");
    let p = gets[0];
    assert_eq!(p.count, 20, "one per logical request, retries included");
    // the conventions' own boundaries (it was a longer list of our own)
    assert_eq!(
        p.explicit_bounds,
        vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0]
    );
    assert_eq!(p.bucket_counts.iter().sum::<u64>(), 20);
    assert!(p.sum.unwrap() > 0.0 && p.sum.unwrap() < 20.0 * 5.0, "{p:?}");
    assert_eq!(
        attr(&p.attributes, "db.system.name").as_deref(),
        Some("cassandra")
    );
    assert_eq!(attr(&p.attributes, "db.namespace").as_deref(), Some("ks"));
    assert_eq!(
        attr(&p.attributes, "db.collection.name").as_deref(),
        Some("kv")
    );
    assert_eq!(attr(&p.attributes, "error.type"), None);
    let puts = histogram_points(&duration, "put");
    assert_eq!(puts.iter().map(|p| p.count).sum::<u64>(), 5);
    let broken_points = histogram_points(&duration, "broken");
    assert_eq!(broken_points.len(), 1);
    assert_eq!(broken_points[0].count, 1);
    assert_eq!(
        attr(&broken_points[0].attributes, "error.type").as_deref(),
        Some(broken_kind)
    );

    let attempts = receiver.metric("db.client.attempt.duration").unwrap();
    assert_eq!(attempts.metric.unit, "s");
    let get_attempts = histogram_points(&attempts, "get");
    assert_eq!(get_attempts.iter().map(|p| p.count).sum::<u64>(), 22);
    let overloaded: u64 = get_attempts
        .iter()
        .filter(|p| attr(&p.attributes, "error.type").as_deref() == Some("overloaded"))
        .map(|p| p.count)
        .sum();
    assert_eq!(overloaded, 2);
    let retries = receiver.metric("db.client.retries").unwrap();
    let sum = retries.sum().expect("a sum");
    assert!(sum.is_monotonic);
    assert_eq!(sum.data_points.len(), 1);
    let retry_point = &sum.data_points[0];
    assert_eq!(
        retry_point.value,
        Some(metrics::number_data_point::Value::AsInt(2))
    );
    assert_eq!(
        attr(&retry_point.attributes, "error.type").as_deref(),
        Some("overloaded")
    );

    // Paged reads: the same counters as the metrics bridge's (one
    // definition of their names, unit and attribute), counting every page
    // and the stream's end. (Before, the OpenTelemetry collector had no
    // page or stream instrument: a paged read's pages were exported by
    // no metric.)
    let counter = |c: instruments::Counter| {
        let m = receiver
            .metric(c.otel)
            .unwrap_or_else(|| panic!("{} missing from {names:?}", c.otel));
        assert_eq!(m.metric.unit, c.unit, "{}", c.otel);
        let sum = m.sum().unwrap_or_else(|| panic!("{} is a sum", c.otel));
        assert!(sum.is_monotonic, "{} is a counter", c.otel);
        sum.data_points
            .iter()
            .map(|p| {
                let value = match p.value {
                    Some(metrics::number_data_point::Value::AsInt(v)) => v,
                    ref other => panic!("{}: {other:?}", c.otel),
                };
                (c.attribute.and_then(|a| attr(&p.attributes, a)), value)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(counter(instruments::PAGES), vec![(None, pages_read as i64)]);
    assert_eq!(counter(instruments::PAGE_ROWS), vec![(None, 5)]);
    assert_eq!(
        counter(instruments::STREAMS),
        vec![(Some("finished".to_string()), 1)]
    );

    // Spans: one client span per logical request, named and attributed per
    // the database conventions, and a child span per attempt.
    let reads = receiver.spans_named("SELECT ks.kv");
    let get_spans: Vec<_> = reads
        .iter()
        .filter(|s| attr(&s.span.attributes, "db.operation.name").as_deref() == Some("get"))
        .collect();
    assert_eq!(get_spans.len(), 20);
    for s in &get_spans {
        assert_eq!(s.transport, transport);
        assert_eq!(s.span.kind, 3, "SPAN_KIND_CLIENT");
        let a = &s.span.attributes;
        assert_eq!(attr(a, "db.system.name").as_deref(), Some("cassandra"));
        assert_eq!(attr(a, "db.namespace").as_deref(), Some("ks"));
        assert_eq!(attr(a, "db.collection.name").as_deref(), Some("kv"));
        assert_eq!(attr(a, "db.query.summary").as_deref(), Some("SELECT ks.kv"));
        assert_eq!(attr(a, "server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(attr(a, "error.type"), None);
        let resource = &s.resource.as_ref().expect("a resource").attributes;
        assert_eq!(attr(resource, "service.name").as_deref(), Some("otlp-test"));
    }
    // Both injected faults hit reads: 2 attempts more than requests.
    let attempts_recorded: u64 = get_spans
        .iter()
        .map(|s| {
            attr(&s.span.attributes, "cql.attempts")
                .expect("cql.attempts")
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(attempts_recorded, 22);
    let puts = receiver.spans_named("INSERT ks.kv");
    assert_eq!(puts.len(), 5);
    let failed: Vec<_> = reads
        .iter()
        .filter(|s| attr(&s.span.attributes, "db.operation.name").as_deref() == Some("broken"))
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        attr(&failed[0].span.attributes, "error.type").as_deref(),
        Some(broken_kind)
    );
    assert_eq!(
        failed[0].span.status.as_ref().map(|s| s.code),
        Some(2),
        "STATUS_CODE_ERROR"
    );
    let get_ids: Vec<&[u8]> = get_spans
        .iter()
        .map(|s| s.span.span_id.as_slice())
        .collect();
    let get_attempt_spans = receiver
        .spans_named("cql.attempt")
        .into_iter()
        .filter(|s| get_ids.contains(&s.span.parent_span_id.as_slice()))
        .count();
    assert_eq!(get_attempt_spans, 22, "20 reads, 2 of them retried once");

    // The header value went over the wire and nowhere else.
    let logged = capture.0.lock().unwrap().clone();
    assert!(
        logged.contains("cql.request") || logged.contains("cql.attempt"),
        "the capture saw the stack's spans: {logged:.300}"
    );
    assert!(!logged.contains(SECRET));
    let debug = format!("{otlp:?}");
    assert!(debug.contains("api-key"), "{debug}");
    assert!(!debug.contains(SECRET), "{debug}");

    otlp.shutdown().await.unwrap();
    otlp.shutdown().await.unwrap(); // idempotent
    assert!(otlp.lost().is_none(), "{:?}", otlp.lost());
}

// current_thread: the tracing subscriber is the test thread's default, and
// the exporter's connections share that one thread with the test (close()
// flushes on a blocking thread, so nothing deadlocks).
#[tokio::test(flavor = "current_thread")]
async fn grpc_export_of_metrics_and_spans() {
    tower_cql_testkit::tracing_setup::global_registry();
    let _serial = SERIAL.lock().await;
    export_end_to_end(Protocol::Grpc, Transport::Grpc).await;
}

#[tokio::test(flavor = "current_thread")]
async fn http_protobuf_export_of_metrics_and_spans() {
    tower_cql_testkit::tracing_setup::global_registry();
    let _serial = SERIAL.lock().await;
    export_end_to_end(Protocol::HttpProtobuf, Transport::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_chooses_protocol_and_endpoint() {
    tower_cql_testkit::tracing_setup::global_registry();
    let _serial = SERIAL.lock().await;
    let receiver = OtlpReceiver::start().await.unwrap();
    let otlp = OtlpExporterBuilder::from_vars([
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint().as_str()),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20abc"),
        ("OTEL_SERVICE_NAME", "env-only"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "3600000"),
    ])
    .install()
    .unwrap();
    assert_eq!(otlp.protocol(), Protocol::HttpProtobuf);
    assert_eq!(otlp.endpoint(), receiver.endpoint());
    assert_eq!(otlp.metric_export_interval(), Duration::from_secs(3600));
    use opentelemetry::metrics::MeterProvider as _;
    otlp.meter_provider()
        .meter("test")
        .u64_counter("test.counter")
        .build()
        .add(1, &[]);
    let collector = otlp.collector();
    // A collector's flush (what close() calls) exports the provider's metrics.
    tokio::task::spawn_blocking(move || collector.flush())
        .await
        .unwrap();
    otlp.shutdown().await.unwrap();
    let requests = receiver.metrics_requests();
    assert!(!requests.is_empty());
    assert_eq!(receiver.metric_names(), vec!["test.counter".to_string()]);
    let r = &requests[0];
    assert_eq!(r.transport, Transport::HttpProtobuf);
    assert_eq!(r.header("authorization"), Some("Bearer abc"));
    let resource = r.request.resource_metrics[0].resource.as_ref().unwrap();
    assert_eq!(
        attr(&resource.attributes, "service.name").as_deref(),
        Some("env-only")
    );
}

#[test]
fn install_outside_a_runtime_is_a_clear_error() {
    tower_cql_testkit::tracing_setup::global_registry();
    let err = no_env().install().unwrap_err();
    assert!(matches!(err, OtlpError::NoRuntime), "{err:?}");
    assert!(err.to_string().contains("inside a Tokio runtime"), "{err}");
}

#[tokio::test(flavor = "current_thread")]
async fn install_refuses_invalid_configuration() {
    tower_cql_testkit::tracing_setup::global_registry();
    let _serial = SERIAL.lock().await;
    let cases: Vec<(OtlpExporterBuilder, &str)> = vec![
        (
            no_env().endpoint("http//oops"),
            "invalid OTLP endpoint \"http//oops\"",
        ),
        (
            no_env().endpoint("https://otel.example.com"),
            "built without TLS",
        ),
        (
            OtlpExporterBuilder::from_vars([("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")]),
            "unknown OTLP protocol \"thrift\" (from OTEL_EXPORTER_OTLP_PROTOCOL)",
        ),
        (
            no_env().metric_export_interval(Duration::ZERO),
            "metric export interval",
        ),
        (no_env().export_timeout(Duration::ZERO), "export timeout"),
        (
            no_env().header("api key", "x"),
            // (quoted up to its first space: `name: value` must not quote
            // its value)
            "malformed OTLP header \"api\"… (the rest left out)",
        ),
        (
            OtlpExporterBuilder::from_vars([("OTEL_EXPORTER_OTLP_HEADERS", SECRET)]),
            "malformed OTLP header #1 (from OTEL_EXPORTER_OTLP_HEADERS): it has no '='",
        ),
        // API keys in clear text to another host (nothing is sent: refused
        // before any connection)
        (
            no_env()
                .endpoint("http://otel-collector.example:4317")
                .header("api-key", SECRET),
            "OTLP headers (from OtlpExporterBuilder::header) would be sent in clear text over \
             http:// to \"http://otel-collector.example:4317\", which is not a loopback address",
        ),
        (
            OtlpExporterBuilder::from_vars([
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://10.20.30.40:4318"),
                ("OTEL_EXPORTER_OTLP_HEADERS", &format!("api-key={SECRET}")),
            ]),
            "(from OTEL_EXPORTER_OTLP_HEADERS) would be sent in clear text",
        ),
        (
            no_env()
                .endpoint("http://[2001:db8::1]:4317")
                .header("authorization", SECRET),
            "call OtlpExporterBuilder::allow_insecure_headers(true)",
        ),
    ];
    for (builder, want) in cases {
        let err = builder.install().expect_err(want).to_string();
        assert!(err.contains(want), "want {want:?}\n got {err}");
        assert!(!err.contains(SECRET), "{err}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn install_sends_headers_to_loopback_without_being_told() {
    tower_cql_testkit::tracing_setup::global_registry();
    let _serial = SERIAL.lock().await;
    let receiver = OtlpReceiver::start().await.unwrap();
    let port = receiver.addr().port();
    for endpoint in [
        format!("http://127.0.0.1:{port}"),
        format!("http://127.0.0.2:{port}"),
        format!("http://localhost:{port}"),
        format!("http://[::1]:{port}"),
    ] {
        let otlp = no_env()
            .endpoint(endpoint.as_str())
            .header("api-key", SECRET)
            .install()
            .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        assert_eq!(otlp.endpoint(), endpoint);
        let _ = otlp.shutdown().await;
    }
}

#[test]
fn builder_debug_shows_header_names_not_values() {
    tower_cql_testkit::tracing_setup::global_registry();
    let b = OtlpExporterBuilder::from_vars([("OTEL_EXPORTER_OTLP_HEADERS", SECRET)])
        .header("x-api-key", SECRET)
        .service_name("svc");
    let debug = format!("{b:?}");
    assert!(debug.contains("x-api-key"), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
    assert!(debug.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{debug}");
    assert!(!debug.contains(SECRET), "{debug}");
}

/// An OTLP endpoint that accepts every connection and never answers (a
/// collector that hangs): exports to it wait until their own timeout.
struct Unresponsive {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Unresponsive {
    async fn start() -> Unresponsive {
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        Unresponsive { addr, task }
    }
}

impl Drop for Unresponsive {
    fn drop(&mut self) {
        // The held sockets close with the task: pending exports fail fast.
        self.task.abort();
    }
}

/// The stack's close_timeout keeps its bound while the collectors' flush
/// waits on an endpoint that never answers, and a close() after that
/// cancelled one completes once the flush gives up (when the export times
/// out, after 10 s here).
async fn close_with_an_unresponsive_endpoint(protocol: Protocol) {
    let endpoint = Unresponsive::start().await;
    let otlp = no_env()
        .protocol(protocol)
        .endpoint(format!("http://{}", endpoint.addr))
        .export_timeout(Duration::from_secs(10))
        .metric_export_interval(Duration::from_secs(3600))
        .install()
        .unwrap();
    let collectors = Collectors::with([Arc::new(otlp.collector())]);
    let (_cluster, driver) = support::driver(&collectors).await;
    let stack = StackBuilder::new(collectors).build(driver).unwrap();
    let mut svc = stack.service();
    support::create_kv(&mut svc).await; // metrics to export

    let limit = Duration::from_millis(500);
    let start = std::time::Instant::now();
    let first = stack.close_timeout(limit).await;
    let took = start.elapsed();
    assert_eq!(
        first,
        Err(0),
        "drained, the flush still waiting on the endpoint"
    );
    // 10x the limit, and half the export timeout that ends the flush
    assert!(
        took < Duration::from_secs(5),
        "close_timeout({limit:?}) took {took:?}"
    );
    assert!(!stack.is_open());

    tokio::time::timeout(Duration::from_secs(60), stack.close())
        .await
        .expect("close() never completed after a cancelled close_timeout()");
    println!(
        "{protocol}: close_timeout({limit:?}) returned after {took:?}; the flush ended, \
         and close() with it, {:?} after the first call",
        start.elapsed()
    );
    assert_eq!(
        stack.gate().state(),
        tower_cql_core::GateState::Closed,
        "closed after the flush gave up"
    );
    assert_eq!(stack.close_timeout(Duration::ZERO).await, Ok(()));

    drop(endpoint);
    let _ = tokio::time::timeout(Duration::from_secs(60), otlp.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_close_timeout_keeps_its_bound_when_the_endpoint_never_answers() {
    tower_cql_testkit::tracing_setup::global_registry();
    let _serial = SERIAL.lock().await;
    close_with_an_unresponsive_endpoint(Protocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_close_timeout_keeps_its_bound_when_the_endpoint_never_answers() {
    tower_cql_testkit::tracing_setup::global_registry();
    let _serial = SERIAL.lock().await;
    close_with_an_unresponsive_endpoint(Protocol::HttpProtobuf).await;
}

/// One span through the exporter's tracer and one counter point through
/// its meter provider.
fn one_span_and_one_point(otlp: &tower_cql_exporters::otlp::OtlpExporter) {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry::trace::{Span as _, Tracer as _};
    otlp.tracer().start("signal.specific").end();
    otlp.meter_provider()
        .meter("test")
        .u64_counter("test.counter")
        .build()
        .add(1, &[]);
}

/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` wins over `OTEL_EXPORTER_OTLP_ENDPOINT`
/// for spans (the specification's precedence); metrics, with no
/// `..._METRICS_ENDPOINT`, go to the general one. Two receivers on
/// loopback: nothing else is contacted.
async fn the_signal_specific_endpoint_wins(protocol: Protocol) {
    let general = OtlpReceiver::start().await.unwrap();
    let traces = OtlpReceiver::start().await.unwrap();
    // The signal-specific endpoint is used as is: HTTP appends no path.
    let traces_endpoint = match protocol {
        Protocol::Grpc => traces.endpoint(),
        Protocol::HttpProtobuf => format!("{}/v1/traces", traces.endpoint()),
    };
    let otlp = OtlpExporterBuilder::from_vars([
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", general.endpoint().as_str()),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            traces_endpoint.as_str(),
        ),
    ])
    .metric_export_interval(Duration::from_secs(3600))
    .install()
    .unwrap();
    one_span_and_one_point(&otlp);
    otlp.shutdown().await.unwrap();
    assert_eq!(
        traces.spans_named("signal.specific").len(),
        1,
        "{protocol}: the span did not reach OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; \
         the general endpoint got {} span(s)",
        general.spans().len()
    );
    assert!(general.trace_requests().is_empty(), "{protocol}");
    assert_eq!(general.metric_names(), vec!["test.counter".to_string()]);
    assert!(traces.metrics_requests().is_empty(), "{protocol}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_the_traces_endpoint_wins_over_the_general_one() {
    tower_cql_testkit::tracing_setup::global_registry();
    let _serial = SERIAL.lock().await;
    the_signal_specific_endpoint_wins(Protocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_the_traces_endpoint_wins_over_the_general_one() {
    tower_cql_testkit::tracing_setup::global_registry();
    let _serial = SERIAL.lock().await;
    the_signal_specific_endpoint_wins(Protocol::HttpProtobuf).await;
}

/// A loopback port nothing listens on: bound, then closed (connections to
/// it are refused).
fn refused_port() -> u16 {
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// The URL a signal-specific variable must hold for `base`: as is for
/// gRPC, with the signal's path for HTTP/protobuf.
fn signal_url(protocol: Protocol, base: &str, path: &str) -> String {
    match protocol {
        Protocol::Grpc => base.to_string(),
        Protocol::HttpProtobuf => format!("{base}{path}"),
    }
}

/// Spans go to a port that refuses connections, metrics to one that
/// accepts and never answers: the error of `flush()` names each signal's
/// endpoint and says what happened there, in words.
async fn unreachable_endpoints_are_named_with_the_cause(protocol: Protocol) {
    let hanging = Unresponsive::start().await;
    let refused = format!("http://127.0.0.1:{}", refused_port());
    let traces_url = signal_url(protocol, &refused, "/v1/traces");
    let metrics_url = signal_url(protocol, &format!("http://{}", hanging.addr), "/v1/metrics");
    let otlp = OtlpExporterBuilder::from_vars([
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces_url.as_str()),
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", metrics_url.as_str()),
    ])
    .protocol(protocol)
    .export_timeout(Duration::from_millis(300))
    .metric_export_interval(Duration::from_secs(3600))
    .install()
    .unwrap();
    assert_eq!(otlp.traces_endpoint(), traces_url);
    assert_eq!(otlp.metrics_endpoint(), metrics_url);
    one_span_and_one_point(&otlp);
    let msg = failed_flush(&otlp).await;
    println!("{protocol}: {msg}");
    for want in [
        format!("spans to {traces_url}: connection refused"),
        format!("metrics to {metrics_url}: timed out after 300ms"),
        "1 span and 1 metric point lost".to_string(),
    ] {
        assert!(msg.contains(&want), "{protocol}: want {want:?}\n got {msg}");
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), otlp.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unreachable_endpoints_are_named_with_the_cause() {
    tower_cql_testkit::tracing_setup::global_registry();
    let _serial = SERIAL.lock().await;
    unreachable_endpoints_are_named_with_the_cause(Protocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_unreachable_endpoints_are_named_with_the_cause() {
    tower_cql_testkit::tracing_setup::global_registry();
    let _serial = SERIAL.lock().await;
    unreachable_endpoints_are_named_with_the_cause(Protocol::HttpProtobuf).await;
}

/// A host name that cannot resolve (`.invalid` is reserved for that):
/// the error says the DNS lookup failed, for both signals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_host_is_named_with_the_cause() {
    tower_cql_testkit::tracing_setup::global_registry();
    let _serial = SERIAL.lock().await;
    both_signals_name_the_cause("http://otlp-collector.invalid:4317", "DNS lookup failed").await;
}

/// For each protocol: one span and one point sent to `endpoint` fail, and
/// the error of `flush()` names each signal's endpoint with `cause`.
async fn both_signals_name_the_cause(endpoint: &str, cause: &str) {
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let otlp = no_env()
            .protocol(protocol)
            .endpoint(endpoint)
            .export_timeout(Duration::from_secs(5))
            .metric_export_interval(Duration::from_secs(3600))
            .install()
            .unwrap();
        one_span_and_one_point(&otlp);
        let msg = failed_flush(&otlp).await;
        println!("{protocol}: {msg}");
        for want in [
            format!("spans to {}: {cause}", otlp.traces_endpoint()),
            format!("metrics to {}: {cause}", otlp.metrics_endpoint()),
        ] {
            assert!(msg.contains(&want), "{protocol}: want {want:?}\n got {msg}");
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), otlp.shutdown()).await;
    }
}

/// The error of a `flush()` that must fail, as text.
async fn failed_flush(otlp: &tower_cql_exporters::otlp::OtlpExporter) -> String {
    tokio::time::timeout(Duration::from_secs(30), otlp.flush())
        .await
        .expect("flush() returned")
        .expect_err("nothing could be exported")
        .to_string()
}

/// An endpoint that accepts each connection and closes it at once (as a
/// port speaking something else may): the error says the connection
/// closed, for both signals and both protocols.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_closes_connections_is_named_with_the_cause() {
    tower_cql_testkit::tracing_setup::global_registry();
    let _serial = SERIAL.lock().await;
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let closer = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    both_signals_name_the_cause(&format!("http://{addr}"), "connection closed").await;
    closer.abort();
}

/// `n` spans through the exporter's tracer, and one point of a counter
/// for each of `series` attribute values.
fn spans_and_points(otlp: &tower_cql_exporters::otlp::OtlpExporter, n: usize, series: usize) {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry::trace::{Span as _, Tracer as _};
    for i in 0..n {
        otlp.tracer().start(format!("lost.{i}")).end();
    }
    let counter = otlp
        .meter_provider()
        .meter("test")
        .u64_counter("test.lost")
        .build();
    for s in 0..series {
        counter.add(1, &[opentelemetry::KeyValue::new("series", s as i64)]);
    }
}

/// Nothing reaches an endpoint that refuses connections: `shutdown()`
/// says how many spans and metric points were lost, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_the_spans_and_metric_points_lost() {
    tower_cql_testkit::tracing_setup::global_registry();
    let _serial = SERIAL.lock().await;
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let otlp = no_env()
            .protocol(protocol)
            .endpoint(format!("http://127.0.0.1:{}", refused_port()))
            .export_timeout(Duration::from_millis(300))
            .metric_export_interval(Duration::from_secs(3600))
            .install()
            .unwrap();
        spans_and_points(&otlp, 7, 3);
        let err = tokio::time::timeout(Duration::from_secs(30), otlp.shutdown())
            .await
            .expect("shutdown() returned")
            .expect_err("nothing could be exported");
        let msg = err.to_string();
        println!("{protocol}: {msg}");
        let want = "7 spans and 3 metric points lost";
        assert!(msg.contains(want), "{protocol}: want {want:?}\n got {msg}");
        assert!(msg.contains("connection refused"), "{protocol}: {msg}");
        assert_eq!((err.lost.spans, err.lost.metric_points), (7, 3));
        let lost = otlp.lost();
        assert_eq!((lost.spans, lost.metric_points), (7, 3), "{protocol}");
        // a second shutdown does nothing, and says nothing
        otlp.shutdown().await.unwrap();
    }
}

/// More spans end at once than the batch queue holds (2048) while the
/// exports fail: the spans the queue dropped count as lost too, with
/// those of the failed exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_dropped_by_a_full_queue_count_as_lost() {
    tower_cql_testkit::tracing_setup::global_registry();
    let _serial = SERIAL.lock().await;
    let otlp = no_env()
        .protocol(Protocol::default_for_build())
        .endpoint(format!("http://127.0.0.1:{}", refused_port()))
        .export_timeout(Duration::from_millis(300))
        .metric_export_interval(Duration::from_secs(3600))
        .install()
        .unwrap();
    spans_and_points(&otlp, 3000, 0);
    let err = tokio::time::timeout(Duration::from_secs(60), otlp.shutdown())
        .await
        .expect("shutdown() returned")
        .expect_err("nothing could be exported");
    let msg = err.to_string();
    println!("{msg}");
    let want = "3000 spans and 0 metric points lost";
    assert!(msg.contains(want), "want {want:?}\n got {msg}");
    assert_eq!(otlp.lost().spans, 3000);
}

/// Set in the child process that
/// `the_process_environment_keeps_each_signal_s_own_variables` starts.
const CHILD: &str = "TOWER_CQL_OTLP_CHILD";

/// Runs only in that child process, with the `OTEL_*` variables set in its
/// real environment: builds from it with `OtlpExporter::builder()`,
/// exports one span and one point, and shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_exports_from_the_process_environment() {
    tower_cql_testkit::tracing_setup::global_registry();
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let otlp = tower_cql_exporters::otlp::OtlpExporter::builder()
        .metric_export_interval(Duration::from_secs(3600))
        .install()
        .unwrap();
    one_span_and_one_point(&otlp);
    otlp.shutdown().await.unwrap();
}

/// The process environment, read by this crate and by `opentelemetry-otlp`
/// itself (which reads it for headers whatever it is told): a signal's own
/// endpoint and headers variables win over the general ones, and the
/// general ones still apply to the other signal. `set_var` is not used:
/// the test binary runs itself again, filtered to the test above, with
/// the variables set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_environment_keeps_each_signal_s_own_variables() {
    tower_cql_testkit::tracing_setup::global_registry();
    let _serial = SERIAL.lock().await;
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let general = OtlpReceiver::start().await.unwrap();
        let traces = OtlpReceiver::start().await.unwrap();
        let vars = [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.as_str().to_string()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", general.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                signal_url(protocol, &traces.endpoint(), "/v1/traces"),
            ),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-general=g".to_string()),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "x-traces=t".to_string(),
            ),
        ];
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "child_exports_from_the_process_environment",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD, "1")
                .envs(vars)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{protocol}: the child failed\n{stdout}\n{stderr}"
        );
        assert_eq!(
            traces.spans_named("signal.specific").len(),
            1,
            "{protocol}: the span did not reach OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        );
        assert!(general.trace_requests().is_empty(), "{protocol}");
        assert!(traces.metrics_requests().is_empty(), "{protocol}");
        assert_eq!(general.metric_names(), vec!["test.counter".to_string()]);
        for r in traces.trace_requests() {
            let h = (r.header("x-traces"), r.header("x-general"));
            assert_eq!(h, (Some("t"), None), "{protocol}: span headers");
        }
        for r in general.metrics_requests() {
            let h = (r.header("x-traces"), r.header("x-general"));
            assert_eq!(h, (None, Some("g")), "{protocol}: metric headers");
        }
    }
}

/// With a trace ratio, the exporter's span collector samples requests
/// itself at that ratio and the exporter's sampler keeps what it sampled:
/// requests are sampled once (about half at 0.5, not a quarter), and the
/// exporter's other spans are still sampled at the ratio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_span_collector_samples_at_the_trace_ratio_once() {
    tower_cql_testkit::tracing_setup::global_registry();
    let (reads, other) =
        span_collector_run(no_env().trace_sample_ratio(0.5), "Some(0.5)", 400).await;
    // 400 at 0.5: 200 ± 10 (one standard deviation); sampled twice, 100
    assert!(
        (150..=250).contains(&reads),
        "request spans kept: {reads} of 400"
    );
    assert!(
        (150..=250).contains(&other),
        "other spans kept: {other} of 400"
    );

    // No ratio and no OTEL_TRACES_SAMPLER: the SDK's default (every
    // trace) as a ratio of 1, so the collector samples first there too
    if std::env::var_os("OTEL_TRACES_SAMPLER").is_some() {
        println!("skipped the default-ratio part: OTEL_TRACES_SAMPLER is set");
        return;
    }
    let (reads, other) = span_collector_run(no_env(), "Some(1.0)", 50).await;
    assert_eq!(
        (reads, other),
        (50, 50),
        "every request and every other span"
    );
}

/// `n` reads through a stack whose only spans are `builder`'s span
/// collector's (its ratio shown as `ratio` in its `Debug`), and `n` other
/// spans through the exporter's tracer: how many of each a real OTLP
/// receiver got.
async fn span_collector_run(builder: OtlpExporterBuilder, ratio: &str, n: i32) -> (usize, usize) {
    use opentelemetry::trace::{Span as _, Tracer as _};
    let receiver = OtlpReceiver::start().await.unwrap();
    let otlp = builder
        .protocol(Protocol::Grpc)
        .endpoint(receiver.endpoint())
        .metric_export_interval(Duration::from_secs(3600))
        .install()
        .unwrap();
    let spans = otlp.span_collector();
    let shown = format!("{spans:?}");
    assert!(shown.contains(&format!("sample_ratio: {ratio}")), "{shown}");
    let collectors = Collectors::with([Arc::new(otlp.collector())]);
    collectors.add(Arc::new(spans));
    let (_cluster, driver) = support::driver(&collectors).await;
    let stack = StackBuilder::new(collectors)
        .without_trace()
        .build(driver)
        .unwrap();
    let mut svc = stack.service();
    support::create_kv(&mut svc).await;
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?").idempotent(true);
    for k in 0..n {
        svc.ready()
            .await
            .unwrap()
            .call(get.request().bind((k,)))
            .await
            .unwrap();
    }
    for _ in 0..n {
        otlp.tracer().start("app.other").end();
    }
    stack.close().await;
    otlp.shutdown().await.unwrap();
    let reads = receiver
        .spans()
        .iter()
        .filter(|s| s.span.name.starts_with("SELECT"))
        .count();
    (reads, receiver.spans_named("app.other").len())
}

/// An OTLP/HTTP collector that accepts every export but rejects `rejected`
/// of its items: it answers each `POST` `200 OK` with a partial success
/// (`ExportTraceServiceResponse` / `ExportMetricsServiceResponse`, whose
/// `partial_success` has the same two fields: the count rejected, and why).
struct PartlyRejecting {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
    /// The body of each export of metrics, in order.
    metrics: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl PartlyRejecting {
    async fn start(rejected: u8, message: &'static str) -> PartlyRejecting {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        // partial_success (field 1) { rejected (field 1, varint), error_message (field 2) }
        let mut inner = vec![0x08, rejected, 0x12, message.len() as u8];
        inner.extend_from_slice(message.as_bytes());
        let mut body = vec![0x0a, inner.len() as u8];
        body.extend_from_slice(&inner);
        let metrics = Arc::new(Mutex::new(Vec::new()));
        let kept = metrics.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let body = body.clone();
                let kept = kept.clone();
                tokio::spawn(async move {
                    // the request head, then its body (content-length)
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    let head_end = loop {
                        let n = socket.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while got.len() < head_end + length {
                        let n = socket.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    if head.starts_with("post /v1/metrics") {
                        kept.lock()
                            .unwrap()
                            .push(got[head_end..head_end + length].to_vec());
                    }
                    let mut response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    response.extend_from_slice(&body);
                    let _ = socket.write_all(&response).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        PartlyRejecting {
            addr,
            task,
            metrics,
        }
    }

    /// The sum of the points of the counter `name` in the last export of
    /// metrics whose attribute `error.type` is `error_type` (`None`: the
    /// points without it), if it has any.
    fn last_count(&self, name: &str, error_type: Option<&str>) -> Option<i64> {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value};
        use prost::Message as _;
        let last = self.metrics.lock().unwrap().last().cloned()?;
        let request = ExportMetricsServiceRequest::decode(last.as_slice()).unwrap();
        let points: Vec<i64> = request
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .filter(|m| m.name == name)
            .flat_map(|m| match &m.data {
                Some(Data::Sum(sum)) => sum.data_points.clone(),
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .filter(|p| attr(&p.attributes, "error.type").as_deref() == error_type)
            .map(|p| match p.value {
                Some(Value::AsInt(v)) => v,
                other => panic!("{name}: {other:?}"),
            })
            .collect();
        (!points.is_empty()).then(|| points.iter().sum())
    }
}

impl Drop for PartlyRejecting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The collector takes each export but rejects some of its items (an OTLP
/// partial success, e.g. over its limits): those spans and points never
/// arrive, so they count as lost, and the flush fails saying so, with the
/// collector's reason (the SDK only logs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_items_the_collector_rejects_count_as_lost() {
    tower_cql_testkit::tracing_setup::global_registry();
    let _serial = SERIAL.lock().await;
    let collector = PartlyRejecting::start(2, "over the limit").await;
    let otlp = no_env()
        .protocol(Protocol::HttpProtobuf)
        .endpoint(format!("http://{}", collector.addr))
        .export_timeout(Duration::from_secs(5))
        .metric_export_interval(Duration::from_secs(3600))
        .install()
        .unwrap();
    spans_and_points(&otlp, 3, 3);
    let msg = failed_flush(&otlp).await;
    println!("{msg}");
    for want in [
        "2 spans and 2 metric points lost".to_string(),
        format!(
            "spans to {}: the collector rejected 2 of them: over the limit",
            otlp.traces_endpoint()
        ),
        format!(
            "metrics to {}: the collector rejected 2 of them: over the limit",
            otlp.metrics_endpoint()
        ),
    ] {
        assert!(msg.contains(&want), "want {want:?}\n got {msg}");
    }
    let lost = otlp.lost();
    assert_eq!((lost.spans, lost.metric_points), (2, 2));
    let err = tokio::time::timeout(Duration::from_secs(30), otlp.shutdown())
        .await
        .expect("shutdown() returned")
        .expect_err("items were lost");
    // shutdown's last export carries the three series again (cumulative),
    // and two are rejected again
    assert_eq!((err.lost.spans, err.lost.metric_points), (2, 4));
}

/// With self-observability on, the items the collector rejected (an OTLP
/// partial success) are counted in metrics of the exporter's own, as the
/// OpenTelemetry SDK conventions name them: `otel.sdk.exporter.span.exported`
/// and `otel.sdk.exporter.metric_data_point.exported`, the rejected ones
/// with `error.type` `rejected`, the others without. (Before, they were
/// only in `lost()` and the flush's error: nothing a dashboard could see.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_observability_counts_the_items_the_collector_rejects() {
    tower_cql_testkit::tracing_setup::global_registry();
    let _serial = SERIAL.lock().await;
    let collector = PartlyRejecting::start(2, "over the limit").await;
    let otlp = no_env()
        .protocol(Protocol::HttpProtobuf)
        .endpoint(format!("http://{}", collector.addr))
        .export_timeout(Duration::from_secs(5))
        .metric_export_interval(Duration::from_secs(3600))
        .self_observability(true)
        .install()
        .unwrap();
    let spans = 3;
    spans_and_points(&otlp, spans, 3);
    // spans first: 2 of the 3 rejected; then the metrics, 2 of their
    // points rejected
    let _ = failed_flush(&otlp).await;
    // the last export carries the counts of the first
    let _ = otlp.shutdown().await;
    let spans_exported = "otel.sdk.exporter.span.exported";
    assert_eq!(
        collector.last_count(spans_exported, Some("rejected")),
        Some(2)
    );
    assert_eq!(
        collector.last_count(spans_exported, None),
        Some(spans as i64 - 2)
    );
    let points_exported = "otel.sdk.exporter.metric_data_point.exported";
    assert_eq!(
        collector.last_count(points_exported, Some("rejected")),
        Some(2)
    );
    assert!(
        collector.last_count(points_exported, None) > Some(0),
        "the points taken are counted too"
    );
}

/// A signal's own protocol variable (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`,
/// `..._METRICS_PROTOCOL`, as in `opentelemetry-otlp` and the
/// specification) chooses that signal's transport, and wins over the
/// general one: here spans go over HTTP/protobuf to their own URL, metrics
/// over gRPC, the general protocol. The receiver speaks both on one port
/// and says how each request came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_s_own_protocol_variable_chooses_its_transport() {
    tower_cql_testkit::tracing_setup::global_registry();
    let _serial = SERIAL.lock().await;
    let receiver = OtlpReceiver::start().await.unwrap();
    let traces_url = format!("{}/v1/traces", receiver.endpoint());
    let otlp = OtlpExporterBuilder::from_vars([
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint().as_str()),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces_url.as_str()),
    ])
    .metric_export_interval(Duration::from_secs(3600))
    .install()
    .unwrap();
    one_span_and_one_point(&otlp);
    otlp.shutdown().await.unwrap();
    let how = |transports: Vec<Transport>| {
        assert!(!transports.is_empty(), "nothing arrived");
        transports
    };
    let spans = how(receiver
        .trace_requests()
        .iter()
        .map(|r| r.transport)
        .collect());
    assert!(
        spans.iter().all(|t| *t == Transport::HttpProtobuf),
        "spans came over {spans:?}, not OTEL_EXPORTER_OTLP_TRACES_PROTOCOL's http/protobuf"
    );
    let metrics = how(receiver
        .metrics_requests()
        .iter()
        .map(|r| r.transport)
        .collect());
    assert!(
        metrics.iter().all(|t| *t == Transport::Grpc),
        "metrics came over {metrics:?}, not OTEL_EXPORTER_OTLP_PROTOCOL's grpc"
    );
}
