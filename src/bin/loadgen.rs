//! loadgen: many webrtc-rs clients against beep-webrtc, measured. `loadgen --help` for usage;
//! the logic and the report format are in `beep_webrtc::tools::load::loadgen`.

use beep_webrtc::tools::load::loadgen::{self, Options};

#[tokio::main]
async fn main() {
    // Exits 0 after --help, 2 on a bad command line.
    let opts = Options::from_command_line();
    if std::env::var_os("RUST_LOG").is_some() {
        beep_webrtc::telemetry::init();
    }
    // Ctrl-C drops the run, whose guard stops a front started here.
    let result = tokio::select! {
        r = loadgen::run(opts) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match result {
        Ok(report) => loadgen::print_summary(&report),
        Err(e) => {
            eprintln!("loadgen failed: {e:#}");
            std::process::exit(1);
        }
    }
}
