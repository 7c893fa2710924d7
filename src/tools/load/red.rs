//! The test client's RED (RFC 2198, payload type 63, as Chromium offers it): unpacking what
//! arrives as RED for the stream statistics, and checking that each packet's redundancy is
//! the probe right before its own.

use bytes::Bytes;
use rtc::rtp;

use super::probe::parse_probe_ref;
use crate::media::red;

/// The RED payload type the client offers.
pub use crate::worker::peer::RED_PT;

/// What arrived as RED.
#[derive(Debug, Default, Clone, Copy)]
pub struct Received {
    pub packets: u64,
    /// Packets whose redundant block was the same sender's probe numbered one before.
    pub with_previous: u64,
}

impl Received {
    /// The primary (Opus) payload of a RED packet, counting it; `None` for a packet that is
    /// not RED.
    pub fn primary(&mut self, pkt: &rtp::Packet) -> Option<Bytes> {
        if pkt.header.payload_type != RED_PT {
            return None;
        }
        let mut blocks = red::unpack(&pkt.payload).ok()?;
        let primary = blocks.pop()?;
        self.packets += 1;
        let probe =
            |b: &[u8]| parse_probe_ref(b).map(|(tag, _, counter)| (tag.to_owned(), counter));
        if let (Some(last), Some((tag, counter))) = (blocks.last(), probe(&primary.data))
            && probe(&last.data) == Some((tag, counter.wrapping_sub(1)))
        {
            self.with_previous += 1;
        }
        Some(primary.data)
    }
}
