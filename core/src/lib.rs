//! `tower-cql-core`: the centre every tower-cql layer and exporter meets at —
//! request and response types, the error taxonomy, the driver service, the
//! paging stream, collectors swapped with `arc-swap`, and the shutdown gate.
//!
//! This crate is being built; see the repository's issues for its plan.
//!
//! ```
//! assert_eq!(tower_cql_core::CRATE, "tower-cql-core");
//! ```

/// The crate's name, for diagnostics.
pub const CRATE: &str = "tower-cql-core";
