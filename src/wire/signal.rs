//! The Beep client framing on `/connect`: text frames `<type>::<payload>`, both ways.
//!
//! Client frames are parsed here, purely, so every odd frame a client can send has a unit test
//! and a named error code. Server frames are typed values ([`ServerFrame`]) from where they
//! arise (a worker's slots, front's reconnect and error) to the socket, and are written as
//! text once, by [`ServerFrame::to_text`], so the bytes clients depend on come from one place
//! and their tests pin them.

use serde::{Deserialize, Serialize};

/// A frame from the client.
#[derive(Debug, PartialEq)]
pub enum ClientFrame {
    /// `offer::<sdp>`; `legacy` when the frame was the raw SDP itself (starts with `v=0`),
    /// as the seed README's JavaScript sends it. Such a client gets the answer as raw SDP
    /// too, and no other frames: it hands every message to `setRemoteDescription`.
    Offer { sdp: String, legacy: bool },
    /// `ice::<json RTCIceCandidateInit | candidate:... line>`, normalised to JSON.
    /// `None` is the end-of-candidates marker.
    Ice(Option<String>),
}

/// The `error::` codes of SPEC §3. A worker's refusal carries one across IPC as this enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    BadFrame,
    BadSdp,
    TooLarge,
    RateLimited,
    TooManySessions,
    JoinTimeout,
    Forbidden,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad-frame",
            ErrorCode::BadSdp => "bad-sdp",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::TooManySessions => "too-many-sessions",
            ErrorCode::JoinTimeout => "join-timeout",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The WebSocket close code that goes with the error (4000-4999 are application codes).
    pub fn close_code(self) -> u16 {
        match self {
            ErrorCode::TooLarge => 1009,
            ErrorCode::Internal => 1011,
            ErrorCode::Forbidden => 4003,
            ErrorCode::RateLimited | ErrorCode::TooManySessions => 4029,
            ErrorCode::JoinTimeout => 4008,
            ErrorCode::Unavailable => 4503,
            ErrorCode::BadFrame | ErrorCode::BadSdp => 4400,
        }
    }
}

/// An `error::` frame: code plus a sentence for people.
#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[error("{}: {message}", code.as_str())]
pub struct SignalError {
    pub code: ErrorCode,
    pub message: String,
}

impl SignalError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        SignalError {
            code,
            message: message.into(),
        }
    }

    /// Its `error::` frame.
    pub fn frame(&self) -> String {
        format!("error::{}", self.json())
    }

    /// `{"code":"...","message":"..."}`.
    fn json(&self) -> String {
        #[derive(Serialize)]
        struct E<'a> {
            code: &'a str,
            message: &'a str,
        }
        to_json(&E {
            code: self.code.as_str(),
            message: &self.message,
        })
    }
}

pub fn parse_client_frame(text: &str) -> Result<ClientFrame, SignalError> {
    if text.trim_start().starts_with("v=0") {
        return Ok(ClientFrame::Offer {
            sdp: text.to_string(),
            legacy: true,
        });
    }
    let Some((kind, payload)) = text.split_once("::") else {
        return Err(SignalError::new(
            ErrorCode::BadFrame,
            "expected a frame of the form <type>::<payload>",
        ));
    };
    match kind {
        "offer" => Ok(ClientFrame::Offer {
            sdp: payload.to_string(),
            legacy: false,
        }),
        "ice" => parse_ice(payload).map(ClientFrame::Ice),
        other => Err(SignalError::new(
            ErrorCode::BadFrame,
            format!(
                "unknown frame type {:?}: expected offer or ice",
                truncate(other, 32)
            ),
        )),
    }
}

