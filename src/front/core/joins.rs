//! How a client gets a session: its socket comes and goes, its join (permission already
//! granted by the shell) and its offer come in either order, and whichever comes second sends
//! the offer to the conversation's worker, starting one if the conversation has none. An offer
//! still waiting for its join keeps a bounded number of trickled candidates.
//!
//! A session ends when the worker reports it closed, when the client leaves (joins elsewhere,
//! re-offers, or drops its socket before the answer), or when the worker dies. A client that
//! closes its socket after the answer keeps its media, and can reconnect its socket later and
//! go on: it gets its current slots again.

use std::time::{Duration, Instant};

use super::table::{PENDING_ICE, PENDING_ICE_BYTES, Session, WorkerRecord};
use super::{Command, Core, JoinError, OfferState, Tally};
use crate::front::outbox::Out;
use crate::front::rates::over_rate;
use crate::wire::identity::Identity;
use crate::wire::ids::{ConversationId, Generation, SessionId};
use crate::wire::ipc::ToWorker;
use crate::wire::signal::{ErrorCode, Event, ReconnectReason, SignalError};

impl Core {
    /// A signalling socket (`socket`, the shell's id for it) for `who`. A second socket of the
    /// same client replaces the first (a reloaded tab); a new client beyond the user's limit is
    /// refused.
    pub fn attach_socket(
        &mut self,
        who: &Identity,
        socket: u64,
        now: Instant,
    ) -> Result<(), SignalError> {
        let others = self
            .clients
            .iter()
            .filter(|(id, c)| id.userid == who.userid && *id != who && c.active())
            .count();
        let limit = self.limits.max_sessions_per_user;
        if others >= limit {
            return Err(SignalError::new(
                ErrorCode::TooManySessions,
                format!(
                    "user {} already has {others} sessions (the limit is {limit})",
                    who.userid
                ),
            ));
        }
        let client = self.clients.entry(who.clone()).or_default();
        if let Some(old) = client.socket.replace(socket) {
            // What the old socket left unfinished is not the new socket's to receive.
            self.unlink_socket(who, old);
            self.drop_unanswered(who, now);
            self.commands.push(Command::Socket(
                old,
                Out::Fail(SignalError::new(
                    ErrorCode::TooManySessions,
                    "replaced by a newer connection of the same client",
                )),
            ));
        }
        // A client whose media went on while its socket was away (it dropped, or front was
        // restarted) picks up where it stands.
        let answered = self
            .clients
            .get(who)
            .and_then(|c| c.session)
            .and_then(|id| self.sessions.get(&id))
            .is_some_and(|s| s.answered);
        if let Some(slots) = self.clients.get(who).and_then(|c| c.last_slots.clone())
            && answered
        {
            self.send(who, Out::event(Event::Slots { slots }));
        }
        Ok(())
    }

    /// The socket closed. Media survives it once answered; anything unanswered is dropped.
    pub fn detach_socket(&mut self, who: &Identity, socket: u64, now: Instant) {
        let Some(client) = self.clients.get_mut(who) else {
            return;
        };
        if client.socket != Some(socket) {
            return;
        }
        client.socket = None;
        self.unlink_socket(who, socket);
        self.drop_unanswered(who, now);
        // The entry itself stays until housekeeping: it remembers the join and the offer
        // rate limit across a reconnect.
    }

    /// Forgets an offer still waiting for its join, and ends a session not yet answered.
    fn drop_unanswered(&mut self, who: &Identity, now: Instant) {
        let Some(client) = self.clients.get_mut(who) else {
            return;
        };
        client.forget_pending();
        let unanswered = client
            .session
            .and_then(|id| self.sessions.get(&id))
            .is_some_and(|s| !s.answered);
        if unanswered {
            self.end_session(who, now);
        }
    }

