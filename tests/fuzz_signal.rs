//! Fuzz and property targets for what a client sends before any media: signalling frames
//! (`parse_client_frame`, src/wire/signal.rs) and the identity claim and conversation ids
//! (src/wire/identity.rs). Whatever arrives, parsing never panics, and a refusal carries an
//! error code and a reason in words.
//!
//! Plain `cargo test` runs each target on a bounded number of random inputs (`ITERATIONS`);
//! `cargo bolero test <target>` runs it under libFuzzer (README, "How to fuzz").

#[path = "common/fuzz_budget.rs"]
mod fuzz_budget;

use beep_webrtc::wire::identity::parse_claim;
use beep_webrtc::wire::ids::ConversationId;
use beep_webrtc::wire::signal::{
    ClientFrame, Event, MemberInfo, ServerFrame, SignalError, SpeakerInfo, parse_client_frame,
};
use bolero::{TypeGenerator, check};

/// Random inputs per target under `cargo test`.
const ITERATIONS: usize = 10_000;

/// Any text frame: a frame or an error with a code, a message and a well-formed `error::`.
#[test]
fn fuzz_client_frames() {
    check!()
        .with_iterations(fuzz_budget::iterations(ITERATIONS))
        .for_each(|bytes: &[u8]| {
            client_frame_properties(&String::from_utf8_lossy(bytes));
        });
}

/// Frames that look like the protocol (a known type, then an arbitrary payload), so the
/// random inputs reach the offer and ICE parsing rather than stop at the frame type.
#[test]
fn fuzz_client_frames_structured() {
    check!()
        .with_type::<(u8, String)>()
        .with_iterations(fuzz_budget::iterations(ITERATIONS))
        .for_each(|(prefix, payload)| {
            const PREFIXES: [&str; 10] = [
                "offer::",
                "ice::",
                "ice::candidate:",
                "ice::a=candidate:",
                "ice::{\"candidate\":",
                "ice::{\"candidate\":\"",
                "v=0",
                " \r\nv=0\r\n",
                "::",
                "",
            ];
            let p = PREFIXES[usize::from(*prefix) % PREFIXES.len()];
            client_frame_properties(&format!("{p}{payload}"));
        });
}

fn client_frame_properties(text: &str) {
    match parse_client_frame(text) {
        Ok(ClientFrame::Offer { sdp, legacy }) => {
            if legacy {
                assert_eq!(sdp, text, "a raw offer is the frame itself");
                assert!(text.trim_start().starts_with("v=0"));
            } else {
                assert_eq!(format!("offer::{sdp}"), text);
            }
        }
        Ok(ClientFrame::Ice(Some(json))) => {
            // Normalised to RTCIceCandidateInit JSON with a candidate string.
            let v: serde_json::Value = serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("ice payload normalised to bad JSON {json:?}: {e}"));
            assert!(v["candidate"].is_string(), "{json}");
            assert!(text.starts_with("ice::"));
        }
        Ok(ClientFrame::Ice(None)) => assert!(text.starts_with("ice::")),
        Err(e) => error_properties(&e),
    }
}

/// A refusal has a code, a sentence, and an `error::` frame that is valid JSON saying both.
fn error_properties(e: &SignalError) {
    assert!(
        !e.message.trim().is_empty(),
        "an error without words: {e:?}"
    );
    let frame = e.frame();
    let body = frame
        .strip_prefix("error::")
        .unwrap_or_else(|| panic!("not an error frame: {frame}"));
    let v: serde_json::Value = serde_json::from_str(body).expect("error frame is JSON");
    assert_eq!(v["code"], e.code.as_str());
    assert_eq!(v["message"], e.message.as_str());
    let close = e.code.close_code();
    assert!(
        close == 1009 || close == 1011 || (4000..5000).contains(&close),
        "close code {close} for {:?}",
        e.code
    );
}

/// Any header value: an identity or a refusal with a reason; never a panic. An accepted
/// claim has both fields, not blank.
#[test]
fn fuzz_claims() {
    check!()
        .with_iterations(fuzz_budget::iterations(ITERATIONS))
        .for_each(|bytes: &[u8]| {
            let _ = claim_properties(bytes);
        });
}

/// Claims built as JSON from generated fields (often missing, blank, long or odd): whatever
/// is accepted says exactly what was sent, and a plain claim is always accepted.
#[test]
fn fuzz_claims_structured() {
    check!()
        .with_type::<GenClaim>()
        .with_iterations(fuzz_budget::iterations(ITERATIONS))
        .for_each(|g| {
            let userid = g.userid.as_ref().map(|f| f.value());
            let clientid = g.clientid.as_ref().map(|f| f.value());
            let mut obj = serde_json::Map::new();
            if let Some(u) = &userid {
                obj.insert("userid".into(), u.clone().into());
            }
            if let Some(c) = &clientid {
                obj.insert("clientid".into(), c.clone().into());
            }
            if g.extra_field {
                obj.insert("role".into(), "admin".into());
            }
            let raw = serde_json::Value::Object(obj).to_string();
            let parsed = claim_properties(raw.as_bytes());
            if let Ok(id) = &parsed {
                assert_eq!(Some(&id.userid), userid.as_ref());
                assert_eq!(Some(&id.clientid), clientid.as_ref());
            }
            let plain = |f: &Option<String>| {
                f.as_ref().is_some_and(|s| {
                    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
                })
            };
            if plain(&userid) && plain(&clientid) {
                assert!(parsed.is_ok(), "a plain claim refused: {raw}: {parsed:?}");
            }
        });
}

