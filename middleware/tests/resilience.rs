//! Resilience end to end against testkit: a failure storm stays within the
//! retry budget, a concurrency limit holds under thousands of callers, and
//! a list-element delete that may have been applied is never retried.
//!
//! Size: `TOWER_CQL_STRESS_CALLERS` concurrent callers (default 2,000).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tower::{ServiceExt, service_fn};
use tower_cql_core::{CqlRequest, ErrorKind, Statement};
use tower_cql_middleware::concurrency::ConcurrencyConfig;
use tower_cql_middleware::retry::{BudgetConfig, RetryConfig};
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_testkit::{Fault, InjectedError, Opcode};

mod support;
use support::{fast_retries, setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_total_failure_storm_keeps_retries_within_the_budget() {
    let (cluster, driver, collectors, memory) = setup().await;
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?").idempotent(true);
    driver.execute(get.request().bind((1i32,))).await.unwrap(); // prepare
    let storm = cluster
        .faults()
        .add(Fault::error(InjectedError::Overloaded).opcode(Opcode::Execute));
    let retry = RetryConfig {
        max_attempts: 5,
        budget: BudgetConfig {
            ratio: 0.1,
            min_per_second: 1,
            window: Duration::from_secs(10),
        },
        ..Default::default()
    };
    let stack = StackBuilder::new(collectors)
        .retry(retry)
        .build(driver)
        .unwrap();
    let requests = 1000u64;
    let mut tasks = Vec::new();
    for worker in 0..20u64 {
        let svc = stack.service();
        let get = get.clone();
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            for i in 0..requests / 20 {
                let err = svc
                    .clone()
                    .oneshot(get.request().bind(((worker * 1000 + i) as i32,)))
                    .await
                    .unwrap_err();
                assert_eq!(err.kind(), ErrorKind::Overloaded);
                failed += 1;
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap();
    }
    assert_eq!(failed, requests);
    let snap = memory.snapshot();
    let retries = snap.retries_total();
    // the budget: 1 per second of the 10 s window + 10% of the requests
    let allowed = 10 + requests / 10;
    assert!(
        retries <= allowed + 1,
        "{retries} retries, budget {allowed}"
    );
    assert!(retries >= allowed / 2, "the budget was used: {retries}");
    // and the server saw exactly the requests plus the retries
    assert_eq!(cluster.faults().fired(storm), requests + retries);
    println!("{requests} requests in a 100% failure storm: {retries} retries (budget {allowed})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_holds_under_thousands_of_callers() {
    let callers: usize = std::env::var("TOWER_CQL_STRESS_CALLERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let (cluster, driver, collectors, memory) = setup().await;
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?").idempotent(true);
    driver.execute(get.request().bind((1i32,))).await.unwrap();
    cluster
        .faults()
        .add(Fault::delay(Duration::from_millis(2)).opcode(Opcode::Execute));
    // count what reaches the driver at once
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let counted = service_fn({
        let (now, peak, driver) = (now.clone(), peak.clone(), driver.clone());
        move |req: CqlRequest| {
            let (driver, now, peak) = (driver.clone(), now.clone(), peak.clone());
            async move {
                peak.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                let r = driver.execute(req).await;
                now.fetch_sub(1, Ordering::SeqCst);
                r
            }
        }
    });
    let stack = StackBuilder::new(collectors)
        .concurrency(ConcurrencyConfig {
            max_in_flight: 16,
            max_queue: callers,
            queue_timeout: Some(Duration::from_secs(60)),
        })
        .build(counted)
        .unwrap();
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let svc = stack.service();
            let req = get.request().bind(((i % 100) as i32,));
            tokio::spawn(async move { svc.oneshot(req).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        t.await.unwrap().unwrap();
        ok += 1;
    }
    assert_eq!(ok, callers);
    assert!(
        peak.load(Ordering::SeqCst) <= 16,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    assert_eq!(peak.load(Ordering::SeqCst), 16, "the limit was reached");
    let snap = memory.snapshot();
    assert!(snap.throttled > 0, "waits were observed");
    assert_eq!(snap.throttle_rejected, 0);
    stack.close().await;
}

/// `DELETE l[0]` deletes whatever element is first now: run twice, it
/// deletes two. Marked idempotent by its caller (wrongly), applied and
/// then answered with a write timeout, it is not retried, whatever the
/// retry settings allow: the request fails after one attempt and the
/// list lost one element, not two. (The text cannot tell a list index
/// from a map key, so any element delete is treated so; see
/// `StatementTraits::element_delete`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_element_delete_that_may_have_applied_is_not_retried() {
    let (cluster, driver, collectors, memory) = setup().await;
    for cql in [
        "CREATE TABLE ks.lists (k int PRIMARY KEY, l list<int>)",
        "INSERT INTO ks.lists (k, l) VALUES (1, [1, 2, 3])",
    ] {
        driver.execute(CqlRequest::unprepared(cql)).await.unwrap();
    }
    let stack = StackBuilder::new(collectors)
        .retry(fast_retries(4))
        .build(driver.clone())
        .unwrap();
    let text = "DELETE l[0] FROM ks.lists WHERE k = ?";
    let fault = cluster.faults().add(
        Fault::write_timeout_after_apply()
            .opcode(Opcode::Execute)
            .matching(text)
            .times(1),
    );
    let delete = Statement::new(text).idempotent(true); // marked, wrongly
    let err = stack
        .execute(&delete, (1i32,))
        .await
        .expect_err("applied, then a write timeout, and not retried");
    assert_eq!(err.kind(), ErrorKind::WriteTimeout, "{err}");
    assert_eq!(err.attempts(), 1, "{err}");
    assert_eq!(cluster.faults().fired(fault), 1);
    let (l,): (Vec<i32>,) = driver
        .execute(CqlRequest::query("SELECT l FROM ks.lists WHERE k = ?").bind((1i32,)))
        .await
        .unwrap()
        .single_row()
        .unwrap();
    assert_eq!(l, [2, 3], "one element deleted, not two");
    assert_eq!(memory.snapshot().retries_total(), 0);
    stack.close().await;
}
