//! The broker's configuration: one typed, flat struct built from four layers.
//!
//! Precedence, highest first: command-line flags, `PARLEY_*` environment
//! variables, the config file, the built-in defaults. The defaults are
//! `config/parley.toml`, embedded in the binary, which documents every key.
//!
//! Environment names: `PARLEY_` followed by the key in upper case, e.g.
//! `mqtt_addr` <- `PARLEY_MQTT_ADDR`, `presence_timeout_secs` <-
//! `PARLEY_PRESENCE_TIMEOUT_SECS`. Values are written as on a command line
//! (`30`, `true`, `127.0.0.1:1883`, a path); for an optional key an empty
//! value means "unset". `PARLEY_CONFIG` names the config file (read by the
//! `parley` binary, not a key). Other `PARLEY_*` variables are not keys: they
//! are ignored here and reported by [`unknown_env_vars`] so the binary can warn.
//!
//! Every layer is checked key by key before the layers are merged, so an
//! error always names the key and where its value came from.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// The built-in defaults: `config/parley.toml`, embedded.
pub const DEFAULTS_TOML: &str = include_str!("../../config/parley.toml");
/// Prefix of the environment variables that override keys.
pub const ENV_PREFIX: &str = "PARLEY_";
/// Environment variable naming the config file (not a key).
pub const CONFIG_FILE_ENV: &str = "PARLEY_CONFIG";
/// The highest `max_group_members` a deployment may configure.
pub const MAX_GROUP_MEMBERS_LIMIT: usize = 500;
/// The smallest `max_packet_size`: a 100,000-character text is up to 400,000
/// bytes of UTF-8, plus the request around it.
pub const MIN_PACKET_SIZE: usize = 524_288;
/// The largest packet MQTT can frame (remaining length 268,435,455 + header).
pub const MAX_PACKET_SIZE_LIMIT: usize = 268_435_460;

