//! What the load clients sent and what the broker acked, and the seeded
//! random numbers that choose channels, texts and kill moments.

use std::sync::{Arc, Mutex, MutexGuard};

/// One `SendMessage` with an explicit `client_msg_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub sender: String,
    pub channel: String,
    pub client_msg_id: String,
    pub text: String,
    /// `Some` once an `Ack` arrived; `None` while (or if it stayed) in flight.
    pub acked: Option<Acked>,
}

/// What the `Ack` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    pub seq: u64,
    pub ts_ms: i64,
}

/// Every attempt of the whole run, shared by the load tasks.
#[derive(Debug, Default)]
pub struct Ledger {
    attempts: Vec<Attempt>,
}

/// The ledger as the tasks share it.
#[derive(Debug, Default, Clone)]
pub struct SharedLedger(Arc<Mutex<Ledger>>);

impl SharedLedger {
    pub fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records an attempt before it is sent; returns its index.
    pub fn record(&self, attempt: Attempt) -> usize {
        let mut ledger = self.lock();
        ledger.attempts.push(attempt);
        ledger.attempts.len() - 1
    }

    /// Records the `Ack` of attempt `index`.
    pub fn acked(&self, index: usize, acked: Acked) {
        let mut ledger = self.lock();
        let attempt = &mut ledger.attempts[index];
        assert!(
            attempt.acked.is_none() || attempt.acked == Some(acked),
            "attempt {attempt:?} acked twice, differently: {acked:?}"
        );
        attempt.acked = Some(acked);
    }

    /// How many attempts have been acked so far.
    pub fn acked_count(&self) -> usize {
        self.lock()
            .attempts
            .iter()
            .filter(|a| a.acked.is_some())
            .count()
    }

    /// A copy of every attempt, in the order they were made, with indexes.
    pub fn snapshot(&self) -> Vec<(usize, Attempt)> {
        self.lock().attempts.iter().cloned().enumerate().collect()
    }
}

/// SplitMix64: small, seedable, good enough to pick channels and delays.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// An independent generator for a task.
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }
}
