//! Per-member rate caps, checked before a packet reaches the selector: a member may send so
//! many RTP packets and so many payload bytes per second, with a burst of one second's worth.
//! What goes over is dropped (and counted by the room), and a member that went over counts
//! as silent for [`PENALTY`] afterwards, so a flood that the cap thins out still cannot win
//! or keep a slot, nor open bites.
//!
//! A plain token bucket per cap, refilled from the time passed in: no clock, no I/O.

use std::time::{Duration, Instant};

use crate::media::bucket::TokenBucket;

/// Per-member caps (`MEMBER_PACKETS_PER_S`, `MEMBER_BYTES_PER_S`); `None` is no cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberLimits {
    pub packets_per_s: Option<u32>,
    pub bytes_per_s: Option<u32>,
}

/// How long a member that went over a cap counts as silent.
pub const PENALTY: Duration = Duration::from_secs(1);

/// What to do with one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Within the caps.
    Pass,
    /// Within the caps, but the member went over one less than [`PENALTY`] ago: forward it,
    /// but it is not speech.
    Silenced,
    /// Over a cap: drop it.
    Drop,
}

/// One member's caps and how much of them it has used.
#[derive(Clone, Debug)]
pub struct RateGate {
    packets: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    last: Option<Instant>,
    /// The last time a packet was dropped.
    over_at: Option<Instant>,
}

impl RateGate {
    pub fn new(limits: MemberLimits) -> RateGate {
        RateGate {
            // One second's worth of burst.
            packets: limits.packets_per_s.map(|r| TokenBucket::new(r, r)),
            bytes: limits.bytes_per_s.map(|r| TokenBucket::new(r, r)),
            last: None,
            over_at: None,
        }
    }

    /// One packet of `bytes` payload bytes at `now`.
    pub fn admit(&mut self, now: Instant, bytes: usize) -> Admit {
        if self.packets.is_none() && self.bytes.is_none() {
            return Admit::Pass;
        }
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.last = Some(self.last.map_or(now, |t| t.max(now)));
        for b in [&mut self.packets, &mut self.bytes].into_iter().flatten() {
            b.refill(elapsed);
        }
        let cost = bytes as f64;
        let fits = self.packets.as_ref().is_none_or(|b| b.has(1.0))
            && self.bytes.as_ref().is_none_or(|b| b.has(cost));
        if !fits {
            self.over_at = Some(now);
            return Admit::Drop;
        }
        if let Some(b) = &mut self.packets {
            b.take(1.0);
        }
        if let Some(b) = &mut self.bytes {
            b.take(cost);
        }
        match self.over_at {
            Some(t) if now.saturating_duration_since(t) < PENALTY => Admit::Silenced,
            _ => Admit::Pass,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(packets: u32, bytes: u32) -> MemberLimits {
        MemberLimits {
            packets_per_s: Some(packets),
            bytes_per_s: Some(bytes),
        }
    }

    /// Sends `n` packets of `bytes` evenly over one second from `t0`; counts each verdict.
    fn second(gate: &mut RateGate, t0: Instant, n: u32, bytes: usize) -> (u32, u32, u32) {
        let mut counts = (0, 0, 0);
        for i in 0..n {
            let now = t0 + Duration::from_secs(1) * i / n;
            match gate.admit(now, bytes) {
                Admit::Pass => counts.0 += 1,
                Admit::Silenced => counts.1 += 1,
                Admit::Drop => counts.2 += 1,
            }
        }
        counts
    }

    #[test]
    fn a_normal_speaker_is_never_touched() {
        // 50 packets/s of 160 bytes (64 kbit/s Opus), and 100/s of 10 ms packets.
        let mut gate = RateGate::new(limits(120, 64 * 1024));
        let t0 = Instant::now();
        for s in 0..10 {
            let at = t0 + Duration::from_secs(s);
            assert_eq!(second(&mut gate, at, 50, 160), (50, 0, 0));
        }
        let mut gate = RateGate::new(limits(120, 64 * 1024));
        for s in 0..10 {
            let at = t0 + Duration::from_secs(s);
            assert_eq!(second(&mut gate, at, 100, 80), (100, 0, 0));
        }
    }

    #[test]
    fn a_packet_flood_is_cut_to_the_rate_and_silenced() {
        let mut gate = RateGate::new(limits(120, 64 * 1024));
        let t0 = Instant::now();
        // First second: the one-second burst passes, then the rest of the flood mostly drops.
        let (pass, silenced, dropped) = second(&mut gate, t0, 1000, 60);
        assert!(
            pass >= 120 && pass + silenced <= 240,
            "{pass} {silenced} {dropped}"
        );
        // Steady state: about the rate gets through, and all of it counts as silent.
        let (pass, silenced, dropped) = second(&mut gate, t0 + Duration::from_secs(1), 1000, 60);
        assert_eq!(pass, 0);
        assert!((110..=130).contains(&silenced), "{silenced}");
        assert_eq!(pass + silenced + dropped, 1000);
        // The flood stops: after the penalty a normal stream passes untouched again.
        let later = t0 + Duration::from_secs(2) + PENALTY;
        assert_eq!(second(&mut gate, later, 50, 60), (50, 0, 0));
    }

    #[test]
    fn a_byte_flood_is_capped_too() {
        let mut gate = RateGate::new(limits(120, 16 * 1024));
        let t0 = Instant::now() + Duration::from_secs(1);
        second(&mut gate, t0, 50, 1200);
        let (pass, silenced, dropped) = second(&mut gate, t0 + Duration::from_secs(1), 50, 1200);
        // 16 KiB/s of 1200-byte packets: 13 a second.
        assert_eq!(pass, 0);
        assert!((12..=15).contains(&silenced), "{silenced} {dropped}");
    }

    #[test]
    fn no_limits_pass_everything() {
        let mut gate = RateGate::new(MemberLimits::default());
        let t0 = Instant::now();
        assert_eq!(second(&mut gate, t0, 10_000, 1500), (10_000, 0, 0));
    }
}
