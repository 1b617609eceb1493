//! Parley's durable state in RocksDB.
//!
//! Owns: the RocksDB database of a data dir, its column families, the
//! encoding of every key and value, typed reads, atomic write batches and
//! synced commits (the chat engine's group commit: many requests share one
//! fsync); the narrow read trait the engine plans with ([`ChatState`]) and
//! an in-memory implementation of it ([`MemoryStore`]); the binary encoding
//! of a batch and the hook ([`Replicate`]) through which a cluster takes
//! over the writes of [`Store`]'s direct mutators.
//!
//! Must not: speak MQTT, touch the network (a replicator does that), or
//! apply chat rules (who may
//! post where, what the next `seq` is, who receives what). It stores what
//! the broker decided and reads it back; every call blocks on disk I/O, so
//! async callers use `spawn_blocking` or a dedicated thread.
//!
//! # Layout
//! - `store.rs`: [`Store::open`] and RocksDB tuning (lz4, one shared block
//!   cache, bloom filters, two background jobs); point reads and writes of
//!   users, messages, dedup entries and sessions; the write path:
//!   [`Store::commit`], one RocksDB write, the direct mutators' one way of
//!   writing (to the data dir, or to the replicator installed with
//!   [`Store::replicate_through`]), and [`Store::commit_applied`], the
//!   applying of a cluster log's entry.
//! - `scan.rs`: range reads over one owner's keys with iterate bounds:
//!   `last_*_seq`, `history` (newest first), `inbox_after` (resolving
//!   message references with one multi-get), listings.
//! - `state.rs`: [`ChatState`], the narrow set of reads the chat engine
//!   plans with, implemented by [`Store`] and [`MemoryStore`]; its
//!   conformance suite runs against both (`state/tests.rs`).
//! - `batch.rs`: [`Batch`], the writes of one commit as plain data (no
//!   handle to a store) and its binary encoding ([`Batch::encode`],
//!   [`Batch::decode`]: an entry of a cluster's log).
//! - `replicate.rs`: [`Replicate`], the trait of the replicator a cluster
//!   node's direct mutators send their batches to instead of the data dir.
//! - `memory.rs`: [`MemoryStore`], the same bytes in ordered maps in
//!   memory, for tests of planning; it applies the same batches.
//! - `tokens.rs`: session tokens by digest, and each account's index of them.
//! - `friends.rs`: friend links, one per (user, other) pair.
//! - `conversations.rs`: each user's index of channels, their read cursors
//!   ([`ReadCursor`]) and the unread total; the one-time build of the index
//!   in a data dir written before it existed.
//! - `presence.rs`: when each user was last active (unsynced writes).
//! - `push.rs`: push registrations ([`PushRegistration`]) and the queue of
//!   notifications to send ([`PushJob`]).
//! - `records.rs`: the stored records ([`UserRecord`], [`SessionRecord`],
//!   [`InboxEntry`]) and their value encodings, the chat rules' [`Group`]'s
//!   among them.
//! - `keys.rs`: key encodings, the column family names and the `meta`
//!   family's keys.
//! - `error.rs`: [`StorageError`].
//!
//! # Imports
//! Modules import one way, each only from those below it:
//! `error` <- `keys` <- `records` <- `batch` <- `replicate` <- `store` <-
//! the topical files (`scan`, `state`, `tokens`, `friends`,
//! `conversations`, `presence`, `push`) <- `memory`. A batch is plain data,
//! so `batch.rs` knows no store ([`Store::commit`] is in `store.rs`); the
//! [`Replicate`] trait needs only a [`Batch`], so the store imports it and
//! not the other way round (the store's side of replication is in
//! `store.rs`); and the keys the store shares with a topical file (the
//! `meta` keys, such as the one saying the `user_channels` index is built)
//! are in `keys.rs`, so the store imports none of the files that add
//! `impl Store` blocks on top of it.
//!
//! # Column families
//! Parts of a key are joined with 0x00, which never occurs in an id or a
//! channel (a part holding it is refused with [`StorageError::InvalidKey`]).
//! `seq_be64` is a big-endian `u64`, so byte order is numeric order and the
//! keys of one channel or inbox form one ordered range, `owner 0x00 ..` up
//! to `owner 0x01`: a scan of `al` never sees `alice`.
//!
//! | family | key | value |
//! |---|---|---|
//! | `users` | `user_id` | [`UserRecord`], JSON |
//! | `groups` | `group_id` | [`Group`], JSON: `{"id", "name", "owner", "members"}` |
//! | `messages` | `channel 0x00 seq_be64` | `ChatMessage`, protobuf |
//! | `inbox` | `user_id 0x00 inbox_seq_be64` | [`InboxEntry`]: `0x01 seq_be64 channel` (a reference into `messages`) or `0x02 Envelope{body}` (protobuf, an inline event) |
//! | `dedup` | `sender 0x00 channel 0x00 client_msg_id` | `seq_be64` |
//! | `sessions` | `user_id 0x00 device_id` | [`SessionRecord`], JSON |
//! | `tokens` | SHA-256 digest of a session token (32 bytes) | [`TokenRecord`], JSON |
//! | `user_tokens` | `user_id 0x00 device_id 0x00 digest` | empty: the index of an account's tokens |
//! | `friends` | `user_id 0x00 other_id` | one byte, the `FriendState` number as `user` sees it: 1 request received, 2 request sent, 3 friends (an ended link is deleted) |
//! | `user_channels` | `user_id 0x00 channel` | empty: the index of a user's channels (`dm:`, `g:`, `sys:`) |
//! | `cursors` | `user_id 0x00 channel` | [`ReadCursor`]: `delivered_be64 read_be64` |
//! | `last_active` | `user_id` | `i64` big-endian, ms since the Unix epoch |
//! | `push_devices` | `user_id 0x00 device_id` | [`PushRegistration`], JSON |
//! | `push_jobs` | `job_id_be64` | [`PushJob`], JSON: a notification waiting to be sent |
//! | `meta` | `format_version` | `u32` big-endian, 1 |
//! | `meta` | `user_channels_built` | empty: present once `user_channels` is complete (set in a new data dir, or by the backfill at open) |
//! | `meta` | `cluster_applied_seq` | `u64` big-endian: the last entry of the cluster's log applied here ([`Store::applied_seq`]; absent on a single node) |
//!
//! Messages are stored once and referenced from every member's inbox, so a
//! message to a 100-member group stores its text once and 100 small entries.

#![warn(missing_docs)]

mod batch;
mod conversations;
mod error;
mod friends;
mod keys;
mod memory;
mod presence;
mod push;
mod records;
mod replicate;
mod scan;
mod state;
mod store;
mod tokens;

#[cfg(test)]
mod test_support;

pub use batch::Batch;
pub use error::StorageError;
pub use memory::MemoryStore;
pub use parley_chat_logic::group::Group;
pub use parley_chat_logic::ReadCursor;
pub use push::{PushJob, PushRegistration, PUSH_BODY_CHARS};
pub use records::{AccountKind, InboxEntry, SessionRecord, TokenRecord, UserRecord};
pub use replicate::Replicate;
pub use state::ChatState;
pub use store::Store;
pub use tokens::TokenFilter;
