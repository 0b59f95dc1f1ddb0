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
//! closing bit and waits until the count drains to zero. Then the flush is
//! claimed, by the last request to leave or by a `close` that finds the
//! gate drained: the one that wins the claim hands the flush to a job the
//! gate owns (on a blocking thread), which ends the paging streams started
//! in the gate that are still open (see
//! [`RowStream::start_in`](crate::RowStream::start_in)), flushes the
//! collectors once, marks the gate closed and wakes every `close` waiting. Every step is one
//! atomic read-modify-write, so there is no check-then-act race; the
//! `loom` models in this module check it under every interleaving.
//!
//! # Cancellation
//! `close()` and `close_timeout()` may be dropped at any await point (a
//! caller's `tokio::time::timeout`, a `select!`): they only ever wait for
//! a notification, never for work of their own, so dropping one abandons
//! nothing: once `close` has begun, the gate closes when the last request
//! leaves, whether or not a `close` is still waiting. A flush that never finishes (an exporter stuck on an endpoint
//! that does not answer) keeps the gate closing, not broken: each
//! `close_timeout` returns at its bound, and a later `close()` returns once
//! that same flush ends.

use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::Notify;

use crate::collector::Collectors;
use crate::error::CqlError;
use crate::request::CqlRequest;
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

    /// One more in flight, for a caller already counted in (a
    /// [`GateGuard`] it holds): the count cannot reach zero meanwhile, so
    /// no flush is claimed and closing does not refuse it.
    pub(crate) fn hold(&self) {
        self.state.fetch_add(1, Ordering::AcqRel);
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

    #[cfg(tower_cql_loom)]
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

    /// Whether the flush has finished and the gate is closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSED != 0
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
    /// Notified when the last request leaves a closing gate.
    drained: Notify,
    /// Notified when the flush has finished and the gate is closed.
    closed: Notify,
    /// The collectors it flushes once drained, in the link the requests
    /// it admits carry to the driver service (one all of them share).
    link: Option<Arc<crate::request::StackLink>>,
    /// Whether requests carry `collectors` to the driver service (false
    /// when it emits into them itself: see [`Gate::adopted`]).
    carry: bool,
    /// Runs once drained, before the collectors' flush (background work
    /// whose last events the flush must carry: the server trace fetcher).
    before_flush: Option<Box<dyn Fn() + Send + Sync>>,
    /// The session whose keyspace labels the requests whose text names
    /// none (see [`Gate::labelling_session_keyspace`]).
    session: Option<Arc<scylla::client::session::Session>>,
    /// The paging streams started in this gate, ended once drained,
    /// before the flush (see [`RowStream::start_in`](crate::RowStream::start_in)).
    streams: crate::paging::OpenStreams,
}

