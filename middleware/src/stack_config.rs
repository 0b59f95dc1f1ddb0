//! The stack's configuration as data (serde): read it from TOML, a file or
//! any serde format, then turn it into a validated [`StackBuilder`].
//!
//! ```
//! use tower_cql_core::Collectors;
//! use tower_cql_middleware::stack_config::StackConfig;
//!
//! let config = StackConfig::from_toml(r#"
//!     [retry]
//!     max_attempts = 4
//!     backoff_base_ms = 5
//!
//!     [rate_limit]
//!     enabled = true
//!     rate_per_second = 500.0
//!     burst = 50
//!     mode = "reject"
//!
//!     [timeout]
//!     per_attempt_ms = 250
//! "#).unwrap();
//! let builder = config.into_builder(Collectors::new()).unwrap();
//! assert!(builder.layers().unwrap().rate_limit.is_some());
//!
//! // Impossible values are refused with the field named.
//! let err = StackConfig::from_toml("[rate_limit]\nenabled = true\nrate_per_second = 0.0")
//!     .unwrap()
//!     .into_builder(Collectors::new())
//!     .unwrap_err();
//! assert!(err.to_string().contains("rate_per_second"), "{err}");
//! ```
//!
//! Durations are integers in milliseconds (`*_ms`). Every section may be
//! left out; `enabled` defaults to the builder's default for that layer
//! (tracing, metrics, retry, timeout on; the rest off). Every value in the
//! file is checked, in a section that is on or off (switching a section
//! off hides no bad value), and a key the other keys of its section (or
//! load shedding, under which no limit lets a request wait) leave without
//! effect is refused, not dropped:
//!
//! ```
//! # use tower_cql_core::Collectors;
//! # use tower_cql_middleware::stack_config::StackConfig;
//! let err = StackConfig::from_toml("[retry]\nenabled = false\nmax_attempts = 0")
//!     .unwrap()
//!     .into_builder(Collectors::new())
//!     .unwrap_err();
//! assert_eq!(err.field, "retry.max_attempts");
//! let err = StackConfig::from_toml("[rate_limit]\nmode = \"reject\"\nmax_wait_ms = 100")
//!     .unwrap()
//!     .into_builder(Collectors::new())
//!     .unwrap_err();
//! assert_eq!(err.field, "rate_limit.max_wait_ms"); // nothing waits in mode "reject"
//! ```

use serde::Deserialize;
use tower_cql_core::Collectors;

use crate::breaker::BreakerConfig;
use crate::concurrency::{AdaptiveConfig, ConcurrencyConfig};
use crate::config::ConfigError;
use crate::hedge::HedgeConfig;
use crate::metrics::MetricsConfig;
use crate::rate_limit::RateLimitConfig;
use crate::retry::RetryConfig;
use crate::stack::StackBuilder;
use crate::timeout::TimeoutConfig;
use crate::trace::TraceConfig;

mod sections;

pub use self::sections::{
    AdaptiveSection, BreakerSection, ConcurrencySection, HedgeSection, LoadShedSection,
    MetricsSection, RateLimitSection, RetrySection, ServerTraceSection, TimeoutSection,
    TraceSection,
};

/// The whole stack's configuration; see the module docs.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StackConfig {
    /// `[trace]`
    #[serde(default)]
    pub trace: TraceSection,
    /// `[metrics]`
    #[serde(default)]
    pub metrics: MetricsSection,
    /// `[load_shed]`
    #[serde(default)]
    pub load_shed: LoadShedSection,
    /// `[breaker]`
    #[serde(default)]
    pub breaker: BreakerSection,
    /// `[rate_limit]`
    #[serde(default)]
    pub rate_limit: RateLimitSection,
    /// `[concurrency]`
    #[serde(default)]
    pub concurrency: ConcurrencySection,
    /// `[adaptive]`
    #[serde(default)]
    pub adaptive: AdaptiveSection,
    /// `[retry]`
    #[serde(default)]
    pub retry: RetrySection,
    /// `[hedge]`
    #[serde(default)]
    pub hedge: HedgeSection,
    /// `[timeout]`
    #[serde(default)]
    pub timeout: TimeoutSection,
    /// `[server_trace]`
    #[serde(default)]
    pub server_trace: ServerTraceSection,
}

