//! Front's HTTP surface (axum): `/connect` (upgraded to the signalling session in
//! [`super::session`]), `POST /join/{id}`, `/healthz`, `/metrics`, and the development page.
//! Handlers translate between HTTP and the state in [`super::state`]; nothing here panics on
//! input.
//!
//! [`serve`] is front's own connection loop (hyper's HTTP/1 under the axum router): unlike
//! `axum::serve` it has a header-read timeout, caps open connections (WebSockets included),
//! and tells the handlers the peer's address, which decides whether `X-User-Claim` is
//! believed (`TRUSTED_PROXIES`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::session::signalling;
use super::state::{Front, JoinError};
use super::tasks::Tasks;
use crate::publish::nats::NatsState;
use crate::wire::identity::{CLAIM_HEADER, ClaimError, Identity, claim_from, parse_claim};
use crate::wire::ids::ConversationId;

pub fn router(front: Arc<Front>) -> Router {
    #[cfg_attr(not(feature = "demo"), allow(unused_mut))]
    let mut r = Router::new()
        .route("/connect", get(connect))
        .route("/join/{conversationid}", post(join))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    #[cfg(feature = "demo")]
    if front.cfg.dev_mode {
        r = r
            .route("/", get(demo_page))
            .route("/client/beep-webrtc.js", get(client_module))
            .route("/client/beep-webrtc.d.ts", get(client_types));
    }
    r.with_state(front)
}

fn bad_request(reason: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, reason.to_string()).into_response()
}

fn refused(e: ClaimError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    (status, e.to_string()).into_response()
}

/// What front's connection loop tells every request about its connection: the peer's
/// address and the connection's slot under `MAX_CONNECTIONS` (a WebSocket keeps it).
pub struct Conn {
    pub peer: Option<IpAddr>,
    permit: Option<ConnPermit>,
}

/// One slot under `MAX_CONNECTIONS`, shared by the connection and the WebSocket it becomes.
#[derive(Clone)]
struct ConnPermit(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

impl<S: Send + Sync> FromRequestParts<S> for Conn {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Conn {
            peer: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
            permit: parts.extensions.get::<ConnPermit>().cloned(),
        })
    }
}

/// The caller's identity: the claim header (once, from a trusted proxy), or in development
/// mode `?userid=&clientid=` (browsers cannot set headers on a WebSocket; development mode
/// requires a loopback `LISTEN`).
fn identity(
    front: &Front,
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Identity, ClaimError> {
    let values = headers.get_all(CLAIM_HEADER);
    if values.iter().next().is_none()
        && front.cfg.dev_mode
        && let (Some(u), Some(c)) = (query.get("userid"), query.get("clientid"))
    {
        let claim = serde_json::json!({"userid": u, "clientid": c}).to_string();
        return parse_claim(Some(claim.as_bytes()));
    }
    claim_from(
        values.iter().map(|v| v.as_bytes()),
        peer,
        &front.cfg.trusted_proxies,
    )
}

/// Cross-site WebSocket hijacking (and cross-site joins) when the proxy authenticates by
/// cookie: with `ALLOWED_ORIGINS` set, a request whose `Origin` is not listed is refused.
/// A request without `Origin` is not from a browser's cross-site page (browsers always send
/// it on WebSocket handshakes and cross-site POSTs), so apps and servers need none.
/// `Err` is the reason of the 403.
fn check_origin(front: &Front, headers: &HeaderMap) -> Result<(), String> {
    let Some(allowed) = &front.cfg.allowed_origins else {
        return Ok(());
    };
    let mut values = headers.get_all(axum::http::header::ORIGIN).iter();
    let Some(origin) = values.next() else {
        return Ok(());
    };
    if values.next().is_some() {
        return Err("more than one Origin header".into());
    }
    let o = String::from_utf8_lossy(origin.as_bytes())
        .trim()
        .trim_end_matches('/')
        .to_ascii_lowercase();
    if allowed.contains(&o) {
        Ok(())
    } else {
        let shown: String = o.chars().take(100).collect();
        Err(format!(
            "Origin {shown} is not allowed here (ALLOWED_ORIGINS)"
        ))
    }
}

async fn join(
    State(front): State<Arc<Front>>,
    Path(conversation): Path<String>,
    conn: Conn,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = check_origin(&front, &headers) {
        return (StatusCode::FORBIDDEN, r).into_response();
    }
    let who = match identity(&front, conn.peer, &headers, &HashMap::new()) {
        Ok(w) => w,
        Err(r) => return refused(r),
    };
    let conversation = match ConversationId::parse(&conversation) {
        Ok(c) => c,
        Err(r) => return bad_request(r),
    };
    match front.authorize_and_join(&who, &conversation).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e @ JoinError::Forbidden(_)) => {
            (StatusCode::UNAUTHORIZED, e.to_string()).into_response()
        }
        // The reason in words: the permissions service, a crash loop, drain, MAX_WORKERS.
        Err(JoinError::Unavailable(m)) => (StatusCode::SERVICE_UNAVAILABLE, m).into_response(),
        // NEW_CONVERSATIONS_PER_MINUTE.
        Err(JoinError::RateLimited {
            message,
            retry_after,
        }) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", (retry_after.as_secs() + 1).to_string())],
            message,
        )
            .into_response(),
    }
}

