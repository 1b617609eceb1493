//! Replication: the hook a cluster puts between [`Store`]'s direct mutators
//! and the data dir, and the applying of a replicated log's entries.
//!
//! On a single node, every direct mutator (`put_user`, `put_token`,
//! `set_last_active`, ...) builds a [`Batch`] and commits it to the data
//! dir. Once the broker has installed a [`Replicate`] with
//! [`Store::replicate_through`], the same mutators hand the same batch to
//! it instead, and the replicator appends it to the cluster's log
//! ([`Batch::encode`]). Every node applies the log's entries, in order, with
//! [`Store::commit_applied`], which records the entry's position
//! ([`Store::applied_seq`]) in the same write.
//!
//! Reads a mutator needs to decide its writes (does the token exist, which
//! tokens match a filter, the session's cursor) are still made here, before
//! the batch is handed over. Not replicated: [`Store::commit`], the raw
//! local write (the chat engine's and the applier's), and the writes of
//! [`Store::open`] (this node's format version and index backfill).
//!
//! Must not: know the log, the network or who leads the cluster (the
//! broker's `cluster` module does).

use std::sync::Arc;

use crate::batch::Batch;
use crate::error::StorageError;
use crate::keys::{self, Cf};
use crate::records;
use crate::store::Store;

/// The `meta` key holding the position (`u64` big-endian) of the last entry
/// of the cluster's log applied to this data dir.
const APPLIED_SEQ_KEY: &[u8] = b"cluster_applied_seq";

/// Where a replicated [`Store`] sends the writes of its direct mutators
/// (installed with [`Store::replicate_through`]).
pub trait Replicate: Send + Sync + 'static {
    /// Makes `batch` part of the cluster's state. Returns once the batch is
    /// durable cluster-wide (in the replicated log, on as many nodes as it
    /// requires) AND applied to this node's local store, so a read on the
    /// calling node right after it sees the writes (read-your-writes).
    ///
    /// An error is returned as is to the caller of the mutator. It must not
    /// call the store's direct mutators (they would come back here): it
    /// applies with [`Store::commit_applied`] or [`Store::commit`].
    fn replicate(&self, batch: Batch) -> Result<(), StorageError>;

    /// Returns once every write committed anywhere in the cluster before
    /// the call is applied to this node's store (blocking). A read that
    /// missed a record another node just wrote (a token issued by a login
    /// there, an account registered there) calls it, then reads again.
    fn catch_up(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

impl Store {
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

#[cfg(test)]
mod tests;
