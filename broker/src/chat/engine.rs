//! The chat engine: one dedicated thread that owns sequencing and writes.
//!
//! Connections submit write requests (send, group changes) through a bounded
//! queue. The thread takes every job waiting (up to `batch_max`), plans them
//! all into one `Batch` (`plan/`: channel `seq` and per-user `inbox_seq`
//! from in-memory counters recovered from the store), commits the batch
//! through the [`Commit`] seam — today one synced RocksDB write, group
//! commit: concurrent senders share one fsync — and only then hands the new
//! inbox envelopes to the [`Router`], applies the effects and answers each
//! job. One thread means no locks around sequence numbers and gap-free
//! sequences by construction.
//!
//! In a cluster only the leader's engine plans: [`EngineHandle`] then
//! routes each job through a [`Forward`] (the cluster's), which submits it
//! here on the leader and over NATS everywhere else. Writes made outside
//! the engine (tokens, sessions) reach it as [`Writes`] and join the next
//! batch, so the log has one writer.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parley_chat_logic::command::Command;
use parley_chat_logic::ChatError;
use parley_proto::v1::ChatMessage;
use parley_storage::{Batch, StorageError, Store};
use tokio::sync::{mpsc, oneshot};

use super::commit::{Commit, Published};
use super::outcome::{encode_envelope, JobResult};
use super::plan::{BatchPlan, KnownUsers, PlannedBatch, Sequences, Services};
pub use super::plan::{Delivery, Effect};
use super::priority;
use crate::clock::now_ms;
use crate::metrics as m;
use crate::presence::Presence;
use crate::push::Push;
use crate::router::{LiveEnvelope, Router};

/// One write request from one device.
pub struct Job {
    pub user: String,
    pub command: Command,
    pub done: oneshot::Sender<JobResult>,
}

/// Writes made outside the engine (a token, a session record), committed
/// with the next batch; `done` gets the commit's outcome.
pub struct Writes {
    pub batch: Batch,
    pub done: oneshot::Sender<Result<(), StorageError>>,
}

/// What the engine thread takes from its queue.
pub enum Work {
    Job(Job),
    Writes(Writes),
}

/// Where a cluster node's jobs go: this node's engine when it leads,
/// the leader over NATS otherwise (implemented by `cluster`).
pub trait Forward: Send + Sync + 'static {
    /// Submits `command` of `user`; `request` is its encoded `chat.v1.Request`.
    fn forward(
        &self,
        user: String,
        command: Command,
        request: Bytes,
    ) -> oneshot::Receiver<JobResult>;
}

/// A cloneable handle for submitting jobs.
#[derive(Clone)]
pub struct EngineHandle {
    local: mpsc::Sender<Work>,
    forward: Option<Arc<dyn Forward>>,
}

impl EngineHandle {
    /// Queues a job (waiting while the queue is full: back-pressure on the
    /// submitting connection) and returns where its result will arrive. In a
    /// cluster the job goes to the leader; `request` is what is forwarded.
    pub async fn submit(
        &self,
        user: String,
        command: Command,
        request: &[u8],
    ) -> Result<oneshot::Receiver<JobResult>, ChatError> {
        match &self.forward {
            Some(forward) => Ok(forward.forward(user, command, Bytes::copy_from_slice(request))),
            None => self.submit_here(user, command).await,
        }
    }

    /// Queues a job on this node's engine, whatever the mode.
    pub async fn submit_here(
        &self,
        user: String,
        command: Command,
    ) -> Result<oneshot::Receiver<JobResult>, ChatError> {
        let (done, result) = oneshot::channel();
        let job = Job {
            user,
            command,
            done,
        };
        self.local
            .send(Work::Job(job))
            .await
            .map_err(|_| ChatError::internal("the chat engine has stopped"))?;
        Ok(result)
    }

    /// Runs a job on this node's engine and waits for its result.
    pub async fn run_here(&self, user: String, command: Command) -> JobResult {
        match self.submit_here(user, command).await {
            Ok(result) => result
                .await
                .unwrap_or_else(|_| Err(ChatError::internal("the chat engine has stopped"))),
            Err(error) => Err(error),
        }
    }

