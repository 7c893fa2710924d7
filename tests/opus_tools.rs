//! Checks the bite files the media core makes with the reference tools (Debian `opus-tools`):
//! `opusinfo` must accept them and report the bite's duration, and `opusdec` must decode them to
//! exactly that many samples of the original audio.
//!
//! Real Opus packets come from `opusenc` encoding a `sox` tone; they go through the bite cutter
//! as RTP (with sequence and timestamp wrap-around, loss and a max-length split) and are remuxed
//! by the Ogg writer. No network, no processes of ours: this pins the pure core against the tools.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use beep_webrtc::media::bite::{AudioPacket, BiteCutter, CutBite, CutterConfig};
use beep_webrtc::media::ogg_opus::{BiteTags, PRE_SKIP, write_bite};
use beep_webrtc::media::opus;
use bytes::Bytes;
use common::opus::{
    Tone, encode_tone, first_channel, opusdec, opusinfo, require_tools, tone_share, workdir,
};

const HZ: u32 = 440;

/// Encodes `seconds` of a 440 Hz tone with opusenc (20 ms frames) and returns its packets.
fn tone_packets(dir: &Path, seconds: f64) -> Vec<Bytes> {
    encode_tone(dir, &Tone::new(HZ, seconds))
}

fn total_samples(packets: &[Bytes]) -> u64 {
    packets
        .iter()
        .map(|p| u64::from(opus::packet_samples(p).expect("opusenc made a valid packet")))
        .sum()
}

/// Sends the packets through a cutter as one speaker's RTP stream, sequence numbers and
/// timestamps about to wrap, skipping the packets in `lost`.
fn cut(packets: &[Bytes], lost: &[usize], config: CutterConfig) -> Vec<CutBite> {
    let mut cutter = BiteCutter::new(config);
    let t0 = Instant::now();
    let mut ts = u32::MAX - 10 * 960;
    let mut ms = 0u64;
    for (i, p) in packets.iter().enumerate() {
        let n = opus::packet_samples(p).expect("valid packet");
        ms += u64::from(n) / 48;
        if !lost.contains(&i) {
            let packet = AudioPacket {
                ssrc: 1,
                seq: 65_530u16.wrapping_add(i as u16),
                timestamp: ts,
                payload: p.clone(),
                speech: true,
            };
            cutter.handle_packet(
                packet,
                t0 + Duration::from_millis(ms),
                1_700_000_000_000 + ms,
            );
        }
        ts = ts.wrapping_add(n);
    }
    cutter.finish(t0 + Duration::from_millis(ms + 1));
    std::iter::from_fn(|| cutter.poll_bite()).collect()
}

/// Writes the bite, checks it with opusinfo and opusdec, and returns the decoded samples of
/// its first channel.
fn check_with_tools(dir: &Path, name: &str, bite: &CutBite) -> Vec<i16> {
    let tags = BiteTags {
        conversation: "c",
        user: "u",
        client: "k",
        start_unix_ms: bite.start_unix_ms,
    };
    let file = write_bite(bite, &tags, 0x0bee_0bee).expect("write bite");
    let path = dir.join(format!("{name}.opus"));
    std::fs::write(&path, &file).expect("write file");

    let info = opusinfo(&path);
    println!("opusinfo {name}.opus:\n{}", info.text);
    let ms = bite.duration as f64 / 48.0;
    // opusinfo truncates to whole milliseconds (1.4 s prints as 1.399 s).
    assert!(
        (info.playback_ms - ms).abs() <= 1.0,
        "{name}: opusinfo says {} ms, the bite is {ms} ms",
        info.playback_ms
    );
    assert_eq!(info.pre_skip, u32::from(PRE_SKIP));
    assert_eq!(info.comment("BEEP_USER"), Some("u"));
    assert_eq!(
        info.comment("BEEP_START"),
        Some(bite.start_unix_ms.to_string().as_str())
    );

    let (channels, samples) = opusdec(&path);
    let stereo = bite.packets.iter().any(|p| opus::is_stereo(&p.payload));
    assert_eq!(channels, if stereo { 2 } else { 1 });
    assert_eq!(u32::from(channels), info.channels);
    assert_eq!(
        samples.len() as u64 / u64::from(channels),
        bite.duration,
        "decoded length of {name}"
    );
    first_channel(channels, samples)
}

