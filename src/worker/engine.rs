//! The worker's media engine: every peer connection of the conversation, as `rtc` sans-I/O
//! state machines, and the [`Room`] that routes between them, all owned by one task.
//!
//! Why one task and no webrtc driver: the `webrtc` crate runs a driver task per connection and
//! reaches it through channels and an async mutex, so every forwarded packet paid a channel hop,
//! a task wake-up, a lock and the driver's `select!` (about half of the CPU per packet in our
//! profiles). Here a packet from a speaker is decrypted, routed, and encrypted for each
//! listener in one pass, with plain function calls, and its copies leave together:
//!
//! ```text
//!  the port ─recvmmsg─▶ demux ─▶ handle_read ─▶ poll_read ─▶ Room::on_rtp ─▶ Forwards
//!                                                                             │
//!  the port ◀─sendmmsg── outbox ◀── poll_write ◀── handle_write (each listener's) ◀┘
//! ```
//!
//! Every connection shares the worker's one UDP port ([`port`]): the [`demux`] tells them
//! apart (STUN username, then source address) and keeps unauthenticated STUN away from the
//! ICE agents.
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
//! | [`port`] | the worker's one UDP port: batched reads and sends, buffer sizes, kernel drops |
//! | [`demux`] | which connection a datagram is for; unauthenticated STUN stops there |
//! | [`fanout`] | a big room's copies of one packet written and sent from several threads |
//! | [`connection`] | what the engine asks of one `rtc` connection beyond `poll_*` |
//! | [`guard`] | panic containment per connection |
//! | [`from_front`] | front's messages: offers, candidates, leaves, adoption, retiring |
//! | [`bites`] | finished bites remuxed and handed to the publisher |
//! | [`room_events`] | the room's events passed on: members' events to front, bites to [`bites`] |
//!
//! What one client (or anyone who can reach a port) can do to the others is bounded here:
//!
//! - **Fair service.** Each turn of the loop serves at most [`FRONT_SHARE`] of front's
//!   messages (an offer costs about a millisecond) and [`DATAGRAM_SHARE`] datagrams, so a
//!   burst of offers cannot hold back the media and a flood of datagrams cannot hold back
//!   front. A flood from an address no connection knows costs a table lookup per datagram
//!   and reaches no connection.
//! - **Selected pair only.** Once ICE has selected a pair, a datagram from any other address
//!   is dropped (and counted) before the connection sees it: the `rtc` state machine itself
//!   would pass it on to DTLS and SRTP.
//! - **Panics stay with their session.** Each connection's handling (a datagram, a timer, a
//!   candidate, an offer, a forward to it) runs under `catch_unwind`; a panic ends that session
//!   (front is told, `CloseReason::Error`) and the room goes on.
//! - **No connection, no worker.** A worker none of whose members has ever connected stops
//!   `first_connect_ms` after it started (offers that never connect must not keep a process).
//! - Per-member packet and byte caps are the room's ([`crate::media::room::limit`]).

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::rtp;
use rtc::sansio::Protocol;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::feedback::LossFloor;
use super::peer::{self, IceCredentials, NegotiationError};
use crate::media::bite::CutterConfig;
use crate::media::quality::WorstListener;
use crate::media::red::{RedDecoder, RedEncoder};
use crate::media::retransmit::SlotHistory;
use crate::media::rewrite::SlotRewriter;
use crate::media::room::{Forward, MemberLimits, Room, SlotOutput};
use crate::media::sdp::{Offer, unify_bundle_ice};
use crate::wire::identity::Identity;
use crate::wire::ids::{ConversationId, Generation, SessionId};
use crate::wire::ipc::{CloseReason, MediaConfig, ToFront, ToWorker};
use crate::wire::signal::ErrorCode;
use crate::wire::stats::{DelayHistogram, DropStats, WorkerStats};
use std::mem::take;

/// How often the speaker selection re-runs.
const TICK: Duration = Duration::from_millis(50);
const STATS_EVERY: Duration = Duration::from_secs(2);
/// Most of front's messages served per turn of the loop (then the datagrams get a turn).
const FRONT_SHARE: usize = 4;
/// Most datagrams served per turn of the loop (then front and the timers get a turn) ...
const DATAGRAM_SHARE: usize = 8 * RECV_BATCH;
/// ... and most time spent on them: in a room of hundreds one datagram can cost a
/// millisecond of fan-out, and an offer must not wait behind a quarter of a second of it
/// (front kills a worker that leaves an offer unanswered for 10 s).
const DATAGRAM_TIME_SHARE: Duration = Duration::from_millis(5);
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
    pub conversation: ConversationId,
    pub generation: Generation,
    pub media: MediaConfig,
    /// How to cut bites; `None` when bites are off.
    pub cutter: Option<CutterConfig>,
    /// How long the conversation goes on without a front before the worker stops.
    pub orphan_grace: Duration,
}

