//! Speaker selection: which members each listener hears in its receive slots.
//!
//! Forwarding every speaker to every listener would make bandwidth and decode
//! cost grow with the size of the conversation, so each listener gets a fixed
//! number of receive slots (0..=3) and the SFU fills them with the loudest
//! current speakers other than the listener itself. This module only decides
//! who goes where; it is a plain state machine in the str0m style: loudness and
//! time come in (`on_audio`, `tick`), slot changes come out, and it owns no
//! sockets or clocks.
//!
//! Loudness. Each packet is mapped to "dB above silence", `127 - dBov` (0 is
//! silence, 127 is 0 dBov), and folded into a per-member exponential moving
//! average with weight [`SMOOTHING`] per packet, so one loud click does not
//! outrank someone who has been talking. Without the RFC 6464 extension a
//! voiced packet counts as [`super::speech::INFERRED_VOICED_DBOV`] and an unvoiced one as
//! silence. Whether someone is a *speaker* is a separate, crisper question:
//! they sent a speech packet within [`SelectorConfig::hold`], and any packet at all within
//! [`SelectorConfig::absent`]: a member that sends nothing (a muted browser: its sender has no
//! track) is not speaking, and need not wait out the hold. A pause under DTX still sends a
//! packet every 400 ms, so it does not count as absence.
//!
//! Stickiness. Slots must not flap, or listeners hear half-words and the
//! rewriters keep re-anchoring. So a newcomer only takes a *free* slot
//! immediately; to take an occupied one it must beat the quietest occupant by
//! a margin, and that occupant must have had the slot for a minimum time.
//! Occupants never move between slot indices. Someone who stops speaking is
//! dropped as soon as `hold` runs out, because keeping a silent slot helps no
//! one while a waiting speaker goes unheard.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use super::speech::{Loudness, SPEECH_THRESHOLD_DBOV};

/// How the selector names members: the room uses session ids, the tests small numbers.
pub trait MemberId: Copy + Ord + Debug {}
impl<T: Copy + Ord + Debug> MemberId for T {}

/// Weight of each packet in the loudness moving average. At 50 packets/s the
/// average follows a change with a time constant of about 200 ms: slow enough
/// to ignore single packets, fast enough to settle well within the default
/// `min_hold_in_slot`.
pub const SMOOTHING: f32 = 0.1;

/// Tuning of the selector.
#[derive(Clone, Debug)]
pub struct SelectorConfig {
    /// A packet at or louder than this (`dbov <= threshold`) counts as speech.
    /// Default 60: normal speech sits around 20–40, room noise well below 60.
    pub speech_threshold_dbov: u8,
    /// A member stays a speaker this long after their last speech packet, so
    /// the pauses between words and sentences do not empty the slot.
    /// Default 800 ms.
    pub hold: Duration,
    /// A member from which no packet at all came for this long is no speaker, whatever
    /// `hold` says (it muted: nothing is sent). Longer than the 400 ms between the packets
    /// of a DTX pause. Default 500 ms.
    pub absent: Duration,
    /// A challenger must be more than this many dB louder (smoothed) than the
    /// quietest occupant to take its slot. Default 6 dB.
    pub switch_margin_db: f32,
    /// An occupant that is still speaking is not displaced before it has held
    /// the slot this long. Default 1 s.
    pub min_hold_in_slot: Duration,
}

impl Default for SelectorConfig {
    fn default() -> Self {
        SelectorConfig {
            speech_threshold_dbov: SPEECH_THRESHOLD_DBOV,
            hold: Duration::from_millis(800),
            absent: Duration::from_millis(500),
            switch_margin_db: 6.0,
            min_hold_in_slot: Duration::from_secs(1),
        }
    }
}

/// One listener's slot mapping changed; the full new mapping is given (index = slot number).
#[derive(Clone, Debug, PartialEq)]
pub struct SlotChange<M> {
    pub listener: M,
    pub slots: Vec<Option<M>>,
}

struct Member<M> {
    /// Smoothed loudness in dB above silence (see [`Loudness::db`]).
    level: f32,
    last_speech: Option<Instant>,
    /// When its last packet (speech or not) came.
    last_packet: Option<Instant>,
    /// Who this member hears, by slot index.
    slots: Vec<Option<M>>,
    /// When each slot's occupant took it, for `min_hold_in_slot`.
    entered: Vec<Option<Instant>>,
    /// Where this member's audio goes: the inverse of every listener's
    /// `slots`, kept in step with them so the per-packet path is a lookup.
    dests: Vec<(M, usize)>,
    /// The slot count changed outside `tick`; the next tick reports the
    /// mapping even if it assigns nothing new.
    dirty: bool,
}

