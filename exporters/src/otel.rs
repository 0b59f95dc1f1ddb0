//! A collector that records through an OpenTelemetry `Meter`: the
//! `db.client.operation.duration` histogram of the database semantic
//! conventions (seconds, the conventions' bucket boundaries), per-attempt
//! durations, returned rows, retries, throttling, shedding, breaker
//! transitions, and the pages and ends of paged reads. Export it with any OpenTelemetry metrics exporter (OTLP,
//! stdout, in-memory).
//!
//! ```
//! use std::sync::Arc;
//! use opentelemetry::metrics::MeterProvider as _;
//! use tower_cql_core::Collectors;
//! use tower_cql_exporters::otel::OtelCollector;
//!
//! let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
//! let otel = OtelCollector::new(&provider.meter("tower-cql"));
//! let collectors = Collectors::with([Arc::new(otel)]);
//! # let _ = collectors;
//! ```
//!
//! | instrument | unit | attributes |
//! |---|---|---|
//! | `db.client.operation.duration` (histogram) | `s` | `db.system.name`, `db.operation.name`, `db.namespace`, `db.collection.name`, `error.type` (on failure) |
//! | `db.client.attempt.duration` (histogram) | `s` | the same and `cql.attempt.reason` |
//! | `db.client.response.returned_rows` (histogram) | `{row}` | the request attributes |
//! | `db.client.retries` (counter) | `{retry}` | `error.type` (the cause) |
//! | `db.client.throttled` (counter) | `{request}` | `cql.limiter`, `cql.rejected` |
//! | `db.client.shed` (counter) | `{request}` | `cql.shed.reason` |
//! | `db.client.breaker.transitions` (counter) | `{transition}` | `cql.breaker.state` |
//! | `db.client.concurrency.limit` (gauge) | `{request}` | `cql.limiter` |
//! | `db.client.pages`, `db.client.page_rows` (counters) | `{page}`, `{row}` | |
//! | `db.client.streams` (counter) | `{stream}` | `end` |
//!
//! The paged-read counters are the [`MetricsBridge`](crate::metrics_bridge)'s
//! too: both take them from [`instruments`].
//!
//! Attribute sets are built once per label set and cached (lock-free
//! [`Registry`]), so recording allocates nothing.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{BoundHistogram, Counter, Gauge, Histogram, Meter};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use tower_cql_core::event::{
    AttemptEvent, BreakerEvent, LatestLimit, LimitEvent, PageEvent, RequestEvent, RetryEvent,
    ShedEvent, StreamEvent, ThrottleEvent,
};
use tower_cql_core::memory::{KeptSeries, SeriesKey, SeriesView};
use tower_cql_core::registry::Registry;
use tower_cql_core::{Collector, CqlError, SeriesLabels};

use crate::instruments;

/// The conventions' explicit bucket boundaries for `db.client.operation.duration`, in seconds
/// (defined once, in [`tower_cql_core::semconv`]).
pub use tower_cql_core::semconv::DB_CLIENT_OPERATION_DURATION_BUCKETS as DURATION_BOUNDARIES;

fn attributes(l: &SeriesLabels) -> Arc<[KeyValue]> {
    let mut v = vec![
        KeyValue::new("db.system.name", "cassandra"),
        KeyValue::new(
            "db.operation.name",
            l.operation
                .as_ref()
                .map_or(l.kind.as_str().to_string(), |o| o.to_string()),
        ),
    ];
    if let Some(k) = &l.keyspace {
        v.push(KeyValue::new("db.namespace", k.to_string()));
    }
    if let Some(t) = &l.table {
        v.push(KeyValue::new("db.collection.name", t.to_string()));
    }
    if let Some(e) = l.error {
        v.push(KeyValue::new("error.type", e.as_str()));
    }
    if let Some(r) = l.reason {
        v.push(KeyValue::new("cql.attempt.reason", r.as_str()));
    }
    v.into()
}

/// The counter `c` defines, on `meter`.
fn counter(meter: &Meter, c: instruments::Counter) -> Counter<u64> {
    meter
        .u64_counter(c.otel)
        .with_unit(c.unit)
        .with_description(c.description)
        .build()
}

