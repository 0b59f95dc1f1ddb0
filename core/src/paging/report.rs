//! A stream's report: an event per page fetched and one end event,
//! whoever ends the stream (its reader, a gate's `close()`, or, when the
//! reader drops the stream while its next page is being reported, that
//! page's fetch), exactly once and after every page it counts.
//!
//! One atomic word per stream holds the rows handed out and who holds the
//! end: each row handed out, each page reported and the end are one
//! read-modify-write of it (no lock, no check-then-act), so the end
//! counts exactly the rows handed out before it, and a page is either
//! reported before the end and counted in it, or not one of the stream's
//! pages (it arrived after the stream was dropped).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::collector::Collectors;
use crate::error::{CqlError, ErrorKind};
use crate::event::{Event, PageEvent, StreamEnd, StreamEvent};
use crate::request::CqlRequest;
use crate::response::CqlResponse;

/// The stream's end is claimed: reported, or left to the page being
/// reported.
const ENDED: u64 = 1 << 63;
/// ... by a gate's `close()`.
const CLOSED: u64 = 1 << 62;
/// A page is being reported (one at a time: a stream asks for one page
/// at a time).
const REPORTING: u64 = 1 << 61;
/// The last row was handed out and no page is left: the stream was read
/// to its end (its reader may not have asked past it yet).
const AT_END: u64 = 1 << 60;
/// Rows handed out.
const ROWS: u64 = AT_END - 1;

/// What a stream reports, shared by the stream, its page fetches and the
/// gate it was started in.
pub(crate) struct Report {
    /// Rows handed out, and the bits above.
    state: AtomicU64,
    /// Pages reported (fetched, whether read or not).
    pages: AtomicU32,
    collectors: Collectors,
    /// The stream's request (its meta labels the events).
    request: CqlRequest,
    started: Instant,
}

impl Report {
    pub(super) fn new(collectors: Collectors, request: CqlRequest) -> Arc<Report> {
        Arc::new(Report {
            state: AtomicU64::new(0),
            pages: AtomicU32::new(0),
            collectors,
            request,
            started: Instant::now(),
        })
    }

    /// The stream's request.
    pub(super) fn request(&self) -> &CqlRequest {
        &self.request
    }

    /// Counts a row handed out, `last` when it is the last row and no
    /// page is left; false (the row is not handed out) once the stream
    /// has ended: a gate's `close()` ended it while its reader still read.
    #[inline]
    pub(super) fn hand_out(&self, last: bool) -> bool {
        let add = if last { 1 | AT_END } else { 1 };
        let prev = self.state.fetch_add(add, Ordering::Relaxed);
        if prev & ENDED == 0 {
            return true;
        }
        self.state.fetch_sub(add, Ordering::Relaxed);
        false
    }

    /// Rows handed out.
    pub(super) fn rows(&self) -> u64 {
        self.state.load(Ordering::Relaxed) & ROWS
    }

