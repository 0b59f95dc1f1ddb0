//! Swapping the collector set while traffic flows: every event reaches
//! exactly one generation, so the counts of all generations add up.
//!
//! `cargo run -p tower-cql-examples --example swap_collectors`

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tower::ServiceExt;
use tower_cql_core::event::RequestEvent;
use tower_cql_core::{Collector, Collectors, CqlRequest, Statement};
use tower_cql_middleware::stack::StackBuilder;

#[derive(Default)]
struct Count(AtomicU64);

impl Collector for Count {
    fn on_request(&self, _: &RequestEvent<'_>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (session, _cluster) = common::connect().await?;
    let collectors = Collectors::new();
    let stack = StackBuilder::new(collectors.clone()).build_on(session)?;
    for cql in [
        "CREATE KEYSPACE IF NOT EXISTS ex WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE IF NOT EXISTS ex.kv (k int PRIMARY KEY, v int)",
    ] {
        stack.service().oneshot(CqlRequest::unprepared(cql)).await?;
    }
    let write = Statement::new("INSERT INTO ex.kv (k, v) VALUES (?, ?)").operation("write");
    let mut generations = vec![Arc::new(Count::default())];
    collectors.replace([generations[0].clone()]);
    let traffic = {
        let svc = stack.service();
        tokio::spawn(async move {
            let mut sent = 0u64;
            for k in 0..2000i32 {
                svc.clone().oneshot(write.request().bind((k, k))).await?;
                sent += 1;
            }
            Ok::<_, tower_cql_core::CqlError>(sent)
        })
    };
    while !traffic.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let next = Arc::new(Count::default());
        generations.push(next.clone());
        collectors.replace([next]); // lock-free for the requests in flight
    }
    let sent = traffic.await??;
    stack.close().await;
    let seen: u64 = generations
        .iter()
        .map(|g| g.0.load(Ordering::Relaxed))
        .sum();
    println!(
        "{sent} requests sent, {seen} request events over {} collector generations",
        generations.len()
    );
    assert_eq!(seen, sent, "every event reached exactly one generation");
    Ok(())
}
