//! The leader's commit ([`LogCommit`]), the engine's [`Commit`] in cluster
//! mode: append the batch with its deliveries to the log, fenced on this
//! leader's tail, then apply it here; a refused append steps down.
//!
//! Must not: retry or fence appends itself (that is [`super::log`]) or
//! compete for the lease (that is [`super::leader`]); it only reads the
//! leadership and steps down.

use std::sync::Arc;

use bytes::Bytes;
use parley_proto::cluster::{Delivery as LoggedDelivery, Friendship, LogEntry};
use parley_storage::{Batch, StorageError};
use prost::Message as _;

use super::nats::MAX_ENTRY_BYTES;
use super::{leader, log, NodeContext};
use crate::chat::commit::{Commit, Published};
use crate::chat::engine::{Delivery, Effect};

/// The leader's commit: append the batch with its deliveries, then apply
/// it here. Refused on a node that does not lead.
pub(crate) struct LogCommit {
    context: Arc<NodeContext>,
}

impl LogCommit {
    pub(crate) fn new(context: Arc<NodeContext>) -> LogCommit {
        LogCommit { context }
    }
}

impl Commit for LogCommit {
    fn commit(
        &self,
        batch: Batch,
        deliveries: &[Delivery],
        effects: &[Effect],
    ) -> Result<Published, StorageError> {
        let context = &self.context;
        let leadership = &context.leadership;
        if !leadership.is_leader() {
            return Err(StorageError::Replication("this node does not lead".into()));
        }
        let (term, fence) = (leadership.term(), leadership.tail());
        let deliveries: Vec<LoggedDelivery> = deliveries.iter().map(logged_delivery).collect();
        let friendships: Vec<Friendship> = effects.iter().filter_map(logged_friendship).collect();
        let entry = LogEntry {
            node: context.id.clone(),
            term,
            writes: batch.encode(),
            deliveries,
            friendships,
        };
        let payload = Bytes::from(entry.encode_to_vec());
        if payload.len() > MAX_ENTRY_BYTES {
            return Err(StorageError::Replication(format!(
                "a batch of {} bytes is over the log's limit",
                payload.len()
            )));
        }
        let appended = context
            .runtime
            .block_on(log::try_append(context, payload, fence, term));
        let seq = match appended {
            Ok(seq) => seq,
            Err(error) => {
                leader::step_down(context, &error.to_string());
                return Err(StorageError::Replication(error.to_string()));
            }
        };
        leadership.set_tail(seq);
        context
            .applier
            .apply(seq, batch, &entry.deliveries, &entry.friendships)?;
        Ok(Published::Yes)
    }

    fn term(&self) -> u64 {
        self.context.leadership.term()
    }
}

fn logged_delivery(delivery: &Delivery) -> LoggedDelivery {
    LoggedDelivery {
        user: delivery.user.clone(),
        inbox_seq: delivery.inbox_seq,
        body: delivery.body.to_vec(),
    }
}

fn logged_friendship(effect: &Effect) -> Option<Friendship> {
    match effect {
        Effect::Friendship { a, b, friends } => Some(Friendship {
            a: a.clone(),
            b: b.clone(),
            friends: *friends,
        }),
        Effect::PushQueued => None,
    }
}
