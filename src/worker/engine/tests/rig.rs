//! The rig of the engine's tests: in-process `rtc` clients on their own loopback sockets,
//! and an [`Engine`] on a runtime that is entered but never run, to which the test hands each
//! client's datagrams exactly as the port would.

use std::net::UdpSocket as StdUdpSocket;

use bytes::{Bytes, BytesMut};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use rtc::stun::message::{CLASS_REQUEST, Message};
use tokio::sync::mpsc;

use super::super::port::MAX_DATAGRAM;
use super::super::*;
use crate::wire::ids::{ConversationId, Generation};

pub(super) struct Client {
    pub(super) session: SessionId,
    pub(super) pc: RTCPeerConnection,
    pub(super) socket: StdUdpSocket,
    pub(super) addr: SocketAddr,
    pub(super) sender: RTCRtpSenderId,
    pub(super) ssrc: u32,
    pub(super) seq: u16,
    pub(super) connected: bool,
    /// RTP packets it received from the engine.
    pub(super) received: usize,
    /// The first STUN request it sent (a test replays it from elsewhere).
    pub(super) first_check: Option<BytesMut>,
    /// The server side's ICE credentials, from the answer.
    pub(super) server_ice: (String, String),
}

impl Client {
    pub(super) fn new(session: SessionId) -> (Client, String) {
        let socket = StdUdpSocket::bind("127.0.0.1:0").expect("client socket");
        socket.set_nonblocking(true).expect("nonblocking");
        let addr = socket.local_addr().expect("client address");
        let now = Instant::now();
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(peer::audio_media_engine().expect("media engine"))
            .with_setting_engine(settings)
            .build(now)
            .expect("client peer connection");
        let ssrc = rand::random();
        let sender = pc
            .add_track(peer::opus_media_track("mic", "mic", ssrc))
            .expect("mic track");
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".into(),
                address: addr.ip().to_string(),
                port: addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .expect("candidate");
        pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json().expect("json"))
            .expect("local candidate");
        let offer = pc.create_offer(None).expect("offer");
        pc.set_local_description(now, offer.clone())
            .expect("local description");
        let client = Client {
            session,
            pc,
            socket,
            addr,
            sender,
            ssrc,
            seq: rand::random(),
            connected: false,
            received: 0,
            first_check: None,
            server_ice: Default::default(),
        };
        (client, offer.sdp)
    }

    /// Writes one 20 ms Opus-sized packet into its connection (sent on the next step).
    pub(super) fn speak(&mut self) {
        self.seq = self.seq.wrapping_add(1);
        let mut payload = vec![0xAB; 60];
        payload[0] = 0xF8;
        let pkt = rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                payload_type: 111,
                sequence_number: self.seq,
                timestamp: u32::from(self.seq).wrapping_mul(960),
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload: Bytes::from(payload),
        };
        let sender = self.sender;
        self.pc
            .rtp_sender(sender)
            .expect("sender")
            .write_rtp(Instant::now(), pkt)
            .expect("write_rtp");
    }

    /// What its connection wants to send now.
    pub(super) fn outgoing(&mut self) -> Vec<BytesMut> {
        let out: Vec<BytesMut> =
            std::iter::from_fn(|| self.pc.poll_write().map(|m| m.message)).collect();
        if self.first_check.is_none() {
            self.first_check = out.iter().find(|d| is_request(d)).cloned();
        }
        out
    }

    /// Reads what the engine sent it, and notes what came of it.
    pub(super) fn receive(&mut self, now: Instant) {
        let mut buf = [0u8; MAX_DATAGRAM];
        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
            let _ = self.pc.handle_read(TaggedBytesMut {
                now,
                transport: TransportContext {
                    local_addr: self.addr,
                    peer_addr: from,
                    ecn: None,
                    transport_protocol: TransportProtocol::UDP,
                },
                message: BytesMut::from(&buf[..n]),
            });
        }
        while let Some(ev) = self.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                RTCPeerConnectionState::Connected,
            ) = ev
            {
                self.connected = true;
            }
        }
        while let Some(m) = self.pc.poll_read() {
            if let RTCMessage::RtpPacket(..) = m.message {
                self.received += 1;
            }
        }
    }
}

fn is_request(d: &[u8]) -> bool {
    let mut m = Message::new();
    is_stun(d) && m.unmarshal_binary(d).is_ok() && m.typ.class == CLASS_REQUEST
}

