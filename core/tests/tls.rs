//! TLS to the cluster (feature `tls-rustls`), end to end: the real driver
//! against a testkit cluster that serves only TLS.
//!
//! `cargo test -p tower-cql-core --features tls-rustls,tower-cql-testkit/tls --test tls`

use std::sync::Arc;
use std::time::Duration;

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use tower_cql_core::tls::TlsConfig;
use tower_cql_core::{CqlError, CqlRequest, DriverService, ErrorKind};
use tower_cql_testkit::{Cluster, certs};

async fn connect(cluster: &Cluster, tls: Option<TlsConfig>) -> Result<Session, CqlError> {
    let mut builder = SessionBuilder::new().known_nodes_addr(cluster.contact_points());
    if let Some(tls) = tls {
        builder = builder.tls_context(Some(tls.build()?));
    }
    tokio::time::timeout(Duration::from_secs(30), builder.build())
        .await
        .expect("connecting must not hang")
        .map_err(CqlError::from)
}

fn trusted() -> TlsConfig {
    TlsConfig::new().ca_pem(certs::CA_PEM).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_run_over_tls_and_untrusted_or_plain_clients_are_refused() {
    let cluster = Cluster::builder()
        .nodes(2)
        .tls(certs::NODE_PEM, certs::NODE_KEY, None)
        .unwrap()
        .start()
        .await
        .unwrap();

    let session = connect(&cluster, Some(trusted())).await.unwrap();
    let driver = DriverService::builder(Arc::new(session)).build().unwrap();
    for cql in [
        "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 2}",
        "CREATE TABLE ks.kv (k int PRIMARY KEY, v text)",
    ] {
        driver.execute(CqlRequest::unprepared(cql)).await.unwrap();
    }
    for k in 0..20i32 {
        driver
            .execute(CqlRequest::query("INSERT INTO ks.kv (k, v) VALUES (?, ?)").bind((k, "tls")))
            .await
            .unwrap();
    }
    let resp = driver
        .execute(CqlRequest::query("SELECT v FROM ks.kv WHERE k = ?").bind((7i32,)))
        .await
        .unwrap();
    assert_eq!(resp.single_row::<(String,)>().unwrap().0, "tls");
    // both nodes served (over TLS: there is no other way in)
    assert!(cluster.counters().node_executions(0) > 0);
    assert!(cluster.counters().node_executions(1) > 0);

    // a client that trusts another CA is refused at the handshake
    let other_ca = TlsConfig::new().ca_pem(certs::CLIENT_PEM).unwrap();
    let err = connect(&cluster, Some(other_ca)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");

    // a plain-text client gets a connection error, not a hang
    let err = connect(&cluster, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    println!("plain client against a TLS cluster: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let cluster = Cluster::builder()
        .tls(certs::NODE_PEM, certs::NODE_KEY, Some(certs::CA_PEM))
        .unwrap()
        .start()
        .await
        .unwrap();
    let err = connect(&cluster, Some(trusted())).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");

    let with_identity = trusted()
        .client_identity(certs::CLIENT_PEM, certs::CLIENT_KEY)
        .unwrap();
    let session = connect(&cluster, Some(with_identity)).await.unwrap();
    let driver = DriverService::builder(Arc::new(session)).build().unwrap();
    let resp = driver
        .execute(CqlRequest::query(
            "SELECT cluster_name FROM system.local WHERE key = 'local'",
        ))
        .await
        .unwrap();
    assert_eq!(resp.info().rows, 1);
}
