//! Who is in the conversation and who is talking: the room's `members` and `speakers` events.
//!
//! A voice app's UI shows both, and a listener hears only the K loudest speakers on its slots,
//! so it cannot work either out from its own media. The room knows both: its members (from the
//! answer to the leave) and the selector's speech decision and smoothed loudness, which are
//! the *checked* levels ([`super::super::audit`]), so a member that lies about its loudness is
//! no louder here than on the slots.
//!
//! - **members**: the full list, sorted by user then client id. A member is told at once,
//!   right after its answer; the others are told when someone joins or leaves, at most once
//!   per [`members_every`] (5 times a second in rooms up to 50, less often in bigger ones:
//!   each tell is a list of N to each of N members), so a burst of joins is one event.
//! - **speakers**: every member that sent speech within the selector's hold (0.8 s), loudest
//!   first, with its smoothed level in dBov rounded to a multiple of [`LEVEL_STEP_DB`] (3 dB,
//!   so a steady voice is not news every tick). Checked on the room's tick and told to every
//!   member when the list differs from the last one told, at most once per
//!   [`SPEAKERS_EVERY`] (5 times a second). A member that joins is told the last list at once
//!   when somebody is speaking.
//!
//! Both go to every member; front drops them for seed-era raw-SDP sockets.

use std::time::{Duration, Instant};

use super::{Room, RoomEvent};
use crate::wire::ids::SessionId;
use crate::wire::signal::{MemberInfo, SpeakerInfo};

/// The speakers event is told at most this often.
pub const SPEAKERS_EVERY: Duration = Duration::from_millis(200);
/// Speakers' levels are told rounded to a multiple of this many dB.
pub const LEVEL_STEP_DB: f32 = 3.0;
/// The members event is broadcast at most this often in rooms of up to 50 ...
const MEMBERS_EVERY: Duration = Duration::from_millis(200);
/// ... and at most once per this much per member in bigger ones (2 s in a room of 500).
const MEMBERS_EVERY_PER_MEMBER: Duration = Duration::from_millis(4);

/// How long the members event waits after the last broadcast, in a room of `n`.
pub fn members_every(n: usize) -> Duration {
    MEMBERS_EVERY.max(MEMBERS_EVERY_PER_MEMBER.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX)))
}

/// What the room last told about its members and speakers.
#[derive(Debug, Default)]
pub(super) struct Presence {
    /// The members list's version, bumped on every join and leave; each member remembers the
    /// version it was told ([`super::Member::members_told`]).
    version: u64,
    /// When the members list was last broadcast.
    members_at: Option<Instant>,
    /// The speakers list as last told, and when.
    speakers: Vec<SpeakerInfo>,
    speakers_at: Option<Instant>,
}

/// A smoothed level (dB above silence, `127 - dBov`) as the speakers event tells it.
pub fn told_level(db_above_silence: f32) -> i16 {
    let dbov = db_above_silence - 127.0;
    let q = (dbov / LEVEL_STEP_DB).round() * LEVEL_STEP_DB;
    q.clamp(-127.0, 0.0) as i16
}

impl Room {
    /// Everyone in the room, sorted.
    fn member_list(&self) -> Vec<MemberInfo> {
        let mut list: Vec<MemberInfo> = self
            .members
            .values()
            .map(|m| MemberInfo {
                clientid: m.identity.clientid.clone(),
                userid: m.identity.userid.clone(),
            })
            .collect();
        list.sort();
        list
    }

    /// Who speaks at `now`, loudest first (ties by identity).
    fn speaker_list(&self, now: Instant) -> Vec<SpeakerInfo> {
        let mut list: Vec<SpeakerInfo> = self
            .members
            .iter()
            .filter(|(id, _)| self.selector.is_speaker(**id, now))
            .map(|(id, m)| SpeakerInfo {
                clientid: m.identity.clientid.clone(),
                level: told_level(self.selector.level_of(*id).unwrap_or(0.0)),
                userid: m.identity.userid.clone(),
            })
            .collect();
        list.sort_by(|a, b| {
            b.level
                .cmp(&a.level)
                .then_with(|| a.userid.cmp(&b.userid))
                .then_with(|| a.clientid.cmp(&b.clientid))
        });
        list
    }

    fn all_members(&self) -> Vec<SessionId> {
        let mut to: Vec<SessionId> = self.members.keys().copied().collect();
        to.sort();
        to
    }

    /// `session` has just joined (its answer is out): it is told the members, and who is
    /// speaking if anybody is, at once. The others are behind now, and told by
    /// [`Room::tell_members`].
    pub(super) fn presence_joined(&mut self, session: SessionId) {
        self.presence.version += 1;
        let members = self.member_list();
        let version = self.presence.version;
        if let Some(m) = self.members.get_mut(&session) {
            m.members_told = version;
        }
        self.events.push_back(RoomEvent::Members {
            to: vec![session],
            members,
        });
        if !self.presence.speakers.is_empty() {
            self.events.push_back(RoomEvent::Speakers {
                to: vec![session],
                speakers: self.presence.speakers.clone(),
            });
        }
    }

    /// A member has left: the others are behind.
    pub(super) fn presence_left(&mut self, now: Instant) {
        self.presence.version += 1;
        self.tell_members(now);
    }

    /// Tells the members that have not heard the current list, unless the last broadcast was
    /// less than [`members_every`] ago (then a later call does).
    pub(super) fn tell_members(&mut self, now: Instant) {
        let version = self.presence.version;
        if self.members.values().all(|m| m.members_told == version) {
            return;
        }
        let every = members_every(self.members.len());
        if self
            .presence
            .members_at
            .is_some_and(|at| now.saturating_duration_since(at) < every)
        {
            return;
        }
        self.presence.members_at = Some(now);
        let mut to: Vec<SessionId> = Vec::new();
        for (id, m) in &mut self.members {
            if m.members_told != version {
                m.members_told = version;
                to.push(*id);
            }
        }
        to.sort();
        let members = self.member_list();
        self.events.push_back(RoomEvent::Members { to, members });
    }

    /// Tells every member who speaks, when that changed since the last tell and that was at
    /// least [`SPEAKERS_EVERY`] ago.
    pub(super) fn tell_speakers(&mut self, now: Instant) {
        if self
            .presence
            .speakers_at
            .is_some_and(|at| now.saturating_duration_since(at) < SPEAKERS_EVERY)
        {
            return;
        }
        let speakers = self.speaker_list(now);
        if speakers == self.presence.speakers {
            return;
        }
        self.presence.speakers_at = Some(now);
        self.presence.speakers.clone_from(&speakers);
        let to = self.all_members();
        if !to.is_empty() {
            self.events.push_back(RoomEvent::Speakers { to, speakers });
        }
    }

    /// Queues the members and speakers lists for every member again (a new front taking the
    /// conversation over).
    pub(super) fn announce_presence(&mut self) {
        let version = self.presence.version;
        for m in self.members.values_mut() {
            m.members_told = version;
        }
        let to = self.all_members();
        if to.is_empty() {
            return;
        }
        self.events.push_back(RoomEvent::Members {
            to: to.clone(),
            members: self.member_list(),
        });
        if !self.presence.speakers.is_empty() {
            self.events.push_back(RoomEvent::Speakers {
                to,
                speakers: self.presence.speakers.clone(),
            });
        }
    }
}
