//! Each user's conversations: the index of their channels (`user_channels`)
//! and their read cursor in each (`cursors`), from which the unread total
//! (the push badge) is computed.
//!
//! The broker decides who is in which channel and moves the cursors (only
//! forward, see [`ReadCursor::mark`]); this file stores and reads them back.
//! Data dirs written before the index existed get it built once, at
//! [`Store::open`]: see [`Store::build_user_channels_if_missing`].

use parley_chat_logic::group::Group;
use parley_chat_logic::ReadCursor;
use rocksdb::WriteBatch;
use tracing::{info, warn};

use crate::batch::Batch;
use crate::error::StorageError;
use crate::keys::{self, Cf, SEQ_LEN, USER_CHANNELS_BUILT_KEY};
use crate::records;
use crate::store::{write_options, Store};

/// Length of a stored cursor: `delivered_be64 read_be64`.
const CURSOR_LEN: usize = 2 * SEQ_LEN;

impl Batch {
    /// Adds `channel` to `user`'s channels.
    pub fn put_user_channel(&mut self, user: &str, channel: &str) -> Result<(), StorageError> {
        let key = keys::pair_key(user, channel)?;
        self.put(Cf::UserChannels, key, Vec::new());
        Ok(())
    }

    /// Removes `channel` from `user`'s channels (nothing happens if it is
    /// not there). The read cursor is kept.
    pub fn delete_user_channel(&mut self, user: &str, channel: &str) -> Result<(), StorageError> {
        let key = keys::pair_key(user, channel)?;
        self.delete(Cf::UserChannels, key);
        Ok(())
    }

    /// Creates or replaces `user`'s read cursor in `channel`.
    pub fn put_cursor(
        &mut self,
        user: &str,
        channel: &str,
        cursor: ReadCursor,
    ) -> Result<(), StorageError> {
        let key = keys::pair_key(user, channel)?;
        self.put(Cf::Cursors, key, encode_cursor(cursor).to_vec());
        Ok(())
    }
}

impl Store {
    /// Every channel of `user` (`dm:`, `g:` and `sys:` ids), sorted.
    pub fn user_channels(&self, user: &str) -> Result<Vec<String>, StorageError> {
        let mut channels = Vec::new();
        self.for_each_pair(Cf::UserChannels, user, |channel, _, _| {
            channels.push(channel.to_owned());
            Ok(())
        })?;
        Ok(channels)
    }

    /// Whether `channel` is in `user`'s channels.
    pub fn has_user_channel(&self, user: &str, channel: &str) -> Result<bool, StorageError> {
        let key = keys::pair_key(user, channel)?;
        Ok(self.get(Cf::UserChannels, &key)?.is_some())
    }

    /// `user`'s read cursor in `channel`; [`ReadCursor::default`] (nothing
    /// delivered or read) if none was stored.
    pub fn cursor(&self, user: &str, channel: &str) -> Result<ReadCursor, StorageError> {
        let key = keys::pair_key(user, channel)?;
        match self.get(Cf::Cursors, &key)? {
            Some(bytes) => decode_cursor(&key, &bytes),
            None => Ok(ReadCursor::default()),
        }
    }

    /// Every stored read cursor of `user` as `(channel, cursor)`, sorted by
    /// channel.
    pub fn cursors_of(&self, user: &str) -> Result<Vec<(String, ReadCursor)>, StorageError> {
        let mut cursors = Vec::new();
        self.for_each_pair(Cf::Cursors, user, |channel, key, value| {
            cursors.push((channel.to_owned(), decode_cursor(key, value)?));
            Ok(())
        })?;
        Ok(cursors)
    }

    /// How many messages `user` has not read, over all of their channels:
    /// for each channel in [`Store::user_channels`], the messages after its
    /// read cursor ([`ReadCursor::unread`] of [`Store::last_channel_seq`]).
    pub fn unread_total(&self, user: &str) -> Result<u64, StorageError> {
        let channels = self.user_channels(user)?;
        // Both lists are sorted by channel: merge them.
        let mut cursors = self.cursors_of(user)?.into_iter().peekable();
        let mut total = 0u64;
        for channel in &channels {
            while cursors.next_if(|(other, _)| other < channel).is_some() {}
            let cursor = cursors
                .next_if(|(other, _)| other == channel)
                .map(|(_, cursor)| cursor)
                .unwrap_or_default();
            let unread = cursor.unread(self.last_channel_seq(channel)?);
            total = total.saturating_add(unread);
        }
        Ok(total)
    }

