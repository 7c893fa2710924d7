//! The nodes of the cluster as this node sees them: what each said of itself last
//! ([`NodeInfo`]) and when that was heard here. Pure (time comes in), so liveness and the
//! choice of a node for a new conversation are unit tested without NATS.
//!
//! Liveness goes by this node's own clock: a node heard from within the TTL is alive; one
//! whose key was deleted (it left) or that went silent past the TTL is dead. Clocks of the
//! hosts never need to agree. This node itself is always alive here: whether it can place
//! conversations does not depend on hearing its own refreshes back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::wire::ids::NodeId;
use crate::wire::relay::NodeInfo;

#[derive(Debug)]
struct Heard {
    info: NodeInfo,
    at: Instant,
    /// Conversations this node placed on it since it last said its load: counted in, so a
    /// burst of new conversations spreads instead of all going to the node that was emptiest
    /// at the last refresh.
    placed: u32,
}

/// One node as `ctl cluster` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    pub info: NodeInfo,
    pub alive: bool,
    /// Since its last refresh was heard here.
    pub age: Duration,
}

#[derive(Debug)]
pub struct NodeTable {
    me: NodeId,
    ttl: Duration,
    nodes: BTreeMap<NodeId, Heard>,
}

impl NodeTable {
    pub fn new(me: NodeId, ttl: Duration) -> NodeTable {
        NodeTable {
            me,
            ttl,
            nodes: BTreeMap::new(),
        }
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// A node's refresh was heard (its key was put).
    pub fn heard(&mut self, info: NodeInfo, now: Instant) {
        self.nodes.insert(
            info.node.clone(),
            Heard {
                info,
                at: now,
                placed: 0,
            },
        );
    }

    /// A node is gone (its key was deleted, or it did not take a relayed offer). Whether it
    /// was alive until now; this node itself never goes.
    pub fn gone(&mut self, node: &NodeId, now: Instant) -> bool {
        if *node == self.me {
            return false;
        }
        let was = self.alive(node, now);
        self.nodes.remove(node);
        was
    }

    /// The nodes that went silent past the TTL since the last call: dead from now on.
    pub fn expire(&mut self, now: Instant) -> Vec<NodeId> {
        let ttl = self.ttl;
        let me = self.me.clone();
        let dead: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(id, h)| **id != me && now.saturating_duration_since(h.at) > ttl)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &dead {
            self.nodes.remove(id);
        }
        dead
    }

    pub fn alive(&self, node: &NodeId, now: Instant) -> bool {
        *node == self.me
            || self
                .nodes
                .get(node)
                .is_some_and(|h| now.saturating_duration_since(h.at) <= self.ttl)
    }

    /// Where a new conversation goes: the live node, neither draining nor full, with the fewest
    /// conversations (those placed on it since its last refresh included), then the fewest
    /// peers, then the least busy CPU; ties go to the lowest id, so every node would choose
    /// the same. `None` when every live node drains.
    pub fn least_loaded(&self, now: Instant) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(id, h)| self.alive(id, now) && !h.info.draining && !h.info.full)
            .min_by(|(a, x), (b, y)| {
                let load = |h: &Heard| (h.info.workers + h.placed, h.info.peers);
                load(x)
                    .cmp(&load(y))
                    .then(x.info.cpu.total_cmp(&y.info.cpu))
                    .then(a.cmp(b))
            })
            .map(|(id, _)| id.clone())
    }

    /// This node placed a new conversation on `node`.
    pub fn placed_on(&mut self, node: &NodeId) {
        if let Some(h) = self.nodes.get_mut(node) {
            h.placed += 1;
        }
    }

    pub fn view(&self, now: Instant) -> Vec<NodeView> {
        self.nodes
            .iter()
            .map(|(id, h)| NodeView {
                info: h.info.clone(),
                alive: self.alive(id, now),
                age: now.saturating_duration_since(h.at),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    fn info(node: &str, workers: u32, peers: u32) -> NodeInfo {
        NodeInfo {
            node: id(node),
            workers,
            peers,
            cpu: 0.0,
            draining: false,
            full: false,
            media_ip: None,
            listen: "127.0.0.1:80".into(),
        }
    }

    #[test]
    fn nodes_live_while_heard_within_the_ttl_and_die_once() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(3);
        let mut t = NodeTable::new(id("a"), ttl);
        t.heard(info("a", 0, 0), t0);
        t.heard(info("b", 0, 0), t0);
        assert!(t.alive(&id("b"), t0 + ttl));
        assert!(t.expire(t0 + ttl).is_empty());
        // Silent past the TTL: dead, reported once; this node never expires.
        assert_eq!(t.expire(t0 + ttl + Duration::from_millis(1)), vec![id("b")]);
        assert!(t.expire(t0 + ttl * 2).is_empty());
        assert!(!t.alive(&id("b"), t0 + ttl * 2));
        assert!(t.alive(&id("a"), t0 + ttl * 9));
        // A refresh brings it back; a deleted key takes it away at once, and says so once.
        t.heard(info("b", 0, 0), t0 + ttl * 3);
        assert!(t.gone(&id("b"), t0 + ttl * 3));
        assert!(!t.gone(&id("b"), t0 + ttl * 3));
        assert!(!t.gone(&id("a"), t0));
        assert!(!t.alive(&id("zz"), t0));
    }

    #[test]
    fn new_conversations_go_to_the_least_loaded_live_node_and_spread() {
        let t0 = Instant::now();
        let mut t = NodeTable::new(id("a"), Duration::from_secs(3));
        t.heard(info("a", 2, 10), t0);
        t.heard(info("b", 1, 50), t0);
        t.heard(info("c", 1, 20), t0);
        assert_eq!(t.least_loaded(t0), Some(id("c")));
        // What it placed since the last refresh counts: a burst alternates.
        t.placed_on(&id("c"));
        assert_eq!(t.least_loaded(t0), Some(id("b")));
        t.placed_on(&id("b"));
        t.placed_on(&id("c"));
        t.placed_on(&id("b"));
        assert_eq!(t.least_loaded(t0), Some(id("a")));
        // A refresh replaces the guess with what the node says.
        t.heard(info("c", 1, 20), t0);
        assert_eq!(t.least_loaded(t0), Some(id("c")));
        // Full, draining and dead nodes take none.
        let mut full = info("b", 0, 0);
        full.full = true;
        t.heard(full, t0);
        let mut draining = info("c", 0, 0);
        draining.draining = true;
        t.heard(draining, t0);
        let later = t0 + Duration::from_secs(4);
        t.heard(info("a", 5, 5), later);
        assert_eq!(t.least_loaded(later), Some(id("a")));
        let mut me = info("a", 0, 0);
        me.draining = true;
        t.heard(me, later);
        assert_eq!(t.least_loaded(later), None);
        // Equal loads: the lowest id, whoever chooses.
        let mut u = NodeTable::new(id("z"), Duration::from_secs(3));
        u.heard(info("z", 1, 1), t0);
        u.heard(info("m", 1, 1), t0);
        assert_eq!(u.least_loaded(t0), Some(id("m")));
        assert_eq!(u.view(t0).len(), 2);
    }
}
