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

use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scylla::response::PagingState;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchStatement as DriverBatchStatement};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};

pub use crate::analysis::StatementTraits;
use crate::analysis::analyse;

/// A cheap-to-clone label value (`&'static str` or shared string). Labels
/// are for bounded sets of names — operation names, keyspaces, tables —
/// never for statement text or values.
///
/// A label is its text: equality, order and hash are those of
/// [`as_str`](Label::as_str) (as `Borrow<str>` requires), however the label
/// was made; two labels sharing one string compare without reading it.
#[derive(Clone)]
pub struct Label(LabelInner);

#[derive(Clone)]
enum LabelInner {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Label {
    /// A label from a static string (no allocation).
    pub const fn from_static(s: &'static str) -> Label {
        Label(LabelInner::Static(s))
    }

    /// The label's text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            LabelInner::Static(s) => s,
            LabelInner::Shared(s) => s,
        }
    }

    /// The label's text if it is a static string: with
    /// [`as_shared`](Self::as_shared), for exporters that keep the text
    /// without copying it.
    pub fn as_static(&self) -> Option<&'static str> {
        match &self.0 {
            LabelInner::Static(s) => Some(s),
            LabelInner::Shared(_) => None,
        }
    }

    /// The label's text if it is shared (made at run time): cloning the
    /// `Arc` keeps it without copying it.
    pub fn as_shared(&self) -> Option<&Arc<str>> {
        match &self.0 {
            LabelInner::Static(_) => None,
            LabelInner::Shared(s) => Some(s),
        }
    }
}

impl PartialEq for Label {
    #[inline]
    fn eq(&self, other: &Label) -> bool {
        let (a, b) = (self.as_str(), other.as_str());
        std::ptr::eq(a, b) || a == b
    }
}

impl Eq for Label {}

impl std::hash::Hash for Label {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for Label {
    fn partial_cmp(&self, other: &Label) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Label {
    fn cmp(&self, other: &Label) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Borrow<str> for Label {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&'static str> for Label {
    fn from(s: &'static str) -> Label {
        Label::from_static(s)
    }
}

impl From<String> for Label {
    fn from(s: String) -> Label {
        Label(LabelInner::Shared(Arc::from(s)))
    }
}

impl From<Arc<str>> for Label {
    fn from(s: Arc<str>) -> Label {
        Label(LabelInner::Shared(s))
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an attempt was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum AttemptReason {
    /// The first attempt.
    Initial,
    /// A retry after an error.
    Retry,
    /// A speculative (hedged) attempt racing a slow one.
    Speculative,
}

impl AttemptReason {
    /// `"initial"`, `"retry"` or `"speculative"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AttemptReason::Initial => "initial",
            AttemptReason::Retry => "retry",
            AttemptReason::Speculative => "speculative",
        }
    }
}

/// The kind of statement, from its first keywords: the OpenTelemetry
/// `db.operation.name` when no operation name is given. Schema statements
/// have kinds of their own (`CREATE TABLE`, `DROP KEYSPACE`, ...), so a
/// span says `CREATE TABLE ks.t`, not `OTHER`; the set is fixed (a
/// bounded label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum OperationKind {
    /// `SELECT`
    Select,
    /// `INSERT`
    Insert,
    /// `UPDATE`
    Update,
    /// `DELETE`
    Delete,
    /// `BATCH` (a batch request or `BEGIN BATCH`)
    Batch,
    /// `CREATE KEYSPACE`
    CreateKeyspace,
    /// `CREATE TABLE` (or `COLUMNFAMILY`)
    CreateTable,
    /// `CREATE INDEX` (or `CUSTOM INDEX`)
    CreateIndex,
    /// `CREATE TYPE`
    CreateType,
    /// `CREATE MATERIALIZED VIEW`
    CreateView,
    /// `ALTER KEYSPACE`
    AlterKeyspace,
    /// `ALTER TABLE`
    AlterTable,
    /// `ALTER TYPE`
    AlterType,
    /// `DROP KEYSPACE`
    DropKeyspace,
    /// `DROP TABLE`
    DropTable,
    /// `DROP INDEX`
    DropIndex,
    /// `DROP TYPE`
    DropType,
    /// `DROP MATERIALIZED VIEW`
    DropView,
    /// `TRUNCATE`
    Truncate,
    /// `USE`
    Use,
    /// Everything else (roles, permissions, functions, ...).
    Other,
}

impl OperationKind {
    /// The upper-case keywords (`"SELECT"`, `"CREATE TABLE"`, ...;
    /// `"OTHER"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            OperationKind::Select => "SELECT",
            OperationKind::Insert => "INSERT",
            OperationKind::Update => "UPDATE",
            OperationKind::Delete => "DELETE",
            OperationKind::Batch => "BATCH",
            OperationKind::CreateKeyspace => "CREATE KEYSPACE",
            OperationKind::CreateTable => "CREATE TABLE",
            OperationKind::CreateIndex => "CREATE INDEX",
            OperationKind::CreateType => "CREATE TYPE",
            OperationKind::CreateView => "CREATE MATERIALIZED VIEW",
            OperationKind::AlterKeyspace => "ALTER KEYSPACE",
            OperationKind::AlterTable => "ALTER TABLE",
            OperationKind::AlterType => "ALTER TYPE",
            OperationKind::DropKeyspace => "DROP KEYSPACE",
            OperationKind::DropTable => "DROP TABLE",
            OperationKind::DropIndex => "DROP INDEX",
            OperationKind::DropType => "DROP TYPE",
            OperationKind::DropView => "DROP MATERIALIZED VIEW",
            OperationKind::Truncate => "TRUNCATE",
            OperationKind::Use => "USE",
            OperationKind::Other => "OTHER",
        }
    }

