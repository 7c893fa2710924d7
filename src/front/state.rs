//! Front's state: clients, their sessions, and which worker owns which conversation.
//!
//! A *client* is one (userid, clientid) pair. It may have a signalling socket, a joined
//! conversation, an offer waiting for its join, and a *session* (a live peer connection in
//! the conversation's worker). Join and offer can come in either order; whichever comes second
//! sends the offer to the worker. All of this sits behind one `std::sync::Mutex` that is never
//! held across an `.await`: every operation is a short, synchronous state change, and I/O
//! goes out through channels that never block: worker messages unbounded, socket writes
//! through a bounded queue per socket whose overflow disconnects that client.
//!
//! Life of a session: offer dispatched → `Answer` from the worker → media flows. It ends when
//! the worker reports the peer connection `Closed`, when the client leaves (joins elsewhere,
//! re-offers, or drops its socket before the answer), or when the worker dies (the client gets
//! `event::{"type":"reconnect"}` and re-offers). A client that closes its socket after the
//! answer keeps its media, and can reconnect its socket later and go on: it gets its current
//! slots again. Workers' lives (supervision, crashes, adoption, drain) are in
//! [`super::lifecycle`], on the same state.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::bites::BiteReplays;
use super::conversation::{Conversation, CrashHistory, CrashPolicy};
use super::metrics::Metrics;
use super::permissions::{PermissionClient, Verdict};
use super::rates::over_rate;
use super::supervisor::{self, Pending, WorkerEvents, WorkerSpec};
use super::tasks::Tasks;
use crate::config::Config;
use crate::wire::identity::Identity;
use crate::wire::ids::{ConversationId, Generation, SessionId};
use crate::wire::ipc::ToWorker;
use crate::wire::signal::{ErrorCode, Event, ReconnectReason, SignalError, SlotInfo};
use crate::wire::stats::WorkerStats;

pub use super::outbox::{Out, SocketTx};

/// Outcome of an offer frame.
#[derive(Debug, PartialEq)]
pub enum OfferState {
    Dispatched,
    WaitingForJoin,
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

pub(super) struct Socket {
    id: u64,
    tx: SocketTx,
}

pub(super) struct Live {
    pub id: SessionId,
    pub conversation: ConversationId,
    pub answered: bool,
    /// When the offer went to the worker: an answer must follow within the offer deadline.
    pub dispatched_at: Instant,
}

#[derive(Default)]
pub(super) struct Client {
    pub conversation: Option<ConversationId>,
    pub joined_at: Option<Instant>,
    pub socket: Option<Socket>,
    pending_offer: Option<String>,
    pending_ice: Vec<String>,
    /// Bytes in `pending_ice`.
    pending_ice_bytes: usize,
    pub session: Option<Live>,
    pub recent_offers: VecDeque<Instant>,
    /// Its joins of the last minute (`JOINS_PER_MINUTE`): each costs a permission request.
    pub recent_joins: VecDeque<Instant>,
    /// The join's permission check was this moment's: the next offer needs no check of its own
    /// (every later one does, see [`super::session`]).
    pub join_covers_offer: bool,
    /// The last `slots` event of its session, for a socket that reconnects.
    pub last_slots: Option<Vec<SlotInfo>>,
}

impl Client {
    pub fn send(&self, out: Out) {
        if let Some(s) = &self.socket {
            let _ = s.tx.send(out);
        }
    }

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
        self.socket.is_some() || self.session.is_some()
    }
}

/// Most bytes of trickled candidates kept for an offer still waiting for its join (with at
/// most 64 of them): a candidate line is about 100 bytes.
const PENDING_ICE_BYTES: usize = 16 * 1024;

#[derive(Default)]
pub(super) struct State {
    pub clients: HashMap<Identity, Client>,
    pub conversations: HashMap<ConversationId, Conversation>,
    /// Workers told to stop and not yet reaped: their last `Stats` still count.
    pub retiring: HashMap<Generation, WorkerStats>,
    /// Counters of every worker that has exited, so `/metrics` totals never go backwards.
    pub retired: WorkerStats,
    /// Crashes and restarts per conversation, across its workers.
    pub crashes: HashMap<ConversationId, CrashHistory>,
    /// Generations taken back from a previous front (for readiness at startup).
    pub adopted: HashSet<Generation>,
    /// When each user last started new conversations (worker starts), for
    /// `NEW_CONVERSATIONS_PER_MINUTE`; emptied by housekeeping.
    pub new_conversations: HashMap<String, VecDeque<Instant>>,
}

