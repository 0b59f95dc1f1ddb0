//! "Applied, then any error": a write that the server applies and then
//! answers with Overloaded, ServerError or WriteTimeout, or answers by
//! closing the connection. The driver sees the failure; the counters and
//! the data show the write happened once.

use std::time::{Duration, Instant};

use scylla::client::session::Session;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::Counter;
use tower_cql_testkit::{Cluster, Fault, InjectedError, WriteType};

use super::{db_error, keyspace, run, session};

const TEXT: &str = "UPDATE ks.events SET n = n + 1 WHERE id = ?";

async fn setup() -> (Cluster, Session, PreparedStatement) {
    let cluster = Cluster::start().await.unwrap();
    let s = session(&cluster).await;
    keyspace(&s, "ks", 1).await;
    run(&s, "CREATE TABLE ks.events (id int PRIMARY KEY, n counter)").await;
    let inc = s.prepare(TEXT).await.unwrap();
    (cluster, s, inc)
}

/// The counter of row `id`, retried while the driver reconnects.
async fn count(s: &Session, id: i32) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s
            .query_unpaged("SELECT n FROM ks.events WHERE id = ?", (id,))
            .await
        {
            Ok(r) => {
                let rows = r.into_rows_result().unwrap();
                return rows
                    .maybe_first_row::<(Counter,)>()
                    .unwrap()
                    .map_or(0, |(n,)| n.0);
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no read after the fault: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_after_apply_reaches_the_driver_after_the_write_is_applied() {
    let (cluster, s, inc) = setup().await;
    type Check = fn(&DbError) -> bool;
    let cases: [(InjectedError, Check); 3] = [
        (InjectedError::Overloaded, |e| {
            matches!(e, DbError::Overloaded)
        }),
        (InjectedError::ServerError, |e| {
            matches!(e, DbError::ServerError)
        }),
        (InjectedError::WriteTimeout(WriteType::BatchLog), |e| {
            matches!(
                e,
                DbError::WriteTimeout {
                    write_type: scylla::errors::WriteType::BatchLog,
                    ..
                }
            )
        }),
    ];
    for (id, (injected, check)) in (1..).zip(cases) {
        cluster.counters().reset();
        let fault = cluster.faults().add(
            Fault::error_after_apply(injected)
                .matching("ks.events")
                .times(1),
        );
        let err = s.execute_unpaged(&inc, (id,)).await.unwrap_err();
        let db = db_error(&err).unwrap_or_else(|| panic!("{injected:?} gave {err:?}"));
        assert!(check(db), "{injected:?} gave {db:?}");
        assert_eq!(cluster.faults().fired(fault), 1, "{injected:?}");
        // applied once, executed once, although the driver saw an error
        assert_eq!(cluster.counters().executions(TEXT), 1, "{injected:?}");
        assert_eq!(cluster.counters().applied(TEXT), 1, "{injected:?}");
        assert_eq!(cluster.counters().writes_applied(), 1, "{injected:?}");
        assert_eq!(count(&s, id).await, 1, "{injected:?}");
        assert_eq!(cluster.counters().duplicate_writes(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_connection_after_apply_breaks_the_connection_after_the_write_is_applied() {
    let (cluster, s, inc) = setup().await;
    // the second time a delay defers the request: the deferred path closes too
    for (id, deferred) in [(1, false), (2, true)] {
        cluster.counters().reset();
        let delay = deferred.then(|| {
            cluster
                .faults()
                .add(Fault::delay(Duration::from_millis(20)).matching("ks.events"))
        });
        let fault = cluster.faults().add(
            Fault::close_connection_after_apply()
                .matching("ks.events")
                .times(1),
        );
        let err = s.execute_unpaged(&inc, (id,)).await.unwrap_err();
        assert!(
            matches!(
                err,
                ExecutionError::LastAttemptError(RequestAttemptError::BrokenConnectionError(_))
            ) || matches!(err, ExecutionError::ConnectionPoolError(_)),
            "{err:?}"
        );
        if let Some(delay) = delay {
            cluster.faults().remove(delay);
        }
        assert_eq!(cluster.faults().fired(fault), 1);
        assert_eq!(cluster.counters().executions(TEXT), 1);
        assert_eq!(cluster.counters().applied(TEXT), 1);
        assert_eq!(count(&s, id).await, 1, "applied before the close");
    }
}
