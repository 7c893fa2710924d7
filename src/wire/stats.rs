//! The counters a worker reports to front in `Stats` every few seconds, and the one
//! measurement it takes per packet: [`DelayHistogram`], how long each forwarded packet spent
//! in the worker (its datagram read → its copy sent to a listener). A leaf, so the IPC types,
//! the worker that fills them and front's metrics can all use it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A worker's counters since it started (front keeps the totals of exited workers, so the
/// `_total` metrics never go backwards).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Peer connections now (a gauge, not a counter).
    pub peers: u32,
    pub packets_in: u64,
    pub packets_forwarded: u64,
    pub bytes_forwarded: u64,
    pub forward_delay: DelayHistogram,
    pub bites: BiteStats,
    /// Packets dropped on purpose, by reason.
    #[serde(default)]
    pub dropped: DropStats,
    /// Packets the level audit decoded to check a claimed loudness (`media::audit`).
    pub level_decodes: u64,
    /// Packets whose claimed loudness the audio did not support (credited with less).
    pub level_claims_refused: u64,
    /// Quality samples of members, by score: `[0]` counts score 1, `[4]` score 5
    /// (`media::quality`, every 2 s per member).
    #[serde(default)]
    pub quality_scores: [u64; 5],
    /// Packets of the slot streams the listeners' reports counted lost.
    #[serde(default)]
    pub listener_packets_lost: u64,
    /// Packets speakers' uplinks lost that their RED redundancy rebuilt.
    #[serde(default)]
    pub red_recovered: u64,
    /// Packets resent to listeners that asked for them (NACK).
    #[serde(default)]
    pub nack_retransmitted: u64,
}

/// Packets a worker dropped, by reason (`beep_packets_dropped_total{reason=...}`): on purpose
/// (caps, filters) or because a buffer was full. Every datagram that came in or was meant to go
/// out and did not is counted under one of these, so a loss can be traced to where it happened.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DropStats {
    /// RTP packets over their member's packet or byte rate cap (`reason="member-rate"`).
    pub member_rate: u64,
    /// Datagrams from an address other than the session's selected ICE pair
    /// (`reason="unselected-address"`).
    pub unselected_address: u64,
    /// Datagrams (not STUN) from an address no connection of the worker's port knows
    /// (`reason="unknown-address"`).
    pub unknown_address: u64,
    /// STUN whose USERNAME names none of the worker's connections, or that has none
    /// (`reason="stun-unknown-username"`).
    pub stun_unknown_username: u64,
    /// STUN requests without a valid MESSAGE-INTEGRITY for the connection they name
    /// (`reason="stun-unauthenticated"`).
    pub stun_unauthenticated: u64,
    /// Authenticated Binding requests that claim the controlled role, which the ICE-lite
    /// server always has: a role conflict would turn it into a controlling agent that
    /// sends checks to every candidate the client listed (`reason="stun-role-conflict"`).
    pub stun_role_conflict: u64,
    /// Datagrams the kernel dropped because the port's receive buffer was full, as counted
    /// by `SO_RXQ_OVFL` (`reason="socket-receive-buffer"`).
    pub socket_receive_buffer: u64,
    /// Datagrams the port's send buffer would not take (`reason="socket-send-buffer"`).
    pub socket_send_buffer: u64,
    /// Datagrams whose send failed otherwise, e.g. an unreachable address
    /// (`reason="send-error"`).
    pub send_error: u64,
    /// Forwards a listener's connection refused: not connected any more, or its SRTP
    /// context not ready (`reason="connection-refused"`).
    pub connection_refused: u64,
}

impl DropStats {
    pub fn add(&mut self, other: &DropStats) {
        for ((_, a), (_, b)) in self.by_reason_mut().into_iter().zip(other.by_reason()) {
            *a += b;
        }
    }

    /// Every counter with its `reason` label: the one list `/metrics` and tests read.
    pub fn by_reason(&self) -> [(&'static str, u64); 10] {
        let mut copy = self.clone();
        copy.by_reason_mut().map(|(reason, n)| (reason, *n))
    }

    fn by_reason_mut(&mut self) -> [(&'static str, &mut u64); 10] {
        [
            ("member-rate", &mut self.member_rate),
            ("unselected-address", &mut self.unselected_address),
            ("unknown-address", &mut self.unknown_address),
            ("stun-unknown-username", &mut self.stun_unknown_username),
            ("stun-unauthenticated", &mut self.stun_unauthenticated),
            ("stun-role-conflict", &mut self.stun_role_conflict),
            ("socket-receive-buffer", &mut self.socket_receive_buffer),
            ("socket-send-buffer", &mut self.socket_send_buffer),
            ("send-error", &mut self.send_error),
            ("connection-refused", &mut self.connection_refused),
        ]
    }

    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }
}

impl WorkerStats {
    /// Adds `other`'s counters (not its gauge) to these.
    pub fn add_counters(&mut self, other: &WorkerStats) {
        self.packets_in += other.packets_in;
        self.packets_forwarded += other.packets_forwarded;
        self.bytes_forwarded += other.bytes_forwarded;
        self.forward_delay.add(&other.forward_delay);
        self.bites.add(&other.bites);
        self.dropped.add(&other.dropped);
        self.level_decodes += other.level_decodes;
        self.level_claims_refused += other.level_claims_refused;
        for (a, b) in self.quality_scores.iter_mut().zip(other.quality_scores) {
            *a += b;
        }
        self.listener_packets_lost += other.listener_packets_lost;
        self.red_recovered += other.red_recovered;
        self.nack_retransmitted += other.nack_retransmitted;
    }
}

/// Upper bounds (ms) of the publish latency histogram buckets; a last `+Inf` bucket is implied.
pub const LATENCY_BUCKETS_MS: [u64; 11] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000];

