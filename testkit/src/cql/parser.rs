//! A hand-written recursive-descent parser for the CQL subset that
//! testkit executes; it produces the syntax tree defined in `ast.rs`.
//!
//! The lexer (`lexer.rs`, one for every statement) turns the whole
//! statement into a vector of token spans (no per-token allocation); the
//! parser then walks it, allocating only for the strings that end up in
//! the tree. Errors mimic Cassandra's syntax errors: `line 1:9 mismatched
//! input 'FORM' expecting FROM`.
//!
//! This file holds the token helpers, the statement dispatch and terms
//! (literals, bind markers, function calls); the statement groups are
//! child modules extending [`Parser`] with `impl` blocks: `select.rs`
//! (SELECT and its selection), `dml.rs` (WHERE relations, INSERT, UPDATE,
//! DELETE, IF conditions, BATCH) and `ddl.rs` (CREATE, DROP, ALTER,
//! indexes). The tests below drive all of them through [`parse`].

use std::fmt;

use super::ast::*;
use super::lexer::{Kind, Token, is_reserved, lex};

#[path = "ddl.rs"]
mod ddl;
#[path = "dml.rs"]
mod dml;
#[path = "select.rs"]
mod select;

/// A parse failure: the message says what was expected and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The full message, prefixed with `line L:C` (1-based line, 0-based
    /// column, like Cassandra), quoting the offending token, e.g.
    /// `line 1:9 mismatched input 'FORM' expecting FROM`.
    pub message: String,
    /// Byte offset of the offending token in the statement text.
    pub position: usize,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseError {}

/// A parsed statement plus its bind markers.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The statement.
    pub statement: Statement,
    /// The number of bind markers (`?` and `:name`) in the statement text.
    pub bind_count: usize,
    /// One entry per bind marker, in order: the name of a `:name` marker or
    /// `None` for `?`.
    pub bind_names: Vec<Option<String>>,
}

/// Parses one CQL statement, optionally followed by `;`.
///
/// Keywords are case-insensitive; unquoted identifiers are lower-cased.
/// Bind markers are numbered left to right across the whole text.
pub fn parse(text: &str) -> Result<Parsed, ParseError> {
    let toks = lex(text)?;
    let mut p = Parser {
        src: text,
        toks,
        pos: 0,
        binds: Vec::new(),
    };
    let statement = p.statement()?;
    p.eat_sym(";");
    if p.tok().kind != Kind::Eof {
        return Err(p.error(format_args!(
            "extraneous input '{}' expecting EOF",
            p.describe(p.tok())
        )));
    }
    Ok(Parsed {
        statement,
        bind_count: p.binds.len(),
        bind_names: p.binds,
    })
}

pub(super) type PResult<T> = Result<T, ParseError>;

/// Builds an error at byte offset `pos`, prefixing `line L:C`.
pub(super) fn error_at(src: &str, pos: usize, msg: impl fmt::Display) -> ParseError {
    let before = &src[..pos];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count();
    ParseError {
        message: format!("line {line}:{col} {msg}"),
        position: pos,
    }
}

fn unescape(s: &str, doubled: &str, single: &str) -> String {
    if s.contains(doubled) {
        s.replace(doubled, single)
    } else {
        s.to_owned()
    }
}

fn decode_hex(hex: &str) -> Vec<u8> {
    let nibble = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
    hex.as_bytes()
        .chunks_exact(2)
        .map(|p| (nibble(p[0]) << 4) | nibble(p[1]))
        .collect()
}

fn keyword_literal(word: &str) -> Option<Literal> {
    let is = |k: &str| word.eq_ignore_ascii_case(k);
    Some(if is("true") {
        Literal::Boolean(true)
    } else if is("false") {
        Literal::Boolean(false)
    } else if is("null") {
        Literal::Null
    } else if is("nan") {
        Literal::Float("NaN".to_owned())
    } else if is("infinity") {
        Literal::Float("Infinity".to_owned())
    } else {
        return None;
    })
}

const EXPECT_VALUE: &str = "a value (literal, bind marker or function call)";

// --------------------------------------------------------------- parser --

#[derive(Debug)]
struct Parser<'a> {
    src: &'a str,
    toks: Vec<Token>,
    pos: usize,
    binds: Vec<Option<String>>,
}

impl<'a> Parser<'a> {
    // ---- token helpers

    fn tok(&self) -> Token {
        self.toks[self.pos]
    }

    fn peek(&self, n: usize) -> Token {
        self.toks[(self.pos + n).min(self.toks.len() - 1)]
    }

