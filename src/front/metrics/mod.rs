//! `GET /metrics`, encoded by `prometheus-client` in the Prometheus text format (0.0.4).
//!
//! Two kinds of metrics:
//! - front's own events, counted as they happen: [`Metrics`]' counters and latency histograms;
//! - everything the workers report in their `Stats` (packets, bytes, forwarding delay, bites,
//!   spool) and front's gauges (sessions, workers by state), computed at scrape time from a
//!   [`Snapshot`] by a [`Collector`]. Front keeps the summed counters of the workers that have
//!   exited (`Snapshot::retired`), so every `_total` only ever grows.

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::wire::stats::{DELAY_BUCKETS_US, LATENCY_BUCKETS_MS, WorkerStats};

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (s) of the permission and join latency buckets: the permission request times
/// out after `PERMISSIONS_TIMEOUT_MS` (2 s by default), so 5 and 10 s catch a raised timeout.
const LATENCY_BUCKETS_S: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Front's own counters and histograms. Cloning a prometheus-client metric shares it, so each
/// scrape registers clones of these in a fresh [`Registry`] next to the snapshot's collector.
pub struct Metrics {
    /// Offers dispatched to workers.
    pub offers: Counter,
    /// Several hosts: offers relayed to the node that holds their conversation.
    pub relayed_offers: Counter,
    /// Several hosts: nodes this one saw die (liveness expired, or a relayed offer unheard).
    pub nodes_lost: Counter,
    /// Worker processes started.
    pub workers_spawned: Counter,
    /// Workers that exited while they had members.
    pub worker_failures: Counter,
    /// Crashed workers replaced by a fresh one.
    pub worker_restarts: Counter,
    /// Conversations marked unavailable after a crash loop.
    pub crash_loops: Counter,
    /// Workers killed because their `Stats` heartbeat stopped.
    pub heartbeat_kills: Counter,
    /// Offers a worker did not answer in time (the worker is then killed).
    pub offer_timeouts: Counter,
    /// Time the permissions service took to answer (whatever the verdict).
    pub permission_latency: Latency,
    /// `POST /join` (or `?conversation=`) from the request to the client being in the
    /// conversation, permission check included; only successful joins.
    pub join_latency: Latency,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            offers: Counter::default(),
            relayed_offers: Counter::default(),
            nodes_lost: Counter::default(),
            workers_spawned: Counter::default(),
            worker_failures: Counter::default(),
            worker_restarts: Counter::default(),
            crash_loops: Counter::default(),
            heartbeat_kills: Counter::default(),
            offer_timeouts: Counter::default(),
            permission_latency: Latency::new(),
            join_latency: Latency::new(),
        }
    }
}

/// A latency histogram in seconds ([`LATENCY_BUCKETS_S`]).
#[derive(Clone, Debug)]
pub struct Latency(Histogram);

impl Latency {
    fn new() -> Self {
        Latency(Histogram::new(LATENCY_BUCKETS_S))
    }

    pub fn observe(&self, d: Duration) {
        self.0.observe(d.as_secs_f64());
    }
}

/// What front knows of its workers at scrape time.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Clients with a signalling socket or a live peer connection.
    pub sessions: usize,
    /// The last report of every worker process that is alive.
    pub running: Vec<WorkerStats>,
    /// The summed counters of every worker that has exited.
    pub retired: WorkerStats,
    /// Bites front replayed from dead workers' spools.
    pub front_replayed: u64,
    /// Worker processes (or conversations) per state, rendered as `beep_workers{state=...}`
    /// in the order given: "starting", "running", "stopping", "unavailable", ...
    pub workers_by_state: Vec<(&'static str, u64)>,
}

