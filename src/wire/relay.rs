//! What fronts of one cluster say to each other over NATS (SPEC §7, README "Several hosts"):
//! a client whose WebSocket landed on one node (its *front*) while its conversation is held by
//! another (the *owner*) has its signalling relayed, and nothing else crosses: media goes from
//! the client straight to the owner's worker, whose answer names the owner's address.
//!
//! - front → owner, on `{bucket}.relay.{owner}`: [`ToOwner`] in a [`Relayed`] envelope that says
//!   which client it is (front's node, its socket id there, the identity). An offer is sent as
//!   a request: the owner acknowledges it on the reply subject at once, and no answer at all
//!   (no responders, or silence) means the owner is gone.
//! - owner → front, on `{bucket}.deliver.{front}`: [`Delivery`], a frame for that socket.
//! - front → every front, on `{bucket}.joins`: [`Joined`], a join it took, so the client's
//!   socket may be on any node (`POST /join` and `GET /connect` need no affinity).
//!
//! Postcard with a version first, as on the worker channel: a node of another build is told
//! apart, not misread. The permission check stays with the front that took the join (the owner
//! trusts its cluster; README "Several hosts" says how NATS permissions keep others out).

use serde::{Deserialize, Serialize};

use super::identity::Identity;
use super::ids::{ConversationId, NodeId};
use super::signal::{ServerFrame, SignalError};

/// Bumped when a message below changes shape.
pub const RELAY_VERSION: u16 = 2;

/// Where the owner of a conversation takes relayed signalling.
pub fn owner_subject(bucket: &str, owner: &NodeId) -> String {
    format!("{bucket}.relay.{owner}")
}

/// Where every front hears the joins the others took.
pub fn joins_subject(bucket: &str) -> String {
    format!("{bucket}.joins")
}

/// Where a front takes the frames owners deliver for its sockets.
pub fn front_subject(bucket: &str, front: &NodeId) -> String {
    format!("{bucket}.deliver.{front}")
}

/// One client's signalling, relayed from its front to the owner of its conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Relayed {
    /// The node whose WebSocket the client is on.
    pub front: NodeId,
    /// The socket's id on that node: the owner delivers to it.
    pub socket: u64,
    pub who: Identity,
    pub msg: ToOwner,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToOwner {
    /// A new peer connection in `conversation` (the front has checked the permission), with
    /// the candidates that trickled in before it was sent.
    Offer {
        conversation: ConversationId,
        sdp: String,
        candidates: Vec<String>,
    },
    /// A trickled candidate.
    Ice { candidate: String },
    /// The client left the conversation (it joined another, or re-offered elsewhere): its
    /// session there ends.
    Leave,
    /// The client's socket closed: as for a local socket, an answered session keeps its media.
    Detach,
}

/// A join one front took (its permission checked there), told to every other: the client's
/// WebSocket may be on any of them, now or after a reconnect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    pub front: NodeId,
    pub who: Identity,
    pub conversation: ConversationId,
}

/// A frame for a client's socket on its front.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub socket: u64,
    pub frame: Delivered,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Delivered {
    Frame(ServerFrame),
    /// `error::`, then the front closes the socket.
    Fail(SignalError),
}

/// What a node says of itself in the nodes' bucket (`{bucket}-nodes`, key = its id), as JSON
/// so an operator can read it with `nats kv get`. Refreshed every quarter of the TTL: a key
/// older than `CLUSTER_NODE_TTL_MS` means a dead node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: NodeId,
    /// Conversations with a worker on it.
    pub workers: u32,
    /// Peer connections (sessions) in those workers.
    pub peers: u32,
    /// The host's busy CPU over the last refresh, 0 to 1 (all cores together).
    pub cpu: f32,
    /// It takes no new conversations.
    pub draining: bool,
    /// It runs `MAX_WORKERS` conversations: it takes no new one either.
    pub full: bool,
    /// The address its workers announce (`PUBLIC_IP`, else `RTC_BIND_IP`), if set.
    pub media_ip: Option<String>,
    /// Where its front listens.
    pub listen: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayDecodeError {
    #[error("relay message of version {0}, this node speaks {RELAY_VERSION}")]
    Version(u16),
    #[error("malformed relay message: {0}")]
    Malformed(#[from] postcard::Error),
}

/// The message's bytes on NATS: its version, then the message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = RELAY_VERSION.to_le_bytes().to_vec();
    // Our own types (strings, numbers, enums) always serialise; the fallback is never taken.
    out.extend(postcard::to_stdvec(msg).unwrap_or_default());
    out
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, RelayDecodeError> {
    let (version, body) = match bytes {
        [a, b, body @ ..] => (u16::from_le_bytes([*a, *b]), body),
        _ => {
            return Err(RelayDecodeError::Malformed(
                postcard::Error::DeserializeUnexpectedEnd,
            ));
        }
    };
    if version != RELAY_VERSION {
        return Err(RelayDecodeError::Version(version));
    }
    Ok(postcard::from_bytes(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::signal::{ErrorCode, Event, ReconnectReason};

    #[test]
    fn relay_messages_round_trip_and_other_versions_are_refused() {
        let msg = Relayed {
            front: NodeId::parse("b").unwrap(),
            socket: 42,
            who: Identity {
                userid: "u".into(),
                clientid: "c".into(),
            },
            msg: ToOwner::Offer {
                conversation: ConversationId::parse("room").unwrap(),
                sdp: "v=0\r\n".into(),
                candidates: vec!["{\"candidate\":\"candidate:1\"}".into()],
            },
        };
        let bytes = encode(&msg);
        assert_eq!(decode::<Relayed>(&bytes).unwrap(), msg);
        for frame in [
            Delivered::Frame(ServerFrame::Event(Event::Reconnect {
                reason: ReconnectReason::NodeLost,
            })),
            Delivered::Fail(SignalError::new(ErrorCode::Unavailable, "full")),
        ] {
            let d = Delivery { socket: 7, frame };
            assert_eq!(decode::<Delivery>(&encode(&d)).unwrap(), d);
        }
        let joined = Joined {
            front: msg.front.clone(),
            who: msg.who.clone(),
            conversation: ConversationId::parse("room").unwrap(),
        };
        assert_eq!(decode::<Joined>(&encode(&joined)).unwrap(), joined);
        let mut other = bytes.clone();
        other[0] = other[0].wrapping_add(1);
        assert!(matches!(
            decode::<Relayed>(&other),
            Err(RelayDecodeError::Version(_))
        ));
        assert!(decode::<Relayed>(&bytes[..bytes.len() - 3]).is_err());
        assert!(decode::<Relayed>(&[1]).is_err());
        assert_eq!(owner_subject("beep", &msg.front), "beep.relay.b");
        assert_eq!(front_subject("beep", &msg.front), "beep.deliver.b");
    }
}
