//! The tracing layers' futures: poll the inner future inside the span and
//! record the outcome on it.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_cql_core::{CqlError, CqlResponse};
use tracing::Span;
use tracing::field::{Field, Value};

/// The fields a span's outcome goes into, looked up once per callsite.
#[derive(Debug)]
pub(crate) struct OutcomeFields {
    status: Field,
    error_type: Field,
    address: Field,
    port: Field,
    /// Request spans only.
    request: Option<RequestFields>,
}

#[derive(Debug)]
struct RequestFields {
    code: Field,
    rows: Field,
    attempts: Field,
    speculative: Field,
}

impl OutcomeFields {
    /// The fields of `span`'s callsite, from `cache` (`None` when the span
    /// is disabled, or is not one of this module's).
    pub(crate) fn cached(
        cache: &'static OnceLock<OutcomeFields>,
        span: &Span,
    ) -> Option<&'static OutcomeFields> {
        if span.is_disabled() {
            return None;
        }
        let meta = span.metadata()?;
        if let Some(f) = cache.get() {
            return Some(f);
        }
        let fs = meta.fields();
        let f = OutcomeFields {
            status: fs.field("otel.status_code")?,
            error_type: fs.field("error.type")?,
            address: fs.field("server.address")?,
            port: fs.field("server.port")?,
            request: (|| {
                Some(RequestFields {
                    code: fs.field("db.response.status_code")?,
                    rows: fs.field("db.response.returned_rows")?,
                    attempts: fs.field("cql.attempts")?,
                    speculative: fs.field("db.cassandra.speculative_execution_count")?,
                })
            })(),
        };
        Some(cache.get_or_init(|| f))
    }
}

/// Records the outcome of a request or attempt on its span, in one call.
pub(crate) fn record_outcome(span: &Span, f: &OutcomeFields, out: &Result<CqlResponse, CqlError>) {
    let Some(meta) = span.metadata() else {
        return;
    };
    let (node, error) = match out {
        Ok(resp) => (resp.info().coordinator, None),
        Err(e) => (e.node(), Some(e)),
    };
    // formatted by the subscriber that records it, not here
    let ip = node.map(|n| tracing::field::display(n.ip()));
    let port = node.map(|n| i64::from(n.port()));
    let kind = error.map(tower_cql_core::classify::error_type);
    let status = error.map(|_| "error");
    let fs = meta.fields();
    match &f.request {
        None => {
            span.record_all(&fs.value_set(&[
                (&f.status, status.as_ref().map(|v| v as &dyn Value)),
                (&f.error_type, kind.as_ref().map(|v| v as &dyn Value)),
                (&f.address, ip.as_ref().map(|v| v as &dyn Value)),
                (&f.port, port.as_ref().map(|v| v as &dyn Value)),
            ]));
        }
        Some(r) => {
            let (rows, attempts, speculative, code) = match out {
                Ok(resp) => {
                    let info = resp.info();
                    (
                        Some(info.rows as i64),
                        i64::from(info.attempts.max(1)),
                        Some(i64::from(info.speculative)),
                        None,
                    )
                }
                Err(e) => (
                    None,
                    i64::from(e.attempts()),
                    Some(i64::from(e.speculative())),
                    e.status_code()
                        .map(tower_cql_core::semconv::response_status_code),
                ),
            };
            let code = code.as_deref();
            span.record_all(&fs.value_set(&[
                (&f.status, status.as_ref().map(|v| v as &dyn Value)),
                (&f.error_type, kind.as_ref().map(|v| v as &dyn Value)),
                (&f.address, ip.as_ref().map(|v| v as &dyn Value)),
                (&f.port, port.as_ref().map(|v| v as &dyn Value)),
                (&r.code, code.as_ref().map(|v| v as &dyn Value)),
                (&r.rows, rows.as_ref().map(|v| v as &dyn Value)),
                (&r.attempts, Some(&attempts as &dyn Value)),
                (
                    &r.speculative,
                    speculative.as_ref().map(|v| v as &dyn Value),
                ),
            ]));
        }
    }
}

