//! Schema changes beyond CREATE and DROP: `ALTER TABLE`, `ALTER KEYSPACE`,
//! `CREATE INDEX` and (with `DROP`, in the parser) `DROP INDEX`. A child
//! module of the parser: it extends [`Parser`] and shares its helpers.

use super::{PResult, Parser};
use crate::cql::ast::{AlterKeyspace, AlterTable, AlterTableOp, ColumnDef, CreateIndex, Statement};

impl Parser<'_> {
    /// `ALTER TABLE ...` or `ALTER KEYSPACE ...`, after `ALTER`.
    pub(super) fn alter(&mut self) -> PResult<Statement> {
        self.bump();
        if self.eat_kw("KEYSPACE") || self.eat_kw("SCHEMA") {
            let name = self.ident()?;
            self.expect_kw("WITH")?;
            let (replication, durable_writes) = self.keyspace_properties()?;
            return Ok(Statement::AlterKeyspace(AlterKeyspace {
                name,
                replication,
                durable_writes,
            }));
        }
        if !(self.eat_kw("TABLE") || self.eat_kw("COLUMNFAMILY")) {
            return Err(self.mismatch("TABLE or KEYSPACE"));
        }
        let name = self.qualified_name()?;
        let op = if self.eat_kw("ADD") {
            AlterTableOp::Add(self.added_columns()?)
        } else if self.eat_kw("DROP") {
            if self.at_sym("(") {
                AlterTableOp::Drop(self.paren_idents()?)
            } else {
                AlterTableOp::Drop(vec![self.ident()?])
            }
        } else if self.eat_kw("RENAME") {
            let mut pairs = Vec::new();
            loop {
                let from = self.ident()?;
                self.expect_kw("TO")?;
                pairs.push((from, self.ident()?));
                if !self.eat_kw("AND") {
                    break;
                }
            }
            AlterTableOp::Rename(pairs)
        } else if self.eat_kw("WITH") {
            let mut options: Vec<(String, String)> = Vec::new();
            loop {
                let at = self.tok();
                let key = self.ident()?;
                self.expect_sym("=")?;
                let value = self.option_value()?;
                if options.iter().any(|(k, _)| *k == key) {
                    return Err(self.err_at(
                        at.start,
                        format_args!("multiple definitions for property '{key}'"),
                    ));
                }
                options.push((key, value));
                if !self.eat_kw("AND") {
                    break;
                }
            }
            AlterTableOp::With(options)
        } else if self.eat_kw("ALTER") {
            let column = self.ident()?;
            self.expect_kw("TYPE")?;
            let mut ignored = String::new();
            self.type_text(&mut ignored)?;
            AlterTableOp::AlterType(column)
        } else {
            return Err(self.mismatch("ADD, DROP, RENAME, WITH or ALTER"));
        };
        Ok(Statement::AlterTable(AlterTable { name, op }))
    }

    /// `col type [static]` or `(col type [static], ...)`
    fn added_columns(&mut self) -> PResult<Vec<ColumnDef>> {
        let paren = self.eat_sym("(");
        let mut defs = Vec::new();
        loop {
            let name = self.ident()?;
            let mut type_text = String::new();
            self.type_text(&mut type_text)?;
            let is_static = self.eat_kw("STATIC");
            defs.push(ColumnDef {
                name,
                type_text,
                is_static,
            });
            if !paren || !self.list_continues(")")? {
                return Ok(defs);
            }
        }
    }

    /// `[IF NOT EXISTS] [name] ON table (target)`, after `CREATE INDEX`.
    pub(super) fn create_index(&mut self) -> PResult<CreateIndex> {
        let if_not_exists = self.if_not_exists()?;
        let name = if self.at_kw("ON") {
            None
        } else {
            Some(self.ident()?)
        };
        self.expect_kw("ON")?;
        let table = self.qualified_name()?;
        self.expect_sym("(")?;
        let t = self.tok();
        let kind = ["KEYS", "VALUES", "ENTRIES", "FULL"]
            .into_iter()
            .find(|k| self.is_kw(t, k) && self.is_sym(self.peek(1), "("));
        let (column, target_kind) = match kind {
            Some(k) => {
                self.pos += 2;
                let c = self.ident()?;
                self.expect_sym(")")?;
                (c, Some(k.to_ascii_lowercase()))
            }
            None => (self.ident()?, None),
        };
        self.expect_sym(")")?;
        if self.at_kw("USING") {
            return Err(self.unsupported("CREATE INDEX ... USING (custom indexes)"));
        }
        Ok(CreateIndex {
            name,
            if_not_exists,
            table,
            column,
            target_kind,
        })
    }
}
