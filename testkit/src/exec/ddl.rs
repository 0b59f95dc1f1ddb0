//! Schema changes: CREATE and DROP of keyspaces and tables here, ALTER and
//! indexes in `alter.rs`. Each builds
//! the next schema from the current one under the DDL lock, swaps it in
//! with a new version, and publishes the schema-change event.

use std::sync::Arc;

use super::Ctx;
use super::result::Outcome;
use crate::cql::ast::Statement;
use crate::db::{Event, SchemaChange};
use crate::error::ServerError;
use crate::schema::{Keyspace, Schema, Table};
use crate::types;

pub(super) fn ddl(ctx: &Ctx<'_>, stmt: &Statement) -> Result<Outcome, ServerError> {
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
        Statement::CreateTrigger { table } => {
            let ks_name = ctx.keyspace_of(table)?.to_string();
            let known = next
                .keyspaces
                .get(&ks_name)
                .is_some_and(|ks| ks.tables.contains_key(&table.name));
            if !known {
                return Err(ServerError::invalid(format!(
                    "Table '{ks_name}.{}' doesn't exist",
                    table.name
                )));
            }
            SchemaChange {
                change: "UPDATED",
                target: "TABLE",
                keyspace: ks_name,
                name: Some(table.name.clone()),
            }
        }
        stmt @ (Statement::AlterTable(_)
        | Statement::AlterKeyspace(_)
        | Statement::CreateIndex(_)
        | Statement::DropIndex { .. }) => match super::alter::alter(ctx, &mut next, stmt)? {
            Some(change) => change,
            None => return Ok(Outcome::Void),
        },
        _ => unreachable!("ddl() only receives DDL"),
    };
    next.version = types::new_timeuuid();
    next.generation = current.generation + 1;
    ctx.db.schema.store(Arc::new(next));
    ctx.db.publish(ctx.node, Event::Schema(change.clone()));
    Ok(Outcome::SchemaChange(change))
}
