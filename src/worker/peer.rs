//! Answering one client's offer with an `rtc =0.21.1` peer connection (the sans-I/O core of
//! webrtc-rs): the connection is a plain state machine that [`super::engine`] drives, and this
//! module only builds it and writes the answer.
//!
//! The order of calls matters and is the crate's, verified in `../shared/RECIPES.md`:
//! the media engine registers Opus and the RFC 6464 extension; the answer is DTLS server
//! (`a=setup:passive`); mDNS is off; the offer is applied *before* outgoing tracks are added,
//! so each track binds with the negotiated extension ids and reuses the offer's transceiver.
//!
//! Every peer connection of the conversation shares the worker's one UDP port
//! (`engine::port`), so each answer carries the same single host candidate, and each
//! connection gets ICE credentials of its own ([`IceCredentials`]), by which the port tells
//! its connections apart. The candidate is in the answer itself, so nothing trickles from
//! our side.
//!
//! The answer is **ICE-lite** (`a=ice-lite`, RFC 8445 §2.5): with one host candidate there is
//! nothing for the server to choose, so the client (always a full agent) is controlling and
//! does the checks; the server only answers them. It never pings the candidates a client
//! offers or trickles — a full agent would, which let any client aim the server's STUN
//! requests at an address of its choosing — and sends no consent checks of its own (the
//! client's checks and media keep the pair alive). `rtc`'s lite agent still sends one check
//! back to the source of an *authenticated* request (its triggered check, which makes the
//! pair usable); that address is where the client already is.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::network_type::NetworkType;
use rtc::ice::tcp_type::TcpType;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_rtcp_reports, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MediaEngine};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate,
};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverId};

use super::feedback::{FEEDBACK_SLOT, Feedback, LossFloor};
use crate::media::sdp::{AUDIO_LEVEL_URI, Offer};
use crate::wire::ipc::MediaConfig;
use crate::wire::signal::ErrorCode;

/// A failed negotiation, with the `error::` code the client will see.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct NegotiationError {
    pub code: ErrorCode,
    pub message: String,
}

impl NegotiationError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        NegotiationError {
            code,
            message: message.into(),
        }
    }
}

/// One outgoing slot stream of an answered connection: the engine writes packets with this
/// SSRC and payload type into the connection, and the pipeline sends them on this m-line.
pub struct SlotSender {
    pub mid: String,
    pub payload_type: u8,
    pub ssrc: u32,
    /// The RED payload type, when the answer has RED on this m-line.
    pub red_pt: Option<u8>,
    /// The client asked for NACK on this m-line (and the answer has it).
    pub nack: bool,
}

/// An answered offer: the connection and the SDP to send back.
pub struct Answered {
    pub pc: RTCPeerConnection,
    pub answer: String,
    pub slots: Vec<SlotSender>,
}

/// A connection's own ICE credentials: the worker's port tells its connections apart by the
/// username fragment in each STUN request, and checks the request with the password.
#[derive(Clone, Debug)]
pub struct IceCredentials {
    pub ufrag: String,
    pub pwd: String,
}

impl IceCredentials {
    /// Fresh random credentials: 16 and 32 characters of `[A-Za-z0-9]` (RFC 8839 asks for at
    /// least 24 bits of randomness in the ufrag and 128 in the password; these carry 95 and 190).
    pub fn random() -> IceCredentials {
        let mut rng = rand::rng();
        let mut text = |n: usize| -> String {
            (0..n)
                .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
                .collect()
        };
        IceCredentials {
            ufrag: text(16),
            pwd: text(32),
        }
    }
}

/// Our Opus, and the parameters we ask senders for (RFC 7587 §6.1). `usedtx=1`: a member who
/// is silent or muted sends about 5 packets a second instead of 50 (Chromium: a comfort-noise
/// update and one DTX frame every 400 ms); nothing is lost by it, because silence is never
/// forwarded nor cut into bites
/// (`crate::media::speech` takes DTX frames for silence) and bites fill the gaps DTX leaves
/// (`crate::media::ogg_opus`).
fn opus_codec() -> RTCRtpCodec {
    opus_codec_with(vec![])
}

