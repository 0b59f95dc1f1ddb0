//! The sections of a [`StackConfig`](super::StackConfig), one struct per
//! `[section]` of the file, and the configuration each section's keys
//! make (judged by that configuration's own `validate()` in
//! [`StackConfig::into_builder`](super::StackConfig::into_builder)), with
//! the rules between keys of one section that no configuration can see
//! (a key the others leave without effect).

use std::time::Duration;

use serde::Deserialize;
use tracing::Level;

use crate::breaker::BreakerConfig;
use crate::concurrency::{AdaptiveAlgorithm, AdaptiveConfig, ConcurrencyConfig};
use crate::config::ConfigError;
use crate::hedge::{HedgeConfig, HedgeDelay};
use crate::metrics::MetricsConfig;
use crate::rate_limit::{RateLimitConfig, RateLimitMode};
use crate::retry::{BudgetConfig, RetryConfig};
use crate::timeout::TimeoutConfig;
use crate::trace::TraceConfig;
use tower_cql_core::server_trace::ServerTraceConfig;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// `[trace]`
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TraceSection {
    /// On unless `false`.
    pub enabled: Option<bool>,
    /// Record the sanitised statement text (default true).
    pub record_query_text: Option<bool>,
    /// `"info"` (default) or `"debug"`.
    pub level: Option<String>,
    /// The attempt spans' level: `"debug"` (default) or `"info"`.
    pub attempt_level: Option<String>,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// On unless `false`.
    pub enabled: Option<bool>,
    /// Distinct label sets before folding into `other`.
    pub max_label_sets: Option<usize>,
}

/// `[load_shed]`
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoadShedSection {
    /// Off unless `true`. On, no request waits for a limit (one that
    /// would is shed), so the limits' keys that bound a wait
    /// (`max_wait_ms`, `max_queue`, `queue_timeout_ms`) are refused.
    pub enabled: Option<bool>,
}

/// `[breaker]`
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BreakerSection {
    /// Off unless `true`.
    pub enabled: Option<bool>,
    /// Failure rate that opens it.
    pub failure_rate: Option<f64>,
    /// Requests in the window before it may open.
    pub min_requests: Option<u32>,
    /// The rolling window.
    pub window_ms: Option<u64>,
    /// Time open before a probe.
    pub cool_down_ms: Option<u64>,
    /// Probes allowed half-open.
    pub half_open_probes: Option<u32>,
}

/// `[rate_limit]`
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Off unless `true`.
    pub enabled: Option<bool>,
    /// Sustained rate.
    pub rate_per_second: Option<f64>,
    /// Burst size.
    pub burst: Option<u32>,
    /// `"wait"` (default) or `"reject"`.
    pub mode: Option<String>,
    /// Longest wait in wait mode (refused with `mode = "reject"`, and
    /// above 0 with load shedding on: nothing waits there).
    pub max_wait_ms: Option<u64>,
}

/// `[concurrency]`
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencySection {
    /// Off unless `true`.
    pub enabled: Option<bool>,
    /// Requests in flight.
    pub max_in_flight: Option<usize>,
    /// Requests waiting (0: none, a request is refused when the limit is
    /// full; refused above 0 with load shedding on, where nothing waits).
    pub max_queue: Option<usize>,
    /// Longest wait in the queue (0: no limit; at most 100 years; refused
    /// with `max_queue = 0` or with load shedding on, where nothing waits).
    pub queue_timeout_ms: Option<u64>,
}

/// `[adaptive]`
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveSection {
    /// Off unless `true`.
    pub enabled: Option<bool>,
    /// Starting limit.
    pub initial: Option<usize>,
    /// Floor.
    pub min: Option<usize>,
    /// Ceiling.
    pub max: Option<usize>,
    /// Additive increase.
    pub increase_by: Option<usize>,
    /// Multiplicative decrease.
    pub decrease_factor: Option<f64>,
    /// Latency that counts as overload.
    pub latency_threshold_ms: Option<u64>,
    /// Requests waiting (refused above 0 with load shedding on, where
    /// nothing waits).
    pub max_queue: Option<usize>,
    /// Longest wait in the queue (0: no limit; at most 100 years; refused
    /// with `max_queue = 0` or with load shedding on, where nothing waits).
    pub queue_timeout_ms: Option<u64>,
}