/// Normalises a trickled candidate to `RTCIceCandidateInit` JSON. A bare `candidate:` line
/// belongs to the first m-line: with BUNDLE every m-line shares one transport.
fn parse_ice(payload: &str) -> Result<Option<String>, SignalError> {
    let p = payload.trim();
    if p.is_empty() {
        return Ok(None);
    }
    if p.starts_with("candidate:") || p.starts_with("a=candidate:") {
        let line = p.trim_start_matches("a=");
        let v = serde_json::json!({"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0});
        return Ok(Some(v.to_string()));
    }
    let v: serde_json::Value = serde_json::from_str(p).map_err(|e| {
        SignalError::new(
            ErrorCode::BadFrame,
            format!("ice payload is neither JSON nor a candidate line: {e}"),
        )
    })?;
    match v.get("candidate") {
        Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
        Some(serde_json::Value::String(_)) => Ok(Some(v.to_string())),
        None if v.is_null() => Ok(None),
        _ => Err(SignalError::new(
            ErrorCode::BadFrame,
            "ice payload has no \"candidate\" string",
        )),
    }
}

/// A frame for the client; [`ServerFrame::to_text`] writes it. The serde derive is the
/// relay's form (a frame for a client whose socket is on another node crosses NATS as this
/// value, in postcard: [`super::relay`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// `answer::<sdp>`.
    Answer { sdp: String },
    /// `event::<json>`.
    Event(Event),
    /// `error::<json>`, sent before the server closes the socket.
    Error(SignalError),
}

impl ServerFrame {
    /// The text frame, exactly as clients read it.
    pub fn to_text(&self) -> String {
        match self {
            ServerFrame::Answer { sdp } => format!("answer::{sdp}"),
            ServerFrame::Event(e) => format!("event::{}", e.to_json()),
            ServerFrame::Error(e) => e.frame(),
        }
    }
}

/// What an `event::` frame tells the client. The serde derive is the IPC form (a worker's
/// events cross to front as this value, in postcard); the client's JSON is
/// [`Event::to_json`], which keeps the keys in the order clients have always seen: sorted,
/// as the `serde_json::json!` maps that used to write them sorted them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// `{"slots":[<SlotInfo>...],"type":"slots"}`: who is on each of the client's slots now,
    /// every slot it negotiated, in order.
    Slots { slots: Vec<SlotInfo> },
    /// `{"reason":"...","type":"reconnect"}`: the client's session is gone; offer again.
    Reconnect { reason: ReconnectReason },
    /// `{"jitter_ms":..,"loss":..,"rtt_ms":..,"score":1-5,"type":"quality"}`: how its call is
    /// going (`media::quality`), told when the score changes, at most every 2 s. `rtt_ms` is
    /// null until a report names one of the SFU's sender reports.
    Quality {
        score: u8,
        /// Fraction lost, 0 to 1, the worse direction; rounded to 1/1000.
        loss_permille: u16,
        jitter_ms: u32,
        rtt_ms: Option<u32>,
    },
    /// `{"clientid":..,"duration_ms":..,"start":..,"type":"bite","url":..,"userid":..}`: a
    /// bite of the conversation was published (the development demo page's list).
    Bite {
        userid: String,
        clientid: String,
        /// Unix ms.
        start: u64,
        duration_ms: u64,
        /// Where front serves its audio.
        url: String,
    },
    /// `{"members":[<MemberInfo>...],"type":"members"}`: everyone in the conversation now
    /// (the client itself included), sorted by user then client id; sent after the answer
    /// and when someone joins or leaves (`media::room::presence`).
    Members { members: Vec<MemberInfo> },
    /// `{"speakers":[<SpeakerInfo>...],"type":"speakers"}`: who is speaking now, loudest
    /// first, whether or not they are on the client's slots; told when it changes, at most
    /// 5 times a second (`media::room::presence`).
    Speakers { speakers: Vec<SpeakerInfo> },
}

