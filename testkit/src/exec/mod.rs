//! The executor: prepares statements, type-checks them against the schema,
//! and runs them on the in-memory store.
//!
//! This file holds the entry points ([`execute`] for QUERY and EXECUTE,
//! [`execute_batch`] for BATCH, [`prepare()`] for PREPARE), the context a
//! statement runs in, and the consistency check every statement makes. The
//! rest lives along the path a statement takes:
//!
//! - `prepare.rs`: parsing, typing bind markers, the cached [`Prepared`];
//! - `bind.rs`: the bound [`Values`] and evaluating terms against them;
//! - `restrict.rs`: WHERE clauses as partition keys, clustering values and
//!   filters;
//! - `select.rs`: projection, paging state and the SELECT scan;
//! - `write.rs`: INSERT, UPDATE and DELETE planned as mutations;
//! - `apply.rs`: mutations and LWT conditions applied to the store;
//! - `batch.rs`: the BATCH message;
//! - `ddl.rs`: CREATE and DROP of keyspaces and tables;
//! - `alter.rs`: ALTER TABLE, ALTER KEYSPACE, CREATE and DROP INDEX;
//! - `result.rs`: the [`Outcome`] and the encoded rows result.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::cql::Parsed;
use crate::cql::ast::{self, Statement};
use crate::db::{Database, StatementStats};
use crate::error::{Consistency, ServerError};
use crate::fault::StatementKind;
use crate::schema::{Keyspace, Schema, Table};

mod alter;
mod apply;
mod batch;
mod bind;
mod ddl;
mod prepare;
mod restrict;
mod result;
mod select;
mod write;

pub(crate) use self::batch::{BatchItem, execute_batch};
pub(crate) use self::bind::Values;
pub(crate) use self::prepare::{Prepared, prepare, prepared_id};
use self::result::ColumnSpecs;
pub(crate) use self::result::Outcome;

use self::apply::{apply_all, apply_conditional_batch};
use self::ddl::ddl;
use self::select::select;
use self::write::{check_conditional_batch, plan_write, write_timestamp};

// ---------------------------------------------------------------------------
// Context
// ---------------------------------------------------------------------------

/// Per-request inputs that are not statement values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options<'a> {
    pub(crate) consistency: u16,
    pub(crate) serial_consistency: Option<u16>,
    pub(crate) page_size: Option<i32>,
    pub(crate) paging_state: Option<&'a [u8]>,
    pub(crate) timestamp: Option<i64>,
}

/// Who runs a statement: the cluster, the node, the connection's keyspace.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub(crate) db: &'a Database,
    pub(crate) node: usize,
    pub(crate) keyspace: Option<&'a str>,
}

impl Ctx<'_> {
    fn keyspace_of<'n>(&'n self, name: &'n ast::QualifiedName) -> Result<&'n str, ServerError> {
        name.keyspace.as_deref().or(self.keyspace).ok_or_else(|| {
            ServerError::invalid(
                "No keyspace has been specified. USE a keyspace, or explicitly specify keyspace.tablename",
            )
        })
    }

    fn table(&self, schema: &Schema, name: &ast::QualifiedName) -> Result<Arc<Table>, ServerError> {
        let ks = self.keyspace_of(name)?;
        schema.table(ks, &name.name).cloned()
    }
}

/// The table a statement targets, if any.
pub(crate) fn statement_table(stmt: &Statement) -> Option<&ast::QualifiedName> {
    match stmt {
        Statement::Select(s) => Some(&s.table),
        Statement::Insert(s) => Some(&s.table),
        Statement::Update(s) => Some(&s.table),
        Statement::Delete(s) => Some(&s.table),
        Statement::Batch(b) => b.statements.first().and_then(statement_table),
        Statement::Truncate(t) => Some(t),
        Statement::DropTable { name, .. } => Some(name),
        Statement::CreateTable(c) => Some(&c.name),
        Statement::AlterTable(a) => Some(&a.name),
        Statement::CreateIndex(c) => Some(&c.table),
        _ => None,
    }
}

/// Whether a statement reads or writes data.
pub(crate) fn statement_kind(stmt: &Statement) -> Option<StatementKind> {
    match stmt {
        Statement::Select(_) => Some(StatementKind::Read),
        Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Batch(_) => Some(StatementKind::Write),
        _ => None,
    }
}

