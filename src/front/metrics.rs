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
mod tests {
    use super::*;
    use crate::wire::stats::{BiteStats, DelayHistogram};

    fn worker(peers: u32, packets: u64, delays_us: &[u64]) -> WorkerStats {
        let mut forward_delay = DelayHistogram::default();
        for &us in delays_us {
            forward_delay.record(Duration::from_micros(us));
        }
        // Cumulative per LATENCY_BUCKETS_MS bound, then +Inf: two bites at ≤ 5 ms, one at
        // ≤ 100 ms.
        let latency_buckets = vec![0, 0, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3];
        WorkerStats {
            peers,
            packets_in: packets,
            packets_forwarded: 2 * packets,
            bytes_forwarded: 100 * packets,
            forward_delay,
            bites: BiteStats {
                published: 3,
                spooled: 1,
                replayed: 1,
                failed: 0,
                spool_files: 1,
                spool_bytes: 2048,
                latency_seconds_sum: 0.09,
                latency_count: 3,
                latency_buckets,
                ..BiteStats::default()
            },
            dropped: crate::wire::stats::DropStats {
                member_rate: packets / 10,
                unselected_address: 1,
                socket_receive_buffer: 3,
                ..Default::default()
            },
            level_decodes: packets / 20,
            level_claims_refused: 2,
            quality_scores: [0, 0, 1, 2, 3],
            listener_packets_lost: 5,
        }
    }

    /// `(name, value)` samples, labels kept in the name.
    type Samples = Vec<(String, f64)>;
    /// `(family, kind)` of each `# TYPE` line.
    type Types = Vec<(String, String)>;

