//! The future of a layer that either calls the inner service or refuses
//! the request at once (the rate limit, the load shedder).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_cql_core::CqlError;

pin_project! {
    /// The inner service's future, or the refusal of a request the layer
    /// did not admit.
    pub struct RefusableFuture<F> {
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

impl<F> RefusableFuture<F> {
    pub(crate) fn called(future: F) -> RefusableFuture<F> {
        RefusableFuture {
            kind: Kind::Called { future },
        }
    }

    pub(crate) fn refused(error: CqlError) -> RefusableFuture<F> {
        RefusableFuture {
            kind: Kind::Refused { error: Some(error) },
        }
    }
}

impl<F> fmt::Debug for RefusableFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Called { .. } => "called",
            Kind::Refused { .. } => "refused",
        };
        f.debug_struct("RefusableFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, R> Future for RefusableFuture<F>
where
    F: Future<Output = Result<R, CqlError>>,
{
    type Output = Result<R, CqlError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future } => future.poll(cx),
            KindProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .expect("RefusableFuture polled after completion"))),
        }
    }
}
