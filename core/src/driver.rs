//! The driver service: a `tower::Service<CqlRequest>` over a shared scylla
//! `Session`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tower::{Service, ServiceExt};
//! use tower_cql_core::{CqlRequest, DriverService};
//!
//! # async fn demo(session: scylla::client::session::Session) -> Result<(), Box<dyn std::error::Error>> {
//! let mut driver = DriverService::builder(Arc::new(session)).build()?;
//! let resp = driver
//!     .ready()
//!     .await?
//!     .call(CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").bind((1i32,)))
//!     .await?;
//! let rows: Vec<(String,)> = resp.rows()?;
//! # Ok(()) }
//! ```
//!
//! - CQL text is prepared once and the prepared statement cached (bounded;
//!   hits and misses are counted), also when many tasks start a new
//!   statement at the same moment: they wait on one preparation (single
//!   flight); statements marked unprepared go as QUERY.
//! - The driver's own retries and speculative execution are turned off
//!   (its `FallthroughRetryPolicy`, no speculative policy), so that retries
//!   happen once, in the middleware, where they are observed. Turn them back
//!   on with [`DriverServiceBuilder::keep_driver_retries`].
//! - Each call is one attempt: it emits an [`AttemptEvent`] with the node
//!   it went to (for errors too: the load-balancing policy the service
//!   installs around the session's records the node it picked, and the
//!   node the driver reports the attempt's outcome for).
//! - The response future, [`DriverFuture`], holds scylla's execution
//!   future (an `async fn`'s, which cannot be named, so it is behind a
//!   `dyn`) in a block of memory that is kept, emptied, for the thread's
//!   next request: a fresh 4.8 KB box per request cost more than all the
//!   rest this service adds (see `block.rs`).

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use scylla::client::execution_profile::ExecutionProfileHandle;
use scylla::client::session::Session;
use scylla::policies::retry::FallthroughRetryPolicy;
use scylla::response::PagingState;
use scylla::statement::prepared::PreparedStatement;

use crate::cancel::CancelReason;
use crate::classify::NodeVerdict;
use crate::collector::Collectors;
use crate::config::ConfigError;
use crate::error::{CqlError, ErrorKind};
use crate::event::{AttemptEvent, Event};
use crate::registry::Registry;
use crate::request::{CqlRequest, RequestMeta, StatementBody};
use crate::response::CqlResponse;

mod block;
pub use block::DriverFuture;

/// One preparation of a statement, shared by the tasks that wait for it.
type Preparation = tokio::sync::OnceCell<PreparedStatement>;

