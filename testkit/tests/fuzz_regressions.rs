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

/// Statements that make and use a schema, for the executor fuzzing below:
/// every kind of statement testkit runs, on tables with every kind of column.
const STATEMENTS: &[&str] = &[
    "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
    "CREATE KEYSPACE IF NOT EXISTS ks2 WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 1} AND durable_writes = false",
    "CREATE TABLE ks.kv (k int PRIMARY KEY, v text)",
    "CREATE TABLE ks.rows (p int, c int, d text, s int static, v text, l list<int>, m map<text, int>, st set<text>, f frozen<list<int>>, t tuple<int, text>, PRIMARY KEY ((p), c, d)) WITH CLUSTERING ORDER BY (c DESC, d ASC)",
    "CREATE TABLE ks.cnt (k int PRIMARY KEY, n counter)",
    "CREATE TABLE IF NOT EXISTS ks.multi (a int, b text, c int, v blob, PRIMARY KEY ((a, b), c))",
    "CREATE INDEX ON ks.rows (v)",
    "CREATE INDEX li ON ks.rows (l)",
    "CREATE INDEX mi ON ks.rows (keys(m))",
    "CREATE INDEX ON ks.kv (v)",
    "DROP INDEX ks.li",
    "ALTER TABLE ks.rows ADD x int",
    "ALTER TABLE ks.rows ADD (y text, z list<text>)",
    "ALTER TABLE ks.rows DROP v",
    "ALTER TABLE ks.rows DROP (x, y)",
    "ALTER TABLE ks.rows RENAME c TO c2",
    "ALTER TABLE ks.multi RENAME a TO a2 AND c TO c3",
    "ALTER TABLE ks.kv WITH comment = 'x' AND default_time_to_live = 10",
    "ALTER KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 2}",
    "INSERT INTO ks.kv (k, v) VALUES (1, 'one')",
    "INSERT INTO ks.kv (k, v) VALUES (2, 'two') IF NOT EXISTS",
    "INSERT INTO ks.kv JSON '{\"k\": 3, \"v\": \"three\"}'",
    "INSERT INTO ks.rows (p, c, d, s, v, l, m, st, f, t) VALUES (1, 2, 'a', 5, 'x', [1, 2], {'a': 1}, {'b'}, [3], (1, 'q')) USING TIMESTAMP 5",
    "INSERT INTO ks.rows (p, c, d, v) VALUES (1, 3, 'b', 'y')",
    "INSERT INTO ks.multi (a, b, c, v) VALUES (1, 'x', 2, 0xcafe)",
    "UPDATE ks.kv SET v = 'two' WHERE k = 1 IF v = 'one'",
    "UPDATE ks.kv SET v = 'three' WHERE k = 1 IF EXISTS",
    "UPDATE ks.rows SET l = l + [3], m['b'] = 2, st = st - {'b'}, l[0] = 9 WHERE p = 1 AND c = 2 AND d = 'a'",
    "UPDATE ks.rows SET s = 7 WHERE p = 1",
    "UPDATE ks.rows SET z = ['q'] WHERE p = 1 AND c2 = 2 AND d = 'a'",
    "UPDATE ks.cnt SET n = n + 3 WHERE k = 7",
    "UPDATE ks.cnt SET n = n - 1 WHERE k IN (7, 8)",
    "DELETE FROM ks.kv WHERE k = 1",
    "DELETE v, l[0], m['a'] FROM ks.rows WHERE p = 1 AND c = 2 AND d = 'a'",
    "DELETE FROM ks.rows WHERE p = 1 AND c > 1",
    "DELETE FROM ks.rows WHERE p = 1 IF s = 5",
    "BEGIN BATCH INSERT INTO ks.kv (k, v) VALUES (3, 'c'); UPDATE ks.rows SET v = 'w' WHERE p = 1 AND c = 3 AND d = 'b'; APPLY BATCH",
    "BEGIN UNLOGGED BATCH USING TIMESTAMP 3 DELETE FROM ks.kv WHERE k = 3; APPLY BATCH",
    "BEGIN COUNTER BATCH UPDATE ks.cnt SET n = n + 1 WHERE k = 1; APPLY BATCH",
    "BEGIN BATCH UPDATE ks.kv SET v = 'a' WHERE k = 9 IF v = 'b'; INSERT INTO ks.kv (k, v) VALUES (9, 'c') IF NOT EXISTS; APPLY BATCH",
    "SELECT * FROM ks.kv",
    "SELECT v FROM ks.kv WHERE k = 1",
    "SELECT k, v, writetime(v), ttl(v), token(k) FROM ks.kv WHERE token(k) > 0",
    "SELECT JSON * FROM ks.kv WHERE k IN (1, 2, 3)",
    "SELECT DISTINCT p, s FROM ks.rows",
    "SELECT c, v FROM ks.rows WHERE p = 1 AND c > 0 ORDER BY c ASC LIMIT 5",
    "SELECT * FROM ks.rows WHERE p = 1 AND (c, d) > (1, 'a') PER PARTITION LIMIT 2",
    "SELECT * FROM ks.rows WHERE v = 'x'",
    "SELECT * FROM ks.rows WHERE l CONTAINS 2",
    "SELECT * FROM ks.rows WHERE m CONTAINS KEY 'a' AND st CONTAINS 'b' ALLOW FILTERING",
    "SELECT count(*), max(c), min(d), sum(c), avg(c) FROM ks.rows WHERE p = 1",
    "SELECT p, c AS cc, CAST(c AS text), toJson(l), now(), uuid(), toTimestamp(now()) FROM ks.rows WHERE p IN (1, 2) AND c IN (2, 3)",
    "SELECT * FROM ks.multi WHERE a = 1 AND b = 'x'",
    "SELECT * FROM ks.multi WHERE c = 2 ALLOW FILTERING",
    "SELECT * FROM ks.cnt",
    "SELECT * FROM system.local WHERE key = 'local'",
    "SELECT peer, rpc_address, schema_version FROM system.peers",
    "SELECT * FROM system_schema.columns WHERE keyspace_name = 'ks'",
    "SELECT * FROM system_schema.tables",
    "SELECT * FROM system_schema.indexes",
    "SELECT * FROM system_traces.sessions",
    "USE ks",
    "USE ks2",
    "SELECT * FROM kv",
    "INSERT INTO kv (k, v) VALUES (4, 'four')",
    "TRUNCATE ks.kv",
    "TRUNCATE rows",
    "DROP TABLE ks.kv",
    "DROP TABLE IF EXISTS ks.rows",
    "DROP KEYSPACE ks",
    "DROP KEYSPACE IF EXISTS ks2",
];

