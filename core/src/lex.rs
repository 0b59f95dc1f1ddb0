//! The one CQL lexer: statement analysis ([`crate::request`]'s kind,
//! keyspace, table, LWT, counter, list-append, element-delete and
//! non-deterministic detection) and the sanitiser ([`crate::redact`])
//! both read statement text through it, so a quote inside a `$$` string
//! or an `IF` inside a comment means the same to both. The server's and
//! the driver's prose, which quotes values (error messages, trace
//! activity texts, warnings), is read by its prose mode ([`Lexer::prose`],
//! for the one prose redaction, [`crate::redact::error_message`]'s rule).
//!
//! It knows what Cassandra's own lexer knows about where a literal or a
//! comment starts and ends: `'...'` with `''` for a quote, `$$...$$`
//! (no escapes, ends at the first `$$`), `"quoted identifiers"` with `""`,
//! `--` and `//` line comments, `/* */` block comments (not nested), blobs
//! (`0x...`), UUIDs (also those starting with a letter), numbers with a
//! sign or an exponent, durations (`1h30m`, and the ISO 8601 forms
//! `P1Y2M3DT4H30M`, `P2W` and `P0001-02-03T04:05:06`), and the literal
//! words `true`, `false`, `NaN` and `Infinity`. Everything else is a word, a bind marker or one
//! character of punctuation. An unterminated literal or comment runs to
//! the end of the text. No allocation.
//!
//! ```text
//! UPDATE t SET v = $$it's$$ WHERE k = ? IF v = ?
//! Word   W Word W P Literal Word  W P B Word W P B   (the IF is seen)
//! ```
//!
//! Its users' public examples: [`crate::analysis`] and
//! [`crate::redact::sanitize`].

/// What a literal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lit {
    /// `'...'` or `$$...$$`.
    String,
    /// Integers, decimals, exponents, durations, `NaN`, `Infinity`.
    Number,
    /// `0x...`.
    Blob,
    /// `01234567-89ab-...`.
    Uuid,
    /// `true` or `false`.
    Bool,
}

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An unquoted identifier or keyword.
    Word,
    /// A `"quoted identifier"` (the text keeps its quotes).
    Quoted,
    /// A literal value: never recorded.
    Literal(Lit),
    /// `?` or `:name`.
    Bind,
    /// One character of punctuation or an operator.
    Punct,
}

/// One token: its kind, its text, and whether whitespace or a comment
/// came before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token<'a> {
    pub(crate) kind: Kind,
    pub(crate) text: &'a str,
    pub(crate) space_before: bool,
}

impl Token<'_> {
    /// Whether this is the unquoted word `kw` (any case).
    pub(crate) fn is_word(&self, kw: &str) -> bool {
        self.kind == Kind::Word && self.text.eq_ignore_ascii_case(kw)
    }

    /// Whether this is the punctuation `p`.
    pub(crate) fn is_punct(&self, p: &str) -> bool {
        self.kind == Kind::Punct && self.text == p
    }

    /// Whether this is an identifier (quoted or not).
    pub(crate) fn is_name(&self) -> bool {
        matches!(self.kind, Kind::Word | Kind::Quoted)
    }

    /// Whether this and `other` name the same identifier, as CQL reads
    /// names: an unquoted name is folded to lower case, a quoted one is
    /// kept as written. So `n`, `N` and `"n"` are one name, `"N"` another.
    pub(crate) fn same_name(&self, other: &Token<'_>) -> bool {
        match (self.kind, other.kind) {
            (Kind::Word, Kind::Word) => self.text.eq_ignore_ascii_case(other.text),
            (Kind::Quoted, Kind::Quoted) => self.text == other.text,
            (Kind::Word, Kind::Quoted) => quoted_is_word(other.text, self.text),
            (Kind::Quoted, Kind::Word) => quoted_is_word(self.text, other.text),
            _ => false,
        }
    }
}

/// Whether the quoted identifier `quoted` (with its quotes) names the
/// unquoted `word`: its inside is `word` in lower case. (A word holds no
/// `"`, so a `""` inside never matches.)
fn quoted_is_word(quoted: &str, word: &str) -> bool {
    let inside = quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"'));
    inside.is_some_and(|q| {
        q.len() == word.len()
            && q.bytes()
                .zip(word.bytes())
                .all(|(q, w)| q == w.to_ascii_lowercase())
    })
}

