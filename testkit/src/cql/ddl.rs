//! Schema changes beyond CREATE and DROP: `ALTER TABLE`, `ALTER KEYSPACE`,
//! `CREATE INDEX` and (with `DROP`, in the parser) `DROP INDEX`. A child
//! module of the parser: it extends [`Parser`] and shares its helpers.

use super::*;

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

/// `CREATE` and `DROP` of keyspaces and tables, their options and types.
impl Parser<'_> {
    pub(super) fn create(&mut self) -> PResult<Statement> {
        self.bump();
        if self.eat_kw("KEYSPACE") || self.eat_kw("SCHEMA") {
            self.create_keyspace().map(Statement::CreateKeyspace)
        } else if self.eat_kw("TABLE") || self.eat_kw("COLUMNFAMILY") {
            self.create_table().map(Statement::CreateTable)
        } else if self.eat_kw("INDEX") {
            self.create_index().map(Statement::CreateIndex)
        } else if self.eat_kw("TRIGGER") {
            self.if_not_exists()?;
            self.ident()?;
            self.expect_kw("ON")?;
            let table = self.qualified_name()?;
            self.expect_kw("USING")?;
            match self.term()? {
                crate::cql::ast::Term::Literal(crate::cql::ast::Literal::String(_)) => {
                    Ok(Statement::CreateTrigger { table })
                }
                _ => Err(self.mismatch("the trigger's class, a string")),
            }
        } else if self.at_kw("CUSTOM") {
            Err(self.unsupported("CREATE CUSTOM INDEX"))
        } else {
            Err(self.mismatch("KEYSPACE, TABLE or INDEX"))
        }
    }

    pub(super) fn drop_stmt(&mut self) -> PResult<Statement> {
        self.bump();
        if self.eat_kw("KEYSPACE") || self.eat_kw("SCHEMA") {
            let if_exists = self.if_exists()?;
            let name = self.ident()?;
            Ok(Statement::DropKeyspace { name, if_exists })
        } else if self.eat_kw("TABLE") || self.eat_kw("COLUMNFAMILY") {
            let if_exists = self.if_exists()?;
            let name = self.qualified_name()?;
            Ok(Statement::DropTable { name, if_exists })
        } else if self.eat_kw("INDEX") {
            let if_exists = self.if_exists()?;
            let name = self.qualified_name()?;
            Ok(Statement::DropIndex { name, if_exists })
        } else {
            Err(self.mismatch("KEYSPACE, TABLE or INDEX"))
        }
    }

    pub(super) fn create_keyspace(&mut self) -> PResult<CreateKeyspace> {
        let if_not_exists = self.if_not_exists()?;
        let name = self.ident()?;
        self.expect_kw("WITH")?;
        let (replication, durable_writes) = self.keyspace_properties()?;
        Ok(CreateKeyspace {
            name,
            if_not_exists,
            replication: replication.unwrap_or_default(),
            durable_writes: durable_writes.unwrap_or(true),
        })
    }

    /// `replication = {...} [AND durable_writes = bool]`, in any order;
    /// `None` for a property not given.
    #[allow(clippy::type_complexity)]
    pub(super) fn keyspace_properties(
        &mut self,
    ) -> PResult<(Option<Vec<(String, String)>>, Option<bool>)> {
        let mut replication = None;
        let mut durable_writes = None;
        loop {
            let prop_tok = self.tok();
            let prop = self.ident()?;
            self.expect_sym("=")?;
            let duplicate = match prop.as_str() {
                "replication" => replication.replace(self.replication_map()?).is_some(),
                "durable_writes" => durable_writes.replace(self.boolean_value()?).is_some(),
                _ => {
                    return Err(self.err_at(
                        prop_tok.start,
                        format_args!(
                            "unknown keyspace property '{prop}' \
                             (expecting replication or durable_writes)"
                        ),
                    ));
                }
            };
            if duplicate {
                return Err(self.err_at(
                    prop_tok.start,
                    format_args!("multiple definitions for property '{prop}'"),
                ));
            }
            if !self.eat_kw("AND") {
                break;
            }
        }
        Ok((replication, durable_writes))
    }

    pub(super) fn boolean_value(&mut self) -> PResult<bool> {
        let t = self.tok();
        let s = match t.kind {
            Kind::Ident => self.text(t),
            Kind::Str => &self.text(t)[1..t.end - t.start - 1],
            _ => "",
        };
        let value = if s.eq_ignore_ascii_case("true") {
            true
        } else if s.eq_ignore_ascii_case("false") {
            false
        } else {
            return Err(self.mismatch("true or false"));
        };
        self.bump();
        Ok(value)
    }

    /// A constant option value (string, number or boolean) as text.
    pub(super) fn constant_text(&mut self) -> Option<String> {
        let t = self.tok();
        let s = self.text(t);
        let text = match t.kind {
            Kind::Str => unescape(&s[1..s.len() - 1], "''", "'"),
            Kind::DollarStr => s[2..s.len() - 2].to_owned(),
            Kind::Int | Kind::Float => s.to_owned(),
            Kind::Ident if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") => {
                s.to_ascii_lowercase()
            }
            Kind::Sym if s == "-" => {
                let n = self.peek(1);
                if !matches!(n.kind, Kind::Int | Kind::Float) {
                    return None;
                }
                self.pos += 1;
                format!("-{}", self.text(n))
            }
            _ => return None,
        };
        self.pos += 1;
        Some(text)
    }

    pub(super) fn replication_map(&mut self) -> PResult<Vec<(String, String)>> {
        self.expect_sym("{")?;
        let mut entries = Vec::new();
        if self.eat_sym("}") {
            return Ok(entries);
        }
        loop {
            if self.tok().kind != Kind::Str {
                return Err(self.mismatch("a string key"));
            }
            let key = self.constant_text().unwrap_or_default();
            self.expect_sym(":")?;
            let value = self
                .constant_text()
                .ok_or_else(|| self.mismatch("a string or number"))?;
            entries.push((key, value));
            if !self.list_continues("}")? {
                return Ok(entries);
            }
        }
    }

    pub(super) fn create_table(&mut self) -> PResult<CreateTable> {
        let if_not_exists = self.if_not_exists()?;
        let name = self.qualified_name()?;
        self.expect_sym("(")?;
        let mut columns = Vec::new();
        let mut key: Option<(Vec<String>, Vec<String>)> = None;
        loop {
            let mut key_tok = self.tok();
            let new_key = if self.eat_kw("PRIMARY") {
                self.expect_kw("KEY")?;
                self.expect_sym("(")?;
                let partition = if self.at_sym("(") {
                    self.paren_idents()?
                } else {
                    vec![self.ident()?]
                };
                let mut clustering = Vec::new();
                while self.list_continues(")")? {
                    clustering.push(self.ident()?);
                }
                Some((partition, clustering))
            } else {
                let name = self.ident()?;
                let mut type_text = String::new();
                self.type_text(&mut type_text)?;
                let is_static = self.eat_kw("STATIC");
                key_tok = self.tok();
                let pk = self.eat_kw("PRIMARY");
                if pk {
                    self.expect_kw("KEY")?;
                }
                let pk = pk.then(|| (vec![name.clone()], Vec::new()));
                columns.push(ColumnDef {
                    name,
                    type_text,
                    is_static,
                });
                pk
            };
            if new_key.is_some() {
                if key.is_some() {
                    return Err(self.err_at(key_tok.start, "multiple PRIMARY KEY definitions"));
                }
                key = new_key;
            }
            if !self.list_continues(")")? {
                break;
            }
        }
        let Some((partition_key, clustering_key)) = key else {
            return Err(self.err_at(
                self.toks[self.pos - 1].start,
                "missing PRIMARY KEY definition in CREATE TABLE",
            ));
        };
        let mut clustering_order = Vec::new();
        let mut options: Vec<(String, String)> = Vec::new();
        if self.eat_kw("WITH") {
            loop {
                if self.at_kw("CLUSTERING") {
                    if !clustering_order.is_empty() {
                        return Err(self.error("duplicate CLUSTERING ORDER"));
                    }
                    self.bump();
                    self.expect_kw("ORDER")?;
                    self.expect_kw("BY")?;
                    self.expect_sym("(")?;
                    loop {
                        let column = self.ident()?;
                        clustering_order.push((column, self.direction()));
                        if !self.list_continues(")")? {
                            break;
                        }
                    }
                } else {
                    let opt_tok = self.tok();
                    let option = if self.eat_kw("COMPACT") {
                        self.expect_kw("STORAGE")?;
                        ("compact_storage".to_owned(), "true".to_owned())
                    } else {
                        let name = self.ident()?;
                        self.expect_sym("=")?;
                        (name, self.option_value()?)
                    };
                    if options.iter().any(|(n, _)| *n == option.0) {
                        return Err(self.err_at(
                            opt_tok.start,
                            format_args!("multiple definitions for property '{}'", option.0),
                        ));
                    }
                    options.push(option);
                }
                if !self.eat_kw("AND") {
                    break;
                }
            }
        }
        Ok(CreateTable {
            name,
            if_not_exists,
            columns,
            partition_key,
            clustering_key,
            clustering_order,
            options,
        })
    }

    /// A table option value; maps are rendered as `{'k': 'v', ...}`.
    pub(super) fn option_value(&mut self) -> PResult<String> {
        if !self.eat_sym("{") {
            return self
                .constant_text()
                .ok_or_else(|| self.mismatch("an option value (string, number, boolean or map)"));
        }
        let mut out = String::from("{");
        if self.eat_sym("}") {
            out.push('}');
            return Ok(out);
        }
        loop {
            for (i, what) in ["a map key", "a map value"].into_iter().enumerate() {
                let t = self.tok();
                if self.constant_text().is_none() {
                    return Err(self.mismatch(what));
                }
                out.push_str(&self.src[t.start..self.toks[self.pos - 1].end]);
                if i == 0 {
                    self.expect_sym(":")?;
                    out.push_str(": ");
                }
            }
            if !self.list_continues("}")? {
                out.push('}');
                return Ok(out);
            }
            out.push_str(", ");
        }
    }

    /// A CQL type, appended to `out` normalised (lower-case, no spaces).
    pub(super) fn type_text(&mut self, out: &mut String) -> PResult<()> {
        let t = self.tok();
        if t.kind != Kind::Ident {
            return Err(self.mismatch("a type"));
        }
        self.bump();
        let name = self.text(t).to_ascii_lowercase();
        let arity = match name.as_str() {
            "list" | "set" | "frozen" => Some(1),
            "map" => Some(2),
            "tuple" => None,
            _ => {
                out.push_str(&name);
                return Ok(());
            }
        };
        out.push_str(&name);
        let open = self.tok();
        self.expect_sym("<")?;
        out.push('<');
        let mut count = 0;
        loop {
            self.type_text(out)?;
            count += 1;
            if self.eat_sym(">") {
                break;
            }
            if !self.eat_sym(",") {
                return Err(self.mismatch("',' or '>'"));
            }
            out.push(',');
        }
        out.push('>');
        if arity.is_some_and(|n| n != count) {
            return Err(self.err_at(
                open.start,
                format_args!(
                    "{name} takes {} type argument(s), got {count}",
                    arity.unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }

    // ---- terms
}
