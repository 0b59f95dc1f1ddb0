//! A hand-written lexer and recursive-descent parser for the CQL subset that
//! testkit executes; it produces the syntax tree defined in `ast.rs`.
//!
//! The lexer turns the whole statement into a vector of token spans (no
//! per-token allocation); the parser then walks it, allocating only for the
//! strings that end up in the tree. Errors mimic Cassandra's syntax errors:
//! `line 1:9 mismatched input 'FORM' expecting FROM`.
//!
//! The lexer (`lex` and its helpers) and the parser share the token spans
//! and the error positions, and the tests drive both through [`parse`].
//! Statement groups live in child modules as `impl Parser` blocks sharing
//! the token helpers: `select.rs` (the selection: columns, functions,
//! CAST) and `ddl.rs` (ALTER TABLE/KEYSPACE, CREATE INDEX). The lexer stays
//! here, one for every statement.

use std::fmt;

use super::ast::*;

#[path = "ddl.rs"]
mod ddl;
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

type PResult<T> = Result<T, ParseError>;

/// Builds an error at byte offset `pos`, prefixing `line L:C`.
fn error_at(src: &str, pos: usize, msg: impl fmt::Display) -> ParseError {
    let before = &src[..pos];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count();
    ParseError {
        message: format!("line {line}:{col} {msg}"),
        position: pos,
    }
}

// ---------------------------------------------------------------- lexer --

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Unquoted identifier or keyword.
    Ident,
    /// `"Quoted"` identifier (span includes the quotes).
    QuotedIdent,
    /// `'string'` (span includes the quotes).
    Str,
    /// `$$string$$` (span includes the dollars).
    DollarStr,
    Int,
    Float,
    Uuid,
    /// `0x...` (span includes the prefix).
    Blob,
    /// Punctuation or operator; its text is the span.
    Sym,
    Eof,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Whether an unquoted 8-4-4-4-12 hex UUID starts at `i`.
fn is_uuid_at(b: &[u8], i: usize) -> bool {
    let Some(s) = b.get(i..i + 36) else {
        return false;
    };
    let shape = s.iter().enumerate().all(|(k, &c)| {
        if matches!(k, 8 | 13 | 18 | 23) {
            c == b'-'
        } else {
            c.is_ascii_hexdigit()
        }
    });
    shape && !b.get(i + 36).is_some_and(|&c| is_ident_byte(c))
}

fn find(b: &[u8], from: usize, pat: &[u8; 2]) -> Option<usize> {
    b.get(from..)?
        .windows(2)
        .position(|w| w == pat)
        .map(|p| p + from)
}

/// End (exclusive) of a quoted token starting at `i` whose quote is doubled
/// to escape it.
fn quoted_end(b: &[u8], i: usize, q: u8) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let k = j + b.get(j..)?.iter().position(|&c| c == q)?;
        if b.get(k + 1) == Some(&q) {
            j = k + 2;
        } else {
            return Some(k + 1);
        }
    }
}

fn lex(src: &str) -> PResult<Vec<Token>> {
    let b = src.as_bytes();
    let mut toks = Vec::with_capacity(b.len() / 4 + 2);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        let start = i;
        let kind = match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0c => {
                i += 1;
                continue;
            }
            b'-' | b'/' if next == Some(c) => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p);
                continue;
            }
            b'/' if next == Some(b'*') => match find(b, i + 2, b"*/") {
                Some(e) => {
                    i = e + 2;
                    continue;
                }
                None => {
                    return Err(error_at(src, start, "unterminated comment"));
                }
            },
            b'\'' | b'"' => {
                let Some(end) = quoted_end(b, i, c) else {
                    let what = if c == b'"' {
                        "quoted identifier"
                    } else {
                        "string literal"
                    };
                    return Err(error_at(src, start, format_args!("unterminated {what}")));
                };
                i = end;
                if c == b'\'' {
                    Kind::Str
                } else if end == start + 2 {
                    return Err(error_at(src, start, "empty quoted identifier"));
                } else {
                    Kind::QuotedIdent
                }
            }
            b'$' if next == Some(b'$') => {
                let Some(e) = find(b, i + 2, b"$$") else {
                    return Err(error_at(src, start, "unterminated $$ string literal"));
                };
                i = e + 2;
                Kind::DollarStr
            }
            _ if c.is_ascii_hexdigit() && is_uuid_at(b, i) => {
                i += 36;
                Kind::Uuid
            }
            b'0' if matches!(next, Some(b'x' | b'X')) => {
                i += 2;
                let hex = i;
                while b.get(i).is_some_and(u8::is_ascii_hexdigit) {
                    i += 1;
                }
                let digits = i - hex;
                while b.get(i).is_some_and(|&c| is_ident_byte(c)) {
                    i += 1;
                }
                if i - hex != digits || digits % 2 == 1 {
                    let why = if i - hex != digits {
                        "not a hex digit"
                    } else {
                        "odd number of hex digits"
                    };
                    let blob = &src[start..i];
                    return Err(error_at(
                        src,
                        start,
                        format!("invalid blob literal '{blob}': {why}"),
                    ));
                }
                Kind::Blob
            }
            b'0'..=b'9' => {
                let (kind, end) = lex_number(b, i);
                i = end;
                if b.get(i).is_some_and(|&c| is_ident_byte(c)) {
                    while b.get(i).is_some_and(|&c| is_ident_byte(c) || c == b'.') {
                        i += 1;
                    }
                    return Err(error_at(
                        src,
                        start,
                        format_args!("invalid number literal '{}'", &src[start..i]),
                    ));
                }
                kind
            }
            _ if c.is_ascii_alphabetic() => {
                while b.get(i).is_some_and(|&c| is_ident_byte(c)) {
                    i += 1;
                }
                Kind::Ident
            }
            b'!' | b'<' | b'>' if next == Some(b'=') => {
                i += 2;
                Kind::Sym
            }
            b'=' | b'<' | b'>' | b'(' | b')' | b',' | b'.' | b';' | b'*' | b'?' | b':' | b'['
            | b']' | b'{' | b'}' | b'+' | b'-' => {
                i += 1;
                Kind::Sym
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or_default();
                return Err(error_at(
                    src,
                    start,
                    format_args!("unexpected character '{ch}'"),
                ));
            }
        };
        toks.push(Token {
            kind,
            start,
            end: i,
        });
    }
    toks.push(Token {
        kind: Kind::Eof,
        start: b.len(),
        end: b.len(),
    });
    Ok(toks)
}

