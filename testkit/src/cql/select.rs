//! The selection of a `SELECT`: columns, `COUNT(*)`, `WRITETIME`/`TTL`,
//! `token()`, native function calls (`now()`, `toTimestamp(now())`,
//! `blobAsText(b)`, ...) and `CAST(x AS type)`, each with an optional
//! `AS alias`. A child module of the parser: it extends [`Parser`] with
//! the selection grammar and shares its token helpers.

use super::*;

impl Parser<'_> {
    pub(super) fn selection(&mut self) -> PResult<Selection> {
        let mut selectors = Vec::new();
        loop {
            let t = self.tok();
            let call = self.is_sym(self.peek(1), "(");
            if call && self.is_kw(t, "COUNT") {
                if !selectors.is_empty() {
                    return Err(self.unsupported("COUNT combined with other selectors"));
                }
                self.pos += 2;
                let arg = self.tok();
                if self.is_sym(arg, "*") || (arg.kind == Kind::Int && self.text(arg) == "1") {
                    self.bump();
                } else {
                    return Err(self.mismatch("'*' or 1"));
                }
                self.expect_sym(")")?;
                let alias = self.alias()?;
                if self.at_sym(",") {
                    return Err(self.unsupported("COUNT combined with other selectors"));
                }
                return Ok(Selection::Count { alias });
            }
            let kind = self.selector()?;
            let alias = self.alias()?;
            selectors.push(Selector { kind, alias });
            if !self.eat_sym(",") {
                return Ok(Selection::Columns(selectors));
            }
        }
    }

    /// One selector, without its alias.
    fn selector(&mut self) -> PResult<SelectorKind> {
        let t = self.tok();
        let call = self.is_sym(self.peek(1), "(");
        if !call || t.kind != Kind::Ident {
            return self.ident().map(SelectorKind::Column);
        }
        if self.is_kw(t, "WRITETIME") || self.is_kw(t, "TTL") {
            self.pos += 2;
            let column = self.ident()?;
            self.expect_sym(")")?;
            return Ok(if self.is_kw(t, "TTL") {
                SelectorKind::Ttl(column)
            } else {
                SelectorKind::WriteTime(column)
            });
        }
        if self.is_kw(t, "TOKEN") {
            self.bump();
            return self.paren_idents().map(SelectorKind::Token);
        }
        if self.is_kw(t, "CAST") {
            self.pos += 2;
            let arg = Box::new(self.selector()?);
            self.expect_kw("AS")?;
            let mut type_text = String::new();
            self.type_text(&mut type_text)?;
            self.expect_sym(")")?;
            return Ok(SelectorKind::Cast { arg, type_text });
        }
        if self.is_kw(t, "COUNT") {
            return Err(self.unsupported("COUNT combined with other selectors"));
        }
        self.pos += 2;
        let name = self.text(t).to_ascii_lowercase();
        let mut args = Vec::new();
        if !self.eat_sym(")") {
            loop {
                args.push(self.selector()?);
                if !self.list_continues(")")? {
                    break;
                }
            }
        }
        Ok(SelectorKind::Function { name, args })
    }
}

/// The `SELECT` statement around the selection.
impl Parser<'_> {
    /// Whether `t` can follow a selector (so a preceding `JSON`/`DISTINCT`
    /// is a column name, not a modifier).
    pub(super) fn ends_selector(&self, t: Token) -> bool {
        self.is_sym(t, ",") || self.is_kw(t, "FROM") || self.is_kw(t, "AS")
    }

    pub(super) fn select(&mut self) -> PResult<Select> {
        self.bump();
        if self.at_kw("JSON") && !self.ends_selector(self.peek(1)) {
            return Err(self.unsupported("SELECT JSON"));
        }
        let distinct = self.at_kw("DISTINCT") && !self.ends_selector(self.peek(1));
        if distinct {
            self.bump();
        }
        let selection = if self.eat_sym("*") {
            Selection::Star
        } else {
            self.selection()?
        };
        self.expect_kw("FROM")?;
        let table = self.qualified_name()?;
        let relations = if self.eat_kw("WHERE") {
            self.relations()?
        } else {
            Vec::new()
        };
        if self.at_kw("GROUP") {
            return Err(self.unsupported("GROUP BY"));
        }
        let mut order_by = Vec::new();
        if self.eat_kw("ORDER") {
            self.expect_kw("BY")?;
            loop {
                let column = self.ident()?;
                let descending = self.direction();
                order_by.push(Ordering { column, descending });
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        let per_partition_limit = if self.eat_kw("PER") {
            self.expect_kw("PARTITION")?;
            self.expect_kw("LIMIT")?;
            Some(self.term()?)
        } else {
            None
        };
        let limit = if self.eat_kw("LIMIT") {
            Some(self.term()?)
        } else {
            None
        };
        let allow_filtering = self.eat_kw("ALLOW");
        if allow_filtering {
            self.expect_kw("FILTERING")?;
        }
        Ok(Select {
            distinct,
            selection,
            table,
            relations,
            order_by,
            per_partition_limit,
            limit,
            allow_filtering,
        })
    }

    /// An optional `ASC`/`DESC`; `true` for `DESC`.
    pub(super) fn direction(&mut self) -> bool {
        let desc = self.eat_kw("DESC");
        if !desc {
            self.eat_kw("ASC");
        }
        desc
    }

    pub(super) fn alias(&mut self) -> PResult<Option<String>> {
        if self.eat_kw("AS") {
            self.ident().map(Some)
        } else {
            Ok(None)
        }
    }
}
