//! Process lifecycle: a worker that dies affects only its conversation (its clients are told
//! to reconnect, and can), and SIGTERM on front leaves nothing behind.

mod common;

use std::time::Duration;

use beep_webrtc::tools::load::client::{Client, ClientOptions};
use common::{Front, Permissions, eventually, member};

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_only_affects_its_conversation() {
    let perms = Permissions::start().await;
    let front = Front::start(&perms.url(), &[]).await;
    let a1 = member(&front, "doomed", "a1").await;
    let a2 = member(&front, "doomed", "a2").await;
    let b1 = member(&front, "safe", "b1").await;
    let b2 = member(&front, "safe", "b2").await;
    a1.start_sending("a1", 20);
    b1.start_sending("b1", 20);
    assert!(eventually(T, || a2.heard_from("a1") > 20 && b2.heard_from("b1") > 20).await);
    let doomed = front.worker_of("doomed").expect("worker of 'doomed'");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(doomed as i32),
        nix::sys::signal::SIGKILL,
    )
    .expect("kill worker");
    let told = |c: &Client| {
        c.events()
            .iter()
            .any(|e| e["type"] == "reconnect" && e["reason"] == "worker-exited")
    };
    assert!(
        eventually(T, || told(&a1) && told(&a2)).await,
        "a1 {:?} a2 {:?}",
        a1.events(),
        a2.events()
    );
    // The other conversation carries on, untouched.
    let before = b2.heard_from("b1");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        b2.heard_from("b1") > before + 20,
        "the other conversation stalled"
    );
    assert!(!told(&b1) && !told(&b2));
    // The clients of the dead worker re-offer and talk again through a fresh worker.
    a1.close().await;
    a2.close().await;
    let a1 = member(&front, "doomed", "a1").await;
    let a2 = member(&front, "doomed", "a2").await;
    a1.start_sending("a1", 20);
    assert!(
        eventually(T, || a2.heard_from("a1") > 20).await,
        "no audio after the re-offer"
    );
    assert_ne!(front.worker_of("doomed"), Some(doomed));
    let r = front
        .http
        .get(front.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    assert!(r.contains("beep_worker_failures_total 1"), "{r}");
    for c in [&a1, &a2, &b1, &b2] {
        c.close().await;
    }
}

/// A value from /metrics (the workers report every 2 s).
async fn metric(front: &Front, name: &str) -> Option<u64> {
    front.metric(name).await.map(|v| v as u64)
}

async fn peers(front: &Front) -> Option<u64> {
    metric(front, "beep_peers").await
}

