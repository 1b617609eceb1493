//! Account passwords: argon2 verifications and hashes on a small pool of
//! dedicated threads, and a cache of recent successful verifications.
//!
//! Argon2 is slow on purpose (tens of milliseconds of CPU and ~19 MiB of
//! memory per run). Two things follow:
//!
//! - **A cache.** Without it every password reconnect (a whole reconnect
//!   storm after a restart) pays argon2 again. Per user it keeps a keyed
//!   64-bit digest (SipHash with a per-process random key, never the
//!   password) of the last password that verified, a digest of the stored
//!   hash it verified against, and when, for [`CACHE_TTL`]. A hit still
//!   reads the account (one point read) and counts only while the stored
//!   hash is the one that was verified: a password changed through
//!   `POST /v1/password` ends every cached verification of the old one at
//!   once, without invalidation messages that could race a verification in
//!   progress.
//! - **A fixed pool**, one thread per core, fed by a bounded queue. A
//!   connect or registration storm queues there (and beyond the queue is
//!   refused as busy) instead of running hundreds of argon2 instances at
//!   once; and because the same few threads always do the work, the
//!   allocator reuses their working areas instead of keeping one per
//!   blocking thread.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parley_storage::Store;
use tokio::sync::oneshot;

use crate::accounts;
use crate::error::BrokerError;

/// How long a successful verification is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(600);
/// Most users remembered at once.
pub const CACHE_CAPACITY: usize = 100_000;
/// Jobs waiting for a pool thread at most; beyond, [`BrokerError::Busy`].
pub const QUEUE_CAPACITY: usize = 4096;

/// One piece of argon2 work waiting for a pool thread.
enum Job {
    Verify {
        user: String,
        password: String,
        digest: u64,
        answer: oneshot::Sender<Result<bool, BrokerError>>,
    },
    Hash {
        password: String,
        answer: oneshot::Sender<Result<String, BrokerError>>,
    },
}

/// Verifies and hashes account passwords on a fixed pool, with a cache.
///
/// Dropping it stops the pool: queued jobs are abandoned (their callers see
/// [`BrokerError::VerifierStopped`]), the one in progress finishes and the
/// threads are joined, so their store handles are gone when drop returns.
pub struct Passwords {
    store: Store,
    cache: Arc<Cache>,
    jobs: mpsc::SyncSender<Job>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Passwords {
    /// Starts one pool thread per core.
    pub fn new(store: Store) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::with_threads(store, cores)
    }

    /// Starts `threads` pool threads (at least one).
    pub fn with_threads(store: Store, threads: usize) -> Self {
        let cache = Arc::new(Cache::default());
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE_CAPACITY);
        let queue = Arc::new(Mutex::new(queue));
        let threads = (0..threads.max(1))
            .filter_map(|n| {
                let (store, queue, cache) = (store.clone(), queue.clone(), cache.clone());
                std::thread::Builder::new()
                    .name(format!("parley-auth-{n}"))
                    .spawn(move || run_pool_thread(&store, &queue, &cache))
                    .inspect_err(|error| tracing::error!(%error, "could not start an auth thread"))
                    .ok()
            })
            .collect();
        Passwords {
            store,
            cache,
            jobs,
            threads,
        }
    }

    /// True when `password` is `user`'s current password: from the cache,
    /// or verified with argon2 on the pool (queued behind other work).
    pub async fn verify(&self, user: &str, password: &str) -> Result<bool, BrokerError> {
        let digest = self.cache.digest(user, password);
        if let Some(record) = self.store.user(user)? {
            if self.cache.holds(user, digest, &record.password_hash) {
                return Ok(true);
            }
        }
        let (answer, verdict) = oneshot::channel();
        let job = Job::Verify {
            user: user.to_owned(),
            password: password.to_owned(),
            digest,
            answer,
        };
        self.submit(job)?;
        verdict.await.map_err(|_| BrokerError::VerifierStopped)?
    }

    /// The argon2 PHC hash of a new `password`, computed on the pool.
    pub async fn hash(&self, password: &str) -> Result<String, BrokerError> {
        let (answer, hashed) = oneshot::channel();
        let job = Job::Hash {
            password: password.to_owned(),
            answer,
        };
        self.submit(job)?;
        hashed.await.map_err(|_| BrokerError::VerifierStopped)?
    }

    fn submit(&self, job: Job) -> Result<(), BrokerError> {
        self.jobs.try_send(job).map_err(|error| match error {
            mpsc::TrySendError::Full(_) => BrokerError::Busy("password checks"),
            mpsc::TrySendError::Disconnected(_) => BrokerError::VerifierStopped,
        })
    }
}

impl Drop for Passwords {
    fn drop(&mut self) {
        self.cache.stopping.store(true, Ordering::Relaxed);
        let (closed, _) = mpsc::sync_channel(1);
        drop(std::mem::replace(&mut self.jobs, closed));
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Recent successful verifications, per user: a keyed digest of the
/// password, a keyed digest of the stored hash it matched, and when.
struct Cache {
    key: RandomState,
    verified: Mutex<HashMap<String, Verified>>,
    /// Set when the pool is dropped: queued jobs are abandoned.
    stopping: AtomicBool,
}

#[derive(Clone, Copy)]
struct Verified {
    password: u64,
    stored_hash: u64,
    at: Instant,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            key: RandomState::new(),
            verified: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
        }
    }
}

