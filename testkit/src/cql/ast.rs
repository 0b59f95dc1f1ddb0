//! The syntax tree of the CQL subset that testkit executes.
//!
//! The parser ([`super::parse`]) produces these types; the executor
//! (the `exec` module) type-checks them against the schema and runs them.
//! Literals stay untyped here: their CQL type is only known once the column
//! they are compared with or assigned to is looked up.

/// A possibly keyspace-qualified name (`ks.table` or `table`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifiedName {
    /// The keyspace, when the statement names one.
    pub keyspace: Option<String>,
    /// The table (or type) name, lower-cased unless it was quoted.
    pub name: String,
}

/// One parsed CQL statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `SELECT ...`
    Select(Select),
    /// `INSERT INTO ...`
    Insert(Insert),
    /// `UPDATE ...`
    Update(Update),
    /// `DELETE ... FROM ...`
    Delete(Delete),
    /// `BEGIN [UNLOGGED|COUNTER] BATCH ... APPLY BATCH`
    Batch(BatchStatement),
    /// `USE ks`
    Use(String),
    /// `CREATE KEYSPACE`
    CreateKeyspace(CreateKeyspace),
    /// `CREATE TABLE`
    CreateTable(CreateTable),
    /// `DROP KEYSPACE`
    DropKeyspace {
        /// Keyspace name.
        name: String,
        /// `IF EXISTS` was given.
        if_exists: bool,
    },
    /// `DROP TABLE`
    DropTable {
        /// Table name.
        name: QualifiedName,
        /// `IF EXISTS` was given.
        if_exists: bool,
    },
    /// `TRUNCATE [TABLE] name`
    Truncate(QualifiedName),
    /// `ALTER TABLE`
    AlterTable(AlterTable),
    /// `ALTER KEYSPACE name WITH ...`
    AlterKeyspace(AlterKeyspace),
    /// `CREATE INDEX`
    CreateIndex(CreateIndex),
    /// `CREATE TRIGGER [IF NOT EXISTS] name ON table USING 'class'`: a
    /// change of the table's schema (the trigger itself is not kept).
    CreateTrigger {
        /// Table.
        table: QualifiedName,
    },
    /// `DROP INDEX [IF EXISTS] [ks.]name`
    DropIndex {
        /// Index name (keyspace-qualified or not).
        name: QualifiedName,
        /// `IF EXISTS` was given.
        if_exists: bool,
    },
}

/// `ALTER KEYSPACE name WITH ...`: what is not given is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct AlterKeyspace {
    /// Name.
    pub name: String,
    /// `replication = {...}`, as in [`CreateKeyspace::replication`].
    pub replication: Option<Vec<(String, String)>>,
    /// `durable_writes = bool`
    pub durable_writes: Option<bool>,
}

/// `ALTER TABLE name ...`
#[derive(Debug, Clone, PartialEq)]
pub struct AlterTable {
    /// Table.
    pub name: QualifiedName,
    /// What changes.
    pub op: AlterTableOp,
}

/// What an `ALTER TABLE` changes.
#[derive(Debug, Clone, PartialEq)]
pub enum AlterTableOp {
    /// `ADD col type [static]` or `ADD (a int, b text)`
    Add(Vec<ColumnDef>),
    /// `DROP col` or `DROP (a, b)`
    Drop(Vec<String>),
    /// `RENAME a TO b [AND c TO d]`
    Rename(Vec<(String, String)>),
    /// `WITH option = value [AND ...]`, as written.
    With(Vec<(String, String)>),
    /// `ALTER col TYPE t` (refused since Cassandra 3.10, as there).
    AlterType(String),
}

/// `CREATE INDEX [IF NOT EXISTS] [name] ON table (target)`
#[derive(Debug, Clone, PartialEq)]
pub struct CreateIndex {
    /// The index name, when given.
    pub name: Option<String>,
    /// `IF NOT EXISTS`
    pub if_not_exists: bool,
    /// Table.
    pub table: QualifiedName,
    /// Indexed column.
    pub column: String,
    /// `keys`, `values`, `entries` or `full` for `keys(m)` and the like.
    pub target_kind: Option<String>,
}

/// A value position in a statement: a literal, a bind marker or a function call.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    /// A literal constant.
    Literal(Literal),
    /// A bind marker. `index` is the zero-based position of the marker in
    /// the whole statement text (markers are numbered left to right, across
    /// every clause, including `LIMIT ?` and `USING TTL ?`); `name` is set for
    /// named markers (`:name`).
    Bind {
        /// Zero-based marker index in statement order.
        index: usize,
        /// The name of a `:name` marker.
        name: Option<String>,
    },
    /// A function call used as a value, e.g. `now()`, `uuid()`,
    /// `toTimestamp(now())`. The name is lower-cased.
    Function {
        /// Lower-cased function name.
        name: String,
        /// Arguments.
        args: Vec<Term>,
    },
}

