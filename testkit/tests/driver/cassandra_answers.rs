//! testkit answers the CQL that applications and their test suites use as
//! Cassandra 4.x answers it (issue #19): null for empty collections, error
//! codes and messages for common mistakes, function selectors and terms,
//! conditional batches, and schema changes. The same cases run with the
//! DataStax Python driver in `tests/python/datastax_driver.py`.

use scylla::value::CqlValue;
use tower_cql_testkit::Cluster;

use super::{keyspace, run, session};

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
