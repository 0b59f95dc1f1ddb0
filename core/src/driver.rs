//! The driver service: a `tower::Service<CqlRequest>` over a shared scylla
//! `Session`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tower::{Service, ServiceExt};
//! use tower_cql_core::{CqlRequest, DriverService};
//!
//! # async fn demo(session: scylla::client::session::Session) -> Result<(), Box<dyn std::error::Error>> {
//! let mut driver = DriverService::builder(Arc::new(session)).build()?;
//! let resp = driver
//!     .ready()
//!     .await?
//!     .call(CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").bind((1i32,)))
//!     .await?;
//! let rows: Vec<(String,)> = resp.rows()?;
//! # Ok(()) }
//! ```
//!
//! - CQL text is prepared once and the prepared statement cached (bounded;
//!   hits and misses are counted), also when many tasks start a new
//!   statement at the same moment: they wait on one preparation (single
//!   flight); statements marked unprepared go as QUERY. Text that names
//!   no keyspace is cached per session keyspace: the server binds a
//!   prepared statement to the keyspace it was prepared in, so after a
//!   `USE` it is prepared again for the new one. A request a stack's
//!   gate labelled with the session's keyspace as it entered runs in
//!   that keyspace, though a `USE` completed before it reached the
//!   driver: its label names the keyspace it ran in. (Not always when
//!   its statement is new to that keyspace and prepared after the `USE`:
//!   the server prepares in the keyspace of the moment.) Only preparations in
//!   flight are kept; a failed one is tried again by the next request.
//!   A request's deadline bounds its statement's preparation too (the
//!   driver's own has no timeout: it waits for every node's answer), and
//!   the statement then runs with the time left, not the whole again.
//!   It bounds the driver's wait after a schema change as well, for
//!   every node to agree on the schema, which its request timeout does
//!   not cover.
//! - A `USE` runs to its end in a task of its own, one at a time, even
//!   when its deadline passes or its caller stops waiting, and with no
//!   request timeout (neither the request's nor the session's own
//!   execution profile's; its text is sent unprepared): cut short
//!   after the server took it on one connection and before the driver
//!   took it to the others, it left the connections in different
//!   keyspaces and the session's naming the old one. Its caller waits
//!   until the deadline (then `DeadlineExceeded`: the `USE` goes on).
//! - The driver's own retries and speculative execution are turned off
//!   (its `FallthroughRetryPolicy`, no speculative policy), so that retries
//!   happen once, in the middleware, where they are observed. Turn them back
//!   on with [`DriverServiceBuilder::keep_driver_retries`].
//! - Each call is one attempt: it emits an
//!   [`AttemptEvent`](crate::event::AttemptEvent) with the node it went
//!   to (for errors too: the load-balancing policy the service installs
//!   around the session's records the node it picked, and the node the
//!   driver reports the attempt's outcome for).
//! - The response future, [`DriverFuture`], holds scylla's execution
//!   future (an `async fn`'s, which cannot be named, so it is behind a
//!   `dyn`) in a block of memory that is kept, emptied, for the thread's
//!   next request: a fresh 4.8 KB box per request cost more than all the
//!   rest this service adds (see `block.rs`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use scylla::client::execution_profile::ExecutionProfileHandle;
use scylla::client::session::Session;
use scylla::response::PagingState;

use crate::collector::Collectors;
use crate::error::CqlError;
use crate::request::CqlRequest;
use crate::response::CqlResponse;

mod attempt;
mod block;
mod builder;
mod prepared;
mod schema_type;

pub use block::DriverFuture;
pub use builder::DriverServiceBuilder;
use prepared::PreparedCache;

pub(crate) struct DriverInner {
    /// Unique per service: the key of the prepared statement a
    /// [`Statement`](crate::Statement) remembers.
    id: u64,
    pub(crate) session: Arc<Session>,
    cache: PreparedCache,
    pub(crate) collectors: Collectors,
    /// The session's default execution profile with the steering policy
    /// around its load balancing (and, unless the driver's retries are
    /// kept, with them and speculative execution off).
    profile: ExecutionProfileHandle,
    /// `profile` with no request timeout: a `USE` runs with it (see
    /// `attempt::run_use`), so the session's own request timeout does
    /// not cut it short either.
    use_profile: ExecutionProfileHandle,
    /// The driver's own retries and speculative execution are kept
    /// (`keep_driver_retries`).
    driver_retries: bool,
    node_attribution: bool,
    /// Held by a `USE` while it runs (see `attempt::run_use`): two never
    /// interleave their connections.
    use_lock: tokio::sync::Mutex<()>,
}

