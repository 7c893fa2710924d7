//! What the engine does with front's messages: offers, trickled candidates, leaves; telling
//! a new front what it takes over; and retiring a worker nobody connected to.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use rtc::peer_connection::transport::RTCIceCandidateInit;
use tokio::sync::mpsc::UnboundedReceiver;

use super::peer::NegotiationError;
use super::{Engine, Input, RETIRE_MAX, RETIRE_QUIET, panic_text};
use crate::wire::ipc::{Adoption, ToFront, ToWorker};
use crate::wire::signal::ErrorCode;

impl Engine {
    /// The worker stops by itself while front may still be sending it offers: it refuses
    /// them (`unavailable`, so the client offers again and gets a fresh worker) until front
    /// has been quiet for [`RETIRE_QUIET`], so that no offer is left unanswered when the
    /// process goes (front would take that for a crash).
    pub(super) async fn retire(&mut self, front: &mut UnboundedReceiver<Input>) {
        let until = tokio::time::Instant::now() + RETIRE_MAX;
        loop {
            let quiet = (tokio::time::Instant::now() + RETIRE_QUIET).min(until);
            let input = tokio::select! {
                input = front.recv() => input,
                _ = tokio::time::sleep_until(quiet) => return,
            };
            match input {
                Some(Input::Front(ToWorker::Offer { session, .. })) => {
                    let _ = self.to_front.send(ToFront::Rejected {
                        session,
                        code: ErrorCode::Unavailable,
                        message: "this conversation's worker is stopping (nobody connected to \
                                  it); offer again"
                            .into(),
                    });
                }
                Some(Input::Front(ToWorker::Shutdown) | Input::FrontGone) | None => return,
                Some(_) => {}
            }
        }
    }

    /// One input from the link to front; `Some(why)` when the engine must stop.
    pub(super) fn on_input(
        &mut self,
        input: Option<Input>,
        orphaned: &mut Option<Instant>,
    ) -> Option<String> {
        match input {
            Some(Input::Front(ToWorker::Shutdown)) => return Some("shutdown requested".into()),
            Some(Input::Front(msg)) => self.on_front(msg),
            Some(Input::FrontGone) => *orphaned = Some(Instant::now()),
            Some(Input::FrontBack) => {
                *orphaned = None;
                self.introduce();
            }
            None => return Some("the link to front ended".into()),
        }
        None
    }

    /// Tells a new front what it takes over: the sessions, then their current slots, members
    /// and speakers, and the counters, as if nothing had happened (for the clients, nothing has).
    pub(super) fn introduce(&mut self) {
        let sessions = self
            .room
            .members()
            .map(|(session, identity)| (session, identity.clone()))
            .collect();
        let _ = self.to_front.send(ToFront::Hello {
            conversation: self.conversation.clone(),
            generation: self.generation,
            pid: std::process::id(),
            adopted: Some(Adoption {
                sessions,
                uptime_ms: self.started.elapsed().as_millis() as u64,
                stats: self.stats(),
            }),
        });
        self.room.announce();
        self.drain_room_events();
    }

    pub(super) fn on_front(&mut self, msg: ToWorker) {
        match msg {
            ToWorker::Offer {
                session,
                identity,
                sdp,
            } => {
                tracing::info!(%identity, %session, "offer");
                // A new offer replaces the session's connection.
                self.end_session(session, None);
                // The offer is the client's text, parsed deep inside `rtc`: a panic there
                // refuses this offer and nothing else.
                let negotiated = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.negotiate(session, identity, sdp)
                }))
                .unwrap_or_else(|panic| {
                    self.panics += 1;
                    tracing::error!(%session, "answering the offer panicked: {}", panic_text(&panic));
                    // Whatever it had set up for the session goes.
                    self.end_session(session, None);
                    Err(NegotiationError::new(
                        ErrorCode::Internal,
                        "the offer could not be answered (internal error)",
                    ))
                });
                if let Err(e) = negotiated {
                    tracing::info!(%session, "offer rejected: {}", e.message);
                    let _ = self.to_front.send(ToFront::Rejected {
                        session,
                        code: e.code,
                        message: e.message,
                    });
                }
            }
            ToWorker::Ice { session, candidate } => {
                let Some(&key) = self.sessions.get(&session) else {
                    return;
                };
                let init = match serde_json::from_str::<RTCIceCandidateInit>(&candidate) {
                    Ok(init) => init,
                    Err(e) => {
                        tracing::debug!(%session, "unreadable remote candidate: {e}");
                        return;
                    }
                };
                self.guarded(key, |engine| {
                    let Some(peer) = engine.peers.get_mut(&key) else {
                        return;
                    };
                    if let Err(e) = peer.pc.add_remote_candidate(init) {
                        tracing::debug!(%session, "remote candidate refused: {e}");
                    }
                    engine.drive(key);
                });
                self.bury();
            }
            ToWorker::Leave { session } => self.end_session(session, None),
            ToWorker::Shutdown => {}
            ToWorker::Init { .. } => tracing::warn!("ignoring a second Init"),
        }
    }
}
