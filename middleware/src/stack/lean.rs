//! The lean composition's service and future: the request span, metrics
//! and retry layers run as one future around the attempts (attempt span,
//! timeout, the service), instead of three nested ones.
//!
//! Nested, each of the three layers builds its own future around the one
//! below and moves it into place, and each poll passes through three
//! levels; the layers' clones are three sets of reference counts. Here one
//! future holds what the three keep, built once in one box (so what the
//! stack returns, and its caller moves, is a pointer), and one `Arc`
//! holds what they read. The rules are the layers' own, not copies: the request span
//! is [`request_span_with_fields`] and [`record_outcome`] (or
//! [`record_cancelled`], dropped before it ended), the
//! measurement is [`On::begin`] and [`Measured`], the retry loop is
//! [`Attempts`] (each is what the layer's own future runs too). One thing
//! differs in how, not what: with retries, the request event borrows the
//! meta of the request the retries keep (put back as it was at the call,
//! see [`AtCall`]) where the metrics layer copies it. The tests
//! `the_lean_composition_observes_what_the_full_one_does` and
//! `..._with_layers_off_...` in the stack module check that outcomes,
//! events and spans are the nested layers'.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_cql_core::{AttemptReason, CqlError, CqlRequest, CqlResponse, RequestMeta};
use tower_service::Service;
use tracing::Span;

use crate::metrics::On;
use crate::metrics::future::Measured;
use crate::retry::Shared;
use crate::retry::future::Attempts;
use crate::trace::future::{OutcomeFields, record_cancelled, record_outcome};
use crate::trace::{TraceConfig, request_span_with_fields};

/// What the three outer layers of the lean composition read, each `None`
/// when its layer is off; and the attempt service the retries clone.
pub(super) struct Outer<A> {
    pub(super) trace: Option<TraceConfig>,
    pub(super) metrics: Option<On>,
    pub(super) retry: Option<Arc<Shared>>,
    /// The prototype a request's first retry clones for its attempts
    /// (never called itself). Cloned at each call instead, the service's
    /// reference counts were written and dropped for every request,
    /// though most never retry.
    pub(super) proto: A,
}

/// The lean composition: request span, metrics and retry around `A`, the
/// attempt service (attempt span and timeout around the driver service).
#[derive(Clone)]
pub struct LeanService<A> {
    outer: Arc<Outer<A>>,
    attempt: A,
}

impl<A: Clone> LeanService<A> {
    pub(super) fn new(
        trace: Option<TraceConfig>,
        metrics: Option<On>,
        retry: Option<Arc<Shared>>,
        attempt: A,
    ) -> LeanService<A> {
        LeanService {
            outer: Arc::new(Outer {
                trace,
                metrics,
                retry,
                proto: attempt.clone(),
            }),
            attempt,
        }
    }
}

impl<A: fmt::Debug> fmt::Debug for LeanService<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeanService")
            .field("trace", &self.outer.trace)
            .field("metrics", &self.outer.metrics.is_some())
            .field("retry", &self.outer.retry.is_some())
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl<A> Service<CqlRequest> for LeanService<A>
where
    A: Service<CqlRequest, Response = CqlResponse, Error = CqlError> + Clone,
{
    type Response = CqlResponse;
    type Error = CqlError;
    type Future = LeanFuture<A>;

    #[inline(always)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        self.attempt.poll_ready(cx)
    }

    /// The three layers' calls in their order: the request span is made
    /// (and entered for the rest), the request measured, then deposited
    /// in the retry budget and its first attempt called.
    #[inline(always)]
    fn call(&mut self, mut req: CqlRequest) -> LeanFuture<A> {
        let outer = &*self.outer;
        let (span, fields) = match &outer.trace {
            Some(config) => request_span_with_fields(req.meta(), config),
            None => (Span::none(), None),
        };
        let enter = span.enter();
        // with retries, the request is kept for them, and its meta is lent
        // to the request's end instead of copied for it
        let lent = outer.retry.is_some();
        let (measured, meta) = match &outer.metrics {
            Some(on) => {
                let (m, meta) = on.begin(&mut req, lent);
                (Some(m), meta)
            }
            None => (None, None),
        };
        let at_call = AtCall {
            attempt: (req.meta().attempt_index(), req.meta().attempt_reason()),
            routed: req.meta().route().is_some(),
        };
        let kind = match &outer.retry {
            Some(shared) => {
                let deadline = shared.begin(&req);
                let future = self.attempt.call(req.clone());
                // `self.attempt` was polled ready and is now used; a
                // first retry clones the prototype and polls it ready
                Kind::Retrying {
                    attempts: Attempts::new(req, future, None, deadline),
                }
            }
            None => Kind::Once {
                future: self.attempt.call(req),
                meta,
            },
        };
        drop(enter);
        LeanFuture(Box::pin(State {
            kind,
            measured,
            at_call,
            polled: false,
            outer: self.outer.clone(),
            span,
            fields,
        }))
    }
}

/// The lean composition's response future (see [`LeanService`]): a
/// handle to the request's state, which lives in one box.
///
/// The state (the request kept for retries, the attempt's future, the
/// measurement, the span) is about 600 bytes. Held inline, it was copied
/// whole at each level it was returned through and at the caller's
/// `.await`: about five `memcpy` calls of ~64 instructions a request.
/// Boxed, those moves are of a pointer; the box is one allocation of a
/// size the allocator's per-thread cache serves.
pub struct LeanFuture<A>(Pin<Box<State<A>>>)
where
    A: Service<CqlRequest>;

