//! The push gateway's side: the notification body in the Matrix Push
//! Gateway API format, one `POST` within the timeout, and what its answer
//! means ([`Answer`]).
//!
//! HTTP/1.1 over hyper's pooled client (hyper-util), HTTPS with rustls and
//! the *ring* provider, trusting the system's root certificates.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parley_storage::{PushJob, PushRegistration};
use serde::Deserialize;
use serde_json::json;

use crate::config::{parse_gateway_url, ConfigError};

/// The notification `type` of a chat message.
pub const NOTIFICATION_TYPE: &str = "chat.v1.message";
/// The path of the notify endpoint, as Sygnal and other gateways serve it.
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// The most of an answer that is read; a longer one is unreadable.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The most of a refusal's body that is logged.
const LOGGED_ANSWER_BYTES: usize = 200;
/// Idle pooled connections to the gateway are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Sent as the `User-Agent` of every request.
const AGENT: &str = concat!("parley/", env!("CARGO_PKG_VERSION"));

/// What a gateway's answer to one notification means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A 2xx; the gateway refused these pushkeys (unregister them).
    Delivered {
        /// The answer's `rejected` pushkeys.
        rejected: Vec<String>,
    },
    /// A 2xx whose body is not the expected JSON: counted as delivered.
    Unreadable(String),
    /// A refusal that a retry would not change (4xx except 408 and 429, or
    /// a redirect): the notification is dropped.
    Refused(String),
    /// Worth another try: a 5xx, 408, 429, a connection error or a timeout.
    Failed(String),
}

/// The body of a 2xx answer.
#[derive(Deserialize)]
struct NotifyAnswer {
    #[serde(default)]
    rejected: Vec<String>,
}

/// A client for one gateway URL. Cheap to share (`Arc`).
pub struct Gateway {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    timeout: Duration,
}

impl Gateway {
    /// A client POSTing to `url`, each request cut off after `timeout`
    /// (connecting and reading the answer included). For an `https://` URL
    /// the system's roots must hold at least one certificate.
    pub fn new(url: &str, timeout: Duration) -> Result<Gateway, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: "push_gateway",
            message,
        };
        let uri = parse_gateway_url(url).map_err(invalid)?;
        let roots = match uri.scheme_str() {
            Some("https") => system_roots().map_err(invalid)?,
            _ => rustls::RootCertStore::empty(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| invalid(format!("no usable TLS settings: {error}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Gateway {
            client,
            uri,
            timeout,
        })
    }

    /// The URL without any user info, for log lines.
    pub fn display_url(&self) -> String {
        let scheme = self.uri.scheme_str().unwrap_or("http");
        let host = self.uri.host().unwrap_or_default();
        let port = self.uri.port().map(|p| format!(":{p}")).unwrap_or_default();
        format!("{scheme}://{host}{port}{}", self.uri.path())
    }

    /// POSTs one notification body and says what the answer means.
    pub async fn notify(&self, body: Vec<u8>) -> Answer {
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, AGENT)
            .body(Full::new(Bytes::from(body)));
        let request = match request {
            Ok(request) => request,
            Err(error) => return Answer::Refused(format!("cannot build the request: {error}")),
        };
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(answer) => answer,
            Err(_) => Answer::Failed(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// Sends `request` and reads the whole answer (up to [`MAX_ANSWER_BYTES`]).
    async fn exchange(&self, request: Request<Full<Bytes>>) -> Answer {
        let response = match self.client.request(request).await {
            Ok(response) => response,
            Err(error) => return Answer::Failed(describe(&error)),
        };
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await;
        match body {
            Ok(body) => classify(status, &body.to_bytes()),
            Err(error) if status.is_success() => {
                Answer::Unreadable(format!("{status}, then the body failed: {error}"))
            }
            Err(_) => classify(status, b""),
        }
    }
}

/// The meaning of a complete answer.
fn classify(status: StatusCode, body: &[u8]) -> Answer {
    if status.is_success() {
        return match serde_json::from_slice::<NotifyAnswer>(body) {
            Ok(answer) => Answer::Delivered {
                rejected: answer.rejected,
            },
            Err(error) => Answer::Unreadable(format!("{status}: {error}: {}", snippet(body))),
        };
    }
    let retryable = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT;
    let what = format!("{status}: {}", snippet(body));
    if retryable {
        Answer::Failed(what)
    } else {
        Answer::Refused(what)
    }
}

/// The start of `body`, printable, for a log line.
fn snippet(body: &[u8]) -> String {
    let end = body.len().min(LOGGED_ANSWER_BYTES);
    let mut text = body[..end].escape_ascii().to_string();
    if body.len() > end {
        text.push_str("...");
    }
    text
}

/// An error and its sources, `a: b: c` (hyper's own display is terse).
fn describe(error: &hyper_util::client::legacy::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The system's trusted roots (rustls-native-certs).
fn system_roots() -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if roots.is_empty() {
        return Err("is an https:// URL, but this system has no trusted root certificates (install ca-certificates)".to_owned());
    }
    Ok(roots)
}

/// The notification for `job`, to `devices` (the user's registrations
/// now), with `unread` as the user's unread count: the contract's
/// `{"notification": {...}}`.
pub fn notification(job: &PushJob, devices: &[(String, PushRegistration)], unread: u64) -> Vec<u8> {
    let devices: Vec<_> = devices
        .iter()
        .map(|(_, registration)| {
            json!({
                "app_id": registration.app_id,
                "pushkey": registration.pushkey,
                "pushkey_ts": registration.registered_ms.div_euclid(1000),
                "data": {},
            })
        })
        .collect();
    let body = json!({
        "notification": {
            "event_id": event_id(job),
            "room_id": job.channel,
            "type": NOTIFICATION_TYPE,
            "sender": job.sender,
            "content": { "msgtype": "m.text", "body": job.body },
            "counts": { "unread": unread },
            "prio": "high",
            "devices": devices,
        }
    });
    body.to_string().into_bytes()
}

/// A notification's `event_id`: `{channel}/{seq}`.
pub fn event_id(job: &PushJob) -> String {
    format!("{}/{}", job.channel, job.seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_show_the_url_without_user_info() {
        let url = "http://user:secret@gw:8080/_matrix/push/v1/notify";
        let gateway = Gateway::new(url, Duration::from_secs(1)).unwrap();
        assert_eq!(
            gateway.display_url(),
            "http://gw:8080/_matrix/push/v1/notify"
        );
    }

    #[test]
    fn answers_are_classified() {
        let ok = |body: &[u8]| classify(StatusCode::OK, body);
        assert_eq!(ok(b"{}"), Answer::Delivered { rejected: vec![] });
        assert_eq!(
            ok(br#"{"rejected": ["k1"]}"#),
            Answer::Delivered {
                rejected: vec!["k1".to_owned()]
            }
        );
        assert!(matches!(ok(b"<html>"), Answer::Unreadable(_)));
        assert!(matches!(ok(br#"{"rejected": 3}"#), Answer::Unreadable(_)));
        assert!(matches!(ok(b""), Answer::Unreadable(_)));
        for status in [400, 401, 403, 404, 413, 301] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(
                matches!(classify(status, b"no"), Answer::Refused(_)),
                "{status}"
            );
        }
        for status in [500, 502, 503, 504, 429, 408] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(
                matches!(classify(status, b""), Answer::Failed(_)),
                "{status}"
            );
        }
    }

    #[test]
    fn long_or_binary_answers_are_logged_short_and_printable() {
        let text = snippet(&[0xff; 1000]);
        assert!(text.len() < 1000 && text.ends_with("..."), "{text}");
        assert!(text.is_ascii());
    }
}
