//! Retries with backoff, a deadline and a retry budget, following the
//! retry rules of [`CqlError::retry_advice`].
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_cql_core::{
//!     Collector, Collectors, CqlError, CqlRequest, CqlResponse, ErrorKind, ExecutionInfo, InMemoryCollector,
//! };
//! use tower_cql_middleware::retry::{RetryConfig, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let memory = Arc::new(InMemoryCollector::new());
//! let collectors = Collectors::with([memory.clone()]);
//! let layer = RetryLayer::new(RetryConfig { max_attempts: 3, ..RetryConfig::default() }, collectors);
//!
//! // A stand-in for the driver service: overloaded twice, then fine.
//! let calls = Arc::new(AtomicU32::new(0));
//! let driver = service_fn({
//!     let calls = calls.clone();
//!     move |_req: CqlRequest| {
//!         let n = calls.fetch_add(1, Ordering::Relaxed);
//!         async move {
//!             if n < 2 {
//!                 Err(CqlError::new(ErrorKind::Overloaded, "busy"))
//!             } else {
//!                 Ok(CqlResponse::synthetic(ExecutionInfo { attempts: 1, ..Default::default() }))
//!             }
//!         }
//!     }
//! });
//! let svc = layer.layer(driver);
//!
//! // Overloaded may come after some replicas took a write: retried only
//! // for an idempotent request.
//! let write = CqlRequest::query("INSERT INTO ks.t (k, v) VALUES (?, ?)").bind((1, 2)).idempotent(true);
//! let resp = svc.oneshot(write).await?;
//! assert_eq!(resp.info().attempts, 3); // max_attempts, the first included
//! assert_eq!(calls.load(Ordering::Relaxed), 3);
//! assert_eq!(memory.snapshot().retries_total(), 2);
//! # Ok(()) }
//! ```
//!
//! # What is retried
//! An error is retried only if the one classifier
//! ([`tower_cql_core::classify`], whose module docs have the rule table)
//! allows it for the request's
//! [`is_idempotent`](tower_cql_core::RequestMeta::is_idempotent): errors
//! that mean "not executed" (unavailable, bootstrapping, never sent)
//! always; errors after which the request may have been applied on some
//! replica (overloaded, write timeouts and failures, server errors,
//! client timeouts, broken connections) only for idempotent requests;
//! errors a retry cannot fix never. Then, in order:
//! - at most [`RetryConfig::max_attempts`] attempts, the first included;
//! - the backoff ([`Backoff`]): exponential, full jitter;
//! - the deadline: a retry whose backoff would end at or after the
//!   request's [`deadline`](tower_cql_core::RequestMeta::deadline) is not
//!   made, so the layer never sleeps past it;
//! - the budget ([`RetryBudget`]): retries are at most a fraction of
//!   recent requests, across every request of every clone of the service
//!   (and, in the stack, together with the hedge layer's speculative
//!   attempts, which draw on the same budget). A retry the budget refuses
//!   is reported as a [`ThrottleEvent`](tower_cql_core::event::ThrottleEvent)
//!   with the limiter `"retry_budget"`, rejected. A retry is charged when
//!   it is scheduled, before its backoff; a request dropped before the
//!   retry is made (during the backoff, or while the inner service is not
//!   ready) gives it back.
//!
//! When the layer stops it returns the last error as it came, not wrapped;
//! only its [`attempts`](CqlError::attempts) count is set.
//! Where a retry goes follows the advice: back to the node that failed
//! (`RetrySameNode`), or to another node first (`RetryNextNode`), through
//! the request's route hint: see [`RetryPolicy`], "Same node or next node".
//!
//! # Events
//! Before each backoff the layer emits a
//! [`RetryEvent`](tower_cql_core::event::RetryEvent) with the index of the
//! attempt to come, the delay and the error that caused it. The attempts
//! themselves are reported by the driver service, whose attempt events
//! carry the index and reason ([`AttemptReason::Retry`]) this layer sets on
//! the request with [`RequestMeta::set_attempt`](tower_cql_core::RequestMeta::set_attempt).
//! A retry's index follows every attempt made before it, the ones the
//! layers inside made included: a failed attempt's error says in
//! [`CqlError::attempts`] how many it took (more than one when the hedge
//! layer below raced speculative attempts), so every attempt of a request
//! has an index of its own (see [hedge](crate::hedge#attempt-indexes)).
//! A successful response's [`ExecutionInfo::attempts`](tower_cql_core::ExecutionInfo::attempts),
//! and a final error's [`CqlError::attempts`], is the number of attempts
//! this layer made.
//!
//! # Order
//! The stack's default order puts retry inside the limits and outside
//! hedging: tracing → metrics → shed / breaker → rate / concurrency limits
//! → **retry** → hedge → per-attempt timeout → driver. A request then
//! takes its limiter permit once for all its attempts (the budget, not the
//! limiter, bounds the extra load retries make), the metrics layer sees one
//! request however many attempts it took, and every retry may be hedged.
//!
//! [`AttemptReason::Retry`]: tower_cql_core::AttemptReason::Retry

use crate::config::ConfigError;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_cql_core::{Collectors, CqlError, CqlRequest, CqlResponse};
use tower_service::Service;

pub mod backoff;
pub mod budget;
pub mod future;
mod layer;
#[cfg(test)]
pub(crate) mod mock;
mod policy;

pub use self::backoff::Backoff;
pub use self::budget::{BudgetConfig, RetryBudget};
pub use self::future::ResponseFuture;
pub use self::layer::RetryLayer;
pub use self::policy::{Decision, RetryPolicy, StopReason};

/// Retry settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Total attempts, the first included (default 4: with 10% of
    /// attempts refused by an overloaded node, 0.01% of idempotent
    /// requests fail, where 3 would leave 0.1%; the retries add about 11%
    /// to the load then, within the default budget of 20%). At least 1;
    /// 1 turns retries off.
    pub max_attempts: u32,
    /// The delay before each retry.
    pub backoff: Backoff,
    /// The budget all requests' retries share.
    pub budget: BudgetConfig,
}

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            max_attempts: 4,
            backoff: Backoff::default(),
            budget: BudgetConfig::default(),
        }
    }
}

