//! bites: the operator's tap on published bites: subscribes (core NATS, or a durable JetStream
//! consumer with `--stream`) and writes each bite as an `.ogg` file, one line per bite on
//! stdout. `bites --help` for usage; the logic is in `beep_webrtc::tools::bites`.

use anyhow::Context as _;
use beep_webrtc::tools::bites::{Args, run};
use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Logs (reconnects and the like) go to stderr; stdout is one line per bite.
    beep_webrtc::telemetry::init_or("warn");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut stdout = std::io::stdout();
    let received = runtime.block_on(run(&args, &mut stdout))?;
    eprintln!("{received} bites written under {}", args.out.display());
    Ok(())
}