    /// The samples and the TYPE of each family.
    fn parse(text: &str) -> (Samples, Types) {
        let mut samples = Vec::new();
        let mut types = Vec::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').expect("TYPE name kind");
                types.push((name.to_string(), kind.to_string()));
            } else if !line.starts_with('#') && !line.is_empty() {
                let (name, v) = line.rsplit_once(' ').expect("name value");
                let v = match v {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap_or_else(|_| panic!("value of {line}")),
                };
                samples.push((name.to_string(), v));
            }
        }
        (samples, types)
    }

    fn value(text: &str, name: &str) -> f64 {
        parse(text)
            .0
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .1
    }

    fn snapshot(running: Vec<WorkerStats>, retired: WorkerStats) -> Snapshot {
        Snapshot {
            sessions: 4,
            workers_by_state: vec![("running", running.len() as u64), ("unavailable", 1)],
            running,
            retired,
            front_replayed: 2,
        }
    }

    #[test]
    fn every_metric_has_help_type_and_its_name() {
        let m = Metrics::default();
        m.offers.inc();
        m.offers.inc();
        m.worker_failures.inc();
        m.crash_loops.inc();
        m.permission_latency.observe(Duration::from_millis(3));
        m.join_latency.observe(Duration::from_millis(40));
        let text = m.render(&snapshot(
            vec![worker(2, 100, &[30, 400]), worker(3, 50, &[60_000])],
            WorkerStats::default(),
        ));
        let (_, types) = parse(&text);
        let expected = [
            ("beep_sessions", "gauge"),
            ("beep_workers", "gauge"),
            ("beep_peers", "gauge"),
            ("beep_offers_total", "counter"),
            ("beep_relayed_offers_total", "counter"),
            ("beep_nodes_lost_total", "counter"),
            ("beep_workers_spawned_total", "counter"),
            ("beep_worker_failures_total", "counter"),
            ("beep_worker_restarts_total", "counter"),
            ("beep_crash_loops_total", "counter"),
            ("beep_heartbeat_kills_total", "counter"),
            ("beep_offer_timeouts_total", "counter"),
            ("beep_packets_received_total", "counter"),
            ("beep_packets_forwarded_total", "counter"),
            ("beep_bytes_forwarded_total", "counter"),
            ("beep_level_decodes_total", "counter"),
            ("beep_level_claims_refused_total", "counter"),
            ("beep_forward_delay_seconds", "histogram"),
            ("beep_listener_packets_lost_total", "counter"),
            ("beep_quality_score", "histogram"),
            ("beep_bites_published_total", "counter"),
            ("beep_bites_spooled_total", "counter"),
            ("beep_bites_replayed_total", "counter"),
            ("beep_bites_failed_total", "counter"),
            ("beep_packets_dropped_total", "counter"),
            ("beep_spool_files", "gauge"),
            ("beep_spool_bytes", "gauge"),
            ("beep_bite_publish_latency_seconds", "histogram"),
            ("beep_permission_latency_seconds", "histogram"),
            ("beep_join_latency_seconds", "histogram"),
        ];
        for (name, kind) in expected {
            assert!(
                types.contains(&(name.to_string(), kind.to_string())),
                "no `# TYPE {name} {kind}` in\n{text}"
            );
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no HELP for {name}"
            );
        }
        assert_eq!(
            types.len(),
            expected.len(),
            "unexpected families in\n{text}"
        );

        assert_eq!(value(&text, "beep_sessions"), 4.0);
        assert_eq!(value(&text, "beep_peers"), 5.0);
        assert_eq!(value(&text, r#"beep_workers{state="running"}"#), 2.0);
        assert_eq!(value(&text, r#"beep_workers{state="unavailable"}"#), 1.0);
        assert_eq!(value(&text, "beep_offers_total"), 2.0);
        assert_eq!(value(&text, "beep_worker_failures_total"), 1.0);
        assert_eq!(value(&text, "beep_crash_loops_total"), 1.0);
        assert_eq!(value(&text, "beep_heartbeat_kills_total"), 0.0);
        assert_eq!(value(&text, "beep_packets_received_total"), 150.0);
        assert_eq!(value(&text, "beep_packets_forwarded_total"), 300.0);
        assert_eq!(value(&text, "beep_bytes_forwarded_total"), 15_000.0);
        assert_eq!(value(&text, "beep_level_decodes_total"), 7.0); // 100 / 20 + 50 / 20
        assert_eq!(value(&text, "beep_level_claims_refused_total"), 4.0);
        assert_eq!(value(&text, "beep_bites_published_total"), 6.0);
        assert_eq!(value(&text, "beep_bites_replayed_total"), 4.0); // 1 + 1 + front's 2
        assert_eq!(value(&text, "beep_spool_files"), 2.0);
        assert_eq!(value(&text, "beep_spool_bytes"), 4096.0);
        let dropped = |reason: &str| {
            value(
                &text,
                &format!(r#"beep_packets_dropped_total{{reason="{reason}"}}"#),
            )
        };
        assert_eq!(dropped("member-rate"), 15.0);
        assert_eq!(dropped("unselected-address"), 2.0);
        assert_eq!(dropped("socket-receive-buffer"), 6.0);
        assert_eq!(dropped("stun-unauthenticated"), 0.0);

        // Histograms: cumulative buckets ending in +Inf = _count.
        let d = "beep_forward_delay_seconds";
        assert_eq!(value(&text, &format!("{d}_count")), 3.0);
        assert_eq!(value(&text, &format!(r#"{d}_bucket{{le="5e-05"}}"#)), 1.0);
        assert_eq!(value(&text, &format!(r#"{d}_bucket{{le="0.0005"}}"#)), 2.0);
        assert_eq!(value(&text, &format!(r#"{d}_bucket{{le="0.05"}}"#)), 2.0);
        assert_eq!(value(&text, &format!(r#"{d}_bucket{{le="+Inf"}}"#)), 3.0);
        assert!((value(&text, &format!("{d}_sum")) - 0.06043).abs() < 1e-9);
        let l = "beep_bite_publish_latency_seconds";
        assert_eq!(value(&text, &format!(r#"{l}_bucket{{le="0.002"}}"#)), 0.0);
        assert_eq!(value(&text, &format!(r#"{l}_bucket{{le="0.005"}}"#)), 4.0);
        assert_eq!(value(&text, &format!(r#"{l}_bucket{{le="0.1"}}"#)), 6.0);
        assert_eq!(value(&text, &format!(r#"{l}_bucket{{le="+Inf"}}"#)), 6.0);
        assert_eq!(value(&text, &format!("{l}_count")), 6.0);
        let p = "beep_permission_latency_seconds";
        assert_eq!(value(&text, &format!(r#"{p}_bucket{{le="0.0025"}}"#)), 0.0);
        assert_eq!(value(&text, &format!(r#"{p}_bucket{{le="0.005"}}"#)), 1.0);
        assert_eq!(value(&text, &format!("{p}_count")), 1.0);
        assert_eq!(value(&text, "beep_join_latency_seconds_count"), 1.0);
        for (family, _) in expected.iter().filter(|(_, k)| *k == "histogram") {
            let buckets: Vec<f64> = parse(&text)
                .0
                .into_iter()
                .filter(|(n, _)| n.starts_with(&format!("{family}_bucket{{")))
                .map(|(_, v)| v)
                .collect();
            assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{family}");
            assert_eq!(
                buckets.last().copied(),
                Some(value(&text, &format!("{family}_count")))
            );
        }
    }

    /// A worker that exits moves its counters from `running` to `retired`: the totals stay,
    /// and grow with what the others report next.
    #[test]
    fn totals_never_go_backwards_when_a_worker_exits() {
        let m = Metrics::default();
        let (a, b) = (worker(2, 100, &[30, 400]), worker(3, 50, &[900]));
        let before = m.render(&snapshot(
            vec![a.clone(), b.clone()],
            WorkerStats::default(),
        ));
        let mut retired = WorkerStats::default();
        retired.add_counters(&a);
        let mut b_later = b.clone();
        b_later.packets_in += 10;
        let after = m.render(&snapshot(vec![b_later], retired));
        let (samples, types) = parse(&before);
        let monotonic: Vec<String> = types
            .iter()
            .filter(|(_, kind)| kind == "counter" || kind == "histogram")
            .map(|(name, _)| name.clone())
            .collect();
        let mut checked = 0;
        for (name, v) in samples {
            if monotonic.iter().any(|f| name.starts_with(f.as_str())) {
                assert!(value(&after, &name) >= v, "{name} went from {v} down");
                checked += 1;
            }
        }
        assert!(checked > 40, "only {checked} samples checked");
        assert_eq!(value(&after, "beep_packets_received_total"), 160.0);
        assert_eq!(value(&after, "beep_peers"), 3.0);
        assert_eq!(value(&after, r#"beep_workers{state="running"}"#), 1.0);
    }

    #[test]
    fn empty_front_renders_zeros() {
        let text = Metrics::default().render(&Snapshot {
            workers_by_state: vec![("running", 0)],
            ..Snapshot::default()
        });
        assert_eq!(value(&text, "beep_sessions"), 0.0);
        assert_eq!(value(&text, r#"beep_workers{state="running"}"#), 0.0);
        assert_eq!(value(&text, "beep_packets_forwarded_total"), 0.0);
        assert_eq!(value(&text, "beep_forward_delay_seconds_count"), 0.0);
        assert_eq!(
            value(
                &text,
                r#"beep_bite_publish_latency_seconds_bucket{le="+Inf"}"#
            ),
            0.0
        );
    }
}
