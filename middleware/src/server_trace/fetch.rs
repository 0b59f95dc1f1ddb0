//! The background fetcher: one task, started on the first traced
//! response, reading each trace from `system_traces` with the stack's own
//! queries, off the request path. Bounded everywhere: the queue, the
//! fetches at once, the fetches per second, the reads per trace, and the
//! wait on close.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, UNIX_EPOCH};

use futures::StreamExt;
use scylla::client::session::Session;
use scylla::response::PagingState;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlTimeuuid};
use tokio::sync::{OnceCell, Semaphore, mpsc};
use tower_cql_core::event::{Event, ServerTraceEvent};
use tower_cql_core::server_trace::{ServerTraceConfig, ServerTraceStep};
use tower_cql_core::{Collectors, RequestMeta, clock};
use uuid::Uuid;

use super::close::{CloseSignal, Phase};

// The columns read, checked against each server's own table definitions
// (searched 2026-12, public sources):
// - Cassandra 3.0/3.11, `src/java/org/apache/cassandra/tracing/TraceKeyspace.java`
//   (the `CFMetaData`/`KeyspaceMetadata` version): sessions (session_id,
//   command, client, coordinator, duration, parameters, request,
//   started_at), events (session_id, event_id, activity, source,
//   source_elapsed, thread).
// - Cassandra 4.x, the same file in apache/cassandra (`TableMetadata`
//   version, commit 12091341b9c7): the same columns plus
//   `sessions.coordinator_port` and `events.source_port`. Its generation
//   note says those two were "pre-added" to 3.0 and 3.11 only by later
//   patch releases (schema generation 1577836800000001), so an older 3.x
//   lacks them.
// - Scylla, `tracing/trace_keyspace_helper.cc` in scylladb/scylladb (a 2016
//   commit, 026061733fd2, and a later fork's copy): sessions (session_id,
//   command, client, coordinator, duration, parameters, request,
//   started_at; newer versions add request_size, response_size, username),
//   events (session_id, event_id, activity, source, source_elapsed, thread;
//   newer versions add scylla_parent_id, scylla_span_id), no `*_port`
//   column; the tracing page of docs.scylladb.com shows the same tables.
// Every column below is in all of them; coordinator_port, source_port and
// Scylla's additions are not read.

/// The session row, with only columns Cassandra 3.x, 4.x and Scylla all
/// have.
pub(crate) const SESSIONS_QUERY: &str = "SELECT coordinator, duration, started_at, request, client, parameters FROM system_traces.sessions WHERE session_id = ?";
/// The events, likewise (no `source_port`, which Scylla and 3.x before
/// its late patch releases lack).
pub(crate) const EVENTS_QUERY: &str = "SELECT event_id, activity, source, source_elapsed, thread FROM system_traces.events WHERE session_id = ?";

type SessionRow = (
    Option<IpAddr>,
    Option<i32>,
    Option<CqlTimestamp>,
    Option<String>,
    Option<IpAddr>,
    Option<HashMap<String, String>>,
);
type EventRow = (
    CqlTimeuuid,
    Option<String>,
    Option<IpAddr>,
    Option<i32>,
    Option<String>,
);

/// The events read per page: a long trace is read a page at a time, up
/// to `max_events_per_trace`, never whole in one response.
const EVENTS_PAGE_SIZE: usize = 500;

/// How long [`Fetcher::drain`] waits, once it has abandoned what is
/// left, for the worker to stop and count it: the worker stops at once
/// (no read is awaited any more), so this bounds only a worker that
/// cannot run (its runtime blocked, a collector stuck in `emit`).
const ABANDON_GRACE: Duration = Duration::from_secs(1);

/// A trace to fetch.
pub(crate) struct Job {
    pub(crate) id: [u8; 16],
    pub(crate) meta: RequestMeta,
}

/// What happened to the traces, counted.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) sampled: AtomicU64,
    pub(crate) caller_traced: AtomicU64,
    pub(crate) without_trace: AtomicU64,
    pub(crate) fetched: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// Fetched traces cut at `max_events_per_trace`.
    pub(crate) truncated: AtomicU64,
}