/// [`opus_codec`] with RTCP feedback: `nack` for a client that asks to retransmit.
fn opus_codec_with(rtcp_feedback: Vec<RTCPFeedback>) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1;usedtx=1".to_owned(),
        rtcp_feedback,
    }
}

/// Puts [`opus_codec`]'s parameters on every Opus `a=fmtp` line of an answer, ours winning
/// over the offer's. `rtc` answers with the *offer's* Opus fmtp (its negotiated codec is the
/// remote one, whatever the media engine registered), so without this the answer would never
/// ask a browser for DTX. An Opus payload type without an fmtp line gets one.
fn with_our_opus_params(sdp: &str) -> String {
    let ours = opus_codec().sdp_fmtp_line;
    let lines: Vec<&str> = sdp.split_inclusive("\r\n").collect();
    let mut out = String::with_capacity(sdp.len() + 64);
    // Payload type numbers belong to their m-section: each section is rewritten on its own.
    let mut start = 0;
    while start < lines.len() {
        let end = lines[start + 1..]
            .iter()
            .position(|l| l.starts_with("m="))
            .map_or(lines.len(), |i| start + 1 + i);
        let section = &lines[start..end];
        let opus: Vec<&str> = section
            .iter()
            .filter_map(|l| l.strip_prefix("a=rtpmap:")?.split_once(' '))
            .filter(|(_, codec)| codec.to_ascii_lowercase().starts_with("opus/48000"))
            .map(|(pt, _)| pt)
            .collect();
        for line in section {
            if let Some((pt, theirs)) = opus_fmtp(line, &opus) {
                out.push_str(&format!("a=fmtp:{pt} {}\r\n", merge_fmtp(theirs, &ours)));
                continue;
            }
            out.push_str(line);
            let bare = line
                .strip_prefix("a=rtpmap:")
                .and_then(|r| r.split_once(' '))
                .map(|(pt, _)| pt)
                .filter(|pt| opus.contains(pt))
                .filter(|pt| {
                    !section
                        .iter()
                        .any(|l| opus_fmtp(l, &opus).is_some_and(|f| f.0 == *pt))
                });
            if let Some(pt) = bare {
                out.push_str(&format!("a=fmtp:{pt} {ours}\r\n"));
            }
        }
        start = end;
    }
    out
}

/// The payload type and parameters of an `a=fmtp` line for one of the `opus` payload types.
fn opus_fmtp<'a>(line: &'a str, opus: &[&str]) -> Option<(&'a str, &'a str)> {
    let (pt, params) = line.strip_prefix("a=fmtp:")?.split_once(' ')?;
    opus.contains(&pt).then_some((pt, params.trim_end()))
}

/// `theirs` with each `key=value` of `ours` set (replaced where present, else appended).
fn merge_fmtp(theirs: &str, ours: &str) -> String {
    let ours: Vec<(&str, &str)> = ours.split(';').filter_map(|p| p.split_once('=')).collect();
    let mut params: Vec<String> = theirs
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let key = p.split_once('=').map_or(*p, |(k, _)| k).trim();
            !ours.iter().any(|(k, _)| k.eq_ignore_ascii_case(key))
        })
        .map(str::to_owned)
        .collect();
    params.extend(ours.iter().map(|(k, v)| format!("{k}={v}")));
    params.join(";")
}

/// An outgoing Opus track with one fixed SSRC.
pub fn opus_media_track(stream: &str, id: &str, ssrc: u32) -> MediaStreamTrack {
    MediaStreamTrack::new(
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
    )
}

