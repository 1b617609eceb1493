//! Checking a merged configuration: ranges, cross-key rules and the values
//! that must parse (the push gateway's URL, the NATS URLs, the log filter).
//!
//! Owns: [`Config::validate`] and what it needs, among them
//! [`parse_gateway_url`], the one rule for `push_gateway` (push consumes the
//! parsed URL). Must not: read layers or know key types (that is
//! [`keys`](super::keys)), or check the chat rules' own limits (that is
//! `parley_chat_logic::limits::Limits::validate`, called from here).

use hyper::Uri;

use super::{
    Config, ConfigError, MAX_ENGINE_PRIORITY_BOOST, MAX_PACKET_SIZE_LIMIT, MIN_PACKET_SIZE,
};

impl Config {
    /// Checks ranges and cross-key rules; the error names the bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        self.validate_positive()?;
        // the chat rules' own limits are checked where they are defined
        self.chat_limits()
            .validate()
            .map_err(|error| ConfigError::Invalid {
                key: error.field,
                message: error.message,
            })?;
        if !(MIN_PACKET_SIZE..=MAX_PACKET_SIZE_LIMIT).contains(&self.max_packet_size) {
            let message = format!(
                "must be between {MIN_PACKET_SIZE} (room for a 100,000-character text) and {MAX_PACKET_SIZE_LIMIT}"
            );
            return Err(invalid("max_packet_size", message));
        }
        if self.engine_priority_boost > MAX_ENGINE_PRIORITY_BOOST {
            let message = format!("must be between 0 (off) and {MAX_ENGINE_PRIORITY_BOOST}");
            return Err(invalid("engine_priority_boost", message));
        }
        self.validate_listeners()?;
        self.validate_discovery()?;
        if let Some(url) = &self.push_gateway {
            if let Err(message) = parse_gateway_url(url) {
                return Err(invalid("push_gateway", message));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return Err(invalid("log", format!("is not a valid log filter: {e}")));
        }
        self.validate_cluster()
    }

    /// Cluster mode: the URLs parse, a node id is set, the lease can be renewed.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        if !(1..=5).contains(&self.cluster_replicas) {
            return Err(invalid("cluster_replicas", "must be between 1 and 5"));
        }
        if self.cluster_lease_ttl_secs < 2 {
            return Err(invalid("cluster_lease_ttl_secs", "must be at least 2"));
        }
        if self.cluster_request_timeout_secs == 0 {
            return Err(invalid(
                "cluster_request_timeout_secs",
                "must be at least 1",
            ));
        }
        let Some(urls) = &self.cluster_nats_urls else {
            return Ok(());
        };
        for url in urls.split(',').map(str::trim) {
            if !(url.starts_with("nats://") || url.starts_with("tls://")) || url.len() < 8 {
                let message = format!("{url:?} is not a NATS URL (nats://host:port)");
                return Err(invalid("cluster_nats_urls", message));
            }
        }
        match &self.cluster_node_id {
            Some(id) if parley_chat_logic::ids::is_valid_id(id) => Ok(()),
            Some(id) => Err(invalid(
                "cluster_node_id",
                format!("{id:?} must be 1-64 letters, digits, '-' or '_'"),
            )),
            None => Err(invalid(
                "cluster_node_id",
                "must be set when cluster_nats_urls is",
            )),
        }
    }

    /// The counts, timeouts and rates that must be at least 1 (the chat
    /// limits among them are [`Limits::validate`]'s).
    fn validate_positive(&self) -> Result<(), ConfigError> {
        let secs = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
        let count = |value: u32| usize::try_from(value).unwrap_or(usize::MAX);
        for (key, value) in [
            ("connect_timeout_secs", secs(self.connect_timeout_secs)),
            (
                "tls_handshake_timeout_secs",
                secs(self.tls_handshake_timeout_secs),
            ),
            ("token_ttl_secs", secs(self.token_ttl_secs)),
            (
                "login_failures_per_user",
                count(self.login_failures_per_user),
            ),
            (
                "login_failures_per_addr",
                count(self.login_failures_per_addr),
            ),
            (
                "login_failure_window_secs",
                secs(self.login_failure_window_secs),
            ),
            ("max_connections", self.max_connections),
            ("max_connecting_per_addr", self.max_connecting_per_addr),
            ("max_devices_per_user", self.max_devices_per_user),
            ("receive_maximum", usize::from(self.receive_maximum)),
            ("request_rate", count(self.request_rate)),
            ("request_burst", count(self.request_burst)),
            ("max_subscriptions", self.max_subscriptions),
            ("inflight_window", usize::from(self.inflight_window)),
            ("presence_timeout_secs", secs(self.presence_timeout_secs)),
            ("push_max_attempts", count(self.push_max_attempts)),
            ("push_timeout_secs", secs(self.push_timeout_secs)),
            ("commit_batch_max", self.commit_batch_max),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
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
}

/// An invalid value of `key`, and why.
fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// `url` as the gateway's notify URL: an `http://` or `https://` URL with a
/// host. The error says what is wrong (the caller names the key).
pub fn parse_gateway_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|error| format!("must be an http:// or https:// URL ({error})"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let host_ok = uri.host().is_some_and(|host| !host.is_empty());
    if !scheme_ok || !host_ok {
        return Err("must be an http:// or https:// URL with a host".to_owned());
    }
    Ok(uri)
}
