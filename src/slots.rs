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
//! voiced packet counts as [`INFERRED_VOICED_DBOV`] and an unvoiced one as
//! silence. Whether someone is a *speaker* is a separate, crisper question:
//! they sent a speech packet within [`SelectorConfig::hold`].
//!
//! Stickiness. Slots must not flap, or listeners hear half-words and the
//! rewriters keep re-anchoring. So a newcomer only takes a *free* slot
//! immediately; to take an occupied one it must beat the quietest occupant by
//! a margin, and that occupant must have had the slot for a minimum time.
//! Occupants never move between slot indices. Someone who stops speaking is
//! dropped as soon as `hold` runs out, because keeping a silent slot helps no
//! one while a waiting speaker goes unheard.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub type MemberId = u64;

/// How loud one packet is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loudness {
    /// RFC 6464 byte already split: `dbov` is the level in -dBov (0 loudest,
    /// 127 silence), `voice` the V flag.
    ///
    /// The V flag is not used: many senders leave it unset whatever is said,
    /// so the level alone decides.
    Level { dbov: u8, voice: bool },
    /// No extension negotiated: voice activity inferred from the stream.
    Inferred { voiced: bool },
}

/// Level, in -dBov, credited to an `Inferred { voiced: true }` packet: a
/// typical level for normal speech, so inferred and measured speakers compete
/// on roughly equal terms.
pub const INFERRED_VOICED_DBOV: u8 = 40;

/// Weight of each packet in the loudness moving average. At 50 packets/s the
/// average follows a change with a time constant of about 200 ms: slow enough
/// to ignore single packets, fast enough to settle well within the default
/// `min_hold_in_slot`.
pub const SMOOTHING: f32 = 0.1;

const SILENCE_DBOV: u8 = 127;

impl Loudness {
    /// Loudness in dB above the RFC 6464 floor; 0 is silence.
    fn db(self) -> f32 {
        let dbov = match self {
            Loudness::Level { dbov, .. } => dbov.min(SILENCE_DBOV),
            Loudness::Inferred { voiced: true } => INFERRED_VOICED_DBOV,
            Loudness::Inferred { voiced: false } => SILENCE_DBOV,
        };
        f32::from(SILENCE_DBOV - dbov)
    }

    /// An inferred voiced packet is speech whatever the threshold: the
    /// inference already made that call and there is no level to compare.
    fn is_speech(self, threshold_dbov: u8) -> bool {
        match self {
            Loudness::Level { dbov, .. } => dbov <= threshold_dbov,
            Loudness::Inferred { voiced } => voiced,
        }
    }
}

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
            speech_threshold_dbov: 60,
            hold: Duration::from_millis(800),
            switch_margin_db: 6.0,
            min_hold_in_slot: Duration::from_secs(1),
        }
    }
}

/// One listener's slot mapping changed; the full new mapping is given (index = slot number).
#[derive(Clone, Debug, PartialEq)]
pub struct SlotChange {
    pub listener: MemberId,
    pub slots: Vec<Option<MemberId>>,
}

struct Member {
    /// Smoothed loudness in dB above silence (see [`Loudness::db`]).
    level: f32,
    last_speech: Option<Instant>,
    /// Who this member hears, by slot index.
    slots: Vec<Option<MemberId>>,
    /// When each slot's occupant took it, for `min_hold_in_slot`.
    entered: Vec<Option<Instant>>,
    /// Where this member's audio goes: the inverse of every listener's
    /// `slots`, kept in step with them so the per-packet path is a lookup.
    dests: Vec<(MemberId, usize)>,
    /// The slot count changed outside `tick`; the next tick reports the
    /// mapping even if it assigns nothing new.
    dirty: bool,
}

impl Member {
    fn new(slots: usize) -> Self {
        Member {
            level: 0.0,
            last_speech: None,
            slots: vec![None; slots],
            entered: vec![None; slots],
            dests: Vec::new(),
            dirty: false,
        }
    }
}

/// Decides, for every listener, which speakers fill its slots.
pub struct Selector {
    cfg: SelectorConfig,
    /// Ordered so that ticks visit listeners, and report changes, in a
    /// deterministic order.
    members: BTreeMap<MemberId, Member>,
}

