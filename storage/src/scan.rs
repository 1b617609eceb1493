//! Range reads: listings, the last sequence numbers, history and inbox pages.
//!
//! Every scan runs over one owner's key range with RocksDB iterate bounds
//! (`owner 0x00 ..` up to `owner 0x01`), so it never reads a neighbour's keys.

use parley_proto::v1::{envelope::Body, ChatMessage, Envelope};
use rocksdb::{DBRawIteratorWithThreadMode, ReadOptions};

use crate::error::StorageError;
use crate::keys::{self, Cf};
use crate::records::{self, InboxEntry, SessionRecord, UserRecord};
use crate::store::{Db, Store};

/// Vectors are preallocated up to this many items, whatever the limit says.
const MAX_PREALLOC: usize = 1024;

type RawIter<'a> = DBRawIteratorWithThreadMode<'a, Db>;

/// An inbox entry as read, before message references are resolved.
struct StoredEntry {
    key: Vec<u8>,
    inbox_seq: u64,
    entry: InboxEntry,
}

impl Store {
    /// Every account, ordered by user id.
    pub fn list_users(&self) -> Result<Vec<(String, UserRecord)>, StorageError> {
        let mut iter = self.db.raw_iterator_cf(self.cf(Cf::Users)?);
        iter.seek_to_first();
        let mut users = Vec::new();
        while let Some((key, value)) = iter.item() {
            let id = std::str::from_utf8(key)
                .map_err(|e| StorageError::corrupt(Cf::Users.name(), key, e))?;
            users.push((id.to_owned(), records::from_json("users", key, value)?));
            iter.next();
        }
        iter.status()?;
        Ok(users)
    }

    /// Every durable session as `(user, device, session)`, ordered by user
    /// then device.
    pub fn list_sessions(&self) -> Result<Vec<(String, String, SessionRecord)>, StorageError> {
        let mut iter = self.db.raw_iterator_cf(self.cf(Cf::Sessions)?);
        iter.seek_to_first();
        let mut sessions = Vec::new();
        while let Some((key, value)) = iter.item() {
            let (user, device) = keys::decode_session_key(key)
                .ok_or_else(|| StorageError::corrupt(Cf::Sessions.name(), key, "malformed key"))?;
            let session = records::from_json("sessions", key, value)?;
            sessions.push((user.to_owned(), device.to_owned(), session));
            iter.next();
        }
        iter.status()?;
        Ok(sessions)
    }

    /// The highest `seq` stored in `channel`, 0 if it has no message.
    pub fn last_channel_seq(&self, channel: &str) -> Result<u64, StorageError> {
        self.last_seq(Cf::Messages, channel)
    }

    /// The highest `inbox_seq` stored in `user`'s inbox, 0 if it is empty.
    pub fn last_inbox_seq(&self, user: &str) -> Result<u64, StorageError> {
        self.last_seq(Cf::Inbox, user)
    }

    /// Up to `limit` messages of `channel` with `seq < before_seq` (every
    /// message if `before_seq` is 0), newest first, and whether older ones
    /// remain.
    pub fn history(
        &self,
        channel: &str,
        before_seq: u64,
        limit: usize,
    ) -> Result<(Vec<ChatMessage>, bool), StorageError> {
        let upper = match before_seq {
            0 => keys::seq_range_end(channel)?,
            before => keys::seq_key(channel, before)?,
        };
        let mut iter = self.range_iter(Cf::Messages, keys::seq_key(channel, 0)?, upper)?;
        iter.seek_to_last();
        let mut messages = Vec::with_capacity(limit.min(MAX_PREALLOC));
        while messages.len() < limit {
            let Some((key, value)) = iter.item() else {
                break;
            };
            messages.push(records::decode_chat_message(key, value)?);
            iter.prev();
        }
        let more = iter.valid();
        iter.status()?;
        Ok((messages, more))
    }

    /// Up to `limit` envelopes of `user`'s inbox with `inbox_seq >
    /// after_inbox_seq`, in order, with `inbox_seq` set and message
    /// references replaced by the messages; and whether more remain.
    pub fn inbox_after(
        &self,
        user: &str,
        after_inbox_seq: u64,
        limit: usize,
    ) -> Result<(Vec<Envelope>, bool), StorageError> {
        let Some(first) = after_inbox_seq.checked_add(1) else {
            return Ok((Vec::new(), false));
        };
        let (entries, more) = self.read_inbox(user, first, limit)?;
        Ok((self.resolve(entries)?, more))
    }