impl Metrics {
    /// The text for `/metrics` ([`CONTENT_TYPE`]).
    pub fn render(&self, snap: &Snapshot) -> String {
        let mut registry = Registry::default();
        let counters = [
            ("beep_offers", "Offers dispatched to workers", &self.offers),
            (
                "beep_relayed_offers",
                "Offers relayed to the node that holds their conversation (several hosts)",
                &self.relayed_offers,
            ),
            (
                "beep_nodes_lost",
                "Nodes of the cluster this one saw die (several hosts)",
                &self.nodes_lost,
            ),
            (
                "beep_workers_spawned",
                "Worker processes started",
                &self.workers_spawned,
            ),
            (
                "beep_worker_failures",
                "Workers that exited while they had members",
                &self.worker_failures,
            ),
            (
                "beep_worker_restarts",
                "Crashed workers replaced by a fresh one",
                &self.worker_restarts,
            ),
            (
                "beep_crash_loops",
                "Conversations marked unavailable after a crash loop",
                &self.crash_loops,
            ),
            (
                "beep_heartbeat_kills",
                "Workers killed because their stats heartbeat stopped",
                &self.heartbeat_kills,
            ),
            (
                "beep_offer_timeouts",
                "Offers a worker did not answer in time",
                &self.offer_timeouts,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register_with_unit(
            "beep_permission_latency",
            "Time the permissions service took to answer",
            Unit::Seconds,
            self.permission_latency.0.clone(),
        );
        registry.register_with_unit(
            "beep_join_latency",
            "Join request to the client being in the conversation, permission check included",
            Unit::Seconds,
            self.join_latency.0.clone(),
        );
        registry.register_collector(Box::new(WorkersCollector::new(snap)));
        let mut out = String::new();
        // Writing to a String cannot fail, and every value is one we built.
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            .expect("encoding metrics into a String");
        out
    }
}

/// The workers' totals and front's gauges, owned (a collector is `'static`).
#[derive(Debug)]
struct WorkersCollector {
    sessions: u64,
    by_state: Vec<(&'static str, u64)>,
    peers: u64,
    spool_files: u64,
    spool_bytes: u64,
    /// Running plus retired counters.
    all: WorkerStats,
    front_replayed: u64,
}

impl WorkersCollector {
    fn new(snap: &Snapshot) -> Self {
        let mut all = snap.retired.clone();
        let (mut peers, mut spool_files, mut spool_bytes) = (0, 0, 0);
        for w in &snap.running {
            all.add_counters(w);
            peers += u64::from(w.peers);
            spool_files += w.bites.spool_files;
            spool_bytes += w.bites.spool_bytes;
        }
        WorkersCollector {
            sessions: snap.sessions as u64,
            by_state: snap.workers_by_state.clone(),
            peers,
            spool_files,
            spool_bytes,
            all,
            front_replayed: snap.front_replayed,
        }
    }

    /// `beep_forward_delay_seconds`: per-bucket (not cumulative) counts in µs bounds, and one
    /// more count above the last bound.
    fn forward_delay(&self) -> ConstHistogram {
        let d = &self.all.forward_delay;
        let count_at = |i: usize| d.counts.get(i).copied().unwrap_or(0);
        let buckets = DELAY_BUCKETS_US
            .iter()
            .map(|&us| us as f64 / 1e6)
            .chain([f64::INFINITY])
            .enumerate()
            .map(|(i, bound)| (bound, count_at(i)))
            .collect();
        ConstHistogram {
            sum: d.sum_us as f64 / 1e6,
            count: d.count(),
            buckets,
        }
    }

    /// `beep_quality_score`: the samples per score, in buckets of one score each.
    fn quality(&self) -> ConstHistogram {
        let q = self.all.quality_scores;
        let scored = || (1..=5u32).map(|s| (f64::from(s), q[s as usize - 1]));
        ConstHistogram {
            sum: scored().map(|(s, n)| s * n as f64).sum(),
            count: q.iter().sum(),
            buckets: scored().chain([(f64::INFINITY, 0)]).collect(),
        }
    }

    /// `beep_bite_publish_latency_seconds`: the workers report cumulative counts per
    /// [`LATENCY_BUCKETS_MS`] bound; the encoder wants them per bucket.
    fn bite_latency(&self) -> ConstHistogram {
        let b = &self.all.bites;
        let cumulative = |i: usize| b.latency_buckets.get(i).copied().unwrap_or(0);
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS_MS.len() + 1);
        let mut below = 0;
        for (i, &ms) in LATENCY_BUCKETS_MS.iter().enumerate() {
            let c = cumulative(i).max(below);
            buckets.push((ms as f64 / 1e3, c - below));
            below = c;
        }
        let count = b.latency_count.max(below);
        buckets.push((f64::INFINITY, count - below));
        ConstHistogram {
            sum: b.latency_seconds_sum,
            count,
            buckets,
        }
    }
}

impl Collector for WorkersCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_gauges(&mut encoder)?;
        self.encode_counters(&mut encoder)?;
        self.encode_histograms(&mut encoder)
    }
}

