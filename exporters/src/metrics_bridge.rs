//! A collector that forwards to the [`metrics`] facade, so whatever
//! recorder the application installed (Prometheus, statsd, Datadog, ...)
//! receives what the stack observes.
//!
//! ```
//! use std::sync::Arc;
//! use tower_cql_core::{Collector, Collectors};
//! use tower_cql_exporters::metrics_bridge::MetricsBridge;
//!
//! // metrics_exporter_prometheus::PrometheusBuilder::new().install()?; (or any recorder)
//! let collectors = Collectors::with([Arc::new(MetricsBridge::new())]);
//! # let _ = collectors;
//! ```
//!
//! # Metrics
//! | name | kind | labels |
//! |---|---|---|
//! | `db_client_operation_duration_seconds` | histogram, seconds, one per logical request | `db_operation_name`, `db_namespace`, `db_collection_name`, `outcome`, `error_type` |
//! | `db_client_attempt_duration_seconds` | histogram, seconds, one per attempt | the same and `attempt_reason` |
//! | `db_client_retries_total` | counter | `error_type` (the cause) |
//! | `db_client_throttled_total` | counter | `limiter`, `rejected` |
//! | `db_client_shed_total` | counter | `reason` |
//! | `db_client_breaker_transitions_total` | counter | `to` |
//! | `db_client_concurrency_limit` | gauge | `limiter` |
//! | `db_client_pages_total`, `db_client_page_rows_total` | counters (see [`instruments`]) | |
//! | `db_client_streams_total` | counter | `end` |
//! | `db_client_returned_rows_total` | counter | |
//!
//! Labels are the bounded ones of [`SeriesLabels`]; never statement text.
//! Handles are registered once per label set (a lock-free [`Registry`]),
//! so recording is a map lookup and an atomic update, with no allocation.

use std::fmt;

use metrics::{Counter, Histogram, Label};
use tower_cql_core::event::{
    AttemptEvent, BreakerEvent, LatestLimit, LimitEvent, PageEvent, RequestEvent, RetryEvent,
    ShedEvent, StreamEvent, ThrottleEvent,
};
use tower_cql_core::memory::{KeptSeries, SeriesKey, SeriesView};
use tower_cql_core::registry::Registry;
use tower_cql_core::{Collector, CqlError, SeriesLabels};

use crate::instruments;

/// Request latency histogram name.
pub const OPERATION_DURATION: &str = "db_client_operation_duration_seconds";
/// Attempt latency histogram name.
pub const ATTEMPT_DURATION: &str = "db_client_attempt_duration_seconds";

fn labels(l: &SeriesLabels) -> Vec<Label> {
    let mut v = vec![
        Label::new(
            "db_operation_name",
            l.operation
                .as_ref()
                .map_or(l.kind.as_str().to_string(), |o| o.to_string()),
        ),
        Label::new(
            "db_namespace",
            l.keyspace.as_ref().map_or(String::new(), |k| k.to_string()),
        ),
        Label::new(
            "db_collection_name",
            l.table.as_ref().map_or(String::new(), |t| t.to_string()),
        ),
        Label::from_static_parts("outcome", if l.error.is_none() { "ok" } else { "error" }),
        Label::from_static_parts("error_type", l.error.map_or("", |e| e.as_str())),
    ];
    if let Some(r) = l.reason {
        v.push(Label::from_static_parts("attempt_reason", r.as_str()));
    }
    v
}

/// Histogram handles per label set, registered on first use.
struct Handles {
    name: &'static str,
    map: Registry<SeriesKey, Histogram>,
}

impl Handles {
    fn new(name: &'static str) -> Handles {
        Handles {
            name,
            map: Registry::new(),
        }
    }

    /// Records `value` in the histogram of `view`'s series, registered on
    /// first use; found through the view, in a snapshot: no label cloned,
    /// no string hashed, no reference count touched.
    fn record(&self, view: SeriesView<'_>, value: f64) {
        if let Some(h) = self.map.snapshot().get(&view) {
            return h.record(value);
        }
        self.histogram(view).record(value);
    }

