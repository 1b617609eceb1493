//! Opening the data dir, RocksDB tuning, point reads and writes, and the
//! write path: [`Store::commit`] (one RocksDB write) and the hand-off of the
//! direct mutators' batches to a [`Replicate`] on a cluster node.
//!
//! The store's core: it imports the layers below it (`keys.rs`,
//! `records.rs`, `batch.rs`, the [`Replicate`] trait) and none of the
//! topical files (`conversations.rs`, `tokens.rs`, ...) that add `impl
//! Store` blocks on top of it; the keys it shares with them live in
//! `keys.rs`. [`Store::open`] still calls one of their methods (the
//! `user_channels` backfill) as a method of `Store`, not through an import.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use parley_chat_logic::group::Group;
use parley_proto::v1::ChatMessage;
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor,
    DBCompressionType, DBPinnableSlice, DBWithThreadMode, ErrorKind, Options, SingleThreaded,
    WriteBatch, WriteOptions,
};
use tracing::debug;

use crate::batch::Batch;
use crate::error::StorageError;
use crate::keys::{self, Cf, APPLIED_SEQ_KEY, FORMAT_VERSION_KEY, USER_CHANNELS_BUILT_KEY};
use crate::records::{self, SessionRecord, UserRecord};
use crate::replicate::Replicate;

/// The RocksDB handle type. Column families are only created at open, so the
/// single-threaded flavour (no lock around the family map) is enough.
pub(crate) type Db = DBWithThreadMode<SingleThreaded>;

/// One block cache shared by every column family.
const BLOCK_CACHE_BYTES: usize = 64 << 20;
/// Memtable size of the chat log families (messages, inbox, dedup).
const LOG_WRITE_BUFFER_BYTES: usize = 32 << 20;
/// Memtable size of the small families (users, groups, sessions, meta).
const SMALL_WRITE_BUFFER_BYTES: usize = 4 << 20;
/// Share of a memtable spent on its bloom filter (dedup column family).
const MEMTABLE_BLOOM_RATIO: f64 = 0.05;
/// Past this much WAL, RocksDB flushes the rarely written families too, so
/// old WAL files do not pile up behind them.
const MAX_TOTAL_WAL_BYTES: u64 = 256 << 20;
/// Background writes are synced in steps of this size instead of all at once.
const BYTES_PER_SYNC: u64 = 1 << 20;
/// Obsolete WAL files kept to be overwritten by the next ones (see
/// [`db_options`]).
const RECYCLED_WAL_FILES: usize = 4;
/// The on-disk format this build reads and writes (`meta` / `format_version`).
const FORMAT_VERSION: u32 = 1;

/// Parley's data dir: a cheap, cloneable handle to one RocksDB database.
///
/// Every method blocks on disk I/O; async callers use `spawn_blocking` or a
/// dedicated thread.
///
/// The direct mutators (`put_user`, `put_token`, `set_last_active`, ...)
/// write to the data dir, or, once [`Store::replicate_through`] was called
/// on this handle or any clone of it, hand their writes to the replicator.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Arc<Db>,
    /// Where the direct mutators send their writes instead of the data dir
    /// (empty on a single node); shared by every clone.
    pub(crate) replicator: Arc<OnceLock<Arc<dyn Replicate>>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.db.path())
            .field("replicated", &self.is_replicated())
            .finish()
    }
}

