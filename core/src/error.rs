//! One error taxonomy for everything that can go wrong with a CQL request.
//!
//! Every failure — a server error code, a driver error, a middleware
//! decision — becomes a [`CqlError`] with an [`ErrorKind`]. Retry, metrics,
//! tracing and the circuit breaker all classify it through one function,
//! [`classify`](crate::classify::classify), where the retry rules live.
//!
//! ```
//! use tower_cql_core::{CqlError, ErrorKind, RetryAdvice};
//!
//! let err = CqlError::new(ErrorKind::Overloaded, "coordinator busy");
//! // The coordinator may have passed the mutation to some replicas before
//! // refusing: only an idempotent request is retried (on another node).
//! assert_eq!(err.retry_advice(false), RetryAdvice::DontRetry);
//! assert_eq!(err.retry_advice(true), RetryAdvice::RetryNextNode);
//! let err = CqlError::new(ErrorKind::WriteTimeout, "replicas slow");
//! // A write timeout may have been applied: only idempotent writes retry.
//! assert_eq!(err.retry_advice(false), RetryAdvice::DontRetry);
//! assert!(err.to_string().contains("may have been applied"));
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use crate::classify::RetryAdvice;

use scylla::errors::{
    BadQuery, DbError, ExecutionError, NewSessionError, OperationType, PrepareError,
    RequestAttemptError, WriteType,
};

