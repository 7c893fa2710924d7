//! How a bite goes to NATS: the settings, the connection options, and [`Nats::publish`],
//! which sends both messages of a bite (`Bite` on the bite subject, `Store{type:"bite"}` on the
//! store subject, with their headers) and waits for JetStream's acks where a stream captures
//! the subject, or for a flush where none does. Shared by the live publisher and the replay of
//! a spool.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::context::{
    GetStreamByNameErrorKind, PublishErrorKind as JsPublishErrorKind, RequestError,
    RequestErrorKind,
};
use async_nats::{HeaderMap, HeaderValue};
use bytes::Bytes;
use prost::Message as _;
use tokio::sync::watch;

use super::counters::Metrics;
use super::spool::BiteRecord;
use crate::wire::bite as proto;

/// Header carrying the publishing user's id.
pub const HEADER_USER: &str = "Beep-User";
/// Header carrying the publishing client's id.
pub const HEADER_CLIENT: &str = "Beep-Client";
/// Header carrying the bite's duration in milliseconds.
pub const HEADER_DURATION: &str = "Beep-Duration-Ms";
/// Header for JetStream de-duplication.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// Content type of a bite's audio.
pub const CONTENT_TYPE_OGG_OPUS: &str = "audio/ogg; codecs=opus";

/// Everything the publisher needs to know; [`Default`] has the product's defaults.
#[derive(Clone, Debug)]
pub struct PublisherSettings {
    /// NATS URL (`NATS`).
    pub nats_url: String,
    /// Subject of `Bite` messages.
    pub bite_subject: String,
    /// Subject of `Store` messages.
    pub store_subject: String,
    /// Connection name shown by the server (e.g. `worker <conversation>`).
    pub client_name: Option<String>,
    /// Bites held in memory before further ones overflow straight to the spool.
    pub queue_capacity: usize,
    /// Longest wait for a JetStream ack (and for a JetStream API answer).
    pub ack_timeout: Duration,
    /// Longest wait for a core NATS flush.
    pub flush_timeout: Duration,
    /// How long the answer "does a stream capture this subject" is trusted.
    pub capture_ttl: Duration,
    /// First and longest wait before retrying the spool after NATS failed to take a bite.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Longest wait between reconnection attempts, so a restarted NATS is noticed quickly.
    pub max_reconnect_delay: Duration,
    /// Connect timeout of each attempt, and of [`replay_dir`]'s one attempt.
    pub connect_timeout: Duration,
    /// On shutdown, how long the task keeps replaying the spool while NATS is up. What is left stays
    /// in the spool for the next worker or for front.
    pub drain_timeout: Duration,
}

impl Default for PublisherSettings {
    fn default() -> Self {
        PublisherSettings {
            nats_url: "nats://localhost:4222".into(),
            bite_subject: "bite".into(),
            store_subject: "store".into(),
            client_name: None,
            queue_capacity: 64,
            ack_timeout: Duration::from_secs(5),
            flush_timeout: Duration::from_secs(5),
            capture_ttl: Duration::from_secs(30),
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
            max_reconnect_delay: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// The NATS connection as the publisher last saw it (for `/healthz`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatsState {
    /// Not connected yet since start.
    Connecting,
    Connected,
    Disconnected,
}

/// Why NATS did not take a bite.
#[derive(Debug)]
pub(super) enum Failure {
    /// Disconnected, timed out, refused for now: keep it and retry later.
    Transient(String),
    /// NATS will never accept it (too large): set it aside.
    Permanent(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transient(s) | Failure::Permanent(s) => f.write_str(s),
        }
    }
}

/// `Nats-Msg-Id` of a bite's `Bite` message.
pub fn bite_msg_id(key: &str, start: u64) -> String {
    format!("{key}:{start}")
}

/// `Nats-Msg-Id` of a bite's `Store` message; differs from the `Bite`'s so that one stream capturing
/// both subjects keeps both.
pub fn store_msg_id(key: &str, start: u64) -> String {
    format!("{key}:{start}:store")
}

pub(super) fn connect_options(
    settings: &PublisherSettings,
    state: Option<watch::Sender<NatsState>>,
) -> async_nats::ConnectOptions {
    let max_delay = settings.max_reconnect_delay;
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(settings.connect_timeout)
        // The default backoff grows to 4 s; a shorter cap replays the spool sooner after an outage.
        .reconnect_delay_callback(move |attempts| {
            if attempts <= 1 {
                Duration::ZERO
            } else {
                let exp = u32::try_from(attempts).unwrap_or(u32::MAX).min(20);
                Duration::from_millis(2u64.saturating_pow(exp)).min(max_delay)
            }
        });
    if let Some(name) = &settings.client_name {
        options = options.name(name);
    }
    if let Some(state) = state {
        options = options.event_callback(move |event| {
            let next = match event {
                async_nats::Event::Connected => Some(NatsState::Connected),
                async_nats::Event::Disconnected | async_nats::Event::Closed => {
                    Some(NatsState::Disconnected)
                }
                _ => None,
            };
            if let Some(next) = next {
                state.send_replace(next);
            }
            async {}
        });
    }
    options
}

/// One NATS connection's way of publishing a bite (shared by the task and [`replay_dir`]).
pub(super) struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
    settings: Arc<PublisherSettings>,
    metrics: Arc<Metrics>,
    /// subject → (a stream captures it, when we asked)
    captured: HashMap<String, (bool, Instant)>,
}

