//! The default stack end to end against testkit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tower::{Service, ServiceExt};
use tower_cql_core::{AttemptReason, CqlRequest, ErrorKind, Statement};
use tower_cql_middleware::retry::RetryConfig;
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_middleware::stack_config::StackConfig;
use tower_cql_testkit::{Fault, InjectedError, Opcode};
use tower_layer::Layer;

mod support;
use support::setup;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_retried_twice_is_one_logical_event_and_three_attempts() {
    let (cluster, driver, collectors, memory) = setup().await;
    let stack = StackBuilder::new(collectors)
        .retry(RetryConfig {
            max_attempts: 3,
            ..Default::default()
        })
        .build(driver)
        .unwrap();
    let mut svc = stack.service();
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?")
        .operation("get")
        .idempotent(true);
    svc.ready()
        .await
        .unwrap()
        .call(get.request().bind((1i32,)))
        .await
        .unwrap();
    let before = memory.snapshot();
    cluster.faults().add(
        Fault::error(InjectedError::Overloaded)
            .opcode(Opcode::Execute)
            .times(2),
    );
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(get.request().bind((1i32,)))
        .await
        .unwrap();
    assert_eq!(resp.info().attempts, 3);
    let after = memory.snapshot();
    assert_eq!(
        after.request_latency(Some("get")).count() - before.request_latency(Some("get")).count(),
        1
    );
    assert_eq!(
        after.attempt_latency(Some("get")).count() - before.attempt_latency(Some("get")).count(),
        3
    );
    assert_eq!(
        after.attempts_by_reason(AttemptReason::Initial)
            - before.attempts_by_reason(AttemptReason::Initial),
        1
    );
    assert_eq!(after.attempts_by_reason(AttemptReason::Retry), 2);
    assert_eq!(after.retries.get(&ErrorKind::Overloaded), Some(&2));
    assert_eq!(after.attempt_errors.get(&ErrorKind::Overloaded), Some(&2));

    // A non-idempotent write applied then timed out is not retried.
    cluster
        .faults()
        .add(Fault::write_timeout_after_apply().times(1));
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(CqlRequest::query("INSERT INTO ks.kv (k, v) VALUES (?, ?)").bind((9i32, "x")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WriteTimeout);
    assert_eq!(err.attempts(), 1);
    assert_eq!(cluster.counters().duplicate_writes(), 0);

    stack.close().await;
    assert!(!stack.is_open());
    let err = stack.service().ready().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ShutDown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_validates_and_takes_user_layers() {
    let (_cluster, driver, collectors, _memory) = setup().await;
    // impossible configurations are refused when built, naming the field
    let err = StackBuilder::new(collectors.clone())
        .retry(RetryConfig {
            max_attempts: 0,
            ..Default::default()
        })
        .build(driver.clone())
        .unwrap_err();
    assert!(err.to_string().contains("retry.max_attempts"), "{err}");
    let err = StackBuilder::new(collectors.clone())
        .load_shed(true)
        .build(driver.clone())
        .unwrap_err();
    assert!(err.to_string().contains("load_shed"), "{err}");
    let err = StackConfig::from_toml("[retry]\nmax_attempt = 3").unwrap_err();
    assert!(err.to_string().contains("max_attempt"), "{err}");
    let err = StackConfig::from_toml("[breaker]\nenabled = true\nfailure_rate = 1.5")
        .unwrap()
        .into_builder(collectors.clone())
        .unwrap_err();
    assert!(err.to_string().contains("failure_rate"), "{err}");

    // a user layer innermost (around the driver) and outermost (around the stack)
    #[derive(Clone)]
    struct Count(Arc<AtomicU64>);
    #[derive(Clone)]
    struct Counted<S>(S, Arc<AtomicU64>);
    impl<S> Layer<S> for Count {
        type Service = Counted<S>;
        fn layer(&self, inner: S) -> Counted<S> {
            Counted(inner, self.0.clone())
        }
    }
    impl<S: Service<CqlRequest>> Service<CqlRequest> for Counted<S> {
        type Response = S::Response;
        type Error = S::Error;
        type Future = S::Future;
        fn poll_ready(
            &mut self,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), S::Error>> {
            self.0.poll_ready(cx)
        }
        fn call(&mut self, req: CqlRequest) -> S::Future {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.call(req)
        }
    }
    let inner_count = Count(Arc::new(AtomicU64::new(0)));
    let outer_count = Count(Arc::new(AtomicU64::new(0)));
    let config = StackConfig::from_toml(
        r#"
        [retry]
        max_attempts = 2
        [timeout]
        per_attempt_ms = 2000
        [concurrency]
        enabled = true
        max_in_flight = 8
        "#,
    )
    .unwrap();
    let stack = config
        .into_builder(collectors)
        .unwrap()
        .build(inner_count.layer(driver))
        .unwrap();
    let mut svc = outer_count.layer(stack.service());
    for k in 0..5i32 {
        svc.ready()
            .await
            .unwrap()
            .call(CqlRequest::query("SELECT v FROM ks.kv WHERE k = ?").bind((k,)))
            .await
            .unwrap();
    }
    assert_eq!(inner_count.0.load(Ordering::Relaxed), 5);
    assert_eq!(outer_count.0.load(Ordering::Relaxed), 5);
    tokio::time::timeout(Duration::from_secs(5), stack.close())
        .await
        .unwrap();
}
