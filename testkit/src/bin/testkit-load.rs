//! `testkit-load`: prepared point reads through one scylla session, to
//! measure how fast a CQL server (a `cql-testkit`, or any cluster) answers.
//!
//! ```text
//! cql-testkit --listen 127.0.0.1:19042 &
//! testkit-load --uri 127.0.0.1:19042 --concurrency 64 --duration 10
//! ```
//!
//! Without `--uri` it starts an in-process testkit node, so client and
//! server share one runtime (a different measurement: say which you ran).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

/// Load generator for CQL servers: prepared point reads at fixed concurrency.
#[derive(Debug, Parser)]
#[command(name = "testkit-load", version)]
struct Args {
    /// Server to load (`host:port`); default: an in-process testkit node.
    #[arg(long)]
    uri: Option<String>,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds to measure (after a one-second warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Rows in the table read from.
    #[arg(long, default_value_t = 1000)]
    rows: i32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

async fn run_for(
    session: &Arc<Session>,
    stmt: &scylla::statement::prepared::PreparedStatement,
    concurrency: usize,
    rows: i32,
    secs: f64,
) -> Result<(u64, Vec<u32>), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let session = session.clone();
        let stmt = stmt.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut k = (t as i32 * 7919) % rows;
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                session
                    .execute_unpaged(&stmt, (k,))
                    .await
                    .map_err(|e| e.to_string())?;
                lat.push(start.elapsed().as_micros() as u32);
                k = (k + 1) % rows;
            }
            Ok::<_, String>(lat)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok((all.len() as u64, all))
}

async fn run(args: Args) -> Result<(), String> {
    let (uri, _cluster) = match &args.uri {
        Some(u) => (u.clone(), None),
        None => {
            let c = tower_cql_testkit::Cluster::builder()
                .track_writes(false)
                .start()
                .await
                .map_err(|e| e.to_string())?;
            (c.uri(), Some(c))
        }
    };
    let session = Arc::new(
        SessionBuilder::new()
            .known_node(&uri)
            .build()
            .await
            .map_err(|e| format!("cannot connect to {uri}: {e}"))?,
    );
    session
        .query_unpaged("CREATE KEYSPACE IF NOT EXISTS load WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}", &[])
        .await
        .map_err(|e| e.to_string())?;
    session
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS load.kv (k int PRIMARY KEY, v text)",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let insert = session
        .prepare("INSERT INTO load.kv (k, v) VALUES (?, ?)")
        .await
        .map_err(|e| e.to_string())?;
    for k in 0..args.rows {
        session
            .execute_unpaged(&insert, (k, format!("value-{k}")))
            .await
            .map_err(|e| e.to_string())?;
    }
    let select = session
        .prepare("SELECT v FROM load.kv WHERE k = ?")
        .await
        .map_err(|e| e.to_string())?;
    run_for(&session, &select, args.concurrency, args.rows, 1.0).await?;
    let (ops, mut lat) = run_for(
        &session,
        &select,
        args.concurrency,
        args.rows,
        args.duration,
    )
    .await?;
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let ops_s = ops as f64 / args.duration;
    if args.json {
        println!(
            "{{\"uri\":\"{uri}\",\"concurrency\":{},\"duration_s\":{},\"ops\":{ops},\"ops_s\":{ops_s:.0},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{}}}",
            args.concurrency,
            args.duration,
            pct(0.5),
            pct(0.99),
            pct(0.999)
        );
    } else {
        println!(
            "{ops} prepared point reads in {}s at concurrency {} against {uri}: {ops_s:.0} ops/s, p50 {} us, p99 {} us, p99.9 {} us",
            args.duration,
            args.concurrency,
            pct(0.5),
            pct(0.99),
            pct(0.999)
        );
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
