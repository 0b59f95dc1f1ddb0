//! Hedged reads: when an idempotent read is slow to answer, start another
//! attempt and take whichever answers first.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_cql_core::{Collectors, CqlError, CqlRequest, CqlResponse, ExecutionInfo};
//! use tower_cql_middleware::hedge::{HedgeConfig, HedgeDelay, HedgeLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = HedgeLayer::new(
//!     HedgeConfig { delay: HedgeDelay::Fixed(Duration::from_millis(20)), max_speculative: 1, ..Default::default() },
//!     Collectors::new(),
//! );
//! // A stand-in for the driver: the first call lands on a node stuck for a
//! // second, later calls answer in 2 ms.
//! let calls = Arc::new(AtomicU32::new(0));
//! let driver = service_fn({
//!     let calls = calls.clone();
//!     move |_req: CqlRequest| {
//!         let stuck = calls.fetch_add(1, Ordering::Relaxed) == 0;
//!         async move {
//!             tokio::time::sleep(Duration::from_millis(if stuck { 1000 } else { 2 })).await;
//!             Ok::<_, CqlError>(CqlResponse::synthetic(ExecutionInfo { attempts: 1, ..Default::default() }))
//!         }
//!     }
//! });
//! let svc = layer.layer(driver);
//!
//! let start = tokio::time::Instant::now();
//! let read = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").bind((1,)).idempotent(true);
//! let resp = svc.clone().oneshot(read).await?;
//! assert_eq!(resp.info().speculative, 1);
//! assert!(start.elapsed() < Duration::from_millis(30)); // 20 ms + 2 ms, not 1 s
//!
//! // Writes, and reads not marked idempotent, are never hedged.
//! let write = CqlRequest::query("INSERT INTO ks.t (k, v) VALUES (?, ?)").bind((1, 2)).idempotent(true);
//! assert_eq!(svc.oneshot(write).await?.info().speculative, 0);
//! # Ok(()) }
//! ```
//!
//! # What is hedged
//! Only requests that are reads (`SELECT`) and
//! [idempotent](tower_cql_core::RequestMeta::is_idempotent): a hedged write
//! could be applied twice. Every other request goes straight to the inner
//! service; its response future is the inner one in an enum variant.
//!
//! # How
//! The first attempt starts at once. If it has not answered after the
//! [`HedgeDelay`], a speculative attempt starts (a clone of the request
//! marked with [`RequestMeta::set_attempt`](tower_cql_core::RequestMeta::set_attempt)
//! `(n, AttemptReason::Speculative)`, see "Attempt indexes"), then another
//! after each further delay, up to [`HedgeConfig::max_speculative`]. The
//! first success wins and every other attempt is dropped at once, which
//! cancels it. A failed attempt does not end the race while another is
//! running; when all have failed, the last error is returned, its
//! [`attempts`](tower_cql_core::CqlError::attempts) set to the number of
//! attempts the race made and its
//! [`speculative`](tower_cql_core::CqlError::speculative) to the number of
//! speculative attempts started, as a successful response's
//! [`ExecutionInfo::speculative`](tower_cql_core::ExecutionInfo::speculative)
//! says. Under retry, the retry layer adds up the speculative attempts of
//! every race of the request, on its response and on its error (so the
//! request event and the span count them all). No speculative attempt
//! starts at or after the request's deadline.
//!
//! Like retries, a speculative attempt goes wherever the driver's
//! load-balancing policy sends a new call: with the default policy,
//! usually another replica, which is what makes hedging pay off.
//!
//! # Budget
//! Every speculative attempt is extra load, and when a cluster slows down
//! *every* read is slow enough to be hedged: `max_speculative` alone would
//! then let hedging multiply the traffic sent to a cluster that is already
//! struggling. So each speculative attempt is withdrawn from a
//! [`RetryBudget`] before it is started, like a retry:
//! - in the stack (and with [`HedgeLayer::inside`]), from the retry
//!   layer's budget, built once with the retry layer and shared: retries
//!   and speculative attempts *together* add at most the budget's `ratio`
//!   to the load (plus its small per-second floor). Which of the two gets
//!   the budget is first come, first served: in a slow storm the
//!   speculative attempts, due after the hedge delay, usually come first;
//! - with [`HedgeLayer::new`], or when [`HedgeConfig::budget`] is set, from
//!   a budget of the layer's own, into which it deposits one per request it
//!   may hedge.
//!
//! A speculative attempt the budget refuses is not made, and the request
//! starts no further speculative attempt (its running attempts go on).
//! One the budget granted that is not made after all (the race ended, or
//! the request was dropped, while it waited for the inner service) is
//! given back. Each
//! refusal is reported as a [`ThrottleEvent`] with the limiter
//! `"hedge_budget"` and `rejected: true` (the retry layer reports its own
//! refusals the same way, as `"retry_budget"`), which the exporters count
//! (`db_client_throttled_total{limiter="hedge_budget"}` and the like).
//! [`HedgeLayer::budget`] gives the budget, whose
//! [`retries_in_window`](RetryBudget::retries_in_window) counts the
//! speculative attempts granted with the retries.
//!
//! # Delay
//! [`HedgeDelay::Fixed`] hedges after a constant. [`HedgeDelay::Percentile`]
//! hedges after a percentile of recent *first-attempt* latencies: the delay
//! is meant to say "this attempt is slower than `percentile` of attempts",
//! so it is learned from the attempts it is measured against, the first
//! attempt of every hedged race (a retry's included), whatever became of
//! it:
//! - it answered, won or lost, with a result or an error from a node: its
//!   latency is recorded;
//! - it was cancelled because a speculative attempt won, or the client gave
//!   up on it (`ClientTimeout`, `DeadlineExceeded`): all that is known is
//!   that its latency is longer than the time it ran. That time is recorded
//!   as a *censored* observation;
//! - it never reached a node (an error that was not sent), or the caller
//!   dropped the whole request: nothing.
//!
//! Speculative attempts are not recorded: they exist only for the slow
//! requests and go to nodes the first attempt did not, a sample of another
//! population.
//!
//! Learning from the winners alone, as this layer first did, is biased low
//! twice over: the slow first attempts are exactly the ones a hedge
//! cancels, and the fast attempts that beat them take their place. The
//! lower delay then hedges more, which cancels more slow attempts: the
//! estimate walks down to `min` while the first attempts stay slow.
//! Recording a cancelled attempt's time as if it were its latency is biased
//! low too (less): it would say "about the delay" of attempts that took far
//! longer. Dropping it is no better: it leaves only the fast ones. So the
//! percentile is the product-limit (Kaplan-Meier) estimate, the standard
//! estimate for such right-censored data: going up the latencies, each
//! answer at `t` lowers the fraction still unanswered by the share of the
//! attempts still running at `t` that answered then, and a censored attempt
//! counts as running until it was given up on and no further. The delay is
//! the latency by which that fraction falls to `1 - percentile`; with
//! nothing censored, that is the plain nearest-rank percentile. When it
//! never falls that far (the attempts were cancelled before enough of them
//! answered, as when a cluster slows down under a delay learned earlier),
//! the delay is `max`: hedging later lets the first attempts answer, and
//! their latencies move the estimate to where they are. It assumes that
//! when an attempt is cancelled does not depend on how long it would have
//! taken, which holds here: that is set by the delay and the speculative
//! attempt's own latency.
//!
//! The observations are kept in lock-free
//! [`Histogram`](tower_cql_core::Histogram)s that take turns, two per kind,
//! each covering 10 s, so the estimate reflects the last 10–20 s. The delay
//! is recomputed from them at most every 100 ms (by one request, with a
//! compare-and-swap; the others read the cached value), and is `max` until
//! 100 observations are known.
//!
//! # Attempt indexes
//! Every attempt of one logical request has an index of its own, as its
//! attempt events show. The race's first attempt keeps the index the
//! request came with (0, or the retry's); the speculative ones take the
//! next ones, `index + 1`, `index + 2`, .... A race that fails says in its
//! error's [`attempts`](tower_cql_core::CqlError::attempts) how many it
//! made, and the retry layer above numbers its next attempt after them, so
//! a retry and an earlier attempt's speculative attempt never share an
//! index. This holds in the stack's order (retry outside hedge); it needs
//! no shared counter and no allocation. Under a hedge placed outside the
//! retry layer, the retries of racing attempts could share indexes.
//!
//! # Order
//! The stack's default order puts hedging inside retry and outside the
//! per-attempt timeout: tracing → metrics → shed / breaker → limits →
//! retry → **hedge** → per-attempt timeout → driver. Each retry may then be
//! hedged, the retry layer sees one result per hedged attempt, and every
//! attempt, speculative or not, gets its own timeout. Speculative attempts
//! go through the layers below like any other call: the inner service is
//! polled ready before each.

