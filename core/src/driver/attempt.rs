//! One attempt through the driver: the statement run as kept or
//! prepared first, timed, its node recorded, and its event emitted, also
//! when the attempt's future is dropped before it completes.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scylla::response::PagingState;
use scylla::statement::prepared::PreparedStatement;

use super::DriverInner;
use super::prepared::{Kept, Resolved, Uncached, configure_fresh, configure_in_place};
use crate::cancel::CancelReason;
use crate::classify::NodeVerdict;
use crate::collector::Collectors;
use crate::error::{CqlError, ErrorKind};
use crate::event::{AttemptEvent, Event};
use crate::request::{CqlRequest, OperationKind, RequestMeta, StatementBody};
use crate::response::CqlResponse;

/// An attempt in flight: dropped while `armed` (the attempt's future was
/// dropped before it completed), it emits the attempt's event, with the
/// node it went to where known and an error saying why it ended
/// ([`crate::cancel::reason`]): `ClientTimeout` for the per-attempt
/// timeout, `Cancelled` for a lost hedge race or a caller that stopped
/// waiting. So every attempt that started is an event.
struct Unfinished<'a> {
    collectors: &'a Collectors,
    meta: &'a RequestMeta,
    start: Instant,
    /// The node the attempt went to, as the steering policy saw it (see
    /// [`Steered`](crate::routing::Steered)).
    node: Option<SocketAddr>,
    armed: bool,
}

impl Drop for Unfinished<'_> {
    // (the check inline, where every attempt ends; the report, for the
    // few that did not complete, out of line)
    #[inline]
    fn drop(&mut self) {
        if self.armed {
            self.report();
        }
    }
}

impl Unfinished<'_> {
    /// Tells the node and emits the event of an attempt that did not
    /// complete (see [`Unfinished`]).
    #[cold]
    #[inline(never)]
    fn report(&mut self) {
        let meta = self.meta;
        let node = self
            .node
            .or_else(|| meta.route()?.attempt_node(meta.attempt_index()));
        if let Some(n) = node {
            crate::cancel::tell_node(n);
        }
        if !self.collectors.is_active() {
            return;
        }
        let duration = crate::clock::since(self.start.into());
        let why = crate::cancel::reason();
        let message = match why {
            CancelReason::TimedOut => {
                format!("the attempt was cancelled by the per-attempt timeout after {duration:?}")
            }
            CancelReason::DeadlinePassed => format!(
                "the attempt was cancelled after {duration:?}: the request's deadline passed"
            ),
            CancelReason::LostRace => {
                "the attempt was cancelled: another attempt of the request answered first".into()
            }
            CancelReason::Dropped => {
                "the attempt was cancelled: the request was dropped before it completed".into()
            }
        };
        let error = CqlError::new(why.error_kind(), message);
        let error = match node {
            Some(n) => error.with_node(n),
            None => error,
        };
        self.collectors.emit(Event::Attempt(AttemptEvent {
            meta,
            index: meta.attempt_index(),
            reason: meta.attempt_reason(),
            duration,
            error: Some(&error),
            node,
            rows: 0,
        }));
    }
}

/// `attempt` (which began at `start`), ended at `deadline` if it has not
/// completed by then: `DeadlineExceeded`, and it may have been applied.
async fn within_deadline(
    deadline: Instant,
    start: Instant,
    attempt: impl std::future::Future<Output = Result<CqlResponse, CqlError>>,
) -> Result<CqlResponse, CqlError> {
    let at = tokio::time::Instant::from_std(deadline);
    match tokio::time::timeout_at(at, attempt).await {
        Ok(out) => out,
        Err(_) => Err(CqlError::new(
            ErrorKind::DeadlineExceeded,
            format!(
                "the request's deadline passed {:?} after the attempt began, before the driver \
                 had done with the schema change (the server's answer, then every node agreeing \
                 on the schema): it may have been applied; check before running it again, or \
                 give schema changes a longer deadline",
                deadline.saturating_duration_since(start)
            ),
        )),
    }
}

