//! What crosses a process boundary, and nothing else: the IPC messages between front and a
//! worker and their framing, the client's signalling frames, the caller's identity, the bite
//! messages consumers read from NATS, what the fronts of a cluster relay to each other, and the typed ids and counters those carry. Both processes depend on this layer; it depends on
//! no other part of the crate, so a change here is a change of protocol and reads as one.

pub mod admin;
pub mod bite;
pub mod frame;
pub mod identity;
pub mod ids;
pub mod ipc;
pub mod relay;
pub mod signal;
pub mod socket;
pub mod stats;
