//! A small HTTP/1.1 client for the tests, on hyper's client connection:
//! one request per connection, JSON in and out, over TCP or TLS.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// An answer: its status and its body, parsed as JSON (`Value::Null` when
/// the body is empty or not JSON; `text` has it raw).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub json: Value,
    pub text: String,
}

impl Answer {
    /// The `error.code` of an error answer ("" if there is none).
    pub fn error_code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

/// One request to the HTTP API at `addr` (plain HTTP).
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the HTTP API");
    let host = addr.to_string();
    send(
        stream,
        &host,
        method,
        path,
        bearer,
        body.map(|b| b.to_string()).as_deref(),
    )
    .await
}

/// One request with a raw body (to send malformed JSON).
pub async fn call_raw(addr: SocketAddr, method: &str, path: &str, body: &str) -> Answer {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the HTTP API");
    send(stream, &addr.to_string(), method, path, None, Some(body)).await
}

/// One request over an established stream (TCP or TLS), with `host` as the
/// Host header.
pub async fn send<S>(
    stream: S,
    host: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> Answer
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http handshake");
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("content-type", "application/json");
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = Full::new(Bytes::from(body.unwrap_or("").to_owned()));
    let response = sender
        .send_request(request.body(body).expect("a valid request"))
        .await
        .expect("http response");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("http body")
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, json, text }
}