impl<M: MemberId> Member<M> {
    fn new(slots: usize) -> Self {
        Member {
            level: 0.0,
            last_speech: None,
            last_packet: None,
            slots: vec![None; slots],
            entered: vec![None; slots],
            dests: Vec::new(),
            dirty: false,
        }
    }
}

/// Decides, for every listener, which speakers fill its slots.
pub struct Selector<M> {
    cfg: SelectorConfig,
    /// Ordered so that ticks visit listeners, and report changes, in a
    /// deterministic order.
    members: BTreeMap<M, Member<M>>,
}

impl<M: MemberId> Selector<M> {
    pub fn new(cfg: SelectorConfig) -> Self {
        Selector {
            cfg,
            members: BTreeMap::new(),
        }
    }

    /// A member joins with `slots` receive slots (0 = send-only client).
    ///
    /// Adding a member that is already present changes its slot count; any
    /// speakers in slots that disappear stop being routed to it at once, and
    /// the next `tick` reports its new mapping.
    pub fn add_member(&mut self, id: M, slots: usize) {
        let Some(m) = self.members.get_mut(&id) else {
            self.members.insert(id, Member::new(slots));
            return;
        };
        if m.slots.len() == slots {
            return;
        }
        let dropped: Vec<(usize, M)> = m
            .slots
            .iter()
            .enumerate()
            .skip(slots)
            .filter_map(|(i, s)| s.map(|s| (i, s)))
            .collect();
        m.slots.resize(slots, None);
        m.entered.resize(slots, None);
        m.dirty = true;
        for (i, speaker) in dropped {
            self.unroute(speaker, id, i);
        }
    }

    /// A member leaves: it is removed as a speaker everywhere and its own slots disappear.
    /// Returns the `SlotChange`s this causes (other listeners whose slot it held); those slots are freed at once.
    ///
    /// Freed slots are refilled by the next `tick`, not here, so that all
    /// assignment decisions are made in one place.
    pub fn remove_member(&mut self, id: M) -> Vec<SlotChange<M>> {
        let Some(gone) = self.members.remove(&id) else {
            return Vec::new();
        };
        for (i, speaker) in gone.slots.iter().enumerate() {
            if let Some(speaker) = speaker {
                self.unroute(*speaker, id, i);
            }
        }
        let mut changes = Vec::new();
        for &(listener, i) in &gone.dests {
            let Some(m) = self.members.get_mut(&listener) else {
                continue;
            };
            if let (Some(slot), Some(entered)) = (m.slots.get_mut(i), m.entered.get_mut(i)) {
                *slot = None;
                *entered = None;
            }
            // A speaker holds at most one slot per listener, so each listener
            // appears here once.
            changes.push(SlotChange {
                listener,
                slots: m.slots.clone(),
            });
        }
        changes.sort_by_key(|c| c.listener);
        changes
    }

    /// One audio packet from member `id` at `now`. Cheap (called per packet): update smoothed loudness / last-speech time only.
    pub fn on_audio(&mut self, id: M, now: Instant, loudness: Loudness) {
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        m.level += SMOOTHING * (loudness.db() - m.level);
        m.last_packet = Some(m.last_packet.map_or(now, |t| t.max(now)));
        if loudness.is_speech(self.cfg.speech_threshold_dbov) {
            // Packets may be handed in slightly out of time order; never let
            // an older one shorten the hold.
            m.last_speech = Some(m.last_speech.map_or(now, |t| t.max(now)));
        }
    }

