//! The response future of [`ConcurrencyLimit`](super::ConcurrencyLimit)
//! and [`AdaptiveConcurrency`](super::AdaptiveConcurrency): where a
//! request waits in the queue.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::time::Instant;
use tower_cql_core::{CqlError, CqlRequest, ErrorKind, clock};
use tower_service::Service;

use super::slots::{Core, Permit, QueueSlot};
use crate::wait::{self, End, Timer};

pin_project! {
    /// A request's way through the limit:
    /// - admitted (at once, or after queueing): the inner service's future,
    ///   holding its slot until it completes or is dropped (under the
    ///   adaptive limit it also reports the outcome and latency to the
    ///   algorithm when it completes);
    /// - queued: waiting for a slot, until the queue timeout or the
    ///   request's deadline, whichever is sooner; the inner service (polled
    ///   ready before `call`) is called once a slot is taken;
    /// - refused: the error, at once.
    ///
    /// Dropped while queued, it leaves the queue and emits its throttle
    /// event (`rejected`: it did not get through). Dropped while in
    /// flight under the adaptive limit, it tells the algorithm (see
    /// [`adaptive`](super::adaptive)).
    /// A pass-through's is the inner future alone.
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
            match this.project().state.project() {
                StateProj::Queued { queued, .. } => {
                    if let Some(q) = queued.take() {
                        // the caller stopped waiting: it did not get through
                        let depth = q.core.queued().saturating_sub(1);
                        q.core.emit(&q.req, clock::since(q.since), true, depth);
                    }
                }
                // in flight, given up on by its caller: the adaptive
                // limit hears of it (its slot is freed after this)
                StateProj::Called {
                    permit: Some(permit),
                    started: Some(started),
                    ..
                } => {
                    if let Some(aimd) = &permit.core().adaptive {
                        aimd.on_dropped(permit.core(), *started);
                    }
                }
                _ => {}
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F> {
        Queued {
            // registered on the core's `Notify` (enabled on first poll and
            // after each wake, before the count is checked again)
            #[pin]
            notified: OwnedNotified,
            armed: bool,
            // the sooner of the queue timeout and the deadline
            #[pin]
            timer: Timer,
            end: End,
            // `None` once taken out to call or refuse
            queued: Option<Queued<S>>,
        },
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
        Done,
    }
}

/// What a queued request holds.
struct Queued<S> {
    core: Arc<Core>,
    slot: QueueSlot,
    /// The inner service, polled ready before `call`.
    service: S,
    req: CqlRequest,
    since: Instant,
}

impl<S: Service<CqlRequest>> ResponseFuture<S> {
    pub(crate) fn called(future: S::Future, permit: Permit) -> ResponseFuture<S> {
        let started = permit.core().adaptive.is_some().then(Instant::now);
        ResponseFuture {
            state: State::Called {
                future,
                permit: Some(permit),
                started,
            },
        }
    }

    /// Waits for a slot in the queue place `slot`, from `since` until
    /// `end`, then calls `service` (ready) with `req`.
    pub(crate) fn queued(
        core: Arc<Core>,
        slot: QueueSlot,
        service: S,
        req: CqlRequest,
        since: Instant,
        end: Option<(Instant, End)>,
    ) -> ResponseFuture<S> {
        ResponseFuture {
            state: State::Queued {
                notified: core.notify.clone().notified_owned(),
                armed: false,
                timer: Timer::new(end.map(|(at, _)| at)),
                end: end.map_or(End::Limit, |(_, e)| e),
                queued: Some(Queued {
                    core,
                    slot,
                    service,
                    req,
                    since,
                }),
            },
        }
    }

    pub(crate) fn refused(error: CqlError) -> ResponseFuture<S> {
        ResponseFuture {
            state: State::Refused { error: Some(error) },
        }
    }

    pub(crate) fn pass_through(future: S::Future) -> ResponseFuture<S> {
        ResponseFuture {
            state: State::PassThrough { future },
        }
    }
}

impl<S: Service<CqlRequest>> fmt::Debug for ResponseFuture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Queued { .. } => "queued",
            State::Called {
                permit: Some(_), ..
            } => "in_flight",
            State::Called { permit: None, .. } | State::Done => "done",
            State::Refused { .. } => "refused",
            State::PassThrough { .. } => "pass_through",
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
                StateProj::Queued {
                    mut notified,
                    armed,
                    timer,
                    end,
                    queued,
                } => {
                    let q = queued.as_ref().expect("queued until taken out");
                    if !*armed {
                        notified.as_mut().enable();
                        *armed = true;
                    }
                    if let Some(permit) = q.core.acquire_queued() {
                        let Queued {
                            core,
                            slot,
                            mut service,
                            req,
                            since,
                        } = queued.take().expect("checked above");
                        // the others still waiting (this one leaves the queue)
                        let depth = core.queued().saturating_sub(1);
                        drop(slot);
                        core.emit(&req, clock::since(since), false, depth);
                        let started = core.adaptive.is_some().then(Instant::now);
                        State::Called {
                            future: service.call(req),
                            permit: Some(permit),
                            started,
                        }
                    } else if notified.as_mut().poll(cx).is_ready() {
                        // woken: register again, then check again
                        let fresh = q.core.notify.clone().notified_owned();
                        notified.set(fresh);
                        *armed = false;
                        continue;
                    } else {
                        ready!(timer.poll_elapsed(cx));
                        let Queued {
                            core,
                            slot,
                            req,
                            since,
                            ..
                        } = queued.take().expect("checked above");
                        let waited = clock::since(since);
                        let depth = core.queued().saturating_sub(1);
                        drop(slot);
                        core.emit(&req, waited, true, depth);
                        let error = match *end {
                            End::Deadline => {
                                wait::deadline_exceeded(core.limiter, "a slot", waited)
                            }
                            End::Limit => {
                                let timeout = core.queue_timeout.map_or_else(String::new, |t| {
                                    format!(" (queue_timeout {t:?})")
                                });
                                CqlError::new(
                                    ErrorKind::Shed,
                                    format!(
                                        "{}: timed out in the queue after {waited:?}{timeout}",
                                        core.limiter
                                    ),
                                )
                            }
                        };
                        State::Refused { error: Some(error) }
                    }
                }
                StateProj::Called {
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
                    return Poll::Ready(out);
                }
                StateProj::Refused { error } => {
                    let error = error
                        .take()
                        .expect("ResponseFuture polled after completion");
                    state.set(State::Done);
                    return Poll::Ready(Err(error));
                }
                StateProj::PassThrough { future } => return future.poll(cx),
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            };
            state.set(next);
        }
    }
}
