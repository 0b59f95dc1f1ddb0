//! Paging: a `Stream` of typed rows whose pages are requests through a
//! service (the whole stack, or the driver service alone), one page
//! fetched ahead.
//!
//! ```no_run
//! use futures::TryStreamExt;
//! use tower_cql_core::{CqlRequest, DriverService};
//!
//! # async fn demo(driver: DriverService) -> Result<(), tower_cql_core::CqlError> {
//! let req = CqlRequest::query("SELECT c, v FROM ks.t WHERE k = ?").bind((1i32,)).page_size(100);
//! let mut rows = driver.stream::<(i32, String)>(req).await?;
//! while let Some((c, v)) = rows.try_next().await? {
//!     println!("{c} {v}");
//! }
//! # Ok(()) }
//! ```
//!
//! Through a whole stack, use the stack's own `stream`
//! (`tower_cql_middleware::stack::Stack::stream`), or [`RowStream::start`]
//! with any `tower::Service<CqlRequest>`:
//!
//! - **Each page is a request** through that service: a clone of the
//!   stream's request marked with [`RequestMeta::set_page`](crate::RequestMeta::set_page), so it passes
//!   the shutdown gate, the limits, the breaker, retry (a failed page of
//!   an idempotent read is retried with its paging state), the timeout,
//!   metrics (one request event per page) and tracing (the trace layer
//!   names a page's span `cql.page`, a child of the stream's `cql.stream`
//!   span). Each page is given the time the stream's request had left
//!   when the stream started: `.timeout(2s)` is 2 s a page, as drivers'
//!   request timeouts are, however long the reader takes between pages.
//!   To bound a whole scan, wrap its reading in `tokio::time::timeout`.
//! - **One page ahead, really**: when a page arrives, the request for the
//!   next one is sent at once (its future is polled before the first row
//!   of the page is handed out), so it is in flight while the consumer
//!   reads; from then on a task of its own on the runtime drives it to
//!   its end, whether or not the consumer polls: closing the stack never
//!   waits on a stream its owner holds without reading (the page in
//!   flight finishes, the next is refused `ShutDown`). Never more than one page beyond the
//!   current one is held or asked for: memory is the decoded current
//!   page and one page in flight (backpressure). A stream dropped with a
//!   page in flight cancels that page's request (its task is aborted).
//! - Each page that arrives is an event
//!   ([`PageEvent`](crate::event::PageEvent)), also one whose
//!   rows do not decode as `T` (it was fetched), emitted where it arrives,
//!   not when the reader reaches it: through the stack, before the page's
//!   request leaves the gate, so the flush of a `close()` (which waits for
//!   the page in flight) holds every page fetched. The stream reports one
//!   [`StreamEvent`](crate::event::StreamEvent) when it ends, fails (a
//!   page that failed after the service's retries, or did not decode) or
//!   is dropped, after every page it counts (also when it is dropped as
//!   its next page is being reported). `close()` never waits for a
//!   stream's reader: a stream started in its gate (the stack's `stream`,
//!   [`RowStream::start_in`]) still open once the requests in flight
//!   have drained is ended by `close()` itself, its event (failed,
//!   `ShutDown`, or finished if its last row was handed out) before the
//!   collectors' flush; it then hands out no
//!   further row and fetches no further page, and its reader's next
//!   poll gets `ShutDown`. A stream started with [`RowStream::start`]
//!   through a gated service is not known to the gate: still open when
//!   `close()` returns, it reports its end after the flush.
//! - A stream has one owner: what only its reader changes is plain
//!   fields, mutated through `&mut self`; what its page fetches and a
//!   gate's `close()` share with it (the rows handed out, the pages
//!   reported, who reports its end) is one atomic word and a counter,
//!   one read-modify-write a row or a page, no lock, so no row or count
//!   can be lost to a race (the hazard of the Python wrapper this
//!   project replaces).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use futures::future::BoxFuture;
use scylla::deserialize::row::DeserializeRow;
use scylla::response::{PagingState, PagingStateResponse};
use tower_service::Service;
use tracing::Instrument;