/// A worker's bite publishing counters (since it started), reported in its `Stats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BiteStats {
    /// Bites published live (both messages acked or flushed).
    pub published: u64,
    /// Bites written to the spool.
    pub spooled: u64,
    /// Spooled bites published and deleted.
    pub replayed: u64,
    /// Bites lost (NATS and spool both refused) or set aside as unpublishable.
    pub failed: u64,
    /// Sends that found the queue full and went to the overflow lane (then to the spool).
    pub overflowed: u64,
    /// Messages JetStream acked as duplicates (a replay of something it already had).
    pub duplicates: u64,
    /// Spool files moved to `corrupt/` or `rejected/`.
    pub moved_aside: u64,
    /// Gauge: bytes in the spool.
    pub spool_bytes: u64,
    /// Gauge: bites in the spool.
    pub spool_files: u64,
    /// Publish latency (both messages, until acked/flushed): sum and count ...
    pub latency_seconds_sum: f64,
    pub latency_count: u64,
    /// ... and cumulative counts per [`LATENCY_BUCKETS_MS`] bucket, plus a last `+Inf` bucket.
    pub latency_buckets: Vec<u64>,
}

impl BiteStats {
    /// Adds `other` to these (the spool gauges too: each worker has its own spool).
    pub fn add(&mut self, other: &BiteStats) {
        self.published += other.published;
        self.spooled += other.spooled;
        self.replayed += other.replayed;
        self.failed += other.failed;
        self.overflowed += other.overflowed;
        self.duplicates += other.duplicates;
        self.moved_aside += other.moved_aside;
        self.spool_bytes += other.spool_bytes;
        self.spool_files += other.spool_files;
        self.latency_seconds_sum += other.latency_seconds_sum;
        self.latency_count += other.latency_count;
        if self.latency_buckets.len() < other.latency_buckets.len() {
            self.latency_buckets.resize(other.latency_buckets.len(), 0);
        }
        for (a, b) in self.latency_buckets.iter_mut().zip(&other.latency_buckets) {
            *a += b;
        }
    }
}

/// Upper bounds (µs) of the forwarding-delay buckets; one more bucket counts the rest.
pub const DELAY_BUCKETS_US: [u64; 19] = [
    25, 50, 100, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 4_000, 5_000, 6_000, 7_500,
    10_000, 15_000, 20_000, 50_000,
];

/// Counts of forwarding delays per bucket of [`DELAY_BUCKETS_US`] (not cumulative; the last
/// entry is everything above the last bound), and their sum.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DelayHistogram {
    pub counts: Vec<u64>,
    pub sum_us: u64,
}

impl DelayHistogram {
    pub fn record(&mut self, d: Duration) {
        self.record_n(d, 1);
    }

    /// `n` delays of `d` each: the copies of one packet that left in one batch.
    pub fn record_n(&mut self, d: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        if self.counts.is_empty() {
            self.counts = vec![0; DELAY_BUCKETS_US.len() + 1];
        }
        let i = DELAY_BUCKETS_US.partition_point(|&b| b < us);
        self.counts[i] += n;
        self.sum_us = self.sum_us.saturating_add(us.saturating_mul(n));
    }

    pub fn add(&mut self, other: &DelayHistogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The bucket bound (µs) at or below which a fraction `q` of the delays fell; `None` when
    /// empty or beyond the last bound.
    pub fn quantile_bound(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let want = (q * n as f64).ceil() as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return DELAY_BUCKETS_US.get(i).copied();
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_histogram_buckets_and_quantiles() {
        let mut h = DelayHistogram::default();
        assert_eq!(h.quantile_bound(0.5), None);
        for us in [10, 30, 30, 400, 400, 400, 400, 400, 900, 60_000] {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.count(), 10);
        assert_eq!(h.counts[0], 1); // ≤ 25
        assert_eq!(h.counts[1], 2); // ≤ 50
        assert_eq!(h.counts[5], 5); // ≤ 500
        assert_eq!(h.counts[DELAY_BUCKETS_US.len()], 1); // beyond 50 ms
        assert_eq!(h.quantile_bound(0.5), Some(500));
        assert_eq!(h.quantile_bound(0.9), Some(1_000));
        assert_eq!(h.quantile_bound(0.95), None); // the 60 ms one
        h.record(Duration::from_micros(5_500));
        assert_eq!(
            h.counts[DELAY_BUCKETS_US.partition_point(|&b| b < 6_000)],
            1
        );
        assert_eq!(h.quantile_bound(1.0), None);
        let mut total = DelayHistogram::default();
        total.add(&h);
        total.add(&h);
        assert_eq!(total.count(), 22);
        assert_eq!(total.sum_us, 2 * h.sum_us);
    }
}
