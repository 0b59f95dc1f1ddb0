//! The retry decision: whether, and after how long, to retry an error.
//!
//! The rules *which errors* may be retried are not here: they are
//! [`CqlError::retry_advice`], shared with every other layer. This policy
//! adds what only a retry layer knows: how many attempts were made, the
//! backoff, the deadline and the budget — checked in that order, the budget
//! last, so that a retry that would not be made anyway spends nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower_cql_core::{CqlError, RequestMeta, RetryAdvice};

use super::RetryConfig;
use super::backoff::Backoff;
use super::budget::RetryBudget;
use crate::config::ConfigError;

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Retry after `delay`. `advice` says where the error suggests the
    /// retry should go (see [`RetryPolicy`] on how that is honoured).
    Retry {
        /// The backoff before the retry.
        delay: Duration,
        /// [`CqlError::retry_advice`]: `RetrySameNode` or `RetryNextNode`.
        advice: RetryAdvice,
    },
    /// Return the error.
    Stop(StopReason),
}

/// Why a failed request is not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// [`CqlError::retry_advice`] said `DontRetry`: a retry cannot succeed,
    /// or could apply a write twice.
    NotRetryable,
    /// `max_attempts` attempts were made.
    AttemptsExhausted,
    /// The backoff would end at or after the request's deadline.
    Deadline,
    /// The retry budget is spent.
    BudgetExhausted,
}

impl StopReason {
    /// `"not_retryable"`, `"attempts_exhausted"`, `"deadline"`, `"budget_exhausted"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            StopReason::NotRetryable => "not_retryable",
            StopReason::AttemptsExhausted => "attempts_exhausted",
            StopReason::Deadline => "deadline",
            StopReason::BudgetExhausted => "budget_exhausted",
        }
    }
}

/// Decides retries: [`CqlError::retry_advice`], then `max_attempts`, the
/// deadline and the shared [`RetryBudget`]. Cheap to clone (the budget is
/// an `Arc`): every clone draws on the same budget.
///
/// ```
/// use std::time::Duration;
/// use tower_cql_core::{CqlError, CqlRequest, ErrorKind, RetryAdvice};
/// use tower_cql_middleware::retry::{Decision, RetryConfig, RetryPolicy, StopReason};
///
/// let policy = RetryPolicy::new(&RetryConfig::default())?;
/// let write = CqlRequest::query("INSERT INTO ks.t (k, v) VALUES (?, ?)"); // not idempotent
/// let now = tokio::time::Instant::now();
///
/// // Unavailable: the coordinator executed nothing, so even a write may be retried.
/// let unavailable = CqlError::new(ErrorKind::Unavailable, "2 of 3 replicas down");
/// match policy.decide(write.meta(), &unavailable, 1, now, None) {
///     Decision::Retry { advice, delay } => {
///         assert_eq!(advice, RetryAdvice::RetryNextNode);
///         assert!(delay <= Duration::from_millis(10));
///     }
///     other => panic!("{other:?}"),
/// }
/// // Overloaded or a write timeout: the write may be on some replicas, so a
/// // non-idempotent write is not retried.
/// let overloaded = CqlError::new(ErrorKind::Overloaded, "busy");
/// assert_eq!(
///     policy.decide(write.meta(), &overloaded, 1, now, None),
///     Decision::Stop(StopReason::NotRetryable)
/// );
/// let timeout = CqlError::new(ErrorKind::WriteTimeout, "slow replicas");
/// assert_eq!(
///     policy.decide(write.meta(), &timeout, 1, now, None),
///     Decision::Stop(StopReason::NotRetryable)
/// );
/// # Ok::<(), tower_cql_middleware::config::ConfigError>(())
/// ```
///
///
/// # Same node or next node
/// This policy cannot pick a node: the scylla driver's load-balancing
/// policy does, afresh for each call. The retry layer tells it where the
/// advice says, through the request's
/// [`RouteHint`](tower_cql_core::routing::RouteHint), which the driver
/// service's steering policy reads: after `RetryNextNode` (e.g.
/// `Unavailable`) the node that failed is avoided (tried last, while
/// another replica is there); after `RetrySameNode` (a read timeout with
/// the data present, an unprepared statement) the retry is sent back to
/// the node that failed ([`RouteHint::return_to`](tower_cql_core::routing::RouteHint::return_to)),
/// unless the breaker excludes it. An error that names no node leaves the
/// choice to the driver's policy. The advice is recoverable from every
/// [`RetryEvent`](tower_cql_core::event::RetryEvent): its `cause` is the
/// error, and `cause.retry_advice(meta.is_idempotent())` gives it back.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
    budget: Arc<RetryBudget>,
}

impl RetryPolicy {
    /// A policy for `config`, with a budget of its own.
    pub fn new(config: &RetryConfig) -> Result<RetryPolicy, ConfigError> {
        config.validate()?;
        Ok(RetryPolicy {
            max_attempts: config.max_attempts,
            backoff: config.backoff,
            budget: Arc::new(RetryBudget::new(&config.budget)?),
        })
    }

    /// The budget every clone of this policy draws on.
    pub fn budget(&self) -> &Arc<RetryBudget> {
        &self.budget
    }

