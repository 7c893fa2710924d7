//! One conversation's media routing inside a worker: the [`Selector`] decides who is on which
//! slot of whom, and a [`SlotRewriter`] per slot keeps each outgoing stream continuous.
//!
//! A plain state machine, like the two it combines: a packet (and the time) goes in, the
//! packets to send come out as [`Forward`]s, and the engine (`crate::worker::engine`) hands
//! them to the listeners' peer connections. What members must be told (their slot mapping)
//! waits in a queue the engine drains with [`Room::poll_event`]. No locks, no channels, no
//! I/O, no clock: time is passed in.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use rtc::rtp;

use super::rewrite::{SlotRewriter, SourceKey};
use super::selector::{Selector, SelectorConfig, SlotChange};
use super::speech::Loudness;
use crate::wire::identity::Identity;
use crate::wire::ids::SessionId;
use crate::wire::stats::WorkerStats;

/// A member of the room is named by its session.
type MemberId = SessionId;

/// Something a member must be told.
#[derive(Clone, Debug, PartialEq)]
pub enum RoomEvent {
    /// The `slots` event JSON for `listener`: who is on each of its slots now.
    Slots { listener: SessionId, json: String },
}

/// One receive slot of a listener, as set up by the negotiation.
pub struct SlotOutput {
    pub mid: String,
    pub payload_type: u8,
    pub rewriter: SlotRewriter,
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
}

pub struct Room {
    selector: Selector<MemberId>,
    members: HashMap<MemberId, Member>,
    events: VecDeque<RoomEvent>,
    packets_in: u64,
    packets_forwarded: u64,
    bytes_forwarded: u64,
}

impl Default for Room {
    fn default() -> Self {
        Room::new()
    }
}

impl Room {
    pub fn new() -> Room {
        Room {
            selector: Selector::new(SelectorConfig::default()),
            members: HashMap::new(),
            events: VecDeque::new(),
            packets_in: 0,
            packets_forwarded: 0,
            bytes_forwarded: 0,
        }
    }

    /// A member whose answer has been sent. Sends its first `slots` event.
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
            },
        );
        if let Some(json) = slots_event(&self.members, session, &mapping) {
            self.events.push_back(RoomEvent::Slots {
                listener: session,
                json,
            });
        }
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

    pub fn remove_member(&mut self, session: SessionId, now: Instant) {
        let changes = self.selector.remove_member(session);
        self.members.remove(&session);
        self.apply(changes, now);
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Re-runs the selection (called every few tens of milliseconds).
    pub fn tick(&mut self, now: Instant) {
        let changes = self.selector.tick(now);
        self.apply(changes, now);
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
            if let Some(json) = slots_event(&self.members, c.listener, &c.slots) {
                self.events.push_back(RoomEvent::Slots {
                    listener: c.listener,
                    json,
                });
            }
        }
    }

    /// One RTP packet from `member`'s microphone; what to send because of it is appended to
    /// `out`. `level_id` is the member's own negotiated audio-level extension id.
    pub fn on_rtp(
        &mut self,
        member: MemberId,
        level_id: Option<u8>,
        pkt: &rtp::Packet,
        now: Instant,
        out: &mut Vec<Forward>,
    ) {
        self.packets_in += 1;
        let source = SourceKey {
            member,
            ssrc: pkt.header.ssrc,
        };
        let Room {
            selector, members, ..
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
        let level_byte = level_id
            .and_then(|id| pkt.header.get_extension(id))
            .and_then(|b| b.first().copied());
        let loudness = Loudness::of_packet(level_byte, pkt.payload.len());
        selector.on_audio(member, now, loudness);
        let before = out.len();
        for &(listener, slot) in selector.destinations(member) {
            let Some(m) = members.get_mut(&listener).filter(|m| m.live) else {
                continue;
            };
            let level_ext = m.audio_level_id.zip(level_byte);
            let Some(output) = m.slots.get_mut(slot) else {
                continue;
            };
            let h = &pkt.header;
            let Some(rw) =
                output
                    .rewriter
                    .rewrite(source, h.sequence_number, h.timestamp, h.marker, now)
            else {
                continue;
            };
            let mut header = rtp::header::Header {
                version: 2,
                padding: false,
                marker: rw.marker,
                payload_type: output.payload_type,
                sequence_number: rw.seq,
                timestamp: rw.ts,
                ssrc: rw.ssrc,
                ..Default::default()
            };
            if let Some((id, b)) = level_ext {
                let _ = header.set_extension(id, Bytes::copy_from_slice(&[b]));
            }
            out.push(Forward {
                listener,
                slot,
                packet: rtp::Packet {
                    header,
                    payload: pkt.payload.clone(),
                },
            });
        }
        let n = (out.len() - before) as u64;
        self.packets_forwarded += n;
        self.bytes_forwarded += n * pkt.payload.len() as u64;
    }

    /// The room's counters; the engine adds what only it measures (forwarding delay).
    pub fn stats(&self) -> WorkerStats {
        WorkerStats {
            peers: self.member_count() as u32,
            packets_in: self.packets_in,
            packets_forwarded: self.packets_forwarded,
            bytes_forwarded: self.bytes_forwarded,
            forward_delay: Default::default(),
        }
    }
}

