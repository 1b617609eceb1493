//! The worker: one task that reads the push jobs the chat engine committed
//! and sends each in a task of its own, at most [`MAX_IN_FLIGHT`] at once.
//!
//! Jobs are read from the store after a cursor (the highest id read), in
//! pages, when the engine wakes the worker, and from id 0 at start, so the
//! jobs a stopped broker left are sent after a restart. The engine, one
//! thread, commits jobs in id order, so a read never skips one.
//!
//! A job ends when the gateway took it (2xx), refused it (4xx, see
//! [`Answer`]), or failed [`super::PushConfig::max_attempts`] times; it is then
//! deleted. After a failure its attempt count is saved in the store and it
//! waits in memory for its retry, [`Backoff::delay`] later (at most
//! [`MAX_WAITING`] jobs wait; new jobs stay in the store meanwhile).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parley_storage::{PushJob, Store};
use tokio::sync::Notify;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::gateway::{self, event_id, Answer, Gateway};
use super::registrations::Registrations;
use crate::error::blocking;
use crate::metrics as m;

/// Most notifications being sent at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// Most jobs held in memory for a retry.
pub const MAX_WAITING: usize = 10_000;
/// Jobs read from the store at a time.
const PAGE: usize = 64;
/// How long reading the store waits after it failed.
const READ_PAUSE: Duration = Duration::from_secs(1);

/// The delay before a failed notification's next attempt: `first`, then
/// doubling, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure.
    pub first: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// 1 s, 2 s, 4 s, ... up to 60 s.
    pub const DEFAULT: Backoff = Backoff {
        first: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };

    /// The delay after the `attempts`-th failed attempt (1 = the first).
    pub fn delay(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        self.first.saturating_mul(1u32 << doublings).min(self.max)
    }
}

/// What sending one job needs; shared by the send tasks.
pub(super) struct Sender {
    pub store: Store,
    /// `None`: push is off (no `push_gateway`), jobs are logged and deleted.
    pub gateway: Option<Gateway>,
    pub registrations: Registrations,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub stop: CancellationToken,
    /// Whether this node sends (always on a single node; only the leader
    /// in a cluster, where every node holds the jobs).
    pub active: Arc<AtomicBool>,
    /// Set on taking over: read the store again from the first job.
    pub rescan: Arc<AtomicBool>,
}

/// A failed job, back in the worker's hands until it is due.
struct Retry {
    id: u64,
    job: PushJob,
    due: Instant,
}

/// How one attempt ended.
enum Attempt {
    /// Finished (sent, rejected, refused, off, nobody to notify): delete it.
    Done,
    /// Failed: try again later (or give up).
    Failed(String),
    /// The worker is stopping: leave the job in the store as it is.
    Stopped,
}

/// The worker task's state.
pub(super) struct Worker {
    sender: Arc<Sender>,
    wake: Arc<Notify>,
    /// The highest job id read from the store.
    cursor: u64,
    /// Whether the store may hold jobs after `cursor`.
    more: bool,
    /// Reading the store failed: not again before this.
    read_pause: Option<Instant>,
    /// Read (or due for a retry) and not being sent yet.
    ready: VecDeque<(u64, PushJob)>,
    /// Failed jobs by when they are due, then id.
    waiting: BTreeMap<(Instant, u64), PushJob>,
    sending: JoinSet<Option<Retry>>,
}

/// What woke the worker up.
enum Event {
    Stop,
    Sent(Result<Option<Retry>, JoinError>),
    Woken,
    Timer,
}

impl Worker {
    pub(super) fn new(sender: Arc<Sender>, wake: Arc<Notify>) -> Worker {
        Worker {
            sender,
            wake,
            cursor: 0,
            more: true,
            read_pause: None,
            ready: VecDeque::new(),
            waiting: BTreeMap::new(),
            sending: JoinSet::new(),
        }
    }

