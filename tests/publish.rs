//! The publisher against real nats-servers of its own: JetStream, core NATS, outages, dead workers,
//! a full spool and an overflowing queue.

mod common;

use std::collections::HashSet;
use std::path::Path;

use beep_webrtc::publish::nats::{
    CONTENT_TYPE_OGG_OPUS, HEADER_CLIENT, HEADER_DURATION, HEADER_MSG_ID, HEADER_USER, NatsState,
};
use beep_webrtc::publish::publisher::{PublishError, Publisher, PublisherHandle, replay_dir};
use beep_webrtc::publish::spool::{Spool, SpoolError};
use beep_webrtc::wire::bite as proto;
use beep_webrtc::wire::stats::BiteStats;
use common::nats::*;
use futures_util::StreamExt;
use prost::Message as _;

const KEY: &str = "conv-1";
const T0: u64 = 1_700_000_000_000;

/// What the publisher task reports when it ends (after its last handle is dropped).
async fn ended(task: tokio::task::JoinHandle<BiteStats>) -> BiteStats {
    tokio::time::timeout(WAIT, task)
        .await
        .expect("task ends")
        .expect("join")
}

async fn wait_state(h: &PublisherHandle, want: NatsState) {
    let mut rx = h.nats_state();
    tokio::time::timeout(WAIT, rx.wait_for(|s| *s == want))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for NATS state {want:?}"))
        .expect("state channel");
}

fn spool_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".bite"))
            })
            .count()
        })
        .unwrap_or(0)
}

/// Checks that the stream holds each bite of `starts` exactly once per subject, in start order,
/// with the right ids and headers.
async fn assert_stream_holds(client: &async_nats::Client, stream: &str, starts: &[u64]) {
    let msgs = stream_messages(client, stream).await;
    assert_eq!(msgs.len(), 2 * starts.len(), "messages in the stream");
    let mut ids = HashSet::new();
    let mut bite_starts = vec![];
    let mut store_starts = vec![];
    for m in &msgs {
        let id = header(&m.headers, HEADER_MSG_ID)
            .expect("Nats-Msg-Id")
            .to_owned();
        assert!(ids.insert(id.clone()), "duplicate id {id}");
        assert_eq!(
            header(&m.headers, "Content-Type"),
            Some(CONTENT_TYPE_OGG_OPUS)
        );
        let b = match m.subject.as_str() {
            "bite" => {
                let b = proto::Bite::decode(m.payload.as_ref()).expect("Bite");
                assert_eq!(id, format!("{}:{}", b.key, b.start));
                bite_starts.push(b.start);
                b
            }
            "store" => {
                let s = proto::Store::decode(m.payload.as_ref()).expect("Store");
                assert_eq!(s.r#type, "bite");
                let b = s.bite.expect("bite in store");
                assert_eq!(id, format!("{}:{}:store", b.key, b.start));
                store_starts.push(b.start);
                b
            }
            other => panic!("unexpected subject {other}"),
        };
        let want = bite(KEY, b.start, 0);
        assert_eq!(header(&m.headers, HEADER_USER), Some(want.user.as_str()));
        assert_eq!(header(&m.headers, HEADER_CLIENT), Some("client-a"));
        assert_eq!(
            header(&m.headers, HEADER_DURATION),
            Some(want.duration_ms.to_string().as_str())
        );
        assert!(b.data.starts_with(b"OggS"));
    }
    assert_eq!(bite_starts, starts, "bites in start order, each once");
    assert_eq!(store_starts, starts, "stores in start order, each once");
}

/// (a) A stream captures both subjects: every bite is acked once on each, in order, with headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_stream_gets_each_bite_once_on_both_subjects() {
    let nats = NatsServer::start();
    let client = connect(&nats.url()).await;
    create_stream(&client, "BITES", &["bite", "store"]).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(tmp.path(), 1 << 30).expect("spool");
    let (h, task) = Publisher::start(settings(&nats.url()), spool);
    wait_state(&h, NatsState::Connected).await;

    let starts: Vec<u64> = (0..20).map(|i| T0 + i * 1000).collect();
    for &s in &starts {
        h.send(bite(KEY, s, 4000));
    }
    wait_for("20 published", || h.metrics().published == 20).await;
    let m = h.metrics();
    assert_eq!((m.spooled, m.failed, m.replayed), (0, 0, 0));
    assert_eq!(m.latency_count, 20);
    assert!(m.latency_seconds_sum > 0.0);
    assert_stream_holds(&client, "BITES", &starts).await;

    drop(h);
    let last = ended(task).await;
    assert_eq!(last.published, 20);
}