impl Cache {
    fn digest(&self, user: &str, password: &str) -> u64 {
        self.key.hash_one((user, password))
    }

    fn holds(&self, user: &str, password: u64, stored_hash: &str) -> bool {
        let stored_hash = self.key.hash_one(stored_hash);
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        verified.get(user).is_some_and(|v| {
            v.password == password && v.stored_hash == stored_hash && v.at.elapsed() < CACHE_TTL
        })
    }

    fn remember(&self, user: &str, password: u64, stored_hash: &str) {
        let entry = Verified {
            password,
            stored_hash: self.key.hash_one(stored_hash),
            at: Instant::now(),
        };
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= CACHE_CAPACITY {
            verified.retain(|_, v| v.at.elapsed() < CACHE_TTL);
        }
        if verified.len() >= CACHE_CAPACITY {
            verified.clear();
        }
        verified.insert(user.to_owned(), entry);
    }
}

/// A pool thread: runs queued jobs until the pool is dropped. A verification
/// checks the cache again first: when many devices of one user connect at
/// once, only the first of their queued jobs pays for argon2.
fn run_pool_thread(store: &Store, queue: &Mutex<mpsc::Receiver<Job>>, cache: &Cache) {
    let mut verifier = accounts::Verifier::default();
    loop {
        let job = {
            let queue = queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.recv()
        };
        let Ok(job) = job else { return };
        if cache.stopping.load(Ordering::Relaxed) {
            return;
        }
        // The caller may have gone meanwhile; nobody to answer then.
        match job {
            Job::Verify {
                user,
                password,
                digest,
                answer,
            } => {
                let _ = answer.send(verify_on_pool(
                    store,
                    cache,
                    &mut verifier,
                    &user,
                    &password,
                    digest,
                ));
            }
            Job::Hash { password, answer } => {
                let _ = answer.send(accounts::hash_password(&password));
            }
        }
    }
}

fn verify_on_pool(
    store: &Store,
    cache: &Cache,
    verifier: &mut accounts::Verifier,
    user: &str,
    password: &str,
    digest: u64,
) -> Result<bool, BrokerError> {
    let mut record = store.user(user)?;
    if record.is_none() && store.is_replicated() {
        // in a cluster, an account just registered on another node
        store.catch_up()?;
        record = store.user(user)?;
    }
    let Some(record) = record else {
        verifier.verify_unknown(password);
        return Ok(false);
    };
    if cache.holds(user, digest, &record.password_hash) {
        return Ok(true);
    }
    let verified = verifier.verify_record(&record, password)?;
    if verified {
        cache.remember(user, digest, &record.password_hash);
    }
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "correct horse";

    fn passwords() -> (tempfile::TempDir, Store, Passwords) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        accounts::add_user(&store, "alice", PASSWORD).unwrap();
        (dir, store.clone(), Passwords::new(store))
    }

    #[tokio::test]
    async fn right_password_verifies_and_is_cached() {
        let (_dir, store, passwords) = passwords();
        assert!(passwords.verify("alice", PASSWORD).await.unwrap());
        let digest = passwords.cache.digest("alice", PASSWORD);
        let stored = store.user("alice").unwrap().unwrap().password_hash;
        assert!(passwords.cache.holds("alice", digest, &stored));
        assert!(passwords.verify("alice", PASSWORD).await.unwrap());
    }

    #[tokio::test]
    async fn a_cached_user_with_another_password_is_still_refused() {
        let (_dir, _store, passwords) = passwords();
        assert!(passwords.verify("alice", PASSWORD).await.unwrap());
        assert!(!passwords.verify("alice", "guess").await.unwrap());
        assert!(!passwords.verify("nobody", PASSWORD).await.unwrap());
    }

    #[tokio::test]
    async fn a_changed_password_ends_the_cached_old_one_at_once() {
        let (_dir, store, passwords) = passwords();
        assert!(passwords.verify("alice", PASSWORD).await.unwrap());
        accounts::set_password(&store, "alice", "new password").unwrap();
        assert!(!passwords.verify("alice", PASSWORD).await.unwrap());
        assert!(passwords.verify("alice", "new password").await.unwrap());
    }

    #[tokio::test]
    async fn hashes_are_made_on_the_pool_and_verify() {
        let (_dir, _store, passwords) = passwords();
        let phc = passwords.hash("another one").await.unwrap();
        assert!(phc.starts_with("$argon2id$"));
        let mut verifier = accounts::Verifier::default();
        assert!(verifier.verify_password(&phc, "another one").unwrap());
    }

    #[tokio::test]
    async fn many_concurrent_verifications_all_get_an_answer_from_one_thread() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        accounts::add_user(&store, "alice", PASSWORD).unwrap();
        let passwords = Arc::new(Passwords::with_threads(store, 1));
        let answers: Vec<_> = (0..4)
            .map(|n| {
                let passwords = passwords.clone();
                let password = if n % 2 == 0 { PASSWORD } else { "wrong one" };
                tokio::spawn(async move { passwords.verify("alice", password).await.unwrap() })
            })
            .collect();
        let mut verdicts = Vec::new();
        for answer in answers {
            verdicts.push(answer.await.unwrap());
        }
        assert_eq!(verdicts, [true, false, true, false]);
    }
}