/// Records on `span` that its request or attempt was cancelled before it
/// ended (dropped by the caller, a lost hedge race, a timeout outside):
/// the status and the `error.type` its event has
/// ([`CancelReason::error_kind`](tower_cql_core::cancel::CancelReason::error_kind)),
/// and for an attempt the node it had gone to (`node`), as a failed
/// attempt's span has it.
#[cold]
#[inline(never)]
pub(crate) fn record_cancelled(span: &Span, f: &OutcomeFields, node: Option<SocketAddr>) {
    let Some(meta) = span.metadata() else {
        return;
    };
    let kind = tower_cql_core::cancel::reason().error_kind().as_str();
    let ip = node.map(|n| tracing::field::display(n.ip()));
    let port = node.map(|n| i64::from(n.port()));
    span.record_all(&meta.fields().value_set(&[
        (&f.status, Some(&"error" as &dyn Value)),
        (&f.error_type, Some(&kind as &dyn Value)),
        (&f.address, ip.as_ref().map(|v| v as &dyn Value)),
        (&f.port, port.as_ref().map(|v| v as &dyn Value)),
    ]));
}

/// Drops `inner`, the attempt an attempt span's future holds, and
/// returns the node it told it had gone to (see
/// [`cancel_attempt`](tower_cql_core::cancel::cancel_attempt)), told
/// again for whoever is dropping this future (a timeout outside it).
#[cold]
#[inline(never)]
fn drop_attempt<F>(inner: Pin<&mut Option<F>>) -> Option<SocketAddr> {
    use tower_cql_core::cancel;
    let mut inner = inner;
    let node = cancel::cancel_attempt(cancel::reason(), || inner.set(None));
    if let Some(n) = node {
        cancel::tell_node(n);
    }
    node
}

pin_project! {
    /// The future of both tracing layers: polls the inner future inside
    /// the span and records the outcome on it (the request span records
    /// rows, attempts and the status code too); dropped before the
    /// outcome, it records the cancellation (an attempt's span, the node
    /// the attempt had gone to: it drops the attempt first to learn it).
    pub struct ResponseFuture<F> {
        // `None` only while being dropped
        #[pin]
        inner: Option<F>,
        span: Span,
        // `None` once the outcome is recorded (or for a span that records
        // nothing)
        fields: Option<&'static OutcomeFields>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(fields) = this.fields.take() {
                let node = match fields.request {
                    None => drop_attempt(this.inner),
                    // (a request's span: its attempts' own spans say where
                    // they went)
                    Some(_) => None,
                };
                record_cancelled(this.span, fields, node);
            }
        }
    }
}

/// The attempt span's future (the same future, recording less).
pub type AttemptFuture<F> = ResponseFuture<F>;

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: F,
        span: Span,
        fields: Option<&'static OutcomeFields>,
    ) -> ResponseFuture<F> {
        ResponseFuture {
            inner: Some(inner),
            span,
            fields,
        }
    }

    pub(crate) fn attempt(
        inner: F,
        span: Span,
        fields: Option<&'static OutcomeFields>,
    ) -> ResponseFuture<F> {
        ResponseFuture::new(inner, span, fields)
    }

    /// The inner future alone: no span (`Span::none()` holds no
    /// subscriber, so entering and dropping it do nothing) and nothing
    /// to record.
    pub(crate) fn pass_through(inner: F) -> ResponseFuture<F> {
        ResponseFuture::new(inner, Span::none(), None)
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("span", &self.span)
            .finish()
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<CqlResponse, CqlError>>,
{
    type Output = Result<CqlResponse, CqlError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _enter = this.span.enter();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Pending; // (only while being dropped)
        };
        let out = ready!(inner.poll(cx));
        if let Some(fields) = this.fields.take() {
            record_outcome(this.span, fields, &out);
        }
        Poll::Ready(out)
    }
}