    /// What a join must pass before the shell asks the permissions service: the
    /// conversation is available (on a single host), the client's join rate, the user's rate of new
    /// conversations. A join that passes counts against the join rate.
    pub fn admit_join(
        &mut self,
        who: &Identity,
        conversation: &ConversationId,
        now: Instant,
    ) -> Result<(), JoinError> {
        // With several hosts the conversation may well go to another node: whether this one
        // takes it is for the placement (and the owner) to say, at the offer.
        if let Some(e) = self
            .unavailable(conversation, now)
            .filter(|_| !self.cluster)
        {
            return Err(JoinError::Unavailable(e.message));
        }
        // Each join costs a request to the permissions service, which must not feel our
        // callers' floods.
        let per_minute = self.limits.joins_per_minute;
        let client = self.clients.entry(who.clone()).or_default();
        if let Some(retry_after) = over_rate(&mut client.recent_joins, per_minute, now) {
            let message = format!("more than {per_minute} joins in a minute");
            tracing::info!(%who, "join refused: {message}");
            return Err(JoinError::RateLimited {
                message,
                retry_after,
            });
        }
        client.recent_joins.push_back(now);
        if let Some((message, retry_after)) =
            self.new_conversation_limited(&who.userid, conversation, now)
        {
            tracing::info!(%who, %conversation, "join refused: {message}");
            return Err(JoinError::RateLimited {
                message,
                retry_after,
            });
        }
        Ok(())
    }

    /// Moves `who` into `conversation` (permission granted); sends its waiting offer, if any.
    pub fn join(&mut self, who: &Identity, conversation: &ConversationId, now: Instant) {
        let client = self.clients.entry(who.clone()).or_default();
        if client.conversation.as_ref() != Some(conversation) {
            // A relayed session is in the client's previous conversation.
            let elsewhere = client.relay.is_some()
                || client
                    .session
                    .and_then(|id| self.sessions.get(&id))
                    .is_some_and(|s| s.conversation != *conversation);
            if elsewhere {
                self.end_session(who, now);
                self.send(
                    who,
                    Out::event(Event::Reconnect {
                        reason: ReconnectReason::ConversationChanged,
                    }),
                );
            }
        }
        let Some(client) = self.clients.get_mut(who) else {
            return;
        };
        client.conversation = Some(conversation.clone());
        client.joined_at = Some(now);
        tracing::info!(%who, %conversation, "joined");
        client.join_covers_offer = true;
        if let Some((sdp, _)) = client.pending_offer.take() {
            client.join_covers_offer = false;
            self.dispatch(who, sdp, now);
        }
    }

    /// What an offer must pass before the shell may ask the permissions service: the offer
    /// rate. Returns the conversation whose permission the offer needs checked, if any: none
    /// without a join (the join's check will cover it), nor for the first offer within
    /// `JOIN_TIMEOUT_MS` of its join, which rides on the join's own check. An older answer
    /// of the permissions service is not trusted (access may have been removed since).
    pub fn admit_offer(
        &mut self,
        who: &Identity,
        now: Instant,
    ) -> Result<Option<ConversationId>, SignalError> {
        let Some(c) = self.clients.get_mut(who) else {
            return Ok(None);
        };
        if let Some(e) = c.offer_rate_refusal(self.limits.offers_per_minute, now) {
            return Err(e);
        }
        let fresh = c
            .joined_at
            .is_some_and(|t| now.duration_since(t) <= self.limits.join_timeout);
        if std::mem::take(&mut c.join_covers_offer) && fresh {
            Ok(None)
        } else {
            Ok(c.conversation.clone())
        }
    }

    /// The permissions service refused `who` in `conversation`: its session there ends and
    /// its join is forgotten.
    pub fn forbidden(&mut self, who: &Identity, conversation: &ConversationId, now: Instant) {
        if self
            .clients
            .get(who)
            .is_some_and(|c| c.conversation.as_ref() == Some(conversation))
        {
            self.end_session(who, now);
            if let Some(c) = self.clients.get_mut(who) {
                c.conversation = None;
                c.joined_at = None;
            }
        }
    }

