//! Server traces stitched into OpenTelemetry, end to end: the real scylla
//! driver against a three-node testkit cluster with a delay injected on
//! one node, the stack tracing every request on the server, and the
//! spans exported over OTLP to an in-process receiver. Both span paths:
//! `SpanCollector` and the `tracing` layers.

mod support;

use std::sync::Arc;
use std::time::Duration;

use scylla::client::session_builder::SessionBuilder;
use tower_cql_core::server_trace::ServerTraceConfig;
use tower_cql_core::{Collectors, CqlRequest, IntoCollector, Statement};
use tower_cql_exporters::otlp::{OtlpExporter, Protocol};
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_testkit::otlp::{FoundSpan, OtlpReceiver, attribute_str};
use tower_cql_testkit::{Cluster, Fault};
use tracing_subscriber::prelude::*;

const DELAY: Duration = Duration::from_millis(60);

fn duration(s: &FoundSpan) -> Duration {
    Duration::from_nanos(s.span.end_time_unix_nano - s.span.start_time_unix_nano)
}

/// Runs reads on a 3-node cluster whose node 1 is slow, every request
/// traced on the server: at least 12, and until node 1 coordinated one
/// (the driver picks among the three replicas at random: 12 reads missed
/// it about one run in a hundred). Returns the spans the receiver got,
/// node 1 and the number of reads.
async fn run(tracing_path: bool) -> (Vec<FoundSpan>, std::net::IpAddr, usize) {
    let receiver = OtlpReceiver::start().await.unwrap();
    let otlp = OtlpExporter::builder()
        .protocol(Protocol::Grpc)
        .endpoint(receiver.endpoint())
        .service_name("server-traces")
        .metric_export_interval(Duration::from_secs(3600))
        .server_trace_ratio(1.0)
        .install()
        .unwrap();
    let subscriber = tracing_subscriber::registry().with(otlp.tracing_layer());
    let _guard = tracing::subscriber::set_default(subscriber);

    let cluster = Cluster::builder().nodes(3).start().await.unwrap();
    let session = SessionBuilder::new()
        .known_nodes_addr(cluster.contact_points())
        .build()
        .await
        .unwrap();
    let collector = if tracing_path {
        Arc::new(otlp.server_trace_collector()).into_collector()
    } else {
        Arc::new(otlp.span_collector()).into_collector()
    };
    // the exporter's setting, every read traced
    let config = otlp.server_trace_config().expect("server_trace_ratio set");
    assert_eq!(config.sample_ratio, 1.0);
    let mut builder =
        StackBuilder::new(Collectors::with([collector])).server_trace(ServerTraceConfig {
            max_fetches_per_second: 1000,
            // every trace fetched before close gives up, on a loaded
            // machine too (a trace abandoned by close makes no spans)
            close_timeout: Duration::from_secs(30),
            ..config
        });
    if !tracing_path {
        builder = builder.without_trace();
    }
    let stack = builder.build_on(session).unwrap();
    for cql in [
        "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 3}",
        "CREATE TABLE ks.kv (k int PRIMARY KEY, v text)",
        "INSERT INTO ks.kv (k, v) VALUES (7, 'secret-value')",
    ] {
        stack.call(CqlRequest::unprepared(cql)).await.unwrap();
    }
    let slow = cluster.node_addr(1).ip();
    cluster
        .faults()
        .add(Fault::delay(DELAY).node(1).table("ks", "kv").reads());
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?")
        .operation("get")
        .idempotent(true);
    let mut reads = 0;
    let mut slow_coordinated = false;
    while reads < 12 || (!slow_coordinated && reads < 200) {
        let resp = stack.execute(&get, (7,)).await.unwrap();
        slow_coordinated |= resp.info().coordinator.map(|a| a.ip()) == Some(slow);
        reads += 1;
    }
    stack.close().await; // the fetches finish before the collectors' flush
    let stats = stack.server_traces().unwrap().stats();
    assert_eq!((stats.failed, stats.skipped), (0, 0), "{stats:?}");
    otlp.shutdown().await.unwrap();
    (receiver.spans(), slow, reads)
}

fn check(spans: &[FoundSpan], slow: std::net::IpAddr, reads: usize) {
    let clients: Vec<&FoundSpan> = spans
        .iter()
        .filter(|s| s.span.name == "SELECT ks.kv")
        .collect();
    assert_eq!(
        clients.len(),
        reads,
        "{:?}",
        spans.iter().map(|s| &s.span.name).collect::<Vec<_>>()
    );
    let children = |c: &FoundSpan| -> Vec<&FoundSpan> {
        spans
            .iter()
            .filter(|s| {
                s.span.parent_span_id == c.span.span_id && s.span.trace_id == c.span.trace_id
            })
            .filter(|s| s.span.name.starts_with("cql.server."))
            .collect()
    };
    let mut slow_seen = 0;
    for c in &clients {
        let kids = children(c);
        let coordinators: Vec<_> = kids
            .iter()
            .filter(|s| s.span.name == "cql.server.coordinator")
            .collect();
        assert_eq!(coordinators.len(), 1, "one coordinator span per read");
        let coordinator = coordinators[0];
        let node = attribute_str(&coordinator.span.attributes, "server.address").unwrap();
        assert_eq!(
            attribute_str(&coordinator.span.attributes, "network.peer.address").as_deref(),
            Some(node.as_str())
        );
        // the client span's node is the coordinator of the server trace
        assert_eq!(
            attribute_str(&c.span.attributes, "server.address").as_deref(),
            Some(node.as_str())
        );
        let events: Vec<&str> = coordinator
            .span
            .events
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert!(events.contains(&"Request complete"), "{events:?}");
        // The coordinator span starts within the client span. (The client
        // span is stamped from the instant its request started, however
        // late its event is emitted; `sessions.started_at` has millisecond
        // precision, so the coordinator's may start up to 1 ms early.)
        assert!(
            coordinator.span.start_time_unix_nano >= c.span.start_time_unix_nano - 2_000_000,
            "the coordinator span starts {} ns before the client span",
            c.span.start_time_unix_nano - coordinator.span.start_time_unix_nano
        );
        if node == slow.to_string() {
            slow_seen += 1;
            assert!(
                duration(coordinator) >= DELAY,
                "the slow node's span shows the delay: {:?}",
                duration(coordinator)
            );
            let complete = coordinator
                .span
                .events
                .iter()
                .find(|e| e.name == "Request complete")
                .unwrap();
            assert!(
                complete.time_unix_nano - coordinator.span.start_time_unix_nano
                    >= DELAY.as_nanos() as u64
            );
        } else {
            assert!(
                duration(coordinator) < DELAY,
                "{node}: {:?}",
                duration(coordinator)
            );
        }
        for s in &kids {
            assert_eq!(
                attribute_str(&s.span.attributes, "db.system.name").as_deref(),
                Some("cassandra")
            );
            assert!(attribute_str(&s.span.attributes, "server.address").is_some());
        }
    }
    assert!(
        slow_seen > 0,
        "no read was coordinated by the slow node {slow}"
    );
    let all = format!("{spans:?}");
    assert!(!all.contains("secret-value"), "a value was exported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_collector_parents_one_server_span_per_node_on_the_client_span() {
    tower_cql_testkit::tracing_setup::global_registry();
    let (spans, slow, reads) = run(false).await;
    check(&spans, slow, reads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_path_parents_server_spans_on_the_request_span() {
    tower_cql_testkit::tracing_setup::global_registry();
    let (spans, slow, reads) = run(true).await;
    check(&spans, slow, reads);
}
