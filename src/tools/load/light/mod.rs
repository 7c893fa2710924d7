//! The light load client: many `rtc` sans-I/O peer connections driven by ONE task, for
//! `loadgen --client light`.
//!
//! The full client ([`crate::tools::load::client`]) is a webrtc-crate connection per client: a
//! driver task each, the crate's default interceptors (NACK, reports, TWCC), a jitter buffer
//! per track and a task per incoming track. At ~75 000 packets/s loadgen's own core saturates
//! before the SFU's does. This client does what the measurement needs and nothing else: it
//! signals exactly like the full one (the `/connect` WebSocket, `offer::`/`answer::`/`ice::`/
//! `event::` frames, the `X-User-Claim` identity, `?conversation=` joins), offers the same slot
//! m-lines with the RFC 6464 audio-level extension, sends the same probe payloads at 50
//! packets/s, and counts arrivals with the same [`StreamStats::record`]; but its connections
//! have no interceptors, nothing decodes or buffers, and one task ([`driver`]) reads every
//! socket, runs every timer and sends every probe with plain calls
//! (`handle_read`/`poll_read`/`poll_write`/`poll_event`/`handle_timeout`/`poll_timeout`).
//!
//! Each connection has its own UDP socket and puts its real host candidate (`127.0.0.1:port`)
//! in the offer: the SFU is ICE-lite, so this client is the full, controlling agent that sends
//! the checks and nominates, and a worker that serves all its connections on one port tells
//! them apart by STUN username and then by source address. It is the DTLS client (the answer
//! says `a=setup:passive`).

mod driver;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::Registry;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

pub use driver::LightDriver;
use driver::{Mic, NewPeer};

use super::client::{ClientOptions, StreamStats, ssrcs_by_mid};
use super::ws::{Heard, await_answer, open_websocket, spawn_reader, spawn_writer};
use crate::media::sdp::Offer;
use crate::worker::peer::{audio_media_engine, opus_media_track};

/// What one connection has seen, written by the driver and read by loadgen.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) heard: Heard,
    pub(crate) streams: std::collections::HashMap<u32, StreamStats>,
    pub(crate) connected_at: Option<Instant>,
    pub(crate) ice_connected_at: Option<Instant>,
    pub(crate) first_packet_at: Option<Instant>,
    pub(crate) failed: bool,
    pub(crate) packets: u64,
}

pub(crate) fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One light client: its signalling socket here, its peer connection in the driver.
pub struct LightClient {
    key: u64,
    driver: LightDriver,
    shared: Arc<Mutex<Shared>>,
    ws_out: mpsc::UnboundedSender<Message>,
    /// mid → SSRC of the slot streams, as named by the answer's `a=ssrc` lines.
    pub answer_ssrcs: Vec<(String, u32)>,
    /// Before the WebSocket connect.
    pub started: Instant,
    /// The WebSocket handshake completed.
    pub ws_open_at: Instant,
    /// The offer frame was handed to the WebSocket.
    pub offer_sent_at: Instant,
    pub answer_at: Instant,
}

/// Binds the connection's own UDP socket on `bind_ip`; returns it and its address (the host
/// candidate the offer carries).
fn bind_socket(bind_ip: &str) -> anyhow::Result<(tokio::net::UdpSocket, SocketAddr)> {
    let ip: IpAddr = bind_ip
        .parse()
        .with_context(|| format!("bind address {bind_ip:?}"))?;
    let socket = std::net::UdpSocket::bind((ip, 0)).context("binding a UDP socket")?;
    socket.set_nonblocking(true)?;
    let local: SocketAddr = socket.local_addr()?;
    let socket = tokio::net::UdpSocket::from_std(socket)?;
    Ok((socket, local))
}

