//! Fault injection: rules matched against every request, changeable while
//! traffic flows.
//!
//! ```
//! use std::time::Duration;
//! use tower_cql_testkit::{Fault, InjectedError, Opcode};
//!
//! // 10% of reads of ks.users answered with Overloaded, at most 50 times.
//! let overloaded = Fault::error(InjectedError::Overloaded)
//!     .table("ks", "users")
//!     .reads()
//!     .probability(0.1)
//!     .times(50);
//! // Every EXECUTE on node 2 takes 20 ms longer.
//! let slow = Fault::delay(Duration::from_millis(20)).opcode(Opcode::Execute).node(2);
//! // Writes are applied, then answered with a WriteTimeout, as a real
//! // cluster does when a coordinator gives up on slow replicas.
//! let applied_then_timeout = Fault::write_timeout_after_apply().matching("INSERT INTO ks.events");
//! // Or applied, then answered with any error, or with a closed connection:
//! // the client sees a failure, the write happened.
//! let applied_then_overloaded = Fault::error_after_apply(InjectedError::Overloaded).probability(0.01);
//! let applied_then_closed = Fault::close_connection_after_apply().table("ks", "events").times(1);
//! # let _ = (overloaded, slow, applied_then_timeout, applied_then_overloaded, applied_then_closed);
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::error::{ErrorExtra, ServerError, WriteType};
use crate::frame::Opcode;

/// An error response a fault answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InjectedError {
    /// OVERLOADED (0x1001).
    Overloaded,
    /// UNAVAILABLE (0x1000): 2 replicas required, 1 alive.
    Unavailable,
    /// READ_TIMEOUT (0x1200): 1 of 2 replicas answered, data not present.
    ReadTimeout,
    /// READ_TIMEOUT (0x1200): 2 of 2 replicas answered, but not the one
    /// asked for the data (data not present): the data replica was late,
    /// which the drivers retry on the same node.
    ReadTimeoutDataLate,
    /// WRITE_TIMEOUT (0x1100) with the given write type.
    WriteTimeout(WriteType),
    /// READ_FAILURE (0x1300).
    ReadFailure,
    /// WRITE_FAILURE (0x1500).
    WriteFailure,
    /// SERVER_ERROR (0x0000).
    ServerError,
    /// IS_BOOTSTRAPPING (0x1002).
    IsBootstrapping,
    /// TRUNCATE_ERROR (0x1003).
    TruncateError,
    /// UNPREPARED (0x2500) for an EXECUTE's statement id: the driver
    /// re-prepares and retries.
    Unprepared,
    /// UNAUTHORIZED (0x2100).
    Unauthorized,
    /// INVALID (0x2200) with this message, as the server writes it: for
    /// a message that quotes a value (`Unable to make long from
    /// 'secret'`), which a real server does for a value it cannot use.
    Invalid(&'static str),
}

impl InjectedError {
    /// The error response for a request at `consistency`; `id` is the
    /// prepared id of an EXECUTE.
    pub(crate) fn to_server_error(self, consistency: u16, id: Option<&[u8]>) -> ServerError {
        use crate::error as e;
        let (code, message, extra) = match self {
            InjectedError::Overloaded => (
                e::OVERLOADED,
                "Server is overloaded (injected by testkit)",
                ErrorExtra::None,
            ),
            InjectedError::Unavailable => (
                e::UNAVAILABLE,
                "Cannot achieve consistency level (injected by testkit)",
                ErrorExtra::Unavailable {
                    consistency,
                    required: 2,
                    alive: 1,
                },
            ),
            InjectedError::ReadTimeout => (
                e::READ_TIMEOUT,
                "Operation timed out - received only 1 responses (injected by testkit)",
                ErrorExtra::ReadTimeout {
                    consistency,
                    received: 1,
                    block_for: 2,
                    data_present: false,
                },
            ),
            InjectedError::ReadTimeoutDataLate => (
                e::READ_TIMEOUT,
                "Operation timed out - received 2 responses, not the data (injected by testkit)",
                ErrorExtra::ReadTimeout {
                    consistency,
                    received: 2,
                    block_for: 2,
                    data_present: false,
                },
            ),
            InjectedError::WriteTimeout(write_type) => (
                e::WRITE_TIMEOUT,
                "Operation timed out - received only 1 responses (injected by testkit)",
                ErrorExtra::WriteTimeout {
                    consistency,
                    received: 1,
                    block_for: 2,
                    write_type,
                },
            ),
            InjectedError::ReadFailure => (
                e::READ_FAILURE,
                "Operation failed - received 0 responses and 1 failures (injected by testkit)",
                ErrorExtra::ReadFailure {
                    consistency,
                    received: 0,
                    block_for: 1,
                    failures: 1,
                    data_present: false,
                },
            ),
            InjectedError::WriteFailure => (
                e::WRITE_FAILURE,
                "Operation failed - received 0 responses and 1 failures (injected by testkit)",
                ErrorExtra::WriteFailure {
                    consistency,
                    received: 0,
                    block_for: 1,
                    failures: 1,
                    write_type: WriteType::Simple,
                },
            ),
            InjectedError::ServerError => (
                e::SERVER_ERROR,
                "Internal server error (injected by testkit)",
                ErrorExtra::None,
            ),
            InjectedError::IsBootstrapping => (
                e::IS_BOOTSTRAPPING,
                "Cannot read from a bootstrapping node (injected by testkit)",
                ErrorExtra::None,
            ),
            InjectedError::TruncateError => (
                e::TRUNCATE_ERROR,
                "Truncate failed (injected by testkit)",
                ErrorExtra::None,
            ),
            InjectedError::Unauthorized => (
                e::UNAUTHORIZED,
                "User has no permission (injected by testkit)",
                ErrorExtra::None,
            ),
            InjectedError::Invalid(message) => (e::INVALID, message, ErrorExtra::None),
            InjectedError::Unprepared => return ServerError::unprepared(id.unwrap_or(&[0; 16])),
        };
        ServerError {
            code,
            message: message.to_string(),
            extra,
        }
    }
}

