//! Presence: the members and speakers events ([`crate::media::room::presence`]), on scripted
//! time, through the room's event queue.

use super::*;

/// The members events waiting: (who is told, the user ids listed).
fn members_events(room: &mut Room) -> Vec<(Vec<u64>, Vec<String>)> {
    events(room)
        .into_iter()
        .filter_map(|e| match e {
            RoomEvent::Members { to, members } => Some((
                to.iter().map(|s| s.0).collect(),
                members.into_iter().map(|m| m.userid).collect(),
            )),
            _ => None,
        })
        .collect()
}

/// Who is told, and what: (user id, level) per speaker.
type Told = (Vec<u64>, Vec<(String, i16)>);

/// The speakers events waiting.
fn speakers_events(room: &mut Room) -> Vec<Told> {
    events(room)
        .into_iter()
        .filter_map(|e| match e {
            RoomEvent::Speakers { to, speakers } => Some((
                to.iter().map(|s| s.0).collect(),
                speakers.into_iter().map(|s| (s.userid, s.level)).collect(),
            )),
            _ => None,
        })
        .collect()
}

fn users(ids: &[u64]) -> Vec<String> {
    ids.iter().map(|i| format!("u{i}")).collect()
}

/// One packet of `speaker` at `dbov`, sequence `seq`, at `now`.
fn say(room: &mut Room, speaker: u64, seq: u16, dbov: u8, now: Instant) {
    let mut out = Vec::new();
    room.on_rtp(
        SessionId(speaker),
        Some(LEVEL_ID),
        &packet(speaker as u32, seq, dbov, 60),
        now,
        0,
        &mut out,
    );
}

#[test]
fn a_member_is_told_the_members_after_its_answer_and_the_others_at_the_next_tick() {
    let mut room = Room::new(None);
    let t0 = Instant::now();
    member(&mut room, 1, 1);
    assert_eq!(members_events(&mut room), vec![(vec![1], users(&[1]))]);
    room.tick(t0);
    assert!(members_events(&mut room).is_empty(), "1 knows");
    member(&mut room, 2, 1);
    // The newcomer at once, sorted, itself included ...
    assert_eq!(members_events(&mut room), vec![(vec![2], users(&[1, 2]))]);
    // ... the one already there at the tick; nobody twice.
    room.tick(t0 + Duration::from_millis(50));
    assert_eq!(members_events(&mut room), vec![(vec![1], users(&[1, 2]))]);
    room.tick(t0 + Duration::from_millis(100));
    assert!(members_events(&mut room).is_empty());
}

#[test]
fn a_leave_is_told_to_those_who_stay() {
    let mut room = Room::new(None);
    let t0 = Instant::now();
    for id in 1..=3 {
        member(&mut room, id, 1);
    }
    room.tick(t0);
    events(&mut room);
    room.remove_member(SessionId(2), t0 + Duration::from_secs(1));
    assert_eq!(
        members_events(&mut room),
        vec![(vec![1, 3], users(&[1, 3]))]
    );
}

#[test]
fn a_burst_of_joins_is_told_at_most_five_times_a_second() {
    let mut room = Room::new(None);
    let t0 = Instant::now();
    member(&mut room, 1, 1);
    events(&mut room);
    let mut broadcasts = Vec::new();
    // A join every 50 ms for a second, the room ticking every 50 ms.
    for i in 0..20u64 {
        let now = t0 + Duration::from_millis(50 * i);
        member(&mut room, 2 + i, 1);
        room.tick(now);
        for (to, list) in members_events(&mut room) {
            if to != vec![2 + i] {
                broadcasts.push((now, to, list.len()));
            }
        }
    }
    room.tick(t0 + Duration::from_secs(2));
    for (to, list) in members_events(&mut room) {
        broadcasts.push((t0 + Duration::from_secs(2), to, list.len()));
    }
    assert!(broadcasts.len() <= 6, "{broadcasts:?}");
    for w in broadcasts.windows(2) {
        assert!(
            w[1].0 - w[0].0 >= Duration::from_millis(200),
            "{broadcasts:?}"
        );
    }
    // In the end everyone has heard the full list, the first member included.
    let last = broadcasts.last().expect("a broadcast");
    assert_eq!(last.2, 21);
    assert!(broadcasts.iter().any(|(_, to, _)| to.contains(&1)));
    room.tick(t0 + Duration::from_secs(3));
    assert!(members_events(&mut room).is_empty(), "nobody is behind");
}

#[test]
fn a_big_room_broadcasts_its_members_less_often() {
    assert_eq!(
        crate::media::room::presence::members_every(3),
        Duration::from_millis(200)
    );
    assert_eq!(
        crate::media::room::presence::members_every(50),
        Duration::from_millis(200)
    );
    assert_eq!(
        crate::media::room::presence::members_every(500),
        Duration::from_secs(2)
    );
}

