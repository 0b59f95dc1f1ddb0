//! BATCH requests: the protocol's BATCH message, whose statements arrive
//! each with its own values (a `BEGIN BATCH` text sent as one QUERY is
//! run by [`super::execute`]). Every statement is planned first; the
//! mutations are applied together only if all of them planned.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::apply::{apply_all, apply_conditional_batch};
use super::bind::Values;
use super::result::Outcome;
use super::write::{check_conditional_batch, plan_write};
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
    let mut checks = Vec::new();
    let mut binders = Vec::with_capacity(items.len());
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
        binders.push(Values::new(item.parsed, item.values, None)?);
    }
    for (item, binder) in items.iter().zip(&binders) {
        let (muts, lwt) = plan_write(
            ctx,
            &schema,
            &item.parsed.statement,
            binder,
            opts,
            Some(kind),
        )?;
        if let Some(lwt) = lwt {
            checks.push((lwt, binder as &dyn Binder));
        }
        all.extend(muts);
    }
    if !checks.is_empty() {
        check_conditional_batch(&all)?;
        let out = apply_conditional_batch(&all, &checks)?;
        if matches!(&out, Outcome::Rows(r) if r.body.get(4) == Some(&1)) {
            for item in items {
                ctx.db
                    .counters
                    .record_write(&item.stats, item.text, item.values);
            }
        }
        return Ok(out);
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
