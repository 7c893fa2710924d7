//! The lives of the workers, as front's state sees them: what their supervisors report
//! (ready, messages, gone), crash accounting, housekeeping (idle workers, unanswered offers),
//! taking back the workers a previous front left running, `ctl` operations, drain and
//! shutdown. The state itself is in [`super::state`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::conversation::{Control, Conversation, CrashHistory, Kill, WorkerState};
use super::procfs;
use super::state::{Client, Front, Live, Out, current};
use super::supervisor::{self, Ending, Link, WorkerEvents};
use crate::wire::admin::WorkerRow;
use crate::wire::ids::{ConversationId, Generation};
use crate::wire::ipc::{Adoption, ToFront};
use crate::wire::signal::{Event, ReconnectReason, ServerFrame, SignalError};
use crate::wire::stats::WorkerStats;

/// How long a worker may take to answer an offer before it is killed as hung.
const OFFER_DEADLINE: Duration = Duration::from_secs(10);

/// How the supervisors report to front: what their worker said, and when it is gone.
impl WorkerEvents for Front {
    fn ready(&self, conversation: &ConversationId, generation: Generation, pid: u32) {
        let mut st = self.lock();
        if let Some(c) = current(&mut st.conversations, conversation, generation) {
            c.pid = Some(pid);
            if c.state == WorkerState::Starting {
                c.state = WorkerState::Running;
            }
        }
    }

    /// A message from a worker. Messages about sessions that have since ended are dropped.
    fn message(&self, conversation: &ConversationId, generation: Generation, msg: ToFront) {
        let mut st = self.lock();
        let st = &mut *st;
        if let (ToFront::Stats(s), Some(last)) = (&msg, st.retiring.get_mut(&generation)) {
            *last = s.clone();
            return;
        }
        let Some(conv) = current(&mut st.conversations, conversation, generation) else {
            return;
        };
        let session = match &msg {
            ToFront::Stats(s) => {
                conv.stats = s.clone();
                return;
            }
            ToFront::Ready { .. } | ToFront::Hello { .. } => return,
            ToFront::Answer { session, .. }
            | ToFront::Event { session, .. }
            | ToFront::Rejected { session, .. }
            | ToFront::Closed { session, .. } => *session,
        };
        let Some(who) = conv.sessions.get(&session).cloned() else {
            return;
        };
        let client = st.clients.get_mut(&who);
        let current = client
            .as_ref()
            .is_some_and(|c| c.session.as_ref().is_some_and(|l| l.id == session));
        let Some(c) = client.filter(|_| current) else {
            return;
        };
        match msg {
            ToFront::Answer { sdp, .. } => {
                if let Some(l) = c.session.as_mut() {
                    l.answered = true;
                }
                c.send(Out::Frame(ServerFrame::Answer { sdp }));
            }
            ToFront::Event { event, .. } => {
                if let Event::Slots { slots } = &event {
                    c.last_slots = Some(slots.clone());
                }
                c.send(Out::event(event));
            }
            ToFront::Rejected { code, message, .. } => {
                conv.remove_session(session, Instant::now());
                c.session = None;
                c.send(Out::Fail(SignalError::new(code, message)));
            }
            ToFront::Closed { reason, .. } => {
                tracing::info!(%who, %conversation, %session, "session closed: {}", reason.as_str());
                conv.remove_session(session, Instant::now());
                c.session = None;
                // Still signalling: the client can get its media back with a new offer.
                // (One that closed its connection itself knows, and is not told.)
                if let Some(reason) = reason.reconnect() {
                    c.send(Out::event(Event::Reconnect { reason }));
                }
            }
            ToFront::Stats(_) | ToFront::Ready { .. } | ToFront::Hello { .. } => {}
        }
    }

