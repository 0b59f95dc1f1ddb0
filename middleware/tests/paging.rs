//! Paged reads go through the stack: every page is a request through the
//! gate, the limits, the breaker, retry, the timeout, metrics and tracing;
//! the next page is in flight while the current one is read, never more;
//! `close()` ends open streams with `ShutDown` and their completion event,
//! in its flush, says so.
//!
//! The real driver against testkit, through the default stack.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use tower_cql_core::event::{PageEvent, RequestEvent, StreamEvent};
use tower_cql_core::{Collector, Collectors, CqlRequest, ErrorKind, Statement};
use tower_cql_middleware::retry::{Backoff, BudgetConfig, RetryConfig};
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_testkit::{Fault, InjectedError, Opcode};

mod support;

use support::setup;

const SCAN: &str = "SELECT c, v FROM ks.wide WHERE k = ?";
const ROWS: i32 = 100;

/// How a stream ended: the end, its error, pages, rows.
type Ended = (String, Option<ErrorKind>, u32, u64);

/// What the stack reported: request events, pages, and how streams ended.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<Option<ErrorKind>>>,
    pages: Mutex<Vec<(u32, usize)>>,
    streams: Mutex<Vec<Ended>>,
    /// The page events it held when it was flushed (the stack's close).
    pages_at_flush: Mutex<Option<Vec<(u32, usize)>>>,
    /// The stream events it held when it was flushed.
    streams_at_flush: Mutex<Option<Vec<Ended>>>,
}

impl Collector for Seen {
    fn on_request(&self, e: &RequestEvent<'_>) {
        if e.meta.page_index().is_some() {
            self.requests
                .lock()
                .unwrap()
                .push(e.error.map(|e| e.kind()));
        }
    }
    fn on_page(&self, e: &PageEvent<'_>) {
        self.pages.lock().unwrap().push((e.page, e.rows));
    }
    fn on_stream(&self, e: &StreamEvent<'_>) {
        let error = match e.end {
            tower_cql_core::event::StreamEnd::Failed(err) => Some(err.kind()),
            _ => None,
        };
        self.streams
            .lock()
            .unwrap()
            .push((e.end.as_str().to_string(), error, e.pages, e.rows));
    }
    fn flush(&self) {
        let pages = self.pages.lock().unwrap().clone();
        *self.pages_at_flush.lock().unwrap() = Some(pages);
        let streams = self.streams.lock().unwrap().clone();
        *self.streams_at_flush.lock().unwrap() = Some(streams);
    }
}

/// The one-node cluster with `ks.wide`: partition 1 holds `ROWS` rows.
async fn wide() -> (
    tower_cql_testkit::Cluster,
    tower_cql_core::DriverService,
    Collectors,
) {
    let (cluster, driver, collectors, _memory) = setup().await;
    driver
        .execute(CqlRequest::unprepared(
            "CREATE TABLE ks.wide (k int, c int, v text, PRIMARY KEY (k, c))",
        ))
        .await
        .unwrap();
    let put = Statement::new("INSERT INTO ks.wide (k, c, v) VALUES (?, ?, ?)");
    for c in 0..ROWS {
        driver
            .execute(put.request().bind((1, c, format!("row {c}"))))
            .await
            .unwrap();
    }
    (cluster, driver, collectors)
}

fn scan(page_size: i32) -> CqlRequest {
    Statement::new(SCAN)
        .idempotent(true)
        .operation("scan")
        .request()
        .bind((1,))
        .page_size(page_size)
}

