//! Limits of issue 11 with the real front and workers: how many conversations the host runs
//! (`MAX_WORKERS`), how fast one user may start new ones (`NEW_CONVERSATIONS_PER_MINUTE`),
//! and the front ↔ worker channel's frame limit: a message too large for it costs the one
//! session it belongs to, never the conversation, and `MAX_FRAME_BYTES` must stay well under
//! it (checked at startup). And a full `RTC_PORTS` range refuses the next conversation in words.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use beep_webrtc::tools::load::client::Client;
use beep_webrtc::wire::frame::{MAX_FRAME, MAX_SIGNAL_FRAME};
use common::signal::{self, OFFER, Signal};
use common::{Front, Permissions, claim, eventually, member};

const T: Duration = Duration::from_secs(20);

/// The `error::` frame's code and message.
fn error_of(frame: &str) -> (String, String) {
    signal::error_of(frame).unwrap_or_else(|| panic!("not an error frame: {frame}"))
}

/// `listener` keeps hearing `speaker`: at least `n` more packets within 5 s.
async fn keeps_hearing(listener: &Client, speaker: &str, n: u64) -> bool {
    let before = listener.heard_from(speaker);
    eventually(Duration::from_secs(5), || {
        listener.heard_from(speaker) >= before + n
    })
    .await
}

fn told_reconnect(c: &Client) -> bool {
    c.events().iter().any(|e| e["type"] == "reconnect")
}

/// `MAX_WORKERS=2`: two conversations talk; a third is refused in words (503 to the join,
/// `error::unavailable` on the socket) and starts no process; the first two go on, and a
/// new member of a running conversation is still welcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_workers_refuses_a_third_conversation_in_words() {
    let perms = Permissions::start().await;
    let front = Front::start(&perms.url(), &[("MAX_WORKERS", "2")]).await;
    let a1 = member(&front, "alpha", "a1").await;
    let a2 = member(&front, "alpha", "a2").await;
    let b1 = member(&front, "beta", "b1").await;
    let b2 = member(&front, "beta", "b2").await;
    a1.start_sending("a1", 20);
    b1.start_sending("b1", 20);
    assert!(eventually(T, || a2.heard_from("a1") > 20 && b2.heard_from("b1") > 20).await);
    assert_eq!(front.workers().len(), 2);

    let (status, body) = front.join("g1", "app", "gamma").await;
    println!("POST /join/gamma: {status} {body}");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("MAX_WORKERS=2") && body.contains("conversations"),
        "a reason in words: {body}"
    );

    let mut s = Signal::open(&front, "?conversation=gamma", "g2", "app").await;
    s.send(&format!("offer::{OFFER}")).await;
    let frame = s.wait_for("error::", T).await.expect("an error frame");
    let (code, message) = error_of(&frame);
    println!("/connect?conversation=gamma: {code}: {message}");
    assert_eq!(code, "unavailable", "{message}");
    assert!(message.contains("MAX_WORKERS"), "{message}");

    assert_eq!(front.workers().len(), 2, "no third worker");
    assert!(front.worker_of("gamma").is_none());
    assert!(keeps_hearing(&a2, "a1", 10).await, "alpha stalled");
    assert!(keeps_hearing(&b2, "b1", 10).await, "beta stalled");
    assert!(!told_reconnect(&a2) && !told_reconnect(&b2));

    // A running conversation takes new members.
    let (status, body) = front.join("a3", "app", "alpha").await;
    assert_eq!(status, 200, "{body}");
    let a3 = member(&front, "alpha", "a3").await;
    assert!(keeps_hearing(&a3, "a1", 10).await, "a3 hears alpha");
    front.assert_serving().await;
    for c in [&a1, &a2, &a3, &b1, &b2] {
        c.close().await;
    }
}