    fn text(&self, t: Token) -> &'a str {
        &self.src[t.start..t.end]
    }

    fn describe(&self, t: Token) -> &'a str {
        if t.kind == Kind::Eof {
            "<EOF>"
        } else {
            self.text(t)
        }
    }

    fn bump(&mut self) {
        if self.tok().kind != Kind::Eof {
            self.pos += 1;
        }
    }

    fn error(&self, msg: impl fmt::Display) -> ParseError {
        self.err_at(self.tok().start, msg)
    }

    fn err_at(&self, pos: usize, msg: impl fmt::Display) -> ParseError {
        error_at(self.src, pos, msg)
    }

    fn mismatch(&self, expected: &str) -> ParseError {
        self.error(format_args!(
            "mismatched input '{}' expecting {expected}",
            self.describe(self.tok())
        ))
    }

    fn unsupported(&self, what: &str) -> ParseError {
        self.error(format_args!("{what} is not supported by testkit"))
    }

    fn is_kw(&self, t: Token, kw: &str) -> bool {
        t.kind == Kind::Ident && self.text(t).eq_ignore_ascii_case(kw)
    }

    fn at_kw(&self, kw: &str) -> bool {
        self.is_kw(self.tok(), kw)
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        let yes = self.at_kw(kw);
        if yes {
            self.pos += 1;
        }
        yes
    }

    fn expect_kw(&mut self, kw: &str) -> PResult<()> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(self.mismatch(kw))
        }
    }

    fn is_sym(&self, t: Token, s: &str) -> bool {
        t.kind == Kind::Sym && self.text(t) == s
    }

    fn at_sym(&self, s: &str) -> bool {
        self.is_sym(self.tok(), s)
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        let yes = self.at_sym(s);
        if yes {
            self.pos += 1;
        }
        yes
    }

    fn expect_sym(&mut self, s: &str) -> PResult<()> {
        if self.eat_sym(s) {
            Ok(())
        } else {
            Err(self.mismatch(&format!("'{s}'")))
        }
    }

    /// After an element of a comma-separated list: `true` if a `,` follows,
    /// `false` after consuming `close`.
    fn list_continues(&mut self, close: &str) -> PResult<bool> {
        if self.eat_sym(",") {
            Ok(true)
        } else if self.eat_sym(close) {
            Ok(false)
        } else {
            Err(self.mismatch(&format!("',' or '{close}'")))
        }
    }

    /// Whether `t` can be an identifier (quoted, or unquoted and not reserved).
    fn is_name_tok(&self, t: Token) -> bool {
        match t.kind {
            Kind::QuotedIdent => true,
            Kind::Ident => !is_reserved(self.text(t)),
            _ => false,
        }
    }

    fn name_of(&self, t: Token) -> String {
        let s = self.text(t);
        if t.kind == Kind::QuotedIdent {
            unescape(&s[1..s.len() - 1], "\"\"", "\"")
        } else {
            s.to_ascii_lowercase()
        }
    }

    fn ident(&mut self) -> PResult<String> {
        let t = self.tok();
        if self.is_name_tok(t) {
            self.pos += 1;
            Ok(self.name_of(t))
        } else {
            Err(self.mismatch("an identifier"))
        }
    }

    fn qualified_name(&mut self) -> PResult<QualifiedName> {
        let first = self.ident()?;
        if self.eat_sym(".") {
            Ok(QualifiedName {
                keyspace: Some(first),
                name: self.ident()?,
            })
        } else {
            Ok(QualifiedName {
                keyspace: None,
                name: first,
            })
        }
    }

    /// `( ident, ... )`
    fn paren_idents(&mut self) -> PResult<Vec<String>> {
        self.expect_sym("(")?;
        let mut names = Vec::new();
        loop {
            names.push(self.ident()?);
            if !self.list_continues(")")? {
                return Ok(names);
            }
        }
    }

    fn if_not_exists(&mut self) -> PResult<bool> {
        if self.eat_kw("IF") {
            self.expect_kw("NOT")?;
            self.expect_kw("EXISTS")?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn if_exists(&mut self) -> PResult<bool> {
        if self.eat_kw("IF") {
            self.expect_kw("EXISTS")?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    // ---- statements

    fn statement(&mut self) -> PResult<Statement> {
        let t = self.tok();
        let kw = |k: &str| self.is_kw(t, k);
        if kw("SELECT") {
            self.select().map(Statement::Select)
        } else if kw("INSERT") {
            self.insert().map(Statement::Insert)
        } else if kw("UPDATE") {
            self.update().map(Statement::Update)
        } else if kw("DELETE") {
            self.delete().map(Statement::Delete)
        } else if kw("BEGIN") {
            self.batch().map(Statement::Batch)
        } else if kw("USE") {
            self.bump();
            self.ident().map(Statement::Use)
        } else if kw("ALTER") {
            self.alter()
        } else if kw("CREATE") {
            self.create()
        } else if kw("DROP") {
            self.drop_stmt()
        } else if kw("TRUNCATE") {
            self.bump();
            if !self.eat_kw("TABLE") {
                self.eat_kw("COLUMNFAMILY");
            }
            self.qualified_name().map(Statement::Truncate)
        } else {
            Err(self.error(format_args!(
                "no viable alternative at input '{}' (expecting SELECT, INSERT, UPDATE, DELETE, \
                 BEGIN BATCH, USE, CREATE, ALTER, DROP or TRUNCATE)",
                self.describe(t)
            )))
        }
    }

    fn bind(&mut self, name: Option<String>) -> Term {
        let index = self.binds.len();
        self.binds.push(name.clone());
        Term::Bind { index, name }
    }

    /// Comma-separated terms up to `close` (the opening bracket is consumed).
    fn terms_until(&mut self, close: &str) -> PResult<Vec<Term>> {
        let mut terms = Vec::new();
        if self.eat_sym(close) {
            return Ok(terms);
        }
        loop {
            terms.push(self.term()?);
            if !self.list_continues(close)? {
                return Ok(terms);
            }
        }
    }

    fn term(&mut self) -> PResult<Term> {
        let t = self.tok();
        let s = self.text(t);
        let literal = match t.kind {
            Kind::Str => Literal::String(unescape(&s[1..s.len() - 1], "''", "'")),
            Kind::DollarStr => Literal::String(s[2..s.len() - 2].to_owned()),
            Kind::Int => Literal::Integer(s.to_owned()),
            Kind::Float => Literal::Float(s.to_owned()),
            Kind::Uuid => Literal::Uuid(s.to_owned()),
            Kind::Blob => Literal::Blob(decode_hex(&s[2..])),
            Kind::Ident if self.is_sym(self.peek(1), "(") => {
                self.pos += 2;
                let name = s.to_ascii_lowercase();
                let args = self.terms_until(")")?;
                return Ok(Term::Function { name, args });
            }
            Kind::Ident => match keyword_literal(s) {
                Some(l) => l,
                None => return Err(self.mismatch(EXPECT_VALUE)),
            },
            Kind::Sym => return self.symbol_term(s),
            Kind::QuotedIdent | Kind::Eof => return Err(self.mismatch(EXPECT_VALUE)),
        };
        self.pos += 1;
        Ok(Term::Literal(literal))
    }

    fn symbol_term(&mut self, s: &str) -> PResult<Term> {
        let literal = match s {
            "?" => {
                self.bump();
                return Ok(self.bind(None));
            }
            ":" => {
                self.bump();
                let t = self.tok();
                if !matches!(t.kind, Kind::Ident | Kind::QuotedIdent) {
                    return Err(self.mismatch("a bind marker name"));
                }
                self.bump();
                let name = self.name_of(t);
                return Ok(self.bind(Some(name)));
            }
            "-" => {
                self.bump();
                let t = self.tok();
                let n = self.text(t);
                let literal = match t.kind {
                    Kind::Int => Literal::Integer(format!("-{n}")),
                    Kind::Float => Literal::Float(format!("-{n}")),
                    Kind::Ident if n.eq_ignore_ascii_case("infinity") => {
                        Literal::Float("-Infinity".to_owned())
                    }
                    _ => return Err(self.mismatch("a number after '-'")),
                };
                self.bump();
                return Ok(Term::Literal(literal));
            }
            "[" => {
                self.bump();
                Literal::List(self.terms_until("]")?)
            }
            "(" => {
                self.bump();
                Literal::List(self.terms_until(")")?)
            }
            "{" => {
                self.bump();
                self.set_or_map()?
            }
            _ => return Err(self.mismatch(EXPECT_VALUE)),
        };
        Ok(Term::Literal(literal))
    }

    /// The rest of `{...}` after the opening brace.
    fn set_or_map(&mut self) -> PResult<Literal> {
        if self.eat_sym("}") {
            return Ok(Literal::Set(Vec::new()));
        }
        let first = self.term()?;
        if !self.eat_sym(":") {
            let mut items = vec![first];
            while self.list_continues("}")? {
                items.push(self.term()?);
            }
            return Ok(Literal::Set(items));
        }
        let mut entries = vec![(first, self.term()?)];
        while self.list_continues("}")? {
            let key = self.term()?;
            self.expect_sym(":")?;
            entries.push((key, self.term()?));
        }
        Ok(Literal::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cql::lexer::RESERVED;

    fn ok(text: &str) -> Parsed {
        parse(text).unwrap_or_else(|e| panic!("{text:?} failed: {e}"))
    }

    fn err(text: &str) -> ParseError {
        match parse(text) {
            Ok(p) => panic!("{text:?} unexpectedly parsed: {p:?}"),
            Err(e) => e,
        }
    }

    macro_rules! extract {
        ($($f:ident: $v:ident),*) => {$(
            fn $f(text: &str) -> $v {
                match ok(text).statement {
                    Statement::$v(s) => s,
                    other => panic!("not a {}: {other:?}", stringify!($v)),
                }
            }
        )*};
    }
    extract!(select: Select, insert: Insert, update: Update, delete: Delete, create_table: CreateTable);

    /// The single value of `INSERT INTO t (a) VALUES (<term>)`.
    fn term(text: &str) -> Term {
        insert(&format!("INSERT INTO t (a) VALUES ({text})"))
            .values
            .remove(0)
    }

    fn lit(l: Literal) -> Term {
        Term::Literal(l)
    }
    fn int(s: &str) -> Term {
        lit(Literal::Integer(s.into()))
    }
    fn string(s: &str) -> Term {
        lit(Literal::String(s.into()))
    }
    fn bind(index: usize) -> Term {
        Term::Bind { index, name: None }
    }
    fn named(index: usize, name: &str) -> Term {
        Term::Bind {
            index,
            name: Some(name.into()),
        }
    }
    fn qn(ks: Option<&str>, name: &str) -> QualifiedName {
        QualifiedName {
            keyspace: ks.map(Into::into),
            name: name.into(),
        }
    }
    fn col(c: &str) -> Selector {
        Selector {
            kind: SelectorKind::Column(c.into()),
            alias: None,
        }
    }
    fn rel(c: &str, op: Operator, rhs: Term) -> Relation {
        Relation {
            lhs: RelationLhs::Column(c.into()),
            op,
            rhs: Some(rhs),
            in_values: None,
        }
    }

    // ---- driver queries

    #[test]
    fn driver_queries_parse() {
        let queries = [
            "SELECT host_id, rpc_address, data_center, rack, tokens FROM system.peers",
            "SELECT host_id, rpc_address, data_center, rack, tokens, cluster_name FROM system.local WHERE key='local'",
            "SELECT schema_version FROM system.local WHERE key='local'",
            "SELECT keyspace_name, replication, durable_writes FROM system_schema.keyspaces where keyspace_name in ?",
            "SELECT keyspace_name, table_name, column_name, kind, position, type FROM system_schema.columns",
            "SELECT connection_id, host_id, address, port, tls_port FROM system.client_routes WHERE host_id IN ? ALLOW FILTERING",
            "SELECT * FROM system.peers_v2",
            "SELECT peer, data_center, host_id, preferred_ip, rack, release_version, rpc_address, schema_version, tokens FROM system.peers",
        ];
        for q in queries {
            ok(q);
        }
    }

    #[test]
    fn driver_local_query_shape() {
        let s = select(
            "SELECT host_id, rpc_address, data_center, rack, tokens, cluster_name FROM system.local WHERE key='local'",
        );
        assert_eq!(s.table, qn(Some("system"), "local"));
        let Selection::Columns(cols) = &s.selection else {
            panic!()
        };
        assert_eq!(cols.len(), 6);
        assert_eq!(cols[5], col("cluster_name"));
        assert_eq!(s.relations, vec![rel("key", Operator::Eq, string("local"))]);
    }

    #[test]
    fn driver_in_marker_query_shape() {
        let p = ok(
            "SELECT connection_id, host_id, address, port, tls_port FROM system.client_routes WHERE host_id IN ? ALLOW FILTERING",
        );
        assert_eq!(p.bind_count, 1);
        assert_eq!(p.bind_names, vec![None]);
        let Statement::Select(s) = p.statement else {
            panic!()
        };
        assert!(s.allow_filtering);
        assert_eq!(
            s.relations,
            vec![Relation {
                lhs: RelationLhs::Column("host_id".into()),
                op: Operator::In,
                rhs: None,
                in_values: Some(InValues::Marker(bind(0))),
            }]
        );
        let s = select("SELECT * FROM system_schema.keyspaces where keyspace_name in :names");
        assert_eq!(
            s.relations[0].in_values,
            Some(InValues::Marker(named(0, "names")))
        );
    }

    // ---- SELECT

    #[test]
    fn select_star_minimal() {
        let s = select("select * from t");
        assert_eq!(s.selection, Selection::Star);
        assert_eq!(s.table, qn(None, "t"));
        assert!(!s.distinct && !s.allow_filtering);
        assert!(s.relations.is_empty() && s.order_by.is_empty());
        assert_eq!((s.limit, s.per_partition_limit), (None, None));
    }

    #[test]
    fn select_full_clause_order() {
        let p = ok(
            "SELECT DISTINCT a AS x, b FROM ks.t WHERE a = ? AND b >= 3 \
             ORDER BY b DESC, c ASC, d PER PARTITION LIMIT ? LIMIT 10 ALLOW FILTERING;",
        );
        assert_eq!(p.bind_count, 2);
        let Statement::Select(s) = p.statement else {
            panic!()
        };
        assert!(s.distinct && s.allow_filtering);
        assert_eq!(
            s.selection,
            Selection::Columns(vec![
                Selector {
                    kind: SelectorKind::Column("a".into()),
                    alias: Some("x".into())
                },
                col("b")
            ])
        );
        assert_eq!(
            s.relations,
            vec![
                rel("a", Operator::Eq, bind(0)),
                rel("b", Operator::Ge, int("3"))
            ]
        );
        let order: Vec<_> = s
            .order_by
            .iter()
            .map(|o| (o.column.as_str(), o.descending))
            .collect();
        assert_eq!(order, [("b", true), ("c", false), ("d", false)]);
        assert_eq!(s.per_partition_limit, Some(bind(1)));
        assert_eq!(s.limit, Some(int("10")));
    }

    #[test]
    fn select_count_forms() {
        for q in ["SELECT COUNT(*) FROM t", "select count(1) from t"] {
            assert_eq!(select(q).selection, Selection::Count { alias: None });
        }
        assert_eq!(
            select("SELECT count(*) AS n FROM t").selection,
            Selection::Count {
                alias: Some("n".into())
            }
        );
        err("SELECT COUNT(2) FROM t");
        err("SELECT a, COUNT(*) FROM t");
        err("SELECT COUNT(*), a FROM t");
    }

    #[test]
    fn select_special_selectors() {
        let s = select("SELECT WRITETIME(v), ttl(v) AS t, token(a, b), ttl, writetime FROM t");
        let Selection::Columns(cols) = s.selection else {
            panic!()
        };
        let kinds: Vec<_> = cols.iter().map(|c| c.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                SelectorKind::WriteTime("v".into()),
                SelectorKind::Ttl("v".into()),
                SelectorKind::Token(vec!["a".into(), "b".into()]),
                SelectorKind::Column("ttl".into()),
                SelectorKind::Column("writetime".into()),
            ]
        );
        assert_eq!(cols[1].alias.as_deref(), Some("t"));
        let s = select("SELECT blobAsText(a), toTimestamp(now()), CAST(v AS varchar) FROM t");
        let Selection::Columns(cols) = s.selection else {
            panic!()
        };
        let f = |name: &str, args| SelectorKind::Function {
            name: name.into(),
            args,
        };
        assert_eq!(
            cols[0].kind,
            f("blobastext", vec![SelectorKind::Column("a".into())])
        );
        assert_eq!(cols[1].kind, f("totimestamp", vec![f("now", vec![])]));
        assert_eq!(
            cols[2].kind,
            SelectorKind::Cast {
                arg: Box::new(SelectorKind::Column("v".into())),
                type_text: "varchar".into()
            }
        );
        let e = err("SELECT CAST(v text) FROM t");
        assert!(e.message.contains("expecting AS"), "{e}");
    }

    #[test]
    fn alter_and_index_statements() {
        let alter = |text: &str| match ok(text).statement {
            Statement::AlterTable(a) => a.op,
            other => panic!("not ALTER TABLE: {other:?}"),
        };
        let def = |name: &str, ty: &str| ColumnDef {
            name: name.into(),
            type_text: ty.into(),
            is_static: false,
        };
        assert_eq!(
            alter("ALTER TABLE ks.t ADD (a int, b map<text, int>)"),
            AlterTableOp::Add(vec![def("a", "int"), def("b", "map<text,int>")])
        );
        assert_eq!(
            alter("ALTER TABLE t DROP (a, b)"),
            AlterTableOp::Drop(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            alter("ALTER TABLE t RENAME a TO b AND c TO d"),
            AlterTableOp::Rename(vec![("a".into(), "b".into()), ("c".into(), "d".into())])
        );
        assert_eq!(
            alter("ALTER TABLE t WITH comment = 'x'"),
            AlterTableOp::With(vec![("comment".into(), "x".into())])
        );
        let Statement::CreateIndex(ci) =
            ok("CREATE INDEX IF NOT EXISTS ON ks.t (keys(m))").statement
        else {
            panic!()
        };
        assert_eq!(
            (ci.name, ci.column, ci.target_kind),
            (None, "m".into(), Some("keys".into()))
        );
        assert!(matches!(
            ok("DROP INDEX IF EXISTS ks.i").statement,
            Statement::DropIndex {
                if_exists: true,
                ..
            }
        ));
        assert!(matches!(
            ok("ALTER KEYSPACE ks WITH durable_writes = false").statement,
            Statement::AlterKeyspace(_)
        ));
        assert!(
            err("ALTER TABLE t ADD")
                .message
                .contains("expecting an identifier")
        );
    }

    #[test]
    fn select_json_rejected_but_json_column_allowed() {
        let e = err("SELECT JSON * FROM t");
        assert!(
            e.message.contains("JSON is not supported by testkit"),
            "{e}"
        );
        assert_eq!(e.position, 7);
        assert_eq!(
            select("SELECT json, distinct FROM t").selection,
            Selection::Columns(vec![col("json"), col("distinct")])
        );
        assert!(!select("SELECT distinct FROM t").distinct);
    }

    #[test]
    fn relations_all_operators() {
        let s = select(
            "SELECT * FROM t WHERE a = 1 AND b != 2 AND c < 3 AND d <= 4 AND e > 5 AND f >= 6 \
             AND g CONTAINS 'x' AND h CONTAINS KEY 'y' AND i IN (1, ?, 3) AND j IN ()",
        );
        let ops: Vec<_> = s.relations.iter().map(|r| r.op).collect();
        use Operator::*;
        assert_eq!(ops, [Eq, Ne, Lt, Le, Gt, Ge, Contains, ContainsKey, In, In]);
        assert_eq!(s.relations[7].rhs, Some(string("y")));
        assert_eq!(
            s.relations[8].in_values,
            Some(InValues::List(vec![int("1"), bind(0), int("3")]))
        );
        assert_eq!(s.relations[9].in_values, Some(InValues::List(vec![])));
        assert_eq!(s.relations[8].rhs, None);
    }

    #[test]
    fn token_and_tuple_relations() {
        let s = select(
            "SELECT * FROM t WHERE token(a, b) > token(?, ?) AND token(a,b) <= 100 \
             AND (c1, c2) >= (1, 'x') AND (c1, c2) < ?",
        );
        assert_eq!(
            s.relations[0].lhs,
            RelationLhs::Token(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            s.relations[0].rhs,
            Some(Term::Function {
                name: "token".into(),
                args: vec![bind(0), bind(1)]
            })
        );
        assert_eq!(s.relations[1].op, Operator::Le);
        assert_eq!(
            s.relations[2].lhs,
            RelationLhs::Tuple(vec!["c1".into(), "c2".into()])
        );
        assert_eq!(
            s.relations[2].rhs,
            Some(lit(Literal::List(vec![int("1"), string("x")])))
        );
        assert_eq!(s.relations[3].rhs, Some(bind(2)));
        let e = err("SELECT * FROM t WHERE (a, b) IN ((1, 2))");
        assert!(e.message.contains("not supported"), "{e}");
        err("SELECT * FROM t WHERE (a, b) = 1");
    }

    // ---- INSERT

    #[test]
    fn insert_basic_and_options_both_orders() {
        let i = insert(
            "INSERT INTO ks.t (a, \"B\") VALUES (1, 'x') IF NOT EXISTS USING TTL 10 AND TIMESTAMP 123",
        );
        assert_eq!(i.table, qn(Some("ks"), "t"));
        assert_eq!(i.columns, vec!["a".to_owned(), "B".to_owned()]);
        assert_eq!(i.values, vec![int("1"), string("x")]);
        assert!(i.if_not_exists);
        assert_eq!(i.using.ttl, Some(int("10")));
        assert_eq!(i.using.timestamp, Some(int("123")));
        let j = insert(
            "INSERT INTO ks.t (a, \"B\") VALUES (1, 'x') USING TIMESTAMP 123 AND TTL 10 IF NOT EXISTS",
        );
        assert_eq!(i, j);
        let k = insert("insert into t (a) values (?)");
        assert!(!k.if_not_exists);
        assert_eq!(k.using, Using::default());
    }

    #[test]
    fn insert_errors() {
        let e = err("INSERT INTO t (a) VALUES");
        assert!(
            e.message.contains("'<EOF>'") && e.message.contains("'('"),
            "{e}"
        );
        assert!(
            err("INSERT INTO t (a, b) VALUES (1)")
                .message
                .contains("unmatched")
        );
        let e = err("INSERT INTO t JSON '{\"a\": 1}'");
        assert!(e.message.contains("INSERT JSON is not supported"), "{e}");
        err("INSERT INTO t (a) VALUES (1) USING TTL 1 USING TTL 2");
        err("INSERT INTO t (a) VALUES (1) USING TTL 1 AND TTL 2");
        err("INSERT INTO t (a) VALUES (1) IF EXISTS");
    }

    #[test]
    fn bind_markers_numbered_in_text_order() {
        let p = ok(
            "INSERT INTO t (a, b, c, d) VALUES (?, :Named, [?, ?], {?: :\"Q\"}) USING TTL ? AND TIMESTAMP :ts",
        );
        assert_eq!(p.bind_count, 8);
        assert_eq!(
            p.bind_names,
            vec![
                None,
                Some("named".into()),
                None,
                None,
                None,
                Some("Q".into()),
                None,
                Some("ts".into())
            ]
        );
        let Statement::Insert(i) = p.statement else {
            panic!()
        };
        assert_eq!(i.values[1], named(1, "named"));
        assert_eq!(
            i.values[3],
            lit(Literal::Map(vec![(bind(4), named(5, "Q"))]))
        );
        assert_eq!(i.using.ttl, Some(bind(6)));
        let s = select("SELECT * FROM t WHERE a = ? AND b IN (?, ?) LIMIT ?");
        assert_eq!(s.limit, Some(bind(3)));
    }

    // ---- UPDATE

    #[test]
    fn update_assignments() {
        let u = update(
            "UPDATE ks.t USING TTL 5 AND TIMESTAMP ? SET a = 1, c = c + 1, l = l - [2], \
             l = [0] + l, m['k'] = 'v', s = s + {'x'}, n = null WHERE k = ?",
        );
        assert_eq!(u.using.ttl, Some(int("5")));
        assert_eq!(u.using.timestamp, Some(bind(0)));
        use Assignment::*;
        let (column, list) = (String::from, |v| lit(Literal::List(vec![v])));
        let expected = [
            Set {
                column: column("a"),
                value: int("1"),
            },
            Add {
                column: column("c"),
                value: int("1"),
            },
            Remove {
                column: column("l"),
                value: list(int("2")),
            },
            Prepend {
                column: column("l"),
                value: list(int("0")),
            },
            SetElement {
                column: column("m"),
                key: string("k"),
                value: string("v"),
            },
            Add {
                column: column("s"),
                value: lit(Literal::Set(vec![string("x")])),
            },
            Set {
                column: column("n"),
                value: lit(Literal::Null),
            },
        ];
        assert_eq!(u.assignments, expected);
        assert_eq!(u.relations, vec![rel("k", Operator::Eq, bind(1))]);
        assert_eq!(u.condition, None);
    }

    #[test]
    fn update_counter_minus_without_spaces() {
        let u = update("UPDATE t SET c = c-1, d = d - -2 WHERE k = 0");
        let remove = |c: &str, v| Assignment::Remove {
            column: c.into(),
            value: v,
        };
        assert_eq!(
            u.assignments,
            [remove("c", int("1")), remove("d", int("-2"))]
        );
    }

    /// `c += x` and `c -= x`: Cassandra's shorthand for `c = c + x` and
    /// `c = c - x`.
    #[test]
    fn update_shorthand_assignments() {
        let u = update("UPDATE t SET c += 1, d -= ?, l+=[2] WHERE k = 0");
        let add = |c: &str, v| Assignment::Add {
            column: c.into(),
            value: v,
        };
        let remove = |c: &str, v| Assignment::Remove {
            column: c.into(),
            value: v,
        };
        assert_eq!(
            u.assignments,
            [
                add("c", int("1")),
                remove("d", bind(0)),
                add("l", lit(Literal::List(vec![int("2")]))),
            ]
        );
    }

    #[test]
    fn update_conditions() {
        let c = |q: &str| update(q).condition;
        assert_eq!(
            c("UPDATE t SET a = 1 WHERE k = 1 IF EXISTS"),
            Some(Condition::Exists)
        );
        assert_eq!(
            c("UPDATE t SET a = 1 WHERE k = 1 IF NOT EXISTS"),
            Some(Condition::NotExists)
        );
        let cond = |c: &str, op, value| ColumnCondition {
            column: c.into(),
            op,
            value,
        };
        let two = lit(Literal::List(vec![int("1"), int("2")]));
        assert_eq!(
            c("UPDATE t SET a = 1 WHERE k = 1 IF a = 0 AND b != ? AND d IN (1, 2) AND e IN ?"),
            Some(Condition::Columns(vec![
                cond("a", Operator::Eq, int("0")),
                cond("b", Operator::Ne, bind(0)),
                cond("d", Operator::In, two),
                cond("e", Operator::In, bind(1)),
            ]))
        );
    }

    #[test]
    fn update_errors() {
        err("UPDATE t SET a = b + 1 WHERE k = 1");
        err("UPDATE t SET a = a WHERE k = 1");
        err("UPDATE t SET a = 1 + b WHERE k = 1");
        err("UPDATE t SET a = 1");
        err("UPDATE t SET WHERE k = 1");
        err("UPDATE t USING TTL 1 USING TTL 2 SET a = 1 WHERE k = 1");
    }

    // ---- DELETE

    #[test]
    fn delete_forms() {
        let d = delete("DELETE FROM ks.t WHERE k = 1");
        assert!(d.targets.is_empty());
        assert_eq!(d.table, qn(Some("ks"), "t"));
        let d = delete(
            "DELETE a, m['k'], l[?] FROM t USING TIMESTAMP 99 WHERE k = ? IF a = 1 AND b > 2",
        );
        let element = |c: &str, key| DeleteTarget::Element {
            column: c.into(),
            key,
        };
        let expected = [
            DeleteTarget::Column("a".into()),
            element("m", string("k")),
            element("l", bind(0)),
        ];
        assert_eq!(d.targets, expected);
        assert_eq!(d.using.timestamp, Some(int("99")));
        assert_eq!(d.relations, vec![rel("k", Operator::Eq, bind(1))]);
        assert!(matches!(d.condition, Some(Condition::Columns(ref c)) if c.len() == 2));
        let d = delete("DELETE FROM t WHERE k = 1 IF EXISTS");
        assert_eq!(d.condition, Some(Condition::Exists));
        err("DELETE FROM t USING TTL 1 WHERE k = 1");
        err("DELETE FROM t WHERE k = 1 IF NOT EXISTS");
        err("DELETE FROM t");
    }

    // ---- BATCH

    #[test]
    fn batch_forms_and_numbering() {
        let p = ok("BEGIN UNLOGGED BATCH USING TIMESTAMP ? \
             INSERT INTO t (a, b) VALUES (?, ?); \
             UPDATE t SET b = :v WHERE a = ? \
             DELETE FROM t WHERE a IN (?, ?); \
             APPLY BATCH;");
        assert_eq!(p.bind_count, 7);
        assert_eq!(p.bind_names[3], Some("v".into()));
        let Statement::Batch(b) = p.statement else {
            panic!()
        };
        assert_eq!(b.kind, BatchKind::Unlogged);
        assert_eq!(b.using.timestamp, Some(bind(0)));
        assert_eq!(b.statements.len(), 3);
        let Statement::Delete(d) = &b.statements[2] else {
            panic!()
        };
        assert_eq!(
            d.relations[0].in_values,
            Some(InValues::List(vec![bind(5), bind(6)]))
        );
        let kind = |q: &str| match ok(q).statement {
            Statement::Batch(b) => b.kind,
            _ => panic!(),
        };
        assert_eq!(kind("begin batch apply batch"), BatchKind::Logged);
        assert_eq!(
            kind("BEGIN COUNTER BATCH UPDATE t SET c = c + 1 WHERE k = 1 APPLY BATCH"),
            BatchKind::Counter
        );
        let e = err("BEGIN BATCH SELECT * FROM t APPLY BATCH");
        assert!(
            e.message.contains("expecting INSERT, UPDATE, DELETE"),
            "{e}"
        );
        err("BEGIN BATCH INSERT INTO t (a) VALUES (1)");
        err("BEGIN BATCH USING TTL 1 APPLY BATCH");
    }

    // ---- USE / DDL

    #[test]
    fn use_statement() {
        assert_eq!(ok("USE MyKs").statement, Statement::Use("myks".into()));
        assert_eq!(ok("use \"MyKs\";").statement, Statement::Use("MyKs".into()));
        err("USE");
    }

    #[test]
    fn create_keyspace() {
        let p = ok("CREATE KEYSPACE IF NOT EXISTS ks WITH replication = \
             {'class': 'SimpleStrategy', 'replication_factor': 1} AND durable_writes = false");
        let Statement::CreateKeyspace(k) = p.statement else {
            panic!()
        };
        assert_eq!(k.name, "ks");
        assert!(k.if_not_exists && !k.durable_writes);
        assert_eq!(
            k.replication,
            vec![
                ("class".into(), "SimpleStrategy".into()),
                ("replication_factor".into(), "1".into())
            ]
        );
        let Statement::CreateKeyspace(k) = ok("create keyspace \"Ks\" with REPLICATION = \
             {'class' : 'NetworkTopologyStrategy', 'dc1' : '3'}")
        .statement
        else {
            panic!()
        };
        assert_eq!(k.name, "Ks");
        assert!(k.durable_writes && !k.if_not_exists);
        assert_eq!(k.replication[1], ("dc1".into(), "3".into()));
        err("CREATE KEYSPACE ks");
        err("CREATE KEYSPACE ks WITH replication = {'class': 'x'} AND bogus = 1");
        err("CREATE KEYSPACE ks WITH durable_writes = 3");
        err("CREATE KEYSPACE ks WITH replication = {'class': 'x'} AND replication = {}");
    }

    #[test]
    fn create_table_inline_key_and_types() {
        let t = create_table(
            "CREATE TABLE IF NOT EXISTS ks.t (k int PRIMARY KEY, \"Val\" TEXT, \
             m MAP<text, frozen< list<int> >>, s set<uuid>, tp tuple<int, text, blob>, \
             f frozen<map<text,int>> static)",
        );
        assert!(t.if_not_exists);
        assert_eq!(t.name, qn(Some("ks"), "t"));
        assert_eq!(t.partition_key, vec!["k".to_owned()]);
        assert!(t.clustering_key.is_empty());
        let cols: Vec<_> = t
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.type_text.as_str(), c.is_static))
            .collect();
        assert_eq!(
            cols,
            [
                ("k", "int", false),
                ("Val", "text", false),
                ("m", "map<text,frozen<list<int>>>", false),
                ("s", "set<uuid>", false),
                ("tp", "tuple<int,text,blob>", false),
                ("f", "frozen<map<text,int>>", true),
            ]
        );
        err("CREATE TABLE t (k int PRIMARY KEY, m map<int>)");
        err("CREATE TABLE t (k int PRIMARY KEY, l list<int, int>)");
        err("CREATE TABLE t (k int PRIMARY KEY, l list)");
    }

    #[test]
    fn create_table_composite_key_and_options() {
        let t = create_table(
            "CREATE TABLE t (a int, b int, c text, d text, v blob, \
             PRIMARY KEY ((a, b), c, d)) WITH CLUSTERING ORDER BY (c DESC, d ASC) \
             AND comment = 'it''s' AND default_time_to_live = 60 AND bloom_filter_fp_chance = 0.01 \
             AND cdc = false AND compaction = {'class': 'SizeTieredCompactionStrategy', 'max_threshold': 32} \
             AND COMPACT STORAGE",
        );
        assert_eq!(t.partition_key, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(t.clustering_key, vec!["c".to_owned(), "d".to_owned()]);
        assert_eq!(
            t.clustering_order,
            vec![("c".to_owned(), true), ("d".to_owned(), false)]
        );
        let opts: Vec<_> = t
            .options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            opts,
            [
                ("comment", "it's"),
                ("default_time_to_live", "60"),
                ("bloom_filter_fp_chance", "0.01"),
                ("cdc", "false"),
                (
                    "compaction",
                    "{'class': 'SizeTieredCompactionStrategy', 'max_threshold': 32}"
                ),
                ("compact_storage", "true"),
            ]
        );
        let t = create_table(
            "CREATE TABLE t (a int, b int, PRIMARY KEY (a, b)) WITH gc_grace_seconds = 0",
        );
        assert_eq!((t.partition_key.len(), t.clustering_key.len()), (1, 1));
        assert!(t.clustering_order.is_empty());
        let t = create_table("CREATE TABLE t (a int, PRIMARY KEY ((a)))");
        assert_eq!(t.partition_key, vec!["a".to_owned()]);
    }

    #[test]
    fn create_table_key_errors() {
        let e = err("CREATE TABLE t (a int, b int)");
        assert!(e.message.contains("missing PRIMARY KEY"), "{e}");
        let e = err("CREATE TABLE t (a int PRIMARY KEY, b int PRIMARY KEY)");
        assert!(e.message.contains("multiple PRIMARY KEY"), "{e}");
        err("CREATE TABLE t (a int PRIMARY KEY, PRIMARY KEY (a))");
        err("CREATE TABLE t (a int PRIMARY KEY) WITH comment = 'a' AND comment = 'b'");
        err("CREATE TABLE t (a int PRIMARY KEY) WITH");
        err("CREATE TABLE t a int PRIMARY KEY");
        err("CREATE INDEX i ON t a");
    }

    #[test]
    fn drop_and_truncate() {
        let ks = |name: &str, if_exists| Statement::DropKeyspace {
            name: name.into(),
            if_exists,
        };
        let table = |name, if_exists| Statement::DropTable { name, if_exists };
        assert_eq!(ok("DROP KEYSPACE IF EXISTS ks").statement, ks("ks", true));
        assert_eq!(ok("drop keyspace Ks").statement, ks("ks", false));
        assert_eq!(
            ok("DROP TABLE IF EXISTS ks.t").statement,
            table(qn(Some("ks"), "t"), true)
        );
        assert_eq!(ok("DROP TABLE t").statement, table(qn(None, "t"), false));
        assert_eq!(
            ok("TRUNCATE ks.t").statement,
            Statement::Truncate(qn(Some("ks"), "t"))
        );
        assert_eq!(
            ok("TRUNCATE TABLE t;").statement,
            Statement::Truncate(qn(None, "t"))
        );
        err("DROP INDEX");
        err("DROP TABLE IF t");
    }

    // ---- lexing and terms

    #[test]
    fn quoted_identifiers() {
        let s = select("SELECT \"MixedCase\", \"with \"\"quote\"\"\", Plain FROM \"Ks\".\"Tbl\"");
        assert_eq!(
            s.selection,
            Selection::Columns(vec![col("MixedCase"), col("with \"quote\""), col("plain")])
        );
        assert_eq!(s.table, qn(Some("Ks"), "Tbl"));
        // Reserved words work when quoted.
        assert_eq!(
            select("SELECT \"from\" FROM \"select\"").table,
            qn(None, "select")
        );
        err("SELECT from FROM t");
        err("SELECT \"\" FROM t");
    }

    #[test]
    fn comments_are_skipped() {
        let s =
            select("-- leading comment\nSELECT /* inline\n block */ a // trailing\nFROM t -- end");
        assert_eq!(s.selection, Selection::Columns(vec![col("a")]));
        assert!(
            err("SELECT a FROM t /* never closed")
                .message
                .contains("unterminated comment")
        );
        err("-- only a comment");
    }

    #[test]
    fn string_literals() {
        assert_eq!(term("'it''s'"), string("it's"));
        assert_eq!(term("''"), string(""));
        assert_eq!(term("$$it's a $ sign$$"), string("it's a $ sign"));
        assert_eq!(term("'ünïcödé ✓'"), string("ünïcödé ✓"));
        let e = err("SELECT * FROM t WHERE a = 'oops");
        assert!(e.message.contains("unterminated string"), "{e}");
        assert_eq!(e.position, 26);
        err("SELECT * FROM t WHERE a = $$oops");
    }

    #[test]
    fn numbers_uuids_and_floats() {
        assert_eq!(term("42"), int("42"));
        assert_eq!(term("-7"), int("-7"));
        let float = |s: &str| lit(Literal::Float(s.into()));
        assert_eq!(term("1.5"), float("1.5"));
        assert_eq!(term("-2.5e10"), float("-2.5e10"));
        assert_eq!(term("1e10"), float("1e10"));
        assert_eq!(term("3E-2"), float("3E-2"));
        assert_eq!(term("123e4567"), float("123e4567"));
        assert_eq!(term("1."), float("1."));
        assert_eq!(term("NaN"), float("NaN"));
        assert_eq!(term("infinity"), float("Infinity"));
        assert_eq!(term("-Infinity"), float("-Infinity"));
        let uuid = |s: &str| lit(Literal::Uuid(s.into()));
        for u in [
            "123e4567-e89b-12d3-a456-426614174000",
            "00000000-0000-0000-0000-000000000000",
            "f47ac10b-58cc-4372-a567-0e02b2c3d479",
            "ABCDEF01-2345-6789-ABCD-EF0123456789",
        ] {
            assert_eq!(term(u), uuid(u));
        }
        // A uuid-looking prefix that is too long is not a uuid.
        err("INSERT INTO t (a) VALUES (123e4567-e89b-12d3-a456-4266141740001)");
        err("INSERT INTO t (a) VALUES (12abc)");
        err("INSERT INTO t (a) VALUES (- 'x')");
    }

    #[test]
    fn blobs() {
        assert_eq!(term("0xCAFE"), lit(Literal::Blob(vec![0xca, 0xfe])));
        assert_eq!(term("0x00ff10"), lit(Literal::Blob(vec![0, 0xff, 0x10])));
        assert_eq!(term("0x"), lit(Literal::Blob(vec![])));
        let e = err("INSERT INTO t (a) VALUES (0xABC)");
        assert!(e.message.contains("odd number of hex digits"), "{e}");
        err("INSERT INTO t (a) VALUES (0xZZ)");
    }

    #[test]
    fn booleans_null_and_functions() {
        assert_eq!(term("TRUE"), lit(Literal::Boolean(true)));
        assert_eq!(term("false"), lit(Literal::Boolean(false)));
        assert_eq!(term("NULL"), lit(Literal::Null));
        let f = |name: &str, args| Term::Function {
            name: name.into(),
            args,
        };
        assert_eq!(term("now()"), f("now", vec![]));
        assert_eq!(term("UUID()"), f("uuid", vec![]));
        assert_eq!(term("currentTimestamp()"), f("currenttimestamp", vec![]));
        assert_eq!(
            term("toTimestamp(now())"),
            f("totimestamp", vec![f("now", vec![])])
        );
        assert_eq!(term("blobAsText(?)"), f("blobastext", vec![bind(0)]));
        err("INSERT INTO t (a) VALUES (somecolumn)");
    }

    #[test]
    fn collections_nested() {
        assert_eq!(term("{}"), lit(Literal::Set(vec![])));
        assert_eq!(term("[]"), lit(Literal::List(vec![])));
        assert_eq!(
            term("{'a': [1, 2], 'b': []}"),
            lit(Literal::Map(vec![
                (string("a"), lit(Literal::List(vec![int("1"), int("2")]))),
                (string("b"), lit(Literal::List(vec![]))),
            ]))
        );
        assert_eq!(
            term("[{1, 2}, {-3}]"),
            lit(Literal::List(vec![
                lit(Literal::Set(vec![int("1"), int("2")])),
                lit(Literal::Set(vec![int("-3")])),
            ]))
        );
        assert_eq!(
            term("(1, 'a', {1: {'x': 0x01}})"),
            lit(Literal::List(vec![
                int("1"),
                string("a"),
                lit(Literal::Map(vec![(
                    int("1"),
                    lit(Literal::Map(vec![(
                        string("x"),
                        lit(Literal::Blob(vec![1]))
                    )]))
                )])),
            ]))
        );
        err("INSERT INTO t (a) VALUES ([1, 2)");
        err("INSERT INTO t (a) VALUES ({1: 2, 3})");
        err("INSERT INTO t (a) VALUES ({1, 2: 3})");
    }

    #[test]
    fn keywords_are_case_insensitive() {
        let a = ok("SeLeCt A fRoM Ks.T wHeRe A = 1 LiMiT 1 AlLoW fIlTeRiNg");
        let b = ok("select a from ks.t where a = 1 limit 1 allow filtering");
        assert_eq!(a, b);
    }

    #[test]
    fn reserved_table_is_well_formed() {
        for (n, words) in RESERVED.iter().enumerate() {
            for w in words.split(' ').filter(|w| !w.is_empty()) {
                assert_eq!(w.len(), n, "{w}");
                assert!(is_reserved(w) && is_reserved(&w.to_ascii_uppercase()));
            }
        }
        for w in [
            "",
            "a",
            "key",
            "type",
            "ttl",
            "count",
            "json",
            "keyspaces",
            "fromx",
        ] {
            assert!(!is_reserved(w), "{w}");
        }
    }

    // ---- errors

    #[test]
    fn error_messages_quote_token_and_expectation() {
        let e = err("SELEC * FROM t");
        assert!(
            e.message
                .starts_with("line 1:0 no viable alternative at input 'SELEC'"),
            "{e}"
        );
        assert_eq!(e.position, 0);
        let e = err("SELECT * FORM t");
        assert_eq!(e.message, "line 1:9 mismatched input 'FORM' expecting FROM");
        assert_eq!(e.to_string(), e.message);
        assert_eq!(e.position, 9);
        let e = err("SELECT a\n  FROM t\n  WHER a = 1");
        assert_eq!(e.message, "line 3:2 extraneous input 'WHER' expecting EOF");
        let e = err("SELECT * FROM t WHERE");
        assert!(e.message.contains("'<EOF>'"), "{e}");
        assert_eq!(e.position, 21);
        let e = err("SELECT * FROM t WHERE a");
        assert!(e.message.contains("expecting one of ="), "{e}");
        let e = err("SELECT * FROM t WHERE a = 1 AND");
        assert!(e.message.contains("expecting an identifier"), "{e}");
    }

    #[test]
    fn empty_and_garbage_inputs() {
        assert!(err("").message.contains("'<EOF>'"));
        err("   ");
        err(";");
        let e = err("SELECT * FROM t; SELECT * FROM t");
        assert!(e.message.contains("extraneous input 'SELECT'"), "{e}");
        err("SELECT * FROM t garbage");
        err("SELECT * FROM t LIMIT 1 LIMIT 2");
        let e = err("SELECT * FROM t WHERE a # 1");
        assert!(e.message.contains("unexpected character '#'"), "{e}");
        err("SELECT * FROM t WHERE a ! 1");
        err("SELECT * FROM t WHERE a = ?;;");
        err("SELECT * FROM t ALLOW");
        err("SELECT FROM t");
        err("SELECT * FROM");
        err("SELECT * FROM ks.");
        err("SELECT * FROM t GROUP BY a");
        err("SELECT * FROM t WHERE a IN 1");
        err("SELECT * FROM t WHERE a = :");
        err("SELECT * FROM t ORDER a");
    }

    #[test]
    fn error_column_counts_chars_on_line() {
        // Two-byte chars before the error still count as one column each.
        let e = err("INSERT INTO t (a, b) VALUES ('é', 1) FOO");
        assert_eq!(e.message, "line 1:37 extraneous input 'FOO' expecting EOF");
        assert_eq!(e.position, 38);
    }
}