    /// Recompute assignments (caller calls this every ~50–100 ms and after `on_audio` when it wants). Returns changes.
    pub fn tick(&mut self, now: Instant) -> Vec<SlotChange<M>> {
        // Rank once for all listeners: loudest first, ties to the lower id so
        // the outcome never depends on float noise or map order.
        let mut ranked: Vec<(M, f32)> = self
            .members
            .iter()
            .filter(|(id, _)| self.is_speaker(**id, now))
            .map(|(id, m)| (*id, m.level))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));

        let listeners: Vec<M> = self.members.keys().copied().collect();
        let mut changes = Vec::new();
        for listener in listeners {
            let Some(m) = self.members.get(&listener) else {
                continue;
            };
            let old = m.slots.clone();
            let mut slots = m.slots.clone();
            let mut entered = m.entered.clone();
            let dirty = m.dirty;
            self.assign(listener, &mut slots, &mut entered, &ranked, now);

            for (i, (before, after)) in old.iter().zip(&slots).enumerate() {
                if before != after {
                    if let Some(s) = before {
                        self.unroute(*s, listener, i);
                    }
                    if let Some(s) = after {
                        self.route(*s, listener, i);
                    }
                }
            }
            let changed = old != slots;
            if let Some(m) = self.members.get_mut(&listener) {
                m.slots.clone_from(&slots);
                m.entered = entered;
                m.dirty = false;
            }
            if changed || dirty {
                changes.push(SlotChange { listener, slots });
            }
        }
        changes
    }

    /// The level at or above which a packet counts as speech (`dbov <= threshold`).
    pub fn speech_threshold(&self) -> u8 {
        self.cfg.speech_threshold_dbov
    }

    /// Current mapping of one listener (empty for an unknown member).
    pub fn slots_of(&self, listener: M) -> &[Option<M>] {
        self.members
            .get(&listener)
            .map_or(&[][..], |m| m.slots.as_slice())
    }

    /// Where a packet from `source` must go right now: (listener, slot index) pairs.
    /// Kept up to date as assignments change, so this is a lookup.
    pub fn destinations(&self, source: M) -> &[(M, usize)] {
        self.members
            .get(&source)
            .map_or(&[][..], |m| m.dests.as_slice())
    }

    /// `id`'s smoothed loudness in dB above silence (`127 - dBov`), if it is a member.
    pub fn level_of(&self, id: M) -> Option<f32> {
        self.members.get(&id).map(|m| m.level)
    }

    /// Whether `id` sent a speech packet within `hold` of `now`, and a packet of any kind
    /// within `absent`.
    pub fn is_speaker(&self, id: M, now: Instant) -> bool {
        let within =
            |t: Option<Instant>, d| t.is_some_and(|t| now.saturating_duration_since(t) <= d);
        self.members.get(&id).is_some_and(|m| {
            within(m.last_speech, self.cfg.hold) && within(m.last_packet, self.cfg.absent)
        })
    }

    /// Fill one listener's slots from the ranked speakers.
    fn assign(
        &self,
        listener: M,
        slots: &mut [Option<M>],
        entered: &mut [Option<Instant>],
        ranked: &[(M, f32)],
        now: Instant,
    ) {
        for (slot, since) in slots.iter_mut().zip(entered.iter_mut()) {
            if slot.is_some_and(|s| !self.is_speaker(s, now)) {
                *slot = None;
                *since = None;
            }
        }

        let level = |id: M| self.members.get(&id).map_or(0.0, |m| m.level);
        for &(candidate, candidate_level) in ranked {
            if candidate == listener || slots.contains(&Some(candidate)) {
                continue;
            }
            if let Some(free) = slots.iter().position(Option::is_none) {
                slots[free] = Some(candidate);
                entered[free] = Some(now);
                continue;
            }
            // Only the quietest occupant is challenged: displacing a louder
            // one would make the result depend on who happened to be settled.
            // Ties go against the higher id, mirroring the ranking.
            let quietest = slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.map(|s| (i, s, level(s))))
                .min_by(|a, b| a.2.total_cmp(&b.2).then(b.1.cmp(&a.1)));
            let Some((i, _, occupant_level)) = quietest else {
                break; // no slots at all
            };
            let settled = entered[i]
                .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.min_hold_in_slot);
            if settled && candidate_level > occupant_level + self.cfg.switch_margin_db {
                slots[i] = Some(candidate);
                entered[i] = Some(now);
            } else {
                // Candidates are in descending loudness and the quietest
                // occupant is unchanged, so nobody further down can win either.
                break;
            }
        }
    }

    fn route(&mut self, source: M, listener: M, slot: usize) {
        if let Some(m) = self.members.get_mut(&source) {
            m.dests.push((listener, slot));
        }
    }

    fn unroute(&mut self, source: M, listener: M, slot: usize) {
        if let Some(m) = self.members.get_mut(&source) {
            m.dests.retain(|&d| d != (listener, slot));
        }
    }
}

#[cfg(test)]
mod tests;
