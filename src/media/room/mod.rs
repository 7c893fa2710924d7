//! One conversation's media routing inside a worker: the [`Selector`] decides who is on which
//! slot of whom, a [`SlotRewriter`] per slot keeps each outgoing stream continuous, and a
//! [`BiteCutter`] per member turns what it says into bites. Slot selection and bite cutting
//! take the same speech decision ([`Loudness::is_speech`]) from the same packet.
//!
//! A plain state machine, like the two it combines: a packet (and the time) goes in, the
//! packets to send come out as [`Forward`]s, and the engine (`crate::worker::engine`) hands
//! them to the listeners' peer connections. What members must be told (their slot mapping)
//! and the finished bites wait in a queue the engine drains with [`Room::poll_event`]. No locks, no channels, no
//! I/O, no clock: time is passed in. Who is in the conversation and who is talking (the
//! `members` and `speakers` events) are [`presence`]'s.
//!
//! Before anything looks at a member's packet, its [`RateGate`] applies the member's caps
//! ([`MemberLimits`], see [`limit`]): a flood is dropped there, counted, and cannot win a slot.
//! Then its [`LevelAudit`] checks the loudness the packet claims against what it decodes to
//! (see [`super::audit`]): selection and bites see the checked loudness, never a bare claim.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use rtc::rtp;
use rustc_hash::FxHashMap;

use super::audit::{DecodeBudget, LevelAudit};
use super::bite::{AudioPacket, BiteCutter, CutBite, CutterConfig, StartClock};
use super::red::RedEncoder;
use super::retransmit::SlotHistory;
use super::rewrite::{SlotRewriter, SourceKey};
use super::selector::{Selector, SelectorConfig, SlotChange};
use super::speech::Loudness;
use crate::wire::identity::Identity;
use crate::wire::ids::SessionId;
use crate::wire::signal::{MemberInfo, SlotInfo, SpeakerInfo};
use crate::wire::stats::{DropStats, WorkerStats};
pub use limit::{Admit, MemberLimits, RateGate};

pub mod limit;
pub mod presence;

/// A member of the room is named by its session.
type MemberId = SessionId;

/// A finished bite and who said it.
#[derive(Debug)]
struct HeldBite {
    speaker: SessionId,
    identity: Identity,
    bite: CutBite,
}

/// What the room has to hand out besides forwards.
#[derive(Clone, Debug, PartialEq)]
pub enum RoomEvent {
    /// The `slots` event for `listener`: who is on each of its slots now.
    Slots {
        listener: SessionId,
        slots: Vec<SlotInfo>,
    },
    /// A finished bite of `speaker`; its `start` is already unique and increasing within the
    /// conversation.
    Bite {
        speaker: SessionId,
        identity: Identity,
        bite: CutBite,
    },
    /// The `members` event for each of `to`: everyone in the room now ([`presence`]).
    Members {
        to: Vec<SessionId>,
        members: Vec<MemberInfo>,
    },
    /// The `speakers` event for each of `to`: who is speaking now ([`presence`]).
    Speakers {
        to: Vec<SessionId>,
        speakers: Vec<SpeakerInfo>,
    },
}

/// One receive slot of a listener, as set up by the negotiation.
pub struct SlotOutput {
    pub mid: String,
    pub payload_type: u8,
    pub rewriter: SlotRewriter,
    /// Redundancy for a listener that negotiated RED on this slot.
    pub red: Option<RedEncoder>,
    /// What was sent, for a listener that negotiated NACK on this slot.
    pub history: Option<SlotHistory>,
}

/// One packet for one slot of one listener, rewritten and ready to send.
#[derive(Debug)]
pub struct Forward {
    pub listener: MemberId,
    pub slot: usize,
    pub packet: rtp::Packet,
}

