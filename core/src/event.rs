//! What the stack observes: typed events, emitted by the layers and the
//! driver service, delivered to every [`crate::Collector`].
//!
//! Events borrow from the request (labels) and the error, so emitting one
//! costs no allocation; a collector that needs to keep one makes an
//! [`OwnedEvent`].
//!
//! ```
//! use std::time::Duration;
//! use tower_cql_core::{CqlRequest, event::{Event, RequestEvent}};
//!
//! let req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").operation("get");
//! // Fields may be added to events: build them with `new` and set the rest.
//! let mut request = RequestEvent::new(req.meta(), Duration::from_micros(350), None);
//! request.rows = 1;
//! let event = Event::Request(request);
//! assert_eq!(event.name(), "request");
//! let kept = event.to_owned();
//! assert_eq!(kept.as_event().meta().unwrap().operation().unwrap().as_str(), "get");
//! ```
//!
//! Every event struct and enum is `#[non_exhaustive]`: a field or variant
//! added later breaks no collector, so outside this crate an event is made
//! with its `new` and a match on an enum has a wildcard arm. A struct
//! literal does not compile:
//!
//! ```compile_fail,E0639
//! use tower_cql_core::event::LimitEvent;
//! let _ = LimitEvent { limiter: "adaptive", limit: 8, in_flight: 3, change: 0 };
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{CqlError, ErrorKind};
use crate::request::RequestMeta;
use crate::server_trace::ServerTraceStep;

pub use crate::request::AttemptReason;

/// A logical request finished (end to end, across retries, queueing and
/// hedging): the latency the caller felt.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestEvent<'a> {
    /// The request's labels and options.
    pub meta: &'a RequestMeta,
    /// Time from entering the layer that emits it to the result.
    pub duration: Duration,
    /// When it entered that layer (the request ended `duration` later),
    /// if the emitter says: a collector that stamps the request in wall
    /// time (a span) takes it from this, not from when the event reaches
    /// it, which a queue ([`Background`](crate::Background)) can delay.
    /// `None` from [`new`](Self::new); the stack's metrics layer sets it.
    pub started: Option<Instant>,
    /// The error, if it failed.
    pub error: Option<&'a CqlError>,
    /// Attempts made, speculative ones included: as many as the request's
    /// attempt events; 0 for a request refused before any. A request its
    /// caller dropped says the attempts it had started, those still in
    /// flight included (their events, outcome `cancelled`, follow its
    /// own).
    pub attempts: u32,
    /// Speculative attempts among them.
    pub speculative: u32,
    /// Rows returned.
    pub rows: usize,
    /// The node that answered last.
    pub node: Option<SocketAddr>,
    /// The server's tracing session id, when the request was traced
    /// (its trace arrives later as a [`ServerTraceEvent`]).
    pub tracing_id: Option<[u8; 16]>,
}

impl<'a> RequestEvent<'a> {
    /// A request of one attempt that returned no rows, from no known node;
    /// set the other fields on the value.
    pub fn new(meta: &'a RequestMeta, duration: Duration, error: Option<&'a CqlError>) -> Self {
        RequestEvent {
            meta,
            duration,
            started: None,
            error,
            attempts: 1,
            speculative: 0,
            rows: 0,
            node: None,
            tracing_id: None,
        }
    }
}

/// One attempt finished (one round trip to a node).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct AttemptEvent<'a> {
    /// The request's labels and options.
    pub meta: &'a RequestMeta,
    /// Zero-based attempt index.
    pub index: u32,
    /// Why it was made.
    pub reason: AttemptReason,
    /// Its duration.
    pub duration: Duration,
    /// Its error, if it failed.
    pub error: Option<&'a CqlError>,
    /// The node it went to, where known.
    pub node: Option<SocketAddr>,
    /// Rows returned.
    pub rows: usize,
}

