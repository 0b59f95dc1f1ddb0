//! OTLP: export the stack's metrics and spans to an OpenTelemetry
//! collector, over gRPC or HTTP/protobuf.
//!
//! ```text
//! cargo run -p tower-cql-examples --example otlp
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 cargo run -p tower-cql-examples --example otlp
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf \
//!     cargo run -p tower-cql-examples --example otlp
//! ```
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set it exports there (the other
//! `OTEL_*` variables apply too); without it, it starts the testkit's
//! in-process OTLP receiver and prints what arrived. The workload runs on
//! `SCYLLA_URI` if set, else on an embedded testkit node.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use tower::{Service, ServiceExt};
use tower_cql_core::{Collectors, CqlRequest, Statement};
use tower_cql_exporters::otlp::{ENV_ENDPOINT, ENV_SERVICE_NAME, OtlpExporter};
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_testkit::otlp::{OtlpReceiver, attribute_str};
use tracing_subscriber::prelude::*;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("otlp example failed: {e}");
        std::process::exit(1);
    }
}

fn is_set(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // Where to export: the collector named by the environment, or a
    // receiver of our own.
    let receiver = if is_set(ENV_ENDPOINT) {
        None
    } else {
        let r = OtlpReceiver::start().await?;
        println!(
            "{ENV_ENDPOINT} is not set: started an in-process OTLP receiver on {}",
            r.endpoint()
        );
        Some(r)
    };
    let mut builder = OtlpExporter::builder();
    if let Some(r) = &receiver {
        builder = builder.endpoint(r.endpoint());
    }
    if !is_set(ENV_SERVICE_NAME) {
        builder = builder.service_name("tower-cql-example");
    }
    let otlp = builder.install()?;
    println!(
        "exporting to {} over OTLP {} as service.name={}",
        otlp.endpoint(),
        otlp.protocol(),
        otlp.service_name()
    );

    // Spans: the stack's tracing layers, through tracing-opentelemetry
    // (only tower-cql's spans, not the driver's own TRACE spans).
    let spans = otlp
        .tracing_layer()
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.target().starts_with("tower_cql")
        }));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(spans))?;

    // Metrics: the exporter's collector; the stack's close() flushes both.
    let (session, _cluster) = common::connect().await?;
    let collectors = Collectors::with([Arc::new(otlp.collector())]);
    let stack = StackBuilder::new(collectors).build_on(session)?;
    let mut svc = stack.service();
    for cql in [
        "CREATE KEYSPACE IF NOT EXISTS ex WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE IF NOT EXISTS ex.otlp_kv (k int PRIMARY KEY, v text)",
    ] {
        svc.ready().await?.call(CqlRequest::unprepared(cql)).await?;
    }
    let put = Statement::new("INSERT INTO ex.otlp_kv (k, v) VALUES (?, ?)")
        .operation("put")
        .idempotent(true);
    let get = Statement::new("SELECT v FROM ex.otlp_kv WHERE k = ?")
        .operation("get")
        .idempotent(true);
    for k in 0..20i32 {
        svc.ready()
            .await?
            .call(put.request().bind((k, format!("value {k}"))))
            .await?;
    }
    for k in 0..50i32 {
        svc.ready()
            .await?
            .call(get.request().bind((k % 25,)))
            .await?;
    }
    stack.close().await; // drains, then exports the last metrics and spans
    otlp.shutdown().await?;

    let Some(r) = receiver else {
        println!("done: 2 DDL statements, 20 writes and 50 reads exported");
        return Ok(());
    };
    println!(
        "\nthe receiver got {} metrics request(s) and {} trace request(s)",
        r.metrics_requests().len(),
        r.trace_requests().len()
    );
    println!("\nmetrics:");
    for name in r.metric_names() {
        let m = r.metric(&name).expect("listed");
        let points = m
            .histogram()
            .map(|h| {
                h.data_points
                    .iter()
                    .map(|p| {
                        format!(
                            "{}={}",
                            attribute_str(&p.attributes, "db.operation.name")
                                .unwrap_or_else(|| "-".into()),
                            p.count
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        println!("  {name} [{}] {points}", m.metric.unit);
    }
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    for s in r.spans() {
        *by_name.entry(s.span.name).or_default() += 1;
    }
    println!("\nspans:");
    for (name, n) in &by_name {
        println!("  {n:>3} x {name}");
    }
    if let Some(s) = r.spans_named("SELECT ex.otlp_kv").first() {
        println!("\none read span's attributes:");
        for kv in &s.span.attributes {
            if kv.key.starts_with("db.") || kv.key.starts_with("server.") {
                println!(
                    "  {} = {}",
                    kv.key,
                    attribute_str(&s.span.attributes, &kv.key).unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}
