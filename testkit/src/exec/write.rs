//! Planning writes: turns an INSERT, UPDATE or DELETE (alone or in a batch)
//! into [`Mutation`]s, one per row, partition, range or static row it
//! touches, plus the [`LwtCheck`] of a conditional write. Nothing is
//! applied here; `apply.rs` applies the plan.

use std::sync::Arc;

use bytes::Bytes;

use super::bind::{eval, eval_int, eval_value};
use super::restrict::{Filter, Restrictions, restrictions};
use super::{Ctx, Options, check_consistency, statement_table};
use crate::cql::ast::{self, Operator, Statement};
use crate::error::ServerError;
use crate::schema::{ColumnKind, PartitionKey, Schema, Table};
use crate::types::{self, Binder, CqlType, Evaluated};

#[derive(Debug, Clone)]
pub(super) enum CellOp {
    Set(Option<Bytes>),
    CounterAdd(i64),
    ListAppend(Vec<Bytes>),
    ListPrepend(Vec<Bytes>),
    ListRemove(Vec<Bytes>),
    ListSetIndex(i32, Option<Bytes>),
    SetUnion(Vec<Bytes>),
    SetDiff(Vec<Bytes>),
    MapPut(Vec<(Bytes, Bytes)>),
    MapRemove(Vec<Bytes>),
}

#[derive(Debug)]
pub(super) enum RowTarget {
    /// One row (clustering sort key; empty for tables without clustering).
    Row(Vec<u8>),
    /// Only static cells (UPDATE of static columns by partition key).
    Statics,
    /// The whole partition.
    Partition,
    /// Rows matching clustering filters.
    Range(Vec<Filter>),
}

#[derive(Debug)]
pub(super) struct Mutation {
    pub(super) table: Arc<Table>,
    pub(super) pk: PartitionKey,
    pub(super) target: RowTarget,
    /// (column, op); for INSERT/UPDATE also the key cells.
    pub(super) cells: Vec<(usize, CellOp)>,
    /// Whether the target row is created even without cells (INSERT).
    pub(super) row_marker: bool,
    pub(super) delete_row: bool,
    pub(super) ts: i64,
}

/// Checks that the mutations of a conditional batch are all on one table
/// and one partition, as Cassandra requires.
pub(super) fn check_conditional_batch(muts: &[Mutation]) -> Result<(), ServerError> {
    let Some(first) = muts.first() else {
        return Ok(());
    };
    if muts.iter().any(|m| !Arc::ptr_eq(&m.table, &first.table)) {
        return Err(ServerError::invalid(
            "Batch with conditions cannot span multiple tables",
        ));
    }
    if muts.iter().any(|m| m.pk != first.pk) {
        return Err(ServerError::invalid(
            "Batch with conditions cannot span multiple partitions",
        ));
    }
    Ok(())
}

#[derive(Debug)]
pub(super) struct LwtCheck {
    pub(super) condition: ast::Condition,
    pub(super) table: Arc<Table>,
    pub(super) pk: PartitionKey,
    pub(super) ck: Vec<u8>,
}

pub(super) fn write_timestamp(
    u: &ast::Using,
    b: &dyn Binder,
    opts: &Options<'_>,
) -> Result<i64, ServerError> {
    if let Some(ttl) = &u.ttl {
        let v = eval_int(ttl, b, "TTL")?;
        if v < 0 {
            return Err(ServerError::invalid("A TTL must be greater or equal to 0"));
        }
        if v > 0 {
            return Err(ServerError::invalid(
                "USING TTL with a non-zero TTL is not supported by testkit: rows never expire here",
            ));
        }
    }
    match &u.timestamp {
        Some(ts) => {
            let v = eval_value(&CqlType::BigInt, ts, b, "USING TIMESTAMP")?;
            Ok(i64::from_be_bytes(
                v[..]
                    .try_into()
                    .map_err(|_| ServerError::invalid("Invalid timestamp"))?,
            ))
        }
        None => Ok(opts.timestamp.unwrap_or_else(now_micros)),
    }
}

