//! Stopping the Prometheus exporter leaves nothing running (its own test
//! binary: the recorder is global, one per process).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_cql_exporters::prometheus::PrometheusExporter;

async fn http(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("the response ends (the connection is closed)")
        .unwrap();
    out
}

/// The exporter serves scrapes until stopped, and once stopped and
/// dropped none of its tasks is left in the runtime (the recorder's
/// periodic upkeep included: it was a task nothing could stop).
#[tokio::test(flavor = "current_thread")]
async fn a_stopped_exporter_leaves_no_task_behind() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let exporter = PrometheusExporter::builder()
        .listen(([127, 0, 0, 1], port).into())
        .install()
        .unwrap();
    metrics::counter!("stop_test_total").increment(3);
    let addr = exporter.address();
    let got = http(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("stop_test_total 3"), "{got}");
    // a HEAD has the headers only; another method is refused
    let head = http(
        addr,
        "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "{head}");
    let post = http(
        addr,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    exporter.stop();
    drop(exporter);
    // (aborted tasks end when the runtime next polls them)
    for _ in 0..100 {
        if metrics.num_alive_tasks() == before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        metrics.num_alive_tasks(),
        before,
        "tasks left running after stop() and drop"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening"
    );
}
