//! The executor: prepares statements, type-checks them against the schema,
//! and runs them on the in-memory store.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{BufMut, Bytes, BytesMut};

use crate::cql::Parsed;
use crate::cql::ast::{self, Operator, RelationLhs, Statement, Term};
use crate::db::{Database, Event, SchemaChange, StatementStats};
use crate::error::{Consistency, ServerError};
use crate::fault::StatementKind;
use crate::frame::{Value, WriteExt};
use crate::schema::{ColumnKind, Keyspace, Partition, PartitionKey, Row, Schema, Table, TableData};
use crate::types::{self, Binder, BoundValue, CqlType, Evaluated, evaluate};

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

/// The column specs of a rows result or a prepared statement's markers.
#[derive(Debug)]
pub(crate) struct ColumnSpecs {
    /// The `[flags][count]...[specs]` part after the flags and count, i.e.
    /// the global table spec (if any) and the column specs, pre-encoded.
    pub(crate) encoded: Bytes,
    pub(crate) global: bool,
    pub(crate) count: usize,
}

impl ColumnSpecs {
    fn new(cols: &[(&str, &str, &str, &CqlType)]) -> ColumnSpecs {
        let global = cols
            .first()
            .is_none_or(|f| cols.iter().all(|c| c.0 == f.0 && c.1 == f.1));
        let mut out = BytesMut::new();
        if let (true, Some(f)) = (global, cols.first()) {
            out.put_string(f.0);
            out.put_string(f.1);
        }
        for (ks, table, name, ty) in cols {
            if !global {
                out.put_string(ks);
                out.put_string(table);
            }
            out.put_string(name);
            ty.write_option(&mut out);
        }
        ColumnSpecs {
            encoded: out.freeze(),
            global: global && !cols.is_empty(),
            count: cols.len(),
        }
    }
}

/// The outcome of one statement.
#[derive(Debug)]
pub(crate) enum Outcome {
    Void,
    Rows(RowsOut),
    SetKeyspace(String),
    SchemaChange(SchemaChange),
}

/// A rows result.
#[derive(Debug)]
pub(crate) struct RowsOut {
    pub(crate) meta: Arc<ColumnSpecs>,
    pub(crate) count: i32,
    pub(crate) body: Vec<u8>,
    pub(crate) paging_state: Option<Vec<u8>>,
}

impl RowsOut {
    /// Writes the RESULT body (kind Rows).
    pub(crate) fn write(&self, out: &mut BytesMut, skip_metadata: bool) {
        out.put_i32(2);
        let mut flags = 0;
        if self.meta.global {
            flags |= 0x01;
        }
        if self.paging_state.is_some() {
            flags |= 0x02;
        }
        if skip_metadata {
            flags |= 0x04;
        }
        out.put_i32(flags);
        out.put_i32(self.meta.count as i32);
        if let Some(ps) = &self.paging_state {
            out.put_value(Some(ps));
        }
        if !skip_metadata {
            out.put_slice(&self.meta.encoded);
        }
        out.put_i32(self.count);
        out.put_slice(&self.body);
    }
}

// ---------------------------------------------------------------------------
// Binding
// ---------------------------------------------------------------------------

/// The values bound to a statement's markers.
#[derive(Debug)]
pub(crate) struct Values<'a> {
    values: &'a [Value<'a>],
    order: Option<Vec<usize>>,
}

