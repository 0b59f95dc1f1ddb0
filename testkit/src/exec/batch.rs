//! BATCH requests: the protocol's BATCH message, whose statements arrive
//! each with its own values (a `BEGIN BATCH` text sent as one QUERY is
//! run by [`super::execute`]). Every statement is planned first; the
//! mutations are applied together only if all of them planned.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::apply::apply_all;
use super::bind::Values;
use super::result::Outcome;
use super::write::plan_write;
use super::{Ctx, Options};
use crate::cql::Parsed;
use crate::cql::ast::{self, Statement};
use crate::db::StatementStats;
use crate::error::ServerError;
use crate::frame::Value;
use crate::types::{Binder, BoundValue};

/// One statement of a BATCH request, resolved.
#[derive(Debug)]
pub(crate) struct BatchItem<'a> {
    pub(crate) parsed: &'a Parsed,
    pub(crate) text: &'a str,
    pub(crate) values: &'a [Value<'a>],
    pub(crate) stats: Arc<StatementStats>,
}

/// Runs a BATCH request.
pub(crate) fn execute_batch(
    ctx: &Ctx<'_>,
    kind: u8,
    items: &[BatchItem<'_>],
    opts: &Options<'_>,
) -> Result<Outcome, ServerError> {
    let schema = ctx.db.schema.load();
    let kind = match kind {
        0 => ast::BatchKind::Logged,
        1 => ast::BatchKind::Unlogged,
        _ => ast::BatchKind::Counter,
    };
    ctx.db.counters.executions.fetch_add(1, Ordering::Relaxed);
    ctx.db.topology.nodes[ctx.node]
        .executions
        .fetch_add(1, Ordering::Relaxed);
    let mut all = Vec::new();
    for item in items {
        item.stats.executions.fetch_add(1, Ordering::Relaxed);
        if !matches!(
            item.parsed.statement,
            Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_)
        ) {
            return Err(ServerError::invalid(format!(
                "Invalid statement in batch: only UPDATE, INSERT and DELETE statements are allowed ({})",
                item.text
            )));
        }
        let binder = Values::new(item.parsed, item.values, None)?;
        let (muts, lwt) = plan_write(
            ctx,
            &schema,
            &item.parsed.statement,
            &binder,
            opts,
            Some(kind),
        )?;
        if lwt.is_some() {
            return Err(ServerError::invalid(
                "Conditional statements in batches are not supported by testkit",
            ));
        }
        all.extend(muts);
    }
    struct NoBinds;
    impl Binder for NoBinds {
        fn bound(&self, _: usize) -> Result<BoundValue<'_>, String> {
            Err("no values".into())
        }
    }
    apply_all(&all, None, &NoBinds)?;
    for item in items {
        ctx.db
            .counters
            .record_write(&item.stats, item.text, item.values);
    }
    Ok(Outcome::Void)
}
