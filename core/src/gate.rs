//! The shutdown gate: open → closing → closed, with no window between
//! "is it open?" and "count me in".
//!
//! ```
//! use tower_cql_core::{Gate, GateState};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let gate = Gate::new();
//! let guard = gate.enter().expect("open");
//! let closing = tokio::spawn({
//!     let gate = gate.clone();
//!     async move { gate.close().await }
//! });
//! tokio::task::yield_now().await;
//! assert_eq!(gate.state(), GateState::Closing);
//! assert!(gate.enter().is_err(), "no new request after close() began");
//! drop(guard); // the last in-flight request finishes
//! closing.await.unwrap();
//! assert_eq!(gate.state(), GateState::Closed);
//! # }
//! ```
//!
//! # How it works
//! One atomic word holds the state bits and the in-flight count. `enter`
//! adds one to the count and reads the state in the same atomic operation;
//! if closing had begun it takes its one back and refuses. `close` sets the
//! closing bit, waits until the count drains to zero, flushes the
//! collectors once, and marks the gate closed. Every step is one atomic
//! read-modify-write, so there is no check-then-act race; the `loom` model
//! in this module checks it under every interleaving.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::Notify;

use crate::collector::Collectors;
use crate::error::CqlError;
use crate::sync::{AtomicU64, Ordering};

const CLOSING: u64 = 1 << 63;
const CLOSED: u64 = 1 << 62;
const FLUSHING: u64 = 1 << 61;
const COUNT: u64 = FLUSHING - 1;

/// The gate's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateState {
    /// Admitting requests.
    Open,
    /// Refusing new requests, waiting for in-flight ones.
    Closing,
    /// Drained and flushed.
    Closed,
}

/// The atomic protocol, apart from waiting (so `loom` can check it).
#[derive(Debug)]
pub(crate) struct GateCore {
    state: AtomicU64,
}

/// The result of trying to enter.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Admitted,
    /// Refused; `wake` when this refusal drained the gate.
    Refused {
        wake: bool,
    },
}

impl GateCore {
    pub(crate) fn new() -> GateCore {
        GateCore {
            state: AtomicU64::new(0),
        }
    }

    pub(crate) fn try_enter(&self) -> Admission {
        let prev = self.state.fetch_add(1, Ordering::AcqRel);
        if prev & CLOSING == 0 {
            return Admission::Admitted;
        }
        Admission::Refused { wake: self.exit() }
    }

    /// Leaves; true when this was the last one out of a closing gate.
    pub(crate) fn exit(&self) -> bool {
        let now = self.state.fetch_sub(1, Ordering::AcqRel) - 1;
        now & CLOSING != 0 && now & COUNT == 0
    }

    /// Sets the closing bit; returns the in-flight count at that moment.
    pub(crate) fn begin_close(&self) -> u64 {
        self.state.fetch_or(CLOSING, Ordering::AcqRel) & COUNT
    }

    pub(crate) fn is_drained(&self) -> bool {
        self.state.load(Ordering::Acquire) & COUNT == 0
    }

    /// Claims the flush: true for exactly one caller, once drained.
    pub(crate) fn claim_flush(&self) -> bool {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            if cur & (FLUSHING | CLOSED) != 0 || cur & COUNT != 0 {
                return false;
            }
            match self.state.compare_exchange(
                cur,
                cur | FLUSHING,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    pub(crate) fn mark_closed(&self) {
        self.state.fetch_or(CLOSED, Ordering::AcqRel);
    }

    pub(crate) fn state(&self) -> (GateState, u64) {
        let s = self.state.load(Ordering::Acquire);
        let state = if s & CLOSED != 0 {
            GateState::Closed
        } else if s & CLOSING != 0 {
            GateState::Closing
        } else {
            GateState::Open
        };
        (state, s & COUNT)
    }
}

struct Inner {
    core: GateCore,
    drained: Notify,
    closed: Notify,
    collectors: Option<Collectors>,
}

/// A shutdown gate shared by clones; see the module docs.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (state, in_flight) = self.inner.core.state();
        f.debug_struct("Gate")
            .field("state", &state)
            .field("in_flight", &in_flight)
            .finish()
    }
}

impl Default for Gate {
    fn default() -> Gate {
        Gate::new()
    }
}

