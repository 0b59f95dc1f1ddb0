//! The gRPC transport: `opentelemetry-otlp`'s tonic exporters; headers go
//! in through an interceptor, so the exporter's configuration never holds
//! their values.

use std::sync::Arc;

use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig, WithTonicConfig};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};

use super::config::Resolved;
use super::error::OtlpError;

type Metadata = Arc<Vec<(AsciiMetadataKey, AsciiMetadataValue)>>;

pub(super) fn exporters(cfg: &Resolved) -> Result<super::Exporters, OtlpError> {
    let mut md = Vec::with_capacity(cfg.headers.len());
    for h in &cfg.headers {
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
    // signal-specific header variables): ours replace same-named entries.
    let interceptor = move |mut req: tonic::Request<()>| {
        for (k, v) in md.iter() {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        Ok(req)
    };
    let url = cfg.signal_url("");
    let metrics = MetricExporter::builder()
        .with_tonic()
        .with_endpoint(url.clone())
        .with_timeout(cfg.export_timeout)
        .with_interceptor(interceptor.clone())
        .build()
        .map_err(|source| OtlpError::Exporter {
            signal: "metrics",
            source,
        })?;
    let spans = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(url)
        .with_timeout(cfg.export_timeout)
        .with_interceptor(interceptor)
        .build()
        .map_err(|source| OtlpError::Exporter {
            signal: "traces",
            source,
        })?;
    Ok((metrics, spans))
}
