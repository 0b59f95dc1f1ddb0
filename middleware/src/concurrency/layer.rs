use std::fmt;
use std::sync::Arc;

use tower_cql_core::Collectors;
use tower_layer::Layer;

use super::slots::Core;
use super::{ConcurrencyConfig, ConcurrencyLimit};
use crate::toggle::PassThrough;

/// Makes [`ConcurrencyLimit`] services that all share this layer's one
/// limit and queue (see the [module docs](super)). Cloning the layer shares
/// them too.
#[derive(Clone)]
pub struct ConcurrencyLimitLayer {
    core: Arc<Core>,
    config: ConcurrencyConfig,
    shed: bool,
}

impl fmt::Debug for ConcurrencyLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitLayer")
            .field("config", &self.config)
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .field("for_load_shed", &self.shed)
            .finish()
    }
}

impl ConcurrencyLimitLayer {
    /// A layer with an empty limit.
    ///
    /// # Panics
    /// If `config` is invalid (see its `validate()`, which says why);
    /// [`StackBuilder`](crate::stack::StackBuilder) returns that as an error.
    #[track_caller]
    pub fn new(config: ConcurrencyConfig, collectors: Collectors) -> ConcurrencyLimitLayer {
        crate::config::checked(config.validate());
        ConcurrencyLimitLayer {
            core: Arc::new(Core::new(
                "concurrency_limit",
                config.max_in_flight,
                config.max_queue,
                config.queue_timeout,
                collectors,
                None,
            )),
            config,
            shed: false,
        }
    }

    /// For use under a [`LoadShedLayer`](crate::load_shed::LoadShedLayer)
    /// (what [`StackBuilder::load_shed`](crate::stack::StackBuilder::load_shed)
    /// builds): the services' `poll_ready` takes a slot, and is pending
    /// while none is free, so that the load shedder above refuses the
    /// request at once instead of letting it queue. Nothing queues then.
    ///
    /// Without a load shedder above, a caller of such a service waits for
    /// a slot in `poll_ready`: before its request exists, outside its
    /// latency and deadline. Use the default (queueing in the response
    /// future) there.
    pub fn for_load_shed(mut self) -> ConcurrencyLimitLayer {
        self.shed = true;
        self
    }

    /// Whether the services are for use under a load shedder (see
    /// [`for_load_shed`](ConcurrencyLimitLayer::for_load_shed)).
    pub fn is_for_load_shed(&self) -> bool {
        self.shed
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
        ConcurrencyLimit::from_core(inner, self.core.clone(), self.shed)
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