/// The engine's handle for one peer connection. A session that re-offers gets a new
/// connection under a new key (and new ICE credentials), so nothing meant for the old one
/// reaches the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct PeerKey(u64);

/// One client's peer connection.
struct Peer {
    session: SessionId,
    pc: RTCPeerConnection,
    /// The client's negotiated audio-level extension id.
    level_id: Option<u8>,
    deadline: Option<Instant>,
    last_timeout: Instant,
    /// The client's address on the pair ICE selected; from then on, datagrams from any other
    /// address are dropped before the connection sees them.
    selected: Option<SocketAddr>,
    /// Its handling panicked: it gets nothing more, and is ended once the current pass is over.
    broken: bool,
    /// What its reports and stream say of its call's quality ([`quality`]).
    link: crate::media::quality::LinkMeter,
    /// The fraction lost its connection's receiver reports claim at least: its listeners'
    /// worst ([`crate::worker::feedback`]).
    floor: LossFloor,
    /// Its microphone's RED made plain Opus, when it negotiated RED.
    red_up: Option<RedDecoder>,
    /// Test hook: the next datagram's handling panics.
    #[cfg(test)]
    panic_on_read: bool,
    /// Test hook: the next copy written to it panics.
    #[cfg(test)]
    panic_on_write: bool,
}