    /// The worker process of `conversation` is gone. Its clients are told to reconnect; a
    /// worker that went while it had members is a crash (unless `ctl restart` asked for it).
    fn gone(&self, conversation: &ConversationId, generation: Generation, ending: &Ending) {
        let mut st = self.lock();
        let st = &mut *st;
        // Whatever its worker could not publish is published now, or retried later.
        if let Some(bites) = &self.bites {
            bites.replay(conversation);
        }
        match ending {
            Ending::Killed(Kill::Heartbeat, _) => {
                self.metrics.heartbeat_kills.inc();
            }
            Ending::Killed(Kill::OfferTimeout, _) => {
                self.metrics.offer_timeouts.inc();
            }
            _ => {}
        }
        if let Some(last) = st.retiring.remove(&generation) {
            st.retired.add_counters(&last);
            self.notify_if_drained(st.conversations.is_empty());
            return;
        }
        if st
            .conversations
            .get(conversation)
            .is_none_or(|c| c.generation != generation)
        {
            return;
        }
        let Some(conv) = st.conversations.remove(conversation) else {
            return;
        };
        st.retired.add_counters(&conv.stats);
        let now = Instant::now();
        let history = st.crashes.entry(conversation.clone()).or_default();
        let restarted = matches!(ending, Ending::Killed(Kill::Restart, _));
        if restarted {
            history.restarts += 1;
            self.metrics.worker_restarts.inc();
            tracing::info!(%conversation, "worker restarted: {ending}");
        } else if !conv.sessions.is_empty() {
            self.metrics.worker_failures.inc();
            self.metrics.worker_restarts.inc();
            tracing::error!(%conversation, "worker exited with members: {ending}");
            if history.crashed(now, &self.crash_policy) {
                self.metrics.crash_loops.inc();
                tracing::error!(
                    %conversation,
                    "crash loop: {} crashes within {:?}; the conversation is unavailable for {:?}",
                    self.crash_policy.loop_crashes,
                    self.crash_policy.window,
                    self.crash_policy.cooldown
                );
            }
        }
        let reason = if restarted {
            ReconnectReason::WorkerRestarted
        } else {
            ReconnectReason::WorkerExited
        };
        for (session, who) in conv.sessions {
            if let Some(c) = st.clients.get_mut(&who)
                && c.session.as_ref().is_some_and(|l| l.id == session)
            {
                c.session = None;
                c.last_slots = None;
                c.send(Out::event(Event::Reconnect { reason }));
                if c.socket.is_none() {
                    st.clients.remove(&who);
                }
            }
        }
        self.notify_if_drained(st.conversations.is_empty());
    }

    /// A message too large for the worker's channel was not sent (issue 11, point 11): the
    /// client it came from gets `too-large` and the conversation goes on. A refused offer
    /// never reached the worker, so its session ends here; a refused candidate leaves the
    /// session's media as it is.
    fn refused(
        &self,
        conversation: &ConversationId,
        generation: Generation,
        msg: crate::wire::ipc::ToWorker,
        size: usize,
    ) {
        use crate::wire::ipc::ToWorker;
        let (session, what, ends) = match &msg {
            ToWorker::Offer { session, .. } => (*session, "offer", true),
            ToWorker::Ice { session, .. } => (*session, "ICE candidate", false),
            ToWorker::Init { .. } | ToWorker::Leave { .. } | ToWorker::Shutdown => {
                tracing::error!(
                    %conversation,
                    "a control message of {size} bytes was too large for the worker's channel"
                );
                return;
            }
        };
        let mut st = self.lock();
        let st = &mut *st;
        let Some(conv) = current(&mut st.conversations, conversation, generation) else {
            return;
        };
        let Some(who) = conv.sessions.get(&session).cloned() else {
            return;
        };
        let Some(c) = st
            .clients
            .get_mut(&who)
            .filter(|c| c.session.as_ref().is_some_and(|l| l.id == session))
        else {
            return;
        };
        tracing::warn!(%who, %conversation, %session, "{what} of {size} bytes refused: too large for the worker's channel");
        if ends {
            conv.remove_session(session, Instant::now());
            c.session = None;
        }
        c.send(Out::Fail(SignalError::new(
            crate::wire::signal::ErrorCode::TooLarge,
            format!(
                "the {what} is too large to pass on to the conversation ({size} bytes once encoded, the limit is {}); the conversation goes on without it",
                crate::wire::frame::MAX_FRAME
            ),
        )));
    }
}