/// A bounded cache of prepared statements keyed by text; lookups are a
/// lock-free [`Registry`] load, inserts copy the map (misses are rare).
/// A statement new to the cache is prepared once however many tasks miss
/// it at the same moment: they wait on one preparation (`preparing`).
struct PreparedCache {
    map: Registry<Arc<str>, PreparedStatement>,
    /// Preparations in flight, by text (single flight).
    preparing: Registry<Arc<str>, Arc<Preparation>>,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl PreparedCache {
    fn get(&self, text: &str) -> Option<PreparedStatement> {
        let found = self.map.get(text);
        match &found {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        found
    }

    /// [`get`](Self::get) that counts a hit but not a miss (the caller
    /// falls back to `get` on a miss).
    fn get_hit(&self, text: &str) -> Option<PreparedStatement> {
        let found = self.map.get(text);
        if found.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// The preparation of `text` in flight, joined or started.
    fn preparation(&self, text: &Arc<str>) -> Arc<Preparation> {
        self.preparing
            .get_or_insert_with(text.clone(), || Arc::new(Preparation::new()))
    }

    /// Forgets the preparation `done` of `text` once its statement is in
    /// the cache (a later one, started meanwhile, stays).
    fn prepared(&self, text: &Arc<str>, done: &Arc<Preparation>) {
        self.preparing.remove_if(&**text, |p| Arc::ptr_eq(p, done));
    }

    fn insert(&self, text: Arc<str>, stmt: PreparedStatement) {
        // evicts an arbitrary entry when full; a real workload has few statements
        self.map.insert_evicting(text, stmt, self.capacity);
    }
}

pub(crate) struct DriverInner {
    /// Unique per service: the key of the prepared statement a
    /// [`Statement`](crate::Statement) remembers.
    id: u64,
    pub(crate) session: Arc<Session>,
    cache: PreparedCache,
    pub(crate) collectors: Collectors,
    /// The session's default execution profile with the steering policy
    /// around its load balancing (and, unless the driver's retries are
    /// kept, with them and speculative execution off).
    profile: ExecutionProfileHandle,
    /// The driver's own retries and speculative execution are kept
    /// (`keep_driver_retries`).
    driver_retries: bool,
    node_attribution: bool,
}

/// The innermost service of a stack: executes requests on a scylla session.
#[derive(Clone)]
pub struct DriverService {
    pub(crate) inner: Arc<DriverInner>,
}

impl fmt::Debug for DriverService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (hits, misses) = self.cache_stats();
        f.debug_struct("DriverService")
            .field("cached_statements", &self.inner.cache.map.len())
            .field("cache_hits", &hits)
            .field("cache_misses", &misses)
            .field("driver_retries", &self.inner.driver_retries)
            .finish()
    }
}

/// Configures a [`DriverService`].
pub struct DriverServiceBuilder {
    session: Arc<Session>,
    collectors: Collectors,
    cache_capacity: usize,
    keep_driver_retries: bool,
    node_attribution: bool,
}

impl fmt::Debug for DriverServiceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverServiceBuilder")
            .field("cache_capacity", &self.cache_capacity)
            .field("keep_driver_retries", &self.keep_driver_retries)
            .field("node_attribution", &self.node_attribution)
            .finish()
    }
}

impl DriverServiceBuilder {
    /// The collector set attempt events go to when the service is used on
    /// its own. Inside a stack, requests carry the stack's collectors (its
    /// gate hands them over) and attempt events go there instead, so a
    /// stack's events reach one set: a service that only runs in a stack
    /// needs no collectors of its own.
    pub fn collectors(mut self, collectors: Collectors) -> Self {
        self.collectors = collectors;
        self
    }

    /// How many prepared statements to keep (default 1024; must be > 0).
    pub fn cache_capacity(mut self, n: usize) -> Self {
        self.cache_capacity = n;
        self
    }

    /// Keep the session's own retry and speculative execution policies
    /// (default false: the middleware retries, once, observably). The
    /// statements this service prepares, and unprepared text, still run
    /// with its load-balancing policy around the session's (the plan is
    /// the session's own unless a route hint says otherwise), so their
    /// attempts name their node; a statement the caller prepared, or a
    /// batch, runs with its own execution profile.
    pub fn keep_driver_retries(mut self, keep: bool) -> Self {
        self.keep_driver_retries = keep;
        self
    }

    /// Record the node each attempt went to, so that errors and attempt
    /// events name it (default true). The service's load-balancing policy
    /// (the session's, seen through the one that follows route hints)
    /// records it: two thread-local accesses per poll, no allocation.
    /// With [`keep_driver_retries`](Self::keep_driver_retries), a statement
    /// the caller prepared, or a batch, runs with its own execution
    /// profile, and its errors name no node.
    pub fn node_attribution(mut self, on: bool) -> Self {
        self.node_attribution = on;
        self
    }

