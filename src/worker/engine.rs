//! The worker's media engine: every peer connection of the conversation, as `rtc` sans-I/O
//! state machines, and the [`Room`] that routes between them, all owned by one task.
//!
//! Why one task and no webrtc driver: the `webrtc` crate runs a driver task per connection and
//! reaches it through channels and an async mutex, so every forwarded packet paid a channel hop,
//! a task wake-up, a lock and the driver's `select!` (about half of the CPU per packet in our
//! profiles). Here a packet from a speaker is decrypted, routed, and encrypted and sent to
//! each listener in one pass, with plain function calls:
//!
//! ```text
//!  socket reader tasks ──datagrams──▶ handle_read ─▶ poll_read ─▶ Room::on_rtp ─▶ Forwards
//!                                                                                  │
//!  listeners' sockets ◀── send_to ◀── poll_write ◀── handle_write (the listener's) ◀┘
//! ```
//!
//! Timers (ICE consent, DTLS retransmits, RTCP reports) are kept in one ordered set of
//! deadlines, one entry per connection. Nothing here awaits except the loop's `select!`, so a
//! slow listener cannot hold anyone up: a send that would block is dropped, as UDP would.
//!
//! Front's messages come in on a channel; what the engine tells front goes out on another.
//! Finished bites are remuxed to Ogg Opus here (microseconds per bite) and handed to the
//! publisher with a call that never blocks: the media path never waits on NATS or the disk.

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{RTCDtlsTransportState, RTCIceCandidateInit};
use rtc::rtp;
use rtc::rtp_transceiver::RTCRtpReceiverId;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use super::peer::{self, NegotiationError};
use crate::media::bite::{CutBite, CutterConfig};
use crate::media::ogg_opus::{self, BiteTags};
use crate::media::rewrite::SlotRewriter;
use crate::media::room::{Forward, Room, RoomEvent, SlotOutput};
use crate::media::sdp::{Offer, unify_bundle_ice};
use crate::publish::publisher::PublisherHandle;
use crate::publish::spool::BiteRecord;
use crate::wire::identity::Identity;
use crate::wire::ids::{Generation, SessionId};
use crate::wire::ipc::{Adoption, CloseReason, MediaConfig, ToFront, ToWorker};
use crate::wire::signal::ErrorCode;
use crate::wire::stats::{DelayHistogram, WorkerStats};

/// How often the speaker selection re-runs.
const TICK: Duration = Duration::from_millis(50);
const STATS_EVERY: Duration = Duration::from_secs(2);
/// Datagrams waiting for the engine; a reader whose datagrams are not taken waits (and the
/// kernel's socket buffer holds the rest).
const DATAGRAM_QUEUE: usize = 4096;
/// A connection whose timer is already due is handled at most this often: a deadline that
/// stays in the past must not spin the loop (webrtc#862).
const MIN_TIMEOUT_INTERVAL: Duration = Duration::from_millis(1);
const MAX_DATAGRAM: usize = 2048;

/// What the engine hears from its link to front.
pub enum Input {
    Front(ToWorker),
    /// The connection to front ended; the conversation goes on without one for a while.
    FrontGone,
    /// A front answered again: the engine introduces itself with a `Hello`.
    FrontBack,
}

/// What the engine runs with.
pub struct EngineSettings {
    pub conversation: String,
    pub generation: Generation,
    pub media: MediaConfig,
    /// How to cut bites; `None` when bites are off.
    pub cutter: Option<CutterConfig>,
    /// How long the conversation goes on without a front before the worker stops.
    pub orphan_grace: Duration,
}

/// The engine's handle for one peer connection (and its socket). A session that re-offers
/// gets a new connection under a new key, so a datagram still queued for the old one is
/// recognised and dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct PeerKey(u64);

/// One UDP datagram read from a connection's socket.
struct Datagram {
    key: PeerKey,
    /// When the reader took it from the socket: forwarding delay is measured from here.
    at: Instant,
    from: SocketAddr,
    data: BytesMut,
}

/// One client's peer connection.
struct Peer {
    session: SessionId,
    pc: RTCPeerConnection,
    /// Non-blocking; sends go straight from the engine. A reader task owns a clone.
    socket: UdpSocket,
    /// Our candidate's address: what the ICE agent calls this socket.
    local: SocketAddr,
    reader: tokio::task::JoinHandle<()>,
    /// The client's negotiated audio-level extension id.
    level_id: Option<u8>,
    deadline: Option<Instant>,
    last_timeout: Instant,
}