/// Shared by the layer's services and the worker task.
pub(crate) struct Fetcher {
    tx: mpsc::Sender<Job>,
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
    started: AtomicBool,
    done: Mutex<Option<std_mpsc::Receiver<()>>>,
    ctx: Arc<Ctx>,
}

/// What the worker needs.
struct Ctx {
    session: Arc<Session>,
    collectors: Collectors,
    config: ServerTraceConfig,
    counters: Arc<Counters>,
    statements: OnceCell<(PreparedStatement, PreparedStatement)>,
    /// A slot per fetch that may read at once (`max_concurrent_fetches`):
    /// held for a read attempt (the prepare, the reads, the emit), not
    /// while the fetch waits for the server to finish its trace.
    reading: Semaphore,
    /// How far close has gone, seen by every task that waits.
    close: CloseSignal,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher")
            .field("started", &self.started.load(Ordering::Relaxed))
            .field("counters", &self.ctx.counters)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    pub(crate) fn new(
        session: Arc<Session>,
        collectors: Collectors,
        config: ServerTraceConfig,
        counters: Arc<Counters>,
    ) -> Fetcher {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        Fetcher {
            tx,
            rx: Mutex::new(Some(rx)),
            started: AtomicBool::new(false),
            done: Mutex::new(None),
            ctx: Arc::new(Ctx {
                session,
                collectors,
                config,
                counters,
                statements: OnceCell::new(),
                reading: Semaphore::new(config.max_concurrent_fetches.max(1)),
                close: CloseSignal::default(),
            }),
        }
    }