impl Selector {
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
    pub fn add_member(&mut self, id: MemberId, slots: usize) {
        let Some(m) = self.members.get_mut(&id) else {
            self.members.insert(id, Member::new(slots));
            return;
        };
        if m.slots.len() == slots {
            return;
        }
        let dropped: Vec<(usize, MemberId)> = m
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
    pub fn remove_member(&mut self, id: MemberId) -> Vec<SlotChange> {
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
    pub fn on_audio(&mut self, id: MemberId, now: Instant, loudness: Loudness) {
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        m.level += SMOOTHING * (loudness.db() - m.level);
        if loudness.is_speech(self.cfg.speech_threshold_dbov) {
            // Packets may be handed in slightly out of time order; never let
            // an older one shorten the hold.
            m.last_speech = Some(m.last_speech.map_or(now, |t| t.max(now)));
        }
    }

    /// Recompute assignments (caller calls this every ~50–100 ms and after `on_audio` when it wants). Returns changes.
    pub fn tick(&mut self, now: Instant) -> Vec<SlotChange> {
        // Rank once for all listeners: loudest first, ties to the lower id so
        // the outcome never depends on float noise or map order.
        let mut ranked: Vec<(MemberId, f32)> = self
            .members
            .iter()
            .filter(|(id, _)| self.is_speaker(**id, now))
            .map(|(id, m)| (*id, m.level))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));

        let listeners: Vec<MemberId> = self.members.keys().copied().collect();
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

    /// Current mapping of one listener (empty for an unknown member).
    pub fn slots_of(&self, listener: MemberId) -> &[Option<MemberId>] {
        self.members
            .get(&listener)
            .map_or(&[][..], |m| m.slots.as_slice())
    }

    /// Where a packet from `source` must go right now: (listener, slot index) pairs.
    /// Kept up to date as assignments change, so this is a lookup.
    pub fn destinations(&self, source: MemberId) -> &[(MemberId, usize)] {
        self.members
            .get(&source)
            .map_or(&[][..], |m| m.dests.as_slice())
    }

    /// Whether `id` sent a speech packet within `hold` of `now`.
    pub fn is_speaker(&self, id: MemberId, now: Instant) -> bool {
        self.members.get(&id).is_some_and(|m| {
            m.last_speech
                .is_some_and(|t| now.saturating_duration_since(t) <= self.cfg.hold)
        })
    }

    /// Fill one listener's slots from the ranked speakers.
    fn assign(
        &self,
        listener: MemberId,
        slots: &mut [Option<MemberId>],
        entered: &mut [Option<Instant>],
        ranked: &[(MemberId, f32)],
        now: Instant,
    ) {
        for (slot, since) in slots.iter_mut().zip(entered.iter_mut()) {
            if slot.is_some_and(|s| !self.is_speaker(s, now)) {
                *slot = None;
                *since = None;
            }
        }

        let level = |id: MemberId| self.members.get(&id).map_or(0.0, |m| m.level);
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

    fn route(&mut self, source: MemberId, listener: MemberId, slot: usize) {
        if let Some(m) = self.members.get_mut(&source) {
            m.dests.push((listener, slot));
        }
    }

    fn unroute(&mut self, source: MemberId, listener: MemberId, slot: usize) {
        if let Some(m) = self.members.get_mut(&source) {
            m.dests.retain(|&d| d != (listener, slot));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn level(dbov: u8) -> Loudness {
        Loudness::Level { dbov, voice: true }
    }

    /// Sends a packet every 20 ms from each of `speakers` (id, dbov) for
    /// `dur` after `from`, ticking every 100 ms. Returns timed changes.
    fn run(
        sel: &mut Selector,
        from: Instant,
        dur: Duration,
        speakers: &[(MemberId, u8)],
    ) -> Vec<(Instant, SlotChange)> {
        let mut out = Vec::new();
        let steps = dur.as_millis() / 20;
        for k in 1..=steps {
            let t = from + ms(20) * u32::try_from(k).expect("short test run");
            for &(id, dbov) in speakers {
                sel.on_audio(id, t, level(dbov));
            }
            if k % 5 == 0 {
                out.extend(sel.tick(t).into_iter().map(|c| (t, c)));
            }
        }
        out
    }

    fn check_invariants(sel: &Selector) {
        for (&l, m) in &sel.members {
            assert_eq!(m.slots.len(), m.entered.len());
            for (i, s) in m.slots.iter().enumerate() {
                let Some(s) = *s else { continue };
                assert_ne!(s, l, "listener {l} hears itself");
                assert_eq!(
                    m.slots.iter().filter(|x| **x == Some(s)).count(),
                    1,
                    "{s} twice in {l}"
                );
                assert!(
                    sel.destinations(s).contains(&(l, i)),
                    "{s} not routed to {l}/{i}"
                );
            }
            for &(dl, di) in &m.dests {
                assert_eq!(
                    sel.slots_of(dl).get(di),
                    Some(&Some(l)),
                    "stale route {l}->{dl}/{di}"
                );
            }
            let mut d = m.dests.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), m.dests.len(), "duplicate routes for {l}");
        }
    }

    #[test]
    fn never_hear_yourself() {
        let mut sel = Selector::new(SelectorConfig::default());
        for id in 1..=3 {
            sel.add_member(id, 3);
        }
        let t0 = Instant::now();
        run(&mut sel, t0, ms(1000), &[(1, 20), (2, 30), (3, 40)]);
        for id in 1..=3u64 {
            let heard: Vec<MemberId> = sel.slots_of(id).iter().flatten().copied().collect();
            assert!(!heard.contains(&id));
            assert_eq!(heard.len(), 2);
            assert_eq!(sel.slots_of(id).iter().filter(|s| s.is_none()).count(), 1);
        }
        check_invariants(&sel);
    }

    #[test]
    fn top_k_by_level() {
        let mut sel = Selector::new(SelectorConfig::default());
        for id in 1..=4 {
            sel.add_member(id, 0);
        }
        sel.add_member(5, 2);
        let t0 = Instant::now();
        let changes = run(
            &mut sel,
            t0,
            ms(2000),
            &[(3, 30), (1, 10), (4, 40), (2, 20)],
        );
        assert_eq!(sel.slots_of(5), &[Some(1), Some(2)]);
        assert_eq!(changes.len(), 1, "assigned once, then stable: {changes:?}");
        assert_eq!(sel.destinations(1), &[(5, 0)]);
        assert_eq!(sel.destinations(2), &[(5, 1)]);
        assert!(sel.destinations(3).is_empty());
        assert!(sel.destinations(4).is_empty());
    }

    #[test]
    fn slightly_louder_challenger_does_not_displace() {
        let mut sel = Selector::new(SelectorConfig::default());
        sel.add_member(10, 1);
        for id in [1, 2, 3] {
            sel.add_member(id, 0);
        }
        let t0 = Instant::now();
        run(&mut sel, t0, ms(1000), &[(1, 30)]);
        assert_eq!(sel.slots_of(10), &[Some(1)]);

        // 3 dB louder, well past min_hold_in_slot: stays put.
        let t1 = t0 + ms(1000);
        let changes = run(&mut sel, t1, ms(3000), &[(1, 30), (2, 27)]);
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(sel.slots_of(10), &[Some(1)]);

        // 25 dB louder: takes over.
        let t2 = t1 + ms(3000);
        run(&mut sel, t2, ms(2000), &[(1, 30), (2, 27), (3, 5)]);
        assert_eq!(sel.slots_of(10), &[Some(3)]);
        check_invariants(&sel);
    }

    #[test]
    fn much_louder_challenger_waits_for_min_hold() {
        let cfg = SelectorConfig::default();
        let min_hold = cfg.min_hold_in_slot;
        let mut sel = Selector::new(cfg);
        sel.add_member(10, 1);
        sel.add_member(1, 0);
        sel.add_member(2, 0);
        let t0 = Instant::now();
        let first = run(&mut sel, t0, ms(100), &[(1, 30)]);
        let entered = t0 + ms(100);
        assert_eq!(
            first,
            vec![(
                entered,
                SlotChange {
                    listener: 10,
                    slots: vec![Some(1)]
                }
            )]
        );

        let changes = run(&mut sel, entered, ms(2000), &[(1, 30), (2, 5)]);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let (at, change) = &changes[0];
        assert_eq!(change.slots, vec![Some(2)]);
        assert!(
            *at >= entered + min_hold,
            "displaced after {:?}",
            *at - entered
        );
        assert!(
            *at <= entered + min_hold + ms(100),
            "displaced late: {:?}",
            *at - entered
        );
    }

    #[test]
    fn silent_occupant_is_freed_after_hold() {
        let cfg = SelectorConfig::default();
        let hold = cfg.hold;
        let mut sel = Selector::new(cfg);
        sel.add_member(10, 2);
        sel.add_member(1, 0);
        let t0 = Instant::now();
        run(&mut sel, t0, ms(1000), &[(1, 30)]);
        let last = t0 + ms(1000);
        assert_eq!(sel.slots_of(10), &[Some(1), None]);

        // Still within hold: kept, even though only silence arrives.
        sel.on_audio(1, last + ms(20), level(127));
        assert!(sel.tick(last + hold - ms(10)).is_empty());
        assert!(sel.is_speaker(1, last + hold - ms(10)));

        let changes = sel.tick(last + hold + ms(10));
        assert!(!sel.is_speaker(1, last + hold + ms(10)));
        assert_eq!(
            changes,
            vec![SlotChange {
                listener: 10,
                slots: vec![None, None]
            }]
        );
        assert!(sel.destinations(1).is_empty());
    }

    #[test]
    fn waiting_speaker_takes_slot_of_silent_occupant() {
        let cfg = SelectorConfig::default();
        let hold = cfg.hold;
        let mut sel = Selector::new(cfg);
        sel.add_member(10, 1);
        sel.add_member(1, 0);
        sel.add_member(2, 0);
        let t0 = Instant::now();
        run(&mut sel, t0, ms(2000), &[(1, 20), (2, 30)]);
        assert_eq!(sel.slots_of(10), &[Some(1)]);
        // 1 keeps sending, but only silence; 2 keeps talking.
        let t1 = t0 + ms(2000);
        run(&mut sel, t1, hold + ms(100), &[(1, 127), (2, 30)]);
        assert_eq!(sel.slots_of(10), &[Some(2)]);
        check_invariants(&sel);
    }

    #[test]
    fn occupants_keep_their_slot_index() {
        let mut sel = Selector::new(SelectorConfig::default());
        sel.add_member(10, 3);
        for id in 1..=4 {
            sel.add_member(id, 0);
        }
        let t0 = Instant::now();
        run(&mut sel, t0, ms(1000), &[(1, 10), (2, 20), (3, 30)]);
        assert_eq!(sel.slots_of(10), &[Some(1), Some(2), Some(3)]);
        // 1 falls silent; 2 and 3 do not move down.
        let t1 = t0 + ms(1000);
        run(&mut sel, t1, ms(1000), &[(2, 20), (3, 30)]);
        assert_eq!(sel.slots_of(10), &[None, Some(2), Some(3)]);
        // A newcomer takes the free slot at once, even though it is quieter.
        let t2 = t1 + ms(1000);
        let changes = run(&mut sel, t2, ms(100), &[(2, 20), (3, 30), (4, 50)]);
        assert_eq!(changes.len(), 1);
        assert_eq!(sel.slots_of(10), &[Some(4), Some(2), Some(3)]);
        check_invariants(&sel);
    }

    #[test]
    fn leaving_speaker_frees_slot_at_once() {
        let mut sel = Selector::new(SelectorConfig::default());
        sel.add_member(10, 1);
        sel.add_member(11, 2);
        sel.add_member(12, 0);
        sel.add_member(1, 0);
        let t0 = Instant::now();
        run(&mut sel, t0, ms(500), &[(1, 30)]);
        assert_eq!(sel.slots_of(10), &[Some(1)]);
        assert_eq!(sel.slots_of(11), &[Some(1), None]);

        let changes = sel.remove_member(1);
        assert_eq!(
            changes,
            vec![
                SlotChange {
                    listener: 10,
                    slots: vec![None]
                },
                SlotChange {
                    listener: 11,
                    slots: vec![None, None]
                },
            ]
        );
        assert_eq!(sel.slots_of(10), &[None]);
        assert!(sel.destinations(1).is_empty());
        assert!(sel.remove_member(1).is_empty());
        assert!(sel.slots_of(1).is_empty());
        check_invariants(&sel);
    }

    #[test]
    fn leaving_listener_is_unrouted() {
        let mut sel = Selector::new(SelectorConfig::default());
        sel.add_member(10, 1);
        sel.add_member(11, 1);
        sel.add_member(1, 0);
        let t0 = Instant::now();
        run(&mut sel, t0, ms(500), &[(1, 30)]);
        assert_eq!(sel.destinations(1).len(), 2);
        assert!(sel.remove_member(10).is_empty());
        assert_eq!(sel.destinations(1), &[(11, 0)]);
        check_invariants(&sel);
    }

    #[test]
    fn zero_slot_listener() {
        let mut sel = Selector::new(SelectorConfig::default());
        sel.add_member(1, 0);
        sel.add_member(2, 1);
        let t0 = Instant::now();
        let changes = run(&mut sel, t0, ms(500), &[(1, 30), (2, 30)]);
        assert!(sel.slots_of(1).is_empty());
        assert!(changes.iter().all(|(_, c)| c.listener != 1));
        // Send-only, but still heard.
        assert_eq!(sel.slots_of(2), &[Some(1)]);
        assert_eq!(sel.destinations(1), &[(2, 0)]);
        assert!(sel.destinations(2).is_empty());
    }

    #[test]
    fn shrinking_slots_unroutes_and_reports() {
        let mut sel = Selector::new(SelectorConfig::default());
        sel.add_member(10, 2);
        sel.add_member(1, 0);
        sel.add_member(2, 0);
        let t0 = Instant::now();
        run(&mut sel, t0, ms(500), &[(1, 10), (2, 20)]);
        assert_eq!(sel.slots_of(10), &[Some(1), Some(2)]);
        sel.add_member(10, 1);
        assert_eq!(sel.slots_of(10), &[Some(1)]);
        assert!(sel.destinations(2).is_empty());
        check_invariants(&sel);
        let changes = sel.tick(t0 + ms(520));
        assert_eq!(
            changes,
            vec![SlotChange {
                listener: 10,
                slots: vec![Some(1)]
            }]
        );
    }

    #[test]
    fn inferred_loudness() {
        let cfg = SelectorConfig::default();
        let hold = cfg.hold;
        let mut sel = Selector::new(cfg);
        sel.add_member(10, 1);
        sel.add_member(1, 0);
        sel.add_member(2, 0);
        let t0 = Instant::now();
        let voiced = Loudness::Inferred { voiced: true };
        let unvoiced = Loudness::Inferred { voiced: false };

        sel.on_audio(1, t0, unvoiced);
        assert!(!sel.is_speaker(1, t0));
        sel.on_audio(1, t0, voiced);
        assert!(sel.is_speaker(1, t0));
        assert_eq!(sel.tick(t0).len(), 1);
        assert_eq!(sel.slots_of(10), &[Some(1)]);

        // Unvoiced packets keep coming: freed once hold runs out.
        for k in 1..=50u32 {
            sel.on_audio(1, t0 + ms(20) * k, unvoiced);
        }
        assert_eq!(sel.slots_of(10), &[Some(1)]);
        sel.tick(t0 + hold + ms(1));
        assert_eq!(sel.slots_of(10), &[None]);

        // A measured loud speaker outranks an inferred one (nominal 40 dBov).
        let t1 = t0 + ms(2000);
        for k in 1..=25u32 {
            let t = t1 + ms(20) * k;
            sel.on_audio(1, t, voiced);
            sel.on_audio(2, t, level(10));
        }
        sel.tick(t1 + ms(500));
        assert_eq!(sel.slots_of(10), &[Some(2)]);
    }

    /// Small deterministic LCG, enough to shake out bookkeeping bugs.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn destinations_agree_with_slots_after_random_operations() {
        let cfg = SelectorConfig {
            min_hold_in_slot: ms(300),
            ..SelectorConfig::default()
        };
        let mut sel = Selector::new(cfg);
        let mut rng = Lcg(0x5eed);
        let mut now = Instant::now();
        let mut reported = 0;
        for _ in 0..20_000 {
            let id = rng.below(8) + 1;
            match rng.below(10) {
                0 => {
                    let k = usize::try_from(rng.below(4)).expect("small");
                    sel.add_member(id, k);
                }
                1 => {
                    for c in sel.remove_member(id) {
                        assert_eq!(sel.slots_of(c.listener), c.slots.as_slice());
                    }
                }
                2..=6 => {
                    let loudness = if rng.below(3) == 0 {
                        Loudness::Inferred {
                            voiced: rng.below(2) == 0,
                        }
                    } else {
                        let dbov = u8::try_from(rng.below(128)).expect("small");
                        Loudness::Level { dbov, voice: false }
                    };
                    sel.on_audio(id, now, loudness);
                }
                7 | 8 => {
                    for c in sel.tick(now) {
                        reported += 1;
                        assert_eq!(sel.slots_of(c.listener), c.slots.as_slice());
                    }
                    // Right after a tick: nobody silent holds a slot, and a
                    // free slot means every other speaker is already heard.
                    for (&l, m) in &sel.members {
                        assert!(m.slots.iter().flatten().all(|&s| sel.is_speaker(s, now)));
                        if m.slots.contains(&None) {
                            for &s in sel.members.keys() {
                                if s != l && sel.is_speaker(s, now) {
                                    assert!(m.slots.contains(&Some(s)), "{s} left out of {l}");
                                }
                            }
                        }
                    }
                }
                _ => now += ms(rng.below(400)),
            }
            check_invariants(&sel);
        }
        assert!(
            reported > 100,
            "the sequence exercised too little: {reported}"
        );
    }
}
