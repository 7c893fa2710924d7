//! The metrics page's tests: every family, its type, and `promtool`-shaped text.
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
        red_recovered: 4,
        nack_retransmitted: 3,
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
        ("beep_red_recovered_packets_total", "counter"),
        ("beep_nack_retransmitted_packets_total", "counter"),
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
