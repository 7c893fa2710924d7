//! Front's HTTP surface (axum): `/connect` (upgraded to the signalling session in
//! [`super::session`]), `POST /join/{id}`, `/healthz`, `/metrics`, and the development page.
//! Handlers translate between HTTP and the state in [`super::state`]; nothing here panics on
//! input.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};

use super::session::signalling;
use super::state::{Front, JoinError};
use crate::publish::nats::NatsState;
use crate::wire::identity::{
    CLAIM_HEADER, ClaimError, Identity, check_conversation_id, parse_claim,
};

pub fn router(front: Arc<Front>) -> Router {
    let mut r = Router::new()
        .route("/connect", get(connect))
        .route("/join/{conversationid}", post(join))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if front.cfg.dev_mode {
        r = r.route("/", get(demo_page));
    }
    r.with_state(front)
}

fn bad_request(reason: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, reason.to_string()).into_response()
}

/// The caller's identity: the claim header, or in development mode `?userid=&clientid=`
/// (browsers cannot set headers on a WebSocket).
fn identity(
    front: &Front,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Identity, ClaimError> {
    let header = headers.get(CLAIM_HEADER).map(|v| v.as_bytes());
    if header.is_none()
        && front.cfg.dev_mode
        && let (Some(u), Some(c)) = (query.get("userid"), query.get("clientid"))
    {
        let claim = serde_json::json!({"userid": u, "clientid": c}).to_string();
        return parse_claim(Some(claim.as_bytes()));
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
        Err(e @ JoinError::Forbidden(_)) => {
            (StatusCode::UNAUTHORIZED, e.to_string()).into_response()
        }
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
    if let Some(c) = &conversation
        && let Err(r) = check_conversation_id(c)
    {
        return bad_request(r);
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

/// Whether NATS answers: front's own connection when bites are on, else a TCP probe.
async fn nats_up(front: &Front) -> bool {
    match &front.bites {
        Some(b) => b.nats_state() == NatsState::Connected,
        None => nats_reachable(&front.cfg.nats).await,
    }
}

/// Readiness, for a load balancer: 200 when front should get new conversations (NATS and
/// the permissions service reachable, not draining), else 503 saying what is missing.
/// Liveness is `/healthz`, which stays 200 while front runs.
async fn readyz(State(front): State<Arc<Front>>) -> Response {
    let (nats, permissions) = tokio::join!(nats_up(&front), front.permissions_reachable());
    let draining = front.is_draining();
    let mut missing = Vec::new();
    if !nats {
        missing.push("NATS is down (bites are spooled meanwhile)".to_string());
    }
    if let Err(e) = &permissions {
        missing.push(format!("the permissions service is unreachable: {e}"));
    }
    if draining {
        missing.push("front is draining".to_string());
    }
    let body = serde_json::json!({
        "ready": missing.is_empty(),
        "nats": if nats { "up" } else { "down" },
        "permissions": if permissions.is_ok() { "up" } else { "down" },
        "draining": draining,
        "missing": missing,
    });
    let status = if missing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn healthz(State(front): State<Arc<Front>>) -> Response {
    let nats = nats_up(&front).await;
    let body = serde_json::json!({
        "status": "ok",
        "nats": if nats { "up" } else { "down" },
        "workers": front.worker_count(),
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
    let (running, retired) = front.worker_stats();
    let front_replayed = front
        .bites
        .as_ref()
        .map_or(0, |b| b.replayed.load(std::sync::atomic::Ordering::Relaxed));
    let snapshot = super::metrics::Snapshot {
        sessions: front.client_count(),
        workers_by_state: front.workers_by_state(),
        running,
        retired,
        front_replayed,
    };
    (
        StatusCode::OK,
        [("content-type", super::metrics::CONTENT_TYPE)],
        front.metrics.render(&snapshot),
    )
        .into_response()
}

async fn demo_page() -> Html<&'static str> {
    Html(include_str!("../../static/index.html"))
}
