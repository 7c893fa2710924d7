//! Issue 19: a speaker's upstream losses reach every listener as sequence gaps, whatever
//! the speaker sends between its audio (Chromium interleaves padding-only bandwidth
//! probes), and padding-only packets are never forwarded.
//!
//! A webrtc-rs speaker plays a script in which some audio packets are "lost on the way"
//! (their sequence numbers are used, nothing is sent: exactly what an uplink drop looks
//! like to the SFU) and padding-only packets come before, after and between the losses.
//! The webrtc-rs listener's slot stream must show exactly those losses as gaps.

mod common;

use std::time::Duration;

use beep_webrtc::tools::load::client::Upstream::{self, Audio, Lost, Padding};
use common::{Front, Permissions, eventually, lost, member};

/// Loud enough to be a speaker (−30 dBov).
const DBOV: u8 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_losses_reach_the_listener_as_exact_gaps_and_padding_is_not_forwarded() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let perms = Permissions::start().await;
        let front = Front::start(&perms.url(), &[]).await;
        let speaker = member(&front, "loss", "spk").await;
        let listener = member(&front, "loss", "lis").await;

        // One second of clean audio takes the listener's slot; then the pattern: single
        // losses, a loss right before a padding run, a run of three losses, padding right
        // after a loss, padding-only runs with nothing lost, a lost packet between paddings.
        let mut script: Vec<Upstream> = vec![Audio; 50];
        let pattern = [
            Audio, Lost, Audio, Audio, Lost, Padding, Padding, Audio, Padding, Audio, Lost, Lost,
            Lost, Audio, Padding, Lost, Padding, Audio, Padding, Padding, Padding, Audio, Lost,
            Audio, Padding, Audio, Padding, Lost, Padding, Padding, Audio,
        ];
        for _ in 0..4 {
            script.extend_from_slice(&pattern);
            script.extend_from_slice(&[Audio; 10]);
        }
        let losses = script.iter().filter(|u| **u == Lost).count() as u64;
        let runs = script
            .windows(2)
            .filter(|w| w[0] != Lost && w[1] == Lost)
            .count() as u64;
        let audio = script.iter().filter(|u| **u == Audio).count() as u64;
        assert!(
            eventually(Duration::from_secs(10), || listener
                .slot_users()
                .iter()
                .any(|u| u.is_none()))
            .await,
            "no slots event for the listener"
        );
        speaker
            .send_script("spk", DBOV, &script)
            .await
            .expect("speaker sends its script");
        // The last packets' way through the worker.
        let expected_last = audio;
        assert!(
            eventually(Duration::from_secs(5), || listener.heard_from("spk")
                >= expected_last - 60)
            .await,
            "the listener heard {} of the speaker's {audio} audio packets",
            listener.heard_from("spk")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;

        let streams = listener.streams();
        let slot: Vec<_> = streams
            .iter()
            .filter(|(_, s)| s.from.contains_key("spk"))
            .collect();
        assert_eq!(slot.len(), 1, "the speaker on one slot: {streams:?}");
        let st = &slot[0].1;
        // The slot opens when the selector puts the speaker in it (within the clean second);
        // everything from there on arrives.
        let got = st.from["spk"];
        let (lo, hi) = st.counters["spk"];
        assert_eq!(
            u64::from(hi) + 1,
            audio + losses,
            "up to the last packet: {st:?}"
        );
        assert!(lo < 40, "the slot opened late: {st:?}");
        assert_eq!(
            st.packets, got,
            "only audio reaches the listener (no padding): {st:?}"
        );
        assert_eq!(
            lost(&listener, "spk"),
            losses,
            "every lost packet and only those: {st:?}"
        );
        assert_eq!(
            st.seq_missing, losses,
            "the slot's sequence gaps are exactly the upstream losses: {st:?}"
        );
        assert_eq!(st.seq_gaps, runs, "one gap per run of losses: {st:?}");
        assert_eq!(st.ts_backwards, 0, "{st:?}");

        speaker.close().await;
        listener.close().await;
    })
    .await
    .expect("the loss test finished within 90 s");
}

/// Issue 19, points 2 and 4: what a listener reports of its slot streams reaches the worker.
/// The speaker is told (in the SFU's receiver reports about its microphone) at least the
/// worst fraction lost its listeners report, so its encoder adds FEC for the downlink too;
/// the listener's quality event counts the loss of its own downlink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listeners_loss_reaches_the_speaker_in_the_sfus_receiver_reports() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let perms = Permissions::start().await;
        let front = Front::start(&perms.url(), &[]).await;
        let speaker = member(&front, "floor", "spk").await;
        let listener = member(&front, "floor", "lis").await;
        speaker.start_sending("spk", DBOV);
        assert!(
            eventually(Duration::from_secs(10), || listener.heard_from("spk") > 50).await,
            "the listener did not hear the speaker"
        );
        // The SFU reports the speaker's clean uplink (a report a second).
        assert!(
            eventually(Duration::from_secs(5), || !speaker.told_lost().is_empty()).await,
            "no receiver report about the microphone reached the speaker"
        );
        assert!(
            speaker.told_lost().iter().all(|&f| f < 8),
            "a clean uplink reported lossy: {:?}",
            speaker.told_lost()
        );

        // The listener's downlink loses a quarter (64/256) of the speaker's slot stream.
        let slot_ssrc = listener
            .streams()
            .iter()
            .find(|(_, s)| s.from.contains_key("spk"))
            .map(|(ssrc, _)| *ssrc)
            .expect("the speaker's slot stream");
        let told_before = speaker.told_lost().len();
        for _ in 0..3 {
            listener
                .report_loss(slot_ssrc, 64)
                .await
                .expect("the listener sends its report");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            eventually(Duration::from_secs(5), || speaker.told_lost()
                [told_before..]
                .iter()
                .any(|&f| f >= 64))
            .await,
            "the speaker was not told its listener's loss: {:?}",
            &speaker.told_lost()[told_before..]
        );
        // The listener's own score counts its downlink: a quarter lost is a bad call.
        assert!(
            eventually(Duration::from_secs(6), || listener.events().iter().any(
                |e| {
                    e["type"] == "quality"
                        && e["loss"].as_f64().is_some_and(|l| l >= 0.25)
                        && e["score"].as_u64().is_some_and(|s| s <= 2)
                }
            ))
            .await,
            "no quality event counting the listener's downlink loss: {:?}",
            listener.events()
        );
        speaker.stop_sending();
        speaker.close().await;
        listener.close().await;
    })
    .await
    .expect("the floor test finished within 90 s");
}
