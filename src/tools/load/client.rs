//! A webrtc-rs client of the `/connect` protocol, for the integration tests and `loadgen`.
//!
//! It does what a real app does: opens the WebSocket with an identity, offers one sendrecv
//! microphone m-line plus recvonly slot m-lines, trickles and accepts candidates, and sends
//! Opus-sized RTP at 50 packets/s. The payload is not audio but a *probe*: the sender's tag,
//! a send timestamp and a counter, which the SFU must not touch. That lets a receiver say
//! exactly who it heard, how late, and what it missed.
//!
//! For the bite tests it can also [`Client::speak`] real Opus packets (e.g. from `opusenc`),
//! paced in real time, on the same RTP stream: one SSRC, continuous sequence numbers, and a
//! timestamp that runs on with the wall clock through pauses, as a muted sender's does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::rtp;
use rtc::rtp::extension::HeaderExtension;
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceConnectionState, RTCIceGatheringState, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription, SettingEngineBuilder,
};

use super::feedback;
use super::mic_clock::MicClock;
use super::red;
use super::ticks::SendTicks;
use super::ws::{Heard, await_answer, open_websocket, spawn_reader, spawn_writer};
use crate::media::opus;
use crate::media::red::RedEncoder;
use crate::wire::identity::Identity;
use crate::worker::peer::{audio_engine, opus_media_track};

pub use super::probe::{PROBE_SIZE, now_micros, parse_probe, parse_probe_ref, probe_payload};
pub use super::stream::StreamStats;

/// One entry of [`Client::send_script`]: what happens to one upstream sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// An audio (probe) packet, sent.
    Audio,
    /// An audio packet lost on the way to the SFU: its number is used, nothing is sent.
    Lost,
    /// A padding-only packet, sent.
    Padding,
}

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `ws://host:port/connect[?conversation=...]`.
    pub url: String,
    pub identity: Option<Identity>,
    /// Receive slots to offer (the microphone m-line counts as the first).
    pub slots: usize,
    /// Send the offer as a bare SDP frame, like the seed-era JavaScript.
    pub legacy_raw_offer: bool,
    pub bind_ip: String,
    /// Keep at most this many latency samples per stream.
    pub latency_samples: usize,
    /// Offer the first m-line `sendrecv` (a speaker's microphone) or `recvonly` (a listener).
    /// The full client always offers `sendrecv`, as a browser with a microphone does; the
    /// light client follows this.
    pub sends: bool,
    /// Where the send ticks' lateness goes (loadgen's report), if anywhere.
    pub send_ticks: Option<Arc<SendTicks>>,
    /// Offer RED (`red/48000/2`, payload type 63) and, when answered, send RED (one packet
    /// of redundancy) and unpack what arrives as RED.
    pub red: bool,
    /// Ask for generic NACK on Opus (no browser does for audio): the SFU then resends what
    /// [`Client::nack`] names.
    pub nack: bool,
}

impl ClientOptions {
    pub fn new(url: impl Into<String>, userid: &str, clientid: &str) -> Self {
        ClientOptions {
            url: url.into(),
            identity: Some(Identity {
                userid: userid.into(),
                clientid: clientid.into(),
            }),
            slots: 1,
            legacy_raw_offer: false,
            bind_ip: "127.0.0.1".into(),
            latency_samples: 10_000,
            sends: true,
            send_ticks: None,
            red: false,
            nack: false,
        }
    }
}

#[derive(Default)]
struct Shared {
    heard: Heard,
    /// RED packets received, and how many of them carried the probe right before theirs.
    red: red::Received,
    /// The slot tracks, as they opened (for writing RTCP about them).
    tracks: Vec<Arc<dyn TrackRemote>>,
    streams: HashMap<u32, StreamStats>,
    state: Option<RTCPeerConnectionState>,
    connected_at: Option<Instant>,
    ice_connected_at: Option<Instant>,
    first_packet_at: Option<Instant>,
    packets: u64,
}

