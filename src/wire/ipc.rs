//! The front ↔ worker message set (mediasoup's worker/channel split): small, versioned, and
//! the only thing the two processes say to each other. Framing is in [`super::frame`].
//!
//! The worker connects to front's socket and speaks first, on every connection, with
//! [`ToFront::Hello`]. A worker front has just spawned says so (`adopted: None`) and gets its
//! [`ToWorker::Init`]; a worker that lost its front (a crash, or a re-exec on reload) and
//! found a new one brings what the new front must know to take it back: its sessions and its
//! counters. Its peer connections never stopped.
//!
//! Bump [`PROTOCOL_VERSION`] whenever a message changes shape: a worker from another build is
//! refused at its first frame instead of being misread.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::identity::Identity;
use super::ids::{ConversationId, Generation, SessionId};
use super::signal::{ErrorCode, Event, ReconnectReason};
use super::stats::WorkerStats;

pub const PROTOCOL_VERSION: u16 = 11;

/// What a worker needs to run its peer connections. Front sends it in `Init` rather than
/// letting the worker re-read the environment, so the one process that validated the
/// configuration is the one that decides it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MediaConfig {
    pub bind_ip: Option<IpAddr>,
    pub ports: (u16, u16),
    /// TCP ports for the ICE-TCP fallback (`None`: no TCP candidate).
    pub tcp_ports: Option<(u16, u16)>,
    pub public_ip: Option<IpAddr>,
    pub max_slots: usize,
    /// ICE consent: no traffic for this long → disconnected.
    pub ice_disconnected_ms: u64,
    /// Disconnected for this much longer → failed, and the session ends.
    pub ice_failed_ms: u64,
    /// Per-member caps before the speaker selection: RTP packets and payload bytes per
    /// second (0 = no cap). Over them is dropped and counted.
    pub member_packets_per_s: u32,
    pub member_bytes_per_s: u32,
    /// A worker none of whose peer connections has reached `connected` this long after it
    /// started stops (0 = never).
    pub first_connect_ms: u64,
    /// The worker's UDP port's kernel buffers, in bytes (0 = the kernel's default). Above
    /// `net.core.rmem_max`/`wmem_max` they take effect only with `CAP_NET_ADMIN`.
    pub socket_recv_buffer: u32,
    pub socket_send_buffer: u32,
    /// How many threads one packet's copies to a big room's listeners are written and sent
    /// from (0: one per core, at most 4; 1: the engine's thread only).
    pub fanout_threads: u32,
    /// How many earlier packets each slot packet repeats toward a listener that negotiated
    /// RED (RFC 2198); 0: RED is not offered back.
    pub red_distance: u8,
}

#[cfg(test)]
impl MediaConfig {
    /// The worker's unit tests' settings: one address, no member caps, no ICE-TCP, the
    /// kernel's socket buffers.
    pub(crate) fn for_tests(bind_ip: &str, ports: (u16, u16)) -> MediaConfig {
        MediaConfig {
            bind_ip: bind_ip.parse().ok(),
            ports,
            tcp_ports: None,
            public_ip: None,
            max_slots: 3,
            ice_disconnected_ms: 5_000,
            ice_failed_ms: 15_000,
            member_packets_per_s: 0,
            member_bytes_per_s: 0,
            first_connect_ms: 0,
            socket_recv_buffer: 0,
            socket_send_buffer: 0,
            fanout_threads: 1,
            red_distance: 1,
        }
    }
}

/// 1 MiB: at a worker's usual inbound rate (speakers, and RTCP and consent checks from
/// every listener: ~1 000 datagrams/s in a room of 500) about a second of datagrams, enough to
/// ride out a stall of the worker's CPU; more would only turn loss at saturation into
/// seconds of delay (docs/BENCHMARKS.md, "Delivery under a busy machine").
pub const fn default_socket_buffer() -> u32 {
    1 << 20
}

pub const fn default_member_packets_per_s() -> u32 {
    120
}

pub const fn default_member_bytes_per_s() -> u32 {
    64 * 1024
}

pub const fn default_first_connect_ms() -> u64 {
    10_000
}

/// How a worker cuts and publishes bites (absent when bites are off).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BiteConfig {
    pub nats: String,
    pub bite_subject: String,
    pub store_subject: String,
    /// This conversation's spool (`STATE_DIR/spool/<conversation>`).
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    /// Silence that closes a bite.
    pub silence_ms: u64,
    /// Longest bite; longer speech continues in the next one.
    pub max_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Answer to a fresh worker's `Hello`: how to run media and bites. (The conversation is
    /// the worker's from its command line and its `Hello`.)
    Init {
        media: MediaConfig,
        bites: Option<BiteConfig>,
        /// How long the worker keeps its conversation going without a front, waiting for one
        /// to come back, before it stops by itself.
        orphan_grace_ms: u64,
    },
    /// Build a peer connection for this offer and answer it.
    Offer {
        session: SessionId,
        identity: Identity,
        sdp: String,
    },
    /// A trickled remote candidate, JSON `RTCIceCandidateInit`.
    Ice {
        session: SessionId,
        candidate: String,
    },
    /// The session left the conversation: close its peer connection.
    Leave { session: SessionId },
    /// Close everything and exit.
    Shutdown,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToFront {
    /// The first message on every connection.
    Hello {
        conversation: ConversationId,
        generation: Generation,
        pid: u32,
        /// `None` from a worker front just spawned; what a new front takes over otherwise.
        adopted: Option<Adoption>,
    },
    /// `Init` is applied and the worker serves; sent once, after `Init`.
    Ready {
        pid: u32,
    },
    Answer {
        session: SessionId,
        sdp: String,
    },
    /// An event for the client (`slots`, `members`, `speakers`, `quality`); front writes its
    /// `event::` frame.
    Event {
        session: SessionId,
        event: Event,
    },
    /// The offer could not be answered.
    Rejected {
        session: SessionId,
        code: ErrorCode,
        message: String,
    },
    /// The peer connection ended.
    Closed {
        session: SessionId,
        reason: CloseReason,
    },
    /// Counters for metrics and `ctl`, sent every few seconds and once more before exiting.
    Stats(WorkerStats),
}

/// What a worker that outlived its front tells the new one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Adoption {
    /// Its live sessions and whose they are.
    pub sessions: Vec<(SessionId, Identity)>,
    /// How long it has run.
    pub uptime_ms: u64,
    /// Its counters so far.
    pub stats: WorkerStats,
}

/// Why a peer connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseReason {
    /// The client closed it itself (DTLS close_notify): it knows, and is not told.
    ByClient,
    /// ICE consent or DTLS failed: the client is told to reconnect.
    Failed,
    /// The connection reports itself closed for another reason.
    Closed,
    /// Handling the connection failed inside the worker (a panic, contained to this session).
    Error,
}

impl CloseReason {
    /// Why the client is asked to offer again; `None` when it closed the connection itself.
    pub fn reconnect(self) -> Option<ReconnectReason> {
        match self {
            CloseReason::ByClient => None,
            CloseReason::Failed => Some(ReconnectReason::PeerConnectionFailed),
            CloseReason::Closed => Some(ReconnectReason::PeerConnectionClosed),
            CloseReason::Error => Some(ReconnectReason::PeerConnectionError),
        }
    }

    /// In words, for the log: the reason the client is given, if it is given one.
    pub fn as_str(self) -> &'static str {
        self.reconnect()
            .map_or("closed-by-client", ReconnectReason::as_str)
    }
}
