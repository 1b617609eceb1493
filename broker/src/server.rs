//! Starting and stopping the broker: the store, the chat engine, the
//! listeners and their accept loops. Shutdown is part of the API: cancel the
//! token given to [`Broker::start`] (or call [`Broker::shutdown`]) and
//! [`Broker::wait`] returns once every connection has ended, the engine has
//! committed its last batch and the store is closed.
//!
//! Listeners: MQTT over TCP (`mqtt_addr`), over WebSocket (`ws_addr`), and,
//! with a certificate, over TLS (`tls_addr`) and secure WebSocket
//! (`wss_addr`); the HTTP API on `http_addr` (HTTPS with a certificate). The
//! MQTT listeners share one accept loop function: admission
//! ([`crate::mqtt::admission`]) is checked at accept and a connection beyond a
//! limit is closed at once; the TLS and WebSocket handshakes then run inside
//! the connection's own task, each with its timeout, so a stalled handshake
//! never holds up the next accept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parley_storage::Store;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::commit::{Commit, SyncedWrite};
use crate::chat::engine::{self, EngineConfig};
use crate::chat::ChatService;
use crate::cluster::ClusterNode;
use crate::config::Config;
use crate::error::BrokerError;
use crate::http::HttpState;
use crate::metrics as m;
use crate::mqtt::admission::{Admission, Admitted, Refused};
use crate::mqtt::connection;
use crate::mqtt::transport::{Stream, Transport};
use crate::mqtt::Shared;
use crate::presence::Presence;
use crate::push::{Push, PushConfig};
use crate::router::Router;
use crate::tls::{self, ServerTlsStream, TlsAcceptors, TlsListener};

/// A running broker.
pub struct Broker {
    mqtt_addr: SocketAddr,
    ws_addr: SocketAddr,
    http_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    wss_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    engine_thread: std::thread::JoinHandle<()>,
    push: Arc<Push>,
}

/// Which listener a connection came through (with its TLS settings).
#[derive(Clone)]
enum Listener {
    Tcp,
    Tls(TlsAcceptor),
    WebSocket,
    SecureWebSocket(TlsAcceptor),
}

impl Listener {
    /// The name printed by `parley serve` (`listening NAME ADDR`).
    fn name(&self) -> &'static str {
        match self {
            Listener::Tcp => "mqtt",
            Listener::Tls(_) => "tls",
            Listener::WebSocket => "ws",
            Listener::SecureWebSocket(_) => "wss",
        }
    }
}

/// Every bound listener, before the loops start.
struct Bound {
    mqtt: TcpListener,
    ws: TcpListener,
    http: TcpListener,
    tls: Option<(TcpListener, TlsAcceptor)>,
    wss: Option<(TcpListener, TlsAcceptor)>,
}

/// What the MQTT accept loops and their connection tasks share.
struct Front {
    shared: Arc<Shared>,
    admission: Admission,
    ws_config: WebSocketConfig,
    tls_timeout: Duration,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Broker {
    /// Opens the store, starts the engine and binds every listener.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Broker, BrokerError> {
        config.validate()?;
        let tls = TlsAcceptors::from_config(&config)?;
        let bound = Bound::listen(&config, tls.as_ref()).await?;
        let metrics = crate::metrics::install();
        let config = Arc::new(config);
        let store = open_store(&config).await?;
        let tasks = TaskTracker::new();
        let services = Services::start(&config, store, &shutdown, &tasks).await?;
        let broker = Broker {
            mqtt_addr: local_addr(&bound.mqtt)?,
            ws_addr: local_addr(&bound.ws)?,
            http_addr: local_addr(&bound.http)?,
            tls_addr: bound.tls.as_ref().map(|(l, _)| local_addr(l)).transpose()?,
            wss_addr: bound.wss.as_ref().map(|(l, _)| local_addr(l)).transpose()?,
            shutdown: shutdown.clone(),
            tasks,
            engine_thread: services.engine_thread,
            push: services.push,
        };
        let http_state = HttpState::new(services.shared.clone(), metrics, broker.listeners());
        let front = Arc::new(Front {
            admission: Admission::new(config.max_connections, config.max_connecting_per_addr),
            ws_config: websocket_config(config.max_packet_size),
            tls_timeout: config.tls_handshake_timeout(),
            shared: services.shared,
            tasks: broker.tasks.clone(),
            shutdown,
        });
        let https = tls.map(|tls| (tls.https, config.tls_handshake_timeout()));
        let (http, mqtt_listeners) = bound.into_http_and_mqtt();
        broker.spawn_http(http, http_state, https)?;
        broker.spawn_accept_loops(mqtt_listeners, &front);
        Ok(broker)
    }

