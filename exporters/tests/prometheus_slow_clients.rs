//! The Prometheus exporter when clients connect and send nothing (a
//! connection storm, a slow or hostile client): its own test binary (the
//! recorder is global, one per process; it counts the runtime's tasks).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_cql_exporters::prometheus::PrometheusExporter;

async fn http(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // (refused, the connection may be closed before the request is sent)
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("the response ends (the connection is closed)")
        .unwrap_or_default();
    out
}

/// Waits (up to 10 s) until the runtime's count of live tasks has not
/// changed for 200 ms, and returns it.
async fn settled_tasks() -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    let start = Instant::now();
    let mut last = metrics.num_alive_tasks();
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_millis(200) && start.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = metrics.num_alive_tasks();
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    last
}

/// Each connection the exporter takes holds a task and a descriptor for
/// up to 10 s while its request comes in. Clients that connect and send
/// nothing must not make it hold one for each of them (200 here: a storm
/// could use up the application's descriptors): past its cap it closes a
/// connection at once (a `503` written first, where the socket takes it),
/// so a scrape then fails fast instead of waiting. Once they go, scrapes
/// are answered again.
#[tokio::test(flavor = "current_thread")]
async fn idle_clients_hold_no_more_than_the_cap_of_connections() {
    let exporter = PrometheusExporter::builder()
        .listen(([127, 0, 0, 1], 0).into())
        .install()
        .unwrap();
    let addr = exporter.address();
    let before = settled_tasks().await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let held = settled_tasks().await - before;
    assert!(
        held <= PrometheusExporter::MAX_CONNECTIONS,
        "{held} connections held open for 200 idle clients"
    );
    // a scrape past the cap fails at once, not left waiting (`http`
    // waits up to 10 s for the answer to end)
    let busy = http(addr).await;
    assert!(
        busy.is_empty() || busy.starts_with("HTTP/1.1 503"),
        "{busy:?}"
    );
    drop(idle);
    let start = Instant::now();
    loop {
        let answer = http(addr).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "scrapes never answered again: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    exporter.stop();
}