/// What kind of failure a [`CqlError`] is. Bounded: safe as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The coordinator is overloaded and refused the request; some replicas
    /// may already have the mutation (its hint queue filled mid-write).
    Overloaded,
    /// Not enough replicas alive for the consistency level (not applied).
    Unavailable,
    /// Replicas did not answer a read in time.
    ReadTimeout,
    /// Replicas did not acknowledge a write in time; it may have been applied.
    WriteTimeout,
    /// Replicas failed a read.
    ReadFailure,
    /// Replicas failed a write; it may have been applied on some.
    WriteFailure,
    /// The server hit an internal error.
    ServerError,
    /// The coordinator is still bootstrapping.
    IsBootstrapping,
    /// A TRUNCATE failed.
    TruncateError,
    /// A user function failed.
    FunctionFailure,
    /// ScyllaDB's per-partition rate limit rejected the request.
    RateLimitReached,
    /// The statement is not valid CQL.
    Syntax,
    /// The statement is valid CQL but not valid for the schema or values.
    Invalid,
    /// The keyspace or table to create exists already.
    AlreadyExists,
    /// The user may not do this.
    Unauthorized,
    /// Authentication failed.
    AuthenticationFailed,
    /// The schema change is not allowed by the configuration.
    ConfigError,
    /// The server no longer knows the prepared statement.
    Unprepared,
    /// The client and server disagree on the protocol.
    Protocol,
    /// The client gave up waiting for this attempt (per-attempt timeout).
    ClientTimeout,
    /// The request's deadline passed before it could complete.
    DeadlineExceeded,
    /// A connection broke, could not be made, or no node could take the request.
    Connection,
    /// The bound values do not match the statement (wrong types or count).
    Serialization,
    /// The rows could not be read as the requested Rust type.
    Deserialization,
    /// Preparing the statement failed on every node.
    Prepare,
    /// The cluster's nodes did not agree on the schema in time, after a
    /// schema change the coordinator applied.
    SchemaAgreement,
    /// A rate limiter refused the request.
    RateLimited,
    /// A load shedder or concurrency limit refused the request.
    Shed,
    /// A circuit breaker is open for the target.
    CircuitOpen,
    /// The stack is shutting down and admits no new requests.
    ShutDown,
    /// A request or configuration that the client side rejects (a batch
    /// of more statements than a batch can have, a partition key too long
    /// included); never sent.
    BadRequest,
    /// The attempt or request ended before it completed: an attempt that
    /// lost a hedge race, or a request the caller dropped. It may have
    /// reached the server.
    Cancelled,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// Every kind, for exporters that pre-register series.
    pub const ALL: [ErrorKind; 33] = [
        ErrorKind::Overloaded,
        ErrorKind::Unavailable,
        ErrorKind::ReadTimeout,
        ErrorKind::WriteTimeout,
        ErrorKind::ReadFailure,
        ErrorKind::WriteFailure,
        ErrorKind::ServerError,
        ErrorKind::IsBootstrapping,
        ErrorKind::TruncateError,
        ErrorKind::FunctionFailure,
        ErrorKind::RateLimitReached,
        ErrorKind::Syntax,
        ErrorKind::Invalid,
        ErrorKind::AlreadyExists,
        ErrorKind::Unauthorized,
        ErrorKind::AuthenticationFailed,
        ErrorKind::ConfigError,
        ErrorKind::Unprepared,
        ErrorKind::Protocol,
        ErrorKind::ClientTimeout,
        ErrorKind::DeadlineExceeded,
        ErrorKind::Connection,
        ErrorKind::Serialization,
        ErrorKind::Deserialization,
        ErrorKind::Prepare,
        ErrorKind::SchemaAgreement,
        ErrorKind::RateLimited,
        ErrorKind::Shed,
        ErrorKind::CircuitOpen,
        ErrorKind::ShutDown,
        ErrorKind::BadRequest,
        ErrorKind::Cancelled,
        ErrorKind::Other,
    ];

    /// A stable snake_case name, for labels and `error.type`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::ReadTimeout => "read_timeout",
            ErrorKind::WriteTimeout => "write_timeout",
            ErrorKind::ReadFailure => "read_failure",
            ErrorKind::WriteFailure => "write_failure",
            ErrorKind::ServerError => "server_error",
            ErrorKind::IsBootstrapping => "is_bootstrapping",
            ErrorKind::TruncateError => "truncate_error",
            ErrorKind::FunctionFailure => "function_failure",
            ErrorKind::RateLimitReached => "rate_limit_reached",
            ErrorKind::Syntax => "syntax",
            ErrorKind::Invalid => "invalid",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::AuthenticationFailed => "authentication_failed",
            ErrorKind::ConfigError => "config_error",
            ErrorKind::Unprepared => "unprepared",
            ErrorKind::Protocol => "protocol",
            ErrorKind::ClientTimeout => "client_timeout",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::Connection => "connection",
            ErrorKind::Serialization => "serialization",
            ErrorKind::Deserialization => "deserialization",
            ErrorKind::Prepare => "prepare",
            ErrorKind::SchemaAgreement => "schema_agreement",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Shed => "shed",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::ShutDown => "shut_down",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Other => "other",
        }
    }

    /// The position of this kind in [`ErrorKind::ALL`], for array-indexed counters.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The CQL protocol error code, for server-side errors.
    pub const fn status_code(self) -> Option<i32> {
        Some(match self {
            ErrorKind::ServerError => 0x0000,
            ErrorKind::Protocol => 0x000A,
            ErrorKind::AuthenticationFailed => 0x0100,
            ErrorKind::Unavailable => 0x1000,
            ErrorKind::Overloaded => 0x1001,
            ErrorKind::IsBootstrapping => 0x1002,
            ErrorKind::TruncateError => 0x1003,
            ErrorKind::WriteTimeout => 0x1100,
            ErrorKind::ReadTimeout => 0x1200,
            ErrorKind::ReadFailure => 0x1300,
            ErrorKind::FunctionFailure => 0x1400,
            ErrorKind::WriteFailure => 0x1500,
            ErrorKind::Syntax => 0x2000,
            ErrorKind::Unauthorized => 0x2100,
            ErrorKind::Invalid => 0x2200,
            ErrorKind::ConfigError => 0x2300,
            ErrorKind::AlreadyExists => 0x2400,
            ErrorKind::Unprepared => 0x2500,
            _ => return None,
        })
    }

    /// What the user should do about this kind of error.
    pub const fn hint(self) -> &'static str {
        match self {
            ErrorKind::Overloaded => {
                "the coordinator is overloaded and may have passed a write to some replicas; idempotent requests are retried on another node, otherwise reduce load"
            }
            ErrorKind::Unavailable => {
                "the request was not applied; bring replicas back up or lower the consistency level"
            }
            ErrorKind::ReadTimeout => {
                "retry the read (reads are idempotent), or raise the server's read timeout if this persists"
            }
            ErrorKind::WriteTimeout => {
                "the write may have been applied; retry only if it is idempotent"
            }
            ErrorKind::ReadFailure => {
                "a replica failed the read; check the server logs (tombstones, corrupt data)"
            }
            ErrorKind::WriteFailure => {
                "the write may have been applied on some replicas; retry only if it is idempotent"
            }
            ErrorKind::ServerError => "the server hit an internal error; check its logs",
            ErrorKind::IsBootstrapping => "the request was not applied; retry on another node",
            ErrorKind::TruncateError => "retry the TRUNCATE when every node is up",
            ErrorKind::FunctionFailure => "fix the user-defined function or its arguments",
            ErrorKind::RateLimitReached => {
                "the partition's rate limit was reached; slow down writes to this partition"
            }
            ErrorKind::Syntax => "fix the CQL statement text",
            ErrorKind::Invalid => "fix the statement or its values for the current schema",
            ErrorKind::AlreadyExists => "use IF NOT EXISTS, or drop the existing object first",
            ErrorKind::Unauthorized => "grant the role the needed permission",
            ErrorKind::AuthenticationFailed => {
                "check the username and password (or authenticator) configured for the session"
            }
            ErrorKind::ConfigError => "change the statement's options to ones the cluster allows",
            ErrorKind::Unprepared => {
                "the statement is re-prepared automatically; if this persists, check for schema changes"
            }
            ErrorKind::Protocol => {
                "the server refused the request's framing, or answered in a way the driver could \
                 not read (then the request may have run: check before running a write again): if \
                 it says the request is too big, send smaller values (the server's frame limit, \
                 e.g. native_transport_max_frame_size); otherwise upgrade the driver or the server \
                 so they share a protocol version"
            }
            ErrorKind::ClientTimeout => {
                "the attempt may have been applied; raise the per-attempt timeout or retry only if idempotent"
            }
            ErrorKind::DeadlineExceeded => {
                "raise the request's deadline, or find what made it slow (see the attempt events)"
            }
            ErrorKind::Connection => {
                "check that the cluster is reachable from this host and the contact points are right"
            }
            ErrorKind::Serialization => {
                "bind values whose Rust types match the statement's column types, one per marker"
            }
            ErrorKind::Deserialization => {
                "read the rows into a Rust type that matches the selected columns"
            }
            ErrorKind::Prepare => "fix the statement so that every node can prepare it",
            ErrorKind::SchemaAgreement => {
                "the schema change was applied, the nodes had not agreed on it yet: wait for the schema to settle before running it again, or raise the schema agreement timeout"
            }
            ErrorKind::RateLimited => {
                "the client-side rate limit refused the request; slow down or raise the limit"
            }
            ErrorKind::Shed => {
                "the client is at capacity (a concurrency or rate limit, under load shedding, had no room); retry later or raise that limit"
            }
            ErrorKind::CircuitOpen => {
                "the target is failing; the breaker lets a probe through after its cool-down"
            }
            ErrorKind::ShutDown => {
                "the service is shutting down; send the request to a running instance"
            }
            ErrorKind::BadRequest => "fix the request or the configuration as the message says",
            ErrorKind::Cancelled => {
                "nothing to do: the attempt lost a hedge race, or the caller stopped waiting; it may have reached the server"
            }
            ErrorKind::Other => "see the underlying error",
        }
    }

    /// Whether the server may have applied the request despite the error
    /// (the classifier's list, by which a request that is not idempotent
    /// is not retried: see [`classify`](crate::classify)).
    pub const fn may_have_been_applied(self) -> bool {
        crate::classify::may_have_been_applied(self)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Server-reported details of timeouts, failures and unavailability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicaDetails {
    /// Replicas that answered.
    pub received: i32,
    /// Replicas required by the consistency level.
    pub required: i32,
    /// For reads: whether the data replica answered.
    pub data_present: Option<bool>,
    /// For writes: the kind of write (`SIMPLE`, `BATCH`, `CAS`, ...).
    pub write_type: Option<&'static str>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    node: Option<SocketAddr>,
    details: Option<ReplicaDetails>,
    /// Whether the request was certainly not sent to a node (safe to retry
    /// even when not idempotent).
    not_sent: bool,
    /// Whether the request may have run whatever the kind says: the
    /// server answered and the driver could not read the answer, the
    /// server applied a `USE` the driver could not take to every
    /// connection, or a replica (not the coordinator) rate-limited a
    /// write.
    ran_anyway: bool,
    attempts: u32,
    /// Speculative (hedged) attempts started.
    speculative: u32,
    /// The error code the server sent (see [`CqlError::status_code`]).
    status_code: Option<i32>,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
    /// Whether `source` says what the message had redacted: then it is no
    /// [`source`](std::error::Error::source), only an
    /// [`unredacted_source`](CqlError::unredacted_source).
    source_hidden: bool,
}

/// A failed CQL request: a kind, a message that says what happened and what
/// to do, and where known the node and the driver's own error.
///
/// Cloning is cheap (the error is one `Arc`); `Result<_, CqlError>` is one
/// pointer wide.
#[derive(Clone)]
pub struct CqlError(Arc<Inner>);

impl CqlError {
    /// A new error of `kind` with `message` (what happened). It counts
    /// one attempt ([`attempts`](Self::attempts)), except for the kinds a
    /// layer refuses a request with before any attempt (`RateLimited`,
    /// `Shed`, `CircuitOpen`, `ShutDown`): none.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> CqlError {
        let refused = matches!(
            kind,
            ErrorKind::RateLimited | ErrorKind::Shed | ErrorKind::CircuitOpen | ErrorKind::ShutDown
        );
        CqlError(Arc::new(Inner {
            kind,
            message: message.into(),
            node: None,
            details: None,
            not_sent: refused || matches!(kind, ErrorKind::Serialization | ErrorKind::BadRequest),
            ran_anyway: false,
            attempts: u32::from(!refused),
            speculative: 0,
            status_code: kind.status_code(),
            source: None,
            source_hidden: false,
        }))
    }

    /// The error for a request refused because the stack is shutting down.
    pub fn shut_down() -> CqlError {
        CqlError::new(
            ErrorKind::ShutDown,
            "request refused: the service is shutting down (close() was called)",
        )
    }

    /// The error for a request whose deadline passed.
    pub fn deadline_exceeded(waited: Duration) -> CqlError {
        CqlError::new(
            ErrorKind::DeadlineExceeded,
            format!("the request's deadline passed after {waited:?}"),
        )
    }

    /// The error for a request whose deadline passed before it was sent
    /// (while it waited for a limit, or before an attempt began): not
    /// sent, and no attempt made ([`attempts`](Self::attempts) 0, as its
    /// attempt events say). `message` says where it waited. Every layer
    /// that refuses a request for its deadline makes its error here.
    pub fn deadline_passed_before_sending(message: impl Into<String>) -> CqlError {
        CqlError::new(ErrorKind::DeadlineExceeded, message)
            .not_sent()
            .with_attempts(0)
    }

    /// Sets the node the error came from.
    pub fn with_node(self, node: SocketAddr) -> CqlError {
        self.map(|i| i.node = Some(node))
    }

    /// This error without the literals of `statement` its message quotes
    /// (a server error names the literal it could not use: `Invalid
    /// STRING constant (...)`), each replaced by `?`, where the message
    /// has it as a word of its own, even one
    /// [`error_message`](crate::redact::error_message) left. When there
    /// was one, the driver's own error, which quotes it too, is no longer
    /// its [`source`](std::error::Error::source), so no error chain
    /// carries it either. The driver service applies it to every error of
    /// an attempt.
    pub(crate) fn without_literals_of(self, statement: &crate::Statement) -> CqlError {
        match crate::redact::without_literals(&self.0.message, statement) {
            None => self,
            Some(message) => self.map(|i| {
                i.message = message;
                i.source_hidden = true;
            }),
        }
    }

    /// Marks the request as certainly not sent (never applied).
    pub fn not_sent(self) -> CqlError {
        self.map(|i| i.not_sent = true)
    }

    /// Records how many attempts were made before giving up (the retry
    /// layer sets it; 0: the request was refused before any attempt, as
    /// its attempt events say).
    pub fn with_attempts(self, attempts: u32) -> CqlError {
        self.map(|i| i.attempts = attempts)
    }

    /// Attempts made before this error was returned, speculative ones
    /// included (as many as the request's attempt events): 1 without
    /// retries or hedging, 0 for a request refused before any attempt (a limit, the breaker,
    /// the gate, a deadline passed before sending, settings the driver
    /// refuses before sending), which has no attempt event.
    pub fn attempts(&self) -> u32 {
        self.0.attempts
    }

    /// Records how many speculative (hedged) attempts were started before
    /// giving up (the hedge layer sets it, the retry layer sums it over
    /// its attempts).
    pub fn with_speculative(self, speculative: u32) -> CqlError {
        self.map(|i| i.speculative = speculative)
    }

    /// Speculative (hedged) attempts started before this error was
    /// returned (0 without hedging), as
    /// [`ExecutionInfo::speculative`](crate::ExecutionInfo::speculative)
    /// says of a response.
    pub fn speculative(&self) -> u32 {
        self.0.speculative
    }

    /// The CQL protocol error code the server answered with (what
    /// spans record as `db.response.status_code`): `None` when no error
    /// came from a server (a client-side refusal, or an answer the driver
    /// could not read, which is `Protocol` with no code sent). An error
    /// made with [`new`](Self::new) says its kind's code.
    pub fn status_code(&self) -> Option<i32> {
        self.0.status_code
    }

    /// Attaches the underlying error (as it is: its text is not
    /// redacted, so it should not quote a value).
    pub fn with_source(self, source: impl std::error::Error + Send + Sync + 'static) -> CqlError {
        self.map(|i| {
            i.source = Some(Arc::new(source));
            i.source_hidden = false;
        })
    }

    /// The driver's error this one was made from, as the driver made it,
    /// even when it is not the [`source`](std::error::Error::source): its
    /// text is not redacted and may quote a value the server could not
    /// use (see [`message`](Self::message)). For code that handles the
    /// error itself (downcast it to [`ExecutionError`] to read the
    /// server's error and its full message); never log it.
    pub fn unredacted_source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.0.source.as_deref()
    }

    fn map(self, f: impl FnOnce(&mut Inner)) -> CqlError {
        let mut inner = match Arc::try_unwrap(self.0) {
            Ok(inner) => inner,
            Err(shared) => Inner {
                kind: shared.kind,
                message: shared.message.clone(),
                node: shared.node,
                details: shared.details,
                not_sent: shared.not_sent,
                ran_anyway: shared.ran_anyway,
                attempts: shared.attempts,
                speculative: shared.speculative,
                status_code: shared.status_code,
                source: shared.source.clone(),
                source_hidden: shared.source_hidden,
            },
        };
        f(&mut inner);
        CqlError(Arc::new(inner))
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// What happened (without the hint). A message from the server or
    /// the driver has what looks like a value replaced by `?` (a server
    /// quotes the value it could not use, a bound value as well as a
    /// literal: `Unable to make long from ?`; the rule is
    /// [`error_message`](crate::redact::error_message)'s), as do
    /// `Display`, `Debug` and the [`source`](std::error::Error::source)
    /// chain: they are what logs, spans and `anyhow` record of an error,
    /// this stack's own (its hedge layer logs `Display`) and the caller's.
    /// The message as the server wrote it is in the driver's error,
    /// [`unredacted_source`](Self::unredacted_source).
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The node that answered with the error, where known.
    pub fn node(&self) -> Option<SocketAddr> {
        self.0.node
    }

    /// Replica counts and write type reported by the server.
    pub fn details(&self) -> Option<ReplicaDetails> {
        self.0.details
    }

    /// Whether the request was certainly never sent to a node.
    pub fn was_not_sent(&self) -> bool {
        self.0.not_sent
    }

    /// Whether the server may have applied the request: by its kind
    /// ([`ErrorKind::may_have_been_applied`]), unless it was certainly not
    /// sent; and always when the server answered and the driver could not
    /// read the answer (a `Protocol` error with no server code: the
    /// request reached the server), when the server applied a `USE` the
    /// driver could not take to every connection, or when a replica (not
    /// the coordinator) rate-limited a write (ScyllaDB's per-partition
    /// limit: the other replicas may have it). Such an error's `Display`
    /// says so, whatever its kind's hint advises (a broken connection's
    /// is to check the network).
    pub fn may_have_been_applied(&self) -> bool {
        !self.0.not_sent && (self.0.ran_anyway || self.0.kind.may_have_been_applied())
    }

    /// Whether and where a retry could help, for a request that is (or is
    /// not) idempotent: [`classify`](crate::classify::classify)`(self,
    /// idempotent).retry`, where the rules (and their table) live.
    pub fn retry_advice(&self, idempotent: bool) -> RetryAdvice {
        crate::classify::classify(self, idempotent).retry
    }

    /// Shorthand: `retry_advice(idempotent) != DontRetry`.
    pub fn is_retryable(&self, idempotent: bool) -> bool {
        self.retry_advice(idempotent) != RetryAdvice::DontRetry
    }

    /// Maps a driver error. Its message, the driver's text (which
    /// repeats the server's), goes through
    /// [`error_message`](crate::redact::error_message); when that
    /// replaced anything, the driver's error, which says it as it was, is
    /// not the [`source`](std::error::Error::source) (it is the
    /// [`unredacted_source`](Self::unredacted_source)).
    pub fn from_execution(err: ExecutionError) -> CqlError {
        let (kind, message, details, sent) = classify_execution(&err);
        let (message, source_hidden) = match message {
            Message::Driver(text) => {
                let redacted = crate::redact::error_message(&text);
                let changed = redacted != text;
                (redacted, changed)
            }
            Message::Own(text) => (text, false),
        };
        let mut e = CqlError::new(kind, message);
        {
            let inner = Arc::get_mut(&mut e.0).expect("fresh error is unique");
            inner.details = details;
            inner.not_sent = inner.not_sent || sent == Sent::No;
            inner.ran_anyway = matches!(sent, Sent::AnswerUnread | Sent::Applied);
            inner.status_code = server_code(&err);
            inner.source = Some(Arc::new(err));
            inner.source_hidden = source_hidden;
        }
        e
    }

    /// Maps a driver prepare error.
    pub fn from_prepare(err: PrepareError) -> CqlError {
        CqlError::from_execution(ExecutionError::PrepareError(err))
    }
}

