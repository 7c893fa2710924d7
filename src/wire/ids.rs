//! Typed ids. Mixing them up (a session id where a worker generation was meant, an unchecked
//! string where a conversation id was meant) compiles silently when they are bare `u64`s and
//! `String`s.

use serde::{Deserialize, Serialize};

/// Front's handle for one peer connection in a worker. A new offer from the same client gets
/// a new id, so a late message about the old connection can never be mistaken for the new.
/// Inside the worker's room the session is also the *member* id.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SessionId(pub u64);

/// One incarnation of a conversation's worker. A restarted worker has a new generation, so
/// what the old one said after it was replaced is recognised and dropped.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Generation(pub u64);

macro_rules! display_as_number {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}
display_as_number!(SessionId, Generation);

/// A conversation's id, checked once where it enters: the URL path of `/join`, the query of
/// `/connect`, an admin command, the worker's command line, a spool directory's name. It
/// becomes file names and NATS subjects, hence the strict alphabet; past the edge nobody checks
/// it again, because nothing else can make one. On the wire it is its string.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConversationId(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid conversation id: expected 1-128 characters of A-Z a-z 0-9 _ -")]
pub struct BadConversationId;

impl ConversationId {
    pub fn parse(id: &str) -> Result<ConversationId, BadConversationId> {
        let valid = (1..=128).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(ConversationId(id.to_owned()))
        } else {
            Err(BadConversationId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ConversationId {
    type Error = BadConversationId;
    fn try_from(id: String) -> Result<Self, Self::Error> {
        ConversationId::parse(&id)
    }
}

impl std::str::FromStr for ConversationId {
    type Err = BadConversationId;
    fn from_str(id: &str) -> Result<Self, Self::Err> {
        ConversationId::parse(id)
    }
}

impl From<ConversationId> for String {
    fn from(id: ConversationId) -> String {
        id.0
    }
}

impl std::ops::Deref for ConversationId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for ConversationId {
    fn as_ref(&self) -> &std::path::Path {
        self.0.as_ref()
    }
}

impl AsRef<std::ffi::OsStr> for ConversationId {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_ref()
    }
}

impl std::fmt::Display for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One node of a cluster (`NODE_ID`; SPEC §7): a host's front and its workers. It becomes a
/// NATS subject token and a key-value key, hence the alphabet of a conversation id, shorter.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid node id: expected 1-64 characters of A-Z a-z 0-9 _ -")]
pub struct BadNodeId;

impl NodeId {
    pub fn parse(id: &str) -> Result<NodeId, BadNodeId> {
        let valid = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(NodeId(id.to_owned()))
        } else {
            Err(BadNodeId)
        }
    }

    /// A node id from a host name: every character outside the alphabet (the dots of a
    /// fully qualified name) becomes `-`, and it is cut to 64 characters.
    pub fn from_hostname(host: &str) -> Result<NodeId, BadNodeId> {
        let id: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        NodeId::parse(&id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = BadNodeId;
    fn try_from(id: String) -> Result<Self, Self::Error> {
        NodeId::parse(&id)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_ids_are_checked_on_every_way_in() {
        assert_eq!(ConversationId::parse("c-1_A").unwrap().as_str(), "c-1_A");
        assert!(ConversationId::parse(&"x".repeat(128)).is_ok());
        for bad in [
            "",
            "a/b",
            "..",
            "a.b",
            "../etc",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert_eq!(
                ConversationId::parse(bad),
                Err(BadConversationId),
                "{bad:?}"
            );
        }
        // Deserialising is a way in too.
        let ok: ConversationId = serde_json::from_str("\"room\"").unwrap();
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"room\"");
        assert!(serde_json::from_str::<ConversationId>("\"../etc\"").is_err());
        let bytes = postcard::to_stdvec(&ok).unwrap();
        assert_eq!(bytes, postcard::to_stdvec("room").unwrap());
        assert!(
            postcard::from_bytes::<ConversationId>(&postcard::to_stdvec("a/b").unwrap()).is_err()
        );
    }

    #[test]
    fn node_ids_are_subject_tokens_and_host_names_become_one() {
        assert_eq!(NodeId::parse("node-a_1").unwrap().as_str(), "node-a_1");
        for bad in ["", "a.b", "a*", "a>", "a b", &"x".repeat(65)] {
            assert_eq!(NodeId::parse(bad), Err(BadNodeId), "{bad:?}");
        }
        let host = NodeId::from_hostname("sfu-1.eu.example.org").unwrap();
        assert_eq!(host.as_str(), "sfu-1-eu-example-org");
        assert_eq!(
            NodeId::from_hostname(&"h".repeat(80))
                .unwrap()
                .as_str()
                .len(),
            64
        );
        assert!(NodeId::from_hostname("").is_err());
        assert!(serde_json::from_str::<NodeId>("\"a.b\"").is_err());
    }
}
