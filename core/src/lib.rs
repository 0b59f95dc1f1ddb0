//! `tower-cql-core`: the centre every tower-cql layer and exporter meets at.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tower::{Service, ServiceExt};
//! use tower_cql_core::{Collectors, CqlRequest, DriverService, Gate, InMemoryCollector, Statement};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let session = scylla::client::session_builder::SessionBuilder::new()
//!     .known_node("127.0.0.1:9042")
//!     .build()
//!     .await?;
//! // Where observations go: swapped atomically, recorded without locks.
//! let memory = Arc::new(InMemoryCollector::new());
//! let collectors = Collectors::with([memory.clone()]);
//! // The driver service (driver retries off: the middleware retries) ...
//! let driver = DriverService::builder(Arc::new(session)).build()?;
//! // ... behind a shutdown gate that drains and flushes on close, and hands
//! // each request its collectors (the driver's attempt events go there).
//! let gate = Gate::with_collectors(collectors);
//! let mut svc = gate.wrap(driver);
//!
//! let get_user = Statement::new("SELECT name FROM app.users WHERE id = ?").operation("get_user").idempotent(true);
//! let resp = svc.ready().await?.call(get_user.request().bind((42i64,))).await?;
//! let names: Vec<(String,)> = resp.rows()?;
//!
//! gate.close().await; // no new requests; in-flight ones finish; collectors flushed
//! println!("{:?}", memory.snapshot().attempt_latency(None).quantile(0.99));
//! # Ok(()) }
//! ```
//!
//! # Modules
//! - [`request`]: [`CqlRequest`], [`Statement`], [`RequestMeta`] and labels.
//! - [`response`]: [`CqlResponse`] and [`ExecutionInfo`].
//! - [`error`]: [`CqlError`] and [`ErrorKind`].
//! - [`classify`]: the one classifier of failures (retry, breaker, overload, `error.type`).
//! - [`driver`]: [`DriverService`], the `tower::Service` over a scylla session.
//! - [`paging`]: [`RowStream`], typed rows page by page.
//! - [`event`] and [`collector`]: what is observed and where it goes.
//! - [`memory`] and [`histogram`]: the built-in lock-free in-memory collector.
//! - [`gate`]: the shutdown gate.
//! - [`analysis`]: what a statement's text says (kind, table, LWT, counters).
//! - [`redact`]: statement text with literals removed (same lexer as the analysis).
//! - [`server_trace`]: server-side query traces (settings, steps, the activity sanitiser).
//! - [`registry`]: [`Registry`](registry::Registry), the lock-free read-copy-update map.
//!
//! # Loom
//! The lock-free parts have `loom` models:
//! `RUSTFLAGS="--cfg tower_cql_loom" CARGO_TARGET_DIR=target/loom cargo test -p tower-cql-core --release loom`
//! (a cfg of our own: a plain `--cfg loom` breaks tokio's networking).

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod analysis;
pub mod cancel;
pub mod classify;
pub mod clock;
pub mod collector;
pub mod config;
pub mod driver;
pub mod error;
pub mod event;
pub mod gate;
pub mod histogram;
mod lex;
pub mod memory;
pub mod paging;
mod recycle;
pub mod redact;
pub mod refusal;
pub mod registry;
pub mod request;
pub mod response;
pub mod routing;
pub mod semconv;
pub mod server_trace;
mod sync;
#[cfg(feature = "tls-rustls")]
pub mod tls;

pub use collector::{
    Background, Collector, CollectorId, CollectorSet, Collectors, DEFAULT_FLUSH_TIMEOUT,
    IntoCollector,
};
pub use config::ConfigError;
pub use driver::{DriverFuture, DriverService, DriverServiceBuilder};
pub use error::{CqlError, ErrorKind, ReplicaDetails, RetryAdvice};
pub use event::{AttemptReason, BreakerState, Event};
pub use gate::{Gate, GateFuture, GateGuard, GateService, GateState};
pub use histogram::{Histogram, HistogramSnapshot};
pub use memory::{InMemoryCollector, SeriesLabels, SeriesSnapshot, Snapshot};
pub use paging::RowStream;
pub use request::{
    AttemptTally, CqlRequest, Label, OperationKind, QuerySummary, RequestMeta, Statement,
    StatementBody, StatementTraits, Values,
};
pub use response::{CqlResponse, DriverResult, ExecutionInfo};
