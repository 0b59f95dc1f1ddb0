//! Applying writes: each cell operation (set, counter add, list, set and
//! map updates) with last-write-wins timestamps, each [`Mutation`] to a
//! table's data, and a plan as a whole, atomically per table, after its
//! lightweight-transaction condition is checked.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use super::bind::{eval, eval_list};
use super::restrict::{compare_op, filter_matches};
use super::result::{ColumnSpecs, Outcome, RowsOut};
use super::write::{CellOp, LwtCheck, Mutation, RowTarget};
use crate::cql::ast::{self, Operator};
use crate::error::ServerError;
use crate::frame::WriteExt;
use crate::schema::{Column, ColumnKind, Row, Table, TableData};
use crate::types::{self, Binder, CqlType};

/// Applies one cell operation; a non-frozen collection left empty is
/// null afterwards (Cassandra stores no cells for it, so it reads as null).
fn apply_cell(
    col: &Column,
    cell: &mut Option<Bytes>,
    ts_slot: &mut i64,
    op: &CellOp,
    ts: i64,
) -> Result<(), ServerError> {
    apply_op(&col.ty, cell, ts_slot, op, ts)?;
    if col.is_multi_cell()
        && cell
            .as_ref()
            .is_some_and(|c| c.len() >= 4 && c[..4] == [0, 0, 0, 0])
    {
        *cell = None;
    }
    Ok(())
}

fn apply_op(
    ty: &CqlType,
    cell: &mut Option<Bytes>,
    ts_slot: &mut i64,
    op: &CellOp,
    ts: i64,
) -> Result<(), ServerError> {
    let elem_ty = match ty {
        CqlType::List(e) | CqlType::Set(e) => Some(&**e),
        _ => None,
    };
    let current_items = |cell: &Option<Bytes>| -> Vec<Bytes> {
        cell.as_ref()
            .and_then(|c| types::collection_elements(c).ok())
            .map(|es| {
                es.into_iter()
                    .flatten()
                    .map(Bytes::copy_from_slice)
                    .collect()
            })
            .unwrap_or_default()
    };
    match op {
        CellOp::Set(v) => {
            if ts < *ts_slot {
                return Ok(()); // an older write loses
            }
            *cell = v.clone();
        }
        CellOp::CounterAdd(n) => {
            let cur = cell
                .as_ref()
                .and_then(|c| <[u8; 8]>::try_from(&c[..]).ok())
                .map_or(0, i64::from_be_bytes);
            *cell = Some(Bytes::copy_from_slice(&cur.wrapping_add(*n).to_be_bytes()));
        }
        CellOp::ListAppend(items) | CellOp::ListPrepend(items) => {
            let mut cur = current_items(cell);
            if matches!(op, CellOp::ListAppend(_)) {
                cur.extend(items.iter().cloned());
            } else {
                let mut v = items.clone();
                v.extend(cur);
                cur = v;
            }
            *cell = Some(types::encode_collection(cur.iter().map(|b| &b[..])));
        }
        CellOp::ListRemove(items) => {
            let e = elem_ty.expect("list");
            let cur: Vec<Bytes> = current_items(cell)
                .into_iter()
                .filter(|x| !items.iter().any(|i| e.compare(x, i).is_eq()))
                .collect();
            *cell = (!cur.is_empty()).then(|| types::encode_collection(cur.iter().map(|b| &b[..])));
        }
        CellOp::ListSetIndex(idx, v) => {
            let mut cur = current_items(cell);
            let i = usize::try_from(*idx)
                .ok()
                .filter(|i| *i < cur.len())
                .ok_or_else(|| {
                    ServerError::invalid(format!(
                        "List index {idx} out of bound, list has size {}",
                        cur.len()
                    ))
                })?;
            match v {
                Some(v) => cur[i] = v.clone(),
                None => {
                    cur.remove(i);
                }
            }
            *cell = (!cur.is_empty()).then(|| types::encode_collection(cur.iter().map(|b| &b[..])));
        }
        CellOp::SetUnion(items) | CellOp::SetDiff(items) => {
            let e = elem_ty.expect("set");
            let cur: Vec<Vec<u8>> = current_items(cell)
                .into_iter()
                .map(|b| b.to_vec())
                .collect();
            let next: Vec<Vec<u8>> = if matches!(op, CellOp::SetUnion(_)) {
                let mut all = cur;
                all.extend(items.iter().map(|b| b.to_vec()));
                types::normalise_set(e, all)
            } else {
                cur.into_iter()
                    .filter(|x| !items.iter().any(|i| e.compare(x, i).is_eq()))
                    .collect()
            };
            *cell =
                (!next.is_empty()).then(|| types::encode_collection(next.iter().map(|b| &b[..])));
        }
        CellOp::MapPut(_) | CellOp::MapRemove(_) => {
            let CqlType::Map(k, _) = ty else {
                return Ok(());
            };
            let cur: Vec<(Vec<u8>, Vec<u8>)> = cell
                .as_ref()
                .and_then(|c| types::collection_elements_pairs(c).ok())
                .map(|es| {
                    es.into_iter()
                        .filter_map(|(a, b)| Some((a?.to_vec(), b?.to_vec())))
                        .collect()
                })
                .unwrap_or_default();
            let next = match op {
                CellOp::MapPut(entries) => {
                    let mut all = cur;
                    all.extend(entries.iter().map(|(a, b)| (a.to_vec(), b.to_vec())));
                    types::normalise_map(k, all)
                }
                CellOp::MapRemove(keys) => cur
                    .into_iter()
                    .filter(|(key, _)| !keys.iter().any(|x| k.compare(key, x).is_eq()))
                    .collect(),
                _ => unreachable!("matched above"),
            };
            *cell = (!next.is_empty())
                .then(|| types::encode_map(next.iter().map(|(a, b)| (&a[..], &b[..]))));
        }
    }
    *ts_slot = (*ts_slot).max(ts);
    Ok(())
}

