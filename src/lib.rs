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
//! | [`publish`] | bites to NATS: the publisher task and the durable spool | worker (front replays dead workers' spools) |
//! | [`front`] | front's core (the rules of sessions, joins and workers, sans I/O) and its async shell, HTTP routes, signalling sessions, permissions, supervisor, metrics, several hosts (`cluster`) | front |
//! | [`wire`] | what crosses a process boundary: IPC messages and framing, signalling frames, identity, typed ids, stats, what the fronts of a cluster relay to each other | both |
//! | [`config`] | settings from the environment / `.env`, validated at startup; every name, default and range in one table (`config::settings`) | front |
//! | [`telemetry`] | tracing setup | both |
//! | [`tools`] | the operator tools behind `ctl`, `bites` and `loadgen` (the last, with the test clients, under the feature `loadtools`) | their binaries, tests |
//!
//! Dependencies point one way: `front` and `worker` use `media` and `wire`; `media` uses
//! `wire` for ids; `wire` uses nothing of ours.

pub mod config;
pub mod front;
pub mod media;
pub mod publish;
pub mod telemetry;
pub mod tools;
pub mod wire;
pub mod worker;
