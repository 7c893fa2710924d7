//! How a member's call is going, as a score from 1 (bad) to 5 (excellent): the number a voice
//! app shows as signal bars, and `/metrics` counts (issue 19, point 4).
//!
//! What goes in, per member, between two samples ([`QUALITY_EVERY`]):
//! - what its receiver reports say of the slot streams it gets (RTCP report blocks, in its
//!   receiver reports or, when it sends, its sender reports): the fraction lost and the
//!   interarrival jitter, the worst of its slots, and the round trip from the report's
//!   LSR/DLSR against the wall clock the SFU's sender reports carry;
//! - what the SFU saw of its own stream: packets lost upstream, from the receive counters.
//!
//! The loss that counts is the worse of the two directions: a member whose microphone loses
//! a tenth of its packets on the way up is heard badly by everyone, however well it hears.
//!
//! The score is the ITU-T G.107 E-model's R factor mapped to a mean opinion score, with the
//! equipment impairment of a codec with packet-loss concealment (Opus: Ie = 0, Bpl = 20, as
//! the model's tables give for robust codecs), then cut into five steps. Pure: reports and
//! time in, samples out.

use std::time::{Duration, Instant};

/// How often each member's quality is sampled; a change is told at most this often.
pub const QUALITY_EVERY: Duration = Duration::from_secs(2);

/// Round trips past this are taken for a broken report (clocks, a bogus LSR), not a network.
const MAX_RTT_MS: f64 = 10_000.0;

/// Opus' RTP clock: jitter is reported in its ticks.
const TICKS_PER_MS: f64 = 48.0;

/// One member's link over the last interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkSample {
    /// Fraction of packets lost, 0 to 1: the worse of what it receives and what it sends.
    pub loss: f64,
    pub jitter_ms: f64,
    /// Unknown until a report names one of the SFU's sender reports.
    pub rtt_ms: Option<f64>,
}

/// The E-model's mean opinion score, 1 to 4.5.
pub fn mos(s: &LinkSample) -> f64 {
    // Mouth-to-ear delay: half the round trip, a jitter buffer of about twice the jitter, and
    // the codec's own frame and look-ahead.
    let delay = s.rtt_ms.unwrap_or(0.0) / 2.0 + 2.0 * s.jitter_ms + 25.0;
    let id = 0.024 * delay
        + if delay > 177.3 {
            0.11 * (delay - 177.3)
        } else {
            0.0
        };
    let ppl = (s.loss.clamp(0.0, 1.0)) * 100.0;
    let ie_eff = 95.0 * ppl / (ppl + 20.0);
    let r = (93.2 - id - ie_eff).clamp(0.0, 100.0);
    (1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r)).clamp(1.0, 4.5)
}

/// The mean opinion score in five steps: 5 ≥ 4.2, 4 ≥ 3.8, 3 ≥ 3.4, 2 ≥ 2.8, else 1.
pub fn score(s: &LinkSample) -> u8 {
    let m = mos(s);
    match m {
        m if m >= 4.2 => 5,
        m if m >= 3.8 => 4,
        m if m >= 3.4 => 3,
        m if m >= 2.8 => 2,
        _ => 1,
    }
}

/// The round trip a report block gives: now (the middle 32 bits of the NTP time) minus the
/// SFU's sender report it names (LSR) minus the time the member held it (DLSR), in 1/65536 s.
pub fn round_trip_ms(now_ntp_mid: u32, lsr: u32, dlsr: u32) -> Option<f64> {
    if lsr == 0 {
        return None;
    }
    let units = now_ntp_mid.wrapping_sub(lsr).wrapping_sub(dlsr);
    let ms = f64::from(units) * 1000.0 / 65536.0;
    (ms <= MAX_RTT_MS).then_some(ms)
}

/// What one member's reports and stream said since the last sample, and what it was told.
#[derive(Debug, Default)]
pub struct LinkMeter {
    down_loss: f64,
    jitter_ms: f64,
    rtt_ms: Option<f64>,
    /// Its stream's cumulative (received, lost) at the last sample.
    up_last: Option<(u64, i64)>,
    up_loss: f64,
    /// Packets its reports counted lost, summed over its slot streams (cumulative, per SSRC).
    reported_lost: Vec<(u32, u32)>,
    lost_since: u64,
    told: Option<u8>,
}

