//! The byte streams an MQTT connection runs over: TCP, TLS over TCP, and
//! WebSocket (binary frames, subprotocol `mqtt`) over either of them.
//!
//! Handshakes (TLS, WebSocket) are the accept side's business (the
//! broker's accept loops, which use this module); a [`Transport`] is what
//! is left once they are done.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::tls::ServerTlsStream;

/// The most one read takes from a TCP socket.
const READ_CHUNK: usize = 8192;

/// One accepted connection's transport.
pub enum Transport {
    /// MQTT over TCP.
    Tcp(TcpStream),
    /// MQTT over TLS.
    Tls(Box<ServerTlsStream>),
    /// MQTT over WebSocket, over TCP or TLS.
    WebSocket(Box<WebSocketStream<Stream>>),
}

/// A TCP connection, plain or with server-side TLS: what a WebSocket runs
/// over. Reads and writes are delegated to the inner stream.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<ServerTlsStream>),
}

impl Transport {
    /// Appends whatever arrives next to `buf`; `Ok(0)` means the peer closed.
    /// Cancel-safe: nothing is lost if the future is dropped.
    ///
    /// On TCP, `buf` only grows once the socket is readable, and on TLS once
    /// rustls has decrypted data (read straight from rustls' own buffer): an
    /// idle connection waits with an empty buffer instead of a reserved one.
    ///
    /// The future is a [`poll_fn`](std::future::poll_fn) over
    /// [`poll_read_into`](Self::poll_read_into), two references: a waiting
    /// read adds only those to the task of an idle connection (an `async`
    /// read over the three transports took 224 bytes).
    pub async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_into(cx, buf)).await
    }

    /// [`read_into`](Self::read_into) as a poll.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        let read = match self {
            Transport::Tcp(stream) => poll_read_tcp(stream, cx, buf),
            Transport::Tls(stream) => poll_read_tls(stream, cx, buf),
            Transport::WebSocket(ws) => poll_read_websocket(ws, cx, buf),
        };
        if matches!(read, Poll::Ready(Ok(n)) if n > 0) {
            acknowledge_promptly(self.tcp());
        }
        read
    }

    /// The TCP socket under every transport.
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Tcp(stream) => stream,
            Transport::Tls(stream) => stream.get_ref().0,
            Transport::WebSocket(ws) => match ws.get_ref() {
                Stream::Plain(stream) => stream,
                Stream::Tls(stream) => stream.get_ref().0,
            },
        }
    }

    /// Writes all of `bytes` (as one binary frame on WebSocket).
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Tcp(stream) => stream.write_all(bytes).await,
            Transport::Tls(stream) => {
                stream.write_all(bytes).await?;
                // rustls holds the records until flushed
                stream.flush().await
            }
            Transport::WebSocket(ws) => ws
                .send(Message::binary(bytes.to_vec()))
                .await
                .map_err(io::Error::other),
        }
    }

    /// Closes the write side, best effort (TLS sends its close_notify).
    pub async fn close(&mut self) {
        let _ = match self {
            Transport::Tcp(stream) => stream.shutdown().await,
            Transport::Tls(stream) => stream.shutdown().await,
            Transport::WebSocket(ws) => ws.close().await.map_err(io::Error::other),
        };
    }

    /// Reads and discards what the peer sends until it closes, for at most
    /// `limit`: a grace period before [`close`](Self::close), so that what
    /// was written last (a Logout's reply) is read before the stream ends.
    pub async fn drain(&mut self, limit: std::time::Duration) {
        let mut scratch = BytesMut::new();
        let _ = tokio::time::timeout(limit, async {
            while let Ok(read) = self.read_into(&mut scratch).await {
                if read == 0 {
                    return;
                }
                scratch.clear();
            }
        })
        .await;
    }
}

