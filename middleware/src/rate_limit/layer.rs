use std::fmt;
use std::sync::Arc;

use tower_cql_core::Collectors;
use tower_layer::Layer;

use super::bucket::Bucket;
use super::{RateLimit, RateLimitConfig, Shared};
use crate::toggle::PassThrough;

/// Makes [`RateLimit`] services that all draw from this layer's one
/// bucket (see the [module docs](super)). Cloning the layer shares the
/// bucket too.
#[derive(Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
    shed: bool,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("config", &self.shared.config)
            .field("for_load_shed", &self.shed)
            .finish()
    }
}

impl RateLimitLayer {
    /// A layer with a full bucket.
    ///
    /// # Panics
    /// If `config` is invalid (see its `validate()`, which says why);
    /// [`StackBuilder`](crate::stack::StackBuilder) returns that as an error.
    #[track_caller]
    pub fn new(config: RateLimitConfig, collectors: Collectors) -> RateLimitLayer {
        crate::config::checked(config.validate());
        RateLimitLayer {
            shared: Arc::new(Shared {
                bucket: Bucket::new(&config),
                config,
                collectors,
            }),
            shed: false,
        }
    }

    /// For use under a [`LoadShedLayer`](crate::load_shed::LoadShedLayer)
    /// (what [`StackBuilder::load_shed`](crate::stack::StackBuilder::load_shed)
    /// builds): in [`RateLimitMode::Wait`](super::RateLimitMode::Wait), the
    /// services' `poll_ready` takes a token, and is pending until one is
    /// due, so that the load shedder above refuses the request at once
    /// instead of letting it wait. (In `Reject` mode nothing waits
    /// anyway.)
    ///
    /// Without a load shedder above, a caller of such a service waits for
    /// its token in `poll_ready`: before its request exists, outside its
    /// latency and deadline. Use the default (waiting in the response
    /// future) there.
    pub fn for_load_shed(mut self) -> RateLimitLayer {
        self.shed = true;
        self
    }

    /// Whether the services are for use under a load shedder (see
    /// [`for_load_shed`](RateLimitLayer::for_load_shed)).
    pub fn is_for_load_shed(&self) -> bool {
        self.shed
    }

    /// The configuration.
    pub fn config(&self) -> &RateLimitConfig {
        &self.shared.config
    }

    pub(crate) fn service<S>(&self, inner: S) -> RateLimit<S> {
        RateLimit::from_shared(inner, self.shared.clone(), self.shed)
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
