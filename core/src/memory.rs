//! A built-in collector that keeps everything in memory: latency
//! histograms per label set and counters, read through [`Snapshot`]s.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower_cql_core::{Collectors, CqlRequest, InMemoryCollector, event::{Event, RequestEvent}};
//!
//! let memory = Arc::new(InMemoryCollector::new());
//! let collectors = Collectors::with([memory.clone()]);
//! let req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").operation("get");
//! for us in [100, 200, 300] {
//!     let mut request = RequestEvent::new(req.meta(), Duration::from_micros(us), None);
//!     request.rows = 1;
//!     collectors.emit(Event::Request(request));
//! }
//! let snap = memory.snapshot();
//! let latency = snap.request_latency(Some("get"));
//! assert_eq!(latency.count(), 3);
//! let p50 = latency.quantile(0.5).unwrap() as f64; // nanoseconds
//! assert!((p50 - 200_000.0).abs() / 200_000.0 <= 0.02);
//! assert_eq!(snap.ok, 3);
//! ```
//!
//! Recording takes no lock: series are found in a [`Registry`] (a new
//! series copies the map, which happens once per label set), histograms and
//! counters are atomics. The number of series is bounded
//! ([`InMemoryCollector::with_max_series`]); label sets past the bound are
//! folded into an overflow series and counted: one for requests, and one
//! per attempt reason for attempts (the reason is kept, so attempts by
//! reason add up to every attempt).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::collector::Collector;
use crate::error::{CqlError, ErrorKind};
use crate::event::{
    AttemptEvent, AttemptReason, BreakerEvent, LatestLimit, LimitEvent, PageEvent, RequestEvent,
    RetryEvent, ShedEvent, StreamEvent, ThrottleEvent,
};
use crate::histogram::{Histogram, HistogramSnapshot};
use crate::registry::Registry;
use crate::request::{Label, OperationKind, RequestMeta};

/// The labels of one series. Bounded by construction: names the caller
/// gave, statement kinds, error kinds — never statement text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesLabels {
    /// Operation name, if given.
    pub operation: Option<Label>,
    /// Statement kind.
    pub kind: OperationKind,
    /// Keyspace.
    pub keyspace: Option<Label>,
    /// Table.
    pub table: Option<Label>,
    /// `None` for success, else the error kind.
    pub error: Option<ErrorKind>,
    /// For attempts: why the attempt was made.
    pub reason: Option<AttemptReason>,
    /// True for an overflow series, which collects label sets past the
    /// bound (with only their attempt reason kept).
    pub overflow: bool,
}

impl SeriesLabels {
    fn new(
        meta: &RequestMeta,
        error: Option<ErrorKind>,
        reason: Option<AttemptReason>,
    ) -> SeriesLabels {
        SeriesLabels {
            operation: meta.operation().cloned(),
            kind: meta.kind(),
            keyspace: meta.keyspace().cloned(),
            table: meta.table().cloned(),
            error,
            reason,
            overflow: false,
        }
    }

    /// The labels of the overflow series of attempts made for `reason`
    /// (`None`: of requests).
    fn overflow(reason: Option<AttemptReason>) -> SeriesLabels {
        SeriesLabels {
            operation: None,
            kind: OperationKind::Other,
            keyspace: None,
            table: None,
            error: None,
            reason,
            overflow: true,
        }
    }

    /// `"ok"` or the error kind's name; `"overflow"` for an
    /// overflow series (`overflow` true), which holds the successes and
    /// failures of the label sets past the bound alike (the collector's
    /// error counters still count its failures by kind).
    pub fn outcome(&self) -> &'static str {
        if self.overflow {
            return "overflow";
        }
        self.error.map_or("ok", ErrorKind::as_str)
    }
}

/// One series: its histogram and the request counters kept beside it,
/// aligned to cache lines of its own, so that threads recording different
/// series write to no common cache line (the collector-wide `ok` and
/// `rows` counters these replace were written by every event).
#[repr(align(128))]
struct Series {
    histogram: Histogram,
    /// Requests that succeeded (request series only).
    ok: AtomicU64,
    /// Rows returned (request series only).
    rows: AtomicU64,
}

impl Series {
    fn new() -> Series {
        Series {
            histogram: Histogram::new(),
            ok: AtomicU64::new(0),
            rows: AtomicU64::new(0),
        }
    }

    #[inline]
    fn record(&self, nanos: u64, ok: bool, rows: u64) {
        self.histogram.record(nanos);
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
        }
        if rows > 0 {
            self.rows.fetch_add(rows, Ordering::Relaxed);
        }
    }
}

