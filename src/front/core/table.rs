//! The records the core keeps, one owner per fact: a *client* (one (userid, clientid) pair:
//! its socket, its join, its waiting offer, its rates), a *session* (one peer connection in a
//! worker: whose, where, which worker generation, answered yet) and a *worker record* (one
//! conversation's worker process as front sees it). A session is recorded once, in the
//! session table keyed by [`SessionId`]; a client only points at its current one, and a worker
//! counts its members from the table, so "is this still the client's current session" has one
//! answer ([`super::Core::current`]).

use std::collections::VecDeque;
use std::time::Instant;

use crate::front::conversation::WorkerState;
use crate::front::rates::over_rate;
use crate::wire::identity::Identity;
use crate::wire::ids::{ConversationId, Generation, NodeId, SessionId};
use crate::wire::signal::{ErrorCode, SignalError, SlotInfo};
use crate::wire::stats::WorkerStats;

/// Most bytes of trickled candidates kept for an offer still waiting for its join (with at
/// most [`PENDING_ICE`] of them): a candidate line is about 100 bytes.
pub const PENDING_ICE_BYTES: usize = 16 * 1024;
/// Most trickled candidates kept for an offer still waiting for its join.
pub const PENDING_ICE: usize = 64;

/// One client: (userid, clientid).
#[derive(Debug, Default)]
pub struct Client {
    /// The conversation it joined (its permission granted), if any.
    pub conversation: Option<ConversationId>,
    pub joined_at: Option<Instant>,
    /// Its signalling socket, by the id the shell gave it.
    pub socket: Option<u64>,
    /// Its offer waiting for its join, and until when it may wait (`JOIN_TIMEOUT_MS`).
    pub pending_offer: Option<(String, Instant)>,
    pub pending_ice: Vec<String>,
    /// Bytes in `pending_ice`.
    pub pending_ice_bytes: usize,
    /// Its current session, a key of the session table (which owns the session).
    pub session: Option<SessionId>,
    pub recent_offers: VecDeque<Instant>,
    /// Its joins of the last minute (`JOINS_PER_MINUTE`): each costs a permission request.
    pub recent_joins: VecDeque<Instant>,
    /// The join's permission check was this moment's: the next offer needs no check of its own
    /// (every later one does, see [`crate::front::session`]).
    pub join_covers_offer: bool,
    /// The last `slots` event of its session, for a socket that reconnects.
    pub last_slots: Option<Vec<SlotInfo>>,
    /// Several hosts: its offer, waiting for its conversation's placement.
    pub placing_offer: Option<String>,
    /// Several hosts: the node that holds its session, and the socket its signalling is
    /// relayed from; its candidates and its leaving go there.
    pub relay: Option<RelayLink>,
    /// Several hosts: it reaches this node through another node's front, so its conversation
    /// must be held here (it is never relayed on).
    pub relayed_in: bool,
}

/// Where a client's signalling is relayed to (several hosts).
#[derive(Clone, Debug, PartialEq)]
pub struct RelayLink {
    pub node: NodeId,
    /// Its socket on this node, whose frames the owner delivers back.
    pub socket: u64,
}

impl Client {
    /// Why one more offer now would be over `per_minute` (`OFFERS_PER_MINUTE`), if it would;
    /// forgets offers older than a minute.
    pub fn offer_rate_refusal(&mut self, per_minute: u32, now: Instant) -> Option<SignalError> {
        over_rate(&mut self.recent_offers, per_minute, now).map(|_| {
            SignalError::new(
                ErrorCode::RateLimited,
                format!("more than {per_minute} offers in a minute"),
            )
        })
    }

    /// Counts against the user's session limit.
    pub fn active(&self) -> bool {
        self.socket.is_some() || self.session.is_some() || self.relay.is_some()
    }

    /// Forgets an offer still waiting for its join, and its candidates.
    pub fn forget_pending(&mut self) {
        self.pending_offer = None;
        self.placing_offer = None;
        self.pending_ice.clear();
        self.pending_ice_bytes = 0;
    }
}

/// One live peer connection in a worker.
#[derive(Clone, Debug)]
pub struct Session {
    pub who: Identity,
    pub conversation: ConversationId,
    /// The worker that holds it: a report from another generation concerns another session.
    pub generation: Generation,
    pub answered: bool,
    /// When the offer went to the worker: an answer must follow within the offer deadline.
    pub dispatched_at: Instant,
}

/// One conversation's worker process, as front sees it.
#[derive(Debug)]
pub struct WorkerRecord {
    pub generation: Generation,
    /// Since when it has had no member (the idle clock), if it has none.
    pub empty_since: Option<Instant>,
    pub pid: Option<u32>,
    pub started: Instant,
    pub state: WorkerState,
    pub stats: WorkerStats,
}

impl WorkerRecord {
    pub fn new(generation: Generation, now: Instant) -> Self {
        WorkerRecord {
            generation,
            empty_since: None,
            pid: None,
            started: now,
            state: WorkerState::Starting,
            stats: WorkerStats::default(),
        }
    }
}
