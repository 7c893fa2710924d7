//! The slot rewriter on scripted packets: continuity across switches, a source's own losses
//! kept as gaps, padding and stragglers.
use super::*;

const A: SourceKey = SourceKey {
    member: SessionId(1),
    ssrc: 0xaaaa,
};
const B: SourceKey = SourceKey {
    member: SessionId(2),
    ssrc: 0xbbbb,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Asserts the slot's output is one gapless, never-backwards stream.
#[derive(Default)]
struct Continuity {
    last: Option<Rewritten>,
    markers: Vec<usize>,
    count: usize,
}

impl Continuity {
    fn push(&mut self, r: Rewritten) {
        if let Some(last) = self.last {
            assert_eq!(
                r.seq,
                last.seq.wrapping_add(1),
                "seq gap after {last:?}: {r:?}"
            );
            assert!(
                !is_after(u64::from(last.ts), u64::from(r.ts), 32),
                "ts backwards: {last:?} then {r:?}"
            );
            assert_eq!(r.ssrc, last.ssrc);
        }
        if r.marker {
            self.markers.push(self.count);
        }
        self.count += 1;
        self.last = Some(r);
    }
}

/// A source sending one 20 ms Opus frame per packet.
struct Src {
    key: SourceKey,
    seq: u16,
    ts: u32,
}

impl Src {
    fn new(key: SourceKey, seq: u16, ts: u32) -> Self {
        Src { key, seq, ts }
    }
    /// The next packet's header, advancing the source.
    fn next(&mut self) -> (SourceKey, u16, u32) {
        let p = (self.key, self.seq, self.ts);
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(960);
        p
    }
}

/// Sends `n` packets from `src` every 20 ms starting at `*now`, checking
/// continuity; leaves `*now` at the time of the last packet.
fn send(rw: &mut SlotRewriter, src: &mut Src, n: usize, now: &mut Instant, c: &mut Continuity) {
    for i in 0..n {
        if i > 0 {
            *now += ms(20);
        }
        let (key, seq, ts) = src.next();
        let r = rw
            .rewrite(key, seq, ts, false, *now)
            .expect("in-order packet dropped");
        c.push(r);
    }
}

#[test]
fn first_packet_uses_slot_starting_points() {
    let mut rw = SlotRewriter::new(77, 1234, 99_000);
    let r = rw.rewrite(A, 5, 5_000, false, Instant::now());
    assert_eq!(
        r,
        Some(Rewritten {
            ssrc: 77,
            seq: 1234,
            ts: 99_000,
            marker: true
        })
    );
    assert_eq!(rw.ssrc(), 77);
}

#[test]
fn continuous_across_a_b_a() {
    let mut rw = SlotRewriter::new(42, 30_000, 7);
    let mut a = Src::new(A, 40_000, 1_000_000);
    let mut b = Src::new(B, 7, 3_000_000_000);
    let mut now = Instant::now();
    let mut c = Continuity::default();

    send(&mut rw, &mut a, 50, &mut now, &mut c);
    now += ms(20);
    send(&mut rw, &mut b, 50, &mut now, &mut c);
    // A kept talking to the SFU meanwhile; its numbers moved on.
    for _ in 0..50 {
        a.next();
    }
    now += ms(20);
    send(&mut rw, &mut a, 50, &mut now, &mut c);

    assert_eq!(c.markers, vec![0, 50, 100]);
    assert_eq!(c.count, 150);
}

#[test]
fn source_sequence_and_timestamp_wrap_pass_through() {
    // The slot's own numbering wraps too.
    let mut rw = SlotRewriter::new(42, 65_533, u32::MAX - 500);
    let mut a = Src::new(A, 65_530, u32::MAX - 2 * 960 + 1);
    let mut b = Src::new(B, 65_535, u32::MAX);
    let mut now = Instant::now();
    let mut c = Continuity::default();

    let mut prev: Option<Rewritten> = None;
    for i in 0..20 {
        if i > 0 {
            now += ms(20);
        }
        let (key, seq, ts) = a.next();
        let r = rw
            .rewrite(key, seq, ts, false, now)
            .expect("dropped across wrap");
        if let Some(p) = prev {
            assert_eq!(r.ts.wrapping_sub(p.ts), 960, "frame spacing kept");
        }
        prev = Some(r);
        c.push(r);
    }
    now += ms(20);
    send(&mut rw, &mut b, 20, &mut now, &mut c);
    assert_eq!(c.markers, vec![0, 20]);
}

#[test]
fn late_packet_from_before_switch_in_is_dropped() {
    let mut rw = SlotRewriter::new(42, 100, 0);
    let mut now = Instant::now();
    let mut c = Continuity::default();
    send(&mut rw, &mut Src::new(A, 100, 0), 10, &mut now, &mut c);

    now += ms(20);
    let mut b = Src::new(B, 5_000, 480_000);
    send(&mut rw, &mut b, 3, &mut now, &mut c);
    // B's packet from before its switch-in point.
    assert_eq!(rw.rewrite(B, 4_999, 480_000 - 960, false, now), None);
    // A straggler from the source just switched away from.
    assert_eq!(rw.rewrite(A, 105, 5 * 960, false, now), None);
    now += ms(20);
    send(&mut rw, &mut b, 1, &mut now, &mut c);
    assert_eq!(c.markers, vec![0, 10]);
}

#[test]
fn late_packet_dropped_across_wrap() {
    let mut rw = SlotRewriter::new(42, 0, 0);
    let now = Instant::now();
    let mut c = Continuity::default();
    for (i, seq) in [65_534u16, 65_535, 0, 1].into_iter().enumerate() {
        let ts = 960 * u32::try_from(i).expect("small");
        c.push(rw.rewrite(B, seq, ts, false, now).expect("in order"));
    }
    assert_eq!(rw.rewrite(B, 65_533, 0, false, now), None);
    c.push(rw.rewrite(B, 2, 4 * 960, false, now).expect("in order"));
}

#[test]
fn bogus_timestamp_before_switch_in_is_dropped() {
    let mut rw = SlotRewriter::new(42, 0, 0);
    let now = Instant::now();
    assert!(rw.rewrite(B, 10, 1_000_000, false, now).is_some());
    assert_eq!(rw.rewrite(B, 11, 500_000, false, now), None);
    let r = rw
        .rewrite(B, 12, 1_000_000 + 2 * 960, false, now)
        .expect("sane packet");
    assert_eq!((r.seq, r.ts), (2, 2 * 960));
}

#[test]
fn marker_on_first_packet_after_switch() {
    let mut rw = SlotRewriter::new(42, 0, 0);
    let t = Instant::now();
    assert!(rw.rewrite(A, 1, 0, false, t).is_some_and(|r| r.marker));
    assert!(
        rw.rewrite(A, 2, 960, false, t + ms(20))
            .is_some_and(|r| !r.marker)
    );
    // The source's own marker passes through.
    assert!(
        rw.rewrite(A, 3, 1920, true, t + ms(40))
            .is_some_and(|r| r.marker)
    );
    assert!(
        rw.rewrite(B, 900, 0, false, t + ms(60))
            .is_some_and(|r| r.marker)
    );
    assert!(
        rw.rewrite(B, 901, 960, false, t + ms(80))
            .is_some_and(|r| !r.marker)
    );
    // A member with a new SSRC is a new source.
    let a2 = SourceKey { ssrc: 0xcccc, ..A };
    assert!(
        rw.rewrite(a2, 50, 0, false, t + ms(100))
            .is_some_and(|r| r.marker)
    );
}

#[test]
fn pause_before_switch_advances_timestamp_by_wall_time() {
    let mut rw = SlotRewriter::new(42, 0, 0);
    let t = Instant::now();
    let a_last = rw.rewrite(A, 1, 0, false, t).expect("first");
    let b_first = rw.rewrite(B, 1, 123, false, t + ms(2000)).expect("switch");
    assert_eq!(b_first.ts.wrapping_sub(a_last.ts), 96_000);
    assert_eq!(b_first.seq, a_last.seq.wrapping_add(1));

    // An immediate switch still moves forward by one frame.
    let a_again = rw
        .rewrite(A, 500, 7, false, t + ms(2001))
        .expect("switch back");
    assert_eq!(a_again.ts.wrapping_sub(b_first.ts), 960);
}

#[test]
fn reordered_packets_within_source_pass() {
    let mut rw = SlotRewriter::new(42, 1000, 0);
    let t = Instant::now();
    let mut out = Vec::new();
    for seq in [1u16, 2, 4, 3, 5] {
        let ts = 960 * (u32::from(seq) - 1);
        out.push(rw.rewrite(A, seq, ts, false, t).expect("reordered passes"));
    }
    let seqs: Vec<u16> = out.iter().map(|r| r.seq).collect();
    let tss: Vec<u32> = out.iter().map(|r| r.ts).collect();
    assert_eq!(seqs, vec![1000, 1001, 1003, 1002, 1004]);
    assert_eq!(tss, vec![0, 960, 2880, 1920, 3840]);

    // The next switch continues after the highest, not the last, packet.
    let b = rw.rewrite(B, 9, 9, false, t + ms(20)).expect("switch");
    assert_eq!(b.seq, 1005);
    assert_eq!(b.ts, 3840 + 960);
}

#[test]
fn long_absent_source_switches_back_in() {
    let mut rw = SlotRewriter::new(42, 0, 0);
    let t = Instant::now();
    assert!(rw.rewrite(A, 100, 0, false, t).is_some());
    assert!(rw.rewrite(B, 1, 0, false, t + ms(20)).is_some());
    // 15 minutes later A's sequence has moved ~45000 on, which reads as
    // "older" in 16-bit arithmetic; past the straggler window it is a
    // switch back, not a straggler.
    let back = t + Duration::from_secs(900);
    let r = rw
        .rewrite(A, 100 + 45_000, 0, false, back)
        .expect("switch back");
    assert!(r.marker);
    assert_eq!(r.seq, 2);
}

#[test]
fn a_source_back_on_a_vacated_slot_starts_a_new_run() {
    let t0 = Instant::now();
    let a = SourceKey {
        member: SessionId(1),
        ssrc: 10,
    };
    let mut rw = SlotRewriter::new(7, 100, 5000);
    let first = rw.rewrite(a, 1000, 0, false, t0).unwrap();
    rw.vacate(t0);
    // A talked on for 12 minutes (36,000 packets) while off the slot, then comes back.
    let back = t0 + Duration::from_secs(720);
    let seq = 1000u16.wrapping_add(36_000);
    let again = rw
        .rewrite(a, seq, 36_000 * 960, false, back)
        .expect("not dropped");
    assert_eq!(
        again.seq,
        first.seq.wrapping_add(1),
        "no gap made by the SFU"
    );
    assert!(again.marker, "a new talkspurt");
    assert!(again.ts.wrapping_sub(first.ts) >= 960);
    let next = rw
        .rewrite(a, seq.wrapping_add(1), 36_001 * 960, false, back)
        .unwrap();
    assert_eq!(next.seq, again.seq.wrapping_add(1));
}

#[test]
fn skipped_padding_leaves_no_gap() {
    let t0 = Instant::now();
    let a = SourceKey {
        member: SessionId(1),
        ssrc: 10,
    };
    let mut rw = SlotRewriter::new(7, 100, 5000);
    let p1 = rw.rewrite(a, 10, 0, false, t0).unwrap();
    rw.skip(a, 11);
    let p2 = rw.rewrite(a, 12, 960, false, t0).unwrap();
    assert_eq!(p2.seq, p1.seq.wrapping_add(1));
    // A skip of another source, or a duplicate, changes nothing.
    rw.skip(
        SourceKey {
            member: SessionId(2),
            ssrc: 3,
        },
        13,
    );
    rw.skip(a, 11);
    let p3 = rw.rewrite(a, 13, 1920, false, t0).unwrap();
    assert_eq!(p3.seq, p2.seq.wrapping_add(1));
}

/// What one upstream packet of a scripted source was.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Up {
    Audio,
    /// Padding only: reaches the SFU, which does not forward it.
    Padding,
    /// Never reached the SFU (audio or padding, the SFU cannot tell).
    Lost,
}

