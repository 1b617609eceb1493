//! The replicated log: appending entries with the fence, and the leader's
//! commit ([`LogCommit`]), the engine's [`Commit`] in cluster mode.
//!
//! Every append names the log seq it was planned on
//! (`Nats-Expected-Last-Sequence`): JetStream refuses it if anyone appended
//! since, which is how a deposed leader is stopped. An append that times
//! out is retried with the same `Nats-Msg-Id` and the same fence, so it is
//! stored at most once (JetStream answers a duplicate with the original
//! seq) and never lands after someone else's.

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::context::{Publish, PublishErrorKind};
use bytes::Bytes;
use parley_proto::cluster::{Delivery as LoggedDelivery, Friendship, LogEntry};
use parley_storage::{Batch, StorageError};
use prost::Message as _;

use super::leader::RETRY_PAUSE;
use super::nats::{Nats, LOG_STREAM, LOG_SUBJECT, MAX_ENTRY_BYTES};
use super::NodeContext;
use crate::chat::commit::{Commit, Published};
use crate::chat::engine::{Delivery, Effect};
use crate::metrics as m;

/// The log's last seq (0 when empty).
pub(crate) async fn last_seq(nats: &Nats) -> Result<u64, String> {
    let stream = nats
        .jetstream
        .get_stream(LOG_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let info = stream.get_info().await.map_err(|e| e.to_string())?;
    Ok(info.state.last_sequence)
}

/// Appends the empty entry that opens term `term`, fenced on `tail`.
pub(crate) async fn append_term_start(
    context: &NodeContext,
    term: u64,
    tail: u64,
) -> Result<u64, String> {
    let entry = LogEntry {
        node: context.id.clone(),
        term,
        ..Default::default()
    };
    let payload = Bytes::from(entry.encode_to_vec());
    let seq = append(context, payload, tail, term).await?;
    let applier = context.applier.clone();
    tokio::task::spawn_blocking(move || applier.apply(seq, Batch::new(), &[], &[]))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(seq)
}

/// Why an append failed.
#[derive(Debug)]
pub(crate) enum AppendError {
    /// Someone appended after our fence: we are not the writer.
    Fenced,
    /// Not stored as far as we know, within the request timeout.
    Unavailable(String),
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppendError::Fenced => write!(f, "another node appended to the log (fenced)"),
            AppendError::Unavailable(why) => write!(f, "log append failed: {why}"),
        }
    }
}

/// Appends `payload` after `fence`; returns its log seq.
async fn append(
    context: &NodeContext,
    payload: Bytes,
    fence: u64,
    term: u64,
) -> Result<u64, String> {
    try_append(context, payload, fence, term)
        .await
        .map_err(|e| e.to_string())
}

async fn try_append(
    context: &NodeContext,
    payload: Bytes,
    fence: u64,
    term: u64,
) -> Result<u64, AppendError> {
    let started = Instant::now();
    let id = format!("{term}.{fence}");
    loop {
        let publish = Publish::build()
            .payload(payload.clone())
            .message_id(&id)
            .expected_last_sequence(fence);
        let sent = context
            .nats
            .jetstream
            .send_publish(LOG_SUBJECT, publish)
            .await;
        let error = match sent {
            Ok(ack) => match ack.await {
                Ok(ack) => {
                    m::cluster_append(started.elapsed());
                    return Ok(ack.sequence);
                }
                Err(error) => error,
            },
            Err(error) => error,
        };
        if error.kind() == PublishErrorKind::WrongLastSequence {
            m::cluster_append_error("wrong_last_sequence");
            return Err(AppendError::Fenced);
        }
        m::cluster_append_error("unavailable");
        if started.elapsed() >= context.request_timeout {
            return Err(AppendError::Unavailable(error.to_string()));
        }
        tracing::warn!(%error, fence, "log append failed; retrying with the same id");
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

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
            .block_on(try_append(context, payload, fence, term));
        let seq = match appended {
            Ok(seq) => seq,
            Err(error) => {
                super::leader::step_down(context, &error.to_string());
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
