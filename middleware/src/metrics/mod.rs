//! The metrics layer: one [`RequestEvent`](tower_cql_core::event::RequestEvent) per logical request — the
//! latency the caller felt, end to end across retries, queueing and
//! hedging — beside the per-attempt events the driver service emits.
//!
//! ```
//! use std::sync::Arc;
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_cql_core::{Collectors, CqlRequest, CqlResponse, ExecutionInfo, InMemoryCollector};
//! use tower_cql_middleware::metrics::{MetricsConfig, MetricsLayer};
//! use tower_layer::Layer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let memory = Arc::new(InMemoryCollector::new());
//! let collectors = Collectors::with([memory.clone()]);
//! let inner = service_fn(|_req: CqlRequest| async {
//!     Ok::<_, tower_cql_core::CqlError>(CqlResponse::synthetic(ExecutionInfo { attempts: 1, ..Default::default() }))
//! });
//! let mut svc = MetricsLayer::new(MetricsConfig::default(), collectors).layer(inner);
//! svc.ready().await.unwrap().call(CqlRequest::query("SELECT v FROM ks.t").operation("get")).await.unwrap();
//! assert_eq!(memory.snapshot().request_latency(Some("get")).count(), 1);
//! # }
//! ```
//!
//! # Cardinality guard
//! Labels are bounded by construction (operation names, keyspaces, tables,
//! statement kinds, error kinds — never statement text). As a second line
//! of defence the layer admits at most `max_label_sets` distinct
//! (operation, keyspace, table) combinations; past that, a request's labels
//! are folded into `operation = "other"`, `keyspace = "other"`, `table =
//! "other"` before it goes further down the stack (so attempt events are
//! folded too), and the fold is counted ([`MetricsLayer::folded`]).
//!
//! # Where the latency starts and ends
//! At the layer's `call`, and where the driver finished the attempt that
//! answered ([`CqlResponse::attempt_ended`](tower_cql_core::CqlResponse::attempt_ended):
//! the reading that attempt's latency ends at, in the same poll); for an
//! error, or a response no driver made, at the poll that returns it. Only
//! what the layers below do with the response after the driver, without
//! waiting, is left out: nanoseconds, against a clock reading saved.

pub mod future;
mod layer;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tower_cql_core::registry::{Equivalent, Registry};
use tower_cql_core::{Collectors, CqlError, CqlRequest, CqlResponse, Label, RequestMeta};

pub use self::future::ResponseFuture;
pub use self::layer::MetricsLayer;
use crate::config::ConfigError;

/// Configuration of the metrics layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Distinct (operation, keyspace, table) label sets allowed before
    /// folding into `"other"` (default 1,000; at least 1).
    pub max_label_sets: usize,
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig {
            max_label_sets: 1000,
        }
    }
}

impl MetricsConfig {
    /// Rejects impossible values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_label_sets == 0 {
            return Err(ConfigError::new(
                "metrics.max_label_sets",
                "must be at least 1 (it bounds the distinct operation/keyspace/table label sets)",
            ));
        }
        Ok(())
    }
}

/// A label set the guard has admitted: hashed by the request's
/// [`labels_hash`](RequestMeta::labels_hash) (computed once per
/// statement), compared by the labels. A request finds its set through a
/// [`LabelView`]: no label cloned, no string hashed.
#[derive(Clone, PartialEq, Eq)]
struct LabelSet {
    hash: u64,
    labels: (Option<Label>, Option<Label>, Option<Label>),
}

impl std::hash::Hash for LabelSet {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.hash.hash(h);
    }
}

/// A request's label set, borrowed.
struct LabelView<'a>(&'a RequestMeta);

impl std::hash::Hash for LabelView<'_> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.labels_hash().hash(h);
    }
}

impl Equivalent<LabelSet> for LabelView<'_> {
    fn equivalent(&self, set: &LabelSet) -> bool {
        let (o, k, t) = &set.labels;
        o.as_ref() == self.0.operation()
            && k.as_ref() == self.0.keyspace()
            && t.as_ref() == self.0.table()
    }
}

/// Bounds the distinct label sets; lock-free reads, copy-on-write inserts.
struct CardinalityGuard {
    // this guard's id, remembered by the statements whose own labels it
    // admitted (it never forgets a label set, so that stays true)
    id: std::num::NonZeroU64,
    seen: Registry<LabelSet, ()>,
    max: usize,
    folded: AtomicU64,
}