/// The OpenTelemetry collector; see the module docs.
pub struct OtelCollector {
    operation: Histogram<f64>,
    attempt: Histogram<f64>,
    rows: Histogram<u64>,
    retries: Counter<u64>,
    throttled: Counter<u64>,
    shed: Counter<u64>,
    breaker: Counter<u64>,
    limit: Gauge<u64>,
    pages: Counter<u64>,
    page_rows: Counter<u64>,
    streams: Counter<u64>,
    // the limit in force by the limit events seen (they can arrive out of
    // the order of the changes)
    latest_limit: LatestLimit,
    // per label set, the histograms bound to its attributes (the SDK's
    // bound instruments: a record skips its attribute lookup, which hashes
    // and compares every attribute under a read lock)
    bound: Registry<SeriesKey, Arc<Bound>>,
    // this collector's id for the bound histograms it keeps in statements
    // (memory::KeptSeries)
    id: std::num::NonZeroU64,
    provider: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
    // Also flushed by `flush()`, after the meter provider (e.g. the OTLP
    // tracer provider, so the stack's close() sends the last spans too).
    also_flush: Option<Arc<dyn Fn() -> OTelSdkResult + Send + Sync>>,
    // Flushes that failed (an export of what they carried failed): this
    // collector's `failures()`.
    failed_flushes: AtomicU64,
    // How long `Collectors::flush` waits for this collector's flush.
    flush_timeout: std::time::Duration,
}

impl fmt::Debug for OtelCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelCollector")
            .field("label_sets", &self.bound.len())
            .finish()
    }
}

impl OtelCollector {
    /// Instruments on `meter`.
    pub fn new(meter: &Meter) -> OtelCollector {
        OtelCollector {
            operation: meter
                .f64_histogram("db.client.operation.duration")
                .with_unit("s")
                .with_description(
                    "Duration of database client operations, end to end across retries",
                )
                .with_boundaries(DURATION_BOUNDARIES.to_vec())
                .build(),
            attempt: meter
                .f64_histogram("db.client.attempt.duration")
                .with_unit("s")
                .with_description("Duration of each attempt of a database client operation")
                .with_boundaries(DURATION_BOUNDARIES.to_vec())
                .build(),
            rows: meter
                .u64_histogram("db.client.response.returned_rows")
                .with_unit("{row}")
                .with_description("Rows returned by database client operations")
                .with_boundaries(vec![
                    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 10000.0,
                ])
                .build(),
            retries: meter
                .u64_counter("db.client.retries")
                .with_unit("{retry}")
                .with_description("Retries scheduled, by the error that caused them")
                .build(),
            throttled: meter
                .u64_counter("db.client.throttled")
                .with_unit("{request}")
                .with_description("Requests that waited for or were refused by a limiter, and extra attempts refused by the retry budget (limiter retry_budget, hedge_budget)")
                .build(),
            shed: meter
                .u64_counter("db.client.shed")
                .with_unit("{request}")
                .with_description("Requests refused without being tried")
                .build(),
            breaker: meter
                .u64_counter("db.client.breaker.transitions")
                .with_unit("{transition}")
                .with_description("Circuit breaker state changes")
                .build(),
            limit: meter
                .u64_gauge("db.client.concurrency.limit")
                .with_unit("{request}")
                .with_description("The current adaptive concurrency limit")
                .build(),
            pages: counter(meter, instruments::PAGES),
            page_rows: counter(meter, instruments::PAGE_ROWS),
            streams: counter(meter, instruments::STREAMS),
            latest_limit: LatestLimit::new(),
            bound: Registry::new(),
            id: tower_cql_core::Statement::new_collector_id(),
            provider: None,
            also_flush: None,
            failed_flushes: AtomicU64::new(0),
            flush_timeout: tower_cql_core::DEFAULT_FLUSH_TIMEOUT,
        }
    }