fn apply(data: &mut TableData, m: &Mutation) -> Result<(), ServerError> {
    let t = &m.table;
    let ncols = t.columns.len();
    match &m.target {
        RowTarget::Partition => {
            if m.delete_row {
                data.partitions.remove(&m.pk);
            }
            return Ok(());
        }
        RowTarget::Range(filters) => {
            if let Some(part) = data.partitions.get_mut(&m.pk) {
                let pk = m.pk.clone();
                part.rows.retain(|_, row| {
                    !filters
                        .iter()
                        .all(|f| filter_matches(t, f, &pk, &|i| row.cells[i].clone()))
                });
                if part.is_empty() {
                    data.partitions.remove(&m.pk);
                }
            }
            return Ok(());
        }
        _ => {}
    }
    let part = data.partitions.entry(m.pk.clone()).or_default();
    let mut result = Ok(());
    match &m.target {
        RowTarget::Statics => {
            let statics = part.statics.get_or_insert_with(|| Row::empty(ncols));
            apply_cells(t, statics, m.cells.iter(), m.ts, &mut result);
        }
        RowTarget::Row(ck) => {
            if m.delete_row {
                part.rows.remove(ck);
            } else {
                let has_static = m
                    .cells
                    .iter()
                    .any(|(i, _)| t.columns[*i].kind == ColumnKind::Static);
                if has_static {
                    let statics = part.statics.get_or_insert_with(|| Row::empty(ncols));
                    let cells = m.cells.iter();
                    let cells = cells.filter(|(i, _)| t.columns[*i].kind == ColumnKind::Static);
                    apply_cells(t, statics, cells, m.ts, &mut result);
                }
                let existed = part.rows.contains_key(ck);
                let row = part
                    .rows
                    .entry(ck.clone())
                    .or_insert_with(|| Row::empty(ncols));
                let cells = m.cells.iter();
                let cells = cells.filter(|(i, _)| t.columns[*i].kind != ColumnKind::Static);
                apply_cells(t, row, cells, m.ts, &mut result);
                // A row with only key cells and no marker does not exist.
                let has_value =
                    t.columns.iter().enumerate().any(|(i, c)| {
                        matches!(c.kind, ColumnKind::Regular) && row.cells[i].is_some()
                    });
                if !has_value && !m.row_marker && !existed {
                    part.rows.remove(ck);
                }
            }
        }
        _ => unreachable!("handled above"),
    }
    if part.is_empty() {
        data.partitions.remove(&m.pk);
    }
    result
}