/// Counters the room does not keep.
#[derive(Default)]
struct Drops {
    /// Forwards the connection refused (not connected any more, or bad parameters).
    refused: u64,
    /// Datagrams the socket would not take (its buffer was full).
    send_full: u64,
}

/// Where finished bites go: the conversation's publisher.
pub struct BiteSink {
    pub conversation: String,
    pub handle: PublisherHandle,
}

impl BiteSink {
    /// Remuxes a bite and hands it to the publisher (never blocks).
    fn send(&self, identity: &Identity, bite: &CutBite) {
        let tags = BiteTags {
            conversation: &self.conversation,
            user: &identity.userid,
            client: &identity.clientid,
            start_unix_ms: bite.start_unix_ms,
        };
        match ogg_opus::write_bite(bite, &tags, ogg_opus::random_serial()) {
            Ok(data) => self.handle.send(BiteRecord {
                key: self.conversation.clone(),
                user: identity.userid.clone(),
                client: identity.clientid.clone(),
                start: bite.start_unix_ms,
                duration_ms: bite.duration_ms(),
                data: data.into(),
            }),
            Err(e) => {
                self.handle.lost();
                tracing::error!(
                    %identity,
                    start = bite.start_unix_ms,
                    "BITE LOST: its Ogg file could not be written: {e}"
                );
            }
        }
    }
}

pub struct Engine {
    conversation: String,
    generation: Generation,
    started: Instant,
    media: MediaConfig,
    room: Room,
    to_front: UnboundedSender<ToFront>,
    peers: HashMap<PeerKey, Peer>,
    sessions: HashMap<SessionId, PeerKey>,
    /// `(deadline, peer key)`, one entry per connection that has a timer.
    timers: BTreeSet<(Instant, PeerKey)>,
    next_key: u64,
    datagrams: mpsc::Sender<Datagram>,
    /// Reused for every packet: what the room decided to send.
    forwards: Vec<Forward>,
    drops: Drops,
    forward_delay: DelayHistogram,
    bites: Option<BiteSink>,
}

impl Engine {
    /// Runs until front says `Shutdown`, or has been gone for the orphan grace; returns why
    /// it stopped and its last counters. With `bites`, members' speech is cut into bites.
    pub async fn run(
        settings: EngineSettings,
        bites: Option<BiteSink>,
        to_front: UnboundedSender<ToFront>,
        mut front: UnboundedReceiver<Input>,
    ) -> (String, WorkerStats) {
        let (datagrams, mut incoming) = mpsc::channel(DATAGRAM_QUEUE);
        let cutter = settings.cutter.filter(|_| bites.is_some());
        let orphan_grace = settings.orphan_grace;
        let mut engine = Engine {
            conversation: settings.conversation,
            generation: settings.generation,
            started: Instant::now(),
            media: settings.media,
            room: Room::new(cutter),
            to_front,
            peers: HashMap::new(),
            sessions: HashMap::new(),
            timers: BTreeSet::new(),
            next_key: 0,
            datagrams,
            forwards: Vec::new(),
            drops: Drops::default(),
            forward_delay: DelayHistogram::default(),
            bites,
        };
        let mut next_tick = Instant::now() + TICK;
        let mut last_stats = Instant::now();
        let sleep = tokio::time::sleep_until(next_tick.into());
        tokio::pin!(sleep);
        // Since when front is gone, if it is.
        let mut orphaned: Option<Instant> = None;
        let reason = loop {
            // Connection timers and the selection tick are handled after every wake-up, not
            // only when the sleep fires: under a flood of datagrams the sleep branch might
            // never win the `select!`, and ICE consent must not starve.
            let now = Instant::now();
            engine.on_timers(now);
            if now >= next_tick {
                next_tick = now + TICK;
                engine.room.tick(now);
                engine.drain_room_events();
                if now.duration_since(last_stats) >= STATS_EVERY {
                    last_stats = now;
                    engine.send_stats();
                }
            }
            if orphaned.is_some_and(|t| now.duration_since(t) >= orphan_grace) {
                break format!("no front for {orphan_grace:?}");
            }
            let wake = engine
                .timers
                .first()
                .map_or(next_tick, |(t, _)| (*t).min(next_tick));
            sleep.as_mut().reset(wake.into());
            tokio::select! {
                biased;
                input = front.recv() => match input {
                    Some(Input::Front(ToWorker::Shutdown)) => break "shutdown requested".to_string(),
                    Some(Input::Front(msg)) => engine.on_front(msg),
                    Some(Input::FrontGone) => orphaned = Some(Instant::now()),
                    Some(Input::FrontBack) => {
                        orphaned = None;
                        engine.introduce();
                    }
                    None => break "the link to front ended".to_string(),
                },
                Some(first) = incoming.recv() => {
                    engine.on_datagram(first);
                    // Take what else is waiting before looking at the other sources again.
                    for _ in 0..256 {
                        match incoming.try_recv() {
                            Ok(d) => engine.on_datagram(d),
                            Err(_) => break,
                        }
                    }
                }
                _ = &mut sleep => {}
            }
        };
        let sessions: Vec<SessionId> = engine.sessions.keys().copied().collect();
        for session in sessions {
            engine.end_session(session, None);
        }
        if engine.drops.refused + engine.drops.send_full > 0 {
            tracing::info!(
                refused = engine.drops.refused,
                send_full = engine.drops.send_full,
                "packets not sent"
            );
        }
        (reason, engine.stats())
    }

