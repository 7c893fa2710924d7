//! Several hosts (README "Several hosts", issue 18): two fronts on two loopback addresses
//! (127.0.0.1 and 127.0.0.2) in a private network namespace, one NATS with JetStream, real
//! webrtc-rs clients. Members of one conversation connected through different fronts hear
//! each other, and its worker runs on exactly one node; new conversations spread over both
//! nodes; node A killed (front and workers), its conversation's members connected through B
//! are told `reconnect`, re-offer, and hear each other again on B. With `CLUSTER` off nothing
//! touches the key-value buckets. A `POST /join` on one front counts for a WebSocket on the
//! other.
//!
//! The namespace: the scenario re-runs this test binary under `unshare --net` (root, as
//! scripts/test runs), so the two nodes' addresses, ports and NATS are its own.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::nats::NatsServer;
use common::netns::inside_namespace;
use common::signal::{OFFER, Signal};
use common::{Front, Permissions, eventually, member};
use futures_util::StreamExt;

const T: Duration = Duration::from_secs(20);
/// The nodes' liveness TTL in the test: a dead node is noticed within about this.
const TTL_MS: &str = "2000";

async fn node(host: &str, id: &str, perms: &Permissions, nats: &NatsServer) -> Front {
    Front::start_on(
        host,
        &perms.url(),
        &[
            ("CLUSTER", "on"),
            ("NODE_ID", id),
            ("CLUSTER_BUCKET", "beep-test"),
            ("CLUSTER_NODE_TTL_MS", TTL_MS),
            ("NATS", &nats.url()),
            ("BITES", "off"),
            ("WORKER_IDLE_MS", "60000"),
        ],
    )
    .await
}

