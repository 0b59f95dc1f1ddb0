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
