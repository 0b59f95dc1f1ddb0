//! The response future of [`ConcurrencyLimit`](super::ConcurrencyLimit)
//! and [`AdaptiveConcurrency`](super::AdaptiveConcurrency).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_cql_core::CqlError;

use super::Permit;

pin_project! {
    /// The inner service's future holding its slot (freed when it completes
    /// or is dropped), or the refusal of a request that got no slot. Under
    /// the adaptive limit it also reports the outcome and latency to the
    /// algorithm when it completes. A pass-through's is the inner future
    /// alone.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called {
            #[pin]
            future: F,
            permit: Option<Permit>,
            // When the call started (adaptive limit only).
            started: Option<Instant>,
        },
        Refused { error: Option<CqlError> },
        PassThrough {
            #[pin]
            future: F,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(future: F, permit: Permit) -> ResponseFuture<F> {
        let started = permit.core().adaptive.is_some().then(Instant::now);
        ResponseFuture {
            kind: Kind::Called {
                future,
                permit: Some(permit),
                started,
            },
        }
    }

    pub(crate) fn refused(error: CqlError) -> ResponseFuture<F> {
        ResponseFuture {
            kind: Kind::Refused { error: Some(error) },
        }
    }

    pub(crate) fn pass_through(future: F) -> ResponseFuture<F> {
        ResponseFuture {
            kind: Kind::PassThrough { future },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Called {
                permit: Some(_), ..
            } => "in_flight",
            Kind::Called { permit: None, .. } => "done",
            Kind::Refused { .. } => "refused",
            Kind::PassThrough { .. } => "pass_through",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, R> Future for ResponseFuture<F>
where
    F: Future<Output = Result<R, CqlError>>,
{
    type Output = Result<R, CqlError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                future,
                permit,
                started,
            } => {
                let out = ready!(future.poll(cx));
                if let Some(permit) = permit.take() {
                    if let (Some(aimd), Some(started)) = (&permit.core().adaptive, *started) {
                        aimd.on_complete(permit.core(), started, out.as_ref().err());
                    }
                    drop(permit); // the slot is free before the caller sees the result
                }
                Poll::Ready(out)
            }
            KindProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion"))),
            KindProj::PassThrough { future } => future.poll(cx),
        }
    }
}
