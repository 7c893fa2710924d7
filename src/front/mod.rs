//! front: one per host. HTTP and WebSocket, identity, permissions, sessions, and the
//! supervisor of the conversation workers. Holds no media.
//!
//! | module | what it is |
//! |---|---|
//! | [`core`] | the rules of clients, sessions, joins and workers: a plain state machine, inputs and time in, commands out |
//! | [`state`] | `Front`, the thin shell around the core: its lock, the sockets' and workers' channels, permission checks |
//! | [`lifecycle`] | the shell's workers' side: supervisors' reports into the core, housekeeping, adoption, drain, shutdown |
//! | [`conversation`] | what front asks of a worker's supervisor, worker states, and the crash policy |
//! | [`admin`] | the admin socket `ctl` talks to |
//! | [`links`] | front's socket for workers: routes each `Hello` to its supervisor, or adopts |
//! | [`http`] | the axum routes: `/connect`, `/join/{id}`, `/healthz`, `/metrics`, the demo page |
//! | [`session`] | one client's WebSocket signalling loop |
//! | [`outbox`] | what front sends down one socket, through a bounded queue |
//! | [`permissions`] | the permission check, failing closed |
//! | `rates` | the sliding minute behind the join, offer and new-conversation rates |
//! | [`bites`] | replays of dead workers' spools; front's NATS connection |
//! | `demo` | development only (cargo feature `demo`): the demo page's bite list and `/bites/…` audio |
//! | [`cluster`] | several hosts: placement in NATS key-value, node liveness and load, signalling relayed to the node that holds a conversation |
//! | `relayed` | front's side of several hosts: clients relayed in, deliveries, lost nodes |
//! | [`supervisor`] | spawning, connecting and watching one worker process |
//! | [`metrics`] | `/metrics`: front's counters and the workers' totals, via prometheus-client |
//! | [`notify`] | systemd notifications (`READY=1`, `RELOADING=1`, `STOPPING=1`, watchdog); no-ops outside systemd |
//! | [`process`] | front's process from start to exit: startup, its tasks, signals, drain, re-exec |
//! | [`tasks`] | every task front spawns, and the one stop they honour at exit |
//! | [`procfs`] | CPU and memory of a process from `/proc` |

pub mod admin;
pub mod bites;
pub mod cluster;
pub mod conversation;
pub mod core;
#[cfg(feature = "demo")]
pub mod demo;
pub mod http;
pub mod lifecycle;
pub mod links;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod permissions;
pub mod process;
pub mod procfs;
mod rates;
mod relayed;
pub mod session;
pub mod state;
pub mod supervisor;
pub mod tasks;