impl Store {
    /// Opens (or creates) the data dir at `path`, creating missing column
    /// families and building indexes that an older data dir lacks (the
    /// `user_channels` index, once). Fails with [`StorageError::Locked`] if
    /// another process (or another `Store` in this one) has it open.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StorageError> {
        let path = path.as_ref();
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let families = Cf::ALL
            .iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), family_options(*cf, &cache)));
        let db = Db::open_cf_descriptors(&db_options(), path, families)
            .map_err(|e| open_error(path, e))?;
        let store = Store {
            db: Arc::new(db),
            replicator: Arc::new(OnceLock::new()),
        };
        store.check_format_version()?;
        store.build_user_channels_if_missing()?;
        debug!(path = %path.display(), "storage opened");
        Ok(store)
    }

    /// The account `id`, if it exists.
    pub fn user(&self, id: &str) -> Result<Option<UserRecord>, StorageError> {
        let key = keys::id_key(id)?;
        self.get_json(Cf::Users, &key)
    }

    /// Whether the account `id` exists (without decoding its record).
    pub fn has_user(&self, id: &str) -> Result<bool, StorageError> {
        let key = keys::id_key(id)?;
        Ok(self.get(Cf::Users, &key)?.is_some())
    }

    /// Creates or replaces the account `id`; synced before it returns.
    pub fn put_user(&self, id: &str, user: &UserRecord) -> Result<(), StorageError> {
        let mut batch = Batch::new();
        batch.put_user(id, user)?;
        self.write(batch, true)
    }

    /// The group `id` (without the `g:` prefix), if it exists.
    pub fn group(&self, id: &str) -> Result<Option<Group>, StorageError> {
        let key = keys::id_key(id)?;
        let Some(bytes) = self.get(Cf::Groups, &key)? else {
            return Ok(None);
        };
        records::group_from_json(&key, &bytes).map(Some)
    }

    /// The message `seq` of `channel`, if it exists.
    pub fn message(&self, channel: &str, seq: u64) -> Result<Option<ChatMessage>, StorageError> {
        let key = keys::seq_key(channel, seq)?;
        let Some(bytes) = self.get(Cf::Messages, &key)? else {
            return Ok(None);
        };
        records::decode_chat_message(&key, &bytes).map(Some)
    }

    /// The `seq` given to `sender`'s message `client_msg_id` in `channel`,
    /// if it was accepted before.
    pub fn dedup(
        &self,
        sender: &str,
        channel: &str,
        client_msg_id: &str,
    ) -> Result<Option<u64>, StorageError> {
        let key = keys::dedup_key(sender, channel, client_msg_id)?;
        let Some(bytes) = self.get(Cf::Dedup, &key)? else {
            return Ok(None);
        };
        records::decode_seq_value(Cf::Dedup.name(), &key, &bytes).map(Some)
    }

    /// The durable session of `user`'s `device`, if it has one.
    pub fn session(&self, user: &str, device: &str) -> Result<Option<SessionRecord>, StorageError> {
        let key = keys::session_key(user, device)?;
        self.get_json(Cf::Sessions, &key)
    }

    /// Creates or replaces a durable session; synced before it returns.
    pub fn put_session(
        &self,
        user: &str,
        device: &str,
        session: &SessionRecord,
    ) -> Result<(), StorageError> {
        let mut batch = Batch::new();
        batch.put_session(user, device, session)?;
        self.write(batch, true)
    }

    /// Removes a durable session (no error if there is none); synced.
    pub fn delete_session(&self, user: &str, device: &str) -> Result<(), StorageError> {
        let mut batch = Batch::new();
        batch.delete_session(user, device)?;
        self.write(batch, true)
    }

    /// Moves a session's `acked_inbox_seq` forward to `acked` (never back).
    /// Not synced: losing it in a crash only causes redelivery. Returns
    /// false if the device has no session. The caller serialises writes to
    /// one device's session (its connection owns it).
    pub fn set_session_cursor(
        &self,
        user: &str,
        device: &str,
        acked: u64,
    ) -> Result<bool, StorageError> {
        let key = keys::session_key(user, device)?;
        let Some(mut session) = self.get_json::<SessionRecord>(Cf::Sessions, &key)? else {
            return Ok(false);
        };
        if acked > session.acked_inbox_seq {
            session.acked_inbox_seq = acked;
            let mut batch = Batch::new();
            batch.put_session(user, device, &session)?;
            self.write(batch, false)?;
        }
        Ok(true)
    }

    /// Syncs the write-ahead log, making every earlier unsynced write
    /// (session cursors, `commit(_, false)`) durable. Call it on shutdown.
    pub fn sync_wal(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// The handle of a column family.
    pub(crate) fn cf(&self, cf: Cf) -> Result<&ColumnFamily, StorageError> {
        self.db
            .cf_handle(cf.name())
            .ok_or(StorageError::MissingColumnFamily(cf.name()))
    }

    pub(crate) fn get(
        &self,
        cf: Cf,
        key: &[u8],
    ) -> Result<Option<DBPinnableSlice<'_>>, StorageError> {
        Ok(self.db.get_pinned_cf(self.cf(cf)?, key)?)
    }

    pub(crate) fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        cf: Cf,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let Some(bytes) = self.get(cf, key)? else {
            return Ok(None);
        };
        records::from_json(cf.name(), key, &bytes).map(Some)
    }

    /// Records the format version in a new data dir, refuses a foreign one.
    /// A new data dir also starts with every index complete (nothing to
    /// backfill), so it gets the keys saying so in the same synced write.
    fn check_format_version(&self) -> Result<(), StorageError> {
        let Some(bytes) = self.get(Cf::Meta, FORMAT_VERSION_KEY)? else {
            let meta = self.cf(Cf::Meta)?;
            let mut batch = WriteBatch::default();
            batch.put_cf(meta, FORMAT_VERSION_KEY, FORMAT_VERSION.to_be_bytes());
            batch.put_cf(meta, USER_CHANNELS_BUILT_KEY, []);
            self.db.write_opt(batch, &write_options(true))?;
            return Ok(());
        };
        let found: [u8; 4] = bytes[..].try_into().map_err(|_| {
            StorageError::corrupt(Cf::Meta.name(), FORMAT_VERSION_KEY, "expected 4 bytes")
        })?;
        let found = u32::from_be_bytes(found);
        if found != FORMAT_VERSION {
            return Err(StorageError::IncompatibleFormat {
                found,
                expected: FORMAT_VERSION,
            });
        }
        Ok(())
    }
}

