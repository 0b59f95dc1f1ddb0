//! `cqlstress` end to end: flag errors, the JSON schema, and a run with
//! faults whose retries and errors match what the server injected.

use std::process::Command;

fn cqlstress(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cqlstress"))
        .args(args)
        .output()
        .expect("run cqlstress")
}

#[test]
fn bad_flags_are_clear_errors() {
    for (args, want) in [
        (
            vec!["--read-ratio", "1.5"],
            "--read-ratio must be within 0..1",
        ),
        (
            vec!["--concurrency", "0"],
            "--concurrency must be at least 1",
        ),
        (vec!["--fault", "overloaded"], "expected KIND=VALUE"),
        (vec!["--fault", "meteor=0.1"], "unknown kind"),
        (vec!["--fault", "overloaded=3"], "within 0..1"),
        (
            vec!["--uri", "127.0.0.1:9", "--fault", "overloaded=0.1"],
            "needs the embedded cluster",
        ),
        (
            vec!["--nodes", "2", "--fault", "node_down=3"],
            "nodes 1..=2",
        ),
        (
            vec!["--otlp", "http://127.0.0.1:4317"],
            "--otlp is not available yet",
        ),
        (vec!["--duration", "nope"], "--duration"),
    ] {
        let out = cqlstress(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn an_unreachable_cluster_is_a_clear_error() {
    let out = cqlstress(&["--uri", "127.0.0.1:9", "--duration", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to"), "{err}");
}

#[test]
fn a_run_with_faults_retries_and_never_applies_a_write_twice() {
    let out = cqlstress(&[
        "--duration",
        "2",
        "--concurrency",
        "8",
        "--nodes",
        "2",
        "--fault",
        "overloaded=0.05",
        "--fault",
        "write_timeout=0.05",
        "--non-idempotent-writes",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    for key in [
        "ops",
        "ok",
        "errors",
        "retries",
        "throttled",
        "throughput_ops_s",
        "latency_us",
        "server_executions",
        "duplicate_writes",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    for q in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v["latency_us"][q].as_f64().is_some(), "latency_us.{q}: {v}");
    }
    let ops = v["ops"].as_u64().unwrap();
    assert!(ops > 100, "{v}");
    let retries = v["retries"].as_u64().unwrap();
    assert!(retries > 0, "{v}");
    assert_eq!(v["duplicate_writes"].as_u64(), Some(0), "{v}");
    // Overloaded is retried (never applied); the applied-then-timed-out
    // non-idempotent writes are not: each one the server injected is an error.
    assert_eq!(
        retries,
        v["injected"]["overloaded"].as_u64().unwrap()
            - v["errors"]["overloaded"].as_u64().unwrap_or(0)
    );
    assert_eq!(
        v["errors"]["write_timeout"].as_u64().unwrap_or(0),
        v["injected"]["write_timeout"].as_u64().unwrap()
    );
    assert_eq!(
        v["ok"].as_u64().unwrap()
            + v["errors"]
                .as_object()
                .unwrap()
                .values()
                .map(|x| x.as_u64().unwrap())
                .sum::<u64>(),
        ops
    );
}
