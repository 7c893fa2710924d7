//! Micro-benchmarks of our own per-packet code, without sockets or the webrtc crate:
//!
//! - `room_on_rtp/*`: `Room::on_rtp`, the whole per-packet routing of a worker (audio-level
//!   parse, selector update, one rewrite + header + `Forward` per destination),
//!   in a room of 10 with 3 speakers (9 destinations per packet) and in a large room of
//!   5 speakers + 95 listeners with 3 slots each (≈ 98 destinations per packet). Criterion's
//!   throughput is set to the number of destinations, so "elem/s" is forwarded packets/s
//!   and the time per element is our cost per forwarded packet (the forwards are dropped,
//!   as the engine does once it has handed them to the peer connections).
//! - `rewrite/*`: one `SlotRewriter::rewrite`, steady and with a speaker switch.
//! - `selector/*`: `Selector::on_audio` per packet and `Selector::tick` (every 50 ms) by room size.
//! - `ipc/*`: encode and decode of the front ↔ worker messages (an offer with a realistic SDP,
//!   a stats report, a slots event).
//! - `level_audit/*`: `LevelAudit::check` per received packet, on real Opus (libopus-encoded
//!   syllables): an honest speaker (checked in sampled runs), a distrusted one (every packet
//!   decoded), a quiet claim (never decoded).
//!
//! Run: `cargo bench --bench hot_path` (add `-- room_on_rtp` to filter).

use std::hint::black_box;
use std::time::{Duration, Instant};

use beep_webrtc::media::audit::{self, DecodeBudget, LevelAudit};
use beep_webrtc::media::bite::CutterConfig;
use beep_webrtc::media::ogg_opus::{self, BiteTags};
use beep_webrtc::media::rewrite::{SlotRewriter, SourceKey};
use beep_webrtc::media::room::{Forward, Room, RoomEvent, SlotOutput};
use beep_webrtc::media::selector::{Selector, SelectorConfig};
use beep_webrtc::media::speech::Loudness;
use beep_webrtc::wire::frame;
use beep_webrtc::wire::identity::Identity;
use beep_webrtc::wire::ids::SessionId;
use beep_webrtc::wire::ipc::{ToFront, ToWorker};
use beep_webrtc::wire::signal::{Event, SlotInfo};
use beep_webrtc::wire::stats::{
    BiteStats, DELAY_BUCKETS_US, DelayHistogram, LATENCY_BUCKETS_MS, WorkerStats,
};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rtc::rtp;

const LEVEL_ID: u8 = 1;

fn packet(ssrc: u32, seq: u16, ts: u32, dbov: u8) -> rtp::Packet {
    let mut header = rtp::header::Header {
        version: 2,
        payload_type: 111,
        sequence_number: seq,
        timestamp: ts,
        ssrc,
        ..Default::default()
    };
    header
        .set_extension(LEVEL_ID, Bytes::copy_from_slice(&[0x80 | dbov]))
        .unwrap();
    rtp::Packet {
        header,
        // TOC 0xF8: a valid 20 ms CELT frame, so a bite cutter keeps it.
        payload: Bytes::from([&[0xF8u8][..], &[0xAB; 59][..]].concat()),
    }
}

struct Fixture {
    room: Room,
    out: Vec<Forward>,
    speakers: Vec<SessionId>,
    destinations: usize,
}

