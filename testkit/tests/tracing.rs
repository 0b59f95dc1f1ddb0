//! Request tracing like Cassandra 4.x: the tracing flag gets a trace
//! session id back, and `system_traces` holds the session and its events,
//! which the scylla driver's `get_tracing_info` reads.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::observability::tracing::TracingInfo;
use scylla::policies::load_balancing::{NodeIdentifier, SingleTargetLoadBalancingPolicy};
use scylla::policies::retry::FallthroughRetryPolicy;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::unprepared::Statement;
use tower_cql_testkit::{Cluster, Fault};
use uuid::Uuid;

const DELAY: Duration = Duration::from_millis(150);

async fn setup(cluster: &Cluster) -> Session {
    let rf = cluster.len();
    let profile = ExecutionProfile::builder()
        .retry_policy(Arc::new(FallthroughRetryPolicy::new()))
        .request_timeout(Some(Duration::from_secs(5)))
        .build();
    let s = SessionBuilder::new()
        .known_nodes_addr(cluster.contact_points())
        .default_execution_profile_handle(profile.into_handle())
        .build()
        .await
        .unwrap();
    let keyspace = format!(
        "CREATE KEYSPACE ks WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"
    );
    for cql in [
        keyspace.as_str(),
        "CREATE TABLE ks.kv (k int PRIMARY KEY, v text)",
        "INSERT INTO ks.kv (k, v) VALUES (424242, 'secret-value')",
    ] {
        s.query_unpaged(cql, &[]).await.unwrap();
    }
    s
}

/// Sends `p` to node `node` only.
fn to_node(cluster: &Cluster, p: &mut PreparedStatement, node: usize) {
    p.set_load_balancing_policy(Some(SingleTargetLoadBalancingPolicy::new(
        NodeIdentifier::NodeAddress(cluster.node_addr(node)),
        None,
    )));
}

fn ip(cluster: &Cluster, node: usize) -> IpAddr {
    cluster.node_addr(node).ip()
}

