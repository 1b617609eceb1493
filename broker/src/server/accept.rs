//! The MQTT accept loops: admission ([`crate::mqtt::admission`]) at
//! accept, a connection beyond a limit closed at once; each admitted one in
//! its own task, where its TLS and WebSocket handshakes run, each within
//! its timeout, before `mqtt::connection::serve` takes over. So a stalled
//! handshake never holds up the next accept.
//!
//! Must not: bind listeners or start services (`listen.rs`, `services.rs`)
//! or read MQTT packets (the connection does).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{FutureExt, OptionFuture};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::listen::Listener;
use crate::metrics as m;
use crate::mqtt::admission::{Admission, Admitted, Refused};
use crate::mqtt::connection;
use crate::mqtt::transport::{Stream, Transport};
use crate::mqtt::Shared;
use crate::tls::{self, ServerTlsStream};

/// What the MQTT accept loops and their connection tasks share.
pub(super) struct Front {
    pub(super) shared: Arc<Shared>,
    pub(super) admission: Admission,
    pub(super) ws_config: WebSocketConfig,
    pub(super) tls_timeout: Duration,
    pub(super) tasks: TaskTracker,
    pub(super) shutdown: CancellationToken,
}

/// WebSocket limits: no frame or message above `max_packet_size`. tungstenite
/// checks a frame's announced length as soon as its header is read, before
/// buffering any of it.
pub(super) fn websocket_config(max_packet_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_frame_size(Some(max_packet_size))
        .max_message_size(Some(max_packet_size))
}

/// Accepts connections until shutdown; each admitted one gets its own task,
/// any other is closed at once.
pub(super) async fn accept_loop(listener: TcpListener, kind: Listener, front: Arc<Front>) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = front.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, listener = kind.name(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admitted = match front.admission.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(refused) => {
                refuse(peer, &kind, refused);
                continue; // dropping `stream` closes it
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = serve_connection(front.clone(), stream, peer, kind.clone(), admitted);
        front.tasks.spawn(connection);
    }
}

fn refuse(peer: SocketAddr, kind: &Listener, refused: Refused) {
    let reason = refused.reason();
    tracing::warn!(%peer, listener = kind.name(), reason, "connection refused");
    m::refused(reason);
}

/// One admitted connection: handshakes, then the MQTT connection. `open`
/// is held until the end; `connecting` until CONNECT is authenticated.
///
/// Built from combinators, not as an `async` block: a block keeps what it
/// captures, and every binding in scope at an `.await`, in its state for
/// its whole life, and awaiting a future held in a binding stores it
/// twice. The boxed handshakes take everything but `open` and hand back
/// the MQTT connection's future, which then takes their place: every idle
/// connection's task holds that future, the permit and a tag, and fits
/// tokio's 1,024-byte task cell (see the size test).
fn serve_connection(
    front: Arc<Front>,
    stream: TcpStream,
    peer: SocketAddr,
    kind: Listener,
    admitted: Admitted,
) -> impl Future<Output = ()> + Send {
    let Admitted { open, connecting } = admitted;
    let handshakes = Box::pin(async move {
        let transport = upgrade_unless_shut_down(stream, peer, kind, front.clone()).await?;
        let (shared, shutdown) = (front.shared.clone(), front.shutdown.clone());
        Some(connection::serve(
            transport, peer, connecting, shared, shutdown,
        ))
    });
    handshakes
        .map(OptionFuture::from)
        .flatten()
        .map(move |_| drop(open))
}

/// [`upgrade`], abandoned at shutdown.
async fn upgrade_unless_shut_down(
    stream: TcpStream,
    peer: SocketAddr,
    kind: Listener,
    front: Arc<Front>,
) -> Option<Transport> {
    tokio::select! {
        _ = front.shutdown.cancelled() => None,
        transport = upgrade(stream, peer, &kind, &front) => transport,
    }
}

/// Turns an accepted socket into a transport: the TLS handshake (within
/// `tls_handshake_timeout_secs`), then the WebSocket one on `/mqtt` (within
/// `connect_timeout_secs`). `None`: refused, logged and counted.
async fn upgrade(
    stream: TcpStream,
    peer: SocketAddr,
    kind: &Listener,
    front: &Front,
) -> Option<Transport> {
    match kind {
        Listener::Tcp => Some(Transport::Tcp(stream)),
        Listener::Tls(acceptor) => {
            let tls = tls_handshake(acceptor, stream, peer, front).await?;
            Some(Transport::Tls(Box::new(tls)))
        }
        Listener::WebSocket => ws_handshake(Stream::Plain(stream), peer, front).await,
        Listener::SecureWebSocket(acceptor) => {
            let tls = tls_handshake(acceptor, stream, peer, front).await?;
            ws_handshake(Stream::Tls(Box::new(tls)), peer, front).await
        }
    }
}

async fn tls_handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    front: &Front,
) -> Option<ServerTlsStream> {
    match tls::handshake(acceptor, stream, front.tls_timeout).await {
        Ok(tls) => Some(tls),
        Err(error) => {
            tracing::info!(%peer, %error, reason = "tls_handshake", "tls handshake failed");
            m::refused("tls_handshake");
            None
        }
    }
}

async fn ws_handshake(stream: Stream, peer: SocketAddr, front: &Front) -> Option<Transport> {
    let timeout = front.shared.config.connect_timeout();
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        negotiate_mqtt_subprotocol,
        Some(front.ws_config),
    );
    let error = match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(ws)) => return Some(Transport::WebSocket(Box::new(ws))),
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!("not finished within {timeout:?}"),
    };
    tracing::info!(%peer, %error, reason = "ws_handshake", "websocket handshake failed");
    m::refused("ws_handshake");
    None
}

/// Accepts WebSocket upgrades on `/mqtt` and answers the `mqtt` subprotocol.
// The signature is tungstenite's handshake `Callback`; its error type is theirs.
#[allow(clippy::result_large_err)]
fn negotiate_mqtt_subprotocol(
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    if request.uri().path() != "/mqtt" {
        let mut refusal = ErrorResponse::new(Some("MQTT is served at /mqtt".into()));
        *refusal.status_mut() = StatusCode::NOT_FOUND;
        return Err(refusal);
    }
    let offers_mqtt = request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|protocol| protocol.trim() == "mqtt");
    if offers_mqtt {
        response
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    /// The size of the future `make` returns, without calling it.
    fn future_size<A, B, C, D, E, F: Future>(_make: impl FnOnce(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every connection is one tokio task. On x86-64 its cell is the future
    /// plus 96 bytes of tokio's own (header, scheduler and id, trailer) and
    /// 8 of the task tracker's, rounded up to 128 bytes: a future of at most
    /// 920 bytes makes a 1,024-byte cell, which takes mimalloc's 1,024-byte
    /// size class; 921 bytes make a 1,152-byte cell in the 1,280-byte class,
    /// 256 bytes more for every connection.
    #[test]
    fn a_connection_task_fits_a_1024_byte_cell() {
        let size = future_size(super::serve_connection);
        assert!(size <= 920, "a connection's future is {size} bytes");
    }
}