/// A `USE` (request `req`, attempt begun at `start`), run to its end in a
/// task of its own, one at a time per service, whatever becomes of the
/// attempt; the attempt waits for it until `deadline`.
///
/// The server takes the keyspace on the connection the `USE` went to as
/// it answers; the driver, once it has the answer, takes it to every
/// other connection and makes it the session's. Cut short in between (a
/// deadline, a per-attempt timeout, a caller that stopped waiting: each
/// drops the driver's future, or its own request timeout gives up on the
/// answer), that connection ran in the new keyspace, the others, and the
/// session's keyspace by which unqualified text is prepared, in the old.
/// So the task runs it with no request timeout, neither the request's
/// nor the session's own (see [`DriverInner::run_use_text`]), and two
/// `USE`s through this service never interleave their connections.
async fn run_use(
    this: Arc<DriverInner>,
    req: &CqlRequest,
    deadline: Option<Instant>,
    start: Instant,
    node: Option<&mut Option<SocketAddr>>,
) -> Result<CqlResponse, CqlError> {
    let meta = req.meta();
    let (hint, index, record) = (meta.route().cloned(), meta.attempt_index(), node.is_some());
    let req = req.clone();
    let task = tokio::spawn(async move {
        let _one_at_a_time = this.use_lock.lock().await;
        let mut seen = None;
        let run = this.run_use_text(&req);
        let out = crate::routing::Steered::new(hint, index, record.then_some(&mut seen), run).await;
        (out, seen)
    });
    let joined = match deadline {
        None => task.await,
        Some(deadline) => {
            let at = tokio::time::Instant::from_std(deadline);
            match tokio::time::timeout_at(at, task).await {
                Ok(joined) => joined,
                Err(_) => {
                    return Err(CqlError::new(
                        ErrorKind::DeadlineExceeded,
                        format!(
                            "the request's deadline passed {:?} after the USE began, before the \
                             server answered it: it goes on in the background, and once answered \
                             every connection and the session take the keyspace the server \
                             answered with (check `Session::get_keyspace` before relying on it)",
                            deadline.saturating_duration_since(start)
                        ),
                    ));
                }
            }
        }
    };
    match joined {
        Ok((out, seen)) => {
            if let (Some(node), Some(seen)) = (node, seen) {
                *node = Some(seen);
            }
            out
        }
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(CqlError::new(
            ErrorKind::Cancelled,
            "the USE was cancelled: the runtime is shutting down",
        )),
    }
}

/// What one attempt gives the statement it runs: the time left before the
/// request's deadline, read once when the attempt began.
#[derive(Clone)]
pub(crate) struct Attempt {
    pub(super) remaining: Option<Duration>,
}

