//! Statement text with every literal replaced by `?`, so no inline value
//! reaches a log, a span or `Debug` output; and prose from the server or
//! the driver with what looks like a value replaced by `?`, so no value
//! it quotes does either. The prose rule is one, written once (in
//! `redact/prose.rs`, described on [`error_message`]), for the three
//! kinds of prose the stack records:
//!
//! - an error's message, [`error_message`]: everything that looks like a
//!   value goes;
//! - a server's account of its own work, which names nodes and counts
//!   what it did: a trace step's activity text
//!   ([`sanitize_activity`](crate::server_trace::sanitize_activity)) and
//!   a response's warnings ([`warning`]). The same, but a node's address
//!   and a count (`Read 3 live rows`) stay.
//!
//! ```
//! use tower_cql_core::redact::sanitize;
//!
//! assert_eq!(
//!     sanitize("SELECT * FROM t WHERE name = 'bob' AND id = 42 AND b = 0xCAFE"),
//!     "SELECT * FROM t WHERE name = ? AND id = ? AND b = ?"
//! );
//! ```

use crate::lex::{Kind, Lexer, Lit, Token};

mod prose;

pub(crate) use prose::{Keep, prose};
pub use prose::{error_message, warning};

/// Replaces string, number, UUID, blob, boolean and collection literals
/// with `?`; keeps keywords, identifiers, bind markers and punctuation.
/// Whitespace runs become one space; comments are dropped. Reads the text
/// through the same lexer as the statement analysis.
pub fn sanitize(text: &str) -> String {
    let tokens: Vec<Token<'_>> = Lexer::new(text).collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i];
        if t.space_before && !out.is_empty() {
            out.push(' ');
        }
        if let Some(end) = literal_collection(&tokens[i..]) {
            out.push('?');
            i += end;
            continue;
        }
        match t.kind {
            Kind::Literal(_) => out.push('?'),
            _ => out.push_str(t.text),
        }
        i += 1;
    }
    out
}

/// The number of tokens of the collection literal `tokens` starts with
/// (`[1, 2]`, `{'a': [1]}`, `{}`; `?` markers count as literals, named
/// ones do not), or `None`: it starts with none.
fn literal_collection(tokens: &[Token<'_>]) -> Option<usize> {
    if !tokens.first()?.is_punct("[") && !tokens[0].is_punct("{") {
        return None;
    }
    let mut depth = 0usize;
    for (n, t) in tokens.iter().enumerate() {
        match t.kind {
            Kind::Punct if t.text == "[" || t.text == "{" => depth += 1,
            Kind::Punct if t.text == "]" || t.text == "}" => {
                depth -= 1;
                if depth == 0 {
                    return Some(n + 1);
                }
            }
            Kind::Punct if t.text == "," || t.text == ":" => {}
            Kind::Literal(_) => {}
            Kind::Bind if t.text == "?" => {}
            _ => return None,
        }
    }
    None
}

/// `message` (a server's error, which may quote what it could not use)
/// with every literal of `statement` it quotes replaced by `?`, where it
/// stands as a word of its own (not inside a longer word); `None` when it
/// quotes none. A string literal is looked for by its value (without its
/// quotes, `''` read as `'`); booleans are left alone.
pub(crate) fn without_literals(message: &str, statement: &crate::Statement) -> Option<String> {
    use scylla::statement::batch::BatchStatement;
    let mut out: Option<String> = None;
    let mut redact = |text: &str| {
        for t in Lexer::new(text) {
            let value = match t.kind {
                Kind::Literal(Lit::String) => string_value(t.text),
                Kind::Literal(Lit::Bool) => continue,
                Kind::Literal(_) => std::borrow::Cow::Borrowed(t.text),
                _ => continue,
            };
            if value.is_empty() {
                continue;
            }
            if let Some(replaced) = replace_words(out.as_deref().unwrap_or(message), &value) {
                out = Some(replaced);
            }
        }
    };
    match statement.body() {
        crate::StatementBody::Cql { text, .. } => redact(text),
        crate::StatementBody::Prepared(p) => redact(p.get_statement()),
        crate::StatementBody::Batch(b) => {
            for s in &b.statements {
                match s {
                    BatchStatement::Query(q) => redact(&q.contents),
                    BatchStatement::PreparedStatement(p) => redact(p.get_statement()),
                    _ => {}
                }
            }
        }
    }
    out
}

/// A string literal's value: `'it''s'` is `it's`, `$$x$$` is `x` (an
/// unterminated one runs to the end).
fn string_value(text: &str) -> std::borrow::Cow<'_, str> {
    if let Some(inner) = text.strip_prefix("$$") {
        return std::borrow::Cow::Borrowed(inner.strip_suffix("$$").unwrap_or(inner));
    }
    let inner = text.strip_prefix('\'').unwrap_or(text);
    let inner = inner.strip_suffix('\'').unwrap_or(inner);
    if inner.contains("''") {
        std::borrow::Cow::Owned(inner.replace("''", "'"))
    } else {
        std::borrow::Cow::Borrowed(inner)
    }
}