/// A series' key in a collector's map: its labels, hashed by the
/// request's [`labels_hash`](RequestMeta::labels_hash) (computed once per
/// statement) and the small fields, compared by the labels themselves. An
/// event finds its series through a [`SeriesView`] of its request, with
/// [`Registry::get`](crate::registry::Registry::get) or a snapshot's: no
/// label cloned, no string hashed. The in-memory collector, the
/// OpenTelemetry collector and the `metrics` bridge all key their series
/// so.
///
/// ```
/// use tower_cql_core::memory::{SeriesKey, SeriesView};
/// use tower_cql_core::registry::Registry;
/// use tower_cql_core::Statement;
///
/// let handles: Registry<SeriesKey, u32> = Registry::new();
/// let req = Statement::new("SELECT v FROM ks.t WHERE k = ?").request();
/// let view = SeriesView::new(req.meta(), None, None);
/// assert_eq!(handles.get(&view), None);
/// handles.get_or_insert_with(view.to_key(), || 7);
/// assert_eq!(handles.snapshot().get(&view), Some(&7));
/// assert_eq!(view.to_key().labels().table.as_ref().map(|t| t.as_str()), Some("t"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesKey {
    labels_hash: u64,
    labels: SeriesLabels,
}

impl SeriesKey {
    /// The series' labels.
    pub fn labels(&self) -> &SeriesLabels {
        &self.labels
    }
}

impl std::hash::Hash for SeriesKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let l = &self.labels;
        (self.labels_hash, l.kind, l.error, l.reason, l.overflow).hash(h);
    }
}

/// The key of the series of an event, borrowed from its request: see
/// [`SeriesKey`].
#[derive(Debug, Clone, Copy)]
pub struct SeriesView<'a> {
    meta: &'a RequestMeta,
    error: Option<ErrorKind>,
    reason: Option<AttemptReason>,
}

impl<'a> SeriesView<'a> {
    /// The series of an event of `meta`'s request: `error` for a failure,
    /// `reason` for an attempt.
    pub fn new(
        meta: &'a RequestMeta,
        error: Option<ErrorKind>,
        reason: Option<AttemptReason>,
    ) -> SeriesView<'a> {
        SeriesView {
            meta,
            error,
            reason,
        }
    }

    /// The owned key, to insert a new series (its labels cloned).
    pub fn to_key(&self) -> SeriesKey {
        SeriesKey {
            labels_hash: self.meta.labels_hash(),
            labels: SeriesLabels::new(self.meta, self.error, self.reason),
        }
    }
}

impl std::hash::Hash for SeriesView<'_> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        // as SeriesKey's (a view is never the overflow series)
        let m = self.meta;
        (m.labels_hash(), m.kind(), self.error, self.reason, false).hash(h);
    }
}

impl crate::registry::Equivalent<SeriesKey> for SeriesView<'_> {
    fn equivalent(&self, key: &SeriesKey) -> bool {
        let (l, m) = (&key.labels, self.meta);
        !l.overflow
            && l.kind == m.kind()
            && l.error == self.error
            && l.reason == self.reason
            && l.operation.as_ref() == m.operation()
            && l.keyspace.as_ref() == m.keyspace()
            && l.table.as_ref() == m.table()
    }
}

/// The reasons an overflow series is kept for, in the order of
/// [`overflow_slot`]: none (requests), then each attempt reason.
const OVERFLOW_REASONS: [Option<AttemptReason>; 4] = [
    None,
    Some(AttemptReason::Initial),
    Some(AttemptReason::Retry),
    Some(AttemptReason::Speculative),
];

/// The index of `reason`'s overflow series in [`OVERFLOW_REASONS`].
fn overflow_slot(reason: Option<AttemptReason>) -> usize {
    match reason {
        None => 0,
        Some(AttemptReason::Initial) => 1,
        Some(AttemptReason::Retry) => 2,
        Some(AttemptReason::Speculative) => 3,
    }
}

struct SeriesMap {
    map: Registry<SeriesKey, Arc<Series>>,
    max: usize,
    /// The overflow series, one per reason: the free labels of a series
    /// past the bound are folded, its reason (one of three) is kept, so
    /// that attempts by reason add up to every attempt. Made on first use.
    overflow: [std::sync::OnceLock<Series>; OVERFLOW_REASONS.len()],
    overflowed: AtomicU64,
}

impl SeriesMap {
    fn new(max: usize) -> SeriesMap {
        SeriesMap {
            map: Registry::new(),
            max,
            overflow: Default::default(),
            overflowed: AtomicU64::new(0),
        }
    }

    /// The overflow series made so far, with their reasons.
    fn overflow_series(&self) -> impl Iterator<Item = (Option<AttemptReason>, &Series)> {
        OVERFLOW_REASONS
            .into_iter()
            .zip(&self.overflow)
            .filter_map(|(reason, s)| Some((reason, s.get()?)))
    }

