//! The response future of [`RateLimit`](super::RateLimit): where a request
//! waits for its token.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_cql_core::{CqlError, CqlRequest, clock};
use tower_service::Service;

use super::Shared;
use super::bucket::Reservation;
use crate::wait::{self, Timer};

pin_project! {
    /// A request's way through the limit:
    /// - admitted (at once, or once its token is due): the inner service's
    ///   future;
    /// - waiting: for its reserved token, or, when the next token is due
    ///   after the request's deadline, for the deadline (then it fails
    ///   with `DeadlineExceeded`); the inner service (polled ready before
    ///   `call`) is called when the token is due;
    /// - refused: the error, at once.
    ///
    /// Dropped while waiting, it gives its token back (unless a later
    /// token was reserved since: see the module docs) and emits its
    /// throttle event (`rejected`: it did not get through).
    pub struct ResponseFuture<S>
    where
        S: Service<CqlRequest>,
    {
        #[pin]
        state: State<S, S::Future>,
    }

    impl<S> PinnedDrop for ResponseFuture<S>
    where
        S: Service<CqlRequest>,
    {
        fn drop(this: Pin<&mut Self>) {
            if let StateProj::Waiting { waiting, .. } = this.project().state.project()
                && let Some(w) = waiting.take()
            {
                // the caller stopped waiting: it did not get through (its
                // reservation, dropped with it, gives the token back)
                w.shared.emit(&w.req, clock::since(w.since), true);
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F> {
        Waiting {
            // until the token is due, or until the deadline
            #[pin]
            timer: Timer,
            // `None` once taken out to call or fail
            waiting: Option<Waiting<S>>,
        },
        Called {
            #[pin]
            future: F,
        },
        Refused { error: Option<CqlError> },
        Done,
    }
}

/// What a waiting request holds.
struct Waiting<S> {
    shared: Arc<Shared>,
    /// The inner service, polled ready before `call`.
    service: S,
    req: CqlRequest,
    since: Instant,
    /// The token, due when the timer fires; `None`: the timer is the
    /// request's deadline, and no token comes before it.
    reservation: Option<Reservation>,
}

impl<S: Service<CqlRequest>> ResponseFuture<S> {
    pub(crate) fn called(future: S::Future) -> ResponseFuture<S> {
        ResponseFuture {
            state: State::Called { future },
        }
    }

    /// Waits from `since` until `until`, then calls `service` (ready) with
    /// `req` using `reservation`, or fails for the deadline without one.
    pub(crate) fn waiting(
        shared: Arc<Shared>,
        service: S,
        req: CqlRequest,
        since: Instant,
        until: Instant,
        reservation: Option<Reservation>,
    ) -> ResponseFuture<S> {
        ResponseFuture {
            state: State::Waiting {
                timer: Timer::new(Some(until)),
                waiting: Some(Waiting {
                    shared,
                    service,
                    req,
                    since,
                    reservation,
                }),
            },
        }
    }

    pub(crate) fn refused(error: CqlError) -> ResponseFuture<S> {
        ResponseFuture {
            state: State::Refused { error: Some(error) },
        }
    }
}

impl<S: Service<CqlRequest>> fmt::Debug for ResponseFuture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "waiting",
            State::Called { .. } => "called",
            State::Refused { .. } => "refused",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, R> Future for ResponseFuture<S>
where
    S: Service<CqlRequest, Response = R, Error = CqlError>,
{
    type Output = Result<R, CqlError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                StateProj::Waiting { timer, waiting } => {
                    ready!(timer.poll_elapsed(cx));
                    let Waiting {
                        shared,
                        mut service,
                        req,
                        since,
                        reservation,
                    } = waiting.take().expect("waiting until taken out");
                    let waited = clock::since(since);
                    match reservation {
                        Some(token) => {
                            token.keep();
                            shared.emit(&req, waited, false);
                            State::Called {
                                future: service.call(req),
                            }
                        }
                        None => {
                            shared.emit(&req, waited, true);
                            State::Refused {
                                error: Some(wait::deadline_exceeded(
                                    "rate limit",
                                    "a token",
                                    waited,
                                )),
                            }
                        }
                    }
                }
                StateProj::Called { future } => return future.poll(cx),
                StateProj::Refused { error } => {
                    let error = error
                        .take()
                        .expect("ResponseFuture polled after completion");
                    state.set(State::Done);
                    return Poll::Ready(Err(error));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            };
            state.set(next);
        }
    }
}