/// Every page is a request event of the stack (with its page index); a
/// failed page of an idempotent read is retried with its paging state, so
/// every row arrives exactly once. Before, `RowStream` fetched pages
/// straight from the driver (no request event, no retry) and a failed
/// page ended the stream; the stack had no `stream`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_requests_through_the_stack_and_a_failed_page_is_retried() {
    let (cluster, driver, collectors) = wide().await;
    let seen = Arc::new(Seen::default());
    collectors.add(seen.clone());
    let stack = StackBuilder::new(collectors.clone())
        .retry(RetryConfig {
            max_attempts: 10,
            backoff: Backoff {
                base: Duration::from_millis(1),
                max: Duration::from_millis(2),
            },
            budget: BudgetConfig {
                ratio: 10.0,
                min_per_second: 1000,
                ..BudgetConfig::default()
            },
        })
        .build(driver)
        .unwrap();
    // the first page is prepared and read before the fault is in place
    let mut rows = stack.stream::<(i32, String)>(scan(10)).await.unwrap();
    // the next page attempt is refused for certain, then 30% of them (with
    // only about ten pages, the random one alone missed every page in
    // about 4% of runs: 'the fault fired' failed)
    let first = cluster.faults().add(
        Fault::error(InjectedError::Overloaded)
            .opcode(Opcode::Execute)
            .matching(SCAN)
            .times(1),
    );
    let fault = cluster.faults().add(
        Fault::error(InjectedError::Overloaded)
            .opcode(Opcode::Execute)
            .matching(SCAN)
            .probability(0.3),
    );
    let mut got = Vec::new();
    while let Some((c, _)) = rows.try_next().await.unwrap() {
        got.push(c);
    }
    assert_eq!(
        got,
        (0..ROWS).collect::<Vec<_>>(),
        "every row once, in order"
    );
    let fired = cluster.faults().fired(first) + cluster.faults().fired(fault);
    let requests = seen.requests.lock().unwrap().clone();
    let pages = seen.pages.lock().unwrap().clone();
    let streams = seen.streams.lock().unwrap().clone();
    println!(
        "paging: {ROWS} rows in {} pages through the stack, {fired} page attempts refused Overloaded \
         and retried; page request events {}; stream end {streams:?}",
        pages.len(),
        requests.len()
    );
    assert!(fired > 0, "the fault fired");
    assert_eq!(requests.len(), pages.len(), "a request event per page");
    assert!(requests.iter().all(Option::is_none), "{requests:?}");
    assert!(pages.len() >= (ROWS / 10) as usize);
    assert_eq!(
        streams,
        vec![("finished".into(), None, pages.len() as u32, ROWS as u64)]
    );
    stack.close().await;
}

/// While the consumer is on page 1, the request for page 2 has reached the
/// server, and not the one for page 3. Before, the next page's future was
/// first polled only once the current page was used up: the server had
/// seen one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_page_is_in_flight_while_the_current_one_is_read() {
    let (cluster, driver, collectors) = wide().await;
    let stack = StackBuilder::new(collectors).build(driver.clone()).unwrap();
    let before = cluster.counters().executions(SCAN);
    let rows = stack.stream::<(i32, String)>(scan(10)).await.unwrap();
    let sent = || cluster.counters().executions(SCAN) - before;
    one_page_ahead("the stack", rows, sent).await;
    let before = cluster.counters().executions(SCAN);
    let rows = driver.stream::<(i32, String)>(scan(10)).await.unwrap();
    let sent = || cluster.counters().executions(SCAN) - before;
    one_page_ahead("the driver service", rows, sent).await;
    stack.close().await;
}

/// Reads row 0, stops polling for 200 ms, and checks that the server has
/// seen the requests for pages 1 and 2 (`sent`), no more; then reads the rest.
async fn one_page_ahead<S>(
    name: &str,
    mut rows: tower_cql_core::RowStream<(i32, String), S>,
    sent: impl Fn() -> u64,
) where
    S: tower::Service<
            CqlRequest,
            Response = tower_cql_core::CqlResponse,
            Error = tower_cql_core::CqlError,
        > + Clone
        + Send
        + Unpin
        + 'static,
    S::Future: Send + 'static,
{
    let first = rows.try_next().await.unwrap().unwrap();
    assert_eq!(first.0, 0);
    // the consumer is busy with row 0 of page 1 and does not poll
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        sent(),
        2,
        "{name}: page 1 read and page 2 asked for, no more"
    );
    let rest: Vec<(i32, String)> = rows.try_collect().await.unwrap();
    assert_eq!(rest.len(), ROWS as usize - 1, "{name}");
}