use crate::collector::Collectors;
use crate::driver::DriverService;
use crate::error::{CqlError, ErrorKind};
use crate::event::StreamEnd;
use crate::gate::Gate;
use crate::request::CqlRequest;
use crate::response::CqlResponse;

mod report;

pub(crate) use report::OpenStreams;
use report::Report;

type PageOutput = Result<CqlResponse, CqlError>;

/// A page's answer (its event emitted where it arrived, in the fetch
/// itself, which may run on a task of its own while the reader is busy).
type Fetched = PageOutput;

/// The request for a page, in flight. Polled first by the consumer's
/// poll that asked for it, so the request goes out before the current
/// page's first row is handed out; if it is not answered then, a task of
/// its own on the runtime drives it from there, so that it runs to its
/// end whether or not the consumer polls again (a stack's `close()` waits
/// for it), aborted if the stream drops it first. Outside a runtime the
/// consumer's polls drive it.
enum Fetch {
    Here(BoxFuture<'static, Fetched>),
    Task(AbortOnDrop),
    /// (only while moving from `Here` to `Task`)
    Moving,
}

impl Fetch {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Fetched> {
        match self {
            Fetch::Here(fut) => {
                let out = fut.as_mut().poll(cx);
                if out.is_pending()
                    && let Ok(rt) = tokio::runtime::Handle::try_current()
                    && let Fetch::Here(fut) = std::mem::replace(self, Fetch::Moving)
                {
                    // (the box moves, not the future: polled already, it
                    // stays where it is)
                    *self = Fetch::Task(AbortOnDrop(rt.spawn(fut)));
                    // the task's end wakes this consumer: its poll of the
                    // task registers it (the future's own wakers are the
                    // task's from its first poll)
                    return self.poll(cx);
                }
                out
            }
            Fetch::Moving => unreachable!("a page's fetch is never left moving"),
            Fetch::Task(task) => match std::task::ready!(Pin::new(&mut task.0).poll(cx)) {
                Ok(out) => Poll::Ready(out),
                // the page's request panicked: as if polled here
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => Poll::Ready(Err(CqlError::new(
                    ErrorKind::Cancelled,
                    "the page's request was cancelled: its runtime is shutting down",
                ))),
            },
        }
    }
}

/// A page's task, aborted when dropped (a no-op once it has finished).
struct AbortOnDrop(tokio::task::JoinHandle<Fetched>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The page after the current one.
enum Next {
    /// Requested, not answered yet.
    Fetching(Fetch),
    /// Answered, not yet read by the consumer.
    Ready(Result<CqlResponse, CqlError>),
    /// No more pages.
    End,
}

/// A stream of rows of type `T`, its pages fetched through `S`; see the
/// module docs.
pub struct RowStream<T, S = DriverService> {
    svc: S,
    /// Its events, with the stream's request (each page is a clone of
    /// it), shared with its page fetches and the gate it started in.
    report: Arc<Report>,
    span: tracing::Span,
    rows: std::vec::IntoIter<T>,
    next: Next,
    /// Pages asked for so far (the index of the next one to ask for).
    requested: u32,
    /// The time each page is given: what the stream's request had left
    /// when the stream started (`None`: no deadline).
    page_budget: Option<Duration>,
    /// Pages read.
    pages: u32,
    /// The reader was given the stream's end (`None` from now on).
    done: bool,
}

impl<T, S> fmt::Debug for RowStream<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowStream")
            .field("pages", &self.pages)
            .field("rows", &self.report.rows())
            .field("buffered", &self.rows.len())
            .field("fetching", &matches!(self.next, Next::Fetching(..)))
            .field("done", &self.done)
            .finish()
    }
}

impl DriverService {
    /// Starts a paged read of `req` straight through this driver service
    /// (no other layer), decoding rows as `T`; fails early (no stream)
    /// when the first page fails. [`RowStream::start`] pages through any
    /// service, e.g. the whole stack.
    pub async fn stream<T>(&self, req: CqlRequest) -> Result<RowStream<T>, CqlError>
    where
        T: for<'f, 'm> DeserializeRow<'f, 'm> + Send + Unpin + 'static,
    {
        RowStream::start(self.clone(), self.collectors().clone(), req).await
    }
}

