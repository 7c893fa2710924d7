//! (f) The `bites` binary receives published bites and writes them as files, over core NATS and
//! through a durable JetStream consumer.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use beep_webrtc::publish::nats::NatsState;
use beep_webrtc::publish::publisher::{Publisher, PublisherHandle};
use beep_webrtc::publish::spool::Spool;
use common::nats::*;

const KEY: &str = "conv-tool";
const T0: u64 = 1_700_000_000_000;

/// The tool's process, killed by pid if the test ends early.
struct Tool {
    child: Option<Child>,
    stderr_lines: mpsc::Receiver<String>,
}

impl Tool {
    fn spawn(args: &[&str]) -> Tool {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bites"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bites");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[bites] {line}");
                let _ = tx.send(line);
            }
        });
        Tool {
            child: Some(child),
            stderr_lines: rx,
        }
    }

    fn wait_stderr(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(e) => panic!("bites never said {needle:?}: {e}"),
            }
        }
    }

    /// Waits for exit (bounded) and returns status and stdout.
    fn finish(mut self) -> Output {
        let mut child = self.child.take().expect("child");
        let mut stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = stdout.read_to_end(&mut s);
            s
        });
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("bites did not exit in time");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            status,
            stdout: reader.join().expect("reader"),
            stderr: Vec::new(),
        }
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn publisher(url: &str, dir: &Path) -> PublisherHandle {
    let spool = Spool::open(dir, 1 << 30).expect("spool");
    let (h, _task) = Publisher::start(settings(url), spool);
    let mut rx = h.nats_state();
    tokio::time::timeout(WAIT, rx.wait_for(|s| *s == NatsState::Connected))
        .await
        .expect("connected in time")
        .expect("state");
    h
}

fn check_output(out: &Output, dir: &Path, starts: &[u64]) {
    assert!(out.status.success(), "exit status {:?}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), starts.len(), "{stdout}");
    for (line, &start) in lines.iter().zip(starts) {
        let b = bite(KEY, start, 0);
        assert!(
            line.starts_with(&format!(
                "{KEY} user={} client=client-a start={start} (",
                b.user
            )),
            "{line}"
        );
        assert!(
            line.contains(&format!(" duration={}ms bytes=5000 ", b.duration_ms)),
            "{line}"
        );
        assert!(line.contains("2023-11-14T22:13:"), "{line}");
        let file = dir.join(KEY).join(format!("{start}.ogg"));
        assert_eq!(
            std::fs::read(&file).expect("bite file"),
            bite(KEY, start, 5000).data
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bites_tool_over_core_nats() {
    let nats = NatsServer::start();
    let out = tempfile::tempdir().expect("out");
    let out_dir = out.path().to_str().expect("utf8 path");
    let tool = Tool::spawn(&[
        "--nats",
        &nats.url(),
        "--out",
        out_dir,
        "--count",
        "5",
        "--timeout",
        "20",
    ]);
    tool.wait_stderr("listening");
    let spool = tempfile::tempdir().expect("spool");
    let h = publisher(&nats.url(), spool.path()).await;
    let starts: Vec<u64> = (0..5).map(|i| T0 + i * 250).collect();
    for &s in &starts {
        h.send(bite(KEY, s, 5000));
    }
    let output = tokio::task::spawn_blocking(move || tool.finish())
        .await
        .expect("join");
    check_output(&output, out.path(), &starts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bites_tool_through_a_durable_jetstream_consumer() {
    let nats = NatsServer::start();
    let client = connect(&nats.url()).await;
    create_stream(&client, "BITES", &["bite", "store"]).await;
    let spool = tempfile::tempdir().expect("spool");
    let h = publisher(&nats.url(), spool.path()).await;
    // Stored before the tool runs: the consumer still gets them.
    let starts: Vec<u64> = (0..5).map(|i| T0 + i * 250).collect();
    for &s in &starts {
        h.send(bite(KEY, s, 5000));
    }
    wait_for("published", || h.metrics().published == 5).await;

    let out = tempfile::tempdir().expect("out");
    let out_dir = out.path().to_str().expect("utf8 path");
    let url = nats.url();
    let args = [
        "--nats",
        &url,
        "--out",
        out_dir,
        "--stream",
        "BITES",
        "--durable",
        "ops",
        "--count",
        "5",
        "--timeout",
        "20",
    ];
    let output = tokio::task::spawn_blocking({
        let tool = Tool::spawn(&args);
        move || tool.finish()
    })
    .await
    .expect("join");
    check_output(&output, out.path(), &starts);

    // Everything was acked: the same durable has nothing more, so --count 1 times out (exit 1).
    let args = [
        "--nats",
        &url,
        "--out",
        out_dir,
        "--stream",
        "BITES",
        "--durable",
        "ops",
        "--count",
        "1",
        "--timeout",
        "2",
    ];
    let output = tokio::task::spawn_blocking({
        let tool = Tool::spawn(&args);
        move || tool.finish()
    })
    .await
    .expect("join");
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());

    // The store subject through another durable: same bites, from the Store envelope.
    let store_out = tempfile::tempdir().expect("out");
    let store_dir = store_out.path().to_str().expect("utf8 path");
    let args = [
        "--nats",
        &url,
        "--out",
        store_dir,
        "--subject",
        "store",
        "--stream",
        "BITES",
        "--durable",
        "store-ops",
        "--count",
        "5",
        "--timeout",
        "20",
    ];
    let output = tokio::task::spawn_blocking({
        let tool = Tool::spawn(&args);
        move || tool.finish()
    })
    .await
    .expect("join");
    check_output(&output, store_out.path(), &starts);
}