impl<'a> Values<'a> {
    pub(crate) fn new(
        parsed: &Parsed,
        values: &'a [Value<'a>],
        names: Option<&[&str]>,
    ) -> Result<Values<'a>, ServerError> {
        if values.len() != parsed.bind_count {
            return Err(ServerError::invalid(format!(
                "There were {} markers(?) in CQL but {} bound variables",
                parsed.bind_count,
                values.len()
            )));
        }
        let order = match names {
            None => None,
            Some(names) => Some(
                parsed
                    .bind_names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let n = n.as_deref().ok_or_else(|| {
                            ServerError::invalid(format!(
                                "Bind marker {i} has no name but values were sent by name"
                            ))
                        })?;
                        names
                            .iter()
                            .position(|x| x.eq_ignore_ascii_case(n))
                            .ok_or_else(|| {
                                ServerError::invalid(format!(
                                    "No value was bound for the named marker :{n}"
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Values { values, order })
    }
}

impl Binder for Values<'_> {
    fn bound(&self, index: usize) -> Result<BoundValue<'_>, String> {
        let i = match &self.order {
            Some(o) => *o.get(index).ok_or("bind marker out of range")?,
            None => index,
        };
        Ok(
            match self.values.get(i).ok_or("bind marker out of range")? {
                Value::Bytes(b) => BoundValue::Value(b),
                Value::Null => BoundValue::Null,
                Value::Unset => BoundValue::Unset,
            },
        )
    }
}

fn eval(ty: &CqlType, term: &Term, b: &dyn Binder) -> Result<Evaluated, ServerError> {
    evaluate(ty, term, b).map_err(ServerError::invalid)
}

fn eval_value(ty: &CqlType, term: &Term, b: &dyn Binder, what: &str) -> Result<Bytes, ServerError> {
    match eval(ty, term, b)? {
        Evaluated::Value(v) => Ok(v),
        Evaluated::Null => Err(ServerError::invalid(format!(
            "Invalid null value for {what}"
        ))),
        Evaluated::Unset => Err(ServerError::invalid(format!(
            "Invalid unset value for {what}"
        ))),
    }
}

fn eval_int(term: &Term, b: &dyn Binder, what: &str) -> Result<i32, ServerError> {
    let v = eval_value(&CqlType::Int, term, b, what)?;
    Ok(i32::from_be_bytes(v[..4].try_into().map_err(|_| {
        ServerError::invalid(format!("Invalid {what}"))
    })?))
}

fn eval_list(
    ty: &CqlType,
    term: &Term,
    b: &dyn Binder,
    what: &str,
) -> Result<Vec<Bytes>, ServerError> {
    let list_ty = CqlType::List(Box::new(ty.clone()));
    let v = eval_value(&list_ty, term, b, what)?;
    types::collection_elements(&v)
        .map_err(ServerError::invalid)?
        .into_iter()
        .map(|e| {
            e.map(Bytes::copy_from_slice)
                .ok_or_else(|| ServerError::invalid("null inside IN list"))
        })
        .collect()
}

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

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
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

// ---------------------------------------------------------------------------
// Prepared statements
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Projection
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Proj {
    Column(usize),
    WriteTime(usize),
    Token,
    Ttl,
}

fn projection(t: &Table, s: &ast::Select) -> Result<(Option<Vec<Proj>>, ColumnSpecs), ServerError> {
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
                let (p, name, ty) = match &sel.kind {
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
                        let expected: Vec<&str> = t
                            .partition_key
                            .iter()
                            .map(|&i| t.columns[i].name.as_str())
                            .collect();
                        if cols.iter().map(String::as_str).ne(expected.iter().copied()) {
                            return Err(ServerError::invalid(format!(
                                "The token function arguments must be the partition key columns in order: token({})",
                                expected.join(", ")
                            )));
                        }
                        (
                            Proj::Token,
                            format!("system.token({})", cols.join(", ")),
                            CqlType::BigInt,
                        )
                    }
                };
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

// ---------------------------------------------------------------------------
// Restrictions
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum Filter {
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
struct Restrictions {
    /// Values per partition key column (Eq → one, In → several).
    pk: Vec<Option<Vec<Bytes>>>,
    /// Values per clustering column restricted by Eq/In, in key order.
    ck_eq: Vec<Option<Vec<Bytes>>>,
    filters: Vec<Filter>,
    /// A restriction needs ALLOW FILTERING.
    needs_filtering: bool,
    has_ck_restriction: bool,
}

impl Restrictions {
    fn pk_complete(&self) -> bool {
        self.pk.iter().all(Option::is_some)
    }

    /// All partition keys named by Eq/In, sorted.
    fn partition_keys(&self) -> Vec<PartitionKey> {
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
    fn full_clustering_key(&self, t: &Table) -> Option<Vec<u8>> {
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

fn restrictions(
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
                        r.needs_filtering = true;
                        r.filters.push(Filter::Column {
                            idx,
                            op: rel.op,
                            values,
                        });
                    }
                }
            }
            RelationLhs::Token(cols) => {
                let expected: Vec<&str> = t
                    .partition_key
                    .iter()
                    .map(|&i| t.columns[i].name.as_str())
                    .collect();
                if cols.iter().map(String::as_str).ne(expected.iter().copied()) {
                    return Err(ServerError::invalid(format!(
                        "The token function arguments must be in the partition key order: token({})",
                        expected.join(", ")
                    )));
                }
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
    Ok(r)
}

fn compare_op(op: Operator, ord: CmpOrdering) -> bool {
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

fn filter_matches(
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
// SELECT
// ---------------------------------------------------------------------------

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

/// Runs a SELECT.
fn select(
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
        Some(m) => m.clone(),
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
    let emit = |pk: &PartitionKey, row: Option<&Row>, statics: Option<&Row>, body: &mut Vec<u8>| {
        let Some(projs) = projs_ref else { return };
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
            }
        }
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
                emit(pk, part.rows.values().next(), statics, &mut body);
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
                emit(pk, None, statics, &mut body);
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
                emit(pk, Some(row), statics, &mut body);
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

// ---------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum CellOp {
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
enum RowTarget {
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
struct Mutation {
    table: Arc<Table>,
    pk: PartitionKey,
    target: RowTarget,
    /// (column, op); for INSERT/UPDATE also the key cells.
    cells: Vec<(usize, CellOp)>,
    /// Whether the target row is created even without cells (INSERT).
    row_marker: bool,
    delete_row: bool,
    ts: i64,
}

#[derive(Debug)]
struct LwtCheck {
    condition: ast::Condition,
    table: Arc<Table>,
    pk: PartitionKey,
    ck: Vec<u8>,
}

fn write_timestamp(u: &ast::Using, b: &dyn Binder, opts: &Options<'_>) -> Result<i64, ServerError> {
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
fn plan_write(
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
                let v = eval(&col.ty, term, b)?;
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
                        match eval(&col.ty, value, b)? {
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
                                match eval(v, value, b)? {
                                    Evaluated::Value(val) => (i, CellOp::MapPut(vec![(key, val)])),
                                    _ => (i, CellOp::MapRemove(vec![key])),
                                }
                            }
                            CqlType::List(e) => {
                                let idx = eval_int(key, b, column)?;
                                (
                                    i,
                                    CellOp::ListSetIndex(idx, eval(e, value, b)?.into_option()),
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

fn apply_cell(
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
            for (i, op) in &m.cells {
                if let Err(e) = apply_cell(
                    &t.columns[*i].ty,
                    &mut statics.cells[*i],
                    &mut statics.write_ts[*i],
                    op,
                    m.ts,
                ) {
                    result = Err(e);
                }
            }
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
                    for (i, op) in m
                        .cells
                        .iter()
                        .filter(|(i, _)| t.columns[*i].kind == ColumnKind::Static)
                    {
                        if let Err(e) = apply_cell(
                            &t.columns[*i].ty,
                            &mut statics.cells[*i],
                            &mut statics.write_ts[*i],
                            op,
                            m.ts,
                        ) {
                            result = Err(e);
                        }
                    }
                }
                let existed = part.rows.contains_key(ck);
                let row = part
                    .rows
                    .entry(ck.clone())
                    .or_insert_with(|| Row::empty(ncols));
                for (i, op) in m
                    .cells
                    .iter()
                    .filter(|(i, _)| t.columns[*i].kind != ColumnKind::Static)
                {
                    if let Err(e) = apply_cell(
                        &t.columns[*i].ty,
                        &mut row.cells[*i],
                        &mut row.write_ts[*i],
                        op,
                        m.ts,
                    ) {
                        result = Err(e);
                    }
                }
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
                    match (eval(&col.ty, &c.value, b)?.into_option(), cell) {
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

fn lwt_outcome(t: &Table, applied: bool, row: Option<Row>) -> Outcome {
    let ks = t.keyspace.as_str();
    let tn = t.name.as_str();
    let mut specs: Vec<(&str, &str, &str, &CqlType)> =
        vec![(ks, tn, "[applied]", &CqlType::Boolean)];
    let mut body = Vec::new();
    body.put_value(Some(&[u8::from(applied)]));
    if let (false, Some(row)) = (applied, &row) {
        for (i, c) in t.columns.iter().enumerate() {
            specs.push((ks, tn, c.name.as_str(), &c.ty));
            body.put_value(row.cells[i].as_deref());
        }
    }
    Outcome::Rows(RowsOut {
        meta: Arc::new(ColumnSpecs::new(&specs)),
        count: 1,
        body,
        paging_state: None,
    })
}

/// Applies a list of mutations atomically (one table lock at a time, in
/// table order, all validated before the first is applied).
fn apply_all(
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
        return Ok(Some(lwt_outcome(&check.table, applied, row)));
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

// ---------------------------------------------------------------------------
// DDL
// ---------------------------------------------------------------------------

fn ddl(ctx: &Ctx<'_>, stmt: &Statement) -> Result<Outcome, ServerError> {
    let _guard = ctx.db.ddl.lock().expect("ddl lock");
    let current = ctx.db.schema.load_full();
    let mut next = Schema::clone(&current);
    let change = match stmt {
        Statement::CreateKeyspace(ck) => {
            if next.keyspaces.contains_key(&ck.name) {
                if ck.if_not_exists {
                    return Ok(Outcome::Void);
                }
                return Err(ServerError::already_exists(&ck.name, ""));
            }
            let ks = Keyspace::from_ddl(ck)?;
            next.keyspaces.insert(ck.name.clone(), Arc::new(ks));
            SchemaChange {
                change: "CREATED",
                target: "KEYSPACE",
                keyspace: ck.name.clone(),
                name: None,
            }
        }
        Statement::DropKeyspace { name, if_exists } => {
            match next.keyspaces.get(name) {
                None if *if_exists => return Ok(Outcome::Void),
                None => {
                    return Err(ServerError::config(format!(
                        "Cannot drop non existing keyspace '{name}'."
                    )));
                }
                Some(ks) if ks.is_system => {
                    return Err(ServerError::new(
                        crate::error::UNAUTHORIZED,
                        format!("{name} keyspace is not user-modifiable."),
                    ));
                }
                Some(_) => {}
            }
            next.keyspaces.remove(name);
            SchemaChange {
                change: "DROPPED",
                target: "KEYSPACE",
                keyspace: name.clone(),
                name: None,
            }
        }
        Statement::CreateTable(ct) => {
            let ks_name = ctx.keyspace_of(&ct.name)?.to_string();
            let ks = next
                .keyspaces
                .get(&ks_name)
                .ok_or_else(|| ServerError::invalid(format!("Keyspace {ks_name} doesn't exist")))?;
            if ks.is_system {
                return Err(ServerError::new(
                    crate::error::UNAUTHORIZED,
                    format!("{ks_name} keyspace is not user-modifiable."),
                ));
            }
            if ks.tables.contains_key(&ct.name.name) {
                if ct.if_not_exists {
                    return Ok(Outcome::Void);
                }
                return Err(ServerError::already_exists(&ks_name, &ct.name.name));
            }
            let table = Table::from_ddl(&ks_name, ct)?;
            let mut ks = Keyspace::clone(ks);
            ks.tables.insert(ct.name.name.clone(), Arc::new(table));
            next.keyspaces.insert(ks_name.clone(), Arc::new(ks));
            SchemaChange {
                change: "CREATED",
                target: "TABLE",
                keyspace: ks_name,
                name: Some(ct.name.name.clone()),
            }
        }
        Statement::DropTable { name, if_exists } => {
            let ks_name = ctx.keyspace_of(name)?.to_string();
            let Some(ks) = next.keyspaces.get(&ks_name) else {
                if *if_exists {
                    return Ok(Outcome::Void);
                }
                return Err(ServerError::invalid(format!(
                    "Keyspace {ks_name} does not exist"
                )));
            };
            if !ks.tables.contains_key(&name.name) {
                if *if_exists {
                    return Ok(Outcome::Void);
                }
                return Err(ServerError::invalid(format!(
                    "Table '{ks_name}.{}' doesn't exist",
                    name.name
                )));
            }
            if ks.is_system {
                return Err(ServerError::new(
                    crate::error::UNAUTHORIZED,
                    format!("{ks_name} keyspace is not user-modifiable."),
                ));
            }
            let mut ks = Keyspace::clone(ks);
            ks.tables.remove(&name.name);
            next.keyspaces.insert(ks_name.clone(), Arc::new(ks));
            SchemaChange {
                change: "DROPPED",
                target: "TABLE",
                keyspace: ks_name,
                name: Some(name.name.clone()),
            }
        }
        _ => unreachable!("ddl() only receives DDL"),
    };
    next.version = types::new_timeuuid();
    next.generation = current.generation + 1;
    ctx.db.schema.store(Arc::new(next));
    ctx.db.publish(ctx.node, Event::Schema(change.clone()));
    Ok(Outcome::SchemaChange(change))
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
            for s in &batch.statements {
                let mut o = *opts;
                if batch.using.timestamp.is_some() {
                    o.timestamp = Some(write_timestamp(&batch.using, values, opts)?);
                }
                let (muts, lwt) = plan_write(ctx, &schema, s, values, &o, Some(batch.kind))?;
                if lwt.is_some() {
                    return Err(ServerError::invalid(
                        "Conditional statements in batches are not supported by testkit",
                    ));
                }
                all.extend(muts);
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
        | Statement::DropTable { .. }) => ddl(ctx, stmt),
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
