//! Load shedding: refuse a request at once when the inner service is not
//! ready, instead of waiting for it.
//!
//! ```
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_cql_core::{Collectors, CqlError, CqlRequest, ErrorKind};
//! use tower_cql_middleware::concurrency::{ConcurrencyConfig, ConcurrencyLimitLayer};
//! use tower_cql_middleware::load_shed::LoadShedLayer;
//! use tower_layer::Layer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let collectors = Collectors::new();
//! // One request at a time, for use under a load shedder: its poll_ready
//! // is pending while the one slot is taken ...
//! let limit = ConcurrencyLimitLayer::new(
//!     ConcurrencyConfig { max_in_flight: 1, ..ConcurrencyConfig::default() },
//!     collectors.clone(),
//! )
//! .for_load_shed();
//! let inner = service_fn(|_req: CqlRequest| async { Ok::<_, CqlError>("done") });
//! let mut busy = limit.layer(inner);
//! let first = busy.ready().await?.call(CqlRequest::query("SELECT v FROM ks.t"));
//! // ... so behind the load shedder, a request that would wait is refused.
//! let mut svc = LoadShedLayer::new(collectors).layer(busy.clone());
//! let err = svc.ready().await?.call(CqlRequest::query("SELECT v FROM ks.t")).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::Shed);
//! first.await?;
//! # Ok(()) }
//! ```
//!
//! # What it does
//! `poll_ready` polls the inner service once and is always ready itself.
//! When the inner service was ready the call goes through; when it was
//! pending, the call fails at once with
//! [`ErrorKind::Shed`] (the request was not
//! sent) and emits [`Event::Shed`] with
//! `reason: Shed, layer: "load_shed"`. An error from the inner `poll_ready`
//! is returned as it is.
//!
//! A shed request gives back what the inner service reserved for it while
//! it was not ready (under a rate limit built `for_load_shed` with no
//! token due, the slot the concurrency limit below it took): the service
//! drops its inner service for a clone, which holds nothing, so the inner
//! service must be `Clone`. Otherwise a service kept between requests
//! would hold that slot while idle, and the requests of every other
//! service would be shed for want of it.
//!
//! tower's `LoadShed` does the same but boxes its error (`Overloaded`, to be
//! downcast back); this one fails with a [`CqlError`] of the core taxonomy,
//! which retry, metrics and breakers already read.
//!
//! Put it outside a limit built `for_load_shed`
//! ([`ConcurrencyLimitLayer::for_load_shed`](crate::concurrency::ConcurrencyLimitLayer::for_load_shed),
//! and the same on the adaptive limit and the rate limit in `Wait` mode)
//! to turn its waiting into refusals; the stack builder does so when load
//! shedding is on. A limit built the default way is always ready (its
//! requests wait in their response futures, inside their latency and
//! deadline), so a load shedder above it sheds nothing for it.

pub mod future;
mod layer;

use std::task::{Context, Poll};

use tower_cql_core::event::ShedEvent;
use tower_cql_core::{Collectors, CqlError, CqlRequest, ErrorKind, Event};
use tower_service::Service;

pub use self::future::ResponseFuture;
pub use self::layer::LoadShedLayer;

/// Refuses requests while its inner service is not ready; see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct LoadShed<S> {
    inner: S,
    /// `None`: a pass-through.
    collectors: Option<Collectors>,
    /// Whether the inner service said ready in the last `poll_ready`.
    inner_ready: bool,
}

impl<S> LoadShed<S> {
    /// Wraps `inner`, emitting into `collectors`.
    pub fn new(inner: S, collectors: Collectors) -> LoadShed<S> {
        LoadShed {
            inner,
            collectors: Some(collectors),
            inner_ready: false,
        }
    }

    /// A service that sheds nothing and only forwards to `inner` (see
    /// [`toggle`](crate::toggle)): its `poll_ready` is the inner one, so a
    /// busy inner service makes callers wait.
    pub fn pass_through(inner: S) -> LoadShed<S> {
        LoadShed {
            inner,
            collectors: None,
            inner_ready: false,
        }
    }

