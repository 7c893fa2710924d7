//! Opus with redundancy (RFC 2198, `red/48000/2`) toward listeners that negotiate it
//! (issue 19, point 3).
//!
//! Each packet of a slot stream carries, before its own Opus frame, the previous packet(s)
//! of that same slot stream: a listener that loses one packet finds it in the next. The
//! redundancy is taken from what the slot actually sent, after rewriting, so it follows the
//! slot's own numbering and timeline across speaker switches: the packet before a switch
//! is an earlier packet of the same stream, whoever spoke it. A block goes in only when it
//! is the packet right before (by sequence number) and its timestamp offset and length fit
//! the RED header (14 and 10 bits); otherwise the packet goes out with what does fit.
//!
//! ```text
//!  redundant block header (4 bytes)        primary header (1 byte)
//!  |F=1| PT (7) | ts offset (14) | len (10) |   |F=0| PT (7) |   blocks' data, oldest first, primary last
//! ```
//!
//! Pure: packets in, payloads out.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use rtc::rtp;

/// Largest timestamp offset a block header can carry (14 bits): 341 ms at 48 kHz.
const MAX_TS_OFFSET: u32 = (1 << 14) - 1;
/// Largest block a header can carry (10 bits).
const MAX_BLOCK_LEN: usize = (1 << 10) - 1;
/// Most redundant packets per packet we send.
pub const MAX_DISTANCE: u8 = 3;

/// One block of a RED payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub payload_type: u8,
    /// How much earlier than the packet's own timestamp (0 for the primary).
    pub ts_offset: u32,
    pub data: Bytes,
}

/// Why a payload is not RED.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RedError {
    #[error("RED payload ends inside its headers")]
    ShortHeader,
    #[error("RED block lengths run past the payload")]
    ShortData,
}

/// Packs `redundant` (oldest first, with their offsets) and the primary into one payload.
pub fn pack(payload_type: u8, redundant: &[(u32, &Bytes)], primary: &[u8]) -> Bytes {
    let size = redundant.len() * 4 + 1 + redundant.iter().map(|r| r.1.len()).sum::<usize>();
    let mut out = BytesMut::with_capacity(size + primary.len());
    for (offset, data) in redundant {
        let word = (1u32 << 31)
            | (u32::from(payload_type & 0x7f) << 24)
            | ((offset & MAX_TS_OFFSET) << 10)
            | (data.len() as u32 & 0x3ff);
        out.put_u32(word);
    }
    out.put_u8(payload_type & 0x7f);
    for (_, data) in redundant {
        out.put_slice(data);
    }
    out.put_slice(primary);
    out.freeze()
}

/// The blocks of a RED payload, oldest first and the primary last, sharing its bytes.
pub fn unpack(payload: &Bytes) -> Result<Vec<Block>, RedError> {
    let mut heads = Vec::new();
    let mut at = 0usize;
    loop {
        let first = *payload.get(at).ok_or(RedError::ShortHeader)?;
        if first & 0x80 == 0 {
            heads.push((first & 0x7f, 0u32, None));
            at += 1;
            break;
        }
        let word = payload.get(at..at + 4).ok_or(RedError::ShortHeader)?;
        let word = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        heads.push((
            ((word >> 24) & 0x7f) as u8,
            (word >> 10) & MAX_TS_OFFSET,
            Some((word & 0x3ff) as usize),
        ));
        at += 4;
    }
    let mut blocks = Vec::with_capacity(heads.len());
    for (payload_type, ts_offset, len) in heads {
        let end = match len {
            Some(len) => at + len,
            None => payload.len(),
        };
        if end > payload.len() {
            return Err(RedError::ShortData);
        }
        blocks.push(Block {
            payload_type,
            ts_offset,
            data: payload.slice(at..end),
        });
        at = end;
    }
    Ok(blocks)
}

