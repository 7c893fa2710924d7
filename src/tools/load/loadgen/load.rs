//! Load mode: N clients (full or light, `--client`) in M conversations, the first S of each
//! speaking; joins in two phases (the first member of each conversation, which starts its
//! worker, then the rest over the ramp-up), a warm-up, then a measured steady-state window
//! ([`super::window`]): forwarding, latency, loss, drops, and the CPU and memory of front,
//! the workers and loadgen itself. With `--contention`, a second window with CPU hogs
//! ([`super::hog`]) follows at once, with the same clients.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::hog::{HogTarget, Hogs, target_cpus};
use super::member::{ClientKind, Member};
use super::options::Options;
use super::report::{Contention, JoinRecord, Report, WindowReport, join_report, ms};
use super::sample::ServerSample;
use super::server::Server;
use super::window::{self, Listener};
use crate::front::procfs::proc_sample;
use crate::tools::load::light::LightDriver;
use crate::tools::load::ticks::SendTicks;

/// After starting the hogs, before the hogged window: the scheduler and the SFU's queues
/// settle into the contended state.
const HOG_SETTLE_S: f64 = 2.0;

/// A planned client of load mode.
struct Planned {
    index: usize,
    conversation: usize,
    speaker: bool,
    spawn: bool,
}

struct Joined {
    plan: Planned,
    client: Option<Arc<Member>>,
    record: JoinRecord,
}

/// Progress counters, shared with the progress printer.
#[derive(Default)]
struct Progress {
    joined: AtomicUsize,
    failed: AtomicUsize,
    clients: Mutex<Vec<Arc<Member>>>,
    phase: Mutex<String>,
}

/// What every join of a run shares: the options, the light clients' driver (when light),
/// the send ticks' record and the progress counters.
struct Ctx {
    o: Arc<Options>,
    driver: Option<LightDriver>,
    ticks: Arc<SendTicks>,
    samples: usize,
    progress: Arc<Progress>,
}