// The write path: local commits, and the hand-off to a replicator (whose
// trait is in `replicate.rs`).
impl Store {
    /// Applies `batch` atomically. With `sync`, returns only once the write
    /// ahead log is on disk (fsync), so the writes survive a crash: commit
    /// many requests in one synced batch to share the fsync.
    ///
    /// Always a write to this data dir, never handed to a replicator (see
    /// [`Store::replicate_through`]): the chat engine commits its planned
    /// batches with it, and a cluster applies its log's entries with it (or
    /// with [`Store::commit_applied`]).
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

    /// From now on, hands the writes of the direct mutators to
    /// `replicator` instead of the data dir, on this handle and on every
    /// clone of it (made before or after). Install it before the store
    /// serves writes. Fails with [`StorageError::AlreadyReplicated`] if a
    /// replicator is set already: it is never replaced or removed.
    pub fn replicate_through(&self, replicator: Arc<dyn Replicate>) -> Result<(), StorageError> {
        self.replicator
            .set(replicator)
            .map_err(|_| StorageError::AlreadyReplicated)
    }

    /// Waits until this node has applied everything the cluster committed
    /// before now (see [`Replicate::catch_up`]); at once on a single node.
    pub fn catch_up(&self) -> Result<(), StorageError> {
        match self.replicator.get() {
            Some(replicator) => replicator.catch_up(),
            None => Ok(()),
        }
    }

    /// Whether the direct mutators hand their writes to a replicator
    /// ([`Store::replicate_through`]).
    pub fn is_replicated(&self) -> bool {
        self.replicator.get().is_some()
    }

    /// The one way a direct mutator writes: `batch` to the replicator if
    /// one is set (the log's durability replaces `sync`), otherwise
    /// committed here with `sync`, as on a single node.
    pub(crate) fn write(&self, batch: Batch, sync: bool) -> Result<(), StorageError> {
        match self.replicator.get() {
            Some(replicator) => replicator.replicate(batch),
            None => self.commit(batch, sync),
        }
    }

    /// Applies `batch`, the entry `log_seq` of the cluster's log, and
    /// records `log_seq` as [`Store::applied_seq`], in one RocksDB write:
    /// after a crash both are there or neither. Not synced: the log is
    /// durable, and an entry lost in a crash is applied again from it. A
    /// local write, never handed to the replicator; the caller applies
    /// entries in log order.
    pub fn commit_applied(&self, mut batch: Batch, log_seq: u64) -> Result<(), StorageError> {
        let seq = keys::encode_seq(log_seq).to_vec();
        batch.put(Cf::Meta, APPLIED_SEQ_KEY.to_vec(), seq);
        self.commit(batch, false)
    }

