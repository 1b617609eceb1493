//! Open-loop pacing: when each message of a stream is due.
//!
//! A stream sends at a fixed rate from a common start, whatever the broker
//! does; a late send is still timed from its due moment, so a stalled broker
//! shows up as latency instead of hiding as a lower offered rate
//! (no coordinated omission). Streams are phase-shifted so that N streams
//! at r/N each add up to an even rate r, not to N-message bursts.

/// The schedule of one stream, in microseconds since the bench's start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacer {
    start_us: u64,
    interval_us: f64,
    phase_us: f64,
    count: u64,
}

impl Pacer {
    /// Stream `index` of `streams` sharing `total_rate` messages per second,
    /// for `duration_us` from `start_us`.
    pub fn new(
        total_rate: f64,
        streams: usize,
        index: usize,
        start_us: u64,
        duration_us: u64,
    ) -> Self {
        let streams = streams.max(1) as f64;
        let rate = (total_rate / streams).max(f64::MIN_POSITIVE);
        let interval_us = 1e6 / rate;
        let phase_us = interval_us * (index as f64 / streams);
        let count = if phase_us >= duration_us as f64 {
            0
        } else {
            ((duration_us as f64 - phase_us) / interval_us).ceil() as u64
        };
        Pacer {
            start_us,
            interval_us,
            phase_us,
            count,
        }
    }

    /// How many messages the stream sends in all.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// When message `k` (0-based) is due, or `None` past the end.
    pub fn due_us(&self, k: u64) -> Option<u64> {
        (k < self.count)
            .then(|| self.start_us + (self.phase_us + k as f64 * self.interval_us) as u64)
    }
}

/// How many messages `streams` streams send in all.
pub fn total_count(total_rate: f64, streams: usize, duration_us: u64) -> u64 {
    (0..streams)
        .map(|i| Pacer::new(total_rate, streams, i, 0, duration_us).count())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_stream_is_evenly_spaced_and_bounded() {
        let p = Pacer::new(1000.0, 1, 0, 500, 1_000_000);
        assert_eq!(p.count(), 1000);
        assert_eq!(p.due_us(0), Some(500));
        assert_eq!(p.due_us(1), Some(1500));
        assert_eq!(p.due_us(999), Some(999_500));
        assert_eq!(p.due_us(1000), None);
    }

    #[test]
    fn streams_add_up_to_the_total_rate() {
        assert_eq!(total_count(23_000.0, 100, 10_000_000), 230_000);
        assert_eq!(total_count(1000.0, 3, 1_000_000), 1000);
        // Slow streams: fewer messages than streams in the window.
        assert_eq!(total_count(10.0, 100, 1_000_000), 10);
    }

    #[test]
    fn streams_are_phase_shifted() {
        let a = Pacer::new(200.0, 2, 0, 0, 1_000_000);
        let b = Pacer::new(200.0, 2, 1, 0, 1_000_000);
        assert_eq!(a.due_us(0), Some(0));
        assert_eq!(b.due_us(0), Some(5_000));
        assert_eq!(a.due_us(1), Some(10_000));
        let mut all: Vec<u64> = (0..a.count())
            .filter_map(|k| a.due_us(k))
            .chain((0..b.count()).filter_map(|k| b.due_us(k)))
            .collect();
        all.sort_unstable();
        assert!(all.windows(2).all(|w| w[1] - w[0] == 5_000));
    }

    #[test]
    fn zero_duration_sends_nothing() {
        assert_eq!(Pacer::new(100.0, 1, 0, 0, 0).count(), 0);
        assert_eq!(Pacer::new(100.0, 1, 0, 0, 0).due_us(0), None);
    }
}
