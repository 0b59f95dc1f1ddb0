//! A collector of your own: count failed requests per table, and keep a
//! slow collector off the request path with `Background`.
//!
//! `cargo run -p tower-cql-examples --example custom_collector`

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::ServiceExt;
use tower_cql_core::event::RequestEvent;
use tower_cql_core::{Background, Collector, Collectors, CqlRequest};
use tower_cql_middleware::stack::StackBuilder;

/// Counts requests per (table, outcome). Called on the request path: keep it cheap.
#[derive(Default)]
struct PerTable(Mutex<HashMap<(String, &'static str), u64>>);

impl Collector for PerTable {
    fn on_request(&self, e: &RequestEvent<'_>) {
        let table = e.meta.table().map_or("-".to_string(), |t| t.to_string());
        let outcome = e.error.map_or("ok", |err| err.kind().as_str());
        *self.0.lock().unwrap().entry((table, outcome)).or_default() += 1;
    }
}

/// Pretends to ship events somewhere slow.
struct SlowSink;

impl Collector for SlowSink {
    fn on_request(&self, _: &RequestEvent<'_>) {
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (session, _cluster) = common::connect().await?;
    let per_table = Arc::new(PerTable::default());
    let slow = Arc::new(Background::new(Arc::new(SlowSink), 64));
    let collectors = Collectors::with([per_table.clone()]);
    collectors.add(slow.clone());
    let stack = StackBuilder::new(collectors).build_on(session)?;
    for cql in [
        "CREATE KEYSPACE IF NOT EXISTS ex WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE IF NOT EXISTS ex.notes (id int PRIMARY KEY, body text)",
    ] {
        stack.service().oneshot(CqlRequest::unprepared(cql)).await?;
    }
    for id in 0..200i32 {
        let req =
            CqlRequest::query("INSERT INTO ex.notes (id, body) VALUES (?, ?)").bind((id, "hello"));
        stack.service().oneshot(req).await?;
    }
    // a failing request: a table that does not exist
    let _ = stack
        .service()
        .oneshot(CqlRequest::query("SELECT body FROM ex.missing WHERE id = ?").bind((1i32,)))
        .await;
    stack.close().await; // flushes the collectors: the background queue is drained
    let mut counts: Vec<_> = per_table
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    counts.sort();
    for ((table, outcome), n) in counts {
        println!("{table:>8} {outcome:>8} {n}");
    }
    println!(
        "the slow sink dropped {} events instead of slowing requests down",
        slow.dropped()
    );
    Ok(())
}
