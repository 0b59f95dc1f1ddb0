use std::fmt;
use std::sync::Arc;

use tower_cql_core::Collectors;
use tower_layer::Layer;

use super::{ConcurrencyConfig, ConcurrencyLimit, Core};
use crate::config::ConfigError;
use crate::toggle::PassThrough;

/// Makes [`ConcurrencyLimit`] services that all share this layer's one
/// limit and queue (see the [module docs](super)). Cloning the layer shares
/// them too.
#[derive(Clone)]
pub struct ConcurrencyLimitLayer {
    core: Arc<Core>,
    config: ConcurrencyConfig,
}

impl fmt::Debug for ConcurrencyLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitLayer")
            .field("config", &self.config)
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .finish()
    }
}

impl ConcurrencyLimitLayer {
    /// A layer with an empty limit; an invalid `config` is an error naming
    /// the field.
    pub fn new(
        config: ConcurrencyConfig,
        collectors: Collectors,
    ) -> Result<ConcurrencyLimitLayer, ConfigError> {
        config.validate()?;
        Ok(ConcurrencyLimitLayer {
            core: Arc::new(Core::new(
                "concurrency_limit",
                config.max_in_flight,
                config.max_queue,
                config.queue_timeout,
                collectors,
                None,
            )),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ConcurrencyConfig {
        &self.config
    }

    /// Requests in flight, across every service this layer made.
    pub fn in_flight(&self) -> usize {
        self.core.in_flight()
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> usize {
        self.core.queued()
    }

    pub(crate) fn service<S>(&self, inner: S) -> ConcurrencyLimit<S> {
        ConcurrencyLimit::from_core(inner, self.core.clone())
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> ConcurrencyLimit<S> {
        self.service(inner)
    }
}

impl<S> PassThrough<S> for ConcurrencyLimitLayer {
    fn pass_through(inner: S) -> ConcurrencyLimit<S> {
        ConcurrencyLimit::pass_through(inner)
    }
}
