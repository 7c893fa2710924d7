//! One task per worker process: start it (or take it back after a front restart), pump
//! messages both ways, watch its heartbeat, and notice when it is gone.
//!
//! Workers connect to front's worker socket and say `Hello` ([`super::links`] routes each
//! connection): a worker this front just spawned is handed to the task that spawned it, which
//! checks that the peer is that very child and sends `Init`; a worker that outlived its front
//! is *adopted*. What happens when a worker dies: the reader sees end-of-stream or garbage
//! (garbage gets the process killed: a worker that breaks protocol is never trusted again), a
//! worker whose `Stats` stop for the heartbeat window (it hangs, or was SIGSTOPped) is killed,
//! and the task reports [`Ending`] through [`WorkerEvents::gone`]; front tells that
//! conversation's clients to reconnect. Other conversations see nothing: they have their own
//! process and their own task.
//!
//! The supervisor knows nothing of front's state: it gets plain settings ([`WorkerSpec`]) and
//! reports through the narrow [`WorkerEvents`] interface. Each worker has a pid file
//! (`RUNTIME_DIR/workers/<generation>.pid`) while it is supervised, so a restarted front
//! knows whom to wait for before it says it is ready.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::oneshot;

pub use super::conversation::Ending;
use super::conversation::{Control, Kill};
use super::{notify, procfs};
use crate::wire::frame::{self, FrameError};
use crate::wire::ids::{ConversationId, Generation};
use crate::wire::ipc::{BiteConfig, MediaConfig, ToFront, ToWorker};

/// How long a spawned worker has to connect and say `Ready`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a worker told to stop has before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// The listening socket front passes to its re-executed self: never a worker's.
pub const LISTEN_FD_ENV: &str = "BEEP_LISTEN_FD";

/// How to start and watch workers.
#[derive(Debug)]
pub struct WorkerSpec {
    /// The worker executable.
    pub bin: PathBuf,
    /// Front's socket for workers (`RUNTIME_DIR/front.sock`).
    pub front_socket: PathBuf,
    /// Where the pid files are (`RUNTIME_DIR/workers`, 0700).
    pub pid_dir: PathBuf,
    pub media: MediaConfig,
    /// Bite settings, `None` when bites are off. Their `spool_dir` is the root: each worker
    /// gets its conversation's directory under it.
    pub bites: Option<BiteConfig>,
    /// How long a worker goes on without a front before it stops by itself.
    pub orphan_grace: Duration,
    /// A worker silent this long (it reports every 2 s) is killed.
    pub heartbeat: Duration,
}

/// A worker's connection, after its `Hello`.
pub struct Link {
    pub reader: OwnedReadHalf,
    pub writer: OwnedWriteHalf,
    /// The pid the kernel reports for the peer (`SO_PEERCRED`).
    pub peer_pid: Option<i32>,
}

/// Spawned workers waiting for their connection, by generation.
#[derive(Default)]
pub struct Pending(Mutex<HashMap<Generation, oneshot::Sender<Link>>>);

