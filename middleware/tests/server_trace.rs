//! Server-side traces end to end: the real scylla driver over TCP against
//! testkit, which writes `system_traces` like Cassandra 4.x. Sampling,
//! the slow rule, the background fetch, its rate cap and failure
//! counting, a panicking collector, and a bounded close.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tower_cql_core::event::{OwnedEvent, RequestEvent, ServerTraceEvent};
use tower_cql_core::server_trace::ServerTraceConfig;
use tower_cql_core::{Collector, Collectors, CqlRequest, Event, Statement};
use tower_cql_middleware::stack::{SessionStack, StackBuilder};
use tower_cql_testkit::{Cluster, Fault, InjectedError};

/// Keeps request and server trace events.
#[derive(Default)]
struct Keep(Mutex<Vec<OwnedEvent>>);

impl Collector for Keep {
    fn on_request(&self, e: &RequestEvent<'_>) {
        self.0.lock().unwrap().push(Event::Request(*e).to_owned());
    }
    fn on_server_trace(&self, e: &ServerTraceEvent<'_>) {
        self.0
            .lock()
            .unwrap()
            .push(Event::ServerTrace(*e).to_owned());
    }
}

impl Keep {
    fn traces(&self) -> Vec<OwnedEvent> {
        let all = self.0.lock().unwrap();
        all.iter()
            .filter(|e| matches!(e.as_event(), Event::ServerTrace(_)))
            .cloned()
            .collect()
    }
    fn tracing_ids(&self) -> Vec<[u8; 16]> {
        let all = self.0.lock().unwrap();
        all.iter()
            .filter_map(|e| match e.as_event() {
                Event::Request(r) => r.tracing_id,
                _ => None,
            })
            .collect()
    }
}

async fn stack(
    cluster: &Cluster,
    collectors: Collectors,
    config: ServerTraceConfig,
) -> SessionStack {
    let session = support::session(cluster).await;
    let stack = StackBuilder::new(collectors)
        .server_trace(config)
        .build_on(session)
        .unwrap();
    for cql in [
        "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE ks.kv (k int PRIMARY KEY, v text)",
        "INSERT INTO ks.kv (k, v) VALUES (424242, 'secret-value')",
    ] {
        stack.call(CqlRequest::unprepared(cql)).await.unwrap();
    }
    stack
}

