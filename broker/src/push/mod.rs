//! Push notifications through a Matrix push gateway (`POST
//! .../_matrix/push/v1/notify`, so Sygnal and its kin work unchanged).
//!
//! Owns: each device's push registration ([`Push::register`],
//! [`Push::unregister`]) with an in-memory index of who has any
//! ([`Push::has_registrations`]); the push job ids ([`Push::next_job_id`]);
//! and the worker that sends the jobs in the store: the notification body,
//! at most [`MAX_IN_FLIGHT`] POSTs at once, each within `push_timeout_secs`,
//! retries with [`Backoff`] up to `push_max_attempts`, rejected pushkeys
//! unregistered, finished jobs deleted.
//! Must not: decide who is notified (the chat engine does: members with no
//! online device and a registration), or delay a commit or an Ack: the
//! engine writes each job into its commit batch ([`Push::queue`]) and calls
//! [`Push::wake`] after the commit; the worker reads the jobs from the store,
//! so a restart loses none.
//!
//! Layout:
//! - this file: [`Push`], [`PushConfig`].
//! - [`registrations`]: registrations in the store and the index.
//! - [`worker`]: reading, sending, retrying and deleting jobs.
//! - [`gateway`]: the HTTP client, the notification body, what an answer means.

pub mod gateway;
pub mod registrations;
pub mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parley_proto::v1::ChatMessage;
use parley_storage::{Batch, StorageError, Store};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use gateway::{Answer, Gateway, NOTIFY_PATH};
pub use parley_storage::{PushJob, PushRegistration, PUSH_BODY_CHARS};
pub use registrations::Registrations;
pub use worker::{Backoff, MAX_IN_FLIGHT};

use crate::config::{parse_gateway_url, Config, ConfigError};
use crate::error::BrokerError;

/// The push settings, from the config keys `push_gateway`,
/// `push_max_attempts` and `push_timeout_secs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// The gateway's full notify URL; `None`: push is off (jobs are logged
    /// and deleted).
    pub gateway: Option<String>,
    /// Attempts at one notification before it is dropped (at least 1).
    pub max_attempts: u32,
    /// The bound on one POST, from connecting to the end of the answer.
    pub timeout: Duration,
}

impl PushConfig {
    /// The push settings of `config`.
    pub fn from_config(config: &Config) -> PushConfig {
        PushConfig {
            gateway: config.push_gateway.clone(),
            max_attempts: config.push_max_attempts,
            timeout: config.push_timeout(),
        }
    }

    /// Checks each setting; the error names its config key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        if let Some(url) = &self.gateway {
            if let Err(message) = parse_gateway_url(url) {
                return invalid("push_gateway", &message);
            }
        }
        if self.max_attempts == 0 {
            return invalid("push_max_attempts", "must be at least 1");
        }
        if self.timeout.is_zero() {
            return invalid("push_timeout_secs", "must be at least 1");
        }
        Ok(())
    }
}

/// The push service: registrations, job ids and the worker. Shared as
/// `Arc<Push>`; dropping the last handle stops the worker ([`Push::stop`]
/// also waits for it).
pub struct Push {
    registrations: Registrations,
    enabled: bool,
    next_id: AtomicU64,
    store: Store,
    /// Cluster mode: registrations are read from the store (other nodes
    /// write them too) and only the leader's worker sends.
    clustered: AtomicBool,
    active: Arc<AtomicBool>,
    rescan: Arc<AtomicBool>,
    wake: Arc<Notify>,
    stop: CancellationToken,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Push {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Push")
            .field("enabled", &self.enabled)
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

impl Push {
    /// Loads the registration index and the last job id from `store` (a
    /// short blocking scan), and spawns the worker on the current tokio
    /// runtime; it starts with every job left in the store. Fails on an
    /// invalid `config` (naming the key) or outside a runtime.
    pub fn start(store: Store, config: PushConfig) -> Result<Arc<Push>, BrokerError> {
        Self::start_with(store, config, Backoff::DEFAULT)
    }

    /// [`Push::start`] with another retry schedule (tests use short ones).
    pub fn start_with(
        store: Store,
        config: PushConfig,
        backoff: Backoff,
    ) -> Result<Arc<Push>, BrokerError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|error| {
            BrokerError::io("push needs a tokio runtime", std::io::Error::other(error))
        })?;
        let gateway = match &config.gateway {
            Some(url) => Some(Gateway::new(url, config.timeout)?),
            None => None,
        };
        log_gateway(gateway.as_ref());
        let registrations = Registrations::load(store.clone())?;
        let last_id = store.last_push_job_id()?;
        let stop = CancellationToken::new();
        let wake = Arc::new(Notify::new());
        let enabled = gateway.is_some();
        let active = Arc::new(AtomicBool::new(true));
        let rescan = Arc::new(AtomicBool::new(false));
        let sender = worker::Sender {
            store: store.clone(),
            gateway,
            registrations: registrations.clone(),
            max_attempts: config.max_attempts,
            backoff,
            stop: stop.clone(),
            active: active.clone(),
            rescan: rescan.clone(),
        };
        let worker = worker::Worker::new(Arc::new(sender), wake.clone());
        let handle = runtime.spawn(worker.run());
        Ok(Arc::new(Push {
            registrations,
            enabled,
            next_id: AtomicU64::new(last_id),
            store,
            clustered: AtomicBool::new(false),
            active,
            rescan,
            wake,
            stop,
            worker: Mutex::new(Some(handle)),
        }))
    }

