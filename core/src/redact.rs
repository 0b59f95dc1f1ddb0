//! Statement text with every literal replaced by `?`, so no inline value
//! reaches a log, a span or `Debug` output.
//!
//! ```
//! use tower_cql_core::redact::sanitize;
//!
//! assert_eq!(
//!     sanitize("SELECT * FROM t WHERE name = 'bob' AND id = 42 AND b = 0xCAFE"),
//!     "SELECT * FROM t WHERE name = ? AND id = ? AND b = ?"
//! );
//! ```

/// Replaces string, number, UUID, blob, boolean and collection literals
/// with `?`; keeps keywords, identifiers, bind markers and punctuation.
/// Whitespace runs become one space; comments are dropped.
pub fn sanitize(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut pending_space = false;
    let push = |out: &mut String, s: &str, pending: &mut bool| {
        if *pending && !out.is_empty() {
            out.push(' ');
        }
        *pending = false;
        out.push_str(s);
    };
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            pending_space = true;
            i += 1;
            continue;
        }
        // comments
        if (c == b'-' && b.get(i + 1) == Some(&b'-')) || (c == b'/' && b.get(i + 1) == Some(&b'/'))
        {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            pending_space = true;
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i = (i + 2).min(b.len());
            pending_space = true;
            continue;
        }
        // string literal
        if c == b'\'' {
            i += 1;
            while i < b.len() {
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i = (i + 1).min(b.len());
            push(&mut out, "?", &mut pending_space);
            continue;
        }
        // $$ string $$
        if c == b'$' && b.get(i + 1) == Some(&b'$') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'$' && b[i + 1] == b'$') {
                i += 1;
            }
            i = (i + 2).min(b.len());
            push(&mut out, "?", &mut pending_space);
            continue;
        }
        // quoted identifier: keep
        if c == b'"' {
            let start = i;
            i += 1;
            while i < b.len() {
                if b[i] == b'"' {
                    if b.get(i + 1) == Some(&b'"') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i = (i + 1).min(b.len());
            push(&mut out, &text[start..i], &mut pending_space);
            continue;
        }
        // numbers, blobs, uuids (which may start with a digit) and a sign
        // directly before a number after an operator
        let sign = (c == b'-' || c == b'+') && b.get(i + 1).is_some_and(u8::is_ascii_digit) && {
            let prev = out.trim_end().chars().last();
            prev.is_none_or(|p| "=<>(,[{:+-*/".contains(p))
        };
        if c.is_ascii_digit() || sign {
            i += 1;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'.' | b'-' | b'+' | b'_'))
            {
                // stop at a minus that starts an operator expression like `1 - 2`
                if (b[i] == b'-' || b[i] == b'+')
                    && !matches!(b[i - 1], b'e' | b'E')
                    && !is_uuid_dash(b, i)
                {
                    break;
                }
                i += 1;
            }
            push(&mut out, "?", &mut pending_space);
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let word = &text[start..i];
            // hex-looking uuids that start with a letter: 8-4-4-4-12
            if b.get(i) == Some(&b'-')
                && word.len() == 8
                && word.bytes().all(|x| x.is_ascii_hexdigit())
            {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_hexdigit() || b[j] == b'-') {
                    j += 1;
                }
                if j - start == 36 {
                    i = j;
                    push(&mut out, "?", &mut pending_space);
                    continue;
                }
            }
            let lower = word.to_ascii_lowercase();
            if matches!(lower.as_str(), "true" | "false" | "nan" | "infinity") {
                push(&mut out, "?", &mut pending_space);
            } else {
                push(&mut out, word, &mut pending_space);
            }
            continue;
        }
        // punctuation, one char (UTF-8 safe)
        let ch_len = text[i..].chars().next().map_or(1, char::len_utf8);
        push(&mut out, &text[i..i + ch_len], &mut pending_space);
        // no space inside `( ... )` joins: keep the author's spacing otherwise
        i += ch_len;
    }
    collapse_collections(&out)
}

fn is_uuid_dash(b: &[u8], i: usize) -> bool {
    // inside an 8-4-4-4-12 run of hex digits
    let mut start = i;
    while start > 0 && (b[start - 1].is_ascii_hexdigit() || b[start - 1] == b'-') {
        start -= 1;
    }
    let mut end = i;
    while end < b.len() && (b[end].is_ascii_hexdigit() || b[end] == b'-') {
        end += 1;
    }
    end - start == 36
}

/// `[?, ?, ?]`, `{?: ?}` and `(?, ?)` of literals become one `?`.
fn collapse_collections(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'[' || c == b'{' {
            let close = if c == b'[' { b']' } else { b'}' };
            let mut j = i + 1;
            let mut only_literals = true;
            let mut depth = 1;
            while j < b.len() && depth > 0 {
                match b[j] {
                    x if x == c => depth += 1,
                    x if x == close => depth -= 1,
                    b'?' | b',' | b' ' | b':' | b'[' | b']' | b'{' | b'}' => {}
                    _ => only_literals = false,
                }
                j += 1;
            }
            if depth == 0 && only_literals {
                out.push('?');
                i = j;
                continue;
            }
        }
        out.push(c as char);
        i += 1;
    }
    out
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
        ];
        for (input, want) in cases {
            assert_eq!(sanitize(input), want, "{input}");
        }
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