/// `close()` waits for the page in flight, then ends the stream: its
/// reader, reading on, gets `ShutDown` and its completion event says it
/// failed with `ShutDown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_an_open_stream_with_shut_down() {
    let (_cluster, driver, collectors) = wide().await;
    let seen = Arc::new(Seen::default());
    collectors.add(seen.clone());
    let stack = StackBuilder::new(collectors).build(driver).unwrap();
    let mut rows = stack.stream::<(i32, String)>(scan(10)).await.unwrap();
    assert!(rows.try_next().await.unwrap().is_some());
    let closing = {
        let stack = stack.clone();
        tokio::spawn(async move { stack.close().await })
    };
    let (read, err) = read_to_the_error(&mut rows, 1).await;
    tokio::time::timeout(Duration::from_secs(5), closing)
        .await
        .expect("close() returned")
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::ShutDown, "{err}");
    assert!((1..ROWS).contains(&read), "{read} rows before the refusal");
    let streams = seen.streams.lock().unwrap().clone();
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0].0, "failed");
    assert_eq!(streams[0].1, Some(ErrorKind::ShutDown));
}

/// `close()` from the task that holds an open stream, not reading it:
/// the page the stream asked for ahead finishes on its own, so close
/// returns, having ended the stream: its next poll gets `ShutDown`.
/// (Before, the page asked for ahead was polled only by the stream's
/// consumer: closing while holding the stream waited for ever, with the
/// gate `Closing` and one request in flight.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_returns_while_an_unread_stream_has_a_page_in_flight() {
    let (cluster, driver, collectors) = wide().await;
    let stack = StackBuilder::new(collectors).build(driver).unwrap();
    // pages take 50 ms: page 2 is surely in flight when row 0 is read
    cluster.faults().add(
        Fault::delay(Duration::from_millis(50))
            .opcode(Opcode::Execute)
            .matching(SCAN),
    );
    let mut rows = stack.stream::<(i32, String)>(scan(10)).await.unwrap();
    assert_eq!(rows.try_next().await.unwrap().unwrap().0, 0);
    let closed = stack.close_timeout(Duration::from_secs(5)).await;
    assert_eq!(
        closed,
        Ok(()),
        "close() waited on the page the held stream asked for"
    );
    let (read, err) = read_to_the_error(&mut rows, 1).await;
    assert_eq!(err.kind(), ErrorKind::ShutDown, "{err}");
    assert_eq!(read, 1, "the row read before close, then the refusal");
}

/// Every page fetched before `close()` flushed the collectors is in that
/// flush: the page in flight when close began (close waits for it) is an
/// event before the flush, whether or not the stream's owner has read
/// it. Before, a page's event was emitted when the reader reached the
/// page: page 2, in at close, was reported after the flush, lost to an
/// exporter that flushed at close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_fetched_before_close_is_in_its_flush() {
    let (cluster, driver, collectors) = wide().await;
    let seen = Arc::new(Seen::default());
    collectors.add(seen.clone());
    let stack = StackBuilder::new(collectors).build(driver).unwrap();
    // pages take 50 ms: page 2 is surely in flight when row 0 is read
    cluster.faults().add(
        Fault::delay(Duration::from_millis(50))
            .opcode(Opcode::Execute)
            .matching(SCAN),
    );
    let mut rows = stack.stream::<(i32, String)>(scan(10)).await.unwrap();
    assert_eq!(rows.try_next().await.unwrap().unwrap().0, 0);
    stack.close_timeout(Duration::from_secs(5)).await.unwrap();
    let at_flush = seen.pages_at_flush.lock().unwrap().clone();
    assert_eq!(
        at_flush,
        Some(vec![(0, 10), (1, 10)]),
        "pages 1 and 2 (in flight at close) were events before the flush"
    );
    let (read, err) = read_to_the_error(&mut rows, 1).await;
    assert_eq!((read, err.kind()), (1, ErrorKind::ShutDown), "{err}");
    assert_eq!(
        seen.pages.lock().unwrap().clone(),
        vec![(0, 10), (1, 10)],
        "no page event after the flush"
    );
}

