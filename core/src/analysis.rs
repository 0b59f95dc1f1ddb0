//! What a statement's text says: its kind, keyspace and table, and what
//! makes a retry unsafe (LWT, counter update, list append, deleting a
//! collection element by subscript, a non-deterministic function). Read through the one CQL lexer
//! (the crate-private `lex` module), the same the sanitiser uses, so nothing inside a
//! literal or a comment is taken for a keyword.
//!
//! ```
//! use tower_cql_core::Statement;
//!
//! // The `IF` after a `$$` string holding a quote is an LWT ...
//! let lwt = Statement::new("UPDATE ks.t SET v = $$it's$$ WHERE k = ? IF v = ?");
//! assert!(lwt.traits().lwt);
//! // ... and `IF NOT EXISTS` inside one is a value.
//! let plain = Statement::new("INSERT INTO ks.t (k, v) VALUES (?, $$ IF NOT EXISTS $$)");
//! assert!(!plain.traits().lwt);
//! ```

use crate::lex::{Kind, Lexer, Token};
use crate::request::OperationKind;

/// What the text of a statement says about retrying it, found once when
/// the statement is analysed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatementTraits {
    /// A lightweight transaction (`IF NOT EXISTS`, `IF EXISTS`, `IF col = ...`).
    pub lwt: bool,
    /// Updates a counter (`SET c = c + ?`, or its shorthand `SET c += ?`):
    /// never idempotent.
    pub counter_update: bool,
    /// Appends or prepends to a list (`l = l + ?`, `l += [..]`, `l = ? + l`):
    /// never idempotent.
    pub list_append: bool,
    /// Deletes a collection element by subscript (`DELETE l[0] FROM ...`).
    /// For a list the index picks whatever element is there now, so run
    /// twice it deletes two; the text cannot tell a list index from a map
    /// key (`DELETE m['k']`, which is idempotent), so any such delete is
    /// treated as never idempotent. Setting an element by index
    /// (`SET l[0] = ?`) replaces it and is not this.
    pub element_delete: bool,
    /// Calls a non-deterministic function (`now()`, `uuid()`,
    /// `currentTimestamp()` or Cassandra 5's `current_timestamp()`, ...).
    pub nondeterministic: bool,
}

impl StatementTraits {
    /// Whether anything in the text makes a retry unsafe, whatever the
    /// caller says.
    pub fn forbids_retry(&self) -> bool {
        self.lwt
            || self.counter_update
            || self.list_append
            || self.element_delete
            || self.nondeterministic
    }

    /// Adds what `other` says (a batch has every trait of its statements).
    pub(crate) fn merge(&mut self, other: StatementTraits) {
        let StatementTraits {
            lwt,
            counter_update,
            list_append,
            element_delete,
            nondeterministic,
        } = other;
        self.lwt |= lwt;
        self.counter_update |= counter_update;
        self.list_append |= list_append;
        self.element_delete |= element_delete;
        self.nondeterministic |= nondeterministic;
    }
}

