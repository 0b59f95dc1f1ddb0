use std::sync::Arc;
use std::time::Duration;

use tower_cql_core::Collectors;
use tower_layer::Layer;

use super::{Budget, Hedge, MAX_SPECULATIVE, Shared};
use crate::config::ConfigError;
use crate::retry::{BudgetConfig, RetryBudget, RetryLayer};
use crate::toggle::PassThrough;

/// When to start a speculative attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeDelay {
    /// After this long without an answer (greater than zero).
    Fixed(Duration),
    /// After the `percentile` of recent first-attempt latencies (those of
    /// the attempts a hedge cancels included, as censored observations),
    /// clamped into `[min, max]`; `max` until at least 100 attempts have
    /// been seen. See [`Hedge`] for how it is estimated and how "recent"
    /// is kept.
    Percentile {
        /// Which percentile, in `0.5..=0.999` (e.g. 0.95: hedge the slowest
        /// 5 %).
        percentile: f64,
        /// The shortest delay, however fast recent attempts were.
        min: Duration,
        /// The longest delay, and the delay while there is too little
        /// data (greater than zero, at least `min`).
        max: Duration,
    },
}

impl Default for HedgeDelay {
    /// The 95th percentile, within 1 ms ..= 100 ms.
    fn default() -> HedgeDelay {
        HedgeDelay::Percentile {
            percentile: 0.95,
            min: Duration::from_millis(1),
            max: Duration::from_millis(100),
        }
    }
}

/// Hedging settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HedgeConfig {
    /// When to start each speculative attempt (default: the 95th
    /// percentile of recent latencies, within 1 ms ..= 100 ms).
    pub delay: HedgeDelay,
    /// The most speculative attempts per request, in `1..=4` (default 1).
    /// Each starts `delay` after the previous one.
    pub max_speculative: u32,
    /// The budget speculative attempts are charged to (see [`Hedge`],
    /// "Budget"). `None` (the default): the retry layer's budget when the
    /// layer is made [inside](HedgeLayer::inside) one, as the stack builder
    /// does when retries are on, so that retries and speculative attempts
    /// share one bound; else a budget of its own with
    /// [`BudgetConfig::default`]. `Some`: a budget of its own with these
    /// settings, wherever the layer is.
    pub budget: Option<BudgetConfig>,
}

impl Default for HedgeConfig {
    fn default() -> HedgeConfig {
        HedgeConfig {
            delay: HedgeDelay::default(),
            max_speculative: 1,
            budget: None,
        }
    }
}

impl HedgeConfig {
    /// Rejects settings that cannot work, naming the field and what is
    /// allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_SPECULATIVE).contains(&self.max_speculative) {
            return Err(ConfigError::new(
                "hedge.max_speculative",
                format!(
                    "must be between 1 and {MAX_SPECULATIVE} (speculative attempts per request), got {}",
                    self.max_speculative
                ),
            ));
        }
        if let Some(budget) = &self.budget {
            budget.validate_for_hedge()?;
        }
        match self.delay {
            HedgeDelay::Fixed(d) if d.is_zero() => Err(ConfigError::new(
                "hedge.delay",
                "a fixed delay must be greater than zero (zero would send every read twice), got 0s",
            )),
            HedgeDelay::Fixed(_) => Ok(()),
            HedgeDelay::Percentile {
                percentile,
                min,
                max,
            } => {
                if !(0.5..=0.999).contains(&percentile) {
                    return Err(ConfigError::new(
                        "hedge.delay.percentile",
                        format!("must be between 0.5 and 0.999, got {percentile}"),
                    ));
                }
                if max.is_zero() {
                    return Err(ConfigError::new(
                        "hedge.delay.max",
                        "must be greater than zero (it is the delay until latencies are known), got 0s",
                    ));
                }
                if min > max {
                    return Err(ConfigError::new(
                        "hedge.delay.min",
                        format!("must be at most hedge.delay.max ({max:?}), got {min:?}"),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Wraps services in [`Hedge`]. Every service this layer makes shares one
/// latency history (for [`HedgeDelay::Percentile`]) and one budget, as do
/// their clones.
#[derive(Debug, Clone)]
pub struct HedgeLayer {
    pub(super) shared: Arc<Shared>,
}

impl HedgeLayer {
    /// A layer for `config`, with a budget of its own (`config.budget`, or
    /// [`BudgetConfig::default`]) into which it deposits one per request it
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