    /// Queues a trace to fetch, or counts it skipped (queue full, closing,
    /// no runtime to run the fetch on). Never waits.
    pub(crate) fn enqueue(&self, job: Job) {
        let counters = &self.ctx.counters;
        if self.ctx.close.phase() != Phase::Open || !self.start() {
            counters.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.tx.try_send(job).is_err() {
            counters.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Starts the worker once; false if it cannot run (no tokio runtime).
    fn start(&self) -> bool {
        if self.started.load(Ordering::Acquire) {
            return true;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let mut rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        // read under the lock `drain` takes: a worker is started before
        // a drain looks for one, or not once close has begun (a drain
        // that found none would not wait for it)
        if self.ctx.close.phase() != Phase::Open {
            return self.started.load(Ordering::Acquire);
        }
        if let Some(rx) = rx.take() {
            let (done_tx, done_rx) = std_mpsc::channel();
            *self.done.lock().unwrap_or_else(|e| e.into_inner()) = Some(done_rx);
            let ctx = self.ctx.clone();
            drop(rt.spawn(async move {
                run(ctx, rx).await;
                let _ = done_tx.send(());
            }));
            self.started.store(true, Ordering::Release);
        }
        true
    }

    /// Stops taking traces, lets the queued ones be fetched for up to the
    /// configured `close_timeout`, then abandons what is left, queued or
    /// in flight, and waits (up to [`ABANDON_GRACE`]) for the worker to
    /// count it skipped: on return every trace taken is counted fetched,
    /// skipped or failed. Blocks: called on the gate's flush thread,
    /// before the collectors' last flush, so the traces fetched are in it.
    pub(crate) fn drain(&self) {
        use std_mpsc::RecvTimeoutError::Timeout;
        self.ctx.close.advance(Phase::Closing);
        // after a `start` under way, which then has set `done`
        let done = {
            let _starting = self.rx.lock().unwrap_or_else(|e| e.into_inner());
            self.done.lock().unwrap_or_else(|e| e.into_inner()).take()
        };
        let Some(done) = done else {
            return; // no worker: nothing was taken
        };
        if let Err(Timeout) = done.recv_timeout(self.ctx.config.close_timeout) {
            self.ctx.close.advance(Phase::Abandoned);
            if let Err(Timeout) = done.recv_timeout(ABANDON_GRACE) {
                tracing::debug!(
                    target: "tower_cql::server_trace",
                    "the server trace fetcher did not stop within {ABANDON_GRACE:?} of close abandoning it; its counters may still change"
                );
            }
        }
    }
}

/// The worker: takes jobs until close, at most `max_fetches_per_second`
/// started in any one-second interval (the rest skipped; see
/// [`FetchCap`](super::cap::FetchCap)), up to `queue_capacity` in
/// flight, `max_concurrent_fetches` of them reading at once (a fetch
/// waiting between its reads for the server to write its trace holds no
/// slot: one trace written late does not hold up the others).
/// Abandoned, it stops at once: the fetches in flight and the jobs queued
/// are counted skipped before it returns.
async fn run(ctx: Arc<Ctx>, rx: mpsc::Receiver<Job>) {
    let jobs = futures::stream::unfold((rx, ctx.clone()), |(mut rx, ctx)| async move {
        loop {
            let job = match ctx.close.phase() {
                Phase::Abandoned => None,
                Phase::Closing => rx.try_recv().ok(),
                Phase::Open => tokio::select! {
                    job = rx.recv() => job,
                    // woken with every other waiter, whatever else waits
                    _ = ctx.close.reached(Phase::Closing) => continue,
                },
            };
            let Some(job) = job else {
                // the jobs end: new ones are refused (and counted skipped
                // by `enqueue`), those still queued are counted here
                rx.close();
                let mut left = 0;
                while rx.try_recv().is_ok() {
                    left += 1;
                }
                ctx.counters.skipped.fetch_add(left, Ordering::Relaxed);
                return None;
            };
            return Some((job, (rx, ctx)));
        }
    });
    let mut cap = super::cap::FetchCap::new(ctx.config.max_fetches_per_second);
    let ctx2 = ctx.clone();
    jobs.filter(move |_| {
        let admit = cap.admit(clock::now());
        if !admit {
            ctx2.counters.skipped.fetch_add(1, Ordering::Relaxed);
        }
        std::future::ready(admit)
    })
    .for_each_concurrent(ctx.config.queue_capacity.max(1), |job| {
        let ctx = ctx.clone();
        async move {
            // a fetch in flight when close stops waiting ends there,
            // whatever it awaits (a read, its backoff, the prepare)
            let out = tokio::select! {
                biased;
                () = ctx.close.reached(Phase::Abandoned) => Err(Failure::Abandoned),
                out = fetch(&ctx, &job) => out,
            };
            match out {
                Ok(()) => {}
                Err(Failure::Abandoned) => {
                    ctx.counters.skipped.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    ctx.counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(target: "tower_cql::server_trace", error = %e, "server trace fetch failed");
                }
            }
        }
    })
    .await;
}

/// Why a fetch did not deliver a trace.
#[derive(Debug)]
enum Failure {
    /// A read failed.
    Read(String),
    /// The server had not finished the trace after every attempt.
    Unfinished(u32),
    /// Close stopped waiting.
    Abandoned,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Read(e) => write!(f, "reading system_traces failed: {e}"),
            Failure::Unfinished(n) => write!(
                f,
                "the trace was not finished (sessions.duration unset) after {n} reads"
            ),
            Failure::Abandoned => f.write_str("abandoned on close"),
        }
    }
}

/// A failed read, its error's text redacted as a `CqlError`'s is (it is
/// logged).
fn read_err(e: impl fmt::Display) -> Failure {
    Failure::Read(tower_cql_core::redact::error_message(&e.to_string()))
}

async fn statements(ctx: &Ctx) -> Result<&(PreparedStatement, PreparedStatement), Failure> {
    ctx.statements
        .get_or_try_init(|| async {
            // bounded as a read is: the session's own request timeout
            // may be long, or none
            let prepare = |query: &'static str| async move {
                let timeout = ctx.config.read_timeout;
                match tokio::time::timeout(timeout, ctx.session.prepare(query)).await {
                    Ok(prepared) => prepared.map_err(read_err),
                    Err(_) => Err(Failure::Read(format!(
                        "preparing a read of system_traces took longer than read_timeout ({timeout:?})"
                    ))),
                }
            };
            let mut s = prepare(SESSIONS_QUERY).await?;
            let mut e = prepare(EVENTS_QUERY).await?;
            for p in [&mut s, &mut e] {
                p.set_consistency(Consistency::One);
                p.set_request_timeout(Some(ctx.config.read_timeout));
                p.set_is_idempotent(true);
            }
            // one more than the cap fits when it is small: a trace of
            // exactly the cap is then not taken for a longer one
            let page = ctx.config.max_events_per_trace.saturating_add(1);
            e.set_page_size(i32::try_from(page.min(EVENTS_PAGE_SIZE)).unwrap_or(i32::MAX));
            Ok((s, e))
        })
        .await
}

/// Reads one trace, waiting (bounded retries with backoff) for the server
/// to finish writing it, and emits it. Abandoned on close by the worker,
/// which stops polling it.
async fn fetch(ctx: &Ctx, job: &Job) -> Result<(), Failure> {
    let id = Uuid::from_bytes(job.id);
    let mut backoff = ctx.config.fetch_backoff;
    for attempt in 0..ctx.config.fetch_attempts {
        if attempt > 0 {
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
        // a slot for this attempt's reads, given back before the backoff
        let Ok(_reading) = ctx.reading.acquire().await else {
            return Err(Failure::Abandoned); // never closed
        };
        let (sessions, events) = statements(ctx).await?;
        let row: Option<SessionRow> = ctx
            .session
            .execute_unpaged(sessions, (id,))
            .await
            .map_err(read_err)?
            .into_rows_result()
            .map_err(read_err)?
            .maybe_first_row()
            .map_err(read_err)?;
        let Some((coordinator, Some(duration), started_at, request, _client, parameters)) = row
        else {
            continue;
        };
        let (steps, truncated) = read_events(ctx, events, id).await?;
        let started_at = match started_at {
            Some(CqlTimestamp(ms)) => UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64),
            // not written (odd server data): where the coordinator's
            // first step (or else the first step) says it began
            None => steps
                .iter()
                .find(|s| s.source.is_some() && s.source == coordinator)
                .or(steps.first())
                .and_then(ServerTraceStep::node_began_at)
                .unwrap_or(UNIX_EPOCH),
        };
        let mut event = ServerTraceEvent::new(
            &job.meta,
            job.id,
            started_at,
            Duration::from_micros(duration.max(0) as u64),
            &steps,
        );
        event.coordinator = coordinator;
        event.truncated = truncated;
        if truncated {
            ctx.counters.truncated.fetch_add(1, Ordering::Relaxed);
        }
        // `request` names what the server did ("Execute CQL3 query");
        // Scylla and Cassandra never put the statement there
        let request = request.unwrap_or_default();
        event.request = &request;
        event.consistency = parameters
            .as_ref()
            .and_then(|p| p.get("consistency_level"))
            .map(String::as_str);
        // a collector's panic is caught and counted by `emit`
        ctx.collectors.emit(Event::ServerTrace(event));
        ctx.counters.fetched.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    Err(Failure::Unfinished(ctx.config.fetch_attempts))
}

/// The events of trace `id`, a page at a time, up to
/// `max_events_per_trace`, and whether there were more (then cut there:
/// at most one page past the cap is held).
async fn read_events(
    ctx: &Ctx,
    events: &PreparedStatement,
    id: Uuid,
) -> Result<(Vec<ServerTraceStep>, bool), Failure> {
    let cap = ctx.config.max_events_per_trace;
    let mut steps = Vec::new();
    let mut paging = PagingState::start();
    while steps.len() <= cap {
        let (page, next) = ctx
            .session
            .execute_single_page(events, (id,), paging)
            .await
            .map_err(read_err)?;
        let page = page.into_rows_result().map_err(read_err)?;
        for row in page.rows::<EventRow>().map_err(read_err)? {
            let (event_id, activity, source, elapsed, thread) = row.map_err(read_err)?;
            steps.push(ServerTraceStep::new(
                *event_id.as_bytes(),
                source,
                Duration::from_micros(elapsed.unwrap_or(0).max(0) as u64),
                activity.as_deref().unwrap_or(""),
                thread.unwrap_or_default(),
            ));
            if steps.len() > cap {
                break;
            }
        }
        match next.into_paging_control_flow() {
            std::ops::ControlFlow::Continue(state) => paging = state,
            std::ops::ControlFlow::Break(()) => break,
        }
    }
    let truncated = steps.len() > cap;
    steps.truncate(cap);
    Ok((steps, truncated))
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use std::time::Instant;

    use scylla::client::session_builder::SessionBuilder;
    use tower_cql_core::CqlRequest;
    use tower_cql_testkit::{Cluster, Fault, Opcode};

    use super::*;

    /// A fetcher reading through a session on `cluster`, and its counters.
    async fn fetcher(cluster: &Cluster, config: ServerTraceConfig) -> (Fetcher, Arc<Counters>) {
        let session = SessionBuilder::new()
            .known_nodes_addr(cluster.contact_points())
            .build()
            .await
            .unwrap();
        let counters = Arc::new(Counters::default());
        let fetcher = Fetcher::new(
            Arc::new(session),
            Collectors::new(),
            config,
            counters.clone(),
        );
        (fetcher, counters)
    }

    /// A trace the server never wrote: every read of it finds no row, so
    /// its fetch sleeps in its backoff between reads.
    fn missing_trace() -> Job {
        Job {
            id: fastrand::u128(..).to_be_bytes(),
            meta: CqlRequest::query("SELECT v FROM ks.kv").meta().clone(),
        }
    }

    /// (fetched, skipped, failed).
    fn outcomes(c: &Counters) -> (u64, u64, u64) {
        (
            c.fetched.load(Ordering::Relaxed),
            c.skipped.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
        )
    }

    /// Waits (for up to 10 s: a hang fails, a slow machine does not) until
    /// `done`.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs the fetcher's drain (it blocks) off the runtime's workers, and
    /// says how long it took.
    async fn drain(fetcher: Arc<Fetcher>) -> Duration {
        let start = Instant::now();
        tokio::task::spawn_blocking(move || fetcher.drain())
            .await
            .unwrap();
        start.elapsed()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_does_not_wait_out_its_timeout_when_nothing_is_queued() {
        let cluster = Cluster::start().await.unwrap();
        let (fetcher, counters) = fetcher(
            &cluster,
            ServerTraceConfig {
                fetch_attempts: 2,
                fetch_backoff: Duration::from_secs(2),
                max_concurrent_fetches: 4,
                close_timeout: Duration::from_secs(30),
                ..ServerTraceConfig::default()
            },
        )
        .await;
        let fetcher = Arc::new(fetcher);
        let reads = || cluster.counters().executions(SESSIONS_QUERY);
        // the first fetch finds no row and sleeps in its 2 s backoff ...
        fetcher.enqueue(missing_trace());
        until("the first fetch's read", || reads() >= 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // ... when a second trace arrives: the job stream takes it and
        // waits for the next one, now behind the first fetch's backoff
        fetcher.enqueue(missing_trace());
        until("the second fetch's read", || reads() >= 2).await;
        // nothing is queued; the two fetches end on their own within 2 s
        let waited = drain(fetcher).await;
        assert!(
            waited < Duration::from_secs(10),
            "close waited {waited:?} (close_timeout 30 s) with nothing queued; \
             (fetched, skipped, failed) = {:?}",
            outcomes(&counters)
        );
        assert_eq!(outcomes(&counters), (0, 0, 2), "both traces unfinished");
    }

    /// A request ending on one thread while close drains on another (a
    /// hand-built stack's `drain`): whichever comes first, once both have
    /// returned the trace is counted, fetched, failed or skipped, and no
    /// fetch is left running. The request's end could pass its check of
    /// the phase, then start the worker after the drain had found none
    /// to wait for: that worker fetched the trace after close returned.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trace_taken_while_close_drains_is_counted_when_both_return() {
        let cluster = Cluster::start().await.unwrap();
        let session = Arc::new(
            SessionBuilder::new()
                .known_nodes_addr(cluster.contact_points())
                .build()
                .await
                .unwrap(),
        );
        let config = ServerTraceConfig {
            fetch_attempts: 1,
            ..ServerTraceConfig::default()
        };
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            for round in 0..300 {
                let counters = Arc::new(Counters::default());
                let fetcher =
                    Fetcher::new(session.clone(), Collectors::new(), config, counters.clone());
                // both spin until both are there, so they start together
                let arrived = std::sync::atomic::AtomicUsize::new(0);
                let start = || {
                    arrived.fetch_add(1, Ordering::AcqRel);
                    while arrived.load(Ordering::Acquire) < 2 {
                        std::hint::spin_loop();
                    }
                };
                let job = missing_trace();
                let end = || {
                    let _rt = rt.enter();
                    start();
                    fetcher.enqueue(job);
                };
                let close = || {
                    start();
                    fetcher.drain();
                };
                std::thread::scope(|s| {
                    if round % 2 == 0 {
                        s.spawn(end);
                        s.spawn(close);
                    } else {
                        s.spawn(close);
                        s.spawn(end);
                    }
                });
                let (fetched, skipped, failed) = outcomes(&counters);
                assert_eq!(
                    fetched + skipped + failed,
                    1,
                    "round {round}: the trace taken is still being fetched after close returned"
                );
            }
        })
        .await
        .unwrap();
    }

    /// Preparing the fetcher's queries is a read of `system_traces` too:
    /// it fails after `read_timeout`, as the reads do. It was bounded by
    /// the session's request timeout only (none here), so the fetch
    /// waited for ever, and every fetch after it, each waiting on the one
    /// prepare.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_prepare_that_never_answers_fails_the_fetch_at_the_read_timeout() {
        use scylla::client::execution_profile::ExecutionProfile;
        let cluster = Cluster::start().await.unwrap();
        let profile = ExecutionProfile::builder().request_timeout(None).build();
        let session = SessionBuilder::new()
            .known_nodes_addr(cluster.contact_points())
            .default_execution_profile_handle(profile.into_handle())
            .build()
            .await
            .unwrap();
        let hang = cluster.faults().add(
            Fault::no_response()
                .opcode(Opcode::Prepare)
                .matching("system_traces"),
        );
        let counters = Arc::new(Counters::default());
        let fetcher = Fetcher::new(
            Arc::new(session),
            Collectors::new(),
            ServerTraceConfig {
                read_timeout: Duration::from_millis(300),
                ..ServerTraceConfig::default()
            },
            counters.clone(),
        );
        fetcher.enqueue(missing_trace());
        until("the prepare", || cluster.faults().fired(hang) >= 1).await;
        until("the fetch failed at its read timeout", || {
            outcomes(&counters) == (0, 0, 1)
        })
        .await;
    }

