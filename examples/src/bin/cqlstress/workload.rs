//! What cqlstress sends: the schema and its data, and the workers' loop of
//! point reads or full-partition scans and writes, all through the stack.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use scylla::statement::batch::{Batch, BatchType};
use tower::ServiceExt;
use tower_cql_core::{CqlError, CqlRequest, Statement};
use tower_cql_middleware::stack::{SessionService, SessionStack};

use crate::args::Args;

/// What the scans did, counted by the workers.
#[derive(Debug, Default)]
pub(crate) struct ScanTally {
    /// Scans that read their whole partition.
    pub(crate) complete: AtomicU64,
    /// Scans that ended early with an error.
    pub(crate) failed: AtomicU64,
    /// Scans that ended without error but short of the partition's rows
    /// (a bug if ever non-zero).
    pub(crate) short: AtomicU64,
    /// Rows the scans read.
    pub(crate) rows: AtomicU64,
}

/// Creates the keyspace and tables; with `--scan`, fills `--rows`
/// partitions of `--partition-rows` rows each (one unlogged batch a
/// partition).
pub(crate) async fn create(svc: &SessionService, a: &Args) -> Result<(), String> {
    for cql in [
        "CREATE KEYSPACE IF NOT EXISTS stress WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE IF NOT EXISTS stress.kv (k int PRIMARY KEY, v bigint)",
        "CREATE TABLE IF NOT EXISTS stress.wide (k int, c int, v bigint, PRIMARY KEY (k, c))",
    ] {
        svc.clone()
            .oneshot(CqlRequest::unprepared(cql))
            .await
            .map_err(|e| e.to_string())?;
    }
    if !a.scan {
        return Ok(());
    }
    let per = a.partition_rows;
    let mut fills = Vec::new();
    for chunk in 0..8 {
        let svc = svc.clone();
        let partitions: Vec<i32> = (0..a.rows).filter(|k| k % 8 == chunk).collect();
        fills.push(tokio::spawn(async move {
            for k in partitions {
                let mut batch = Batch::new(BatchType::Unlogged);
                let mut values = Vec::with_capacity(per as usize);
                for c in 0..per {
                    batch.append_statement("INSERT INTO stress.wide (k, c, v) VALUES (?, ?, ?)");
                    values.push((k, c, i64::from(c)));
                }
                svc.clone()
                    .oneshot(CqlRequest::batch(batch, values))
                    .await
                    .map_err(|e| format!("cannot fill partition {k} of stress.wide: {e}"))?;
            }
            Ok::<_, String>(())
        }));
    }
    for f in fills {
        f.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// One worker: until `stop`, a read (a point read, or with `--scan` a
/// whole partition paged through the stack) or a write, as
/// `--read-ratio` says.
pub(crate) async fn worker(
    stack: SessionStack,
    a: Arc<Args>,
    w: usize,
    stop: Arc<AtomicBool>,
    seq: Arc<AtomicU64>,
    scans: Arc<ScanTally>,
) {
    let read = Statement::new("SELECT v FROM stress.kv WHERE k = ?")
        .operation("read")
        .idempotent(true);
    let scan = Statement::new("SELECT c, v FROM stress.wide WHERE k = ?")
        .operation("scan")
        .idempotent(true);
    let write = Statement::new("INSERT INTO stress.kv (k, v) VALUES (?, ?)")
        .operation("write")
        .idempotent(!a.non_idempotent_writes);
    let svc = stack.service();
    let mut rng = fastrand::Rng::with_seed(w as u64 + 1);
    while !stop.load(Ordering::Relaxed) {
        let k = rng.i32(0..a.rows);
        if rng.f64() >= a.read_ratio {
            // unique values: a write applied twice is visible to the server's counters
            let v = seq.fetch_add(1, Ordering::Relaxed) as i64;
            let req = write
                .request()
                .bind((k, v))
                .timeout(Duration::from_secs(10));
            let _ = svc.clone().oneshot(req).await;
        } else if a.scan {
            let req = scan.request().bind((k,)).page_size(a.page_size);
            match scan_partition(&stack, req).await {
                Ok(n) => {
                    scans.rows.fetch_add(n, Ordering::Relaxed);
                    if n == a.partition_rows as u64 {
                        scans.complete.fetch_add(1, Ordering::Relaxed);
                    } else {
                        scans.short.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(_) => {
                    scans.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else {
            let req = read
                .request()
                .bind((k,))
                .page_size(a.page_size)
                .timeout(Duration::from_secs(10));
            let _ = svc.clone().oneshot(req).await;
        }
    }
}

/// Reads a whole partition through the stack; the rows read.
async fn scan_partition(stack: &SessionStack, req: CqlRequest) -> Result<u64, CqlError> {
    let mut rows = stack.stream::<(i32, i64)>(req).await?;
    let mut n = 0;
    while rows.try_next().await?.is_some() {
        n += 1;
    }
    Ok(n)
}
