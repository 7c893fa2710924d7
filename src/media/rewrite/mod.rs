//! One outgoing slot stream: making a run of different speakers look like a
//! single continuous RTP stream.
//!
//! A listener's slot is negotiated once as one receive stream, but the
//! speaker feeding it changes over time. Forwarding each speaker's headers
//! unchanged would make the receiver see its SSRC, sequence numbers and
//! timestamps jump around; its jitter buffer would take a backwards jump for
//! late or reordered audio and discard or stall. So every packet routed to the
//! slot is rewritten onto the slot's own SSRC with:
//!
//! - sequence numbers that continue exactly where the last packet on the slot
//!   left off when the source changes (the SFU never makes a gap; a source's
//!   own losses still show as its own gaps), and that close up over the
//!   padding-only packets the SFU does not forward ([`SlotRewriter::skip`]),
//!   even when a loss comes just before one, and
//! - timestamps that always move forward across a switch, by the wall-clock
//!   pause converted to 48 kHz ticks and never less than one 20 ms frame, with
//!   the marker bit set on the first packet of the new source so the receiver
//!   treats it as the start of a talkspurt.
//!
//! Within one source the mapping is a fixed offset in wrapping arithmetic, so
//! the source's own 16-bit sequence and 32-bit timestamp wraps, losses and
//! reordering pass through untouched.
//!
//! Packets that would break those promises are dropped: anything from before
//! the current source's switch-in point (by sequence number, or by timestamp
//! for a bogus stream whose clock steps back), and stragglers from the source
//! just switched away from. Sans-I/O: headers and time in, headers out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::wire::ids::SessionId;

/// Identifies an incoming stream: the member and its SSRC (a member that changes SSRC is a new source).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub member: SessionId,
    pub ssrc: u32,
}

/// The header fields to send for one rewritten packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewritten {
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    pub marker: bool,
}

/// RTP clock rate of Opus (RFC 7587), whatever rate the codec actually runs at.
const CLOCK_RATE: u128 = 48_000;

/// The least a switch advances the timestamp: one 20 ms Opus frame, so the
/// new source's first packet never lands on top of the previous one's.
const MIN_SWITCH_TICKS: u32 = 960;

/// Cap on the pause-derived jump. Past 2^31 a 32-bit timestamp reads as a
/// step backwards in serial-number arithmetic; 2^30 (about 6 h) stays clear.
const MAX_SWITCH_TICKS: u32 = 1 << 30;

/// How long after a switch packets from the old source are taken for late
/// stragglers rather than a switch back. Bounded because after long enough
/// the old source's sequence numbers wrap round and a genuine return would
/// look old; network reordering is far shorter than this.
const STRAGGLER_WINDOW: Duration = Duration::from_secs(2);

/// How many skipped padding packets of the current source are remembered, to
/// number a late (reordered) packet from before them where it belongs. Chromium
/// sends its bandwidth probes in bursts of a few dozen; 64 covers about a
/// second of them, longer than any jitter buffer waits for a late packet.
const SKIPS_REMEMBERED: usize = 64;

/// Rewrites whatever source currently feeds one slot onto the slot's own stream.
pub struct SlotRewriter {
    ssrc: u32,
    first_seq: u16,
    first_ts: u32,
    /// What has gone out on the slot; None until the first packet.
    sent: Option<Sent>,
    current: Option<Current>,
    previous: Option<Previous>,
}

struct Sent {
    /// Highest sequence number and timestamp sent (reordered packets can go
    /// out after higher ones, so "last" would not do).
    top_seq: u16,
    top_ts: u32,
    /// Wall time of the most recent packet sent.
    at: Instant,
}

