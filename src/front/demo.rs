//! The demo page's bite list (development mode only): front listens to the bites its workers
//! publish, keeps the latest ones of each conversation in memory, tells the conversation's
//! signalling sockets about each new one, and serves its audio.
//!
//! Why front does this: the demo page should show that bites work without a storage service
//! or the `bites` tool running beside it. Front already has a NATS connection
//! ([`BiteReplays::nats`](super::bites::BiteReplays::nats)), so it subscribes to the bite
//! subject like any consumer would; what it learns is exactly what was published.
//!
//! - Each `Bite` on `cfg.bites.bite_subject` with the `Beep-User`, `Beep-Client` and
//!   `Beep-Duration-Ms` headers and Ogg data is kept (the latest [`PER_CONVERSATION`] of each
//!   conversation, at most [`MAX_BYTES`] in all: the oldest go first) and announced to every
//!   client whose conversation it is:
//!   `event::{"type":"bite","userid":…,"clientid":…,"start":<unix ms>,"duration_ms":…,"url":"/bites/<conversation>/<start>.ogg"}`.
//!   Anything else on the subject (undecodable, a key that is not a conversation id, missing
//!   headers, not Ogg, a bite seen already) is skipped.
//! - `GET /bites/{conversation}/{start}.ogg` serves a kept bite as `audio/ogg` (with byte
//!   ranges, which browsers use to read an Ogg file's duration from its last page).
//!
//! None of it exists unless `DEV_MODE` is on: there is no subscription and no route. The route
//! does not check who asks beyond that: any caller that can reach front may listen to any
//! kept bite. That is a development convenience and only acceptable because development mode
//! is refused unless `LISTEN` is loopback.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_nats::HeaderMap;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap as HttpHeaders, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;

use super::state::Front;
use crate::publish::nats::{HEADER_CLIENT, HEADER_DURATION, HEADER_USER};
use crate::wire::bite as proto;
use crate::wire::ids::ConversationId;
use crate::wire::signal::Event;

/// Bites kept per conversation (the page lists as many).
pub const PER_CONVERSATION: usize = 20;
/// Bytes of audio kept over all conversations.
pub const MAX_BYTES: usize = 16 << 20;

/// The bites kept for the demo page, and the feed that fills it.
pub struct DemoBites {
    kept: Mutex<Kept>,
    per_conversation: usize,
    max_bytes: usize,
}

/// One kept bite.
struct Bite {
    /// Arrival number: the byte cap evicts the lowest first.
    seq: u64,
    start: u64,
    data: Bytes,
}

#[derive(Default)]
struct Kept {
    /// Per conversation, in arrival order.
    conversations: HashMap<String, VecDeque<Bite>>,
    /// Every kept bite by arrival number → its conversation.
    arrivals: BTreeMap<u64, String>,
    bytes: usize,
    next_seq: u64,
}

/// Why a message on the bite subject was not kept.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("payload is not a Bite")]
    Undecodable,
    #[error("key is not a conversation id")]
    BadKey,
    #[error("no {0} header")]
    MissingHeader(&'static str),
    #[error("data is not an Ogg file")]
    NotOgg,
    #[error("bite of {0} bytes is larger than the demo keeps")]
    TooLarge(usize),
    #[error("bite seen already")]
    Duplicate,
}

/// A bite that was kept: whom to tell, and what.
#[derive(Debug, PartialEq, Eq)]
pub struct Announce {
    pub conversation: ConversationId,
    /// The `bite` event.
    pub event: Event,
}

impl DemoBites {
    pub fn new(per_conversation: usize, max_bytes: usize) -> DemoBites {
        DemoBites {
            kept: Mutex::new(Kept::default()),
            per_conversation: per_conversation.max(1),
            max_bytes,
        }
    }