    /// The histogram of `view`'s series, registered on first use.
    fn histogram(&self, view: SeriesView<'_>) -> metrics::Histogram {
        let name = self.name;
        let key = view.to_key();
        self.map.get_or_insert_with(key.clone(), || {
            metrics::histogram!(name, labels(key.labels()))
        })
    }
}

/// The `metrics` facade bridge; see the module docs.
pub struct MetricsBridge {
    requests: Handles,
    attempts: Handles,
    rows: Counter,
    pages: Counter,
    page_rows: Counter,
    // the limit in force by the limit events seen (they can arrive out of
    // the order of the changes)
    latest_limit: LatestLimit,
    // this bridge's id for the histograms it keeps in statements
    // (memory::KeptSeries)
    id: std::num::NonZeroU64,
}

impl fmt::Debug for MetricsBridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsBridge")
            .field("request_series", &self.requests.map.len())
            .field("attempt_series", &self.attempts.map.len())
            .finish()
    }
}

impl Default for MetricsBridge {
    fn default() -> MetricsBridge {
        MetricsBridge::new()
    }
}

impl MetricsBridge {
    /// A bridge to the recorder installed now (install the recorder first:
    /// handles are registered against it).
    pub fn new() -> MetricsBridge {
        metrics::describe_histogram!(
            OPERATION_DURATION,
            metrics::Unit::Seconds,
            "Duration of logical CQL requests, end to end across retries, queueing and hedging"
        );
        metrics::describe_histogram!(
            ATTEMPT_DURATION,
            metrics::Unit::Seconds,
            "Duration of each CQL request attempt"
        );
        metrics::describe_counter!(
            "db_client_retries_total",
            "Retries scheduled, by the error that caused them"
        );
        metrics::describe_counter!(
            "db_client_throttled_total",
            "Requests that waited for or were refused by a limiter, and extra attempts refused by the retry budget (limiter retry_budget, hedge_budget)"
        );
        metrics::describe_counter!(
            "db_client_shed_total",
            "Requests refused without being tried"
        );
        metrics::describe_counter!(
            "db_client_breaker_transitions_total",
            "Circuit breaker state changes"
        );
        metrics::describe_gauge!(
            "db_client_concurrency_limit",
            "The current adaptive concurrency limit"
        );
        metrics::describe_counter!("db_client_returned_rows_total", "Rows returned by requests");
        for c in instruments::ALL {
            metrics::describe_counter!(c.prometheus, c.description);
        }
        MetricsBridge {
            requests: Handles::new(OPERATION_DURATION),
            attempts: Handles::new(ATTEMPT_DURATION),
            rows: metrics::counter!("db_client_returned_rows_total"),
            pages: metrics::counter!(instruments::PAGES.prometheus),
            page_rows: metrics::counter!(instruments::PAGE_ROWS.prometheus),
            latest_limit: LatestLimit::new(),
            id: tower_cql_core::Statement::new_collector_id(),
        }
    }
}

impl Collector for MetricsBridge {
    fn on_request(&self, e: &RequestEvent<'_>) {
        let seconds = e.duration.as_secs_f64();
        match KeptSeries::for_request(self.id, e, |view| Some(self.requests.histogram(view))) {
            Some(h) => h.record(seconds),
            None => self.requests.record(
                SeriesView::new(e.meta, e.error.map(CqlError::kind), None),
                seconds,
            ),
        }
        self.rows.increment(e.rows as u64);
    }

    fn on_attempt(&self, e: &AttemptEvent<'_>) {
        let seconds = e.duration.as_secs_f64();
        match KeptSeries::for_attempt(self.id, e, |view| Some(self.attempts.histogram(view))) {
            Some(h) => h.record(seconds),
            None => self.attempts.record(
                SeriesView::new(e.meta, e.error.map(CqlError::kind), Some(e.reason)),
                seconds,
            ),
        }
    }

    fn on_retry(&self, e: &RetryEvent<'_>) {
        metrics::counter!("db_client_retries_total", "error_type" => tower_cql_core::classify::error_type(e.cause))
            .increment(1);
    }

    fn on_throttle(&self, e: &ThrottleEvent<'_>) {
        metrics::counter!(
            "db_client_throttled_total",
            "limiter" => e.limiter,
            "rejected" => if e.rejected { "true" } else { "false" }
        )
        .increment(1);
    }