impl Event {
    /// The event's JSON: each kind through a struct whose fields are in wire order.
    pub fn to_json(&self) -> String {
        match self {
            Event::Slots { slots } => {
                #[derive(Serialize)]
                struct Slots<'a> {
                    slots: &'a [SlotInfo],
                    r#type: &'static str,
                }
                to_json(&Slots {
                    slots,
                    r#type: "slots",
                })
            }
            Event::Reconnect { reason } => {
                #[derive(Serialize)]
                struct Reconnect {
                    reason: &'static str,
                    r#type: &'static str,
                }
                to_json(&Reconnect {
                    reason: reason.as_str(),
                    r#type: "reconnect",
                })
            }
            Event::Quality {
                score,
                loss_permille,
                jitter_ms,
                rtt_ms,
            } => {
                #[derive(Serialize)]
                struct Quality {
                    jitter_ms: u32,
                    loss: f64,
                    rtt_ms: Option<u32>,
                    score: u8,
                    r#type: &'static str,
                }
                to_json(&Quality {
                    jitter_ms: *jitter_ms,
                    loss: f64::from(*loss_permille) / 1000.0,
                    rtt_ms: *rtt_ms,
                    score: *score,
                    r#type: "quality",
                })
            }
            Event::Bite {
                userid,
                clientid,
                start,
                duration_ms,
                url,
            } => {
                #[derive(Serialize)]
                struct Bite<'a> {
                    clientid: &'a str,
                    duration_ms: u64,
                    start: u64,
                    r#type: &'static str,
                    url: &'a str,
                    userid: &'a str,
                }
                to_json(&Bite {
                    clientid,
                    duration_ms: *duration_ms,
                    start: *start,
                    r#type: "bite",
                    url,
                    userid,
                })
            }
            Event::Members { members } => {
                #[derive(Serialize)]
                struct Members<'a> {
                    members: &'a [MemberInfo],
                    r#type: &'static str,
                }
                to_json(&Members {
                    members,
                    r#type: "members",
                })
            }
            Event::Speakers { speakers } => {
                #[derive(Serialize)]
                struct Speakers<'a> {
                    speakers: &'a [SpeakerInfo],
                    r#type: &'static str,
                }
                to_json(&Speakers {
                    speakers,
                    r#type: "speakers",
                })
            }
        }
    }
}

/// One slot of a `slots` event: `{"clientid":..,"mid":"0","slot":0,"userid":..}`, the
/// occupant's ids `null` when nobody is on it. The fields are declared in wire order (sorted)
/// because this derive writes both the client's JSON and the IPC form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    pub clientid: Option<String>,
    /// The slot's m-line in the client's offer.
    pub mid: String,
    /// Its index among the client's slots.
    pub slot: u32,
    pub userid: Option<String>,
}

/// One member of a `members` event: `{"clientid":..,"userid":..}` (fields in wire order, as
/// for [`SlotInfo`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberInfo {
    pub clientid: String,
    pub userid: String,
}

/// One speaker of a `speakers` event: `{"clientid":..,"level":-21,"userid":..}`. `level` is
/// its smoothed loudness in dBov (0 is full scale, -126 silence), rounded to a multiple of
/// 3 dB so that small wobbles of a steady voice are not news.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeakerInfo {
    pub clientid: String,
    pub level: i16,
    pub userid: String,
}

/// Why a client is asked to offer again: the `reason` of a `reconnect` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReconnectReason {
    /// It joined another conversation while it had a session in this one.
    ConversationChanged,
    /// Its conversation's worker exited (or was killed as hung).
    WorkerExited,
    /// `ctl restart` restarted its conversation's worker.
    WorkerRestarted,
    /// ICE consent or DTLS failed.
    PeerConnectionFailed,
    /// The connection reports itself closed (not by the client).
    PeerConnectionClosed,
    /// Handling its connection failed inside the worker (a contained panic).
    PeerConnectionError,
    /// The node that held its conversation is gone (several hosts: its liveness expired, or
    /// it did not take a relayed message); the next offer places the conversation anew.
    NodeLost,
}

impl ReconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReconnectReason::ConversationChanged => "conversation-changed",
            ReconnectReason::WorkerExited => "worker-exited",
            ReconnectReason::WorkerRestarted => "worker-restarted",
            ReconnectReason::PeerConnectionFailed => "peer-connection-failed",
            ReconnectReason::PeerConnectionClosed => "peer-connection-closed",
            ReconnectReason::PeerConnectionError => "peer-connection-error",
            ReconnectReason::NodeLost => "node-lost",
        }
    }
}

