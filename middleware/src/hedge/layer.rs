use std::sync::Arc;
use std::time::Duration;

use tower_cql_core::Collectors;
use tower_layer::Layer;

use super::{Budget, Hedge, HedgeConfig, Shared};
use crate::retry::{RetryBudget, RetryLayer};
use crate::toggle::PassThrough;

/// Wraps services in [`Hedge`]. Every service this layer makes shares one
/// latency history (for [`HedgeDelay::Percentile`](super::HedgeDelay::Percentile)) and one budget, as do
/// their clones.
#[derive(Debug, Clone)]
pub struct HedgeLayer {
    pub(super) shared: Arc<Shared>,
}

impl HedgeLayer {
    /// A layer for `config`, with a budget of its own (`config.budget`, or
    /// [`BudgetConfig::default`](crate::retry::BudgetConfig::default)) into which it deposits one per request it
    /// may hedge. When it refuses a speculative attempt, the layer emits a
    /// [`ThrottleEvent`](tower_cql_core::event::ThrottleEvent) (limiter
    /// `"hedge_budget"`, rejected) into `collectors`; the speculative
    /// attempts themselves are reported by the driver service's attempt
    /// events (reason `speculative`) and counted in
    /// [`ExecutionInfo::speculative`](tower_cql_core::ExecutionInfo::speculative).
    /// # Panics
    /// If `config` is invalid (see its `validate()`, which says why);
    /// [`StackBuilder`](crate::stack::StackBuilder) returns that as an error.
    #[track_caller]
    pub fn new(config: HedgeConfig, collectors: Collectors) -> HedgeLayer {
        crate::config::checked(config.validate());
        let budget = RetryBudget::new(&config.budget.unwrap_or_default())
            .expect("validated with the hedge configuration");
        HedgeLayer {
            shared: Arc::new(Shared::new(
                &config,
                collectors,
                Budget::Own(Arc::new(budget)),
            )),
        }
    }

    /// A layer for services that `retry`'s services wrap (the stack's
    /// order: retry outside hedge). Unless `config.budget` gives it one of
    /// its own, its speculative attempts draw on `retry`'s budget, which the
    /// retry layer deposits into once per request: retries and speculative
    /// attempts together then add at most the budget's ratio to the load.
    /// Otherwise as [`HedgeLayer::new`].
    ///
    /// # Panics
    /// If `config` is invalid (see [`HedgeConfig::validate`]).
    #[track_caller]
    pub fn inside(config: HedgeConfig, collectors: Collectors, retry: &RetryLayer) -> HedgeLayer {
        if config.budget.is_some() {
            return HedgeLayer::new(config, collectors);
        }
        crate::config::checked(config.validate());
        let budget = Budget::Shared(retry.policy().budget().clone());
        HedgeLayer {
            shared: Arc::new(Shared::new(&config, collectors, budget)),
        }
    }

    /// The delay a request arriving now would hedge after.
    pub fn current_delay(&self) -> Duration {
        self.shared.delay()
    }

    /// The budget speculative attempts are charged to: the retry layer's
    /// for a layer made [`inside`](HedgeLayer::inside) one, else its own.
    pub fn budget(&self) -> &Arc<RetryBudget> {
        self.shared.budget.get()
    }
}

impl<S> Layer<S> for HedgeLayer {
    type Service = Hedge<S>;

    fn layer(&self, inner: S) -> Hedge<S> {
        Hedge::from_shared(inner, self.shared.clone())
    }
}