/// A page that arrived while the reader was busy, and was never read
/// (the stream dropped), was fetched: it is a page event and the stream
/// event counts it. Before, the stream event counted the pages the reader
/// reached: dropped with page 2 in, it reported 1 page though the server
/// had served 2 (and, before page events were emitted where pages
/// arrive, there was no event for page 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_arrived_unread_is_counted_when_the_stream_is_dropped() {
    let (_cluster, driver, collectors) = wide().await;
    let seen = Arc::new(Seen::default());
    collectors.add(seen.clone());
    let stack = StackBuilder::new(collectors).build(driver).unwrap();
    let mut rows = stack.stream::<(i32, String)>(scan(10)).await.unwrap();
    assert_eq!(rows.try_next().await.unwrap().unwrap().0, 0);
    // the consumer is busy; page 2 arrives (generous: pages take a few ms)
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(rows);
    assert_eq!(
        seen.pages.lock().unwrap().clone(),
        vec![(0, 10), (1, 10)],
        "page 2 was fetched"
    );
    assert_eq!(
        seen.streams.lock().unwrap().clone(),
        vec![("dropped".into(), None, 2, 1)],
        "2 pages fetched, 1 row handed out"
    );
    stack.close().await;
}

/// A stream dropped once every row was handed out and no page was left
/// to ask for (a reader that takes exactly the rows there are) read to
/// its end: it reports `finished`, not `dropped`. Before, it reported
/// `dropped`, as if the scan had been abandoned early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_after_its_last_row_is_finished() {
    let (_cluster, driver, collectors) = wide().await;
    let seen = Arc::new(Seen::default());
    collectors.add(seen.clone());
    let stack = StackBuilder::new(collectors).build(driver).unwrap();
    // pages of 30, 30, 30 and 10: the last one says there are no more
    let rows = stack.stream::<(i32, String)>(scan(30)).await.unwrap();
    let got: Vec<(i32, String)> = rows.take(ROWS as usize).try_collect().await.unwrap();
    assert_eq!(got.len(), ROWS as usize);
    assert_eq!(
        seen.streams.lock().unwrap().clone(),
        vec![("finished".into(), None, 4, ROWS as u64)],
        "every row read, no page left"
    );
    stack.close().await;
}

/// A stream still open when `close()` returns was ended by it: its end
/// (failed, `ShutDown`; the 2 pages fetched, the 1 row read) is an event
/// before the collectors' flush, and a later poll says it was closed,
/// then ends; it reports nothing more. Before, `close()` left open
/// streams alone: the stream reported its end when its reader came back,
/// after the flush, lost to an exporter that flushed at close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_a_stream_still_open_before_its_flush() {
    let (_cluster, driver, collectors) = wide().await;
    let seen = Arc::new(Seen::default());
    collectors.add(seen.clone());
    let stack = StackBuilder::new(collectors).build(driver).unwrap();
    let mut rows = stack.stream::<(i32, String)>(scan(10)).await.unwrap();
    assert_eq!(rows.try_next().await.unwrap().unwrap().0, 0);
    stack.close_timeout(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        seen.streams_at_flush.lock().unwrap().clone(),
        Some(vec![("failed".into(), Some(ErrorKind::ShutDown), 2, 1)]),
        "the open stream's end was an event before the flush"
    );
    let err = rows.try_next().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ShutDown, "{err}");
    assert!(rows.try_next().await.unwrap().is_none(), "then its end");
    drop(rows);
    assert_eq!(
        seen.streams.lock().unwrap().len(),
        1,
        "one end, reported once"
    );
}

/// A stream whose reader took every row (no page left), still held when
/// `close()` ends it, read to its end: `close()` reports it finished, as
/// its drop would, and its next poll is its end, not an error. (Before,
/// `close()` reported it failed `ShutDown`, as if the scan had been cut.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_read_to_its_last_row_is_finished_when_close_ends_it() {
    let (_cluster, driver, collectors) = wide().await;
    let seen = Arc::new(Seen::default());
    collectors.add(seen.clone());
    let stack = StackBuilder::new(collectors).build(driver).unwrap();
    // pages of 30, 30, 30 and 10: the last one says there are no more
    let mut rows = stack.stream::<(i32, String)>(scan(30)).await.unwrap();
    let got: Vec<(i32, String)> = rows
        .by_ref()
        .take(ROWS as usize)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(got.len(), ROWS as usize);
    stack.close_timeout(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        seen.streams_at_flush.lock().unwrap().clone(),
        Some(vec![("finished".into(), None, 4, ROWS as u64)]),
        "every row read, no page left"
    );
    assert!(rows.try_next().await.unwrap().is_none(), "its end");
    drop(rows);
    assert_eq!(seen.streams.lock().unwrap().len(), 1, "reported once");
}