    /// Whether this service passes requests through without shedding.
    pub fn is_pass_through(&self) -> bool {
        self.collectors.is_none()
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

impl<S, R> Service<CqlRequest> for LoadShed<S>
where
    S: Service<CqlRequest, Response = R, Error = CqlError> + Clone,
{
    type Response = R;
    type Error = CqlError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        if self.collectors.is_none() {
            return self.inner.poll_ready(cx);
        }
        self.inner_ready = match self.inner.poll_ready(cx) {
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => true,
            Poll::Pending => false,
        };
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: CqlRequest) -> Self::Future {
        let Some(collectors) = &self.collectors else {
            return ResponseFuture::called(self.inner.call(req));
        };
        if std::mem::take(&mut self.inner_ready) {
            return ResponseFuture::called(self.inner.call(req));
        }
        // what the inner service reserved while it was not ready (the slot
        // of a concurrency limit, below a rate limit with no token) goes back
        crate::refusal::release(&mut self.inner);
        if collectors.is_active() {
            collectors.emit(Event::Shed(ShedEvent::new(
                req.meta(),
                ErrorKind::Shed,
                "load_shed",
            )));
        }
        ResponseFuture::refused(CqlError::new(
            ErrorKind::Shed,
            "load shed: the inner service was not ready (at capacity), so the request was refused instead of waiting",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use tower::ServiceExt;
    use tower_cql_core::Collector;
    use tower_layer::Layer;

    /// Keeps (reason, layer) of every shed event.
    #[derive(Default)]
    struct Sheds(Mutex<Vec<(ErrorKind, &'static str)>>);
    impl Collector for Sheds {
        fn on_shed(&self, e: &ShedEvent<'_>) {
            self.0.lock().unwrap().push((e.reason, e.layer));
        }
    }

    /// A service that is ready only when its switch is on.
    #[derive(Clone)]
    struct Gated(Arc<AtomicBool>);
    impl Service<CqlRequest> for Gated {
        type Response = &'static str;
        type Error = CqlError;
        type Future = std::future::Ready<Result<&'static str, CqlError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
            if self.0.load(Ordering::SeqCst) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
        fn call(&mut self, _: CqlRequest) -> Self::Future {
            assert!(self.0.load(Ordering::SeqCst), "called while not ready");
            std::future::ready(Ok("served"))
        }
    }

    fn req() -> CqlRequest {
        CqlRequest::query("SELECT v FROM ks.t WHERE k = 1")
    }

    #[tokio::test]
    async fn sheds_while_the_inner_service_is_not_ready() {
        let sheds = Arc::new(Sheds::default());
        let collectors = Collectors::with([sheds.clone()]);
        let switch = Arc::new(AtomicBool::new(false));
        let mut svc = LoadShedLayer::new(collectors).layer(Gated(switch.clone()));
        let err = svc.ready().await.unwrap().call(req()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Shed);
        assert!(err.was_not_sent());
        assert_eq!(
            *sheds.0.lock().unwrap(),
            vec![(ErrorKind::Shed, "load_shed")]
        );
        switch.store(true, Ordering::SeqCst);
        assert_eq!(
            svc.ready().await.unwrap().call(req()).await.unwrap(),
            "served"
        );
        assert_eq!(sheds.0.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shed_request_gives_back_what_the_limits_below_reserved() {
        // load shed -> rate limit (one token a second, burst 1) ->
        // concurrency limit (1), both built for load shedding: poll_ready
        // takes the slot, then the token. A long-lived service shed for
        // want of a token must not keep the slot taken for it.
        use crate::concurrency::{ConcurrencyConfig, ConcurrencyLimitLayer};
        use crate::rate_limit::{RateLimitConfig, RateLimitLayer, RateLimitMode};
        use std::time::Duration;
        let rate = RateLimitLayer::new(
            RateLimitConfig {
                rate_per_second: 1.0,
                burst: 1,
                mode: RateLimitMode::Wait {
                    max_wait: Duration::from_secs(10),
                },
            },
            Collectors::new(),
        )
        .for_load_shed();
        let limit = ConcurrencyLimitLayer::new(
            ConcurrencyConfig {
                max_in_flight: 1,
                max_queue: 0,
                queue_timeout: None,
            },
            Collectors::new(),
        )
        .for_load_shed();
        let shed = LoadShedLayer::new(Collectors::new());
        let inner = tower::service_fn(|_: CqlRequest| async { Ok::<_, CqlError>("served") });
        let stack = || shed.layer(rate.layer(limit.layer(inner)));
        // the first request spends the token
        assert_eq!(stack().oneshot(req()).await.unwrap(), "served");
        let mut long_lived = stack();
        let err = long_lived.ready().await.unwrap().call(req()).await;
        assert_eq!(err.unwrap_err().kind(), ErrorKind::Shed);
        assert_eq!(limit.in_flight(), 0, "the slot went back");
        // a second later the next token is due, and nothing is in flight:
        // the next request is served, not shed for want of the slot
        tokio::time::advance(Duration::from_secs(1)).await;
        let out = stack().oneshot(req()).await;
        assert_eq!(
            out.map_err(|e| e.to_string()),
            Ok("served"),
            "nothing in flight and a token due, yet refused"
        );
        drop(long_lived);
    }

    #[tokio::test]
    async fn inner_poll_ready_errors_pass_through() {
        #[derive(Debug, Clone)]
        struct Broken;
        impl Service<CqlRequest> for Broken {
            type Response = ();
            type Error = CqlError;
            type Future = std::future::Ready<Result<(), CqlError>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
                Poll::Ready(Err(CqlError::shut_down()))
            }
            fn call(&mut self, _: CqlRequest) -> Self::Future {
                unreachable!()
            }
        }
        let mut svc = LoadShed::new(Broken, Collectors::new());
        let err = svc.ready().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ShutDown);
    }
}
