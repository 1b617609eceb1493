//! The HTTP API (axum): `GET /v1/health` and `GET /metrics` for now.
//!
//! Every error is JSON `{"error": {"code", "message"}}` ([`ApiError`]), with
//! the contract's `ErrorCode` names as codes; unknown routes are 404
//! `NOT_FOUND`. Each request runs in a `http` tracing span.
//!
//! Later issue (HTTP API and tokens): `POST /v1/register`, `POST /v1/login`
//! and `POST /v1/logout` go in [`router`], with what they need (the store,
//! the token table, the endpoints to advertise) added to [`HttpState`].

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// What the HTTP handlers share. Cheap to clone.
#[derive(Clone)]
pub struct HttpState {
    metrics: PrometheusHandle,
}

impl HttpState {
    /// `metrics`: the handle from [`crate::metrics::install`].
    pub fn new(metrics: PrometheusHandle) -> Self {
        Self { metrics }
    }
}

/// An error answered as JSON `{"error": {"code": CODE, "message": MESSAGE}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// A contract `ErrorCode` name: `BAD_REQUEST`, `NOT_FOUND`, `FORBIDDEN`, ...
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

/// The routes. Public so tests (and a later TLS front) can mount them.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics_text))
        // Later issue (HTTP API and tokens): /v1/register, /v1/login, /v1/logout.
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(trace_request))
        .with_state(state)
}

/// Serves the HTTP API on `listener` until `shutdown` is cancelled, then
/// lets requests in progress finish.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn metrics_text(State(state): State<HttpState>) -> impl IntoResponse {
    let text = crate::metrics::render(&state.metrics);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such route: {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    let message = format!("method {method} is not allowed on {}", uri.path());
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "BAD_REQUEST", message)
}

/// One span per request; the outcome is logged at debug level.
async fn trace_request(request: Request, next: Next) -> Response {
    let span =
        tracing::info_span!("http", method = %request.method(), path = %request.uri().path());
    async move {
        let started = Instant::now();
        let response = next.run(request).await;
        let elapsed_us = started.elapsed().as_micros() as u64;
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_us,
            "request served"
        );
        response
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn start() -> (
        SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let state = HttpState::new(crate::metrics::install());
        let task = tokio::spawn(serve(listener, state, shutdown.clone()));
        (addr, shutdown, task)
    }

    /// A bare HTTP/1.1 request; returns the status code and the body.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn health_is_ok() {
        let (addr, shutdown, _task) = start().await;
        let (status, body) = request(addr, "GET", "/v1/health").await;
        assert_eq!(status, 200);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body, json!({ "status": "ok" }));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let (addr, shutdown, _task) = start().await;
        crate::metrics::connection_opened();
        crate::metrics::connection_closed();
        let (status, body) = request(addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains(crate::metrics::CONNECTIONS_TOTAL), "{body}");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn unknown_route_is_json_not_found() {
        let (addr, shutdown, _task) = start().await;
        let (status, body) = request(addr, "GET", "/v1/nope").await;
        assert_eq!(status, 404);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "NOT_FOUND");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/nope"));
        let (status, body) = request(addr, "POST", "/v1/health").await;
        assert_eq!(status, 405);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "BAD_REQUEST");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn shutdown_stops_serving() {
        let (addr, shutdown, task) = start().await;
        assert_eq!(request(addr, "GET", "/v1/health").await.0, 200);
        shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), task).await;
        result
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    }
}
