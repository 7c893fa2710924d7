//! Fuzz and property targets for the media core's promises (SPEC §4, the module docs of
//! src/media/rewrite.rs): each slot is one continuous outgoing RTP stream (its own SSRC,
//! sequence numbers without gaps the SFU made, timestamps that never go backwards across a
//! speaker switch, the marker bit on a switch), whatever the speakers send and whenever.
//!
//! - `fuzz_rewriter_continuity`: one `SlotRewriter` fed any sequence of packets from three
//!   sources (in order, lost, reordered, repeated, wrapped, bogus), vacates and skipped
//!   padding, at any times.
//! - `fuzz_room_on_rtp`: a whole `Room` (selector, rewriters, bite cutters, member caps) with
//!   members joining, going live and leaving, talking, sending odd packets and padding, and
//!   time passing; every forward is checked, every slot stream is continuous, and bites come
//!   out in start order.
//!
//! Plain `cargo test` runs each target on a bounded number of random inputs; `cargo bolero
//! test <target>` runs it under libFuzzer (README, "How to fuzz").

#[path = "common/fuzz_budget.rs"]
mod fuzz_budget;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use beep_webrtc::media::bite::CutterConfig;
use beep_webrtc::media::rewrite::{Rewritten, SlotRewriter, SourceKey};
use beep_webrtc::media::room::{Forward, MemberLimits, Room, RoomEvent, SlotOutput};
use beep_webrtc::wire::identity::Identity;
use beep_webrtc::wire::ids::SessionId;
use beep_webrtc::wire::signal::Event;
use bolero::{TypeGenerator, check, produce};
use bytes::Bytes;
use rtc::rtp;

/// One 20 ms Opus frame in 48 kHz RTP ticks.
const FRAME: u32 = 960;

/// Whether `a` comes after `b` in `bits`-bit serial-number arithmetic (RFC 1982).
fn is_after(a: u64, b: u64, bits: u32) -> bool {
    let half = 1u64 << (bits - 1);
    let diff = a.wrapping_sub(b) & ((1u64 << bits) - 1);
    diff != 0 && diff < half
}

/// What one slot has sent, checked packet by packet against the promises.
struct SlotStream {
    ssrc: u32,
    first: (u16, u32),
    /// Highest sequence number and timestamp sent (serial arithmetic).
    top: Option<(u16, u32)>,
    run: Option<Run>,
    /// The slot was vacated since its last packet (known to the rewriter target only).
    vacated: bool,
}

/// The current run: one source on the slot, mapped with fixed offsets.
struct Run {
    source: SourceKey,
    seq_offset: u16,
    ts_offset: u32,
    /// Padding packets of this source skipped since the run began: each may take one off the
    /// sequence offset of the packets after it (so the slot shows no gap the SFU made), while
    /// a late packet from before it keeps the offset it had (`seq_offset` is the run's first).
    skipped: u16,
}

impl SlotStream {
    fn new(ssrc: u32, first_seq: u16, first_ts: u32) -> Self {
        SlotStream {
            ssrc,
            first: (first_seq, first_ts),
            top: None,
            run: None,
            vacated: false,
        }
    }

    /// A padding packet of `source` was skipped.
    fn skipped(&mut self, source: SourceKey) {
        if let Some(run) = self.run.as_mut().filter(|r| r.source == source) {
            run.skipped = run.skipped.saturating_add(1);
        }
    }

