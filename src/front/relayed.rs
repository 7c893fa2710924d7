//! Front's side of several hosts ([`super::cluster`]): what the cluster's tasks hand to
//! front's core, through [`ClusterEvents`]. A client
//! relayed in from another node's front becomes one of the core's own clients, on a socket
//! whose frames go back over NATS ([`Route::Remote`]), so every rule of sessions and workers
//! applies to it unchanged; the permission check stays with the front that took its join.

use std::time::Instant;

use crate::front::cluster::{ClusterEvents, Load, RemoteSocket};
use crate::front::core::Placement;
use crate::front::outbox::Out;
use crate::front::state::{Front, Route, Shell};
use crate::wire::identity::Identity;
use crate::wire::ids::{ConversationId, NodeId};
use crate::wire::relay::{Delivered, Delivery, Relayed, ToOwner};

impl ClusterEvents for Front {
    fn placed(&self, conversation: &ConversationId, placement: Placement) {
        self.with_core(|core| core.placed(conversation, placement, Instant::now()));
    }

    fn relayed_in(&self, relayed: Relayed) {
        let mut shell = self.lock();
        let now = Instant::now();
        let from = RemoteSocket {
            node: relayed.front,
            socket: relayed.socket,
        };
        let who = relayed.who;
        let known = shell
            .relayed_in
            .get(&from)
            .filter(|(_, w)| *w == who)
            .map(|(id, _)| *id);
        match relayed.msg {
            ToOwner::Offer {
                conversation,
                sdp,
                candidates,
            } => {
                if known.is_none() && !self.attach_relayed(&mut shell, &from, &who, now) {
                    self.execute(&mut shell);
                    return;
                }
                let core = &mut shell.core;
                core.mark_relayed_in(&who);
                core.join(&who, &conversation, now);
                if let Err(e) = core.offer(&who, sdp, now) {
                    self.send_remote(&from, Out::Fail(e));
                }
                for candidate in candidates {
                    shell.core.ice(&who, Some(candidate));
                }
            }
            ToOwner::Ice { candidate } if known.is_some() => shell.core.ice(&who, Some(candidate)),
            ToOwner::Leave if known.is_some() => shell.core.leave(&who, now),
            ToOwner::Detach => {
                if let Some(id) = known {
                    shell.core.detach_socket(&who, id, now);
                    shell.relayed_in.remove(&from);
                    shell.sockets.remove(&id);
                }
            }
            // About a client this node does not know (its offer was refused): nothing to do.
            ToOwner::Ice { .. } | ToOwner::Leave => {}
        }
        self.execute(&mut shell);
    }

    fn delivered(&self, delivery: Delivery) {
        let out = match delivery.frame {
            Delivered::Frame(f) => Out::Frame(f),
            Delivered::Fail(e) => Out::Fail(e),
        };
        if let Some(Route::Local(tx)) = self.lock().sockets.get(&delivery.socket) {
            let _ = tx.send(out);
        }
    }

    /// The clients whose sessions it held are told to reconnect, and the sockets it relayed
    /// here are closed (their answered media goes on).
    fn node_lost(&self, node: &NodeId) {
        self.metrics.nodes_lost.inc();
        let mut shell = self.lock();
        let now = Instant::now();
        shell.core.node_lost(node);
        let gone: Vec<(RemoteSocket, (u64, Identity))> = shell
            .relayed_in
            .iter()
            .filter(|(from, _)| from.node == *node)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (from, (id, who)) in gone {
            shell.core.detach_socket(&who, id, now);
            shell.relayed_in.remove(&from);
            shell.sockets.remove(&id);
        }
        self.execute(&mut shell);
    }

    /// The worker here goes, and its members, told to reconnect, follow the key.
    fn claim_lost(&self, conversation: &ConversationId) {
        if let Err(e) = self.with_core(|core| core.restart(conversation)) {
            tracing::debug!(%conversation, "cluster: {e}");
        }
    }

    fn joined_elsewhere(&self, who: &Identity, conversation: &ConversationId) {
        self.join(who, conversation);
    }

    fn load(&self) -> Load {
        let shell = self.lock();
        let (workers, peers) = shell.core.load();
        Load {
            workers,
            peers,
            draining: shell.core.is_draining(),
            full: workers >= self.cfg.max_workers,
            serving: shell.core.serving(),
        }
    }
}

impl Front {
    /// Takes a relayed client's socket as one of the core's; false (and the client told why)
    /// when the core refuses it.
    fn attach_relayed(
        &self,
        shell: &mut Shell,
        from: &RemoteSocket,
        who: &Identity,
        now: Instant,
    ) -> bool {
        let id = shell.core.next_id();
        shell.sockets.insert(id, Route::Remote(from.clone()));
        match shell.core.attach_socket(who, id, now) {
            Ok(()) => {
                shell.relayed_in.insert(from.clone(), (id, who.clone()));
                true
            }
            Err(e) => {
                shell.sockets.remove(&id);
                self.send_remote(from, Out::Fail(e));
                false
            }
        }
    }

    fn send_remote(&self, to: &RemoteSocket, out: Out) {
        if let Some(cluster) = &self.cluster {
            cluster.deliver(to, out);
        }
    }
}