async fn join_one(ctx: Arc<Ctx>, url: String, plan: Planned) -> Joined {
    let (o, progress) = (&ctx.o, &ctx.progress);
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
    let mut co = o.client(url, user, ctx.samples);
    co.sends = plan.speaker;
    co.send_ticks = Some(ctx.ticks.clone());
    let connected = tokio::time::timeout(
        Duration::from_secs(40),
        Member::connect(o.client, ctx.driver.as_ref(), co),
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
    let t = client.timings();
    record.ws_connect_ms = ms(t.ws_open_at - t.started);
    record.ws_open_to_offer_ms = ms(t.offer_sent_at - t.ws_open_at);
    record.offer_to_answer_ms = ms(t.answer_at - t.offer_sent_at);
    record.ws_open_to_answer_ms = ms(t.answer_at - t.ws_open_at);
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

/// Load mode, against `server`; fills `report`'s joins, forwarding, server, drops and (with
/// `--contention`) contention sections.
pub(super) async fn load(o: &Options, server: &Server, report: &mut Report) -> anyhow::Result<()> {
    let before = server.sample();
    let samples = (((o.warmup + o.duration + 5.0) * 50.0) as usize).clamp(500, 200_000);
    let ticks = Arc::new(SendTicks::default());
    let ctx = Arc::new(Ctx {
        o: Arc::new(o.clone()),
        driver: (o.client == ClientKind::Light).then(|| LightDriver::spawn(Some(ticks.clone()))),
        ticks: ticks.clone(),
        samples,
        progress: Arc::new(Progress::default()),
    });
    report.client = o.client;
    let progress = ctx.progress.clone();
    let (printer, stop_printer) = spawn_progress(o, server, progress.clone(), o.clients);
    let joined = join_all(o, server, &ctx).await?;

    // Steady state.
    *progress.phase.lock().unwrap() = "warm-up".into();
    window::wait(o.warmup).await;
    let members = listeners(&joined);
    *progress.phase.lock().unwrap() = "measuring".into();
    let measuring = Measuring {
        o,
        server,
        members: &members,
        ticks: &ticks,
        before: before.as_ref(),
    };
    let quiet = measuring.window().await;
    let hogged = match (&quiet, o.contention) {
        (Ok(_), Some(target)) => {
            *progress.phase.lock().unwrap() = "hogged".into();
            Some(measuring.hogged(target).await)
        }
        _ => None,
    };
    *progress.phase.lock().unwrap() = "draining".into();
    for l in &members {
        l.member.stop_sending();
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop_printer.store(true, Ordering::Relaxed);
    let _ = printer.await;
    let quiet = quiet?;
    report.forwarding = Some(quiet.forwarding);
    report.server = quiet.server;
    report.loadgen_cpu_s = quiet.loadgen_cpu_s;
    report.loadgen_cores_busy = quiet.loadgen_cores_busy;
    report.send_ticks = Some(quiet.send_ticks);
    report.drops = Some(quiet.drops);
    report.contention = hogged.transpose()?;

    // A warm joiner should hear the conversation's first member, who was already speaking.
    let expect_packet = |r: &JoinRecord| !r.spawn && o.speakers > 0 && o.slots > 0;
    report.joins = join_report(&join_records(&joined), expect_packet);
    for l in &members {
        l.member.close().await;
    }
    Ok(())
}

/// Every client of the run: round-robin over the conversations, the first `speakers` of
/// each speaking, the first of each spawning its worker.
fn plan(o: &Options) -> Vec<Planned> {
    (0..o.clients)
        .map(|i| Planned {
            index: i,
            conversation: i % o.conversations,
            speaker: i / o.conversations < o.speakers,
            spawn: i < o.conversations,
        })
        .collect()
}

/// Joins every planned client, spread over the ramp-up: phase 1 the first member of each
/// conversation (worker spawn), phase 2 the rest.
async fn join_all(o: &Options, server: &Server, ctx: &Arc<Ctx>) -> anyhow::Result<Vec<Joined>> {
    let ramp = o.ramp.unwrap_or(o.clients as f64 / 20.0).max(0.0);
    let gap = Duration::from_secs_f64(ramp / o.clients as f64);
    let mut joined: Vec<Joined> = Vec::new();
    let (first, rest): (Vec<Planned>, Vec<Planned>) = plan(o).into_iter().partition(|p| p.spawn);
    for (name, phase) in [("spawn", first), ("warm", rest)] {
        *ctx.progress.phase.lock().unwrap() = name.into();
        let start = tokio::time::Instant::now();
        let mut handles = Vec::new();
        for (n, plan) in phase.into_iter().enumerate() {
            tokio::time::sleep_until(start + gap * n as u32).await;
            let url = server.ws(&format!("{}-{}", o.prefix, plan.conversation));
            handles.push(tokio::spawn(join_one(ctx.clone(), url, plan)));
        }
        for h in handles {
            joined.push(h.await?);
        }
    }
    Ok(joined)
}

/// The clients that joined, as the measurement windows see them.
fn listeners(joined: &[Joined]) -> Vec<Listener<'_>> {
    joined
        .iter()
        .filter_map(|j| {
            j.client.as_deref().map(|member| Listener {
                conversation: j.plan.conversation,
                speaker: j.plan.speaker,
                member,
            })
        })
        .collect()
}

/// What a measurement window reads from: the run's clients, its send ticks, and the server
/// sample from before the first join.
struct Measuring<'a> {
    o: &'a Options,
    server: &'a Server,
    members: &'a [Listener<'a>],
    ticks: &'a SendTicks,
    before: Option<&'a ServerSample>,
}

impl Measuring<'_> {
    /// Measures one window of `--duration` seconds.
    async fn window(&self) -> anyhow::Result<WindowReport> {
        let start = window::start(self.server, self.members, self.ticks).await;
        window::wait(self.o.duration).await;
        window::finish(
            self.o,
            start,
            self.server,
            self.members,
            self.ticks,
            self.before,
        )
        .await
    }

    /// Starts the CPU hogs on `target`'s CPUs, lets them settle, and measures a window.
    async fn hogged(&self, target: HogTarget) -> anyhow::Result<Contention> {
        let o = self.o;
        let cpus = target_cpus(target, o.front_cpus.as_deref())?;
        let hogs = Hogs::start(&cpus, o.hogs_per_cpu)?;
        window::wait(HOG_SETTLE_S).await;
        let w = self.window().await;
        drop(hogs);
        Ok(Contention {
            hog: target,
            hog_cpus: cpus,
            hogs_per_cpu: o.hogs_per_cpu,
            settle_s: HOG_SETTLE_S,
            hogged: w?,
        })
    }
}

/// The join records, completed with when each client's ICE connected, its peer connection
/// connected and its first packet came.
fn join_records(joined: &[Joined]) -> Vec<JoinRecord> {
    joined
        .iter()
        .map(|j| {
            let mut r = j.record.clone();
            if let Some(c) = &j.client {
                let ws_open_at = c.timings().ws_open_at;
                r.ws_open_to_ice_connected_ms = c.ice_connected_at().map(|t| ms(t - ws_open_at));
                r.ws_open_to_connected_ms = c.connected_at().map(|t| ms(t - ws_open_at));
                r.ws_open_to_first_packet_ms = c.first_packet_at().map(|t| ms(t - ws_open_at));
            }
            r
        })
        .collect()
}
