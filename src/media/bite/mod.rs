//! The bite cutter: turns one speaker's received Opus RTP packets into *bites*, the utterances
//! that are stored and transcribed (SPEC §5).
//!
//! The Go predecessor published one "bite" per RTP packet with a one-second `start`, so keys
//! collided and nothing was playable (SPEC §8). Here a bite opens at speech onset (the first
//! packet the caller marks as speech, with the same rule the slot selector uses) and closes once
//! no speech packet has *arrived* for `silence` (600 ms by default), or when it reaches
//! `max_len` of media time (10 s by default), in which case the next bite continues with the
//! very next packet, starting exactly where the previous one ended. Silence is measured in
//! arrival time, not media time, so a speaker who stops sending altogether (mute, DTX without
//! comfort packets) still gets the bite closed by [`BiteCutter::tick`].
//!
//! It is a pure state machine in the str0m style: packets and time go in
//! ([`BiteCutter::handle_packet`], [`BiteCutter::tick`], [`BiteCutter::finish`]), bites come out
//! of [`BiteCutter::poll_bite`], and [`BiteCutter::poll_timeout`] says when to tick next. It owns
//! no clock, no socket and no task; the caller passes the arrival [`Instant`] and the Unix time
//! in milliseconds that corresponds to it, so a bite's wall-clock `start` is computed without a
//! clock inside and tests are deterministic.
//!
//! The network is not trusted: packets are lost, duplicated, reordered, wrap their 16-bit
//! sequence numbers and 32-bit timestamps, and streams restart. Sequence numbers and timestamps
//! are extended to 64 bits on one internal media clock that keeps increasing across stream
//! restarts, so bites of one speaker never overlap in media time. Packets a decoder would reject
//! are dropped before they can spoil a stored file. Nothing here panics on any input.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::opus;

/// Samples per millisecond at the Opus clock rate of 48 kHz.
const SAMPLES_PER_MS: u64 = 48;

/// How far behind the newest packet (in sequence numbers) a reordered packet is still
/// accepted: 64 packets, about 1.3 s of 20 ms packets, more than any jitter buffer holds.
pub const REORDER_WINDOW: u64 = 64;

/// A sequence number jump larger than this, either way, is a new stream rather than loss or
/// reordering: 1000 packets are 20 s of 20 ms audio, and a gap that long closes a bite anyway.
const MAX_SEQ_JUMP: u64 = 1_000;

/// How much further the media clock may advance than the arrival clock between two packets
/// before the stream counts as restarted: one second of jitter and sender bursts.
const TS_SLACK_SAMPLES: u64 = 48_000;

/// This many packets in a row that are too old to place are taken as a stream restart whose
/// sequence numbers happen to lie just below the old ones (a backstop: a restart usually comes
/// with a new SSRC or a timestamp jump).
const LATE_RUN_RESTART: u32 = 16;

/// When a bite is closed, and so why it ended where it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// No speech packet arrived for the configured silence.
    Silence,
    /// It reached the maximum length; the next bite continues it seamlessly.
    MaxLength,
    /// The sender's stream restarted (new SSRC, or its sequence numbers or timestamps jumped).
    StreamRestart,
    /// [`BiteCutter::finish`]: the speaker left or the conversation ended.
    Finished,
}

/// Tunables of the cutter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutterConfig {
    /// Arrival time without a speech packet after which the open bite closes.
    pub silence: Duration,
    /// Maximum media length of one bite; longer speech continues in the next bite.
    pub max_len: Duration,
}

impl Default for CutterConfig {
    fn default() -> Self {
        CutterConfig {
            silence: Duration::from_millis(600),
            max_len: Duration::from_secs(10),
        }
    }
}

/// One received Opus RTP packet, as the cutter needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioPacket {
    /// RTP SSRC: a change means a new stream whose numbering has nothing to do with the old one.
    pub ssrc: u32,
    /// RTP sequence number.
    pub seq: u16,
    /// RTP timestamp, 48 kHz clock (RFC 7587).
    pub timestamp: u32,
    /// The Opus packet (the RTP payload, padding removed).
    pub payload: Bytes,
    /// Whether the caller judges this packet to carry speech (audio level or voice activity).
    pub speech: bool,
}