    /// The series of `view`, made if it is new and the map has room for
    /// it (`None` when it has not: its events go to the overflow series).
    fn resolve(&self, view: SeriesView<'_>) -> Option<Arc<Series>> {
        self.map
            .get_or_insert_bounded(view.to_key(), self.max, || Arc::new(Series::new()))
    }

    /// Records `nanos` in the series of `labels`; `ok` and `rows` are
    /// counted for request series (attempts pass `false` and 0).
    fn record(&self, view: SeriesView<'_>, nanos: u64, ok: bool, rows: u64) {
        // through a snapshot: no reference count touched on the hot path
        if let Some(h) = self.map.snapshot().get(&view) {
            h.record(nanos, ok, rows);
            return;
        }
        match self.resolve(view) {
            Some(h) => h.record(nanos, ok, rows),
            None => {
                self.overflowed.fetch_add(1, Ordering::Relaxed);
                self.overflow[overflow_slot(view.reason)]
                    .get_or_init(Series::new)
                    .record(nanos, ok, rows);
            }
        }
    }

    /// The sum of a counter over every series, the overflow ones included.
    fn sum(&self, counter: impl Fn(&Series) -> &AtomicU64) -> u64 {
        let map = self.map.snapshot();
        let load = |s: &Series| counter(s).load(Ordering::Relaxed);
        map.values().map(|s| load(s)).sum::<u64>()
            + self.overflow_series().map(|(_, s)| load(s)).sum::<u64>()
    }

    fn snapshot(&self) -> Vec<SeriesSnapshot> {
        let map = self.map.snapshot();
        let mut out: Vec<SeriesSnapshot> = map
            .iter()
            .map(|(key, h)| SeriesSnapshot {
                labels: key.labels.clone(),
                histogram: h.histogram.snapshot(),
            })
            .collect();
        for (reason, series) in self.overflow_series() {
            let histogram = series.histogram.snapshot();
            if histogram.count() > 0 {
                out.push(SeriesSnapshot {
                    labels: SeriesLabels::overflow(reason),
                    histogram,
                });
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }

    fn memory_bytes(&self) -> usize {
        let n = self.map.len() + self.overflow_series().count();
        n * (Histogram::MEMORY_BYTES + std::mem::size_of::<SeriesLabels>() + 64)
    }
}

const KINDS: usize = ErrorKind::ALL.len();

fn kind_counters() -> [AtomicU64; KINDS] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

fn kind_map(counters: &[AtomicU64; KINDS]) -> BTreeMap<ErrorKind, u64> {
    ErrorKind::ALL
        .iter()
        .filter_map(|k| {
            let n = counters[k.index()].load(Ordering::Relaxed);
            (n > 0).then_some((*k, n))
        })
        .collect()
}

/// The in-memory collector; see the module docs.
pub struct InMemoryCollector {
    requests: SeriesMap,
    attempts: SeriesMap,
    errors: [AtomicU64; KINDS],
    attempt_errors: [AtomicU64; KINDS],
    retries: [AtomicU64; KINDS],
    throttled: AtomicU64,
    throttle_rejected: AtomicU64,
    throttle_wait: Histogram,
    shed: [AtomicU64; KINDS],
    pages: AtomicU64,
    page_rows: AtomicU64,
    streams_finished: AtomicU64,
    streams_failed: AtomicU64,
    streams_dropped: AtomicU64,
    breaker_transitions: AtomicU64,
    /// Openings less ends, wrapping (see `on_breaker`).
    breakers_open: AtomicU64,
    limit: LatestLimit,
    /// This collector's id for the series it keeps in statements.
    id: std::num::NonZeroU64,
}

/// A collector's handles to its series for one statement's own labels,
/// kept in the statement (see
/// [`Statement::collector_memo`](crate::Statement::collector_memo)): the
/// handle of a successful request's series and of a successful first
/// attempt's, each found once, on the first such event (so no series is
/// made before an event is recorded in it). The other events (failures,
/// retries and other attempts, requests whose labels were replaced) find
/// their series as before, through a [`SeriesView`]. The in-memory
/// collector, the OpenTelemetry collector and the `metrics` bridge keep
/// their handles so; per statement, the first collector to record it
/// keeps them.
///
/// ```
/// use tower_cql_core::event::RequestEvent;
/// use tower_cql_core::memory::KeptSeries;
/// use tower_cql_core::Statement;
///
/// let collector = Statement::new_collector_id();
/// let get = Statement::new("SELECT v FROM ks.t WHERE k = ?").operation("get");
/// let req = get.request();
/// let event = RequestEvent::new(req.meta(), std::time::Duration::from_millis(1), None);
/// let mut lookups = 0;
/// for _ in 0..3 {
///     let handle = KeptSeries::for_request(collector, &event, |_view| {
///         lookups += 1;
///         Some("the series of get")
///     });
///     assert_eq!(handle, Some(&"the series of get"));
/// }
/// assert_eq!(lookups, 1);
/// ```
pub struct KeptSeries<T> {
    request: std::sync::OnceLock<Option<T>>,
    attempt: std::sync::OnceLock<Option<T>>,
}

impl<T> KeptSeries<T> {
    fn new() -> KeptSeries<T> {
        KeptSeries {
            request: std::sync::OnceLock::new(),
            attempt: std::sync::OnceLock::new(),
        }
    }
}

impl<T> fmt::Debug for KeptSeries<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeptSeries")
            .field("request", &self.request.get().map(Option::is_some))
            .field("attempt", &self.attempt.get().map(Option::is_some))
            .finish()
    }
}

