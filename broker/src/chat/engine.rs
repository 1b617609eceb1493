//! The chat engine: one dedicated thread that owns sequencing and writes.
//!
//! Connections submit write requests (send, group changes) through a bounded
//! queue. The thread takes every job waiting (up to `batch_max`), plans each
//! one into a single RocksDB `Batch` (assigning channel `seq` and per-user
//! `inbox_seq` from in-memory counters recovered from the store), commits the
//! batch with one synced write — group commit: concurrent senders share one
//! fsync — and only then answers each job and hands the new inbox envelopes
//! to the [`Router`]. One thread means no locks around sequence numbers and
//! gap-free sequences by construction.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use parley_chat_logic::command::Command;
use parley_chat_logic::ChatError;
use parley_proto::v1::{envelope, Ack, Envelope};
use parley_storage::{Batch, Store};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use super::plan::{BatchPlan, Effect, KnownUsers, Services};
use crate::metrics as m;
use crate::presence::Presence;
use crate::push::Push;
use crate::router::{LiveEnvelope, Router};

/// What a job's submitter gets back: what was committed, or the error to
/// reply with.
pub type JobResult = Result<Committed, ChatError>;

/// A committed job: its Ack, and every message it stored as
/// `(channel, seq)` (one per copy of a system message to several users).
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub ack: Ack,
    pub stored: Vec<(String, u64)>,
}

impl Committed {
    /// A job that stored no message (a receipt, a group or friend change).
    pub fn ack(ack: Ack) -> Committed {
        Committed {
            ack,
            stored: Vec::new(),
        }
    }

    /// A job that stored (or found, for a duplicate) the message its Ack names.
    pub fn stored(ack: Ack) -> Committed {
        Committed {
            stored: vec![(ack.channel.clone(), ack.seq)],
            ack,
        }
    }
}

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

/// Starts the engine thread. It stops once every [`EngineHandle`] is dropped
/// and the queue is drained.
pub fn spawn(
    store: Store,
    outlets: Outlets,
    config: EngineConfig,
) -> std::io::Result<(EngineHandle, std::thread::JoinHandle<()>)> {
    let (jobs, queue) = mpsc::channel(config.queue.max(1));
    let thread = std::thread::Builder::new()
        .name("chat-engine".into())
        .spawn(move || Engine::new(store, outlets, config).run(queue))?;
    Ok((EngineHandle { jobs }, thread))
}

/// Last assigned sequence numbers, loaded lazily from the store.
///
/// A job first [`Sequences::load`]s every counter it will touch (the only
/// fallible step), then takes numbers with the infallible `next_*` calls, so
/// a job that fails never leaves a gap behind.
#[derive(Default)]
pub(super) struct Sequences {
    channels: HashMap<String, u64>,
    inboxes: HashMap<String, u64>,
}

impl Sequences {
    pub(super) fn load(
        &mut self,
        store: &Store,
        channel: Option<&str>,
        users: &[String],
    ) -> Result<(), ChatError> {
        if let Some(channel) = channel {
            if !self.channels.contains_key(channel) {
                let last = store.last_channel_seq(channel).map_err(internal)?;
                self.channels.insert(channel.to_owned(), last);
            }
        }
        for user in users {
            if !self.inboxes.contains_key(user) {
                let last = store.last_inbox_seq(user).map_err(internal)?;
                self.inboxes.insert(user.clone(), last);
            }
        }
        Ok(())
    }

    /// The last `seq` of a channel [`load`](Self::load)ed before.
    pub(super) fn channel_seq(&self, channel: &str) -> u64 {
        self.channels.get(channel).copied().unwrap_or(0)
    }

    /// The next `seq` of a channel [`load`](Self::load)ed before.
    pub(super) fn next_channel_seq(&mut self, channel: &str) -> u64 {
        let last = self.channels.entry(channel.to_owned()).or_default();
        *last += 1;
        *last
    }

    /// The next `inbox_seq` of a user [`load`](Self::load)ed before.
    pub(super) fn next_inbox_seq(&mut self, user: &str) -> u64 {
        let last = self.inboxes.entry(user.to_owned()).or_default();
        *last += 1;
        *last
    }

    /// Forgets everything, so counters are reloaded from what is durable.
    fn reset(&mut self) {
        self.channels.clear();
        self.inboxes.clear();
    }
}

pub(super) fn internal(error: impl std::fmt::Display) -> ChatError {
    tracing::error!(%error, "store failure in the chat engine");
    ChatError::internal("storage failure")
}

/// An inbox append planned by a job, published after the commit.
pub(super) struct Delivery {
    pub user: String,
    pub inbox_seq: u64,
    pub body: Arc<Bytes>,
}

/// Encodes an `Envelope` whose body was encoded once for all recipients:
/// protobuf lets the `inbox_seq` field and the body field be concatenated.
pub fn encode_envelope(inbox_seq: u64, body: &[u8]) -> Bytes {
    let head = Envelope {
        inbox_seq,
        body: None,
    };
    let mut buf = BytesMut::with_capacity(head.encoded_len() + body.len());
    head.encode(&mut buf).expect("a BytesMut grows as needed");
    buf.put_slice(body);
    buf.freeze()
}

/// Encodes just the body field of an `Envelope`.
pub(super) fn encode_body(body: envelope::Body) -> Arc<Bytes> {
    let envelope = Envelope {
        inbox_seq: 0,
        body: Some(body),
    };
    Arc::new(Bytes::from(envelope.encode_to_vec()))
}

struct Engine {
    store: Store,
    outlets: Outlets,
    config: EngineConfig,
    sequences: Sequences,
    known_users: RefCell<KnownUsers>,
}

impl Engine {
    fn new(store: Store, outlets: Outlets, config: EngineConfig) -> Self {
        Engine {
            store,
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
        let services = Services {
            presence: &self.outlets.presence,
            push: &self.outlets.push,
        };
        let mut plan = BatchPlan::new(
            &self.store,
            &self.known_users,
            &mut self.sequences,
            &self.config.limits,
            services,
        );
        let results: Vec<JobResult> = jobs
            .iter()
            .map(|job| plan.apply(&job.user, &job.command))
            .collect();
        let BatchPlan {
            batch,
            deliveries,
            effects,
            poisoned,
            ..
        } = plan;
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

    fn commit(&self, batch: Batch, jobs: usize) -> Result<(), parley_storage::StorageError> {
        let started = Instant::now();
        self.store.commit(batch, true)?;
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