/// One packet of a cut bite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitePacket {
    /// Position of its first sample from the bite's start, in samples at 48 kHz. Lost or
    /// never-sent stretches show as gaps between one packet's end and the next one's offset.
    pub offset: u64,
    /// Its duration in samples at 48 kHz, from its TOC byte.
    pub samples: u32,
    /// The caller's speech flag.
    pub speech: bool,
    /// The Opus packet, valid by RFC 6716 §3.4.
    pub payload: Bytes,
}

impl BitePacket {
    /// Offset just past its last sample.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.samples)
    }
}

/// A finished bite: one speaker's utterance, ready to be written as Ogg Opus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutBite {
    /// Unix time in milliseconds of its first sample (before [`StartClock::unique`]).
    pub start_unix_ms: u64,
    /// Length in samples at 48 kHz: from its start to the end of its last speech packet.
    pub duration: u64,
    /// Its first sample on the cutter's internal media clock (48 kHz, extended, increasing
    /// across stream restarts). Only for ordering and diagnostics: not a wall-clock time.
    pub media_start: u64,
    /// Its packets in order, with strictly increasing, non-overlapping offsets; the last one is
    /// a speech packet ending at `duration`.
    pub packets: Vec<BitePacket>,
    /// Why it ended.
    pub end: EndReason,
    /// Whether it continues the previous bite (which ended at `MaxLength`) without a gap.
    pub continued: bool,
}

impl CutBite {
    /// Its length in whole milliseconds (rounded down).
    pub fn duration_ms(&self) -> u64 {
        self.duration / SAMPLES_PER_MS
    }
}

/// Counters of what the cutter did, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutterStats {
    /// Bites emitted.
    pub bites: u64,
    /// Packets dropped because they are not valid Opus.
    pub invalid: u64,
    /// Packets dropped because the same sequence number was already received.
    pub duplicate: u64,
    /// Packets dropped because they came after their place was emitted, or too far out of order.
    pub late: u64,
    /// Packets dropped because their media time overlaps a neighbour's.
    pub overlapping: u64,
    /// Stream restarts detected after the first packet.
    pub restarts: u64,
}

/// Makes bite starts unique and increasing within one conversation (SPEC §5), across speakers.
///
/// Consumers key bites by `(conversation, start)`, so two speakers starting in the same
/// millisecond must not collide: a start that is not after the previous one is moved to one
/// millisecond after it.
#[derive(Debug, Clone, Default)]
pub struct StartClock {
    last: Option<u64>,
}

impl StartClock {
    /// A clock that has handed out nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `max(start_ms, last + 1)`, remembered as the new last.
    pub fn unique(&mut self, start_ms: u64) -> u64 {
        let v = match self.last {
            Some(last) => start_ms.max(last.saturating_add(1)),
            None => start_ms,
        };
        self.last = Some(v);
        v
    }
}

/// A packet held in the open bite, placed on the extended media clock.
#[derive(Debug, Clone)]
struct Held {
    seq: u64,
    ts: u64,
    samples: u32,
    speech: bool,
    payload: Bytes,
}

impl Held {
    fn end(&self) -> u64 {
        self.ts + u64::from(self.samples)
    }
}

/// The bite being collected.
#[derive(Debug)]
struct OpenBite {
    /// Media time of offset 0: the first packet's timestamp, or the previous bite's end for a
    /// continuation.
    start_ts: u64,
    /// A continuation's start is pinned to the previous bite's end, so nothing may go before it.
    continued: bool,
    /// Media time whose Unix time is known...
    anchor_ts: u64,
    /// ...and that Unix time in milliseconds.
    anchor_unix_ms: u64,
    /// Ordered by sequence number, and therefore by media time.
    packets: Vec<Held>,
    last_speech_arrival: Instant,
}

impl OpenBite {
    /// Unix time in milliseconds of offset 0.
    fn start_unix_ms(&self) -> u64 {
        self.anchor_unix_ms
            .saturating_sub(self.anchor_ts.saturating_sub(self.start_ts) / SAMPLES_PER_MS)
    }
}

