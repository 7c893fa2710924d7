//! beep-webrtc: an audio SFU for Beep voice conversations.
//!
//! Browsers and apps connect over WebRTC; each speaker's Opus audio is forwarded to the other
//! members of the conversation on *speaker slots*. The product contract is `SPEC.md` in the
//! shared folder; the README says how to run, test and operate it.
//!
//! Processes (`src/bin/`): **front** (one per host: HTTP/WebSocket, identity, permissions,
//! sessions, and supervisor of the workers) and **worker** (one per active conversation:
//! its peer connections and forwarding). They talk over a Unix socket ([`ipc`]).
//!
//! Module map:
//!
//! | module | what it is |
//! |---|---|
//! | [`client`] | a webrtc-rs client of the `/connect` protocol (tests, loadgen) |
//! | [`loadgen`] | the load generator behind the `loadgen` binary: many clients, measured |
//! | [`config`] | settings from the environment / `.env`, validated at startup |
//! | [`identity`] | the `X-User-Claim` header and conversation ids |
//! | [`signal`] | the `type::payload` WebSocket framing and `error::` codes (pure) |
//! | [`permissions`] | the permission check, failing closed |
//! | [`front`] | front's state: clients, sessions, which worker owns which conversation |
//! | [`http`] | front's axum routes: `/connect`, `/join/{id}`, `/healthz`, `/metrics` |
//! | [`supervisor`] | spawning, connecting and watching one worker process |
//! | [`ipc`] | the versioned, length-prefixed postcard messages between front and worker |
//! | [`metrics`] | Prometheus text for `/metrics` |
//! | [`worker`] | the worker process's shell: IPC with front around the engine |
//! | [`engine`] | one task driving every peer connection (`rtc` sans-I/O) and the room |
//! | [`peer`] | building and answering one peer connection, with its UDP socket |
//! | [`sdp`] | the facts of an offer the slot plan needs (pure) |
//! | [`room`] | per-packet routing: selector + rewriters, packets in, forwards out (pure) |
//! | [`slots`] | speaker selection: K loudest others per listener, sticky (pure) |
//! | [`rewrite`] | one continuous RTP stream per slot across speaker switches (pure) |
//! | [`telemetry`] | tracing setup, with the `log` records of the webrtc crate bridged in |

pub mod client;
pub mod config;
pub mod engine;
pub mod front;
pub mod http;
pub mod identity;
pub mod ipc;
pub mod loadgen;
pub mod metrics;
pub mod peer;
pub mod permissions;
pub mod rewrite;
pub mod room;
pub mod sdp;
pub mod signal;
pub mod slots;
pub mod supervisor;
pub mod telemetry;
pub mod worker;
