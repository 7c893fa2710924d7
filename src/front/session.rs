//! One client's signalling session: the loop behind `GET /connect` once the WebSocket is up.
//! It reads `type::payload` frames, hands offers and candidates to front's state, writes what
//! the state sends back (answers, events), and closes the socket with an `error::` frame and
//! a close code when something is wrong. A seed-era client (raw SDP offer) gets the raw SDP
//! answer and nothing else.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use tokio::time::Instant;

use super::state::{Front, OfferState, Out};
use crate::media::sdp::Offer;
use crate::wire::identity::Identity;
use crate::wire::signal::{ClientFrame, ErrorCode, SignalError, parse_client_frame};

pub async fn signalling(
    front: Arc<Front>,
    who: Identity,
    conversation: Option<String>,
    mut socket: WebSocket,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Out>();
    let socket_id = match front.attach_socket(&who, tx.clone()) {
        Ok(id) => id,
        Err(e) => return fail(&mut socket, &e).await,
    };
    tracing::debug!(%who, "signalling socket open");
    if let Some(conversation) = conversation {
        let (front, who, tx) = (front.clone(), who.clone(), tx.clone());
        tokio::spawn(async move {
            if let Err(e) = front.authorize_and_join(&who, &conversation).await {
                let _ = tx.send(Out::Fail(e.signal()));
            }
        });
    }
    let join_timeout = front.cfg.join_timeout;
    let limit = front.cfg.max_frame_bytes;
    let mut offer_deadline: Option<Instant> = None;
    // A seed-era client (raw SDP offer) understands one frame: the raw SDP answer.
    let mut legacy = false;
    loop {
        let deadline =
            offer_deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            incoming = socket.recv() => {
                let text = match incoming {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        fail(&mut socket, &SignalError::new(ErrorCode::BadFrame, "binary frames are not part of the protocol; send text <type>::<payload>")).await;
                        break;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(e)) => {
                        tracing::debug!(%who, "socket error: {e}");
                        break;
                    }
                };
                if text.len() > limit {
                    fail(&mut socket, &SignalError::new(ErrorCode::TooLarge, format!("frame of {} bytes exceeds the limit of {limit}", text.len()))).await;
                    break;
                }
                let result = match parse_client_frame(text.as_str()) {
                    // Offers that can never work are refused here, before a worker is involved.
                    Ok(ClientFrame::Offer { sdp, legacy: raw }) => match Offer::parse(&sdp) {
                        Err(e) => Err(SignalError::new(ErrorCode::BadSdp, e.to_string())),
                        Ok(_) => {
                            legacy = raw;
                            front.offer(&who, sdp)
                        }
                    }
                    .map(|state| {
                        offer_deadline = (state == OfferState::WaitingForJoin).then(|| Instant::now() + join_timeout);
                    }),
                    Ok(ClientFrame::Ice(candidate)) => {
                        front.ice(&who, candidate);
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    fail(&mut socket, &e).await;
                    break;
                }
            }
            out = rx.recv() => match out {
                Some(Out::Text(t)) => {
                    let t = match (legacy, t.strip_prefix("answer::")) {
                        (true, Some(sdp)) => sdp.to_string(),
                        (true, None) => continue,
                        (false, _) => t,
                    };
                    if socket.send(Message::Text(t.into())).await.is_err() {
                        break;
                    }
                }
                Some(Out::Fail(e)) => {
                    fail(&mut socket, &e).await;
                    break;
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline), if offer_deadline.is_some() => {
                offer_deadline = None;
                if front.offer_expired(&who) {
                    let e = SignalError::new(ErrorCode::JoinTimeout, format!("no join for this client within {} s; POST /join/<conversation> or connect with ?conversation=", join_timeout.as_secs_f32()));
                    fail(&mut socket, &e).await;
                    break;
                }
            }
        }
    }
    front.detach_socket(&who, socket_id);
    tracing::debug!(%who, "signalling socket closed");
}

async fn fail(socket: &mut WebSocket, e: &SignalError) {
    tracing::info!(
        code = e.code.as_str(),
        "closing signalling socket: {}",
        e.message
    );
    let _ = socket.send(Message::Text(e.frame().into())).await;
    let reason: String = e.message.chars().take(100).collect();
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: e.code.close_code(),
            reason: reason.into(),
        })))
        .await;
}
