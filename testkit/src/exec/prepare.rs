//! Preparing: parses a statement, resolves its table, types every bind
//! marker from the column it is compared with or assigned to, and finds the
//! markers bound to the partition key (drivers route by them). The result
//! is the [`Prepared`] statement a node caches, and its id.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use super::Ctx;
use super::result::ColumnSpecs;
use super::select::projection;
use crate::cql::Parsed;
use crate::cql::ast::{self, Operator, RelationLhs, Statement, Term};
use crate::db::StatementStats;
use crate::error::ServerError;
use crate::fault::StatementKind;
use crate::frame::WriteExt;
use crate::schema::Table;
use crate::types::CqlType;

use super::{statement_kind, statement_table};

/// A prepared statement as one node caches it.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) id: [u8; 16],
    pub(crate) text: Arc<str>,
    pub(crate) keyspace: Option<String>,
    pub(crate) parsed: Parsed,
    pub(crate) markers: Arc<ColumnSpecs>,
    pub(crate) pk_indexes: Vec<u16>,
    /// The rows metadata of a SELECT.
    pub(crate) select: Option<Arc<ColumnSpecs>>,
    /// The schema generation it was planned against.
    pub(crate) generation: u64,
    pub(crate) stats: Arc<StatementStats>,
    pub(crate) target: Option<(String, String)>,
    pub(crate) kind: Option<StatementKind>,
}

impl Prepared {
    /// Writes the RESULT body (kind Prepared).
    pub(crate) fn write(&self, out: &mut BytesMut) {
        out.put_i32(4);
        out.put_short_bytes(&self.id);
        out.put_i32(if self.markers.global { 1 } else { 0 });
        out.put_i32(self.markers.count as i32);
        out.put_i32(self.pk_indexes.len() as i32);
        for i in &self.pk_indexes {
            out.put_u16(*i);
        }
        out.put_slice(&self.markers.encoded);
        match &self.select {
            Some(r) => {
                out.put_i32(if r.global { 1 } else { 0 });
                out.put_i32(r.count as i32);
                out.put_slice(&r.encoded);
            }
            None => {
                out.put_i32(0x0004);
                out.put_i32(0);
            }
        }
    }
}

/// The id of a statement text prepared in a keyspace.
pub(crate) fn prepared_id(keyspace: Option<&str>, text: &str) -> [u8; 16] {
    use std::hash::{Hash, Hasher};
    let mut a = std::collections::hash_map::DefaultHasher::new();
    (keyspace, text).hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    (text, keyspace, 7u8).hash(&mut b);
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&a.finish().to_be_bytes());
    id[8..].copy_from_slice(&b.finish().to_be_bytes());
    id
}

