//! SELECT: the projection (which columns, `WRITETIME`, `token()`,
//! `COUNT(*)`, and the rows metadata a prepared SELECT reports), the
//! paging state handed to drivers, and the scan that walks partitions in
//! token order, applies the restrictions, limits and ORDER BY, and pages.

use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use super::bind::eval_int;
use super::restrict::{Filter, filter_matches, restrictions};
use super::result::{ColumnSpecs, Outcome, RowsOut};
use super::{Ctx, Options, check_consistency};
use crate::cql::ast;
use crate::error::ServerError;
use crate::frame::WriteExt;
use crate::functions;
use crate::schema::{ColumnKind, Partition, PartitionKey, Row, Schema, Table, TableData};
use crate::types::{Binder, CqlType};

// ---------------------------------------------------------------------------
// Projection
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub(super) enum Proj {
    Column(usize),
    WriteTime(usize),
    Token,
    Ttl,
    /// A native function call of the resolved overload.
    Call {
        name: String,
        arg_types: Vec<CqlType>,
        ret: CqlType,
        args: Vec<Proj>,
    },
    /// `CAST(arg AS to)`
    Cast {
        from: CqlType,
        to: CqlType,
        arg: Box<Proj>,
    },
}

/// Resolves one selector against the table: what it reads, the column
/// name Cassandra gives it (`system.now()`, `cast(v as text)`), its type.
fn resolve(t: &Table, kind: &ast::SelectorKind) -> Result<(Proj, String, CqlType), ServerError> {
    Ok(match kind {
        ast::SelectorKind::Column(c) => {
            let i = t.column(c)?;
            (Proj::Column(i), c.clone(), t.columns[i].ty.clone())
        }
        ast::SelectorKind::WriteTime(c) => {
            let i = t.column(c)?;
            if !matches!(t.columns[i].kind, ColumnKind::Regular | ColumnKind::Static) {
                return Err(ServerError::invalid(format!(
                    "Cannot use selection function writeTime on PRIMARY KEY part {c}"
                )));
            }
            (
                Proj::WriteTime(i),
                format!("writetime({c})"),
                CqlType::BigInt,
            )
        }
        ast::SelectorKind::Ttl(c) => {
            t.column(c)?;
            (Proj::Ttl, format!("ttl({c})"), CqlType::Int)
        }
        ast::SelectorKind::Token(cols) => {
            t.check_token_args(cols, "the partition key columns in order")?;
            (
                Proj::Token,
                format!("system.token({})", cols.join(", ")),
                CqlType::BigInt,
            )
        }
        ast::SelectorKind::Function { name, args } => {
            if let Err(e) = functions::resolve(name, &[])
                && (e.starts_with("Unknown function") || e.contains("aggregate"))
            {
                return Err(ServerError::invalid(e));
            }
            let mut projs = Vec::with_capacity(args.len());
            let mut names = Vec::with_capacity(args.len());
            let mut types = Vec::with_capacity(args.len());
            for a in args {
                let (p, n, ty) = resolve(t, a)?;
                projs.push(p);
                names.push(n);
                types.push(ty);
            }
            let (arg_types, ret) =
                functions::resolve(name, &types).map_err(ServerError::invalid)?;
            (
                Proj::Call {
                    name: name.clone(),
                    arg_types,
                    ret: ret.clone(),
                    args: projs,
                },
                format!("system.{name}({})", names.join(", ")),
                ret,
            )
        }
        ast::SelectorKind::Cast { arg, type_text } => {
            let (p, n, from) = resolve(t, arg)?;
            let to = CqlType::parse(type_text).map_err(ServerError::invalid)?;
            functions::check_cast(&from, &to).map_err(ServerError::invalid)?;
            let name = format!("cast({n} as {})", to.cql_name());
            (
                Proj::Cast {
                    from,
                    to: to.clone(),
                    arg: Box::new(p),
                },
                name,
                to,
            )
        }
    })
}

