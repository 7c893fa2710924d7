//! Logging: `tracing` with `RUST_LOG` (default `info`). The webrtc crate reports rejected
//! packets only through `log` records, so `log` is bridged in; without that, a sender that
//! drops every packet is invisible.

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_log::LogTracer::init();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