impl State {
    /// Stops counting a conversation's worker as running; its counters live on in
    /// `retiring` until the worker is reaped.
    pub fn retire(&mut self, conv: Conversation) {
        conv.send(ToWorker::Shutdown);
        self.retiring.insert(conv.generation, conv.stats);
    }
}

/// `conversation`'s worker, if it is still generation `generation`: a report from a worker
/// that has since been replaced concerns nobody's session. (Takes the map, not the state, so
/// the caller may hold it beside `clients`.)
pub(super) fn current<'a>(
    conversations: &'a mut HashMap<ConversationId, Conversation>,
    conversation: &ConversationId,
    generation: Generation,
) -> Option<&'a mut Conversation> {
    conversations
        .get_mut(conversation)
        .filter(|c| c.generation == generation)
}

pub struct Front {
    pub cfg: Arc<Config>,
    pub metrics: Metrics,
    pub(super) permissions: PermissionClient,
    state: Mutex<State>,
    ids: AtomicU64,
    pub(super) spec: Arc<WorkerSpec>,
    /// Spawned workers waiting for their connection.
    pub pending: Arc<Pending>,
    pub(super) crash_policy: CrashPolicy,
    /// One supervisor task per worker process not yet reaped. Locked after `state`, never
    /// the other way round.
    supervisors: Mutex<JoinSet<()>>,
    /// Draining: no new conversations (existing ones go on); front exits once none is left.
    pub(super) draining: AtomicBool,
    /// Woken when draining has nothing left to wait for.
    pub drained: tokio::sync::Notify,
    /// Replays of dead workers' spools, and front's NATS connection; `None` with bites off.
    pub bites: Option<Arc<BiteReplays>>,
    /// Every task front spawns (but the supervisors), stopped together at exit.
    pub tasks: Tasks,
}

