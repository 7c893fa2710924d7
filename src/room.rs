//! One conversation's media routing inside a worker: the [`Selector`] decides who is on which
//! slot of whom, a [`SlotRewriter`] per slot keeps each outgoing stream continuous, and the
//! packets go to one writer task per slot (a bounded channel each, so one slow listener
//! never holds up the others: `write_rtp` may wait, the fan-out never does).
//!
//! Everything here is synchronous behind one mutex that is held for microseconds per packet;
//! the decisions are the pure state machines' and are unit-tested there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use rtc::rtp;
use tokio::sync::mpsc;

use crate::identity::Identity;
use crate::ipc::{SessionId, ToFront, WorkerStats};
use crate::rewrite::{SlotRewriter, SourceKey};
use crate::slots::{Loudness, MemberId, Selector, SelectorConfig, SlotChange};

/// Packets waiting for one slot's writer; beyond this the slot drops (a stuck listener).
pub const SLOT_QUEUE: usize = 64;

/// Below this many payload bytes an Opus packet is silence/DTX: used only when the client
/// did not negotiate the audio-level extension.
const VOICED_MIN_PAYLOAD: usize = 16;

/// One receive slot of a listener, as set up by the negotiation.
pub struct SlotOutput {
    pub mid: String,
    pub payload_type: u8,
    pub rewriter: SlotRewriter,
    pub tx: mpsc::Sender<rtp::Packet>,
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

struct Core {
    selector: Selector,
    members: HashMap<MemberId, Member>,
}

pub struct Room {
    core: Mutex<Core>,
    to_front: mpsc::UnboundedSender<ToFront>,
    packets_in: AtomicU64,
    packets_forwarded: AtomicU64,
    bytes_forwarded: AtomicU64,
    dropped: AtomicU64,
}

impl Room {
    pub fn new(to_front: mpsc::UnboundedSender<ToFront>) -> Room {
        Room {
            core: Mutex::new(Core {
                selector: Selector::new(SelectorConfig::default()),
                members: HashMap::new(),
            }),
            to_front,
            packets_in: AtomicU64::new(0),
            packets_forwarded: AtomicU64::new(0),
            bytes_forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A member whose answer has been sent. Sends its first `slots` event.
    pub fn add_member(
        &self,
        session: SessionId,
        identity: Identity,
        slots: Vec<SlotOutput>,
        audio_level_id: Option<u8>,
    ) {
        let mut core = self.lock();
        core.selector.add_member(session, slots.len());
        let mapping = core.selector.slots_of(session).to_vec();
        core.members.insert(
            session,
            Member {
                identity,
                slots,
                mapping: mapping.clone(),
                audio_level_id,
                live: false,
            },
        );
        let event = slots_event(&core.members, session, &mapping);
        drop(core);
        if let Some(json) = event {
            let _ = self.to_front.send(ToFront::Event { session, json });
        }
    }

    /// The member's connection is up: start forwarding to it. (Its slots are assigned from
    /// the start, so the `slots` event does not wait for this.)
    pub fn set_live(&self, session: SessionId) {
        if let Some(m) = self.lock().members.get_mut(&session) {
            m.live = true;
        }
    }

    /// Dropping the member drops its slot senders, which ends its writer tasks.
    pub fn remove_member(&self, session: SessionId) {
        let mut core = self.lock();
        let changes = core.selector.remove_member(session);
        core.members.remove(&session);
        self.apply(&mut core, changes, Instant::now());
    }

    pub fn member_count(&self) -> usize {
        self.lock().members.len()
    }

    /// Re-runs the selection (called every few tens of milliseconds).
    pub fn tick(&self, now: Instant) {
        let mut core = self.lock();
        let changes = core.selector.tick(now);
        self.apply(&mut core, changes, now);
    }

    /// Vacates the slots whose occupant changed and tells each listener its new mapping.
    fn apply(&self, core: &mut Core, changes: Vec<SlotChange>, now: Instant) {
        for c in changes {
            let Some(m) = core.members.get_mut(&c.listener) else {
                continue;
            };
            for (i, out) in m.slots.iter_mut().enumerate() {
                if m.mapping.get(i).copied().flatten() != c.slots.get(i).copied().flatten() {
                    out.rewriter.vacate(now);
                }
            }
            m.mapping = c.slots.clone();
            if let Some(json) = slots_event(&core.members, c.listener, &c.slots) {
                let _ = self.to_front.send(ToFront::Event {
                    session: c.listener,
                    json,
                });
            }
        }
    }

    /// One RTP packet from `member`'s microphone. `level_id` is the member's own negotiated
    /// audio-level extension id.
    pub fn on_rtp(&self, member: MemberId, level_id: Option<u8>, pkt: &rtp::Packet, now: Instant) {
        self.packets_in.fetch_add(1, Ordering::Relaxed);
        let source = SourceKey {
            member,
            ssrc: pkt.header.ssrc,
        };
        // Padding-only packets (Chromium's bandwidth probes, sent every few seconds when
        // transport-cc is negotiated) carry no audio and no level: they must neither count
        // as silence in the selection nor leave a gap in the slots they are not sent on.
        if pkt.payload.is_empty() {
            let mut core = self.lock();
            let Core { selector, members } = &mut *core;
            for &(listener, slot) in selector.destinations(member) {
                if let Some(out) = members
                    .get_mut(&listener)
                    .filter(|m| m.live)
                    .and_then(|m| m.slots.get_mut(slot))
                {
                    out.rewriter.skip(source, pkt.header.sequence_number);
                }
            }
            return;
        }
        let level_byte = level_id
            .and_then(|id| pkt.header.get_extension(id))
            .and_then(|b| b.first().copied());
        let loudness = match level_byte {
            Some(b) => Loudness::Level {
                dbov: b & 0x7f,
                voice: b & 0x80 != 0,
            },
            None => Loudness::Inferred {
                voiced: pkt.payload.len() >= VOICED_MIN_PAYLOAD,
            },
        };
        let mut core = self.lock();
        let Core { selector, members } = &mut *core;
        selector.on_audio(member, now, loudness);
        for &(listener, slot) in selector.destinations(member) {
            let Some(m) = members.get_mut(&listener).filter(|m| m.live) else {
                continue;
            };
            let level_ext = m.audio_level_id.zip(level_byte);
            let Some(out) = m.slots.get_mut(slot) else {
                continue;
            };
            let h = &pkt.header;
            let Some(rw) =
                out.rewriter
                    .rewrite(source, h.sequence_number, h.timestamp, h.marker, now)
            else {
                continue;
            };
            let mut header = rtp::header::Header {
                version: 2,
                padding: false,
                marker: rw.marker,
                payload_type: out.payload_type,
                sequence_number: rw.seq,
                timestamp: rw.ts,
                ssrc: rw.ssrc,
                ..Default::default()
            };
            if let Some((id, b)) = level_ext {
                let _ = header.set_extension(id, Bytes::copy_from_slice(&[b]));
            }
            let len = pkt.payload.len() as u64;
            match out.tx.try_send(rtp::Packet {
                header,
                payload: pkt.payload.clone(),
            }) {
                Ok(()) => {
                    self.packets_forwarded.fetch_add(1, Ordering::Relaxed);
                    self.bytes_forwarded.fetch_add(len, Ordering::Relaxed);
                }
                Err(_) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    pub fn stats(&self) -> WorkerStats {
        WorkerStats {
            peers: self.member_count() as u32,
            packets_in: self.packets_in.load(Ordering::Relaxed),
            packets_forwarded: self.packets_forwarded.load(Ordering::Relaxed),
            bytes_forwarded: self.bytes_forwarded.load(Ordering::Relaxed),
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
