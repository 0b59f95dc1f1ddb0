//! [`RequestMeta`]: everything about a request but its statement and
//! values, how to run it and how to label what is observed.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scylla::response::PagingState;
use scylla::statement::{Consistency, SerialConsistency};

use super::statement::labels_hash;
use super::{AttemptReason, Label, OperationKind, Statement, StatementTraits};

/// Everything about a request except the statement and values: how to run
/// it and how to label what is observed.
#[derive(Clone)]
pub struct RequestMeta {
    pub(super) statement: Statement,
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
    pub(super) p: Plain,
}

#[derive(Clone, Copy)]
pub(super) struct Plain {
    kind: OperationKind,
    /// [`labels_hash`] of the labels in force, kept in step by every setter.
    labels_hash: u64,
    pub(super) idempotent: bool,
    traits: StatementTraits,
    pub(super) consistency: Option<Consistency>,
    pub(super) serial_consistency: Option<SerialConsistency>,
    pub(super) page_size: Option<i32>,
    pub(super) deadline: Option<Instant>,
    pub(super) tracing: bool,
    /// The keyspace label is the session's keyspace as the request
    /// entered (see [`RequestMeta::label_session_keyspace`]).
    session_keyspace: bool,
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
                session_keyspace: false,
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
        self.p.session_keyspace = false;
        self.relabelled();
    }

    /// Replaces the table label.
    pub fn set_table(&mut self, table: Option<Label>) {
        self.own_labels().table = table;
        self.relabelled();
    }

    /// Labels the request with `keyspace`, the keyspace of the session
    /// it is about to run in, if its statement is [labelled by
    /// it](Statement::labelled_by_session_keyspace) and the request has
    /// no keyspace label of its own: text that names no keyspace (as
    /// with `SessionBuilder::use_keyspace`) is then labelled as a text
    /// naming the keyspace would be. A request carrying its statement's
    /// labels takes the statement [kept for that
    /// keyspace](Statement::in_session_keyspace) (same text, no label
    /// copy); one with labels of its own gets the keyspace among them.
    ///
    /// A stack built on a [`DriverService`](crate::DriverService) calls
    /// it for every request as it enters (its gate reads the session's
    /// keyspace); layers composed by hand can call it in a layer of their
    /// own, with `session.get_keyspace()`.
    ///
    /// ```
    /// use tower_cql_core::Statement;
    ///
    /// let get = Statement::new("SELECT name FROM users WHERE id = ?");
    /// let mut req = get.request();
    /// assert_eq!(req.meta().keyspace(), None);
    /// req.meta_mut().label_session_keyspace("app");
    /// assert_eq!(req.meta().keyspace().map(|k| k.as_str()), Some("app"));
    /// assert!(req.meta().has_statement_labels());
    ///
    /// // a keyspace named in the text or given as a label stays
    /// let mut req = Statement::new("SELECT name FROM app2.users").request();
    /// req.meta_mut().label_session_keyspace("app");
    /// assert_eq!(req.meta().keyspace().map(|k| k.as_str()), Some("app2"));
    /// ```
    pub fn label_session_keyspace(&mut self, keyspace: &str) {
        if self.keyspace().is_some() || !self.statement.labelled_by_session_keyspace() {
            return;
        }
        match &mut self.labels {
            None => {
                if let Some(s) = self.statement.in_session_keyspace(keyspace) {
                    self.p.labels_hash = s.0.labels_hash;
                    self.statement = s;
                    self.p.session_keyspace = true;
                }
            }
            Some(own) => {
                own.keyspace = Some(Label::from(Arc::<str>::from(keyspace)));
                self.p.session_keyspace = true;
                self.relabelled();
            }
        }
    }

    /// The session's keyspace the request was labelled with as it
    /// entered ([`label_session_keyspace`](Self::label_session_keyspace)),
    /// while that is its keyspace label: the driver service runs its
    /// text, which names no keyspace, in that keyspace (not the
    /// session's of the moment it runs, which a `USE` may have changed
    /// meanwhile), so that the label names the keyspace it ran in.
    pub(crate) fn entry_keyspace(&self) -> Option<&str> {
        if self.p.session_keyspace {
            self.keyspace().map(Label::as_str)
        } else {
            None
        }
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
        self.p.session_keyspace = false;
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
    /// counter update, list append, `DELETE l[0]`, `now()`: see
    /// [`StatementTraits`]) forbids it. The idempotency rules live here
    /// and in [`crate::CqlError::retry_advice`].
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

    /// Whether the driver can run the request as it is set: the one check
    /// of a request's own settings, made by the driver service before each
    /// attempt touches the driver. A page size below 1 (scylla's
    /// `set_page_size` panics on one), and a page of a batch (a batch has
    /// no pages), are refused with a `BadRequest`, not sent, no attempt
    /// made, and so not retried. (Consistency and serial consistency are
    /// enums the driver takes as they are, and the deadline is turned into
    /// a time left that cannot be negative: nothing to refuse there.)
    #[inline]
    pub(crate) fn check_settings(&self) -> Result<(), crate::CqlError> {
        if let Some(rows) = self.p.page_size
            && rows < 1
        {
            return Err(bad_page_size(rows));
        }
        if self.page.is_some() && matches!(self.statement.body(), super::StatementBody::Batch(_)) {
            return Err(paged_batch());
        }
        Ok(())
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

/// A request's `db.query.summary` (`SELECT ks.table`), formatted on
/// demand; see [`RequestMeta::query_summary`].
#[derive(Clone, Copy)]
pub struct QuerySummary<'a>(&'a RequestMeta);

/// The error of a request whose page size is below 1 (see
/// [`RequestMeta::check_settings`]).
#[cold]
#[inline(never)]
fn bad_page_size(rows: i32) -> crate::CqlError {
    crate::CqlError::new(
        crate::ErrorKind::BadRequest,
        format!(
            "page size must be at least 1, got {rows}: set CqlRequest::page_size to the rows wanted per page (1 or more), or leave it unset for the session's default"
        ),
    )
    .not_sent()
    .with_attempts(0)
}

/// The error of a page of a batch (see [`RequestMeta::check_settings`]).
#[cold]
#[inline(never)]
fn paged_batch() -> crate::CqlError {
    crate::CqlError::new(
        crate::ErrorKind::BadRequest,
        "a batch cannot be paged: execute it with call(), not stream()",
    )
    .not_sent()
    .with_attempts(0)
}

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

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;
    use crate::CqlRequest;

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

    /// The settings the driver cannot take are refused here, before it
    /// is touched: a page size below 1 (scylla's `set_page_size` panics
    /// on one) is a `BadRequest`, not sent, naming the size.
    #[test]
    fn a_page_size_below_one_is_refused_before_the_driver() {
        let req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?");
        assert!(req.meta().check_settings().is_ok());
        for ok in [1, 5000, i32::MAX] {
            assert!(req.clone().page_size(ok).meta().check_settings().is_ok());
        }
        for bad in [0, -1, i32::MIN] {
            let err = req
                .clone()
                .page_size(bad)
                .meta()
                .check_settings()
                .unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::BadRequest, "{err}");
            assert!(err.was_not_sent(), "{err}");
            assert!(
                err.to_string()
                    .contains(&format!("page size must be at least 1, got {bad}")),
                "{err}"
            );
        }
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
}
