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
//!
//! | part | what it is |
//! |---|---|
//! | this file | the engine's loop, its connections and the room, the forwarding pass |
//! | [`intake`] | one reader task per socket, and each connection's share of the datagram queue |
//! | [`connection`] | what the engine asks of one `rtc` connection beyond `poll_*` |
//! | [`guard`] | panic containment per connection |
//! | [`from_front`] | front's messages: offers, candidates, leaves, adoption, retiring |
//! | [`bites`] | finished bites remuxed and handed to the publisher |
//!
//! What one client (or anyone who can reach a port) can do to the others is bounded here:
//!
//! - **Fair service.** Each turn of the loop serves at most [`FRONT_SHARE`] of front's
//!   messages (an offer costs about a millisecond) and [`DATAGRAM_SHARE`] datagrams, so a
//!   burst of offers cannot hold back the media and a flood of datagrams cannot hold back
//!   front. Datagrams share one queue, but each connection may have at most
//!   [`intake::PEER_BACKLOG`] of them in it: a reader whose connection is over that stops reading
//!   and lets its kernel buffer overflow, so a flood at one port cannot crowd the others
//!   out of the queue.
//! - **Selected pair only.** Once ICE has selected a pair, a datagram from any other address
//!   is dropped (and counted) before the connection sees it: the `rtc` state machine itself
//!   would pass it on to DTLS and SRTP.
//! - **Panics stay with their session.** Each connection's handling (a datagram, a timer, a
//!   candidate, an offer, a forward to it) runs under `catch_unwind`; a panic ends that session
//!   (front is told, `CloseReason::Error`) and the room goes on.
//! - **No connection, no worker.** A worker none of whose members has ever connected stops
//!   `first_connect_ms` after it started (offers that never connect must not keep a process).
//! - Per-member packet and byte caps are the room's ([`crate::media::room::limit`]).

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::rtp;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use super::peer::{self, NegotiationError};
use crate::media::bite::CutterConfig;
use crate::media::rewrite::SlotRewriter;
use crate::media::room::{Forward, MemberLimits, Room, RoomEvent, SlotOutput};
use crate::media::sdp::{Offer, unify_bundle_ice};
use crate::wire::identity::Identity;
use crate::wire::ids::{Generation, SessionId};
use crate::wire::ipc::{CloseReason, MediaConfig, ToFront, ToWorker};
use crate::wire::signal::ErrorCode;
use crate::wire::stats::{DelayHistogram, DropStats, WorkerStats};

/// How often the speaker selection re-runs.
const TICK: Duration = Duration::from_millis(50);
const STATS_EVERY: Duration = Duration::from_secs(2);
/// Most of front's messages served per turn of the loop (then the datagrams get a turn).
const FRONT_SHARE: usize = 4;
/// Most datagrams served per turn of the loop (then front and the timers get a turn).
const DATAGRAM_SHARE: usize = 256;
/// A worker stopping because nobody connected refuses offers until front has been quiet this
/// long (at most [`RETIRE_MAX`]), so an offer front sent just before is answered, not lost
/// with the process.
const RETIRE_QUIET: Duration = Duration::from_millis(250);
const RETIRE_MAX: Duration = Duration::from_secs(2);

/// What the engine hears from its link to front.
// `Front` carries `Init`'s settings: a few hundred bytes, moved a few times a second at most,
// not worth a box per message.
#[allow(clippy::large_enum_variant)]
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
    /// The client's address on the pair ICE selected; from then on, datagrams from any other
    /// address are dropped before the connection sees them.
    selected: Option<SocketAddr>,
    /// This connection's datagrams in the engine's queue.
    backlog: Arc<Backlog>,
    /// Its handling panicked: it gets nothing more, and is ended once the current pass is over.
    broken: bool,
    /// Test hook: the next datagram's handling panics.
    #[cfg(test)]
    panic_on_read: bool,
}

