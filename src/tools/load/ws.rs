//! The WebSocket side both load clients share (the webrtc-rs one in [`super::client`] and the
//! light one in [`super::light`]): opening `/connect` with a claim, a writer task both the
//! client and its handler can send through, and the wait for the answer.

use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::SinkExt;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

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
