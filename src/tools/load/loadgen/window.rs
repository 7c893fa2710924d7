//! One measurement window of load mode, from its start to its end: packets received and
//! expected, loss per listener (by the probe counters, of this window only), one-way latency,
//! the delay inside the SFU, the CPU and memory of front and its workers and of loadgen, how
//! late the send ticks ran, and every drop counter. A contention run measures two windows
//! back to back with the same clients, so everything a window reports is its own.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::drops::{Drops, UdpDrops, UdpSockets, metric_deltas, metric_drops};
use super::member::Member;
use super::options::Options;
use super::report::{Dist, Forwarding, Loss, ServerReport, SfuDelay, WindowReport};
use super::sample::{ServerSample, cpu_count, cpu_jiffies};
use super::server::Server;
use crate::front::procfs::{ProcSample, proc_sample};
use crate::tools::load::ticks::{SendTicks, TickSnapshot};
use crate::wire::stats::{DELAY_BUCKETS_US, DelayHistogram};

/// A member of the run as the window sees it.
pub(super) struct Listener<'a> {
    pub(super) conversation: usize,
    pub(super) speaker: bool,
    pub(super) member: &'a Member,
}

/// Per sender tag, over all of a listener's slots: packets heard, lowest and highest probe
/// counter. By tag, not by slot stream: a speaker who moves to another slot (the selection
/// switched) is still one sender whose counter runs on.
type Heard = HashMap<String, (u64, u32, u32)>;

fn heard(m: &Member) -> Heard {
    let mut h = Heard::new();
    for (_, st) in m.streams() {
        for (tag, (lo, hi)) in &st.counters {
            let got = st.from.get(tag).copied().unwrap_or(0);
            let e = h.entry(tag.clone()).or_insert((0, *lo, *hi));
            e.0 += got;
            e.1 = e.1.min(*lo);
            e.2 = e.2.max(*hi);
        }
    }
    h
}

/// What was read when the window opened.
pub(super) struct Start {
    t0: Instant,
    me: ProcSample,
    jiffies: Vec<Option<(u64, u64)>>,
    server: Option<ServerSample>,
    delay: Option<DelayHistogram>,
    rx: u64,
    heard: Vec<Heard>,
    ticks: TickSnapshot,
    metric_drops: std::collections::BTreeMap<String, f64>,
    sfu_udp: UdpSockets,
    loadgen_udp: UdpSockets,
}