    /// Whether the statement changes the schema (or the session's
    /// keyspace): `CREATE`, `ALTER`, `DROP`, `TRUNCATE`, `USE`.
    pub const fn is_schema(self) -> bool {
        !matches!(
            self,
            OperationKind::Select
                | OperationKind::Insert
                | OperationKind::Update
                | OperationKind::Delete
                | OperationKind::Batch
                | OperationKind::Other
        )
    }

    /// Whether the statement only reads.
    pub const fn is_read(self) -> bool {
        matches!(self, OperationKind::Select)
    }
}

/// A statement, analysed once and shared by every request built from it.
#[derive(Clone)]
pub struct Statement(Arc<StatementInner>);

struct StatementInner {
    body: StatementBody,
    kind: OperationKind,
    keyspace: Option<Label>,
    table: Option<Label>,
    traits: StatementTraits,
    operation: Option<Label>,
    /// [`labels_hash`] of operation, keyspace and table, kept in step.
    labels_hash: u64,
    idempotent: bool,
    sanitized: std::sync::OnceLock<Option<Arc<str>>>,
    /// The statement as prepared by the first driver service that ran it
    /// (by that service's id): later requests skip the driver's cache
    /// lookup, which hashes and compares the text.
    prepared: std::sync::OnceLock<(u64, PreparedStatement)>,
    /// The id of the first label guard that admitted this statement's
    /// labels (0: none yet): its later requests skip the guard's lookup.
    admitted: std::sync::atomic::AtomicU64,
    /// The `db.query.summary` of the statement's own labels, made once.
    summary: std::sync::OnceLock<Arc<str>>,
    /// What the first collector to ask kept for the statement's own
    /// labels (by that collector's id), e.g. its series for them: later
    /// events of requests carrying them skip that collector's lookup.
    collector_memo: std::sync::OnceLock<(u64, CollectorMemo)>,
}

/// A collector's value kept in a [`Statement`] (see
/// [`Statement::collector_memo`]).
type CollectorMemo = Box<dyn std::any::Any + Send + Sync>;