/// `s` with each occurrence of `word` that no letter, digit or `_`
/// touches on either side replaced by `?`; `None` if there is none.
fn replace_words(s: &str, word: &str) -> Option<String> {
    let touches = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut out = String::new();
    let mut last = 0;
    let mut any = false;
    for (i, _) in s.match_indices(word) {
        let end = i + word.len();
        if i < last || touches(s[..i].chars().next_back()) || touches(s[end..].chars().next()) {
            continue;
        }
        out.push_str(&s[last..i]);
        out.push('?');
        last = end;
        any = true;
    }
    if !any {
        return None;
    }
    out.push_str(&s[last..]);
    Some(out)
}

/// A short form for `Debug`: sanitised, cut to 120 characters.
pub(crate) fn summary(text: &str) -> String {
    let s = sanitize(text);
    if s.chars().count() > 120 {
        let cut: String = s.chars().take(117).collect();
        format!("{cut}...")
    } else {
        s
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::sanitize;
    use proptest::prelude::*;

    /// A server error's message loses the statement's literals it quotes
    /// (whole words only), strings by their value; other words stay.
    #[test]
    fn a_message_loses_the_literals_of_its_statement() {
        use super::without_literals;
        let st = crate::Statement::new(
            "INSERT INTO ks.t (k, v, n, b) VALUES ('it''s-SECRET', $$dollar SECRET$$, 4217, true)",
        );
        let msg = "Invalid STRING constant (it's-SECRET) for \"k\" of type int; \
                   also dollar SECRET, 4217 and 42170 and true";
        assert_eq!(
            without_literals(msg, &st).as_deref(),
            Some("Invalid STRING constant (?) for \"k\" of type int; also ?, ? and 42170 and true")
        );
        assert_eq!(without_literals("Keyspace ks does not exist", &st), None);
    }

    #[test]
    fn replaces_literals() {
        let cases = [
            (
                "SELECT * FROM ks.t WHERE k = ?",
                "SELECT * FROM ks.t WHERE k = ?",
            ),
            (
                "INSERT INTO t (a, b) VALUES ('x''y', -3.5e2)",
                "INSERT INTO t (a, b) VALUES (?, ?)",
            ),
            (
                "UPDATE t SET l = l + [1, 2, 3] WHERE k = 123e4567-e89b-12d3-a456-426614174000",
                "UPDATE t SET l = l + ? WHERE k = ?",
            ),
            (
                "UPDATE t SET m = {'a': 1, 'b': 2} WHERE id = abcdef01-e89b-12d3-a456-426614174000",
                "UPDATE t SET m = ? WHERE id = ?",
            ),
            (
                "SELECT * FROM t WHERE b = 0xDEADbeef AND ok = true",
                "SELECT * FROM t WHERE b = ? AND ok = ?",
            ),
            (
                "SELECT * FROM t WHERE x = $$dollar 'quoted'$$ -- comment 'x'",
                "SELECT * FROM t WHERE x = ?",
            ),
            (
                "SELECT \"Weird Col\" FROM \"Tab\" WHERE k = :name",
                "SELECT \"Weird Col\" FROM \"Tab\" WHERE k = :name",
            ),
            (
                "SELECT v FROM t WHERE k = 'é ü'",
                "SELECT v FROM t WHERE k = ?",
            ),
            // a map value right after its colon
            (
                "UPDATE ks.t SET m = {'k':deadbeef-e89b-12d3-a456-426614174000} WHERE k = ?",
                "UPDATE ks.t SET m = ? WHERE k = ?",
            ),
            (
                "UPDATE ks.t SET m = {1:abcdef01-e89b-12d3-a456-426614174000, 2:true} WHERE k = :k",
                "UPDATE ks.t SET m = ? WHERE k = :k",
            ),
            ("UPDATE ks.t SET m = {'k':true}", "UPDATE ks.t SET m = ?"),
            // durations, every form
            (
                "UPDATE ks.t SET a = P1Y2M3DT4H30M, b = P2W, c = P0001-02-03T04:05:06, d = 1h30m, e = -pt5s WHERE k = ?",
                "UPDATE ks.t SET a = ?, b = ?, c = ?, d = ?, e = ? WHERE k = ?",
            ),
            (
                "SELECT price, p2w_col, P FROM t WHERE d = [P2W, P1D]",
                "SELECT price, p2w_col, P FROM t WHERE d = ?",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(sanitize(input), want, "{input}");
        }
    }

    /// A quoted identifier that looks like a collection comes out as
    /// written: the collapse of literal collections works on tokens, so a
    /// name is never taken for one. (It worked on the sanitised text, and
    /// shortened `"{?}"` to `?`.) Bind markers in a collection are kept as
    /// they were: `[?, ?]` becomes one `?`, named ones stay.
    #[test]
    fn a_quoted_name_is_never_collapsed() {
        for (input, want) in [
            ("SELECT \"{?}\" FROM t", "SELECT \"{?}\" FROM t"),
            (
                "SELECT \"[?, ?]\", \"{}\" FROM t WHERE k IN [1, 2]",
                "SELECT \"[?, ?]\", \"{}\" FROM t WHERE k IN ?",
            ),
            (
                "INSERT INTO t (l, m) VALUES ([?, ?], {:a: :b})",
                "INSERT INTO t (l, m) VALUES (?, {:a: :b})",
            ),
            (
                "UPDATE t SET m = {'a': [1, {2: 3}]} WHERE k = ?",
                "UPDATE t SET m = ? WHERE k = ?",
            ),
            (
                "UPDATE t SET s = {} WHERE k = ?",
                "UPDATE t SET s = ? WHERE k = ?",
            ),
        ] {
            assert_eq!(sanitize(input), want, "{input}");
        }
    }

    /// A name with non-ASCII characters comes out as written. Copied one
    /// byte at a time as a `char`, each byte of `é` became a character
    /// of its own (`prÃ©nom`).
    #[test]
    fn non_ascii_names_come_out_as_written() {
        for (input, want) in [
            (
                "SELECT \"prénom\" FROM \"Tåble\" WHERE k = ?",
                "SELECT \"prénom\" FROM \"Tåble\" WHERE k = ?",
            ),
            (
                "UPDATE \"Ωμέγα\" SET \"日本\" = [1, 2] WHERE \"ü\" = {'ä': 'ö'}",
                "UPDATE \"Ωμέγα\" SET \"日本\" = ? WHERE \"ü\" = ?",
            ),
            ("SELECT \"🦀\" FROM t", "SELECT \"🦀\" FROM t"),
        ] {
            assert_eq!(sanitize(input), want, "{input}");
        }
        // the statement's recorded text is the same
        let s = crate::Statement::new("SELECT \"é\" FROM ks.t WHERE k = 'x'");
        assert_eq!(
            s.sanitized_text(),
            Some("SELECT \"é\" FROM ks.t WHERE k = ?")
        );
    }

    proptest! {
        #[test]
        fn no_string_or_number_literal_survives(s in "[a-zA-Z0-9 ]{1,20}", n in any::<i64>(), f in -1.0e9f64..1.0e9) {
            let text = format!("INSERT INTO t (a, b, c) VALUES ('{s}', {n}, {f})");
            let out = sanitize(&text);
            prop_assert_eq!(out, "INSERT INTO t (a, b, c) VALUES (?, ?, ?)");
        }

        #[test]
        fn arbitrary_input_never_panics(text in ".{0,200}") {
            let _ = sanitize(&text);
        }

        #[test]
        fn uuid_blob_and_collection_literals_never_survive(
            u in any::<u128>(),
            blob in proptest::collection::vec(any::<u8>(), 1..16),
            items in proptest::collection::vec(any::<i32>(), 1..5),
            key in "[a-z]{1,8}",
        ) {
            let h = format!("{u:032x}");
            let uuid = format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
            let blob: String = blob.iter().map(|b| format!("{b:02x}")).collect();
            let list = items.iter().map(i32::to_string).collect::<Vec<_>>().join(", ");
            let text = format!(
                "UPDATE t SET a = {uuid}, b = 0x{blob}, c = [{list}], d = {{{list}}}, e = {{'{key}': {}}} WHERE k = {uuid}",
                items[0]
            );
            let out = sanitize(&text);
            prop_assert_eq!(&out, "UPDATE t SET a = ?, b = ?, c = ?, d = ?, e = ? WHERE k = ?", "{}", text);
        }

        #[test]
        fn secret_inside_quotes_never_survives(secret in "[a-zA-Z0-9_]{6,30}", before in " {0,5}") {
            let text = format!("SELECT * FROM t WHERE {before} x = '{secret}'");
            prop_assert!(!sanitize(&text).contains(&secret));
        }
    }
}
