//! ctl: the operator's CLI over front's admin socket. `ctl --help` for usage.

use std::path::PathBuf;
use std::time::Duration;

use beep_webrtc::tools::ctl::{CtlError, ask, cluster_table, workers_table};
use beep_webrtc::wire::admin::{AdminRequest, AdminResponse};
use clap::{Parser, Subcommand};

/// Operate a running beep-webrtc front: list its workers, restart one conversation's worker,
/// drain the host.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Front's runtime directory (default: RUNTIME_DIR, else $XDG_RUNTIME_DIR/beep-webrtc,
    /// else /run/beep-webrtc; `.env` in the working directory is read like front does).
    #[arg(long, global = true)]
    runtime_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the workers: conversation, pid, state, members, uptime, restarts, CPU, RSS.
    Workers,
    /// Restart one conversation's worker (its clients reconnect and re-offer).
    Restart { conversation: String },
    /// Take no new conversations; front exits once the existing ones have ended.
    Drain {
        /// Return at once instead of waiting for front to exit.
        #[arg(long)]
        no_wait: bool,
    },
    /// Several hosts: the nodes (live, load, address) and which node holds each conversation.
    Cluster,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let _ = dotenvy::from_path(".env");
    let runtime_dir = args
        .runtime_dir
        .clone()
        .unwrap_or_else(|| beep_webrtc::config::runtime_dir(|k| std::env::var(k).ok()));
    let socket = runtime_dir.join(beep_webrtc::wire::admin::ADMIN_SOCKET);
    if let Err(e) = run(&args, &socket).await {
        eprintln!("ctl: {e}");
        std::process::exit(1);
    }
}

async fn run(args: &Args, socket: &std::path::Path) -> Result<(), CtlError> {
    let request = match &args.command {
        Command::Workers => AdminRequest::Workers,
        Command::Restart { conversation } => AdminRequest::Restart {
            conversation: conversation.clone(),
        },
        Command::Drain { .. } => AdminRequest::Drain,
        Command::Cluster => AdminRequest::Cluster,
    };
    let answer = ask(socket, &request).await?;
    if args.json {
        let json = match &answer {
            AdminResponse::Workers(rows) => serde_json::json!(rows),
            AdminResponse::Restarting { conversation, pid } => {
                serde_json::json!({"restarting": conversation, "pid": pid})
            }
            AdminResponse::Draining { conversations } => {
                serde_json::json!({"draining": true, "conversations": conversations})
            }
            AdminResponse::Cluster(view) => serde_json::json!(view),
            AdminResponse::Error { message } => serde_json::json!({"error": message}),
        };
        println!("{json}");
    } else {
        match &answer {
            AdminResponse::Workers(rows) => print!("{}", workers_table(rows)),
            AdminResponse::Restarting { conversation, pid } => println!(
                "restarting {conversation} (worker pid {}); its clients reconnect",
                pid.map_or("-".into(), |p| p.to_string())
            ),
            AdminResponse::Draining { conversations } => {
                println!("draining: no new conversations; {conversations} still going")
            }
            AdminResponse::Cluster(view) => print!("{}", cluster_table(view)),
            AdminResponse::Error { message } => println!("{message}"),
        }
    }
    if let Command::Drain { no_wait: false } = args.command {
        // Front exits once the last conversation has ended: wait for its socket to go.
        while ask(socket, &AdminRequest::Workers).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if !args.json {
            println!("front has exited");
        }
    }
    Ok(())
}