/// Splits CQL text into [`Token`]s, dropping whitespace and comments.
pub(crate) struct Lexer<'a> {
    s: &'a str,
    i: usize,
    /// The last token, for telling a sign from a minus.
    prev: Option<(Kind, u8)>,
    /// Reading prose (an error's message), not a statement: see
    /// [`Lexer::prose`].
    prose: bool,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(s: &'a str) -> Lexer<'a> {
        Lexer {
            s,
            i: 0,
            prev: None,
            prose: false,
        }
    }

    /// A lexer for prose that quotes CQL values (a server's or the
    /// driver's error message, a trace step's activity text, a server's
    /// warning), with three differences: there are no
    /// comments (`--`, `//` and `/*` are punctuation, so nothing after
    /// them is skipped unread); a `'` right after a letter or digit is an
    /// apostrophe (`doesn't`), punctuation; and a string ends at a `'`
    /// not followed by a letter or digit (`'o'brien'` is one string: a
    /// message does not double the quotes of the value it quotes).
    pub(crate) fn prose(s: &'a str) -> Lexer<'a> {
        Lexer {
            prose: true,
            ..Lexer::new(s)
        }
    }

    /// Skips whitespace and comments; whether there were any.
    fn skip_blank(&mut self) -> bool {
        let b = self.s.as_bytes();
        let start = self.i;
        loop {
            while self.i < b.len() && b[self.i].is_ascii_whitespace() {
                self.i += 1;
            }
            let (c, next) = (b.get(self.i), b.get(self.i + 1));
            if self.prose {
                return self.i > start;
            }
            match (c, next) {
                (Some(b'-'), Some(b'-')) | (Some(b'/'), Some(b'/')) => {
                    while self.i < b.len() && b[self.i] != b'\n' {
                        self.i += 1;
                    }
                }
                (Some(b'/'), Some(b'*')) => {
                    self.i += 2;
                    while self.i + 1 < b.len() && !(b[self.i] == b'*' && b[self.i + 1] == b'/') {
                        self.i += 1;
                    }
                    self.i = (self.i + 2).min(b.len());
                }
                _ => return self.i > start,
            }
        }
    }

    /// A sign directly before a number (`= -3`), not a minus (`a - 3`).
    fn sign_allowed(&self) -> bool {
        match self.prev {
            None => true,
            Some((Kind::Punct, p)) => b"=<>(,[{:+-*/".contains(&p),
            Some(_) => false,
        }
    }

    /// Whether a `:name` here may be a named bind marker: where a value
    /// may start. Not after a name (a UDT literal's `{field:value}`), nor
    /// after what ends a value (a literal, a bind marker, `)`, `]`, `}`),
    /// where the `:` is a map's and the word after it its value
    /// (`{'k':true}`).
    fn marker_allowed(&self) -> bool {
        match self.prev {
            None => true,
            Some((Kind::Punct, p)) => !b")]}".contains(&p),
            Some(_) => false,
        }
    }

    /// Ends a `'...'` or `"..."` run that doubles its quote to escape it
    /// (in prose, a `'` followed by a letter or digit does not end it).
    fn quoted(&mut self, quote: u8) {
        let b = self.s.as_bytes();
        let prose = self.prose && quote == b'\'';
        self.i += 1;
        while self.i < b.len() {
            if b[self.i] == quote {
                if b.get(self.i + 1) == Some(&quote)
                    || prose && b.get(self.i + 1).is_some_and(|&x| is_word_byte(x))
                {
                    self.i += 2;
                    continue;
                }
                break;
            }
            self.i += 1;
        }
        self.i = (self.i + 1).min(b.len());
    }

    fn scan(&mut self) -> Option<Kind> {
        let b = self.s.as_bytes();
        let c = *b.get(self.i)?;
        // an apostrophe in prose: one character of punctuation
        if c == b'\'' && self.prose && self.i > 0 && is_word_byte(b[self.i - 1]) {
            self.i += 1;
            return Some(Kind::Punct);
        }
        if c == b'\'' {
            self.quoted(b'\'');
            return Some(Kind::Literal(Lit::String));
        }
        if c == b'$' && b.get(self.i + 1) == Some(&b'$') {
            self.i += 2;
            while self.i + 1 < b.len() && !(b[self.i] == b'$' && b[self.i + 1] == b'$') {
                self.i += 1;
            }
            self.i = (self.i + 2).min(b.len());
            return Some(Kind::Literal(Lit::String));
        }
        if c == b'"' {
            self.quoted(b'"');
            return Some(Kind::Quoted);
        }
        if c == b'-'
            && self.sign_allowed()
            && let Some(end) = iso_duration_end(b, self.i + 1)
        {
            self.i = end;
            return Some(Kind::Literal(Lit::Number));
        }
        let sign = (c == b'-' || c == b'+')
            && b.get(self.i + 1).is_some_and(u8::is_ascii_digit)
            && self.sign_allowed();
        if c.is_ascii_digit() || sign {
            let start = self.i;
            self.i += 1;
            while self.i < b.len()
                && (b[self.i].is_ascii_alphanumeric()
                    || matches!(b[self.i], b'.' | b'-' | b'+' | b'_'))
            {
                // stop at a minus that starts an operator expression like `1 - 2`
                if (b[self.i] == b'-' || b[self.i] == b'+')
                    && !matches!(b[self.i - 1], b'e' | b'E')
                    && !is_uuid_dash(b, self.i)
                {
                    break;
                }
                self.i += 1;
            }
            let text = &b[start..self.i];
            let lit = if text.len() > 2 && text[0] == b'0' && matches!(text[1], b'x' | b'X') {
                Lit::Blob
            } else if text.len() == 36 && text.iter().filter(|&&x| x == b'-').count() == 4 {
                Lit::Uuid
            } else {
                Lit::Number
            };
            return Some(Kind::Literal(lit));
        }
        if let Some(end) = iso_duration_end(b, self.i) {
            self.i = end;
            return Some(Kind::Literal(Lit::Number));
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = self.i;
            while self.i < b.len() && (b[self.i].is_ascii_alphanumeric() || b[self.i] == b'_') {
                self.i += 1;
            }
            let word = &self.s[start..self.i];
            // hex-looking uuids that start with a letter: 8-4-4-4-12
            if b.get(self.i) == Some(&b'-')
                && word.len() == 8
                && word.bytes().all(|x| x.is_ascii_hexdigit())
            {
                let mut j = self.i;
                while j < b.len() && (b[j].is_ascii_hexdigit() || b[j] == b'-') {
                    j += 1;
                }
                if j - start == 36 {
                    self.i = j;
                    return Some(Kind::Literal(Lit::Uuid));
                }
            }
            return Some(
                if word.eq_ignore_ascii_case("true") || word.eq_ignore_ascii_case("false") {
                    Kind::Literal(Lit::Bool)
                } else if word.eq_ignore_ascii_case("nan") || word.eq_ignore_ascii_case("infinity")
                {
                    Kind::Literal(Lit::Number)
                } else {
                    Kind::Word
                },
            );
        }
        if c == b'?' {
            self.i += 1;
            return Some(Kind::Bind);
        }
        // `:name` is a named bind marker where a value may start
        if c == b':'
            && b.get(self.i + 1)
                .is_some_and(|x| x.is_ascii_alphabetic() || *x == b'_')
            && self.marker_allowed()
        {
            self.i += 1;
            while self.i < b.len() && (b[self.i].is_ascii_alphanumeric() || b[self.i] == b'_') {
                self.i += 1;
            }
            return Some(Kind::Bind);
        }
        // punctuation: one character (UTF-8 safe)
        self.i += 1;
        while self.i < b.len() && !self.s.is_char_boundary(self.i) {
            self.i += 1;
        }
        Some(Kind::Punct)
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        let space_before = self.skip_blank();
        let start = self.i;
        let kind = self.scan()?;
        let text = &self.s[start..self.i];
        self.prev = Some((kind, text.as_bytes()[text.len() - 1]));
        Some(Token {
            kind,
            text,
            space_before,
        })
    }
}

/// The end of the ISO 8601 duration literal starting at `i` (at its
/// `P`), if one does, as CQL's grammar has them (any case):
/// `P[nY][nM][nD][T[nH][nM][nS]]` with at least one part, `PnW`, and
/// `PYYYY-MM-DDThh:mm:ss`. It must end where a name would (`p2w_col` is
/// a name).
fn iso_duration_end(b: &[u8], i: usize) -> Option<usize> {
    if !b.get(i)?.eq_ignore_ascii_case(&b'P') {
        return None;
    }
    let digits = |j: usize| j + b[j..].iter().take_while(|x| x.is_ascii_digit()).count();
    let is = |j: usize, c: u8| b.get(j).is_some_and(|x| x.eq_ignore_ascii_case(&c));
    // `n` then `unit` at `j`: the end of the part
    let part = |j: usize, unit: u8| {
        let k = digits(j);
        (k > j && is(k, unit)).then_some(k + 1)
    };
    let ends_here = |j: usize| {
        !b.get(j)
            .is_some_and(|x| x.is_ascii_alphanumeric() || *x == b'_')
    };
    // the alternative form
    const ALT: &[u8] = b"P####-##-##T##:##:##";
    if b.len() >= i + ALT.len()
        && ALT.iter().enumerate().all(|(n, &p)| match p {
            b'#' => b[i + n].is_ascii_digit(),
            _ => b[i + n].eq_ignore_ascii_case(&p),
        })
        && ends_here(i + ALT.len())
    {
        return Some(i + ALT.len());
    }
    // weeks
    if let Some(j) = part(i + 1, b'W')
        && ends_here(j)
    {
        return Some(j);
    }
    // designators
    let mut j = i + 1;
    let mut parts = 0;
    for unit in [b'Y', b'M', b'D'] {
        if let Some(k) = part(j, unit) {
            (j, parts) = (k, parts + 1);
        }
    }
    if is(j, b'T') {
        j += 1;
        for unit in [b'H', b'M', b'S'] {
            if let Some(k) = part(j, unit) {
                (j, parts) = (k, parts + 1);
            }
        }
    }
    (parts > 0 && ends_here(j)).then_some(j)
}

/// A byte of a word in prose: an ASCII letter or digit, or a byte of a
/// non-ASCII character (`é'`).
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || !b.is_ascii()
}