use crate::config::ConfigError;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_cql_core::event::{Event, ThrottleEvent};
use tower_cql_core::{Collectors, CqlError, CqlRequest, CqlResponse, RequestMeta, clock};
use tower_layer::Layer;
use tower_service::Service;

use self::delay::DelaySource;
use crate::retry::budget::Charge;
use crate::retry::{BudgetConfig, RetryBudget};

mod delay;
pub mod future;
mod layer;

pub use self::future::ResponseFuture;
pub use self::layer::HedgeLayer;

/// When to start a speculative attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeDelay {
    /// After this long without an answer (greater than zero, at most 100
    /// years).
    Fixed(Duration),
    /// After the `percentile` of recent first-attempt latencies (those of
    /// the attempts a hedge cancels included, as censored observations),
    /// clamped into `[min, max]`; `max` until at least 100 attempts have
    /// been seen. See [`Hedge`] for how it is estimated and how "recent"
    /// is kept.
    Percentile {
        /// Which percentile, in `0.5..=0.999` (e.g. 0.95: hedge the slowest
        /// 5 %).
        percentile: f64,
        /// The shortest delay, however fast recent attempts were.
        min: Duration,
        /// The longest delay, and the delay while there is too little
        /// data (greater than zero, at least `min`, at most 100 years).
        max: Duration,
    },
}

impl Default for HedgeDelay {
    /// The 95th percentile, within 1 ms ..= 100 ms.
    fn default() -> HedgeDelay {
        HedgeDelay::Percentile {
            percentile: 0.95,
            min: Duration::from_millis(1),
            max: Duration::from_millis(100),
        }
    }
}

