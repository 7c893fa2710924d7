//! Load mode: N clients in M conversations, the first S of each speaking; joins in two phases
//! (the first member of each conversation, which starts its worker, then the rest over the
//! ramp-up), a warm-up, then a measured steady-state window: forwarding, latency, loss, and
//! the CPU and memory of front, the workers and loadgen itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;

use super::options::Options;
use super::report::{
    Dist, Forwarding, JoinRecord, Loss, Report, ServerReport, SfuDelay, join_report, ms,
};
use super::sample::{ServerSample, cpu_count, cpu_jiffies};
use super::server::Server;
use crate::front::procfs::proc_sample;
use crate::loadtools::client::Client;
use crate::wire::stats::{DELAY_BUCKETS_US, DelayHistogram};

/// A planned client of load mode.
struct Planned {
    index: usize,
    conversation: usize,
    speaker: bool,
    spawn: bool,
}

struct Joined {
    plan: Planned,
    client: Option<Arc<Client>>,
    record: JoinRecord,
}

/// Progress counters, shared with the progress printer.
#[derive(Default)]
struct Progress {
    joined: AtomicUsize,
    failed: AtomicUsize,
    clients: Mutex<Vec<Arc<Client>>>,
    phase: Mutex<String>,
}

async fn join_one(
    o: Arc<Options>,
    url: String,
    plan: Planned,
    samples: usize,
    progress: Arc<Progress>,
) -> Joined {
    let user = format!("{}-u{}", o.prefix, plan.index);
    let mut record = JoinRecord {
        client: plan.index,
        conversation: format!("{}-{}", o.prefix, plan.conversation),
        speaker: plan.speaker,
        spawn: plan.spawn,
        error: None,
        ws_connect_ms: 0.0,
        ws_open_to_offer_ms: 0.0,
        offer_to_answer_ms: 0.0,
        ws_open_to_answer_ms: 0.0,
        ws_open_to_ice_connected_ms: None,
        ws_open_to_connected_ms: None,
        ws_open_to_first_packet_ms: None,
    };
    let connected = tokio::time::timeout(
        Duration::from_secs(40),
        Client::connect(o.client(url, user, samples)),
    )
    .await;
    let client = match connected {
        Ok(Ok(c)) => Arc::new(c),
        Ok(Err(e)) => {
            record.error = Some(format!("{e:#}"));
            progress.failed.fetch_add(1, Ordering::Relaxed);
            return Joined {
                plan,
                client: None,
                record,
            };
        }
        Err(_) => {
            record.error = Some("no answer within 40 s".into());
            progress.failed.fetch_add(1, Ordering::Relaxed);
            return Joined {
                plan,
                client: None,
                record,
            };
        }
    };
    record.ws_connect_ms = ms(client.ws_open_at - client.started);
    record.ws_open_to_offer_ms = ms(client.offer_sent_at - client.ws_open_at);
    record.offer_to_answer_ms = ms(client.answer_at - client.offer_sent_at);
    record.ws_open_to_answer_ms = ms(client.answer_at - client.ws_open_at);
    progress.joined.fetch_add(1, Ordering::Relaxed);
    progress.clients.lock().unwrap().push(client.clone());
    if client.wait_connected(Duration::from_secs(20)).await.is_ok() && plan.speaker {
        client.start_sending(&format!("s{}", plan.index), o.level_dbov);
    }
    Joined {
        plan,
        client: Some(client),
        record,
    }
}

