//! The byte streams an MQTT connection runs over: plain TCP or WebSocket
//! (binary frames, subprotocol `mqtt`). TLS joins here in a later issue.

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use std::io;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Bytes reserved for each read from a TCP socket.
const READ_CHUNK: usize = 4096;

/// One accepted connection's transport.
pub enum Transport {
    Tcp(TcpStream),
    WebSocket(Box<WebSocketStream<TcpStream>>),
}

impl Transport {
    /// Appends whatever arrives next to `buf`; `Ok(0)` means the peer closed.
    /// Cancel-safe: nothing is lost if the future is dropped.
    ///
    /// On TCP, `buf` only grows once the socket is readable: an idle
    /// connection waits with an empty buffer instead of a reserved one.
    pub async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Transport::Tcp(stream) => loop {
                stream.readable().await?;
                buf.reserve(READ_CHUNK);
                match stream.try_read_buf(buf) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    read => return read,
                }
            },
            Transport::WebSocket(ws) => loop {
                match ws.next().await {
                    None => return Ok(0),
                    Some(Err(error)) => return Err(io::Error::other(error)),
                    Some(Ok(Message::Binary(data))) => {
                        buf.extend_from_slice(&data);
                        if !data.is_empty() {
                            return Ok(data.len());
                        }
                    }
                    Some(Ok(Message::Close(_))) => return Ok(0),
                    // pings are answered by tungstenite; text frames are not MQTT
                    Some(Ok(Message::Text(_))) => {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "text frame"))
                    }
                    Some(Ok(_)) => continue,
                }
            },
        }
    }

    /// Writes all of `bytes` (as one binary frame on WebSocket).
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Tcp(stream) => stream.write_all(bytes).await,
            Transport::WebSocket(ws) => ws
                .send(Message::binary(bytes.to_vec()))
                .await
                .map_err(io::Error::other),
        }
    }

    /// Closes the write side, best effort.
    pub async fn close(&mut self) {
        let _ = match self {
            Transport::Tcp(stream) => stream.shutdown().await,
            Transport::WebSocket(ws) => ws.close().await.map_err(io::Error::other),
        };
    }
}
