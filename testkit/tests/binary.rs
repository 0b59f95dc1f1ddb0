//! The standalone `cql-testkit` binary: starts, prints where it listens,
//! serves a driver, and stops cleanly on SIGINT.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use scylla::client::session_builder::SessionBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_testkit_serves_until_interrupted() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cql-testkit"))
        .args(["--listen", "127.0.0.1:0", "--nodes", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cql-testkit");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    let addr = first
        .strip_prefix("cql-testkit listening on ")
        .expect(&first)
        .to_string();
    assert!(
        second.starts_with("cql-testkit listening on 127.0.0.2:"),
        "{second}"
    );

    let session = SessionBuilder::new()
        .known_node(&addr)
        .build()
        .await
        .unwrap();
    assert_eq!(session.get_cluster_state().get_nodes_info().len(), 2);
    let rows = session
        .query_unpaged(
            "SELECT cluster_name FROM system.local WHERE key = 'local'",
            &[],
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    assert_eq!(rows.single_row::<(String,)>().unwrap().0, "testkit");
    drop(session);

    // SIGINT: it stops and exits successfully.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");

    // A bad flag is a clear usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_cql-testkit"))
        .args(["--nodes", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes"));
}
