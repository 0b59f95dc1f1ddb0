//! Restrictions: turns a WHERE clause into the partition keys it names,
//! the clustering values it fixes and the filters left to check row by
//! row (and whether they need ALLOW FILTERING); and checks a filter
//! against a row. SELECT, UPDATE and DELETE all read their WHERE through
//! here, and conditional writes compare with [`compare_op`].

use std::cmp::Ordering as CmpOrdering;

use bytes::Bytes;

use super::bind::{eval_list, eval_value};
use crate::cql::ast::{self, Operator, RelationLhs};
use crate::error::ServerError;
use crate::schema::{ColumnKind, PartitionKey, Table};
use crate::types::{self, Binder, CqlType};

#[derive(Debug)]
pub(super) enum Filter {
    Column {
        idx: usize,
        op: Operator,
        values: Vec<Bytes>,
    },
    Tuple {
        idxs: Vec<usize>,
        op: Operator,
        values: Vec<Option<Bytes>>,
    },
    Token {
        op: Operator,
        value: i64,
    },
}

#[derive(Debug, Default)]
pub(super) struct Restrictions {
    /// Values per partition key column (Eq → one, In → several).
    pub(super) pk: Vec<Option<Vec<Bytes>>>,
    /// Values per clustering column restricted by Eq/In, in key order.
    pub(super) ck_eq: Vec<Option<Vec<Bytes>>>,
    pub(super) filters: Vec<Filter>,
    /// A restriction needs ALLOW FILTERING.
    pub(super) needs_filtering: bool,
    pub(super) has_ck_restriction: bool,
}

impl Restrictions {
    pub(super) fn pk_complete(&self) -> bool {
        self.pk.iter().all(Option::is_some)
    }

