//! The server trace layer's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_cql_core::{CqlError, CqlResponse, RequestMeta};

use super::Shared;
use super::fetch::Job;

pin_project! {
    /// On completion, queues the trace of a traced request for the
    /// background fetch and feeds the slow rule; a pass-through's future
    /// only polls the inner one.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Watched {
            #[pin]
            inner: F,
            shared: Arc<Shared>,
            // the traced request's meta, for its trace's event
            traced: Option<RequestMeta>,
            // with the slow rule on: the operation and when the call began
            slow: Option<(u64, Instant)>,
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
        shared: Arc<Shared>,
        traced: Option<RequestMeta>,
        slow: Option<(u64, Instant)>,
    ) -> ResponseFuture<F> {
        ResponseFuture {
            kind: Kind::Watched {
                inner,
                shared,
                traced,
                slow,
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
        let state = match &self.kind {
            Kind::Watched { traced, .. } if traced.is_some() => "traced",
            Kind::Watched { .. } => "watched",
            Kind::PassThrough { .. } => "pass_through",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<CqlResponse, CqlError>>,
{
    type Output = Result<CqlResponse, CqlError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (inner, shared, traced, slow) = match self.project().kind.project() {
            KindProj::PassThrough { inner } => return inner.poll(cx),
            KindProj::Watched {
                inner,
                shared,
                traced,
                slow,
            } => (inner, shared, traced, slow),
        };
        let out = ready!(inner.poll(cx));
        if let Some((key, start)) = slow.take() {
            shared.sampler.observe(key, start.elapsed());
        }
        if let Some(meta) = traced.take()
            && let Ok(resp) = &out
            && let Some(id) = resp.info().tracing_id
        {
            shared.fetcher.enqueue(Job { id, meta });
        }
        Poll::Ready(out)
    }
}