/// The media engine of the webrtc-rs test and load clients (`crate::loadtools`): [`audio_media_engine`] with the
/// crate's default interceptors, as an application built on webrtc-rs would have them, and
/// [`Feedback`] so the tests see the SFU's reports; with `red`, RED offered as Chromium does;
/// with `nack`, generic NACK asked for on Opus.
#[cfg(feature = "loadtools")]
pub fn audio_engine(red: bool, nack: bool) -> rtc::shared::error::Result<(MediaEngine, Registry)> {
    use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
    let mut engine = audio_media_engine_with(red, nack)?;
    let registry = register_default_interceptors(Registry::new(), &mut engine)?
        .with(FEEDBACK_SLOT, Feedback::new(LossFloor::default()));
    Ok((engine, registry))
}

/// The worker's: RTCP sender/receiver reports and transport-wide congestion control feedback
/// (which browsers use to adapt their send rate), our own link for the RTCP the engine acts
/// on ([`Feedback`]: listeners' reports in, the loss floor onto ours, NACKs in), and not
/// rtc's NACK responder: it keeps a copy of every packet sent on every connection, and every
/// interceptor in the chain moves each forwarded packet through a queue of its own (with the
/// default set the chain was the largest single cost per forwarded packet,
/// docs/BENCHMARKS.md). A client that asks for NACK is answered from the room's slot history
/// instead (`crate::media::retransmit`), kept only for it.
fn server_engine(
    floor: &LossFloor,
    red: bool,
    nack: bool,
) -> rtc::shared::error::Result<(MediaEngine, Registry)> {
    let mut engine = audio_media_engine_with(red, nack)?;
    let registry =
        configure_rtcp_reports(Registry::new()).with(FEEDBACK_SLOT, Feedback::new(floor.clone()));
    let registry = configure_twcc_receiver_only(registry, &mut engine)?;
    Ok((engine, registry))
}

/// Opus only (payload type 111) and the RFC 6464 audio-level extension.
#[cfg(any(test, feature = "loadtools"))]
pub(crate) fn audio_media_engine() -> rtc::shared::error::Result<MediaEngine> {
    audio_media_engine_with(false, false)
}

/// [`audio_media_engine`], with [RED](register_red) when `red` and generic NACK on Opus when
/// `nack`.
pub(crate) fn audio_media_engine_with(
    red: bool,
    nack: bool,
) -> rtc::shared::error::Result<MediaEngine> {
    let feedback = if nack {
        vec![RTCPFeedback {
            typ: "nack".to_owned(),
            parameter: String::new(),
        }]
    } else {
        vec![]
    };
    let mut engine = MediaEngine::default();
    engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus_codec_with(feedback),
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
    if red {
        register_red(&mut engine)?;
    }
    Ok(engine)
}

/// RED over our Opus (RFC 2198, `red/48000/2`, `111/111` as Chromium offers it): registered,
/// `rtc` answers it where a client offers it (matching by name when the client's Opus has
/// another number), and the slots whose answer has it get redundancy ([`crate::media::red`]).
fn register_red(engine: &mut MediaEngine) -> rtc::shared::error::Result<()> {
    engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: "audio/red".to_owned(),
                clock_rate: 48000,
                channels: 2,
                sdp_fmtp_line: "111/111".to_owned(),
                rtcp_feedback: vec![],
            },
            payload_type: RED_PT,
        },
        RtpCodecKind::Audio,
    )
}

/// The payload type RED is registered under (Chromium's): what a client built on this media
/// engine offers it as.
pub const RED_PT: u8 = 63;