/// The hash of a label set (operation, keyspace, table) by their text:
/// computed when labels are set, so that collectors keying series by
/// labels hash one number per event, not three strings. Fixed-seeded:
/// equal label texts give equal hashes across statements.
fn labels_hash(operation: Option<&Label>, keyspace: Option<&Label>, table: Option<&Label>) -> u64 {
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

    /// A batch. It is idempotent only if marked so and no statement in it
    /// is a counter update, LWT, list append or non-deterministic call.
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
                    traits.lwt |= t.lwt;
                    traits.counter_update |= t.counter_update;
                    traits.list_append |= t.list_append;
                    traits.nondeterministic |= t.nondeterministic;
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
        let keyspace = keyspace.map(Label::from);
        let table = table.map(Label::from);
        Statement(Arc::new(StatementInner {
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
        }))
    }

    fn edit(self, f: impl FnOnce(&mut StatementInner)) -> Statement {
        let mut inner = match Arc::try_unwrap(self.0) {
            Ok(i) => i,
            Err(shared) => StatementInner {
                body: shared.body.clone(),
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
            },
        };
        f(&mut inner);
        // the labels may have changed: no guard has admitted them yet,
        // and their summary is to be made again
        inner.admitted = std::sync::atomic::AtomicU64::new(0);
        inner.summary = std::sync::OnceLock::new();
        inner.collector_memo = std::sync::OnceLock::new();
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

    /// The statement as prepared by the driver service `driver` (its id),
    /// if that service ran it first.
    pub(crate) fn prepared_by(&self, driver: u64) -> Option<&PreparedStatement> {
        match self.0.prepared.get() {
            Some((id, p)) if *id == driver => Some(p),
            _ => None,
        }
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

    /// Remembers `p` as prepared by `driver`, unless a service did first.
    pub(crate) fn remember_prepared(&self, driver: u64, p: &PreparedStatement) {
        if self.0.prepared.get().is_none() {
            let _ = self.0.prepared.set((driver, p.clone()));
        }
    }

    /// A request for this statement with no values.
    pub fn request(&self) -> CqlRequest {
        CqlRequest {
            values: Values::none(),
            meta: RequestMeta::from_statement(self),
            collectors: None,
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

/// Type-erased bound values: one row for a statement, one row per
/// statement for a batch. Cheap to clone; never printed.
///
/// A row is kept behind an `Arc` (one allocation when it is bound), except
/// a one-column row of a fixed-size scalar, the shape of most point reads
/// and writes by key: `(i32,)`, `(i64,)`, `(Uuid,)`, `(CqlTimeuuid,)`,
/// `(i16,)`, `(i8,)`, `(bool,)`, `(f32,)`, `(f64,)`. Those are kept
/// inline, and binding one allocates nothing (the types are told apart
/// when `bind` is compiled, not when it runs). Either way the row is
/// serialized by the same code, against the statement's column types.
#[derive(Clone)]
pub struct Values(ValuesInner);

#[derive(Clone)]
enum ValuesInner {
    None,
    Scalar(Scalar),
    Row(Arc<dyn SerializeRow + Send + Sync>),
    Batch(Arc<dyn ErasedBatchValues>),
}

/// The one-column rows of fixed-size scalars kept inline (see [`Values`]),
/// each named once: the enum, the check that tells a bound row apart and
/// the row handed to the driver are all made from this list.
macro_rules! scalar_rows {
    ($($variant:ident: $t:ty),* $(,)?) => {
        /// A one-column row of a fixed-size scalar, kept inline (see
        /// [`Values`]).
        #[derive(Clone, Copy)]
        enum Scalar {
            $($variant(($t,)),)*
        }

        impl Scalar {
            /// `values` as a scalar row, when it is one of those kept
            /// inline. (`Any::downcast_ref` on a type known when `bind` is
            /// compiled: each check is a comparison of two constants,
            /// folded away.)
            #[inline(always)]
            fn of<V: std::any::Any>(values: &V) -> Option<Scalar> {
                let v: &dyn std::any::Any = values;
                $(
                    if let Some(row) = v.downcast_ref::<($t,)>() {
                        return Some(Scalar::$variant(*row));
                    }
                )*
                None
            }

            /// The row, to serialize: the tuple it was bound as.
            fn row(&self) -> &(dyn SerializeRow + Send + Sync) {
                match self {
                    $(Scalar::$variant(r) => r,)*
                }
            }
        }
    };
}

scalar_rows!(
    Int: i32,
    BigInt: i64,
    Uuid: uuid::Uuid,
    Timeuuid: scylla::value::CqlTimeuuid,
    SmallInt: i16,
    TinyInt: i8,
    Boolean: bool,
    Float: f32,
    Double: f64,
);

/// Object-safe access to batch values (scylla's `BatchValues` is generic).
pub(crate) trait ErasedBatchValues: Send + Sync {
    fn execute_batch<'a>(
        &'a self,
        session: &'a scylla::client::session::Session,
        batch: &'a Batch,
    ) -> futures::future::BoxFuture<
        'a,
        Result<scylla::response::query_result::QueryResult, scylla::errors::ExecutionError>,
    >;
    fn len(&self) -> usize;
}

struct BatchValuesHolder<V>(V, usize);

impl<V> ErasedBatchValues for BatchValuesHolder<V>
where
    V: scylla::serialize::batch::BatchValues + Send + Sync,
{
    fn execute_batch<'a>(
        &'a self,
        session: &'a scylla::client::session::Session,
        batch: &'a Batch,
    ) -> futures::future::BoxFuture<
        'a,
        Result<scylla::response::query_result::QueryResult, scylla::errors::ExecutionError>,
    > {
        Box::pin(session.batch(batch, &self.0))
    }

    fn len(&self) -> usize {
        self.1
    }
}

impl Values {
    /// No values.
    pub fn none() -> Values {
        Values(ValuesInner::None)
    }

    /// One row of values (a tuple, a `Vec`, a `#[derive(SerializeRow)]` struct, ...).
    /// A one-column row of a fixed-size scalar is kept inline, without an
    /// allocation (see [`Values`]).
    pub fn row(values: impl SerializeRow + Send + Sync + 'static) -> Values {
        if values.is_empty() {
            return Values::none();
        }
        if let Some(s) = Scalar::of(&values) {
            return Values(ValuesInner::Scalar(s));
        }
        Values(ValuesInner::Row(Arc::new(values)))
    }

    /// One row per statement of a batch.
    pub fn batch<V>(values: V, statements: usize) -> Values
    where
        V: scylla::serialize::batch::BatchValues + Send + Sync + 'static,
    {
        Values(ValuesInner::Batch(Arc::new(BatchValuesHolder(
            values, statements,
        ))))
    }

    /// The row, for a statement.
    pub(crate) fn as_row(&self) -> &(dyn SerializeRow + Send + Sync) {
        match &self.0 {
            ValuesInner::Scalar(s) => s.row(),
            ValuesInner::Row(r) => &**r,
            _ => &(),
        }
    }

    pub(crate) fn as_batch(&self) -> Option<&dyn ErasedBatchValues> {
        match &self.0 {
            ValuesInner::Batch(b) => Some(&**b),
            _ => None,
        }
    }

    /// Whether no values are bound.
    pub fn is_empty(&self) -> bool {
        matches!(self.0, ValuesInner::None)
    }
}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ValuesInner::None => f.write_str("<none>"),
            ValuesInner::Scalar(_) | ValuesInner::Row(_) => f.write_str("<1 row redacted>"),
            ValuesInner::Batch(b) => write!(f, "<{} rows redacted>", b.len()),
        }
    }
}

