//! The response future of [`Timeout`](super::Timeout).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use std::sync::Arc;
use tokio::time::{Instant, Sleep};

use tower_cql_core::cancel::{CancelReason, cancel_attempt};
use tower_cql_core::classify::NodeVerdict;
use tower_cql_core::routing::RouteHint;
use tower_cql_core::{CqlError, ErrorKind, clock};

use super::Limit;

pin_project! {
    /// The inner service's future raced against a timer held inline (no
    /// boxing: a timed attempt allocates nothing here); or the refusal of
    /// a request whose deadline had passed; or, with nothing to enforce,
    /// the inner future alone.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Racing {
            // `None` once the timer fired: dropped then, so the attempt
            // knows it was cancelled by the timeout.
            #[pin]
            future: Option<F>,
            // inline, not boxed: a box made every timed attempt (a
            // per-attempt timeout, a deadline) cost an allocation and its
            // free, 144 instructions, to spare untimed ones the moves of
            // these ~110 bytes, 22 (`hot_path.sh timed` / `stack`)
            #[pin]
            timer: Option<Sleep>,
            limit: Limit,
            started: Instant,
            // The request's route hint and the attempt's index: a
            // per-attempt timeout names the node it was waiting on and is
            // reported against it.
            route: Option<(Arc<RouteHint>, u32)>,
        },
        Failed { error: Option<CqlError> },
        PassThrough {
            #[pin]
            future: F,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        future: F,
        timer: Option<(Instant, Limit)>,
        started: Instant,
        route: Option<(Arc<RouteHint>, u32)>,
    ) -> ResponseFuture<F> {
        let (timer, limit) = match timer {
            Some((at, limit)) => (Some(tokio::time::sleep_until(at)), limit),
            None => (None, Limit::Deadline),
        };
        ResponseFuture {
            kind: Kind::Racing {
                future: Some(future),
                timer,
                limit,
                started,
                route,
            },
        }
    }

    pub(crate) fn failed(error: CqlError) -> ResponseFuture<F> {
        ResponseFuture {
            kind: Kind::Failed { error: Some(error) },
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
            Kind::Racing { timer, limit, .. } => f
                .debug_struct("ResponseFuture")
                .field("limit", limit)
                .field("until", &timer.as_ref().map(Sleep::deadline))
                .finish(),
            Kind::Failed { .. } => f
                .debug_struct("ResponseFuture")
                .field("state", &"failed")
                .finish(),
            Kind::PassThrough { .. } => f
                .debug_struct("ResponseFuture")
                .field("state", &"pass_through")
                .finish(),
        }
    }
}

impl<F, R> Future for ResponseFuture<F>
where
    F: Future<Output = Result<R, CqlError>>,
{
    type Output = Result<R, CqlError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Racing {
                future,
                timer,
                limit,
                started,
                route,
            } => {
                let mut future = future;
                let inner = future
                    .as_mut()
                    .as_pin_mut()
                    .expect("ResponseFuture polled after completion");
                if let Poll::Ready(out) = inner.poll(cx) {
                    return Poll::Ready(out);
                }
                let Some(timer) = timer.as_pin_mut() else {
                    return Poll::Pending;
                };
                if timer.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // Cancel the attempt here, telling it why (its event says so).
                let why = match *limit {
                    Limit::PerAttempt(_) => CancelReason::TimedOut,
                    Limit::Deadline => CancelReason::DeadlinePassed,
                };
                let told = cancel_attempt(why, || future.set(None));
                let elapsed = clock::since(*started);
                Poll::Ready(Err(match *limit {
                    Limit::PerAttempt(d) => {
                        let err = CqlError::new(
                            ErrorKind::ClientTimeout,
                            format!(
                                "the attempt timed out after {d:?} (per-attempt timeout); it may have been applied"
                            ),
                        );
                        // the node the attempt was waiting on: as the
                        // attempt told when dropped, else as the steering
                        // policy picked it
                        let node =
                            told.or_else(|| route.as_ref().and_then(|(h, i)| h.attempt_node(*i)));
                        match node {
                            Some(node) => {
                                if let Some((hint, _)) = route {
                                    hint.report(node, NodeVerdict::Failed);
                                }
                                err.with_node(node)
                            }
                            None => err,
                        }
                    }
                    Limit::Deadline => CqlError::new(
                        ErrorKind::DeadlineExceeded,
                        format!("the request's deadline passed {elapsed:?} into the attempt"),
                    ),
                }))
            }
            KindProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion"))),
            KindProj::PassThrough { future } => future.poll(cx),
        }
    }
}