fn write_type_name(w: &WriteType) -> &'static str {
    match w {
        WriteType::Simple => "SIMPLE",
        WriteType::Batch => "BATCH",
        WriteType::UnloggedBatch => "UNLOGGED_BATCH",
        WriteType::Counter => "COUNTER",
        WriteType::BatchLog => "BATCH_LOG",
        WriteType::Cas => "CAS",
        WriteType::View => "VIEW",
        WriteType::Cdc => "CDC",
        _ => "OTHER",
    }
}

/// Maps a server error code and its fields.
fn classify_db(db: &DbError) -> (ErrorKind, Option<ReplicaDetails>) {
    use ErrorKind as K;
    match db {
        DbError::SyntaxError => (K::Syntax, None),
        DbError::Invalid => (K::Invalid, None),
        DbError::AlreadyExists { .. } => (K::AlreadyExists, None),
        DbError::FunctionFailure { .. } => (K::FunctionFailure, None),
        DbError::AuthenticationError => (K::AuthenticationFailed, None),
        DbError::Unauthorized => (K::Unauthorized, None),
        DbError::ConfigError => (K::ConfigError, None),
        DbError::Unavailable {
            required, alive, ..
        } => (
            K::Unavailable,
            Some(ReplicaDetails {
                received: *alive,
                required: *required,
                ..ReplicaDetails::default()
            }),
        ),
        DbError::Overloaded => (K::Overloaded, None),
        DbError::IsBootstrapping => (K::IsBootstrapping, None),
        DbError::TruncateError => (K::TruncateError, None),
        DbError::ReadTimeout {
            received,
            required,
            data_present,
            ..
        } => (
            K::ReadTimeout,
            Some(ReplicaDetails {
                received: *received,
                required: *required,
                data_present: Some(*data_present),
                write_type: None,
            }),
        ),
        DbError::WriteTimeout {
            received,
            required,
            write_type,
            ..
        } => (
            K::WriteTimeout,
            Some(ReplicaDetails {
                received: *received,
                required: *required,
                data_present: None,
                write_type: Some(write_type_name(write_type)),
            }),
        ),
        DbError::ReadFailure {
            received,
            required,
            data_present,
            ..
        } => (
            K::ReadFailure,
            Some(ReplicaDetails {
                received: *received,
                required: *required,
                data_present: Some(*data_present),
                write_type: None,
            }),
        ),
        DbError::WriteFailure {
            received,
            required,
            write_type,
            ..
        } => (
            K::WriteFailure,
            Some(ReplicaDetails {
                received: *received,
                required: *required,
                data_present: None,
                write_type: Some(write_type_name(write_type)),
            }),
        ),
        DbError::Unprepared { .. } => (K::Unprepared, None),
        DbError::ServerError => (K::ServerError, None),
        DbError::ProtocolError => (K::Protocol, None),
        DbError::RateLimitReached { .. } => (K::RateLimitReached, None),
        _ => (K::Other, None),
    }
}