    /// `out` was sent for `source`'s packet (`seq`, `ts`, `marker`). `known_runs`: the
    /// caller knows every vacate (so a run of the same source must continue unless vacated).
    fn sent(
        &mut self,
        source: SourceKey,
        (seq, ts, marker): (u16, u32, bool),
        out: Rewritten,
        known_runs: bool,
        context: &dyn Fn() -> String,
    ) {
        assert_eq!(out.ssrc, self.ssrc, "the slot's own SSRC: {}", context());
        let seq_offset = out.seq.wrapping_sub(seq);
        let ts_offset = out.ts.wrapping_sub(ts);
        let same_source = self.run.as_ref().is_some_and(|r| r.source == source);
        match self.top {
            None => {
                assert_eq!(
                    (out.seq, out.ts),
                    self.first,
                    "the slot's first packet starts at its own numbers: {}",
                    context()
                );
                assert!(out.marker, "first packet has the marker: {}", context());
            }
            Some((top_seq, top_ts)) => {
                let new_run = out.seq == top_seq.wrapping_add(1)
                    && is_after(u64::from(out.ts), u64::from(top_ts), 32)
                    && out.marker;
                let continues = same_source
                    && self.run.as_ref().is_some_and(|r| {
                        r.ts_offset == ts_offset
                            && r.seq_offset.wrapping_sub(seq_offset) <= r.skipped
                            && out.marker == marker
                    });
                if !same_source || (known_runs && self.vacated) {
                    assert!(
                        new_run,
                        "a new source on the slot must continue at seq {} with a timestamp after {} and the marker, got {out:?}: {}",
                        top_seq.wrapping_add(1),
                        top_ts,
                        context()
                    );
                } else {
                    assert!(
                        continues || (!known_runs && new_run),
                        "the same source must keep its offsets (less skipped padding), got {out:?} for seq {seq} ts {ts} (top {top_seq}/{top_ts}): {}",
                        context()
                    );
                }
            }
        }
        let top = self.top.get_or_insert((out.seq, out.ts));
        if is_after(u64::from(out.seq), u64::from(top.0), 16) {
            top.0 = out.seq;
        }
        if is_after(u64::from(out.ts), u64::from(top.1), 32) {
            top.1 = out.ts;
        }
        // A run that goes on keeps its first offset and counts every skip since: a packet
        // from before a skip keeps the offset it had then, a later one takes one off per skip.
        let goes_on = same_source
            && !(known_runs && self.vacated)
            && self.run.as_ref().is_some_and(|r| {
                r.ts_offset == ts_offset && r.seq_offset.wrapping_sub(seq_offset) <= r.skipped
            });
        self.run = Some(match self.run.take() {
            Some(r) if goes_on => Run { source, ..r },
            _ => Run {
                source,
                seq_offset,
                ts_offset,
                skipped: 0,
            },
        });
        self.vacated = false;
    }
}

/// How a source's next sequence number follows its last one.
#[derive(Debug, TypeGenerator)]
enum SeqStep {
    Next,
    Same,
    Ahead(u8),
    Back(u8),
    Any(u16),
}

/// How a source's next timestamp follows its last one.
#[derive(Debug, TypeGenerator)]
enum TsStep {
    Frame,
    Same,
    Ahead(u16),
    Back(u16),
    Any(u32),
}

/// Time passing before an operation.
#[derive(Debug, TypeGenerator)]
enum Wait {
    None,
    Frame,
    Ms(u8),
    Long(u16),
    /// Seconds: long pauses (timestamp jump caps, straggler window, sequence wraps).
    Hours(u16),
}

impl Wait {
    fn duration(&self) -> Duration {
        match self {
            Wait::None => Duration::ZERO,
            Wait::Frame => Duration::from_millis(20),
            Wait::Ms(ms) => Duration::from_millis(u64::from(*ms)),
            Wait::Long(ms) => Duration::from_millis(u64::from(*ms) * 10),
            Wait::Hours(s) => Duration::from_secs(u64::from(*s) * 3),
        }
    }
}

/// A source's numbering, moved by the generated steps.
#[derive(Clone, Copy, Default)]
struct Numbering {
    seq: u16,
    ts: u32,
}

impl Numbering {
    fn step(&mut self, seq: &SeqStep, ts: &TsStep) -> (u16, u32) {
        self.seq = match seq {
            SeqStep::Next => self.seq.wrapping_add(1),
            SeqStep::Same => self.seq,
            SeqStep::Ahead(n) => self.seq.wrapping_add(u16::from(*n) + 1),
            SeqStep::Back(n) => self.seq.wrapping_sub(u16::from(*n) + 1),
            SeqStep::Any(s) => *s,
        };
        self.ts = match ts {
            TsStep::Frame => self.ts.wrapping_add(FRAME),
            TsStep::Same => self.ts,
            TsStep::Ahead(n) => self.ts.wrapping_add(u32::from(*n)),
            TsStep::Back(n) => self.ts.wrapping_sub(u32::from(*n)),
            TsStep::Any(t) => *t,
        };
        (self.seq, self.ts)
    }
}

// ---------------------------------------------------------------------------------------
// The rewriter alone.