struct Member {
    identity: Identity,
    slots: Vec<SlotOutput>,
    /// Who is on each slot, as last announced: a slot whose occupant changes is vacated.
    mapping: Vec<Option<MemberId>>,
    /// Listener's negotiated audio-level id: forwarded packets carry the speaker's level.
    audio_level_id: Option<u8>,
    /// Its connection is up (DTLS done). Until then nothing is sent to it: SRTP cannot
    /// encrypt yet, and every packet would be dropped by the crate with a warning.
    live: bool,
    /// Cuts this member's speech into bites (absent when bites are off).
    cutter: Option<BiteCutter>,
    /// Its packet and byte rate caps.
    gate: RateGate,
    /// Checks the loudness it claims.
    audit: LevelAudit,
    /// The version of the members list it was last told ([`presence`]).
    members_told: u64,
}

impl Member {
    /// Which of its slots sends the stream with SSRC `ssrc` (what its RTCP names).
    fn slot_of(&self, ssrc: u32) -> Option<usize> {
        self.slots.iter().position(|s| s.rewriter.ssrc() == ssrc)
    }
}

pub struct Room {
    selector: Selector<MemberId>,
    /// Keyed by session ids, which the worker makes (the fast hash is safe): looked up once
    /// per forwarded copy.
    members: FxHashMap<MemberId, Member>,
    events: VecDeque<RoomEvent>,
    /// How to cut bites; `None` turns bites off.
    bites: Option<CutterConfig>,
    /// Finished bites waiting until no member has an open bite that started earlier, so bites
    /// are handed out in the order of their start (see [`Room::release_bites`]).
    held: Vec<HeldBite>,
    start_clock: StartClock,
    packets_in: u64,
    packets_forwarded: u64,
    bytes_forwarded: u64,
    /// Every member's caps.
    limits: MemberLimits,
    /// Packets dropped because their member was over a cap.
    dropped_over_cap: u64,
    /// What the members' level audits may decode, together.
    decode_budget: DecodeBudget,
    /// Seeds each member's audit, so nobody can tell which of its packets are checked.
    audit_seeds: u64,
    /// Packets decoded by the audits, and claims they refused.
    level_decodes: u64,
    level_claims_refused: u64,
    /// What members were last told of each other and of who speaks.
    presence: presence::Presence,
}

impl Room {
    /// A room; with `bites`, every member's speech is cut into bites with that setting.
    pub fn new(bites: Option<CutterConfig>) -> Room {
        Room {
            selector: Selector::new(SelectorConfig::default()),
            members: FxHashMap::default(),
            events: VecDeque::new(),
            bites,
            held: Vec::new(),
            start_clock: StartClock::new(),
            packets_in: 0,
            packets_forwarded: 0,
            bytes_forwarded: 0,
            limits: MemberLimits::default(),
            dropped_over_cap: 0,
            decode_budget: DecodeBudget::default(),
            audit_seeds: rand::random(),
            level_decodes: 0,
            level_claims_refused: 0,
            presence: presence::Presence::default(),
        }
    }

    /// The room with every member (present and future) held to `limits`; without this,
    /// members have no caps.
    pub fn with_limits(mut self, limits: MemberLimits) -> Room {
        self.limits = limits;
        for m in self.members.values_mut() {
            m.gate = RateGate::new(limits);
        }
        self
    }

    /// A member whose answer has been sent. Sends its first `slots` and `members` events (and
    /// `speakers` when somebody speaks); the others learn of it at the next tick.
    pub fn add_member(
        &mut self,
        session: SessionId,
        identity: Identity,
        slots: Vec<SlotOutput>,
        audio_level_id: Option<u8>,
    ) {
        self.selector.add_member(session, slots.len());
        let mapping = self.selector.slots_of(session).to_vec();
        self.members.insert(
            session,
            Member {
                identity,
                slots,
                mapping: mapping.clone(),
                audio_level_id,
                live: false,
                cutter: self.bites.map(BiteCutter::new),
                gate: RateGate::new(self.limits),
                audit: LevelAudit::new(self.audit_seeds ^ session.0),
                members_told: 0,
            },
        );
        if let Some(slots) = slots_event(&self.members, session, &mapping) {
            self.events.push_back(RoomEvent::Slots {
                listener: session,
                slots,
            });
        }
        self.presence_joined(session);
    }

    /// The next thing a member must be told, if any.
    pub fn poll_event(&mut self) -> Option<RoomEvent> {
        self.events.pop_front()
    }

