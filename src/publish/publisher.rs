//! The bite publishing task: takes completed bites from the media engine and gets each of them to
//! NATS, or to the durable [`Spool`] until NATS takes it (SPEC §5: no completed bite is lost).
//!
//! The engine must never wait on NATS or on the disk, so [`PublisherHandle::send`] only enqueues:
//! a bounded queue, and when that is full an unbounded overflow lane whose bites the task writes
//! straight to the spool. It never blocks and never fails; the task does all the waiting.
//!
//! Per bite, two messages: `Bite` on the bite subject and `Store{type:"bite"}` on the store subject,
//! each with the headers `Nats-Msg-Id`, `Beep-User`, `Beep-Client`, `Beep-Duration-Ms` and
//! `Content-Type`. The ids are `{key}:{start}` and `{key}:{start}:store`: stable, so a replay is
//! de-duplicated by JetStream, and different, because one stream may capture both subjects and
//! would otherwise drop the `Store` as a duplicate of the `Bite`. A bite counts as published only
//! when both messages are: acked by JetStream where a stream captures the subject, else flushed to
//! the server (core NATS gives no more than that). JetStream de-duplicates only within the stream's
//! `duplicate_window` (2 min by default), and core subscribers see every replay, so consumers should
//! treat `(key, start)` as the bite's identity: delivery is at least once.
//!
//! Whether a stream captures a subject is asked once through the JetStream API (`STREAM.NAMES` with
//! a subject filter) and cached for [`PublisherSettings::capture_ttl`]; a server without JetStream
//! (no responders) counts as "no stream". A JetStream publish answered "no responders" (the stream
//! was deleted) clears the cached answer. Probing with a JetStream publish instead would not work:
//! a core subscriber on the subject makes the request wait for a reply that never comes.
//!
//! Ordering rule: bites reach NATS in the order of their start, including across outages. While
//! the spool holds anything, a live bite is appended to the spool instead of being published, and
//! the task publishes the spool oldest first, deleting each file after its acks. Live bites are not
//! starved: they join the back of the same queue, which drains as fast as NATS acks. The one
//! exception: when the spool is full and NATS is up, a live bite that cannot be spooled is
//! published ahead of the backlog rather than lost.
//!
//! When neither NATS nor the spool takes a bite (NATS down and spool full or failing), the bite is
//! lost: that is logged with `tracing::error!` and counted in `failed`, never a crash. A bite NATS
//! can never accept (larger than the server's max payload) is moved to the spool's `rejected/`
//! folder and counted in `failed` too, so it does not block the bites behind it.
//!
//! Front publishes the leftover spool of a worker that died with [`replay_dir`], the same code path.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::counters::{BiteStats, Metrics};
use super::nats::{Failure, Nats, NatsState, PublisherSettings, connect_options};
use super::spool::{BiteRecord, Spool, SpoolEntry, SpoolError};

/// Errors of [`replay_dir`] (the live publisher never fails; it counts).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error(
        "replay stopped with {remaining} bites left in the spool ({replayed} replayed): {reason}"
    )]
    Stalled {
        replayed: u64,
        remaining: u64,
        reason: String,
    },
}

/// The media engine's side: cheap to clone, never blocks. The task ends once every clone is dropped.
#[derive(Clone, Debug)]
pub struct PublisherHandle {
    queue: mpsc::Sender<BiteRecord>,
    overflow: mpsc::UnboundedSender<BiteRecord>,
    metrics: Arc<Metrics>,
    state: watch::Receiver<NatsState>,
}

