//! The workers' side of front's shell: the supervisors' reports (ready, messages, gone, a
//! refused message) passed to the core with the time, housekeeping, drain, shutdown,
//! `ctl restart`, taking back the workers a previous front left running, and the views of
//! the workers for `/metrics` and `ctl`. The rules are the core's ([`super::core`]); what
//! stays here is what needs tokio: channels, supervisor tasks, the wait at shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::procfs;
use super::state::Front;
use super::supervisor::{self, Ending, Link, WorkerEvents};
use crate::wire::admin::WorkerRow;
use crate::wire::ids::{ConversationId, Generation};
use crate::wire::ipc::{Adoption, ToFront, ToWorker};
use crate::wire::stats::WorkerStats;

/// How the supervisors report to front: what their worker said, and when it is gone.
impl WorkerEvents for Front {
    fn ready(&self, conversation: &ConversationId, generation: Generation, pid: u32) {
        self.with_core(|core| core.worker_ready(conversation, generation, pid));
    }

    fn message(&self, conversation: &ConversationId, generation: Generation, msg: ToFront) {
        self.with_core(|core| core.worker_message(conversation, generation, msg, Instant::now()));
    }

    fn gone(&self, conversation: &ConversationId, generation: Generation, ending: &Ending) {
        let mut shell = self.lock();
        // Whatever its worker could not publish is published now, or retried later.
        if let Some(bites) = &self.bites {
            bites.replay(conversation);
        }
        shell
            .core
            .worker_gone(conversation, generation, ending, Instant::now());
        self.execute(&mut shell);
        shell.links.remove(&generation);
    }

    fn refused(
        &self,
        conversation: &ConversationId,
        generation: Generation,
        msg: ToWorker,
        size: usize,
    ) {
        self.with_core(|core| {
            core.worker_refused(conversation, generation, &msg, size, Instant::now())
        });
    }
}

impl Front {
    /// Periodic housekeeping (see [`super::core::Core::housekeeping`]), then forgets the
    /// supervisor tasks that have ended.
    pub fn housekeeping(&self, now: Instant) {
        self.with_core(|core| core.housekeeping(now));
        let mut tasks = self.supervisors();
        while tasks.try_join_next().is_some() {}
    }

    /// Takes no new conversations from now on; [`Front::drained`] is notified once none
    /// is left. Returns how many are still going.
    pub fn drain(&self) -> usize {
        self.with_core(|core| core.drain())
    }

    /// Asks every worker to shut down and waits until each is reaped, at most `within`
    /// (each supervisor kills its worker if it does not exit in time, so this ends).
    /// Returns whether all were reaped in time.
    pub async fn shutdown_workers(&self, within: Duration) -> bool {
        self.with_core(|core| core.shutdown());
        let mut tasks = std::mem::take(&mut *self.supervisors());
        tokio::time::timeout(within, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_ok()
    }

    /// `ctl restart`: the conversation's worker is stopped at once and its clients told to
    /// reconnect, which starts a fresh one. Returns the pid of the worker being replaced.
    pub fn restart(&self, conversation: &ConversationId) -> Result<Option<u32>, String> {
        self.with_core(|core| core.restart(conversation))
    }

    /// Takes back a worker that outlived its front: its conversation, its sessions and their
    /// clients (who may reconnect their sockets and go on without a new offer).
    pub fn adopt(
        self: &Arc<Self>,
        conversation: ConversationId,
        generation: Generation,
        pid: u32,
        adoption: Adoption,
        link: Link,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        {
            let mut shell = self.lock();
            shell.links.insert(generation, tx);
            shell
                .core
                .adopt(&conversation, generation, pid, adoption, Instant::now());
            self.execute(&mut shell);
        }
        let events: Arc<dyn WorkerEvents> = self.clone();
        self.supervisors().spawn(supervisor::run_adopted(
            self.spec.clone(),
            events,
            conversation,
            generation,
            pid,
            link,
            rx,
        ));
    }

    /// How many of `generations` have been taken back.
    pub fn adopted_of(&self, generations: &[Generation]) -> usize {
        self.lock().core.adopted_of(generations)
    }

    /// How many conversations have a worker.
    pub fn worker_count(&self) -> usize {
        self.lock().core.worker_count()
    }

    /// Whether `conversation` has a worker (running or starting).
    pub fn has_worker(&self, conversation: &ConversationId) -> bool {
        self.lock().core.has_worker(conversation)
    }

    /// Counters of the running workers and the total of those that exited (for `/metrics`).
    pub fn worker_stats(&self) -> (Vec<WorkerStats>, WorkerStats) {
        self.lock().core.worker_stats()
    }

    /// Workers by state, and conversations unavailable after a crash loop (for `/metrics`).
    pub fn workers_by_state(&self) -> Vec<(&'static str, u64)> {
        self.lock().core.workers_by_state(Instant::now())
    }

    /// Every worker, as `ctl workers` shows it. Their `/proc` is read after the state lock is
    /// released: a few file reads per worker must not hold up every session of the host.
    pub fn worker_rows(&self) -> Vec<WorkerRow> {
        let mut rows = self.lock().core.worker_rows(Instant::now());
        for row in &mut rows {
            let sample = row.pid.and_then(procfs::proc_sample).unwrap_or_default();
            row.cpu_s = sample.cpu_s;
            row.rss_kib = sample.rss_kib;
        }
        rows
    }
}
