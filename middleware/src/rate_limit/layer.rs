use std::fmt;
use std::sync::Arc;

use tower_cql_core::Collectors;
use tower_layer::Layer;

use super::{Bucket, RateLimit, RateLimitConfig, Shared};
use crate::config::ConfigError;
use crate::toggle::PassThrough;

/// Makes [`RateLimit`] services that all draw from this layer's one
/// bucket (see the [module docs](super)). Cloning the layer shares the
/// bucket too.
#[derive(Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("config", &self.shared.config)
            .finish()
    }
}

impl RateLimitLayer {
    /// A layer with a full bucket; an invalid `config` is an error naming
    /// the field.
    pub fn new(
        config: RateLimitConfig,
        collectors: Collectors,
    ) -> Result<RateLimitLayer, ConfigError> {
        config.validate()?;
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                bucket: Bucket::new(&config),
                config,
                collectors,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RateLimitConfig {
        &self.shared.config
    }

    pub(crate) fn service<S>(&self, inner: S) -> RateLimit<S> {
        RateLimit::from_shared(inner, self.shared.clone())
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        self.service(inner)
    }
}

impl<S> PassThrough<S> for RateLimitLayer {
    fn pass_through(inner: S) -> RateLimit<S> {
        RateLimit::pass_through(inner)
    }
}
