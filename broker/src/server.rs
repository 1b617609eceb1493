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
//!
//! Layout:
//! - this file: [`Broker`]: the order of the start, the HTTP API's task,
//!   the addresses, shutdown.
//! - `services.rs`: the store, router, presence, push, cluster node and
//!   chat engine, and what connections share.
//! - `listen.rs`: binding every listener, the kinds of MQTT listener.
//! - `accept.rs`: the MQTT accept loops, admission, the TLS and WebSocket
//!   handshakes of each connection.
//!
//! No other module of the broker imports this one (`lib.rs` re-exports
//! [`Broker`]): it is the top, above `http` and `mqtt`.

mod accept;
mod listen;
mod services;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::BrokerError;
use crate::http::HttpState;
use crate::mqtt::admission::Admission;
use crate::push::Push;
use crate::tls::{TlsAcceptors, TlsListener};
use accept::{accept_loop, websocket_config, Front};
use listen::{local_addr, Bound, Listener};
use services::{open_store, Services};

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

async fn run_http<L>(listener: L, state: HttpState, shutdown: CancellationToken)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    if let Err(error) = crate::http::serve(listener, state, shutdown).await {
        tracing::error!(%error, "http server failed");
    }
}
