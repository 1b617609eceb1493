//! Atomic write batches: plain data, planned without the store and applied
//! by [`Store::commit`](crate::Store::commit) (or
//! [`MemoryStore::apply`](crate::MemoryStore::apply)), and their binary
//! encoding ([`Batch::encode`], [`Batch::decode`]), the writes of one entry
//! of a cluster's replicated log.
//!
//! Below the store: this file uses only the key and record encodings
//! (`keys.rs`, `records.rs`), never `store.rs`, which imports it. Writing a
//! batch to RocksDB is the store's job (`Store::commit`, in `store.rs`).
//!
//! # Encoding
//! A version byte (1), the number of writes (a LEB128 varint), then each
//! write in the order it was added: its column family's stable number
//! (`Cf::code`, one byte), the key's length (varint) and bytes, a tag (1:
//! put, 0: delete) and, for a put, the value's length (varint) and bytes.
//! Nothing follows the last write. Decoding refuses anything else (a
//! truncated or longer input, an unknown version, family or tag) with
//! [`StorageError::BadBatch`].

use std::fmt;

use parley_chat_logic::group::Group;
use parley_proto::v1::ChatMessage;
use prost::Message as _;

use crate::error::StorageError;
use crate::keys::{self, Cf};
use crate::records::{self, InboxEntry, UserRecord};

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Write {
    pub(crate) cf: Cf,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Option<Vec<u8>>,
}

/// Version of the encoding, the first byte of [`Batch::encode`]'s output.
const CODEC_VERSION: u8 = 1;
/// Tag of a delete in an encoded batch.
const TAG_DELETE: u8 = 0;
/// Tag of a put in an encoded batch.
const TAG_PUT: u8 = 1;
/// The fewest bytes one encoded write takes: family, key length 0, tag.
const MIN_WRITE_LEN: usize = 3;
/// The most bytes a LEB128 varint of a `u64` takes.
const MAX_VARINT_LEN: usize = 10;

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

    /// Adds `other`'s writes after this batch's, so that where both write
    /// one key, `other`'s write is the one that stays.
    pub fn append(&mut self, other: Batch) {
        self.writes.extend(other.writes);
    }

    /// The batch as bytes (see the module docs for the format): every write
    /// in the order it was added, so [`Batch::decode`] gives back a batch
    /// that commits to the same state.
    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self
            .writes
            .iter()
            .map(|write| {
                let value = write.value.as_ref().map_or(0, |v| MAX_VARINT_LEN + v.len());
                MIN_WRITE_LEN + MAX_VARINT_LEN + write.key.len() + value
            })
            .sum();
        let mut out = Vec::with_capacity(1 + MAX_VARINT_LEN + size);
        out.push(CODEC_VERSION);
        put_varint(&mut out, self.writes.len() as u64);
        for write in &self.writes {
            out.push(write.cf.code());
            put_varint(&mut out, write.key.len() as u64);
            out.extend_from_slice(&write.key);
            match &write.value {
                Some(value) => {
                    out.push(TAG_PUT);
                    put_varint(&mut out, value.len() as u64);
                    out.extend_from_slice(value);
                }
                None => out.push(TAG_DELETE),
            }
        }
        out
    }

    /// The batch [`Batch::encode`] made `bytes` from. Anything else
    /// (truncated, followed by more bytes, of an unknown version, naming an
    /// unknown column family) is refused with [`StorageError::BadBatch`];
    /// it never panics, whatever the input.
    pub fn decode(bytes: &[u8]) -> Result<Batch, StorageError> {
        let mut reader = Reader { bytes, at: 0 };
        let version = reader.byte("the version")?;
        if version != CODEC_VERSION {
            return Err(bad_batch(format!("unknown version {version}")));
        }
        let count = reader.varint("the number of writes")?;
        // Never reserve more writes than the input can hold.
        let room = reader.remaining() / MIN_WRITE_LEN;
        let mut writes = Vec::with_capacity(usize::try_from(count).map_or(room, |n| n.min(room)));
        for _ in 0..count {
            let at = reader.at;
            let code = reader.byte("a column family")?;
            let cf = Cf::from_code(code)
                .ok_or_else(|| bad_batch(format!("unknown column family {code} at byte {at}")))?;
            let key = reader.bytes("a key")?.to_vec();
            let at = reader.at;
            let value = match reader.byte("a tag")? {
                TAG_PUT => Some(reader.bytes("a value")?.to_vec()),
                TAG_DELETE => None,
                tag => return Err(bad_batch(format!("unknown tag {tag} at byte {at}"))),
            };
            writes.push(Write { cf, key, value });
        }
        if reader.remaining() > 0 {
            return Err(bad_batch(format!(
                "{} bytes after the last write",
                reader.remaining()
            )));
        }
        Ok(Batch { writes })
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

/// Appends `value` as a LEB128 varint: 7 bits a byte, low bits first, the
/// high bit set on every byte but the last.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A [`StorageError::BadBatch`] saying `reason`.
fn bad_batch(reason: String) -> StorageError {
    StorageError::BadBatch(reason)
}

/// Reads an encoded batch from the front, refusing to read past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    /// Offset of the next byte to read.
    at: usize,
}

