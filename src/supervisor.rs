//! One task per worker process: spawn it, accept its connection on a private Unix socket,
//! check who is on the other end, and pump messages both ways until it exits.
//!
//! What happens when a worker dies: the reader sees end-of-stream or garbage (garbage gets the
//! process killed: a worker that breaks protocol is never trusted again), the task reaps the
//! process, and [`Front::worker_gone`] tells that conversation's clients to reconnect. Other
//! conversations see nothing: they have their own process and their own task. The next offer
//! for the conversation spawns a fresh worker.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::front::Front;
use crate::ipc::{self, IpcError, ToFront, ToWorker};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_GRACE: Duration = Duration::from_secs(5);

pub fn socket_dir(front: &Front) -> PathBuf {
    front.cfg.runtime_dir.join("workers")
}

pub async fn run_worker(
    front: Arc<Front>,
    conversation: String,
    generation: u64,
    rx: UnboundedReceiver<ToWorker>,
) {
    let reason = match supervise(&front, &conversation, generation, rx).await {
        Ok(r) => r,
        Err(e) => format!("{e:#}"),
    };
    tracing::info!(conversation, generation, "worker ended: {reason}");
    front.worker_gone(&conversation, generation, &reason);
    front
        .supervisors
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

async fn supervise(
    front: &Arc<Front>,
    conversation: &str,
    generation: u64,
    mut rx: UnboundedReceiver<ToWorker>,
) -> anyhow::Result<String> {
    let dir = socket_dir(front);
    ipc::private_dir(&dir)?;
    // Not named after the conversation: a 128-character id would overflow the 108-byte
    // limit of a Unix socket path. `ps` shows the conversation (an argument of the worker).
    let path = dir.join(format!("w{generation}.sock"));
    let listener = ipc::bind_private(&path)?;
    let spawned = Command::new(&front.cfg.worker_bin)
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
            anyhow::bail!("cannot start {}: {e}", front.cfg.worker_bin.display());
        }
    };
    let pid = child.id().unwrap_or(0);
    let accepted = tokio::select! {
        a = tokio::time::timeout(CONNECT_TIMEOUT, listener.accept()) => a,
        status = child.wait() => {
            let _ = std::fs::remove_file(&path);
            anyhow::bail!("worker exited before connecting: {status:?}");
        }
    };
    // The socket file has served its purpose: nothing else may connect, nothing is left behind.
    let _ = std::fs::remove_file(&path);
    drop(listener);
    let stream = match accepted {
        Ok(Ok((s, _))) => s,
        Ok(Err(e)) => anyhow::bail!("accept: {e}"),
        Err(_) => {
            let _ = child.kill().await;
            anyhow::bail!("worker did not connect within {CONNECT_TIMEOUT:?}");
        }
    };
    if let Err(e) = ipc::check_peer(&stream, Some(pid)) {
        let _ = child.kill().await;
        anyhow::bail!("refused worker connection: {e}");
    }
    let (mut r, mut w) = stream.into_split();
    ipc::write_frame(
        &mut w,
        &ToWorker::Init {
            conversation: conversation.to_string(),
            media: front.cfg.media.clone(),
        },
    )
    .await?;
    let mut buf = Vec::new();
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        ipc::read_frame::<_, ToFront>(&mut r, &mut buf),
    )
    .await
    {
        Ok(Ok(ToFront::Ready { pid: p })) => front.worker_ready(conversation, generation, p),
        other => {
            let _ = child.kill().await;
            anyhow::bail!("worker did not say Ready: {other:?}");
        }
    }
    tracing::info!(conversation, pid, "worker ready");

    // Reading is its own task: read_frame is not cancel-safe, so it must not sit in a select.
    let reader = {
        let front = front.clone();
        let conversation = conversation.to_string();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                match ipc::read_frame::<_, ToFront>(&mut r, &mut buf).await {
                    Ok(msg) => front.from_worker(&conversation, generation, msg),
                    Err(e) => return e,
                }
            }
        })
    };
    tokio::pin!(reader);
    let mut shutting_down = false;
    let reason = loop {
        tokio::select! {
            msg = rx.recv(), if !shutting_down => match msg {
                Some(m) => {
                    shutting_down = m == ToWorker::Shutdown;
                    if let Err(e) = ipc::write_frame(&mut w, &m).await {
                        break format!("write to worker: {e}");
                    }
                }
                // Front dropped the conversation without a Shutdown: treat it as one.
                None => {
                    shutting_down = true;
                    let _ = ipc::write_frame(&mut w, &ToWorker::Shutdown).await;
                }
            },
            ended = &mut reader => {
                match ended {
                    Ok(IpcError::Closed) => break "worker closed its channel".to_string(),
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