impl Front {
    pub fn new(
        cfg: Config,
        bites: Option<Arc<BiteReplays>>,
        tasks: Tasks,
    ) -> Result<Arc<Front>, reqwest::Error> {
        let permissions = PermissionClient::new(
            cfg.permissions.clone(),
            cfg.permissions_timeout,
            &cfg.permissions_ca,
        )?;
        let cfg = Arc::new(cfg);
        let spec = Arc::new(WorkerSpec {
            bin: cfg.worker_bin.clone(),
            front_socket: cfg.worker_socket(),
            pid_dir: cfg.pid_dir(),
            media: cfg.media.clone(),
            bites: cfg.bite_config(),
            orphan_grace: cfg.worker_orphan_grace,
            heartbeat: cfg.worker_heartbeat,
        });
        // Ids continue from the wall clock in microseconds, so those of a front that takes
        // over workers from its predecessor never collide with the predecessor's.
        let first_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64)
            .max(1);
        Ok(Arc::new(Front {
            cfg,
            metrics: Metrics::default(),
            permissions,
            state: Mutex::new(State::default()),
            ids: AtomicU64::new(first_id),
            spec,
            pending: Arc::new(Pending::default()),
            crash_policy: CrashPolicy::default(),
            supervisors: Mutex::new(JoinSet::new()),
            draining: AtomicBool::new(false),
            drained: tokio::sync::Notify::new(),
            bites,
            tasks,
        }))
    }

    pub(super) fn supervisors(&self) -> MutexGuard<'_, JoinSet<()>> {
        self.supervisors.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug we log elsewhere; the state itself is still
        // consistent enough to keep serving, which beats taking every conversation down.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a signalling socket for `who`. A second socket of the same client replaces
    /// the first (a reloaded tab); a new client beyond the user's limit is refused.
    pub fn attach_socket(&self, who: &Identity, tx: SocketTx) -> Result<u64, SignalError> {
        let mut st = self.lock();
        let others = st
            .clients
            .iter()
            .filter(|(id, c)| id.userid == who.userid && *id != who && c.active())
            .count();
        if others >= self.cfg.max_sessions_per_user {
            return Err(SignalError::new(
                ErrorCode::TooManySessions,
                format!(
                    "user {} already has {others} sessions (the limit is {})",
                    who.userid, self.cfg.max_sessions_per_user
                ),
            ));
        }
        let id = self.next_id();
        let st = &mut *st;
        let client = st.clients.entry(who.clone()).or_default();
        if let Some(old) = client.socket.replace(Socket { id, tx }) {
            // What the old socket left unfinished is not the new socket's to receive.
            drop_unanswered(&mut st.conversations, client);
            let _ = old.tx.send(Out::Fail(SignalError::new(
                ErrorCode::TooManySessions,
                "replaced by a newer connection of the same client",
            )));
        }
        // A client whose media went on while its socket was away (it dropped, or front was
        // restarted) picks up where it stands.
        if client.session.as_ref().is_some_and(|l| l.answered)
            && let Some(slots) = &client.last_slots
        {
            client.send(Out::event(Event::Slots {
                slots: slots.clone(),
            }));
        }
        Ok(id)
    }

    /// The socket closed. Media survives it once answered; anything unanswered is dropped.
    pub fn detach_socket(&self, who: &Identity, socket_id: u64) {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(client) = st.clients.get_mut(who) else {
            return;
        };
        if client.socket.as_ref().map(|s| s.id) != Some(socket_id) {
            return;
        }
        client.socket = None;
        drop_unanswered(&mut st.conversations, client);
        // The entry itself stays until housekeeping: it remembers the join and the offer
        // rate limit across a reconnect.
    }

    /// Asks the permissions service whether `who` may be in `conversation` (and records the
    /// latency): the check of a join, and of every offer into a joined conversation.
    pub async fn authorize(
        &self,
        who: &Identity,
        conversation: &ConversationId,
    ) -> Result<(), JoinError> {
        let (verdict, took) = self.permissions.check(&who.userid, conversation).await;
        self.metrics.permission_latency.observe(took);
        match verdict {
            Verdict::Allowed => Ok(()),
            Verdict::Denied(m) => {
                tracing::info!(%who, %conversation, "denied: {m}");
                Err(JoinError::Forbidden(m))
            }
            Verdict::Unavailable(m) => {
                tracing::warn!(%who, %conversation, "failed closed: {m}");
                Err(JoinError::Unavailable(m))
            }
        }
    }

    /// Permission check, then join. Used by `POST /join` and `/connect?conversation=`.
    pub async fn authorize_and_join(
        self: &Arc<Self>,
        who: &Identity,
        conversation: &ConversationId,
    ) -> Result<(), JoinError> {
        self.check_available(conversation)
            .map_err(|e| JoinError::Unavailable(e.message))?;
        self.check_join_rate(who)?;
        self.check_new_conversation_rate(who, conversation)?;
        let t0 = Instant::now();
        self.authorize(who, conversation)
            .await
            .map_err(|e| match e {
                JoinError::Unavailable(m) => {
                    JoinError::Unavailable(format!("cannot check permissions: {m}"))
                }
                e => e,
            })?;
        self.join(who, conversation);
        self.metrics.join_latency.observe(t0.elapsed());
        Ok(())
    }

    /// Moves `who` into `conversation` (permission already granted).
    pub fn join(self: &Arc<Self>, who: &Identity, conversation: &ConversationId) {
        let mut st = self.lock();
        let st = &mut *st;
        let client = st.clients.entry(who.clone()).or_default();
        if client.conversation.as_deref() != Some(conversation) {
            if client
                .session
                .as_ref()
                .is_some_and(|s| s.conversation != *conversation)
            {
                end_session(&mut st.conversations, client);
                client.send(Out::event(Event::Reconnect {
                    reason: ReconnectReason::ConversationChanged,
                }));
            }
            client.conversation = Some(conversation.clone());
        }
        client.joined_at = Some(Instant::now());
        tracing::info!(%who, %conversation, "joined");
        client.join_covers_offer = true;
        if let Some(sdp) = client.pending_offer.take() {
            client.join_covers_offer = false;
            self.dispatch(st, who, sdp);
        }
    }

    /// An offer from the client's socket.
    pub fn offer(self: &Arc<Self>, who: &Identity, sdp: String) -> Result<OfferState, SignalError> {
        let mut st = self.lock();
        let st = &mut *st;
        let client = st.clients.entry(who.clone()).or_default();
        let now = Instant::now();
        if let Some(e) = client.offer_rate_refusal(self.cfg.offers_per_minute, now) {
            return Err(e);
        }
        client.recent_offers.push_back(now);
        if client.conversation.is_some() {
            self.dispatch(st, who, sdp);
            Ok(OfferState::Dispatched)
        } else {
            client.pending_offer = Some(sdp);
            Ok(OfferState::WaitingForJoin)
        }
    }

    /// Called when the join deadline of an offer passes: true if it is still waiting (and
    /// now dropped).
    pub fn offer_expired(&self, who: &Identity) -> bool {
        let mut st = self.lock();
        match st.clients.get_mut(who) {
            Some(c) if c.pending_offer.is_some() => {
                c.pending_offer = None;
                c.pending_ice.clear();
                c.pending_ice_bytes = 0;
                true
            }
            _ => false,
        }
    }

    /// A trickled candidate from the client (None = end of candidates).
    pub fn ice(&self, who: &Identity, candidate: Option<String>) {
        let Some(candidate) = candidate else { return };
        let mut st = self.lock();
        let st = &mut *st;
        let Some(client) = st.clients.get_mut(who) else {
            return;
        };
        match &client.session {
            Some(live) => {
                if let Some(conv) = st.conversations.get(&live.conversation) {
                    conv.send(ToWorker::Ice {
                        session: live.id,
                        candidate,
                    });
                }
            }
            // The offer is still waiting for its join: keep a bounded number of candidates, and
            // bytes (a candidate may be as long as the frame limit).
            None if client.pending_ice.len() < 64
                && client.pending_ice_bytes + candidate.len() <= PENDING_ICE_BYTES =>
            {
                client.pending_ice_bytes += candidate.len();
                client.pending_ice.push(candidate);
            }
            None => {}
        }
    }

    /// Whether the permissions service answers (readiness).
    pub async fn permissions_reachable(&self) -> Result<(), String> {
        self.permissions.reachable().await
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether `conversation` may be joined or offered into now: not while front drains (for
    /// a conversation that has no worker yet), nor while it cools down from a crash loop.
    fn check_available(&self, conversation: &ConversationId) -> Result<(), SignalError> {
        let mut st = self.lock();
        unavailable(&mut st, self, conversation, Instant::now()).map_or(Ok(()), Err)
    }

    /// Refuses a join that would start one conversation too many for this user this minute.
    /// Refuses a join past `JOINS_PER_MINUTE` for this client: each join costs a request to
    /// the permissions service, which must not feel our callers' floods.
    fn check_join_rate(&self, who: &Identity) -> Result<(), JoinError> {
        let per_minute = self.cfg.joins_per_minute;
        let mut st = self.lock();
        let client = st.clients.entry(who.clone()).or_default();
        let now = Instant::now();
        if let Some(retry_after) = over_rate(&mut client.recent_joins, per_minute, now) {
            let message = format!("more than {per_minute} joins in a minute");
            tracing::info!(%who, "join refused: {message}");
            return Err(JoinError::RateLimited {
                message,
                retry_after,
            });
        }
        client.recent_joins.push_back(now);
        Ok(())
    }

    fn check_new_conversation_rate(
        &self,
        who: &Identity,
        conversation: &ConversationId,
    ) -> Result<(), JoinError> {
        let mut st = self.lock();
        match new_conversation_limited(&mut st, self, &who.userid, conversation, Instant::now()) {
            None => Ok(()),
            Some((message, retry_after)) => {
                tracing::info!(%who, %conversation, "join refused: {message}");
                Err(JoinError::RateLimited {
                    message,
                    retry_after,
                })
            }
        }
    }

    fn dispatch(self: &Arc<Self>, st: &mut State, who: &Identity, sdp: String) {
        let Some(client) = st.clients.get_mut(who) else {
            return;
        };
        let Some(conversation) = client.conversation.clone() else {
            return;
        };
        let now = Instant::now();
        // A re-offer replaces the previous peer connection.
        end_session(&mut st.conversations, client);
        if let Some(e) = unavailable(st, self, &conversation, now) {
            if let Some(client) = st.clients.get(who) {
                client.send(Out::Fail(e));
            }
            return;
        }
        if let Some((message, _)) =
            new_conversation_limited(st, self, &who.userid, &conversation, now)
        {
            if let Some(client) = st.clients.get(who) {
                client.send(Out::Fail(SignalError::new(ErrorCode::RateLimited, message)));
            }
            return;
        }
        let session = SessionId(self.next_id());
        if !st.conversations.contains_key(&conversation) {
            // A conversation this user starts (a restart after a crash is not a new one).
            if !st.crashes.contains_key(&conversation) {
                st.new_conversations
                    .entry(who.userid.clone())
                    .or_default()
                    .push_back(now);
            }
            let delay = st
                .crashes
                .get_mut(&conversation)
                .map_or(Duration::ZERO, |h| h.backoff(now, &self.crash_policy));
            let conv = self.spawn_worker(&conversation, delay, now);
            st.conversations.insert(conversation.clone(), conv);
        }
        let (Some(conv), Some(client)) = (
            st.conversations.get_mut(&conversation),
            st.clients.get_mut(who),
        ) else {
            return;
        };
        conv.sessions.insert(session, who.clone());
        conv.empty_since = None;
        conv.send(ToWorker::Offer {
            session,
            identity: who.clone(),
            sdp,
        });
        client.pending_ice_bytes = 0;
        for candidate in client.pending_ice.drain(..) {
            conv.send(ToWorker::Ice { session, candidate });
        }
        client.session = Some(Live {
            id: session,
            conversation,
            answered: false,
            dispatched_at: now,
        });
        client.last_slots = None;
        self.metrics.offers.inc();
    }

    /// Starts a worker for `conversation` (after `delay`) under a supervisor task.
    fn spawn_worker(
        self: &Arc<Self>,
        conversation: &ConversationId,
        delay: Duration,
        now: Instant,
    ) -> Conversation {
        let generation = Generation(self.next_id());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.metrics.workers_spawned.inc();
        let events: Arc<dyn WorkerEvents> = self.clone();
        self.supervisors().spawn(supervisor::run_spawned(
            self.spec.clone(),
            self.pending.clone(),
            events,
            conversation.clone(),
            generation,
            rx,
            delay,
        ));
        Conversation::new(generation, tx, now)
    }

    pub fn client_count(&self) -> usize {
        self.lock().clients.values().filter(|c| c.active()).count()
    }

    /// Sends `event` down the signalling socket of every client in `conversation`.
    #[cfg(feature = "demo")]
    pub fn send_to_conversation(&self, conversation: &ConversationId, event: &Event) {
        let st = self.lock();
        for c in st.clients.values() {
            if c.conversation.as_deref() == Some(conversation) {
                c.send(Out::event(event.clone()));
            }
        }
    }
}

/// Why `conversation` takes no join or offer now, if it does not.
fn unavailable(
    st: &mut State,
    front: &Front,
    conversation: &ConversationId,
    now: Instant,
) -> Option<SignalError> {
    if front.is_draining() && !st.conversations.contains_key(conversation) {
        return Some(SignalError::new(
            ErrorCode::Unavailable,
            "this server is draining and takes no new conversations; try again shortly",
        ));
    }
    // Worker processes, those still stopping included: MAX_WORKERS bounds the processes.
    let workers = st.conversations.len() + st.retiring.len();
    if !st.conversations.contains_key(conversation) && workers >= front.cfg.max_workers {
        return Some(SignalError::new(
            ErrorCode::Unavailable,
            format!(
                "this server runs as many conversations as it may ({workers}, MAX_WORKERS={}) and takes no new one; try again later",
                front.cfg.max_workers
            ),
        ));
    }
    let left = st.crashes.get(conversation)?.unavailable_for(now)?;
    Some(SignalError::new(
        ErrorCode::Unavailable,
        format!(
            "conversation {conversation} is unavailable: its worker crashed {} times within {} s; try again in {} s",
            front.crash_policy.loop_crashes,
            front.crash_policy.window.as_secs(),
            left.as_secs() + 1
        ),
    ))
}

/// Why `userid` may not start `conversation` now, and when it may: it has no worker yet
/// (a restart after a crash or `ctl restart` does not count) and the user has started
/// `NEW_CONVERSATIONS_PER_MINUTE` conversations within the last minute.
fn new_conversation_limited(
    st: &mut State,
    front: &Front,
    userid: &str,
    conversation: &ConversationId,
    now: Instant,
) -> Option<(String, Duration)> {
    if st.conversations.contains_key(conversation) || st.crashes.contains_key(conversation) {
        return None;
    }
    let recent = st.new_conversations.get_mut(userid)?;
    let limit = front.cfg.new_conversations_per_minute;
    let retry_after = over_rate(recent, limit, now)?;
    Some((
        format!(
            "user {userid} has started {} new conversations within a minute (the limit is {limit}, NEW_CONVERSATIONS_PER_MINUTE); try again in {} s",
            recent.len(),
            retry_after.as_secs() + 1
        ),
        retry_after,
    ))
}

/// Forgets an offer still waiting for its join, and ends a session not yet answered.
pub(super) fn drop_unanswered(
    convs: &mut HashMap<ConversationId, Conversation>,
    client: &mut Client,
) {
    client.pending_offer = None;
    client.pending_ice.clear();
    client.pending_ice_bytes = 0;
    if client.session.as_ref().is_some_and(|s| !s.answered) {
        end_session(convs, client);
    }
}

pub(super) fn end_session(convs: &mut HashMap<ConversationId, Conversation>, client: &mut Client) {
    if let Some(live) = client.session.take()
        && let Some(conv) = convs.get_mut(&live.conversation)
    {
        conv.remove_session(live.id, Instant::now());
        conv.send(ToWorker::Leave { session: live.id });
    }
}
