//! Who is calling and where they want to go: the `X-User-Claim` header set by the auth proxy,
//! and conversation ids. Only that exact header is read: it is the one the proxy overwrites,
//! so any other spelling could be set by the client itself.

use serde::{Deserialize, Serialize};

pub const CLAIM_HEADER: &str = "x-user-claim";

/// A session is one client of one user: the same user may be connected from several clients.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identity {
    pub userid: String,
    pub clientid: String,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.userid, self.clientid)
    }
}

/// Why a claim was refused; the text is the reason sent back with a 400.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ClaimError {
    #[error("missing X-User-Claim header")]
    Missing,
    #[error("X-User-Claim is not valid JSON {{\"userid\",\"clientid\"}}: {0}")]
    NotJson(String),
    #[error("X-User-Claim has no {0}")]
    NoField(&'static str),
    #[error("X-User-Claim {0} is longer than 256 bytes")]
    TooLong(&'static str),
}

/// Parses the claim header's value.
pub fn parse_claim(value: Option<&[u8]>) -> Result<Identity, ClaimError> {
    let raw = value.ok_or(ClaimError::Missing)?;
    #[derive(Deserialize)]
    struct Claim {
        userid: Option<String>,
        clientid: Option<String>,
    }
    let c: Claim = serde_json::from_slice(raw).map_err(|e| ClaimError::NotJson(e.to_string()))?;
    let field = |v: Option<String>, name: &'static str| match v {
        Some(s) if s.len() > 256 => Err(ClaimError::TooLong(name)),
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(ClaimError::NoField(name)),
    };
    Ok(Identity {
        userid: field(c.userid, "userid")?,
        clientid: field(c.clientid, "clientid")?,
    })
}

/// Conversation ids become file names and NATS subjects, hence the strict alphabet.
pub fn valid_conversation_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("invalid conversation id: expected 1-128 characters of A-Z a-z 0-9 _ -")]
pub struct BadConversationId;

pub fn check_conversation_id(id: &str) -> Result<(), BadConversationId> {
    if valid_conversation_id(id) {
        Ok(())
    } else {
        Err(BadConversationId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims() {
        let ok = parse_claim(Some(br#"{"userid":"u1","clientid":"c1"}"#)).unwrap();
        assert_eq!(ok.to_string(), "u1/c1");
        let reason = |v: Option<&[u8]>| parse_claim(v).unwrap_err().to_string();
        assert!(reason(None).contains("missing"));
        assert!(reason(Some(b"{nope")).contains("JSON"));
        assert!(reason(Some(br#"{"userid":"u1"}"#)).contains("clientid"));
        assert!(reason(Some(br#"{"userid":"","clientid":"c"}"#)).contains("userid"));
    }

    #[test]
    fn conversation_ids() {
        assert!(valid_conversation_id("room_1-A"));
        assert!(!valid_conversation_id(""));
        assert!(!valid_conversation_id("../etc"));
        assert!(!valid_conversation_id("a.b"));
        assert!(!valid_conversation_id(&"x".repeat(129)));
        assert!(valid_conversation_id(&"x".repeat(128)));
    }
}
