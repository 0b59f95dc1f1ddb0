//! Schema changes that alter what exists: `ALTER KEYSPACE`, `ALTER TABLE`
//! (ADD, DROP and RENAME of columns, WITH options), `CREATE INDEX` and
//! `DROP INDEX`, with Cassandra 4.0's rules and messages. Each edits the
//! next schema that `ddl.rs` swaps in; `Ok(None)` is a no-op (`IF [NOT]
//! EXISTS`). A table whose columns change is rebuilt with its rows
//! ([`Table::altered`]).

use std::sync::Arc;

use super::Ctx;
use crate::cql::ast::{self, AlterTableOp, Statement};
use crate::db::SchemaChange;
use crate::error::ServerError;
use crate::schema::{Column, ColumnKind, Index, Keyspace, Schema, Table};
use crate::types::CqlType;

/// Applies an ALTER, CREATE INDEX or DROP INDEX to `next`.
pub(super) fn alter(
    ctx: &Ctx<'_>,
    next: &mut Schema,
    stmt: &Statement,
) -> Result<Option<SchemaChange>, ServerError> {
    match stmt {
        Statement::AlterKeyspace(ak) => alter_keyspace(next, ak),
        Statement::AlterTable(at) => alter_table(ctx, next, at),
        Statement::CreateIndex(ci) => create_index(ctx, next, ci),
        Statement::DropIndex { name, if_exists } => drop_index(ctx, next, name, *if_exists),
        _ => unreachable!("alter() only receives ALTER and INDEX statements"),
    }
}

fn invalid(msg: String) -> ServerError {
    ServerError::invalid(msg)
}

/// A keyspace a user may change.
fn user_keyspace<'s>(next: &'s Schema, name: &str) -> Result<&'s Arc<Keyspace>, ServerError> {
    let ks = next
        .keyspaces
        .get(name)
        .ok_or_else(|| invalid(format!("Keyspace '{name}' doesn't exist")))?;
    if ks.is_system {
        return Err(ServerError::new(
            crate::error::UNAUTHORIZED,
            format!("{name} keyspace is not user-modifiable."),
        ));
    }
    Ok(ks)
}

fn user_table(
    ctx: &Ctx<'_>,
    next: &Schema,
    name: &ast::QualifiedName,
) -> Result<Arc<Table>, ServerError> {
    let ks_name = ctx.keyspace_of(name)?;
    let ks = user_keyspace(next, ks_name)?;
    ks.tables
        .get(&name.name)
        .cloned()
        .ok_or_else(|| invalid(format!("Table '{ks_name}.{}' doesn't exist", name.name)))
}

fn replace_table(next: &mut Schema, table: Table) -> SchemaChange {
    let ks_name = table.keyspace.clone();
    let name = table.name.clone();
    let mut ks = Keyspace::clone(&next.keyspaces[&ks_name]);
    ks.tables.insert(name.clone(), Arc::new(table));
    next.keyspaces.insert(ks_name.clone(), Arc::new(ks));
    SchemaChange {
        change: "UPDATED",
        target: "TABLE",
        keyspace: ks_name,
        name: Some(name),
    }
}

fn alter_keyspace(
    next: &mut Schema,
    ak: &ast::AlterKeyspace,
) -> Result<Option<SchemaChange>, ServerError> {
    let old = user_keyspace(next, &ak.name)?;
    let def = ast::CreateKeyspace {
        name: ak.name.clone(),
        if_not_exists: false,
        replication: ak
            .replication
            .clone()
            .unwrap_or_else(|| old.replication.clone()),
        durable_writes: ak.durable_writes.unwrap_or(old.durable_writes),
    };
    let mut ks = Keyspace::from_ddl(&def)?;
    ks.tables = old.tables.clone();
    next.keyspaces.insert(ak.name.clone(), Arc::new(ks));
    Ok(Some(SchemaChange {
        change: "UPDATED",
        target: "KEYSPACE",
        keyspace: ak.name.clone(),
        name: None,
    }))
}