impl Inner {
    /// The collectors flushed once drained.
    fn collectors(&self) -> Option<&Collectors> {
        self.link.as_ref()?.collectors.as_ref()
    }
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

impl GateGuard {
    /// Another hold on the gate this guard was admitted by, counted in
    /// flight as it is, whether or not the gate is closing (see
    /// [`CqlRequest::hold_gate`]).
    pub(crate) fn also(&self) -> GateGuard {
        self.inner.core.hold();
        GateGuard {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for GateGuard {
    #[inline]
    fn drop(&mut self) {
        if self.inner.core.exit() {
            Inner::drained(&self.inner);
        }
    }
}

impl Inner {
    /// The last request has left a closing gate: wakes every `close()`
    /// and starts the flush, unless one did already. So the flush does
    /// not depend on a `close()` still running: one cancelled during the
    /// drain (a caller that gave up waiting for stragglers) abandons
    /// nothing.
    #[cold]
    #[inline(never)]
    fn drained(inner: &Arc<Inner>) {
        inner.drained.notify_waiters();
        if inner.core.claim_flush() {
            FlushJob::start(inner);
        }
    }
}

impl Gate {
    /// An open gate that flushes nothing on close.
    pub fn new() -> Gate {
        Gate::build(None, None)
    }

    /// An open gate that flushes `collectors` once drained.
    pub fn with_collectors(collectors: Collectors) -> Gate {
        Gate::build(Some(collectors), None)
    }

    /// An open gate that, once drained, runs `before_flush` (on the flush's
    /// blocking thread: it may block, for a bounded time) and then flushes
    /// `collectors`: for background work that emits events after the
    /// requests that caused them, such as fetching server traces, which
    /// must be finished or abandoned before the collectors' last flush. A
    /// panic in it is caught; the flush still runs.
    pub fn with_collectors_and_drain(
        collectors: Collectors,
        before_flush: impl Fn() + Send + Sync + 'static,
    ) -> Gate {
        Gate::build(Some(collectors), Some(Box::new(before_flush)))
    }

    /// This gate, with the requests it admits not carrying its
    /// collectors: for a stack whose driver service emits into them
    /// itself (see
    /// [`DriverService::adopt_collectors`](crate::DriverService::adopt_collectors)).
    /// Call it on a new gate: one already cloned is returned as it is,
    /// and its requests carry them.
    pub fn adopted(mut self) -> Gate {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.carry = false;
        }
        self
    }

    /// This gate, labelling each request it admits whose statement names
    /// no keyspace with `session`'s keyspace of the moment (see
    /// [`RequestMeta::label_session_keyspace`](crate::RequestMeta::label_session_keyspace)):
    /// for a stack whose driver service runs on `session`. Call it on a
    /// new gate: one already cloned is returned as it is.
    pub fn labelling_session_keyspace(
        mut self,
        session: Arc<scylla::client::session::Session>,
    ) -> Gate {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.session = Some(session);
        }
        self
    }

    fn build(
        collectors: Option<Collectors>,
        before_flush: Option<Box<dyn Fn() + Send + Sync>>,
    ) -> Gate {
        Gate {
            inner: Arc::new(Inner {
                core: GateCore::new(),
                drained: Notify::new(),
                closed: Notify::new(),
                link: collectors.map(crate::request::StackLink::shared),
                carry: true,
                before_flush,
                session: None,
                streams: Default::default(),
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
                    Inner::drained(&self.inner);
                }
                Err(CqlError::shut_down())
            }
        }
    }

    /// The state.
    pub fn state(&self) -> GateState {
        self.inner.core.state().0
    }

    /// Requests in flight (a request counts until its response future is
    /// dropped: see [`GateService`]; a `USE`, which runs to its end in a
    /// task of its own, until that ends). While closing, a request being
    /// refused counts itself in for an instant before it backs out, so
    /// read this as an upper bound.
    pub fn in_flight(&self) -> u64 {
        self.inner.core.state().1
    }

    /// Stops admitting requests, waits for those in flight (a `USE`
    /// whose caller stopped waiting too, until it ends: nothing changes
    /// the session's keyspace after `close` returns), ends the
    /// paging streams started in the gate that are still open (their
    /// readers get `ShutDown`), flushes the collectors (each waited for
    /// up to its [`flush_timeout`](crate::Collector::flush_timeout): see
    /// [`Collectors::flush`]), and returns when the gate is closed. It
    /// never waits for a stream's reader. Idempotent; safe to call from
    /// many tasks at once (all return once closed).
    ///
    /// Cancel-safe: dropping the future (a caller's timeout) abandons
    /// nothing. Once a `close()` has begun, the last request to leave
    /// starts the flush if no `close()` is left to; the flush belongs to
    /// the gate and finishes on its own; a later `close()` waits for that
    /// same flush.
    pub async fn close(&self) {
        let inner = &*self.inner;
        inner.core.begin_close();
        loop {
            // Enabled before the state is read, so that a change after the
            // read wakes us (a `Notify::notify_waiters` wakes only futures
            // that exist, and are enabled, when it is called).
            let mut drained = pin!(inner.drained.notified());
            let mut closed = pin!(inner.closed.notified());
            drained.as_mut().enable();
            closed.as_mut().enable();
            if inner.core.is_closed() {
                return;
            }
            if inner.core.claim_flush() {
                // No await between the claim and handing it over: the
                // flush cannot be left claimed and never run.
                FlushJob::start(&self.inner);
                continue;
            }
            // Still draining (a refused enter may hold the count above zero
            // for an instant: its exit notifies `drained`), or the flush is
            // under way (it notifies `closed`).
            futures::future::select(drained, closed).await;
        }
    }

    /// [`Gate::close`] with a limit, kept even when a collector's flush
    /// never finishes. `Err(n)` if the gate was not closed after `limit`:
    /// `n` requests were still in flight, or, with `n == 0`, all had left
    /// and the collectors' flush was still running (it goes on; call
    /// again, or [`Gate::close`], to wait more). Cancel-safe, as `close`.
    pub async fn close_timeout(&self, limit: Duration) -> Result<(), u64> {
        match tokio::time::timeout(limit, self.close()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.in_flight()),
        }
    }

