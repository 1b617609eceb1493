//! Replication: the hook a cluster puts between [`Store`]'s direct mutators
//! and the data dir.
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
//! This file holds only the trait, which needs nothing but a [`Batch`] and
//! [`StorageError`]: the store holds a replicator, so `store.rs` imports
//! the trait, and the store's side of replication (installing the
//! replicator, the direct mutators' one write path, applying log entries)
//! is in `store.rs` next to [`Store::commit`]. Nothing here imports the
//! store, so the dependency runs one way, store to replicate.
//!
//! Must not: know the log, the network or who leads the cluster (the
//! broker's `cluster` module does).
//!
//! [`Store`]: crate::Store
//! [`Store::replicate_through`]: crate::Store::replicate_through
//! [`Store::commit_applied`]: crate::Store::commit_applied
//! [`Store::applied_seq`]: crate::Store::applied_seq
//! [`Store::commit`]: crate::Store::commit
//! [`Store::open`]: crate::Store::open

use crate::batch::Batch;
use crate::error::StorageError;

/// Where a replicated [`Store`](crate::Store) sends the writes of its
/// direct mutators (installed with
/// [`Store::replicate_through`](crate::Store::replicate_through)).
pub trait Replicate: Send + Sync + 'static {
    /// Makes `batch` part of the cluster's state. Returns once the batch is
    /// durable cluster-wide (in the replicated log, on as many nodes as it
    /// requires) AND applied to this node's local store, so a read on the
    /// calling node right after it sees the writes (read-your-writes).
    ///
    /// An error is returned as is to the caller of the mutator. It must not
    /// call the store's direct mutators (they would come back here): it
    /// applies with [`Store::commit_applied`](crate::Store::commit_applied)
    /// or [`Store::commit`](crate::Store::commit).
    fn replicate(&self, batch: Batch) -> Result<(), StorageError>;

    /// Returns once every write committed anywhere in the cluster before
    /// the call is applied to this node's store (blocking). A read that
    /// missed a record another node just wrote (a token issued by a login
    /// there, an account registered there) calls it, then reads again.
    fn catch_up(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