/// One slot stream's redundancy toward one listener: the last packets it sent.
#[derive(Debug)]
pub struct RedEncoder {
    /// The listener's RED payload type, and the Opus one its blocks carry.
    pub red_pt: u8,
    opus_pt: u8,
    distance: usize,
    /// (sequence number, timestamp, Opus payload) of the last packets sent, oldest first.
    recent: VecDeque<(u16, u32, Bytes)>,
}

impl RedEncoder {
    /// `distance`: how many earlier packets each packet repeats (at most [`MAX_DISTANCE`]).
    pub fn new(red_pt: u8, opus_pt: u8, distance: u8) -> RedEncoder {
        let distance = usize::from(distance.clamp(1, MAX_DISTANCE));
        RedEncoder {
            red_pt,
            opus_pt,
            distance,
            recent: VecDeque::with_capacity(distance + 1),
        }
    }

    /// The RED payload for the slot packet numbered `seq` with timestamp `ts`.
    pub fn encode(&mut self, seq: u16, ts: u32, opus: &Bytes) -> Bytes {
        let mut blocks: Vec<(u32, &Bytes)> = Vec::with_capacity(self.distance);
        // Walk back from the newest: only an unbroken run right before this packet.
        let mut want = seq.wrapping_sub(1);
        for (s, t, data) in self.recent.iter().rev() {
            let offset = ts.wrapping_sub(*t);
            if *s != want || offset == 0 || offset > MAX_TS_OFFSET || data.len() > MAX_BLOCK_LEN {
                break;
            }
            blocks.push((offset, data));
            want = want.wrapping_sub(1);
        }
        blocks.reverse();
        let out = pack(self.opus_pt, &blocks, opus);
        // A late packet (older than the newest sent) is sent but not remembered: the next
        // packet's predecessor is still the newest.
        let newer = self
            .recent
            .back()
            .is_none_or(|(s, ..)| (seq.wrapping_sub(*s) as i16) > 0);
        if newer {
            if self.recent.len() == self.distance {
                self.recent.pop_front();
            }
            self.recent.push_back((seq, ts, opus.clone()));
        }
        out
    }
}

/// A speaker's RED stream made plain Opus again, for the room (listeners without RED,
/// bites, the level audit): the primary of every packet, and before it each redundant block
/// whose packet never arrived, rebuilt at its own number and timestamp (its redundancy
/// repairs the uplink's loss).
#[derive(Debug)]
pub struct RedDecoder {
    red_pt: u8,
    opus_pt: u8,
    /// The newest sequence number seen, and which of the 64 before it arrived (bit k:
    /// `newest - 1 - k`).
    newest: Option<u16>,
    seen: u64,
    /// Packets rebuilt from redundancy, and RED payloads that did not parse.
    pub recovered: u64,
    pub malformed: u64,
}

impl RedDecoder {
    pub fn new(red_pt: u8, opus_pt: u8) -> RedDecoder {
        RedDecoder {
            red_pt,
            opus_pt,
            newest: None,
            seen: 0,
            recovered: 0,
            malformed: 0,
        }
    }

    /// Whether `seq` arrived (or was rebuilt) already; remembers it if not.
    fn arrived(&mut self, seq: u16) -> bool {
        let Some(newest) = self.newest else {
            self.newest = Some(seq);
            return false;
        };
        let ahead = seq.wrapping_sub(newest) as i16;
        if ahead > 0 {
            let shift = ahead as u32;
            self.seen = if shift >= 64 {
                0
            } else {
                (self.seen << shift) | (1 << (shift - 1))
            };
            self.newest = Some(seq);
            return false;
        }
        if ahead == 0 {
            return true;
        }
        let k = (-i32::from(ahead) - 1) as u32;
        if k >= 64 {
            return true; // too old to tell: taken as arrived, never rebuilt twice
        }
        let had = self.seen & (1 << k) != 0;
        self.seen |= 1 << k;
        had
    }

