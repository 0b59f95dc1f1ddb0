//! [`DriverServiceBuilder`]: how a [`DriverService`] is configured, and
//! the execution profile it runs statements with.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use scylla::client::session::Session;
use scylla::policies::retry::FallthroughRetryPolicy;

use super::prepared::PreparedCache;
use super::{DriverInner, DriverService};
use crate::collector::Collectors;
use crate::config::ConfigError;

/// Configures a [`DriverService`].
pub struct DriverServiceBuilder {
    session: Arc<Session>,
    collectors: Collectors,
    cache_capacity: usize,
    keep_driver_retries: bool,
    node_attribution: bool,
}

impl fmt::Debug for DriverServiceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverServiceBuilder")
            .field("cache_capacity", &self.cache_capacity)
            .field("keep_driver_retries", &self.keep_driver_retries)
            .field("node_attribution", &self.node_attribution)
            .finish()
    }
}

impl DriverServiceBuilder {
    /// The defaults (see [`DriverService::builder`]).
    pub(super) fn new(session: Arc<Session>) -> DriverServiceBuilder {
        DriverServiceBuilder {
            session,
            collectors: Collectors::new(),
            cache_capacity: 1024,
            keep_driver_retries: false,
            node_attribution: true,
        }
    }

    /// The collector set attempt events go to when the service is used on
    /// its own. Inside a stack, requests carry the stack's collectors (its
    /// gate hands them over) and attempt events go there instead, so a
    /// stack's events reach one set: a service that only runs in a stack
    /// needs no collectors of its own.
    pub fn collectors(mut self, collectors: Collectors) -> Self {
        self.collectors = collectors;
        self
    }

    /// How many prepared statements to keep (default 1024; must be > 0).
    pub fn cache_capacity(mut self, n: usize) -> Self {
        self.cache_capacity = n;
        self
    }

    /// Keep the session's own retry and speculative execution policies
    /// (default false: the middleware retries, once, observably). The
    /// statements this service prepares, and unprepared text, still run
    /// with its load-balancing policy around the session's (the plan is
    /// the session's own unless a route hint says otherwise), so their
    /// attempts name their node; a statement the caller prepared, or a
    /// batch, runs with its own execution profile. Every statement and
    /// batch runs as idempotent only if its request is
    /// ([`RequestMeta::is_idempotent`](crate::RequestMeta::is_idempotent)),
    /// whatever the caller made it with: the driver's retries never
    /// repeat a write the stack would not.
    pub fn keep_driver_retries(mut self, keep: bool) -> Self {
        self.keep_driver_retries = keep;
        self
    }

    /// Record the node each attempt went to, so that errors and attempt
    /// events name it (default true). The service's load-balancing policy
    /// (the session's, seen through the one that follows route hints)
    /// records it: two thread-local accesses per poll, no allocation.
    /// With [`keep_driver_retries`](Self::keep_driver_retries), a statement
    /// the caller prepared, or a batch, runs with its own execution
    /// profile, and its errors name no node.
    pub fn node_attribution(mut self, on: bool) -> Self {
        self.node_attribution = on;
        self
    }

    /// Builds the service; an invalid configuration is an error saying what
    /// to change.
    pub fn build(self) -> Result<DriverService, ConfigError> {
        if self.cache_capacity == 0 {
            return Err(ConfigError::new(
                "driver.cache_capacity",
                "must be at least 1 (the number of prepared statements kept), got 0",
            ));
        }
        // The session's own policies, its load balancing seen through the
        // steering policy (which follows route hints and records the node
        // of each attempt); unless the driver's retries are kept, retries
        // and speculative execution off.
        let default = self.session.get_default_execution_profile_handle();
        let balancing = default.to_profile().get_load_balancing_policy().clone();
        let profile = default
            .pointee_to_builder()
            .load_balancing_policy(Arc::new(crate::routing::Steering::new(balancing)));
        let profile = if self.keep_driver_retries {
            profile
        } else {
            profile
                .retry_policy(Arc::new(FallthroughRetryPolicy::new()))
                .speculative_execution_policy(None)
        };
        // a `USE` runs to its end: with no request timeout (see
        // `attempt::run_use`)
        let use_profile = profile.clone().request_timeout(None).build().into_handle();
        let profile = profile.build().into_handle();
        Ok(DriverService {
            inner: Arc::new(DriverInner {
                id: {
                    static NEXT: AtomicU64 = AtomicU64::new(1);
                    NEXT.fetch_add(1, Ordering::Relaxed)
                },
                session: self.session,
                cache: PreparedCache::new(self.cache_capacity),
                collectors: self.collectors,
                profile,
                use_profile,
                driver_retries: self.keep_driver_retries,
                node_attribution: self.node_attribution,
                use_lock: tokio::sync::Mutex::new(()),
            }),
        })
    }
}
