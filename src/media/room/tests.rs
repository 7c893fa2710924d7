//! Room tests: routing, slot events and bites, through the event queue.

use std::time::Duration;

use super::*;
use crate::wire::signal::Event;

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
    // A well-formed 20 ms Opus packet (TOC: CELT fullband 20 ms, one frame), so bites
    // can be cut from it.
    let mut payload = vec![0xAB; payload_len];
    if let Some(toc) = payload.first_mut() {
        *toc = 0xF8;
    }
    rtp::Packet {
        header,
        payload: Bytes::from(payload),
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

/// The `slots` events waiting: (listener, the JSON the client gets).
fn slot_events(room: &mut Room) -> Vec<(SessionId, String)> {
    events(room)
        .into_iter()
        .filter_map(|e| match e {
            RoomEvent::Slots { listener, slots } => {
                Some((listener, Event::Slots { slots }.to_json()))
            }
            _ => None,
        })
        .collect()
}

/// The bites waiting: (speaker, start, duration in ms).
fn bite_events(room: &mut Room) -> Vec<(SessionId, u64, u64)> {
    events(room)
        .into_iter()
        .filter_map(|e| match e {
            RoomEvent::Bite { speaker, bite, .. } => {
                Some((speaker, bite.start_unix_ms, bite.duration_ms()))
            }
            _ => None,
        })
        .collect()
}

/// `speaker` talks for `packets` packets, 20 ms apart from `t0`, with a selection tick
/// every 100 ms; returns every forward made.
fn talk(room: &mut Room, speaker: u64, packets: u16, t0: Instant) -> Vec<Forward> {
    talk_from(room, speaker, 0, packets, t0)
}

/// Like [`talk`], with sequence numbers from `first`; the wall clock is 1 000 000 ms at `t0`.
fn talk_from(room: &mut Room, speaker: u64, first: u16, packets: u16, t0: Instant) -> Vec<Forward> {
    let mut all = Vec::new();
    for n in first..first + packets {
        let since = 20 * u64::from(n);
        let now = t0 + Duration::from_millis(since);
        let mut out = Vec::new();
        room.on_rtp(
            SessionId(speaker),
            Some(LEVEL_ID),
            &packet(speaker as u32, n, 30, 60),
            now,
            1_000_000 + since,
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
    let mut room = Room::new(None);
    member(&mut room, 1, 2);
    let ev = slot_events(&mut room);
    assert_eq!(ev.len(), 1, "{ev:?}");
    let (listener, json) = &ev[0];
    assert_eq!(*listener, SessionId(1));
    let v: serde_json::Value = serde_json::from_str(json).expect("json");
    assert_eq!(v["type"], "slots");
    assert_eq!(v["slots"].as_array().map(Vec::len), Some(2));
    assert!(v["slots"][0]["userid"].is_null());
    assert!(room.poll_event().is_none(), "drained");
}

#[test]
fn speech_reaches_live_listeners_never_the_speaker_and_slot_changes_are_queued() {
    let mut room = Room::new(None);
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
    let told = slot_events(&mut room);
    assert_eq!(told.len(), 2, "{told:?}");
    assert!(told.iter().all(|(_, j)| j.contains(r#""userid":"u1""#)));
    let stats = room.stats();
    assert_eq!(stats.packets_in, 50);
    assert_eq!(stats.packets_forwarded, forwards.len() as u64);
    assert_eq!(stats.bytes_forwarded, 60 * forwards.len() as u64);
}

#[test]
fn nothing_is_sent_to_a_member_whose_connection_is_not_up() {
    let mut room = Room::new(None);
    member(&mut room, 1, 1);
    member(&mut room, 2, 1);
    room.set_live(SessionId(1));
    let forwards = talk(&mut room, 1, 30, Instant::now());
    assert!(forwards.is_empty(), "member 2 is not live: {forwards:?}");
}

#[test]
fn a_speaker_who_leaves_frees_the_slot_and_listeners_are_told() {
    let mut room = Room::new(None);
    member(&mut room, 1, 1);
    member(&mut room, 2, 1);
    room.set_live(SessionId(2));
    let t0 = Instant::now();
    talk(&mut room, 1, 20, t0);
    events(&mut room);
    room.remove_member(SessionId(1), t0 + Duration::from_millis(500));
    let ev = slot_events(&mut room);
    assert_eq!(ev.len(), 1, "{ev:?}");
    let (listener, json) = &ev[0];
    assert_eq!(*listener, SessionId(2));
    assert!(json.contains(r#""userid":null"#), "{json}");
    assert_eq!(room.member_count(), 1);
}

#[test]
fn padding_only_packets_are_neither_forwarded_nor_counted_as_silence() {
    let mut room = Room::new(None);
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
        0,
        &mut out,
    );
    assert!(out.is_empty());
}

/// Issue 19: a speaker's upstream losses reach the listener as gaps, however the speaker
/// interleaves padding-only probes (Chromium, with transport-cc) with its audio; the
/// padding itself is never forwarded and leaves no gap.
#[test]
fn upstream_losses_around_padding_reach_the_listener_as_exact_gaps() {
    let mut room = Room::new(None);
    member(&mut room, 1, 1);
    member(&mut room, 2, 1);
    room.set_live(SessionId(2));
    let t0 = Instant::now();
    let before = talk(&mut room, 1, 20, t0);
    assert!(!before.is_empty());
    let mut slot_seqs: Vec<u16> = before
        .iter()
        .map(|f| f.packet.header.sequence_number)
        .collect();
    // Upstream from seq 20 on: 'a' audio, 'p' padding only, '-' lost on the way in.
    let script = "a-ppa-p-a--pa-ppa-pa";
    let mut lost = 0;
    let mut sent_audio = 0;
    for (i, c) in script.chars().enumerate() {
        let seq = 20 + i as u16;
        let since = 20 * u64::from(seq);
        let payload = match c {
            'a' => 60,
            'p' => 0,
            _ => {
                lost += 1;
                continue;
            }
        };
        let mut out = Vec::new();
        room.on_rtp(
            SessionId(1),
            Some(LEVEL_ID),
            &packet(1, seq, 30, payload),
            t0 + Duration::from_millis(since),
            1_000_000 + since,
            &mut out,
        );
        if c == 'a' {
            sent_audio += 1;
        }
        assert!(
            out.iter().all(|f| !f.packet.payload.is_empty()),
            "padding forwarded"
        );
        slot_seqs.extend(out.iter().map(|f| f.packet.header.sequence_number));
    }
    assert_eq!(
        slot_seqs.len(),
        before.len() + sent_audio,
        "every audio packet forwarded once"
    );
    let gaps: usize = slot_seqs
        .windows(2)
        .map(|w| usize::from(w[1].wrapping_sub(w[0])) - 1)
        .sum();
    // Every '-' sits between two forwarded packets here.
    assert_eq!(gaps, lost, "slot {slot_seqs:?}");
}

fn bite_room() -> Room {
    let mut room = Room::new(Some(CutterConfig::default()));
    for id in 1..=3 {
        member(&mut room, id, 1);
        room.set_live(SessionId(id));
    }
    events(&mut room);
    room
}

#[test]
fn an_utterance_becomes_one_bite_after_the_silence() {
    let mut room = bite_room();
    let t0 = Instant::now();
    talk(&mut room, 1, 50, t0); // 1 s of speech
    assert!(bite_events(&mut room).is_empty(), "still open");
    room.tick(t0 + Duration::from_millis(1000 + 300));
    assert!(
        bite_events(&mut room).is_empty(),
        "600 ms of silence not over yet"
    );
    room.tick(t0 + Duration::from_millis(1000 + 700));
    let bites = bite_events(&mut room);
    assert_eq!(bites.len(), 1, "{bites:?}");
    let (speaker, start, duration) = bites[0];
    assert_eq!(speaker, SessionId(1));
    assert_eq!(duration, 1000);
    assert!((999_960..=1_000_000).contains(&start), "{start}");
}

#[test]
fn a_speaker_who_leaves_mid_bite_still_gets_the_bite_published() {
    let mut room = bite_room();
    let t0 = Instant::now();
    talk(&mut room, 2, 25, t0);
    room.remove_member(SessionId(2), t0 + Duration::from_millis(520));
    let bites = bite_events(&mut room);
    assert_eq!(bites.len(), 1, "{bites:?}");
    assert_eq!(bites[0].0, SessionId(2));
    assert_eq!(bites[0].2, 500);
}

#[test]
fn overlapping_bites_come_out_in_start_order_with_their_true_starts() {
    let mut room = bite_room();
    let t0 = Instant::now();
    // Member 1 speaks from 0 to 2 s; member 2 from 0.5 s to 1 s. Member 2's bite closes
    // first, but member 1's started earlier: it waits for it.
    for n in 0u16..100 {
        talk_from(&mut room, 1, n, 1, t0);
        if (25..50).contains(&n) {
            talk_from(&mut room, 2, n, 1, t0);
        }
        if n % 5 == 4 {
            room.tick(t0 + Duration::from_millis(20 * u64::from(n)));
        }
    }
    let early = bite_events(&mut room);
    assert!(
        early.is_empty(),
        "member 2's bite was released ahead of member 1's: {early:?}"
    );
    room.tick(t0 + Duration::from_millis(2_000 + 700));
    let bites = bite_events(&mut room);
    assert_eq!(bites.len(), 2, "{bites:?}");
    assert_eq!(bites[0].0, SessionId(1));
    assert_eq!(bites[1].0, SessionId(2));
    assert!(bites[0].1 < bites[1].1, "starts increase: {bites:?}");
    assert!(
        bites[1].1 >= 1_000_480 && bites[1].1 <= 1_000_500,
        "member 2's start is its own, not nudged: {bites:?}"
    );
}

#[test]
fn without_a_cutter_no_bites_are_made() {
    let mut room = Room::new(None);
    member(&mut room, 1, 1);
    member(&mut room, 2, 1);
    let t0 = Instant::now();
    talk(&mut room, 1, 50, t0);
    room.tick(t0 + Duration::from_secs(3));
    assert!(bite_events(&mut room).is_empty());
}

// Presence: the members and speakers events (`presence`), on scripted time.

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
    assert_eq!(presence::members_every(3), Duration::from_millis(200));
    assert_eq!(presence::members_every(50), Duration::from_millis(200));
    assert_eq!(presence::members_every(500), Duration::from_secs(2));
}

#[test]
fn levels_are_told_in_dbov_rounded_to_three_db() {
    assert_eq!(presence::told_level(97.0), -30);
    assert_eq!(presence::told_level(96.0), -30);
    assert_eq!(presence::told_level(95.0), -33);
    assert_eq!(presence::told_level(0.0), -126, "silence, to the step");
    assert_eq!(presence::told_level(127.0), 0);
    assert_eq!(presence::told_level(300.0), 0);
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

#[test]
fn a_newcomer_is_told_who_speaks_at_once() {
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
