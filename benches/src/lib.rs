//! `tower-cql-benches`: criterion benches and the end-to-end overhead
//! tools. The testkit server's own throughput is measured by
//! `testkit-load` (see `BENCHMARKS.md`).
