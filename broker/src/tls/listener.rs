//! [`TlsListener`]: a TCP listener whose connections come out TLS-decrypted,
//! for `axum::serve` (the HTTPS API).
//!
//! An accept task takes TCP connections and spawns one handshake task each,
//! bounded by the handshake timeout and by [`MAX_HANDSHAKES`] in progress, so
//! a stalled handshake never holds up the next connection. Finished streams
//! queue in a bounded channel that [`TlsListener::accept`] reads. Dropping
//! the listener (axum does at graceful shutdown) stops the accept task, which
//! closes the TCP listener, and every handshake still running.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use super::{handshake, ServerTlsStream};
use crate::metrics as m;

/// Handshakes in progress at once, plus finished ones not yet taken by axum;
/// a connection beyond them is closed at once.
pub const MAX_HANDSHAKES: usize = 1024;
/// Finished handshakes waiting for [`TlsListener::accept`].
const READY_QUEUE: usize = 64;

type Ready = (ServerTlsStream, SocketAddr);

/// A TLS listener for [`axum::serve`]; `Addr` is the peer's `SocketAddr`.
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<Ready>,
    _stop: DropGuard,
}

/// What every handshake task of one listener shares.
#[derive(Clone)]
struct Handshakes {
    acceptor: TlsAcceptor,
    timeout: Duration,
    ready: mpsc::Sender<Ready>,
    stop: CancellationToken,
}

impl TlsListener {
    /// Starts accepting on `listener`; each handshake has `timeout`. The
    /// accept and handshake tasks run on `tasks`, so a broker waiting for
    /// its tasks also waits until the TCP listener is closed.
    pub fn new(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        timeout: Duration,
        tasks: &TaskTracker,
    ) -> io::Result<TlsListener> {
        let local_addr = listener.local_addr()?;
        let (ready_tx, ready) = mpsc::channel(READY_QUEUE);
        let stop = CancellationToken::new();
        let handshakes = Handshakes {
            acceptor,
            timeout,
            ready: ready_tx,
            stop: stop.clone(),
        };
        tasks.spawn(accept_loop(listener, handshakes, tasks.clone()));
        Ok(TlsListener {
            local_addr,
            ready,
            _stop: stop.drop_guard(),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = ServerTlsStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // Only if the accept task has ended, which it does only once the
            // listener is dropped: nothing will come any more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

async fn accept_loop(listener: TcpListener, handshakes: Handshakes, tasks: TaskTracker) {
    let in_progress = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, peer) = tokio::select! {
            _ = handshakes.stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "https accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = in_progress.clone().try_acquire_owned() else {
            tracing::warn!(%peer, reason = "tls_handshake", "https connection refused: too many handshakes in progress");
            m::refused("tls_handshake");
            continue;
        };
        tasks.spawn(handshakes.clone().run(stream, peer, permit));
    }
}

impl Handshakes {
    /// One handshake; the finished stream is queued for axum. `_permit` is
    /// held until then.
    async fn run(self, stream: TcpStream, peer: SocketAddr, _permit: OwnedSemaphorePermit) {
        let tls = tokio::select! {
            _ = self.stop.cancelled() => return,
            result = handshake(&self.acceptor, stream, self.timeout) => match result {
                Ok(tls) => tls,
                Err(error) => {
                    tracing::info!(%peer, %error, reason = "tls_handshake", "https handshake failed");
                    m::refused("tls_handshake");
                    return;
                }
            },
        };
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = self.ready.send((tls, peer)) => {}
        }
    }
}