/// `members` members, the first `speakers` of them talking, `slots` slots each; bites cut
/// with `bites`.
fn room(members: u64, speakers: u64, slots: usize, bites: Option<CutterConfig>) -> Fixture {
    let mut room = Room::new(bites);
    let mut out = Vec::new();
    for m in 0..members {
        let outputs = (0..slots)
            .map(|i| SlotOutput {
                mid: i.to_string(),
                payload_type: 111,
                rewriter: SlotRewriter::new(1000 + m as u32 * 10 + i as u32, 0, 0),
                red: None,
                history: None,
            })
            .collect();
        let identity = Identity {
            userid: format!("u{m}"),
            clientid: "c".into(),
        };
        room.add_member(SessionId(m), identity, outputs, Some(LEVEL_ID));
        room.set_live(SessionId(m));
    }
    let speakers: Vec<SessionId> = (0..speakers).map(SessionId).collect();
    let t0 = Instant::now();
    for n in 0..10u16 {
        for &s in &speakers {
            let p = packet(s.0 as u32, n, n as u32 * 960, 30);
            room.on_rtp(s, Some(LEVEL_ID), &p, t0, 0, &mut out);
        }
    }
    room.tick(t0);
    // Destinations of the first speaker's packets.
    out.clear();
    let p = packet(0, 10, 9600, 30);
    room.on_rtp(SessionId(0), Some(LEVEL_ID), &p, t0, 0, &mut out);
    let destinations = out.len();
    out.clear();
    Fixture {
        room,
        out,
        speakers,
        destinations,
    }
}

/// `Room::on_rtp` for speakers taking turns, 20 ms apart each; with bites on, what the
/// engine then does with them too: every finished bite remuxed to Ogg Opus (publishing is
/// the publisher task's, measured by loadgen).
fn bench_room(c: &mut Criterion) {
    for (group, bites) in [
        ("room_on_rtp", None),
        ("room_on_rtp_bites", Some(CutterConfig::default())),
    ] {
        let mut g = c.benchmark_group(group);
        for (name, members, speakers) in
            [("room10_3spk", 10u64, 3u64), ("large_5spk_95lst", 100, 5)]
        {
            let mut f = room(members, speakers, 3, bites);
            assert!(f.destinations > 0, "{name}: no destinations");
            g.throughput(Throughput::Elements(f.destinations as u64));
            let t0 = Instant::now();
            let mut n: u32 = 1000;
            g.bench_function(BenchmarkId::new(name, f.destinations), |b| {
                b.iter(|| {
                    let s = f.speakers[(n as usize) % f.speakers.len()];
                    let k = n / f.speakers.len() as u32;
                    let p = packet(s.0 as u32, k as u16, k.wrapping_mul(960), 30);
                    let now = t0 + Duration::from_millis(20 * k as u64);
                    f.room
                        .on_rtp(s, Some(LEVEL_ID), black_box(&p), now, 0, &mut f.out);
                    n = n.wrapping_add(1);
                    f.out.clear();
                    while let Some(ev) = f.room.poll_event() {
                        if let RoomEvent::Bite { bite, identity, .. } = ev {
                            let tags = BiteTags {
                                conversation: "bench",
                                user: &identity.userid,
                                client: &identity.clientid,
                                start_unix_ms: bite.start_unix_ms,
                            };
                            black_box(ogg_opus::write_bite(&bite, &tags, 1).ok());
                        }
                    }
                })
            });
        }
        g.finish();
    }
}

fn bench_rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("rewrite");
    g.throughput(Throughput::Elements(1));
    let t0 = Instant::now();
    let a = SourceKey {
        member: SessionId(1),
        ssrc: 11,
    };
    let b = SourceKey {
        member: SessionId(2),
        ssrc: 22,
    };
    g.bench_function("steady", |bch| {
        let mut rw = SlotRewriter::new(5, 100, 1000);
        let mut n: u32 = 0;
        bch.iter(|| {
            n = n.wrapping_add(1);
            black_box(rw.rewrite(a, n as u16, n.wrapping_mul(960), false, t0))
        })
    });
    g.bench_function("switch_every_packet", |bch| {
        let mut rw = SlotRewriter::new(5, 100, 1000);
        let mut n: u32 = 0;
        bch.iter(|| {
            n = n.wrapping_add(1);
            let src = if n.is_multiple_of(2) { a } else { b };
            let now = t0 + Duration::from_secs(3 * n as u64);
            black_box(rw.rewrite(src, n as u16, n.wrapping_mul(960), false, now))
        })
    });
    g.finish();
}

