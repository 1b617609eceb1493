//! Service discovery: the MQTT endpoints a login answer advertises.
//!
//! Each transport's URL comes from its `discovery_*` key when set (a load
//! balancer, another name), else from the host the client used to reach
//! the HTTP API (its `Host` header) and the port the listener is bound to;
//! a transport whose listener is off is `null`.
//!
//! In a cluster, a login on any node answers the endpoints of the live node
//! with the fewest connections, from the node registry ([`Directory`]).
//! Nodes register their URLs with [`HOST`] in place of the host; it becomes
//! the host the client used, as for a single node.

use std::net::SocketAddr;

use crate::cluster::{Directory, Endpoints};
use crate::config::Config;

/// The bound MQTT listeners (TLS ones only when configured).
#[derive(Debug, Clone, Copy)]
pub struct Listeners {
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
}

/// Stands for the request's host in registered URLs.
pub const HOST: &str = "{host}";

/// What discovery knows: the configured URLs and the bound listeners (and,
/// in a cluster, the registry).
#[derive(Clone)]
pub struct Discovery {
    configured: Endpoints,
    listeners: Listeners,
    directory: Option<std::sync::Arc<dyn Directory>>,
}

impl Discovery {
    pub fn new(config: &Config, listeners: Listeners) -> Self {
        Discovery {
            configured: Endpoints {
                tcp: config.discovery_tcp.clone(),
                tls: config.discovery_tls.clone(),
                ws: config.discovery_ws.clone(),
                wss: config.discovery_wss.clone(),
            },
            listeners,
            directory: None,
        }
    }

    /// Answers with the cluster's least loaded node from `directory`.
    pub fn with_directory(mut self, directory: std::sync::Arc<dyn Directory>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// The endpoints for a request that reached the API as `host_header`.
    pub fn endpoints(&self, host_header: Option<&str>) -> Endpoints {
        let host = host_header.and_then(host_of).unwrap_or("localhost");
        let chosen = self.directory.as_ref().and_then(|d| d.least_loaded());
        match chosen {
            Some(registered) => with_host(registered, host),
            None => self.own_endpoints(host),
        }
    }

    /// This node's endpoints as it registers them in a cluster: the
    /// `discovery_*` URLs, else the bound address, else (bound to all
    /// interfaces) [`HOST`] and the port.
    pub fn registered(&self) -> Endpoints {
        self.urls(|addr| match addr.ip().is_unspecified() {
            true => HOST.to_owned(),
            false => match addr {
                SocketAddr::V4(v4) => v4.ip().to_string(),
                SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
            },
        })
    }

    fn own_endpoints(&self, host: &str) -> Endpoints {
        self.urls(|_| host.to_owned())
    }

    /// The configured URLs, else `scheme://{host_of(bound)}:{port}`.
    fn urls(&self, host_of: impl Fn(&SocketAddr) -> String) -> Endpoints {
        let url =
            |configured: &Option<String>, bound: Option<SocketAddr>, scheme: &str, path: &str| {
                configured.clone().or_else(|| {
                    bound.map(|addr| format!("{scheme}://{}:{}{path}", host_of(&addr), addr.port()))
                })
            };
        let (c, l) = (&self.configured, &self.listeners);
        Endpoints {
            tcp: url(&c.tcp, l.tcp, "mqtt", ""),
            tls: url(&c.tls, l.tls, "mqtts", ""),
            ws: url(&c.ws, l.ws, "ws", "/mqtt"),
            wss: url(&c.wss, l.wss, "wss", "/mqtt"),
        }
    }
}

/// `registered` with [`HOST`] replaced by `host`.
fn with_host(registered: Endpoints, host: &str) -> Endpoints {
    let fill = |url: Option<String>| url.map(|url| url.replace(HOST, host));
    Endpoints {
        tcp: fill(registered.tcp),
        tls: fill(registered.tls),
        ws: fill(registered.ws),
        wss: fill(registered.wss),
    }
}

/// The host part of a `Host` header (`name`, `name:port`, `[v6]:port`),
/// if it is made only of characters a host name or address may hold (so a
/// forged header cannot put anything else into the URLs).
fn host_of(header: &str) -> Option<&str> {
    let host = match header.strip_prefix('[') {
        Some(rest) => &header[..rest.find(']')? + 2],
        None => header.rsplit_once(':').map_or(header, |(host, _port)| host),
    };
    (!host.is_empty() && host.len() <= 253 && host.chars().all(is_host_char)).then_some(host)
}

/// A character a host name, an IP address (v6 in brackets) or a port may
/// hold; nothing that could end a URL or a header value early.
pub(super) fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listeners(tls: bool) -> Listeners {
        let addr = |port| Some(SocketAddr::from(([0, 0, 0, 0], port)));
        Listeners {
            tcp: addr(1883),
            tls: tls.then(|| addr(8883)).flatten(),
            ws: addr(8083),
            wss: tls.then(|| addr(8084)).flatten(),
        }
    }

    #[test]
    fn endpoints_use_the_request_host_and_the_bound_ports() {
        let discovery = Discovery::new(&Config::defaults(), listeners(false));
        let endpoints = discovery.endpoints(Some("chat.example.com:8080"));
        assert_eq!(
            endpoints.tcp.as_deref(),
            Some("mqtt://chat.example.com:1883")
        );
        assert_eq!(
            endpoints.ws.as_deref(),
            Some("ws://chat.example.com:8083/mqtt")
        );
        assert_eq!((endpoints.tls, endpoints.wss), (None, None), "off");
        let tls =
            Discovery::new(&Config::defaults(), listeners(true)).endpoints(Some("[::1]:8080"));
        assert_eq!(tls.tls.as_deref(), Some("mqtts://[::1]:8883"));
        assert_eq!(tls.wss.as_deref(), Some("wss://[::1]:8084/mqtt"));
    }

    #[test]
    fn configured_urls_win_and_bad_hosts_fall_back() {
        let mut config = Config::defaults();
        config.discovery_tcp = Some("mqtt://lb.example.com:1883".into());
        let discovery = Discovery::new(&config, listeners(false));
        let endpoints = discovery.endpoints(Some("evil.com/x?y"));
        assert_eq!(endpoints.tcp.as_deref(), Some("mqtt://lb.example.com:1883"));
        assert_eq!(endpoints.ws.as_deref(), Some("ws://localhost:8083/mqtt"));
        assert_eq!(host_of("a b"), None);
        assert_eq!(host_of("[::1"), None);
        assert_eq!(host_of("example.com"), Some("example.com"));
        assert_eq!(host_of("10.0.0.1:80"), Some("10.0.0.1"));
    }
}
