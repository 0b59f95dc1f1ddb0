//! JSON lines end to end: the real scylla driver against testkit, the
//! stack tracing every request on the server, and the JSON-lines
//! exporter writing each request and, once fetched, its server trace.

mod support;

use scylla::client::session_builder::SessionBuilder;
use serde_json::Value;
use tower_cql_core::server_trace::ServerTraceConfig;
use tower_cql_core::{Collectors, CqlRequest};
use tower_cql_exporters::stdout::JsonLines;
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_testkit::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_traced_request_has_its_server_trace_line_without_values() {
    let cluster = Cluster::builder().nodes(3).start().await.unwrap();
    let session = SessionBuilder::new()
        .known_nodes_addr(cluster.contact_points())
        .build()
        .await
        .unwrap();
    let buf = support::Captured::default();
    let stack = StackBuilder::new(Collectors::with([JsonLines::to_writer(Box::new(
        buf.clone(),
    ))]))
    .server_trace(ServerTraceConfig {
        sample_ratio: 1.0,
        max_fetches_per_second: 1000,
        ..ServerTraceConfig::default()
    })
    .build_on(session)
    .unwrap();
    for cql in [
        "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 3}",
        "CREATE TABLE ks.kv (k int PRIMARY KEY, v text)",
        "INSERT INTO ks.kv (k, v) VALUES (424242, 'secret-value')",
    ] {
        stack.call(CqlRequest::unprepared(cql)).await.unwrap();
    }
    // a literal in the statement text: the server's "Parsing ..." step has it
    for _ in 0..3 {
        let read = CqlRequest::unprepared("SELECT v FROM ks.kv WHERE k = 424242").operation("get");
        stack.call(read).await.unwrap();
    }
    stack.close().await; // fetches drained, then the collectors flushed
    let stats = stack.server_traces().unwrap().stats();
    assert_eq!(
        (stats.fetched, stats.failed, stats.skipped),
        (6, 0, 0),
        "{stats:?}"
    );

    let text = buf.text();
    assert!(!text.contains("424242"), "a literal was written: {text}");
    assert!(
        !text.contains("secret-value"),
        "a value was written: {text}"
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let of =
        |event: &str| -> Vec<&Value> { lines.iter().filter(|l| l["event"] == event).collect() };
    let requests = of("request");
    let traces = of("server_trace");
    assert_eq!(requests.len(), 6, "{text}");
    assert_eq!(traces.len(), 6, "one line per trace: {text}");
    let nodes: Vec<String> = (0..3)
        .map(|i| cluster.node_addr(i).ip().to_string())
        .collect();
    for r in &requests {
        let id = r["tracing_id"]
            .as_str()
            .expect("a traced request names its trace");
        let t: Vec<_> = traces.iter().filter(|t| t["tracing_id"] == id).collect();
        assert_eq!(t.len(), 1, "{id}: {text}");
        let t = t[0];
        assert_eq!(t["kind"], r["kind"]);
        assert_eq!(t["operation"], r["operation"]);
        assert!(
            nodes.contains(&t["coordinator"].as_str().unwrap().to_string()),
            "{t}"
        );
        assert!(t["duration_us"].as_f64().unwrap() > 0.0, "{t}");
        assert!(t["started_at_unix_ms"].as_f64().unwrap() > 1.6e12, "{t}");
        assert!(
            t["request"].as_str().unwrap().starts_with("Execute CQL3"),
            "{t}"
        );
        let steps = t["steps"].as_array().unwrap();
        assert!(!steps.is_empty(), "{t}");
        for s in steps {
            assert!(
                nodes.contains(&s["node"].as_str().unwrap().to_string()),
                "{s}"
            );
            assert!(s["elapsed_us"].as_f64().unwrap() >= 0.0, "{s}");
            assert!(s["activity"].is_string() && s["thread"].is_string(), "{s}");
        }
    }
    let read = traces
        .iter()
        .find(|t| t["operation"] == "get")
        .expect("a read's trace");
    let activities: Vec<&str> = read["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["activity"].as_str().unwrap())
        .collect();
    assert!(
        activities.contains(&"Parsing SELECT v FROM ks.kv WHERE k = ?"),
        "{activities:#?}"
    );
}