/// Everything about a request except the statement and values: how to run
/// it and how to label what is observed.
#[derive(Clone)]
pub struct RequestMeta {
    statement: Statement,
    /// Operation, keyspace and table when a request replaced its
    /// statement's (rare: a per-request operation name, the cardinality
    /// guard's fold); `None`: the statement's. Boxed, so a request is
    /// small to move through the layers and cheap to clone.
    labels: Option<Box<Labels>>,
    /// Nodes this logical request tried (see [`crate::routing`]).
    pub(crate) route: Option<Arc<crate::routing::RouteHint>>,
    /// For one page of a paged read: the page's index and where it starts
    /// (boxed: most requests are not pages).
    page: Option<Box<Page>>,
    /// The rest, plain values: copied whole when a request is cloned (as
    /// the retries' copy of every request is), not field by field.
    p: Plain,
}

#[derive(Clone, Copy)]
struct Plain {
    kind: OperationKind,
    /// [`labels_hash`] of the labels in force, kept in step by every setter.
    labels_hash: u64,
    idempotent: bool,
    traits: StatementTraits,
    consistency: Option<Consistency>,
    serial_consistency: Option<SerialConsistency>,
    page_size: Option<i32>,
    deadline: Option<Instant>,
    tracing: bool,
    attempt: (u32, AttemptReason),
}