/// Turns off delayed ACKs for what was just read (Linux's TCP_QUICKACK,
/// which the kernel clears again by itself, hence once per read).
///
/// A chat client writes two small packets in a row: a PUBACK (for a reply
/// or an inbox envelope), then its next request. With Nagle's algorithm on
/// (MQTT.js on Node, many mobile stacks) the request waits until the PUBACK
/// is acknowledged, and a broker that sends nothing back delays that ACK by
/// up to 40 ms. Acknowledging at once costs one empty segment and removes
/// the wait, whatever the client's socket options; durability, QoS and
/// packet counts stay as they are.
fn acknowledge_promptly(stream: &TcpStream) {
    #[cfg(target_os = "linux")]
    {
        let _ = socket2::SockRef::from(stream).set_tcp_quickack(true);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = stream;
}

fn poll_read_tcp(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    loop {
        std::task::ready!(stream.poll_read_ready(cx))?;
        // A `WouldBlock` clears the readiness, so the next poll registers
        // the waker again.
        match read_available(stream, buf) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            read => return Poll::Ready(read),
        }
    }
}

/// Appends what the socket has (up to [`READ_CHUNK`]) to `buf`, through a
/// buffer on the thread's stack: `buf` grows by exactly what arrived, and
/// nothing is reserved for a read that finds the socket drained. (tokio
/// learns that a socket is drained only from a `WouldBlock`, so after every
/// read one wake-up finds nothing; reserving first left every idle
/// connection holding an empty 4 KiB read buffer.)
fn read_available(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let mut chunk = [0u8; READ_CHUNK];
    let n = stream.try_read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Copies what rustls has decrypted; a TCP close without TLS close_notify
/// counts as the peer closing (MQTT clients rarely send one).
fn poll_read_tls(
    stream: &mut ServerTlsStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut stream = Pin::new(stream);
    let data = match std::task::ready!(stream.as_mut().poll_fill_buf(cx)) {
        Ok(data) => data,
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(0)),
        Err(error) => return Poll::Ready(Err(error)),
    };
    let n = data.len();
    buf.extend_from_slice(data);
    stream.consume(n);
    Poll::Ready(Ok(n))
}

fn poll_read_websocket(
    ws: &mut WebSocketStream<Stream>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    loop {
        let read = match std::task::ready!(ws.poll_next_unpin(cx)) {
            None => Ok(0),
            Some(Err(error)) => Err(io::Error::other(error)),
            Some(Ok(Message::Binary(data))) if data.is_empty() => continue,
            Some(Ok(Message::Binary(data))) => {
                buf.extend_from_slice(&data);
                Ok(data.len())
            }
            Some(Ok(Message::Close(_))) => Ok(0),
            // pings are answered by tungstenite; text frames are not MQTT
            Some(Ok(Message::Text(_))) => {
                Err(io::Error::new(io::ErrorKind::InvalidData, "text frame"))
            }
            Some(Ok(_)) => continue,
        };
        return Poll::Ready(read);
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(stream) => stream.is_write_vectored(),
            Stream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    async fn connected_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn a_read_grows_the_buffer_by_what_arrived_and_a_drained_socket_reserves_nothing() {
        let (mut client, server) = connected_pair().await;
        client.write_all(b"0123456789").await.unwrap();
        let mut buf = BytesMut::new();
        let mut server = Transport::Tcp(server);
        assert_eq!(server.read_into(&mut buf).await.unwrap(), 10);
        assert_eq!(&buf[..], b"0123456789");
        assert!(buf.capacity() < 64, "capacity {}", buf.capacity());

        let (_client, server) = connected_pair().await;
        let mut idle = BytesMut::new();
        let drained = read_available(&server, &mut idle);
        assert_eq!(drained.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert_eq!(idle.capacity(), 0);
    }

    /// Every idle connection's task holds a waiting read: a few references
    /// (40 bytes unoptimised), where an `async` read over the three
    /// transports took 224.
    #[tokio::test]
    async fn a_waiting_read_holds_only_a_few_references() {
        let (_client, server) = connected_pair().await;
        let mut transport = Transport::Tcp(server);
        let mut buf = BytesMut::new();
        let read = transport.read_into(&mut buf);
        let size = std::mem::size_of_val(&read);
        assert!(size <= 64, "{size} bytes");
    }
}
