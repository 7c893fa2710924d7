//! Panic containment: each connection's handling runs under `catch_unwind`, so a panic inside
//! `rtc` on one client's input ends that client's session and nothing else.

use std::panic::AssertUnwindSafe;

use super::{Engine, PeerKey};
use crate::wire::ipc::{CloseReason, ToFront};

impl Engine {
    /// Runs `f`, the handling of connection `key`, so that a panic inside it is this
    /// connection's alone: the connection is marked broken and its session ended by
    /// [`Engine::bury`] once the current pass is over. (The room may have been mid-update for
    /// this member; removing the member resets what it held.)
    pub(super) fn guarded(&mut self, key: PeerKey, f: impl FnOnce(&mut Engine)) {
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| f(self))) {
            // Forwards the room decided before the panic are not sent.
            self.forwards.clear();
            self.poison(key, panic_text(&panic));
        }
    }

    pub(super) fn poison(&mut self, key: PeerKey, why: String) {
        if let Some(peer) = self.peers.get_mut(&key) {
            peer.broken = true;
            self.poisoned.push((peer.session, why));
        }
    }

    /// Ends the sessions whose handling panicked; front is told (`CloseReason::Error`) and
    /// the client gets `reconnect`.
    pub(super) fn bury(&mut self) {
        while let Some((session, why)) = self.poisoned.pop() {
            self.panics += 1;
            tracing::error!(%session, "peer connection handling panicked ({why}); the session ends");
            let ended = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.end_session(session, Some(CloseReason::Error))
            }));
            if ended.is_err() {
                // The room itself failed removing the member: forget the session anyway.
                if let Some(key) = self.sessions.remove(&session) {
                    self.peers.remove(&key);
                }
                let _ = self.to_front.send(ToFront::Closed {
                    session,
                    reason: CloseReason::Error,
                });
            }
        }
    }
}

/// What a caught panic said.
pub(super) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
