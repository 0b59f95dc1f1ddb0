//! Frames whose counts and lengths lie. A count or length read from a frame
//! (values, names, batch statements, string lists and maps, the elements
//! of a collection value, an LZ4 or Snappy body's uncompressed size, a
//! frame's body length) must never size an allocation before the bytes it
//! announces are there: one 40-byte frame must not ask for 32 GiB and abort
//! the server. Each lie is answered with an error on its own stream, and the
//! connection carries on.
//!
//! This binary's global allocator ([`cap::Cap`]) refuses, while a hostile
//! frame is served, any allocation that would take more than [`BOUND`]
//! bytes beyond what was allocated before it: the process then aborts with
//! "memory allocation of N bytes failed", whatever the machine's memory.
//! The limit is process-wide, so this binary holds one test. (The same lie
//! over TCP, against a running cluster, is in `tests/driver/lying_counts.rs`.)

use std::alloc::System;
use std::io::Write;

use cap::Cap;
use tower_cql_testkit::fuzzing::Harness;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// What serving one small frame may hold at once, beyond what was held
/// before it.
const BOUND: usize = 256 * 1024;

/// Runs `what`'s `f` with at most [`BOUND`] more bytes allocated at any
/// moment; says on stderr which case runs, since a refused allocation
/// aborts the process before the test can report.
fn within_bound<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let _ = writeln!(std::io::stderr(), "serving: {what}");
    ALLOCATOR
        .set_limit(ALLOCATOR.allocated() + BOUND)
        .expect("a limit above what is allocated");
    let out = f();
    ALLOCATOR.set_limit(usize::MAX).expect("no limit");
    out
}

const STARTUP: u8 = 0x01;
const ERROR: u8 = 0x00;
const READY: u8 = 0x02;
const RESULT: u8 = 0x08;
const QUERY: u8 = 0x07;
const BATCH: u8 = 0x0D;
const REGISTER: u8 = 0x0B;
const PROTOCOL_ERROR: i32 = 0x000A;
const INVALID: i32 = 0x2200;