    /// Builds the service; an invalid configuration is an error saying what
    /// to change.
    pub fn build(self) -> Result<DriverService, ConfigError> {
        if self.cache_capacity == 0 {
            return Err(ConfigError::new(
                "driver.cache_capacity",
                "must be at least 1 (the number of prepared statements kept), got 0",
            ));
        }
        // The session's own policies, its load balancing seen through the
        // steering policy (which follows route hints and records the node
        // of each attempt); unless the driver's retries are kept, retries
        // and speculative execution off.
        let default = self.session.get_default_execution_profile_handle();
        let balancing = default.to_profile().get_load_balancing_policy().clone();
        let profile = default
            .pointee_to_builder()
            .load_balancing_policy(Arc::new(crate::routing::Steering::new(balancing)));
        let profile = if self.keep_driver_retries {
            profile
        } else {
            profile
                .retry_policy(Arc::new(FallthroughRetryPolicy::new()))
                .speculative_execution_policy(None)
        };
        let profile = profile.build().into_handle();
        Ok(DriverService {
            inner: Arc::new(DriverInner {
                id: {
                    static NEXT: AtomicU64 = AtomicU64::new(1);
                    NEXT.fetch_add(1, Ordering::Relaxed)
                },
                session: self.session,
                cache: PreparedCache {
                    map: Registry::new(),
                    preparing: Registry::new(),
                    capacity: self.cache_capacity,
                    hits: AtomicU64::new(0),
                    misses: AtomicU64::new(0),
                },
                collectors: self.collectors,
                profile,
                driver_retries: self.keep_driver_retries,
                node_attribution: self.node_attribution,
            }),
        })
    }
}

impl DriverService {
    /// A builder over a session the caller built (shared, since scylla's
    /// `Session` is not `Clone`).
    pub fn builder(session: Arc<Session>) -> DriverServiceBuilder {
        DriverServiceBuilder {
            session,
            collectors: Collectors::new(),
            cache_capacity: 1024,
            keep_driver_retries: false,
            node_attribution: true,
        }
    }

    /// The session.
    pub fn session(&self) -> &Arc<Session> {
        &self.inner.session
    }

    /// The collector set this service emits into.
    pub fn collectors(&self) -> &Collectors {
        &self.inner.collectors
    }

    /// Makes `collectors` the set this service emits into, when this
    /// handle is the service's only one (no clone of it is kept
    /// elsewhere); returns whether this service now emits into
    /// `collectors` (also when it already did).
    ///
    /// A stack built on a driver service does this with the stack's
    /// collectors: inside a stack, the driver's attempt events go to the
    /// stack's set whatever set it was built with, and a driver that
    /// emits there itself spares every request carrying the set to it
    /// (two reference-count writes on the set's handle, shared by every
    /// request, and their drops).
    ///
    /// ```
    /// # async fn demo(session: scylla::client::session::Session) -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_cql_core::{Collectors, DriverService};
    ///
    /// let stack_set = Collectors::new();
    /// let mut driver = DriverService::builder(std::sync::Arc::new(session)).build()?;
    /// assert!(driver.adopt_collectors(&stack_set));
    /// assert!(driver.collectors().same_set(&stack_set));
    /// let kept = driver.clone();
    /// // a clone exists: its set is left as it is
    /// assert!(!driver.adopt_collectors(&Collectors::new()));
    /// # drop(kept);
    /// # Ok(()) }
    /// ```
    pub fn adopt_collectors(&mut self, collectors: &Collectors) -> bool {
        if self.inner.collectors.same_set(collectors) {
            return true;
        }
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => {
                inner.collectors = collectors.clone();
                true
            }
            None => false,
        }
    }

    /// Prepared-statement cache (hits, misses).
    pub fn cache_stats(&self) -> (u64, u64) {
        (
            self.inner.cache.hits.load(Ordering::Relaxed),
            self.inner.cache.misses.load(Ordering::Relaxed),
        )
    }

    /// Executes one request (what `call` does, without `&mut self`).
    pub async fn execute(&self, req: CqlRequest) -> Result<CqlResponse, CqlError> {
        DriverInner::execute(self.inner.clone(), req, None, None).await
    }

    /// Fetches one page, starting at `paging_state`; the response carries
    /// the state for the next page.
    pub async fn execute_page(
        &self,
        req: CqlRequest,
        paging_state: PagingState,
    ) -> Result<CqlResponse, CqlError> {
        DriverInner::execute(self.inner.clone(), req, Some(paging_state), None).await
    }
}

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
        let error = match crate::cancel::reason() {
            CancelReason::TimedOut => CqlError::new(
                ErrorKind::ClientTimeout,
                format!("the attempt was cancelled by the per-attempt timeout after {duration:?}"),
            ),
            CancelReason::DeadlinePassed => CqlError::new(
                ErrorKind::DeadlineExceeded,
                format!(
                    "the attempt was cancelled after {duration:?}: the request's deadline passed"
                ),
            ),
            CancelReason::LostRace => CqlError::new(
                ErrorKind::Cancelled,
                "the attempt was cancelled: another attempt of the request answered first",
            ),
            CancelReason::Dropped => CqlError::new(
                ErrorKind::Cancelled,
                "the attempt was cancelled: the request was dropped before it completed",
            ),
        };
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