/// What a matching fault does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultAction {
    /// Answer with an error instead of executing.
    Error(InjectedError),
    /// Execute (apply the write), then answer with an error.
    ErrorAfterApply(InjectedError),
    /// Execute (apply the write), then close the connection without
    /// answering.
    CloseConnectionAfterApply,
    /// Execute after this delay (the connection keeps serving others).
    Delay(Duration),
    /// Execute, then answer with the result and this warning attached
    /// (the frame's WARNING flag), as a server attaches one: Cassandra
    /// warns of an unlogged batch across many partitions, a large batch,
    /// an aggregation without a partition key.
    Warn(String),
    /// Never answer.
    NoResponse,
    /// Close the connection without answering.
    CloseConnection,
    /// TEST-ONLY, hidden: make executing the request panic, as a bug in
    /// testkit would. It exists to test that such a request is still
    /// answered (with a `ServerError` saying testkit failed internally)
    /// and that its connection keeps serving; it is not a fault a client
    /// meets from a real server.
    #[doc(hidden)]
    Panic,
}

/// Whether a statement reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// SELECT.
    Read,
    /// INSERT, UPDATE, DELETE, BATCH.
    Write,
}

/// A fault rule: a matcher, an action, a probability and a count.
#[derive(Debug, Clone)]
pub struct Fault {
    action: FaultAction,
    opcode: Option<Opcode>,
    contains: Option<String>,
    keyspace: Option<String>,
    table: Option<String>,
    node: Option<usize>,
    kind: Option<StatementKind>,
    probability: f64,
    times: Option<u64>,
}

impl Fault {
    /// A fault that performs `action` on every request (narrow it with the
    /// matcher methods).
    pub fn new(action: FaultAction) -> Fault {
        Fault {
            action,
            opcode: None,
            contains: None,
            keyspace: None,
            table: None,
            node: None,
            kind: None,
            probability: 1.0,
            times: None,
        }
    }

    /// Answer with `error` instead of executing.
    pub fn error(error: InjectedError) -> Fault {
        Fault::new(FaultAction::Error(error))
    }

    /// Apply the write, then answer with a `WriteTimeout` (write type
    /// SIMPLE): the applied-then-failed write a retry must not repeat.
    /// Shorthand for `error_after_apply(InjectedError::WriteTimeout(WriteType::Simple))`.
    pub fn write_timeout_after_apply() -> Fault {
        Fault::error_after_apply(InjectedError::WriteTimeout(WriteType::Simple))
    }

    /// Apply the write, then answer with `error`: the client sees
    /// `Overloaded`, `ServerError`, a `WriteTimeout` …, yet the write
    /// happened, so a retry of a non-idempotent write applies it twice
    /// (the [counters](crate::ExecutionCounters::duplicate_writes) show it).
    ///
    /// Matches writes only (INSERT, UPDATE, DELETE, BATCH); narrow it
    /// further with the matcher methods.
    pub fn error_after_apply(error: InjectedError) -> Fault {
        Fault::new(FaultAction::ErrorAfterApply(error)).writes()
    }

