//! The metrics layer's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_cql_core::event::{Event, RequestEvent};
use tower_cql_core::{Collectors, CqlError, CqlResponse, RequestMeta};

pin_project! {
    /// Times the inner call and emits the request event when it completes.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        meta: Option<RequestMeta>,
        collectors: Collectors,
        start: Instant,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: F,
        meta: Option<RequestMeta>,
        collectors: Collectors,
    ) -> ResponseFuture<F> {
        ResponseFuture {
            inner,
            meta,
            collectors,
            start: Instant::now(),
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("start", &self.start)
            .finish()
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<CqlResponse, CqlError>>,
{
    type Output = Result<CqlResponse, CqlError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        if let Some(meta) = this.meta.take() {
            let duration = this.start.elapsed();
            let event = match &out {
                Ok(resp) => RequestEvent {
                    meta: &meta,
                    duration,
                    error: None,
                    attempts: resp.info().attempts.max(1),
                    speculative: resp.info().speculative,
                    rows: resp.info().rows,
                    node: resp.info().coordinator,
                },
                Err(e) => RequestEvent {
                    meta: &meta,
                    duration,
                    error: Some(e),
                    attempts: e.attempts(),
                    speculative: 0,
                    rows: 0,
                    node: e.node(),
                },
            };
            this.collectors.emit(Event::Request(event));
        }
        Poll::Ready(out)
    }
}