    /// All partition keys named by Eq/In, sorted.
    pub(super) fn partition_keys(&self) -> Vec<PartitionKey> {
        let mut keys: Vec<Vec<&[u8]>> = vec![vec![]];
        for vals in &self.pk {
            let vals = vals.as_ref().expect("complete");
            keys = keys
                .into_iter()
                .flat_map(|prefix| {
                    vals.iter().map(move |v| {
                        let mut p = prefix.clone();
                        p.push(&v[..]);
                        p
                    })
                })
                .collect();
        }
        let mut out: Vec<PartitionKey> = keys
            .iter()
            .map(|k| PartitionKey::from_components(k))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The full clustering sort key when every clustering column has one Eq value.
    pub(super) fn full_clustering_key(&self, t: &Table) -> Option<Vec<u8>> {
        let mut ck = Vec::new();
        for (pos, &ci) in t.clustering.iter().enumerate() {
            let vals = self.ck_eq.get(pos)?.as_ref()?;
            if vals.len() != 1 {
                return None;
            }
            let col = &t.columns[ci];
            col.ty.sort_key(&vals[0], col.descending, &mut ck);
        }
        Some(ck)
    }
}

pub(super) fn restrictions(
    t: &Table,
    rels: &[ast::Relation],
    b: &dyn Binder,
) -> Result<Restrictions, ServerError> {
    let mut r = Restrictions {
        pk: vec![None; t.partition_key.len()],
        ck_eq: vec![None; t.clustering.len()],
        ..Restrictions::default()
    };
    let mut ck_range_at: Option<usize> = None;
    // A relation answered through a secondary index (Cassandra uses one)
    // needs no ALLOW FILTERING; testkit scans, which is the same answer.
    let mut index_used = false;
    for rel in rels {
        match &rel.lhs {
            RelationLhs::Column(c) => {
                let idx = t.column(c)?;
                let col = &t.columns[idx];
                let values = match (rel.op, &rel.in_values, &rel.rhs) {
                    (Operator::In, Some(ast::InValues::List(items)), _) => items
                        .iter()
                        .map(|i| eval_value(&col.ty, i, b, &format!("IN value of {c}")))
                        .collect::<Result<Vec<_>, _>>()?,
                    (Operator::In, Some(ast::InValues::Marker(m)), _) => {
                        eval_list(&col.ty, m, b, &format!("in({c})"))?
                    }
                    (Operator::Contains, _, Some(rhs)) => {
                        let e = match &col.ty {
                            CqlType::List(e) | CqlType::Set(e) | CqlType::Map(_, e) => e,
                            _ => {
                                return Err(ServerError::invalid(format!(
                                    "Cannot use CONTAINS on non-collection column {c}"
                                )));
                            }
                        };
                        vec![eval_value(e, rhs, b, c)?]
                    }
                    (Operator::ContainsKey, _, Some(rhs)) => {
                        let CqlType::Map(k, _) = &col.ty else {
                            return Err(ServerError::invalid(format!(
                                "Cannot use CONTAINS KEY on non-map column {c}"
                            )));
                        };
                        vec![eval_value(k, rhs, b, c)?]
                    }
                    (_, _, Some(rhs)) => vec![eval_value(&col.ty, rhs, b, c)?],
                    _ => return Err(ServerError::invalid(format!("Invalid relation on {c}"))),
                };
                match (col.kind, rel.op) {
                    (ColumnKind::PartitionKey, Operator::Eq | Operator::In) => {
                        let slot = &mut r.pk[col.position as usize];
                        if slot.is_some() {
                            return Err(ServerError::invalid(format!(
                                "{c} cannot be restricted by more than one relation if it includes an Equal"
                            )));
                        }
                        *slot = Some(values);
                    }
                    (ColumnKind::Clustering, Operator::Eq | Operator::In) => {
                        r.has_ck_restriction = true;
                        r.ck_eq[col.position as usize] = Some(values.clone());
                        r.filters.push(Filter::Column {
                            idx,
                            op: rel.op,
                            values,
                        });
                    }
                    (
                        ColumnKind::Clustering,
                        Operator::Lt | Operator::Le | Operator::Gt | Operator::Ge,
                    ) => {
                        r.has_ck_restriction = true;
                        match ck_range_at {
                            Some(p) if p != col.position as usize => r.needs_filtering = true,
                            _ => ck_range_at = Some(col.position as usize),
                        }
                        r.filters.push(Filter::Column {
                            idx,
                            op: rel.op,
                            values,
                        });
                    }
                    _ => {
                        let by_index = !index_used
                            && t.is_indexed(idx)
                            && matches!(
                                rel.op,
                                Operator::Eq | Operator::Contains | Operator::ContainsKey
                            );
                        if by_index {
                            index_used = true;
                        } else {
                            r.needs_filtering = true;
                        }
                        r.filters.push(Filter::Column {
                            idx,
                            op: rel.op,
                            values,
                        });
                    }
                }
            }
            RelationLhs::Token(cols) => {
                t.check_token_args(cols, "in the partition key order")?;
                let rhs = rel
                    .rhs
                    .as_ref()
                    .ok_or_else(|| ServerError::invalid("token() needs a value"))?;
                let v = eval_value(&CqlType::BigInt, rhs, b, "token")?;
                let value = i64::from_be_bytes(
                    v[..]
                        .try_into()
                        .map_err(|_| ServerError::invalid("Invalid token value"))?,
                );
                r.filters.push(Filter::Token { op: rel.op, value });
            }
            RelationLhs::Tuple(cols) => {
                let idxs = cols
                    .iter()
                    .map(|c| t.column(c))
                    .collect::<Result<Vec<_>, _>>()?;
                for (pos, &i) in idxs.iter().enumerate() {
                    if t.columns[i].kind != ColumnKind::Clustering
                        || t.columns[i].position as usize != pos
                    {
                        return Err(ServerError::invalid(
                            "Multi-column relations can only be applied to clustering columns, in order",
                        ));
                    }
                }
                let tys: Vec<CqlType> = idxs.iter().map(|&i| t.columns[i].ty.clone()).collect();
                let rhs = rel
                    .rhs
                    .as_ref()
                    .ok_or_else(|| ServerError::invalid("tuple relation needs a value"))?;
                let v = eval_value(&CqlType::Tuple(tys), rhs, b, "tuple")?;
                let mut rd = crate::frame::Reader::new(&v);
                let values = (0..idxs.len())
                    .map(|_| {
                        rd.bytes_opt()
                            .map(|o| o.map(Bytes::copy_from_slice))
                            .unwrap_or(None)
                    })
                    .collect();
                r.has_ck_restriction = true;
                r.filters.push(Filter::Tuple {
                    idxs,
                    op: rel.op,
                    values,
                });
            }
        }
    }
    // Clustering restrictions must form a prefix: Eq/In on ck[0..k), then one range.
    let eq_prefix = r.ck_eq.iter().take_while(|v| v.is_some()).count();
    if r.ck_eq.iter().skip(eq_prefix).any(Option::is_some)
        || ck_range_at.is_some_and(|p| p > eq_prefix)
    {
        r.needs_filtering = true;
    }
    let pk_some = r.pk.iter().filter(|v| v.is_some()).count();
    if pk_some > 0 && pk_some < r.pk.len() {
        r.needs_filtering = true;
    }
    if !r.pk_complete() && r.has_ck_restriction {
        r.needs_filtering = true;
    }
    // `WHERE c = ?` alone on an indexed clustering column.
    if let [rel] = rels
        && let RelationLhs::Column(c) = &rel.lhs
        && rel.op == Operator::Eq
        && t.by_name
            .get(c)
            .is_some_and(|&i| t.columns[i].kind == ColumnKind::Clustering && t.is_indexed(i))
    {
        r.needs_filtering = false;
    }
    Ok(r)
}

pub(super) fn compare_op(op: Operator, ord: CmpOrdering) -> bool {
    match op {
        Operator::Eq | Operator::In => ord == CmpOrdering::Equal,
        Operator::Ne => ord != CmpOrdering::Equal,
        Operator::Lt => ord == CmpOrdering::Less,
        Operator::Le => ord != CmpOrdering::Greater,
        Operator::Gt => ord == CmpOrdering::Greater,
        Operator::Ge => ord != CmpOrdering::Less,
        Operator::Contains | Operator::ContainsKey => false,
    }
}

pub(super) fn filter_matches(
    t: &Table,
    f: &Filter,
    pk: &PartitionKey,
    cells: &dyn Fn(usize) -> Option<Bytes>,
) -> bool {
    match f {
        Filter::Token { op, value } => compare_op(*op, pk.token.cmp(value)),
        Filter::Column { idx, op, values } => {
            let ty = &t.columns[*idx].ty;
            let Some(cell) = cells(*idx) else {
                return *op == Operator::Ne;
            };
            match op {
                Operator::In | Operator::Eq => values
                    .iter()
                    .any(|v| ty.compare(&cell, v) == CmpOrdering::Equal),
                Operator::Contains => {
                    let (elem, is_map) = match ty {
                        CqlType::List(e) | CqlType::Set(e) => (e, false),
                        CqlType::Map(_, e) => (e, true),
                        _ => return false,
                    };
                    if is_map {
                        types::collection_elements_pairs(&cell)
                            .map(|es| {
                                es.iter().any(|(_, v)| {
                                    v.is_some_and(|v| elem.compare(v, &values[0]).is_eq())
                                })
                            })
                            .unwrap_or(false)
                    } else {
                        types::collection_elements(&cell)
                            .map(|es| {
                                es.iter()
                                    .any(|v| v.is_some_and(|v| elem.compare(v, &values[0]).is_eq()))
                            })
                            .unwrap_or(false)
                    }
                }
                Operator::ContainsKey => {
                    let CqlType::Map(k, _) = ty else { return false };
                    types::collection_elements_pairs(&cell)
                        .map(|es| {
                            es.iter().any(|(key, _)| {
                                key.is_some_and(|key| k.compare(key, &values[0]).is_eq())
                            })
                        })
                        .unwrap_or(false)
                }
                op => compare_op(*op, ty.compare(&cell, &values[0])),
            }
        }
        Filter::Tuple { idxs, op, values } => {
            let mut ord = CmpOrdering::Equal;
            for (i, v) in idxs.iter().zip(values) {
                let col = &t.columns[*i];
                let cell = cells(*i);
                let o = match (cell, v) {
                    (Some(c), Some(v)) => col.ty.compare(&c, v),
                    (None, Some(_)) => CmpOrdering::Less,
                    (Some(_), None) => CmpOrdering::Greater,
                    (None, None) => CmpOrdering::Equal,
                };
                let o = if col.descending { o.reverse() } else { o };
                if o != CmpOrdering::Equal {
                    ord = o;
                    break;
                }
            }
            // tuple comparisons follow clustering order
            compare_op(*op, ord)
        }
    }
}
