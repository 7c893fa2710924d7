//! Bites end to end, with real processes: a `nats-server -js` of the test's own (a stream
//! captures `bite` and `store`), the real front spawning real workers, and webrtc-rs clients
//! speaking real Opus (a `sox` tone encoded by `opusenc`, a different frequency per speaker)
//! with the RFC 6464 audio level set. What arrives in NATS is judged by the reference tools:
//! `opusinfo` must accept every file and report the length that was spoken, and `opusdec` must
//! give back the speaker's tone.
//!
//! Faults: NATS killed between and during utterances and restarted on the same port and store,
//! a worker SIGKILLed while a bite waits in its spool, a spool cap reached, and invalid Opus from
//! a client. Every wait has a generous deadline (a loaded 2-core machine), nothing asserts speed,
//! and each test is bounded by [`LIMIT`]; the servers are killed by their guards.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use beep_webrtc::media::opus;
use beep_webrtc::publish::nats::{
    CONTENT_TYPE_OGG_OPUS, HEADER_CLIENT, HEADER_DURATION, HEADER_MSG_ID, HEADER_USER,
};
use beep_webrtc::tools::load::client::{Client, ClientOptions};
use beep_webrtc::wire::bite as proto;
use bytes::Bytes;
use common::nats::{NatsServer, connect, create_stream, header, stream_len, stream_messages};
use common::opus::{
    OpusInfo, Tone, dominant_hz, encode_tone, first_channel, ogg_packets, opusdec, opusinfo,
    require_tools, tone_share, workdir,
};
use common::{Front, Permissions, eventually};
use futures_util::StreamExt;
use prost::Message as _;

/// Each test, start to end.
const LIMIT: Duration = Duration::from_secs(240);
/// Connecting a client; waiting for something that should happen soon.
const T: Duration = Duration::from_secs(30);
/// Waiting for bites to reach the stream (a replay by front runs every 10 s).
const ARRIVE: Duration = Duration::from_secs(90);
/// The stream capturing both subjects.
const STREAM: &str = "BITES";
/// Silence that closes a bite. Longer than the default 600 ms so that a stall of the loaded
/// test machine inside an utterance does not split it; the pauses between turns are longer.
const SILENCE_MS: &str = "1000";
const PAUSE: Duration = Duration::from_millis(2500);
/// Packets per second of 20 ms Opus.
const PPS: usize = 50;
/// The audio level every utterance is sent with (−dBov): clearly speech.
const LOUD: u8 = 20;
const ALICE_HZ: u32 = 440;
const BOB_HZ: u32 = 660;