    /// Commits outside writes with this node's next batch and waits for it.
    pub async fn commit_writes_here(&self, batch: Batch) -> Result<(), StorageError> {
        let done = self.write_here(batch).await?;
        done.await.unwrap_or_else(|_| {
            Err(StorageError::Replication(
                "the chat engine has stopped".into(),
            ))
        })
    }

    /// Queues writes made outside the engine for the next batch.
    pub async fn write_here(
        &self,
        batch: Batch,
    ) -> Result<oneshot::Receiver<Result<(), StorageError>>, StorageError> {
        let (done, result) = oneshot::channel();
        self.local
            .send(Work::Writes(Writes { batch, done }))
            .await
            .map_err(|_| StorageError::Replication("the chat engine has stopped".into()))?;
        Ok(result)
    }

    /// Routes every later job through `forward` (cluster mode, at start).
    pub fn with_forward(mut self, forward: Arc<dyn Forward>) -> EngineHandle {
        self.forward = Some(forward);
        self
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub limits: parley_chat_logic::limits::Limits,
    pub batch_max: usize,
    pub queue: usize,
    /// Nice steps the engine thread asks for (see [`priority`]).
    pub priority_boost: u32,
}

/// Where committed work goes: live delivery, presence, push.
pub struct Outlets {
    pub router: Arc<Router>,
    pub presence: Arc<Presence>,
    pub push: Arc<Push>,
}

/// Planning asks the push service and the presence tracker.
impl Services for Outlets {
    fn push_enabled(&self) -> bool {
        self.push.enabled()
    }

    fn has_push_registrations(&self, user: &str) -> bool {
        self.push.has_registrations(user)
    }

    fn offline_among<'u>(&self, users: Vec<&'u String>) -> Vec<&'u String> {
        self.presence.offline_among(users)
    }

    fn queue_push(
        &self,
        batch: &mut Batch,
        user: &str,
        message: &ChatMessage,
    ) -> Result<(), StorageError> {
        self.push.queue(batch, user, message)
    }
}

/// Starts the engine thread, reading from `store` and committing through
/// `committer`. It stops once every [`EngineHandle`] is dropped and the
/// queue is drained.
pub fn spawn(
    store: Store,
    committer: Box<dyn Commit>,
    outlets: Outlets,
    config: EngineConfig,
) -> std::io::Result<(EngineHandle, std::thread::JoinHandle<()>)> {
    let (local, queue) = mpsc::channel(config.queue.max(1));
    let thread = std::thread::Builder::new()
        .name("chat-engine".into())
        .spawn(move || {
            priority::raise_this_thread(config.priority_boost);
            Engine::new(store, committer, outlets, config).run(queue)
        })?;
    let handle = EngineHandle {
        local,
        forward: None,
    };
    Ok((handle, thread))
}

struct Engine {
    /// What planning reads.
    store: Store,
    /// Where planned batches go: the commit seam.
    committer: Box<dyn Commit>,
    outlets: Outlets,
    config: EngineConfig,
    sequences: Sequences,
    known_users: RefCell<KnownUsers>,
    /// The committer's term the counters were loaded in.
    term: u64,
}

impl Engine {
    fn new(
        store: Store,
        committer: Box<dyn Commit>,
        outlets: Outlets,
        config: EngineConfig,
    ) -> Self {
        Engine {
            store,
            committer,
            outlets,
            config,
            sequences: Sequences::default(),
            known_users: RefCell::default(),
            term: 0,
        }
    }

    fn run(mut self, mut queue: mpsc::Receiver<Work>) {
        tracing::info!("chat engine started");
        while let Some(first) = queue.blocking_recv() {
            let mut work = vec![first];
            while work.len() < self.config.batch_max {
                match queue.try_recv() {
                    Ok(more) => work.push(more),
                    Err(_) => break,
                }
            }
            let (jobs, writes) = split(work);
            self.run_batch(jobs, writes);
        }
        tracing::info!("chat engine stopped");
    }

