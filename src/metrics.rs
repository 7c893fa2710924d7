//! Counters behind `GET /metrics` (Prometheus text format). Plain atomics: the hot media path
//! is in the workers, which report their own counters to front in `Stats` messages.
//!
//! [`DelayHistogram`] is the one measurement the workers take per packet: how long each
//! forwarded packet spent in the worker (its datagram read → its copy sent to a listener).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::front::WorkerInfo;
use crate::ipc::WorkerStats;

#[derive(Default)]
pub struct Metrics {
    pub offers: AtomicU64,
    pub workers_spawned: AtomicU64,
    pub worker_failures: AtomicU64,
    pub permission_latency: Latency,
    pub join_latency: Latency,
}

/// A latency summary: count and sum (Prometheus `_count`/`_sum`), enough for rates and means.
#[derive(Default)]
pub struct Latency {
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Latency {
    pub fn observe(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Upper bounds (µs) of the forwarding-delay buckets; one more bucket counts the rest.
pub const DELAY_BUCKETS_US: [u64; 19] = [
    25, 50, 100, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 4_000, 5_000, 6_000, 7_500,
    10_000, 15_000, 20_000, 50_000,
];

/// Counts of forwarding delays per bucket of [`DELAY_BUCKETS_US`] (not cumulative; the last
/// entry is everything above the last bound), and their sum.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
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

impl Metrics {
    pub fn render(&self, sessions: usize, workers: &[WorkerInfo]) -> String {
        let mut o = String::new();
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        // A counter summed over the running workers' last reports.
        let total = |f: fn(&WorkerStats) -> u64| {
            workers.iter().map(|w| f(&w.stats)).sum::<u64>().to_string()
        };
        line(
            "beep_sessions",
            "gauge",
            "Clients with a signalling socket or a live peer connection.",
            sessions.to_string(),
        );
        line(
            "beep_workers",
            "gauge",
            "Running conversation workers.",
            workers.len().to_string(),
        );
        line(
            "beep_peers",
            "gauge",
            "Peer connections in all workers.",
            total(|s| u64::from(s.peers)),
        );
        line(
            "beep_offers_total",
            "counter",
            "Offers dispatched to workers.",
            get(&self.offers),
        );
        line(
            "beep_workers_spawned_total",
            "counter",
            "Worker processes started.",
            get(&self.workers_spawned),
        );
        line(
            "beep_worker_failures_total",
            "counter",
            "Workers that exited while they had members.",
            get(&self.worker_failures),
        );
        line(
            "beep_packets_received_total",
            "counter",
            "RTP packets received by running workers.",
            total(|s| s.packets_in),
        );
        line(
            "beep_packets_forwarded_total",
            "counter",
            "RTP packets forwarded by running workers.",
            total(|s| s.packets_forwarded),
        );
        line(
            "beep_bytes_forwarded_total",
            "counter",
            "RTP payload bytes forwarded by running workers.",
            total(|s| s.bytes_forwarded),
        );
        for (name, l) in [
            ("beep_permission_latency_seconds", &self.permission_latency),
            ("beep_join_latency_seconds", &self.join_latency),
        ] {
            let _ = writeln!(
                o,
                "# TYPE {name} summary\n{name}_count {}\n{name}_sum {:.6}",
                l.count.load(Ordering::Relaxed),
                l.sum_us.load(Ordering::Relaxed) as f64 / 1e6
            );
        }
        let mut delay = DelayHistogram::default();
        for w in workers {
            delay.add(&w.stats.forward_delay);
        }
        let name = "beep_forward_delay_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} Time a forwarded packet spent in its worker (datagram read to sent), running workers.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (i, bound) in DELAY_BUCKETS_US.iter().enumerate() {
            cumulative += delay.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        let _ = writeln!(
            o,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {:.6}\n{name}_count {}",
            delay.count(),
            delay.sum_us as f64 / 1e6,
            delay.count()
        );
        o
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
