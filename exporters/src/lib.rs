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
//! let collectors = Collectors::with([Arc::new(MetricsBridge::new())]);
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
//! - `otel-spans` (off by default; part of the OTLP features):
//!   `spans::SpanCollector`, one OpenTelemetry client span per request
//!   made through a `Tracer` from the request event, sampled before
//!   anything is built: the cheap alternative to the tracing layers.
//!
//! - `otlp-grpc`, `otlp-http` (off by default; `otlp` enables both):
//!   `otlp::OtlpExporter`, OTLP export of the stack's metrics and spans
//!   over gRPC or HTTP/protobuf, configured by a builder and the standard
//!   `OTEL_*` variables. Plain HTTP only: no TLS stack is built in.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(feature = "metrics-bridge", feature = "opentelemetry"))]
pub mod instruments;
#[cfg(feature = "metrics-bridge")]
pub mod metrics_bridge;
#[cfg(feature = "opentelemetry")]
pub mod otel;
#[cfg(feature = "_otlp")]
pub mod otlp;
#[cfg(feature = "prometheus")]
pub mod prometheus;
#[cfg(feature = "otel-spans")]
pub mod server_spans;
#[cfg(feature = "otel-spans")]
pub mod spans;
#[cfg(feature = "stdout")]
pub mod stdout;
