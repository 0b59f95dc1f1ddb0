//! testkit answers the CQL that applications and their test suites use as
//! Cassandra 4.x answers it (issue #19): null for empty collections, error
//! codes and messages for common mistakes, function selectors and terms,
//! conditional batches, and schema changes. The same cases run with the
//! DataStax Python driver in `tests/python/datastax_driver.py`.

use scylla::errors::DbError;
use scylla::value::CqlValue;
use tower_cql_testkit::Cluster;

use super::{db_error, keyspace, run, session};

/// The single value of a one-row, one-column query.
async fn one(s: &scylla::client::session::Session, cql: &str) -> Option<CqlValue> {
    let rows = s
        .query_unpaged(cql, &[])
        .await
        .unwrap_or_else(|e| panic!("{cql}: {e}"))
        .into_rows_result()
        .unwrap();
    let (v,) = rows.single_row::<(Option<CqlValue>,)>().unwrap();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_collections_read_back_as_null() {
    let cluster = Cluster::start().await.unwrap();
    let s = session(&cluster).await;
    keyspace(&s, "ec", 1).await;
    run(
        &s,
        "CREATE TABLE ec.t (k int PRIMARY KEY, l list<int>, st set<text>, m map<text, int>, \
         fl frozen<list<int>>, v int)",
    )
    .await;
    // Written empty, by literal and by bound value.
    run(
        &s,
        "INSERT INTO ec.t (k, l, st, m, fl) VALUES (1, [], {}, {}, [])",
    )
    .await;
    let ins = s
        .prepare("INSERT INTO ec.t (k, l, st, m) VALUES (?, ?, ?, ?)")
        .await
        .unwrap();
    let empty_map: std::collections::HashMap<String, i32> = Default::default();
    s.execute_unpaged(
        &ins,
        (2, Vec::<i32>::new(), Vec::<String>::new(), empty_map),
    )
    .await
    .unwrap();
    for k in [1, 2] {
        for c in ["l", "st", "m"] {
            assert_eq!(
                one(&s, &format!("SELECT {c} FROM ec.t WHERE k = {k}")).await,
                None,
                "{c} of row {k} written empty"
            );
        }
    }
    // A frozen collection is one value: empty stays empty, as in Cassandra.
    assert_eq!(
        one(&s, "SELECT fl FROM ec.t WHERE k = 1").await,
        Some(CqlValue::List(vec![]))
    );
    // Never written.
    run(&s, "INSERT INTO ec.t (k, v) VALUES (3, 0)").await;
    assert_eq!(one(&s, "SELECT l FROM ec.t WHERE k = 3").await, None);
    // Emptied by removing the last element, and set to [] by UPDATE.
    run(
        &s,
        "INSERT INTO ec.t (k, l, st, m) VALUES (4, [7], {'a'}, {'a': 1})",
    )
    .await;
    run(
        &s,
        "UPDATE ec.t SET l = l - [7], st = st - {'a'} WHERE k = 4",
    )
    .await;
    run(&s, "DELETE m['a'] FROM ec.t WHERE k = 4").await;
    for c in ["l", "st", "m"] {
        assert_eq!(
            one(&s, &format!("SELECT {c} FROM ec.t WHERE k = 4")).await,
            None,
            "{c} emptied by removal"
        );
    }
    run(&s, "INSERT INTO ec.t (k, l) VALUES (5, [1])").await;
    run(&s, "UPDATE ec.t SET l = [] WHERE k = 5").await;
    assert_eq!(one(&s, "SELECT l FROM ec.t WHERE k = 5").await, None);
    // Appending nothing to nothing is still nothing.
    run(&s, "UPDATE ec.t SET l = l + [] WHERE k = 3").await;
    assert_eq!(one(&s, "SELECT l FROM ec.t WHERE k = 3").await, None);
}

/// The error of `cql`, which must fail with Invalid (0x2200) and a message
/// containing `gist`.
async fn invalid(s: &scylla::client::session::Session, cql: &str, gist: &str) {
    let err = s
        .query_unpaged(cql, &[])
        .await
        .expect_err(&format!("{cql} succeeded"));
    assert!(
        matches!(db_error(&err), Some(DbError::Invalid)),
        "{cql}: not Invalid: {err:?}"
    );
    assert!(err.to_string().contains(gist), "{cql}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_mistakes_get_cassandras_codes_and_messages() {
    let cluster = Cluster::start().await.unwrap();
    let s = session(&cluster).await;
    keyspace(&s, "em", 1).await;
    run(
        &s,
        "CREATE TABLE em.t (k int PRIMARY KEY, v int, l list<int>)",
    )
    .await;
    invalid(&s, "SELECT * FROM nope.t", "Keyspace nope does not exist").await;
    invalid(&s, "SELECT * FROM em.nope", "unconfigured table nope").await;
    invalid(&s, "SELECT nope FROM em.t", "Undefined column name nope").await;
    invalid(
        &s,
        "INSERT INTO em.t (k, nope) VALUES (1, 2)",
        "Undefined column name nope",
    )
    .await;
    invalid(
        &s,
        "INSERT INTO em.t (k, v) VALUES (1, 'abc')",
        "Invalid STRING constant (abc) for \"v\" of type int",
    )
    .await;
    invalid(
        &s,
        "UPDATE em.t SET v = 1.5 WHERE k = 1",
        "Invalid FLOAT constant (1.5) for \"v\" of type int",
    )
    .await;
    invalid(
        &s,
        "SELECT * FROM em.t WHERE k = 'x'",
        "Invalid STRING constant (x) for \"k\" of type int",
    )
    .await;
    invalid(
        &s,
        "INSERT INTO em.t (k, v) VALUES (1, 99999999999)",
        "Unable to make int from '99999999999'",
    )
    .await;
    invalid(
        &s,
        "INSERT INTO em.t (k, l) VALUES (1, {'a': 1})",
        "Invalid map literal for l of type list<int>",
    )
    .await;
    invalid(&s, "USE nope", "Keyspace 'nope' does not exist").await;
    invalid(&s, "SELECT * FROM t", "No keyspace has been specified").await;

    // A bound value of the wrong size, as Cassandra's type says it.
    let mut sock = raw_connect(&cluster).await;
    let mut body = query_body("INSERT INTO em.t (k, v) VALUES (?, ?)");
    body.extend_from_slice(&2u16.to_be_bytes());
    for v in [&1i32.to_be_bytes()[..], &5i64.to_be_bytes()[..]] {
        body.extend_from_slice(&(v.len() as i32).to_be_bytes());
        body.extend_from_slice(v);
    }
    super::raw::send(&mut sock, 1, 0x07, &body).await;
    let (_, opcode, body) = super::raw::recv(&mut sock).await;
    assert_eq!(opcode, 0x00, "an ERROR");
    assert_eq!(&body[..4], &0x2200i32.to_be_bytes(), "Invalid");
    let msg = String::from_utf8_lossy(&body[6..]).into_owned();
    assert_eq!(msg, "Expected 4 or 0 byte int (8)");
}

/// A raw connection to node 0, after STARTUP.
async fn raw_connect(cluster: &Cluster) -> tokio::net::TcpStream {
    let mut sock = tokio::net::TcpStream::connect(cluster.node_addr(0))
        .await
        .unwrap();
    let mut startup = 1u16.to_be_bytes().to_vec();
    for s in ["CQL_VERSION", "3.0.0"] {
        startup.extend_from_slice(&(s.len() as u16).to_be_bytes());
        startup.extend_from_slice(s.as_bytes());
    }
    super::raw::send(&mut sock, 0, 0x01, &startup).await;
    assert_eq!(super::raw::recv(&mut sock).await.1, 0x02, "READY");
    sock
}

/// A QUERY body at ONE with the VALUES flag; the values follow.
fn query_body(text: &str) -> Vec<u8> {
    let mut b = (text.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(text.as_bytes());
    b.extend_from_slice(&1u16.to_be_bytes());
    b.push(0x01);
    b
}

/// The names and values of the single row of `cql`.
async fn row(s: &scylla::client::session::Session, cql: &str) -> Vec<(String, Option<CqlValue>)> {
    let rows = s
        .query_unpaged(cql, &[])
        .await
        .unwrap_or_else(|e| panic!("{cql}: {e}"))
        .into_rows_result()
        .unwrap();
    let names: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let r = rows.single_row::<scylla::value::Row>().unwrap();
    names.into_iter().zip(r.columns).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_selectors_and_terms() {
    let cluster = Cluster::start().await.unwrap();
    let s = session(&cluster).await;
    // The health check many applications run.
    let r = row(&s, "SELECT now() FROM system.local").await;
    assert_eq!(r[0].0, "system.now()");
    assert!(matches!(r[0].1, Some(CqlValue::Timeuuid(_))), "{r:?}");
    let r = row(
        &s,
        "SELECT toTimestamp(now()), currentTimestamp(), uuid() AS id, currentDate(), \
         currentTime(), currentTimeUUID() FROM system.local",
    )
    .await;
    let names: Vec<&str> = r.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "system.totimestamp(system.now())",
            "system.currenttimestamp()",
            "id",
            "system.currentdate()",
            "system.currenttime()",
            "system.currenttimeuuid()"
        ]
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let Some(CqlValue::Timestamp(ts)) = r[0].1 else {
        panic!("{r:?}")
    };
    assert!((ts.0 - now_ms).abs() < 10_000, "{ts:?} vs {now_ms}");
    assert!(matches!(r[2].1, Some(CqlValue::Uuid(_))), "{r:?}");
    assert!(matches!(r[3].1, Some(CqlValue::Date(_))), "{r:?}");
    assert!(matches!(r[4].1, Some(CqlValue::Time(_))), "{r:?}");

    keyspace(&s, "fn", 1).await;
    run(
        &s,
        "CREATE TABLE fn.t (k int PRIMARY KEY, id timeuuid, ts timestamp, v int, b blob, u uuid)",
    )
    .await;
    // Function calls as terms: VALUES, SET and WHERE.
    run(
        &s,
        "INSERT INTO fn.t (k, id, ts, v, b, u) VALUES (1, now(), '2020-01-02 03:04:05.678Z', 42, \
         textAsBlob('hi'), uuid())",
    )
    .await;
    run(&s, "UPDATE fn.t SET ts = toTimestamp(now()) WHERE k = 2").await;
    let r = row(&s, "SELECT ts FROM fn.t WHERE k = 2").await;
    assert!(matches!(r[0].1, Some(CqlValue::Timestamp(_))), "{r:?}");
    let r = row(
        &s,
        "SELECT toDate(ts), toUnixTimestamp(ts), CAST(v AS text), cast(v AS double), \
         blobAsText(b) AS t FROM fn.t WHERE k = 1",
    )
    .await;
    let names: Vec<&str> = r.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "system.todate(ts)",
            "system.tounixtimestamp(ts)",
            "cast(v as text)",
            "cast(v as double)",
            "t"
        ]
    );
    assert_eq!(
        r[0].1,
        Some(CqlValue::Date(scylla::value::CqlDate((1u32 << 31) + 18263)))
    );
    assert_eq!(r[1].1, Some(CqlValue::BigInt(1_577_934_245_678)));
    assert_eq!(r[2].1, Some(CqlValue::Text("42".into())));
    assert_eq!(r[3].1, Some(CqlValue::Double(42.0)));
    assert_eq!(r[4].1, Some(CqlValue::Text("hi".into())));
    // WHERE with a function term, and a prepared one whose marker is typed
    // from the function's argument.
    let r = row(&s, "SELECT k FROM fn.t WHERE k = blobAsInt(intAsBlob(1))").await;
    assert_eq!(r[0].1, Some(CqlValue::Int(1)));
    let p = s
        .prepare("UPDATE fn.t SET b = textAsBlob(?) WHERE k = 3")
        .await
        .unwrap();
    s.execute_unpaged(&p, ("x",)).await.unwrap();
    assert_eq!(
        one(&s, "SELECT blobAsText(b) FROM fn.t WHERE k = 3").await,
        Some(CqlValue::Text("x".into()))
    );
    // Unknown functions and wrong types are Invalid, naming the function.
    invalid(
        &s,
        "SELECT nope() FROM system.local",
        "Unknown function 'nope'",
    )
    .await;
    invalid(
        &s,
        "INSERT INTO fn.t (k, v) VALUES (9, nope())",
        "Unknown function nope called",
    )
    .await;
    invalid(
        &s,
        "INSERT INTO fn.t (k, v) VALUES (9, now())",
        "Type error: cannot assign result of function system.now (type timeuuid) to v (type int)",
    )
    .await;
    invalid(
        &s,
        "SELECT CAST(b AS int) FROM fn.t",
        "blob cannot be cast to int",
    )
    .await;
    invalid(
        &s,
        "SELECT max(v) FROM fn.t",
        "The aggregate function max() is not supported by testkit",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_partition_conditional_batches() {
    use scylla::statement::batch::Batch;
    let cluster = Cluster::start().await.unwrap();
    let s = session(&cluster).await;
    keyspace(&s, "cb", 1).await;
    run(
        &s,
        "CREATE TABLE cb.t (k int, c int, v text, PRIMARY KEY (k, c))",
    )
    .await;
    run(&s, "CREATE TABLE cb.u (k int PRIMARY KEY, v text)").await;
    run(&s, "CREATE TABLE cb.n (k int PRIMARY KEY, n counter)").await;

    // As CQL text: applied, one [applied] row.
    let applied = row(
        &s,
        "BEGIN BATCH INSERT INTO cb.t (k, c, v) VALUES (1, 1, 'a') IF NOT EXISTS; \
         INSERT INTO cb.t (k, c, v) VALUES (1, 2, 'b'); APPLY BATCH",
    )
    .await;
    assert_eq!(
        applied,
        vec![("[applied]".to_string(), Some(CqlValue::Boolean(true)))]
    );
    // Not applied: [applied] = false and the row the condition read.
    let rows = s
        .query_unpaged(
            "BEGIN BATCH UPDATE cb.t SET v = 'x' WHERE k = 1 AND c = 1 IF v = 'zzz'; \
             UPDATE cb.t SET v = 'y' WHERE k = 1 AND c = 2; APPLY BATCH",
            &[],
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let names: Vec<&str> = rows.column_specs().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["[applied]", "k", "c", "v"]);
    let got: Vec<(bool, i32, i32, String)> = rows.rows().unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(got, vec![(false, 1, 1, "a".to_string())]);
    assert_eq!(
        one(&s, "SELECT v FROM cb.t WHERE k = 1 AND c = 2").await,
        Some(CqlValue::Text("b".into())),
        "nothing of a batch that did not apply is written"
    );

    // As a protocol BATCH of prepared statements.
    let upd = s
        .prepare("UPDATE cb.t SET v = ? WHERE k = ? AND c = ? IF v = ?")
        .await
        .unwrap();
    let ins = s
        .prepare("INSERT INTO cb.t (k, c, v) VALUES (?, ?, ?)")
        .await
        .unwrap();
    let mut batch = Batch::default();
    batch.append_statement(upd.clone());
    batch.append_statement(ins.clone());
    let res = s
        .batch(&batch, (("c", 1, 1, "a"), (1, 3, "d")))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let (ok,) = res.first_row::<(bool,)>().unwrap();
    assert!(ok, "the condition held");
    assert_eq!(
        one(&s, "SELECT v FROM cb.t WHERE k = 1 AND c = 3").await,
        Some(CqlValue::Text("d".into()))
    );

    // A single conditional statement that fails answers the columns of its
    // IF, without the key (only a batch adds it); on no row, [applied] alone.
    let rows = s
        .query_unpaged(
            "UPDATE cb.t SET v = 'q' WHERE k = 1 AND c = 1 IF v = 'nope'",
            &[],
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let names: Vec<&str> = rows.column_specs().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["[applied]", "v"]);
    assert_eq!(
        rows.single_row::<(bool, String)>().unwrap(),
        (false, "c".to_string())
    );
    let r = row(
        &s,
        "UPDATE cb.t SET v = 'q' WHERE k = 5 AND c = 5 IF v = 'a'",
    )
    .await;
    assert_eq!(
        r,
        vec![("[applied]".to_string(), Some(CqlValue::Boolean(false)))]
    );

    // Refused as Cassandra refuses them.
    invalid(
        &s,
        "BEGIN BATCH INSERT INTO cb.t (k, c, v) VALUES (1, 9, 'a') IF NOT EXISTS; \
         INSERT INTO cb.t (k, c, v) VALUES (2, 9, 'b'); APPLY BATCH",
        "Batch with conditions cannot span multiple partitions",
    )
    .await;
    invalid(
        &s,
        "BEGIN BATCH INSERT INTO cb.t (k, c, v) VALUES (1, 9, 'a') IF NOT EXISTS; \
         INSERT INTO cb.u (k, v) VALUES (1, 'b'); APPLY BATCH",
        "Batch with conditions cannot span multiple tables",
    )
    .await;
    invalid(
        &s,
        "BEGIN COUNTER BATCH UPDATE cb.n SET n = n + 1 WHERE k = 1 IF n = 0; APPLY BATCH",
        "Conditional updates are not supported on counter tables",
    )
    .await;
    invalid(
        &s,
        "BEGIN BATCH USING TIMESTAMP 5 INSERT INTO cb.t (k, c, v) VALUES (1, 9, 'a') \
         IF NOT EXISTS; APPLY BATCH",
        "Cannot provide custom timestamp for conditional BATCH",
    )
    .await;
    let mut two = Batch::default();
    two.append_statement(upd);
    two.append_statement(ins);
    let err = s
        .batch(&two, (("c", 1, 1, "a"), (2, 3, "d")))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Batch with conditions cannot span multiple partitions"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_table_keyspace_and_indexes() {
    let cluster = Cluster::start().await.unwrap();
    let s = session(&cluster).await;
    keyspace(&s, "al", 1).await;
    run(
        &s,
        "CREATE TABLE al.t (k int, c int, v text, PRIMARY KEY (k, c))",
    )
    .await;
    run(&s, "INSERT INTO al.t (k, c, v) VALUES (1, 1, 'a')").await;
    let sel_v = s
        .prepare("SELECT v FROM al.t WHERE k = ? AND c = ?")
        .await
        .unwrap();

    // ADD: a SCHEMA_CHANGE result (UPDATED TABLE), the rows kept.
    let res = s
        .query_unpaged("ALTER TABLE al.t ADD (n int, m map<text, int>)", &[])
        .await
        .unwrap();
    assert!(!res.is_rows(), "a SCHEMA_CHANGE result");
    run(&s, "ALTER TABLE al.t ADD w text").await;
    run(&s, "UPDATE al.t SET n = 5, w = 'w' WHERE k = 1 AND c = 1").await;
    let r = row(&s, "SELECT * FROM al.t WHERE k = 1").await;
    let names: Vec<&str> = r.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["k", "c", "m", "n", "v", "w"]);
    assert_eq!(r[3].1, Some(CqlValue::Int(5)));
    assert_eq!(r[4].1, Some(CqlValue::Text("a".into())));
    // The driver's metadata sees the new columns.
    s.refresh_metadata().await.unwrap();
    let state = s.get_cluster_state();
    let t = &state.get_keyspace("al").unwrap().tables["t"];
    assert!(t.columns.contains_key("w") && t.columns.contains_key("m"));

    // DROP: a prepared statement naming the dropped column fails as in
    // Cassandra: UNPREPARED, then the driver's re-PREPARE is Invalid.
    run(&s, "ALTER TABLE al.t DROP v").await;
    let mut sock = raw_connect(&cluster).await;
    let id = sel_v.get_id();
    let mut body = (id.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(id);
    body.extend_from_slice(&1u16.to_be_bytes());
    body.push(0x01);
    body.extend_from_slice(&2u16.to_be_bytes());
    for v in [1i32, 1] {
        body.extend_from_slice(&4i32.to_be_bytes());
        body.extend_from_slice(&v.to_be_bytes());
    }
    super::raw::send(&mut sock, 1, 0x0A, &body).await;
    let (_, opcode, body) = super::raw::recv(&mut sock).await;
    assert_eq!(opcode, 0x00, "an ERROR");
    assert_eq!(&body[..4], &0x2500i32.to_be_bytes(), "UNPREPARED");
    let err = s.execute_unpaged(&sel_v, (1, 1)).await.unwrap_err();
    assert!(err.to_string().contains("Undefined column name v"), "{err}");
    invalid(&s, "SELECT v FROM al.t", "Undefined column name v").await;
    run(&s, "ALTER TABLE al.t DROP (n, m)").await;
    let r = row(&s, "SELECT * FROM al.t WHERE k = 1").await;
    let names: Vec<&str> = r.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["k", "c", "w"]);
    invalid(
        &s,
        "ALTER TABLE al.t DROP k",
        "Cannot drop PRIMARY KEY column k",
    )
    .await;
    invalid(
        &s,
        "ALTER TABLE al.t DROP nope",
        "Column nope was not found in table t",
    )
    .await;
    invalid(
        &s,
        "ALTER TABLE al.t ADD w int",
        "Column with name 'w' already exists",
    )
    .await;

    // RENAME: only primary key columns, as in Cassandra.
    run(&s, "ALTER TABLE al.t RENAME c TO cc").await;
    let r = row(&s, "SELECT cc, w FROM al.t WHERE k = 1 AND cc = 1").await;
    assert_eq!(r[1].1, Some(CqlValue::Text("w".into())));
    invalid(
        &s,
        "ALTER TABLE al.t RENAME w TO ww",
        "Cannot rename non PRIMARY KEY column w",
    )
    .await;
    invalid(
        &s,
        "ALTER TABLE al.t ALTER w TYPE blob",
        "Altering column types is no longer supported",
    )
    .await;

    // WITH options, and ALTER KEYSPACE.
    run(
        &s,
        "ALTER TABLE al.t WITH comment = 'hello' AND gc_grace_seconds = 10",
    )
    .await;
    assert_eq!(
        one(&s, "SELECT comment FROM system_schema.tables WHERE keyspace_name = 'al' AND table_name = 't'").await,
        Some(CqlValue::Text("hello".into()))
    );
    run(&s, "ALTER KEYSPACE al WITH durable_writes = false").await;
    run(&s, "ALTER KEYSPACE al WITH replication = {'class': 'NetworkTopologyStrategy', 'datacenter1': 1}").await;
    let Some(CqlValue::Map(repl)) = one(
        &s,
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = 'al'",
    )
    .await
    else {
        panic!("no replication map")
    };
    assert!(
        repl.contains(&(
            CqlValue::Text("class".into()),
            CqlValue::Text("org.apache.cassandra.locator.NetworkTopologyStrategy".into())
        )),
        "{repl:?}"
    );
    assert_eq!(
        one(
            &s,
            "SELECT durable_writes FROM system_schema.keyspaces WHERE keyspace_name = 'al'"
        )
        .await,
        Some(CqlValue::Boolean(false)),
        "ALTER KEYSPACE keeps what it does not name"
    );
    invalid(&s, "ALTER KEYSPACE nope WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}", "Keyspace 'nope' doesn't exist").await;

    // Secondary indexes: WHERE on the indexed column without ALLOW FILTERING.
    run(&s, "INSERT INTO al.t (k, cc, w) VALUES (2, 1, 'w')").await;
    run(&s, "INSERT INTO al.t (k, cc, w) VALUES (3, 1, 'z')").await;
    invalid(&s, "SELECT k FROM al.t WHERE w = 'w'", "ALLOW FILTERING").await;
    run(&s, "CREATE INDEX ON al.t (w)").await;
    run(&s, "CREATE INDEX IF NOT EXISTS t_w_idx ON al.t (w)").await;
    let rows = s
        .query_unpaged("SELECT k FROM al.t WHERE w = 'w'", &[])
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let mut ks: Vec<i32> = rows
        .rows::<(i32,)>()
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    ks.sort();
    assert_eq!(ks, [1, 2]);
    let by_w = s.prepare("SELECT k FROM al.t WHERE w = ?").await.unwrap();
    let n = s
        .execute_unpaged(&by_w, ("z",))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows_num();
    assert_eq!(n, 1);
    assert_eq!(
        one(&s, "SELECT index_name FROM system_schema.indexes WHERE keyspace_name = 'al' AND table_name = 't'").await,
        Some(CqlValue::Text("t_w_idx".into()))
    );
    let err = s
        .query_unpaged("CREATE INDEX t_w_idx ON al.t (cc)", &[])
        .await
        .unwrap_err();
    assert!(
        matches!(db_error(&err), Some(DbError::AlreadyExists { .. })),
        "{err:?}"
    );
    invalid(
        &s,
        "ALTER TABLE al.t DROP w",
        "Cannot drop column w because it has dependent secondary indexes (t_w_idx)",
    )
    .await;
    run(&s, "DROP INDEX al.t_w_idx").await;
    run(&s, "DROP INDEX IF EXISTS al.t_w_idx").await;
    invalid(
        &s,
        "DROP INDEX al.t_w_idx",
        "Index 'al.t_w_idx' doesn't exist",
    )
    .await;
    invalid(&s, "SELECT k FROM al.t WHERE w = 'w'", "ALLOW FILTERING").await;
}

/// `CREATE TRIGGER` changes its table's schema, as Cassandra answers it
/// (a schema change the driver waits for the nodes to agree on); the
/// trigger itself is not kept. A missing table is `Invalid`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_trigger_is_a_change_of_its_tables_schema() {
    let cluster = Cluster::builder().nodes(1).start().await.unwrap();
    let s = session(&cluster).await;
    keyspace(&s, "tr", 1).await;
    run(&s, "CREATE TABLE tr.t (k int PRIMARY KEY, v int)").await;
    let r = s
        .query_unpaged(
            "CREATE TRIGGER IF NOT EXISTS audit ON tr.t USING 'org.example.Audit'",
            &[],
        )
        .await
        .unwrap();
    assert!(!r.is_rows(), "a trigger has no rows");
    invalid(
        &s,
        "CREATE TRIGGER audit ON tr.missing USING 'org.example.Audit'",
        "doesn't exist",
    )
    .await;
}
