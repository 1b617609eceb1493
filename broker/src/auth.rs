//! CONNECT authentication: the account password, verified with argon2 on a
//! small pool of dedicated threads, and a cache of recent successes.
//!
//! Argon2 is slow on purpose (tens of milliseconds of CPU and ~19 MiB of
//! memory per verification). Two things follow:
//!
//! - **A cache.** Without it every reconnect — a whole reconnect storm after
//!   a broker restart — pays argon2 again. The cache keeps, per user, a keyed
//!   64-bit digest (SipHash with a per-process random key, never the
//!   password) of the last password that verified, for [`CACHE_TTL`].
//!   Passwords only change through `parley user passwd`, which needs the
//!   broker stopped, so a cached entry never outlives the password it vouches
//!   for. Cache hits are answered on the connection's task.
//! - **A fixed verification pool**, one thread per core. A connect storm
//!   queues there instead of running hundreds of argon2 instances at once on
//!   tokio's blocking pool; and because the same few threads always do the
//!   work, the allocator reuses their ~19 MiB working areas instead of
//!   keeping one per blocking thread (which made broker memory grow by
//!   megabytes per connection during a connect storm).

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

/// One verification waiting for a pool thread.
struct Job {
    user: String,
    password: String,
    digest: u64,
    answer: oneshot::Sender<Result<bool, BrokerError>>,
}

/// Verifies CONNECT credentials against the store, with a cache.
///
/// Dropping it stops the pool: queued verifications are abandoned (their
/// connections see [`BrokerError::VerifierStopped`]), the one in progress
/// finishes and the threads are joined, so their store handles are gone
/// when drop returns.
pub struct Authenticator {
    cache: Arc<Cache>,
    jobs: mpsc::Sender<Job>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Authenticator {
    /// Starts one verification thread per core.
    pub fn new(store: Store) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::with_threads(store, cores)
    }

    /// Starts `threads` verification threads (at least one).
    pub fn with_threads(store: Store, threads: usize) -> Self {
        let cache = Arc::new(Cache::default());
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let threads = (0..threads.max(1))
            .filter_map(|n| {
                let (store, queue, cache) = (store.clone(), queue.clone(), cache.clone());
                std::thread::Builder::new()
                    .name(format!("parley-auth-{n}"))
                    .spawn(move || run_verifier(&store, &queue, &cache))
                    .inspect_err(
                        |error| tracing::error!(%error, "could not start a verification thread"),
                    )
                    .ok()
            })
            .collect();
        Authenticator {
            cache,
            jobs,
            threads,
        }
    }

    /// True when `password` is `user`'s: from the cache, or verified with
    /// argon2 on the pool (queued behind other verifications).
    pub async fn verify(&self, user: &str, password: &str) -> Result<bool, BrokerError> {
        let digest = self.cache.digest(user, password);
        if self.cache.holds(user, digest) {
            return Ok(true);
        }
        let (answer, verdict) = oneshot::channel();
        let job = Job {
            user: user.to_owned(),
            password: password.to_owned(),
            digest,
            answer,
        };
        self.jobs
            .send(job)
            .map_err(|_| BrokerError::VerifierStopped)?;
        verdict.await.map_err(|_| BrokerError::VerifierStopped)?
    }
}

impl Drop for Authenticator {
    fn drop(&mut self) {
        self.cache.stopping.store(true, Ordering::Relaxed);
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.jobs, closed));
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Recent successful verifications: per user, a keyed digest of the
/// password and when it verified.
struct Cache {
    key: RandomState,
    verified: Mutex<HashMap<String, (u64, Instant)>>,
    /// Set when the authenticator is dropped: queued jobs are abandoned.
    stopping: AtomicBool,
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

    fn holds(&self, user: &str, digest: u64) -> bool {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        verified
            .get(user)
            .is_some_and(|(cached, at)| *cached == digest && at.elapsed() < CACHE_TTL)
    }

    fn remember(&self, user: &str, digest: u64) {
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= CACHE_CAPACITY {
            verified.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        }
        if verified.len() >= CACHE_CAPACITY {
            verified.clear();
        }
        verified.insert(user.to_owned(), (digest, Instant::now()));
    }
}

/// A pool thread: verifies queued jobs until the authenticator is dropped.
/// The cache is checked again first: when many devices of one user connect
/// at once, only the first of their queued jobs pays for argon2.
fn run_verifier(store: &Store, queue: &Mutex<mpsc::Receiver<Job>>, cache: &Cache) {
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
        let verdict = if cache.holds(&job.user, job.digest) {
            Ok(true)
        } else {
            let verdict = verifier.verify(store, &job.user, &job.password);
            if matches!(verdict, Ok(true)) {
                cache.remember(&job.user, job.digest);
            }
            verdict
        };
        // The connection may have gone meanwhile; nobody to answer then.
        let _ = job.answer.send(verdict);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> (tempfile::TempDir, Authenticator) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        accounts::add_user(&store, "alice", "secret").unwrap();
        (dir, Authenticator::new(store))
    }

    #[tokio::test]
    async fn right_password_verifies_and_is_cached() {
        let (_dir, auth) = authenticator();
        assert!(auth.verify("alice", "secret").await.unwrap());
        let digest = auth.cache.digest("alice", "secret");
        assert!(auth.cache.holds("alice", digest));
        assert!(auth.verify("alice", "secret").await.unwrap());
    }

    #[tokio::test]
    async fn a_cached_user_with_another_password_is_still_refused() {
        let (_dir, auth) = authenticator();
        assert!(auth.verify("alice", "secret").await.unwrap());
        assert!(!auth.verify("alice", "guess").await.unwrap());
        assert!(!auth.verify("nobody", "secret").await.unwrap());
    }

    #[tokio::test]
    async fn many_concurrent_verifications_all_get_an_answer_from_one_thread() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        accounts::add_user(&store, "alice", "secret").unwrap();
        let auth = Arc::new(Authenticator::with_threads(store, 1));
        let answers: Vec<_> = (0..4)
            .map(|n| {
                let auth = auth.clone();
                let password = if n % 2 == 0 { "secret" } else { "wrong" };
                tokio::spawn(async move { auth.verify("alice", password).await.unwrap() })
            })
            .collect();
        let mut verdicts = Vec::new();
        for answer in answers {
            verdicts.push(answer.await.unwrap());
        }
        assert_eq!(verdicts, [true, false, true, false]);
    }
}