    /// Builds the `user_channels` index of a data dir written before it
    /// existed, once (until [`USER_CHANNELS_BUILT_KEY`] is set): every member
    /// of every group gets `g:{group}`, both users of every `dm:{a}:{b}` with
    /// a message get it, and `sys:{user}` with a message gets `user`. The
    /// index and the meta key are written in one synced batch, so a crash
    /// leaves either nothing (built again at the next open) or everything.
    pub(crate) fn build_user_channels_if_missing(&self) -> Result<(), StorageError> {
        if self.get(Cf::Meta, USER_CHANNELS_BUILT_KEY)?.is_some() {
            return Ok(());
        }
        let index = self.cf(Cf::UserChannels)?;
        let mut batch = WriteBatch::default();
        let mut add = |user: &str, channel: &str| -> Result<(), StorageError> {
            batch.put_cf(index, keys::pair_key(user, channel)?, []);
            Ok(())
        };
        for group in self.all_groups()? {
            let channel = format!("g:{}", group.id);
            for member in &group.members {
                add(member, &channel)?;
            }
        }
        for channel in self.message_channels()? {
            match channel_users(&channel) {
                Some(ChannelUsers::Direct(a, b)) => {
                    add(a, &channel)?;
                    add(b, &channel)?;
                }
                Some(ChannelUsers::System(user)) => add(user, &channel)?,
                None => {}
            }
        }
        let entries = batch.len();
        batch.put_cf(self.cf(Cf::Meta)?, USER_CHANNELS_BUILT_KEY, []);
        self.db.write_opt(batch, &write_options(true))?;
        info!(entries, "built the user_channels index");
        Ok(())
    }

    /// Every group record, ordered by id.
    fn all_groups(&self) -> Result<Vec<Group>, StorageError> {
        let mut iter = self.db.raw_iterator_cf(self.cf(Cf::Groups)?);
        iter.seek_to_first();
        let mut groups = Vec::new();
        while let Some((key, value)) = iter.item() {
            groups.push(records::group_from_json(key, value)?);
            iter.next();
        }
        iter.status()?;
        Ok(groups)
    }

    /// Every channel with at least one message, in order: reads the first
    /// key of each channel, then seeks past the channel's range.
    fn message_channels(&self) -> Result<Vec<String>, StorageError> {
        let mut iter = self.db.raw_iterator_cf(self.cf(Cf::Messages)?);
        iter.seek_to_first();
        let mut channels = Vec::new();
        while let Some(key) = iter.key() {
            let corrupt = |reason| StorageError::corrupt(Cf::Messages.name(), key, reason);
            let (channel, _) = keys::decode_seq_key(key).ok_or_else(|| corrupt("malformed key"))?;
            let channel =
                std::str::from_utf8(channel).map_err(|_| corrupt("channel is not UTF-8"))?;
            let end = keys::seq_range_end(channel)?;
            channels.push(channel.to_owned());
            iter.seek(&end);
        }
        iter.status()?;
        Ok(channels)
    }
}

/// The users a non-group channel belongs to, read from its id.
enum ChannelUsers<'a> {
    /// `dm:{a}:{b}`.
    Direct(&'a str, &'a str),
    /// `sys:{user}`.
    System(&'a str),
}

/// The users of `dm:` and `sys:` channels; `None` for groups (their
/// members come from the group record) and for unknown forms.
fn channel_users(channel: &str) -> Option<ChannelUsers<'_>> {
    if let Some(pair) = channel.strip_prefix("dm:") {
        match pair.split_once(':') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(':') => {
                return Some(ChannelUsers::Direct(a, b));
            }
            _ => {
                warn!(
                    channel,
                    "malformed direct channel left out of user_channels"
                );
                return None;
            }
        }
    }
    match channel.strip_prefix("sys:") {
        Some(user) if !user.is_empty() => Some(ChannelUsers::System(user)),
        _ => None,
    }
}

/// `delivered_be64 read_be64`.
fn encode_cursor(cursor: ReadCursor) -> [u8; CURSOR_LEN] {
    let mut bytes = [0; CURSOR_LEN];
    bytes[..SEQ_LEN].copy_from_slice(&keys::encode_seq(cursor.delivered));
    bytes[SEQ_LEN..].copy_from_slice(&keys::encode_seq(cursor.read));
    bytes
}

/// A cursor from its stored bytes at `key` in `cursors`.
pub(crate) fn decode_cursor(key: &[u8], bytes: &[u8]) -> Result<ReadCursor, StorageError> {
    let corrupt = || {
        let reason = format!(
            "expected a {CURSOR_LEN}-byte read cursor, found {} bytes",
            bytes.len()
        );
        StorageError::corrupt(Cf::Cursors.name(), key, reason)
    };
    if bytes.len() != CURSOR_LEN {
        return Err(corrupt());
    }
    let (delivered, read) = bytes.split_at(SEQ_LEN);
    Ok(ReadCursor {
        delivered: keys::decode_seq(delivered).ok_or_else(corrupt)?,
        read: keys::decode_seq(read).ok_or_else(corrupt)?,
    })
}

#[cfg(test)]
impl Store {
    /// Makes the data dir look as if it was written before `user_channels`
    /// existed: the index is emptied and its meta key removed, so the next
    /// [`Store::open`] builds it again.
    pub(crate) fn forget_user_channels_index(&self) {
        let index = self.cf(Cf::UserChannels).unwrap();
        let mut batch = WriteBatch::default();
        let mut iter = self.db.raw_iterator_cf(index);
        iter.seek_to_first();
        while let Some(key) = iter.key() {
            batch.delete_cf(index, key);
            iter.next();
        }
        iter.status().unwrap();
        batch.delete_cf(self.cf(Cf::Meta).unwrap(), USER_CHANNELS_BUILT_KEY);
        self.db.write_opt(batch, &write_options(true)).unwrap();
    }
}

#[cfg(test)]
mod tests;