/// Counters the room does not keep.
#[derive(Default)]
struct Drops {
    /// Forwards the connection refused (not connected any more, or bad parameters).
    refused: u64,
    /// Datagrams the socket would not take (its buffer was full).
    send_full: u64,
    /// Datagrams from an address other than the connection's selected pair.
    unselected: u64,
    /// Sessions ended because their handling panicked.
    panics: u64,
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
    /// Some member's connection has reached `connected` (see [`EngineSettings`]'s
    /// `media.first_connect_ms`).
    ever_connected: bool,
    /// Sessions whose handling panicked, and what it said: ended after the current pass.
    poisoned: Vec<(SessionId, String)>,
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
        let orphan_grace = settings.orphan_grace;
        let first_connect =
            Some(Duration::from_millis(settings.media.first_connect_ms)).filter(|d| !d.is_zero());
        let mut engine = Engine::new(settings, bites, to_front, datagrams);
        let mut next_tick = Instant::now() + TICK;
        let mut last_stats = Instant::now();
        let sleep = tokio::time::sleep_until(next_tick.into());
        tokio::pin!(sleep);
        // Since when front is gone, if it is.
        let mut orphaned: Option<Instant> = None;
        // Whether the conversation ended because nobody ever connected: then its sessions are
        // told their connection failed.
        let mut never_connected = false;
        let reason = 'run: loop {
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
            if let Some(limit) = first_connect
                && !engine.ever_connected
                && now.duration_since(engine.started) >= limit
            {
                never_connected = true;
                break format!("no member connected within {limit:?} of the start");
            }
            let wake = engine
                .timers
                .first()
                .map_or(next_tick, |(t, _)| (*t).min(next_tick));
            sleep.as_mut().reset(wake.into());
            tokio::select! {
                input = front.recv() => {
                    if let Some(stop) = engine.on_input(input, &mut orphaned) {
                        break 'run stop;
                    }
                }
                Some(first) = incoming.recv() => engine.on_datagram(first),
                _ = &mut sleep => {}
            }
            // Whichever woke the loop, both queues get a bounded share before it looks again:
            // neither a burst of front's messages nor a flood of datagrams starves the other.
            for _ in 0..FRONT_SHARE {
                let Ok(input) = front.try_recv() else { break };
                if let Some(stop) = engine.on_input(Some(input), &mut orphaned) {
                    break 'run stop;
                }
            }
            for _ in 0..DATAGRAM_SHARE {
                let Ok(d) = incoming.try_recv() else { break };
                engine.on_datagram(d);
            }
        };
        // Told why only when it is news to front: a conversation nobody connected to.
        let reason_for_sessions = never_connected.then_some(CloseReason::Failed);
        let sessions: Vec<SessionId> = engine.sessions.keys().copied().collect();
        for session in sessions {
            engine.end_session(session, reason_for_sessions);
        }
        if never_connected {
            engine.retire(&mut front).await;
        }
        let d = &engine.drops;
        if d.refused + d.send_full + d.unselected + d.panics > 0 {
            tracing::info!(
                refused = d.refused,
                send_full = d.send_full,
                unselected_address = d.unselected,
                panics = d.panics,
                "packets not sent or dropped"
            );
        }
        (reason, engine.stats())
    }

    /// An engine with no members yet; datagrams its readers take go to `datagrams`.
    fn new(
        settings: EngineSettings,
        bites: Option<BiteSink>,
        to_front: UnboundedSender<ToFront>,
        datagrams: mpsc::Sender<Datagram>,
    ) -> Engine {
        let cutter = settings.cutter.filter(|_| bites.is_some());
        let cap = |n: u32| Some(n).filter(|&n| n > 0);
        let limits = MemberLimits {
            packets_per_s: cap(settings.media.member_packets_per_s),
            bytes_per_s: cap(settings.media.member_bytes_per_s),
        };
        Engine {
            conversation: settings.conversation,
            generation: settings.generation,
            started: Instant::now(),
            media: settings.media,
            room: Room::new(cutter).with_limits(limits),
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
            ever_connected: false,
            poisoned: Vec::new(),
        }
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
        stats.dropped.add(&DropStats {
            unselected_address: self.drops.unselected,
            ..DropStats::default()
        });
        if let Some(sink) = &self.bites {
            stats.bites = sink.handle.metrics();
        }
        stats
    }

    fn send_stats(&self) {
        let _ = self.to_front.send(ToFront::Stats(self.stats()));
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
        let backlog = Arc::new(Backlog::default());
        let reader = tokio::spawn(read_datagrams(
            reader_socket,
            key,
            backlog.clone(),
            self.datagrams.clone(),
        ));
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
                selected: None,
                backlog,
                broken: false,
                #[cfg(test)]
                panic_on_read: false,
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
            // A connection that panicked is dropped as it is; closing it could panic again.
            if !peer.broken {
                let drops = &mut self.drops;
                let closed = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    let _ = peer.pc.close();
                    flush(&mut peer, drops);
                }));
                if closed.is_err() {
                    tracing::error!(%session, "closing the peer connection panicked");
                }
            }
        }
        if let Some(reason) = reason {
            let _ = self.to_front.send(ToFront::Closed { session, reason });
        }
    }

    fn on_datagram(&mut self, d: Datagram) {
        let Some(peer) = self.peers.get_mut(&d.key) else {
            return;
        };
        peer.backlog.take_one();
        if peer.broken {
            return;
        }
        if peer.selected.is_some_and(|addr| addr != d.from) {
            self.drops.unselected += 1;
            return;
        }
        let key = d.key;
        self.guarded(key, |engine| engine.read_datagram(d));
        self.bury();
    }

    /// Hands a datagram to its connection and takes what follows from it.
    fn read_datagram(&mut self, d: Datagram) {
        let Some(peer) = self.peers.get_mut(&d.key) else {
            return;
        };
        #[cfg(test)]
        if std::mem::take(&mut peer.panic_on_read) {
            panic!("injected by a test");
        }
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
            self.guarded(key, |engine| {
                let Some(peer) = engine.peers.get_mut(&key).filter(|p| !p.broken) else {
                    return;
                };
                peer.deadline = None;
                peer.last_timeout = now;
                if let Err(e) = peer.pc.handle_timeout(now) {
                    tracing::debug!(session = %peer.session, "timeout handling: {e}");
                }
                engine.drive(key, None);
            });
        }
        self.bury();
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
            if let RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                RTCIceConnectionState::Connected,
            ) = ev
            {
                peer.selected = selected_remote(&mut peer.pc);
                tracing::debug!(session = %peer.session, selected = ?peer.selected, "ICE connected");
            }
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
        let mut forwards = std::mem::take(&mut self.forwards);
        for f in forwards.drain(..) {
            let Some(&key) = self.sessions.get(&f.listener) else {
                continue;
            };
            let Some(peer) = self.peers.get_mut(&key).filter(|p| !p.broken) else {
                continue;
            };
            let msg = TaggedRTCMessage {
                now,
                message: RTCMessage::RtpPacket(String::new(), f.packet),
            };
            // The listener's connection, not the speaker's: a panic here is the listener's.
            let drops = &mut self.drops;
            let sent = std::panic::catch_unwind(AssertUnwindSafe(|| {
                if peer.pc.handle_write(msg).is_err() {
                    drops.refused += 1;
                    return false;
                }
                flush(peer, drops);
                true
            }));
            match sent {
                Ok(true) => {
                    if let Some(at) = read_at {
                        self.forward_delay.record(at.elapsed());
                    }
                }
                Ok(false) => {}
                Err(panic) => self.poison(key, panic_text(&panic)),
            }
        }
        // The buffer is kept for the next packet.
        self.forwards = forwards;
    }

    fn on_peer_event(&mut self, session: SessionId, ev: RTCPeerConnectionEvent) {
        match ev {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                tracing::debug!(%session, "peer connection {state}");
                match state {
                    RTCPeerConnectionState::Connected => {
                        self.ever_connected = true;
                        self.room.set_live(session);
                    }
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

mod bites;
mod connection;
mod from_front;
mod guard;
mod intake;
#[cfg(test)]
mod tests;

pub use bites::BiteSink;
use bites::unix_ms_now;
use connection::{closed_by_client, flush, rearm, selected_remote};
use guard::panic_text;
use intake::{Backlog, DATAGRAM_QUEUE, Datagram, read_datagrams};
