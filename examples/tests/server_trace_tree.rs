//! The `server_trace_tree` example on its embedded cluster: the tree it
//! prints names the delayed node as the slowest and holds no bound value.

#[allow(dead_code)] // the example's `main` is not called here
#[path = "../examples/server_trace_tree.rs"]
mod server_trace_tree;

use server_trace_tree::{DELAY, SECRET_KEY, SECRET_VALUE, run};

/// `12 µs`, `3.4 ms`, `1.25 s` back to a duration.
fn parse(text: &str) -> std::time::Duration {
    let (n, unit) = text.split_once(' ').expect("a number and a unit");
    let n: f64 = n.parse().expect("a number");
    std::time::Duration::from_secs_f64(match unit {
        "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        other => panic!("unit {other}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_names_the_delayed_node_as_the_slowest() {
    let report = run(None).await.expect("the example runs");
    let tree = &report.tree;
    let delayed = report.delayed.expect("the embedded cluster delays a node");
    let lines: Vec<&str> = tree.lines().collect();

    assert!(
        lines[0].starts_with("SELECT trace_tree.kv  ") && lines[0].contains("(client, sent to "),
        "{tree}"
    );
    let servers: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("├─ cql.server.") || l.starts_with("└─ cql.server."))
        .collect();
    assert!(
        servers[0].starts_with("├─ cql.server.coordinator "),
        "the coordinator first, then replicas:\n{tree}"
    );
    assert!(
        servers[1..]
            .iter()
            .all(|l| l.contains(" cql.server.replica ")),
        "{tree}"
    );
    assert!(servers.last().unwrap().starts_with("└─"), "{tree}");

    let slowest: Vec<&str> = servers
        .iter()
        .copied()
        .filter(|l| l.ends_with("   <- slowest"))
        .collect();
    assert_eq!(slowest.len(), 1, "one node marked slowest:\n{tree}");
    let marked = slowest[0];
    assert!(
        marked.contains(&format!(" {delayed}  ")),
        "the delayed node {delayed} is the slowest:\n{tree}"
    );
    // the mark's duration holds the delay (`<name> <node>  <duration>   <- slowest`)
    let held = marked
        .trim_end_matches("   <- slowest")
        .rsplit("  ")
        .next()
        .unwrap();
    assert!(parse(held) >= DELAY, "{held} < {DELAY:?}:\n{tree}");

    // every server span shows its steps, the coordinator's ending the request
    assert!(tree.contains("  Request complete\n"), "{tree}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("    ") && l.contains(" µs  READ_REQ message received from /")),
        "a replica's steps:\n{tree}"
    );

    for secret in [SECRET_KEY, SECRET_VALUE] {
        assert!(!tree.contains(secret), "a bound value ({secret}):\n{tree}");
    }
}