/// The partition keys a write targets; every partition key column must be
/// restricted by `=` or `IN`.
fn write_partitions(
    t: &Table,
    r: &Restrictions,
    what: &str,
) -> Result<Vec<PartitionKey>, ServerError> {
    if let Some(pos) = r.pk.iter().position(Option::is_none) {
        return Err(ServerError::invalid(format!(
            "Some partition key parts are missing: {} (a {what} must name the whole partition key with = or IN)",
            t.columns[t.partition_key[pos]].name
        )));
    }
    if r.filters.iter().any(|f| match f {
        Filter::Column { idx, .. } => matches!(
            t.columns[*idx].kind,
            ColumnKind::Regular | ColumnKind::Static
        ),
        Filter::Token { .. } => true,
        Filter::Tuple { .. } => false,
    }) {
        return Err(ServerError::invalid(format!(
            "Non PRIMARY KEY columns found in where clause of a {what}"
        )));
    }
    Ok(r.partition_keys())
}

/// The clustering keys of an INSERT/UPDATE: every clustering column by `=`/`IN`.
fn write_rows(t: &Table, r: &Restrictions, what: &str) -> Result<Vec<Vec<u8>>, ServerError> {
    let mut keys: Vec<Vec<u8>> = vec![Vec::new()];
    for (pos, &ci) in t.clustering.iter().enumerate() {
        let col = &t.columns[ci];
        let vals = r.ck_eq[pos].as_ref().ok_or_else(|| {
            ServerError::invalid(format!(
                "Missing mandatory PRIMARY KEY part {} in {what}",
                col.name
            ))
        })?;
        keys = keys
            .into_iter()
            .flat_map(|prefix| {
                vals.iter().map(move |v| {
                    let mut k = prefix.clone();
                    col.ty.sort_key(v, col.descending, &mut k);
                    k
                })
            })
            .collect();
    }
    Ok(keys)
}

fn key_cells(t: &Table, pk: &PartitionKey, ck_values: &[(usize, Bytes)]) -> Vec<(usize, CellOp)> {
    let mut cells: Vec<(usize, CellOp)> = pk
        .components(t.partition_key.len())
        .into_iter()
        .zip(&t.partition_key)
        .map(|(v, &i)| (i, CellOp::Set(Some(v))))
        .collect();
    cells.extend(
        ck_values
            .iter()
            .map(|(i, v)| (*i, CellOp::Set(Some(v.clone())))),
    );
    cells
}

fn collection_items(ty: &CqlType, v: &Bytes) -> Result<Vec<Bytes>, ServerError> {
    let _ = ty;
    types::collection_elements(v)
        .map_err(ServerError::invalid)?
        .into_iter()
        .map(|e| {
            e.map(Bytes::copy_from_slice)
                .ok_or_else(|| ServerError::invalid("null inside a collection"))
        })
        .collect()
}

fn map_items(v: &Bytes) -> Result<Vec<(Bytes, Bytes)>, ServerError> {
    types::collection_elements_pairs(v)
        .map_err(ServerError::invalid)?
        .into_iter()
        .map(|(k, v)| match (k, v) {
            (Some(k), Some(v)) => Ok((Bytes::copy_from_slice(k), Bytes::copy_from_slice(v))),
            _ => Err(ServerError::invalid("null inside a map")),
        })
        .collect()
}

