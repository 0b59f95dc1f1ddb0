//! The tracing layers' futures: poll the inner future inside the span and
//! record the outcome on it.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_cql_core::{CqlError, CqlResponse};
use tracing::Span;

fn record_node(span: &Span, node: Option<SocketAddr>) {
    if let Some(n) = node {
        span.record("server.address", n.ip().to_string().as_str());
        span.record("server.port", i64::from(n.port()));
    }
}

fn record_error(span: &Span, e: &CqlError) {
    span.record("otel.status_code", "error");
    span.record("error.type", e.kind().as_str());
    record_node(span, e.node());
}

pin_project! {
    /// The future of both tracing layers: polls the inner future inside
    /// the span and records the outcome on it (the request span records
    /// rows, attempts and the status code too).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        request: bool,
    }
}

/// The attempt span's future (the same future, recording less).
pub type AttemptFuture<F> = ResponseFuture<F>;

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, span: Span) -> ResponseFuture<F> {
        ResponseFuture {
            inner,
            span,
            request: true,
        }
    }

    pub(crate) fn attempt(inner: F, span: Span) -> ResponseFuture<F> {
        ResponseFuture {
            inner,
            span,
            request: false,
        }
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

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _enter = this.span.enter();
        let out = ready!(this.inner.poll(cx));
        if !this.span.is_disabled() {
            match (&out, *this.request) {
                (Ok(resp), request) => {
                    let info = resp.info();
                    record_node(this.span, info.coordinator);
                    if request {
                        this.span
                            .record("db.response.returned_rows", info.rows as i64);
                        this.span
                            .record("cql.attempts", i64::from(info.attempts.max(1)));
                        this.span.record(
                            "db.cassandra.speculative_execution_count",
                            i64::from(info.speculative),
                        );
                    }
                }
                (Err(e), request) => {
                    record_error(this.span, e);
                    if request {
                        if let Some(code) = e.kind().status_code() {
                            this.span
                                .record("db.response.status_code", format!("{code:#06x}").as_str());
                        }
                        this.span.record("cql.attempts", i64::from(e.attempts()));
                    }
                }
            }
        }
        Poll::Ready(out)
    }
}