async fn limit(test: impl Future<Output = ()>) {
    tokio::time::timeout(LIMIT, test)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {LIMIT:?}"));
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// NATS with the stream, the permissions stand-in, and front (bites on, this NATS).
struct Rig {
    nats: NatsServer,
    _perms: Permissions,
    front: Front,
}

impl Rig {
    async fn start(extra: &[(&str, &str)]) -> Rig {
        let nats = NatsServer::start();
        let client = connect(&nats.url()).await;
        create_stream(&client, STREAM, &["bite", "store"]).await;
        drop(client);
        let perms = Permissions::start().await;
        let url = nats.url();
        let mut env = vec![("NATS", url.as_str()), ("BITE_SILENCE_MS", SILENCE_MS)];
        env.extend_from_slice(extra);
        let front = Front::start(&perms.url(), &env).await;
        Rig {
            nats,
            _perms: perms,
            front,
        }
    }

    fn spool_dir(&self, conversation: &str) -> PathBuf {
        self.front
            .runtime_dir
            .path()
            .join("state")
            .join("spool")
            .join(conversation)
    }

    /// A counter or gauge from front's `/metrics`.
    async fn metric(&self, name: &str) -> u64 {
        let text = self
            .front
            .http
            .get(self.front.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
            .trim()
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("{name} is not a number"))
            .round() as u64
    }

    /// Polls a metric until `ok` holds; returns its last value. (Workers report their
    /// counters every 2 s, so a metric lags what happened.)
    async fn wait_metric(&self, name: &str, within: Duration, ok: impl Fn(u64) -> bool) -> u64 {
        self.wait_metrics([name], within, |[v]| ok(v)).await[0]
    }

    /// Polls several metrics until `ok` holds for their values together; returns them.
    async fn wait_metrics<const N: usize>(
        &self,
        names: [&str; N],
        within: Duration,
        ok: impl Fn([u64; N]) -> bool,
    ) -> [u64; N] {
        let deadline = Instant::now() + within;
        loop {
            let mut values = [0; N];
            for (v, name) in values.iter_mut().zip(names) {
                *v = self.metric(name).await;
            }
            if ok(values) {
                return values;
            }
            assert!(
                Instant::now() < deadline,
                "{names:?} are {values:?} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn healthz(&self) -> serde_json::Value {
        self.front
            .http
            .get(self.front.url("/healthz"))
            .send()
            .await
            .expect("GET /healthz")
            .json()
            .await
            .expect("healthz JSON")
    }

    /// Waits until the stream holds `n` bites (two messages each), then a little longer to
    /// catch any extra one, and returns them.
    async fn bites(&self, n: usize, within: Duration) -> Vec<Published> {
        let deadline = Instant::now() + within;
        let mut client: Option<async_nats::Client> = None;
        loop {
            // A fresh connection after a failure: NATS may just have been restarted.
            if client.is_none() {
                client = tokio::time::timeout(T, async_nats::connect(self.nats.url()))
                    .await
                    .ok()
                    .and_then(Result::ok);
            }
            if let Some(c) = &client {
                match stream_len(c, STREAM).await {
                    Ok(len) if len >= 2 * n as u64 => break,
                    Ok(_) => {}
                    Err(_) => client = None,
                }
            }
            assert!(
                Instant::now() < deadline,
                "the stream did not get {n} bites within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let client = client.expect("connected");
        published(&stream_messages(&client, STREAM).await, n)
    }
}

/// Bites durably in a spool: `*.bite` files, not the `.tmp-*` files of a write under way.
fn spool_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.ends_with(".bite") && !name.starts_with('.')
                })
                .count()
        })
        .unwrap_or(0)
}

async fn member(front: &Front, conversation: &str, user: &str) -> Client {
    let c = Client::connect(ClientOptions::new(
        front.ws(&format!("?conversation={conversation}")),
        user,
        &format!("{user}-phone"),
    ))
    .await
    .unwrap_or_else(|e| panic!("{user} could not connect: {e:#}"));
    c.wait_connected(T)
        .await
        .unwrap_or_else(|e| panic!("{user}: {e:#}"));
    c
}

/// The worker of `conversation` (its command line names it).
fn worker_of(front: &Front, conversation: &str) -> Option<u32> {
    front.workers().into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                String::from_utf8_lossy(&c)
                    .split('\0')
                    .any(|a| a == conversation)
            })
            .unwrap_or(false)
    })
}

/// The two voices: `seconds` of 440 Hz (alice) and 660 Hz (bob), as opusenc packets.
fn voices(name: &str, seconds: f64) -> (Vec<Bytes>, Vec<Bytes>) {
    require_tools();
    let dir = workdir(name);
    let alice = encode_tone(&dir, &Tone::new(ALICE_HZ, seconds));
    let bob = encode_tone(&dir, &Tone::new(BOB_HZ, seconds));
    assert!(
        alice
            .iter()
            .chain(&bob)
            .all(|p| opus::packet_samples(p) == Some(960)),
        "opusenc made 20 ms packets"
    );
    (alice, bob)
}

/// One bite as the stream holds it: its `Bite` message and its `Store` message.
#[derive(Debug)]
struct Published {
    bite: proto::Bite,
    user: String,
    client: String,
    duration_ms: u64,
}