    /// Apply the write, then close the connection without answering: the
    /// client sees a broken connection and cannot know the write happened.
    ///
    /// Matches writes only (INSERT, UPDATE, DELETE, BATCH); narrow it
    /// further with the matcher methods.
    pub fn close_connection_after_apply() -> Fault {
        Fault::new(FaultAction::CloseConnectionAfterApply).writes()
    }

    /// Delay the request by `delay`, then execute it.
    pub fn delay(delay: Duration) -> Fault {
        Fault::new(FaultAction::Delay(delay))
    }

    /// Execute the request, then answer with its result and `warning`
    /// attached, as a server's warning.
    pub fn warning(warning: impl Into<String>) -> Fault {
        Fault::new(FaultAction::Warn(warning.into()))
    }

    /// Never answer the request.
    pub fn no_response() -> Fault {
        Fault::new(FaultAction::NoResponse)
    }

    /// Close the connection instead of answering.
    pub fn close_connection() -> Fault {
        Fault::new(FaultAction::CloseConnection)
    }

    /// Only requests with this opcode.
    pub fn opcode(mut self, opcode: Opcode) -> Fault {
        self.opcode = Some(opcode);
        self
    }

    /// Only statements whose text contains `text` (case-sensitive).
    pub fn matching(mut self, text: impl Into<String>) -> Fault {
        self.contains = Some(text.into());
        self
    }

    /// Only statements on tables of `keyspace`.
    pub fn keyspace(mut self, keyspace: impl Into<String>) -> Fault {
        self.keyspace = Some(keyspace.into());
        self
    }

    /// Only statements on `keyspace.table`.
    pub fn table(mut self, keyspace: impl Into<String>, table: impl Into<String>) -> Fault {
        self.keyspace = Some(keyspace.into());
        self.table = Some(table.into());
        self
    }

    /// Only requests served by node `index` (0-based).
    pub fn node(mut self, index: usize) -> Fault {
        self.node = Some(index);
        self
    }

    /// Only reads (SELECT).
    pub fn reads(mut self) -> Fault {
        self.kind = Some(StatementKind::Read);
        self
    }

    /// Only writes (INSERT, UPDATE, DELETE, BATCH).
    pub fn writes(mut self) -> Fault {
        self.kind = Some(StatementKind::Write);
        self
    }

    /// Fire on this fraction of matching requests (0.0–1.0).
    ///
    /// # Panics
    /// When `p` is not within 0.0–1.0.
    pub fn probability(mut self, p: f64) -> Fault {
        assert!(
            (0.0..=1.0).contains(&p),
            "fault probability must be within 0.0..=1.0, got {p}"
        );
        self.probability = p;
        self
    }

    /// Fire at most `n` times, then stay inert.
    pub fn times(mut self, n: u64) -> Fault {
        self.times = Some(n);
        self
    }
}

/// Identifies an installed fault rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FaultId(u64);

#[derive(Debug)]
pub(crate) struct Rule {
    id: FaultId,
    fault: Fault,
    /// How many more times it may fire (u64::MAX: unlimited).
    remaining: AtomicU64,
    fired: AtomicU64,
}

/// What a request is, for matching.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) opcode: Opcode,
    pub(crate) node: usize,
    pub(crate) text: Option<&'a str>,
    pub(crate) keyspace: Option<&'a str>,
    pub(crate) table: Option<&'a str>,
    pub(crate) kind: Option<StatementKind>,
}

/// The decision for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) delay: Duration,
    pub(crate) action: Option<FaultAction>,
}

/// The installed rules.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    rules: ArcSwap<Vec<Arc<Rule>>>,
    next_id: AtomicU64,
    removed_fired: AtomicU64,
}

impl Faults {
    pub(crate) fn add(&self, fault: Fault) -> FaultId {
        let id = FaultId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let rule = Arc::new(Rule {
            id,
            remaining: AtomicU64::new(fault.times.unwrap_or(u64::MAX)),
            fault,
            fired: AtomicU64::new(0),
        });
        self.rules.rcu(|rules| {
            let mut v = Vec::clone(rules);
            v.push(rule.clone());
            v
        });
        id
    }

    pub(crate) fn remove(&self, id: FaultId) -> bool {
        let mut removed = false;
        self.rules.rcu(|rules| {
            let v: Vec<Arc<Rule>> = rules.iter().filter(|r| r.id != id).cloned().collect();
            removed = v.len() != rules.len();
            v
        });
        removed
    }

    pub(crate) fn clear(&self) {
        let old = self.rules.swap(Arc::new(Vec::new()));
        let fired: u64 = old.iter().map(|r| r.fired.load(Ordering::Relaxed)).sum();
        self.removed_fired.fetch_add(fired, Ordering::Relaxed);
    }

