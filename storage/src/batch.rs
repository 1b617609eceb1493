//! Atomic write batches: plain data, planned without the store and applied
//! by [`Store::commit`] (or [`MemoryStore::apply`](crate::MemoryStore::apply)).

use std::fmt;

use parley_chat_logic::group::Group;
use parley_proto::v1::ChatMessage;
use prost::Message as _;
use rocksdb::WriteBatch;

use crate::error::StorageError;
use crate::keys::{self, Cf};
use crate::records::{self, InboxEntry, UserRecord};
use crate::store::{write_options, Store};

/// Writes that become visible together, all or none, when the batch is
/// committed. A batch is plain data (encoded keys and values, no handle to
/// a store): planning fills it without touching RocksDB, and dropping it
/// writes nothing.
///
/// Writes are applied sorted by column family and key (a stable sort:
/// writes to one key keep their order, the last one wins). A group commit
/// interleaves many channels and inboxes; in key order, each memtable
/// insert starts from where the previous one ended instead of searching
/// the skip list from the top, which was the engine's largest CPU cost.
#[derive(Default)]
pub struct Batch {
    writes: Vec<Write>,
}

/// One put (`Some(value)`) or delete (`None`).
pub(crate) struct Write {
    pub(crate) cf: Cf,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Option<Vec<u8>>,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("writes", &self.writes.len())
            .finish()
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Creates or replaces the account `id`.
    pub fn put_user(&mut self, id: &str, user: &UserRecord) -> Result<(), StorageError> {
        let key = keys::id_key(id)?;
        self.put(Cf::Users, key, records::to_json("user", user)?);
        Ok(())
    }

    /// Stores `message` under its `channel` and `seq`.
    pub fn put_message(&mut self, message: &ChatMessage) -> Result<(), StorageError> {
        let key = keys::seq_key(&message.channel, message.seq)?;
        self.put(Cf::Messages, key, message.encode_to_vec());
        Ok(())
    }

    /// Appends `entry` to `user`'s inbox at `inbox_seq`.
    pub fn put_inbox(
        &mut self,
        user: &str,
        inbox_seq: u64,
        entry: &InboxEntry,
    ) -> Result<(), StorageError> {
        let key = keys::seq_key(user, inbox_seq)?;
        self.put(Cf::Inbox, key, entry.encode());
        Ok(())
    }

    /// Remembers that `sender`'s `client_msg_id` in `channel` got `seq`.
    pub fn put_dedup(
        &mut self,
        sender: &str,
        channel: &str,
        client_msg_id: &str,
        seq: u64,
    ) -> Result<(), StorageError> {
        let key = keys::dedup_key(sender, channel, client_msg_id)?;
        self.put(Cf::Dedup, key, keys::encode_seq(seq).to_vec());
        Ok(())
    }

    /// Creates or replaces the group `group.id`.
    pub fn put_group(&mut self, group: &Group) -> Result<(), StorageError> {
        let key = keys::id_key(&group.id)?;
        self.put(Cf::Groups, key, records::group_to_json(group)?);
        Ok(())
    }

    /// Removes the group `id` (nothing happens if it does not exist).
    pub fn delete_group(&mut self, id: &str) -> Result<(), StorageError> {
        let key = keys::id_key(id)?;
        self.delete(Cf::Groups, key);
        Ok(())
    }

    /// Number of writes in the batch.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// True if the batch holds no write.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Adds a put of `value` at `key` in `cf`.
    pub(crate) fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.writes.push(Write {
            cf,
            key,
            value: Some(value),
        });
    }

    /// Adds a delete of `key` in `cf`.
    pub(crate) fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.writes.push(Write {
            cf,
            key,
            value: None,
        });
    }

    /// The writes in the order they are applied: by column family and key,
    /// writes to one key in the order they were made.
    pub(crate) fn into_sorted_writes(mut self) -> Vec<Write> {
        self.writes
            .sort_by(|a, b| (a.cf, &a.key).cmp(&(b.cf, &b.key)));
        self.writes
    }
}

