//! A frame whose collection value announces 2^31-1 elements, over TCP: it
//! is answered on its stream, the same connection answers the next query,
//! and the server serves new connections. (Every kind of lying count,
//! with the memory it may cost bounded, is in `tests/hostile_frames.rs`.)

use tokio::net::TcpStream;
use tower_cql_testkit::Cluster;

use super::raw;

const QUERY: u8 = 0x07;
const RESULT: u8 = 0x08;

/// A QUERY body at ONE with `values` (each a `[bytes]`).
fn query(text: &str, values: &[&[u8]]) -> Vec<u8> {
    let mut b = (text.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(text.as_bytes());
    b.extend_from_slice(&1u16.to_be_bytes());
    b.push(if values.is_empty() { 0 } else { 0x01 });
    if !values.is_empty() {
        b.extend_from_slice(&(values.len() as u16).to_be_bytes());
        for v in values {
            b.extend_from_slice(&(v.len() as u32).to_be_bytes());
            b.extend_from_slice(v);
        }
    }
    b
}

async fn connect(cluster: &Cluster) -> TcpStream {
    let mut sock = TcpStream::connect(cluster.node_addr(0)).await.unwrap();
    let mut startup = 1u16.to_be_bytes().to_vec();
    for s in ["CQL_VERSION", "3.0.0"] {
        startup.extend_from_slice(&(s.len() as u16).to_be_bytes());
        startup.extend_from_slice(s.as_bytes());
    }
    raw::send(&mut sock, 0, 0x01, &startup).await;
    assert_eq!(raw::recv(&mut sock).await.1, 0x02, "READY");
    sock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_collection_count_is_answered_on_its_stream_and_the_connection_carries_on() {
    let cluster = Cluster::start().await.unwrap();
    let mut sock = connect(&cluster).await;
    for cql in [
        "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE ks.t (k int PRIMARY KEY, l list<int>, m map<int, int>)",
    ] {
        raw::send(&mut sock, 1, QUERY, &query(cql, &[])).await;
        let (_, op, body) = raw::recv(&mut sock).await;
        assert_eq!(op, RESULT, "{cql}: {}", String::from_utf8_lossy(&body));
    }
    let key = 1i32.to_be_bytes();
    let count = i32::MAX.to_be_bytes();
    for column in ["l", "m"] {
        let text = format!("INSERT INTO ks.t (k, {column}) VALUES (?, ?)");
        raw::send(&mut sock, 77, QUERY, &query(&text, &[&key, &count])).await;
        let (stream, op, body) = raw::recv(&mut sock).await;
        assert_eq!((stream, op), (77, 0x00), "an ERROR on the lying stream");
        assert_eq!(i32::from_be_bytes(body[..4].try_into().unwrap()), 0x2200);
        let msg = String::from_utf8_lossy(&body[6..]);
        assert!(
            msg.contains("2147483647"),
            "the message names the count: {msg}"
        );
    }
    let text = "INSERT INTO ks.t (k, l) VALUES (?, [1, 2])";
    raw::send(&mut sock, 78, QUERY, &query(text, &[&2i32.to_be_bytes()])).await;
    assert_eq!(raw::recv(&mut sock).await.1, RESULT);

    let mut other = connect(&cluster).await;
    raw::send(&mut other, 5, QUERY, &query("SELECT l FROM ks.t", &[])).await;
    let (stream, op, _) = raw::recv(&mut other).await;
    assert_eq!((stream, op), (5, RESULT));
    assert_eq!(cluster.counters().writes_applied(), 1);
}
