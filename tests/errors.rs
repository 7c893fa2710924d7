//! Bad input gets a clear error and loses nothing: each case checks the HTTP status or the
//! `error::` frame (code and a reason in words), and that front still serves afterwards.

mod common;

use std::time::Duration;

use common::signal::error_of;
use common::{Front, Permissions, claim};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const VALID_OFFER_HEAD: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

/// Opens `/connect{query}` with an optional raw claim header value.
async fn ws(
    front: &Front,
    query: &str,
    claim_value: Option<&str>,
) -> Result<WsConn, (u16, String)> {
    let mut req = front.ws(query).into_client_request().expect("request");
    if let Some(c) = claim_value {
        req.headers_mut()
            .insert("X-User-Claim", c.parse().expect("header"));
    }
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    {
        Ok(Ok((s, _))) => Ok(WsConn(s)),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(r))) => {
            let body = r
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).to_string())
                .unwrap_or_default();
            Err((r.status().as_u16(), body))
        }
        other => panic!("unexpected websocket outcome: {other:?}"),
    }
}

struct WsConn(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
);

impl WsConn {
    async fn send(&mut self, text: String) {
        let _ = self.0.send(Message::text(text)).await;
    }

    /// Reads until an `error::` frame; returns (code, message, close code).
    async fn error(&mut self) -> (String, String, Option<u16>) {
        let mut err = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.0.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(_) => panic!("socket ended without a close frame; error so far {err:?}"),
                Err(_) => panic!("no error frame within 15 s; so far {err:?}"),
            };
            match msg {
                Message::Text(t) if t.starts_with("error::") => {
                    err = Some(error_of(&t).expect("error payload is the error JSON"));
                }
                Message::Close(frame) => {
                    let (code, message) = err.expect("an error:: frame before the close");
                    return (code, message, frame.map(|f| u16::from(f.code)));
                }
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_claims_and_ids_are_400_with_a_reason() {
    let perms = Permissions::start().await;
    let front = Front::start(&perms.url(), &[]).await;
    let post = |c: Option<&'static str>, conv: &'static str| {
        let mut r = front.http.post(front.url(&format!("/join/{conv}")));
        if let Some(c) = c {
            r = r.header("X-User-Claim", c);
        }
        r.send()
    };
    for (c, conv, reason) in [
        (None, "room", "missing"),
        (Some("{not json"), "room", "JSON"),
        (Some(r#"{"userid":"u"}"#), "room", "clientid"),
        (Some(r#"{"userid":"","clientid":"c"}"#), "room", "userid"),
        (
            Some(r#"{"userid":"u","clientid":"c"}"#),
            "bad.id",
            "conversation id",
        ),
    ] {
        let r = post(c, conv).await.expect("POST /join");
        assert_eq!(r.status(), 400, "{c:?} {conv}");
        let body = r.text().await.unwrap_or_default();
        assert!(
            body.contains(reason),
            "reason {body:?} should mention {reason}"
        );
        front.assert_serving().await;
    }
    // The misspelled header of the seed README is not an identity.
    let r = front
        .http
        .post(front.url("/join/room"))
        .header("X-User-Claims", claim("u", "c"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // /connect refuses before upgrading.
    assert_eq!(ws(&front, "", None).await.err().map(|e| e.0), Some(400));
    let (status, body) = ws(&front, "?conversation=no/pe", Some(&claim("u", "c")))
        .await
        .err()
        .expect("refused");
    assert_eq!(status, 400);
    assert!(body.contains("conversation id"), "{body}");
    // Query identity is a development-mode convenience only.
    assert_eq!(
        ws(&front, "?userid=u&clientid=c", None)
            .await
            .err()
            .map(|e| e.0),
        Some(400)
    );
    front.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_answers_map_to_401_and_503() {
    let perms = Permissions::start().await;
    let front = Front::start(&perms.url(), &[]).await;
    for (conv, status) in [
        ("room", 200),
        ("deny-1", 401),
        ("missing-1", 401),
        ("broken-1", 503),
        ("slow-1", 503),
    ] {
        let t0 = std::time::Instant::now();
        let (s, body) = front.join("u", "c", conv).await;
        assert_eq!(s, status, "{conv}: {body}");
        if status != 200 {
            assert!(!body.is_empty(), "a reason in words for {conv}");
        }
        if conv.starts_with("slow") {
            assert!(body.contains("in time"), "{body}");
            assert!(
                t0.elapsed() < Duration::from_secs(4),
                "the permission timeout applies"
            );
        }
        front.assert_serving().await;
    }
    // The same through /connect?conversation=: error frames.
    let mut s = ws(&front, "?conversation=deny-2", Some(&claim("u", "c2")))
        .await
        .expect("upgraded");
    let (code, message, close) = s.error().await;
    assert_eq!(
        (code.as_str(), close),
        ("forbidden", Some(4003)),
        "{message}"
    );
    front.assert_serving().await;

    // A permissions service that is down: fail closed.
    let closed_port = common::free_tcp_port();
    let front2 = Front::start(&format!("http://127.0.0.1:{closed_port}"), &[]).await;
    let (s, body) = front2.join("u", "c", "room").await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("unreachable"), "{body}");
    front2.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_frames_and_front_keeps_serving() {
    let perms = Permissions::start().await;
    let front = Front::start(
        &perms.url(),
        &[
            ("MAX_SESSIONS_PER_USER", "2"),
            ("JOIN_TIMEOUT_MS", "500"),
            ("OFFERS_PER_MINUTE", "2"),
            ("MAX_FRAME_BYTES", "4096"),
        ],
    )
    .await;
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "?conversation=r1",
            "hello there".into(),
            "bad-frame",
            "<type>::<payload>",
        ),
        ("?conversation=r1", "bogus::x".into(), "bad-frame", "bogus"),
        ("?conversation=r1", "ice::{nope".into(), "bad-frame", "JSON"),
        (
            "?conversation=r1",
            "offer::not an sdp".into(),
            "bad-sdp",
            "v=0",
        ),
        (
            "?conversation=r1",
            format!(
                "offer::{VALID_OFFER_HEAD}m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"
            ),
            "bad-sdp",
            "audio",
        ),
        // Parses as audio but has no ICE or DTLS parameters: the worker's webrtc stack refuses it.
        (
            "?conversation=r1",
            format!(
                "offer::{VALID_OFFER_HEAD}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendrecv\r\na=rtpmap:111 opus/48000/2\r\n"
            ),
            "bad-sdp",
            "offer",
        ),
        (
            "?conversation=r1",
            format!("offer::{}", "x".repeat(5000)),
            "too-large",
            "4096",
        ),
        // No join at all: the offer waits 0.5 s for one.
        (
            "",
            format!(
                "offer::{VALID_OFFER_HEAD}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
            ),
            "join-timeout",
            "join",
        ),
    ];
    for (i, (query, frame, code, says)) in cases.into_iter().enumerate() {
        let mut s = ws(&front, query, Some(&claim("user", &format!("c{i}"))))
            .await
            .expect("upgraded");
        s.send(frame).await;
        let (got, message, close) = s.error().await;
        assert_eq!(got, code, "case {i}: {message}");
        assert!(
            message.contains(says),
            "case {i}: {message:?} should say {says:?}"
        );
        assert!(close.is_some_and(|c| c >= 1000), "case {i}: a close code");
        front.assert_serving().await;
    }
    // Binary frames are not part of the protocol.
    let mut s = ws(&front, "", Some(&claim("user", "bin")))
        .await
        .expect("upgraded");
    let _ = s.0.send(Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(s.error().await.0, "bad-frame");

    // Rate limit: the third offer within a minute.
    let mut s = ws(&front, "", Some(&claim("rl", "c")))
        .await
        .expect("upgraded");
    let offer = format!(
        "offer::{VALID_OFFER_HEAD}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
    );
    for _ in 0..3 {
        s.send(offer.clone()).await;
    }
    let (code, message, _) = s.error().await;
    assert_eq!(code, "rate-limited", "{message}");
    front.assert_serving().await;

    // Too many sessions: two open sockets for one user, the third is refused.
    let _a = ws(&front, "", Some(&claim("many", "a")))
        .await
        .expect("first");
    let _b = ws(&front, "", Some(&claim("many", "b")))
        .await
        .expect("second");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = ws(&front, "", Some(&claim("many", "c")))
        .await
        .expect("upgraded");
    let (code, message, close) = c.error().await;
    assert_eq!(
        (code.as_str(), close),
        ("too-many-sessions", Some(4029)),
        "{message}"
    );
    assert!(message.contains("limit"), "{message}");
    front.assert_serving().await;
}
