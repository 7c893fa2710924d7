//! Churn mode: connect → connected → first packet → close, many times (in one warm
//! conversation with an anchor speaker, or each in a new conversation), and front's and the
//! workers' RSS, open fds and threads before and after, once the server has let go of every
//! closed session.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;

use super::options::Options;
use super::report::{ChurnReport, JoinRecord, ProcDelta, Report, Snapshot, join_report, ms};
use super::sample::ServerSample;
use super::server::{Server, ws_url};
use crate::front::procfs::{ProcSample, children_of};
use crate::tools::load::client::Client;

async fn snapshot(server: &Server) -> Snapshot {
    let s = server.sample().unwrap_or_default();
    let mut workers: Vec<(u32, ProcSample)> = s.workers.into_iter().collect();
    workers.sort_by_key(|(p, _)| *p);
    Snapshot {
        front: s.front,
        workers: workers.into_iter().map(|(_, w)| w).collect(),
        sessions: server.metric("beep_sessions").await,
        peers: server.metric("beep_peers").await,
    }
}

/// One churn cycle: connect, connected, (warm) first packet from the anchor, close.
async fn churn_cycle(
    o: &Options,
    base: &str,
    k: usize,
    anchored: bool,
) -> Result<JoinRecord, String> {
    let conversation = if anchored {
        format!("{}-churn", o.prefix)
    } else {
        format!("{}-c{k}", o.prefix)
    };
    let url = ws_url(base, &conversation);
    let co = o.client(url, format!("{}-c{k}", o.prefix), 100);
    let c = match tokio::time::timeout(Duration::from_secs(40), Client::connect(co)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("{e:#}")),
        Err(_) => return Err("no answer within 40 s".into()),
    };
    let mut r = JoinRecord {
        client: k,
        conversation,
        speaker: false,
        spawn: !anchored,
        error: None,
        ws_connect_ms: ms(c.ws_open_at - c.started),
        ws_open_to_offer_ms: ms(c.offer_sent_at - c.ws_open_at),
        offer_to_answer_ms: ms(c.answer_at - c.offer_sent_at),
        ws_open_to_answer_ms: ms(c.answer_at - c.ws_open_at),
        ws_open_to_ice_connected_ms: None,
        ws_open_to_connected_ms: None,
        ws_open_to_first_packet_ms: None,
    };
    let ok = c.wait_connected(Duration::from_secs(20)).await.is_ok();
    if ok && anchored {
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.first_packet_at().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    r.ws_open_to_ice_connected_ms = c.ice_connected_at().map(|t| ms(t - c.ws_open_at));
    r.ws_open_to_connected_ms = c.connected_at().map(|t| ms(t - c.ws_open_at));
    r.ws_open_to_first_packet_ms = c.first_packet_at().map(|t| ms(t - c.ws_open_at));
    c.close().await;
    Ok(r)
}

/// The cycles' shared state: which cycle is next, and what the counted ones gave.
struct Cycles {
    o: Arc<Options>,
    base: String,
    anchored: bool,
    next: Arc<AtomicUsize>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    records: Arc<Mutex<Vec<Result<JoinRecord, String>>>>,
}

impl Cycles {
    /// Runs cycles `from..to` on `churn_concurrency` tasks; each result is counted and kept.
    fn run(&self, from: usize, to: usize) -> Vec<tokio::task::JoinHandle<()>> {
        self.next.store(from, Ordering::Relaxed);
        let mut tasks = Vec::new();
        for _ in 0..self.o.churn_concurrency {
            let (next, ok, failed, records, o) = (
                self.next.clone(),
                self.ok.clone(),
                self.failed.clone(),
                self.records.clone(),
                self.o.clone(),
            );
            let (base, anchored) = (self.base.clone(), self.anchored);
            tasks.push(tokio::spawn(async move {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= to {
                        return;
                    }
                    let r = churn_cycle(&o, &base, k, anchored).await;
                    if k >= from {
                        match &r {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                        records.lock().unwrap().push(r);
                    }
                }
            }));
        }
        tasks
    }

    /// Runs cycles `from..to` and waits for all of them.
    async fn run_all(&self, from: usize, to: usize) -> anyhow::Result<()> {
        for t in self.run(from, to) {
            t.await?;
        }
        Ok(())
    }