    /// Runs until the stop token is cancelled, then waits for the send
    /// tasks (they end at once: a POST in progress is abandoned and its job
    /// stays in the store).
    pub(super) async fn run(mut self) {
        let stop = self.sender.stop.clone();
        loop {
            self.promote_due();
            self.fill().await;
            let timer = self.next_timer();
            let event = tokio::select! {
                _ = stop.cancelled() => Event::Stop,
                done = self.sending.join_next(), if !self.sending.is_empty() => match done {
                    Some(done) => Event::Sent(done),
                    None => Event::Timer,
                },
                () = self.wake.notified() => Event::Woken,
                () = sleep_until(timer) => Event::Timer,
            };
            match event {
                Event::Stop => break,
                Event::Sent(done) => self.sent(done),
                Event::Woken => self.more = true,
                Event::Timer => {}
            }
        }
        while self.sending.join_next().await.is_some() {}
        tracing::debug!(waiting = self.waiting.len(), "push worker stopped");
    }

    /// Moves the jobs whose retry is due to the front of `ready`, oldest
    /// first.
    fn promote_due(&mut self) {
        if !self.sender.active.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, id), job) = entry.remove_entry();
            due.push((id, job));
        }
        for (id, job) in due.into_iter().rev() {
            self.ready.push_front((id, job));
        }
    }

    /// Starts sends up to [`MAX_IN_FLIGHT`], reading jobs as needed.
    async fn fill(&mut self) {
        if self.sender.rescan.swap(false, Ordering::AcqRel) {
            // another node may have sent and deleted any of these meanwhile
            self.cursor = 0;
            self.more = true;
            self.ready.clear();
            self.waiting.clear();
        }
        if !self.sender.active.load(Ordering::Acquire) {
            return;
        }
        while self.sending.len() < MAX_IN_FLIGHT {
            if self.ready.is_empty() {
                self.read().await;
            }
            let Some((id, job)) = self.ready.pop_front() else {
                break;
            };
            self.sending.spawn(self.sender.clone().process(id, job));
        }
    }

    /// Reads the next page of jobs into `ready`, if there may be some and
    /// room for them.
    async fn read(&mut self) {
        let paused = self.read_pause.is_some_and(|until| until > Instant::now());
        if !self.more || paused || self.waiting.len() >= MAX_WAITING {
            return;
        }
        self.read_pause = None;
        let (store, after) = (self.sender.store.clone(), self.cursor);
        match blocking(move || Ok(store.push_jobs(after, PAGE)?)).await {
            Ok(jobs) => {
                self.more = jobs.len() == PAGE;
                if let Some((last, _)) = jobs.last() {
                    self.cursor = *last;
                }
                self.ready.extend(jobs);
            }
            Err(error) => {
                tracing::error!(%error, "cannot read push jobs, trying again shortly");
                self.read_pause = Some(Instant::now() + READ_PAUSE);
            }
        }
    }

    /// The next time something is due: a retry, or the end of a read pause.
    fn next_timer(&self) -> Option<Instant> {
        let now = Instant::now();
        let retry = self.waiting.keys().next().map(|(due, _)| *due);
        let pause = self.read_pause.filter(|until| *until > now);
        retry.into_iter().chain(pause).min()
    }

    fn sent(&mut self, done: Result<Option<Retry>, JoinError>) {
        match done {
            Ok(Some(retry)) => {
                self.waiting.insert((retry.due, retry.id), retry.job);
            }
            Ok(None) => {}
            // the job stays in the store and is sent again after a restart
            Err(error) => tracing::error!(%error, "a push send task failed"),
        }
    }
}

