//! Shared setup for the middleware's end-to-end tests: a one-node testkit
//! cluster, a driver service emitting into an in-memory collector, and a
//! table `ks.kv (k int PRIMARY KEY, v text)`; or three nodes with the
//! read the node tests send.

#![allow(dead_code)] // each test binary uses its own part

use std::sync::Arc;
use std::time::Duration;

use scylla::client::session_builder::SessionBuilder;
use tower_cql_core::{
    Collector, Collectors, CqlRequest, DriverService, InMemoryCollector, Statement,
};
use tower_cql_middleware::retry::{Backoff, BudgetConfig, RetryConfig};
use tower_cql_testkit::Cluster;

/// A scylla session on `cluster`.
pub(crate) async fn session(cluster: &Cluster) -> scylla::client::session::Session {
    SessionBuilder::new()
        .known_nodes_addr(cluster.contact_points())
        .build()
        .await
        .unwrap()
}

/// The cluster, the driver service, its collectors and the in-memory collector.
pub(crate) type Setup = (Cluster, DriverService, Collectors, Arc<InMemoryCollector>);

/// Starts everything and creates `ks.kv`.
pub(crate) async fn setup() -> Setup {
    let cluster = Cluster::start().await.unwrap();
    let session = session(&cluster).await;
    let memory = Arc::new(InMemoryCollector::new());
    let collectors = Collectors::with([memory.clone()]);
    let driver = DriverService::builder(Arc::new(session))
        .collectors(collectors.clone())
        .build()
        .unwrap();
    for cql in [
        "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE ks.kv (k int PRIMARY KEY, v text)",
    ] {
        driver.execute(CqlRequest::unprepared(cql)).await.unwrap();
    }
    (cluster, driver, collectors, memory)
}

/// The read every test sends.
pub(crate) const GET: &str = "SELECT v FROM ks.kv WHERE k = ?";

/// Three nodes, `ks.kv` (replication factor 3) holding keys 0..10, the
/// read prepared on every node before any fault is injected, and a driver
/// service emitting into `collectors`.
pub(crate) async fn cluster(collectors: &Collectors) -> (Cluster, DriverService) {
    let cluster = Cluster::builder().nodes(3).start().await.unwrap();
    let session = session(&cluster).await;
    let driver = DriverService::builder(Arc::new(session))
        .collectors(collectors.clone())
        .build()
        .unwrap();
    for cql in [
        "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 3}",
        "CREATE TABLE ks.kv (k int PRIMARY KEY, v text)",
    ] {
        driver.execute(CqlRequest::unprepared(cql)).await.unwrap();
    }
    for k in 0..10 {
        driver
            .execute(CqlRequest::query("INSERT INTO ks.kv (k, v) VALUES (?, ?)").bind((k, "v")))
            .await
            .unwrap();
    }
    let get = Statement::new(GET).idempotent(true);
    for k in 0..9 {
        driver.execute(get.request().bind((k,))).await.unwrap();
    }
    (cluster, driver)
}

/// An idempotent read of key `k % 10`.
pub(crate) fn read(k: i32) -> CqlRequest {
    Statement::new(GET)
        .idempotent(true)
        .request()
        .bind((k % 10,))
}

/// `max_attempts` attempts with a 1-2 ms backoff and a budget that never
/// binds: retries as the tests want them, fast and certain.
pub(crate) fn fast_retries(max_attempts: u32) -> RetryConfig {
    RetryConfig {
        max_attempts,
        backoff: Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
        },
        budget: BudgetConfig {
            ratio: 1.0,
            min_per_second: 1000,
            ..BudgetConfig::default()
        },
    }
}

/// Breaker state changes, as the collectors saw them.
#[derive(Default)]
pub(crate) struct BreakerLog(
    std::sync::Mutex<
        Vec<(
            String,
            tower_cql_core::BreakerState,
            tower_cql_core::BreakerState,
        )>,
    >,
);

impl Collector for BreakerLog {
    fn on_breaker(&self, e: &tower_cql_core::event::BreakerEvent<'_>) {
        self.0
            .lock()
            .unwrap()
            .push((e.target.to_string(), e.from, e.to));
    }
}

impl BreakerLog {
    /// Whether `target` went from `from` to `to`.
    pub(crate) fn has(
        &self,
        target: &str,
        from: tower_cql_core::BreakerState,
        to: tower_cql_core::BreakerState,
    ) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|(t, f, s)| t == target && *f == from && *s == to)
    }

    /// Whether `target` opened (from any state).
    pub(crate) fn opened(&self, target: &str) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|(t, _, to)| t == target && *to == tower_cql_core::BreakerState::Open)
    }

    /// Every change so far.
    pub(crate) fn all(
        &self,
    ) -> Vec<(
        String,
        tower_cql_core::BreakerState,
        tower_cql_core::BreakerState,
    )> {
        self.0.lock().unwrap().clone()
    }
}
