//! One classifier answers every question a layer asks about a failure.
//!
//! Whether to retry and where, whether the failure counts against the node
//! for the circuit breaker, whether it signals overload to the adaptive
//! concurrency limit, and which `error.type` label it gets: all four come
//! from [`classify`], a function of the error and of whether the request is
//! idempotent. Retry, hedge, breaker, adaptive limit, metrics and spans ask
//! it; no layer keeps a list of its own (tower-http's `classify` module is
//! the model).
//!
//! ```
//! use tower_cql_core::classify::{classify, NodeVerdict};
//! use tower_cql_core::{CqlError, ErrorKind, RetryAdvice};
//!
//! let overloaded = CqlError::new(ErrorKind::Overloaded, "coordinator busy");
//! // The coordinator may have handed the mutation to some replicas before
//! // refusing: only an idempotent request is retried.
//! assert_eq!(classify(&overloaded, false).retry, RetryAdvice::DontRetry);
//! assert_eq!(classify(&overloaded, true).retry, RetryAdvice::RetryNextNode);
//! let class = classify(&overloaded, true);
//! assert_eq!(class.node, NodeVerdict::Failed);
//! assert!(class.overload);
//! assert_eq!(class.error_type, "overloaded");
//!
//! // Unavailable: the coordinator executed nothing, so any request retries.
//! let unavailable = CqlError::new(ErrorKind::Unavailable, "2 of 3 replicas down");
//! assert_eq!(classify(&unavailable, false).retry, RetryAdvice::RetryNextNode);
//! ```
//!
//! # The rules
//!
//! | error kind | idempotent | not idempotent | breaker | overload |
//! |---|---|---|---|---|
//! | `Unavailable`, `IsBootstrapping` (never executed) | next node | next node | node failed | no |
//! | any error raised before the request was sent ([`CqlError::was_not_sent`]) | next node | next node | as its kind | as its kind |
//! | `Unprepared` (re-prepared, then executed) | same node | same node | healthy | no |
//! | `ReadTimeout` | same node if enough replicas answered but the data replica was late, else next node | the same | node failed | no |
//! | `Overloaded` | next node | **no** (may be on some replicas) | node failed | **yes** |
//! | `WriteTimeout`, `WriteFailure` (`CAS`: never) | next node | **no** | node failed | no |
//! | `ServerError`, `TruncateError`, `ReadFailure`, `Connection`, `Other` | next node | **no** | `ServerError`, `Connection`: node failed | no |
//! | `ClientTimeout` (per-attempt timeout) | next node | **no** | node failed (the node it waited on) | **yes** |
//! | syntax, invalid, auth, values, schema, function, `RateLimitReached` | no | no | healthy (the node answered) | no |
//! | refusals made on the client (`RateLimited`, `Shed`, `CircuitOpen`, `ShutDown`, `BadRequest`, `Serialization`, `DeadlineExceeded`), and `Cancelled` (a lost hedge race, a dropped request) | no | no | not judged | no |
//!
//! The retry columns are the anchors' behaviour: scylla 1.9's
//! `DefaultRetryPolicy` and the DataStax Java driver 4.x retry
//! `Overloaded`, `ServerError`, `TruncateError` and read/write failures only
//! for idempotent requests (a coordinator's `Overloaded` can come after
//! some replicas took the mutation); `Unavailable` and `IsBootstrapping`
//! mean nothing was executed. A `CAS` (lightweight transaction) write
//! timeout is never retried: its outcome is unknown until a serial read.
//! Idempotency is [`RequestMeta::is_idempotent`](crate::RequestMeta::is_idempotent):
//! what the caller marked, unless the statement text makes a retry unsafe
//! (LWT, counter, list append, `DELETE l[0]`, `now()`), which no marking
//! overrides.

use crate::error::{CqlError, ErrorKind};
use crate::request::RequestMeta;
use crate::response::CqlResponse;

/// What a retry should do after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryAdvice {
    /// Do not retry: it cannot succeed, or retrying could apply a write twice.
    DontRetry,
    /// Retry on the same node.
    RetrySameNode,
    /// Retry on another node.
    RetryNextNode,
}

/// How an outcome counts for the node that produced it (the circuit
/// breaker's question).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeVerdict {
    /// The node answered as a healthy node does (a success, or an error
    /// about the request itself such as a syntax error).
    Healthy,
    /// The node failed the request: it counts against the node.
    Failed,
    /// Decided on the client without the node (a refusal, a deadline, bad
    /// values): says nothing about any node.
    NotJudged,
}

impl NodeVerdict {
    /// The verdict on a result: a success is [`NodeVerdict::Healthy`], an
    /// error is what [`classify`] says.
    pub fn of(result: &Result<CqlResponse, CqlError>) -> NodeVerdict {
        match result {
            Ok(_) => NodeVerdict::Healthy,
            Err(e) => node_verdict(e.kind()),
        }
    }
}

/// Every answer about one failure, from [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FailureClass {
    /// Whether and where to retry.
    pub retry: RetryAdvice,
    /// Whether it counts against the node (circuit breaker).
    pub node: NodeVerdict,
    /// Whether it signals overload (adaptive concurrency limit).
    pub overload: bool,
    /// The `error.type` label (bounded: one per [`ErrorKind`]).
    pub error_type: &'static str,
    /// The client stopped waiting before an answer (a per-attempt
    /// timeout, the deadline, a cancellation): the attempt took longer
    /// than the time it ran (a censored latency, for the hedge's delay).
    pub cut_short: bool,
}

