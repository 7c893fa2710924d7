//! One client's signalling session: the loop behind `GET /connect` once the WebSocket is up.
//! It reads `type::payload` frames, hands offers and candidates to front's state, writes what
//! the state sends back (answers, events), and closes the socket with an `error::` frame and
//! a close code when something is wrong. A seed-era client (raw SDP offer) gets the raw SDP
//! answer and nothing else.
//!
//! Limits (README "Security"): what front sends a socket goes through a bounded queue, and a
//! client that lets it fill up, or that takes longer than `WS_SEND_TIMEOUT_MS` to take one
//! frame, is disconnected, so a client that stops reading costs a bounded amount of memory.
//! Front pings every `WS_PING_MS`; a socket that sends nothing, not even a pong, for
//! `WS_IDLE_MS` is closed. `ice::` frames are rate limited (a token bucket) and a peer
//! connection takes at most `MAX_CANDIDATES` candidates, its offer's and trickled ones
//! together. Every offer into a joined conversation asks the permission check again.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use tokio::time::Instant;

use super::outbox::{Out, SocketTx};
use super::state::{Front, JoinError, OfferState};
use crate::media::bucket::TokenBucket;
use crate::media::sdp::Offer;
use crate::wire::identity::Identity;
use crate::wire::ids::ConversationId;
use crate::wire::signal::{ClientFrame, ErrorCode, ServerFrame, SignalError, parse_client_frame};

/// `ice::` frames dropped for the rate, after which a socket is taken to be flooding and is
/// closed with `rate-limited`. A client that trickles normally never has one dropped.
pub const ICE_FLOOD_CLOSE: u64 = 200;

/// The signalling side of ICE for one socket: a token bucket for `ice::` frames and the
/// candidate budget of the current peer connection. Pure (time comes in), so it is unit tested.
#[derive(Debug)]
pub struct IceLimiter {
    per_second: u32,
    burst: u32,
    frames: TokenBucket,
    last: Instant,
    max_candidates: usize,
    /// Candidates of the current peer connection (its offer's plus trickled ones).
    candidates: usize,
    /// Frames dropped for the rate, and candidates dropped over the cap.
    pub dropped_rate: u64,
    pub dropped_cap: u64,
}

/// What to do with one `ice::` frame.
#[derive(Debug, PartialEq)]
pub enum IceVerdict {
    Pass,
    /// Over the rate or the cap: dropped (and counted).
    Drop,
    /// Flooding: close the socket with this.
    Close(SignalError),
}

impl IceLimiter {
    pub fn new(per_second: u32, burst: u32, max_candidates: usize, now: Instant) -> Self {
        IceLimiter {
            per_second,
            burst: burst.max(1),
            frames: TokenBucket::new(per_second, burst.max(1)),
            last: now,
            max_candidates,
            candidates: 0,
            dropped_rate: 0,
            dropped_cap: 0,
        }
    }

    /// Checked before the frame is even parsed: any `ice::` frame takes a token.
    pub fn frame(&mut self, now: Instant) -> IceVerdict {
        self.frames.refill(now.saturating_duration_since(self.last));
        self.last = now;
        if self.frames.try_take(1.0) {
            return IceVerdict::Pass;
        }
        self.dropped_rate += 1;
        if self.dropped_rate >= ICE_FLOOD_CLOSE {
            return IceVerdict::Close(SignalError::new(
                ErrorCode::RateLimited,
                format!(
                    "too many ice:: frames: more than {} per second (burst {}), {} dropped",
                    self.per_second, self.burst, self.dropped_rate
                ),
            ));
        }
        IceVerdict::Drop
    }

    /// A trickled candidate (not the end-of-candidates marker): within the cap?
    pub fn candidate(&mut self) -> bool {
        if self.candidates < self.max_candidates {
            self.candidates += 1;
            true
        } else {
            self.dropped_cap += 1;
            false
        }
    }

    /// A new offer starts a new peer connection, with the candidates it carries. An offer
    /// with more than the cap is refused.
    pub fn offer(&mut self, sdp: &str) -> Result<(), SignalError> {
        let n = sdp_candidates(sdp);
        if n > self.max_candidates {
            return Err(SignalError::new(
                ErrorCode::BadSdp,
                format!(
                    "the offer carries {n} ICE candidates; at most {} are accepted (MAX_CANDIDATES)",
                    self.max_candidates
                ),
            ));
        }
        self.candidates = n;
        Ok(())
    }
}