impl PublisherHandle {
    /// Hands a completed bite over. Never blocks, never fails: a full queue sends the bite to the
    /// overflow lane, which the task writes to the spool.
    pub fn send(&self, bite: BiteRecord) {
        let bite = match self.queue.try_send(bite) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(bite)) => bite,
            Err(mpsc::error::TrySendError::Closed(bite)) => bite,
        };
        self.metrics.overflowed.fetch_add(1, Relaxed);
        if let Err(mpsc::error::SendError(bite)) = self.overflow.send(bite) {
            // Only if the task is gone (runtime shutting down); it never exits while handles live.
            self.metrics.failed.fetch_add(1, Relaxed);
            tracing::error!(key = %bite.key, start = bite.start, "bite lost: the publishing task is gone");
        }
    }

    /// A bite that could not even be handed over (its file could not be written): counted
    /// as failed, like one NATS and the spool both refused.
    pub fn lost(&self) {
        self.metrics.failed.fetch_add(1, Relaxed);
    }

    /// The counters, for `/metrics`.
    pub fn metrics(&self) -> BiteStats {
        self.metrics.snapshot()
    }

    /// The NATS connection state, for `/healthz`; `changed()` wakes on every transition.
    pub fn nats_state(&self) -> watch::Receiver<NatsState> {
        self.state.clone()
    }
}

/// Starts the publishing task.
pub struct Publisher;

impl Publisher {
    /// Starts the task on the current tokio runtime and returns at once; the task connects in the
    /// background (retrying forever), so audio is served and bites are spooled while NATS is down.
    /// The task ends when every handle is dropped, after a short drain (see
    /// [`PublisherSettings::drain_timeout`]); its result is the final counters.
    pub fn start(
        settings: PublisherSettings,
        spool: Spool,
    ) -> (PublisherHandle, JoinHandle<BiteStats>) {
        Publisher::start_with(settings, move || Ok(spool))
    }

    /// [`Publisher::start`] with a spool still to be opened (in a blocking thread: the lock
    /// may be held for a while by front replaying a predecessor's spool). Bites handed over
    /// meanwhile wait in the queue; if the spool cannot be opened at all, each is counted as
    /// failed and logged, and nothing else is affected.
    pub fn start_with(
        settings: PublisherSettings,
        open: impl FnOnce() -> Result<Spool, SpoolError> + Send + 'static,
    ) -> (PublisherHandle, JoinHandle<BiteStats>) {
        let settings = Arc::new(settings);
        let metrics = Arc::new(Metrics::default());
        let (queue_tx, mut queue_rx) = mpsc::channel(settings.queue_capacity.max(1));
        let (overflow_tx, mut overflow_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(NatsState::Connecting);
        let handle = PublisherHandle {
            queue: queue_tx,
            overflow: overflow_tx,
            metrics: metrics.clone(),
            state: state_rx.clone(),
        };
        let task = tokio::spawn(async move {
            let spool = match tokio::task::spawn_blocking(open).await {
                Ok(Ok(spool)) => spool,
                failed => {
                    let reason = match failed {
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                        Ok(Ok(_)) => String::new(),
                    };
                    tracing::error!("BITES LOST: cannot open the spool: {reason}");
                    while let Some(bite) = tokio::select! {
                        b = overflow_rx.recv() => b,
                        b = queue_rx.recv() => b,
                    } {
                        metrics.failed.fetch_add(1, Relaxed);
                        tracing::error!(key = %bite.key, start = bite.start, "BITE LOST: no spool");
                    }
                    return metrics.snapshot();
                }
            };
            metrics.spool_bytes.store(spool.bytes(), Relaxed);
            metrics.spool_files.store(spool.files(), Relaxed);
            let client = connect_options(&settings, Some(state_tx))
                .retry_on_initial_connect()
                .connect(settings.nats_url.as_str())
                .await;
            let client = match client {
                Ok(client) => client,
                Err(e) => {
                    // With retry_on_initial_connect only a malformed URL gets here. Keep accepting
                    // bites into the spool so nothing is lost; front replays it later.
                    tracing::error!(url = %settings.nats_url, error = %e, "bad NATS settings; spooling every bite");
                    return spool_only(queue_rx, overflow_rx, spool, metrics).await;
                }
            };
            let spool_dir = spool.dir().to_path_buf();
            let task = Task {
                nats: Nats::new(client, settings.clone(), metrics.clone()),
                spool: SharedSpool::new(spool, spool_dir, metrics.clone()),
                metrics,
                settings,
                queue: queue_rx,
                overflow: overflow_rx,
                state: state_rx,
                retry_at: None,
                backoff: Duration::ZERO,
            };
            task.run().await
        });
        (handle, task)
    }
}

/// What [`replay_dir`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Bites published (both messages acked or flushed) and deleted.
    pub replayed: u64,
    /// Of the messages published, how many JetStream already had (a repeated replay).
    pub duplicates: u64,
    /// Files moved to `corrupt/` or `rejected/`.
    pub moved_aside: u64,
    /// Whether the emptied spool directory was removed.
    pub removed_dir: bool,
}