/// Lexes `digits [. digits*] [e [+-] digits]` starting at `i`.
fn lex_number(b: &[u8], mut i: usize) -> (Kind, usize) {
    let digit_at = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let mut kind = Kind::Int;
    while digit_at(i) {
        i += 1;
    }
    if b.get(i) == Some(&b'.') {
        kind = Kind::Float;
        i += 1;
        while digit_at(i) {
            i += 1;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if digit_at(j) {
            kind = Kind::Float;
            i = j;
            while digit_at(i) {
                i += 1;
            }
        }
    }
    (kind, i)
}

/// Keywords that cannot be used as unquoted identifiers, grouped by length:
/// entry `n` holds the space-separated reserved words of `n` letters.
const RESERVED: [&str; 13] = [
    "",
    "",
    "by if in is of on or to",
    "add and asc nan not set use",
    "desc drop from full into null true view with",
    "allow alter apply batch begin false grant index limit order table token using where",
    "create delete insert modify rename revoke schema select update",
    "entries execute primary",
    "describe infinity keyspace truncate unlogged",
    "authorize",
    "",
    "norecursive",
    "columnfamily",
];

fn is_reserved(word: &str) -> bool {
    let n = word.len();
    RESERVED.get(n).is_some_and(|words| {
        words
            .as_bytes()
            .chunks(n + 1)
            .any(|k| k[..n].eq_ignore_ascii_case(word.as_bytes()))
    })
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

    /// Whether `t` can follow a selector (so a preceding `JSON`/`DISTINCT`
    /// is a column name, not a modifier).
    fn ends_selector(&self, t: Token) -> bool {
        self.is_sym(t, ",") || self.is_kw(t, "FROM") || self.is_kw(t, "AS")
    }

    fn select(&mut self) -> PResult<Select> {
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
    fn direction(&mut self) -> bool {
        let desc = self.eat_kw("DESC");
        if !desc {
            self.eat_kw("ASC");
        }
        desc
    }

    fn alias(&mut self) -> PResult<Option<String>> {
        if self.eat_kw("AS") {
            self.ident().map(Some)
        } else {
            Ok(None)
        }
    }

    fn relations(&mut self) -> PResult<Vec<Relation>> {
        let mut rels = Vec::new();
        loop {
            rels.push(self.relation()?);
            if !self.eat_kw("AND") {
                return Ok(rels);
            }
        }
    }

    fn comparison(&mut self) -> Option<Operator> {
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

    fn expect_comparison(&mut self) -> PResult<Operator> {
        self.comparison()
            .ok_or_else(|| self.mismatch("one of =, !=, <, <=, >, >="))
    }

    fn at_bind(&self) -> bool {
        self.at_sym("?") || self.at_sym(":")
    }

    fn relation(&mut self) -> PResult<Relation> {
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

    fn using(&mut self, using: &mut Using, allow_ttl: bool) -> PResult<()> {
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

    fn insert(&mut self) -> PResult<Insert> {
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

    fn update(&mut self) -> PResult<Update> {
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

    fn assignment(&mut self) -> PResult<Assignment> {
        let column = self.ident()?;
        if self.eat_sym("[") {
            let key = self.term()?;
            self.expect_sym("]")?;
            self.expect_sym("=")?;
            let value = self.term()?;
            return Ok(Assignment::SetElement { column, key, value });
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

    fn expect_same_column(&mut self, column: &str) -> PResult<()> {
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
    fn condition(&mut self, allow_not_exists: bool) -> PResult<Option<Condition>> {
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

    fn delete(&mut self) -> PResult<Delete> {
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

    fn batch(&mut self) -> PResult<BatchStatement> {
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

    fn create(&mut self) -> PResult<Statement> {
        self.bump();
        if self.eat_kw("KEYSPACE") || self.eat_kw("SCHEMA") {
            self.create_keyspace().map(Statement::CreateKeyspace)
        } else if self.eat_kw("TABLE") || self.eat_kw("COLUMNFAMILY") {
            self.create_table().map(Statement::CreateTable)
        } else if self.eat_kw("INDEX") {
            self.create_index().map(Statement::CreateIndex)
        } else if self.at_kw("CUSTOM") {
            Err(self.unsupported("CREATE CUSTOM INDEX"))
        } else {
            Err(self.mismatch("KEYSPACE, TABLE or INDEX"))
        }
    }

    fn drop_stmt(&mut self) -> PResult<Statement> {
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

    fn create_keyspace(&mut self) -> PResult<CreateKeyspace> {
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
    fn keyspace_properties(&mut self) -> PResult<(Option<Vec<(String, String)>>, Option<bool>)> {
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

    fn boolean_value(&mut self) -> PResult<bool> {
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
    fn constant_text(&mut self) -> Option<String> {
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

    fn replication_map(&mut self) -> PResult<Vec<(String, String)>> {
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

    fn create_table(&mut self) -> PResult<CreateTable> {
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
    fn option_value(&mut self) -> PResult<String> {
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
    fn type_text(&mut self, out: &mut String) -> PResult<()> {
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