/// `[retry]`
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// On unless `false`.
    pub enabled: Option<bool>,
    /// Total attempts.
    pub max_attempts: Option<u32>,
    /// Backoff base (refused with `max_attempts = 1`: nothing is retried).
    pub backoff_base_ms: Option<u64>,
    /// Backoff cap (refused with `max_attempts = 1`).
    pub backoff_max_ms: Option<u64>,
    /// Retries per request allowed by the budget.
    pub budget_ratio: Option<f64>,
    /// Retries per second always allowed.
    pub budget_min_per_second: Option<u32>,
    /// The budget's window.
    pub budget_window_ms: Option<u64>,
}

/// `[hedge]`
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HedgeSection {
    /// Off unless `true`.
    pub enabled: Option<bool>,
    /// A fixed delay before the speculative attempt (not with
    /// `percentile`, `min_delay_ms` or `max_delay_ms`, which only a
    /// percentile delay has).
    pub delay_ms: Option<u64>,
    /// Or a latency percentile (0.5–0.999; default 0.95, which is the
    /// delay without `delay_ms`) ...
    pub percentile: Option<f64>,
    /// ... clamped to at least this (default 1) ...
    pub min_delay_ms: Option<u64>,
    /// ... and at most this, the delay until latencies are known (default
    /// 100). Both clamps apply to the default percentile too.
    pub max_delay_ms: Option<u64>,
    /// Speculative attempts per request.
    pub max_speculative: Option<u32>,
    /// A budget of its own for speculative attempts: extra attempts per
    /// request. Without any `budget_*` key, speculative attempts are
    /// charged to the retry budget (or to a default budget of the hedge's
    /// own when retries are off).
    pub budget_ratio: Option<f64>,
    /// Its own budget's speculative attempts always allowed per second.
    pub budget_min_per_second: Option<u32>,
    /// Its own budget's window.
    pub budget_window_ms: Option<u64>,
}

/// `[timeout]`
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSection {
    /// On unless `false`.
    pub enabled: Option<bool>,
    /// Per-attempt timeout (none when absent).
    pub per_attempt_ms: Option<u64>,
    /// Fail at the request deadline (default true).
    pub honour_deadline: Option<bool>,
}

/// `[server_trace]`: server-side tracing of sampled requests (off unless
/// `sample_ratio` > 0 or `slow_threshold_ms` is set; see
/// [`server_trace`](crate::server_trace)).
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerTraceSection {
    /// The fraction of requests traced, 0 to 1.
    pub sample_ratio: Option<f64>,
    /// A request slower than this arms its operation ...
    pub slow_threshold_ms: Option<u64>,
    /// ... for this many traced requests.
    pub trace_next: Option<u32>,
    /// Traces fetched per second at most (the rest are skipped).
    pub max_fetches_per_second: Option<u32>,
    /// Traces waiting to be fetched.
    pub queue_capacity: Option<usize>,
    /// Reads of a trace's session row until it is finished.
    pub fetch_attempts: Option<u32>,
    /// Wait before the second read, doubled after.
    pub fetch_backoff_ms: Option<u64>,
    /// Fetches reading at once.
    pub max_concurrent_fetches: Option<usize>,
    /// The most events of one trace read and kept.
    pub max_events_per_trace: Option<usize>,
    /// How long one read of `system_traces` may take.
    pub read_timeout_ms: Option<u64>,
    /// How long close waits for pending fetches.
    pub close_timeout_ms: Option<u64>,
}

impl TraceSection {
    pub(super) fn config(&self) -> Result<TraceConfig, ConfigError> {
        let level = |field: &'static str, value: Option<&str>, default: Level| match value {
            None => Ok(default),
            Some("info") | Some("INFO") => Ok(Level::INFO),
            Some("debug") | Some("DEBUG") => Ok(Level::DEBUG),
            Some(other) => Err(ConfigError::new(
                field,
                format!("must be \"info\" or \"debug\", got {other:?}"),
            )),
        };
        Ok(TraceConfig {
            record_query_text: self.record_query_text.unwrap_or(true),
            level: level("trace.level", self.level.as_deref(), Level::INFO)?,
            attempt_level: level(
                "trace.attempt_level",
                self.attempt_level.as_deref(),
                Level::DEBUG,
            )?,
        })
    }
}

