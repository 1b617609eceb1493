//! Token buckets: the one rate rule behind every limit that counts events
//! over time (requests per device, failed logins per user and address).
//!
//! A bucket holds up to `burst` tokens and refills at `per_sec`; an event
//! that finds a token takes it. Times are passed in, so the rule is tested
//! without a clock. No library here: the failed-login limits must look at a
//! bucket without taking from it (only failures are charged), which the
//! rate-limiting crates do not offer, and a per-device bucket must stay two
//! words (tens of thousands of idle devices each hold one).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How fast a bucket refills and how much it holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    per_sec: f64,
    burst: f64,
}

impl Quota {
    /// `per_sec` events a second, `burst` at once (both at least 1).
    pub fn per_second(per_sec: u32, burst: u32) -> Quota {
        Quota {
            per_sec: f64::from(per_sec.max(1)),
            burst: f64::from(burst.max(1)),
        }
    }

    /// `count` events per `window`, all of them possibly at once.
    pub fn per_window(count: u32, window: Duration) -> Quota {
        let count = f64::from(count.max(1));
        Quota {
            per_sec: count / window.as_secs_f64().max(0.001),
            burst: count,
        }
    }
}

/// One token bucket.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(quota: Quota, now: Instant) -> Bucket {
        Bucket {
            tokens: quota.burst,
            at: now,
        }
    }

    /// Takes a token if there is one; false (and nothing taken) otherwise.
    pub fn try_take(&mut self, quota: Quota, now: Instant) -> bool {
        self.refill(quota, now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// Whether a token is there, without taking it.
    pub fn has_token(&mut self, quota: Quota, now: Instant) -> bool {
        self.refill(quota, now);
        self.tokens >= 1.0
    }

    /// Whether the bucket has refilled completely (it can be forgotten).
    fn is_full(&mut self, quota: Quota, now: Instant) -> bool {
        self.refill(quota, now);
        self.tokens >= quota.burst
    }

    fn refill(&mut self, quota: Quota, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * quota.per_sec).min(quota.burst);
        self.at = now;
    }
}

/// One bucket per key (a user id, an IP address), created on first charge.
/// Full buckets are forgotten when the map grows past its capacity, so it
/// stays bounded by the keys that were charged recently.
pub struct Keyed<K> {
    quota: Quota,
    capacity: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Eq + Hash> Keyed<K> {
    pub fn new(quota: Quota, capacity: usize) -> Self {
        Keyed {
            quota,
            capacity,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` has a token left (nothing is taken).
    pub fn allows(&self, key: &K, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets
            .get_mut(key)
            .is_none_or(|bucket| bucket.has_token(self.quota, now))
    }

    /// Takes a token from `key`'s bucket (if it has one left).
    pub fn charge(&self, key: K, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= self.capacity {
            buckets.retain(|_, bucket| !bucket.is_full(self.quota, now));
        }
        buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(self.quota, now))
            .try_take(self.quota, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let quota = Quota::per_second(10, 3);
        let start = Instant::now();
        let mut bucket = Bucket::full(quota, start);
        assert!((0..3).all(|_| bucket.try_take(quota, start)));
        assert!(!bucket.try_take(quota, start));
        assert!(!bucket.has_token(quota, start + SECOND / 20));
        assert!(bucket.try_take(quota, start + SECOND / 10));
        assert!(!bucket.try_take(quota, start + SECOND / 10));
        let later = start + 10 * SECOND;
        assert!(
            (0..3).all(|_| bucket.try_take(quota, later)),
            "refills to the burst"
        );
        assert!(!bucket.try_take(quota, later), "and not beyond");
    }

    #[test]
    fn sustained_rate_passes_exactly() {
        let quota = Quota::per_second(1000, 1000);
        let start = Instant::now();
        let mut bucket = Bucket::full(quota, start);
        let passed = (0..3000)
            .filter(|n| bucket.try_take(quota, start + Duration::from_micros(1000 * n)))
            .count();
        assert_eq!(passed, 3000, "1,000 a second for 3 s all pass");
    }

    #[test]
    fn keyed_buckets_charge_only_their_key_and_stay_bounded() {
        let quota = Quota::per_window(2, Duration::from_secs(60));
        let limiter = Keyed::new(quota, 4);
        let now = Instant::now();
        assert!(limiter.allows(&"alice", now));
        limiter.charge("alice", now);
        assert!(limiter.allows(&"alice", now));
        limiter.charge("alice", now);
        assert!(!limiter.allows(&"alice", now));
        assert!(limiter.allows(&"bob", now), "another key is untouched");
        assert!(
            limiter.allows(&"alice", now + Duration::from_secs(30)),
            "one refilled"
        );
        for n in 0..100 {
            limiter.charge(
                format!("user{n}").leak() as &str,
                now + Duration::from_secs(60 * (n + 1)),
            );
        }
        let size = limiter.buckets.lock().unwrap().len();
        assert!(size <= 5, "{size} buckets kept");
    }
}
