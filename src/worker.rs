//! The worker process: owns one conversation's peer connections.
//!
//! A single event loop serialises everything that changes the set of sessions: messages from
//! front, finished negotiations, peer-connection state changes. Negotiations run as their own
//! tasks (an answer takes milliseconds, and one slow offer must not hold up the others), and
//! the media path never passes through this loop: each incoming track has a task that feeds
//! [`Room::on_rtp`], each outgoing slot a writer task.
//!
//! The worker exits on `Shutdown`, or when front's end of the socket closes (front died: a
//! worker never outlives its supervisor).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, UnboundedSender};
use tracing::Instrument;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceCandidateInit, RTCIceGatheringState,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState,
};

use crate::config::MediaConfig;
use crate::identity::Identity;
use crate::ipc::{self, SessionId, ToFront, ToWorker};
use crate::peer::{self, Answered, NegotiationError};
use crate::rewrite::SlotRewriter;
use crate::room::{Room, SLOT_QUEUE, SlotOutput};
use crate::sdp::Offer;

/// How often the speaker selection re-runs.
const TICK: Duration = Duration::from_millis(50);
const STATS_EVERY: Duration = Duration::from_secs(2);

enum Event {
    Front(ToWorker),
    FrontGone(String),
    Negotiated {
        session: SessionId,
        identity: Identity,
        result: Result<Answered, NegotiationError>,
        audio_level_id: Option<u8>,
    },
    PeerState(SessionId, RTCPeerConnectionState),
    LocalIce(SessionId, String),
}

struct Session {
    pc: Option<Arc<dyn PeerConnection>>,
    /// The answer, once sent: later local candidates trickle unless it already has them.
    answer: Option<String>,
    /// Remote candidates that came before the peer connection existed.
    pending_ice: Vec<String>,
    /// Local candidates gathered before the answer went out.
    local_ice: Vec<String>,
}