    /// What `pkt` stands for in plain Opus, oldest first; a packet that is not RED passes
    /// as it is, and a RED payload that does not parse is dropped (counted).
    pub fn decode(&mut self, pkt: rtp::Packet) -> Vec<rtp::Packet> {
        if pkt.header.payload_type != self.red_pt {
            self.arrived(pkt.header.sequence_number);
            return vec![pkt];
        }
        let Ok(mut blocks) = unpack(&pkt.payload) else {
            self.malformed += 1;
            return vec![];
        };
        let Some(primary) = blocks.pop() else {
            return vec![];
        };
        let seq = pkt.header.sequence_number;
        let primary_new = !self.arrived(seq);
        let mut out = Vec::with_capacity(blocks.len() + 1);
        // Redundant blocks are the packets right before, oldest first.
        let n = blocks.len() as u16;
        for (i, block) in blocks.into_iter().enumerate() {
            let block_seq = seq.wrapping_sub(n - i as u16);
            if block.payload_type != self.opus_pt
                || block.data.is_empty()
                || self.arrived(block_seq)
            {
                continue;
            }
            self.recovered += 1;
            let mut header = pkt.header.clone();
            header.sequence_number = block_seq;
            header.timestamp = pkt.header.timestamp.wrapping_sub(block.ts_offset);
            header.payload_type = self.opus_pt;
            header.marker = false;
            out.push(rtp::Packet {
                header,
                payload: block.data,
            });
        }
        if primary_new && primary.payload_type == self.opus_pt {
            let mut header = pkt.header;
            header.payload_type = self.opus_pt;
            out.push(rtp::Packet {
                header,
                payload: primary.data,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn packs_as_rfc_2198_draws_it() {
        let old = b("abc");
        let p = pack(111, &[(960, &old)], b"hello");
        // F=1, PT 111, offset 960, length 3; then F=0, PT 111.
        let word = (1u32 << 31) | (111 << 24) | (960 << 10) | 3;
        assert_eq!(&p[..4], &word.to_be_bytes());
        assert_eq!(p[4], 111);
        assert_eq!(&p[5..], b"abchello");
        let blocks = unpack(&p).expect("unpacks");
        assert_eq!(
            blocks,
            [
                Block {
                    payload_type: 111,
                    ts_offset: 960,
                    data: b("abc")
                },
                Block {
                    payload_type: 111,
                    ts_offset: 0,
                    data: b("hello")
                }
            ]
        );
    }

    #[test]
    fn primary_only_and_broken_payloads() {
        let p = pack(111, &[], b"x");
        assert_eq!(&p[..], &[111, b'x']);
        assert_eq!(unpack(&p).expect("unpacks").len(), 1);
        assert_eq!(unpack(&Bytes::new()), Err(RedError::ShortHeader));
        assert_eq!(
            unpack(&Bytes::from_static(&[0x80 | 111, 0, 4])),
            Err(RedError::ShortHeader)
        );
        // A block longer than what follows.
        let word = (1u32 << 31) | (111 << 24) | (960 << 10) | 50;
        let mut bad = word.to_be_bytes().to_vec();
        bad.extend_from_slice(&[111, 1, 2, 3]);
        assert_eq!(unpack(&Bytes::from(bad)), Err(RedError::ShortData));
    }

    #[test]
    fn each_packet_carries_the_ones_right_before_it() {
        let mut e = RedEncoder::new(63, 111, 2);
        let first = e.encode(10, 1000, &b("p10"));
        assert_eq!(
            unpack(&first).expect("red").len(),
            1,
            "nothing before the first"
        );
        e.encode(11, 1960, &b("p11"));
        let third = unpack(&e.encode(12, 2920, &b("p12"))).expect("red");
        let seen: Vec<(u32, &[u8])> = third.iter().map(|b| (b.ts_offset, &b.data[..])).collect();
        assert_eq!(
            seen,
            [(1920, &b"p10"[..]), (960, &b"p11"[..]), (0, &b"p12"[..])]
        );
        // A gap in what was sent (13 never went out): 14 carries nothing older than itself.
        let after_gap = unpack(&e.encode(14, 4840, &b("p14"))).expect("red");
        assert_eq!(after_gap.len(), 1);
    }

    #[test]
    fn offsets_and_lengths_that_do_not_fit_are_left_out() {
        let mut e = RedEncoder::new(63, 111, 1);
        e.encode(1, 0, &b("a"));
        // Half a second later (DTX): past the 14-bit offset.
        assert_eq!(unpack(&e.encode(2, 24_000, &b("b"))).expect("red").len(), 1);
        e.encode(3, 24_960, &Bytes::from(vec![0u8; 1100]));
        assert_eq!(
            unpack(&e.encode(4, 25_920, &b("d"))).expect("red").len(),
            1,
            "a block over 1023 bytes"
        );
        assert_eq!(unpack(&e.encode(5, 26_880, &b("e"))).expect("red").len(), 2);
    }

    #[test]
    fn a_late_packet_does_not_become_the_predecessor() {
        let mut e = RedEncoder::new(63, 111, 1);
        e.encode(100, 96_000, &b("100"));
        e.encode(101, 96_960, &b("101"));
        // 99 arrives late: sent with no redundancy, not remembered.
        assert_eq!(
            unpack(&e.encode(99, 95_040, &b("99"))).expect("red").len(),
            1
        );
        let next = unpack(&e.encode(102, 97_920, &b("102"))).expect("red");
        assert_eq!(next[0].data, b("101"));
    }

    fn red_packet(seq: u16, ts: u32, enc: &mut RedEncoder) -> rtp::Packet {
        let opus = Bytes::from(format!("opus{seq}"));
        rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                payload_type: 63,
                sequence_number: seq,
                timestamp: ts,
                ssrc: 7,
                ..Default::default()
            },
            payload: enc.encode(seq, ts, &opus),
        }
    }

    /// A speaker's RED (distance 2) with losses on the way: every lost packet whose
    /// successors arrived is rebuilt at its own number and timestamp, nothing is handed on
    /// twice, and the room gets plain Opus.
    #[test]
    fn a_speakers_red_repairs_its_uplink_losses() {
        let mut enc = RedEncoder::new(63, 111, 2);
        let mut dec = RedDecoder::new(63, 111);
        let sent: Vec<rtp::Packet> = (0..20u16)
            .map(|i| red_packet(65_530u16.wrapping_add(i), 960 * u32::from(i), &mut enc))
            .collect();
        // Lost: 3 (alone), 7 and 8 (two in a row), 15 16 17 (three: one beyond reach).
        let lost = [3usize, 7, 8, 15, 16, 17];
        let mut out = Vec::new();
        for (i, p) in sent.iter().enumerate() {
            if !lost.contains(&i) {
                out.extend(dec.decode(p.clone()));
            }
        }
        let seqs: Vec<u16> = out
            .iter()
            .map(|p| p.header.sequence_number.wrapping_sub(65_530))
            .collect();
        let want: Vec<u16> = (0..20).filter(|&i| i != 15).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted, want,
            "all but the one beyond distance 2, once each: {seqs:?}"
        );
        assert_eq!(dec.recovered, 5);
        for p in &out {
            let i = p.header.sequence_number.wrapping_sub(65_530);
            assert_eq!(p.header.payload_type, 111);
            assert_eq!(
                p.header.timestamp,
                960 * u32::from(i),
                "packet {i}'s own timestamp"
            );
            assert_eq!(
                p.payload,
                Bytes::from(format!("opus{}", 65_530u16.wrapping_add(i)))
            );
        }
        // A late duplicate, or a plain Opus packet from the same client, passes or is
        // dropped as it should.
        assert!(dec.decode(sent[5].clone()).is_empty(), "a duplicate");
        let mut plain = sent[19].clone();
        plain.header.payload_type = 111;
        plain.header.sequence_number = 65_530u16.wrapping_add(20);
        assert_eq!(dec.decode(plain).len(), 1);
        let mut junk = sent[0].clone();
        junk.payload = Bytes::from_static(&[0x80]);
        assert!(dec.decode(junk).is_empty());
        assert_eq!(dec.malformed, 1);
    }
}
