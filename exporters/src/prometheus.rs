//! A Prometheus endpoint: `/metrics` in the exposition format, on loopback
//! unless told otherwise, fed by the [`MetricsBridge`](crate::metrics_bridge::MetricsBridge).
//!
//! ```no_run
//! use std::sync::Arc;
//! use tower_cql_core::{Collector, Collectors};
//! use tower_cql_exporters::metrics_bridge::MetricsBridge;
//! use tower_cql_exporters::prometheus::PrometheusExporter;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // 127.0.0.1:9464 by default; install it before creating the bridge
//! let exporter = PrometheusExporter::builder().install()?;
//! let collectors = Collectors::with([Arc::new(MetricsBridge::new())]);
//! println!("scrape http://{}/metrics", exporter.address());
//! # let _ = collectors; Ok(()) }
//! ```
//!
//! The end-to-end duration histogram is
//! `db_client_operation_duration_seconds`, with the bucket boundaries of
//! the OpenTelemetry database conventions (1 ms … 10 s); every metric has
//! help text and its unit in its name (`_seconds`, `_total`). A label
//! value is written as it was given, whatever it holds (quotes,
//! backslashes, newlines escaped as the exposition format says), so two
//! different values are never one series.

use std::borrow::Cow;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::metrics_bridge::{ATTEMPT_DURATION, OPERATION_DURATION};

/// Bucket boundaries (seconds) of `db.client.operation.duration` in the
/// OpenTelemetry database semantic conventions.
pub use tower_cql_core::semconv::DB_CLIENT_OPERATION_DURATION_BUCKETS as DB_DURATION_BUCKETS;

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrometheusError {
    /// The recorder could not be built.
    #[error(
        "cannot start the Prometheus exporter on {addr}: {source} (is the address free and local?)"
    )]
    Build {
        /// The listen address.
        addr: SocketAddr,
        /// The cause.
        source: metrics_exporter_prometheus::BuildError,
    },
    /// The listen address could not be bound.
    #[error(
        "cannot listen for Prometheus scrapes on {addr}: {source} (is the address free and local?)"
    )]
    Listen {
        /// The listen address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A recorder is installed already (one per process).
    #[error(
        "a metrics recorder is installed already: install the Prometheus exporter once, before other recorders"
    )]
    RecorderInstalled,
    /// Not inside a Tokio runtime.
    #[error("the Prometheus exporter must be installed inside a Tokio runtime")]
    NoRuntime,
    /// The bucket boundaries given to
    /// [`PrometheusExporterBuilder::buckets`] cannot make a histogram.
    #[error(
        "PrometheusExporterBuilder::buckets({buckets:?}): {reason} (give finite boundaries in seconds, each once, in increasing order; +Inf is always added)"
    )]
    Buckets {
        /// The boundaries given.
        buckets: Vec<f64>,
        /// What is wrong with them.
        reason: &'static str,
    },
}

/// Configures the exporter.
#[derive(Debug, Clone)]
pub struct PrometheusExporterBuilder {
    listen: SocketAddr,
    buckets: Vec<f64>,
    upkeep: Duration,
}

impl PrometheusExporterBuilder {
    /// The address to serve `/metrics` on (default `127.0.0.1:9464`:
    /// loopback; choose another interface deliberately).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Bucket boundaries for the duration histograms, in seconds: finite,
    /// each once, in increasing order (`+Inf` is always added). Others
    /// are refused by `install()` ([`PrometheusError::Buckets`]): out of
    /// order, a bucket would count values above its `le`; repeated, the
    /// exposition would have a series twice.
    pub fn buckets(mut self, boundaries: &[f64]) -> Self {
        self.buckets = boundaries.to_vec();
        self
    }