/// `{"type":"slots","slots":[{"slot":0,"mid":"0","userid":..,"clientid":..}]}`.
fn slots_event(
    members: &HashMap<MemberId, Member>,
    listener: MemberId,
    mapping: &[Option<MemberId>],
) -> Option<String> {
    let m = members.get(&listener)?;
    let slots: Vec<_> = m
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
            serde_json::json!({
                "slot": i,
                "mid": s.mid,
                "userid": who.map(|w| w.userid.as_str()),
                "clientid": who.map(|w| w.clientid.as_str()),
            })
        })
        .collect();
    Some(serde_json::json!({"type": "slots", "slots": slots}).to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LEVEL_ID: u8 = 1;

    fn packet(ssrc: u32, seq: u16, dbov: u8, payload_len: usize) -> rtp::Packet {
        let mut header = rtp::header::Header {
            version: 2,
            payload_type: 111,
            sequence_number: seq,
            timestamp: u32::from(seq) * 960,
            ssrc,
            ..Default::default()
        };
        header
            .set_extension(LEVEL_ID, Bytes::copy_from_slice(&[0x80 | dbov]))
            .expect("one-byte extension");
        rtp::Packet {
            header,
            payload: Bytes::from(vec![0xAB; payload_len]),
        }
    }

    fn member(room: &mut Room, id: u64, slots: usize) {
        let outputs = (0..slots)
            .map(|i| SlotOutput {
                mid: i.to_string(),
                payload_type: 111,
                rewriter: SlotRewriter::new(1000 * id as u32 + i as u32, 0, 0),
            })
            .collect();
        let identity = Identity {
            userid: format!("u{id}"),
            clientid: "c".into(),
        };
        room.add_member(SessionId(id), identity, outputs, Some(LEVEL_ID));
    }

    fn events(room: &mut Room) -> Vec<RoomEvent> {
        std::iter::from_fn(|| room.poll_event()).collect()
    }

    /// `speaker` talks for `packets` packets, 20 ms apart from `t0`, with a selection tick
    /// every 100 ms; returns every forward made.
    fn talk(room: &mut Room, speaker: u64, packets: u16, t0: Instant) -> Vec<Forward> {
        let mut all = Vec::new();
        for n in 0..packets {
            let now = t0 + Duration::from_millis(20 * u64::from(n));
            let mut out = Vec::new();
            room.on_rtp(
                SessionId(speaker),
                Some(LEVEL_ID),
                &packet(speaker as u32, n, 30, 60),
                now,
                &mut out,
            );
            all.extend(out);
            if n % 5 == 4 {
                room.tick(now);
            }
        }
        all
    }

    #[test]
    fn a_new_member_is_told_its_empty_slots_through_the_queue() {
        let mut room = Room::new();
        member(&mut room, 1, 2);
        let ev = events(&mut room);
        assert_eq!(ev.len(), 1, "{ev:?}");
        let RoomEvent::Slots { listener, json } = &ev[0];
        assert_eq!(*listener, SessionId(1));
        let v: serde_json::Value = serde_json::from_str(json).expect("json");
        assert_eq!(v["type"], "slots");
        assert_eq!(v["slots"].as_array().map(Vec::len), Some(2));
        assert!(v["slots"][0]["userid"].is_null());
        assert!(room.poll_event().is_none(), "drained");
    }

    #[test]
    fn speech_reaches_live_listeners_never_the_speaker_and_slot_changes_are_queued() {
        let mut room = Room::new();
        for id in 1..=3 {
            member(&mut room, id, 1);
            room.set_live(SessionId(id));
        }
        events(&mut room);
        let t0 = Instant::now();
        let forwards = talk(&mut room, 1, 50, t0);
        assert!(!forwards.is_empty());
        assert!(forwards.iter().all(|f| f.listener != SessionId(1)));
        for l in [2, 3] {
            assert!(
                forwards.iter().any(|f| f.listener == SessionId(l)),
                "{l} heard nothing"
            );
        }
        // Each listener was told, once, that u1 is on its slot.
        let told: Vec<_> = events(&mut room)
            .into_iter()
            .map(|RoomEvent::Slots { listener, json }| (listener, json))
            .collect();
        assert_eq!(told.len(), 2, "{told:?}");
        assert!(told.iter().all(|(_, j)| j.contains(r#""userid":"u1""#)));
        let stats = room.stats();
        assert_eq!(stats.packets_in, 50);
        assert_eq!(stats.packets_forwarded, forwards.len() as u64);
        assert_eq!(stats.bytes_forwarded, 60 * forwards.len() as u64);
    }

    #[test]
    fn nothing_is_sent_to_a_member_whose_connection_is_not_up() {
        let mut room = Room::new();
        member(&mut room, 1, 1);
        member(&mut room, 2, 1);
        room.set_live(SessionId(1));
        let forwards = talk(&mut room, 1, 30, Instant::now());
        assert!(forwards.is_empty(), "member 2 is not live: {forwards:?}");
    }

    #[test]
    fn a_speaker_who_leaves_frees_the_slot_and_listeners_are_told() {
        let mut room = Room::new();
        member(&mut room, 1, 1);
        member(&mut room, 2, 1);
        room.set_live(SessionId(2));
        let t0 = Instant::now();
        talk(&mut room, 1, 20, t0);
        events(&mut room);
        room.remove_member(SessionId(1), t0 + Duration::from_millis(500));
        let ev = events(&mut room);
        assert_eq!(ev.len(), 1, "{ev:?}");
        let RoomEvent::Slots { listener, json } = &ev[0];
        assert_eq!(*listener, SessionId(2));
        assert!(json.contains(r#""userid":null"#), "{json}");
        assert_eq!(room.member_count(), 1);
    }

    #[test]
    fn padding_only_packets_are_neither_forwarded_nor_counted_as_silence() {
        let mut room = Room::new();
        member(&mut room, 1, 1);
        member(&mut room, 2, 1);
        room.set_live(SessionId(2));
        let t0 = Instant::now();
        let before = talk(&mut room, 1, 20, t0).len();
        assert!(before > 0);
        let mut out = Vec::new();
        room.on_rtp(
            SessionId(1),
            Some(LEVEL_ID),
            &packet(1, 20, 127, 0),
            t0 + Duration::from_millis(400),
            &mut out,
        );
        assert!(out.is_empty());
    }
}