/// Applies each cell operation to `row` at `ts`; the last failure, if
/// any, goes to `result` (the others are still applied, as before).
fn apply_cells<'c>(
    t: &Table,
    row: &mut Row,
    cells: impl Iterator<Item = &'c (usize, CellOp)>,
    ts: i64,
    result: &mut Result<(), ServerError>,
) {
    for (i, op) in cells {
        if let Err(e) = apply_cell(
            &t.columns[*i],
            &mut row.cells[*i],
            &mut row.write_ts[*i],
            op,
            ts,
        ) {
            *result = Err(e);
        }
    }
}

fn lwt_result(
    check: &LwtCheck,
    data: &TableData,
    b: &dyn Binder,
) -> Result<(bool, Option<Row>), ServerError> {
    let t = &check.table;
    let part = data.partitions.get(&check.pk);
    let row = part
        .and_then(|p| p.rows.get(&check.ck))
        .cloned()
        .or_else(|| {
            // static-only conditions on a partition
            if t.clustering.is_empty() {
                None
            } else {
                part.and_then(|p| p.statics.clone())
            }
        });
    let applied = match &check.condition {
        ast::Condition::NotExists => row.is_none(),
        ast::Condition::Exists => row.is_some(),
        ast::Condition::Columns(conds) => {
            let mut ok = true;
            for c in conds {
                let i = t.column(&c.column)?;
                let col = &t.columns[i];
                let cell = row.as_ref().and_then(|r| r.cells[i].clone());
                let matched = if c.op == Operator::In {
                    let items = eval_list(&col.ty, &c.value, b, &c.column)?;
                    cell.as_ref()
                        .is_some_and(|v| items.iter().any(|x| col.ty.compare(v, x).is_eq()))
                } else {
                    match (eval(&col.ty, &c.value, b, &c.column)?.into_option(), cell) {
                        (None, None) => matches!(c.op, Operator::Eq),
                        (None, Some(_)) => matches!(c.op, Operator::Ne),
                        (Some(_), None) => matches!(c.op, Operator::Ne),
                        (Some(v), Some(cell)) => compare_op(c.op, col.ty.compare(&cell, &v)),
                    }
                };
                ok &= matched;
            }
            ok
        }
    };
    Ok((applied, row))
}

/// Applies a conditional batch, whose statements are all on one partition
/// of one table (the caller checked): every condition is checked against
/// the partition as it is, under the table lock; only if all hold are the
/// mutations applied. The result is Cassandra's: one `[applied]` row when
/// applied; otherwise `[applied] = false` with, for each row the
/// conditions read that exists (in clustering order), every column if any
/// condition is `IF [NOT] EXISTS`, else the primary key and the columns
/// with conditions.
pub(super) fn apply_conditional_batch(
    muts: &[Mutation],
    checks: &[(LwtCheck, &dyn Binder)],
) -> Result<Outcome, ServerError> {
    let t = checks[0].0.table.clone();
    let mut data = t.data.write().expect("table lock");
    let mut applied = true;
    let mut read: BTreeMap<Vec<u8>, Row> = BTreeMap::new();
    for (check, b) in checks {
        let (ok, row) = lwt_result(check, &data, *b)?;
        applied &= ok;
        if let Some(row) = row {
            read.entry(check.ck.clone()).or_insert(row);
        }
    }
    if applied {
        for m in muts {
            apply(&mut data, m)?;
        }
    }
    let conds: Vec<&ast::Condition> = checks.iter().map(|(c, _)| &c.condition).collect();
    let rows: Vec<Row> = read.into_values().collect();
    cas_outcome(&t, &checks[0].0.pk, applied, &rows, &conds, true)
}

