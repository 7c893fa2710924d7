//! The operator's channel: what `ctl` asks front over the admin socket
//! (`RUNTIME_DIR/admin.sock`, 0600, same uid only) and what front answers. One request and
//! one answer per connection, in the same versioned frames as the worker channel
//! ([`super::frame`]), so a `ctl` from another build is told so instead of misread.

use serde::{Deserialize, Serialize};

/// The admin socket's file name in the runtime directory.
pub const ADMIN_SOCKET: &str = "admin.sock";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Every worker front supervises.
    Workers,
    /// Restart one conversation's worker: its clients are told to reconnect and re-offer.
    Restart { conversation: String },
    /// Take no new conversations; exit once the existing ones have ended.
    Drain,
    /// Several hosts: the nodes this one hears, their load, and which conversation each holds.
    Cluster,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AdminResponse {
    Workers(Vec<WorkerRow>),
    Restarting {
        conversation: String,
        pid: Option<u32>,
    },
    Draining {
        conversations: usize,
    },
    Cluster(ClusterView),
    /// The request could not be carried out; `message` says why, for people.
    Error {
        message: String,
    },
}

/// One worker as `ctl workers` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerRow {
    pub conversation: String,
    pub pid: Option<u32>,
    /// `starting`, `running` or `stopping`.
    pub state: String,
    /// Members (sessions) in the conversation now.
    pub members: usize,
    pub uptime_s: f64,
    /// Workers of this conversation replaced after a crash or a `ctl restart`.
    pub restarts: u64,
    /// CPU seconds (user + system) and resident memory, from `/proc`.
    pub cpu_s: f64,
    pub rss_kib: u64,
}

/// The cluster as one node sees it (`ctl cluster`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The node that answered.
    pub me: String,
    pub nodes: Vec<NodeRow>,
    /// (conversation, node holding it), sorted; the first 500.
    pub conversations: Vec<(String, String)>,
    /// Why the conversations could not be listed (NATS), if they could not.
    pub error: Option<String>,
}

/// One node as `ctl cluster` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRow {
    pub node: String,
    /// Heard from within the TTL.
    pub alive: bool,
    /// Since its last refresh was heard.
    pub age_ms: u64,
    pub workers: u32,
    pub peers: u32,
    /// The host's busy CPU, 0 to 1.
    pub cpu: f32,
    pub draining: bool,
    pub full: bool,
    pub media_ip: Option<String>,
    pub listen: String,
}