impl<'a> AttemptEvent<'a> {
    /// An attempt that returned no rows, from no known node; set the other
    /// fields on the value.
    pub fn new(
        meta: &'a RequestMeta,
        index: u32,
        reason: AttemptReason,
        duration: Duration,
        error: Option<&'a CqlError>,
    ) -> Self {
        AttemptEvent {
            meta,
            index,
            reason,
            duration,
            error,
            node: None,
            rows: 0,
        }
    }
}

/// A retry was scheduled.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RetryEvent<'a> {
    /// The request's labels and options.
    pub meta: &'a RequestMeta,
    /// Index of the attempt that will be made.
    pub attempt: u32,
    /// Backoff before it.
    pub delay: Duration,
    /// The error that caused it.
    pub cause: &'a CqlError,
}

impl<'a> RetryEvent<'a> {
    /// A retry of `meta`'s request as attempt `attempt`, after `delay`,
    /// because of `cause`.
    pub fn new(meta: &'a RequestMeta, attempt: u32, delay: Duration, cause: &'a CqlError) -> Self {
        RetryEvent {
            meta,
            attempt,
            delay,
            cause,
        }
    }
}

/// A request waited for, or was refused, capacity. A limiter's wait is
/// inside the request (its [`RequestEvent`]'s `duration` includes it);
/// the event is emitted when the wait ends.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ThrottleEvent<'a> {
    /// The request's labels and options.
    pub meta: &'a RequestMeta,
    /// Which limiter: `"rate_limit"`, `"concurrency_limit"`, `"adaptive"`;
    /// or the retry budget, refusing an extra attempt of the request rather
    /// than the request itself: `"retry_budget"` (a retry) or
    /// `"hedge_budget"` (a speculative attempt).
    pub limiter: &'static str,
    /// Time spent waiting.
    pub waited: Duration,
    /// Whether it did not get through in the end: refused, timed out in
    /// the queue, its deadline passed while it waited, or its caller
    /// dropped it while it waited.
    pub rejected: bool,
    /// Requests queued behind the limiter when its wait ended.
    pub queue_depth: usize,
}

impl<'a> ThrottleEvent<'a> {
    /// A wait of `waited` at `limiter`, that got through or was
    /// `rejected`, with `queue_depth` requests queued when it ended.
    pub fn new(
        meta: &'a RequestMeta,
        limiter: &'static str,
        waited: Duration,
        rejected: bool,
        queue_depth: usize,
    ) -> Self {
        ThrottleEvent {
            meta,
            limiter,
            waited,
            rejected,
            queue_depth,
        }
    }
}

/// A request was refused without being tried.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ShedEvent<'a> {
    /// The request's labels and options.
    pub meta: &'a RequestMeta,
    /// Why: [`ErrorKind::Shed`], [`ErrorKind::CircuitOpen`], [`ErrorKind::ShutDown`], ...
    pub reason: ErrorKind,
    /// The layer that refused it.
    pub layer: &'static str,
}

impl<'a> ShedEvent<'a> {
    /// `layer` refused `meta`'s request for `reason`.
    pub fn new(meta: &'a RequestMeta, reason: ErrorKind, layer: &'static str) -> Self {
        ShedEvent {
            meta,
            reason,
            layer,
        }
    }
}

/// A circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused.
    Open,
    /// A probe is allowed through.
    HalfOpen,
}

impl BreakerState {
    /// `"closed"`, `"open"`, `"half_open"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A circuit breaker changed state.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct BreakerEvent<'a> {
    /// What the breaker guards (a node address or `keyspace.table`).
    pub target: &'a str,
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
}

impl<'a> BreakerEvent<'a> {
    /// The breaker of `target` went from `from` to `to`.
    pub fn new(target: &'a str, from: BreakerState, to: BreakerState) -> Self {
        BreakerEvent { target, from, to }
    }
}

