//! Quickstart: the default tower-cql stack around a scylla session, a small
//! workload, and what the collectors saw.
//!
//! ```text
//! cargo run -p tower-cql-examples --example quickstart
//! SCYLLA_URI=127.0.0.1:9042 cargo run -p tower-cql-examples --example quickstart
//! ```
//!
//! Without `SCYLLA_URI` it starts an embedded three-node testkit cluster on
//! 127.0.0.1-3 and has it answer 2% of reads with `Overloaded`, so the
//! retries show up in the report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use tower::{Service, ServiceExt};
use tower_cql_core::{Collectors, CqlRequest, DriverService, InMemoryCollector, Statement};
use tower_cql_middleware::retry::RetryConfig;
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_testkit::{Fault, InjectedError, Opcode};

fn us(nanos: Option<u64>) -> String {
    nanos.map_or("-".into(), |n| format!("{:.0}", n as f64 / 1000.0))
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("quickstart failed: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (session, embedded) =
        tower_cql_examples::connect(tower_cql_examples::scylla_uri(), "").await?;

    // Where observations go, and the stack around the driver.
    let memory = Arc::new(InMemoryCollector::new());
    let collectors = Collectors::with([memory.clone()]);
    let driver = DriverService::builder(Arc::new(session)).build()?;
    // Four attempts: a read fails only if all four meet an injected fault.
    let retry = RetryConfig {
        max_attempts: 4,
        ..Default::default()
    };
    let stack = StackBuilder::new(collectors)
        .retry(retry)
        .build(driver.clone())?;
    let mut svc = stack.service();

    for cql in [
        "CREATE KEYSPACE IF NOT EXISTS quickstart WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE IF NOT EXISTS quickstart.readings (device text, seq int, value double, PRIMARY KEY (device, seq))",
    ] {
        svc.ready().await?.call(CqlRequest::unprepared(cql)).await?;
    }
    // Embedded only: 2% of point reads are answered with Overloaded.
    let fault = embedded.as_ref().map(|cluster| {
        cluster.faults().add(
            Fault::error(InjectedError::Overloaded)
                .opcode(Opcode::Execute)
                .matching("WHERE device = ? AND seq = ?")
                .probability(0.02),
        )
    });
    if fault.is_some() {
        println!(
            "the embedded cluster answers 2% of point reads with Overloaded; the retry layer recovers them"
        );
    }

    let write =
        Statement::new("INSERT INTO quickstart.readings (device, seq, value) VALUES (?, ?, ?)")
            .operation("write_reading")
            .idempotent(true);
    let read = Statement::new("SELECT value FROM quickstart.readings WHERE device = ? AND seq = ?")
        .operation("read_reading")
        .idempotent(true);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..8i32 {
        let mut svc = svc.clone();
        let (write, read) = (write.clone(), read.clone());
        tasks.push(tokio::spawn(async move {
            let device = format!("sensor-{worker}");
            for seq in 0..100i32 {
                let req = write
                    .request()
                    .bind((device.clone(), seq, f64::from(seq) * 0.5));
                svc.ready().await?.call(req).await?;
            }
            for seq in 0..100i32 {
                let req = read
                    .request()
                    .bind((device.clone(), seq))
                    .timeout(Duration::from_secs(2));
                svc.ready().await?.call(req).await?;
            }
            Ok::<_, tower_cql_core::CqlError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!(
        "800 writes and 800 reads through the stack in {:?}",
        started.elapsed()
    );

    // A paged read through the stack: each page a request (retried,
    // limited, measured, traced), the next one in flight while this one
    // is read; page events and one completion event.
    let scan = Statement::new("SELECT seq, value FROM quickstart.readings WHERE device = ?")
        .operation("scan")
        .idempotent(true);
    let rows: Vec<(i32, f64)> = stack
        .stream::<(i32, f64)>(scan.request().bind(("sensor-3",)).page_size(25))
        .await?
        .try_collect()
        .await?;
    println!("streamed {} rows of sensor-3 in pages of 25", rows.len());

    stack.close().await; // no new requests; in-flight ones finish; collectors flushed
    let snap = memory.snapshot();
    println!();
    println!(
        "{:<16} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "operation", "requests", "p50 µs", "p90 µs", "p99 µs", "p999 µs", "max µs"
    );
    for op in ["write_reading", "read_reading"] {
        let h = snap.request_latency(Some(op));
        println!(
            "{:<16} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            op,
            h.count(),
            us(h.quantile(0.5)),
            us(h.quantile(0.9)),
            us(h.quantile(0.99)),
            us(h.quantile(0.999)),
            us(h.max())
        );
    }
    println!();
    println!("requests ok: {}, failed: {:?}", snap.ok, snap.errors);
    println!(
        "attempts: {} ({} retries, by cause {:?})",
        snap.attempt_latency(None).count(),
        snap.retries_total(),
        snap.retries
    );
    println!("attempt errors by kind: {:?}", snap.attempt_errors);
    println!(
        "pages: {} ({} rows); streams finished: {}",
        snap.pages, snap.page_rows, snap.streams_finished
    );
    if let (Some(cluster), Some(fault)) = (&embedded, fault) {
        println!(
            "faults injected by the server: {}; server executions: {}; duplicate writes: {}",
            cluster.faults().fired(fault),
            cluster.counters().total_executions(),
            cluster.counters().duplicate_writes()
        );
    }
    Ok(())
}