/// What one attempt gives the statement it runs: the time left before the
/// request's deadline, read once when the attempt began.
#[derive(Clone)]
pub(crate) struct Attempt {
    remaining: Option<Duration>,
}

/// A prepared statement as the driver service keeps it (see
/// [`DriverInner::prepared_kept`]).
enum Kept<'a, 's> {
    /// The statement's own, or the caller's, with the profile to run it
    /// with (`None`: its own).
    Ref(&'a PreparedStatement, Option<&'s ExecutionProfileHandle>),
    /// A copy, when the statement remembers another service's.
    Owned(PreparedStatement),
    /// Neither: run in a boxed future of its own (see
    /// [`DriverInner::run_uncached`]).
    Uncached(Uncached<'a>),
}

/// What a driver service runs without a prepared statement it keeps.
enum Uncached<'a> {
    /// CQL text not prepared yet (`unprepared: false`), or sent as it is.
    Text {
        text: &'a Arc<str>,
        unprepared: bool,
    },
    /// A batch.
    Batch(&'a scylla::statement::batch::Batch),
}

/// What to execute for CQL text the service did not keep, configured for
/// one request (see [`DriverInner::run_uncached`]).
enum Resolved {
    Prepared(PreparedStatement),
    Unprepared(scylla::statement::Statement),
}

impl DriverInner {
    /// The profile to run a statement the caller made (prepared, or a
    /// batch) with: this service's, unless the driver's retries are kept.
    fn callers_profile(&self) -> Option<&ExecutionProfileHandle> {
        (!self.driver_retries).then_some(&self.profile)
    }

    /// The prepared statement `req` runs, as this service keeps it, before
    /// the request's own settings: the statement's own (remembered in it
    /// for this service), or the one the caller prepared, with the
    /// profile to run it with (a statement the caller prepared runs with
    /// this service's profile, unless the driver's retries are kept). Found
    /// without waiting; otherwise the text to prepare first or to send
    /// unprepared, or the batch.
    #[inline(always)]
    fn prepared_kept<'a>(&self, req: &'a CqlRequest) -> Kept<'a, '_> {
        match req.statement().body() {
            StatementBody::Cql {
                text,
                unprepared: false,
            } => {
                let statement = req.statement();
                if let Some(p) = statement.prepared_by(self.id) {
                    self.cache.hits.fetch_add(1, Ordering::Relaxed);
                    return Kept::Ref(p, None);
                }
                // remembered as the statement's own requests ask for it
                // (its idempotence, consistency, page size), so that they
                // run it by reference
                let Some(cached) = self.cache.get_hit(text) else {
                    return Kept::Uncached(Uncached::Text {
                        text,
                        unprepared: false,
                    });
                };
                let own = configure_prepared(
                    Cow::Owned(cached),
                    &RequestMeta::from_statement(statement),
                    Attempt { remaining: None },
                    None,
                )
                .into_owned();
                statement.remember_prepared(self.id, &own);
                match statement.prepared_by(self.id) {
                    Some(p) => Kept::Ref(p, None),
                    // (the statement remembers another service's)
                    None => Kept::Owned(own),
                }
            }
            StatementBody::Prepared(p) => Kept::Ref(p, self.callers_profile()),
            StatementBody::Cql {
                text,
                unprepared: true,
            } => Kept::Uncached(Uncached::Text {
                text,
                unprepared: true,
            }),
            StatementBody::Batch(b) => Kept::Uncached(Uncached::Batch(b)),
        }
    }