/// Checks the messages of a stream (each `Nats-Msg-Id` once, one `Bite` and one `Store` per
/// bite with the same headers, the `Store` carrying exactly the `Bite`), and returns the bites
/// in start order; there must be `n`.
fn published(msgs: &[async_nats::jetstream::message::StreamMessage], n: usize) -> Vec<Published> {
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut bites: BTreeMap<u64, (proto::Bite, [String; 3])> = BTreeMap::new();
    let mut stores: BTreeMap<u64, (proto::Bite, [String; 3])> = BTreeMap::new();
    for m in msgs {
        let h = |name: &str| {
            header(&m.headers, name)
                .unwrap_or_else(|| panic!("no {name} header on {}", m.subject))
                .to_string()
        };
        let id = h(HEADER_MSG_ID);
        *ids.entry(id.clone()).or_default() += 1;
        assert_eq!(h("Content-Type"), CONTENT_TYPE_OGG_OPUS);
        let headers = [h(HEADER_USER), h(HEADER_CLIENT), h(HEADER_DURATION)];
        match m.subject.as_str() {
            "bite" => {
                let b = proto::Bite::decode(m.payload.as_ref()).expect("a Bite");
                assert_eq!(id, format!("{}:{}", b.key, b.start));
                assert!(bites.insert(b.start, (b, headers)).is_none(), "{id} twice");
            }
            "store" => {
                let s = proto::Store::decode(m.payload.as_ref()).expect("a Store");
                assert_eq!(s.r#type, "bite");
                let b = s.bite.expect("a bite in the Store");
                assert_eq!(id, format!("{}:{}:store", b.key, b.start));
                assert!(stores.insert(b.start, (b, headers)).is_none(), "{id} twice");
            }
            other => panic!("unexpected subject {other}"),
        }
    }
    for (id, count) in &ids {
        assert_eq!(*count, 1, "Nats-Msg-Id {id} is in the stream {count} times");
    }
    assert_eq!(
        bites.keys().collect::<Vec<_>>(),
        stores.keys().collect::<Vec<_>>(),
        "every bite on both subjects"
    );
    assert_eq!(bites.len(), n, "bites in the stream: {:?}", bites.keys());
    bites
        .into_iter()
        .map(|(start, (bite, [user, client, duration]))| {
            let (store_bite, store_headers) = &stores[&start];
            assert_eq!(store_bite, &bite, "the Store carries the Bite");
            assert_eq!(
                store_headers,
                &[user.clone(), client.clone(), duration.clone()]
            );
            Published {
                bite,
                user,
                client,
                duration_ms: duration.parse().expect("Beep-Duration-Ms is a number"),
            }
        })
        .collect()
}

/// What a bite should be: who said it, for how long, in which tone.
struct Said {
    user: &'static str,
    ms: u64,
    hz: u32,
}

/// `user` said `packets` in the tone `hz`: as long as the media time the client sent, each
/// packet as long as its TOC byte says (20 ms where it says nothing valid), as in
/// [`Client::speak`].
fn said(user: &'static str, packets: &[Bytes], hz: u32) -> Said {
    let samples: u64 = packets
        .iter()
        .map(|p| u64::from(opus::packet_samples(p).unwrap_or(960)))
        .sum();
    Said {
        user,
        ms: samples / 48,
        hz,
    }
}

/// Checks each bite against what was said, in order: conversation, speaker, duration within
/// one frame, and the file itself with opusinfo and opusdec. Returns what opusinfo said.
fn check_bites(dir: &Path, conversation: &str, got: &[Published], want: &[Said]) -> Vec<OpusInfo> {
    assert_eq!(
        got.iter().map(|p| p.user.as_str()).collect::<Vec<_>>(),
        want.iter().map(|s| s.user).collect::<Vec<_>>(),
        "speakers in start order"
    );
    let mut last_start = 0;
    let mut infos = vec![];
    for (i, (p, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(p.bite.key, conversation);
        assert_eq!(p.client, format!("{}-phone", w.user));
        assert!(p.bite.start > last_start, "start increases: {got:?}");
        last_start = p.bite.start;
        assert!(
            p.duration_ms.abs_diff(w.ms) <= 20,
            "bite {i} of {}: Beep-Duration-Ms {} for {} ms spoken",
            w.user,
            p.duration_ms,
            w.ms
        );
        let info = check_file(dir, &format!("bite{i}"), &p.bite.data, w.hz);
        assert!(
            (info.playback_ms - w.ms as f64).abs() <= 20.0,
            "bite {i}: opusinfo says {} ms for {} ms spoken",
            info.playback_ms,
            w.ms
        );
        // opusinfo truncates to whole milliseconds (1.4 s prints as 1.399 s).
        assert!(
            (info.playback_ms - p.duration_ms as f64).abs() <= 1.0,
            "bite {i}: opusinfo says {} ms, Beep-Duration-Ms {}",
            info.playback_ms,
            p.duration_ms
        );
        assert_eq!(info.comment("BEEP_CONVERSATION"), Some(conversation));
        assert_eq!(info.comment("BEEP_USER"), Some(w.user));
        assert_eq!(
            info.comment("BEEP_START"),
            Some(p.bite.start.to_string().as_str())
        );
        infos.push(info);
    }
    infos
}

/// Writes a bite's file, checks it with opusinfo, decodes it with opusdec and checks that it
/// is the tone `hz`.
fn check_file(dir: &Path, name: &str, data: &[u8], hz: u32) -> OpusInfo {
    let path = dir.join(format!("{name}.opus"));
    std::fs::write(&path, data).expect("write bite file");
    let info = opusinfo(&path);
    assert_eq!(info.channels, 1);
    let (channels, samples) = opusdec(&path);
    let pcm = first_channel(channels, samples);
    let dominant = dominant_hz(&pcm);
    let share = tone_share(&pcm, hz);
    assert!(
        dominant.abs_diff(hz) <= 20 && share > 0.5,
        "{name}: decoded audio is not the {hz} Hz tone (dominant {dominant} Hz, share {share:.2})"
    );
    info
}

/// Collects what a core NATS subscriber receives on `subject`.
async fn tap(client: &async_nats::Client, subject: &str) -> Arc<Mutex<Vec<async_nats::Message>>> {
    let mut sub = client
        .subscribe(subject.to_string())
        .await
        .expect("subscribe");
    let got = Arc::new(Mutex::new(vec![]));
    let sink = got.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            sink.lock().expect("tap").push(m);
        }
    });
    got
}

