//! The metrics layer's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_cql_core::event::{Event, RequestEvent};
use tower_cql_core::{Collectors, CqlError, CqlResponse, ErrorKind, RequestMeta};

use crate::server_trace::{Shared, Watch};

pin_project! {
    /// Times the inner call and emits the request event when it completes,
    /// or, with a `Cancelled` error, when it is dropped before (the caller
    /// stopped waiting); a pass-through's future only polls the inner one.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let KindProj::Measured { meta, events, collectors, start, .. } = this.project().kind.project()
                && *events
                && let Some(meta) = meta.take()
            {
                let error = CqlError::new(
                    ErrorKind::Cancelled,
                    "the request was dropped before it completed (the caller stopped waiting)",
                );
                let mut event = RequestEvent::new(&meta, start.elapsed(), Some(&error));
                event.attempts = 0;
                collectors.emit(Event::Request(event));
            }
        }
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Measured {
            #[pin]
            inner: F,
            meta: Option<RequestMeta>,
            // whether `meta` was kept for a request event (the collectors
            // were active at the call), not only for server tracing
            events: bool,
            collectors: Collectors,
            start: Instant,
            // server-side tracing, when on: its sampler and fetcher, and
            // this request's bookkeeping
            server_trace: Option<(Arc<Shared>, Watch)>,
        },
        PassThrough {
            #[pin]
            inner: F,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: F,
        meta: Option<RequestMeta>,
        events: bool,
        collectors: Collectors,
        server_trace: Option<(Arc<Shared>, Watch)>,
    ) -> ResponseFuture<F> {
        ResponseFuture {
            kind: Kind::Measured {
                inner,
                meta,
                events,
                collectors,
                start: Instant::now(),
                server_trace,
            },
        }
    }

    pub(crate) fn pass_through(inner: F) -> ResponseFuture<F> {
        ResponseFuture {
            kind: Kind::PassThrough { inner },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Measured { start, .. } => f
                .debug_struct("ResponseFuture")
                .field("start", start)
                .finish(),
            Kind::PassThrough { .. } => f
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

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (inner, meta, events, collectors, start, server_trace) =
            match self.project().kind.project() {
                KindProj::PassThrough { inner } => return inner.poll(cx),
                KindProj::Measured {
                    inner,
                    meta,
                    events,
                    collectors,
                    start,
                    server_trace,
                } => (inner, meta, *events, collectors, start, server_trace),
            };
        let out = ready!(inner.poll(cx));
        let meta = meta.take();
        let server_trace = server_trace.take();
        if meta.is_none() && server_trace.is_none() {
            return Poll::Ready(out);
        }
        let duration = start.elapsed();
        if let Some(meta) = meta.as_ref().filter(|_| events) {
            let event = match &out {
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
                    e.node = err.node();
                    e
                }
            };
            collectors.emit(Event::Request(event));
        }
        // after the request event, which the span collectors turn into the
        // client span the server trace's spans are children of
        if let Some((st, watch)) = server_trace {
            st.end(watch, duration, meta, &out);
        }
        Poll::Ready(out)
    }
}