    pub(crate) fn fired(&self, id: FaultId) -> u64 {
        self.rules
            .load()
            .iter()
            .find(|r| r.id == id)
            .map_or(0, |r| r.fired.load(Ordering::Relaxed))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rules.load().is_empty()
    }

    /// Matches `target` against the rules: delays add up, the first other
    /// action that fires wins.
    pub(crate) fn decide(&self, target: &Target<'_>) -> Decision {
        let rules = self.rules.load();
        let mut decision = Decision::default();
        for rule in rules.iter() {
            let f = &rule.fault;
            let matches = f.opcode.is_none_or(|o| o == target.opcode)
                && f.node.is_none_or(|n| n == target.node)
                && f.kind.is_none_or(|k| Some(k) == target.kind)
                && f.keyspace
                    .as_deref()
                    .is_none_or(|k| Some(k) == target.keyspace)
                && f.table.as_deref().is_none_or(|t| Some(t) == target.table)
                && f.contains
                    .as_deref()
                    .is_none_or(|c| target.text.is_some_and(|t| t.contains(c)));
            if !matches {
                continue;
            }
            if f.probability < 1.0 && fastrand::f64() >= f.probability {
                continue;
            }
            // take one firing from the count, lock-free
            let taken = rule
                .remaining
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| match n {
                    0 => None,
                    u64::MAX => Some(u64::MAX),
                    n => Some(n - 1),
                })
                .is_ok();
            if !taken {
                continue;
            }
            rule.fired.fetch_add(1, Ordering::Relaxed);
            match &f.action {
                FaultAction::Delay(d) => decision.delay += *d,
                other => {
                    decision.action = Some(other.clone());
                    break;
                }
            }
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(text: &str) -> Target<'_> {
        Target {
            opcode: Opcode::Execute,
            node: 1,
            text: Some(text),
            keyspace: Some("ks"),
            table: Some("t"),
            kind: Some(StatementKind::Read),
        }
    }

    #[test]
    fn count_limits_firing_and_is_counted() {
        let faults = Faults::default();
        let id = faults.add(
            Fault::error(InjectedError::Overloaded)
                .times(3)
                .table("ks", "t"),
        );
        let fired = (0..10)
            .filter(|_| faults.decide(&target("SELECT")).action.is_some())
            .count();
        assert_eq!(fired, 3);
        assert_eq!(faults.fired(id), 3);
    }

    #[test]
    fn matchers_narrow_and_delays_add_up() {
        let faults = Faults::default();
        faults.add(Fault::delay(Duration::from_millis(5)));
        faults.add(Fault::delay(Duration::from_millis(7)).node(1));
        faults.add(Fault::error(InjectedError::ServerError).node(0));
        faults.add(Fault::error(InjectedError::Overloaded).writes());
        faults.add(Fault::no_response().matching("SELECT"));
        let d = faults.decide(&target("SELECT x"));
        assert_eq!(d.delay, Duration::from_millis(12));
        assert_eq!(d.action, Some(FaultAction::NoResponse));
        let d = faults.decide(&target("UPDATE"));
        assert_eq!(d.action, None);
    }

    #[test]
    fn after_apply_builders_match_writes_only() {
        let wt = Fault::write_timeout_after_apply();
        assert_eq!(
            wt.action,
            FaultAction::ErrorAfterApply(InjectedError::WriteTimeout(WriteType::Simple))
        );
        for f in [
            wt,
            Fault::error_after_apply(InjectedError::Overloaded),
            Fault::close_connection_after_apply(),
        ] {
            assert_eq!(f.kind, Some(StatementKind::Write), "{f:?}");
        }
        let faults = Faults::default();
        faults.add(Fault::close_connection_after_apply());
        assert_eq!(faults.decide(&target("SELECT")).action, None);
        let write = Target {
            kind: Some(StatementKind::Write),
            ..target("UPDATE")
        };
        assert_eq!(
            faults.decide(&write).action,
            Some(FaultAction::CloseConnectionAfterApply)
        );
    }

    #[test]
    fn probability_is_roughly_honoured_and_removal_works() {
        let faults = Faults::default();
        let id = faults.add(Fault::error(InjectedError::Overloaded).probability(0.25));
        let n = (0..20_000)
            .filter(|_| faults.decide(&target("q")).action.is_some())
            .count();
        assert!((4_000..6_000).contains(&n), "{n}");
        assert!(faults.remove(id));
        assert!(faults.is_empty());
        assert!(faults.decide(&target("q")).action.is_none());
    }
}
