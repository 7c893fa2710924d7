//! Issue 19, point 3: a listener that negotiates NACK gets back what its downlink lost.
//!
//! In a network namespace of its own, an nftables rule drops one in ten of the worker's
//! Opus packets on their way in to the listener (the input hook: the loss a real downlink
//! makes). The listener is a webrtc-rs client asking for generic NACK on Opus; its NACK
//! generator names what is missing, the worker resends each from the slot's history (the
//! very packet, at its number), and in the end the listener misses nothing. A retransmission
//! only ever helps a packet that really was lost: SRTP's replay protection drops a second
//! copy of one that arrived.

mod common;

use std::process::Command;
use std::time::Duration;

use common::netns::inside_namespace;
use common::{Front, Permissions, eventually, lost, member_with};

const TABLE: &str = "beep_nack_test";

fn nft(args: &[&str]) -> String {
    let out = Command::new("nft")
        .args(args)
        .output()
        .expect("nft (nftables); scripts/test installs it");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The worker's UDP port, from the answer's host candidate.
fn worker_port(answer: &str) -> String {
    answer
        .lines()
        .find(|l| l.starts_with("a=candidate:") && l.to_ascii_lowercase().contains(" udp "))
        .and_then(|l| l.split_whitespace().nth(5))
        .expect("a UDP candidate in the answer")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_negotiated_nack_gets_back_what_its_downlink_lost() {
    if !inside_namespace("a_listener_that_negotiated_nack_gets_back_what_its_downlink_lost") {
        return;
    }
    tokio::time::timeout(Duration::from_secs(90), async {
        let perms = Permissions::start().await;
        let front = Front::start(&perms.url(), &[("BITES", "off")]).await;
        let speaker = member_with(&front, "nack", "spk", |_| {}).await;
        let listener = member_with(&front, "nack", "lis", |o| o.nack = true).await;
        assert!(
            listener.answer_sdp.contains("a=rtcp-fb:111 nack"),
            "{}",
            listener.answer_sdp
        );
        assert!(!speaker.answer_sdp.contains("nack"));
        speaker.start_sending("spk", 30);
        assert!(
            eventually(Duration::from_secs(10), || listener.heard_from("spk") > 50).await,
            "the listener did not hear the speaker"
        );

        // One in ten of the worker's Opus packets (payload type 111) lost on the way in.
        let port = worker_port(&listener.answer_sdp);
        nft(&["add", "table", "inet", TABLE]);
        nft(&[
            "add",
            "chain",
            "inet",
            TABLE,
            "in",
            "{ type filter hook input priority 0 ; }",
        ]);
        nft(&[
            "add", "rule", "inet", TABLE, "in", "udp", "sport", &port, "@th,73,7", "111", "numgen",
            "random", "mod", "10", "==", "0", "counter", "drop",
        ]);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let rules = nft(&["list", "table", "inet", TABLE]);
        nft(&["delete", "table", "inet", TABLE]);
        speaker.stop_sending();
        tokio::time::sleep(Duration::from_millis(500)).await;

        let dropped: u64 = rules
            .split("packets ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("the rule's counter");
        let (_, st) = listener
            .streams()
            .into_iter()
            .find(|(_, s)| s.from.contains_key("spk"))
            .expect("the speaker's slot stream");
        eprintln!(
            "nft dropped {dropped} of the worker's packets to the listener; the listener got {} \
             packets, {} out of order (resent), misses {}",
            st.packets,
            st.ts_backwards,
            lost(&listener, "spk")
        );
        assert!(dropped >= 10, "the rule dropped only {dropped}");
        assert_eq!(
            lost(&listener, "spk"),
            0,
            "every dropped packet came again: {st:?}"
        );
        let mut resent = 0.0;
        for _ in 0..50 {
            resent = front
                .metric("beep_nack_retransmitted_packets_total")
                .await
                .unwrap_or(0.0);
            if resent >= dropped as f64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            resent >= dropped as f64,
            "/metrics counts {resent} resent for {dropped} dropped"
        );
        speaker.close().await;
        listener.close().await;
    })
    .await
    .expect("the NACK test finished within 90 s");
}