struct Current {
    key: SourceKey,
    /// Source to slot numbers for packets after every remembered skip: one
    /// less for each padding packet skipped since the switch-in.
    seq_offset: u16,
    /// The padding packets skipped most recently (extended numbers, rising):
    /// a late packet from before some of them moves down only by those before
    /// it, into the hole the SFU left for it.
    skipped: VecDeque<i64>,
    /// Packets before this (extended) number came after [`SKIPS_REMEMBERED`]
    /// more skips than are remembered; there is no telling their number, so
    /// they are dropped.
    skip_floor: i64,
    ts_offset: u32,
    /// The source's sequence numbers and timestamps extended to 64 bits (the
    /// bits above 16 / 32 count its rollovers), so "before the switch-in
    /// point" survives its wraps however long it stays in the slot.
    switch_in_seq: i64,
    top_seq: i64,
    switch_in_ts: i64,
    top_ts: i64,
}

struct Previous {
    key: SourceKey,
    top_seq: u16,
    left_at: Instant,
}

impl SlotRewriter {
    /// `ssrc` is the slot's own SSRC; `first_seq`/`first_ts` its random starting points.
    pub fn new(ssrc: u32, first_seq: u16, first_ts: u32) -> Self {
        SlotRewriter {
            ssrc,
            first_seq,
            first_ts,
            sent: None,
            current: None,
            previous: None,
        }
    }