impl DriverInner {
    /// One attempt. `called`: the attempt's start, read when it was
    /// called (a service's `call`, inside the stack's shared reading:
    /// see [`clock`](crate::clock)); `None` reads the clock now. The
    /// future owns its handle on the service, so a response block runs it
    /// as it is, with no future around it.
    pub(crate) async fn execute(
        owner: Arc<DriverInner>,
        req: CqlRequest,
        called: Option<tokio::time::Instant>,
    ) -> Result<CqlResponse, CqlError> {
        let this = &*owner;
        // the attempt's start: its timeout and its duration are measured
        // from it
        let started = called.unwrap_or_else(crate::clock::now);
        let start = started.into_std();
        let meta = req.meta();
        let remaining = meta.remaining_at(start);
        // Inside a stack, its collectors (carried by the request) take the
        // attempt events: one set for the whole stack, whatever this
        // service was built with.
        let collectors = req.stack_collectors().unwrap_or(&this.collectors);
        // settings the driver cannot take (it would panic on them) fail
        // the request here, before it is touched
        meta.check_settings()?;
        if remaining.is_some_and(|r| r.is_zero()) {
            return Err(CqlError::deadline_passed_before_sending(
                "the request's deadline had passed before it was sent (nothing was sent)",
            ));
        }
        // If this future is dropped before the attempt completes (a
        // per-attempt timeout, a hedge race lost, the caller gone), the
        // guard emits the attempt's event as it is dropped.
        let mut guard = Unfinished {
            collectors,
            meta,
            start,
            node: None,
            armed: true,
        };
        // The attempt has started: it is an event now, however it ends;
        // counted for a layer that asked (see `AttemptTally`).
        req.count_attempt();
        // the one page the request asks for, if it does (the one place
        // that reads it: `call` and `execute` run a request alike)
        let paging_state = meta.paging_state().cloned();
        // an attempt with a hint (after the first): the steering policy
        // reads it; and the node the attempt went to, as the policy saw
        // it, is kept in the guard
        let steered = || {
            crate::routing::Steered::new(
                meta.route().cloned(),
                meta.attempt_index(),
                this.node_attribution.then_some(&mut guard.node),
                this.run(&req, paging_state, Attempt { remaining }),
            )
        };
        // (the attempt made where it is awaited, in each arm: made first
        // and moved into the await, its 4.5 KB were copied every attempt)
        // (an `if` chain, not a `match` on the kind and deadline: a
        // match's scrutinee is kept in this future across the attempt)
        let result = if meta.kind() == OperationKind::Use {
            // A `USE` runs to its end whatever becomes of this attempt
            // (see `run_use`). (Boxed, as the next branch: rare, and this
            // future stays the size of the common case's.)
            let node = this.node_attribution.then_some(&mut guard.node);
            Box::pin(run_use(owner.clone(), &req, meta.deadline(), start, node)).await
        } else if let Some(deadline) = meta.deadline().filter(|_| meta.kind().may_change_schema()) {
            // A schema change makes the driver wait, after the server's
            // answer and outside its request timeout, for every node to
            // agree on the schema: the deadline bounds that too (for
            // every statement that may change it: see
            // `OperationKind::may_change_schema`).
            Box::pin(within_deadline(deadline, start, steered())).await
        } else {
            steered().await
        };
        guard.armed = false;
        let seen = guard.node;
        drop(guard);
        // the attempt's end, read once: its duration, which the response
        // keeps with its start (see `CqlResponse::attempt_started`)
        let ended = crate::clock::now();
        let duration = ended.into_std().saturating_duration_since(start);
        // The driver's own timer was set to the time left before the
        // deadline: when it fires because the deadline passed, say so.
        let result = match result {
            Err(e)
                if e.kind() == ErrorKind::ClientTimeout
                    && meta.remaining().is_some_and(|r| r.is_zero()) =>
            {
                Err(CqlError::deadline_exceeded(duration))
            }
            other => other,
        };
        // Errors name the node the attempt went to (as the steering policy
        // saw it).
        // No literal of the statement a server error quotes stays in it.
        let result = result.map_err(|e| {
            let e = e.without_literals_of(req.statement());
            match seen {
                Some(n) if e.node().is_none() => e.with_node(n),
                _ => e,
            }
        });
        let result = result.map(|mut r| {
            r.set_attempt(started, duration);
            r
        });
        let node = match &result {
            Ok(r) => r.info().coordinator,
            Err(e) => e.node(),
        };
        // How the attempt went for its node, for the breaker (through the
        // request's hint, which the breaker gives every request it admits).
        if let (Some(hint), Some(n)) = (meta.route(), node) {
            hint.set_attempt_node(meta.attempt_index(), n);
            hint.report(n, NodeVerdict::of(&result));
        }
        // (emit loads the collector set once and returns at once when it
        // is empty: no is_active() check first, which loaded it twice)
        collectors.emit(Event::Attempt(AttemptEvent {
            meta,
            index: meta.attempt_index(),
            reason: meta.attempt_reason(),
            duration,
            error: result.as_ref().err(),
            node,
            rows: result.as_ref().map_or(0, |r| r.info().rows),
        }));
        result
    }

    async fn run(
        &self,
        req: &CqlRequest,
        paging_state: Option<PagingState>,
        attempt: Attempt,
    ) -> Result<CqlResponse, CqlError> {
        // The common case, a cached prepared statement executed unpaged, is
        // awaited in place; the rest (preparing, paging, unprepared text,
        // batches) is boxed, so that this future, allocated on every call,
        // is no larger than the driver's own for that case. The statement
        // runs as kept, by reference, or as a copy with what this request
        // asks for that it does not have: made in place, and a reference to
        // it is what is moved on, not the 136-byte `Cow`.
        let (mut stmt, profile) = match self.prepared_kept(req) {
            Kept::Ref(p, profile) => (Cow::Borrowed(p), profile),
            Kept::Owned(p) => (Cow::Owned(p), None),
            Kept::Uncached(what) => {
                return Box::pin(self.run_uncached(req, what, paging_state, attempt)).await;
            }
        };
        configure_in_place(&mut stmt, req.meta(), attempt, profile);
        let p: &PreparedStatement = &stmt;
        let values = req.values().as_row();
        // (a failure goes by `run_outdated`, out of line: the statement
        // may have been prepared before its table changed)
        let error = match paging_state {
            None => match self.session.execute_unpaged(p, values).await {
                Ok(r) => return CqlResponse::new(r, None),
                Err(e) => e,
            },
            Some(ps) => match Box::pin(self.session.execute_single_page(p, values, ps)).await {
                Ok((r, next)) => return CqlResponse::new(r, Some(next)),
                Err(e) => e,
            },
        };
        let error = CqlError::from(error);
        // (checked before the boxed future is made: most errors are not this)
        if !self.is_outdated(req, p, &error) {
            return Err(error);
        }
        Box::pin(self.run_outdated(req, error)).await
    }

