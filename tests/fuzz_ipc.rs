//! Fuzz and property targets for the front ↔ worker channel (`src/wire/frame.rs`,
//! `src/wire/ipc.rs`): whatever bytes arrive, decoding never panics and never allocates past
//! the frame limit, and every message either side can send comes back as it went.
//!
//! Plain `cargo test` runs each target on a bounded number of random inputs (see `ITERATIONS`);
//! `cargo bolero test <target>` runs it under libFuzzer for as long as you like (README, "How
//! to fuzz").

#[path = "common/fuzz_budget.rs"]
mod fuzz_budget;

use std::net::IpAddr;
use std::path::PathBuf;

use beep_webrtc::wire::frame::{self, FrameError, MAX_FRAME};
use beep_webrtc::wire::identity::Identity;
use beep_webrtc::wire::ids::{ConversationId, Generation, SessionId};
use beep_webrtc::wire::ipc::{
    Adoption, BiteConfig, CloseReason, MediaConfig, PROTOCOL_VERSION, ToFront, ToWorker,
};
use beep_webrtc::wire::signal::{
    ErrorCode, Event, MemberInfo, ReconnectReason, SlotInfo, SpeakerInfo,
};
use beep_webrtc::wire::stats::{BiteStats, DelayHistogram, WorkerStats};
use bolero::{TypeGenerator, check};

/// Random inputs per target under `cargo test` (a fraction of a second each).
const ITERATIONS: usize = 4_000;

/// Arbitrary bytes as a frame body (version + postcard message): an error or a message,
/// never a panic.
#[test]
fn fuzz_ipc_decode_to_worker() {
    check!()
        .with_iterations(fuzz_budget::iterations(ITERATIONS))
        .for_each(|body: &[u8]| {
            check_body::<ToWorker>(body);
        });
}

#[test]
fn fuzz_ipc_decode_to_front() {
    check!()
        .with_iterations(fuzz_budget::iterations(ITERATIONS))
        .for_each(|body: &[u8]| {
            check_body::<ToFront>(body);
        });
}

/// Decodes `body` as is and with the right version in front of it (so the fuzzer reaches
/// postcard past the version check); what decodes must encode again and decode the same.
fn check_body<T>(body: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let _ = frame::decode::<T>(body);
    let mut versioned = PROTOCOL_VERSION.to_be_bytes().to_vec();
    versioned.extend_from_slice(body);
    if let Ok(msg) = frame::decode::<T>(&versioned) {
        let again = frame::encode(&msg).expect("a decoded message encodes");
        let back: T = frame::decode(&again[4..]).expect("and decodes");
        if !has_nan(&format!("{msg:?}")) {
            assert_eq!(back, msg);
        }
    }
}

/// `f64` NaN (in `BiteStats`) is not equal to itself.
fn has_nan(debug: &str) -> bool {
    debug.contains("NaN")
}