    /// The `log_seq` of the last [`Store::commit_applied`], 0 if there was
    /// none.
    pub fn applied_seq(&self) -> Result<u64, StorageError> {
        let Some(bytes) = self.get(Cf::Meta, APPLIED_SEQ_KEY)? else {
            return Ok(0);
        };
        records::decode_seq_value(Cf::Meta.name(), APPLIED_SEQ_KEY, &bytes)
    }
}

impl Batch {
    /// Creates or replaces the durable session of `user`'s `device`.
    pub(crate) fn put_session(
        &mut self,
        user: &str,
        device: &str,
        session: &SessionRecord,
    ) -> Result<(), StorageError> {
        let value = records::to_json("session", session)?;
        self.put(Cf::Sessions, keys::session_key(user, device)?, value);
        Ok(())
    }

    /// Removes the durable session of `user`'s `device` (nothing happens if
    /// there is none).
    pub(crate) fn delete_session(&mut self, user: &str, device: &str) -> Result<(), StorageError> {
        self.delete(Cf::Sessions, keys::session_key(user, device)?);
        Ok(())
    }
}

/// Write options: `sync` waits for the WAL to reach the disk (fsync).
pub(crate) fn write_options(sync: bool) -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(sync);
    options
}

/// Database-wide options, tuned for a write-heavy log on a small server.
///
/// Obsolete WAL files are recycled: the next WAL overwrites one in place
/// instead of growing a new file, so the fdatasync of every commit no longer
/// writes the inode (and, on ext4, the extent that a write into fallocated
/// space converts) besides the data. Measured at 20,000 durable msg/s once
/// recycling had begun: the mean fdatasync 0.80-0.87 ms -> 0.59-0.65 ms
/// (bench/FINDINGS.md, item 12). RocksDB's default recovery mode (point in
/// time) tells the old records in a reused file from new ones by their log
/// number (`store/tests.rs`, the recycled WAL test).
fn db_options() -> Options {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.increase_parallelism(2);
    options.set_max_background_jobs(2);
    options.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
    options.set_bytes_per_sync(BYTES_PER_SYNC);
    options.set_wal_bytes_per_sync(BYTES_PER_SYNC);
    options.set_recycle_log_file_num(RECYCLED_WAL_FILES);
    options.set_keep_log_file_num(5);
    options
}

/// Options of one column family: lz4, bloom filters for point reads, the
/// shared block cache holding index and filter blocks too (bounded memory).
///
/// Index and filters are partitioned (two-level, the top level pinned): a
/// compacted log table of ~40 MB has a ~1.5 MB filter and a ~0.5 MB index,
/// and as single blocks they were evicted by the data blocks of catch-up
/// reads, then re-read from the page cache and re-checksummed (XXH3) for
/// every lookup: after about a minute of load at 23,000 msg/s, 85% of the
/// broker's CPU went to that and throughput fell to a tenth. Partitions are
/// 4 KB like data blocks, so a lookup touches only the ones it needs.
/// The idempotence keys, looked up (and nearly always missing) on every
/// send, also get a bloom filter over the memtable, so a miss does not walk
/// the skip list.
fn family_options(cf: Cf, cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_pin_top_level_index_and_filter(true);

    let mut options = Options::default();
    options.set_compression_type(DBCompressionType::Lz4);
    options.set_bottommost_compression_type(DBCompressionType::Lz4);
    options.set_level_compaction_dynamic_level_bytes(true);
    options.set_block_based_table_factory(&table);
    if cf == Cf::Dedup {
        options.set_memtable_whole_key_filtering(true);
        options.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
    }
    options.set_write_buffer_size(if cf.is_log() {
        LOG_WRITE_BUFFER_BYTES
    } else {
        SMALL_WRITE_BUFFER_BYTES
    });
    options
}

/// Turns the "LOCK file is held" failure into [`StorageError::Locked`].
fn open_error(path: &Path, error: rocksdb::Error) -> StorageError {
    let message: &str = error.as_ref();
    if error.kind() == ErrorKind::IOError && message.contains("LOCK:") {
        return StorageError::Locked(path.to_path_buf());
    }
    StorageError::RocksDb(error)
}

#[cfg(test)]
mod tests;
