//! What the limiters share about a wait inside a request: how the
//! request's deadline bounds it, and the timer that ends it.
//!
//! A limiter that cannot admit a request at once makes it wait in its
//! response future (the rate limit for its token, the concurrency limits
//! in their queue), so the wait is part of the request: inside the
//! metrics layer's latency and the `cql.request` span, and inside the
//! shutdown gate. The wait ends at the sooner of the limiter's own bound
//! (`max_wait`, `queue_timeout`) and the request's deadline; when the
//! deadline is the sooner (a tie counts as the deadline, the binding
//! constraint, as the timeout layer decides), the request fails with
//! [`ErrorKind::DeadlineExceeded`](tower_cql_core::ErrorKind::DeadlineExceeded)
//! at that moment, marked not sent.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_cql_core::{CqlError, CqlRequest};

/// What ends a wait that was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The limiter's own bound (`queue_timeout`).
    Limit,
    /// The request's deadline.
    Deadline,
}

/// The request's deadline on the Tokio clock (the clock the limiters
/// sleep on, paused in tests).
pub(crate) fn deadline(req: &CqlRequest) -> Option<Instant> {
    req.meta().deadline().map(Instant::from_std)
}

/// When a wait that began at `since` must end: the sooner of `since +
/// limit` and `deadline`, and which one it is.
pub(crate) fn end(
    since: Instant,
    limit: Option<Duration>,
    deadline: Option<Instant>,
) -> Option<(Instant, End)> {
    let limit = limit.map(|l| (since + l, End::Limit));
    let deadline = deadline.map(|d| (d, End::Deadline));
    match (limit, deadline) {
        (Some(l), Some(d)) => Some(if d.0 <= l.0 { d } else { l }),
        (l, d) => l.or(d),
    }
}

/// The error of a request whose deadline passed after it waited `waited`
/// for `what` (`"a token"`, `"a slot"`).
pub(crate) fn deadline_exceeded(limiter: &str, what: &str, waited: Duration) -> CqlError {
    CqlError::deadline_passed_before_sending(format!(
        "{limiter}: the request's deadline passed after it waited {waited:?} for {what}"
    ))
}

pin_project! {
    /// A timer for the end of a wait, made on its first poll (making a
    /// `Sleep` needs the runtime's timer, which `call` may be without) and
    /// then reused; without an end it never fires.
    #[project = TimerProj]
    pub(crate) enum Timer {
        Unarmed { at: Option<Instant> },
        Armed { #[pin] sleep: Sleep },
    }
}

impl Timer {
    pub(crate) fn new(at: Option<Instant>) -> Timer {
        Timer::Unarmed { at }
    }

    /// Ready once the end has come.
    pub(crate) fn poll_elapsed(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let TimerProj::Unarmed { at } = self.as_mut().project() {
            let Some(at) = *at else {
                return Poll::Pending;
            };
            self.set(Timer::Armed {
                sleep: tokio::time::sleep_until(at),
            });
        }
        match self.project() {
            TimerProj::Armed { sleep } => sleep.poll(cx),
            TimerProj::Unarmed { .. } => unreachable!("armed above"),
        }
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_sooner_end_wins_and_a_tie_is_the_deadline() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(end(t, None, None), None);
        assert_eq!(end(t, Some(ms(5)), None), Some((t + ms(5), End::Limit)));
        assert_eq!(
            end(t, None, Some(t + ms(5))),
            Some((t + ms(5), End::Deadline))
        );
        assert_eq!(
            end(t, Some(ms(5)), Some(t + ms(9))),
            Some((t + ms(5), End::Limit))
        );
        assert_eq!(
            end(t, Some(ms(9)), Some(t + ms(5))),
            Some((t + ms(5), End::Deadline))
        );
        assert_eq!(
            end(t, Some(ms(5)), Some(t + ms(5))),
            Some((t + ms(5), End::Deadline))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_fires_at_its_end_and_never_without_one() {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut never = Box::pin(Timer::new(None));
        assert!(never.as_mut().poll_elapsed(&mut cx).is_pending());
        let start = Instant::now();
        let mut timer = Box::pin(Timer::new(Some(start + Duration::from_millis(20))));
        assert!(timer.as_mut().poll_elapsed(&mut cx).is_pending());
        std::future::poll_fn(|cx| timer.as_mut().poll_elapsed(cx)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(20));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(never.as_mut().poll_elapsed(&mut cx).is_pending());
    }
}
