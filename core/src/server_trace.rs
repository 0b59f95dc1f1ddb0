//! Server-side query traces: what the stack needs to know about them
//! wherever it sits (the settings, one step of a trace, the sanitiser of
//! activity texts). The sampling and the background fetch live in
//! `tower_cql_middleware::server_trace`; the traces reach collectors as
//! [`ServerTraceEvent`](crate::event::ServerTraceEvent)s.
//!
//! ```
//! use std::time::Duration;
//! use tower_cql_core::server_trace::{ServerTraceConfig, sanitize_activity};
//!
//! // 1% of requests traced, and the next 5 requests of an operation
//! // after one of its requests took longer than 200 ms.
//! let config = ServerTraceConfig {
//!     sample_ratio: 0.01,
//!     slow_threshold: Some(Duration::from_millis(200)),
//!     trace_next: 5,
//!     ..ServerTraceConfig::default()
//! };
//! config.validate().unwrap();
//!
//! // Activity texts lose their literals, keep node addresses and counts.
//! assert_eq!(
//!     sanitize_activity("Parsing SELECT v FROM ks.kv WHERE k = 5 AND n = 'bob'"),
//!     "Parsing SELECT v FROM ks.kv WHERE k = ? AND n = ?"
//! );
//! assert_eq!(
//!     sanitize_activity("Sending READ_REQ message to /127.0.0.2:7000 message size 97 bytes"),
//!     "Sending READ_REQ message to /127.0.0.2:7000 message size 97 bytes"
//! );
//! assert_eq!(
//!     sanitize_activity("Creating read executor for token 3248873570005575792 with all: {127.0.0.1}"),
//!     "Creating read executor for token ? with all: {127.0.0.1}"
//! );
//! ```
//!
//! # What it costs
//! A traced request makes the server write its trace (one `sessions` row,
//! one `events` row per step on every node it touches, with a TTL of a
//! day) and the stack read it back: two reads per trace fetched, more
//! when the trace is not finished on the first read. Off by default.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::ConfigError;

/// The most traces [`ServerTraceConfig::queue_capacity`] lets wait.
pub const MAX_QUEUE_CAPACITY: usize = 1_000_000;

/// When requests carry the protocol's tracing flag, and how their traces
/// are fetched. Off by default (`sample_ratio` 0, no slow threshold).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerTraceConfig {
    /// The fraction of requests traced, in `[0, 1]` (0: none).
    pub sample_ratio: f64,
    /// A request of an operation slower than this makes the next
    /// [`trace_next`](Self::trace_next) requests of that operation traced.
    pub slow_threshold: Option<Duration>,
    /// How many requests of an operation are traced after a slow one.
    pub trace_next: u32,
    /// At most this many trace fetches start in any one-second interval
    /// (whenever it begins), and that many may start at once; the rest
    /// are counted as skipped.
    pub max_fetches_per_second: u32,
    /// Traces waiting to be fetched; when full, a new one is skipped. At
    /// most [`MAX_QUEUE_CAPACITY`]. Also the most fetches under way at
    /// once (most of them waiting for the server to write their traces;
    /// [`max_concurrent_fetches`](Self::max_concurrent_fetches) bounds
    /// those reading).
    pub queue_capacity: usize,
    /// Reads of `system_traces.sessions` until the server has finished
    /// writing the trace (`duration` set), before the fetch counts as
    /// failed. With `fetch_backoff`, the reads must span the time the
    /// server takes to write a trace: up to 2 s on Scylla, which writes
    /// them every 2 s (the defaults, 8 reads 25 ms doubling, span 3.2 s).
    pub fetch_attempts: u32,
    /// Wait before the second read; doubled before each next one.
    pub fetch_backoff: Duration,
    /// Fetches reading `system_traces` at once. A fetch waiting between
    /// its reads for the server to finish writing its trace holds no
    /// slot, so a trace written late (or never) does not hold up the
    /// others; the fetches under way, reading or waiting, are at most
    /// [`queue_capacity`](Self::queue_capacity).
    pub max_concurrent_fetches: usize,
    /// The most events (steps) of one trace read and kept. The events
    /// are read a page at a time; a trace with more (a big scan, a long
    /// repair-like operation) is cut there, and says so
    /// (`ServerTraceEvent::truncated`).
    pub max_events_per_trace: usize,
    /// How long one read of `system_traces` may take before it fails (the
    /// request timeout of the fetcher's reads, and the bound on preparing
    /// them, whatever the session's own timeout): raise it for a cluster
    /// whose trace tables answer slowly under load. Bounded by nothing
    /// else (a read is not the stack's request: no deadline applies).
    pub read_timeout: Duration,
    /// How long closing the stack waits for pending fetches before it
    /// abandons them (counted as skipped). Longer than one fetch's reads
    /// (`fetch_attempts`, `fetch_backoff`), or the traces of the last
    /// requests, not yet written by the server, are abandoned.
    pub close_timeout: Duration,
}

