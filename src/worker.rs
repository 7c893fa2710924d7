//! The worker process: one conversation's media, in [`crate::engine`].
//!
//! This file is the process's shell: it connects to front's socket, takes `Init`, and runs the
//! engine with two IPC tasks beside it (one reads front's frames into the engine's channel,
//! one writes the engine's messages to front).
//!
//! The worker exits on `Shutdown`, or when front's end of the socket closes (front died: a
//! worker never outlives its supervisor).

use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::config::MediaConfig;
use crate::engine::{Engine, Input};
use crate::ipc::{self, ToFront, ToWorker};

/// Runs a worker connected to front at `socket`.
pub async fn run(socket: &Path) -> anyhow::Result<()> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    // Front is the only other party; make sure the socket is not someone else's.
    ipc::check_peer(&stream, None).map_err(anyhow::Error::msg)?;
    let (mut r, w) = stream.into_split();
    let mut buf = Vec::new();
    let (conversation, media) = match ipc::read_frame::<_, ToWorker>(&mut r, &mut buf).await? {
        ToWorker::Init {
            conversation,
            media,
        } => (conversation, media),
        other => anyhow::bail!("expected Init, got {other:?}"),
    };
    // Every log line of this process, spawned tasks included, names the conversation.
    let span = tracing::info_span!("worker", conversation = conversation.as_str());
    serve(media, r, w).instrument(span).await;
    Ok(())
}

async fn serve(
    media: MediaConfig,
    mut r: tokio::net::unix::OwnedReadHalf,
    mut w: tokio::net::unix::OwnedWriteHalf,
) {
    tracing::info!(pid = std::process::id(), "worker started");

    let (to_front, mut outbox) = mpsc::unbounded_channel::<ToFront>();
    let writer = tokio::spawn(async move {
        while let Some(msg) = outbox.recv().await {
            ipc::write_frame(&mut w, &msg).await?;
        }
        Ok::<_, ipc::IpcError>(())
    });
    let _ = to_front.send(ToFront::Ready {
        pid: std::process::id(),
    });

    let (inputs, from_front) = mpsc::unbounded_channel::<Input>();
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        loop {
            match ipc::read_frame::<_, ToWorker>(&mut r, &mut buf).await {
                Ok(msg) => {
                    if inputs.send(Input::Front(msg)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = inputs.send(Input::FrontGone(e.to_string()));
                    return;
                }
            }
        }
    });

    let reason = Engine::run(media, to_front, from_front)
        .in_current_span()
        .await;
    tracing::info!("worker stopping: {reason}");
    reader.abort();
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
}
