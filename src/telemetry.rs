//! Logging: `tracing` to stderr with `RUST_LOG` (default `info`).
//!
//! The `rtc` crate logs through `log`; tracing-subscriber's `try_init` bridges those records
//! in, with the `log` max level following our filter, so rtc's per-packet `debug!`/`trace!`
//! calls cost nothing unless asked for. Colours only on a terminal: journald would store the
//! escape codes as text.

use std::io::IsTerminal;

/// Logging with `RUST_LOG`, else `info`.
pub fn init() {
    init_or("info");
}

/// Logging with `RUST_LOG`, else `default` (a tool whose stdout is its output logs less).
pub fn init_or(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