/// Sleeps until `at`, forever if `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Sender {
    /// Makes one attempt at job `id` and settles it in the store: deleted
    /// when done or given up, its attempt count saved when it will be
    /// retried (then it is returned, with when).
    async fn process(self: Arc<Self>, id: u64, mut job: PushJob) -> Option<Retry> {
        let reason = match self.attempt(id, &job).await {
            Attempt::Stopped => return None,
            Attempt::Done => {
                self.delete(id).await;
                return None;
            }
            Attempt::Failed(reason) => reason,
        };
        job.attempts = job.attempts.saturating_add(1);
        if job.attempts >= self.max_attempts {
            tracing::warn!(
                job = id, user = %job.user, event_id = %event_id(&job), attempts = job.attempts,
                %reason, "push notification dropped: out of attempts"
            );
            m::push_notification("dropped");
            self.delete(id).await;
            return None;
        }
        let delay = self.backoff.delay(job.attempts);
        tracing::info!(
            job = id, user = %job.user, attempts = job.attempts, retry_in_ms = delay.as_millis() as u64,
            %reason, "push notification failed, will retry"
        );
        m::push_notification("retried");
        let (store, saved) = (self.store.clone(), job.clone());
        if let Err(error) = blocking(move || Ok(store.update_push_job(id, &saved)?)).await {
            tracing::error!(job = id, %error, "cannot save a push job's attempts");
        }
        Some(Retry {
            id,
            job,
            due: Instant::now() + delay,
        })
    }

    /// One POST of `job` to the user's devices as registered now.
    async fn attempt(&self, id: u64, job: &PushJob) -> Attempt {
        let Some(gateway) = &self.gateway else {
            tracing::info!(
                job = id, user = %job.user, event_id = %event_id(job),
                "push is off (no push_gateway configured): notification not sent"
            );
            return Attempt::Done;
        };
        let (store, user) = (self.store.clone(), job.user.clone());
        let read = blocking(move || {
            let devices = store.push_registrations(&user)?;
            let unread = match devices.is_empty() {
                true => 0,
                false => store.unread_total(&user)?,
            };
            Ok((devices, unread))
        });
        let (devices, unread) = match read.await {
            Ok(read) => read,
            Err(error) => return Attempt::Failed(format!("cannot read the store: {error}")),
        };
        if devices.is_empty() {
            tracing::debug!(job = id, user = %job.user, "push job dropped: no registration left");
            return Attempt::Done;
        }
        let body = gateway::notification(job, &devices, unread);
        let started = std::time::Instant::now();
        let answer = tokio::select! {
            _ = self.stop.cancelled() => return Attempt::Stopped,
            answer = gateway.notify(body) => answer,
        };
        m::push_send(started.elapsed());
        self.settle(id, job, devices.len(), answer).await
    }

    /// What `answer` (to a notification for `devices` devices) means for the job.
    async fn settle(&self, id: u64, job: &PushJob, devices: usize, answer: Answer) -> Attempt {
        match answer {
            Answer::Delivered { rejected } if rejected.is_empty() => {
                tracing::debug!(job = id, user = %job.user, "push notification sent");
                m::push_notification("sent");
            }
            Answer::Delivered { rejected } => {
                let count = rejected.len();
                m::push_notification(if count >= devices { "rejected" } else { "sent" });
                match self
                    .registrations
                    .remove_pushkeys(&job.user, rejected)
                    .await
                {
                    Ok(removed) => tracing::info!(
                        job = id, user = %job.user, rejected = count, removed,
                        "push gateway rejected pushkeys: unregistered"
                    ),
                    Err(error) => tracing::error!(
                        job = id, user = %job.user, %error, "cannot unregister rejected pushkeys"
                    ),
                }
            }
            Answer::Unreadable(what) => {
                tracing::warn!(
                    job = id, user = %job.user, answer = %what,
                    "push gateway answered 2xx with an unreadable body: counted as sent"
                );
                m::push_notification("sent");
            }
            Answer::Refused(what) => {
                tracing::warn!(
                    job = id, user = %job.user, event_id = %event_id(job), answer = %what,
                    "push notification dropped: the gateway refused it"
                );
                m::push_notification("dropped");
            }
            Answer::Failed(what) => return Attempt::Failed(what),
        }
        Attempt::Done
    }

    async fn delete(&self, id: u64) {
        let store = self.store.clone();
        if let Err(error) = blocking(move || Ok(store.delete_push_job(id)?)).await {
            tracing::error!(job = id, %error, "cannot delete a finished push job");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_up_to_a_minute() {
        let delays: Vec<u64> = (1..=9)
            .map(|attempts| Backoff::DEFAULT.delay(attempts).as_secs())
            .collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(Backoff::DEFAULT.delay(0), Duration::from_secs(1));
        assert_eq!(Backoff::DEFAULT.delay(u32::MAX), Duration::from_secs(60));
    }
}
