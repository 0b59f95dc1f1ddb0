//! The lexer of testkit's CQL parser: the statement text as a vector of
//! token spans, with no allocation per token. Comments, quoted identifiers,
//! `'strings'`, `$$strings$$`, numbers, UUIDs and blobs; errors carry the
//! position as Cassandra's do (`line 1:9 ...`).

use super::parser::{PResult, error_at};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
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
pub(super) struct Token {
    pub(super) kind: Kind,
    pub(super) start: usize,
    pub(super) end: usize,
}

pub(super) fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Whether an unquoted 8-4-4-4-12 hex UUID starts at `i`.
pub(super) fn is_uuid_at(b: &[u8], i: usize) -> bool {
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

pub(super) fn find(b: &[u8], from: usize, pat: &[u8; 2]) -> Option<usize> {
    b.get(from..)?
        .windows(2)
        .position(|w| w == pat)
        .map(|p| p + from)
}

/// End (exclusive) of a quoted token starting at `i` whose quote is doubled
/// to escape it.
pub(super) fn quoted_end(b: &[u8], i: usize, q: u8) -> Option<usize> {
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

pub(super) fn lex(src: &str) -> PResult<Vec<Token>> {
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
            // (`+=` and `-=`: the shorthand assignments `c += x`, `c -= x`)
            b'!' | b'<' | b'>' | b'+' | b'-' if next == Some(b'=') => {
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
pub(super) fn lex_number(b: &[u8], mut i: usize) -> (Kind, usize) {
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
pub(super) const RESERVED: [&str; 13] = [
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

pub(super) fn is_reserved(word: &str) -> bool {
    let n = word.len();
    RESERVED.get(n).is_some_and(|words| {
        words
            .as_bytes()
            .chunks(n + 1)
            .any(|k| k[..n].eq_ignore_ascii_case(word.as_bytes()))
    })
}