    /// Whether a gate's `close()` ended the stream.
    pub(super) fn closed(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Page `page` arrived (`resp`, `duration` after it was asked for):
    /// its event, unless the stream has ended (dropped while the answer
    /// came: then it is not one of its pages). If the stream ends while
    /// this page is being reported, its end is reported from here, after
    /// the page, counting it.
    pub(super) fn page(&self, page: u32, resp: &CqlResponse, duration: Duration) {
        let prev = self.state.fetch_add(REPORTING, Ordering::AcqRel);
        debug_assert_eq!(prev & REPORTING, 0, "one page reported at a time");
        if prev & ENDED != 0 {
            self.state.fetch_sub(REPORTING, Ordering::Relaxed);
            return;
        }
        self.collectors.emit(Event::Page(PageEvent {
            meta: self.request.meta(),
            page,
            rows: resp.info().rows,
            duration,
            node: resp.info().coordinator,
        }));
        // (published by the release below)
        self.pages.fetch_add(1, Ordering::Relaxed);
        let prev = self.state.fetch_sub(REPORTING, Ordering::AcqRel);
        if prev & ENDED != 0 {
            self.report_end(prev);
        }
    }

    /// The reader ends the stream with `end`: reported now; nothing if it
    /// has ended already (a gate's `close()` ended it). While a page is
    /// being reported (a stream dropped as its next page arrives: the
    /// only end that can find a page in flight), that page reports the
    /// end after itself, as dropped.
    pub(super) fn end(&self, end: StreamEnd<'_>) {
        let prev = self.state.fetch_or(ENDED, Ordering::AcqRel);
        if prev & (ENDED | REPORTING) == 0 {
            self.emit(prev & ROWS, end);
        } else {
            debug_assert!(prev & ENDED != 0 || matches!(end, StreamEnd::Dropped));
        }
    }

    /// A gate's `close()` ends the stream, unless it has ended: reported
    /// as failed with [`closed_error`], the reader's next row refused; or,
    /// when its last row was handed out and no page is left, as finished
    /// (its reader's next poll is its end).
    fn close(&self) {
        let mut prev = self.state.load(Ordering::Acquire);
        loop {
            if prev & ENDED != 0 {
                return;
            }
            match self.state.compare_exchange_weak(
                prev,
                prev | ENDED | CLOSED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => prev = now,
            }
        }
        if prev & REPORTING == 0 {
            self.report_end(prev | CLOSED);
        }
    }

    /// The end a page being reported, or `close()`, reports (`state`: the
    /// word as its end was claimed).
    fn report_end(&self, state: u64) {
        let rows = state & ROWS;
        if state & CLOSED == 0 {
            self.emit(rows, StreamEnd::Dropped);
        } else if state & AT_END != 0 {
            self.emit(rows, StreamEnd::Finished);
        } else {
            self.emit(rows, StreamEnd::Failed(&closed_error()));
        }
    }

    fn emit(&self, rows: u64, end: StreamEnd<'_>) {
        self.collectors.emit(Event::Stream(StreamEvent {
            meta: self.request.meta(),
            pages: self.pages.load(Ordering::Relaxed),
            rows,
            duration: self.started.elapsed(),
            end,
        }));
    }
}

/// The error of a stream a gate's `close()` ended: its end event's, and
/// what its reader gets next.
pub(super) fn closed_error() -> CqlError {
    CqlError::new(
        ErrorKind::ShutDown,
        "stream ended by close(): the service shut down while it was open, so it hands out no \
         further row and fetches no further page; read a stream to its end, or drop it, before \
         closing",
    )
}

/// The streams started in a gate, which its `close()` ends once the
/// requests in flight have drained, before the collectors' flush. Each
/// stream is added once, as it starts (one lock a stream, never one a
/// page or a row); the list forgets the streams that ended as it grows.
#[derive(Default)]
pub(crate) struct OpenStreams(Mutex<Registry>);

#[derive(Default)]
struct Registry {
    /// `close()` has ended the streams: no stream starts any more.
    closed: bool,
    streams: Vec<Weak<Report>>,
}

impl OpenStreams {
    /// Adds a starting stream; false once the gate's streams were ended
    /// (the gate is closed: the stream must not start).
    pub(super) fn add(&self, report: &Arc<Report>) -> bool {
        let mut registry = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if registry.closed {
            return false;
        }
        let streams = &mut registry.streams;
        if streams.len() == streams.capacity() {
            // (before it grows: amortised, as the growth is)
            streams.retain(|s| s.strong_count() > 0);
        }
        streams.push(Arc::downgrade(report));
        true
    }

    /// Ends every stream still open (see [`Report::close`]); no stream
    /// is added after. Called once the gate has drained: no page is in
    /// flight, none is being reported.
    pub(crate) fn close(&self) {
        let streams = {
            let mut registry = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            registry.closed = true;
            std::mem::take(&mut registry.streams)
        };
        for report in streams.iter().filter_map(Weak::upgrade) {
            report.close();
        }
    }
}

impl std::fmt::Debug for OpenStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenStreams")
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;
    use crate::collector::Collector;

    /// The page and stream events, in order; with `end_in_page`, it ends
    /// the stream (as dropped) from inside a page's event, as a reader
    /// dropping the stream on another thread while that page is reported.
    #[derive(Default)]
    struct Log {
        events: Mutex<Vec<String>>,
        end_in_page: std::sync::OnceLock<Weak<Report>>,
    }

    impl Collector for Log {
        fn on_page(&self, e: &PageEvent<'_>) {
            self.events.lock().unwrap().push(format!("page {}", e.page));
            if let Some(report) = self.end_in_page.get().and_then(Weak::upgrade) {
                report.end(StreamEnd::Dropped);
            }
        }
        fn on_stream(&self, e: &StreamEvent<'_>) {
            let kind = match e.end {
                StreamEnd::Failed(err) => err.kind().as_str(),
                _ => "-",
            };
            self.events.lock().unwrap().push(format!(
                "{} {kind}: {} pages, {} rows",
                e.end.as_str(),
                e.pages,
                e.rows
            ));
        }
    }

    fn report() -> (Arc<Log>, Arc<Report>) {
        let log = Arc::new(Log::default());
        let report = Report::new(
            Collectors::with([log.clone()]),
            CqlRequest::query("SELECT v FROM ks.t"),
        );
        (log, report)
    }

