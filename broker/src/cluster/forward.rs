//! Writes from any node to the leader.
//!
//! [`Forwarder`] is the engine's [`Forward`] and the store's [`Replicate`]
//! in cluster mode: on the leader it queues the job (or the outside
//! writes) on the local engine; elsewhere it sends it to
//! `parley.node.{leader}.jobs` (`.writes`), and keeps trying, through a
//! leader change, for `cluster_request_timeout_secs`. A request that may
//! have been committed is only retried when that is safe: a job is retried
//! only when the leader said it did not take it (`not_leader`) or nobody
//! answered at all, and sends carry `client_msg_id` for the rest.
//! [`serve`] is the other end, on every node (answering `not_leader` when
//! it does not lead).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;
use futures_util::StreamExt;
use parley_chat_logic::command::{decode_request, Command};
use parley_chat_logic::limits::Limits;
use parley_chat_logic::ChatError;
use parley_proto::cluster::{
    job_outcome, writes_outcome, ForwardedJob, ForwardedWrites, JobOutcome, Stored, WritesOutcome,
};
use parley_proto::v1;
use parley_storage::{Batch, Replicate, StorageError};
use prost::Message as _;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::log::RETRY_PAUSE;
use super::NodeContext;
use crate::chat::engine::Forward;
use crate::chat::{Committed, EngineHandle, JobResult};
use crate::metrics as m;

/// How long one request to the leader may take before it is asked again.
const HOP_TIMEOUT: Duration = Duration::from_secs(5);

fn jobs_subject(node: &str) -> String {
    format!("parley.node.{node}.jobs")
}

fn writes_subject(node: &str) -> String {
    format!("parley.node.{node}.writes")
}

/// See the module docs.
pub(crate) struct Forwarder {
    context: Arc<NodeContext>,
    /// This node's engine, until the broker stops. The store holds the
    /// forwarder (its replicator) and the engine holds the store, so the
    /// handle is dropped at shutdown to let the engine's queue close.
    engine: Arc<Mutex<Option<EngineHandle>>>,
}

/// One attempt's answer.
enum Hop<T> {
    Done(T),
    /// Not taken: ask (the new leader) again.
    Again,
}

impl Forwarder {
    pub(crate) fn new(context: Arc<NodeContext>, engine: EngineHandle) -> Forwarder {
        Forwarder {
            context,
            engine: Arc::new(Mutex::new(Some(engine))),
        }
    }