/// Builds a peer connection for `offer`, adds one outgoing track per slot and answers.
/// `local` is the worker's UDP port as clients reach it, `tcp_local` its ICE-TCP port if it
/// has one, `ice` this connection's credentials.
#[allow(clippy::too_many_arguments)]
pub fn answer(
    media: &MediaConfig,
    offer: &Offer,
    offer_sdp: String,
    stream_id: &str,
    local: SocketAddr,
    tcp_local: Option<SocketAddr>,
    ice: &IceCredentials,
    floor: &LossFloor,
    now: Instant,
) -> Result<Answered, NegotiationError> {
    let bad_sdp = |e: String| NegotiationError::new(ErrorCode::BadSdp, e);
    let nack = offer.slots_nack(media.max_slots);
    let mut pc = server_connection(media, ice, tcp_local.is_some(), floor, nack, now)?;
    let desc = RTCSessionDescription::offer(offer_sdp)
        .map_err(|e| bad_sdp(format!("unparseable offer: {e}")))?;
    pc.set_remote_description(now, desc)
        .map_err(|e| bad_sdp(format!("offer rejected: {e}")))?;
    let slots = add_slot_tracks(&mut pc, offer, media, stream_id)?;
    add_host_candidates(&mut pc, local, tcp_local)?;

    let answer = pc
        .create_answer(None)
        .map_err(|e| internal(format!("create_answer: {e}")))?;
    pc.set_local_description(now, answer)
        .map_err(|e| internal(format!("set_local_description: {e}")))?;
    // Our Opus parameters go on the text the client gets, after rtc has taken its answer:
    // rtc refuses a changed one (JSEP forbids munging, "new sdp does not match previous
    // answer"). Its copy then differs only in what the client is asked to send, which rtc does
    // not act on, and this connection never renegotiates (a new offer gets a new connection).
    let answer = pc
        .local_description()
        .map(|d| with_our_opus_params(&d.sdp))
        .ok_or_else(|| internal("no local description".into()))?;
    Ok(Answered { pc, answer, slots })
}

fn internal(e: String) -> NegotiationError {
    NegotiationError::new(ErrorCode::Internal, e)
}

/// A server-side connection as every answer needs it: ICE-lite with our credentials, the
/// DTLS server, mDNS off, TCP candidates only with an ICE-TCP port, and ICE timeouts from
/// the settings.
fn server_connection(
    media: &MediaConfig,
    ice: &IceCredentials,
    tcp: bool,
    floor: &LossFloor,
    nack: bool,
    now: Instant,
) -> Result<RTCPeerConnection, NegotiationError> {
    let (engine, registry) =
        server_engine(floor, media.red_distance > 0, nack).map_err(|e| internal(e.to_string()))?;
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_answering_dtls_role(RTCDtlsRole::Server)
        .with_lite(true)
        .with_ice_credentials(ice.ufrag.clone(), ice.pwd.clone())
        .with_network_types(if tcp {
            vec![
                NetworkType::Udp4,
                NetworkType::Udp6,
                NetworkType::Tcp4,
                NetworkType::Tcp6,
            ]
        } else {
            vec![NetworkType::Udp4, NetworkType::Udp6]
        })
        // A client that vanishes without closing (crash, lost network) is only noticed by
        // ICE consent; these bound how long its session lingers. Keepalives must come well
        // within the disconnected timeout, or a silent but healthy listener flaps.
        .with_ice_timeouts(
            Some(Duration::from_millis(media.ice_disconnected_ms)),
            Some(Duration::from_millis(media.ice_failed_ms)),
            Some(Duration::from_millis(
                (media.ice_disconnected_ms / 3).clamp(100, 2000),
            )),
        )
        .build();
    RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(engine)
        .with_setting_engine(settings)
        .with_interceptor_registry(registry)
        .build(now)
        .map_err(|e| internal(format!("peer connection: {e}")))
}

