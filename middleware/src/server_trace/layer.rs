//! [`ServerTraceLayer`]: makes [`ServerTrace`] services sharing one
//! sampler and one background fetcher.

use std::fmt;
use std::sync::Arc;

use scylla::client::session::Session;
use tower_cql_core::Collectors;
use tower_cql_core::server_trace::ServerTraceConfig;
use tower_layer::Layer;

use super::fetch::{Counters, Fetcher};
use super::sample::Sampler;
use super::{ServerTrace, ServerTraceHandle, Shared};
use crate::toggle::PassThrough;

/// Samples requests for server-side tracing and fetches their traces in
/// the background; see the [module docs](super).
#[derive(Clone)]
pub struct ServerTraceLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for ServerTraceLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTraceLayer")
            .field("config", &self.shared.config)
            .field("stats", &self.handle().stats())
            .finish()
    }
}

impl ServerTraceLayer {
    /// A layer tracing per `config`, reading traces through `session` (the
    /// one the stack runs on) and emitting them into `collectors`.
    ///
    /// # Panics
    /// If `config` is invalid (see its `validate()`, which says why);
    /// [`StackBuilder`](crate::stack::StackBuilder) returns that as an error.
    #[track_caller]
    pub fn new(
        config: ServerTraceConfig,
        session: Arc<Session>,
        collectors: Collectors,
    ) -> ServerTraceLayer {
        crate::config::checked(config.validate());
        let counters = Arc::new(Counters::default());
        ServerTraceLayer {
            shared: Arc::new(Shared {
                sampler: Sampler::new(&config),
                fetcher: Fetcher::new(session, collectors, config, counters.clone()),
                counters,
                config,
            }),
        }
    }

    /// The counters, and the drain [`Stack::close`](crate::stack::Stack::close)
    /// runs before the collectors' last flush.
    pub fn handle(&self) -> ServerTraceHandle {
        ServerTraceHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;

    fn layer(&self, inner: S) -> ServerTrace<S> {
        ServerTrace {
            inner,
            on: Some(self.shared.clone()),
        }
    }
}

impl<S> PassThrough<S> for ServerTraceLayer {
    fn pass_through(inner: S) -> ServerTrace<S> {
        ServerTrace::pass_through(inner)
    }
}