impl RetryConfig {
    /// Rejects settings that cannot work, naming the field and what is
    /// allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new(
                "retry.max_attempts",
                "must be at least 1 (the first attempt counts), got 0",
            ));
        }
        self.backoff.validate()?;
        self.budget.validate()
    }
}

/// The limiter named by the throttle event of a retry the budget refused.
pub(crate) const BUDGET_LIMITER: &str = "retry_budget";

/// What every clone of a [`Retry`] shares: the policy (with its budget)
/// and where events go.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) policy: RetryPolicy,
    pub(crate) collectors: Collectors,
}

/// Retries failed requests (see the [module docs](self)). Made by
/// [`RetryLayer`]; clones share the budget.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    /// `None`: a pass-through.
    shared: Option<Arc<Shared>>,
}

impl<S> Retry<S> {
    /// Wraps `inner` with `policy`, emitting events into `collectors`.
    pub fn new(inner: S, policy: RetryPolicy, collectors: Collectors) -> Retry<S> {
        Retry {
            inner,
            shared: Some(Arc::new(Shared { policy, collectors })),
        }
    }

    /// What requests share (`None`: a pass-through), without the inner
    /// service.
    pub(crate) fn into_shared(self) -> Option<Arc<Shared>> {
        self.shared
    }

    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Retry<S> {
        Retry {
            inner,
            shared: Some(shared),
        }
    }

    /// A service that makes one attempt and only forwards to `inner` (see
    /// [`toggle`](crate::toggle)): no budget, no clone of `inner`, no
    /// clock read, and the response or error is the inner one untouched.
    pub fn pass_through(inner: S) -> Retry<S> {
        Retry {
            inner,
            shared: None,
        }
    }

    /// Whether this service passes requests through without retrying.
    pub fn is_pass_through(&self) -> bool {
        self.shared.is_none()
    }

