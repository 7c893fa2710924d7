//! A private `nats-server` per test: a free loopback port and its own JetStream store, killed
//! by pid when dropped, so a test can kill NATS and start it again on the same port and store
//! without touching any server it did not start. Plus what the bite tests need around it: test
//! publisher settings, fake bites, streams and their messages.

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use beep_webrtc::publish::nats::PublisherSettings;
use beep_webrtc::publish::spool::BiteRecord;
use bytes::Bytes;

/// Every wait on NATS in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: tempfile::TempDir,
    jetstream: bool,
}

impl NatsServer {
    /// A server with JetStream on a free loopback port.
    pub fn start() -> NatsServer {
        Self::start_with(true)
    }

    /// A server with no JetStream at all (the JetStream API gets "no responders").
    pub fn start_without_jetstream() -> NatsServer {
        Self::start_with(false)
    }

    fn start_with(jetstream: bool) -> NatsServer {
        // The port may be taken between probe and bind; try a few.
        let mut last = String::new();
        for _ in 0..5 {
            let mut server = NatsServer {
                child: None,
                port: super::free_tcp_port(),
                store: tempfile::tempdir().expect("store tempdir"),
                jetstream,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("could not start nats-server: {last}");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL by pid, then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same JetStream store.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + WAIT;
        while let Err(e) = self.spawn() {
            assert!(Instant::now() < deadline, "nats-server restart failed: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = binary();
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.store.path().join("server.log"))
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&bin);
        if self.jetstream {
            cmd.arg("-js");
        }
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.store.path().join("js"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawn {bin:?} (is nats-server installed?): {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("nats-server exited: {status}"));
            }
            if TcpStream::connect_timeout(
                &([127, 0, 0, 1], self.port).into(),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("nats-server did not listen in time".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return p.into();
    }
    let sbin = PathBuf::from("/usr/sbin/nats-server");
    if sbin.exists() {
        sbin
    } else {
        "nats-server".into()
    }
}

/// Publisher settings tuned for tests: short timeouts and backoffs.
pub fn settings(url: &str) -> PublisherSettings {
    PublisherSettings {
        nats_url: url.to_owned(),
        client_name: Some("publish-test".into()),
        ack_timeout: Duration::from_secs(2),
        flush_timeout: Duration::from_secs(2),
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_millis(500),
        max_reconnect_delay: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        ..PublisherSettings::default()
    }
}

/// A fake bite: `len` bytes that start like an Ogg page.
pub fn bite(key: &str, start: u64, len: usize) -> BiteRecord {
    let mut data = b"OggS".to_vec();
    data.resize(len.max(4), (start % 251) as u8);
    BiteRecord {
        key: key.to_owned(),
        user: format!("user-{}", start % 3),
        client: "client-a".into(),
        start,
        duration_ms: 500 + start % 100,
        data: Bytes::from(data),
    }
}

/// Polls `f` every 20 ms until it holds; panics with `what` after [`WAIT`].
pub async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn connect(url: &str) -> async_nats::Client {
    tokio::time::timeout(WAIT, async_nats::connect(url))
        .await
        .expect("connect to NATS in time")
        .expect("connect to NATS")
}

/// Creates a file-backed stream capturing `subjects` (default 2 min duplicate window).
pub async fn create_stream(client: &async_nats::Client, name: &str, subjects: &[&str]) {
    let js = jetstream::new(client.clone());
    tokio::time::timeout(
        WAIT,
        js.create_stream(jetstream::stream::Config {
            name: name.to_owned(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
    )
    .await
    .expect("create stream in time")
    .expect("create stream");
}

/// How many messages a stream holds now.
pub async fn stream_len(client: &async_nats::Client, name: &str) -> anyhow::Result<u64> {
    let js = jetstream::new(client.clone());
    let mut stream = tokio::time::timeout(WAIT, js.get_stream(name)).await??;
    let info = tokio::time::timeout(WAIT, stream.info()).await??;
    Ok(info.state.messages)
}

/// Every message in a stream, in sequence order.
pub async fn stream_messages(
    client: &async_nats::Client,
    name: &str,
) -> Vec<jetstream::message::StreamMessage> {
    let js = jetstream::new(client.clone());
    let mut stream = tokio::time::timeout(WAIT, js.get_stream(name))
        .await
        .expect("get stream in time")
        .expect("get stream");
    let state = stream.info().await.expect("stream info").state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        let m = tokio::time::timeout(WAIT, stream.get_raw_message(seq))
            .await
            .expect("get message in time")
            .expect("get message");
        out.push(m);
    }
    out
}

pub fn header<'a>(h: &'a async_nats::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.as_str())
}