impl Pending {
    fn expect(&self, generation: Generation) -> oneshot::Receiver<Link> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(generation, tx);
        rx
    }

    fn forget(&self, generation: Generation) {
        self.lock().remove(&generation);
    }

    /// Hands a fresh worker's connection to the task that spawned it; gives it back if no
    /// task waits for that generation (a stranger, or too late).
    pub fn deliver(&self, generation: Generation, link: Link) -> Result<(), Link> {
        match self.lock().remove(&generation) {
            Some(tx) => tx.send(link),
            None => Err(link),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Generation, oneshot::Sender<Link>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a supervisor tells front about its worker.
pub trait WorkerEvents: Send + Sync + 'static {
    /// The worker connected, passed the checks and serves (spawned: after `Ready`).
    fn ready(&self, conversation: &ConversationId, generation: Generation, pid: u32);
    /// A message from the worker.
    fn message(&self, conversation: &ConversationId, generation: Generation, msg: ToFront);
    /// The worker process is gone (reaped, or no longer ours).
    fn gone(&self, conversation: &ConversationId, generation: Generation, ending: &Ending);
    /// `msg` was too large for the channel (`size` bytes encoded) and was not sent: the
    /// worker never heard of it, the channel is intact, and the worker goes on.
    fn refused(
        &self,
        conversation: &ConversationId,
        generation: Generation,
        msg: ToWorker,
        size: usize,
    );
}

/// Why a spawned worker never came up.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("cannot start {0}: {1}")]
    Spawn(PathBuf, std::io::Error),
    #[error("worker exited before connecting: {0}")]
    ExitedEarly(String),
    #[error("worker did not connect within {START_TIMEOUT:?}")]
    ConnectTimeout,
    #[error("refused worker connection: peer pid {peer:?} is not the spawned worker {pid}")]
    NotOurChild { peer: Option<i32>, pid: u32 },
    #[error("talking to the worker: {0}")]
    Frame(#[from] FrameError),
    #[error("worker did not say Ready: {0}")]
    NotReady(String),
}

/// The worker process: our child, or one we adopted (whose exit we can only observe).
enum Process {
    Child(Child),
    Adopted(u32),
}

impl Process {
    fn pid(&self) -> Option<u32> {
        match self {
            Process::Child(c) => c.id(),
            Process::Adopted(pid) => Some(*pid),
        }
    }

    /// Resolves once the process has ended.
    async fn exited(&mut self) -> String {
        match self {
            Process::Child(c) => format!("worker exited: {:?}", c.wait().await),
            Process::Adopted(pid) => {
                while procfs::alive(*pid) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                "worker exited".into()
            }
        }
    }

    async fn kill(&mut self) {
        match self {
            Process::Child(c) => {
                let _ = c.kill().await;
            }
            Process::Adopted(pid) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid as i32),
                    nix::sys::signal::SIGKILL,
                );
                let _ = tokio::time::timeout(EXIT_GRACE, self.exited()).await;
            }
        }
    }
}

/// Spawns the worker of `conversation` (after `delay`, the crash backoff) and supervises it.
#[allow(clippy::too_many_arguments)]
pub async fn run_spawned(
    spec: Arc<WorkerSpec>,
    pending: Arc<Pending>,
    events: Arc<dyn WorkerEvents>,
    conversation: ConversationId,
    generation: Generation,
    rx: UnboundedReceiver<Control>,
    delay: Duration,
) {
    if !delay.is_zero() {
        tracing::info!(
            %conversation,
            "starting a new worker in {delay:?} (crash backoff)"
        );
        tokio::time::sleep(delay).await;
    }
    let ending = match start(&spec, &pending, &*events, &conversation, generation).await {
        Ok((link, child)) => {
            supervise(
                &spec,
                &events,
                &conversation,
                generation,
                link,
                Process::Child(child),
                rx,
            )
            .await
        }
        Err(e) => Ending::Exited(e.to_string()),
    };
    pending.forget(generation);
    finish(&spec, &*events, &conversation, generation, ending);
}

/// Takes back a worker that outlived its front and supervises it.
pub async fn run_adopted(
    spec: Arc<WorkerSpec>,
    events: Arc<dyn WorkerEvents>,
    conversation: ConversationId,
    generation: Generation,
    pid: u32,
    link: Link,
    rx: UnboundedReceiver<Control>,
) {
    write_pid_file(&spec.pid_dir, generation, pid, &conversation);
    events.ready(&conversation, generation, pid);
    let ending = supervise(
        &spec,
        &events,
        &conversation,
        generation,
        link,
        Process::Adopted(pid),
        rx,
    )
    .await;
    finish(&spec, &*events, &conversation, generation, ending);
}

fn finish(
    spec: &WorkerSpec,
    events: &dyn WorkerEvents,
    conversation: &ConversationId,
    generation: Generation,
    ending: Ending,
) {
    let _ = std::fs::remove_file(pid_file(&spec.pid_dir, generation));
    tracing::info!(%conversation, %generation, "worker ended: {ending}");
    events.gone(conversation, generation, &ending);
}

