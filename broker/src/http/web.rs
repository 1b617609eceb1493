//! The web chat client: `GET /` and its assets, embedded in the binary
//! from `broker/web/` (the third-party files in `broker/web/vendor/`,
//! refreshed by `broker/web/vendor.sh`), so the broker serves a working
//! chat with no file on disk and no internet access.
//!
//! Every answer carries its content type, `Cache-Control: no-cache` with an
//! `ETag` (a revalidation is a `304` without a body) and `nosniff`; the
//! page also a strict Content-Security-Policy: scripts, styles and images
//! from this origin only, no inline code, no `eval`, and connections only
//! to this origin (the HTTP API) and to the MQTT WebSocket endpoints that a
//! login from this host is told to use ([`super::Discovery`]).
//! Must not: read files at run time, or serve anything but these assets.

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use super::discovery::is_host_char;
use super::HttpState;

/// One embedded file.
struct Asset {
    /// The URL path it is served at.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

macro_rules! web {
    ($file:literal) => {
        include_bytes!(concat!("../../web/", $file))
    };
}

/// The page is first; the rest in no particular order.
static ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: HTML,
        body: web!("index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: JS,
        body: web!("app.js"),
    },
    Asset {
        path: "/client.js",
        content_type: JS,
        body: web!("client.js"),
    },
    Asset {
        path: "/view.js",
        content_type: JS,
        body: web!("view.js"),
    },
    Asset {
        path: "/timer-worker.js",
        content_type: JS,
        body: web!("timer-worker.js"),
    },
    Asset {
        path: "/style.css",
        content_type: CSS,
        body: web!("style.css"),
    },
    Asset {
        path: "/favicon.svg",
        content_type: "image/svg+xml",
        body: web!("favicon.svg"),
    },
    Asset {
        path: "/vendor/mqtt.esm.js",
        content_type: JS,
        body: web!("vendor/mqtt.esm.js"),
    },
    Asset {
        path: "/vendor/protobuf.min.js",
        content_type: JS,
        body: web!("vendor/protobuf.min.js"),
    },
    Asset {
        path: "/vendor/protobuf.min.js.map",
        content_type: "application/json",
        body: web!("vendor/protobuf.min.js.map"),
    },
    Asset {
        path: "/vendor/chat.pb.js",
        content_type: JS,
        body: web!("vendor/chat.pb.js"),
    },
    Asset {
        path: "/vendor/mqtt.LICENSE.md",
        content_type: TEXT,
        body: web!("vendor/mqtt.LICENSE.md"),
    },
    Asset {
        path: "/vendor/protobufjs.LICENSE",
        content_type: TEXT,
        body: web!("vendor/protobufjs.LICENSE"),
    },
    Asset {
        path: "/vendor/VERSIONS",
        content_type: TEXT,
        body: web!("vendor/VERSIONS"),
    },
    // The schema the page speaks, for client developers (the page itself
    // uses the code generated from it, vendor/chat.pb.js).
    Asset {
        path: "/chat.proto",
        content_type: TEXT,
        body: include_bytes!("../../../proto/chat.proto"),
    },
];

/// The `ETag` of each asset, in the order of [`ASSETS`].
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.body);
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            format!("\"{hex}\"")
        })
        .collect()
});

/// The routes of the page and its assets (GET, and HEAD with it).
pub fn routes() -> Router<HttpState> {
    ASSETS
        .iter()
        .enumerate()
        .fold(Router::new(), |router, (index, asset)| {
            router.route(
                asset.path,
                get(
                    move |state: axum::extract::State<HttpState>, headers: HeaderMap| async move {
                        serve(index, &state, &headers)
                    },
                ),
            )
        })
}

fn serve(index: usize, state: &HttpState, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = &ETAGS[index];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(etag) {
        out.insert(header::ETAG, value);
    }
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    out.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if asset.content_type == HTML {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let endpoints = state.discovery.endpoints(host);
        let sockets = [endpoints.ws, endpoints.wss];
        let csp = content_security_policy(sockets.iter().flatten().map(String::as_str));
        if let Ok(value) = HeaderValue::from_str(&csp) {
            out.insert(header::CONTENT_SECURITY_POLICY, value);
        }
        out.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    response
}

/// The page's policy: everything from this origin only, nothing inline,
/// and WebSocket connections to the `sockets` URLs' origins.
fn content_security_policy<'a>(sockets: impl Iterator<Item = &'a str>) -> String {
    let mut connect = String::from("'self'");
    for url in sockets {
        if let Some(origin) = socket_origin(url) {
            connect.push(' ');
            connect.push_str(origin);
        }
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// `ws://host:port` of `ws://host:port/mqtt` (or `wss://`), if the URL is
/// made only of characters a CSP source may hold.
fn socket_origin(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))?;
    let authority = rest.find('/').map_or(rest, |end| &rest[..end]);
    let origin = &url[..url.len() - rest.len() + authority.len()];
    (!authority.is_empty() && authority.chars().all(is_host_char)).then_some(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_only_this_origin_and_the_sockets() {
        let csp = content_security_policy(
            ["ws://chat.example.com:8083/mqtt", "wss://[::1]:8084/mqtt"].into_iter(),
        );
        assert!(csp.contains("connect-src 'self' ws://chat.example.com:8083 wss://[::1]:8084;"));
        assert!(csp.starts_with("default-src 'none'; script-src 'self';"));
        assert!(!csp.contains("unsafe"));
        assert_eq!(socket_origin("ws://a b/mqtt"), None);
        assert_eq!(socket_origin("ws://x;y/mqtt"), None);
        assert_eq!(socket_origin("http://x/mqtt"), None);
        assert_eq!(socket_origin("wss://x:1"), Some("wss://x:1"));
    }

    #[test]
    fn every_asset_is_embedded_once() {
        let mut paths: Vec<_> = ASSETS.iter().map(|asset| asset.path).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), ASSETS.len());
        assert!(ASSETS.iter().all(|asset| !asset.body.is_empty()));
        assert_eq!(ETAGS.len(), ASSETS.len());
    }

    /// `broker/web/vendor/chat.pb.js` must be generated from the current
    /// `proto/chat.proto`: after a schema change, run
    /// `bash broker/web/vendor.sh`.
    #[test]
    fn the_generated_codecs_match_the_schema() {
        let generated = include_str!("../../web/vendor/chat.pb.js");
        let proto = include_bytes!("../../../proto/chat.proto");
        let hex: String = Sha256::digest(proto)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let first_line = generated.lines().next().unwrap_or_default();
        assert!(
            first_line.contains(&format!("(sha256 {hex})")),
            "broker/web/vendor/chat.pb.js is stale: run `bash broker/web/vendor.sh` \
             (line 1: {first_line})"
        );
    }
}
