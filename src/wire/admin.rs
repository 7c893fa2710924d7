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