pub struct Client {
    pub pc: Arc<dyn PeerConnection>,
    shared: Arc<Mutex<Shared>>,
    ws_out: mpsc::UnboundedSender<Message>,
    mic: Arc<TrackLocalStaticRTP>,
    mic_ssrc: u32,
    /// What the SFU's reports said was lost of the microphone stream.
    told: feedback::Told,
    /// mid → SSRC of the slot streams, as named by the answer's `a=ssrc` lines.
    pub answer_ssrcs: Vec<(String, u32)>,
    pub answer_sdp: String,
    /// Before the WebSocket connect.
    pub started: Instant,
    /// The WebSocket handshake completed.
    pub ws_open_at: Instant,
    /// The offer frame was handed to the WebSocket (after local gathering).
    pub offer_sent_at: Instant,
    pub answer_at: Instant,
    /// Which [`Client::start_sending`] may send: the task whose number this is.
    sending: Arc<AtomicU64>,
    /// The microphone's RTP numbering, held by whoever sends (one sender at a time).
    mic_clock: Arc<tokio::sync::Mutex<MicClock>>,
    send_ticks: Option<Arc<SendTicks>>,
}

struct Handler {
    shared: Arc<Mutex<Shared>>,
    gathered: mpsc::Sender<()>,
    ws_out: mpsc::UnboundedSender<Message>,
    latency_samples: usize,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, ev: RTCPeerConnectionIceEvent) {
        if let Ok(init) = ev.candidate.to_json()
            && let Ok(json) = serde_json::to_string(&init)
        {
            let _ = self.ws_out.send(Message::text(format!("ice::{json}")));
        }
    }
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.try_send(());
        }
    }
    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        if state == RTCIceConnectionState::Connected {
            lock(&self.shared)
                .ice_connected_at
                .get_or_insert(Instant::now());
        }
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let mut s = lock(&self.shared);
        s.state = Some(state);
        if state == RTCPeerConnectionState::Connected && s.connected_at.is_none() {
            s.connected_at = Some(Instant::now());
        }
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        lock(&self.shared).tracks.push(track.clone());
        let shared = self.shared.clone();
        let cap = self.latency_samples;
        tokio::spawn(async move {
            while let Some(evt) = track.poll().await {
                let TrackRemoteEvent::OnRtpPacket(pkt) = evt else {
                    continue;
                };
                let now = Instant::now();
                let mut s = lock(&shared);
                s.packets += 1;
                s.first_packet_at.get_or_insert(now);
                let payload = match s.red.primary(&pkt) {
                    Some(primary) => primary,
                    None => pkt.payload.clone(),
                };
                s.streams.entry(pkt.header.ssrc).or_default().record(
                    &pkt.header,
                    &payload,
                    now,
                    cap,
                );
            }
        });
    }
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Builds the peer connection, bound to `opts.bind_ip`, with its events going to `shared` and
/// its candidates to `ws_out`. Also returns the receiver told when gathering completes.
async fn build_peer(
    opts: &ClientOptions,
    shared: &Arc<Mutex<Shared>>,
    ws_out: &mpsc::UnboundedSender<Message>,
) -> anyhow::Result<(Arc<dyn PeerConnection>, mpsc::Receiver<()>)> {
    let (engine, registry) = audio_engine(opts.red, opts.nack)?;
    let (gathered_tx, gathered) = mpsc::channel(1);
    let handler = Arc::new(Handler {
        shared: shared.clone(),
        gathered: gathered_tx,
        ws_out: ws_out.clone(),
        latency_samples: opts.latency_samples,
    });
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .build();
    let pc: Arc<dyn PeerConnection> = Arc::new(
        PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(engine)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(vec![format!("{}:0", opts.bind_ip)])
            .build()
            .await?,
    );
    Ok((pc, gathered))
}

/// Adds the microphone track (the first m-line) and `slots - 1` recvonly transceivers;
/// returns the microphone and its SSRC.
async fn add_tracks(
    pc: &Arc<dyn PeerConnection>,
    slots: usize,
) -> anyhow::Result<(Arc<TrackLocalStaticRTP>, u32)> {
    let mic_ssrc: u32 = rand::random();
    let mic = Arc::new(TrackLocalStaticRTP::new(opus_media_track(
        "mic", "mic", mic_ssrc,
    )));
    pc.add_track(mic.clone() as Arc<dyn TrackLocal>).await?;
    for _ in 1..slots.max(1) {
        pc.add_transceiver_from_kind(
            RtpCodecKind::Audio,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            }),
        )
        .await?;
    }
    Ok((mic, mic_ssrc))
}