impl MetricsSection {
    pub(super) fn config(&self) -> MetricsConfig {
        let d = MetricsConfig::default();
        MetricsConfig {
            max_label_sets: self.max_label_sets.unwrap_or(d.max_label_sets),
        }
    }
}

impl LoadShedSection {
    /// The rule load shedding makes for the limits' sections, kept here
    /// only: with load shedding on, no request waits for capacity (a
    /// request the limits cannot admit at once is shed, see
    /// [`StackBuilder::load_shed`](crate::stack::StackBuilder::load_shed)),
    /// so a key that bounds a wait (`rate_limit.max_wait_ms`,
    /// `concurrency.max_queue`, `concurrency.queue_timeout_ms`,
    /// `adaptive.max_queue`, `adaptive.queue_timeout_ms`) cannot take
    /// effect and is refused, in a
    /// limit's section that is on or off. A zero `max_wait_ms` or
    /// `max_queue` says that nothing waits, which holds: accepted.
    pub(super) fn refuse_waits(
        &self,
        rate_limit: &RateLimitSection,
        concurrency: &ConcurrencySection,
        adaptive: &AdaptiveSection,
    ) -> Result<(), ConfigError> {
        if self.enabled != Some(true) {
            return Ok(());
        }
        let waits = [
            (
                "rate_limit",
                rate_limit.enabled,
                "rate_limit.max_wait_ms",
                rate_limit.max_wait_ms.is_some_and(|v| v > 0),
                "is the longest a request waits for a token",
            ),
            (
                "concurrency",
                concurrency.enabled,
                "concurrency.max_queue",
                concurrency.max_queue.is_some_and(|v| v > 0),
                "is how many requests may wait for a slot",
            ),
            (
                "concurrency",
                concurrency.enabled,
                "concurrency.queue_timeout_ms",
                concurrency.queue_timeout_ms.is_some(),
                "is the longest a request waits in the queue",
            ),
            (
                "adaptive",
                adaptive.enabled,
                "adaptive.max_queue",
                adaptive.max_queue.is_some_and(|v| v > 0),
                "is how many requests may wait for a slot",
            ),
            (
                "adaptive",
                adaptive.enabled,
                "adaptive.queue_timeout_ms",
                adaptive.queue_timeout_ms.is_some(),
                "is the longest a request waits in the queue",
            ),
        ];
        let Some((section, enabled, field, _, what)) = waits.into_iter().find(|w| w.3) else {
            return Ok(());
        };
        let key = &field[section.len() + 1..];
        Err(super::noted(
            section,
            enabled == Some(true),
            ConfigError::new(
                field,
                format!(
                    "{what}, but load shedding is on ([load_shed] enabled = true), where no request waits: a request the limit cannot admit at once is refused (Shed). To shed, remove {key}; to let requests wait, switch load shedding off"
                ),
            ),
        ))
    }
}

impl BreakerSection {
    pub(super) fn config(&self) -> BreakerConfig {
        let d = BreakerConfig::default();
        BreakerConfig {
            failure_rate: self.failure_rate.unwrap_or(d.failure_rate),
            min_requests: self.min_requests.unwrap_or(d.min_requests),
            window: self.window_ms.map_or(d.window, ms),
            cool_down: self.cool_down_ms.map_or(d.cool_down, ms),
            half_open_probes: self.half_open_probes.unwrap_or(d.half_open_probes),
        }
    }
}

