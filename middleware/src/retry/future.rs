//! The [`Retry`](super::Retry) service's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_cql_core::event::{Event, RetryEvent, ThrottleEvent};
use tower_cql_core::{AttemptReason, CqlError, CqlRequest, CqlResponse, RetryAdvice, clock};
use tower_service::Service;

use super::budget::Charge;
use super::policy::{Decision, StopReason};
use super::{BUDGET_LIMITER, Shared};

pin_project! {
    /// The response future of [`Retry`](super::Retry): runs the attempts,
    /// with their backoffs, until one succeeds or the policy stops (a
    /// pass-through's is the inner future alone).
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
        Retrying {
            #[pin]
            attempts: Attempts<S, F>,
            shared: Arc<Shared>,
        },
        PassThrough {
            #[pin]
            future: F,
        },
    }
}

pin_project! {
    /// The attempts of one request: the retry loop, which the layer's own
    /// future and the stack's lean future both run (the policy, budget
    /// and collectors it uses are passed to each poll, by whichever holds
    /// them).
    pub(crate) struct Attempts<S, F> {
        // The request, kept to clone for retries; its meta carries the
        // index and reason of the latest attempt.
        request: CqlRequest,
        // A clone of the inner service, polled ready before each retry:
        // made at the first retry from the prototype `poll_with` is given,
        // when not given at the start (most requests never retry).
        service: Option<S>,
        // Calls made so far (1 once the first is made): what the policy
        // counts.
        attempts: u32,
        // Attempts the failed calls made, as their errors say: a hedge's
        // race every attempt it started, a call refused before sending
        // none. What the response and the error report.
        made: u32,
        // Speculative attempts the layers inside (a hedge) started for
        // the attempts that failed (their errors say how many).
        speculative: u32,
        // The request's deadline on the Tokio clock.
        deadline: Option<Instant>,
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // An attempt is running.
        Called {
            #[pin]
            future: F,
        },
        // Waiting out the backoff before the next attempt (the timer
        // boxed: inline, its 112 bytes were in every request's future,
        // though only a retry waits); `charge`: the retry's, given back
        // to the budget if it is dropped before the retry is made
        Backoff {
            sleep: Pin<Box<Sleep>>,
            charge: Option<Charge>,
        },
        // Waiting for the inner service to be ready for the next attempt
        // (its charge, as in `Backoff`).
        Ready {
            charge: Option<Charge>,
        },
    }
}

impl Shared {
    /// A request's start: deposited in the budget, and its deadline on
    /// the Tokio clock, which the backoff sleeps on.
    #[inline(always)]
    pub(crate) fn begin(&self, request: &CqlRequest) -> Option<Instant> {
        let now = clock::now();
        self.policy.budget().deposit_at(now);
        request
            .meta()
            .remaining_at(now.into_std())
            .map(|left| now + left)
    }
}

impl<S> ResponseFuture<S>
where
    S: Service<CqlRequest>,
{
    pub(super) fn new(
        request: CqlRequest,
        future: S::Future,
        service: S,
        shared: Arc<Shared>,
        deadline: Option<Instant>,
    ) -> ResponseFuture<S> {
        ResponseFuture {
            kind: Kind::Retrying {
                attempts: Attempts::new(request, future, Some(service), deadline),
                shared,
            },
        }
    }

    pub(super) fn pass_through(future: S::Future) -> ResponseFuture<S> {
        ResponseFuture {
            kind: Kind::PassThrough { future },
        }
    }
}

impl<S, F> Attempts<S, F> {
    /// The attempts of `request`, whose first attempt is `future`; the
    /// retries call `service` (`None`: a clone of the prototype
    /// [`poll_with`](Self::poll_with) is given, made at the first retry).
    #[inline(always)]
    pub(crate) fn new(
        request: CqlRequest,
        future: F,
        service: Option<S>,
        deadline: Option<Instant>,
    ) -> Attempts<S, F> {
        Attempts {
            request,
            service,
            attempts: 1,
            made: 0,
            speculative: 0,
            deadline,
            state: State::Called { future },
        }
    }
}

