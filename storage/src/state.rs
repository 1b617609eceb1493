//! [`ChatState`]: the reads the chat engine plans a batch with, and
//! nothing more, so planning runs the same against RocksDB ([`Store`]) and
//! against ordered maps in memory ([`MemoryStore`](crate::MemoryStore)).
//!
//! The write side is the [`Batch`](crate::Batch): planning puts its writes
//! there and whoever commits applies it. Both implementations pass one
//! conformance suite (`state/tests.rs`).

use parley_chat_logic::group::Group;
use parley_chat_logic::ReadCursor;
use parley_proto::v1::{ChatMessage, FriendState};

use crate::error::StorageError;
use crate::store::Store;

/// The chat state as planning reads it: accounts, groups, messages,
/// idempotence keys, the last sequence numbers, read cursors and friend
/// links. Every read sees what was committed before it, never a batch still
/// being planned (planning keeps its own overlay of those).
pub trait ChatState {
    /// Whether the account `id` exists.
    fn has_user(&self, id: &str) -> Result<bool, StorageError>;

    /// The group `id` (without the `g:` prefix), if it exists.
    fn group(&self, id: &str) -> Result<Option<Group>, StorageError>;

    /// The message `seq` of `channel`, if it exists.
    fn message(&self, channel: &str, seq: u64) -> Result<Option<ChatMessage>, StorageError>;

    /// The `seq` given to `sender`'s message `client_msg_id` in `channel`,
    /// if it was accepted before.
    fn dedup(
        &self,
        sender: &str,
        channel: &str,
        client_msg_id: &str,
    ) -> Result<Option<u64>, StorageError>;

    /// The highest `seq` stored in `channel`, 0 if it has no message.
    fn last_channel_seq(&self, channel: &str) -> Result<u64, StorageError>;

    /// The highest `inbox_seq` stored in `user`'s inbox, 0 if it is empty.
    fn last_inbox_seq(&self, user: &str) -> Result<u64, StorageError>;

    /// `user`'s read cursor in `channel`, [`ReadCursor::default`] if none.
    fn cursor(&self, user: &str, channel: &str) -> Result<ReadCursor, StorageError>;

    /// The state of `user`'s link to `other`, `None` if there is none.
    fn friend(&self, user: &str, other: &str) -> Result<Option<FriendState>, StorageError>;

    /// Every link of `user` as `(other, state)`, ordered by the other id.
    fn friends_of(&self, user: &str) -> Result<Vec<(String, FriendState)>, StorageError>;
}

/// The data dir: each read is the [`Store`] method of the same name.
impl ChatState for Store {
    fn has_user(&self, id: &str) -> Result<bool, StorageError> {
        Store::has_user(self, id)
    }

    fn group(&self, id: &str) -> Result<Option<Group>, StorageError> {
        Store::group(self, id)
    }

    fn message(&self, channel: &str, seq: u64) -> Result<Option<ChatMessage>, StorageError> {
        Store::message(self, channel, seq)
    }

    fn dedup(
        &self,
        sender: &str,
        channel: &str,
        client_msg_id: &str,
    ) -> Result<Option<u64>, StorageError> {
        Store::dedup(self, sender, channel, client_msg_id)
    }

    fn last_channel_seq(&self, channel: &str) -> Result<u64, StorageError> {
        Store::last_channel_seq(self, channel)
    }

    fn last_inbox_seq(&self, user: &str) -> Result<u64, StorageError> {
        Store::last_inbox_seq(self, user)
    }

    fn cursor(&self, user: &str, channel: &str) -> Result<ReadCursor, StorageError> {
        Store::cursor(self, user, channel)
    }

    fn friend(&self, user: &str, other: &str) -> Result<Option<FriendState>, StorageError> {
        Store::friend(self, user, other)
    }

    fn friends_of(&self, user: &str) -> Result<Vec<(String, FriendState)>, StorageError> {
        Store::friends_of(self, user)
    }
}

#[cfg(test)]
mod tests;