impl WorkersCollector {
    /// Sessions, peers, spools, and workers by state.
    fn encode_gauges(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauges = [
            (
                "beep_sessions",
                "Clients with a signalling socket or a live peer connection.",
                self.sessions,
            ),
            ("beep_peers", "Peer connections in all workers.", self.peers),
            (
                "beep_spool_files",
                "Bites waiting in the running workers' spools.",
                self.spool_files,
            ),
            (
                "beep_spool_bytes",
                "Bytes in the running workers' spools.",
                self.spool_bytes,
            ),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }

        let mut family = encoder.encode_descriptor(
            "beep_workers",
            "Worker processes by state.",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in &self.by_state {
            ConstGauge::new(*n).encode(family.encode_family(&[("state", *state)])?)?;
        }

        Ok(())
    }

    /// The workers' totals: packets, level checks, bites, and drops by reason.
    fn encode_counters(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all = &self.all;
        let b = &all.bites;
        // Names without `_total`: the encoder appends it to counters.
        let counters = [
            (
                "beep_packets_received",
                "RTP packets received by workers.",
                all.packets_in,
            ),
            (
                "beep_packets_forwarded",
                "RTP packets forwarded by workers.",
                all.packets_forwarded,
            ),
            (
                "beep_bytes_forwarded",
                "RTP payload bytes forwarded by workers.",
                all.bytes_forwarded,
            ),
            (
                "beep_level_decodes",
                "Received packets decoded to check the audio level they claim.",
                all.level_decodes,
            ),
            (
                "beep_level_claims_refused",
                "Received packets claiming a level louder than their audio (credited with the decoded level).",
                all.level_claims_refused,
            ),
            (
                "beep_listener_packets_lost",
                "Packets of slot streams the listeners' receiver reports counted lost.",
                all.listener_packets_lost,
            ),
            (
                "beep_red_recovered_packets",
                "Packets a speaker's uplink lost that its RED redundancy rebuilt.",
                all.red_recovered,
            ),
            (
                "beep_nack_retransmitted_packets",
                "Packets resent to listeners that asked for them (NACK).",
                all.nack_retransmitted,
            ),
            (
                "beep_bites_published",
                "Bites published live (both messages acked or flushed).",
                b.published,
            ),
            (
                "beep_bites_spooled",
                "Bites written to a spool because NATS did not take them at once.",
                b.spooled,
            ),
            (
                "beep_bites_replayed",
                "Spooled bites published later (by their worker or by front).",
                b.replayed + self.front_replayed,
            ),
            (
                "beep_bites_failed",
                "Bites lost (NATS down and spool full or failing) or set aside as unpublishable.",
                b.failed,
            ),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let mut family = encoder.encode_descriptor(
            "beep_packets_dropped",
            "Packets workers dropped on purpose, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in all.dropped.by_reason() {
            ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
        }

        Ok(())
    }

    /// Forwarding delay and bite publishing latency.
    fn encode_histograms(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let histograms = [
            (
                "beep_forward_delay",
                "Time a forwarded packet spent in its worker (datagram read to sent).",
                self.forward_delay(),
            ),
            (
                "beep_bite_publish_latency",
                "Time to publish a bite's two messages until acked or flushed.",
                self.bite_latency(),
            ),
            (
                "beep_quality_score",
                "Members' call quality, 1 (bad) to 5, sampled every 2 s per member.",
                self.quality(),
            ),
        ];
        for (name, help, h) in histograms {
            // Times are in seconds; a score has no unit.
            let unit = (!name.ends_with("score")).then_some(&Unit::Seconds);
            h.encode(encoder.encode_descriptor(name, help, unit, h.metric_type())?)?;
        }
        Ok(())
    }
}

/// A histogram computed elsewhere (the workers' reports): the crate has constant counters and
/// gauges, not histograms. `buckets` are (upper bound, count in that bucket alone), the last
/// bound `+Inf`.
#[derive(Debug)]
struct ConstHistogram {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests;
