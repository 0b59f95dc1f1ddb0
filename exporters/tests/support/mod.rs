//! Shared setup for the exporters' end-to-end tests: a one-node testkit
//! cluster with a driver service emitting into the test's collectors, and
//! the table `ks.kv (k int PRIMARY KEY, v text)` created through the
//! test's own stack (so its requests are seen like any other).

#![allow(dead_code)] // each test file uses its part

use std::sync::Arc;

use scylla::client::session_builder::SessionBuilder;
use tower::{Service, ServiceExt};
use tower_cql_core::{Collectors, CqlError, CqlRequest, CqlResponse, DriverService};
use tower_cql_testkit::Cluster;

/// A one-node cluster and a driver service on a session to it, emitting
/// into `collectors`.
pub(crate) async fn driver(collectors: &Collectors) -> (Cluster, DriverService) {
    let cluster = Cluster::start().await.unwrap();
    let session = SessionBuilder::new()
        .known_nodes_addr(cluster.contact_points())
        .build()
        .await
        .unwrap();
    let driver = DriverService::builder(Arc::new(session))
        .collectors(collectors.clone())
        .build()
        .unwrap();
    (cluster, driver)
}

/// Creates the keyspace `ks` and the table `ks.kv` through `svc`.
pub(crate) async fn create_kv<S>(svc: &mut S)
where
    S: Service<CqlRequest, Response = CqlResponse, Error = CqlError>,
{
    for cql in [
        "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE ks.kv (k int PRIMARY KEY, v text)",
    ] {
        svc.ready()
            .await
            .unwrap()
            .call(CqlRequest::unprepared(cql))
            .await
            .unwrap();
    }
}