    /// Tells a new front what it takes over: the sessions, then their current slots and the
    /// counters, as if nothing had happened (for the clients, nothing has).
    fn introduce(&mut self) {
        let sessions = self
            .room
            .members()
            .map(|(session, identity)| (session, identity.clone()))
            .collect();
        let _ = self.to_front.send(ToFront::Hello {
            conversation: self.conversation.clone(),
            generation: self.generation,
            pid: std::process::id(),
            adopted: Some(Adoption {
                sessions,
                uptime_ms: self.started.elapsed().as_millis() as u64,
                stats: self.stats(),
            }),
        });
        self.room.announce_slots();
        self.drain_room_events();
    }

    /// Passes what the room has to tell members on to front.
    fn drain_room_events(&mut self) {
        while let Some(ev) = self.room.poll_event() {
            match ev {
                RoomEvent::Slots { listener, json } => {
                    let _ = self.to_front.send(ToFront::Event {
                        session: listener,
                        json,
                    });
                }
                RoomEvent::Bite { identity, bite, .. } => {
                    if let Some(sink) = &self.bites {
                        sink.send(&identity, &bite);
                    }
                }
            }
        }
    }

    fn stats(&self) -> WorkerStats {
        let mut stats = self.room.stats();
        stats.forward_delay = self.forward_delay.clone();
        if let Some(sink) = &self.bites {
            stats.bites = sink.handle.metrics();
        }
        stats
    }

    fn send_stats(&self) {
        let _ = self.to_front.send(ToFront::Stats(self.stats()));
    }

    fn on_front(&mut self, msg: ToWorker) {
        match msg {
            ToWorker::Offer {
                session,
                identity,
                sdp,
            } => {
                tracing::info!(%identity, %session, "offer");
                // A new offer replaces the session's connection.
                self.end_session(session, None);
                if let Err(e) = self.negotiate(session, identity, sdp) {
                    tracing::info!(%session, "offer rejected: {}", e.message);
                    let _ = self.to_front.send(ToFront::Rejected {
                        session,
                        code: e.code,
                        message: e.message,
                    });
                }
            }
            ToWorker::Ice { session, candidate } => {
                let Some(&key) = self.sessions.get(&session) else {
                    return;
                };
                let Some(peer) = self.peers.get_mut(&key) else {
                    return;
                };
                match serde_json::from_str::<RTCIceCandidateInit>(&candidate) {
                    Ok(init) => {
                        if let Err(e) = peer.pc.add_remote_candidate(init) {
                            tracing::debug!(%session, "remote candidate refused: {e}");
                        }
                    }
                    Err(e) => tracing::debug!(%session, "unreadable remote candidate: {e}"),
                }
                self.drive(key, None);
            }
            ToWorker::Leave { session } => self.end_session(session, None),
            ToWorker::Shutdown => {}
            ToWorker::Init { .. } => tracing::warn!("ignoring a second Init"),
        }
    }

