//! Several hosts behind one load balancer (`CLUSTER`, SPEC §7, README "Several hosts"),
//! through NATS and nothing else: no cluster protocol of our own, no second coordination
//! service.
//!
//! - **Placement**: JetStream key-value bucket `CLUSTER_BUCKET` maps conversation → node. The
//!   first front to need a conversation claims it for the least loaded live node with an
//!   atomic create ([`placement`]); every later write names the revision it replaces.
//! - **Liveness and load**: each node puts [`NodeInfo`] under its id in `{bucket}-nodes`
//!   every quarter of `CLUSTER_NODE_TTL_MS` (the bucket's age limit), and watches the others'
//!   ([`nodes::NodeTable`]). Silent past the TTL, or its key deleted when it stopped: dead.
//! - **Relay**: a client whose conversation another node holds keeps its WebSocket where it
//!   landed; its signalling goes to the owner and the owner's frames come back over NATS
//!   subjects per node ([`crate::wire::relay`]). The answer names the owner's media address,
//!   so media goes straight there. The owner takes the client as one of its own, on a socket
//!   that delivers back ([`crate::front::state::Route::Remote`]).
//! - **Joins**: a front tells the others of each join it took (`{bucket}.joins`), so a
//!   client's `POST /join` and its WebSocket may land on different hosts.
//! - **Failover**: a dead owner's relayed clients are told `reconnect` by their own (live)
//!   front; their next offers find the key naming a dead node and place the conversation
//!   anew. A node that finds its claim on a conversation it serves taken (it was cut off and
//!   counted dead) stops that worker, so its members follow the key: nothing stays on two
//!   nodes.
//!
//! Every write to NATS goes through this node's tasks in order: placements and releases one
//! after another ([`Job`]), relayed messages one after another ([`Outgoing`]), so a release
//! never overtakes the placement that follows it, nor a candidate its offer.

pub mod nodes;
mod placement;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::outbox::Out;
use super::tasks::Tasks;
use crate::config::Config;
use crate::config::cluster::ClusterConfig;
use crate::front::core::Placement;
use crate::wire::admin::{ClusterView, NodeRow};
use crate::wire::identity::Identity;
use crate::wire::ids::{ConversationId, NodeId};
use crate::wire::relay::{self as wire, Delivered, Delivery, Joined, NodeInfo, Relayed, ToOwner};
use nodes::NodeTable;
use placement::Claim;

/// How long a relayed offer waits for the owner's receipt before the owner counts as dead.
const OFFER_RECEIPT: Duration = Duration::from_secs(2);
/// How many refreshes go by between checks of this node's claims (every 10 s by default).
const CLAIM_CHECK_EVERY: u32 = 7;
/// Most conversations `ctl cluster` lists.
const VIEW_CONVERSATIONS: usize = 500;

/// What the cluster's tasks hand to front (front implements it; the tasks hold it as a
/// trait object, so this module does not depend on front's shell).
pub trait ClusterEvents: Send + Sync {
    /// Where `conversation` is held: the offers waiting for it go on.
    fn placed(&self, conversation: &ConversationId, placement: Placement);
    /// Signalling of a client on another node's front, for a conversation held here.
    fn relayed_in(&self, relayed: Relayed);
    /// A frame the owner of a conversation delivers for one of this front's sockets.
    fn delivered(&self, delivery: Delivery);
    /// `node` is dead.
    fn node_lost(&self, node: &NodeId);
    /// Another node holds a conversation this node's worker serves.
    fn claim_lost(&self, conversation: &ConversationId);
    /// Another front took this join (its permission checked there).
    fn joined_elsewhere(&self, who: &Identity, conversation: &ConversationId);
    /// What this node carries now.
    fn load(&self) -> Load;
}

/// What a node tells the cluster of itself, besides its name and addresses.
#[derive(Clone, Debug, Default)]
pub struct Load {
    pub workers: usize,
    pub peers: usize,
    pub draining: bool,
    /// At `MAX_WORKERS`.
    pub full: bool,
    /// The conversations its workers serve (its claims, checked now and then).
    pub serving: Vec<ConversationId>,
}

