//! The task that owns one connection's rumqttc [`EventLoop`].
//!
//! It polls the event loop until the connection ends, and routes what
//! arrives: the CONNACK and the first SUBACK to [`Client::connect`](crate::Client::connect),
//! each `Reply` to the waiting request (by `request_id`), each `Envelope` to
//! the bounded inbox channel. When it ends, for whatever reason, it drops
//! every pending request (their callers see [`ClientError::Disconnected`])
//! and the inbox sender (the reader sees the end after the buffered envelopes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use parley_proto::v1::{Envelope, Reply};
use prost::Message;
use rumqttc::{Event, EventLoop, Incoming, Outgoing, Publish, SubAck};
use tokio::sync::{mpsc, oneshot};

use crate::error::ClientError;

/// Requests waiting for their reply, by `request_id`.
pub(crate) type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Reply>>>>;

/// Locks the pending map; a poisoned lock still holds a usable map.
pub(crate) fn lock(
    pending: &Pending,
) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Reply>>> {
    pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One connection's event-loop task. Built by `Client::connect`, consumed by [`Driver::run`].
pub(crate) struct Driver {
    pub eventloop: EventLoop,
    pub reply_topic: String,
    pub inbox_topic: String,
    pub pending: Pending,
    pub inbox_tx: mpsc::Sender<Envelope>,
    /// Answers `connect` once: `Ok(session_present)` or why it failed.
    pub connack_tx: Option<oneshot::Sender<Result<bool, ClientError>>>,
    /// Answers `connect`'s subscription once.
    pub suback_tx: Option<oneshot::Sender<SubAck>>,
    /// Resolves when the last `Client` handle is dropped.
    pub shutdown_rx: oneshot::Receiver<()>,
    pub connected: Arc<AtomicBool>,
}

/// Whether the loop goes on after an event.
enum Flow {
    Continue,
    Stop,
}

impl Driver {
    /// Polls until the connection ends, the client disconnects, or every handle is dropped.
    pub async fn run(mut self) {
        loop {
            let event = tokio::select! {
                biased;
                _ = &mut self.shutdown_rx => {
                    tracing::debug!("client dropped, closing the connection");
                    break;
                }
                event = self.eventloop.poll() => event,
            };
            let flow = match event {
                Ok(event) => self.handle(event).await,
                Err(err) => {
                    self.fail(err);
                    Flow::Stop
                }
            };
            if let Flow::Stop = flow {
                break;
            }
        }
        self.connected.store(false, Ordering::SeqCst);
        lock(&self.pending).clear();
    }

    async fn handle(&mut self, event: Event) -> Flow {
        match event {
            Event::Incoming(Incoming::ConnAck(ack)) => {
                self.connected.store(true, Ordering::SeqCst);
                if let Some(tx) = self.connack_tx.take() {
                    let _ = tx.send(Ok(ack.session_present));
                }
                Flow::Continue
            }
            Event::Incoming(Incoming::SubAck(ack)) => {
                if let Some(tx) = self.suback_tx.take() {
                    let _ = tx.send(ack);
                }
                Flow::Continue
            }
            Event::Incoming(Incoming::Publish(publish)) => self.route(publish).await,
            Event::Incoming(Incoming::Disconnect) => {
                tracing::info!("broker sent disconnect");
                Flow::Stop
            }
            Event::Outgoing(Outgoing::Disconnect) => {
                tracing::debug!("disconnect sent");
                Flow::Stop
            }
            _ => Flow::Continue,
        }
    }

    /// Sends a reply to its waiting request, or an envelope to the inbox channel.
    async fn route(&mut self, publish: Publish) -> Flow {
        if publish.topic == self.reply_topic {
            self.deliver_reply(&publish.payload);
            return Flow::Continue;
        }
        if publish.topic != self.inbox_topic {
            tracing::debug!(topic = %publish.topic, "publish on an unexpected topic ignored");
            return Flow::Continue;
        }
        let envelope = match Envelope::decode(publish.payload.as_ref()) {
            Ok(envelope) => envelope,
            Err(err) => {
                tracing::warn!(error = %err, topic = %publish.topic, "undecodable envelope skipped");
                return Flow::Continue;
            }
        };
        // Backpressure: while the application does not read, stop reading the socket.
        tokio::select! {
            biased;
            _ = &mut self.shutdown_rx => Flow::Stop,
            sent = self.inbox_tx.send(envelope) => match sent {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::Stop,
            },
        }
    }

    fn deliver_reply(&self, payload: &[u8]) {
        let reply = match Reply::decode(payload) {
            Ok(reply) => reply,
            Err(err) => {
                tracing::warn!(error = %err, "undecodable reply skipped");
                return;
            }
        };
        let waiter = lock(&self.pending).remove(&reply.request_id);
        match waiter {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            None => {
                tracing::debug!(request_id = %reply.request_id, "reply to an unknown request ignored")
            }
        }
    }

    fn fail(&mut self, err: rumqttc::ConnectionError) {
        match self.connack_tx.take() {
            Some(tx) => {
                let _ = tx.send(Err(err.into()));
            }
            None => tracing::warn!(error = %err, "connection to the broker lost"),
        }
    }
}