/// Prepares `text`: parses, resolves and types its markers.
pub(crate) fn prepare(ctx: &Ctx<'_>, text: &str) -> Result<Prepared, ServerError> {
    let parsed = crate::cql::parse(text).map_err(|e| ServerError::syntax(e.to_string()))?;
    let schema = ctx.db.schema.load();
    let mut markers: Vec<Option<(String, String, String, CqlType)>> = vec![None; parsed.bind_count];
    let mut pk_indexes = Vec::new();
    let mut result = None;
    let mut target = None;
    match &parsed.statement {
        Statement::Batch(b) => {
            for s in &b.statements {
                let t = ctx.table(
                    &schema,
                    statement_table(s).expect("batch statements name a table"),
                )?;
                type_markers(&t, s, &mut markers)?;
            }
        }
        Statement::Select(_)
        | Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_) => {
            let stmt = &parsed.statement;
            let t = ctx.table(&schema, statement_table(stmt).expect("DML names a table"))?;
            type_markers(&t, stmt, &mut markers)?;
            pk_indexes = partition_key_markers(&t, stmt);
            if let Statement::Select(s) = stmt {
                result = Some(projection(&t, s)?.1);
            }
            target = Some((t.keyspace.clone(), t.name.clone()));
        }
        _ => {}
    }
    let markers = markers
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            m.ok_or_else(|| {
                ServerError::invalid(format!(
                    "Cannot infer the type of bind marker {i}: testkit types markers in WHERE, VALUES, SET, IF, LIMIT and USING"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let specs: Vec<(&str, &str, &str, &CqlType)> = markers
        .iter()
        .map(|(k, t, n, ty)| (k.as_str(), t.as_str(), n.as_str(), ty))
        .collect();
    let keyspace = ctx.keyspace.map(str::to_string);
    Ok(Prepared {
        id: prepared_id(ctx.keyspace, text),
        text: Arc::from(text),
        keyspace,
        kind: statement_kind(&parsed.statement),
        markers: Arc::new(ColumnSpecs::new(&specs)),
        pk_indexes,
        select: result.map(Arc::new),
        generation: schema.generation,
        stats: ctx.db.counters.statement(text),
        target,
        parsed,
    })
}

type MarkerSlot = Option<(String, String, String, CqlType)>;

fn set_marker(markers: &mut [MarkerSlot], t: &Table, term: &Term, name: &str, ty: CqlType) {
    match term {
        Term::Bind { index, .. } => {
            if let Some(slot) = markers.get_mut(*index) {
                *slot = Some((t.keyspace.clone(), t.name.clone(), name.to_string(), ty));
            }
        }
        Term::Literal(ast::Literal::List(items) | ast::Literal::Set(items)) => {
            let elem = match &ty {
                CqlType::List(e) | CqlType::Set(e) => Some((**e).clone()),
                _ => None,
            };
            if let CqlType::Tuple(ts) = &ty {
                for (item, ty) in items.iter().zip(ts) {
                    set_marker(markers, t, item, name, ty.clone());
                }
            } else if let Some(e) = elem {
                for item in items {
                    set_marker(markers, t, item, name, e.clone());
                }
            }
        }
        Term::Function { name: f, args } => {
            if let Some(tys) = crate::functions::unique_arg_types(f, args.len()) {
                for (i, (arg, ty)) in args.iter().zip(tys).enumerate() {
                    set_marker(markers, t, arg, &format!("arg{i}(system.{f})"), ty);
                }
            }
        }
        Term::Literal(ast::Literal::Map(items)) => {
            if let CqlType::Map(k, v) = &ty {
                for (a, b) in items {
                    set_marker(markers, t, a, name, (**k).clone());
                    set_marker(markers, t, b, name, (**v).clone());
                }
            }
        }
        _ => {}
    }
}

fn relation_markers(
    t: &Table,
    rels: &[ast::Relation],
    markers: &mut [MarkerSlot],
) -> Result<(), ServerError> {
    for r in rels {
        match &r.lhs {
            RelationLhs::Column(c) => {
                let col = &t.columns[t.column(c)?];
                let ty = match r.op {
                    Operator::Contains => match &col.ty {
                        CqlType::List(e) | CqlType::Set(e) | CqlType::Map(_, e) => (**e).clone(),
                        _ => col.ty.clone(),
                    },
                    Operator::ContainsKey => match &col.ty {
                        CqlType::Map(k, _) => (**k).clone(),
                        _ => col.ty.clone(),
                    },
                    _ => col.ty.clone(),
                };
                if let Some(rhs) = &r.rhs {
                    set_marker(markers, t, rhs, &col.name, ty.clone());
                }
                match &r.in_values {
                    Some(ast::InValues::List(items)) => {
                        for i in items {
                            set_marker(markers, t, i, &col.name, ty.clone());
                        }
                    }
                    Some(ast::InValues::Marker(m)) => set_marker(
                        markers,
                        t,
                        m,
                        &format!("in({})", col.name),
                        CqlType::List(Box::new(ty)),
                    ),
                    None => {}
                }
            }
            RelationLhs::Token(_) => {
                if let Some(rhs) = &r.rhs {
                    set_marker(markers, t, rhs, "partition key token", CqlType::BigInt);
                }
            }
            RelationLhs::Tuple(cols) => {
                let tys = cols
                    .iter()
                    .map(|c| Ok(t.columns[t.column(c)?].ty.clone()))
                    .collect::<Result<Vec<_>, ServerError>>()?;
                let name = format!("({})", cols.join(","));
                if let Some(rhs) = &r.rhs {
                    set_marker(markers, t, rhs, &name, CqlType::Tuple(tys.clone()));
                }
                if let Some(ast::InValues::List(items)) = &r.in_values {
                    for i in items {
                        set_marker(markers, t, i, &name, CqlType::Tuple(tys.clone()));
                    }
                }
            }
        }
    }
    Ok(())
}

fn using_markers(t: &Table, u: &ast::Using, markers: &mut [MarkerSlot]) {
    if let Some(ttl) = &u.ttl {
        set_marker(markers, t, ttl, "[ttl]", CqlType::Int);
    }
    if let Some(ts) = &u.timestamp {
        set_marker(markers, t, ts, "[timestamp]", CqlType::BigInt);
    }
}

fn condition_markers(
    t: &Table,
    c: &Option<ast::Condition>,
    markers: &mut [MarkerSlot],
) -> Result<(), ServerError> {
    if let Some(ast::Condition::Columns(conds)) = c {
        for cc in conds {
            let col = &t.columns[t.column(&cc.column)?];
            let ty = if cc.op == Operator::In {
                CqlType::List(Box::new(col.ty.clone()))
            } else {
                col.ty.clone()
            };
            set_marker(markers, t, &cc.value, &col.name, ty);
        }
    }
    Ok(())
}

fn type_markers(
    t: &Table,
    stmt: &Statement,
    markers: &mut [MarkerSlot],
) -> Result<(), ServerError> {
    match stmt {
        Statement::Select(s) => {
            relation_markers(t, &s.relations, markers)?;
            if let Some(l) = &s.limit {
                set_marker(markers, t, l, "[limit]", CqlType::Int);
            }
            if let Some(l) = &s.per_partition_limit {
                set_marker(markers, t, l, "[per_partition_limit]", CqlType::Int);
            }
        }
        Statement::Insert(i) => {
            for (c, v) in i.columns.iter().zip(&i.values) {
                let col = &t.columns[t.column(c)?];
                set_marker(markers, t, v, &col.name, col.ty.clone());
            }
            using_markers(t, &i.using, markers);
        }
        Statement::Update(u) => {
            using_markers(t, &u.using, markers);
            for a in &u.assignments {
                match a {
                    ast::Assignment::Set { column, value } => {
                        let col = &t.columns[t.column(column)?];
                        set_marker(markers, t, value, &col.name, col.ty.clone());
                    }
                    ast::Assignment::Add { column, value }
                    | ast::Assignment::Prepend { column, value }
                    | ast::Assignment::Remove { column, value } => {
                        let col = &t.columns[t.column(column)?];
                        let ty = match (&col.ty, a) {
                            (CqlType::Counter, _) => CqlType::Counter,
                            (CqlType::Map(k, _), ast::Assignment::Remove { .. }) => {
                                CqlType::Set(k.clone())
                            }
                            (ty, _) => ty.clone(),
                        };
                        set_marker(markers, t, value, &col.name, ty);
                    }
                    ast::Assignment::SetElement { column, key, value } => {
                        let col = &t.columns[t.column(column)?];
                        let (kt, vt) = match &col.ty {
                            CqlType::Map(k, v) => ((**k).clone(), (**v).clone()),
                            CqlType::List(e) => (CqlType::Int, (**e).clone()),
                            other => (CqlType::Int, other.clone()),
                        };
                        set_marker(markers, t, key, &format!("key({})", col.name), kt);
                        set_marker(markers, t, value, &format!("value({})", col.name), vt);
                    }
                }
            }
            relation_markers(t, &u.relations, markers)?;
            condition_markers(t, &u.condition, markers)?;
        }
        Statement::Delete(d) => {
            for target in &d.targets {
                if let ast::DeleteTarget::Element { column, key } = target {
                    let col = &t.columns[t.column(column)?];
                    let kt = match &col.ty {
                        CqlType::Map(k, _) => (**k).clone(),
                        _ => CqlType::Int,
                    };
                    set_marker(markers, t, key, &format!("key({})", col.name), kt);
                }
            }
            using_markers(t, &d.using, markers);
            relation_markers(t, &d.relations, markers)?;
            condition_markers(t, &d.condition, markers)?;
        }
        _ => {}
    }
    Ok(())
}

/// The marker index bound to each partition key column by `=`, if every
/// partition key column has one (drivers route by it).
fn partition_key_markers(t: &Table, stmt: &Statement) -> Vec<u16> {
    let rels = match stmt {
        Statement::Select(s) => &s.relations,
        Statement::Update(u) => &u.relations,
        Statement::Delete(d) => &d.relations,
        Statement::Insert(i) => {
            return t
                .partition_key
                .iter()
                .map(|&pk| {
                    i.columns
                        .iter()
                        .position(|c| *c == t.columns[pk].name)
                        .and_then(|p| match &i.values[p] {
                            Term::Bind { index, .. } => Some(*index as u16),
                            _ => None,
                        })
                })
                .collect::<Option<Vec<_>>>()
                .unwrap_or_default();
        }
        _ => return Vec::new(),
    };
    t.partition_key
        .iter()
        .map(|&pk| {
            rels.iter().find_map(|r| match (&r.lhs, r.op, &r.rhs) {
                (RelationLhs::Column(c), Operator::Eq, Some(Term::Bind { index, .. }))
                    if *c == t.columns[pk].name =>
                {
                    Some(*index as u16)
                }
                _ => None,
            })
        })
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default()
}
