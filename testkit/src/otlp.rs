//! An in-process OTLP receiver for tests and examples: a real server, on
//! `127.0.0.1` and a port chosen by the OS, that speaks both OTLP
//! transports on one port and keeps every request it decodes.
//!
//! - gRPC: `opentelemetry.proto.collector.{metrics,trace}.v1` `Export`,
//!   served by the stubs `opentelemetry-proto` generates for tonic;
//! - HTTP/protobuf: `POST /v1/metrics` and `POST /v1/traces`, bodies
//!   decoded with prost.
//!
//! ```no_run
//! use tower_cql_testkit::otlp::{OtlpReceiver, Transport, attribute_str};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let receiver = OtlpReceiver::start().await?;
//! // point an OTLP exporter at receiver.endpoint() (gRPC or HTTP/protobuf) ...
//! if let Some(found) = receiver.metric("db.client.operation.duration") {
//!     assert_eq!(found.metric.unit, "s");
//!     assert_eq!(found.transport, Transport::Grpc);
//! }
//! for s in receiver.spans_named("SELECT ks.users") {
//!     println!("{:?}", attribute_str(&s.span.attributes, "db.system.name"));
//! }
//! # Ok(()) }
//! ```
//!
//! Requests are answered with an empty success response once recorded, so
//! an exporter's flush returning means its data is here.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tonic::codegen::Service as _;

pub use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
pub use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
pub use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue, any_value};
/// The OTLP metrics messages (`HistogramDataPoint`, `NumberDataPoint`, ...).
pub use opentelemetry_proto::tonic::metrics::v1 as metrics;
pub use opentelemetry_proto::tonic::metrics::v1::{Histogram, Metric, Sum, metric};
pub use opentelemetry_proto::tonic::resource::v1::Resource;
/// The OTLP trace messages (`Span`, `Status`, `span::SpanKind`, ...).
pub use opentelemetry_proto::tonic::trace::v1 as trace;
pub use opentelemetry_proto::tonic::trace::v1::Span;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};

/// How a request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with a protobuf body.
    HttpProtobuf,
}

/// One decoded export request, with how it came and its headers (gRPC
/// metadata for gRPC).
#[derive(Debug, Clone)]
pub struct Received<T> {
    /// The transport it came over.
    pub transport: Transport,
    /// Header names (lowercase) and values, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The decoded request.
    pub request: T,
}

impl<T> Received<T> {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A metric as found in an export request, with where it came from.
#[derive(Debug, Clone)]
pub struct FoundMetric {
    /// The transport of the request it was in.
    pub transport: Transport,
    /// The resource it was reported under.
    pub resource: Option<Resource>,
    /// Its instrumentation scope.
    pub scope: Option<InstrumentationScope>,
    /// The metric.
    pub metric: Metric,
}

impl FoundMetric {
    /// The data points if it is a histogram.
    pub fn histogram(&self) -> Option<&Histogram> {
        match &self.metric.data {
            Some(metric::Data::Histogram(h)) => Some(h),
            _ => None,
        }
    }

