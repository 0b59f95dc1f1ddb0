//! What a statement is ([`OperationKind`]) and why an attempt is made
//! ([`AttemptReason`]): fixed sets, so bounded labels.

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

    /// Whether the statement may change the schema, so that the driver
    /// waits for the nodes to agree on it after the server's answer: a
    /// [schema](Self::is_schema) kind, or [`Other`](Self::Other), among
    /// which the statements the analysis names no kind for (`CREATE
    /// FUNCTION`, `CREATE TRIGGER`, `ALTER MATERIALIZED VIEW`, ...).
    pub const fn may_change_schema(self) -> bool {
        self.is_schema() || matches!(self, OperationKind::Other)
    }

    /// Whether the statement only reads.
    pub const fn is_read(self) -> bool {
        matches!(self, OperationKind::Select)
    }
}
