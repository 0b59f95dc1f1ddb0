//! Recording into the collector set with 1 and 2 threads while another
//! thread swaps the set every millisecond: the crate's `ArcSwap`ped
//! [`Collectors`] against a `Mutex`-guarded set holding the same
//! in-memory collector. And recording into one histogram from 1 and 2
//! threads at once.
//!
//! `cargo bench -p tower-cql-benches --bench collectors`
//!
//! One iteration is one event per recording thread; the throughput line is
//! in events per second over all threads. Results and the machine (2 cores:
//! the swapper is a third thread) are in BENCHMARKS.md; the
//! `collector_scaling` binary measures the same with exact loss counting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tower_cql_core::collector::dispatch;
use tower_cql_core::event::{Event, RequestEvent};
use tower_cql_core::{Collector, Collectors, CqlRequest, InMemoryCollector};

type MutexSet = Arc<Mutex<Vec<Arc<dyn Collector>>>>;

fn emit_mutex(set: &MutexSet, event: Event<'_>) {
    let set = set.lock().unwrap_or_else(|e| e.into_inner());
    for c in set.iter() {
        dispatch(&**c, &event);
    }
}

fn event(meta: &tower_cql_core::RequestMeta, i: u64) -> Event<'_> {
    Event::Request({
        let mut e = RequestEvent::new(
            meta,
            Duration::from_nanos(100_000 + (i * 997) % 400_000),
            None,
        );
        e.rows = 1;
        e
    })
}

/// Runs `iters` events on each of `threads` threads; returns the wall time.
fn record(threads: usize, iters: u64, emit: &(dyn Fn(Event<'_>) + Sync)) -> Duration {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                let req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?")
                    .operation(if t % 2 == 0 { "get" } else { "get2" });
                barrier.wait();
                for i in 0..iters {
                    emit(event(req.meta(), i));
                }
            });
        }
        barrier.wait();
        let start = Instant::now();
        // the scope joins the threads before returning
        start
    })
    .elapsed()
}

fn bench_scaling(c: &mut Criterion) {
    let memory = Arc::new(InMemoryCollector::new());
    let collectors = Collectors::with([memory.clone()]);
    let mutex: MutexSet = Arc::new(Mutex::new(vec![memory.clone()]));
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (collectors, mutex, memory, stop) = (
            collectors.clone(),
            mutex.clone(),
            memory.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                next += Duration::from_millis(1);
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
                collectors.replace([memory.clone()]);
                *mutex.lock().unwrap_or_else(|e| e.into_inner()) = vec![memory.clone()];
            }
        })
    };

    let mut g = c.benchmark_group("collector set, swapped every ms");
    for threads in [1usize, 2] {
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_function(format!("arc-swap, {threads} thread(s)"), |b| {
            b.iter_custom(|iters| record(threads, iters, &|e| collectors.emit(e)))
        });
        g.bench_function(format!("mutex, {threads} thread(s)"), |b| {
            b.iter_custom(|iters| record(threads, iters, &|e| emit_mutex(&mutex, e)))
        });
    }
    g.finish();
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
}

/// One histogram recorded into by 1 and 2 threads at once (one latency
/// series every request of a statement shares): what its atomics cost when
/// the two cores pass its cache lines back and forth.
fn bench_one_histogram(c: &mut Criterion) {
    use tower_cql_core::histogram::Histogram;
    let h = Histogram::new();
    let mut g = c.benchmark_group("one histogram");
    for threads in [1usize, 2] {
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_function(format!("record, {threads} thread(s)"), |b| {
            b.iter_custom(|iters| {
                let barrier = Barrier::new(threads + 1);
                std::thread::scope(|s| {
                    for _ in 0..threads {
                        let (barrier, h) = (&barrier, &h);
                        s.spawn(move || {
                            barrier.wait();
                            for i in 0..iters {
                                h.record(100_000 + (i * 997) % 400_000);
                            }
                        });
                    }
                    barrier.wait();
                    Instant::now()
                })
                .elapsed()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_scaling, bench_one_histogram);
criterion_main!(benches);
