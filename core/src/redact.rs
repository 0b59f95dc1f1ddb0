//! Statement text with every literal replaced by `?`, so no inline value
//! reaches a log, a span or `Debug` output; and an error's message with
//! what looks like a value replaced by `?` ([`error_message`]), so no
//! value a server or the driver quotes in an error does either.
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

/// `message`, an error's text from the server or the driver, with what
/// looks like a value replaced by `?`. A server that cannot use a value
/// often quotes it (`Unable to make long from 'secret'`, `Invalid STRING
/// constant (secret) for "k" of type int`), a bound value as well as a
/// literal of the statement, and the driver's error repeats the server's
/// message. Replaced, each by one `?`:
///
/// - a quoted string, `'...'` or `$$...$$`, quotes included (an
///   apostrophe inside a word, as in `doesn't`, is not a quote; a quote
///   followed by a letter or digit does not end a string, so `'o'brien'`
///   is one; one left open runs to the end);
/// - a number (sign, decimals, exponent, a duration such as `1h30m` or
///   `PT5S`, `NaN`, `Infinity`), a blob (`0x...`) and a UUID, as the CQL
///   lexer reads them: `70000`, `127.0.0.1`, `-3.5e2`;
/// - the inside of parentheses that do not follow a word directly, `(abc
///   def)` becoming `(?)` (one left open: to the end), unless it is a list
///   of `name: value` fields, the driver's own details (`(keyspace: ks,
///   table: kv)`), whose values go by the rules above. Parentheses right
///   after a word (`Native(Int)`, `f(int)`) are a type or a call: read
///   token by token.
///
/// Kept as written: the wording (unquoted words, so keyspace, table and
/// column names, types and keywords), `"quoted identifiers"`, `true` and
/// `false`, punctuation and whitespace. There are no comments in a
/// message: `--` is two characters like any others.
///
/// What it cannot see: a value the server writes bare, as a word of its
/// own (`Invalid UUID string: abc`), stays; a value that holds a quote
/// followed by a space (`'a' b'`) is cut there. Reads the text through
/// the same lexer as [`sanitize`] (in its prose mode).
///
/// ```
/// use tower_cql_core::redact::error_message;
///
/// assert_eq!(
///     error_message("Invalid STRING constant (secret) for \"k\" of type int"),
///     "Invalid STRING constant (?) for \"k\" of type int"
/// );
/// assert_eq!(
///     error_message("Key length of 70000 is longer than maximum of 65535"),
///     "Key length of ? is longer than maximum of ?"
/// );
/// assert_eq!(
///     error_message("Cannot parse 'x@y' as hex bytes in table ks.kv"),
///     "Cannot parse ? as hex bytes in table ks.kv"
/// );
/// ```
pub fn error_message(message: &str) -> String {
    let tokens: Vec<Token<'_>> = Lexer::prose(message).collect();
    // where a token starts in `message` (its text is a slice of it)
    let at = |t: &Token<'_>| t.text.as_ptr() as usize - message.as_ptr() as usize;
    let mut out = String::with_capacity(message.len());
    // `message` up to here is in `out`
    let mut copied = 0;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i];
        match t.kind {
            Kind::Literal(Lit::Bool) => {}
            Kind::Literal(_) => {
                let start = at(&t);
                out.push_str(&message[copied..start]);
                out.push('?');
                copied = start + t.text.len();
            }
            Kind::Punct
                if t.text == "("
                    && !(i > 0 && !t.space_before && tokens[i - 1].kind == Kind::Word) =>
            {
                let close = closing(&tokens[i..]).map(|n| i + n);
                let inside = &tokens[i + 1..close.unwrap_or(tokens.len())];
                if !inside.is_empty() && !is_field_list(inside) {
                    let start = at(&t) + 1;
                    out.push_str(&message[copied..start]);
                    out.push('?');
                    match close {
                        Some(c) => {
                            copied = at(&tokens[c]);
                            i = c;
                        }
                        None => {
                            copied = message.len();
                            i = tokens.len();
                        }
                    }
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out.push_str(&message[copied..]);
    out
}

/// The index of the `)` closing the `(` `tokens` starts with, if any.
fn closing(tokens: &[Token<'_>]) -> Option<usize> {
    let mut depth = 0usize;
    for (n, t) in tokens.iter().enumerate() {
        if t.is_punct("(") {
            depth += 1;
        } else if t.is_punct(")") {
            depth -= 1;
            if depth == 0 {
                return Some(n);
            }
        }
    }
    None
}

/// Whether `tokens` (inside parentheses) are `name: value` fields
/// separated by commas, each starting with a word and a colon.
fn is_field_list(tokens: &[Token<'_>]) -> bool {
    let mut depth = 0usize;
    let mut item_start = 0;
    for (n, t) in tokens.iter().enumerate() {
        match t.kind {
            Kind::Punct if matches!(t.text, "(" | "[" | "{") => depth += 1,
            Kind::Punct if matches!(t.text, ")" | "]" | "}") => depth = depth.saturating_sub(1),
            _ => {}
        }
        if n == item_start
            && !(t.kind == Kind::Word && tokens.get(n + 1).is_some_and(|c| c.is_punct(":")))
        {
            return false;
        }
        if depth == 0 && t.is_punct(",") {
            item_start = n + 1;
        }
    }
    item_start < tokens.len()
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

    /// An error's text from the server or the driver loses what looks
    /// like a value (quoted strings, parenthesised constants, numbers,
    /// blobs, UUIDs); its wording, `"quoted identifiers"` and the
    /// keyspace and table names stay as written.
    #[test]
    fn an_error_message_loses_what_looks_like_a_value() {
        use super::error_message;
        let cases = [
            // Cassandra's and Scylla's InvalidRequest messages
            (
                "Invalid INTEGER constant (abc) for \"k\" of type int",
                "Invalid INTEGER constant (?) for \"k\" of type int",
            ),
            (
                "Invalid STRING constant (hello SECRET world) for \"v\" of type int",
                "Invalid STRING constant (?) for \"v\" of type int",
            ),
            (
                "Invalid HEX constant (0xcafe) for \"b\" of type int",
                "Invalid HEX constant (?) for \"b\" of type int",
            ),
            (
                "Invalid FLOAT constant (-3.5e2) for \"k\" of type int",
                "Invalid FLOAT constant (?) for \"k\" of type int",
            ),
            (
                "Key length of 70000 is longer than maximum of 65535",
                "Key length of ? is longer than maximum of ?",
            ),
            (
                "Cannot parse 'x@y' as hex bytes",
                "Cannot parse ? as hex bytes",
            ),
            (
                "Unable to make long from 'secret'",
                "Unable to make long from ?",
            ),
            (
                "Error decoding JSON value for v: Unable to make int from 'it''s'",
                "Error decoding JSON value for v: Unable to make int from ?",
            ),
            // a quote inside the value does not end it
            (
                "Unable to make int from 'o'brien'",
                "Unable to make int from ?",
            ),
            (
                "Unable to make int from 'é SECRET' for \"prénom\"",
                "Unable to make int from ? for \"prénom\"",
            ),
            (
                "Unable to make int from $$SECRET$$",
                "Unable to make int from ?",
            ),
            (
                "Unsupported UUID for timeuuid: 123e4567-e89b-12d3-a456-426614174000 is not a version 1 UUID",
                "Unsupported UUID for timeuuid: ? is not a version ? UUID",
            ),
            (
                "Expected 4 or 0 byte int (8) for column v",
                "Expected ? or ? byte int (?) for column v",
            ),
            // an apostrophe inside a word is not a quote
            (
                "The logged user doesn't have the right to perform the query",
                "The logged user doesn't have the right to perform the query",
            ),
            // names stay: keyspace, table, quoted identifiers, types
            (
                "Undefined column name \"col 42\" in table ks.kv2",
                "Undefined column name \"col 42\" in table ks.kv2",
            ),
            (
                "Invalid list literal for l of type list<int>",
                "Invalid list literal for l of type list<int>",
            ),
            // the driver's own wording: its field lists keep their names,
            // lose their numbers; a type in parentheses (`Native(Int)`)
            // stays
            (
                "Database returned an error: Not enough nodes are alive to satisfy required \
                 consistency level (consistency: Quorum, required: 2, alive: 1), \
                 Error message: Cannot achieve consistency level",
                "Database returned an error: Not enough nodes are alive to satisfy required \
                 consistency level (consistency: Quorum, required: ?, alive: ?), \
                 Error message: Cannot achieve consistency level",
            ),
            (
                "Attempted to create a keyspace or a table that was already existing \
                 (keyspace: ks, table: kv)",
                "Attempted to create a keyspace or a table that was already existing \
                 (keyspace: ks, table: kv)",
            ),
            (
                "Failed to serialize Rust type &str into CQL type Native(Int): mismatch",
                "Failed to serialize Rust type &str into CQL type Native(Int): mismatch",
            ),
            // no comments in a message: what follows `--` is read too
            (
                "Invalid constant (--SECRET) -- x",
                "Invalid constant (?) -- x",
            ),
            // unterminated: to the end
            ("Cannot parse 'SECRET as hex", "Cannot parse ?"),
            ("Invalid constant (SECRET for \"k\"", "Invalid constant (?"),
            ("", ""),
        ];
        for (message, want) in cases {
            assert_eq!(error_message(message), want, "{message}");
        }
    }

    proptest! {
        #[test]
        fn a_quoted_or_parenthesised_secret_never_survives_in_a_message(
            secret in "[a-zA-Z0-9_@. -]{1,30}",
            word in "[a-z]{1,8}",
        ) {
            // a marker no message's wording holds
            let value = format!("v4lue{secret}");
            for message in [
                format!("Unable to make {word} from '{value}'"),
                format!("Invalid STRING constant ({value}) for \"{word}\" of type int"),
                format!("{word}: '{value}' and more"),
            ] {
                let out = super::error_message(&message);
                prop_assert!(!out.contains("v4lue"), "{} -> {}", message, out);
            }
        }

        #[test]
        fn any_message_never_panics(text in ".{0,200}") {
            let _ = super::error_message(&text);
        }
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
