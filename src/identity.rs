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

/// Parses the claim header's value; the error is the reason sent back with a 400.
pub fn parse_claim(value: Option<&[u8]>) -> Result<Identity, String> {
    let raw = value.ok_or("missing X-User-Claim header")?;
    #[derive(Deserialize)]
    struct Claim {
        userid: Option<String>,
        clientid: Option<String>,
    }
    let c: Claim = serde_json::from_slice(raw)
        .map_err(|e| format!("X-User-Claim is not valid JSON {{\"userid\",\"clientid\"}}: {e}"))?;
    let field = |v: Option<String>, name: &str| match v {
        Some(s) if !s.trim().is_empty() && s.len() <= 256 => Ok(s),
        Some(s) if s.len() > 256 => Err(format!("X-User-Claim {name} is longer than 256 bytes")),
        _ => Err(format!("X-User-Claim has no {name}")),
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

pub fn check_conversation_id(id: &str) -> Result<(), String> {
    if valid_conversation_id(id) {
        Ok(())
    } else {
        Err("invalid conversation id: expected 1-128 characters of A-Z a-z 0-9 _ -".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims() {
        let ok = parse_claim(Some(br#"{"userid":"u1","clientid":"c1"}"#)).unwrap();
        assert_eq!(ok.to_string(), "u1/c1");
        assert!(parse_claim(None).unwrap_err().contains("missing"));
        assert!(parse_claim(Some(b"{nope")).unwrap_err().contains("JSON"));
        assert!(
            parse_claim(Some(br#"{"userid":"u1"}"#))
                .unwrap_err()
                .contains("clientid")
        );
        assert!(
            parse_claim(Some(br#"{"userid":"","clientid":"c"}"#))
                .unwrap_err()
                .contains("userid")
        );
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
