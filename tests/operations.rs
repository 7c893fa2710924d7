//! Operations, with real processes: a fault costs one conversation a moment and nobody else
//! anything; `ctl` sees and acts on one conversation; crash loops, hung workers, drain and
//! readiness. (systemd's notify protocol: tests/systemd.rs; front restarts: tests/restart.rs.)

mod common;

use std::time::{Duration, Instant};

use beep_webrtc::tools::load::client::Client;
use common::signal::{OFFER, Signal};
use common::{Front, Permissions, eventually, lost, member};

const T: Duration = Duration::from_secs(20);

fn ctl_workers(front: &Front) -> Vec<serde_json::Value> {
    let (code, out, err) = front.ctl(&["workers", "--json"]);
    assert_eq!(code, 0, "ctl workers: {err}");
    serde_json::from_str::<Vec<serde_json::Value>>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Events about the conversation (slots, reconnects): the periodic quality event is the
/// member's own link, not news of a fault elsewhere. (Members and speakers events are kept
/// apart by the client: `Client::members`.)
fn conversation_events(c: &Client) -> usize {
    c.events().iter().filter(|e| e["type"] != "quality").count()
}

fn told_reconnect(c: &Client, reason: &str) -> bool {
    c.events()
        .iter()
        .any(|e| e["type"] == "reconnect" && e["reason"] == reason)
}

/// A fault in A: its clients are told, re-offer and hear each other again; B loses nothing
/// and hears nothing of it. First a SIGKILL, then the same on purpose with `ctl restart`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_or_restarted_worker_costs_its_conversation_a_moment_and_no_one_else() {
    let perms = Permissions::start().await;
    let front = Front::start(&perms.url(), &[]).await;
    let mut a1 = member(&front, "alpha", "a1").await;
    let mut a2 = member(&front, "alpha", "a2").await;
    let b1 = member(&front, "beta", "b1").await;
    let b2 = member(&front, "beta", "b2").await;
    a1.start_sending("a1", 20);
    b1.start_sending("b1", 20);
    assert!(eventually(T, || a2.heard_from("a1") > 20 && b2.heard_from("b1") > 20).await);

    // ctl lists exactly the live workers, with their members.
    let rows = ctl_workers(&front);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (conv, row) in [("alpha", &rows[0]), ("beta", &rows[1])] {
        assert_eq!(row["conversation"], conv);
        assert_eq!(row["members"], 2, "{row}");
        assert_eq!(row["pid"].as_u64(), front.worker_of(conv).map(u64::from));
        assert_eq!(row["state"], "running");
    }
    let (code, _, err) = front.ctl(&["restart", "nosuch"]);
    assert_eq!(code, 1);
    assert!(err.contains("no worker for conversation"), "{err}");

    for (how, reason) in [
        ("SIGKILL", "worker-exited"),
        ("ctl restart", "worker-restarted"),
    ] {
        let victim = front.worker_of("alpha").expect("alpha's worker");
        let b_events = (conversation_events(&b1), conversation_events(&b2));
        b2.take_max_gap();
        let t0 = Instant::now();
        if how == "SIGKILL" {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(victim as i32),
                nix::sys::signal::SIGKILL,
            )
            .expect("kill");
        } else {
            let (code, out, err) = front.ctl(&["restart", "alpha"]);
            assert_eq!(code, 0, "{err}");
            assert!(out.contains("restarting alpha"), "{out}");
        }
        assert!(
            eventually(T, || told_reconnect(&a1, reason)
                && told_reconnect(&a2, reason))
            .await,
            "{how}: alpha's clients were not told ({reason}): {:?} {:?}",
            a1.events(),
            a2.events()
        );
        a1.close().await;
        a2.close().await;
        a1 = member(&front, "alpha", "a1").await;
        a2 = member(&front, "alpha", "a2").await;
        a1.start_sending("a1", 20);
        assert!(
            eventually(T, || a2.heard_from("a1") > 0).await,
            "{how}: no audio after the re-offer"
        );
        println!("{how}: audio again in alpha after {:?}", t0.elapsed());
        assert_ne!(front.worker_of("alpha"), Some(victim), "{how}: same worker");
        // Beta carried on: no packet lost, no event, no gap beyond jitter.
        let before = b2.heard_from("b1");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(b2.heard_from("b1") > before + 10, "{how}: beta stalled");
        assert_eq!(lost(&b2, "b1"), 0, "{how}: beta lost packets");
        let gap = b2.take_max_gap();
        println!("{how}: largest packet gap in beta {gap:?}");
        assert!(gap < Duration::from_millis(300), "{how}: beta gap {gap:?}");
        assert_eq!(
            (conversation_events(&b1), conversation_events(&b2)),
            b_events,
            "{how}: beta got events"
        );
    }
    let rows = ctl_workers(&front);
    let alpha = rows
        .iter()
        .find(|r| r["conversation"] == "alpha")
        .expect("alpha");
    assert_eq!(alpha["restarts"], 2, "{rows:?}");
    assert_eq!(alpha["members"], 2);
    for c in [&a1, &a2, &b1, &b2] {
        c.close().await;
    }
}