    /// The bound MQTT listeners, as the HTTP API advertises them.
    fn listeners(&self) -> crate::http::Listeners {
        crate::http::Listeners {
            tcp: Some(self.mqtt_addr),
            tls: self.tls_addr,
            ws: Some(self.ws_addr),
            wss: self.wss_addr,
        }
    }

    /// MQTT over TCP.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// MQTT over WebSocket (`ws://ADDR/mqtt`).
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// The HTTP API (HTTPS when TLS is configured).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// MQTT over TLS, if `tls_addr` is configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// MQTT over secure WebSocket (`wss://ADDR/mqtt`), if `wss_addr` is configured.
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.wss_addr
    }

    /// Serves the HTTP API on `listener`, over TLS with `https` = (acceptor,
    /// handshake timeout).
    fn spawn_http(
        &self,
        listener: TcpListener,
        state: HttpState,
        https: Option<(TlsAcceptor, Duration)>,
    ) -> Result<(), BrokerError> {
        let shutdown = self.shutdown.clone();
        let Some((acceptor, timeout)) = https else {
            self.tasks.spawn(run_http(listener, state, shutdown));
            return Ok(());
        };
        let listener = TlsListener::new(listener, acceptor, timeout, &self.tasks)
            .map_err(|error| BrokerError::io("cannot start the https listener", error))?;
        self.tasks.spawn(run_http(listener, state, shutdown));
        Ok(())
    }

    fn spawn_accept_loops(&self, listeners: Vec<(TcpListener, Listener)>, front: &Arc<Front>) {
        for (listener, kind) in listeners {
            self.tasks.spawn(accept_loop(listener, kind, front.clone()));
        }
    }

    /// Stops the broker and waits until it has stopped.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Waits until the broker has stopped (after its token was cancelled):
    /// connections closed, sessions saved, the last batch committed, the
    /// store closed.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        self.tasks.close();
        self.tasks.wait().await;
        self.push.stop().await;
        drop(self.push);
        let engine_thread = self.engine_thread;
        let _ = tokio::task::spawn_blocking(move || engine_thread.join()).await;
        tracing::info!("broker stopped");
    }
}

/// Everything behind the listeners: router, presence, push, the chat
/// engine and what connections share.
struct Services {
    shared: Arc<Shared>,
    engine_thread: std::thread::JoinHandle<()>,
    push: Arc<Push>,
}

