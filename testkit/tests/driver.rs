//! End to end: the real scylla driver over TCP against testkit clusters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use scylla::client::Compression;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::policies::retry::FallthroughRetryPolicy;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::{Consistency, Statement};
use tower_cql_testkit::{Cluster, Fault, InjectedError, Opcode, WriteType};

/// A session that never retries by itself, so every error surfaces.
async fn session(cluster: &Cluster) -> Session {
    session_with(cluster, SessionBuilder::new()).await
}

async fn session_with(cluster: &Cluster, builder: SessionBuilder) -> Session {
    let profile = ExecutionProfile::builder()
        .retry_policy(Arc::new(FallthroughRetryPolicy::new()))
        .consistency(Consistency::One)
        .request_timeout(Some(Duration::from_secs(5)))
        .build();
    builder
        .known_nodes_addr(cluster.contact_points())
        .default_execution_profile_handle(profile.into_handle())
        .build()
        .await
        .expect("the driver connects to testkit")
}

async fn run(s: &Session, cql: &str) {
    s.query_unpaged(cql, &[])
        .await
        .unwrap_or_else(|e| panic!("{cql}: {e}"));
}

async fn keyspace(s: &Session, ks: &str, rf: usize) {
    run(
        s,
        &format!(
            "CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"
        ),
    )
    .await;
}