fn claim_properties(
    bytes: &[u8],
) -> Result<beep_webrtc::wire::identity::Identity, beep_webrtc::wire::identity::ClaimError> {
    let parsed = parse_claim(Some(bytes));
    match &parsed {
        Ok(id) => {
            assert!(!id.userid.trim().is_empty() && !id.clientid.trim().is_empty());
            assert!(id.userid.len() <= 256 && id.clientid.len() <= 256);
        }
        Err(e) => assert!(!e.to_string().trim().is_empty()),
    }
    parsed
}

#[derive(Debug, TypeGenerator)]
struct GenClaim {
    userid: Option<GenField>,
    clientid: Option<GenField>,
    extra_field: bool,
}

/// A claim field: arbitrary text, or something near the rules' edges.
#[derive(Debug, TypeGenerator)]
enum GenField {
    Any(String),
    Plain(#[generator(1u8..=64)] u8, u8),
    Blank(#[generator(0u8..=8)] u8),
    Long(#[generator(250usize..=300)] usize),
}

impl GenField {
    fn value(&self) -> String {
        match self {
            GenField::Any(s) => s.clone(),
            GenField::Plain(n, seed) => (0..*n)
                .map(|i| {
                    let a = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
                    char::from(a[(usize::from(*seed) + usize::from(i) * 7) % a.len()])
                })
                .collect(),
            GenField::Blank(n) => " \t".repeat(usize::from(*n)),
            GenField::Long(n) => "x".repeat(*n),
        }
    }
}

/// Conversation ids become file names and NATS subjects: exactly `^[A-Za-z0-9_-]{1,128}$`.
#[test]
fn fuzz_conversation_ids() {
    check!()
        .with_iterations(fuzz_budget::iterations(ITERATIONS))
        .for_each(|bytes: &[u8]| {
            let id = String::from_utf8_lossy(bytes);
            let expected = (1..=128).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            let parsed = ConversationId::parse(&id);
            assert_eq!(parsed.is_ok(), expected, "{id:?}");
            // What deserialises (IPC, admin) is what parses.
            let json = serde_json::to_string(&id).expect("a string serialises");
            let via_serde = serde_json::from_str::<ConversationId>(&json).ok();
            assert_eq!(via_serde, parsed.ok(), "{id:?}");
            if expected {
                assert!(!id.contains('/') && !id.contains('.') && !id.contains('*'));
            }
        });
}

/// The members and speakers events a client reads: whatever the ids (any Unicode, quotes,
/// control characters), the frame is `event::` and JSON that gives them back exactly, with
/// the type and sorted keys.
#[test]
fn fuzz_members_and_speakers_events() {
    check!()
        .with_type::<(Vec<(String, String)>, Vec<(String, i16, String)>)>()
        .with_iterations(fuzz_budget::iterations(ITERATIONS))
        .for_each(|(members, speakers)| {
            let event = Event::Members {
                members: members
                    .iter()
                    .map(|(c, u)| MemberInfo {
                        clientid: c.clone(),
                        userid: u.clone(),
                    })
                    .collect(),
            };
            let v = event_json(event);
            assert_eq!(v["type"], "members");
            let listed = v["members"].as_array().expect("a list");
            assert_eq!(listed.len(), members.len());
            for (m, (c, u)) in listed.iter().zip(members) {
                assert_eq!(m["clientid"].as_str(), Some(c.as_str()));
                assert_eq!(m["userid"].as_str(), Some(u.as_str()));
            }
            let event = Event::Speakers {
                speakers: speakers
                    .iter()
                    .map(|(c, level, u)| SpeakerInfo {
                        clientid: c.clone(),
                        level: *level,
                        userid: u.clone(),
                    })
                    .collect(),
            };
            let v = event_json(event);
            assert_eq!(v["type"], "speakers");
            let listed = v["speakers"].as_array().expect("a list");
            assert_eq!(listed.len(), speakers.len());
            for (s, (c, level, u)) in listed.iter().zip(speakers) {
                assert_eq!(s["clientid"].as_str(), Some(c.as_str()));
                assert_eq!(s["level"].as_i64(), Some(i64::from(*level)));
                assert_eq!(s["userid"].as_str(), Some(u.as_str()));
            }
        });
}

fn event_json(event: Event) -> serde_json::Value {
    let text = ServerFrame::Event(event).to_text();
    let body = text.strip_prefix("event::").expect("an event:: frame");
    assert!(!body.contains('\n'), "one line: {body:?}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON {body:?}: {e}"))
}
