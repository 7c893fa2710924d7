//! Typed ids. They are all small integers on the wire, and mixing them up (a session id
//! where a worker generation was meant) compiles silently when they are bare `u64`s.

use serde::{Deserialize, Serialize};

/// Front's handle for one peer connection in a worker. A new offer from the same client gets
/// a new id, so a late message about the old connection can never be mistaken for the new.
/// Inside the worker's room the session is also the *member* id.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SessionId(pub u64);

/// One incarnation of a conversation's worker. A restarted worker has a new generation, so
/// what the old one said after it was replaced is recognised and dropped.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Generation(pub u64);

macro_rules! display_as_number {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}
display_as_number!(SessionId, Generation);