    /// Whether a gateway is configured (without one, the engine need not
    /// queue jobs: they would only be logged and deleted).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Registers (or re-registers) `user`'s `device`: `app_id` is
    /// `RegisterPush.platform`, `pushkey` its token (both checked by the
    /// chat logic). Synced before it returns.
    pub async fn register(
        &self,
        user: &str,
        device: &str,
        app_id: &str,
        pushkey: &str,
    ) -> Result<(), BrokerError> {
        self.registrations
            .register(user, device, app_id, pushkey)
            .await
    }

    /// Removes `user`'s `device`'s registration (`RegisterPush` with an
    /// empty token, `Logout`); false if it had none. Synced.
    pub async fn unregister(&self, user: &str, device: &str) -> Result<bool, BrokerError> {
        self.registrations.unregister(user, device).await
    }

    /// Whether `user` has any push registration (memory only, never blocks
    /// on the disk).
    pub fn has_registrations(&self, user: &str) -> bool {
        if self.clustered.load(Ordering::Acquire) {
            // any node may have written one: the store has them all
            return self
                .store
                .push_registrations(user)
                .is_ok_and(|registrations| !registrations.is_empty());
        }
        self.registrations.has_any(user)
    }

    /// Cluster mode, at start: this node holds every job but sends none
    /// until it leads ([`Push::take_over`]).
    pub fn stand_by(&self) {
        self.clustered.store(true, Ordering::Release);
        self.active.store(false, Ordering::Release);
    }

    /// This node leads the cluster now: new job ids above every stored
    /// one, and the worker reads the jobs from the first.
    pub fn take_over(&self) -> Result<(), StorageError> {
        let last = self.store.last_push_job_id()?;
        self.next_id.fetch_max(last, Ordering::AcqRel);
        self.rescan.store(true, Ordering::Release);
        self.active.store(true, Ordering::Release);
        self.wake();
        Ok(())
    }

    /// A new push job id, above every id in the store and every id handed
    /// out since the start (an id of a finished job may come back after a
    /// restart: ids only name pending jobs). Jobs must be committed in id
    /// order, as the engine, one thread, does: the worker reads after the
    /// highest id it has seen.
    pub fn next_job_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Writes the job that notifies `user` of `message` into `batch`, with
    /// a new id; call [`Push::wake`] once the batch is committed.
    pub fn queue(
        &self,
        batch: &mut Batch,
        user: &str,
        message: &ChatMessage,
    ) -> Result<(), StorageError> {
        batch.put_push_job(self.next_job_id(), &PushJob::for_message(user, message))
    }

    /// Tells the worker that new jobs were committed (cheap; call it from
    /// any thread after the commit).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stops the worker and waits until it has stopped: POSTs in progress
    /// are abandoned and their jobs stay in the store for the next start.
    pub async fn stop(&self) {
        self.stop.cancel();
        let handle = self
            .worker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = handle {
            if let Err(error) = handle.await {
                tracing::error!(%error, "the push worker failed");
            }
        }
    }
}

impl Drop for Push {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Says where notifications go (if anywhere), and warns when the URL does
/// not look like a notify endpoint.
fn log_gateway(gateway: Option<&Gateway>) {
    let Some(gateway) = gateway else {
        tracing::info!("push is off (no push_gateway configured): notifications are only logged");
        return;
    };
    let url = gateway.display_url();
    if url.trim_end_matches('/').ends_with(NOTIFY_PATH) {
        tracing::info!(push_gateway = %url, "push notifications on");
    } else {
        tracing::warn!(
            push_gateway = %url,
            "push_gateway does not end in {NOTIFY_PATH}: is it the gateway's full notify URL?"
        );
    }
}

#[cfg(test)]
mod tests;