/// Counters summed over the workers must not fall when a worker exits: front keeps the
/// totals of exited workers (before, only the running workers' last reports were summed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_totals_survive_the_exit_of_their_worker() {
    let perms = Permissions::start().await;
    let front = Front::start(&perms.url(), &[]).await;
    let a = member(&front, "counted", "a").await;
    let b = member(&front, "counted", "b").await;
    a.start_sending("a", 20);
    assert!(eventually(T, || b.heard_from("a") > 50).await);
    let counters = [
        "beep_packets_received_total",
        "beep_packets_forwarded_total",
        "beep_bytes_forwarded_total",
        "beep_forward_delay_seconds_count",
    ];
    let deadline = tokio::time::Instant::now() + T;
    let mut before = Vec::new();
    for name in counters {
        loop {
            let v = metric(&front, name).await.unwrap_or(0);
            if v > 0 {
                before.push(v);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{name} stayed 0");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    a.close().await;
    b.close().await;
    assert!(
        eventually(T, || front.workers().is_empty()).await,
        "the idle worker did not exit"
    );
    for (name, was) in counters.iter().zip(before) {
        let now = metric(&front, name).await.expect(name);
        assert!(now >= was, "{name} went backwards: {was} -> {now}");
    }
    assert_eq!(
        metric(&front, r#"beep_workers{state="running"}"#).await,
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_its_connection_is_let_go_at_once() {
    let perms = Permissions::start().await;
    // ICE consent alone would take a minute to notice the client has gone.
    let slow_ice = [("ICE_DISCONNECTED_MS", "30000"), ("ICE_FAILED_MS", "30000")];
    let front = Front::start(&perms.url(), &slow_ice).await;
    let a = member(&front, "bye", "a").await;
    let b = member(&front, "bye", "b").await;
    a.start_sending("a", 20);
    assert!(eventually(T, || b.heard_from("a") > 20).await);
    let deadline = tokio::time::Instant::now() + T;
    while peers(&front).await != Some(2) {
        assert!(tokio::time::Instant::now() < deadline, "never saw 2 peers");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The worker times what it forwards (a → b).
    while metric(&front, "beep_forward_delay_seconds_count")
        .await
        .unwrap_or(0)
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no forwarding delay measured"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.close_media().await;
    let closed_at = tokio::time::Instant::now();
    while peers(&front).await != Some(1) {
        assert!(
            closed_at.elapsed() < Duration::from_secs(8),
            "the closed peer connection is still in the worker: {:?} peers",
            peers(&front).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // b closed it itself: it is not asked to reconnect, and nobody got an error.
    assert!(
        !b.events().iter().any(|e| e["type"] == "reconnect"),
        "{:?}",
        b.events()
    );
    assert!(a.errors().is_empty() && b.errors().is_empty());
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_workers_and_leaves_nothing_behind() {
    let perms = Permissions::start().await;
    let mut front = Front::start(&perms.url(), &[("DRAIN_TIMEOUT_MS", "1000")]).await;
    let a = member(&front, "one", "a").await;
    let b = member(&front, "two", "b").await;
    a.start_sending("a", 20);
    let workers = front.workers();
    assert_eq!(workers.len(), 2);
    // 1 s of drain with conversations still going, then the workers are stopped (each has
    // 5 s before it is killed): well within 8 s.
    let t0 = std::time::Instant::now();
    assert!(
        front.terminate(Duration::from_secs(8)),
        "front did not exit within the drain deadline after SIGTERM"
    );
    println!("SIGTERM to exit with 2 conversations: {:?}", t0.elapsed());
    for pid in workers {
        assert!(
            eventually(Duration::from_millis(300), || !std::path::Path::new(
                &format!("/proc/{pid}")
            )
            .exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.contains(") Z"))
                    .unwrap_or(true))
            .await,
            "worker {pid} outlived front"
        );
    }
    let sockets_left: Vec<_> = std::fs::read_dir(front.runtime_dir.path().join("workers"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(sockets_left.is_empty(), "left behind: {sockets_left:?}");
    for socket in ["front.sock", "admin.sock"] {
        assert!(
            !front.runtime_dir.path().join(socket).exists(),
            "{socket} left behind"
        );
    }
    a.close().await;
    b.close().await;
}

/// A worker that breaks the protocol is killed, never trusted; its clients are told to
/// reconnect, and front keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_sends_garbage_is_killed() {
    let perms = Permissions::start().await;
    let front = Front::start(
        &perms.url(),
        &[
            (
                "WORKER_BIN",
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/garbage_worker.py"),
            ),
            (
                "BEEP_TEST_PROTOCOL",
                &beep_webrtc::wire::ipc::PROTOCOL_VERSION.to_string(),
            ),
        ],
    )
    .await;
    let connecting = tokio::spawn(Client::connect(ClientOptions::new(
        front.ws("?conversation=bad"),
        "u",
        "c",
    )));
    // The impostor is spawned for the offer, then killed for what it sent.
    assert!(
        eventually(T, || !front.workers().is_empty()).await,
        "no worker spawned"
    );
    let impostor = front.workers()[0];
    assert!(
        eventually(T, || !std::path::Path::new(&format!("/proc/{impostor}"))
            .exists())
        .await,
        "the worker that sent garbage is still alive"
    );
    // No answer ever comes from it; the client learns why and front is fine.
    let outcome = tokio::time::timeout(Duration::from_secs(5), connecting).await;
    assert!(
        !matches!(outcome, Ok(Ok(Ok(_)))),
        "an answer came from a garbage worker"
    );
    front.assert_serving().await;
}