fn bench_selector(c: &mut Criterion) {
    let mut g = c.benchmark_group("selector");
    let t0 = Instant::now();
    g.bench_function("on_audio", |b| {
        let mut s = Selector::new(SelectorConfig::default());
        for m in 0..10 {
            s.add_member(m, 3);
        }
        let mut n: u64 = 0;
        b.iter(|| {
            n = n.wrapping_add(1);
            s.on_audio(
                n % 10,
                t0 + Duration::from_millis(n),
                black_box(Loudness::Level {
                    dbov: 30,
                    voice: true,
                }),
            )
        })
    });
    for members in [10u64, 100, 500] {
        let mut s = Selector::new(SelectorConfig::default());
        for m in 0..members {
            s.add_member(m, 3);
        }
        for k in 0..20u64 {
            for m in 0..5 {
                s.on_audio(
                    m,
                    t0 + Duration::from_millis(20 * k),
                    Loudness::Level {
                        dbov: 30 + m as u8,
                        voice: true,
                    },
                );
            }
        }
        let _ = s.tick(t0 + Duration::from_millis(400));
        let mut k: u64 = 0;
        g.bench_function(BenchmarkId::new("tick_5_speakers", members), |b| {
            b.iter(|| {
                k += 1;
                let now = t0 + Duration::from_millis(400 + k % 300);
                black_box(s.tick(now))
            })
        });
    }
    g.finish();
}

/// An offer as our webrtc-rs client makes it: three audio m-lines, ICE, DTLS, extensions.
fn sample_offer() -> String {
    let mut sdp = String::from(
        "v=0\r\no=- 4215775240449105457 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2\r\na=msid-semantic: WMS\r\n",
    );
    for mid in 0..3 {
        sdp.push_str(&format!(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
a=candidate:1966762134 1 udp 2130706431 127.0.0.1 51234 typ host\r\n\
a=ice-ufrag:QWERTYUIOPASDFGH\r\na=ice-pwd:qwertyuiopasdfghjklzxcvbnm123456\r\n\
a=fingerprint:sha-256 AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89\r\n\
a=setup:actpass\r\na=mid:{mid}\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
a=sendrecv\r\na=msid:mic mic\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\na=ssrc:123456789 cname:loadgen\r\n"
        ));
    }
    sdp
}

fn bench_ipc(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipc");
    let offer = ToWorker::Offer {
        session: SessionId(42),
        identity: Identity {
            userid: "user-1234".into(),
            clientid: "client-5678".into(),
        },
        sdp: sample_offer(),
    };
    let stats = ToFront::Stats(WorkerStats {
        peers: 100,
        packets_in: 123_456_789,
        packets_forwarded: 987_654_321,
        bytes_forwarded: 59_259_259_260,
        forward_delay: DelayHistogram {
            counts: vec![1_000_000; DELAY_BUCKETS_US.len() + 1],
            sum_us: 4_000_000_000,
        },
        bites: BiteStats {
            published: 12_345,
            spooled: 12,
            replayed: 12,
            latency_seconds_sum: 123.456,
            latency_count: 12_357,
            latency_buckets: vec![12_357; LATENCY_BUCKETS_MS.len() + 1],
            ..BiteStats::default()
        },
        ..WorkerStats::default()
    });
    let slot = |slot: u32, who: Option<(&str, &str)>| SlotInfo {
        clientid: who.map(|w| w.1.to_string()),
        mid: slot.to_string(),
        slot,
        userid: who.map(|w| w.0.to_string()),
    };
    let event = ToFront::Event {
        session: SessionId(42),
        event: Event::Slots {
            slots: vec![
                slot(0, Some(("alice", "a1"))),
                slot(1, Some(("bob", "b1"))),
                slot(2, None),
            ],
        },
    };
    let offer_frame = frame::encode(&offer).unwrap();
    let stats_frame = frame::encode(&stats).unwrap();
    let event_frame = frame::encode(&event).unwrap();
    g.throughput(Throughput::Bytes(offer_frame.len() as u64));
    g.bench_function("encode_offer", |b| {
        b.iter(|| frame::encode(black_box(&offer)).unwrap())
    });
    g.bench_function("decode_offer", |b| {
        b.iter(|| frame::decode::<ToWorker>(black_box(&offer_frame[4..])).unwrap())
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_stats", |b| {
        b.iter(|| frame::encode(black_box(&stats)).unwrap())
    });
    g.bench_function("decode_stats", |b| {
        b.iter(|| frame::decode::<ToFront>(black_box(&stats_frame[4..])).unwrap())
    });
    g.bench_function("encode_event", |b| {
        b.iter(|| frame::encode(black_box(&event)).unwrap())
    });
    g.bench_function("decode_event", |b| {
        b.iter(|| frame::decode::<ToFront>(black_box(&event_frame[4..])).unwrap())
    });
    g.finish();
}

