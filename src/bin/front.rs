//! front: HTTP/WebSocket signalling and the supervisor of the conversation workers.
//!
//! Signals: SIGTERM/SIGINT drain (no new conversations, up to `DRAIN_TIMEOUT_MS` for the
//! others to end), then stop every worker and exit, leaving nothing behind. SIGHUP
//! (`systemctl reload`) re-executes front's binary, possibly a new one, keeping the HTTP
//! listener; the workers keep their calls and come back to the new front. `ctl drain`
//! drains without a deadline and exits once the last conversation has ended.

use beep_webrtc::config::Config;
use beep_webrtc::front::process::{self, Exit};
use beep_webrtc::telemetry;

fn main() {
    // Taken before anything can replace the file: a reload re-executes whatever binary is at
    // this path then (an upgrade), not the deleted one still running.
    let exe = std::env::current_exe().ok();
    let cfg = match Config::load().and_then(Config::prepare) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    telemetry::init();
    process::raise_nofile_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(process::run(cfg)) {
        Ok(Exit::Done) => {}
        Ok(Exit::Reexec(fd)) => {
            let e = process::reexec(exe, fd);
            tracing::error!("re-exec failed, exiting: {e:#}");
            std::process::exit(1);
        }
        Err(e) => {
            tracing::error!("front failed: {e:#}");
            std::process::exit(1);
        }
    }
}
