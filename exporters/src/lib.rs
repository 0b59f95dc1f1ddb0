//! `tower-cql-exporters`: OpenTelemetry (OTLP), Prometheus, `metrics`
//! facade and stdout exporters for what the tower-cql stack observes.
//!
//! This crate is being built; see the repository's issues for its plan.
//!
//! ```
//! assert_eq!(tower_cql_exporters::CRATE, "tower-cql-exporters");
//! ```

/// The crate's name, for diagnostics.
pub const CRATE: &str = "tower-cql-exporters";
