//! The worker process: one conversation's peer connections and forwarding.
//!
//! | module | what it is |
//! |---|---|
//! | this file | the process's shell: connect to front, take `Init`, run the engine with two IPC tasks beside it |
//! | [`engine`] | one task driving every peer connection (`rtc` sans-I/O) and the room |
//! | [`peer`] | building and answering one peer connection, with its UDP socket |
//! | [`feedback`] | our link in each connection's interceptor chain: the RTCP the engine acts on |
//!
//! The worker connects to front's socket and speaks first (`Hello`). Its link to front is one
//! task ([`link`]): a reader feeds front's frames to the engine, and the engine's messages are
//! written back. When front goes away (a crash, or a re-exec on `systemctl reload`), the
//! conversation goes on: the engine keeps every peer connection, the link keeps knocking on
//! front's socket, and a new front that answers gets a `Hello` with the sessions to take
//! back. A worker whose front does not come back within the grace period it was given stops
//! by itself, its bites spooled for front to publish.
//!
//! The worker exits on `Shutdown`, or when its front has been gone longer than that grace
//! period. Front is gone when its end of the socket closes or a write to it fails; a message
//! too large for the channel is not a failure of the channel: it costs only its session
//! ([`refuse_too_large`]).

pub mod engine;
pub mod feedback;
pub mod peer;
pub mod timer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::media::bite::CutterConfig;
use crate::publish::nats::PublisherSettings;
use crate::publish::publisher::{Publisher, PublisherHandle};
use crate::publish::spool::Spool;
use crate::wire::frame::{self, FrameError};
use crate::wire::ids::{ConversationId, Generation};
use crate::wire::ipc::{BiteConfig, ToFront, ToWorker};
use crate::wire::socket::{self, PeerError};
use crate::wire::stats::BiteStats;
use engine::{BiteSink, Engine, EngineSettings, Input};

/// Who this worker is, from its command line (front spawned it with these).
#[derive(Clone, Debug)]
pub struct WorkerArgs {
    /// Front's socket for workers (`RUNTIME_DIR/front.sock`).
    pub front_socket: PathBuf,
    pub conversation: ConversationId,
    pub generation: Generation,
}

/// Why a worker could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("connect to front's socket {0}: {1}")]
    Connect(PathBuf, std::io::Error),
    #[error("front's socket: {0}")]
    Peer(#[from] PeerError),
    #[error("talking to front: {0}")]
    Frame(#[from] FrameError),
    #[error("expected Init from front, got {0}")]
    NotInit(String),
    #[error("front sent no Init within {0:?}")]
    InitTimeout(Duration),
}

/// How long a new worker tries to reach front, and waits for its `Init`.
const START_WAIT: Duration = Duration::from_secs(10);
/// How often an orphaned worker knocks on front's socket.
const RECONNECT_EVERY: Duration = Duration::from_millis(100);

/// Connects to front's socket, checking that the other end is our own user.
async fn connect(path: &Path) -> Result<tokio::net::UnixStream, WorkerError> {
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| WorkerError::Connect(path.to_path_buf(), e))?;
    socket::check_peer(&stream, None)?;
    Ok(stream)
}

/// Runs the worker front spawned with `args`.
pub async fn run(args: WorkerArgs) -> Result<(), WorkerError> {
    let deadline = tokio::time::Instant::now() + START_WAIT;
    let stream = loop {
        match connect(&args.front_socket).await {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(RECONNECT_EVERY).await,
        }
    };
    let (mut r, mut w) = stream.into_split();
    let hello = ToFront::Hello {
        conversation: args.conversation.clone(),
        generation: args.generation,
        pid: std::process::id(),
        adopted: None,
    };
    frame::write_frame(&mut w, &hello).await?;
    let mut buf = Vec::new();
    let init = tokio::time::timeout(
        START_WAIT,
        frame::read_frame::<_, ToWorker>(&mut r, &mut buf),
    )
    .await
    .map_err(|_| WorkerError::InitTimeout(START_WAIT))??;
    let ToWorker::Init {
        media,
        bites,
        orphan_grace_ms,
    } = init
    else {
        return Err(WorkerError::NotInit(format!("{init:?}")));
    };
    // Every log line of this process, spawned tasks included, names the conversation.
    let span = tracing::info_span!("worker", conversation = args.conversation.as_str());
    let settings = EngineSettings {
        conversation: args.conversation.clone(),
        generation: args.generation,
        media,
        cutter: bites.as_ref().map(|b| CutterConfig {
            silence: Duration::from_millis(b.silence_ms),
            max_len: Duration::from_millis(b.max_ms),
        }),
        orphan_grace: Duration::from_millis(orphan_grace_ms),
    };
    serve(args, settings, bites, r, w).instrument(span).await;
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
    conversation: &ConversationId,
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
    args: WorkerArgs,
    settings: EngineSettings,
    bites: Option<BiteConfig>,
    r: tokio::net::unix::OwnedReadHalf,
    w: tokio::net::unix::OwnedWriteHalf,
) {
    tracing::info!(pid = std::process::id(), "worker started");
    let (handle, publishing) = bites
        .map(|cfg| start_publisher(&args.conversation, cfg))
        .unzip();
    let sink = handle.map(|handle| BiteSink {
        conversation: args.conversation.clone(),
        handle,
    });

    let (to_front, outbox) = mpsc::unbounded_channel::<ToFront>();
    let (inputs, from_front) = mpsc::unbounded_channel::<Input>();
    let _ = to_front.send(ToFront::Ready {
        pid: std::process::id(),
    });
    let link =
        tokio::spawn(link(args.front_socket.clone(), r, w, outbox, inputs).in_current_span());

    let (reason, mut stats) = Engine::run(settings, sink, to_front.clone(), from_front)
        .in_current_span()
        .await;
    tracing::info!("worker stopping: {reason}");
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
    // The link writes what is queued and ends once the channel is empty and closed.
    if tokio::time::timeout(Duration::from_secs(1), link)
        .await
        .is_err()
    {
        tracing::debug!("front did not take the last messages");
    }
}

