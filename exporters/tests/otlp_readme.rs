//! The README's OTLP snippet, as a user would copy it, is safe: with every
//! target at TRACE (the snippet sets no filter), no bound value reaches a
//! byte the OTLP endpoint receives. The scylla driver records partition
//! key values in its TRACE spans; `tracing_layer()` must leave them out.
//!
//! Its own binary: the snippet installs the global subscriber.

mod support;

use std::sync::Arc;

use prost::Message as _;
use tower::ServiceExt;
use tower_cql_core::{Collectors, CqlRequest, Statement};
use tower_cql_exporters::otlp::OtlpExporterBuilder;
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_testkit::otlp::OtlpReceiver;
use tracing_subscriber::prelude::*;

const MARKER: &str = "pk-MARKER-3b7e91";

/// The README snippet (README.md, "Exporters") is copied line for line
/// below, but for its builder: `OtlpExporter::builder()` reads
/// `OTEL_EXPORTER_OTLP_ENDPOINT` from the process, which a test cannot set
/// (`set_var` is unsafe), so the same builder is given that variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_snippet_exports_no_bound_value() -> Result<(), Box<dyn std::error::Error>> {
    let receiver = OtlpReceiver::start().await?;
    let endpoint = receiver.endpoint();
    let builder = || OtlpExporterBuilder::from_vars([("OTEL_EXPORTER_OTLP_ENDPOINT", &*endpoint)]);

    // --- the README snippet ---
    let otlp = builder().service_name("checkout").install()?; // OTEL_EXPORTER_OTLP_* apply; explicit calls win
    tracing_subscriber::registry()
        .with(otlp.tracing_layer())
        .init(); // the stack's spans
    let collectors = Collectors::with([Arc::new(otlp.collector())]);
    // ... stack.close().await exports the last metrics and spans; then:
    // ---

    let (_cluster, driver) = support::driver(&collectors).await;
    let stack = StackBuilder::new(collectors).build(driver)?;
    let svc = stack.service();
    let run = |req: CqlRequest| svc.clone().oneshot(req);
    for cql in [
        "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE ks.tk (k text PRIMARY KEY, v text)",
    ] {
        run(CqlRequest::unprepared(cql)).await?;
    }
    // The marker is the partition key: the driver's TRACE span records it.
    let put = Statement::new("INSERT INTO ks.tk (k, v) VALUES (?, ?)").operation("put");
    let get = Statement::new("SELECT v FROM ks.tk WHERE k = ?").operation("get");
    run(put.request().bind((MARKER, MARKER))).await?;
    let resp = run(get.request().bind((MARKER,))).await?;
    assert_eq!(resp.single_row::<(String,)>()?.0, MARKER);

    // --- the README snippet, its end ---
    stack.close().await;
    otlp.shutdown().await?;
    // ---

    // The export happened (the test could see a leak)...
    assert!(
        !receiver.spans_named("INSERT ks.tk").is_empty()
            && !receiver.spans_named("SELECT ks.tk").is_empty(),
        "the stack's spans were exported"
    );
    assert!(
        receiver
            .metric_names()
            .iter()
            .any(|m| m == "db.client.operation.duration"),
        "the metrics were exported"
    );
    // ... and no byte of it holds the marker: every request, encoded as it
    // came over the wire, and its headers.
    let mut leaks = Vec::new();
    for r in receiver.metrics_requests() {
        if contains(&r.request.encode_to_vec(), MARKER)
            || format!("{:?}", r.headers).contains(MARKER)
        {
            leaks.push(format!("{:?}", r.request));
        }
    }
    for r in receiver.trace_requests() {
        if contains(&r.request.encode_to_vec(), MARKER)
            || format!("{:?}", r.headers).contains(MARKER)
        {
            leaks.push("a trace export request, in:".into());
            for s in r
                .request
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans)
            {
                let attrs = s.attributes.iter().map(|kv| (&kv.key, format!("{kv:?}")));
                let events = s.events.iter().map(|e| (&e.name, format!("{e:?}")));
                for (name, text) in attrs.chain(events) {
                    if text.contains(MARKER) {
                        leaks.push(format!("  span {:?}: {name}", s.name));
                    }
                }
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "the bound value {MARKER} was exported:\n{}",
        leaks.join("\n")
    );
    Ok(())
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}
