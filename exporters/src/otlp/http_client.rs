//! The HTTP/protobuf transport: `opentelemetry-otlp`'s HTTP exporters over
//! `opentelemetry-http`'s hyper client (plain HTTP, no TLS stack).
//!
//! The SDK exports from its own threads with a blocking executor, where an
//! async client has no reactor; [`OnRuntime`] runs each request on the
//! runtime `install()` was called in instead, and adds the configured
//! headers itself so that no other configuration holds their values.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{
    MetricExporter, Protocol, SpanExporter, WithExportConfig, WithHttpConfig,
};
use tokio::runtime::Handle;

use super::config::{Header, Target};
use super::error::{ExportCause, OtlpError};
use super::watch::{Watch, cause_of_http_error};

/// An HTTP client whose requests run on a given Tokio runtime.
#[derive(Clone)]
pub(super) struct OnRuntime {
    client: HyperClient,
    runtime: Handle,
    headers: Arc<Vec<Header>>,
    /// Told what each request ended in.
    watch: Arc<Watch>,
    timeout: std::time::Duration,
}

impl fmt::Debug for OnRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The headers' Debug shows names only.
        f.debug_struct("OnRuntime")
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl HttpClient for OnRuntime {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        mut request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        for h in self.headers.iter() {
            request
                .headers_mut()
                .insert(h.name.clone(), h.value.clone());
        }
        let client = self.client.clone();
        let task = self
            .runtime
            .spawn(async move { client.send_bytes(request).await });
        let (watch, timeout) = (self.watch.clone(), self.timeout);
        Box::pin(async move {
            let result = task.await.map_err(|e| Box::new(e) as HttpError)?;
            watch.saw(match &result {
                Ok(response) if response.status().is_success() => {
                    watch.saw_answer(response.body());
                    None
                }
                Ok(response) => Some(ExportCause::HttpStatus(response.status().as_u16())),
                Err(e) => Some(cause_of_http_error(e.as_ref(), timeout)),
            });
            result
        })
    }
}

/// The client of `t`'s exports: on `runtime`, telling `watch`.
fn client(t: &Target, runtime: &Handle, watch: &Arc<Watch>) -> OnRuntime {
    OnRuntime {
        client: HyperClient::with_default_connector(t.timeout, None),
        runtime: runtime.clone(),
        headers: Arc::new(t.headers.clone()),
        watch: watch.clone(),
        timeout: t.timeout,
    }
}

/// The metric exporter sending to `t` over HTTP/protobuf.
pub(super) fn metric_exporter(
    t: &Target,
    runtime: &Handle,
    watch: &Arc<Watch>,
) -> Result<MetricExporter, OtlpError> {
    MetricExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(t.url.clone())
        .with_timeout(t.timeout)
        .with_http_client(client(t, runtime, watch))
        .build()
        .map_err(|source| OtlpError::Exporter {
            signal: "metrics",
            source,
        })
}

/// The span exporter sending to `t` over HTTP/protobuf.
pub(super) fn span_exporter(
    t: &Target,
    runtime: &Handle,
    watch: &Arc<Watch>,
) -> Result<SpanExporter, OtlpError> {
    SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(t.url.clone())
        .with_timeout(t.timeout)
        .with_http_client(client(t, runtime, watch))
        .build()
        .map_err(|source| OtlpError::Exporter {
            signal: "traces",
            source,
        })
}