impl<T, S> RowStream<T, S>
where
    T: for<'f, 'm> DeserializeRow<'f, 'm> + Send + Unpin + 'static,
    S: Service<CqlRequest, Response = CqlResponse, Error = CqlError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    /// Starts a paged read of `req` whose pages are requests through
    /// `svc`, with page and stream events going to `collectors`; resolves
    /// once the first page is in (fails early, with no stream, when it
    /// failed; the stream event then says so).
    pub async fn start(svc: S, collectors: Collectors, req: CqlRequest) -> Result<Self, CqlError> {
        RowStream::begin(None, svc, collectors, req).await
    }

    /// [`start`](Self::start), for a service behind `gate` (the stack's
    /// `stream` does this): the gate's `close()` ends the stream if it is
    /// still open once the requests in flight have drained, before the
    /// collectors' flush, so its end event is in that flush (failed,
    /// [`ShutDown`](ErrorKind::ShutDown)); from then on it hands out no
    /// row and fetches no page: its reader's next poll gets that error,
    /// then `None`. (A stream whose last row was handed out, no page
    /// left, is reported finished, and its next poll is `None`.) Refused with `ShutDown`, and reports nothing, once
    /// the gate has closed.
    pub async fn start_in(
        gate: &Gate,
        svc: S,
        collectors: Collectors,
        req: CqlRequest,
    ) -> Result<Self, CqlError> {
        RowStream::begin(Some(gate), svc, collectors, req).await
    }

    async fn begin(
        gate: Option<&Gate>,
        svc: S,
        collectors: Collectors,
        req: CqlRequest,
    ) -> Result<Self, CqlError> {
        let span = tracing::info_span!(
            "cql.stream",
            otel.name = "cql.stream",
            otel.kind = "internal",
            db.system.name = "cassandra",
            db.query.summary = %req.meta().query_summary(),
        );
        let page_budget = req.meta().remaining();
        let report = Report::new(collectors, req);
        // before its first page enters the gate: a close() that waits for
        // that page finds the stream, to end it
        if let Some(gate) = gate
            && !gate.streams().add(&report)
        {
            return Err(CqlError::shut_down());
        }
        let mut stream = RowStream {
            svc,
            report,
            page_budget,
            span,
            rows: Vec::new().into_iter(),
            next: Next::End,
            requested: 0,
            pages: 0,
            done: false,
        };
        stream.ask(PagingState::start());
        std::future::poll_fn(|cx| stream.poll_next_page(cx)).await;
        if let Next::Ready(Err(e)) = &stream.next {
            let e = e.clone();
            stream.finish(StreamEnd::Failed(&e));
            return Err(e);
        }
        Ok(stream)
    }

    /// Asks for the next page, starting at `state`: a clone of the
    /// stream's request, through a clone of the service, in the stream's
    /// span; the caller polls it at once, so that it goes out now (see
    /// [`Fetch`]). The page's event is emitted where its answer arrives,
    /// not when the reader reaches it: a page fetched is reported while
    /// its request is still in the gate (so a `close()`'s flush holds it)
    /// and also when the stream is dropped before it reads it (see
    /// [`Report::page`]).
    fn ask(&mut self, state: PagingState) {
        let mut svc = self.svc.clone();
        let mut req = self.report.request().clone();
        if self.requested > 0
            && let Some(budget) = self.page_budget
        {
            // each page its own time, as drivers' request timeouts are
            let now = crate::clock::now().into_std();
            req.meta_mut().set_deadline(now.checked_add(budget));
        }
        let page = self.requested;
        req.meta_mut().set_page(page, state);
        self.requested += 1;
        let asked = Instant::now();
        let report = self.report.clone();
        let fut = async move {
            std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
            // The call's future is kept until the page's event is out:
            // through the stack, the gate's future holds the page's place
            // in the gate until dropped, so a `close()` waiting for this
            // page flushes its event.
            let mut call = std::pin::pin!(svc.call(req));
            let out = call.as_mut().await;
            // the page's time ends as its answer arrives, not when the
            // reader comes back for it
            if let Ok(resp) = &out {
                report.page(page, resp, asked.elapsed());
            }
            out
        }
        .instrument(self.span.clone());
        self.next = Next::Fetching(Fetch::Here(Box::pin(fut)));
    }

    /// Drives the page in flight; ready when it has an answer (or there is
    /// none to wait for).
    fn poll_next_page(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Next::Fetching(fut) = &mut self.next {
            let out = std::task::ready!(fut.poll(cx));
            self.next = Next::Ready(out);
        }
        Poll::Ready(())
    }
}

