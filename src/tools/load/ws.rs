//! The WebSocket side both load clients share (the webrtc-rs one in [`super::client`] and the
//! light one in [`super::light`]): opening `/connect` with a claim, a writer task both the
//! client and its handler can send through, the reader of what the server says, and the wait
//! for the answer.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use rtc::peer_connection::transport::RTCIceCandidateInit;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::frames::Incoming;
use crate::wire::identity::Identity;

/// The client's WebSocket to `/connect`.
pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the WebSocket to `url`, with the identity's claim header if there is one.
pub(crate) async fn open_websocket(url: &str, identity: Option<&Identity>) -> anyhow::Result<Ws> {
    let mut req = url.into_client_request()?;
    if let Some(id) = identity {
        let claim = serde_json::json!({"userid": id.userid, "clientid": id.clientid}).to_string();
        req.headers_mut().insert("X-User-Claim", claim.parse()?);
    }
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        // TCP_NODELAY, as browsers do: with Nagle, the offer frame waits behind the
        // unacknowledged `ice::` frames trickled before it for the server's delayed ACK
        // (~40 ms on Linux), which would be charged to the server's answer time.
        tokio_tungstenite::connect_async_with_config(req, None, true),
    )
    .await
    .context("websocket connect timed out")??;
    Ok(ws)
}

/// Spawns the writer, which sends what the channel gives until either side closes, so that
/// the handler and the client can both write without sharing the sink.
pub(crate) fn spawn_writer(
    mut ws_sink: futures_util::stream::SplitSink<Ws, Message>,
) -> mpsc::UnboundedSender<Message> {
    let (ws_out, mut ws_out_rx) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(m) = ws_out_rx.recv().await {
            if ws_sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = ws_sink.close().await;
    });
    ws_out
}

/// Waits up to 20 s for the answer the reader hands over.
pub(crate) async fn await_answer(
    answer_rx: oneshot::Receiver<Result<String, String>>,
) -> anyhow::Result<String> {
    Ok(
        match tokio::time::timeout(Duration::from_secs(20), answer_rx).await {
            Ok(Ok(Ok(a))) => a,
            Ok(Ok(Err(e))) => bail!("no answer: {e}"),
            Ok(Err(_)) => bail!("no answer: reader ended"),
            Err(_) => bail!("no answer within 20 s"),
        },
    )
}

/// What a client keeps of the server's frames besides the answer.
#[derive(Default)]
pub(crate) struct Heard {
    /// Every event but `members` and `speakers`, in order.
    pub(crate) events: Vec<serde_json::Value>,
    /// The latest `members` and `speakers` events: they restate the whole list, follow every
    /// join and every change of who talks, and in a big room's load run would otherwise pile
    /// up N lists of N members per join in the load generator's memory.
    pub(crate) members: Option<serde_json::Value>,
    pub(crate) speakers: Option<serde_json::Value>,
    pub(crate) errors: Vec<serde_json::Value>,
    /// The socket closed.
    pub(crate) closed: bool,
}

impl Heard {
    /// Keeps an event where it belongs.
    pub(crate) fn event(&mut self, v: serde_json::Value) {
        match v["type"].as_str() {
            Some("members") => self.members = Some(v),
            Some("speakers") => self.speakers = Some(v),
            _ => self.events.push(v),
        }
    }
}

/// Spawns the reader: the answer goes to the returned oneshot, candidates to `on_ice`, events
/// and errors to the [`Heard`] part of the client's `shared` state (`heard_of` says which).
/// `legacy`: the client offered raw SDP, so a raw SDP frame is its answer.
pub(crate) fn spawn_reader<S, F, Fut>(
    mut ws_stream: futures_util::stream::SplitStream<Ws>,
    legacy: bool,
    shared: Arc<Mutex<S>>,
    heard_of: fn(&mut S) -> &mut Heard,
    mut on_ice: F,
) -> oneshot::Receiver<Result<String, String>>
where
    S: Send + 'static,
    F: FnMut(RTCIceCandidateInit) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (answer_tx, answer_rx) = oneshot::channel::<Result<String, String>>();
    tokio::spawn(async move {
        let mut answer_tx = Some(answer_tx);
        let lock = || shared.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(Ok(msg)) = ws_stream.next().await {
            let text = match msg {
                Message::Text(t) => t,
                Message::Close(_) => break,
                _ => continue,
            };
            match Incoming::read(text.as_str(), legacy) {
                Incoming::Answer(sdp) => {
                    if let Some(tx) = answer_tx.take() {
                        let _ = tx.send(Ok(sdp));
                    }
                }
                Incoming::Ice(init) => on_ice(init).await,
                Incoming::Event(v) => heard_of(&mut lock()).event(v),
                Incoming::Error(v) => {
                    // Under the lock: whoever the refusal wakes finds it in `errors`.
                    let mut s = lock();
                    if let Some(tx) = answer_tx.take() {
                        let _ = tx.send(Err(v.to_string()));
                    }
                    heard_of(&mut s).errors.push(v);
                }
                Incoming::Ignored => {}
            }
        }
        heard_of(&mut lock()).closed = true;
        if let Some(tx) = answer_tx.take() {
            let _ = tx.send(Err("socket closed before the answer".into()));
        }
    });
    answer_rx
}

#[cfg(test)]
mod tests {
    use super::Heard;
    use serde_json::json;

    #[test]
    fn the_latest_members_and_speakers_are_kept_apart_from_the_events() {
        let mut h = Heard::default();
        h.event(json!({"type": "slots", "slots": []}));
        h.event(json!({"type": "members", "members": [1]}));
        h.event(json!({"type": "speakers", "speakers": [1]}));
        h.event(json!({"type": "members", "members": [1, 2]}));
        h.event(json!({"type": "speakers", "speakers": []}));
        assert_eq!(h.events, vec![json!({"type": "slots", "slots": []})]);
        assert_eq!(
            h.members,
            Some(json!({"type": "members", "members": [1, 2]}))
        );
        assert_eq!(
            h.speakers,
            Some(json!({"type": "speakers", "speakers": []}))
        );
    }
}
