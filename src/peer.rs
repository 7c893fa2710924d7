//! Building and answering one client's peer connection with `webrtc =0.21.1`.
//!
//! The order of calls matters and is the crate's, verified in `../shared/RECIPES.md`:
//! the media engine registers Opus and the RFC 6464 extension; the answer is DTLS server
//! (`a=setup:passive`, ~25 ms to connect instead of ~200 ms); mDNS is off; the offer is
//! applied *before* outgoing tracks are added, so each track binds with the negotiated
//! extension ids and reuses the offer's transceiver. Every peer connection binds its own UDP
//! port (the crate has no UDP mux), taken from `RTC_PORTS`.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverId};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateType, RTCSessionDescription, Registry,
    SettingEngineBuilder, register_default_interceptors,
};

use crate::config::MediaConfig;
use crate::sdp::{AUDIO_LEVEL_URI, Offer};
use crate::signal::ErrorCode;

/// A failed negotiation, with the `error::` code the client will see.
#[derive(Debug)]
pub struct NegotiationError {
    pub code: ErrorCode,
    pub message: String,
}

impl NegotiationError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        NegotiationError {
            code,
            message: message.into(),
        }
    }
}

/// One outgoing slot stream of an answered connection.
pub struct SlotTrack {
    pub mid: String,
    pub payload_type: u8,
    pub ssrc: u32,
    pub track: Arc<TrackLocalStaticRTP>,
}

pub struct Answered {
    pub pc: Arc<dyn PeerConnection>,
    pub answer: String,
    pub slots: Vec<SlotTrack>,
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

pub fn opus_track(stream: &str, id: &str, ssrc: u32) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        stream.to_owned(),
        id.to_owned(),
        id.to_owned(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: opus_codec(),
            ..Default::default()
        }],
    )))
}

/// The media engine for audio conversations: Opus only, the RFC 6464 audio-level extension,
/// the crate's default interceptors (NACK responder, RTCP reports, TWCC). Shared by the
/// worker and the webrtc-rs test/load clients so both sides negotiate the same way.
pub fn audio_engine() -> webrtc::error::Result<(MediaEngine, Registry)> {
    let mut engine = MediaEngine::default();
    engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus_codec(),
            payload_type: 111,
        },
        RtpCodecKind::Audio,
    )?;
    engine.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        Some(RTCRtpTransceiverDirection::Sendrecv),
    )?;
    let registry = register_default_interceptors(Registry::new(), &mut engine)?;
    Ok((engine, registry))
}

/// Builds a peer connection bound to a free port of `RTC_PORTS`.
pub async fn build_peer(
    media: &MediaConfig,
    handler: Arc<dyn PeerConnectionEventHandler>,
) -> Result<Arc<dyn PeerConnection>, NegotiationError> {
    let internal = |e: String| NegotiationError::new(ErrorCode::Internal, e);
    let ip = media.bind_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let mut last_err = String::from("no attempt");
    for _ in 0..16 {
        let Some(port) = free_port(ip, media.ports) else {
            return Err(NegotiationError::new(
                ErrorCode::Unavailable,
                "no free UDP port in RTC_PORTS",
            ));
        };
        let (engine, registry) = audio_engine().map_err(|e| internal(e.to_string()))?;
        let mut settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_answering_dtls_role(RTCDtlsRole::Server)
            // A client that vanishes without closing (crash, lost network) is only noticed
            // by ICE consent; these bound how long its session lingers.
            // Keepalives must come well within the disconnected timeout, or a silent but
            // healthy listener flaps between connected and disconnected.
            .with_ice_timeouts(
                Some(Duration::from_millis(media.ice_disconnected_ms)),
                Some(Duration::from_millis(media.ice_failed_ms)),
                Some(Duration::from_millis(
                    (media.ice_disconnected_ms / 3).clamp(100, 2000),
                )),
            );
        if let Some(public) = media.public_ip {
            settings =
                settings.with_nat_1to1_ips(vec![public.to_string()], RTCIceCandidateType::Host);
        }
        let built = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(engine)
            .with_setting_engine(settings.build())
            .with_interceptor_registry(registry)
            .with_handler(handler.clone())
            .with_udp_addrs(vec![std::net::SocketAddr::new(ip, port)])
            .build()
            .await;
        match built {
            Ok(pc) => return Ok(Arc::new(pc)),
            // Another process took the port between our probe and the bind: try another.
            Err(e) => last_err = e.to_string(),
        }
    }
    Err(internal(format!(
        "cannot build a peer connection: {last_err}"
    )))
}