/// One track per slot (up to `max_slots` receiving m-lines, in order), each on its own
/// m-line; receiving m-lines beyond them are answered inactive.
fn add_slot_tracks(
    pc: &mut RTCPeerConnection,
    offer: &Offer,
    media: &MediaConfig,
    stream_id: &str,
) -> Result<Vec<SlotSender>, NegotiationError> {
    let slot_sections = offer.slot_sections(media.max_slots);
    let last_slot_mid = slot_sections.last().map(|s| s.mid.clone());
    let mut slots = Vec::new();
    let mut filling = last_slot_mid.is_some();
    // Transceiver ids are their index, in m-line order.
    let transceivers: Vec<RTCRtpTransceiverId> = pc.get_transceivers().collect();
    for t in transceivers {
        let mid = pc
            .rtp_transceiver(t)
            .and_then(|tr| tr.mid().clone())
            .unwrap_or_default();
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
                Some(i) => opus_media_track(stream_id, &format!("slot{i}"), ssrc),
                None => opus_media_track(stream_id, &format!("unused{}", section.index), ssrc),
            };
            let sender = pc
                .add_track(track)
                .map_err(|e| internal(format!("add_track: {e}")))?;
            if RTCRtpTransceiverId::from(sender) != t {
                return Err(internal(format!("slot track did not land on m-line {mid}")));
            }
            if slot.is_some() {
                slots.push(SlotSender {
                    mid: mid.clone(),
                    payload_type: section.opus_pt,
                    ssrc,
                    red_pt: section.red_pt.filter(|_| media.red_distance > 0),
                    nack: section.nack,
                });
            }
            if Some(&mid) == last_slot_mid.as_ref() {
                filling = false;
            }
        } else if section.direction.client_receives() {
            // Beyond MAX_SLOTS: answered inactive.
            if let Some(mut tr) = pc.rtp_transceiver(t) {
                tr.set_direction(RTCRtpTransceiverDirection::Inactive);
            }
        }
    }
    Ok(slots)
}