/// A client's socket on another node's front: where an owner delivers its frames.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RemoteSocket {
    pub node: NodeId,
    pub socket: u64,
}

/// The two buckets, made (or found) once NATS answers.
struct Buckets {
    conversations: kv::Store,
    nodes: kv::Store,
}

/// A placement or a release, carried out in order.
enum Job {
    Place {
        conversation: ConversationId,
        claim_here: bool,
    },
    Release(ConversationId),
}

/// A message for another node, published in order.
enum Outgoing {
    Relay { node: NodeId, relayed: Relayed },
    Deliver { to: RemoteSocket, frame: Delivered },
    Join(Joined),
}

pub struct Cluster {
    cfg: ClusterConfig,
    nats: async_nats::Client,
    js: jetstream::Context,
    buckets: tokio::sync::OnceCell<Buckets>,
    nodes: Mutex<NodeTable>,
    jobs: UnboundedSender<Job>,
    outgoing: UnboundedSender<Outgoing>,
    /// Taken by [`Cluster::start`].
    queues: Mutex<Option<(UnboundedReceiver<Job>, UnboundedReceiver<Outgoing>)>>,
    /// What this node tells the others about itself besides its load.
    media_ip: Option<String>,
    listen: String,
}

impl Cluster {
    /// This node's link to the cluster, `None` with `CLUSTER` off (and then nothing here
    /// touches NATS). The connection is made in the background: front starts while NATS is
    /// down, and placements fail with `unavailable` until it answers.
    pub async fn connect(cfg: &Config) -> anyhow::Result<Option<Arc<Cluster>>> {
        let Some(cluster) = cfg.cluster.clone() else {
            return Ok(None);
        };
        let nats = async_nats::ConnectOptions::new()
            .name(format!("beep-webrtc front {}", cluster.node))
            .retry_on_initial_connect()
            .connect(cfg.nats.as_str())
            .await?;
        let js = jetstream::new(nats.clone());
        let (jobs, jobs_rx) = unbounded_channel();
        let (outgoing, outgoing_rx) = unbounded_channel();
        let media_ip = cfg
            .media
            .public_ip
            .or(cfg.media.bind_ip)
            .map(|ip| ip.to_string());
        tracing::info!(node = %cluster.node, bucket = %cluster.bucket, "cluster: on");
        Ok(Some(Arc::new(Cluster {
            nodes: Mutex::new(NodeTable::new(cluster.node.clone(), cluster.node_ttl)),
            cfg: cluster,
            nats,
            js,
            buckets: tokio::sync::OnceCell::new(),
            jobs,
            outgoing,
            queues: Mutex::new(Some((jobs_rx, outgoing_rx))),
            media_ip,
            listen: cfg.listen.to_string(),
        })))
    }

    pub fn node(&self) -> &NodeId {
        &self.cfg.node
    }

    fn table(&self) -> std::sync::MutexGuard<'_, NodeTable> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The buckets, made on first use (and retried on the next while NATS does not answer).
    async fn buckets(&self) -> Result<&Buckets, String> {
        self.buckets
            .get_or_try_init(|| async {
                let conversations = self
                    .bucket(kv::Config {
                        bucket: self.cfg.bucket.clone(),
                        description: "beep-webrtc: conversation -> node".into(),
                        history: 1,
                        storage: jetstream::stream::StorageType::File,
                        ..Default::default()
                    })
                    .await?;
                let nodes = self
                    .bucket(kv::Config {
                        bucket: self.cfg.nodes_bucket(),
                        description: "beep-webrtc: node -> liveness and load".into(),
                        history: 1,
                        max_age: self.cfg.node_ttl,
                        storage: jetstream::stream::StorageType::Memory,
                        ..Default::default()
                    })
                    .await?;
                Ok(Buckets {
                    conversations,
                    nodes,
                })
            })
            .await
    }

