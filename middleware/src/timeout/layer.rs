use tower_layer::Layer;

use super::{Timeout, TimeoutConfig};
use crate::toggle::PassThrough;

/// Makes [`Timeout`] services (see the [module docs](super)).
#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    config: TimeoutConfig,
}

impl TimeoutLayer {
    /// A layer. It emits no events of its own, so it takes no collectors.
    ///
    /// # Panics
    /// If `config` is invalid (see its `validate()`, which says why);
    /// [`StackBuilder`](crate::stack::StackBuilder) returns that as an error.
    #[track_caller]
    pub fn new(config: TimeoutConfig) -> TimeoutLayer {
        crate::config::checked(config.validate());
        TimeoutLayer { config }
    }

    /// The configuration.
    pub fn config(&self) -> &TimeoutConfig {
        &self.config
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            config: self.config,
        }
    }
}

impl<S> PassThrough<S> for TimeoutLayer {
    fn pass_through(inner: S) -> Timeout<S> {
        Timeout::pass_through(inner)
    }
}