/// The broker's configuration. See `config/parley.toml` for each key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory of the RocksDB store.
    pub data_dir: PathBuf,
    /// MQTT over TCP.
    pub mqtt_addr: SocketAddr,
    /// MQTT over WebSocket (path `/mqtt`, subprotocol `mqtt`).
    pub ws_addr: SocketAddr,
    /// HTTP API.
    pub http_addr: SocketAddr,
    /// MQTT over TLS (needs `tls_cert` and `tls_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_addr: Option<SocketAddr>,
    /// MQTT over secure WebSocket, path `/mqtt` (needs `tls_cert` and `tls_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wss_addr: Option<SocketAddr>,
    /// PEM certificate chain for the TLS listeners; with it the HTTP API is HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Seconds a new TLS connection has to finish its handshake.
    pub tls_handshake_timeout_secs: u64,
    /// Advertised MQTT endpoints (`POST /v1/login`); unset: derived from the
    /// listeners' ports and the request's Host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_tcp: Option<String>,
    /// Advertised MQTT over TLS endpoint (`mqtts://host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_tls: Option<String>,
    /// Advertised WebSocket endpoint (`ws://host:port/mqtt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_ws: Option<String>,
    /// Advertised secure WebSocket endpoint (`wss://host:port/mqtt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_wss: Option<String>,
    /// Seconds a session token from `POST /v1/login` stays valid.
    pub token_ttl_secs: u64,
    /// Failed logins allowed per user id within `login_failure_window_secs`.
    pub login_failures_per_user: u32,
    /// Failed logins allowed per client address within the window.
    pub login_failures_per_addr: u32,
    /// The window of the failed-login limits, in seconds.
    pub login_failure_window_secs: u64,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout_secs: u64,
    /// Most connections served at once, all listeners together.
    pub max_connections: usize,
    /// Most connections from one IP address that have not completed CONNECT.
    pub max_connecting_per_addr: usize,
    /// Most devices of one account connected at once.
    pub max_devices_per_user: usize,
    /// Largest MQTT packet accepted, in bytes (also bounds WebSocket frames
    /// and messages).
    pub max_packet_size: usize,
    /// Requests (and SUBSCRIBE / UNSUBSCRIBE packets) one device may have in
    /// progress; announced as the MQTT 5 receive maximum.
    pub receive_maximum: u16,
    /// Requests per second one device may sustain.
    pub request_rate: u32,
    /// Requests one device may send in a burst above `request_rate`.
    pub request_burst: u32,
    /// Most subscription filters one connection may hold.
    pub max_subscriptions: usize,
    /// QoS 1 in-flight window per device when the client sets none.
    pub inflight_window: u16,
    /// Most members of one group (at most [`MAX_GROUP_MEMBERS_LIMIT`]).
    pub max_group_members: usize,
    /// Most distinct users one request may name (`ChangeFriends`,
    /// `QueryPresence`, `SystemMessage.users`).
    pub max_users_per_request: usize,
    /// Most friends and pending friend requests of one user.
    pub max_friends: usize,
    /// Seconds of silence after which a device is offline.
    pub presence_timeout_secs: u64,
    /// The push gateway's full notify URL (Matrix Push Gateway API,
    /// `.../_matrix/push/v1/notify`); unset: push is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_gateway: Option<String>,
    /// Attempts at one push notification before it is dropped.
    pub push_max_attempts: u32,
    /// Seconds one POST to the push gateway may take, answer included.
    pub push_timeout_secs: u64,
    /// Whether CONNECT may use the account password instead of a token.
    pub allow_password_login: bool,
    /// Most requests per group commit.
    pub commit_batch_max: usize,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` wins when set.
    pub log: String,
}

/// A configuration that cannot be loaded; every variant names the key (or
/// the file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} is not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("unknown config key `{key}` in {origin} (known keys: {})", key_names())]
    UnknownKey { key: String, origin: String },
    #[error("invalid value for config key `{key}` from {origin}: {message}")]
    InvalidValue {
        key: String,
        origin: String,
        message: String,
    },
    #[error("invalid config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

impl ConfigError {
    /// The key at fault, if the error is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::UnknownKey { key, .. } | Self::InvalidValue { key, .. } => Some(key),
            Self::Invalid { key, .. } => Some(key),
            Self::Read { .. } | Self::Syntax { .. } => None,
        }
    }
}

/// The TOML type a key takes (its range is checked by [`Config::validate`]).
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Addr,
    Int { max: u64 },
    Bool,
}

struct Key {
    name: &'static str,
    kind: Kind,
    optional: bool,
}

const fn key(name: &'static str, kind: Kind) -> Key {
    Key {
        name,
        kind,
        optional: false,
    }
}

const fn optional(name: &'static str, kind: Kind) -> Key {
    Key {
        name,
        kind,
        optional: true,
    }
}

const U16: Kind = Kind::Int {
    max: u16::MAX as u64,
};
const U32: Kind = Kind::Int {
    max: u32::MAX as u64,
};

/// Every key of [`Config`] (a unit test keeps the two in step).
const KEYS: &[Key] = &[
    key("data_dir", Kind::Text),
    key("mqtt_addr", Kind::Addr),
    key("ws_addr", Kind::Addr),
    key("http_addr", Kind::Addr),
    optional("tls_addr", Kind::Addr),
    optional("wss_addr", Kind::Addr),
    optional("tls_cert", Kind::Text),
    optional("tls_key", Kind::Text),
    key("tls_handshake_timeout_secs", U32),
    optional("discovery_tcp", Kind::Text),
    optional("discovery_tls", Kind::Text),
    optional("discovery_ws", Kind::Text),
    optional("discovery_wss", Kind::Text),
    key("token_ttl_secs", U32),
    key("login_failures_per_user", U32),
    key("login_failures_per_addr", U32),
    key("login_failure_window_secs", U32),
    key("connect_timeout_secs", U32),
    key("max_connections", U32),
    key("max_connecting_per_addr", U32),
    key("max_devices_per_user", U32),
    key("max_packet_size", U32),
    key("receive_maximum", U16),
    key("request_rate", U32),
    key("request_burst", U32),
    key("max_subscriptions", U32),
    key("inflight_window", U16),
    key("max_group_members", U32),
    key("max_users_per_request", U32),
    key("max_friends", U32),
    key("presence_timeout_secs", U32),
    optional("push_gateway", Kind::Text),
    key("push_max_attempts", U32),
    key("push_timeout_secs", U32),
    key("allow_password_login", Kind::Bool),
    key("commit_batch_max", U32),
    key("log", Kind::Text),
];

fn key_names() -> String {
    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

fn find_key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The environment variable that overrides `key`: `PARLEY_` + upper case.
pub fn env_var_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())
}

/// `PARLEY_*` variables in `env` that override no key (and are not
/// `PARLEY_CONFIG`), sorted: probably typos, worth a warning.
pub fn unknown_env_vars(env: &HashMap<String, String>) -> Vec<String> {
    let mut unknown: Vec<String> = env
        .keys()
        .filter(|name| name.starts_with(ENV_PREFIX) && name.as_str() != CONFIG_FILE_ENV)
        .filter(|name| !KEYS.iter().any(|k| env_var_name(k.name) == **name))
        .cloned()
        .collect();
    unknown.sort();
    unknown
}

impl Config {
    /// Builds the configuration from its layers and validates it.
    ///
    /// `file`: the config file, if any. `env`: the process environment (only
    /// `PARLEY_*` entries are read). `flags`: `(key, value)` pairs from the
    /// command line, values written as in the environment.
    pub fn load(
        file: Option<&Path>,
        env: &HashMap<String, String>,
        flags: &[(&str, String)],
    ) -> Result<Config, ConfigError> {
        let mut table = parse_layer(DEFAULTS_TOML, "the built-in defaults")?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let origin = format!("config file {}", path.display());
            merge(&mut table, parse_layer(&text, &origin)?);
        }
        for k in KEYS {
            let name = env_var_name(k.name);
            if let Some(raw) = env.get(&name) {
                let origin = format!("environment variable {name}");
                set_from_str(&mut table, k, raw, &origin)?;
            }
        }
        let origin = "the command line";
        for (name, raw) in flags {
            let k = find_key(name).ok_or_else(|| ConfigError::UnknownKey {
                key: (*name).to_owned(),
                origin: origin.to_owned(),
            })?;
            set_from_str(&mut table, k, raw, origin)?;
        }
        let config: Config = Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                origin: "the merged configuration".to_owned(),
                message: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// The built-in defaults (`config/parley.toml`), ignoring the environment.
    pub fn defaults() -> Config {
        Self::load(None, &HashMap::new(), &[])
            .expect("the embedded config/parley.toml is valid (checked by unit tests)")
    }

    /// The defaults with every listener on `127.0.0.1:0` and the given data dir.
    pub fn for_tests(data_dir: PathBuf) -> Config {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        Config {
            data_dir,
            mqtt_addr: any_port,
            ws_addr: any_port,
            http_addr: any_port,
            tls_addr: None,
            wss_addr: None,
            ..Self::defaults()
        }
    }

    /// Checks ranges and cross-key rules; the error names the bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty");
        }
        for (key, value) in [
            ("connect_timeout_secs", self.connect_timeout_secs as usize),
            (
                "tls_handshake_timeout_secs",
                self.tls_handshake_timeout_secs as usize,
            ),
            ("token_ttl_secs", self.token_ttl_secs as usize),
            (
                "login_failures_per_user",
                self.login_failures_per_user as usize,
            ),
            (
                "login_failures_per_addr",
                self.login_failures_per_addr as usize,
            ),
            (
                "login_failure_window_secs",
                self.login_failure_window_secs as usize,
            ),
            ("max_connections", self.max_connections),
            ("max_connecting_per_addr", self.max_connecting_per_addr),
            ("max_devices_per_user", self.max_devices_per_user),
            ("receive_maximum", usize::from(self.receive_maximum)),
            ("request_rate", self.request_rate as usize),
            ("request_burst", self.request_burst as usize),
            ("max_subscriptions", self.max_subscriptions),
            ("inflight_window", usize::from(self.inflight_window)),
            ("max_group_members", self.max_group_members),
            ("max_users_per_request", self.max_users_per_request),
            ("max_friends", self.max_friends),
            ("presence_timeout_secs", self.presence_timeout_secs as usize),
            ("push_max_attempts", self.push_max_attempts as usize),
            ("push_timeout_secs", self.push_timeout_secs as usize),
            ("commit_batch_max", self.commit_batch_max),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        if self.max_group_members > MAX_GROUP_MEMBERS_LIMIT {
            return invalid(
                "max_group_members",
                &format!("must be at most {MAX_GROUP_MEMBERS_LIMIT}"),
            );
        }
        if !(MIN_PACKET_SIZE..=MAX_PACKET_SIZE_LIMIT).contains(&self.max_packet_size) {
            let message = format!(
                "must be between {MIN_PACKET_SIZE} (room for a 100,000-character text) and {MAX_PACKET_SIZE_LIMIT}"
            );
            return invalid("max_packet_size", &message);
        }
        self.validate_listeners()?;
        self.validate_discovery()?;
        if let Some(url) = &self.push_gateway {
            if let Err(message) = crate::push::gateway::parse_gateway_url(url) {
                return invalid("push_gateway", &message);
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return invalid("log", &format!("is not a valid log filter: {e}"));
        }
        Ok(())
    }

    fn validate_listeners(&self) -> Result<(), ConfigError> {
        let tls_listener = [("tls_addr", self.tls_addr), ("wss_addr", self.wss_addr)]
            .into_iter()
            .find(|(_, addr)| addr.is_some());
        let pem = [("tls_cert", &self.tls_cert), ("tls_key", &self.tls_key)];
        let pem_set = pem.iter().filter(|(_, value)| value.is_some()).count();
        for (key, value) in pem {
            if value.is_some() {
                continue;
            }
            if let Some((listener, _)) = tls_listener {
                let message = format!("must be set when {listener} is set");
                return Err(ConfigError::Invalid { key, message });
            }
            if pem_set > 0 {
                let message = "tls_cert and tls_key go together: set both or neither".to_owned();
                return Err(ConfigError::Invalid { key, message });
            }
        }
        let mut listeners = vec![
            ("mqtt_addr", self.mqtt_addr),
            ("ws_addr", self.ws_addr),
            ("http_addr", self.http_addr),
        ];
        listeners.extend(self.tls_addr.map(|addr| ("tls_addr", addr)));
        listeners.extend(self.wss_addr.map(|addr| ("wss_addr", addr)));
        for (i, (key, addr)) in listeners.iter().enumerate() {
            let clash = listeners[..i]
                .iter()
                .find(|(_, other)| addr.port() != 0 && other == addr);
            if let Some((other_key, _)) = clash {
                let message = format!("is the same address as {other_key} ({addr})");
                return Err(ConfigError::Invalid { key, message });
            }
        }
        Ok(())
    }

    /// Each `discovery_*` URL must use its transport's scheme.
    fn validate_discovery(&self) -> Result<(), ConfigError> {
        let keys = [
            ("discovery_tcp", &self.discovery_tcp, "mqtt://"),
            ("discovery_tls", &self.discovery_tls, "mqtts://"),
            ("discovery_ws", &self.discovery_ws, "ws://"),
            ("discovery_wss", &self.discovery_wss, "wss://"),
        ];
        for (key, value, scheme) in keys {
            let Some(url) = value else { continue };
            if url.strip_prefix(scheme).is_none_or(str::is_empty) {
                let message = format!("must be a {scheme}host:port URL, got {url:?}");
                return Err(ConfigError::Invalid { key, message });
            }
        }
        Ok(())
    }

    /// Whether a certificate is configured: TLS listeners may run and the
    /// HTTP API is served over HTTPS.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// `tls_handshake_timeout_secs` as a duration.
    pub fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.tls_handshake_timeout_secs)
    }

    /// `token_ttl_secs` as a duration.
    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_secs)
    }

    /// `login_failure_window_secs` as a duration.
    pub fn login_failure_window(&self) -> Duration {
        Duration::from_secs(self.login_failure_window_secs)
    }

    /// `connect_timeout_secs` as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// `presence_timeout_secs` as a duration.
    pub fn presence_timeout(&self) -> Duration {
        Duration::from_secs(self.presence_timeout_secs)
    }

    /// The chat rules' limits: the configured keys, the rest at their defaults.
    pub fn chat_limits(&self) -> parley_chat_logic::limits::Limits {
        parley_chat_logic::limits::Limits {
            max_group_members: self.max_group_members,
            max_users_per_request: self.max_users_per_request,
            max_friends: self.max_friends,
            ..Default::default()
        }
    }

    /// `push_timeout_secs` as a duration.
    pub fn push_timeout(&self) -> Duration {
        Duration::from_secs(self.push_timeout_secs)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::defaults()
    }
}

/// Parses one TOML layer and checks each key and value.
fn parse_layer(text: &str, origin: &str) -> Result<Table, ConfigError> {
    let table: Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
    for (name, value) in &table {
        let k = find_key(name).ok_or_else(|| ConfigError::UnknownKey {
            key: name.clone(),
            origin: origin.to_owned(),
        })?;
        check_value(k, value, origin)?;
    }
    Ok(table)
}

fn merge(base: &mut Table, layer: Table) {
    for (name, value) in layer {
        base.insert(name, value);
    }
}

/// Sets `k` from a string (environment or flag): converted to the key's TOML
/// type and checked; an empty value unsets an optional key.
fn set_from_str(table: &mut Table, k: &Key, raw: &str, origin: &str) -> Result<(), ConfigError> {
    if k.optional && raw.is_empty() {
        table.remove(k.name);
        return Ok(());
    }
    let bad = |message: String| ConfigError::InvalidValue {
        key: k.name.to_owned(),
        origin: origin.to_owned(),
        message,
    };
    let value = match k.kind {
        Kind::Text | Kind::Addr => Value::String(raw.to_owned()),
        Kind::Int { .. } => {
            let n = raw
                .trim()
                .parse::<i64>()
                .map_err(|_| bad(format!("expected a whole number, got {raw:?}")))?;
            Value::Integer(n)
        }
        Kind::Bool => match raw.trim() {
            "true" => Value::Boolean(true),
            "false" => Value::Boolean(false),
            _ => return Err(bad(format!("expected true or false, got {raw:?}"))),
        },
    };
    check_value(k, &value, origin)?;
    table.insert(k.name.to_owned(), value);
    Ok(())
}

/// Checks that `value` has the type (and, for integers, the range of the
/// Rust type) of key `k`.
fn check_value(k: &Key, value: &Value, origin: &str) -> Result<(), ConfigError> {
    let message = match (k.kind, value) {
        (Kind::Text, Value::String(_)) | (Kind::Bool, Value::Boolean(_)) => return Ok(()),
        (Kind::Addr, Value::String(s)) => match s.parse::<SocketAddr>() {
            Ok(_) => return Ok(()),
            Err(_) => {
                format!("expected HOST:PORT with an IP address (e.g. 127.0.0.1:1883), got {s:?}")
            }
        },
        (Kind::Int { max }, Value::Integer(n)) => match u64::try_from(*n) {
            Ok(n) if n <= max => return Ok(()),
            _ => format!("expected a whole number from 0 to {max}, got {n}"),
        },
        (Kind::Text | Kind::Addr, other) => format!("expected a string, got {}", other.type_str()),
        (Kind::Int { .. }, other) => format!("expected a whole number, got {}", other.type_str()),
        (Kind::Bool, other) => format!("expected true or false, got {}", other.type_str()),
    };
    Err(ConfigError::InvalidValue {
        key: k.name.to_owned(),
        origin: origin.to_owned(),
        message,
    })
}

#[cfg(test)]
mod tests;
