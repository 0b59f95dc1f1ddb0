//! Writes and their clauses: `WHERE` relations, `USING`, `INSERT`,
//! `UPDATE` (assignments), `DELETE`, `IF` conditions and `BATCH`. A child
//! module of the parser: it extends [`Parser`] and shares its helpers.

use super::*;

impl Parser<'_> {
    pub(super) fn relations(&mut self) -> PResult<Vec<Relation>> {
        let mut rels = Vec::new();
        loop {
            rels.push(self.relation()?);
            if !self.eat_kw("AND") {
                return Ok(rels);
            }
        }
    }

    pub(super) fn comparison(&mut self) -> Option<Operator> {
        let t = self.tok();
        if t.kind != Kind::Sym {
            return None;
        }
        let op = match self.text(t) {
            "=" => Operator::Eq,
            "!=" => Operator::Ne,
            "<" => Operator::Lt,
            "<=" => Operator::Le,
            ">" => Operator::Gt,
            ">=" => Operator::Ge,
            _ => return None,
        };
        self.pos += 1;
        Some(op)
    }

    pub(super) fn expect_comparison(&mut self) -> PResult<Operator> {
        self.comparison()
            .ok_or_else(|| self.mismatch("one of =, !=, <, <=, >, >="))
    }

    pub(super) fn at_bind(&self) -> bool {
        self.at_sym("?") || self.at_sym(":")
    }

    pub(super) fn relation(&mut self) -> PResult<Relation> {
        let simple = |lhs, op, rhs| Relation {
            lhs,
            op,
            rhs: Some(rhs),
            in_values: None,
        };
        if self.at_kw("TOKEN") && self.is_sym(self.peek(1), "(") {
            self.bump();
            let cols = self.paren_idents()?;
            let op = self.expect_comparison()?;
            return Ok(simple(RelationLhs::Token(cols), op, self.term()?));
        }
        if self.at_sym("(") {
            let cols = self.paren_idents()?;
            if self.at_kw("IN") {
                return Err(self.unsupported("multi-column IN relation"));
            }
            let op = self.expect_comparison()?;
            if !(self.at_sym("(") || self.at_bind()) {
                return Err(self.mismatch("a tuple '(...)' or a bind marker"));
            }
            return Ok(simple(RelationLhs::Tuple(cols), op, self.term()?));
        }
        let column = RelationLhs::Column(self.ident()?);
        if self.eat_kw("IN") {
            let values = if self.eat_sym("(") {
                InValues::List(self.terms_until(")")?)
            } else if self.at_bind() {
                InValues::Marker(self.term()?)
            } else {
                return Err(self.mismatch("'(' or a bind marker"));
            };
            return Ok(Relation {
                lhs: column,
                op: Operator::In,
                rhs: None,
                in_values: Some(values),
            });
        }
        if self.eat_kw("CONTAINS") {
            let op = if self.eat_kw("KEY") {
                Operator::ContainsKey
            } else {
                Operator::Contains
            };
            return Ok(simple(column, op, self.term()?));
        }
        let op = self
            .comparison()
            .ok_or_else(|| self.mismatch("one of =, !=, <, <=, >, >=, IN, CONTAINS"))?;
        Ok(simple(column, op, self.term()?))
    }

    pub(super) fn using(&mut self, using: &mut Using, allow_ttl: bool) -> PResult<()> {
        loop {
            let slot = if allow_ttl && self.at_kw("TTL") {
                &mut using.ttl
            } else if self.at_kw("TIMESTAMP") {
                &mut using.timestamp
            } else if allow_ttl {
                return Err(self.mismatch("TTL or TIMESTAMP"));
            } else {
                return Err(self.mismatch("TIMESTAMP"));
            };
            if slot.is_some() {
                return Err(self.error(format_args!(
                    "duplicate USING {}",
                    self.text(self.tok()).to_ascii_uppercase()
                )));
            }
            self.bump();
            *slot = Some(self.term()?);
            if !self.eat_kw("AND") {
                return Ok(());
            }
        }
    }

    pub(super) fn insert(&mut self) -> PResult<Insert> {
        self.bump();
        self.expect_kw("INTO")?;
        let table = self.qualified_name()?;
        if self.at_kw("JSON") {
            return Err(self.unsupported("INSERT JSON"));
        }
        let columns = self.paren_idents()?;
        self.expect_kw("VALUES")?;
        let values_at = self.tok();
        self.expect_sym("(")?;
        let values = self.terms_until(")")?;
        if values.len() != columns.len() {
            return Err(self.err_at(
                values_at.start,
                format_args!(
                    "unmatched column names/values: {} columns but {} values",
                    columns.len(),
                    values.len()
                ),
            ));
        }
        let mut if_not_exists = false;
        let mut using = Using::default();
        let mut seen_using = false;
        loop {
            if !if_not_exists && self.at_kw("IF") {
                if_not_exists = self.if_not_exists()?;
            } else if !seen_using && self.eat_kw("USING") {
                seen_using = true;
                self.using(&mut using, true)?;
            } else {
                break;
            }
        }
        Ok(Insert {
            table,
            columns,
            values,
            if_not_exists,
            using,
        })
    }

    pub(super) fn update(&mut self) -> PResult<Update> {
        self.bump();
        let table = self.qualified_name()?;
        let mut using = Using::default();
        if self.eat_kw("USING") {
            self.using(&mut using, true)?;
        }
        self.expect_kw("SET")?;
        let mut assignments = Vec::new();
        loop {
            assignments.push(self.assignment()?);
            if !self.eat_sym(",") {
                break;
            }
        }
        self.expect_kw("WHERE")?;
        let relations = self.relations()?;
        let condition = self.condition(true)?;
        Ok(Update {
            table,
            using,
            assignments,
            relations,
            condition,
        })
    }

    pub(super) fn assignment(&mut self) -> PResult<Assignment> {
        let column = self.ident()?;
        if self.eat_sym("[") {
            let key = self.term()?;
            self.expect_sym("]")?;
            self.expect_sym("=")?;
            let value = self.term()?;
            return Ok(Assignment::SetElement { column, key, value });
        }
        // `c += x` / `c -= x`: Cassandra's shorthand for `c = c + x` /
        // `c = c - x`
        if self.eat_sym("+=") {
            let value = self.term()?;
            return Ok(Assignment::Add { column, value });
        }
        if self.eat_sym("-=") {
            let value = self.term()?;
            return Ok(Assignment::Remove { column, value });
        }
        self.expect_sym("=")?;
        let t = self.tok();
        if self.is_name_tok(t) && !self.is_sym(self.peek(1), "(") {
            // `c = c + x` / `c = c - x`
            self.expect_same_column(&column)?;
            let add = if self.eat_sym("+") {
                true
            } else if self.eat_sym("-") {
                false
            } else {
                return Err(self.mismatch("'+' or '-'"));
            };
            let value = self.term()?;
            return Ok(if add {
                Assignment::Add { column, value }
            } else {
                Assignment::Remove { column, value }
            });
        }
        let value = self.term()?;
        if self.eat_sym("+") {
            self.expect_same_column(&column)?;
            return Ok(Assignment::Prepend { column, value });
        }
        Ok(Assignment::Set { column, value })
    }

    pub(super) fn expect_same_column(&mut self, column: &str) -> PResult<()> {
        let t = self.tok();
        if self.is_name_tok(t) && self.name_of(t) == column {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.mismatch(&format!(
                "'{column}' (only '{column} = {column} + value', '{column} = {column} - value' \
                 and '{column} = value + {column}' are supported)"
            )))
        }
    }

    /// An optional `IF ...` clause.
    pub(super) fn condition(&mut self, allow_not_exists: bool) -> PResult<Option<Condition>> {
        if !self.eat_kw("IF") {
            return Ok(None);
        }
        if self.eat_kw("EXISTS") {
            return Ok(Some(Condition::Exists));
        }
        if allow_not_exists && self.eat_kw("NOT") {
            self.expect_kw("EXISTS")?;
            return Ok(Some(Condition::NotExists));
        }
        let mut conds = Vec::new();
        loop {
            if !self.is_name_tok(self.tok()) {
                return Err(self.mismatch(if allow_not_exists {
                    "EXISTS, NOT EXISTS or a column condition"
                } else {
                    "EXISTS or a column condition"
                }));
            }
            let column = self.ident()?;
            let op = if self.eat_kw("IN") {
                if !(self.at_sym("(") || self.at_bind()) {
                    return Err(self.mismatch("'(' or a bind marker"));
                }
                Operator::In
            } else {
                self.comparison()
                    .ok_or_else(|| self.mismatch("one of =, !=, <, <=, >, >=, IN"))?
            };
            let value = self.term()?;
            conds.push(ColumnCondition { column, op, value });
            if !self.eat_kw("AND") {
                return Ok(Some(Condition::Columns(conds)));
            }
        }
    }

    pub(super) fn delete(&mut self) -> PResult<Delete> {
        self.bump();
        let mut targets = Vec::new();
        if !self.at_kw("FROM") {
            loop {
                let column = self.ident()?;
                if self.eat_sym("[") {
                    let key = self.term()?;
                    self.expect_sym("]")?;
                    targets.push(DeleteTarget::Element { column, key });
                } else {
                    targets.push(DeleteTarget::Column(column));
                }
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        self.expect_kw("FROM")?;
        let table = self.qualified_name()?;
        let mut using = Using::default();
        if self.eat_kw("USING") {
            self.using(&mut using, false)?;
        }
        self.expect_kw("WHERE")?;
        let relations = self.relations()?;
        let condition = self.condition(false)?;
        Ok(Delete {
            targets,
            table,
            using,
            relations,
            condition,
        })
    }

    pub(super) fn batch(&mut self) -> PResult<BatchStatement> {
        self.bump();
        let kind = if self.eat_kw("UNLOGGED") {
            BatchKind::Unlogged
        } else if self.eat_kw("COUNTER") {
            BatchKind::Counter
        } else {
            BatchKind::Logged
        };
        self.expect_kw("BATCH")?;
        let mut using = Using::default();
        if self.eat_kw("USING") {
            self.using(&mut using, false)?;
        }
        let mut statements = Vec::new();
        while !self.eat_kw("APPLY") {
            let stmt = if self.at_kw("INSERT") {
                Statement::Insert(self.insert()?)
            } else if self.at_kw("UPDATE") {
                Statement::Update(self.update()?)
            } else if self.at_kw("DELETE") {
                Statement::Delete(self.delete()?)
            } else {
                return Err(self.mismatch("INSERT, UPDATE, DELETE or APPLY BATCH"));
            };
            statements.push(stmt);
            self.eat_sym(";");
        }
        self.expect_kw("BATCH")?;
        Ok(BatchStatement {
            kind,
            using,
            statements,
        })
    }
}