/// Classifies `error` for a request that is (or is not) idempotent. The
/// one place the rules of the module docs live.
pub fn classify(error: &CqlError, idempotent: bool) -> FailureClass {
    let kind = error.kind();
    FailureClass {
        retry: retry_advice(error, idempotent),
        node: node_verdict(kind),
        overload: matches!(kind, ErrorKind::Overloaded | ErrorKind::ClientTimeout),
        error_type: kind.as_str(),
        cut_short: matches!(
            kind,
            ErrorKind::ClientTimeout | ErrorKind::DeadlineExceeded | ErrorKind::Cancelled
        ),
    }
}

/// The `error.type` label of `error` (what [`classify`] gives as
/// [`FailureClass::error_type`], without the rest).
pub fn error_type(error: &CqlError) -> &'static str {
    error.kind().as_str()
}

/// [`classify`] for the request `meta` describes.
pub fn classify_for(error: &CqlError, meta: &RequestMeta) -> FailureClass {
    classify(error, meta.is_idempotent())
}

fn node_verdict(kind: ErrorKind) -> NodeVerdict {
    use ErrorKind as K;
    match kind {
        K::Overloaded
        | K::Unavailable
        | K::ReadTimeout
        | K::WriteTimeout
        | K::ClientTimeout
        | K::Connection
        | K::ServerError
        | K::IsBootstrapping => NodeVerdict::Failed,
        K::RateLimited
        | K::Shed
        | K::CircuitOpen
        | K::ShutDown
        | K::BadRequest
        | K::Serialization
        | K::DeadlineExceeded
        | K::Cancelled => NodeVerdict::NotJudged,
        _ => NodeVerdict::Healthy,
    }
}

fn retry_advice(error: &CqlError, idempotent: bool) -> RetryAdvice {
    use ErrorKind as K;
    let if_idempotent = if idempotent {
        RetryAdvice::RetryNextNode
    } else {
        RetryAdvice::DontRetry
    };
    match error.kind() {
        K::Syntax
        | K::Invalid
        | K::AlreadyExists
        | K::Unauthorized
        | K::AuthenticationFailed
        | K::ConfigError
        | K::Protocol
        | K::Serialization
        | K::Deserialization
        | K::Prepare
        | K::SchemaAgreement
        | K::FunctionFailure
        | K::ShutDown
        | K::CircuitOpen
        | K::DeadlineExceeded
        | K::BadRequest
        | K::RateLimited
        | K::Shed
        | K::Cancelled
        | K::RateLimitReached => RetryAdvice::DontRetry,
        K::Unprepared => RetryAdvice::RetrySameNode,
        K::Unavailable | K::IsBootstrapping => RetryAdvice::RetryNextNode,
        _ if error.was_not_sent() => RetryAdvice::RetryNextNode,
        // Enough replicas answered but the data replica was late (its
        // answer is likely in by now): the same coordinator. Otherwise
        // replicas are missing: another node.
        K::ReadTimeout => match error.details() {
            Some(d) if d.data_present == Some(false) && d.received >= d.required => {
                RetryAdvice::RetrySameNode
            }
            _ => RetryAdvice::RetryNextNode,
        },
        K::WriteTimeout | K::WriteFailure
            if error.details().and_then(|d| d.write_type) == Some("CAS") =>
        {
            RetryAdvice::DontRetry
        }
        kind if may_have_been_applied(kind) => if_idempotent,
        // (every kind is answered above; a new one is not retried until
        // it has a rule)
        _ => RetryAdvice::DontRetry,
    }
}

/// Whether the server may have applied a request that was sent and
/// failed with `kind`: the one list, which
/// [`ErrorKind::may_have_been_applied`] gives and by which a request that
/// is not idempotent is not retried (the "not idempotent" column of the
/// module docs' table).
pub(crate) const fn may_have_been_applied(kind: ErrorKind) -> bool {
    use ErrorKind as K;
    matches!(
        kind,
        K::Overloaded
            | K::WriteTimeout
            | K::WriteFailure
            | K::ReadFailure
            | K::TruncateError
            | K::ClientTimeout
            | K::Cancelled
            | K::DeadlineExceeded
            | K::ServerError
            | K::Connection
            // the coordinator applied the change; the nodes' agreement
            // on it is what failed
            | K::SchemaAgreement
            | K::Other
    )
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_answer_per_question() {
        for kind in ErrorKind::ALL {
            let e = CqlError::new(kind, "x");
            let c = classify(&e, true);
            assert_eq!(c.error_type, kind.as_str());
            // a kind that may have been applied never retries for a
            // non-idempotent request, unless it was never sent
            if e.may_have_been_applied() {
                assert_eq!(classify(&e, false).retry, RetryAdvice::DontRetry, "{kind}");
            }
            // and the converse: a kind retried only when idempotent is one
            // that may have been applied (the only reason to hold back the
            // retry of a request that is not), as the README's retry table
            // says (`ReadFailure` among them)
            if classify(&e, false).retry == RetryAdvice::DontRetry
                && c.retry != RetryAdvice::DontRetry
            {
                assert!(e.may_have_been_applied(), "{kind}");
            }
            // client-side refusals are never retried and never judge a node
            if c.node == NodeVerdict::NotJudged {
                assert_eq!(c.retry, RetryAdvice::DontRetry, "{kind}");
                assert!(!c.overload, "{kind}");
            }
        }
    }
}
