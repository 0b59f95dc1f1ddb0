//! Configuration errors: [`ConfigError`], the one setup error of tower-cql
//! (defined in `tower-cql-core`, which the driver service's builder shares).
//! Every layer's configuration has a `validate()`; the stack builder and
//! [`StackConfig`](crate::stack_config::StackConfig) call them when the
//! stack is built.
//!
//! ```
//! use tower_cql_middleware::config::ConfigError;
//! use tower_cql_middleware::retry::RetryConfig;
//!
//! let err = RetryConfig { max_attempts: 0, ..Default::default() }.validate().unwrap_err();
//! assert_eq!(err.field, "retry.max_attempts");
//! # let _: ConfigError = err;
//! ```

use std::time::Duration;

pub use tower_cql_core::ConfigError;

/// The longest duration a configuration may give a wait or a timer: a
/// hundred years. A configured duration is added to the clock's instants
/// when it is used, and a longer one cannot be on every platform
/// (`Duration::MAX` cannot on any): it would panic on the request path.
/// A setting that means "no limit" has its own value for it (`None`).
pub(crate) const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Refuses `d`, the value of `field`, when it is longer than [`LONGEST`];
/// `instead` says what to use for a wait without a limit.
pub(crate) fn not_too_long(
    field: &'static str,
    d: Duration,
    instead: &str,
) -> Result<(), ConfigError> {
    if d > LONGEST {
        return Err(ConfigError::new(
            field,
            format!(
                "must be at most 100 years ({LONGEST:?}), too long to add to the clock's instants; {instead}; got {d:?}"
            ),
        ));
    }
    Ok(())
}

/// Refuses `d`, the value of `field`, an optional limit on a wait or a
/// call (`None`: no limit), when it is zero (use `None` instead, which
/// `none` names) or longer than [`LONGEST`].
pub(crate) fn optional_limit(
    field: &'static str,
    d: Option<Duration>,
    none: &str,
) -> Result<(), ConfigError> {
    match d {
        Some(d) if d.is_zero() => Err(ConfigError::new(
            field,
            format!("must be greater than zero, or None for {none}; got 0"),
        )),
        Some(d) => not_too_long(field, d, &format!("use None for {none}")),
        None => Ok(()),
    }
}

/// The configuration, or a panic with its error (the layer constructors:
/// infallible, like tower's; the stack builder validates every
/// configuration first and returns the error instead).
#[track_caller]
pub(crate) fn checked(result: Result<(), ConfigError>) {
    if let Err(e) = result {
        panic!(
            "{e} (check a configuration with its validate() first, or build with StackBuilder, which returns this as an error)"
        );
    }
}

/// The message of the panic `f` raises (tests of the constructors' panics).
#[cfg(test)]
pub(crate) fn panic_message<T>(f: impl FnOnce() -> T) -> String {
    let err = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(_) => panic!("expected a panic"),
        Err(e) => e,
    };
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_panics_with_the_error_and_what_to_do() {
        let msg = panic_message(|| checked(Err(ConfigError::new("x.y", "must be 1"))));
        assert!(
            msg.contains("invalid configuration `x.y`: must be 1"),
            "{msg}"
        );
        assert!(msg.contains("validate()"), "{msg}");
        checked(Ok(()));
    }

    /// Every duration the layers add to the clock's instants on the
    /// request path (a per-attempt timeout, a retry's backoff, a hedge's
    /// delay) is held to [`LONGEST`] when the stack is built, naming its
    /// field: `Duration::MAX`, a common way to write "as long as it
    /// takes", panicked every request (`now + d` overflows) instead.
    #[test]
    fn a_duration_too_long_for_the_clock_is_refused_naming_its_field() {
        use crate::hedge::{HedgeConfig, HedgeDelay};
        use crate::retry::{Backoff, RetryConfig};
        use crate::timeout::TimeoutConfig;
        let max = Duration::MAX;
        let cases: [(&str, Result<(), ConfigError>); 5] = [
            (
                "timeout.per_attempt",
                TimeoutConfig {
                    per_attempt: Some(max),
                    ..TimeoutConfig::default()
                }
                .validate(),
            ),
            (
                "retry.backoff.max",
                RetryConfig {
                    backoff: Backoff { base: max, max },
                    ..RetryConfig::default()
                }
                .validate(),
            ),
            (
                "hedge.delay",
                HedgeConfig {
                    delay: HedgeDelay::Fixed(max),
                    ..HedgeConfig::default()
                }
                .validate(),
            ),
            (
                "hedge.delay.max",
                HedgeConfig {
                    delay: HedgeDelay::Percentile {
                        percentile: 0.9,
                        min: Duration::from_millis(1),
                        max,
                    },
                    ..HedgeConfig::default()
                }
                .validate(),
            ),
            (
                "hedge.delay.min",
                HedgeConfig {
                    delay: HedgeDelay::Percentile {
                        percentile: 0.9,
                        min: max,
                        max,
                    },
                    ..HedgeConfig::default()
                }
                .validate(),
            ),
        ];
        for (field, result) in cases {
            let err = result.expect_err(field);
            assert!(
                err.field == field
                    || (field == "hedge.delay.min" && err.field == "hedge.delay.max"),
                "{field}: {err}"
            );
            assert!(err.message.contains("100 years"), "{field}: {err}");
        }
        // the longest accepted is accepted
        let longest = TimeoutConfig {
            per_attempt: Some(LONGEST),
            ..TimeoutConfig::default()
        };
        assert!(longest.validate().is_ok());
    }
}