/// The error code a server sent, when `err` is a server's error.
fn server_code(err: &ExecutionError) -> Option<i32> {
    let attempt = match err {
        ExecutionError::LastAttemptError(a) => a,
        ExecutionError::PrepareError(PrepareError::AllAttemptsFailed { first_attempt }) => {
            first_attempt
        }
        _ => return None,
    };
    match attempt {
        // (its code is the one the connection negotiated, not known here:
        // the driver's `code` panics without it)
        RequestAttemptError::DbError(DbError::RateLimitReached { .. }, _) => None,
        RequestAttemptError::DbError(db, _) => {
            Some(db.code(&scylla::frame::protocol_features::ProtocolFeatures::default()))
        }
        _ => None,
    }
}

/// Whether a failed request reached a server, as far as its error says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Certainly not sent (never applied).
    No,
    /// Perhaps: its kind says whether it may have been applied.
    Maybe,
    /// Sent and answered, the answer unreadable: it may have been applied.
    AnswerUnread,
    /// Perhaps applied, in part at least, whatever the kind says.
    Applied,
}

fn classify_attempt(e: &RequestAttemptError) -> (ErrorKind, Option<ReplicaDetails>, Sent) {
    use ErrorKind as K;
    match e {
        // A write a replica rate-limited (not the coordinator) may be on
        // the other replicas.
        RequestAttemptError::DbError(
            DbError::RateLimitReached {
                op_type: OperationType::Write,
                rejected_by_coordinator: false,
            },
            _,
        ) => (K::RateLimitReached, None, Sent::Applied),
        RequestAttemptError::DbError(db, _) => {
            let (k, d) = classify_db(db);
            (k, d, Sent::Maybe)
        }
        RequestAttemptError::SerializationError(_)
        | RequestAttemptError::CqlRequestSerialization(_) => (K::Serialization, None, Sent::No),
        RequestAttemptError::UnableToAllocStreamId => (K::Connection, None, Sent::No),
        RequestAttemptError::BrokenConnectionError(_) => (K::Connection, None, Sent::Maybe),
        RequestAttemptError::BodyExtensionsParseError(_)
        | RequestAttemptError::CqlResultParseError(_)
        | RequestAttemptError::CqlErrorParseError(_)
        | RequestAttemptError::UnexpectedResponse(_) => (K::Protocol, None, Sent::AnswerUnread),
        // The server answered `Unprepared` (nothing ran) and the driver
        // gave up on repreparing: the id changed, or a batch lacks it.
        RequestAttemptError::RepreparedIdChanged { .. }
        | RequestAttemptError::RepreparedIdMissingInBatch => (K::Prepare, None, Sent::No),
        _ => (K::Other, None, Sent::Maybe),
    }
}