fn spawn_progress(
    o: &Options,
    server: &Server,
    progress: Arc<Progress>,
    total: usize,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicBool>) {
    let stop = Arc::new(AtomicBool::new(false));
    let quiet = o.quiet;
    let front_pid = server.front_pid;
    let stop2 = stop.clone();
    let handle = tokio::spawn(async move {
        let start = Instant::now();
        let mut last = (Instant::now(), 0u64, front_pid.map(ServerSample::take));
        let mut me_last = proc_sample(std::process::id()).unwrap_or_default().cpu_s;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        while !stop2.load(Ordering::Relaxed) {
            tick.tick().await;
            if quiet || stop2.load(Ordering::Relaxed) {
                continue;
            }
            let clients = progress.clients.lock().unwrap().clone();
            let connected = clients
                .iter()
                .filter(|c| c.connected_at().is_some())
                .count();
            let rx: u64 = clients.iter().map(|c| c.packets_received()).sum();
            let now = Instant::now();
            let dt = (now - last.0).as_secs_f64().max(1e-3);
            let sample = front_pid.map(ServerSample::take);
            let srv = match (&sample, &last.2) {
                (Some(s), Some(p)) => format!(
                    " | front {:.0}% workers({}) {:.0}% rss {:.0} MiB",
                    100.0 * (s.front.cpu_s - p.front.cpu_s) / dt,
                    s.workers.len(),
                    100.0 * s.workers_cpu_since(p) / dt,
                    (s.front.rss_kib + s.workers_sum(|w| w.rss_kib)) as f64 / 1024.0
                ),
                _ => String::new(),
            };
            let me = proc_sample(std::process::id()).unwrap_or_default().cpu_s;
            eprintln!(
                "[{:6.1}s] {} joined {}/{} failed {} connected {} | rx {:.0} pkt/s{} | loadgen {:.0}%",
                start.elapsed().as_secs_f64(),
                progress.phase.lock().unwrap(),
                progress.joined.load(Ordering::Relaxed),
                total,
                progress.failed.load(Ordering::Relaxed),
                connected,
                rx.saturating_sub(last.1) as f64 / dt,
                srv,
                100.0 * (me - me_last) / dt,
            );
            me_last = me;
            last = (now, rx, sample);
        }
    });
    (handle, stop)
}