impl Nats {
    pub(super) fn new(
        client: async_nats::Client,
        settings: Arc<PublisherSettings>,
        metrics: Arc<Metrics>,
    ) -> Nats {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(settings.ack_timeout);
        Nats {
            client,
            js,
            settings,
            metrics,
            captured: HashMap::new(),
        }
    }

    pub(super) fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Publishes both messages of a bite; `Ok` once both are acked (JetStream) or flushed (core).
    pub(super) async fn publish(&mut self, r: &BiteRecord) -> Result<(), Failure> {
        if !self.connected() {
            return Err(Failure::Transient("not connected to NATS".into()));
        }
        let started = Instant::now();
        let bite = proto::Bite {
            key: r.key.clone(),
            start: r.start,
            data: r.data.clone(),
        };
        let bite_payload = Bytes::from(bite.encode_to_vec());
        let store_payload = Bytes::from(
            proto::Store {
                r#type: proto::STORE_TYPE_BITE.into(),
                bite: Some(bite),
            }
            .encode_to_vec(),
        );
        let max_payload = self.client.server_info().max_payload;
        if max_payload > 0 && store_payload.len() + 512 > max_payload {
            return Err(Failure::Permanent(format!(
                "bite of {} bytes exceeds the server's max payload of {max_payload}",
                store_payload.len()
            )));
        }
        let settings = self.settings.clone();
        let messages = [
            (
                settings.bite_subject.as_str(),
                bite_msg_id(&r.key, r.start),
                bite_payload,
            ),
            (
                settings.store_subject.as_str(),
                store_msg_id(&r.key, r.start),
                store_payload,
            ),
        ];
        // Both messages go out before waiting for anything: one round trip per bite, not two.
        let mut acks = Vec::with_capacity(2);
        let mut flush = false;
        for (subject, id, payload) in messages {
            let headers = headers(r, &id);
            if self.captured(subject).await? {
                let ack = self
                    .js
                    .publish_with_headers(subject.to_owned(), headers, payload)
                    .await
                    .map_err(|e| js_failure(subject, &e))?;
                acks.push((subject, ack));
            } else {
                self.client
                    .publish_with_headers(subject.to_owned(), headers, payload)
                    .await
                    .map_err(|e| match e.kind() {
                        async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                            Failure::Permanent(format!("publish on {subject}: {e}"))
                        }
                        _ => Failure::Transient(format!("publish on {subject}: {e}")),
                    })?;
                flush = true;
            }
        }
        if flush {
            match tokio::time::timeout(self.settings.flush_timeout, self.client.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Failure::Transient(format!("flush: {e}"))),
                Err(_) => return Err(Failure::Transient("flush timed out".into())),
            }
        }
        // Await both acks even after a failure, so neither future is left to a background acker.
        let mut failure = None;
        for (subject, ack) in acks {
            match ack.await {
                Ok(ack) => {
                    if ack.duplicate {
                        self.metrics.duplicates.fetch_add(1, Relaxed);
                    }
                }
                Err(e) => {
                    if e.kind() == JsPublishErrorKind::StreamNotFound {
                        // The stream went away: ask again (and fall back to core) on the retry.
                        self.captured.remove(subject);
                    }
                    failure.get_or_insert(js_failure(subject, &e));
                }
            }
        }
        if let Some(f) = failure {
            return Err(f);
        }
        self.metrics.observe_latency(started.elapsed());
        Ok(())
    }

    /// Does a JetStream stream capture `subject`? Cached for `capture_ttl`.
    async fn captured(&mut self, subject: &str) -> Result<bool, Failure> {
        if let Some(&(captured, at)) = self.captured.get(subject)
            && at.elapsed() < self.settings.capture_ttl
        {
            return Ok(captured);
        }
        let lookup = tokio::time::timeout(
            self.settings.ack_timeout,
            self.js.stream_by_subject(subject),
        )
        .await;
        let captured = match lookup {
            Err(_) => {
                return Err(Failure::Transient(format!(
                    "JetStream stream lookup for {subject} timed out"
                )));
            }
            Ok(Ok(_stream)) => true,
            Ok(Err(e)) if matches!(e.kind(), GetStreamByNameErrorKind::NotFound) => false,
            // No JetStream on this server or account: plain NATS.
            Ok(Err(e)) if is_no_responders(&e) => false,
            Ok(Err(e)) => {
                return Err(Failure::Transient(format!(
                    "JetStream stream lookup for {subject}: {e}"
                )));
            }
        };
        let previous = self
            .captured
            .insert(subject.to_owned(), (captured, Instant::now()));
        if previous.map(|(c, _)| c) != Some(captured) {
            if captured {
                tracing::info!(
                    subject,
                    "a JetStream stream captures the subject: publishing with acks"
                );
            } else {
                tracing::info!(
                    subject,
                    "no JetStream stream captures the subject: publishing with core NATS and flush"
                );
            }
        }
        Ok(captured)
    }
}