impl Default for ServerTraceConfig {
    fn default() -> ServerTraceConfig {
        ServerTraceConfig {
            sample_ratio: 0.0,
            slow_threshold: None,
            trace_next: 0,
            max_fetches_per_second: 10,
            queue_capacity: 256,
            // reads at 0, 25, 75, 175, 375, 775, 1575 and 3175 ms: a
            // server writes its traces in the background, Scylla every
            // 2 s (its tracing `write_period`), Cassandra within
            // milliseconds
            fetch_attempts: 8,
            fetch_backoff: Duration::from_millis(25),
            max_concurrent_fetches: 2,
            // a query's trace has tens of steps; an OTLP span keeps 128
            // events by default
            max_events_per_trace: 1_000,
            read_timeout: Duration::from_secs(2),
            // past the 3.2 s the default reads span
            close_timeout: Duration::from_secs(5),
        }
    }
}

impl ServerTraceConfig {
    /// Whether any request would be traced: a non-zero ratio or a slow
    /// threshold.
    pub fn is_on(&self) -> bool {
        self.sample_ratio > 0.0 || self.slow_threshold.is_some()
    }

    /// Checks every value; the error names the field and says what to do.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::new(
                "server_trace.sample_ratio",
                format!(
                    "must be between 0 and 1 (a fraction of requests, e.g. 0.001), got {}",
                    self.sample_ratio
                ),
            ));
        }
        match (self.slow_threshold, self.trace_next) {
            (Some(_), 0) => {
                return Err(ConfigError::new(
                    "server_trace.trace_next",
                    "is 0 but a slow threshold is set: give how many requests to trace after a slow one (e.g. 5), or remove the threshold",
                ));
            }
            (Some(t), _) if t.is_zero() => {
                return Err(ConfigError::new(
                    "server_trace.slow_threshold",
                    "is 0, which would trace every request: give a latency (e.g. 200 ms) or use sample_ratio = 1",
                ));
            }
            (None, n) if n > 0 => {
                return Err(ConfigError::new(
                    "server_trace.trace_next",
                    format!(
                        "is {n} but no slow threshold is set: set slow_threshold too, or trace_next = 0"
                    ),
                ));
            }
            _ => {}
        }
        if self.max_fetches_per_second == 0 {
            return Err(ConfigError::new(
                "server_trace.max_fetches_per_second",
                "must be at least 1 (every trace would be skipped); lower sample_ratio to trace less",
            ));
        }
        if !(1..=MAX_QUEUE_CAPACITY).contains(&self.queue_capacity) {
            return Err(ConfigError::new(
                "server_trace.queue_capacity",
                format!(
                    "must be between 1 and {MAX_QUEUE_CAPACITY} (e.g. 256; each waiting trace holds its request's labels), got {}",
                    self.queue_capacity
                ),
            ));
        }
        if self.fetch_attempts == 0 {
            return Err(ConfigError::new(
                "server_trace.fetch_attempts",
                "must be at least 1 (e.g. 5): the trace is read until the server has finished writing it",
            ));
        }
        if self.max_concurrent_fetches == 0 {
            return Err(ConfigError::new(
                "server_trace.max_concurrent_fetches",
                "must be at least 1 (e.g. 2)",
            ));
        }
        if self.max_events_per_trace == 0 {
            return Err(ConfigError::new(
                "server_trace.max_events_per_trace",
                "must be at least 1 (e.g. 1000): a trace would keep none of its steps",
            ));
        }
        if self.read_timeout.is_zero() {
            return Err(ConfigError::new(
                "server_trace.read_timeout",
                "is 0, so every trace read would fail: give the time one read of system_traces may take (e.g. 2 s)",
            ));
        }
        Ok(())
    }
}