fn worker_pids(s: &Option<ServerSample>) -> Vec<u32> {
    let mut pids: Vec<u32> = s
        .as_ref()
        .map(|s| s.workers.keys().copied().collect())
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// Opens a window: forgets the latency samples so far and reads every counter.
pub(super) async fn start(server: &Server, members: &[Listener<'_>], ticks: &SendTicks) -> Start {
    for l in members {
        l.member.reset_latency();
    }
    let me = proc_sample(std::process::id()).unwrap_or_default();
    let jiffies = (0..cpu_count()).map(cpu_jiffies).collect();
    let s = server.sample();
    let metrics = server.metrics_text().await.unwrap_or_default();
    let delay = server.forward_delay().await;
    let sfu_udp = UdpSockets::of(&worker_pids(&s));
    let loadgen_udp = UdpSockets::of(&[std::process::id()]);
    Start {
        heard: members.iter().map(|l| heard(l.member)).collect(),
        rx: members.iter().map(|l| l.member.packets_received()).sum(),
        ticks: ticks.snapshot(),
        metric_drops: metric_drops(&metrics),
        t0: Instant::now(),
        me,
        jiffies,
        server: s,
        delay,
        sfu_udp,
        loadgen_udp,
    }
}

/// What was read when the window closed: the same counters as [`Start`], read again.
struct End {
    t1: Instant,
    rx: u64,
    ticks: TickSnapshot,
    server: Option<ServerSample>,
    metrics: String,
    delay: Option<DelayHistogram>,
    sfu_udp: UdpSockets,
    loadgen_udp: UdpSockets,
    jiffies: Vec<Option<(u64, u64)>>,
    me: ProcSample,
}

/// Reads every counter at the window's close, in the order [`finish`] always read them (the
/// packets first, so the rate's numerator and the clock are read together).
async fn end(server: &Server, members: &[Listener<'_>], ticks: &SendTicks) -> End {
    let rx = members.iter().map(|l| l.member.packets_received()).sum();
    let t1 = Instant::now();
    let ticks = ticks.snapshot();
    let s1 = server.sample();
    let metrics = server.metrics_text().await.unwrap_or_default();
    let delay = server.forward_delay().await;
    let sfu_udp = UdpSockets::of(&worker_pids(&s1));
    let loadgen_udp = UdpSockets::of(&[std::process::id()]);
    let jiffies = (0..cpu_count()).map(cpu_jiffies).collect();
    let me = proc_sample(std::process::id()).unwrap_or_default();
    End {
        t1,
        rx,
        ticks,
        server: s1,
        metrics,
        delay,
        sfu_udp,
        loadgen_udp,
        jiffies,
        me,
    }
}

/// Closes a window opened by [`start`]: everything it measured. `before` is the server
/// sample from before the first join (front's memory growth is counted from it).
pub(super) async fn finish(
    o: &Options,
    start: Start,
    server: &Server,
    members: &[Listener<'_>],
    ticks: &SendTicks,
    before: Option<&ServerSample>,
) -> anyhow::Result<WindowReport> {
    let end = end(server, members, ticks).await;
    let window = (end.t1 - start.t0).as_secs_f64();
    if let Some(pid) = server.front_pid
        && proc_sample(pid).is_none()
    {
        bail!("front (pid {pid}) is gone: it exited or was killed during the run");
    }
    let forwarding = forwarding(o, &start, &end, members, window);
    let server_report = server_report(&start, &end, server.front_pid, members, window, before);
    let loadgen_cpu_s = end.me.cpu_s - start.me.cpu_s;
    Ok(WindowReport {
        forwarding,
        server: server_report,
        loadgen_cpu_s,
        loadgen_cores_busy: loadgen_cpu_s / window,
        send_ticks: end.ticks.since(&start.ticks, window),
        drops: Drops {
            metrics: metric_deltas(&start.metric_drops, &metric_drops(&end.metrics)),
            sfu_udp: UdpDrops::between(&start.sfu_udp, &end.sfu_udp),
            loadgen_udp: UdpDrops::between(&start.loadgen_udp, &end.loadgen_udp),
        },
    })
}

/// Whether a member's peer connection came up (only those count as listeners or speakers).
fn connected(l: &Listener) -> bool {
    l.member.connected_at().is_some()
}

/// Who should have heard how many streams: min(slots, connected speakers other than me).
struct Expected {
    slots: usize,
    speakers_in: HashMap<usize, usize>,
}

impl Expected {
    /// Counts the connected speakers of each conversation.
    fn of(members: &[Listener<'_>], slots: usize) -> Expected {
        let mut speakers_in: HashMap<usize, usize> = HashMap::new();
        for l in members.iter().filter(|l| l.speaker && connected(l)) {
            *speakers_in.entry(l.conversation).or_default() += 1;
        }
        Expected { slots, speakers_in }
    }

    /// How many streams `l` should hear.
    fn streams(&self, l: &Listener) -> usize {
        let others = self.speakers_in.get(&l.conversation).copied().unwrap_or(0)
            - usize::from(l.speaker && connected(l));
        others.min(self.slots)
    }
}

/// The listeners' probe counts over the window: each listener's loss, and the totals.
#[derive(Default)]
struct LossTally {
    losses: Vec<f64>,
    sent_all: u64,
    got_all: u64,
    starved: usize,
    gaps: u64,
    back: u64,
}

/// Tallies the loss of every connected listener that should have heard someone, and the
/// sequence gaps and backward timestamps of every connected member.
fn tally_losses(start: &Start, members: &[Listener<'_>], expected: &Expected) -> LossTally {
    let mut t = LossTally::default();
    for (i, l) in members.iter().enumerate().filter(|(_, l)| connected(l)) {
        let streams = l.member.streams();
        for (_, st) in &streams {
            t.gaps += st.seq_gaps;
            t.back += st.ts_backwards;
        }
        if expected.streams(l) == 0 {
            continue;
        }
        let (sent, got) = window_probes(&start.heard[i], heard(l.member));
        if got == 0 {
            t.starved += 1;
        }
        let got = got.min(sent);
        t.sent_all += sent;
        t.got_all += got;
        t.losses.push(if sent == 0 {
            1.0
        } else {
            1.0 - got as f64 / sent as f64
        });
    }
    t
}

/// This window's share of each sender's probes, summed over senders: counters advanced,
/// packets heard (a sender first heard in this window counts from its lowest counter).
fn window_probes(earlier: &Heard, now: Heard) -> (u64, u64) {
    let (mut sent, mut got) = (0u64, 0u64);
    for (key, (got1, lo1, hi1)) in now {
        match earlier.get(&key) {
            Some((got0, _, hi0)) => {
                sent += u64::from(hi1.wrapping_sub(*hi0));
                got += got1.saturating_sub(*got0);
            }
            None => {
                sent += u64::from(hi1.wrapping_sub(lo1)) + 1;
                got += got1;
            }
        }
    }
    (sent, got)
}

/// The forwarding half of the report: rates, latency, the SFU's delay and the loss.
fn forwarding(
    o: &Options,
    start: &Start,
    end: &End,
    members: &[Listener<'_>],
    window: f64,
) -> Forwarding {
    let latency: Vec<f64> = members
        .iter()
        .flat_map(|l| l.member.streams())
        .flat_map(|(_, st)| st.latency_us.into_iter().map(|u| u as f64 / 1e3))
        .collect();
    let expected = Expected::of(members, o.slots);
    let t = tally_losses(start, members, &expected);
    let loss_dist = Dist::of(t.losses.clone());
    let streams_expected: usize = members
        .iter()
        .filter(|l| connected(l))
        .map(|l| expected.streams(l))
        .sum();
    let expected_pps = streams_expected as f64 * 50.0;
    let pps = (end.rx - start.rx) as f64 / window;
    Forwarding {
        window_s: window,
        streams_expected,
        packets_received: end.rx - start.rx,
        packets_per_s: pps,
        expected_per_s: expected_pps,
        delivery: if expected_pps > 0.0 {
            pps / expected_pps
        } else {
            0.0
        },
        latency: Dist::of(latency),
        sfu_delay: start
            .delay
            .as_ref()
            .zip(end.delay.as_ref())
            .map(|(d0, d1)| sfu_delay(d0, d1)),
        loss: Loss {
            listeners: t.losses.len(),
            overall: if t.sent_all > 0 {
                1.0 - t.got_all as f64 / t.sent_all as f64
            } else {
                0.0
            },
            mean: loss_dist.mean,
            p50: loss_dist.p50,
            max: loss_dist.max,
            listeners_over_0_1pct: t.losses.iter().filter(|l| **l > 0.001).count(),
            starved: t.starved,
            seq_gaps: t.gaps,
            ts_backwards: t.back,
        },
    }
}

/// The server half of the report: CPU, memory and threads of front and its workers, when
/// both samples and front's pid are known.
fn server_report(
    start: &Start,
    end: &End,
    front_pid: Option<u32>,
    members: &[Listener<'_>],
    window: f64,
    before: Option<&ServerSample>,
) -> Option<ServerReport> {
    let (Some(s0), Some(s1), Some(pid)) = (&start.server, &end.server, front_pid) else {
        return None;
    };
    let front_cpu = s1.front.cpu_s - s0.front.cpu_s;
    let workers_cpu = s1.workers_cpu_since(s0);
    let rx = (end.rx - start.rx) as f64;
    let peers = members.iter().filter(|l| connected(l)).count();
    let front_before = before.map_or(0, |b| b.front.rss_kib);
    let mem = s1.front.rss_kib.saturating_sub(front_before) + s1.workers_sum(|w| w.rss_kib);
    Some(ServerReport {
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
            (s1.front.rss_kib.saturating_sub(front_before) + s1.workers_sum(|w| w.pss_kib)) as f64
                / peers as f64
        }),
        front_threads: s1.front.threads,
        workers_threads: s1.workers_sum(|w| w.threads),
        cpu_busy: cpu_busy(&start.jiffies, &end.jiffies),
    })
}

/// Each CPU's busy share between two jiffy readings (0 where either reading failed).
fn cpu_busy(j0: &[Option<(u64, u64)>], j1: &[Option<(u64, u64)>]) -> Vec<f64> {
    j0.iter()
        .zip(j1)
        .map(|(a, b)| match (a, b) {
            (Some((b0, i0)), Some((b1, i1))) => {
                let busy = (b1 - b0) as f64;
                busy / (busy + (i1 - i0) as f64).max(1.0)
            }
            _ => 0.0,
        })
        .collect()
}

/// The workers' forwarding delay between two cumulative histograms.
fn sfu_delay(d0: &DelayHistogram, d1: &DelayHistogram) -> SfuDelay {
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
}

/// Waits `secs` (a window's length, or a settling pause).
pub(super) async fn wait(secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0))).await;
}