/// A request's own operation, keyspace and table labels.
#[derive(Clone)]
struct Labels {
    operation: Option<Label>,
    keyspace: Option<Label>,
    table: Option<Label>,
}

impl fmt::Debug for RequestMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestMeta")
            .field("statement", &self.statement)
            .field("operation", &self.operation())
            .field("kind", &self.p.kind)
            .field("keyspace", &self.keyspace())
            .field("table", &self.table())
            .field("idempotent", &self.p.idempotent)
            .field("traits", &self.p.traits)
            .field("consistency", &self.p.consistency)
            .field("serial_consistency", &self.p.serial_consistency)
            .field("page_size", &self.p.page_size)
            .field("deadline", &self.p.deadline)
            .field("tracing", &self.p.tracing)
            .field("attempt", &self.p.attempt)
            .field("route", &self.route)
            .field("page", &self.page)
            .finish()
    }
}

/// A page's index and paging state. The state holds the last key read (a
/// value), so `Debug` leaves it out.
#[derive(Clone)]
struct Page(u32, PagingState);

impl fmt::Debug for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Page({}, <paging state redacted>)", self.0)
    }
}

impl RequestMeta {
    pub(crate) fn from_statement(s: &Statement) -> RequestMeta {
        RequestMeta {
            statement: s.clone(),
            labels: None,
            route: None,
            page: None,
            p: Plain {
                kind: s.0.kind,
                labels_hash: s.0.labels_hash,
                idempotent: s.0.idempotent,
                traits: s.0.traits,
                consistency: None,
                serial_consistency: None,
                page_size: None,
                deadline: None,
                tracing: false,
                attempt: (0, AttemptReason::Initial),
            },
        }
    }

    /// Zero-based attempt index (set by the retry and hedge layers).
    pub fn attempt_index(&self) -> u32 {
        self.p.attempt.0
    }

    /// Why this attempt is made.
    pub fn attempt_reason(&self) -> AttemptReason {
        self.p.attempt.1
    }

    /// Marks the request as attempt `index` made for `reason`.
    pub fn set_attempt(&mut self, index: u32, reason: AttemptReason) {
        self.p.attempt = (index, reason);
    }

    /// Makes this request fetch one page, the `index`-th of a paged read,
    /// starting at `state` ([`PagingState::start`] for the first): the
    /// driver service then executes a single page and the response carries
    /// the state of the next ([`CqlResponse::paging_state`](crate::CqlResponse::paging_state)).
    /// A retried or hedged page is a clone, so it asks for the same page.
    pub fn set_page(&mut self, index: u32, state: PagingState) {
        self.page = Some(Box::new(Page(index, state)));
    }

    /// For one page of a paged read, the page's index (0 for the first).
    pub fn page_index(&self) -> Option<u32> {
        self.page.as_ref().map(|p| p.0)
    }

    /// For one page of a paged read, where the page starts.
    pub fn paging_state(&self) -> Option<&PagingState> {
        self.page.as_ref().map(|p| &p.1)
    }

    /// Forgets this request's [`RouteHint`](crate::routing::RouteHint) (the
    /// clones made before keep it): the next attempt is routed as a first
    /// one.
    pub fn clear_route(&mut self) {
        self.route = None;
    }