#[test]
fn one_second_tone_remuxed_plays_exactly() {
    require_tools();
    let dir = workdir("tone");
    let packets = tone_packets(&dir, 1.0);
    let total = total_samples(&packets);
    let bites = cut(&packets, &[], CutterConfig::default());
    assert_eq!(bites.len(), 1);
    assert_eq!(bites[0].duration, total);
    // One second of input plus the encoder's delay, in whole 20 ms packets.
    assert!((48_000..48_000 + 2 * 960).contains(&total), "{total}");
    let pcm = check_with_tools(&dir, "tone", &bites[0]);
    let share = tone_share(&pcm, HZ);
    println!("440 Hz share of the decoded audio: {share:.3}");
    assert!(share > 0.9, "decoded audio is not the tone: {share}");
}

#[test]
fn lost_packets_keep_their_time() {
    require_tools();
    let dir = workdir("loss");
    let packets = tone_packets(&dir, 1.0);
    let total = total_samples(&packets);
    let bites = cut(&packets, &[10, 11, 12, 13, 14, 30], CutterConfig::default());
    assert_eq!(bites.len(), 1);
    assert_eq!(bites[0].duration, total);
    assert_eq!(bites[0].packets.len(), packets.len() - 6);
    let pcm = check_with_tools(&dir, "loss", &bites[0]);
    // Concealment fills the holes; the tone stays the bulk of the audio.
    assert!(tone_share(&pcm, HZ) > 0.5);
}

#[test]
fn max_length_split_bites_add_up() {
    require_tools();
    let dir = workdir("split");
    let packets = tone_packets(&dir, 2.0);
    let total = total_samples(&packets);
    let config = CutterConfig {
        max_len: Duration::from_millis(700),
        ..CutterConfig::default()
    };
    let bites = cut(&packets, &[], config);
    assert_eq!(bites.len(), 3);
    assert_eq!(bites.iter().map(|b| b.duration).sum::<u64>(), total);
    assert!(bites[1].continued && bites[2].continued);
    let mut decoded = 0;
    for (i, b) in bites.iter().enumerate() {
        decoded += check_with_tools(&dir, &format!("split{i}"), b).len() as u64;
    }
    assert_eq!(decoded, total);
}

#[test]
fn silk_and_stereo_streams_with_gaps() {
    require_tools();
    for (name, channels, opts) in [
        // Low bitrate speech settings: libopus picks SILK (a pure tone would otherwise be
        // classified as music and coded with CELT).
        ("silk", 1, vec!["--speech", "--bitrate", "10"]),
        ("stereo", 2, vec![]),
    ] {
        let dir = workdir(name);
        let tone = Tone {
            channels,
            opusenc: opts.into_iter().map(String::from).collect(),
            ..Tone::new(HZ, 1.0)
        };
        let packets = encode_tone(&dir, &tone);
        if name == "silk" {
            assert!(packets.iter().all(|p| opus::mode(p[0]) == opus::Mode::Silk));
        } else {
            assert!(packets.iter().all(|p| opus::is_stereo(p)));
        }
        let total = total_samples(&packets);
        let bites = cut(
            &packets,
            &[0, 1, 7, 20, 21, 22, 23],
            CutterConfig::default(),
        );
        assert_eq!(bites.len(), 1);
        // Packets 0 and 1 were lost: the bite starts at the first packet received.
        assert_eq!(bites[0].duration, total - 2 * 960);
        let pcm = check_with_tools(&dir, name, &bites[0]);
        let share = tone_share(&pcm, HZ);
        println!("{name}: 440 Hz share of the decoded audio: {share:.3}");
        assert!(
            share > 0.5,
            "{name}: decoded audio is not the tone: {share}"
        );
    }
}
