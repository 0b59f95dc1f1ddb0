//! Constants of the OpenTelemetry database semantic conventions, defined
//! once for every exporter.
//!
//! ```
//! use tower_cql_core::semconv::DB_CLIENT_OPERATION_DURATION_BUCKETS;
//!
//! assert_eq!(DB_CLIENT_OPERATION_DURATION_BUCKETS.first(), Some(&0.001));
//! assert_eq!(DB_CLIENT_OPERATION_DURATION_BUCKETS.last(), Some(&10.0));
//! ```

/// The explicit bucket boundaries, in seconds, that the conventions advise
/// for `db.client.operation.duration`: `[0.001, 0.005, 0.01, 0.05, 0.1,
/// 0.5, 1, 5, 10]`. The OpenTelemetry and Prometheus exporters use them
/// for every duration histogram they export.
pub const DB_CLIENT_OPERATION_DURATION_BUCKETS: [f64; 9] =
    [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// `db.response.status_code`'s value for the CQL protocol error code
/// `code` (what [`CqlError::status_code`](crate::CqlError::status_code)
/// says): the number in decimal, as the Cassandra conventions write it
/// ("Cassandra protocol error code represented as a string", examples
/// `102`, `40020`), not the protocol spec's hex notation; the one place
/// that formats it for the span attributes of every path.
///
/// ```
/// use tower_cql_core::semconv::response_status_code;
///
/// // Overloaded, 0x1001 in the protocol spec
/// assert_eq!(response_status_code(0x1001), "4097");
/// ```
pub fn response_status_code(code: i32) -> String {
    code.to_string()
}

/// `db.cassandra.consistency_level`'s value for `c`: its snake_case name
/// (`local_quorum`), as the conventions write it; the one place that
/// names consistencies for the span attributes of every path.
///
/// ```
/// use scylla::statement::Consistency;
/// use tower_cql_core::semconv::consistency_level;
///
/// assert_eq!(consistency_level(Consistency::LocalQuorum), "local_quorum");
/// ```
pub fn consistency_level(c: scylla::statement::Consistency) -> &'static str {
    use scylla::statement::Consistency as C;
    match c {
        C::Any => "any",
        C::One => "one",
        C::Two => "two",
        C::Three => "three",
        C::Quorum => "quorum",
        C::All => "all",
        C::LocalQuorum => "local_quorum",
        C::EachQuorum => "each_quorum",
        C::LocalOne => "local_one",
        C::Serial => "serial",
        C::LocalSerial => "local_serial",
    }
}
