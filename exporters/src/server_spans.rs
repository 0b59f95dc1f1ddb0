//! Server traces as OpenTelemetry spans: a request's
//! [`ServerTraceEvent`] becomes one child span of its client span per
//! node that worked on it (the coordinator, each replica), with the
//! node's steps as span events.
//!
//! ```
//! use std::sync::Arc;
//! use opentelemetry::trace::TracerProvider as _;
//! use opentelemetry_sdk::trace::SdkTracerProvider;
//! use tower_cql_core::Collectors;
//! use tower_cql_exporters::spans::SpanCollector;
//!
//! // SpanCollector parents a request's server spans itself: turn server
//! // tracing on in the stack (StackBuilder::server_trace) and that is all.
//! let provider = SdkTracerProvider::builder().build();
//! let collectors = Collectors::with([Arc::new(SpanCollector::new(provider.tracer("tower-cql")))]);
//! # let _ = collectors;
//! ```
//!
//! With the stack's `tracing` spans exported by `tracing-opentelemetry`
//! instead, add `OtlpExporter::server_trace_collector()` (feature `otlp`)
//! to the collector set: it remembers the request span's OpenTelemetry
//! context when the request ends and parents the server spans on it.
//!
//! # The spans
//! - name `cql.server.coordinator` or `cql.server.replica`, kind server;
//! - `server.address` and `network.peer.address`: the node that wrote the
//!   steps; `db.system.name = cassandra`; `db.cassandra.trace_id`: the
//!   tracing session id; on the coordinator's, `db.cassandra.consistency_level`
//!   and `cql.server.request` (`Execute CQL3 prepared query`), and
//!   `cql.server.trace_truncated = true` when the trace had more steps
//!   than the fetcher keeps (`max_events_per_trace`: the spans show the
//!   first that many);
//! - start and end: the coordinator's from the session's `started_at`
//!   plus its steps' `source_elapsed` (and the session's `duration`); a
//!   replica's from the time in its first step's `event_id` less that
//!   step's `source_elapsed` (its own clock, so skew between nodes shows),
//!   plus its steps' `source_elapsed`;
//! - one span event per step: the sanitised activity text, at its time,
//!   with `thread` and `source_elapsed_us`.
//!
//! A trace that arrives after its request's context was pushed out of the
//! collector's slots (more than 8 newer traced requests in its slot's set
//! first) makes no spans, and counts as the collector's failure
//! (`Collector::failures`, and so `Collectors::failures`).

use std::borrow::Cow;
use std::sync::Arc;

use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;

use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanKind, TraceContextExt as _, Tracer,
};
use opentelemetry::{Context, KeyValue};
use tower_cql_core::event::ServerTraceEvent;
use tower_cql_core::server_trace::session_id_string;

/// Slots for traced requests awaiting their server trace, in sets of
/// [`WAYS`]: a request's span context is kept in a free slot of the set its
/// tracing id hashes to, or replaces the set's oldest (whose trace then
/// makes no spans: a trace that was never fetched, over the fetch cap or
/// failed, unless more than [`WAYS`] traced requests of one set await
/// their traces at once). The id of a context pushed out is kept beside
/// the set (its last [`WAYS`] such ids), so that its trace, if it does
/// arrive, counts as lost: the collector's failure.
pub(crate) const REMEMBERED: usize = 1024;

/// Slots per set. A waiting context is lost only if [`WAYS`] newer ones
/// land in its set before its trace is fetched: with 100 traced requests
/// a second and a fetch taking 0.3 s, 0.23 land in a set meanwhile, and
/// that happens about once in five billion traces; with one slot per id
/// (as before) one in 35 lost its spans. Traced requests far above the
/// fetcher's `max_fetches_per_second` crowd the sets with contexts whose
/// traces are never fetched: keep the server-trace ratio near what the
/// fetcher takes.
const WAYS: usize = 8;

/// The span contexts of traced requests, by tracing session id: a fixed
/// array of atomic slots, so that neither the request that remembers nor
/// the fetch that takes takes a lock; touched only for traced requests.
pub(crate) struct Remembered {
    slots: Box<[Slot]>,
    /// Per set as in `slots`, the ids of the contexts pushed out of it
    /// (a slot each, taken in turn), to tell their traces when they come.
    pushed_out: Box<[ArcSwapOption<[u8; 16]>]>,
    /// Orders the kept contexts, oldest first, for replacing.
    next: AtomicU64,
    /// Traces that arrived after their context was pushed out: no spans.
    lost: AtomicU64,
}

