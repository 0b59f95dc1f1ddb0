//! `tower-cql-examples`: runnable examples. `cargo run -p
//! tower-cql-examples --example quickstart` starts an embedded testkit
//! cluster (or uses `SCYLLA_URI`) and runs a short driver session.
