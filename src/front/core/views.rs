//! Read-only answers from the core, for `/healthz`, `/metrics`, `ctl workers`, startup's
//! wait for adoption, and the demo page: nothing here changes the state or queues a command.

use std::time::Instant;

use super::Core;
use crate::front::conversation::WorkerState;
use crate::wire::admin::WorkerRow;
use crate::wire::ids::{ConversationId, Generation};
use crate::wire::stats::WorkerStats;

impl Core {
    /// Clients counted as sessions: with a socket or a session.
    pub fn client_count(&self) -> usize {
        self.clients.values().filter(|c| c.active()).count()
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// What this node carries, as it tells the cluster: workers and sessions.
    pub fn load(&self) -> (usize, usize) {
        (self.workers.len(), self.sessions.len())
    }

    /// The conversations whose worker here serves (not one being stopped): what this node
    /// holds in the cluster's placement.
    pub fn serving(&self) -> Vec<ConversationId> {
        self.workers
            .iter()
            .filter(|(_, w)| w.state != WorkerState::Stopping)
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// How many conversations have a worker.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Whether `conversation` has a worker (running or starting).
    pub fn has_worker(&self, conversation: &ConversationId) -> bool {
        self.workers.contains_key(conversation)
    }

    /// How many of `generations` have been taken back.
    pub fn adopted_of(&self, generations: &[Generation]) -> usize {
        generations
            .iter()
            .filter(|g| self.adopted.contains(g))
            .count()
    }

    /// Counters of the running workers and the total of those that exited.
    pub fn worker_stats(&self) -> (Vec<WorkerStats>, WorkerStats) {
        let mut running: Vec<WorkerStats> =
            self.workers.values().map(|w| w.stats.clone()).collect();
        running.extend(self.retiring.values().cloned());
        (running, self.retired.clone())
    }

    /// Workers by state, and conversations unavailable after a crash loop.
    pub fn workers_by_state(&self, now: Instant) -> Vec<(&'static str, u64)> {
        let mut counts = [
            (WorkerState::Starting.as_str(), 0u64),
            (WorkerState::Running.as_str(), 0),
            (WorkerState::Stopping.as_str(), self.retiring.len() as u64),
            ("unavailable", 0),
        ];
        for w in self.workers.values() {
            match w.state {
                WorkerState::Starting => counts[0].1 += 1,
                WorkerState::Running => counts[1].1 += 1,
                WorkerState::Stopping => counts[2].1 += 1,
            }
        }
        counts[3].1 = self
            .crashes
            .values()
            .filter(|h| h.unavailable_for(now).is_some())
            .count() as u64;
        counts.to_vec()
    }

    /// Every worker as `ctl workers` shows it, without its `/proc` readings (the shell reads
    /// those after releasing the lock), sorted by conversation.
    pub fn worker_rows(&self, now: Instant) -> Vec<WorkerRow> {
        let mut rows: Vec<WorkerRow> = self
            .workers
            .iter()
            .map(|(name, w)| WorkerRow {
                conversation: name.to_string(),
                pid: w.pid,
                state: w.state.as_str().into(),
                members: self
                    .sessions
                    .values()
                    .filter(|s| s.generation == w.generation)
                    .count(),
                uptime_s: now.duration_since(w.started).as_secs_f64(),
                restarts: self.crashes.get(name).map_or(0, |h| h.restarts),
                cpu_s: 0.0,
                rss_kib: 0,
            })
            .collect();
        rows.sort_by(|a, b| a.conversation.cmp(&b.conversation));
        rows
    }

    /// The sockets of every client in `conversation`'s call (the demo page's broadcasts):
    /// joined and with a session, so its offer has come. Not before: a seed-era client (raw
    /// SDP offer) understands no frame but its answer, and is known to be one only by its offer.
    #[cfg(feature = "demo")]
    pub fn sockets_in(&self, conversation: &ConversationId) -> Vec<u64> {
        self.clients
            .values()
            .filter(|c| c.conversation.as_ref() == Some(conversation) && c.session.is_some())
            .filter_map(|c| c.socket)
            .collect()
    }
}
