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
use super::schema_type::same_type;
use crate::error::CqlError;
use crate::registry::Registry;
use crate::request::{CqlRequest, RequestMeta, StatementBody};
use crate::response::CqlResponse;

/// One preparation of a statement, shared by the tasks that wait for it.
type Preparation = tokio::sync::OnceCell<PreparedStatement>;

/// What a prepared statement is cached by: its text, and for text that
/// names no keyspace, the session's keyspace it was prepared in (the
/// server binds it to that keyspace: `USE ks2` then needs another).
#[derive(Clone, PartialEq, Eq)]
pub(super) struct TextKey {
    text: Arc<str>,
    keyspace: Option<Arc<String>>,
}

impl std::hash::Hash for TextKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state)
    }
}

impl TextKey {
    fn as_ref(&self) -> KeyRef<'_> {
        KeyRef {
            text: &self.text,
            keyspace: self.keyspace.as_deref().map(String::as_str),
        }
    }
}

/// A [`TextKey`] borrowed, to look up without cloning (hashes as its
/// owned form does).
#[derive(Hash, Clone, Copy, PartialEq, Eq)]
pub(super) struct KeyRef<'a> {
    text: &'a str,
    keyspace: Option<&'a str>,
}

impl hashbrown::Equivalent<TextKey> for KeyRef<'_> {
    fn equivalent(&self, key: &TextKey) -> bool {
        *self == key.as_ref()
    }
}

/// A bounded cache of prepared statements keyed by text (and the session's
/// keyspace, for text that names none: see [`TextKey`]); lookups are a
/// lock-free [`Registry`] load, inserts copy the map (misses are rare).
/// A statement new to the cache is prepared once however many tasks miss
/// it at the same moment: they wait on one preparation (`preparing`).
pub(super) struct PreparedCache {
    pub(super) map: Registry<TextKey, PreparedStatement>,
    /// Preparations in flight, by key (single flight); an entry leaves
    /// when its preparation ends, succeeded or failed.
    preparing: Registry<TextKey, Arc<Preparation>>,
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