    fn page() -> CqlResponse {
        CqlResponse::synthetic(Default::default())
    }

    #[test]
    fn a_stream_ended_while_its_page_is_reported_ends_after_it_counting_it() {
        let (log, report) = report();
        report.page(0, &page(), Duration::ZERO);
        assert!(report.hand_out(false));
        log.end_in_page.set(Arc::downgrade(&report)).unwrap();
        report.page(1, &page(), Duration::ZERO);
        report.end(StreamEnd::Dropped); // (its Drop: ended already)
        assert_eq!(
            *log.events.lock().unwrap(),
            ["page 0", "page 1", "dropped -: 2 pages, 1 rows"]
        );
    }

    #[test]
    fn a_page_that_arrives_after_the_end_is_not_the_streams() {
        let (log, report) = report();
        report.page(0, &page(), Duration::ZERO);
        report.end(StreamEnd::Dropped);
        report.page(1, &page(), Duration::ZERO);
        assert_eq!(
            *log.events.lock().unwrap(),
            ["page 0", "dropped -: 1 pages, 0 rows"]
        );
    }

    #[test]
    fn close_ends_what_is_open_once_and_refuses_the_next_row_and_stream() {
        let streams = OpenStreams::default();
        let (log, open) = report();
        let (ended_log, ended) = report();
        assert!(streams.add(&open) && streams.add(&ended));
        open.page(0, &page(), Duration::ZERO);
        for _ in 0..3 {
            assert!(open.hand_out(false));
        }
        ended.end(StreamEnd::Finished);
        streams.close();
        assert!(open.closed() && !ended.closed());
        assert!(!open.hand_out(false), "no row after close ended it");
        assert_eq!(open.rows(), 3);
        open.end(StreamEnd::Dropped); // its reader's drop: reported already
        assert_eq!(
            *log.events.lock().unwrap(),
            ["page 0", "failed shut_down: 1 pages, 3 rows"]
        );
        assert_eq!(
            *ended_log.events.lock().unwrap(),
            ["finished -: 0 pages, 0 rows"]
        );
        assert!(!streams.add(&report().1), "no stream starts after close");
    }

    #[test]
    fn close_reports_a_stream_whose_last_row_was_handed_out_finished() {
        let streams = OpenStreams::default();
        let (log, report) = report();
        assert!(streams.add(&report));
        report.page(0, &page(), Duration::ZERO);
        assert!(report.hand_out(false) && report.hand_out(true));
        streams.close();
        assert_eq!(
            *log.events.lock().unwrap(),
            ["page 0", "finished -: 1 pages, 2 rows"]
        );
        assert_eq!(report.rows(), 2);
    }

    fn rounds() -> usize {
        std::env::var("TOWER_CQL_STRESS_ROUNDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(200)
    }

    /// A page reported on one thread while the reader drops the stream on
    /// another: the page is reported before the end and counted in it, or
    /// is not the stream's; never after the end, never left out of a
    /// count it was reported before (`TOWER_CQL_STRESS_ROUNDS` rounds).
    #[test]
    fn a_page_racing_the_streams_drop_is_reported_before_its_end_or_not_at_all() {
        for _ in 0..rounds() {
            let (log, report) = report();
            let fetch = {
                let report = report.clone();
                std::thread::spawn(move || report.page(0, &page(), Duration::ZERO))
            };
            std::thread::yield_now();
            report.end(StreamEnd::Dropped);
            fetch.join().unwrap();
            let events = log.events.lock().unwrap().clone();
            assert!(
                events == ["page 0", "dropped -: 1 pages, 0 rows"]
                    || events == ["dropped -: 0 pages, 0 rows"],
                "{events:?}"
            );
        }
    }

    /// A reader handing out rows on one thread, close() on another: the
    /// end counts exactly the rows handed out (`TOWER_CQL_STRESS_ROUNDS`
    /// rounds, 200 by default).
    #[test]
    fn close_counts_exactly_the_rows_a_reader_racing_it_handed_out() {
        for _ in 0..rounds() {
            let (log, report) = report();
            let streams = Arc::new(OpenStreams::default());
            assert!(streams.add(&report));
            let reader = {
                let report = report.clone();
                std::thread::spawn(move || {
                    let mut handed = 0u64;
                    while report.hand_out(false) {
                        handed += 1;
                    }
                    handed
                })
            };
            std::thread::yield_now();
            streams.close();
            let handed = reader.join().unwrap();
            assert_eq!(
                *log.events.lock().unwrap(),
                [format!("failed shut_down: 0 pages, {handed} rows")]
            );
        }
    }
}