/// A kept context: its tracing session id, its request's span context,
/// and when it was kept (a [`Remembered::next`] value).
struct Held {
    id: [u8; 16],
    cx: SpanContext,
    seq: u64,
}

/// A slot: a kept context, or empty.
type Slot = ArcSwapOption<Held>;

impl Default for Remembered {
    fn default() -> Remembered {
        Remembered {
            slots: (0..REMEMBERED).map(|_| ArcSwapOption::empty()).collect(),
            pushed_out: (0..REMEMBERED).map(|_| ArcSwapOption::empty()).collect(),
            next: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Remembered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.slots.iter().filter(|s| s.load().is_some()).count();
        f.debug_struct("Remembered").field("held", &held).finish()
    }
}

impl Remembered {
    /// The index of the set `id` may be kept in.
    fn set_index(&self, id: &[u8; 16]) -> usize {
        // session ids are time-based UUIDs: fold every byte in
        let x = u128::from_le_bytes(*id);
        let h = (x as u64) ^ ((x >> 64) as u64);
        let h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> 32) as usize % (self.slots.len() / WAYS)
    }

    /// The set of slots `id` may be kept in.
    fn set(&self, id: &[u8; 16]) -> &[Slot] {
        &self.slots[self.set_index(id) * WAYS..][..WAYS]
    }

    /// Traces that arrived after their request's context had been pushed
    /// out of its set: they made no spans.
    pub(crate) fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    pub(crate) fn remember(&self, id: [u8; 16], cx: SpanContext) {
        if !cx.is_valid() || !cx.is_sampled() {
            return;
        }
        let set = self.set(&id);
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let held = Some(Arc::new(Held { id, cx, seq }));
        // a free slot, else the oldest; a race lost tries again (a few
        // times: the set's slots are being replaced by newer ones)
        for _ in 0..4 {
            let mut oldest: Option<(u64, Option<Arc<Held>>, &Slot)> = None;
            for slot in set {
                let current = slot.load_full();
                let age = current.as_ref().map_or(0, |h| h.seq + 1);
                if oldest.as_ref().is_none_or(|(a, _, _)| age < *a) {
                    oldest = Some((age, current, slot));
                }
            }
            let Some((_, current, slot)) = oldest else {
                return;
            };
            let prev = slot.compare_and_swap(&current, held.clone());
            if ptr_eq(&prev, &current) {
                if let Some(out) = current {
                    // pushed out before its trace came: its id kept, to
                    // tell its trace (a free place, else one in turn)
                    let ids = &self.pushed_out[self.set_index(&out.id) * WAYS..][..WAYS];
                    let place = ids
                        .iter()
                        .find(|p| p.load().is_none())
                        .unwrap_or(&ids[out.seq as usize % WAYS]);
                    place.store(Some(Arc::new(out.id)));
                }
                return;
            }
        }
    }

