//! [`Statement`]: a statement analysed once and shared by every request
//! built from it.

use std::fmt;
use std::sync::Arc;

use scylla::statement::batch::{Batch, BatchStatement as DriverBatchStatement};
use scylla::statement::prepared::PreparedStatement;

use super::remembered::Remembered;
use super::{CqlRequest, Label, OperationKind, RequestMeta, StatementTraits, Values};
use crate::analysis::analyse;

/// A statement, analysed once and shared by every request built from it.
#[derive(Clone)]
pub struct Statement(pub(super) Arc<StatementInner>);

pub(super) struct StatementInner {
    pub(super) body: StatementBody,
    pub(super) kind: OperationKind,
    pub(super) keyspace: Option<Label>,
    pub(super) table: Option<Label>,
    pub(super) traits: StatementTraits,
    pub(super) operation: Option<Label>,
    /// [`labels_hash`] of operation, keyspace and table, kept in step.
    pub(super) labels_hash: u64,
    pub(super) idempotent: bool,
    sanitized: std::sync::OnceLock<Option<Arc<str>>>,
    /// Whether the statement is CQL text naming no keyspace: it runs in
    /// the session's keyspace of the moment, and the server binds its
    /// prepared form to the keyspace it was prepared in.
    pub(super) follows_session_keyspace: bool,
    /// The statement as prepared by the first driver service that ran it
    /// (by that service's id), and the session's keyspace it was prepared
    /// in if it [follows it](Self::follows_session_keyspace): later
    /// requests in that keyspace skip the driver's cache lookup, which
    /// hashes and compares the text. Once outdated (its table made again
    /// with another type for a column), the one prepared anew takes its
    /// place (see [`supersede_prepared`](Statement::supersede_prepared)).
    prepared: std::sync::OnceLock<Remembered>,
    /// The id of the first label guard that admitted this statement's
    /// labels (0: none yet): its later requests skip the guard's lookup.
    admitted: std::sync::atomic::AtomicU64,
    /// The `db.query.summary` of the statement's own labels, made once.
    pub(super) summary: std::sync::OnceLock<Arc<str>>,
    /// What the first collector to ask kept for the statement's own
    /// labels (by that collector's id), e.g. its series for them: later
    /// events of requests carrying them skip that collector's lookup.
    collector_memo: std::sync::OnceLock<(u64, CollectorMemo)>,
    /// For a statement [labelled by the session's
    /// keyspace](Statement::labelled_by_session_keyspace): itself with
    /// the keyspace label of the last session keyspace asked for (see
    /// [`Statement::in_session_keyspace`]), so that requests in that
    /// keyspace carry a statement's own labels (and its memos).
    in_keyspace: arc_swap::ArcSwapOption<StatementInner>,
}

/// A collector's value kept in a [`Statement`] (see
/// [`Statement::collector_memo`]).
type CollectorMemo = Box<dyn std::any::Any + Send + Sync>;

/// The hash of a label set (operation, keyspace, table) by their text:
/// computed when labels are set, so that collectors keying series by
/// labels hash one number per event, not three strings. Fixed-seeded:
/// equal label texts give equal hashes across statements.
pub(super) fn labels_hash(
    operation: Option<&Label>,
    keyspace: Option<&Label>,
    table: Option<&Label>,
) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x7063_716c_6c61_6265)
        .hash_one((operation, keyspace, table))
}

/// The three shapes of statement a request can carry.
#[derive(Clone)]
pub enum StatementBody {
    /// CQL text. The driver service prepares it once, caches the prepared
    /// statement, and executes that (unless it is marked unprepared).
    Cql {
        /// The statement text.
        text: Arc<str>,
        /// Send it as an unprepared QUERY every time (DDL, one-off
        /// statements) instead of preparing it.
        unprepared: bool,
    },
    /// A statement prepared by the caller.
    Prepared(PreparedStatement),
    /// A batch of statements; values are one row per statement.
    Batch(Arc<Batch>),
}

impl fmt::Debug for StatementBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatementBody::Cql { text, unprepared } => f
                .debug_struct("Cql")
                .field("text", &crate::redact::summary(text))
                .field("unprepared", unprepared)
                .finish(),
            StatementBody::Prepared(p) => f
                .debug_struct("Prepared")
                .field("text", &crate::redact::summary(p.get_statement()))
                .finish(),
            StatementBody::Batch(b) => f
                .debug_struct("Batch")
                .field("statements", &b.statements.len())
                .finish(),
        }
    }
}