/// Builds the peer connection and its offer with `local` as the host candidate; returns
/// them and the microphone (when it sends), numbered as our own offer says.
fn offer_with_mic(
    opts: &ClientOptions,
    local: SocketAddr,
) -> anyhow::Result<(RTCPeerConnection, String, Option<Mic>)> {
    let (mut pc, mic_ssrc) = offerer(opts.sends, opts.slots)?;
    let sdp = offer(&mut pc, local)?;
    let ours = Offer::parse(&sdp).map_err(|e| anyhow!("our own offer: {e}"))?;
    let mic = mic_ssrc.map(|ssrc| {
        Mic::new(
            ssrc,
            ours.audio.first().map_or(111, |a| a.opus_pt),
            ours.audio_level_id,
        )
    });
    Ok((pc, sdp, mic))
}

impl LightClient {
    /// Connects, offers, applies the answer and hands the connection to `driver`; returns
    /// once the answer is applied (ICE may still be checking), as the full client does.
    pub async fn connect(driver: &LightDriver, opts: ClientOptions) -> anyhow::Result<LightClient> {
        let started = Instant::now();
        // The same WebSocket (TCP_NODELAY, as browsers do) and writer as the full client.
        let ws = open_websocket(&opts.url, opts.identity.as_ref()).await?;
        let ws_open_at = Instant::now();
        let (ws_sink, ws_stream) = ws.split();
        let ws_out = spawn_writer(ws_sink);
        let (socket, local) = bind_socket(&opts.bind_ip)?;
        let (mut pc, sdp, mic) = offer_with_mic(&opts, local)?;
        let key = driver.next_key();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let reader_driver = driver.clone();
        let answer_rx = spawn_reader(
            ws_stream,
            false,
            shared.clone(),
            |s: &mut Shared| &mut s.heard,
            move |init| {
                reader_driver.add_remote_candidate(key, init);
                std::future::ready(())
            },
        );
        ws_out
            .send(Message::text(format!("offer::{sdp}")))
            .map_err(|_| anyhow!("websocket closed"))?;
        let offer_sent_at = Instant::now();
        let answer = await_answer(answer_rx).await?;
        let answer_at = Instant::now();
        let answer_ssrcs = ssrcs_by_mid(&answer);
        pc.set_remote_description(Instant::now(), RTCSessionDescription::answer(answer)?)?;
        driver.add(NewPeer {
            key,
            pc,
            socket,
            local,
            shared: shared.clone(),
            latency_samples: opts.latency_samples,
            mic,
        })?;
        Ok(LightClient {
            key,
            driver: driver.clone(),
            shared,
            ws_out,
            answer_ssrcs,
            started,
            ws_open_at,
            offer_sent_at,
            answer_at,
        })
    }