/// JSON of a value that always has some (string keys, no maps): the `{}` fallback is never
/// taken, and keeps a frame well formed if it ever were.
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(
            parse_client_frame("offer::v=0\r\n").unwrap(),
            ClientFrame::Offer {
                sdp: "v=0\r\n".into(),
                legacy: false
            }
        );
        assert_eq!(
            parse_client_frame("v=0\r\no=-").unwrap(),
            ClientFrame::Offer {
                sdp: "v=0\r\no=-".into(),
                legacy: true
            }
        );
        assert_eq!(
            parse_client_frame(r#"ice::{"candidate":""}"#).unwrap(),
            ClientFrame::Ice(None)
        );
        let ClientFrame::Ice(Some(j)) =
            parse_client_frame("ice::candidate:1 1 udp 1 127.0.0.1 5000 typ host").unwrap()
        else {
            panic!()
        };
        assert!(j.contains("\"sdpMid\":\"0\""));
        let ClientFrame::Ice(Some(j)) = parse_client_frame(
            r#"ice::{"candidate":"candidate:1 1 udp 1 127.0.0.1 5 typ host","sdpMid":"0"}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert!(j.contains("typ host"));
    }

    #[test]
    fn bad_frames_say_why() {
        assert_eq!(
            parse_client_frame("hello").unwrap_err().code,
            ErrorCode::BadFrame
        );
        let e = parse_client_frame("bogus::x").unwrap_err();
        assert!(e.message.contains("bogus"));
        assert_eq!(
            parse_client_frame("ice::{nope").unwrap_err().code,
            ErrorCode::BadFrame
        );
        assert!(
            SignalError::new(ErrorCode::BadSdp, "x")
                .frame()
                .starts_with(r#"error::{"code":"bad-sdp""#)
        );
    }

    // The server frames' exact bytes: clients parse them, so a change here is a change of
    // the contract (SPEC §3), not a refactoring.

    #[test]
    fn an_answer_frame_is_the_sdp_after_its_prefix() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n";
        assert_eq!(
            ServerFrame::Answer { sdp: sdp.into() }.to_text(),
            "answer::v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"
        );
    }

    #[test]
    fn a_slots_event_has_sorted_keys_and_null_ids_on_an_empty_slot() {
        let slots = vec![
            SlotInfo {
                clientid: Some("tab-1".into()),
                mid: "0".into(),
                slot: 0,
                userid: Some("alice".into()),
            },
            SlotInfo {
                clientid: None,
                mid: "1".into(),
                slot: 1,
                userid: None,
            },
        ];
        assert_eq!(
            ServerFrame::Event(Event::Slots { slots }).to_text(),
            r#"event::{"slots":[{"clientid":"tab-1","mid":"0","slot":0,"userid":"alice"},{"clientid":null,"mid":"1","slot":1,"userid":null}],"type":"slots"}"#
        );
        assert_eq!(
            ServerFrame::Event(Event::Slots { slots: vec![] }).to_text(),
            r#"event::{"slots":[],"type":"slots"}"#
        );
    }

    #[test]
    fn a_reconnect_event_names_its_reason() {
        let text = |reason| ServerFrame::Event(Event::Reconnect { reason }).to_text();
        assert_eq!(
            text(ReconnectReason::WorkerExited),
            r#"event::{"reason":"worker-exited","type":"reconnect"}"#
        );
        let reasons = [
            (ReconnectReason::ConversationChanged, "conversation-changed"),
            (ReconnectReason::WorkerExited, "worker-exited"),
            (ReconnectReason::WorkerRestarted, "worker-restarted"),
            (
                ReconnectReason::PeerConnectionFailed,
                "peer-connection-failed",
            ),
            (
                ReconnectReason::PeerConnectionClosed,
                "peer-connection-closed",
            ),
            (
                ReconnectReason::PeerConnectionError,
                "peer-connection-error",
            ),
            (ReconnectReason::NodeLost, "node-lost"),
        ];
        for (reason, words) in reasons {
            assert_eq!(
                text(reason),
                format!(r#"event::{{"reason":"{words}","type":"reconnect"}}"#)
            );
        }
    }

    #[test]
    fn a_quality_event_has_sorted_keys_and_a_fraction() {
        let q = |rtt_ms| {
            ServerFrame::Event(Event::Quality {
                score: 4,
                loss_permille: 25,
                jitter_ms: 3,
                rtt_ms,
            })
            .to_text()
        };
        assert_eq!(
            q(Some(41)),
            r#"event::{"jitter_ms":3,"loss":0.025,"rtt_ms":41,"score":4,"type":"quality"}"#
        );
        assert_eq!(
            q(None),
            r#"event::{"jitter_ms":3,"loss":0.025,"rtt_ms":null,"score":4,"type":"quality"}"#
        );
    }

    #[test]
    fn a_bite_event_has_sorted_keys() {
        let bite = Event::Bite {
            userid: "alice".into(),
            clientid: "tab-1".into(),
            start: 1_700_000_000_123,
            duration_ms: 1980,
            url: "/bites/room1/1700000000123.ogg".into(),
        };
        assert_eq!(
            ServerFrame::Event(bite).to_text(),
            r#"event::{"clientid":"tab-1","duration_ms":1980,"start":1700000000123,"type":"bite","url":"/bites/room1/1700000000123.ogg","userid":"alice"}"#
        );
    }

    #[test]
    fn members_and_speakers_events_have_sorted_keys() {
        let members = Event::Members {
            members: vec![MemberInfo {
                clientid: "tab-1".into(),
                userid: "alice".into(),
            }],
        };
        assert_eq!(
            ServerFrame::Event(members).to_text(),
            r#"event::{"members":[{"clientid":"tab-1","userid":"alice"}],"type":"members"}"#
        );
        let speakers = Event::Speakers {
            speakers: vec![SpeakerInfo {
                clientid: "tab-1".into(),
                level: -21,
                userid: "alice".into(),
            }],
        };
        assert_eq!(
            ServerFrame::Event(speakers).to_text(),
            r#"event::{"speakers":[{"clientid":"tab-1","level":-21,"userid":"alice"}],"type":"speakers"}"#
        );
        assert_eq!(
            ServerFrame::Event(Event::Speakers { speakers: vec![] }).to_text(),
            r#"event::{"speakers":[],"type":"speakers"}"#
        );
    }

    #[test]
    fn an_error_frame_is_code_then_message() {
        let e = SignalError::new(ErrorCode::TooManySessions, r#"a "quoted" limit"#);
        let text = r#"error::{"code":"too-many-sessions","message":"a \"quoted\" limit"}"#;
        assert_eq!(ServerFrame::Error(e.clone()).to_text(), text);
        assert_eq!(e.frame(), text);
    }

    #[test]
    fn events_cross_ipc_as_they_went() {
        let events = [
            Event::Slots {
                slots: vec![SlotInfo {
                    clientid: None,
                    mid: "0".into(),
                    slot: 0,
                    userid: Some("u".into()),
                }],
            },
            Event::Reconnect {
                reason: ReconnectReason::PeerConnectionFailed,
            },
            Event::Members {
                members: vec![MemberInfo {
                    clientid: "c".into(),
                    userid: "u".into(),
                }],
            },
            Event::Speakers {
                speakers: vec![SpeakerInfo {
                    clientid: "c".into(),
                    level: -42,
                    userid: "u".into(),
                }],
            },
        ];
        for e in events {
            let bytes = postcard::to_stdvec(&e).expect("encodes");
            assert_eq!(postcard::from_bytes::<Event>(&bytes).expect("decodes"), e);
        }
    }
}