/// (b) No stream: core publish + flush, and a core subscriber gets every bite with its headers.
async fn core_nats_delivers(nats: &NatsServer) {
    let client = connect(&nats.url()).await;
    let mut bites = client.subscribe("bite").await.expect("sub bite");
    let mut stores = client.subscribe("store").await.expect("sub store");
    client.flush().await.expect("flush");
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(tmp.path(), 1 << 30).expect("spool");
    let (h, task) = Publisher::start(settings(&nats.url()), spool);
    wait_state(&h, NatsState::Connected).await;

    let starts: Vec<u64> = (0..10).map(|i| T0 + i).collect();
    for &s in &starts {
        h.send(bite(KEY, s, 1000));
    }
    for &s in &starts {
        let m = tokio::time::timeout(WAIT, bites.next())
            .await
            .expect("bite in time")
            .expect("bite");
        let b = proto::Bite::decode(m.payload.as_ref()).expect("decode");
        assert_eq!(b.start, s);
        let hd = m.headers.as_ref().expect("headers");
        assert_eq!(
            header(hd, HEADER_MSG_ID),
            Some(format!("{KEY}:{s}").as_str())
        );
        assert_eq!(header(hd, HEADER_CLIENT), Some("client-a"));
        let m = tokio::time::timeout(WAIT, stores.next())
            .await
            .expect("store in time")
            .expect("store");
        let st = proto::Store::decode(m.payload.as_ref()).expect("decode");
        assert_eq!(st.bite.map(|b| b.start), Some(s));
        let hd = m.headers.as_ref().expect("headers");
        assert_eq!(
            header(hd, HEADER_MSG_ID),
            Some(format!("{KEY}:{s}:store").as_str())
        );
    }
    wait_for("10 published", || h.metrics().published == 10).await;
    let m = h.metrics();
    assert_eq!((m.spooled, m.failed), (0, 0));
    drop(h);
    ended(task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_nats_when_no_stream_captures_the_subjects() {
    // A core subscriber is present, which would make a JetStream-publish probe hang: the capture
    // check must go through the JetStream API instead.
    core_nats_delivers(&NatsServer::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_nats_when_the_server_has_no_jetstream() {
    core_nats_delivers(&NatsServer::start_without_jetstream()).await;
}

/// (c) NATS dies mid-run: bites are spooled, then replayed in order once it is back, exactly once
/// in the stream, even when a copy of the spool is replayed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_spools_then_replays_in_order_exactly_once() {
    let mut nats = NatsServer::start();
    let client = connect(&nats.url()).await;
    create_stream(&client, "BITES", &["bite", "store"]).await;
    drop(client);
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool_dir = tmp.path().join("spool").join(KEY);
    let spool = Spool::open(&spool_dir, 1 << 30).expect("spool");
    let (h, task) = Publisher::start(settings(&nats.url()), spool);
    wait_state(&h, NatsState::Connected).await;

    let starts: Vec<u64> = (0..25).map(|i| T0 + i * 100).collect();
    for &s in &starts[..5] {
        h.send(bite(KEY, s, 8000));
    }
    wait_for("5 published", || h.metrics().published == 5).await;

    nats.kill();
    wait_state(&h, NatsState::Disconnected).await;
    for &s in &starts[5..15] {
        h.send(bite(KEY, s, 8000));
    }
    wait_for("10 spooled", || h.metrics().spooled == 10).await;
    assert_eq!(spool_files(&spool_dir), 10, "files on disk");
    let m = h.metrics();
    assert_eq!((m.spool_files, m.published, m.failed), (10, 5, 0));
    assert!(m.spool_bytes > 10 * 8000);
    // Keep a copy to force a duplicate replay later.
    let copy_dir = tmp.path().join("copy");
    std::fs::create_dir(&copy_dir).expect("mkdir");
    for e in std::fs::read_dir(&spool_dir).expect("list") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), copy_dir.join(e.file_name())).expect("copy");
    }

    nats.restart();
    wait_for("10 replayed", || h.metrics().replayed == 10).await;
    wait_for("spool empty", || h.metrics().spool_files == 0).await;
    assert_eq!(spool_files(&spool_dir), 0);
    // Live bites flow again after the backlog.
    for &s in &starts[15..] {
        h.send(bite(KEY, s, 8000));
    }
    wait_for("all delivered", || {
        let m = h.metrics();
        m.published + m.replayed == 25
    })
    .await;

    let client = connect(&nats.url()).await;
    assert_stream_holds(&client, "BITES", &starts).await;

    // Forced duplicate replay of the same ten bites: JetStream drops all twenty messages.
    let summary = replay_dir(&copy_dir, &settings(&nats.url()))
        .await
        .expect("duplicate replay");
    assert_eq!(summary.replayed, 10);
    assert_eq!(summary.duplicates, 20);
    assert!(summary.removed_dir);
    assert_stream_holds(&client, "BITES", &starts).await;

    drop(h);
    let last = ended(task).await;
    assert_eq!(last.failed, 0);
}

