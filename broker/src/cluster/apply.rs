//! Applying log entries to this node: the one place an entry becomes local
//! state, live deliveries and pair presence updates, exactly once each, in
//! log order.
//!
//! Two callers: the leader's commit, right after its append is acked, and
//! the follower, for every entry it reads from the log (its own included,
//! which it then skips). Whoever comes first applies; the applied seq is
//! written in the same RocksDB batch as the entry's writes, so after a
//! crash the node resumes exactly after what it applied.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use parley_proto::cluster::{Delivery, Friendship, LogEntry};
use parley_storage::{Batch, StorageError, Store};
use tokio::sync::watch;

use crate::chat::encode_envelope;
use crate::metrics as m;
use crate::presence::Presence;
use crate::router::{LiveEnvelope, Router};

/// See the module docs.
pub(crate) struct Applier {
    store: Store,
    router: Arc<Router>,
    presence: Arc<Presence>,
    /// The last applied log seq; held while an entry is applied.
    applied: Mutex<u64>,
    progress: watch::Sender<u64>,
}

impl Applier {
    /// Reads where this node's store is in the log.
    pub(crate) fn open(
        store: Store,
        router: Arc<Router>,
        presence: Arc<Presence>,
    ) -> Result<Applier, StorageError> {
        let applied = store.applied_seq()?;
        Ok(Applier {
            store,
            router,
            presence,
            applied: Mutex::new(applied),
            progress: watch::Sender::new(applied),
        })
    }

    /// The last log seq applied here.
    pub(crate) fn applied(&self) -> u64 {
        *self.lock()
    }

    /// Waits until the entry at `seq` (and all before it) is applied here,
    /// at most `limit`; false when it was not in time.
    pub(crate) async fn wait_for(&self, seq: u64, limit: Duration) -> bool {
        let mut progress = self.progress.subscribe();
        let reached = async move { progress.wait_for(|applied| *applied >= seq).await.is_ok() };
        tokio::time::timeout(limit, reached).await.unwrap_or(false)
    }

    /// Applies consecutive entries read from the log, in one local write
    /// (blocking); those applied already are skipped.
    pub(crate) fn apply_entries(&self, entries: Vec<(u64, LogEntry)>) -> Result<(), StorageError> {
        let mut applied = self.lock();
        let fresh: Vec<(u64, LogEntry)> = entries
            .into_iter()
            .filter(|(seq, _)| *seq > *applied)
            .collect();
        let Some(last) = fresh.last().map(|(seq, _)| *seq) else {
            return Ok(());
        };
        let mut batch = Batch::new();
        for (i, (seq, entry)) in fresh.iter().enumerate() {
            follows(*applied + i as u64, *seq)?;
            // a term's first entry carries no writes at all
            if !entry.writes.is_empty() {
                batch.append(Batch::decode(&entry.writes)?);
            }
        }
        let outcomes = fresh
            .iter()
            .map(|(_, entry)| (&entry.deliveries[..], &entry.friendships[..]));
        self.commit(&mut applied, last, batch, outcomes)
    }

    /// Applies the writes at `seq` and hands their outcome to this node's
    /// devices, unless `seq` is applied already (blocking). An entry that
    /// does not follow the last applied one is refused: the caller reads
    /// the log again from the applied seq.
    pub(crate) fn apply(
        &self,
        seq: u64,
        batch: Batch,
        deliveries: &[Delivery],
        friendships: &[Friendship],
    ) -> Result<(), StorageError> {
        let mut applied = self.lock();
        if seq <= *applied {
            return Ok(());
        }
        follows(*applied, seq)?;
        self.commit(&mut applied, seq, batch, [(deliveries, friendships)])
    }

    /// Writes `batch` with `last` as the applied seq, then hands each
    /// entry's outcome to this node's devices, in log order.
    fn commit<'e>(
        &self,
        applied: &mut u64,
        last: u64,
        batch: Batch,
        outcomes: impl IntoIterator<Item = (&'e [Delivery], &'e [Friendship])>,
    ) -> Result<(), StorageError> {
        self.store.commit_applied(batch, last)?;
        *applied = last;
        for (deliveries, friendships) in outcomes {
            self.publish(deliveries, friendships);
        }
        self.progress.send_replace(last);
        Ok(())
    }

    fn publish(&self, deliveries: &[Delivery], friendships: &[Friendship]) {
        m::fanout_deliveries(deliveries.len() as u64);
        for delivery in deliveries {
            let envelope = LiveEnvelope {
                inbox_seq: delivery.inbox_seq,
                payload: encode_envelope(delivery.inbox_seq, &delivery.body),
            };
            self.router.deliver(&delivery.user, envelope);
        }
        for friendship in friendships {
            self.presence
                .friendship_changed(&friendship.a, &friendship.b, friendship.friends);
        }
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Refuses an entry at `seq` that does not come right after `applied`.
fn follows(applied: u64, seq: u64) -> Result<(), StorageError> {
    match seq == applied + 1 {
        true => Ok(()),
        false => Err(StorageError::Replication(format!(
            "log entry {seq} does not follow the applied entry {applied}"
        ))),
    }
}
