//! Streaming a large partition page by page through the stack: rows arrive
//! as a `Stream`, the next page in flight while the current one is read;
//! every page is a request through the stack (retried, measured), with a
//! page event per page.
//!
//! `cargo run -p tower-cql-examples --example paging`

mod common;

use std::sync::Arc;

use futures::StreamExt;
use tower_cql_core::{Collectors, CqlRequest, DriverService, InMemoryCollector, Statement};
use tower_cql_middleware::stack::StackBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (session, _cluster) = common::connect().await?;
    let memory = Arc::new(InMemoryCollector::new());
    let collectors = Collectors::with([memory.clone()]);
    let driver = DriverService::builder(session).build()?;
    for cql in [
        "CREATE KEYSPACE IF NOT EXISTS ex WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE IF NOT EXISTS ex.series (sensor text, t int, value double, PRIMARY KEY (sensor, t))",
    ] {
        driver.execute(CqlRequest::unprepared(cql)).await?;
    }
    let insert = Statement::new("INSERT INTO ex.series (sensor, t, value) VALUES (?, ?, ?)");
    for t in 0..5000i32 {
        driver
            .execute(insert.request().bind(("big", t, f64::from(t).sqrt())))
            .await?;
    }
    let stack = StackBuilder::new(collectors).build(driver)?;
    let read = Statement::new("SELECT t, value FROM ex.series WHERE sensor = ?")
        .operation("scan_big")
        .idempotent(true);
    let mut rows = stack
        .stream::<(i32, f64)>(read.request().bind(("big",)).page_size(500))
        .await?;
    let (mut n, mut sum) = (0u64, 0.0);
    while let Some(row) = rows.next().await {
        let (_, value) = row?;
        n += 1;
        sum += value;
    }
    drop(rows);
    stack.close().await;
    let snap = memory.snapshot();
    println!(
        "streamed {n} rows (sum {sum:.1}) in {} pages of up to 500 ({} page requests through the stack); streams finished: {}",
        snap.pages,
        snap.request_latency(Some("scan_big")).count(),
        snap.streams_finished
    );
    Ok(())
}