/// Hedging settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HedgeConfig {
    /// When to start each speculative attempt (default: the 95th
    /// percentile of recent latencies, within 1 ms ..= 100 ms). In a
    /// stack with a per-attempt timeout, a fixed delay (or a percentile's
    /// `min`) must be shorter than it: the timeout, inside the hedge,
    /// ends an unanswered attempt first, so a longer one hedges nothing
    /// ([`StackBuilder`](crate::stack::StackBuilder) refuses it).
    pub delay: HedgeDelay,
    /// The most speculative attempts per request, in `1..=4` (default 1).
    /// Each starts `delay` after the previous one.
    pub max_speculative: u32,
    /// The budget speculative attempts are charged to (see [`Hedge`],
    /// "Budget"). `None` (the default): the retry layer's budget when the
    /// layer is made [inside](HedgeLayer::inside) one, as the stack builder
    /// does when retries are on, so that retries and speculative attempts
    /// share one bound; else a budget of its own with
    /// [`BudgetConfig::default`]. `Some`: a budget of its own with these
    /// settings, wherever the layer is.
    pub budget: Option<BudgetConfig>,
}

impl Default for HedgeConfig {
    fn default() -> HedgeConfig {
        HedgeConfig {
            delay: HedgeDelay::default(),
            max_speculative: 1,
            budget: None,
        }
    }
}

