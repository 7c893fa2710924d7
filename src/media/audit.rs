//! Whether the loudness a member claims is the loudness of what it sends.
//!
//! Slot selection and bite cutting rank members by the RFC 6464 level their packets carry
//! ([`Loudness`]). That byte is the sender's word: a client that stamps 0 dBov on packets that
//! decode to silence would be the loudest member there is, take every listener's slots for
//! good and open bites non-stop. So the claim is checked against the audio, by decoding it
//! with libopus, and a claim the audio does not support is replaced by the decoded level.
//!
//! Decoding one packet costs about what forwarding one copy of it does (17 µs against 15–25 on
//! the benchmark machine), so decoding them all would add a tenth to a room of 10 and more to
//! rooms where few members are heard. A member is trusted until a check says otherwise
//! ("trust, but verify"):
//!
//! * **Quiet claims are believed**: a member that says it is quieter than speech
//!   ([`Loudness::is_speech`]) harms nobody but itself, and a silent (DTX) member costs nothing.
//! * **Trusted** members are checked with *runs* of [`RUN`] consecutive packets. A run starts
//!   with every talk spurt (the first speech claim after [`SPURT_GAP`] of none) and, within a
//!   spurt, at a random packet, on average one in [`SAMPLE_ONE_IN`], so a sender cannot tell
//!   which packets are looked at; it goes on through quiet claims, so it cannot be cut short.
//!   The decoder is never reset, but it has not heard the packets since the last check, so it
//!   reads low for a few frames: while a run lasts, each packet is credited with at most its
//!   decoded level plus a slack that shrinks with its place in the run ([`RUN_SLACK_DB`]), so a
//!   spurt's first packets win nothing unchecked and silence stays below speech. A run whose
//!   last packet claims more than that makes the member distrusted.
//! * **Distrusted** members have every packet decoded, with a warm decoder. A packet is credited
//!   with at most the decoded level plus [`STRIKE_TOLERANCE_DB`], or plus [`ONSET_SLACK_DB`]
//!   when the claim before it was not speech (Opus delays its output by 7–25 ms, so a word's
//!   first packet decodes quieter than it was said). A claim is *refused* (a strike) when it is
//!   louder than its own packet and the next one decode to, plus [`STRIKE_TOLERANCE_DB`]: the
//!   next packet is where a delayed onset's sound comes out. A member is trusted again after
//!   [`PAROLE`] without a strike.
//!
//! So a liar found out is credited with what it sends, give or take 10 dB (20 dB on a word's
//! first packet); before, in its check runs, with at most 25–35 dB more, which real Opus of
//! silence never turns into speech; and an honest member's claims stand.
//!
//! Decoding is bounded per room by a [`DecodeBudget`]: checks of trusted members may use all
//! of it, distrusted members only the upper half, so liars cannot starve the checks of
//! honest members. A packet that needs a decode the budget cannot pay for is credited as
//! silence (fail closed): a flood of liars silences the liars, never lets them through.
//!
//! The decoded level is the RMS of the decoded samples in dBov (full-scale square wave = 0, as
//! RFC 6464 and WebRTC's own level meter count), decoded at [`DECODE_RATE`] Hz mono: speech
//! has its energy below 4 kHz, and a lower rate is cheaper. Audio whose energy lies only above
//! that band reads as quieter than it is; that errs against the sender, never for it.

use std::time::{Duration, Instant};

use ::opus as libopus;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::bucket::TokenBucket;
use super::speech::{Loudness, SPEECH_THRESHOLD_DBOV};

/// How much louder than its decoded level each packet of a check run may be credited, by its
/// place in the run. The decoder is never reset, but it has not heard the packets since the
/// last check (or any, at the first), so it reads low for a few frames: measured on encoded
/// syllables at checks 0.4–10 s apart, up to 46, 38, 31, 27, 20 dB low (6–10 kbit/s SILK, the
/// worst case; 31, 18, 10, 6, 5 for CELT). Silence stays below speech even with the first
/// slack: real Opus of digital silence decodes to about -98 dBov, 29 dB above the floor, and
/// speech starts at 67 ([`SPEECH_THRESHOLD_DBOV`]); an honest packet early in a run is at
/// worst credited a little less than it claims.
pub const RUN_SLACK_DB: [f32; 5] = [35.0, 33.0, 30.0, 28.0, 25.0];
/// Packets in one check of a trusted member.
pub const RUN: u8 = RUN_SLACK_DB.len() as u8;
/// Within a talk spurt, a check starts at a packet with probability 1 in this.
pub const SAMPLE_ONE_IN: u32 = 100;
/// A speech claim after this long without one starts a talk spurt, and a check.
pub const SPURT_GAP: Duration = Duration::from_millis(400);
/// How much louder than a warm decoder's level a claim may be without being refused, and
/// credited, within a word (honest claims at 6 kbit/s: at most 6.6 dB over, judged with the
/// next packet).
pub const STRIKE_TOLERANCE_DB: f32 = 10.0;
/// How much louder a word's first packet may be credited: Opus delays its output by 7–25 ms,
/// so an onset decodes quieter than it was said (up to 18 dB at 6 kbit/s).
pub const ONSET_SLACK_DB: f32 = 20.0;
/// A distrusted member is trusted again after this long without an unsupported claim.
pub const PAROLE: Duration = Duration::from_secs(10);
/// The rate the checks decode at.
pub const DECODE_RATE: u32 = 8_000;
/// Samples of the longest packet (120 ms) at [`DECODE_RATE`].
const MAX_SAMPLES: usize = DECODE_RATE as usize * 120 / 1000;
/// Decodes a room may spend per second (about 2–4 % of one core at libopus' 10–20 µs a frame),
/// and as a burst.
pub const DECODES_PER_SECOND: u32 = 1_500;
pub const DECODE_BURST: u32 = 300;