    /// [`run`](Self::run) for what the service keeps no prepared
    /// statement for: CQL text, prepared (and cached) first or built to be
    /// sent unprepared, or a batch.
    async fn run_uncached(
        &self,
        req: &CqlRequest,
        what: Uncached<'_>,
        paging_state: Option<PagingState>,
        attempt: Attempt,
    ) -> Result<CqlResponse, CqlError> {
        let (text, keyspace, unprepared) = match what {
            Uncached::Text {
                text,
                keyspace,
                unprepared,
            } => (text, keyspace, unprepared),
            // (a page of a batch was refused before the attempt began:
            // see `RequestMeta::check_settings`)
            Uncached::Batch(batch) => return self.run_batch(req, batch, attempt).await,
        };
        let stmt = self
            .resolve_uncached(text, keyspace, unprepared, req.meta(), attempt)
            .await?;
        let values = req.values().as_row();
        // (each arm makes its response: a result passed through a tuple
        // first was copied once more)
        match (stmt, paging_state) {
            (Resolved::Prepared(p), paging_state) => {
                self.execute_prepared(&p, values, paging_state).await
            }
            (Resolved::Unprepared(s), None) => {
                CqlResponse::new(self.session.query_unpaged(s, values).await?, None)
            }
            (Resolved::Unprepared(s), Some(ps)) => {
                let (r, next) = self.session.query_single_page(s, values, ps).await?;
                CqlResponse::new(r, Some(next))
            }
        }
    }

    /// Runs prepared statement `p` (configured already) with `values`,
    /// unpaged or for the one page `paging_state` names: for the
    /// statements `run` does not keep (`run_uncached`) and for one run
    /// again because it was outdated (`run_outdated`). The kept
    /// statement's path in `run` has its own, so that its future stays
    /// no larger than the driver's.
    #[inline]
    pub(super) async fn execute_prepared(
        &self,
        p: &PreparedStatement,
        values: &(dyn scylla::serialize::row::SerializeRow + Send + Sync),
        paging_state: Option<PagingState>,
    ) -> Result<CqlResponse, CqlError> {
        // (each arm makes its response: a result passed through a tuple
        // first was copied once more)
        match paging_state {
            None => CqlResponse::new(self.session.execute_unpaged(p, values).await?, None),
            Some(ps) => {
                let (r, next) = self.session.execute_single_page(p, values, ps).await?;
                CqlResponse::new(r, Some(next))
            }
        }
    }

    /// A `USE` (for [`run_use`]): its text sent as it is (it binds no
    /// value: preparing it first gains nothing) with `use_profile`, the
    /// service's profile with no request timeout, whatever the caller's
    /// prepared statement had. A batch (no `USE`) runs as any.
    async fn run_use_text(&self, req: &CqlRequest) -> Result<CqlResponse, CqlError> {
        let text: &str = match req.statement().body() {
            StatementBody::Cql { text, .. } => text,
            StatementBody::Prepared(p) => p.get_statement(),
            StatementBody::Batch(_) => {
                return self.run(req, None, Attempt { remaining: None }).await;
            }
        };
        let mut s = scylla::statement::Statement::new(text.to_owned());
        s.set_execution_profile_handle(Some(self.use_profile.clone()));
        configure_fresh(&mut s, req.meta(), Attempt { remaining: None });
        let values = req.values().as_row();
        CqlResponse::new(self.session.query_unpaged(s, values).await?, None)
    }

    async fn run_batch(
        &self,
        req: &CqlRequest,
        batch: &scylla::statement::batch::Batch,
        attempt: Attempt,
    ) -> Result<CqlResponse, CqlError> {
        let meta = req.meta();
        let mut b = scylla::statement::batch::Batch::clone(batch);
        if let Some(profile) = self.callers_profile() {
            b.set_execution_profile_handle(Some(profile.clone()));
        }
        configure_fresh(&mut b, meta, attempt);
        let values = req.values().as_batch().ok_or_else(|| {
            CqlError::new(
                ErrorKind::Serialization,
                "a batch request needs batch values (one row per statement)",
            )
            .not_sent()
        })?;
        let result = values
            .execute_batch(&self.session, &b)
            .await
            .map_err(CqlError::from_execution)?;
        CqlResponse::new(result, None)
    }
}