    fn get(&self, key: KeyRef<'_>) -> Option<PreparedStatement> {
        let found = self.map.get(&key);
        match &found {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        found
    }

    /// [`get`](Self::get) that counts a hit but not a miss (the caller
    /// falls back to `get` on a miss).
    fn get_hit(&self, key: KeyRef<'_>) -> Option<PreparedStatement> {
        let found = self.map.get(&key);
        if found.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// The preparation of `key` in flight, joined or started.
    fn preparation(&self, key: &TextKey) -> Arc<Preparation> {
        self.preparing
            .get_or_insert_with(key.clone(), || Arc::new(Preparation::new()))
    }

    /// Forgets the preparation `done` of `key` once a task stopped
    /// waiting for it: its statement is in the cache, or it failed, or
    /// the task was dropped (its deadline passed, its caller went away).
    /// A task that asks next starts another; one started meanwhile stays.
    /// Only preparations in flight are kept, however many texts fail.
    fn ended(&self, key: &TextKey, done: &Arc<Preparation>) {
        self.preparing
            .remove_if(&key.as_ref(), |p| Arc::ptr_eq(p, done));
    }

    /// The number of preparations in flight.
    pub(super) fn preparing(&self) -> usize {
        self.preparing.len()
    }

    fn insert(&self, key: TextKey, stmt: PreparedStatement) {
        // evicts an arbitrary entry when full; a real workload has few statements
        self.map.insert_evicting(key, stmt, self.capacity);
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
    /// CQL text not prepared yet (`unprepared: false`), or sent as it
    /// is; `keyspace`: the session's, when the text names none and is to
    /// be prepared (see [`TextKey`]).
    Text {
        text: &'a Arc<str>,
        keyspace: Option<Arc<String>>,
        unprepared: bool,
    },
    /// A batch.
    Batch(&'a scylla::statement::batch::Batch),
}

/// The keyspace `req`'s CQL text runs in, if it names none: the
/// session's keyspace it was labelled with as it entered
/// ([`RequestMeta::entry_keyspace`]), or else the session's of the moment
/// (`session`, from [`DriverInner::session_keyspace`]); `None` for text
/// naming its keyspace.
#[inline(always)]
fn keyspace_of<'r>(req: &'r CqlRequest, session: &'r Option<Arc<String>>) -> Option<&'r str> {
    if !req.statement().follows_session_keyspace() {
        return None;
    }
    req.meta()
        .entry_keyspace()
        .or_else(|| session.as_deref().map(String::as_str))
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
                // text naming no keyspace runs in the session's (see
                // `keyspace_of`): one prepared in another is another
                // statement
                let session = self.session_keyspace(req);
                let ks = keyspace_of(req, &session);
                if let Some(p) = statement.prepared_by(self.id, ks) {
                    self.cache.hits.fetch_add(1, Ordering::Relaxed);
                    return Kept::Ref(p, None);
                }
                // remembered as the statement's own requests ask for it
                // (its idempotence, consistency, page size), so that they
                // run it by reference
                let keyspace = || {
                    session
                        .clone()
                        .or_else(|| ks.map(|k| Arc::new(k.to_owned())))
                };
                let Some(cached) = self.cache.get_hit(KeyRef { text, keyspace: ks }) else {
                    return Kept::Uncached(Uncached::Text {
                        text,
                        keyspace: keyspace(),
                        unprepared: false,
                    });
                };
                let own = statements_own(statement, cached);
                statement.remember_prepared(self.id, keyspace().as_ref(), &own);
                match statement.prepared_by(self.id, ks) {
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
                keyspace: None,
                unprepared: true,
            }),
            StatementBody::Batch(b) => Kept::Uncached(Uncached::Batch(b)),
        }
    }

    /// The session's keyspace of the moment, when `req`'s CQL text runs
    /// in it (see [`keyspace_of`]).
    #[inline(always)]
    fn session_keyspace(&self, req: &CqlRequest) -> Option<Arc<String>> {
        let s = req.statement();
        if s.follows_session_keyspace() && req.meta().entry_keyspace().is_none() {
            self.session.get_keyspace()
        } else {
            None
        }
    }

    /// Prepares `key`'s text and caches it, once however many tasks ask
    /// at the same moment: they all wait on the one preparation. A failed
    /// preparation is not remembered (the next task tries again). For
    /// text naming no keyspace, the statement is cached only if the
    /// session's keyspace was still the key's when it was prepared (a
    /// `USE` meanwhile leaves unknown which keyspace the server bound it
    /// to: it runs once, for the request that asked, uncached).
    async fn prepare_once(&self, key: TextKey) -> Result<PreparedStatement, CqlError> {
        /// Ends the task's wait for a preparation, however it ends (see
        /// [`PreparedCache::ended`]).
        struct Waiting<'a>(&'a PreparedCache, &'a TextKey, Arc<Preparation>);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.ended(self.1, &self.2);
            }
        }
        let waiting = Waiting(&self.cache, &key, self.cache.preparation(&key));
        waiting
            .2
            .get_or_try_init(|| async {
                // finished by another task since this one missed
                if let Some(p) = self.cache.map.get(&key.as_ref()) {
                    return Ok(p);
                }
                let mut p = self
                    .session
                    .prepare(&*key.text)
                    .await
                    .map_err(CqlError::from_prepare)?;
                p.set_execution_profile_handle(Some(self.profile.clone()));
                let still = key.keyspace.is_none()
                    || self.session.get_keyspace().as_deref() == key.keyspace.as_deref();
                if still {
                    self.cache.insert(key.clone(), p.clone());
                }
                Ok::<_, CqlError>(p)
            })
            .await
            .cloned()
    }

    /// [`prepare_once`](Self::prepare_once) within the request's
    /// deadline, and the time left for the statement's execution after
    /// it: the driver's preparation has no timeout of its own (it waits
    /// for every node's answer), and the time `attempt` had left when it
    /// began is not left once it has prepared. A deadline that passes
    /// while it prepares, or as it has prepared, ends the attempt with
    /// `DeadlineExceeded`, the statement not executed.
    async fn prepare_in_time(
        &self,
        key: TextKey,
        meta: &RequestMeta,
        attempt: Attempt,
    ) -> Result<(PreparedStatement, Attempt), CqlError> {
        let (Some(deadline), Some(had)) = (meta.deadline(), attempt.remaining) else {
            return Ok((self.prepare_once(key).await?, attempt));
        };
        let at = tokio::time::Instant::from_std(deadline);
        let prepared = tokio::time::timeout_at(at, self.prepare_once(key))
            .await
            .map_err(|_| deadline_passed_preparing(had))??;
        match meta.remaining() {
            Some(left) if left.is_zero() => Err(deadline_passed_preparing(had)),
            remaining => Ok((prepared, Attempt { remaining })),
        }
    }

    /// CQL text [`prepared_kept`](Self::prepared_kept) could not resolve,
    /// configured for this request: prepared (and cached) first, or built
    /// to be sent unprepared.
    pub(super) async fn resolve_uncached(
        &self,
        text: &Arc<str>,
        keyspace: Option<Arc<String>>,
        unprepared: bool,
        meta: &RequestMeta,
        attempt: Attempt,
    ) -> Result<Resolved, CqlError> {
        if unprepared {
            let mut s = scylla::statement::Statement::new(text.to_string());
            s.set_execution_profile_handle(Some(self.profile.clone()));
            if let Some(n) = meta.page_size() {
                s.set_page_size(n);
            }
            configure_fresh(&mut s, meta, attempt);
            return Ok(Resolved::Unprepared(s));
        }
        let key = KeyRef {
            text,
            keyspace: keyspace.as_deref().map(String::as_str),
        };
        let (stmt, attempt) = match self.cache.get(key) {
            Some(p) => (p, attempt),
            None => {
                let key = TextKey {
                    text: text.clone(),
                    keyspace,
                };
                self.prepare_in_time(key, meta, attempt).await?
            }
        };
        Ok(Resolved::Prepared(
            configure_prepared(Cow::Owned(stmt), meta, attempt, None).into_owned(),
        ))
    }
}

