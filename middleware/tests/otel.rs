//! The tracing layers with `tracing-opentelemetry` and the OpenTelemetry
//! SDK's in-memory exporter: no glue beyond installing the layer.

use std::sync::Arc;

use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use scylla::client::session_builder::SessionBuilder;
use tower::{Service, ServiceExt};
use tower_cql_core::{CqlRequest, DriverService, Statement};
use tower_cql_middleware::trace::{AttemptTraceLayer, TraceConfig, TraceLayer};
use tower_cql_testkit::Cluster;
use tower_layer::Layer as _;
use tracing_subscriber::prelude::*;

#[tokio::test(flavor = "current_thread")]
async fn spans_export_with_db_semantic_conventions() {
    let cluster = Cluster::start().await.unwrap();
    let session = SessionBuilder::new()
        .known_nodes_addr(cluster.contact_points())
        .build()
        .await
        .unwrap();
    let driver = DriverService::builder(Arc::new(session)).build().unwrap();
    for cql in [
        "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE ks.users (id int PRIMARY KEY, name text)",
    ] {
        driver.execute(CqlRequest::unprepared(cql)).await.unwrap();
    }

    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let tracer = provider.tracer("tower-cql-test");
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut svc =
        TraceLayer::new(TraceConfig::default()).layer(AttemptTraceLayer::new().layer(driver));
    let insert = Statement::new("INSERT INTO ks.users (id, name) VALUES (?, 'literal-name')")
        .operation("add_user");
    svc.ready()
        .await
        .unwrap()
        .call(insert.request().bind((7i32,)))
        .await
        .unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let request = spans
        .iter()
        .find(|s| s.name == "INSERT ks.users")
        .unwrap_or_else(|| {
            panic!(
                "span names: {:?}",
                spans.iter().map(|s| s.name.clone()).collect::<Vec<_>>()
            )
        });
    assert_eq!(request.span_kind, SpanKind::Client);
    let attr = |k: &str| {
        request
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.as_str().to_string())
    };
    assert_eq!(attr("db.system.name").as_deref(), Some("cassandra"));
    assert_eq!(attr("db.namespace").as_deref(), Some("ks"));
    assert_eq!(attr("db.collection.name").as_deref(), Some("users"));
    assert_eq!(attr("db.operation.name").as_deref(), Some("add_user"));
    assert_eq!(
        attr("db.query.text").as_deref(),
        Some("INSERT INTO ks.users (id, name) VALUES (?, ?)")
    );
    assert_eq!(attr("server.address").as_deref(), Some("127.0.0.1"));
    // numbers are numbers (the conventions want an int `server.port`)
    let value = |k: &str| {
        request
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.clone())
            .unwrap_or_else(|| panic!("no {k}"))
    };
    assert!(
        matches!(value("server.port"), opentelemetry::Value::I64(p) if p > 0),
        "{:?}",
        value("server.port")
    );
    assert_eq!(value("cql.attempts"), opentelemetry::Value::I64(1));
    assert_eq!(
        value("db.response.returned_rows"),
        opentelemetry::Value::I64(0)
    );
    let attempt = spans
        .iter()
        .find(|s| s.name == "cql.attempt")
        .expect("attempt span");
    assert_eq!(attempt.parent_span_id, request.span_context.span_id());
    for s in &spans {
        for kv in &s.attributes {
            assert!(!kv.value.as_str().contains("literal-name"), "{kv:?}");
        }
    }
}