/// Creates and applies the offer, waits up to 2 s for local gathering, and returns the SDP
/// with the candidates gathered by then.
async fn gathered_offer(
    pc: &Arc<dyn PeerConnection>,
    mut gathered: mpsc::Receiver<()>,
) -> anyhow::Result<String> {
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer).await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), gathered.recv()).await;
    Ok(pc
        .local_description()
        .await
        .ok_or_else(|| anyhow!("no local description"))?
        .sdp)
}

impl Client {
    /// Connects, offers, and returns once the answer is applied (ICE may still be checking).
    pub async fn connect(opts: ClientOptions) -> anyhow::Result<Client> {
        let started = Instant::now();
        let ws = open_websocket(&opts.url, opts.identity.as_ref()).await?;
        let ws_open_at = Instant::now();
        let (ws_sink, ws_stream) = ws.split();
        let ws_out = spawn_writer(ws_sink);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (pc, gathered) = build_peer(&opts, &shared, &ws_out).await?;
        let (mic, mic_ssrc) = add_tracks(&pc, opts.slots).await?;
        let sdp = gathered_offer(&pc, gathered).await?;
        let reader_pc = pc.clone();
        let answer_rx = spawn_reader(
            ws_stream,
            opts.legacy_raw_offer,
            shared.clone(),
            |s: &mut Shared| &mut s.heard,
            move |init| {
                let pc = reader_pc.clone();
                async move {
                    let _ = pc.add_ice_candidate(init).await;
                }
            },
        );
        let frame = if opts.legacy_raw_offer {
            sdp
        } else {
            format!("offer::{sdp}")
        };
        ws_out
            .send(Message::text(frame))
            .map_err(|_| anyhow!("websocket closed"))?;
        let offer_sent_at = Instant::now();
        let answer = await_answer(answer_rx).await?;
        let answer_at = Instant::now();
        let answer_ssrcs = ssrcs_by_mid(&answer);
        let red_answered = opts.red && answer.contains("red/48000");
        let told = feedback::Told::default();
        feedback::spawn_mic_feedback(mic.clone(), mic_ssrc, told.clone());
        pc.set_remote_description(RTCSessionDescription::answer(answer.clone())?)
            .await?;
        Ok(Client {
            pc,
            shared,
            ws_out,
            mic,
            mic_ssrc,
            told,
            answer_ssrcs,
            answer_sdp: answer,
            started,
            ws_open_at,
            offer_sent_at,
            answer_at,
            sending: Arc::new(AtomicU64::new(0)),
            mic_clock: Arc::new(tokio::sync::Mutex::new(MicClock::new(
                red_answered.then(|| RedEncoder::new(red::RED_PT, 111, 1)),
            ))),
            send_ticks: opts.send_ticks.clone(),
        })
    }

