//! `tower-cql-middleware`: tower layers for CQL requests.
//!
//! Every layer wraps a `tower::Service<CqlRequest, Response = CqlResponse,
//! Error = CqlError>` and emits what it does into the core
//! [`Collectors`](tower_cql_core::Collectors).
//!
//! ```
//! use tower_cql_middleware::config::ConfigError;
//! let _ = ConfigError::new("example", "doc");
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod breaker;
pub mod concurrency;
pub mod config;
pub mod hedge;
pub mod load_shed;
pub mod metrics;
pub mod prelude;
pub mod rate_limit;
pub mod retry;
pub mod server_trace;
pub mod slow_log;
pub mod stack;
pub mod stack_config;
pub mod timeout;
pub mod toggle;
pub mod trace;
mod wait;

/// Makes a bare `tracing` registry the test process's global subscriber,
/// once: a test that asserts on spans or events through its own
/// `set_default` subscriber calls it first. `tracing` caches each
/// callsite's interest for the whole process; a test running the stack
/// with no subscriber can cache "never" for the stack's callsites while
/// another test's subscriber is being registered, and that test then sees
/// nothing. With a global registry (its creation rebuilds every cached
/// interest), a thread with no subscriber of its own answers "always".
#[cfg(test)]
pub(crate) fn global_subscriber() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // (another global subscriber already set is as good)
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    });
}
