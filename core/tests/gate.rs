//! Closing the gate while a collector's flush hangs (an OTLP export to an
//! endpoint that never answers): a close() cancelled during the flush,
//! by `close_timeout` or by a caller's own timeout, must not leave the
//! gate unable to close; `close_timeout` must keep to its bound.
//!
//! The clock is paused. While a blocking task runs (the flush), Tokio does
//! not advance a paused clock on its own, so the tests advance it by hand.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::time::Instant;
use tower_cql_core::{Collector, Collectors, Gate, GateState};

/// A collector whose `flush()` blocks until the test releases it.
#[derive(Default)]
struct StuckFlush {
    released: Mutex<bool>,
    cv: Condvar,
    started: AtomicU64,
    finished: AtomicU64,
}

impl StuckFlush {
    fn release(&self) {
        *self.released.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

impl Collector for StuckFlush {
    fn flush(&self) {
        self.started.fetch_add(1, Ordering::SeqCst);
        let mut released = self.released.lock().unwrap();
        while !*released {
            released = self.cv.wait(released).unwrap();
        }
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
    // waited for until released (the set gives up on a flush only after
    // its bound: see a_flush_that_never_returns_is_given_up_on_and_counted)
    fn flush_timeout(&self) -> Duration {
        Duration::from_secs(3600)
    }
}

/// Releases the flush when the test ends, passed or failed: the runtime
/// waits for its blocking threads when it shuts down.
struct ReleaseOnDrop(Arc<StuckFlush>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

fn stuck_gate() -> (Gate, Arc<StuckFlush>, ReleaseOnDrop) {
    let stuck = Arc::new(StuckFlush::default());
    let gate = Gate::with_collectors(Collectors::with([stuck.clone()]));
    (gate, stuck.clone(), ReleaseOnDrop(stuck))
}

/// Polls `fut` once without waiting.
async fn poll_once<F: Future>(mut fut: Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Starts `fut`, lets `d` of (paused) time pass, and returns its output if
/// it finished by then; else drops it, which is how a caller's timeout
/// cancels it.
async fn run_for<F: Future>(d: Duration, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    if let Some(out) = poll_once(fut.as_mut()).await {
        return Some(out);
    }
    tokio::time::advance(d).await;
    poll_once(fut.as_mut()).await
}

#[tokio::test(start_paused = true)]
async fn close_after_a_cancelled_close_completes_once_the_flush_finishes() {
    let (gate, stuck, _release) = stuck_gate();
    // A caller's timeout cancels close() while the flush hangs...
    assert_eq!(run_for(Duration::from_secs(1), gate.close()).await, None);
    // ... and close_timeout gives up at its bound.
    assert_eq!(
        run_for(
            Duration::from_secs(1),
            gate.close_timeout(Duration::from_millis(500))
        )
        .await,
        Some(Err(0))
    );
    assert_eq!(gate.state(), GateState::Closing);

    stuck.release();
    tokio::time::timeout(Duration::from_secs(60), gate.close())
        .await
        .expect("close() never completed after a cancelled close(), though the flush had finished");
    assert_eq!(gate.state(), GateState::Closed);
    assert_eq!(stuck.started.load(Ordering::SeqCst), 1, "one flush");
    assert_eq!(stuck.finished.load(Ordering::SeqCst), 1);
    // closed: returns at once
    assert_eq!(run_for(Duration::ZERO, gate.close()).await, Some(()));
}

#[tokio::test(start_paused = true)]
async fn close_timeout_after_a_cancelled_close_returns_within_its_bound() {
    let (gate, stuck, _release) = stuck_gate();
    assert_eq!(
        run_for(
            Duration::from_millis(10),
            gate.close_timeout(Duration::from_millis(10))
        )
        .await,
        Some(Err(0)),
        "cancelled by its own timeout during the flush"
    );
    let limit = Duration::from_secs(2);
    let start = Instant::now();
    assert_eq!(
        run_for(limit, gate.close_timeout(limit)).await,
        Some(Err(0)),
        "the second close_timeout did not return at its bound"
    );
    assert_eq!(start.elapsed(), limit);
    assert_eq!(gate.state(), GateState::Closing);
    stuck.release();
    tokio::time::timeout(Duration::from_secs(60), gate.close())
        .await
        .expect("close() never completed after the flush finished");
    assert_eq!(stuck.finished.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn close_timeout_never_exceeds_its_bound() {
    let (gate, stuck, _release) = stuck_gate();
    // still in flight: the count is reported
    let guard = gate.enter().unwrap();
    let limit = Duration::from_millis(250);
    assert_eq!(
        run_for(limit, gate.close_timeout(limit)).await,
        Some(Err(1))
    );
    drop(guard);
    // drained, the flush hangs: every bound holds, each call, every time
    for limit in [1, 10, 250, 1_000, 60_000, 3_600_000].map(Duration::from_millis) {
        for _ in 0..3 {
            let start = Instant::now();
            assert_eq!(
                run_for(limit, gate.close_timeout(limit)).await,
                Some(Err(0)),
                "close_timeout({limit:?}) was still pending at its bound"
            );
            assert_eq!(start.elapsed(), limit);
        }
    }
    assert_eq!(gate.state(), GateState::Closing);
    assert!(gate.enter().is_err());
    assert!(
        stuck.started.load(Ordering::SeqCst) <= 1,
        "one flush at most"
    );
}

#[tokio::test(start_paused = true)]
async fn closers_cancelled_or_waiting_all_see_one_flush() {
    let (gate, stuck, _release) = stuck_gate();
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let gate = gate.clone();
            tokio::spawn(async move { gate.close().await })
        })
        .collect();
    for _ in 0..4 {
        assert_eq!(
            run_for(Duration::from_millis(5), gate.close()).await,
            None,
            "cancelled"
        );
    }
    stuck.release();
    for w in waiting {
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("a waiting close() never completed")
            .unwrap();
    }
    assert_eq!(gate.state(), GateState::Closed);
    assert_eq!(stuck.started.load(Ordering::SeqCst), 1);
    assert_eq!(stuck.finished.load(Ordering::SeqCst), 1);
}

#[derive(Default)]
struct CountFlushes(AtomicU64);

impl Collector for CountFlushes {
    fn flush(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Runs `fut` to completion on this thread, without a runtime's timers.
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

#[test]
fn close_on_a_runtime_shut_down_still_flushes() {
    let count = Arc::new(CountFlushes::default());
    let gate = Gate::with_collectors(Collectors::with([count.clone()]));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let handle = rt.handle().clone();
    rt.shutdown_background();
    // The runtime's blocking pool takes no more work: the flush cannot be
    // handed to it, and must not be skipped (nor waited for for ever).
    let (tx, rx) = std::sync::mpsc::channel();
    let closer = gate.clone();
    std::thread::spawn(move || {
        let _entered = handle.enter();
        block_on(closer.close());
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("close() on a shut-down runtime never returned");
    assert_eq!(gate.state(), GateState::Closed);
    assert_eq!(
        count.0.load(Ordering::SeqCst),
        1,
        "the collectors were flushed"
    );
}

/// A close() cancelled while requests are still in flight (by
/// `close_timeout`, or by a caller's own timeout) abandons nothing: the
/// last request to leave the closing gate starts the flush, once, and
/// the gate closes with no close() left to drive it. (Before, only a
/// live close() claimed the flush: a shutdown that gave up waiting for
/// stragglers and exited lost their events, and the gate stayed closing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_cancelled_during_the_drain_flushes_when_the_last_request_leaves() {
    for cancel_by_caller in [false, true] {
        let flushes = Arc::new(CountFlushes::default());
        let gate = Gate::with_collectors(Collectors::with([flushes.clone()]));
        let straggler = gate.enter().unwrap();
        if cancel_by_caller {
            assert!(
                tokio::time::timeout(Duration::from_millis(20), gate.close())
                    .await
                    .is_err()
            );
        } else {
            assert_eq!(gate.close_timeout(Duration::from_millis(20)).await, Err(1));
        }
        assert_eq!(gate.state(), GateState::Closing);
        assert!(gate.enter().is_err(), "refused once closing began");
        drop(straggler);
        // no close() is running: the flush is the gate's own
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while gate.state() != GateState::Closed && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            gate.state(),
            GateState::Closed,
            "cancel_by_caller {cancel_by_caller}"
        );
        assert_eq!(flushes.0.load(Ordering::SeqCst), 1);
        // a later close() returns at once, and flushes no second time
        gate.close().await;
        assert_eq!(flushes.0.load(Ordering::SeqCst), 1);
    }
}

/// One collector's flush that hangs (an exporter whose endpoint never
/// answers) delays no other collector's: each is flushed on close, so the
/// events buffered in the others reach their backends while the stuck
/// one still waits. (Before, the set was flushed in order on one thread:
/// every collector after the stuck one was never flushed, and a program
/// that gave up at `close_timeout` and exited lost their buffered events.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_flush_delays_no_other_collectors_flush() {
    let stuck = Arc::new(StuckFlush::default());
    let _release = ReleaseOnDrop(stuck.clone());
    let after = Arc::new(CountFlushes::default());
    let collectors = Collectors::new();
    collectors.add(stuck.clone());
    collectors.add(after.clone());
    let gate = Gate::with_collectors(collectors);
    assert_eq!(
        gate.close_timeout(Duration::from_millis(100)).await,
        Err(0),
        "the stuck flush keeps the gate closing"
    );
    // (generous: the other flush is a counter's increment)
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while after.0.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        after.0.load(Ordering::SeqCst),
        1,
        "the collector after the stuck one was not flushed"
    );
    assert_eq!(stuck.started.load(Ordering::SeqCst), 1);
    stuck.release();
    tokio::time::timeout(Duration::from_secs(60), gate.close())
        .await
        .expect("close() never completed after the stuck flush finished");
    assert_eq!(after.0.load(Ordering::SeqCst), 1, "flushed once");
}

/// Records whether its flush ran inside a Tokio runtime.
#[derive(Default)]
struct SeesRuntime(AtomicU64);

impl Collector for SeesRuntime {
    fn flush(&self) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Flushed beside others, each collector's flush still runs in the
/// runtime the gate's flush runs in (a collector may use it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flush_runs_in_the_runtime() {
    let sees: Vec<Arc<SeesRuntime>> = (0..3).map(|_| Arc::default()).collect();
    let gate = Gate::with_collectors(Collectors::with(sees.clone()));
    tokio::time::timeout(Duration::from_secs(60), gate.close())
        .await
        .expect("close() hung");
    for (i, s) in sees.iter().enumerate() {
        assert_eq!(s.0.load(Ordering::SeqCst), 1, "collector {i}");
    }
}

/// A custom collector whose flush never returns (it waits on something
/// that never comes).
struct FlushBlocksForever;

impl Collector for FlushBlocksForever {
    fn flush(&self) {
        loop {
            std::thread::park();
        }
    }
    // (the default, 30 s, works the same; shorter, the test is quicker)
    fn flush_timeout(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// A collector whose flush never returns does not stall `close()`: the
/// set waits for it up to its bound ([`Collector::flush_timeout`]), then
/// counts the stuck flush as that collector's failure and goes on; the
/// others are flushed, and the gate closes. (Before, `Collectors::flush`
/// waited for every flush without a limit: `close()` never returned, the
/// gate stayed closing, and even `close_timeout`, which returns, left a
/// blocking thread that the runtime waits for when it shuts down.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_that_never_returns_is_given_up_on_and_counted() {
    let stuck = Arc::new(FlushBlocksForever);
    let other = Arc::new(CountFlushes::default());
    let collectors = Collectors::new();
    let stuck_id = collectors.add(stuck);
    let other_id = collectors.add(other.clone());
    let gate = Gate::with_collectors(collectors.clone());
    // (generous: the bound is the collector's flush_timeout; this only
    // catches a close that never returns)
    tokio::time::timeout(Duration::from_secs(60), gate.close())
        .await
        .expect("close() still waiting on a flush that never returns after 60 s");
    assert_eq!(gate.state(), GateState::Closed);
    assert_eq!(other.0.load(Ordering::SeqCst), 1, "the other was flushed");
    assert_eq!(collectors.failures_of(stuck_id), 1, "the stuck flush");
    assert_eq!(collectors.failures_of(other_id), 0);
    assert_eq!(collectors.failures(), 1);
}
