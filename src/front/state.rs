//! Front: the thin async shell around [`super::core::Core`], which holds the state and the
//! rules of clients, sessions, joins and workers. The shell owns what the core must not: the
//! sockets' outbound queues, the workers' control channels, the supervisor tasks, the
//! permission check it awaits, the clock and the metrics. Every operation locks one
//! `std::sync::Mutex` (never across an `.await`), calls the core with `Instant::now()`, and
//! carries out the commands the core queued, under the same lock and in order: socket writes
//! through each socket's bounded queue (whose overflow disconnects that client), worker
//! messages through unbounded channels, so nothing here blocks.
//!
//! This file is the client side (sockets, joins, offers, candidates); the workers' side
//! (their reports, housekeeping, adoption, drain) is in [`super::lifecycle`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;

use super::bites::BiteReplays;
use super::cluster::{Cluster, RemoteSocket};
use super::conversation::{Control, CrashPolicy};
use super::core::{Command, Core, Limits, Placement, Tally};
use super::metrics::Metrics;
use super::permissions::{PermissionClient, Verdict};
use super::supervisor::{self, Pending, WorkerEvents, WorkerSpec};
use super::tasks::Tasks;
use crate::config::Config;
use crate::wire::identity::Identity;
use crate::wire::ids::{ConversationId, Generation};
use crate::wire::signal::SignalError;

pub use super::core::{JoinError, OfferState};
pub use super::outbox::{Out, SocketTx};

/// Where the frames for one of the core's sockets go.
pub(super) enum Route {
    /// A WebSocket of this front: its queue.
    Local(SocketTx),
    /// Several hosts: a client's socket on another node's front, which relayed it here.
    Remote(RemoteSocket),
}

/// The core and the channels its commands go through: what the state lock guards.
pub(super) struct Shell {
    pub core: Core,
    /// Each attached socket's route, by the id the core knows it by.
    pub sockets: HashMap<u64, Route>,
    /// Several hosts: the core's id of each socket relayed in from another node, and whose.
    pub relayed_in: HashMap<RemoteSocket, (u64, Identity)>,
    /// Each supervised worker's control channel, until it is gone.
    pub links: HashMap<Generation, UnboundedSender<Control>>,
}

pub struct Front {
    pub cfg: Arc<Config>,
    pub metrics: Metrics,
    pub(super) permissions: PermissionClient,
    shell: Mutex<Shell>,
    pub(super) spec: Arc<WorkerSpec>,
    /// Spawned workers waiting for their connection.
    pub pending: Arc<Pending>,
    /// One supervisor task per worker process not yet reaped. Locked after the state, never
    /// the other way round.
    supervisors: Mutex<JoinSet<()>>,
    /// Woken when draining has nothing left to wait for.
    pub drained: tokio::sync::Notify,
    /// Replays of dead workers' spools, and front's NATS connection; `None` with bites off.
    pub bites: Option<Arc<BiteReplays>>,
    /// Itself, for the supervisors it starts (they report back to it).
    me: Weak<Front>,
    /// Every task front spawns (but the supervisors), stopped together at exit.
    pub tasks: Tasks,
    /// Several hosts: this node's link to the cluster; `None` with `CLUSTER` off.
    pub cluster: Option<Arc<Cluster>>,
}

impl Front {
    pub fn new(
        cfg: Config,
        bites: Option<Arc<BiteReplays>>,
        cluster: Option<Arc<Cluster>>,
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
        let mut core = Core::new(Limits::of(&cfg), CrashPolicy::default(), first_id);
        if cluster.is_some() {
            core = core.clustered();
        }
        Ok(Arc::new_cyclic(|me| Front {
            cfg,
            metrics: Metrics::default(),
            permissions,
            shell: Mutex::new(Shell {
                core,
                sockets: HashMap::new(),
                relayed_in: HashMap::new(),
                links: HashMap::new(),
            }),
            spec,
            pending: Arc::new(Pending::default()),
            supervisors: Mutex::new(JoinSet::new()),
            drained: tokio::sync::Notify::new(),
            bites,
            me: me.clone(),
            tasks,
            cluster,
        }))
    }