/// Feeds `script` (one entry per upstream sequence number from `first`) to a rewriter
/// in order; returns (upstream seq, slot seq) of every forwarded packet.
fn run_script(rw: &mut SlotRewriter, first: u16, script: &[Up]) -> Vec<(u16, u16)> {
    let t0 = Instant::now();
    let mut out = Vec::new();
    for (i, up) in script.iter().enumerate() {
        let seq = first.wrapping_add(i as u16);
        let ts = 960u32.wrapping_mul(i as u32);
        match up {
            Up::Audio => {
                let r = rw
                    .rewrite(A, seq, ts, false, t0 + ms(20 * i as u64))
                    .expect("in-order audio dropped");
                out.push((seq, r.seq));
            }
            Up::Padding => rw.skip(A, seq),
            Up::Lost => {}
        }
    }
    out
}

/// The slot's gap between two forwarded packets is exactly the packets lost upstream
/// between them: padding that arrived leaves none, whatever came before it.
fn assert_gaps_are_upstream_losses(script: &[Up], first: u16, out: &[(u16, u16)]) {
    for w in out.windows(2) {
        let (a, b) = (w[0], w[1]);
        let from = usize::from(a.0.wrapping_sub(first)) + 1;
        let to = usize::from(b.0.wrapping_sub(first));
        let lost = script[from..to].iter().filter(|u| **u == Up::Lost).count();
        assert_eq!(
            usize::from(b.1.wrapping_sub(a.1)),
            lost + 1,
            "between upstream {} and {}: {:?}",
            a.0,
            b.0,
            &script[from..to]
        );
    }
}

