//! [`MetricsLayer`]: makes [`Metrics`] services sharing one cardinality
//! guard.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tower_cql_core::Collectors;
use tower_cql_core::registry::Registry;
use tower_layer::Layer;

use super::{CardinalityGuard, Metrics, MetricsConfig, On};
use crate::toggle::PassThrough;

/// Emits one request event per logical request; see the module docs.
#[derive(Clone)]
pub struct MetricsLayer {
    collectors: Collectors,
    guard: Arc<CardinalityGuard>,
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
                seen: Registry::new(),
                max: config.max_label_sets,
                folded: AtomicU64::new(0),
            }),
        }
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
            }),
        }
    }
}

impl<S> PassThrough<S> for MetricsLayer {
    fn pass_through(inner: S) -> Metrics<S> {
        Metrics::pass_through(inner)
    }
}
