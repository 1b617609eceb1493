//! What goes to the device: live batches from the router, the outbox pump
//! (replies, presence, the inbox stream), encoding and writing out, the
//! store read-ahead, the retained presence snapshot and the acked cursor's
//! flushes (durable sessions).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use parley_proto::topics;
use parley_storage::StorageError;
use prost::Message;
use rumqttd::protocol::Packet;
use tokio::time::Instant;

use super::lifecycle::Close;
use super::subscriptions::is_presence_filter;
use super::Connection;
use crate::metrics as m;
use crate::mqtt::codec;
use crate::mqtt::outbox::Stream;
use crate::router::{LiveBatch, PresenceUpdate};

/// How long a write may block before the device is considered gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often at most a durable session's acked cursor is written.
pub(super) const CURSOR_FLUSH: Duration = Duration::from_millis(100);

pub(super) type Fetched = Result<Vec<(u64, Bytes)>, StorageError>;
pub(super) type Retained = Result<Vec<PresenceUpdate>, StorageError>;

impl Connection {
    /// Envelopes from the router; when it had to drop some, catch up to the
    /// inbox head from the store.
    pub(super) fn on_live(&mut self, live: LiveBatch) {
        if live.missed {
            self.outbox
                .observe_head(self.shared.router.inbox_head(&self.user));
        }
        for envelope in live.envelopes {
            self.outbox.push_live(envelope);
        }
        for update in live.presence {
            self.outbox.push_presence(update);
        }
    }

    /// Takes every live envelope and finished request that is ready right
    /// now, without waiting, so they leave in one write: a sender's reply,
    /// its PUBACK and its own inbox copy are ready at nearly the same time.
    pub(super) fn take_ready_outgoing(&mut self) {
        if !self.outbox.is_saturated() {
            let live = self.link.live.take();
            self.on_live(live);
        }
        while !self.requests.is_empty() {
            match self.requests.next().now_or_never() {
                Some(done) => self.finish_request(done),
                None => break,
            }
        }
    }

    pub(super) fn pump(&mut self) {
        let pumped = self.outbox.pump();
        for outgoing in pumped.publishes {
            let presence_topic;
            let topic = match &outgoing.stream {
                Stream::Reply => &self.reply_topic,
                Stream::Inbox => &self.inbox_topic,
                Stream::Presence(subject) => {
                    presence_topic = topics::presence(subject, &self.user);
                    &presence_topic
                }
            };
            let publish = codec::outgoing_publish(
                topic,
                outgoing.payload,
                outgoing.qos,
                outgoing.pkid,
                outgoing.retain,
            );
            self.write(Packet::Publish(publish, None));
            m::messages_out(1);
        }
        if let Some((after, limit)) = pumped.fetch {
            self.start_fetch(after, limit);
        }
    }

    pub(super) async fn pump_and_flush(&mut self) -> Result<(), Close> {
        self.pump();
        self.flush().await
    }

    /// Writes out the write buffer.
    pub(super) async fn flush(&mut self) -> Result<(), Close> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let written = tokio::time::timeout(WRITE_TIMEOUT, self.io.write_all(&self.wbuf)).await;
        // Released, not cleared: an idle connection holds no write buffer.
        self.wbuf = BytesMut::new();
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Close::Io(error.to_string())),
            Err(_) => Err(Close::Io("write timed out".into())),
        }
    }

    pub(super) fn write(&mut self, packet: Packet) {
        if let Err(error) = self.codec.write(packet, &mut self.wbuf) {
            tracing::error!(%error, "cannot encode an outgoing packet");
        }
    }

    fn start_fetch(&mut self, after: u64, limit: usize) {
        let store = self.shared.store.clone();
        let user = self.user.clone();
        self.fetch = Some(tokio::task::spawn_blocking(move || {
            let (envelopes, _more) = store.inbox_after(&user, after, limit)?;
            Ok(envelopes
                .into_iter()
                .map(|envelope| (envelope.inbox_seq, Bytes::from(envelope.encode_to_vec())))
                .collect())
        }));
    }

    pub(super) fn on_fetched(
        &mut self,
        fetched: Result<Fetched, tokio::task::JoinError>,
    ) -> Result<(), Close> {
        match fetched {
            Ok(Ok(envelopes)) => {
                self.outbox.on_fetched(envelopes);
                Ok(())
            }
            Ok(Err(error)) => Err(Close::Store(error.to_string())),
            Err(error) => Err(Close::Store(error.to_string())),
        }
    }

    /// Reads the retained presence of the device's user (its friends'
    /// states) for a presence subscription just made or resumed.
    pub(super) fn read_retained_presence(&mut self) {
        self.outbox.begin_presence_snapshot();
        let presence = self.shared.presence.clone();
        let user = self.user.clone();
        self.retained = Some(tokio::spawn(
            async move { presence.retained_for(&user).await },
        ));
    }

    pub(super) fn read_retained_presence_if_subscribed(&mut self) {
        if self
            .subscriptions
            .iter()
            .any(|(filter, _)| is_presence_filter(filter))
        {
            self.read_retained_presence();
        }
    }

    pub(super) fn on_retained_presence(
        &mut self,
        retained: Result<Retained, tokio::task::JoinError>,
    ) {
        match retained {
            Ok(Ok(updates)) => self.outbox.on_presence_snapshot(updates),
            Ok(Err(error)) => tracing::error!(%error, "cannot read the retained presence"),
            Err(error) => tracing::error!(%error, "retained presence task failed"),
        }
    }

    pub(super) fn schedule_cursor_flush(&mut self) {
        if self.durable.is_some() && self.cursor_flush_due.is_none() {
            self.cursor_flush_due = Some(Instant::now() + CURSOR_FLUSH);
        }
    }

    /// Writes the acked cursor in the background (unsynced: losing it to a
    /// crash only means redelivery).
    pub(super) fn flush_cursor(&mut self) {
        self.cursor_flush_due = None;
        if self
            .cursor_write
            .as_ref()
            .is_some_and(|write| !write.is_finished())
        {
            // One write at a time, so they land in order: try again later.
            self.schedule_cursor_flush();
            return;
        }
        let acked = self.outbox.acked_upto();
        if acked <= self.persisted_cursor {
            return;
        }
        self.persisted_cursor = acked;
        let session = self.session.clone();
        self.cursor_write = Some(tokio::task::spawn_blocking(move || {
            if let Err(error) = session.set_cursor(acked) {
                tracing::warn!(%error, "cannot save the session cursor");
            }
        }));
    }
}
