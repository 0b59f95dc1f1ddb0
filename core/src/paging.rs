//! Paging: a `Stream` of typed rows that fetches one page ahead.
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
//! - Each page is an event ([`PageEvent`]), and the stream reports one
//!   [`StreamEvent`] when it ends, fails, or is dropped early.
//! - Memory: the decoded current page plus one page being fetched; the
//!   next page is requested when the consumer starts on the current one,
//!   and not before (backpressure).
//! - A stream has one owner: its counters are plain fields, mutated only
//!   through `&mut self`, so no row or count can be lost to a race (the
//!   hazard of the Python wrapper this project replaces).

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use futures::future::BoxFuture;
use scylla::deserialize::row::DeserializeRow;
use scylla::response::query_result::QueryResult;
use scylla::response::{PagingState, PagingStateResponse};

use crate::driver::{DriverInner, DriverService, Prepared};
use crate::error::{CqlError, ErrorKind};
use crate::event::{Event, PageEvent, StreamEnd, StreamEvent};
use crate::request::{CqlRequest, RequestMeta, Values};

type PageResult = Result<(QueryResult, PagingStateResponse, Duration), CqlError>;

/// A stream of rows of type `T`; see the module docs.
pub struct RowStream<T> {
    inner: Arc<DriverInner>,
    stmt: Arc<Prepared>,
    values: Values,
    meta: RequestMeta,
    rows: std::vec::IntoIter<T>,
    fetching: Option<BoxFuture<'static, PageResult>>,
    pages: u32,
    total_rows: u64,
    started: Instant,
    done: bool,
}

impl<T> fmt::Debug for RowStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowStream")
            .field("pages", &self.pages)
            .field("rows", &self.total_rows)
            .field("buffered", &self.rows.len())
            .field("fetching", &self.fetching.is_some())
            .field("done", &self.done)
            .finish()
    }
}

fn fetch(
    inner: Arc<DriverInner>,
    stmt: Arc<Prepared>,
    values: Values,
    state: PagingState,
    meta: &RequestMeta,
    page: u32,
) -> BoxFuture<'static, PageResult> {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "cql.page",
        otel.name = "cql.page",
        otel.kind = "client",
        db.system.name = "cassandra",
        db.query.summary = tracing::field::Empty,
        cql.page.index = page,
        db.response.returned_rows = tracing::field::Empty,
        server.address = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    if !span.is_disabled() {
        span.record(
            "db.query.summary",
            tracing::field::display(meta.query_summary()),
        );
    }
    let record = span.clone();
    Box::pin(
        async move {
            let start = Instant::now();
            let row = values.as_row();
            let out = match &*stmt {
                Prepared::Prepared(p) => inner.session.execute_single_page(p, row, state).await,
                Prepared::Unprepared(s) => {
                    inner.session.query_single_page(s.clone(), row, state).await
                }
            }
            .map_err(CqlError::from_execution);
            match &out {
                Ok((r, _)) => {
                    record.record(
                        "server.address",
                        r.request_coordinator()
                            .connection_address()
                            .to_string()
                            .as_str(),
                    );
                    if let Ok(rows) = r.clone().into_rows_result() {
                        record.record("db.response.returned_rows", rows.rows_num() as u64);
                    }
                }
                Err(e) => {
                    record.record("error.type", e.kind().as_str());
                }
            }
            let (r, next) = out?;
            Ok((r, next, start.elapsed()))
        }
        .instrument(span),
    )
}

impl DriverService {
    /// Starts a paged read of `req`, decoding rows as `T`. Fails early (no
    /// stream) when the statement cannot be prepared.
    pub async fn stream<T>(&self, req: CqlRequest) -> Result<RowStream<T>, CqlError>
    where
        T: for<'f, 'm> DeserializeRow<'f, 'm> + Send + 'static,
    {
        let stmt = Arc::new(self.inner.resolve(&req, None).await?);
        let values = req.values().clone();
        let fetching = Some(fetch(
            self.inner.clone(),
            stmt.clone(),
            values.clone(),
            PagingState::start(),
            req.meta(),
            0,
        ));
        Ok(RowStream {
            inner: self.inner.clone(),
            stmt,
            values,
            meta: req.meta().clone(),
            rows: Vec::new().into_iter(),
            fetching,
            pages: 0,
            total_rows: 0,
            started: Instant::now(),
            done: false,
        })
    }
}

impl<T> RowStream<T> {
    /// Pages fetched so far.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Rows handed out so far.
    pub fn rows(&self) -> u64 {
        self.total_rows
    }

    fn finish(&mut self, end: StreamEnd<'_>) {
        if self.done {
            return;
        }
        self.done = true;
        self.fetching = None;
        self.inner.collectors.emit(Event::Stream(StreamEvent {
            meta: &self.meta,
            pages: self.pages,
            rows: self.total_rows,
            duration: self.started.elapsed(),
            end,
        }));
    }
}

impl<T> Stream for RowStream<T>
where
    T: for<'f, 'm> DeserializeRow<'f, 'm> + Send + Unpin + 'static,
{
    type Item = Result<T, CqlError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(row) = this.rows.next() {
                this.total_rows += 1;
                return Poll::Ready(Some(Ok(row)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let Some(fut) = this.fetching.as_mut() else {
                this.finish(StreamEnd::Finished);
                return Poll::Ready(None);
            };
            let page = std::task::ready!(fut.as_mut().poll(cx));
            this.fetching = None;
            let (result, next, duration) = match page {
                Ok(p) => p,
                Err(e) => {
                    this.finish(StreamEnd::Failed(&e));
                    return Poll::Ready(Some(Err(e)));
                }
            };
            let node = Some(result.request_coordinator().connection_address());
            let decoded: Result<Vec<T>, CqlError> = result
                .into_rows_result()
                .map_err(|e| {
                    CqlError::new(
                        ErrorKind::Deserialization,
                        format!("the statement returned no rows: {e}"),
                    )
                })
                .and_then(|rows| {
                    rows.rows::<T>()
                        .map_err(|e| {
                            CqlError::new(
                                ErrorKind::Deserialization,
                                format!("the rows do not match the requested type: {e}"),
                            )
                        })?
                        .map(|r| {
                            r.map_err(|e| {
                                CqlError::new(
                                    ErrorKind::Deserialization,
                                    format!("a row could not be read: {e}"),
                                )
                            })
                        })
                        .collect()
                });
            let rows = match decoded {
                Ok(r) => r,
                Err(e) => {
                    this.finish(StreamEnd::Failed(&e));
                    return Poll::Ready(Some(Err(e)));
                }
            };
            this.inner.collectors.emit(Event::Page(PageEvent {
                meta: &this.meta,
                page: this.pages,
                rows: rows.len(),
                duration,
                node,
            }));
            this.pages += 1;
            this.rows = rows.into_iter();
            // one page ahead: ask for the next while this one is consumed
            if let PagingStateResponse::HasMorePages { state } = next {
                this.fetching = Some(fetch(
                    this.inner.clone(),
                    this.stmt.clone(),
                    this.values.clone(),
                    state,
                    &this.meta,
                    this.pages,
                ));
            }
        }
    }
}

impl<T> Drop for RowStream<T> {
    fn drop(&mut self) {
        if !self.done {
            self.finish(StreamEnd::Dropped);
        }
    }
}