    /// A bucket as configured, or as another node already made it. Made as the stream
    /// key-value is stored in (what `create_key_value` would make), because that call first
    /// asks for account information in a form nats-server 2.9 does not send.
    async fn bucket(&self, config: kv::Config) -> Result<kv::Store, String> {
        let name = config.bucket.clone();
        let stream = jetstream::stream::Config {
            name: format!("KV_{name}"),
            description: Some(config.description),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: config.history,
            max_age: config.max_age,
            storage: config.storage,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        };
        self.js
            .get_or_create_stream(stream)
            .await
            .map_err(|e| format!("NATS key-value bucket {name}: {e}"))?;
        self.js
            .get_key_value(&name)
            .await
            .map_err(|e| format!("NATS key-value bucket {name}: {e}"))
    }

    /// Finds where `conversation` is held; [`Front::placed`] hears it.
    pub fn place(&self, conversation: ConversationId, claim_here: bool) {
        let _ = self.jobs.send(Job::Place {
            conversation,
            claim_here,
        });
    }

    /// Gives up this node's claim on `conversation`.
    pub fn release(&self, conversation: ConversationId) {
        let _ = self.jobs.send(Job::Release(conversation));
    }

    /// Tells every other front of a join this one took.
    pub fn announce_join(&self, who: &Identity, conversation: &ConversationId) {
        let joined = Joined {
            front: self.cfg.node.clone(),
            who: who.clone(),
            conversation: conversation.clone(),
        };
        let _ = self.outgoing.send(Outgoing::Join(joined));
    }

    /// Relays a client's signalling to `node`, which holds its conversation.
    pub fn relay(&self, node: NodeId, socket: u64, who: Identity, msg: ToOwner) {
        let relayed = Relayed {
            front: self.cfg.node.clone(),
            socket,
            who,
            msg,
        };
        let _ = self.outgoing.send(Outgoing::Relay { node, relayed });
    }

    /// Delivers a frame to a client's socket on another node's front.
    pub fn deliver(&self, to: &RemoteSocket, out: Out) {
        let frame = match out {
            Out::Frame(f) => Delivered::Frame(f),
            Out::Fail(e) => Delivered::Fail(e),
        };
        let to = to.clone();
        let _ = self.outgoing.send(Outgoing::Deliver { to, frame });
    }

    /// Starts this node's cluster tasks, which report to `front`.
    pub fn start(self: &Arc<Self>, front: Arc<dyn ClusterEvents>, tasks: &Tasks) {
        let Some((jobs, outgoing)) = self.queues.lock().ok().and_then(|mut q| q.take()) else {
            return;
        };
        tasks.spawn(run_jobs(self.clone(), front.clone(), jobs));
        tasks.spawn(run_outgoing(
            self.clone(),
            front.clone(),
            outgoing,
            tasks.clone(),
        ));
        tasks.spawn(run_relayed_in(self.clone(), front.clone()));
        tasks.spawn(run_deliveries(self.clone(), front.clone()));
        tasks.spawn(run_joins(self.clone(), front.clone()));
        tasks.spawn(run_refresh(self.clone(), front.clone()));
        tasks.spawn(run_watch(self.clone(), front));
    }

    /// This node stops: its claims on `held` and its liveness key go, so the others place
    /// those conversations anew at once rather than after the TTL. Bounded: a NATS that
    /// does not answer leaves the keys to expire and to be taken over.
    pub async fn leave(&self, held: Vec<ConversationId>) {
        let work = async {
            let buckets = self.buckets().await?;
            for conversation in &held {
                placement::release(&buckets.conversations, &self.cfg.node, conversation).await;
            }
            buckets
                .nodes
                .delete(self.cfg.node.as_str())
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(3), work).await {
            Ok(Ok(())) => tracing::info!(node = %self.cfg.node, "cluster: left"),
            Ok(Err(e)) => tracing::warn!("cluster: leaving: {e}"),
            Err(_) => {
                tracing::warn!("cluster: leaving took too long; the keys expire by themselves")
            }
        }
    }

