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

/// A writer the test reads back (a `JsonLines` sink): clones share the
/// bytes.
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// What was written so far, as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
