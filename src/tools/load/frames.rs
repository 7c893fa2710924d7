//! How the test and load clients read front's text frames (SPEC §3, `GET /connect`): one
//! reader for the webrtc-rs client and the light one, so both take every frame the same way.
//!
//! Events and errors stay JSON values rather than front's typed [`ServerFrame`]: a client
//! keeps what it was told, kinds it does not know included, and the tests look inside.
//!
//! [`ServerFrame`]: crate::wire::signal::ServerFrame

use rtc::peer_connection::transport::RTCIceCandidateInit;
use serde_json::Value;

/// One frame from front, as a client takes it.
#[derive(Debug, PartialEq)]
pub(crate) enum Incoming {
    /// The SDP answer.
    Answer(String),
    /// A trickled server candidate (front trickles none today: it is ICE-lite).
    Ice(RTCIceCandidateInit),
    /// An `event::` payload; one that is not JSON is kept as a string.
    Event(Value),
    /// An `error::` payload, likewise.
    Error(Value),
    /// Nothing a client acts on: an unknown frame type, an empty or unreadable candidate.
    Ignored,
}

impl Incoming {
    /// Reads one text frame. `legacy`: the client offered raw SDP like the seed-era
    /// JavaScript, which hands every message to `setRemoteDescription`: it takes a bare SDP
    /// frame as its answer, and anything framed would break it, so that is an error.
    pub(crate) fn read(text: &str, legacy: bool) -> Incoming {
        if text.starts_with("v=0") {
            return Incoming::Answer(text.to_string());
        }
        if legacy {
            return Incoming::Error(Value::String(
                "a framed message was sent to a raw-SDP client".into(),
            ));
        }
        let (kind, payload) = text.split_once("::").unwrap_or(("", ""));
        let json = || serde_json::from_str(payload).unwrap_or(Value::String(payload.into()));
        match kind {
            "answer" => Incoming::Answer(payload.to_string()),
            "ice" => match serde_json::from_str::<RTCIceCandidateInit>(payload) {
                Ok(init) if !init.candidate.is_empty() => Incoming::Ice(init),
                _ => Incoming::Ignored,
            },
            "event" => Incoming::Event(json()),
            "error" => Incoming::Error(json()),
            _ => Incoming::Ignored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_by_their_type() {
        assert_eq!(
            Incoming::read("answer::v=0\r\n", false),
            Incoming::Answer("v=0\r\n".into())
        );
        assert_eq!(
            Incoming::read(
                r#"event::{"reason":"worker-exited","type":"reconnect"}"#,
                false
            ),
            Incoming::Event(serde_json::json!({"type": "reconnect", "reason": "worker-exited"}))
        );
        assert_eq!(
            Incoming::read(r#"error::{"code":"internal","message":"m"}"#, false),
            Incoming::Error(serde_json::json!({"code": "internal", "message": "m"}))
        );
        assert_eq!(
            Incoming::read("event::not json", false),
            Incoming::Event(Value::String("not json".into()))
        );
        assert_eq!(
            Incoming::read(r#"ice::{"candidate":""}"#, false),
            Incoming::Ignored
        );
        assert_eq!(Incoming::read("hello", false), Incoming::Ignored);
    }

    #[test]
    fn a_raw_sdp_client_takes_only_raw_sdp() {
        assert_eq!(
            Incoming::read("v=0\r\no=-", true),
            Incoming::Answer("v=0\r\no=-".into())
        );
        assert!(matches!(
            Incoming::read("event::{}", true),
            Incoming::Error(Value::String(_))
        ));
    }
}