/// A conversation whose worker dies at every start: each replacement waits longer, then the
/// conversation is unavailable (503, `unavailable`) for a cool-down; other conversations work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_makes_one_conversation_unavailable_and_no_other() {
    let perms = Permissions::start().await;
    let log = tempfile::NamedTempFile::new().expect("spawn log");
    let log_path = log.path().display().to_string();
    let front = Front::start(
        &perms.url(),
        &[
            (
                "WORKER_BIN",
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/crashy_worker.sh"),
            ),
            ("BEEP_TEST_WORKER", env!("CARGO_BIN_EXE_worker")),
            ("BEEP_TEST_SPAWN_LOG", &log_path),
        ],
    )
    .await;
    let mut s = Signal::open(&front, "?conversation=crashy", "c", "app").await;
    for crash in 1..=3 {
        s.send(&format!("offer::{OFFER}")).await;
        let told = s
            .wait_for("event::", T)
            .await
            .expect("an event after the crash");
        assert!(
            told.contains("reconnect") && told.contains("worker-exited"),
            "crash {crash}: {told}"
        );
    }
    // The crash loop: the next offer is refused in words, and so is a join.
    s.send(&format!("offer::{OFFER}")).await;
    let refused = s.wait_for("error::", T).await.expect("an error frame");
    assert!(
        refused.contains("unavailable") && refused.contains("crashed 3 times"),
        "{refused}"
    );
    let (status, body) = front.join("other", "app", "crashy").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("unavailable"), "{body}");
    // Each replacement waited longer than the one before (250 ms, then 500 ms).
    let spawns: Vec<f64> = std::fs::read_to_string(log.path())
        .expect("spawn log")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(spawns.len(), 3, "{spawns:?}");
    assert!(spawns[1] - spawns[0] >= 0.25, "{spawns:?}");
    assert!(spawns[2] - spawns[1] >= 0.5, "{spawns:?}");
    // Another conversation on the same host works.
    assert_eq!(front.join("f1", "app", "fine").await.0, 200);
    let f1 = member(&front, "fine", "f1").await;
    let f2 = member(&front, "fine", "f2").await;
    f1.start_sending("f1", 20);
    assert!(
        eventually(T, || f2.heard_from("f1") > 10).await,
        "fine is silent"
    );
    let text = front
        .http
        .get(front.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    assert!(text.contains("beep_crash_loops_total 1"), "{text}");
    assert!(
        text.contains(r#"beep_workers{state="unavailable"} 1"#),
        "{text}"
    );
    f1.close().await;
    f2.close().await;
}

/// A worker that stops answering (SIGSTOP) is killed within the heartbeat window, and its
/// clients are told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_is_killed_and_its_clients_told() {
    let perms = Permissions::start().await;
    let front = Front::start(&perms.url(), &[("WORKER_HEARTBEAT_MS", "3000")]).await;
    let a1 = member(&front, "frozen", "a1").await;
    let a2 = member(&front, "frozen", "a2").await;
    let worker = front.worker_of("frozen").expect("worker");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker as i32),
        nix::sys::signal::SIGSTOP,
    )
    .expect("SIGSTOP");
    let t0 = Instant::now();
    assert!(
        eventually(T, || told_reconnect(&a1, "worker-exited")
            && told_reconnect(&a2, "worker-exited"))
        .await,
        "the clients of the hung worker were not told"
    );
    let took = t0.elapsed();
    println!("hung worker noticed after {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        eventually(T, || beep_webrtc::front::procfs::proc_sample(worker)
            .is_none())
        .await,
        "the hung worker is still there"
    );
    a1.close().await;
    a2.close().await;
}

/// `ctl drain`: no new conversation, the existing one goes on, and front exits once it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_takes_no_new_conversation_and_exits_when_the_last_one_ends() {
    let perms = Permissions::start().await;
    let mut front = Front::start(&perms.url(), &[]).await;
    let a1 = member(&front, "last", "a1").await;
    let a2 = member(&front, "last", "a2").await;
    a1.start_sending("a1", 20);
    let ready = |front: &Front| {
        let (http, url) = (front.http.clone(), front.url("/readyz"));
        async move {
            let r = http.get(url).send().await.expect("readyz");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };
    let (status, body) = ready(&front).await;
    assert_eq!(status, 200, "{body}");
    let (code, out, err) = front.ctl(&["drain", "--no-wait"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("draining") && out.contains("1 still going"),
        "{out}"
    );
    let (status, body) = front.join("n1", "app", "newcomer").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    let (status, body) = ready(&front).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("front is draining"), "{body}");
    // Liveness is another question: still alive.
    front.assert_serving().await;
    let before = a2.heard_from("a1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        a2.heard_from("a1") > before,
        "the existing conversation stopped"
    );
    a1.close().await;
    a2.close().await;
    // The worker goes idle (1.5 s here), and front exits.
    assert!(front.wait_exit(T), "front did not exit once drained");
    let (code, _, err) = front.ctl(&["workers"]);
    assert_eq!(code, 1);
    assert!(err.contains("is front running"), "{err}");
}