impl<S, F> Attempts<S, F> {
    /// The request, kept for retries (its meta names the latest attempt).
    pub(crate) fn request_mut(self: Pin<&mut Self>) -> &mut CqlRequest {
        self.project().request
    }

    /// What the attempts made so far, for a request dropped before they
    /// ended: the attempts of the calls that failed (as their errors
    /// said), and whether a call is in flight (not while waiting out a
    /// backoff or for the service to be ready).
    pub(crate) fn so_far(&self) -> (u32, bool) {
        (self.made, matches!(self.state, State::Called { .. }))
    }
}

impl<S, F> fmt::Debug for Attempts<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Called { .. } => "called",
            State::Backoff { .. } => "backoff",
            State::Ready { .. } => "ready",
        };
        f.debug_struct("Attempts")
            .field("attempts", &self.attempts)
            .field("deadline", &self.deadline)
            .field("state", &state)
            .finish()
    }
}

impl<S> fmt::Debug for ResponseFuture<S>
where
    S: Service<CqlRequest>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Retrying { attempts, .. } => attempts.fmt(f),
            Kind::PassThrough { .. } => f
                .debug_struct("ResponseFuture")
                .field("state", &"pass_through")
                .finish(),
        }
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<CqlRequest, Response = CqlResponse, Error = CqlError> + Clone,
{
    type Output = Result<CqlResponse, CqlError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Retrying { attempts, shared } => attempts.poll_with(cx, shared, None),
            KindProj::PassThrough { future } => future.poll(cx),
        }
    }
}