impl<T: Send + Sync + 'static> KeptSeries<T> {
    /// The handle collector `collector` keeps for the series of request
    /// event `e`, found with `find` (given the event's series view) on
    /// the first such event; `None` when `e` is not an event whose series
    /// is kept (a failure, or replaced labels), when another collector
    /// keeps handles in its statement, or when `find` gave `None` the
    /// first time (e.g. a full map: its events go to an overflow series).
    #[inline]
    pub fn for_request<'e>(
        collector: std::num::NonZeroU64,
        e: &RequestEvent<'e>,
        find: impl FnOnce(SeriesView<'e>) -> Option<T>,
    ) -> Option<&'e T> {
        if e.error.is_some() {
            return None;
        }
        KeptSeries::kept(collector, e.meta)?
            .request
            .get_or_init(|| find(SeriesView::new(e.meta, None, None)))
            .as_ref()
    }

    /// The same for attempt event `e`: only a successful first attempt's
    /// series is kept.
    #[inline]
    pub fn for_attempt<'e>(
        collector: std::num::NonZeroU64,
        e: &AttemptEvent<'e>,
        find: impl FnOnce(SeriesView<'e>) -> Option<T>,
    ) -> Option<&'e T> {
        if e.error.is_some() || e.reason != AttemptReason::Initial {
            return None;
        }
        KeptSeries::kept(collector, e.meta)?
            .attempt
            .get_or_init(|| find(SeriesView::new(e.meta, None, Some(AttemptReason::Initial))))
            .as_ref()
    }

    #[inline]
    fn kept(collector: std::num::NonZeroU64, meta: &RequestMeta) -> Option<&KeptSeries<T>> {
        if !meta.has_statement_labels() {
            return None;
        }
        meta.statement().collector_memo(collector, KeptSeries::new)
    }
}

impl fmt::Debug for InMemoryCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryCollector")
            .field("request_series", &self.requests.map.len())
            .field("attempt_series", &self.attempts.map.len())
            .field("ok", &self.requests.sum(|s| &s.ok))
            .finish()
    }
}

impl Default for InMemoryCollector {
    fn default() -> InMemoryCollector {
        InMemoryCollector::new()
    }
}

/// A histogram with its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSnapshot {
    /// The series' labels.
    pub labels: SeriesLabels,
    /// Latencies in nanoseconds.
    pub histogram: HistogramSnapshot,
}

/// Everything the in-memory collector saw, at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// End-to-end request latency series.
    pub requests: Vec<SeriesSnapshot>,
    /// Per-attempt latency series.
    pub attempts: Vec<SeriesSnapshot>,
    /// Requests that succeeded.
    pub ok: u64,
    /// Requests that failed, by error kind.
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Attempts that failed, by error kind.
    pub attempt_errors: BTreeMap<ErrorKind, u64>,
    /// Retries scheduled, by the error that caused them.
    pub retries: BTreeMap<ErrorKind, u64>,
    /// Throttle events: requests that waited for a limiter, or that a
    /// limiter refused, and extra attempts (retries, speculative attempts)
    /// the retry budget refused.
    pub throttled: u64,
    /// Those that were refusals: requests a limiter refused, and extra
    /// attempts the retry budget refused.
    pub throttle_rejected: u64,
    /// Time spent waiting for limiters (nanoseconds).
    pub throttle_wait: HistogramSnapshot,
    /// Requests refused untried, by reason.
    pub shed: BTreeMap<ErrorKind, u64>,
    /// Pages fetched by paged reads.
    pub pages: u64,
    /// Rows in those pages.
    pub page_rows: u64,
    /// Paged reads that read every page.
    pub streams_finished: u64,
    /// Paged reads that failed.
    pub streams_failed: u64,
    /// Paged reads dropped early by their consumer.
    pub streams_dropped: u64,
    /// Circuit breaker state changes.
    pub breaker_transitions: u64,
    /// Breakers open now.
    pub breakers_open: u64,
    /// The last limit an adaptive limiter reported (0: none).
    pub current_limit: u64,
    /// Rows returned by requests.
    pub rows: u64,
    /// Events folded into the overflow series because of the series bound.
    pub overflowed: u64,
}