    /// The member's connection is up: start forwarding to it. (Its slots are assigned from
    /// the start, so the `slots` event does not wait for this.)
    pub fn set_live(&mut self, session: SessionId) {
        if let Some(m) = self.members.get_mut(&session) {
            m.live = true;
        }
    }

    /// A member leaves; a bite it was in the middle of is closed and handed out, not lost.
    pub fn remove_member(&mut self, session: SessionId, now: Instant) {
        let changes = self.selector.remove_member(session);
        let Some(mut gone) = self.members.remove(&session) else {
            return;
        };
        if let Some(cutter) = gone.cutter.as_mut() {
            cutter.finish(now);
            hold_bites(&mut self.held, session, &gone.identity, cutter);
        }
        self.release_bites();
        self.apply(changes, now);
        self.presence_left(now);
    }

    /// Every member and whose it is.
    pub fn members(&self) -> impl Iterator<Item = (SessionId, &Identity)> {
        self.members.iter().map(|(id, m)| (*id, &m.identity))
    }

    /// Queues every member's current `slots`, `members` and `speakers` events again (for a
    /// front that takes the conversation over and must tell reconnecting clients where they
    /// stand).
    pub fn announce(&mut self) {
        for (&id, m) in &self.members {
            if let Some(slots) = slots_event(&self.members, id, &m.mapping) {
                self.events.push_back(RoomEvent::Slots {
                    listener: id,
                    slots,
                });
            }
        }
        self.announce_presence();
    }

    /// Who is on the slot of `listener` whose stream has SSRC `ssrc` now: whose audio a
    /// report block of that listener's is about.
    pub fn slot_source(&self, listener: SessionId, ssrc: u32) -> Option<SessionId> {
        let m = self.members.get(&listener)?;
        m.mapping.get(m.slot_of(ssrc)?).copied().flatten()
    }

