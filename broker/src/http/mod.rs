//! The HTTP API (axum), on `http_addr` (HTTPS when a certificate is set).
//!
//! Routes: `POST /v1/register`, `POST /v1/login` (a session token and the
//! MQTT endpoints, [`discovery`]), `POST /v1/logout`, `POST /v1/password`
//! ([`accounts`]), `POST /v1/system-messages` ([`system`]), `GET
//! /v1/health`, `GET /metrics`, and the web chat client at `GET /`
//! ([`web`]).
//!
//! Every error is JSON `{"error": {"code", "message"}}` ([`ApiError`]) with
//! a stable code; unknown routes are 404 `NOT_FOUND`, bodies over
//! [`MAX_BODY_BYTES`] (system messages: [`MAX_SYSTEM_MESSAGE_BYTES`]) 413
//! `TOO_LARGE`. Each request runs in a `http`
//! tracing span.
//! Must not: apply chat rules or touch RocksDB directly (accounts, auth and
//! the store do, on blocking threads).

pub mod accounts;
pub mod discovery;
pub mod error;
pub mod system;
pub mod web;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::{Listener, ListenerExt};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use discovery::{Discovery, Listeners};
pub use error::ApiError;

use crate::mqtt::Shared;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The largest body of `POST /v1/system-messages`: room for a text of the
/// contract's 100,000 characters at 4 bytes each, JSON-escaped.
pub const MAX_SYSTEM_MESSAGE_BYTES: usize = 1024 * 1024;

/// What the HTTP handlers share. Cheap to clone.
#[derive(Clone)]
pub struct HttpState(Arc<Api>);

/// The state behind [`HttpState`].
pub struct Api {
    pub shared: Arc<Shared>,
    metrics: PrometheusHandle,
    discovery: Discovery,
    /// Held while a registration checks and writes its account id.
    registering: tokio::sync::Mutex<()>,
}

impl std::ops::Deref for HttpState {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.0
    }
}

impl HttpState {
    /// `metrics`: the handle from [`crate::metrics::install`]; `listeners`:
    /// the bound MQTT listeners, for discovery.
    pub fn new(shared: Arc<Shared>, metrics: PrometheusHandle, listeners: Listeners) -> Self {
        let mut discovery = Discovery::new(&shared.config, listeners);
        if let Some(cluster) = &shared.cluster {
            cluster.advertise(discovery.registered());
            discovery = discovery.with_directory(cluster.directory());
        }
        HttpState(Arc::new(Api {
            shared,
            metrics,
            discovery,
            registering: tokio::sync::Mutex::new(()),
        }))
    }
}

/// The routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/v1/register", post(accounts::register))
        .route("/v1/login", post(accounts::login))
        .route("/v1/logout", post(accounts::logout))
        .route("/v1/password", post(accounts::change_password))
        .route(
            "/v1/system-messages",
            post(system::send).layer(DefaultBodyLimit::max(MAX_SYSTEM_MESSAGE_BYTES)),
        )
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics_text))
        .merge(web::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(trace_request))
        .with_state(state)
}

/// The IP address a request came from (unspecified if unknown).
pub struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
        Ok(ClientAddr(addr))
    }
}

/// Serves the HTTP API on `listener` until `shutdown` is cancelled, then
/// lets requests in progress finish.
///
/// `listener`: a `tokio::net::TcpListener` (HTTP) or a
/// [`crate::tls::TlsListener`] (HTTPS). Either way handlers can extract the
/// peer address as `ConnectInfo<SocketAddr>`.
pub async fn serve<L>(
    listener: L,
    state: HttpState,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    // A no-op tap: axum implements `Connected` (the peer address for
    // `ConnectInfo`) for any listener wrapped in `TapIo`, not for ours.
    let listener = listener.tap_io(|_| {});
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
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

/// One span per request (with the client's address); the outcome is logged
/// at debug level.
async fn trace_request(request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.to_string())
        .unwrap_or_default();
    let span = tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), %peer);
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
