//! The counters a worker reports to front in `Stats` every few seconds, and the one
//! measurement it takes per packet: [`DelayHistogram`], how long each forwarded packet spent
//! in the worker (its datagram read → its copy sent to a listener). A leaf, so the IPC types,
//! the worker that fills them and front's metrics can all use it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A worker's counters since it started (front keeps the totals of exited workers, so the
/// `_total` metrics never go backwards).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Peer connections now (a gauge, not a counter).
    pub peers: u32,
    pub packets_in: u64,
    pub packets_forwarded: u64,
    pub bytes_forwarded: u64,
    pub forward_delay: DelayHistogram,
}

impl WorkerStats {
    /// Adds `other`'s counters (not its gauge) to these.
    pub fn add_counters(&mut self, other: &WorkerStats) {
        self.packets_in += other.packets_in;
        self.packets_forwarded += other.packets_forwarded;
        self.bytes_forwarded += other.bytes_forwarded;
        self.forward_delay.add(&other.forward_delay);
    }
}

/// Upper bounds (µs) of the forwarding-delay buckets; one more bucket counts the rest.
pub const DELAY_BUCKETS_US: [u64; 19] = [
    25, 50, 100, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 4_000, 5_000, 6_000, 7_500,
    10_000, 15_000, 20_000, 50_000,
];

/// Counts of forwarding delays per bucket of [`DELAY_BUCKETS_US`] (not cumulative; the last
/// entry is everything above the last bound), and their sum.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DelayHistogram {
    pub counts: Vec<u64>,
    pub sum_us: u64,
}

impl DelayHistogram {
    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        if self.counts.is_empty() {
            self.counts = vec![0; DELAY_BUCKETS_US.len() + 1];
        }
        let i = DELAY_BUCKETS_US.partition_point(|&b| b < us);
        self.counts[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn add(&mut self, other: &DelayHistogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The bucket bound (µs) at or below which a fraction `q` of the delays fell; `None` when
    /// empty or beyond the last bound.
    pub fn quantile_bound(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let want = (q * n as f64).ceil() as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return DELAY_BUCKETS_US.get(i).copied();
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_histogram_buckets_and_quantiles() {
        let mut h = DelayHistogram::default();
        assert_eq!(h.quantile_bound(0.5), None);
        for us in [10, 30, 30, 400, 400, 400, 400, 400, 900, 60_000] {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.count(), 10);
        assert_eq!(h.counts[0], 1); // ≤ 25
        assert_eq!(h.counts[1], 2); // ≤ 50
        assert_eq!(h.counts[5], 5); // ≤ 500
        assert_eq!(h.counts[DELAY_BUCKETS_US.len()], 1); // beyond 50 ms
        assert_eq!(h.quantile_bound(0.5), Some(500));
        assert_eq!(h.quantile_bound(0.9), Some(1_000));
        assert_eq!(h.quantile_bound(0.95), None); // the 60 ms one
        h.record(Duration::from_micros(5_500));
        assert_eq!(
            h.counts[DELAY_BUCKETS_US.partition_point(|&b| b < 6_000)],
            1
        );
        assert_eq!(h.quantile_bound(1.0), None);
        let mut total = DelayHistogram::default();
        total.add(&h);
        total.add(&h);
        assert_eq!(total.count(), 22);
        assert_eq!(total.sum_us, 2 * h.sum_us);
    }
}
