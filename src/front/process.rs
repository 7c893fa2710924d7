//! front's process from start to exit: the startup checks and warnings, the listener (new, or
//! handed over by the previous image), the tasks it runs (workers' socket, admin socket,
//! housekeeping, spool replays, HTTP), then signals: SIGTERM/SIGINT drain and stop every
//! worker, SIGHUP re-executes the binary keeping the listener, `ctl drain` ends it once the
//! last conversation has. `src/bin/front.rs` only loads the configuration and calls [`run`].

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::front::bites::BiteReplays;
use crate::front::cluster::Cluster;
use crate::front::state::Front;
use crate::front::supervisor::{self, LISTEN_FD_ENV};
use crate::front::tasks::Tasks;
use crate::front::{admin, http, links, notify};
use crate::wire::socket;

/// How long front waits at exit for its workers to be reaped.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);
/// How long front waits at exit for its tasks to end once stopped (each ends at its next
/// await: this bounds a stuck one).
const TASKS_WAIT: Duration = Duration::from_secs(2);
/// How long a starting front waits for the workers its predecessor left running.
const ADOPT_WAIT: Duration = Duration::from_secs(5);

/// How `run` ended.
pub enum Exit {
    Done,
    /// Re-execute, handing over the HTTP listener.
    Reexec(RawFd),
}

pub async fn run(cfg: Config) -> anyhow::Result<Exit> {
    warn_about_settings(&cfg);
    for dir in [cfg.runtime_dir.clone(), cfg.pid_dir()] {
        socket::private_dir(&dir)
            .with_context(|| format!("RUNTIME_DIR {}", cfg.runtime_dir.display()))?;
    }
    if cfg.bites.is_some() {
        socket::private_dir(&cfg.state_dir)
            .with_context(|| format!("STATE_DIR {}", cfg.state_dir.display()))?;
    }
    let listener = http_listener(&cfg).await?;
    let listen_fd = listener.as_raw_fd();
    if cfg.bites.is_some() {
        socket::private_dir(&cfg.spool_root())
            .with_context(|| format!("STATE_DIR {}", cfg.state_dir.display()))?;
    }
    let tasks = Tasks::default();
    let bites = BiteReplays::start(&cfg, tasks.clone()).await;
    let cluster = Cluster::connect(&cfg).await.context("CLUSTER: NATS")?;
    let front = Front::new(cfg, bites, cluster.clone(), tasks.clone())
        .context("permissions HTTP client")?;

    // Workers connect to this socket; those a previous front left running come back to it.
    let expected: Vec<_> = supervisor::running_orphans(&front.cfg.pid_dir())
        .into_iter()
        .map(|(generation, _)| generation)
        .collect();
    let workers_socket = socket::bind_private(&front.cfg.worker_socket())
        .with_context(|| format!("worker socket {}", front.cfg.worker_socket().display()))?;
    tasks.spawn(links::serve(workers_socket, front.clone()));
    wait_for_adoption(&front, &expected).await;
    let admin_socket = socket::bind_private(&front.cfg.admin_socket())
        .with_context(|| format!("admin socket {}", front.cfg.admin_socket().display()))?;
    tasks.spawn(admin::serve(admin_socket, front.clone()));

    spawn_periodic_tasks(&front, &tasks);
    if let Some(cluster) = &cluster {
        cluster.start(front.clone(), &tasks);
    }

    #[cfg_attr(not(feature = "demo"), allow(unused_mut))]
    let mut app = http::router(front.clone());
    // Development only: the demo page's bite list (with bites on; none of it exists otherwise).
    #[cfg(feature = "demo")]
    if front.cfg.dev_mode
        && let Some(demo) = crate::front::demo::DemoBites::start(&front)
    {
        app = app.merge(demo.router());
    }
    let addr = listener.local_addr()?;
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let (header_timeout, max_connections) =
        (front.cfg.http_header_timeout, front.cfg.max_connections);
    let http_tasks = tasks.clone();
    // Not one of `tasks`: the select below watches it end, and a re-exec leaves it running
    // (its listener passes to the next image).
    let server = tokio::spawn(async move {
        http::serve(
            listener,
            app,
            header_timeout,
            max_connections,
            &http_tasks,
            async {
                // Only an explicit stop: on a re-exec the sender is simply dropped, and the
                // listener must stay open for the next image.
                if http_stopped.await.is_err() {
                    std::future::pending::<()>().await;
                }
            },
        )
        .await;
        Ok::<(), std::io::Error>(())
    });
    announce(&front, addr);
    notify::ready();

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
        _ = hup.recv() => {
            tracing::info!("reload: re-executing front; the workers keep their calls");
            notify::reloading();
            return Ok(Exit::Reexec(listen_fd));
        }
        _ = front.drained.notified() => {
            tracing::info!("drained: no conversation left");
        }
        r = server => {
            r.context("HTTP server task")?.context("HTTP server")?;
            anyhow::bail!("the HTTP server stopped");
        }
    }
    stop(&front, stop_http).await;
    tracing::info!("front stopped");
    Ok(Exit::Done)
}