/// A sample: the score, the link it was computed from, and whether the member is to be told
/// (its score changed since it was last told).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampled {
    pub score: u8,
    pub link: LinkSample,
    pub tell: bool,
    /// Packets its reports newly counted lost since the last sample.
    pub newly_lost: u64,
}

impl LinkMeter {
    /// A report block about one of its slot streams (`ssrc`): `fraction_lost` in 1/256,
    /// `total_lost` cumulative, `jitter` in 48 kHz ticks, and its round trip if it had one.
    pub fn report(
        &mut self,
        ssrc: u32,
        fraction_lost: u8,
        total_lost: u32,
        jitter: u32,
        rtt_ms: Option<f64>,
    ) {
        self.down_loss = self.down_loss.max(f64::from(fraction_lost) / 256.0);
        self.jitter_ms = self.jitter_ms.max(f64::from(jitter) / TICKS_PER_MS);
        if let Some(rtt) = rtt_ms {
            // Smoothed, as RFC 6298 smooths: one odd report does not swing the score.
            self.rtt_ms = Some(self.rtt_ms.map_or(rtt, |r| 0.875 * r + 0.125 * rtt));
        }
        match self.reported_lost.iter_mut().find(|(s, _)| *s == ssrc) {
            Some((_, last)) => {
                self.lost_since += u64::from(total_lost.saturating_sub(*last));
                *last = total_lost;
            }
            None => self.reported_lost.push((ssrc, total_lost)),
        }
    }

    /// Its own stream's cumulative counters as the SFU received it.
    pub fn upstream(&mut self, received: u64, lost: i64) {
        if let Some((r0, l0)) = self.up_last {
            let got = received.saturating_sub(r0) as f64;
            let missed = (lost - l0).max(0) as f64;
            if got + missed > 0.0 {
                self.up_loss = missed / (got + missed);
            }
        }
        self.up_last = Some((received, lost));
    }

    /// The interval's sample; the per-interval worst values start over.
    pub fn sample(&mut self) -> Sampled {
        let link = LinkSample {
            loss: self.down_loss.max(self.up_loss),
            jitter_ms: self.jitter_ms,
            rtt_ms: self.rtt_ms,
        };
        let score = score(&link);
        let tell = self.told != Some(score);
        self.told = Some(score);
        let newly_lost = std::mem::take(&mut self.lost_since);
        self.down_loss = 0.0;
        self.up_loss = 0.0;
        self.jitter_ms = 0.0;
        Sampled {
            score,
            link,
            tell,
            newly_lost,
        }
    }
}

/// How long a listener's report of a speaker's loss counts toward that speaker's floor:
/// about two of Chromium's 5 s audio report intervals, so one report missing does not
/// drop it, and a listener that left or recovered stops counting soon after.
pub const FLOOR_WINDOW: Duration = Duration::from_secs(12);

/// The worst fraction lost (in 1/256) the listeners of one speaker report of its audio over
/// the last [`FLOOR_WINDOW`]: what the SFU's receiver reports tell that speaker at least
/// (issue 19, point 2), so its encoder protects against the loss on the whole path.
#[derive(Debug)]
pub struct WorstListener<K> {
    reports: Vec<(K, u8, Instant)>,
}

impl<K> Default for WorstListener<K> {
    fn default() -> Self {
        WorstListener {
            reports: Vec::new(),
        }
    }
}

impl<K: PartialEq> WorstListener<K> {
    /// `listener` reported `fraction` lost of the speaker's audio (on one of its slots) at `now`.
    pub fn note(&mut self, listener: K, fraction: u8, now: Instant) {
        match self.reports.iter_mut().find(|(k, ..)| *k == listener) {
            Some(r) => (r.1, r.2) = (fraction, now),
            None => self.reports.push((listener, fraction, now)),
        }
    }

    /// The worst of the reports still in the window (0 when none is).
    pub fn worst(&mut self, now: Instant) -> u8 {
        self.reports
            .retain(|(_, _, at)| now.saturating_duration_since(*at) < FLOOR_WINDOW);
        self.reports.iter().map(|r| r.1).max().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }
}