/// Probes random ports of the range until one binds. The probe socket is closed before the
/// peer connection binds, so a race with another process is possible; `build_peer` retries.
fn free_port(ip: IpAddr, (lo, hi): (u16, u16)) -> Option<u16> {
    let span = (hi - lo) as u32 + 1;
    let mut rng = rand::rng();
    let start = rng.random_range(0..span);
    let tries = span.min(256);
    (0..tries)
        .map(|i| lo + ((start + i) % span) as u16)
        .find(|p| UdpSocket::bind((ip, *p)).is_ok())
}

/// Applies the offer, adds one outgoing track per slot, answers, and waits briefly for ICE
/// gathering so the answer carries our candidates.
pub async fn answer(
    pc: &Arc<dyn PeerConnection>,
    offer: &Offer,
    offer_sdp: String,
    max_slots: usize,
    stream_id: &str,
    gathered: &mut tokio::sync::mpsc::Receiver<()>,
) -> Result<Vec<SlotTrack>, NegotiationError> {
    let bad_sdp = |e: String| NegotiationError::new(ErrorCode::BadSdp, e);
    let internal = |e: String| NegotiationError::new(ErrorCode::Internal, e);
    let desc = RTCSessionDescription::offer(offer_sdp)
        .map_err(|e| bad_sdp(format!("unparseable offer: {e}")))?;
    pc.set_remote_description(desc)
        .await
        .map_err(|e| bad_sdp(format!("offer rejected: {e}")))?;

    let slot_sections = offer.slot_sections(max_slots);
    let last_slot_mid = slot_sections.last().map(|s| s.mid.clone());
    let mut slots = Vec::new();
    let mut filling = last_slot_mid.is_some();
    // Transceiver ids are their index in m-line order; the crate returns them unordered.
    let mut transceivers = pc.get_transceivers().await;
    transceivers.sort_by_key(|t| t.id());
    for t in transceivers {
        let mid = t.mid().await.ok().flatten().unwrap_or_default();
        let Some(section) = offer.audio.iter().find(|s| s.mid == mid) else {
            continue;
        };
        let slot = slot_sections.iter().position(|s| s.mid == mid);
        if filling {
            // add_track fills the first audio transceiver without a sender, in m-line order;
            // a non-slot m-line before the last slot (a send-only microphone) gets a silent
            // placeholder so every slot track lands on its own m-line.
            let ssrc: u32 = rand::random();
            let track = match slot {
                Some(i) => opus_track(stream_id, &format!("slot{i}"), ssrc),
                None => opus_track(stream_id, &format!("unused{}", section.index), ssrc),
            };
            let sender = pc
                .add_track(track.clone() as Arc<dyn TrackLocal>)
                .await
                .map_err(|e| internal(format!("add_track: {e}")))?;
            if RTCRtpTransceiverId::from(sender.id()) != t.id() {
                return Err(internal(format!("slot track did not land on m-line {mid}")));
            }
            if slot.is_some() {
                slots.push(SlotTrack {
                    mid: mid.clone(),
                    payload_type: section.opus_pt,
                    ssrc,
                    track,
                });
            }
            if Some(&mid) == last_slot_mid.as_ref() {
                filling = false;
            }
        } else if section.direction.client_receives() {
            // Beyond MAX_SLOTS: answered inactive.
            let _ = t.set_direction(RTCRtpTransceiverDirection::Inactive).await;
        }
    }
    let answer = pc
        .create_answer(None)
        .await
        .map_err(|e| internal(format!("create_answer: {e}")))?;
    pc.set_local_description(answer)
        .await
        .map_err(|e| internal(format!("set_local_description: {e}")))?;
    let _ = tokio::time::timeout(Duration::from_secs(2), gathered.recv()).await;
    Ok(slots)
}