/// 1. Two speakers take turns with silences: each utterance is one bite, on both subjects
///    exactly once, from the right user and client, in start order, with the right headers; its
///    file is what opusinfo accepts, as long as what was said, and decodes to the speaker's tone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_become_one_playable_bite_each() {
    limit(async {
        let (alice_voice, bob_voice) = voices("turns", 3.0);
        let dir = workdir("turns-out");
        let rig = Rig::start(&[]).await;
        let nats = connect(&rig.nats.url()).await;
        let core_bites = tap(&nats, "bite").await;
        let core_stores = tap(&nats, "store").await;
        nats.flush().await.expect("flush");
        let alice = member(&rig.front, "turns", "alice").await;
        let bob = member(&rig.front, "turns", "bob").await;

        let before = unix_ms();
        alice
            .speak(&alice_voice[..PPS], LOUD)
            .await
            .expect("alice speaks");
        let after_first = unix_ms();
        tokio::time::sleep(PAUSE).await;
        bob.speak(&bob_voice[..70], LOUD).await.expect("bob speaks");
        tokio::time::sleep(PAUSE).await;
        alice
            .speak(&alice_voice[PPS..PPS + 40], LOUD)
            .await
            .expect("alice speaks again");

        let got = rig.bites(3, ARRIVE).await;
        let want = [
            said("alice", &alice_voice[..PPS], ALICE_HZ),
            said("bob", &bob_voice[..70], BOB_HZ),
            said("alice", &alice_voice[PPS..PPS + 40], ALICE_HZ),
        ];
        check_bites(&dir, "turns", &got, &want);
        // `start` is the wall-clock time of the first sample: the first packet's arrival
        // less its duration (20 ms), so up to 20 ms before it was sent (plus rounding).
        assert!(
            (before.saturating_sub(25)..=after_first).contains(&got[0].bite.start),
            "first start {} not within the first utterance ({before}..{after_first})",
            got[0].bite.start
        );
        // Listeners heard the speakers meanwhile.
        assert!(bob.packets_received() >= 80, "bob heard alice");
        assert!(alice.packets_received() >= 60, "alice heard bob");

        // A core subscriber got each message exactly once too.
        for (subject, tapped) in [("bite", &core_bites), ("store", &core_stores)] {
            let ids: Vec<String> = tapped
                .lock()
                .expect("tap")
                .iter()
                .map(|m| {
                    let h = m.headers.as_ref().expect("headers");
                    header(h, HEADER_MSG_ID).expect("Nats-Msg-Id").to_string()
                })
                .collect();
            let want: Vec<String> = got
                .iter()
                .map(|p| match subject {
                    "bite" => format!("turns:{}", p.bite.start),
                    _ => format!("turns:{}:store", p.bite.start),
                })
                .collect();
            assert_eq!(ids, want, "core subscriber on {subject}");
        }
        let published = rig
            .wait_metric("beep_bites_published_total", T, |v| v >= 3)
            .await;
        assert_eq!(published, 3);
        assert_eq!(rig.metric("beep_bites_spooled_total").await, 0);
        assert_eq!(rig.metric("beep_bites_failed_total").await, 0);
        alice.close().await;
        bob.close().await;
    })
    .await;
}