/// `NEW_CONVERSATIONS_PER_MINUTE=3`: a user who starts conversations one after the other
/// gets three, then 429 (with `Retry-After`) to the join and `error::rate-limited` on the
/// socket, in words. Joining a conversation that already runs is not a new one, and another
/// user is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_starting_conversations_too_fast_is_refused() {
    let perms = Permissions::start().await;
    let front = Front::start(&perms.url(), &[("NEW_CONVERSATIONS_PER_MINUTE", "3")]).await;
    let mut s = Signal::open(&front, "", "hasty", "app").await;
    for conv in ["c1", "c2", "c3"] {
        let (status, body) = front.join("hasty", "app", conv).await;
        assert_eq!(status, 200, "{conv}: {body}");
        s.send(&format!("offer::{OFFER}")).await;
        s.wait_for("answer::", T)
            .await
            .unwrap_or_else(|| panic!("{conv}: no answer"));
        assert!(front.worker_of(conv).is_some(), "{conv} runs");
    }

    let r = front
        .http
        .post(front.url("/join/c4"))
        .header("X-User-Claim", claim("hasty", "app"))
        .send()
        .await
        .expect("POST /join");
    let status = r.status().as_u16();
    let retry_after: Option<u64> = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body = r.text().await.unwrap_or_default();
    println!("POST /join/c4: {status} (Retry-After {retry_after:?}) {body}");
    assert_eq!(status, 429, "{body}");
    assert!(
        retry_after.is_some_and(|s| (1..=61).contains(&s)),
        "{retry_after:?}"
    );
    assert!(
        body.contains("NEW_CONVERSATIONS_PER_MINUTE") && body.contains("hasty"),
        "{body}"
    );

    // The same user on another client, through /connect: rate-limited, close code 4029.
    let mut s2 = Signal::open(&front, "?conversation=c5", "hasty", "web").await;
    s2.send(&format!("offer::{OFFER}")).await;
    let frame = s2.wait_for("error::", T).await.expect("an error frame");
    let (code, message) = error_of(&frame);
    println!("/connect?conversation=c5: {code}: {message}");
    assert_eq!(code, "rate-limited", "{message}");
    assert!(front.worker_of("c4").is_none() && front.worker_of("c5").is_none());

    // A conversation that runs is not a new one; another user starts one freely.
    let (status, body) = front.join("hasty", "web", "c3").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = front.join("calm", "app", "c6").await;
    assert_eq!(status, 200, "{body}");
    let mut s3 = Signal::open(&front, "", "calm", "app").await;
    s3.send(&format!("offer::{OFFER}")).await;
    s3.wait_for("answer::", T).await.expect("calm's answer");
    front.assert_serving().await;
}

/// A trickled candidate that grows past the channel's frame limit on its way: the bare
/// `candidate:` line is wrapped into JSON, and each control character in it becomes a
/// six-byte `\u00XX` escape, so a frame within `MAX_FRAME_BYTES` (the largest allowed,
/// `MAX_SIGNAL_FRAME`) turns into an IPC message over `MAX_FRAME`. Before issue 11 front's
/// supervisor killed the worker for it, and every member of the conversation had to
/// reconnect. Now the client that sent it gets `error::too-large` and nobody else notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_for_the_worker_costs_its_session_not_the_conversation() {
    let perms = Permissions::start().await;
    let limit = MAX_SIGNAL_FRAME.to_string();
    let front = Front::start(&perms.url(), &[("MAX_FRAME_BYTES", &limit)]).await;
    let p1 = member(&front, "room", "p1").await;
    let p2 = member(&front, "room", "p2").await;
    p1.start_sending("p1", 20);
    assert!(eventually(T, || p2.heard_from("p1") > 20).await);
    let worker = front.worker_of("room").expect("room's worker");

    let mut s = Signal::open(&front, "?conversation=room", "mallory", "app").await;
    s.send(&format!("offer::{OFFER}")).await;
    s.wait_for("answer::", T).await.expect("an answer");
    let candidate = format!(
        "ice::candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host {}",
        "\u{1}".repeat(MAX_SIGNAL_FRAME - 100)
    );
    assert!(
        candidate.len() <= MAX_SIGNAL_FRAME,
        "within MAX_FRAME_BYTES"
    );
    // ... but not once escaped.
    const { assert!(6 * (MAX_SIGNAL_FRAME - 100) > MAX_FRAME) };
    p2.take_max_gap();
    let t0 = Instant::now();
    s.send(&candidate).await;
    let frame = s.wait_for("error::", T).await.expect("an error frame");
    let (code, message) = error_of(&frame);
    println!(
        "oversized candidate: {code}: {message} (after {:?})",
        t0.elapsed()
    );
    assert_eq!(code, "too-large", "{message}");
    assert!(message.contains("conversation goes on"), "{message}");

    // Same worker, no reconnect, the audio never stopped.
    assert_eq!(
        front.worker_of("room"),
        Some(worker),
        "the worker was replaced"
    );
    assert!(
        keeps_hearing(&p2, "p1", 20).await,
        "the conversation stalled"
    );
    let gap = p2.take_max_gap();
    println!("largest packet gap meanwhile: {gap:?}");
    assert!(gap < Duration::from_millis(300), "gap {gap:?}");
    assert!(!told_reconnect(&p1) && !told_reconnect(&p2));
    // The client that sent it may come back and offer again.
    let mut again = Signal::open(&front, "?conversation=room", "mallory", "app").await;
    again.send(&format!("offer::{OFFER}")).await;
    again
        .wait_for("answer::", T)
        .await
        .expect("an answer again");
    assert_eq!(front.worker_of("room"), Some(worker));
    front.assert_serving().await;
    for c in [&p1, &p2] {
        c.close().await;
    }
}

