//! The [`Hedge`](super::Hedge) service's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_cql_core::cancel::{CancelReason, cancelling};
use tower_cql_core::{AttemptReason, CqlError, CqlRequest, CqlResponse, clock};
use tower_service::Service;

use super::delay::Observed;
use super::{MAX_SPECULATIVE, Shared};
use crate::retry::budget::Charge;

/// The most attempts one request can have running: the first and at most
/// [`MAX_SPECULATIVE`] speculative ones, each in a slot of its own.
const SLOTS: usize = 5;
const _: () = assert!(SLOTS == MAX_SPECULATIVE as usize + 1);

pin_project! {
    /// The response future of [`Hedge`](super::Hedge): the inner future
    /// itself for requests that are not hedged, else a race of attempts.
    ///
    /// The race (room for five attempts) is boxed, made only for a hedged
    /// request: the future of a request that is not hedged, and of a
    /// pass-through, is the size of the inner future, not five times it.
    pub struct ResponseFuture<S>
    where
        S: Service<CqlRequest>,
    {
        #[pin]
        kind: Kind<S, S::Future>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, F> {
        // Not an idempotent read: the inner future, untouched.
        PassThrough {
            #[pin]
            future: F,
        },
        Hedged {
            race: Pin<Box<Race<S, F>>>,
        },
    }
}

pin_project! {
    struct Race<S, F> {
        // The request, cloned for each speculative attempt.
        request: CqlRequest,
        // A clone of the inner service, polled ready before each
        // speculative attempt.
        service: S,
        shared: Arc<Shared>,
        delay: Duration,
        deadline: Option<Instant>,
        // When the next speculative attempt is due; `None`: no more.
        next_at: Option<Instant>,
        // Attempts started, the first included.
        started: u32,
        // Attempts still running.
        running: u32,
        // Whether the race's first attempt is still running (in slot 0:
        // it starts there, and a freed slot 0 is only refilled after it
        // ended).
        first_running: bool,
        // The budget's grant of the speculative attempt that is due (it
        // then waits only for the inner service): given back if the race
        // ends, or is dropped, before the attempt is made.
        charged: Option<Charge>,
        last_error: Option<CqlError>,
        #[pin]
        timer: Timer,
        #[pin]
        s0: Slot<F>,
        #[pin]
        s1: Slot<F>,
        #[pin]
        s2: Slot<F>,
        #[pin]
        s3: Slot<F>,
        #[pin]
        s4: Slot<F>,
    }
}

pin_project! {
    #[project = SlotProj]
    enum Slot<F> {
        Empty,
        Running {
            #[pin]
            future: F,
            started: Instant,
        },
    }
}

pin_project! {
    // Armed on the first poll (making a `Sleep` needs a runtime, which
    // `call` may not run in), then reset for each speculative attempt.
    #[project = TimerProj]
    enum Timer {
        Idle,
        Armed {
            #[pin]
            sleep: Sleep,
        },
    }
}

impl<S> ResponseFuture<S>
where
    S: Service<CqlRequest>,
{
    pub(super) fn passthrough(future: S::Future) -> ResponseFuture<S> {
        ResponseFuture {
            kind: Kind::PassThrough { future },
        }
    }

    pub(super) fn hedged(
        request: CqlRequest,
        first: S::Future,
        service: S,
        shared: Arc<Shared>,
        delay: Duration,
        now: Instant,
        deadline: Option<Instant>,
    ) -> ResponseFuture<S> {
        let next_at = before(now + delay, deadline);
        ResponseFuture {
            kind: Kind::Hedged {
                race: Box::pin(Race {
                    request,
                    service,
                    shared,
                    delay,
                    deadline,
                    next_at,
                    started: 1,
                    running: 1,
                    first_running: true,
                    charged: None,
                    last_error: None,
                    timer: Timer::Idle,
                    s0: Slot::Running {
                        future: first,
                        started: now,
                    },
                    s1: Slot::Empty,
                    s2: Slot::Empty,
                    s3: Slot::Empty,
                    s4: Slot::Empty,
                }),
            },
        }
    }
}

/// `at`, if it is before the deadline: no speculative attempt starts at or
/// past it.
fn before(at: Instant, deadline: Option<Instant>) -> Option<Instant> {
    match deadline {
        Some(d) if at >= d => None,
        _ => Some(at),
    }
}

impl<S> fmt::Debug for ResponseFuture<S>
where
    S: Service<CqlRequest>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::PassThrough { .. } => f
                .debug_struct("ResponseFuture")
                .field("hedged", &false)
                .finish(),
            Kind::Hedged { race } => f
                .debug_struct("ResponseFuture")
                .field("hedged", &true)
                .field("delay", &race.delay)
                .field("started", &race.started)
                .field("running", &race.running)
                .field("next_at", &race.next_at)
                .finish(),
        }
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<CqlRequest, Response = CqlResponse, Error = CqlError>,
{
    type Output = Result<CqlResponse, CqlError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::PassThrough { future } => future.poll(cx),
            KindProj::Hedged { race } => race.as_mut().poll(cx),
        }
    }
}

