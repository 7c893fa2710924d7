//! worker: one conversation's peer connections, spawned by front (not started by hand).

use std::path::PathBuf;

use beep_webrtc::wire::ids::Generation;
use beep_webrtc::worker::{WorkerArgs, run};
use clap::Parser;

/// One conversation's media worker. Front starts it; it connects back to front's socket.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Front's socket for workers.
    #[arg(long)]
    front_socket: PathBuf,
    /// The conversation this worker serves (also what `ps` shows).
    #[arg(long)]
    conversation: beep_webrtc::wire::ids::ConversationId,
    /// Which incarnation of the conversation's worker this is.
    #[arg(long)]
    generation: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    beep_webrtc::telemetry::init();
    let args = WorkerArgs {
        front_socket: args.front_socket,
        conversation: args.conversation,
        generation: Generation(args.generation),
    };
    if let Err(e) = run(args).await {
        tracing::error!("worker failed: {e}");
        std::process::exit(1);
    }
}
