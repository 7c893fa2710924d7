//! Counters behind `GET /metrics` (Prometheus text format). Plain atomics: the hot media path
//! is in the workers, which report their own counters to front in `Stats` messages; front
//! adds the totals of the workers that have exited, so every `_total` only ever grows.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::wire::stats::{DELAY_BUCKETS_US, DelayHistogram, LATENCY_BUCKETS_MS, WorkerStats};

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

impl Metrics {
    /// The text for `/metrics`: `running` are the running workers' last reports, `retired`
    /// the summed counters of every worker that has exited, `front_replayed` the bites front
    /// replayed from dead workers' spools.
    pub fn render(
        &self,
        sessions: usize,
        running: &[WorkerStats],
        retired: &WorkerStats,
        front_replayed: u64,
    ) -> String {
        let mut all = retired.clone();
        for w in running {
            all.add_counters(w);
        }
        let mut o = String::new();
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        let total = |f: fn(&WorkerStats) -> u64| f(&all).to_string();
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
            running.len().to_string(),
        );
        line(
            "beep_peers",
            "gauge",
            "Peer connections in all workers.",
            running
                .iter()
                .map(|s| u64::from(s.peers))
                .sum::<u64>()
                .to_string(),
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
            "RTP packets received by workers.",
            total(|s| s.packets_in),
        );
        line(
            "beep_packets_forwarded_total",
            "counter",
            "RTP packets forwarded by workers.",
            total(|s| s.packets_forwarded),
        );
        line(
            "beep_bytes_forwarded_total",
            "counter",
            "RTP payload bytes forwarded by workers.",
            total(|s| s.bytes_forwarded),
        );
        let b = &all.bites;
        for (name, help, v) in [
            (
                "beep_bites_published_total",
                "Bites published live (both messages acked or flushed).",
                b.published,
            ),
            (
                "beep_bites_spooled_total",
                "Bites written to a spool because NATS did not take them at once.",
                b.spooled,
            ),
            (
                "beep_bites_replayed_total",
                "Spooled bites published later (by their worker or by front).",
                b.replayed + front_replayed,
            ),
            (
                "beep_bites_failed_total",
                "Bites lost (NATS down and spool full or failing) or set aside as unpublishable.",
                b.failed,
            ),
        ] {
            line(name, "counter", help, v.to_string());
        }
        let spool: (u64, u64) = running.iter().fold((0, 0), |(f, by), w| {
            (f + w.bites.spool_files, by + w.bites.spool_bytes)
        });
        line(
            "beep_spool_files",
            "gauge",
            "Bites waiting in the running workers' spools.",
            spool.0.to_string(),
        );
        line(
            "beep_spool_bytes",
            "gauge",
            "Bytes in the running workers' spools.",
            spool.1.to_string(),
        );
        let name = "beep_bite_publish_latency_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} Time to publish a bite's two messages until acked or flushed.\n# TYPE {name} histogram"
        );
        for (i, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
            let _ = writeln!(
                o,
                "{name}_bucket{{le=\"{}\"}} {}",
                *bound as f64 / 1e3,
                b.latency_buckets.get(i).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            o,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {:.6}\n{name}_count {}",
            b.latency_count, b.latency_seconds_sum, b.latency_count
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
        let delay: &DelayHistogram = &all.forward_delay;
        let name = "beep_forward_delay_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} Time a forwarded packet spent in its worker (datagram read to sent).\n# TYPE {name} histogram"
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
