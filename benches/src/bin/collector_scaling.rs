//! `collector_scaling`: how recording into the collector set scales with
//! recording threads while another thread swaps the set every millisecond.
//!
//! ```text
//! cargo run --release -p tower-cql-benches --bin collector_scaling -- --json
//! ```
//!
//! Two sets are compared, each delivering `RequestEvent`s to one
//! [`InMemoryCollector`]:
//! - `arc_swap`: the crate's [`Collectors`] (an `ArcSwap`ped set; `emit` is
//!   a lock-free load), swapped with [`Collectors::replace`];
//! - `mutex`: the same collector in a `Mutex<Vec<Arc<dyn Collector>>>`
//!   locked for each event, swapped by replacing the vector under the lock.
//!
//! Every recording thread counts what it emitted; after the run the
//! collector's request count must equal the sum exactly (`lost_events`).
//! The swapper replaces the set with a new generation holding the same
//! collector, so every event must land in it whichever generation it saw.
//! Note that the swapper is a thread of its own: with 2 recording threads
//! on a 2-core machine it shares the cores with them (it sleeps between
//! swaps).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};
use tower_cql_core::collector::dispatch;
use tower_cql_core::event::{Event, RequestEvent};
use tower_cql_core::{Collector, Collectors, CqlRequest, InMemoryCollector};

/// Recording throughput of the collector set with 1 and 2 threads.
#[derive(Debug, Parser)]
#[command(name = "collector_scaling", version)]
struct Args {
    /// Seconds each case records.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Runs of each case (min/median/max are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Microseconds between swaps of the set.
    #[arg(long, default_value_t = 1000)]
    swap_every_us: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The two ways to hold the set.
#[derive(Clone)]
enum Set {
    ArcSwap(Collectors),
    Mutex(Arc<Mutex<Vec<Arc<dyn Collector>>>>),
}

impl Set {
    fn emit(&self, event: Event<'_>) {
        match self {
            Set::ArcSwap(c) => c.emit(event),
            Set::Mutex(m) => {
                let set = m.lock().unwrap_or_else(|e| e.into_inner());
                for c in set.iter() {
                    dispatch(&**c, &event);
                }
            }
        }
    }

    fn swap(&self, collector: &Arc<InMemoryCollector>) {
        match self {
            Set::ArcSwap(c) => {
                c.replace([collector.clone()]);
            }
            Set::Mutex(m) => {
                let next: Vec<Arc<dyn Collector>> = vec![collector.clone()];
                *m.lock().unwrap_or_else(|e| e.into_inner()) = next;
            }
        }
    }
}

struct Run {
    events: u64,
    secs: f64,
    swaps: u64,
    lost: i64,
}

fn run_case(mutex: bool, threads: usize, secs: f64, swap_every: Duration) -> Run {
    let memory = Arc::new(InMemoryCollector::new());
    let set = if mutex {
        Set::Mutex(Arc::new(Mutex::new(vec![
            memory.clone() as Arc<dyn Collector>
        ])))
    } else {
        Set::ArcSwap(Collectors::with([memory.clone()]))
    };
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(threads + 2));
    let swapper = {
        let (set, memory, stop, swaps, start) = (
            set.clone(),
            memory.clone(),
            stop.clone(),
            swaps.clone(),
            start.clone(),
        );
        std::thread::spawn(move || {
            start.wait();
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                next += swap_every;
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
                set.swap(&memory);
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (set, stop, start) = (set.clone(), stop.clone(), start.clone());
            std::thread::spawn(move || {
                let req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?")
                    .operation(if t % 2 == 0 { "get" } else { "get2" });
                start.wait();
                let mut n: u64 = 0;
                // check the stop flag every 256 events, not every event
                while !stop.load(Ordering::Relaxed) {
                    for i in 0..256u64 {
                        set.emit(Event::Request({
                            let mut e = RequestEvent::new(
                                req.meta(),
                                Duration::from_nanos(100_000 + (i * 997) % 400_000),
                                None,
                            );
                            e.rows = 1;
                            e
                        }));
                    }
                    n += 256;
                }
                n
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let emitted: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let elapsed = t0.elapsed().as_secs_f64();
    swapper.join().unwrap();
    let snap = memory.snapshot();
    let recorded = snap.ok;
    let in_histograms = snap.request_latency(None).count();
    // both the counter and the histograms must hold every event
    let lost =
        (emitted as i64 - recorded as i64).abs() + (emitted as i64 - in_histograms as i64).abs();
    Run {
        events: emitted,
        secs: elapsed,
        swaps: swaps.load(Ordering::Relaxed),
        lost,
    }
}

fn stats(v: &[f64]) -> Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let med = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    json!({ "min": s[0].round(), "median": med.round(), "max": s[s.len() - 1].round() })
}

fn main() {
    let args = Args::parse();
    let runs = args.runs.max(1);
    let swap_every = Duration::from_micros(args.swap_every_us.max(1));
    let mut out = serde_json::Map::new();
    let mut lost_total: i64 = 0;
    let mut medians = std::collections::HashMap::new();
    // interleave the cases run by run, so drift hits them alike
    let cases = [
        ("arc_swap_1_thread", false, 1),
        ("arc_swap_2_threads", false, 2),
        ("mutex_1_thread", true, 1),
        ("mutex_2_threads", true, 2),
    ];
    let mut results: Vec<Vec<Run>> = cases.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs {
        for (i, (_, mutex, threads)) in cases.iter().enumerate() {
            results[i].push(run_case(*mutex, *threads, args.secs, swap_every));
        }
    }
    for ((name, _, threads), rs) in cases.iter().zip(&results) {
        let eps: Vec<f64> = rs.iter().map(|r| r.events as f64 / r.secs).collect();
        let lost: i64 = rs.iter().map(|r| r.lost).sum();
        lost_total += lost;
        let s = stats(&eps);
        medians.insert(*name, s["median"].as_f64().unwrap_or(0.0));
        if !args.json {
            eprintln!("{name}: {s} events/s, lost {lost}");
        }
        out.insert(
            (*name).to_string(),
            json!({
                "recording_threads": threads,
                "events_per_s": s,
                "per_run_events_per_s": eps.iter().map(|e| e.round()).collect::<Vec<_>>(),
                "swaps_per_s": stats(&rs.iter().map(|r| r.swaps as f64 / r.secs).collect::<Vec<_>>()),
                "lost_events": lost,
            }),
        );
    }
    let a1 = medians["arc_swap_1_thread"];
    let a2 = medians["arc_swap_2_threads"];
    let m1 = medians["mutex_1_thread"];
    let m2 = medians["mutex_2_threads"];
    let scaling = a2 / a1;
    let vs_mutex = a2 / m2;
    let v = json!({
        "machine": {
            "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "note": "the swapper is a third thread; with 2 recording threads on 2 cores it competes with them for CPU each time it wakes",
        },
        "secs_per_run": args.secs,
        "runs": runs,
        "swap_every_us": args.swap_every_us,
        "cases": Value::Object(out),
        "scaling_2_over_1": (scaling * 1000.0).round() / 1000.0,
        "arc_swap_2_over_mutex_2": (vs_mutex * 1000.0).round() / 1000.0,
        "arc_swap_1_over_mutex_1": ((a1 / m1) * 1000.0).round() / 1000.0,
        "lost_events": lost_total,
        "goals": {
            "scaling_ge_1_8": scaling >= 1.8,
            "vs_mutex_ge_5": vs_mutex >= 5.0,
            "lost_events_0": lost_total == 0,
        },
    });
    if args.json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    }
}