    /// Keeps the start of each server trace delivered.
    #[derive(Default)]
    struct Starts(std::sync::Mutex<Vec<std::time::SystemTime>>);

    impl tower_cql_core::Collector for Starts {
        fn on_server_trace(&self, e: &ServerTraceEvent<'_>) {
            self.0.lock().unwrap().push(e.started_at);
        }
    }

    /// A finished session whose `started_at` is null (odd server data)
    /// starts where its coordinator's first step says it began (that
    /// step's time less its `source_elapsed`), not at the Unix epoch: its
    /// coordinator span was drawn in 1970.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_without_its_start_starts_at_its_first_step() {
        let cluster = Cluster::start().await.unwrap();
        let session = SessionBuilder::new()
            .known_nodes_addr(cluster.contact_points())
            .build()
            .await
            .unwrap();
        let id = Uuid::from_u128(fastrand::u128(..));
        let coordinator: IpAddr = cluster.node_addr(0).ip();
        let step_at = std::time::SystemTime::now();
        let ticks = step_at.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 / 100
            + 0x01B2_1DD2_1381_4000;
        let event_id = Uuid::from_fields(
            ticks as u32,
            (ticks >> 32) as u16,
            ((ticks >> 48) as u16 & 0x0fff) | 0x1000,
            &[0x80, 1, 2, 3, 4, 5, 6, 7],
        );
        session
            .query_unpaged(
                "INSERT INTO system_traces.sessions (session_id, coordinator, duration) VALUES (?, ?, 500)",
                (id, coordinator),
            )
            .await
            .unwrap();
        session
            .query_unpaged(
                "INSERT INTO system_traces.events (session_id, event_id, activity, source, source_elapsed) VALUES (?, ?, 'Parsing', ?, 300)",
                (id, CqlTimeuuid::from(event_id), coordinator),
            )
            .await
            .unwrap();
        let starts = Arc::new(Starts::default());
        let counters = Arc::new(Counters::default());
        let fetcher = Fetcher::new(
            Arc::new(session),
            Collectors::with([starts.clone()]),
            ServerTraceConfig::default(),
            counters.clone(),
        );
        fetcher.enqueue(Job {
            id: *id.as_bytes(),
            meta: CqlRequest::query("SELECT v FROM ks.kv").meta().clone(),
        });
        until("the trace fetched", || outcomes(&counters) == (1, 0, 0)).await;
        let started = starts.0.lock().unwrap()[0];
        let want = tower_cql_core::server_trace::timeuuid_time(event_id.as_bytes()).unwrap()
            - Duration::from_micros(300);
        assert_eq!(started, want, "the session's start");
    }

    /// Keeps the session id of each server trace delivered, in order.
    #[derive(Default)]
    struct Delivered(std::sync::Mutex<Vec<[u8; 16]>>);

    impl tower_cql_core::Collector for Delivered {
        fn on_server_trace(&self, e: &ServerTraceEvent<'_>) {
            self.0.lock().unwrap().push(e.session_id);
        }
    }

    /// A trace the server writes late (Scylla flushes its traces every
    /// 2 s) does not hold up one that is already written: waiting between
    /// its reads, a fetch holds no slot. With one slot, the written trace
    /// waited out the other's backoff (3 s here) behind it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trace_not_yet_written_does_not_hold_up_a_written_one() {
        use scylla::statement::unprepared::Statement;
        let cluster = Cluster::builder()
            .trace_write_delay(Duration::from_secs(3))
            .start()
            .await
            .unwrap();
        let session = SessionBuilder::new()
            .known_nodes_addr(cluster.contact_points())
            .build()
            .await
            .unwrap();
        // `late`: a traced request, its trace written 3 s after its answer
        let mut traced = Statement::new("SELECT release_version FROM system.local");
        traced.set_tracing(true);
        let late = session
            .query_unpaged(traced, ())
            .await
            .unwrap()
            .tracing_id()
            .expect("a traced request's id");
        // `written`: a finished trace, there already
        let written = Uuid::from_u128(fastrand::u128(..));
        session
            .query_unpaged(
                "INSERT INTO system_traces.sessions (session_id, coordinator, duration, started_at) VALUES (?, ?, 500, toTimestamp(now()))",
                (written, cluster.node_addr(0).ip()),
            )
            .await
            .unwrap();
        let delivered = Arc::new(Delivered::default());
        let counters = Arc::new(Counters::default());
        let fetcher = Fetcher::new(
            Arc::new(session),
            Collectors::with([delivered.clone()]),
            ServerTraceConfig {
                max_concurrent_fetches: 1,
                ..ServerTraceConfig::default()
            },
            counters.clone(),
        );
        let meta = CqlRequest::query("SELECT v FROM ks.kv").meta().clone();
        for id in [late, written] {
            fetcher.enqueue(Job {
                id: *id.as_bytes(),
                meta: meta.clone(),
            });
        }
        until("both traces fetched", || outcomes(&counters) == (2, 0, 0)).await;
        assert_eq!(
            *delivered.0.lock().unwrap(),
            [*written.as_bytes(), *late.as_bytes()],
            "the written trace is delivered first, while the late one waits to be written"
        );
    }

    /// Keeps how many steps each server trace delivered has.
    #[derive(Default)]
    struct StepCounts(std::sync::Mutex<Vec<usize>>);

    impl tower_cql_core::Collector for StepCounts {
        fn on_server_trace(&self, e: &ServerTraceEvent<'_>) {
            self.0.lock().unwrap().push(e.steps.len());
        }
    }

    /// A trace of more events than a trace may keep (a big scan, a long
    /// repair-like operation): its events are read a page at a time and
    /// no more than the cap are kept. They were read in one unpaged
    /// response and held whole, however many there were.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_huge_trace_is_read_in_pages_up_to_the_cap() {
        let cluster = Cluster::start().await.unwrap();
        let session = SessionBuilder::new()
            .known_nodes_addr(cluster.contact_points())
            .build()
            .await
            .unwrap();
        let cap = ServerTraceConfig::default().max_events_per_trace;
        let events = cap + cap / 2;
        let id = Uuid::from_u128(fastrand::u128(..));
        let node = cluster.node_addr(0).ip();
        session
            .query_unpaged(
                "INSERT INTO system_traces.sessions (session_id, coordinator, duration, started_at) VALUES (?, ?, 500, toTimestamp(now()))",
                (id, node),
            )
            .await
            .unwrap();
        let insert = session
            .prepare("INSERT INTO system_traces.events (session_id, event_id, activity, source, source_elapsed) VALUES (?, now(), 'Read 1 live rows', ?, 10)")
            .await
            .unwrap();
        for _ in 0..events {
            session.execute_unpaged(&insert, (id, node)).await.unwrap();
        }
        let steps = Arc::new(StepCounts::default());
        let counters = Arc::new(Counters::default());
        let fetcher = Fetcher::new(
            Arc::new(session),
            Collectors::with([steps.clone()]),
            ServerTraceConfig::default(),
            counters.clone(),
        );
        fetcher.enqueue(Job {
            id: *id.as_bytes(),
            meta: CqlRequest::query("SELECT v FROM ks.kv").meta().clone(),
        });
        until("the trace fetched", || outcomes(&counters) == (1, 0, 0)).await;
        assert_eq!(
            *steps.0.lock().unwrap(),
            [cap],
            "{events} events, a cap of {cap} per trace"
        );
        assert_eq!(
            counters.truncated.load(Ordering::Relaxed),
            1,
            "the cut trace is counted"
        );
        assert!(
            cluster.counters().executions(EVENTS_QUERY) > 1,
            "the events were read in one response"
        );
    }

    /// One fetch whose read never answers, two traces queued behind it
    /// (one fetch at a time), and a close that stops waiting after 300 ms.
    async fn close_on_a_hung_read() -> (Cluster, Arc<Counters>) {
        let cluster = Cluster::start().await.unwrap();
        let (fetcher, counters) = fetcher(
            &cluster,
            ServerTraceConfig {
                max_concurrent_fetches: 1,
                close_timeout: Duration::from_millis(300),
                ..ServerTraceConfig::default()
            },
        )
        .await;
        let hang = cluster.faults().add(
            Fault::no_response()
                .opcode(Opcode::Execute)
                .table("system_traces", "sessions"),
        );
        for _ in 0..3 {
            fetcher.enqueue(missing_trace());
        }
        until("the first fetch's read", || {
            cluster.faults().fired(hang) >= 1
        })
        .await;
        // the read hangs for its 2 s timeout; close gives up after 300 ms
        drain(Arc::new(fetcher)).await;
        (cluster, counters)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_trace_abandoned_on_close_is_counted_when_close_returns() {
        let (_cluster, counters) = close_on_a_hung_read().await;
        let (fetched, skipped, failed) = outcomes(&counters);
        assert_eq!(
            fetched + skipped + failed,
            3,
            "3 traces queued, (fetched, skipped, failed) = {:?} when close returned",
            (fetched, skipped, failed)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fetch_abandoned_on_close_is_skipped_not_failed() {
        let (_cluster, counters) = close_on_a_hung_read().await;
        // however long the count takes, it must say skipped
        until("all 3 traces counted", || {
            let (f, s, x) = outcomes(&counters);
            f + s + x == 3
        })
        .await;
        assert_eq!(
            outcomes(&counters),
            (0, 3, 0),
            "(fetched, skipped, failed): the fetch in flight and the 2 queued were abandoned"
        );
    }
}
