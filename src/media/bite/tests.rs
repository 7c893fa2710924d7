//! Cutter tests: scripted speech, silence, loss, reordering, wraps and restarts, and a randomized run.

use super::*;

/// CELT FB 20 ms, mono, with a few bytes of "audio".
const TOC_20MS: u8 = 0xf8;

fn payload(toc: u8) -> Bytes {
    Bytes::from(vec![toc, 0x11, 0x22, 0x33])
}

fn packet(seq: u16, ts: u32, speech: bool) -> AudioPacket {
    AudioPacket {
        ssrc: 7,
        seq,
        timestamp: ts,
        payload: payload(TOC_20MS),
        speech,
    }
}

/// A sender of 20 ms packets with a clock: packet n is sent at n × 20 ms.
struct Sender {
    cutter: BiteCutter,
    t0: Instant,
    unix0: u64,
    seq0: u16,
    ts0: u32,
}

impl Sender {
    fn new(config: CutterConfig) -> Self {
        Sender {
            cutter: BiteCutter::new(config),
            t0: Instant::now(),
            unix0: 1_700_000_000_000,
            seq0: 1000,
            ts0: 50_000,
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Packet `n` arriving at `ms`.
    fn send_at(&mut self, n: u32, ms: u64, speech: bool) {
        let p = packet(
            self.seq0.wrapping_add(n as u16),
            self.ts0.wrapping_add(n * 960),
            speech,
        );
        let now = self.at(ms);
        self.cutter.handle_packet(p, now, self.unix0 + ms);
    }

    /// Packet `n` arriving on time, 20 ms after it started (n × 20 + 20 ms).
    fn send(&mut self, n: u32, speech: bool) {
        self.send_at(n, u64::from(n) * 20 + 20, speech);
    }

    fn bites(&mut self) -> Vec<CutBite> {
        std::iter::from_fn(|| self.cutter.poll_bite()).collect()
    }
}

fn offsets(b: &CutBite) -> Vec<u64> {
    b.packets.iter().map(|p| p.offset).collect()
}

#[test]
fn defaults() {
    let c = CutterConfig::default();
    assert_eq!(c.silence, Duration::from_millis(600));
    assert_eq!(c.max_len, Duration::from_secs(10));
}

#[test]
fn onset_opens_the_bite_at_the_first_speech_packet() {
    let mut s = Sender::new(CutterConfig::default());
    for n in 0..5 {
        s.send(n, false);
    }
    assert!(!s.cutter.is_open());
    for n in 5..15 {
        s.send(n, true);
    }
    assert!(s.cutter.is_open());
    s.cutter.tick(s.at(15 * 20 + 600));
    let bites = s.bites();
    assert_eq!(bites.len(), 1);
    let b = &bites[0];
    // Packet 5 arrived at 120 ms; its first sample was captured 20 ms earlier.
    assert_eq!(b.start_unix_ms, s.unix0 + 100);
    assert_eq!(b.duration, 10 * 960);
    assert_eq!(b.duration_ms(), 200);
    assert_eq!(b.packets.len(), 10);
    assert_eq!(offsets(b), (0..10).map(|i| i * 960).collect::<Vec<_>>());
    assert_eq!(b.end, EndReason::Silence);
    assert!(!b.continued);
    assert_eq!(s.cutter.stats().bites, 1);
}

#[test]
fn silence_closes_by_tick_after_the_last_speech_arrival() {
    let mut s = Sender::new(CutterConfig::default());
    for n in 0..50 {
        s.send(n, true);
    }
    // The last speech packet arrived at 1000 ms: the speaker then goes mute (sends nothing).
    let last = s.at(1000);
    assert_eq!(
        s.cutter.poll_timeout(),
        Some(last + Duration::from_millis(600))
    );
    s.cutter.tick(s.at(1599));
    assert!(s.bites().is_empty());
    assert!(s.cutter.is_open());
    s.cutter.tick(s.at(1600));
    let bites = s.bites();
    assert_eq!(bites.len(), 1);
    assert_eq!(bites[0].duration, 50 * 960);
    assert!(!s.cutter.is_open());
    assert_eq!(s.cutter.poll_timeout(), None);
}

#[test]
fn pauses_are_kept_and_trailing_silence_is_trimmed() {
    let mut s = Sender::new(CutterConfig::default());
    for n in 0..10 {
        s.send(n, true);
    }
    for n in 10..20 {
        s.send(n, false); // a 200 ms pause
    }
    for n in 20..30 {
        s.send(n, true);
    }
    for n in 30..70 {
        s.send(n, false); // 800 ms of silence: closes after 600 ms
    }
    let bites = s.bites();
    assert_eq!(bites.len(), 1);
    let b = &bites[0];
    assert_eq!(b.packets.len(), 30);
    assert!(b.packets[10..20].iter().all(|p| !p.speech));
    assert!(b.packets.last().is_some_and(|p| p.speech));
    assert_eq!(b.duration, 30 * 960);
    // Closed by the packet that arrived 600 ms after the last speech packet (n = 59).
    assert!(!s.cutter.is_open());
}

#[test]
fn max_length_splits_without_gap_or_overlap() {
    let mut s = Sender::new(CutterConfig::default());
    // 25 s of continuous speech.
    let total = 1250u32;
    for n in 0..total {
        s.send(n, true);
    }
    s.cutter.finish(s.at(u64::from(total) * 20 + 20));
    let bites = s.bites();
    assert_eq!(bites.len(), 3);
    assert_eq!(bites[0].duration, 480_000);
    assert_eq!(bites[1].duration, 480_000);
    assert_eq!(bites[2].duration, 240_000);
    assert_eq!(
        bites.iter().map(|b| b.duration).sum::<u64>(),
        u64::from(total) * 960
    );
    assert_eq!(bites[0].end, EndReason::MaxLength);
    assert_eq!(bites[1].end, EndReason::MaxLength);
    assert_eq!(bites[2].end, EndReason::Finished);
    for w in bites.windows(2) {
        assert_eq!(w[1].start_unix_ms, w[0].start_unix_ms + w[0].duration_ms());
        assert_eq!(w[1].media_start, w[0].media_start + w[0].duration);
        assert!(w[1].continued);
        assert_eq!(w[1].packets[0].offset, 0);
    }
    // Every packet exactly once, in order.
    let all: Vec<u64> = bites
        .iter()
        .flat_map(|b| b.packets.iter().map(move |p| b.media_start + p.offset))
        .collect();
    let first = bites[0].media_start;
    assert_eq!(
        all,
        (0..u64::from(total))
            .map(|n| first + n * 960)
            .collect::<Vec<_>>()
    );
}

#[test]
fn max_length_split_carries_a_pause_into_the_continuation() {
    let mut s = Sender::new(CutterConfig::default());
    // Speech up to 9.9 s, a 200 ms pause across the 10 s mark, then speech again.
    for n in 0..495 {
        s.send(n, true);
    }
    for n in 495..505 {
        s.send(n, false);
    }
    for n in 505..520 {
        s.send(n, true);
    }
    s.cutter.finish(s.at(520 * 20 + 20));
    let bites = s.bites();
    assert_eq!(bites.len(), 2);
    assert_eq!(bites[0].duration, 495 * 960);
    assert_eq!(bites[0].packets.len(), 495);
    // The continuation starts with the pause, exactly where the first bite ended.
    assert_eq!(
        bites[1].media_start,
        bites[0].media_start + bites[0].duration
    );
    assert_eq!(bites[1].start_unix_ms, bites[0].start_unix_ms + 9_900);
    assert_eq!(bites[1].packets.len(), 25);
    assert!(!bites[1].packets[0].speech);
    assert_eq!(bites[1].packets[0].offset, 0);
    assert_eq!(bites[1].duration, 25 * 960);
}

#[test]
fn continuation_without_speech_ends_the_utterance() {
    let mut s = Sender::new(CutterConfig {
        silence: Duration::from_secs(60),
        max_len: Duration::from_secs(1),
    });
    for n in 0..50 {
        s.send(n, true); // exactly 1 s
    }
    for n in 50..150 {
        s.send(n, false); // 2 s of non-speech, silence never runs out
    }
    s.send(150, true);
    s.cutter.finish(s.at(4000));
    let bites = s.bites();
    assert_eq!(bites.len(), 2);
    assert_eq!(bites[0].duration, 48_000);
    // The speech after the long non-speech stretch is a new utterance, not a continuation.
    assert!(!bites[1].continued);
    assert_eq!(bites[1].packets.len(), 1);
}

#[test]
fn dtx_keeps_gaps_and_big_timestamp_jumps() {
    let mut s = Sender::new(CutterConfig::default());
    for n in 0..10 {
        s.send(n, true);
    }
    // DTX: one comfort packet 400 ms later (seq + 1, timestamp + 400 ms), then speech
    // again 100 ms after that: a pause inside the bite.
    let ts_dtx = s.ts0 + 10 * 960 + 19_200;
    let p = packet(s.seq0 + 10, ts_dtx, false);
    s.cutter.handle_packet(p, s.at(600), s.unix0 + 600);
    let p = packet(s.seq0 + 11, ts_dtx + 4_800, true);
    s.cutter.handle_packet(p, s.at(700), s.unix0 + 700);
    // Then DTX packets every 400 ms: the bite closes 600 ms after the last speech arrival.
    for k in 1..5u32 {
        let p = packet(s.seq0 + 11 + k as u16, ts_dtx + 4_800 + k * 19_200, false);
        let ms = 700 + u64::from(k) * 400;
        s.cutter.handle_packet(p, s.at(ms), s.unix0 + ms);
    }
    let bites = s.bites();
    assert_eq!(bites.len(), 1);
    let b = &bites[0];
    assert_eq!(b.packets.len(), 12);
    assert_eq!(b.packets[10].offset, 10 * 960 + 19_200);
    assert_eq!(b.packets[11].offset, 10 * 960 + 19_200 + 4_800);
    assert_eq!(b.duration, 10 * 960 + 19_200 + 4_800 + 960);
    assert_eq!(s.cutter.stats().restarts, 0);
}

#[test]
fn loss_leaves_a_gap_in_the_offsets() {
    let mut s = Sender::new(CutterConfig::default());
    for n in (0..20).filter(|n| !(5..9).contains(n)) {
        s.send(n, true);
    }
    s.cutter.finish(s.at(1000));
    let b = s.bites().remove(0);
    assert_eq!(b.packets.len(), 16);
    assert_eq!(b.packets[4].offset, 4 * 960);
    assert_eq!(b.packets[5].offset, 9 * 960);
    assert_eq!(b.duration, 20 * 960);
}

#[test]
fn reordered_packets_are_put_in_order() {
    let mut s = Sender::new(CutterConfig::default());
    for n in [0, 1, 3, 2, 4, 7, 5, 6, 8] {
        s.send_at(n, u64::from(n) * 20 + 40, true);
    }
    s.cutter.finish(s.at(1000));
    let b = s.bites().remove(0);
    assert_eq!(offsets(&b), (0..9).map(|i| i * 960).collect::<Vec<_>>());
    assert_eq!(s.cutter.stats().late, 0);
}

#[test]
fn speech_reordered_before_the_onset_moves_the_start_back() {
    let mut s = Sender::new(CutterConfig::default());
    s.send(8, false);
    s.send_at(10, 240, true); // onset at 240 ms: first sample at 220 ms
    s.send_at(9, 241, true); // reordered: the real onset
    s.send_at(7, 242, false); // non-speech before the onset stays out
    s.send_at(11, 260, true);
    s.cutter.finish(s.at(1000));
    let b = s.bites().remove(0);
    assert_eq!(b.packets.len(), 3);
    assert_eq!(offsets(&b), vec![0, 960, 1920]);
    assert_eq!(b.start_unix_ms, s.unix0 + 200);
}

#[test]
fn packets_older_than_an_emitted_bite_are_dropped_as_late() {
    let mut s = Sender::new(CutterConfig::default());
    for n in 0..10 {
        s.send(n, true);
    }
    s.cutter.tick(s.at(10_000));
    assert_eq!(s.bites().len(), 1);
    // Packet 9 once more, long after its bite was emitted: still remembered as received.
    s.send_at(9, 10_001, true);
    assert_eq!(s.cutter.stats().duplicate, 1);
    // A packet never received before but older than what was emitted.
    let mut s = Sender::new(CutterConfig::default());
    for n in (0..10).filter(|&n| n != 4) {
        s.send(n, true);
    }
    s.cutter.tick(s.at(10_000));
    s.send_at(4, 10_001, true);
    assert_eq!(s.cutter.stats().late, 1);
    assert!(!s.cutter.is_open());
    // Far too old (outside the reorder window, within the restart bound): late.
    for n in 10..110 {
        s.send_at(n, 10_002 + u64::from(n), false);
    }
    s.send_at(20, 10_200, true);
    assert_eq!(s.cutter.stats().late, 2);
    assert_eq!(s.cutter.stats().restarts, 0);
}

#[test]
fn duplicates_are_dropped() {
    let mut s = Sender::new(CutterConfig::default());
    for n in [0, 1, 2, 2, 3, 2, 4, 4] {
        s.send_at(n, 100, true);
    }
    s.cutter.finish(s.at(1000));
    let b = s.bites().remove(0);
    assert_eq!(b.packets.len(), 5);
    assert_eq!(s.cutter.stats().duplicate, 3);
}

#[test]
fn sequence_and_timestamp_wrap_around() {
    let mut s = Sender::new(CutterConfig::default());
    s.seq0 = 65_530;
    s.ts0 = u32::MAX - 5 * 960 + 7;
    for n in 0..20 {
        s.send(n, true);
    }
    s.cutter.finish(s.at(1000));
    let bites = s.bites();
    assert_eq!(bites.len(), 1);
    assert_eq!(
        offsets(&bites[0]),
        (0..20).map(|i| i * 960).collect::<Vec<_>>()
    );
    assert_eq!(bites[0].duration, 20 * 960);
    assert_eq!(s.cutter.stats().restarts, 0);
    // A reordered packet across the wrap.
    let mut s = Sender::new(CutterConfig::default());
    s.seq0 = 65_534;
    s.ts0 = u32::MAX - 960 + 1;
    for n in [0, 1, 3, 2, 4] {
        s.send_at(n, 100, true);
    }
    s.cutter.finish(s.at(1000));
    assert_eq!(offsets(&s.bites()[0]), vec![0, 960, 1920, 2880, 3840]);
}

#[test]
fn long_run_across_many_wraps() {
    // 30 minutes of continuous 20 ms speech: the sequence number wraps 1.4 times, and a
    // timestamp starting near the top wraps too; bites stay contiguous.
    let mut s = Sender::new(CutterConfig::default());
    s.ts0 = u32::MAX - 100;
    let total = 90_000u32;
    for n in 0..total {
        s.send(n, true);
    }
    s.cutter.finish(s.at(u64::from(total) * 20 + 20));
    let bites = s.bites();
    assert_eq!(bites.len(), 180);
    assert_eq!(
        bites.iter().map(|b| b.duration).sum::<u64>(),
        u64::from(total) * 960
    );
    assert_eq!(s.cutter.stats().restarts, 0);
    assert_eq!(s.cutter.stats().late + s.cutter.stats().duplicate, 0);
}

#[test]
fn new_ssrc_closes_the_bite_and_starts_fresh() {
    let mut s = Sender::new(CutterConfig::default());
    for n in 0..10 {
        s.send(n, true);
    }
    let mut p = packet(3, 12, true);
    p.ssrc = 99;
    s.cutter.handle_packet(p, s.at(220), s.unix0 + 220);
    let bites = s.bites();
    assert_eq!(bites.len(), 1);
    assert_eq!(bites[0].end, EndReason::StreamRestart);
    assert_eq!(bites[0].duration, 10 * 960);
    assert!(s.cutter.is_open());
    let mut p = packet(4, 12 + 960, true);
    p.ssrc = 99;
    s.cutter.handle_packet(p, s.at(240), s.unix0 + 240);
    s.cutter.finish(s.at(1000));
    let b = s.bites().remove(0);
    assert_eq!(offsets(&b), vec![0, 960]);
    assert!(b.media_start >= bites[0].media_start + bites[0].duration);
    assert_eq!(s.cutter.stats().restarts, 1);
}

#[test]
fn timestamp_jumps_restart_the_stream() {
    // Backwards with a newer sequence number.
    let mut s = Sender::new(CutterConfig::default());
    for n in 0..10 {
        s.send(n, true);
    }
    let p = packet(s.seq0 + 10, s.ts0.wrapping_sub(100_000), true);
    s.cutter.handle_packet(p, s.at(220), s.unix0 + 220);
    assert_eq!(s.bites()[0].end, EndReason::StreamRestart);
    assert_eq!(s.cutter.stats().restarts, 1);
    // A huge jump forward with no matching wait.
    let mut s = Sender::new(CutterConfig::default());
    for n in 0..10 {
        s.send(n, true);
    }
    let p = packet(s.seq0 + 10, s.ts0 + 10 * 960 + 48_000 * 3600, true);
    s.cutter.handle_packet(p, s.at(220), s.unix0 + 220);
    assert_eq!(s.bites()[0].end, EndReason::StreamRestart);
    // A forward jump that matches the time waited (a muted sender resuming) is no restart.
    let mut s = Sender::new(CutterConfig::default());
    for n in 0..10 {
        s.send(n, true);
    }
    s.send_at(10 + 3000 / 20, 200 + 3000, true);
    assert_eq!(s.cutter.stats().restarts, 0);
    assert_eq!(s.bites().len(), 1);
    // A sequence number far away is a new stream too.
    let mut s = Sender::new(CutterConfig::default());
    for n in 0..10 {
        s.send(n, true);
    }
    s.seq0 = s.seq0.wrapping_add(30_000);
    s.send(10, true);
    assert_eq!(s.cutter.stats().restarts, 1);
}

#[test]
fn restart_with_lower_sequence_numbers_is_found_after_a_run_of_late_packets() {
    let mut s = Sender::new(CutterConfig::default());
    for n in 200..300 {
        s.send(n, true);
    }
    s.cutter.tick(s.at(100_000));
    assert_eq!(s.bites().len(), 1);
    // Same SSRC, numbering restarted 200 below, timestamps behind as well.
    s.seq0 = s.seq0.wrapping_sub(200);
    s.ts0 = s.ts0.wrapping_sub(5_000_000);
    for n in 0..40 {
        s.send_at(n, 100_000 + u64::from(n) * 20, true);
    }
    assert_eq!(s.cutter.stats().restarts, 1);
    assert_eq!(s.cutter.stats().late, u64::from(LATE_RUN_RESTART) - 1);
    s.cutter.finish(s.at(200_000));
    let b = s.bites().remove(0);
    assert_eq!(b.packets.len(), 40 - (LATE_RUN_RESTART as usize - 1));
}

#[test]
fn finish_emits_the_bite_in_progress() {
    let mut s = Sender::new(CutterConfig::default());
    for n in 0..7 {
        s.send(n, true);
    }
    s.send(7, false);
    s.cutter.finish(s.at(170));
    let bites = s.bites();
    assert_eq!(bites.len(), 1);
    assert_eq!(bites[0].end, EndReason::Finished);
    assert_eq!(bites[0].packets.len(), 7);
    // Nothing left, and finishing again is harmless.
    s.cutter.finish(s.at(171));
    assert!(s.bites().is_empty());
}

#[test]
fn invalid_opus_is_dropped_and_counted() {
    let mut s = Sender::new(CutterConfig::default());
    s.send(0, true);
    let mut p = packet(s.seq0 + 1, s.ts0 + 960, true);
    p.payload = Bytes::new();
    s.cutter.handle_packet(p, s.at(40), s.unix0 + 40);
    let mut p = packet(s.seq0 + 2, s.ts0 + 1920, true);
    p.payload = Bytes::from_static(&[0xfb, 0x00]); // code 3, M = 0
    s.cutter.handle_packet(p, s.at(60), s.unix0 + 60);
    let mut p = packet(s.seq0 + 3, s.ts0 + 2880, true);
    p.payload = Bytes::from_static(&[0xf9, 1, 2, 3]); // code 1, odd remainder
    s.cutter.handle_packet(p, s.at(80), s.unix0 + 80);
    s.send(4, true);
    s.cutter.finish(s.at(1000));
    let b = s.bites().remove(0);
    assert_eq!(offsets(&b), vec![0, 4 * 960]);
    assert_eq!(s.cutter.stats().invalid, 3);
}

#[test]
fn overlapping_media_time_is_dropped() {
    let mut s = Sender::new(CutterConfig::default());
    s.send(0, true);
    // A newer sequence number claiming the same timestamp.
    let p = packet(s.seq0 + 1, s.ts0 + 100, true);
    s.cutter.handle_packet(p, s.at(30), s.unix0 + 30);
    s.send(2, true);
    s.cutter.finish(s.at(1000));
    assert_eq!(offsets(&s.bites()[0]), vec![0, 1920]);
    assert_eq!(s.cutter.stats().overlapping, 1);
}

#[test]
fn tiny_and_huge_configurations_do_not_panic() {
    for config in [
        CutterConfig {
            silence: Duration::ZERO,
            max_len: Duration::ZERO,
        },
        CutterConfig {
            silence: Duration::MAX,
            max_len: Duration::MAX,
        },
    ] {
        let mut s = Sender::new(config);
        for n in 0..20 {
            s.send(n, n % 3 != 0);
        }
        let _ = s.cutter.poll_timeout();
        s.cutter.finish(s.at(10_000));
        let bites = s.bites();
        assert!(bites.iter().all(|b| !b.packets.is_empty()));
    }
}

#[test]
fn start_clock_is_unique_and_increasing() {
    let mut c = StartClock::new();
    assert_eq!(c.unique(1000), 1000);
    assert_eq!(c.unique(1000), 1001);
    assert_eq!(c.unique(999), 1002);
    assert_eq!(c.unique(5000), 5000);
    assert_eq!(c.unique(0), 5001);
    let mut c = StartClock::new();
    assert_eq!(c.unique(u64::MAX), u64::MAX);
    assert_eq!(c.unique(3), u64::MAX);
}

/// The randomized run, with its own generator.
mod randomized;