impl DriverInner {
    /// Whether `failed`, the statement `req` ran, failed with `error`
    /// because it is outdated: this service prepared it from `req`'s text,
    /// its values could not be bound (`Serialization`: nothing was sent),
    /// and its table changed since (see [`outdated`](Self::outdated)).
    /// Then [`run_outdated`](Self::run_outdated) runs the request once
    /// more.
    pub(super) fn is_outdated(
        &self,
        req: &CqlRequest,
        failed: &PreparedStatement,
        error: &CqlError,
    ) -> bool {
        error.kind() == crate::ErrorKind::Serialization
            && matches!(
                req.statement().body(),
                StatementBody::Cql {
                    unprepared: false,
                    ..
                }
            )
            && self.outdated(failed)
    }

    /// `req`, whose statement failed as [`is_outdated`](Self::is_outdated)
    /// says with `error`, run once more with the statement as its table is
    /// now: the one cached, when it is not outdated, or one prepared anew
    /// (and cached).
    ///
    /// A table dropped and made again with another type for a column
    /// left the statement prepared for the old one cached, and every
    /// request binding the new type failed on the client. A statement
    /// that remembers the old one takes the fresh one in its place (see
    /// `Statement::supersede_prepared`): its next requests run it as
    /// kept, not by this way.
    pub(super) async fn run_outdated(
        &self,
        req: &CqlRequest,
        error: CqlError,
    ) -> Result<CqlResponse, CqlError> {
        let StatementBody::Cql { text, .. } = req.statement().body() else {
            return Err(error);
        };
        let session = self.session_keyspace(req);
        let ks = keyspace_of(req, &session);
        let key = KeyRef { text, keyspace: ks };
        self.cache.map.remove_if(&key, |p| self.outdated(p));
        let meta = req.meta();
        let attempt = Attempt {
            remaining: meta.remaining(),
        };
        let (fresh, attempt) = match self.cache.get(key) {
            Some(p) => (p, attempt),
            None => {
                let key = TextKey {
                    text: text.clone(),
                    keyspace: ks.map(|k| Arc::new(k.to_owned())),
                };
                self.prepare_in_time(key, meta, attempt).await?
            }
        };
        // a statement that remembers the outdated one takes the fresh one
        // in its place: its next requests run it as kept
        let statement = req.statement();
        statement.supersede_prepared(
            self.id,
            ks,
            |old| self.outdated(old),
            || statements_own(statement, fresh.clone()),
        );
        let p = configure_prepared(Cow::Owned(fresh), meta, attempt, None).into_owned();
        self.execute_prepared(&p, req.values().as_row(), meta.paging_state().cloned())
            .await
    }