/// Proof of admission; leaving is dropping it.
pub struct GateGuard {
    inner: Arc<Inner>,
}

impl fmt::Debug for GateGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GateGuard")
    }
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        if self.inner.core.exit() {
            self.inner.drained.notify_waiters();
        }
    }
}

impl Gate {
    /// An open gate that flushes nothing on close.
    pub fn new() -> Gate {
        Gate::build(None)
    }

    /// An open gate that flushes `collectors` once drained.
    pub fn with_collectors(collectors: Collectors) -> Gate {
        Gate::build(Some(collectors))
    }

    fn build(collectors: Option<Collectors>) -> Gate {
        Gate {
            inner: Arc::new(Inner {
                core: GateCore::new(),
                drained: Notify::new(),
                closed: Notify::new(),
                collectors,
            }),
        }
    }

    /// Admits a request, or refuses with [`crate::ErrorKind::ShutDown`] once
    /// `close()` has begun.
    #[inline]
    pub fn enter(&self) -> Result<GateGuard, CqlError> {
        match self.inner.core.try_enter() {
            Admission::Admitted => Ok(GateGuard {
                inner: self.inner.clone(),
            }),
            Admission::Refused { wake } => {
                if wake {
                    self.inner.drained.notify_waiters();
                }
                Err(CqlError::shut_down())
            }
        }
    }

    /// The state.
    pub fn state(&self) -> GateState {
        self.inner.core.state().0
    }

    /// Requests in flight. While closing, a request being refused counts
    /// itself in for an instant before it backs out, so read this as an
    /// upper bound.
    pub fn in_flight(&self) -> u64 {
        self.inner.core.state().1
    }

    /// Stops admitting requests, waits for those in flight, flushes the
    /// collectors, and returns when the gate is closed. Idempotent; safe
    /// to call from many tasks at once (all return once closed).
    pub async fn close(&self) {
        self.inner.core.begin_close();
        loop {
            let drained = self.inner.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.inner.core.is_drained() {
                break;
            }
            drained.await;
        }
        if self.inner.core.claim_flush() {
            self.flush_collectors().await;
            self.inner.core.mark_closed();
            self.inner.closed.notify_waiters();
            return;
        }
        loop {
            let closed = self.inner.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.state() == GateState::Closed {
                return;
            }
            // A refused enter may have held the count above zero while we
            // tried to claim the flush: re-check drained then.
            if self.inner.core.is_drained() && self.inner.core.claim_flush() {
                self.flush_collectors().await;
                self.inner.core.mark_closed();
                self.inner.closed.notify_waiters();
                return;
            }
            tokio::select! {
                _ = closed => {}
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
    }

    /// Flushes the collectors on a blocking thread: exporters may block
    /// while they push their last data, and some need the runtime's worker
    /// free to do it (an OTLP exporter would otherwise deadlock a
    /// current-thread runtime).
    async fn flush_collectors(&self) {
        let Some(c) = self.inner.collectors.clone() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = tokio::task::spawn_blocking(move || c.flush()).await;
        } else {
            c.flush();
        }
    }

    /// [`Gate::close`] with a limit: `Err(in_flight)` if requests were still
    /// in flight after `limit` (the gate stays closing; call again to wait more).
    pub async fn close_timeout(&self, limit: Duration) -> Result<(), u64> {
        match tokio::time::timeout(limit, self.close()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.in_flight()),
        }
    }

    /// Wraps a service so every call passes the gate.
    pub fn wrap<S>(&self, inner: S) -> GateService<S> {
        GateService {
            gate: self.clone(),
            inner,
        }
    }
}

/// A service whose calls pass a [`Gate`]; the guard lives until the
/// response future completes or is dropped.
#[derive(Debug, Clone)]
pub struct GateService<S> {
    gate: Gate,
    inner: S,
}

impl<S, R> tower_service::Service<R> for GateService<S>
where
    S: tower_service::Service<R, Error = CqlError>,
{
    type Response = S::Response;
    type Error = CqlError;
    type Future = GateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        if self.gate.state() != GateState::Open {
            return Poll::Ready(Err(CqlError::shut_down()));
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        match self.gate.enter() {
            Ok(guard) => GateFuture {
                inner: Some(self.inner.call(req)),
                guard: Some(guard),
            },
            Err(_) => GateFuture {
                inner: None,
                guard: None,
            },
        }
    }
}