/// Where the current stream's numbering stands.
#[derive(Debug)]
struct StreamState {
    ssrc: u32,
    highest_seq: u64,
    highest_ts: u64,
    highest_arrival: Instant,
    /// Bit i set: sequence number `highest_seq - i` was received.
    seen: u64,
    late_run: u32,
}

/// What the numbering says about a packet.
enum Placement {
    Accept { seq: u64, ts: u64 },
    Duplicate,
    Late,
    Restart,
}

/// Cuts one speaker's packets into bites. See the module documentation.
#[derive(Debug)]
pub struct BiteCutter {
    config: CutterConfig,
    max_samples: u64,
    stream: Option<StreamState>,
    open: Option<OpenBite>,
    out: VecDeque<CutBite>,
    stats: CutterStats,
    /// Sequence number and media time of the end of the last emitted bite: nothing at or
    /// before them may enter a bite again, so bites never overlap.
    floor_seq: u64,
    floor_ts: u64,
    /// Highest extended values seen, from which a restarted stream's numbering begins.
    seq_high: u64,
    ts_high: u64,
}

/// Samples at 48 kHz in a duration, saturating.
fn samples_in(d: Duration) -> u64 {
    u64::try_from(d.as_micros() * u128::from(SAMPLES_PER_MS) / 1_000).unwrap_or(u64::MAX)
}

