//! The publisher's counters: atomics shared by the publishing task and every handle, read
//! out as the [`BiteStats`] a worker reports to front.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

pub use crate::wire::stats::{BiteStats, LATENCY_BUCKETS_MS};

/// Counters shared by the task and every handle (Prometheus counters and gauges).
#[derive(Debug, Default)]
pub(super) struct Metrics {
    pub(super) published: AtomicU64,
    pub(super) spooled: AtomicU64,
    pub(super) replayed: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) overflowed: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) moved_aside: AtomicU64,
    pub(super) spool_bytes: AtomicU64,
    pub(super) spool_files: AtomicU64,
    latency_us_sum: AtomicU64,
    latency_count: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
}

impl Metrics {
    pub(super) fn observe_latency(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.latency_us_sum.fetch_add(us, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
        let ms = us.div_ceil(1000);
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|&le| ms <= le)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency_buckets[i].fetch_add(1, Relaxed);
    }

    pub(super) fn snapshot(&self) -> BiteStats {
        let mut cumulative = 0;
        let latency_buckets = self
            .latency_buckets
            .iter()
            .map(|b| {
                cumulative += b.load(Relaxed);
                cumulative
            })
            .collect();
        BiteStats {
            published: self.published.load(Relaxed),
            spooled: self.spooled.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            overflowed: self.overflowed.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            moved_aside: self.moved_aside.load(Relaxed),
            spool_bytes: self.spool_bytes.load(Relaxed),
            spool_files: self.spool_files.load(Relaxed),
            latency_seconds_sum: self.latency_us_sum.load(Relaxed) as f64 / 1e6,
            latency_count: self.latency_count.load(Relaxed),
            latency_buckets,
        }
    }
}
