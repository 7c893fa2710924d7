//! A front that crashes and is started again, or re-executes itself on reload, takes back
//! the running workers: calls never stop, `ctl` shows the same workers, and a client whose
//! signalling socket dropped reconnects it and goes on without a new offer. A worker whose
//! front never comes back stops by itself after its grace period.

mod common;

use std::time::{Duration, Instant};

use common::signal::Signal;
use common::{Front, Permissions, eventually, member};

const T: Duration = Duration::from_secs(20);

fn ctl_pids(front: &Front) -> Vec<(String, u64, u64)> {
    let (code, out, err) = front.ctl(&["workers", "--json"]);
    assert_eq!(code, 0, "ctl workers: {err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
    rows.iter()
        .map(|r| {
            (
                r["conversation"].as_str().unwrap_or("").to_string(),
                r["pid"].as_u64().unwrap_or(0),
                r["members"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_on_across_a_front_crash_and_a_reload() {
    let perms = Permissions::start().await;
    let mut front = Front::start(&perms.url(), &[]).await;
    let a1 = member(&front, "one", "a1").await;
    let a2 = member(&front, "one", "a2").await;
    let b1 = member(&front, "two", "b1").await;
    let b2 = member(&front, "two", "b2").await;
    a1.start_sending("a1", 20);
    b1.start_sending("b1", 20);
    assert!(eventually(T, || a2.heard_from("a1") > 20 && b2.heard_from("b1") > 20).await);
    let workers = ctl_pids(&front);
    assert_eq!(workers.len(), 2, "{workers:?}");

    for how in ["crash and restart", "reload (SIGHUP)"] {
        a2.take_max_gap();
        b2.take_max_gap();
        let heard = (a2.heard_from("a1"), b2.heard_from("b1"));
        let t0 = Instant::now();
        if how == "reload (SIGHUP)" {
            let front_pid = front.child.id();
            front.signal(nix::sys::signal::SIGHUP);
            // The same process, a new image: wait until it answers again.
            tokio::time::sleep(Duration::from_millis(100)).await;
            front.wait_healthy().await;
            assert_eq!(front.child.id(), front_pid, "a reload keeps the process");
        } else {
            front.crash_and_restart().await;
        }
        println!("{how}: front serving again after {:?}", t0.elapsed());
        // Same workers, same members, taken back.
        assert!(
            eventually(T, || ctl_pids(&front) == workers).await,
            "{how}: workers now {:?}, before {workers:?}",
            ctl_pids(&front)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(a2.heard_from("a1") > heard.0 + 50, "{how}: one stalled");
        assert!(b2.heard_from("b1") > heard.1 + 50, "{how}: two stalled");
        let gaps = (a2.take_max_gap(), b2.take_max_gap());
        println!("{how}: largest packet gaps {gaps:?}");
        for gap in [gaps.0, gaps.1] {
            assert!(gap < Duration::from_millis(300), "{how}: gap {gap:?}");
        }
        // A client whose socket dropped reconnects it, without an offer, and is told where
        // it stands.
        let mut s = Signal::open(&front, "", "a2", "app").await;
        let slots = s
            .wait_for("event::", Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{how}: no event on the reconnected socket"));
        assert!(
            slots.contains(r#""type":"slots""#) && slots.contains(r#""userid":"a1""#),
            "{slots}"
        );
    }
    for c in [&a1, &a2, &b1, &b2] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_front_never_returns_stops_after_its_grace_period() {
    let perms = Permissions::start().await;
    let mut front = Front::start(&perms.url(), &[("WORKER_ORPHAN_GRACE_MS", "2000")]).await;
    let a1 = member(&front, "alone", "a1").await;
    let worker = front.worker_of("alone").expect("worker");
    let _ = front.child.kill();
    let _ = front.child.wait();
    // Still there a moment later (it waits for a front)...
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        beep_webrtc::front::procfs::proc_sample(worker).is_some(),
        "gone too soon"
    );
    // ...and gone once the grace period is over.
    assert!(
        eventually(Duration::from_secs(10), || {
            beep_webrtc::front::procfs::proc_sample(worker).is_none()
        })
        .await,
        "the orphaned worker is still running"
    );
    a1.close().await;
}