impl StackConfig {
    /// Parses TOML; unknown keys are errors (a typo must not pass silently).
    pub fn from_toml(text: &str) -> Result<StackConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::new("stack", format!("invalid TOML: {e}")))
    }

    /// A builder with these settings; every value is validated here, in a
    /// section that is on or off: a section switched off (or left off) is
    /// not made, but a bad value in it is refused all the same, so that
    /// switching a section off hides no mistake and switching it on meets
    /// none. A key that cannot have an effect with the other keys of its
    /// section (`max_wait_ms` with `mode = "reject"`, `queue_timeout_ms`
    /// with `max_queue = 0`, `delay_ms` with a percentile's keys, a
    /// backoff with `max_attempts = 1`), or with
    /// load shedding on (a limit's `max_wait_ms`, `max_queue` or
    /// `queue_timeout_ms`: nothing waits there, a request that would is
    /// shed), is refused too, not dropped.
    pub fn into_builder(self, collectors: Collectors) -> Result<StackBuilder, ConfigError> {
        let mut b = StackBuilder::new(collectors);
        // each section: its configuration made and judged by that
        // configuration's own `validate()` whether or not it is on, then
        // given to the builder when it is on
        let s = &self.trace;
        let on = s.enabled != Some(false);
        let trace = judged("trace", on, s.config(), TraceConfig::validate)?;
        b = if on {
            b.trace(trace)
        } else {
            b.without_trace()
        };

        let s = &self.metrics;
        let on = s.enabled != Some(false);
        let metrics = judged("metrics", on, Ok(s.config()), MetricsConfig::validate)?;
        b = if on {
            b.metrics(metrics)
        } else {
            b.without_metrics()
        };

        // (no configuration of its own: its rule is over the limits'
        // keys, whose sections are judged below)
        self.load_shed
            .refuse_waits(&self.rate_limit, &self.concurrency, &self.adaptive)?;
        let shed = self.load_shed.enabled == Some(true);
        b = b.load_shed(shed);

        let s = &self.breaker;
        let on = s.enabled == Some(true);
        let breaker = judged("breaker", on, Ok(s.config()), BreakerConfig::validate)?;
        if on {
            b = b.breaker(breaker);
        }

        let s = &self.rate_limit;
        let on = s.enabled == Some(true);
        let rate_limit = judged("rate_limit", on, s.config(), RateLimitConfig::validate)?;
        if on {
            b = b.rate_limit(rate_limit);
        }

        let s = &self.concurrency;
        let on = s.enabled == Some(true);
        let concurrency = judged(
            "concurrency",
            on,
            s.config(shed),
            ConcurrencyConfig::validate,
        )?;
        if on {
            b = b.concurrency(concurrency);
        }

        let s = &self.adaptive;
        let on = s.enabled == Some(true);
        let adaptive = judged("adaptive", on, s.config(shed), AdaptiveConfig::validate)?;
        if on {
            b = b.adaptive(adaptive);
        }

        let s = &self.retry;
        let on = s.enabled != Some(false);
        let retry = judged("retry", on, s.config(), RetryConfig::validate)?;
        b = if on {
            b.retry(retry)
        } else {
            b.without_retry()
        };

        let s = &self.hedge;
        let on = s.enabled == Some(true);
        let hedge = judged("hedge", on, s.config(), HedgeConfig::validate)?;
        if on {
            b = b.hedge(hedge);
        }

        let s = &self.timeout;
        let on = s.enabled != Some(false);
        let timeout = judged("timeout", on, Ok(s.config()), TimeoutConfig::validate)?;
        b = if on {
            b.timeout(timeout)
        } else {
            b.without_timeout()
        };

        // (no `enabled`: on when it asks for traces; judged when present)
        if self.server_trace != ServerTraceSection::default() {
            b = b.server_trace(self.server_trace.config());
        }
        // the rules across layers, and server tracing's own; the layers
        // are made when the stack is built (server tracing needs the
        // session then)
        b.validate()?;
        Ok(b)
    }
}

/// A section's configuration, made from its keys (`made`) and judged by
/// its own `validate`, whether or not the section is on (`on`); the error
/// of a section that is off says so.
fn judged<C>(
    section: &str,
    on: bool,
    made: Result<C, ConfigError>,
    validate: fn(&C) -> Result<(), ConfigError>,
) -> Result<C, ConfigError> {
    made.and_then(|c| validate(&c).map(|()| c))
        .map_err(|e| noted(section, on, e))
}

/// `e`, an error in `section`, saying so when the section is off (`on`
/// false).
fn noted(section: &str, on: bool, mut e: ConfigError) -> ConfigError {
    if !on {
        e.message.push_str(&format!(
            " ([{section}] is off, but every value in the file is checked, so that switching it on meets no bad one: fix the value or remove the key)"
        ));
    }
    e
}

#[cfg(test)]
mod server_trace_tests {
    use super::*;