    /// An offer from the client's socket.
    pub fn offer(
        &mut self,
        who: &Identity,
        sdp: String,
        now: Instant,
    ) -> Result<OfferState, SignalError> {
        let per_minute = self.limits.offers_per_minute;
        let client = self.clients.entry(who.clone()).or_default();
        if let Some(e) = client.offer_rate_refusal(per_minute, now) {
            return Err(e);
        }
        client.recent_offers.push_back(now);
        if client.conversation.is_some() {
            // An offer admitted while its join was still being checked rides on that join:
            // the join's credit is used up, so the next offer is checked afresh.
            client.join_covers_offer = false;
            self.dispatch(who, sdp, now);
            Ok(OfferState::Dispatched)
        } else {
            let until = now + self.limits.join_timeout;
            client.pending_offer = Some((sdp, until));
            Ok(OfferState::WaitingForJoin { until })
        }
    }

    /// Whether `who`'s offer still waits for its join past its deadline (it is then dropped,
    /// and the shell tells the client `join-timeout`).
    pub fn offer_expired(&mut self, who: &Identity, now: Instant) -> bool {
        match self.clients.get_mut(who) {
            Some(c)
                if c.pending_offer
                    .as_ref()
                    .is_some_and(|(_, until)| now >= *until) =>
            {
                c.forget_pending();
                true
            }
            _ => false,
        }
    }

    /// A trickled candidate from the client (None = end of candidates).
    pub fn ice(&mut self, who: &Identity, candidate: Option<String>) {
        let Some(candidate) = candidate else { return };
        let Some(client) = self.clients.get_mut(who) else {
            return;
        };
        if client.relay.is_some() {
            self.relay(who, crate::wire::relay::ToOwner::Ice { candidate });
            return;
        }
        match client
            .session
            .and_then(|id| self.sessions.get(&id).map(|s| (id, s)))
        {
            Some((session, s)) => {
                let generation = s.generation;
                if self
                    .workers
                    .get(&s.conversation)
                    .is_some_and(|w| w.generation == generation)
                {
                    self.tell_worker(generation, ToWorker::Ice { session, candidate });
                }
            }
            // The offer is still waiting for its join: keep a bounded number of candidates, and
            // bytes (a candidate may be as long as the frame limit).
            None if client.pending_ice.len() < PENDING_ICE
                && client.pending_ice_bytes + candidate.len() <= PENDING_ICE_BYTES =>
            {
                client.pending_ice_bytes += candidate.len();
                client.pending_ice.push(candidate);
            }
            None => {}
        }
    }

    /// Sends `who`'s offer to its conversation's worker (starting one if there is none): a
    /// new session, replacing its previous one.
    fn dispatch(&mut self, who: &Identity, sdp: String, now: Instant) {
        let Some(conversation) = self.clients.get(who).and_then(|c| c.conversation.clone()) else {
            return;
        };
        // A re-offer replaces the previous peer connection.
        self.end_session(who, now);
        if self.cluster && !self.workers.contains_key(&conversation) {
            self.park(who, conversation, sdp);
            return;
        }
        self.dispatch_here(who, conversation, sdp, now);
    }

    /// Sends `who`'s offer to `conversation`'s worker on this node, starting one if there is
    /// none.
    pub(super) fn dispatch_here(
        &mut self,
        who: &Identity,
        conversation: ConversationId,
        sdp: String,
        now: Instant,
    ) {
        if let Some(e) = self.unavailable(&conversation, now) {
            self.send(who, Out::Fail(e));
            return;
        }
        if let Some((message, _)) = self.new_conversation_limited(&who.userid, &conversation, now) {
            let e = SignalError::new(ErrorCode::RateLimited, message);
            self.send(who, Out::Fail(e));
            return;
        }
        let session = SessionId(self.next_id());
        let generation = match self.workers.get_mut(&conversation) {
            Some(w) => {
                w.empty_since = None;
                w.generation
            }
            None => self.spawn(who, &conversation, now),
        };
        self.tell_worker(
            generation,
            ToWorker::Offer {
                session,
                identity: who.clone(),
                sdp,
            },
        );
        let Some(client) = self.clients.get_mut(who) else {
            return;
        };
        client.pending_ice_bytes = 0;
        let candidates = std::mem::take(&mut client.pending_ice);
        client.session = Some(session);
        client.last_slots = None;
        for candidate in candidates {
            self.tell_worker(generation, ToWorker::Ice { session, candidate });
        }
        self.sessions.insert(
            session,
            Session {
                who: who.clone(),
                conversation,
                generation,
                answered: false,
                dispatched_at: now,
            },
        );
        self.count(Tally::Offer);
    }