    /// `listener` says it lost these packets `(slot stream SSRC, sequence number)`: those
    /// still kept go again, appended to `out`. Returns how many.
    pub fn retransmit(
        &self,
        listener: SessionId,
        lost: &[(u32, u16)],
        out: &mut Vec<Forward>,
    ) -> usize {
        let Some(m) = self.members.get(&listener).filter(|m| m.live) else {
            return 0;
        };
        let before = out.len();
        for &(ssrc, seq) in lost {
            let Some(slot) = m.slot_of(ssrc) else {
                continue;
            };
            if let Some(packet) = m.slots[slot].history.as_ref().and_then(|h| h.find(seq)) {
                out.push(Forward {
                    listener,
                    slot,
                    packet: packet.clone(),
                });
            }
        }
        out.len() - before
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Re-runs the selection, tells members who is in the room and who speaks when that is
    /// due ([`presence`]), and closes bites whose silence has lasted (called every few tens
    /// of milliseconds).
    pub fn tick(&mut self, now: Instant) {
        let changes = self.selector.tick(now);
        self.apply(changes, now);
        self.tell_members(now);
        self.tell_speakers(now);
        for (&id, m) in &mut self.members {
            if let Some(cutter) = m.cutter.as_mut() {
                cutter.tick(now);
                hold_bites(&mut self.held, id, &m.identity, cutter);
            }
        }
        self.release_bites();
    }

    /// Hands out, in start order, the finished bites that no open bite started before.
    ///
    /// `start` must be unique and increasing within the conversation (SPEC §5), and it must
    /// stay the true time of the first sample. Bites close in another order than they open
    /// when members speak at once (a long bite opened first closes last), so a finished bite
    /// waits while another member's open bite started earlier: at most one bite's length
    /// (`max_len`), after which every open bite has closed or continued past it. The start
    /// clock then only nudges exact collisions by a millisecond.
    fn release_bites(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let open_since = self
            .members
            .values()
            .filter_map(|m| m.cutter.as_ref()?.open_start_unix_ms())
            .min();
        self.held.sort_by_key(|h| h.bite.start_unix_ms);
        let ready = self
            .held
            .iter()
            .take_while(|h| open_since.is_none_or(|t| h.bite.start_unix_ms <= t))
            .count();
        for HeldBite {
            speaker,
            identity,
            mut bite,
        } in self.held.drain(..ready)
        {
            bite.start_unix_ms = self.start_clock.unique(bite.start_unix_ms);
            self.events.push_back(RoomEvent::Bite {
                speaker,
                identity,
                bite,
            });
        }
    }

    /// Vacates the slots whose occupant changed and tells each listener its new mapping.
    fn apply(&mut self, changes: Vec<SlotChange<MemberId>>, now: Instant) {
        for c in changes {
            let Some(m) = self.members.get_mut(&c.listener) else {
                continue;
            };
            for (i, out) in m.slots.iter_mut().enumerate() {
                if m.mapping.get(i).copied().flatten() != c.slots.get(i).copied().flatten() {
                    out.rewriter.vacate(now);
                }
            }
            m.mapping = c.slots.clone();
            if let Some(slots) = slots_event(&self.members, c.listener, &c.slots) {
                self.events.push_back(RoomEvent::Slots {
                    listener: c.listener,
                    slots,
                });
            }
        }
    }

    /// One RTP packet from `member`'s microphone; what to send because of it is appended to
    /// `out`. `level_id` is the member's own negotiated audio-level extension id; `unix_ms`
    /// is the wall-clock time of `now`, for the start of a bite.
    pub fn on_rtp(
        &mut self,
        member: MemberId,
        level_id: Option<u8>,
        pkt: &rtp::Packet,
        now: Instant,
        unix_ms: u64,
        out: &mut Vec<Forward>,
    ) {
        self.packets_in += 1;
        let source = SourceKey {
            member,
            ssrc: pkt.header.ssrc,
        };
        // The caps come first: what is over them goes no further.
        let admit = self
            .members
            .get_mut(&member)
            .map_or(Admit::Pass, |m| m.gate.admit(now, pkt.payload.len()));
        if admit == Admit::Drop {
            self.dropped_over_cap += 1;
            return;
        }
        let Room {
            selector,
            members,
            held,
            decode_budget,
            ..
        } = self;
        // Padding-only packets (Chromium's bandwidth probes, sent every few seconds when
        // transport-cc is negotiated) carry no audio and no level: they must neither count
        // as silence in the selection nor leave a gap in the slots they are not sent on.
        if pkt.payload.is_empty() {
            for &(listener, slot) in selector.destinations(member) {
                if let Some(slot) = members
                    .get_mut(&listener)
                    .filter(|m| m.live)
                    .and_then(|m| m.slots.get_mut(slot))
                {
                    slot.rewriter.skip(source, pkt.header.sequence_number);
                }
            }
            return;
        }
        let mut level_byte = level_id
            .and_then(|id| pkt.header.get_extension(id))
            .and_then(|b| b.first().copied());
        // The speaker's audit and bite cutter see the packet; the selection its checked level.
        if let Some(m) = members.get_mut(&member) {
            let loudness = if admit == Admit::Silenced {
                // A member just over its caps is not speaking, whatever its packets say.
                Loudness::SILENT
            } else {
                let claim = Loudness::of_packet(level_byte, pkt.payload.len());
                let checked = m.audit.check(claim, &pkt.payload, now, decode_budget);
                self.level_decodes += u64::from(checked.decoded);
                self.level_claims_refused += u64::from(checked.refused);
                if checked.loudness != claim {
                    // Listeners are told the checked level, not the claim.
                    level_byte = level_byte.and(checked.loudness.level_byte());
                }
                checked.loudness
            };
            selector.on_audio(member, now, loudness);
            if let Some(cutter) = m.cutter.as_mut() {
                let audio = AudioPacket {
                    ssrc: pkt.header.ssrc,
                    seq: pkt.header.sequence_number,
                    timestamp: pkt.header.timestamp,
                    payload: pkt.payload.clone(),
                    speech: loudness.is_speech(selector.speech_threshold()),
                };
                cutter.handle_packet(audio, now, unix_ms);
                hold_bites(held, member, &m.identity, cutter);
            }
        }
        let before = out.len();
        for &(listener, slot) in selector.destinations(member) {
            let Some(m) = members.get_mut(&listener).filter(|m| m.live) else {
                continue;
            };
            let level_ext = m.audio_level_id.zip(level_byte);
            let Some(output) = m.slots.get_mut(slot) else {
                continue;
            };
            if let Some(packet) = slot_copy(output, source, pkt, level_ext, now) {
                out.push(Forward {
                    listener,
                    slot,
                    packet,
                });
            }
        }
        let n = (out.len() - before) as u64;
        self.packets_forwarded += n;
        self.bytes_forwarded += n * pkt.payload.len() as u64;
        self.release_bites();
    }

    /// The room's counters; the engine adds what only it measures (forwarding delay, bite
    /// publishing).
    pub fn stats(&self) -> WorkerStats {
        WorkerStats {
            peers: self.member_count() as u32,
            packets_in: self.packets_in,
            packets_forwarded: self.packets_forwarded,
            bytes_forwarded: self.bytes_forwarded,
            dropped: DropStats {
                member_rate: self.dropped_over_cap,
                ..DropStats::default()
            },
            level_decodes: self.level_decodes,
            level_claims_refused: self.level_claims_refused,
            ..WorkerStats::default()
        }
    }
}

/// Every RFC 6464 byte, so a forwarded copy's level extension points into this table instead
/// of allocating a byte of its own.
static LEVEL_BYTES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

fn level_extension(b: u8) -> Bytes {
    let i = usize::from(b);
    Bytes::from_static(&LEVEL_BYTES[i..=i])
}

/// Takes the bites `cutter` has finished into `held`.
fn hold_bites(
    held: &mut Vec<HeldBite>,
    speaker: SessionId,
    identity: &Identity,
    cutter: &mut BiteCutter,
) {
    while let Some(bite) = cutter.poll_bite() {
        held.push(HeldBite {
            speaker,
            identity: identity.clone(),
            bite,
        });
    }
}

/// What `listener`'s `slots` event says: every slot it negotiated, and who is on it.
fn slots_event(
    members: &FxHashMap<MemberId, Member>,
    listener: MemberId,
    mapping: &[Option<MemberId>],
) -> Option<Vec<SlotInfo>> {
    let m = members.get(&listener)?;
    let slots = m
        .slots
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let who = mapping
                .get(i)
                .copied()
                .flatten()
                .and_then(|id| members.get(&id))
                .map(|o| &o.identity);
            SlotInfo {
                clientid: who.map(|w| w.clientid.clone()),
                mid: s.mid.clone(),
                slot: u32::try_from(i).unwrap_or(u32::MAX),
                userid: who.map(|w| w.userid.clone()),
            }
        })
        .collect();
    Some(slots)
}

