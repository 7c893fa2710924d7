//! One task per worker process: spawn it, accept its connection on a private Unix socket,
//! check who is on the other end, and pump messages both ways until it exits.
//!
//! What happens when a worker dies: the reader sees end-of-stream or garbage (garbage gets the
//! process killed: a worker that breaks protocol is never trusted again), the task reaps the
//! process, and [`WorkerEvents::gone`] tells front, which tells that conversation's clients to
//! reconnect. Other conversations see nothing: they have their own process and their own
//! task. The next offer for the conversation spawns a fresh worker.
//!
//! The supervisor knows nothing of front's state: it gets plain settings ([`WorkerSpec`]) and
//! reports through the narrow [`WorkerEvents`] interface.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::wire::frame::{self, FrameError};
use crate::wire::ids::Generation;
use crate::wire::ipc::{BiteConfig, MediaConfig, ToFront, ToWorker};
use crate::wire::socket::{self, PeerError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// How to start a worker.
#[derive(Debug)]
pub struct WorkerSpec {
    /// The worker executable.
    pub bin: PathBuf,
    /// Where the per-worker sockets are made (0700).
    pub socket_dir: PathBuf,
    pub media: MediaConfig,
    /// Bite settings, `None` when bites are off. Their `spool_dir` is the root: each worker
    /// gets its conversation's directory under it.
    pub bites: Option<BiteConfig>,
}

/// What a supervisor tells front about its worker.
pub trait WorkerEvents: Send + Sync + 'static {
    /// The worker connected, passed the credential check and said `Ready`.
    fn ready(&self, conversation: &str, generation: Generation, pid: u32);
    /// A message from the worker.
    fn message(&self, conversation: &str, generation: Generation, msg: ToFront);
    /// The worker process is gone (reaped), for `reason`.
    fn gone(&self, conversation: &str, generation: Generation, reason: &str);
}

