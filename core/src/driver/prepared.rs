//! Which prepared statement an attempt runs: the service's bounded cache
//! of statements it prepared (single flight), the statement a request's
//! [`Statement`](crate::Statement) remembers, and the per-request settings
//! applied to it (copied only when they differ).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use scylla::client::execution_profile::ExecutionProfileHandle;
use scylla::statement::prepared::PreparedStatement;

use super::DriverInner;
use super::attempt::Attempt;
use crate::error::CqlError;
use crate::registry::Registry;
use crate::request::{CqlRequest, RequestMeta, StatementBody};

/// One preparation of a statement, shared by the tasks that wait for it.
type Preparation = tokio::sync::OnceCell<PreparedStatement>;

/// A bounded cache of prepared statements keyed by text; lookups are a
/// lock-free [`Registry`] load, inserts copy the map (misses are rare).
/// A statement new to the cache is prepared once however many tasks miss
/// it at the same moment: they wait on one preparation (`preparing`).
pub(super) struct PreparedCache {
    pub(super) map: Registry<Arc<str>, PreparedStatement>,
    /// Preparations in flight, by text (single flight).
    preparing: Registry<Arc<str>, Arc<Preparation>>,
    capacity: usize,
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
}

impl PreparedCache {
    /// An empty cache keeping at most `capacity` statements.
    pub(super) fn new(capacity: usize) -> PreparedCache {
        PreparedCache {
            map: Registry::new(),
            preparing: Registry::new(),
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

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

/// A prepared statement as the driver service keeps it (see
/// [`DriverInner::prepared_kept`]).
pub(super) enum Kept<'a, 's> {
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
pub(super) enum Uncached<'a> {
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
pub(super) enum Resolved {
    Prepared(PreparedStatement),
    Unprepared(scylla::statement::Statement),
}

impl DriverInner {
    /// The profile to run a statement the caller made (prepared, or a
    /// batch) with: this service's, unless the driver's retries are kept.
    pub(super) fn callers_profile(&self) -> Option<&ExecutionProfileHandle> {
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
    pub(super) fn prepared_kept<'a>(&self, req: &'a CqlRequest) -> Kept<'a, '_> {
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
    pub(super) async fn resolve_uncached(
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
pub(super) fn configure_in_place(
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