/// A QUERY frame (protocol v4) for `text` on `stream`, with `page_size`
/// when given.
fn query_frame(stream: i16, text: &str, page_size: Option<i32>) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(text.len() as u32).to_be_bytes());
    body.extend_from_slice(text.as_bytes());
    body.extend_from_slice(&1u16.to_be_bytes()); // ONE
    match page_size {
        Some(n) => {
            body.push(0x04);
            body.extend_from_slice(&n.to_be_bytes());
        }
        None => body.push(0),
    }
    let mut f = vec![0x04, 0];
    f.extend_from_slice(&stream.to_be_bytes());
    f.push(0x07);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(&body);
    f
}

/// A statement from [`STATEMENTS`], sometimes with a word swapped for a
/// word of another, or bytes changed.
fn statement() -> impl Strategy<Value = String> {
    let pick = prop::sample::select(STATEMENTS.to_vec());
    (
        pick.clone(),
        pick,
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        0u8..4,
        any::<u8>(),
    )
        .prop_map(|(a, b, i, j, op, byte)| {
            let mut words: Vec<&str> = a.split(' ').collect();
            let other: Vec<&str> = b.split(' ').collect();
            match op {
                0 => {
                    let i = i.index(words.len());
                    words[i] = other[j.index(other.len())];
                    words.join(" ")
                }
                1 => {
                    let i = i.index(words.len());
                    words.insert(i, other[j.index(other.len())]);
                    words.join(" ")
                }
                2 => {
                    let mut s = a.as_bytes().to_vec();
                    let i = i.index(s.len());
                    s[i] = byte;
                    String::from_utf8_lossy(&s).into_owned()
                }
                _ => a.to_string(),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases() / 10, ..ProptestConfig::default() })]

    /// Sequences of (mostly valid) statements, run by the executor on one
    /// connection: every one is answered on its stream, none panics.
    #[test]
    fn executed_statements_never_panic(
        texts in prop::collection::vec(statement(), 1..40),
        pages in prop::collection::vec(prop::option::of(1i32..4), 40),
    ) {
        let mut h = Harness::new();
        // a schema with rows first, so most statements find their tables
        let setup = STATEMENTS[..6].iter().chain(&STATEMENTS[19..25]).map(|s| s.to_string());
        for (i, text) in setup.chain(texts.iter().cloned()).enumerate() {
            let i = i as i16;
            let frame = query_frame(i, &text, pages[i as usize % pages.len()]);
            let answer = h.answer(&frame);
            prop_assert_eq!(streams(&answer), vec![i], "{}", text);
        }
    }
}