impl Statement {
    /// A CQL text statement, prepared and cached by the driver service.
    pub fn new(text: impl Into<Arc<str>>) -> Statement {
        Statement::from_body(StatementBody::Cql {
            text: text.into(),
            unprepared: false,
        })
    }

    /// A CQL text statement sent unprepared every time (DDL, one-offs).
    pub fn unprepared(text: impl Into<Arc<str>>) -> Statement {
        Statement::from_body(StatementBody::Cql {
            text: text.into(),
            unprepared: true,
        })
    }

    /// A statement the caller prepared with the driver.
    pub fn prepared(statement: PreparedStatement) -> Statement {
        Statement::from_body(StatementBody::Prepared(statement))
    }

    /// A batch. It is idempotent only if marked so and nothing in any of
    /// its statements forbids a retry ([`StatementTraits::forbids_retry`]:
    /// LWT, counter update, list append, element delete, non-deterministic
    /// call).
    pub fn batch(batch: Batch) -> Statement {
        Statement::from_body(StatementBody::Batch(Arc::new(batch)))
    }

    fn from_body(body: StatementBody) -> Statement {
        let (kind, keyspace, table, traits) = match &body {
            StatementBody::Cql { text, .. } => analyse(text),
            StatementBody::Prepared(p) => {
                let (kind, ks, tb, traits) = analyse(p.get_statement());
                let ks = p.get_keyspace_name().map(str::to_string).or(ks);
                let tb = p.get_table_name().map(str::to_string).or(tb);
                (kind, ks, tb, traits)
            }
            StatementBody::Batch(b) => {
                let mut traits = StatementTraits::default();
                let mut first: Option<(Option<String>, Option<String>)> = None;
                let mut same_table = true;
                for s in &b.statements {
                    let text = match s {
                        DriverBatchStatement::Query(q) => q.contents.as_str(),
                        DriverBatchStatement::PreparedStatement(p) => p.get_statement(),
                        _ => "",
                    };
                    let (_, ks, tb, t) = analyse(text);
                    traits.merge(t);
                    match &first {
                        None => first = Some((ks, tb)),
                        Some(f) => same_table &= *f == (ks, tb),
                    }
                }
                if matches!(b.get_type(), scylla::statement::batch::BatchType::Counter) {
                    traits.counter_update = true;
                }
                let (ks, tb) = match first {
                    Some((ks, tb)) if same_table => (ks, tb),
                    Some((ks, _)) => (ks, None),
                    None => (None, None),
                };
                (OperationKind::Batch, ks, tb, traits)
            }
        };
        let follows_session_keyspace =
            matches!(body, StatementBody::Cql { .. }) && keyspace.is_none();
        let keyspace = keyspace.map(Label::from);
        let table = table.map(Label::from);
        Statement(Arc::new(StatementInner {
            follows_session_keyspace,
            body,
            kind,
            labels_hash: labels_hash(None, keyspace.as_ref(), table.as_ref()),
            keyspace,
            table,
            traits,
            operation: None,
            idempotent: false,
            sanitized: std::sync::OnceLock::new(),
            prepared: std::sync::OnceLock::new(),
            admitted: std::sync::atomic::AtomicU64::new(0),
            summary: std::sync::OnceLock::new(),
            collector_memo: std::sync::OnceLock::new(),
            in_keyspace: arc_swap::ArcSwapOption::empty(),
        }))
    }

    fn edit(self, f: impl FnOnce(&mut StatementInner)) -> Statement {
        let mut inner = match Arc::try_unwrap(self.0) {
            Ok(i) => i,
            Err(shared) => StatementInner {
                body: shared.body.clone(),
                follows_session_keyspace: shared.follows_session_keyspace,
                kind: shared.kind,
                keyspace: shared.keyspace.clone(),
                table: shared.table.clone(),
                traits: shared.traits,
                operation: shared.operation.clone(),
                labels_hash: shared.labels_hash,
                idempotent: shared.idempotent,
                sanitized: std::sync::OnceLock::new(),
                prepared: std::sync::OnceLock::new(),
                admitted: std::sync::atomic::AtomicU64::new(0),
                summary: std::sync::OnceLock::new(),
                collector_memo: std::sync::OnceLock::new(),
                in_keyspace: arc_swap::ArcSwapOption::empty(),
            },
        };
        f(&mut inner);
        // the labels may have changed: no guard has admitted them yet,
        // and their summary is to be made again
        inner.admitted = std::sync::atomic::AtomicU64::new(0);
        inner.summary = std::sync::OnceLock::new();
        inner.collector_memo = std::sync::OnceLock::new();
        inner.in_keyspace = arc_swap::ArcSwapOption::empty();
        inner.labels_hash = labels_hash(
            inner.operation.as_ref(),
            inner.keyspace.as_ref(),
            inner.table.as_ref(),
        );
        Statement(Arc::new(inner))
    }