/// 2. NATS is killed between two utterances and again during one, and restarted each time on
///    the same port and store: every bite arrives, each `Nats-Msg-Id` once in the stream, in
///    order, and the metrics show bites spooled and replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outages_lose_no_bite_and_duplicate_none() {
    limit(async {
        let (alice_voice, bob_voice) = voices("outage", 3.0);
        let dir = workdir("outage-out");
        let mut rig = Rig::start(&[]).await;
        let alice = member(&rig.front, "outage", "alice").await;
        let bob = member(&rig.front, "outage", "bob").await;

        // Published live.
        alice.speak(&alice_voice[..PPS], LOUD).await.expect("speak");
        rig.bites(1, ARRIVE).await;

        // Killed between utterances: bob's bite is spooled, then replayed after the restart.
        rig.nats.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        bob.speak(&bob_voice[..60], LOUD).await.expect("speak");
        rig.wait_metric("beep_bites_spooled_total", ARRIVE, |v| v >= 1)
            .await;
        assert_eq!(rig.healthz().await["nats"], "down");
        rig.nats.restart();
        rig.bites(2, ARRIVE).await;

        // Killed while alice speaks: her bite ends while NATS is down.
        let (spoke, ()) = tokio::join!(alice.speak(&alice_voice[PPS..PPS + 80], LOUD), async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            rig.nats.kill();
        });
        spoke.expect("speak");
        rig.wait_metric("beep_bites_spooled_total", ARRIVE, |v| v >= 2)
            .await;
        rig.nats.restart();
        // And bob speaks while the spool is replayed.
        bob.speak(&bob_voice[60..110], LOUD).await.expect("speak");

        let got = rig.bites(4, ARRIVE).await;
        check_bites(
            &dir,
            "outage",
            &got,
            &[
                said("alice", &alice_voice[..PPS], ALICE_HZ),
                said("bob", &bob_voice[..60], BOB_HZ),
                said("alice", &alice_voice[PPS..PPS + 80], ALICE_HZ),
                said("bob", &bob_voice[60..110], BOB_HZ),
            ],
        );
        // Each bite published once, live or from the spool, and every spooled one replayed.
        let [live, spooled, replayed] = rig
            .wait_metrics(
                [
                    "beep_bites_published_total",
                    "beep_bites_spooled_total",
                    "beep_bites_replayed_total",
                ],
                T,
                |[live, spooled, replayed]| live + replayed >= 4 && replayed >= spooled,
            )
            .await;
        assert!(spooled >= 2, "spooled {spooled}");
        assert_eq!(spooled, replayed, "every spooled bite was replayed");
        assert_eq!(live + replayed, 4, "each bite published once");
        assert_eq!(rig.metric("beep_bites_failed_total").await, 0);
        assert_eq!(spool_files(&rig.spool_dir("outage")), 0);
        alice.close().await;
        bob.close().await;
    })
    .await;
}

/// 3. A worker SIGKILLed while a bite waits in its spool (NATS down): once NATS is back, front
///    replays that spool; the bite arrives and the spool empties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_replays_the_spool_of_a_killed_worker() {
    limit(async {
        let (alice_voice, _) = voices("sigkill", 1.5);
        let dir = workdir("sigkill-out");
        let mut rig = Rig::start(&[]).await;
        let alice = member(&rig.front, "sigkill", "alice").await;
        let _bob = member(&rig.front, "sigkill", "bob").await;
        rig.nats.kill();

        alice.speak(&alice_voice[..PPS], LOUD).await.expect("speak");
        let spool = rig.spool_dir("sigkill");
        assert!(
            eventually(T, || spool_files(&spool) == 1).await,
            "the bite was not spooled in {}",
            spool.display()
        );
        let worker = worker_of(&rig.front, "sigkill").expect("the conversation's worker");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(worker as i32),
            nix::sys::signal::SIGKILL,
        )
        .expect("SIGKILL the worker");
        assert!(
            eventually(T, || !rig.front.workers().contains(&worker)).await,
            "the worker did not die"
        );
        assert_eq!(spool_files(&spool), 1, "the bite outlives its worker");

        rig.nats.restart();
        let got = rig.bites(1, ARRIVE).await;
        check_bites(
            &dir,
            "sigkill",
            &got,
            &[said("alice", &alice_voice[..PPS], ALICE_HZ)],
        );
        assert!(
            eventually(T, || spool_files(&spool) == 0).await,
            "the spool did not empty"
        );
        rig.wait_metric("beep_bites_replayed_total", T, |v| v >= 1)
            .await;
        rig.front.assert_serving().await;
        alice.close().await;
    })
    .await;
}

