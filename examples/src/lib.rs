//! `tower-cql-examples`: runnable examples. `cargo run -p
//! tower-cql-examples --example quickstart` starts an embedded testkit
//! cluster (or uses `SCYLLA_URI`) and runs a short driver session.

/// The README's code blocks, compiled as doc tests (`cargo test --doc -p
/// tower-cql-examples`; `cargo test --workspace` runs them too). This crate
/// depends on every other one, so each block can use them all.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