/// An untyped literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `'text'` (quotes removed, `''` unescaped) or `$$text$$`.
    String(String),
    /// An integer literal, kept as written (may be negative): `42`, `-7`.
    Integer(String),
    /// A float literal as written: `1.5`, `-2e10`, `NaN`, `Infinity`.
    Float(String),
    /// `true` / `false`.
    Boolean(bool),
    /// `null`.
    Null,
    /// A UUID literal such as `123e4567-e89b-12d3-a456-426614174000`.
    Uuid(String),
    /// A blob literal `0xCAFE`, decoded.
    Blob(Vec<u8>),
    /// `[a, b]`
    List(Vec<Term>),
    /// `{a, b}` (also the empty `{}`, which may be a set or a map).
    Set(Vec<Term>),
    /// `{k: v, ...}`
    Map(Vec<(Term, Term)>),
}

/// What a `SELECT` returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// `SELECT *`
    Star,
    /// `SELECT COUNT(*)` or `SELECT COUNT(1)`; the alias if `AS x` was given.
    Count {
        /// Alias given with `AS`.
        alias: Option<String>,
    },
    /// `SELECT a, b AS x, writetime(c)`
    Columns(Vec<Selector>),
}

/// One item of a column selection.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    /// What is selected.
    pub kind: SelectorKind,
    /// The alias given with `AS`.
    pub alias: Option<String>,
}

/// What one selector reads.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectorKind {
    /// A column.
    Column(String),
    /// `WRITETIME(col)`
    WriteTime(String),
    /// `TTL(col)`
    Ttl(String),
    /// `token(a, b)`
    Token(Vec<String>),
    /// A native function call, e.g. `now()`, `toDate(ts)`,
    /// `toTimestamp(now())`, `blobAsText(b)`. The name is lower-cased.
    Function {
        /// Lower-cased function name, without the `system.` prefix.
        name: String,
        /// Arguments.
        args: Vec<SelectorKind>,
    },
    /// `CAST(selector AS type)`
    Cast {
        /// What is cast.
        arg: Box<SelectorKind>,
        /// The target type, normalised like [`ColumnDef::type_text`].
        type_text: String,
    },
}

/// A comparison operator in a `WHERE` relation or an `IF` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `IN`
    In,
    /// `CONTAINS`
    Contains,
    /// `CONTAINS KEY`
    ContainsKey,
}

/// The left-hand side of a relation.
#[derive(Debug, Clone, PartialEq)]
pub enum RelationLhs {
    /// A single column.
    Column(String),
    /// `token(a, b)`
    Token(Vec<String>),
    /// `(a, b)` — a multi-column (tuple) relation on clustering columns.
    Tuple(Vec<String>),
}

/// The right-hand side of an `IN` relation.
#[derive(Debug, Clone, PartialEq)]
pub enum InValues {
    /// `IN (t1, t2, ...)`
    List(Vec<Term>),
    /// `IN ?` / `IN :name` — one bind marker bound to a list.
    Marker(Term),
}

/// One `WHERE` relation, e.g. `a = ?`, `b IN (1, 2)`, `c > 3`.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    /// Left side.
    pub lhs: RelationLhs,
    /// Operator.
    pub op: Operator,
    /// Right side for every operator but `IN`. For a tuple relation this is
    /// a `Term::Literal(Literal::List(..))` holding the tuple's elements, or a
    /// single bind marker.
    pub rhs: Option<Term>,
    /// Right side of `IN`.
    pub in_values: Option<InValues>,
}

/// `ORDER BY col [ASC|DESC]`
#[derive(Debug, Clone, PartialEq)]
pub struct Ordering {
    /// Clustering column.
    pub column: String,
    /// `DESC` was given.
    pub descending: bool,
}

/// `SELECT`
#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    /// `SELECT DISTINCT`
    pub distinct: bool,
    /// `SELECT JSON` is not supported; the parser rejects it.
    pub selection: Selection,
    /// Table.
    pub table: QualifiedName,
    /// `WHERE` relations joined by `AND`.
    pub relations: Vec<Relation>,
    /// `ORDER BY` items.
    pub order_by: Vec<Ordering>,
    /// `PER PARTITION LIMIT` term.
    pub per_partition_limit: Option<Term>,
    /// `LIMIT` term.
    pub limit: Option<Term>,
    /// `ALLOW FILTERING` was given.
    pub allow_filtering: bool,
}

/// `USING TTL x AND TIMESTAMP y`
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Using {
    /// `TTL` term.
    pub ttl: Option<Term>,
    /// `TIMESTAMP` term.
    pub timestamp: Option<Term>,
}

/// `INSERT INTO t (cols) VALUES (terms)`
#[derive(Debug, Clone, PartialEq)]
pub struct Insert {
    /// Table.
    pub table: QualifiedName,
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Values, one per column.
    pub values: Vec<Term>,
    /// `IF NOT EXISTS`
    pub if_not_exists: bool,
    /// `USING ...`
    pub using: Using,
}