/// A limiter's limit changed (adaptive concurrency).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct LimitEvent {
    /// Which limiter.
    pub limiter: &'static str,
    /// The new limit.
    pub limit: usize,
    /// Requests in flight when it changed.
    pub in_flight: usize,
    /// Which change of the limiter's limit this is: 1, 2, … (after
    /// `u32::MAX`, 1 again), in the order the changes were made, which
    /// threads emitting their events may not keep; 0 for a limiter that
    /// does not number its changes. [`LatestLimit`] keeps the limit in
    /// force by it.
    pub change: u32,
}

impl LimitEvent {
    /// `limiter`'s limit became `limit` with `in_flight` requests in
    /// flight (an unnumbered change: see [`with_change`](Self::with_change)).
    pub fn new(limiter: &'static str, limit: usize, in_flight: usize) -> Self {
        LimitEvent {
            limiter,
            limit,
            in_flight,
            change: 0,
        }
    }

    /// This event, numbered as the limiter's `change`-th change (see
    /// [`change`](Self::change)).
    pub fn with_change(mut self, change: u32) -> Self {
        self.change = change;
        self
    }
}

/// The limit in force by the [`LimitEvent`]s seen, whatever order they
/// arrive in: two threads changing a limit one after the other may
/// deliver their events the other way round, and a gauge set to the last
/// event to arrive then shows a limit no longer in force until the next
/// change. Kept by the collectors that show the limit (a gauge, the
/// in-memory collector's `current_limit`); lock-free, one word.
///
/// ```
/// use tower_cql_core::event::{LatestLimit, LimitEvent};
///
/// let latest = LatestLimit::new();
/// let mut shown = 0;
/// // the second change's event arrives first
/// latest.show(&LimitEvent::new("adaptive", 5, 0).with_change(2), |l| shown = l);
/// latest.show(&LimitEvent::new("adaptive", 4, 0).with_change(1), |l| shown = l);
/// assert_eq!((latest.get(), shown), (Some(5), 5));
/// ```
#[derive(Debug, Default)]
pub struct LatestLimit(std::sync::atomic::AtomicU64);

impl LatestLimit {
    /// None seen yet.
    pub const fn new() -> LatestLimit {
        LatestLimit(std::sync::atomic::AtomicU64::new(0))
    }

    /// The word kept for `e`: its change number above its limit (which
    /// is capped at `u32::MAX`); 0 is "none seen".
    fn word(e: &LimitEvent) -> u64 {
        (u64::from(e.change) << 32)
            | u64::try_from(e.limit)
                .unwrap_or(u64::MAX)
                .min(u32::MAX.into())
    }

    /// Whether change `a` comes after change `b` (wrapping: within half
    /// the number space; an unnumbered change is always the latest).
    fn after(a: u32, b: u32) -> bool {
        a == 0 || b == 0 || (a.wrapping_sub(b) as i32) > 0
    }

