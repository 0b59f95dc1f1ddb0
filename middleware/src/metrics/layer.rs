//! [`MetricsLayer`]: makes [`Metrics`] services sharing one cardinality
//! guard.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tower_cql_core::Collectors;
use tower_cql_core::registry::Registry;
use tower_layer::Layer;

use super::{CardinalityGuard, Metrics, MetricsConfig, On};
use crate::server_trace::ServerTracer;
use crate::toggle::PassThrough;

/// Emits one request event per logical request; see the module docs.
#[derive(Clone)]
pub struct MetricsLayer {
    collectors: Collectors,
    guard: Arc<CardinalityGuard>,
    server_trace: Option<ServerTracer>,
}

impl fmt::Debug for MetricsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsLayer")
            .field("max_label_sets", &self.guard.max)
            .field("folded", &self.folded())
            .finish()
    }
}

impl MetricsLayer {
    /// A layer emitting into `collectors`.
    ///
    /// # Panics
    /// If `config` is invalid (see its `validate()`, which says why);
    /// [`StackBuilder`](crate::stack::StackBuilder) returns that as an error.
    #[track_caller]
    pub fn new(config: MetricsConfig, collectors: Collectors) -> MetricsLayer {
        crate::config::checked(config.validate());
        MetricsLayer {
            collectors,
            guard: Arc::new(CardinalityGuard {
                id: tower_cql_core::Statement::new_guard_id(),
                seen: Registry::new(),
                max: config.max_label_sets,
                folded: AtomicU64::new(0),
            }),
            server_trace: None,
        }
    }

    /// Samples requests for server-side tracing with `tracer` and queues
    /// their traces for its background fetch (see
    /// [`server_trace`](crate::server_trace)): this layer sees each logical
    /// request begin and end, so the sampling needs no layer of its own.
    pub fn with_server_trace(mut self, tracer: ServerTracer) -> MetricsLayer {
        self.server_trace = Some(tracer);
        self
    }

    /// The server tracer, if one was given.
    pub fn server_tracer(&self) -> Option<&ServerTracer> {
        self.server_trace.as_ref()
    }

    /// Requests whose labels were folded into `"other"`.
    pub fn folded(&self) -> u64 {
        self.guard.folded.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics {
            inner,
            on: Some(On {
                collectors: self.collectors.clone(),
                guard: self.guard.clone(),
                server_trace: self.server_trace.as_ref().map(|t| t.shared().clone()),
            }),
        }
    }
}

impl<S> PassThrough<S> for MetricsLayer {
    fn pass_through(inner: S) -> Metrics<S> {
        Metrics::pass_through(inner)
    }
}
