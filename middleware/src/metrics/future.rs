//! The metrics layer's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_cql_core::event::{Event, RequestEvent};
use tower_cql_core::{Collectors, CqlError, CqlResponse, ErrorKind, RequestMeta};

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
            if let KindProj::Measured { meta, collectors, start, .. } = this.project().kind.project()
                && let Some(meta) = meta.take()
                && collectors.is_active()
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
            collectors: Collectors,
            start: Instant,
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
        collectors: Collectors,
    ) -> ResponseFuture<F> {
        ResponseFuture {
            kind: Kind::Measured {
                inner,
                meta,
                collectors,
                start: Instant::now(),
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
        let (inner, meta, collectors, start) = match self.project().kind.project() {
            KindProj::PassThrough { inner } => return inner.poll(cx),
            KindProj::Measured {
                inner,
                meta,
                collectors,
                start,
            } => (inner, meta, collectors, start),
        };
        let out = ready!(inner.poll(cx));
        if let Some(meta) = meta.take() {
            let duration = start.elapsed();
            let event = match &out {
                Ok(resp) => {
                    let mut e = RequestEvent::new(&meta, duration, None);
                    e.attempts = resp.info().attempts.max(1);
                    e.speculative = resp.info().speculative;
                    e.rows = resp.info().rows;
                    e.node = resp.info().coordinator;
                    e.tracing_id = resp.info().tracing_id;
                    e
                }
                Err(err) => {
                    let mut e = RequestEvent::new(&meta, duration, Some(err));
                    e.attempts = err.attempts();
                    e.node = err.node();
                    e
                }
            };
            collectors.emit(Event::Request(event));
        }
        Poll::Ready(out)
    }
}