pin_project! {
    /// The response future of [`GateService`].
    pub struct GateFuture<F> {
        #[pin]
        inner: Option<F>,
        guard: Option<GateGuard>,
    }
}

impl<F> fmt::Debug for GateFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GateFuture")
            .field("admitted", &self.guard.is_some())
            .finish()
    }
}

impl<F, T> Future for GateFuture<F>
where
    F: Future<Output = Result<T, CqlError>>,
{
    type Output = Result<T, CqlError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            None => Poll::Ready(Err(CqlError::shut_down())),
            Some(f) => {
                let out = std::task::ready!(f.poll(cx));
                this.guard.take();
                Poll::Ready(out)
            }
        }
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_is_idempotent_and_waits_for_all() {
        let gate = Gate::new();
        let guards: Vec<_> = (0..10).map(|_| gate.enter().unwrap()).collect();
        let closers: Vec<_> = (0..4)
            .map(|_| {
                let g = gate.clone();
                tokio::spawn(async move { g.close().await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(gate.state(), GateState::Closing);
        assert_eq!(gate.in_flight(), 10);
        assert!(gate.enter().is_err());
        drop(guards);
        for c in closers {
            c.await.unwrap();
        }
        assert_eq!(gate.state(), GateState::Closed);
        gate.close().await; // again: returns at once
        let err = gate.enter().unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::ShutDown);
    }

    #[tokio::test]
    async fn close_timeout_reports_stragglers() {
        let gate = Gate::new();
        let _g = gate.enter().unwrap();
        assert_eq!(gate.close_timeout(Duration::from_millis(20)).await, Err(1));
        assert_eq!(gate.state(), GateState::Closing);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_races_thousands_of_enters() {
        for _ in 0..20 {
            let gate = Gate::new();
            let admitted_after_closed = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut tasks = Vec::new();
            for _ in 0..200 {
                let gate = gate.clone();
                let bad = admitted_after_closed.clone();
                tasks.push(tokio::spawn(async move {
                    for _ in 0..10 {
                        if let Ok(guard) = gate.enter() {
                            if gate.state() == GateState::Closed {
                                bad.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            tokio::task::yield_now().await;
                            drop(guard);
                        }
                    }
                }));
            }
            gate.close().await;
            for t in tasks {
                t.await.unwrap();
            }
            // (checked after the tasks end: a refused enter counts itself
            // in for an instant before it backs out)
            assert_eq!(gate.in_flight(), 0);
            assert_eq!(
                admitted_after_closed.load(std::sync::atomic::Ordering::SeqCst),
                0
            );
            assert_eq!(gate.state(), GateState::Closed);
        }
    }
}

#[cfg(all(test, tower_cql_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicUsize;

    /// No request is admitted once close has observed the gate drained, and
    /// every admitted request is counted until it leaves. (The closer
    /// checks once instead of spinning: loom explores the interleavings in
    /// which that check finds the gate drained while workers still run.)
    #[test]
    fn loom_gate_admission_and_drain() {
        loom::model(|| {
            let core = Arc::new(GateCore::new());
            let active = Arc::new(AtomicUsize::new(0));
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let core = core.clone();
                    let active = active.clone();
                    loom::thread::spawn(move || {
                        if core.try_enter() == Admission::Admitted {
                            active.fetch_add(1, Ordering::SeqCst);
                            active.fetch_sub(1, Ordering::SeqCst);
                            core.exit();
                        }
                    })
                })
                .collect();
            core.begin_close();
            if core.is_drained() {
                // drained while closing: nobody is inside, and nobody gets in
                assert_eq!(active.load(Ordering::SeqCst), 0);
                assert!(matches!(core.try_enter(), Admission::Refused { .. }));
            }
            for w in workers {
                w.join().unwrap();
            }
            assert!(core.is_drained());
            assert!(matches!(
                core.try_enter(),
                Admission::Refused { wake: true }
            ));
            assert!(core.claim_flush());
            assert!(!core.claim_flush(), "the flush is claimed once");
            core.mark_closed();
            assert_eq!(core.state(), (GateState::Closed, 0));
        });
    }
}