/// One assignment of an `UPDATE ... SET`.
#[derive(Debug, Clone, PartialEq)]
pub enum Assignment {
    /// `col = term`
    Set {
        /// Column.
        column: String,
        /// Value.
        value: Term,
    },
    /// `col = col + term` or `col += term` (counter increment, collection
    /// append/union).
    Add {
        /// Column.
        column: String,
        /// Value added.
        value: Term,
    },
    /// `col = term + col` (list prepend).
    Prepend {
        /// Column.
        column: String,
        /// Value prepended.
        value: Term,
    },
    /// `col = col - term` or `col -= term` (counter decrement, collection
    /// removal).
    Remove {
        /// Column.
        column: String,
        /// Value removed.
        value: Term,
    },
    /// `col[key] = term` (map entry or list index).
    SetElement {
        /// Column.
        column: String,
        /// Map key or list index.
        key: Term,
        /// Value.
        value: Term,
    },
}

/// A condition of an LWT `IF` clause.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `IF EXISTS`
    Exists,
    /// `IF NOT EXISTS` (INSERT only; UPDATE parses it too)
    NotExists,
    /// `IF a = 1 AND b > 2`
    Columns(Vec<ColumnCondition>),
}

/// One `IF col op term` comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnCondition {
    /// Column.
    pub column: String,
    /// Operator (`=`, `!=`, `<`, `<=`, `>`, `>=`, `IN`).
    pub op: Operator,
    /// Right side (for `IN`, a `Literal::List` or a bind marker).
    pub value: Term,
}

/// `UPDATE t SET ... WHERE ...`
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// Table.
    pub table: QualifiedName,
    /// `USING ...`
    pub using: Using,
    /// `SET` assignments.
    pub assignments: Vec<Assignment>,
    /// `WHERE` relations.
    pub relations: Vec<Relation>,
    /// LWT condition.
    pub condition: Option<Condition>,
}

/// What a `DELETE` removes.
#[derive(Debug, Clone, PartialEq)]
pub enum DeleteTarget {
    /// A whole column.
    Column(String),
    /// `col[key]`
    Element {
        /// Column.
        column: String,
        /// Map key or list index.
        key: Term,
    },
}

/// `DELETE [targets] FROM t WHERE ...`
#[derive(Debug, Clone, PartialEq)]
pub struct Delete {
    /// Columns or elements to delete; empty deletes whole rows.
    pub targets: Vec<DeleteTarget>,
    /// Table.
    pub table: QualifiedName,
    /// `USING TIMESTAMP ...`
    pub using: Using,
    /// `WHERE` relations.
    pub relations: Vec<Relation>,
    /// LWT condition.
    pub condition: Option<Condition>,
}

/// The kind of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    /// `BEGIN BATCH`
    Logged,
    /// `BEGIN UNLOGGED BATCH`
    Unlogged,
    /// `BEGIN COUNTER BATCH`
    Counter,
}

/// `BEGIN BATCH ... APPLY BATCH` written as CQL text.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStatement {
    /// Kind.
    pub kind: BatchKind,
    /// `USING TIMESTAMP ...` on the batch.
    pub using: Using,
    /// The statements: only `Insert`, `Update` and `Delete`.
    pub statements: Vec<Statement>,
}

/// `CREATE KEYSPACE`
#[derive(Debug, Clone, PartialEq)]
pub struct CreateKeyspace {
    /// Name.
    pub name: String,
    /// `IF NOT EXISTS`
    pub if_not_exists: bool,
    /// `replication = {...}` as string pairs (values as written, numbers as
    /// their text).
    pub replication: Vec<(String, String)>,
    /// `durable_writes = bool` (default true).
    pub durable_writes: bool,
}

/// One column definition of `CREATE TABLE`.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    /// Name.
    pub name: String,
    /// The CQL type as written, normalised: lower-case, no spaces, e.g.
    /// `int`, `map<text,int>`, `frozen<list<int>>`.
    pub type_text: String,
    /// `STATIC`
    pub is_static: bool,
}

/// `CREATE TABLE`
#[derive(Debug, Clone, PartialEq)]
pub struct CreateTable {
    /// Name.
    pub name: QualifiedName,
    /// `IF NOT EXISTS`
    pub if_not_exists: bool,
    /// Columns in declaration order.
    pub columns: Vec<ColumnDef>,
    /// Partition key columns (from `col type PRIMARY KEY` or
    /// `PRIMARY KEY ((a, b), c)`).
    pub partition_key: Vec<String>,
    /// Clustering columns in order.
    pub clustering_key: Vec<String>,
    /// `WITH CLUSTERING ORDER BY (c DESC, ...)`: (column, descending).
    pub clustering_order: Vec<(String, bool)>,
    /// Other `WITH` options, as written (`comment = 'x'` → ("comment", "x")).
    pub options: Vec<(String, String)>,
}