/// Publishes the leftover spool of a worker that died, in order, then removes the directory if it
/// is empty. Fails at once with [`SpoolError::Locked`] if a live process (the worker, or another
/// replayer) holds the spool, and with [`PublishError::Stalled`] if NATS stops taking bites; what
/// is left stays on disk for a later call.
pub async fn replay_dir(
    dir: &Path,
    settings: &PublisherSettings,
) -> Result<ReplaySummary, PublishError> {
    let client = connect_options(settings, None)
        .connect(settings.nats_url.as_str())
        .await
        .map_err(|source| PublishError::Connect {
            url: settings.nats_url.clone(),
            source,
        })?;
    replay_dir_with_client(client, dir, settings).await
}

/// [`replay_dir`] over a connection the caller already has (front's).
pub async fn replay_dir_with_client(
    client: async_nats::Client,
    dir: &Path,
    settings: &PublisherSettings,
) -> Result<ReplaySummary, PublishError> {
    let settings = Arc::new(settings.clone());
    let metrics = Arc::new(Metrics::default());
    let open_dir = dir.to_path_buf();
    // Replaying only removes files, so the cap does not matter here.
    let spool = tokio::task::spawn_blocking(move || Spool::open(&open_dir, u64::MAX))
        .await
        .map_err(|e| join_error(dir, e))??;
    let spool = SharedSpool::new(spool, dir.to_path_buf(), metrics.clone());
    let mut nats = Nats::new(client, settings, metrics.clone());
    loop {
        match replay_one(&mut nats, &spool, &metrics).await {
            Step::Replayed | Step::SetAside => {}
            Step::Empty => break,
            Step::Failed(reason) => {
                let m = metrics.snapshot();
                return Err(PublishError::Stalled {
                    replayed: m.replayed,
                    remaining: m.spool_files,
                    reason,
                });
            }
        }
    }
    let m = metrics.snapshot();
    let removed_dir = spool.remove_if_empty().await?;
    Ok(ReplaySummary {
        replayed: m.replayed,
        duplicates: m.duplicates,
        moved_aside: m.moved_aside,
        removed_dir,
    })
}

/// The spool behind a mutex, with its blocking file work moved off the async threads.
#[derive(Clone)]
struct SharedSpool {
    spool: Arc<Mutex<Option<Spool>>>,
    dir: PathBuf,
    metrics: Arc<Metrics>,
}

impl SharedSpool {
    fn new(spool: Spool, dir: PathBuf, metrics: Arc<Metrics>) -> SharedSpool {
        SharedSpool {
            spool: Arc::new(Mutex::new(Some(spool))),
            dir,
            metrics,
        }
    }

