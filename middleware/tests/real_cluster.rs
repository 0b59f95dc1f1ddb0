//! The default stack against a real cluster, when `SCYLLA_URI=host:port`
//! is set (ScyllaDB or Cassandra); skipped, and saying so, otherwise.
//!
//! It works in a keyspace of its own (`tower_cql_it_<random>`, replication
//! factor 1) and drops it at the end.
//!
//! `SCYLLA_URI=127.0.0.1:9042 cargo test -p tower-cql-middleware --test real_cluster -- --nocapture`

use std::sync::Arc;

use futures::TryStreamExt;
use scylla::client::session_builder::SessionBuilder;
use tower::ServiceExt;
use tower_cql_core::{
    Collectors, CqlRequest, DriverService, ErrorKind, InMemoryCollector, Statement,
};
use tower_cql_middleware::stack::StackBuilder;

fn uri() -> Option<String> {
    match std::env::var("SCYLLA_URI") {
        Ok(uri) if !uri.is_empty() => Some(uri),
        _ => {
            eprintln!(
                "SKIPPED: real-cluster test: SCYLLA_URI is not set \
                 (set SCYLLA_URI=host:port to run it against ScyllaDB or Cassandra)"
            );
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_stack_against_a_real_cluster() {
    let Some(uri) = uri() else { return };
    let session = SessionBuilder::new()
        .known_node(&uri)
        .build()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to SCYLLA_URI={uri}: {e}"));
    let memory = Arc::new(InMemoryCollector::new());
    let collectors = Collectors::with([memory.clone()]);
    let driver = DriverService::builder(Arc::new(session))
        .collectors(collectors.clone())
        .build()
        .unwrap();
    let stack = StackBuilder::new(collectors).build(driver.clone()).unwrap();
    let svc = stack.service();
    let run = |req: CqlRequest| svc.clone().oneshot(req);

    let ks = format!("tower_cql_it_{:08x}", fastrand_u32());
    for cql in [
        format!(
            "CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
        ),
        format!("CREATE TABLE {ks}.kv (k int PRIMARY KEY, v text)"),
        format!("CREATE TABLE {ks}.rows (p int, c int, v text, PRIMARY KEY (p, c))"),
    ] {
        run(CqlRequest::unprepared(cql)).await.unwrap();
    }

    let put = Statement::new(format!("INSERT INTO {ks}.kv (k, v) VALUES (?, ?)"))
        .operation("put")
        .idempotent(true);
    let get = Statement::new(format!("SELECT v FROM {ks}.kv WHERE k = ?"))
        .operation("get")
        .idempotent(true);
    for k in 0..100i32 {
        run(put.request().bind((k, format!("v{k}")))).await.unwrap();
    }
    for k in [0i32, 42, 99] {
        let resp = run(get.request().bind((k,))).await.unwrap();
        assert_eq!(resp.single_row::<(String,)>().unwrap().0, format!("v{k}"));
        assert!(resp.info().coordinator.is_some());
    }

    // LWT: applied once, then not
    let lwt = Statement::new(format!(
        "INSERT INTO {ks}.kv (k, v) VALUES (?, ?) IF NOT EXISTS"
    ));
    assert!(
        !lwt.clone()
            .idempotent(true)
            .request()
            .meta()
            .is_idempotent(),
        "LWT is never retried blindly, even when marked idempotent"
    );
    run(lwt.request().bind((1000i32, "a"))).await.unwrap();
    run(lwt.request().bind((1000i32, "b"))).await.unwrap();
    let resp = run(get.request().bind((1000i32,))).await.unwrap();
    assert_eq!(resp.single_row::<(String,)>().unwrap().0, "a");

    // a multi-page partition, streamed
    let ins = Statement::new(format!("INSERT INTO {ks}.rows (p, c, v) VALUES (?, ?, ?)"));
    for c in 0..250i32 {
        run(ins.request().bind((1i32, c, "x"))).await.unwrap();
    }
    let rows: Vec<(i32, String)> = driver
        .stream(
            Statement::new(format!("SELECT c, v FROM {ks}.rows WHERE p = ?"))
                .request()
                .bind((1i32,))
                .page_size(40),
        )
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(rows.len(), 250);

    // clear errors of the right kind
    let err = run(CqlRequest::query(format!("SELEC v FROM {ks}.kv")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Syntax, "{err}");
    let err = run(CqlRequest::query(
        "SELECT v FROM tower_cql_no_such_ks.kv WHERE k = 1",
    ))
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    let err = run(put.request().bind(("one", 1i32))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Serialization, "{err}");

    run(CqlRequest::unprepared(format!("DROP KEYSPACE {ks}")))
        .await
        .unwrap();
    stack.close().await;
    let snap = memory.snapshot();
    assert_eq!(snap.errors.values().sum::<u64>(), 3);
    println!(
        "real cluster at {uri}: {} requests, {} ok, p99 {:?} ns",
        snap.requests_total(),
        snap.ok,
        snap.request_latency(None).quantile(0.99)
    );
}

fn fastrand_u32() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    nanos ^ std::process::id().rotate_left(16)
}