    /// Prepares `text` and caches it, once however many tasks ask at the
    /// same moment: they all wait on the one preparation. A failed
    /// preparation is not remembered (the next task tries again).
    async fn prepare_once(&self, text: &Arc<str>) -> Result<PreparedStatement, CqlError> {
        let preparation = self.cache.preparation(text);
        let out = preparation
            .get_or_try_init(|| async {
                // finished by another task since this one missed
                if let Some(p) = self.cache.map.get(&**text) {
                    return Ok(p);
                }
                let mut p = self
                    .session
                    .prepare(&**text)
                    .await
                    .map_err(CqlError::from_prepare)?;
                p.set_execution_profile_handle(Some(self.profile.clone()));
                self.cache.insert(text.clone(), p.clone());
                Ok::<_, CqlError>(p)
            })
            .await
            .cloned();
        if out.is_ok() {
            self.cache.prepared(text, &preparation);
        }
        out
    }

    /// CQL text [`prepared_kept`](Self::prepared_kept) could not resolve,
    /// configured for this request: prepared (and cached) first, or built
    /// to be sent unprepared.
    async fn resolve_uncached(
        &self,
        text: &Arc<str>,
        unprepared: bool,
        meta: &RequestMeta,
        attempt: Attempt,
    ) -> Result<Resolved, CqlError> {
        if unprepared {
            let mut s = scylla::statement::Statement::new(text.to_string());
            s.set_execution_profile_handle(Some(self.profile.clone()));
            configure_common(&mut s, meta, attempt);
            return Ok(Resolved::Unprepared(s));
        }
        let stmt = match self.cache.get(text) {
            Some(p) => p,
            None => self.prepare_once(text).await?,
        };
        Ok(Resolved::Prepared(
            configure_prepared(Cow::Owned(stmt), meta, attempt, None).into_owned(),
        ))
    }