impl HedgeConfig {
    /// Rejects settings that cannot work, naming the field and what is
    /// allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_SPECULATIVE).contains(&self.max_speculative) {
            return Err(ConfigError::new(
                "hedge.max_speculative",
                format!(
                    "must be between 1 and {MAX_SPECULATIVE} (speculative attempts per request), got {}",
                    self.max_speculative
                ),
            ));
        }
        if let Some(budget) = &self.budget {
            budget.validate_for_hedge()?;
        }
        match self.delay {
            HedgeDelay::Fixed(d) if d.is_zero() => Err(ConfigError::new(
                "hedge.delay",
                "a fixed delay must be greater than zero (zero would send every read twice), got 0s",
            )),
            HedgeDelay::Fixed(d) => crate::config::not_too_long(
                "hedge.delay",
                d,
                "to send no speculative attempts, leave hedging off",
            ),
            HedgeDelay::Percentile {
                percentile,
                min,
                max,
            } => {
                if !(0.5..=0.999).contains(&percentile) {
                    return Err(ConfigError::new(
                        "hedge.delay.percentile",
                        format!("must be between 0.5 and 0.999, got {percentile}"),
                    ));
                }
                if max.is_zero() {
                    return Err(ConfigError::new(
                        "hedge.delay.max",
                        "must be greater than zero (it is the delay until latencies are known), got 0s",
                    ));
                }
                crate::config::not_too_long(
                    "hedge.delay.max",
                    max,
                    "to send no speculative attempts, leave hedging off",
                )?;
                if min > max {
                    return Err(ConfigError::new(
                        "hedge.delay.min",
                        format!("must be at most hedge.delay.max ({max:?}), got {min:?}"),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// The limiter named by the throttle event of a speculative attempt the
/// budget refused.
pub(crate) const BUDGET_LIMITER: &str = "hedge_budget";

/// The most speculative attempts a request may have.
pub(crate) const MAX_SPECULATIVE: u32 = 4;

/// The budget speculative attempts are charged to.
#[derive(Debug)]
pub(crate) enum Budget {
    /// The layer's own: it deposits one per request it may hedge.
    Own(Arc<RetryBudget>),
    /// The retry layer's, which deposits one per request.
    Shared(Arc<RetryBudget>),
}

impl Budget {
    pub(crate) fn get(&self) -> &Arc<RetryBudget> {
        match self {
            Budget::Own(b) | Budget::Shared(b) => b,
        }
    }
}

/// What every clone of a [`Hedge`] shares.
#[derive(Debug)]
pub(crate) struct Shared {
    source: DelaySource,
    max_speculative: u32,
    pub(crate) budget: Budget,
    /// Where refusals by the budget are reported.
    collectors: Collectors,
}

impl Shared {
    fn new(config: &HedgeConfig, collectors: Collectors, budget: Budget) -> Shared {
        Shared {
            source: DelaySource::new(config.delay),
            max_speculative: config.max_speculative,
            budget,
            collectors,
        }
    }

    /// Asks the budget for one speculative attempt: its charge, given back
    /// if the attempt is never made; a refusal is reported as a throttle
    /// event about `meta`'s request.
    fn withdraw(&self, meta: &RequestMeta) -> Option<Charge> {
        let now = clock::now();
        let budget = self.budget.get();
        if budget.withdraw_at(now) {
            return Some(Charge::granted(budget, now));
        }
        tracing::debug!("hedge: the budget refused a speculative attempt");
        if self.collectors.is_active() {
            self.collectors.emit(Event::Throttle(ThrottleEvent::new(
                meta,
                BUDGET_LIMITER,
                Duration::ZERO,
                true,
                0,
            )));
        }
        None
    }

    fn delay(&self) -> Duration {
        self.source.current()
    }
}

/// Hedges idempotent reads (see the [module docs](self)). Made by
/// [`HedgeLayer`]; clones share the latency history and the budget.
#[derive(Debug, Clone)]
pub struct Hedge<S> {
    inner: S,
    /// `None`: a pass-through.
    shared: Option<Arc<Shared>>,
}

impl<S> Hedge<S> {
    /// Wraps `inner`, with a budget of its own (as [`HedgeLayer::new`]).
    ///
    /// # Panics
    /// If `config` is invalid (see [`HedgeConfig::validate`]).
    #[track_caller]
    pub fn new(inner: S, config: HedgeConfig, collectors: Collectors) -> Hedge<S> {
        HedgeLayer::new(config, collectors).layer(inner)
    }

    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Hedge<S> {
        Hedge {
            inner,
            shared: Some(shared),
        }
    }

    /// A service that hedges nothing and only forwards to `inner` (see
    /// [`toggle`](crate::toggle)): no clock read, no clone of `inner`.
    pub fn pass_through(inner: S) -> Hedge<S> {
        Hedge {
            inner,
            shared: None,
        }
    }

    /// Whether this service passes every request through unhedged.
    pub fn is_pass_through(&self) -> bool {
        self.shared.is_none()
    }

    /// The collector set given at construction (an empty one, shared by
    /// every pass-through, for a pass-through).
    pub fn collectors(&self) -> &Collectors {
        static NONE: std::sync::OnceLock<Collectors> = std::sync::OnceLock::new();
        match &self.shared {
            Some(shared) => &shared.collectors,
            None => NONE.get_or_init(Collectors::new),
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

impl<S> Service<CqlRequest> for Hedge<S>
where
    S: Service<CqlRequest, Response = CqlResponse, Error = CqlError> + Clone,
{
    type Response = CqlResponse;
    type Error = CqlError;
    type Future = ResponseFuture<S>;

    /// The inner service's readiness (for the first attempt; speculative
    /// ones poll a clone of it).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: CqlRequest) -> ResponseFuture<S> {
        let Some(shared) = &self.shared else {
            return ResponseFuture::passthrough(self.inner.call(request));
        };
        let meta = request.meta();
        if !(meta.is_idempotent() && meta.kind().is_read()) {
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        if let Budget::Own(budget) = &shared.budget {
            // one per request that may be hedged (a shared budget is the
            // retry layer's to deposit into, once per logical request)
            budget.deposit();
        }
        let now = clock::now();
        // The deadline on the Tokio clock, which the hedge timer runs on.
        let deadline = meta.remaining().map(|left| now + left);
        let delay = shared.delay();
        // the attempts share one route hint: each goes to a node the
        // others have not tried, while there is one
        let mut request = request;
        request.meta_mut().route_hint();
        let first = self.inner.call(request.clone());
        let service = self.inner.clone();
        ResponseFuture::hedged(
            request,
            first,
            service,
            shared.clone(),
            delay,
            now,
            deadline,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use tower::{Layer, ServiceExt};
    use tower_cql_core::{AttemptReason, ErrorKind};

    use std::sync::atomic::Ordering;

    use super::delay::{REFRESH_EVERY, ROTATE_EVERY, nanos};
    use super::*;
    use crate::retry::mock::{Mock, fail, fail_with, ok};
    use tokio::time::Instant;

    const MS: Duration = Duration::from_millis(1);

    fn read() -> CqlRequest {
        CqlRequest::query("SELECT v FROM ks.t WHERE k = ?")
            .bind((1i32,))
            .idempotent(true)
    }

    fn fixed(delay: Duration, max_speculative: u32) -> HedgeLayer {
        HedgeLayer::new(
            HedgeConfig {
                delay: HedgeDelay::Fixed(delay),
                max_speculative,
                ..HedgeConfig::default()
            },
            Collectors::new(),
        )
    }

    /// Tokio's timer rounds a deadline up to the next millisecond.
    fn about(actual: Duration, want: Duration) -> bool {
        actual >= want && actual <= want + 2 * MS
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_first_attempt_loses_to_the_speculative_one() {
        let mock = Mock::new([ok(Duration::from_secs(1)), ok(5 * MS)]);
        let start = Instant::now();
        let resp = fixed(20 * MS, 1)
            .layer(mock.clone())
            .oneshot(read())
            .await
            .unwrap();
        assert!(about(start.elapsed(), 25 * MS), "{:?}", start.elapsed());
        assert_eq!(resp.info().speculative, 1);
        let calls = mock.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].index, calls[0].reason),
            (0, AttemptReason::Initial)
        );
        assert_eq!(
            (calls[1].index, calls[1].reason),
            (1, AttemptReason::Speculative)
        );
        assert!(about(calls[1].at - calls[0].at, 20 * MS));
        // the loser was dropped (cancelled) as soon as the winner answered
        assert!(calls[0].cancelled());
        assert!(calls[1].done());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_speculative_attempt_loses_to_the_first() {
        let mock = Mock::new([ok(30 * MS), ok(100 * MS)]);
        let start = Instant::now();
        let resp = fixed(20 * MS, 1)
            .layer(mock.clone())
            .oneshot(read())
            .await
            .unwrap();
        assert!(about(start.elapsed(), 30 * MS));
        assert_eq!(resp.info().speculative, 1, "started, even though it lost");
        let calls = mock.calls();
        assert!(calls[0].done());
        assert!(calls[1].cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_answer_is_not_hedged() {
        let mock = Mock::new([ok(5 * MS)]);
        let resp = fixed(20 * MS, 1)
            .layer(mock.clone())
            .oneshot(read())
            .await
            .unwrap();
        assert_eq!(resp.info().speculative, 0);
        assert_eq!(mock.calls().len(), 1);
        // and nothing starts later either
        tokio::time::sleep(100 * MS).await;
        assert_eq!(mock.calls().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_and_non_idempotent_reads_are_never_hedged() {
        let requests = [
            CqlRequest::query("SELECT v FROM ks.t WHERE k = 1"), // not marked idempotent
            CqlRequest::query("INSERT INTO ks.t (k, v) VALUES (1, 2)").idempotent(true),
            CqlRequest::query("UPDATE ks.t SET v = 2 WHERE k = 1").idempotent(true),
            CqlRequest::query("DELETE FROM ks.t WHERE k = 1").idempotent(true),
            // an LWT read-before-write is not idempotent whatever the mark
            CqlRequest::query("UPDATE ks.t SET v = 2 WHERE k = 1 IF v = 1").idempotent(true),
        ];
        for req in requests {
            let mock = Mock::new([ok(Duration::from_secs(1)), ok(MS)]);
            let start = Instant::now();
            let resp = fixed(10 * MS, 4)
                .layer(mock.clone())
                .oneshot(req.clone())
                .await
                .unwrap();
            assert_eq!(start.elapsed(), Duration::from_secs(1), "{req:?}");
            assert_eq!(resp.info().speculative, 0);
            assert_eq!(mock.calls().len(), 1, "{req:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn max_speculative_is_honoured() {
        for max in 1..=4u32 {
            let mock = Mock::new((0..10).map(|_| ok(Duration::from_secs(1))));
            let start = Instant::now();
            let resp = fixed(10 * MS, max)
                .layer(mock.clone())
                .oneshot(read())
                .await
                .unwrap();
            // the first attempt answers first, after 1 s
            assert!(about(start.elapsed(), Duration::from_secs(1)));
            assert_eq!(resp.info().speculative, max);
            let calls = mock.calls();
            assert_eq!(calls.len(), max as usize + 1);
            for (i, call) in calls.iter().enumerate() {
                assert_eq!(call.index, i as u32);
                assert!(about(call.at - start, 10 * MS * i as u32), "{i}");
            }
            assert!(calls[1..].iter().all(|c| c.cancelled()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_speculative_attempt_at_or_past_the_deadline() {
        // delay 20 ms, deadline 50 ms: attempts at 0, 20, 40; not at 60
        let mock = Mock::new((0..10).map(|_| ok(Duration::from_secs(1))));
        let start = Instant::now();
        let deadline = start + 50 * MS;
        let resp = fixed(20 * MS, 4)
            .layer(mock.clone())
            .oneshot(read().timeout(50 * MS))
            .await
            .unwrap();
        assert_eq!(resp.info().speculative, 2);
        let calls = mock.calls();
        assert_eq!(calls.len(), 3);
        assert!(calls.iter().all(|c| c.at < deadline));
        // a delay that ends past the deadline: no hedge at all
        let mock = Mock::new([ok(100 * MS), ok(MS)]);
        let resp = fixed(50 * MS, 1)
            .layer(mock.clone())
            .oneshot(read().timeout(30 * MS))
            .await
            .unwrap();
        assert_eq!(resp.info().speculative, 0);
        assert_eq!(mock.calls().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_waits_for_the_other_attempt() {
        // the first fails at 30 ms while the speculative one (from 20 ms) runs
        let mock = Mock::new([fail(ErrorKind::Overloaded, 30 * MS), ok(100 * MS)]);
        let start = Instant::now();
        let resp = fixed(20 * MS, 1)
            .layer(mock.clone())
            .oneshot(read())
            .await
            .unwrap();
        assert!(about(start.elapsed(), 120 * MS));
        assert_eq!(resp.info().speculative, 1);
        // the speculative one fails first; the first still wins
        let mock = Mock::new([ok(100 * MS), fail(ErrorKind::ReadTimeout, 5 * MS)]);
        let resp = fixed(20 * MS, 1)
            .layer(mock.clone())
            .oneshot(read())
            .await
            .unwrap();
        assert_eq!(resp.info().speculative, 1);
        assert!(mock.calls()[0].done());
    }

    #[tokio::test(start_paused = true)]
    async fn when_all_fail_the_last_error_is_returned() {
        // speculative fails at 30 ms, the first at 50 ms: the first's error
        let mock = Mock::new([
            fail(ErrorKind::Overloaded, 50 * MS),
            fail(ErrorKind::ReadTimeout, 10 * MS),
        ]);
        let err = fixed(20 * MS, 1)
            .layer(mock.clone())
            .oneshot(read())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Overloaded);
        assert_eq!(err.attempts(), 2, "the error counts the race's attempts");
        assert_eq!(mock.calls().len(), 2);
        // an early failure with nothing else running ends the request at once
        let mock = Mock::new([fail(ErrorKind::Unavailable, 5 * MS), ok(MS)]);
        let start = Instant::now();
        let err = fixed(20 * MS, 1)
            .layer(mock.clone())
            .oneshot(read())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert_eq!(err.attempts(), 1);
        assert!(about(start.elapsed(), 5 * MS));
        assert_eq!(mock.calls().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn speculative_attempts_wait_for_the_inner_service() {
        let mock = Mock::new([ok(Duration::from_secs(1)), ok(MS)]);
        let mut svc = fixed(20 * MS, 1).layer(mock.clone());
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        mock.set_ready(false);
        assert!(
            svc.poll_ready(&mut cx).is_pending(),
            "poll_ready is the inner's"
        );
        mock.set_ready(true);
        assert!(svc.poll_ready(&mut cx).is_ready());
        let fut = svc.call(read());
        mock.set_ready(false);
        let start = Instant::now();
        let task = tokio::spawn(fut);
        tokio::time::sleep(50 * MS).await;
        assert_eq!(
            mock.calls().len(),
            1,
            "not ready: no speculative attempt yet"
        );
        mock.set_ready(true);
        let resp = task.await.unwrap().unwrap();
        assert_eq!(resp.info().speculative, 1);
        assert!(about(start.elapsed(), 51 * MS), "{:?}", start.elapsed());
    }

    /// A speculative attempt is charged to the budget when it is due,
    /// before waiting for the inner service; one never made (the first
    /// attempt answered while it waited, or the request was dropped) is
    /// given back, as a retry never made is: the budget bounds the
    /// attempts sent.
    #[tokio::test(start_paused = true)]
    async fn a_speculative_attempt_never_made_is_given_back_to_the_budget() {
        let layer = fixed(20 * MS, 1);
        let budget = layer.budget().clone();
        for dropped in [false, true] {
            let mock = Mock::new([ok(50 * MS), ok(MS)]);
            let mut svc = layer.layer(mock.clone());
            svc.ready().await.unwrap();
            let fut = svc.call(read());
            // due at 20 ms, then waiting for the service
            mock.set_ready(false);
            if dropped {
                assert!(tokio::time::timeout(30 * MS, fut).await.is_err());
            } else {
                let resp = fut.await.unwrap();
                assert_eq!(resp.info().speculative, 0, "the first attempt answered");
            }
            assert_eq!(mock.calls().len(), 1, "no speculative attempt made");
            assert_eq!(
                budget.retries_in_window(),
                0,
                "dropped: {dropped}: a speculative attempt never made"
            );
        }
        // one made stays charged
        let mock = Mock::new([ok(50 * MS), ok(MS)]);
        let resp = layer.layer(mock).oneshot(read()).await.unwrap();
        assert_eq!(resp.info().speculative, 1);
        assert_eq!(budget.retries_in_window(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_percentile_delay_follows_recent_latencies() {
        let layer = HedgeLayer::new(
            HedgeConfig {
                delay: HedgeDelay::Percentile {
                    percentile: 0.9,
                    min: 2 * MS,
                    max: 50 * MS,
                },
                max_speculative: 1,
                ..HedgeConfig::default()
            },
            Collectors::new(),
        );
        assert_eq!(layer.current_delay(), 50 * MS, "max until there is data");
        // 99 answers in 10 ms: not enough yet
        let mock = Mock::new((0..200).map(|_| ok(10 * MS)));
        let svc = layer.layer(mock.clone());
        for _ in 0..99 {
            svc.clone().oneshot(read()).await.unwrap();
        }
        tokio::time::advance(REFRESH_EVERY).await;
        assert_eq!(layer.current_delay(), 50 * MS);
        svc.clone().oneshot(read()).await.unwrap();
        tokio::time::advance(REFRESH_EVERY).await;
        let d = layer.current_delay();
        assert!(d >= 10 * MS && d <= 10 * MS + 10 * MS / 64, "{d:?}");
        // a request now hedges after ~10 ms
        let mock = Mock::new([ok(Duration::from_secs(1)), ok(MS)]);
        let start = Instant::now();
        let resp = layer.layer(mock).oneshot(read()).await.unwrap();
        assert_eq!(resp.info().speculative, 1);
        assert!(start.elapsed() < 13 * MS, "{:?}", start.elapsed());
        // very fast answers: clamped to min
        let mock = Mock::new((0..1000).map(|_| ok(Duration::from_micros(100))));
        let svc = layer.layer(mock);
        for _ in 0..1000 {
            svc.clone().oneshot(read()).await.unwrap();
        }
        tokio::time::advance(REFRESH_EVERY).await;
        assert_eq!(layer.current_delay(), 2 * MS);
        // long quiet: the history rotates out and the delay is max again
        tokio::time::advance(2 * ROTATE_EVERY + REFRESH_EVERY).await;
        assert_eq!(layer.current_delay(), 50 * MS);
    }

    /// A stand-in whose first attempts take `first` and whose speculative
    /// ones take `speculative`, whatever the order of the calls.
    fn by_reason(
        first: Duration,
        speculative: Duration,
    ) -> impl Service<
        CqlRequest,
        Response = CqlResponse,
        Error = CqlError,
        Future = impl Future<Output = Result<CqlResponse, CqlError>> + Send,
    > + Clone {
        tower::service_fn(move |req: CqlRequest| {
            let took = match req.meta().attempt_reason() {
                AttemptReason::Speculative => speculative,
                _ => first,
            };
            async move {
                tokio::time::sleep(took).await;
                Ok(crate::retry::mock::response())
            }
        })
    }

    /// The attempts a hedge cancels are the slow ones: learning only from
    /// the winners would see the fast speculative attempts and never the
    /// slow first attempts they raced.
    #[tokio::test(start_paused = true)]
    async fn the_percentile_delay_learns_from_the_attempts_it_cancels() {
        let layer = HedgeLayer::new(
            HedgeConfig {
                delay: HedgeDelay::Percentile {
                    percentile: 0.9,
                    min: MS,
                    max: 100 * MS,
                },
                max_speculative: 1,
                // a budget that refuses nothing: every slow read is hedged
                // while the delay says so
                budget: Some(crate::retry::BudgetConfig {
                    ratio: 1000.0,
                    min_per_second: 1_000_000,
                    window: Duration::from_secs(10),
                }),
            },
            Collectors::new(),
        );
        // Learn a fast cluster: every read answers in 5 ms.
        let svc = layer.layer(by_reason(5 * MS, 5 * MS));
        for _ in 0..200 {
            svc.clone().oneshot(read()).await.unwrap();
        }
        tokio::time::advance(REFRESH_EVERY).await;
        let d = layer.current_delay();
        assert!(d.abs_diff(5 * MS) <= 5 * MS / 64, "{d:?}");
        // Then first attempts slow down to 50 ms; the speculative ones,
        // sent elsewhere, answer in 2 ms. Every read is hedged at first.
        let svc = layer.layer(by_reason(50 * MS, 2 * MS));
        let mut hedged = 0;
        for _ in 0..2000 {
            let resp = svc.clone().oneshot(read()).await.unwrap();
            hedged += resp.info().speculative;
        }
        assert!(hedged > 0, "the slow-down was hedged");
        tokio::time::advance(REFRESH_EVERY).await;
        let d = layer.current_delay();
        // The first attempts take 50 ms: the 90th percentile of the
        // attempts the delay is measured against is 50 ms (within the
        // histogram's 1/64), not the 2 ms of the attempts that won.
        assert!(
            d.abs_diff(50 * MS) <= 50 * MS / 64,
            "the delay learned {d:?}, not the first attempts' 50 ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_attempt_that_fails_is_observed_if_it_reached_a_node() {
        let layer = HedgeLayer::new(
            HedgeConfig {
                delay: HedgeDelay::Percentile {
                    percentile: 0.5,
                    min: MS,
                    max: Duration::from_secs(1),
                },
                max_speculative: 1,
                ..HedgeConfig::default()
            },
            Collectors::new(),
        );
        let DelaySource::Percentile(tracker) = &layer.shared.source else {
            unreachable!("a percentile delay");
        };
        let not_sent = CqlError::new(ErrorKind::Connection, "no connection").not_sent();
        let mock = Mock::new([
            fail(ErrorKind::ReadTimeout, 30 * MS),
            fail(ErrorKind::ClientTimeout, 40 * MS),
            fail_with(not_sent, MS),
        ]);
        let svc = layer.layer(mock);
        for _ in 0..3 {
            svc.clone().oneshot(read()).await.unwrap_err();
        }
        // the server's read timeout answered; the client's own timeout only
        // says "longer than 40 ms"; the error never sent says nothing
        let (answered, censored) = tracker.observations();
        assert_eq!((answered.count(), censored.count()), (1, 1));
        assert_eq!(answered.max(), Some(nanos(30 * MS)));
        assert_eq!(censored.max(), Some(nanos(40 * MS)));
    }

    /// Under retry (the stack's order), a retry's index follows the
    /// speculative attempts of the attempts before it: every attempt of
    /// one request has an index of its own.
    #[tokio::test(start_paused = true)]
    async fn retries_and_speculative_attempts_have_distinct_indexes() {
        use crate::retry::{Backoff, RetryConfig, RetryLayer};
        let retry = RetryLayer::new(
            RetryConfig {
                max_attempts: 3,
                backoff: Backoff { base: MS, max: MS },
                ..RetryConfig::default()
            },
            Collectors::new(),
        );
        // Two races fail (a slow first attempt and two quick speculative
        // ones each), the third attempt answers.
        let race = || {
            [
                fail(ErrorKind::Overloaded, 100 * MS),
                fail(ErrorKind::Overloaded, 5 * MS),
                fail(ErrorKind::Overloaded, 5 * MS),
            ]
        };
        let mock = Mock::new(race().into_iter().chain(race()).chain([ok(MS)]));
        let svc = retry.layer(fixed(20 * MS, 2).layer(mock.clone()));
        let resp = svc.oneshot(read()).await.unwrap();
        // every attempt, speculative ones included (its attempt events)
        assert_eq!(resp.info().attempts, 7);
        let calls: Vec<_> = mock.calls().iter().map(|c| (c.index, c.reason)).collect();
        use AttemptReason::{Initial, Retry, Speculative};
        assert_eq!(
            calls,
            [
                (0, Initial),
                (1, Speculative),
                (2, Speculative),
                (3, Retry),
                (4, Speculative),
                (5, Speculative),
                (6, Retry),
            ],
            "each attempt of the request has an index of its own"
        );
        // when every attempt fails, the error counts them all, as a
        // response does
        let mock = Mock::new(race().into_iter().chain(race()).chain(race()));
        let svc = retry.layer(fixed(20 * MS, 2).layer(mock.clone()));
        let err = svc.oneshot(read()).await.unwrap_err();
        assert_eq!(err.attempts(), 9);
        let indexes: Vec<_> = mock.calls().iter().map(|c| c.index).collect();
        assert_eq!(indexes, (0..9).collect::<Vec<_>>());
    }

    /// The speculative count of a request (its response's and its request
    /// event's) covers the speculative attempts of every race the retry
    /// layer ran, not only the last one's, and a failed request says it
    /// as a successful one does.
    #[tokio::test(start_paused = true)]
    async fn the_speculative_count_covers_every_race_and_failed_requests() {
        use crate::metrics::{MetricsConfig, MetricsLayer};
        use crate::retry::{Backoff, RetryConfig, RetryLayer};
        let (rec, collectors) = crate::retry::mock::Recorder::new();
        let metrics = MetricsLayer::new(MetricsConfig::default(), collectors);
        let retry = RetryLayer::new(
            RetryConfig {
                max_attempts: 2,
                backoff: Backoff { base: MS, max: MS },
                ..RetryConfig::default()
            },
            Collectors::new(),
        );
        // a race (a slow first attempt, a quick speculative one) fails;
        // the retry answers before its hedge is due
        let race = || {
            [
                fail(ErrorKind::Overloaded, 100 * MS),
                fail(ErrorKind::Overloaded, MS),
            ]
        };
        let mock = Mock::new(race().into_iter().chain([ok(MS)]));
        let svc = metrics.layer(retry.layer(fixed(20 * MS, 1).layer(mock.clone())));
        let resp = svc.oneshot(read()).await.unwrap();
        assert_eq!((resp.info().attempts, resp.info().speculative), (3, 1));
        // a hedged request whose race fails, without retries
        let mock = Mock::new(race());
        let svc = metrics.layer(fixed(20 * MS, 1).layer(mock.clone()));
        let err = svc.oneshot(read()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Overloaded);
        // and with retries, both races failing
        let mock = Mock::new(race().into_iter().chain(race()));
        let svc = metrics.layer(retry.layer(fixed(20 * MS, 1).layer(mock.clone())));
        svc.oneshot(read()).await.unwrap_err();
        let overloaded = Some(ErrorKind::Overloaded);
        assert_eq!(
            rec.requests(),
            [(3, 1, None), (2, 1, overloaded), (4, 2, overloaded)],
            "(attempts, speculative, error) of each request event: attempts as many as the attempt events"
        );
    }

    /// A slow storm: every first attempt is stuck, so every read wants a
    /// speculative attempt. The budget (here the default: 20 % of the
    /// requests, plus 10 a second over 10 s) bounds them, and each one it
    /// refuses is a throttle event.
    #[tokio::test(start_paused = true)]
    async fn speculative_attempts_are_bounded_by_the_budget() {
        let (recorder, collectors) = crate::retry::mock::Recorder::new();
        let layer = HedgeLayer::new(
            HedgeConfig {
                delay: HedgeDelay::Fixed(10 * MS),
                max_speculative: 2,
                ..HedgeConfig::default()
            },
            collectors,
        );
        let svc = layer.layer(by_reason(Duration::from_secs(1), MS));
        let reads = 1000;
        let responses =
            futures::future::join_all((0..reads).map(|_| svc.clone().oneshot(read()))).await;
        let speculative: u32 = responses
            .into_iter()
            .map(|r| r.unwrap().info().speculative)
            .sum();
        // 10/s * 10 s + 0.2 * 1000 reads
        let allowed = 100 + 200;
        assert!(
            speculative <= allowed,
            "{speculative} speculative attempts for {reads} reads, the budget allows {allowed}"
        );
        assert_eq!(speculative, allowed, "the budget is used, not refused");
        // a read the budget refused is not hedged again later
        let refused = recorder.refusals();
        assert_eq!(refused.len(), reads - allowed as usize);
        assert!(refused.iter().all(|&l| l == "hedge_budget"), "{refused:?}");
    }

    /// In the stack, retries and speculative attempts draw on one budget:
    /// a storm of slow failures is bounded by it as a whole.
    #[tokio::test(start_paused = true)]
    async fn in_the_stack_retries_and_speculative_attempts_share_the_budget() {
        use crate::retry::{Backoff, BudgetConfig, RetryConfig};
        use crate::stack::StackBuilder;
        use std::sync::atomic::AtomicU32;
        let (recorder, collectors) = crate::retry::mock::Recorder::new();
        let layers = StackBuilder::new(collectors)
            .without_trace()
            .without_metrics()
            .without_timeout()
            .retry(RetryConfig {
                max_attempts: 3,
                backoff: Backoff { base: MS, max: MS },
                budget: BudgetConfig {
                    ratio: 0.5,
                    min_per_second: 0,
                    window: Duration::from_secs(10),
                },
            })
            .hedge(HedgeConfig {
                delay: HedgeDelay::Fixed(20 * MS),
                max_speculative: 1,
                ..HedgeConfig::default()
            })
            .layers()
            .unwrap();
        let budget = layers.retry.as_ref().unwrap().policy().budget().clone();
        // every attempt fails: first attempts after 100 ms (so they are
        // hedged), the others at once
        let by_reason: Arc<[AtomicU32; 3]> = Arc::default();
        let driver = tower::service_fn({
            let by_reason = by_reason.clone();
            move |req: CqlRequest| {
                let reason = req.meta().attempt_reason();
                by_reason[reason as usize].fetch_add(1, Ordering::SeqCst);
                async move {
                    if reason != AttemptReason::Speculative {
                        tokio::time::sleep(100 * MS).await;
                    }
                    Err::<CqlResponse, _>(CqlError::new(ErrorKind::Overloaded, "storm"))
                }
            }
        });
        let svc = layers.service(driver);
        let reads = 200;
        for r in futures::future::join_all((0..reads).map(|_| svc.clone().oneshot(read()))).await {
            assert_eq!(r.unwrap_err().kind(), ErrorKind::Overloaded);
        }
        let count = |r: AttemptReason| by_reason[r as usize].load(Ordering::SeqCst);
        let (retries, speculative) = (
            count(AttemptReason::Retry),
            count(AttemptReason::Speculative),
        );
        assert_eq!(count(AttemptReason::Initial), reads);
        // half an extra attempt per read, retries and hedges together
        assert!(
            retries + speculative <= reads / 2,
            "{retries} retries and {speculative} speculative attempts for {reads} reads, \
             the budget allows {}",
            reads / 2
        );
        assert_eq!(retries + speculative, reads / 2, "the budget is used");
        // The speculative attempts, due first (20 ms), took it all: the
        // retries (after 100 ms) found it spent. One bound for both.
        assert_eq!((retries, speculative), (0, reads / 2));
        assert_eq!(budget.retries_in_window(), u64::from(reads / 2));
        let refused = recorder.refusals();
        assert!(refused.contains(&"hedge_budget"), "{refused:?}");
        assert!(refused.contains(&"retry_budget"), "{refused:?}");
    }
}
