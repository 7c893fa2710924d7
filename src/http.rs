//! Front's HTTP surface (axum): `/connect` signalling, `POST /join/{id}`, `/healthz`,
//! `/metrics`, and the development page. Handlers translate between HTTP/WebSocket and the
//! state in [`crate::front`]; nothing here panics on input.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use tokio::time::Instant;

use crate::front::{Front, JoinError, OfferState, Out};
use crate::identity::{CLAIM_HEADER, Identity, check_conversation_id, parse_claim};
use crate::signal::{ClientFrame, ErrorCode, SignalError, parse_client_frame};

pub fn router(front: Arc<Front>) -> Router {
    let mut r = Router::new()
        .route("/connect", get(connect))
        .route("/join/{conversationid}", post(join))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics));
    if front.cfg.dev_mode {
        r = r.route("/", get(demo_page));
    }
    r.with_state(front)
}

fn bad_request(reason: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, reason.into()).into_response()
}

/// The caller's identity: the claim header, or in development mode `?userid=&clientid=`
/// (browsers cannot set headers on a WebSocket).
fn identity(
    front: &Front,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Identity, String> {
    let header = headers.get(CLAIM_HEADER).map(|v| v.as_bytes());
    if header.is_none() && front.cfg.dev_mode {
        if let (Some(u), Some(c)) = (query.get("userid"), query.get("clientid")) {
            let claim = serde_json::json!({"userid": u, "clientid": c}).to_string();
            return parse_claim(Some(claim.as_bytes()));
        }
    }
    parse_claim(header)
}

async fn join(
    State(front): State<Arc<Front>>,
    Path(conversation): Path<String>,
    headers: HeaderMap,
) -> Response {
    let who = match identity(&front, &headers, &HashMap::new()) {
        Ok(w) => w,
        Err(r) => return bad_request(r),
    };
    if let Err(r) = check_conversation_id(&conversation) {
        return bad_request(r);
    }
    match front.authorize_and_join(&who, &conversation).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(JoinError::Forbidden(m)) => (
            StatusCode::UNAUTHORIZED,
            format!("not allowed in this conversation: {m}"),
        )
            .into_response(),
        Err(JoinError::Unavailable(m)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot check permissions: {m}"),
        )
            .into_response(),
    }
}

async fn connect(
    State(front): State<Arc<Front>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let who = match identity(&front, &headers, &query) {
        Ok(w) => w,
        Err(r) => return bad_request(r),
    };
    let conversation = query.get("conversation").cloned();
    if let Some(c) = &conversation {
        if let Err(r) = check_conversation_id(c) {
            return bad_request(r);
        }
    }
    // tungstenite's default 128 KiB read buffer is allocated and touched per socket: ~140 KiB
    // of front's RSS per connected client, for frames of a few KiB. Larger frames still
    // arrive whole (read in several chunks).
    let ws = ws.read_buffer_size(8 * 1024);
    // Frames above our limit still reach us (up to 4x) so the client gets a `too-large`
    // error frame instead of a bare protocol error.
    let limit = front.cfg.max_frame_bytes;
    ws.max_message_size(limit.saturating_mul(4))
        .max_frame_size(limit.saturating_mul(4))
        .on_upgrade(move |socket| signalling(front, who, conversation, socket))
}

async fn signalling(
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
                    Ok(ClientFrame::Offer { sdp, legacy: raw }) => match crate::sdp::Offer::parse(&sdp) {
                        Err(m) => Err(SignalError::new(ErrorCode::BadSdp, m)),
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

async fn healthz(State(front): State<Arc<Front>>) -> Response {
    let nats = nats_reachable(&front.cfg.nats).await;
    let body = serde_json::json!({
        "status": "ok",
        "nats": if nats { "up" } else { "down" },
        "workers": front.workers().len(),
        "sessions": front.client_count(),
    });
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A TCP connect to the NATS server, with a short timeout: enough to tell "up" from "down".
async fn nats_reachable(url: &str) -> bool {
    let hostport = url
        .split("://")
        .last()
        .unwrap_or(url)
        .split(',')
        .next()
        .unwrap_or("");
    let hostport = hostport.rsplit('@').next().unwrap_or(hostport);
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(hostport)
        )
        .await,
        Ok(Ok(_))
    )
}

async fn metrics(State(front): State<Arc<Front>>) -> Response {
    let body = front.metrics.render(front.client_count(), &front.workers());
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        body,
    )
        .into_response()
}

async fn demo_page() -> Html<&'static str> {
    Html(include_str!("../static/index.html"))
}