/// Finds the operation kind, keyspace and table of a statement text, and
/// what makes it unsafe to retry.
pub(crate) fn analyse(
    text: &str,
) -> (
    OperationKind,
    Option<String>,
    Option<String>,
    StatementTraits,
) {
    let tokens: Vec<Token<'_>> = Lexer::new(text).collect();
    let mut traits = StatementTraits::default();
    let first = tokens.first();
    let kind = match first {
        Some(t) if t.is_word("SELECT") => OperationKind::Select,
        Some(t) if t.is_word("INSERT") => OperationKind::Insert,
        Some(t) if t.is_word("UPDATE") => OperationKind::Update,
        Some(t) if t.is_word("DELETE") => OperationKind::Delete,
        Some(t) if t.is_word("BEGIN") || t.is_word("APPLY") => OperationKind::Batch,
        Some(_) => schema_kind(&tokens),
        None => OperationKind::Other,
    };
    // `IF` makes a DML statement an LWT; in DDL (`CREATE ... IF NOT
    // EXISTS`) it is not one.
    let dml = !matches!(kind, OperationKind::Select | OperationKind::Other);
    // A schema statement's keyspace or table: after its keywords and any
    // `IF [NOT] EXISTS` (after `ON` for an index).
    if kind.is_schema() {
        let (keyspace, table) = schema_target(kind, &tokens);
        return (kind, keyspace, table, traits);
    }
    // The table: after FROM (SELECT/DELETE), INTO (INSERT), UPDATE.
    let mut target: Option<(Option<Token<'_>>, Token<'_>)> = None;
    for (i, t) in tokens.iter().enumerate() {
        let after = match kind {
            OperationKind::Select | OperationKind::Delete => t.is_word("FROM"),
            OperationKind::Insert => t.is_word("INTO"),
            OperationKind::Update => i == 0,
            _ => false,
        };
        if after && target.is_none() {
            target = qualified_name(&tokens[i + 1..]);
        }
        if dml && t.is_word("IF") {
            traits.lwt = true;
        }
        if t.kind == Kind::Word
            && [
                "NOW",
                "UUID",
                "CURRENTTIMESTAMP",
                "CURRENTTIMEUUID",
                "CURRENTDATE",
                "CURRENTTIME",
                // Cassandra 5's names for them (CASSANDRA-18037)
                "CURRENT_TIMESTAMP",
                "CURRENT_TIMEUUID",
                "CURRENT_DATE",
                "CURRENT_TIME",
            ]
            .iter()
            .any(|f| t.is_word(f))
            && tokens.get(i + 1).is_some_and(|n| n.is_punct("("))
        {
            traits.nondeterministic = true;
        }
        if t.is_punct("=") && i >= 1 && i + 2 < tokens.len() {
            update_traits(&tokens, i, &mut traits);
        }
        if t.is_word("DELETE") && deletes_an_element(&tokens[i + 1..]) {
            traits.element_delete = true;
        }
    }
    let (keyspace, table) = match target {
        Some((ks, tb)) => (ks.map(|k| unquote(&k)), Some(unquote(&tb))),
        None => (None, None),
    };
    (kind, keyspace, table, traits)
}

/// The schema statement's kind from its first keywords.
fn schema_kind(tokens: &[Token<'_>]) -> OperationKind {
    use OperationKind as K;
    let word = |i: usize, w: &str| tokens.get(i).is_some_and(|t| t.is_word(w));
    let object = |i: usize| {
        if word(i, "KEYSPACE") || word(i, "SCHEMA") {
            Some(0)
        } else if word(i, "TABLE") || word(i, "COLUMNFAMILY") {
            Some(1)
        } else if word(i, "INDEX") || (word(i, "CUSTOM") && word(i + 1, "INDEX")) {
            Some(2)
        } else if word(i, "TYPE") {
            Some(3)
        } else if word(i, "MATERIALIZED") && word(i + 1, "VIEW") {
            Some(4)
        } else {
            None
        }
    };
    match (tokens.first(), object(1)) {
        (Some(t), Some(o)) if t.is_word("CREATE") => [
            K::CreateKeyspace,
            K::CreateTable,
            K::CreateIndex,
            K::CreateType,
            K::CreateView,
        ][o],
        (Some(t), Some(o)) if t.is_word("ALTER") && o != 2 && o != 4 => {
            [K::AlterKeyspace, K::AlterTable, K::Other, K::AlterType][o]
        }
        (Some(t), Some(o)) if t.is_word("DROP") => [
            K::DropKeyspace,
            K::DropTable,
            K::DropIndex,
            K::DropType,
            K::DropView,
        ][o],
        (Some(t), _) if t.is_word("TRUNCATE") => K::Truncate,
        (Some(t), _) if t.is_word("USE") => K::Use,
        _ => K::Other,
    }
}

/// The keyspace (and table) a schema statement names: the qualified name
/// after its keywords and `IF [NOT] EXISTS`; for an index, the table after
/// `ON`; for a keyspace or `USE`, the keyspace alone.
fn schema_target(kind: OperationKind, tokens: &[Token<'_>]) -> (Option<String>, Option<String>) {
    use OperationKind as K;
    let start = if kind == K::CreateIndex {
        match tokens.iter().position(|t| t.is_word("ON")) {
            Some(on) => on + 1,
            None => return (None, None),
        }
    } else {
        // skip the keywords (`CREATE MATERIALIZED VIEW`, `TRUNCATE TABLE`, ...)
        let mut i = 1;
        while tokens.get(i).is_some_and(|t| {
            [
                "KEYSPACE",
                "SCHEMA",
                "TABLE",
                "COLUMNFAMILY",
                "INDEX",
                "CUSTOM",
                "TYPE",
                "MATERIALIZED",
                "VIEW",
            ]
            .iter()
            .any(|w| t.is_word(w))
        }) {
            i += 1;
        }
        if tokens.get(i).is_some_and(|t| t.is_word("IF")) {
            i += 1;
            if tokens.get(i).is_some_and(|t| t.is_word("NOT")) {
                i += 1;
            }
            i += 1; // EXISTS
        }
        i
    };
    let Some((ks, name)) = qualified_name(tokens.get(start..).unwrap_or_default()) else {
        return (None, None);
    };
    match kind {
        K::CreateKeyspace | K::AlterKeyspace | K::DropKeyspace | K::Use => {
            (Some(unquote(&name)), None)
        }
        _ => (ks.map(|k| unquote(&k)), Some(unquote(&name))),
    }
}

/// `name` or `keyspace.name` at the start of `rest`.
fn qualified_name<'a>(rest: &[Token<'a>]) -> Option<(Option<Token<'a>>, Token<'a>)> {
    let first = *rest.first().filter(|t| t.is_name())?;
    match (rest.get(1), rest.get(2)) {
        (Some(dot), Some(name)) if dot.is_punct(".") && name.is_name() => {
            Some((Some(first), *name))
        }
        _ => Some((None, first)),
    }
}

