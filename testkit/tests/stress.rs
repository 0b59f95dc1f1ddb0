//! Every request gets an answer: thousands in flight at once from the
//! scylla driver, with 1,000-row reads among the writes, on each of the
//! compressions. `TESTKIT_STRESS_REQUESTS` sets how many (default 2,000
//! a session).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use scylla::client::Compression;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::retry::FallthroughRetryPolicy;
use scylla::statement::Consistency;
use tower_cql_testkit::Cluster;

const ROWS: i32 = 1000;

fn requests() -> usize {
    std::env::var("TESTKIT_STRESS_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

async fn session(cluster: &Cluster, compression: Option<Compression>) -> Session {
    let profile = ExecutionProfile::builder()
        .retry_policy(Arc::new(FallthroughRetryPolicy::new()))
        .consistency(Consistency::One)
        .request_timeout(None)
        .build();
    SessionBuilder::new()
        .known_nodes_addr(cluster.contact_points())
        .compression(compression)
        .default_execution_profile_handle(profile.into_handle())
        .build()
        .await
        .expect("the driver connects to testkit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_driver_gets_every_answer_under_concurrency() {
    let cluster = Cluster::builder().nodes(3).start().await.unwrap();
    let setup = session(&cluster, None).await;
    setup
        .query_unpaged(
            "CREATE KEYSPACE stress WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 3}",
            &[],
        )
        .await
        .unwrap();
    setup
        .query_unpaged(
            "CREATE TABLE stress.t (k int, c int, v text, PRIMARY KEY (k, c))",
            &[],
        )
        .await
        .unwrap();
    let ins = setup
        .prepare("INSERT INTO stress.t (k, c, v) VALUES (?, ?, ?)")
        .await
        .unwrap();
    for c in 0..ROWS {
        setup
            .execute_unpaged(&ins, (0, c, format!("row {c} {}", "x".repeat(40))))
            .await
            .unwrap();
    }
    let n = requests();
    for compression in [None, Some(Compression::Lz4), Some(Compression::Snappy)] {
        let s = session(&cluster, compression).await;
        let ins = s
            .prepare("INSERT INTO stress.t (k, c, v) VALUES (?, ?, ?)")
            .await
            .unwrap();
        let sel = s
            .prepare("SELECT * FROM stress.t WHERE k = 0")
            .await
            .unwrap();
        let started = Instant::now();
        let results: Vec<Result<(), String>> = futures::stream::iter(0..n)
            .map(|i| {
                let (s, ins, sel) = (&s, &ins, &sel);
                async move {
                    let answer = async {
                        if i % 50 == 25 {
                            let rows = s
                                .execute_unpaged(sel, ())
                                .await
                                .map_err(|e| e.to_string())?
                                .into_rows_result()
                                .map_err(|e| e.to_string())?;
                            if rows.rows_num() != ROWS as usize {
                                return Err(format!("{} rows", rows.rows_num()));
                            }
                            Ok(())
                        } else {
                            s.execute_unpaged(
                                ins,
                                (1 + (i % 100) as i32, i as i32, format!("v{i}")),
                            )
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                        }
                    };
                    match tokio::time::timeout(Duration::from_secs(10), answer).await {
                        Ok(r) => r,
                        Err(_) => Err("unanswered".to_string()),
                    }
                }
            })
            .buffer_unordered(n.min(1000))
            .collect()
            .await;
        let unanswered = results
            .iter()
            .filter(|r| matches!(r, Err(e) if e == "unanswered"))
            .count();
        let errors: Vec<&String> = results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .filter(|e| *e != "unanswered")
            .take(5)
            .collect();
        eprintln!(
            "{compression:?}: {n} requests, {unanswered} unanswered, in {:?}",
            started.elapsed()
        );
        assert_eq!(
            unanswered, 0,
            "{compression:?}: {unanswered} of {n} requests unanswered"
        );
        assert!(errors.is_empty(), "{compression:?}: errors {errors:?}");
    }
}

/// The frames of every stream id a client can use, written as one byte
/// stream cut at random places (so frames and headers arrive split across
/// reads, and many arrive in one read), and read back while still being
/// written: each stream is answered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_pipelined_frames_cut_anywhere_are_each_answered_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = Cluster::start().await.unwrap();
    let sock = tokio::net::TcpStream::connect(cluster.node_addr(0))
        .await
        .unwrap();
    let (mut rd, mut wr) = sock.into_split();
    let frame = |stream: i16, opcode: u8, body: &[u8]| {
        let mut f = vec![0x04, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.push(opcode);
        f.extend_from_slice(&(body.len() as u32).to_be_bytes());
        f.extend_from_slice(body);
        f
    };
    let mut bytes = frame(0, 0x01, b"\x00\x01\x00\x0bCQL_VERSION\x00\x053.0.0");
    let query = {
        let text = "SELECT key, cluster_name FROM system.local";
        let mut b = (text.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(text.as_bytes());
        b.extend_from_slice(&[0, 1, 0]); // consistency ONE, no flags
        b
    };
    let streams = requests().clamp(1, 32767) as i16;
    for stream in 1..=streams {
        bytes.extend_from_slice(&frame(stream, 0x07, &query));
    }
    let writer = tokio::spawn(async move {
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = fastrand::usize(1..=rest.len().min(3000));
            wr.write_all(&rest[..n]).await.unwrap();
            rest = &rest[n..];
            if fastrand::u8(..) < 8 {
                tokio::task::yield_now().await;
            }
        }
        wr
    });
    let mut seen = vec![0u32; streams as usize + 1];
    let read_all = async {
        for _ in 0..=streams {
            let mut h = [0u8; 9];
            rd.read_exact(&mut h).await.unwrap();
            let len = u32::from_be_bytes(h[5..9].try_into().unwrap()) as usize;
            let mut body = vec![0u8; len];
            rd.read_exact(&mut body).await.unwrap();
            let stream = i16::from_be_bytes([h[2], h[3]]);
            assert!(
                h[4] == 0x02 || h[4] == 0x08,
                "opcode {:#x} on stream {stream}",
                h[4]
            );
            seen[stream as usize] += 1;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_all)
        .await
        .unwrap_or_else(|_| {
            let missing = seen.iter().filter(|n| **n == 0).count();
            panic!("{missing} of {} streams unanswered", streams + 1)
        });
    let _wr = writer.await.unwrap();
    assert!(seen.iter().all(|n| *n == 1), "each stream answered once");
}

/// A request frame (protocol v4).
fn raw_frame(stream: i16, opcode: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0x04, 0];
    f.extend_from_slice(&stream.to_be_bytes());
    f.push(opcode);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// A QUERY frame for `text` at consistency ONE.
fn raw_query(stream: i16, text: &str) -> Vec<u8> {
    let mut b = (text.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(text.as_bytes());
    b.extend_from_slice(&[0, 1, 0]);
    raw_frame(stream, 0x07, &b)
}

/// Reads one frame: (stream, opcode, body).
async fn raw_read(rd: &mut tokio::net::tcp::OwnedReadHalf) -> (i16, u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut h = [0u8; 9];
    rd.read_exact(&mut h).await.unwrap();
    let len = u32::from_be_bytes(h[5..9].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len];
    rd.read_exact(&mut body).await.unwrap();
    (i16::from_be_bytes([h[2], h[3]]), h[4], body)
}

/// A request whose execution panics (the hidden test-only
/// `FaultAction::Panic`, standing for a bug in testkit) is answered on its
/// stream with a `ServerError` that says so, and its connection keeps
/// serving: answered inline, and from the task that answers a delayed
/// request (where a panic used to leave the request unanswered for good,
/// the connection still open: a driver waited for its timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_panics_is_answered_and_its_connection_keeps_serving() {
    use tokio::io::AsyncWriteExt;
    use tower_cql_testkit::{Fault, FaultAction};
    let cluster = Cluster::start().await.unwrap();
    cluster
        .faults()
        .add(Fault::new(FaultAction::Panic).matching("'inline'"));
    cluster
        .faults()
        .add(Fault::delay(Duration::from_millis(20)).matching("'deferred'"));
    cluster
        .faults()
        .add(Fault::new(FaultAction::Panic).matching("'deferred'"));
    let sock = tokio::net::TcpStream::connect(cluster.node_addr(0))
        .await
        .unwrap();
    let (mut rd, mut wr) = sock.into_split();
    wr.write_all(&raw_frame(
        0,
        0x01,
        b"\x00\x01\x00\x0bCQL_VERSION\x00\x053.0.0",
    ))
    .await
    .unwrap();
    assert_eq!(raw_read(&mut rd).await.1, 0x02, "READY");
    let mut stream = 1;
    for path in ["inline", "deferred"] {
        let text = format!("SELECT key FROM system.local WHERE key = '{path}'");
        wr.write_all(&raw_query(stream, &text)).await.unwrap();
        let (s, opcode, body) = tokio::time::timeout(Duration::from_secs(5), raw_read(&mut rd))
            .await
            .unwrap_or_else(|_| panic!("{path}: the request that panicked got no answer"));
        assert_eq!(
            (s, opcode),
            (stream, 0x00),
            "{path}: an ERROR on its stream"
        );
        assert_eq!(body[..4], [0, 0, 0, 0], "{path}: code ServerError (0x0000)");
        let message = String::from_utf8_lossy(&body[6..]);
        assert!(
            message.contains("testkit failed internally") && message.contains("report"),
            "{path}: {message}"
        );
        // the same connection answers the next request
        stream += 1;
        wr.write_all(&raw_query(stream, "SELECT key FROM system.local"))
            .await
            .unwrap();
        let (s, opcode, _) = tokio::time::timeout(Duration::from_secs(5), raw_read(&mut rd))
            .await
            .unwrap_or_else(|_| panic!("{path}: the connection stopped answering"));
        assert_eq!(
            (s, opcode),
            (stream, 0x08),
            "{path}: a RESULT on its stream"
        );
        stream += 1;
    }
    assert_eq!(cluster.open_connections(), 1);

    // the scylla driver sees the error as a ServerError, and goes on
    let s = session(&cluster, None).await;
    let err = s
        .query_unpaged("SELECT key FROM system.local WHERE key = 'inline'", &[])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("testkit failed internally"),
        "{err}"
    );
    s.query_unpaged("SELECT key FROM system.local", &[])
        .await
        .unwrap();
}

/// Connects to node 0 and sends STARTUP.
async fn raw_connect(
    cluster: &Cluster,
) -> (
    tokio::net::tcp::OwnedReadHalf,
    tokio::net::tcp::OwnedWriteHalf,
) {
    use tokio::io::AsyncWriteExt;
    let sock = tokio::net::TcpStream::connect(cluster.node_addr(0))
        .await
        .unwrap();
    let (mut rd, mut wr) = sock.into_split();
    wr.write_all(&raw_frame(
        0,
        0x01,
        b"\x00\x01\x00\x0bCQL_VERSION\x00\x053.0.0",
    ))
    .await
    .unwrap();
    assert_eq!(raw_read(&mut rd).await.1, 0x02, "READY");
    (rd, wr)
}

/// Whether a ROWS result body holds exactly `rows x columns` cells, the
/// columns its metadata names (of types without parameters: int, text).
fn rows_match_metadata(body: &[u8]) -> Result<(), String> {
    let int = |at: usize| i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
    let short = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]) as usize;
    assert_eq!(int(0), 2, "a ROWS result");
    let (flags, columns) = (int(4), int(8) as usize);
    let mut at = 12;
    if flags & 1 != 0 {
        at += 2 + short(at);
        at += 2 + short(at);
    }
    for _ in 0..columns {
        at += 2 + short(at); // name
        at += 2; // type: int or varchar
    }
    let rows = int(at) as usize;
    at += 4;
    for _ in 0..rows * columns {
        if at + 4 > body.len() {
            return Err(format!("{rows} rows of {columns} columns overrun the body"));
        }
        at += 4 + int(at).max(0) as usize;
    }
    if at != body.len() {
        return Err(format!(
            "{rows} rows of {columns} columns end at {at}, the body at {}",
            body.len()
        ));
    }
    Ok(())
}

/// A prepared `SELECT *` executed while the table's columns change
/// (`ALTER TABLE ... ADD` / `DROP`) is answered with rows that match the
/// metadata in the same answer, or with `Unprepared` (a driver then
/// prepares it again): never with rows of the new columns under the
/// statement's old metadata, which no driver can decode (the Python
/// driver drops the connection: "Error decoding response from
/// Cassandra", every request in flight on it fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_select_racing_alter_table_gets_matching_rows() {
    use tokio::io::AsyncWriteExt;
    let cluster = Cluster::start().await.unwrap();
    let (mut rd, mut wr) = raw_connect(&cluster).await;
    let setup = [
        "CREATE KEYSPACE race WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE race.t (k int, c int, v text, PRIMARY KEY (k, c))",
        "INSERT INTO race.t (k, c, v) VALUES (0, 1, 'x')",
        "INSERT INTO race.t (k, c, v) VALUES (0, 2, 'y')",
    ];
    for text in setup {
        wr.write_all(&raw_query(1, text)).await.unwrap();
        assert_eq!(raw_read(&mut rd).await.1, 0x08, "{text}");
    }
    let text = "SELECT * FROM race.t WHERE k = 0";
    let mut body = (text.len() as u32).to_be_bytes().to_vec();
    body.extend_from_slice(text.as_bytes());
    wr.write_all(&raw_frame(1, 0x09, &body)).await.unwrap();
    let (_, opcode, prepared) = raw_read(&mut rd).await;
    assert_eq!(opcode, 0x08, "PREPARE");
    let id_len = u16::from_be_bytes([prepared[4], prepared[5]]) as usize;
    let id = prepared[4..6 + id_len].to_vec(); // [short bytes]
    let mut execute = id;
    execute.extend_from_slice(&[0, 1, 0]); // ONE, no flags: metadata in every answer

    // ALTERs pipelined on a second connection, as fast as they are answered
    let alters = 2 * (requests() / 10).max(50);
    let (mut ard, mut awr) = raw_connect(&cluster).await;
    let alter = tokio::spawn(async move {
        let mut bytes = Vec::new();
        for i in 0..alters {
            let text = if i % 2 == 0 {
                "ALTER TABLE race.t ADD w int"
            } else {
                "ALTER TABLE race.t DROP w"
            };
            bytes.extend_from_slice(&raw_query((i % 30000) as i16, text));
        }
        awr.write_all(&bytes).await.unwrap();
        for _ in 0..alters {
            assert_eq!(raw_read(&mut ard).await.1, 0x08, "ALTER");
        }
        awr
    });
    let executions = requests() * 10;
    let writer = tokio::spawn(async move {
        for chunk in 0..executions / 100 {
            let mut bytes = Vec::new();
            for i in 0..100 {
                bytes.extend_from_slice(&raw_frame(
                    ((chunk * 100 + i) % 30000) as i16,
                    0x0A,
                    &execute,
                ));
            }
            wr.write_all(&bytes).await.unwrap();
        }
        wr
    });
    let (mut unprepared, mut mismatched) = (0, Vec::new());
    for _ in 0..executions / 100 * 100 {
        let (_, opcode, body) = raw_read(&mut rd).await;
        match opcode {
            0x08 => {
                if let Err(e) = rows_match_metadata(&body) {
                    mismatched.push(e);
                }
            }
            0x00 if body[..4] == [0, 0, 0x25, 0] => unprepared += 1,
            _ => panic!("opcode {opcode:#x}: {}", String::from_utf8_lossy(&body)),
        }
    }
    let _ = (writer.await.unwrap(), alter.await.unwrap());
    eprintln!(
        "{executions} executions racing {alters} ALTERs: {unprepared} unprepared, {} mismatched",
        mismatched.len()
    );
    assert!(
        mismatched.is_empty(),
        "{} answers with rows that do not match their metadata, e.g. {:?}",
        mismatched.len(),
        &mismatched[..mismatched.len().min(3)]
    );
}

/// A delayed request that is never answered (`Fault::delay` with
/// `Fault::no_response`) leaves its connection serving the others: its
/// deferred task has nothing to send, which the connection used to take
/// for the "close" marker a deferred `close_connection` sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_request_never_answered_does_not_close_its_connection() {
    use tokio::io::AsyncWriteExt;
    use tower_cql_testkit::Fault;
    let cluster = Cluster::start().await.unwrap();
    cluster
        .faults()
        .add(Fault::delay(Duration::from_millis(10)).matching("'silent'"));
    cluster
        .faults()
        .add(Fault::no_response().matching("'silent'"));
    let (mut rd, mut wr) = raw_connect(&cluster).await;
    wr.write_all(&raw_query(
        1,
        "SELECT key FROM system.local WHERE key = 'silent'",
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    wr.write_all(&raw_query(2, "SELECT key FROM system.local"))
        .await
        .unwrap();
    let (stream, opcode, _) = tokio::time::timeout(Duration::from_secs(5), raw_read(&mut rd))
        .await
        .expect("an answer to the second request");
    assert_eq!((stream, opcode), (2, 0x08));
}