impl RateLimitSection {
    pub(super) fn config(&self) -> Result<RateLimitConfig, ConfigError> {
        let d = RateLimitConfig::default();
        let default_wait = match d.mode {
            RateLimitMode::Wait { max_wait } => max_wait,
            RateLimitMode::Reject => Duration::from_millis(500),
        };
        let mode = match self.mode.as_deref() {
            None | Some("wait") => RateLimitMode::Wait {
                max_wait: self.max_wait_ms.map_or(default_wait, ms),
            },
            Some("reject") if self.max_wait_ms.is_some() => {
                return Err(ConfigError::new(
                    "rate_limit.max_wait_ms",
                    "is the longest a request waits for a token in mode = \"wait\", but mode = \"reject\" is set, where no request waits: remove max_wait_ms, or use mode = \"wait\"",
                ));
            }
            Some("reject") => RateLimitMode::Reject,
            Some(other) => {
                return Err(ConfigError::new(
                    "rate_limit.mode",
                    format!("must be \"wait\" or \"reject\", got {other:?}"),
                ));
            }
        };
        Ok(RateLimitConfig {
            rate_per_second: self.rate_per_second.unwrap_or(d.rate_per_second),
            burst: self.burst.unwrap_or(d.burst),
            mode,
        })
    }
}

/// A concurrency limit's queue, fixed or adaptive, as its section gives
/// it (`field`: its `queue_timeout_ms` key): `max_queue` and the queue
/// timeout, each the default where not given, a timeout of 0 meaning no
/// limit; with no queue (`max_queue = 0`, the default under load
/// shedding, `shed`), no queue timeout. A queue timeout with
/// `max_queue = 0` is refused: no request waits there.
fn queue(
    field: &'static str,
    max_queue: Option<usize>,
    queue_timeout_ms: Option<u64>,
    (default_queue, default_timeout): (usize, Option<Duration>),
    shed: bool,
) -> Result<(usize, Option<Duration>), ConfigError> {
    // (under load shedding nothing waits: no queue unless one is given,
    // which the stack then refuses, naming it)
    let max_queue = max_queue.unwrap_or(if shed { 0 } else { default_queue });
    if max_queue == 0 && queue_timeout_ms.is_some() {
        return Err(ConfigError::new(
            field,
            "is the longest a request waits in the queue, but max_queue = 0 is set, where no request waits (it is refused when the limit is full): remove queue_timeout_ms, or give max_queue the requests that may wait",
        ));
    }
    let timeout = match queue_timeout_ms {
        Some(0) => None,
        Some(v) => Some(ms(v)),
        None if max_queue == 0 => None,
        None => default_timeout,
    };
    Ok((max_queue, timeout))
}

impl ConcurrencySection {
    /// The configuration; `shed`: with load shedding on (no queue unless
    /// one is given).
    pub(super) fn config(&self, shed: bool) -> Result<ConcurrencyConfig, ConfigError> {
        let d = ConcurrencyConfig::default();
        let (max_queue, queue_timeout) = queue(
            "concurrency.queue_timeout_ms",
            self.max_queue,
            self.queue_timeout_ms,
            (d.max_queue, d.queue_timeout),
            shed,
        )?;
        Ok(ConcurrencyConfig {
            max_in_flight: self.max_in_flight.unwrap_or(d.max_in_flight),
            max_queue,
            queue_timeout,
        })
    }
}

impl AdaptiveSection {
    /// The configuration; `shed`: with load shedding on (no queue unless
    /// one is given).
    pub(super) fn config(&self, shed: bool) -> Result<AdaptiveConfig, ConfigError> {
        let d = AdaptiveConfig::default();
        let (max_queue, queue_timeout) = queue(
            "adaptive.queue_timeout_ms",
            self.max_queue,
            self.queue_timeout_ms,
            (d.max_queue, d.queue_timeout),
            shed,
        )?;
        let AdaptiveAlgorithm::Aimd {
            increase_by,
            decrease_factor,
            latency_threshold,
        } = d.algorithm;
        Ok(AdaptiveConfig {
            initial: self.initial.unwrap_or(d.initial),
            min: self.min.unwrap_or(d.min),
            max: self.max.unwrap_or(d.max),
            algorithm: AdaptiveAlgorithm::Aimd {
                increase_by: self.increase_by.unwrap_or(increase_by),
                decrease_factor: self.decrease_factor.unwrap_or(decrease_factor),
                latency_threshold: self.latency_threshold_ms.map_or(latency_threshold, ms),
            },
            max_queue,
            queue_timeout,
        })
    }
}