    pub(crate) fn take(&self, id: &[u8; 16]) -> Option<SpanContext> {
        for slot in self.set(id) {
            let Some(held) = slot.load_full() else {
                continue;
            };
            if &held.id != id {
                continue;
            }
            // taken once, even if two fetches of one trace race
            let prev = slot.compare_and_swap(&held, None);
            return Arc::ptr_eq(prev.as_ref()?, &held).then(|| held.cx.clone());
        }
        // not kept: its request was not sampled (or not traced), or its
        // context was pushed out, which is a loss (counted once)
        let set = self.set_index(id);
        for out in &self.pushed_out[set * WAYS..][..WAYS] {
            let current = out.load_full();
            if current.as_deref() == Some(id) {
                let prev = out.compare_and_swap(&current, None);
                if ptr_eq_id(&prev, &current) {
                    self.lost.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
        }
        None
    }
}

fn ptr_eq(a: &Option<Arc<Held>>, b: &Option<Arc<Held>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

fn ptr_eq_id(a: &Option<Arc<[u8; 16]>>, b: &Option<Arc<[u8; 16]>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Makes the server spans of `e` under `parent`.
pub(crate) fn export<T: Tracer>(tracer: &T, parent: SpanContext, e: &ServerTraceEvent<'_>) {
    let parent = Context::new().with_remote_span_context(parent);
    let trace_id = session_id_string(&e.session_id);
    for source in e.sources() {
        let steps: Vec<_> = e.steps.iter().filter(|s| s.source == source).collect();
        let coordinator = source == e.coordinator;
        let anchor = if coordinator {
            e.started_at
        } else {
            steps
                .first()
                .and_then(|s| s.node_began_at())
                // not clamped to the session's start: a replica whose
                // clock runs behind shows it
                .unwrap_or(e.started_at)
        };
        let last = steps.iter().map(|s| s.elapsed).max().unwrap_or_default();
        let end = anchor
            + if coordinator {
                last.max(e.duration)
            } else {
                last
            };
        let role = if coordinator {
            "coordinator"
        } else {
            "replica"
        };
        let mut attrs = vec![
            KeyValue::new("db.system.name", "cassandra"),
            KeyValue::new("cql.server.role", role),
            KeyValue::new("db.cassandra.trace_id", trace_id.clone()),
        ];
        if let Some(ip) = source {
            attrs.push(KeyValue::new("server.address", ip.to_string()));
            attrs.push(KeyValue::new("network.peer.address", ip.to_string()));
        }
        if coordinator {
            if !e.request.is_empty() {
                attrs.push(KeyValue::new("cql.server.request", e.request.to_string()));
            }
            if let Some(c) = e.consistency {
                attrs.push(KeyValue::new(
                    "db.cassandra.consistency_level",
                    c.to_ascii_lowercase(),
                ));
            }
            if e.truncated {
                attrs.push(KeyValue::new("cql.server.trace_truncated", true));
            }
        }
        let name = if coordinator {
            "cql.server.coordinator"
        } else {
            "cql.server.replica"
        };
        let mut span = tracer.build_with_context(
            SpanBuilder::from_name(Cow::Borrowed(name))
                .with_kind(SpanKind::Server)
                .with_start_time(anchor)
                .with_attributes(attrs),
            &parent,
        );
        for s in steps {
            span.add_event_with_timestamp(
                s.activity.clone(),
                anchor + s.elapsed,
                vec![
                    KeyValue::new("thread", s.thread.clone()),
                    KeyValue::new("source_elapsed_us", s.elapsed.as_micros() as i64),
                ],
            );
        }
        span.end_with_timestamp(end);
    }
}

/// For the `tracing` path (the stack's `TraceLayer` spans exported by
/// `tracing-opentelemetry`): remembers the OpenTelemetry context of the
/// request's `tracing` span when a traced request ends (its request event
/// is emitted inside that span), and makes the server spans under it
/// through `tracer`. Made by `OtlpExporter::server_trace_collector()`.
/// Keep it out of [`Background`](tower_cql_core::Background), which would
/// run it outside the request's span.
#[cfg(feature = "_otlp")]
pub struct ServerTraceCollector<T> {
    tracer: T,
    traced: Remembered,
}

#[cfg(feature = "_otlp")]
impl<T> std::fmt::Debug for ServerTraceCollector<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTraceCollector")
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "_otlp")]
impl<T: Tracer> ServerTraceCollector<T> {
    /// Server spans through `tracer`.
    pub fn new(tracer: T) -> ServerTraceCollector<T> {
        ServerTraceCollector {
            tracer,
            traced: Remembered::default(),
        }
    }
}

#[cfg(feature = "_otlp")]
impl<T> tower_cql_core::Collector for ServerTraceCollector<T>
where
    T: Tracer + Send + Sync + 'static,
    T::Span: Send + Sync + 'static,
{
    fn on_request(&self, e: &tower_cql_core::event::RequestEvent<'_>) {
        if let Some(id) = e.tracing_id {
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            let cx = tracing::Span::current().context();
            self.traced.remember(id, cx.span().span_context().clone());
        }
    }

    fn on_server_trace(&self, e: &ServerTraceEvent<'_>) {
        if let Some(parent) = self.traced.take(&e.session_id) {
            export(&self.tracer, parent, e);
        }
    }

    /// Server traces that made no spans because their request's context
    /// had been pushed out of its slot (see the module docs).
    fn failures(&self) -> u64 {
        self.traced.lost()
    }
}

#[cfg(test)]
mod remembered_tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    fn cx(n: u64) -> SpanContext {
        SpanContext::new(
            TraceId::from(u128::from(n) + 1),
            SpanId::from(n + 1),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )
    }

    fn id(n: u64) -> [u8; 16] {
        // time-based like Cassandra's: only the low bytes differ
        let mut b = [7u8; 16];
        b[..8].copy_from_slice(&n.to_le_bytes());
        b
    }

    /// Each remembered context is taken once, by its own id; an unknown id
    /// or a second take finds nothing; an unsampled context is not kept.
    #[test]
    fn taken_once_by_its_own_id() {
        let r = Remembered::default();
        for n in 0..100 {
            r.remember(id(n), cx(n));
        }
        let mut found = 0;
        for n in 0..100 {
            if let Some(c) = r.take(&id(n)) {
                assert_eq!(c, cx(n));
                found += 1;
            }
            assert!(r.take(&id(n)).is_none(), "taken twice");
        }
        // 100 ids in 1,024 slots: a collision replaces an older one, rarely
        assert!(found >= 90, "{found} of 100 kept");
        assert!(r.take(&id(1_000)).is_none());
        let unsampled = SpanContext::new(
            TraceId::from(9u128),
            SpanId::from(9u64),
            TraceFlags::default(),
            false,
            TraceState::default(),
        );
        r.remember(id(5), unsampled);
        assert!(r.take(&id(5)).is_none());
    }

    /// Ids that land in the same set (they shared a slot when there was
    /// one slot per id), as tracing ids of requests in flight at once do
    /// now and then: each is kept until taken, not replaced by the next.
    #[test]
    fn ids_sharing_a_slot_are_all_kept() {
        let r = Remembered::default();
        let first = id(0);
        let same: Vec<[u8; 16]> = (1..1_000_000)
            .map(id)
            .filter(|i| std::ptr::eq(r.set(i), r.set(&first)))
            .take(3)
            .collect();
        assert_eq!(same.len(), 3);
        r.remember(first, cx(0));
        for (n, i) in same.iter().enumerate() {
            r.remember(*i, cx(n as u64 + 1));
        }
        assert_eq!(r.take(&first), Some(cx(0)), "the first was replaced");
        for (n, i) in same.iter().enumerate() {
            assert_eq!(r.take(i), Some(cx(n as u64 + 1)));
        }
    }

    /// A traced request whose context was pushed out of its slot (more
    /// than [`WAYS`] newer ones landed in its set before its trace came)
    /// gets no server spans: when its trace arrives, that loss is counted
    /// as the collector's failure (`Collectors::failures`), as the
    /// exporters count every other. (Before, it was counted nowhere: the
    /// trace was fetched and thrown away.) A trace whose request span was
    /// not sampled is no loss.
    #[test]
    fn a_trace_whose_context_was_pushed_out_is_counted() {
        use crate::spans::SpanCollector;
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
        use std::time::{Duration, UNIX_EPOCH};
        use tower_cql_core::event::RequestEvent;
        use tower_cql_core::{Collector, Collectors, CqlRequest};

        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let collector = Arc::new(SpanCollector::new(provider.tracer("test")));
        let collectors = Collectors::with([collector.clone()]);
        // WAYS + 1 traced requests whose ids land in one set: the first
        // one's context is pushed out by the last
        let r = Remembered::default();
        let first = id(0);
        let ids: Vec<[u8; 16]> = std::iter::once(first)
            .chain(
                (1..1_000_000)
                    .map(id)
                    .filter(|i| std::ptr::eq(r.set(i), r.set(&first)))
                    .take(WAYS),
            )
            .collect();
        assert_eq!(ids.len(), WAYS + 1);
        let req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?");
        for i in &ids {
            let mut e = RequestEvent::new(req.meta(), Duration::from_millis(1), None);
            e.tracing_id = Some(*i);
            collector.on_request(&e);
        }
        let requests = exporter.get_finished_spans().unwrap().len();
        assert_eq!(requests, WAYS + 1);
        // every trace arrives; and one whose request was never traced
        let started = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for i in ids.iter().chain([&id(999_999_999)]) {
            let mut e =
                ServerTraceEvent::new(req.meta(), *i, started, Duration::from_millis(1), &[]);
            e.coordinator = Some("127.0.0.1".parse().unwrap());
            collector.on_server_trace(&e);
        }
        let server_spans = exporter.get_finished_spans().unwrap().len() - requests;
        assert_eq!(server_spans, WAYS, "one coordinator span per trace kept");
        assert_eq!(
            collectors.failures(),
            1,
            "the trace whose context was pushed out, and no other"
        );
    }

    /// Threads remembering and taking at once: every context taken is the
    /// one of its id, and none twice.
    #[test]
    fn concurrent_remember_and_take() {
        let r = Arc::new(Remembered::default());
        let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (r, taken) = (r.clone(), taken.clone());
                std::thread::spawn(move || {
                    for n in (t * 10_000)..(t * 10_000 + 2_000) {
                        r.remember(id(n), cx(n));
                        if let Some(c) = r.take(&id(n)) {
                            assert_eq!(c, cx(n));
                            taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(taken.load(std::sync::atomic::Ordering::Relaxed) > 7_000);
    }
}

#[cfg(test)]
mod export_tests {
    use super::*;
    use std::net::IpAddr;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tower_cql_core::CqlRequest;
    use tower_cql_core::server_trace::ServerTraceStep;

    /// A version 1 UUID of the time `at`.
    fn timeuuid(at: SystemTime) -> [u8; 16] {
        let ticks =
            at.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 / 100 + 0x01B2_1DD2_1381_4000;
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&(ticks as u32).to_be_bytes());
        b[4..6].copy_from_slice(&((ticks >> 32) as u16).to_be_bytes());
        b[6..8].copy_from_slice(&(((ticks >> 48) as u16 & 0x0fff) | 0x1000).to_be_bytes());
        b
    }

    /// A replica whose clock runs behind the coordinator's shows it: its
    /// span starts where its own first step says, before the session's
    /// start, as the module docs promise (it was clamped to the session's
    /// start, hiding the skew and moving the replica's steps later).
    #[test]
    fn a_replica_behind_the_coordinator_shows_its_skew() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("test");
        let started = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let coordinator: IpAddr = "127.0.0.1".parse().unwrap();
        let replica: IpAddr = "127.0.0.2".parse().unwrap();
        // the replica's clock is 30 ms behind: its first step, 1 ms into
        // its part, is stamped 29 ms before the session started
        let behind = started - Duration::from_millis(30);
        let steps = [
            ServerTraceStep::new(
                timeuuid(started + Duration::from_micros(100)),
                Some(coordinator),
                Duration::from_micros(100),
                "Parsing",
                "Native-Transport-Requests-1",
            ),
            ServerTraceStep::new(
                timeuuid(behind + Duration::from_millis(1)),
                Some(replica),
                Duration::from_millis(1),
                "Executing single-partition query",
                "ReadStage-1",
            ),
        ];
        let req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?");
        let mut e = ServerTraceEvent::new(
            req.meta(),
            [1; 16],
            started,
            Duration::from_millis(5),
            &steps,
        );
        e.coordinator = Some(coordinator);
        let parent = SpanContext::new(
            TraceId::from(7u128),
            SpanId::from(7u64),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        export(&tracer, parent, &e);
        let spans = exporter.get_finished_spans().unwrap();
        let span = |name: &str| {
            spans
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("no {name} span in {spans:?}"))
        };
        assert_eq!(span("cql.server.coordinator").start_time, started);
        let r = span("cql.server.replica");
        assert_eq!(r.start_time, behind, "the replica's own clock");
        assert_eq!(r.end_time, behind + Duration::from_millis(1));
        assert_eq!(
            r.events.events[0].timestamp,
            behind + Duration::from_millis(1)
        );
    }

    /// A trace cut at the fetcher's cap says so on its coordinator span;
    /// a whole one does not.
    #[test]
    fn a_truncated_trace_says_so_on_its_coordinator_span() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("test");
        let started = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let coordinator: IpAddr = "127.0.0.1".parse().unwrap();
        let steps = [ServerTraceStep::new(
            timeuuid(started + Duration::from_micros(100)),
            Some(coordinator),
            Duration::from_micros(100),
            "Parsing",
            "Native-Transport-Requests-1",
        )];
        let req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?");
        let parent = SpanContext::new(
            TraceId::from(7u128),
            SpanId::from(7u64),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        for truncated in [true, false] {
            exporter.reset();
            let mut e = ServerTraceEvent::new(
                req.meta(),
                [1; 16],
                started,
                Duration::from_millis(5),
                &steps,
            );
            e.coordinator = Some(coordinator);
            e.truncated = truncated;
            export(&tracer, parent.clone(), &e);
            let spans = exporter.get_finished_spans().unwrap();
            let marked = spans[0]
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == "cql.server.trace_truncated")
                .map(|kv| kv.value.clone());
            assert_eq!(
                marked,
                truncated.then_some(opentelemetry::Value::Bool(true)),
                "truncated = {truncated}"
            );
        }
    }
}