#[derive(Debug, TypeGenerator)]
struct RewriterCase {
    first_seq: u16,
    first_ts: u32,
    /// Where each of the three sources starts numbering.
    starts: [(u16, u32); 3],
    #[generator(produce::<Vec<RwOp>>().with().len(0usize..=256))]
    ops: Vec<RwOp>,
}

#[derive(Debug, TypeGenerator)]
enum RwOp {
    Packet {
        source: u8,
        seq: SeqStep,
        ts: TsStep,
        marker: bool,
        wait: Wait,
    },
    /// A source sends a run of in-order packets 20 ms apart.
    Talk {
        source: u8,
        count: u8,
    },
    Vacate {
        wait: Wait,
    },
    Skip {
        source: u8,
        seq: SeqStep,
    },
}

const SOURCES: [SourceKey; 3] = [
    SourceKey {
        member: SessionId(1),
        ssrc: 0x1111,
    },
    SourceKey {
        member: SessionId(2),
        ssrc: 0x2222,
    },
    // The first member again, with a new SSRC: a new source.
    SourceKey {
        member: SessionId(1),
        ssrc: 0x3333,
    },
];

#[test]
fn fuzz_rewriter_continuity() {
    check!()
        .with_type::<RewriterCase>()
        .with_iterations(fuzz_budget::iterations(2_000))
        .for_each(rewriter_case);
}