async fn start(
    spec: &WorkerSpec,
    pending: &Pending,
    events: &dyn WorkerEvents,
    conversation: &ConversationId,
    generation: Generation,
) -> Result<(Link, Child), StartError> {
    let connected = pending.expect(generation);
    let mut cmd = Command::new(&spec.bin);
    cmd.arg("--front-socket")
        .arg(&spec.front_socket)
        .arg("--conversation")
        .arg(conversation)
        .arg("--generation")
        .arg(generation.0.to_string())
        // Its own process group: a Ctrl-C at front's terminal is for front, which then
        // stops its workers itself (their bites spooled), not for every worker at once.
        .process_group(0)
        .kill_on_drop(true);
    // systemd's notify, watchdog and socket settings are front's alone.
    for var in notify::CHILD_ENV_REMOVE.iter().chain([&LISTEN_FD_ENV]) {
        cmd.env_remove(var);
    }
    let spawned_at = std::time::Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| StartError::Spawn(spec.bin.clone(), e))?;
    let pid = child.id().unwrap_or(0);
    write_pid_file(&spec.pid_dir, generation, pid, conversation);
    let link = tokio::select! {
        link = tokio::time::timeout(START_TIMEOUT, connected) => link,
        status = child.wait() => {
            return Err(StartError::ExitedEarly(format!("{status:?}")));
        }
    };
    let mut link = match link {
        Ok(Ok(link)) => link,
        _ => {
            let _ = child.kill().await;
            return Err(StartError::ConnectTimeout);
        }
    };
    if link.peer_pid != Some(pid as i32) {
        let _ = child.kill().await;
        return Err(StartError::NotOurChild {
            peer: link.peer_pid,
            pid,
        });
    }
    let init = ToWorker::Init {
        media: spec.media.clone(),
        bites: spec.bites.clone().map(|b| BiteConfig {
            spool_dir: b.spool_dir.join(conversation),
            ..b
        }),
        orphan_grace_ms: spec.orphan_grace.as_millis() as u64,
    };
    let mut buf = Vec::new();
    let ready = async {
        frame::write_frame(&mut link.writer, &init).await?;
        frame::read_frame::<_, ToFront>(&mut link.reader, &mut buf).await
    };
    match tokio::time::timeout(START_TIMEOUT, ready).await {
        Ok(Ok(ToFront::Ready { pid: p })) => events.ready(conversation, generation, p),
        other => {
            let _ = child.kill().await;
            return Err(StartError::NotReady(format!("{other:?}")));
        }
    }
    // Spawn to ready: what the first member of a conversation waits for before its offer is
    // answered (README "Operations").
    let ready_ms = spawned_at.elapsed().as_secs_f64() * 1e3;
    tracing::info!(%conversation, pid, ready_ms, "worker ready");
    Ok((link, child))
}

/// Pumps messages until the worker is gone; returns how it ended.
async fn supervise(
    spec: &WorkerSpec,
    events: &Arc<dyn WorkerEvents>,
    conversation: &ConversationId,
    generation: Generation,
    link: Link,
    mut process: Process,
    mut rx: UnboundedReceiver<Control>,
) -> Ending {
    let pid = process.pid().unwrap_or(0);
    let Link {
        reader: r,
        writer: mut w,
        ..
    } = link;
    // Milliseconds since `t0` of the worker's last frame: its heartbeat.
    let t0 = Instant::now();
    let last_heard = Arc::new(AtomicU64::new(0));
    // Reading is its own task: read_frame is not cancel-safe, so it must not sit in a select.
    let reader = spawn_reader(events, conversation, generation, r, t0, last_heard.clone());
    tokio::pin!(reader);
    let mut pulse = tokio::time::interval(Duration::from_millis(500));
    let mut stopping = false;
    let mut reader_done = false;
    let ending = loop {
        tokio::select! {
            control = rx.recv(), if !stopping => match control {
                Some(Control::Send(m)) => {
                    stopping = m == ToWorker::Shutdown;
                    match frame::write_frame(&mut w, &m).await {
                        Ok(()) => {}
                        // Nothing was written: the message is refused for its session, the
                        // conversation goes on.
                        Err(FrameError::TooLarge(size)) => {
                            tracing::warn!(%conversation, pid, "a message of {size} bytes is too large for the worker's channel; refused");
                            events.refused(conversation, generation, m, size);
                        }
                        Err(e) => {
                            tracing::warn!(%conversation, pid, "write to worker: {e}");
                            process.kill().await;
                            break Ending::Exited(format!("write to worker: {e}"));
                        }
                    }
                }
                Some(Control::Kill(kind, why)) => {
                    tracing::warn!(%conversation, pid, "killing the worker: {why}");
                    process.kill().await;
                    break Ending::Killed(kind, why);
                }
                // Front dropped the conversation without a Shutdown: treat it as one.
                None => {
                    stopping = true;
                    let _ = frame::write_frame(&mut w, &ToWorker::Shutdown).await;
                }
            },
            ended = &mut reader => {
                reader_done = true;
                break reader_ended(ended, &mut process, conversation, pid).await;
            }
            why = process.exited() => break Ending::Exited(why),
            _ = pulse.tick() => {
                let heard = Duration::from_millis(last_heard.load(Ordering::Relaxed));
                if t0.elapsed().saturating_sub(heard) > spec.heartbeat {
                    let why = format!("no heartbeat for {:?}", spec.heartbeat);
                    tracing::error!(%conversation, pid, "killing the worker: {why}");
                    process.kill().await;
                    break Ending::Killed(Kill::Heartbeat, why);
                }
            }
        }
    };
    // What the worker said just before it went (its last Stats) is read out before front
    // hears it is gone; the socket is closed by then, so this is quick.
    if !reader_done && tokio::time::timeout(EXIT_GRACE, &mut reader).await.is_err() {
        reader.abort();
    }
    if stopping && matches!(ending, Ending::Exited(_)) {
        return ending;
    }
    wind_up(ending, &mut process, conversation, pid).await
}