    pub(super) fn supervisors(&self) -> MutexGuard<'_, JoinSet<()>> {
        self.supervisors.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Shell> {
        // A panic while holding the lock is a bug we log elsewhere; the state itself is still
        // consistent enough to keep serving, which beats taking every conversation down.
        self.shell.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the core and carries out the commands it queued, under one lock.
    pub(super) fn with_core<R>(&self, f: impl FnOnce(&mut Core) -> R) -> R {
        let mut shell = self.lock();
        let r = f(&mut shell.core);
        self.execute(&mut shell);
        r
    }

    /// Carries out the core's commands, in order.
    pub(super) fn execute(&self, shell: &mut Shell) {
        // Until none is left: carrying one out may feed the core (a placement answered at
        // once), whose new commands follow in the same pass.
        loop {
            let commands = shell.core.take_commands();
            if commands.is_empty() {
                return;
            }
            self.execute_each(shell, commands);
        }
    }

    fn execute_each(&self, shell: &mut Shell, commands: Vec<Command>) {
        for command in commands {
            match command {
                Command::Socket(id, out) => match shell.sockets.get(&id) {
                    Some(Route::Local(tx)) => {
                        let _ = tx.send(out);
                    }
                    Some(Route::Remote(to)) => {
                        if let Some(cluster) = &self.cluster {
                            cluster.deliver(to, out);
                        }
                    }
                    None => {}
                },
                Command::Place {
                    conversation,
                    claim_here,
                } => match &self.cluster {
                    Some(cluster) => cluster.place(conversation, claim_here),
                    None => shell
                        .core
                        .placed(&conversation, Placement::Here, Instant::now()),
                },
                Command::Release(conversation) => {
                    if let Some(cluster) = &self.cluster {
                        cluster.release(conversation);
                    }
                }
                Command::Relay {
                    node,
                    socket,
                    who,
                    msg,
                } => {
                    if let Some(cluster) = &self.cluster {
                        cluster.relay(node, socket, who, msg);
                    }
                }
                Command::Worker(generation, control) => {
                    if let Some(tx) = shell.links.get(&generation) {
                        let _ = tx.send(control);
                    }
                }
                Command::Spawn {
                    conversation,
                    generation,
                    delay,
                } => self.spawn_worker(shell, conversation, generation, delay),
                Command::Count(tally) => self.count(tally),
                Command::Drained => self.drained.notify_one(),
            }
        }
    }

    fn count(&self, tally: Tally) {
        let m = &self.metrics;
        match tally {
            Tally::Offer => m.offers.inc(),
            Tally::RelayedOffer => m.relayed_offers.inc(),
            Tally::WorkerSpawned => m.workers_spawned.inc(),
            Tally::HeartbeatKill => m.heartbeat_kills.inc(),
            Tally::OfferTimeout => m.offer_timeouts.inc(),
            Tally::WorkerRestart => m.worker_restarts.inc(),
            Tally::WorkerFailure => m.worker_failures.inc(),
            Tally::CrashLoop => m.crash_loops.inc(),
        };
    }

    /// Starts a worker for `conversation` (after `delay`) under a supervisor task.
    fn spawn_worker(
        &self,
        shell: &mut Shell,
        conversation: ConversationId,
        generation: Generation,
        delay: std::time::Duration,
    ) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        shell.links.insert(generation, tx);
        let events: Arc<dyn WorkerEvents> = me;
        self.supervisors().spawn(supervisor::run_spawned(
            self.spec.clone(),
            self.pending.clone(),
            events,
            conversation,
            generation,
            rx,
            delay,
        ));
    }

