//! Chat messages and system messages: idempotence, `seq`, the stored
//! message, every member's inbox, the conversation index, the sender's own
//! read cursor, and push jobs for members with no online device.

use parley_chat_logic::channel::Channel;
use parley_chat_logic::command::{SendMessage, SystemMessage, SystemTarget};
use parley_chat_logic::{send, ChatError, ReadCursor};
use parley_proto::v1::{envelope, Ack, ChatMessage};
use parley_storage::InboxEntry;

use super::{BatchPlan, Effect};
use crate::chat::outcome::{encode_body, internal, Committed, JobResult};

/// One message to store and fan out.
struct Post<'p> {
    sender: &'p str,
    channel: &'p str,
    recipients: &'p [String],
    text: &'p str,
    client_msg_id: &'p str,
    system: bool,
}

impl BatchPlan<'_> {
    /// A user's `SendMessage`.
    pub(super) fn send(&mut self, sender: &str, send: &SendMessage) -> JobResult {
        let channel = send.channel.id();
        if let Some(ack) = self.duplicate_of(sender, &channel, &send.client_msg_id)? {
            return Ok(Committed::stored(ack));
        }
        let group = self.group_of(&send.channel)?;
        let recipients =
            send::recipients(sender, &send.channel, group.as_ref(), &self.directory())?;
        let ack = self.post(Post {
            sender,
            channel: &channel,
            recipients: &recipients,
            text: &send.text,
            client_msg_id: &send.client_msg_id,
            system: false,
        })?;
        self.mark_own_message_read(sender, &channel, ack.seq);
        Ok(Committed::stored(ack))
    }

    /// A service's `SystemMessage`: one message to a channel, or one to each
    /// listed user's `sys:` channel, all in this batch (durable together).
    pub(super) fn system(&mut self, service: &str, system: &SystemMessage) -> JobResult {
        match &system.target {
            SystemTarget::Channel(channel) => {
                let ack = self.system_to_channel(service, channel, system)?;
                Ok(Committed::stored(ack))
            }
            SystemTarget::Users(users) => self.system_to_users(service, users, system),
        }
    }

    fn system_to_channel(
        &mut self,
        service: &str,
        channel: &Channel,
        system: &SystemMessage,
    ) -> Result<Ack, ChatError> {
        let channel_id = channel.id();
        if let Some(ack) = self.duplicate_of(service, &channel_id, &system.client_msg_id)? {
            return Ok(ack);
        }
        let group = self.group_of(channel)?;
        let recipients = send::system_recipients(channel, group.as_ref(), &self.directory())?;
        self.post(Post {
            sender: service,
            channel: &channel_id,
            recipients: &recipients,
            text: &system.text,
            client_msg_id: &system.client_msg_id,
            system: true,
        })
    }

    fn system_to_users(
        &mut self,
        service: &str,
        users: &[String],
        system: &SystemMessage,
    ) -> JobResult {
        // Every user is checked before anything is planned: all or none.
        let channels = users
            .iter()
            .map(|user| Channel::system(user))
            .collect::<Result<Vec<_>, _>>()?;
        let directory = self.directory();
        for channel in &channels {
            send::system_recipients(channel, None, &directory)?;
        }
        let mut stored = Vec::with_capacity(channels.len());
        let mut all_duplicates = true;
        for channel in &channels {
            let ack = self.system_to_channel(service, channel, system)?;
            all_duplicates &= ack.duplicate;
            stored.push((ack.channel, ack.seq));
        }
        let ack = Ack {
            duplicate: all_duplicates,
            ..self.ack(String::new(), 0)
        };
        Ok(Committed { ack, stored })
    }

    /// Stores a message and appends it to every recipient's inbox.
    fn post(&mut self, post: Post<'_>) -> Result<Ack, ChatError> {
        self.sequences
            .load(self.state, Some(post.channel), post.recipients)?;
        let seq = self.sequences.next_channel_seq(post.channel);
        let message = ChatMessage {
            channel: post.channel.to_owned(),
            seq,
            sender: post.sender.to_owned(),
            text: post.text.to_owned(),
            ts_ms: self.now_ms,
            client_msg_id: post.client_msg_id.to_owned(),
            system: post.system,
        };
        let ack = self.ack(post.channel.to_owned(), seq);
        let written = self.batch.put_message(&message);
        self.check(written);
        if !post.client_msg_id.is_empty() {
            let written = self
                .batch
                .put_dedup(post.sender, post.channel, post.client_msg_id, seq);
            self.check(written);
            let key = (
                post.sender.to_owned(),
                post.channel.to_owned(),
                post.client_msg_id.to_owned(),
            );
            self.sent.insert(key, ack.clone());
        }
        if seq == 1 {
            self.index_new_channel(post.channel, post.recipients);
        }
        self.queue_pushes(&message, post.recipients);
        let body = encode_body(envelope::Body::Message(message));
        let entry = InboxEntry::Message {
            channel: post.channel.to_owned(),
            seq,
        };
        self.append_to_inboxes(post.recipients, &entry, &body);
        Ok(ack)
    }

    /// A channel's first message puts it in its members' conversation
    /// index (groups are indexed when members join).
    fn index_new_channel(&mut self, channel: &str, members: &[String]) {
        for member in members {
            let written = self.batch.put_user_channel(member, channel);
            self.check(written);
        }
    }

    /// Whoever posts has read the channel up to their own message: their
    /// unread count does not grow by what they wrote. No receipt is sent
    /// (every member gets the message itself). `seq` is the channel's
    /// newest, so this never moves a cursor back.
    fn mark_own_message_read(&mut self, sender: &str, channel: &str, seq: u64) {
        let cursor = ReadCursor {
            delivered: seq,
            read: seq,
        };
        let written = self.batch.put_cursor(sender, channel, cursor);
        self.check(written);
        self.cursors
            .insert((sender.to_owned(), channel.to_owned()), cursor);
    }

    /// A push job for each recipient (not the sender) with no online device
    /// and with push registrations; jobs commit with the message.
    fn queue_pushes(&mut self, message: &ChatMessage, recipients: &[String]) {
        let services = self.services;
        let registered: Vec<&String> = recipients
            .iter()
            .filter(|user| **user != message.sender && services.has_push_registrations(user))
            .collect();
        if registered.is_empty() {
            return;
        }
        // one look at the tracker for the whole message, not one per member
        for user in services.offline_among(registered) {
            if !services.push_enabled() {
                tracing::info!(%user, channel = %message.channel, seq = message.seq,
                    "push gateway not configured: no notification sent");
                continue;
            }
            let written = services.queue_push(&mut self.batch, user, message);
            self.check(written);
            if !self.effects.contains(&Effect::PushQueued) {
                self.effects.push(Effect::PushQueued);
            }
        }
    }

    /// The original Ack of an earlier message with the same idempotence key.
    fn duplicate_of(
        &self,
        sender: &str,
        channel: &str,
        client_msg_id: &str,
    ) -> Result<Option<Ack>, ChatError> {
        if client_msg_id.is_empty() {
            return Ok(None);
        }
        let key = (
            sender.to_owned(),
            channel.to_owned(),
            client_msg_id.to_owned(),
        );
        if let Some(ack) = self.sent.get(&key) {
            return Ok(Some(Ack {
                duplicate: true,
                ..ack.clone()
            }));
        }
        let Some(seq) = self
            .state
            .dedup(sender, channel, client_msg_id)
            .map_err(internal)?
        else {
            return Ok(None);
        };
        let original = self.state.message(channel, seq).map_err(internal)?;
        Ok(Some(Ack {
            channel: channel.to_owned(),
            seq,
            ts_ms: original.map_or(0, |m| m.ts_ms),
            duplicate: true,
        }))
    }
}
