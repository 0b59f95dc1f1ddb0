//! What a service using the stack needs, in one `use`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tower_cql_middleware::prelude::*;
//!
//! # async fn demo(session: scylla::client::session::Session) -> Result<(), Box<dyn std::error::Error>> {
//! let memory = Arc::new(InMemoryCollector::new());
//! let stack = StackBuilder::new(Collectors::with([memory.clone()])).build_on(session)?;
//! let put = Statement::new("INSERT INTO app.users (id, name) VALUES (?, ?)");
//! stack.execute(&put, (42i64, "Ada")).await?;
//! stack.close().await;
//! # Ok(()) }
//! ```

pub use crate::config::ConfigError;
pub use crate::stack::{
    BoxService, SessionService, SessionStack, Stack, StackBuilder, StackService,
};
pub use crate::stack_config::StackConfig;
pub use tower_cql_core::{
    Collector, Collectors, CqlError, CqlRequest, CqlResponse, DriverService, ErrorKind,
    InMemoryCollector, RowStream, Statement,
};
