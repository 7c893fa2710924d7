//! Where a worker's finished bites go: remuxed to Ogg Opus (microseconds per bite) and handed
//! to the conversation's publisher with a call that never blocks, so the media path never
//! waits on NATS or the disk.

use crate::media::bite::CutBite;
use crate::media::ogg_opus::{self, BiteTags};
use crate::publish::publisher::PublisherHandle;
use crate::publish::spool::BiteRecord;
use crate::wire::identity::Identity;
use crate::wire::ids::ConversationId;

/// Where finished bites go: the conversation's publisher.
pub struct BiteSink {
    pub conversation: ConversationId,
    pub handle: PublisherHandle,
}

impl BiteSink {
    /// Remuxes a bite and hands it to the publisher (never blocks).
    pub(super) fn send(&self, identity: &Identity, bite: &CutBite) {
        let tags = BiteTags {
            conversation: &self.conversation,
            user: &identity.userid,
            client: &identity.clientid,
            start_unix_ms: bite.start_unix_ms,
        };
        match ogg_opus::write_bite(bite, &tags, ogg_opus::random_serial()) {
            Ok(data) => self.handle.send(BiteRecord {
                key: self.conversation.to_string(),
                user: identity.userid.clone(),
                client: identity.clientid.clone(),
                start: bite.start_unix_ms,
                duration_ms: bite.duration_ms(),
                data: data.into(),
            }),
            Err(e) => {
                self.handle.lost();
                tracing::error!(
                    %identity,
                    start = bite.start_unix_ms,
                    "BITE LOST: its Ogg file could not be written: {e}"
                );
            }
        }
    }
}

/// The wall clock in Unix milliseconds (the start of a bite).
pub(super) fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
