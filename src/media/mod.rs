//! The media core: pure state machines in the str0m style. Packets and time go in, decisions
//! come out; nothing here owns a socket, a task or a clock, so every rule is unit-tested
//! with scripted inputs.
//!
//! | module | what it decides |
//! |---|---|
//! | [`sdp`] | the facts of an offer the slot plan needs |
//! | [`speech`] | how loud a packet is and whether it is speech (one rule for slots and bites) |
//! | [`audit`] | whether a member's claimed loudness is what its audio decodes to (libopus), and what to credit instead |
//! | [`selector`] | who each listener hears on its slots: the K loudest others, sticky |
//! | [`rewrite`] | one continuous RTP stream per slot across speaker switches |
//! | [`retransmit`] | the last packets of a slot stream, resent to a listener that negotiated NACK |
//! | [`red`] | RFC 2198 redundancy: each slot packet carries the one(s) before it, for listeners that negotiate it |
//! | [`room`] | per-packet routing: selector + rewriters + bite cutters, a packet in, forwards and bites out; who is in the room and who speaks ([`room::presence`]) |
//! | [`opus`] | facts of an Opus packet from its TOC byte (duration, validity), and gap fillers |
//! | [`bite`] | the bite cutter: one speaker's packets in, utterances out |
//! | [`ogg_opus`] | a cut bite remuxed into an Ogg Opus file (RFC 7845) |
//! | [`bucket`] | the token bucket behind every rate limit (member caps, `ice::` frames) |
//! | [`quality`] | a member's call quality, 1 to 5, from its reports and its stream (E-model) |

pub mod audit;
pub mod bite;
pub mod bucket;
pub mod ogg_opus;
pub mod opus;
pub mod quality;
pub mod red;
pub mod retransmit;
pub mod rewrite;
pub mod room;
pub mod sdp;
pub mod selector;
pub mod speech;