/// The innermost service of a stack: executes requests on a scylla session.
#[derive(Clone)]
pub struct DriverService {
    pub(crate) inner: Arc<DriverInner>,
}

impl fmt::Debug for DriverService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (hits, misses) = self.cache_stats();
        f.debug_struct("DriverService")
            .field("cached_statements", &self.inner.cache.map.len())
            .field("cache_hits", &hits)
            .field("cache_misses", &misses)
            .field("preparing", &self.inner.cache.preparing())
            .field("driver_retries", &self.inner.driver_retries)
            .finish()
    }
}

impl DriverService {
    /// A builder over a session the caller built (shared, since scylla's
    /// `Session` is not `Clone`).
    pub fn builder(session: Arc<Session>) -> DriverServiceBuilder {
        DriverServiceBuilder::new(session)
    }

    /// The session.
    pub fn session(&self) -> &Arc<Session> {
        &self.inner.session
    }

    /// The collector set this service emits into.
    pub fn collectors(&self) -> &Collectors {
        &self.inner.collectors
    }

    /// Makes `collectors` the set this service emits into, when this
    /// handle is the service's only one (no clone of it is kept
    /// elsewhere); returns whether this service now emits into
    /// `collectors` (also when it already did).
    ///
    /// A stack built on a driver service does this with the stack's
    /// collectors: inside a stack, the driver's attempt events go to the
    /// stack's set whatever set it was built with, and a driver that
    /// emits there itself spares every request carrying the set to it
    /// (two reference-count writes on the set's handle, shared by every
    /// request, and their drops).
    ///
    /// ```
    /// # async fn demo(session: scylla::client::session::Session) -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_cql_core::{Collectors, DriverService};
    ///
    /// let stack_set = Collectors::new();
    /// let mut driver = DriverService::builder(std::sync::Arc::new(session)).build()?;
    /// assert!(driver.adopt_collectors(&stack_set));
    /// assert!(driver.collectors().same_set(&stack_set));
    /// let kept = driver.clone();
    /// // a clone exists: its set is left as it is
    /// assert!(!driver.adopt_collectors(&Collectors::new()));
    /// # drop(kept);
    /// # Ok(()) }
    /// ```
    pub fn adopt_collectors(&mut self, collectors: &Collectors) -> bool {
        if self.inner.collectors.same_set(collectors) {
            return true;
        }
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => {
                inner.collectors = collectors.clone();
                true
            }
            None => false,
        }
    }

    /// Prepared-statement cache (hits, misses).
    pub fn cache_stats(&self) -> (u64, u64) {
        (
            self.inner.cache.hits.load(Ordering::Relaxed),
            self.inner.cache.misses.load(Ordering::Relaxed),
        )
    }

    /// Executes one request (what `call` does, without `&mut self`):
    /// unpaged, or the one page its meta asks for
    /// ([`RequestMeta::set_page`](crate::RequestMeta::set_page)).
    pub async fn execute(&self, req: CqlRequest) -> Result<CqlResponse, CqlError> {
        DriverInner::execute(self.inner.clone(), req, None).await
    }

    /// Fetches one page, starting at `paging_state` (the request then
    /// asks for that page, with the index it had, or 0); the response
    /// carries the state for the next page.
    pub async fn execute_page(
        &self,
        mut req: CqlRequest,
        paging_state: PagingState,
    ) -> Result<CqlResponse, CqlError> {
        let index = req.meta().page_index().unwrap_or(0);
        req.meta_mut().set_page(index, paging_state);
        DriverInner::execute(self.inner.clone(), req, None).await
    }
}

impl tower_service::Service<CqlRequest> for DriverService {
    type Response = CqlResponse;
    type Error = CqlError;
    type Future = DriverFuture;

    /// Always ready: the session multiplexes requests over its connections.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        Poll::Ready(Ok(()))
    }

    /// Executes the request: unpaged, or the one page its meta asks for
    /// ([`RequestMeta::set_page`](crate::RequestMeta::set_page)).
    fn call(&mut self, req: CqlRequest) -> Self::Future {
        DriverFuture::start(self.inner.clone(), req)
    }
}