    /// The paging streams started in this gate.
    pub(crate) fn streams(&self) -> &crate::paging::OpenStreams {
        &self.inner.streams
    }

    /// Wraps a service so every call passes the gate. The requests it
    /// admits carry the gate's collectors, when it has a set (unless it
    /// was [`adopted`](Self::adopted)), so the driver service inside
    /// emits its attempt events there too.
    pub fn wrap<S>(&self, inner: S) -> GateService<S> {
        GateService {
            gate: self.clone(),
            inner,
        }
    }
}

/// The claimed flush, owned by the gate rather than by the `close()` that
/// claimed it: it flushes the collectors, marks the gate closed and wakes
/// every `close()`, whether it runs on the blocking thread it was handed
/// to or is dropped there unrun (a runtime shutting down drops the work
/// it has not started; the flush then runs where it is dropped, so that it
/// is neither skipped nor left claimed for ever).
struct FlushJob(Option<Arc<Inner>>);

impl FlushJob {
    /// Runs the flush on a blocking thread: exporters may block while they
    /// push their last data, and some need the runtime's worker free to do
    /// it (an OTLP exporter would otherwise deadlock a current-thread
    /// runtime). Outside a runtime, or with nothing to flush, it runs here.
    fn start(inner: &Arc<Inner>) {
        let job = FlushJob(Some(inner.clone()));
        if inner.collectors().is_none() {
            return job.run();
        }
        match tokio::runtime::Handle::try_current() {
            // The handle is dropped: the job finishes on its own.
            Ok(rt) => drop(rt.spawn_blocking(move || job.run())),
            Err(_) => job.run(),
        }
    }

    fn run(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        let Some(inner) = self.0.take() else {
            return;
        };
        // the streams still open end now, their events before the flush
        // (drained: none has a page in flight)
        inner.streams.close();
        if let Some(f) = &inner.before_flush {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        }
        if let Some(c) = inner.collectors() {
            c.flush(); // catches and counts a collector's panic
        }
        inner.core.mark_closed();
        inner.closed.notify_waiters();
    }
}

impl Drop for FlushJob {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A service whose calls pass a [`Gate`]; the request is counted in the
/// gate until its response future is dropped (`.await` drops it as it
/// completes): a caller that keeps it after its answer, to report on it,
/// keeps the request counted, so `close()`'s flush holds that report (the
/// paging stream keeps a page's future until the page's event is out).
///
/// The wrapped service must be `Clone`: a request refused because
/// `close()` began after `poll_ready` said ready drops the ready service
/// for a clone, which gives back what it reserved for that call (see
/// [`crate::refusal`]).
#[derive(Debug, Clone)]
pub struct GateService<S> {
    gate: Gate,
    inner: S,
}

impl<S> GateService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the service (calls to it no longer pass the gate).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Labels `req` with `session`'s keyspace of the moment (out of the
/// gate's inlined call: most statements name their keyspace).
#[inline(never)]
fn label_session_keyspace(session: &scylla::client::session::Session, req: &mut CqlRequest) {
    if let Some(keyspace) = session.get_keyspace() {
        req.meta_mut().label_session_keyspace(&keyspace);
    }
}

impl<S> tower_service::Service<CqlRequest> for GateService<S>
where
    S: tower_service::Service<CqlRequest, Error = CqlError> + Clone,
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