    fn negotiate(
        &mut self,
        session: SessionId,
        identity: Identity,
        sdp: String,
    ) -> Result<(), NegotiationError> {
        let sdp = unify_bundle_ice(&sdp);
        let offer = Offer::parse(&sdp)
            .map_err(|e| NegotiationError::new(ErrorCode::BadSdp, e.to_string()))?;
        let now = Instant::now();
        let a = peer::answer(&self.media, &offer, sdp, &format!("beep-{session}"), now)?;
        let internal =
            |e: std::io::Error| NegotiationError::new(ErrorCode::Internal, format!("socket: {e}"));
        a.socket.set_nonblocking(true).map_err(internal)?;
        let reader_socket = a
            .socket
            .try_clone()
            .and_then(tokio::net::UdpSocket::from_std)
            .map_err(internal)?;
        let key = PeerKey(self.next_key);
        self.next_key += 1;
        let reader = tokio::spawn(read_datagrams(reader_socket, key, self.datagrams.clone()));
        let outputs = a
            .slots
            .iter()
            .map(|s| SlotOutput {
                mid: s.mid.clone(),
                payload_type: s.payload_type,
                rewriter: SlotRewriter::new(s.ssrc, rand::random(), rand::random()),
            })
            .collect();
        self.peers.insert(
            key,
            Peer {
                session,
                pc: a.pc,
                socket: a.socket,
                local: a.local,
                reader,
                level_id: offer.audio_level_id,
                deadline: None,
                last_timeout: now,
            },
        );
        self.sessions.insert(session, key);
        let _ = self.to_front.send(ToFront::Answer {
            session,
            sdp: a.answer,
        });
        self.room
            .add_member(session, identity, outputs, offer.audio_level_id);
        self.drain_room_events();
        self.drive(key, None);
        Ok(())
    }

    /// Closes the session's connection (telling the client, with DTLS close_notify) and
    /// forgets it. With a `reason`, front is told the connection ended.
    fn end_session(&mut self, session: SessionId, reason: Option<CloseReason>) {
        let Some(key) = self.sessions.remove(&session) else {
            return;
        };
        self.room.remove_member(session, Instant::now());
        self.drain_room_events();
        if let Some(mut peer) = self.peers.remove(&key) {
            if let Some(t) = peer.deadline.take() {
                self.timers.remove(&(t, key));
            }
            peer.reader.abort();
            let _ = peer.pc.close();
            flush(&mut peer, &mut self.drops);
        }
        if let Some(reason) = reason {
            let _ = self.to_front.send(ToFront::Closed { session, reason });
        }
    }

    fn on_datagram(&mut self, d: Datagram) {
        let Some(peer) = self.peers.get_mut(&d.key) else {
            return;
        };
        let msg = TaggedBytesMut {
            now: Instant::now(),
            transport: TransportContext {
                local_addr: peer.local,
                peer_addr: d.from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: d.data,
        };
        if let Err(e) = peer.pc.handle_read(msg) {
            tracing::trace!(session = %peer.session, "datagram refused: {e}");
        }
        if closed_by_client(&mut peer.pc) {
            // The W3C state machine keeps a connection whose DTLS was closed "connected" while
            // ICE still answers, which would keep forwarding to a client that has gone for the
            // ICE timeouts (20 s by default). Its close_notify is the client saying goodbye.
            let session = peer.session;
            self.end_session(session, Some(CloseReason::ByClient));
            return;
        }
        self.drive(d.key, Some(d.at));
    }

    fn on_timers(&mut self, now: Instant) {
        while let Some(&(t, key)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.deadline = None;
                peer.last_timeout = now;
                if let Err(e) = peer.pc.handle_timeout(now) {
                    tracing::debug!(session = %peer.session, "timeout handling: {e}");
                }
                self.drive(key, None);
            }
        }
    }

    /// Takes everything the connection has to give after an input: events, received RTP
    /// (routed through the room to the listeners) and, in one sweep of its pipeline, the
    /// datagrams to send; then re-arms its timer.
    /// `read_at` is when the datagram that prompted this was read, if one did.
    fn drive(&mut self, key: PeerKey, read_at: Option<Instant>) {
        let now = Instant::now();
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let mut events = Vec::new();
        while let Some(ev) = peer.pc.poll_event() {
            events.push(ev);
        }
        let mut received: Vec<rtp::Packet> = Vec::new();
        while let Some(TaggedRTCMessage { message, .. }) = peer.pc.poll_read() {
            if let RTCMessage::RtpPacket(_, pkt) = message {
                received.push(pkt);
            }
        }
        flush(peer, &mut self.drops);
        rearm(&mut self.timers, key, peer, now);
        let (session, level_id) = (peer.session, peer.level_id);

        if !received.is_empty() {
            let unix_ms = unix_ms_now();
            for pkt in &received {
                self.room
                    .on_rtp(session, level_id, pkt, now, unix_ms, &mut self.forwards);
                self.send_forwards(now, read_at);
            }
            self.drain_room_events();
        }
        for ev in events {
            self.on_peer_event(session, ev);
        }
    }