fn frame(flags: u8, stream: i16, opcode: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0x04, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.push(opcode);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

fn string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

fn long_string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

fn value(v: &[u8]) -> Vec<u8> {
    let mut b = (v.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(v);
    b
}

fn startup(compression: Option<&str>) -> Vec<u8> {
    let mut pairs = vec![("CQL_VERSION", "3.0.0")];
    pairs.extend(compression.map(|c| ("COMPRESSION", c)));
    let mut b = (pairs.len() as u16).to_be_bytes().to_vec();
    for (k, v) in pairs {
        b.extend(string(k));
        b.extend(string(v));
    }
    b
}

/// A QUERY body: `text` at ONE with `values`, or none.
fn query(text: &str, values: &[Vec<u8>]) -> Vec<u8> {
    let mut b = long_string(text);
    b.extend_from_slice(&1u16.to_be_bytes());
    if values.is_empty() {
        b.push(0);
    } else {
        b.push(0x01);
        b.extend_from_slice(&(values.len() as u16).to_be_bytes());
        for v in values {
            b.extend_from_slice(v);
        }
    }
    b
}

const SCHEMA: [&str; 2] = [
    "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
    "CREATE TABLE ks.t (k int PRIMARY KEY, l list<int>, s set<int>, m map<int, int>)",
];

/// A session with `ks.t`, ready for queries, that negotiated `compression`.
fn session(compression: Option<&str>) -> Harness {
    let mut h = Harness::new();
    let mut input = frame(0, 1, STARTUP, &startup(compression));
    for (i, cql) in SCHEMA.iter().enumerate() {
        input.extend(frame(0, 2 + i as i16, QUERY, &query(cql, &[])));
    }
    let frames = answers(&h.answer(&input));
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert_eq!(frames[0].1, READY);
    assert!(frames[1..].iter().all(|f| f.1 == RESULT), "{frames:?}");
    h
}

/// (stream, opcode, body) of every answered frame; bodies of compressed
/// frames are left as they are.
fn answers(mut out: &[u8]) -> Vec<(i16, u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while out.len() >= 9 {
        let len = u32::from_be_bytes(out[5..9].try_into().unwrap()) as usize;
        let stream = i16::from_be_bytes([out[2], out[3]]);
        frames.push((stream, out[4], out[9..9 + len].to_vec()));
        out = &out[9 + len..];
    }
    assert!(out.is_empty(), "a partial frame was answered");
    frames
}

fn error_code(body: &[u8]) -> i32 {
    i32::from_be_bytes(body[..4].try_into().unwrap())
}

/// One hostile frame.
struct Lie {
    what: &'static str,
    /// Negotiated in STARTUP; the frame is then sent compressed.
    compression: Option<&'static str>,
    opcode: u8,
    body: Vec<u8>,
    /// The error code it gets (`None`: the answer is compressed, only its
    /// opcode is checked).
    code: Option<i32>,
}

fn lies() -> Vec<Lie> {
    let lie = |what, opcode, body, code| Lie {
        what,
        compression: None,
        opcode,
        body,
        code: Some(code),
    };
    let huge = i32::MAX.to_be_bytes();
    let insert = |column: &str, v: &[u8]| {
        query(
            &format!("INSERT INTO ks.t (k, {column}) VALUES (?, ?)"),
            &[value(&1i32.to_be_bytes()), value(v)],
        )
    };
    // a list announcing i32::MAX elements, holding one
    let mut one_of_many = huge.to_vec();
    one_of_many.extend(value(&7i32.to_be_bytes()));
    // QUERY values (by position, by name), announcing 65,535, holding none
    let values = |flags: u8, text: &str| {
        let mut b = long_string(text);
        b.extend_from_slice(&1u16.to_be_bytes());
        b.push(flags);
        b.extend_from_slice(&u16::MAX.to_be_bytes());
        b
    };
    // an UNLOGGED batch of 65,535 statements, holding none
    let mut statements = vec![1u8];
    statements.extend_from_slice(&u16::MAX.to_be_bytes());
    // a batch of one statement announcing 65,535 values
    let mut batch_values = vec![1u8, 0, 1, 0];
    batch_values.extend(long_string("INSERT INTO ks.t (k) VALUES (?)"));
    batch_values.extend_from_slice(&u16::MAX.to_be_bytes());
    // LZ4: 256 MiB announced for a one-byte block
    let mut lz4 = 0x0FFF_FFFFu32.to_be_bytes().to_vec();
    lz4.push(0);
    // Snappy: a varint length of u32::MAX, then one literal byte
    let snappy = vec![0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x00, 0x61];
    let compressed = |what, compression, body| Lie {
        what,
        compression: Some(compression),
        opcode: QUERY,
        body,
        code: None,
    };
    vec![
        compressed("LZ4 uncompressed length", "lz4", lz4),
        compressed("Snappy uncompressed length", "snappy", snappy),
        lie(
            "values count",
            QUERY,
            values(0x01, "SELECT * FROM ks.t WHERE k = ?"),
            PROTOCOL_ERROR,
        ),
        lie(
            "named values count",
            QUERY,
            values(0x41, "SELECT * FROM ks.t WHERE k = :k"),
            PROTOCOL_ERROR,
        ),
        lie("batch statement count", BATCH, statements, PROTOCOL_ERROR),
        lie("batch values count", BATCH, batch_values, PROTOCOL_ERROR),
        lie(
            "STARTUP option count",
            STARTUP,
            u16::MAX.to_be_bytes().to_vec(),
            PROTOCOL_ERROR,
        ),
        lie(
            "REGISTER event count",
            REGISTER,
            u16::MAX.to_be_bytes().to_vec(),
            PROTOCOL_ERROR,
        ),
        lie("list count", QUERY, insert("l", &huge), INVALID),
        lie("set count", QUERY, insert("s", &huge), INVALID),
        lie("map count", QUERY, insert("m", &huge), INVALID),
        lie(
            "list count, one element",
            QUERY,
            insert("l", &one_of_many),
            INVALID,
        ),
    ]
}

#[test]
fn lying_counts_and_lengths_cost_no_more_than_their_bytes_and_are_answered() {
    for Lie {
        what,
        compression,
        opcode,
        body,
        code,
    } in lies()
    {
        let mut h = session(compression);
        let hostile = frame(u8::from(compression.is_some()), 40, opcode, &body);
        let out = within_bound(what, || h.answer(&hostile));
        let frames = answers(&out);
        assert_eq!(frames.len(), 1, "{what}: {frames:?}");
        let (stream, op, err) = &frames[0];
        assert_eq!(
            (*stream, *op),
            (40, ERROR),
            "{what}: answered on its stream"
        );
        if let Some(code) = code {
            let msg = String::from_utf8_lossy(&err[6..]);
            assert_eq!(error_code(err), code, "{what}: {msg}");
        }
        // the connection carries on
        let ok = frame(0, 41, QUERY, &query("SELECT * FROM ks.t", &[]));
        let frames = answers(&h.answer(&ok));
        assert_eq!(frames.len(), 1, "{what}: {frames:?}");
        let msg = String::from_utf8_lossy(&frames[0].2);
        assert_eq!((frames[0].0, frames[0].1), (41, RESULT), "{what}: {msg}");
    }

    // A list that tells the truth is stored, within the same bound.
    let mut h = session(None);
    let mut list = 3i32.to_be_bytes().to_vec();
    for i in [3i32, 1, 2] {
        list.extend(value(&i.to_be_bytes()));
    }
    let insert = query(
        "INSERT INTO ks.t (k, l) VALUES (?, ?)",
        &[value(&5i32.to_be_bytes()), value(&list)],
    );
    let out = within_bound("a true list", || h.answer(&frame(0, 9, QUERY, &insert)));
    let frames = answers(&out);
    assert_eq!((frames[0].0, frames[0].1), (9, RESULT), "{frames:?}");
}