impl Snapshot {
    fn merged(series: &[SeriesSnapshot], operation: Option<&str>) -> HistogramSnapshot {
        let mut out = HistogramSnapshot::default();
        for s in series {
            if operation.is_none_or(|op| {
                s.labels
                    .operation
                    .as_ref()
                    .is_some_and(|l| l.as_str() == op)
            }) {
                out.merge(&s.histogram);
            }
        }
        out
    }

    /// Request latency over every series of `operation` (all when `None`).
    pub fn request_latency(&self, operation: Option<&str>) -> HistogramSnapshot {
        Snapshot::merged(&self.requests, operation)
    }

    /// Attempt latency over every series of `operation` (all when `None`).
    pub fn attempt_latency(&self, operation: Option<&str>) -> HistogramSnapshot {
        Snapshot::merged(&self.attempts, operation)
    }

    /// Requests completed, ok or not.
    pub fn requests_total(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }

    /// Retries scheduled, in all.
    pub fn retries_total(&self) -> u64 {
        self.retries.values().sum()
    }

    /// Attempts by reason.
    pub fn attempts_by_reason(&self, reason: AttemptReason) -> u64 {
        self.attempts
            .iter()
            .filter(|s| s.labels.reason == Some(reason))
            .map(|s| s.histogram.count())
            .sum()
    }
}

impl InMemoryCollector {
    /// At most 1,000 series each for requests and attempts.
    pub fn new() -> InMemoryCollector {
        InMemoryCollector::with_max_series(1000)
    }

    /// At most `max` series each for requests and attempts.
    pub fn with_max_series(max: usize) -> InMemoryCollector {
        InMemoryCollector {
            requests: SeriesMap::new(max),
            attempts: SeriesMap::new(max),
            errors: kind_counters(),
            attempt_errors: kind_counters(),
            retries: kind_counters(),
            throttled: AtomicU64::new(0),
            throttle_rejected: AtomicU64::new(0),
            throttle_wait: Histogram::new(),
            shed: kind_counters(),
            pages: AtomicU64::new(0),
            page_rows: AtomicU64::new(0),
            streams_finished: AtomicU64::new(0),
            streams_failed: AtomicU64::new(0),
            streams_dropped: AtomicU64::new(0),
            breaker_transitions: AtomicU64::new(0),
            breakers_open: AtomicU64::new(0),
            limit: LatestLimit::new(),
            id: crate::Statement::new_collector_id(),
        }
    }

    /// Approximate memory held by the histograms.
    pub fn memory_bytes(&self) -> usize {
        self.requests.memory_bytes() + self.attempts.memory_bytes()
    }