    /// Forgets what the warm-up cycles gave, so only the measured ones are reported.
    fn forget(&self) {
        self.records.lock().unwrap().clear();
        self.ok.store(0, Ordering::Relaxed);
        self.failed.store(0, Ordering::Relaxed);
    }
}

/// Connects the anchor speaker of the warm conversation and starts it sending.
async fn connect_anchor(o: &Options, server: &Server) -> anyhow::Result<Client> {
    let url = server.ws(&format!("{}-churn", o.prefix));
    let co = o.client(url, format!("{}-anchor", o.prefix), 100);
    let a = tokio::time::timeout(Duration::from_secs(40), Client::connect(co))
        .await
        .map_err(|_| anyhow!("anchor: no answer within 40 s"))??;
    a.wait_connected(Duration::from_secs(20)).await?;
    a.start_sending("anchor", o.level_dbov);
    Ok(a)
}

/// Prints the progress once a second (unless quiet) until `stop` is set.
fn spawn_printer(
    o: &Options,
    server: &Server,
    cycles: &Cycles,
    total: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let (next, failed, quiet) = (cycles.next.clone(), cycles.failed.clone(), o.quiet);
    let front_pid = server.front_pid;
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            if quiet {
                continue;
            }
            let s = front_pid.map(ServerSample::take).unwrap_or_default();
            eprintln!(
                "[{:6.1}s] churn cycle {}/{total} failed {} | front rss {} KiB fds {} threads {} | workers {}",
                start.elapsed().as_secs_f64(),
                next.load(Ordering::Relaxed).min(total),
                failed.load(Ordering::Relaxed),
                s.front.rss_kib,
                s.front.fds,
                s.front.threads,
                s.workers.len()
            );
        }
    })
}

/// What the measured rounds gave: their time spent cycling, the longest settle (None if
/// one never settled), and a snapshot after each round.
struct Rounds {
    elapsed: f64,
    settle_s: Option<f64>,
    after_round: Vec<Snapshot>,
}

/// Runs the measured rounds after `warmup` cycles, each followed by a settle and a snapshot.
async fn run_rounds(
    o: &Options,
    server: &Server,
    cycles: &Cycles,
    warmup: usize,
    target: f64,
) -> anyhow::Result<Rounds> {
    let mut r = Rounds {
        elapsed: 0.0,
        settle_s: Some(0.0f64),
        after_round: Vec::new(),
    };
    for round in 0..o.churn_rounds {
        let t0 = Instant::now();
        let from = warmup + round * o.churn;
        cycles.run_all(from, from + o.churn).await?;
        r.elapsed += t0.elapsed().as_secs_f64();
        let (s, _) = settle(o, server, Some(target)).await;
        r.settle_s = r.settle_s.zip(s).map(|(a, b)| a.max(b));
        r.after_round.push(snapshot(server).await);
    }
    Ok(r)
}

/// Churn mode, against `server`; fills `report`'s joins and churn sections.
pub(super) async fn churn(o: &Options, server: &Server, report: &mut Report) -> anyhow::Result<()> {
    let anchored = !o.churn_spawn;
    // Sessions the server had before we came (attach mode), plus our anchor.
    let initial = server.metric("beep_sessions").await.unwrap_or(0.0);
    let target = initial + if anchored { 1.0 } else { 0.0 };
    let anchor = if anchored {
        Some(connect_anchor(o, server).await?)
    } else {
        None
    };
    let warmup = (o.churn / 10).clamp(1, 50);
    let total = warmup + o.churn * o.churn_rounds;
    let cycles = Cycles {
        o: Arc::new(o.clone()),
        base: server.base.clone(),
        anchored,
        next: Arc::new(AtomicUsize::new(0)),
        ok: Arc::new(AtomicU64::new(0)),
        failed: Arc::new(AtomicU64::new(0)),
        records: Arc::new(Mutex::new(Vec::new())),
    };
    let stop_printer = Arc::new(AtomicBool::new(false));
    let printer = spawn_printer(o, server, &cycles, total, stop_printer.clone());
    // Warm-up cycles first (allocator pools, lazily built state), then the measured ones.
    cycles.run_all(0, warmup).await?;
    cycles.forget();
    // Closed sessions end when ICE gives up on them (ICE_DISCONNECTED_MS + ICE_FAILED_MS):
    // measure "before" once the warm-up ones are gone too.
    settle(o, server, Some(target)).await;
    let before = snapshot(server).await;
    let mut rounds = run_rounds(o, server, &cycles, warmup, target).await?;
    let after = rounds.after_round.pop().unwrap_or_default();
    stop_printer.store(true, Ordering::Relaxed);
    let _ = printer.await;
    let recs = std::mem::take(&mut *cycles.records.lock().unwrap_or_else(|p| p.into_inner()));
    report.joins = join_report(&join_records(&recs, anchored), |_| anchored);
    report.churn = Some(ChurnReport {
        cycles: o.churn * o.churn_rounds,
        ok: cycles.ok.load(Ordering::Relaxed) as usize,
        failed: cycles.failed.load(Ordering::Relaxed) as usize,
        warmup_cycles: warmup,
        elapsed_s: rounds.elapsed,
        front_delta: delta(&after.front, &before.front),
        workers_delta: (anchored && before.workers.len() == after.workers.len())
            .then(|| workers_delta(&before, &after)),
        rounds: o.churn_rounds,
        before,
        after_round: rounds.after_round,
        after,
        settle_s: rounds.settle_s,
    });
    if let Some(a) = anchor {
        a.close().await;
    }
    Ok(())
}

