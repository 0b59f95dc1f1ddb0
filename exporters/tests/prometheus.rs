//! The Prometheus endpoint, checked with `promtool check metrics` and by a
//! real Prometheus server that scrapes it and answers a PromQL query.
//! `.ci/run` installs both (Debian package `prometheus`); without them the
//! parts that need them say they were skipped.

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Service, ServiceExt};
use tower_cql_core::{Collectors, Statement};
use tower_cql_exporters::metrics_bridge::MetricsBridge;
use tower_cql_exporters::prometheus::PrometheusExporter;
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_testkit::{Fault, InjectedError, Opcode};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn http_get(addr: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_passes_promtool_and_a_prometheus_server_queries_it() {
    let port = free_port();
    let exporter = PrometheusExporter::builder()
        .listen(([127, 0, 0, 1], port).into())
        .install()
        .unwrap();
    assert!(exporter.address().ip().is_loopback());

    // Real traffic through the stack against testkit.
    let collectors = Collectors::with([Arc::new(MetricsBridge::new())]);
    let (cluster, driver) = support::driver(&collectors).await;
    let stack = StackBuilder::new(collectors).build(driver).unwrap();
    let mut svc = stack.service();
    support::create_kv(&mut svc).await;
    cluster.faults().add(
        Fault::error(InjectedError::Overloaded)
            .opcode(Opcode::Execute)
            .times(2),
    );
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?")
        .operation("get")
        .idempotent(true);
    for k in 0..50i32 {
        svc.ready()
            .await
            .unwrap()
            .call(get.request().bind((k,)))
            .await
            .unwrap();
    }

    let text = http_get(&exporter.address().to_string(), "/metrics").await;
    assert!(
        text.contains("# TYPE db_client_operation_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("# HELP db_client_operation_duration_seconds"),
        "{text}"
    );
    assert!(
        text.contains("db_client_operation_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(
        text.contains("le=\"0.005\""),
        "the conventions' buckets: {text}"
    );
    assert!(text.contains("db_operation_name=\"get\""), "{text}");
    assert!(
        text.contains("db_client_retries_total{error_type=\"overloaded\"} 2"),
        "{text}"
    );
    assert!(
        !text.contains("SELECT v FROM"),
        "no statement text in labels"
    );

    if have("promtool") {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all_sync(text.as_bytes());
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("SKIPPED promtool check: promtool is not installed (apt-get install prometheus)");
    }

    if have("prometheus") {
        let dir = std::env::temp_dir().join(format!("tower-cql-prom-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tower-cql\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            ),
        )
        .unwrap();
        let web = format!("127.0.0.1:{}", free_port());
        let mut server = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let query = "/api/v1/query?query=sum(db_client_operation_duration_seconds_count%7Bdb_operation_name%3D%22get%22%7D)";
        let answer = loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if tokio::net::TcpStream::connect(&web).await.is_ok() {
                let body = http_get(&web, query).await;
                if body.contains("\"value\"") {
                    break body;
                }
            }
            if Instant::now() > deadline {
                let _ = server.kill();
                panic!("prometheus never answered the query");
            }
        };
        let _ = server.kill();
        let _ = server.wait();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            answer.contains("\"50\""),
            "sum of request counts over the scrape: {answer}"
        );
    } else {
        eprintln!(
            "SKIPPED prometheus scrape: the prometheus server is not installed (apt-get install prometheus)"
        );
    }
    stack.close().await;
}

trait WriteAllSync {
    fn write_all_sync(self, data: &[u8]);
}

impl WriteAllSync for std::process::ChildStdin {
    fn write_all_sync(mut self, data: &[u8]) {
        use std::io::Write;
        self.write_all(data).unwrap();
    }
}

/// Every metric the Grafana dashboard queries is one the bridge exports.
#[test]
fn the_grafana_dashboard_queries_exported_metrics() {
    let dashboard = include_str!("../grafana/tower-cql.json");
    let exported = [
        "db_client_operation_duration_seconds_bucket",
        "db_client_operation_duration_seconds_count",
        "db_client_attempt_duration_seconds_bucket",
        "db_client_retries_total",
        "db_client_throttled_total",
        "db_client_shed_total",
        "db_client_breaker_transitions_total",
        "db_client_concurrency_limit",
        "db_client_returned_rows_total",
        "db_client_pages_total",
        "db_client_streams_total",
    ];
    let mut used = 0;
    for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("db_client_") {
            assert!(
                exported.contains(&word),
                "the dashboard queries {word}, which is not exported"
            );
            used += 1;
        }
    }
    assert!(
        used >= exported.len(),
        "the dashboard uses the exported metrics"
    );
    for name in exported {
        assert!(dashboard.contains(name), "{name} has no panel");
    }
}
