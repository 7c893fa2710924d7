//! How late the load clients' send ticks ran. A speaker sends one probe every 20 ms; when the
//! machine is busy (a CPU hog on the clients' core, or simply too many clients for one core)
//! the ticks fire late and the SFU is offered less than the nominal load, which would read as
//! the SFU's loss if nothing measured it. Both clients (full and light) record every tick's
//! lateness here, so a report can say whether the clients kept up.
//!
//! Lock-free counters (a tick happens thousands of times a second) in fixed buckets, read as
//! cumulative snapshots: the difference of two snapshots is a measurement window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Upper bounds of the lateness buckets, in µs; one more bucket holds the rest.
pub const TICK_BUCKETS_US: [u64; 10] = [
    100, 250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
];

/// Lateness of send ticks, shared by every client of one run.
#[derive(Debug, Default)]
pub struct SendTicks {
    ticks: AtomicU64,
    late_sum_us: AtomicU64,
    buckets: [AtomicU64; TICK_BUCKETS_US.len() + 1],
}

impl SendTicks {
    /// One tick that was due `late` ago when it ran.
    pub fn record(&self, late: Duration) {
        let us = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        self.ticks.fetch_add(1, Ordering::Relaxed);
        self.late_sum_us.fetch_add(us, Ordering::Relaxed);
        let i = TICK_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(TICK_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters so far.
    pub fn snapshot(&self) -> TickSnapshot {
        TickSnapshot {
            ticks: self.ticks.load(Ordering::Relaxed),
            late_sum_us: self.late_sum_us.load(Ordering::Relaxed),
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// Cumulative tick counters at one moment.
#[derive(Clone, Debug, Default)]
pub struct TickSnapshot {
    pub ticks: u64,
    pub late_sum_us: u64,
    pub buckets: Vec<u64>,
}

/// Send ticks of a window, as the report gives them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TickLateness {
    /// Packets the speakers sent in the window.
    pub ticks: u64,
    /// Per second (50 × speakers when the clients keep up).
    pub ticks_per_s: f64,
    pub mean_ms: f64,
    /// Bucket bounds: the tick that far up ran at most this late (None: over 100 ms).
    pub p50_le_ms: Option<f64>,
    pub p99_le_ms: Option<f64>,
    pub p999_le_ms: Option<f64>,
    /// Ticks that ran more than 5 ms / more than 20 ms (a whole packet interval) late.
    pub over_5ms: u64,
    pub over_20ms: u64,
}

impl TickSnapshot {
    /// The window from `earlier` to `self`, `window_s` long.
    pub fn since(&self, earlier: &TickSnapshot, window_s: f64) -> TickLateness {
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| b.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
            .collect();
        let ticks = self.ticks.saturating_sub(earlier.ticks);
        let quantile = |q: f64| -> Option<f64> {
            if ticks == 0 {
                return Some(0.0);
            }
            let want = ((ticks as f64) * q).ceil() as u64;
            let mut seen = 0;
            for (i, n) in buckets.iter().enumerate() {
                seen += n;
                if seen >= want {
                    return TICK_BUCKETS_US.get(i).map(|us| *us as f64 / 1e3);
                }
            }
            None
        };
        let over = |bound_us: u64| -> u64 {
            TICK_BUCKETS_US
                .iter()
                .zip(&buckets)
                .filter(|(b, _)| **b > bound_us)
                .map(|(_, n)| n)
                .sum::<u64>()
                + buckets.get(TICK_BUCKETS_US.len()).copied().unwrap_or(0)
        };
        TickLateness {
            ticks,
            ticks_per_s: if window_s > 0.0 {
                ticks as f64 / window_s
            } else {
                0.0
            },
            mean_ms: if ticks > 0 {
                self.late_sum_us.saturating_sub(earlier.late_sum_us) as f64 / ticks as f64 / 1e3
            } else {
                0.0
            },
            p50_le_ms: quantile(0.5),
            p99_le_ms: quantile(0.99),
            p999_le_ms: quantile(0.999),
            over_5ms: over(5_000),
            over_20ms: over(20_000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_only_its_own_ticks() {
        let t = SendTicks::default();
        t.record(Duration::from_millis(30));
        let before = t.snapshot();
        for _ in 0..98 {
            t.record(Duration::from_micros(50));
        }
        t.record(Duration::from_millis(7));
        t.record(Duration::from_millis(200));
        let w = t.snapshot().since(&before, 2.0);
        assert_eq!(w.ticks, 100);
        assert_eq!(w.ticks_per_s, 50.0);
        assert_eq!(w.p50_le_ms, Some(0.1));
        assert_eq!(w.p99_le_ms, Some(10.0));
        assert_eq!(
            w.p999_le_ms, None,
            "the 200 ms tick is beyond the last bound"
        );
        assert_eq!((w.over_5ms, w.over_20ms), (2, 1));
    }
}