impl Store {
    /// Applies `batch` atomically. With `sync`, returns only once the write
    /// ahead log is on disk (fsync), so the writes survive a crash: commit
    /// many requests in one synced batch to share the fsync.
    pub fn commit(&self, batch: Batch, sync: bool) -> Result<(), StorageError> {
        let mut writes = WriteBatch::default();
        for write in batch.into_sorted_writes() {
            let cf = self.cf(write.cf)?;
            match &write.value {
                Some(value) => writes.put_cf(cf, &write.key, value),
                None => writes.delete_cf(cf, &write.key),
            }
        }
        self.db.write_opt(writes, &write_options(sync))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::{chat, temp_store};
    use crate::{Batch, InboxEntry};
    use parley_chat_logic::group::Group;

    fn team() -> Group {
        Group {
            id: "team".to_owned(),
            name: "Team".to_owned(),
            owner: "alice".to_owned(),
            members: vec!["alice".to_owned(), "bob".to_owned()],
        }
    }

    #[test]
    fn nothing_is_visible_before_commit_and_everything_after() {
        let (_dir, store) = temp_store();
        let mut batch = Batch::new();
        batch.put_message(&chat("g:team", 1, "alice")).unwrap();
        for user in ["alice", "bob"] {
            let entry = InboxEntry::Message {
                channel: "g:team".to_owned(),
                seq: 1,
            };
            batch.put_inbox(user, 1, &entry).unwrap();
        }
        batch.put_dedup("alice", "g:team", "c1", 1).unwrap();
        batch.put_group(&team()).unwrap();
        assert_eq!(batch.len(), 5);

        assert_eq!(store.last_channel_seq("g:team").unwrap(), 0);
        assert_eq!(store.group("team").unwrap(), None);

        store.commit(batch, true).unwrap();
        assert_eq!(store.last_channel_seq("g:team").unwrap(), 1);
        assert_eq!(store.last_inbox_seq("alice").unwrap(), 1);
        assert_eq!(store.last_inbox_seq("bob").unwrap(), 1);
        assert_eq!(store.dedup("alice", "g:team", "c1").unwrap(), Some(1));
        assert_eq!(store.group("team").unwrap(), Some(team()));
    }

    #[test]
    fn a_dropped_or_failed_batch_writes_nothing() {
        let (_dir, store) = temp_store();
        let mut batch = Batch::new();
        batch.put_message(&chat("g:team", 1, "alice")).unwrap();
        drop(batch);

        let mut batch = Batch::new();
        batch.put_message(&chat("g:team", 1, "alice")).unwrap();
        assert!(batch
            .put_inbox(
                "bad\0user",
                1,
                &InboxEntry::Message {
                    channel: "g:team".to_owned(),
                    seq: 1,
                }
            )
            .is_err());
        drop(batch);

        assert_eq!(store.last_channel_seq("g:team").unwrap(), 0);
    }

    #[test]
    fn groups_are_replaced_and_deleted_in_batches() {
        let (_dir, store) = temp_store();
        let mut batch = Batch::new();
        batch.put_group(&team()).unwrap();
        store.commit(batch, false).unwrap();

        let mut bigger = team();
        bigger.members.push("carol".to_owned());
        let mut batch = Batch::new();
        batch.put_group(&bigger).unwrap();
        store.commit(batch, true).unwrap();
        assert_eq!(store.group("team").unwrap(), Some(bigger));

        let mut batch = Batch::new();
        batch.delete_group("team").unwrap();
        assert!(!batch.is_empty());
        store.commit(batch, true).unwrap();
        assert_eq!(store.group("team").unwrap(), None);
    }

    #[test]
    fn an_empty_batch_commits() {
        let (_dir, store) = temp_store();
        let batch = Batch::new();
        assert!(batch.is_empty());
        store.commit(batch, true).unwrap();
    }
}
