//! Following the log: every node reads every entry after its applied seq,
//! in order, and applies it ([`Applier`](super::apply::Applier)). This is
//! how a node that is not the leader learns every write, how a restarted
//! node catches up, and how a new leader is ready before it plans.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures_util::{FutureExt, StreamExt};
use parley_proto::cluster::LogEntry;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use super::nats::LOG_STREAM;
use super::NodeContext;
use crate::metrics as m;

/// Runs until shutdown; a broken consumer is recreated from the applied seq.
pub(crate) async fn follow(context: Arc<NodeContext>, shutdown: CancellationToken) {
    loop {
        let run = follow_once(&context);
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = run => outcome,
        };
        if let Err(error) = outcome {
            tracing::warn!(%error, applied = context.applier.applied(), "log follower restarts");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Reads the log from the entry after the applied one until an error.
async fn follow_once(context: &Arc<NodeContext>) -> Result<(), String> {
    let stream = context
        .nats
        .jetstream
        .get_stream(LOG_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let start = context.applier.applied() + 1;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(first) = messages.next().await {
        // everything already received goes into one local write
        let mut entries = vec![decoded(first)?];
        while entries.len() < APPLY_BATCH {
            match messages.next().now_or_never() {
                Some(Some(message)) => entries.push(decoded(message)?),
                _ => break,
            }
        }
        let pending = entries.last().map_or(0, |(_, _, pending)| *pending);
        let last = entries.last().map_or(0, |(seq, _, _)| *seq);
        let entries: Vec<(u64, LogEntry)> = entries
            .into_iter()
            .map(|(seq, entry, _)| (seq, entry))
            .collect();
        let applier = context.applier.clone();
        tokio::task::spawn_blocking(move || applier.apply_entries(entries))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        m::cluster_applied(last, pending);
    }
    Err("the log consumer ended".into())
}

/// Most log entries applied in one local write.
const APPLY_BATCH: usize = 256;

type Received = (u64, LogEntry, u64);

/// A log message as (seq, entry, entries still pending after it).
fn decoded(
    message: Result<async_nats::jetstream::Message, impl std::fmt::Display>,
) -> Result<Received, String> {
    let message = message.map_err(|e| e.to_string())?;
    let info = message.info().map_err(|e| e.to_string())?;
    let (seq, pending) = (info.stream_sequence, info.pending);
    let entry = LogEntry::decode(message.payload.clone())
        .map_err(|e| format!("log entry {seq} does not decode: {e}"))?;
    Ok((seq, entry, pending))
}