/// A stream started once the stack is closed is refused `ShutDown`, as a
/// request is, and reports nothing: the collectors were flushed, no
/// event follows. Before, its first page was refused and the stream
/// reported its failure, an event after the flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_started_after_close_is_refused_and_reports_nothing() {
    let (_cluster, driver, collectors) = wide().await;
    let seen = Arc::new(Seen::default());
    collectors.add(seen.clone());
    let stack = StackBuilder::new(collectors).build(driver).unwrap();
    stack.close().await;
    let err = stack
        .stream::<(i32, String)>(scan(10))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ShutDown, "{err}");
    assert_eq!(
        seen.streams.lock().unwrap().clone(),
        vec![],
        "no event after the flush"
    );
}

/// Every page and stream event, in the order the collector got them;
/// `on_page` for page `hold` waits, once, for the test's word.
struct Ordered {
    log: Mutex<Vec<String>>,
    hold: u32,
    /// (tells the test page `hold` is being reported, waits for its word)
    held: Mutex<
        Option<(
            tokio::sync::oneshot::Sender<()>,
            std::sync::mpsc::Receiver<()>,
        )>,
    >,
}

impl Collector for Ordered {
    fn on_page(&self, e: &PageEvent<'_>) {
        if e.page == self.hold
            && let Some((entered, release)) = self.held.lock().unwrap().take()
        {
            entered.send(()).unwrap();
            release.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        self.log.lock().unwrap().push(format!("page {}", e.page));
    }
    fn on_stream(&self, e: &StreamEvent<'_>) {
        self.log.lock().unwrap().push(format!(
            "{} after {} pages, {} rows",
            e.end.as_str(),
            e.pages,
            e.rows
        ));
    }
}

/// A stream dropped while the page it asked for ahead is being reported
/// (its task, on another thread, inside the collectors) ends after that
/// page and counts it. Before, the drop found the page's task unfinished:
/// the stream reported its end counting 1 page, and page 2's event came
/// after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_while_its_page_is_reported_ends_after_it() {
    let (cluster, driver, collectors) = wide().await;
    // pages take 50 ms: page 2 arrives in its task, not in the reader's
    // poll that sent it (which it would block, waiting for the test)
    cluster.faults().add(
        Fault::delay(Duration::from_millis(50))
            .opcode(Opcode::Execute)
            .matching(SCAN),
    );
    let (entered_tx, entered) = tokio::sync::oneshot::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let ordered = Arc::new(Ordered {
        log: Mutex::default(),
        hold: 1,
        held: Mutex::new(Some((entered_tx, release_rx))),
    });
    collectors.add(ordered.clone());
    let stack = StackBuilder::new(collectors).build(driver).unwrap();
    let mut rows = stack.stream::<(i32, String)>(scan(10)).await.unwrap();
    assert_eq!(rows.try_next().await.unwrap().unwrap().0, 0);
    // page 2 arrived and its task is inside the collectors: drop the stream
    tokio::time::timeout(Duration::from_secs(10), entered)
        .await
        .expect("page 2 reported")
        .unwrap();
    drop(rows);
    release.send(()).unwrap();
    // the page's task ends on its own (the drop could not stop it)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ordered.log.lock().unwrap().len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        ordered.log.lock().unwrap().clone(),
        ["page 0", "page 1", "dropped after 2 pages, 1 rows"],
        "the stream's end comes after every page it counts"
    );
    stack.close().await;
}

/// Reads `rows` on to its error; the rows read in all (`read` before)
/// and the error. A stream that ends without one fails the test.
async fn read_to_the_error(
    rows: &mut (impl futures::Stream<Item = Result<(i32, String), tower_cql_core::CqlError>> + Unpin),
    mut read: i32,
) -> (i32, tower_cql_core::CqlError) {
    loop {
        match rows.try_next().await {
            Ok(Some(_)) => read += 1,
            Ok(None) => panic!("the stream ended without an error after {read} rows"),
            Err(e) => return (read, e),
        }
    }
}