const OTHER: Label = Label::from_static("other");

impl CardinalityGuard {
    fn apply(&self, meta: &mut RequestMeta) {
        let own = meta.has_statement_labels();
        if own && meta.statement().labels_admitted_by(self.id) {
            return;
        }
        if self.seen.contains_key(&LabelView(meta)) {
            if own {
                meta.statement().remember_labels_admitted(self.id);
            }
            return;
        }
        let key = LabelSet {
            hash: meta.labels_hash(),
            labels: (
                meta.operation().cloned(),
                meta.keyspace().cloned(),
                meta.table().cloned(),
            ),
        };
        let admitted = self
            .seen
            .get_or_insert_bounded(key, self.max, || ())
            .is_some();
        if !admitted {
            self.folded.fetch_add(1, Ordering::Relaxed);
            meta.set_labels(Some(OTHER), Some(OTHER), Some(OTHER));
        } else if own {
            meta.statement().remember_labels_admitted(self.id);
        }
    }
}

/// The metrics service; see [`MetricsLayer`].
#[derive(Clone)]
pub struct Metrics<S> {
    inner: S,
    /// `None`: a pass-through.
    on: Option<On>,
}

/// What a [`Metrics`] that is not a pass-through uses.
#[derive(Clone)]
pub(crate) struct On {
    collectors: Collectors,
    guard: Arc<CardinalityGuard>,
    /// Server-side tracing, when on (see [`crate::server_trace`]).
    server_trace: Option<Arc<crate::server_trace::Shared>>,
}

impl<S: fmt::Debug> fmt::Debug for Metrics<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S> Metrics<S> {
    /// A service that emits nothing and only forwards to `inner` (see
    /// [`toggle`](crate::toggle)): no clock read, no label guard.
    pub fn pass_through(inner: S) -> Metrics<S> {
        Metrics { inner, on: None }
    }

    /// Whether this service passes requests through unmeasured.
    pub fn is_pass_through(&self) -> bool {
        self.on.is_none()
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// What a request's call and end use (`None`: a pass-through),
    /// without the inner service.
    pub(crate) fn into_on(self) -> Option<On> {
        self.on
    }
}

impl<S> tower_service::Service<CqlRequest> for Metrics<S>
where
    S: tower_service::Service<CqlRequest, Response = CqlResponse, Error = CqlError>,
{
    type Response = CqlResponse;
    type Error = CqlError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CqlError>> {
        self.inner.poll_ready(cx)
    }

    #[inline(always)]
    fn call(&mut self, mut req: CqlRequest) -> Self::Future {
        let Some(on) = &self.on else {
            return ResponseFuture::pass_through(self.inner.call(req));
        };
        let measured = on.begin(&mut req, false);
        // what a request dropped before it ended reads (see the future)
        let tally = req.count_attempts();
        ResponseFuture::new(self.inner.call(req), measured, on.collectors.clone(), tally)
    }
}

impl On {
    /// A request's call: its labels guarded, server tracing begun, the
    /// clock read, and a copy of its meta for the request's end, which the
    /// caller keeps beside the measurement (none when `lent`: the caller
    /// keeps the request and lends its meta, as it is now, to the
    /// measurement's end).
    #[inline(always)]
    pub(crate) fn begin(
        &self,
        req: &mut CqlRequest,
        lent: bool,
    ) -> (future::Measured, Option<RequestMeta>) {
        self.guard.apply(req.meta_mut());
        let server_trace = self
            .server_trace
            .as_ref()
            .map(|st| (st.clone(), st.begin(req.meta_mut())));
        // Whether anyone takes the request's event is asked when it ends
        // (emitting it asks the set of that moment), not now: a collector
        // added while the request is in flight gets its request event, as
        // it gets its attempt events. So the meta is always kept for the
        // end, copied unless lent (a stack with no collector at all copies
        // it for no one).
        let meta = (!lent).then(|| req.meta().clone());
        (future::Measured::new(server_trace), meta)
    }

    /// Where the request events go.
    pub(crate) fn collectors(&self) -> &Collectors {
        &self.collectors
    }
}