/// Says where front listens, and in development where the demo page is.
fn announce(front: &Front, addr: std::net::SocketAddr) {
    tracing::info!(%addr, "front listening");
    if cfg!(feature = "demo") && front.cfg.dev_mode {
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
}

/// Warns at startup about settings that are allowed but risky.
fn warn_about_settings(cfg: &Config) {
    if cfg.trusted_proxies == crate::wire::identity::TrustedProxies::Any {
        tracing::warn!(
            "TRUSTED_PROXIES=*: X-User-Claim is believed from any peer; LISTEN must be reachable by the auth proxy alone"
        );
    }
    if let Ok((soft, _)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        && soft < cfg.max_connections as u64 + 256
    {
        tracing::warn!(
            "MAX_CONNECTIONS={} but front may open only {soft} files (RLIMIT_NOFILE): connections will fail before the cap; raise LimitNOFILE or lower MAX_CONNECTIONS",
            cfg.max_connections
        );
    }
    if cfg.dev_mode {
        tracing::warn!(
            "DEV_MODE is on: ?userid=&clientid= is accepted as identity{}",
            if cfg!(feature = "demo") {
                ", and the demo page is served at /"
            } else {
                " (this build has no demo page: built without the `demo` feature)"
            }
        );
        if cfg.permissions == crate::config::Permissions::AllowAll {
            tracing::warn!("PERMISSIONS_HOST=allow-all: every user may join every conversation");
        }
    }
}

/// Waits (at most `ADOPT_WAIT`) until the workers a previous front left running have come
/// back, so front says it is ready only with their conversations in hand.
async fn wait_for_adoption(front: &Front, expected: &[crate::wire::ids::Generation]) {
    if expected.is_empty() {
        return;
    }
    let t0 = Instant::now();
    while front.adopted_of(expected) < expected.len() && t0.elapsed() < ADOPT_WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(
        adopted = front.adopted_of(expected),
        expected = expected.len(),
        "took back the workers of the previous front in {:?}",
        t0.elapsed()
    );
}

/// The periodic tasks: housekeeping (with the systemd watchdog after it) and, with bites on,
/// the replays of spools left by dead workers.
fn spawn_periodic_tasks(front: &Arc<Front>, tasks: &Tasks) {
    {
        let front = front.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                front.housekeeping(Instant::now());
                // After the state lock was taken: a stuck lock stops the pings.
                notify::watchdog();
            }
        });
    }
    if let Some(bites) = front.bites.clone() {
        // Spools left by workers that died (before a restart of front, or while NATS was
        // down): published once NATS takes them.
        let front = front.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                bites.replay_orphans(|c| front.has_worker(c));
            }
        });
    }
}

/// SIGTERM, SIGINT or a finished drain: no new conversations, wait up to `DRAIN_TIMEOUT_MS`
/// for those going on, stop HTTP, stop every worker, remove the sockets.
async fn stop(front: &Front, stop_http: tokio::sync::oneshot::Sender<()>) {
    notify::stopping();
    if front.drain() > 0 {
        let deadline = front.cfg.drain_timeout;
        tracing::info!("waiting up to {deadline:?} for conversations to end");
        let _ = tokio::time::timeout(deadline, front.drained.notified()).await;
    }
    let _ = stop_http.send(());
    let held = front.serving();
    // Every supervisor kills its worker if it has not exited 5 s after Shutdown, so this
    // normally ends well within the bound.
    if !front.shutdown_workers(SHUTDOWN_WAIT).await {
        tracing::warn!("workers still running after {SHUTDOWN_WAIT:?}; exiting anyway");
    }
    // The others place this node's conversations anew at once, not after the TTL.
    if let Some(cluster) = &front.cluster {
        cluster.leave(held).await;
    }
    // Then everything else: the sockets' accept loops and their connections, HTTP
    // connections, housekeeping, replays.
    match front.tasks.stop(TASKS_WAIT).await {
        0 => tracing::debug!("every task ended"),
        n => tracing::warn!("{n} tasks still running after {TASKS_WAIT:?}; exiting anyway"),
    }
    for path in [front.cfg.worker_socket(), front.cfg.admin_socket()] {
        let _ = std::fs::remove_file(path);
    }
}

/// Raises the soft limit of open files to the hard limit: every WebSocket is a descriptor in
/// front, and every peer connection a UDP socket in a worker (which inherits the limit).
/// Failing is logged, not fatal: the limits in force still work, up to their size.
pub fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!("RLIMIT_NOFILE raised from {soft} to {hard}"),
            Err(e) => tracing::warn!("cannot raise RLIMIT_NOFILE from {soft} to {hard}: {e}"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read RLIMIT_NOFILE: {e}"),
    }
}

/// The HTTP listener: the one a re-executed front was handed, or a new one on `LISTEN`.
async fn http_listener(cfg: &Config) -> anyhow::Result<tokio::net::TcpListener> {
    if let Some(fd) = std::env::var(LISTEN_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
    {
        // SAFETY: our previous image put this listening socket at this fd for us, and
        // nothing else in this process has taken it.
        let std_listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        nix::fcntl::fcntl(
            &std_listener,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .context("inherited listener")?;
        std_listener
            .set_nonblocking(true)
            .context("inherited listener")?;
        tracing::info!("serving on the listener handed over by the previous front");
        return tokio::net::TcpListener::from_std(std_listener).context("inherited listener");
    }
    tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("LISTEN {}", cfg.listen))
}

/// Replaces this process with `exe` (the same path, maybe a new binary), handing over the
/// HTTP listener at `fd`. Returns only on failure.
pub fn reexec(exe: Option<PathBuf>, fd: RawFd) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let Some(exe) = exe else {
        return anyhow::anyhow!("the path of front's executable is unknown");
    };
    // SAFETY: the listener is still open (its server task is only abandoned, not dropped).
    let listener = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    if let Err(e) = nix::fcntl::fcntl(
        listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    ) {
        return anyhow::anyhow!("keeping the listener across exec: {e}");
    }
    let err = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(LISTEN_FD_ENV, fd.to_string())
        .exec();
    anyhow::anyhow!("exec {}: {err}", exe.display())
}