    /// Waits until the peer connection is `connected` (ICE and DTLS); the time since
    /// [`LightClient::started`].
    pub async fn wait_connected(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let s = lock(&self.shared);
                if let Some(t) = s.connected_at {
                    return Ok(t.duration_since(self.started));
                }
                if s.failed {
                    bail!("peer connection failed");
                }
            }
            if Instant::now() > deadline {
                bail!("not connected after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn connected_at(&self) -> Option<Instant> {
        lock(&self.shared).connected_at
    }

    pub fn ice_connected_at(&self) -> Option<Instant> {
        lock(&self.shared).ice_connected_at
    }

    pub fn first_packet_at(&self) -> Option<Instant> {
        lock(&self.shared).first_packet_at
    }

    pub fn packets_received(&self) -> u64 {
        lock(&self.shared).packets
    }

    pub fn reset_latency(&self) {
        for st in lock(&self.shared).streams.values_mut() {
            st.latency_us.clear();
        }
    }

    /// Sends probes tagged `tag` at 50 packets/s with RFC 6464 level `dbov` (−dBov) until
    /// [`LightClient::stop_sending`]; nothing for a client that offered no microphone.
    pub fn start_sending(&self, tag: &str, dbov: u8) {
        self.driver.start_sending(self.key, tag, dbov);
    }

    pub fn stop_sending(&self) {
        self.driver.stop_sending(self.key);
    }

    /// Per incoming SSRC, what arrived so far (with the mid from the answer, where named).
    pub fn streams(&self) -> Vec<(u32, StreamStats)> {
        let s = lock(&self.shared);
        let mut v: Vec<_> = s
            .streams
            .iter()
            .map(|(ssrc, st)| {
                let mut st = st.clone();
                st.mid = self
                    .answer_ssrcs
                    .iter()
                    .find(|(_, x)| x == ssrc)
                    .map(|(m, _)| m.clone());
                (*ssrc, st)
            })
            .collect();
        v.sort_by_key(|(ssrc, _)| *ssrc);
        v
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        lock(&self.shared).heard.events.clone()
    }

    pub fn errors(&self) -> Vec<serde_json::Value> {
        lock(&self.shared).heard.errors.clone()
    }

    /// Closes the peer connection (DTLS close_notify) and the signalling socket.
    pub async fn close(&self) {
        self.driver.close(self.key).await;
        let _ = self.ws_out.send(Message::Close(None));
    }
}

/// Creates and applies the offer, with `local` as its one host candidate (gathering is then
/// complete: nothing trickles). Returns the offer's SDP, candidate included.
fn offer(pc: &mut RTCPeerConnection, local: SocketAddr) -> anyhow::Result<String> {
    let offer = pc.create_offer(None)?;
    pc.set_local_description(Instant::now(), offer)?;
    let host = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: local.ip().to_string(),
            port: local.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()?;
    pc.add_local_candidate(RTCIceCandidate::from(&host).to_json()?)?;
    // End of candidates: this is the only one.
    pc.add_local_candidate(RTCIceCandidateInit::default())?;
    Ok(pc
        .local_description()
        .ok_or_else(|| anyhow!("no local description"))?
        .sdp)
}

/// A new offering connection: Opus and the audio-level extension, no interceptors (nothing
/// here needs NACK, reports or congestion feedback), mDNS off; the first m-line carries the
/// microphone (`sendrecv`) or only receives (`recvonly`), then `slots − 1` receive-only
/// m-lines. Returns the microphone's SSRC when there is one.
fn offerer(sends: bool, slots: usize) -> anyhow::Result<(RTCPeerConnection, Option<u32>)> {
    let engine = audio_media_engine()?;
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .build();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(engine)
        .with_setting_engine(settings)
        .with_interceptor_registry(Registry::new())
        .build(Instant::now())?;
    let recvonly = || {
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            ..Default::default()
        })
    };
    let mic_ssrc = if sends {
        let ssrc: u32 = rand::random();
        pc.add_track(opus_media_track("mic", "mic", ssrc))?;
        Some(ssrc)
    } else {
        pc.add_transceiver_from_kind(RtpCodecKind::Audio, recvonly())?;
        None
    };
    for _ in 1..slots.max(1) {
        pc.add_transceiver_from_kind(RtpCodecKind::Audio, recvonly())?;
    }
    Ok((pc, mic_ssrc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::sdp::{AUDIO_LEVEL_URI, Direction};

    /// The offers the SFU gets: K audio m-lines, the first sending only for a speaker, the
    /// audio-level extension, and the client's real host candidate.
    #[test]
    fn offers_slots_the_level_extension_and_the_host_candidate() {
        let local: SocketAddr = "127.0.0.1:40123".parse().unwrap();
        for (sends, first) in [(true, Direction::SendRecv), (false, Direction::RecvOnly)] {
            let (mut pc, mic) = offerer(sends, 3).unwrap();
            assert_eq!(mic.is_some(), sends);
            let sdp = offer(&mut pc, local).unwrap();
            let o = Offer::parse(&sdp).unwrap();
            let directions: Vec<Direction> = o.audio.iter().map(|a| a.direction).collect();
            assert_eq!(
                directions,
                [first, Direction::RecvOnly, Direction::RecvOnly],
                "{sdp}"
            );
            assert_eq!(o.slot_sections(3).len(), 3);
            assert!(o.audio_level_id.is_some(), "no {AUDIO_LEVEL_URI}: {sdp}");
            assert!(
                sdp.lines()
                    .any(|l| l.starts_with("a=candidate:")
                        && l.contains(" 127.0.0.1 40123 typ host")),
                "{sdp}"
            );
            assert!(sdp.contains("a=setup:actpass"), "{sdp}");
        }
    }
}