/// The worker's link to front, for the worker's whole life: writes the engine's messages,
/// feeds front's frames to the engine, and when front goes away keeps knocking until a front
/// answers (the engine decides when to stop waiting). Ends when the engine's channel closes.
async fn link(
    path: PathBuf,
    mut r: tokio::net::unix::OwnedReadHalf,
    mut w: tokio::net::unix::OwnedWriteHalf,
    mut outbox: mpsc::UnboundedReceiver<ToFront>,
    inputs: mpsc::UnboundedSender<Input>,
) {
    loop {
        // Reading is its own task: read_frame is not cancel-safe, so it must not sit in a select.
        let mut reader = tokio::spawn(read_front(r, inputs.clone()));
        loop {
            tokio::select! {
                msg = outbox.recv() => match msg {
                    Some(m) => match frame::write_frame(&mut w, &m).await {
                        Ok(()) => {}
                        // Never written, so the channel is intact: only that session loses.
                        Err(FrameError::TooLarge(size)) => {
                            if refuse_too_large(&mut w, m, size, &inputs).await.is_err() {
                                break;
                            }
                        }
                        // The socket failed: front is gone (or broken) and the conversation
                        // goes on without it, exactly as when front's end closes.
                        Err(_) => break,
                    },
                    None => {
                        reader.abort();
                        return;
                    }
                },
                _ = &mut reader => break,
            }
        }
        reader.abort();
        if inputs.send(Input::FrontGone).is_err() {
            return;
        }
        tracing::warn!("front is gone; the conversation goes on while it comes back");
        // Knock until a front answers. What was queued for the old front is dropped: the new
        // one learns everything from the Hello.
        let stream = loop {
            if let Ok(s) = connect(&path).await {
                break s;
            }
            let pause = tokio::time::sleep(RECONNECT_EVERY);
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    msg = outbox.recv() => if msg.is_none() { return },
                    _ = &mut pause => break,
                }
            }
        };
        (r, w) = stream.into_split();
        if inputs.send(Input::FrontBack).is_err() {
            return;
        }
        // The engine answers with a Hello; anything it queued before that is stale.
        loop {
            match outbox.recv().await {
                Some(hello @ ToFront::Hello { .. }) => {
                    if frame::write_frame(&mut w, &hello).await.is_ok() {
                        tracing::info!("a new front took the conversation back");
                    }
                    break;
                }
                Some(_) => {}
                None => return,
            }
        }
    }
}

/// A message for front that is too large to encode (it was not written; the channel is
/// intact). A session's message is replaced by a refusal of that session, which front passes
/// to the client as `too-large`, and the engine closes that peer connection; the rest of the
/// conversation goes on. Errs only when the socket fails.
async fn refuse_too_large(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    msg: ToFront,
    size: usize,
    inputs: &mpsc::UnboundedSender<Input>,
) -> Result<(), FrameError> {
    let (session, what) = match &msg {
        ToFront::Answer { session, .. } => (*session, "answer"),
        ToFront::Event { session, .. } => (*session, "event"),
        ToFront::Rejected { session, .. } => (*session, "refusal"),
        ToFront::Closed { session, .. } => (*session, "close"),
        ToFront::Hello { .. } | ToFront::Ready { .. } | ToFront::Stats(_) => {
            tracing::error!("a message of {size} bytes is too large for front's channel; dropped");
            return Ok(());
        }
    };
    tracing::warn!(%session, "the {what} ({size} bytes) is too large for front's channel: refusing the session");
    let _ = inputs.send(Input::Front(ToWorker::Leave { session }));
    let refusal = ToFront::Rejected {
        session,
        code: crate::wire::signal::ErrorCode::TooLarge,
        message: format!(
            "the server's {what} for this session is too large to deliver ({size} bytes, the limit is {}); offer again with fewer m-lines or shorter attributes",
            frame::MAX_FRAME
        ),
    };
    frame::write_frame(w, &refusal).await
}

