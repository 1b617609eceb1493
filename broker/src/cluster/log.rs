//! The replicated log: appending entries with the fence, and reading its
//! tail. The leader's commit on top of it is in `commit.rs`; this file
//! knows nothing of the lease.
//!
//! Every append names the log seq it was planned on
//! (`Nats-Expected-Last-Sequence`): JetStream refuses it if anyone appended
//! since, which is how a deposed leader is stopped. An append that times
//! out is retried with the same `Nats-Msg-Id` and the same fence, so it is
//! stored at most once (JetStream answers a duplicate with the original
//! seq) and never lands after someone else's.

use std::time::{Duration, Instant};

use async_nats::jetstream::context::{Publish, PublishErrorKind};
use bytes::Bytes;
use parley_proto::cluster::LogEntry;
use parley_storage::Batch;
use prost::Message as _;

use super::nats::{Nats, LOG_STREAM, LOG_SUBJECT};
use super::NodeContext;
use crate::metrics as m;

/// The pause before trying again: after a failed append, or a forwarded
/// request that must be sent again.
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(200);

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

/// Appends `payload` after `fence`, retrying with the same id (so it is
/// stored at most once) until the request timeout.
pub(super) async fn try_append(
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