fn js_failure(subject: &str, e: &jetstream::context::PublishError) -> Failure {
    let message = format!("JetStream publish on {subject}: {e}");
    if e.kind() == JsPublishErrorKind::MaxPayloadExceeded || stream_refuses_for_good(e) {
        Failure::Permanent(message)
    } else {
        Failure::Transient(message)
    }
}

/// Whether the stream refused the message for what it is (larger than the stream's maximum
/// message or header size), so that retrying can never succeed. Everything else the stream says
/// (full, offline, ...) may pass and is retried.
fn stream_refuses_for_good(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(api) = err.downcast_ref::<jetstream::Error>() {
            let code = api.error_code();
            return code == jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
                || code == jetstream::ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM;
        }
        cause = err.source();
    }
    false
}

/// Whether an error's cause chain holds a JetStream API request that nobody answered.
fn is_no_responders(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(req) = err.downcast_ref::<RequestError>()
            && req.kind() == RequestErrorKind::NoResponders
        {
            return true;
        }
        cause = err.source();
    }
    false
}

fn headers(r: &BiteRecord, id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HEADER_MSG_ID, header_value(id));
    h.insert(HEADER_USER, header_value(&r.user));
    h.insert(HEADER_CLIENT, header_value(&r.client));
    h.insert(HEADER_DURATION, r.duration_ms.to_string().as_str());
    h.insert("Content-Type", CONTENT_TYPE_OGG_OPUS);
    h
}

/// Ids come from clients' claims: a CR or LF would break the header block, so it becomes a space.
fn header_value(s: &str) -> HeaderValue {
    match s.parse::<HeaderValue>() {
        Ok(v) => v,
        Err(_) => HeaderValue::from(s.replace(['\r', '\n'], " ")),
    }
}
