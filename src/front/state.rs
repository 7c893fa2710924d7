//! Front's state: clients, their sessions, and which worker owns which conversation.
//!
//! A *client* is one (userid, clientid) pair. It may have a signalling socket, a joined
//! conversation, an offer waiting for its join, and a *session* (a live peer connection in
//! the conversation's worker). Join and offer can come in either order; whichever comes second
//! sends the offer to the worker. All of this sits behind one `std::sync::Mutex` that is never
//! held across an `.await`: every operation is a short, synchronous state change, and I/O
//! (socket writes, worker messages) goes out through unbounded channels.
//!
//! Life of a session: offer dispatched → `Answer` from the worker → media flows. It ends when
//! the worker reports the peer connection `Closed`, when the client leaves (joins elsewhere,
//! re-offers, or drops its socket before the answer), or when the worker dies (the client gets
//! `event::{"type":"reconnect"}` and re-offers). A client that closes its socket after the
//! answer keeps its media.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;

use super::bites::BiteReplays;
use super::metrics::Metrics;
use super::permissions::{PermissionClient, Verdict};
use super::supervisor::{self, WorkerEvents, WorkerSpec};
use crate::config::Config;
use crate::wire::identity::Identity;
use crate::wire::ids::{Generation, SessionId};
use crate::wire::ipc::{CloseReason, ToFront, ToWorker};
use crate::wire::signal::{ErrorCode, SignalError};
use crate::wire::stats::WorkerStats;

/// What front sends down one signalling socket.
#[derive(Debug)]
pub enum Out {
    Text(String),
    /// Send `error::` and close the socket.
    Fail(SignalError),
}

pub type SocketTx = UnboundedSender<Out>;

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
}

impl JoinError {
    pub fn signal(&self) -> SignalError {
        match self {
            JoinError::Forbidden(m) => SignalError::new(
                ErrorCode::Forbidden,
                format!("not allowed in this conversation: {m}"),
            ),
            JoinError::Unavailable(m) => SignalError::new(ErrorCode::Unavailable, m.clone()),
        }
    }
}

struct Socket {
    id: u64,
    tx: SocketTx,
}

struct Live {
    id: SessionId,
    conversation: String,
    answered: bool,
}

#[derive(Default)]
struct Client {
    conversation: Option<String>,
    joined_at: Option<Instant>,
    socket: Option<Socket>,
    pending_offer: Option<String>,
    pending_ice: Vec<String>,
    session: Option<Live>,
    recent_offers: VecDeque<Instant>,
}

impl Client {
    fn send(&self, out: Out) {
        if let Some(s) = &self.socket {
            let _ = s.tx.send(out);
        }
    }

    /// Counts against the user's session limit.
    fn active(&self) -> bool {
        self.socket.is_some() || self.session.is_some()
    }
}

/// One conversation's worker, as front sees it.
pub struct Conversation {
    generation: Generation,
    tx: UnboundedSender<ToWorker>,
    sessions: HashMap<SessionId, Identity>,
    empty_since: Option<Instant>,
    pub pid: Option<u32>,
    pub started: Instant,
    pub stats: WorkerStats,
}

impl Conversation {
    /// Forgets a session; the idle clock starts when the last one goes.
    fn remove_session(&mut self, session: SessionId) {
        self.sessions.remove(&session);
        if self.sessions.is_empty() {
            self.empty_since = Some(Instant::now());
        }
    }
}

#[derive(Default)]
struct State {
    clients: HashMap<Identity, Client>,
    conversations: HashMap<String, Conversation>,
    /// Workers told to stop and not yet reaped: their last `Stats` still count.
    retiring: HashMap<Generation, WorkerStats>,
    /// Counters of every worker that has exited, so `/metrics` totals never go backwards.
    retired: WorkerStats,
}

impl State {
    /// Stops counting a conversation's worker as running; its counters live on in
    /// `retiring` until the worker is reaped.
    fn retire(&mut self, conv: Conversation) {
        let _ = conv.tx.send(ToWorker::Shutdown);
        self.retiring.insert(conv.generation, conv.stats);
    }
}

pub struct Front {
    pub cfg: Arc<Config>,
    pub metrics: Metrics,
    permissions: PermissionClient,
    state: Mutex<State>,
    ids: AtomicU64,
    spec: Arc<WorkerSpec>,
    /// One supervisor task per worker process not yet reaped. Locked after `state`, never
    /// the other way round.
    supervisors: Mutex<JoinSet<()>>,
    /// Shutting down: no new joins, offers or workers.
    draining: AtomicBool,
    /// Replays of dead workers' spools, and front's NATS connection; `None` with bites off.
    pub bites: Option<Arc<BiteReplays>>,
}