/// The task that reads the worker's frames, passes them to front and notes when the worker
/// was last heard (its heartbeat); it ends with the error that ended reading.
fn spawn_reader(
    events: &Arc<dyn WorkerEvents>,
    conversation: &ConversationId,
    generation: Generation,
    mut r: OwnedReadHalf,
    t0: Instant,
    last_heard: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<FrameError> {
    let events = events.clone();
    let conversation = conversation.clone();
    tokio::spawn(async move {
        let mut buf = Vec::new();
        loop {
            match frame::read_frame::<_, ToFront>(&mut r, &mut buf).await {
                Ok(msg) => {
                    last_heard.store(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
                    events.message(&conversation, generation, msg);
                }
                Err(e) => return e,
            }
        }
    })
}

/// How the worker ended once its reader did: it closed its channel (and exits), or sent
/// garbage (and is killed: a worker that breaks protocol is never trusted again).
async fn reader_ended(
    ended: Result<FrameError, tokio::task::JoinError>,
    process: &mut Process,
    conversation: &ConversationId,
    pid: u32,
) -> Ending {
    match ended {
        Ok(FrameError::Closed) => {
            // A worker that closed its channel is leaving; one that did so and lingers is
            // not ours any more.
            if tokio::time::timeout(EXIT_GRACE, process.exited())
                .await
                .is_err()
            {
                process.kill().await;
            }
            Ending::Exited("worker closed its channel".into())
        }
        Ok(e) => {
            tracing::error!(%conversation, pid, "worker sent garbage, killing it: {e}");
            process.kill().await;
            Ending::Killed(Kill::Protocol, format!("protocol error: {e}"))
        }
        Err(e) => {
            process.kill().await;
            Ending::Exited(format!("reader task: {e}"))
        }
    }
}

/// A worker that should be gone by now: told to stop but still there, it is killed after
/// the grace period.
async fn wind_up(
    ending: Ending,
    process: &mut Process,
    conversation: &ConversationId,
    pid: u32,
) -> Ending {
    if tokio::time::timeout(EXIT_GRACE, process.exited())
        .await
        .is_err()
    {
        tracing::warn!(
            %conversation,
            pid,
            "worker did not exit within {EXIT_GRACE:?}, killing it"
        );
        process.kill().await;
        return Ending::Killed(Kill::Stuck, format!("did not exit within {EXIT_GRACE:?}"));
    }
    ending
}

fn pid_file(dir: &Path, generation: Generation) -> PathBuf {
    dir.join(format!("{generation}.pid"))
}

fn write_pid_file(dir: &Path, generation: Generation, pid: u32, conversation: &ConversationId) {
    if let Err(e) = std::fs::write(
        pid_file(dir, generation),
        format!("{pid}\n{conversation}\n"),
    ) {
        tracing::warn!(%conversation, "pid file in {}: {e}", dir.display());
    }
}

/// The workers a previous front left running: (generation, pid) of every pid file whose
/// process is still a worker of that generation. Stale files are removed.
pub fn running_orphans(dir: &Path) -> Vec<(Generation, u32)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(generation) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pid"))
            .and_then(|g| g.parse::<u64>().ok())
        else {
            continue;
        };
        let pid = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok());
        let ours = pid.filter(|&pid| {
            procfs::alive(pid) && {
                let args = procfs::cmdline(pid);
                args.windows(2)
                    .any(|w| w[0] == "--generation" && w[1] == generation.to_string())
            }
        });
        match ours {
            Some(pid) => found.push((Generation(generation), pid)),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    found
}