fn db_error(e: &ExecutionError) -> Option<&DbError> {
    match e {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => Some(db),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_and_schema_metadata() {
    let cluster = Cluster::start().await.unwrap();
    let s = session(&cluster).await;
    keyspace(&s, "ks", 1).await;
    run(&s, "CREATE TABLE ks.t (p int, c text, v list<int>, s int STATIC, PRIMARY KEY (p, c)) WITH CLUSTERING ORDER BY (c DESC)").await;
    run(&s, "CREATE TABLE IF NOT EXISTS ks.t (p int PRIMARY KEY)").await;
    let err = s
        .query_unpaged("CREATE TABLE ks.t (p int PRIMARY KEY)", &[])
        .await
        .unwrap_err();
    assert!(
        matches!(db_error(&err), Some(DbError::AlreadyExists { keyspace, table }) if keyspace == "ks" && table == "t"),
        "{err:?}"
    );
    let err = s
        .query_unpaged("CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}", &[])
        .await
        .unwrap_err();
    assert!(
        matches!(db_error(&err), Some(DbError::AlreadyExists { .. })),
        "{err:?}"
    );

    // The driver's schema metadata reflects the in-memory schema.
    s.refresh_metadata().await.unwrap();
    let state = s.get_cluster_state();
    let ks = state
        .get_keyspace("ks")
        .expect("keyspace ks in driver metadata");
    let t = ks.tables.get("t").expect("table t in driver metadata");
    assert_eq!(t.partition_key, vec!["p".to_string()]);
    assert_eq!(t.clustering_key, vec!["c".to_string()]);
    assert_eq!(t.columns.len(), 4);

    run(&s, "DROP TABLE ks.t").await;
    run(&s, "DROP TABLE IF EXISTS ks.t").await;
    let err = s
        .query_unpaged("SELECT * FROM ks.t", &[])
        .await
        .unwrap_err();
    assert!(matches!(db_error(&err), Some(DbError::Invalid)), "{err:?}");
    assert!(err.to_string().contains("unconfigured table t"), "{err}");
    run(&s, "DROP KEYSPACE ks").await;
    let err = s.query_unpaged("USE ks", &[]).await.unwrap_err();
    assert!(err.to_string().contains("ks"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_reads_writes_and_types() {
    let cluster = Cluster::start().await.unwrap();
    let s = session(&cluster).await;
    keyspace(&s, "ks", 1).await;
    run(&s, "CREATE TABLE ks.all_types (k uuid PRIMARY KEY, i int, b bigint, t text, ts timestamp, bo boolean, d double, bl blob, tu timeuuid, l list<text>, st set<int>, m map<text, int>)").await;
    let k = uuid::Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0);
    let tu = uuid::Uuid::parse_str("e3a14c80-8c5f-11ee-b9d1-0242ac120002").unwrap();
    let ins = s
        .prepare("INSERT INTO ks.all_types (k, i, b, t, ts, bo, d, bl, tu, l, st, m) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        .await
        .unwrap();
    // The driver learned the partition key index for token-aware routing.
    assert_eq!(ins.get_variable_pk_indexes().len(), 1);
    let m: BTreeMap<String, i32> = [("a".to_string(), 1), ("b".to_string(), 2)].into();
    s.execute_unpaged(
        &ins,
        (
            k,
            -7i32,
            1i64 << 40,
            "héllo",
            scylla::value::CqlTimestamp(1_700_000_000_123),
            true,
            2.5f64,
            vec![0xCAu8, 0xFE],
            scylla::value::CqlTimeuuid::from(tu),
            vec!["x".to_string(), "y".to_string()],
            BTreeSet::from([3i32, 1, 2]),
            m.clone(),
        ),
    )
    .await
    .unwrap();
    let sel = s
        .prepare("SELECT i, b, t, ts, bo, d, bl, tu, l, st, m FROM ks.all_types WHERE k = ?")
        .await
        .unwrap();
    type Row = (
        i32,
        i64,
        String,
        scylla::value::CqlTimestamp,
        bool,
        f64,
        Vec<u8>,
        scylla::value::CqlTimeuuid,
        Vec<String>,
        BTreeSet<i32>,
        BTreeMap<String, i32>,
    );
    let row: Row = s
        .execute_unpaged(&sel, (k,))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    assert_eq!(row.0, -7);
    assert_eq!(row.1, 1 << 40);
    assert_eq!(row.2, "héllo");
    assert_eq!(row.3.0, 1_700_000_000_123);
    assert!(row.4);
    assert_eq!(row.5, 2.5);
    assert_eq!(row.6, vec![0xCA, 0xFE]);
    assert_eq!(uuid::Uuid::from(row.7), tu);
    assert_eq!(row.8, vec!["x", "y"]);
    assert_eq!(row.9, BTreeSet::from([1, 2, 3]));
    assert_eq!(row.10, m);

    // Literals in unprepared statements.
    run(&s, "INSERT INTO ks.all_types (k, i, t, l, m, bl) VALUES (00000000-0000-0000-0000-000000000001, 42, 'it''s', ['a'], {'z': 26}, 0xff)").await;
    run(&s, "UPDATE ks.all_types SET l = l + ['b'], m['y'] = 25, st = {9} WHERE k = 00000000-0000-0000-0000-000000000001").await;
    type Literals = (
        i32,
        String,
        Vec<String>,
        BTreeMap<String, i32>,
        BTreeSet<i32>,
    );
    let (i, t, l, m, st): Literals = s
        .query_unpaged("SELECT i, t, l, m, st FROM ks.all_types WHERE k = 00000000-0000-0000-0000-000000000001", &[])
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    assert_eq!((i, t.as_str()), (42, "it's"));
    assert_eq!(l, vec!["a", "b"]);
    assert_eq!(
        m,
        BTreeMap::from([("y".to_string(), 25), ("z".to_string(), 26)])
    );
    assert_eq!(st, BTreeSet::from([9]));

    // Wrong CQL and wrong values get the right error codes.
    let err = s
        .query_unpaged("SELEC * FROM ks.all_types", &[])
        .await
        .unwrap_err();
    assert!(
        matches!(db_error(&err), Some(DbError::SyntaxError)),
        "{err:?}"
    );
    assert!(err.to_string().contains("SELEC"), "{err}");
    let err = s
        .query_unpaged("SELECT nope FROM ks.all_types", &[])
        .await
        .unwrap_err();
    assert!(matches!(db_error(&err), Some(DbError::Invalid)), "{err:?}");
    assert!(
        err.to_string().contains("Undefined column name nope"),
        "{err}"
    );
    let err = s
        .query_unpaged(
            "INSERT INTO ks.all_types (k, i) VALUES (00000000-0000-0000-0000-000000000002, 'x')",
            &[],
        )
        .await
        .unwrap_err();
    assert!(matches!(db_error(&err), Some(DbError::Invalid)), "{err:?}");
    let err = s
        .query_unpaged("SELECT * FROM ks.all_types WHERE i = 3", &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ALLOW FILTERING"), "{err}");
    let n: (i64,) = s
        .query_unpaged(
            "SELECT COUNT(*) FROM ks.all_types WHERE i = 42 ALLOW FILTERING",
            &[],
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    assert_eq!(n.0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_95_rows_in_pages_of_10() {
    let cluster = Cluster::start().await.unwrap();
    let s = session(&cluster).await;
    keyspace(&s, "ks", 1).await;
    run(
        &s,
        "CREATE TABLE ks.p (k int, c int, v text, PRIMARY KEY (k, c))",
    )
    .await;
    let ins = s
        .prepare("INSERT INTO ks.p (k, c, v) VALUES (?, ?, ?)")
        .await
        .unwrap();
    for c in 0..95 {
        s.execute_unpaged(&ins, (1i32, c, format!("v{c}")))
            .await
            .unwrap();
    }
    // Also rows in other partitions, which a partition read must not see.
    for k in 2..6 {
        s.execute_unpaged(&ins, (k, 0i32, "other")).await.unwrap();
    }
    let mut sel = s
        .prepare("SELECT c, v FROM ks.p WHERE k = ?")
        .await
        .unwrap();
    sel.set_page_size(10);
    // Page by page with the paging state.
    let mut state = scylla::response::PagingState::start();
    let mut pages = Vec::new();
    loop {
        let (res, next) = s.execute_single_page(&sel, (1i32,), state).await.unwrap();
        let rows: Vec<(i32, String)> = res
            .into_rows_result()
            .unwrap()
            .rows::<(i32, String)>()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        pages.push(rows);
        match next.into_paging_control_flow() {
            std::ops::ControlFlow::Break(()) => break,
            std::ops::ControlFlow::Continue(s) => state = s,
        }
    }
    assert_eq!(pages.len(), 10);
    assert!(pages[..9].iter().all(|p| p.len() == 10));
    assert_eq!(pages[9].len(), 5);
    let all: Vec<i32> = pages.iter().flatten().map(|r| r.0).collect();
    assert_eq!(all, (0..95).collect::<Vec<_>>());

    // The pager streams them all, and a full scan pages across partitions.
    let stream = s.execute_iter(sel.clone(), (1i32,)).await.unwrap();
    let n = stream
        .rows_stream::<(i32, String)>()
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .len();
    assert_eq!(n, 95);
    let mut scan = Statement::new("SELECT k, c FROM ks.p");
    scan.set_page_size(7);
    let rows: Vec<(i32, i32)> = s
        .query_iter(scan, &[])
        .await
        .unwrap()
        .rows_stream::<(i32, i32)>()
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(rows.len(), 99);

    // Clustering ranges, ORDER BY, LIMIT, reverse paging.
    let mut desc = Statement::new(
        "SELECT c FROM ks.p WHERE k = 1 AND c >= 10 AND c < 40 ORDER BY c DESC LIMIT 25",
    );
    desc.set_page_size(4);
    let cs: Vec<(i32,)> = s
        .query_iter(desc, &[])
        .await
        .unwrap()
        .rows_stream::<(i32,)>()
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        cs.iter().map(|c| c.0).collect::<Vec<_>>(),
        (15..40).rev().collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_lwt_counters_and_deletes() {
    let cluster = Cluster::start().await.unwrap();
    let s = session(&cluster).await;
    keyspace(&s, "ks", 1).await;
    run(&s, "CREATE TABLE ks.kv (k int PRIMARY KEY, v text)").await;
    run(&s, "CREATE TABLE ks.counts (k text PRIMARY KEY, n counter)").await;

    let ins = s
        .prepare("INSERT INTO ks.kv (k, v) VALUES (?, ?)")
        .await
        .unwrap();
    let mut batch = Batch::new(BatchType::Logged);
    batch.append_statement(ins.clone());
    batch.append_statement(ins.clone());
    batch.append_statement("INSERT INTO ks.kv (k, v) VALUES (3, 'three')");
    s.batch(&batch, ((1i32, "one"), (2i32, "two"), ()))
        .await
        .unwrap();
    let n: (i64,) = s
        .query_unpaged("SELECT COUNT(*) FROM ks.kv", &[])
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    assert_eq!(n.0, 3);

    // LWT: applied, then not applied with the existing row.
    let lwt = s
        .prepare("INSERT INTO ks.kv (k, v) VALUES (?, ?) IF NOT EXISTS")
        .await
        .unwrap();
    let r = s
        .execute_unpaged(&lwt, (10i32, "ten"))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let (applied,): (bool,) = r.first_row().unwrap();
    assert!(applied);
    let r = s
        .execute_unpaged(&lwt, (10i32, "TEN"))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let (applied, k, v): (bool, Option<i32>, Option<String>) = r.first_row().unwrap();
    assert_eq!((applied, k, v.as_deref()), (false, Some(10), Some("ten")));
    let r = s
        .query_unpaged("UPDATE ks.kv SET v = 'x' WHERE k = 10 IF v = 'ten'", &[])
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    assert!(r.first_row::<(bool,)>().unwrap().0);

    // Counters, in a counter batch too.
    let inc = s
        .prepare("UPDATE ks.counts SET n = n + ? WHERE k = ?")
        .await
        .unwrap();
    for delta in 1..=5 {
        // distinct values: identical repeated writes would count as duplicates
        s.execute_unpaged(&inc, (scylla::value::Counter(delta), "a"))
            .await
            .unwrap();
    }
    let mut cb = Batch::new(BatchType::Counter);
    cb.append_statement(inc.clone());
    s.batch(&cb, ((scylla::value::Counter(-5), "a"),))
        .await
        .unwrap();
    let (n,): (scylla::value::Counter,) = s
        .query_unpaged("SELECT n FROM ks.counts WHERE k = 'a'", &[])
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    assert_eq!(n.0, 10);
    let err = s
        .query_unpaged("INSERT INTO ks.counts (k, n) VALUES ('b', 1)", &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("counter"), "{err}");

    // Delete and truncate.
    run(&s, "DELETE FROM ks.kv WHERE k = 1").await;
    let rows = s
        .query_unpaged("SELECT * FROM ks.kv WHERE k = 1", &[])
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    assert_eq!(rows.rows_num(), 0);
    run(&s, "TRUNCATE ks.kv").await;
    let n: (i64,) = s
        .query_unpaged("SELECT COUNT(*) FROM ks.kv", &[])
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    assert_eq!(n.0, 0);

    // Every write above was applied once.
    assert_eq!(cluster.counters().duplicate_writes(), 0);
    assert_eq!(
        cluster
            .counters()
            .applied("UPDATE ks.counts SET n = n + ? WHERE k = ?"),
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_injected_error_reaches_the_driver_as_its_variant() {
    let cluster = Cluster::start().await.unwrap();
    let s = session(&cluster).await;
    keyspace(&s, "ks", 1).await;
    run(&s, "CREATE TABLE ks.kv (k int PRIMARY KEY, v text)").await;
    let sel = s.prepare("SELECT v FROM ks.kv WHERE k = ?").await.unwrap();
    type Check = fn(&DbError) -> bool;
    let cases: Vec<(InjectedError, Check)> = vec![
        (InjectedError::Overloaded, |e| {
            matches!(e, DbError::Overloaded)
        }),
        (InjectedError::Unavailable, |e| {
            matches!(
                e,
                DbError::Unavailable {
                    required: 2,
                    alive: 1,
                    ..
                }
            )
        }),
        (InjectedError::ReadTimeout, |e| {
            matches!(
                e,
                DbError::ReadTimeout {
                    received: 1,
                    required: 2,
                    data_present: false,
                    ..
                }
            )
        }),
        (InjectedError::WriteTimeout(WriteType::Simple), |e| {
            matches!(
                e,
                DbError::WriteTimeout {
                    write_type: scylla::errors::WriteType::Simple,
                    ..
                }
            )
        }),
        (InjectedError::ReadFailure, |e| {
            matches!(e, DbError::ReadFailure { numfailures: 1, .. })
        }),
        (InjectedError::WriteFailure, |e| {
            matches!(e, DbError::WriteFailure { numfailures: 1, .. })
        }),
        (InjectedError::ServerError, |e| {
            matches!(e, DbError::ServerError)
        }),
        (InjectedError::IsBootstrapping, |e| {
            matches!(e, DbError::IsBootstrapping)
        }),
        (InjectedError::TruncateError, |e| {
            matches!(e, DbError::TruncateError)
        }),
        (InjectedError::Unauthorized, |e| {
            matches!(e, DbError::Unauthorized)
        }),
    ];
    for (injected, check) in cases {
        let id = cluster.faults().add(
            Fault::error(injected)
                .opcode(Opcode::Execute)
                .table("ks", "kv")
                .times(1),
        );
        let err = s.execute_unpaged(&sel, (1i32,)).await.unwrap_err();
        let db = db_error(&err).unwrap_or_else(|| panic!("{injected:?} gave {err:?}"));
        assert!(check(db), "{injected:?} gave {db:?}");
        assert_eq!(cluster.faults().fired(id), 1);
        // the rule is spent: the next request succeeds
        s.execute_unpaged(&sel, (1i32,)).await.unwrap();
        cluster.faults().remove(id);
    }
    // UNPREPARED makes the driver re-prepare and retry, transparently.
    let id = cluster.faults().add(
        Fault::error(InjectedError::Unprepared)
            .opcode(Opcode::Execute)
            .times(1),
    );
    s.execute_unpaged(&sel, (1i32,)).await.unwrap();
    assert_eq!(cluster.faults().fired(id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_timeout_after_apply_is_counted_once() {
    let cluster = Cluster::start().await.unwrap();
    let s = session(&cluster).await;
    keyspace(&s, "ks", 1).await;
    run(&s, "CREATE TABLE ks.events (id int PRIMARY KEY, n counter)").await;
    let text = "UPDATE ks.events SET n = n + 1 WHERE id = ?";
    let inc = s.prepare(text).await.unwrap();
    cluster.faults().add(
        Fault::write_timeout_after_apply()
            .matching("ks.events")
            .times(1),
    );
    let err = s.execute_unpaged(&inc, (7i32,)).await.unwrap_err();
    assert!(
        matches!(db_error(&err), Some(DbError::WriteTimeout { .. })),
        "{err:?}"
    );
    // The write was applied even though the client saw a timeout.
    let (n,): (scylla::value::Counter,) = s
        .query_unpaged("SELECT n FROM ks.events WHERE id = 7", &[])
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    assert_eq!(n.0, 1);
    assert_eq!(cluster.counters().applied(text), 1);
    assert_eq!(cluster.counters().duplicate_writes(), 0);
    // A naive retry applies it a second time, and the counters prove it.
    s.execute_unpaged(&inc, (7i32,)).await.unwrap();
    assert_eq!(cluster.counters().executions(text), 2);
    assert_eq!(cluster.counters().duplicate_writes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_no_response_and_close_connection() {
    let cluster = Cluster::start().await.unwrap();
    let s = session(&cluster).await;
    keyspace(&s, "ks", 1).await;
    run(&s, "CREATE TABLE ks.kv (k int PRIMARY KEY, v text)").await;
    let sel = s.prepare("SELECT v FROM ks.kv WHERE k = ?").await.unwrap();

    let id = cluster
        .faults()
        .add(Fault::delay(Duration::from_millis(150)).opcode(Opcode::Execute));
    let start = Instant::now();
    s.execute_unpaged(&sel, (1i32,)).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(150));
    cluster.faults().remove(id);

    let mut quick = sel.clone();
    quick.set_request_timeout(Some(Duration::from_millis(200)));
    let id = cluster
        .faults()
        .add(Fault::no_response().opcode(Opcode::Execute).times(1));
    let err = s.execute_unpaged(&quick, (1i32,)).await.unwrap_err();
    assert!(matches!(err, ExecutionError::RequestTimeout(_)), "{err:?}");
    assert_eq!(cluster.faults().fired(id), 1);

    cluster
        .faults()
        .add(Fault::close_connection().opcode(Opcode::Execute).times(1));
    let err = s.execute_unpaged(&sel, (1i32,)).await.unwrap_err();
    assert!(
        matches!(
            err,
            ExecutionError::LastAttemptError(RequestAttemptError::BrokenConnectionError(_))
        ) || matches!(err, ExecutionError::ConnectionPoolError(_)),
        "{err:?}"
    );
    // The driver reconnects and carries on.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.execute_unpaged(&sel, (1i32,)).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("driver did not reconnect: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lz4_and_snappy_sessions() {
    let cluster = Cluster::start().await.unwrap();
    for c in [Compression::Lz4, Compression::Snappy] {
        let s = session_with(&cluster, SessionBuilder::new().compression(Some(c))).await;
        let ks = format!("ks_{c:?}").to_lowercase();
        keyspace(&s, &ks, 1).await;
        run(
            &s,
            &format!("CREATE TABLE {ks}.big (k int PRIMARY KEY, v text)"),
        )
        .await;
        let ins = s
            .prepare(format!("INSERT INTO {ks}.big (k, v) VALUES (?, ?)"))
            .await
            .unwrap();
        let v = "compressible ".repeat(2000);
        s.execute_unpaged(&ins, (1i32, &v)).await.unwrap();
        let (got,): (String,) = s
            .query_unpaged(format!("SELECT v FROM {ks}.big WHERE k = 1"), &[])
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .single_row()
            .unwrap();
        assert_eq!(got, v);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_routing_stop_and_restart() {
    let cluster = Cluster::builder().nodes(3).start().await.unwrap();
    let addrs = cluster.contact_points();
    assert_eq!(addrs[1].ip().to_string(), "127.0.0.2");
    assert!(addrs.iter().all(|a| a.port() == addrs[0].port()));
    let s = session(&cluster).await;
    // The driver found every node and its tokens.
    let state = s.get_cluster_state();
    assert_eq!(state.get_nodes_info().len(), 3);
    keyspace(&s, "ks", 3).await;
    run(&s, "CREATE TABLE ks.kv (k int PRIMARY KEY, v int)").await;
    let ins = s
        .prepare("INSERT INTO ks.kv (k, v) VALUES (?, ?)")
        .await
        .unwrap();
    let sel = s.prepare("SELECT v FROM ks.kv WHERE k = ?").await.unwrap();
    cluster.counters().reset();
    for k in 0..300i32 {
        s.execute_unpaged(&ins, (k, k * 2)).await.unwrap();
    }
    // Token-aware routing spreads the work over every node.
    for i in 0..3 {
        let n = cluster.counters().node_executions(i);
        assert!(n > 30, "node {i} executed only {n} of 300 writes");
    }
    // The data is the cluster's, whichever node answers.
    for k in (0..300i32).step_by(37) {
        let (v,): (i32,) = s
            .execute_unpaged(&sel, (k,))
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .single_row()
            .unwrap();
        assert_eq!(v, k * 2);
    }

    // Stop node 1 (127.0.0.2): CL ONE still works, CL ALL is unavailable.
    cluster.stop_node(1).await;
    assert!(!cluster.is_running(1));
    let mut ok = 0;
    for k in 0..50i32 {
        if s.execute_unpaged(&sel, (k,)).await.is_ok() {
            ok += 1;
        }
    }
    assert!(ok >= 40, "only {ok} of 50 reads succeeded with a node down");
    let mut all = Statement::new("SELECT v FROM ks.kv WHERE k = 1");
    all.set_consistency(Consistency::All);
    let err = loop {
        // the first attempt may go to the stopped node's broken connection
        match s.query_unpaged(all.clone(), &[]).await {
            Err(e) if db_error(&e).is_some() => break e,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert!(
        matches!(
            db_error(&err),
            Some(DbError::Unavailable {
                required: 3,
                alive: 2,
                ..
            })
        ),
        "{err:?}"
    );

    // Restart: the node forgot its prepared statements; the driver re-prepares.
    cluster.start_node(1).await.unwrap();
    assert!(cluster.is_running(1));
    s.query_unpaged(all.clone(), &[]).await.unwrap();
    let before = cluster.counters().node_executions(1);
    let deadline = Instant::now() + Duration::from_secs(15);
    while cluster.counters().node_executions(1) == before {
        assert!(
            Instant::now() < deadline,
            "the driver never came back to the restarted node"
        );
        for k in 0..30i32 {
            let _ = s.execute_unpaged(&sel, (k,)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.stop().await;
}

/// Node numbering is one convention: for every `i`, `node_addr(i)`,
/// `contact_points()[i]`, `Fault::node(i)`, `node_executions(i)`,
/// `stop_node(i)` and `start_node(i)` all name the same node (0-based:
/// node 0 is 127.0.0.1). Reads are sent to one chosen address with the
/// driver's single-target policy, so nothing here depends on routing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_indexes_name_the_same_node_everywhere() {
    use scylla::policies::load_balancing::{NodeIdentifier, SingleTargetLoadBalancingPolicy};

    const READS: u64 = 20;
    let cluster = Cluster::builder().nodes(3).start().await.unwrap();
    for i in 0..3 {
        assert_eq!(cluster.contact_points()[i], cluster.node_addr(i));
        assert_eq!(
            cluster.node_addr(i).ip().to_string(),
            format!("127.0.0.{}", i + 1),
            "node {i} is the {}-th address",
            i + 1
        );
    }
    let s = session(&cluster).await;
    keyspace(&s, "nums", 3).await;
    run(&s, "CREATE TABLE nums.kv (k int PRIMARY KEY, v int)").await;
    run(&s, "INSERT INTO nums.kv (k, v) VALUES (1, 1)").await;
    let sel = s
        .prepare("SELECT v FROM nums.kv WHERE k = 1")
        .await
        .unwrap();
    let to = |i: usize| {
        let mut p = sel.clone();
        p.set_load_balancing_policy(Some(SingleTargetLoadBalancingPolicy::new(
            NodeIdentifier::NodeAddress(cluster.node_addr(i)),
            None,
        )));
        p
    };

    for i in 0..3 {
        // Reads sent to node_addr(i) are executed by node_executions(i)'s node.
        let before = cluster.counters().node_executions(i);
        for _ in 0..READS {
            let r = s.execute_unpaged(&to(i), ()).await.unwrap();
            assert_eq!(
                r.request_coordinator().connection_address(),
                cluster.node_addr(i)
            );
        }
        let executed = cluster.counters().node_executions(i) - before;
        assert!(
            executed >= READS,
            "node_executions({i}) grew by {executed} for {READS} reads sent to node_addr({i})"
        );

        // Fault::node(i) hits the reads node_addr(i) serves, and no other.
        let id = cluster.faults().add(
            Fault::error(InjectedError::Overloaded)
                .table("nums", "kv")
                .reads()
                .node(i),
        );
        for j in 0..3 {
            for _ in 0..READS {
                let r = s.execute_unpaged(&to(j), ()).await;
                if j == i {
                    let e = r.expect_err("Fault::node(i) fails reads on node_addr(i)");
                    assert!(matches!(db_error(&e), Some(DbError::Overloaded)), "{e:?}");
                } else {
                    r.unwrap_or_else(|e| panic!("Fault::node({i}) hit node_addr({j}): {e:?}"));
                }
            }
        }
        assert_eq!(cluster.faults().fired(id), READS);
        assert!(cluster.faults().remove(id));
    }

    // stop_node(i) stops the node at node_addr(i); node_executions(i) stays
    // still while the others serve; start_node(i) brings that address back.
    for i in 0..3 {
        cluster.stop_node(i).await;
        assert!(!cluster.is_running(i));
        assert!(
            tokio::net::TcpStream::connect(cluster.node_addr(i))
                .await
                .is_err(),
            "stop_node({i}) left node_addr({i}) listening"
        );
        let stopped = cluster.counters().node_executions(i);
        for j in (0..3).filter(|&j| j != i) {
            assert!(cluster.is_running(j));
            tokio::net::TcpStream::connect(cluster.node_addr(j))
                .await
                .unwrap_or_else(|e| panic!("stop_node({i}) stopped node_addr({j}): {e}"));
            let before = cluster.counters().node_executions(j);
            for _ in 0..READS {
                let _ = s.execute_unpaged(&to(j), ()).await;
            }
            assert!(cluster.counters().node_executions(j) > before);
        }
        assert_eq!(cluster.counters().node_executions(i), stopped);
        cluster.start_node(i).await.unwrap();
        assert!(cluster.is_running(i));
        tokio::net::TcpStream::connect(cluster.node_addr(i))
            .await
            .unwrap_or_else(|e| panic!("start_node({i}) did not reopen node_addr({i}): {e}"));
        // The driver reconnects to that address and node i serves again.
        let before = cluster.counters().node_executions(i);
        let deadline = Instant::now() + Duration::from_secs(15);
        while s.execute_unpaged(&to(i), ()).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the driver never came back to node_addr({i})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(cluster.counters().node_executions(i) > before);
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_protocol_versions_get_the_downgrade_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = Cluster::start().await.unwrap();
    let mut sock = tokio::net::TcpStream::connect(cluster.node_addr(0))
        .await
        .unwrap();
    // OPTIONS in protocol v5 framing header
    sock.write_all(&[0x05, 0, 0, 1, 0x05, 0, 0, 0, 0])
        .await
        .unwrap();
    let mut header = [0u8; 9];
    sock.read_exact(&mut header).await.unwrap();
    assert_eq!(header[4], 0x00, "an ERROR frame");
    let len = u32::from_be_bytes(header[5..9].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len];
    sock.read_exact(&mut body).await.unwrap();
    assert_eq!(i32::from_be_bytes(body[..4].try_into().unwrap()), 0x000A);
    let msg = String::from_utf8_lossy(&body[6..]);
    assert!(
        msg.contains("Invalid or unsupported protocol version (5)"),
        "{msg}"
    );
    // the connection stays usable for a v4 request
    sock.write_all(&[0x04, 0, 0, 2, 0x05, 0, 0, 0, 0])
        .await
        .unwrap();
    sock.read_exact(&mut header).await.unwrap();
    assert_eq!(header[4], 0x06, "SUPPORTED");
}

#[path = "driver/after_apply.rs"]
mod after_apply;
#[path = "driver/cassandra_answers.rs"]
mod cassandra_answers;
#[path = "driver/lying_counts.rs"]
mod lying_counts;

/// A minimal raw protocol client for what the drivers hide.
mod raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub(crate) async fn send(sock: &mut TcpStream, stream: i16, opcode: u8, body: &[u8]) {
        let mut f = vec![0x04, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.push(opcode);
        f.extend_from_slice(&(body.len() as u32).to_be_bytes());
        f.extend_from_slice(body);
        sock.write_all(&f).await.unwrap();
    }

    /// (stream, opcode, body)
    pub(crate) async fn recv(sock: &mut TcpStream) -> (i16, u8, Vec<u8>) {
        let mut h = [0u8; 9];
        sock.read_exact(&mut h).await.unwrap();
        let len = u32::from_be_bytes(h[5..9].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len];
        sock.read_exact(&mut body).await.unwrap();
        (i16::from_be_bytes([h[2], h[3]]), h[4], body)
    }

    pub(crate) fn string_list(items: &[&str]) -> Vec<u8> {
        let mut b = (items.len() as u16).to_be_bytes().to_vec();
        for i in items {
            b.extend_from_slice(&(i.len() as u16).to_be_bytes());
            b.extend_from_slice(i.as_bytes());
        }
        b
    }

    pub(crate) fn strings(body: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut i = 0;
        while i + 2 <= body.len() {
            let n = u16::from_be_bytes([body[i], body[i + 1]]) as usize;
            match std::str::from_utf8(body.get(i + 2..i + 2 + n).unwrap_or(&[])) {
                Ok(s) if n > 0 => out.push(s.to_string()),
                _ => break,
            }
            i += 2 + n;
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_use_keyspace_and_system_tables() {
    let cluster = Cluster::builder().nodes(2).start().await.unwrap();
    // A raw connection to node 0 registered for events.
    let mut sock = tokio::net::TcpStream::connect(cluster.node_addr(0))
        .await
        .unwrap();
    let startup = {
        let mut b = 1u16.to_be_bytes().to_vec();
        for s in ["CQL_VERSION", "3.0.0"] {
            b.extend_from_slice(&(s.len() as u16).to_be_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        b
    };
    raw::send(&mut sock, 1, 0x01, &startup).await;
    assert_eq!(raw::recv(&mut sock).await.1, 0x02, "READY");
    raw::send(
        &mut sock,
        2,
        0x0B,
        &raw::string_list(&["SCHEMA_CHANGE", "STATUS_CHANGE"]),
    )
    .await;
    assert_eq!(raw::recv(&mut sock).await.1, 0x02, "READY");

    let s = session(&cluster).await;
    keyspace(&s, "evks", 2).await;
    let (stream, opcode, body) = raw::recv(&mut sock).await;
    assert_eq!((stream, opcode), (-1, 0x0C), "an EVENT");
    assert_eq!(
        raw::strings(&body),
        vec!["SCHEMA_CHANGE", "CREATED", "KEYSPACE", "evks"]
    );

    cluster.stop_node(1).await;
    let (_, opcode, body) = raw::recv(&mut sock).await;
    assert_eq!(opcode, 0x0C);
    assert_eq!(
        raw::strings(&body)[..2],
        ["STATUS_CHANGE".to_string(), "DOWN".to_string()]
    );
    assert_eq!(
        &body[body.len() - 9..body.len() - 4],
        &[4, 127, 0, 0, 2],
        "the stopped node's address"
    );
    cluster.start_node(1).await.unwrap();
    let (_, _, body) = raw::recv(&mut sock).await;
    assert_eq!(
        raw::strings(&body)[..2],
        ["STATUS_CHANGE".to_string(), "UP".to_string()]
    );

    // USE, then unqualified names.
    s.use_keyspace("evks", false).await.unwrap();
    run(&s, "CREATE TABLE t (k int PRIMARY KEY, v int)").await;
    run(&s, "INSERT INTO t (k, v) VALUES (1, 2)").await;
    let (v,): (i32,) = s
        .query_unpaged("SELECT v FROM t WHERE k = 1", &[])
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    assert_eq!(v, 2);

    // SELECT * from the system tables other drivers read; peers_v2 is
    // answered Invalid so they fall back to peers.
    let local = s
        .query_unpaged("SELECT * FROM system.local", &[])
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    assert_eq!(local.rows_num(), 1);
    assert!(local.column_specs().iter().any(|c| c.name() == "tokens"));
    let peers = s
        .query_unpaged("SELECT * FROM system.peers", &[])
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    assert_eq!(peers.rows_num(), 1);
    let err = s
        .query_unpaged("SELECT * FROM system.peers_v2", &[])
        .await
        .unwrap_err();
    assert!(matches!(db_error(&err), Some(DbError::Invalid)), "{err:?}");
    let cols: Vec<(String, String)> = s
        .query_unpaged("SELECT column_name, kind FROM system_schema.columns WHERE keyspace_name = 'evks' AND table_name = 't'", &[])
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(String, String)>()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        cols,
        vec![
            ("k".into(), "partition_key".into()),
            ("v".into(), "regular".into())
        ]
    );
}
