//! Several hosts (`CLUSTER`, SPEC §7): which node holds a conversation is decided in NATS
//! key-value by the shell ([`Command::Place`]); the core only parks an offer until then, and
//! afterwards either serves it here or relays it, as [`Command::Relay`], to the node that
//! holds the conversation. A relayed client has no session in this node's table: its session
//! lives on the owner, which takes the client as one of its own (with a socket that delivers
//! back over NATS), so every rule of sessions and workers runs there unchanged. What stays
//! here is the link ([`RelayLink`]): the client's candidates, its leaving and its socket's
//! closing follow it, and when the owner is lost the client is told to reconnect, and its
//! next offer places the conversation anew.
//!
//! A conversation that loses its worker here gives up its claim ([`Command::Release`]).

use std::time::Instant;

use super::table::RelayLink;
use super::{Command, Core, Tally};
use crate::front::outbox::Out;
use crate::wire::identity::Identity;
use crate::wire::ids::{ConversationId, NodeId};
use crate::wire::relay::ToOwner;
use crate::wire::signal::{ErrorCode, Event, ReconnectReason, SignalError};

/// Where the shell found a conversation to be held.
#[derive(Clone, Debug, PartialEq)]
pub enum Placement {
    /// This node: its worker serves it.
    Here,
    /// Another node, live: the offer is relayed there.
    Node(NodeId),
    /// Not found (NATS unreachable, no node takes new conversations): the client hears why.
    Failed(SignalError),
}

impl Core {
    /// Parks `who`'s offer until `conversation`'s placement is known, asking for it unless
    /// that is already under way.
    pub(super) fn park(&mut self, who: &Identity, conversation: ConversationId, sdp: String) {
        let Some(client) = self.clients.get_mut(who) else {
            return;
        };
        client.placing_offer = Some(sdp);
        let claim_here = client.relayed_in;
        if self.placing.insert(conversation.clone()) {
            self.commands.push(Command::Place {
                conversation,
                claim_here,
            });
        }
    }

    /// The shell found where `conversation` is held: the offers parked for it go there.
    pub fn placed(&mut self, conversation: &ConversationId, placement: Placement, now: Instant) {
        self.placing.remove(conversation);
        let parked: Vec<Identity> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                c.placing_offer.is_some() && c.conversation.as_ref() == Some(conversation)
            })
            .map(|(who, _)| who.clone())
            .collect();
        for who in parked {
            let Some(sdp) = self
                .clients
                .get_mut(&who)
                .and_then(|c| c.placing_offer.take())
            else {
                continue;
            };
            let relayed_in = self.clients.get(&who).is_some_and(|c| c.relayed_in);
            match &placement {
                Placement::Here => self.dispatch_here(&who, conversation.clone(), sdp, now),
                Placement::Node(node) if relayed_in => {
                    // Its front placed it here, and another node holds it by now: its front
                    // places it again at its next offer.
                    let e = SignalError::new(
                        ErrorCode::Unavailable,
                        format!(
                            "conversation {conversation} has moved to node {node}; offer again"
                        ),
                    );
                    self.send(&who, Out::Fail(e));
                }
                Placement::Node(node) => self.relay_offer(&who, node, conversation, sdp),
                Placement::Failed(e) => self.send(&who, Out::Fail(e.clone())),
            }
        }
    }

    /// Relays `who`'s offer, with the candidates that came before it, to `node`.
    fn relay_offer(
        &mut self,
        who: &Identity,
        node: &NodeId,
        conversation: &ConversationId,
        sdp: String,
    ) {
        let Some(client) = self.clients.get_mut(who) else {
            return;
        };
        let Some(socket) = client.socket else {
            // The socket closed meanwhile: nobody would hear the answer.
            return;
        };
        client.pending_ice_bytes = 0;
        let candidates = std::mem::take(&mut client.pending_ice);
        client.last_slots = None;
        client.relay = Some(RelayLink {
            node: node.clone(),
            socket,
        });
        tracing::info!(%who, %conversation, %node, "offer relayed to the node that holds the conversation");
        self.commands.push(Command::Relay {
            node: node.clone(),
            socket,
            who: who.clone(),
            msg: ToOwner::Offer {
                conversation: conversation.clone(),
                sdp,
                candidates,
            },
        });
        self.count(Tally::RelayedOffer);
    }

    /// Sends `msg` down `who`'s relay link, if it has one (the link stays). Whether it had.
    pub(super) fn relay(&mut self, who: &Identity, msg: ToOwner) -> bool {
        let Some(link) = self.clients.get(who).and_then(|c| c.relay.clone()) else {
            return false;
        };
        self.commands.push(Command::Relay {
            node: link.node,
            socket: link.socket,
            who: who.clone(),
            msg,
        });
        true
    }

    /// Ends `who`'s relay link, if any, telling the owner with `msg` (`Leave` or `Detach`).
    pub(super) fn unlink(&mut self, who: &Identity, msg: ToOwner) {
        if self.relay(who, msg)
            && let Some(c) = self.clients.get_mut(who)
        {
            c.relay = None;
        }
    }

    /// `socket` of `who` closed (or was replaced): a link through it ends with `Detach`, so
    /// the owner keeps an answered session's media, as for a socket of its own.
    pub(super) fn unlink_socket(&mut self, who: &Identity, socket: u64) {
        let through = self
            .clients
            .get(who)
            .and_then(|c| c.relay.as_ref())
            .is_some_and(|l| l.socket == socket);
        if through {
            self.unlink(who, ToOwner::Detach);
        }
    }

    /// `node` is gone (its liveness expired, or it took no relayed offer): every client whose
    /// session it held is told to reconnect; their next offers place the conversation anew.
    pub fn node_lost(&mut self, node: &NodeId) {
        let lost: Vec<Identity> = self
            .clients
            .iter()
            .filter(|(_, c)| c.relay.as_ref().is_some_and(|l| l.node == *node))
            .map(|(who, _)| who.clone())
            .collect();
        for who in lost {
            if let Some(c) = self.clients.get_mut(&who) {
                c.relay = None;
                c.last_slots = None;
            }
            tracing::info!(%who, %node, "the node that held this client's session is lost");
            self.send(
                &who,
                Out::event(Event::Reconnect {
                    reason: ReconnectReason::NodeLost,
                }),
            );
        }
    }

    /// `who` reaches this node through another node's front: its conversation is held here.
    pub fn mark_relayed_in(&mut self, who: &Identity) {
        if let Some(c) = self.clients.get_mut(who) {
            c.relayed_in = true;
        }
    }

    /// `who` left its conversation (relayed: it joined another, or re-offered elsewhere).
    pub fn leave(&mut self, who: &Identity, now: Instant) {
        self.end_session(who, now);
    }

    /// `conversation` has no worker here now: with several hosts, its claim goes.
    pub(super) fn release(&mut self, conversation: &ConversationId) {
        if self.cluster {
            self.commands.push(Command::Release(conversation.clone()));
        }
    }
}
