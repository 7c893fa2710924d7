//! The worker process: one conversation's peer connections and forwarding.
//!
//! | module | what it is |
//! |---|---|
//! | this file | the process's shell: connect to front, take `Init`, run the engine with two IPC tasks beside it |
//! | [`engine`] | one task driving every peer connection (`rtc` sans-I/O) and the room |
//! | [`peer`] | building and answering one peer connection, with its UDP socket |
//!
//! One IPC task reads front's frames into the engine's channel, the other writes the
//! engine's messages to front.
//!
//! The worker exits on `Shutdown`, or when front's end of the socket closes (front died: a
//! worker never outlives its supervisor).

pub mod engine;
pub mod peer;

use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::wire::frame::{self, FrameError};
use crate::wire::ipc::{MediaConfig, ToFront, ToWorker};
use crate::wire::socket::{self, PeerError};
use engine::{Engine, Input};

/// Why a worker could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("connect to front's socket: {0}")]
    Connect(std::io::Error),
    #[error("front's socket: {0}")]
    Peer(#[from] PeerError),
    #[error("reading Init from front: {0}")]
    Init(#[from] FrameError),
    #[error("expected Init from front, got {0}")]
    NotInit(String),
}

/// Runs a worker connected to front at `socket`.
pub async fn run(socket: &Path) -> Result<(), WorkerError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(WorkerError::Connect)?;
    // Front is the only other party; make sure the socket is not someone else's.
    socket::check_peer(&stream, None)?;
    let (mut r, w) = stream.into_split();
    let mut buf = Vec::new();
    let (conversation, media) = match frame::read_frame::<_, ToWorker>(&mut r, &mut buf).await? {
        ToWorker::Init {
            conversation,
            media,
        } => (conversation, media),
        other => return Err(WorkerError::NotInit(format!("{other:?}"))),
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
            frame::write_frame(&mut w, &msg).await?;
        }
        Ok::<_, FrameError>(())
    });
    let _ = to_front.send(ToFront::Ready {
        pid: std::process::id(),
    });

    let (inputs, from_front) = mpsc::unbounded_channel::<Input>();
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        loop {
            match frame::read_frame::<_, ToWorker>(&mut r, &mut buf).await {
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