/// Load mode, against `server`; fills `report`'s joins, forwarding and server sections.
pub(super) async fn load(o: &Options, server: &Server, report: &mut Report) -> anyhow::Result<()> {
    let o = Arc::new(o.clone());
    let before = server.sample();
    let samples = (((o.warmup + o.duration + 5.0) * 50.0) as usize).clamp(500, 200_000);
    let plans: Vec<Planned> = (0..o.clients)
        .map(|i| Planned {
            index: i,
            conversation: i % o.conversations,
            speaker: i / o.conversations < o.speakers,
            spawn: i < o.conversations,
        })
        .collect();
    let ramp = o.ramp.unwrap_or(o.clients as f64 / 20.0).max(0.0);
    let gap = Duration::from_secs_f64(ramp / o.clients as f64);
    let progress = Arc::new(Progress::default());
    let (printer, stop_printer) = spawn_progress(&o, server, progress.clone(), o.clients);

    // Phase 1: the first member of each conversation (worker spawn); phase 2: the rest.
    let mut joined: Vec<Joined> = Vec::new();
    let (first, rest): (Vec<Planned>, Vec<Planned>) = plans.into_iter().partition(|p| p.spawn);
    let mut k = 0u32;
    for (name, phase) in [("spawn", first), ("warm", rest)] {
        *progress.phase.lock().unwrap() = name.into();
        let start = tokio::time::Instant::now();
        let mut handles = Vec::new();
        for (n, plan) in phase.into_iter().enumerate() {
            tokio::time::sleep_until(start + gap * n as u32).await;
            let url = server.ws(&format!("{}-{}", o.prefix, plan.conversation));
            handles.push(tokio::spawn(join_one(
                o.clone(),
                url,
                plan,
                samples,
                progress.clone(),
            )));
            k += 1;
        }
        for h in handles {
            joined.push(h.await?);
        }
    }
    let _ = k;

    // Steady state.
    *progress.phase.lock().unwrap() = "warm-up".into();
    tokio::time::sleep(Duration::from_secs_f64(o.warmup)).await;
    let clients: Vec<&Arc<Client>> = joined.iter().filter_map(|j| j.client.as_ref()).collect();
    for c in &clients {
        c.reset_latency();
    }
    *progress.phase.lock().unwrap() = "measuring".into();
    let me0 = proc_sample(std::process::id()).unwrap_or_default();
    let jiffies0: Vec<_> = (0..cpu_count()).map(cpu_jiffies).collect();
    let s0 = server.sample();
    let delay0 = server.forward_delay().await;
    let rx0: u64 = clients.iter().map(|c| c.packets_received()).sum();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(o.duration)).await;
    let rx1: u64 = clients.iter().map(|c| c.packets_received()).sum();
    let t1 = Instant::now();
    let s1 = server.sample();
    let delay1 = server.forward_delay().await;
    let jiffies1: Vec<_> = (0..cpu_count()).map(cpu_jiffies).collect();
    let me1 = proc_sample(std::process::id()).unwrap_or_default();
    let window = (t1 - t0).as_secs_f64();
    if let Some(pid) = server.front_pid
        && proc_sample(pid).is_none()
    {
        bail!("front (pid {pid}) is gone: it exited or was killed during the run");
    }
    let latency: Vec<f64> = clients
        .iter()
        .flat_map(|c| c.streams())
        .flat_map(|(_, st)| st.latency_us.into_iter().map(|u| u as f64 / 1e3))
        .collect();
    *progress.phase.lock().unwrap() = "draining".into();
    for c in &clients {
        c.stop_sending();
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop_printer.store(true, Ordering::Relaxed);
    let _ = printer.await;

    // Who should have heard how many streams: min(slots, connected speakers other than me).
    let connected = |j: &Joined| {
        j.client
            .as_ref()
            .is_some_and(|c| c.connected_at().is_some())
    };
    let mut speakers_in: HashMap<usize, usize> = HashMap::new();
    for j in joined.iter().filter(|j| j.plan.speaker && connected(j)) {
        *speakers_in.entry(j.plan.conversation).or_default() += 1;
    }
    let expect_streams = |j: &Joined| {
        let others = speakers_in.get(&j.plan.conversation).copied().unwrap_or(0)
            - usize::from(j.plan.speaker && connected(j));
        others.min(o.slots)
    };
    let mut losses = Vec::new();
    let (mut sent_all, mut got_all, mut starved, mut gaps, mut back) = (0u64, 0u64, 0, 0, 0);
    for j in joined.iter().filter(|j| connected(j)) {
        let c = j.client.as_ref().unwrap();
        let (mut sent, mut got) = (0u64, 0u64);
        for (_, st) in c.streams() {
            gaps += st.seq_gaps;
            back += st.ts_backwards;
            for (tag, (lo, hi)) in &st.counters {
                sent += (hi - lo) as u64 + 1;
                got += st.from.get(tag).copied().unwrap_or(0);
            }
        }
        let expected = expect_streams(j);
        if expected == 0 {
            continue;
        }
        if got == 0 {
            starved += 1;
        }
        let got = got.min(sent);
        sent_all += sent;
        got_all += got;
        losses.push(if sent == 0 {
            1.0
        } else {
            1.0 - got as f64 / sent as f64
        });
    }
    let loss_dist = Dist::of(losses.clone());
    let streams_expected: usize = joined
        .iter()
        .filter(|j| connected(j))
        .map(expect_streams)
        .sum();
    let expected_pps = streams_expected as f64 * 50.0;
    let pps = (rx1 - rx0) as f64 / window;
    report.forwarding = Some(Forwarding {
        window_s: window,
        streams_expected,
        packets_received: rx1 - rx0,
        packets_per_s: pps,
        expected_per_s: expected_pps,
        delivery: if expected_pps > 0.0 {
            pps / expected_pps
        } else {
            0.0
        },
        latency: Dist::of(latency),
        sfu_delay: delay0.zip(delay1).map(|(d0, d1)| {
            let mut d = DelayHistogram {
                counts: d1
                    .counts
                    .iter()
                    .enumerate()
                    .map(|(i, c)| c.saturating_sub(d0.counts.get(i).copied().unwrap_or(0)))
                    .collect(),
                sum_us: d1.sum_us.saturating_sub(d0.sum_us),
            };
            d.counts.truncate(DELAY_BUCKETS_US.len() + 1);
            let ms = |q| d.quantile_bound(q).map(|us| us as f64 / 1e3);
            SfuDelay {
                n: d.count(),
                mean_ms: if d.count() > 0 {
                    d.sum_us as f64 / d.count() as f64 / 1e3
                } else {
                    0.0
                },
                p50_le_ms: ms(0.5),
                p99_le_ms: ms(0.99),
                p999_le_ms: ms(0.999),
            }
        }),
        loss: Loss {
            listeners: losses.len(),
            overall: if sent_all > 0 {
                1.0 - got_all as f64 / sent_all as f64
            } else {
                0.0
            },
            mean: loss_dist.mean,
            p50: loss_dist.p50,
            max: loss_dist.max,
            listeners_over_0_1pct: losses.iter().filter(|l| **l > 0.001).count(),
            starved,
            seq_gaps: gaps,
            ts_backwards: back,
        },
    });
    report.loadgen_cpu_s = me1.cpu_s - me0.cpu_s;
    report.loadgen_cores_busy = report.loadgen_cpu_s / window;

    if let (Some(s0), Some(s1), Some(pid)) = (&s0, &s1, server.front_pid) {
        let front_cpu = s1.front.cpu_s - s0.front.cpu_s;
        let workers_cpu = s1.workers_cpu_since(s0);
        let rx = (rx1 - rx0) as f64;
        let peers = clients
            .iter()
            .filter(|c| c.connected_at().is_some())
            .count();
        let front_before = before.as_ref().map_or(0, |b| b.front.rss_kib);
        let mem = s1.front.rss_kib.saturating_sub(front_before) + s1.workers_sum(|w| w.rss_kib);
        report.server = Some(ServerReport {
            front_pid: pid,
            workers: s1.workers.len(),
            window_s: window,
            front_cpu_s: front_cpu,
            workers_cpu_s: workers_cpu,
            cores_busy: (front_cpu + workers_cpu) / window,
            cpu_us_per_packet: (rx > 0.0).then(|| (front_cpu + workers_cpu) * 1e6 / rx),
            front_rss_kib: s1.front.rss_kib,
            front_peak_rss_kib: s1.front.hwm_kib,
            front_rss_before_kib: front_before,
            workers_rss_kib: s1.workers_sum(|w| w.rss_kib),
            workers_peak_rss_kib: s1.workers_sum(|w| w.hwm_kib),
            rss_per_peer_kib: (peers > 0).then(|| mem as f64 / peers as f64),
            workers_pss_kib: s1.workers_sum(|w| w.pss_kib),
            pss_per_peer_kib: (peers > 0).then(|| {
                (s1.front.rss_kib.saturating_sub(front_before) + s1.workers_sum(|w| w.pss_kib))
                    as f64
                    / peers as f64
            }),
            front_threads: s1.front.threads,
            workers_threads: s1.workers_sum(|w| w.threads),
            cpu_busy: jiffies0
                .iter()
                .zip(&jiffies1)
                .map(|(a, b)| match (a, b) {
                    (Some((b0, i0)), Some((b1, i1))) => {
                        let busy = (b1 - b0) as f64;
                        busy / (busy + (i1 - i0) as f64).max(1.0)
                    }
                    _ => 0.0,
                })
                .collect(),
        });
    }

    let records: Vec<JoinRecord> = joined
        .iter()
        .map(|j| {
            let mut r = j.record.clone();
            if let Some(c) = &j.client {
                r.ws_open_to_ice_connected_ms = c.ice_connected_at().map(|t| ms(t - c.ws_open_at));
                r.ws_open_to_connected_ms = c.connected_at().map(|t| ms(t - c.ws_open_at));
                r.ws_open_to_first_packet_ms = c.first_packet_at().map(|t| ms(t - c.ws_open_at));
            }
            r
        })
        .collect();
    // A warm joiner should hear the conversation's first member, who was already speaking.
    let expect_packet = |r: &JoinRecord| !r.spawn && o.speakers > 0 && o.slots > 0;
    report.joins = join_report(&records, expect_packet);
    for c in &clients {
        c.close().await;
    }
    Ok(())
}
