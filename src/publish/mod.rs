//! Bites on their way to NATS (SPEC §5): no completed bite is lost.
//!
//! | module | what it is |
//! |---|---|
//! | [`publisher`] | the publishing task a worker runs beside its engine; [`publisher::replay_dir`] for front |
//! | [`nats`] | publishing one bite's two messages with acks (JetStream) or a flush (core NATS) |
//! | [`spool`] | the durable on-disk spool: one fsynced file per bite, replayed in order |
//! | [`tool`] | the `bites` operator tool: subscribe and write each bite as an `.ogg` file |
//!
//! The media engine hands a bite over with a call that never blocks; the publisher task does
//! all the waiting, on NATS and on the disk.

mod counters;
pub mod nats;
pub mod publisher;
pub mod spool;
