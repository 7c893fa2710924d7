//! The `bites` operator tool: taps the bites a host publishes and writes each as a playable file.
//!
//! `bites --nats URL --out DIR [--subject bite] [--stream NAME [--durable NAME]] [--count N] [--timeout SECS]`
//!
//! Without `--stream` it subscribes with core NATS (sees only what is published while it runs);
//! with `--stream` it reads through a durable JetStream pull consumer (created if missing, default
//! name `bites`), so it also gets what was stored while it was away, and acks each bite after its
//! file is written. Each bite becomes `DIR/<key>/<start>.ogg` (written to a temp name, then renamed,
//! so a file that exists is complete; a redelivered bite rewrites the same file) and one line on
//! stdout; status goes to stderr so stdout stays one line per bite. `Store` messages are accepted
//! too (`--subject store`), since the two messages cannot be mistaken for each other.
//!
//! The key comes from the network and becomes a directory name, so it must be a valid conversation
//! id (`^[A-Za-z0-9_-]{1,128}$`); anything else is skipped with a warning (and, on JetStream,
//! terminated so it is not redelivered forever).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures_util::StreamExt;
use prost::Message as _;
use tokio::time::Instant;

use crate::publish::nats::{HEADER_CLIENT, HEADER_DURATION, HEADER_USER};
use crate::wire::bite as proto;
use crate::wire::ids::ConversationId;

/// Command line of `bites`.
#[derive(clap::Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "bites",
    about = "Receive published bites and write each as DIR/<conversation>/<start>.ogg"
)]
pub struct Args {
    /// NATS server URL.
    #[arg(long, default_value = "nats://localhost:4222")]
    pub nats: String,
    /// Directory to write the bites into.
    #[arg(long)]
    pub out: PathBuf,
    /// Subject to read (`bite`, or `store` for the storage envelope).
    #[arg(long, default_value = "bite")]
    pub subject: String,
    /// Read through a durable JetStream pull consumer on this stream instead of core NATS.
    #[arg(long)]
    pub stream: Option<String>,
    /// Name of the durable consumer (with --stream).
    #[arg(long, requires = "stream")]
    pub durable: Option<String>,
    /// Exit after this many bites.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit after this many seconds (an error if --count was not reached by then).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

/// Default name of the durable consumer.
pub const DEFAULT_DURABLE: &str = "bites";

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("NATS: {0}")]
    Nats(String),
    #[error("JetStream stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot print: {0}")]
    Output(#[source] io::Error),
    #[error("timed out after {received} of {wanted} bites")]
    Timeout { received: u64, wanted: u64 },
}

/// Why a received message was not written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Skip {
    #[error("payload is neither a Bite nor a Store with a bite")]
    Undecodable,
    #[error("key {0:?} is not a valid conversation id")]
    BadKey(String),
}

/// One bite as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub key: String,
    pub user: Option<String>,
    pub client: Option<String>,
    pub start: u64,
    pub duration_ms: Option<u64>,
    pub bytes: usize,
    pub path: PathBuf,
}

impl Received {
    /// The line printed for the bite.
    pub fn line(&self) -> String {
        let opt = |s: &Option<String>| s.as_deref().map(printable).unwrap_or_else(|| "-".into());
        let duration = self
            .duration_ms
            .map(|d| format!("{d}ms"))
            .unwrap_or_else(|| "?".into());
        format!(
            "{key} user={user} client={client} start={start} ({iso}) duration={duration} bytes={bytes} file={path}",
            key = self.key,
            user = opt(&self.user),
            client = opt(&self.client),
            start = self.start,
            iso = iso_utc(self.start),
            bytes = self.bytes,
            path = self.path.display(),
        )
    }
}

/// Runs the tool until `--count` bites were written or `--timeout` passed; returns how many.
pub async fn run(args: &Args, out: &mut (dyn Write + Send)) -> Result<u64, ToolError> {
    let client = connect(args).await?;
    let until = Until {
        deadline: args
            .timeout
            .map(|secs| Instant::now() + Duration::from_secs(secs)),
        wanted: args.count,
    };
    let received = match &args.stream {
        None => read_core(&client, args, &until, out).await?,
        Some(stream_name) => read_stream(&client, args, stream_name, &until, out).await?,
    };
    // Acks are fire-and-forget publishes: get them to the server before exiting.
    if tokio::time::timeout(Duration::from_secs(5), client.flush())
        .await
        .is_err()
    {
        eprintln!("warning: final flush timed out");
    }
    match until.wanted {
        Some(n) if received < n => Err(ToolError::Timeout {
            received,
            wanted: n,
        }),
        _ => Ok(received),
    }
}