/// `MAX_FRAME_BYTES` too close to the IPC limit stops front at startup with one line naming
/// the variable; the largest allowed value starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_frame_bytes_too_close_to_the_ipc_limit_is_refused_at_startup() {
    for value in [MAX_SIGNAL_FRAME + 1, MAX_FRAME - 1024, 16 << 20] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(env!("CARGO_BIN_EXE_front"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LISTEN", format!("127.0.0.1:{}", common::free_tcp_port()))
            .env("RUNTIME_DIR", dir.path())
            .env("STATE_DIR", dir.path().join("state"))
            .env("PERMISSIONS_HOST", "http://127.0.0.1:9")
            .env("MAX_FRAME_BYTES", value.to_string())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run front");
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("MAX_FRAME_BYTES={value}: {}", stderr.trim());
        assert!(!out.status.success(), "front started with {value}");
        assert!(
            stderr.contains("MAX_FRAME_BYTES") && stderr.contains(&MAX_FRAME.to_string()),
            "{stderr}"
        );
    }
    let perms = Permissions::start().await;
    let front = Front::start(
        &perms.url(),
        &[("MAX_FRAME_BYTES", &MAX_SIGNAL_FRAME.to_string())],
    )
    .await;
    front.assert_serving().await;
}

/// Two consecutive UDP ports nobody holds now (the range given to `RTC_PORTS`).
fn two_free_udp_ports() -> u16 {
    for _ in 0..200 {
        let Ok(a) = std::net::UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(port) = a.local_addr().map(|a| a.port()) else {
            continue;
        };
        if port < 65535 && std::net::UdpSocket::bind(("0.0.0.0", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free UDP ports");
}

/// `RTC_PORTS` with two ports: a worker takes one port for all its connections, so two
/// conversations fit with any number of members (a third member of the first joins), and a
/// third conversation's offer gets `error::unavailable` saying why; the others talk on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_rtc_port_range_refuses_the_next_conversation_in_words() {
    let lo = two_free_udp_ports();
    let ports = format!("{lo}-{}", lo + 1);
    let perms = Permissions::start().await;
    let front = Front::start(&perms.url(), &[("RTC_PORTS", &ports)]).await;
    let a = member(&front, "pair", "a").await;
    let b = member(&front, "pair", "b").await;
    let c = member(&front, "pair", "c").await;
    let d = member(&front, "other", "d").await;
    a.start_sending("a", 20);
    assert!(
        eventually(T, || b.heard_from("a") > 20
            && c.heard_from("a") > 20
            && d.heard_from("a") == 0)
        .await,
        "b and c hear a"
    );

    let mut s = Signal::open(&front, "?conversation=third", "e", "app").await;
    s.send(&format!("offer::{OFFER}")).await;
    let frame = s.wait_for("error::", T).await.expect("an error frame");
    let (code, message) = error_of(&frame);
    println!("third conversation, RTC_PORTS={ports}: {code}: {message}");
    assert_eq!(code, "unavailable", "{message}");
    assert!(
        message.contains("RTC_PORTS"),
        "the reason names the setting: {message}"
    );

    assert!(keeps_hearing(&b, "a", 10).await, "the pair stalled");
    assert!(!told_reconnect(&a) && !told_reconnect(&b));
    front.assert_serving().await;
    for m in [&a, &b, &c, &d] {
        m.close().await;
    }
}