impl Front {
    /// Periodic housekeeping: stop workers idle for `worker_idle`, kill workers that left an
    /// offer unanswered past the deadline, forget joins that no offer followed within
    /// `join_timeout`.
    pub fn housekeeping(&self, now: Instant) {
        let mut st = self.lock();
        let st = &mut *st;
        let idle = self.cfg.worker_idle;
        let expired: Vec<ConversationId> = st
            .conversations
            .iter()
            .filter(|(_, c)| {
                c.sessions.is_empty()
                    && c.state != WorkerState::Stopping
                    && c.empty_since.is_some_and(|t| now.duration_since(t) >= idle)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            tracing::info!(conversation = name.as_str(), "worker idle, stopping it");
            if let Some(c) = st.conversations.remove(&name) {
                st.retire(c);
            }
        }
        // A worker that has not answered an offer in time is hung: killed, and its end is
        // handled as a crash (its clients are told to reconnect).
        for c in st.clients.values() {
            if let Some(Live {
                conversation,
                answered: false,
                dispatched_at,
                ..
            }) = &c.session
                && now.duration_since(*dispatched_at) > OFFER_DEADLINE
                && let Some(conv) = st.conversations.get_mut(conversation)
                && conv.state != WorkerState::Stopping
            {
                conv.state = WorkerState::Stopping;
                let _ = conv.tx.send(Control::Kill(
                    Kill::OfferTimeout,
                    format!("did not answer an offer within {OFFER_DEADLINE:?}"),
                ));
            }
        }
        let join_timeout = self.cfg.join_timeout;
        st.clients.retain(|_, c| {
            c.active()
                || c.joined_at
                    .is_some_and(|t| now.duration_since(t) < join_timeout)
                || c.recent_offers
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60))
        });
        let policy = &self.crash_policy;
        st.crashes.retain(|_, h| !h.is_idle(now, policy));
        st.new_conversations.retain(|_, starts| {
            starts
                .back()
                .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60))
        });
        self.notify_if_drained(st.conversations.is_empty());
        self.reap_supervisors();
    }

    /// Forgets the supervisor tasks that have ended.
    fn reap_supervisors(&self) {
        let mut tasks = self.supervisors();
        while tasks.try_join_next().is_some() {}
    }

    /// Takes no new conversations from now on; [`Front::drained`] is notified once none
    /// is left. Returns how many are still going.
    pub fn drain(&self) -> usize {
        self.draining.store(true, Ordering::Relaxed);
        let left = self.lock().conversations.len();
        tracing::info!(conversations = left, "draining: no new conversations");
        self.notify_if_drained(left == 0);
        left
    }

    fn notify_if_drained(&self, empty: bool) {
        if empty && self.is_draining() {
            self.drained.notify_one();
        }
    }

    /// Asks every worker to shut down and waits until each is reaped, at most `within`
    /// (each supervisor kills its worker if it does not exit in time, so this ends).
    /// Returns whether all were reaped in time.
    pub async fn shutdown_workers(&self, within: Duration) -> bool {
        self.draining.store(true, Ordering::Relaxed);
        {
            let mut st = self.lock();
            let convs: Vec<Conversation> = st.conversations.drain().map(|(_, c)| c).collect();
            for c in convs {
                st.retire(c);
            }
        }
        let mut tasks = std::mem::take(&mut *self.supervisors());
        tokio::time::timeout(within, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_ok()
    }

    /// `ctl restart`: the conversation's worker is stopped at once and its clients told to
    /// reconnect, which starts a fresh one. Returns the pid of the worker being replaced.
    pub fn restart(&self, conversation: &ConversationId) -> Result<Option<u32>, String> {
        let mut st = self.lock();
        let conv = st
            .conversations
            .get_mut(conversation)
            .ok_or_else(|| format!("no worker for conversation {conversation:?}"))?;
        conv.state = WorkerState::Stopping;
        let _ = conv.tx.send(Control::Kill(
            Kill::Restart,
            "restart requested by the operator".into(),
        ));
        Ok(conv.pid)
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
        let now = Instant::now();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut st = self.lock();
        let st = &mut *st;
        if st.conversations.contains_key(&conversation) {
            // A new worker already serves it (the old one came back too late): the old one's
            // members reconnect to the new one.
            tracing::error!(
                %conversation,
                pid,
                "a second worker for this conversation came back; stopping it"
            );
            let _ = tx.send(Control::Send(crate::wire::ipc::ToWorker::Shutdown));
        } else {
            let mut conv = Conversation::new(generation, tx.clone(), now);
            conv.pid = Some(pid);
            conv.state = WorkerState::Running;
            conv.started = now
                .checked_sub(Duration::from_millis(adoption.uptime_ms))
                .unwrap_or(now);
            conv.stats = adoption.stats;
            if adoption.sessions.is_empty() {
                conv.empty_since = Some(now);
            }
            for (session, who) in adoption.sessions {
                conv.sessions.insert(session, who.clone());
                let client: &mut Client = st.clients.entry(who).or_default();
                client.conversation = Some(conversation.clone());
                client.joined_at = Some(now);
                client.session = Some(Live {
                    id: session,
                    conversation: conversation.clone(),
                    answered: true,
                    dispatched_at: now,
                });
            }
            tracing::info!(
                %conversation,
                pid,
                sessions = conv.sessions.len(),
                "took back a running worker"
            );
            st.conversations.insert(conversation.clone(), conv);
        }
        st.adopted.insert(generation);
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
        let st = self.lock();
        generations
            .iter()
            .filter(|g| st.adopted.contains(g))
            .count()
    }

    /// How many conversations have a worker.
    pub fn worker_count(&self) -> usize {
        self.lock().conversations.len()
    }

    /// Whether `conversation` has a worker (running or starting).
    pub fn has_worker(&self, conversation: &ConversationId) -> bool {
        self.lock().conversations.contains_key(conversation)
    }

    /// Counters of the running workers and the total of those that exited (for `/metrics`).
    pub fn worker_stats(&self) -> (Vec<WorkerStats>, WorkerStats) {
        let st = self.lock();
        let mut running: Vec<WorkerStats> =
            st.conversations.values().map(|c| c.stats.clone()).collect();
        running.extend(st.retiring.values().cloned());
        (running, st.retired.clone())
    }

    /// Workers by state, and conversations unavailable after a crash loop (for `/metrics`).
    pub fn workers_by_state(&self) -> Vec<(&'static str, u64)> {
        let st = self.lock();
        let now = Instant::now();
        let mut counts = [
            (WorkerState::Starting.as_str(), 0u64),
            (WorkerState::Running.as_str(), 0),
            (WorkerState::Stopping.as_str(), st.retiring.len() as u64),
            ("unavailable", 0),
        ];
        for c in st.conversations.values() {
            match c.state {
                WorkerState::Starting => counts[0].1 += 1,
                WorkerState::Running => counts[1].1 += 1,
                WorkerState::Stopping => counts[2].1 += 1,
            }
        }
        counts[3].1 = st
            .crashes
            .values()
            .filter(|h| h.unavailable_for(now).is_some())
            .count() as u64;
        counts.to_vec()
    }

    /// Every worker, as `ctl workers` shows it. Their `/proc` is read after the state lock is
    /// released: a few file reads per worker must not hold up every session of the host.
    pub fn worker_rows(&self) -> Vec<WorkerRow> {
        let mut rows: Vec<WorkerRow> = {
            let st = self.lock();
            st.conversations
                .iter()
                .map(|(name, c)| WorkerRow {
                    conversation: name.to_string(),
                    pid: c.pid,
                    state: c.state.as_str().into(),
                    members: c.sessions.len(),
                    uptime_s: c.started.elapsed().as_secs_f64(),
                    restarts: st
                        .crashes
                        .get(name)
                        .map_or(0, |h: &CrashHistory| h.restarts),
                    cpu_s: 0.0,
                    rss_kib: 0,
                })
                .collect()
        };
        for row in &mut rows {
            let sample = row.pid.and_then(procfs::proc_sample).unwrap_or_default();
            row.cpu_s = sample.cpu_s;
            row.rss_kib = sample.rss_kib;
        }
        rows.sort_by(|a, b| a.conversation.cmp(&b.conversation));
        rows
    }
}
