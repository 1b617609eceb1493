//! How to reach the broker and who we are: [`ClientOptions`] and [`Transport`].
//!
//! The TLS transports use rustls with the *ring* provider, set explicitly
//! (no process-wide default is needed), and check the broker's certificate
//! against [`ClientOptions::tls_ca`], or the system's trusted roots without it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::error::ClientError;

/// The WebSocket path of the contract.
pub const WS_PATH: &str = "/mqtt";

/// The same MQTT 3.1.1 over one of four byte streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Plain TCP (default port 1883).
    #[default]
    Tcp,
    /// WebSocket at path `/mqtt` with subprotocol `mqtt`.
    WebSocket,
    /// TLS over TCP (`mqtts://`, the broker's `tls_addr`, usually 8883).
    Tls,
    /// WebSocket over TLS (`wss://host:port/mqtt`, the broker's `wss_addr`).
    WebSocketTls,
}

impl Transport {
    /// Whether the bytes are encrypted (TLS or secure WebSocket).
    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::WebSocketTls)
    }

    /// Whether MQTT runs inside WebSocket frames.
    pub fn is_websocket(self) -> bool {
        matches!(self, Transport::WebSocket | Transport::WebSocketTls)
    }
}

/// Everything [`Client::connect`](crate::Client::connect) needs.
///
/// Fields are public; the methods of the same names are chainable setters.
///
/// ```
/// use parley_client::{ClientOptions, Transport};
/// let opts = ClientOptions::parse("127.0.0.1:1883", "alice", "phone", "secret")
///     .unwrap()
///     .clean_session(false)
///     .transport(Transport::WebSocket);
/// assert_eq!(opts.client_id(), "alice:phone");
/// assert!(!opts.clean_session);
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Broker host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Broker port (the MQTT or the WebSocket listener, after `transport`).
    pub port: u16,
    /// MQTT username: the `user_id`.
    pub user: String,
    /// The `device_id`; the MQTT client id is `{user}:{device}`.
    pub device: String,
    /// A session token from `POST /v1/login`, or the account password where allowed.
    pub password: String,
    /// `true` (default): live traffic only. `false`: a durable session that the
    /// broker keeps and replays on reconnect.
    pub clean_session: bool,
    /// TCP (default), WebSocket, TLS or secure WebSocket.
    pub transport: Transport,
    /// For the TLS transports: the PEM certificate(s) of the CA that signed
    /// the broker's certificate (a self-signed certificate is its own CA).
    /// `None` (default): the system's trusted roots.
    pub tls_ca: Option<Vec<u8>>,
    /// MQTT keep-alive in seconds (default 20; 0 disables pings).
    pub keep_alive_secs: u16,
    /// rumqttc's window of outgoing QoS 1 publishes (default 100, at least 1),
    /// which also sizes the queue of requests waiting to be written. Requests
    /// travel at QoS 0 (see [`Client::request`](crate::Client::request)), so
    /// the broker's receive maximum is what bounds those in progress: past
    /// it, the broker stops reading until it has answered some.
    pub inflight: u16,
    /// How long [`Client::request`](crate::Client::request) waits for its reply (default 10 s).
    pub request_timeout: Duration,
    /// How long [`Client::connect`](crate::Client::connect) waits for the CONNACK
    /// and the SUBACK (default 10 s).
    pub connect_timeout: Duration,
    /// Envelopes buffered for [`Client::next_envelope`](crate::Client::next_envelope)
    /// (default 16,384). When it is full the client stops reading the socket
    /// (replies included) until the application reads.
    pub inbox_capacity: usize,
    /// `true`: [`Client::connect`](crate::Client::connect) also subscribes
    /// `presence/+/{user}`, so friends' states arrive on
    /// [`Client::next_presence`](crate::Client::next_presence) from the start
    /// (default `false`; see also [`Client::subscribe_presence`](crate::Client::subscribe_presence)).
    pub presence: bool,
    /// Presence updates buffered for [`Client::next_presence`](crate::Client::next_presence)
    /// (default 4,096). When it is full, a new update replaces the oldest
    /// queued one of the same friend (the socket is never stalled by it).
    pub presence_capacity: usize,
    /// Largest MQTT packet accepted or sent, in bytes (default 16 MiB).
    pub max_packet_size: usize,
    /// Set TCP_NODELAY on the socket (default `true`: a small request
    /// publish does not wait for the broker's delayed ACK). Many mobile and
    /// browser MQTT stacks leave Nagle's algorithm on; the benchmark turns
    /// this off to measure as they do.
    pub tcp_nodelay: bool,
}

impl ClientOptions {
    /// Options for `user` on `device` at a socket address, with the defaults.
    pub fn new(
        addr: SocketAddr,
        user: impl Into<String>,
        device: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        Self::with_host(addr.ip().to_string(), addr.port(), user, device, password)
    }

