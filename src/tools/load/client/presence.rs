//! What the client was last told of its conversation's members and speakers. Kept apart from
//! [`Client::events`]: see [`super::super::ws::Heard`].

use super::{Client, lock};

impl Client {
    /// The latest `members` event: (userid, clientid) of everyone listed.
    pub fn members(&self) -> Option<Vec<(String, String)>> {
        let s = lock(&self.shared);
        let ev = s.heard.members.as_ref()?;
        Some(entries(&ev["members"], |m| {
            Some((m["userid"].as_str()?.into(), m["clientid"].as_str()?.into()))
        }))
    }

    /// The latest `speakers` event: (userid, level in dBov) of everyone listed.
    pub fn speakers(&self) -> Option<Vec<(String, i64)>> {
        let s = lock(&self.shared);
        let ev = s.heard.speakers.as_ref()?;
        Some(entries(&ev["speakers"], |m| {
            Some((m["userid"].as_str()?.into(), m["level"].as_i64()?))
        }))
    }
}

/// The entries of a JSON list `v` that `f` reads.
fn entries<T>(v: &serde_json::Value, f: impl Fn(&serde_json::Value) -> Option<T>) -> Vec<T> {
    v.as_array()
        .map(|a| a.iter().filter_map(f).collect())
        .unwrap_or_default()
}