    /// This request's [`RouteHint`](crate::routing::RouteHint), created on
    /// first use and shared by every clone made after that: later attempts
    /// go to nodes it does not avoid first.
    pub fn route_hint(&mut self) -> &Arc<crate::routing::RouteHint> {
        self.route.get_or_insert_with(Default::default)
    }

    /// The route hint, if one was attached.
    pub fn route(&self) -> Option<&Arc<crate::routing::RouteHint>> {
        self.route.as_ref()
    }

    /// The statement the request runs.
    pub fn statement(&self) -> &Statement {
        &self.statement
    }

    /// The statement text with literals replaced by `?` (cached per statement).
    pub fn sanitized_text(&self) -> Option<&str> {
        self.statement.sanitized_text()
    }

    /// [`sanitized_text`](Self::sanitized_text) as the statement's shared
    /// string (see [`Statement::sanitized_shared`]).
    pub fn sanitized_shared(&self) -> Option<&Arc<str>> {
        self.statement.sanitized_shared()
    }

    /// A low-cardinality summary: `"SELECT ks.table"`, per the
    /// OpenTelemetry `db.query.summary` convention.
    pub fn summary(&self) -> String {
        self.query_summary().to_string()
    }

    /// [`summary`](Self::summary) as a shared string: made once per
    /// statement and kept in it while the request carries its statement's
    /// labels (an `Arc` clone, no formatting), made afresh otherwise.
    pub fn summary_shared(&self) -> Arc<str> {
        if self.has_statement_labels() {
            return self
                .statement
                .0
                .summary
                .get_or_init(|| Arc::from(self.query_summary().to_string()))
                .clone();
        }
        Arc::from(self.query_summary().to_string())
    }