    /// A consistent-enough picture of everything recorded so far (each
    /// value is read atomically; events recorded meanwhile may or may not
    /// be included).
    pub fn snapshot(&self) -> Snapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            requests: self.requests.snapshot(),
            attempts: self.attempts.snapshot(),
            ok: self.requests.sum(|s| &s.ok),
            errors: kind_map(&self.errors),
            attempt_errors: kind_map(&self.attempt_errors),
            retries: kind_map(&self.retries),
            throttled: l(&self.throttled),
            throttle_rejected: l(&self.throttle_rejected),
            throttle_wait: self.throttle_wait.snapshot(),
            shed: kind_map(&self.shed),
            pages: l(&self.pages),
            page_rows: l(&self.page_rows),
            streams_finished: l(&self.streams_finished),
            streams_failed: l(&self.streams_failed),
            streams_dropped: l(&self.streams_dropped),
            breaker_transitions: l(&self.breaker_transitions),
            // (below zero for a moment while an end is counted before
            // its opening)
            breakers_open: (l(&self.breakers_open) as i64).max(0) as u64,
            current_limit: self.limit.get().unwrap_or(0),
            rows: self.requests.sum(|s| &s.rows),
            overflowed: l(&self.requests.overflowed) + l(&self.attempts.overflowed),
        }
    }
}

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Collector for InMemoryCollector {
    fn on_request(&self, e: &RequestEvent<'_>) {
        // a success with the statement's own labels: the series kept in
        // the statement, no lookup
        if let Some(series) =
            KeptSeries::for_request(self.id, e, |view| self.requests.resolve(view))
        {
            series.record(nanos(e.duration), true, e.rows as u64);
            return;
        }
        self.requests.record(
            SeriesView {
                meta: e.meta,
                error: e.error.map(CqlError::kind),
                reason: None,
            },
            nanos(e.duration),
            e.error.is_none(),
            e.rows as u64,
        );
        if let Some(err) = e.error {
            self.errors[err.kind().index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_attempt(&self, e: &AttemptEvent<'_>) {
        // a first attempt that succeeded, with the statement's own labels:
        // the series kept in the statement, no lookup
        if let Some(series) =
            KeptSeries::for_attempt(self.id, e, |view| self.attempts.resolve(view))
        {
            series.record(nanos(e.duration), false, 0);
            return;
        }
        self.attempts.record(
            SeriesView {
                meta: e.meta,
                error: e.error.map(CqlError::kind),
                reason: Some(e.reason),
            },
            nanos(e.duration),
            false,
            0,
        );
        if let Some(err) = e.error {
            self.attempt_errors[err.kind().index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_retry(&self, e: &RetryEvent<'_>) {
        self.retries[e.cause.kind().index()].fetch_add(1, Ordering::Relaxed);
    }

    fn on_throttle(&self, e: &ThrottleEvent<'_>) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        if e.rejected {
            self.throttle_rejected.fetch_add(1, Ordering::Relaxed);
        }
        self.throttle_wait.record(nanos(e.waited));
    }

    fn on_shed(&self, e: &ShedEvent<'_>) {
        self.shed[e.reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn on_breaker(&self, e: &BreakerEvent<'_>) {
        use crate::event::BreakerState::Open;
        self.breaker_transitions.fetch_add(1, Ordering::Relaxed);
        // wrapping, not saturating: the two events of an opening and its
        // end can arrive in either order (from two threads), and only
        // adding both ways keeps the sum right whatever the order
        if e.to == Open && e.from != Open {
            self.breakers_open.fetch_add(1, Ordering::Relaxed);
        } else if e.from == Open && e.to != Open {
            self.breakers_open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn on_limit(&self, e: &LimitEvent) {
        self.limit.show(e, |_| {});
    }

    fn on_page(&self, e: &PageEvent<'_>) {
        self.pages.fetch_add(1, Ordering::Relaxed);
        self.page_rows.fetch_add(e.rows as u64, Ordering::Relaxed);
    }

    fn on_stream(&self, e: &StreamEvent<'_>) {
        use crate::event::StreamEnd;
        let c = match e.end {
            StreamEnd::Finished => &self.streams_finished,
            StreamEnd::Failed(_) => &self.streams_failed,
            StreamEnd::Dropped => &self.streams_dropped,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn name(&self) -> &str {
        "in_memory"
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;
    use crate::request::CqlRequest;
    use std::time::Duration;

    /// A label is its text: "get" given as a `&'static str` and "get"
    /// made at run time (a `String`, or read from the statement) are one
    /// series, not two with the same labels (which the Prometheus
    /// exposition would refuse as duplicates).
    #[test]
    fn a_label_is_its_text_however_it_was_made() {
        let m = InMemoryCollector::new();
        let by_static = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").operation("get");
        let by_string =
            CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").operation(String::from("get"));
        m.on_request(&req_event(by_static.meta(), None, 100));
        m.on_request(&req_event(by_string.meta(), None, 200));
        let snap = m.snapshot();
        assert_eq!(snap.requests.len(), 1, "{:?}", snap.requests);
        assert_eq!(snap.requests[0].histogram.count(), 2);
    }

    /// Series are found by the labels' hash computed when they are set:
    /// labels given on the statement, replaced on the request, or set on
    /// its meta all reach the series of their text. (A hash left stale by a
    /// setter would put "put" under the hash of "get": two series.)
    #[test]
    fn a_series_is_found_however_its_labels_were_set() {
        let m = InMemoryCollector::new();
        let text = "SELECT v FROM ks.t WHERE k = ?";
        let on_statement = crate::Statement::new(text).operation("put").request();
        let replaced = crate::Statement::new(text)
            .operation("get")
            .request()
            .operation(String::from("put"));
        let mut on_meta = crate::Statement::new(text).operation("get").request();
        on_meta.meta_mut().set_labels(
            Some(Label::from("put")),
            Some(Label::from("ks")),
            Some(Label::from("t")),
        );
        for r in [&on_statement, &replaced, &on_meta] {
            m.on_request(&req_event(r.meta(), None, 100));
        }
        let snap = m.snapshot();
        assert_eq!(snap.requests.len(), 1, "{:?}", snap.requests);
        assert_eq!(snap.request_latency(Some("put")).count(), 3);
        // and a changed label is another series
        let mut other = on_statement.clone();
        other.meta_mut().set_table(Some(Label::from("u")));
        m.on_request(&req_event(other.meta(), None, 100));
        assert_eq!(m.snapshot().requests.len(), 2);
    }

    /// The first collector to record a statement keeps its series in the
    /// statement and finds them there (no lookup); another finds them by
    /// lookup. Both record the same: every outcome, reason, relabelled
    /// request and a full map's overflow in the same series, and no series
    /// made that no event was recorded in.
    #[test]
    fn series_kept_in_the_statement_record_what_a_lookup_does() {
        let get = crate::Statement::new("SELECT v FROM ks.t WHERE k = ?").operation("get");
        let put = crate::Statement::new("INSERT INTO ks.t (k, v) VALUES (?, ?)").operation("put");
        let scan = crate::Statement::new("SELECT v FROM ks.u").operation("scan");
        let first = InMemoryCollector::with_max_series(3);
        let second = InMemoryCollector::with_max_series(3);
        let timeout = CqlError::new(ErrorKind::ReadTimeout, "slow");
        fn attempt<'a>(
            meta: &'a RequestMeta,
            reason: AttemptReason,
            error: Option<&'a CqlError>,
            us: u64,
        ) -> AttemptEvent<'a> {
            AttemptEvent {
                meta,
                index: 0,
                reason,
                duration: Duration::from_micros(us),
                error,
                node: None,
                rows: 0,
            }
        }
        for round in 0..3u64 {
            for (i, statement) in [&get, &put, &scan].into_iter().enumerate() {
                let req = statement.request();
                let mut relabelled = statement.request();
                relabelled
                    .meta_mut()
                    .set_labels(Some(Label::from("other")), None, None);
                let us = 10 * round + i as u64 + 1;
                for m in [&first, &second] {
                    // attempts first: no request series exists yet when the
                    // first attempt is kept
                    m.on_attempt(&attempt(req.meta(), AttemptReason::Initial, None, us));
                    m.on_attempt(&attempt(req.meta(), AttemptReason::Retry, None, us));
                    m.on_attempt(&attempt(
                        req.meta(),
                        AttemptReason::Initial,
                        Some(&timeout),
                        us,
                    ));
                    m.on_request(&req_event(req.meta(), None, us));
                    m.on_request(&req_event(req.meta(), Some(&timeout), us));
                    m.on_request(&req_event(relabelled.meta(), None, us));
                }
            }
        }
        assert!(
            get.collector_memo(first.id, KeptSeries::<Arc<Series>>::new)
                .is_some()
        );
        assert!(
            get.collector_memo(second.id, KeptSeries::<Arc<Series>>::new)
                .is_none()
        );
        let (a, b) = (first.snapshot(), second.snapshot());
        assert_eq!(a, b);
        // three series each, the rest in the overflow series
        assert_eq!(a.requests.len(), 4, "{:#?}", a.requests);
        assert!(a.requests.iter().all(|s| s.histogram.count() > 0));
        assert!(a.attempts.iter().all(|s| s.histogram.count() > 0));
        assert_eq!(a.ok, 2 * 9);
        assert_eq!(
            a.requests.iter().map(|s| s.histogram.count()).sum::<u64>(),
            3 * 9
        );
    }

    fn req_event<'a>(
        meta: &'a RequestMeta,
        err: Option<&'a CqlError>,
        us: u64,
    ) -> RequestEvent<'a> {
        RequestEvent {
            meta,
            duration: Duration::from_micros(us),
            started: None,
            error: err,
            attempts: 1,
            speculative: 0,
            rows: 2,
            node: None,
            tracing_id: None,
        }
    }

    #[test]
    fn series_per_label_set_and_counters_by_kind() {
        let m = InMemoryCollector::new();
        let get = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").operation("get");
        let put = CqlRequest::query("INSERT INTO ks.t (k, v) VALUES (?, ?)").operation("put");
        let timeout = CqlError::new(ErrorKind::WriteTimeout, "slow");
        for i in 1..=100 {
            m.on_request(&req_event(get.meta(), None, i));
        }
        m.on_request(&req_event(put.meta(), Some(&timeout), 5000));
        let s = m.snapshot();
        assert_eq!(s.ok, 100);
        assert_eq!(s.errors.get(&ErrorKind::WriteTimeout), Some(&1));
        assert_eq!(s.requests.len(), 2);
        let lat = s.request_latency(Some("get"));
        assert_eq!(lat.count(), 100);
        let p99 = lat.quantile(0.99).unwrap() as f64;
        assert!((p99 - 99_000.0).abs() / 99_000.0 <= 0.02, "{p99}");
        assert_eq!(s.rows, 202);
        let put_series = s
            .requests
            .iter()
            .find(|x| x.labels.outcome() == "write_timeout")
            .unwrap();
        assert_eq!(put_series.labels.table.as_ref().unwrap().as_str(), "t");
        assert_eq!(put_series.labels.kind, OperationKind::Insert);
    }

    #[test]
    fn series_past_the_bound_fold_into_overflow() {
        let m = InMemoryCollector::with_max_series(3);
        for i in 0..10 {
            let r = CqlRequest::query("SELECT v FROM t").operation(format!("op{i}"));
            m.on_request(&req_event(r.meta(), None, 10));
        }
        let s = m.snapshot();
        assert_eq!(s.requests.len(), 4, "3 series + overflow");
        assert_eq!(s.overflowed, 7);
        assert!(
            s.requests
                .iter()
                .any(|x| x.labels.overflow && x.histogram.count() == 7)
        );
        assert_eq!(s.request_latency(None).count(), 10, "nothing lost");
    }

    /// A breaker's opening and its leaving the open state, emitted by two
    /// threads, can arrive in either order: either way no breaker is
    /// open after both.
    #[test]
    fn breakers_open_counts_transitions_in_any_order() {
        use crate::event::{BreakerEvent, BreakerState::*};
        let m = InMemoryCollector::new();
        // the half-open probe's event first, then the opening's
        m.on_breaker(&BreakerEvent::new("n1", Open, HalfOpen));
        m.on_breaker(&BreakerEvent::new("n1", Closed, Open));
        assert_eq!(m.snapshot().breakers_open, 0);
        assert_eq!(m.snapshot().breaker_transitions, 2);
        m.on_breaker(&BreakerEvent::new("n2", Closed, Open));
        assert_eq!(m.snapshot().breakers_open, 1);
    }

    /// The overflow series holds successes and failures alike: its
    /// outcome says so, not "ok".
    #[test]
    fn the_overflow_series_outcome_is_not_ok() {
        let m = InMemoryCollector::with_max_series(1);
        for i in 0..3 {
            let r = CqlRequest::query("SELECT v FROM t").operation(format!("op{i}"));
            let e = CqlError::new(ErrorKind::ReadTimeout, "read timeout");
            m.on_request(&req_event(r.meta(), Some(&e), 10));
        }
        let s = m.snapshot();
        let overflow = s.requests.iter().find(|x| x.labels.overflow).unwrap();
        assert_eq!(overflow.histogram.count(), 2);
        assert_eq!(s.errors.get(&ErrorKind::ReadTimeout), Some(&3));
        assert_eq!(overflow.labels.outcome(), "overflow");
    }

    /// Attempts folded into overflow keep their reason: the attempts of
    /// each reason add up to every attempt, past the bound too.
    #[test]
    fn attempts_past_the_bound_are_counted_by_their_reason() {
        let m = InMemoryCollector::with_max_series(1);
        let mut made = BTreeMap::new();
        for i in 0..4 {
            let r = CqlRequest::query("SELECT v FROM t").operation(format!("op{i}"));
            for (reason, n) in [
                (AttemptReason::Initial, 1),
                (AttemptReason::Retry, 2),
                (AttemptReason::Speculative, 3),
            ] {
                for _ in 0..n {
                    m.on_attempt(&AttemptEvent::new(
                        r.meta(),
                        0,
                        reason,
                        Duration::from_micros(10),
                        None,
                    ));
                    *made.entry(reason).or_insert(0u64) += 1;
                }
            }
        }
        let s = m.snapshot();
        assert!(s.overflowed > 0);
        let by_reason: BTreeMap<_, _> =
            made.keys().map(|&r| (r, s.attempts_by_reason(r))).collect();
        assert_eq!(by_reason, made, "attempts by reason; {:#?}", s.attempts);
        assert_eq!(s.attempt_latency(None).count(), 24);
    }

    #[test]
    fn concurrent_recording_loses_nothing() {
        let m = Arc::new(InMemoryCollector::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    let r = CqlRequest::query("SELECT v FROM t").operation(if t % 2 == 0 {
                        "a"
                    } else {
                        "b"
                    });
                    for i in 0..50_000u64 {
                        m.on_request(&req_event(r.meta(), None, i % 1000 + 1));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = m.snapshot();
        assert_eq!(s.ok, 200_000);
        assert_eq!(s.request_latency(None).count(), 200_000);
        assert_eq!(s.request_latency(Some("a")).count(), 100_000);
    }
}