/// Checks that enough replicas of the token's partition (or, without a
/// token, of the keyspace) are up for `consistency`.
fn check_consistency(
    db: &Database,
    ks: &Keyspace,
    token: Option<i64>,
    consistency: u16,
) -> Result<(), ServerError> {
    if ks.is_system {
        return Ok(());
    }
    let cl = Consistency::from_code(consistency).ok_or_else(|| {
        ServerError::protocol(format!("Unknown consistency level code {consistency}"))
    })?;
    let rf = ks.replication_factor.max(1);
    let required = cl.required(rf);
    let (replicas, alive) = match token {
        Some(t) => db.topology.alive_replicas(t, rf),
        None => {
            let n = db.topology.nodes.len();
            (rf.min(n), rf.min(db.topology.alive_count()))
        }
    };
    if required > replicas || alive < required {
        return Err(ServerError::unavailable(
            consistency,
            required,
            alive.min(replicas),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

/// Runs a parsed statement (QUERY or EXECUTE).
pub(crate) fn execute(
    ctx: &Ctx<'_>,
    parsed: &Parsed,
    text: &str,
    values: &Values<'_>,
    opts: &Options<'_>,
    result_meta: Option<&Arc<ColumnSpecs>>,
    stats: &StatementStats,
) -> Result<Outcome, ServerError> {
    let raw_values = values.values;
    stats.executions.fetch_add(1, Ordering::Relaxed);
    ctx.db.counters.executions.fetch_add(1, Ordering::Relaxed);
    ctx.db.topology.nodes[ctx.node]
        .executions
        .fetch_add(1, Ordering::Relaxed);
    let schema = ctx.db.schema.load();
    match &parsed.statement {
        Statement::Select(s) => {
            let t = ctx.table(&schema, &s.table)?;
            select(ctx, &schema, &t, s, values, opts, result_meta)
        }
        stmt @ (Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_)) => {
            let (muts, lwt) = plan_write(ctx, &schema, stmt, values, opts, None)?;
            if lwt.is_some() {
                check_serial(ctx, &schema, stmt, opts)?;
            }
            let out = apply_all(&muts, lwt.as_ref(), values)?;
            let applied = match &out {
                Some(Outcome::Rows(r)) => r.body.get(4) == Some(&1),
                _ => true,
            };
            if applied {
                ctx.db.counters.record_write(stats, text, raw_values);
            }
            Ok(out.unwrap_or(Outcome::Void))
        }
        Statement::Batch(batch) => {
            let mut all = Vec::new();
            let mut checks = Vec::new();
            for s in &batch.statements {
                let mut o = *opts;
                if batch.using.timestamp.is_some() {
                    o.timestamp = Some(write_timestamp(&batch.using, values, opts)?);
                }
                let (muts, lwt) = plan_write(ctx, &schema, s, values, &o, Some(batch.kind))?;
                if let Some(lwt) = lwt {
                    checks.push((lwt, values as &dyn crate::types::Binder));
                }
                all.extend(muts);
            }
            if !checks.is_empty() {
                if batch.using.timestamp.is_some() {
                    return Err(ServerError::invalid(
                        "Cannot provide custom timestamp for conditional BATCH",
                    ));
                }
                check_conditional_batch(&all)?;
                check_serial(ctx, &schema, &parsed.statement, opts)?;
                let out = apply_conditional_batch(&all, &checks)?;
                if matches!(&out, Outcome::Rows(r) if r.body.get(4) == Some(&1)) {
                    ctx.db.counters.record_write(stats, text, raw_values);
                }
                return Ok(out);
            }
            apply_all(&all, None, values)?;
            ctx.db.counters.record_write(stats, text, raw_values);
            Ok(Outcome::Void)
        }
        Statement::Use(ks) => {
            if !schema.keyspaces.contains_key(ks) {
                return Err(ServerError::invalid(format!(
                    "Keyspace '{ks}' does not exist"
                )));
            }
            Ok(Outcome::SetKeyspace(ks.clone()))
        }
        Statement::Truncate(name) => {
            let t = ctx.table(&schema, name)?;
            if t.virtual_table.is_some() {
                return Err(ServerError::new(
                    crate::error::UNAUTHORIZED,
                    format!("{} may not be truncated", t.full_name()),
                ));
            }
            if ctx.db.topology.alive_count() < ctx.db.topology.nodes.len() {
                return Err(ServerError::new(
                    crate::error::UNAVAILABLE,
                    "Cannot perform truncate operation: not all hosts are up",
                ));
            }
            t.data.write().expect("table lock").partitions.clear();
            Ok(Outcome::Void)
        }
        stmt @ (Statement::CreateKeyspace(_)
        | Statement::CreateTable(_)
        | Statement::DropKeyspace { .. }
        | Statement::DropTable { .. }
        | Statement::AlterTable(_)
        | Statement::AlterKeyspace(_)
        | Statement::CreateIndex(_)
        | Statement::CreateTrigger { .. }
        | Statement::DropIndex { .. }) => ddl(ctx, stmt),
    }
}

fn check_serial(
    ctx: &Ctx<'_>,
    schema: &Schema,
    stmt: &Statement,
    opts: &Options<'_>,
) -> Result<(), ServerError> {
    let serial = opts
        .serial_consistency
        .unwrap_or(Consistency::Serial.code());
    if !matches!(
        Consistency::from_code(serial),
        Some(Consistency::Serial | Consistency::LocalSerial)
    ) {
        return Err(ServerError::invalid(format!(
            "Invalid serial consistency level {}: use SERIAL or LOCAL_SERIAL",
            crate::error::consistency_name(serial)
        )));
    }
    let t = ctx.table(schema, statement_table(stmt).expect("DML"))?;
    check_consistency(ctx.db, &schema.keyspaces[&t.keyspace], None, serial)
}