    /// Subscribes to the bite subject on front's NATS connection and announces each new bite
    /// to its conversation's clients. `None` unless development mode and bites are both on.
    pub fn start(front: &Arc<Front>) -> Option<Arc<DemoBites>> {
        if !front.cfg.dev_mode {
            return None;
        }
        let subject = front.cfg.bites.as_ref()?.bite_subject.clone();
        let nats = front.bites.as_ref()?.nats().clone();
        let demo = Arc::new(DemoBites::new(PER_CONVERSATION, MAX_BYTES));
        let (this, front) = (demo.clone(), front.clone());
        front.tasks.clone().spawn(async move {
            // Queued while NATS is down; the client subscribes again after each reconnect.
            let mut sub = match nats.subscribe(subject.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(subject, "demo bite list: cannot subscribe: {e}");
                    return;
                }
            };
            tracing::info!(subject, "demo bite list: listening to published bites");
            while let Some(msg) = sub.next().await {
                match this.accept(msg.headers.as_ref(), &msg.payload) {
                    Ok(a) => front.send_to_conversation(&a.conversation, &a.event),
                    Err(skip) => tracing::debug!(%msg.subject, "demo bite list: skipped: {skip}"),
                }
            }
        });
        Some(demo)
    }

    /// `GET /bites/{conversation}/{start}.ogg`, to merge into front's router.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/bites/{conversation}/{file}", get(serve))
            .with_state(self.clone())
    }

    fn lock(&self) -> MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps one message of the bite subject; what to announce, or why it was skipped.
    pub fn accept(&self, headers: Option<&HeaderMap>, payload: &[u8]) -> Result<Announce, Skip> {
        let bite = proto::Bite::decode(payload).map_err(|_| Skip::Undecodable)?;
        let conversation = ConversationId::parse(&bite.key).map_err(|_| Skip::BadKey)?;
        let header = |name: &'static str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
                .ok_or(Skip::MissingHeader(name))
        };
        let userid = header(HEADER_USER)?;
        let clientid = header(HEADER_CLIENT)?;
        let duration_ms: u64 = header(HEADER_DURATION)?
            .trim()
            .parse()
            .map_err(|_| Skip::MissingHeader(HEADER_DURATION))?;
        if !bite.data.starts_with(b"OggS") {
            return Err(Skip::NotOgg);
        }
        if bite.data.len() > self.max_bytes {
            return Err(Skip::TooLarge(bite.data.len()));
        }
        self.keep(&bite.key, bite.start, bite.data)?;
        let url = format!("/bites/{}/{}.ogg", bite.key, bite.start);
        Ok(Announce {
            conversation,
            event: Event::Bite {
                userid,
                clientid,
                start: bite.start,
                duration_ms,
                url,
            },
        })
    }

    fn keep(&self, conversation: &str, start: u64, data: Bytes) -> Result<(), Skip> {
        let mut kept = self.lock();
        let kept = &mut *kept;
        let list = kept
            .conversations
            .entry(conversation.to_owned())
            .or_default();
        // A spool replay publishes a bite again, with the same start.
        if list.iter().any(|b| b.start == start) {
            return Err(Skip::Duplicate);
        }
        let seq = kept.next_seq;
        kept.next_seq += 1;
        kept.bytes += data.len();
        list.push_back(Bite { seq, start, data });
        kept.arrivals.insert(seq, conversation.to_owned());
        if list.len() > self.per_conversation
            && let Some(old) = list.pop_front()
        {
            kept.bytes -= old.data.len();
            kept.arrivals.remove(&old.seq);
        }
        while kept.bytes > self.max_bytes {
            let Some((_, conv)) = kept.arrivals.pop_first() else {
                break;
            };
            // The globally oldest bite is the oldest of its conversation.
            if let Some(list) = kept.conversations.get_mut(&conv) {
                if let Some(old) = list.pop_front() {
                    kept.bytes -= old.data.len();
                }
                if list.is_empty() {
                    kept.conversations.remove(&conv);
                }
            }
        }
        Ok(())
    }

    /// The kept bite of `conversation` that started at `start`.
    pub fn get(&self, conversation: &str, start: u64) -> Option<Bytes> {
        self.lock()
            .conversations
            .get(conversation)?
            .iter()
            .find(|b| b.start == start)
            .map(|b| b.data.clone())
    }

    /// Bites and bytes kept now.
    pub fn size(&self) -> (usize, usize) {
        let kept = self.lock();
        (kept.arrivals.len(), kept.bytes)
    }
}

async fn serve(
    State(demo): State<Arc<DemoBites>>,
    Path((conversation, file)): Path<(String, String)>,
    headers: HttpHeaders,
) -> Response {
    let conversation = match ConversationId::parse(&conversation) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let Some(start) = file
        .strip_suffix(".ogg")
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return (
            StatusCode::NOT_FOUND,
            "no such bite: bite files are named <start>.ogg (Unix milliseconds)",
        )
            .into_response();
    };
    let Some(data) = demo.get(&conversation, start) else {
        return (
            StatusCode::NOT_FOUND,
            format!(
                "no bite {start} of conversation {conversation} is kept (the demo keeps the latest \
                 {} bites of each conversation, in memory)",
                demo.per_conversation
            ),
        )
            .into_response();
    };
    let len = data.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|r| byte_range(r, len));
    let common = [
        (header::CONTENT_TYPE, "audio/ogg".to_string()),
        (header::ACCEPT_RANGES, "bytes".to_string()),
    ];
    match range {
        Some(Range::Part(first, last)) => (
            StatusCode::PARTIAL_CONTENT,
            common,
            [(header::CONTENT_RANGE, format!("bytes {first}-{last}/{len}"))],
            data.slice(first..=last),
        )
            .into_response(),
        Some(Range::Unsatisfiable) => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            "range not satisfiable",
        )
            .into_response(),
        Some(Range::Whole) | None => (StatusCode::OK, common, data).into_response(),
    }
}