    /// Instruments on a meter of `provider`, which [`Collector::flush`]
    /// (called by the stack's `close()`) force-flushes, so the last data is
    /// exported before shutdown. A flush that fails (its export did) is
    /// counted as this collector's failure ([`Collector::failures`], and
    /// so `Collectors::failures`).
    pub fn with_provider(provider: &opentelemetry_sdk::metrics::SdkMeterProvider) -> OtelCollector {
        use opentelemetry::metrics::MeterProvider as _;
        let mut c = OtelCollector::new(&provider.meter("tower-cql"));
        c.provider = Some(provider.clone());
        c
    }

    /// Sets how long the stack's `close()` (through
    /// [`Collectors::flush`](tower_cql_core::Collectors::flush)) waits for
    /// this collector's flush before it gives up on it and counts a
    /// failure: [`DEFAULT_FLUSH_TIMEOUT`](tower_cql_core::DEFAULT_FLUSH_TIMEOUT)
    /// unless set. Give it more than the exports its provider makes on a
    /// flush can take (their export timeouts, summed). The collector of
    /// an `OtlpExporter` (feature `otlp`) sets it from the
    /// exporter's timeouts.
    pub fn with_flush_timeout(mut self, timeout: std::time::Duration) -> OtelCollector {
        self.flush_timeout = timeout;
        self
    }

    /// Runs `f` on every [`Collector::flush`] too, after the meter
    /// provider; its failure counts as the provider's does.
    #[cfg(feature = "_otlp")]
    pub(crate) fn also_flush(
        mut self,
        f: Arc<dyn Fn() -> OTelSdkResult + Send + Sync>,
    ) -> OtelCollector {
        self.also_flush = Some(f);
        self
    }

    /// The histograms bound to the labels of `view`'s series, bound on
    /// first use: a request's label set to the operation and rows
    /// histograms, an attempt's (it has a reason) to the attempt
    /// histogram, so that no instrument reports a series it never
    /// recorded. (Events find them with [`with_bound`](Self::with_bound),
    /// or, for a successful request and first attempt with their
    /// statement's own labels, kept in the statement: [`KeptSeries`].)
    fn bound(&self, view: SeriesView<'_>) -> Arc<Bound> {
        let key = view.to_key();
        self.bound.get_or_insert_with(key.clone(), || {
            let l = key.labels();
            let a = attributes(l);
            Arc::new(if l.reason.is_some() {
                Bound::Attempt(self.attempt.bind(&a))
            } else {
                Bound::Request {
                    operation: self.operation.bind(&a),
                    rows: self.rows.bind(&a),
                }
            })
        })
    }

    /// Runs `record` with the histograms of `view`'s series, found
    /// through the view in a snapshot: no label cloned, no string hashed,
    /// no reference count touched.
    fn with_bound(&self, view: SeriesView<'_>, record: impl FnOnce(&Bound)) {
        match self.bound.snapshot().get(&view) {
            Some(b) => record(b),
            None => record(&self.bound(view)),
        }
    }
}

/// The histograms of one label set, bound to its attributes.
enum Bound {
    Request {
        operation: BoundHistogram<f64>,
        rows: BoundHistogram<u64>,
    },
    Attempt(BoundHistogram<f64>),
}

impl Collector for OtelCollector {
    fn on_request(&self, e: &RequestEvent<'_>) {
        let record = |b: &Bound| {
            if let Bound::Request { operation, rows } = b {
                operation.record(e.duration.as_secs_f64());
                rows.record(e.rows as u64);
            }
        };
        if let Some(b) = KeptSeries::for_request(self.id, e, |view| Some(self.bound(view))) {
            return record(b);
        }
        let view = SeriesView::new(e.meta, e.error.map(CqlError::kind), None);
        self.with_bound(view, record);
    }

    fn on_attempt(&self, e: &AttemptEvent<'_>) {
        let record = |b: &Bound| {
            if let Bound::Attempt(attempt) = b {
                attempt.record(e.duration.as_secs_f64());
            }
        };
        if let Some(b) = KeptSeries::for_attempt(self.id, e, |view| Some(self.bound(view))) {
            return record(b);
        }
        let view = SeriesView::new(e.meta, e.error.map(CqlError::kind), Some(e.reason));
        self.with_bound(view, record);
    }