    /// Hands the room's decisions to the listeners' connections and sends the datagrams.
    ///
    /// The packets go straight into the connection's write pipeline (interceptors, SRTP, ICE)
    /// rather than through `RTCRtpSender::write_rtp`, which re-checks on every packet what
    /// the negotiation already fixed (SSRC, payload type, extension ids: the room writes each
    /// slot's own) and allocates the track id the pipeline then ignores.
    fn send_forwards(&mut self, now: Instant, read_at: Option<Instant>) {
        for f in self.forwards.drain(..) {
            let Some(peer) = self
                .sessions
                .get(&f.listener)
                .and_then(|key| self.peers.get_mut(key))
            else {
                continue;
            };
            let msg = TaggedRTCMessage {
                now,
                message: RTCMessage::RtpPacket(String::new(), f.packet),
            };
            if peer.pc.handle_write(msg).is_err() {
                self.drops.refused += 1;
                continue;
            }
            flush(peer, &mut self.drops);
            if let Some(at) = read_at {
                self.forward_delay.record(at.elapsed());
            }
        }
    }

    fn on_peer_event(&mut self, session: SessionId, ev: RTCPeerConnectionEvent) {
        match ev {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                tracing::debug!(%session, "peer connection {state}");
                match state {
                    RTCPeerConnectionState::Connected => self.room.set_live(session),
                    RTCPeerConnectionState::Failed => {
                        self.end_session(session, Some(CloseReason::Failed))
                    }
                    RTCPeerConnectionState::Closed => {
                        self.end_session(session, Some(CloseReason::Closed))
                    }
                    _ => {}
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                tracing::debug!(%session, ssrc = init.ssrc, "microphone track open");
            }
            _ => {}
        }
    }
}

/// The wall clock in Unix milliseconds (the start of a bite).
fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether the client closed the connection (its DTLS close_notify arrived).
fn closed_by_client(pc: &mut RTCPeerConnection) -> bool {
    // Under BUNDLE every receiver shares the one DTLS transport; any will do.
    let transceivers = pc.get_transceivers().count();
    let Some(receiver) = (0..transceivers).find(|&t| {
        pc.rtp_transceiver(t)
            .is_some_and(|t| t.receiver().is_some())
    }) else {
        return false;
    };
    pc.rtp_receiver(RTCRtpReceiverId::from(receiver))
        .and_then(|r| r.transport().map(|t| t.state()))
        == Some(RTCDtlsTransportState::Closed)
}

/// Sends every datagram the connection has queued.
fn flush(peer: &mut Peer, drops: &mut Drops) {
    while let Some(msg) = peer.pc.poll_write() {
        match peer.socket.send_to(&msg.message, msg.transport.peer_addr) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => drops.send_full += 1,
            Err(e) => tracing::trace!(session = %peer.session, "send: {e}"),
        }
    }
}

/// Moves the connection's entry in the timer set to its next deadline.
fn rearm(timers: &mut BTreeSet<(Instant, PeerKey)>, key: PeerKey, peer: &mut Peer, now: Instant) {
    let next = peer.pc.poll_timeout().map(|t| {
        // Already due, and handled less than a millisecond ago: wait out the millisecond.
        if t <= now && now.duration_since(peer.last_timeout) < MIN_TIMEOUT_INTERVAL {
            peer.last_timeout + MIN_TIMEOUT_INTERVAL
        } else {
            t
        }
    });
    if next == peer.deadline {
        return;
    }
    if let Some(old) = peer.deadline.take() {
        timers.remove(&(old, key));
    }
    if let Some(t) = next {
        timers.insert((t, key));
        peer.deadline = Some(t);
    }
}

/// Reads one connection's socket and passes each datagram to the engine.
async fn read_datagrams(socket: tokio::net::UdpSocket, key: PeerKey, to: mpsc::Sender<Datagram>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let d = Datagram {
                    key,
                    at: Instant::now(),
                    from,
                    data: BytesMut::from(&buf[..n]),
                };
                if to.send(d).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Not expected on an unconnected UDP socket; never spin on it.
                tracing::debug!("socket read: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
