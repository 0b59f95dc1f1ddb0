//! The response future of [`CircuitBreaker`](super::CircuitBreaker).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_cql_core::routing::RouteHint;
use tower_cql_core::{CqlError, CqlResponse};

use super::target::{Breakers, Probe, Target};

pin_project! {
    /// The inner service's future, whose outcome is recorded against its
    /// target when it completes (and whose half-open probe place, if it
    /// holds one, is given back then or when it is dropped); or the
    /// refusal of a request to an open target; or, from a pass-through,
    /// the inner future alone.
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
            breakers: Arc<Breakers>,
            table: Arc<Target>,
            hint: Arc<RouteHint>,
            probes: [Option<Probe>; 2],
        },
        Refused { error: Option<CqlError> },
        PassThrough {
            #[pin]
            future: F,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(
        future: F,
        breakers: Arc<Breakers>,
        table: Arc<Target>,
        hint: Arc<RouteHint>,
        probes: [Option<Probe>; 2],
    ) -> ResponseFuture<F> {
        ResponseFuture {
            kind: Kind::Called {
                future,
                breakers,
                table,
                hint,
                probes,
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
        match &self.kind {
            Kind::Called { table, probes, .. } => f
                .debug_struct("ResponseFuture")
                .field("table", table)
                .field("probe", &probes.iter().any(Option::is_some))
                .finish(),
            Kind::Refused { .. } => f
                .debug_struct("ResponseFuture")
                .field("state", &"refused")
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
        match self.project().kind.project() {
            KindProj::Called {
                future,
                breakers,
                table,
                hint,
                probes,
            } => {
                let out = ready!(future.poll(cx));
                breakers.complete(table, probes, hint, &out);
                // The probe places are free once the outcome is recorded.
                *probes = [None, None];
                Poll::Ready(out)
            }
            KindProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion"))),
            KindProj::PassThrough { future } => future.poll(cx),
        }
    }
}
