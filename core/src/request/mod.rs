//! The request that flows through a tower-cql stack.
//!
//! ```
//! use std::time::Duration;
//! use tower_cql_core::{CqlRequest, Statement};
//! use scylla::statement::Consistency;
//!
//! // A statement analysed once, shared by every request built from it.
//! let get_user = Statement::new("SELECT name FROM app.users WHERE id = ?")
//!     .operation("get_user")
//!     .idempotent(true);
//! let req = get_user.request().bind((42i64,)).consistency(Consistency::Quorum).timeout(Duration::from_millis(200));
//! assert!(req.meta().is_idempotent());
//! assert_eq!(req.meta().operation().map(|l| l.as_str()), Some("get_user"));
//! assert_eq!(req.meta().kind().as_str(), "SELECT");
//! // Bound values never show up in Debug output.
//! assert!(format!("{req:?}").contains("values: <1 row redacted>"));
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::Batch;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};

pub use crate::analysis::StatementTraits;

mod kind;
mod label;
mod meta;
mod remembered;
mod statement;
mod tally;
mod values;

pub use kind::{AttemptReason, OperationKind};
pub use label::Label;
pub use meta::{QuerySummary, RequestMeta};
pub use statement::{Statement, StatementBody};
pub use tally::AttemptTally;
pub(crate) use tally::StackLink;
pub use values::Values;

/// A request: a statement, its bound values, and its [`RequestMeta`].
/// Cloning is cheap (reference counts), as retry and hedging need.
#[derive(Clone)]
pub struct CqlRequest {
    values: Values,
    meta: RequestMeta,
    /// The request's link to the stack it is in: the stack's collectors,
    /// set by its gate, and the tally of its attempts, set by the metrics
    /// layer (see `StackLink`). Not in `meta`, which events copy.
    stack: Option<Arc<tally::StackLink>>,
}

impl CqlRequest {
    /// A request for CQL text (prepared and cached by the driver service).
    /// Analyses the text each time: build a [`Statement`] once for hot paths.
    pub fn query(text: impl Into<Arc<str>>) -> CqlRequest {
        Statement::new(text).request()
    }

    /// A request sent as an unprepared QUERY (DDL, one-offs).
    pub fn unprepared(text: impl Into<Arc<str>>) -> CqlRequest {
        Statement::unprepared(text).request()
    }

    /// A request for a statement the caller prepared.
    pub fn prepared(statement: PreparedStatement) -> CqlRequest {
        Statement::prepared(statement).request()
    }

    /// A batch request with one row of values per statement.
    pub fn batch<V>(batch: Batch, values: V) -> CqlRequest
    where
        V: scylla::serialize::batch::BatchValues + Send + Sync + 'static,
    {
        let n = batch.statements.len();
        let mut r = Statement::batch(batch).request();
        r.values = Values::batch(values, n);
        r
    }

    /// Binds one row of values. A one-column row of a fixed-size scalar
    /// (`(i32,)`, `(i64,)`, `(Uuid,)`, ...) is kept inline, with no
    /// allocation; other rows are kept behind an `Arc` (see [`Values`]).
    pub fn bind(mut self, values: impl SerializeRow + Send + Sync + 'static) -> CqlRequest {
        self.values = Values::row(values);
        self
    }

    /// Names the operation (a bounded label).
    pub fn operation(mut self, name: impl Into<Label>) -> CqlRequest {
        self.meta.set_operation(Some(name.into()));
        self
    }

    /// Marks the request idempotent (or not).
    pub fn idempotent(mut self, idempotent: bool) -> CqlRequest {
        self.meta.p.idempotent = idempotent;
        self
    }

    /// Sets the keyspace label.
    pub fn keyspace(mut self, keyspace: impl Into<Label>) -> CqlRequest {
        self.meta.set_keyspace(Some(keyspace.into()));
        self
    }

    /// Sets the table label.
    pub fn table(mut self, table: impl Into<Label>) -> CqlRequest {
        self.meta.set_table(Some(table.into()));
        self
    }

    /// Sets the consistency level.
    pub fn consistency(mut self, c: Consistency) -> CqlRequest {
        self.meta.p.consistency = Some(c);
        self
    }

    /// Sets the serial consistency level (for LWTs).
    pub fn serial_consistency(mut self, c: SerialConsistency) -> CqlRequest {
        self.meta.p.serial_consistency = Some(c);
        self
    }

    /// Sets the page size (rows per page), at least 1: a request with a
    /// smaller one fails with `BadRequest` (not sent), naming the size.
    pub fn page_size(mut self, rows: i32) -> CqlRequest {
        self.meta.p.page_size = Some(rows);
        self
    }

    /// Sets the deadline for the whole request, all attempts included. A
    /// streamed read gives each page the time left when the stream starts
    /// (see [`RowStream`](crate::paging::RowStream)).
    pub fn deadline(mut self, at: Instant) -> CqlRequest {
        self.meta.p.deadline = Some(at);
        self
    }

