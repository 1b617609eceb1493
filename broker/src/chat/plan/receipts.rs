//! Read receipts: the reader's per-channel cursor moves forward only, and
//! every member (the reader's own inbox too) gets a `ReceiptEvent`.

use parley_chat_logic::channel::Channel;
use parley_chat_logic::command::MarkReceipt;
use parley_chat_logic::group::Group;
use parley_chat_logic::{send, ChatError, ReadCursor};
use parley_proto::v1::{envelope, Ack, ReceiptEvent};

use super::BatchPlan;
use crate::chat::outcome::internal;

impl BatchPlan<'_> {
    /// A `MarkReceipt`: `NOT_FOUND` for a message that does not exist; a
    /// stale or repeated receipt is answered as a duplicate and changes
    /// nothing.
    pub(super) fn receipt(&mut self, reader: &str, mark: &MarkReceipt) -> Result<Ack, ChatError> {
        let channel = mark.channel.id();
        let group = self.group_of(&mark.channel)?;
        let members = members_of(reader, &mark.channel, group.as_ref())?;
        self.sequences.load(self.state, Some(&channel), &members)?;
        let newest = self.sequences.channel_seq(&channel);
        if mark.seq > newest {
            return Err(ChatError::not_found(format!(
                "{channel} has no message {} (its newest is {newest})",
                mark.seq
            )));
        }
        let current = self.cursor(reader, &channel)?;
        let Some(next) = current.mark(mark.kind, mark.seq) else {
            return Ok(Ack {
                duplicate: true,
                ..self.ack(channel, mark.seq)
            });
        };
        let written = self.batch.put_cursor(reader, &channel, next);
        self.check(written);
        self.cursors
            .insert((reader.to_owned(), channel.clone()), next);
        let event = ReceiptEvent {
            channel: channel.clone(),
            user: reader.to_owned(),
            seq: mark.seq,
            kind: mark.kind as i32,
        };
        self.append_event(&members, envelope::Body::Receipt(event));
        Ok(self.ack(channel, mark.seq))
    }

    /// `user`'s cursor in `channel`, as planned in this batch or stored.
    fn cursor(&self, user: &str, channel: &str) -> Result<ReadCursor, ChatError> {
        let key = (user.to_owned(), channel.to_owned());
        if let Some(cursor) = self.cursors.get(&key) {
            return Ok(*cursor);
        }
        self.state.cursor(user, channel).map_err(internal)
    }
}

/// Everyone who sees `reader`'s receipts in `channel`: its members, once
/// `reader` is checked to be one of them.
fn members_of(
    reader: &str,
    channel: &Channel,
    group: Option<&Group>,
) -> Result<Vec<String>, ChatError> {
    send::check_reader(reader, channel, group)?;
    Ok(match (channel, group) {
        (Channel::Direct { low, high }, _) => vec![low.clone(), high.clone()],
        (Channel::Group(_), Some(group)) => group.members.clone(),
        (Channel::Group(_), None) | (Channel::System(_), _) => vec![reader.to_owned()],
    })
}