async fn connect(
    State(front): State<Arc<Front>>,
    Query(query): Query<HashMap<String, String>>,
    conn: Conn,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(r) = check_origin(&front, &headers) {
        return (StatusCode::FORBIDDEN, r).into_response();
    }
    let who = match identity(&front, conn.peer, &headers, &query) {
        Ok(w) => w,
        Err(r) => return refused(r),
    };
    let conversation = match query.get("conversation").map(|c| ConversationId::parse(c)) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(r)) => return bad_request(r),
    };
    // tungstenite's default 128 KiB read buffer is allocated and touched per socket: ~140 KiB
    // of front's RSS per connected client, for frames of a few KiB. Larger frames still
    // arrive whole (read in several chunks).
    let ws = ws.read_buffer_size(8 * 1024);
    // Frames above our limit still reach us (up to 4x) so the client gets a `too-large`
    // error frame instead of a bare protocol error.
    let limit = front.cfg.max_frame_bytes;
    ws.max_message_size(limit.saturating_mul(4))
        .max_frame_size(limit.saturating_mul(4))
        .on_upgrade(move |socket| async move {
            // The socket holds its connection's slot under MAX_CONNECTIONS until it ends.
            let _slot = conn.permit;
            signalling(front, who, conversation, socket).await
        })
}

/// Serves `app` on `listener` until `stop` completes: HTTP/1.1 (hyper) with upgrades, a
/// `header_timeout` for each request's headers, and at most `max_connections` open
/// connections (an upgraded WebSocket keeps its slot). A connection beyond the cap is
/// closed at once: the kernel's backlog would only make it wait for nothing. Accept errors
/// (EMFILE, ...) are logged and retried after a pause, never fatal.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    max_connections: usize,
    tasks: &Tasks,
    stop: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let http = Arc::new(http);
    let mut warned_full: Option<Instant> = None;
    let mut warned_accept: Option<Instant> = None;
    let quiet = |last: &mut Option<Instant>| {
        let now = Instant::now();
        let speak = last.is_none_or(|t| now.duration_since(t) > Duration::from_secs(10));
        if speak {
            *last = Some(now);
        }
        speak
    };
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut stop => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if quiet(&mut warned_accept) {
                    tracing::warn!("accepting an HTTP connection failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if quiet(&mut warned_full) {
                tracing::warn!(
                    %peer,
                    "MAX_CONNECTIONS ({max_connections}) reached: closing new connections"
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let permit = ConnPermit(Arc::new(permit));
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let service = hyper::service::service_fn(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(permit.clone());
                hyper::service::Service::call(&service, req)
            },
        );
        let http = http.clone();
        tasks.spawn(async move {
            if let Err(e) = http
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await
            {
                tracing::debug!(%peer, "HTTP connection: {e}");
            }
        });
    }
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

#[cfg(feature = "demo")]
async fn demo_page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../../static/index.html"))
}

/// The browser client library (`static/client/`), which the demo page imports.
#[cfg(feature = "demo")]
async fn client_module() -> Response {
    (
        [("content-type", "text/javascript; charset=utf-8")],
        include_str!("../../static/client/beep-webrtc.js"),
    )
        .into_response()
}

/// Its TypeScript declarations.
#[cfg(feature = "demo")]
async fn client_types() -> Response {
    (
        [("content-type", "text/plain; charset=utf-8")],
        include_str!("../../static/client/beep-webrtc.d.ts"),
    )
        .into_response()
}