/// A byte stream as the socket would deliver it: frames are read one after the other until
/// an error; a length prefix past the limit is refused before anything is allocated.
#[test]
fn fuzz_ipc_read_frame_stream() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    check!()
        .with_iterations(fuzz_budget::iterations(ITERATIONS))
        .for_each(|stream: &[u8]| {
            rt.block_on(async {
                let mut r = stream;
                let mut buf = Vec::new();
                for _ in 0..64 {
                    match frame::read_frame::<_, ToFront>(&mut r, &mut buf).await {
                        Ok(_) => assert!(buf.len() <= MAX_FRAME),
                        Err(FrameError::TooLarge(n)) => {
                            assert!(n > MAX_FRAME);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                // The buffer never grew past one frame's limit (and Vec's doubling).
                assert!(buf.capacity() <= 2 * MAX_FRAME);
            });
        });
}

/// Every message front can send reaches the worker as it was sent.
#[test]
fn fuzz_ipc_round_trip_to_worker() {
    check!()
        .with_type::<GenToWorker>()
        .with_iterations(fuzz_budget::iterations(ITERATIONS))
        .for_each(|g| {
            let msg = g.to_message();
            round_trip(&msg);
        });
}

/// Every message a worker can send reaches front as it was sent.
#[test]
fn fuzz_ipc_round_trip_to_front() {
    check!()
        .with_type::<GenToFront>()
        .with_iterations(fuzz_budget::iterations(ITERATIONS))
        .for_each(|g| {
            let msg = g.to_message();
            round_trip(&msg);
        });
}

fn round_trip<T>(msg: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let f = frame::encode(msg).expect("a generated message fits a frame");
    let len = u32::from_be_bytes(f[..4].try_into().expect("prefix")) as usize;
    assert_eq!(len, f.len() - 4, "the length prefix counts what follows");
    assert!(len <= MAX_FRAME);
    assert_eq!(u16::from_be_bytes([f[4], f[5]]), PROTOCOL_VERSION);
    let back: T = frame::decode(&f[4..]).expect("decodes");
    assert_eq!(&back, msg);
    // Cut short anywhere, it is an error, not a wrong message or a panic.
    for cut in [0, 1, 2, f.len() / 2, f.len() - 5] {
        if cut + 4 < f.len() {
            let _ = frame::decode::<T>(&f[4..4 + cut]);
        }
    }
    // Another version is refused whatever follows.
    let mut other = f[4..].to_vec();
    other[1] ^= 0x55;
    assert!(matches!(
        frame::decode::<T>(&other),
        Err(FrameError::Version(_))
    ));
}

// Generators: mirrors of the IPC types (which live in the library and do not depend on
// bolero), turned into the real messages.

#[derive(Debug, TypeGenerator)]
enum GenToWorker {
    Init {
        media: GenMedia,
        bites: Option<GenBites>,
        orphan_grace_ms: u64,
    },
    Offer {
        session: u64,
        identity: (String, String),
        sdp: String,
    },
    Ice {
        session: u64,
        candidate: String,
    },
    Leave {
        session: u64,
    },
    Shutdown,
}

#[derive(Debug, TypeGenerator)]
struct GenMedia {
    bind_ip: Option<IpAddr>,
    ports: (u16, u16),
    public_ip: Option<IpAddr>,
    max_slots: u8,
    ice_disconnected_ms: u64,
    ice_failed_ms: u64,
}

#[derive(Debug, TypeGenerator)]
struct GenBites {
    nats: String,
    bite_subject: String,
    store_subject: String,
    spool_dir: String,
    spool_max_bytes: u64,
    silence_ms: u64,
    max_ms: u64,
}

impl GenMedia {
    /// The default media settings with the generated values set: settings added later
    /// cross the channel at their defaults.
    fn to_config(&self) -> MediaConfig {
        let mut m: MediaConfig = beep_webrtc::config::Config::from_lookup(|_| None)
            .expect("the defaults are a valid configuration")
            .media;
        m.bind_ip = self.bind_ip;
        m.ports = self.ports;
        m.public_ip = self.public_ip;
        m.max_slots = usize::from(self.max_slots);
        m.ice_disconnected_ms = self.ice_disconnected_ms;
        m.ice_failed_ms = self.ice_failed_ms;
        m
    }
}

impl GenToWorker {
    fn to_message(&self) -> ToWorker {
        match self {
            GenToWorker::Init {
                media,
                bites,
                orphan_grace_ms,
            } => ToWorker::Init {
                media: media.to_config(),
                bites: bites.as_ref().map(|b| BiteConfig {
                    nats: b.nats.clone(),
                    bite_subject: b.bite_subject.clone(),
                    store_subject: b.store_subject.clone(),
                    spool_dir: PathBuf::from(&b.spool_dir),
                    spool_max_bytes: b.spool_max_bytes,
                    silence_ms: b.silence_ms,
                    max_ms: b.max_ms,
                }),
                orphan_grace_ms: *orphan_grace_ms,
            },
            GenToWorker::Offer {
                session,
                identity,
                sdp,
            } => ToWorker::Offer {
                session: SessionId(*session),
                identity: identity_of(identity),
                sdp: sdp.clone(),
            },
            GenToWorker::Ice { session, candidate } => ToWorker::Ice {
                session: SessionId(*session),
                candidate: candidate.clone(),
            },
            GenToWorker::Leave { session } => ToWorker::Leave {
                session: SessionId(*session),
            },
            GenToWorker::Shutdown => ToWorker::Shutdown,
        }
    }
}

fn identity_of((userid, clientid): &(String, String)) -> Identity {
    Identity {
        userid: userid.clone(),
        clientid: clientid.clone(),
    }
}

/// A valid conversation id made of any string (only valid ones exist as values): its
/// characters from the alphabet, at most 128, `c` if none is left.
fn conversation_id(s: &str) -> ConversationId {
    let kept: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(128)
        .collect();
    ConversationId::parse(&kept)
        .or_else(|_| ConversationId::parse("c"))
        .expect("a valid id")
}

#[derive(Debug, TypeGenerator)]
enum GenToFront {
    Hello {
        conversation: String,
        generation: u64,
        pid: u32,
        adopted: Option<GenAdoption>,
    },
    Ready {
        pid: u32,
    },
    Answer {
        session: u64,
        sdp: String,
    },
    Event {
        session: u64,
        event: GenEvent,
    },
    Rejected {
        session: u64,
        code: u8,
        message: String,
    },
    Closed {
        session: u64,
        reason: u8,
    },
    Stats(GenStats),
}

#[derive(Debug, TypeGenerator)]
struct GenAdoption {
    sessions: Vec<(u64, (String, String))>,
    uptime_ms: u64,
    stats: GenStats,
}

#[derive(Debug, TypeGenerator)]
struct GenStats {
    peers: u32,
    packets_in: u64,
    packets_forwarded: u64,
    bytes_forwarded: u64,
    delay_counts: Vec<u64>,
    delay_sum_us: u64,
    bite_counters: [u64; 9],
    /// Milliseconds: any finite sum (NaN is not equal to itself).
    latency_ms: u32,
    latency_count: u64,
    latency_buckets: Vec<u64>,
}

/// A client event as a worker (or, for the other kinds, front) makes one.
#[derive(Debug, TypeGenerator)]
enum GenEvent {
    Slots(Vec<GenSlot>),
    Reconnect(u8),
    Bite {
        userid: String,
        clientid: String,
        start: u64,
        duration_ms: u64,
        url: String,
    },
    Members(Vec<(String, String)>),
    Speakers(Vec<(String, i16, String)>),
}

#[derive(Debug, TypeGenerator)]
struct GenSlot {
    clientid: Option<String>,
    mid: String,
    slot: u32,
    userid: Option<String>,
}

impl GenEvent {
    fn to_event(&self) -> Event {
        match self {
            GenEvent::Slots(slots) => Event::Slots {
                slots: slots
                    .iter()
                    .map(|s| SlotInfo {
                        clientid: s.clientid.clone(),
                        mid: s.mid.clone(),
                        slot: s.slot,
                        userid: s.userid.clone(),
                    })
                    .collect(),
            },
            GenEvent::Reconnect(reason) => Event::Reconnect {
                reason: variant(*reason, ReconnectReason::WorkerExited),
            },
            GenEvent::Bite {
                userid,
                clientid,
                start,
                duration_ms,
                url,
            } => Event::Bite {
                userid: userid.clone(),
                clientid: clientid.clone(),
                start: *start,
                duration_ms: *duration_ms,
                url: url.clone(),
            },
            GenEvent::Members(members) => Event::Members {
                members: members
                    .iter()
                    .map(|(clientid, userid)| MemberInfo {
                        clientid: clientid.clone(),
                        userid: userid.clone(),
                    })
                    .collect(),
            },
            GenEvent::Speakers(speakers) => Event::Speakers {
                speakers: speakers
                    .iter()
                    .map(|(clientid, level, userid)| SpeakerInfo {
                        clientid: clientid.clone(),
                        level: *level,
                        userid: userid.clone(),
                    })
                    .collect(),
            },
        }
    }
}

/// One of the enum's variants, whichever exist (postcard encodes a unit variant as its index).
fn variant<T: serde::de::DeserializeOwned>(i: u8, first: T) -> T {
    postcard::from_bytes(&[i % 32]).unwrap_or(first)
}

impl GenStats {
    fn to_stats(&self) -> WorkerStats {
        let c = self.bite_counters;
        WorkerStats {
            peers: self.peers,
            packets_in: self.packets_in,
            packets_forwarded: self.packets_forwarded,
            bytes_forwarded: self.bytes_forwarded,
            forward_delay: DelayHistogram {
                counts: self.delay_counts.clone(),
                sum_us: self.delay_sum_us,
            },
            bites: BiteStats {
                published: c[0],
                spooled: c[1],
                replayed: c[2],
                failed: c[3],
                overflowed: c[4],
                duplicates: c[5],
                moved_aside: c[6],
                spool_bytes: c[7],
                spool_files: c[8],
                latency_seconds_sum: f64::from(self.latency_ms) / 1000.0,
                latency_count: self.latency_count,
                latency_buckets: self.latency_buckets.clone(),
            },
            // Counters added later keep their defaults here.
            ..WorkerStats::default()
        }
    }
}

impl GenToFront {
    fn to_message(&self) -> ToFront {
        match self {
            GenToFront::Hello {
                conversation,
                generation,
                pid,
                adopted,
            } => ToFront::Hello {
                conversation: conversation_id(conversation),
                generation: Generation(*generation),
                pid: *pid,
                adopted: adopted.as_ref().map(|a| Adoption {
                    sessions: a
                        .sessions
                        .iter()
                        .map(|(s, id)| (SessionId(*s), identity_of(id)))
                        .collect(),
                    uptime_ms: a.uptime_ms,
                    stats: a.stats.to_stats(),
                }),
            },
            GenToFront::Ready { pid } => ToFront::Ready { pid: *pid },
            GenToFront::Answer { session, sdp } => ToFront::Answer {
                session: SessionId(*session),
                sdp: sdp.clone(),
            },
            GenToFront::Event { session, event } => ToFront::Event {
                session: SessionId(*session),
                event: event.to_event(),
            },
            GenToFront::Rejected {
                session,
                code,
                message,
            } => ToFront::Rejected {
                session: SessionId(*session),
                code: variant(*code, ErrorCode::BadFrame),
                message: message.clone(),
            },
            GenToFront::Closed { session, reason } => ToFront::Closed {
                session: SessionId(*session),
                reason: variant(*reason, CloseReason::ByClient),
            },
            GenToFront::Stats(s) => ToFront::Stats(s.to_stats()),
        }
    }
}
