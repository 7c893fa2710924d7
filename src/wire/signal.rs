//! The Beep client framing on `/connect`: text frames `<type>::<payload>`. Parsing is pure so
//! every odd frame a client can send has a unit test and a named error code.

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
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
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

    pub fn frame(&self) -> String {
        #[derive(Serialize)]
        struct E<'a> {
            code: &'a str,
            message: &'a str,
        }
        let body = serde_json::to_string(&E {
            code: self.code.as_str(),
            message: &self.message,
        })
        .unwrap_or_else(|_| "{}".into());
        format!("error::{body}")
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
}