/// What one room may spend on decoding: the code base's token bucket, shared by its members'
/// audits, with its upper half kept for distrusted members.
#[derive(Debug)]
pub struct DecodeBudget {
    bucket: TokenBucket,
    /// Tokens a distrusted member's decode must leave: half the burst.
    reserve: f64,
    last: Option<Instant>,
}

impl Default for DecodeBudget {
    fn default() -> Self {
        DecodeBudget::new(DECODES_PER_SECOND, DECODE_BURST)
    }
}

impl DecodeBudget {
    pub fn new(rate: u32, burst: u32) -> DecodeBudget {
        DecodeBudget {
            bucket: TokenBucket::new(rate, burst),
            reserve: f64::from(burst) / 2.0,
            last: None,
        }
    }

    /// Takes one decode for a trusted member's check: any token will do.
    fn take_for_check(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.bucket.try_take(1.0)
    }

    /// Takes one decode for a distrusted member: only above the reserve.
    fn take_for_distrusted(&mut self, now: Instant) -> bool {
        self.refill(now);
        let ok = self.bucket.has(self.reserve + 1.0);
        if ok {
            self.bucket.take(1.0);
        }
        ok
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            self.bucket.refill(now.saturating_duration_since(last));
        }
        self.last = Some(now);
    }
}

/// The verdict on one packet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Checked {
    /// The loudness to credit the packet with: the claim, or less.
    pub loudness: Loudness,
    /// The packet was decoded.
    pub decoded: bool,
    /// The claim was louder than the audio supports and was replaced.
    pub refused: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Trust {
    /// Checked in runs; `run_left` packets of the current run still to decode.
    Trusted { run_left: u8 },
    /// Every packet decoded; the last unsupported claim was at `since`.
    Distrusted { since: Instant },
}

/// One member's audit: its trust, its decoder (made at the first check), its dice.
pub struct LevelAudit {
    trust: Trust,
    /// When this member last claimed speech: a longer pause starts a spurt.
    last_speech_claim: Option<Instant>,
    /// The previous decoded packet's level, dB above silence, if the previous packet was
    /// decoded (the codec delay can put a packet's sound into the next one).
    previous: Option<f32>,
    /// Its previous packet claimed speech.
    spoke: bool,
    /// A distrusted member's last speech claim (dB above silence), judged at the next packet.
    pending_claim: Option<f32>,
    decoder: Option<Box<Meter>>,
    rng: SmallRng,
}

/// A libopus decoder and its output buffer.
struct Meter {
    decoder: libopus::Decoder,
    pcm: [i16; MAX_SAMPLES],
}

impl Meter {
    fn new() -> Option<Box<Meter>> {
        let decoder = libopus::Decoder::new(DECODE_RATE, libopus::Channels::Mono).ok()?;
        Some(Box::new(Meter {
            decoder,
            pcm: [0; MAX_SAMPLES],
        }))
    }

    /// The packet's level in dB above silence; a packet libopus rejects is silence.
    fn level(&mut self, payload: &[u8]) -> f32 {
        match self.decoder.decode(payload, &mut self.pcm, false) {
            Ok(n) => level_db(&self.pcm[..n.min(MAX_SAMPLES)]),
            Err(_) => 0.0,
        }
    }
}

/// The level of PCM samples in dB above the RFC 6464 floor (0 = -127 dBov or quieter, 127 =
/// 0 dBov, a full-scale square wave).
pub fn level_db(pcm: &[i16]) -> f32 {
    if pcm.is_empty() {
        return 0.0;
    }
    let energy: f64 = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let mean_square = energy / pcm.len() as f64 / (32768.0 * 32768.0);
    if mean_square <= 0.0 {
        return 0.0;
    }
    (127.0 + 10.0 * mean_square.log10()).clamp(0.0, 127.0) as f32
}