/// One event of a server trace (a row of `system_traces.events`), its
/// activity text sanitised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTraceStep {
    /// `event_id`: a time-based UUID.
    pub event_id: [u8; 16],
    /// `source`: the node that did the step.
    pub source: Option<IpAddr>,
    /// `source_elapsed`: time on `source` since it began its part.
    pub elapsed: Duration,
    /// `activity`, sanitised ([`sanitize_activity`]).
    pub activity: String,
    /// `thread`: the server thread (stage) that did it.
    pub thread: String,
}

impl ServerTraceStep {
    /// A step; `activity` is sanitised here.
    pub fn new(
        event_id: [u8; 16],
        source: Option<IpAddr>,
        elapsed: Duration,
        activity: &str,
        thread: impl Into<String>,
    ) -> ServerTraceStep {
        ServerTraceStep {
            event_id,
            source,
            elapsed,
            activity: sanitize_activity(activity),
            thread: thread.into(),
        }
    }

    /// When the step was recorded by its node's clock, if `event_id` is a
    /// time-based (version 1) UUID.
    pub fn recorded_at(&self) -> Option<SystemTime> {
        timeuuid_time(&self.event_id)
    }

    /// When its node began its part of the request, by that node's clock:
    /// [`recorded_at`](Self::recorded_at) less `elapsed`.
    pub fn node_began_at(&self) -> Option<SystemTime> {
        self.recorded_at()?.checked_sub(self.elapsed)
    }
}

/// The time of a version 1 (time-based) UUID.
pub fn timeuuid_time(id: &[u8; 16]) -> Option<SystemTime> {
    if id[6] >> 4 != 1 {
        return None;
    }
    let time_low = u64::from(u32::from_be_bytes([id[0], id[1], id[2], id[3]]));
    let time_mid = u64::from(u16::from_be_bytes([id[4], id[5]]));
    let time_hi = u64::from(u16::from_be_bytes([id[6], id[7]]) & 0x0fff);
    let ticks = (time_hi << 48) | (time_mid << 32) | time_low;
    // 100 ns ticks since 1582-10-15
    const GREGORIAN_TO_UNIX: u64 = 0x01B2_1DD2_1381_4000;
    let since_unix = ticks.checked_sub(GREGORIAN_TO_UNIX)?;
    Some(UNIX_EPOCH + Duration::from_nanos(since_unix.saturating_mul(100)))
}

