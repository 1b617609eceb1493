//! Live counters and latency histograms shared by every task of a run, and
//! the once-a-second progress line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency the histograms hold: one hour, in microseconds.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// The percentiles every [`LatencySummary`] lists, for percentile plots.
pub const PERCENTILES: [f64; 11] = [
    0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
];

/// Counters and histograms of one run. Times are microseconds since `start`.
#[derive(Debug)]
pub struct Stats {
    start: Instant,
    /// Messages handed to the client (requests or publishes).
    pub sent: AtomicU64,
    /// Messages the broker acknowledged (chat `Ack` or MQTT PUBACK).
    pub accepted: AtomicU64,
    /// Acks with `duplicate = true` (counted in `accepted` too).
    pub duplicates: AtomicU64,
    /// Bench messages received by a user other than their sender.
    pub delivered: AtomicU64,
    /// Copies of its own messages received by the sender (the contract puts
    /// every message in the sender's inbox too).
    pub echoes: AtomicU64,
    /// Failed sends, refused requests, lost connections.
    pub errors: AtomicU64,
    last_ack_us: AtomicU64,
    last_delivery_us: AtomicU64,
    error_kinds: Mutex<BTreeMap<String, u64>>,
    ack_us: Mutex<Histogram<u64>>,
    delivery_us: Mutex<Histogram<u64>>,
    connect_us: Mutex<Histogram<u64>>,
}

/// A consistent-enough reading of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// See [`Stats::sent`].
    pub sent: u64,
    /// See [`Stats::accepted`].
    pub accepted: u64,
    /// See [`Stats::delivered`].
    pub delivered: u64,
    /// See [`Stats::errors`].
    pub errors: u64,
}

/// One point of a latency distribution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Percentile {
    /// The percentile, 0 to 100 (e.g. 99.9).
    pub percentile: f64,
    /// The latency at that percentile, milliseconds.
    pub ms: f64,
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// The latency at each of [`PERCENTILES`] (empty in older reports).
    #[serde(default)]
    pub percentiles: Vec<Percentile>,
}

