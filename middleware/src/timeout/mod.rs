//! A per-attempt timeout that also honours the request's deadline.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_cql_core::{CqlError, CqlRequest, ErrorKind};
//! use tower_cql_middleware::timeout::{TimeoutConfig, TimeoutLayer};
//! use tower_layer::Layer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = TimeoutLayer::new(TimeoutConfig {
//!     per_attempt: Some(Duration::from_millis(20)),
//!     honour_deadline: true,
//! });
//! // A node that takes a second to answer.
//! let slow = service_fn(|_req: CqlRequest| async {
//!     tokio::time::sleep(Duration::from_secs(1)).await;
//!     Ok::<_, CqlError>("late")
//! });
//! let mut svc = layer.layer(slow);
//! let err = svc.ready().await?.call(CqlRequest::query("SELECT v FROM ks.t")).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::ClientTimeout);
//! // The request's own deadline, when sooner, wins.
//! let req = CqlRequest::query("SELECT v FROM ks.t").timeout(Duration::from_millis(5));
//! let err = svc.ready().await?.call(req).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
//! # Ok(()) }
//! ```
//!
//! # What it does
//! Each call races the inner future against one timer set to the sooner
//! of `per_attempt` and the time left until the request's deadline
//! ([`RequestMeta::deadline`](tower_cql_core::RequestMeta::deadline), when
//! `honour_deadline`). The timer lives inside the response future (no
//! boxing). When it fires the inner future is dropped and the call fails:
//! - per-attempt timeout: [`ErrorKind::ClientTimeout`](tower_cql_core::ErrorKind::ClientTimeout)
//!   ("...after 200ms..."): the attempt may have been applied, so only an
//!   idempotent request should be retried (a retry layer outside this one
//!   does that);
//! - deadline: [`ErrorKind::DeadlineExceeded`](tower_cql_core::ErrorKind::DeadlineExceeded).
//!   A request whose deadline has passed already is failed without calling
//!   the inner service (and marked not sent).
//!
//! Put it inside a retry layer to bound each attempt, and outside to bound
//! the whole request (the deadline does that too, for every layer that
//! reads it).
//!
//! The layer emits no event of its own: the error reaches the layers and
//! collectors outside it.

pub mod future;
mod layer;

use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower_cql_core::{CqlError, CqlRequest, clock};
use tower_service::Service;

use crate::config::ConfigError;

pub use self::future::ResponseFuture;
pub use self::layer::TimeoutLayer;

/// Configures a [`TimeoutLayer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutConfig {
    /// The longest one call may take (`None`: no per-attempt limit; not
    /// zero, at most 100 years). Default `None`.
    pub per_attempt: Option<Duration>,
    /// Whether to fail the call when the request's deadline passes.
    /// Default true.
    pub honour_deadline: bool,
}

impl Default for TimeoutConfig {
    fn default() -> TimeoutConfig {
        TimeoutConfig {
            per_attempt: None,
            honour_deadline: true,
        }
    }
}

impl TimeoutConfig {
    /// Nothing to enforce: no per-attempt limit, and the deadline left to
    /// the layers that read it. A [`Timeout`] with this configuration is a
    /// [pass-through](Timeout::pass_through).
    pub const OFF: TimeoutConfig = TimeoutConfig {
        per_attempt: None,
        honour_deadline: false,
    };

    /// Whether there is nothing to enforce (see [`TimeoutConfig::OFF`]).
    pub fn is_off(&self) -> bool {
        self.per_attempt.is_none() && !self.honour_deadline
    }

    /// Checks every field; the error names the field and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::config::optional_limit(
            "timeout.per_attempt",
            self.per_attempt,
            "no per-attempt limit",
        )
    }
}

/// Bounds each call to its inner service; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    config: TimeoutConfig,
}

impl<S> Timeout<S> {
    /// Wraps `inner`.
    ///
    /// # Panics
    /// If `config` is invalid (see [`TimeoutConfig::validate`]).
    #[track_caller]
    pub fn new(inner: S, config: TimeoutConfig) -> Timeout<S> {
        crate::config::checked(config.validate());
        Timeout { inner, config }
    }

    /// A service with no timer that only forwards to `inner` (see
    /// [`toggle`](crate::toggle)): its configuration is
    /// [`TimeoutConfig::OFF`], and no clock is read.
    pub fn pass_through(inner: S) -> Timeout<S> {
        Timeout {
            inner,
            config: TimeoutConfig::OFF,
        }
    }

    /// Whether this service passes calls through with no timer (its
    /// configuration has nothing to enforce).
    pub fn is_pass_through(&self) -> bool {
        self.config.is_off()
    }

    /// The configuration.
    pub fn config(&self) -> &TimeoutConfig {
        &self.config
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Which limit a timer enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    PerAttempt(Duration),
    Deadline,
}

impl<S, R> Service<CqlRequest> for Timeout<S>
where
    S: Service<CqlRequest, Response = R, Error = CqlError>,
{
    type Response = R;
    type Error = CqlError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        self.inner.poll_ready(cx)
    }

