//! `/metrics` of the real front while audio flows: `promtool check metrics` (the Prometheus
//! project's own linter, Debian `prometheus`) accepts it, and the counters move.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Front, Permissions, eventually, member};

const T: Duration = Duration::from_secs(20);

/// One scrape: the text, and its samples by name (labels included in the name).
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
    /// `# TYPE` of each family.
    types: HashMap<String, String>,
}

impl Scrape {
    async fn take(front: &Front) -> Scrape {
        let r = front
            .http
            .get(front.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert!(r.status().is_success(), "{}", r.status());
        let ct = r.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .to_owned();
        assert!(
            ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
            "content-type {ct}"
        );
        let text = r.text().await.expect("body");
        let mut samples = HashMap::new();
        let mut types = HashMap::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').expect("TYPE name kind");
                types.insert(name.to_owned(), kind.to_owned());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (name, v) = line.rsplit_once(' ').expect("name value");
                let v = if v == "+Inf" {
                    f64::INFINITY
                } else {
                    v.parse().unwrap_or_else(|_| panic!("value in {line:?}"))
                };
                samples.insert(name.to_owned(), v);
            }
        }
        Scrape {
            text,
            samples,
            types,
        }
    }

    fn get(&self, name: &str) -> f64 {
        *self
            .samples
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in\n{}", self.text))
    }

    /// Samples of counter and histogram families: they only ever grow.
    fn monotonic(&self) -> impl Iterator<Item = (&String, &f64)> {
        self.samples.iter().filter(|(name, _)| {
            self.types.iter().any(|(family, kind)| {
                (kind == "counter" || kind == "histogram") && name.starts_with(family.as_str())
            })
        })
    }
}

/// `promtool check metrics` on `text`: `None` when promtool is missing outside CI.
fn promtool(text: &str) -> Option<()> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("CI").is_none() => {
            eprintln!(
                "NOTE: promtool not installed (Debian `prometheus`; scripts/test installs it): \
                 the exposition format is not linted in this run"
            );
            return None;
        }
        Err(e) => panic!("promtool: {e} (Debian package `prometheus`)"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n--- the text:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_move_when_audio_flows() {
    let perms = Permissions::start().await;
    let front = Front::start(&perms.url(), &[]).await;

    // Before anything happened: every family is there, at zero.
    let idle = Scrape::take(&front).await;
    promtool(&idle.text);
    assert_eq!(idle.get("beep_sessions"), 0.0);
    assert_eq!(idle.get("beep_packets_forwarded_total"), 0.0);

    let a = member(&front, "metered", "a").await;
    let b = member(&front, "metered", "b").await;
    a.start_sending("a", 20);
    assert!(
        eventually(T, || b.heard_from("a") > 50).await,
        "b does not hear a"
    );

    // The worker reports every 2 s: wait for a first report with packets, then for the next.
    let first = poll(&front, |s| s.get("beep_packets_forwarded_total") > 0.0).await;
    let before = first.get("beep_packets_forwarded_total");
    let second = poll(&front, |s| s.get("beep_packets_forwarded_total") > before).await;
    for s in [&first, &second] {
        promtool(&s.text);
    }

    for name in [
        "beep_packets_received_total",
        "beep_packets_forwarded_total",
        "beep_bytes_forwarded_total",
        "beep_forward_delay_seconds_count",
        r#"beep_forward_delay_seconds_bucket{le="+Inf"}"#,
    ] {
        assert!(
            second.get(name) > first.get(name) && first.get(name) > idle.get(name),
            "{name}: {} → {} → {}",
            idle.get(name),
            first.get(name),
            second.get(name)
        );
    }
    for (name, v) in first.monotonic() {
        assert!(
            second.get(name) >= *v,
            "{name} went down: {v} → {}",
            second.get(name)
        );
    }
    assert!(second.get("beep_forward_delay_seconds_sum") > 0.0);
    assert_eq!(second.get("beep_peers"), 2.0);
    assert_eq!(second.get("beep_sessions"), 2.0);
    assert_eq!(second.get(r#"beep_workers{state="running"}"#), 1.0);
    assert_eq!(second.get("beep_workers_spawned_total"), 1.0);
    assert_eq!(second.get("beep_offers_total"), 2.0);
    assert_eq!(second.get("beep_permission_latency_seconds_count"), 2.0);
    assert_eq!(second.get("beep_join_latency_seconds_count"), 2.0);
    assert_eq!(second.get("beep_worker_failures_total"), 0.0);

    // Call quality: each member is told its score once it has one (a clean loopback: 5), and
    // the samples are counted by score.
    let quality = |c: &beep_webrtc::tools::load::client::Client| {
        c.events().into_iter().find(|e| e["type"] == "quality")
    };
    assert!(
        eventually(T, || quality(&a).is_some() && quality(&b).is_some()).await,
        "no quality event: {:?}",
        b.events()
    );
    for c in [&a, &b] {
        let q = quality(c).expect("quality");
        println!("quality event: {q}");
        assert_eq!(q["score"], 5, "{q}");
        assert_eq!(q["loss"], 0.0, "{q}");
        assert!(q["jitter_ms"].is_u64() && q.get("rtt_ms").is_some(), "{q}");
    }
    let scored = poll(&front, |s| s.get("beep_quality_score_count") >= 2.0).await;
    promtool(&scored.text);
    assert_eq!(
        scored.get(r#"beep_quality_score_bucket{le="5"}"#),
        scored.get("beep_quality_score_count"),
        "{}",
        scored.text
    );
    assert_eq!(scored.get("beep_listener_packets_lost_total"), 0.0);

    a.close().await;
    b.close().await;
}

/// Scrapes until `cond` holds (deadline [`T`]).
async fn poll(front: &Front, cond: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let s = Scrape::take(front).await;
        if cond(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics did not move:\n{}",
            s.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