    /// Installs the global `metrics` recorder and starts the listener.
    ///
    /// One task serves `/metrics` (a `GET` or `HEAD` on any path; another
    /// method is answered `405`) and runs the recorder's periodic upkeep;
    /// each scrape is answered on a task of its own, with the connection
    /// closed after it. [`PrometheusExporter::stop`], or dropping the
    /// exporter, stops them all.
    pub fn install(self) -> Result<PrometheusExporter, PrometheusError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(PrometheusError::NoRuntime);
        }
        let bind = |source| PrometheusError::Listen {
            addr: self.listen,
            source,
        };
        let (recorder, handle) = self.recorder()?;
        let listener = std::net::TcpListener::bind(self.listen).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(bind)?;
        let address = listener.local_addr().map_err(bind)?;
        metrics::set_global_recorder(recorder).map_err(|_| PrometheusError::RecorderInstalled)?;
        let task = tokio::spawn(serve(listener, handle.clone(), self.upkeep));
        Ok(PrometheusExporter {
            handle,
            address,
            task,
        })
    }
}

/// How long the listener waits after `accept` failed before it tries
/// again (see [`serve`]).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves scrapes on `listener` and runs `handle`'s upkeep every
/// `upkeep`, until aborted; the scrapes being answered end with it.
///
/// When `accept` fails, it waits [`ACCEPT_RETRY`] before trying again:
/// the usual cause, the process out of file descriptors, makes every
/// `accept` fail at once until one is free (the connection stays in the
/// backlog), and trying again at once kept a core busy meanwhile.
async fn serve(listener: tokio::net::TcpListener, handle: PrometheusHandle, upkeep: Duration) {
    let mut scrapes = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(upkeep);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if scrapes.len() >= PrometheusExporter::MAX_CONNECTIONS => {
                    busy(stream);
                }
                Ok((stream, _)) => {
                    scrapes.spawn(answer(stream, handle.clone()));
                }
                Err(_) => tokio::time::sleep(ACCEPT_RETRY).await,
            },
            _ = tick.tick() => handle.run_upkeep(),
            Some(_) = scrapes.join_next(), if !scrapes.is_empty() => {}
        }
    }
}

/// Closes a connection past [`PrometheusExporter::MAX_CONNECTIONS`] at
/// once, a `503` written first without reading its request (what the
/// socket takes at once: it never waits).
fn busy(stream: tokio::net::TcpStream) {
    let _ = stream.try_write(
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 34\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections: retry later\n",
    );
}

/// Answers one HTTP/1.x request on `stream` with the exposition text and
/// closes it: `GET` (and `HEAD`, the headers alone) on any path, `405`
/// for another method, `400` for what is not a request; a client that
/// sends no complete request head within 10 s, or one over 16 KiB, is
/// dropped, and so is one that does not take its answer within 10 s.
async fn answer(stream: tokio::net::TcpStream, handle: PrometheusHandle) {
    let _ = tokio::time::timeout(Duration::from_secs(10), respond(stream, handle)).await;
}

async fn respond(mut stream: tokio::net::TcpStream, handle: PrometheusHandle) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::with_capacity(1024);
    let read = async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 || head.len() + n > 16 * 1024 {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Some(())
    };
    if read.await.is_none() {
        return;
    }
    let method = head.split(|&b| b == b' ').next().unwrap_or_default();
    let (status, body, send_body) = match method {
        b"GET" => ("200 OK", handle.render(), true),
        b"HEAD" => ("200 OK", handle.render(), false),
        m if !m.is_empty() && m.iter().all(u8::is_ascii_uppercase) => {
            ("405 Method Not Allowed", "use GET\n".to_string(), true)
        }
        _ => ("400 Bad Request", "not an HTTP request\n".to_string(), true),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n{}connection: close\r\n\r\n",
        body.len(),
        if status.starts_with("405") {
            "allow: GET, HEAD\r\n"
        } else {
            ""
        },
    )
    .into_bytes();
    if send_body {
        response.extend_from_slice(body.as_bytes());
    }
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

