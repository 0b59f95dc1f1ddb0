//! testkit with a driver other than scylla's: the DataStax Python driver,
//! which starts at protocol v5+, downgrades, reads `system.peers_v2` first
//! and falls back, and reads `SELECT *` from the system tables.
//!
//! `.ci/run` installs the driver (`pip install cassandra-driver`); where it
//! is missing this test says it was skipped.

use std::process::Command;

use tower_cql_testkit::Cluster;

fn python_driver_available() -> bool {
    Command::new("python3")
        .args(["-c", "import cassandra.cluster"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datastax_python_driver_against_three_nodes() {
    if !python_driver_available() {
        eprintln!(
            "SKIPPED datastax_python_driver_against_three_nodes: python3 with cassandra-driver is not installed (pip install cassandra-driver)"
        );
        return;
    }
    let cluster = Cluster::builder().nodes(3).start().await.unwrap();
    let stdout = run_python("datastax_driver.py", &[&cluster.uri(), "3"], 120).await;
    assert!(stdout.contains("datastax python driver: ok"), "{stdout}");
    // it really ran against this cluster
    assert!(
        cluster
            .counters()
            .executions("INSERT INTO py.t (k, c, v) VALUES (?, ?, ?)")
            >= 95
    );
}

/// Hundreds of requests in flight from the Python driver at once, a
/// 1,000-row `SELECT *` among them: every one is answered.
/// `TESTKIT_STRESS_REQUESTS` (default 500) requests a round,
/// `TESTKIT_STRESS_ROUNDS` (default 4) rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datastax_python_driver_gets_every_answer_under_concurrency() {
    if !python_driver_available() {
        eprintln!(
            "SKIPPED datastax_python_driver_gets_every_answer_under_concurrency: python3 with cassandra-driver is not installed (pip install cassandra-driver)"
        );
        return;
    }
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(default)
    };
    let requests = env("TESTKIT_STRESS_REQUESTS", 500);
    let rounds = env("TESTKIT_STRESS_ROUNDS", 4);
    let cluster = Cluster::builder().nodes(3).start().await.unwrap();
    let (requests, rounds) = (requests.to_string(), rounds.to_string());
    let stdout = run_python("stress.py", &[&cluster.uri(), "3", &requests, &rounds], 300).await;
    assert!(stdout.contains("all answered"), "{stdout}");
}

/// Runs `tests/python/<script>` with `args` under `timeout`, and returns
/// its standard output; a failure shows both outputs.
async fn run_python(script: &str, args: &[&str], timeout_secs: u32) -> String {
    let script = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new("timeout");
    cmd.arg(timeout_secs.to_string())
        .arg("python3")
        .arg(&script)
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run python3"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    stdout
}