fn histogram() -> Mutex<Histogram<u64>> {
    // Bounds and precision are constants that hdrhistogram accepts.
    Mutex::new(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds"))
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Stats {
    /// Empty statistics; the clock starts now.
    pub fn new() -> Self {
        Stats {
            start: Instant::now(),
            sent: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            echoes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_ack_us: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
            error_kinds: Mutex::new(BTreeMap::new()),
            ack_us: histogram(),
            delivery_us: histogram(),
            connect_us: histogram(),
        }
    }

    /// Microseconds since the start of the run.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// The instant that is `us` microseconds after the start.
    pub fn instant_at(&self, us: u64) -> Instant {
        self.start + Duration::from_micros(us)
    }

    /// An ack for a message due at `due_us`.
    pub fn record_ack(&self, due_us: u64, duplicate: bool) {
        let now = self.now_us();
        self.accepted.fetch_add(1, Ordering::Relaxed);
        if duplicate {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        self.last_ack_us.fetch_max(now, Ordering::Relaxed);
        locked(&self.ack_us).saturating_record(now.saturating_sub(due_us).max(1));
    }

    /// A delivery to a recipient of a message due at `due_us`.
    pub fn record_delivery(&self, due_us: u64) {
        let now = self.now_us();
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.last_delivery_us.fetch_max(now, Ordering::Relaxed);
        locked(&self.delivery_us).saturating_record(now.saturating_sub(due_us).max(1));
    }

    /// A message received back by its own sender.
    pub fn record_echo(&self) {
        self.echoes.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection established after `took`.
    pub fn record_connect(&self, took: Duration) {
        locked(&self.connect_us).saturating_record((took.as_micros() as u64).max(1));
    }

    /// An error of some kind (a short stable name: `timeout`, `server:NOT_MEMBER`, ...).
    pub fn record_error(&self, kind: &str) {
        self.record_errors(kind, 1);
    }

    /// `n` errors of one kind at once.
    pub fn record_errors(&self, kind: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.errors.fetch_add(n, Ordering::Relaxed);
        *locked(&self.error_kinds)
            .entry(kind.to_string())
            .or_default() += n;
    }

    /// The counters now.
    pub fn counts(&self) -> Counts {
        Counts {
            sent: self.sent.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    /// Errors by kind.
    pub fn error_kinds(&self) -> BTreeMap<String, u64> {
        locked(&self.error_kinds).clone()
    }

    /// Microseconds from the start to the last ack and to the last delivery.
    pub fn last_ack_and_delivery_us(&self) -> (u64, u64) {
        (
            self.last_ack_us.load(Ordering::Relaxed),
            self.last_delivery_us.load(Ordering::Relaxed),
        )
    }

    /// Send -> ack latency.
    pub fn ack_latency(&self) -> LatencySummary {
        summarize(&locked(&self.ack_us))
    }

    /// Send -> delivery latency.
    pub fn delivery_latency(&self) -> LatencySummary {
        summarize(&locked(&self.delivery_us))
    }

    /// Time to connect (CONNACK and SUBACK).
    pub fn connect_latency(&self) -> LatencySummary {
        summarize(&locked(&self.connect_us))
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of a histogram of microseconds, in milliseconds.
pub fn summarize(h: &Histogram<u64>) -> LatencySummary {
    if h.is_empty() {
        return LatencySummary::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    LatencySummary {
        count: h.len(),
        mean_ms: h.mean() / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.50)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        percentiles: PERCENTILES
            .iter()
            .map(|&percentile| Percentile {
                percentile,
                ms: ms(h.value_at_quantile(quantile(percentile))),
            })
            .collect(),
    }
}

/// The quantile of a percentile, rounded to a millionth so that 99.9 asks
/// for exactly the quantile 0.999 (99.9 / 100 is 0.9990000000000001, which
/// hdrhistogram rounds up to the next sample).
fn quantile(percentile: f64) -> f64 {
    (percentile * 10_000.0).round() / 1_000_000.0
}

/// The progress line: totals and the rates over the last interval.
pub fn progress_line(elapsed: Duration, prev: Counts, now: Counts, interval: Duration) -> String {
    let secs = interval.as_secs_f64().max(1e-9);
    let rate = |a: u64, b: u64| (b.saturating_sub(a) as f64 / secs).round() as u64;
    format!(
        "[{:>6.1}s] sent {} ({}/s) accepted {} ({}/s) delivered {} ({}/s) errors {}",
        elapsed.as_secs_f64(),
        now.sent,
        rate(prev.sent, now.sent),
        now.accepted,
        rate(prev.accepted, now.accepted),
        now.delivered,
        rate(prev.delivered, now.delivered),
        now.errors,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_summarizes() {
        let stats = Stats::new();
        stats.record_ack(0, false);
        stats.record_ack(0, true);
        stats.record_delivery(0);
        stats.record_echo();
        stats.record_error("timeout");
        stats.record_error("timeout");
        stats.record_error("server:NOT_MEMBER");
        let c = stats.counts();
        assert_eq!((c.accepted, c.delivered, c.errors), (2, 1, 3));
        assert_eq!(stats.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(stats.error_kinds()["timeout"], 2);
        assert_eq!(stats.ack_latency().count, 2);
        assert_eq!(stats.delivery_latency().count, 1);
        assert_eq!(stats.connect_latency(), LatencySummary::default());
    }

    #[test]
    fn percentiles_in_milliseconds() {
        let mut h = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap(); // 1 ms .. 1000 ms
        }
        let s = summarize(&h);
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_ms - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.p999_ms - 999.0).abs() < 1.0, "{s:?}");
        assert!((s.max_ms - 1000.0).abs() < 1.0, "{s:?}");
        let listed: Vec<f64> = s.percentiles.iter().map(|p| p.percentile).collect();
        assert_eq!(listed, PERCENTILES);
        let at = |q: f64| s.percentiles.iter().find(|p| p.percentile == q).unwrap().ms;
        assert!((at(0.0) - 1.0).abs() < 0.01, "{s:?}");
        assert!((at(90.0) - 900.0).abs() < 1.0, "{s:?}");
        assert!((at(99.9) - s.p999_ms).abs() < 1e-9, "{s:?}");
        assert!((at(100.0) - s.max_ms).abs() < 1.0, "{s:?}");
        assert!(s.percentiles.windows(2).all(|w| w[0].ms <= w[1].ms));
        assert_eq!(quantile(99.9), 0.999);
        assert_eq!(quantile(99.95), 0.9995);
        assert_eq!(quantile(50.0), 0.5);
    }

    #[test]
    fn older_json_without_percentiles_still_loads() {
        let s: LatencySummary = serde_json::from_str(r#"{"count": 3, "p99_ms": 2.5}"#).unwrap();
        assert_eq!(s.count, 3);
        assert_eq!(s.p99_ms, 2.5);
        assert!(s.percentiles.is_empty());
    }

    #[test]
    fn progress_line_shows_interval_rates() {
        let prev = Counts {
            sent: 1000,
            accepted: 900,
            delivered: 800,
            errors: 0,
        };
        let now = Counts {
            sent: 3000,
            accepted: 2900,
            delivered: 2800,
            errors: 2,
        };
        let line = progress_line(Duration::from_secs(2), prev, now, Duration::from_secs(1));
        assert_eq!(
            line,
            "[   2.0s] sent 3000 (2000/s) accepted 2900 (2000/s) delivered 2800 (2000/s) errors 2"
        );
    }
}
