//! `cqlstress` end to end: flag errors, the JSON schema, a run with
//! faults whose retries and errors match what the server injected, and
//! `--otlp` export to an in-process OTLP receiver.

use std::process::Command;

use tower_cql_testkit::otlp::{OtlpReceiver, Transport, attribute_str};

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
            vec!["--otlp", "127.0.0.1:4317"],
            "--otlp 127.0.0.1:4317: invalid OTLP endpoint",
        ),
        (
            vec!["--otlp", "https://otel.example.com"],
            "built without TLS",
        ),
        (
            vec![
                "--otlp",
                "http://127.0.0.1:4317",
                "--otlp-protocol",
                "thrift",
            ],
            "--otlp-protocol thrift: use grpc or http/protobuf",
        ),
        (
            vec!["--otlp", "http://127.0.0.1:4317", "--otlp-trace-ratio", "2"],
            "--otlp-trace-ratio must be within 0..1",
        ),
        (
            vec![
                "--otlp",
                "http://127.0.0.1:4317",
                "--server-trace-ratio",
                "1.5",
            ],
            "--server-trace-ratio must be within 0..1",
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
    // Overloaded is retried for the idempotent reads (for the
    // non-idempotent writes it is not: the coordinator may have passed
    // them on); the applied-then-timed-out writes are not retried either:
    // each one the server injected is an error.
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

/// A run whose non-idempotent writes are applied, then failed with
/// `kind` (`--fault {kind}_after_apply=0.05`): each one the server
/// injected reaches the client as an error (the write may have happened,
/// so it is not retried), and none is applied twice.
fn applied_then_failed_writes_are_never_retried(kind: &str) {
    let fault = format!("{kind}_after_apply=0.05");
    let out = cqlstress(&[
        "--duration",
        "2",
        "--concurrency",
        "8",
        "--nodes",
        "2",
        "--read-ratio",
        "0.5",
        "--fault",
        &fault,
        "--non-idempotent-writes",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{fault}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let injected = v["injected"][format!("{kind}_after_apply")]
        .as_u64()
        .unwrap_or_else(|| panic!("{fault}: no injected count: {v}"));
    assert!(injected > 0, "{fault}: the fault fired: {v}");
    assert_eq!(v["duplicate_writes"].as_u64(), Some(0), "{fault}: {v}");
    assert_eq!(
        v["errors"][kind].as_u64().unwrap_or(0),
        injected,
        "{fault}: every applied-then-failed write is an error, none retried: {v}"
    );
}

#[test]
fn overloaded_after_apply_is_not_retried_for_non_idempotent_writes() {
    applied_then_failed_writes_are_never_retried("overloaded");
}

#[test]
fn server_error_after_apply_is_not_retried_for_non_idempotent_writes() {
    applied_then_failed_writes_are_never_retried("server_error");
}

/// cqlstress with the `OTEL_*` variables of the test's environment removed.
fn cqlstress_clean_env(args: &[String]) -> std::process::Output {
    cqlstress_with_env(args, &[])
}

/// cqlstress with no `OTEL_*` nor `TOWER_CQL_*` variable but `vars`.
fn cqlstress_with_env(args: &[String], vars: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cqlstress"));
    for (k, _) in std::env::vars_os() {
        let k_ = k.to_string_lossy();
        if k_.starts_with("OTEL_") || k_.starts_with("TOWER_CQL_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(vars.iter().copied());
    cmd.args(args).output().expect("run cqlstress")
}

#[test]
fn otlp_exports_metrics_and_spans_over_both_protocols() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (protocol, transport) in [
        (None, Transport::Grpc),
        (Some("http/protobuf"), Transport::HttpProtobuf),
    ] {
        let receiver = rt.block_on(OtlpReceiver::start()).unwrap();
        let mut args: Vec<String> = [
            "--duration",
            "1",
            "--concurrency",
            "4",
            "--nodes",
            "1",
            "--rate",
            "300",
            "--json",
            "--otlp-trace-ratio",
            "1",
            "--otlp",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        args.push(receiver.endpoint());
        if let Some(p) = protocol {
            args.extend(["--otlp-protocol".to_string(), p.to_string()]);
        }
        let out = cqlstress_clean_env(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(
            stderr.contains(&format!("over OTLP {}", protocol.unwrap_or("grpc"))),
            "{stderr}"
        );
        assert!(!stderr.contains("warning"), "{stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
        let ops = v["ops"].as_u64().unwrap();
        assert!(ops > 50, "{v}");

        // Everything came over the protocol asked for, and the last export
        // (at exit) holds every request cqlstress counted.
        let requests = receiver.metrics_requests();
        assert!(!requests.is_empty(), "no metrics arrived: {stderr}");
        assert!(requests.iter().all(|r| r.transport == transport));
        let duration = receiver
            .metric("db.client.operation.duration")
            .expect("db.client.operation.duration");
        assert_eq!(duration.metric.unit, "s");
        let resource = &duration.resource.as_ref().unwrap().attributes;
        assert_eq!(
            attribute_str(resource, "service.name").as_deref(),
            Some("cqlstress")
        );
        let counted: u64 = duration
            .histogram()
            .unwrap()
            .data_points
            .iter()
            .filter(|p| {
                matches!(
                    attribute_str(&p.attributes, "db.operation.name").as_deref(),
                    Some("read" | "write")
                )
            })
            .map(|p| p.count)
            .sum();
        assert_eq!(counted, ops, "{v}");

        // Every request was sampled (--otlp-trace-ratio 1): one span each.
        let spans = receiver.spans();
        assert!(spans.iter().all(|s| s.transport == transport));
        let reads = receiver.spans_named("SELECT stress.kv").len() as u64;
        let writes = receiver.spans_named("INSERT stress.kv").len() as u64;
        assert_eq!(reads + writes, ops, "{v}");
        let foreign: Vec<_> = spans
            .iter()
            .filter(|s| {
                !attribute_str(&s.span.attributes, "target")
                    .is_some_and(|t| t.starts_with("tower_cql"))
            })
            .map(|s| s.span.name.clone())
            .collect();
        assert!(foreign.is_empty(), "only the stack's spans: {foreign:?}");
        assert!(receiver.spans_named("cql.attempt").len() as u64 >= ops);
    }
}

#[test]
fn server_traces_are_exported_as_child_spans_with_server_trace_ratio() {
    // the flag, then the exporter's variable (no flag)
    for (flag, var) in [(true, None), (false, Some("0.05"))] {
        server_traces_exported(flag, var);
    }
}

fn server_traces_exported(flag: bool, var: Option<&str>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let receiver = rt.block_on(OtlpReceiver::start()).unwrap();
    let mut args: Vec<String> = [
        "--duration",
        "1",
        "--concurrency",
        "2",
        "--nodes",
        "3",
        "--rate",
        "200",
        "--json",
        "--otlp-trace-ratio",
        "1",
        "--otlp",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    args.push(receiver.endpoint());
    if flag {
        args.extend(["--server-trace-ratio".into(), "0.05".into()]);
    }
    let vars: Vec<(&str, &str)> = var
        .map(|v| ("TOWER_CQL_SERVER_TRACE_RATIO", v))
        .into_iter()
        .collect();
    let out = cqlstress_with_env(&args, &vars);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("server traces:"), "{stderr}");
    let spans = receiver.spans();
    let server: Vec<_> = spans
        .iter()
        .filter(|s| s.span.name == "cql.server.coordinator")
        .collect();
    assert!(!server.is_empty(), "no server span: {stderr}");
    for s in server {
        let parent = spans
            .iter()
            .find(|p| p.span.span_id == s.span.parent_span_id)
            .expect("a server span's parent is exported");
        // a request's span: the workload's reads and writes, or the setup's
        // statements (CREATE ...), which a ratio can sample too
        assert!(
            ["SELECT stress.", "INSERT stress.", "CREATE "]
                .iter()
                .any(|p| parent.span.name.starts_with(p)),
            "{}",
            parent.span.name
        );
        assert!(attribute_str(&s.span.attributes, "server.address").is_some());
    }
}

#[test]
fn otlp_is_flushed_when_interrupted() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let receiver = rt.block_on(OtlpReceiver::start()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cqlstress"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    // A long run with a metric interval longer still: what arrives was
    // flushed by the Ctrl-C path.
    let mut child = cmd
        .args([
            "--duration",
            "60",
            "--concurrency",
            "2",
            "--nodes",
            "1",
            "--rate",
            "200",
            "--otlp",
        ])
        .arg(receiver.endpoint())
        .env("OTEL_METRIC_EXPORT_INTERVAL", "600000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run cqlstress");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The first table row comes a second into the run, after the Ctrl-C
    // handler is in place.
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line
            .trim_start()
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
        {
            break;
        }
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let summary = lines
        .map(Result::unwrap)
        .find_map(|l| l.strip_prefix("summary: ").map(str::to_string))
        .expect("a summary after Ctrl-C");
    assert!(child.wait().unwrap().success());
    let v: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(v["interrupted"], serde_json::Value::Bool(true), "{v}");
    let ops = v["ops"].as_u64().unwrap();
    assert!(ops > 0, "{v}");
    let duration = receiver
        .metric("db.client.operation.duration")
        .expect("metrics flushed on Ctrl-C");
    let counted: u64 = duration
        .histogram()
        .unwrap()
        .data_points
        .iter()
        .filter(|p| {
            matches!(
                attribute_str(&p.attributes, "db.operation.name").as_deref(),
                Some("read" | "write")
            )
        })
        .map(|p| p.count)
        .sum();
    assert_eq!(counted, ops, "{v}");
}

/// `--scan`: every read is a full partition paged through the stack; with
/// 10% of page attempts refused `Overloaded` and the stack of a `--config`
/// file (8 attempts), every scan reads every row of its partition, the
/// failed pages having been retried with their paging state. The JSON
/// has `attempts` (`total`, `ok`, `error`, `cancelled`), `pages`, `rows`.
#[test]
fn scans_through_the_stack_complete_every_partition_under_overload() {
    let config = std::env::temp_dir().join(format!("cqlstress-scan-{}.toml", std::process::id()));
    std::fs::write(&config, "[retry]\nmax_attempts = 8\nbackoff_base_ms = 1\n").unwrap();
    let out = cqlstress(&[
        "--scan",
        "--rows",
        "50",
        "--partition-rows",
        "40",
        "--page-size",
        "10",
        "--read-ratio",
        "1",
        "--fault",
        "overloaded=0.1",
        "--config",
        config.to_str().unwrap(),
        "--duration",
        "2",
        "--concurrency",
        "8",
        "--json",
    ]);
    let _ = std::fs::remove_file(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    println!("cqlstress --scan: {v}");
    let complete = v["scans"]["complete"].as_u64().unwrap();
    assert!(complete > 0, "{v}");
    assert_eq!(v["scans"]["failed"].as_u64(), Some(0), "{v}");
    assert_eq!(v["scans"]["short"].as_u64(), Some(0), "{v}");
    assert!(v["retries"].as_u64().unwrap() > 0, "{v}");
    assert!(v["injected"]["overloaded"].as_u64().unwrap() > 0, "{v}");
    // every scan read its 40 rows in 4 pages (a fifth, empty one when the
    // server cannot tell the partition ended)
    let pages = v["pages"].as_u64().unwrap();
    assert!(pages >= 4 * complete, "{v}");
    assert_eq!(v["rows"].as_u64(), Some(40 * complete), "{v}");
    assert_eq!(v["ops"].as_u64(), Some(complete), "{v}");
    let attempts = &v["attempts"];
    let total = attempts["total"].as_u64().unwrap();
    assert_eq!(
        total,
        attempts["ok"].as_u64().unwrap()
            + attempts["error"].as_u64().unwrap()
            + attempts["cancelled"].as_u64().unwrap(),
        "{v}"
    );
    // every page attempt is an attempt (the setup's own too)
    assert!(total >= pages + v["retries"].as_u64().unwrap(), "{v}");
}

#[test]
fn a_bad_config_file_is_a_clear_error() {
    let out = cqlstress(&["--config", "/nonexistent/stack.toml", "--duration", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--config /nonexistent/stack.toml: cannot read it"),
        "{err}"
    );
    let config = std::env::temp_dir().join(format!("cqlstress-bad-{}.toml", std::process::id()));
    std::fs::write(&config, "[retry]\nmax_atempts = 3\n").unwrap();
    let out = cqlstress(&["--config", config.to_str().unwrap(), "--duration", "1"]);
    let _ = std::fs::remove_file(&config);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--config") && err.contains("max_atempts"),
        "{err}"
    );
}
