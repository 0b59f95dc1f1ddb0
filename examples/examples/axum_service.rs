//! An axum web service that runs its CQL through the tower-cql stack (one
//! logical request per HTTP request) and serves the stack's metrics at
//! `/metrics` from the same server.
//!
//! `cargo run -p tower-cql-examples --example axum_service` starts the
//! service on a free loopback port, calls it a few times, prints what it
//! answered and the metrics, and shuts down cleanly.
//! `cargo run -p tower-cql-examples --example axum_service -- --serve`
//! keeps serving on 127.0.0.1:3000 until Ctrl-C.
//!
//! Against a real cluster: `SCYLLA_URI=host:9042 cargo run ...`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;
use tower_cql_core::{Collectors, CqlError, CqlRequest, DriverService, ErrorKind, Statement};
use tower_cql_exporters::metrics_bridge::MetricsBridge;
use tower_cql_exporters::prometheus::{PrometheusExporter, PrometheusRecorder};
use tower_cql_middleware::retry::RetryConfig;
use tower_cql_middleware::stack::{SessionService, StackBuilder};
use tower_cql_middleware::timeout::TimeoutConfig;

/// What every handler shares: the stack (cheap to clone: the layers' state
/// is shared) and the metrics.
#[derive(Clone)]
struct App {
    cql: SessionService,
    metrics: PrometheusRecorder,
    get_user: Statement,
    put_user: Statement,
}

/// A CQL error as an HTTP answer: refusals and overload are 503 (retry
/// later), timeouts 504, the rest 500. The message says what happened;
/// it never carries bound values (the stack does not record them).
struct HttpError(CqlError);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = match self.0.kind() {
            ErrorKind::ShutDown
            | ErrorKind::Overloaded
            | ErrorKind::Unavailable
            | ErrorKind::RateLimited
            | ErrorKind::Shed
            | ErrorKind::CircuitOpen => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::DeadlineExceeded | ErrorKind::ClientTimeout | ErrorKind::ReadTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = Json(json!({ "error": self.0.kind().as_str(), "message": self.0.to_string() }));
        (status, body).into_response()
    }
}

impl From<CqlError> for HttpError {
    fn from(e: CqlError) -> HttpError {
        HttpError(e)
    }
}

async fn get_user(State(app): State<App>, Path(id): Path<i32>) -> Result<Response, HttpError> {
    let resp = app.cql.oneshot(app.get_user.request().bind((id,))).await?;
    Ok(match resp.rows::<(String,)>()?.pop() {
        Some((name,)) => Json(json!({ "id": id, "name": name })).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({ "id": id }))).into_response(),
    })
}

async fn put_user(
    State(app): State<App>,
    Path(id): Path<i32>,
    name: String,
) -> Result<StatusCode, HttpError> {
    app.cql
        .oneshot(app.put_user.request().bind((id, name)))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

/// One HTTP/1.1 request with a plain socket (the example's own check).
async fn call(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

fn status_and_body(resp: &str) -> String {
    let status = resp.lines().next().unwrap_or_default();
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
    format!("{status}  {body}")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve = std::env::args().any(|a| a == "--serve");
    let (session, _cluster) = common::connect().await?;

    // Metrics: the stack's events -> the `metrics` facade -> Prometheus text.
    let recorder = PrometheusExporter::builder().install_recorder()?;
    let collectors = Collectors::with([Arc::new(MetricsBridge::new())]);
    let driver = DriverService::builder(session).build()?;
    for cql in [
        "CREATE KEYSPACE IF NOT EXISTS demo WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE IF NOT EXISTS demo.users (id int PRIMARY KEY, name text)",
    ] {
        driver.execute(CqlRequest::unprepared(cql)).await?;
    }
    let stack = StackBuilder::new(collectors)
        .retry(RetryConfig::default())
        .timeout(TimeoutConfig {
            per_attempt: Some(Duration::from_secs(2)),
            honour_deadline: true,
        })
        .build(driver)?;

    let app = App {
        cql: stack.service(),
        metrics: recorder,
        get_user: Statement::new("SELECT name FROM demo.users WHERE id = ?")
            .operation("get_user")
            .idempotent(true),
        put_user: Statement::new("INSERT INTO demo.users (id, name) VALUES (?, ?)")
            .operation("put_user")
            .idempotent(true),
    };
    let router = Router::new()
        .route("/users/{id}", get(get_user).put(put_user))
        .route("/metrics", get(metrics))
        .with_state(app);

    // Loopback only; a service meant for other hosts binds deliberately.
    let listen = if serve {
        "127.0.0.1:3000"
    } else {
        "127.0.0.1:0"
    };
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await
    });
    println!("serving on http://{addr} (GET/PUT /users/{{id}}, GET /metrics)");

    if serve {
        tokio::signal::ctrl_c().await?;
    } else {
        for (method, path, body) in [
            ("PUT", "/users/1", "ada"),
            ("PUT", "/users/2", "grace"),
            ("GET", "/users/1", ""),
            ("GET", "/users/2", ""),
            ("GET", "/users/3", ""),
        ] {
            let resp = call(addr, method, path, body).await;
            println!("{method} {path} -> {}", status_and_body(&resp));
        }
        let scrape = call(addr, "GET", "/metrics", "").await;
        assert!(scrape.starts_with("HTTP/1.1 200"));
        println!("GET /metrics -> the operation duration histogram:");
        for line in scrape.lines().filter(|l| {
            l.starts_with("db_client_operation_duration_seconds_count")
                && (l.contains("get_user") || l.contains("put_user"))
        }) {
            println!("  {line}");
        }
    }

    // Stop taking HTTP requests, then drain the stack and flush collectors.
    let _ = stop_tx.send(());
    server.await??;
    stack.close().await;
    println!("shut down cleanly");
    Ok(())
}