    /// One attempt. `called`: the attempt's start, read when it was
    /// called (a service's `call`, inside the stack's shared reading:
    /// see [`clock`](crate::clock)); `None` reads the clock now. The
    /// future owns its handle on the service, so a response block runs it
    /// as it is, with no future around it.
    pub(crate) async fn execute(
        this: Arc<DriverInner>,
        req: CqlRequest,
        paging_state: Option<PagingState>,
        called: Option<tokio::time::Instant>,
    ) -> Result<CqlResponse, CqlError> {
        let this = &*this;
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
        if remaining.is_some_and(|r| r.is_zero()) {
            return Err(CqlError::deadline_exceeded(Duration::ZERO).not_sent());
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
        // an attempt with a hint (after the first): the steering policy
        // reads it; and the node the attempt went to, as the policy saw
        // it, is kept in the guard
        let result = crate::routing::Steered::new(
            meta.route().cloned(),
            meta.attempt_index(),
            this.node_attribution.then_some(&mut guard.node),
            this.run(&req, paging_state, Attempt { remaining }),
        )
        .await;
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
        let result = result.map_err(|e| match seen {
            Some(n) if e.node().is_none() => e.with_node(n),
            _ => e,
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
        match paging_state {
            None => CqlResponse::new(self.session.execute_unpaged(p, values).await?, None),
            Some(ps) => {
                let (r, next) = Box::pin(self.session.execute_single_page(p, values, ps)).await?;
                CqlResponse::new(r, Some(next))
            }
        }
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
        let (text, unprepared) = match what {
            Uncached::Text { text, unprepared } => (text, unprepared),
            Uncached::Batch(_) if paging_state.is_some() => {
                return Err(CqlError::new(
                    ErrorKind::BadRequest,
                    "a batch cannot be paged: execute it with call(), not stream()",
                )
                .not_sent());
            }
            Uncached::Batch(batch) => return self.run_batch(req, batch, attempt).await,
        };
        let stmt = self
            .resolve_uncached(text, unprepared, req.meta(), attempt)
            .await?;
        let values = req.values().as_row();
        // (each arm makes its response: a result passed through a tuple
        // first was copied once more)
        match (stmt, paging_state) {
            (Resolved::Prepared(p), None) => {
                CqlResponse::new(self.session.execute_unpaged(&p, values).await?, None)
            }
            (Resolved::Prepared(p), Some(ps)) => {
                let (r, next) = self.session.execute_single_page(&p, values, ps).await?;
                CqlResponse::new(r, Some(next))
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
        if let Some(c) = meta.consistency() {
            b.set_consistency(c);
        }
        if meta.serial_consistency().is_some() {
            b.set_serial_consistency(meta.serial_consistency());
        }
        if let Some(rem) = attempt.remaining {
            b.set_request_timeout(Some(rem));
        }
        b.set_tracing(meta.tracing());
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

fn configure_common(s: &mut scylla::statement::Statement, meta: &RequestMeta, attempt: Attempt) {
    if let Some(c) = meta.consistency() {
        s.set_consistency(c);
    }
    if meta.serial_consistency().is_some() {
        s.set_serial_consistency(meta.serial_consistency());
    }
    if let Some(n) = meta.page_size() {
        s.set_page_size(n);
    }
    if let Some(rem) = attempt.remaining {
        s.set_request_timeout(Some(rem));
    }
    s.set_is_idempotent(meta.is_idempotent());
    s.set_tracing(meta.tracing());
}

/// `p` as `meta` and `attempt` ask for it (see [`configure_in_place`]).
fn configure_prepared<'a>(
    mut p: Cow<'a, PreparedStatement>,
    meta: &RequestMeta,
    attempt: Attempt,
    profile: Option<&ExecutionProfileHandle>,
) -> Cow<'a, PreparedStatement> {
    configure_in_place(&mut p, meta, attempt, profile);
    p
}

/// Makes `p` what `meta` and `attempt` ask for: copied only when it
/// differs from them in something (a statement run as it was prepared,
/// with no per-request consistency, page size or deadline, is run by
/// reference). In place: the `Cow` is 136 bytes, and one returned by value
/// was copied whole on every request.
#[inline]
fn configure_in_place(
    p: &mut Cow<'_, PreparedStatement>,
    meta: &RequestMeta,
    attempt: Attempt,
    profile: Option<&ExecutionProfileHandle>,
) {
    if let Some(profile) = profile {
        p.to_mut()
            .set_execution_profile_handle(Some(profile.clone()));
    }
    if let Some(c) = meta.consistency()
        && p.get_consistency() != Some(c)
    {
        p.to_mut().set_consistency(c);
    }
    if meta.serial_consistency().is_some()
        && p.get_serial_consistency() != meta.serial_consistency()
    {
        p.to_mut().set_serial_consistency(meta.serial_consistency());
    }
    if let Some(n) = meta.page_size()
        && p.get_page_size() != n
    {
        p.to_mut().set_page_size(n);
    }
    if let Some(rem) = attempt.remaining
        && p.get_request_timeout() != Some(rem)
    {
        p.to_mut().set_request_timeout(Some(rem));
    }
    if p.get_is_idempotent() != meta.is_idempotent() {
        p.to_mut().set_is_idempotent(meta.is_idempotent());
    }
    if meta.tracing() && !p.get_tracing() {
        p.to_mut().set_tracing(true);
    }
}

impl tower_service::Service<CqlRequest> for DriverService {
    type Response = CqlResponse;
    type Error = CqlError;
    type Future = DriverFuture;

    /// Always ready: the session multiplexes requests over its connections.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        Poll::Ready(Ok(()))
    }

    /// Executes the request: unpaged, or the one page its meta asks for
    /// ([`RequestMeta::set_page`]).
    fn call(&mut self, req: CqlRequest) -> Self::Future {
        DriverFuture::start(self.inner.clone(), req)
    }
}