#[test]
fn a_loss_just_before_padding_stays_a_gap_and_the_padding_leaves_none() {
    use Up::*;
    // What Chromium sends while it probes (padding between its audio), with
    // losses on the way in: one before a padding run, two before an audio packet
    // that a padding follows, and a lost padding packet.
    let script = [
        Audio, Lost, Padding, Padding, Audio, Padding, Lost, Lost, Audio, Padding, Audio, Lost,
        Padding, Audio, Padding, Lost, Audio, Audio,
    ];
    let first = 65_530; // across the source's wrap
    let mut rw = SlotRewriter::new(42, 9, 0);
    let out = run_script(&mut rw, first, &script);
    let slot: Vec<u16> = out.iter().map(|o| o.1).collect();
    assert_eq!(slot, vec![9, 11, 14, 15, 17, 19, 20]);
    assert_gaps_are_upstream_losses(&script, first, &out);
}

#[test]
fn random_loss_and_padding_show_exactly_the_upstream_losses() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    for round in 0..200 {
        let script: Vec<Up> = (0..300)
            .map(|_| match rng.random_range(0..10) {
                0 => Up::Lost,
                1..=3 => Up::Padding,
                _ => Up::Audio,
            })
            .collect();
        let first: u16 = rng.random();
        let mut rw = SlotRewriter::new(42, rng.random(), 0);
        // The first packet after the switch-in starts the run.
        let mut script = script;
        script[0] = Up::Audio;
        let out = run_script(&mut rw, first, &script);
        assert!(out.len() > 100, "round {round}");
        assert_gaps_are_upstream_losses(&script, first, &out);
    }
}

