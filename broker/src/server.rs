//! Starting and stopping the broker: the store, the chat engine, the
//! listeners and their accept loops. Shutdown is part of the API: cancel the
//! token given to [`Broker::start`] (or call [`Broker::shutdown`]) and
//! [`Broker::wait`] returns once every connection has ended, the engine has
//! committed its last batch and the store is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parley_chat_logic::limits::Limits;
use parley_storage::Store;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::engine::{self, EngineConfig};
use crate::chat::ChatService;
use crate::config::Config;
use crate::error::BrokerError;
use crate::mqtt::connection;
use crate::mqtt::transport::Transport;
use crate::mqtt::Shared;
use crate::router::Router;

/// A running broker.
pub struct Broker {
    mqtt_addr: SocketAddr,
    ws_addr: SocketAddr,
    http_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    engine_thread: std::thread::JoinHandle<()>,
}

/// Which listener a connection came through.
#[derive(Debug, Clone, Copy)]
enum Listener {
    Tcp,
    WebSocket,
}

impl Broker {
    /// Opens the store, starts the engine and binds every listener.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Broker, BrokerError> {
        config.validate()?;
        let metrics = crate::metrics::install();
        let config = Arc::new(config);
        let store = open_store(&config).await?;
        let router = Router::new();
        let limits = Limits {
            max_group_members: config.max_group_members,
            ..Limits::default()
        };
        let engine_config = EngineConfig {
            limits: limits.clone(),
            batch_max: config.commit_batch_max,
            queue: config.commit_batch_max * 4,
        };
        let (engine, engine_thread) =
            engine::spawn(store.clone(), router.clone(), engine_config)
                .map_err(|error| BrokerError::io("cannot start the chat engine", error))?;
        let shared = Arc::new(Shared {
            config: config.clone(),
            store: store.clone(),
            router,
            auth: crate::auth::Authenticator::new(store.clone()),
            chat: ChatService {
                store,
                engine,
                limits: Arc::new(limits),
            },
        });

        let mqtt = bind(&config.mqtt_addr, "mqtt_addr").await?;
        let ws = bind(&config.ws_addr, "ws_addr").await?;
        let http = bind(&config.http_addr, "http_addr").await?;
        let broker = Broker {
            mqtt_addr: local_addr(&mqtt)?,
            ws_addr: local_addr(&ws)?,
            http_addr: local_addr(&http)?,
            shutdown: shutdown.clone(),
            tasks: TaskTracker::new(),
            engine_thread,
        };
        let permits = Arc::new(Semaphore::new(config.max_connections));
        broker.tasks.spawn(accept_loop(
            mqtt,
            Listener::Tcp,
            shared.clone(),
            permits.clone(),
            broker.tasks.clone(),
            shutdown.clone(),
        ));
        broker.tasks.spawn(accept_loop(
            ws,
            Listener::WebSocket,
            shared.clone(),
            permits,
            broker.tasks.clone(),
            shutdown.clone(),
        ));
        let http_state = crate::http::HttpState::new(metrics);
        broker.tasks.spawn(async move {
            if let Err(error) = crate::http::serve(http, http_state, shutdown).await {
                tracing::error!(%error, "http server failed");
            }
        });
        Ok(broker)
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
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
        let engine_thread = self.engine_thread;
        let _ = tokio::task::spawn_blocking(move || engine_thread.join()).await;
        tracing::info!("broker stopped");
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

async fn bind(addr: &SocketAddr, key: &str) -> Result<TcpListener, BrokerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| BrokerError::io(format!("cannot bind {key} = {addr}"), error))
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, BrokerError> {
    listener
        .local_addr()
        .map_err(|error| BrokerError::io("cannot read a bound address", error))
}

async fn accept_loop(
    listener: TcpListener,
    kind: Listener,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, ?kind, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        tasks.spawn(async move {
            let timeout = Duration::from_secs(shared.config.connect_timeout_secs);
            if let Some(transport) = upgrade(stream, kind, timeout).await {
                connection::serve(transport, peer, shared, shutdown).await;
            }
            drop(permit);
        });
    }
}

/// Turns an accepted socket into a transport (WebSocket handshake on `/mqtt`).
async fn upgrade(stream: TcpStream, kind: Listener, timeout: Duration) -> Option<Transport> {
    match kind {
        Listener::Tcp => Some(Transport::Tcp(stream)),
        Listener::WebSocket => {
            let handshake = tokio_tungstenite::accept_hdr_async(stream, negotiate_mqtt_subprotocol);
            match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(ws)) => Some(Transport::WebSocket(Box::new(ws))),
                Ok(Err(error)) => {
                    tracing::info!(%error, "websocket handshake failed");
                    None
                }
                Err(_) => None,
            }
        }
    }
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
