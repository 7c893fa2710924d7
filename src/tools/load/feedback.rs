//! The test client's side of RTCP feedback (issue 19): what the SFU's reports tell it of
//! its microphone stream, and receiver reports and NACKs of its own making, to play a
//! listener on a lossy downlink without dropping packets.
//!
//! The client's chain carries the worker's [`Feedback`] link (at floor 0, so it changes
//! nothing outgoing) for its inbound half: rtc ends inbound RTCP inside the chain unless an
//! interceptor marks it for the application.

use std::sync::{Arc, Mutex};

use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::TrackRemote;

use crate::worker::feedback::report_blocks;

/// The fraction lost (1/256) of every report block about the microphone the SFU sent, in
/// arrival order.
pub type Told = Arc<Mutex<Vec<u8>>>;

/// Reads the microphone track's RTCP until the connection closes, keeping what the report
/// blocks about `mic_ssrc` say was lost. Also drains the track's event channel, which
/// would otherwise fill and complain.
pub fn spawn_mic_feedback(mic: Arc<TrackLocalStaticRTP>, mic_ssrc: u32, told: Told) {
    tokio::spawn(async move {
        while let Some(TrackLocalEvent::OnRtcpPacket(packets)) = mic.poll().await {
            let fractions = report_blocks(&packets)
                .filter(|b| b.ssrc == mic_ssrc)
                .map(|b| b.fraction_lost);
            told.lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(fractions);
        }
    });
}

/// Sends a receiver report claiming `fraction` (1/256) of the stream `ssrc` lost, through
/// `track` (any received track will do: under BUNDLE every report goes the same way).
pub async fn report_loss(
    track: &Arc<dyn TrackRemote>,
    reporter_ssrc: u32,
    ssrc: u32,
    fraction: u8,
) -> anyhow::Result<()> {
    let rr = ReceiverReport {
        ssrc: reporter_ssrc,
        reports: vec![ReceptionReport {
            ssrc,
            fraction_lost: fraction,
            ..Default::default()
        }],
        ..Default::default()
    };
    track.write_rtcp(vec![Box::new(rr)]).await?;
    Ok(())
}

/// Sends a generic NACK (RFC 4585) naming `seqs` of the stream `ssrc` as lost.
pub async fn nack(
    track: &Arc<dyn TrackRemote>,
    reporter_ssrc: u32,
    ssrc: u32,
    seqs: &[u16],
) -> anyhow::Result<()> {
    let nack = TransportLayerNack {
        sender_ssrc: reporter_ssrc,
        media_ssrc: ssrc,
        nacks: seqs
            .iter()
            .map(|&packet_id| NackPair {
                packet_id,
                lost_packets: 0,
            })
            .collect(),
    };
    track.write_rtcp(vec![Box::new(nack)]).await?;
    Ok(())
}
