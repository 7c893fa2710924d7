//! The operator tools, each the library half of a thin binary in `src/bin/`:
//!
//! | module | binary | what it does |
//! |---|---|---|
//! | [`ctl`] | `ctl` | one request to front's admin socket (workers, restart, drain), printed |
//! | [`bites`] | `bites` | taps the bites a host publishes and writes each as a playable file |
//! | `load` | `loadgen` | the webrtc-rs test client, the light `rtc` load client and the load generator (feature `loadtools`; the tests use its clients too) |

pub mod bites;
pub mod ctl;
#[cfg(feature = "loadtools")]
pub mod load;
