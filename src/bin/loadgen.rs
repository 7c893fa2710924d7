//! loadgen: many webrtc-rs clients against beep-webrtc, measured. `loadgen --help` for usage;
//! the logic and the report format are in `beep_webrtc::loadgen`.

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match beep_webrtc::loadtools::loadgen::Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if std::env::var_os("RUST_LOG").is_some() {
        beep_webrtc::telemetry::init();
    }
    // Ctrl-C drops the run, whose guard stops a front started here.
    let result = tokio::select! {
        r = beep_webrtc::loadtools::loadgen::run(opts) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match result {
        Ok(report) => beep_webrtc::loadtools::loadgen::print_summary(&report),
        Err(e) => {
            eprintln!("loadgen failed: {e:#}");
            std::process::exit(1);
        }
    }
}