    #[inline(always)]
    fn call(&mut self, mut req: CqlRequest) -> Self::Future {
        match self.gate.enter() {
            Ok(guard) => {
                // The stack's collectors go with the request, so the driver
                // service inside emits its attempt events there too (unless
                // it adopted them: then it emits there itself).
                if let Some(link) = &self.gate.inner.link
                    && self.gate.inner.carry
                {
                    req.link_stack(link.clone());
                }
                // a `USE` runs to its end in a task of its own: the gate
                // counts it until then (see `CqlRequest::hold_gate`)
                if req.meta().kind() == crate::request::OperationKind::Use {
                    req.hold_gate(guard.also());
                }
                // text naming no keyspace runs in the session's
                if let Some(session) = &self.gate.inner.session
                    && req.meta().statement().labelled_by_session_keyspace()
                {
                    label_session_keyspace(session, &mut req);
                }
                // one clock reading for the layers' calls
                let _reading = crate::clock::share();
                GateFuture {
                    inner: Some(self.inner.call(req)),
                    guard: Some(guard),
                }
            }
            Err(_) => refused(&mut self.inner),
        }
    }
}

/// The future of a request the gate refused after `inner` was polled
/// ready (`close()` began in between): what `inner` reserved for the call
/// (a slot, a token of a limit built for load shedding) goes back (see
/// [`crate::refusal`]).
#[cold]
#[inline(never)]
fn refused<S: Clone, F>(inner: &mut S) -> GateFuture<F> {
    crate::refusal::release(inner);
    GateFuture {
        inner: None,
        guard: None,
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
            // (the guard leaves with the future: see `GateService`)
            Some(f) => f.poll(cx),
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

    /// A service that answers at once.
    #[derive(Clone)]
    struct Answer;

    impl tower_service::Service<CqlRequest> for Answer {
        type Response = ();
        type Error = CqlError;
        type Future = std::future::Ready<Result<(), CqlError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: CqlRequest) -> Self::Future {
            std::future::ready(Ok(()))
        }
    }

    /// A request counts in the gate until its response future is
    /// dropped, not only until it has its answer: what its caller reports
    /// on the answer before dropping it (the paging stream's page event)
    /// is in close's flush.
    #[tokio::test]
    async fn a_request_counts_until_its_future_is_dropped() {
        let gate = Gate::new();
        let mut svc = gate.wrap(Answer);
        let mut call = Box::pin(tower_service::Service::call(
            &mut svc,
            CqlRequest::query("SELECT 1"),
        ));
        call.as_mut().await.unwrap();
        assert_eq!(gate.in_flight(), 1, "answered, its future kept");
        let closing = tokio::spawn({
            let gate = gate.clone();
            async move { gate.close().await }
        });
        tokio::task::yield_now().await;
        assert_eq!(gate.state(), GateState::Closing);
        drop(call);
        closing.await.unwrap();
        assert_eq!((gate.state(), gate.in_flight()), (GateState::Closed, 0));
    }

    /// A service that reserves capacity in `poll_ready` for its next call,
    /// as a limit built for load shedding does (a slot, a token): the
    /// reservation is counted until it is called or dropped; a clone
    /// holds none.
    struct Reserving {
        reserved: Arc<std::sync::atomic::AtomicUsize>,
        held: bool,
    }

    impl Clone for Reserving {
        fn clone(&self) -> Reserving {
            Reserving {
                reserved: self.reserved.clone(),
                held: false,
            }
        }
    }

    impl Drop for Reserving {
        fn drop(&mut self) {
            if self.held {
                self.reserved
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    impl tower_service::Service<CqlRequest> for Reserving {
        type Response = ();
        type Error = CqlError;
        type Future = std::future::Ready<Result<(), CqlError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
            if !self.held {
                self.held = true;
                self.reserved
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: CqlRequest) -> Self::Future {
            assert!(std::mem::take(&mut self.held), "called without poll_ready");
            self.reserved
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok(()))
        }
    }

    /// A request the gate refuses after its service was polled ready
    /// (close began in between) gives back what the service below
    /// reserved for it: a service kept between requests must not hold a
    /// slot or a token of a limit that other gates' requests share.
    #[tokio::test]
    async fn a_request_refused_after_poll_ready_gives_back_the_reservation() {
        let reserved = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let gate = Gate::new();
        let mut svc = gate.wrap(Reserving {
            reserved: reserved.clone(),
            held: false,
        });
        let waker = futures::task::noop_waker();
        let ready = tower_service::Service::poll_ready(&mut svc, &mut Context::from_waker(&waker));
        assert!(matches!(ready, Poll::Ready(Ok(()))));
        assert_eq!(reserved.load(std::sync::atomic::Ordering::SeqCst), 1);
        gate.close().await; // between poll_ready and call
        let err = tower_service::Service::call(&mut svc, CqlRequest::query("SELECT 1"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::ShutDown);
        assert_eq!(
            reserved.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "refused by the gate, yet the service kept what it reserved"
        );
        drop(svc);
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

    /// The flush job the claim hands the flush to (a thread here, a
    /// blocking task in the gate): it flushes and marks the gate closed.
    fn flush_job(core: &Arc<GateCore>, flushes: &Arc<AtomicUsize>) -> loom::thread::JoinHandle<()> {
        let (core, flushes) = (core.clone(), flushes.clone());
        loom::thread::spawn(move || {
            flushes.fetch_add(1, Ordering::SeqCst);
            core.mark_closed();
        })
    }

    /// What `close()` does, one step: closed, or claim the flush and hand
    /// it to a job (a thread here, a blocking task in the gate) that marks
    /// the gate closed. Returns the job if this step started it.
    fn close_step(
        core: &Arc<GateCore>,
        flushes: &Arc<AtomicUsize>,
    ) -> Option<loom::thread::JoinHandle<()>> {
        if core.is_closed() || !core.claim_flush() {
            return None;
        }
        Some(flush_job(core, flushes))
    }

    /// A closer cancelled right after its first step (a caller's timeout)
    /// never strands the flush: whichever closer claims it, racing a
    /// request and the other closer, the flush runs once, and a later
    /// close finds it claimed (to wait for) or done, never lost.
    #[test]
    fn loom_cancelled_closer_never_strands_the_flush() {
        // Four threads (a request, two closers, the flush job): bounded
        // preemptions keep the search to seconds, as in tokio's own models.
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let core = Arc::new(GateCore::new());
            let flushes = Arc::new(AtomicUsize::new(0));
            let worker = {
                let core = core.clone();
                loom::thread::spawn(move || {
                    if core.try_enter() == Admission::Admitted {
                        core.exit();
                    }
                })
            };
            let cancelled = {
                let (core, flushes) = (core.clone(), flushes.clone());
                loom::thread::spawn(move || {
                    core.begin_close();
                    close_step(&core, &flushes) // then dropped: no waiting
                })
            };
            core.begin_close();
            let mut jobs: Vec<_> = close_step(&core, &flushes).into_iter().collect();
            worker.join().unwrap();
            jobs.extend(cancelled.join().unwrap());
            // A later close(), every request gone: it claims the flush, or
            // finds it claimed by a job that runs without any closer.
            jobs.extend(close_step(&core, &flushes));
            assert!(!core.claim_flush(), "the flush is claimed, once");
            assert_eq!(jobs.len(), 1, "one job");
            for j in jobs {
                j.join().unwrap();
            }
            assert_eq!(flushes.load(Ordering::SeqCst), 1, "one flush");
            assert_eq!(core.state(), (GateState::Closed, 0));
            assert!(matches!(core.try_enter(), Admission::Refused { .. }));
        });
    }

    /// A `USE` whose caller gave up: the caller's guard took another hold
    /// (`hold`) for the `USE`'s own task before the caller dropped its
    /// future. Racing the caller's exit, the task's end and a close, the
    /// gate never flushes while the task runs, and flushes once, after.
    #[test]
    fn loom_a_held_use_keeps_the_gate_open_until_its_task_ends() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let core = Arc::new(GateCore::new());
            let flushes = Arc::new(AtomicUsize::new(0));
            let running = Arc::new(AtomicUsize::new(1));
            assert_eq!(core.try_enter(), Admission::Admitted);
            core.hold();
            // the flush a leaver or a closer claims, checking the task is over
            let claim =
                |core: &Arc<GateCore>, flushes: &Arc<AtomicUsize>, running: &Arc<AtomicUsize>| {
                    if !core.claim_flush() {
                        return None;
                    }
                    let (core, flushes, running) = (core.clone(), flushes.clone(), running.clone());
                    Some(loom::thread::spawn(move || {
                        assert_eq!(
                            running.load(Ordering::SeqCst),
                            0,
                            "flushed while the USE ran"
                        );
                        flushes.fetch_add(1, Ordering::SeqCst);
                        core.mark_closed();
                    }))
                };
            let task = {
                let (core, flushes, running) = (core.clone(), flushes.clone(), running.clone());
                loom::thread::spawn(move || {
                    running.store(0, Ordering::SeqCst);
                    if core.exit() {
                        claim(&core, &flushes, &running)
                    } else {
                        None
                    }
                })
            };
            let caller = {
                let (core, flushes, running) = (core.clone(), flushes.clone(), running.clone());
                loom::thread::spawn(move || {
                    if core.exit() {
                        claim(&core, &flushes, &running)
                    } else {
                        None
                    }
                })
            };
            core.begin_close();
            let mut jobs: Vec<_> = if core.is_closed() {
                None
            } else {
                claim(&core, &flushes, &running)
            }
            .into_iter()
            .collect();
            jobs.extend(task.join().unwrap());
            jobs.extend(caller.join().unwrap());
            assert_eq!(jobs.len(), 1, "one job, whoever claimed it");
            for j in jobs {
                j.join().unwrap();
            }
            assert_eq!(flushes.load(Ordering::SeqCst), 1, "one flush");
            assert_eq!(core.state(), (GateState::Closed, 0));
        });
    }