/// When reading stops: at the deadline, or once `wanted` bites were written.
struct Until {
    deadline: Option<Instant>,
    wanted: Option<u64>,
}

impl Until {
    /// Whether `received` bites are all that was wanted.
    fn done(&self, received: u64) -> bool {
        self.wanted.is_some_and(|n| received >= n)
    }
}

/// Connects to the NATS server of `--nats`.
async fn connect(args: &Args) -> Result<async_nats::Client, ToolError> {
    async_nats::ConnectOptions::new()
        .name("bites")
        .connection_timeout(Duration::from_secs(5))
        .connect(args.nats.as_str())
        .await
        .map_err(|source| ToolError::Connect {
            url: args.nats.clone(),
            source,
        })
}

/// Reads the bites published on core NATS while it runs; returns how many were written.
async fn read_core(
    client: &async_nats::Client,
    args: &Args,
    until: &Until,
    out: &mut (dyn Write + Send),
) -> Result<u64, ToolError> {
    let mut received = 0u64;
    let mut sub = client
        .subscribe(args.subject.clone())
        .await
        .map_err(|e| ToolError::Nats(format!("subscribe to {}: {e}", args.subject)))?;
    // Make sure the server has the subscription before saying we listen.
    client
        .flush()
        .await
        .map_err(|e| ToolError::Nats(format!("flush: {e}")))?;
    eprintln!("listening on core NATS subject {}", args.subject);
    while !until.done(received) {
        let Some(next) = next_before(sub.next(), until.deadline).await else {
            break;
        };
        let Some(msg) = next else {
            return Err(ToolError::Nats("subscription closed".into()));
        };
        match handle_message(&args.out, msg.headers.as_ref(), &msg.payload) {
            Ok(Some(r)) => {
                print_line(out, &r)?;
                received += 1;
            }
            Ok(None) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(received)
}

/// Gets (or creates) the durable pull consumer on `stream_name` and starts its messages;
/// returns them and the consumer's name.
async fn open_consumer(
    client: &async_nats::Client,
    args: &Args,
    stream_name: &str,
) -> Result<(pull::Stream, String), ToolError> {
    let js = jetstream::new(client.clone());
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| stream_err(stream_name, e))?;
    let durable = args
        .durable
        .clone()
        .unwrap_or_else(|| DEFAULT_DURABLE.into());
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            &durable,
            pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: args.subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| stream_err(stream_name, e))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| stream_err(stream_name, e))?;
    Ok((messages, durable))
}

/// Reads the bites through the durable JetStream consumer on `stream_name`, acking each
/// after its file is written; returns how many were written.
async fn read_stream(
    client: &async_nats::Client,
    args: &Args,
    stream_name: &str,
    until: &Until,
    out: &mut (dyn Write + Send),
) -> Result<u64, ToolError> {
    let mut received = 0u64;
    let (mut messages, durable) = open_consumer(client, args, stream_name).await?;
    eprintln!(
        "consuming {} from stream {stream_name} as durable consumer {durable}",
        args.subject
    );
    while !until.done(received) {
        let Some(next) = next_before(messages.next(), until.deadline).await else {
            break;
        };
        let msg = match next {
            None => return Err(ToolError::Nats("consumer closed".into())),
            Some(Err(e)) => {
                // Missed heartbeats during a reconnect and the like: the stream carries on.
                eprintln!("warning: JetStream consumer: {e}");
                continue;
            }
            Some(Ok(msg)) => msg,
        };
        let ack = match handle_message(&args.out, msg.headers.as_ref(), &msg.payload) {
            Ok(Some(r)) => {
                print_line(out, &r)?;
                received += 1;
                AckKind::Ack
            }
            // Unusable: never redeliver it.
            Ok(None) => AckKind::Term,
            // Not written: leave it for a redelivery.
            Err(e) => return Err(e),
        };
        if let Err(e) = msg.ack_with(ack).await {
            eprintln!("warning: ack failed (the bite will be redelivered): {e}");
        }
    }
    Ok(received)
}

/// `next`, unless the deadline passes first (`None`).
async fn next_before<F: std::future::Future>(
    next: F,
    deadline: Option<Instant>,
) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, next).await.ok(),
        None => Some(next.await),
    }
}

fn stream_err(stream: &str, e: impl std::fmt::Display) -> ToolError {
    ToolError::Stream {
        stream: stream.to_owned(),
        reason: e.to_string(),
    }
}