/// Who wrote an error's message.
enum Message {
    /// The driver (its `Display`, the server's message in it): redacted.
    Driver(String),
    /// This crate, saying what it knows (no value in it).
    Own(String),
}

/// What to say of values bound to another number of markers than the
/// statement has, prepared or not: the counts, which the driver's
/// message has redacted as if they were values.
fn wrong_value_count(err: &ExecutionError) -> Option<String> {
    use scylla::serialize::row::{BuiltinTypeCheckError, BuiltinTypeCheckErrorKind};
    let serialization = match err {
        ExecutionError::BadQuery(BadQuery::SerializationError(e))
        | ExecutionError::LastAttemptError(RequestAttemptError::SerializationError(e)) => e,
        _ => return None,
    };
    match serialization.downcast_ref::<BuiltinTypeCheckError>()?.kind {
        BuiltinTypeCheckErrorKind::WrongColumnCount {
            rust_cols,
            cql_cols,
        } => Some(format!(
            "the statement has {cql_cols} bind marker(s) and the values bound give \
             {rust_cols}: bind one value per marker, in the markers' order (nothing was sent)"
        )),
        _ => None,
    }
}

fn classify_execution(err: &ExecutionError) -> (ErrorKind, Message, Option<ReplicaDetails>, Sent) {
    use ErrorKind as K;
    if let Some(message) = wrong_value_count(err) {
        return (K::Serialization, Message::Own(message), None, Sent::No);
    }
    let what = Message::Driver(err.to_string());
    let (kind, details, sent) = match err {
        ExecutionError::LastAttemptError(a) => classify_attempt(a),
        // Limits, not types: said here, with the numbers (the driver's
        // message has them redacted as if they were values).
        ExecutionError::BadQuery(BadQuery::TooManyQueriesInBatchStatement(n)) => {
            let message = format!(
                "the batch has {n} statements, more than the {} a batch can have: split it into \
                 smaller batches (nothing was sent)",
                u16::MAX
            );
            return (K::BadRequest, Message::Own(message), None, Sent::No);
        }
        ExecutionError::BadQuery(BadQuery::ValuesTooLongForKey(len, max)) => {
            let message = format!(
                "the partition key's values serialize to {len} bytes, more than the {max} a \
                 partition key can have: bind shorter partition key values (nothing was sent)"
            );
            return (K::BadRequest, Message::Own(message), None, Sent::No);
        }
        ExecutionError::BadQuery(_) => (K::Serialization, None, Sent::No),
        // The breaker excluded the nodes whose breaker is open, and no
        // other node could take the request.
        ExecutionError::EmptyPlan => match crate::routing::excluded_now() {
            0 => (K::Connection, None, Sent::No),
            excluded => {
                let message = format!(
                    "every node this request could use has an open circuit breaker \
                     ({excluded} node(s) excluded by the breaker, none left to try): the request \
                     was not sent; retry after the breaker's cool-down, when it lets a probe \
                     through, and look at why those nodes fail (the breaker's events name them)"
                );
                return (K::CircuitOpen, Message::Own(message), None, Sent::No);
            }
        },
        ExecutionError::PrepareError(p) => match p {
            PrepareError::AllAttemptsFailed { first_attempt } => {
                let (k, d, _) = classify_attempt(first_attempt);
                let k = match k {
                    K::Syntax | K::Invalid | K::Unauthorized | K::Serialization => k,
                    // a passing refusal of the node, not of the statement:
                    // kept, so the retry rules apply (nothing ran)
                    K::Connection
                    | K::Overloaded
                    | K::IsBootstrapping
                    | K::Unavailable
                    | K::ServerError => k,
                    _ => K::Prepare,
                };
                (k, d, Sent::No)
            }
            PrepareError::ConnectionPoolError(_) => (K::Connection, None, Sent::No),
            _ => (K::Prepare, None, Sent::No),
        },
        ExecutionError::ConnectionPoolError(_) => (K::Connection, None, Sent::No),
        ExecutionError::RequestTimeout(_) => (K::ClientTimeout, None, Sent::Maybe),
        // The server applied the `USE` (the session and the connection
        // it went to are in the new keyspace); taking it to every other
        // connection failed, on a node the error does not name: `Other`,
        // which counts against no node (the one it went to, which the
        // attempt names, did as asked).
        ExecutionError::UseKeyspaceError(u) => {
            let message = format!(
                "the server applied the USE, and the session and the connection it went to are \
                 in its keyspace; taking it to the session's other connections failed, and some \
                 may still be in the keyspace before (run the USE again): {}",
                crate::redact::error_message(&u.to_string())
            );
            return (K::Other, Message::Own(message), None, Sent::Applied);
        }
        ExecutionError::SchemaAgreementError(_) => (K::SchemaAgreement, None, Sent::Maybe),
        _ => (K::Other, None, Sent::Maybe),
    };
    (kind, what, details, sent)
}