    /// Runs `f` on the spool in a blocking thread and refreshes the spool gauges.
    async fn with<T, F>(&self, f: F) -> Result<T, SpoolError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Spool) -> Result<T, SpoolError> + Send + 'static,
    {
        let spool = self.spool.clone();
        let metrics = self.metrics.clone();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = spool.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(s) = guard.as_mut() else {
                return Err(gone(&dir));
            };
            let before = s.moved_aside();
            let result = f(s);
            metrics.spool_bytes.store(s.bytes(), Relaxed);
            metrics.spool_files.store(s.files(), Relaxed);
            metrics
                .moved_aside
                .fetch_add(s.moved_aside() - before, Relaxed);
            result
        })
        .await
        .map_err(|e| join_error(&self.dir, e))?
    }

    async fn remove_if_empty(&self) -> Result<bool, SpoolError> {
        let spool = self.spool.clone();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let taken = spool.lock().unwrap_or_else(PoisonError::into_inner).take();
            match taken {
                Some(s) => s.remove_if_empty(),
                None => Err(gone(&dir)),
            }
        })
        .await
        .map_err(|e| join_error(&self.dir, e))?
    }

    fn files(&self) -> u64 {
        self.metrics.spool_files.load(Relaxed)
    }
}

fn gone(dir: &Path) -> SpoolError {
    SpoolError::Io {
        dir: dir.to_path_buf(),
        op: "use spool",
        source: io::Error::other("spool already closed"),
    }
}

fn join_error(dir: &Path, e: tokio::task::JoinError) -> SpoolError {
    SpoolError::Io {
        dir: dir.to_path_buf(),
        op: "blocking spool task",
        source: io::Error::other(e.to_string()),
    }
}

/// What one replay step did.
enum Step {
    Replayed,
    /// The oldest file was corrupt or unpublishable and was moved aside.
    SetAside,
    Empty,
    Failed(String),
}

/// Publishes the oldest spooled bite and deletes it after its acks.
async fn replay_one(nats: &mut Nats, spool: &SharedSpool, metrics: &Metrics) -> Step {
    let loaded = spool
        .with(|s| match s.oldest() {
            None => Ok(None),
            Some(entry) => {
                let record = s.load(&entry)?;
                Ok(Some((entry, record)))
            }
        })
        .await;
    let (entry, record) = match loaded {
        Ok(None) => return Step::Empty,
        Ok(Some((_, None))) => return Step::SetAside,
        Ok(Some((entry, Some(record)))) => (entry, record),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the spool; will retry");
            return Step::Failed(e.to_string());
        }
    };
    match nats.publish(&record).await {
        Ok(()) => {
            metrics.replayed.fetch_add(1, Relaxed);
            let removed = spool.with(move |s| s.remove(&entry)).await;
            if let Err(e) = removed {
                // Published, but it will be published again (JetStream drops the duplicate).
                tracing::error!(error = %e, key = %record.key, start = record.start, "cannot delete a replayed bite");
                return Step::Failed(e.to_string());
            }
            Step::Replayed
        }
        Err(Failure::Permanent(reason)) => {
            metrics.failed.fetch_add(1, Relaxed);
            tracing::error!(key = %record.key, start = record.start, %reason, "NATS can never take this spooled bite; moved to rejected/");
            let reason2 = reason.clone();
            let _ = spool
                .with(move |s: &mut Spool| {
                    s.reject(&entry, &reason2);
                    Ok(())
                })
                .await;
            Step::SetAside
        }
        Err(Failure::Transient(reason)) => Step::Failed(reason),
    }
}

