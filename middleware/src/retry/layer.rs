use std::sync::Arc;

use tower_cql_core::Collectors;
use tower_layer::Layer;

use super::backoff::Backoff;
use super::budget::BudgetConfig;
use super::policy::RetryPolicy;
use super::{Retry, Shared};
use crate::config::ConfigError;
use crate::toggle::PassThrough;

/// Retry settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Total attempts, the first included (default 4: with 10% of
    /// attempts refused by an overloaded node, 0.01% of idempotent
    /// requests fail, where 3 would leave 0.1%; the retries add about 11%
    /// to the load then, within the default budget of 20%). At least 1;
    /// 1 turns retries off.
    pub max_attempts: u32,
    /// The delay before each retry.
    pub backoff: Backoff,
    /// The budget all requests' retries share.
    pub budget: BudgetConfig,
}

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            max_attempts: 4,
            backoff: Backoff::default(),
            budget: BudgetConfig::default(),
        }
    }
}

impl RetryConfig {
    /// Rejects settings that cannot work, naming the field and what is
    /// allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new(
                "retry.max_attempts",
                "must be at least 1 (the first attempt counts), got 0",
            ));
        }
        self.backoff.validate()?;
        self.budget.validate()
    }
}

/// Wraps services in [`Retry`]. Every service this layer makes shares one
/// retry budget, as do their clones.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

impl RetryLayer {
    /// A layer for `config`, emitting retry events into `collectors`.
    ///
    /// # Panics
    /// If `config` is invalid (see its `validate()`, which says why);
    /// [`StackBuilder`](crate::stack::StackBuilder) returns that as an error.
    #[track_caller]
    pub fn new(config: RetryConfig, collectors: Collectors) -> RetryLayer {
        crate::config::checked(config.validate());
        let policy = RetryPolicy::new(&config).expect("validated above");
        RetryLayer {
            shared: Arc::new(Shared { policy, collectors }),
        }
    }

    /// The policy (and through it the budget) the services share.
    pub fn policy(&self) -> &RetryPolicy {
        &self.shared.policy
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::from_shared(inner, self.shared.clone())
    }
}

impl<S> PassThrough<S> for RetryLayer {
    fn pass_through(inner: S) -> Retry<S> {
        Retry::pass_through(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn invalid_configs_are_errors_naming_the_field() {
        let cases = [
            (
                RetryConfig {
                    max_attempts: 0,
                    ..RetryConfig::default()
                },
                "retry.max_attempts",
            ),
            (
                RetryConfig {
                    backoff: Backoff {
                        base: Duration::from_secs(2),
                        max: Duration::from_secs(1),
                    },
                    ..RetryConfig::default()
                },
                "retry.backoff.max",
            ),
            (
                RetryConfig {
                    budget: BudgetConfig {
                        ratio: 0.0,
                        ..BudgetConfig::default()
                    },
                    ..RetryConfig::default()
                },
                "retry.budget.ratio",
            ),
            (
                RetryConfig {
                    budget: BudgetConfig {
                        window: Duration::ZERO,
                        ..BudgetConfig::default()
                    },
                    ..RetryConfig::default()
                },
                "retry.budget.window",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err();
            assert_eq!(err.field, field, "{err}");
            let msg = crate::config::panic_message(|| RetryLayer::new(config, Collectors::new()));
            assert!(msg.contains(field), "{msg}");
        }
        RetryLayer::new(RetryConfig::default(), Collectors::new());
        let one = RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        };
        assert!(one.validate().is_ok());
        RetryLayer::new(one, Collectors::new());
    }
}