    /// Drops the engine handle (at shutdown).
    pub(crate) fn release_engine(&self) {
        self.engine.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn engine(&self) -> Option<EngineHandle> {
        self.engine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn run_job(&self, user: String, command: Command, request: Bytes) -> JobResult {
        let taken = self
            .until_taken(|| async {
                match self.context.leadership.is_leader() {
                    true => self.job_here(&user, command.clone()).await,
                    false => self.job_at_leader(&user, &request).await,
                }
            })
            .await;
        m::cluster_request(match &taken {
            Some(Ok(_)) => "ok",
            Some(Err(_)) => "error",
            None => "timeout",
        });
        taken.unwrap_or_else(|| Err(ChatError::internal("no cluster leader took the request")))
    }

    /// Makes `attempt` until one is taken (`Hop::Done`); `None` when the
    /// request timeout passed (or the broker stops) first.
    async fn until_taken<T, F, Fut>(&self, mut attempt: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Hop<T>>,
    {
        let started = tokio::time::Instant::now();
        loop {
            match attempt().await {
                Hop::Done(result) => return Some(result),
                Hop::Again if self.keeps_trying(started) => tokio::time::sleep(RETRY_PAUSE).await,
                Hop::Again => return None,
            }
        }
    }

    /// Whether to ask again: within the request timeout, and not while
    /// the broker stops (a stopping leader has handed over already).
    fn keeps_trying(&self, started: tokio::time::Instant) -> bool {
        started.elapsed() < self.context.request_timeout && !self.context.shutdown.is_cancelled()
    }

    async fn job_here(&self, user: &str, command: Command) -> Hop<JobResult> {
        match self.engine() {
            Some(engine) => Hop::Done(engine.run_here(user.to_owned(), command).await),
            None => Hop::Done(Err(ChatError::internal("the broker is stopping"))),
        }
    }

    async fn job_at_leader(&self, user: &str, request: &Bytes) -> Hop<JobResult> {
        let Some(leader) = self.context.leadership.known_leader() else {
            return Hop::Again;
        };
        let job = ForwardedJob {
            user: user.to_owned(),
            request: request.to_vec(),
        };
        let Some(answer) = self.ask(jobs_subject(&leader), job.encode_to_vec()).await else {
            return Hop::Again;
        };
        match JobOutcome::decode(answer) {
            Ok(outcome) => {
                // read-your-writes here: a sync right after the Ack sees it
                let applied = self.context.applier.wait_for(outcome.log_seq, HOP_TIMEOUT);
                if !applied.await {
                    tracing::warn!(
                        log_seq = outcome.log_seq,
                        "an acked job is not applied here yet"
                    );
                }
                job_result(outcome)
            }
            Err(error) => Hop::Done(Err(ChatError::internal(format!(
                "the leader's answer does not decode: {error}"
            )))),
        }
    }

    async fn run_writes(&self, batch: Batch) -> Result<(), StorageError> {
        let batch = Mutex::new(Some(batch));
        // Encoded only once it has to travel: the leader commits it as it is.
        // (A batch taken here is done with, so a later attempt still has it.)
        let encoded = OnceLock::new();
        // Ok: the batch, to commit here; Err: its encoding, for the leader.
        let route = || {
            let mut pending = batch.lock().unwrap_or_else(|e| e.into_inner());
            match self.context.leadership.is_leader() {
                true => pending.take().ok_or(()),
                false => Err(()),
            }
            .map_err(|()| {
                encoded.get_or_init(|| pending.as_ref().map(Batch::encode).unwrap_or_default())
            })
        };
        self.until_taken(|| async {
            match route() {
                Ok(batch) => self.writes_here(batch).await,
                Err(bytes) => self.writes_at_leader(bytes).await,
            }
        })
        .await
        .unwrap_or_else(|| {
            Err(StorageError::Replication(
                "no cluster leader took the writes".into(),
            ))
        })
    }

    async fn writes_here(&self, batch: Batch) -> Hop<Result<(), StorageError>> {
        match self.engine() {
            Some(engine) => Hop::Done(engine.commit_writes_here(batch).await),
            None => Hop::Done(Err(StorageError::Replication(
                "the broker is stopping".into(),
            ))),
        }
    }

    async fn writes_at_leader(&self, encoded: &[u8]) -> Hop<Result<(), StorageError>> {
        let Some(leader) = self.context.leadership.known_leader() else {
            return Hop::Again;
        };
        let writes = ForwardedWrites {
            writes: encoded.to_vec(),
        };
        let Some(answer) = self
            .ask(writes_subject(&leader), writes.encode_to_vec())
            .await
        else {
            return Hop::Again;
        };
        let outcome = WritesOutcome::decode(answer).ok().and_then(|o| o.result);
        match outcome {
            Some(writes_outcome::Result::LogSeq(seq)) => {
                // read-your-writes: the caller reads this node's store next
                let applied = self
                    .context
                    .applier
                    .wait_for(seq, self.context.request_timeout);
                match applied.await {
                    true => Hop::Done(Ok(())),
                    false => Hop::Done(Err(StorageError::Replication(format!(
                        "log entry {seq} not applied here in time"
                    )))),
                }
            }
            Some(writes_outcome::Result::Error(error)) => {
                Hop::Done(Err(StorageError::Replication(error)))
            }
            Some(writes_outcome::Result::NotLeader(_)) | None => Hop::Again,
        }
    }

    /// One request to the leader; `None` when nobody answered in time.
    async fn ask(&self, subject: String, payload: Vec<u8>) -> Option<Bytes> {
        let request = async_nats::Request::new()
            .payload(Bytes::from(payload))
            .timeout(Some(HOP_TIMEOUT));
        match self
            .context
            .nats
            .client
            .send_request(Subject::from(subject), request)
            .await
        {
            Ok(message) => Some(message.payload),
            Err(error) => {
                tracing::debug!(%error, "the leader did not answer");
                None
            }
        }
    }
}

/// A leader's [`JobOutcome`] as the submitter's result.
fn job_result(outcome: JobOutcome) -> Hop<JobResult> {
    let stored = outcome
        .stored
        .into_iter()
        .map(|s| (s.channel, s.seq))
        .collect();
    match outcome.result {
        Some(job_outcome::Result::Ack(ack)) => Hop::Done(Ok(Committed { ack, stored })),
        Some(job_outcome::Result::Error(error)) => Hop::Done(Err(ChatError::new(
            v1::ErrorCode::try_from(error.code).unwrap_or(v1::ErrorCode::Internal),
            error.message,
        ))),
        Some(job_outcome::Result::NotLeader(_)) | None => Hop::Again,
    }
}

impl Forward for Forwarder {
    fn forward(
        &self,
        user: String,
        command: Command,
        request: Bytes,
    ) -> oneshot::Receiver<JobResult> {
        let (done, result) = oneshot::channel();
        let forwarder = Forwarder {
            context: self.context.clone(),
            engine: self.engine.clone(),
        };
        tokio::spawn(async move {
            let _ = done.send(forwarder.run_job(user, command, request).await);
        });
        result
    }
}

impl Replicate for Forwarder {
    fn replicate(&self, batch: Batch) -> Result<(), StorageError> {
        self.context.runtime.block_on(self.run_writes(batch))
    }

    fn catch_up(&self) -> Result<(), StorageError> {
        let context = &self.context;
        context.runtime.block_on(async {
            let tail = super::log::last_seq(&context.nats)
                .await
                .map_err(StorageError::Replication)?;
            match context
                .applier
                .wait_for(tail, context.request_timeout)
                .await
            {
                true => Ok(()),
                false => Err(StorageError::Replication(format!(
                    "log entry {tail} not applied here in time"
                ))),
            }
        })
    }
}

/// Answers forwarded jobs and writes on this node until shutdown.
pub(crate) async fn serve(
    context: Arc<NodeContext>,
    engine: EngineHandle,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
) {
    let client = &context.nats.client;
    let subscribed = async {
        let jobs = client.subscribe(jobs_subject(&context.id)).await?;
        let writes = client.subscribe(writes_subject(&context.id)).await?;
        Ok::<_, async_nats::SubscribeError>((jobs, writes))
    };
    let (mut jobs, mut writes) = match subscribed.await {
        Ok(subscriptions) => subscriptions,
        Err(error) => {
            tracing::error!(%error, "cannot serve forwarded requests");
            return;
        }
    };
    loop {
        let (message, is_job) = tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(message) = jobs.next() => (message, true),
            Some(message) = writes.next() => (message, false),
        };
        let Some(reply) = message.reply.clone() else {
            continue;
        };
        let (context, engine, limits) = (context.clone(), engine.clone(), limits.clone());
        tokio::spawn(async move {
            let answer = match is_job {
                true => answer_job(&context, &engine, &limits, &message.payload).await,
                false => answer_writes(&context, &engine, &message.payload).await,
            };
            let _ = context.nats.client.publish(reply, answer.into()).await;
        });
    }
}

async fn answer_job(
    context: &NodeContext,
    engine: &EngineHandle,
    limits: &Limits,
    payload: &[u8],
) -> Vec<u8> {
    let outcome = |result| JobOutcome {
        result: Some(result),
        stored: Vec::new(),
        log_seq: 0,
    };
    if !context.leadership.is_leader() {
        return outcome(job_outcome::Result::NotLeader(true)).encode_to_vec();
    }
    let failed = |error: ChatError| outcome(job_outcome::Result::Error(error.to_reply_error()));
    let Ok(job) = ForwardedJob::decode(payload) else {
        return failed(ChatError::internal("a forwarded job does not decode")).encode_to_vec();
    };
    let command = match decode_request(&job.request, limits).command {
        Ok(command) => command,
        Err(error) => return failed(error).encode_to_vec(),
    };
    match engine.run_here(job.user, command).await {
        Ok(committed) => JobOutcome {
            result: Some(job_outcome::Result::Ack(committed.ack)),
            stored: committed
                .stored
                .into_iter()
                .map(|(channel, seq)| Stored { channel, seq })
                .collect(),
            // applied here by now: the job's writes are at or before it
            log_seq: context.applier.applied(),
        },
        Err(error) => failed(error),
    }
    .encode_to_vec()
}

async fn answer_writes(context: &NodeContext, engine: &EngineHandle, payload: &[u8]) -> Vec<u8> {
    let outcome = |result| WritesOutcome {
        result: Some(result),
    };
    if !context.leadership.is_leader() {
        return outcome(writes_outcome::Result::NotLeader(true)).encode_to_vec();
    }
    let batch = ForwardedWrites::decode(payload)
        .map_err(|e| StorageError::Replication(e.to_string()))
        .and_then(|writes| Batch::decode(&writes.writes));
    let committed = match batch {
        Ok(batch) => engine.commit_writes_here(batch).await,
        Err(error) => Err(error),
    };
    let result = match committed {
        // applied here by now: the writes are at or before this seq
        Ok(()) => writes_outcome::Result::LogSeq(context.applier.applied()),
        Err(error) => writes_outcome::Result::Error(error.to_string()),
    };
    outcome(result).encode_to_vec()
}
