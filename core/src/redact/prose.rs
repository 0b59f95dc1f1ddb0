//! The one redaction of the server's (and the driver's) prose: an
//! error's message ([`error_message`]), a trace step's activity text
//! ([`sanitize_activity`](crate::server_trace::sanitize_activity)) and a
//! response's warnings ([`warning`]) are read by the same rule, which
//! [`error_message`] describes; only what it keeps differs ([`Keep`]).

use crate::lex::{Kind, Lexer, Lit, Token};

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
///   def)` becoming `(?)` (a half-open range, `(a, b]`, becomes `(?]`;
///   one left open: to the end), unless it is a list
///   of `name: value` fields, the driver's own details (`(keyspace: ks,
///   table: kv)`), whose values go by the rules above. Parentheses right
///   after a word (`Native(Int)`, `f(int)`) are a type or a call: read
///   token by token, unless they hold a value (`f(42)`, Cassandra's
///   `DecoratedKey(-1, ab12)`, a key's token and bytes): then their
///   inside goes whole, a bare hex word with it (`DecoratedKey(?)`);
/// - the inside of braces right after a word: Scylla's key bytes in hex
///   (`pk{ffffffff}` becoming `pk{?}`, `ckp{...}`), which start with a
///   letter as often as not. Braces after a space (`{127.0.0.1}`) are
///   read token by token;
/// - a word (or `true`, `false`) written right after a name and `=`
///   with no space (`v=hunter2`, `key=abc`): a value the server prints
///   after its column's name, as Cassandra prints a row.
///
/// Kept as written: the wording (unquoted words, so keyspace, table and
/// column names, types and keywords), `"quoted identifiers"`, `true` and
/// `false` (but after `name=`), punctuation and whitespace. There are no comments in a
/// message: `--` is two characters like any others.
///
/// What it cannot see: a value the server writes bare, as a word of its
/// own (`Invalid UUID string: abc`), stays (after `name=`, its first word
/// goes, the next ones of a value holding spaces stay); a value that holds a quote
/// followed by a space (`'a' b'`) is cut there. A statement the text
/// quotes inside other words (a warning's `... for query SELECT ...`)
/// is read as prose too: its literals go, the words of a comment in it
/// stay, and a column list in parentheses goes as a value would (a
/// trace step that is a statement, `Parsing INSERT ...`, is sanitised
/// as a statement: see
/// [`sanitize_activity`](crate::server_trace::sanitize_activity)). Reads
/// the text through the same lexer as [`sanitize`](super::sanitize) (in
/// its prose mode).
///
/// This is the one rule for the server's prose: a trace step's activity
/// text ([`sanitize_activity`](crate::server_trace::sanitize_activity))
/// and a response's warnings ([`warning`]) go by it too, keeping two
/// things more, which there count or name what the server did and are no
/// values of a request: an IPv4 node address (`/127.0.0.2`, with the
/// `:port` written right after it, `/127.0.0.2:7000`), and a whole number
/// right before a word that says what it counts (`Read 3 live rows and 0
/// tombstone cells`, `97 bytes`, `2 sstables`: rows, cells, tombstones,
/// sstables, bytes, partitions, replicas and the like). An error's
/// message keeps neither: a value the server could not use can look like
/// either.
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
    prose(message, Keep::Nothing)
}

/// A server's warning (a response's
/// [`warnings`](crate::ExecutionInfo::warnings), as the server sent
/// them) with what looks like a value replaced by `?`: what a
/// response's `Debug` shows of it. A warning can quote a value (a
/// tombstone warning quotes the query, a batch warning the key); it is
/// the server's account of its own work, so it goes by the rule of
/// [`error_message`], its node addresses and counts kept as in a trace
/// step's activity text.
///
/// ```
/// use tower_cql_core::redact::warning;
///
/// assert_eq!(
///     warning("Read 1 live rows and 1001 tombstone cells for query SELECT v FROM ks.kv WHERE k = 'bob'"),
///     "Read 1 live rows and 1001 tombstone cells for query SELECT v FROM ks.kv WHERE k = ?"
/// );
/// ```
pub fn warning(text: &str) -> String {
    prose(text, Keep::NodesAndCounts)
}

/// What [`prose`] keeps of what looks like a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Nothing: an error's message.
    Nothing,
    /// IPv4 node addresses (with a `:port` written right after) and whole
    /// numbers right before a [`COUNT_WORDS`] word: the server's account
    /// of its own work (trace activity texts, warnings).
    NodesAndCounts,
}

/// Words after which a number is a count the server reports (rows read,
/// tombstones, sstables, bytes), not a value of the request.
const COUNT_WORDS: &[&str] = &[
    "live",
    "rows",
    "row",
    "tombstone",
    "tombstones",
    "cells",
    "sstables",
    "sstable",
    "entries",
    "bytes",
    "ranges",
    "partitions",
    "mutations",
    "replicas",
    "memtables",
    "ms",
];

