//! Selector tests: scripted scenarios and a randomized consistency run.

use super::*;

/// Tests name members by small numbers.
type MemberId = u64;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn level(dbov: u8) -> Loudness {
    Loudness::Level { dbov, voice: true }
}

/// Sends a packet every 20 ms from each of `speakers` (id, dbov) for
/// `dur` after `from`, ticking every 100 ms. Returns timed changes.
fn run(
    sel: &mut Selector<MemberId>,
    from: Instant,
    dur: Duration,
    speakers: &[(MemberId, u8)],
) -> Vec<(Instant, SlotChange<MemberId>)> {
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

fn check_invariants(sel: &Selector<MemberId>) {
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

    // Still within hold: kept, even though only silence arrives (a DTX pause: a packet
    // every 400 ms).
    sel.on_audio(1, last + ms(400), level(127));
    sel.on_audio(1, last + hold - ms(20), level(127));
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
fn a_member_that_sends_nothing_is_freed_without_waiting_for_the_hold() {
    // A muted browser (its sender has no track) sends no packet at all: it leaves its slot
    // once `absent` has passed, not the whole `hold`.
    let cfg = SelectorConfig::default();
    let (hold, absent) = (cfg.hold, cfg.absent);
    assert!(
        absent < hold && absent > ms(400),
        "longer than a DTX pause's packet gap"
    );
    let mut sel = Selector::new(cfg);
    sel.add_member(10, 1);
    sel.add_member(1, 0);
    let t0 = Instant::now();
    run(&mut sel, t0, ms(1000), &[(1, 30)]);
    let last = t0 + ms(1000);
    assert_eq!(sel.slots_of(10), &[Some(1)]);
    assert!(sel.tick(last + absent - ms(10)).is_empty());
    assert!(sel.is_speaker(1, last + absent - ms(10)));
    let changes = sel.tick(last + absent + ms(10));
    assert!(!sel.is_speaker(1, last + absent + ms(10)));
    assert_eq!(
        changes,
        vec![SlotChange {
            listener: 10,
            slots: vec![None]
        }]
    );
    // It speaks again: back on the free slot at once.
    let back = run(&mut sel, last + ms(600), ms(100), &[(1, 30)]);
    assert_eq!(sel.slots_of(10), &[Some(1)], "{back:?}");
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
