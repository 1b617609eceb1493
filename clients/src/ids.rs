//! Unique ids for requests and for `client_msg_id`s.
//!
//! An id is `{prefix}-{counter}`. The prefix is made once per client from the
//! wall clock in nanoseconds, the process id and a process-wide counter, so two runs of the command
//! line (two processes, or the same process later) never reuse a
//! `client_msg_id`: a reuse would be taken by the broker for a retry and
//! answered `duplicate = true` without storing the new text.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A thread-safe generator of unique ids: `{prefix}-{n}` with `n` = 1, 2, 3, ...
///
/// ```
/// use parley_client::IdGen;
/// let ids = IdGen::with_prefix("t");
/// assert_eq!(ids.next_id(), "t-1");
/// assert_eq!(ids.next_id(), "t-2");
/// ```
#[derive(Debug)]
pub struct IdGen {
    prefix: String,
    counter: AtomicU64,
}

impl IdGen {
    /// A generator with a prefix unique to this process and moment.
    pub fn new() -> Self {
        Self::with_prefix(unique_prefix())
    }

    /// A generator with a fixed prefix (for tests and for callers that keep
    /// their own uniqueness).
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        IdGen {
            prefix: prefix.into(),
            counter: AtomicU64::new(0),
        }
    }

    /// The next id.
    pub fn next_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}-{n}", self.prefix)
    }

    /// The prefix every id of this generator starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Default for IdGen {
    fn default() -> Self {
        Self::new()
    }
}

/// Base-36 of the wall clock in nanoseconds, the process id and a
/// process-wide counter (two clients made in the same nanosecond differ).
fn unique_prefix() -> String {
    static CLIENTS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let nth = CLIENTS.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}_{}_{}",
        base36(nanos),
        base36(u128::from(std::process::id())),
        base36(u128::from(nth))
    )
}

/// `n` in base 36 (digits then lower-case letters), shortest form: the
/// alphabet of ids made here, also used by `parley-bench` for its run ids.
pub fn base36(mut n: u128) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if n == 0 {
        return "0".to_string();
    }
    let mut out = Vec::new();
    while n > 0 {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_count_up_from_one() {
        let ids = IdGen::with_prefix("p");
        assert_eq!(ids.next_id(), "p-1");
        assert_eq!(ids.next_id(), "p-2");
        assert_eq!(ids.prefix(), "p");
    }

    #[test]
    fn generators_do_not_collide() {
        let mut seen = HashSet::new();
        for _ in 0..100 {
            let ids = IdGen::new();
            assert!(seen.insert(ids.next_id()), "duplicate id");
        }
    }

    #[test]
    fn ids_are_unique_across_threads() {
        let ids = std::sync::Arc::new(IdGen::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let ids = ids.clone();
                std::thread::spawn(move || (0..1000).map(|_| ids.next_id()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(all.insert(id));
            }
        }
        assert_eq!(all.len(), 4000);
    }

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}
