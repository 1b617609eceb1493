//! Following the log: every node reads every entry after its applied seq,
//! in order, and applies it ([`Applier`](super::apply::Applier)). This is
//! how a node that is not the leader learns every write, how a restarted
//! node catches up, and how a new leader is ready before it plans.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures_util::StreamExt;
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
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| e.to_string())?;
        let seq = message.info().map_err(|e| e.to_string())?.stream_sequence;
        let entry = LogEntry::decode(message.payload.clone())
            .map_err(|e| format!("log entry {seq} does not decode: {e}"))?;
        let applier = context.applier.clone();
        tokio::task::spawn_blocking(move || applier.apply_entry(seq, entry))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        m::cluster_applied(seq, message.info().map(|i| i.pending).unwrap_or(0));
    }
    Err("the log consumer ended".into())
}
