//! Room tests: routing, slot events and bites, through the event queue.

use std::time::Duration;

use super::*;
use crate::media::red;
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
    member_red(room, id, slots, None);
}

/// A member whose slots get RED (payload type 63) with `red` packets of redundancy.
fn member_red(room: &mut Room, id: u64, slots: usize, red: Option<u8>) {
    let outputs = (0..slots)
        .map(|i| SlotOutput {
            mid: i.to_string(),
            payload_type: 111,
            rewriter: SlotRewriter::new(1000 * id as u32 + i as u32, 0, 0),
            red: red.map(|d| RedEncoder::new(63, 111, d)),
            history: None,
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

/// RED across a speaker switch: every packet a RED listener gets carries the slot's own
/// previous packet (same bytes, the slot's timestamp difference, the number right before),
/// whoever spoke it, so what the listener rebuilds from redundancy is the stream it would
/// have had; the primary is always the speaker's packet untouched.
#[test]
fn redundancy_follows_the_slot_stream_across_speaker_switches() {
    let mut room = Room::new(None);
    member_red(&mut room, 1, 1, Some(1));
    for id in [1, 2, 3] {
        if id != 1 {
            member(&mut room, id, 1);
        }
        room.set_live(SessionId(id));
    }
    events(&mut room);
    // 2 and 3 talk at once; 2 has the (only) slot until it leaves, then 3 takes it at
    // once: the slot's timeline runs on by the pause, well within RED's reach.
    let t0 = Instant::now();
    let mut forwards = talk(&mut room, 2, 20, t0);
    for n in 20..150u16 {
        let now = t0 + Duration::from_millis(20 * u64::from(n));
        for speaker in [2u64, 3] {
            if speaker == 2 && n >= 60 {
                continue;
            }
            let mut out = Vec::new();
            let pkt = packet(speaker as u32, n, 30, 60);
            room.on_rtp(SessionId(speaker), Some(LEVEL_ID), &pkt, now, 0, &mut out);
            forwards.extend(out);
        }
        if n == 60 {
            room.remove_member(SessionId(2), now);
        }
        if n % 5 == 4 {
            room.tick(now);
        }
    }
    let to_red: Vec<&Forward> = forwards
        .iter()
        .filter(|f| f.listener == SessionId(1))
        .collect();
    let from = |f: &Forward| (f.packet.payload.len(), f.packet.header.sequence_number);
    assert!(
        to_red.len() > 100,
        "{} forwards to the RED listener",
        to_red.len()
    );
    let mut carried = 0;
    let mut switched = false;
    for pair in to_red.windows(2) {
        let (prev, cur) = (&pair[0].packet, &pair[1].packet);
        assert_eq!(cur.header.payload_type, 63, "RED's payload type");
        assert_eq!(
            cur.header.sequence_number,
            prev.header.sequence_number.wrapping_add(1),
            "one slot stream: {:?} then {:?}",
            from(pair[0]),
            from(pair[1])
        );
        let blocks = red::unpack(&cur.payload).expect("a RED payload");
        let prev_primary = red::unpack(&prev.payload)
            .expect("RED")
            .pop()
            .expect("primary");
        let primary = blocks.last().expect("primary");
        assert_eq!(primary.payload_type, 111);
        assert_eq!(primary.data.len(), 60, "the speaker's packet, untouched");
        if blocks.len() == 2 {
            carried += 1;
            assert_eq!(
                blocks[0].data, prev_primary.data,
                "the previous packet's bytes"
            );
            assert_eq!(
                blocks[0].ts_offset,
                cur.header.timestamp.wrapping_sub(prev.header.timestamp),
                "at the previous packet's place on the slot's timeline"
            );
            switched |= cur.header.marker;
        }
    }
    assert!(
        carried > to_red.len() - 5,
        "{carried} of {} carried redundancy",
        to_red.len()
    );
    assert!(
        switched,
        "the first packet after the switch carries the last one before it"
    );
    // The listener without RED gets plain Opus.
    assert!(
        forwards
            .iter()
            .filter(|f| f.listener != SessionId(1))
            .all(|f| f.packet.header.payload_type == 111 && f.packet.payload.len() == 60)
    );
}

mod presence;
