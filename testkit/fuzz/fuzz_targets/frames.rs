//! Raw bytes on one connection: frame splitting, decompression, request
//! decoding, the CQL parser and execution against the in-memory store.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_cql_testkit::fuzzing::Harness;

fuzz_target!(|data: &[u8]| {
    let mut h = Harness::new();
    // fed in two reads, so frames split across reads are exercised too
    let cut = data.first().map_or(0, |&b| usize::from(b) % (data.len() + 1));
    h.feed(&data[..cut]);
    h.feed(&data[cut..]);
});
