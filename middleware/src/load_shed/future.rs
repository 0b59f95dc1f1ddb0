//! The response future of [`LoadShed`](super::LoadShed): the inner
//! service's future, or the refusal of a shed request (see the
//! [module docs](super) for an example).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_cql_core::CqlError;

pin_project! {
    /// The response future of [`LoadShed`](super::LoadShed): the inner
    /// service's future, or the refusal of a request shed because the
    /// inner service was not ready.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F },
        Refused { error: Option<CqlError> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(future: F) -> ResponseFuture<F> {
        ResponseFuture {
            kind: Kind::Called { future },
        }
    }

    pub(crate) fn refused(error: CqlError) -> ResponseFuture<F> {
        ResponseFuture {
            kind: Kind::Refused { error: Some(error) },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Called { .. } => "called",
            Kind::Refused { .. } => "refused",
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
            KindProj::Called { future } => future.poll(cx),
            KindProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}