impl BiteCutter {
    /// A cutter with no open bite.
    pub fn new(config: CutterConfig) -> Self {
        BiteCutter {
            config,
            max_samples: samples_in(config.max_len),
            stream: None,
            open: None,
            out: VecDeque::new(),
            stats: CutterStats::default(),
            floor_seq: 0,
            floor_ts: 0,
            seq_high: 0,
            ts_high: 0,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> CutterConfig {
        self.config
    }

    /// Its counters.
    pub fn stats(&self) -> CutterStats {
        self.stats
    }

    /// Whether a bite is being collected.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Unix time in milliseconds of the open bite's start, if one is open. (A speech packet
    /// that arrives late from before the onset can still move it back a little.)
    pub fn open_start_unix_ms(&self) -> Option<u64> {
        self.open.as_ref().map(OpenBite::start_unix_ms)
    }

    /// The next finished bite, oldest first.
    pub fn poll_bite(&mut self) -> Option<CutBite> {
        self.out.pop_front()
    }

    /// When [`tick`](Self::tick) must be called at the latest: the open bite's silence deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let b = self.open.as_ref()?;
        b.last_speech_arrival.checked_add(self.config.silence)
    }

    /// Closes the open bite if no speech packet has arrived for the configured silence.
    pub fn tick(&mut self, now: Instant) {
        if let Some(b) = &self.open
            && now.saturating_duration_since(b.last_speech_arrival) >= self.config.silence
        {
            self.close(EndReason::Silence);
        }
    }

    /// Closes and emits the open bite because the speaker is gone: a bite in progress is
    /// stored, not dropped. A bite whose silence had already run out is closed as `Silence`.
    pub fn finish(&mut self, now: Instant) {
        self.tick(now);
        self.close(EndReason::Finished);
    }

    /// Takes one received packet. `now` is its arrival and `unix_ms` the Unix time in
    /// milliseconds at that arrival.
    pub fn handle_packet(&mut self, packet: AudioPacket, now: Instant, unix_ms: u64) {
        // The caller may tick late; a bite whose silence ran out must not swallow this packet.
        self.tick(now);
        let samples = match opus::validate(&packet.payload) {
            Ok(s) => s,
            Err(_) => {
                self.stats.invalid += 1;
                return;
            }
        };
        let (seq, ts) = match self.place(packet.ssrc, packet.seq, packet.timestamp, now) {
            Placement::Accept { seq, ts } => (seq, ts),
            Placement::Duplicate => {
                self.stats.duplicate += 1;
                return;
            }
            Placement::Late => {
                self.stats.late += 1;
                return;
            }
            Placement::Restart => {
                if self.stream.is_some() {
                    self.stats.restarts += 1;
                }
                self.close(EndReason::StreamRestart);
                self.new_stream(packet.ssrc, packet.seq, packet.timestamp, now)
            }
        };
        let held = Held {
            seq,
            ts,
            samples,
            speech: packet.speech,
            payload: packet.payload,
        };
        self.seq_high = self.seq_high.max(seq);
        self.ts_high = self.ts_high.max(held.end());
        if seq <= self.floor_seq || ts < self.floor_ts {
            // Its place was already emitted (or trimmed from an emitted bite).
            self.stats.late += 1;
            return;
        }
        self.add(held, now, unix_ms);
    }

    /// Starts numbering a new stream above everything seen so far, keeping the low bits equal
    /// to the wire values so later packets extend against them.
    fn new_stream(&mut self, ssrc: u32, seq: u16, ts: u32, now: Instant) -> (u64, u64) {
        let seq = (((self.seq_high >> 16) + 2) << 16) | u64::from(seq);
        let ts = (((self.ts_high >> 32) + 2) << 32) | u64::from(ts);
        self.stream = Some(StreamState {
            ssrc,
            highest_seq: seq,
            highest_ts: ts,
            highest_arrival: now,
            seen: 1,
            late_run: 0,
        });
        (seq, ts)
    }

    /// Extends the packet's numbering and classifies it.
    fn place(&mut self, ssrc: u32, seq: u16, ts: u32, now: Instant) -> Placement {
        let Some(st) = self.stream.as_mut() else {
            return Placement::Restart;
        };
        if st.ssrc != ssrc {
            return Placement::Restart;
        }
        // Nearest extension: the wrapping difference read as signed. The extended values never
        // come near zero (streams start at 2^16 and 2^32 and above), so nothing saturates.
        let seq_delta = i64::from(seq.wrapping_sub(st.highest_seq as u16) as i16);
        let ts_delta = i64::from(ts.wrapping_sub(st.highest_ts as u32) as i32);
        let seq = st.highest_seq.saturating_add_signed(seq_delta);
        let ts = st.highest_ts.saturating_add_signed(ts_delta);
        if seq > st.highest_seq {
            let ahead = seq - st.highest_seq;
            if ahead > MAX_SEQ_JUMP || ts < st.highest_ts {
                return Placement::Restart;
            }
            // Media time may run ahead of arrival time by jitter, not by minutes.
            let waited = samples_in(now.saturating_duration_since(st.highest_arrival));
            if ts - st.highest_ts > waited.saturating_add(TS_SLACK_SAMPLES) {
                return Placement::Restart;
            }
            st.seen = if ahead >= 64 {
                1
            } else {
                (st.seen << ahead) | 1
            };
            st.highest_seq = seq;
            st.highest_ts = ts;
            st.highest_arrival = now;
            st.late_run = 0;
            return Placement::Accept { seq, ts };
        }
        let behind = st.highest_seq - seq;
        if behind < REORDER_WINDOW && ts <= st.highest_ts {
            let bit = 1u64 << behind;
            if st.seen & bit != 0 {
                return Placement::Duplicate;
            }
            st.seen |= bit;
            return Placement::Accept { seq, ts };
        }
        if behind > MAX_SEQ_JUMP {
            return Placement::Restart;
        }
        // Too old to place, or older by number but newer by time (inconsistent).
        st.late_run += 1;
        if st.late_run >= LATE_RUN_RESTART {
            Placement::Restart
        } else {
            Placement::Late
        }
    }

    /// Puts a placed packet into the open bite, opening, splitting or ignoring as the rules say.
    fn add(&mut self, p: Held, now: Instant, unix_ms: u64) {
        // At most three rounds: a split leaves a continuation without speech, which the second
        // round extends or drops; after a drop the third round finds no bite.
        for _ in 0..3 {
            let Some(b) = self.open.as_mut() else {
                // No bite: only speech opens one; silence before an onset belongs to nobody.
                if p.speech {
                    self.open = Some(OpenBite {
                        start_ts: p.ts,
                        continued: false,
                        anchor_ts: p.ts,
                        // The packet arrives after its last sample was captured: its first
                        // sample is one packet duration earlier.
                        anchor_unix_ms: unix_ms
                            .saturating_sub(u64::from(p.samples) / SAMPLES_PER_MS),
                        packets: vec![p],
                        last_speech_arrival: now,
                    });
                }
                return;
            };
            let idx = b.packets.partition_point(|h| h.seq < p.seq);
            if b.packets.get(idx).is_some_and(|h| h.seq == p.seq) {
                self.stats.duplicate += 1;
                return;
            }
            let before_first = idx == 0 && !b.continued;
            if before_first {
                // Reordered before the onset. Only speech moves the start back; and not so far
                // that the bite would outgrow its maximum length.
                if !p.speech {
                    return;
                }
                let end = b.packets.last().map_or(p.end(), Held::end);
                if end.saturating_sub(p.ts) > self.max_samples {
                    self.stats.late += 1;
                    return;
                }
            }
            let lower = match idx.checked_sub(1).and_then(|i| b.packets.get(i)) {
                Some(prev) => prev.end(),
                None if b.continued => b.start_ts,
                None => 0,
            };
            let upper = b.packets.get(idx).map_or(u64::MAX, |next| next.ts);
            if p.ts < lower || p.end() > upper {
                self.stats.overlapping += 1;
                return;
            }
            let at_end = idx == b.packets.len();
            // Too long with this packet: end the bite at its last speech packet. A continuation
            // with no speech yet (possibly empty, when the packet lies beyond a gap) is dropped,
            // and the packet then starts afresh.
            if at_end && p.end().saturating_sub(b.start_ts) > self.max_samples {
                self.split();
                continue;
            }
            if before_first {
                b.start_ts = p.ts;
            }
            if p.speech && now > b.last_speech_arrival {
                b.last_speech_arrival = now;
            }
            b.packets.insert(idx, p);
            return;
        }
    }

    /// Ends the open bite at its last speech packet because the next packet would make it too
    /// long; what followed that speech packet carries over to a continuation starting exactly
    /// at its end.
    fn split(&mut self) {
        let Some(mut b) = self.open.take() else {
            return;
        };
        let Some(k) = b.packets.iter().rposition(|h| h.speech) else {
            // A continuation that never had speech: the utterance ended at the previous bite.
            return;
        };
        let rest = b.packets.split_off(k + 1);
        let last_speech_arrival = b.last_speech_arrival;
        if let Some((end_ts, end_unix_ms)) = self.emit(b, EndReason::MaxLength) {
            self.open = Some(OpenBite {
                start_ts: end_ts,
                continued: true,
                anchor_ts: end_ts,
                anchor_unix_ms: end_unix_ms,
                packets: rest,
                last_speech_arrival,
            });
        }
    }

    fn close(&mut self, reason: EndReason) {
        if let Some(b) = self.open.take() {
            self.emit(b, reason);
        }
    }

    /// Trims the bite after its last speech packet and queues it. Returns where it ended, in
    /// media time and in Unix milliseconds, or `None` if it held no speech.
    fn emit(&mut self, mut b: OpenBite, end: EndReason) -> Option<(u64, u64)> {
        let k = b.packets.iter().rposition(|h| h.speech)?;
        b.packets.truncate(k + 1);
        let last = b.packets.last()?;
        let (last_seq, end_ts) = (last.seq, last.end());
        let duration = end_ts.saturating_sub(b.start_ts);
        let start_unix_ms = b.start_unix_ms();
        let packets = b
            .packets
            .into_iter()
            .map(|h| BitePacket {
                offset: h.ts.saturating_sub(b.start_ts),
                samples: h.samples,
                speech: h.speech,
                payload: h.payload,
            })
            .collect();
        let bite = CutBite {
            start_unix_ms,
            duration,
            media_start: b.start_ts,
            packets,
            end,
            continued: b.continued,
        };
        let end_unix_ms = start_unix_ms.saturating_add(bite.duration_ms());
        self.floor_seq = self.floor_seq.max(last_seq);
        self.floor_ts = self.floor_ts.max(end_ts);
        self.stats.bites += 1;
        self.out.push_back(bite);
        Some((end_ts, end_unix_ms))
    }
}

#[cfg(test)]
mod tests;
