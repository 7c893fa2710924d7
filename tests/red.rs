//! Issue 19, point 3: Opus RED (RFC 2198) end to end with webrtc-rs clients that negotiate
//! it, as Chromium offers it (`red/48000/2`, `111/111`).
//!
//! A speaker that sends RED (one packet of redundancy) loses single packets on its uplink;
//! the SFU rebuilds each from the next packet's redundancy, so a listener without RED gets
//! every packet as plain Opus, and a listener with RED gets every packet as RED, each
//! carrying the probe right before its own.

mod common;

use std::time::Duration;

use beep_webrtc::tools::load::client::Client;
use beep_webrtc::tools::load::client::Upstream::{self, Audio, Lost};
use common::{Front, Permissions, eventually, lost, member_with};

const DBOV: u8 = 30;

async fn join(front: &Front, user: &str, red: bool) -> Client {
    member_with(front, "red", user, |o| o.red = red).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speakers_red_repairs_its_uplink_and_red_listeners_get_redundancy() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let perms = Permissions::start().await;
        let front = Front::start(&perms.url(), &[]).await;
        let speaker = join(&front, "spk", true).await;
        let plain = join(&front, "plain", false).await;
        let with_red = join(&front, "withred", true).await;
        assert!(speaker.answer_sdp.contains("a=rtpmap:63 red/48000/2"));
        assert!(!plain.answer_sdp.contains("red/48000"));

        // A clean second takes the slots; then every seventh packet lost on the way up.
        let mut script: Vec<Upstream> = vec![Audio; 50];
        for i in 0..200 {
            script.push(if i % 7 == 3 { Lost } else { Audio });
        }
        let losses = script.iter().filter(|u| **u == Lost).count() as u64;
        for l in [&plain, &with_red] {
            assert!(
                eventually(Duration::from_secs(10), || l
                    .slot_users()
                    .iter()
                    .any(|u| u.is_none()))
                .await,
                "no slots event"
            );
        }
        speaker
            .send_script("spk", DBOV, &script)
            .await
            .expect("the speaker sends its script");
        let total = script.len() as u64;
        for l in [&plain, &with_red] {
            assert!(
                eventually(Duration::from_secs(5), || l.heard_from("spk") >= total - 60).await,
                "a listener heard {} of {total}",
                l.heard_from("spk")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            lost(&plain, "spk"),
            0,
            "every single uplink loss ({losses}) rebuilt from RED: {:?}",
            plain.streams()
        );
        assert_eq!(lost(&with_red, "spk"), 0);
        let red = with_red.red_received();
        let heard = with_red.heard_from("spk");
        assert_eq!(red.packets, heard, "everything to a RED listener is RED");
        assert!(
            red.with_previous + 2 >= heard,
            "{} of {heard} packets carried the one before",
            red.with_previous
        );
        assert_eq!(plain.red_received().packets, 0);
        // Workers report their counters every few seconds.
        let mut recovered = 0.0;
        for _ in 0..50 {
            recovered = front
                .metric("beep_red_recovered_packets_total")
                .await
                .unwrap_or(0.0);
            if recovered >= losses as f64 - 2.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            recovered >= losses as f64 - 2.0,
            "/metrics counts {recovered} rebuilt of {losses} lost"
        );
        for c in [speaker, plain, with_red] {
            c.close().await;
        }
    })
    .await
    .expect("the RED test finished within 90 s");
}