fn every(config: ServerTraceConfig) -> ServerTraceConfig {
    ServerTraceConfig {
        sample_ratio: 1.0,
        ..config
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_requests_are_traced_fetched_and_delivered_sanitised() {
    let cluster = Cluster::start().await.unwrap();
    let keep = Arc::new(Keep::default());
    let stack = stack(
        &cluster,
        Collectors::with([keep.clone()]),
        every(ServerTraceConfig::default()),
    )
    .await;
    // a literal in the text: the server's "Parsing ..." step carries it
    let read = CqlRequest::unprepared("SELECT v FROM ks.kv WHERE k = 424242").operation("get");
    let rows: Vec<(String,)> = stack.call(read).await.unwrap().rows().unwrap();
    assert_eq!(rows, vec![("secret-value".to_string(),)]);
    stack.close().await;

    let stats = stack.server_traces().unwrap().stats();
    // the three setup statements and the read
    assert_eq!(stats.sampled, 4, "{stats:?}");
    assert_eq!(
        (stats.fetched, stats.failed, stats.skipped),
        (4, 0, 0),
        "{stats:?}"
    );
    let server_ids: Vec<u128> = cluster.trace_session_ids();
    let ids = keep.tracing_ids();
    assert_eq!(ids.len(), 4, "each request event names its trace");
    for id in &ids {
        assert!(server_ids.contains(&u128::from_be_bytes(*id)));
    }
    let traces = keep.traces();
    assert_eq!(traces.len(), 4);
    let read = traces
        .iter()
        .find_map(|t| match t.as_event() {
            Event::ServerTrace(e) if e.meta.operation().map(|o| o.as_str()) == Some("get") => {
                Some(e)
            }
            _ => None,
        })
        .expect("the read's trace");
    assert_eq!(read.coordinator, Some(cluster.node_addr(0).ip()));
    assert_eq!(read.request, "Execute CQL3 query");
    assert!(!read.steps.is_empty());
    assert!(ids.contains(&read.session_id));
    let activities: Vec<&str> = read.steps.iter().map(|s| s.activity.as_str()).collect();
    assert!(
        activities.contains(&"Parsing SELECT v FROM ks.kv WHERE k = ?"),
        "{activities:#?}"
    );
    assert!(
        activities.contains(&"Executing single-partition query on kv"),
        "{activities:#?}"
    );
    let all = format!("{traces:?}");
    assert!(
        !all.contains("424242"),
        "a literal reached the event: {all}"
    );
    assert!(
        !all.contains("secret-value"),
        "a value reached the event: {all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_nothing_is_traced() {
    let cluster = Cluster::start().await.unwrap();
    let session = support::session(&cluster).await;
    let stack = StackBuilder::new(Collectors::new())
        .build_on(session)
        .unwrap();
    stack
        .call(CqlRequest::unprepared(
            "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        ))
        .await
        .unwrap();
    assert!(stack.server_traces().is_none());
    assert!(cluster.trace_session_ids().is_empty());
    // a config with ratio 0 and no threshold is off too: no layer
    let session = support::session(&cluster).await;
    let stack = StackBuilder::new(Collectors::new())
        .server_trace(ServerTraceConfig::default())
        .build_on(session)
        .unwrap();
    assert!(stack.server_traces().is_none());
}

/// Keeps when each server trace reached the collectors.
#[derive(Default)]
struct Arrivals(Mutex<Vec<Instant>>);

impl Collector for Arrivals {
    fn on_server_trace(&self, _: &ServerTraceEvent<'_>) {
        self.0.lock().unwrap().push(Instant::now());
    }
}

/// The most instants in any half-open interval `[t, t + window)`.
fn most_within(times: &[Instant], window: Duration) -> usize {
    let mut t = times.to_vec();
    t.sort();
    (0..t.len())
        .map(|i| t[i..].iter().take_while(|&&x| x - t[i] < window).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_cap_holds_over_any_one_second_interval() {
    const CAP: u32 = 3;
    let cluster = Cluster::start().await.unwrap();
    let keep = Arc::new(Keep::default());
    let arrivals = Arc::new(Arrivals::default());
    let collectors = Collectors::with([keep.clone()]);
    collectors.add(arrivals.clone());
    // the setup's 3 statements: a burst of CAP at once, all fetched
    let stack = stack(
        &cluster,
        collectors,
        every(ServerTraceConfig {
            max_fetches_per_second: CAP,
            ..ServerTraceConfig::default()
        }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        stack.server_traces().unwrap().stats().fetched,
        3,
        "the burst"
    );
    // One read at 0 s, four at 0.7 s, four at 1.25 s. With a window of
    // fixed seconds (the first from 0 s), 3 would start at 0.7 s and 3
    // more at 1.25 s: 5 within 0.55 s. With a token bucket of depth 3
    // refilled at 3/s, 3 and 1: 4. Over any one second, at most 3.
    let get = Statement::new(support::GET).operation("get");
    let t0 = tokio::time::Instant::now();
    for (at, reads) in [(0, 1), (700, 4), (1250, 4)] {
        tokio::time::sleep_until(t0 + Duration::from_millis(at)).await;
        for k in 0..reads {
            stack.execute(&get, (k,)).await.unwrap();
        }
    }
    stack.close().await;
    let s = stack.server_traces().unwrap().stats();
    assert_eq!(s.sampled, 3 + 9, "{s:?}");
    assert_eq!(
        s.fetched + s.skipped + s.failed,
        s.sampled,
        "every trace accounted for: {s:?}"
    );
    assert_eq!(s.failed, 0, "{s:?}");
    let arrivals = arrivals.0.lock().unwrap().clone();
    assert_eq!(arrivals.len() as u64, s.fetched);
    assert_eq!(keep.traces().len() as u64, s.fetched);
    let most = most_within(&arrivals, Duration::from_secs(1));
    assert!(
        most <= CAP as usize,
        "{most} traces fetched within one second, over the cap of {CAP}: {s:?}"
    );
    // and the cap is used: the burst, 1 at 0 s, 2 at 0.7 s, 1 at 1.25 s
    // (the one of 0 s has left the last second)
    assert!(s.fetched >= 3 + 1 + 2, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fetch_is_counted_and_never_fails_the_request() {
    let cluster = Cluster::start().await.unwrap();
    let keep = Arc::new(Keep::default());
    let stack = stack(
        &cluster,
        Collectors::with([keep.clone()]),
        every(ServerTraceConfig {
            fetch_attempts: 2,
            ..ServerTraceConfig::default()
        }),
    )
    .await;
    // the setup's traces fetched, then every trace read fails
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.server_traces().unwrap().stats().fetched, 3);
    let fault = cluster
        .faults()
        .add(Fault::error(InjectedError::ServerError).table("system_traces", "sessions"));
    let get = Statement::new(support::GET).operation("get");
    for k in 0..3 {
        stack
            .execute(&get, (k,))
            .await
            .expect("the request is not affected");
    }
    stack.close().await;
    let s = stack.server_traces().unwrap().stats();
    assert_eq!((s.sampled, s.failed, s.fetched), (6, 3, 3), "{s:?}");
    assert!(cluster.faults().fired(fault) >= 3);
    assert_eq!(keep.traces().len(), 3, "the setup's only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slow_rule_traces_the_next_n_requests_of_that_operation() {
    let cluster = Cluster::start().await.unwrap();
    let keep = Arc::new(Keep::default());
    let stack = stack(
        &cluster,
        Collectors::with([keep.clone()]),
        ServerTraceConfig {
            slow_threshold: Some(Duration::from_millis(100)),
            trace_next: 2,
            ..ServerTraceConfig::default()
        },
    )
    .await;
    assert!(
        cluster.trace_session_ids().is_empty(),
        "nothing sampled by ratio"
    );
    let get = Statement::new(support::GET).operation("get");
    let scan = Statement::new("SELECT v FROM ks.kv WHERE k = ? ALLOW FILTERING").operation("scan");
    stack.execute(&get, (1,)).await.unwrap();
    stack.execute(&scan, (1,)).await.unwrap();
    assert_eq!(stack.server_traces().unwrap().stats().sampled, 0);

    cluster.faults().add(
        Fault::delay(Duration::from_millis(150))
            .table("ks", "kv")
            .reads()
            .times(1),
    );
    stack.execute(&get, (1,)).await.unwrap(); // slow: arms "get"
    stack.execute(&scan, (1,)).await.unwrap(); // another operation: not traced
    for k in 0..4 {
        stack.execute(&get, (k,)).await.unwrap(); // the next 2 only
    }
    stack.close().await;
    let s = stack.server_traces().unwrap().stats();
    assert_eq!(s.sampled, 2, "{s:?}");
    assert_eq!(cluster.trace_session_ids().len(), 2);
    let traced_ops: Vec<String> = keep
        .traces()
        .iter()
        .filter_map(|t| {
            t.as_event()
                .meta()
                .and_then(|m| m.operation())
                .map(|o| o.as_str().to_string())
        })
        .collect();
    assert_eq!(traced_ops, vec!["get", "get"]);
}

struct Panics;
impl Collector for Panics {
    fn on_server_trace(&self, _: &ServerTraceEvent<'_>) {
        panic!("collector bug");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_collector_does_not_stop_the_fetcher() {
    let cluster = Cluster::start().await.unwrap();
    let keep = Arc::new(Keep::default());
    let collectors = Collectors::new();
    collectors.add(Arc::new(Panics));
    collectors.add(keep.clone());
    let stack = stack(
        &cluster,
        collectors.clone(),
        every(ServerTraceConfig::default()),
    )
    .await;
    let get = Statement::new(support::GET).operation("get");
    for k in 0..3 {
        stack.execute(&get, (k,)).await.unwrap();
    }
    stack.close().await;
    let s = stack.server_traces().unwrap().stats();
    assert_eq!((s.fetched, s.failed), (6, 0), "{s:?}");
    assert_eq!(collectors.failures(), 6);
    assert_eq!(keep.traces().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_abandons_fetches_that_do_not_end_within_its_bound() {
    let cluster = Cluster::start().await.unwrap();
    let keep = Arc::new(Keep::default());
    let stack = stack(
        &cluster,
        Collectors::with([keep.clone()]),
        every(ServerTraceConfig {
            close_timeout: Duration::from_millis(300),
            ..ServerTraceConfig::default()
        }),
    )
    .await;
    // let the setup's traces be fetched, then make every trace read hang
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = keep.traces().len();
    cluster
        .faults()
        .add(Fault::delay(Duration::from_secs(5)).keyspace("system_traces"));
    let get = Statement::new(support::GET).operation("get");
    for k in 0..3 {
        stack.execute(&get, (k,)).await.unwrap();
    }
    let start = Instant::now();
    stack.close().await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "close waited {:?} for fetches that hang",
        start.elapsed()
    );
    assert_eq!(
        keep.traces().len(),
        before,
        "nothing fetched after the reads hung"
    );
    let s = stack.server_traces().unwrap().stats();
    assert_eq!(s.fetched as usize, before, "{s:?}");
    // what close gave up on (the reads in flight, the one queued) is
    // counted skipped by the time close returns, not failed when the
    // reads time out later
    assert_eq!(
        (s.sampled, s.skipped, s.failed),
        (6, 6 - s.fetched, 0),
        "(sampled, skipped, failed) when close returned: {s:?}"
    );
}

/// Every traced request is accounted for once close returns: chosen by
/// the layer or by its caller, it ends fetched, skipped, failed, or
/// without a trace to fetch (it failed, or its caller dropped it: no
/// tracing id came back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_traced_request_is_accounted_for() {
    let cluster = Cluster::start().await.unwrap();
    let stack = stack(
        &cluster,
        Collectors::new(),
        every(ServerTraceConfig::default()),
    )
    .await;
    let get = Statement::new(support::GET).operation("get");
    // answered: three
    for k in 0..3 {
        stack.execute(&get, (k,)).await.unwrap();
    }
    // traced by its caller
    stack
        .call(get.request().bind((1,)).tracing(true))
        .await
        .unwrap();
    // failed (never retried)
    cluster.faults().add(
        Fault::error(InjectedError::Unauthorized)
            .table("ks", "kv")
            .times(1),
    );
    stack.execute(&get, (1,)).await.unwrap_err();
    // dropped by its caller
    cluster.faults().add(
        Fault::delay(Duration::from_secs(5))
            .table("ks", "kv")
            .times(1),
    );
    let dropped = tokio::time::timeout(Duration::from_millis(200), stack.execute(&get, (2,))).await;
    assert!(dropped.is_err(), "the slow read was dropped");
    stack.close().await;
    let s = stack.server_traces().unwrap().stats();
    // the setup's three statements, and the six here
    assert_eq!(s.sampled + s.caller_traced, 3 + 6, "{s:?}");
    assert_eq!(s.caller_traced, 1, "{s:?}");
    assert_eq!(
        s.fetched + s.skipped + s.failed + s.without_trace,
        s.sampled + s.caller_traced,
        "{s:?}"
    );
    assert_eq!(s.without_trace, 2, "the failed and the dropped: {s:?}");
}

/// A trace read slower than the default 2 s read timeout (a loaded
/// cluster's `system_traces`) is fetched when the configuration gives it
/// the time (`read_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_trace_read_is_fetched_within_the_configured_read_timeout() {
    let cluster = Cluster::start().await.unwrap();
    let keep = Arc::new(Keep::default());
    let stack = stack(
        &cluster,
        Collectors::with([keep.clone()]),
        every(ServerTraceConfig {
            fetch_attempts: 1,
            read_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(30),
            ..ServerTraceConfig::default()
        }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = stack.server_traces().unwrap().stats().fetched;
    cluster
        .faults()
        .add(Fault::delay(Duration::from_millis(2500)).keyspace("system_traces"));
    let get = Statement::new(support::GET).operation("get");
    stack.execute(&get, (1,)).await.unwrap();
    stack.close().await;
    let s = stack.server_traces().unwrap().stats();
    assert_eq!((s.fetched - before, s.failed), (1, 0), "{s:?}");
}

/// The statement a trace's first step quotes (`Parsing <statement>`) is
/// the request's statement text, sanitised as that text is: its column
/// list kept, every literal gone, a boolean's too. Read as prose, the
/// column list became `(?)` and `true` stayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_statement_keeps_its_columns_and_loses_every_literal() {
    let cluster = Cluster::start().await.unwrap();
    let keep = Arc::new(Keep::default());
    let stack = stack(
        &cluster,
        Collectors::with([keep.clone()]),
        every(ServerTraceConfig::default()),
    )
    .await;
    stack
        .call(CqlRequest::unprepared(
            "CREATE TABLE ks.flags (k int PRIMARY KEY, enabled boolean)",
        ))
        .await
        .unwrap();
    stack
        .call(
            CqlRequest::unprepared("INSERT INTO ks.flags (k, enabled) VALUES (424242, true)")
                .operation("flag"),
        )
        .await
        .unwrap();
    stack
        .call(
            CqlRequest::unprepared("UPDATE ks.flags SET enabled = false WHERE k = 424242")
                .operation("flag"),
        )
        .await
        .unwrap();
    stack.close().await;
    let traces = keep.traces();
    let mut parsed: Vec<String> = traces
        .iter()
        .filter_map(|t| match t.as_event() {
            Event::ServerTrace(e) if e.meta.operation().map(|o| o.as_str()) == Some("flag") => {
                Some(
                    e.steps
                        .iter()
                        .map(|s| s.activity.clone())
                        .collect::<Vec<_>>(),
                )
            }
            _ => None,
        })
        .flatten()
        .filter(|a| a.starts_with("Parsing"))
        .collect();
    parsed.sort();
    assert_eq!(
        parsed,
        [
            "Parsing INSERT INTO ks.flags (k, enabled) VALUES (?, ?)",
            "Parsing UPDATE ks.flags SET enabled = ? WHERE k = ?",
        ],
        "the parsing steps of the insert and the update"
    );
}

/// A server that writes its traces in the background: Scylla flushes
/// them every 2 s (its tracing `write_period`). With the default
/// settings, every trace is fetched once written. The default reads
/// waited 20 + 40 + 80 + 160 ms, about 0.3 s in all, then counted the
/// trace failed: on Scylla, most traces were never fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_a_server_writes_every_two_seconds_are_fetched_by_default() {
    let cluster = Cluster::builder()
        .trace_write_delay(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let keep = Arc::new(Keep::default());
    let stack = stack(
        &cluster,
        Collectors::with([keep.clone()]),
        every(ServerTraceConfig::default()),
    )
    .await;
    let get = Statement::new(support::GET).operation("get");
    stack.execute(&get, (1,)).await.unwrap();
    let traces = stack.server_traces().unwrap().clone();
    // every fetch ends, one way or the other, before close (whose own
    // bound would abandon them): a hang fails, a slow machine does not
    let start = Instant::now();
    loop {
        let s = traces.stats();
        if s.fetched + s.failed + s.skipped == s.sampled {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.close().await;
    let s = traces.stats();
    assert_eq!((s.sampled, s.fetched, s.failed), (4, 4, 0), "{s:?}");
    assert_eq!(keep.traces().len(), 4);
}

/// A queue too large to make is refused as a configuration error that
/// names it; it was accepted, and building the stack panicked in the
/// channel's constructor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_too_large_to_make_is_a_config_error() {
    let cluster = Cluster::start().await.unwrap();
    let session = support::session(&cluster).await;
    let built = std::panic::AssertUnwindSafe(async {
        StackBuilder::new(Collectors::new())
            .server_trace(every(ServerTraceConfig {
                queue_capacity: usize::MAX,
                ..ServerTraceConfig::default()
            }))
            .build_on(session)
            .map(|_| ())
    });
    let built = futures::FutureExt::catch_unwind(built)
        .await
        .expect("building the stack panicked");
    assert_eq!(
        built.unwrap_err().field,
        "server_trace.queue_capacity",
        "refused, naming the field"
    );
}

/// Closing right after the last request, on a server that writes its
/// traces every 2 s (Scylla), with the default settings: close waits
/// for the fetches the default reads complete. Its default bound (2 s)
/// was shorter than those reads (3.2 s): it abandoned them, and the last
/// traces before every close were lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_the_traces_the_default_reads_fetch() {
    let cluster = Cluster::builder()
        .trace_write_delay(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let stack = stack(
        &cluster,
        Collectors::new(),
        every(ServerTraceConfig::default()),
    )
    .await;
    let get = Statement::new(support::GET).operation("get");
    stack.execute(&get, (1,)).await.unwrap();
    stack.close().await;
    let s = stack.server_traces().unwrap().stats();
    assert_eq!(
        (s.sampled, s.fetched, s.skipped, s.failed),
        (4, 4, 0, 0),
        "{s:?}"
    );
}