impl Keep {
    /// How many tokens `tokens`, which starts with a number, begins with
    /// that are kept as written: an address (3 with its `:port`), a count
    /// (1), or none (0).
    fn kept(self, tokens: &[Token<'_>]) -> usize {
        let (Keep::NodesAndCounts, [number, rest @ ..]) = (self, tokens) else {
            return 0;
        };
        let digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
        if is_ipv4(number.text) {
            return match rest {
                [colon, port, ..]
                    if colon.is_punct(":")
                        && !colon.space_before
                        && !port.space_before
                        && port.kind == Kind::Literal(Lit::Number)
                        && digits(port.text) =>
                {
                    3
                }
                _ => 1,
            };
        }
        let counts = rest.first().is_some_and(|w| {
            w.kind == Kind::Word && COUNT_WORDS.iter().any(|c| w.text.eq_ignore_ascii_case(c))
        });
        usize::from(digits(number.text) && counts)
    }
}

/// Whether a number token is an IPv4 address: four groups of one to
/// three digits, joined by dots, nothing more.
fn is_ipv4(s: &str) -> bool {
    let mut groups = 0;
    for g in s.split('.') {
        if g.is_empty() || g.len() > 3 || !g.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
        groups += 1;
    }
    groups == 4
}

/// The one redaction of the server's (and the driver's) prose, the rule
/// [`error_message`] describes, keeping what `keep` says: `text` read
/// once through the lexer's prose mode, copied as written but for what
/// it replaces.
pub(crate) fn prose(text: &str, keep: Keep) -> String {
    let tokens: Vec<Token<'_>> = Lexer::prose(text).collect();
    // where a token starts in `text` (its text is a slice of it)
    let at = |t: &Token<'_>| t.text.as_ptr() as usize - text.as_ptr() as usize;
    let mut out = String::with_capacity(text.len());
    // `text` up to here is in `out`
    let mut copied = 0;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i];
        match t.kind {
            // a value printed bare after its name (`v=hunter2`: a row as
            // the server prints it), a word or `true` though it is
            Kind::Word | Kind::Literal(Lit::Bool)
                if i >= 2
                    && !t.space_before
                    && tokens[i - 1].is_punct("=")
                    && !tokens[i - 1].space_before
                    && tokens[i - 2].kind == Kind::Word =>
            {
                let start = at(&t);
                out.push_str(&text[copied..start]);
                out.push('?');
                copied = start + t.text.len();
            }
            Kind::Literal(Lit::Bool) => {}
            Kind::Literal(lit) => {
                let kept = match lit {
                    Lit::Number => keep.kept(&tokens[i..]),
                    _ => 0,
                };
                if kept > 0 {
                    i += kept;
                    continue;
                }
                let start = at(&t);
                out.push_str(&text[copied..start]);
                out.push('?');
                copied = start + t.text.len();
            }
            Kind::Punct if t.text == "(" || t.text == "{" => {
                let after_word = i > 0 && !t.space_before && tokens[i - 1].kind == Kind::Word;
                let close = if t.text == "(" {
                    closing(&tokens[i..])
                } else {
                    closer(&tokens[i..], &["{"], &["}"])
                }
                .map(|n| i + n);
                let inside = &tokens[i + 1..close.unwrap_or(tokens.len())];
                let goes = match (t.text, after_word) {
                    // a value, or values, unless the driver's fields
                    ("(", false) => !is_field_list(inside),
                    // a call's or a key's arguments (`DecoratedKey(-1,
                    // ab12)`) go whole, their bare hex with them; a type
                    // (`Native(Int)`) stays
                    ("(", true) => inside.iter().any(|t| matches!(t.kind, Kind::Literal(_))),
                    // a key's bytes in hex (`pk{ffffffff}`)
                    (_, true) => true,
                    // a set (`{127.0.0.1}`): token by token
                    _ => false,
                };
                if !inside.is_empty() && goes {
                    let start = at(&t) + 1;
                    out.push_str(&text[copied..start]);
                    out.push('?');
                    match close {
                        Some(c) => {
                            copied = at(&tokens[c]);
                            i = c;
                        }
                        None => {
                            copied = text.len();
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
    out.push_str(&text[copied..]);
    out
}

/// The index of the `)` closing the `(` `tokens` starts with; without
/// one, of the `]` closing it as a half-open range (`(a, b]`, a token
/// range in a trace step), brackets counted as parentheses. A `]` inside
/// parentheses that do close (`(abc] secret)`, a value holding one) ends
/// nothing.
fn closing(tokens: &[Token<'_>]) -> Option<usize> {
    closer(tokens, &["("], &[")"]).or_else(|| closer(tokens, &["(", "["], &[")", "]"]))
}

/// The index of the token that brings the depth back to zero, counting
/// `open` and `close` tokens from the opener `tokens` starts with.
fn closer(tokens: &[Token<'_>], open: &[&str], close: &[&str]) -> Option<usize> {
    let mut depth = 0usize;
    for (n, t) in tokens.iter().enumerate() {
        if t.kind != Kind::Punct {
            continue;
        }
        if open.contains(&t.text) {
            depth += 1;
        } else if close.contains(&t.text) {
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

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use proptest::prelude::*;

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
                format!("{word}n't find '{value}' -- in 3 sstables"),
            ] {
                // the one rule, whatever it keeps
                for out in [
                    super::error_message(&message),
                    super::warning(&message),
                    crate::server_trace::sanitize_activity(&message),
                ] {
                    prop_assert!(!out.contains("v4lue"), "{} -> {}", message, out);
                }
            }
        }

        #[test]
        fn any_message_never_panics(text in ".{0,200}") {
            let _ = super::error_message(&text);
            let _ = super::warning(&text);
        }
    }

    /// The server's account of its own work (trace activity, warnings)
    /// goes by the rule of an error's message, keeping node addresses and
    /// counts, nothing else: where these are not, the two read alike.
    #[test]
    fn a_servers_report_keeps_nodes_and_counts_an_error_neither() {
        use super::{error_message, is_ipv4, warning};
        for (text, error, report) in [
            (
                "Sending READ_REQ message to /127.0.0.2:7000 message size 97 bytes",
                "Sending READ_REQ message to /?:? message size ? bytes",
                "Sending READ_REQ message to /127.0.0.2:7000 message size 97 bytes",
            ),
            (
                "Read 3 live rows and 1001 tombstone cells for query \
                 SELECT v FROM ks.kv WHERE k = 'x' LIMIT 5000",
                "Read ? live rows and ? tombstone cells for query \
                 SELECT v FROM ks.kv WHERE k = ? LIMIT ?",
                "Read 3 live rows and 1001 tombstone cells for query \
                 SELECT v FROM ks.kv WHERE k = ? LIMIT ?",
            ),
            // a port with a space is no port; a count needs its word
            (
                "to 10.0.0.1 : 7000, 12 rows, 12 keys, 1.5 bytes",
                "to ? : ?, ? rows, ? keys, ? bytes",
                "to 10.0.0.1 : ?, 12 rows, ? keys, ? bytes",
            ),
            // parentheses go whole, what they hold kept or not
            (
                "Page stats: 1 clustering row(s) (1 live, 0 dead) on (127.0.0.1)",
                "Page stats: ? clustering row(s) (?) on (?)",
                "Page stats: ? clustering row(s) (?) on (?)",
            ),
            (
                "Couldn't find 'o'brien' -- key 42 on 127.0.0.3",
                "Couldn't find ? -- key ? on ?",
                "Couldn't find ? -- key ? on 127.0.0.3",
            ),
        ] {
            assert_eq!(error_message(text), error, "{text}");
            assert_eq!(warning(text), report, "{text}");
            assert_eq!(
                crate::server_trace::sanitize_activity(text),
                report,
                "{text}"
            );
        }
        assert!(!is_ipv4("1.2.3.4.5"));
        assert!(!is_ipv4("1.2.3"));
        assert!(!is_ipv4("1.2.3.4e5"));
        assert!(!is_ipv4("1234.2.3.4"));
        assert!(!is_ipv4(""));
        assert!(is_ipv4("10.0.0.1"));
    }

    /// A half-open range, `(a, b]` (how Cassandra's trace steps write a
    /// token range), closes at its `]`: what it holds goes, the text after
    /// it stays. Read as a parenthesis left open, everything after it went.
    #[test]
    fn a_half_open_range_closes_at_its_bracket() {
        use super::{error_message, warning};
        for (text, error, report) in [
            (
                "Executing seq scan across 2 sstables for (min(-9223372036854775808), max(42)] in ks.kv",
                "Executing seq scan across ? sstables for (?] in ks.kv",
                "Executing seq scan across 2 sstables for (?] in ks.kv",
            ),
            // a `]` inside parentheses that close is a value's
            (
                "Invalid STRING constant (abc] secret) for v",
                "Invalid STRING constant (?) for v",
                "Invalid STRING constant (?) for v",
            ),
            (
                "Scanning (1, 5] then (7, 9] on 127.0.0.2",
                "Scanning (?] then (?] on ?",
                "Scanning (?] then (?] on 127.0.0.2",
            ),
        ] {
            assert_eq!(error_message(text), error, "{text}");
            assert_eq!(warning(text), report, "{text}");
            assert_eq!(
                crate::server_trace::sanitize_activity(text),
                report,
                "{text}"
            );
        }
    }
}