impl IceLimiter {
    /// Says, once the socket is closed, how many `ice::` frames it had dropped, if any.
    fn log_dropped(&self, who: &Identity) {
        if self.dropped_rate + self.dropped_cap > 0 {
            tracing::info!(
                %who,
                over_rate = self.dropped_rate,
                over_cap = self.dropped_cap,
                "ice:: frames dropped on this socket"
            );
        }
    }
}

/// `a=candidate:` lines in an SDP.
pub fn sdp_candidates(sdp: &str) -> usize {
    sdp.lines()
        .filter(|l| l.trim_start().starts_with("a=candidate:"))
        .count()
}

pub async fn signalling(
    front: Arc<Front>,
    who: Identity,
    conversation: Option<ConversationId>,
    mut socket: WebSocket,
) {
    let cfg = front.cfg.clone();
    let send_timeout = cfg.ws_send_timeout;
    let (tx, mut rx, overflow) = SocketTx::channel(cfg.ws_send_queue);
    let socket_id = match front.attach_socket(&who, tx.clone()) {
        Ok(id) => id,
        Err(e) => return fail(&mut socket, &e, send_timeout).await,
    };
    tracing::debug!(%who, "signalling socket open");
    if let Some(conversation) = conversation {
        let (tasks, front, who, tx) = (front.tasks.clone(), front.clone(), who.clone(), tx.clone());
        tasks.spawn(async move {
            if let Err(e) = front.authorize_and_join(&who, &conversation).await {
                let _ = tx.send(Out::Fail(e.signal()));
            }
        });
    }
    drop(tx);
    let join_timeout = cfg.join_timeout;
    let limit = cfg.max_frame_bytes;
    let mut offer_deadline: Option<Instant> = None;
    // A seed-era client (raw SDP offer) understands one frame: the raw SDP answer.
    let mut legacy = false;
    let mut ice = IceLimiter::new(
        cfg.ice_per_second,
        cfg.ice_burst,
        cfg.max_candidates,
        Instant::now(),
    );
    let mut ping = tokio::time::interval_at(Instant::now() + cfg.ws_ping, cfg.ws_ping);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    loop {
        let deadline =
            offer_deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            incoming = socket.recv() => {
                last_heard = Instant::now();
                let text = match classify(incoming, limit, &who) {
                    Incoming::Text(t) => t,
                    Incoming::Skip => continue,
                    Incoming::End(e) => {
                        if let Some(e) = e {
                            fail(&mut socket, &e, send_timeout).await;
                        }
                        break;
                    }
                };
                let handled = on_text(&front, &who, text.as_str(), limit, &mut ice, &mut legacy, &mut offer_deadline).await;
                if let Err(e) = handled {
                    fail(&mut socket, &e, send_timeout).await;
                    break;
                }
            }
            out = rx.recv() => match out {
                Some(Out::Frame(frame)) => {
                    if !send_frame(&mut socket, frame, legacy, send_timeout, &who).await {
                        break;
                    }
                }
                Some(Out::Fail(e)) => {
                    fail(&mut socket, &e, send_timeout).await;
                    break;
                }
                None => break,
            },
            _ = overflow.notified() => {
                // Not reading: whatever we would write now would only queue up too.
                tracing::info!(%who, "disconnecting a client that is not reading: {} frames queued", cfg.ws_send_queue);
                break;
            }
            _ = ping.tick() => {
                if tokio::time::timeout(send_timeout, socket.send(Message::Ping(Default::default()))).await.map_or(true, |r| r.is_err()) {
                    tracing::info!(%who, "disconnecting a client that took no ping for {send_timeout:?}");
                    break;
                }
            }
            _ = tokio::time::sleep_until(last_heard + cfg.ws_idle) => {
                close_idle(&mut socket, cfg.ws_idle, &who).await;
                break;
            }
            _ = tokio::time::sleep_until(deadline), if offer_deadline.is_some() => {
                offer_deadline = None;
                if front.offer_expired(&who) {
                    let e = SignalError::new(ErrorCode::JoinTimeout, format!("no join for this client within {} s; POST /join/<conversation> or connect with ?conversation=", join_timeout.as_secs_f32()));
                    fail(&mut socket, &e, send_timeout).await;
                    break;
                }
            }
        }
    }
    front.detach_socket(&who, socket_id);
    ice.log_dropped(&who);
    tracing::debug!(%who, "signalling socket closed");
}

