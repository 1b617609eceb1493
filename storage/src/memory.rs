//! [`MemoryStore`]: the chat state in ordered maps, for tests of planning
//! (and anything else written against [`ChatState`]).
//!
//! It holds the very bytes RocksDB would: one `BTreeMap` per column family,
//! keys from `keys.rs`, values as `records.rs` and the other files encode
//! them, and reads decode them with the same functions as [`Store`]'s. A
//! [`Batch`] is applied in the order [`Store::commit`] applies it. So it
//! differs from the data dir only where RocksDB does the work (range
//! bounds, the last key of a range, atomicity), which is what the
//! conformance suite (`state/tests.rs`) checks on both.
//!
//! Always compiled, not behind a feature: it is small and needs nothing
//! more than the crate does, while a feature turned on only by other crates'
//! dev-dependencies would make `cargo build` and `cargo test` compile this
//! crate (and everything above it) twice, with different features.
//!
//! [`Store`]: crate::Store
//! [`Store::commit`]: crate::Store::commit

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use parley_chat_logic::group::Group;
use parley_chat_logic::ReadCursor;
use parley_proto::v1::{ChatMessage, FriendState};

use crate::batch::Batch;
use crate::conversations::decode_cursor;
use crate::error::StorageError;
use crate::friends::decode_state;
use crate::keys::{self, Cf};
use crate::records;
use crate::state::ChatState;

/// Keys and values of every column family.
type Families = BTreeMap<Cf, BTreeMap<Vec<u8>, Vec<u8>>>;

/// The chat state in memory: a cheap, cloneable handle (clones share the
/// maps), empty when made, changed only by [`MemoryStore::apply`].
#[derive(Clone, Default)]
pub struct MemoryStore {
    families: Arc<RwLock<Families>>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: usize = self.read().values().map(BTreeMap::len).sum();
        f.debug_struct("MemoryStore")
            .field("entries", &entries)
            .finish()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Applies `batch` atomically: readers see all of it or none. Nothing
    /// is durable, so there is nothing to sync and nothing can fail.
    pub fn apply(&self, batch: Batch) {
        let mut families = self
            .families
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for write in batch.into_sorted_writes() {
            let family = families.entry(write.cf).or_default();
            match write.value {
                Some(value) => family.insert(write.key, value),
                None => family.remove(&write.key),
            };
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Families> {
        self.families.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Option<Vec<u8>> {
        self.read().get(&cf)?.get(key).cloned()
    }

    /// Every `(key, value)` of `cf` in `[lower, upper)`, in key order.
    fn range(&self, cf: Cf, lower: Vec<u8>, upper: Vec<u8>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let families = self.read();
        let Some(family) = families.get(&cf) else {
            return Vec::new();
        };
        family
            .range(lower..upper)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }

    /// The sequence number in the last key of `owner`'s range, 0 if empty.
    fn last_seq(&self, cf: Cf, owner: &str) -> Result<u64, StorageError> {
        let families = self.read();
        let lower = keys::seq_key(owner, 0)?;
        let upper = keys::seq_range_end(owner)?;
        let Some((key, _)) = families
            .get(&cf)
            .and_then(|family| family.range(lower..upper).next_back())
        else {
            return Ok(0);
        };
        keys::decode_seq_key(key)
            .map(|(_, seq)| seq)
            .ok_or_else(|| StorageError::corrupt(cf.name(), key, "malformed key"))
    }
}

impl ChatState for MemoryStore {
    fn has_user(&self, id: &str) -> Result<bool, StorageError> {
        Ok(self.get(Cf::Users, &keys::id_key(id)?).is_some())
    }

    fn group(&self, id: &str) -> Result<Option<Group>, StorageError> {
        let key = keys::id_key(id)?;
        self.get(Cf::Groups, &key)
            .map(|bytes| records::group_from_json(&key, &bytes))
            .transpose()
    }

    fn message(&self, channel: &str, seq: u64) -> Result<Option<ChatMessage>, StorageError> {
        let key = keys::seq_key(channel, seq)?;
        self.get(Cf::Messages, &key)
            .map(|bytes| records::decode_chat_message(&key, &bytes))
            .transpose()
    }

    fn dedup(
        &self,
        sender: &str,
        channel: &str,
        client_msg_id: &str,
    ) -> Result<Option<u64>, StorageError> {
        let key = keys::dedup_key(sender, channel, client_msg_id)?;
        self.get(Cf::Dedup, &key)
            .map(|bytes| records::decode_seq_value(Cf::Dedup.name(), &key, &bytes))
            .transpose()
    }

    fn last_channel_seq(&self, channel: &str) -> Result<u64, StorageError> {
        self.last_seq(Cf::Messages, channel)
    }

    fn last_inbox_seq(&self, user: &str) -> Result<u64, StorageError> {
        self.last_seq(Cf::Inbox, user)
    }

    fn cursor(&self, user: &str, channel: &str) -> Result<ReadCursor, StorageError> {
        let key = keys::pair_key(user, channel)?;
        match self.get(Cf::Cursors, &key) {
            Some(bytes) => decode_cursor(&key, &bytes),
            None => Ok(ReadCursor::default()),
        }
    }

    fn friend(&self, user: &str, other: &str) -> Result<Option<FriendState>, StorageError> {
        let key = keys::pair_key(user, other)?;
        self.get(Cf::Friends, &key)
            .map(|bytes| decode_state(&key, &bytes))
            .transpose()
    }

    fn friends_of(&self, user: &str) -> Result<Vec<(String, FriendState)>, StorageError> {
        let lower = keys::pair_prefix(user)?;
        let skip = lower.len();
        let upper = keys::pair_range_end(user)?;
        self.range(Cf::Friends, lower, upper)
            .into_iter()
            .map(|(key, value)| {
                let other = keys::pair_item(Cf::Friends, &key, skip)?.to_owned();
                Ok((other, decode_state(&key, &value)?))
            })
            .collect()
    }
}