    pub async fn wait_connected(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(t) = lock(&self.shared).connected_at {
                return Ok(t.duration_since(self.started));
            }
            if Instant::now() > deadline {
                bail!(
                    "not connected after {timeout:?} (state {:?})",
                    lock(&self.shared).state
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// When the peer connection first reached `connected`.
    pub fn connected_at(&self) -> Option<Instant> {
        lock(&self.shared).connected_at
    }

    /// When ICE first reached `connected` (before DTLS: `connected_at` is ICE + DTLS).
    pub fn ice_connected_at(&self) -> Option<Instant> {
        lock(&self.shared).ice_connected_at
    }

    /// When the first RTP packet arrived on any slot.
    pub fn first_packet_at(&self) -> Option<Instant> {
        lock(&self.shared).first_packet_at
    }

    /// What arrived as RED: packets, and how many carried the probe right before theirs.
    pub fn red_received(&self) -> red::Received {
        lock(&self.shared).red
    }

    /// The fraction lost (1/256) of each report block the SFU sent about the microphone.
    pub fn told_lost(&self) -> Vec<u8> {
        self.told.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A slot track to send RTCP through (under BUNDLE any will do).
    fn any_track(&self) -> anyhow::Result<Arc<dyn TrackRemote>> {
        lock(&self.shared)
            .tracks
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("no slot track open yet"))
    }

    /// Sends a receiver report claiming `fraction` (1/256) of slot stream `ssrc` lost.
    pub async fn report_loss(&self, ssrc: u32, fraction: u8) -> anyhow::Result<()> {
        feedback::report_loss(&self.any_track()?, self.mic_ssrc, ssrc, fraction).await
    }

    /// Sends a NACK naming `seqs` of slot stream `ssrc` lost.
    pub async fn nack(&self, ssrc: u32, seqs: &[u16]) -> anyhow::Result<()> {
        feedback::nack(&self.any_track()?, self.mic_ssrc, ssrc, seqs).await
    }

    /// RTP packets received so far over all slots (cheap: no copy of the stats).
    pub fn packets_received(&self) -> u64 {
        lock(&self.shared).packets
    }

    /// Forgets the latency samples gathered so far (start of a measurement window).
    pub fn reset_latency(&self) {
        for st in lock(&self.shared).streams.values_mut() {
            st.latency_us.clear();
        }
    }

    /// Sends probe packets tagged `tag` at 50 packets/s with the given audio level
    /// (−dBov, 0 loudest) until [`Client::stop_sending`]. It continues the microphone's RTP
    /// stream, and a [`Client::speak`] meanwhile waits until it stops.
    pub fn start_sending(&self, tag: &str, dbov: u8) {
        self.start_sending_every(tag, dbov, Duration::from_millis(20));
    }

    /// [`Client::start_sending`], one packet every `every` (a flood, for the abuse tests).
    pub fn start_sending_every(&self, tag: &str, dbov: u8, every: Duration) {
        let me = self.sending.fetch_add(1, Ordering::Relaxed) + 1;
        let (mic, ssrc, sending, clock, tag, ticks) = (
            self.mic.clone(),
            self.mic_ssrc,
            self.sending.clone(),
            self.mic_clock.clone(),
            tag.to_string(),
            self.send_ticks.clone(),
        );
        tokio::spawn(async move {
            let mut clock = clock.lock_owned().await;
            let mut tick = tokio::time::interval(every);
            let mut n = 0u32;
            let mut ts = None;
            while sending.load(Ordering::Relaxed) == me {
                let due = tick.tick().await;
                if let Some(ticks) = &ticks {
                    ticks.record(due.elapsed());
                }
                let t = *ts.get_or_insert_with(|| clock.talkspurt_ts());
                let pkt = rtp::Packet {
                    header: rtp::header::Header {
                        version: 2,
                        payload_type: 111,
                        sequence_number: clock.sent(t, 960),
                        timestamp: t,
                        ssrc,
                        marker: n == 0,
                        ..Default::default()
                    },
                    payload: probe_payload(&tag, n),
                };
                let level = HeaderExtension::AudioLevel(AudioLevelExtension {
                    level: dbov,
                    voice: true,
                });
                if mic.write_rtp_with_extensions(pkt, &[level]).await.is_err() {
                    break;
                }
                ts = Some(t.wrapping_add(960));
                n = n.wrapping_add(1);
            }
        });
    }

    pub fn stop_sending(&self) {
        self.sending.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends `packets` (Opus payloads, e.g. from `opusenc`) as one talkspurt on the microphone
    /// stream, each with the RFC 6464 audio level `dbov` (−dBov, 0 loudest), paced in real
    /// time by each packet's duration (from its TOC byte; 20 ms for a payload that has none),
    /// and returns once the last one is sent. Sequence numbers continue across calls; the
    /// timestamp runs on with the wall clock through the pause before it, as a muted sender's
    /// does, and the first packet carries the marker bit. Payloads are sent as given, even
    /// empty or invalid ones. Waits while [`Client::start_sending`] sends.
    pub async fn speak(&self, packets: &[Bytes], dbov: u8) -> anyhow::Result<()> {
        let mut clock = self.mic_clock.lock().await;
        let started = tokio::time::Instant::now();
        let mut ts = clock.talkspurt_ts();
        let mut media = 0u64;
        for (i, payload) in packets.iter().enumerate() {
            tokio::time::sleep_until(started + Duration::from_micros(media * 1000 / 48)).await;
            let samples = opus::packet_samples(payload).unwrap_or(960);
            let pkt = rtp::Packet {
                header: rtp::header::Header {
                    version: 2,
                    payload_type: 111,
                    sequence_number: clock.sent(ts, samples),
                    timestamp: ts,
                    ssrc: self.mic_ssrc,
                    marker: i == 0,
                    ..Default::default()
                },
                payload: payload.clone(),
            };
            let level = HeaderExtension::AudioLevel(AudioLevelExtension {
                level: dbov,
                voice: true,
            });
            self.mic
                .write_rtp_with_extensions(pkt, &[level])
                .await
                .map_err(|e| anyhow!("sending packet {i}: {e}"))?;
            ts = ts.wrapping_add(samples);
            media += u64::from(samples);
        }
        Ok(())
    }

    /// Sends `script` on the microphone stream, one entry every 20 ms, as a sender on a
    /// lossy uplink would: [`Upstream::Audio`] is a probe packet tagged `tag` (counter
    /// rising with each audio entry, lost or not), [`Upstream::Lost`] takes its sequence
    /// number and counter but is never sent, as if the network had dropped it, and
    /// [`Upstream::Padding`] is a padding-only packet (no payload, RTP padding bit set),
    /// as Chromium sends to probe bandwidth. Sequence numbers continue across calls.
    /// Waits while [`Client::start_sending`] sends.
    pub async fn send_script(
        &self,
        tag: &str,
        dbov: u8,
        script: &[Upstream],
    ) -> anyhow::Result<()> {
        let mut clock = self.mic_clock.lock().await;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut ts = clock.talkspurt_ts();
        let mut counter = 0u32;
        for (i, up) in script.iter().enumerate() {
            tick.tick().await;
            let mut header = rtp::header::Header {
                version: 2,
                payload_type: 111,
                sequence_number: clock.sent(ts, 960),
                timestamp: ts,
                ssrc: self.mic_ssrc,
                marker: i == 0,
                padding: *up == Upstream::Padding,
                ..Default::default()
            };
            let payload = match up {
                Upstream::Padding => Bytes::new(),
                Upstream::Audio | Upstream::Lost => {
                    let mut p = probe_payload(tag, counter);
                    // A lost packet was encoded like any other: the next one's redundancy has it.
                    if let Some(red) = clock.red.as_mut() {
                        p = red.encode(header.sequence_number, ts, &p);
                        header.payload_type = red.red_pt;
                    }
                    counter = counter.wrapping_add(1);
                    ts = ts.wrapping_add(960);
                    p
                }
            };
            if *up == Upstream::Lost {
                continue;
            }
            let level = HeaderExtension::AudioLevel(AudioLevelExtension {
                level: dbov,
                voice: true,
            });
            self.mic
                .write_rtp_with_extensions(rtp::Packet { header, payload }, &[level])
                .await
                .map_err(|e| anyhow!("sending script entry {i}: {e}"))?;
        }
        Ok(())
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

    /// The longest wait between two packets on any incoming stream so far; resets it, so the
    /// next call measures from now on.
    pub fn take_max_gap(&self) -> Duration {
        let mut s = lock(&self.shared);
        s.streams
            .values_mut()
            .map(|st| std::mem::take(&mut st.max_gap))
            .max()
            .unwrap_or_default()
    }

    /// Packets heard from sender `tag`, over all slots.
    pub fn heard_from(&self, tag: &str) -> u64 {
        lock(&self.shared)
            .streams
            .values()
            .map(|s| s.from.get(tag).copied().unwrap_or(0))
            .sum()
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        lock(&self.shared).heard.events.clone()
    }

    pub fn errors(&self) -> Vec<serde_json::Value> {
        lock(&self.shared).heard.errors.clone()
    }

    /// The last `slots` event: slot index → userid (None = empty).
    pub fn slot_users(&self) -> Vec<Option<String>> {
        let s = lock(&self.shared);
        let Some(ev) = s.heard.events.iter().rev().find(|e| e["type"] == "slots") else {
            return vec![];
        };
        ev["slots"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x["userid"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn state(&self) -> Option<RTCPeerConnectionState> {
        lock(&self.shared).state
    }

    pub fn socket_closed(&self) -> bool {
        lock(&self.shared).heard.closed
    }

    /// Closes the signalling socket only; media continues.
    pub fn close_socket(&self) {
        let _ = self.ws_out.send(Message::Close(None));
    }

    /// Closes the peer connection only (DTLS close_notify); signalling continues.
    pub async fn close_media(&self) {
        self.stop_sending();
        let _ = self.pc.close().await;
    }

    pub async fn close(&self) {
        self.stop_sending();
        self.close_socket();
        let _ = self.pc.close().await;
    }
}

mod presence;
mod ssrcs;

pub use ssrcs::ssrcs_by_mid;
