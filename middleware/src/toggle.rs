//! Layers that can be switched off without changing the service type.
//!
//! Every layer of this crate has a pass-through mode: its service type can
//! also be made with nothing to do, and then only forwards `poll_ready` and
//! `call` to its inner service, and its future only polls the inner future.
//! A pass-through reads no clock, touches no atomic, allocates nothing,
//! emits no event and opens no span. [`PassThrough`] names that mode on the
//! layer, and [`Toggle`] is a layer that is either the real one or its
//! pass-through, with one service type either way:
//!
//! ```
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_cql_core::{Collectors, CqlError, CqlRequest, ErrorKind};
//! use tower_cql_middleware::rate_limit::{RateLimit, RateLimitConfig, RateLimitLayer, RateLimitMode};
//! use tower_cql_middleware::toggle::Toggle;
//! use tower_layer::Layer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = RateLimitConfig { rate_per_second: 1.0, burst: 1, mode: RateLimitMode::Reject };
//! let inner = service_fn(|_req: CqlRequest| async { Ok::<_, CqlError>("done") });
//! let req = || CqlRequest::query("SELECT v FROM ks.t WHERE k = 1");
//!
//! // On: the second request in the same second is refused.
//! let on = Toggle::on(RateLimitLayer::new(config, Collectors::new()));
//! let mut svc: RateLimit<_> = on.layer(inner.clone());
//! svc.ready().await?.call(req()).await?;
//! let err = svc.ready().await?.call(req()).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::RateLimited);
//!
//! // Off: the same type, passing every request through.
//! let off = Toggle::<RateLimitLayer>::off();
//! let mut svc: RateLimit<_> = off.layer(inner);
//! assert!(svc.is_pass_through());
//! for _ in 0..10 {
//!     assert_eq!(svc.ready().await?.call(req()).await?, "done");
//! }
//! # Ok(()) }
//! ```
//!
//! [`StackBuilder`](crate::stack::StackBuilder) builds its stack this way,
//! so the stack is one concrete type, not boxed, whatever is switched on
//! (with one more step: while the six layers its default has off are all
//! off, the stack is the composition without them, see
//! [`StackLayers::service`](crate::stack::StackLayers::service)). Unlike tower's `option_layer` (an `Either`
//! whose service type holds both the layer's service and the inner one,
//! so it doubles with each optional level), a [`Toggle`]'s service type is
//! the layer's own. This is the one way a layer is switched off.

use tower_layer::Layer;

/// A layer whose service type has a pass-through mode (see the
/// [module docs](self)).
pub trait PassThrough<S>: Layer<S> {
    /// This layer's service type around `inner`, doing nothing but
    /// forwarding to it: `poll_ready` and `call` go straight to `inner`,
    /// and the response future only polls `inner`'s.
    fn pass_through(inner: S) -> Self::Service;
}

/// A layer that is either `L` or `L`'s pass-through, with `L`'s service
/// type either way (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Toggle<L> {
    layer: Option<L>,
}

impl<L> Toggle<L> {
    /// `Some(layer)` wraps with `layer`; `None` passes through.
    pub fn new(layer: Option<L>) -> Toggle<L> {
        Toggle { layer }
    }

    /// Wraps with `layer`.
    pub fn on(layer: L) -> Toggle<L> {
        Toggle { layer: Some(layer) }
    }

    /// Passes through.
    pub fn off() -> Toggle<L> {
        Toggle { layer: None }
    }

    /// The layer, when on.
    pub fn get(&self) -> Option<&L> {
        self.layer.as_ref()
    }

    /// Whether the layer is on.
    pub fn is_on(&self) -> bool {
        self.layer.is_some()
    }
}

impl<L> Default for Toggle<L> {
    /// Off.
    fn default() -> Toggle<L> {
        Toggle::off()
    }
}

impl<L> From<Option<L>> for Toggle<L> {
    fn from(layer: Option<L>) -> Toggle<L> {
        Toggle::new(layer)
    }
}

impl<S, L: PassThrough<S>> Layer<S> for Toggle<L> {
    type Service = L::Service;

    fn layer(&self, inner: S) -> L::Service {
        match &self.layer {
            Some(layer) => layer.layer(inner),
            None => L::pass_through(inner),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Ready;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::task::{Context, Poll};

    use tower::ServiceExt;
    use tower_cql_core::{CqlError, CqlRequest, CqlResponse, ErrorKind, ExecutionInfo};
    use tower_service::Service;

    use super::*;
    use crate::breaker::{CircuitBreaker, CircuitBreakerLayer};
    use crate::concurrency::{
        AdaptiveConcurrency, AdaptiveConcurrencyLayer, ConcurrencyLimit, ConcurrencyLimitLayer,
    };
    use crate::hedge::{Hedge, HedgeLayer};
    use crate::load_shed::{LoadShed, LoadShedLayer};
    use crate::metrics::{Metrics, MetricsLayer};
    use crate::rate_limit::{RateLimit, RateLimitConfig, RateLimitLayer};
    use crate::retry::{Retry, RetryLayer};
    use crate::timeout::{Timeout, TimeoutConfig, TimeoutLayer};
    use crate::trace::{AttemptTrace, AttemptTraceLayer, Trace, TraceLayer};

    /// Ready only while its switch is on; answers with 7 attempts (a mark
    /// no layer would set), or fails when told to.
    #[derive(Clone)]
    struct Inner {
        ready: Arc<AtomicBool>,
        fail: bool,
        calls: Arc<AtomicU32>,
    }

    impl Inner {
        fn new(fail: bool) -> Inner {
            Inner {
                ready: Arc::new(AtomicBool::new(true)),
                fail,
                calls: Arc::new(AtomicU32::new(0)),
            }
        }
    }

    impl Service<CqlRequest> for Inner {
        type Response = CqlResponse;
        type Error = CqlError;
        type Future = Ready<Result<CqlResponse, CqlError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
            if self.ready.load(Ordering::SeqCst) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }

        fn call(&mut self, _: CqlRequest) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(if self.fail {
                Err(CqlError::new(ErrorKind::Overloaded, "inner"))
            } else {
                Ok(CqlResponse::synthetic(ExecutionInfo {
                    attempts: 7,
                    ..ExecutionInfo::default()
                }))
            })
        }
    }

