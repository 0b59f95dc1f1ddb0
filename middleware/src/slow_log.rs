//! The slow-query log: a collector that writes a `tracing` event for each
//! logical request slower than a threshold — sanitised statement, labels,
//! attempts, node, error — sampled and rate-limited so a slow cluster
//! cannot flood the logs.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower_cql_core::Collectors;
//! use tower_cql_middleware::slow_log::{SlowQueryLog, SlowQueryLogConfig};
//!
//! let log = SlowQueryLog::new(SlowQueryLogConfig {
//!     threshold: Duration::from_millis(100),
//!     sample: 1.0,
//!     max_per_second: 20,
//! });
//! let collectors = Collectors::with([Arc::new(log)]);
//! # let _ = collectors;
//! ```
//!
//! Each line is a `WARN` event with target `tower_cql::slow_query` and the
//! fields `duration_ms`, `operation`, `summary`, `statement` (literals
//! replaced by `?`; bound values are never logged), `attempts`,
//! `speculative`, `node`, `rows` and `error`. Lines past `max_per_second`
//! are counted ([`SlowQueryLog::suppressed`]) and the count is reported on
//! the next line that gets through.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tower_cql_core::Collector;
use tower_cql_core::event::RequestEvent;

use crate::config::ConfigError;

/// Configuration of the slow-query log.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowQueryLogConfig {
    /// Requests at least this slow are logged (default 500 ms; > 0).
    pub threshold: Duration,
    /// Fraction of slow requests logged, 0.0–1.0 (default 1.0).
    pub sample: f64,
    /// At most this many lines per second (default 10; ≥ 1).
    pub max_per_second: u32,
}

impl Default for SlowQueryLogConfig {
    fn default() -> SlowQueryLogConfig {
        SlowQueryLogConfig {
            threshold: Duration::from_millis(500),
            sample: 1.0,
            max_per_second: 10,
        }
    }
}

impl SlowQueryLogConfig {
    /// Rejects impossible values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.threshold.is_zero() {
            return Err(ConfigError::new(
                "slow_log.threshold",
                "must be greater than zero (every request would be slow)",
            ));
        }
        if !(0.0..=1.0).contains(&self.sample) || self.sample.is_nan() {
            return Err(ConfigError::new(
                "slow_log.sample",
                format!("must be within 0.0..=1.0, got {}", self.sample),
            ));
        }
        if self.max_per_second == 0 {
            return Err(ConfigError::new(
                "slow_log.max_per_second",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// The slow-query log collector; see the module docs.
pub struct SlowQueryLog {
    config: SlowQueryLogConfig,
    epoch: Instant,
    /// (second since epoch << 32) | lines written in that second
    window: AtomicU64,
    logged: AtomicU64,
    suppressed: AtomicU64,
    unreported: AtomicU64,
}

impl fmt::Debug for SlowQueryLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlowQueryLog")
            .field("config", &self.config)
            .field("logged", &self.logged())
            .field("suppressed", &self.suppressed())
            .finish()
    }
}

impl SlowQueryLog {
    /// A slow-query log.
    ///
    /// # Panics
    /// If `config` is invalid (see [`SlowQueryLogConfig::validate`], which
    /// says why).
    #[track_caller]
    pub fn new(config: SlowQueryLogConfig) -> SlowQueryLog {
        crate::config::checked(config.validate());
        SlowQueryLog {
            config,
            epoch: Instant::now(),
            window: AtomicU64::new(0),
            logged: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
        }
    }

    /// Lines written.
    pub fn logged(&self) -> u64 {
        self.logged.load(Ordering::Relaxed)
    }

    /// Slow requests not logged because of the rate limit.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }

    /// Takes a line from this second's allowance, lock-free.
    fn admit(&self) -> bool {
        self.admit_at(self.epoch.elapsed().as_secs())
    }

    /// [`admit`](Self::admit) for a line at `second` since the epoch.
    fn admit_at(&self, second: u64) -> bool {
        let limit = u64::from(self.config.max_per_second);
        self.window
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let (s, n) = (w >> 32, w & 0xFFFF_FFFF);
                // a later second opens its allowance; a reading of an
                // earlier one (a thread overtaken since it read the
                // clock) takes from the current second's
                if second > s {
                    Some((second << 32) | 1)
                } else if n < limit {
                    Some(w + 1)
                } else {
                    None
                }
            })
            .is_ok()
    }
}