/// (d) A dead worker's spool (with a corrupt file and a crash leftover) is replayed by front;
/// a live holder of the spool locks front out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_worker_spool_is_replayed_by_replay_dir() {
    let nats = NatsServer::start();
    let client = connect(&nats.url()).await;
    create_stream(&client, "BITES", &["bite", "store"]).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join(KEY);
    let starts: Vec<u64> = (0..6).map(|i| T0 + i * 7).collect();
    let live = {
        let mut s = Spool::open(&dir, 1 << 30).expect("spool");
        for &st in &starts {
            s.put(&bite(KEY, st, 3000)).expect("put");
        }
        s
    };
    // While the "worker" lives, front is locked out and nothing is published.
    match replay_dir(&dir, &settings(&nats.url())).await {
        Err(PublishError::Spool(SpoolError::Locked { .. })) => {}
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(stream_messages(&client, "BITES").await.is_empty());
    // The worker dies (its flock goes with it), leaving a half-written temp file, and one of its
    // files was damaged.
    drop(live);
    std::fs::write(
        dir.join(".tmp-00000000000000000009-00000000000000000099.bite"),
        b"half",
    )
    .expect("temp");
    let victim = std::fs::read_dir(&dir)
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains(&format!("{:020}", starts[2])))
        .expect("victim");
    let mut bytes = std::fs::read(&victim).expect("read");
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&victim, bytes).expect("damage");

    let summary = replay_dir(&dir, &settings(&nats.url()))
        .await
        .expect("replay");
    assert_eq!(summary.replayed, 5);
    assert_eq!(summary.moved_aside, 1);
    assert!(!summary.removed_dir, "corrupt/ is kept for the operator");
    assert_eq!(spool_files(&dir), 0);
    assert_eq!(spool_files(&dir.join("corrupt")), 1);
    let mut expected = starts.clone();
    expected.remove(2);
    assert_stream_holds(&client, "BITES", &expected).await;
}

/// (e) The spool cap: bites that fit neither NATS nor the spool are counted as failed (no panic),
/// and everything works again once NATS is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_counts_failed_and_recovers() {
    let mut nats = NatsServer::start();
    let client = connect(&nats.url()).await;
    create_stream(&client, "BITES", &["bite", "store"]).await;
    drop(client);
    let tmp = tempfile::tempdir().expect("tempdir");
    // Room for three 10 KB bites (each file is the audio plus ~60 bytes).
    let spool = Spool::open(tmp.path(), 3 * 10_100).expect("spool");
    let (h, task) = Publisher::start(settings(&nats.url()), spool);
    wait_state(&h, NatsState::Connected).await;
    nats.kill();
    wait_state(&h, NatsState::Disconnected).await;

    let starts: Vec<u64> = (0..8).map(|i| T0 + i * 10).collect();
    for &s in &starts[..6] {
        h.send(bite(KEY, s, 10_000));
    }
    wait_for("3 spooled, 3 failed", || {
        let m = h.metrics();
        m.spooled == 3 && m.failed == 3
    })
    .await;
    assert_eq!(spool_files(tmp.path()), 3);
    assert!(!task.is_finished(), "the task survives a full spool");

    nats.restart();
    wait_for("3 replayed", || h.metrics().replayed == 3).await;
    for &s in &starts[6..] {
        h.send(bite(KEY, s, 10_000));
    }
    wait_for("2 published", || h.metrics().published == 2).await;
    let m = h.metrics();
    assert_eq!((m.failed, m.spool_files), (3, 0));
    let client = connect(&nats.url()).await;
    let delivered: Vec<u64> = starts[..3].iter().chain(&starts[6..]).copied().collect();
    assert_stream_holds(&client, "BITES", &delivered).await;
    drop(h);
    ended(task).await;
}