impl Services {
    /// Starts presence, push and the engine thread on `store` (and, in
    /// cluster mode, joins the cluster first).
    async fn start(
        config: &Arc<Config>,
        store: Store,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Services, BrokerError> {
        let router = Router::new();
        let presence = Presence::start(
            store.clone(),
            router.clone(),
            config.presence_timeout(),
            shutdown,
            tasks,
        );
        let limits = config.chat_limits();
        let engine_config = EngineConfig {
            limits: limits.clone(),
            batch_max: config.commit_batch_max,
            queue: config.commit_batch_max * 4,
        };
        let push = Push::start(store.clone(), PushConfig::from_config(config))?;
        let outlets = engine::Outlets {
            router: router.clone(),
            presence: presence.clone(),
            push: push.clone(),
        };
        let cluster = match config.cluster_nats_urls {
            Some(_) => Some(Arc::new(
                ClusterNode::connect(
                    config,
                    store.clone(),
                    router.clone(),
                    presence.clone(),
                    push.clone(),
                    shutdown,
                )
                .await?,
            )),
            None => None,
        };
        let committer: Box<dyn Commit> = match &cluster {
            Some(node) => node.committer(),
            None => Box::new(SyncedWrite::new(store.clone())),
        };
        let (engine, engine_thread) =
            engine::spawn(store.clone(), committer, outlets, engine_config)
                .map_err(|error| BrokerError::io("cannot start the chat engine", error))?;
        let limits = Arc::new(limits);
        let engine = match &cluster {
            Some(node) => node.start(engine, &store, limits.clone(), shutdown, tasks)?,
            None => engine,
        };
        let shared = Arc::new(Shared {
            config: config.clone(),
            store: store.clone(),
            router: router.clone(),
            sessions: crate::mqtt::session::Sessions::new(store.clone()),
            presence: presence.clone(),
            auth: crate::auth::Authenticator::new(store.clone(), config),
            chat: ChatService {
                store,
                engine,
                limits,
                router,
                presence,
                push: push.clone(),
            },
            cluster,
        });
        Ok(Services {
            shared,
            engine_thread,
            push,
        })
    }
}

async fn open_store(config: &Config) -> Result<Store, BrokerError> {
    let path = config.data_dir.clone();
    std::fs::create_dir_all(&path)
        .map_err(|error| BrokerError::io(format!("cannot create {}", path.display()), error))?;
    let store = tokio::task::spawn_blocking(move || Store::open(&path))
        .await
        .map_err(|error| {
            BrokerError::io("store open task failed", std::io::Error::other(error))
        })??;
    Ok(store)
}

/// Connections the kernel queues for `accept` before it drops SYNs. A
/// connect storm (thousands of devices reconnecting at once after a network
/// blip or a restart) must not wait out SYN retransmits (1 s, 3 s, 7 s)
/// because the queue was full; the kernel caps this at
/// `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(addr: &SocketAddr, key: &str) -> Result<TcpListener, BrokerError> {
    let fail =
        |error: std::io::Error| BrokerError::io(format!("cannot bind {key} = {addr}"), error);
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.bind(*addr).map_err(fail)?;
    socket.listen(LISTEN_BACKLOG).map_err(fail)
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, BrokerError> {
    listener
        .local_addr()
        .map_err(|error| BrokerError::io("cannot read a bound address", error))
}

impl Bound {
    /// Binds every configured listener. TLS listeners get the MQTT acceptor;
    /// `Config::validate` has made sure there is one when they are set.
    async fn listen(config: &Config, tls: Option<&TlsAcceptors>) -> Result<Bound, BrokerError> {
        let secure = |addr: Option<SocketAddr>, key: &'static str| async move {
            let (Some(addr), Some(tls)) = (addr, tls) else {
                return Ok(None);
            };
            Ok::<_, BrokerError>(Some((bind(&addr, key).await?, tls.mqtt.clone())))
        };
        Ok(Bound {
            mqtt: bind(&config.mqtt_addr, "mqtt_addr").await?,
            ws: bind(&config.ws_addr, "ws_addr").await?,
            http: bind(&config.http_addr, "http_addr").await?,
            tls: secure(config.tls_addr, "tls_addr").await?,
            wss: secure(config.wss_addr, "wss_addr").await?,
        })
    }

    /// The HTTP listener, and the MQTT listeners with their kinds.
    fn into_http_and_mqtt(self) -> (TcpListener, Vec<(TcpListener, Listener)>) {
        let mut listeners = vec![(self.mqtt, Listener::Tcp), (self.ws, Listener::WebSocket)];
        if let Some((listener, acceptor)) = self.tls {
            listeners.push((listener, Listener::Tls(acceptor)));
        }
        if let Some((listener, acceptor)) = self.wss {
            listeners.push((listener, Listener::SecureWebSocket(acceptor)));
        }
        (self.http, listeners)
    }
}

/// WebSocket limits: no frame or message above `max_packet_size`. tungstenite
/// checks a frame's announced length as soon as its header is read, before
/// buffering any of it.
fn websocket_config(max_packet_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_frame_size(Some(max_packet_size))
        .max_message_size(Some(max_packet_size))
}

async fn run_http<L>(listener: L, state: HttpState, shutdown: CancellationToken)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    if let Err(error) = crate::http::serve(listener, state, shutdown).await {
        tracing::error!(%error, "http server failed");
    }
}

/// Accepts connections until shutdown; each admitted one gets its own task,
/// any other is closed at once.
async fn accept_loop(listener: TcpListener, kind: Listener, front: Arc<Front>) {
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
async fn serve_connection(
    front: Arc<Front>,
    stream: TcpStream,
    peer: SocketAddr,
    kind: Listener,
    admitted: Admitted,
) {
    let Admitted { open, connecting } = admitted;
    // boxed: the handshake state is not kept in every idle connection's task
    let handshakes = Box::pin(upgrade(stream, peer, &kind, &front));
    let transport = tokio::select! {
        _ = front.shutdown.cancelled() => None,
        transport = handshakes => transport,
    };
    if let Some(transport) = transport {
        let (shared, shutdown) = (front.shared.clone(), front.shutdown.clone());
        connection::serve(transport, peer, connecting, shared, shutdown).await;
    }
    drop(open);
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