fn alter_table(
    ctx: &Ctx<'_>,
    next: &mut Schema,
    at: &ast::AlterTable,
) -> Result<Option<SchemaChange>, ServerError> {
    let t = user_table(ctx, next, &at.name)?;
    let mut columns = t.columns.clone();
    let mut sources: Vec<Option<usize>> = (0..columns.len()).map(Some).collect();
    let mut options = t.options.clone();
    let mut indexes = t.indexes.clone();
    let position = |columns: &[Column], name: &str| {
        columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| invalid(format!("Column {name} was not found in table {}", t.name)))
    };
    match &at.op {
        AlterTableOp::Add(defs) => {
            for def in defs {
                if columns.iter().any(|c| c.name == def.name) {
                    return Err(invalid(format!(
                        "Column with name '{}' already exists",
                        def.name
                    )));
                }
                let ty = CqlType::parse(&def.type_text).map_err(invalid)?;
                if ty == CqlType::Duration {
                    return Err(invalid(
                        "duration columns are not supported by testkit".into(),
                    ));
                }
                if def.is_static && t.clustering.is_empty() {
                    return Err(invalid(
                        "Static columns are only useful (and thus allowed) if the table has at least one clustering column".into(),
                    ));
                }
                if t.is_counter != (ty == CqlType::Counter) {
                    return Err(invalid(if t.is_counter {
                        format!(
                            "Cannot add a non counter column ({}) in a counter table",
                            def.name
                        )
                    } else {
                        format!(
                            "Cannot add a counter column ({}) in a non counter table",
                            def.name
                        )
                    }));
                }
                columns.push(Column::from_def(def, ty));
                sources.push(None);
            }
        }
        AlterTableOp::Drop(names) => {
            for name in names {
                let i = position(&columns, name)?;
                if matches!(
                    columns[i].kind,
                    ColumnKind::PartitionKey | ColumnKind::Clustering
                ) {
                    return Err(invalid(format!("Cannot drop PRIMARY KEY column {name}")));
                }
                let dependent: Vec<&str> = indexes
                    .iter()
                    .filter(|x| x.column == *name)
                    .map(|x| x.name.as_str())
                    .collect();
                if !dependent.is_empty() {
                    return Err(invalid(format!(
                        "Cannot drop column {name} because it has dependent secondary indexes ({})",
                        dependent.join(", ")
                    )));
                }
                columns.remove(i);
                sources.remove(i);
            }
        }
        AlterTableOp::Rename(pairs) => {
            for (from, to) in pairs {
                let i = position(&columns, from)?;
                if !matches!(
                    columns[i].kind,
                    ColumnKind::PartitionKey | ColumnKind::Clustering
                ) {
                    return Err(invalid(format!(
                        "Cannot rename non PRIMARY KEY column {from}"
                    )));
                }
                if columns.iter().any(|c| c.name == *to) {
                    return Err(invalid(format!(
                        "Cannot rename column {from} to {to} in table '{}'; another column with that name already exists",
                        t.name
                    )));
                }
                columns[i].name = to.clone();
                for x in indexes.iter_mut().filter(|x| x.column == *from) {
                    x.column = to.clone();
                }
            }
        }
        AlterTableOp::With(opts) => {
            for (k, v) in opts {
                match options.iter_mut().find(|(n, _)| n == k) {
                    Some(slot) => slot.1 = v.clone(),
                    None => options.push((k.clone(), v.clone())),
                }
            }
        }
        AlterTableOp::AlterType(_) => {
            return Err(invalid(
                "Altering column types is no longer supported".into(),
            ));
        }
    }
    let table = t.altered(columns, &sources, options, indexes);
    Ok(Some(replace_table(next, table)))
}

fn create_index(
    ctx: &Ctx<'_>,
    next: &mut Schema,
    ci: &ast::CreateIndex,
) -> Result<Option<SchemaChange>, ServerError> {
    let t = user_table(ctx, next, &ci.table)?;
    let i = t.column(&ci.column)?;
    let col = &t.columns[i];
    if t.is_counter {
        return Err(invalid(
            "Secondary indexes on counter tables aren't supported".into(),
        ));
    }
    if col.kind == ColumnKind::PartitionKey && t.partition_key.len() == 1 {
        return Err(invalid(format!(
            "Cannot create secondary index on the only partition key column {}",
            col.name
        )));
    }
    let target_kind = match (&ci.target_kind, col.ty.is_collection(), col.frozen) {
        (None, true, false) => Some("values".to_string()),
        (None, true, true) => Some("full".to_string()),
        (Some(k), false, _) => {
            return Err(invalid(format!(
                "Cannot create {k}() index on {}; only non-frozen collections support {k}() indexes",
                col.name
            )));
        }
        (k, _, _) => k.clone(),
    };
    let name = ci
        .name
        .clone()
        .unwrap_or_else(|| format!("{}_{}_idx", t.name, col.name));
    let ks = &next.keyspaces[&t.keyspace];
    let taken = ks
        .tables
        .values()
        .any(|tb| tb.indexes.iter().any(|x| x.name == name));
    let index = Index {
        name,
        column: col.name.clone(),
        target_kind,
    };
    let duplicate = t.indexes.iter().find(|x| x.target() == index.target());
    if taken || duplicate.is_some() {
        if ci.if_not_exists {
            return Ok(None);
        }
        if let (false, Some(d)) = (taken, duplicate) {
            return Err(invalid(format!(
                "Index {} is a duplicate of existing index {}",
                index.name, d.name
            )));
        }
        return Err(ServerError::already_exists(&t.keyspace, &index.name));
    }
    let mut indexes = t.indexes.clone();
    indexes.push(index);
    let sources: Vec<Option<usize>> = (0..t.columns.len()).map(Some).collect();
    let table = t.altered(t.columns.clone(), &sources, t.options.clone(), indexes);
    Ok(Some(replace_table(next, table)))
}

fn drop_index(
    ctx: &Ctx<'_>,
    next: &mut Schema,
    name: &ast::QualifiedName,
    if_exists: bool,
) -> Result<Option<SchemaChange>, ServerError> {
    let ks_name = ctx.keyspace_of(name)?;
    let Some(ks) = next.keyspaces.get(ks_name) else {
        if if_exists {
            return Ok(None);
        }
        return Err(invalid(format!("Keyspace '{ks_name}' doesn't exist")));
    };
    let Some(t) = ks
        .tables
        .values()
        .find(|tb| tb.indexes.iter().any(|x| x.name == name.name))
        .cloned()
    else {
        if if_exists {
            return Ok(None);
        }
        return Err(invalid(format!(
            "Index '{ks_name}.{}' doesn't exist",
            name.name
        )));
    };
    let indexes = t
        .indexes
        .iter()
        .filter(|x| x.name != name.name)
        .cloned()
        .collect();
    let sources: Vec<Option<usize>> = (0..t.columns.len()).map(Some).collect();
    let table = t.altered(t.columns.clone(), &sources, t.options.clone(), indexes);
    Ok(Some(replace_table(next, table)))
}
