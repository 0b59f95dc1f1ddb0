//! A PREPARE the server refuses for a passing reason (`Overloaded`,
//! `IsBootstrapping`) says so and is retried like any error raised
//! before the request was sent (README, "Retry rules"): the statement is
//! fine and nothing ran. Only what is wrong with the statement itself
//! (syntax, an unknown table, permissions) is a `Prepare`-class error
//! that no retry can help.

mod support;

use std::sync::Arc;

use tower_cql_core::{Collectors, CqlRequest, ErrorKind, InMemoryCollector, Statement};
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_testkit::{Fault, InjectedError, Opcode};

/// How many PREPAREs one preparation sends (the driver prepares on every
/// connection of the node's pool).
async fn prepares_per_preparation(
    cluster: &tower_cql_testkit::Cluster,
    driver: &tower_cql_core::DriverService,
) -> u64 {
    const PROBE: &str = "SELECT v FROM ks.kv WHERE k = ? LIMIT 99";
    let id = cluster.faults().add(
        Fault::error(InjectedError::Overloaded)
            .opcode(Opcode::Prepare)
            .matching(PROBE)
            .times(1000),
    );
    driver
        .execute(CqlRequest::query(PROBE).bind((1i32,)))
        .await
        .unwrap_err();
    let n = cluster.faults().fired(id);
    cluster.faults().remove(id);
    n
}

/// A read new to the driver's cache whose first PREPARE is refused
/// `Overloaded` (the statement never ran): README's retry rules retry an
/// idempotent request after `Overloaded`, and any error raised before the
/// request was sent; the read should succeed on its second attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_prepare_of_an_idempotent_read_is_retried() {
    let (cluster, driver, _c, _m) = support::setup().await;
    let n = prepares_per_preparation(&cluster, &driver).await;
    let memory = Arc::new(InMemoryCollector::new());
    let stack = StackBuilder::new(Collectors::with([memory.clone()]))
        .build_on(driver.session().clone())
        .unwrap();
    drop(driver);
    const T: &str = "SELECT v FROM ks.kv WHERE k = ? LIMIT 7";
    let id = cluster.faults().add(
        Fault::error(InjectedError::Overloaded)
            .opcode(Opcode::Prepare)
            .matching(T)
            .times(n),
    );
    let get = Statement::new(T).idempotent(true);
    let out = stack.execute(&get, (1i32,)).await;
    assert_eq!(cluster.faults().fired(id), n);
    match out {
        Ok(r) => assert_eq!(r.info().attempts, 2),
        Err(e) => panic!("kind {:?}, attempts {}: {e}", e.kind(), e.attempts()),
    }
}

/// The same with `IsBootstrapping` on a non-idempotent write's PREPARE:
/// README's table retries `IsBootstrapping` whether or not the request is
/// idempotent ("the coordinator executed nothing").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrapping_prepare_of_a_write_is_retried() {
    let (cluster, driver, _c, _m) = support::setup().await;
    let n = prepares_per_preparation(&cluster, &driver).await;
    let stack = StackBuilder::new(Collectors::new())
        .build_on(driver.session().clone())
        .unwrap();
    drop(driver);
    const T: &str = "INSERT INTO ks.kv (v, k) VALUES (?, ?)";
    cluster.faults().add(
        Fault::error(InjectedError::IsBootstrapping)
            .opcode(Opcode::Prepare)
            .matching(T)
            .times(n),
    );
    let put = Statement::new(T);
    match stack.execute(&put, ("x", 1i32)).await {
        Ok(r) => assert_eq!(r.info().attempts, 2),
        Err(e) => panic!("kind {:?}, attempts {}: {e}", e.kind(), e.attempts()),
    }
}

/// What an overloaded PREPARE's error tells the user to do: not to fix
/// the statement (nothing is wrong with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_prepare_does_not_say_fix_the_statement() {
    let (cluster, driver, _c, _m) = support::setup().await;
    const T: &str = "SELECT v FROM ks.kv WHERE k = ? LIMIT 8";
    cluster.faults().add(
        Fault::error(InjectedError::Overloaded)
            .opcode(Opcode::Prepare)
            .matching(T)
            .times(1000),
    );
    let e = driver
        .execute(CqlRequest::query(T).bind((1i32,)))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert_eq!(e.kind(), ErrorKind::Overloaded, "{text}");
    assert!(
        !text.contains("fix the statement"),
        "an overload is reported as a bad statement: {text}"
    );
}
