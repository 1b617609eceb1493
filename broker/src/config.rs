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
//!
//! Layout:
//! - this file: [`Config`], [`ConfigError`], loading and merging the layers,
//!   the typed accessors.
//! - `keys.rs`: the table of keys, one layer parsed and checked key by key.
//! - `validate.rs`: [`Config::validate`], ranges and cross-key rules, and
//!   [`parse_gateway_url`] (the push gateway's URL rule, which push reuses).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parley_chat_logic::limits::Limits;
use serde::{Deserialize, Serialize};
use toml::Value;

mod keys;
mod validate;

use keys::{find_key, key_names, merge, parse_layer, set_from_str, KEYS};
pub use validate::parse_gateway_url;

/// The built-in defaults: `config/parley.toml`, embedded.
pub const DEFAULTS_TOML: &str = include_str!("../../config/parley.toml");
/// Prefix of the environment variables that override keys.
pub const ENV_PREFIX: &str = "PARLEY_";
/// Environment variable naming the config file (not a key).
pub const CONFIG_FILE_ENV: &str = "PARLEY_CONFIG";
/// The smallest `max_packet_size`: a 100,000-character text is up to 400,000
/// bytes of UTF-8, plus the request around it.
pub const MIN_PACKET_SIZE: usize = 524_288;
/// The largest packet MQTT can frame (remaining length 268,435,455 + header).
pub const MAX_PACKET_SIZE_LIMIT: usize = 268_435_460;
/// Most nice steps `engine_priority_boost` may ask for (nice spans 40).
pub const MAX_ENGINE_PRIORITY_BOOST: u32 = 20;

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
    /// Most members of one group (at most
    /// [`MAX_GROUP_MEMBERS_CEILING`](parley_chat_logic::limits::MAX_GROUP_MEMBERS_CEILING)).
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
    /// Nice steps the chat engine thread asks for above the process's own
    /// priority (0: none; at most [`MAX_ENGINE_PRIORITY_BOOST`]).
    pub engine_priority_boost: u32,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` wins when set.
    pub log: String,
    /// NATS servers of the cluster, comma-separated (`nats://host:port`);
    /// unset: a single node (no NATS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_nats_urls: Option<String>,
    /// This node's name in the cluster (unique, stable across restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_node_id: Option<String>,
    /// Replicas of the cluster's log stream and buckets (R3 in production).
    pub cluster_replicas: usize,
    /// Seconds a leader's lease lasts without renewal.
    pub cluster_lease_ttl_secs: u64,
    /// Seconds a node keeps retrying a request to the leader.
    pub cluster_request_timeout_secs: u64,
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

    /// The cluster's NATS servers, when cluster mode is on.
    pub fn cluster_urls(&self) -> Option<Vec<String>> {
        let urls = self.cluster_nats_urls.as_ref()?;
        Some(urls.split(',').map(|url| url.trim().to_owned()).collect())
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
    pub fn chat_limits(&self) -> Limits {
        Limits {
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

#[cfg(test)]
mod tests;
