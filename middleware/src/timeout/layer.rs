use tower_layer::Layer;

use super::{Timeout, TimeoutConfig};
use crate::config::ConfigError;
use crate::toggle::PassThrough;

/// Makes [`Timeout`] services (see the [module docs](super)).
#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    config: TimeoutConfig,
}

impl TimeoutLayer {
    /// A layer; an invalid `config` is an error naming the field. It
    /// emits no events of its own, so it takes no collectors.
    pub fn new(config: TimeoutConfig) -> Result<TimeoutLayer, ConfigError> {
        config.validate()?;
        Ok(TimeoutLayer { config })
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
