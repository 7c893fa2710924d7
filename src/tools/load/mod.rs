//! Load and test tools, behind the `loadtools` cargo feature so that the server binaries link
//! neither the `webrtc` crate nor a WebSocket client: the webrtc-rs client of the `/connect`
//! protocol (integration tests, loadgen) and the load generator behind the `loadgen` binary.
//! `cargo test` turns the feature on by itself (the crate is its own dev-dependency).

pub mod client;
mod feedback;
mod frames;
pub mod light;
pub mod loadgen;
mod mic_clock;
pub mod probe;
pub mod red;
pub mod stream;
pub mod ticks;
mod ws;
