//! The engine's side of call quality ([`crate::media::quality`]): the report blocks each
//! member's RTCP carries about its slot streams (in its receiver reports, or in its sender
//! reports when it sends), and every [`crate::media::quality::QUALITY_EVERY`] a sample per member from those and from
//! its own stream's receive counters, told to the member when its score changed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rtc::peer_connection::RTCPeerConnection;
use rtc::rtcp;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::shared::time::SystemInstant;
use rtc::statistics::StatsSelector;

use crate::media::quality::{LinkMeter, Sampled, round_trip_ms};
use crate::wire::signal::Event;
use crate::worker::feedback::report_blocks;

/// The middle 32 bits of the NTP time now: what a report's LSR and DLSR are counted against.
fn ntp_mid_now() -> u32 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    (SystemInstant::unix2ntp(unix) >> 16) as u32
}

/// Takes the report blocks of a member's RTCP into its meter, and appends each block's
/// `(ssrc, fraction lost)` to `out` for the speakers' loss floors and each packet a NACK
/// names `(ssrc, sequence number)` to `nacked`.
pub fn note_rtcp(
    meter: &mut LinkMeter,
    packets: &[Box<dyn rtcp::Packet>],
    out: &mut Vec<(u32, u8)>,
    nacked: &mut Vec<(u32, u16)>,
) {
    for nack in packets
        .iter()
        .filter_map(|p| p.as_any().downcast_ref::<TransportLayerNack>())
    {
        for pair in &nack.nacks {
            // At most 17 a pair; the room looks each up in 75 kept packets.
            nacked.extend(pair.packet_list().into_iter().map(|s| (nack.media_ssrc, s)));
        }
    }
    let mut blocks = report_blocks(packets).peekable();
    if blocks.peek().is_none() {
        return;
    }
    let now = ntp_mid_now();
    for b in blocks {
        let rtt = round_trip_ms(now, b.last_sender_report, b.delay);
        tracing::trace!(
            ssrc = b.ssrc,
            lost = b.fraction_lost,
            jitter = b.jitter,
            ?rtt,
            "report block"
        );
        meter.report(b.ssrc, b.fraction_lost, b.total_lost, b.jitter, rtt);
        out.push((b.ssrc, b.fraction_lost));
    }
}

/// A member's sample: its own stream's counters as rtc received them go in first.
pub fn sample(
    meter: &mut LinkMeter,
    pc: &mut RTCPeerConnection,
    now: std::time::Instant,
) -> Sampled {
    let report = pc.get_stats(now, StatsSelector::None);
    let (mut received, mut lost) = (0u64, 0i64);
    for s in report.inbound_rtp_streams() {
        received += s.received_rtp_stream_stats.packets_received;
        lost += s.received_rtp_stream_stats.packets_lost;
    }
    if received > 0 {
        meter.upstream(received, lost);
    }

    meter.sample()
}

/// What the member is told of a sample.
pub fn event(s: &Sampled) -> Event {
    Event::Quality {
        score: s.score,
        loss_permille: (s.link.loss * 1000.0).round().clamp(0.0, 1000.0) as u16,
        jitter_ms: s.link.jitter_ms.round().clamp(0.0, 1e6) as u32,
        rtt_ms: s.link.rtt_ms.map(|r| r.round().clamp(0.0, 1e6) as u32),
    }
}

/// The engine's quality counters, and when it last sampled.
#[derive(Debug)]
pub struct Tally {
    at: std::time::Instant,
    scores: [u64; 5],
    listener_lost: u64,
    /// Packets rebuilt from speakers' RED.
    pub red_recovered: u64,
    /// Packets resent to listeners that asked (NACK).
    pub retransmitted: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            at: std::time::Instant::now(),
            scores: [0; 5],
            listener_lost: 0,
            red_recovered: 0,
            retransmitted: 0,
        }
    }
}

impl Tally {
    pub fn add_to(&self, stats: &mut crate::wire::stats::WorkerStats) {
        for (a, b) in stats.quality_scores.iter_mut().zip(self.scores) {
            *a += b;
        }
        stats.listener_packets_lost += self.listener_lost;
        stats.red_recovered += self.red_recovered;
        stats.nack_retransmitted += self.retransmitted;
    }
}

impl super::Engine {
    /// A listener's report blocks `(ssrc, fraction lost)`: each counts toward the loss floor
    /// of whoever is on the slot it is about, which that speaker's connection applies to
    /// the reports it sends ([`crate::worker::feedback`]).
    pub(super) fn note_listener_reports(
        &mut self,
        listener: crate::wire::ids::SessionId,
        blocks: &[(u32, u8)],
        now: std::time::Instant,
    ) {
        for &(ssrc, fraction) in blocks {
            let Some(speaker) = self.room.slot_source(listener, ssrc) else {
                continue;
            };
            let worst = self.downstream.entry(speaker).or_default();
            worst.note(listener, fraction, now);
            let floor = worst.worst(now);
            if let Some(peer) = self.sessions.get(&speaker).and_then(|k| self.peers.get(k)) {
                peer.floor.set(floor);
            }
        }
    }

    /// Ages the loss floors: a listener that stopped reporting (left, or its slot moved on)
    /// stops holding its speaker's floor up.
    fn refresh_floors(&mut self, now: std::time::Instant) {
        let (peers, sessions) = (&self.peers, &self.sessions);
        self.downstream.retain(|speaker, worst| {
            let floor = worst.worst(now);
            let peer = sessions.get(speaker).and_then(|k| peers.get(k));
            if let Some(peer) = peer {
                peer.floor.set(floor);
            }
            peer.is_some() && !worst.is_empty()
        });
    }

    /// Every [`crate::media::quality::QUALITY_EVERY`]: a sample of each connected member, counted, and told to the
    /// member when its score changed.
    pub(super) fn sample_quality(&mut self, now: std::time::Instant) {
        if !crate::media::quality::due(self.quality.at, now) {
            return;
        }
        self.quality.at = now;
        self.refresh_floors(now);
        for peer in self.peers.values_mut() {
            if peer.broken || peer.selected.is_none() {
                continue;
            }
            let s = sample(&mut peer.link, &mut peer.pc, now);
            self.quality.scores[usize::from(s.score.clamp(1, 5) - 1)] += 1;
            self.quality.listener_lost += s.newly_lost;
            if s.tell {
                let _ = self.to_front.send(crate::wire::ipc::ToFront::Event {
                    session: peer.session,
                    event: event(&s),
                });
            }
        }
    }
}
