//! Shared setup for the middleware's end-to-end tests: a one-node testkit
//! cluster, a driver service emitting into an in-memory collector, and a
//! table `ks.kv (k int PRIMARY KEY, v text)`.

use std::sync::Arc;

use scylla::client::session_builder::SessionBuilder;
use tower_cql_core::{Collector, Collectors, CqlRequest, DriverService, InMemoryCollector};
use tower_cql_testkit::Cluster;

/// The cluster, the driver service, its collectors and the in-memory collector.
pub(crate) type Setup = (Cluster, DriverService, Collectors, Arc<InMemoryCollector>);

/// Starts everything and creates `ks.kv`.
pub(crate) async fn setup() -> Setup {
    let cluster = Cluster::start().await.unwrap();
    let session = SessionBuilder::new()
        .known_nodes_addr(cluster.contact_points())
        .build()
        .await
        .unwrap();
    let memory = Arc::new(InMemoryCollector::new());
    let collectors = Collectors::with([memory.clone() as Arc<dyn Collector>]);
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