pub struct Engine {
    conversation: ConversationId,
    generation: Generation,
    started: Instant,
    media: MediaConfig,
    room: Room,
    to_front: UnboundedSender<ToFront>,
    // Our own ids as keys (nothing a client chooses), so the fast hash is safe: looked up
    // once or twice per forwarded copy.
    peers: FxHashMap<PeerKey, Peer>,
    sessions: FxHashMap<SessionId, PeerKey>,
    /// `(deadline, peer key)`, one entry per connection that has a timer.
    timers: BTreeSet<(Instant, PeerKey)>,
    next_key: u64,
    /// The conversation's UDP port, bound at the first offer (a bind failure refuses that
    /// offer and the next one tries again).
    port: Option<Port>,
    /// The ICE-TCP port, bound with the UDP one when `RTC_TCP_PORTS` allows.
    tcp: Option<TcpPort>,
    demux: Demux,
    /// What the connections want sent, sent together after each input ([`Engine::send_out`]).
    outbox: Vec<Transmit>,
    /// Datagrams read from the port and not yet handled, the oldest last.
    inbox: Vec<Received>,
    /// Reused for every packet: what the room decided to send.
    forwards: Vec<Forward>,
    /// Copies of the current packet written into listeners' connections, waiting in the
    /// outbox: their forwarding delay is taken once they have been sent ...
    copies_pending: u64,
    /// ... from when the datagram they came from was read.
    read_at: Option<Instant>,
    /// Datagrams dropped by this engine (the room counts its own), by reason.
    drops: DropStats,
    /// Sessions ended because their handling panicked.
    panics: u64,
    forward_delay: DelayHistogram,
    bites: Option<BiteSink>,
    /// Some member's connection has reached `connected` (see [`EngineSettings`]'s
    /// `media.first_connect_ms`).
    ever_connected: bool,
    /// Sessions whose handling panicked, and what it said: ended after the current pass.
    poisoned: Vec<(SessionId, String)>,
    /// A big room's copies of one packet, written and sent from several threads.
    fanout: Fanout,
    quality: quality::Tally,
    /// Per speaker, the worst loss its listeners report of its audio.
    downstream: FxHashMap<SessionId, WorstListener<SessionId>>,
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
        let orphan_grace = settings.orphan_grace;
        let first_connect =
            Some(Duration::from_millis(settings.media.first_connect_ms)).filter(|d| !d.is_zero());
        let mut engine = Engine::new(settings, bites, to_front);
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
                engine.on_tick(now, &mut last_stats);
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
            // Datagrams already read and not yet handled: no sleep.
            let wake = if engine.inbox.is_empty() { wake } else { now };
            sleep.as_mut().reset(wake.into());
            let woke = tokio::select! {
                input = front.recv() => Wake::Front(input),
                _ = port_readable(&engine.port) => Wake::Port,
                Some(event) = tcp_event(&mut engine.tcp) => Wake::Tcp(event),
                _ = &mut sleep => Wake::Timer,
            };
            match woke {
                Wake::Front(input) => {
                    if let Some(stop) = engine.on_input(input, &mut orphaned) {
                        break 'run stop;
                    }
                }
                Wake::Tcp(event) => engine.on_tcp(event),
                Wake::Port | Wake::Timer => {}
            }
            // Whichever woke the loop, front's queue and the port get a bounded share before it
            // looks again: neither a burst of front's messages nor a flood of datagrams starves
            // the other.
            for _ in 0..FRONT_SHARE {
                let Ok(input) = front.try_recv() else { break };
                if let Some(stop) = engine.on_input(Some(input), &mut orphaned) {
                    break 'run stop;
                }
            }
            let busy = engine.read_port(DATAGRAM_SHARE);
            engine.send_out();
            if busy {
                // The port always has more: nothing below would ever make this task wait, and
                // on the worker's one thread the link to front (heartbeats, answers) and the
                // bite publisher would never run. Let them.
                tokio::task::yield_now().await;
            }
        };
        engine.wind_up(never_connected, &mut front).await;
        (reason, engine.stats())
    }

    /// The conversation is over: every session ends, a worker nobody connected to retires
    /// (answering what front sent meanwhile), and what was dropped is logged.
    async fn wind_up(&mut self, never_connected: bool, front: &mut UnboundedReceiver<Input>) {
        // Told why only when it is news to front: a conversation nobody connected to.
        let reason_for_sessions = never_connected.then_some(CloseReason::Failed);
        let sessions: Vec<SessionId> = self.sessions.keys().copied().collect();
        for session in sessions {
            self.end_session(session, reason_for_sessions);
        }
        if never_connected {
            self.retire(front).await;
        }
        self.send_out();
        let dropped = self.stats().dropped;
        if dropped.total() + self.panics > 0 {
            let by_reason: Vec<String> = dropped
                .by_reason()
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(reason, n)| format!("{reason}={n}"))
                .collect();
            tracing::info!(
                panics = self.panics,
                "datagrams dropped: {}",
                by_reason.join(" ")
            );
        }
    }

    /// The selection's tick: the room re-selects, idle ICE-TCP connections expire, and every
    /// [`STATS_EVERY`] front gets the counters.
    fn on_tick(&mut self, now: Instant, last_stats: &mut Instant) {
        self.room.tick(now);
        self.drain_room_events();
        if let Some(tcp) = self.tcp.as_mut() {
            tcp.expire(now);
        }
        self.sample_quality(now);
        if now.duration_since(*last_stats) >= STATS_EVERY {
            *last_stats = now;
            self.send_stats();
        }
    }

    /// An engine with no members yet (and no port until the first offer).
    fn new(
        settings: EngineSettings,
        bites: Option<BiteSink>,
        to_front: UnboundedSender<ToFront>,
    ) -> Engine {
        let cutter = settings.cutter.filter(|_| bites.is_some());
        let cap = |n: u32| Some(n).filter(|&n| n > 0);
        let limits = MemberLimits {
            packets_per_s: cap(settings.media.member_packets_per_s),
            bytes_per_s: cap(settings.media.member_bytes_per_s),
        };
        let fanout = Fanout::new(settings.media.fanout_threads);
        Engine {
            conversation: settings.conversation,
            generation: settings.generation,
            started: Instant::now(),
            media: settings.media,
            room: Room::new(cutter).with_limits(limits),
            to_front,
            peers: FxHashMap::default(),
            sessions: FxHashMap::default(),
            timers: BTreeSet::new(),
            next_key: 0,
            port: None,
            tcp: None,
            demux: Demux::new(),
            outbox: Vec::new(),
            inbox: Vec::with_capacity(RECV_BATCH),
            forwards: Vec::new(),
            copies_pending: 0,
            read_at: None,
            drops: DropStats::default(),
            panics: 0,
            forward_delay: DelayHistogram::default(),
            bites,
            ever_connected: false,
            poisoned: Vec::new(),
            fanout,
            quality: quality::Tally::default(),
            downstream: FxHashMap::default(),
        }
    }

    fn stats(&self) -> WorkerStats {
        let mut stats = self.room.stats();
        stats.forward_delay = self.forward_delay.clone();
        stats.dropped.add(&self.drops);
        self.quality.add_to(&mut stats);
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
        let local = match &self.port {
            Some(port) => port.local,
            None => {
                let port = Port::bind(&self.media)?;
                let local = port.local;
                self.tcp = self.media.tcp_ports.and_then(|range| {
                    let ip = self
                        .media
                        .bind_ip
                        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                    TcpPort::bind(ip, local.ip(), local.port(), range)
                        .map_err(|e| tracing::warn!("no ICE-TCP port in RTC_TCP_PORTS: {e}"))
                        .ok()
                });
                self.port = Some(port);
                local
            }
        };
        let tcp_local = self.tcp.as_ref().map(|t| t.local);
        let ice = IceCredentials::random();
        let stream_id = format!("beep-{session}");
        let floor = LossFloor::default();
        let a = peer::answer(
            &self.media,
            &offer,
            sdp,
            &stream_id,
            local,
            tcp_local,
            &ice,
            &floor,
            now,
        )?;
        let key = PeerKey(self.next_key);
        self.next_key += 1;
        self.demux.add(key, ice.ufrag, ice.pwd);
        let outputs = a
            .slots
            .iter()
            .map(|s| SlotOutput {
                mid: s.mid.clone(),
                payload_type: s.payload_type,
                rewriter: SlotRewriter::new(s.ssrc, rand::random(), rand::random()),
                red: s
                    .red_pt
                    .map(|pt| RedEncoder::new(pt, s.payload_type, self.media.red_distance)),
                history: s.nack.then(SlotHistory::default),
            })
            .collect();
        self.peers.insert(
            key,
            Peer {
                session,
                pc: a.pc,
                level_id: offer.audio_level_id,
                deadline: None,
                last_timeout: now,
                selected: None,
                broken: false,
                link: Default::default(),
                floor,
                red_up: offer
                    .upstream_red()
                    .filter(|_| self.media.red_distance > 0)
                    .map(|(red, opus)| RedDecoder::new(red, opus)),
                #[cfg(test)]
                panic_on_read: false,
                #[cfg(test)]
                panic_on_write: false,
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
        self.drive(key);
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
        self.demux.remove(key);
        if let Some(mut peer) = self.peers.remove(&key) {
            if let Some(t) = peer.deadline.take() {
                self.timers.remove(&(t, key));
            }
            // A connection that panicked is dropped as it is; closing it could panic again.
            if !peer.broken {
                let outbox = &mut self.outbox;
                let closed = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    let _ = peer.pc.close();
                    flush(&mut peer, outbox);
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
                engine.drive(key);
            });
        }
        self.bury();
        self.send_out();
    }

    /// Takes everything the connection has to give after an input: events, received RTP
    /// (routed through the room to the listeners) and, in one sweep of its pipeline, the
    /// datagrams to send; then re-arms its timer.
    fn drive(&mut self, key: PeerKey) {
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
        let (mut blocks, mut nacked) = (Vec::new(), Vec::new());
        while let Some(TaggedRTCMessage { message, .. }) = peer.pc.poll_read() {
            match message {
                RTCMessage::RtpPacket(_, pkt) => match peer.red_up.as_mut() {
                    Some(red) => received.extend(red.decode(pkt)),
                    None => received.push(pkt),
                },
                RTCMessage::RtcpPacket(_, rtcp) => {
                    quality::note_rtcp(&mut peer.link, &rtcp, &mut blocks, &mut nacked)
                }
                _ => {}
            }
        }
        flush(peer, &mut self.outbox);
        let polled = peer.pc.poll_timeout();
        rearm(
            &mut self.timers,
            key,
            &mut peer.deadline,
            peer.last_timeout,
            polled,
            now,
        );
        let (session, level_id) = (peer.session, peer.level_id);
        self.quality.red_recovered += peer.red_up.as_mut().map_or(0, |r| take(&mut r.recovered));
        self.note_listener_reports(session, &blocks, now);
        if !nacked.is_empty() {
            let resent = self.room.retransmit(session, &nacked, &mut self.forwards);
            self.quality.retransmitted += resent as u64;
            self.send_forwards(now);
        }

        if !received.is_empty() {
            let unix_ms = unix_ms_now();
            for pkt in &received {
                self.room
                    .on_rtp(session, level_id, pkt, now, unix_ms, &mut self.forwards);
                self.send_forwards(now);
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
    fn send_forwards(&mut self, now: Instant) {
        // A packet with hundreds of copies goes out from several threads ([`fanout`]).
        if self.fanout.wants(self.forwards.len()) && self.send_forwards_parallel(now) {
            return;
        }
        let mut forwards = std::mem::take(&mut self.forwards);
        for f in forwards.drain(..) {
            let Some(&key) = self.sessions.get(&f.listener) else {
                continue;
            };
            let Some(peer) = self.peers.get_mut(&key).filter(|p| !p.broken) else {
                continue;
            };
            match write_copy(peer, f.packet, now, &mut self.outbox, &mut self.drops) {
                Ok(true) => self.copies_pending += 1,
                Ok(false) => {}
                Err(why) => self.poison(key, why),
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
mod demux;
mod fanout;
mod from_front;
mod guard;
mod io;
mod port;
mod quality;
mod room_events;
mod tcp;
#[cfg(test)]
mod tests;

use super::timer::rearm;
pub use bites::BiteSink;
use bites::unix_ms_now;
use connection::{closed_by_client, flush, selected_remote, write_copy};
use demux::{Demux, Verdict, is_stun};
use fanout::Fanout;
use guard::panic_text;
use io::{Wake, port_readable, tcp_event};
use port::{Port, RECV_BATCH, Received, Transmit, Transport};
use tcp::{TcpEvent, TcpPort};
