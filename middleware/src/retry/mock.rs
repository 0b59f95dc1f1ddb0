//! Test support shared by the retry and hedge unit tests: a scripted inner
//! service answering with synthetic responses, and a collector that keeps
//! events. Meant for a paused Tokio clock.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;
use tower_cql_core::event::{OwnedEvent, RequestEvent, RetryEvent, ThrottleEvent};
use tower_cql_core::{
    AttemptReason, Collector, Collectors, CqlError, CqlRequest, CqlResponse, ErrorKind,
    ExecutionInfo,
};
use tower_service::Service;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A successful response (attempts 1, speculative 0), without a driver.
pub(crate) fn response() -> CqlResponse {
    CqlResponse::synthetic(ExecutionInfo {
        attempts: 1,
        ..ExecutionInfo::default()
    })
}

/// What one call to the mock does.
pub(crate) struct Step {
    after: Duration,
    result: Option<CqlError>,
}

/// Succeed after `after`.
pub(crate) fn ok(after: Duration) -> Step {
    Step {
        after,
        result: None,
    }
}

/// Fail with `kind` after `after`.
pub(crate) fn fail(kind: ErrorKind, after: Duration) -> Step {
    Step {
        after,
        result: Some(CqlError::new(kind, format!("scripted {kind}"))),
    }
}

/// Fail with `err` after `after`.
pub(crate) fn fail_with(err: CqlError, after: Duration) -> Step {
    Step {
        after,
        result: Some(err),
    }
}

const RUNNING: u8 = 0;
const DONE: u8 = 1;
const CANCELLED: u8 = 2;

/// One call the mock received.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) index: u32,
    pub(crate) reason: AttemptReason,
    pub(crate) at: Instant,
    /// The request's route hint as it was called (shared: it shows what
    /// later attempts added too).
    pub(crate) route: Option<Arc<tower_cql_core::routing::RouteHint>>,
    state: Arc<AtomicU8>,
}

impl Call {
    /// Its future was dropped before it finished.
    pub(crate) fn cancelled(&self) -> bool {
        self.state.load(Ordering::SeqCst) == CANCELLED
    }

    /// Its future finished.
    pub(crate) fn done(&self) -> bool {
        self.state.load(Ordering::SeqCst) == DONE
    }
}

struct Inner {
    script: Mutex<VecDeque<Step>>,
    calls: Mutex<Vec<Call>>,
    ready: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// A scripted inner service: each call takes the next [`Step`]; once the
/// script is spent, calls fail with `Syntax` (never retried).
#[derive(Clone)]
pub(crate) struct Mock(Arc<Inner>);

impl Mock {
    pub(crate) fn new(steps: impl IntoIterator<Item = Step>) -> Mock {
        Mock(Arc::new(Inner {
            script: Mutex::new(steps.into_iter().collect()),
            calls: Mutex::new(Vec::new()),
            ready: AtomicBool::new(true),
            waker: Mutex::new(None),
        }))
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        lock(&self.0.calls).clone()
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::SeqCst);
        if ready && let Some(w) = lock(&self.0.waker).take() {
            w.wake();
        }
    }
}

/// Marks the call done when the future finishes, cancelled when it is
/// dropped first.
struct Guard(Arc<AtomicU8>);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self
            .0
            .compare_exchange(RUNNING, CANCELLED, Ordering::SeqCst, Ordering::SeqCst);
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<CqlResponse, CqlError>> + Send>>;

impl Service<CqlRequest> for Mock {
    type Response = CqlResponse;
    type Error = CqlError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        if self.0.ready.load(Ordering::SeqCst) {
            Poll::Ready(Ok(()))
        } else {
            *lock(&self.0.waker) = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn call(&mut self, req: CqlRequest) -> BoxFuture {
        let step = lock(&self.0.script)
            .pop_front()
            .unwrap_or_else(|| fail(ErrorKind::Syntax, Duration::ZERO));
        let state = Arc::new(AtomicU8::new(RUNNING));
        lock(&self.0.calls).push(Call {
            index: req.meta().attempt_index(),
            reason: req.meta().attempt_reason(),
            at: Instant::now(),
            route: req.meta().route().cloned(),
            state: state.clone(),
        });
        let result = match step.result {
            Some(e) => Err(e),
            None => Ok(response()),
        };
        // counted as it starts, as the driver service counts its attempts
        let tally = req.attempt_tally();
        Box::pin(async move {
            let guard = Guard(state);
            if let Some(tally) = tally {
                tally.count();
            }
            if !step.after.is_zero() {
                tokio::time::sleep(step.after).await;
            }
            guard.0.store(DONE, Ordering::SeqCst);
            result
        })
    }
}

/// Keeps every request, retry and throttle event.
#[derive(Default)]
pub(crate) struct Recorder(Mutex<Vec<OwnedEvent>>);

impl Recorder {
    /// A recorder and a collector set holding it.
    pub(crate) fn new() -> (Arc<Recorder>, Collectors) {
        let r = Arc::new(Recorder::default());
        let c = Collectors::with([r.clone()]);
        (r, c)
    }

    /// (attempt, delay, cause kind, meta attempt index, meta reason) of each retry event.
    pub(crate) fn retries(&self) -> Vec<(u32, Duration, ErrorKind, u32, AttemptReason)> {
        lock(&self.0)
            .iter()
            .filter_map(|e| match e.as_event() {
                tower_cql_core::Event::Retry(r) => Some((
                    r.attempt,
                    r.delay,
                    r.cause.kind(),
                    r.meta.attempt_index(),
                    r.meta.attempt_reason(),
                )),
                _ => None,
            })
            .collect()
    }
}

impl Recorder {
    /// The limiter of each throttle event that refused something.
    pub(crate) fn refusals(&self) -> Vec<&'static str> {
        lock(&self.0)
            .iter()
            .filter_map(|e| match e.as_event() {
                tower_cql_core::Event::Throttle(t) if t.rejected => Some(t.limiter),
                _ => None,
            })
            .collect()
    }
}

impl Recorder {
    /// (attempts, speculative, error kind) of each request event.
    pub(crate) fn requests(&self) -> Vec<(u32, u32, Option<ErrorKind>)> {
        lock(&self.0)
            .iter()
            .filter_map(|e| match e.as_event() {
                tower_cql_core::Event::Request(r) => {
                    Some((r.attempts, r.speculative, r.error.map(|e| e.kind())))
                }
                _ => None,
            })
            .collect()
    }
}

impl Collector for Recorder {
    fn on_request(&self, e: &RequestEvent<'_>) {
        lock(&self.0).push(tower_cql_core::Event::Request(*e).to_owned());
    }

    fn on_retry(&self, e: &RetryEvent<'_>) {
        lock(&self.0).push(tower_cql_core::Event::Retry(*e).to_owned());
    }

    fn on_throttle(&self, e: &ThrottleEvent<'_>) {
        lock(&self.0).push(tower_cql_core::Event::Throttle(*e).to_owned());
    }
}