    #[test]
    fn server_trace_settings_are_read_and_judged() {
        let b = StackConfig::from_toml(
            "[server_trace]\nsample_ratio = 0.01\nslow_threshold_ms = 250\ntrace_next = 3\nmax_fetches_per_second = 5\nread_timeout_ms = 7000",
        )
        .unwrap()
        .into_builder(Collectors::new())
        .unwrap();
        let dbg = format!("{b:?}");
        assert!(dbg.contains("sample_ratio: 0.01"), "{dbg}");
        assert!(dbg.contains("read_timeout: 7s"), "{dbg}");
        assert!(dbg.contains("trace_next: 3"), "{dbg}");
        // on, but no session to read traces through: building the layers says so
        let err = b.layers().unwrap_err();
        assert_eq!(err.field, "server_trace");
        assert!(err.message.contains("build_on"), "{err}");

        for (toml, field) in [
            ("sample_ratio = 2.0", "server_trace.sample_ratio"),
            ("slow_threshold_ms = 100", "server_trace.trace_next"),
            ("trace_next = 4", "server_trace.trace_next"),
            (
                "sample_ratio = 0.1\nmax_fetches_per_second = 0",
                "server_trace.max_fetches_per_second",
            ),
            (
                "sample_ratio = 0.1\nread_timeout_ms = 0",
                "server_trace.read_timeout",
            ),
        ] {
            let err = StackConfig::from_toml(&format!("[server_trace]\n{toml}"))
                .unwrap()
                .into_builder(Collectors::new())
                .unwrap_err();
            assert_eq!(err.field, field, "{toml}: {err}");
        }
        // absent: off, and no tracer
        let b = StackConfig::from_toml("")
            .unwrap()
            .into_builder(Collectors::new())
            .unwrap();
        let layers = b.layers().unwrap();
        assert!(layers.metrics.unwrap().server_tracer().is_none());
    }

    /// The metrics layer runs server tracing: with metrics off, a stack
    /// asking for server traces is refused when built, not silently
    /// untraced.
    #[test]
    fn server_tracing_without_metrics_is_refused() {
        let err = StackConfig::from_toml("[server_trace]\nsample_ratio = 0.5")
            .unwrap()
            .into_builder(Collectors::new())
            .unwrap()
            .without_metrics()
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "stack.server_trace", "{err}");
        assert!(err.to_string().contains("metrics"), "{err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(toml: &str) -> Result<StackBuilder, ConfigError> {
        StackConfig::from_toml(toml)?.into_builder(Collectors::new())
    }

    /// "Every value is validated here": a value in a section that is off
    /// (switched off, or off by default and not switched on) is judged as
    /// it would be were the section on, so that switching a section off
    /// does not hide a bad value, and switching it on cannot meet one.
    /// The error names the key and says the section is off.
    #[test]
    fn every_value_is_checked_whether_or_not_its_section_is_on() {
        for (toml, field) in [
            (
                "[rate_limit]\nrate_per_second = 0.0",
                "rate_limit.rate_per_second",
            ),
            (
                "[rate_limit]\nenabled = false\nburst = 0",
                "rate_limit.burst",
            ),
            ("[rate_limit]\nmode = \"sometimes\"", "rate_limit.mode"),
            ("[hedge]\nmax_speculative = 9", "hedge.max_speculative"),
            ("[hedge]\nenabled = false\ndelay_ms = 0", "hedge.delay"),
            ("[hedge]\nbudget_ratio = 0.0", "hedge.budget.ratio"),
            ("[hedge]\npercentile = 0.1", "hedge.delay.percentile"),
            (
                "[retry]\nenabled = false\nmax_attempts = 0",
                "retry.max_attempts",
            ),
            (
                "[timeout]\nenabled = false\nper_attempt_ms = 0",
                "timeout.per_attempt",
            ),
            ("[trace]\nenabled = false\nlevel = \"warn\"", "trace.level"),
            (
                "[metrics]\nenabled = false\nmax_label_sets = 0",
                "metrics.max_label_sets",
            ),
            ("[breaker]\nfailure_rate = 2.0", "breaker.failure_rate"),
            (
                "[concurrency]\nmax_in_flight = 0",
                "concurrency.max_in_flight",
            ),
            ("[adaptive]\nenabled = false\nmin = 0", "adaptive.min"),
        ] {
            let err = match judged(toml) {
                Ok(b) => panic!("{toml:?}: accepted: {b:?}"),
                Err(e) => e,
            };
            assert!(err.field.starts_with(field), "{toml:?}: {err}");
            assert!(err.message.contains("is off"), "{toml:?}: {err}");
        }
        // the same values in a section that is on: the same error, without
        // the note
        let err = judged("[rate_limit]\nenabled = true\nrate_per_second = 0.0").unwrap_err();
        assert_eq!(err.field, "rate_limit.rate_per_second");
        assert!(!err.message.contains("is off"), "{err}");
        // good values in a section that is off: accepted, the layer absent
        let layers = judged(
            "[rate_limit]\nrate_per_second = 10.0\n[retry]\nenabled = false\nmax_attempts = 3\n[hedge]\nmax_speculative = 2\n[timeout]\nenabled = false\nper_attempt_ms = 100",
        )
        .unwrap()
        .layers()
        .unwrap();
        assert!(layers.rate_limit.is_none() && layers.retry.is_none());
        assert!(layers.hedge.is_none() && layers.timeout.is_none());
    }
}
