//! Binding the listeners: every configured address is bound, with a deep
//! accept backlog, before any loop starts (so a bind error stops the start
//! and `parley serve` can print the bound addresses), and each MQTT
//! listener is tagged with its kind ([`Listener`]).
//!
//! Must not: accept connections or run handshakes (that is `accept.rs`).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::error::BrokerError;
use crate::tls::TlsAcceptors;

/// Which listener a connection came through (with its TLS settings).
#[derive(Clone)]
pub(super) enum Listener {
    Tcp,
    Tls(TlsAcceptor),
    WebSocket,
    SecureWebSocket(TlsAcceptor),
}

impl Listener {
    /// The name printed by `parley serve` (`listening NAME ADDR`).
    pub(super) fn name(&self) -> &'static str {
        match self {
            Listener::Tcp => "mqtt",
            Listener::Tls(_) => "tls",
            Listener::WebSocket => "ws",
            Listener::SecureWebSocket(_) => "wss",
        }
    }
}

/// Every bound listener, before the loops start.
pub(super) struct Bound {
    pub(super) mqtt: TcpListener,
    pub(super) ws: TcpListener,
    pub(super) http: TcpListener,
    pub(super) tls: Option<(TcpListener, TlsAcceptor)>,
    pub(super) wss: Option<(TcpListener, TlsAcceptor)>,
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

pub(super) fn local_addr(listener: &TcpListener) -> Result<SocketAddr, BrokerError> {
    listener
        .local_addr()
        .map_err(|error| BrokerError::io("cannot read a bound address", error))
}

impl Bound {
    /// Binds every configured listener. TLS listeners get the MQTT acceptor;
    /// `Config::validate` has made sure there is one when they are set.
    pub(super) async fn listen(
        config: &Config,
        tls: Option<&TlsAcceptors>,
    ) -> Result<Bound, BrokerError> {
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
    pub(super) fn into_http_and_mqtt(self) -> (TcpListener, Vec<(TcpListener, Listener)>) {
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