/// 4. The spool cap is reached while NATS is down: the bites that do not fit are counted as
///    failed, nothing crashes, and audio keeps flowing both ways. The ones that did fit are
///    published once NATS is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_counts_failures_and_audio_flows_on() {
    limit(async {
        require_tools();
        let audio = workdir("capped");
        // 256 kbit/s constant: 32 kB per second of speech, against a 64 KiB spool.
        let loud = encode_tone(
            &audio,
            &Tone {
                opusenc: ["--hard-cbr", "--bitrate", "256"]
                    .map(String::from)
                    .to_vec(),
                ..Tone::new(ALICE_HZ, 5.0)
            },
        );
        let (_, bob_voice) = voices("capped-bob", 1.5);
        let mut rig = Rig::start(&[("SPOOL_MAX_BYTES", "65536")]).await;
        let alice = member(&rig.front, "capped", "alice").await;
        let bob = member(&rig.front, "capped", "bob").await;
        let worker = worker_of(&rig.front, "capped").expect("the conversation's worker");
        rig.nats.kill();

        for turn in 0..4 {
            let heard = bob.packets_received();
            alice
                .speak(&loud[turn * PPS..(turn + 1) * PPS], LOUD)
                .await
                .expect("speak");
            assert!(
                eventually(T, || bob.packets_received() >= heard + 40).await,
                "turn {turn}: bob stopped hearing alice ({} packets)",
                bob.packets_received() - heard
            );
            tokio::time::sleep(PAUSE).await;
        }
        let failed = rig
            .wait_metric("beep_bites_failed_total", T, |v| v >= 1)
            .await;
        assert!(failed <= 3, "{failed} failed of 4");

        // Audio flows on, both ways, after the spool refused bites.
        let heard = alice.packets_received();
        bob.speak(&bob_voice[..PPS], LOUD).await.expect("speak");
        assert!(
            eventually(T, || alice.packets_received() >= heard + 40).await,
            "alice stopped hearing bob"
        );
        let heard = bob.packets_received();
        alice.speak(&loud[200..250], LOUD).await.expect("speak");
        assert!(
            eventually(T, || bob.packets_received() >= heard + 40).await,
            "bob stopped hearing alice"
        );
        assert_eq!(
            worker_of(&rig.front, "capped"),
            Some(worker),
            "the worker lives on"
        );
        rig.front.assert_serving().await;
        assert_eq!(rig.healthz().await["nats"], "down");

        // Every bite is either spooled or counted as failed; what was spooled is published
        // once NATS is back.
        tokio::time::sleep(PAUSE).await;
        let [spooled, failed] = rig
            .wait_metrics(
                ["beep_bites_spooled_total", "beep_bites_failed_total"],
                T,
                |[spooled, failed]| spooled + failed >= 6,
            )
            .await;
        assert!(spooled >= 1, "nothing was spooled");
        assert_eq!(spooled + failed, 6, "spooled {spooled}, failed {failed}");
        assert!(spooled < 6, "the cap refused nothing");
        rig.nats.restart();
        let got = rig.bites(spooled as usize, ARRIVE).await;
        for (i, p) in got.iter().enumerate() {
            let hz = if p.user == "alice" { ALICE_HZ } else { BOB_HZ };
            check_file(&audio, &format!("replayed{i}"), &p.bite.data, hz);
        }
        rig.wait_metric("beep_bites_replayed_total", T, |v| v == spooled)
            .await;
        alice.close().await;
        bob.close().await;
    })
    .await;
}