/// A row of `workers()`, for health and (later) `ctl`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerInfo {
    pub conversation: String,
    pub pid: Option<u32>,
    pub sessions: usize,
    pub uptime_s: f64,
    pub stats: WorkerStats,
}

impl Front {
    pub fn new(cfg: Config, bites: Option<Arc<BiteReplays>>) -> Result<Arc<Front>, reqwest::Error> {
        let permissions = PermissionClient::new(cfg.permissions.clone(), cfg.permissions_timeout)?;
        let cfg = Arc::new(cfg);
        let spec = Arc::new(WorkerSpec {
            bin: cfg.worker_bin.clone(),
            socket_dir: cfg.runtime_dir.join("workers"),
            media: cfg.media.clone(),
            bites: cfg.bite_config(),
        });
        Ok(Arc::new(Front {
            cfg,
            metrics: Metrics::default(),
            permissions,
            state: Mutex::new(State::default()),
            ids: AtomicU64::new(1),
            spec,
            supervisors: Mutex::new(JoinSet::new()),
            draining: AtomicBool::new(false),
            bites,
        }))
    }

    fn supervisors(&self) -> MutexGuard<'_, JoinSet<()>> {
        self.supervisors.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug we log elsewhere; the state itself is still
        // consistent enough to keep serving, which beats taking every conversation down.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_id(&self) -> u64 {
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

    /// Permission check, then join. Used by `POST /join` and `/connect?conversation=`.
    pub async fn authorize_and_join(
        self: &Arc<Self>,
        who: &Identity,
        conversation: &str,
    ) -> Result<(), JoinError> {
        if self.is_draining() {
            return Err(JoinError::Unavailable(
                "this server is shutting down".into(),
            ));
        }
        let t0 = Instant::now();
        let (verdict, took) = self.permissions.check(&who.userid, conversation).await;
        self.metrics.permission_latency.observe(took);
        match verdict {
            Verdict::Allowed => {}
            Verdict::Denied(m) => {
                tracing::info!(%who, conversation, "join denied: {m}");
                return Err(JoinError::Forbidden(m));
            }
            Verdict::Unavailable(m) => {
                tracing::warn!(%who, conversation, "join failed closed: {m}");
                return Err(JoinError::Unavailable(m));
            }
        }
        self.join(who, conversation);
        self.metrics.join_latency.observe(t0.elapsed());
        Ok(())
    }

    /// Moves `who` into `conversation` (permission already granted).
    pub fn join(self: &Arc<Self>, who: &Identity, conversation: &str) {
        let mut st = self.lock();
        let st = &mut *st;
        let client = st.clients.entry(who.clone()).or_default();
        if client.conversation.as_deref() != Some(conversation) {
            if client
                .session
                .as_ref()
                .is_some_and(|s| s.conversation != conversation)
            {
                end_session(&mut st.conversations, client);
                client.send(Out::Text(reconnect_event("conversation-changed")));
            }
            client.conversation = Some(conversation.to_string());
        }
        client.joined_at = Some(Instant::now());
        tracing::info!(%who, conversation, "joined");
        if let Some(sdp) = client.pending_offer.take() {
            self.dispatch(&mut st.conversations, who, client, sdp);
        }
    }