    /// Inbox entries from `first` on, at most `limit`, and whether more remain.
    fn read_inbox(
        &self,
        user: &str,
        first: u64,
        limit: usize,
    ) -> Result<(Vec<StoredEntry>, bool), StorageError> {
        let lower = keys::seq_key(user, first)?;
        let mut iter = self.range_iter(Cf::Inbox, lower.clone(), keys::seq_range_end(user)?)?;
        iter.seek(&lower);
        let mut entries = Vec::with_capacity(limit.min(MAX_PREALLOC));
        while entries.len() < limit {
            let Some((key, value)) = iter.item() else {
                break;
            };
            entries.push(decode_inbox_item(key, value)?);
            iter.next();
        }
        let more = iter.valid();
        iter.status()?;
        Ok((entries, more))
    }

    /// Turns entries into envelopes, fetching referenced messages in one
    /// batched multi-get.
    fn resolve(&self, entries: Vec<StoredEntry>) -> Result<Vec<Envelope>, StorageError> {
        let mut wanted = Vec::new();
        for (index, stored) in entries.iter().enumerate() {
            if let InboxEntry::Message { channel, seq } = &stored.entry {
                wanted.push((index, keys::seq_key(channel, *seq)?));
            }
        }
        let cf = self.cf(Cf::Messages)?;
        let values = self
            .db
            .batched_multi_get_cf(cf, wanted.iter().map(|(_, key)| key), false);
        let mut messages: Vec<Option<ChatMessage>> = vec![None; entries.len()];
        for ((index, key), value) in wanted.iter().zip(values) {
            let bytes =
                value?.ok_or_else(|| dangling(&entries[*index].key, &entries[*index].entry))?;
            messages[*index] = Some(records::decode_chat_message(key, &bytes)?);
        }
        entries
            .into_iter()
            .zip(messages)
            .map(|(stored, message)| envelope(stored, message))
            .collect()
    }

    /// Calls `f(item, key, value)` for every [`keys::pair_key`]`(owner, item)`
    /// of `cf`, in item order: one scan of `owner`'s range with iterate
    /// bounds. A key whose item is not UTF-8 is corrupt.
    pub(crate) fn for_each_pair(
        &self,
        cf: Cf,
        owner: &str,
        mut f: impl FnMut(&str, &[u8], &[u8]) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let lower = keys::pair_prefix(owner)?;
        let skip = lower.len();
        let mut iter = self.range_iter(cf, lower, keys::pair_range_end(owner)?)?;
        iter.seek_to_first();
        while let Some((key, value)) = iter.item() {
            f(keys::pair_item(cf, key, skip)?, key, value)?;
            iter.next();
        }
        iter.status()?;
        Ok(())
    }

    /// The sequence number in the last key of `owner`'s range, 0 if empty.
    fn last_seq(&self, cf: Cf, owner: &str) -> Result<u64, StorageError> {
        let mut iter =
            self.range_iter(cf, keys::seq_key(owner, 0)?, keys::seq_range_end(owner)?)?;
        iter.seek_to_last();
        let Some(key) = iter.key() else {
            iter.status()?;
            return Ok(0);
        };
        keys::decode_seq_key(key)
            .map(|(_, seq)| seq)
            .ok_or_else(|| StorageError::corrupt(cf.name(), key, "malformed key"))
    }

    /// A raw iterator over `[lower, upper)` of one column family.
    fn range_iter(
        &self,
        cf: Cf,
        lower: Vec<u8>,
        upper: Vec<u8>,
    ) -> Result<RawIter<'_>, StorageError> {
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(lower);
        options.set_iterate_upper_bound(upper);
        Ok(self.db.raw_iterator_cf_opt(self.cf(cf)?, options))
    }
}

fn decode_inbox_item(key: &[u8], value: &[u8]) -> Result<StoredEntry, StorageError> {
    let corrupt = |reason: String| StorageError::corrupt(Cf::Inbox.name(), key, reason);
    let (_, inbox_seq) =
        keys::decode_seq_key(key).ok_or_else(|| corrupt("malformed key".into()))?;
    let entry = InboxEntry::decode(value).map_err(corrupt)?;
    Ok(StoredEntry {
        key: key.to_vec(),
        inbox_seq,
        entry,
    })
}

/// The envelope of one entry; `message` is the resolved reference, if any.
fn envelope(stored: StoredEntry, message: Option<ChatMessage>) -> Result<Envelope, StorageError> {
    let body = match (stored.entry, message) {
        (InboxEntry::Event(body), _) => body,
        (InboxEntry::Message { .. }, Some(message)) => Body::Message(message),
        (entry, None) => return Err(dangling(&stored.key, &entry)),
    };
    Ok(Envelope {
        inbox_seq: stored.inbox_seq,
        body: Some(body),
    })
}

/// The error for an inbox entry whose message is missing.
fn dangling(key: &[u8], entry: &InboxEntry) -> StorageError {
    let reason = match entry {
        InboxEntry::Message { channel, seq } => {
            format!("references missing message {channel}#{seq}")
        }
        InboxEntry::Event(_) => "unresolved entry".to_owned(),
    };
    StorageError::corrupt(Cf::Inbox.name(), key, reason)
}

#[cfg(test)]
mod tests;