/// A burst larger than the queue overflows to the spool; nothing is lost and order holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_overflow_goes_to_the_spool_without_loss_or_reordering() {
    let nats = NatsServer::start();
    let client = connect(&nats.url()).await;
    create_stream(&client, "BITES", &["bite", "store"]).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(tmp.path(), 1 << 30).expect("spool");
    let mut s = settings(&nats.url());
    s.queue_capacity = 2;
    let (h, task) = Publisher::start(s, spool);
    wait_state(&h, NatsState::Connected).await;
    let starts: Vec<u64> = (0..60).map(|i| T0 + i).collect();
    for &st in &starts {
        h.send(bite(KEY, st, 2000));
    }
    wait_for("all delivered", || {
        let m = h.metrics();
        m.published + m.replayed == 60
    })
    .await;
    let m = h.metrics();
    assert!(m.overflowed > 0, "the burst overflowed: {m:?}");
    assert_eq!(m.failed, 0);
    assert_stream_holds(&client, "BITES", &starts).await;
    drop(h);
    ended(task).await;
}

/// A worker that starts while NATS is down serves (spools) at once and publishes once NATS appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_nats_is_down() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    nats.kill();
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(tmp.path(), 1 << 30).expect("spool");
    let (h, task) = Publisher::start(settings(&url), spool);
    h.send(bite(KEY, T0, 100));
    wait_for("spooled", || h.metrics().spooled == 1).await;
    assert_eq!(*h.nats_state().borrow(), NatsState::Connecting);
    nats.restart();
    wait_for("replayed", || h.metrics().replayed == 1).await;
    // No stream here: delivered through core NATS.
    drop(h);
    let last = ended(task).await;
    assert_eq!((last.replayed, last.spool_files), (1, 0));
}

/// A bite the stream refuses for its size is kept in rejected/ and counted as failed, and does not
/// block the bites behind it, live or replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bite_is_set_aside_without_blocking_the_rest() {
    let mut nats = NatsServer::start();
    let client = connect(&nats.url()).await;
    let js = async_nats::jetstream::new(client.clone());
    tokio::time::timeout(
        WAIT,
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "BITES".into(),
            subjects: vec!["bite".into(), "store".into()],
            max_message_size: 6000,
            ..Default::default()
        }),
    )
    .await
    .expect("create in time")
    .expect("create");
    drop(client);
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(tmp.path(), 1 << 30).expect("spool");
    let (h, task) = Publisher::start(settings(&nats.url()), spool);
    wait_state(&h, NatsState::Connected).await;

    h.send(bite(KEY, T0, 1000));
    h.send(bite(KEY, T0 + 1, 10_000));
    h.send(bite(KEY, T0 + 2, 1000));
    wait_for("2 published, 1 failed", || {
        let m = h.metrics();
        m.published == 2 && m.failed == 1
    })
    .await;
    assert_eq!(spool_files(&tmp.path().join("rejected")), 1);

    nats.kill();
    wait_state(&h, NatsState::Disconnected).await;
    h.send(bite(KEY, T0 + 3, 10_000));
    h.send(bite(KEY, T0 + 4, 1000));
    wait_for("2 spooled", || h.metrics().spooled == 2).await;
    nats.restart();
    wait_for("replayed and set aside", || {
        let m = h.metrics();
        m.replayed == 1 && m.failed == 2 && m.spool_files == 0
    })
    .await;
    assert_eq!(spool_files(&tmp.path().join("rejected")), 2);
    assert_eq!(h.metrics().moved_aside, 2);
    let client = connect(&nats.url()).await;
    assert_stream_holds(&client, "BITES", &[T0, T0 + 2, T0 + 4]).await;
    drop(h);
    ended(task).await;
}

/// Settings NATS can never use (a malformed URL) do not lose bites: they are all spooled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_nats_url_spools_everything() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(tmp.path(), 1 << 30).expect("spool");
    let (h, task) = Publisher::start(settings("nats://user@:::bad url"), spool);
    for i in 0..3 {
        h.send(bite(KEY, T0 + i, 100));
    }
    wait_for("3 spooled", || h.metrics().spooled == 3).await;
    drop(h);
    let last = ended(task).await;
    assert_eq!((last.spooled, last.failed, last.spool_files), (3, 0, 3));
    assert_eq!(spool_files(tmp.path()), 3);
}

