//! The probe payload loadgen and the test clients send: a well-formed 20 ms Opus packet that
//! carries who sent it, when, and its counter, so a listener can tell loss, order and
//! one-way latency per sender without decoding audio.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

/// The first byte is an Opus TOC byte (config 31: CELT fullband 20 ms, mono, one frame), so a
/// probe is a well-formed 20 ms Opus packet and the server cuts and publishes bites of probes
/// as it would of speech (what it decodes to is noise, which no test listens to).
const PROBE_MAGIC: &[u8; 2] = &[0xF8, b'W'];
pub const PROBE_SIZE: usize = 60;

/// Encodes a probe payload: magic, tag, send time (µs since the epoch), counter; padded to
/// [`PROBE_SIZE`] bytes like a 20 ms Opus frame.
pub fn probe_payload(tag: &str, counter: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(PROBE_SIZE);
    b.put_slice(PROBE_MAGIC);
    let tag = &tag.as_bytes()[..tag.len().min(40)];
    b.put_u8(tag.len() as u8);
    b.put_slice(tag);
    b.put_u64(now_micros());
    b.put_u32(counter);
    b.resize(PROBE_SIZE.max(b.len()), 0);
    b.freeze()
}

/// Reads a probe payload: (tag, send time µs, counter).
pub fn parse_probe(p: &[u8]) -> Option<(String, u64, u32)> {
    parse_probe_ref(p).map(|(tag, sent, counter)| (tag.to_string(), sent, counter))
}

/// [`parse_probe`] without copying the tag: what a receiver counting every packet uses.
pub fn parse_probe_ref(p: &[u8]) -> Option<(&str, u64, u32)> {
    if p.len() < 3 || &p[..2] != PROBE_MAGIC {
        return None;
    }
    let n = p[2] as usize;
    let tag = std::str::from_utf8(p.get(3..3 + n)?).ok()?;
    let rest = p.get(3 + n..3 + n + 12)?;
    let sent = u64::from_be_bytes(rest[..8].try_into().ok()?);
    let counter = u32::from_be_bytes(rest[8..12].try_into().ok()?);
    Some((tag, sent, counter))
}

pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_round_trip() {
        let p = probe_payload("alice", 42);
        assert_eq!(p.len(), PROBE_SIZE);
        let (tag, sent, n) = parse_probe(&p).unwrap();
        assert_eq!((tag.as_str(), n), ("alice", 42));
        assert!(now_micros() >= sent);
        assert!(parse_probe(b"xx").is_none());
    }
}