/// `c = c + ...`, `c = c - ...`, `c += ...`, `c -= ...`, `l = [..] + l`,
/// `l = ? + l` around the `=` at `i`: a counter update or a list append.
fn update_traits(tokens: &[Token<'_>], i: usize, traits: &mut StatementTraits) {
    let lhs = &tokens[i - 1];
    // `c += x`, `c -= x`: Cassandra's shorthand for `c = c + x`, `c = c -
    // x` (one token to its lexer, two here: the sign, then this `=`)
    if (lhs.is_punct("+") || lhs.is_punct("-")) && i >= 2 && tokens[i - 2].is_name() {
        delta_traits(tokens.get(i + 1), traits);
        return;
    }
    if !lhs.is_name() {
        return;
    }
    if tokens[i + 1].same_name(lhs) && (tokens[i + 2].is_punct("+") || tokens[i + 2].is_punct("-"))
    {
        delta_traits(tokens.get(i + 3), traits);
    }
    // `l = [..] + l` or `l = ? + l` prepends to a list.
    let mut j = i + 1;
    if tokens[j].is_punct("[") {
        let mut depth = 0;
        while j < tokens.len() {
            if tokens[j].is_punct("[") {
                depth += 1;
            } else if tokens[j].is_punct("]") {
                depth -= 1;
            }
            if depth == 0 {
                break;
            }
            j += 1;
        }
    }
    if j + 2 < tokens.len() && tokens[j + 1].is_punct("+") && tokens[j + 2].same_name(lhs) {
        traits.list_append = true;
    }
}

/// What adding or removing `delta` (the token that starts it) to a
/// column makes the statement: a list append, a counter update, or, for a
/// set or map, nothing.
fn delta_traits(delta: Option<&Token<'_>>, traits: &mut StatementTraits) {
    match delta {
        Some(r) if r.is_punct("[") => traits.list_append = true,
        // set/map union: idempotent
        Some(r) if r.is_punct("{") => {}
        // a bound or literal delta: a counter (or a collection bound as
        // a whole, which cannot be told apart here); anything else is
        // treated the same, conservatively
        _ => traits.counter_update = true,
    }
}

/// Whether the selection of a `DELETE` (the tokens after it, up to its
/// `FROM`) deletes a collection element by subscript: `l[0]`, `m['k']`.
fn deletes_an_element(rest: &[Token<'_>]) -> bool {
    rest.iter()
        .take_while(|t| !t.is_word("FROM"))
        .zip(rest.iter().skip(1))
        .any(|(name, open)| name.is_name() && open.is_punct("["))
}

fn unquote(t: &Token<'_>) -> String {
    match t.kind {
        Kind::Quoted => {
            let s = t.text;
            let inner = s.strip_prefix('"').unwrap_or(s);
            inner
                .strip_suffix('"')
                .unwrap_or(inner)
                .replace("\"\"", "\"")
        }
        _ => t.text.to_ascii_lowercase(),
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;

    #[test]
    fn dollar_strings_do_not_fool_the_analysis() {
        let (_, ks, table, tr) = analyse("UPDATE ks.t SET v = $$it's$$ WHERE k = ? IF v = ?");
        assert!(tr.lwt, "the IF after a $$ string holding a quote is an LWT");
        assert_eq!((ks.as_deref(), table.as_deref()), (Some("ks"), Some("t")));
        let (_, _, _, tr) = analyse("INSERT INTO ks.t (k, v) VALUES (?, $$ IF NOT EXISTS $$)");
        assert!(!tr.lwt, "IF NOT EXISTS inside a $$ string is a value");
        let (_, _, _, tr) = analyse("UPDATE ks.t SET v = 'now()' WHERE k = ?");
        assert!(!tr.nondeterministic);
        let (_, _, _, tr) = analyse("UPDATE ks.t /* IF */ SET v = ? WHERE k = ? -- IF x = 1");
        assert!(!tr.lwt);
    }

    /// Schema statements have a kind and a target of their own, so their
    /// spans say `CREATE TABLE ks.t` (before: `OTHER`, no target).
    #[test]
    fn schema_statements_have_a_kind_and_a_target() {
        use OperationKind as K;
        let cases = [
            (
                "CREATE KEYSPACE IF NOT EXISTS app WITH replication = {'class': 'SimpleStrategy'}",
                K::CreateKeyspace,
                Some("app"),
                None,
            ),
            (
                "create table app.users (id int PRIMARY KEY)",
                K::CreateTable,
                Some("app"),
                Some("users"),
            ),
            (
                "CREATE TABLE IF NOT EXISTS \"App\".\"Users\" (id int PRIMARY KEY)",
                K::CreateTable,
                Some("App"),
                Some("Users"),
            ),
            (
                "CREATE INDEX IF NOT EXISTS by_name ON app.users (name)",
                K::CreateIndex,
                Some("app"),
                Some("users"),
            ),
            (
                "CREATE CUSTOM INDEX ON app.users (name) USING 'x'",
                K::CreateIndex,
                Some("app"),
                Some("users"),
            ),
            (
                "CREATE TYPE app.address (street text)",
                K::CreateType,
                Some("app"),
                Some("address"),
            ),
            (
                "CREATE MATERIALIZED VIEW app.v AS SELECT * FROM app.users",
                K::CreateView,
                Some("app"),
                Some("v"),
            ),
            (
                "ALTER TABLE app.users ADD age int",
                K::AlterTable,
                Some("app"),
                Some("users"),
            ),
            (
                "ALTER KEYSPACE app WITH durable_writes = false",
                K::AlterKeyspace,
                Some("app"),
                None,
            ),
            (
                "DROP TABLE IF EXISTS app.users",
                K::DropTable,
                Some("app"),
                Some("users"),
            ),
            ("DROP KEYSPACE app", K::DropKeyspace, Some("app"), None),
            (
                "TRUNCATE app.users",
                K::Truncate,
                Some("app"),
                Some("users"),
            ),
            ("TRUNCATE TABLE users", K::Truncate, None, Some("users")),
            ("USE app", K::Use, Some("app"), None),
            ("GRANT SELECT ON app.users TO r", K::Other, None, None),
        ];
        for (text, kind, ks, table) in cases {
            let (k, got_ks, got_table, traits) = analyse(text);
            assert_eq!(
                (k, got_ks.as_deref(), got_table.as_deref()),
                (kind, ks, table),
                "{text}"
            );
            assert!(!traits.lwt, "{text}: IF NOT EXISTS in DDL is not an LWT");
        }
        let summary = |text: &str| crate::Statement::new(text).request().meta().summary();
        assert_eq!(
            summary("CREATE TABLE IF NOT EXISTS app.users (id int PRIMARY KEY)"),
            "CREATE TABLE app.users"
        );
        assert_eq!(
            summary("CREATE KEYSPACE app WITH replication = {}"),
            "CREATE KEYSPACE app"
        );
        assert_eq!(summary("USE app"), "USE app");
    }

    #[test]
    fn analysis_finds_kind_table_and_hazards() {
        let (k, ks, t, tr) = analyse("SELECT a FROM ks.users WHERE id = ?");
        assert_eq!(
            (k, ks.as_deref(), t.as_deref()),
            (OperationKind::Select, Some("ks"), Some("users"))
        );
        assert!(!tr.forbids_retry());
        let (k, ks, t, tr) = analyse("insert into Users (id) values (?) if not exists");
        assert_eq!(
            (k, ks, t.as_deref()),
            (OperationKind::Insert, None, Some("users"))
        );
        assert!(tr.lwt);
        let (_, _, t, tr) = analyse("UPDATE \"Ks\".\"Tab\" SET c = c + ? WHERE k = ?");
        assert_eq!(t.as_deref(), Some("Tab"));
        assert!(tr.counter_update);
        assert!(
            analyse("UPDATE t SET l = l + ['x'] WHERE k = 1")
                .3
                .list_append
        );
        assert!(
            analyse("UPDATE t SET l = ['x'] + l WHERE k = 1")
                .3
                .list_append
        );
        assert!(
            !analyse("UPDATE t SET s = s + {'x'} WHERE k = 1")
                .3
                .forbids_retry()
        );
        assert!(
            analyse("INSERT INTO t (k, id) VALUES (1, now())")
                .3
                .nondeterministic
        );
        // words inside literals and comments are not keywords
        let (_, _, _, tr) = analyse("INSERT INTO t (k, v) VALUES (1, 'IF now() c = c + 1') -- IF");
        assert!(!tr.forbids_retry(), "{tr:?}");
        assert_eq!(
            analyse("DELETE FROM t WHERE k = 1").0,
            OperationKind::Delete
        );
        assert_eq!(
            analyse("BEGIN BATCH INSERT INTO t (k) VALUES (1) APPLY BATCH").0,
            OperationKind::Batch
        );
        assert_eq!(
            analyse("CREATE TABLE x (k int PRIMARY KEY)").0,
            OperationKind::CreateTable
        );
        assert_eq!(analyse("").0, OperationKind::Other);
        assert_eq!(
            analyse("SELECT * FROM t WHERE name = 'é'").2.as_deref(),
            Some("t")
        );
    }

    /// `"n" = n + 1` is the counter update `n = n + 1`: an unquoted name
    /// is its lower-case quoted form. Taken for two columns, the update
    /// was retried after a write timeout and applied twice.
    #[test]
    fn a_counter_update_is_seen_however_its_column_is_quoted() {
        for text in [
            "UPDATE ks.c SET \"n\" = n + 1 WHERE k = ?",
            "UPDATE ks.c SET n = \"n\" + 1 WHERE k = ?",
            "UPDATE ks.c SET N = \"n\" + ? WHERE k = ?",
            "UPDATE ks.c SET \"n\" = \"n\" - 1 WHERE k = ?",
        ] {
            assert!(analyse(text).3.counter_update, "{text}");
        }
        for text in [
            "UPDATE t SET \"l\" = l + [1] WHERE k = ?",
            "UPDATE t SET l = [1] + \"l\" WHERE k = ?",
        ] {
            assert!(analyse(text).3.list_append, "{text}");
        }
        // a quoted name keeps its case: `"N"` is not `n`
        let tr = analyse("UPDATE ks.c SET \"N\" = n + 1 WHERE k = ?").3;
        assert!(!tr.forbids_retry(), "{tr:?}");
    }

    /// Cassandra 5 names the clock functions in snake case
    /// (`current_timeuuid()`, `current_timestamp()`, `current_date()`,
    /// `current_time()`, beside `currentTimeUUID()` ...): each makes a new
    /// value every time it runs. Missed, an insert of `current_timeuuid()`
    /// marked idempotent was retried after a write timeout and made two
    /// rows (`middleware/tests/retry_hedge.rs`).
    #[test]
    fn the_clock_functions_are_non_deterministic_in_either_spelling() {
        for f in [
            "now",
            "uuid",
            "currentTimeUUID",
            "currenttimestamp",
            "currentDate",
            "currentTime",
            "current_timeuuid",
            "CURRENT_TIMESTAMP",
            "current_date",
            "current_time",
        ] {
            let text = format!("INSERT INTO t (k, id) VALUES (?, {f}())");
            assert!(analyse(&text).3.nondeterministic, "{text}");
        }
        // a column named like one, not called, is not a call
        let tr = analyse("UPDATE t SET current_time = ? WHERE k = ?").3;
        assert!(!tr.forbids_retry(), "{tr:?}");
    }

    /// `c += 1` and `c -= 1` are Cassandra's shorthand for `c = c + 1`
    /// and `c = c - 1` (one token to its lexer, `+=`): a counter update,
    /// or a list append for a list literal, as the long form is. Missed,
    /// a counter update marked idempotent was retried after a write
    /// timeout and applied twice (`middleware/tests/retry_hedge.rs`).
    #[test]
    fn the_shorthand_assignments_are_seen() {
        for text in [
            "UPDATE ks.c SET n += 1 WHERE k = ?",
            "UPDATE ks.c SET n+=? WHERE k = ?",
            "UPDATE ks.c SET \"N\" -= 1 WHERE k = ?",
            "UPDATE ks.c SET v = ?, n += 1 WHERE k = ?",
            "BEGIN COUNTER BATCH UPDATE ks.c SET n += 1 WHERE k = 1; APPLY BATCH",
        ] {
            assert!(analyse(text).3.counter_update, "{text}");
        }
        assert!(analyse("UPDATE t SET l += [1] WHERE k = ?").3.list_append);
        // a set or map union is idempotent, in either form
        let tr = analyse("UPDATE t SET s += {'x'} WHERE k = ?").3;
        assert!(!tr.forbids_retry(), "{tr:?}");
        // a comparison is not an assignment
        let tr = analyse("UPDATE t SET v = ? WHERE k = ? IF c >= 1").3;
        assert!(!tr.counter_update && !tr.list_append, "{tr:?}");
        let tr = analyse("SELECT v FROM t WHERE k >= -1").3;
        assert!(!tr.forbids_retry(), "{tr:?}");
    }

    /// `DELETE l[0]` deletes whatever element is at index 0 now: run twice,
    /// it deletes two. The text cannot tell a list index from a map key
    /// (`DELETE m['k']`, idempotent), so any `DELETE c[..]` forbids a retry
    /// after it may have been applied, however it is marked. Setting an
    /// element by index (`SET l[0] = ?`) replaces it: idempotent.
    #[test]
    fn deleting_an_element_by_index_forbids_retry() {
        for text in [
            "DELETE l[0] FROM ks.t WHERE k = ?",
            "delete \"L\"[?] from t where k = 1",
            "DELETE v, l[:i] FROM ks.t WHERE k = ?",
            "DELETE m['k'] FROM ks.t WHERE k = ? IF EXISTS",
            "BEGIN BATCH UPDATE t SET v = 1 WHERE k = 1; DELETE l[0] FROM t WHERE k = 1; APPLY BATCH",
        ] {
            assert!(analyse(text).3.element_delete, "{text}");
            let s = crate::Statement::new(text).idempotent(true);
            assert!(!s.request().meta().is_idempotent(), "{text}");
        }
        let mut batch = scylla::statement::batch::Batch::default();
        batch.append_statement("UPDATE ks.t SET v = ? WHERE k = ?");
        batch.append_statement("DELETE l[?] FROM ks.t WHERE k = ?");
        let s = crate::Statement::batch(batch).idempotent(true);
        assert!(s.traits().forbids_retry(), "{:?}", s.traits());
        assert!(!s.request().meta().is_idempotent());
        for text in [
            "UPDATE ks.t SET l[0] = ? WHERE k = ?",
            "UPDATE ks.t SET m['k'] = 'v', l[1] = 2 WHERE k = ?",
            "DELETE FROM ks.t WHERE k = ?",
            "DELETE v, u.f FROM ks.t WHERE k = ?",
            "DELETE FROM ks.t WHERE k IN [1, 2]",
            "SELECT l[0] FROM ks.t WHERE k = ?",
            "INSERT INTO ks.t (k, v) VALUES (?, 'DELETE l[0] FROM t')",
        ] {
            assert!(
                !analyse(text).3.forbids_retry(),
                "{text}: {:?}",
                analyse(text).3
            );
        }
        // a subscript in the condition is no delete of an element
        let tr = analyse("DELETE FROM ks.t WHERE k = ? IF l[0] = 1").3;
        assert!(tr.lwt && !tr.element_delete, "{tr:?}");
    }

    use crate::redact::sanitize;
    use proptest::prelude::*;

    /// Statements with one slot for a literal (`{L}`) or a comment (`{C}`).
    const TEMPLATES: [&str; 9] = [
        "UPDATE ks.t SET v = {L} WHERE k = ? IF v = ?",
        "UPDATE ks.t SET v = {L} WHERE k = ?",
        "INSERT INTO ks.t (k, v) VALUES (?, {L})",
        "INSERT INTO ks.t (k, v) VALUES (?, {L}) IF NOT EXISTS",
        "SELECT v FROM ks.t WHERE k = {L} {C}",
        "UPDATE ks.c SET n = n + 1 {C} WHERE k = {L}",
        "UPDATE ks.l {C} SET l = l + [{L}] WHERE k = ?",
        "DELETE FROM ks.t {C} WHERE k = {L}",
        "BEGIN BATCH INSERT INTO ks.t (k, v) VALUES (?, {L}) {C} APPLY BATCH",
    ];

    /// Pieces that fool a lexer that gets literals or comments wrong.
    const PIECES: [&str; 24] = [
        "'",
        "''",
        "\"",
        "IF",
        " EXISTS ",
        "IF NOT EXISTS",
        "--",
        "//",
        "/*",
        "*/",
        "$$",
        "$",
        "\n",
        "?",
        ":x",
        "now()",
        "c = c + 1",
        "l = [1] + l",
        "[",
        "{",
        ";",
        "SECRET",
        " ",
        "é",
    ];

    fn payload() -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(PIECES.to_vec()), 0..12)
            .prop_map(|v| format!("SECRET{}", v.concat()))
    }

    /// `payload` as a literal or comment of each form CQL has.
    fn forms(payload: &str) -> [(String, &'static str); 5] {
        let mut dollar = payload.replace("$$", "$ $");
        while dollar.contains("$$") {
            dollar = dollar.replace("$$", "$ $");
        }
        if dollar.ends_with('$') {
            dollar.push('x');
        }
        [
            (format!("'{}'", payload.replace('\'', "''")), "L"),
            (format!("$${dollar}$$"), "L"),
            (format!("/*{}*/", payload.replace("*/", "* /")), "C"),
            (format!("--{}\n", payload.replace('\n', " ")), "C"),
            (format!("//{}\n", payload.replace('\n', " ")), "C"),
        ]
    }

    fn fill(template: &str, slot: &str, with: &str, other: &str) -> String {
        let (mine, theirs) = if slot == "L" {
            ("{L}", "{C}")
        } else {
            ("{C}", "{L}")
        };
        template.replace(mine, with).replace(theirs, other)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever a literal or a comment holds, the analysis is that of
        /// the same statement with an empty one, and nothing of it
        /// survives sanitising.
        #[test]
        fn literal_and_comment_contents_change_nothing(t in 0..TEMPLATES.len(), payload in payload()) {
            let template = TEMPLATES[t];
            for (form, slot) in forms(&payload) {
                if !template.contains(&format!("{{{slot}}}")) {
                    continue;
                }
                let empty = match slot { "L" => "''", _ => "/**/" };
                let text = fill(template, slot, &form, if slot == "L" { "/**/" } else { "''" });
                let base = fill(template, slot, empty, if slot == "L" { "/**/" } else { "''" });
                prop_assert_eq!(analyse(&text), analyse(&base), "{}", text);
                let clean = sanitize(&text);
                prop_assert!(!clean.contains("SECRET"), "{} -> {}", text, clean);
                prop_assert_eq!(clean, sanitize(&base), "{}", text);
            }
        }
    }
}