/// The running publisher (see the module doc for the rules it follows).
struct Task {
    nats: Nats,
    spool: SharedSpool,
    metrics: Arc<Metrics>,
    settings: Arc<PublisherSettings>,
    queue: mpsc::Receiver<BiteRecord>,
    overflow: mpsc::UnboundedReceiver<BiteRecord>,
    state: watch::Receiver<NatsState>,
    /// After a failure, no replay before this instant.
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Task {
    async fn run(mut self) -> BiteStats {
        loop {
            // Overflowed bites first: they are newer than the queue's, and the spool sorts by start.
            while let Ok(bite) = self.overflow.try_recv() {
                self.spool_or_publish(bite).await;
            }
            let backlog = self.spool.files() > 0;
            let may_retry = self.retry_at.is_none_or(|at| Instant::now() >= at);
            if backlog && may_retry && self.nats.connected() {
                // Live bites waiting behind the backlog join its end, keeping start order.
                while let Ok(bite) = self.queue.try_recv() {
                    self.spool_or_publish(bite).await;
                }
                match replay_one(&mut self.nats, &self.spool, &self.metrics).await {
                    Step::Replayed | Step::SetAside => self.succeeded(),
                    Step::Empty => {}
                    Step::Failed(reason) => {
                        tracing::warn!(%reason, "spool replay failed; will retry");
                        self.failed();
                    }
                }
                continue;
            }
            // Nothing to do until a bite arrives, NATS comes back, or the backoff is over.
            // With a backlog: the end of the backoff, or a short poll as a safety net in case a
            // connection event is missed. Never an instant in the past, which would spin.
            let now = Instant::now();
            let wake = match self.retry_at {
                Some(at) if at > now => at,
                _ => now + Duration::from_millis(250),
            };
            let wake = tokio::time::Instant::from_std(wake);
            tokio::select! {
                biased;
                bite = self.overflow.recv() => match bite {
                    Some(bite) => self.spool_or_publish(bite).await,
                    None => break,
                },
                bite = self.queue.recv() => match bite {
                    Some(bite) if backlog => self.spool_or_publish(bite).await,
                    Some(bite) => self.publish_live(bite).await,
                    None => break,
                },
                changed = self.state.changed(), if backlog => {
                    if changed.is_err() {
                        // The client is gone; poll instead of spinning on a closed channel.
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    } else if *self.state.borrow() == NatsState::Connected {
                        self.retry_at = None;
                    }
                },
                () = tokio::time::sleep_until(wake), if backlog => {},
            }
        }
        self.drain().await
    }

    /// Every handle is gone: place what is queued, replay while NATS is up, then stop.
    async fn drain(mut self) -> BiteStats {
        self.queue.close();
        self.overflow.close();
        while let Ok(bite) = self.overflow.try_recv() {
            self.spool_or_publish(bite).await;
        }
        // Spooled first, published after: the process may be about to be killed, and a bite
        // waiting on a slow ack must not be lost with it.
        while let Some(bite) = self.queue.recv().await {
            self.spool_or_publish(bite).await;
        }
        let deadline = Instant::now() + self.settings.drain_timeout;
        while self.spool.files() > 0 && self.nats.connected() && Instant::now() < deadline {
            if let Step::Failed(reason) =
                replay_one(&mut self.nats, &self.spool, &self.metrics).await
            {
                tracing::warn!(%reason, "spool replay failed during shutdown; leaving the rest on disk");
                break;
            }
        }
        let left = self.spool.files();
        if left > 0 {
            tracing::warn!(
                bites = left,
                "publisher stopped with bites in the spool; they are replayed later"
            );
        }
        self.metrics.snapshot()
    }

    /// A live bite with an empty spool: publish it, or spool it if NATS does not take it now.
    async fn publish_live(&mut self, bite: BiteRecord) {
        if !self.nats.connected() {
            return self.spool_or_fail(bite).await;
        }
        match self.nats.publish(&bite).await {
            Ok(()) => {
                self.metrics.published.fetch_add(1, Relaxed);
                self.succeeded();
            }
            Err(Failure::Permanent(reason)) => self.set_aside(bite, reason).await,
            Err(Failure::Transient(reason)) => {
                tracing::warn!(key = %bite.key, start = bite.start, %reason, "NATS did not take the bite; spooling it");
                self.failed();
                self.spool_or_fail(bite).await;
            }
        }
    }

    /// A bite that must wait behind the backlog. If the spool is full but NATS is up, publishing it
    /// out of order beats losing it.
    async fn spool_or_publish(&mut self, bite: BiteRecord) {
        let Err(bite) = self.try_spool(bite).await else {
            return;
        };
        if self.nats.connected() {
            match self.nats.publish(&bite).await {
                Ok(()) => {
                    self.metrics.published.fetch_add(1, Relaxed);
                    tracing::warn!(key = %bite.key, start = bite.start, "spool full: published a live bite ahead of the backlog");
                    return;
                }
                Err(f) => {
                    tracing::warn!(key = %bite.key, start = bite.start, reason = %f, "spool full and NATS did not take the bite");
                }
            }
        }
        self.lost(&bite);
    }

    async fn spool_or_fail(&mut self, bite: BiteRecord) {
        if let Err(bite) = self.try_spool(bite).await {
            self.lost(&bite);
        }
    }

    /// Spools a bite; gives it back if the spool refused it (already logged).
    async fn try_spool(&mut self, bite: BiteRecord) -> Result<(), BiteRecord> {
        let bite = Arc::new(bite);
        let for_put = bite.clone();
        let put: Result<SpoolEntry, SpoolError> = self.spool.with(move |s| s.put(&for_put)).await;
        match put {
            Ok(_) => {
                self.metrics.spooled.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::error!(key = %bite.key, start = bite.start, error = %e, "cannot spool a bite");
                Err(Arc::unwrap_or_clone(bite))
            }
        }
    }

    /// A bite NATS will never accept: counted as failed, but kept in the spool's `rejected/` folder
    /// for the operator rather than dropped.
    async fn set_aside(&mut self, bite: BiteRecord, reason: String) {
        self.metrics.failed.fetch_add(1, Relaxed);
        tracing::error!(key = %bite.key, start = bite.start, %reason, "NATS can never take this bite; keeping it in rejected/");
        let (key, start) = (bite.key.clone(), bite.start);
        let kept = self
            .spool
            .with(move |s| {
                let entry = s.put(&bite)?;
                s.reject(&entry, &reason);
                Ok(())
            })
            .await;
        if let Err(e) = kept {
            tracing::error!(%key, start, error = %e, "BITE LOST: could not keep a rejected bite on disk");
        }
    }

    fn lost(&self, bite: &BiteRecord) {
        self.metrics.failed.fetch_add(1, Relaxed);
        tracing::error!(
            key = %bite.key, user = %bite.user, client = %bite.client, start = bite.start,
            "BITE LOST: NATS is unavailable and the spool refused it"
        );
    }

    fn succeeded(&mut self) {
        self.retry_at = None;
        self.backoff = Duration::ZERO;
    }

    fn failed(&mut self) {
        self.backoff = (self.backoff * 2)
            .max(self.settings.retry_min)
            .min(self.settings.retry_max);
        self.retry_at = Some(Instant::now() + self.backoff);
    }
}

/// The fallback when no NATS client can be made at all: keep every bite durable.
async fn spool_only(
    mut queue: mpsc::Receiver<BiteRecord>,
    mut overflow: mpsc::UnboundedReceiver<BiteRecord>,
    spool: Spool,
    metrics: Arc<Metrics>,
) -> BiteStats {
    let dir = spool.dir().to_path_buf();
    let spool = SharedSpool::new(spool, dir, metrics.clone());
    loop {
        let bite = tokio::select! {
            biased;
            b = overflow.recv() => b,
            b = queue.recv() => b,
        };
        let Some(bite) = bite else { break };
        let bite = Arc::new(bite);
        let for_put = bite.clone();
        match spool.with(move |s| s.put(&for_put)).await {
            Ok(_) => {
                metrics.spooled.fetch_add(1, Relaxed);
            }
            Err(e) => {
                metrics.failed.fetch_add(1, Relaxed);
                tracing::error!(key = %bite.key, start = bite.start, error = %e, "BITE LOST: no NATS and the spool refused it");
            }
        }
    }
    metrics.snapshot()
}