    /// Names the operation (a bounded label, e.g. `"get_user"`).
    pub fn operation(self, name: impl Into<Label>) -> Statement {
        let name = name.into();
        self.edit(|i| i.operation = Some(name))
    }

    /// Declares whether executing it twice has the same effect as once.
    /// Statements default to non-idempotent, as in the drivers.
    pub fn idempotent(self, idempotent: bool) -> Statement {
        self.edit(|i| i.idempotent = idempotent)
    }

    /// Overrides the keyspace label (found from the text or the prepared metadata).
    pub fn keyspace(self, keyspace: impl Into<Label>) -> Statement {
        let k = keyspace.into();
        self.edit(|i| i.keyspace = Some(k))
    }

    /// Overrides the table label.
    pub fn table(self, table: impl Into<Label>) -> Statement {
        let t = table.into();
        self.edit(|i| i.table = Some(t))
    }

    /// The statement as prepared by the driver service `driver` (its id)
    /// in the session keyspace `keyspace` (`None` for a statement that
    /// does not [follow it](Self::follows_session_keyspace)), if that
    /// service ran it first, in that keyspace.
    pub(crate) fn prepared_by(
        &self,
        driver: u64,
        keyspace: Option<&str>,
    ) -> Option<&PreparedStatement> {
        self.0.prepared.get()?.get(driver, keyspace)
    }

    /// Whether the statement's keyspace label is the session's keyspace
    /// of the moment: it has no keyspace label (its text names none and
    /// none was given with [`keyspace`](Self::keyspace)) and it is CQL
    /// text or a batch, which run in the session's keyspace (`USE`). A
    /// statement the caller prepared is bound to the keyspace it was
    /// prepared in, which its metadata names.
    pub fn labelled_by_session_keyspace(&self) -> bool {
        self.0.keyspace.is_none() && !matches!(self.0.body, StatementBody::Prepared(_))
    }

    /// This statement with the keyspace label `keyspace`, the session's
    /// keyspace it runs in, if it is [labelled by
    /// it](Self::labelled_by_session_keyspace); `None` otherwise. The
    /// statement keeps the one made for the last keyspace asked for:
    /// while the session stays in it, this is a lookup and a reference
    /// count, and the requests built from what it returns carry a
    /// statement's own labels (no per-request label copy, the guards'
    /// and collectors' memos kept). It runs the same text (see
    /// [`RequestMeta::label_session_keyspace`]).
    pub fn in_session_keyspace(&self, keyspace: &str) -> Option<Statement> {
        if !self.labelled_by_session_keyspace() {
            return None;
        }
        if let Some(kept) = &*self.0.in_keyspace.load()
            && kept
                .keyspace
                .as_ref()
                .is_some_and(|k| k.as_str() == keyspace)
        {
            return Some(Statement(kept.clone()));
        }
        let labelled = self
            .clone()
            .keyspace(Label::from(Arc::<str>::from(keyspace)));
        self.0.in_keyspace.store(Some(labelled.0.clone()));
        Some(labelled)
    }

    /// Whether the statement is CQL text that names no keyspace: it runs
    /// in the session's keyspace of the moment (`USE`), and its prepared
    /// form is the one prepared in that keyspace.
    pub(crate) fn follows_session_keyspace(&self) -> bool {
        self.0.follows_session_keyspace
    }

    /// Whether the label guard `guard` (its id) has admitted this
    /// statement's own labels: a request carrying them (see
    /// [`RequestMeta::has_statement_labels`]) can skip the guard's lookup.
    /// For label guards such as the metrics layer's cardinality guard,
    /// which remember for good the label sets they admit; `guard` is one
    /// of their ids from [`Statement::new_guard_id`].
    pub fn labels_admitted_by(&self, guard: std::num::NonZeroU64) -> bool {
        self.0.admitted.load(std::sync::atomic::Ordering::Relaxed) == guard.get()
    }

