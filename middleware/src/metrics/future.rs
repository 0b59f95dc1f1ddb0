//! The metrics layer's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_cql_core::event::{Event, RequestEvent};
use tower_cql_core::{
    AttemptTally, Collectors, CqlError, CqlResponse, ErrorKind, RequestMeta, clock,
};

use crate::server_trace::{Shared, Watch};

pin_project! {
    /// Times the inner call and emits the request event when it completes,
    /// or, with a `Cancelled` error, when it is dropped before (the caller
    /// stopped waiting); a pass-through's future only polls the inner one.
    pub struct ResponseFuture<F> {
        // the inner future is a field of its own, not inside an enum with
        // the bookkeeping: made in place, it is moved once fewer per
        // request (each move copies the whole future below this layer)
        #[pin]
        inner: F,
        // `None`: a pass-through, or the request has completed; with the
        // copy of the request's meta `On::begin` made (for its event or
        // its server trace), and the tally the driver service counts the
        // request's attempts in (read if it is dropped: the layers below,
        // which count them too, are generic, and dropped after this)
        measured: Option<(Measured, Collectors, Option<RequestMeta>, AttemptTally)>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let measured = this.project().measured;
            // (checked before `take`, which copies the whole option out
            // even when it is `None`, as it is after the request completed)
            if measured.is_some()
                && let Some((m, collectors, meta, tally)) = measured.take()
            {
                m.dropped(&collectors, meta.as_ref(), tally.started());
            }
        }
    }
}

/// One request's measurement, from its call to its end: what the metrics
/// layer's future and the stack's lean future keep. The collectors are
/// passed in by whichever holds them, and so is the request's meta: a
/// copy [`On::begin`] made, or lent by whichever keeps the request (kept
/// apart from this, a lean future whose retries keep the request holds no
/// room for a copy it never makes).
///
/// [`On::begin`]: super::On::begin
pub(crate) struct Measured {
    start: Instant,
    // server-side tracing, when on: its sampler and fetcher, and this
    // request's bookkeeping
    server_trace: Option<(Arc<Shared>, Watch)>,
}

impl Measured {
    #[inline(always)]
    pub(crate) fn new(server_trace: Option<(Arc<Shared>, Watch)>) -> Measured {
        Measured {
            start: clock::now(),
            server_trace,
        }
    }

    /// The request ended with `out`: its event, then its server trace.
    /// `meta`: the request's meta as it was at the call (see
    /// [`On::begin`](super::On::begin)).
    #[inline(always)]
    pub(crate) fn finish(
        self,
        collectors: &Collectors,
        out: &Result<CqlResponse, CqlError>,
        meta: Option<&RequestMeta>,
    ) {
        let Measured {
            start,
            server_trace,
        } = self;
        let duration = end_of(start, out);
        if let Some(meta) = meta {
            let mut event = match out {
                Ok(resp) => {
                    let mut e = RequestEvent::new(meta, duration, None);
                    e.attempts = resp.info().attempts.max(1);
                    e.speculative = resp.info().speculative;
                    e.rows = resp.info().rows;
                    e.node = resp.info().coordinator;
                    e.tracing_id = resp.info().tracing_id;
                    e
                }
                Err(err) => {
                    let mut e = RequestEvent::new(meta, duration, Some(err));
                    e.attempts = err.attempts();
                    e.speculative = err.speculative();
                    e.node = err.node();
                    e
                }
            };
            event.started = Some(start.into_std());
            collectors.emit(Event::Request(event));
        }
        // after the request event, which the span collectors turn into the
        // client span the server trace's spans are children of
        if let Some((st, watch)) = server_trace {
            // (copied only for a traced request, which keeps it until its
            // trace is fetched)
            let meta = meta.filter(|_| watch.traced()).cloned();
            st.end(watch, duration, meta, out);
        }
    }

    /// The request was dropped before it ended: a `Cancelled` request
    /// event (`meta` as in [`finish`](Self::finish)) saying `attempts`,
    /// the attempts it had started (each reports itself, outcome
    /// `cancelled` for the one in flight, as it is dropped after this).
    pub(crate) fn dropped(
        self,
        collectors: &Collectors,
        meta: Option<&RequestMeta>,
        attempts: u32,
    ) {
        if let Some((st, watch)) = &self.server_trace {
            st.dropped(*watch);
        }
        if let Some(meta) = meta {
            let error = CqlError::new(
                ErrorKind::Cancelled,
                "the request was dropped before it completed (the caller stopped waiting)",
            );
            let mut event = RequestEvent::new(meta, clock::since(self.start), Some(&error));
            event.started = Some(self.start.into_std());
            event.attempts = attempts;
            collectors.emit(Event::Request(event));
        }
    }
}

/// A request's latency: from its call to the end of the driver's attempt
/// that answered it ([`CqlResponse::attempt_ended`], the reading that
/// attempt's latency ends at, taken in this same poll), or to now for an
/// error or a response the driver did not make. What the layers between
/// do with the response after the driver is done (no waiting: nanoseconds)
/// is not in it; a second clock reading was. A request answered by the
/// attempt it started with (the same reading: see
/// [`clock`](tower_cql_core::clock)) has that attempt's latency, taken
/// as it is rather than computed again.
#[inline(always)]
fn end_of(start: Instant, out: &Result<CqlResponse, CqlError>) -> Duration {
    if let Ok(resp) = out
        && let Some(started) = resp.attempt_started()
    {
        if started == start {
            return resp.info().attempt_latency;
        }
        if let Some(ended) = resp.attempt_ended()
            && ended >= start
        {
            return ended - start;
        }
    }
    clock::since(start)
}

impl<F> ResponseFuture<F> {
    #[inline(always)]
    pub(crate) fn new(
        inner: F,
        (measured, meta): (Measured, Option<RequestMeta>),
        collectors: Collectors,
        tally: AttemptTally,
    ) -> ResponseFuture<F> {
        ResponseFuture {
            inner,
            measured: Some((measured, collectors, meta, tally)),
        }
    }

    pub(crate) fn pass_through(inner: F) -> ResponseFuture<F> {
        ResponseFuture {
            inner,
            measured: None,
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.measured {
            Some((m, ..)) => f
                .debug_struct("ResponseFuture")
                .field("start", &m.start)
                .finish(),
            None => f
                .debug_struct("ResponseFuture")
                .field("state", &"pass_through")
                .finish(),
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<CqlResponse, CqlError>>,
{
    type Output = Result<CqlResponse, CqlError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.measured.is_none() {
            return this.inner.poll(cx);
        }
        let out = ready!(this.inner.poll(cx));
        if let Some((m, collectors, meta, _)) = this.measured.take() {
            m.finish(&collectors, &out, meta.as_ref());
        }
        Poll::Ready(out)
    }
}