/// Reads front's frames into the engine until the connection ends.
async fn read_front(mut r: tokio::net::unix::OwnedReadHalf, inputs: mpsc::UnboundedSender<Input>) {
    let mut buf = Vec::new();
    while let Ok(msg) = frame::read_frame::<_, ToWorker>(&mut r, &mut buf).await {
        if inputs.send(Input::Front(msg)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ids::SessionId;
    use crate::wire::signal::ErrorCode;

    const T: Duration = Duration::from_secs(5);

    /// A link on the worker's end of a socket pair. Once front is gone it knocks on a path
    /// where nobody listens. Returns front's end, the engine's side of the link, and the task.
    struct Linked {
        front: tokio::net::UnixStream,
        to_front: mpsc::UnboundedSender<ToFront>,
        engine: mpsc::UnboundedReceiver<Input>,
        task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    fn linked() -> Linked {
        let (worker, front) = tokio::net::UnixStream::pair().expect("socket pair");
        let (r, w) = worker.into_split();
        let (to_front, outbox) = mpsc::unbounded_channel();
        let (inputs, engine) = mpsc::unbounded_channel();
        let dir = tempfile::tempdir().expect("tempdir");
        let task = tokio::spawn(link(dir.path().join("front.sock"), r, w, outbox, inputs));
        Linked {
            front,
            to_front,
            engine,
            task,
            _dir: dir,
        }
    }

    #[tokio::test]
    async fn a_write_that_fails_means_front_is_gone() {
        let Linked {
            front,
            to_front,
            mut engine,
            task,
            _dir,
        } = linked();
        // Front stops reading but keeps its end open: the link's reader sees no end of
        // stream, only its writes fail (EPIPE).
        let front = front.into_std().expect("std socket");
        front
            .shutdown(std::net::Shutdown::Read)
            .expect("shutdown read");
        to_front.send(ToFront::Ready { pid: 1 }).expect("queued");
        let got = tokio::time::timeout(T, engine.recv()).await;
        assert!(
            matches!(got, Ok(Some(Input::FrontGone))),
            "the engine was not told front is gone"
        );
        // It keeps knocking (the engine decides when to give up) and ends with the engine.
        assert!(!task.is_finished());
        drop(to_front);
        tokio::time::timeout(T, task)
            .await
            .expect("link ended")
            .expect("link task");
        drop(front);
    }

    #[tokio::test]
    async fn a_message_too_large_costs_its_session_not_the_channel() {
        let Linked {
            front,
            to_front,
            mut engine,
            task,
            _dir,
        } = linked();
        let session = SessionId(7);
        to_front
            .send(ToFront::Answer {
                session,
                sdp: "x".repeat(frame::MAX_FRAME),
            })
            .expect("queued");
        to_front.send(ToFront::Ready { pid: 2 }).expect("queued");
        let (mut r, _w) = front.into_split();
        let mut buf = Vec::new();
        let first = tokio::time::timeout(T, frame::read_frame::<_, ToFront>(&mut r, &mut buf))
            .await
            .expect("a frame")
            .expect("readable");
        match first {
            ToFront::Rejected {
                session: s,
                code,
                message,
            } => {
                assert_eq!((s, code), (session, ErrorCode::TooLarge));
                assert!(message.contains("too large"), "{message}");
            }
            other => panic!("expected the session refused, got {other:?}"),
        }
        let second = tokio::time::timeout(T, frame::read_frame::<_, ToFront>(&mut r, &mut buf))
            .await
            .expect("a frame")
            .expect("readable");
        assert_eq!(second, ToFront::Ready { pid: 2 }, "the channel goes on");
        // The engine closes that session's peer connection, and front is not gone.
        let got = tokio::time::timeout(T, engine.recv()).await;
        assert!(
            matches!(got, Ok(Some(Input::Front(ToWorker::Leave { session: s }))) if s == session),
            "the engine was not told to close the session"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(engine.try_recv().is_err(), "nothing else for the engine");
        drop(to_front);
        tokio::time::timeout(T, task)
            .await
            .expect("link ended")
            .expect("link task");
    }
}
