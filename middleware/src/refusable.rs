//! The future of a layer that either calls the inner service or refuses
//! the request at once (the load shedder).
//!
//! ```
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_cql_core::{Collectors, CqlError, CqlRequest, ErrorKind};
//! use tower_cql_middleware::concurrency::{ConcurrencyConfig, ConcurrencyLimitLayer};
//! use tower_cql_middleware::load_shed::LoadShedLayer;
//! use tower_layer::Layer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let inner = service_fn(|_r: CqlRequest| async { Ok::<_, CqlError>("done") });
//! let config = ConcurrencyConfig { max_in_flight: 1, ..ConcurrencyConfig::default() };
//! let limit = ConcurrencyLimitLayer::new(config, Collectors::new()).for_load_shed();
//! let mut svc = LoadShedLayer::new(Collectors::new()).layer(limit.layer(inner));
//! // the first request is called (and holds the one slot), the second
//! // refused: both are a RefusableFuture
//! let first = svc.ready().await.unwrap().call(CqlRequest::query("SELECT 1 FROM t"));
//! let err = svc.ready().await.unwrap().call(CqlRequest::query("SELECT 1 FROM t")).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::Shed);
//! assert_eq!(first.await.unwrap(), "done");
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_cql_core::CqlError;

pin_project! {
    /// The inner service's future, or the refusal of a request the layer
    /// did not admit.
    pub struct RefusableFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F },
        Refused { error: Option<CqlError> },
    }
}

impl<F> RefusableFuture<F> {
    pub(crate) fn called(future: F) -> RefusableFuture<F> {
        RefusableFuture {
            kind: Kind::Called { future },
        }
    }

    pub(crate) fn refused(error: CqlError) -> RefusableFuture<F> {
        RefusableFuture {
            kind: Kind::Refused { error: Some(error) },
        }
    }
}

impl<F> fmt::Debug for RefusableFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Called { .. } => "called",
            Kind::Refused { .. } => "refused",
        };
        f.debug_struct("RefusableFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, R> Future for RefusableFuture<F>
where
    F: Future<Output = Result<R, CqlError>>,
{
    type Output = Result<R, CqlError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future } => future.poll(cx),
            KindProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .expect("RefusableFuture polled after completion"))),
        }
    }
}
