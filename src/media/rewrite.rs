//! One outgoing slot stream: making a run of different speakers look like a
//! single continuous RTP stream.
//!
//! A listener's slot is negotiated once as one receive stream, but the
//! speaker feeding it changes over time. Forwarding each speaker's headers
//! unchanged would make the receiver see its SSRC, sequence numbers and
//! timestamps jump around; its jitter buffer would take a backwards jump for
//! late or reordered audio and discard or stall. So every packet routed to the
//! slot is rewritten onto the slot's own SSRC with:
//!
//! - sequence numbers that continue exactly where the last packet on the slot
//!   left off when the source changes (the SFU never makes a gap; a source's
//!   own losses still show as its own gaps), and that close up over the
//!   padding-only packets the SFU does not forward ([`SlotRewriter::skip`]),
//!   even when a loss comes just before one, and
//! - timestamps that always move forward across a switch, by the wall-clock
//!   pause converted to 48 kHz ticks and never less than one 20 ms frame, with
//!   the marker bit set on the first packet of the new source so the receiver
//!   treats it as the start of a talkspurt.
//!
//! Within one source the mapping is a fixed offset in wrapping arithmetic, so
//! the source's own 16-bit sequence and 32-bit timestamp wraps, losses and
//! reordering pass through untouched.
//!
//! Packets that would break those promises are dropped: anything from before
//! the current source's switch-in point (by sequence number, or by timestamp
//! for a bogus stream whose clock steps back), and stragglers from the source
//! just switched away from. Sans-I/O: headers and time in, headers out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::wire::ids::SessionId;

/// Identifies an incoming stream: the member and its SSRC (a member that changes SSRC is a new source).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub member: SessionId,
    pub ssrc: u32,
}

/// The header fields to send for one rewritten packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewritten {
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    pub marker: bool,
}

/// RTP clock rate of Opus (RFC 7587), whatever rate the codec actually runs at.
const CLOCK_RATE: u128 = 48_000;

/// The least a switch advances the timestamp: one 20 ms Opus frame, so the
/// new source's first packet never lands on top of the previous one's.
const MIN_SWITCH_TICKS: u32 = 960;

/// Cap on the pause-derived jump. Past 2^31 a 32-bit timestamp reads as a
/// step backwards in serial-number arithmetic; 2^30 (about 6 h) stays clear.
const MAX_SWITCH_TICKS: u32 = 1 << 30;

/// How long after a switch packets from the old source are taken for late
/// stragglers rather than a switch back. Bounded because after long enough
/// the old source's sequence numbers wrap round and a genuine return would
/// look old; network reordering is far shorter than this.
const STRAGGLER_WINDOW: Duration = Duration::from_secs(2);

/// How many skipped padding packets of the current source are remembered, to
/// number a late (reordered) packet from before them where it belongs. Chromium
/// sends its bandwidth probes in bursts of a few dozen; 64 covers about a
/// second of them, longer than any jitter buffer waits for a late packet.
const SKIPS_REMEMBERED: usize = 64;

/// Rewrites whatever source currently feeds one slot onto the slot's own stream.
pub struct SlotRewriter {
    ssrc: u32,
    first_seq: u16,
    first_ts: u32,
    /// What has gone out on the slot; None until the first packet.
    sent: Option<Sent>,
    current: Option<Current>,
    previous: Option<Previous>,
}

struct Sent {
    /// Highest sequence number and timestamp sent (reordered packets can go
    /// out after higher ones, so "last" would not do).
    top_seq: u16,
    top_ts: u32,
    /// Wall time of the most recent packet sent.
    at: Instant,
}

