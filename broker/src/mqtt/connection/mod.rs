//! The per-connection task: accept -> CONNECT -> session -> packet loop.
//!
//! One task per device, `select!`ing between the socket, its live queue
//! from the router, its pending requests (replies in request order), a
//! read-ahead from the store, the keep-alive deadline and shutdown. Every
//! source is bounded: at most `receive_maximum` requests are in progress
//! (then the socket is not read: back-pressure), requests beyond the
//! device's rate are refused ([`limits`](super::limits)), live envelopes
//! and in-flight publishes are bounded by the [`Outbox`].
//!
//! One job per file:
//! - `mod.rs`: the state one connection keeps (`Connection`) and its
//!   packet loop (`run`), which ends with a `Close`.
//! - `lifecycle.rs`: [`serve`], a connection's whole life; establishing it
//!   (router registration, the take-over wait, the session, presence, the
//!   CONNACK) and ending it (why it closed, the DISCONNECT reason, the
//!   Logout linger, the session saved or signed out).
//! - `dispatch.rs`: packets from the device: the read buffer, one handler
//!   per packet kind, request publishes and the requests in flight, acks.
//! - `subscriptions.rs`: SUBSCRIBE / UNSUBSCRIBE and what they cover.
//! - `delivery.rs`: what the device is sent: live batches, the outbox pump,
//!   writes and flushes, the store read-ahead, the retained presence
//!   snapshot, the acked cursor's flushes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::accounts::tokens::TokenDigest;
use crate::chat::TypingLimit;
use crate::mqtt::codec::Codec;
use crate::mqtt::limits::DeviceLimits;
use crate::mqtt::outbox::Outbox;
use crate::mqtt::session::SessionLease;
use crate::mqtt::transport::Transport;
use crate::mqtt::Shared;
use crate::presence::DevicePresence;
use crate::router::DeviceLink;

mod delivery;
mod dispatch;
mod lifecycle;
mod subscriptions;

use delivery::{Fetched, Retained};
use dispatch::InFlight;
pub use lifecycle::serve;
use lifecycle::Close;

struct Connection {
    io: Transport,
    codec: Codec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    user: String,
    device: String,
    inbox_topic: String,
    reply_topic: String,
    shared: Arc<Shared>,
    link: DeviceLink,
    /// This device's online state: every packet is reported to it.
    presence: DevicePresence,
    outbox: Outbox,
    subscriptions: Vec<(String, u8)>,
    durable: Option<u32>,
    /// This connection's claim on its device's session record: every
    /// session write goes through it (refused once a successor took over).
    session: Arc<SessionLease>,
    /// The token this connection authenticated with (a Logout revokes it).
    /// Boxed: it is read once, at Logout, and inline it would take
    /// `Connection` over 1,024 bytes (see the size test).
    token: Option<Box<TokenDigest>>,
    limits: DeviceLimits,
    typing: TypingLimit,
    /// Set once a Logout was answered: the loop ends after the next flush.
    logged_out: bool,
    requests: InFlight,
    fetch: Option<JoinHandle<Fetched>>,
    /// The retained presence being read for a new presence subscription.
    retained: Option<JoinHandle<Retained>>,
    keep_alive: Option<Duration>,
    /// When the device last sent a packet (keep-alive).
    last_seen: Instant,
    /// Set while an acked cursor waits to be written (durable sessions):
    /// when to write it.
    cursor_flush_due: Option<Instant>,
    /// The cursor write in progress, if any: at most one at a time, and
    /// `finish` waits for it, so no write of this connection reaches the
    /// session record after a successor has opened it.
    cursor_write: Option<JoinHandle<()>>,
    persisted_cursor: u64,
}