    /// Options for `user` on `device` at `host:port`, with the defaults.
    pub fn with_host(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        device: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        ClientOptions {
            host: host.into(),
            port,
            user: user.into(),
            device: device.into(),
            password: password.into(),
            clean_session: true,
            transport: Transport::Tcp,
            tls_ca: None,
            keep_alive_secs: 20,
            inflight: 100,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            inbox_capacity: 16_384,
            presence: false,
            presence_capacity: 4_096,
            max_packet_size: 16 * 1024 * 1024,
            tcp_nodelay: true,
        }
    }

    /// Options from an address string: `HOST:PORT`, `[V6]:PORT`,
    /// `tcp://HOST:PORT`, `mqtt://HOST:PORT`, `ws://HOST:PORT[/mqtt]`
    /// ([`Transport::WebSocket`]), `mqtts://HOST:PORT` ([`Transport::Tls`])
    /// or `wss://HOST:PORT[/mqtt]` ([`Transport::WebSocketTls`]).
    pub fn parse(
        addr: &str,
        user: impl Into<String>,
        device: impl Into<String>,
        password: impl Into<String>,
    ) -> Result<Self, ClientError> {
        let (host, port, transport) = parse_broker_addr(addr)?;
        Ok(Self::with_host(host, port, user, device, password).transport(transport))
    }

    /// Sets [`ClientOptions::clean_session`].
    pub fn clean_session(mut self, clean: bool) -> Self {
        self.clean_session = clean;
        self
    }

    /// Sets [`ClientOptions::transport`].
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Sets [`ClientOptions::tls_ca`] to these PEM bytes.
    pub fn tls_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca = Some(pem.into());
        self
    }

    /// Sets [`ClientOptions::tls_ca`] from a PEM file.
    pub fn tls_ca_file(self, path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|error| {
            ClientError::InvalidOptions(format!(
                "cannot read the CA file {}: {error}",
                path.display()
            ))
        })?;
        Ok(self.tls_ca(pem))
    }

    /// Sets [`ClientOptions::keep_alive_secs`].
    pub fn keep_alive_secs(mut self, secs: u16) -> Self {
        self.keep_alive_secs = secs;
        self
    }

    /// Sets [`ClientOptions::inflight`].
    pub fn inflight(mut self, inflight: u16) -> Self {
        self.inflight = inflight;
        self
    }

    /// Sets [`ClientOptions::request_timeout`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`ClientOptions::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`ClientOptions::inbox_capacity`].
    pub fn inbox_capacity(mut self, capacity: usize) -> Self {
        self.inbox_capacity = capacity;
        self
    }

    /// Sets [`ClientOptions::presence`].
    pub fn presence(mut self, subscribe: bool) -> Self {
        self.presence = subscribe;
        self
    }

    /// Sets [`ClientOptions::presence_capacity`].
    pub fn presence_capacity(mut self, capacity: usize) -> Self {
        self.presence_capacity = capacity;
        self
    }

    /// Sets [`ClientOptions::tcp_nodelay`].
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.tcp_nodelay = nodelay;
        self
    }

    /// Sets [`ClientOptions::max_packet_size`].
    pub fn max_packet_size(mut self, bytes: usize) -> Self {
        self.max_packet_size = bytes;
        self
    }

    /// The MQTT client identifier, `{user}:{device}`.
    pub fn client_id(&self) -> String {
        format!("{}:{}", self.user, self.device)
    }

    /// Checks what rumqttc would otherwise panic on, and what the broker would refuse anyway.
    pub fn validate(&self) -> Result<(), ClientError> {
        let bad = |what: &str| Err(ClientError::InvalidOptions(what.to_string()));
        if self.host.is_empty() {
            return bad("host is empty");
        }
        if self.user.is_empty() {
            return bad("user is empty");
        }
        if self.device.is_empty() {
            return bad("device is empty");
        }
        if self.inflight == 0 {
            return bad("inflight must be at least 1");
        }
        if self.inbox_capacity == 0 {
            return bad("inbox_capacity must be at least 1");
        }
        if self.presence_capacity == 0 {
            return bad("presence_capacity must be at least 1");
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return bad("timeouts must be above zero");
        }
        Ok(())
    }

    /// The rumqttc options these stand for, for callers that drive rumqttc
    /// themselves (the benchmark's plain-MQTT `relay`); fails only on a bad
    /// `tls_ca`.
    pub fn to_mqtt_options(&self) -> Result<rumqttc::MqttOptions, ClientError> {
        let broker = if self.transport.is_websocket() {
            self.ws_url()
        } else {
            self.host.clone()
        };
        let mut mqtt = rumqttc::MqttOptions::new(self.client_id(), broker, self.port);
        let transport = match self.transport {
            Transport::Tcp => rumqttc::Transport::Tcp,
            Transport::WebSocket => rumqttc::Transport::Ws,
            Transport::Tls => rumqttc::Transport::Tls(self.tls_configuration()?),
            Transport::WebSocketTls => rumqttc::Transport::Wss(self.tls_configuration()?),
        };
        mqtt.set_transport(transport)
            .set_credentials(&self.user, &self.password)
            .set_clean_session(self.clean_session)
            .set_keep_alive(Duration::from_secs(u64::from(self.keep_alive_secs)))
            .set_inflight(self.inflight.max(1))
            .set_max_packet_size(self.max_packet_size, self.max_packet_size);
        Ok(mqtt)
    }

    /// `ws://host:port/mqtt` (`wss://` for [`Transport::WebSocketTls`]), with
    /// brackets around an IPv6 host.
    pub(crate) fn ws_url(&self) -> String {
        let scheme = match self.transport {
            Transport::WebSocketTls => "wss",
            _ => "ws",
        };
        format!(
            "{scheme}://{}:{}{WS_PATH}",
            bracket_v6(&self.host),
            self.port
        )
    }

    /// rumqttc's TLS settings: a rustls client config, ring provider.
    fn tls_configuration(&self) -> Result<rumqttc::TlsConfiguration, ClientError> {
        let roots = match &self.tls_ca {
            Some(pem) => roots_from_pem(pem)?,
            None => system_roots()?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| ClientError::InvalidOptions(format!("tls: {error}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(rumqttc::TlsConfiguration::Rustls(Arc::new(config)))
    }
}

/// Every certificate in `pem` as a trusted root.
fn roots_from_pem(pem: &[u8]) -> Result<Arc<RootCertStore>, ClientError> {
    let bad = |why: String| ClientError::InvalidOptions(format!("tls_ca: {why}"));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|error| bad(format!("bad PEM: {error}")))?;
        roots
            .add(cert)
            .map_err(|error| bad(format!("unusable certificate: {error}")))?;
    }
    if roots.is_empty() {
        return Err(bad("no CERTIFICATE section found".to_string()));
    }
    Ok(Arc::new(roots))
}