    /// The data points if it is a sum (a counter).
    pub fn sum(&self) -> Option<&Sum> {
        match &self.metric.data {
            Some(metric::Data::Sum(s)) => Some(s),
            _ => None,
        }
    }
}

/// A span as found in an export request, with where it came from.
#[derive(Debug, Clone)]
pub struct FoundSpan {
    /// The transport of the request it was in.
    pub transport: Transport,
    /// The resource it was reported under.
    pub resource: Option<Resource>,
    /// Its instrumentation scope.
    pub scope: Option<InstrumentationScope>,
    /// The span.
    pub span: Span,
}

/// The value of `key` among OTLP attributes.
pub fn attribute<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

/// The value of `key` among OTLP attributes as text (strings as they are,
/// numbers and booleans formatted; arrays, maps and bytes as `None`).
pub fn attribute_str(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attrs, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

#[derive(Default)]
struct State {
    metrics: Mutex<Vec<Received<ExportMetricsServiceRequest>>>,
    traces: Mutex<Vec<Received<ExportTraceServiceRequest>>>,
    arrived: Notify,
}

impl State {
    fn add_metrics(&self, r: Received<ExportMetricsServiceRequest>) {
        self.metrics.lock().expect("not poisoned").push(r);
        self.arrived.notify_waiters();
    }

    fn add_traces(&self, r: Received<ExportTraceServiceRequest>) {
        self.traces.lock().expect("not poisoned").push(r);
        self.arrived.notify_waiters();
    }
}

/// The receiver; stops serving when dropped. See the module docs.
pub struct OtlpReceiver {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for OtlpReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpReceiver")
            .field("addr", &self.addr)
            .field(
                "metrics_requests",
                &self.state.metrics.lock().expect("not poisoned").len(),
            )
            .field(
                "trace_requests",
                &self.state.traces.lock().expect("not poisoned").len(),
            )
            .finish()
    }
}

impl OtlpReceiver {
    /// Binds `127.0.0.1:0` and serves gRPC and HTTP/protobuf there until dropped.
    pub async fn start() -> io::Result<OtlpReceiver> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let task = tokio::spawn(serve(listener, state.clone()));
        Ok(OtlpReceiver { addr, state, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint to give an exporter, e.g. `http://127.0.0.1:40123`,
    /// for either protocol.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every metrics export request so far, in arrival order.
    pub fn metrics_requests(&self) -> Vec<Received<ExportMetricsServiceRequest>> {
        self.state.metrics.lock().expect("not poisoned").clone()
    }

    /// Every trace export request so far, in arrival order.
    pub fn trace_requests(&self) -> Vec<Received<ExportTraceServiceRequest>> {
        self.state.traces.lock().expect("not poisoned").clone()
    }

    /// The metric named `name` in the latest request that has it (with
    /// cumulative temporality, the latest holds the totals).
    pub fn metric(&self, name: &str) -> Option<FoundMetric> {
        let requests = self.state.metrics.lock().expect("not poisoned");
        requests.iter().rev().find_map(|r| {
            r.request.resource_metrics.iter().find_map(|rm| {
                rm.scope_metrics.iter().find_map(|sm| {
                    sm.metrics
                        .iter()
                        .find(|m| m.name == name)
                        .map(|m| FoundMetric {
                            transport: r.transport,
                            resource: rm.resource.clone(),
                            scope: sm.scope.clone(),
                            metric: m.clone(),
                        })
                })
            })
        })
    }

    /// The names of all metrics received, sorted, without duplicates.
    pub fn metric_names(&self) -> Vec<String> {
        let requests = self.state.metrics.lock().expect("not poisoned");
        let mut names: Vec<String> = requests
            .iter()
            .flat_map(|r| &r.request.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .map(|m| m.name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Every span received, in arrival order.
    pub fn spans(&self) -> Vec<FoundSpan> {
        let requests = self.state.traces.lock().expect("not poisoned");
        let mut out = Vec::new();
        for r in requests.iter() {
            for rs in &r.request.resource_spans {
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push(FoundSpan {
                            transport: r.transport,
                            resource: rs.resource.clone(),
                            scope: ss.scope.clone(),
                            span: s.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// The spans named `name`, in arrival order.
    pub fn spans_named(&self, name: &str) -> Vec<FoundSpan> {
        let mut spans = self.spans();
        spans.retain(|s| s.span.name == name);
        spans
    }

    /// Waits until `ready(self)` holds, checking on each arrival, for at
    /// most `limit`; returns whether it held. For data an exporter sends on
    /// its own schedule; after a flush the data is already here.
    pub async fn wait_until(&self, limit: Duration, ready: impl Fn(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let arrived = self.state.arrived.notified();
            if ready(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return ready(self);
            }
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet: connections end too.
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let state = state.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(req, state.clone()));
            // HTTP/1.1 for OTLP/HTTP, HTTP/2 (prior knowledge) for gRPC.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Body = tonic::body::Body;

fn headers_of(h: &http::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::new(Full::new(Bytes::from_static(text.as_bytes()))));
    *r.status_mut() = status;
    r
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if path.starts_with("/opentelemetry.proto.collector.metrics.v1.MetricsService/") {
        return MetricsServiceServer::new(Grpc(state)).call(req).await;
    }
    if path.starts_with("/opentelemetry.proto.collector.trace.v1.TraceService/") {
        return TraceServiceServer::new(Grpc(state)).call(req).await;
    }
    if path != "/v1/metrics" && path != "/v1/traces" {
        return Ok(plain(StatusCode::NOT_FOUND, "not an OTLP path"));
    }
    if req.method() != Method::POST {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "POST only"));
    }
    let is_protobuf = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/x-protobuf"));
    if !is_protobuf {
        return Ok(plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "only application/x-protobuf",
        ));
    }
    let headers = headers_of(req.headers());
    let Ok(body) = req.into_body().collect().await else {
        return Ok(plain(StatusCode::BAD_REQUEST, "body not read"));
    };
    let body = body.to_bytes();
    let response = if path == "/v1/metrics" {
        let Ok(request) = ExportMetricsServiceRequest::decode(body) else {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                "not an ExportMetricsServiceRequest",
            ));
        };
        state.add_metrics(Received {
            transport: Transport::HttpProtobuf,
            headers,
            request,
        });
        ExportMetricsServiceResponse::default().encode_to_vec()
    } else {
        let Ok(request) = ExportTraceServiceRequest::decode(body) else {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                "not an ExportTraceServiceRequest",
            ));
        };
        state.add_traces(Received {
            transport: Transport::HttpProtobuf,
            headers,
            request,
        });
        ExportTraceServiceResponse::default().encode_to_vec()
    };
    let mut r = Response::new(Body::new(Full::new(Bytes::from(response))));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    Ok(r)
}

/// The gRPC services, recording into the shared state.
struct Grpc(Arc<State>);

type GrpcFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send + 'a>>;

impl MetricsService for Grpc {
    // The trait is declared with #[async_trait]; this is its expansion.
    fn export<'life0, 'async_trait>(
        &'life0 self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> GrpcFuture<'async_trait, ExportMetricsServiceResponse>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let headers = headers_of(&request.metadata().clone().into_headers());
        self.0.add_metrics(Received {
            transport: Transport::Grpc,
            headers,
            request: request.into_inner(),
        });
        Box::pin(async { Ok(tonic::Response::new(ExportMetricsServiceResponse::default())) })
    }
}

impl TraceService for Grpc {
    fn export<'life0, 'async_trait>(
        &'life0 self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> GrpcFuture<'async_trait, ExportTraceServiceResponse>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let headers = headers_of(&request.metadata().clone().into_headers());
        self.0.add_traces(Received {
            transport: Transport::Grpc,
            headers,
            request: request.into_inner(),
        });
        Box::pin(async { Ok(tonic::Response::new(ExportTraceServiceResponse::default())) })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, ScopeMetrics};

    /// One HTTP/1.1 request over a fresh connection; the response's status.
    async fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> u16 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\nx-api-key: k1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out);
        text.split(' ').nth(1).unwrap().parse().unwrap()
    }

    fn one_metric(name: &str) -> Vec<u8> {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: name.into(),
                        unit: "s".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    #[tokio::test]
    async fn http_protobuf_requests_are_decoded_and_recorded() {
        let r = OtlpReceiver::start().await.unwrap();
        assert!(r.endpoint().starts_with("http://127.0.0.1:"));
        let status = post(
            r.addr(),
            "/v1/metrics",
            "application/x-protobuf",
            &one_metric("m1"),
        )
        .await;
        assert_eq!(status, 200);
        assert!(
            r.wait_until(Duration::from_secs(5), |r| r.metric("m1").is_some())
                .await
        );
        let m = r.metric("m1").unwrap();
        assert_eq!(m.transport, Transport::HttpProtobuf);
        assert_eq!(m.metric.unit, "s");
        assert_eq!(r.metrics_requests()[0].header("X-Api-Key"), Some("k1"));
        assert_eq!(r.metric_names(), vec!["m1".to_string()]);
        assert!(r.metric("m2").is_none());
    }

    #[tokio::test]
    async fn what_is_not_otlp_is_refused_and_not_recorded() {
        let r = OtlpReceiver::start().await.unwrap();
        let body = one_metric("m1");
        assert_eq!(
            post(r.addr(), "/v1/logs", "application/x-protobuf", &body).await,
            404
        );
        assert_eq!(
            post(r.addr(), "/v1/metrics", "application/json", b"{}").await,
            415
        );
        assert_eq!(
            post(
                r.addr(),
                "/v1/traces",
                "application/x-protobuf",
                b"\xff\xff\xff"
            )
            .await,
            400
        );
        assert!(r.metrics_requests().is_empty());
        assert!(r.trace_requests().is_empty());
        assert!(
            !r.wait_until(Duration::from_millis(50), |r| r.metric("m1").is_some())
                .await
        );
    }
}