    /// [`summary`](Self::summary) without building a string: formatted
    /// where it is written (e.g. a span field given with `%`, which a
    /// disabled span never formats).
    pub fn query_summary(&self) -> QuerySummary<'_> {
        QuerySummary(self)
    }

    /// Replaces the operation label (the metrics layer's cardinality guard).
    pub fn set_operation(&mut self, name: Option<Label>) {
        self.own_labels().operation = name;
        self.relabelled();
    }

    /// Replaces the keyspace label.
    pub fn set_keyspace(&mut self, keyspace: Option<Label>) {
        self.own_labels().keyspace = keyspace;
        self.relabelled();
    }

    /// Replaces the table label.
    pub fn set_table(&mut self, table: Option<Label>) {
        self.own_labels().table = table;
        self.relabelled();
    }

    /// The request's own labels, made from the statement's on first change.
    fn own_labels(&mut self) -> &mut Labels {
        let s = &self.statement.0;
        self.labels.get_or_insert_with(|| {
            Box::new(Labels {
                operation: s.operation.clone(),
                keyspace: s.keyspace.clone(),
                table: s.table.clone(),
            })
        })
    }

    /// Replaces the three labels at once (one hash instead of three).
    pub fn set_labels(
        &mut self,
        operation: Option<Label>,
        keyspace: Option<Label>,
        table: Option<Label>,
    ) {
        self.labels = Some(Box::new(Labels {
            operation,
            keyspace,
            table,
        }));
        self.relabelled();
    }

    fn relabelled(&mut self) {
        self.p.labels_hash = labels_hash(self.operation(), self.keyspace(), self.table());
    }

    /// A hash of the operation, keyspace and table labels by their text,
    /// computed when they are set (once per [`Statement`], again only when
    /// a request changes them): for a collector that keys series by these
    /// labels, one number to hash per event instead of three strings.
    /// Equal label texts give equal hashes within a process.
    pub fn labels_hash(&self) -> u64 {
        self.p.labels_hash
    }

    /// Whether the labels in force are the statement's own (no request
    /// replaced them with [`set_labels`](Self::set_labels)).
    pub fn has_statement_labels(&self) -> bool {
        self.labels.is_none()
    }

    /// The operation name label, if one was given.
    pub fn operation(&self) -> Option<&Label> {
        match &self.labels {
            None => self.statement.0.operation.as_ref(),
            Some(l) => l.operation.as_ref(),
        }
    }

    /// The statement kind.
    pub fn kind(&self) -> OperationKind {
        self.p.kind
    }

    /// The keyspace label.
    pub fn keyspace(&self) -> Option<&Label> {
        match &self.labels {
            None => self.statement.0.keyspace.as_ref(),
            Some(l) => l.keyspace.as_ref(),
        }
    }

    /// The table label.
    pub fn table(&self) -> Option<&Label> {
        match &self.labels {
            None => self.statement.0.table.as_ref(),
            Some(l) => l.table.as_ref(),
        }
    }

    /// Whether the request may be retried or hedged after it may have been
    /// applied: marked idempotent, and nothing in the statement (LWT,
    /// counter update, list append, `now()`) forbids it. The idempotency
    /// rules live here and in [`crate::CqlError::retry_advice`].
    pub fn is_idempotent(&self) -> bool {
        self.p.idempotent && !self.p.traits.forbids_retry()
    }

    /// Whether the caller marked it idempotent (before the statement rules).
    pub fn marked_idempotent(&self) -> bool {
        self.p.idempotent
    }

    /// What the statement text says about retrying.
    pub fn traits(&self) -> StatementTraits {
        self.p.traits
    }

    /// The consistency level, if set for this request.
    pub fn consistency(&self) -> Option<Consistency> {
        self.p.consistency
    }

    /// The serial consistency level, if set.
    pub fn serial_consistency(&self) -> Option<SerialConsistency> {
        self.p.serial_consistency
    }

    /// The page size, if set.
    pub fn page_size(&self) -> Option<i32> {
        self.p.page_size
    }

    /// When the whole request (all attempts) must be done by.
    pub fn deadline(&self) -> Option<Instant> {
        self.p.deadline
    }

    /// Time left until the deadline (zero when passed).
    pub fn remaining(&self) -> Option<Duration> {
        self.remaining_at(crate::clock::now().into_std())
    }

    /// Time left until the deadline at `now` (zero when passed): for a
    /// caller that has read the clock already.
    pub fn remaining_at(&self, now: Instant) -> Option<Duration> {
        self.p.deadline.map(|d| d.saturating_duration_since(now))
    }

    /// Whether server-side tracing was requested.
    pub fn tracing(&self) -> bool {
        self.p.tracing
    }
}

/// A request: a statement, its bound values, and its [`RequestMeta`].
/// Cloning is cheap (reference counts), as retry and hedging need.
#[derive(Clone)]
pub struct CqlRequest {
    values: Values,
    meta: RequestMeta,
    /// The collectors of the stack the request is in, set by its gate (see
    /// [`crate::GateService`]): the driver service emits attempt events
    /// there, so a stack's events go to one set whatever the driver
    /// service was built with. Not in `meta`, which events copy.
    collectors: Option<crate::Collectors>,
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

    /// Sets the page size (rows per page).
    pub fn page_size(mut self, rows: i32) -> CqlRequest {
        self.meta.p.page_size = Some(rows);
        self
    }

    /// Sets the deadline for the whole request, all attempts included.
    pub fn deadline(mut self, at: Instant) -> CqlRequest {
        self.meta.p.deadline = Some(at);
        self
    }

    /// Sets the deadline `d` from now.
    pub fn timeout(self, d: Duration) -> CqlRequest {
        self.deadline(crate::clock::now().into_std() + d)
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
        self.collectors.as_ref()
    }

    pub(crate) fn set_stack_collectors(&mut self, collectors: crate::Collectors) {
        self.collectors = Some(collectors);
    }
}

impl RequestMeta {
    /// Sets the consistency level (middleware, e.g. downgrading retries).
    pub fn set_consistency(&mut self, c: Option<Consistency>) {
        self.p.consistency = c;
    }