    fn on_shed(&self, e: &ShedEvent<'_>) {
        metrics::counter!("db_client_shed_total", "reason" => e.reason.as_str()).increment(1);
    }

    fn on_breaker(&self, e: &BreakerEvent<'_>) {
        metrics::counter!("db_client_breaker_transitions_total", "to" => e.to.as_str())
            .increment(1);
    }

    fn on_limit(&self, e: &LimitEvent) {
        let gauge = metrics::gauge!("db_client_concurrency_limit", "limiter" => e.limiter);
        self.latest_limit.show(e, |limit| gauge.set(limit as f64));
    }

    fn on_page(&self, e: &PageEvent<'_>) {
        self.pages.increment(1);
        self.page_rows.increment(e.rows as u64);
    }

    fn on_stream(&self, e: &StreamEvent<'_>) {
        metrics::counter!(instruments::STREAMS.prometheus, instruments::STREAM_END => e.end.as_str())
            .increment(1);
    }

    fn name(&self) -> &str {
        "metrics_bridge"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::MetricKind;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use std::sync::Arc;
    use std::time::Duration;
    use tower_cql_core::event::Event;
    use tower_cql_core::{Collectors, CqlRequest, ErrorKind};

    #[test]
    fn forwards_to_the_installed_recorder() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let bridge = Arc::new(MetricsBridge::new());
            let c = Collectors::with([bridge]);
            // labels given on the request (found by lookup) and on the
            // statement (kept in it): one series
            let req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").operation("get");
            let named = tower_cql_core::Statement::new("SELECT v FROM ks.t WHERE k = ?")
                .operation("get")
                .request();
            let err = CqlError::new(ErrorKind::Overloaded, "busy");
            for (ms, error, req) in [
                (2, None, &req),
                (4, None, &named),
                (5, None, &named),
                (9, Some(&err), &req),
            ] {
                c.emit(Event::Request({
                    let mut e = RequestEvent::new(req.meta(), Duration::from_millis(ms), error);
                    e.rows = 1;
                    e
                }));
            }
            c.emit(Event::Retry(RetryEvent::new(
                req.meta(),
                1,
                Duration::from_millis(1),
                &err,
            )));
        });
        let snap = snapshotter.snapshot().into_vec();
        let find = |name: &str, want: &[(&str, &str)]| {
            snap.iter()
                .filter(|(k, _, _, _)| k.key().name() == name)
                .filter(|(k, _, _, _)| {
                    want.iter()
                        .all(|(l, v)| k.key().labels().any(|x| x.key() == *l && x.value() == *v))
                })
                .map(|(k, unit, _, v)| (k.kind(), *unit, v))
                .collect::<Vec<_>>()
        };
        let ok = find(
            OPERATION_DURATION,
            &[
                ("db_operation_name", "get"),
                ("outcome", "ok"),
                ("db_namespace", "ks"),
                ("db_collection_name", "t"),
            ],
        );
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].0, MetricKind::Histogram);
        assert_eq!(ok[0].1, Some(metrics::Unit::Seconds));
        match ok[0].2 {
            DebugValue::Histogram(v) => {
                let secs: Vec<f64> = v.iter().map(|x| x.into_inner()).collect();
                assert_eq!(secs, vec![0.002, 0.004, 0.005]);
            }
            other => panic!("{other:?}"),
        }
        let failed = find(
            OPERATION_DURATION,
            &[("outcome", "error"), ("error_type", "overloaded")],
        );
        assert_eq!(failed.len(), 1);
        let retries = find("db_client_retries_total", &[("error_type", "overloaded")]);
        assert!(
            matches!(retries[0].2, DebugValue::Counter(1)),
            "{retries:?}"
        );
        let rows = find("db_client_returned_rows_total", &[]);
        assert!(matches!(rows[0].2, DebugValue::Counter(4)), "{rows:?}");
        // no statement text anywhere
        for (k, _, _, _) in &snap {
            for l in k.key().labels() {
                assert!(!l.value().contains("SELECT v FROM"), "{l:?}");
            }
        }
    }
}
