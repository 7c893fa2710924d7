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

use crate::media::bite::CutterConfig;
use crate::publish::nats::PublisherSettings;
use crate::publish::publisher::{Publisher, PublisherHandle};
use crate::publish::spool::Spool;
use crate::wire::frame::{self, FrameError};
use crate::wire::ipc::{BiteConfig, MediaConfig, ToFront, ToWorker};
use crate::wire::socket::{self, PeerError};
use crate::wire::stats::BiteStats;
use engine::{BiteSink, Engine, Input};

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
    let (conversation, media, bites) =
        match frame::read_frame::<_, ToWorker>(&mut r, &mut buf).await? {
            ToWorker::Init {
                conversation,
                media,
                bites,
            } => (conversation, media, bites),
            other => return Err(WorkerError::NotInit(format!("{other:?}"))),
        };
    // Every log line of this process, spawned tasks included, names the conversation.
    let span = tracing::info_span!("worker", conversation = conversation.as_str());
    serve(conversation, media, bites, r, w)
        .instrument(span)
        .await;
    Ok(())
}

/// How long the publisher may take at exit to spool (and, NATS permitting, publish) what is
/// left; well inside the 5 s front waits before it kills a worker that was told to stop.
const PUBLISHER_DRAIN: Duration = Duration::from_secs(2);

/// How long a new worker waits for its conversation's spool, which front may be replaying
/// (a predecessor's leftovers); bites cut meanwhile wait in the publisher's queue.
const SPOOL_LOCK_WAIT: Duration = Duration::from_secs(120);

/// Starts the bite publisher on this conversation's spool.
fn start_publisher(
    conversation: &str,
    cfg: BiteConfig,
) -> (PublisherHandle, tokio::task::JoinHandle<BiteStats>) {
    let settings = PublisherSettings {
        nats_url: cfg.nats.clone(),
        bite_subject: cfg.bite_subject.clone(),
        store_subject: cfg.store_subject.clone(),
        client_name: Some(format!("beep-webrtc worker {conversation}")),
        drain_timeout: PUBLISHER_DRAIN,
        ..PublisherSettings::default()
    };
    Publisher::start_with(settings, move || {
        Spool::open_wait(&cfg.spool_dir, cfg.spool_max_bytes, SPOOL_LOCK_WAIT)
    })
}

async fn serve(
    conversation: String,
    media: MediaConfig,
    bites: Option<BiteConfig>,
    mut r: tokio::net::unix::OwnedReadHalf,
    mut w: tokio::net::unix::OwnedWriteHalf,
) {
    tracing::info!(pid = std::process::id(), "worker started");
    let cutter = bites.as_ref().map(|b| CutterConfig {
        silence: Duration::from_millis(b.silence_ms),
        max_len: Duration::from_millis(b.max_ms),
    });
    let (handle, publishing) = bites.map(|cfg| start_publisher(&conversation, cfg)).unzip();
    let sink = handle.map(|handle| BiteSink {
        conversation: conversation.clone(),
        handle,
    });

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

    let (reason, mut stats) = Engine::run(media, cutter, sink, to_front.clone(), from_front)
        .in_current_span()
        .await;
    tracing::info!("worker stopping: {reason}");
    reader.abort();
    // The engine and its publisher handle are gone: the publisher spools what is left.
    if let Some(task) = publishing {
        match tokio::time::timeout(PUBLISHER_DRAIN + Duration::from_millis(500), task).await {
            Ok(Ok(last)) => stats.bites = last,
            Ok(Err(e)) => tracing::error!("bite publisher: {e}"),
            Err(_) => tracing::error!("bite publisher did not finish in time"),
        }
    }
    // The last counters, so front's totals include everything this worker did.
    let _ = to_front.send(ToFront::Stats(stats));
    drop(to_front);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
}
