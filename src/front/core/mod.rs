//! Front's core: the rules of clients, sessions, joins, offers and workers as a plain state
//! machine. Inputs and time go in (a join that was allowed, an offer, a candidate, what a
//! worker said, that a worker is gone, a housekeeping tick, drain, restart, adopt), commands
//! come out ([`Command`]: a frame for a socket, a message or a kill for a worker, a worker to
//! spawn, a counter, "drained"). No tokio, no sockets, no clock: `now` is passed in, so unit
//! tests drive it on scripted time. [`super::state::Front`] is the thin shell around it: one
//! mutex, the sockets' and workers' channels, and the permission check it awaits.
//!
//! The shape is sans-I/O's (str0m, webrtc-rs): a method changes the state and queues
//! commands; the shell takes them with [`Core::take_commands`] under the same lock and carries
//! them out in order, so a spawn is carried out before the offer that goes to that worker.
//!
//! | module | what it is |
//! |---|---|
//! | [`table`] | the records: clients, the session table, worker records |
//! | `joins` | sockets, joins, offers, candidates: how a client gets a session |
//! | `workers` | what workers report, crashes, housekeeping, drain, restart, adoption |
//! | `placement` | several hosts: an offer waits for its conversation's placement, then goes to the local worker or is relayed to the owner |
//! | `views` | read-only answers for `/healthz`, `/metrics` and `ctl workers` |

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::conversation::{Control, CrashHistory, CrashPolicy};
use super::outbox::Out;
use crate::config::Config;
use crate::wire::identity::Identity;
use crate::wire::ids::{ConversationId, Generation, NodeId, SessionId};
use crate::wire::ipc::ToWorker;
use crate::wire::relay::ToOwner;
use crate::wire::signal::{ErrorCode, SignalError};
use crate::wire::stats::WorkerStats;

mod joins;
mod placement;
pub mod table;
#[cfg(test)]
mod tests;
mod views;
mod workers;

pub use placement::Placement;
use table::{Client, Session, WorkerRecord};

/// How long a worker may take to answer an offer before it is killed as hung.
pub const OFFER_DEADLINE: Duration = Duration::from_secs(10);

/// What the core asks of its shell, in order.
#[derive(Debug)]
pub enum Command {
    /// Queue this for the socket the shell registered under this id.
    Socket(u64, Out),
    /// Pass this to the supervisor of the worker of this generation.
    Worker(Generation, Control),
    /// Start a worker for `conversation` as `generation`, after `delay` (the crash backoff).
    Spawn {
        conversation: ConversationId,
        generation: Generation,
        delay: Duration,
    },
    /// Several hosts: find which node holds `conversation` (claiming it if nobody does, for
    /// this node when `claim_here`), then tell [`Core::placed`].
    Place {
        conversation: ConversationId,
        claim_here: bool,
    },
    /// Several hosts: `conversation` has no worker here any more; give up its claim.
    Release(ConversationId),
    /// Several hosts: pass this client's signalling to `node`, which holds its conversation.
    Relay {
        node: NodeId,
        socket: u64,
        who: Identity,
        msg: ToOwner,
    },
    /// Count this in `/metrics`.
    Count(Tally),
    /// Draining has nothing left to wait for.
    Drained,
}

/// The counters the core's rules move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tally {
    Offer,
    /// An offer relayed to the node that holds its conversation.
    RelayedOffer,
    WorkerSpawned,
    HeartbeatKill,
    OfferTimeout,
    WorkerRestart,
    WorkerFailure,
    CrashLoop,
}

/// Outcome of an offer frame.
#[derive(Debug, PartialEq)]
pub enum OfferState {
    Dispatched,
    /// No join yet: the offer waits for one until `until`, when the shell asks
    /// [`Core::offer_expired`].
    WaitingForJoin {
        until: Instant,
    },
}

/// Why a join was refused; maps to an HTTP status or an `error::` frame.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("not allowed in this conversation: {0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
    /// The user starts new conversations faster than `NEW_CONVERSATIONS_PER_MINUTE`.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Duration,
    },
}

impl JoinError {
    pub fn signal(&self) -> SignalError {
        match self {
            JoinError::Forbidden(m) => SignalError::new(
                ErrorCode::Forbidden,
                format!("not allowed in this conversation: {m}"),
            ),
            JoinError::Unavailable(m) => SignalError::new(ErrorCode::Unavailable, m.clone()),
            JoinError::RateLimited { message, .. } => {
                SignalError::new(ErrorCode::RateLimited, message.clone())
            }
        }
    }
}

/// The settings the core's rules read (from [`Config`]; plain, so tests write their own).
#[derive(Clone, Debug)]
pub struct Limits {
    pub join_timeout: Duration,
    pub worker_idle: Duration,
    pub max_sessions_per_user: usize,
    pub offers_per_minute: u32,
    pub joins_per_minute: u32,
    pub max_workers: usize,
    pub new_conversations_per_minute: u32,
}

impl Limits {
    pub fn of(cfg: &Config) -> Limits {
        Limits {
            join_timeout: cfg.join_timeout,
            worker_idle: cfg.worker_idle,
            max_sessions_per_user: cfg.max_sessions_per_user,
            offers_per_minute: cfg.offers_per_minute,
            joins_per_minute: cfg.joins_per_minute,
            max_workers: cfg.max_workers,
            new_conversations_per_minute: cfg.new_conversations_per_minute,
        }
    }
}