fn print_line(out: &mut (dyn Write + Send), r: &Received) -> Result<(), ToolError> {
    writeln!(out, "{}", r.line())
        .and_then(|()| out.flush())
        .map_err(ToolError::Output)
}

/// Decodes and writes one message. `Ok(None)`: skipped with a warning on stderr (not writable
/// as a bite); `Err`: the file could not be written.
pub fn handle_message(
    out_dir: &Path,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<Option<Received>, ToolError> {
    let bite = match decode_bite(payload) {
        Ok(b) => b,
        Err(skip) => {
            eprintln!("warning: skipping a message: {skip}");
            return Ok(None);
        }
    };
    if ConversationId::parse(&bite.key).is_err() {
        eprintln!("warning: skipping a message: {}", Skip::BadKey(bite.key));
        return Ok(None);
    }
    let header = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let path = write_bite(out_dir, &bite)?;
    Ok(Some(Received {
        user: header(HEADER_USER),
        client: header(HEADER_CLIENT),
        duration_ms: header(HEADER_DURATION).and_then(|d| d.trim().parse().ok()),
        start: bite.start,
        bytes: bite.data.len(),
        key: bite.key,
        path,
    }))
}

/// A `Bite`, or the bite inside a `Store`.
pub fn decode_bite(payload: &[u8]) -> Result<proto::Bite, Skip> {
    if let Ok(bite) = proto::Bite::decode(payload) {
        return Ok(bite);
    }
    match proto::Store::decode(payload) {
        Ok(proto::Store {
            bite: Some(bite), ..
        }) => Ok(bite),
        _ => Err(Skip::Undecodable),
    }
}

/// Writes `out_dir/<key>/<start>.ogg` through a temp file and a rename.
pub fn write_bite(out_dir: &Path, bite: &proto::Bite) -> Result<PathBuf, ToolError> {
    let dir = out_dir.join(&bite.key);
    fs::create_dir_all(&dir).map_err(|source| ToolError::Write {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(format!("{}.ogg", bite.start));
    let temp = dir.join(format!(".{}.ogg.tmp", bite.start));
    fs::write(&temp, &bite.data)
        .and_then(|()| fs::rename(&temp, &path))
        .map_err(|source| {
            let _ = fs::remove_file(&temp);
            ToolError::Write {
                path: path.clone(),
                source,
            }
        })?;
    Ok(path)
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn iso_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let day_secs = secs % 86_400;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm): a few lines
/// instead of a date crate for one timestamp per printed line.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Header values are other people's input: keep control characters off the operator's terminal.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn iso_times() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso_utc(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso_utc(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn writes_bite_or_store_and_skips_garbage() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let bite = proto::Bite {
            key: "c1".into(),
            start: 1_700_000_000_123,
            data: bytes::Bytes::from_static(b"OggS..."),
        };
        let mut h = HeaderMap::new();
        h.insert(HEADER_USER, "alice");
        h.insert(HEADER_DURATION, "640");
        let r = handle_message(tmp.path(), Some(&h), &bite.encode_to_vec())
            .expect("write")
            .expect("a bite");
        assert_eq!(r.path, tmp.path().join("c1").join("1700000000123.ogg"));
        assert_eq!(fs::read(&r.path).expect("read"), b"OggS...");
        assert_eq!(
            r.line(),
            format!(
                "c1 user=alice client=- start=1700000000123 (2023-11-14T22:13:20.123Z) duration=640ms bytes=7 file={}",
                r.path.display()
            )
        );
        let store = proto::Store {
            r#type: "bite".into(),
            bite: Some(bite),
        };
        assert!(
            handle_message(tmp.path(), None, &store.encode_to_vec())
                .expect("write")
                .is_some()
        );
        assert_eq!(
            handle_message(tmp.path(), None, b"\xff\xff").ok(),
            Some(None)
        );
        let evil = proto::Bite {
            key: "../x".into(),
            start: 1,
            data: bytes::Bytes::new(),
        };
        assert_eq!(
            handle_message(tmp.path(), None, &evil.encode_to_vec()).ok(),
            Some(None)
        );
    }

    #[test]
    fn durable_needs_stream() {
        assert!(Args::try_parse_from(["bites", "--out", "d", "--durable", "x"]).is_err());
        let a = Args::try_parse_from(["bites", "--out", "d", "--stream", "S", "--count", "3"])
            .expect("parse");
        assert_eq!(a.subject, "bite");
        assert_eq!(a.count, Some(3));
        assert_eq!(a.durable, None);
    }
}