/// Why a worker could not be started or kept.
#[derive(Debug, thiserror::Error)]
enum SupervisorError {
    #[error("socket directory {0}: {1}")]
    SocketDir(PathBuf, std::io::Error),
    #[error("cannot start {0}: {1}")]
    Spawn(PathBuf, std::io::Error),
    #[error("worker exited before connecting: {0}")]
    ExitedEarly(String),
    #[error("accept: {0}")]
    Accept(std::io::Error),
    #[error("worker did not connect within {CONNECT_TIMEOUT:?}")]
    ConnectTimeout,
    #[error("refused worker connection: {0}")]
    Peer(#[from] PeerError),
    #[error("talking to the worker: {0}")]
    Frame(#[from] FrameError),
    #[error("worker did not say Ready: {0}")]
    NotReady(String),
}

pub async fn run_worker(
    spec: Arc<WorkerSpec>,
    events: Arc<dyn WorkerEvents>,
    conversation: String,
    generation: Generation,
    rx: UnboundedReceiver<ToWorker>,
) {
    let reason = match supervise(&spec, &events, &conversation, generation, rx).await {
        Ok(r) => r,
        Err(e) => e.to_string(),
    };
    tracing::info!(conversation, %generation, "worker ended: {reason}");
    events.gone(&conversation, generation, &reason);
}

async fn supervise(
    spec: &WorkerSpec,
    events: &Arc<dyn WorkerEvents>,
    conversation: &str,
    generation: Generation,
    mut rx: UnboundedReceiver<ToWorker>,
) -> Result<String, SupervisorError> {
    let dir = &spec.socket_dir;
    socket::private_dir(dir).map_err(|e| SupervisorError::SocketDir(dir.clone(), e))?;
    // Not named after the conversation: a 128-character id would overflow the 108-byte
    // limit of a Unix socket path. `ps` shows the conversation (an argument of the worker).
    let path = dir.join(format!("w{generation}.sock"));
    let listener =
        socket::bind_private(&path).map_err(|e| SupervisorError::SocketDir(path.clone(), e))?;
    let spawned = Command::new(&spec.bin)
        .arg("--socket")
        .arg(&path)
        .arg("--conversation")
        .arg(conversation)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(SupervisorError::Spawn(spec.bin.clone(), e));
        }
    };
    let pid = child.id().unwrap_or(0);
    let accepted = tokio::select! {
        a = tokio::time::timeout(CONNECT_TIMEOUT, listener.accept()) => a,
        status = child.wait() => {
            let _ = std::fs::remove_file(&path);
            return Err(SupervisorError::ExitedEarly(format!("{status:?}")));
        }
    };
    // The socket file has served its purpose: nothing else may connect, nothing is left behind.
    let _ = std::fs::remove_file(&path);
    drop(listener);
    let stream = match accepted {
        Ok(Ok((s, _))) => s,
        Ok(Err(e)) => return Err(SupervisorError::Accept(e)),
        Err(_) => {
            let _ = child.kill().await;
            return Err(SupervisorError::ConnectTimeout);
        }
    };
    if let Err(e) = socket::check_peer(&stream, Some(pid)) {
        let _ = child.kill().await;
        return Err(e.into());
    }
    let (mut r, mut w) = stream.into_split();
    frame::write_frame(
        &mut w,
        &ToWorker::Init {
            conversation: conversation.to_string(),
            media: spec.media.clone(),
            bites: spec.bites.clone().map(|b| BiteConfig {
                spool_dir: b.spool_dir.join(conversation),
                ..b
            }),
        },
    )
    .await?;
    let mut buf = Vec::new();
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        frame::read_frame::<_, ToFront>(&mut r, &mut buf),
    )
    .await
    {
        Ok(Ok(ToFront::Ready { pid: p })) => events.ready(conversation, generation, p),
        other => {
            let _ = child.kill().await;
            return Err(SupervisorError::NotReady(format!("{other:?}")));
        }
    }
    tracing::info!(conversation, pid, "worker ready");

    // Reading is its own task: read_frame is not cancel-safe, so it must not sit in a select.
    let reader = {
        let events = events.clone();
        let conversation = conversation.to_string();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                match frame::read_frame::<_, ToFront>(&mut r, &mut buf).await {
                    Ok(msg) => events.message(&conversation, generation, msg),
                    Err(e) => return e,
                }
            }
        })
    };
    tokio::pin!(reader);
    let mut shutting_down = false;
    let mut reader_done = false;
    let reason = loop {
        tokio::select! {
            msg = rx.recv(), if !shutting_down => match msg {
                Some(m) => {
                    shutting_down = m == ToWorker::Shutdown;
                    if let Err(e) = frame::write_frame(&mut w, &m).await {
                        break format!("write to worker: {e}");
                    }
                }
                // Front dropped the conversation without a Shutdown: treat it as one.
                None => {
                    shutting_down = true;
                    let _ = frame::write_frame(&mut w, &ToWorker::Shutdown).await;
                }
            },
            ended = &mut reader => {
                reader_done = true;
                match ended {
                    Ok(FrameError::Closed) => break "worker closed its channel".to_string(),
                    Ok(e) => {
                        tracing::error!(conversation, pid, "worker sent garbage, killing it: {e}");
                        let _ = child.kill().await;
                        break format!("protocol error: {e}");
                    }
                    Err(e) => break format!("reader task: {e}"),
                }
            }
            status = child.wait() => break format!("worker exited: {status:?}"),
        }
    };
    // What the worker said just before it went (its last Stats) is read out before front
    // hears it is gone; the socket is closed by then, so this is quick.
    if !reader_done && tokio::time::timeout(EXIT_GRACE, &mut reader).await.is_err() {
        reader.abort();
    }
    match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
        Ok(Ok(status)) if !status.success() => {
            tracing::warn!(conversation, pid, "worker exit status {status}")
        }
        Ok(_) => {}
        Err(_) => {
            tracing::warn!(
                conversation,
                pid,
                "worker did not exit within {EXIT_GRACE:?}, killing it"
            );
            let _ = child.kill().await;
        }
    }
    Ok(reason)
}