    /// What the last request out of a closing gate does (a guard's drop,
    /// or a refused enter that drained it): claim the flush and hand it to
    /// a job, unless a closer did first.
    fn leave_step(
        core: &Arc<GateCore>,
        flushes: &Arc<AtomicUsize>,
    ) -> Option<loom::thread::JoinHandle<()>> {
        let last_out = match core.try_enter() {
            Admission::Admitted => core.exit(),
            Admission::Refused { wake } => wake,
        };
        if !last_out || !core.claim_flush() {
            return None;
        }
        Some(flush_job(core, flushes))
    }

    /// The only closer cancelled after its first step, with a request in
    /// flight or arriving: with no close() left to drive it, the gate
    /// still flushes once and closes (the last one out claims the flush
    /// when the closer found the gate still busy).
    #[test]
    fn loom_a_close_cancelled_during_the_drain_closes_when_the_last_leaves() {
        loom::model(|| {
            let core = Arc::new(GateCore::new());
            let flushes = Arc::new(AtomicUsize::new(0));
            let worker = {
                let (core, flushes) = (core.clone(), flushes.clone());
                loom::thread::spawn(move || leave_step(&core, &flushes))
            };
            core.begin_close();
            let mut jobs: Vec<_> = close_step(&core, &flushes).into_iter().collect();
            // the closer is dropped here: nobody waits, nobody steps again
            jobs.extend(worker.join().unwrap());
            assert_eq!(jobs.len(), 1, "one job, whoever claimed it");
            for j in jobs {
                j.join().unwrap();
            }
            assert_eq!(flushes.load(Ordering::SeqCst), 1, "one flush");
            assert_eq!(core.state(), (GateState::Closed, 0));
        });
    }
}