/// The Prometheus recorder with each label value's backslashes doubled
/// before it is handed over, the one place label values are prepared for
/// the exposition.
///
/// `metrics-exporter-prometheus` escapes quotes and newlines, but reads a
/// backslash as the start of an escape already written: it keeps `\\` as
/// one escaped backslash and drops the one before a quote, so `a\b` and
/// `a\\b` (or `c"d` and `c\"d`) came out as the same series, which a
/// Prometheus server keeps one of, and every value with a backslash read
/// back changed. With each backslash doubled first, its escaping writes
/// every value exactly (`\\`, `\"`, `\n`). Registration only: handles are
/// registered once per label set, so recording costs nothing more.
struct ExactLabels(metrics_exporter_prometheus::PrometheusRecorder);

impl ExactLabels {
    /// `key` with the backslashes of its label values doubled (itself
    /// when none has one).
    fn key(key: &Key) -> Cow<'_, Key> {
        if !key.labels().any(|l| l.value().contains('\\')) {
            return Cow::Borrowed(key);
        }
        let labels: Vec<Label> = key
            .labels()
            .map(|l| Label::new(l.key().to_string(), l.value().replace('\\', "\\\\")))
            .collect();
        Cow::Owned(Key::from_parts(key.name_shared(), labels))
    }
}

impl Recorder for ExactLabels {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_counter(key, unit, description);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_gauge(key, unit, description);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_histogram(key, unit, description);
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.0.register_counter(&ExactLabels::key(key), metadata)
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.0.register_gauge(&ExactLabels::key(key), metadata)
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.0.register_histogram(&ExactLabels::key(key), metadata)
    }
}

impl PrometheusExporterBuilder {
    /// The recorder to install, and its handle.
    fn recorder(&self) -> Result<(ExactLabels, PrometheusHandle), PrometheusError> {
        let recorder = self.recorder_builder()?.build_recorder();
        let handle = recorder.handle();
        Ok((ExactLabels(recorder), handle))
    }

    fn recorder_builder(&self) -> Result<PrometheusBuilder, PrometheusError> {
        let refuse = |reason| {
            Err(PrometheusError::Buckets {
                buckets: self.buckets.clone(),
                reason,
            })
        };
        if self.buckets.is_empty() {
            return refuse("no boundary");
        }
        if self.buckets.iter().any(|b| !b.is_finite()) {
            return refuse("a boundary is not finite");
        }
        if self.buckets.windows(2).any(|w| w[0] >= w[1]) {
            return refuse("the boundaries do not increase strictly");
        }
        let build = |e| PrometheusError::Build {
            addr: self.listen,
            source: e,
        };
        PrometheusBuilder::new()
            .upkeep_timeout(self.upkeep)
            .set_buckets_for_metric(Matcher::Full(OPERATION_DURATION.into()), &self.buckets)
            .map_err(build)?
            .set_buckets_for_metric(Matcher::Full(ATTEMPT_DURATION.into()), &self.buckets)
            .map_err(build)
    }

    /// Installs the global `metrics` recorder without a listener of its
    /// own, for serving `/metrics` from the application's HTTP server
    /// (axum, hyper, ...): call [`PrometheusRecorder::render`] in the
    /// handler. A task does the recorder's periodic upkeep.
    pub fn install_recorder(self) -> Result<PrometheusRecorder, PrometheusError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(PrometheusError::NoRuntime);
        }
        let (recorder, handle) = self.recorder()?;
        metrics::set_global_recorder(recorder).map_err(|_| PrometheusError::RecorderInstalled)?;
        let upkeep = handle.clone();
        let every = self.upkeep;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        Ok(PrometheusRecorder {
            handle,
            _task: std::sync::Arc::new(UpkeepTask(task)),
        })
    }
}

/// The installed recorder without a listener; see
/// [`PrometheusExporterBuilder::install_recorder`]. Cheap to clone into
/// request handlers.
#[derive(Clone)]
pub struct PrometheusRecorder {
    handle: PrometheusHandle,
    // the upkeep task, stopped when the last clone is dropped
    _task: std::sync::Arc<UpkeepTask>,
}

