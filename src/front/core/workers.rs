//! The workers' lives as the core sees them: what their supervisors report (ready, messages,
//! gone, a refused message), crash accounting (a worker gone while it had members is a crash;
//! [`crate::front::conversation::CrashHistory`] decides the backoff and the crash-loop cool-down), housekeeping (idle
//! workers, unanswered offers, forgotten joins), drain, `ctl restart`, and taking back the
//! workers a previous front left running.

use std::time::{Duration, Instant};

use super::table::{Session, WorkerRecord};
use super::{Command, Core, OFFER_DEADLINE, Tally};
use crate::front::conversation::{Control, Ending, Kill, WorkerState};
use crate::front::outbox::Out;
use crate::wire::ids::{ConversationId, Generation, SessionId};
use crate::wire::ipc::{Adoption, ToFront, ToWorker};
use crate::wire::signal::{ErrorCode, Event, ReconnectReason, ServerFrame, SignalError};

impl Core {
    /// The worker record of `conversation`, if it is still generation `generation`: a report
    /// from a worker that has since been replaced concerns nobody.
    fn worker(
        &mut self,
        conversation: &ConversationId,
        generation: Generation,
    ) -> Option<&mut WorkerRecord> {
        self.workers
            .get_mut(conversation)
            .filter(|w| w.generation == generation)
    }

    /// The session `session` of worker `generation`, if it is still its client's current one.
    fn reported(&mut self, session: SessionId, generation: Generation) -> Option<&mut Session> {
        self.current(session)
            .map(|(s, _)| s)
            .filter(|s| s.generation == generation)
    }

    /// The worker connected, passed its checks and serves.
    pub fn worker_ready(
        &mut self,
        conversation: &ConversationId,
        generation: Generation,
        pid: u32,
    ) {
        if let Some(w) = self.worker(conversation, generation) {
            w.pid = Some(pid);
            if w.state == WorkerState::Starting {
                w.state = WorkerState::Running;
            }
        }
    }

    /// A message from a worker. Messages about sessions that have since ended are dropped.
    pub fn worker_message(
        &mut self,
        conversation: &ConversationId,
        generation: Generation,
        msg: ToFront,
        now: Instant,
    ) {
        if let (ToFront::Stats(s), Some(last)) = (&msg, self.retiring.get_mut(&generation)) {
            *last = s.clone();
            return;
        }
        let Some(w) = self.worker(conversation, generation) else {
            return;
        };
        let session = match msg {
            ToFront::Stats(s) => {
                w.stats = s;
                return;
            }
            ToFront::Ready { .. } | ToFront::Hello { .. } => return,
            ToFront::Answer { session, .. }
            | ToFront::Event { session, .. }
            | ToFront::Rejected { session, .. }
            | ToFront::Closed { session, .. } => session,
        };
        let Some(s) = self.reported(session, generation) else {
            return;
        };
        let who = s.who.clone();
        match msg {
            ToFront::Answer { sdp, .. } => {
                s.answered = true;
                self.send(&who, Out::Frame(ServerFrame::Answer { sdp }));
            }
            ToFront::Event { event, .. } => {
                if let (Event::Slots { slots }, Some(c)) = (&event, self.clients.get_mut(&who)) {
                    c.last_slots = Some(slots.clone());
                }
                self.send(&who, Out::event(event));
            }
            ToFront::Rejected { code, message, .. } => {
                self.close_session(session, now);
                self.send(&who, Out::Fail(SignalError::new(code, message)));
            }
            ToFront::Closed { reason, .. } => {
                tracing::info!(%who, %conversation, %session, "session closed: {}", reason.as_str());
                self.close_session(session, now);
                // Still signalling: the client can get its media back with a new offer.
                // (One that closed its connection itself knows, and is not told.)
                if let Some(reason) = reason.reconnect() {
                    self.send(&who, Out::event(Event::Reconnect { reason }));
                }
            }
            ToFront::Stats(_) | ToFront::Ready { .. } | ToFront::Hello { .. } => {}
        }
    }

