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
mod refusal;
pub mod retry;
pub mod server_trace;
pub mod slow_log;
pub mod stack;
pub mod stack_config;
pub mod timeout;
pub mod toggle;
pub mod trace;
mod wait;