/// What a message from the socket calls for.
enum Incoming {
    /// A text frame to handle.
    Text(Utf8Bytes),
    /// Nothing (a ping or a pong).
    Skip,
    /// The socket is done, with the error the client is told first, if any.
    End(Option<SignalError>),
}

fn classify(
    incoming: Option<Result<Message, axum::Error>>,
    limit: usize,
    who: &Identity,
) -> Incoming {
    match incoming {
        Some(Ok(Message::Text(t))) => Incoming::Text(t),
        Some(Ok(Message::Binary(_))) => Incoming::End(Some(SignalError::new(
            ErrorCode::BadFrame,
            "binary frames are not part of the protocol; send text <type>::<payload>",
        ))),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Incoming::Skip,
        Some(Ok(Message::Close(_))) | None => Incoming::End(None),
        Some(Err(e)) => {
            // A message past 4x MAX_FRAME_BYTES is refused by the WebSocket layer itself
            // (tungstenite's capacity error) before we see it; the client still hears why
            // rather than finding the socket closed.
            let text = e.to_string();
            tracing::debug!(%who, "socket error: {e}");
            let too_long =
                text.contains("Message too long") || text.contains("Space limit exceeded");
            Incoming::End(too_long.then(|| {
                SignalError::new(
                    ErrorCode::TooLarge,
                    format!("frame exceeds the limit of {limit} bytes"),
                )
            }))
        }
    }
}

/// Writes one frame to the socket (a seed-era client gets its answer as raw SDP, and
/// nothing else); false when the socket is to be closed: it failed, or the client took
/// nothing for `within` (it is not reading).
async fn send_frame(
    socket: &mut WebSocket,
    frame: ServerFrame,
    legacy: bool,
    within: Duration,
    who: &Identity,
) -> bool {
    let t = match (legacy, frame) {
        (true, ServerFrame::Answer { sdp }) => sdp,
        (true, _) => return true,
        (false, frame) => frame.to_text(),
    };
    match tokio::time::timeout(within, socket.send(Message::Text(t.into()))).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::info!(%who, "disconnecting a client that took no frame for {within:?} (not reading)");
            false
        }
    }
}

