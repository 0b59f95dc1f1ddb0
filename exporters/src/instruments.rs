//! The paged-read instruments, defined once for every metrics exporter:
//! the [`MetricsBridge`](crate::metrics_bridge::MetricsBridge) (and so the
//! Prometheus endpoint) and the [`OtelCollector`](crate::otel::OtelCollector)
//! record the same counters, under the same names, with the same unit and
//! attribute.
//!
//! A name is given in both spellings: OpenTelemetry's (`db.client.pages`)
//! and the Prometheus one (`db_client_pages_total`), which is what an
//! OTLP-to-Prometheus translation makes of the first (dots to
//! underscores, `_total` after a counter's name), so a dashboard reads
//! the same series whichever exporter fed it.
//!
//! ```
//! use tower_cql_exporters::instruments::{PAGES, STREAMS};
//!
//! assert_eq!(PAGES.otel, "db.client.pages");
//! assert_eq!(PAGES.prometheus, "db_client_pages_total");
//! assert_eq!(STREAMS.attribute, Some("end"));
//! ```

/// One counter: its names, unit, help text and attribute.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Counter {
    /// The OpenTelemetry name (the [`OtelCollector`](crate::otel::OtelCollector)'s).
    pub otel: &'static str,
    /// The Prometheus name (the [`MetricsBridge`](crate::metrics_bridge::MetricsBridge)'s).
    pub prometheus: &'static str,
    /// The unit, in UCUM annotation form (`{page}`).
    pub unit: &'static str,
    /// The help text.
    pub description: &'static str,
    /// The attribute (label) key, if the counter has one.
    pub attribute: Option<&'static str>,
}

/// Pages fetched by paged reads, one per page event.
pub const PAGES: Counter = Counter {
    otel: "db.client.pages",
    prometheus: "db_client_pages_total",
    unit: "{page}",
    description: "Pages fetched by paged reads",
    attribute: None,
};

/// Rows in the pages fetched by paged reads.
pub const PAGE_ROWS: Counter = Counter {
    otel: "db.client.page_rows",
    prometheus: "db_client_page_rows_total",
    unit: "{row}",
    description: "Rows in the pages fetched by paged reads",
    attribute: None,
};

/// The attribute of [`STREAMS`]: how the paged read ended.
pub const STREAM_END: &str = "end";

/// Paged reads ended, one per stream event, by how they ended (`end`:
/// `finished`, `failed`, `dropped`).
pub const STREAMS: Counter = Counter {
    otel: "db.client.streams",
    prometheus: "db_client_streams_total",
    unit: "{stream}",
    description: "Paged reads ended, by how they ended",
    attribute: Some(STREAM_END),
};

/// Every counter defined here.
pub const ALL: [Counter; 3] = [PAGES, PAGE_ROWS, STREAMS];

#[cfg(test)]
mod tests {
    use super::*;

    /// Each Prometheus spelling is the OTLP-to-Prometheus translation of
    /// the OpenTelemetry one: the two cannot say different things.
    #[test]
    fn the_prometheus_name_translates_the_otel_name() {
        for c in ALL {
            assert_eq!(
                c.prometheus,
                format!("{}_total", c.otel.replace('.', "_")),
                "{c:?}"
            );
            assert!(c.unit.starts_with('{') && c.unit.ends_with('}'), "{c:?}");
        }
    }
}
