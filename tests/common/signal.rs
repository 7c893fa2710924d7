//! A bare signalling socket: `/connect` with a claim, text frames in and out. For tests that
//! must see frames one by one (reconnect events, errors) without a peer connection.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{Front, claim};

/// An offer front accepts (one audio m-line with Opus); no peer connection stands behind it.
pub const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=fingerprint:sha-256 AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89\r\n\
a=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n";

/// The code and message of an `error::` frame; `None` for another frame, or an error body
/// that is not `{"code":"...","message":"..."}`.
pub fn error_of(frame: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(frame.strip_prefix("error::")?).ok()?;
    Some((
        v["code"].as_str()?.to_string(),
        v["message"].as_str()?.to_string(),
    ))
}

pub struct Signal(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
);

impl Signal {
    /// Opens `/connect{query}` as `user`/`client`; panics if it cannot (10 s).
    pub async fn open(front: &Front, query: &str, user: &str, client: &str) -> Signal {
        let mut req = front.ws(query).into_client_request().expect("request");
        req.headers_mut()
            .insert("X-User-Claim", claim(user, client).parse().expect("header"));
        let (s, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(req),
        )
        .await
        .expect("websocket within 10 s")
        .expect("websocket");
        Signal(s)
    }

    pub async fn send(&mut self, text: &str) {
        let _ = self.0.send(Message::text(text.to_string())).await;
    }

    /// The next text frame within `within`; `None` on timeout or when the socket ends.
    pub async fn next(&mut self, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.0.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return Some(t.to_string()),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    /// Reads frames until one starts with `prefix` (returned), or `within` passes.
    pub async fn wait_for(&mut self, prefix: &str, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(tokio::time::Instant::now()) {
            let frame = self.next(left).await?;
            if frame.starts_with(prefix) {
                return Some(frame);
            }
        }
        None
    }
}