    /// Records `e`; returns the word in force after it (`e`'s, or a later
    /// change's seen before).
    fn record(&self, e: &LimitEvent) -> u64 {
        use std::sync::atomic::Ordering::SeqCst;
        let new = LatestLimit::word(e);
        let mut cur = self.0.load(SeqCst);
        loop {
            if cur != 0 && !LatestLimit::after(e.change, (cur >> 32) as u32) {
                return cur;
            }
            match self.0.compare_exchange_weak(cur, new, SeqCst, SeqCst) {
                Ok(_) => return new,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Records `e` and calls `set` with the limit in force, again until
    /// what it set is the latest seen: of two threads showing events
    /// concurrently, the last to finish sets the latest change's limit.
    pub fn show(&self, e: &LimitEvent, mut set: impl FnMut(u64)) {
        let mut word = self.record(e);
        loop {
            set(word & u64::from(u32::MAX));
            let now = self.0.load(std::sync::atomic::Ordering::SeqCst);
            if now == word {
                return;
            }
            word = now;
        }
    }

    /// The limit in force by the events seen (`None`: none seen).
    pub fn get(&self) -> Option<u64> {
        match self.0.load(std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            w => Some(w & u64::from(u32::MAX)),
        }
    }
}

/// One page of a paged read arrived (emitted as it arrives, whether or
/// not the reader reaches it).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct PageEvent<'a> {
    /// The request's labels and options.
    pub meta: &'a RequestMeta,
    /// Zero-based page index.
    pub page: u32,
    /// Rows in the page.
    pub rows: usize,
    /// Time to fetch it: from its request to its answer, whenever the
    /// reader came back for it.
    pub duration: Duration,
    /// The node that served it.
    pub node: Option<SocketAddr>,
}

impl<'a> PageEvent<'a> {
    /// Page `page` of `meta`'s read, of `rows` rows, took `duration`; set
    /// `node` on the value where known.
    pub fn new(meta: &'a RequestMeta, page: u32, rows: usize, duration: Duration) -> Self {
        PageEvent {
            meta,
            page,
            rows,
            duration,
            node: None,
        }
    }
}

/// How a paged read ended.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum StreamEnd<'a> {
    /// Every page was read: every row handed out and no page left, also
    /// when the consumer then dropped the stream, or `close()` ended it,
    /// before it asked past its last row.
    Finished,
    /// A page failed.
    Failed(&'a CqlError),
    /// The consumer dropped the stream before the end (rows or pages
    /// were left).
    Dropped,
}

impl StreamEnd<'_> {
    /// `"finished"`, `"failed"`, `"dropped"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            StreamEnd::Finished => "finished",
            StreamEnd::Failed(_) => "failed",
            StreamEnd::Dropped => "dropped",
        }
    }
}

/// A paged read ended (exactly once per stream).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct StreamEvent<'a> {
    /// The request's labels and options.
    pub meta: &'a RequestMeta,
    /// Pages fetched.
    pub pages: u32,
    /// Rows handed to the consumer.
    pub rows: u64,
    /// Time from the first request to the end.
    pub duration: Duration,
    /// How it ended.
    pub end: StreamEnd<'a>,
}

impl<'a> StreamEvent<'a> {
    /// `meta`'s paged read ended (`end`) after `pages` pages, `rows` rows
    /// and `duration`.
    pub fn new(
        meta: &'a RequestMeta,
        pages: u32,
        rows: u64,
        duration: Duration,
        end: StreamEnd<'a>,
    ) -> Self {
        StreamEvent {
            meta,
            pages,
            rows,
            duration,
            end,
        }
    }
}

/// A request's server-side trace, read from `system_traces` in the
/// background after the request completed (see
/// `tower_cql_middleware::server_trace`): the session and its steps on
/// every node, activity texts sanitised.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ServerTraceEvent<'a> {
    /// The traced request's labels and options.
    pub meta: &'a RequestMeta,
    /// The tracing session id (the request event's `tracing_id`).
    pub session_id: [u8; 16],
    /// `sessions.coordinator`: the node that coordinated the request.
    pub coordinator: Option<IpAddr>,
    /// `sessions.started_at` (when the server left it null, where the
    /// coordinator's first step says it began:
    /// [`ServerTraceStep::node_began_at`]).
    pub started_at: SystemTime,
    /// `sessions.duration`: the coordinator's time on the request.
    pub duration: Duration,
    /// `sessions.request`: what the server did (`Execute CQL3 prepared
    /// query`), no statement text.
    pub request: &'a str,
    /// `sessions.parameters['consistency_level']`, the one parameter kept
    /// (the others may hold the query text or bound values).
    pub consistency: Option<&'a str>,
    /// The steps (`system_traces.events`), in `event_id` order.
    pub steps: &'a [ServerTraceStep],
    /// The trace had more steps than the fetcher keeps
    /// (`ServerTraceConfig::max_events_per_trace`): `steps` holds the
    /// first that many (in event order), the rest were not read.
    pub truncated: bool,
}

