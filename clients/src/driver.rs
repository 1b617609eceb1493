//! The task that owns one connection's rumqttc [`EventLoop`].
//!
//! It polls the event loop until the connection ends, and routes what
//! arrives: the CONNACK to [`Client::connect`](crate::Client::connect),
//! each SUBACK to the subscription waiting for it (in order), each `Reply`
//! to the waiting request (by `request_id`), each `Envelope` to the bounded
//! inbox channel, and each publish on `presence/{subject}/{user}` to the
//! presence queue. Every envelope is passed on, live-only ones
//! (`inbox_seq` 0, typing) included: dropping repeats by `inbox_seq` is
//! the application's business, and 0 is never a repeat.
//! When it ends, for whatever reason, it drops every pending request and
//! subscription (their callers see [`ClientError::Disconnected`]), the inbox
//! sender and the presence queue (readers see the end after what is
//! buffered).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use parley_proto::v1::{Envelope, Reply};
use prost::Message;
use rumqttc::{Event, EventLoop, Incoming, Outgoing, Publish, SubAck};
use tokio::sync::{mpsc, oneshot};

use crate::error::ClientError;
use crate::presence::{PresenceQueue, PresenceUpdate};

/// Requests waiting for their reply, by `request_id`.
pub(crate) type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Reply>>>>;

/// Subscriptions waiting for their SUBACK, in the order they were sent (the
/// broker answers SUBSCRIBEs in order).
pub(crate) type SubAcks = Arc<Mutex<VecDeque<oneshot::Sender<SubAck>>>>;

/// Locks a map or queue; a poisoned lock still holds a usable value.
pub(crate) fn lock_any<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Locks the pending map; a poisoned lock still holds a usable map.
pub(crate) fn lock(
    pending: &Pending,
) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Reply>>> {
    lock_any(pending)
}

/// One connection's event-loop task. Built by `Client::connect`, consumed by [`Driver::run`].
pub(crate) struct Driver {
    pub eventloop: EventLoop,
    /// The device's user: presence topics are `presence/{subject}/{user}`.
    pub user: String,
    pub reply_topic: String,
    pub inbox_topic: String,
    pub pending: Pending,
    pub inbox_tx: mpsc::Sender<Envelope>,
    pub presence: Arc<PresenceQueue>,
    /// Answers `connect` once: `Ok(session_present)` or why it failed.
    pub connack_tx: Option<oneshot::Sender<Result<bool, ClientError>>>,
    /// Answers each subscription, in order.
    pub subacks: SubAcks,
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
        lock_any(&self.subacks).clear();
        self.presence.close();
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
                let waiter = lock_any(&self.subacks).pop_front();
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(ack);
                    }
                    None => tracing::debug!(pkid = ack.pkid, "SUBACK nobody waits for ignored"),
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

    /// Sends a reply to its waiting request, an envelope to the inbox
    /// channel, or a presence update to the presence queue.
    async fn route(&mut self, publish: Publish) -> Flow {
        if publish.topic == self.reply_topic {
            self.deliver_reply(&publish.payload);
            return Flow::Continue;
        }
        if publish.topic != self.inbox_topic {
            self.deliver_presence(&publish);
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

    fn deliver_presence(&self, publish: &Publish) {
        match PresenceUpdate::from_publish(
            &self.user,
            &publish.topic,
            &publish.payload,
            publish.retain,
        ) {
            Some(Ok(update)) => self.presence.push(update),
            Some(Err(err)) => {
                tracing::warn!(error = %err, topic = %publish.topic, "undecodable presence skipped")
            }
            None => {
                tracing::debug!(topic = %publish.topic, "publish on an unexpected topic ignored")
            }
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