struct UpkeepTask(tokio::task::JoinHandle<()>);

impl Drop for UpkeepTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl fmt::Debug for PrometheusRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusRecorder").finish_non_exhaustive()
    }
}

impl PrometheusRecorder {
    /// The exposition text for a `/metrics` response (content type
    /// `text/plain; version=0.0.4`).
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// A running exporter.
pub struct PrometheusExporter {
    handle: PrometheusHandle,
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for PrometheusExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusExporter")
            .field("address", &self.address)
            .finish()
    }
}

impl PrometheusExporter {
    /// Connections the exporter holds at once (each a task and a file
    /// descriptor, for up to 10 s while its request comes in and its
    /// answer goes out). A connection past them is closed at once, a `503
    /// Service Unavailable` written first where the socket takes it
    /// without waiting (a client that sent its request before may see the
    /// connection reset instead): clients that connect and send nothing
    /// cannot make the exporter hold the application's descriptors. A
    /// Prometheus server scrapes one connection at a time.
    pub const MAX_CONNECTIONS: usize = 32;

    /// A builder with the defaults (loopback, the conventions' buckets).
    pub fn builder() -> PrometheusExporterBuilder {
        PrometheusExporterBuilder {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9464)),
            buckets: DB_DURATION_BUCKETS.to_vec(),
            upkeep: Duration::from_secs(5),
        }
    }

    /// Where `/metrics` is served.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The exposition text, as a scrape would get it.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Stops serving (the recorder stays installed: it is global).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for PrometheusExporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics_bridge::MetricsBridge;
    use std::sync::Arc;
    use tower_cql_core::event::{Event, RequestEvent};
    use tower_cql_core::{Collectors, CqlRequest};

    /// What `/metrics` shows for two requests, of 50 ms and 300 ms, with
    /// `builder`'s buckets.
    fn exposition(builder: PrometheusBuilder) -> String {
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let c = Collectors::with([Arc::new(MetricsBridge::new())]);
            let req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").operation("get");
            for ms in [50, 300] {
                c.emit(Event::Request(RequestEvent::new(
                    req.meta(),
                    Duration::from_millis(ms),
                    None,
                )));
            }
        });
        handle.render()
    }

    /// Buckets of your own are each a cumulative `le` count.
    #[test]
    fn buckets_of_your_own_count_what_they_say() {
        let builder = PrometheusExporter::builder().buckets(&[0.1, 0.5]);
        let text = exposition(builder.recorder_builder().unwrap());
        for line in [
            "le=\"0.1\"} 1\n",
            "le=\"0.5\"} 2\n",
            "le=\"+Inf\"} 2\n",
            "db_client_operation_duration_seconds_count{",
        ] {
            assert!(text.contains(line), "{line:?} in {text}");
        }
    }

    /// Boundaries out of order, repeated, not finite, or none at all are
    /// refused, naming the setting: out of order, a bucket counts values
    /// above its `le` (with `[0.5, 0.1]`, `le="0.1"` counted the 300 ms
    /// request); repeated, the exposition has the same series twice, which
    /// a Prometheus server refuses.
    #[test]
    fn unusable_buckets_are_refused_naming_the_setting() {
        for bad in [
            &[0.5, 0.1][..],
            &[0.1, 0.1, 0.5],
            &[f64::NAN, 0.1],
            &[0.1, f64::INFINITY],
            &[],
        ] {
            match PrometheusExporter::builder()
                .buckets(bad)
                .recorder_builder()
            {
                Err(e) => {
                    let message = e.to_string();
                    assert!(
                        matches!(e, PrometheusError::Buckets { .. }),
                        "{bad:?}: {message}"
                    );
                    assert!(message.contains("buckets("), "{bad:?}: {message}");
                }
                Ok(builder) => panic!(
                    "buckets {bad:?} accepted; the exposition of 50 ms and 300 ms:\n{}",
                    exposition(builder)
                ),
            }
        }
    }
}