/// The RFC 6464 loudness of a level in dB above silence.
fn loudness_of(db: f32) -> Loudness {
    Loudness::Level {
        dbov: 127 - db.clamp(0.0, 127.0).round() as u8,
        voice: false,
    }
}

impl LevelAudit {
    /// A trusted member's audit; `seed` picks which packets are checked.
    pub fn new(seed: u64) -> LevelAudit {
        LevelAudit {
            trust: Trust::Trusted { run_left: 0 },
            last_speech_claim: None,
            previous: None,
            pending_claim: None,
            spoke: false,
            decoder: None,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The member is distrusted now.
    pub fn distrusted(&self) -> bool {
        matches!(self.trust, Trust::Distrusted { .. })
    }

    /// The loudness to credit one packet with, given what its sender claims.
    pub fn check(
        &mut self,
        claim: Loudness,
        payload: &[u8],
        now: Instant,
        budget: &mut DecodeBudget,
    ) -> Checked {
        let believed = Checked {
            loudness: claim,
            decoded: false,
            refused: false,
        };
        let speech = claim.is_speech(SPEECH_THRESHOLD_DBOV);
        let spurt_starts = speech
            && self
                .last_speech_claim
                .is_none_or(|t| now.saturating_duration_since(t) > SPURT_GAP);
        let spoke = std::mem::replace(&mut self.spoke, speech);
        if speech {
            self.last_speech_claim = Some(now);
        }
        match self.trust {
            Trust::Distrusted { since } => {
                // Every packet, speech or not, keeps the decoder warm.
                let judged = self.pending_claim.take();
                let Some(level) = self.decode(payload, budget.take_for_distrusted(now)) else {
                    self.previous = None;
                    return Checked {
                        loudness: Loudness::SILENT,
                        ..believed
                    };
                };
                let heard = self.previous.map_or(level, |p| p.max(level));
                self.previous = Some(level);
                // The previous claim, judged now that the packet its sound may have spilled
                // into is decoded too.
                let struck = judged.is_some_and(|c| c > heard + STRIKE_TOLERANCE_DB);
                if struck {
                    self.trust = Trust::Distrusted { since: now };
                } else if now.saturating_duration_since(since) >= PAROLE {
                    self.trust = Trust::Trusted { run_left: 0 };
                }
                let slack = if spoke {
                    STRIKE_TOLERANCE_DB
                } else {
                    ONSET_SLACK_DB
                };
                self.pending_claim = speech.then(|| claim.db());
                let loudness = if speech && claim.db() > heard + slack {
                    loudness_of(heard + slack)
                } else {
                    claim
                };
                Checked {
                    loudness,
                    decoded: true,
                    refused: struck,
                }
            }
            Trust::Trusted { run_left } => {
                let mut run_left = run_left;
                if run_left == 0
                    && speech
                    && (spurt_starts || self.rng.random_ratio(1, SAMPLE_ONE_IN))
                {
                    run_left = RUN;
                    self.previous = None;
                }
                if run_left == 0 {
                    return believed;
                }
                // A run goes on through quiet claims: it must not end where a liar chooses.
                let Some(level) = self.decode(payload, budget.take_for_check(now)) else {
                    // Unverifiable: fail closed, and try again at the next packet.
                    return Checked {
                        loudness: if speech { Loudness::SILENT } else { claim },
                        ..believed
                    };
                };
                let heard = self.previous.map_or(level, |p| p.max(level));
                self.previous = Some(level);
                let slack = RUN_SLACK_DB[usize::from(RUN - run_left)];
                let supported = !speech || claim.db() <= heard + slack;
                // Judged on the run's last packet, where the decoder has caught up.
                let failed = run_left == 1 && !supported;
                self.trust = match run_left - 1 {
                    0 if failed => Trust::Distrusted { since: now },
                    run_left => Trust::Trusted { run_left },
                };
                Checked {
                    loudness: if supported {
                        claim
                    } else {
                        loudness_of(heard + slack)
                    },
                    decoded: true,
                    refused: failed,
                }
            }
        }
    }

    /// Decodes `payload` if the budget paid for it: its level in dB above silence.
    fn decode(&mut self, payload: &[u8], paid: bool) -> Option<f32> {
        if !paid {
            return None;
        }
        if self.decoder.is_none() {
            self.decoder = Meter::new();
        }
        Some(self.decoder.as_mut()?.level(payload))
    }
}

#[cfg(test)]
mod tests;