impl<T, S> RowStream<T, S> {
    /// Pages read so far.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Rows handed out so far.
    pub fn rows(&self) -> u64 {
        self.report.rows()
    }

    /// The reader's end of the stream (its event counts every page
    /// reported, read or not: see [`Report::end`]).
    fn finish(&mut self, end: StreamEnd<'_>) {
        self.done = true;
        self.report.end(end);
    }

    /// Every row handed out and no page left to ask for: the read reached
    /// its end (the reader may not have asked past it yet).
    fn at_end(&self) -> bool {
        self.rows.len() == 0 && matches!(self.next, Next::End)
    }

    /// The stream was ended by its gate's `close()`: it drops what it
    /// holds and gives its reader the error, once.
    fn closed(&mut self) -> CqlError {
        self.done = true;
        self.rows = Vec::new().into_iter();
        // (no page is in flight: close() ended it once the gate drained)
        self.next = Next::End;
        report::closed_error()
    }
}

impl<T, S> Stream for RowStream<T, S>
where
    T: for<'f, 'm> DeserializeRow<'f, 'm> + Send + Unpin + 'static,
    S: Service<CqlRequest, Response = CqlResponse, Error = CqlError>
        + Clone
        + Send
        + Unpin
        + 'static,
    S::Future: Send + 'static,
{
    type Item = Result<T, CqlError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            // The next page makes progress (and is sent, the first time)
            // whenever the consumer asks for a row.
            let next_in = this.poll_next_page(cx).is_ready();
            if let Some(row) = this.rows.next() {
                if this.report.hand_out(this.at_end()) {
                    return Poll::Ready(Some(Ok(row)));
                }
                return Poll::Ready(Some(Err(this.closed())));
            }
            if this.done {
                return Poll::Ready(None);
            }
            // (one read to its end finishes below, however it was ended)
            if !this.at_end() && this.report.closed() {
                return Poll::Ready(Some(Err(this.closed())));
            }
            if !next_in {
                return Poll::Pending;
            }
            let out = match std::mem::replace(&mut this.next, Next::End) {
                Next::End => {
                    this.finish(StreamEnd::Finished);
                    return Poll::Ready(None);
                }
                Next::Fetching(..) => unreachable!("polled to an answer above"),
                Next::Ready(out) => out,
            };
            // A page that arrived was fetched (its event is out, see
            // `ask`), whether or not its rows decode as `T`.
            let page = out.and_then(|resp| {
                this.pages += 1;
                let rows = resp.rows::<T>()?;
                Ok((rows, resp))
            });
            let (rows, resp) = match page {
                Ok(p) => p,
                Err(e) => {
                    this.finish(StreamEnd::Failed(&e));
                    return Poll::Ready(Some(Err(e)));
                }
            };
            this.rows = rows.into_iter();
            // one page ahead: ask for the next while this one is read
            if let Some(PagingStateResponse::HasMorePages { state }) = resp.paging_state() {
                this.ask(state.clone());
            }
        }
    }
}

impl<T, S> Drop for RowStream<T, S> {
    fn drop(&mut self) {
        if !self.done {
            // every row handed out and no page left to ask for: the read
            // reached its end, though the reader never asked past it
            let end = if self.at_end() {
                StreamEnd::Finished
            } else {
                StreamEnd::Dropped
            };
            self.finish(end);
        }
    }
}