    /// Starts a worker for `conversation`, after the crash backoff if it crashed lately.
    fn spawn(&mut self, who: &Identity, conversation: &ConversationId, now: Instant) -> Generation {
        // A conversation this user starts (a restart after a crash is not a new one).
        if !self.crashes.contains_key(conversation) {
            self.new_conversations
                .entry(who.userid.clone())
                .or_default()
                .push_back(now);
        }
        let policy = &self.policy;
        let delay = self
            .crashes
            .get_mut(conversation)
            .map_or(Duration::ZERO, |h| h.backoff(now, policy));
        let generation = Generation(self.next_id());
        self.count(Tally::WorkerSpawned);
        self.commands.push(Command::Spawn {
            conversation: conversation.clone(),
            generation,
            delay,
        });
        self.workers
            .insert(conversation.clone(), WorkerRecord::new(generation, now));
        generation
    }

    /// Why `conversation` takes no join or offer now, if it does not: not while front drains
    /// (for a conversation that has no worker yet), nor past `MAX_WORKERS`, nor while it cools
    /// down from a crash loop.
    pub fn unavailable(&self, conversation: &ConversationId, now: Instant) -> Option<SignalError> {
        let has_worker = self.workers.contains_key(conversation);
        if self.draining && !has_worker {
            return Some(SignalError::new(
                ErrorCode::Unavailable,
                "this server is draining and takes no new conversations; try again shortly",
            ));
        }
        // Worker processes, those still stopping included: MAX_WORKERS bounds the processes.
        let workers = self.workers.len() + self.retiring.len();
        let max = self.limits.max_workers;
        if !has_worker && workers >= max {
            return Some(SignalError::new(
                ErrorCode::Unavailable,
                format!(
                    "this server runs as many conversations as it may ({workers}, MAX_WORKERS={max}) and takes no new one; try again later"
                ),
            ));
        }
        let left = self.crashes.get(conversation)?.unavailable_for(now)?;
        Some(SignalError::new(
            ErrorCode::Unavailable,
            format!(
                "conversation {conversation} is unavailable: its worker crashed {} times within {} s; try again in {} s",
                self.policy.loop_crashes,
                self.policy.window.as_secs(),
                left.as_secs() + 1
            ),
        ))
    }

    /// Why `userid` may not start `conversation` now, and when it may: it has no worker yet
    /// (a restart after a crash or `ctl restart` does not count) and the user has started
    /// `NEW_CONVERSATIONS_PER_MINUTE` conversations within the last minute.
    fn new_conversation_limited(
        &mut self,
        userid: &str,
        conversation: &ConversationId,
        now: Instant,
    ) -> Option<(String, Duration)> {
        if self.workers.contains_key(conversation) || self.crashes.contains_key(conversation) {
            return None;
        }
        let recent = self.new_conversations.get_mut(userid)?;
        let limit = self.limits.new_conversations_per_minute;
        let retry_after = over_rate(recent, limit, now)?;
        Some((
            format!(
                "user {userid} has started {} new conversations within a minute (the limit is {limit}, NEW_CONVERSATIONS_PER_MINUTE); try again in {} s",
                recent.len(),
                retry_after.as_secs() + 1
            ),
            retry_after,
        ))
    }
}