/// Dropping the last handle drains: queued bites are published (or spooled) before the task ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_queue() {
    let nats = NatsServer::start();
    let client = connect(&nats.url()).await;
    create_stream(&client, "BITES", &["bite", "store"]).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(tmp.path(), 1 << 30).expect("spool");
    let mut s = settings(&nats.url());
    s.queue_capacity = 8;
    let (h, task) = Publisher::start(s, spool);
    wait_state(&h, NatsState::Connected).await;
    let starts: Vec<u64> = (0..30).map(|i| T0 + i).collect();
    for &st in &starts {
        h.send(bite(KEY, st, 1000));
    }
    drop(h);
    let last = ended(task).await;
    assert_eq!(last.published + last.replayed, 30, "{last:?}");
    assert_eq!(last.spool_files, 0);
    assert_stream_holds(&client, "BITES", &starts).await;
}

/// Throughput, measured and printed, never asserted (not run by default):
/// `cargo test --test publish -- --ignored --nocapture --test-threads 1 bench_` (add
/// `--release` for the release profile; NATS round trips and fsync dominate either way).
mod bench {
    use std::time::{Duration, Instant};

    use super::common::nats::*;
    use super::ended;
    use beep_webrtc::publish::nats::NatsState;
    use beep_webrtc::publish::publisher::{Publisher, replay_dir};
    use beep_webrtc::publish::spool::Spool;

    const N: u64 = 2000;
    const SIZE: usize = 16 * 1024;
    const T0: u64 = 1_700_000_000_000;

    fn rate(n: u64, secs: f64) -> String {
        format!("{n} bites in {secs:.3} s = {:.0} bites/s", n as f64 / secs)
    }

    /// One publisher, JetStream acks on both subjects, 2000 bites of 16 KiB.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark: run with --ignored --nocapture"]
    async fn bench_jetstream_publish_rate() {
        let nats = NatsServer::start();
        let client = connect(&nats.url()).await;
        create_stream(&client, "BITES", &["bite", "store"]).await;
        let tmp = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(tmp.path(), 1 << 32).expect("spool");
        let mut s = settings(&nats.url());
        // Hold the whole burst in memory so this measures publishing, not the spool.
        s.queue_capacity = N as usize;
        let (h, task) = Publisher::start(s, spool);
        let mut rx = h.nats_state();
        tokio::time::timeout(WAIT, rx.wait_for(|s| *s == NatsState::Connected))
            .await
            .expect("connected")
            .expect("state");
        // Warm the capture cache and the connection.
        h.send(bite("bench", T0 - 1, SIZE));
        wait_for("warm-up", || h.metrics().published == 1).await;

        let t = Instant::now();
        for i in 0..N {
            h.send(bite("bench", T0 + i, SIZE));
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        while h.metrics().published < N + 1 {
            assert!(Instant::now() < deadline, "bench timed out");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let secs = t.elapsed().as_secs_f64();
        let m = h.metrics();
        println!(
            "JetStream publish (acks on bite+store), {SIZE} B: {}; mean publish latency {:.2} ms; spooled {}",
            rate(N, secs),
            m.latency_seconds_sum / m.latency_count as f64 * 1e3,
            m.spooled
        );
        drop(h);
        ended(task).await;
    }

    /// Spool writes (fsync per bite) and replay of the spool into JetStream through `replay_dir`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark: run with --ignored --nocapture"]
    async fn bench_spool_and_replay_rate() {
        let nats = NatsServer::start();
        let client = connect(&nats.url()).await;
        create_stream(&client, "BITES", &["bite", "store"]).await;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("bench");
        let t = Instant::now();
        {
            let mut spool = Spool::open(&dir, 1 << 32).expect("spool");
            for i in 0..N {
                spool.put(&bite("bench", T0 + i, SIZE)).expect("put");
            }
        }
        println!(
            "spool put (fsync file + dir), {SIZE} B: {}",
            rate(N, t.elapsed().as_secs_f64())
        );

        let t = Instant::now();
        let summary = replay_dir(&dir, &settings(&nats.url()))
            .await
            .expect("replay");
        assert_eq!(summary.replayed, N);
        println!(
            "spool replay into JetStream (acks on bite+store), {SIZE} B: {}",
            rate(N, t.elapsed().as_secs_f64())
        );
    }
}
