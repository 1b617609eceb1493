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

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use parley_chat_logic::command::Command;
use parley_chat_logic::ChatError;
use parley_proto::v1::ChatMessage;
use parley_storage::{Batch, StorageError, Store};
use tokio::sync::{mpsc, oneshot};

use super::commit::{Commit, SyncedWrite};
use super::outcome::{encode_envelope, JobResult};
use super::plan::{BatchPlan, Delivery, Effect, KnownUsers, PlannedBatch, Sequences, Services};
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

/// A cloneable handle for submitting jobs.
#[derive(Clone)]
pub struct EngineHandle {
    jobs: mpsc::Sender<Job>,
}

impl EngineHandle {
    /// Queues a job (waiting while the queue is full: back-pressure on the
    /// submitting connection) and returns where its result will arrive.
    pub async fn submit(
        &self,
        user: String,
        command: Command,
    ) -> Result<oneshot::Receiver<JobResult>, ChatError> {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Job {
                user,
                command,
                done,
            })
            .await
            .map_err(|_| ChatError::internal("the chat engine has stopped"))?;
        Ok(result)
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub limits: parley_chat_logic::limits::Limits,
    pub batch_max: usize,
    pub queue: usize,
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

/// Starts the engine thread, reading from `store` and committing to it with
/// synced writes. It stops once every [`EngineHandle`] is dropped and the
/// queue is drained.
pub fn spawn(
    store: Store,
    outlets: Outlets,
    config: EngineConfig,
) -> std::io::Result<(EngineHandle, std::thread::JoinHandle<()>)> {
    let (jobs, queue) = mpsc::channel(config.queue.max(1));
    let committer = Box::new(SyncedWrite::new(store.clone()));
    let thread = std::thread::Builder::new()
        .name("chat-engine".into())
        .spawn(move || Engine::new(store, committer, outlets, config).run(queue))?;
    Ok((EngineHandle { jobs }, thread))
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
        }
    }

    fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        tracing::info!("chat engine started");
        while let Some(first) = queue.blocking_recv() {
            let mut jobs = vec![first];
            while jobs.len() < self.config.batch_max {
                match queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            self.run_batch(jobs);
        }
        tracing::info!("chat engine stopped");
    }

    fn run_batch(&mut self, jobs: Vec<Job>) {
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
        let committed = match poisoned {
            Some(error) => Err(error),
            None if batch.is_empty() => Ok(()),
            None => self.commit(batch, jobs.len()),
        };
        if let Err(error) = committed {
            tracing::error!(%error, jobs = jobs.len(), "batch not committed; nothing was acked");
            self.sequences.reset();
            for job in jobs {
                let _ = job.done.send(Err(ChatError::internal("storage failure")));
            }
            return;
        }
        self.publish(deliveries);
        self.apply(effects);
        for (job, result) in jobs.into_iter().zip(results) {
            let _ = job.done.send(result);
        }
    }

    fn commit(&self, batch: Batch, jobs: usize) -> Result<(), StorageError> {
        let started = Instant::now();
        self.committer.commit(batch)?;
        m::store_commit(started.elapsed(), jobs);
        Ok(())
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

    fn apply(&self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Friendship { a, b, friends } => {
                    self.outlets.presence.friendship_changed(&a, &b, friends)
                }
                Effect::PushQueued => self.outlets.push.wake(),
            }
        }
    }
}
