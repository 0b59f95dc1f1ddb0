//! Your own tower layer in the stack: innermost (wrapping the driver) and
//! outermost (wrapping the built stack).
//!
//! `cargo run -p tower-cql-examples --example custom_layer`

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tower::{Layer, Service, ServiceExt};
use tower_cql_core::{Collectors, CqlRequest, DriverService};
use tower_cql_middleware::stack::StackBuilder;

/// Tags every request with a tenant name as its operation label, and
/// counts what passes.
#[derive(Clone)]
struct Tenant {
    name: &'static str,
    seen: Arc<AtomicU64>,
}

#[derive(Clone)]
struct TenantService<S> {
    inner: S,
    layer: Tenant,
}

impl<S> Layer<S> for Tenant {
    type Service = TenantService<S>;
    fn layer(&self, inner: S) -> TenantService<S> {
        TenantService {
            inner,
            layer: self.clone(),
        }
    }
}

impl<S: Service<CqlRequest>> Service<CqlRequest> for TenantService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: CqlRequest) -> S::Future {
        self.layer.seen.fetch_add(1, Ordering::Relaxed);
        self.inner.call(req.operation(self.layer.name))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (session, _cluster) = common::connect().await?;
    let driver = DriverService::builder(session).build()?;
    let inner = Tenant {
        name: "tenant-a",
        seen: Arc::default(),
    };
    let outer = Tenant {
        name: "tenant-a",
        seen: Arc::default(),
    };
    // innermost: wrap the driver before building; outermost: wrap the built service
    let stack = StackBuilder::new(Collectors::new()).build(inner.layer(driver.clone()))?;
    let mut svc = outer.layer(stack.service());
    svc.ready().await?.call(CqlRequest::unprepared(
        "CREATE KEYSPACE IF NOT EXISTS ex WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
    )).await?;
    for _ in 0..10 {
        svc.ready()
            .await?
            .call(CqlRequest::query(
                "SELECT keyspace_name FROM system_schema.keyspaces",
            ))
            .await?;
    }
    stack.close().await;
    println!(
        "the outer layer saw {} requests, the inner one {} attempts",
        outer.seen.load(Ordering::Relaxed),
        inner.seen.load(Ordering::Relaxed)
    );
    Ok(())
}
