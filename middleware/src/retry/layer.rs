use std::sync::Arc;

use tower_cql_core::Collectors;
use tower_layer::Layer;

use super::policy::RetryPolicy;
use super::{Retry, RetryConfig, Shared};
use crate::toggle::PassThrough;

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
    use crate::retry::{Backoff, BudgetConfig};
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
