//! An independent WebRTC stack as client: Debian's aiortc, with real Opus from its encoder.
//! Two aiortc peers (440 Hz and 880 Hz tones) join one conversation; each must decode the
//! other's tone and never its own. A webrtc-rs member in the same room checks that aiortc's
//! packets reach a third stack too.

mod common;

use std::process::Stdio;
use std::time::Duration;

use beep_webrtc::tools::load::client::{Client, ClientOptions};
use common::{Front, Permissions, eventually};

async fn aiortc_peer(
    front: &Front,
    user: &str,
    tone: u32,
    expect: u32,
    slots: usize,
) -> tokio::process::Child {
    tokio::process::Command::new("/usr/bin/python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/aiortc_peer.py"))
        .args(["--url", &front.ws("?conversation=tones")])
        .args(["--userid", user, "--clientid", "aiortc"])
        .args([
            "--tone",
            &tone.to_string(),
            "--expect-hz",
            &expect.to_string(),
        ])
        .args(["--seconds", "6", "--slots", &slots.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run /usr/bin/python3 tests/aiortc_peer.py (python3-aiortc)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_peers_hear_each_others_tone() {
    let perms = Permissions::start().await;
    let front = Front::start(&perms.url(), &[]).await;
    let a = aiortc_peer(&front, "a440", 440, 880, 1).await;
    let b = aiortc_peer(&front, "b880", 880, 440, 3).await;
    // A webrtc-rs listener in the same conversation receives aiortc's (real Opus) packets.
    let mut o = ClientOptions::new(front.ws("?conversation=tones"), "rs", "listener");
    o.slots = 2;
    let rs = Client::connect(o).await.expect("webrtc-rs listener");
    rs.wait_connected(Duration::from_secs(20))
        .await
        .expect("connected");
    // Python and aiortc can take 20 s to start on a cold machine (seen on a fresh CI clone),
    // so the wait lasts as long as the peers may: they stop 6 s after they connect.
    let rs_heard = eventually(Duration::from_secs(60), || {
        let s = rs.streams();
        s.iter().filter(|(_, st)| st.packets > 50).count() >= 2
    })
    .await;
    let (a, b) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(60), a.wait_with_output()),
        tokio::time::timeout(Duration::from_secs(60), b.wait_with_output())
    );
    rs.close().await;
    for (name, out) in [("a440", a), ("b880", b)] {
        let out = out
            .expect("aiortc peer finished within 60 s")
            .expect("aiortc output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let result = stdout
            .lines()
            .find(|l| l.starts_with("RESULT "))
            .unwrap_or("(no RESULT line)");
        assert!(
            out.status.success(),
            "{name} failed ({}): {result}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n")
        );
        let v: serde_json::Value =
            serde_json::from_str(result.trim_start_matches("RESULT ")).expect("RESULT json");
        assert_eq!(v["state"], "connected", "{name}: {v}");
    }
    assert!(
        rs_heard,
        "the webrtc-rs member did not receive both aiortc streams: {:?}",
        rs.streams()
    );
}