impl RetrySection {
    pub(super) fn config(&self) -> Result<RetryConfig, ConfigError> {
        let mut r = RetryConfig::default();
        if let Some(v) = self.max_attempts {
            r.max_attempts = v;
        }
        // a backoff is the wait before a retry: with one attempt there is
        // none, and a backoff key given would be dropped
        if r.max_attempts == 1
            && let Some((field, key)) = [
                ("retry.backoff_base_ms", self.backoff_base_ms.is_some()),
                ("retry.backoff_max_ms", self.backoff_max_ms.is_some()),
            ]
            .into_iter()
            .find_map(|(field, set)| set.then(|| (field, &field["retry.".len()..])))
        {
            return Err(ConfigError::new(
                field,
                format!(
                    "is a wait before a retry, but max_attempts = 1 is set, where no request is retried: remove {key}, or give max_attempts the attempts a request may make (e.g. 3)"
                ),
            ));
        }
        if let Some(v) = self.backoff_base_ms {
            r.backoff.base = ms(v);
        }
        if let Some(v) = self.backoff_max_ms {
            r.backoff.max = ms(v);
        }
        if let Some(v) = self.budget_ratio {
            r.budget.ratio = v;
        }
        if let Some(v) = self.budget_min_per_second {
            r.budget.min_per_second = v;
        }
        if let Some(v) = self.budget_window_ms {
            r.budget.window = ms(v);
        }
        Ok(r)
    }
}

impl HedgeSection {
    pub(super) fn config(&self) -> Result<HedgeConfig, ConfigError> {
        let s = self;
        let mut h = HedgeConfig::default();
        if let Some(v) = s.max_speculative {
            h.max_speculative = v;
        }
        // a fixed delay has no percentile and no clamp: a key only a
        // percentile uses, given with it, would be dropped
        if s.delay_ms.is_some()
            && let Some(key) = [
                ("hedge.percentile", s.percentile.is_some()),
                ("hedge.min_delay_ms", s.min_delay_ms.is_some()),
                ("hedge.max_delay_ms", s.max_delay_ms.is_some()),
            ]
            .into_iter()
            .find_map(|(key, set)| set.then_some(key))
        {
            return Err(ConfigError::new(
                "hedge.delay_ms",
                format!(
                    "set either hedge.delay_ms (a fixed delay) or {key} (of a delay at a latency percentile), not both: a fixed delay has no percentile and is not clamped"
                ),
            ));
        }
        h.delay = match (s.delay_ms, s.percentile) {
            (Some(d), _) => HedgeDelay::Fixed(ms(d)),
            // a percentile, the default one unless given: each key
            // given replaces its default
            (None, p) => {
                let HedgeDelay::Percentile {
                    percentile,
                    min,
                    max,
                } = HedgeDelay::default()
                else {
                    unreachable!("the default hedge delay is a percentile")
                };
                HedgeDelay::Percentile {
                    percentile: p.unwrap_or(percentile),
                    min: s.min_delay_ms.map_or(min, ms),
                    max: s.max_delay_ms.map_or(max, ms),
                }
            }
        };
        if s.budget_ratio.is_some()
            || s.budget_min_per_second.is_some()
            || s.budget_window_ms.is_some()
        {
            let mut budget = BudgetConfig::default();
            if let Some(v) = s.budget_ratio {
                budget.ratio = v;
            }
            if let Some(v) = s.budget_min_per_second {
                budget.min_per_second = v;
            }
            if let Some(v) = s.budget_window_ms {
                budget.window = ms(v);
            }
            h.budget = Some(budget);
        }
        Ok(h)
    }
}

impl TimeoutSection {
    pub(super) fn config(&self) -> TimeoutConfig {
        TimeoutConfig {
            per_attempt: self.per_attempt_ms.map(ms),
            honour_deadline: self.honour_deadline.unwrap_or(true),
        }
    }
}