/// `pkt` as the slot sends it: rewritten onto the slot's stream (its SSRC, sequence and
/// timestamps), with the listener's audio-level extension when it negotiated one; `None` when
/// the rewriter drops it (a straggler of a source switched away from, or from before the
/// current source's switch-in).
fn slot_copy(
    output: &mut SlotOutput,
    source: SourceKey,
    pkt: &rtp::Packet,
    level_ext: Option<(u8, u8)>,
    now: Instant,
) -> Option<rtp::Packet> {
    let h = &pkt.header;
    let rw = output
        .rewriter
        .rewrite(source, h.sequence_number, h.timestamp, h.marker, now)?;
    let (payload_type, payload) = match output.red.as_mut() {
        Some(red) => (red.red_pt, red.encode(rw.seq, rw.ts, &pkt.payload)),
        None => (output.payload_type, pkt.payload.clone()),
    };
    let mut header = rtp::header::Header {
        version: 2,
        padding: false,
        marker: rw.marker,
        payload_type,
        sequence_number: rw.seq,
        timestamp: rw.ts,
        ssrc: rw.ssrc,
        ..Default::default()
    };
    if let Some((id, b)) = level_ext {
        let _ = header.set_extension(id, level_extension(b));
    }
    let packet = rtp::Packet { header, payload };
    if let Some(history) = output.history.as_mut() {
        history.sent(&packet);
    }
    Some(packet)
}

#[cfg(test)]
mod tests;