/// Cassandra's result of a conditional write: `[applied]` alone when it
/// applied or when the conditions read no row; otherwise `[applied] =
/// false` and, per row read, every column if a condition is `IF [NOT]
/// EXISTS`, else the conditioned columns (after the primary key in a
/// batch, to tell the rows apart).
fn cas_outcome(
    t: &Table,
    pk: &crate::schema::PartitionKey,
    applied: bool,
    rows: &[Row],
    conds: &[&ast::Condition],
    batch: bool,
) -> Result<Outcome, ServerError> {
    let ks = t.keyspace.as_str();
    let tn = t.name.as_str();
    let mut specs: Vec<(&str, &str, &str, &CqlType)> =
        vec![(ks, tn, "[applied]", &CqlType::Boolean)];
    let mut body = Vec::new();
    if applied || rows.is_empty() {
        body.put_value(Some(&[u8::from(applied)]));
        return Ok(Outcome::Rows(RowsOut {
            meta: Arc::new(ColumnSpecs::new(&specs)),
            count: 1,
            body,
            paging_state: None,
        }));
    }
    let wildcard = conds
        .iter()
        .any(|c| matches!(c, ast::Condition::Exists | ast::Condition::NotExists));
    let mut cols: Vec<usize> = Vec::new();
    if wildcard || batch {
        cols.extend(&t.partition_key);
        cols.extend(&t.clustering);
    }
    if wildcard {
        let mut rest: Vec<usize> = (0..t.columns.len())
            .filter(|i| matches!(t.columns[*i].kind, ColumnKind::Regular | ColumnKind::Static))
            .collect();
        rest.sort_by(|a, b| t.columns[*a].name.cmp(&t.columns[*b].name));
        cols.extend(rest);
    } else {
        for c in conds {
            if let ast::Condition::Columns(cs) = c {
                for cc in cs {
                    let i = t.column(&cc.column)?;
                    if !cols.contains(&i) {
                        cols.push(i);
                    }
                }
            }
        }
    }
    for &i in &cols {
        specs.push((ks, tn, t.columns[i].name.as_str(), &t.columns[i].ty));
    }
    let pk_parts = pk.components(t.partition_key.len());
    for row in rows {
        body.put_value(Some(&[0]));
        for &i in &cols {
            let c = &t.columns[i];
            let v = match c.kind {
                ColumnKind::PartitionKey => pk_parts.get(c.position as usize).cloned(),
                _ => row.cells[i].clone(),
            };
            body.put_value(v.as_deref());
        }
    }
    Ok(Outcome::Rows(RowsOut {
        meta: Arc::new(ColumnSpecs::new(&specs)),
        count: rows.len() as i32,
        body,
        paging_state: None,
    }))
}

/// Applies a list of mutations atomically (one table lock at a time, in
/// table order, all validated before the first is applied).
pub(super) fn apply_all(
    muts: &[Mutation],
    lwt: Option<&LwtCheck>,
    b: &dyn Binder,
) -> Result<Option<Outcome>, ServerError> {
    if let Some(check) = lwt {
        let mut data = check.table.data.write().expect("table lock");
        let (applied, row) = lwt_result(check, &data, b)?;
        if applied {
            for m in muts {
                apply(&mut data, m)?;
            }
        }
        let rows: Vec<Row> = row.into_iter().collect();
        return cas_outcome(
            &check.table,
            &check.pk,
            applied,
            &rows,
            &[&check.condition],
            false,
        )
        .map(Some);
    }
    // Group by table so each lock is taken once.
    let mut by_table: BTreeMap<*const Table, Vec<&Mutation>> = BTreeMap::new();
    for m in muts {
        by_table.entry(Arc::as_ptr(&m.table)).or_default().push(m);
    }
    for ms in by_table.values() {
        let mut data = ms[0].table.data.write().expect("table lock");
        for m in ms {
            apply(&mut data, m)?;
        }
    }
    Ok(None)
}