/// Per-connection callbacks. They run inside the connection's driver loop, so each one only
/// hands the event on (an unbounded send, or a spawn) and returns.
struct Handler {
    session: SessionId,
    events: UnboundedSender<Event>,
    gathered: mpsc::Sender<()>,
    room: Arc<Room>,
    audio_level_id: Option<u8>,
    /// The offer's first m-line: with BUNDLE every candidate belongs to it, and clients
    /// (aiortc, the W3C API) refuse a candidate with an empty `sdpMid`.
    first_mid: (String, u16),
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, ev: RTCPeerConnectionIceEvent) {
        if let Ok(mut init) = ev.candidate.to_json() {
            init.sdp_mid = Some(self.first_mid.0.clone());
            init.sdp_mline_index = Some(self.first_mid.1);
            if let Ok(json) = serde_json::to_string(&init) {
                let _ = self.events.send(Event::LocalIce(self.session, json));
            }
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.try_send(());
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.events.send(Event::PeerState(self.session, state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let (room, member, level_id) = (self.room.clone(), self.session, self.audio_level_id);
        // The crate queues at most 256 track events and drops beyond: poll in a task of its own.
        tokio::spawn(async move {
            while let Some(evt) = track.poll().await {
                match evt {
                    TrackRemoteEvent::OnRtpPacket(pkt) => {
                        room.on_rtp(member, level_id, &pkt, Instant::now())
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
    }
}

/// Runs a worker connected to front at `socket`.
pub async fn run(socket: &Path) -> anyhow::Result<()> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    // Front is the only other party; make sure the socket is not someone else's.
    ipc::check_peer(&stream, None).map_err(anyhow::Error::msg)?;
    let (mut r, w) = stream.into_split();
    let mut buf = Vec::new();
    let (conversation, media) = match ipc::read_frame::<_, ToWorker>(&mut r, &mut buf).await? {
        ToWorker::Init {
            conversation,
            media,
        } => (conversation, media),
        other => anyhow::bail!("expected Init, got {other:?}"),
    };
    // Every log line of this process, spawned tasks included, names the conversation.
    let span = tracing::info_span!("worker", conversation = conversation.as_str());
    serve(media, r, w).instrument(span).await;
    Ok(())
}

async fn serve(
    media: MediaConfig,
    mut r: tokio::net::unix::OwnedReadHalf,
    mut w: tokio::net::unix::OwnedWriteHalf,
) {
    tracing::info!(pid = std::process::id(), "worker started");

    let (to_front, mut outbox) = mpsc::unbounded_channel::<ToFront>();
    let writer = tokio::spawn(async move {
        while let Some(msg) = outbox.recv().await {
            if let Err(e) = ipc::write_frame(&mut w, &msg).await {
                return Err(e);
            }
        }
        Ok(())
    });
    let _ = to_front.send(ToFront::Ready {
        pid: std::process::id(),
    });

    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    {
        let events_tx = events_tx.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                match ipc::read_frame::<_, ToWorker>(&mut r, &mut buf).await {
                    Ok(msg) => {
                        if events_tx.send(Event::Front(msg)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = events_tx.send(Event::FrontGone(e.to_string()));
                        return;
                    }
                }
            }
        });
    }

    let room = Arc::new(Room::new(to_front.clone()));
    {
        let (room, to_front) = (room.clone(), to_front.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            let mut last_stats = Instant::now();
            loop {
                tick.tick().await;
                let now = Instant::now();
                room.tick(now);
                if now.duration_since(last_stats) >= STATS_EVERY {
                    last_stats = now;
                    if to_front.send(ToFront::Stats(room.stats())).is_err() {
                        return;
                    }
                }
            }
        });
    }

    let mut sessions: HashMap<SessionId, Session> = HashMap::new();
    let reason = loop {
        let Some(event) = events.recv().await else {
            break "event channel closed".to_string();
        };
        match event {
            Event::Front(ToWorker::Offer {
                session,
                identity,
                sdp,
            }) => {
                tracing::info!(%identity, session, "offer");
                sessions.insert(
                    session,
                    Session {
                        pc: None,
                        answer: None,
                        pending_ice: Vec::new(),
                        local_ice: Vec::new(),
                    },
                );
                tokio::spawn(
                    negotiate(
                        session,
                        identity,
                        sdp,
                        media.clone(),
                        room.clone(),
                        events_tx.clone(),
                    )
                    .in_current_span(),
                );
            }
            Event::Front(ToWorker::Ice { session, candidate }) => {
                match sessions.get_mut(&session) {
                    Some(Session { pc: Some(pc), .. }) => add_candidate(pc.clone(), candidate),
                    Some(s) if s.pending_ice.len() < 64 => s.pending_ice.push(candidate),
                    _ => {}
                }
            }
            Event::Front(ToWorker::Leave { session }) => {
                if let Some(s) = sessions.remove(&session) {
                    close_session(&room, session, s);
                }
            }
            Event::Front(ToWorker::Shutdown) => break "shutdown requested".to_string(),
            Event::Front(ToWorker::Init { .. }) => tracing::warn!("ignoring a second Init"),
            Event::FrontGone(e) => break format!("front channel ended: {e}"),
            Event::Negotiated {
                session,
                identity,
                result,
                audio_level_id,
            } => {
                let Some(s) = sessions.get_mut(&session) else {
                    // Left while negotiating.
                    if let Ok(a) = result {
                        tokio::spawn(async move {
                            let _ = a.pc.close().await;
                        });
                    }
                    continue;
                };
                match result {
                    Ok(a) => {
                        for json in s.local_ice.drain(..).filter(|j| !answer_has(&a.answer, j)) {
                            let _ = to_front.send(ToFront::Ice {
                                session,
                                candidate: json,
                            });
                        }
                        let _ = to_front.send(ToFront::Answer {
                            session,
                            sdp: a.answer.clone(),
                        });
                        s.answer = Some(a.answer);
                        for c in s.pending_ice.drain(..) {
                            add_candidate(a.pc.clone(), c);
                        }
                        s.pc = Some(a.pc);
                        let outputs = a.slots.into_iter().map(spawn_slot_writer).collect();
                        room.add_member(session, identity, outputs, audio_level_id);
                    }
                    Err(e) => {
                        tracing::info!(session, "offer rejected: {}", e.message);
                        sessions.remove(&session);
                        let _ = to_front.send(ToFront::Rejected {
                            session,
                            code: e.code.as_str().into(),
                            message: e.message,
                        });
                    }
                }
            }
            Event::PeerState(session, state) => {
                tracing::debug!(session, "peer connection {state}");
                if state == RTCPeerConnectionState::Connected {
                    room.set_live(session);
                }
                if matches!(
                    state,
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                ) {
                    if let Some(s) = sessions.remove(&session) {
                        close_session(&room, session, s);
                        let _ = to_front.send(ToFront::Closed {
                            session,
                            reason: format!("peer-connection-{state}"),
                        });
                    }
                }
            }
            Event::LocalIce(session, json) => match sessions.get_mut(&session) {
                Some(Session {
                    answer: Some(answer),
                    ..
                }) if !answer_has(answer, &json) => {
                    let _ = to_front.send(ToFront::Ice {
                        session,
                        candidate: json,
                    });
                }
                // Held until the answer: most will be inside it.
                Some(s @ Session { answer: None, .. }) if s.local_ice.len() < 64 => {
                    s.local_ice.push(json)
                }
                _ => {}
            },
        }
    };
    tracing::info!("worker stopping: {reason}");
    let closing: Vec<_> = sessions
        .drain()
        .filter_map(|(id, s)| {
            room.remove_member(id);
            s.pc
        })
        .collect();
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        futures_util::future::join_all(closing.iter().map(|pc| pc.close())),
    )
    .await;
    drop(to_front);
    drop(room);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
}

/// Whether the answer SDP already carries this candidate (JSON `RTCIceCandidateInit`).
fn answer_has(answer: &str, json: &str) -> bool {
    serde_json::from_str::<RTCIceCandidateInit>(json)
        .map(|c| !c.candidate.is_empty() && answer.contains(&c.candidate))
        .unwrap_or(false)
}

fn close_session(room: &Room, session: SessionId, s: Session) {
    room.remove_member(session);
    if let Some(pc) = s.pc {
        tokio::spawn(async move {
            let _ = pc.close().await;
        });
    }
}

fn add_candidate(pc: Arc<dyn PeerConnection>, json: String) {
    tokio::spawn(async move {
        match serde_json::from_str::<RTCIceCandidateInit>(&json) {
            Ok(init) => {
                if let Err(e) = pc.add_ice_candidate(init).await {
                    tracing::debug!("remote candidate refused: {e}");
                }
            }
            Err(e) => tracing::debug!("unreadable remote candidate: {e}"),
        }
    });
}

fn spawn_slot_writer(slot: peer::SlotTrack) -> SlotOutput {
    let (tx, mut rx) = mpsc::channel::<rtc::rtp::Packet>(SLOT_QUEUE);
    let track = slot.track.clone();
    tokio::spawn(async move {
        while let Some(pkt) = rx.recv().await {
            if track.write_rtp(pkt).await.is_err() {
                break;
            }
        }
    });
    SlotOutput {
        mid: slot.mid,
        payload_type: slot.payload_type,
        rewriter: SlotRewriter::new(slot.ssrc, rand::random(), rand::random()),
        tx,
    }
}

async fn negotiate(
    session: SessionId,
    identity: Identity,
    sdp: String,
    media: MediaConfig,
    room: Arc<Room>,
    events: UnboundedSender<Event>,
) {
    let sdp = crate::sdp::unify_bundle_ice(&sdp);
    let offer = match Offer::parse(&sdp) {
        Ok(o) => o,
        Err(message) => {
            let result = Err(NegotiationError {
                code: crate::signal::ErrorCode::BadSdp,
                message,
            });
            let _ = events.send(Event::Negotiated {
                session,
                identity,
                result,
                audio_level_id: None,
            });
            return;
        }
    };
    let audio_level_id = offer.audio_level_id;
    let result = async {
        let (gathered_tx, mut gathered) = mpsc::channel(1);
        let handler = Arc::new(Handler {
            session,
            events: events.clone(),
            gathered: gathered_tx,
            room,
            audio_level_id,
            first_mid: offer
                .audio
                .first()
                .map(|a| (a.mid.clone(), a.index as u16))
                .unwrap_or_else(|| ("0".into(), 0)),
        });
        let pc = peer::build_peer(&media, handler).await?;
        let stream_id = format!("beep-{session}");
        match peer::answer(&pc, &offer, sdp, media.max_slots, &stream_id, &mut gathered).await {
            Ok(slots) => match pc.local_description().await {
                Some(local) => Ok(Answered {
                    pc,
                    answer: local.sdp,
                    slots,
                }),
                None => {
                    let _ = pc.close().await;
                    Err(NegotiationError {
                        code: crate::signal::ErrorCode::Internal,
                        message: "no local description".into(),
                    })
                }
            },
            Err(e) => {
                let _ = pc.close().await;
                Err(e)
            }
        }
    }
    .await;
    let _ = events.send(Event::Negotiated {
        session,
        identity,
        result,
        audio_level_id,
    });
}