fn activities(info: &TracingInfo) -> Vec<String> {
    info.events
        .iter()
        .map(|e| {
            format!(
                "{} {} +{}us",
                e.source.map_or("-".into(), |s| s.to_string()),
                e.activity.as_deref().unwrap_or(""),
                e.source_elapsed.unwrap_or(-1)
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_read_names_the_delayed_node_and_its_replica() {
    let cluster = Cluster::builder().nodes(3).start().await.unwrap();
    let s = setup(&cluster).await;
    let mut read = s.prepare("SELECT v FROM ks.kv WHERE k = ?").await.unwrap();
    to_node(&cluster, &mut read, 1);
    read.set_consistency(Consistency::Quorum);
    read.set_tracing(true);
    let fault = cluster
        .faults()
        .add(Fault::delay(DELAY).node(1).table("ks", "kv").reads());

    let result = s.execute_unpaged(&read, (424242,)).await.unwrap();
    assert_eq!(cluster.faults().fired(fault), 1);
    let id = result
        .tracing_id()
        .expect("a traced response carries its id");
    assert_eq!(
        cluster.trace_session_ids(),
        vec![id.as_u128()],
        "the session the response named is the one kept"
    );
    let info = s.get_tracing_info(&id).await.unwrap();
    let seen = activities(&info);
    assert_eq!(info.coordinator, Some(ip(&cluster, 1)), "{seen:#?}");
    assert_eq!(info.request.as_deref(), Some("Execute CQL3 prepared query"));
    assert_eq!(info.command.as_deref(), Some("QUERY"));
    assert_eq!(info.client, Some(IpAddr::from([127, 0, 0, 1])));
    assert!(info.started_at.is_some());
    let params = info.parameters.clone().unwrap_or_default();
    assert_eq!(
        params.get("consistency_level").map(String::as_str),
        Some("QUORUM")
    );
    assert_eq!(
        params.get("query").map(String::as_str),
        Some("SELECT v FROM ks.kv WHERE k = ?")
    );
    let duration = info.duration.expect("duration is set at the end");
    assert!(duration >= DELAY.as_micros() as i32, "duration {duration}");

    // The delayed node's steps after the delay count it.
    let delayed: Vec<_> = info
        .events
        .iter()
        .filter(|e| e.source == Some(ip(&cluster, 1)))
        .collect();
    let complete = delayed
        .iter()
        .find(|e| e.activity.as_deref() == Some("Request complete"))
        .unwrap_or_else(|| panic!("no Request complete on node 1: {seen:#?}"));
    assert!(
        complete.source_elapsed.unwrap() >= DELAY.as_micros() as i32,
        "{seen:#?}"
    );
    for step in [
        "Executing single-partition query on kv",
        "Read 1 live rows and 0 tombstone cells",
    ] {
        assert!(
            delayed.iter().any(|e| e.activity.as_deref() == Some(step)
                && e.source_elapsed.unwrap() >= DELAY.as_micros() as i32),
            "node 1 read locally after the delay: {step}: {seen:#?}"
        );
    }
    // QUORUM of 3: a second replica, reached by a message, answered fast.
    let other = info
        .events
        .iter()
        .find_map(|e| {
            let a = e.activity.as_deref()?;
            a.strip_prefix("Sending READ_REQ message to /")
                .map(|rest| rest.trim_end_matches(":7000").parse::<IpAddr>().unwrap())
        })
        .unwrap_or_else(|| panic!("no READ_REQ sent: {seen:#?}"));
    assert_ne!(other, ip(&cluster, 1));
    let replica: Vec<_> = info
        .events
        .iter()
        .filter(|e| e.source == Some(other))
        .collect();
    let got = |a: &str| {
        replica
            .iter()
            .find(|e| e.activity.as_deref() == Some(a))
            .unwrap_or_else(|| panic!("{a} on {other}: {seen:#?}"))
    };
    got(&format!(
        "READ_REQ message received from /{}:7000",
        ip(&cluster, 1)
    ));
    got("Executing single-partition query on kv");
    got(&format!("Enqueuing response to /{}:7000", ip(&cluster, 1)));
    assert!(
        replica
            .iter()
            .all(|e| e.source_elapsed.unwrap() < DELAY.as_micros() as i32),
        "the replica was not the slow one: {seen:#?}"
    );
    assert!(
        info.events
            .iter()
            .any(|e| e.activity.as_deref()
                == Some(&*format!("Processing response from /{other}:7000"))),
        "{seen:#?}"
    );
    // events come back in time order, ids increasing
    let ids: Vec<_> = info.events.iter().map(|e| e.event_id).collect();
    let mut sorted = ids.clone();
    sorted.sort_by_key(|u| Uuid::from(*u).get_timestamp().unwrap().to_gregorian());
    assert_eq!(ids, sorted);
    // no bound value, no row value in any activity or parameter
    for text in seen.iter().chain(params.values()) {
        assert!(
            !text.contains("424242") && !text.contains("secret-value"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_traces_reads_through_the_driver_and_a_traced_write() {
    let cluster = Cluster::builder().nodes(3).start().await.unwrap();
    let s = setup(&cluster).await;
    let mut write = Statement::new("INSERT INTO ks.kv (k, v) VALUES (?, ?)");
    write.set_tracing(true);
    write.set_consistency(Consistency::One);
    let result = s.query_unpaged(write, (7, "seven")).await.unwrap();
    let id = result.tracing_id().unwrap();

    let sessions = s
        .query_unpaged(
            "SELECT session_id, client, command, coordinator, coordinator_port, duration, parameters, request, started_at FROM system_traces.sessions WHERE session_id = ?",
            (id,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    assert_eq!(sessions.rows_num(), 1);
    let events = s
        .query_unpaged(
            "SELECT * FROM system_traces.events WHERE session_id = ?",
            (id,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let columns: Vec<&str> = events.column_specs().iter().map(|c| c.name()).collect();
    assert_eq!(
        columns,
        [
            "session_id",
            "event_id",
            "activity",
            "source",
            "source_elapsed",
            "source_port",
            "thread"
        ]
    );
    let info = s.get_tracing_info(&id).await.unwrap();
    let seen = activities(&info);
    assert_eq!(events.rows_num(), info.events.len());
    // with values, the driver prepared the statement: an EXECUTE, no parsing
    assert_eq!(info.request.as_deref(), Some("Execute CQL3 prepared query"));
    let first = info.events.first().and_then(|e| e.activity.clone());
    assert_eq!(
        first.as_deref(),
        Some("Determining replicas for mutation"),
        "{seen:#?}"
    );
    // a write goes to every replica (RF 3): all three nodes took steps
    let mut nodes = info.nodes();
    nodes.sort();
    assert_eq!(
        nodes,
        (0..3).map(|i| ip(&cluster, i)).collect::<Vec<_>>(),
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .filter(|a| a.contains("Adding to kv memtable"))
            .count()
            == 3,
        "{seen:#?}"
    );
    assert!(seen.iter().all(|a| !a.contains("seven")), "{seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untraced_requests_leave_no_trace_and_traces_are_bounded() {
    let cluster = Cluster::builder()
        .nodes(1)
        .trace_sessions(3)
        .start()
        .await
        .unwrap();
    let s = setup(&cluster).await;
    let result = s
        .query_unpaged("SELECT v FROM ks.kv WHERE k = 424242", &[])
        .await
        .unwrap();
    assert_eq!(result.tracing_id(), None);
    assert!(cluster.trace_session_ids().is_empty());

    let mut ids = Vec::new();
    for _ in 0..5 {
        let mut q = Statement::new("SELECT v FROM ks.kv WHERE k = 424242");
        q.set_tracing(true);
        ids.push(s.query_unpaged(q, &[]).await.unwrap().tracing_id().unwrap());
    }
    assert_eq!(
        cluster.trace_session_ids(),
        ids[2..].iter().map(Uuid::as_u128).collect::<Vec<_>>(),
        "the last three are kept"
    );
    let info = s.get_tracing_info(&ids[4]).await.unwrap();
    let seen = activities(&info);
    assert_eq!(info.request.as_deref(), Some("Execute CQL3 query"));
    let first: Vec<_> = info
        .events
        .iter()
        .take(2)
        .filter_map(|e| e.activity.as_deref())
        .collect();
    assert_eq!(
        first,
        [
            "Parsing SELECT v FROM ks.kv WHERE k = 424242",
            "Preparing statement"
        ],
        "{seen:#?}"
    );
    assert_eq!(
        seen.last().map(|a| a.contains("Request complete")),
        Some(true),
        "{seen:#?}"
    );
    for (i, id) in ids.iter().enumerate() {
        let count = |table: &'static str| {
            let s = &s;
            async move {
                s.query_unpaged(
                    format!("SELECT * FROM system_traces.{table} WHERE session_id = ?"),
                    (id,),
                )
                .await
                .unwrap()
                .into_rows_result()
                .unwrap()
                .rows_num()
            }
        };
        let (sessions, events) = (count("sessions").await, count("events").await);
        if i < 2 {
            assert_eq!((sessions, events), (0, 0), "session {i} was dropped");
        } else {
            assert_eq!(sessions, 1);
            assert!(events >= 4, "session {i}: {events} events");
        }
    }
}