/// 20 s of a voice-like signal (a 150 Hz buzz in 200 ms syllables, peaks -30 to -12 dBFS) as
/// a WebRTC client sends it (libopus, VoIP, 32 kbit/s, 20 ms), each packet with its true level.
fn voice_packets() -> Vec<(Vec<u8>, Loudness)> {
    let mut enc =
        ::opus::Encoder::new(48_000, ::opus::Channels::Mono, ::opus::Application::Voip).unwrap();
    enc.set_bitrate(::opus::Bitrate::Bits(32_000)).unwrap();
    let pcm: Vec<i16> = (0..48_000 * 20)
        .map(|i| {
            let t = i as f64 / 48_000.0;
            let syllable = (t / 0.3) as u64;
            let on = t - syllable as f64 * 0.3 < 0.2;
            let amp = if on {
                10f64.powf((-30.0 + (syllable * 7 % 19) as f64) / 20.0)
            } else {
                0.0
            };
            let buzz: f64 = (1..6)
                .map(|h| (std::f64::consts::TAU * 150.0 * h as f64 * t).sin() / h as f64)
                .sum();
            (amp * buzz / 1.5 * 32767.0) as i16
        })
        .collect();
    pcm.chunks_exact(960)
        .map(|frame| {
            let db = audit::level_db(frame);
            let level = Loudness::Level {
                dbov: 127 - db.round() as u8,
                voice: true,
            };
            (enc.encode_vec(frame, 1500).unwrap(), level)
        })
        .collect()
}

/// `LevelAudit::check` per received packet: an honest speaker (checked in runs, the common
/// case), a distrusted one (every packet decoded: what one decode costs), and a quiet claim.
fn bench_audit(c: &mut Criterion) {
    let mut g = c.benchmark_group("level_audit");
    g.throughput(Throughput::Elements(1));
    let voice = voice_packets();
    let t0 = Instant::now();
    for (name, lie) in [
        ("honest_voice", false),
        ("distrusted_every_packet_decoded", true),
    ] {
        let mut a = LevelAudit::new(1);
        let mut budget = DecodeBudget::new(u32::MAX, u32::MAX);
        let mut n = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                let (p, level) = &voice[n % voice.len()];
                let claim = if lie {
                    Loudness::Level {
                        dbov: 0,
                        voice: true,
                    }
                } else {
                    *level
                };
                let now = t0 + Duration::from_millis(20 * n as u64);
                n += 1;
                black_box(a.check(claim, black_box(p), now, &mut budget))
            })
        });
        if lie {
            assert!(a.distrusted(), "the liar was not found");
        }
    }
    let mut a = LevelAudit::new(1);
    let mut budget = DecodeBudget::default();
    let quiet = Loudness::Level {
        dbov: 90,
        voice: false,
    };
    g.bench_function("quiet_claim", |b| {
        b.iter(|| black_box(a.check(quiet, black_box(&voice[0].0), t0, &mut budget)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_room, bench_rewrite, bench_selector, bench_ipc, bench_audit
}
criterion_main!(benches);