    /// Registers a signalling socket for `who`. A second socket of the same client replaces
    /// the first (a reloaded tab); a new client beyond the user's limit is refused.
    pub fn attach_socket(&self, who: &Identity, tx: SocketTx) -> Result<u64, SignalError> {
        let mut shell = self.lock();
        let id = shell.core.next_id();
        shell.sockets.insert(id, Route::Local(tx));
        let attached = shell.core.attach_socket(who, id, Instant::now());
        self.execute(&mut shell);
        if attached.is_err() {
            shell.sockets.remove(&id);
        }
        attached.map(|()| id)
    }

    /// The socket closed. Media survives it once answered; anything unanswered is dropped.
    pub fn detach_socket(&self, who: &Identity, socket_id: u64) {
        let mut shell = self.lock();
        shell.core.detach_socket(who, socket_id, Instant::now());
        self.execute(&mut shell);
        shell.sockets.remove(&socket_id);
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

    /// The core's checks, the permission check, then join. Used by `POST /join` and
    /// `/connect?conversation=`.
    pub async fn authorize_and_join(
        &self,
        who: &Identity,
        conversation: &ConversationId,
    ) -> Result<(), JoinError> {
        self.with_core(|core| core.admit_join(who, conversation, Instant::now()))?;
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
        // Its socket may be on another node (a load balancer owes us no affinity).
        if let Some(cluster) = &self.cluster {
            cluster.announce_join(who, conversation);
        }
        Ok(())
    }

    /// Moves `who` into `conversation` (permission already granted).
    pub fn join(&self, who: &Identity, conversation: &ConversationId) {
        self.with_core(|core| core.join(who, conversation, Instant::now()));
    }

    /// An offer from the client's socket.
    pub fn offer(&self, who: &Identity, sdp: String) -> Result<OfferState, SignalError> {
        self.with_core(|core| core.offer(who, sdp, Instant::now()))
    }

    /// The offer rate of `who`, and the conversation whose permission its offer needs
    /// checked, if any (see [`Core::admit_offer`]).
    pub fn admit_offer(&self, who: &Identity) -> Result<Option<ConversationId>, SignalError> {
        self.with_core(|core| core.admit_offer(who, Instant::now()))
    }

    /// The permissions service refused `who` in `conversation`: its session there ends and
    /// its join is forgotten.
    pub fn forbidden(&self, who: &Identity, conversation: &ConversationId) {
        self.with_core(|core| core.forbidden(who, conversation, Instant::now()));
    }

    /// Called when the join deadline of an offer passes: true if it is still waiting (and
    /// now dropped).
    pub fn offer_expired(&self, who: &Identity) -> bool {
        self.with_core(|core| core.offer_expired(who, Instant::now()))
    }

    /// A trickled candidate from the client (None = end of candidates).
    pub fn ice(&self, who: &Identity, candidate: Option<String>) {
        self.with_core(|core| core.ice(who, candidate));
    }

    /// Whether the permissions service answers (readiness).
    pub async fn permissions_reachable(&self) -> Result<(), String> {
        self.permissions.reachable().await
    }

    pub fn is_draining(&self) -> bool {
        self.lock().core.is_draining()
    }

    /// The conversations this front's workers serve (with several hosts, its claims).
    pub fn serving(&self) -> Vec<ConversationId> {
        self.lock().core.serving()
    }

    pub fn client_count(&self) -> usize {
        self.lock().core.client_count()
    }

    /// Sends `event` down the signalling socket of every client in `conversation`.
    #[cfg(feature = "demo")]
    pub fn send_to_conversation(
        &self,
        conversation: &ConversationId,
        event: &crate::wire::signal::Event,
    ) {
        let shell = self.lock();
        for id in shell.core.sockets_in(conversation) {
            if let Some(Route::Local(tx)) = shell.sockets.get(&id) {
                let _ = tx.send(Out::event(event.clone()));
            }
        }
    }
}
