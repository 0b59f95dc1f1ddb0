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

/// Makes a bare `tracing` registry the process's global subscriber, once;
/// every test of a binary where some test asserts on spans calls it
/// first.
///
/// `tracing` caches each callsite's interest for the whole process,
/// computed when a thread first reaches it. Until a thread-local
/// subscriber exists anywhere, that asks only the reaching thread's
/// subscriber: a test running the stack with none caches "never" for
/// the stack's spans, and if that races the registration of another
/// test's own subscriber (`set_default`, on its thread), the rebuild that
/// registration makes can miss it, and that test sees no span at all
/// (`waits.rs`'s queued-slot test failed so once in `.ci/run`). With a
/// global registry, a thread with no subscriber of its own answers
/// "always", so no callsite is ever cached as "never".
pub(crate) fn global_subscriber() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // (another global subscriber already set is as good)
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    });
}