pin_project! {
    struct State<A>
    where
        A: Service<CqlRequest>,
    {
        // (a dropped request's own event is emitted by `drop` below,
        // before any field is dropped: its attempt, dropped with `kind`,
        // reports itself after it, as nested)
        #[pin]
        kind: Kind<A, A::Future>,
        // `None`: metrics off, or the request has completed
        measured: Option<Measured>,
        at_call: AtCall,
        // whether the future has been polled: a call is made at once, but
        // its attempt starts at its first poll
        polled: bool,
        outer: Arc<Outer<A>>,
        span: Span,
        // `None`: tracing off, or the outcome is recorded
        fields: Option<&'static OutcomeFields>,
    }

    impl<A> PinnedDrop for State<A>
    where
        A: Service<CqlRequest>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // the span first, as the trace layer (outermost) ends it
            if let Some(fields) = this.fields.take() {
                // (the request's span: its attempt's own span says where
                // it went)
                record_cancelled(this.span, fields, None);
            }
            // (checked before `take`, which copies the whole option out
            // even when it is `None`, as it is after the request completed)
            if this.measured.is_some()
                && let (Some(m), Some(on)) = (this.measured.take(), &this.outer.metrics)
            {
                dropped(m, on, this.kind, *this.at_call, *this.polled);
            }
        }
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<A, F> {
        Retrying {
            #[pin]
            attempts: Attempts<A, F>,
        },
        // retry off: the one attempt, and the copy of the request's meta
        // the measurement made for the request's end
        Once {
            #[pin]
            future: F,
            meta: Option<RequestMeta>,
        },
    }
}

/// What the retries change in the meta of the request they keep: its
/// attempt, and its route hint (made by the first retry that steers
/// toward or away from a node). Restored before the meta is lent to the
/// request's end, so the request event sees the meta the metrics layer
/// saw at the call.
#[derive(Clone, Copy)]
struct AtCall {
    attempt: (u32, AttemptReason),
    routed: bool,
}

/// The event of a request dropped before it ended (out of line: most
/// requests end, and their drop runs only the check before it).
#[cold]
#[inline(never)]
fn dropped<A, F>(m: Measured, on: &On, kind: Pin<&mut Kind<A, F>>, at_call: AtCall, polled: bool) {
    let attempts = made(kind.as_ref(), polled);
    m.dropped(on.collectors(), lend(kind, at_call), attempts);
}

/// The attempts a request dropped before it ended had started: those
/// of the calls the retries saw fail (as their errors said), and the call
/// in flight, one attempt (no hedge in this composition) once polled
/// (`polled`): the attempt service starts it at its first poll, and it
/// reports itself `cancelled` as it is dropped. As many as the request's
/// attempt events, read from what the retries keep: no count shared with
/// the attempts, and nothing on the request's path.
fn made<A, F>(kind: Pin<&Kind<A, F>>, polled: bool) -> u32 {
    let (failed, in_flight) = match kind.get_ref() {
        Kind::Retrying { attempts } => attempts.so_far(),
        Kind::Once { .. } => (0, true),
    };
    failed + u32::from(in_flight && polled)
}

/// The request's meta as it was at the call: from the request the
/// retries keep, or, without retries, the copy the measurement made.
fn lend<A, F>(kind: Pin<&mut Kind<A, F>>, at_call: AtCall) -> Option<&RequestMeta> {
    match kind.project() {
        KindProj::Retrying { attempts } => {
            let meta = attempts.request_mut().meta_mut();
            meta.set_attempt(at_call.attempt.0, at_call.attempt.1);
            if !at_call.routed {
                meta.clear_route();
            }
            Some(meta)
        }
        KindProj::Once { meta, .. } => meta.as_ref(),
    }
}

impl<A> fmt::Debug for LeanFuture<A>
where
    A: Service<CqlRequest>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = &*self.0;
        let mut d = f.debug_struct("LeanFuture");
        if let Kind::Retrying { attempts } = &state.kind {
            d.field("attempts", attempts);
        }
        d.field("span", &state.span).finish()
    }
}

impl<A> Future for LeanFuture<A>
where
    A: Service<CqlRequest, Response = CqlResponse, Error = CqlError> + Clone,
{
    type Output = Result<CqlResponse, CqlError>;

    #[inline(always)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl<A> Future for State<A>
where
    A: Service<CqlRequest, Response = CqlResponse, Error = CqlError> + Clone,
{
    type Output = Result<CqlResponse, CqlError>;

    /// Polls the attempts inside the request span, then ends the request
    /// as the layers do, innermost first: its event (and server trace),
    /// then its span's outcome.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _enter = this.span.enter();
        *this.polled = true;
        let outer = &**this.outer;
        let mut kind = this.kind;
        let out = ready!(match kind.as_mut().project() {
            KindProj::Retrying { attempts } => {
                let shared = outer
                    .retry
                    .as_deref()
                    .expect("a lean future retries only when the retry layer is on");
                attempts.poll_with(cx, shared, Some(&outer.proto))
            }
            KindProj::Once { future, .. } => future.poll(cx),
        });
        if let Some(on) = &outer.metrics
            && let Some(m) = this.measured.take()
        {
            m.finish(on.collectors(), &out, lend(kind, *this.at_call));
        }
        if let Some(fields) = this.fields.take() {
            record_outcome(this.span, fields, &out);
        }
        Poll::Ready(out)
    }
}
