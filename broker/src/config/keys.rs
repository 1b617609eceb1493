//! The keys of [`Config`](super::Config) and the reading of one layer:
//! each key's TOML type, a layer (the defaults, a file) parsed and checked
//! key by key, and a string value (environment, flag) converted to its key's
//! type. Ranges and cross-key rules are [`Config::validate`](super::Config::validate)'s.

use std::net::SocketAddr;

use toml::{Table, Value};

use super::ConfigError;

/// The TOML type a key takes (its range is checked by [`Config::validate`](super::Config::validate)).
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Addr,
    Int { max: u64 },
    Bool,
}

pub(super) struct Key {
    pub(super) name: &'static str,
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

/// Every key of [`Config`](super::Config) (a unit test keeps the two in step).
pub(super) const KEYS: &[Key] = &[
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
    key("engine_priority_boost", U32),
    key("log", Kind::Text),
    optional("cluster_nats_urls", Kind::Text),
    optional("cluster_node_id", Kind::Text),
    key("cluster_replicas", U32),
    key("cluster_lease_ttl_secs", U32),
    key("cluster_request_timeout_secs", U32),
];

pub(super) fn key_names() -> String {
    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

pub(super) fn find_key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// Parses one TOML layer and checks each key and value.
pub(super) fn parse_layer(text: &str, origin: &str) -> Result<Table, ConfigError> {
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

pub(super) fn merge(base: &mut Table, layer: Table) {
    for (name, value) in layer {
        base.insert(name, value);
    }
}

/// Sets `k` from a string (environment or flag): converted to the key's TOML
/// type and checked; an empty value unsets an optional key.
pub(super) fn set_from_str(
    table: &mut Table,
    k: &Key,
    raw: &str,
    origin: &str,
) -> Result<(), ConfigError> {
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