    fn run_batch(&mut self, jobs: Vec<Job>, writes: Vec<Writes>) {
        self.follow_term();
        let PlannedBatch {
            results,
            batch,
            deliveries,
            effects,
            poisoned,
        } = BatchPlan::new(
            &self.store,
            &self.known_users,
            &mut self.sequences,
            &self.config.limits,
            &self.outlets,
            now_ms(),
        )
        .plan_jobs(jobs.iter().map(|job| (job.user.as_str(), &job.command)));
        let (batch, write_dones) = with_writes(batch, writes);
        let committed = match poisoned {
            Some(error) => Err(error),
            None if batch.is_empty() => Ok(Published::No),
            None => self.commit(batch, &deliveries, &effects, jobs.len()),
        };
        let published = match committed {
            Ok(published) => published,
            Err(error) => return self.fail_batch(&error, jobs, write_dones),
        };
        if published == Published::No {
            self.publish(deliveries);
        }
        self.apply(effects, published);
        for (job, result) in jobs.into_iter().zip(results) {
            let _ = job.done.send(result);
        }
        for done in write_dones {
            let _ = done.send(Ok(()));
        }
    }

    /// A new term (another node led in between): counters from the store.
    fn follow_term(&mut self) {
        let term = self.committer.term();
        if term != self.term {
            self.sequences.reset();
            self.term = term;
        }
    }

    /// The batch was not committed: nothing is acked, every job and write
    /// fails, and the counters are read again from the store.
    fn fail_batch(
        &mut self,
        error: &StorageError,
        jobs: Vec<Job>,
        write_dones: Vec<oneshot::Sender<Result<(), StorageError>>>,
    ) {
        tracing::error!(%error, jobs = jobs.len(), "batch not committed; nothing was acked");
        self.sequences.reset();
        for job in jobs {
            let _ = job.done.send(Err(ChatError::internal("storage failure")));
        }
        for done in write_dones {
            let _ = done.send(Err(StorageError::Replication(error.to_string())));
        }
    }

    fn commit(
        &self,
        batch: Batch,
        deliveries: &[Delivery],
        effects: &[Effect],
        jobs: usize,
    ) -> Result<Published, StorageError> {
        let started = Instant::now();
        let published = self.committer.commit(batch, deliveries, effects)?;
        m::store_commit(started.elapsed(), jobs);
        Ok(published)
    }

    fn publish(&self, deliveries: Vec<Delivery>) {
        m::fanout_deliveries(deliveries.len() as u64);
        for delivery in deliveries {
            let envelope = LiveEnvelope {
                inbox_seq: delivery.inbox_seq,
                payload: encode_envelope(delivery.inbox_seq, &delivery.body),
            };
            self.outlets.router.deliver(&delivery.user, envelope);
        }
    }

    /// The effects of a committed batch; friendships only when the
    /// committer has not published them (on every node) already.
    fn apply(&self, effects: Vec<Effect>, published: Published) {
        for effect in effects {
            match effect {
                Effect::Friendship { a, b, friends } if published == Published::No => {
                    self.outlets.presence.friendship_changed(&a, &b, friends)
                }
                Effect::Friendship { .. } => {}
                Effect::PushQueued => self.outlets.push.wake(),
            }
        }
    }
}

/// The jobs and the outside writes of what was taken from the queue.
fn split(work: Vec<Work>) -> (Vec<Job>, Vec<Writes>) {
    let mut jobs = Vec::with_capacity(work.len());
    let mut writes = Vec::new();
    for item in work {
        match item {
            Work::Job(job) => jobs.push(job),
            Work::Writes(more) => writes.push(more),
        }
    }
    (jobs, writes)
}

/// The planned batch with the outside writes appended (they touch records
/// planning never writes: tokens, sessions, last activity, push devices).
fn with_writes(
    mut batch: Batch,
    writes: Vec<Writes>,
) -> (Batch, Vec<oneshot::Sender<Result<(), StorageError>>>) {
    let mut dones = Vec::with_capacity(writes.len());
    for Writes { batch: more, done } in writes {
        batch.append(more);
        dones.push(done);
    }
    (batch, dones)
}