/// 5. Invalid Opus from a client (empty payloads, impossible TOC bytes and framings mixed into
///    speech) is dropped from the bite; the worker lives on, and the bite still passes opusinfo,
///    lasts what was spoken and decodes to the tone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_opus_is_left_out_of_the_bite() {
    limit(async {
        let (alice_voice, bob_voice) = voices("badopus", 2.0);
        let dir = workdir("badopus-out");
        let rig = Rig::start(&[]).await;
        let alice = member(&rig.front, "badopus", "alice").await;
        let bob = member(&rig.front, "badopus", "bob").await;
        let worker = worker_of(&rig.front, "badopus").expect("the conversation's worker");

        let mut oversized = vec![0xF8u8];
        oversized.resize(1 + 1300, 0x55);
        let bad: Vec<(usize, Bytes)> = vec![
            (5, Bytes::new()),                                // empty
            (12, Bytes::from_static(&[0xFB])),                // code 3 without its count byte
            (20, Bytes::from_static(&[0xF9, 0xAA])),          // code 1, odd length
            (28, Bytes::from_static(&[0xFB, 0x00])),          // code 3, zero frames
            (36, Bytes::from_static(&[0xFB, 0x3F, 0, 0, 0])), // 63 frames of 20 ms
            (44, Bytes::from_static(&[0xFA])),                // code 2 without a length
            (50, Bytes::from(oversized)),                     // a frame over 1275 bytes
        ];
        let mut packets = alice_voice[..60].to_vec();
        for (i, p) in &bad {
            assert!(opus::validate(p).is_err(), "packet {i} should be invalid");
            packets[*i] = p.clone();
        }
        alice.speak(&packets, LOUD).await.expect("speak");

        let got = rig.bites(1, ARRIVE).await;
        // The invalid packets' time is kept (filled), so the bite is as long as what was sent.
        check_bites(&dir, "badopus", &got, &[said("alice", &packets, ALICE_HZ)]);
        // Only valid Opus in the file, none of the bad payloads.
        let audio = ogg_packets(&got[0].bite.data).split_off(2);
        for p in &audio {
            assert!(
                opus::validate(p).is_ok(),
                "invalid packet in the bite: {p:?}"
            );
            assert!(!bad.iter().any(|(_, b)| b == p));
        }

        // The worker lives on and still cuts bites.
        assert_eq!(worker_of(&rig.front, "badopus"), Some(worker));
        tokio::time::sleep(PAUSE).await;
        bob.speak(&bob_voice[..30], LOUD).await.expect("speak");
        let got = rig.bites(2, ARRIVE).await;
        assert_eq!(got[1].user, "bob");
        check_file(&dir, "after", &got[1].bite.data, BOB_HZ);
        assert!(bob.packets_received() >= 40, "bob heard alice");
        assert_eq!(worker_of(&rig.front, "badopus"), Some(worker));
        rig.front.assert_serving().await;
        alice.close().await;
        bob.close().await;
    })
    .await;
}

/// 6. A speaker who leaves in the middle of an utterance (closes the peer connection right
///    after its last packet): the bite is closed and published with what was said, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speaker_leaving_mid_bite_still_gets_it_published() {
    limit(async {
        let (alice_voice, _) = voices("leave", 1.5);
        let dir = workdir("leave-out");
        let rig = Rig::start(&[]).await;
        let alice = member(&rig.front, "leave", "alice").await;
        let bob = member(&rig.front, "leave", "bob").await;
        alice.speak(&alice_voice[..PPS], LOUD).await.expect("speak");
        alice.close().await;
        let got = rig.bites(1, ARRIVE).await;
        check_bites(
            &dir,
            "leave",
            &got,
            &[said("alice", &alice_voice[..PPS], ALICE_HZ)],
        );
        bob.close().await;
    })
    .await;
}

