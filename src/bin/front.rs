//! front: HTTP/WebSocket signalling and the supervisor of the conversation workers.

use std::time::{Duration, Instant};

use beep_webrtc::config::Config;
use beep_webrtc::front::bites::BiteReplays;
use beep_webrtc::front::http;
use beep_webrtc::front::state::Front;
use beep_webrtc::telemetry;
use beep_webrtc::wire::socket;
use tokio::signal::unix::{SignalKind, signal};

/// How long front waits at exit for its workers to be reaped.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() {
    let cfg = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    telemetry::init();
    if let Err(e) = run(cfg).await {
        tracing::error!("front failed: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    if cfg.dev_mode {
        tracing::warn!(
            "DEV_MODE is on: the demo page is served at / and ?userid=&clientid= is accepted as identity"
        );
        if cfg.permissions == beep_webrtc::config::Permissions::AllowAll {
            tracing::warn!("PERMISSIONS_HOST=allow-all: every user may join every conversation");
        }
    }
    socket::private_dir(&cfg.runtime_dir)
        .map_err(|e| anyhow::anyhow!("RUNTIME_DIR {}: {e}", cfg.runtime_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("LISTEN {}: {e}", cfg.listen))?;
    if cfg.bites.is_some() {
        let root = cfg.spool_root();
        socket::private_dir(&root)
            .map_err(|e| anyhow::anyhow!("STATE_DIR {}: {e}", cfg.state_dir.display()))?;
    }
    let bites = BiteReplays::start(&cfg).await;
    let front =
        Front::new(cfg, bites).map_err(|e| anyhow::anyhow!("permissions HTTP client: {e}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "front listening");
    if front.cfg.dev_mode {
        let host = if addr.ip().is_unspecified() {
            "localhost".to_string()
        } else {
            addr.ip().to_string()
        };
        tracing::info!(
            "demo page: open http://{host}:{}/ in two tabs and talk",
            addr.port()
        );
    }
    {
        let front = front.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                front.housekeeping(Instant::now());
            }
        });
    }
    if let Some(bites) = front.bites.clone() {
        // Spools left by workers that died (before a restart of front, or while NATS was
        // down): published once NATS takes them.
        let front = front.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                bites.replay_orphans(|c| front.has_worker(c));
            }
        });
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("shutting down");
    };
    axum::serve(listener, http::router(front.clone()))
        .with_graceful_shutdown(shutdown)
        .await?;
    // Every supervisor kills its worker if it has not exited 5 s after Shutdown, so this
    // normally ends well within the bound.
    if !front.shutdown_workers(SHUTDOWN_WAIT).await {
        tracing::warn!("workers still running after {SHUTDOWN_WAIT:?}; exiting anyway");
    }
    Ok(())
}
