//! The media core: pure state machines in the str0m style. Packets and time go in, decisions
//! come out; nothing here owns a socket, a task or a clock, so every rule is unit-tested
//! with scripted inputs.
//!
//! | module | what it decides |
//! |---|---|
//! | [`sdp`] | the facts of an offer the slot plan needs |
//! | [`speech`] | how loud a packet is and whether it is speech (one rule for slots and bites) |
//! | [`selector`] | who each listener hears on its slots: the K loudest others, sticky |
//! | [`rewrite`] | one continuous RTP stream per slot across speaker switches |
//! | [`room`] | per-packet routing: selector + rewriters, a packet in, forwards out |

pub mod rewrite;
pub mod room;
pub mod sdp;
pub mod selector;
pub mod speech;
