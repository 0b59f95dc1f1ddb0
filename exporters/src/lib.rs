//! `tower-cql-exporters`: send what the tower-cql stack observes to
//! metrics and tracing backends. One module and one cargo feature per
//! backend.
//!
//! ```
//! # #[cfg(feature = "metrics-bridge")] {
//! use std::sync::Arc;
//! use tower_cql_core::{Collector, Collectors};
//! use tower_cql_exporters::metrics_bridge::MetricsBridge;
//!
//! let collectors = Collectors::with([Arc::new(MetricsBridge::new()) as Arc<dyn Collector>]);
//! # let _ = collectors; }
//! ```
//!
//! # Features
//! - `metrics-bridge` (default): [`metrics_bridge::MetricsBridge`], a
//!   collector forwarding to whatever `metrics` recorder is installed.
//! - `prometheus` (default): [`prometheus::PrometheusExporter`], a
//!   `/metrics` endpoint (loopback by default) fed by the bridge.
//!
//! - `stdout` (default): [`stdout::JsonLines`], one JSON object per event,
//!   written from a background thread.
//!
//! - `opentelemetry` (default): [`otel::OtelCollector`], recording through
//!   an OpenTelemetry `Meter` (`db.client.operation.duration`, ...).
//!
//! OTLP transport setup (gRPC/HTTP builders with `OTEL_*` variables) is not
//! built yet: use `opentelemetry-otlp` with the collector meanwhile.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "metrics-bridge")]
pub mod metrics_bridge;
#[cfg(feature = "opentelemetry")]
pub mod otel;
#[cfg(feature = "prometheus")]
pub mod prometheus;
#[cfg(feature = "stdout")]
pub mod stdout;