/// When the next sample is due, given the last (every [`QUALITY_EVERY`]).
pub fn due(last: Instant, now: Instant) -> bool {
    now.saturating_duration_since(last) >= QUALITY_EVERY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_the_worst_recent_listener_report() {
        let t0 = Instant::now();
        let mut w = WorstListener::default();
        assert_eq!(w.worst(t0), 0, "nobody reported");
        w.note("a", 10, t0);
        w.note("b", 30, t0);
        assert_eq!(w.worst(t0), 30);
        // b's link recovers: its newer report replaces the old one.
        w.note("b", 2, t0 + Duration::from_secs(5));
        assert_eq!(w.worst(t0 + Duration::from_secs(5)), 10);
        // a's report ages out; b's is still in the window.
        assert_eq!(w.worst(t0 + FLOOR_WINDOW + Duration::from_secs(1)), 2);
        assert_eq!(w.worst(t0 + FLOOR_WINDOW * 2), 0);
        assert!(w.is_empty());
    }

    fn link(loss: f64, jitter_ms: f64, rtt_ms: f64) -> LinkSample {
        LinkSample {
            loss,
            jitter_ms,
            rtt_ms: Some(rtt_ms),
        }
    }

    #[test]
    fn scores_fall_with_loss_delay_and_jitter() {
        assert_eq!(
            score(&link(0.0, 2.0, 20.0)),
            5,
            "{}",
            mos(&link(0.0, 2.0, 20.0))
        );
        assert_eq!(score(&LinkSample::default()), 5);
        // Loss is what hurts voice most.
        let by_loss: Vec<u8> = [0.0, 0.02, 0.05, 0.10, 0.20, 0.40]
            .iter()
            .map(|&l| score(&link(l, 5.0, 50.0)))
            .collect();
        assert!(by_loss.windows(2).all(|w| w[0] >= w[1]), "{by_loss:?}");
        assert_eq!(by_loss[0], 5);
        assert!(by_loss[3] <= 3, "10 % loss: {by_loss:?}");
        assert_eq!(by_loss[5], 1, "{by_loss:?}");
        // A long round trip or heavy jitter costs too.
        assert!(score(&link(0.0, 5.0, 800.0)) < 5);
        assert!(score(&link(0.0, 200.0, 50.0)) < score(&link(0.0, 5.0, 50.0)));
        assert!((1.0..=4.5).contains(&mos(&link(1.0, 1e6, 1e6))));
    }

    #[test]
    fn round_trips_come_from_lsr_and_dlsr() {
        // Sent at 100 s (NTP mid 32 bits), held 0.5 s, back at 100.6 s: 100 ms.
        let s = 100u32 << 16;
        let rtt = round_trip_ms(s + (6 << 16) / 10, s, 1 << 15).unwrap();
        assert!((rtt - 100.0).abs() < 0.1, "{rtt}");
        assert_eq!(round_trip_ms(s, 0, 0), None, "no sender report seen yet");
        assert_eq!(
            round_trip_ms(s, s + 10, 0),
            None,
            "a report from the future"
        );
        // Across the 32-bit wrap.
        let near = u32::MAX - 100;
        assert!(round_trip_ms(near.wrapping_add(6553), near, 0).unwrap() < 101.0);
    }

    #[test]
    fn a_meter_takes_the_worse_direction_and_tells_changes_only() {
        let mut m = LinkMeter::default();
        m.report(1, 0, 0, 96, Some(40.0));
        m.upstream(100, 0);
        let first = m.sample();
        assert_eq!((first.score, first.tell), (5, true));
        assert_eq!(first.link.jitter_ms, 2.0);
        // Same again: nothing to tell.
        m.report(1, 0, 0, 96, Some(40.0));
        m.upstream(200, 0);
        assert!(!m.sample().tell);
        // A tenth lost on the way up (its receive side is clean): the score drops, told once.
        m.report(1, 0, 0, 96, Some(40.0));
        m.upstream(290, 10);
        let lossy = m.sample();
        assert!((lossy.link.loss - 0.1).abs() < 1e-9, "{lossy:?}");
        assert!(lossy.tell && lossy.score < 5, "{lossy:?}");
        // Reported downstream losses are counted once per report, per stream.
        m.report(1, 26, 7, 96, None);
        m.report(2, 0, 3, 96, None);
        m.report(1, 26, 9, 96, None);
        let down = m.sample();
        assert_eq!(
            down.newly_lost, 9,
            "7 then 2 on stream 1; stream 2's first report sets its base"
        );
        assert!((down.link.loss - 26.0 / 256.0).abs() < 1e-9);
        assert_eq!(
            down.link.rtt_ms,
            Some(40.0),
            "the round trip is kept between reports"
        );
    }
}
