//! Collectors: where events go. The set is held in an `ArcSwap`, so
//! recording is a lock-free load and the set can be changed while traffic
//! flows.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use tower_cql_core::{Collector, Collectors, event::RequestEvent};
//!
//! #[derive(Default)]
//! struct CountRequests(AtomicU64);
//! impl Collector for CountRequests {
//!     fn on_request(&self, _: &RequestEvent<'_>) {
//!         self.0.fetch_add(1, Ordering::Relaxed);
//!     }
//! }
//!
//! let collectors = Collectors::new();
//! let counter = Arc::new(CountRequests::default());
//! let id = collectors.add(counter.clone());
//! // ... the stack emits events into `collectors` ...
//! assert!(collectors.remove(id));
//! ```
//!
//! # Guarantees
//! - `emit` loads the current set once; the event reaches every collector
//!   of exactly that generation, even if the set is swapped meanwhile.
//! - A collector that panics does not fail the request nor stop the others;
//!   the panic is caught and counted ([`Collectors::failures`]).
//! - Collectors run synchronously on the request's task: keep them cheap,
//!   or wrap a slow one in [`Background`], which hands events to a thread
//!   through a bounded queue and counts what it had to drop.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use crate::event::{
    AttemptEvent, BreakerEvent, Event, LimitEvent, OwnedEvent, PageEvent, RequestEvent, RetryEvent,
    ServerTraceEvent, ShedEvent, StreamEvent, ThrottleEvent,
};
use crate::sync::{AtomicU64, Ordering, Swap};