    /// A packet from `source` (clock rate 48 kHz, Opus) that the selector routes to this slot.
    ///
    /// A source other than the current one starts a new run on the slot,
    /// except a packet from the source switched away from less than
    /// [`STRAGGLER_WINDOW`] ago that is not newer than what it already sent:
    /// that is a late straggler and is dropped. Also dropped (None): packets
    /// of the current source from before its switch-in point, by sequence
    /// number or by timestamp.
    pub fn rewrite(
        &mut self,
        source: SourceKey,
        seq: u16,
        ts: u32,
        marker: bool,
        now: Instant,
    ) -> Option<Rewritten> {
        let switching = self.current.as_ref().is_none_or(|c| c.key != source);
        if switching {
            if self.is_straggler(source, seq, now) {
                return None;
            }
            self.switch_to(source, seq, ts, now);
        }
        let cur = self.current.as_mut()?;

        let ext_seq = extend(cur.top_seq, u64::from(seq), 16);
        let ext_ts = extend(cur.top_ts, u64::from(ts), 32);
        if ext_seq < cur.switch_in_seq || ext_seq < cur.skip_floor || ext_ts < cur.switch_in_ts {
            return None;
        }
        cur.top_seq = cur.top_seq.max(ext_seq);
        cur.top_ts = cur.top_ts.max(ext_ts);
        // Skips after this packet (it is late) do not move it down.
        let later_skips = cur
            .skipped
            .iter()
            .rev()
            .take_while(|&&s| s > ext_seq)
            .count();

        let out = Rewritten {
            ssrc: self.ssrc,
            seq: seq
                .wrapping_add(cur.seq_offset)
                .wrapping_add(later_skips as u16),
            ts: ts.wrapping_add(cur.ts_offset),
            marker: marker || switching,
        };
        self.note_sent(out, now);
        Some(out)
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The selector took the current source off this slot. Whoever feeds it next, even the
    /// same source after a pause, starts a new run: continuing the old offset would turn
    /// every packet the source sent meanwhile into a gap (and after ~11 minutes its
    /// sequence numbers would wrap to "before the switch-in point" and all be dropped).
    pub fn vacate(&mut self, now: Instant) {
        if let Some(old) = self.current.take() {
            self.previous = Some(Previous {
                key: old.key,
                top_seq: (old.top_seq & 0xffff) as u16,
                left_at: now,
            });
        }
    }

    /// A packet of `source` that is not forwarded (padding only, no audio). When it is newer
    /// than anything the current source sent, every later packet moves down by one, so
    /// the slot shows no gap the SFU made; the numbers missing before it (upstream losses,
    /// or packets still on their way) keep their places, so a loss just before a padding
    /// packet still shows as the source's own gap, and a late packet fills its hole.
    ///
    /// A padding packet that is itself late (reordered behind a later packet) changes
    /// nothing: the packets after it are already out, so its number stays a gap.
    pub fn skip(&mut self, source: SourceKey, seq: u16) {
        if let Some(cur) = self.current.as_mut().filter(|c| c.key == source) {
            let ext = extend(cur.top_seq, u64::from(seq), 16);
            if ext > cur.top_seq {
                cur.top_seq = ext;
                cur.seq_offset = cur.seq_offset.wrapping_sub(1);
                if cur.skipped.len() == SKIPS_REMEMBERED
                    && let Some(oldest) = cur.skipped.pop_front()
                {
                    cur.skip_floor = oldest;
                }
                cur.skipped.push_back(ext);
            }
        }
    }

    fn is_straggler(&self, source: SourceKey, seq: u16, now: Instant) -> bool {
        self.previous.as_ref().is_some_and(|p| {
            p.key == source
                && now.saturating_duration_since(p.left_at) < STRAGGLER_WINDOW
                && !is_after(u64::from(seq), u64::from(p.top_seq), 16)
        })
    }

    fn switch_to(&mut self, source: SourceKey, seq: u16, ts: u32, now: Instant) {
        let (out_seq, out_ts) = match &self.sent {
            None => (self.first_seq, self.first_ts),
            Some(sent) => {
                let pause = ticks(now.saturating_duration_since(sent.at));
                let jump = pause.clamp(MIN_SWITCH_TICKS, MAX_SWITCH_TICKS);
                (sent.top_seq.wrapping_add(1), sent.top_ts.wrapping_add(jump))
            }
        };
        if let Some(old) = self.current.take() {
            self.previous = Some(Previous {
                key: old.key,
                // Low 16 bits of the extended number: the wire value.
                top_seq: (old.top_seq & 0xffff) as u16,
                left_at: now,
            });
        }
        self.current = Some(Current {
            key: source,
            seq_offset: out_seq.wrapping_sub(seq),
            skipped: VecDeque::new(),
            skip_floor: i64::MIN,
            ts_offset: out_ts.wrapping_sub(ts),
            switch_in_seq: i64::from(seq),
            top_seq: i64::from(seq),
            switch_in_ts: i64::from(ts),
            top_ts: i64::from(ts),
        });
    }

    fn note_sent(&mut self, out: Rewritten, now: Instant) {
        match &mut self.sent {
            None => {
                self.sent = Some(Sent {
                    top_seq: out.seq,
                    top_ts: out.ts,
                    at: now,
                });
            }
            Some(sent) => {
                if is_after(u64::from(out.seq), u64::from(sent.top_seq), 16) {
                    sent.top_seq = out.seq;
                }
                if is_after(u64::from(out.ts), u64::from(sent.top_ts), 32) {
                    sent.top_ts = out.ts;
                }
                sent.at = sent.at.max(now);
            }
        }
    }
}

/// Whether `a` comes after `b` in `bits`-bit serial-number arithmetic.
fn is_after(a: u64, b: u64, bits: u32) -> bool {
    let half = 1u64 << (bits - 1);
    let diff = a.wrapping_sub(b) & ((1u64 << bits) - 1);
    diff != 0 && diff < half
}

/// Extends a `bits`-bit wire value to the one nearest `reference`, an
/// already extended value: the usual rollover tracking, done as a signed
/// distance so reordering on either side of a wrap lands correctly.
fn extend(reference: i64, value: u64, bits: u32) -> i64 {
    let modulus = 1i64 << bits;
    let half = modulus / 2;
    let reference_low = reference.rem_euclid(modulus);
    let value = i64::try_from(value).unwrap_or(0).rem_euclid(modulus);
    let mut delta = value - reference_low;
    if delta >= half {
        delta -= modulus;
    } else if delta < -half {
        delta += modulus;
    }
    reference + delta
}

/// Wall time in 48 kHz ticks, saturating (the caller caps it anyway).
fn ticks(d: Duration) -> u32 {
    u32::try_from(d.as_nanos() * CLOCK_RATE / 1_000_000_000).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