#[test]
fn a_late_packet_from_before_a_skip_fills_its_own_hole() {
    let t0 = Instant::now();
    let mut rw = SlotRewriter::new(42, 500, 0);
    let r10 = rw.rewrite(A, 10, 0, false, t0).unwrap();
    // 11 is delayed; 12 is padding; 13 arrives, then 11.
    rw.skip(A, 12);
    let r13 = rw.rewrite(A, 13, 3 * 960, false, t0 + ms(60)).unwrap();
    let r11 = rw.rewrite(A, 11, 960, false, t0 + ms(61)).unwrap();
    let r14 = rw.rewrite(A, 14, 4 * 960, false, t0 + ms(80)).unwrap();
    assert_eq!(
        [r10.seq, r11.seq, r13.seq, r14.seq],
        [500, 501, 502, 503],
        "no gap, no duplicate"
    );
    assert_eq!(r11.ts.wrapping_sub(r10.ts), 960);
}

#[test]
fn a_packet_later_than_the_remembered_skips_is_dropped() {
    let t0 = Instant::now();
    let mut rw = SlotRewriter::new(42, 0, 0);
    rw.rewrite(A, 1000, 0, false, t0).unwrap();
    // 1001 is delayed behind more padding packets than are remembered.
    let n = SKIPS_REMEMBERED as u16 + 1;
    for i in 0..n {
        rw.skip(A, 1002 + i);
    }
    let next = rw
        .rewrite(A, 1002 + n, 960, false, t0 + ms(20))
        .expect("in order");
    assert_eq!(next.seq, 2, "one gap: 1001");
    assert_eq!(rw.rewrite(A, 1001, 960, false, t0 + ms(21)), None);
    // A late packet after the oldest remembered skip still gets its place.
    let mut rw = SlotRewriter::new(42, 0, 0);
    rw.rewrite(A, 1000, 0, false, t0).unwrap();
    for i in 0..n {
        rw.skip(A, 1001 + 2 * i);
    }
    let late = rw.rewrite(A, 1004, 960, false, t0 + ms(20)).expect("kept");
    // Before it: 1000 (slot 0), 1001 and 1003 skipped, 1002 missing.
    assert_eq!(late.seq, 2);
}