    fn on_retry(&self, e: &RetryEvent<'_>) {
        self.retries.add(
            1,
            &[KeyValue::new(
                "error.type",
                tower_cql_core::classify::error_type(e.cause),
            )],
        );
    }

    fn on_throttle(&self, e: &ThrottleEvent<'_>) {
        self.throttled.add(
            1,
            &[
                KeyValue::new("cql.limiter", e.limiter),
                KeyValue::new("cql.rejected", e.rejected),
            ],
        );
    }

    fn on_shed(&self, e: &ShedEvent<'_>) {
        self.shed
            .add(1, &[KeyValue::new("cql.shed.reason", e.reason.as_str())]);
    }

    fn on_breaker(&self, e: &BreakerEvent<'_>) {
        self.breaker
            .add(1, &[KeyValue::new("cql.breaker.state", e.to.as_str())]);
    }

    fn on_limit(&self, e: &LimitEvent) {
        let limiter = [KeyValue::new("cql.limiter", e.limiter)];
        self.latest_limit
            .show(e, |limit| self.limit.record(limit, &limiter));
    }

    fn on_page(&self, e: &PageEvent<'_>) {
        self.pages.add(1, &[]);
        self.page_rows.add(e.rows as u64, &[]);
    }

    fn on_stream(&self, e: &StreamEvent<'_>) {
        self.streams
            .add(1, &[KeyValue::new(instruments::STREAM_END, e.end.as_str())]);
    }

    fn flush_timeout(&self) -> std::time::Duration {
        self.flush_timeout
    }

    fn flush(&self) {
        // (a provider shut down already has nothing left to lose here)
        let count = |r: OTelSdkResult| {
            if let Err(e) = r
                && !matches!(e, OTelSdkError::AlreadyShutdown)
            {
                self.failed_flushes.fetch_add(1, Ordering::Relaxed);
            }
        };
        if let Some(p) = &self.provider {
            count(p.force_flush());
        }
        if let Some(f) = &self.also_flush {
            count(f());
        }
    }

    /// Flushes that failed: an export of what they carried failed.
    fn failures(&self) -> u64 {
        self.failed_flushes.load(Ordering::Relaxed)
    }

    fn name(&self) -> &str {
        "opentelemetry"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::metrics::data::ResourceMetrics;
    use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
    use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
    use std::time::Duration;
    use tower_cql_core::event::Event;
    use tower_cql_core::{Collectors, CqlRequest};

    /// An exporter whose every export fails (a collector that is down).
    #[derive(Debug)]
    struct Refusing;

    impl PushMetricExporter for Refusing {
        async fn export(&self, _: &ResourceMetrics) -> OTelSdkResult {
            Err(OTelSdkError::InternalFailure(
                "the collector is down".into(),
            ))
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
        fn temporality(&self) -> Temporality {
            Temporality::Cumulative
        }
    }

    /// The flush that the stack's `close()` does through the collector
    /// set, when its export fails, is a loss of what it carried: counted
    /// as the collector's failure ([`Collector::failures`], and so
    /// `Collectors::failures`). (Before, the SDK's error was thrown away:
    /// the last metrics lost, counted nowhere.)
    #[test]
    fn a_flush_whose_export_fails_is_counted() {
        let provider = SdkMeterProvider::builder()
            .with_reader(
                PeriodicReader::builder(Refusing)
                    .with_interval(Duration::from_secs(3600))
                    .build(),
            )
            .build();
        let collectors = Collectors::with([Arc::new(OtelCollector::with_provider(&provider))]);
        let req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?");
        collectors.emit(Event::Request(RequestEvent::new(
            req.meta(),
            Duration::from_millis(2),
            None,
        )));
        collectors.flush();
        assert_eq!(collectors.failures(), 1, "the failed flush");
        collectors.flush();
        assert_eq!(collectors.failures(), 2, "and the next");
        let _ = provider.shutdown();
    }
}