/// 7. An utterance longer than `BITE_MAX_MS` is split into bites that follow each other
///    without gap or overlap: each starts where the previous one ended, and together they last
///    what was said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_utterance_is_split_without_gap() {
    limit(async {
        let (alice_voice, _) = voices("split", 3.0);
        let dir = workdir("split-out");
        let rig = Rig::start(&[("BITE_MAX_MS", "1000")]).await;
        let alice = member(&rig.front, "split", "alice").await;
        let bob = member(&rig.front, "split", "bob").await;
        let spoken = &alice_voice[..130];
        alice.speak(spoken, LOUD).await.expect("speak");
        let got = rig.bites(3, ARRIVE).await;
        let ms = [1000, 1000, said("alice", spoken, ALICE_HZ).ms - 2000];
        for (i, (p, want)) in got.iter().zip(ms).enumerate() {
            assert_eq!(p.user, "alice");
            assert!(
                p.duration_ms.abs_diff(want) <= 20,
                "bite {i}: {} ms, expected {want} ms",
                p.duration_ms
            );
            let info = check_file(&dir, &format!("part{i}"), &p.bite.data, ALICE_HZ);
            assert!((info.playback_ms - p.duration_ms as f64).abs() <= 1.0);
            if i > 0 {
                let prev = &got[i - 1];
                assert_eq!(
                    p.bite.start,
                    prev.bite.start + prev.duration_ms,
                    "bite {i} starts where bite {} ended",
                    i - 1
                );
            }
        }
        let total: u64 = got.iter().map(|p| p.duration_ms).sum();
        let spoken_ms = said("alice", spoken, ALICE_HZ).ms;
        assert!(
            total.abs_diff(spoken_ms) <= 20,
            "{total} ms of {spoken_ms} ms"
        );
        alice.close().await;
        bob.close().await;
    })
    .await;
}

/// Issue 16, point 1. Three clients of one user send real Opus of digital silence stamped
/// 0 dBov, the loudest level there is, from before another member starts talking until after
/// she stops. Before the level audit they took all three of the listener's slots for good and
/// opened bites non-stop; now their claims are checked against what their packets decode to:
/// they take no slot, open no bite, the listener hears the honest speaker, and the refused
/// claims are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loudness_claimed_without_audio_takes_no_slot_and_opens_no_bite() {
    limit(async {
        let (alice_voice, _) = voices("liars", 2.0);
        let silence = encode_tone(&workdir("liars-silence"), &Tone::silence(5.0));
        assert!(
            silence.iter().all(|p| p.len() > 2),
            "the silence must not be DTX-sized (those are refused without decoding)"
        );
        let rig = Rig::start(&[]).await;
        let mut opts = ClientOptions::new(rig.front.ws("?conversation=liars"), "bob", "phone");
        opts.slots = 3;
        let bob = Client::connect(opts).await.expect("bob");
        bob.wait_connected(T).await.expect("bob connected");
        let alice = member(&rig.front, "liars", "alice").await;
        let mut liars = Vec::new();
        for n in 1..=3 {
            let c = Client::connect(ClientOptions::new(
                rig.front.ws("?conversation=liars"),
                "mallory",
                &format!("m{n}"),
            ))
            .await
            .expect("mallory");
            c.wait_connected(T).await.expect("mallory connected");
            liars.push(c);
        }
        let lies = futures_util::future::join_all(liars.iter().map(|m| m.speak(&silence, 0)));
        let honest = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            alice.speak(&alice_voice[..100], LOUD).await
        };
        let (lied, spoke) = tokio::join!(lies, honest);
        assert!(lied.iter().all(Result::is_ok), "{lied:?}");
        spoke.expect("alice speaks");

        let got = rig.bites(1, ARRIVE).await;
        assert_eq!(got[0].user, "alice", "{got:?}");
        let slots_named: Vec<_> = bob
            .events()
            .into_iter()
            .filter(|e| e["type"] == "slots")
            .flat_map(|e| {
                e["slots"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|s| s["userid"].as_str().map(String::from))
            })
            .collect();
        assert!(
            !slots_named.iter().any(|u| u == "mallory"),
            "a liar took a slot: {slots_named:?}"
        );
        assert!(slots_named.iter().any(|u| u == "alice"), "{slots_named:?}");
        assert!(
            bob.packets_received() >= 90,
            "bob heard {} packets of alice's 100",
            bob.packets_received()
        );
        let refused = rig
            .wait_metric("beep_level_claims_refused_total", T, |v| v >= 3)
            .await;
        let decodes = rig.metric("beep_level_decodes_total").await;
        println!("claims refused {refused}, packets decoded {decodes}");
        for c in liars.iter().chain([&alice, &bob]) {
            c.close().await;
        }
    })
    .await;
}
