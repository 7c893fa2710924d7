//! worker: one conversation's peer connections, spawned by front.
//! Usage: `worker --socket PATH [--conversation ID]` (the conversation comes in `Init`; the
//! argument only makes `ps` readable).

#[tokio::main(flavor = "current_thread")]
async fn main() {
    beep_webrtc::telemetry::init();
    let args: Vec<String> = std::env::args().collect();
    let Some(socket) = args
        .iter()
        .position(|a| a == "--socket")
        .and_then(|i| args.get(i + 1))
    else {
        eprintln!("usage: worker --socket PATH [--conversation ID] (started by front)");
        std::process::exit(2);
    };
    if let Err(e) = beep_webrtc::worker::run(std::path::Path::new(socket)).await {
        tracing::error!("worker failed: {e:#}");
        std::process::exit(1);
    }
}