    #[inline(always)]
    fn call(&mut self, req: CqlRequest) -> Self::Future {
        let deadline = if self.config.honour_deadline {
            req.meta()
                .deadline()
                .map(|d| (Instant::from_std(d), Limit::Deadline))
        } else {
            None
        };
        // no per-attempt timeout and no deadline on this request: nothing
        // to time (and no clock to read)
        if self.config.per_attempt.is_none() && deadline.is_none() {
            return ResponseFuture::pass_through(self.inner.call(req));
        }
        let now = clock::now();
        let per_attempt = self
            .config
            .per_attempt
            .map(|d| (now + d, Limit::PerAttempt(d)));
        // The sooner wins; at a tie the deadline (the binding constraint).
        let timer = match (per_attempt, deadline) {
            (Some(p), Some(d)) => Some(if d.0 <= p.0 { d } else { p }),
            (p, d) => p.or(d),
        };
        if let Some((at, Limit::Deadline)) = timer
            && at <= now
        {
            return ResponseFuture::failed(CqlError::deadline_passed_before_sending(
                "the request's deadline had passed before the attempt started",
            ));
        }
        let route = match timer {
            Some((_, Limit::PerAttempt(_))) => req
                .meta()
                .route()
                .map(|h| (h.clone(), req.meta().attempt_index())),
            _ => None,
        };
        ResponseFuture::new(self.inner.call(req), timer, now, route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{ServiceExt, service_fn};
    use tower_cql_core::ErrorKind;
    use tower_layer::Layer;

    fn req() -> CqlRequest {
        CqlRequest::query("SELECT v FROM ks.t WHERE k = 1")
    }

    /// An inner service answering after `d`.
    fn after(
        d: Duration,
    ) -> impl Service<CqlRequest, Response = &'static str, Error = CqlError> + Clone {
        service_fn(move |_req: CqlRequest| async move {
            tokio::time::sleep(d).await;
            Ok("answer")
        })
    }

    fn timeout(per_attempt: Option<Duration>, honour_deadline: bool) -> TimeoutLayer {
        TimeoutLayer::new(TimeoutConfig {
            per_attempt,
            honour_deadline,
        })
    }

    fn in_ms(ms: u64) -> std::time::Instant {
        (Instant::now() + Duration::from_millis(ms)).into_std()
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_answer_passes() {
        let svc =
            timeout(Some(Duration::from_millis(100)), true).layer(after(Duration::from_millis(99)));
        assert_eq!(
            svc.oneshot(req().deadline(in_ms(100))).await.unwrap(),
            "answer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_per_attempt_timeout_is_a_client_timeout() {
        let svc =
            timeout(Some(Duration::from_millis(100)), true).layer(after(Duration::from_secs(5)));
        let t0 = Instant::now();
        let err = svc.oneshot(req().deadline(in_ms(500))).await.unwrap_err();
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        assert_eq!(err.kind(), ErrorKind::ClientTimeout);
        assert!(err.message().contains("after 100ms"), "{err}");
        assert!(err.may_have_been_applied());
        assert!(!err.was_not_sent());
    }

    #[tokio::test(start_paused = true)]
    async fn a_sooner_deadline_is_deadline_exceeded() {
        let svc =
            timeout(Some(Duration::from_millis(100)), true).layer(after(Duration::from_secs(5)));
        let t0 = Instant::now();
        let err = svc.oneshot(req().deadline(in_ms(30))).await.unwrap_err();
        assert_eq!(t0.elapsed(), Duration::from_millis(30));
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
        // With no per-attempt limit the deadline alone applies.
        let svc = timeout(None, true).layer(after(Duration::from_secs(5)));
        let err = svc.oneshot(req().deadline(in_ms(70))).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
    }

    #[tokio::test(start_paused = true)]
    async fn a_passed_deadline_fails_without_calling() {
        let called = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = called.clone();
        let inner = service_fn(move |_req: CqlRequest| {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, CqlError>(()) }
        });
        let svc = timeout(Some(Duration::from_secs(1)), true).layer(inner);
        let past = Instant::now().into_std();
        tokio::time::advance(Duration::from_millis(1)).await;
        let err = svc.oneshot(req().deadline(past)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
        assert!(err.was_not_sent());
        // no attempt was made: none is counted (as the driver's own
        // refusal of a passed deadline counts none)
        assert_eq!(err.attempts(), 0, "{err}");
        assert!(!called.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_can_be_ignored_and_no_limit_means_none() {
        let svc =
            timeout(Some(Duration::from_millis(100)), false).layer(after(Duration::from_secs(5)));
        let err = svc.oneshot(req().deadline(in_ms(10))).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ClientTimeout);
        let svc = timeout(None, false).layer(after(Duration::from_secs(5)));
        let t0 = Instant::now();
        assert!(svc.oneshot(req().deadline(in_ms(10))).await.is_ok());
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn inner_errors_pass_through() {
        let inner = service_fn(|_req: CqlRequest| async {
            Err::<(), _>(CqlError::new(ErrorKind::Overloaded, "busy"))
        });
        let svc = Timeout::new(
            inner,
            TimeoutConfig {
                per_attempt: Some(Duration::from_secs(1)),
                honour_deadline: true,
            },
        );
        assert_eq!(
            svc.oneshot(req()).await.unwrap_err().kind(),
            ErrorKind::Overloaded
        );
    }

    #[test]
    fn config_validation_names_the_field() {
        assert_eq!(TimeoutConfig::default().validate(), Ok(()));
        let err = TimeoutConfig {
            per_attempt: Some(Duration::ZERO),
            honour_deadline: true,
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.field, "timeout.per_attempt");
        assert!(err.message.contains("greater than zero"), "{err}");
        let msg = crate::config::panic_message(|| {
            TimeoutLayer::new(TimeoutConfig {
                per_attempt: Some(Duration::ZERO),
                honour_deadline: false,
            })
        });
        assert!(msg.contains("timeout.per_attempt"), "{msg}");
    }
}