impl<S> PassThrough<S> for HedgeLayer {
    fn pass_through(inner: S) -> Hedge<S> {
        Hedge::pass_through(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hedge::HedgeDelay;
    use crate::retry::BudgetConfig;

    #[test]
    fn invalid_configs_are_errors_naming_the_field() {
        let ms = Duration::from_millis;
        let pct = |percentile, min, max| HedgeConfig {
            delay: HedgeDelay::Percentile {
                percentile,
                min,
                max,
            },
            max_speculative: 1,
            ..HedgeConfig::default()
        };
        let cases = [
            (
                HedgeConfig {
                    max_speculative: 0,
                    ..HedgeConfig::default()
                },
                "hedge.max_speculative",
            ),
            (
                HedgeConfig {
                    max_speculative: 5,
                    ..HedgeConfig::default()
                },
                "hedge.max_speculative",
            ),
            (
                HedgeConfig {
                    delay: HedgeDelay::Fixed(Duration::ZERO),
                    max_speculative: 1,
                    ..HedgeConfig::default()
                },
                "hedge.delay",
            ),
            (pct(0.4, ms(1), ms(10)), "hedge.delay.percentile"),
            (pct(1.0, ms(1), ms(10)), "hedge.delay.percentile"),
            (pct(f64::NAN, ms(1), ms(10)), "hedge.delay.percentile"),
            (pct(0.9, ms(0), ms(0)), "hedge.delay.max"),
            (pct(0.9, ms(20), ms(10)), "hedge.delay.min"),
            (
                HedgeConfig {
                    budget: Some(BudgetConfig {
                        ratio: 0.0,
                        ..BudgetConfig::default()
                    }),
                    ..HedgeConfig::default()
                },
                "hedge.budget.ratio",
            ),
            (
                HedgeConfig {
                    budget: Some(BudgetConfig {
                        window: Duration::ZERO,
                        ..BudgetConfig::default()
                    }),
                    ..HedgeConfig::default()
                },
                "hedge.budget.window",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err();
            assert_eq!(err.field, field, "{err}");
            let msg = crate::config::panic_message(|| HedgeLayer::new(config, Collectors::new()));
            assert!(msg.contains(field), "{msg}");
        }
        for ok in [
            HedgeConfig::default(),
            pct(0.5, ms(0), ms(1)),
            pct(0.999, ms(5), ms(5)),
            HedgeConfig {
                delay: HedgeDelay::Fixed(ms(3)),
                max_speculative: 4,
                ..HedgeConfig::default()
            },
        ] {
            assert!(ok.validate().is_ok(), "{ok:?}");
            HedgeLayer::new(ok, Collectors::new());
        }
        let err = HedgeConfig {
            max_speculative: 9,
            ..HedgeConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.message.contains("between 1 and 4"), "{err}");
    }

    #[test]
    fn inside_a_retry_layer_the_budget_is_the_retry_layers_unless_configured() {
        use crate::retry::RetryConfig;
        use crate::stack_config::StackConfig;
        let retry = RetryLayer::new(RetryConfig::default(), Collectors::new());
        let shared = HedgeLayer::inside(HedgeConfig::default(), Collectors::new(), &retry);
        assert!(Arc::ptr_eq(shared.budget(), retry.policy().budget()));
        let own = HedgeConfig {
            budget: Some(BudgetConfig::default()),
            ..HedgeConfig::default()
        };
        let own = HedgeLayer::inside(own, Collectors::new(), &retry);
        assert!(!Arc::ptr_eq(own.budget(), retry.policy().budget()));
        // and from TOML: shared by default, its own with a `budget_*` key
        for (toml, shares) in [
            ("[hedge]\nenabled = true", true),
            ("[hedge]\nenabled = true\nbudget_ratio = 0.05", false),
            ("[hedge]\nenabled = true\nbudget_window_ms = 5000", false),
        ] {
            let layers = StackConfig::from_toml(toml)
                .unwrap()
                .into_builder(Collectors::new())
                .unwrap()
                .layers()
                .unwrap();
            let (retry, hedge) = (layers.retry.unwrap(), layers.hedge.unwrap());
            assert_eq!(
                Arc::ptr_eq(hedge.budget(), retry.policy().budget()),
                shares,
                "{toml}"
            );
        }
        let err = StackConfig::from_toml("[hedge]\nenabled = true\nbudget_ratio = 0.0")
            .unwrap()
            .into_builder(Collectors::new())
            .unwrap_err();
        assert_eq!(err.field, "hedge.budget.ratio", "{err}");
    }
}