impl fmt::Display for CqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.0;
        write!(f, "{}: {}", i.kind, i.message)?;
        if let Some(node) = i.node {
            write!(f, " (node {node})")?;
        }
        if let Some(d) = i.details {
            write!(f, " [{} of {} replicas", d.received, d.required)?;
            if let Some(w) = d.write_type {
                write!(f, ", write type {w}")?;
            }
            if let Some(p) = d.data_present {
                write!(f, ", data {}", if p { "present" } else { "absent" })?;
            }
            f.write_str("]")?;
        }
        let hint = i.kind.hint();
        write!(f, " — {hint}")?;
        // An error after which the request may have run says so, whatever
        // its kind's hint advises (a broken connection's is to check the
        // network): its caller must not run a write again blindly. Not
        // twice, where the hint or the message says it already.
        let says_so = |text: &str| text.contains("may have") || text.contains("applied");
        if self.may_have_been_applied() && !says_so(hint) && !says_so(&i.message) {
            f.write_str(
                "; it may have been applied: check before running it again, unless it is idempotent",
            )?;
        }
        Ok(())
    }
}

/// The message as [`CqlError::message`] has it (redacted), never the
/// driver's error.
impl fmt::Debug for CqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CqlError")
            .field("kind", &self.0.kind)
            .field("message", &self.0.message)
            .field("node", &self.0.node)
            .field("details", &self.0.details)
            .field("not_sent", &self.0.not_sent)
            .finish()
    }
}

impl std::error::Error for CqlError {
    /// The driver's error, unless it says what the message has redacted
    /// (then `None`: see [`CqlError::unredacted_source`]).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        if self.0.source_hidden {
            return None;
        }
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<ExecutionError> for CqlError {
    fn from(e: ExecutionError) -> CqlError {
        CqlError::from_execution(e)
    }
}

impl From<NewSessionError> for CqlError {
    /// A session that could not be created: `BadRequest` for a
    /// configuration the driver refused, `Connection` otherwise (no
    /// contact point answered, or the first metadata fetch failed).
    fn from(e: NewSessionError) -> CqlError {
        let kind = match &e {
            NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_) => {
                ErrorKind::BadRequest
            }
            _ => ErrorKind::Connection,
        };
        let message = match kind {
            ErrorKind::BadRequest => format!("the session configuration was refused: {e}"),
            _ => format!("could not connect to the cluster: {e}"),
        };
        CqlError::new(kind, message).with_source(e)
    }
}