fn cluster_view(front: &Front) -> serde_json::Value {
    let (code, out, err) = front.ctl(&["cluster", "--json"]);
    assert_eq!(code, 0, "ctl cluster: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The node that holds `conversation`, as `front`'s `ctl cluster` lists it.
fn holder(front: &Front, conversation: &str) -> Option<String> {
    cluster_view(front)["conversations"]
        .as_array()?
        .iter()
        .find(|c| c[0] == conversation)
        .and_then(|c| c[1].as_str().map(str::to_string))
}

fn live_nodes(front: &Front) -> Vec<String> {
    let view = cluster_view(front);
    view["nodes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter(|n| n["alive"] == true)
                .filter_map(|n| n["node"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Time from an offer to its answer, `n` times over one socket (re-offers into a
/// conversation that already has its worker), in ms, sorted.
async fn offer_to_answer(front: &Front, conversation: &str, user: &str, n: usize) -> Vec<f64> {
    let mut s = Signal::open(
        front,
        &format!("?conversation={conversation}"),
        user,
        "probe",
    )
    .await;
    // The first offer also waits for the join's permission check: not counted.
    s.send(&format!("offer::{OFFER}")).await;
    s.wait_for("answer::", T).await.expect("first answer");
    let mut took = Vec::new();
    for _ in 0..n {
        let t0 = Instant::now();
        s.send(&format!("offer::{OFFER}")).await;
        s.wait_for("answer::", T).await.expect("answer");
        took.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    took.sort_by(f64::total_cmp);
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_conversations_and_a_dead_nodes_move() {
    if !inside_namespace("two_nodes_share_conversations_and_a_dead_nodes_move") {
        return;
    }
    let nats = NatsServer::start();
    let perms = Permissions::start().await;
    let a = node("127.0.0.1", "node-a", &perms, &nats).await;
    let mut b = node("127.0.0.2", "node-b", &perms, &nats).await;
    assert!(
        eventually(T, || live_nodes(&a).len() == 2 && live_nodes(&b).len() == 2).await,
        "the nodes did not see each other: {}",
        cluster_view(&a)
    );

    // One conversation, one member through each front: they hear each other, and the
    // conversation's worker runs on exactly one node, the one the bucket names.
    let m1 = member(&a, "c1", "m1").await;
    let m2 = member(&b, "c1", "m2").await;
    m1.start_sending("m1", 20);
    m2.start_sending("m2", 20);
    assert!(
        eventually(T, || m1.heard_from("m2") > 20 && m2.heard_from("m1") > 20).await,
        "members on two fronts did not hear each other: m1 heard {}, m2 heard {}",
        m1.heard_from("m2"),
        m2.heard_from("m1")
    );
    let owner = holder(&a, "c1").expect("c1 placed");
    assert_eq!(holder(&b, "c1").as_deref(), Some(owner.as_str()));
    let (on_a, on_b) = (a.worker_of("c1").is_some(), b.worker_of("c1").is_some());
    assert!(on_a ^ on_b, "c1's worker on a: {on_a}, on b: {on_b}");
    assert_eq!(on_a, owner == "node-a");
    // Both answers name the owner's address: media goes straight to it.
    let owner_ip = if on_a { "127.0.0.1" } else { "127.0.0.2" };
    for m in [&m1, &m2] {
        let candidates: Vec<&str> = m
            .answer_sdp
            .lines()
            .filter(|l| l.starts_with("a=candidate:"))
            .collect();
        assert!(
            !candidates.is_empty() && candidates.iter().all(|c| c.contains(owner_ip)),
            "the answer's candidates do not name the owner's address {owner_ip}: {candidates:?}"
        );
    }

    // Offer → answer, through the owner's front and through the other one.
    let (direct, relayed) = if on_a { (&a, &b) } else { (&b, &a) };
    let near = offer_to_answer(direct, "c1", "p1", 15).await;
    let far = offer_to_answer(relayed, "c1", "p2", 15).await;
    println!(
        "offer -> answer, median (p90) ms: through the owner's front {:.2} ({:.2}), relayed {:.2} ({:.2})",
        near[7], near[13], far[7], far[13]
    );

    // A client whose POST /join lands on one front and its WebSocket on the other: the join
    // reaches every front, and its waiting offer is answered.
    for (join_at, socket_at) in [(&a, &b), (&b, &a)] {
        let mut s = Signal::open(socket_at, "", "j1", "app").await;
        s.send(&format!("offer::{OFFER}")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, body) = join_at.join("j1", "app", "c1").await;
        assert_eq!(status, 200, "{body}");
        assert!(
            s.wait_for("answer::", T).await.is_some(),
            "no answer on {} after a join on {}",
            socket_at.host,
            join_at.host
        );
    }

    // New conversations, all through A, spread over both nodes by load.
    let mut extra = Vec::new();
    for i in 0..4 {
        extra.push(member(&a, &format!("s{i}"), &format!("s{i}")).await);
    }
    let placed: Vec<String> = (0..4)
        .map(|i| holder(&a, &format!("s{i}")).expect("placed"))
        .collect();
    let on = |n: &str| placed.iter().filter(|p| *p == n).count();
    println!("new conversations through node-a went to {placed:?}");
    assert!(
        on("node-a") >= 1 && on("node-b") >= 1,
        "no spread: {placed:?}"
    );
    for c in &extra {
        c.close().await;
    }

    // A conversation held by node-a whose members both came through node-b.
    let mut held_by_a = None;
    for i in 0..8 {
        let conv = format!("f{i}");
        let f1 = member(&b, &conv, "f1").await;
        if holder(&b, &conv).as_deref() == Some("node-a") {
            held_by_a = Some((conv, f1));
            break;
        }
        f1.close().await;
    }
    let (conv, f1) = held_by_a.expect("one of 8 new conversations placed on node-a");
    let f2 = member(&b, &conv, "f2").await;
    f1.start_sending("f1", 20);
    assert!(
        eventually(T, || f2.heard_from("f1") > 20).await,
        "no audio through b before the kill"
    );

    // Node A dies: its front and its workers, at once.
    let workers = a.workers();
    let t0 = Instant::now();
    a.signal(nix::sys::signal::SIGKILL);
    for pid in workers {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::SIGKILL,
        );
    }
    let told = |c: &beep_webrtc::tools::load::client::Client| {
        c.events()
            .iter()
            .any(|e| e["type"] == "reconnect" && e["reason"] == "node-lost")
    };
    assert!(
        eventually(T, || told(&f1) && told(&f2)).await,
        "members on b were not told to reconnect: {:?} {:?}",
        f1.events(),
        f2.events()
    );
    let told_after = t0.elapsed();
    f1.close().await;
    f2.close().await;
    let f1 = member(&b, &conv, "f1").await;
    let f2 = member(&b, &conv, "f2").await;
    f1.start_sending("f1", 20);
    assert!(
        eventually(T, || f2.heard_from("f1") > 0).await,
        "no audio after the re-offer"
    );
    let audio_after = t0.elapsed();
    println!(
        "failover: node-a killed; reconnect told after {told_after:?}, audio again on node-b after {audio_after:?}"
    );
    assert!(
        b.worker_of(&conv).is_some(),
        "the conversation's worker is on node-b now"
    );
    assert_eq!(
        holder(&b, &conv).as_deref(),
        Some("node-b"),
        "the bucket still names the dead node"
    );
    assert!(!live_nodes(&b).contains(&"node-a".to_string()));

    // A node that stops leaves: its key and its claims go at once.
    for c in [&m1, &m2, &f1, &f2] {
        c.close().await;
    }
    assert!(b.terminate(T), "node-b did not stop");
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let js = jetstream::new(client);
    let nodes = js
        .get_key_value("beep-test-nodes")
        .await
        .expect("nodes bucket");
    assert!(
        nodes.get("node-b").await.expect("read").is_none(),
        "node-b's liveness key stayed"
    );
    let conversations = js.get_key_value("beep-test").await.expect("bucket");
    assert!(
        conversations
            .get(conv.as_str())
            .await
            .expect("read")
            .is_none(),
        "node-b's claim stayed"
    );
}

/// `CLUSTER` off (the default): a call works and no key-value bucket exists afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_host_never_touches_the_buckets() {
    let nats = NatsServer::start();
    let perms = Permissions::start().await;
    let front = Front::start(
        &perms.url(),
        &[("NATS", &nats.url()), ("CLUSTER_BUCKET", "beep-single")],
    )
    .await;
    let m1 = member(&front, "solo", "m1").await;
    let m2 = member(&front, "solo", "m2").await;
    m1.start_sending("m1", 20);
    assert!(eventually(T, || m2.heard_from("m1") > 20).await);
    let (code, _, err) = front.ctl(&["cluster"]);
    assert_eq!(code, 1);
    assert!(err.contains("CLUSTER is off"), "{err}");
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let js = jetstream::new(client);
    let streams: Vec<String> = js
        .stream_names()
        .filter_map(|s| async { s.ok() })
        .collect()
        .await;
    assert!(
        !streams.iter().any(|s| s.starts_with("KV_")),
        "a single host made key-value buckets: {streams:?}"
    );
    m1.close().await;
    m2.close().await;
}