    /// Sets the deadline `d` from now. A `d` so long that no instant is
    /// that far away (`Duration::MAX`) means no deadline.
    pub fn timeout(mut self, d: Duration) -> CqlRequest {
        self.meta.p.deadline = crate::clock::now().into_std().checked_add(d);
        self
    }

    /// Asks the server to trace the request (the trace id comes back in
    /// [`crate::ExecutionInfo::tracing_id`]).
    pub fn tracing(mut self, on: bool) -> CqlRequest {
        self.meta.p.tracing = on;
        self
    }

    /// The statement.
    pub fn statement(&self) -> &Statement {
        &self.meta.statement
    }

    /// The bound values.
    pub fn values(&self) -> &Values {
        &self.values
    }

    /// The metadata.
    pub fn meta(&self) -> &RequestMeta {
        &self.meta
    }

    /// The metadata, to change (middleware uses this).
    pub fn meta_mut(&mut self) -> &mut RequestMeta {
        &mut self.meta
    }

    /// The collectors of the stack this request is in, once its gate
    /// admitted it.
    pub(crate) fn stack_collectors(&self) -> Option<&crate::Collectors> {
        self.stack.as_ref()?.collectors.as_ref()
    }

    /// Links the request to its stack (the gate's link: see
    /// [`StackLink::shared`]).
    pub(crate) fn link_stack(&mut self, link: Arc<tally::StackLink>) {
        self.stack = Some(link);
    }

    /// Makes the request (and its clones) hold `guard`, a hold on the
    /// gate that admitted it, for a `USE`: the gate counts it until the
    /// last clone is dropped, the one its task keeps included (see
    /// [`StackLink::gate`](tally::StackLink)). In the request's own link
    /// when it has one (a tally), or else in a new link with the
    /// collectors it carried. (A request already holding another gate's
    /// keeps that one.)
    #[cold]
    #[inline(never)]
    pub(crate) fn hold_gate(&mut self, guard: crate::gate::GateGuard) {
        match &self.stack {
            Some(link) if link.attempts.is_some() => {
                let _ = link.gate.set(guard);
            }
            _ => {
                let link = tally::StackLink {
                    collectors: self.stack_collectors().cloned(),
                    attempts: None,
                    gate: std::sync::OnceLock::from(guard),
                };
                self.stack = Some(Arc::new(link));
            }
        }
    }

    /// Has the driver service count every attempt it starts for this
    /// request and its clones (retries, speculative attempts) in the
    /// tally returned: what the metrics layer reads for a request dropped
    /// before it ended (see [`AttemptTally`]). Replaces a tally given
    /// before; the stack's collectors the request carries stay.
    pub fn count_attempts(&mut self) -> AttemptTally {
        let gate = std::sync::OnceLock::new();
        if let Some(held) = self.stack.as_ref().and_then(|l| l.gate.get()) {
            let _ = gate.set(held.also());
        }
        let link = Arc::new(tally::StackLink {
            collectors: self.stack_collectors().cloned(),
            attempts: Some(Default::default()),
            gate,
        });
        self.stack = Some(link.clone());
        AttemptTally(link)
    }

    /// The tally the driver service counts this request's attempts in,
    /// when a layer gave it one ([`count_attempts`](Self::count_attempts)).
    pub fn attempt_tally(&self) -> Option<AttemptTally> {
        let link = self.stack.as_ref()?;
        link.attempts.is_some().then(|| AttemptTally(link.clone()))
    }

    /// One more attempt started, in the request's tally if it has one.
    #[inline(always)]
    pub(crate) fn count_attempt(&self) {
        if let Some(link) = &self.stack
            && let Some(a) = &link.attempts
        {
            a.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for CqlRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CqlRequest")
            .field("statement", &self.meta.statement.0.body)
            .field("values", &self.values)
            .field("meta", &self.meta)
            .finish()
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;

    /// A timeout too long to be a point in time (`Duration::MAX`, say)
    /// is no deadline, not a panic in the caller's code (`Instant + d`
    /// overflows); it replaces a deadline set before, as any timeout does.
    #[test]
    fn a_timeout_past_every_instant_is_no_deadline() {
        let r = CqlRequest::query("SELECT v FROM t WHERE k = ?").timeout(Duration::from_secs(1));
        assert!(r.meta().deadline().is_some());
        let r = r.timeout(Duration::MAX);
        assert_eq!(r.meta().deadline(), None);
        assert_eq!(r.meta().remaining(), None);
    }

    #[test]
    fn labels_and_redaction() {
        let l: Label = "static".into();
        let d: Label = String::from("dynamic").into();
        assert_eq!(l.as_str(), "static");
        assert_eq!(d.to_string(), "dynamic");
        let r = CqlRequest::query("SELECT v FROM t WHERE k = 'secret-literal'")
            .bind((String::from("secret-value"),));
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("secret-value"), "{dbg}");
        assert!(!dbg.contains("secret-literal"), "{dbg}");
        assert_eq!(
            r.clone()
                .operation("op")
                .meta()
                .operation()
                .unwrap()
                .as_str(),
            "op"
        );
    }
}