impl<'a> Reader<'a> {
    /// Bytes not read yet.
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// The error for an input that ends while reading `what`.
    fn truncated(&self, what: &str) -> StorageError {
        bad_batch(format!(
            "truncated at byte {} ({} bytes) reading {what}",
            self.at,
            self.bytes.len()
        ))
    }

    /// The next byte.
    fn byte(&mut self, what: &str) -> Result<u8, StorageError> {
        let byte = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| self.truncated(what))?;
        self.at += 1;
        Ok(byte)
    }

    /// The next LEB128 varint; one that does not fit a `u64` is refused.
    fn varint(&mut self, what: &str) -> Result<u64, StorageError> {
        let start = self.at;
        let mut value = 0u64;
        for shift in (0..MAX_VARINT_LEN * 7).step_by(7) {
            let byte = self.byte(what)?;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte holds the top bit of a u64 and nothing more.
            if shift == 63 && bits > 1 {
                break;
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(bad_batch(format!(
            "varint at byte {start} reading {what} overflows a u64"
        )))
    }

    /// The next length-prefixed run of bytes.
    fn bytes(&mut self, what: &str) -> Result<&'a [u8], StorageError> {
        let len = self.varint(what)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= self.remaining())
            .ok_or_else(|| self.truncated(what))?;
        let bytes = &self.bytes[self.at..self.at + len];
        self.at += len;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::{put_varint, Write};
    use crate::keys::Cf;
    use crate::test_support::{chat, temp_store};
    use crate::{Batch, InboxEntry, StorageError};
    use parley_chat_logic::group::Group;
    use proptest::prelude::*;

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

    /// A batch of every kind of write: puts, deletes, an empty key and
    /// value, a long value (multi-byte lengths), two writes to one key.
    fn mixed() -> Batch {
        let mut batch = Batch::new();
        batch.put_message(&chat("g:team", 1, "alice")).unwrap();
        batch.put_group(&team()).unwrap();
        batch.delete_group("old").unwrap();
        batch.put(Cf::UserChannels, b"alice\0g:team".to_vec(), Vec::new());
        batch.put(Cf::Meta, Vec::new(), vec![7; 300]);
        batch.delete(Cf::Tokens, vec![0xff; 32]);
        batch.put(Cf::Groups, b"team".to_vec(), b"replaced".to_vec());
        batch
    }

    #[test]
    fn encoded_batches_round_trip_with_deletes_and_empty_values() {
        let batch = mixed();
        let decoded = Batch::decode(&batch.encode()).unwrap();
        assert_eq!(decoded.writes, batch.writes, "same writes, same order");
        assert_eq!(decoded.encode(), batch.encode());

        let empty = Batch::new().encode();
        assert_eq!(empty, [1, 0]);
        assert!(Batch::decode(&empty).unwrap().is_empty());
    }

    #[test]
    fn a_decoded_batch_commits_to_the_same_state() {
        let (_dir, store) = temp_store();
        let mut first = Batch::new();
        first.put_group(&team()).unwrap();
        store.commit(first, true).unwrap();

        let mut batch = Batch::new();
        batch.put_message(&chat("g:team", 1, "alice")).unwrap();
        batch.put_dedup("alice", "g:team", "c1", 1).unwrap();
        batch.delete_group("team").unwrap();
        store
            .commit(Batch::decode(&batch.encode()).unwrap(), false)
            .unwrap();
        assert_eq!(
            store.message("g:team", 1).unwrap(),
            Some(chat("g:team", 1, "alice"))
        );
        assert_eq!(store.dedup("alice", "g:team", "c1").unwrap(), Some(1));
        assert_eq!(store.group("team").unwrap(), None);
    }

    #[test]
    fn truncated_encodings_are_refused_at_every_length() {
        for batch in [mixed(), Batch::new()] {
            let bytes = batch.encode();
            for len in 0..bytes.len() {
                let err = Batch::decode(&bytes[..len]).unwrap_err();
                assert!(matches!(err, StorageError::BadBatch(_)), "{len}: {err}");
            }
        }
    }

    #[test]
    fn unknown_versions_families_and_tags_and_extra_bytes_are_refused() {
        let mut batch = Batch::new();
        batch.put(Cf::Users, b"alice".to_vec(), b"{}".to_vec());
        let good = batch.encode();
        assert_eq!(good[2], Cf::Users.code());
        assert_eq!(good[9], 1, "the tag of a put");

        let refused = |bytes: &[u8]| -> String {
            match Batch::decode(bytes) {
                Err(StorageError::BadBatch(reason)) => reason,
                other => panic!("{bytes:?} decoded: {other:?}"),
            }
        };
        for code in [0, 16, 200, u8::MAX] {
            let mut bytes = good.clone();
            bytes[2] = code;
            assert!(refused(&bytes).contains("column family"));
        }
        let mut bytes = good.clone();
        bytes[0] = 2;
        assert!(refused(&bytes).contains("version"));
        let mut bytes = good.clone();
        bytes[9] = 2;
        assert!(refused(&bytes).contains("tag"));
        let mut bytes = good.clone();
        bytes.push(0);
        assert!(refused(&bytes).contains("after the last write"));
        // a count of u64::MAX writes, and a count past u64
        let mut huge = vec![1];
        put_varint(&mut huge, u64::MAX);
        assert!(refused(&huge).contains("truncated"));
        let mut overflow = vec![1];
        overflow.extend_from_slice(&[0xff; 10]);
        overflow.push(0);
        assert!(refused(&overflow).contains("overflows"));
        // a key longer than the input
        assert!(refused(&[1, 1, 1, 0x80, 0x80, 0x80, 0x80, 0x01, b'k']).contains("a key"));
    }

    #[test]
    fn appended_writes_come_after_and_win() {
        let (_dir, store) = temp_store();
        let mut batch = Batch::new();
        batch.put_group(&team()).unwrap();
        let mut later = Batch::new();
        later.delete_group("team").unwrap();
        later.put_dedup("alice", "g:team", "c1", 4).unwrap();
        batch.append(later);
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.writes[1].value, None);
        store.commit(batch, false).unwrap();
        assert_eq!(store.group("team").unwrap(), None);
        assert_eq!(store.dedup("alice", "g:team", "c1").unwrap(), Some(4));

        let mut empty = Batch::new();
        empty.append(Batch::new());
        assert!(empty.is_empty());
    }

    fn write() -> impl Strategy<Value = Write> {
        (
            0..Cf::ALL.len(),
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        )
            .prop_map(|(cf, key, value)| Write {
                cf: Cf::ALL[cf],
                key,
                value,
            })
    }

    proptest! {
        #[test]
        fn any_batch_round_trips(writes in proptest::collection::vec(write(), 0..20)) {
            let batch = Batch { writes };
            let decoded = Batch::decode(&batch.encode()).unwrap();
            prop_assert_eq!(decoded.writes, batch.writes);
        }

        #[test]
        fn garbage_is_refused_or_decoded_never_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let _ = Batch::decode(&bytes);
            let mut versioned = vec![1];
            versioned.extend_from_slice(&bytes);
            if let Ok(batch) = Batch::decode(&versioned) {
                // whatever decodes, encodes to something that decodes alike
                let again = Batch::decode(&batch.encode()).unwrap();
                prop_assert_eq!(again.writes, batch.writes);
            }
        }
    }
}
