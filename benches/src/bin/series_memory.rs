//! `series_memory`: bytes held per labelled latency series, measured with
//! a counting global allocator.
//!
//! ```text
//! cargo run --release -p tower-cql-benches --bin series_memory -- --json
//! ```
//!
//! For `n` distinct label sets it measures the live heap bytes added by
//! - `in_memory_series`: recording one request event per label set into an
//!   [`InMemoryCollector`] (the histogram, the `SeriesLabels` key and its
//!   hash-map slot; the label strings are shared with the request, as they
//!   are with a `Statement`, so they are not counted here);
//! - `label_strings`: the label strings themselves (`Arc<str>` operation
//!   names), made once per label set by the caller;
//! - `metrics_guard_entry`: the metrics layer's cardinality guard entry for
//!   a label set (one per (operation, keyspace, table), shared by the
//!   request and attempt series of that label set).
//!
//! Hash maps grow by doubling, so the per-series figure depends on where
//! `n` falls between two capacities: several `n` are shown.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use clap::Parser;
use serde_json::json;
use tower::{Service, ServiceExt, service_fn};
use tower_cql_core::event::RequestEvent;
use tower_cql_core::{
    Collector, Collectors, CqlError, CqlRequest, CqlResponse, ExecutionInfo, Histogram,
    InMemoryCollector, Label,
};
use tower_cql_middleware::metrics::{MetricsConfig, MetricsLayer};
use tower_layer::Layer;

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments and
// only adds bookkeeping of the sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc` and `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::SeqCst)
}

/// Heap bytes per labelled series.
#[derive(Debug, Parser)]
#[command(name = "series_memory", version)]
struct Args {
    /// Numbers of label sets to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    series: Vec<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// `n` operation labels, and the heap bytes of their strings alone.
fn labels(n: usize) -> (Vec<Label>, isize) {
    let mut v = Vec::with_capacity(n);
    let names: Vec<String> = (0..n).map(|i| format!("operation-{i:05}")).collect();
    let before = live();
    for name in &names {
        v.push(Label::from(Arc::<str>::from(name.as_str())));
    }
    (v, live() - before)
}

fn requests(n: usize) -> (Vec<CqlRequest>, isize) {
    let (labels, bytes) = labels(n);
    let reqs = labels
        .into_iter()
        .map(|l| CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").operation(l))
        .collect();
    (reqs, bytes)
}

fn in_memory(n: usize) -> (isize, isize) {
    let (reqs, labels) = requests(n);
    let memory = InMemoryCollector::with_max_series(n + 1);
    let before = live();
    for r in &reqs {
        memory.on_request(&{
            let mut e = RequestEvent::new(r.meta(), Duration::from_micros(300), None);
            e.rows = 1;
            e
        });
    }
    let series = live() - before;
    assert_eq!(memory.snapshot().requests.len(), n);
    drop(memory);
    (series, labels)
}

fn guard(n: usize) -> isize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (reqs, _) = requests(n);
    let layer = MetricsLayer::new(
        MetricsConfig {
            max_label_sets: n + 1,
        },
        Collectors::new(),
    );
    fn answer(_: CqlRequest) -> std::future::Ready<Result<CqlResponse, CqlError>> {
        std::future::ready(Ok(CqlResponse::synthetic(ExecutionInfo::default())))
    }
    let mut svc = layer.layer(service_fn(answer));
    // one request first, so the service and runtime's own lazily-made
    // state is not counted
    let warm = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?");
    rt.block_on(async { svc.ready().await.unwrap().call(warm).await.unwrap() });
    // the requests are kept alive until after the measurement, so only
    // what the guard keeps is counted
    let before = live();
    rt.block_on(async {
        for r in &reqs {
            let mut req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?");
            req.meta_mut().set_operation(r.meta().operation().cloned());
            svc.ready().await.unwrap().call(req).await.unwrap();
        }
    });
    let after = live();
    drop(reqs);
    after - before
}

fn main() {
    let args = Args::parse();
    // an empty collector of one series, to show the fixed cost apart
    let before = live();
    let empty = InMemoryCollector::new();
    let empty_bytes = live() - before;
    drop(empty);
    let rows: Vec<_> = args
        .series
        .iter()
        .map(|&n| {
            let (series, labels) = in_memory(n);
            let g = guard(n);
            json!({
                "series": n,
                "in_memory_series_bytes": series,
                "in_memory_bytes_per_series": series as f64 / n as f64,
                "label_string_bytes_per_series": labels as f64 / n as f64,
                "metrics_guard_bytes_per_label_set": g as f64 / n as f64,
                "total_bytes_per_series": (series + labels + g) as f64 / n as f64,
            })
        })
        .collect();
    let v = json!({
        "histogram_memory_bytes_const": Histogram::MEMORY_BYTES,
        "empty_in_memory_collector_bytes": empty_bytes,
        "rows": rows,
    });
    if args.json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    }
}
