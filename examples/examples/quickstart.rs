//! Quickstart: a short scylla-driver session against a cluster.
//!
//! With `SCYLLA_URI=host:port` it talks to that cluster; without it, it
//! starts an embedded three-node testkit cluster on 127.0.0.1-3 and says so.
//!
//! ```text
//! cargo run -p tower-cql-examples --example quickstart
//! SCYLLA_URI=127.0.0.1:9042 cargo run -p tower-cql-examples --example quickstart
//! ```
//!
//! (The tower-cql stack is not wired in yet: this runs the raw driver that
//! the stack will wrap.)

use std::time::Instant;

use futures::TryStreamExt;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Statement;
use tower_cql_testkit::Cluster;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (known_nodes, _embedded) = match std::env::var("SCYLLA_URI") {
        Ok(uri) if !uri.is_empty() => {
            println!("using the cluster at SCYLLA_URI={uri}");
            (vec![uri], None)
        }
        _ => {
            let cluster = Cluster::builder().nodes(3).start().await?;
            println!(
                "SCYLLA_URI is not set: started an embedded testkit cluster on {:?}",
                cluster.contact_points()
            );
            (
                cluster
                    .contact_points()
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                Some(cluster),
            )
        }
    };
    let session = SessionBuilder::new()
        .known_nodes(&known_nodes)
        .build()
        .await?;
    session
        .query_unpaged(
            "CREATE KEYSPACE IF NOT EXISTS quickstart WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
            &[],
        )
        .await?;
    session
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS quickstart.events (device text, seq int, reading double, PRIMARY KEY (device, seq))",
            &[],
        )
        .await?;
    let insert = session
        .prepare("INSERT INTO quickstart.events (device, seq, reading) VALUES (?, ?, ?)")
        .await?;
    let started = Instant::now();
    for seq in 0..200i32 {
        let device = format!("sensor-{}", seq % 4);
        session
            .execute_unpaged(&insert, (device, seq, f64::from(seq) * 0.5))
            .await?;
    }
    println!("wrote 200 rows in {:?}", started.elapsed());

    let read = session
        .prepare("SELECT seq, reading FROM quickstart.events WHERE device = ? AND seq >= ?")
        .await?;
    let started = Instant::now();
    let rows = session
        .execute_unpaged(&read, ("sensor-1", 100i32))
        .await?
        .into_rows_result()?
        .rows::<(i32, f64)>()?
        .count();
    println!(
        "read {rows} rows of sensor-1 with seq >= 100 in {:?}",
        started.elapsed()
    );

    let mut scan = Statement::new("SELECT device, seq FROM quickstart.events");
    scan.set_page_size(25);
    let mut pages = session
        .query_iter(scan, &[])
        .await?
        .rows_stream::<(String, i32)>()?;
    let mut total = 0;
    while pages.try_next().await?.is_some() {
        total += 1;
    }
    println!("scanned {total} rows in pages of 25");
    Ok(())
}
