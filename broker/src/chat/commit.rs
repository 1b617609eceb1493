//! The commit seam: how the engine makes a planned batch durable before it
//! answers, delivers, or applies any effect of it.
//!
//! Two implementations: [`SyncedWrite`], the single node's (one RocksDB
//! write with the WAL fsynced: the group commit), and the cluster's
//! (`cluster::LogCommit`): append the batch, with its deliveries, to the
//! replicated log (durable once a quorum has it), then apply it to the
//! local store unsynced and hand the deliveries to this node's devices;
//! every other node does the same when it reads the entry from the log.

use parley_storage::{Batch, StorageError, Store};

use super::plan::{Delivery, Effect};

/// Who has handed a committed batch's deliveries and friendship changes to
/// the devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Nobody yet: the engine does it.
    No,
    /// The committer did (on every node, through the log).
    Yes,
}

/// Makes a batch durable, all or none. On an error nothing of it may be
/// assumed written: the engine fails every job of the batch and reloads
/// its counters from the store.
pub trait Commit: Send {
    /// Returns once every write of `batch` is durable and readable here.
    fn commit(
        &self,
        batch: Batch,
        deliveries: &[Delivery],
        effects: &[Effect],
    ) -> Result<Published, StorageError>;

    /// Changes whenever another writer may have committed since this one
    /// last did (a cluster's leader term): the engine then reloads its
    /// counters from the store.
    fn term(&self) -> u64 {
        0
    }
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
    fn commit(
        &self,
        batch: Batch,
        _deliveries: &[Delivery],
        _effects: &[Effect],
    ) -> Result<Published, StorageError> {
        self.store.commit(batch, true)?;
        Ok(Published::No)
    }
}
