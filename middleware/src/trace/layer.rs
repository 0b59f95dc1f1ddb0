//! [`TraceLayer`] and [`AttemptTraceLayer`]: make the [`Trace`] and
//! [`AttemptTrace`] services.

use tower_layer::Layer;
use tracing::Level;

use super::{AttemptMode, AttemptTrace, Trace, TraceConfig};
use crate::toggle::PassThrough;

/// Opens the request span; see the module docs.
#[derive(Debug, Clone)]
pub struct TraceLayer {
    config: TraceConfig,
}

impl TraceLayer {
    /// A layer opening request spans as `config` says.
    ///
    /// # Panics
    /// If `config` is invalid (see its `validate()`, which says why);
    /// [`StackBuilder`](crate::stack::StackBuilder) returns that as an error.
    #[track_caller]
    pub fn new(config: TraceConfig) -> TraceLayer {
        crate::config::checked(config.validate());
        TraceLayer { config }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            config: Some(self.config.clone()),
        }
    }
}

impl<S> PassThrough<S> for TraceLayer {
    fn pass_through(inner: S) -> Trace<S> {
        Trace::pass_through(inner)
    }
}

/// Opens a child span per attempt; see the module docs.
#[derive(Debug, Clone)]
pub struct AttemptTraceLayer {
    debug: bool,
}

impl Default for AttemptTraceLayer {
    fn default() -> AttemptTraceLayer {
        AttemptTraceLayer::new()
    }
}

impl AttemptTraceLayer {
    /// A layer making its spans at `INFO`.
    pub fn new() -> AttemptTraceLayer {
        AttemptTraceLayer { debug: false }
    }

    /// A layer making its spans at the attempt level of `config`
    /// ([`TraceConfig::attempt_level`], `DEBUG` by default); the stack
    /// builder uses the request span's configuration.
    ///
    /// # Panics
    /// If `config` is invalid (see its `validate()`, which says why);
    /// [`StackBuilder`](crate::stack::StackBuilder) returns that as an error.
    #[track_caller]
    pub fn with_config(config: &TraceConfig) -> AttemptTraceLayer {
        crate::config::checked(config.validate());
        AttemptTraceLayer {
            debug: config.attempt_level == Level::DEBUG,
        }
    }
}

impl<S> Layer<S> for AttemptTraceLayer {
    type Service = AttemptTrace<S>;

    fn layer(&self, inner: S) -> AttemptTrace<S> {
        AttemptTrace {
            inner,
            mode: if self.debug {
                AttemptMode::Debug
            } else {
                AttemptMode::Info
            },
        }
    }
}

impl<S> PassThrough<S> for AttemptTraceLayer {
    fn pass_through(inner: S) -> AttemptTrace<S> {
        AttemptTrace::pass_through(inner)
    }
}