impl Connection {
    /// The packet loop. The waits that outlive one event (shutdown, take-over,
    /// the timer) are created once and re-armed only when needed:
    /// re-creating them per event registered and dropped timer and notify
    /// entries on every packet. Every idle connection's task holds this
    /// loop's state, so it keeps one timer for both the keep-alive and the
    /// cursor flush, and reads through a stateless poll.
    async fn run(&mut self, shutdown: &CancellationToken) -> Close {
        let shutdown = shutdown.cancelled();
        let live = self.link.live.clone();
        let stop = live.evicted();
        let timer = tokio::time::sleep_until(self.last_seen);
        tokio::pin!(shutdown, stop, timer);
        // The deadline the timer is set to; `None` once it has fired.
        let mut armed = None;
        loop {
            if let Err(close) = self.work_off().await {
                return close;
            }
            let due = self.timer_due();
            if let Some(due) = due {
                // The keep-alive deadline only moves later (checked when the
                // timer fires); a cursor flush may need it earlier.
                if armed.is_none_or(|armed| due < armed) {
                    timer.as_mut().reset(due);
                    armed = Some(due);
                }
            }
            let reading = self.may_read();
            tokio::select! {
                _ = &mut shutdown => return Close::Shutdown,
                why = &mut stop => return Close::evicted(why),
                read = self.io.read_into(&mut self.rbuf), if reading => match read {
                    Ok(0) => return Close::PeerClosed,
                    Ok(_) => {}
                    Err(error) => return Close::Io(error.to_string()),
                },
                live = self.link.live.next(), if !self.outbox.is_saturated() => {
                    self.on_live(live);
                    self.take_ready_outgoing();
                }
                done = self.requests.next(), if !self.requests.is_empty() => {
                    self.finish_request(done);
                    self.take_ready_outgoing();
                }
                fetched = wait_for(self.fetch.as_mut()) => {
                    self.fetch = None;
                    if let Err(close) = self.on_fetched(fetched) {
                        return close;
                    }
                }
                retained = wait_for(self.retained.as_mut()) => {
                    self.retained = None;
                    self.on_retained_presence(retained);
                }
                _ = timer.as_mut(), if due.is_some() => {
                    armed = None;
                    let now = Instant::now();
                    if self.cursor_flush_due.is_some_and(|due| due <= now) {
                        self.flush_cursor();
                    }
                    if self.keep_alive.is_some() && now >= self.keep_alive_due() {
                        return Close::KeepAliveTimeout;
                    }
                }
            }
        }
    }

    /// What is ready before the next wait: the packets already read, the
    /// outbox pump, the writes. `Err` once the connection is to end.
    async fn work_off(&mut self) -> Result<(), Close> {
        // Boxed: handling packets and writing need the largest states;
        // inline they would size every idle connection's task.
        if self.may_read() && !self.rbuf.is_empty() {
            if let Some(close) = Box::pin(self.handle_buffered()).await {
                return Err(close);
            }
        }
        self.pump();
        if !self.wbuf.is_empty() {
            Box::pin(self.flush()).await?;
        }
        if self.logged_out {
            return Err(Close::LoggedOut);
        }
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            // an idle connection holds no read buffer
            self.rbuf = BytesMut::new();
        }
        Ok(())
    }

    /// When the keep-alive runs out if nothing more arrives.
    fn keep_alive_due(&self) -> Instant {
        self.last_seen + self.keep_alive.unwrap_or(Duration::ZERO)
    }

    /// When the timer is next needed: the earlier of the keep-alive (if the
    /// device has one) and the cursor flush (if one is scheduled).
    fn timer_due(&self) -> Option<Instant> {
        let keep_alive = self.keep_alive.map(|_| self.keep_alive_due());
        keep_alive.into_iter().chain(self.cursor_flush_due).min()
    }
}

async fn wait_for<F: Future + Unpin>(future: Option<&mut F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::Connection;

    /// Every idle connection keeps its `Connection` in one box. At most
    /// 1,024 bytes, it takes mimalloc's 1,024-byte size class; one byte more
    /// and it takes the 1,280-byte class, 256 bytes more per connection.
    #[test]
    fn a_connection_fits_the_1024_byte_allocation_class() {
        let size = std::mem::size_of::<Connection>();
        assert!(size <= 1024, "Connection is {size} bytes");
    }
}