pub(super) fn projection(
    t: &Table,
    s: &ast::Select,
) -> Result<(Option<Vec<Proj>>, ColumnSpecs), ServerError> {
    let ks = t.keyspace.as_str();
    let tn = t.name.as_str();
    match &s.selection {
        ast::Selection::Star => {
            // Cassandra's order: partition key, clustering, then the rest by name.
            let mut order: Vec<usize> = t.partition_key.clone();
            order.extend(&t.clustering);
            let mut rest: Vec<usize> = (0..t.columns.len())
                .filter(|i| matches!(t.columns[*i].kind, ColumnKind::Regular | ColumnKind::Static))
                .collect();
            rest.sort_by(|a, b| t.columns[*a].name.cmp(&t.columns[*b].name));
            order.extend(rest);
            let specs: Vec<_> = order
                .iter()
                .map(|&i| (ks, tn, t.columns[i].name.as_str(), &t.columns[i].ty))
                .collect();
            Ok((
                Some(order.into_iter().map(Proj::Column).collect()),
                ColumnSpecs::new(&specs),
            ))
        }
        ast::Selection::Count { alias } => {
            let name = alias.as_deref().unwrap_or("count");
            Ok((None, ColumnSpecs::new(&[(ks, tn, name, &CqlType::BigInt)])))
        }
        ast::Selection::Columns(sels) => {
            let mut projs = Vec::with_capacity(sels.len());
            let mut names = Vec::with_capacity(sels.len());
            let mut tys = Vec::with_capacity(sels.len());
            for sel in sels {
                let (p, name, ty) = resolve(t, &sel.kind)?;
                projs.push(p);
                names.push(sel.alias.clone().unwrap_or(name));
                tys.push(ty);
            }
            let specs: Vec<_> = names
                .iter()
                .zip(&tys)
                .map(|(n, ty)| (ks, tn, n.as_str(), ty))
                .collect();
            Ok((Some(projs), ColumnSpecs::new(&specs)))
        }
    }
}

/// Where a row's selectors read from.
struct Source<'a> {
    t: &'a Table,
    pk: &'a PartitionKey,
    row: Option<&'a Row>,
    statics: Option<&'a Row>,
}

impl Source<'_> {
    /// The value of a projection for this row.
    fn value(&self, p: &Proj) -> Result<Option<Bytes>, ServerError> {
        let t = self.t;
        Ok(match p {
            Proj::Column(i) => {
                let col = &t.columns[*i];
                match col.kind {
                    ColumnKind::Static => self.statics.and_then(|s| s.cells[*i].clone()),
                    ColumnKind::PartitionKey if self.row.is_none() => self
                        .pk
                        .components(t.partition_key.len())
                        .get(col.position as usize)
                        .cloned(),
                    _ => self.row.and_then(|r| r.cells[*i].clone()),
                }
            }
            Proj::WriteTime(i) => {
                let src = if t.columns[*i].kind == ColumnKind::Static {
                    self.statics
                } else {
                    self.row
                };
                src.filter(|r| r.cells[*i].is_some())
                    .map(|r| Bytes::copy_from_slice(&r.write_ts[*i].to_be_bytes()))
            }
            Proj::Ttl => None,
            Proj::Token => Some(Bytes::copy_from_slice(&self.pk.token.to_be_bytes())),
            Proj::Call {
                name,
                arg_types,
                ret,
                args,
            } => {
                let values = args
                    .iter()
                    .map(|a| self.value(a))
                    .collect::<Result<Vec<_>, _>>()?;
                functions::call(name, arg_types, ret, &values).map_err(ServerError::invalid)?
            }
            Proj::Cast { from, to, arg } => {
                functions::cast(from, to, self.value(arg)?).map_err(ServerError::invalid)?
            }
        })
    }
}

// ---------------------------------------------------------------------------
// Paging state
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct PagingState {
    pk: PartitionKey,
    /// The last clustering key returned; None: the partition was finished
    /// (static-only row or DISTINCT).
    ck: Option<Vec<u8>>,
    returned: u32,
    in_partition: u32,
}

