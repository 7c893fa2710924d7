//! The last packets of one slot stream toward a listener that negotiated NACK (RFC 4585
//! generic NACK), to resend what it says it lost (issue 19, point 3).
//!
//! Packets are kept as the listener got them (rewritten, RED-packed where it has RED), so
//! a resend is the very packet again, at its own number. The payload is shared with the
//! copy that went out (`Bytes`), not copied. A second and a half is kept: a NACK later than
//! that arrives after any jitter buffer has given up on the packet.

use std::collections::VecDeque;

use rtc::rtp;

/// Packets kept per slot: 1.5 s at 50 packets per second.
pub const KEPT: usize = 75;

#[derive(Debug, Default)]
pub struct SlotHistory {
    packets: VecDeque<rtp::Packet>,
}

impl SlotHistory {
    /// A packet sent on the slot.
    pub fn sent(&mut self, packet: &rtp::Packet) {
        if self.packets.len() == KEPT {
            self.packets.pop_front();
        }
        self.packets.push_back(packet.clone());
    }

    /// The packet sent with sequence number `seq`, if still kept.
    pub fn find(&self, seq: u16) -> Option<&rtp::Packet> {
        // Newest first: a NACK is about what was just sent.
        self.packets
            .iter()
            .rev()
            .find(|p| p.header.sequence_number == seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn packet(seq: u16) -> rtp::Packet {
        rtp::Packet {
            header: rtp::header::Header {
                sequence_number: seq,
                ..Default::default()
            },
            payload: Bytes::from(vec![seq as u8; 40]),
        }
    }

    #[test]
    fn keeps_the_last_second_and_a_half_sharing_the_bytes() {
        let mut h = SlotHistory::default();
        let first = packet(65_500);
        h.sent(&first);
        let kept = h.find(65_500).expect("kept");
        assert_eq!(
            kept.payload.as_ptr(),
            first.payload.as_ptr(),
            "the same bytes, not a copy"
        );
        for i in 1..KEPT as u16 + 10 {
            h.sent(&packet(65_500u16.wrapping_add(i)));
        }
        assert!(h.find(65_500).is_none(), "older than what is kept");
        let last = 65_500u16.wrapping_add(KEPT as u16 + 9);
        assert_eq!(h.find(last).map(|p| p.header.sequence_number), Some(last));
        assert!(h.find(last.wrapping_add(1)).is_none(), "never sent");
    }
}