/// Turns an INSERT/UPDATE/DELETE into mutations (and an LWT check).
pub(super) fn plan_write(
    ctx: &Ctx<'_>,
    schema: &Schema,
    stmt: &Statement,
    b: &dyn Binder,
    opts: &Options<'_>,
    in_batch: Option<ast::BatchKind>,
) -> Result<(Vec<Mutation>, Option<LwtCheck>), ServerError> {
    let t = ctx.table(schema, statement_table(stmt).expect("DML names a table"))?;
    if t.virtual_table.is_some() {
        return Err(ServerError::new(
            crate::error::UNAUTHORIZED,
            format!("{} may not be modified", t.full_name()),
        ));
    }
    let counter_stmt = t.is_counter;
    let conditional = match stmt {
        Statement::Insert(i) => i.if_not_exists,
        Statement::Update(u) => u.condition.is_some(),
        Statement::Delete(d) => d.condition.is_some(),
        _ => false,
    };
    if counter_stmt && conditional {
        return Err(ServerError::invalid(
            "Conditional updates are not supported on counter tables",
        ));
    }
    match in_batch {
        Some(ast::BatchKind::Counter) if !counter_stmt => {
            return Err(ServerError::invalid(
                "Only counter mutations are allowed in COUNTER batches",
            ));
        }
        Some(ast::BatchKind::Logged | ast::BatchKind::Unlogged) if counter_stmt => {
            return Err(ServerError::invalid(
                "Counter mutations are only allowed in COUNTER batches",
            ));
        }
        _ => {}
    }
    let ks = &schema.keyspaces[&t.keyspace];
    match stmt {
        Statement::Insert(ins) => {
            if t.is_counter {
                return Err(ServerError::invalid(
                    "INSERT statements are not allowed on counter tables, use UPDATE instead",
                ));
            }
            if ins.columns.len() != ins.values.len() {
                return Err(ServerError::invalid("Unmatched column names/values"));
            }
            let ts = write_timestamp(&ins.using, b, opts)?;
            let mut pk_vals: Vec<Option<Bytes>> = vec![None; t.partition_key.len()];
            let mut ck_vals: Vec<Option<Bytes>> = vec![None; t.clustering.len()];
            let mut cells = Vec::new();
            for (c, term) in ins.columns.iter().zip(&ins.values) {
                let i = t.column(c)?;
                let col = &t.columns[i];
                let v = eval(&col.ty, term, b, c)?;
                match col.kind {
                    ColumnKind::PartitionKey | ColumnKind::Clustering => {
                        let v = match v {
                            Evaluated::Value(v) => v,
                            _ => {
                                return Err(ServerError::invalid(format!(
                                    "Invalid null value in condition for column {c}"
                                )));
                            }
                        };
                        if col.kind == ColumnKind::PartitionKey {
                            pk_vals[col.position as usize] = Some(v);
                        } else {
                            ck_vals[col.position as usize] = Some(v);
                        }
                    }
                    _ => match v {
                        Evaluated::Unset => {}
                        Evaluated::Null => cells.push((i, CellOp::Set(None))),
                        Evaluated::Value(v) => cells.push((i, CellOp::Set(Some(v)))),
                    },
                }
            }
            let pk_parts = pk_vals
                .iter()
                .enumerate()
                .map(|(p, v)| {
                    v.as_deref().ok_or_else(|| {
                        ServerError::invalid(format!(
                            "Some partition key parts are missing: {}",
                            t.columns[t.partition_key[p]].name
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let pk = PartitionKey::from_components(&pk_parts);
            let mut ck = Vec::new();
            let mut ck_cells = Vec::new();
            for (p, v) in ck_vals.iter().enumerate() {
                let ci = t.clustering[p];
                let col = &t.columns[ci];
                let v = v.as_ref().ok_or_else(|| {
                    ServerError::invalid(format!("Some clustering keys are missing: {}", col.name))
                })?;
                col.ty.sort_key(v, col.descending, &mut ck);
                ck_cells.push((ci, v.clone()));
            }
            check_consistency(ctx.db, ks, Some(pk.token), opts.consistency)?;
            let mut all = key_cells(&t, &pk, &ck_cells);
            all.extend(cells);
            let lwt = ins.if_not_exists.then(|| LwtCheck {
                condition: ast::Condition::NotExists,
                table: t.clone(),
                pk: pk.clone(),
                ck: ck.clone(),
            });
            Ok((
                vec![Mutation {
                    table: t.clone(),
                    pk,
                    target: RowTarget::Row(ck),
                    cells: all,
                    row_marker: true,
                    delete_row: false,
                    ts,
                }],
                lwt,
            ))
        }
        Statement::Update(up) => {
            let ts = write_timestamp(&up.using, b, opts)?;
            let r = restrictions(&t, &up.relations, b)?;
            let pks = write_partitions(&t, &r, "UPDATE")?;
            let only_static = up.assignments.iter().all(|a| {
                let c = match a {
                    ast::Assignment::Set { column, .. }
                    | ast::Assignment::Add { column, .. }
                    | ast::Assignment::Prepend { column, .. }
                    | ast::Assignment::Remove { column, .. }
                    | ast::Assignment::SetElement { column, .. } => column,
                };
                t.by_name
                    .get(c)
                    .is_some_and(|&i| t.columns[i].kind == ColumnKind::Static)
            });
            let cks = if only_static && !r.has_ck_restriction {
                None
            } else {
                Some(write_rows(&t, &r, "UPDATE")?)
            };
            let mut ops = Vec::new();
            for a in &up.assignments {
                let (column, op) = match a {
                    ast::Assignment::Set { column, value } => {
                        let i = t.column(column)?;
                        let col = &t.columns[i];
                        if col.ty == CqlType::Counter {
                            return Err(ServerError::invalid(format!(
                                "Cannot set the value of counter column {column} (counters can only be incremented/decremented, not set)"
                            )));
                        }
                        match eval(&col.ty, value, b, column)? {
                            Evaluated::Unset => continue,
                            Evaluated::Null => (i, CellOp::Set(None)),
                            Evaluated::Value(v) => (i, CellOp::Set(Some(v))),
                        }
                    }
                    ast::Assignment::Add { column, value }
                    | ast::Assignment::Remove { column, value } => {
                        let i = t.column(column)?;
                        let col = &t.columns[i];
                        let add = matches!(a, ast::Assignment::Add { .. });
                        let op = match &col.ty {
                            CqlType::Counter => {
                                let v = eval_value(&CqlType::BigInt, value, b, column)?;
                                let n =
                                    i64::from_be_bytes(v[..].try_into().map_err(|_| {
                                        ServerError::invalid("Invalid counter delta")
                                    })?);
                                CellOp::CounterAdd(if add { n } else { n.wrapping_neg() })
                            }
                            CqlType::List(_) => {
                                let v = eval_value(&col.ty, value, b, column)?;
                                let items = collection_items(&col.ty, &v)?;
                                if add {
                                    CellOp::ListAppend(items)
                                } else {
                                    CellOp::ListRemove(items)
                                }
                            }
                            CqlType::Set(_) => {
                                let v = eval_value(&col.ty, value, b, column)?;
                                let items = collection_items(&col.ty, &v)?;
                                if add {
                                    CellOp::SetUnion(items)
                                } else {
                                    CellOp::SetDiff(items)
                                }
                            }
                            CqlType::Map(k, _) => {
                                if add {
                                    let v = eval_value(&col.ty, value, b, column)?;
                                    CellOp::MapPut(map_items(&v)?)
                                } else {
                                    let set_ty = CqlType::Set(k.clone());
                                    let v = eval_value(&set_ty, value, b, column)?;
                                    CellOp::MapRemove(collection_items(&set_ty, &v)?)
                                }
                            }
                            other => {
                                return Err(ServerError::invalid(format!(
                                    "Invalid operation ({column} = {column} {} ?) for non counter column {column} of type {}",
                                    if add { "+" } else { "-" },
                                    other.cql_name()
                                )));
                            }
                        };
                        (i, op)
                    }
                    ast::Assignment::Prepend { column, value } => {
                        let i = t.column(column)?;
                        let col = &t.columns[i];
                        if !matches!(col.ty, CqlType::List(_)) {
                            return Err(ServerError::invalid(format!(
                                "Invalid operation: prepend is only supported on lists, not {column}"
                            )));
                        }
                        let v = eval_value(&col.ty, value, b, column)?;
                        (i, CellOp::ListPrepend(collection_items(&col.ty, &v)?))
                    }
                    ast::Assignment::SetElement { column, key, value } => {
                        let i = t.column(column)?;
                        let col = &t.columns[i];
                        match &col.ty {
                            CqlType::Map(k, v) => {
                                let key = eval_value(k, key, b, column)?;
                                match eval(v, value, b, column)? {
                                    Evaluated::Value(val) => (i, CellOp::MapPut(vec![(key, val)])),
                                    _ => (i, CellOp::MapRemove(vec![key])),
                                }
                            }
                            CqlType::List(e) => {
                                let idx = eval_int(key, b, column)?;
                                (
                                    i,
                                    CellOp::ListSetIndex(
                                        idx,
                                        eval(e, value, b, column)?.into_option(),
                                    ),
                                )
                            }
                            _ => {
                                return Err(ServerError::invalid(format!(
                                    "Invalid operation ({column}[?] = ?) for non collection column {column}"
                                )));
                            }
                        }
                    }
                };
                if t.columns[column].kind != ColumnKind::Regular
                    && t.columns[column].kind != ColumnKind::Static
                {
                    return Err(ServerError::invalid(format!(
                        "PRIMARY KEY part {} found in SET part",
                        t.columns[column].name
                    )));
                }
                ops.push((column, op));
            }
            let ck_values: Vec<Vec<(usize, Bytes)>> = match &cks {
                None => vec![],
                Some(_) => ck_combinations(&t, &r),
            };
            let mut muts = Vec::new();
            let mut lwt = None;
            for pk in &pks {
                check_consistency(ctx.db, ks, Some(pk.token), opts.consistency)?;
                match &cks {
                    None => muts.push(Mutation {
                        table: t.clone(),
                        pk: pk.clone(),
                        target: RowTarget::Statics,
                        cells: ops.clone(),
                        row_marker: false,
                        delete_row: false,
                        ts,
                    }),
                    Some(cks) => {
                        for (ck, ckv) in cks.iter().zip(&ck_values) {
                            let mut cells = key_cells(&t, pk, ckv);
                            cells.extend(ops.iter().cloned());
                            muts.push(Mutation {
                                table: t.clone(),
                                pk: pk.clone(),
                                target: RowTarget::Row(ck.clone()),
                                cells,
                                row_marker: false,
                                delete_row: false,
                                ts,
                            });
                        }
                    }
                }
            }
            if let Some(cond) = &up.condition {
                if muts.len() != 1 {
                    return Err(ServerError::invalid(
                        "IN on the PRIMARY KEY is not supported in conditional updates",
                    ));
                }
                let ck = match &muts[0].target {
                    RowTarget::Row(ck) => ck.clone(),
                    _ => Vec::new(),
                };
                lwt = Some(LwtCheck {
                    condition: cond.clone(),
                    table: t.clone(),
                    pk: muts[0].pk.clone(),
                    ck,
                });
            }
            Ok((muts, lwt))
        }
        Statement::Delete(del) => {
            let ts = write_timestamp(&del.using, b, opts)?;
            let r = restrictions(&t, &del.relations, b)?;
            let pks = write_partitions(&t, &r, "DELETE")?;
            let mut ops = Vec::new();
            for target in &del.targets {
                match target {
                    ast::DeleteTarget::Column(c) => {
                        let i = t.column(c)?;
                        if !matches!(t.columns[i].kind, ColumnKind::Regular | ColumnKind::Static) {
                            return Err(ServerError::invalid(format!(
                                "Invalid identifier {c} for deletion (should not be a PRIMARY KEY part)"
                            )));
                        }
                        ops.push((i, CellOp::Set(None)));
                    }
                    ast::DeleteTarget::Element { column, key } => {
                        let i = t.column(column)?;
                        match &t.columns[i].ty {
                            CqlType::Map(k, _) => {
                                ops.push((
                                    i,
                                    CellOp::MapRemove(vec![eval_value(k, key, b, column)?]),
                                ));
                            }
                            CqlType::List(_) => {
                                ops.push((
                                    i,
                                    CellOp::ListSetIndex(eval_int(key, b, column)?, None),
                                ));
                            }
                            _ => {
                                return Err(ServerError::invalid(format!(
                                    "Invalid element deletion on non-collection column {column}"
                                )));
                            }
                        }
                    }
                }
            }
            let complete_ck = r
                .ck_eq
                .iter()
                .all(|v| v.as_ref().is_some_and(|v| !v.is_empty()));
            let mut muts = Vec::new();
            for pk in &pks {
                check_consistency(ctx.db, ks, Some(pk.token), opts.consistency)?;
                let only_static = !ops.is_empty()
                    && ops
                        .iter()
                        .all(|(i, _)| t.columns[*i].kind == ColumnKind::Static);
                let targets: Vec<RowTarget> = if only_static && !r.has_ck_restriction {
                    vec![RowTarget::Statics]
                } else if !r.has_ck_restriction {
                    if !ops.is_empty() && !t.clustering.is_empty() {
                        return Err(ServerError::invalid(
                            "Range deletions are not supported for specific columns",
                        ));
                    }
                    if t.clustering.is_empty() { vec![RowTarget::Row(Vec::new())] } else { vec![RowTarget::Partition] }
                } else if complete_ck && !r.filters.iter().any(|f| matches!(f, Filter::Column { op, .. } if !matches!(op, Operator::Eq | Operator::In)) || matches!(f, Filter::Tuple { .. })) {
                    write_rows(&t, &r, "DELETE")?.into_iter().map(RowTarget::Row).collect()
                } else {
                    if !ops.is_empty() {
                        return Err(ServerError::invalid(
                            "Range deletions are not supported for specific columns",
                        ));
                    }
                    let filters = restrictions(&t, &del.relations, b)?
                        .filters
                        .into_iter()
                        .filter(|f| !matches!(f, Filter::Column { idx, .. } if t.columns[*idx].kind == ColumnKind::PartitionKey))
                        .collect();
                    vec![RowTarget::Range(filters)]
                };
                for target in targets {
                    muts.push(Mutation {
                        table: t.clone(),
                        pk: pk.clone(),
                        target,
                        cells: ops.clone(),
                        row_marker: false,
                        delete_row: ops.is_empty(),
                        ts,
                    });
                }
            }
            let lwt = match &del.condition {
                Some(cond) => {
                    if muts.len() != 1 {
                        return Err(ServerError::invalid(
                            "IN on the PRIMARY KEY is not supported in conditional deletions",
                        ));
                    }
                    let ck = match &muts[0].target {
                        RowTarget::Row(ck) => ck.clone(),
                        _ => Vec::new(),
                    };
                    Some(LwtCheck {
                        condition: cond.clone(),
                        table: t.clone(),
                        pk: muts[0].pk.clone(),
                        ck,
                    })
                }
                None => None,
            };
            Ok((muts, lwt))
        }
        _ => Err(ServerError::invalid(
            "Only INSERT, UPDATE and DELETE statements are allowed here",
        )),
    }
}

fn ck_combinations(t: &Table, r: &Restrictions) -> Vec<Vec<(usize, Bytes)>> {
    let mut out: Vec<Vec<(usize, Bytes)>> = vec![Vec::new()];
    for (pos, &ci) in t.clustering.iter().enumerate() {
        let vals = r.ck_eq[pos].as_ref().expect("checked by write_rows");
        out = out
            .into_iter()
            .flat_map(|prefix| {
                vals.iter().map(move |v| {
                    let mut p = prefix.clone();
                    p.push((ci, v.clone()));
                    p
                })
            })
            .collect();
    }
    out
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