    /// `L`'s pass-through forwards readiness (pending stays pending: no
    /// shedding, no queue) and calls, and hands back the inner answers
    /// untouched, whatever they are.
    async fn forwards<L>()
    where
        L: PassThrough<Inner>,
        L::Service: Service<CqlRequest, Response = CqlResponse, Error = CqlError>,
    {
        let name = std::any::type_name::<L>();
        let inner = Inner::new(false);
        let mut svc = Toggle::<L>::off().layer(inner.clone());
        inner.ready.store(false, Ordering::SeqCst);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(svc.poll_ready(&mut cx).is_pending(), "{name}");
        inner.ready.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            let resp = svc
                .ready()
                .await
                .unwrap()
                .call(CqlRequest::query("SELECT v FROM ks.t WHERE k = 1").idempotent(true))
                .await
                .unwrap();
            assert_eq!(resp.info().attempts, 7, "{name}");
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3, "{name}");

        let failing = Inner::new(true);
        let err = Toggle::<L>::off()
            .layer(failing.clone())
            .oneshot(CqlRequest::query("INSERT INTO ks.t (k) VALUES (1)"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Overloaded, "{name}");
        assert_eq!(err.attempts(), 1, "{name}: not retried");
        assert_eq!(failing.calls.load(Ordering::SeqCst), 1, "{name}");
    }

    #[tokio::test]
    async fn every_pass_through_only_forwards() {
        forwards::<TraceLayer>().await;
        forwards::<MetricsLayer>().await;
        forwards::<LoadShedLayer>().await;
        forwards::<CircuitBreakerLayer>().await;
        forwards::<RateLimitLayer>().await;
        forwards::<ConcurrencyLimitLayer>().await;
        forwards::<AdaptiveConcurrencyLayer>().await;
        forwards::<RetryLayer>().await;
        forwards::<HedgeLayer>().await;
        forwards::<AttemptTraceLayer>().await;
        forwards::<TimeoutLayer>().await;
    }

    #[test]
    fn a_pass_through_says_so_and_reports_no_limits() {
        let i = || Inner::new(false);
        assert!(Trace::pass_through(i()).is_pass_through());
        assert!(AttemptTrace::pass_through(i()).is_pass_through());
        assert!(Metrics::pass_through(i()).is_pass_through());
        assert!(LoadShed::pass_through(i()).is_pass_through());

        let b = CircuitBreaker::pass_through(i());
        assert!(b.is_pass_through());
        assert_eq!(b.state("10.0.0.1:9042"), None);
        assert!(b.states().is_empty());

        let r = RateLimit::pass_through(i());
        assert!(r.is_pass_through());
        assert_eq!(r.config().rate_per_second, f64::INFINITY);
        assert!(RateLimitConfig::UNLIMITED.validate().is_err());

        let c = ConcurrencyLimit::pass_through(i());
        assert!(c.is_pass_through());
        assert!(c.clone().is_pass_through());
        assert_eq!((c.in_flight(), c.queued()), (0, 0));

        let a = AdaptiveConcurrency::pass_through(i());
        assert!(a.is_pass_through());
        assert_eq!(a.current_limit(), usize::MAX);
        assert_eq!((a.in_flight(), a.queued()), (0, 0));

        let r = Retry::pass_through(i());
        assert!(r.is_pass_through());
        assert_eq!(r.policy().max_attempts(), 1);

        let h = Hedge::pass_through(i());
        assert!(h.is_pass_through());
        assert!(!h.collectors().is_active());

        let t = Timeout::pass_through(i());
        assert!(t.is_pass_through());
        assert_eq!(*t.config(), TimeoutConfig::OFF);
        // a timeout with nothing to enforce is one
        assert!(Timeout::new(i(), TimeoutConfig::OFF).is_pass_through());
        assert!(!Timeout::new(i(), TimeoutConfig::default()).is_pass_through());

        // the layers' own services are not pass-throughs
        let c = tower_cql_core::Collectors::new();
        assert!(
            !Toggle::on(TraceLayer::new(Default::default()))
                .layer(i())
                .is_pass_through()
        );
        assert!(
            !Toggle::on(LoadShedLayer::new(c.clone()))
                .layer(i())
                .is_pass_through()
        );
        assert!(
            !Toggle::on(RetryLayer::new(Default::default(), c))
                .layer(i())
                .is_pass_through()
        );
        assert!(Toggle::<RetryLayer>::default().layer(i()).is_pass_through());
        assert!(!Toggle::<RetryLayer>::from(None).is_on());
    }
}