    /// Whether `p`, prepared earlier, binds a column as another type than
    /// the session's schema metadata gives it now (the driver refreshes
    /// it after each schema change): its table was made again since.
    /// Types are compared whole, inside collections, vectors, tuples
    /// and user types too (see `same_type`); a column the metadata does
    /// not know is not judged.
    fn outdated(&self, p: &PreparedStatement) -> bool {
        let state = self.session.get_cluster_state();
        p.get_variable_col_specs().iter().any(|spec| {
            let table = spec.table_spec();
            let Some(column) = state
                .get_keyspace(table.ks_name())
                .and_then(|k| k.tables.get(table.table_name()))
                .and_then(|t| t.columns.get(spec.name()))
            else {
                return false;
            };
            !same_type(spec.typ(), &column.typ)
        })
    }
}

/// `cached` as `statement`'s own requests ask for it (its idempotence,
/// consistency, page size), to be remembered in it: they then run it by
/// reference.
fn statements_own(statement: &crate::Statement, cached: PreparedStatement) -> PreparedStatement {
    configure_prepared(
        Cow::Owned(cached),
        &RequestMeta::from_statement(statement),
        Attempt { remaining: None },
        None,
    )
    .into_owned()
}

/// The error of an attempt whose deadline passed while its statement was
/// prepared (it had `had` left when it began): not executed.
#[cold]
fn deadline_passed_preparing(had: std::time::Duration) -> CqlError {
    CqlError::new(
        crate::ErrorKind::DeadlineExceeded,
        format!(
            "the request's deadline passed while its statement was being prepared \
             ({had:?} after the attempt began; the statement was not executed): raise the \
             deadline, or run the statement once ahead of time so that it is prepared"
        ),
    )
    .not_sent()
}

/// A statement the driver service builds afresh for one request (CQL
/// text sent unprepared, a copy of a batch), which takes the request's
/// settings as they are: the driver's setters, for [`configure_fresh`].
pub(super) trait Fresh {
    fn set_consistency(&mut self, c: scylla::statement::Consistency);
    fn set_serial_consistency(&mut self, c: Option<scylla::statement::SerialConsistency>);
    fn set_request_timeout(&mut self, t: Option<std::time::Duration>);
    fn set_is_idempotent(&mut self, idempotent: bool);
    fn set_tracing(&mut self, on: bool);
}

macro_rules! fresh {
    ($($t:ty),*) => {$(
        impl Fresh for $t {
            fn set_consistency(&mut self, c: scylla::statement::Consistency) {
                <$t>::set_consistency(self, c)
            }
            fn set_serial_consistency(&mut self, c: Option<scylla::statement::SerialConsistency>) {
                <$t>::set_serial_consistency(self, c)
            }
            fn set_request_timeout(&mut self, t: Option<std::time::Duration>) {
                <$t>::set_request_timeout(self, t)
            }
            fn set_is_idempotent(&mut self, idempotent: bool) {
                <$t>::set_is_idempotent(self, idempotent)
            }
            fn set_tracing(&mut self, on: bool) {
                <$t>::set_tracing(self, on)
            }
        }
    )*};
}

fresh!(
    scylla::statement::Statement,
    scylla::statement::batch::Batch
);

/// Makes `s`, built for this request, what `meta` and `attempt` ask for
/// (as [`configure_in_place`] does a prepared statement): its
/// consistencies, the time left, server tracing, and idempotence, which
/// is the request's ([`RequestMeta::is_idempotent`]: the driver's own
/// retries, when kept, follow it), whatever the caller's batch said.
pub(super) fn configure_fresh(s: &mut impl Fresh, meta: &RequestMeta, attempt: Attempt) {
    if let Some(c) = meta.consistency() {
        s.set_consistency(c);
    }
    if meta.serial_consistency().is_some() {
        s.set_serial_consistency(meta.serial_consistency());
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