/// The worker's host candidates: its UDP port, then its passive ICE-TCP port if it has one.
fn add_host_candidates(
    pc: &mut RTCPeerConnection,
    local: SocketAddr,
    tcp_local: Option<SocketAddr>,
) -> Result<(), NegotiationError> {
    // The UDP candidate first; the passive TCP one (ICE-TCP) only for clients whose UDP does
    // not get through (its priority is lower, RFC 6544 §4.2).
    let candidates = std::iter::once((local, "udp", TcpType::Unspecified))
        .chain(tcp_local.map(|t| (t, "tcp", TcpType::Passive)));
    for (addr, network, tcp_type) in candidates {
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: network.to_owned(),
                address: addr.ip().to_string(),
                port: addr.port(),
                component: 1,
                ..Default::default()
            },
            tcp_type,
        }
        .new_candidate_host()
        .and_then(|c| RTCIceCandidate::from(&c).to_json())
        .map_err(|e| internal(format!("{network} host candidate: {e}")))?;
        pc.add_local_candidate(candidate)
            .map_err(|e| internal(format!("{network} host candidate: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(bind_ip: &str, ports: (u16, u16)) -> MediaConfig {
        MediaConfig::for_tests(bind_ip, ports)
    }

    /// A Chromium-shaped offer: three audio m-lines, Opus 111 with Chromium's own parameters
    /// (and, on the last, none at all, as some clients send), the audio-level extension.
    fn offer_sdp() -> String {
        let mut sdp = String::from(
            "v=0\r\no=- 4215775240449105457 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
             a=group:BUNDLE 0 1 2\r\na=msid-semantic: WMS\r\n",
        );
        for mid in 0..3 {
            let fmtp = match mid {
                2 => String::new(),
                _ => "a=fmtp:111 minptime=10;useinbandfec=1\r\n".to_owned(),
            };
            sdp.push_str(&format!(
                "m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
                 a=ice-ufrag:QWERTYUIOPASDFGH\r\na=ice-pwd:qwertyuiopasdfghjklzxcvbnm123456\r\n\
                 a=fingerprint:sha-256 AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89\r\n\
                 a=setup:actpass\r\na=mid:{mid}\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
                 a={}\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n{fmtp}a=rtpmap:0 PCMU/8000\r\n",
                if mid == 0 { "sendrecv" } else { "recvonly" },
            ));
        }
        sdp
    }

    /// The answer asks for DTX on every Opus m-line, beside the client's own parameters, and
    /// rtc still accepts the connection (it answers with the offer's Opus fmtp by itself).
    /// The answer of a worker on 127.0.0.1:42000 (UDP only) to `sdp`.
    fn answer_on_loopback(m: &MediaConfig, offer: &Offer, sdp: &str) -> Answered {
        answer(
            m,
            offer,
            sdp.to_owned(),
            "beep-1",
            "127.0.0.1:42000".parse().expect("an address"),
            None,
            &IceCredentials::random(),
            &LossFloor::default(),
            Instant::now(),
        )
        .expect("answered")
    }

    /// A client that offers RED (as Chromium does: `63 111/111`) gets it back on its slots,
    /// and Opus stays the first codec of every m-line, so a browser keeps sending plain Opus;
    /// with `RED_DISTANCE=0` RED is not answered.
    #[test]
    fn red_is_answered_where_offered_after_opus() {
        let sdp = offer_sdp()
            .replace("SAVPF 111 0\r\n", "SAVPF 111 63 0\r\n")
            .replace(
                "a=rtpmap:0 PCMU/8000\r\n",
                "a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\na=rtpmap:0 PCMU/8000\r\n",
            );
        let offer = Offer::parse(&sdp).expect("offer parses");
        let answer_with = |distance: u8| {
            let mut m = media("127.0.0.1", (42_000, 42_999));
            m.red_distance = distance;
            answer_on_loopback(&m, &offer, &sdp)
        };
        let a = answer_with(1);
        let reds: Vec<Option<u8>> = a.slots.iter().map(|s| s.red_pt).collect();
        assert_eq!(reds, [Some(63); 3]);
        let m_lines: Vec<&str> = a
            .answer
            .lines()
            .filter(|l| l.starts_with("m=audio"))
            .collect();
        assert!(
            m_lines.iter().all(|m| m.contains("SAVPF 111 63")),
            "Opus first, then RED: {m_lines:?}"
        );
        assert_eq!(
            a.answer.matches("a=fmtp:63 111/111").count(),
            3,
            "{}",
            a.answer
        );
        let off = answer_with(0);
        assert!(off.slots.iter().all(|s| s.red_pt.is_none()));
        assert!(!off.answer.contains("red/48000"), "{}", off.answer);
    }

    #[test]
    fn the_answer_asks_for_opus_dtx() {
        let sdp = offer_sdp();
        let offer = Offer::parse(&sdp).expect("offer parses");
        let a = answer_on_loopback(&media("127.0.0.1", (42_000, 42_999)), &offer, &sdp);
        let fmtp: Vec<&str> = a
            .answer
            .lines()
            .filter(|l| l.starts_with("a=fmtp:"))
            .collect();
        assert_eq!(
            fmtp,
            vec![
                "a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1",
                "a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1",
                "a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1",
            ],
            "{}",
            a.answer
        );
        assert!(a.answer.ends_with("\r\n") && !a.answer.contains("\r\n\r\n"));
        assert_eq!(a.slots.len(), 3);
    }

    #[test]
    fn our_opus_parameters_win_and_others_stay() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96 0\r\na=rtpmap:96 OPUS/48000/2\r\n\
                   a=fmtp:96 stereo=1; usedtx=0;useinbandfec=0\r\na=rtpmap:0 PCMU/8000\r\n\
                   a=fmtp:0 usedtx=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        assert_eq!(
            with_our_opus_params(sdp),
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96 0\r\na=rtpmap:96 OPUS/48000/2\r\n\
             a=fmtp:96 stereo=1;minptime=10;useinbandfec=1;usedtx=1\r\na=rtpmap:0 PCMU/8000\r\n\
             a=fmtp:0 usedtx=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
             a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1\r\n"
        );
    }
}