/// A trace session id as a UUID string (`8-4-4-4-12` hex digits).
pub fn session_id_string(id: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in id.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// An activity text with what looks like a value replaced by `?`:
/// statement text (`Parsing SELECT ... WHERE k = 5`), tokens (hashes of
/// partition keys) and any quoted, blob or UUID value, and the inside of
/// parentheses that do not follow a word. Kept as written: the wording,
/// node addresses (`/127.0.0.2:7000`, `{127.0.0.1}`) and numbers that
/// count what the server did (`Read 3 live rows and 0 tombstone cells`,
/// `size 97 bytes`). An activity text is the server's prose, read as an
/// error's message is: the one rule is
/// [`error_message`](crate::redact::error_message)'s, which describes
/// what is kept here too (an address inside a literal is part of the
/// literal and goes with it; an apostrophe in a word opens no string;
/// `--` starts no comment). One step quotes a statement, not prose:
/// Cassandra's `Parsing <statement>`, whose statement (one the analysis
/// recognises, `SELECT`, `INSERT`, ...) is sanitised as a statement's
/// text is ([`sanitize`](crate::redact::sanitize), the rule of
/// `db.query.text`): its column list kept, every literal gone, its
/// comments dropped.
pub fn sanitize_activity(text: &str) -> String {
    if let Some(statement) = text.strip_prefix("Parsing ")
        && crate::analysis::analyse(statement).0 != crate::request::OperationKind::Other
    {
        return format!("Parsing {}", crate::redact::sanitize(statement));
    }
    crate::redact::prose(text, crate::redact::Keep::NodesAndCounts)
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;

    #[test]
    fn statement_text_in_an_activity_loses_its_literals() {
        for (raw, want) in [
            (
                "Parsing SELECT v FROM ks.kv WHERE k = 424242",
                "Parsing SELECT v FROM ks.kv WHERE k = ?",
            ),
            (
                "Parsing INSERT INTO ks.kv (k, v) VALUES (1, 'secret-value')",
                "Parsing INSERT INTO ks.kv (k, v) VALUES (?, ?)",
            ),
            (
                "Parsing UPDATE t SET v = $$it's secret$$ WHERE id = 0xCAFE",
                "Parsing UPDATE t SET v = ? WHERE id = ?",
            ),
            (
                "Executing single-partition query on kv",
                "Executing single-partition query on kv",
            ),
            (
                "Read 1 live rows and 0 tombstone cells",
                "Read 1 live rows and 0 tombstone cells",
            ),
            (
                "READ_REQ message received from /127.0.0.1:7000",
                "READ_REQ message received from /127.0.0.1:7000",
            ),
            (
                "Executing seq scan across 2 sstables for (min(-9223372036854775808), max(42)]",
                "Executing seq scan across 2 sstables for (?]",
            ),
            ("Request complete", "Request complete"),
            ("", ""),
        ] {
            assert_eq!(sanitize_activity(raw), want, "{raw}");
        }
    }

    #[test]
    fn no_value_survives_whatever_the_activity() {
        for v in ["secret-value", "4242424242", "0xdeadbeef", "bob's"] {
            let quoted = format!("'{}'", v.replace('\'', "''"));
            let literal = if v.chars().all(|c| c.is_ascii_digit()) || v.starts_with("0x") {
                v.to_string()
            } else {
                quoted
            };
            for raw in [
                format!("Parsing SELECT * FROM t WHERE k = {literal}"),
                format!("Creating read executor for token {literal} with all: {{127.0.0.1}}"),
                format!("Key {literal} not found /127.0.0.3"),
            ] {
                let s = sanitize_activity(&raw);
                assert!(!s.contains(v.trim_start_matches("0x")), "{raw} -> {s}");
            }
        }
    }

    /// The statement Cassandra's first step quotes (`Parsing
    /// <statement>`) is sanitised as the statement's text is
    /// ([`sanitize`](crate::redact::sanitize), `db.query.text`): its
    /// column list kept, every literal gone, a boolean's too. Read as
    /// prose, a column list became `(?)` and `true` stayed.
    #[test]
    fn a_parsed_statement_is_sanitised_as_its_text_is() {
        for (statement, want) in [
            (
                "INSERT INTO ks.kv (k, v) VALUES (1, 'secret-value')",
                "INSERT INTO ks.kv (k, v) VALUES (?, ?)",
            ),
            (
                "UPDATE ks.flags SET enabled = true WHERE k = 1",
                "UPDATE ks.flags SET enabled = ? WHERE k = ?",
            ),
            (
                "SELECT * FROM t WHERE (a, b) IN ((1, FALSE)) -- a 'note'",
                "SELECT * FROM t WHERE (a, b) IN ((?, ?))",
            ),
        ] {
            let raw = format!("Parsing {statement}");
            assert_eq!(sanitize_activity(&raw), format!("Parsing {want}"), "{raw}");
            assert_eq!(crate::redact::sanitize(statement), want, "one rule");
        }
        // not a statement (Scylla's wording): prose, as any other step
        for raw in ["Parsing a statement", "Parsing Couldn't 'secret' (x y)"] {
            assert_eq!(
                sanitize_activity(raw),
                crate::redact::prose(raw, crate::redact::Keep::NodesAndCounts),
                "{raw}"
            );
        }
    }

    /// A key the server prints bare, as hex bytes: Scylla's `pk{...}` and
    /// `ckp{...}`, Cassandra's `DecoratedKey(token, key)` (in a digest
    /// mismatch step). Hex that starts with a letter is a word to the
    /// lexer, and stayed: `pk{ffffffff}` is the int key -1.
    #[test]
    fn a_key_printed_as_hex_bytes_goes() {
        for (raw, want) in [
            (
                "Start querying singular range {{-4069959284402364209, pk{ffffffff}}}",
                "Start querying singular range {{?, pk{?}}}",
            ),
            (
                "Querying cache for range {{3248873570005575792, pk{c0ffee01}}} on /127.0.0.2",
                "Querying cache for range {{?, pk{?}}} on /127.0.0.2",
            ),
            (
                "Caching querier with clustering key ckp{deadbeef0102}",
                "Caching querier with clustering key ckp{?}",
            ),
            (
                "Digest mismatch: Mismatch for key DecoratedKey(-8437016316046232286, ab6579) (d41d8cd98f vs e3b0c44298)",
                "Digest mismatch: Mismatch for key DecoratedKey(?) (?)",
            ),
            // a type or a call without a value stays as written
            (
                "Merged data from memtables and 2 sstables for row(s) of Native(Int)",
                "Merged data from memtables and 2 sstables for row(s) of Native(Int)",
            ),
        ] {
            assert_eq!(sanitize_activity(raw), want, "{raw}");
        }
    }

    /// A value the server prints bare after its column's name
    /// (`name=value`): Cassandra's failed LWT step prints the row it read
    /// ("CAS precondition does not match current values ... v=hunter2").
    /// A text value is a word to the lexer, and stayed.
    #[test]
    fn a_value_printed_after_its_name_goes() {
        for (raw, want) in [
            (
                "CAS precondition does not match current values [ks.t] key=5 \
                 partition_deletion=deletedAt=-9223372036854775808, localDeletion=2147483647 \
                 columns=[[] | [v]] Row: EMPTY | v=hunter2",
                "CAS precondition does not match current values [ks.t] key=? \
                 partition_deletion=?=?, localDeletion=? \
                 columns=[[] | [v]] Row: EMPTY | v=?",
            ),
            // `=` with spaces is the statement's, whose names stay
            ("Filtering on v = w", "Filtering on v = w"),
        ] {
            assert_eq!(sanitize_activity(raw), want, "{raw}");
        }
    }

    /// An address inside a literal is part of the value: the literal is
    /// replaced whole. Cut out before lexing, it split the literal in two
    /// and the words after it left the literal.
    #[test]
    fn a_literal_holding_an_address_is_replaced_whole() {
        for (raw, want) in [
            (
                "Parsing INSERT INTO ks.notes (k, v) VALUES (1, 'call me on 10.1.2.3 password hunter2')",
                "Parsing INSERT INTO ks.notes (k, v) VALUES (?, ?)",
            ),
            (
                "Parsing UPDATE t SET v = '10.1.2.3' WHERE k = 1",
                "Parsing UPDATE t SET v = ? WHERE k = ?",
            ),
            (
                "Parsing UPDATE t SET v = $$ to /10.0.0.1:7000 it's hunter2 $$ WHERE k = 1",
                "Parsing UPDATE t SET v = ? WHERE k = ?",
            ),
            (
                "Parsing SELECT * FROM t WHERE v = 'x 10.1.2.3' AND w = 'hunter2 127.0.0.1:7000'",
                "Parsing SELECT * FROM t WHERE v = ? AND w = ?",
            ),
        ] {
            assert_eq!(sanitize_activity(raw), want, "{raw}");
        }
    }

    /// An activity text is prose, read as an error's message is: an
    /// apostrophe inside a word opens no string, `--` starts no comment,
    /// a value in parentheses goes, and the text is copied as written.
    /// Read as a statement, `Couldn't` opened a string that ran to the
    /// next quote, so the quoted value came out as a word
    /// (`Couldn ? secret ?`), and `--` dropped the rest of the text.
    #[test]
    fn an_activity_is_read_as_prose() {
        for (raw, want) in [
            (
                "Couldn't find key 'secret' -- retrying for 3 replicas",
                "Couldn't find key ? -- retrying for 3 replicas",
            ),
            (
                "Read 2 live rows -- from /127.0.0.2:7000, not /10.0.0.9",
                "Read 2 live rows -- from /127.0.0.2:7000, not /10.0.0.9",
            ),
            (
                "Invalid STRING constant (hello secret) for k",
                "Invalid STRING constant (?) for k",
            ),
            (
                "Read  3 live rows\tand 0 tombstone cells",
                "Read  3 live rows\tand 0 tombstone cells",
            ),
        ] {
            assert_eq!(sanitize_activity(raw), want, "{raw}");
        }
    }

    #[test]
    fn an_address_is_not_taken_out_of_a_longer_number() {
        for (raw, want) in [
            ("version 1.2.3.4.5", "version ?"),
            ("version 1.2.3", "version ?"),
            ("at 1.2.3.4e5", "at ?"),
            ("at 1234.2.3.4", "at ?"),
            ("a1.2.3.4", "a1.?"),
            ("to /10.0.0.1:7000 x", "to /10.0.0.1:7000 x"),
            ("to 10.0.0.1 : 7000", "to 10.0.0.1 : ?"),
            ("{127.0.0.1, 127.0.0.2}", "{127.0.0.1, 127.0.0.2}"),
        ] {
            assert_eq!(sanitize_activity(raw), want, "{raw}");
        }
    }

    #[test]
    fn timeuuids_give_their_time_and_ids_print_as_uuids() {
        // 2015-10-15 00:00:00 UTC in a version 1 UUID
        let ticks: u64 = (1_444_867_200u64 * 10_000_000) + 0x01B2_1DD2_1381_4000;
        let mut id = [0u8; 16];
        id[0..4].copy_from_slice(&((ticks & 0xffff_ffff) as u32).to_be_bytes());
        id[4..6].copy_from_slice(&(((ticks >> 32) & 0xffff) as u16).to_be_bytes());
        id[6..8].copy_from_slice(&((((ticks >> 48) & 0x0fff) as u16) | 0x1000).to_be_bytes());
        let t = timeuuid_time(&id).unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_secs(1_444_867_200)
        );
        let mut v4 = id;
        v4[6] = 0x40;
        assert_eq!(timeuuid_time(&v4), None);
        assert_eq!(
            session_id_string(&[0xab; 16]),
            "abababab-abab-abab-abab-abababababab"
        );
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let bad = |c: ServerTraceConfig| c.validate().unwrap_err().field;
        let d = ServerTraceConfig::default();
        assert!(d.validate().is_ok());
        assert!(!d.is_on(), "off by default");
        assert_eq!(
            bad(ServerTraceConfig {
                sample_ratio: 1.5,
                ..d
            }),
            "server_trace.sample_ratio"
        );
        assert_eq!(
            bad(ServerTraceConfig {
                sample_ratio: f64::NAN,
                ..d
            }),
            "server_trace.sample_ratio"
        );
        assert_eq!(
            bad(ServerTraceConfig {
                sample_ratio: -0.1,
                ..d
            }),
            "server_trace.sample_ratio"
        );
        assert_eq!(
            bad(ServerTraceConfig {
                slow_threshold: Some(Duration::from_millis(5)),
                trace_next: 0,
                ..d
            }),
            "server_trace.trace_next"
        );
        assert_eq!(
            bad(ServerTraceConfig { trace_next: 3, ..d }),
            "server_trace.trace_next"
        );
        assert_eq!(
            bad(ServerTraceConfig {
                slow_threshold: Some(Duration::ZERO),
                trace_next: 3,
                ..d
            }),
            "server_trace.slow_threshold"
        );
        assert_eq!(
            bad(ServerTraceConfig {
                max_fetches_per_second: 0,
                ..d
            }),
            "server_trace.max_fetches_per_second"
        );
        assert_eq!(
            bad(ServerTraceConfig {
                queue_capacity: 0,
                ..d
            }),
            "server_trace.queue_capacity"
        );
        assert_eq!(
            bad(ServerTraceConfig {
                max_events_per_trace: 0,
                ..d
            }),
            "server_trace.max_events_per_trace"
        );
        assert_eq!(
            bad(ServerTraceConfig {
                queue_capacity: usize::MAX,
                ..d
            }),
            "server_trace.queue_capacity"
        );
        assert!(
            ServerTraceConfig {
                queue_capacity: MAX_QUEUE_CAPACITY,
                ..d
            }
            .validate()
            .is_ok()
        );
        assert_eq!(
            bad(ServerTraceConfig {
                fetch_attempts: 0,
                ..d
            }),
            "server_trace.fetch_attempts"
        );
        let msg = ServerTraceConfig {
            slow_threshold: Some(Duration::from_millis(5)),
            ..d
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(msg.contains("how many requests to trace"), "{msg}");
    }
}
