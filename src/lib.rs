//! beep-webrtc: an audio SFU for Beep voice conversations.
//!
//! Browsers and apps connect over WebRTC; each speaker's Opus audio is forwarded to the other
//! members of the conversation on *speaker slots*. The product contract is `SPEC.md` in the
//! shared folder; the README says how to run, test and operate it.
//!
//! Two processes (`src/bin/`): **front**, one per host (HTTP/WebSocket, identity,
//! permissions, sessions, and the supervisor of the workers), and **worker**, one per active
//! conversation (its peer connections and forwarding). They talk over a Unix socket with
//! the versioned messages of [`wire`]. The folders say which process owns what:
//!
//! | module | what it is | used by |
//! |---|---|---|
//! | [`media`] | the pure core: SDP facts, speech, level audit, speaker selection, RTP rewriting, room routing | worker (front reads offers with it) |
//! | [`worker`] | the worker process: its shell, the `rtc` engine, peer construction | worker |
//! | [`publish`] | bites to NATS: the publisher task, the durable spool, the `bites` tool | worker (front replays dead workers' spools) |
//! | [`front`] | front's state, HTTP routes, signalling sessions, permissions, supervisor, metrics | front |
//! | [`wire`] | what crosses a process boundary: IPC messages and framing, signalling frames, identity, typed ids, stats | both |
//! | [`config`] | settings from the environment / `.env`, validated at startup; every name, default and range in one table (`config::settings`) | front |
//! | [`ctl`] | the operator CLI's client side: one request to front's admin socket, printed | `ctl` |
//! | [`telemetry`] | tracing setup | both |
//! | `loadtools` | the webrtc-rs test client, the light `rtc` load client and the load generator (feature `loadtools`) | tests, `loadgen` |
//!
//! Dependencies point one way: `front` and `worker` use `media` and `wire`; `media` uses
//! `wire` for ids; `wire` uses nothing of ours.

pub mod config;
pub mod ctl;
pub mod front;
#[cfg(feature = "loadtools")]
pub mod loadtools;
pub mod media;
pub mod publish;
pub mod telemetry;
pub mod wire;
pub mod worker;
