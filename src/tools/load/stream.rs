//! What one incoming slot stream delivered to a test or load client: packets, bytes, who
//! sent them (probe tags and counters), sequence gaps, timestamps going backwards, waits and
//! one-way delays. The full (webrtc crate) and the light (`rtc`) client both count with
//! [`StreamStats::record`], so their reports mean the same.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rtc::rtp;

use super::probe::{now_micros, parse_probe_ref};

/// What one incoming stream (one slot) delivered.
#[derive(Clone, Debug, Default)]
pub struct StreamStats {
    pub mid: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    /// Packets per sender tag.
    pub from: HashMap<String, u64>,
    /// Sequence numbers that were not previous+1.
    pub seq_gaps: u64,
    /// Sequence numbers skipped by the forward jumps among those: packets the receiver
    /// counts as lost (when nothing arrives late).
    pub seq_missing: u64,
    /// Timestamps that went backwards.
    pub ts_backwards: u64,
    pub markers: u64,
    pub first_at: Option<Instant>,
    /// When the latest packet arrived, and the longest wait between two packets.
    pub last_at: Option<Instant>,
    pub max_gap: Duration,
    /// One-way delay samples (µs), send → receive, capped in number.
    pub latency_us: Vec<u32>,
    /// Per sender tag, the lowest and highest probe counter seen: with `from`, how many of
    /// that sender's packets in between never arrived.
    pub counters: HashMap<String, (u32, u32)>,
    /// Sequence number and timestamp of the newest packet.
    pub last: Option<(u16, u32)>,
}

impl StreamStats {
    /// Counts one arrived packet of this stream: sequence gaps, timestamps going backwards,
    /// the wait since the previous one, and (for a probe) who sent it, its counter and its
    /// one-way delay (at most `latency_cap` samples). The full and the light client both
    /// count with this, so their reports mean the same.
    pub fn record(
        &mut self,
        header: &rtp::header::Header,
        payload: &[u8],
        now: Instant,
        latency_cap: usize,
    ) {
        self.packets += 1;
        self.bytes += payload.len() as u64;
        self.first_at.get_or_insert(now);
        if let Some(last) = self.last_at {
            self.max_gap = self.max_gap.max(now.duration_since(last));
        }
        self.last_at = Some(now);
        if header.marker {
            self.markers += 1;
        }
        if let Some((last_seq, last_ts)) = self.last {
            if header.sequence_number != last_seq.wrapping_add(1) {
                self.seq_gaps += 1;
                let jump = header.sequence_number.wrapping_sub(last_seq);
                if jump < 0x8000 {
                    self.seq_missing += u64::from(jump - 1);
                }
            }
            if (header.timestamp.wrapping_sub(last_ts) as i32) < 0 {
                self.ts_backwards += 1;
            }
        }
        self.last = Some((header.sequence_number, header.timestamp));
        let Some((tag, sent, counter)) = parse_probe_ref(payload) else {
            return;
        };
        // Looked up before inserting: a tag is allocated once per sender, not per packet.
        match self.counters.get_mut(tag) {
            Some((lo, hi)) => {
                *lo = (*lo).min(counter);
                *hi = (*hi).max(counter);
            }
            None => {
                self.counters.insert(tag.to_string(), (counter, counter));
            }
        }
        match self.from.get_mut(tag) {
            Some(n) => *n += 1,
            None => {
                self.from.insert(tag.to_string(), 1);
            }
        }
        if self.latency_us.len() < latency_cap {
            self.latency_us
                .push(now_micros().saturating_sub(sent).min(u32::MAX as u64) as u32);
        }
    }
}