    /// The cluster as `ctl cluster` shows it: every node heard from, and which conversation
    /// each holds (the first [`VIEW_CONVERSATIONS`]).
    pub async fn view(&self) -> ClusterView {
        let now = Instant::now();
        let nodes = self
            .table()
            .view(now)
            .into_iter()
            .map(|v| NodeRow {
                node: v.info.node.to_string(),
                alive: v.alive,
                age_ms: v.age.as_millis() as u64,
                workers: v.info.workers,
                peers: v.info.peers,
                cpu: v.info.cpu,
                draining: v.info.draining,
                full: v.info.full,
                media_ip: v.info.media_ip,
                listen: v.info.listen,
            })
            .collect();
        let (conversations, error) = match self.conversations().await {
            Ok(c) => (c, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        ClusterView {
            me: self.cfg.node.to_string(),
            nodes,
            conversations,
            error,
        }
    }

    async fn conversations(&self) -> Result<Vec<(String, String)>, String> {
        let store = &self.buckets().await?.conversations;
        let mut keys = store.keys().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let Ok(key) = key else { break };
            if let Ok(Some(node)) = store.get(key.clone()).await {
                out.push((key, String::from_utf8_lossy(&node).into_owned()));
            }
            if out.len() >= VIEW_CONVERSATIONS {
                break;
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Placements and releases, one after another.
async fn run_jobs(
    cluster: Arc<Cluster>,
    front: Arc<dyn ClusterEvents>,
    mut jobs: UnboundedReceiver<Job>,
) {
    while let Some(job) = jobs.recv().await {
        let buckets = cluster.buckets().await;
        match job {
            Job::Place {
                conversation,
                claim_here,
            } => {
                let placement = match buckets {
                    Ok(b) => {
                        placement::resolve(
                            &b.conversations,
                            &cluster.nodes,
                            &conversation,
                            claim_here,
                        )
                        .await
                    }
                    Err(e) => Placement::Failed(crate::wire::signal::SignalError::new(
                        crate::wire::signal::ErrorCode::Unavailable,
                        format!("the cluster's placement is unreachable: {e}"),
                    )),
                };
                if let Placement::Failed(e) = &placement {
                    tracing::warn!(%conversation, "cluster: placement failed: {}", e.message);
                }
                front.placed(&conversation, placement);
            }
            Job::Release(conversation) => {
                if let Ok(b) = buckets {
                    placement::release(&b.conversations, &cluster.cfg.node, &conversation).await;
                }
            }
        }
    }
}

/// Relayed signalling and deliveries to other nodes, one after another. An offer goes as a
/// request: an owner that takes no relayed offer within [`OFFER_RECEIPT`] is dead.
async fn run_outgoing(
    cluster: Arc<Cluster>,
    front: Arc<dyn ClusterEvents>,
    mut outgoing: UnboundedReceiver<Outgoing>,
    tasks: Tasks,
) {
    let bucket = cluster.cfg.bucket.clone();
    while let Some(msg) = outgoing.recv().await {
        match msg {
            Outgoing::Relay { node, relayed } => {
                let subject = wire::owner_subject(&bucket, &node);
                let payload = wire::encode(&relayed).into();
                if !matches!(relayed.msg, ToOwner::Offer { .. }) {
                    let _ = cluster.nats.publish(subject, payload).await;
                    continue;
                }
                let inbox = cluster.nats.new_inbox();
                let receipt = cluster.nats.subscribe(inbox.clone()).await;
                let sent = cluster
                    .nats
                    .publish_with_reply(subject, inbox, payload)
                    .await;
                let (front, nats) = (front.clone(), cluster.nats.clone());
                tasks.spawn(async move {
                    let heard = match (receipt, sent) {
                        (Ok(mut receipt), Ok(())) => {
                            let first = tokio::time::timeout(OFFER_RECEIPT, receipt.next()).await;
                            let _ = receipt.unsubscribe().await;
                            // A "no responders" status comes back on the inbox too.
                            matches!(first, Ok(Some(m)) if m.status.is_none_or(|s| s.is_success()))
                        }
                        _ => nats.connection_state() != async_nats::connection::State::Connected,
                    };
                    if !heard {
                        tracing::warn!(%node, "cluster: the node holding a conversation took no relayed offer");
                        front.node_lost(&node);
                    }
                });
            }
            Outgoing::Join(joined) => {
                let subject = wire::joins_subject(&bucket);
                let _ = cluster
                    .nats
                    .publish(subject, wire::encode(&joined).into())
                    .await;
            }
            Outgoing::Deliver { to, frame } => {
                let subject = wire::front_subject(&bucket, &to.node);
                let delivery = Delivery {
                    socket: to.socket,
                    frame,
                };
                let _ = cluster
                    .nats
                    .publish(subject, wire::encode(&delivery).into())
                    .await;
            }
        }
    }
}

/// Signalling other fronts relay to this node, for the conversations it holds.
async fn run_relayed_in(cluster: Arc<Cluster>, front: Arc<dyn ClusterEvents>) {
    let subject = wire::owner_subject(&cluster.cfg.bucket, &cluster.cfg.node);
    let Ok(mut sub) = cluster.nats.subscribe(subject.clone()).await else {
        tracing::error!(%subject, "cluster: cannot subscribe; relayed clients will not reach this node");
        return;
    };
    while let Some(msg) = sub.next().await {
        if let Some(reply) = msg.reply.clone() {
            let _ = cluster.nats.publish(reply, Default::default()).await;
        }
        match wire::decode::<Relayed>(&msg.payload) {
            Ok(relayed) => front.relayed_in(relayed),
            Err(e) => tracing::warn!(%subject, "cluster: dropped a relayed message: {e}"),
        }
    }
}

/// Frames owners deliver for this front's sockets.
async fn run_deliveries(cluster: Arc<Cluster>, front: Arc<dyn ClusterEvents>) {
    let subject = wire::front_subject(&cluster.cfg.bucket, &cluster.cfg.node);
    let Ok(mut sub) = cluster.nats.subscribe(subject.clone()).await else {
        tracing::error!(%subject, "cluster: cannot subscribe; relayed clients will hear nothing");
        return;
    };
    while let Some(msg) = sub.next().await {
        match wire::decode::<Delivery>(&msg.payload) {
            Ok(d) => front.delivered(d),
            Err(e) => tracing::warn!(%subject, "cluster: dropped a delivery: {e}"),
        }
    }
}

/// Joins the other fronts took: the client's socket may be here.
async fn run_joins(cluster: Arc<Cluster>, front: Arc<dyn ClusterEvents>) {
    let subject = wire::joins_subject(&cluster.cfg.bucket);
    let Ok(mut sub) = cluster.nats.subscribe(subject.clone()).await else {
        tracing::error!(%subject, "cluster: cannot subscribe; joins taken elsewhere are not seen here");
        return;
    };
    while let Some(msg) = sub.next().await {
        match wire::decode::<Joined>(&msg.payload) {
            Ok(j) if j.front != cluster.cfg.node => front.joined_elsewhere(&j.who, &j.conversation),
            Ok(_) => {}
            Err(e) => tracing::warn!(%subject, "cluster: dropped a join: {e}"),
        }
    }
}

/// This node's liveness and load, every quarter of the TTL; the others' expiry; and now and
/// then a check of this node's claims on the conversations it serves.
async fn run_refresh(cluster: Arc<Cluster>, front: Arc<dyn ClusterEvents>) {
    let mut tick = tokio::time::interval(cluster.cfg.heartbeat());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cpu = CpuMeter::default();
    let mut n: u32 = 0;
    loop {
        tick.tick().await;
        n = n.wrapping_add(1);
        let load = front.load();
        let info = NodeInfo {
            node: cluster.cfg.node.clone(),
            workers: load.workers as u32,
            peers: load.peers as u32,
            cpu: cpu.busy(),
            draining: load.draining,
            full: load.full,
            media_ip: cluster.media_ip.clone(),
            listen: cluster.listen.clone(),
        };
        cluster.table().heard(info.clone(), Instant::now());
        let dead = cluster.table().expire(Instant::now());
        for node in dead {
            tracing::warn!(%node, "cluster: node silent past the TTL; counted dead");
            front.node_lost(&node);
        }
        let Ok(buckets) = cluster.buckets().await else {
            continue;
        };
        let value = serde_json::to_vec(&info).unwrap_or_default();
        if let Err(e) = buckets
            .nodes
            .put(cluster.cfg.node.as_str(), value.into())
            .await
        {
            tracing::warn!("cluster: cannot refresh this node's liveness: {e}");
        }
        if n.is_multiple_of(CLAIM_CHECK_EVERY) {
            for conversation in load.serving {
                match placement::check_claim(
                    &buckets.conversations,
                    &cluster.cfg.node,
                    &conversation,
                )
                .await
                {
                    Some(Claim::Lost(node)) => {
                        tracing::warn!(%conversation, holder = %node, "cluster: another node holds a conversation served here; stopping it here");
                        front.claim_lost(&conversation);
                    }
                    Some(Claim::Restored) => {
                        tracing::info!(%conversation, "cluster: restored the claim of a conversation served here");
                    }
                    Some(Claim::Held) | None => {}
                }
            }
        }
    }
}

/// The other nodes' refreshes and departures, from a watch on the nodes' bucket (started
/// again when NATS drops it).
async fn run_watch(cluster: Arc<Cluster>, front: Arc<dyn ClusterEvents>) {
    loop {
        let watch = match cluster.buckets().await {
            Ok(b) => b.nodes.watch_all().await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match watch {
            Ok(mut watch) => {
                while let Some(entry) = watch.next().await {
                    let Ok(entry) = entry else { break };
                    on_node_entry(&cluster, front.as_ref(), entry);
                }
            }
            Err(e) => tracing::warn!("cluster: cannot watch the nodes: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn on_node_entry(cluster: &Cluster, front: &dyn ClusterEvents, entry: kv::Entry) {
    let Ok(node) = NodeId::parse(&entry.key) else {
        return;
    };
    if node == cluster.cfg.node {
        return;
    }
    match entry.operation {
        kv::Operation::Put => match serde_json::from_slice::<NodeInfo>(&entry.value) {
            Ok(info) if info.node == node => cluster.table().heard(info, Instant::now()),
            Ok(_) => tracing::warn!(%node, "cluster: a node's key names another node; ignored"),
            Err(e) => tracing::warn!(%node, "cluster: unreadable node entry: {e}"),
        },
        kv::Operation::Delete | kv::Operation::Purge => {
            if cluster.table().gone(&node, Instant::now()) {
                tracing::info!(%node, "cluster: node left");
                front.node_lost(&node);
            }
        }
    }
}

/// The host's busy CPU between two readings of `/proc/stat`, 0 to 1.
#[derive(Default)]
struct CpuMeter {
    last: Option<(u64, u64)>,
}

impl CpuMeter {
    fn busy(&mut self) -> f32 {
        let Some((busy, total)) = read_cpu() else {
            return 0.0;
        };
        let share = match self.last.replace((busy, total)) {
            Some((b0, t0)) if total > t0 => (busy.saturating_sub(b0)) as f32 / (total - t0) as f32,
            _ => 0.0,
        };
        share.clamp(0.0, 1.0)
    }
}

/// (busy, total) jiffies of all CPUs: the first line of `/proc/stat`.
fn read_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle and iowait
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}
