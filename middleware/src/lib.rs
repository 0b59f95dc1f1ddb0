//! `tower-cql-middleware`: the resilience and observability layers (retry,
//! limits, timeout, load shed, circuit breaker, hedging, metrics, tracing)
//! and the stack builder.
//!
//! This crate is being built; see the repository's issues for its plan.
//!
//! ```
//! assert_eq!(tower_cql_middleware::CRATE, "tower-cql-middleware");
//! ```

/// The crate's name, for diagnostics.
pub const CRATE: &str = "tower-cql-middleware";