impl ServerTraceSection {
    pub(super) fn config(&self) -> ServerTraceConfig {
        let s = self;
        let d = ServerTraceConfig::default();
        ServerTraceConfig {
            sample_ratio: s.sample_ratio.unwrap_or(d.sample_ratio),
            slow_threshold: s.slow_threshold_ms.map(ms),
            trace_next: s.trace_next.unwrap_or(d.trace_next),
            max_fetches_per_second: s.max_fetches_per_second.unwrap_or(d.max_fetches_per_second),
            queue_capacity: s.queue_capacity.unwrap_or(d.queue_capacity),
            fetch_attempts: s.fetch_attempts.unwrap_or(d.fetch_attempts),
            fetch_backoff: s.fetch_backoff_ms.map_or(d.fetch_backoff, ms),
            max_concurrent_fetches: s.max_concurrent_fetches.unwrap_or(d.max_concurrent_fetches),
            max_events_per_trace: s.max_events_per_trace.unwrap_or(d.max_events_per_trace),
            read_timeout: s.read_timeout_ms.map_or(d.read_timeout, ms),
            close_timeout: s.close_timeout_ms.map_or(d.close_timeout, ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::StackBuilder;
    use crate::stack_config::StackConfig;
    use tower_cql_core::Collectors;

    fn judged(toml: &str) -> Result<StackBuilder, ConfigError> {
        StackConfig::from_toml(toml)?.into_builder(Collectors::new())
    }

    /// The builder `toml` gives, and its hedge delay as configured.
    fn hedge_delay(toml: &str) -> Result<String, ConfigError> {
        let b = StackConfig::from_toml(toml)?.into_builder(Collectors::new())?;
        let dbg = format!("{b:?}");
        let at = dbg.find("delay: ").expect("the hedge is on");
        Ok(dbg[at..]
            .split(", max_speculative")
            .next()
            .unwrap()
            .to_string())
    }

    /// `min_delay_ms` and `max_delay_ms` clamp the percentile delay, the
    /// default percentile's too (without `percentile`): each key given
    /// replaces its default, the others stay.
    #[test]
    fn the_delay_clamps_apply_to_the_default_percentile() {
        for (keys, want) in [
            (
                "max_delay_ms = 20",
                "delay: Percentile { percentile: 0.95, min: 1ms, max: 20ms }",
            ),
            (
                "min_delay_ms = 5",
                "delay: Percentile { percentile: 0.95, min: 5ms, max: 100ms }",
            ),
            (
                "min_delay_ms = 5\nmax_delay_ms = 50",
                "delay: Percentile { percentile: 0.95, min: 5ms, max: 50ms }",
            ),
            (
                "percentile = 0.9\nmax_delay_ms = 20",
                "delay: Percentile { percentile: 0.9, min: 1ms, max: 20ms }",
            ),
            (
                "percentile = 0.9",
                "delay: Percentile { percentile: 0.9, min: 1ms, max: 100ms }",
            ),
            (
                "",
                "delay: Percentile { percentile: 0.95, min: 1ms, max: 100ms }",
            ),
        ] {
            let toml = format!("[hedge]\nenabled = true\n{keys}");
            assert_eq!(hedge_delay(&toml).unwrap(), want, "{keys}");
        }
        // until latencies are known the delay is the clamp's top
        let layers = StackConfig::from_toml("[hedge]\nenabled = true\nmax_delay_ms = 20")
            .unwrap()
            .into_builder(Collectors::new())
            .unwrap()
            .layers()
            .unwrap();
        assert_eq!(
            layers.hedge.unwrap().current_delay(),
            Duration::from_millis(20)
        );
    }

    /// A fixed `delay_ms` is not a percentile: given with a key only a
    /// percentile uses (`percentile`, `min_delay_ms`, `max_delay_ms`) it
    /// is refused, the error naming both keys, not the other key dropped.
    #[test]
    fn a_fixed_delay_with_a_percentile_key_is_refused_naming_both() {
        for other in ["max_delay_ms = 10", "min_delay_ms = 5", "percentile = 0.9"] {
            let key = other.split(' ').next().unwrap();
            let toml = format!("[hedge]\nenabled = true\ndelay_ms = 50\n{other}");
            let err = match hedge_delay(&toml) {
                Ok(delay) => panic!("{other}: accepted, {delay}"),
                Err(e) => e,
            };
            let msg = err.to_string();
            assert_eq!(err.field, "hedge.delay_ms", "{msg}");
            assert!(msg.contains(&format!("hedge.{key}")), "{other}: {msg}");
            assert!(msg.contains("not both"), "{other}: {msg}");
        }
        // alone, each is fine
        assert_eq!(
            hedge_delay("[hedge]\nenabled = true\ndelay_ms = 50").unwrap(),
            "delay: Fixed(50ms)"
        );
    }

    /// The adaptive limit's queue timeout is a key of its section, as the
    /// fixed limit's is (`0`: no limit); it was missing, so a TOML
    /// configuration always had the default 1 s.
    #[test]
    fn the_adaptive_limits_queue_timeout_is_configurable() {
        let adaptive = |toml: &str| -> Result<String, ConfigError> {
            let b = judged(toml)?;
            let dbg = format!("{b:?}");
            let at = dbg
                .find("AdaptiveConfig")
                .expect("the adaptive limit is on");
            let at = at + dbg[at..].find("queue_timeout: ").unwrap();
            Ok(dbg[at..]
                .split([',', '}'])
                .next()
                .unwrap()
                .trim()
                .to_string())
        };
        let on = "[adaptive]\nenabled = true\n";
        assert_eq!(
            adaptive(&format!("{on}queue_timeout_ms = 250")).unwrap(),
            "queue_timeout: Some(250ms)"
        );
        assert_eq!(
            adaptive(&format!("{on}queue_timeout_ms = 0")).unwrap(),
            "queue_timeout: None"
        );
        assert_eq!(adaptive(on).unwrap(), "queue_timeout: Some(1s)");
    }

    /// A key that cannot have an effect with the other keys of its
    /// section is refused, the error saying why and what to do, not
    /// dropped: `max_wait_ms` (the longest wait) with `mode = "reject"`
    /// (nothing waits), `queue_timeout_ms` with `max_queue = 0` (nothing
    /// queues); in a section that is on or off.
    #[test]
    fn a_key_that_cannot_take_effect_is_refused() {
        for enabled in ["enabled = true\n", "enabled = false\n", ""] {
            let err = judged(&format!(
                "[rate_limit]\n{enabled}mode = \"reject\"\nmax_wait_ms = 100"
            ))
            .unwrap_err();
            assert_eq!(err.field, "rate_limit.max_wait_ms", "{err}");
            assert!(err.message.contains("mode = \"reject\""), "{err}");
            let err = judged(&format!(
                "[concurrency]\n{enabled}max_queue = 0\nqueue_timeout_ms = 100"
            ))
            .unwrap_err();
            assert_eq!(err.field, "concurrency.queue_timeout_ms", "{err}");
            assert!(err.message.contains("max_queue = 0"), "{err}");
            let err = judged(&format!(
                "[adaptive]\n{enabled}max_queue = 0\nqueue_timeout_ms = 100"
            ))
            .unwrap_err();
            assert_eq!(err.field, "adaptive.queue_timeout_ms", "{err}");
            assert!(err.message.contains("max_queue = 0"), "{err}");
        }
        // each alone, or with the other mode / a queue, is fine
        for ok in [
            "[rate_limit]\nenabled = true\nmode = \"reject\"",
            "[rate_limit]\nenabled = true\nmode = \"wait\"\nmax_wait_ms = 100",
            "[rate_limit]\nenabled = true\nmax_wait_ms = 100",
            "[concurrency]\nenabled = true\nmax_queue = 0",
            "[concurrency]\nenabled = true\nmax_queue = 10\nqueue_timeout_ms = 100",
        ] {
            judged(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    /// A backoff is the wait before a retry: with `max_attempts = 1`
    /// nothing is retried, so `backoff_base_ms` or `backoff_max_ms` can
    /// have no effect and is refused, naming the key and saying what to
    /// do, as the other keys that cannot take effect are; in a section
    /// that is on or off.
    #[test]
    fn a_backoff_with_a_single_attempt_is_refused() {
        for enabled in ["enabled = true\n", "enabled = false\n", ""] {
            for key in ["backoff_base_ms", "backoff_max_ms"] {
                let toml = format!("[retry]\n{enabled}max_attempts = 1\n{key} = 50");
                let err = match judged(&toml) {
                    Ok(b) => panic!("{toml:?}: accepted: {b:?}"),
                    Err(e) => e,
                };
                assert_eq!(err.field, format!("retry.{key}"), "{toml:?}: {err}");
                assert!(err.message.contains("max_attempts = 1"), "{err}");
                assert!(err.message.contains(&format!("remove {key}")), "{err}");
            }
        }
        // a backoff with retries, or a single attempt alone, is fine
        for ok in [
            "[retry]\nmax_attempts = 3\nbackoff_base_ms = 50\nbackoff_max_ms = 500",
            "[retry]\nmax_attempts = 1",
            "[retry]\nbackoff_base_ms = 50",
        ] {
            judged(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    /// Under load shedding no request waits for capacity: a request the
    /// limits cannot admit at once is shed (`middleware/tests/limits.rs`
    /// shows it through the built stack), so a key that bounds a wait
    /// (`rate_limit.max_wait_ms`, `concurrency.max_queue`,
    /// `concurrency.queue_timeout_ms`, `adaptive.max_queue`,
    /// `adaptive.queue_timeout_ms`) cannot take
    /// effect: it is refused, the error saying why and what to do, in a
    /// limit's section that is on or off. A zero `max_wait_ms` or
    /// `max_queue` says that nothing waits, which holds: accepted.
    #[test]
    fn a_wait_key_under_load_shedding_is_refused() {
        for (section, key, value) in [
            ("rate_limit", "max_wait_ms", "100"),
            ("concurrency", "max_queue", "10"),
            ("concurrency", "queue_timeout_ms", "100"),
            ("concurrency", "queue_timeout_ms", "0"),
            ("adaptive", "max_queue", "10"),
            ("adaptive", "queue_timeout_ms", "100"),
        ] {
            for enabled in ["enabled = true\n", "enabled = false\n", ""] {
                let toml =
                    format!("[load_shed]\nenabled = true\n[{section}]\n{enabled}{key} = {value}");
                let err = match judged(&toml) {
                    Ok(b) => panic!("{toml:?}: accepted: {b:?}"),
                    Err(e) => e,
                };
                assert_eq!(err.field, format!("{section}.{key}"), "{toml:?}: {err}");
                assert!(err.message.contains("load shedding"), "{err}");
                assert!(err.message.contains(&format!("remove {key}")), "{err}");
                let on = enabled == "enabled = true\n";
                assert_eq!(err.message.contains("is off"), !on, "{err}");
            }
        }
        // without load shedding, or with the zeros that say nothing
        // waits, fine
        for ok in [
            "[load_shed]\nenabled = false\n[concurrency]\nenabled = true\nmax_queue = 10\nqueue_timeout_ms = 100",
            "[rate_limit]\nenabled = true\nmax_wait_ms = 100",
            // (with a concurrency limit to shed for: a rate limit that
            // never lets a request wait leaves the shedder nothing)
            "[load_shed]\nenabled = true\n[rate_limit]\nenabled = true\nmax_wait_ms = 0\n[concurrency]\nenabled = true",
            "[load_shed]\nenabled = true\n[rate_limit]\nenabled = true\nmode = \"reject\"\n[concurrency]\nenabled = true",
            "[load_shed]\nenabled = true\n[concurrency]\nenabled = true\nmax_queue = 0",
            "[load_shed]\nenabled = true\n[adaptive]\nenabled = true\nmax_queue = 0",
            // no queue key: under load shedding the default is no queue
            // (the built stack refuses one, see StackBuilder::load_shed)
            "[load_shed]\nenabled = true\n[concurrency]\nenabled = true\nmax_in_flight = 8",
            "[load_shed]\nenabled = true\n[adaptive]\nenabled = true",
        ] {
            judged(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        // ... alone, it is refused (see StackBuilder::validate)
        for alone in [
            "[load_shed]\nenabled = true\n[rate_limit]\nenabled = true\nmax_wait_ms = 0",
            "[load_shed]\nenabled = true\n[rate_limit]\nenabled = true\nmode = \"reject\"",
        ] {
            let err = judged(alone).expect_err(alone);
            assert_eq!(err.field, "stack.load_shed", "{alone:?}: {err}");
        }
    }
}