/// Front's state and rules. See the module doc.
pub struct Core {
    limits: Limits,
    policy: CrashPolicy,
    /// The next id for a session, a worker generation or a socket.
    next_id: u64,
    clients: HashMap<Identity, Client>,
    /// Every live session, and the only record of one.
    sessions: HashMap<SessionId, Session>,
    /// The worker of each conversation that has one.
    workers: HashMap<ConversationId, WorkerRecord>,
    /// Workers told to stop and not yet reaped: their last `Stats` still count.
    retiring: HashMap<Generation, WorkerStats>,
    /// Counters of every worker that has exited, so `/metrics` totals never go backwards.
    retired: WorkerStats,
    /// Crashes and restarts per conversation, across its workers.
    crashes: HashMap<ConversationId, CrashHistory>,
    /// Generations taken back from a previous front (for readiness at startup).
    adopted: HashSet<Generation>,
    /// When each user last started new conversations (worker starts), for
    /// `NEW_CONVERSATIONS_PER_MINUTE`; emptied by housekeeping.
    new_conversations: HashMap<String, VecDeque<Instant>>,
    /// No new conversations (existing ones go on).
    draining: bool,
    /// Several hosts (`CLUSTER`): a conversation without a worker here is placed first.
    cluster: bool,
    /// Conversations whose placement the shell is finding ([`Command::Place`]).
    placing: HashSet<ConversationId>,
    commands: Vec<Command>,
}

impl Core {
    /// A core whose ids start at `first_id` (the shell takes the wall clock, so a front that
    /// takes over its predecessor's workers never reuses their ids).
    pub fn new(limits: Limits, policy: CrashPolicy, first_id: u64) -> Core {
        Core {
            limits,
            policy,
            next_id: first_id.max(1),
            clients: HashMap::new(),
            sessions: HashMap::new(),
            workers: HashMap::new(),
            retiring: HashMap::new(),
            retired: WorkerStats::default(),
            crashes: HashMap::new(),
            adopted: HashSet::new(),
            new_conversations: HashMap::new(),
            draining: false,
            cluster: false,
            placing: HashSet::new(),
            commands: Vec::new(),
        }
    }

    /// A core of one node of several (`CLUSTER`): offers into a conversation that has no
    /// worker here wait for its placement ([`Command::Place`]).
    pub fn clustered(mut self) -> Core {
        self.cluster = true;
        self
    }

    /// The commands queued since the last call, in order.
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.commands)
    }

    /// A fresh id (sessions, generations, sockets share the sequence).
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub fn policy(&self) -> &CrashPolicy {
        &self.policy
    }

    /// `session`, if it is still its client's current session: a report about a session that
    /// has since ended, or been replaced, concerns nobody.
    pub(super) fn current(&mut self, session: SessionId) -> Option<(&mut Session, &mut Client)> {
        let s = self.sessions.get_mut(&session)?;
        let c = self
            .clients
            .get_mut(&s.who)
            .filter(|c| c.session == Some(session))?;
        Some((s, c))
    }

    /// Queues `out` for `who`'s socket, if it has one.
    fn send(&mut self, who: &Identity, out: Out) {
        if let Some(socket) = self.clients.get(who).and_then(|c| c.socket) {
            self.commands.push(Command::Socket(socket, out));
        }
    }

    /// Queues `msg` for the worker of this generation.
    fn tell_worker(&mut self, generation: Generation, msg: ToWorker) {
        self.commands
            .push(Command::Worker(generation, Control::Send(msg)));
    }

    fn count(&mut self, tally: Tally) {
        self.commands.push(Command::Count(tally));
    }

    /// Whether `generation` has members (sessions in the table).
    fn has_members(&self, generation: Generation) -> bool {
        self.sessions.values().any(|s| s.generation == generation)
    }

    /// Removes `session` from the table and from its client; the worker's idle clock starts
    /// when its last session goes. Tells the worker nothing (see [`Core::end_session`]).
    fn close_session(&mut self, session: SessionId, now: Instant) -> Option<Session> {
        let s = self.sessions.remove(&session)?;
        if let Some(c) = self.clients.get_mut(&s.who)
            && c.session == Some(session)
        {
            c.session = None;
        }
        let empty = !self.has_members(s.generation);
        if let Some(w) = self.workers.get_mut(&s.conversation)
            && w.generation == s.generation
            && empty
        {
            w.empty_since = Some(now);
        }
        Some(s)
    }

    /// Ends `who`'s current session, if any, and tells its worker (or the node that holds
    /// it) to let it go.
    fn end_session(&mut self, who: &Identity, now: Instant) {
        self.unlink(who, ToOwner::Leave);
        let Some(id) = self.clients.get(who).and_then(|c| c.session) else {
            return;
        };
        if let Some(s) = self.close_session(id, now)
            && self
                .workers
                .get(&s.conversation)
                .is_some_and(|w| w.generation == s.generation)
        {
            self.tell_worker(s.generation, ToWorker::Leave { session: id });
        }
    }

    /// Stops counting a conversation's worker as running and tells it to stop; its counters
    /// live on in `retiring` until it is reaped.
    fn retire(&mut self, conversation: &ConversationId) {
        if let Some(w) = self.workers.remove(conversation) {
            self.tell_worker(w.generation, ToWorker::Shutdown);
            self.retiring.insert(w.generation, w.stats);
            self.release(conversation);
        }
    }

    fn notify_if_drained(&mut self) {
        if self.draining && self.workers.is_empty() {
            self.commands.push(Command::Drained);
        }
    }
}
