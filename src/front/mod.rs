//! front: one per host. HTTP and WebSocket, identity, permissions, sessions, and the
//! supervisor of the conversation workers. Holds no media.
//!
//! | module | what it is |
//! |---|---|
//! | [`state`] | clients, their sessions, and which worker owns which conversation |
//! | [`http`] | the axum routes: `/connect`, `/join/{id}`, `/healthz`, `/metrics`, the demo page |
//! | [`session`] | one client's WebSocket signalling loop |
//! | [`permissions`] | the permission check, failing closed |
//! | [`bites`] | replays of dead workers' spools; front's NATS connection |
//! | [`supervisor`] | spawning, connecting and watching one worker process |
//! | [`metrics`] | Prometheus text for `/metrics` |
//! | [`procfs`] | CPU and memory of a process from `/proc` |

pub mod bites;
pub mod http;
pub mod metrics;
pub mod permissions;
pub mod procfs;
pub mod session;
pub mod state;
pub mod supervisor;