impl<S, F> Future for Race<S, F>
where
    S: Service<CqlRequest, Response = CqlResponse, Error = CqlError, Future = F>,
    F: Future<Output = Result<CqlResponse, CqlError>>,
{
    type Output = Result<CqlResponse, CqlError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut slots = [this.s0, this.s1, this.s2, this.s3, this.s4];
        loop {
            // Poll every running attempt; the first Ok wins.
            let mut winner = None;
            for (i, slot) in slots.iter_mut().enumerate() {
                let SlotProj::Running { future, started } = slot.as_mut().project() else {
                    continue;
                };
                let first = i == 0 && *this.first_running;
                match future.poll(cx) {
                    Poll::Pending => {}
                    Poll::Ready(Ok(resp)) => {
                        if first {
                            *this.first_running = false;
                            if this.shared.source.learns() {
                                this.shared
                                    .source
                                    .observe(Observed::Answered, clock::since(*started));
                            }
                        }
                        winner = Some(resp);
                        break;
                    }
                    Poll::Ready(Err(err)) => {
                        if first {
                            *this.first_running = false;
                            if this.shared.source.learns() {
                                this.shared
                                    .source
                                    .observe(Observed::failed(&err), clock::since(*started));
                            }
                        }
                        slot.set(Slot::Empty);
                        *this.running -= 1;
                        *this.last_error = Some(err);
                    }
                }
            }
            if let Some(mut resp) = winner {
                // The first attempt lost: it is cancelled after running this
                // long, which says its latency is longer (module docs).
                if *this.first_running {
                    *this.first_running = false;
                    if this.shared.source.learns()
                        && let SlotProj::Running { started, .. } = slots[0].as_mut().project()
                    {
                        this.shared
                            .source
                            .observe(Observed::Censored, clock::since(*started));
                    }
                }
                // Cancel the losers now, not when the caller drops us,
                // telling them why (their attempt events say "lost race").
                cancelling(CancelReason::LostRace, || {
                    for slot in slots.iter_mut() {
                        slot.set(Slot::Empty);
                    }
                });
                *this.running = 0;
                *this.next_at = None;
                // a speculative attempt granted and not made: given back
                *this.charged = None;
                // every attempt the race started, as its error would say
                resp.info_mut().attempts = *this.started;
                resp.info_mut().speculative = *this.started - 1;
                return Poll::Ready(Ok(resp));
            }
            if *this.running == 0 {
                // Every attempt failed: the last error (retrying is the
                // retry layer's business, not a reason to hedge).
                *this.next_at = None;
                *this.charged = None;
                let err = this
                    .last_error
                    .take()
                    .expect("a finished attempt left its error");
                // It says how many attempts the race made, speculative ones
                // included (a retry layer above numbers its next attempt
                // after them: module docs, "Attempt indexes"), and how
                // many of them were speculative, as a response does.
                let err = if *this.started > 1 {
                    err.with_attempts(*this.started)
                        .with_speculative(*this.started - 1)
                } else {
                    err
                };
                return Poll::Ready(Err(err));
            }

            // Is a speculative attempt due?
            let Some(at) = *this.next_at else {
                return Poll::Pending;
            };
            match this.timer.as_mut().project() {
                TimerProj::Idle => this.timer.set(Timer::Armed {
                    sleep: tokio::time::sleep_until(at),
                }),
                TimerProj::Armed { sleep } => {
                    if sleep.deadline() != at {
                        sleep.reset(at);
                    }
                }
            }
            let TimerProj::Armed { sleep } = this.timer.as_mut().project() else {
                unreachable!("armed above");
            };
            if sleep.poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = clock::now();
            if this.deadline.is_some_and(|d| now >= d) {
                *this.next_at = None;
                return Poll::Pending;
            }
            // Charged once per speculative attempt, before waiting for the
            // inner service (as a retry is charged before its backoff).
            if this.charged.is_none() {
                let Some(charge) = this.shared.withdraw(this.request.meta()) else {
                    // Refused: no more speculative attempts for this
                    // request (the running ones go on). Trying again at the
                    // next delay would take the budget from requests that
                    // have had none.
                    *this.next_at = None;
                    return Poll::Pending;
                };
                *this.charged = Some(charge);
            }
            match this.service.poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(err)) => {
                    // The inner service failed: start no more speculative
                    // attempts, and let the ones running finish.
                    tracing::debug!(error = %err, "hedge: inner service failed, not hedging");
                    *this.next_at = None;
                    // not made: given back
                    *this.charged = None;
                    return Poll::Pending;
                }
                Poll::Ready(Ok(())) => {}
            }
            let mut request = this.request.clone();
            let index = request.meta().attempt_index() + *this.started;
            request
                .meta_mut()
                .set_attempt(index, AttemptReason::Speculative);
            let future = this.service.call(request);
            // made: the budget keeps it
            if let Some(charge) = this.charged.take() {
                charge.spend();
            }
            let free = slots
                .iter_mut()
                .find(|s| matches!(s.as_ref().get_ref(), Slot::Empty))
                .expect("at most SLOTS attempts run at once");
            free.set(Slot::Running {
                future,
                started: now,
            });
            *this.started += 1;
            *this.running += 1;
            *this.next_at = if *this.started <= this.shared.max_speculative {
                before(now + *this.delay, *this.deadline)
            } else {
                None
            };
            // Poll the new attempt (and the others) again.
        }
    }
}