/// Closes a socket that sent nothing, not even a pong, for `idle`, saying so.
async fn close_idle(socket: &mut WebSocket, idle: Duration, who: &Identity) {
    tracing::info!(%who, "closing a signalling socket silent for {idle:?} (no pong)");
    let close = Message::Close(Some(CloseFrame {
        code: 1001,
        reason: format!(
            "nothing received for {} s, not even a pong",
            idle.as_secs_f32()
        )
        .into(),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(close)).await;
}

/// One text frame from the client: its size, the rate of `ice::` frames (checked before
/// anything is parsed), then the offer or candidate it carries. An error closes the socket
/// with that error; an `ice::` frame over the rate is dropped without one.
async fn on_text(
    front: &Arc<Front>,
    who: &Identity,
    text: &str,
    limit: usize,
    ice: &mut IceLimiter,
    legacy: &mut bool,
    offer_deadline: &mut Option<Instant>,
) -> Result<(), SignalError> {
    if text.len() > limit {
        return Err(SignalError::new(
            ErrorCode::TooLarge,
            format!("frame of {} bytes exceeds the limit of {limit}", text.len()),
        ));
    }
    if text.starts_with("ice::") {
        match ice.frame(Instant::now()) {
            IceVerdict::Pass => {}
            IceVerdict::Drop => {
                if ice.dropped_rate == 1 {
                    tracing::info!(%who, "ice:: frames over the rate: dropping them");
                }
                return Ok(());
            }
            IceVerdict::Close(e) => return Err(e),
        }
    }
    match parse_client_frame(text)? {
        // Offers that can never work are refused here, before a worker is involved.
        ClientFrame::Offer { sdp, legacy: raw } => {
            Offer::parse(&sdp).map_err(|e| SignalError::new(ErrorCode::BadSdp, e.to_string()))?;
            admit_offer(front, who, &sdp, ice).await?;
            *legacy = raw;
            *offer_deadline = match front.offer(who, sdp)? {
                OfferState::WaitingForJoin { until } => Some(Instant::from_std(until)),
                OfferState::Dispatched => None,
            };
        }
        ClientFrame::Ice(candidate) => {
            if candidate.is_none() || ice.candidate() {
                front.ice(who, candidate);
            } else if ice.dropped_cap == 1 {
                tracing::info!(%who, "more than {} ICE candidates for one peer connection: dropping the rest", front.cfg.max_candidates);
            }
        }
    }
    Ok(())
}

/// What an offer must pass before it reaches front's state: the candidate cap, the offer
/// rate (checked here too, so a flood of offers does not become a flood of permission
/// requests), and the permission check of the conversation the client is in. An offer with
/// no join yet waits for the join, whose own check covers it (as it covers the first offer
/// within `JOIN_TIMEOUT_MS` after it): join and offer stay order-independent. A refusal by the permissions service also ends the client's session
/// in that conversation and forgets the join.
async fn admit_offer(
    front: &Arc<Front>,
    who: &Identity,
    sdp: &str,
    ice: &mut IceLimiter,
) -> Result<(), SignalError> {
    let joined = front.admit_offer(who)?;
    ice.offer(sdp)?;
    let Some(conversation) = joined else {
        return Ok(());
    };
    match front.authorize(who, &conversation).await {
        Ok(()) => Ok(()),
        Err(e) => {
            if let JoinError::Forbidden(_) = e {
                front.forbidden(who, &conversation);
            }
            Err(e.signal())
        }
    }
}

async fn fail(socket: &mut WebSocket, e: &SignalError, within: Duration) {
    tracing::info!(
        code = e.code.as_str(),
        "closing signalling socket: {}",
        e.message
    );
    let reason: String = e.message.chars().take(100).collect();
    let _ = tokio::time::timeout(within, async {
        socket.send(Message::Text(e.frame().into())).await?;
        socket
            .send(Message::Close(Some(CloseFrame {
                code: e.code.close_code(),
                reason: reason.into(),
            })))
            .await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_frames_are_rate_limited_then_closed_when_flooding() {
        let t0 = Instant::now();
        let mut l = IceLimiter::new(20, 40, 32, t0);
        // The burst passes at once, then one frame per 50 ms.
        for _ in 0..40 {
            assert_eq!(l.frame(t0), IceVerdict::Pass);
        }
        assert_eq!(l.frame(t0), IceVerdict::Drop);
        assert_eq!(l.frame(t0 + Duration::from_millis(50)), IceVerdict::Pass);
        assert_eq!(l.frame(t0 + Duration::from_millis(50)), IceVerdict::Drop);
        // A pause refills up to the burst, no further.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..40 {
            assert_eq!(l.frame(later), IceVerdict::Pass);
        }
        assert_eq!(l.frame(later), IceVerdict::Drop);
        // Flooding on: closed once ICE_FLOOD_CLOSE frames were dropped.
        let mut last = IceVerdict::Pass;
        for _ in 0..ICE_FLOOD_CLOSE {
            last = l.frame(later);
            if matches!(last, IceVerdict::Close(_)) {
                break;
            }
        }
        let IceVerdict::Close(e) = last else {
            panic!("not closed: {last:?}")
        };
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert_eq!(l.dropped_rate, ICE_FLOOD_CLOSE);
    }

    #[test]
    fn candidates_are_capped_per_peer_connection() {
        let mut l = IceLimiter::new(20, 40, 3, Instant::now());
        let two = "v=0\r\na=candidate:1 1 udp 1 10.0.0.1 9 typ host\r\n a=candidate:2 1 udp 1 10.0.0.2 9 typ host\r\n";
        assert_eq!(sdp_candidates(two), 2);
        l.offer(two).unwrap();
        assert!(l.candidate());
        assert!(!l.candidate());
        assert_eq!(l.dropped_cap, 1);
        // A new offer is a new peer connection.
        l.offer("v=0\r\n").unwrap();
        assert!(l.candidate() && l.candidate() && l.candidate());
        assert!(!l.candidate());
        let four = two.repeat(2);
        let e = l.offer(&four).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadSdp);
        assert!(e.message.contains("MAX_CANDIDATES"), "{}", e.message);
    }
}