    /// The worker process of `conversation` is gone. Its clients are told to reconnect; a
    /// worker that went while it had members is a crash (unless `ctl restart` asked for it).
    pub fn worker_gone(
        &mut self,
        conversation: &ConversationId,
        generation: Generation,
        ending: &Ending,
        now: Instant,
    ) {
        match ending {
            Ending::Killed(Kill::Heartbeat, _) => self.count(Tally::HeartbeatKill),
            Ending::Killed(Kill::OfferTimeout, _) => self.count(Tally::OfferTimeout),
            _ => {}
        }
        if let Some(last) = self.retiring.remove(&generation) {
            self.retired.add_counters(&last);
            self.notify_if_drained();
            return;
        }
        if self.worker(conversation, generation).is_none() {
            return;
        }
        let Some(w) = self.workers.remove(conversation) else {
            return;
        };
        self.release(conversation);
        self.retired.add_counters(&w.stats);
        let members: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.generation == generation)
            .map(|(id, _)| *id)
            .collect();
        let restarted = matches!(ending, Ending::Killed(Kill::Restart, _));
        self.account_ending(conversation, ending, restarted, !members.is_empty(), now);
        let reason = if restarted {
            ReconnectReason::WorkerRestarted
        } else {
            ReconnectReason::WorkerExited
        };
        for session in members {
            let current = self.current(session).is_some();
            let Some(s) = self.sessions.remove(&session) else {
                continue;
            };
            if !current {
                continue;
            }
            let Some(c) = self.clients.get_mut(&s.who) else {
                continue;
            };
            c.session = None;
            c.last_slots = None;
            self.send(&s.who, Out::event(Event::Reconnect { reason }));
            if self.clients.get(&s.who).is_some_and(|c| c.socket.is_none()) {
                self.clients.remove(&s.who);
            }
        }
        self.notify_if_drained();
    }

    /// Restarts and crashes of a worker that ended: a crash is a worker that went while it had
    /// members, and enough of them make a crash loop.
    fn account_ending(
        &mut self,
        conversation: &ConversationId,
        ending: &Ending,
        restarted: bool,
        had_members: bool,
        now: Instant,
    ) {
        let history = self.crashes.entry(conversation.clone()).or_default();
        if restarted {
            history.restarts += 1;
            self.count(Tally::WorkerRestart);
            tracing::info!(%conversation, "worker restarted: {ending}");
        } else if had_members {
            let looped = history.crashed(now, &self.policy);
            self.count(Tally::WorkerFailure);
            self.count(Tally::WorkerRestart);
            tracing::error!(%conversation, "worker exited with members: {ending}");
            if looped {
                self.count(Tally::CrashLoop);
                tracing::error!(
                    %conversation,
                    "crash loop: {} crashes within {:?}; the conversation is unavailable for {:?}",
                    self.policy.loop_crashes,
                    self.policy.window,
                    self.policy.cooldown
                );
            }
        }
    }

    /// A message too large for the worker's channel was not sent (issue 11, point 11): the
    /// client it came from gets `too-large` and the conversation goes on. A refused offer
    /// never reached the worker, so its session ends here; a refused candidate leaves the
    /// session's media as it is.
    pub fn worker_refused(
        &mut self,
        conversation: &ConversationId,
        generation: Generation,
        msg: &ToWorker,
        size: usize,
        now: Instant,
    ) {
        let (session, what, ends) = match msg {
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
        if self.worker(conversation, generation).is_none() {
            return;
        }
        let Some(who) = self.reported(session, generation).map(|s| s.who.clone()) else {
            return;
        };
        tracing::warn!(%who, %conversation, %session, "{what} of {size} bytes refused: too large for the worker's channel");
        if ends {
            self.close_session(session, now);
        }
        self.send(
            &who,
            Out::Fail(SignalError::new(
                ErrorCode::TooLarge,
                format!(
                    "the {what} is too large to pass on to the conversation ({size} bytes once encoded, the limit is {}); the conversation goes on without it",
                    crate::wire::frame::MAX_FRAME
                ),
            )),
        );
    }

    /// Periodic housekeeping: stop workers idle for `worker_idle`, kill workers that left an
    /// offer unanswered past the deadline, forget joins that no offer followed within
    /// `join_timeout`, and what the rates and crash histories no longer need.
    pub fn housekeeping(&mut self, now: Instant) {
        let idle = self.limits.worker_idle;
        let expired: Vec<ConversationId> = self
            .workers
            .iter()
            .filter(|(_, w)| {
                w.state != WorkerState::Stopping
                    && w.empty_since.is_some_and(|t| now.duration_since(t) >= idle)
                    && !self.has_members(w.generation)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            tracing::info!(conversation = name.as_str(), "worker idle, stopping it");
            self.retire(&name);
        }
        self.kill_hung(now);
        let join_timeout = self.limits.join_timeout;
        self.clients.retain(|_, c| {
            c.active()
                || c.joined_at
                    .is_some_and(|t| now.duration_since(t) < join_timeout)
                || c.recent_offers
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60))
        });
        let policy = &self.policy;
        self.crashes.retain(|_, h| !h.is_idle(now, policy));
        self.new_conversations.retain(|_, starts| {
            starts
                .back()
                .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60))
        });
        self.notify_if_drained();
    }

    /// A worker that has not answered an offer in time is hung: killed, and its end is
    /// handled as a crash (its clients are told to reconnect).
    fn kill_hung(&mut self, now: Instant) {
        let late: Vec<ConversationId> = self
            .sessions
            .values()
            .filter(|s| !s.answered && now.duration_since(s.dispatched_at) > OFFER_DEADLINE)
            .map(|s| s.conversation.clone())
            .collect();
        for conversation in late {
            if let Some(w) = self.workers.get_mut(&conversation)
                && w.state != WorkerState::Stopping
            {
                w.state = WorkerState::Stopping;
                let kill = Control::Kill(
                    Kill::OfferTimeout,
                    format!("did not answer an offer within {OFFER_DEADLINE:?}"),
                );
                self.commands.push(Command::Worker(w.generation, kill));
            }
        }
    }

    /// Takes no new conversations from now on; [`Command::Drained`] follows once none is
    /// left. Returns how many are still going.
    pub fn drain(&mut self) -> usize {
        self.draining = true;
        let left = self.workers.len();
        tracing::info!(conversations = left, "draining: no new conversations");
        self.notify_if_drained();
        left
    }

    /// Stops every worker: front is going away.
    pub fn shutdown(&mut self) {
        self.draining = true;
        let all: Vec<ConversationId> = self.workers.keys().cloned().collect();
        for conversation in all {
            self.retire(&conversation);
        }
    }

    /// `ctl restart`: the conversation's worker is killed at once and its clients told to
    /// reconnect, which starts a fresh one. Returns the pid of the worker being replaced.
    pub fn restart(&mut self, conversation: &ConversationId) -> Result<Option<u32>, String> {
        let w = self
            .workers
            .get_mut(conversation)
            .ok_or_else(|| format!("no worker for conversation {conversation:?}"))?;
        w.state = WorkerState::Stopping;
        let (generation, pid) = (w.generation, w.pid);
        let kill = Control::Kill(Kill::Restart, "restart requested by the operator".into());
        self.commands.push(Command::Worker(generation, kill));
        Ok(pid)
    }

    /// Takes back a worker that outlived its front: its conversation, its sessions and their
    /// clients (who may reconnect their sockets and go on without a new offer). A second
    /// worker for a conversation that already has one is told to stop. Returns whether it
    /// was taken.
    pub fn adopt(
        &mut self,
        conversation: &ConversationId,
        generation: Generation,
        pid: u32,
        adoption: Adoption,
        now: Instant,
    ) -> bool {
        self.adopted.insert(generation);
        if self.workers.contains_key(conversation) {
            // A new worker already serves it (the old one came back too late): the old one's
            // members reconnect to the new one.
            tracing::error!(
                %conversation,
                pid,
                "a second worker for this conversation came back; stopping it"
            );
            self.tell_worker(generation, ToWorker::Shutdown);
            return false;
        }
        let mut w = WorkerRecord::new(generation, now);
        w.pid = Some(pid);
        w.state = WorkerState::Running;
        w.started = now
            .checked_sub(Duration::from_millis(adoption.uptime_ms))
            .unwrap_or(now);
        w.stats = adoption.stats;
        if adoption.sessions.is_empty() {
            w.empty_since = Some(now);
        }
        let members = adoption.sessions.len();
        for (session, who) in adoption.sessions {
            let client = self.clients.entry(who.clone()).or_default();
            client.conversation = Some(conversation.clone());
            client.joined_at = Some(now);
            if let Some(old) = client.session.replace(session) {
                self.sessions.remove(&old);
            }
            self.sessions.insert(
                session,
                Session {
                    who,
                    conversation: conversation.clone(),
                    generation,
                    answered: true,
                    dispatched_at: now,
                },
            );
        }
        tracing::info!(
            %conversation,
            pid,
            sessions = members,
            "took back a running worker"
        );
        self.workers.insert(conversation.clone(), w);
        true
    }
}
