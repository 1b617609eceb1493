//! The commit seam: how the engine makes a planned batch durable before it
//! answers, delivers, or applies any effect of it.
//!
//! One implementation today, [`SyncedWrite`]: one RocksDB write with the
//! WAL fsynced (the group commit). A cluster will put its own behind the
//! same trait: append the batch to the replicated log (durable once a
//! quorum has it), then apply it to the local store unsynced (the log, not
//! the local WAL, is what survives a crash).

use parley_storage::{Batch, StorageError, Store};

/// Makes a batch durable, all or none. On an error nothing of it may be
/// assumed written: the engine fails every job of the batch and reloads
/// its counters from the store.
pub trait Commit: Send {
    /// Returns once every write of `batch` is durable and readable.
    fn commit(&self, batch: Batch) -> Result<(), StorageError>;
}

/// The single node's commit: one synced RocksDB write.
pub struct SyncedWrite {
    store: Store,
}

impl SyncedWrite {
    pub fn new(store: Store) -> Self {
        SyncedWrite { store }
    }
}

impl Commit for SyncedWrite {
    fn commit(&self, batch: Batch) -> Result<(), StorageError> {
        self.store.commit(batch, true)
    }
}
