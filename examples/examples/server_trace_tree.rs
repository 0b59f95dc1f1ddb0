//! One server-side trace stitched into OpenTelemetry, printed as a tree:
//! the client span of the slowest read, its server spans (one per node,
//! coordinator or replica, with the node's address and duration, the
//! slowest marked) and their span events (the node's sanitised steps, at
//! their elapsed times).
//!
//! ```text
//! cargo run -p tower-cql-examples --example server_trace_tree
//! SCYLLA_URI=127.0.0.1:9042 cargo run -p tower-cql-examples --example server_trace_tree
//! ```
//!
//! Without `SCYLLA_URI` it starts an embedded three-node testkit cluster
//! on 127.0.0.1-3 and delays node 1's (127.0.0.2) reads of the table by
//! 50 ms, and reads (24 times, more if that node has coordinated none
//! yet), so the slowest read is one that node coordinated. Against a
//! real cluster nothing is injected: the tree shows whatever read was
//! slowest. The stack traces every request on the server
//! (`sample_ratio: 1.0`), and `SpanCollector` turns each request into a
//! client span and its server trace into child spans, kept in memory by
//! the OpenTelemetry SDK's `InMemorySpanExporter`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tower_cql_core::server_trace::ServerTraceConfig;
use tower_cql_core::{Collectors, CqlRequest, Statement};
use tower_cql_exporters::spans::SpanCollector;
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_testkit::Fault;

/// How long the embedded cluster holds each read of the table on the
/// delayed node.
pub(crate) const DELAY: Duration = Duration::from_millis(50);

/// The node (counted from 0) whose reads the embedded cluster delays.
const DELAYED_NODE: usize = 1;

/// Reads run, every one traced on the server.
const READS: usize = 24;

/// The driver sends each read to a replica of its own choosing: past
/// [`READS`], reads go on until the delayed node has coordinated one, up
/// to this many.
const MAX_READS: usize = 240;

/// The row's value: never in the tree (the steps are sanitised).
pub(crate) const SECRET_VALUE: &str = "secret-value-5p1ce";

/// The row's key, bound to every read: never in the tree either.
pub(crate) const SECRET_KEY: &str = "user-4711-key";

/// What a run produced.
#[derive(Debug)]
pub(crate) struct Report {
    /// The node the embedded cluster delayed (`None` against `SCYLLA_URI`).
    pub(crate) delayed: Option<IpAddr>,
    /// The tree of the slowest read's client span and its server spans.
    pub(crate) tree: String,
}

#[tokio::main]
async fn main() {
    let uri = tower_cql_examples::scylla_uri();
    match run(uri).await {
        Ok(report) => {
            print!("{}", report.tree);
            if let Some(node) = report.delayed {
                println!("(the embedded cluster delayed {node}'s reads by {DELAY:?})");
            }
        }
        Err(e) => {
            eprintln!("server_trace_tree failed: {e}");
            std::process::exit(1);
        }
    }
}

