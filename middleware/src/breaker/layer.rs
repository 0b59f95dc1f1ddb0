use std::sync::Arc;

use tower_cql_core::{BreakerState, Collectors};
use tower_layer::Layer;

use super::{BreakerConfig, Breakers, CircuitBreaker};
use crate::toggle::PassThrough;

/// Makes [`CircuitBreaker`] services that all share this layer's breakers
/// (see the [module docs](super)). Cloning the layer shares them too.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    breakers: Arc<Breakers>,
}

impl CircuitBreakerLayer {
    /// A layer with every breaker closed.
    ///
    /// # Panics
    /// If `config` is invalid (see its `validate()`, which says why);
    /// [`StackBuilder`](crate::stack::StackBuilder) returns that as an error.
    #[track_caller]
    pub fn new(config: BreakerConfig, collectors: Collectors) -> CircuitBreakerLayer {
        crate::config::checked(config.validate());
        CircuitBreakerLayer {
            breakers: Arc::new(Breakers::new(config, collectors)),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        self.breakers.config()
    }

    /// The state of `target` (a node address such as `"10.0.0.1:9042"`, or
    /// `"keyspace.table"`) as the next request would find it; `None` for a
    /// target not seen yet.
    pub fn state(&self, target: &str) -> Option<BreakerState> {
        self.breakers.state(target)
    }

    /// Every target seen, with its state, sorted by name.
    pub fn states(&self) -> Vec<(String, BreakerState)> {
        self.breakers.states()
    }

    pub(crate) fn service<S>(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker::from_shared(inner, self.breakers.clone())
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        self.service(inner)
    }
}

impl<S> PassThrough<S> for CircuitBreakerLayer {
    fn pass_through(inner: S) -> CircuitBreaker<S> {
        CircuitBreaker::pass_through(inner)
    }
}