/// What a `Range` header asks of a body of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// Bytes `first..=last`.
    Part(usize, usize),
    Unsatisfiable,
    /// No single byte range we understand (several ranges, another unit, garbage): the whole
    /// body, as RFC 9110 allows.
    Whole,
}

fn byte_range(value: &str, len: usize) -> Range {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Range::Whole;
    };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Range::Whole;
    };
    let number = |s: &str| s.trim().parse::<usize>().ok();
    match (first.trim().is_empty(), number(first), number(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) if n > 0 && len > 0 => Range::Part(len.saturating_sub(n), len - 1),
        (true, _, Some(_)) => Range::Unsatisfiable,
        (false, Some(a), _) if a >= len => Range::Unsatisfiable,
        (false, Some(a), None) if last.trim().is_empty() => Range::Part(a, len - 1),
        (false, Some(a), Some(b)) if b >= a => Range::Part(a, b.min(len - 1)),
        _ => Range::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::signal::ServerFrame;

    fn headers(user: Option<&str>, client: Option<&str>, duration: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(u) = user {
            h.insert(HEADER_USER, u);
        }
        if let Some(c) = client {
            h.insert(HEADER_CLIENT, c);
        }
        if let Some(d) = duration {
            h.insert(HEADER_DURATION, d);
        }
        h
    }

    fn ok_headers() -> HeaderMap {
        headers(Some("alice"), Some("tab-1"), Some("1980"))
    }

    fn payload(key: &str, start: u64, data: &[u8]) -> Vec<u8> {
        proto::Bite {
            key: key.into(),
            start,
            data: Bytes::copy_from_slice(data),
        }
        .encode_to_vec()
    }

    fn ogg(n: usize) -> Vec<u8> {
        let mut v = b"OggS".to_vec();
        v.resize(n.max(4), 0);
        v
    }

    #[test]
    fn a_bite_is_kept_and_announced() {
        let d = DemoBites::new(20, 1 << 20);
        let a = d
            .accept(
                Some(&ok_headers()),
                &payload("room1", 1_700_000_000_123, &ogg(100)),
            )
            .unwrap();
        assert_eq!(a.conversation.as_str(), "room1");
        let frame = ServerFrame::Event(a.event.clone()).to_text();
        let json: serde_json::Value =
            serde_json::from_str(frame.strip_prefix("event::").unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "bite", "userid": "alice", "clientid": "tab-1",
                "start": 1_700_000_000_123u64, "duration_ms": 1980,
                "url": "/bites/room1/1700000000123.ogg"})
        );
        assert_eq!(d.get("room1", 1_700_000_000_123).unwrap(), ogg(100));
        assert_eq!(d.get("room1", 1), None);
        assert_eq!(d.get("room2", 1_700_000_000_123), None);
    }

    #[test]
    fn malformed_messages_are_skipped() {
        let d = DemoBites::new(20, 1 << 20);
        let h = ok_headers();
        assert_eq!(d.accept(Some(&h), b"\xff\xff\xff"), Err(Skip::Undecodable));
        assert_eq!(
            d.accept(Some(&h), &payload("../etc", 1, &ogg(10))),
            Err(Skip::BadKey)
        );
        assert_eq!(
            d.accept(Some(&h), &payload("", 1, &ogg(10))),
            Err(Skip::BadKey)
        );
        assert_eq!(
            d.accept(None, &payload("c", 1, &ogg(10))),
            Err(Skip::MissingHeader(HEADER_USER))
        );
        let no_client = headers(Some("a"), None, Some("5"));
        assert_eq!(
            d.accept(Some(&no_client), &payload("c", 1, &ogg(10))),
            Err(Skip::MissingHeader(HEADER_CLIENT))
        );
        let bad_duration = headers(Some("a"), Some("b"), Some("soon"));
        assert_eq!(
            d.accept(Some(&bad_duration), &payload("c", 1, &ogg(10))),
            Err(Skip::MissingHeader(HEADER_DURATION))
        );
        assert_eq!(
            d.accept(Some(&h), &payload("c", 1, b"RIFF....")),
            Err(Skip::NotOgg)
        );
        assert_eq!(d.accept(Some(&h), &payload("c", 1, b"")), Err(Skip::NotOgg));
        assert_eq!(
            d.accept(Some(&h), &payload("c", 1, &ogg(2 << 20))),
            Err(Skip::TooLarge(2 << 20))
        );
        // Every prefix of a valid message: skipped or kept, never a panic.
        let good = payload("c", 7, &ogg(40));
        for n in 0..good.len() {
            let _ = d.accept(Some(&h), &good[..n]);
        }
        assert_eq!(d.size().0, 0);
    }

    #[test]
    fn a_replayed_bite_is_not_announced_twice() {
        let d = DemoBites::new(20, 1 << 20);
        let h = ok_headers();
        assert!(d.accept(Some(&h), &payload("c", 5, &ogg(10))).is_ok());
        assert_eq!(
            d.accept(Some(&h), &payload("c", 5, &ogg(10))),
            Err(Skip::Duplicate)
        );
        // The same start in another conversation is another bite.
        assert!(d.accept(Some(&h), &payload("d", 5, &ogg(10))).is_ok());
        assert_eq!(d.size(), (2, 20));
    }

    #[test]
    fn each_conversation_keeps_its_latest() {
        let d = DemoBites::new(3, 1 << 20);
        let h = ok_headers();
        for start in 1..=5 {
            d.accept(Some(&h), &payload("a", start, &ogg(10))).unwrap();
        }
        d.accept(Some(&h), &payload("b", 1, &ogg(10))).unwrap();
        assert_eq!(d.get("a", 1), None);
        assert_eq!(d.get("a", 2), None);
        assert!((3..=5).all(|s| d.get("a", s).is_some()));
        assert!(d.get("b", 1).is_some());
        assert_eq!(d.size(), (4, 40));
    }

    #[test]
    fn the_byte_cap_drops_the_oldest_first() {
        let d = DemoBites::new(20, 100);
        let h = ok_headers();
        d.accept(Some(&h), &payload("a", 1, &ogg(40))).unwrap();
        d.accept(Some(&h), &payload("b", 1, &ogg(40))).unwrap();
        d.accept(Some(&h), &payload("a", 2, &ogg(40))).unwrap();
        // 120 > 100: a/1, the first to arrive, goes.
        assert_eq!(d.get("a", 1), None);
        assert!(d.get("b", 1).is_some() && d.get("a", 2).is_some());
        assert_eq!(d.size(), (2, 80));
        d.accept(Some(&h), &payload("c", 1, &ogg(100))).unwrap();
        assert_eq!(d.size(), (1, 100));
        assert!(d.get("c", 1).is_some());
        assert!(d.lock().conversations.len() == 1);
    }

    #[test]
    fn byte_ranges() {
        assert_eq!(byte_range("bytes=0-", 10), Range::Part(0, 9));
        assert_eq!(byte_range("bytes=2-5", 10), Range::Part(2, 5));
        assert_eq!(byte_range("bytes=2-50", 10), Range::Part(2, 9));
        assert_eq!(byte_range("bytes=-3", 10), Range::Part(7, 9));
        assert_eq!(byte_range("bytes=-30", 10), Range::Part(0, 9));
        assert_eq!(byte_range("bytes=10-", 10), Range::Unsatisfiable);
        assert_eq!(byte_range("bytes=-0", 10), Range::Unsatisfiable);
        assert_eq!(byte_range("bytes=0-", 0), Range::Unsatisfiable);
        assert_eq!(byte_range("bytes=5-2", 10), Range::Whole);
        assert_eq!(byte_range("bytes=0-1,4-5", 10), Range::Whole);
        assert_eq!(byte_range("items=0-1", 10), Range::Whole);
        assert_eq!(byte_range("bytes=x-", 10), Range::Whole);
        assert_eq!(byte_range("bytes=", 10), Range::Whole);
    }

    #[tokio::test]
    async fn the_route_serves_kept_bites() {
        use axum::body::to_bytes;

        let d = Arc::new(DemoBites::new(20, 1 << 20));
        let data = ogg(64);
        d.accept(Some(&ok_headers()), &payload("room1", 42, &data))
            .unwrap();
        let get = |conversation: &str, file: &str, range: Option<&str>| {
            let mut h = HttpHeaders::new();
            if let Some(range) = range {
                h.insert(header::RANGE, range.parse().unwrap());
            }
            serve(
                State(d.clone()),
                Path((conversation.to_owned(), file.to_owned())),
                h,
            )
        };
        let r = get("room1", "42.ogg", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "audio/ogg");
        assert_eq!(r.headers()["accept-ranges"], "bytes");
        assert_eq!(to_bytes(r.into_body(), 1 << 20).await.unwrap(), data);

        let r = get("room1", "42.ogg", Some("bytes=60-")).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.headers()["content-range"], "bytes 60-63/64");
        assert_eq!(to_bytes(r.into_body(), 1 << 20).await.unwrap(), data[60..]);

        let r = get("room1", "42.ogg", Some("bytes=64-")).await;
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.headers()["content-range"], "bytes */64");

        for (conversation, file) in [("room1", "43.ogg"), ("room1", "42"), ("room2", "42.ogg")] {
            let r = get(conversation, file, None).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{conversation}/{file}");
            let body = to_bytes(r.into_body(), 1 << 20).await.unwrap();
            assert!(body.starts_with(b"no "), "{file}: {body:?}");
        }
        let r = get("room/1", "42.ogg", None).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
}