impl<S, F> Attempts<S, F>
where
    S: Service<CqlRequest, Response = CqlResponse, Error = CqlError, Future = F> + Clone,
    F: Future<Output = Result<CqlResponse, CqlError>>,
{
    /// Runs the attempts with `shared`'s policy, budget and collectors;
    /// a first retry clones `proto` for the service the retries call when
    /// none was given at the start.
    pub(crate) fn poll_with(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        shared: &Shared,
        proto: Option<&S>,
    ) -> Poll<Result<CqlResponse, CqlError>> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let err = match ready!(future.poll(cx)) {
                        Ok(mut resp) => {
                            let info = resp.info_mut();
                            // the failed calls' attempts and this call's
                            // (a hedge's race: every attempt it started)
                            info.attempts = *this.made + info.attempts.max(1);
                            // the earlier races' speculative attempts too
                            info.speculative += *this.speculative;
                            return Poll::Ready(Ok(resp));
                        }
                        Err(err) => err,
                    };
                    *this.speculative += err.speculative();
                    *this.made += err.attempts();
                    match after_error(
                        shared,
                        this.request,
                        (*this.attempts, *this.made),
                        *this.deadline,
                        err,
                    ) {
                        AfterError::Stop(err) => {
                            return Poll::Ready(Err(with_speculative(err, *this.speculative)));
                        }
                        AfterError::Now(charge) => this.state.set(State::Ready {
                            charge: Some(charge),
                        }),
                        AfterError::At(at, charge) => this.state.set(State::Backoff {
                            sleep: Box::pin(tokio::time::sleep_until(at)),
                            charge: Some(charge),
                        }),
                    }
                }
                StateProj::Backoff { sleep, charge } => {
                    ready!(sleep.as_mut().poll(cx));
                    let charge = charge.take();
                    this.state.set(State::Ready { charge });
                }
                StateProj::Ready { charge } => {
                    let service = match this.service {
                        Some(service) => service,
                        None => this.service.insert(
                            proto
                                .expect("attempts made without a service are given a prototype")
                                .clone(),
                        ),
                    };
                    if let Err(err) = ready!(service.poll_ready(cx)) {
                        let err = with_attempts(err, *this.made);
                        return Poll::Ready(Err(with_speculative(err, *this.speculative)));
                    }
                    *this.attempts += 1;
                    // made: the budget keeps it
                    if let Some(charge) = charge.take() {
                        charge.spend();
                    }
                    let future = service.call(this.request.clone());
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

/// What the retries do after a failed attempt.
enum AfterError {
    /// Return this error.
    Stop(CqlError),
    /// Make the next attempt now (its charge to the budget).
    Now(Charge),
    /// Make it at this time.
    At(Instant, Charge),
}

/// The policy's decision on a failed attempt, with its events: a stop
/// (and its throttle event when the budget is spent), or the next
/// attempt's index and route set on `request` and its retry event. Out of
/// line: most attempts succeed, and their poll runs only the few
/// instructions around it.
#[cold]
#[inline(never)]
fn after_error(
    shared: &Shared,
    request: &mut CqlRequest,
    (attempts, made): (u32, u32),
    deadline: Option<Instant>,
    err: CqlError,
) -> AfterError {
    let now = clock::now();
    let decision = shared
        .policy
        .decide(request.meta(), &err, attempts, now, deadline);
    let (delay, advice) = match decision {
        Decision::Stop(reason) => {
            if reason == StopReason::BudgetExhausted {
                let collectors = &shared.collectors;
                if collectors.is_active() {
                    collectors.emit(Event::Throttle(ThrottleEvent::new(
                        request.meta(),
                        BUDGET_LIMITER,
                        Duration::ZERO,
                        true,
                        0,
                    )));
                }
            }
            tracing::debug!(
                reason = reason.as_str(),
                error = tower_cql_core::classify::error_type(&err),
                attempts,
                "not retrying"
            );
            return AfterError::Stop(with_attempts(err, made));
        }
        Decision::Retry { delay, advice } => (delay, advice),
    };
    // granted at `now`: given back if the retry is never made
    let charge = Charge::granted(shared.policy.budget(), now);
    // The next attempt's index follows every attempt made so far, the ones
    // the layers inside made for the last one included (a hedge's
    // speculative attempts: its error says how many it made).
    let index = request.meta().attempt_index() + err.attempts().max(1);
    let meta = request.meta_mut();
    meta.set_attempt(index, AttemptReason::Retry);
    // Where the retry goes, as the classifier advised: back to the node
    // that failed, or to another one first, when there is one.
    if let Some(node) = err.node() {
        let hint = meta.route_hint();
        match advice {
            RetryAdvice::RetrySameNode => hint.return_to(index, node),
            _ => hint.avoid(node),
        }
    }
    let collectors = &shared.collectors;
    if collectors.is_active() {
        collectors.emit(Event::Retry(RetryEvent::new(
            request.meta(),
            index,
            delay,
            &err,
        )));
    }
    if delay.is_zero() {
        AfterError::Now(charge)
    } else {
        AfterError::At(now + delay, charge)
    }
}

/// Records on the error how many attempts were made for all of this
/// layer's calls, speculative ones included (the sum of what their errors
/// said; the error is not wrapped, and left as it is when it already says
/// so: a first-attempt error says 1), as a successful response's
/// [`ExecutionInfo::attempts`](tower_cql_core::ExecutionInfo::attempts)
/// adds the earlier calls' to the last one's.
fn with_attempts(err: CqlError, attempts: u32) -> CqlError {
    if err.attempts() != attempts {
        err.with_attempts(attempts)
    } else {
        err
    }
}

/// Records on the error the speculative attempts started for all of this
/// layer's attempts (the sum of what their errors said), as a successful
/// response's [`ExecutionInfo::speculative`](tower_cql_core::ExecutionInfo::speculative)
/// adds the earlier ones to the last race's.
fn with_speculative(err: CqlError, speculative: u32) -> CqlError {
    if err.speculative() != speculative {
        err.with_speculative(speculative)
    } else {
        err
    }
}
