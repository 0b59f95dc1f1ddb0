//! Swapping the collector set while tasks record: every event reaches
//! exactly one generation, so counts are conserved exactly.
//!
//! Size: `TOWER_CQL_STRESS_EVENTS` events in all (default 1,000,000) and
//! `TOWER_CQL_STRESS_SWAPS` swaps (default 10,000).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tower_cql_core::event::{Event, RequestEvent};
use tower_cql_core::{Collector, Collectors, CqlRequest};

#[derive(Default)]
struct Count(AtomicU64);

impl Collector for Count {
    fn on_request(&self, _: &RequestEvent<'_>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn swaps_while_recording_conserve_every_event() {
    let total = env("TOWER_CQL_STRESS_EVENTS", 1_000_000);
    let swaps = env("TOWER_CQL_STRESS_SWAPS", 10_000);
    let threads = 4u64;
    let per_thread = total / threads;
    let collectors = Collectors::new();
    let first = Arc::new(Count::default());
    collectors.replace([first.clone()]);
    let retired = Arc::new(std::sync::Mutex::new(vec![first]));
    let done = Arc::new(AtomicBool::new(false));

    let swapper = {
        let collectors = collectors.clone();
        let retired = retired.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while n < swaps || !done.load(Ordering::Acquire) {
                let c = Arc::new(Count::default());
                retired.lock().unwrap().push(c.clone());
                // one counting collector per generation
                collectors.replace([c]);
                n += 1;
                if n >= swaps && done.load(Ordering::Acquire) {
                    break;
                }
                if n % 64 == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            n
        })
    };
    let recorders: Vec<_> = (0..threads)
        .map(|_| {
            let collectors = collectors.clone();
            std::thread::spawn(move || {
                let req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").operation("get");
                for _ in 0..per_thread {
                    collectors.emit(Event::Request(RequestEvent::new(
                        req.meta(),
                        Duration::from_micros(1),
                        None,
                    )));
                }
            })
        })
        .collect();
    for r in recorders {
        r.join().unwrap();
    }
    done.store(true, Ordering::Release);
    let swapped = swapper.join().unwrap();
    let delivered: u64 = retired
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.0.load(Ordering::Relaxed))
        .sum();
    assert!(swapped >= swaps, "swapped {swapped}");
    assert_eq!(
        delivered,
        per_thread * threads,
        "every event reached exactly one generation"
    );
    assert_eq!(collectors.current().generation(), swapped + 1);
    assert_eq!(collectors.failures(), 0);
    println!(
        "{} events, {swapped} swaps: conserved",
        per_thread * threads
    );
}