/// Whether the dash at `i` is inside an 8-4-4-4-12 run of hex digits.
fn is_uuid_dash(b: &[u8], i: usize) -> bool {
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

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<(Kind, &str)> {
        Lexer::new(s).map(|t| (t.kind, t.text)).collect()
    }

    #[test]
    fn literals_comments_and_names() {
        use Kind::*;
        assert_eq!(
            kinds("UPDATE \"K\"\"s\".t SET v = $$it's$$, w = 'a''b' WHERE k = :k IF v = ? -- IF"),
            vec![
                (Word, "UPDATE"),
                (Quoted, "\"K\"\"s\""),
                (Punct, "."),
                (Word, "t"),
                (Word, "SET"),
                (Word, "v"),
                (Punct, "="),
                (Literal(Lit::String), "$$it's$$"),
                (Punct, ","),
                (Word, "w"),
                (Punct, "="),
                (Literal(Lit::String), "'a''b'"),
                (Word, "WHERE"),
                (Word, "k"),
                (Punct, "="),
                (Bind, ":k"),
                (Word, "IF"),
                (Word, "v"),
                (Punct, "="),
                (Bind, "?"),
            ]
        );
        assert_eq!(
            kinds(
                "x = -1.5e-3, 0xCAFE, 123e4567-e89b-12d3-a456-426614174000 /* c */ abcdef01-e89b-12d3-a456-426614174000 true NaN a - 2"
            ),
            vec![
                (Word, "x"),
                (Punct, "="),
                (Literal(Lit::Number), "-1.5e-3"),
                (Punct, ","),
                (Literal(Lit::Blob), "0xCAFE"),
                (Punct, ","),
                (Literal(Lit::Uuid), "123e4567-e89b-12d3-a456-426614174000"),
                (Literal(Lit::Uuid), "abcdef01-e89b-12d3-a456-426614174000"),
                (Literal(Lit::Bool), "true"),
                (Literal(Lit::Number), "NaN"),
                (Word, "a"),
                (Punct, "-"),
                (Literal(Lit::Number), "2"),
            ]
        );
        // a UDT literal's field is not a bind marker
        assert_eq!(kinds("{a:b}")[2], (Punct, ":"));
        // unterminated runs end with the text
        assert_eq!(kinds("'abc").len(), 1);
        assert_eq!(kinds("$$abc").len(), 1);
        assert_eq!(kinds("a /* b").len(), 1);
        assert_eq!(kinds("é ü").len(), 2);
    }

    /// A map value right after its colon is a value: a named bind marker
    /// never follows a literal, a bind marker or a closing bracket.
    /// Taken for `:name`, `{'k':true}` kept its `true` through the
    /// sanitiser.
    #[test]
    fn a_value_right_after_a_colon_is_not_a_bind_marker() {
        use Kind::*;
        for (text, value) in [
            (
                "{'k':deadbeef-e89b-12d3-a456-426614174000}",
                Literal(Lit::Uuid),
            ),
            (
                "{1:abcdef01-e89b-12d3-a456-426614174000}",
                Literal(Lit::Uuid),
            ),
            ("{'k':true}", Literal(Lit::Bool)),
            ("{$$k$$:false}", Literal(Lit::Bool)),
            ("{0xff:NaN}", Literal(Lit::Number)),
            ("{?:true}", Literal(Lit::Bool)),
            ("{:k:true}", Literal(Lit::Bool)),
            ("{(1, 2):true}", Literal(Lit::Bool)),
            ("{[1]:true}", Literal(Lit::Bool)),
            ("{{1}:true}", Literal(Lit::Bool)),
        ] {
            let k = kinds(text);
            assert_eq!(k[k.len() - 2].0, value, "{text}: {k:?}");
            assert_eq!(k[k.len() - 3], (Punct, ":"), "{text}: {k:?}");
        }
        // named markers where a value starts
        for text in ["k = :k", "(:a, :b)", "{:k: :v}", "[:i]", "m[:k]", ":k"] {
            assert!(
                kinds(text).iter().any(|t| t.0 == Bind),
                "{text}: {:?}",
                kinds(text)
            );
        }
        assert_eq!(
            kinds("{:k: :v}"),
            vec![
                (Punct, "{"),
                (Bind, ":k"),
                (Punct, ":"),
                (Bind, ":v"),
                (Punct, "}")
            ]
        );
    }

    /// CQL's ISO 8601 duration forms are literals, as its `1h30m` form
    /// is: with designators (`P1Y2M3DT4H30M`), in weeks (`P2W`) and the
    /// alternative form (`P0001-02-03T04:05:06`), any case, with a sign.
    /// Lexed as words, they reached logs and spans as they were.
    #[test]
    fn iso_8601_durations_are_literals_and_names_stay_names() {
        use Kind::*;
        for d in [
            "P1Y2M3DT4H30M",
            "P2W",
            "P0001-02-03T04:05:06",
            "p1y2m3dt4h30m5s",
            "P1D",
            "PT5S",
            "P10M",
        ] {
            assert_eq!(kinds(d), vec![(Literal(Lit::Number), d)], "{d}");
            let text = format!("d = {d}, e = -{d}");
            assert_eq!(
                kinds(&text),
                vec![
                    (Word, "d"),
                    (Punct, "="),
                    (Literal(Lit::Number), d),
                    (Punct, ","),
                    (Word, "e"),
                    (Punct, "="),
                    (Literal(Lit::Number), &*format!("-{d}")),
                ],
                "{text}"
            );
        }
        // the other form is a literal too, as it was
        assert_eq!(kinds("1h30m"), vec![(Literal(Lit::Number), "1h30m")]);
        // names that only look like one stay names
        for w in [
            "P", "p", "PT", "price", "p2w_col", "P2W_", "p1y2", "P1Y2W", "P2WD", "P1H", "PT1D",
            "P0001", "Pa",
        ] {
            assert_eq!(kinds(w), vec![(Word, w)], "{w}");
        }
        assert_eq!(kinds("P0001-02")[0], (Word, "P0001"));
        assert_eq!(kinds("P0001-02-03T04:05:06x")[0], (Word, "P0001"));
        assert_eq!(kinds("a - P1D")[1], (Punct, "-"));
    }

    /// CQL folds an unquoted name to lower case and keeps a quoted one
    /// as written: `"n"`, `n` and `N` are one column, `"N"` another.
    #[test]
    fn names_compare_as_cql_folds_them() {
        fn name(s: &str) -> Token<'_> {
            Lexer::new(s).next().unwrap()
        }
        let same = |a: &str, b: &str| name(a).same_name(&name(b));
        for (a, b) in [
            ("n", "n"),
            ("n", "N"),
            ("\"n\"", "n"),
            ("n", "\"n\""),
            ("\"n\"", "N"),
            ("\"my_col2\"", "My_Col2"),
            ("\"N\"", "\"N\""),
            ("\"a\"\"b\"", "\"a\"\"b\""),
        ] {
            assert!(same(a, b), "{a} and {b} are one name");
        }
        for (a, b) in [
            ("\"N\"", "n"),
            ("n", "\"N\""),
            ("\"N\"", "\"n\""),
            ("\"n \"", "n"),
            ("\"nn\"", "n"),
            ("\"n", "n"),
            ("\"\"", "n"),
            ("n", "m"),
        ] {
            assert!(!same(a, b), "{a} and {b} are two names");
        }
    }
}