fn rewriter_case(case: &RewriterCase) {
    const SLOT_SSRC: u32 = 0xABCD;
    let mut rw = SlotRewriter::new(SLOT_SSRC, case.first_seq, case.first_ts);
    let mut slot = SlotStream::new(SLOT_SSRC, case.first_seq, case.first_ts);
    let mut numbering = case.starts.map(|(seq, ts)| Numbering { seq, ts });
    let mut now = Instant::now();
    let mut step = 0usize;
    // The source on the slot (none after a vacate) and the one before it.
    let mut current: Option<SourceKey> = None;
    let mut previous: Option<SourceKey> = None;
    let mut send = |source: usize,
                    seq: u16,
                    ts: u32,
                    marker: bool,
                    now: Instant,
                    rw: &mut SlotRewriter,
                    slot: &mut SlotStream,
                    step: usize,
                    vacate: bool| {
        if vacate {
            if current.is_some() {
                previous = current.take();
            }
            return None;
        }
        let key = SOURCES[source];
        let out = rw.rewrite(key, seq, ts, marker, now);
        if let Some(out) = out {
            slot.sent(key, (seq, ts, marker), out, true, &|| {
                format!("step {step} of {case:?}")
            });
            if current != Some(key) {
                if current.is_some() {
                    previous = current;
                }
                current = Some(key);
            }
        } else {
            // Only the current source's packets from before its switch-in point and the
            // last source's stragglers are dropped: any other source gets on at once.
            assert!(
                current == Some(key) || previous == Some(key),
                "a packet of a source new to the slot was dropped: step {step} of {case:?}"
            );
        }
        out
    };
    for op in &case.ops {
        step += 1;
        match op {
            RwOp::Packet {
                source,
                seq,
                ts,
                marker,
                wait,
            } => {
                now += wait.duration();
                let s = usize::from(*source) % SOURCES.len();
                let (seq, ts) = numbering[s].step(seq, ts);
                send(s, seq, ts, *marker, now, &mut rw, &mut slot, step, false);
            }
            RwOp::Talk { source, count } => {
                let s = usize::from(*source) % SOURCES.len();
                let mut last_sent = false;
                for _ in 0..count % 64 {
                    now += Duration::from_millis(20);
                    let (seq, ts) = numbering[s].step(&SeqStep::Next, &TsStep::Frame);
                    let out = send(s, seq, ts, false, now, &mut rw, &mut slot, step, false);
                    // The packet after one that went out on the slot, in order, goes out too.
                    assert!(
                        out.is_some() || !last_sent,
                        "in-order packet dropped: step {step} of {case:?}"
                    );
                    last_sent = out.is_some();
                }
            }
            RwOp::Vacate { wait } => {
                now += wait.duration();
                rw.vacate(now);
                send(0, 0, 0, false, now, &mut rw, &mut slot, step, true);
                if slot.run.is_some() {
                    slot.vacated = true;
                }
            }
            RwOp::Skip { source, seq } => {
                let s = usize::from(*source) % SOURCES.len();
                let (seq, _) = numbering[s].step(seq, &TsStep::Same);
                rw.skip(SOURCES[s], seq);
                slot.skipped(SOURCES[s]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The whole room.

#[derive(Debug, TypeGenerator)]
struct RoomCase {
    bites: bool,
    /// Member caps: packets and bytes per second.
    limits: Option<(u16, u32)>,
    #[generator(produce::<Vec<RoomOp>>().with().len(0usize..=96))]
    ops: Vec<RoomOp>,
}

#[derive(Debug, TypeGenerator)]
enum RoomOp {
    Join {
        slots: u8,
        level_ext: bool,
        first_seq: u16,
        first_ts: u32,
        live: bool,
    },
    Live {
        who: u8,
    },
    Leave {
        who: u8,
    },
    /// One packet, of any shape.
    Packet {
        who: u8,
        other_ssrc: bool,
        seq: SeqStep,
        ts: TsStep,
        marker: bool,
        len: u8,
        level: Option<u8>,
        wait: Wait,
    },
    /// A member speaks (or is silent) for a while: in-order packets 20 ms apart, with the
    /// selection ticking as the engine does.
    Talk {
        who: u8,
        count: u8,
        loud: bool,
        len: u8,
    },
    Tick {
        wait: Wait,
    },
}

struct RoomMember {
    id: SessionId,
    slots: usize,
    level_id: Option<u8>,
    live: bool,
    numbering: [Numbering; 2],
}

const LEVEL_ID: u8 = 1;

#[test]
fn fuzz_room_on_rtp() {
    check!()
        .with_type::<RoomCase>()
        .with_iterations(fuzz_budget::iterations(400))
        .for_each(room_case);
}

struct RoomHarness<'a> {
    case: &'a RoomCase,
    room: Room,
    members: Vec<RoomMember>,
    streams: HashMap<(SessionId, usize), SlotStream>,
    next_id: u64,
    t0: Instant,
    now: Instant,
    last_bite_start: Option<u64>,
    step: usize,
    out: Vec<Forward>,
}

fn room_case(case: &RoomCase) {
    let mut room = Room::new(case.bites.then(CutterConfig::default));
    if let Some((packets, bytes)) = case.limits {
        room = room.with_limits(MemberLimits {
            packets_per_s: Some(u32::from(packets % 400) + 1),
            bytes_per_s: Some(bytes % 100_000 + 1),
        });
    }
    let now = Instant::now();
    let mut h = RoomHarness {
        case,
        room,
        members: Vec::new(),
        streams: HashMap::new(),
        next_id: 1,
        t0: now,
        now,
        last_bite_start: None,
        step: 0,
        out: Vec::new(),
    };
    for op in &case.ops {
        h.step += 1;
        h.apply(op);
        h.drain_events();
        assert_eq!(h.room.member_count(), h.members.len());
    }
    // Everyone leaves: what bites were open come out, still in order.
    while let Some(m) = h.members.pop() {
        h.room.remove_member(m.id, h.now);
        h.drain_events();
    }
    h.now += Duration::from_secs(60);
    h.room.tick(h.now);
    h.drain_events();
}

impl RoomHarness<'_> {
    fn pick(&self, who: u8) -> Option<usize> {
        (!self.members.is_empty()).then(|| usize::from(who) % self.members.len())
    }

    fn unix_ms(&self) -> u64 {
        1_800_000_000_000 + self.now.duration_since(self.t0).as_millis() as u64
    }

    fn apply(&mut self, op: &RoomOp) {
        match op {
            RoomOp::Join {
                slots,
                level_ext,
                first_seq,
                first_ts,
                live,
            } => {
                let id = SessionId(self.next_id);
                self.next_id += 1;
                let slots = usize::from(*slots % 5);
                let outputs = (0..slots)
                    .map(|i| {
                        let ssrc = (id.0 as u32) << 8 | i as u32;
                        let first_seq = first_seq.wrapping_add(i as u16 * 1000);
                        let first_ts = first_ts.wrapping_add(i as u32 * 1_000_000);
                        self.streams
                            .insert((id, i), SlotStream::new(ssrc, first_seq, first_ts));
                        SlotOutput {
                            mid: i.to_string(),
                            payload_type: 96 + i as u8,
                            rewriter: SlotRewriter::new(ssrc, first_seq, first_ts),
                            red: None,
                            history: None,
                        }
                    })
                    .collect();
                let level_id = level_ext.then_some(LEVEL_ID);
                let identity = Identity {
                    userid: format!("u{}", id.0),
                    clientid: "c".into(),
                };
                self.room.add_member(id, identity, outputs, level_id);
                if *live {
                    self.room.set_live(id);
                }
                self.members.push(RoomMember {
                    id,
                    slots,
                    level_id,
                    live: *live,
                    numbering: [Numbering {
                        seq: first_seq.rotate_left(3),
                        ts: first_ts.rotate_left(7),
                    }; 2],
                });
            }
            RoomOp::Live { who } => {
                if let Some(i) = self.pick(*who) {
                    self.members[i].live = true;
                    self.room.set_live(self.members[i].id);
                }
            }
            RoomOp::Leave { who } => {
                if let Some(i) = self.pick(*who) {
                    let m = self.members.remove(i);
                    self.room.remove_member(m.id, self.now);
                    self.streams.retain(|(l, _), _| *l != m.id);
                }
            }
            RoomOp::Packet {
                who,
                other_ssrc,
                seq,
                ts,
                marker,
                len,
                level,
                wait,
            } => {
                self.now += wait.duration();
                if let Some(i) = self.pick(*who) {
                    let n = usize::from(*other_ssrc);
                    let (seq, ts) = self.members[i].numbering[n].step(seq, ts);
                    let payload: Vec<u8> = (0..usize::from(*len))
                        .map(|k| if k == 0 { 0xF8 } else { *len ^ k as u8 })
                        .collect();
                    self.packet(i, n, seq, ts, *marker, payload, *level);
                }
            }
            RoomOp::Talk {
                who,
                count,
                loud,
                len,
            } => {
                if let Some(i) = self.pick(*who) {
                    let len = usize::from(*len % 120) + 1;
                    // RFC 6464: 0 is the loudest, 127 silence.
                    let level = if *loud { 0x80 | 10 } else { 127 };
                    for k in 0..count % 80 {
                        self.now += Duration::from_millis(20);
                        let (seq, ts) =
                            self.members[i].numbering[0].step(&SeqStep::Next, &TsStep::Frame);
                        let mut payload = vec![0x55; len];
                        payload[0] = 0xF8;
                        self.packet(i, 0, seq, ts, false, payload, Some(level));
                        if k % 5 == 4 {
                            self.room.tick(self.now);
                        }
                    }
                }
            }
            RoomOp::Tick { wait } => {
                self.now += wait.duration();
                self.room.tick(self.now);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn packet(
        &mut self,
        i: usize,
        n: usize,
        seq: u16,
        ts: u32,
        marker: bool,
        payload: Vec<u8>,
        level: Option<u8>,
    ) {
        let speaker = self.members[i].id;
        let ssrc = 0x5000_0000 | (speaker.0 as u32) << 1 | n as u32;
        let mut header = rtp::header::Header {
            version: 2,
            marker,
            payload_type: 111,
            sequence_number: seq,
            timestamp: ts,
            ssrc,
            ..Default::default()
        };
        if let Some(level) = level {
            header
                .set_extension(LEVEL_ID, Bytes::copy_from_slice(&[level]))
                .expect("one-byte extension");
        }
        let pkt = rtp::Packet {
            header,
            payload: Bytes::from(payload),
        };
        let source = SourceKey {
            member: speaker,
            ssrc,
        };
        let unix_ms = self.unix_ms();
        self.out.clear();
        self.room.on_rtp(
            speaker,
            self.members[i].level_id,
            &pkt,
            self.now,
            unix_ms,
            &mut self.out,
        );
        if pkt.payload.is_empty() {
            assert!(self.out.is_empty(), "padding is never forwarded");
            // Padding may be skipped on any slot that carries this speaker.
            for ((_, _), s) in self.streams.iter_mut() {
                s.skipped(source);
            }
            return;
        }
        let mut seen = HashSet::new();
        let mut listeners = HashSet::new();
        let out = std::mem::take(&mut self.out);
        for f in &out {
            assert_ne!(f.listener, speaker, "a member never hears itself");
            let l = self
                .members
                .iter()
                .find(|m| m.id == f.listener)
                .unwrap_or_else(|| panic!("forward to a stranger {:?}", f.listener));
            assert!(l.live, "forward to a member whose connection is not up");
            assert!(
                f.slot < l.slots,
                "forward on a slot the member does not have"
            );
            assert!(
                seen.insert((f.listener, f.slot)),
                "one packet twice on a slot"
            );
            assert!(
                listeners.insert(f.listener),
                "one speaker on two slots of the same listener"
            );
            assert_eq!(
                f.packet.payload, pkt.payload,
                "the payload goes through untouched"
            );
            assert_eq!(f.packet.header.payload_type, 96 + f.slot as u8);
            let h = &f.packet.header;
            let rewritten = Rewritten {
                ssrc: h.ssrc,
                seq: h.sequence_number,
                ts: h.timestamp,
                marker: h.marker,
            };
            let step = self.step;
            let case = self.case;
            let stream = self
                .streams
                .get_mut(&(f.listener, f.slot))
                .expect("a stream per slot");
            stream.sent(source, (seq, ts, marker), rewritten, false, &|| {
                format!("step {step} of {case:?}")
            });
        }
        self.out = out;
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.room.poll_event() {
            match e {
                RoomEvent::Slots { listener, slots } => {
                    assert!(self.members.iter().any(|m| m.id == listener));
                    let json = Event::Slots { slots }.to_json();
                    let v: serde_json::Value = serde_json::from_str(&json).expect("slots JSON");
                    assert_eq!(v["type"], "slots");
                }
                RoomEvent::Bite { bite, .. } => {
                    assert!(self.case.bites, "a bite with bites off");
                    if let Some(last) = self.last_bite_start {
                        assert!(
                            bite.start_unix_ms > last,
                            "bite starts unique and increasing: {} after {last}",
                            bite.start_unix_ms
                        );
                    }
                    self.last_bite_start = Some(bite.start_unix_ms);
                }
                RoomEvent::Members { to, members } => {
                    assert!(to.iter().all(|l| self.members.iter().any(|m| m.id == *l)));
                    assert!(members.windows(2).all(|w| w[0] < w[1]), "sorted, no twice");
                }
                RoomEvent::Speakers { to, speakers } => {
                    assert!(to.iter().all(|l| self.members.iter().any(|m| m.id == *l)));
                    assert!(speakers.iter().all(|s| (-127..=0).contains(&s.level)));
                }
            }
        }
    }
}

// The oracle itself: it must refuse what the promises rule out.

fn out(seq: u16, ts: u32, marker: bool) -> Rewritten {
    Rewritten {
        ssrc: 1,
        seq,
        ts,
        marker,
    }
}

#[test]
#[should_panic(expected = "a new source on the slot")]
fn the_check_refuses_a_gap_at_a_switch() {
    let mut s = SlotStream::new(1, 100, 1000);
    s.sent(
        SOURCES[0],
        (5, 50, false),
        out(100, 1000, true),
        true,
        &String::new,
    );
    s.sent(
        SOURCES[1],
        (9, 90, false),
        out(102, 2000, true),
        true,
        &String::new,
    );
}

#[test]
#[should_panic(expected = "a new source on the slot")]
fn the_check_refuses_a_timestamp_back_at_a_switch() {
    let mut s = SlotStream::new(1, 100, 1000);
    s.sent(
        SOURCES[0],
        (5, 50, false),
        out(100, 1000, true),
        true,
        &String::new,
    );
    s.sent(
        SOURCES[1],
        (9, 90, false),
        out(101, 999, true),
        true,
        &String::new,
    );
}

#[test]
#[should_panic(expected = "the same source must keep its offsets")]
fn the_check_refuses_a_gap_within_a_run() {
    let mut s = SlotStream::new(1, 100, 1000);
    s.sent(
        SOURCES[0],
        (5, 50, false),
        out(100, 1000, true),
        true,
        &String::new,
    );
    s.sent(
        SOURCES[0],
        (6, 1010, false),
        out(102, 1960, false),
        true,
        &String::new,
    );
}

#[test]
fn the_check_takes_a_skipped_padding_packet() {
    let mut s = SlotStream::new(1, 100, 1000);
    s.sent(
        SOURCES[0],
        (5, 50, false),
        out(100, 1000, true),
        true,
        &String::new,
    );
    s.skipped(SOURCES[0]);
    s.sent(
        SOURCES[0],
        (7, 1010, false),
        out(101, 1960, false),
        true,
        &String::new,
    );
    s.sent(
        SOURCES[1],
        (1, 1, false),
        out(102, 2920, true),
        true,
        &String::new,
    );
}