    /// Sets the deadline.
    pub fn set_deadline(&mut self, at: Option<Instant>) {
        self.p.deadline = at;
    }

    /// Asks the server to trace the request, or not (the server trace
    /// layer's sampling).
    pub fn set_tracing(&mut self, on: bool) {
        self.p.tracing = on;
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

    /// One-column rows of fixed-size scalars are kept inline; other rows
    /// behind an `Arc`; an empty row is no values. Either way a row is
    /// never printed.
    #[test]
    fn scalar_rows_are_kept_inline_and_others_shared() {
        let inline = |v: Values| matches!(v.0, ValuesInner::Scalar(_));
        assert!(inline(Values::row((1i32,))));
        assert!(inline(Values::row((1i64,))));
        assert!(inline(Values::row((uuid::Uuid::nil(),))));
        assert!(inline(Values::row((scylla::value::CqlTimeuuid::from(
            uuid::Uuid::nil()
        ),))));
        assert!(inline(Values::row((1i16,))));
        assert!(inline(Values::row((1i8,))));
        assert!(inline(Values::row((true,))));
        assert!(inline(Values::row((1.0f32,))));
        assert!(inline(Values::row((1.0f64,))));
        // not one column of a fixed-size scalar
        assert!(!inline(Values::row((1i32, 2i32))));
        assert!(!inline(Values::row(("k",))));
        assert!(!inline(Values::row((String::from("k"),))));
        assert!(!inline(Values::row(vec![1i32])));
        assert!(Values::row(()).is_empty());
        let req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").bind((424242i32,));
        let out = format!("{req:?} {:?}", req.clone());
        assert!(out.contains("<1 row redacted>"), "{out}");
        assert!(!out.contains("424242"), "{out}");
    }

    /// A page request's paging state holds the last key read (a value):
    /// `Debug` shows the page, never the state's bytes.
    #[test]
    fn a_paging_state_never_reaches_debug() {
        let mut req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").bind((1,));
        let secret: &[u8] = b"KEY-MARKER-77";
        req.meta_mut()
            .set_page(3, PagingState::new_from_raw_bytes(secret));
        let out = format!("{req:?} {:?}", req.meta());
        assert!(out.contains("Page(3, <paging state redacted>)"), "{out}");
        assert!(!out.contains("KEY-MARKER"), "{out}");
        assert!(!out.contains("75, 69, 89"), "{out}"); // the bytes, as a Debug list
        assert_eq!(req.meta().page_index(), Some(3));
    }

    #[test]
    fn idempotency_rules() {
        let read = CqlRequest::query("SELECT v FROM t WHERE k = ?").idempotent(true);
        assert!(read.meta().is_idempotent());
        let lwt = CqlRequest::query("UPDATE t SET v = 1 WHERE k = 1 IF v = 0").idempotent(true);
        assert!(!lwt.meta().is_idempotent(), "LWTs are never idempotent");
        assert!(lwt.meta().marked_idempotent());
        let counter = CqlRequest::query("UPDATE c SET n = n + 1 WHERE k = 1").idempotent(true);
        assert!(!counter.meta().is_idempotent());
        assert!(
            !CqlRequest::query("SELECT 1 FROM t").meta().is_idempotent(),
            "default is non-idempotent"
        );
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

/// A request's `db.query.summary` (`SELECT ks.table`), formatted on
/// demand; see [`RequestMeta::query_summary`].
#[derive(Clone, Copy)]
pub struct QuerySummary<'a>(&'a RequestMeta);

impl fmt::Display for QuerySummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        f.write_str(m.p.kind.as_str())?;
        match (m.keyspace(), m.table()) {
            (Some(k), Some(t)) => write!(f, " {}.{}", k.as_str(), t.as_str()),
            (None, Some(t)) => write!(f, " {}", t.as_str()),
            // `CREATE KEYSPACE ks`, `USE ks`
            (Some(k), None) if m.p.kind.is_schema() => write!(f, " {}", k.as_str()),
            _ => Ok(()),
        }
    }
}

impl fmt::Debug for QuerySummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
