//! A fake Matrix push gateway for the end-to-end tests: a real HTTP/1.1
//! server (hyper) on `127.0.0.1:0` that records every request (when it
//! arrived, method, path, content type, the body and its JSON) and answers
//! each from a script, then with a default reply.
//!
//! The broker's gateway URL is fixed when it starts, so start the gateway
//! first and pass [`FakeGateway::url`] as `push_gateway`; the same gateway
//! (a cheap clone shares its state) outlives [`crate::TestBroker::restart`].
//! The server runs on the test's runtime and ends with it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// The notify endpoint's path, as Sygnal serves it.
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// How the gateway answers one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// This status with this (JSON) body.
    Status(u16, String),
    /// Never answers (the connection stays open until the client gives up).
    Hang,
}

impl Reply {
    /// 200 `{"rejected": []}`: delivered.
    pub fn ok() -> Reply {
        Reply::Status(200, r#"{"rejected": []}"#.to_owned())
    }

    /// 200 `{"rejected": [pushkeys...]}`.
    pub fn rejected(pushkeys: &[&str]) -> Reply {
        let body = serde_json::json!({ "rejected": pushkeys }).to_string();
        Reply::Status(200, body)
    }

    /// `code` with a small JSON error body.
    pub fn status(code: u16) -> Reply {
        Reply::Status(code, r#"{"error": "scripted"}"#.to_owned())
    }
}

/// One request the gateway received, and how it was answered.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// When its body had been read.
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub body: Bytes,
    /// The body as JSON (`Value::Null` if it is not JSON).
    pub json: Value,
    pub reply: Reply,
}

impl Recorded {
    /// The body's `notification` object.
    pub fn notification(&self) -> &Value {
        &self.json["notification"]
    }

    /// `notification.event_id` ("" if missing).
    pub fn event_id(&self) -> &str {
        self.notification()["event_id"].as_str().unwrap_or("")
    }

    /// `notification.counts.unread` (`u64::MAX` if missing).
    pub fn unread(&self) -> u64 {
        self.notification()["counts"]["unread"]
            .as_u64()
            .unwrap_or(u64::MAX)
    }

    /// The `pushkey` of each of `notification.devices`, in order.
    pub fn pushkeys(&self) -> Vec<String> {
        self.notification()["devices"]
            .as_array()
            .map(|devices| {
                devices
                    .iter()
                    .map(|d| d["pushkey"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

struct State {
    script: VecDeque<Reply>,
    default: Reply,
    requests: Vec<Recorded>,
}

/// The fake gateway; clones share the server and its records.
#[derive(Clone)]
pub struct FakeGateway {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeGateway {
    /// Starts a gateway answering 200 `{"rejected": []}` to everything.
    pub async fn start() -> FakeGateway {
        Self::with_default(Reply::ok()).await
    }

    /// Starts a gateway answering `default` once its script is used up.
    pub async fn with_default(default: Reply) -> FakeGateway {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake push gateway");
        let addr = listener.local_addr().expect("the gateway's address");
        let state = Arc::new(Mutex::new(State {
            script: VecDeque::new(),
            default,
            requests: Vec::new(),
        }));
        tokio::spawn(serve(listener, state.clone()));
        FakeGateway { addr, state }
    }

    /// The notify URL to configure as `push_gateway`.
    pub fn url(&self) -> String {
        format!("http://{}{NOTIFY_PATH}", self.addr)
    }

    /// Queues replies for the next requests (before the default one).
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.lock().script.extend(replies);
    }

    /// The reply once the script is used up.
    pub fn set_default(&self, reply: Reply) {
        self.lock().default = reply;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.lock().requests.len()
    }

    /// The requests whose event id is `event_id`.
    pub fn requests_for(&self, event_id: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.event_id() == event_id)
            .collect()
    }

    /// The requests naming `pushkey` among their devices.
    pub fn requests_to(&self, pushkey: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.pushkeys().iter().any(|k| k == pushkey))
            .collect()
    }

    /// Polls until at least `n` requests have arrived and returns them all;
    /// fails the test (with what did arrive) after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            if Instant::now() >= deadline {
                let seen: Vec<_> = requests.iter().map(|r| r.json.to_string()).collect();
                panic!(
                    "the push gateway expected {n} requests within {timeout:?}, got {}: {seen:#?}",
                    requests.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls until a request for `event_id` has arrived; returns it (the
    /// first one); fails the test after `timeout`.
    pub async fn wait_for_event(&self, event_id: &str, timeout: Duration) -> Recorded {
        let what = format!("a push for {event_id}");
        self.wait_for_match(&what, timeout, |r| r.event_id() == event_id)
            .await
    }

    /// Polls until a request matches `check`; returns the first that does;
    /// fails the test (naming `what`, with every request) after `timeout`.
    pub async fn wait_for_match(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Recorded) -> bool,
    ) -> Recorded {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.requests().into_iter().find(|r| check(r)) {
                return found;
            }
            if Instant::now() >= deadline {
                let seen: Vec<_> = self.requests().iter().map(|r| r.json.to_string()).collect();
                panic!("no {what} within {timeout:?}; the gateway got {seen:#?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(state.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let content_type = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = {
        let mut state = state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let reply = state
            .script
            .pop_front()
            .unwrap_or_else(|| state.default.clone());
        state.requests.push(Recorded {
            at: Instant::now(),
            method,
            path,
            content_type,
            body,
            json,
            reply: reply.clone(),
        });
        reply
    };
    match reply {
        Reply::Status(code, body) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let response = Response::builder()
                .status(status)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
                .expect("a response");
            Ok(response)
        }
        Reply::Hang => std::future::pending().await,
    }
}
