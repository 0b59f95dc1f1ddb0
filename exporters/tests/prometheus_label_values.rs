//! Label values with backslashes, quotes, newlines and non-ASCII
//! characters reach `/metrics` as they are: each escaped as the
//! exposition format says (`\\`, `\"`, `\n`), so that a scraper reads back
//! the value given, and two different values never show as the same
//! series. (Own binary: the exporter installs the process's recorder.)

use std::collections::{BTreeSet, HashSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tower_cql_core::event::{Event, RequestEvent};
use tower_cql_core::{Collectors, CqlRequest};
use tower_cql_exporters::metrics_bridge::MetricsBridge;
use tower_cql_exporters::prometheus::PrometheusExporter;

/// The labels of a series line (`name{k="v",...} value`), their values
/// read back as the exposition format says (`\\`, `\"`, `\n`).
fn labels(line: &str) -> Vec<(String, String)> {
    let inner = &line[line.find('{').unwrap() + 1..line.rfind('}').unwrap()];
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "{line}");
        let mut value = String::new();
        loop {
            match chars.next().expect(line) {
                '"' => break,
                '\\' => match chars.next().expect(line) {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    other => panic!("undefined escape \\{other} in {line}"),
                },
                '\n' => panic!("raw newline in {line}"),
                c => value.push(c),
            }
        }
        out.push((key, value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_values_are_escaped_so_that_each_reads_back_as_given() {
    let exporter = PrometheusExporter::builder()
        .listen(([127, 0, 0, 1], 0).into())
        .install()
        .unwrap();
    let collectors = Collectors::with([Arc::new(MetricsBridge::new())]);
    // pairs that differ only in how their backslashes, quotes and
    // newlines would be read
    let names = [
        "a\\b",
        "a\\\\b",
        "c\"d",
        "c\\\"d",
        "e\\\nf",
        "e\n\\f",
        "trailing\\",
        "ünïcödé ✓",
    ];
    for name in names {
        let req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").operation(name);
        collectors.emit(Event::Request(RequestEvent::new(
            req.meta(),
            Duration::from_millis(3),
            None,
        )));
    }
    // and identifiers from statements (a quoted table name)
    let tables = ["T\\", "T\\\\"];
    for table in tables {
        let req = CqlRequest::query(format!("SELECT v FROM ks.\"{table}\" WHERE k = ?"))
            .operation("by_table");
        collectors.emit(Event::Request(RequestEvent::new(
            req.meta(),
            Duration::from_millis(3),
            None,
        )));
    }

    let text = exporter.render();
    let series: Vec<Vec<(String, String)>> = text
        .lines()
        .filter(|l| l.starts_with("db_client_operation_duration_seconds_count{"))
        .map(labels)
        .collect();
    let mut seen = HashSet::new();
    for s in &series {
        assert!(seen.insert(s), "the same series twice: {s:?}\n{text}");
    }
    let value = |s: &Vec<(String, String)>, key: &str| {
        s.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let read: BTreeSet<String> = series
        .iter()
        .map(|s| value(s, "db_operation_name"))
        .filter(|n| n != "by_table")
        .collect();
    let given: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
    assert_eq!(read, given, "operation names as read back\n{text}");
    let read: BTreeSet<String> = series
        .iter()
        .filter(|s| value(s, "db_operation_name") == "by_table")
        .map(|s| value(s, "db_collection_name"))
        .collect();
    let given: BTreeSet<String> = tables.iter().map(|t| t.to_string()).collect();
    assert_eq!(read, given, "table names as read back\n{text}");

    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    match promtool {
        Ok(mut child) => {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(_) => eprintln!(
            "SKIPPED promtool check: promtool is not installed (apt-get install prometheus)"
        ),
    }
}