impl<'a> ServerTraceEvent<'a> {
    /// The trace `session_id` of `meta`'s request, started at
    /// `started_at` and lasting `duration`, made of `steps`; set the
    /// other fields on the value.
    pub fn new(
        meta: &'a RequestMeta,
        session_id: [u8; 16],
        started_at: SystemTime,
        duration: Duration,
        steps: &'a [ServerTraceStep],
    ) -> Self {
        ServerTraceEvent {
            meta,
            session_id,
            coordinator: None,
            started_at,
            duration,
            request: "",
            consistency: None,
            steps,
            truncated: false,
        }
    }

    /// The nodes that wrote steps, in the order of their first step (the
    /// coordinator first).
    pub fn sources(&self) -> Vec<Option<IpAddr>> {
        let mut out: Vec<Option<IpAddr>> = Vec::new();
        if self.coordinator.is_some() {
            out.push(self.coordinator);
        }
        for s in self.steps {
            if !out.contains(&s.source) {
                out.push(s.source);
            }
        }
        out
    }
}

/// Any event.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A logical request finished.
    Request(RequestEvent<'a>),
    /// An attempt finished.
    Attempt(AttemptEvent<'a>),
    /// A retry was scheduled.
    Retry(RetryEvent<'a>),
    /// A request waited for or was refused capacity.
    Throttle(ThrottleEvent<'a>),
    /// A request was refused untried.
    Shed(ShedEvent<'a>),
    /// A breaker changed state.
    Breaker(BreakerEvent<'a>),
    /// A limit changed.
    Limit(LimitEvent),
    /// A page arrived.
    Page(PageEvent<'a>),
    /// A paged read ended.
    Stream(StreamEvent<'a>),
    /// A request's server-side trace was fetched.
    ServerTrace(ServerTraceEvent<'a>),
}

impl<'a> Event<'a> {
    /// A short name: `"request"`, `"attempt"`, ...
    pub fn name(&self) -> &'static str {
        match self {
            Event::Request(_) => "request",
            Event::Attempt(_) => "attempt",
            Event::Retry(_) => "retry",
            Event::Throttle(_) => "throttle",
            Event::Shed(_) => "shed",
            Event::Breaker(_) => "breaker",
            Event::Limit(_) => "limit",
            Event::Page(_) => "page",
            Event::Stream(_) => "stream",
            Event::ServerTrace(_) => "server_trace",
        }
    }

    /// The request metadata, for events about a request.
    pub fn meta(&self) -> Option<&'a RequestMeta> {
        match self {
            Event::Request(e) => Some(e.meta),
            Event::Attempt(e) => Some(e.meta),
            Event::Retry(e) => Some(e.meta),
            Event::Throttle(e) => Some(e.meta),
            Event::Shed(e) => Some(e.meta),
            Event::Page(e) => Some(e.meta),
            Event::Stream(e) => Some(e.meta),
            Event::ServerTrace(e) => Some(e.meta),
            Event::Breaker(_) | Event::Limit(_) => None,
        }
    }

    /// A copy that owns its labels and error, to keep or send elsewhere.
    pub fn to_owned(&self) -> OwnedEvent {
        let error = match self {
            Event::Request(e) => e.error.cloned(),
            Event::Attempt(e) => e.error.cloned(),
            Event::Retry(e) => Some(e.cause.clone()),
            Event::Stream(StreamEvent {
                end: StreamEnd::Failed(e),
                ..
            }) => Some((*e).clone()),
            _ => None,
        };
        let target = match self {
            Event::Breaker(b) => b.target.to_string(),
            Event::ServerTrace(t) => t.request.to_string(),
            _ => String::new(),
        };
        let data = match *self {
            Event::Request(e) => Data::Request {
                duration: e.duration,
                started: e.started,
                attempts: e.attempts,
                speculative: e.speculative,
                rows: e.rows,
                node: e.node,
                tracing_id: e.tracing_id,
            },
            Event::Attempt(e) => Data::Attempt {
                index: e.index,
                reason: e.reason,
                duration: e.duration,
                node: e.node,
                rows: e.rows,
            },
            Event::Retry(e) => Data::Retry {
                attempt: e.attempt,
                delay: e.delay,
            },
            Event::Throttle(e) => Data::Throttle {
                limiter: e.limiter,
                waited: e.waited,
                rejected: e.rejected,
                queue_depth: e.queue_depth,
            },
            Event::Shed(e) => Data::Shed {
                reason: e.reason,
                layer: e.layer,
            },
            Event::Breaker(e) => Data::Breaker {
                from: e.from,
                to: e.to,
            },
            Event::Limit(e) => Data::Limit(e),
            Event::Page(e) => Data::Page {
                page: e.page,
                rows: e.rows,
                duration: e.duration,
                node: e.node,
            },
            Event::Stream(e) => Data::Stream {
                pages: e.pages,
                rows: e.rows,
                duration: e.duration,
                end: e.end.as_str(),
            },
            Event::ServerTrace(e) => Data::ServerTrace(Box::new(OwnedServerTrace {
                session_id: e.session_id,
                coordinator: e.coordinator,
                started_at: e.started_at,
                duration: e.duration,
                consistency: e.consistency.map(str::to_string),
                steps: e.steps.to_vec(),
                truncated: e.truncated,
            })),
        };
        OwnedEvent {
            meta: self.meta().cloned(),
            error,
            target,
            data,
        }
    }
}

#[derive(Debug, Clone)]
enum Data {
    Request {
        duration: Duration,
        started: Option<Instant>,
        attempts: u32,
        speculative: u32,
        rows: usize,
        node: Option<SocketAddr>,
        tracing_id: Option<[u8; 16]>,
    },
    Attempt {
        index: u32,
        reason: AttemptReason,
        duration: Duration,
        node: Option<SocketAddr>,
        rows: usize,
    },
    Retry {
        attempt: u32,
        delay: Duration,
    },
    Throttle {
        limiter: &'static str,
        waited: Duration,
        rejected: bool,
        queue_depth: usize,
    },
    Shed {
        reason: ErrorKind,
        layer: &'static str,
    },
    Breaker {
        from: BreakerState,
        to: BreakerState,
    },
    Limit(LimitEvent),
    Page {
        page: u32,
        rows: usize,
        duration: Duration,
        node: Option<SocketAddr>,
    },
    Stream {
        pages: u32,
        rows: u64,
        duration: Duration,
        end: &'static str,
    },
    ServerTrace(Box<OwnedServerTrace>),
}

#[derive(Debug, Clone)]
struct OwnedServerTrace {
    session_id: [u8; 16],
    coordinator: Option<IpAddr>,
    started_at: SystemTime,
    duration: Duration,
    consistency: Option<String>,
    steps: Vec<ServerTraceStep>,
    truncated: bool,
}

/// An event that owns its data (made by [`Event::to_owned`]).
#[derive(Debug, Clone)]
pub struct OwnedEvent {
    meta: Option<RequestMeta>,
    error: Option<CqlError>,
    target: String,
    data: Data,
}

impl OwnedEvent {
    /// The event, borrowing from this copy.
    pub fn as_event(&self) -> Event<'_> {
        let meta = || self.meta.as_ref().expect("request events keep their meta");
        match &self.data {
            Data::Request {
                duration,
                started,
                attempts,
                speculative,
                rows,
                node,
                tracing_id,
            } => Event::Request(RequestEvent {
                meta: meta(),
                duration: *duration,
                started: *started,
                error: self.error.as_ref(),
                attempts: *attempts,
                speculative: *speculative,
                rows: *rows,
                node: *node,
                tracing_id: *tracing_id,
            }),
            Data::Attempt {
                index,
                reason,
                duration,
                node,
                rows,
            } => Event::Attempt(AttemptEvent {
                meta: meta(),
                index: *index,
                reason: *reason,
                duration: *duration,
                error: self.error.as_ref(),
                node: *node,
                rows: *rows,
            }),
            Data::Retry { attempt, delay } => Event::Retry(RetryEvent {
                meta: meta(),
                attempt: *attempt,
                delay: *delay,
                cause: self.error.as_ref().expect("retry events keep their cause"),
            }),
            Data::Throttle {
                limiter,
                waited,
                rejected,
                queue_depth,
            } => Event::Throttle(ThrottleEvent {
                meta: meta(),
                limiter,
                waited: *waited,
                rejected: *rejected,
                queue_depth: *queue_depth,
            }),
            Data::Shed { reason, layer } => Event::Shed(ShedEvent {
                meta: meta(),
                reason: *reason,
                layer,
            }),
            Data::Breaker { from, to } => Event::Breaker(BreakerEvent {
                target: &self.target,
                from: *from,
                to: *to,
            }),
            Data::Limit(l) => Event::Limit(*l),
            Data::Page {
                page,
                rows,
                duration,
                node,
            } => Event::Page(PageEvent {
                meta: meta(),
                page: *page,
                rows: *rows,
                duration: *duration,
                node: *node,
            }),
            Data::Stream {
                pages,
                rows,
                duration,
                end,
            } => Event::Stream(StreamEvent {
                meta: meta(),
                pages: *pages,
                rows: *rows,
                duration: *duration,
                end: match (*end, &self.error) {
                    ("failed", Some(e)) => StreamEnd::Failed(e),
                    ("dropped", _) => StreamEnd::Dropped,
                    _ => StreamEnd::Finished,
                },
            }),
            Data::ServerTrace(t) => Event::ServerTrace(ServerTraceEvent {
                meta: meta(),
                session_id: t.session_id,
                coordinator: t.coordinator,
                started_at: t.started_at,
                duration: t.duration,
                request: &self.target,
                consistency: t.consistency.as_deref(),
                steps: &t.steps,
                truncated: t.truncated,
            }),
        }
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn change(limit: usize, n: u32) -> LimitEvent {
        LimitEvent::new("adaptive", limit, 0).with_change(n)
    }

    /// Change numbers wrap: the change after `u32::MAX` is 1, and still
    /// later; an unnumbered event is taken as it comes.
    #[test]
    fn latest_limit_orders_changes_across_the_wrap() {
        let latest = LatestLimit::new();
        assert_eq!(latest.get(), None);
        latest.show(&change(7, u32::MAX), |_| {});
        latest.show(&change(8, 1), |_| {});
        latest.show(&change(6, u32::MAX - 1), |_| {});
        assert_eq!(latest.get(), Some(8));
        latest.show(&LimitEvent::new("other", 3, 0), |_| {});
        assert_eq!(latest.get(), Some(3));
        // a limit past u32::MAX is shown capped
        latest.show(&change(usize::MAX, 2), |_| {});
        assert_eq!(latest.get(), Some(u64::from(u32::MAX)));
    }

    /// Threads showing numbered events in whatever order they reach it
    /// leave the gauge at the last change's limit.
    #[test]
    fn concurrent_shows_leave_the_latest_limit() {
        let latest = Arc::new(LatestLimit::new());
        let gauge = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let (latest, gauge) = (latest.clone(), gauge.clone());
                std::thread::spawn(move || {
                    // each thread its own changes, in descending order
                    for i in (0..2_000u32).rev() {
                        let n = i * 4 + t + 1;
                        latest.show(&change(n as usize, n), |l| gauge.store(l, Ordering::SeqCst));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(latest.get(), Some(8_000));
        assert_eq!(gauge.load(Ordering::SeqCst), 8_000);
    }
}