impl PagingState {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.pk.key.len());
        out.push(1);
        out.extend_from_slice(&self.pk.token.to_be_bytes());
        out.extend_from_slice(&(self.pk.key.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.pk.key);
        match &self.ck {
            Some(ck) => {
                out.push(1);
                out.extend_from_slice(&(ck.len() as u32).to_be_bytes());
                out.extend_from_slice(ck);
            }
            None => out.push(0),
        }
        out.extend_from_slice(&self.returned.to_be_bytes());
        out.extend_from_slice(&self.in_partition.to_be_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<PagingState> {
        let mut r = crate::frame::Reader::new(b);
        if r.byte().ok()? != 1 {
            return None;
        }
        let token = r.long().ok()?;
        let n = r.int().ok()? as usize;
        let key = Bytes::copy_from_slice(r.take(n).ok()?);
        let ck = match r.byte().ok()? {
            1 => {
                let n = r.int().ok()? as usize;
                Some(r.take(n).ok()?.to_vec())
            }
            _ => None,
        };
        let returned = r.int().ok()? as u32;
        let in_partition = r.int().ok()? as u32;
        (r.remaining() == 0).then_some(PagingState {
            pk: PartitionKey { token, key },
            ck,
            returned,
            in_partition,
        })
    }
}

// ---------------------------------------------------------------------------
// The scan
// ---------------------------------------------------------------------------

/// Runs a SELECT.
pub(super) fn select(
    ctx: &Ctx<'_>,
    schema: &Schema,
    t: &Arc<Table>,
    s: &ast::Select,
    b: &dyn Binder,
    opts: &Options<'_>,
    meta: Option<&Arc<ColumnSpecs>>,
) -> Result<Outcome, ServerError> {
    let (projs, specs) = projection(t, s)?;
    let meta = match meta {
        Some(m) if m.encoded == specs.encoded => m.clone(),
        // The table changed between the EXECUTE's look-up of the statement
        // and this run (an ALTER TABLE raced it): rows of the new columns
        // would not match the metadata the client holds. Unprepared (the
        // caller puts in the statement id) makes the driver prepare again.
        Some(_) => return Err(ServerError::unprepared(&[])),
        None => Arc::new(specs),
    };
    let r = restrictions(t, &s.relations, b)?;
    let is_system = t.virtual_table.is_some();
    if r.needs_filtering && !s.allow_filtering && !is_system {
        return Err(ServerError::invalid(
            "Cannot execute this query as it might involve data filtering and thus may have unpredictable performance. If you want to execute this query despite the performance unpredictability, use ALLOW FILTERING",
        ));
    }
    let limit = match &s.limit {
        Some(l) => {
            let n = eval_int(l, b, "LIMIT")?;
            if n <= 0 {
                return Err(ServerError::invalid("LIMIT must be strictly positive"));
            }
            n as u32
        }
        None => u32::MAX,
    };
    let per_partition = match &s.per_partition_limit {
        Some(l) => {
            let n = eval_int(l, b, "PER PARTITION LIMIT")?;
            if n <= 0 {
                return Err(ServerError::invalid(
                    "PER PARTITION LIMIT must be strictly positive",
                ));
            }
            n as u32
        }
        None => u32::MAX,
    };
    let reverse = match s.order_by.first() {
        None => false,
        Some(o) => {
            if !r.pk_complete() {
                return Err(ServerError::invalid(
                    "ORDER BY is only supported when the partition key is restricted by an EQ or an IN.",
                ));
            }
            let first = t.clustering.first().ok_or_else(|| {
                ServerError::invalid("ORDER BY is only supported on tables with clustering columns")
            })?;
            if t.columns[*first].name != o.column {
                return Err(ServerError::invalid(format!(
                    "Order by currently only supports the ordering of columns following their declared order in the PRIMARY KEY ({} first)",
                    t.columns[*first].name
                )));
            }
            o.descending != t.columns[*first].descending
        }
    };
    let ks = &schema.keyspaces[&t.keyspace];
    let single_token = if r.pk_complete() {
        let keys = r.partition_keys();
        (keys.len() == 1).then(|| keys[0].token)
    } else {
        None
    };
    check_consistency(ctx.db, ks, single_token, opts.consistency)?;

    let materialized;
    let guard;
    let data: &TableData = match t.virtual_table {
        Some(kind) => {
            materialized = crate::system::materialize(t, kind, schema, &ctx.db.topology, ctx.node);
            &materialized
        }
        None => {
            guard = t.data.read().expect("table lock");
            &guard
        }
    };

    let count_only = projs.is_none();
    let page_size = match opts.page_size {
        Some(n) if n > 0 && !count_only => n as u32,
        _ => u32::MAX,
    };
    let state = match opts.paging_state {
        Some(ps) if !ps.is_empty() => Some(
            PagingState::decode(ps)
                .ok_or_else(|| ServerError::protocol("Invalid value for the paging state"))?,
        ),
        _ => None,
    };
    let mut returned = state.as_ref().map_or(0, |s| s.returned);

    let mut body = Vec::new();
    let mut count: u32 = 0;
    let mut total_counted: i64 = 0;
    let mut last: Option<PagingState> = None;
    let mut more = false;

    // Partitions in order.
    let keys;
    let parts: Box<dyn Iterator<Item = (&PartitionKey, &Partition)>> = if r.pk_complete() {
        keys = r.partition_keys();
        Box::new(keys.iter().filter_map(|k| data.partitions.get_key_value(k)))
    } else {
        match &state {
            Some(st) => Box::new(
                data.partitions
                    .range((Bound::Included(st.pk.clone()), Bound::Unbounded)),
            ),
            None => Box::new(data.partitions.iter()),
        }
    };

    let projs_ref = projs.as_deref();
    let emit = |pk: &PartitionKey,
                row: Option<&Row>,
                statics: Option<&Row>,
                body: &mut Vec<u8>|
     -> Result<(), ServerError> {
        let Some(projs) = projs_ref else {
            return Ok(());
        };
        let pk_parts = if row.is_none() {
            Some(pk.components(t.partition_key.len()))
        } else {
            None
        };
        for p in projs {
            match p {
                Proj::Column(i) => {
                    let col = &t.columns[*i];
                    let v: Option<&[u8]> = match col.kind {
                        ColumnKind::Static => statics.and_then(|s| s.cells[*i].as_deref()),
                        ColumnKind::PartitionKey if row.is_none() => {
                            pk_parts.as_ref().map(|p| &p[col.position as usize][..])
                        }
                        _ => row.and_then(|r| r.cells[*i].as_deref()),
                    };
                    body.put_value(v);
                }
                Proj::WriteTime(i) => {
                    let src = if t.columns[*i].kind == ColumnKind::Static {
                        statics
                    } else {
                        row
                    };
                    match src.filter(|r| r.cells[*i].is_some()) {
                        Some(r) => body.put_value(Some(&r.write_ts[*i].to_be_bytes())),
                        None => body.put_value(None),
                    }
                }
                Proj::Ttl => body.put_value(None),
                Proj::Token => body.put_value(Some(&pk.token.to_be_bytes())),
                Proj::Call { .. } | Proj::Cast { .. } => {
                    let src = Source {
                        t,
                        pk,
                        row,
                        statics,
                    };
                    body.put_value(src.value(p)?.as_deref());
                }
            }
        }
        Ok(())
    };

    'partitions: for (pk, part) in parts {
        let resume_ck = match &state {
            Some(st) if st.pk == *pk => match &st.ck {
                Some(ck) => Some(ck.clone()),
                None => continue, // partition already finished
            },
            Some(st) if *pk < st.pk => continue,
            _ => None,
        };
        let mut in_partition = match &state {
            Some(st) if st.pk == *pk => st.in_partition,
            _ => 0,
        };
        let statics = part.statics.as_ref();
        let pk_cells = |i: usize, row: Option<&Row>| -> Option<Bytes> {
            let col = &t.columns[i];
            match col.kind {
                ColumnKind::PartitionKey => pk
                    .components(t.partition_key.len())
                    .get(col.position as usize)
                    .cloned(),
                ColumnKind::Static => statics.and_then(|s| s.cells[i].clone()),
                _ => row.and_then(|r| r.cells[i].clone()),
            }
        };
        // Partition-level filters (token, partition key, statics) first.
        let partition_filters_ok = r.filters.iter().all(|f| match f {
            Filter::Token { .. } => filter_matches(t, f, pk, &|i| pk_cells(i, None)),
            Filter::Column { idx, .. } => {
                !matches!(
                    t.columns[*idx].kind,
                    ColumnKind::PartitionKey | ColumnKind::Static
                ) || filter_matches(t, f, pk, &|i| pk_cells(i, None))
            }
            Filter::Tuple { .. } => true,
        });
        if !partition_filters_ok {
            continue;
        }
        if s.distinct {
            if part.is_empty() {
                continue;
            }
            if count == page_size || returned == limit {
                more = returned < limit;
                break 'partitions;
            }
            if count_only {
                total_counted += 1;
            } else {
                emit(pk, part.rows.values().next(), statics, &mut body)?;
            }
            count += 1;
            returned += 1;
            last = Some(PagingState {
                pk: pk.clone(),
                ck: None,
                returned,
                in_partition: 0,
            });
            continue;
        }
        // Static-only partition: one row with null clustering columns.
        if part.rows.is_empty() {
            if statics.is_none_or(|s| s.cells.iter().all(Option::is_none)) || r.has_ck_restriction {
                continue;
            }
            let regular_filters_ok = !r.filters.iter().any(
                |f| matches!(f, Filter::Column { idx, .. } if t.columns[*idx].kind == ColumnKind::Regular),
            );
            if !regular_filters_ok {
                continue;
            }
            if count == page_size || returned == limit {
                more = returned < limit;
                break 'partitions;
            }
            if count_only {
                total_counted += 1;
            } else {
                emit(pk, None, statics, &mut body)?;
            }
            count += 1;
            returned += 1;
            last = Some(PagingState {
                pk: pk.clone(),
                ck: None,
                returned,
                in_partition: 0,
            });
            continue;
        }
        // Rows: narrow to the one row when the clustering key is complete.
        let exact = r.full_clustering_key(t);
        let rows: Box<dyn Iterator<Item = (&Vec<u8>, &Row)>> = match (&exact, &resume_ck, reverse) {
            (Some(ck), _, _) => Box::new(part.rows.get_key_value(ck).into_iter()),
            (None, Some(after), false) => Box::new(
                part.rows
                    .range::<Vec<u8>, _>((Bound::Excluded(after), Bound::Unbounded)),
            ),
            (None, Some(before), true) => Box::new(
                part.rows
                    .range::<Vec<u8>, _>((Bound::Unbounded, Bound::Excluded(before)))
                    .rev(),
            ),
            (None, None, false) => Box::new(part.rows.iter()),
            (None, None, true) => Box::new(part.rows.iter().rev()),
        };
        for (ck, row) in rows {
            if exact.is_some() && resume_ck.is_some() {
                break;
            }
            if in_partition >= per_partition {
                break;
            }
            let ok = r.filters.iter().all(|f| match f {
                Filter::Token { .. } => true,
                Filter::Column { idx, .. }
                    if matches!(
                        t.columns[*idx].kind,
                        ColumnKind::PartitionKey | ColumnKind::Static
                    ) =>
                {
                    true
                }
                _ => filter_matches(t, f, pk, &|i| pk_cells(i, Some(row))),
            });
            if !ok {
                continue;
            }
            if count == page_size || returned == limit {
                more = returned < limit;
                break 'partitions;
            }
            if count_only {
                total_counted += 1;
            } else {
                emit(pk, Some(row), statics, &mut body)?;
            }
            count += 1;
            returned += 1;
            in_partition += 1;
            last = Some(PagingState {
                pk: pk.clone(),
                ck: Some(ck.clone()),
                returned,
                in_partition,
            });
        }
    }

    if count_only {
        let mut body = Vec::with_capacity(12);
        body.put_value(Some(&total_counted.to_be_bytes()));
        return Ok(Outcome::Rows(RowsOut {
            meta,
            count: 1,
            body,
            paging_state: None,
        }));
    }
    Ok(Outcome::Rows(RowsOut {
        meta,
        count: count as i32,
        body,
        paging_state: if more { last.map(|l| l.encode()) } else { None },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_state_round_trips() {
        let ps = PagingState {
            pk: PartitionKey::from_components(&[&[0, 0, 0, 7]]),
            ck: Some(vec![1, 2, 3]),
            returned: 10,
            in_partition: 4,
        };
        assert_eq!(PagingState::decode(&ps.encode()), Some(ps.clone()));
        let ps2 = PagingState { ck: None, ..ps };
        assert_eq!(PagingState::decode(&ps2.encode()), Some(ps2));
        assert_eq!(PagingState::decode(&[9, 9]), None);
    }
}
