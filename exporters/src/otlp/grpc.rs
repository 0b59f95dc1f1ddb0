//! The gRPC transport: `opentelemetry-otlp`'s tonic exporters; headers go
//! in through an interceptor, so the exporter's configuration never holds
//! their values.

use std::sync::Arc;

use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig, WithTonicConfig};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};

use super::config::{Header, Target};
use super::error::OtlpError;

type Metadata = Arc<Vec<(AsciiMetadataKey, AsciiMetadataValue)>>;

/// The metric exporter sending to `t` over gRPC.
pub(super) fn metric_exporter(t: &Target) -> Result<MetricExporter, OtlpError> {
    MetricExporter::builder()
        .with_tonic()
        .with_endpoint(t.url.clone())
        .with_timeout(t.timeout)
        .with_interceptor(interceptor(&t.headers)?)
        .build()
        .map_err(|source| OtlpError::Exporter {
            signal: "metrics",
            source,
        })
}

/// The span exporter sending to `t` over gRPC.
pub(super) fn span_exporter(t: &Target) -> Result<SpanExporter, OtlpError> {
    SpanExporter::builder()
        .with_tonic()
        .with_endpoint(t.url.clone())
        .with_timeout(t.timeout)
        .with_interceptor(interceptor(&t.headers)?)
        .build()
        .map_err(|source| OtlpError::Exporter {
            signal: "traces",
            source,
        })
}

fn interceptor(
    headers: &[Header],
) -> Result<
    impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>
    + Clone
    + Send
    + Sync
    + 'static,
    OtlpError,
> {
    let mut md = Vec::with_capacity(headers.len());
    for h in headers {
        let key = AsciiMetadataKey::from_bytes(h.name.as_str().as_bytes()).map_err(|_| {
            OtlpError::InvalidHeader {
                which: h.name.to_string(),
                reason: "the name is not valid gRPC metadata",
                origin: h.origin,
            }
        })?;
        let mut value = AsciiMetadataValue::try_from(h.value.as_bytes()).map_err(|_| {
            OtlpError::InvalidHeader {
                which: h.name.to_string(),
                reason: "the value is not valid gRPC metadata (visible ASCII only)",
                origin: h.origin,
            }
        })?;
        value.set_sensitive(true);
        md.push((key, value));
    }
    let md: Metadata = Arc::new(md);
    // Runs after the exporter's own metadata (its User-Agent and the
    // header variables it reads itself): ours replace same-named entries.
    Ok(move |mut req: tonic::Request<()>| {
        for (k, v) in md.iter() {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        Ok(req)
    })
}