impl From<PrepareError> for CqlError {
    fn from(e: PrepareError) -> CqlError {
        CqlError::from_prepare(e)
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;

    /// A batch of more statements than the protocol allows, or a
    /// partition key too long to hash, is no type mismatch: its error
    /// says what is wrong (the driver's message: the count, the length
    /// and their limit), with no advice to bind other Rust types; never
    /// sent.
    #[test]
    fn a_batch_too_big_or_a_key_too_long_is_a_bad_request() {
        use scylla::errors::BadQuery;
        for bad in [
            BadQuery::TooManyQueriesInBatchStatement(70_000),
            BadQuery::ValuesTooLongForKey(70_000, 65_535),
        ] {
            let e = CqlError::from_execution(ExecutionError::BadQuery(bad));
            assert_eq!(e.kind(), ErrorKind::BadRequest, "{e}");
            assert!(e.was_not_sent(), "{e}");
            assert!(!e.to_string().contains("Rust types"), "{e}");
            assert!(e.message().contains("70000"), "{e}");
        }
    }

    /// A request is shed when a limit built for load shedding is not
    /// ready: the concurrency limit (fixed or adaptive) or the rate limit.
    /// The hint says so, not only "raise the concurrency limit" (wrong
    /// advice when the rate limit was the one without room).
    #[test]
    fn the_shed_hint_names_every_limit_that_sheds() {
        let hint = ErrorKind::Shed.hint();
        assert!(
            hint.contains("concurrency") && hint.contains("rate"),
            "{hint}"
        );
    }
    use scylla::errors::{BrokenConnectionErrorKind, ConnectionPoolError};

    fn db(e: DbError) -> CqlError {
        CqlError::from_execution(ExecutionError::LastAttemptError(
            RequestAttemptError::DbError(e, "msg".into()),
        ))
    }

    /// An answer the driver could not read (an unexpected response, a
    /// result or an error it cannot parse) came from a server that had the
    /// request: it may have run it. Told "not applied", a caller could run
    /// a write again.
    #[test]
    fn an_answer_the_driver_could_not_read_may_have_been_applied() {
        use scylla::frame::response::CqlResponseKind;
        let unread = CqlError::from_execution(ExecutionError::LastAttemptError(
            RequestAttemptError::UnexpectedResponse(CqlResponseKind::Supported),
        ));
        assert_eq!(unread.kind(), ErrorKind::Protocol);
        assert!(unread.may_have_been_applied(), "{unread}");
        // the server's refusal of the request's framing ran nothing
        assert!(!db(DbError::ProtocolError).may_have_been_applied());
        // kept when the error is remade
        let s = crate::Statement::new("SELECT v FROM t WHERE k = 'x'");
        assert!(unread.without_literals_of(&s).may_have_been_applied());
    }

    /// An error after which the request may have run says so, whatever
    /// its kind's hint advises: a connection broken after the request was
    /// sent (a broken connection's hint is to check the network), a
    /// server error; not one certainly not sent (a pool with no
    /// connection), and not twice where the hint says it already.
    #[test]
    fn an_error_that_may_have_been_applied_says_so() {
        let broken = CqlError::from_execution(ExecutionError::LastAttemptError(
            RequestAttemptError::BrokenConnectionError(
                BrokenConnectionErrorKind::ChannelError.into(),
            ),
        ));
        let pool = CqlError::from_execution(ExecutionError::ConnectionPoolError(
            ConnectionPoolError::Initializing,
        ));
        let warning = "may have been applied";
        for (err, says) in [
            (broken, true),
            (db(DbError::ServerError), true),
            (pool, false),
            (db(DbError::SyntaxError), false),
        ] {
            assert_eq!(err.may_have_been_applied(), says, "{err}");
            assert_eq!(err.to_string().contains(warning), says, "{err}");
        }
        // said once
        let wt = CqlError::new(ErrorKind::WriteTimeout, "replicas slow").to_string();
        assert_eq!(wt.matches(warning).count(), 1, "{wt}");
    }

    /// The driver's own refusals after the server said `Unprepared`
    /// (nothing ran): the statement, reprepared, came back with another
    /// id, or a batch does not hold the reprepared one. Neither executed
    /// anything, so neither may say "may have been applied" (a caller
    /// would check for a write that never ran), and retrying cannot help:
    /// the statement must be prepared again.
    #[test]
    fn a_reprepared_statement_the_driver_refuses_was_not_applied() {
        for attempt in [
            RequestAttemptError::RepreparedIdChanged {
                statement: "INSERT INTO ks.kv (k, v) VALUES (?, ?)".into(),
                expected_id: vec![1],
                reprepared_id: vec![2],
            },
            RequestAttemptError::RepreparedIdMissingInBatch,
        ] {
            let e = CqlError::from_execution(ExecutionError::LastAttemptError(attempt));
            assert_eq!(e.kind(), ErrorKind::Prepare, "{e}");
            assert!(!e.may_have_been_applied(), "{e}");
            assert!(e.was_not_sent(), "{e}");
            assert_eq!(e.retry_advice(true), RetryAdvice::DontRetry, "{e}");
        }
    }

    /// ScyllaDB's per-partition rate limit error has a code each
    /// connection negotiates (the driver's `ProtocolFeatures`): mapping
    /// it asked the driver for its code with none negotiated, which
    /// panics. It maps, with no code.
    #[test]
    fn a_rate_limit_error_maps_without_panicking() {
        use scylla::errors::OperationType;
        let e = db(DbError::RateLimitReached {
            op_type: OperationType::Write,
            rejected_by_coordinator: true,
        });
        assert_eq!(e.kind(), ErrorKind::RateLimitReached, "{e}");
        assert_eq!(e.status_code(), None, "{e}");
    }

    /// ScyllaDB's per-partition rate limit: a write rejected on the
    /// coordinator was applied nowhere; one rejected by a replica may be
    /// on the others (the server's flag says which).
    #[test]
    fn a_write_a_replica_rate_limited_may_have_been_applied() {
        use scylla::errors::OperationType;
        let limited = |op_type, rejected_by_coordinator| {
            db(DbError::RateLimitReached {
                op_type,
                rejected_by_coordinator,
            })
        };
        let e = limited(OperationType::Write, false);
        assert_eq!(e.kind(), ErrorKind::RateLimitReached, "{e}");
        assert!(e.may_have_been_applied(), "{e}");
        assert_eq!(e.retry_advice(false), RetryAdvice::DontRetry, "{e}");
        assert!(!limited(OperationType::Write, true).may_have_been_applied());
        assert!(!limited(OperationType::Read, false).may_have_been_applied());
    }

    /// The status code a span records is the one the server answered
    /// with: none for an answer the driver could not read (it maps to
    /// `Protocol`, whose code 0x000A no server sent), and the server's
    /// own for a code the driver does not know.
    #[test]
    fn the_status_code_is_the_servers() {
        use scylla::frame::response::CqlResponseKind;
        let unread = CqlError::from_execution(ExecutionError::LastAttemptError(
            RequestAttemptError::UnexpectedResponse(CqlResponseKind::Supported),
        ));
        assert_eq!(unread.kind(), ErrorKind::Protocol);
        assert_eq!(unread.status_code(), None, "{unread}");
        assert_eq!(db(DbError::ProtocolError).status_code(), Some(0x000A));
        assert_eq!(db(DbError::Overloaded).status_code(), Some(0x1001));
        assert_eq!(db(DbError::Other(0x7777)).status_code(), Some(0x7777));
        // kept when the error is remade (its message redacted)
        let s = crate::Statement::new("SELECT v FROM t WHERE k = 'x'");
        let e = CqlError::from_execution(ExecutionError::LastAttemptError(
            RequestAttemptError::DbError(DbError::Invalid, "bad 'x'".into()),
        ))
        .without_literals_of(&s);
        assert_eq!(e.status_code(), Some(0x2200));
        // an error made with a server's kind says its code
        assert_eq!(
            CqlError::new(ErrorKind::WriteTimeout, "x").status_code(),
            Some(0x1100)
        );
        assert_eq!(CqlError::new(ErrorKind::Shed, "x").status_code(), None);
    }

    /// A server's message quoting a value it could not use (a bound
    /// value: no literal of a statement to look for) loses it in every
    /// form the error is logged in; the caller still finds it in the
    /// driver's error, asked for by name.
    #[test]
    fn a_value_the_server_quotes_is_redacted_from_the_error() {
        let err = CqlError::from_execution(ExecutionError::LastAttemptError(
            RequestAttemptError::DbError(
                DbError::Invalid,
                "Unable to make long from 'SECRET-1' (for \"k\" in ks.kv)".into(),
            ),
        ));
        assert_eq!(
            err.message(),
            "Database returned an error: The query is syntactically correct but invalid, \
             Error message: Unable to make long from ? (?)"
        );
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(std::error::Error::source(&err).is_none());
        let full = err.unredacted_source().unwrap().to_string();
        assert!(full.contains("'SECRET-1'"), "{full}");
        // kept through a change of the error
        let err = err.with_node("127.0.0.1:9042".parse().unwrap());
        assert!(std::error::Error::source(&err).is_none());
        assert!(err.unredacted_source().is_some());
        // one with nothing to redact keeps its source
        let plain = db(DbError::Overloaded);
        assert!(std::error::Error::source(&plain).is_some(), "{plain}");
    }

    #[test]
    fn every_db_error_maps() {
        use scylla::statement::Consistency::Quorum;
        let cases = [
            (DbError::SyntaxError, ErrorKind::Syntax),
            (DbError::Invalid, ErrorKind::Invalid),
            (
                DbError::AlreadyExists {
                    keyspace: "k".into(),
                    table: "t".into(),
                },
                ErrorKind::AlreadyExists,
            ),
            (
                DbError::AuthenticationError,
                ErrorKind::AuthenticationFailed,
            ),
            (DbError::Unauthorized, ErrorKind::Unauthorized),
            (DbError::ConfigError, ErrorKind::ConfigError),
            (
                DbError::Unavailable {
                    consistency: Quorum,
                    required: 2,
                    alive: 1,
                },
                ErrorKind::Unavailable,
            ),
            (DbError::Overloaded, ErrorKind::Overloaded),
            (DbError::IsBootstrapping, ErrorKind::IsBootstrapping),
            (DbError::TruncateError, ErrorKind::TruncateError),
            (
                DbError::ReadTimeout {
                    consistency: Quorum,
                    received: 1,
                    required: 2,
                    data_present: true,
                },
                ErrorKind::ReadTimeout,
            ),
            (
                DbError::WriteTimeout {
                    consistency: Quorum,
                    received: 1,
                    required: 2,
                    write_type: WriteType::Simple,
                },
                ErrorKind::WriteTimeout,
            ),
            (
                DbError::ReadFailure {
                    consistency: Quorum,
                    received: 0,
                    required: 1,
                    numfailures: 1,
                    data_present: false,
                },
                ErrorKind::ReadFailure,
            ),
            (
                DbError::WriteFailure {
                    consistency: Quorum,
                    received: 0,
                    required: 1,
                    numfailures: 1,
                    write_type: WriteType::Batch,
                },
                ErrorKind::WriteFailure,
            ),
            (
                DbError::Unprepared {
                    statement_id: bytes::Bytes::new(),
                },
                ErrorKind::Unprepared,
            ),
            (DbError::ServerError, ErrorKind::ServerError),
            (DbError::ProtocolError, ErrorKind::Protocol),
            (DbError::Other(0x9999), ErrorKind::Other),
        ];
        for (e, kind) in cases {
            let err = db(e);
            assert_eq!(err.kind(), kind);
            assert!(err.to_string().contains(kind.hint()), "{err}");
            assert!(err.unredacted_source().is_some());
            // the source, unless the message lost something to redaction
            // (the driver's details: `(consistency: Quorum, required: ?)`)
            assert_eq!(
                std::error::Error::source(&err).is_some(),
                !err.message().contains('?'),
                "{err}"
            );
        }
    }

    #[test]
    fn retry_rules() {
        // A read timeout goes back to the same node only when the data
        // replica was the one late: enough replicas answered, the data
        // was not among them (as the drivers' default policies read it);
        // else to the next node.
        let rt = |received, required, data_present| {
            db(DbError::ReadTimeout {
                consistency: scylla::statement::Consistency::Quorum,
                received,
                required,
                data_present,
            })
        };
        assert_eq!(
            rt(2, 2, false).retry_advice(false),
            RetryAdvice::RetrySameNode
        );
        assert_eq!(
            rt(2, 2, true).retry_advice(false),
            RetryAdvice::RetryNextNode
        );
        assert_eq!(
            rt(1, 2, false).retry_advice(false),
            RetryAdvice::RetryNextNode
        );
        assert_eq!(
            rt(1, 2, true).retry_advice(false),
            RetryAdvice::RetryNextNode
        );
        assert_eq!(
            db(DbError::Overloaded).retry_advice(false),
            RetryAdvice::DontRetry
        );
        assert_eq!(
            db(DbError::SyntaxError).retry_advice(true),
            RetryAdvice::DontRetry
        );
        let wt = |w| {
            db(DbError::WriteTimeout {
                consistency: scylla::statement::Consistency::One,
                received: 0,
                required: 1,
                write_type: w,
            })
        };
        assert_eq!(
            wt(WriteType::Simple).retry_advice(false),
            RetryAdvice::DontRetry
        );
        assert_eq!(
            wt(WriteType::Simple).retry_advice(true),
            RetryAdvice::RetryNextNode
        );
        assert_eq!(
            wt(WriteType::Cas).retry_advice(true),
            RetryAdvice::DontRetry
        );
        assert!(wt(WriteType::Simple).may_have_been_applied());
        assert!(
            wt(WriteType::Simple)
                .to_string()
                .contains("write type SIMPLE")
        );
        let timeout =
            CqlError::from_execution(ExecutionError::RequestTimeout(Duration::from_millis(5)));
        assert_eq!(timeout.kind(), ErrorKind::ClientTimeout);
        assert!(!timeout.is_retryable(false));
        assert!(timeout.is_retryable(true));
        let pool = CqlError::from_execution(ExecutionError::ConnectionPoolError(
            ConnectionPoolError::Initializing,
        ));
        assert_eq!(pool.kind(), ErrorKind::Connection);
        assert!(pool.was_not_sent());
        assert!(pool.is_retryable(false), "never sent: safe to retry");
        let broken = CqlError::from_execution(ExecutionError::LastAttemptError(
            RequestAttemptError::BrokenConnectionError(
                BrokenConnectionErrorKind::ChannelError.into(),
            ),
        ));
        assert_eq!(broken.kind(), ErrorKind::Connection);
        assert!(!broken.is_retryable(false), "may have been sent");
        assert!(!CqlError::new(ErrorKind::Overloaded, "x").is_retryable(false));
        assert!(CqlError::new(ErrorKind::Unavailable, "x").is_retryable(false));
        assert!(!CqlError::shut_down().is_retryable(true));
        assert_eq!(
            CqlError::from_execution(ExecutionError::EmptyPlan).kind(),
            ErrorKind::Connection
        );
    }

    /// The anchors' rule (scylla 1.9 `DefaultRetryPolicy`, the DataStax
    /// Java driver 4.x): errors after which the mutation may already be on
    /// some replicas are retried only for idempotent requests.
    #[test]
    fn may_have_been_applied_errors_retry_only_when_idempotent() {
        for kind in [
            ErrorKind::Overloaded,
            ErrorKind::ServerError,
            ErrorKind::TruncateError,
            ErrorKind::ReadFailure,
            ErrorKind::WriteFailure,
        ] {
            let err = CqlError::new(kind, "x");
            assert_eq!(err.retry_advice(false), RetryAdvice::DontRetry, "{kind}");
            assert_eq!(err.retry_advice(true), RetryAdvice::RetryNextNode, "{kind}");
            // certainly not sent: safe either way
            assert_eq!(
                err.clone().not_sent().retry_advice(false),
                RetryAdvice::RetryNextNode,
                "{kind}"
            );
        }
        for kind in [ErrorKind::Unavailable, ErrorKind::IsBootstrapping] {
            let err = CqlError::new(kind, "x");
            assert_eq!(
                err.retry_advice(false),
                RetryAdvice::RetryNextNode,
                "{kind}"
            );
        }
    }

    #[test]
    fn kinds_are_indexed_and_named_uniquely() {
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        let names: std::collections::BTreeSet<_> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        assert_eq!(
            std::mem::size_of::<Result<(), CqlError>>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn builders_keep_fields() {
        let addr: SocketAddr = "127.0.0.1:9042".parse().unwrap();
        let e = CqlError::new(ErrorKind::ServerError, "boom").with_node(addr);
        let e2 = e.clone().not_sent();
        assert_eq!(e.node(), Some(addr));
        assert!(!e.was_not_sent());
        assert!(e2.was_not_sent());
        assert_eq!(e2.node(), Some(addr));
        assert!(e.to_string().contains("node 127.0.0.1:9042"));
    }
}