    /// Total attempts allowed, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The backoff.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// What to do after `attempts` attempts (1 after the first) ended with
    /// `err`, at `now`, for a request that must be done by `deadline`.
    /// A `Retry` has been withdrawn from the budget, at `now` (the retry
    /// layer gives it back if its request is dropped before the retry is
    /// made).
    pub fn decide(
        &self,
        meta: &RequestMeta,
        err: &CqlError,
        attempts: u32,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Decision {
        let advice = err.retry_advice(meta.is_idempotent());
        if advice == RetryAdvice::DontRetry {
            return Decision::Stop(StopReason::NotRetryable);
        }
        if attempts >= self.max_attempts {
            return Decision::Stop(StopReason::AttemptsExhausted);
        }
        // retry index: 0 for the first retry
        let delay = self.backoff.delay(attempts.saturating_sub(1));
        if let Some(deadline) = deadline
            && now + delay >= deadline
        {
            return Decision::Stop(StopReason::Deadline);
        }
        if !self.budget.withdraw_at(now) {
            return Decision::Stop(StopReason::BudgetExhausted);
        }
        Decision::Retry { delay, advice }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::budget::BudgetConfig;
    use tower_cql_core::{CqlRequest, ErrorKind};

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy::new(&RetryConfig {
            max_attempts,
            ..RetryConfig::default()
        })
        .unwrap()
    }

    fn read() -> CqlRequest {
        CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").idempotent(true)
    }

    #[tokio::test(start_paused = true)]
    async fn advice_comes_from_the_error() {
        let p = policy(3);
        let now = Instant::now();
        let write = CqlRequest::query("INSERT INTO ks.t (k, v) VALUES (1, 2)");
        let idem_write = write.clone().idempotent(true);
        let wt = CqlError::new(ErrorKind::WriteTimeout, "x");
        assert_eq!(
            p.decide(write.meta(), &wt, 1, now, None),
            Decision::Stop(StopReason::NotRetryable)
        );
        assert!(matches!(
            p.decide(idem_write.meta(), &wt, 1, now, None),
            Decision::Retry {
                advice: RetryAdvice::RetryNextNode,
                ..
            }
        ));
        let syntax = CqlError::new(ErrorKind::Syntax, "x");
        assert_eq!(
            p.decide(read().meta(), &syntax, 1, now, None),
            Decision::Stop(StopReason::NotRetryable)
        );
        // An LWT marked idempotent is still not idempotent.
        let lwt = CqlRequest::query("UPDATE ks.t SET v = 1 WHERE k = 1 IF v = 0").idempotent(true);
        assert_eq!(
            p.decide(lwt.meta(), &wt, 1, now, None),
            Decision::Stop(StopReason::NotRetryable)
        );
        let unprepared = CqlError::new(ErrorKind::Unprepared, "x");
        assert!(matches!(
            p.decide(write.meta(), &unprepared, 1, now, None),
            Decision::Retry {
                advice: RetryAdvice::RetrySameNode,
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn max_attempts_counts_the_first() {
        let over = CqlError::new(ErrorKind::Overloaded, "x");
        let now = Instant::now();
        let p = policy(1);
        assert_eq!(
            p.decide(read().meta(), &over, 1, now, None),
            Decision::Stop(StopReason::AttemptsExhausted)
        );
        let p = policy(3);
        assert!(matches!(
            p.decide(read().meta(), &over, 2, now, None),
            Decision::Retry { .. }
        ));
        assert_eq!(
            p.decide(read().meta(), &over, 3, now, None),
            Decision::Stop(StopReason::AttemptsExhausted)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn never_sleeps_past_the_deadline() {
        let p = RetryPolicy::new(&RetryConfig {
            backoff: Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_millis(100),
            },
            max_attempts: 100,
            budget: BudgetConfig {
                ratio: 1000.0,
                min_per_second: 1_000_000,
                window: Duration::from_secs(10),
            },
        })
        .unwrap();
        let over = CqlError::new(ErrorKind::Overloaded, "x");
        let now = Instant::now();
        // the deadline has passed: whatever the draw, stop
        assert_eq!(
            p.decide(read().meta(), &over, 1, now, Some(now)),
            Decision::Stop(StopReason::Deadline)
        );
        // plenty of time: always retry, with a delay that ends before the deadline
        for _ in 0..100 {
            match p.decide(
                read().meta(),
                &over,
                1,
                now,
                Some(now + Duration::from_secs(1)),
            ) {
                Decision::Retry { delay, .. } => assert!(delay <= Duration::from_millis(100)),
                other => panic!("{other:?}"),
            }
        }
        // 50 ms left, delays up to 100 ms: some draws fit, the rest stop
        let mut outcomes = std::collections::HashSet::new();
        for _ in 0..200 {
            let d = p.decide(
                read().meta(),
                &over,
                1,
                now,
                Some(now + Duration::from_millis(50)),
            );
            if let Decision::Retry { delay, .. } = d {
                assert!(delay < Duration::from_millis(50));
            }
            outcomes.insert(matches!(d, Decision::Retry { .. }));
        }
        assert_eq!(outcomes.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_is_checked_last_and_shared_by_clones() {
        let p = RetryPolicy::new(&RetryConfig {
            budget: BudgetConfig {
                ratio: 0.5,
                min_per_second: 0,
                window: Duration::from_secs(10),
            },
            max_attempts: 3,
            ..RetryConfig::default()
        })
        .unwrap();
        let clone = p.clone();
        let over = CqlError::new(ErrorKind::Overloaded, "x");
        let syntax = CqlError::new(ErrorKind::Syntax, "x");
        let now = Instant::now();
        p.budget().deposit();
        p.budget().deposit();
        // a refusal for another reason spends nothing
        assert_eq!(
            p.decide(read().meta(), &syntax, 1, now, None),
            Decision::Stop(StopReason::NotRetryable)
        );
        assert_eq!(
            p.decide(read().meta(), &over, 3, now, None),
            Decision::Stop(StopReason::AttemptsExhausted)
        );
        assert_eq!(p.budget().retries_in_window(), 0);
        assert!(matches!(
            clone.decide(read().meta(), &over, 1, now, None),
            Decision::Retry { .. }
        ));
        assert_eq!(
            p.decide(read().meta(), &over, 1, now, None),
            Decision::Stop(StopReason::BudgetExhausted)
        );
    }
}