    /// Remembers that the label guard `guard` admitted this statement's
    /// own labels, unless another guard did first (only the first is
    /// remembered).
    pub fn remember_labels_admitted(&self, guard: std::num::NonZeroU64) {
        let _ = self.0.admitted.compare_exchange(
            0,
            guard.get(),
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// A new label guard id for [`labels_admitted_by`](Self::labels_admitted_by),
    /// distinct from every other in the process (and from every
    /// collector id: the two share one counter).
    pub fn new_guard_id() -> std::num::NonZeroU64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        std::num::NonZeroU64::new(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
            .expect("2^64 guard ids")
    }

    /// What the collector `collector` (its id from
    /// [`new_collector_id`](Self::new_collector_id)) keeps in this
    /// statement for the statement's own labels, made with `init` the
    /// first time it asks. `None` when another collector asked first (one
    /// collector's value is kept per statement, the first's) or `T` is not
    /// the type it kept. For a collector's series handles: an event of a
    /// request that carries the statement's own labels (see
    /// [`RequestMeta::has_statement_labels`]) then finds its series here
    /// instead of looking it up. Editing the statement (a new label)
    /// makes a new statement, with nothing kept.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use tower_cql_core::Statement;
    ///
    /// let get = Statement::new("SELECT v FROM ks.t WHERE k = ?").operation("get");
    /// let (mine, other) = (Statement::new_collector_id(), Statement::new_collector_id());
    /// let count = get.collector_memo(mine, || AtomicU64::new(0)).unwrap();
    /// count.fetch_add(1, Ordering::Relaxed);
    /// // a request of the statement reaches the same value
    /// let req = get.request();
    /// let again = req.meta().statement().collector_memo(mine, || AtomicU64::new(0));
    /// assert_eq!(again.unwrap().load(Ordering::Relaxed), 1);
    /// drop(req);
    /// assert!(get.collector_memo(other, || AtomicU64::new(0)).is_none());
    /// // a new label: a new statement, nothing kept
    /// let renamed = get.operation("get_v");
    /// assert_eq!(renamed.collector_memo(mine, || AtomicU64::new(5)).unwrap().load(Ordering::Relaxed), 5);
    /// ```
    pub fn collector_memo<T: std::any::Any + Send + Sync>(
        &self,
        collector: std::num::NonZeroU64,
        init: impl FnOnce() -> T,
    ) -> Option<&T> {
        let (owner, memo) = self
            .0
            .collector_memo
            .get_or_init(|| (collector.get(), Box::new(init())));
        if *owner == collector.get() {
            memo.downcast_ref()
        } else {
            None
        }
    }

    /// A new collector id for [`collector_memo`](Self::collector_memo),
    /// distinct from every other in the process.
    pub fn new_collector_id() -> std::num::NonZeroU64 {
        Statement::new_guard_id()
    }

    /// Remembers `p` as prepared by `driver` in the session keyspace
    /// `keyspace` (see [`prepared_by`](Self::prepared_by)), unless a
    /// service did first.
    pub(crate) fn remember_prepared(
        &self,
        driver: u64,
        keyspace: Option<&Arc<String>>,
        p: &PreparedStatement,
    ) {
        if self.0.prepared.get().is_none() {
            let _ = self
                .0
                .prepared
                .set(Remembered::new(driver, keyspace.cloned(), p.clone()));
        }
    }

    /// Puts `fresh()` in the place of the statement remembered as prepared
    /// by `driver` in the session keyspace `keyspace`, if one is and
    /// `outdated` says it is (its table was made again with another type
    /// for a column): later requests run `fresh` as they ran it, with no
    /// failed binding and detour to the driver's cache first.
    pub(crate) fn supersede_prepared(
        &self,
        driver: u64,
        keyspace: Option<&str>,
        outdated: impl FnOnce(&PreparedStatement) -> bool,
        fresh: impl FnOnce() -> PreparedStatement,
    ) {
        if let Some(r) = self.0.prepared.get() {
            r.supersede(driver, keyspace, outdated, fresh);
        }
    }

    /// A request for this statement with no values.
    pub fn request(&self) -> CqlRequest {
        CqlRequest {
            values: Values::none(),
            meta: RequestMeta::from_statement(self),
            stack: None,
        }
    }

    /// The statement's body.
    pub fn body(&self) -> &StatementBody {
        &self.0.body
    }

    /// The statement kind.
    pub fn kind(&self) -> OperationKind {
        self.0.kind
    }

    /// What the text says about retrying it.
    pub fn traits(&self) -> StatementTraits {
        self.0.traits
    }

    /// The keyspace the statement names (or was given with
    /// [`keyspace`](Self::keyspace)): unlike
    /// [`RequestMeta::keyspace`], never folded by a cardinality guard.
    pub fn keyspace_name(&self) -> Option<&Label> {
        self.0.keyspace.as_ref()
    }

    /// The table the statement names (or was given with
    /// [`table`](Self::table)): unlike [`RequestMeta::table`], never
    /// folded by a cardinality guard.
    pub fn table_name(&self) -> Option<&Label> {
        self.0.table.as_ref()
    }

    /// The statement text with every literal replaced by `?` (computed once
    /// per statement and cached). For a batch, the statements' texts joined
    /// by `; `. Safe to record in spans and logs.
    pub fn sanitized_text(&self) -> Option<&str> {
        self.sanitized_shared().map(|s| &**s)
    }

    /// [`sanitized_text`](Self::sanitized_text) as the shared string the
    /// statement keeps: a clone of it is an attribute value without a
    /// copy of the text (as [`RequestMeta::summary_shared`]).
    pub fn sanitized_shared(&self) -> Option<&Arc<str>> {
        self.0
            .sanitized
            .get_or_init(|| match &self.0.body {
                StatementBody::Cql { text, .. } => Some(Arc::from(crate::redact::sanitize(text))),
                StatementBody::Prepared(p) => {
                    Some(Arc::from(crate::redact::sanitize(p.get_statement())))
                }
                StatementBody::Batch(b) => {
                    let texts: Vec<String> = b
                        .statements
                        .iter()
                        .map(|s| match s {
                            DriverBatchStatement::Query(q) => crate::redact::sanitize(&q.contents),
                            DriverBatchStatement::PreparedStatement(p) => {
                                crate::redact::sanitize(p.get_statement())
                            }
                            _ => String::from("?"),
                        })
                        .collect();
                    Some(Arc::from(texts.join("; ")))
                }
            })
            .as_ref()
    }

    /// The statement text (for a batch, `None`). Raw text: sanitise before
    /// recording it anywhere.
    pub fn text(&self) -> Option<&str> {
        match &self.0.body {
            StatementBody::Cql { text, .. } => Some(text),
            StatementBody::Prepared(p) => Some(p.get_statement()),
            StatementBody::Batch(_) => None,
        }
    }
}

impl fmt::Debug for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Statement")
            .field("body", &self.0.body)
            .field("kind", &self.0.kind)
            .field("operation", &self.0.operation)
            .field("keyspace", &self.0.keyspace)
            .field("table", &self.0.table)
            .field("idempotent", &self.0.idempotent)
            .field("traits", &self.0.traits)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statement kept for the session's keyspace is reused while the
    /// session stays in it (one allocation per keyspace change, not per
    /// request), replaced when it changes, and only for statements whose
    /// keyspace the session decides.
    #[test]
    fn in_session_keyspace_keeps_the_last_keyspaces_statement() {
        let get = Statement::new("SELECT v FROM kv WHERE k = ?").operation("get");
        let a = get.in_session_keyspace("a").unwrap();
        assert!(Arc::ptr_eq(&a.0, &get.in_session_keyspace("a").unwrap().0));
        assert_eq!(a.keyspace_name().map(Label::as_str), Some("a"));
        assert_eq!(a.0.operation.as_ref().map(Label::as_str), Some("get"));
        assert!(!a.labelled_by_session_keyspace());
        assert!(a.follows_session_keyspace(), "still prepared per keyspace");
        let b = get.in_session_keyspace("b").unwrap();
        assert_eq!(b.keyspace_name().map(Label::as_str), Some("b"));
        assert!(Arc::ptr_eq(&b.0, &get.in_session_keyspace("b").unwrap().0));
        assert_ne!(a.0.labels_hash, b.0.labels_hash);
        // the keyspace's statement is labelled as the text naming it is
        let named = Statement::new("SELECT v FROM b.kv WHERE k = ?").operation("get");
        assert_eq!(b.0.labels_hash, named.0.labels_hash);
        for settled in [
            named,
            get.clone().keyspace("given"),
            Statement::unprepared("USE a").keyspace("x"),
        ] {
            assert!(settled.in_session_keyspace("a").is_none());
        }
        let mut batch = Batch::default();
        batch.append_statement("INSERT INTO kv (k, v) VALUES (1, 'x')");
        assert!(Statement::batch(batch).labelled_by_session_keyspace());
    }
}