struct Current {
    key: SourceKey,
    /// Source to slot numbers for packets after every remembered skip: one
    /// less for each padding packet skipped since the switch-in.
    seq_offset: u16,
    /// The padding packets skipped most recently (extended numbers, rising):
    /// a late packet from before some of them moves down only by those before
    /// it, into the hole the SFU left for it.
    skipped: VecDeque<i64>,
    /// Packets before this (extended) number came after [`SKIPS_REMEMBERED`]
    /// more skips than are remembered; there is no telling their number, so
    /// they are dropped.
    skip_floor: i64,
    ts_offset: u32,
    /// The source's sequence numbers and timestamps extended to 64 bits (the
    /// bits above 16 / 32 count its rollovers), so "before the switch-in
    /// point" survives its wraps however long it stays in the slot.
    switch_in_seq: i64,
    top_seq: i64,
    switch_in_ts: i64,
    top_ts: i64,
}

struct Previous {
    key: SourceKey,
    top_seq: u16,
    left_at: Instant,
}

impl SlotRewriter {
    /// `ssrc` is the slot's own SSRC; `first_seq`/`first_ts` its random starting points.
    pub fn new(ssrc: u32, first_seq: u16, first_ts: u32) -> Self {
        SlotRewriter {
            ssrc,
            first_seq,
            first_ts,
            sent: None,
            current: None,
            previous: None,
        }
    }

