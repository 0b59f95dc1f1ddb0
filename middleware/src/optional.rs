//! A layer that may be switched off without boxing, for any layer:
//! `Optional<L>` wraps when configured, passes through when not. Its type
//! holds the inner service twice, so it doubles with each optional level;
//! for this crate's layers prefer [`Toggle`](crate::toggle::Toggle), whose
//! service type is the layer's own (each layer has a pass-through mode),
//! as [`StackBuilder`](crate::stack::StackBuilder) does.
//!
//! ```
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_cql_core::{CqlRequest, CqlResponse, ExecutionInfo};
//! use tower_cql_middleware::optional::OptionalLayer;
//! use tower_cql_middleware::trace::{TraceConfig, TraceLayer};
//! use tower_layer::Layer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let inner = service_fn(|_r: CqlRequest| async {
//!     Ok::<_, tower_cql_core::CqlError>(CqlResponse::synthetic(ExecutionInfo::default()))
//! });
//! let off: OptionalLayer<TraceLayer> = OptionalLayer::new(None);
//! let mut svc = off.layer(inner);
//! svc.ready().await.unwrap().call(CqlRequest::query("SELECT 1 FROM t")).await.unwrap();
//! # let _ = TraceLayer::new(TraceConfig::default());
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_cql_core::{CqlError, CqlRequest, CqlResponse};
use tower_layer::Layer;

/// A layer applied only when present.
#[derive(Debug, Clone)]
pub struct OptionalLayer<L> {
    inner: Option<L>,
}

impl<L> OptionalLayer<L> {
    /// `Some(layer)` wraps; `None` passes through.
    pub fn new(inner: Option<L>) -> OptionalLayer<L> {
        OptionalLayer { inner }
    }
}

impl<S, L: Layer<S>> Layer<S> for OptionalLayer<L> {
    type Service = Optional<L::Service, S>;

    fn layer(&self, inner: S) -> Self::Service {
        match &self.inner {
            Some(l) => Optional::On {
                svc: l.layer(inner),
            },
            None => Optional::Off { svc: inner },
        }
    }
}

/// The service of an [`OptionalLayer`]: the wrapped service or the inner one.
#[derive(Debug, Clone)]
pub enum Optional<A, B> {
    /// The layer is on.
    On {
        /// The wrapped service.
        svc: A,
    },
    /// The layer is off.
    Off {
        /// The inner service.
        svc: B,
    },
}

impl<A, B> tower_service::Service<CqlRequest> for Optional<A, B>
where
    A: tower_service::Service<CqlRequest, Response = CqlResponse, Error = CqlError>,
    B: tower_service::Service<CqlRequest, Response = CqlResponse, Error = CqlError>,
{
    type Response = CqlResponse;
    type Error = CqlError;
    type Future = OptionalFuture<A::Future, B::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        match self {
            Optional::On { svc } => svc.poll_ready(cx),
            Optional::Off { svc } => svc.poll_ready(cx),
        }
    }

    fn call(&mut self, req: CqlRequest) -> Self::Future {
        match self {
            Optional::On { svc } => OptionalFuture::On { fut: svc.call(req) },
            Optional::Off { svc } => OptionalFuture::Off { fut: svc.call(req) },
        }
    }
}

pin_project! {
    /// The future of an [`Optional`] service.
    #[project = OptionalProj]
    #[derive(Debug)]
    #[allow(missing_docs)] // fields of the variants; pin_project_lite takes no field docs

    pub enum OptionalFuture<A, B> {
        /// The layer's future.
        On {
            #[pin]
            fut: A,
        },
        /// The inner future.
        Off {
            #[pin]
            fut: B,
        },
    }
}

impl<A, B, T> Future for OptionalFuture<A, B>
where
    A: Future<Output = T>,
    B: Future<Output = T>,
{
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.project() {
            OptionalProj::On { fut } => fut.poll(cx),
            OptionalProj::Off { fut } => fut.poll(cx),
        }
    }
}