/// Receives events. Every method has an empty default: implement the ones
/// you need. Methods run on the request path: no blocking, no locks held
/// long, no I/O (see [`Background`] for collectors that need them).
pub trait Collector: Send + Sync + 'static {
    /// A logical request finished.
    fn on_request(&self, _event: &RequestEvent<'_>) {}
    /// An attempt finished.
    fn on_attempt(&self, _event: &AttemptEvent<'_>) {}
    /// A retry was scheduled.
    fn on_retry(&self, _event: &RetryEvent<'_>) {}
    /// A request waited for, or was refused, capacity.
    fn on_throttle(&self, _event: &ThrottleEvent<'_>) {}
    /// A request was refused untried.
    fn on_shed(&self, _event: &ShedEvent<'_>) {}
    /// A circuit breaker changed state.
    fn on_breaker(&self, _event: &BreakerEvent<'_>) {}
    /// A limit changed.
    fn on_limit(&self, _event: &LimitEvent) {}
    /// A page arrived.
    fn on_page(&self, _event: &PageEvent<'_>) {}
    /// A paged read ended.
    fn on_stream(&self, _event: &StreamEvent<'_>) {}
    /// A request's server-side trace was fetched (in the background, after
    /// the request's own event; not on the request path).
    fn on_server_trace(&self, _event: &ServerTraceEvent<'_>) {}
    /// Push out anything buffered (called on shutdown, beside the other
    /// collectors' flushes: see [`Collectors::flush`], which waits for it
    /// up to [`flush_timeout`](Self::flush_timeout)).
    fn flush(&self) {}
    /// How long [`Collectors::flush`] (and so the stack's `close()`)
    /// waits for this collector's [`flush`](Self::flush):
    /// [`DEFAULT_FLUSH_TIMEOUT`] (30 s) unless the collector says
    /// otherwise. A flush still running then is given up on (it goes on,
    /// on a thread of its own) and counted as this collector's failure
    /// ([`Collectors::failures_of`]), so a flush that never returns
    /// stalls no shutdown for longer.
    fn flush_timeout(&self) -> Duration {
        DEFAULT_FLUSH_TIMEOUT
    }
    /// Failures this collector counted itself, off the request path: the
    /// events a wrapper that runs another collector on a thread of its
    /// own dropped (its queue full) and the panics it caught
    /// ([`Background`], which adds its inner collector's count), or the
    /// events an exporter could not deliver (a write that failed). [`Collectors::failures`] and [`Collectors::failures_of`]
    /// add them to the panics they caught. 0 by default.
    fn failures(&self) -> u64 {
        0
    }
    /// A name for diagnostics.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
}

/// How long [`Collectors::flush`] waits for a collector's flush unless
/// the collector says otherwise ([`Collector::flush_timeout`]): 30 s,
/// room for an OTLP exporter's two exports at their default timeout
/// (10 s each).
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// A collector behind an `Arc`, as [`Collectors`] takes it: an `Arc<C>` of
/// any collector type, or an `Arc<dyn Collector>`. So no `as Arc<dyn
/// Collector>` cast is needed at a call site.
pub trait IntoCollector {
    /// The collector as a trait object.
    fn into_collector(self) -> Arc<dyn Collector>;
}

impl<C: Collector> IntoCollector for Arc<C> {
    fn into_collector(self) -> Arc<dyn Collector> {
        self
    }
}

impl IntoCollector for Arc<dyn Collector> {
    fn into_collector(self) -> Arc<dyn Collector> {
        self
    }
}

/// Calls the collector method for `event`.
pub fn dispatch(c: &dyn Collector, event: &Event<'_>) {
    match event {
        Event::Request(e) => c.on_request(e),
        Event::Attempt(e) => c.on_attempt(e),
        Event::Retry(e) => c.on_retry(e),
        Event::Throttle(e) => c.on_throttle(e),
        Event::Shed(e) => c.on_shed(e),
        Event::Breaker(e) => c.on_breaker(e),
        Event::Limit(e) => c.on_limit(e),
        Event::Page(e) => c.on_page(e),
        Event::Stream(e) => c.on_stream(e),
        Event::ServerTrace(e) => c.on_server_trace(e),
    }
}

/// Identifies a collector in a [`Collectors`] set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CollectorId(u64);

struct Entry {
    id: CollectorId,
    collector: Arc<dyn Collector>,
    failures: Arc<AtomicU64>,
}

impl Clone for Entry {
    fn clone(&self) -> Entry {
        Entry {
            id: self.id,
            collector: self.collector.clone(),
            failures: self.failures.clone(),
        }
    }
}

/// One generation of the collector set (immutable).
#[derive(Clone)]
pub struct CollectorSet {
    generation: u64,
    entries: Vec<Entry>,
}

impl CollectorSet {
    /// The generation number (bumped on every change).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many collectors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The collectors with their ids.
    pub fn iter(&self) -> impl Iterator<Item = (CollectorId, &Arc<dyn Collector>)> {
        self.entries.iter().map(|e| (e.id, &e.collector))
    }
}

impl fmt::Debug for CollectorSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectorSet")
            .field("generation", &self.generation)
            .field(
                "collectors",
                &self
                    .entries
                    .iter()
                    .map(|e| e.collector.name())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

struct Shared {
    set: Swap<CollectorSet>,
    next_id: AtomicU64,
    failures: AtomicU64,
}

/// The current set of collectors, shared by every layer of a stack.
/// Cloning gives another handle to the same set.
#[derive(Clone)]
pub struct Collectors {
    shared: Arc<Shared>,
}

impl Default for Collectors {
    fn default() -> Collectors {
        Collectors::new()
    }
}

impl fmt::Debug for Collectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collectors")
            .field("set", &*self.shared.set.load_full())
            .field("failures", &self.failures())
            .finish()
    }
}

impl Collectors {
    /// Whether `self` and `other` are handles to the same set (clones of
    /// one `Collectors`): what is installed in one is in the other.
    ///
    /// ```
    /// use tower_cql_core::Collectors;
    ///
    /// let a = Collectors::new();
    /// assert!(a.same_set(&a.clone()));
    /// assert!(!a.same_set(&Collectors::new()));
    /// ```
    pub fn same_set(&self, other: &Collectors) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// An empty set.
    pub fn new() -> Collectors {
        Collectors {
            shared: Arc::new(Shared {
                set: Swap::from_pointee(CollectorSet {
                    generation: 0,
                    entries: Vec::new(),
                }),
                next_id: AtomicU64::new(1),
                failures: AtomicU64::new(0),
            }),
        }
    }

    /// A set holding `collectors`: `Arc`s of one collector type (no `as
    /// Arc<dyn Collector>` cast needed), or `Arc<dyn Collector>`s to mix
    /// types; or start with one and [`add`](Self::add) the others.
    pub fn with(collectors: impl IntoIterator<Item = impl IntoCollector>) -> Collectors {
        let c = Collectors::new();
        c.replace(collectors);
        c
    }

    /// Delivers `event` to every collector of the current generation.
    /// Lock-free; catches and counts collector panics.
    #[inline]
    pub fn emit(&self, event: Event<'_>) {
        let set = self.shared.set.load();
        if set.entries.is_empty() {
            return;
        }
        for entry in &set.entries {
            let c = &*entry.collector;
            if catch_unwind(AssertUnwindSafe(|| dispatch(c, &event))).is_err() {
                entry.failures.fetch_add(1, Ordering::Relaxed);
                self.shared.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether any collector is installed (to skip building costly events).
    #[inline]
    pub fn is_active(&self) -> bool {
        !self.shared.set.load().entries.is_empty()
    }

    /// The current generation.
    pub fn current(&self) -> Arc<CollectorSet> {
        self.shared.set.load_full()
    }

    fn new_entry(&self, collector: Arc<dyn Collector>) -> Entry {
        Entry {
            id: CollectorId(self.shared.next_id.fetch_add(1, Ordering::Relaxed)),
            collector,
            failures: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Adds a collector; returns its id.
    pub fn add(&self, collector: impl IntoCollector) -> CollectorId {
        let entry = self.new_entry(collector.into_collector());
        let id = entry.id;
        self.shared.set.rcu(|set| {
            let mut entries = set.entries.clone();
            entries.push(entry.clone());
            CollectorSet {
                generation: set.generation + 1,
                entries,
            }
        });
        id
    }

    /// Removes a collector; false if it was not in the set.
    pub fn remove(&self, id: CollectorId) -> bool {
        let previous = self.shared.set.rcu(|set| CollectorSet {
            generation: set.generation + 1,
            entries: set.entries.iter().filter(|e| e.id != id).cloned().collect(),
        });
        self.keep_failures_of_those_gone(&previous);
        previous.entries.iter().any(|e| e.id == id)
    }

    /// Adds to the set's own count what the collectors of `previous` that
    /// are no longer in the set counted off the request path, so that
    /// [`failures`](Self::failures) does not go down when one leaves.
    /// (What such a collector counts after it left is not seen.)
    fn keep_failures_of_those_gone(&self, previous: &CollectorSet) {
        let now = self.shared.set.load();
        let same = |a: &Arc<dyn Collector>, b: &Arc<dyn Collector>| {
            std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
        };
        let mut counted: Vec<&Arc<dyn Collector>> = Vec::new();
        for gone in &previous.entries {
            let c = &gone.collector;
            if now.entries.iter().any(|e| same(&e.collector, c))
                || counted.iter().any(|seen| same(seen, c))
            {
                continue; // still in the set, or counted once already
            }
            counted.push(c);
            self.shared
                .failures
                .fetch_add(c.failures(), Ordering::Relaxed);
        }
    }

    /// Replaces the whole set; returns the new ids in order.
    pub fn replace(
        &self,
        collectors: impl IntoIterator<Item = impl IntoCollector>,
    ) -> Vec<CollectorId> {
        let entries: Vec<Entry> = collectors
            .into_iter()
            .map(|c| self.new_entry(c.into_collector()))
            .collect();
        let ids = entries.iter().map(|e| e.id).collect();
        let previous = self.shared.set.rcu(|set| CollectorSet {
            generation: set.generation + 1,
            entries: entries.clone(),
        });
        self.keep_failures_of_those_gone(&previous);
        ids
    }

    /// Panics caught from collectors, in all: on the request path, and
    /// off it (see [`Collector::failures`]), also those of collectors
    /// removed since (as counted when they left the set): a total that a
    /// change of the set never lowers.
    pub fn failures(&self) -> u64 {
        let off_path: u64 = self
            .shared
            .set
            .load()
            .entries
            .iter()
            .map(|e| e.collector.failures())
            .sum();
        self.shared.failures.load(Ordering::Relaxed) + off_path
    }

    /// Panics caught from one collector (0 once removed).
    pub fn failures_of(&self, id: CollectorId) -> u64 {
        self.shared
            .set
            .load()
            .entries
            .iter()
            .find(|e| e.id == id)
            .map_or(0, |e| {
                e.failures.load(Ordering::Relaxed) + e.collector.failures()
            })
    }

    /// Calls `flush` on every collector, all at once, each on a thread of
    /// its own (in the caller's runtime, if any: a collector's flush may
    /// use it), so that one whose flush is slow or never returns (an
    /// exporter waiting on an endpoint that does not answer) delays no
    /// other's. Returns when every flush has returned, or has run for its
    /// collector's [`flush_timeout`](Collector::flush_timeout) (30 s by
    /// default): such a flush is given up on (it goes on, on its thread)
    /// and counted as its collector's failure, as a flush that panics is.
    pub fn flush(&self) {
        let set = self.shared.set.load_full();
        if set.entries.is_empty() {
            return;
        }
        let runtime = tokio::runtime::Handle::try_current().ok();
        let (done_tx, done_rx) = mpsc::channel::<usize>();
        let start = std::time::Instant::now();
        // per collector still awaited: its index, its flush's outcome
        // (claimed once, by the flush's end or by the wait giving up) and
        // its deadline (none: no bound)
        let mut awaited = Vec::with_capacity(set.entries.len());
        for (i, entry) in set.entries.iter().enumerate() {
            let outcome = Arc::new(FlushOutcome::default());
            let job = {
                let (entry, shared, outcome) =
                    (entry.clone(), self.shared.clone(), outcome.clone());
                let (runtime, done) = (runtime.clone(), done_tx.clone());
                move || {
                    let _entered = runtime.as_ref().map(|rt| rt.enter());
                    let panicked =
                        catch_unwind(AssertUnwindSafe(|| entry.collector.flush())).is_err();
                    if outcome.claim() && panicked {
                        entry.failures.fetch_add(1, Ordering::Relaxed);
                        shared.failures.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = done.send(i);
                }
            };
            let spawned = std::thread::Builder::new()
                .name("tower-cql-flush".into())
                .spawn(job.clone());
            if spawned.is_err() {
                job(); // no thread to be had: here, in turn, unbounded
                continue;
            }
            let deadline = start.checked_add(entry.collector.flush_timeout());
            awaited.push((i, outcome, deadline));
        }
        drop(done_tx);
        while !awaited.is_empty() {
            let next = awaited.iter().filter_map(|(_, _, d)| *d).min();
            let answer = match next {
                Some(d) => {
                    done_rx.recv_timeout(d.saturating_duration_since(std::time::Instant::now()))
                }
                None => done_rx
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            match answer {
                Ok(i) => awaited.retain(|(j, _, _)| *j != i),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = std::time::Instant::now();
                    awaited.retain(|(i, outcome, deadline)| {
                        if deadline.is_none_or(|d| d > now) {
                            return true;
                        }
                        if outcome.claim() {
                            // given up on: the flush goes on unawaited
                            set.entries[*i].failures.fetch_add(1, Ordering::Relaxed);
                            self.shared.failures.fetch_add(1, Ordering::Relaxed);
                        }
                        false
                    });
                }
                // every flush thread has ended
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    }
}

/// Whether a flush's outcome was taken into account yet: by the flush
/// ending (its panic, if any, counted) or by [`Collectors::flush`] giving
/// up on it (counted), whichever comes first; never both.
#[derive(Default)]
struct FlushOutcome(std::sync::atomic::AtomicBool);

impl FlushOutcome {
    /// True for the first caller only.
    fn claim(&self) -> bool {
        !self.0.swap(true, std::sync::atomic::Ordering::AcqRel)
    }
}

enum Message {
    Event(Box<OwnedEvent>),
    Flush(mpsc::SyncSender<()>),
}

/// Runs a slow collector on its own thread behind a bounded queue: the
/// request path only copies the event and tries to enqueue it; when the
/// queue is full the event is dropped and counted, never waited for. A
/// drop, and a panic of the collector on that thread (caught), count as
/// failures ([`Background::failures`], and [`Collectors::failures`]).
pub struct Background {
    tx: mpsc::SyncSender<Message>,
    dropped: AtomicU64,
    /// Panics caught on the worker (shared with it: std's atomic, as the
    /// worker is a thread of its own), and flushes that gave up.
    failures: Arc<std::sync::atomic::AtomicU64>,
    /// The inner collector, for its own count of failures (see
    /// [`Collector::failures`]); only the worker calls its handlers.
    inner: Arc<dyn Collector>,
    flush_timeout: Duration,
    name: String,
}

impl fmt::Debug for Background {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Background")
            .field("inner", &self.name)
            .field("dropped", &self.dropped())
            .field("failures", &Background::failures(self))
            .finish()
    }
}

impl Background {
    /// Starts the worker thread for `inner` with a queue of `capacity` events.
    ///
    /// # Panics
    /// If `capacity` is 0 (`background.capacity`): a queue must hold at
    /// least one event (with none, every event the worker is not waiting
    /// for at that very instant would be dropped).
    #[track_caller]
    pub fn new(inner: Arc<dyn Collector>, capacity: usize) -> Background {
        if capacity == 0 {
            panic!(
                "{}",
                crate::ConfigError::new(
                    "background.capacity",
                    "must be at least 1 event: with no queue, every event the worker thread is not waiting for at that instant is dropped; give it room for the events of a burst (64 or more), got 0",
                )
            );
        }
        let (tx, rx) = mpsc::sync_channel::<Message>(capacity);
        let name = format!("background({})", inner.name());
        let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let caught = failures.clone();
        let kept = inner.clone();
        let count = move |r: std::thread::Result<()>| {
            if r.is_err() {
                caught.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        };
        std::thread::Builder::new()
            .name("tower-cql-collector".into())
            .spawn(move || {
                while let Ok(msg) = rx.recv() {
                    match msg {
                        Message::Event(e) => {
                            count(catch_unwind(AssertUnwindSafe(|| {
                                dispatch(&*inner, &e.as_event())
                            })));
                        }
                        Message::Flush(ack) => {
                            count(catch_unwind(AssertUnwindSafe(|| inner.flush())));
                            let _ = ack.send(());
                        }
                    }
                }
            })
            .expect("spawn the background collector thread");
        Background {
            tx,
            dropped: AtomicU64::new(0),
            failures,
            inner: kept,
            flush_timeout: Duration::from_secs(5),
            name,
        }
    }

    /// How long [`flush`](Collector::flush) waits, in all, for the worker
    /// to handle what was queued before it and flush the collector
    /// (default 5 s): also when the queue is full and the collector
    /// stuck, so a stack's `close()` flushing through it returns.
    pub fn flush_timeout(mut self, limit: Duration) -> Background {
        self.flush_timeout = limit;
        self
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events lost on their way through: those [dropped](Self::dropped)
    /// because the queue was full (never seen by the inner collector),
    /// panics of the inner collector caught on the worker thread (its
    /// event handlers' and its flush's), flushes that gave up at their
    /// timeout (what was queued not flushed), and the failures the inner
    /// collector counted itself (its [`Collector::failures`]: lines a
    /// writer refused, say); [`Collectors::failures`] counts them too.
    pub fn failures(&self) -> u64 {
        self.dropped()
            + self.failures.load(std::sync::atomic::Ordering::Relaxed)
            + self.inner.failures()
    }

    fn send(&self, event: Event<'_>) {
        if self
            .tx
            .try_send(Message::Event(Box::new(event.to_owned())))
            .is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Collector for Background {
    fn on_request(&self, e: &RequestEvent<'_>) {
        self.send(Event::Request(*e));
    }
    fn on_attempt(&self, e: &AttemptEvent<'_>) {
        self.send(Event::Attempt(*e));
    }
    fn on_retry(&self, e: &RetryEvent<'_>) {
        self.send(Event::Retry(*e));
    }
    fn on_throttle(&self, e: &ThrottleEvent<'_>) {
        self.send(Event::Throttle(*e));
    }
    fn on_shed(&self, e: &ShedEvent<'_>) {
        self.send(Event::Shed(*e));
    }
    fn on_breaker(&self, e: &BreakerEvent<'_>) {
        self.send(Event::Breaker(*e));
    }
    fn on_limit(&self, e: &LimitEvent) {
        self.send(Event::Limit(*e));
    }
    fn on_page(&self, e: &PageEvent<'_>) {
        self.send(Event::Page(*e));
    }
    fn on_stream(&self, e: &StreamEvent<'_>) {
        self.send(Event::Stream(*e));
    }
    fn on_server_trace(&self, e: &ServerTraceEvent<'_>) {
        self.send(Event::ServerTrace(*e));
    }
    /// Waits until the worker has handled everything queued before this
    /// call and flushed the inner collector, up to the flush timeout in
    /// all (5 s unless [`Background::flush_timeout`] says otherwise):
    /// waiting for room in a full queue counts against it too. A flush
    /// that gives up at its timeout counts as a failure.
    fn flush(&self) {
        let deadline = std::time::Instant::now() + self.flush_timeout;
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        let mut msg = Message::Flush(ack_tx);
        let mut pause = Duration::from_millis(1);
        // a flush given up on leaves what is queued unflushed: a failure
        let gave_up = || {
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        // (never a blocking send: with the queue full and the collector
        // stuck, it would wait for room for ever)
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(mpsc::TrySendError::Disconnected(_)) => return,
                Err(mpsc::TrySendError::Full(m)) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return gave_up();
                    }
                    msg = m;
                    std::thread::sleep(pause.min(left));
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if let Err(mpsc::RecvTimeoutError::Timeout) = ack_rx.recv_timeout(left) {
            gave_up();
        }
    }
    /// Its own flush's bound ([`Background::flush_timeout`], 5 s by
    /// default), and a second: its flush returns by then on its own.
    fn flush_timeout(&self) -> Duration {
        self.flush_timeout.saturating_add(Duration::from_secs(1))
    }
    /// Events dropped, panics of the inner collector caught on the
    /// worker thread, and its own count (see [`Background::failures`]).
    fn failures(&self) -> u64 {
        Background::failures(self)
    }
    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;
    use crate::request::CqlRequest;

    #[derive(Default)]
    struct Count(AtomicU64);
    impl Collector for Count {
        fn on_request(&self, _: &RequestEvent<'_>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    struct Panics;
    impl Collector for Panics {
        fn on_request(&self, _: &RequestEvent<'_>) {
            panic!("collector bug");
        }
    }

    struct Slow;
    impl Collector for Slow {
        fn on_request(&self, _: &RequestEvent<'_>) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn event(meta: &crate::request::RequestMeta) -> Event<'_> {
        Event::Request(RequestEvent {
            meta,
            duration: Duration::from_micros(1),
            started: None,
            error: None,
            attempts: 1,
            speculative: 0,
            rows: 0,
            node: None,
            tracing_id: None,
        })
    }

    #[test]
    fn add_remove_replace_bump_generations() {
        let c = Collectors::new();
        let a = Arc::new(Count::default());
        let id = c.add(a.clone());
        assert_eq!(c.current().generation(), 1);
        let req = CqlRequest::query("SELECT 1 FROM t");
        c.emit(event(req.meta()));
        assert_eq!(a.0.load(Ordering::Relaxed), 1);
        assert!(c.remove(id));
        assert!(!c.remove(id));
        c.emit(event(req.meta()));
        assert_eq!(a.0.load(Ordering::Relaxed), 1);
        let ids = c.replace([a.clone(), a.clone()]);
        assert_eq!(ids.len(), 2);
        assert_eq!(c.current().len(), 2);
        c.emit(event(req.meta()));
        assert_eq!(a.0.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_panicking_collector_is_counted_and_others_still_run() {
        let c = Collectors::new();
        let bad = c.add(Arc::new(Panics));
        let good = Arc::new(Count::default());
        c.add(good.clone());
        let req = CqlRequest::query("SELECT 1 FROM t");
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        for _ in 0..10 {
            c.emit(event(req.meta()));
        }
        std::panic::set_hook(prev);
        assert_eq!(good.0.load(Ordering::Relaxed), 10);
        assert_eq!(c.failures(), 10);
        assert_eq!(c.failures_of(bad), 10);
    }

    /// What a collector counted off the request path stays in
    /// `Collectors::failures` when the collector leaves the set (removed,
    /// or the set replaced): a total never goes down because the set was
    /// reconfigured. (Before, it went back to 0: the panics of a
    /// `Background` collector counted, then forgotten.)
    #[test]
    fn failures_counted_off_the_path_stay_counted_when_the_collector_leaves() {
        let c = Collectors::new();
        let req = CqlRequest::query("SELECT 1 FROM t");
        // n events to a set of panicking collectors, handled by the time
        // it returns (the panics not printed)
        let panics = |n| {
            let prev = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            for _ in 0..n {
                c.emit(event(req.meta()));
            }
            c.flush();
            std::panic::set_hook(prev);
        };
        let id = c.add(Arc::new(Background::new(Arc::new(Panics), 64)));
        panics(10);
        assert_eq!(c.failures(), 10);
        assert!(c.remove(id));
        assert_eq!(c.failures(), 10, "after remove");
        let bg = Arc::new(Background::new(Arc::new(Panics), 64));
        c.replace([bg.clone()]);
        panics(5);
        assert_eq!(c.failures(), 15);
        // the same collector twice, then once: its count kept once
        c.replace([bg.clone(), bg.clone()]);
        c.replace([bg.clone()]);
        assert_eq!(c.failures(), 15, "after a replace that keeps it");
        c.replace(std::iter::empty::<Arc<dyn Collector>>());
        assert_eq!(c.failures(), 15, "after a replace that drops it");
    }

    #[test]
    fn background_never_blocks_and_counts_drops() {
        let bg = Arc::new(Background::new(Arc::new(Slow), 2));
        let c = Collectors::with([bg.clone()]);
        let req = CqlRequest::query("SELECT 1 FROM t");
        let start = std::time::Instant::now();
        for _ in 0..100 {
            c.emit(event(req.meta()));
        }
        // blocking would take ~98 x 50 ms; the bound only catches that, it is no speed target
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "emit waited for the slow collector"
        );
        assert!(bg.dropped() >= 90, "dropped {}", bg.dropped());
        c.flush();
        // events its collector never got: lost, and counted where every
        // collector's failures are
        assert_eq!(c.failures(), bg.dropped(), "the drops are failures");
    }

    /// A collector behind `Background` that panics is caught on the
    /// worker and counted where every collector's panics are: the
    /// wrapper's `failures()`, and the set's `failures` and
    /// `failures_of`. (Before, the worker threw the panic away: ten
    /// panics, counted nowhere.)
    #[test]
    fn a_panicking_collector_behind_background_is_counted() {
        let bg = Arc::new(Background::new(Arc::new(Panics), 64));
        let c = Collectors::new();
        let id = c.add(bg.clone());
        let req = CqlRequest::query("SELECT 1 FROM t");
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        for _ in 0..10 {
            c.emit(event(req.meta()));
        }
        c.flush(); // the worker has handled all ten
        std::panic::set_hook(prev);
        assert_eq!(bg.dropped(), 0);
        assert_eq!(bg.failures(), 10);
        assert_eq!(c.failures_of(id), 10);
        assert_eq!(c.failures(), 10);
    }

    /// A queue of 0 events is refused, naming the setting: `sync_channel(0)`
    /// is a rendezvous, which drops every event the worker is not waiting
    /// for at that instant, and turning 0 into 1 silently gave another
    /// queue than the one asked for.
    #[test]
    fn a_background_queue_of_zero_is_refused_naming_the_capacity() {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let out = std::panic::catch_unwind(|| Background::new(Arc::new(Count::default()), 0));
        std::panic::set_hook(prev);
        let err = out.expect_err("a queue of 0 events was accepted");
        let msg = err
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        assert!(msg.contains("`background.capacity`"), "{msg}");
        assert!(msg.contains("at least 1"), "{msg}");
        // the smallest queue there is, accepted
        Background::new(Arc::new(Count::default()), 1).flush();
    }

    /// A collector that blocks until released.
    #[derive(Default)]
    struct Stuck {
        released: std::sync::Mutex<bool>,
        cv: std::sync::Condvar,
    }
    impl Stuck {
        fn release(&self) {
            *self.released.lock().unwrap() = true;
            self.cv.notify_all();
        }
    }
    impl Collector for Stuck {
        fn on_request(&self, _: &RequestEvent<'_>) {
            let mut r = self.released.lock().unwrap();
            while !*r {
                r = self.cv.wait(r).unwrap();
            }
        }
    }

    /// `Background::flush` waits up to its bound in all, also when the
    /// queue is full and the collector is stuck for good: a stack's
    /// `close()` flushes through it and must return. (Before, the flush
    /// was sent with a blocking send: with the queue full it waited for
    /// room for ever, and only then began its 5 s wait.)
    #[test]
    fn background_flush_keeps_its_bound_with_a_full_queue_and_a_stuck_collector() {
        let stuck = Arc::new(Stuck::default());
        let bg =
            Arc::new(Background::new(stuck.clone(), 1).flush_timeout(Duration::from_millis(300)));
        let c = Collectors::with([bg.clone()]);
        let req = CqlRequest::query("SELECT 1 FROM t");
        // one taken by the worker (stuck), one queued, the third dropped
        for _ in 0..3 {
            c.emit(event(req.meta()));
            std::thread::sleep(Duration::from_millis(20));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let flushing = c.clone();
        std::thread::spawn(move || {
            flushing.flush();
            let _ = tx.send(());
        });
        // (generous: the bound is 300 ms; this only catches a flush that
        // never returns)
        let out = rx.recv_timeout(Duration::from_secs(10));
        stuck.release();
        assert!(out.is_ok(), "Background::flush still blocked after 10 s");
        // the flush that gave up left an event queued, never handed to
        // the collector before shutdown: a loss, counted as the drop is
        assert_eq!(
            c.failures(),
            bg.dropped() + 1,
            "the drop and the flush that gave up"
        );
    }
}

#[cfg(all(test, tower_cql_loom))]
mod loom_tests {
    use super::*;
    use crate::request::CqlRequest;

    struct LoomCount(AtomicU64);
    impl Collector for LoomCount {
        fn on_request(&self, _: &RequestEvent<'_>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn emit_one(c: &Collectors, meta: &crate::request::RequestMeta) {
        c.emit(Event::Request(RequestEvent {
            meta,
            duration: Duration::ZERO,
            started: None,
            error: None,
            attempts: 1,
            speculative: 0,
            rows: 0,
            node: None,
            tracing_id: None,
        }));
    }

    /// Events emitted while another thread swaps the set each reach exactly
    /// one generation: the old set or the new, never both, never neither.
    #[test]
    fn loom_emit_during_swap_reaches_exactly_one_generation() {
        loom::model(|| {
            let c = Collectors::new();
            let old = Arc::new(LoomCount(AtomicU64::new(0)));
            let new = Arc::new(LoomCount(AtomicU64::new(0)));
            c.replace([old.clone()]);
            let swapper = {
                let c = c.clone();
                let new = new.clone();
                loom::thread::spawn(move || {
                    c.replace([new]);
                })
            };
            let req = CqlRequest::query("SELECT v FROM t");
            emit_one(&c, req.meta());
            emit_one(&c, req.meta());
            swapper.join().unwrap();
            let total = old.0.load(Ordering::SeqCst) + new.0.load(Ordering::SeqCst);
            assert_eq!(total, 2);
            // once the old generation saw an event after the swap... never:
            // events after the join go to the new set only
            emit_one(&c, req.meta());
            assert_eq!(
                old.0.load(Ordering::SeqCst) + new.0.load(Ordering::SeqCst),
                3
            );
            assert!(new.0.load(Ordering::SeqCst) >= 1);
        });
    }

    /// Concurrent adds and removes are read-copy-update: none is lost.
    #[test]
    fn loom_concurrent_add_and_remove_lose_nothing() {
        loom::model(|| {
            let c = Collectors::new();
            let first = c.add(Arc::new(LoomCount(AtomicU64::new(0))));
            let adders: Vec<_> = (0..2)
                .map(|_| {
                    let c = c.clone();
                    loom::thread::spawn(move || c.add(Arc::new(LoomCount(AtomicU64::new(0)))))
                })
                .collect();
            assert!(c.remove(first));
            let added: Vec<CollectorId> = adders.into_iter().map(|t| t.join().unwrap()).collect();
            let now: Vec<CollectorId> = c.current().iter().map(|(id, _)| id).collect();
            assert_eq!(now.len(), 2);
            for id in added {
                assert!(now.contains(&id));
            }
            assert_eq!(c.current().generation(), 4);
        });
    }
}
