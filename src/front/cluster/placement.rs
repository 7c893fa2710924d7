//! Placement in NATS JetStream key-value: the conversations' bucket maps conversation → node.
//! Every write is conditional, so two fronts placing the same conversation at once agree:
//! a new conversation is claimed with an atomic create, a dead node's conversation is taken
//! over with an update that names the revision it replaces, and a node gives a conversation
//! up with a delete that does the same. Whoever loses a race reads the key again.

use std::sync::Mutex;
use std::time::Instant;

use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store, UpdateErrorKind};

use super::nodes::NodeTable;
use crate::front::core::Placement;
use crate::wire::ids::{ConversationId, NodeId};
use crate::wire::signal::{ErrorCode, SignalError};

/// How often a placement reads the key again after losing a race before it gives up.
const ATTEMPTS: usize = 4;

fn unavailable(message: String) -> Placement {
    Placement::Failed(SignalError::new(ErrorCode::Unavailable, message))
}

/// The node `entry` names, if it is a live claim.
fn holder(entry: &async_nats::jetstream::kv::Entry) -> Option<NodeId> {
    if entry.operation != Operation::Put {
        return None;
    }
    NodeId::parse(std::str::from_utf8(&entry.value).ok()?).ok()
}

/// Where `conversation` is held: the live node its key names, or, when it names none or a
/// dead one, the node this one claims it for: itself when `claim_here` (a client relayed in
/// must be served here), else the least loaded live node.
pub async fn resolve(
    kv: &Store,
    nodes: &Mutex<NodeTable>,
    conversation: &ConversationId,
    claim_here: bool,
) -> Placement {
    let lock = || nodes.lock().unwrap_or_else(|p| p.into_inner());
    let me = lock().me().clone();
    for _ in 0..ATTEMPTS {
        let entry = match kv.entry(conversation.as_str()).await {
            Ok(e) => e,
            Err(e) => {
                return unavailable(format!(
                    "cannot read the cluster's placement (NATS key-value): {e}"
                ));
            }
        };
        let current = entry
            .as_ref()
            .and_then(|e| holder(e).map(|n| (n, e.revision)));
        if let Some((node, _)) = &current {
            if *node == me {
                return Placement::Here;
            }
            if lock().alive(node, Instant::now()) {
                return Placement::Node(node.clone());
            }
        }
        let target = if claim_here {
            me.clone()
        } else {
            match lock().least_loaded(Instant::now()) {
                Some(n) => n,
                None => return unavailable("no node of the cluster takes new conversations now (all draining); try again later".into()),
            }
        };
        let value = target.as_str().to_string().into();
        let written = match (&current, entry.as_ref().map(|e| e.revision)) {
            // A dead node's claim (or a deleted key): replaced only as it stands.
            (_, Some(revision)) => kv
                .update(conversation.as_str(), value, revision)
                .await
                .map_err(|e| {
                    (
                        e.kind() == UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                }),
            (_, None) => kv
                .create(conversation.as_str(), value)
                .await
                .map_err(|e| (e.kind() == CreateErrorKind::AlreadyExists, e.to_string())),
        };
        match written {
            Ok(_) => {
                if let Some((dead, _)) = &current {
                    tracing::info!(%conversation, %dead, to = %target, "took over a dead node's conversation");
                }
                lock().placed_on(&target);
                return if target == me {
                    Placement::Here
                } else {
                    Placement::Node(target)
                };
            }
            // Another front wrote first: read what it wrote.
            Err((true, _)) => continue,
            Err((false, e)) => {
                return unavailable(format!(
                    "cannot claim the conversation in the cluster's placement (NATS key-value): {e}"
                ));
            }
        }
    }
    unavailable(format!(
        "the placement of conversation {conversation} kept changing; try again"
    ))
}

/// Gives up this node's claim on `conversation` (its worker here is gone), unless another
/// node holds it by now.
pub async fn release(kv: &Store, me: &NodeId, conversation: &ConversationId) {
    let entry = match kv.entry(conversation.as_str()).await {
        Ok(Some(e)) => e,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(%conversation, "cluster: cannot read the conversation's claim to release it: {e}");
            return;
        }
    };
    if holder(&entry).as_ref() != Some(me) {
        return;
    }
    if let Err(e) = kv
        .delete_expect_revision(conversation.as_str(), Some(entry.revision))
        .await
    {
        tracing::debug!(%conversation, "cluster: claim not released (changed meanwhile?): {e}");
    }
}

/// What this node's claim on a conversation it serves is, checked now and then.
#[derive(Debug, PartialEq)]
pub enum Claim {
    Held,
    /// The key was missing (lost, or released in a race) and is this node's again.
    Restored,
    /// Another node holds it: this node's worker must go, and its members follow the key.
    Lost(NodeId),
}

/// Checks (and repairs) this node's claim on a conversation its worker serves.
pub async fn check_claim(kv: &Store, me: &NodeId, conversation: &ConversationId) -> Option<Claim> {
    let entry = kv.entry(conversation.as_str()).await.ok()?;
    match entry.as_ref().and_then(holder) {
        Some(node) if node == *me => Some(Claim::Held),
        Some(node) => Some(Claim::Lost(node)),
        None => {
            let value = me.as_str().to_string().into();
            let written = match entry {
                Some(e) => kv
                    .update(conversation.as_str(), value, e.revision)
                    .await
                    .is_ok(),
                None => kv.create(conversation.as_str(), value).await.is_ok(),
            };
            written.then_some(Claim::Restored)
        }
    }
}