#[test]
fn levels_are_told_in_dbov_rounded_to_three_db() {
    assert_eq!(crate::media::room::presence::told_level(97.0), -30);
    assert_eq!(crate::media::room::presence::told_level(96.0), -30);
    assert_eq!(crate::media::room::presence::told_level(95.0), -33);
    assert_eq!(
        crate::media::room::presence::told_level(0.0),
        -126,
        "silence, to the step"
    );
    assert_eq!(crate::media::room::presence::told_level(127.0), 0);
    assert_eq!(crate::media::room::presence::told_level(300.0), 0);
}

#[test]
fn speakers_are_told_to_everyone_when_they_change_at_most_five_times_a_second() {
    let mut room = Room::new(None);
    // Listener 3 has one slot: it hears one of the two speakers, and is told of both.
    member(&mut room, 1, 1);
    member(&mut room, 2, 1);
    member(&mut room, 3, 1);
    for id in 1..=3 {
        room.set_live(SessionId(id));
    }
    events(&mut room);
    let t0 = Instant::now();
    let mut told = Vec::new();
    // 1 and 2 talk (at -30 and -40 dBov) for 3 s, a packet each every 20 ms, a tick every 50.
    for n in 0..150u16 {
        let now = t0 + Duration::from_millis(20 * u64::from(n));
        say(&mut room, 1, n, 30, now);
        say(&mut room, 2, n, 40, now);
        if n % 5 == 0 || n % 5 == 2 {
            room.tick(now);
            told.extend(speakers_events(&mut room).into_iter().map(|e| (now, e)));
        }
    }
    assert!(!told.is_empty());
    for w in told.windows(2) {
        assert!(w[1].0 - w[0].0 >= Duration::from_millis(200), "{told:?}");
        assert_ne!(w[0].1.1, w[1].1.1, "told only when it changes: {told:?}");
    }
    for (_, (to, _)) in &told {
        assert_eq!(to, &vec![1, 2, 3]);
    }
    // Settled: both, loudest first, at their levels; no news for the last second.
    let (at, (_, last)) = told.last().expect("told");
    assert_eq!(
        last,
        &vec![("u1".to_string(), -30), ("u2".to_string(), -39)]
    );
    assert!(
        *at < t0 + Duration::from_secs(2),
        "steady speech is not news: {told:?}"
    );
    // Only 3 listened: 3's slot carries one of them, and it was told of both.
    assert_eq!(room.selector.slots_of(SessionId(3)).len(), 1);
    // They stop: after the hold (0.8 s), an empty list, once.
    let stop = t0 + Duration::from_millis(3000);
    let mut after = Vec::new();
    for i in 0..40u64 {
        let now = stop + Duration::from_millis(50 * i);
        room.tick(now);
        after.extend(speakers_events(&mut room).into_iter().map(|e| (now, e)));
    }
    assert_eq!(after.len(), 1, "{after:?}");
    let (when, (_, list)) = &after[0];
    assert!(list.is_empty());
    assert!(*when - stop <= Duration::from_millis(900), "{when:?}");
}

/// Members 1 and 2; 1 has spoken for 400 ms at -30 dBov; what they were told is drained.
fn one_of_two_speaking() -> Room {
    let mut room = Room::new(None);
    member(&mut room, 1, 1);
    member(&mut room, 2, 1);
    let t0 = Instant::now();
    for n in 0..20u16 {
        let now = t0 + Duration::from_millis(20 * u64::from(n));
        say(&mut room, 1, n, 30, now);
        room.tick(now);
    }
    events(&mut room);
    room
}

#[test]
fn a_newcomer_is_told_who_speaks_at_once() {
    let mut room = one_of_two_speaking();
    member(&mut room, 3, 1);
    let told = speakers_events(&mut room);
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].0, vec![3]);
    assert_eq!(told[0].1.len(), 1);
    assert_eq!(told[0].1[0].0, "u1");
}

#[test]
fn a_liar_is_no_louder_among_the_speakers_than_its_audio() {
    // Packets claiming -30 dBov whose payload is 2 bytes (DTX): silence, whatever they say.
    let mut room = Room::new(None);
    member(&mut room, 1, 1);
    member(&mut room, 2, 1);
    let t0 = Instant::now();
    for n in 0..50u16 {
        let now = t0 + Duration::from_millis(20 * u64::from(n));
        let mut out = Vec::new();
        room.on_rtp(
            SessionId(1),
            Some(LEVEL_ID),
            &packet(1, n, 30, 2),
            now,
            0,
            &mut out,
        );
        room.tick(now);
    }
    assert!(speakers_events(&mut room).is_empty());
}

#[test]
fn a_new_front_is_told_everything_again() {
    let mut room = one_of_two_speaking();
    room.announce();
    let all = events(&mut room);
    let kinds: Vec<&str> = all
        .iter()
        .map(|e| match e {
            RoomEvent::Slots { .. } => "slots",
            RoomEvent::Members { to, .. } if to == &[SessionId(1), SessionId(2)] => "members",
            RoomEvent::Speakers { to, .. } if to == &[SessionId(1), SessionId(2)] => "speakers",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["slots", "slots", "members", "speakers"]);
}