    /// A packet from `source` (clock rate 48 kHz, Opus) that the selector routes to this slot.
    ///
    /// A source other than the current one starts a new run on the slot,
    /// except a packet from the source switched away from less than
    /// [`STRAGGLER_WINDOW`] ago that is not newer than what it already sent:
    /// that is a late straggler and is dropped. Also dropped (None): packets
    /// of the current source from before its switch-in point, by sequence
    /// number or by timestamp.
    pub fn rewrite(
        &mut self,
        source: SourceKey,
        seq: u16,
        ts: u32,
        marker: bool,
        now: Instant,
    ) -> Option<Rewritten> {
        let switching = self.current.as_ref().is_none_or(|c| c.key != source);
        if switching {
            if self.is_straggler(source, seq, now) {
                return None;
            }
            self.switch_to(source, seq, ts, now);
        }
        let cur = self.current.as_mut()?;

        let ext_seq = extend(cur.top_seq, u64::from(seq), 16);
        let ext_ts = extend(cur.top_ts, u64::from(ts), 32);
        if ext_seq < cur.switch_in_seq || ext_seq < cur.skip_floor || ext_ts < cur.switch_in_ts {
            return None;
        }
        cur.top_seq = cur.top_seq.max(ext_seq);
        cur.top_ts = cur.top_ts.max(ext_ts);
        // Skips after this packet (it is late) do not move it down.
        let later_skips = cur
            .skipped
            .iter()
            .rev()
            .take_while(|&&s| s > ext_seq)
            .count();

        let out = Rewritten {
            ssrc: self.ssrc,
            seq: seq
                .wrapping_add(cur.seq_offset)
                .wrapping_add(later_skips as u16),
            ts: ts.wrapping_add(cur.ts_offset),
            marker: marker || switching,
        };
        self.note_sent(out, now);
        Some(out)
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The selector took the current source off this slot. Whoever feeds it next, even the
    /// same source after a pause, starts a new run: continuing the old offset would turn
    /// every packet the source sent meanwhile into a gap (and after ~11 minutes its
    /// sequence numbers would wrap to "before the switch-in point" and all be dropped).
    pub fn vacate(&mut self, now: Instant) {
        if let Some(old) = self.current.take() {
            self.previous = Some(Previous {
                key: old.key,
                top_seq: (old.top_seq & 0xffff) as u16,
                left_at: now,
            });
        }
    }

    /// A packet of `source` that is not forwarded (padding only, no audio). When it is newer
    /// than anything the current source sent, every later packet moves down by one, so
    /// the slot shows no gap the SFU made; the numbers missing before it (upstream losses,
    /// or packets still on their way) keep their places, so a loss just before a padding
    /// packet still shows as the source's own gap, and a late packet fills its hole.
    ///
    /// A padding packet that is itself late (reordered behind a later packet) changes
    /// nothing: the packets after it are already out, so its number stays a gap.
    pub fn skip(&mut self, source: SourceKey, seq: u16) {
        if let Some(cur) = self.current.as_mut().filter(|c| c.key == source) {
            let ext = extend(cur.top_seq, u64::from(seq), 16);
            if ext > cur.top_seq {
                cur.top_seq = ext;
                cur.seq_offset = cur.seq_offset.wrapping_sub(1);
                if cur.skipped.len() == SKIPS_REMEMBERED
                    && let Some(oldest) = cur.skipped.pop_front()
                {
                    cur.skip_floor = oldest;
                }
                cur.skipped.push_back(ext);
            }
        }
    }

    fn is_straggler(&self, source: SourceKey, seq: u16, now: Instant) -> bool {
        self.previous.as_ref().is_some_and(|p| {
            p.key == source
                && now.saturating_duration_since(p.left_at) < STRAGGLER_WINDOW
                && !is_after(u64::from(seq), u64::from(p.top_seq), 16)
        })
    }

    fn switch_to(&mut self, source: SourceKey, seq: u16, ts: u32, now: Instant) {
        let (out_seq, out_ts) = match &self.sent {
            None => (self.first_seq, self.first_ts),
            Some(sent) => {
                let pause = ticks(now.saturating_duration_since(sent.at));
                let jump = pause.clamp(MIN_SWITCH_TICKS, MAX_SWITCH_TICKS);
                (sent.top_seq.wrapping_add(1), sent.top_ts.wrapping_add(jump))
            }
        };
        if let Some(old) = self.current.take() {
            self.previous = Some(Previous {
                key: old.key,
                // Low 16 bits of the extended number: the wire value.
                top_seq: (old.top_seq & 0xffff) as u16,
                left_at: now,
            });
        }
        self.current = Some(Current {
            key: source,
            seq_offset: out_seq.wrapping_sub(seq),
            skipped: VecDeque::new(),
            skip_floor: i64::MIN,
            ts_offset: out_ts.wrapping_sub(ts),
            switch_in_seq: i64::from(seq),
            top_seq: i64::from(seq),
            switch_in_ts: i64::from(ts),
            top_ts: i64::from(ts),
        });
    }

    fn note_sent(&mut self, out: Rewritten, now: Instant) {
        match &mut self.sent {
            None => {
                self.sent = Some(Sent {
                    top_seq: out.seq,
                    top_ts: out.ts,
                    at: now,
                });
            }
            Some(sent) => {
                if is_after(u64::from(out.seq), u64::from(sent.top_seq), 16) {
                    sent.top_seq = out.seq;
                }
                if is_after(u64::from(out.ts), u64::from(sent.top_ts), 32) {
                    sent.top_ts = out.ts;
                }
                sent.at = sent.at.max(now);
            }
        }
    }
}

/// Whether `a` comes after `b` in `bits`-bit serial-number arithmetic.
fn is_after(a: u64, b: u64, bits: u32) -> bool {
    let half = 1u64 << (bits - 1);
    let diff = a.wrapping_sub(b) & ((1u64 << bits) - 1);
    diff != 0 && diff < half
}

/// Extends a `bits`-bit wire value to the one nearest `reference`, an
/// already extended value: the usual rollover tracking, done as a signed
/// distance so reordering on either side of a wrap lands correctly.
fn extend(reference: i64, value: u64, bits: u32) -> i64 {
    let modulus = 1i64 << bits;
    let half = modulus / 2;
    let reference_low = reference.rem_euclid(modulus);
    let value = i64::try_from(value).unwrap_or(0).rem_euclid(modulus);
    let mut delta = value - reference_low;
    if delta >= half {
        delta -= modulus;
    } else if delta < -half {
        delta += modulus;
    }
    reference + delta
}

/// Wall time in 48 kHz ticks, saturating (the caller caps it anyway).
fn ticks(d: Duration) -> u32 {
    u32::try_from(d.as_nanos() * CLOCK_RATE / 1_000_000_000).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
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
}