/// How one process's RSS, fds and threads grew from `b` to `a`.
fn delta(a: &ProcSample, b: &ProcSample) -> ProcDelta {
    ProcDelta {
        rss_kib: a.rss_kib as i64 - b.rss_kib as i64,
        fds: a.fds as i64 - b.fds as i64,
        threads: a.threads as i64 - b.threads as i64,
    }
}

/// How the workers' summed RSS, fds and threads grew from `before` to `after`.
fn workers_delta(before: &Snapshot, after: &Snapshot) -> ProcDelta {
    let sum = |s: &Snapshot, f: fn(&ProcSample) -> u64| s.workers.iter().map(f).sum::<u64>() as i64;
    ProcDelta {
        rss_kib: sum(after, |w| w.rss_kib) - sum(before, |w| w.rss_kib),
        fds: sum(after, |w| w.fds) - sum(before, |w| w.fds),
        threads: sum(after, |w| w.threads) - sum(before, |w| w.threads),
    }
}

/// The cycles' join records: the good ones first, then one empty record per failure.
fn join_records(recs: &[Result<JoinRecord, String>], anchored: bool) -> Vec<JoinRecord> {
    let mut all: Vec<JoinRecord> = recs
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    all.extend(
        recs.iter()
            .filter_map(|r| r.as_ref().err())
            .map(|e| JoinRecord {
                client: 0,
                conversation: String::new(),
                speaker: false,
                spawn: !anchored,
                error: Some(e.clone()),
                ws_connect_ms: 0.0,
                ws_open_to_offer_ms: 0.0,
                offer_to_answer_ms: 0.0,
                ws_open_to_answer_ms: 0.0,
                ws_open_to_ice_connected_ms: None,
                ws_open_to_connected_ms: None,
                ws_open_to_first_packet_ms: None,
            }),
    );
    all
}

/// Waits until `/metrics` shows at most `target` sessions (or, without a target, until the
/// count stops changing), and in spawn mode until no worker is left but the baseline.
/// Returns (seconds waited, the session count reached).
async fn settle(o: &Options, server: &Server, target: Option<f64>) -> (Option<f64>, Option<f64>) {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(o.settle.max(1.0));
    let mut last = None;
    let mut stable_since = Instant::now();
    loop {
        let sessions = server.metric("beep_sessions").await;
        let peers = server.metric("beep_peers").await;
        let done = match (target, sessions) {
            (Some(t), Some(s)) => s <= t && (o.churn_spawn || peers.is_some_and(|p| p <= t)),
            (None, Some(s)) => {
                if last != Some(s) {
                    stable_since = Instant::now();
                }
                last = Some(s);
                stable_since.elapsed() > Duration::from_secs(2)
            }
            (_, None) => true,
        };
        let workers_done =
            !o.churn_spawn || server.front_pid.is_none_or(|p| children_of(p).is_empty());
        if done && workers_done {
            // Give the last closes time to be reaped.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return (Some(start.elapsed().as_secs_f64()), sessions);
        }
        if Instant::now() > deadline {
            return (None, sessions);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