    /// An offer from the client's socket.
    pub fn offer(self: &Arc<Self>, who: &Identity, sdp: String) -> Result<OfferState, SignalError> {
        if self.is_draining() {
            return Err(SignalError::new(
                ErrorCode::Unavailable,
                "this server is shutting down",
            ));
        }
        let mut st = self.lock();
        let st = &mut *st;
        let client = st.clients.entry(who.clone()).or_default();
        let now = Instant::now();
        while client
            .recent_offers
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            client.recent_offers.pop_front();
        }
        if client.recent_offers.len() >= self.cfg.offers_per_minute as usize {
            return Err(SignalError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} offers in a minute",
                    self.cfg.offers_per_minute
                ),
            ));
        }
        client.recent_offers.push_back(now);
        if client.conversation.is_some() {
            self.dispatch(&mut st.conversations, who, client, sdp);
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
                    let _ = conv.tx.send(ToWorker::Ice {
                        session: live.id,
                        candidate,
                    });
                }
            }
            // The offer is still waiting for its join: keep a bounded number of candidates.
            None if client.pending_ice.len() < 64 => client.pending_ice.push(candidate),
            None => {}
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    fn dispatch(
        self: &Arc<Self>,
        convs: &mut HashMap<String, Conversation>,
        who: &Identity,
        client: &mut Client,
        sdp: String,
    ) {
        if self.is_draining() {
            client.send(Out::Fail(SignalError::new(
                ErrorCode::Unavailable,
                "this server is shutting down",
            )));
            return;
        }
        let Some(conversation) = client.conversation.clone() else {
            return;
        };
        // A re-offer replaces the previous peer connection.
        end_session(convs, client);
        let session = SessionId(self.next_id());
        let conv = convs.entry(conversation.clone()).or_insert_with(|| {
            let generation = Generation(self.next_id());
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            self.metrics.workers_spawned.fetch_add(1, Ordering::Relaxed);
            let events: Arc<dyn WorkerEvents> = self.clone();
            self.supervisors().spawn(supervisor::run_worker(
                self.spec.clone(),
                events,
                conversation.clone(),
                generation,
                rx,
            ));
            Conversation {
                generation,
                tx,
                sessions: HashMap::new(),
                empty_since: None,
                pid: None,
                started: Instant::now(),
                stats: WorkerStats::default(),
            }
        });
        conv.sessions.insert(session, who.clone());
        conv.empty_since = None;
        let _ = conv.tx.send(ToWorker::Offer {
            session,
            identity: who.clone(),
            sdp,
        });
        for candidate in client.pending_ice.drain(..) {
            let _ = conv.tx.send(ToWorker::Ice { session, candidate });
        }
        client.session = Some(Live {
            id: session,
            conversation,
            answered: false,
        });
        self.metrics.offers.fetch_add(1, Ordering::Relaxed);
    }

    /// Periodic housekeeping: stop workers idle for `worker_idle`, forget joins that no offer
    /// followed within `join_timeout`.
    pub fn housekeeping(&self, now: Instant) {
        let mut st = self.lock();
        let idle = self.cfg.worker_idle;
        let expired: Vec<String> = st
            .conversations
            .iter()
            .filter(|(_, c)| {
                c.sessions.is_empty()
                    && c.empty_since.is_some_and(|t| now.duration_since(t) >= idle)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            tracing::info!(conversation = name.as_str(), "worker idle, stopping it");
            if let Some(c) = st.conversations.remove(&name) {
                st.retire(c);
            }
        }
        let join_timeout = self.cfg.join_timeout;
        st.clients.retain(|_, c| {
            c.active()
                || c.joined_at
                    .is_some_and(|t| now.duration_since(t) < join_timeout)
                || c.recent_offers
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60))
        });
        drop(st);
        self.reap_supervisors();
    }

    /// Asks every worker to shut down and waits until each is reaped, at most `within`
    /// (each supervisor kills its worker if it does not exit in time, so this ends).
    /// Returns whether all were reaped in time.
    pub async fn shutdown_workers(&self, within: Duration) -> bool {
        self.draining.store(true, Ordering::Relaxed);
        {
            let mut st = self.lock();
            let convs: Vec<Conversation> = st.conversations.drain().map(|(_, c)| c).collect();
            for c in convs {
                st.retire(c);
            }
        }
        let mut tasks = std::mem::take(&mut *self.supervisors());
        tokio::time::timeout(within, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_ok()
    }

    /// Forgets the supervisor tasks that have ended.
    fn reap_supervisors(&self) {
        let mut tasks = self.supervisors();
        while tasks.try_join_next().is_some() {}
    }

    /// Whether `conversation` has a worker (running or starting).
    pub fn has_worker(&self, conversation: &str) -> bool {
        self.lock().conversations.contains_key(conversation)
    }

    /// Counters of the running workers and the total of those that exited (for `/metrics`).
    pub fn worker_stats(&self) -> (Vec<WorkerStats>, WorkerStats) {
        let st = self.lock();
        let mut running: Vec<WorkerStats> =
            st.conversations.values().map(|c| c.stats.clone()).collect();
        running.extend(st.retiring.values().cloned());
        (running, st.retired.clone())
    }

    pub fn workers(&self) -> Vec<WorkerInfo> {
        let st = self.lock();
        let mut v: Vec<_> = st
            .conversations
            .iter()
            .map(|(name, c)| WorkerInfo {
                conversation: name.clone(),
                pid: c.pid,
                sessions: c.sessions.len(),
                uptime_s: c.started.elapsed().as_secs_f64(),
                stats: c.stats.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.conversation.cmp(&b.conversation));
        v
    }

    pub fn client_count(&self) -> usize {
        self.lock().clients.values().filter(|c| c.active()).count()
    }
}

/// How the supervisors report to front: what their worker said, and when it is gone.
impl WorkerEvents for Front {
    fn ready(&self, conversation: &str, generation: Generation, pid: u32) {
        let mut st = self.lock();
        if let Some(c) = st
            .conversations
            .get_mut(conversation)
            .filter(|c| c.generation == generation)
        {
            c.pid = Some(pid);
        }
    }

    /// A message from a worker. Messages about sessions that have since ended are dropped.
    fn message(&self, conversation: &str, generation: Generation, msg: ToFront) {
        let mut st = self.lock();
        let st = &mut *st;
        if let (ToFront::Stats(s), Some(last)) = (&msg, st.retiring.get_mut(&generation)) {
            *last = s.clone();
            return;
        }
        let Some(conv) = st
            .conversations
            .get_mut(conversation)
            .filter(|c| c.generation == generation)
        else {
            return;
        };
        let session = match &msg {
            ToFront::Stats(s) => {
                conv.stats = s.clone();
                return;
            }
            ToFront::Ready { .. } => return,
            ToFront::Answer { session, .. }
            | ToFront::Event { session, .. }
            | ToFront::Rejected { session, .. }
            | ToFront::Closed { session, .. } => *session,
        };
        let Some(who) = conv.sessions.get(&session).cloned() else {
            return;
        };
        let client = st.clients.get_mut(&who);
        let current = client
            .as_ref()
            .is_some_and(|c| c.session.as_ref().is_some_and(|l| l.id == session));
        match msg {
            ToFront::Answer { sdp, .. } => {
                if let Some(c) = client.filter(|_| current) {
                    if let Some(l) = c.session.as_mut() {
                        l.answered = true;
                    }
                    c.send(Out::Text(format!("answer::{sdp}")));
                }
            }
            ToFront::Event { json, .. } => {
                if let Some(c) = client.filter(|_| current) {
                    c.send(Out::Text(format!("event::{json}")));
                }
            }
            ToFront::Rejected { code, message, .. } => {
                conv.remove_session(session);
                if let Some(c) = client.filter(|_| current) {
                    c.session = None;
                    c.send(Out::Fail(SignalError::new(code, message)));
                }
            }
            ToFront::Closed { reason, .. } => {
                tracing::info!(%who, conversation, %session, "session closed: {}", reason.as_str());
                conv.remove_session(session);
                if let Some(c) = client.filter(|_| current) {
                    c.session = None;
                    // Still signalling: the client can get its media back with a new offer.
                    // (One that closed its connection itself knows, and is not told.)
                    if reason != CloseReason::ByClient {
                        c.send(Out::Text(reconnect_event(reason.as_str())));
                    }
                }
            }
            ToFront::Stats(_) | ToFront::Ready { .. } => {}
        }
    }

    /// The worker process of `conversation` is gone. Its clients are told to reconnect.
    fn gone(&self, conversation: &str, generation: Generation, reason: &str) {
        let mut st = self.lock();
        let st = &mut *st;
        // Whatever its worker could not publish is published now, or retried later.
        if let Some(bites) = &self.bites {
            bites.replay(conversation);
        }
        if let Some(last) = st.retiring.remove(&generation) {
            st.retired.add_counters(&last);
            return;
        }
        if st
            .conversations
            .get(conversation)
            .is_none_or(|c| c.generation != generation)
        {
            return;
        }
        let Some(conv) = st.conversations.remove(conversation) else {
            return;
        };
        st.retired.add_counters(&conv.stats);
        let had_members = !conv.sessions.is_empty();
        if had_members {
            self.metrics.worker_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(conversation, "worker exited with members: {reason}");
        }
        for (session, who) in conv.sessions {
            if let Some(c) = st.clients.get_mut(&who)
                && c.session.as_ref().is_some_and(|l| l.id == session)
            {
                c.session = None;
                c.send(Out::Text(reconnect_event("worker-exited")));
                if c.socket.is_none() {
                    st.clients.remove(&who);
                }
            }
        }
    }
}

/// Forgets an offer still waiting for its join, and ends a session not yet answered.
fn drop_unanswered(convs: &mut HashMap<String, Conversation>, client: &mut Client) {
    client.pending_offer = None;
    client.pending_ice.clear();
    if client.session.as_ref().is_some_and(|s| !s.answered) {
        end_session(convs, client);
    }
}

fn end_session(convs: &mut HashMap<String, Conversation>, client: &mut Client) {
    if let Some(live) = client.session.take()
        && let Some(conv) = convs.get_mut(&live.conversation)
    {
        conv.remove_session(live.id);
        let _ = conv.tx.send(ToWorker::Leave { session: live.id });
    }
}

/// The `event::` frame that asks a client to offer again.
pub fn reconnect_event(reason: &str) -> String {
    format!(
        "event::{}",
        serde_json::json!({"type": "reconnect", "reason": reason})
    )
}