/// The system's trusted roots (rustls-native-certs), read once per process.
fn system_roots() -> Result<Arc<RootCertStore>, ClientError> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    let roots = ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        Arc::new(roots)
    });
    if roots.is_empty() {
        let why =
            "no trusted root certificates found on this system: give the broker's CA (tls_ca)";
        return Err(ClientError::InvalidOptions(why.to_string()));
    }
    Ok(roots.clone())
}

fn bracket_v6(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Splits a broker address into host, port and transport. See [`ClientOptions::parse`].
///
/// ```
/// use parley_client::{parse_broker_addr, Transport};
/// assert_eq!(
///     parse_broker_addr("ws://localhost:8080/mqtt").unwrap(),
///     ("localhost".to_string(), 8080, Transport::WebSocket)
/// );
/// ```
pub fn parse_broker_addr(addr: &str) -> Result<(String, u16, Transport), ClientError> {
    let bad =
        || ClientError::InvalidOptions(format!("bad broker address {addr:?}: want HOST:PORT"));
    let addr = addr.trim();
    const SCHEMES: &[(&str, Transport)] = &[
        ("tcp://", Transport::Tcp),
        ("mqtt://", Transport::Tcp),
        ("ws://", Transport::WebSocket),
        ("mqtts://", Transport::Tls),
        ("ssl://", Transport::Tls),
        ("wss://", Transport::WebSocketTls),
    ];
    let schemed = SCHEMES
        .iter()
        .find_map(|(scheme, transport)| Some((addr.strip_prefix(scheme)?, *transport)));
    let (rest, transport) = match schemed {
        Some(schemed) => schemed,
        None if addr.contains("://") => {
            return Err(ClientError::InvalidOptions(format!(
                "unsupported scheme in {addr:?}: use tcp://, mqtt://, ws://, mqtts:// or wss://"
            )))
        }
        None => (addr, Transport::Tcp),
    };
    let authority = match rest.split_once('/') {
        Some((authority, path)) if transport.is_websocket() => {
            if !path.is_empty() && format!("/{path}") != WS_PATH {
                return Err(ClientError::InvalidOptions(format!(
                    "the WebSocket path must be {WS_PATH}, got /{path}"
                )));
            }
            authority
        }
        Some((authority, "")) => authority,
        Some(_) => return Err(bad()),
        None => rest,
    };
    let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port, transport))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_schemed_addresses() {
        let tcp = |h: &str, p| Some((h.to_string(), p, Transport::Tcp));
        assert_eq!(
            parse_broker_addr("127.0.0.1:1883").ok(),
            tcp("127.0.0.1", 1883)
        );
        assert_eq!(
            parse_broker_addr("tcp://example.org:1").ok(),
            tcp("example.org", 1)
        );
        assert_eq!(parse_broker_addr("mqtt://h:2/").ok(), tcp("h", 2));
        assert_eq!(parse_broker_addr("[::1]:1883").ok(), tcp("::1", 1883));
        assert_eq!(
            parse_broker_addr("ws://[::1]:8080").ok(),
            Some(("::1".to_string(), 8080, Transport::WebSocket))
        );
        assert_eq!(
            parse_broker_addr("ws://h:8080/mqtt").ok(),
            Some(("h".to_string(), 8080, Transport::WebSocket))
        );
    }

    #[test]
    fn parses_tls_addresses() {
        assert_eq!(
            parse_broker_addr("mqtts://chat.example.com:8883").ok(),
            Some(("chat.example.com".to_string(), 8883, Transport::Tls))
        );
        assert_eq!(
            parse_broker_addr("ssl://h:8883").ok(),
            Some(("h".to_string(), 8883, Transport::Tls))
        );
        assert_eq!(
            parse_broker_addr("wss://[::1]:8084/mqtt").ok(),
            Some(("::1".to_string(), 8084, Transport::WebSocketTls))
        );
        assert!(Transport::Tls.is_tls() && !Transport::Tls.is_websocket());
        assert!(Transport::WebSocketTls.is_tls() && Transport::WebSocketTls.is_websocket());
        assert!(!Transport::WebSocket.is_tls() && !Transport::Tcp.is_tls());
    }

    #[test]
    fn refuses_bad_addresses() {
        for addr in [
            "",
            "localhost",
            "h:0",
            "h:99999",
            ":1883",
            "http://h:1",
            "ws://h:1/other",
            "wss://h:1/other",
            "mqtts://h:1/mqtt",
            "h:1/x",
        ] {
            assert!(parse_broker_addr(addr).is_err(), "{addr} should be refused");
        }
    }

    #[test]
    fn defaults_and_setters() {
        let opts = ClientOptions::new("127.0.0.1:1883".parse().unwrap(), "a", "d", "pw");
        assert_eq!(opts.host, "127.0.0.1");
        assert!(opts.clean_session);
        assert_eq!(opts.transport, Transport::Tcp);
        assert_eq!(opts.request_timeout, Duration::from_secs(10));
        assert_eq!(opts.client_id(), "a:d");
        assert!(!opts.presence, "presence is opt-in");
        let opts = opts.inflight(7).keep_alive_secs(5).clean_session(false);
        assert_eq!((opts.inflight, opts.keep_alive_secs), (7, 5));
        assert!(opts.validate().is_ok());
        let opts = opts.presence(true).presence_capacity(3);
        assert!(opts.presence && opts.presence_capacity == 3);
        assert!(opts.clone().presence_capacity(0).validate().is_err());
    }

    #[test]
    fn validate_names_the_problem() {
        let opts = ClientOptions::with_host("h", 1, "", "d", "pw");
        let err = opts.validate().unwrap_err().to_string();
        assert!(err.contains("user"), "{err}");
        let opts = ClientOptions::with_host("h", 1, "u", "d", "pw").inflight(0);
        assert!(opts.validate().is_err());
    }

    #[test]
    fn websocket_url_has_the_contract_path() {
        let opts = ClientOptions::with_host("::1", 80, "u", "d", "p");
        assert_eq!(opts.ws_url(), "ws://[::1]:80/mqtt");
        let mqtt = opts
            .clone()
            .transport(Transport::WebSocket)
            .to_mqtt_options()
            .unwrap();
        assert_eq!(mqtt.broker_address().0, "ws://[::1]:80/mqtt");
        let opts = opts.transport(Transport::WebSocketTls);
        assert_eq!(opts.ws_url(), "wss://[::1]:80/mqtt");
    }

    #[test]
    fn tls_options_need_a_usable_ca() {
        let opts = ClientOptions::with_host("h", 8883, "u", "d", "p").transport(Transport::Tls);
        let bad = opts.clone().tls_ca("not a pem");
        let error = bad.to_mqtt_options().unwrap_err().to_string();
        assert!(error.contains("tls_ca"), "{error}");
        // A CERTIFICATE section whose DER is not a certificate.
        let not_der = "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
        let error = opts
            .clone()
            .tls_ca(not_der)
            .to_mqtt_options()
            .unwrap_err()
            .to_string();
        assert!(error.contains("tls_ca"), "{error}");
        let error = opts
            .tls_ca_file("/nonexistent/ca.pem")
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }
}
