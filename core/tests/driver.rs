//! The driver service end to end: the real scylla driver over TCP against
//! a testkit cluster.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use tower::{Service, ServiceExt};
use tower_cql_core::{
    AttemptReason, Collector, Collectors, CqlRequest, DriverService, ErrorKind, Gate,
    InMemoryCollector, Statement,
    event::{AttemptEvent, PageEvent, StreamEvent},
};
use tower_cql_testkit::{Cluster, Fault, InjectedError, Opcode, WriteType};

struct Setup {
    cluster: Cluster,
    driver: DriverService,
    memory: Arc<InMemoryCollector>,
    collectors: Collectors,
}

/// One node, and a point read the driver service has prepared and the
/// statement remembers (its first request done).
async fn setup_with_read() -> (Setup, Statement) {
    let s = setup(1).await;
    let read = Statement::new("SELECT v FROM ks.kv WHERE k = ?");
    s.driver
        .execute(read.request().bind((1i32,)))
        .await
        .unwrap();
    (s, read)
}

/// A session on `cluster`, the real driver over TCP.
async fn connect(cluster: &Cluster) -> Arc<Session> {
    Arc::new(
        SessionBuilder::new()
            .known_nodes_addr(cluster.contact_points())
            .build()
            .await
            .unwrap(),
    )
}