    /// The policy. A [pass-through](Retry::pass_through)'s is a policy of
    /// one attempt (`max_attempts: 1`) with a budget of its own.
    pub fn policy(&self) -> &RetryPolicy {
        match &self.shared {
            Some(shared) => &shared.policy,
            None => single_attempt(),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<CqlRequest> for Retry<S>
where
    S: Service<CqlRequest, Response = CqlResponse, Error = CqlError> + Clone,
{
    type Response = CqlResponse;
    type Error = CqlError;
    type Future = ResponseFuture<S>;

    /// The inner service's readiness.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        self.inner.poll_ready(cx)
    }

    #[inline(always)]
    fn call(&mut self, request: CqlRequest) -> ResponseFuture<S> {
        let Some(shared) = &self.shared else {
            return ResponseFuture::pass_through(self.inner.call(request));
        };
        let deadline = shared.begin(&request);
        let future = self.inner.call(request.clone());
        // `self.inner` was polled ready and is now used; the clone is
        // polled ready again before each retry.
        let service = self.inner.clone();
        ResponseFuture::new(request, future, service, shared.clone(), deadline)
    }
}

/// The policy a pass-through reports: one attempt.
fn single_attempt() -> &'static RetryPolicy {
    static POLICY: std::sync::OnceLock<RetryPolicy> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| {
        RetryPolicy::new(&RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        })
        .expect("one attempt with the default backoff and budget is valid")
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::{Layer, ServiceExt};
    use tower_cql_core::{AttemptReason, ErrorKind};

    use super::mock::{Mock, Recorder, fail, ok};
    use super::*;
    use tokio::time::Instant;

    const MS: Duration = Duration::from_millis(1);

    fn read() -> CqlRequest {
        CqlRequest::query("SELECT v FROM ks.t WHERE k = ?")
            .bind((1i32,))
            .idempotent(true)
    }

    fn write() -> CqlRequest {
        CqlRequest::query("INSERT INTO ks.t (k, v) VALUES (?, ?)").bind((1i32, 2i32))
    }

    /// A budget that never runs out.
    fn unlimited() -> BudgetConfig {
        BudgetConfig {
            ratio: 1000.0,
            min_per_second: 1_000_000,
            window: Duration::from_secs(10),
        }
    }

    fn layer(config: RetryConfig) -> (RetryLayer, Arc<Recorder>) {
        let (recorder, collectors) = Recorder::new();
        (RetryLayer::new(config, collectors), recorder)
    }

    #[tokio::test(start_paused = true)]
    async fn recovers_from_overloaded_and_reports_attempts() {
        let mock = Mock::new([
            fail(ErrorKind::Overloaded, MS),
            fail(ErrorKind::Overloaded, MS),
            ok(MS),
        ]);
        let (layer, recorder) = layer(RetryConfig::default());
        let resp = layer.layer(mock.clone()).oneshot(read()).await.unwrap();
        assert_eq!(resp.info().attempts, 3);
        let calls = mock.calls();
        let seen: Vec<_> = calls.iter().map(|c| (c.index, c.reason)).collect();
        assert_eq!(
            seen,
            [
                (0, AttemptReason::Initial),
                (1, AttemptReason::Retry),
                (2, AttemptReason::Retry)
            ]
        );
        // one retry event per retry, before its backoff, naming the cause
        let events = recorder.retries();
        assert_eq!(events.len(), 2);
        for (i, (attempt, delay, cause, meta_index, reason)) in events.into_iter().enumerate() {
            let attempt_index = i as u32 + 1;
            assert_eq!(attempt, attempt_index);
            assert_eq!(cause, ErrorKind::Overloaded);
            assert_eq!((meta_index, reason), (attempt_index, AttemptReason::Retry));
            // the next call came after the attempt (1 ms) and the backoff
            // (Tokio's timer rounds a deadline up to the next millisecond)
            let gap = calls[i + 1].at - calls[i].at;
            assert!(
                gap >= MS + delay && gap <= 2 * MS + delay,
                "{gap:?} {delay:?}"
            );
        }
    }

    /// A read timeout whose data replica was the one late (`data_late`:
    /// every replica required answered, the data not among them), which
    /// the classifier advises on the same node; otherwise one short of
    /// replicas, advised on the next.
    fn read_timeout(data_late: bool) -> CqlError {
        use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
        CqlError::from_execution(ExecutionError::LastAttemptError(
            RequestAttemptError::DbError(
                DbError::ReadTimeout {
                    consistency: scylla::statement::Consistency::Quorum,
                    received: if data_late { 2 } else { 1 },
                    required: 2,
                    data_present: false,
                },
                "read timeout".into(),
            ),
        ))
    }

    /// Where a retry goes follows the classifier's advice (README, "Retry
    /// rules"): after an error advised on the next node (`Overloaded`, a
    /// read timeout short of replicas) the failed node is avoided; after
    /// one advised on the same node (a read timeout whose data replica was
    /// late, `Unprepared`) the retry is not steered away from it but sent
    /// back to it (the route hint names the node for the retry's index).
    #[tokio::test(start_paused = true)]
    async fn a_retry_goes_to_the_node_the_advice_names() {
        use super::mock::fail_with;
        use tower_cql_core::RetryAdvice;
        let node: std::net::SocketAddr = "10.0.0.7:9042".parse().unwrap();
        for (first, advice) in [
            (read_timeout(true), RetryAdvice::RetrySameNode),
            (
                CqlError::new(ErrorKind::Unprepared, "unprepared"),
                RetryAdvice::RetrySameNode,
            ),
            (read_timeout(false), RetryAdvice::RetryNextNode),
            (
                CqlError::new(ErrorKind::Overloaded, "busy"),
                RetryAdvice::RetryNextNode,
            ),
        ] {
            let first = first.with_node(node);
            let kind = first.kind();
            assert_eq!(first.retry_advice(true), advice, "{kind}");
            let mock = Mock::new([fail_with(first, MS), ok(MS)]);
            let (layer, _) = layer(RetryConfig::default());
            layer.layer(mock.clone()).oneshot(read()).await.unwrap();
            let calls = mock.calls();
            assert_eq!(calls.len(), 2, "{kind}");
            let avoided = calls[1].route.as_ref().is_some_and(|h| h.avoids(node));
            assert_eq!(
                avoided,
                advice == RetryAdvice::RetryNextNode,
                "{kind} ({advice:?}): the retry avoids the node that failed: {avoided}"
            );
            let sent_back = calls[1]
                .route
                .as_ref()
                .is_some_and(|h| h.returns_to(1, node));
            assert_eq!(
                sent_back,
                advice == RetryAdvice::RetrySameNode,
                "{kind} ({advice:?}): the retry is sent back to the node that failed: {sent_back}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn success_first_time_is_one_attempt_and_no_event() {
        let mock = Mock::new([ok(MS)]);
        let (layer, recorder) = layer(RetryConfig::default());
        let resp = layer.layer(mock.clone()).oneshot(read()).await.unwrap();
        assert_eq!(resp.info().attempts, 1);
        assert_eq!(mock.calls().len(), 1);
        assert!(recorder.retries().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn non_idempotent_write_is_not_retried_after_a_write_timeout() {
        let mock = Mock::new([fail(ErrorKind::WriteTimeout, MS), ok(MS)]);
        let (layer, recorder) = layer(RetryConfig::default());
        let err = layer
            .layer(mock.clone())
            .oneshot(write())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WriteTimeout);
        assert_eq!(
            err.message(),
            "scripted write_timeout",
            "returned unchanged"
        );
        assert_eq!(mock.calls().len(), 1);
        assert!(recorder.retries().is_empty());
        // the same error on an idempotent write is retried
        let mock = Mock::new([fail(ErrorKind::WriteTimeout, MS), ok(MS)]);
        let resp = layer
            .layer(mock.clone())
            .oneshot(write().idempotent(true))
            .await
            .unwrap();
        assert_eq!(resp.info().attempts, 2);
    }

    /// `Overloaded` can come after some replicas took the mutation: a
    /// non-idempotent write is not retried (it was, before the one
    /// classifier); `Unavailable` (nothing executed) still is.
    #[tokio::test(start_paused = true)]
    async fn non_idempotent_write_is_not_retried_after_overloaded() {
        let mock = Mock::new([fail(ErrorKind::Overloaded, MS), ok(MS)]);
        let (layer, recorder) = layer(RetryConfig::default());
        let err = layer
            .layer(mock.clone())
            .oneshot(write())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Overloaded);
        assert_eq!(mock.calls().len(), 1);
        assert!(recorder.retries().is_empty());
        let mock = Mock::new([fail(ErrorKind::Unavailable, MS), ok(MS)]);
        let resp = layer.layer(mock.clone()).oneshot(write()).await.unwrap();
        assert_eq!(resp.info().attempts, 2);
        assert_eq!(recorder.retries().len(), 1);
        let mock = Mock::new([fail(ErrorKind::Overloaded, MS), ok(MS)]);
        let resp = layer
            .layer(mock.clone())
            .oneshot(write().idempotent(true))
            .await
            .unwrap();
        assert_eq!(resp.info().attempts, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_a_retry_cannot_fix_are_returned_at_once() {
        for kind in [
            ErrorKind::Syntax,
            ErrorKind::Invalid,
            ErrorKind::Unauthorized,
        ] {
            let mock = Mock::new([fail(kind, MS), ok(MS)]);
            let (layer, _) = layer(RetryConfig::default());
            let err = layer.layer(mock.clone()).oneshot(read()).await.unwrap_err();
            assert_eq!(err.kind(), kind);
            assert_eq!(mock.calls().len(), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn max_attempts_is_honoured() {
        for max_attempts in [1, 2, 5] {
            let mock = Mock::new((0..10).map(|_| fail(ErrorKind::Overloaded, MS)));
            let (layer, recorder) = layer(RetryConfig {
                max_attempts,
                budget: unlimited(),
                ..RetryConfig::default()
            });
            let err = layer.layer(mock.clone()).oneshot(read()).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Overloaded);
            assert_eq!(
                err.attempts(),
                max_attempts,
                "the error says how many were made"
            );
            assert_eq!(mock.calls().len(), max_attempts as usize);
            assert_eq!(recorder.retries().len(), max_attempts as usize - 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_stops_retries() {
        // Attempts of 100 ms, backoff of at most 1 ms, deadline at 250 ms:
        // attempts start at ~0, ~101 and ~202 ms; after the third (~302 ms)
        // the deadline has passed and the layer stops.
        let mock = Mock::new((0..10).map(|_| fail(ErrorKind::Overloaded, 100 * MS)));
        let (layer, recorder) = layer(RetryConfig {
            max_attempts: 10,
            backoff: Backoff { base: MS, max: MS },
            budget: unlimited(),
        });
        let start = Instant::now();
        let deadline = start + 250 * MS;
        let err = layer
            .layer(mock.clone())
            .oneshot(read().timeout(250 * MS))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Overloaded);
        let calls = mock.calls();
        assert_eq!(calls.len(), 3);
        assert!(calls.iter().all(|c| c.at < deadline));
        assert_eq!(recorder.retries().len(), 2);
        assert!(start.elapsed() <= 303 * MS, "{:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn never_sleeps_past_the_deadline() {
        // Backoffs of up to 1 s and a deadline 300 ms away: a draw that
        // would end past the deadline stops the retries instead.
        for _ in 0..20 {
            let mock = Mock::new((0..50).map(|_| fail(ErrorKind::Overloaded, Duration::ZERO)));
            let (layer, recorder) = layer(RetryConfig {
                max_attempts: 50,
                backoff: Backoff {
                    base: Duration::from_secs(1),
                    max: Duration::from_secs(1),
                },
                budget: unlimited(),
            });
            let start = Instant::now();
            let err = layer
                .layer(mock.clone())
                .oneshot(read().timeout(300 * MS))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Overloaded);
            // Tokio's timer rounds a sleep's end up to the next millisecond,
            // so a backoff that ends 0.4 ms before the deadline wakes at it:
            // never after it.
            assert!(start.elapsed() <= 300 * MS, "{:?}", start.elapsed());
            let slept: Duration = recorder.retries().iter().map(|r| r.1).sum();
            assert!(
                slept < 300 * MS,
                "the backoffs chosen end before the deadline: {slept:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_delays_are_capped_and_grow() {
        let config = RetryConfig {
            max_attempts: 5,
            backoff: Backoff {
                base: 10 * MS,
                max: Duration::from_secs(1),
            },
            budget: unlimited(),
        };
        let (layer, recorder) = layer(config.clone());
        let requests = 200;
        let mock =
            Mock::new((0..requests * 5).map(|_| fail(ErrorKind::Overloaded, Duration::ZERO)));
        let svc = layer.layer(mock.clone());
        for _ in 0..requests {
            svc.clone().oneshot(read()).await.unwrap_err();
        }
        let mut sums = [Duration::ZERO; 5];
        let mut counts = [0u32; 5];
        for (attempt, delay, ..) in recorder.retries() {
            let cap = config.backoff.cap(attempt - 1);
            assert!(delay <= cap, "retry {attempt}: {delay:?} > {cap:?}");
            sums[attempt as usize] += delay;
            counts[attempt as usize] += 1;
        }
        assert_eq!(&counts[1..], [requests as u32; 4]);
        let means: Vec<Duration> = (1..5).map(|i| sums[i] / counts[i]).collect();
        // mean of uniform(0, cap) is cap / 2: 5, 10, 20, 40 ms
        for w in means.windows(2) {
            assert!(w[1] > w[0], "means do not grow: {means:?}");
        }
        assert!(means[3] > 30 * MS && means[3] < 50 * MS, "{means:?}");
        // the calls really were that far apart (to the timer's millisecond)
        let calls = mock.calls();
        for (retry, call) in recorder
            .retries()
            .iter()
            .zip(calls.chunks(5).flat_map(|c| c.windows(2)))
        {
            let gap = call[1].at - call[0].at;
            assert!(
                gap >= retry.1 && gap <= retry.1 + MS,
                "{gap:?} {:?}",
                retry.1
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_budget_returns_the_last_error() {
        let (layer, recorder) = layer(RetryConfig {
            budget: BudgetConfig {
                ratio: 0.1,
                min_per_second: 0,
                window: Duration::from_secs(10),
            },
            ..RetryConfig::default()
        });
        let mock = Mock::new((0..100).map(|_| fail(ErrorKind::Overloaded, MS)));
        let svc = layer.layer(mock.clone());
        for _ in 0..10 {
            let err = svc.clone().oneshot(read()).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Overloaded);
            assert_eq!(err.message(), "scripted overloaded");
        }
        // the first request's first retry fits (0 < 0.1 * 1); then none until
        // more requests deposit: 1 < 0.1 * 10 is false
        assert_eq!(mock.calls().len(), 11);
        assert_eq!(recorder.retries().len(), 1);
        // each retry the budget refused is a throttle event: the first
        // request's second retry, and the other nine's first
        assert_eq!(recorder.refusals(), ["retry_budget"; 10]);
        assert_eq!(layer.policy().budget().retries_in_window(), 1);
        assert_eq!(layer.policy().budget().requests_in_window(), 10);
        // an eleventh request makes room for a second retry (1 < 1.1)
        let mock2 = Mock::new([fail(ErrorKind::Overloaded, MS), ok(MS)]);
        let resp = layer.layer(mock2).oneshot(read()).await.unwrap();
        assert_eq!(resp.info().attempts, 2);
    }

    /// A retry is charged to the budget when it is scheduled, before its
    /// backoff; a request dropped before its retry is made (during the
    /// backoff, or waiting for the inner service) gives the charge back:
    /// the budget bounds the retries sent, and one never sent must not
    /// take the place of another request's (in a storm whose callers
    /// give up, every retry they dropped was kept against the budget).
    #[tokio::test(start_paused = true)]
    async fn a_retry_never_made_is_given_back_to_the_budget() {
        // backoffs drawn from the thread's generator: fixed draws
        fastrand::seed(17);
        let (layer, recorder) = layer(RetryConfig {
            max_attempts: 2,
            backoff: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(1),
            },
            budget: unlimited(),
        });
        let budget = layer.policy().budget().clone();
        // dropped during the backoff: the first attempt failed after 1 ms
        let mock = Mock::new([fail(ErrorKind::Overloaded, MS), ok(MS)]);
        let call = layer.layer(mock.clone()).oneshot(read());
        assert!(tokio::time::timeout(5 * MS, call).await.is_err());
        assert_eq!(recorder.retries().len(), 1, "the retry was scheduled");
        assert_eq!(
            mock.calls().len(),
            1,
            "and not made: dropped in its backoff"
        );
        assert_eq!(budget.retries_in_window(), 0, "a retry never made");
        // dropped waiting for the inner service after the backoff
        let mock = Mock::new([fail(ErrorKind::Overloaded, MS), ok(MS)]);
        let mut svc = layer.layer(mock.clone());
        svc.ready().await.unwrap();
        let call = svc.call(read());
        mock.set_ready(false);
        assert!(
            tokio::time::timeout(Duration::from_secs(2), call)
                .await
                .is_err()
        );
        assert_eq!(recorder.retries().len(), 2, "the retry was scheduled");
        assert_eq!(
            mock.calls().len(),
            1,
            "not made: the service was never ready"
        );
        assert_eq!(budget.retries_in_window(), 0, "a retry never made");
        // a retry made stays charged
        mock.set_ready(true);
        let mock = Mock::new([fail(ErrorKind::Overloaded, MS), ok(MS)]);
        let resp = layer.layer(mock.clone()).oneshot(read()).await.unwrap();
        assert_eq!(resp.info().attempts, 2);
        assert_eq!(budget.retries_in_window(), 1, "the retry made");
    }

    #[tokio::test(start_paused = true)]
    async fn clones_and_sibling_services_share_the_budget() {
        let (layer, _) = layer(RetryConfig {
            budget: BudgetConfig {
                ratio: 1.0,
                min_per_second: 0,
                window: Duration::from_secs(10),
            },
            ..RetryConfig::default()
        });
        let a = layer.layer(Mock::new((0..10).map(|_| fail(ErrorKind::Overloaded, MS))));
        let b = layer.layer(Mock::new((0..10).map(|_| fail(ErrorKind::Overloaded, MS))));
        a.clone().oneshot(read()).await.unwrap_err(); // 1 request, 1 retry
        b.clone().oneshot(read()).await.unwrap_err(); // 2 requests, 2 retries
        assert_eq!(layer.policy().budget().requests_in_window(), 2);
        assert_eq!(layer.policy().budget().retries_in_window(), 2);
        assert_eq!(b.policy().budget().retries_in_window(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn poll_ready_is_the_inner_services() {
        let mock = Mock::new([fail(ErrorKind::Overloaded, MS), ok(MS)]);
        let (layer, _) = layer(RetryConfig {
            backoff: Backoff {
                base: Duration::ZERO,
                max: Duration::ZERO,
            },
            ..RetryConfig::default()
        });
        let mut svc = layer.layer(mock.clone());
        mock.set_ready(false);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(svc.poll_ready(&mut cx).is_pending());
        mock.set_ready(true);
        assert!(svc.poll_ready(&mut cx).is_ready());
        // A retry waits for the inner service's readiness, too.
        let fut = svc.call(read());
        mock.set_ready(false);
        let task = tokio::spawn(fut);
        tokio::time::sleep(50 * MS).await;
        assert_eq!(mock.calls().len(), 1, "the retry waits for poll_ready");
        assert!(!task.is_finished());
        mock.set_ready(true);
        let resp = task.await.unwrap().unwrap();
        assert_eq!(resp.info().attempts, 2);
        assert_eq!(mock.calls().len(), 2);
    }
}
