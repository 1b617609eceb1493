//! CONNECT authentication: the account password, verified with argon2, and
//! a small cache of recent successful verifications.
//!
//! Argon2 is slow on purpose (tens of milliseconds of CPU). Without the
//! cache, every reconnect — a whole reconnect storm after a broker restart —
//! pays it again. The cache keeps, per user, a keyed 64-bit digest (SipHash
//! with a per-process random key, never the password) of the last password
//! that verified, for [`CACHE_TTL`]. Passwords only change through
//! `parley user passwd`, which needs the broker stopped, so a cached entry
//! never outlives the password it vouches for.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use parley_storage::Store;

use crate::accounts;
use crate::error::BrokerError;

/// How long a successful verification is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(600);
/// Most users remembered at once.
pub const CACHE_CAPACITY: usize = 100_000;

/// Verifies CONNECT credentials against the store, with a cache.
pub struct Authenticator {
    store: Store,
    key: RandomState,
    verified: Mutex<HashMap<String, (u64, Instant)>>,
    /// Argon2 needs ~19 MiB and a core per verification: a connect storm
    /// must queue, not run hundreds at once on the blocking pool.
    slots: tokio::sync::Semaphore,
}

impl Authenticator {
    pub fn new(store: Store) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Authenticator {
            store,
            key: RandomState::new(),
            verified: Mutex::new(HashMap::new()),
            slots: tokio::sync::Semaphore::new(cores),
        }
    }

    /// Waits for a verification slot (one per core); hold it while verifying.
    pub async fn slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.slots.acquire().await.ok()
    }

    /// True when `password` is `user`'s. Blocking (argon2 on a cache miss):
    /// call it from `spawn_blocking`.
    pub fn verify(&self, user: &str, password: &str) -> Result<bool, BrokerError> {
        let digest = self.digest(user, password);
        if self.is_cached(user, digest) {
            return Ok(true);
        }
        let verified = accounts::verify(&self.store, user, password)?;
        if verified {
            self.remember(user, digest);
        }
        Ok(verified)
    }

    fn digest(&self, user: &str, password: &str) -> u64 {
        self.key.hash_one((user, password))
    }

    fn is_cached(&self, user: &str, digest: u64) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> (tempfile::TempDir, Authenticator) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        accounts::add_user(&store, "alice", "secret").unwrap();
        (dir, Authenticator::new(store))
    }

    #[test]
    fn right_password_verifies_and_is_cached() {
        let (_dir, auth) = authenticator();
        assert!(auth.verify("alice", "secret").unwrap());
        let digest = auth.digest("alice", "secret");
        assert!(auth.is_cached("alice", digest));
        assert!(auth.verify("alice", "secret").unwrap());
    }

    #[test]
    fn a_cached_user_with_another_password_is_still_refused() {
        let (_dir, auth) = authenticator();
        assert!(auth.verify("alice", "secret").unwrap());
        assert!(!auth.verify("alice", "guess").unwrap());
        assert!(!auth.verify("nobody", "secret").unwrap());
    }
}