async fn setup(nodes: usize) -> Setup {
    let cluster = Cluster::builder().nodes(nodes).start().await.unwrap();
    let session = connect(&cluster).await;
    let memory = Arc::new(InMemoryCollector::new());
    let collectors = Collectors::with([memory.clone()]);
    let driver = DriverService::builder(session)
        .collectors(collectors.clone())
        .build()
        .unwrap();
    let s = Setup {
        cluster,
        driver,
        memory,
        collectors,
    };
    s.run("CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
        .await;
    s.run("CREATE TABLE ks.kv (k int PRIMARY KEY, v text)")
        .await;
    s.run("CREATE TABLE ks.rows (p int, c int, v text, PRIMARY KEY (p, c))")
        .await;
    s
}

impl Setup {
    async fn run(&self, cql: &str) {
        self.driver
            .execute(CqlRequest::unprepared(cql.to_string()))
            .await
            .unwrap_or_else(|e| panic!("{cql}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_cache_hits_and_misses() {
    let s = setup(1).await;
    let mut svc = s.driver.clone();
    let (h0, m0) = s.driver.cache_stats();
    let insert = Statement::new("INSERT INTO ks.kv (k, v) VALUES (?, ?)").operation("put");
    for k in 0..5i32 {
        svc.ready()
            .await
            .unwrap()
            .call(insert.request().bind((k, format!("v{k}"))))
            .await
            .unwrap();
    }
    let (h1, m1) = s.driver.cache_stats();
    assert_eq!((h1 - h0, m1 - m0), (4, 1), "one miss, then hits");
    assert_eq!(
        s.cluster
            .counters()
            .executions("INSERT INTO ks.kv (k, v) VALUES (?, ?)"),
        5
    );
    let resp = s
        .driver
        .execute(CqlRequest::query("SELECT v FROM ks.kv WHERE k = ?").bind((3i32,)))
        .await
        .unwrap();
    assert_eq!(resp.single_row::<(String,)>().unwrap().0, "v3");
    assert_eq!(resp.info().rows, 1);
    assert_eq!(resp.info().coordinator, Some(s.cluster.node_addr(0)));
    // attempts were observed with their labels
    let snap = s.memory.snapshot();
    assert_eq!(snap.attempt_latency(Some("put")).count(), 5);
    assert_eq!(
        snap.attempts_by_reason(AttemptReason::Initial),
        snap.attempt_latency(None).count()
    );
}

/// A statement remembers its prepared form per driver service: the same
/// `Statement` run through services on two clusters whose tables differ
/// (`v text` on one, `v int` on the other) is prepared on each and reads
/// each with its own cluster's prepared statement, never the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_remembers_its_prepared_form_per_driver_service() {
    let a = setup(1).await;
    let b = setup(1).await;
    b.run("CREATE TABLE ks.typed (k int PRIMARY KEY, v int)")
        .await;
    a.run("CREATE TABLE ks.typed (k int PRIMARY KEY, v text)")
        .await;
    a.run("INSERT INTO ks.typed (k, v) VALUES (1, 'one')").await;
    b.run("INSERT INTO ks.typed (k, v) VALUES (1, 1)").await;
    let get = Statement::new("SELECT v FROM ks.typed WHERE k = ?");
    // a first (it remembers its prepared statement), then b
    for _ in 0..3 {
        let on_a = a.driver.execute(get.request().bind((1i32,))).await.unwrap();
        assert_eq!(on_a.single_row::<(String,)>().unwrap().0, "one");
    }
    for _ in 0..3 {
        let on_b = b.driver.execute(get.request().bind((1i32,))).await.unwrap();
        assert_eq!(on_b.single_row::<(i32,)>().unwrap().0, 1);
    }
    // each service prepared it for its own cluster (one miss), then ran
    // what the statement remembered for it (hits); each cluster executed
    // its three. A statement remembered across services gave the second
    // service hits from the start: (3, 0) instead of (2, 1).
    for s in [&a, &b] {
        assert_eq!(s.driver.cache_stats(), (2, 1));
        let n = s
            .cluster
            .counters()
            .executions("SELECT v FROM ks.typed WHERE k = ?");
        assert_eq!(n, 3);
    }
}

/// A statement new to the cache, executed by eight tasks at once, is
/// prepared once (single flight): the server sees as many PREPAREs for it
/// as for a statement executed alone. Before, each task that missed the
/// cache prepared it: eight times as many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_statement_is_prepared_once_however_many_tasks_start_it() {
    let s = setup(1).await;
    const ALONE: &str = "SELECT v FROM ks.kv WHERE k = ? LIMIT 1";
    const TOGETHER: &str = "SELECT v FROM ks.kv WHERE k = ? LIMIT 2";
    // slow PREPAREs, so that the eight tasks all miss while one prepares
    let prepares = |text: &str| {
        s.cluster.faults().add(
            Fault::delay(Duration::from_millis(100))
                .opcode(Opcode::Prepare)
                .matching(text)
                .times(1_000),
        )
    };
    let (alone, together) = (prepares(ALONE), prepares(TOGETHER));
    s.driver
        .execute(CqlRequest::query(ALONE).bind((1i32,)))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|k| {
            let driver = s.driver.clone();
            tokio::spawn(
                async move { driver.execute(CqlRequest::query(TOGETHER).bind((k,))).await },
            )
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let (once, eight) = (
        s.cluster.faults().fired(alone),
        s.cluster.faults().fired(together),
    );
    assert!(once > 0, "the PREPAREs were seen");
    assert_eq!(
        eight, once,
        "eight tasks: {eight} PREPAREs, one task: {once}"
    );
}

#[derive(Default)]
struct Pages {
    pages: std::sync::Mutex<Vec<usize>>,
    ends: std::sync::Mutex<Vec<(String, u32, u64)>>,
    durations: std::sync::Mutex<Vec<Duration>>,
}

impl Collector for Pages {
    fn on_page(&self, e: &PageEvent<'_>) {
        self.pages.lock().unwrap().push(e.rows);
        self.durations.lock().unwrap().push(e.duration);
    }
    fn on_stream(&self, e: &StreamEvent<'_>) {
        self.ends
            .lock()
            .unwrap()
            .push((e.end.as_str().to_string(), e.pages, e.rows));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_stream_full_and_dropped_early() {
    let s = setup(1).await;
    let pages = Arc::new(Pages::default());
    s.collectors.add(pages.clone());
    let ins = Statement::new("INSERT INTO ks.rows (p, c, v) VALUES (?, ?, ?)");
    for c in 0..95i32 {
        s.driver
            .execute(ins.request().bind((1i32, c, format!("v{c}"))))
            .await
            .unwrap();
    }
    let read = Statement::new("SELECT c, v FROM ks.rows WHERE p = ?").operation("scan");
    let rows: Vec<(i32, String)> = s
        .driver
        .stream(read.request().bind((1i32,)).page_size(10))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(rows.len(), 95);
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        (0..95).collect::<Vec<_>>()
    );
    assert_eq!(
        *pages.pages.lock().unwrap(),
        vec![10, 10, 10, 10, 10, 10, 10, 10, 10, 5]
    );
    assert_eq!(
        pages.ends.lock().unwrap().as_slice(),
        &[("finished".to_string(), 10, 95)]
    );

    // Drop early: one completion event, and no more than one page ahead.
    pages.pages.lock().unwrap().clear();
    pages.ends.lock().unwrap().clear();
    let mut stream = s
        .driver
        .stream::<(i32, String)>(read.request().bind((1i32,)).page_size(10))
        .await
        .unwrap();
    for _ in 0..15 {
        stream.next().await.unwrap().unwrap();
    }
    drop(stream);
    // pages 1 and 2 read, page 3 asked for ahead: fetched, and counted,
    // if it arrived before the drop
    let ends = pages.ends.lock().unwrap().clone();
    let fetched = pages.pages.lock().unwrap().len();
    assert!((2..=3).contains(&fetched), "{fetched} pages fetched");
    assert_eq!(ends, vec![("dropped".to_string(), fetched as u32, 15)]);
    let snap = s.memory.snapshot();
    assert_eq!(snap.streams_dropped, 1);
    assert_eq!(snap.streams_finished, 1);

    // Many streams consumed from many tasks at once: exact counts.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let driver = s.driver.clone();
        let read = read.clone();
        tasks.push(tokio::spawn(async move {
            driver
                .stream::<(i32, String)>(read.request().bind((1i32,)).page_size(7))
                .await
                .unwrap()
                .try_fold(0usize, |n, _| async move { Ok(n + 1) })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 95);
    }

    // A stream whose rows do not match the type fails once and ends.
    let mut bad = s
        .driver
        .stream::<(String,)>(read.request().bind((1i32,)).page_size(10))
        .await
        .unwrap();
    let err = bad.next().await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Deserialization);
    assert!(bad.next().await.is_none());
    assert_eq!(pages.ends.lock().unwrap().last().unwrap().0, "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_injected_error_maps_to_its_kind_without_driver_retries() {
    let s = setup(1).await;
    let read = Statement::new("SELECT v FROM ks.kv WHERE k = ?");
    let cases = [
        (InjectedError::Overloaded, ErrorKind::Overloaded),
        (InjectedError::Unavailable, ErrorKind::Unavailable),
        (InjectedError::ReadTimeout, ErrorKind::ReadTimeout),
        (
            InjectedError::WriteTimeout(WriteType::Simple),
            ErrorKind::WriteTimeout,
        ),
        (InjectedError::ReadFailure, ErrorKind::ReadFailure),
        (InjectedError::WriteFailure, ErrorKind::WriteFailure),
        (InjectedError::ServerError, ErrorKind::ServerError),
        (InjectedError::IsBootstrapping, ErrorKind::IsBootstrapping),
        (InjectedError::TruncateError, ErrorKind::TruncateError),
        (InjectedError::Unauthorized, ErrorKind::Unauthorized),
    ];
    // warm the prepared cache
    s.driver
        .execute(read.request().bind((1i32,)))
        .await
        .unwrap();
    for (injected, kind) in cases {
        let before = s
            .cluster
            .counters()
            .executions("SELECT v FROM ks.kv WHERE k = ?");
        let id = s.cluster.faults().add(
            Fault::error(injected)
                .opcode(Opcode::Execute)
                .table("ks", "kv")
                .times(1),
        );
        let err = s
            .driver
            .execute(read.request().bind((1i32,)).idempotent(true))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{injected:?}: {err}");
        assert_eq!(err.node(), Some(s.cluster.node_addr(0)), "{err:?}");
        assert!(!err.to_string().is_empty());
        assert_eq!(s.cluster.faults().fired(id), 1);
        // the driver did not retry by itself: the fault fired once and the
        // statement was not executed again
        assert_eq!(
            s.cluster
                .counters()
                .executions("SELECT v FROM ks.kv WHERE k = ?"),
            before
        );
        s.cluster.faults().remove(id);
    }
    // the attempt events carry the kinds
    let snap = s.memory.snapshot();
    assert_eq!(snap.attempt_errors.values().sum::<u64>(), 10);
    assert_eq!(snap.attempt_errors.get(&ErrorKind::Overloaded), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let s = setup(1).await;
    let err = s
        .driver
        .execute(CqlRequest::query("SELEC v FROM ks.kv"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Syntax, "{err}");
    assert!(err.to_string().contains("fix the CQL statement"), "{err}");
    let err = s
        .driver
        .execute(CqlRequest::query("SELECT v FROM nope.kv WHERE k = ?").bind((1i32,)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
    // wrong value type: text where an int is expected
    let err = s
        .driver
        .execute(CqlRequest::query("SELECT v FROM ks.kv WHERE k = ?").bind(("one",)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Serialization, "{err}");
    assert!(err.was_not_sent());
    // wrong number of values
    let err = s
        .driver
        .execute(CqlRequest::query("SELECT v FROM ks.kv WHERE k = ?").bind((1i32, 2i32)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Serialization, "{err}");
    // an expired deadline is refused without being sent
    let err = s
        .driver
        .execute(CqlRequest::query("SELECT v FROM ks.kv WHERE k = 1").timeout(Duration::ZERO))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
    // a read into the wrong Rust type
    s.run("INSERT INTO ks.kv (k, v) VALUES (1, 'x')").await;
    let resp = s
        .driver
        .execute(CqlRequest::query("SELECT v FROM ks.kv WHERE k = 1"))
        .await
        .unwrap();
    assert_eq!(
        resp.rows::<(i64,)>().unwrap_err().kind(),
        ErrorKind::Deserialization
    );
    // the rows are counted once, and read as many times as asked
    assert!(resp.has_rows());
    assert_eq!(resp.info().rows, 1);
    assert!(matches!(
        resp.result(),
        Some(tower_cql_core::DriverResult::Rows(_))
    ));
    for _ in 0..2 {
        assert_eq!(resp.rows::<(String,)>().unwrap(), vec![("x".to_string(),)]);
    }
    assert_eq!(
        format!("{:?}", resp.result().unwrap()),
        "Rows(<1 rows redacted>)"
    );
    // a write has no rows to read: a clear error, not an empty list
    let resp = s
        .driver
        .execute(CqlRequest::query(
            "INSERT INTO ks.kv (k, v) VALUES (2, 'y')",
        ))
        .await
        .unwrap();
    assert!(!resp.has_rows());
    assert_eq!(resp.info().rows, 0);
    let err = resp.rows::<(String,)>().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Deserialization);
    assert!(err.to_string().contains("has no rows"), "{err}");
    // an invalid configuration is refused when built
    let err = DriverService::builder(s.driver.session().clone())
        .cache_capacity(0)
        .build()
        .unwrap_err();
    // the one setup error type, naming the setting
    assert_eq!(err.field, "driver.cache_capacity");
    assert!(err.to_string().contains("must be at least 1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_during_a_thousand_in_flight_requests() {
    let s = setup(1).await;
    s.cluster.faults().add(
        Fault::delay(Duration::from_millis(20))
            .opcode(Opcode::Execute)
            .probability(0.5),
    );
    let gate = Gate::with_collectors(s.collectors.clone());
    let svc = gate.wrap(s.driver.clone());
    let read = Statement::new("SELECT v FROM ks.kv WHERE k = ?");
    s.driver
        .execute(read.request().bind((1i32,)))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..1000i32 {
        let mut svc = svc.clone();
        let read = read.clone();
        tasks.push(tokio::spawn(async move {
            if i % 7 == 0 {
                tokio::task::yield_now().await;
            }
            match svc.ready().await {
                Ok(svc) => svc.call(read.request().bind((i,))).await.map(|_| ()),
                Err(e) => Err(e),
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    tokio::time::timeout(Duration::from_secs(30), gate.close())
        .await
        .expect("close() returned");
    assert_eq!(gate.in_flight(), 0);
    let (mut ok, mut shut) = (0, 0);
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("no hang")
            .unwrap()
        {
            Ok(()) => ok += 1,
            Err(e) if e.kind() == ErrorKind::ShutDown => shut += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(ok + shut, 1000);
    assert!(ok > 0 && shut > 0, "ok {ok} shut down {shut}");
    let err = svc.clone().ready().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ShutDown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_their_node_in_a_three_node_cluster() {
    let s = setup(3).await;
    #[derive(Default)]
    struct Nodes(std::sync::Mutex<Vec<Option<std::net::SocketAddr>>>);
    impl Collector for Nodes {
        fn on_attempt(&self, e: &AttemptEvent<'_>) {
            if e.error.is_some() {
                self.0.lock().unwrap().push(e.node);
            }
        }
    }
    let nodes = Arc::new(Nodes::default());
    s.collectors.add(nodes.clone());
    s.cluster.faults().add(
        Fault::error(InjectedError::Overloaded)
            .opcode(Opcode::Execute)
            .node(2),
    );
    let read = Statement::new("SELECT v FROM ks.kv WHERE k = ?");
    let mut overloaded = 0;
    for k in 0..60i32 {
        if let Err(e) = s.driver.execute(read.request().bind((k,))).await {
            assert_eq!(e.kind(), ErrorKind::Overloaded);
            assert_eq!(e.node(), Some(s.cluster.node_addr(2)));
            overloaded += 1;
        }
    }
    assert!(
        overloaded > 0,
        "token-aware routing sent some keys to node 3"
    );
    let seen = nodes.0.lock().unwrap().clone();
    assert_eq!(seen.len(), overloaded);
    assert!(seen.iter().all(|n| *n == Some(s.cluster.node_addr(2))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_passing_during_an_attempt_is_deadline_exceeded() {
    let (s, read) = setup_with_read().await;
    s.cluster.faults().add(
        Fault::delay(Duration::from_millis(500))
            .opcode(Opcode::Execute)
            .times(1),
    );
    let err = s
        .driver
        .execute(
            read.request()
                .bind((1i32,))
                .timeout(Duration::from_millis(50)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    assert!(err.may_have_been_applied());
    // a plain driver timeout without a deadline stays a client timeout
    s.cluster.faults().add(
        Fault::delay(Duration::from_millis(500))
            .opcode(Opcode::Execute)
            .times(1),
    );
    let session = s.driver.session().clone();
    let mut prepared = session
        .prepare("SELECT v FROM ks.kv WHERE k = ?")
        .await
        .unwrap();
    prepared.set_request_timeout(Some(Duration::from_millis(50)));
    let err = s
        .driver
        .execute(CqlRequest::prepared(prepared).bind((1i32,)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ClientTimeout, "{err}");
    // a deadline passed already: not sent, and the message says so
    let err = s
        .driver
        .execute(
            read.request()
                .bind((1i32,))
                .deadline(std::time::Instant::now() - Duration::from_millis(1)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    assert!(!err.may_have_been_applied());
    assert!(err.message().contains("before it was sent"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_server_tracing_ids() {
    let s = setup(1).await;
    let ins = s
        .driver
        .session()
        .prepare("INSERT INTO ks.kv (k, v) VALUES (?, ?)")
        .await
        .unwrap();
    let mut batch =
        scylla::statement::batch::Batch::new(scylla::statement::batch::BatchType::Logged);
    batch.append_statement(ins.clone());
    batch.append_statement(ins);
    let req = CqlRequest::batch(batch, ((100i32, "a"), (101i32, "b"))).operation("two_rows");
    assert_eq!(req.meta().kind(), tower_cql_core::OperationKind::Batch);
    assert_eq!(req.meta().table().map(|t| t.as_str()), Some("kv"));
    s.driver.execute(req).await.unwrap();
    let n = s
        .driver
        .execute(CqlRequest::query(
            "SELECT COUNT(*) FROM ks.kv WHERE k IN (100, 101)",
        ))
        .await
        .unwrap()
        .single_row::<(i64,)>()
        .unwrap();
    assert_eq!(n.0, 2);
    // a batch without batch values is refused before it is sent
    let empty = scylla::statement::batch::Batch::new(scylla::statement::batch::BatchType::Logged);
    let err = s
        .driver
        .execute(Statement::batch(empty).request())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Serialization);
    assert!(err.was_not_sent());

    // server-side tracing: the response carries the session id
    let resp = s
        .driver
        .execute(
            CqlRequest::query("SELECT v FROM ks.kv WHERE k = ?")
                .bind((100i32,))
                .tracing(true),
        )
        .await
        .unwrap();
    assert!(resp.info().tracing_id.is_some());
    let resp = s
        .driver
        .execute(CqlRequest::query("SELECT v FROM ks.kv WHERE k = ?").bind((100i32,)))
        .await
        .unwrap();
    assert!(resp.info().tracing_id.is_none());
    assert_eq!(
        s.memory
            .snapshot()
            .attempt_errors
            .get(&ErrorKind::Serialization),
        Some(&1)
    );
}

/// The driver service's response future runs in a block kept for the next
/// request on its thread. A kept block is emptied first: it keeps no
/// session, request or collector alive, whether its request completed or
/// was dropped unfinished (which still reports its cancelled attempt, as
/// from a box of its own). Once the service is dropped, the session is
/// the caller's alone.
#[tokio::test(flavor = "current_thread")]
async fn kept_response_blocks_keep_nothing_alive() {
    let cluster = Cluster::start().await.unwrap();
    let session = connect(&cluster).await;
    #[derive(Default)]
    struct Cancelled(std::sync::atomic::AtomicU64);
    impl Collector for Cancelled {
        fn on_attempt(&self, e: &AttemptEvent<'_>) {
            if e.error.is_some_and(|e| e.kind() == ErrorKind::Cancelled) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    let cancelled = Arc::new(Cancelled::default());
    let collectors = Collectors::with([cancelled.clone()]);
    let mut driver = DriverService::builder(session.clone())
        .collectors(collectors.clone())
        .build()
        .unwrap();
    let read = || CqlRequest::unprepared("SELECT release_version FROM system.local");
    for _ in 0..10 {
        driver.ready().await.unwrap().call(read()).await.unwrap();
    }
    // A hundred in flight (each polled until its request is sent), then
    // dropped unfinished: their blocks are kept, emptied.
    cluster.faults().add(Fault::delay(Duration::from_secs(30)));
    let mut unfinished: Vec<_> = (0..100).map(|_| driver.call(read())).collect();
    for f in &mut unfinished {
        assert!(futures::poll!(f).is_pending());
    }
    drop(unfinished);
    assert_eq!(
        cancelled.0.load(std::sync::atomic::Ordering::Relaxed),
        100,
        "each dropped request reports its cancelled attempt"
    );
    cluster.faults().clear();
    // the kept blocks run the next requests
    for _ in 0..10 {
        driver.ready().await.unwrap().call(read()).await.unwrap();
    }
    drop(driver);
    drop(collectors);
    assert_eq!(
        Arc::strong_count(&session),
        1,
        "a kept block holds the session (through the driver service's state)"
    );
    assert_eq!(
        Arc::strong_count(&cancelled),
        1,
        "a kept block holds the collectors"
    );
}

/// Response futures made on one thread and finished, or dropped, on
/// others (as tasks move between a runtime's workers): each block goes to
/// the free list of the thread that finished with it, emptied, and none
/// keeps the session or the collectors alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_blocks_move_between_threads_and_keep_nothing_alive() {
    let cluster = Cluster::start().await.unwrap();
    let session = connect(&cluster).await;
    let memory = Arc::new(InMemoryCollector::new());
    let collectors = Collectors::with([memory.clone()]);
    let driver = DriverService::builder(session.clone())
        .collectors(collectors.clone())
        .build()
        .unwrap();
    let read = || CqlRequest::unprepared("SELECT release_version FROM system.local");
    // made here, finished or dropped in tasks on either worker, and on a
    // thread of its own that is gone when the test checks
    let mut tasks = Vec::new();
    for i in 0..300 {
        let fut = driver.clone().call(read());
        tasks.push(tokio::spawn(async move {
            if i % 3 == 0 {
                drop(fut);
            } else {
                fut.await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let fut = driver.clone().call(read());
    std::thread::spawn(move || drop(fut)).join().unwrap();
    drop(driver);
    drop(collectors);
    assert_eq!(
        Arc::strong_count(&session),
        1,
        "a kept block holds the session"
    );
    assert_eq!(
        Arc::strong_count(&memory),
        1,
        "a kept block holds the collectors"
    );
}

/// A request's own consistency goes with it and not with the next one:
/// the statement as the driver service remembers it is run by reference
/// when a request asks for nothing of its own, and copied when it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_own_consistency_goes_with_it_and_not_with_the_next() {
    let (s, read) = setup_with_read().await;
    let sent = |req: CqlRequest| {
        let s = &s;
        async move {
            s.cluster.faults().add(
                Fault::error(InjectedError::Unavailable)
                    .opcode(Opcode::Execute)
                    .times(1),
            );
            let err = s.driver.execute(req).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
            err.message().to_string()
        }
    };
    let plain = sent(read.request().bind((1i32,))).await;
    let quorum = sent(
        read.request()
            .bind((1i32,))
            .consistency(scylla::statement::Consistency::Quorum),
    )
    .await;
    let after = sent(read.request().bind((1i32,))).await;
    assert!(quorum.contains("consistency: Quorum,"), "{quorum}");
    assert!(plain.contains("consistency: LocalQuorum,"), "{plain}");
    assert_eq!(plain, after, "the override stayed with its request");
}

/// A server's warnings reach the response, a result's and a write's (the
/// frame's WARNING flag), as the server sent them; the response's `Debug`
/// shows them redacted (a warning can quote a value); a response without
/// one has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_warnings_reach_the_response() {
    let (s, read) = setup_with_read().await;
    let plain = s
        .driver
        .execute(read.request().bind((1i32,)))
        .await
        .unwrap();
    assert!(plain.info().warnings.is_empty());
    let warning = "Read 1 live rows and 1001 tombstone cells for query \
                   SELECT v FROM ks.kv WHERE k = 'hunter2' (see tombstone_warn_threshold)";
    s.cluster
        .faults()
        .add(Fault::warning(warning).opcode(Opcode::Execute).times(2));
    let warned = s
        .driver
        .execute(read.request().bind((1i32,)))
        .await
        .unwrap();
    assert_eq!(warned.info().warnings, vec![warning.to_string()]);
    let debug = format!("{warned:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(
        debug.contains(
            "[\"Read 1 live rows and 1001 tombstone cells for query \
             SELECT v FROM ks.kv WHERE k = ? (?)\"]"
        ),
        "{debug}"
    );
    let write = Statement::new("INSERT INTO ks.kv (k, v) VALUES (?, ?)");
    let warned = s
        .driver
        .execute(write.request().bind((2i32, "b")))
        .await
        .unwrap();
    assert_eq!(warned.info().warnings, vec![warning.to_string()]);
    // the fault's two answers are used up
    let plain = s
        .driver
        .execute(read.request().bind((2i32,)))
        .await
        .unwrap();
    assert!(plain.info().warnings.is_empty());
    assert_eq!(plain.rows::<(String,)>().unwrap(), vec![("b".to_string(),)]);
}

/// A one-column row of a fixed-size scalar is kept inline in the request
/// (no allocation when bound): each such type round-trips through the
/// real driver, and a mistyped one is refused unsent, as a row kept
/// behind an `Arc` is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scalar_rows_kept_inline_serialize_as_their_tuples() {
    use scylla::value::CqlTimeuuid;
    let s = setup(1).await;
    async fn round_trip<T>(s: &Setup, cql_type: &str, value: T)
    where
        T: scylla::serialize::value::SerializeValue
            + for<'f, 'm> scylla::deserialize::value::DeserializeValue<'f, 'm>
            + PartialEq
            + std::fmt::Debug
            + Copy
            + Send
            + Sync
            + 'static,
    {
        s.run(&format!(
            "CREATE TABLE ks.s_{cql_type} (k {cql_type} PRIMARY KEY)"
        ))
        .await;
        s.driver
            .execute(
                CqlRequest::query(format!("INSERT INTO ks.s_{cql_type} (k) VALUES (?)"))
                    .bind((value,)),
            )
            .await
            .unwrap_or_else(|e| panic!("{cql_type}: {e}"));
        let rows: Vec<(T,)> = s
            .driver
            .execute(
                CqlRequest::query(format!("SELECT k FROM ks.s_{cql_type} WHERE k = ?"))
                    .bind((value,)),
            )
            .await
            .unwrap_or_else(|e| panic!("{cql_type}: {e}"))
            .rows()
            .unwrap();
        assert_eq!(rows, vec![(value,)], "{cql_type}");
    }
    round_trip(&s, "int", -7i32).await;
    round_trip(&s, "bigint", 1i64 << 40).await;
    round_trip(&s, "smallint", -300i16).await;
    round_trip(&s, "tinyint", 5i8).await;
    round_trip(&s, "boolean", true).await;
    round_trip(&s, "float", 1.5f32).await;
    round_trip(&s, "double", -2.25f64).await;
    round_trip(&s, "uuid", uuid::Uuid::from_u128(0x1234_5678_9abc_def0)).await;
    let timeuuid = CqlTimeuuid::from(uuid::Uuid::from_u128(
        0x8d8a_c610_566d_11ef_8000_0000_0000_0001,
    ));
    round_trip(&s, "timeuuid", timeuuid).await;

    // typed as the column's type, inline or not: a bigint for an int key
    // is refused before it is sent
    let err = s
        .driver
        .execute(CqlRequest::query("SELECT v FROM ks.kv WHERE k = ?").bind((1i64,)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Serialization, "{err}");
    assert!(err.was_not_sent());
}

/// Text that names no keyspace runs in the session's keyspace of the
/// moment, prepared or not: after `USE ks2`, an unqualified read the
/// service prepared under `USE ks` reads `ks2`'s table, whether the
/// request carries the remembering statement or text the cache knows;
/// back under `USE ks`, it reads `ks`'s again. (The server binds a
/// prepared statement to the keyspace it was prepared in, so a cache
/// keyed by text alone ran the wrong keyspace's statement.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unqualified_text_follows_the_sessions_keyspace() {
    let s = setup(1).await;
    s.run("CREATE KEYSPACE ks2 WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
        .await;
    s.run("CREATE TABLE ks2.kv (k int PRIMARY KEY, v text)")
        .await;
    s.run("INSERT INTO ks.kv (k, v) VALUES (1, 'in ks')").await;
    s.run("INSERT INTO ks2.kv (k, v) VALUES (1, 'in ks2')")
        .await;
    let text = "SELECT v FROM kv WHERE k = ?";
    // (a keyspace label names no keyspace to the server)
    let read = Statement::new(text).keyspace("labelled");
    let via_statement = |want: &'static str| {
        let (s, read) = (&s, &read);
        async move {
            let resp = s
                .driver
                .execute(read.request().bind((1i32,)))
                .await
                .unwrap();
            assert_eq!(
                resp.rows::<(String,)>().unwrap(),
                vec![(want.to_string(),)],
                "the remembering statement"
            );
            let resp = s
                .driver
                .execute(CqlRequest::query(text).bind((1i32,)))
                .await
                .unwrap();
            assert_eq!(
                resp.rows::<(String,)>().unwrap(),
                vec![(want.to_string(),)],
                "text the cache knows"
            );
        }
    };
    s.run("USE ks").await;
    via_statement("in ks").await;
    s.run("USE ks2").await;
    via_statement("in ks2").await;
    // (USE as prepared text, as CqlRequest::query sends it)
    s.driver.execute(CqlRequest::query("USE ks")).await.unwrap();
    via_statement("in ks").await;
    // a qualified text is one statement whatever the session's keyspace
    let (_, misses) = s.driver.cache_stats();
    let q = Statement::new("SELECT v FROM ks2.kv WHERE k = ?");
    for ks in ["ks", "ks2", "ks"] {
        s.run(&format!("USE {ks}")).await;
        let resp = s.driver.execute(q.request().bind((1i32,))).await.unwrap();
        assert_eq!(
            resp.rows::<(String,)>().unwrap(),
            vec![("in ks2".to_string(),)]
        );
    }
    assert_eq!(s.driver.cache_stats().1, misses + 1, "prepared once");
}

/// Failed preparations leave nothing behind: the service keeps only the
/// preparations in flight (single flight), not one entry per distinct
/// text that ever failed to prepare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_preparations_are_not_kept() {
    let s = setup(1).await;
    for i in 0..50 {
        let err = s
            .driver
            .execute(
                CqlRequest::query(format!("SELECT v FROM ks.missing{i} WHERE k = ?")).bind((1i32,)),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    }
    let shown = format!("{:?}", s.driver);
    assert!(shown.contains("preparing: 0"), "{shown}");
}

/// A streamed read's timeout is each page's, as drivers' request timeouts
/// are: a consumer that reads for longer than the timeout still gets
/// every page (each page is a request, given the time the stream's
/// request had when the stream started). A page slower than that budget
/// still fails `DeadlineExceeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_timeout_is_each_pages() {
    let s = setup(1).await;
    let ins = Statement::new("INSERT INTO ks.rows (p, c, v) VALUES (?, ?, ?)");
    for c in 0..4i32 {
        s.driver
            .execute(ins.request().bind((1i32, c, format!("v{c}"))))
            .await
            .unwrap();
    }
    let read = Statement::new("SELECT c, v FROM ks.rows WHERE p = ?");
    let mut stream = s
        .driver
        .stream::<(i32, String)>(
            read.request()
                .bind((1i32,))
                .page_size(1)
                .timeout(Duration::from_millis(500)),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(row) = stream.next().await {
        seen.push(row.unwrap_or_else(|e| panic!("after rows {seen:?}: {e}")).0);
        // the reader is slower than the timeout
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(seen, [0, 1, 2, 3]);

    // a page slower than the budget fails
    s.cluster.faults().add(
        Fault::delay(Duration::from_secs(2))
            .opcode(Opcode::Execute)
            .table("ks", "rows")
            .times(1),
    );
    let err = s
        .driver
        .stream::<(i32, String)>(
            read.request()
                .bind((1i32,))
                .page_size(1)
                .timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
}

/// A statement new to the driver's cache is prepared before it runs,
/// inside the request's deadline: a PREPARE slower than the deadline
/// ends the request at the deadline (`DeadlineExceeded`, nothing
/// executed), and a statement prepared in time runs with what is left
/// of the deadline, not the whole of it again. (The driver's prepare has
/// no timeout of its own: it waits for every node's answer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preparing_a_new_statement_keeps_to_the_requests_deadline() {
    let s = setup(1).await;
    s.run("INSERT INTO ks.kv (k, v) VALUES (1, 'one')").await;
    const READ: &str = "SELECT v FROM ks.kv WHERE k = ?";
    s.cluster.faults().add(
        Fault::delay(Duration::from_secs(2))
            .opcode(Opcode::Prepare)
            .matching(READ)
            .times(1),
    );
    let started = std::time::Instant::now();
    let out = s
        .driver
        .execute(
            CqlRequest::query(READ)
                .bind((1i32,))
                .timeout(Duration::from_millis(300)),
        )
        .await;
    let took = started.elapsed();
    let err = match out {
        Ok(_) => panic!("a request with a 300 ms deadline succeeded after {took:?}"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    assert!(took < Duration::from_millis(1500), "ended after {took:?}");
    assert!(!err.may_have_been_applied(), "{err}");
    assert_eq!(s.cluster.counters().executions(READ), 0);

    // prepared in 500 ms of an 800 ms deadline: the read gets the 300 ms
    // left, so an EXECUTE slowed by 600 ms ends at the deadline (given
    // the whole 800 ms again, it ended after 1.1 s, or succeeded)
    const OTHER: &str = "SELECT k, v FROM ks.kv WHERE k = ?";
    s.cluster.faults().add(
        Fault::delay(Duration::from_millis(500))
            .opcode(Opcode::Prepare)
            .matching(OTHER)
            .times(1),
    );
    s.cluster.faults().add(
        Fault::delay(Duration::from_millis(600))
            .opcode(Opcode::Execute)
            .matching(OTHER)
            .times(1),
    );
    let started = std::time::Instant::now();
    let out = s
        .driver
        .execute(
            CqlRequest::query(OTHER)
                .bind((1i32,))
                .timeout(Duration::from_millis(800)),
        )
        .await;
    let took = started.elapsed();
    let err = match out {
        Ok(_) => panic!("a request with an 800 ms deadline succeeded after {took:?}"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    // (200 ms to spare for a loaded machine, 300 ms short of 1.1 s)
    assert!(took < Duration::from_millis(1000), "ended after {took:?}");
    let shown = format!("{:?}", s.driver);
    assert!(shown.contains("preparing: 0"), "{shown}");
}

/// A page event's duration is the time the page took to fetch, from its
/// request to its answer: not the time the reader took to come back for
/// it. Each page here is answered in a few milliseconds while the reader
/// spends a second on every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pages_duration_is_its_fetch_not_the_readers_pause() {
    let s = setup(1).await;
    let pages = Arc::new(Pages::default());
    s.collectors.add(pages.clone());
    let ins = Statement::new("INSERT INTO ks.rows (p, c, v) VALUES (?, ?, ?)");
    for c in 0..3i32 {
        s.driver
            .execute(ins.request().bind((1i32, c, format!("v{c}"))))
            .await
            .unwrap();
    }
    let read = Statement::new("SELECT c, v FROM ks.rows WHERE p = ?");
    let mut stream = s
        .driver
        .stream::<(i32, String)>(read.request().bind((1i32,)).page_size(1))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(row) = stream.next().await {
        seen.push(row.unwrap().0);
        // the reader's own work on the row, the next page long answered
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(seen, [0, 1, 2]);
    let durations = pages.durations.lock().unwrap().clone();
    assert!(durations.len() >= 3, "{durations:?}");
    for (i, d) in durations.iter().enumerate() {
        assert!(
            // (a fetch takes milliseconds: room for a loaded machine,
            // well short of the reader's second)
            *d < Duration::from_millis(600),
            "page {i} took {d:?} by its event (all: {durations:?})"
        );
    }
}

/// A page that arrives but whose rows do not decode as the stream's
/// type was still fetched: it has its page event (with its rows), and
/// the stream's completion event counts it among the pages fetched,
/// as the stack's request event for it says it succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_does_not_decode_was_still_fetched() {
    let s = setup(1).await;
    let pages = Arc::new(Pages::default());
    s.collectors.add(pages.clone());
    let ins = Statement::new("INSERT INTO ks.rows (p, c, v) VALUES (?, ?, ?)");
    for c in 0..5i32 {
        s.driver
            .execute(ins.request().bind((1i32, c, format!("v{c}"))))
            .await
            .unwrap();
    }
    let read = Statement::new("SELECT c, v FROM ks.rows WHERE p = ?");
    // (c, v) is (int, text): read as (text,), no row decodes
    let mut bad = s
        .driver
        .stream::<(String,)>(read.request().bind((1i32,)).page_size(3))
        .await
        .unwrap();
    let err = bad.next().await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Deserialization, "{err}");
    assert!(bad.next().await.is_none());
    drop(bad);
    assert_eq!(
        *pages.pages.lock().unwrap(),
        vec![3],
        "the page that arrived"
    );
    assert_eq!(
        pages.ends.lock().unwrap().as_slice(),
        &[("failed".to_string(), 1, 0)],
        "(end, pages fetched, rows handed out)"
    );
}

/// A batch runs as idempotent only if its request is (the rule every
/// statement the driver service runs follows), whatever the driver's
/// `Batch` says: with the driver's own retries kept, a counter batch
/// whose `Batch` was marked idempotent, applied and then answered
/// `Overloaded`, is not retried by the driver, so it is applied once;
/// and a batch whose request is marked idempotent is one the driver may
/// retry, as it does a statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_idempotent_as_its_request_says_with_driver_retries_kept() {
    use scylla::statement::batch::{Batch, BatchType};
    let s = setup(3).await;
    s.run("CREATE TABLE ks.c (k int PRIMARY KEY, n counter)")
        .await;
    s.run("CREATE TABLE ks.plain (k int PRIMARY KEY, v int)")
        .await;
    let driver = DriverService::builder(s.driver.session().clone())
        .keep_driver_retries(true)
        .build()
        .unwrap();
    const BUMP: &str = "UPDATE ks.c SET n = n + 1 WHERE k = ?";
    let mut bump = Batch::new(BatchType::Counter);
    bump.append_statement(BUMP);
    // the caller's batch says idempotent; its text says a counter update
    bump.set_is_idempotent(true);
    let req = CqlRequest::batch(bump, ((1i32,),)).idempotent(true);
    assert!(!req.meta().is_idempotent(), "a counter update never is");
    s.cluster.faults().add(
        Fault::error_after_apply(InjectedError::Overloaded)
            .opcode(Opcode::Batch)
            .times(1),
    );
    let out = driver.execute(req).await;
    assert_eq!(
        s.cluster.counters().applied(BUMP),
        1,
        "the counter batch was applied {} times ({out:?})",
        s.cluster.counters().applied(BUMP)
    );
    let err = out.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Overloaded, "{err}");

    // the other way round: marked idempotent on the request, the driver
    // retries the batch (its `Batch` left as it was made, not idempotent)
    const SET: &str = "UPDATE ks.plain SET v = 7 WHERE k = ?";
    let mut set = Batch::new(BatchType::Logged);
    set.append_statement(SET);
    s.cluster.faults().add(
        Fault::error(InjectedError::Overloaded)
            .opcode(Opcode::Batch)
            .times(1),
    );
    let req = CqlRequest::batch(set, ((1i32,),)).idempotent(true);
    driver
        .execute(req)
        .await
        .expect("an idempotent batch is retried by the driver's own policy");
}

/// `execute` runs a request as `call` does: one that asks for a page
/// (`RequestMeta::set_page`) gets that page and the state of the next,
/// not the whole result in one unpaged answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_runs_the_page_a_request_asks_for_as_call_does() {
    let s = setup(1).await;
    let ins = Statement::new("INSERT INTO ks.rows (p, c, v) VALUES (?, ?, ?)");
    for c in 0..5i32 {
        s.driver
            .execute(ins.request().bind((1i32, c, format!("v{c}"))))
            .await
            .unwrap();
    }
    let mut page = CqlRequest::query("SELECT c, v FROM ks.rows WHERE p = ?")
        .bind((1i32,))
        .page_size(2);
    page.meta_mut()
        .set_page(0, scylla::response::PagingState::start());
    let called = s
        .driver
        .clone()
        .ready()
        .await
        .unwrap()
        .call(page.clone())
        .await
        .unwrap();
    let executed = s.driver.execute(page).await.unwrap();
    for (how, resp) in [("call", &called), ("execute", &executed)] {
        let rows = resp.rows::<(i32, String)>().unwrap();
        let more = matches!(
            resp.paging_state(),
            Some(scylla::response::PagingStateResponse::HasMorePages { .. })
        );
        assert_eq!(
            (rows.iter().map(|r| r.0).collect::<Vec<_>>(), more),
            (vec![0, 1], true),
            "{how}: the first page of two rows, more to come"
        );
    }
    // and `execute_page` the page it is given
    let Some(scylla::response::PagingStateResponse::HasMorePages { state }) =
        executed.paging_state()
    else {
        unreachable!("checked above")
    };
    let second = s
        .driver
        .execute_page(
            CqlRequest::query("SELECT c, v FROM ks.rows WHERE p = ?")
                .bind((1i32,))
                .page_size(2),
            state.clone(),
        )
        .await
        .unwrap();
    let rows = second.rows::<(i32, String)>().unwrap();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [2, 3]);
}

/// A schema change keeps to its request's deadline too: after the
/// server's answer the driver waits for every node to agree on the
/// schema (up to its `schema_agreement_timeout`, 60 s by default),
/// outside its request timeout. A deadline that passes meanwhile ends
/// the request at the deadline, `DeadlineExceeded`, saying the change
/// may have been applied (it was).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_keeps_to_the_requests_deadline() {
    let s = setup(1).await;
    // every schema agreement check answers 2 s late
    s.cluster.faults().add(
        Fault::delay(Duration::from_secs(2)).matching("SELECT schema_version FROM system.local"),
    );
    let started = std::time::Instant::now();
    let out = s
        .driver
        .execute(
            CqlRequest::unprepared("CREATE TABLE ks.later (k int PRIMARY KEY, v int)")
                .timeout(Duration::from_millis(300)),
        )
        .await;
    let took = started.elapsed();
    let err = match out {
        Ok(_) => panic!("a schema change with a 300 ms deadline succeeded after {took:?}"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    assert!(took < Duration::from_millis(1500), "ended after {took:?}");
    assert!(err.may_have_been_applied(), "{err}");
    s.cluster.faults().clear();
    // it was applied: the table is there
    s.run("INSERT INTO ks.later (k, v) VALUES (1, 1)").await;
}

/// A batch cannot be paged: streaming one is refused before the driver
/// is touched, as the other settings the driver cannot take are
/// (`BadRequest`, not sent, no attempt made: no attempt event, and the
/// error counts none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_batch_is_refused_before_any_attempt() {
    use scylla::statement::batch::{Batch, BatchType};
    let s = setup(1).await;
    let mut batch = Batch::new(BatchType::Logged);
    batch.append_statement("INSERT INTO ks.kv (k, v) VALUES (?, ?)");
    let attempts_before = s.memory.snapshot().attempt_latency(None).count();
    let err = s
        .driver
        .stream::<(i32,)>(CqlRequest::batch(batch, ((1i32, "one"),)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadRequest, "{err}");
    assert!(err.was_not_sent(), "{err}");
    assert!(err.message().contains("a batch cannot be paged"), "{err}");
    assert_eq!(err.attempts(), 0, "no attempt was made: {err}");
    assert_eq!(
        s.memory.snapshot().attempt_latency(None).count(),
        attempts_before,
        "no attempt event for an attempt never made"
    );
    assert_eq!(
        s.cluster
            .counters()
            .executions("INSERT INTO ks.kv (k, v) VALUES (?, ?)"),
        0
    );
}

/// An empty plan is `CircuitOpen` only when the breaker's exclusions
/// emptied it. A plan the session's own policy left empty (here: only a
/// datacenter no node is in, no failover) is the driver's `Connection`
/// error, whatever the request's hint excludes: before, any excluded
/// node, even one the plan never held, made it "every node this request
/// could use has an open circuit breaker".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_plan_is_circuit_open_only_when_the_exclusions_emptied_it() {
    use scylla::client::execution_profile::ExecutionProfile;
    use scylla::policies::load_balancing::DefaultPolicy;
    let cluster = Cluster::builder().nodes(2).start().await.unwrap();
    let nowhere = DefaultPolicy::builder()
        .prefer_datacenter("no-such-dc".to_string())
        .permit_dc_failover(false)
        .build();
    let profile = ExecutionProfile::builder()
        .load_balancing_policy(nowhere)
        .build();
    let session = SessionBuilder::new()
        .known_nodes_addr(cluster.contact_points())
        .default_execution_profile_handle(profile.into_handle())
        .build()
        .await
        .unwrap();
    let driver = DriverService::builder(Arc::new(session)).build().unwrap();
    let request = || CqlRequest::unprepared("SELECT key FROM system.local");
    let plain = driver.execute(request()).await.unwrap_err();
    assert_eq!(plain.kind(), ErrorKind::Connection, "{plain}");
    // the breaker excludes node 0: the plan was empty without it
    let mut req = request();
    req.meta_mut().route_hint().exclude(cluster.node_addr(0));
    let err = driver.execute(req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.was_not_sent(), "{err}");
}

/// A `USE` cut short (its deadline passed, or its caller stopped
/// waiting) while the server had it: the server still takes the keyspace
/// on the connection the `USE` went to. Every connection of the session
/// then runs in one keyspace all the same, the one the session says it
/// is in. (Before, the driver never saw the answer: that connection ran
/// in the new keyspace, the others and the session in the old one, and
/// the same text read another keyspace depending on the node it went
/// to.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_use_cut_short_leaves_every_connection_in_one_keyspace() {
    let s = setup(3).await;
    for ks in ["ks2", "ks3"] {
        s.run(&format!(
            "CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 3}}"
        ))
        .await;
        s.run(&format!("CREATE TABLE {ks}.kv (k int PRIMARY KEY, v text)"))
            .await;
        s.run(&format!("INSERT INTO {ks}.kv (k, v) VALUES (1, 'in {ks}')"))
            .await;
    }
    s.run("INSERT INTO ks.kv (k, v) VALUES (1, 'in ks')").await;
    s.run("USE ks").await;
    // the server answers the USE a second late
    s.cluster
        .faults()
        .add(Fault::delay(Duration::from_secs(1)).matching("USE ks"));
    // cut short by its deadline
    let err = s
        .driver
        .execute(CqlRequest::unprepared("USE ks2").timeout(Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    assert_one_keyspace(&s, "after a USE whose deadline passed").await;
    // cut short by its caller, who stopped waiting
    let dropped = tokio::time::timeout(
        Duration::from_millis(200),
        s.driver.execute(CqlRequest::unprepared("USE ks3")),
    )
    .await;
    assert!(
        dropped.is_err(),
        "the USE answered before its caller gave up"
    );
    assert_one_keyspace(&s, "after a USE whose caller stopped waiting").await;
}

/// A `USE` the server answers after the session's own request timeout
/// (its default execution profile's): it runs to its end all the same,
/// and every connection and the session take the keyspace. (Before, the
/// driver gave up on the answer after that timeout: the connection the
/// `USE` went to ran in the new keyspace, the others and the session in
/// the old one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_use_outlasting_the_sessions_request_timeout_runs_to_its_end() {
    use scylla::client::execution_profile::ExecutionProfile;
    let cluster = Cluster::builder().nodes(3).start().await.unwrap();
    let profile = ExecutionProfile::builder()
        .request_timeout(Some(Duration::from_secs(1)))
        .build();
    let session = SessionBuilder::new()
        .known_nodes_addr(cluster.contact_points())
        .default_execution_profile_handle(profile.into_handle())
        .build()
        .await
        .unwrap();
    let memory = Arc::new(InMemoryCollector::new());
    let collectors = Collectors::with([memory.clone()]);
    let driver = DriverService::builder(Arc::new(session))
        .collectors(collectors.clone())
        .build()
        .unwrap();
    let s = Setup {
        cluster,
        driver,
        memory,
        collectors,
    };
    for ks in ["ks", "ks2"] {
        s.run(&format!(
            "CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 3}}"
        ))
        .await;
        s.run(&format!("CREATE TABLE {ks}.kv (k int PRIMARY KEY, v text)"))
            .await;
        s.run(&format!("INSERT INTO {ks}.kv (k, v) VALUES (1, 'in {ks}')"))
            .await;
    }
    s.run("USE ks").await;
    // the server answers the USE a second after the session's timeout
    s.cluster
        .faults()
        .add(Fault::delay(Duration::from_secs(2)).matching("USE ks2"));
    s.driver
        .execute(CqlRequest::unprepared("USE ks2"))
        .await
        .unwrap_or_else(|e| panic!("USE ks2: {e}"));
    assert_one_keyspace(&s, "after a USE answered past the session's timeout").await;
    assert_eq!(
        s.driver
            .session()
            .get_keyspace()
            .as_deref()
            .map(String::as_str),
        Some("ks2")
    );
}

/// A `USE` whose caller stopped waiting goes on in its own task: the
/// gate it came through counts it until it ends, so `close()` returns
/// only then, and nothing changes the session after it returned. (Before,
/// `close()` returned at once, and the keyspace changed after it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_a_use_whose_caller_stopped_waiting() {
    let s = setup(1).await;
    s.run("CREATE KEYSPACE ks2 WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
        .await;
    s.run("USE ks").await;
    // the server answers the USE two seconds late
    s.cluster
        .faults()
        .add(Fault::delay(Duration::from_secs(2)).matching("USE ks2"));
    let gate = tower_cql_core::Gate::new();
    let mut gated = gate.wrap(s.driver.clone());
    let dropped = tokio::time::timeout(
        Duration::from_millis(200),
        gated
            .ready()
            .await
            .unwrap()
            .call(CqlRequest::unprepared("USE ks2")),
    )
    .await;
    assert!(
        dropped.is_err(),
        "the USE answered before its caller gave up"
    );
    gate.close().await;
    let at_close = s.driver.session().get_keyspace();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        s.driver.session().get_keyspace(),
        at_close,
        "the session's keyspace changed after close() returned"
    );
}

/// Waits for the server to have answered a `USE` it delayed, then reads
/// unqualified text on every node (through each connection): one
/// keyspace, the session's.
async fn assert_one_keyspace(s: &Setup, when: &str) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let resp = s
            .driver
            .execute(CqlRequest::unprepared("SELECT v FROM kv WHERE k = 1"))
            .await
            .unwrap();
        seen.insert(resp.single_row::<(String,)>().unwrap().0);
    }
    let session = s.driver.session().get_keyspace();
    let session = session.as_deref().map(String::as_str).unwrap_or("none");
    assert_eq!(
        seen.len(),
        1,
        "{when}: the connections run in different keyspaces ({seen:?}); the session says {session}"
    );
    assert_eq!(
        seen.first().map(String::as_str),
        Some(format!("in {session}").as_str()),
        "{when}: the connections run in another keyspace than the session's"
    );
}

/// A schema change whose nodes did not agree on the schema in time was
/// applied all the same (the coordinator answered it; only the driver's
/// wait for agreement failed): its error says it may have been applied,
/// as the same change cut short by its deadline does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_without_agreement_may_have_been_applied() {
    let cluster = Cluster::builder().nodes(1).start().await.unwrap();
    let session = SessionBuilder::new()
        .known_nodes_addr(cluster.contact_points())
        .schema_agreement_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let driver = DriverService::builder(Arc::new(session)).build().unwrap();
    driver
        .execute(CqlRequest::unprepared(
            "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        ))
        .await
        .unwrap();
    // every schema agreement check answers 2 s late
    cluster.faults().add(
        Fault::delay(Duration::from_secs(2)).matching("SELECT schema_version FROM system.local"),
    );
    let err = driver
        .execute(CqlRequest::unprepared(
            "CREATE TABLE ks.later (k int PRIMARY KEY, v int)",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaAgreement, "{err}");
    assert!(err.may_have_been_applied(), "{err}");
    cluster.faults().clear();
    // it was applied: the table is there
    driver
        .execute(CqlRequest::unprepared(
            "INSERT INTO ks.later (k, v) VALUES (1, 1)",
        ))
        .await
        .unwrap();
}

/// A schema change after a statement was prepared and cached: a column
/// added to the table shows in `SELECT *` through the cached statement,
/// remembered or looked up by text (the driver asks every result for its
/// metadata: none is taken from the statement prepared before the
/// change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_select_star_sees_a_column_added_since() {
    let s = setup(1).await;
    s.run("INSERT INTO ks.kv (k, v) VALUES (1, 'one')").await;
    let all = Statement::new("SELECT * FROM ks.kv WHERE k = ?");
    let resp = s.driver.execute(all.request().bind((1i32,))).await.unwrap();
    assert_eq!(
        resp.single_row::<(i32, String)>().unwrap(),
        (1, "one".to_string())
    );
    s.run("ALTER TABLE ks.kv ADD w int").await;
    s.run("UPDATE ks.kv SET w = 7 WHERE k = 1").await;
    for (how, req) in [
        ("the statement", all.request().bind((1i32,))),
        (
            "the text",
            CqlRequest::query("SELECT * FROM ks.kv WHERE k = ?").bind((1i32,)),
        ),
    ] {
        let resp = s.driver.execute(req).await.unwrap();
        assert_eq!(
            resp.single_row::<(i32, String, Option<i32>)>()
                .unwrap_or_else(|e| panic!("{how}: {e}")),
            (1, "one".to_string(), Some(7)),
            "{how}"
        );
    }
}

/// A table dropped and made again with another type for a column: text
/// the service prepared for the old table runs against the new one, by
/// text and through a statement that remembers the old one. (Before,
/// the statement prepared for the old table stayed cached with its old
/// types, and every request binding the new ones failed `Serialization`
/// on the client, never sent, until the entry was evicted.) Values of
/// the old type are still refused, as the new table would refuse them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_statement_follows_a_table_made_again() {
    let s = setup(1).await;
    s.run("CREATE TABLE ks.t (k int PRIMARY KEY, v text)").await;
    let put = "INSERT INTO ks.t (k, v) VALUES (?, ?)";
    let remembering = Statement::new(put);
    s.driver
        .execute(CqlRequest::query(put).bind((1i32, "one")))
        .await
        .unwrap();
    s.driver
        .execute(remembering.request().bind((1i32, "one")))
        .await
        .unwrap();
    s.run("DROP TABLE ks.t").await;
    s.run("CREATE TABLE ks.t (k int PRIMARY KEY, v int)").await;
    for round in 0..2 {
        s.driver
            .execute(CqlRequest::query(put).bind((2i32, 2i32)))
            .await
            .unwrap_or_else(|e| panic!("by text, round {round}: {e}"));
        s.driver
            .execute(remembering.request().bind((3i32, 3i32)))
            .await
            .unwrap_or_else(|e| panic!("remembered, round {round}: {e}"));
    }
    let got = s
        .driver
        .execute(CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").bind((3i32,)))
        .await
        .unwrap();
    assert_eq!(got.single_row::<(i32,)>().unwrap(), (3,));
    let err = s
        .driver
        .execute(CqlRequest::query(put).bind((4i32, "four")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Serialization, "{err}");
}

/// A statement that remembers the one prepared for a table since made
/// again with another column type runs the fresh one from then on: one
/// cache lookup a request (its own), as before the table changed. (Before,
/// it kept the outdated one: every request failed to bind on the client,
/// then went to the cache for the fresh one, a second lookup, forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_remembering_an_outdated_one_takes_the_fresh_one() {
    let s = setup(1).await;
    s.run("CREATE TABLE ks.t (k int PRIMARY KEY, v text)").await;
    let remembering = Statement::new("INSERT INTO ks.t (k, v) VALUES (?, ?)");
    s.driver
        .execute(remembering.request().bind((1i32, "one")))
        .await
        .unwrap();
    s.run("DROP TABLE ks.t").await;
    s.run("CREATE TABLE ks.t (k int PRIMARY KEY, v int)").await;
    // the first request finds it outdated
    s.driver
        .execute(remembering.request().bind((2i32, 2i32)))
        .await
        .unwrap();
    let rounds: u64 = 3;
    let (hits, misses) = s.driver.cache_stats();
    for round in 0..rounds {
        s.driver
            .execute(remembering.request().bind((3i32, 3i32)))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    let (hits_after, misses_after) = s.driver.cache_stats();
    assert_eq!(
        (hits_after - hits, misses_after - misses),
        (rounds, 0),
        "cache lookups (hits, misses) of {rounds} requests"
    );
}

/// A column whose type changed inside a collection (the table dropped
/// and made again; a frozen one too, which the metadata says is frozen
/// and the prepared statement does not): the statement prepared for the
/// old one is outdated too, and the request runs with one prepared anew.
/// (Before, only native types were compared: such a request failed
/// `Serialization` on the client, never sent, while the old statement
/// stayed cached.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_statement_follows_a_collection_made_again() {
    let s = setup(1).await;
    for (column, old, new) in [
        ("v", "list<int>", "list<text>"),
        ("f", "frozen<list<int>>", "frozen<list<text>>"),
    ] {
        let create = |typ: &str| format!("CREATE TABLE ks.l (k int PRIMARY KEY, {column} {typ})");
        let put = format!("INSERT INTO ks.l (k, {column}) VALUES (?, ?)");
        s.run(&create(old)).await;
        s.driver
            .execute(CqlRequest::query(put.clone()).bind((1i32, vec![1i32])))
            .await
            .unwrap_or_else(|e| panic!("{old}: {e}"));
        s.run("DROP TABLE ks.l").await;
        s.run(&create(new)).await;
        s.driver
            .execute(CqlRequest::query(put).bind((2i32, vec!["two".to_string()])))
            .await
            .unwrap_or_else(|e| panic!("{old} made {new}: {e}"));
        let got = s
            .driver
            .execute(
                CqlRequest::query(format!("SELECT {column} FROM ks.l WHERE k = ?")).bind((2i32,)),
            )
            .await
            .unwrap();
        assert_eq!(
            got.single_row::<(Vec<String>,)>().unwrap(),
            (vec!["two".to_string()],),
            "{new}"
        );
        s.run("DROP TABLE ks.l").await;
    }
}

/// What a request's hint tells its observer (the circuit breaker).
#[derive(Default)]
struct Heard(std::sync::Mutex<Vec<(std::net::SocketAddr, tower_cql_core::classify::NodeVerdict)>>);

impl tower_cql_core::routing::NodeObserver for Heard {
    fn on_attempt(
        &self,
        node: std::net::SocketAddr,
        verdict: tower_cql_core::classify::NodeVerdict,
    ) {
        self.0.lock().unwrap().push((node, verdict));
    }
}

/// A `USE` the server applied and the driver could not take to every
/// connection (a node refused it there): the session is in the new
/// keyspace already, and the connection it went to as well. Its error
/// says it may have been applied, not that the statement was invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_use_the_driver_could_not_take_everywhere_may_have_been_applied() {
    let s = setup(3).await;
    s.run("CREATE KEYSPACE ks2 WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 3}")
        .await;
    // node 1 refuses the keyspace on its connections; the USE goes elsewhere
    s.cluster.faults().add(
        Fault::error(InjectedError::ServerError)
            .matching("ks2")
            .node(1),
    );
    let mut use_ks2 = CqlRequest::unprepared("USE ks2");
    let hint = use_ks2.meta_mut().route_hint();
    hint.exclude(s.cluster.node_addr(1));
    // what the circuit breaker hears of the attempt
    let heard = Arc::new(Heard::default());
    hint.set_observer(heard.clone());
    let err = s.driver.execute(use_ks2).await.unwrap_err();
    // the node the USE went to applied it: no failure counts against it
    // (the node that refused it there had no attempt of this request)
    let verdicts = heard.0.lock().unwrap().clone();
    assert!(
        verdicts
            .iter()
            .all(|(_, v)| *v != tower_cql_core::classify::NodeVerdict::Failed),
        "{verdicts:?}: {err}"
    );
    assert_eq!(
        s.driver
            .session()
            .get_keyspace()
            .as_deref()
            .map(String::as_str),
        Some("ks2"),
        "{err}"
    );
    assert_ne!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.may_have_been_applied(), "{err}");
}

/// A request labelled with the session's keyspace as it entered the
/// stack (its gate does this, with text naming no keyspace) runs in that
/// keyspace, though a `USE` completed before it reached the driver: its
/// events and spans name the keyspace it read. (Before, the driver read
/// the session's keyspace again, ran the statement in the new one, and
/// the request's keyspace label named the old one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_runs_in_the_session_keyspace_it_was_labelled_with() {
    let s = setup(1).await;
    s.run("CREATE KEYSPACE ks2 WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
        .await;
    s.run("CREATE TABLE ks2.kv (k int PRIMARY KEY, v text)")
        .await;
    s.run("INSERT INTO ks.kv (k, v) VALUES (1, 'in ks')").await;
    s.run("INSERT INTO ks2.kv (k, v) VALUES (1, 'in ks2')")
        .await;
    s.run("USE ks").await;
    let read = Statement::new("SELECT v FROM kv WHERE k = ?");
    let labelled = || {
        let mut req = read.request().bind((1i32,));
        // what the gate does as the request enters
        req.meta_mut().label_session_keyspace("ks");
        req
    };
    let resp = s.driver.execute(labelled()).await.unwrap();
    assert_eq!(resp.single_row::<(String,)>().unwrap().0, "in ks");
    let req = labelled();
    // a USE completes before the request reaches the driver
    s.run("USE ks2").await;
    assert_eq!(req.meta().keyspace().map(|k| k.as_str()), Some("ks"));
    let resp = s.driver.execute(req).await.unwrap();
    assert_eq!(
        resp.single_row::<(String,)>().unwrap().0,
        "in ks",
        "labelled ks, ran in another keyspace"
    );
    // a request that enters now is labelled, and runs, in ks2
    let mut req = read.request().bind((1i32,));
    req.meta_mut().label_session_keyspace("ks2");
    let resp = s.driver.execute(req).await.unwrap();
    assert_eq!(resp.single_row::<(String,)>().unwrap().0, "in ks2");
}

/// A schema change the statement analysis names no schema kind for
/// (`CREATE TRIGGER`, `CREATE FUNCTION`, `ALTER MATERIALIZED VIEW`, ...:
/// kind `Other`) keeps to its request's deadline as the others do: the
/// driver's wait for the nodes to agree on the schema, outside its
/// request timeout, ends at the deadline. (Before, only the kinds the
/// analysis names were bounded: this one waited for the agreement, 2 s
/// here, past a 300 ms deadline.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_of_another_kind_keeps_to_the_requests_deadline() {
    let s = setup(1).await;
    let trigger = "CREATE TRIGGER audit ON ks.kv USING 'org.example.Audit'";
    assert_eq!(
        CqlRequest::unprepared(trigger).meta().kind(),
        tower_cql_core::OperationKind::Other
    );
    // every schema agreement check answers 2 s late
    s.cluster.faults().add(
        Fault::delay(Duration::from_secs(2)).matching("SELECT schema_version FROM system.local"),
    );
    let started = std::time::Instant::now();
    let out = s
        .driver
        .execute(CqlRequest::unprepared(trigger).timeout(Duration::from_millis(300)))
        .await;
    let took = started.elapsed();
    let err = match out {
        Ok(_) => panic!("a schema change with a 300 ms deadline succeeded after {took:?}"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    assert!(took < Duration::from_millis(1500), "ended after {took:?}");
    assert!(err.may_have_been_applied(), "{err}");
}

/// Values bound to fewer or more markers than the statement has: the
/// error says how many markers and how many values, prepared or not.
/// (Before, the driver's message had both counts redacted, as if they
/// were values: "the statement operates on ? columns, but the given rust
/// type provides ?".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_for_too_few_markers_say_how_many() {
    let s = setup(1).await;
    let put = "INSERT INTO ks.kv (k, v) VALUES (?, ?)";
    for req in [CqlRequest::query(put), CqlRequest::unprepared(put)] {
        let err = s.driver.execute(req.bind((5i32,))).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Serialization, "{err}");
        let words: Vec<&str> = err
            .message()
            .split(|c: char| !c.is_ascii_alphanumeric())
            .collect();
        assert!(
            words.contains(&"2") && words.contains(&"1"),
            "the counts of markers (2) and values (1): {err}"
        );
    }
}