impl Collector for SlowQueryLog {
    fn on_request(&self, e: &RequestEvent<'_>) {
        if e.duration < self.config.threshold {
            return;
        }
        if self.config.sample < 1.0 && fastrand::f64() >= self.config.sample {
            return;
        }
        if !self.admit() {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            self.unreported.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.logged.fetch_add(1, Ordering::Relaxed);
        let suppressed_before = self.unreported.swap(0, Ordering::Relaxed);
        let meta = e.meta;
        let node = e.node.map(|n| n.to_string());
        tracing::warn!(
            target: "tower_cql::slow_query",
            duration_ms = e.duration.as_secs_f64() * 1000.0,
            operation = meta.operation().map_or(meta.kind().as_str(), |o| o.as_str()),
            summary = %meta.query_summary(),
            statement = meta.sanitized_text().unwrap_or(""),
            attempts = e.attempts,
            speculative = e.speculative,
            node = node.as_deref().unwrap_or("unknown"),
            rows = e.rows as u64,
            error = e.error.map_or("", |err| err.kind().as_str()),
            suppressed_before,
            "slow CQL request"
        );
    }

    fn name(&self) -> &str {
        "slow_query_log"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tower_cql_core::CqlRequest;
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, Layer};
    use tracing_subscriber::prelude::*;

    type Line = Vec<(String, String)>;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<Line>>>);

    struct V<'a>(&'a mut Vec<(String, String)>);
    impl Visit for V<'_> {
        fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
            self.0.push((f.name().into(), format!("{v:?}")));
        }
        fn record_str(&mut self, f: &Field, v: &str) {
            self.0.push((f.name().into(), v.into()));
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Lines {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            if event.metadata().target() == "tower_cql::slow_query" {
                let mut fields = Vec::new();
                event.record(&mut V(&mut fields));
                self.0.lock().unwrap().push(fields);
            }
        }
    }

    fn ev<'a>(meta: &'a tower_cql_core::RequestMeta, ms: u64) -> RequestEvent<'a> {
        let mut e = RequestEvent::new(meta, Duration::from_millis(ms), None);
        e.attempts = 2;
        e.rows = 1;
        e.node = Some("127.0.0.1:9042".parse().unwrap());
        e
    }

    #[test]
    fn logs_slow_requests_sanitised_and_rate_limited() {
        let lines = Lines::default();
        tower_cql_testkit::tracing_setup::global_registry();
        let _g =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(lines.clone()));
        let log = SlowQueryLog::new(SlowQueryLogConfig {
            threshold: Duration::from_millis(100),
            sample: 1.0,
            max_per_second: 3,
        });
        let req = CqlRequest::query("SELECT v FROM ks.t WHERE name = 'alice'")
            .bind(("secret-value",))
            .operation("by_name");
        log.on_request(&ev(req.meta(), 50));
        assert_eq!(log.logged(), 0, "fast requests are not logged");
        for _ in 0..10 {
            log.on_request(&ev(req.meta(), 150));
        }
        assert_eq!(log.logged(), 3);
        assert_eq!(log.suppressed(), 7);
        let got = lines.0.lock().unwrap().clone();
        assert_eq!(got.len(), 3);
        let line: std::collections::HashMap<_, _> = got[0].iter().cloned().collect();
        assert_eq!(line["statement"], "SELECT v FROM ks.t WHERE name = ?");
        assert_eq!(line["operation"], "by_name");
        assert_eq!(line["attempts"], "2");
        assert_eq!(line["node"], "127.0.0.1:9042");
        for (_, v) in got.iter().flatten() {
            assert!(!v.contains("alice") && !v.contains("secret-value"), "{v}");
        }
    }

    /// A line admitted by a thread that read the clock in the second
    /// before (and was overtaken by one that read it in this second)
    /// counts against this second's allowance: it does not move the
    /// window back, which handed the second a fresh allowance when the
    /// next line came.
    #[test]
    fn a_late_reading_of_the_clock_does_not_reopen_the_allowance() {
        let log = SlowQueryLog::new(SlowQueryLogConfig {
            max_per_second: 3,
            ..Default::default()
        });
        let mut admitted = 0;
        // second 7: its allowance; a thread that read second 6; second 7 again
        for second in [7, 7, 7, 6, 7, 7, 7] {
            admitted += u32::from(log.admit_at(second));
        }
        assert_eq!(admitted, 3, "lines admitted in second 7");
        // the next second has its own allowance
        assert!(log.admit_at(8));
    }

    #[test]
    fn config_is_validated() {
        let bad = |c: SlowQueryLogConfig| {
            let field = c.validate().unwrap_err().field;
            let msg = crate::config::panic_message(|| SlowQueryLog::new(c));
            assert!(msg.contains(field), "{msg}");
            field
        };
        assert_eq!(
            bad(SlowQueryLogConfig {
                threshold: Duration::ZERO,
                ..Default::default()
            }),
            "slow_log.threshold"
        );
        assert_eq!(
            bad(SlowQueryLogConfig {
                sample: 1.5,
                ..Default::default()
            }),
            "slow_log.sample"
        );
        assert_eq!(
            bad(SlowQueryLogConfig {
                max_per_second: 0,
                ..Default::default()
            }),
            "slow_log.max_per_second"
        );
    }
}
