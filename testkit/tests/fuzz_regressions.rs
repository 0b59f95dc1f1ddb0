//! Replays the fuzz targets' seeds and every input that once crashed them
//! (`testkit/fuzz/regressions/`), and mutates the seeds at random on stable
//! Rust, so CI keeps the parsers honest without nightly. The coverage-guided
//! runs themselves are `cargo +nightly fuzz run ...` (testkit/fuzz/README.md).
//!
//! Size: `TOWER_CQL_FUZZ_CASES` random mutations per target (default 2,000).

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tower_cql_testkit::fuzzing::{Harness, cql};

fn files(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.ends_with(".gitkeep"))
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    out.sort();
    out
}

fn feed(data: &[u8]) -> usize {
    let mut h = Harness::new();
    // as the fuzz target does: two reads, cut where the first byte says
    let cut = data
        .first()
        .map_or(0, |&b| usize::from(b) % (data.len() + 1));
    h.feed(&data[..cut]) + h.feed(&data[cut..])
}

/// The stream of every whole frame in `data`, in order.
fn streams(mut data: &[u8]) -> Vec<i16> {
    let mut out = Vec::new();
    while data.len() >= 9 {
        let len = u32::from_be_bytes(data[5..9].try_into().unwrap()) as usize;
        out.push(i16::from_be_bytes([data[2], data[3]]));
        data = &data[(9 + len).min(data.len())..];
    }
    out
}

#[test]
fn the_seeds_are_served() {
    let seeds = files("seeds/frames");
    assert!(seeds.len() >= 5);
    for (path, data) in &seeds {
        // fed whole, every frame of a seed (the lying ones too) is
        // answered on its stream, in order
        let answer = Harness::new().answer(data);
        assert_eq!(streams(&answer), streams(data), "{}", path.display());
    }
    for (_, data) in files("seeds/cql") {
        cql(std::str::from_utf8(&data).unwrap());
    }
}

#[test]
fn inputs_that_once_crashed_the_fuzz_targets_do_not() {
    for (path, data) in files("regressions/frames") {
        println!("frames regression {}", path.display());
        feed(&data);
    }
    for (path, data) in files("regressions/cql") {
        println!("cql regression {}", path.display());
        if let Ok(text) = std::str::from_utf8(&data) {
            cql(text);
        }
    }
}

fn cases() -> u32 {
    std::env::var("TOWER_CQL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// A seed with bytes flipped, inserted, removed and truncated.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(seeds),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 0..16),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut data, edits, cut)| {
            for (at, byte, op) in edits {
                if data.is_empty() {
                    data.push(byte);
                    continue;
                }
                let i = at.index(data.len());
                match op {
                    0 => data[i] = byte,
                    1 => data.insert(i, byte),
                    2 => {
                        data.remove(i);
                    }
                    _ => data[i] ^= 1 << (byte % 8),
                }
            }
            if !data.is_empty() && cut.index(8) == 0 {
                data.truncate(cut.index(data.len()));
            }
            data
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn mutated_frames_never_panic(data in mutated(files("seeds/frames").into_iter().map(|f| f.1).collect())) {
        feed(&data);
    }

    #[test]
    fn mutated_cql_never_panics(data in mutated(files("seeds/cql").into_iter().map(|f| f.1).collect())) {
        if let Ok(text) = std::str::from_utf8(&data) {
            cql(text);
        }
    }
}