/// `a=NAME:value` of an SDP.
fn sdp_attr(sdp: &str, name: &str) -> String {
    sdp.lines()
        .find_map(|l| l.strip_prefix(&format!("a={name}:")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// An engine and what it tells front, on a runtime that is entered but never run: the
/// engine never reads its port, the tests hand it the datagrams.
pub(super) struct Rig {
    pub(super) rt: tokio::runtime::Runtime,
    pub(super) engine: Engine,
    pub(super) front: UnboundedReceiver<ToFront>,
    pub(super) told: Vec<ToFront>,
    pub(super) next_session: u64,
    pub(super) next_tick: Instant,
}

impl Rig {
    pub(super) fn new() -> Rig {
        Rig::with_fanout(1)
    }

    /// A rig whose engine writes a big packet's copies from `threads` threads.
    pub(super) fn with_fanout(threads: u32) -> Rig {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (to_front, front) = mpsc::unbounded_channel();
        let settings = EngineSettings {
            conversation: ConversationId::parse("test").expect("valid"),
            generation: Generation(1),
            media: MediaConfig {
                member_packets_per_s: 120,
                member_bytes_per_s: 64 * 1024,
                fanout_threads: threads,
                ..MediaConfig::for_tests("127.0.0.1", (20_000, 29_999))
            },
            cutter: None,
            orphan_grace: Duration::from_secs(60),
        };
        let engine = {
            let _in = rt.enter();
            Engine::new(settings, None, to_front)
        };
        Rig {
            rt,
            engine,
            front,
            told: Vec::new(),
            next_session: 1,
            next_tick: Instant::now(),
        }
    }

    /// A new client offers; returns it with the answer applied (not yet connected).
    pub(super) fn join(&mut self) -> Client {
        let session = SessionId(self.next_session);
        self.next_session += 1;
        let (mut client, offer) = Client::new(session);
        {
            let _in = self.rt.enter();
            self.engine.on_front(ToWorker::Offer {
                session,
                identity: Identity {
                    userid: format!("u{}", session.0),
                    clientid: "c".into(),
                },
                sdp: offer,
            });
        }
        let answer = self
            .take_told()
            .into_iter()
            .find_map(|m| match m {
                ToFront::Answer { session: s, sdp } if s == session => Some(sdp),
                _ => None,
            })
            .expect("an answer");
        assert!(answer.contains("a=ice-lite"), "{answer}");
        client.server_ice = (sdp_attr(&answer, "ice-ufrag"), sdp_attr(&answer, "ice-pwd"));
        client
            .pc
            .set_remote_description(
                Instant::now(),
                RTCSessionDescription::answer(answer).expect("answer"),
            )
            .expect("remote description");
        client
    }

    pub(super) fn key(&self, c: &Client) -> PeerKey {
        self.engine.sessions[&c.session]
    }

    /// What the engine told front since the last look (also kept in `told`).
    pub(super) fn take_told(&mut self) -> Vec<ToFront> {
        let mut new = Vec::new();
        while let Ok(m) = self.front.try_recv() {
            new.push(m);
        }
        self.told.extend(new.iter().cloned());
        new
    }

    /// A datagram from `from`, as the port would pass it on.
    pub(super) fn inject(&mut self, from: SocketAddr, data: BytesMut) {
        let _in = self.rt.enter();
        self.engine.on_datagram(Received {
            at: Instant::now(),
            from,
            transport: Transport::Udp,
            data,
        });
    }

    /// One turn: clients' timers and sends, the engine's timers and selection tick, clients'
    /// receives.
    pub(super) fn step(&mut self, clients: &mut [&mut Client]) {
        let now = Instant::now();
        for c in clients.iter_mut() {
            let _ = c.pc.handle_timeout(now);
            if !self.engine.sessions.contains_key(&c.session) {
                continue;
            }
            for data in c.outgoing() {
                self.inject(c.addr, data);
            }
        }
        {
            let _in = self.rt.enter();
            self.engine.on_timers(now);
            if now >= self.next_tick {
                self.next_tick = now + TICK;
                self.engine.room.tick(now);
                self.engine.drain_room_events();
            }
        }
        for c in clients.iter_mut() {
            c.receive(now);
        }
        self.take_told();
    }

    /// Steps until every client and its server side are connected (5 s, and 100 ms more
    /// per client, at most).
    pub(super) fn connect(&mut self, clients: &mut [&mut Client]) {
        let limit = Duration::from_secs(5) + Duration::from_millis(100) * clients.len() as u32;
        let deadline = Instant::now() + limit;
        loop {
            self.step(clients);
            let done = clients.iter().all(|c| {
                c.connected
                    && self
                        .engine
                        .sessions
                        .get(&c.session)
                        .and_then(|k| self.engine.peers.get(k))
                        .is_some_and(|p| p.selected.is_some())
            });
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "clients did not connect in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// `speaker` sends `packets` packets, 5 ms apart, while everyone steps.
    pub(super) fn talk(&mut self, speaker: usize, packets: usize, clients: &mut [&mut Client]) {
        for _ in 0..packets {
            clients[speaker].speak();
            self.step(clients);
            std::thread::sleep(Duration::from_millis(5));
            self.step(clients);
        }
    }

    /// `n` clients joined and connected, the first speaking until every other hears it.
    pub(super) fn room(&mut self, n: usize) -> Vec<Client> {
        let mut clients: Vec<Client> = (0..n).map(|_| self.join()).collect();
        let mut all: Vec<&mut Client> = clients.iter_mut().collect();
        self.connect(&mut all);
        self.talk(0, 30, &mut all);
        assert!(
            clients[1..].iter().all(|c| c.received > 10),
            "the listeners hear the speaker"
        );
        clients
    }

    /// System calls the port made to send, and the datagrams they took, so far.
    pub(super) fn sends(&self) -> (u64, u64) {
        let p = self.engine.port.as_ref().expect("a port");
        (p.send_calls, p.datagrams_sent)
    }

    pub(super) fn packets_in(&self) -> u64 {
        self.engine.room.stats().packets_in
    }
}