/// Runs the reads against `uri` (or an embedded three-node testkit cluster
/// with a delay on one node's reads) and renders the slowest read's trace.
pub(crate) async fn run(uri: Option<String>) -> Result<Report, Box<dyn std::error::Error>> {
    let (session, cluster) = tower_cql_examples::connect(
        uri,
        " (no fault injected: the tree shows the slowest read as it was)",
    )
    .await?;

    // Spans end in memory; the collector makes the client span of each
    // request and, once its trace is read back, the server spans under it.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let collectors = Collectors::with([Arc::new(SpanCollector::new(
        provider.tracer("server_trace_tree"),
    ))]);
    let stack = StackBuilder::new(collectors)
        .without_trace() // no `tracing` spans: SpanCollector makes the client spans
        .server_trace(ServerTraceConfig {
            sample_ratio: 1.0, // every request traced on the server
            max_fetches_per_second: 100,
            // A real cluster writes its traces in the background (Scylla
            // every 2 s): the default reads span 3.2 s; give close the
            // time to finish them all.
            close_timeout: Duration::from_secs(10),
            ..ServerTraceConfig::default()
        })
        .build_on(session)?;

    // Replication factor 3 on the embedded cluster (a read's trace shows
    // its replicas), 1 on a real one (a single node is enough).
    let rf = if cluster.is_some() { 3 } else { 1 };
    for cql in [
        format!(
            "CREATE KEYSPACE IF NOT EXISTS trace_tree WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"
        ),
        "CREATE TABLE IF NOT EXISTS trace_tree.kv (k text PRIMARY KEY, v text)".to_owned(),
    ] {
        stack.call(CqlRequest::unprepared(cql)).await?;
    }
    let put = Statement::new("INSERT INTO trace_tree.kv (k, v) VALUES (?, ?)").idempotent(true);
    stack.execute(&put, (SECRET_KEY, SECRET_VALUE)).await?;

    let delayed = cluster.as_ref().map(|cluster| {
        cluster.faults().add(
            Fault::delay(DELAY)
                .node(DELAYED_NODE)
                .table("trace_tree", "kv")
                .reads(),
        );
        let node = cluster.node_addr(DELAYED_NODE).ip();
        println!("the embedded cluster holds every read of trace_tree.kv on {node} for {DELAY:?}");
        node
    });
    let get = Statement::new("SELECT v FROM trace_tree.kv WHERE k = ?")
        .operation("get")
        .idempotent(true);
    // A client span ends with its request, naming the node it was sent to.
    let sent_to = |node: IpAddr| -> Result<bool, Box<dyn std::error::Error>> {
        Ok(exporter.get_finished_spans()?.iter().any(|s| {
            s.name == "SELECT trace_tree.kv"
                && attribute(&s.attributes, "server.address")
                    .is_some_and(|a| a.as_str() == node.to_string().as_str())
        }))
    };
    let mut reads = 0;
    loop {
        stack.execute(&get, (SECRET_KEY,)).await?;
        reads += 1;
        let done = reads >= READS && delayed.map_or(Ok(true), sent_to)?;
        if done || reads >= MAX_READS {
            break;
        }
    }

    // Closing waits for the trace fetches (up to `close_timeout`), then the
    // collectors flush: every server span has ended by now.
    stack.close().await;
    if let Some(traces) = stack.server_traces() {
        let s = traces.stats();
        println!(
            "{reads} reads; server traces: {} sampled, {} fetched, {} skipped, {} failed",
            s.sampled, s.fetched, s.skipped, s.failed
        );
    }
    provider.force_flush()?;
    let spans = exporter.get_finished_spans()?;
    drop(cluster);

    let tree = render_slowest(&spans, "SELECT trace_tree.kv")
        .ok_or("no read with server spans was exported")?;
    Ok(Report { delayed, tree })
}

fn duration(s: &SpanData) -> Duration {
    s.end_time
        .duration_since(s.start_time)
        .unwrap_or(Duration::ZERO)
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// `12 µs`, `3.4 ms`, `1.25 s`.
fn human(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.1} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

/// The tree of the slowest span named `client` that has server children:
/// the client span, its server spans (coordinator first, then replicas by
/// start time, the slowest marked) and each one's events.
pub(crate) fn render_slowest(spans: &[SpanData], client: &str) -> Option<String> {
    let children = |parent: &SpanData| -> Vec<&SpanData> {
        let mut kids: Vec<&SpanData> = spans
            .iter()
            .filter(|s| {
                s.parent_span_id == parent.span_context.span_id()
                    && s.span_context.trace_id() == parent.span_context.trace_id()
                    && s.name.starts_with("cql.server.")
            })
            .collect();
        kids.sort_by_key(|s| (s.name != "cql.server.coordinator", s.start_time));
        kids
    };
    let root = spans
        .iter()
        .filter(|s| s.name == client && !children(s).is_empty())
        .max_by_key(|s| duration(s))?;
    let kids = children(root);
    let slowest = kids.iter().map(|s| duration(s)).max();

    let mut out = String::new();
    let node = attribute(&root.attributes, "server.address")
        .map_or_else(|| "?".to_owned(), |v| v.as_str().into_owned());
    let _ = writeln!(
        out,
        "{}  {}  (client, sent to {node})",
        root.name,
        human(duration(root))
    );
    for (i, kid) in kids.iter().enumerate() {
        let last = i + 1 == kids.len();
        let (branch, rail) = if last {
            ("└─", "    ")
        } else {
            ("├─", "│   ")
        };
        let node = attribute(&kid.attributes, "server.address")
            .map_or_else(|| "?".to_owned(), |v| v.as_str().into_owned());
        let mark = if Some(duration(kid)) == slowest {
            "   <- slowest"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{branch} {} {node}  {}{mark}",
            kid.name,
            human(duration(kid))
        );
        let events = &kid.events.events;
        for (j, e) in events.iter().enumerate() {
            let twig = if j + 1 == events.len() {
                "└─"
            } else {
                "├─"
            };
            let elapsed = match attribute(&e.attributes, "source_elapsed_us") {
                Some(Value::I64(us)) => Duration::from_micros(u64::try_from(*us).unwrap_or(0)),
                _ => e
                    .timestamp
                    .duration_since(kid.start_time)
                    .unwrap_or(Duration::ZERO),
            };
            let _ = writeln!(out, "{rail}{twig} {:>8}  {}", human(elapsed), e.name);
        }
    }
    Some(out)
}
