//! The report of a run: its structs (serialised as the JSON report, field for field), the
//! distributions in it ([`Dist`]), the join statistics both modes share, and the summary
//! printed at the end ([`print_summary`]).

use std::io::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::drops::Drops;
use super::hog::HogTarget;
use super::member::ClientKind;
use super::sample::cpu_count;
use crate::front::procfs::ProcSample;
use crate::tools::load::ticks::TickLateness;

/// A distribution summary, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Dist {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Dist {
    pub fn of(mut v: Vec<f64>) -> Dist {
        if v.is_empty() {
            return Dist::default();
        }
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[(((v.len() as f64) * p).ceil() as usize).clamp(1, v.len()) - 1];
        Dist {
            n: v.len(),
            p50: q(0.50),
            p95: q(0.95),
            p99: q(0.99),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }

    fn line(&self) -> String {
        if self.n == 0 {
            return "n=0".into();
        }
        format!(
            "p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1} ms  (n={})",
            self.p50, self.p95, self.p99, self.max, self.n
        )
    }
}

/// A duration in milliseconds, as the report has them.
pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[derive(Debug, Default, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub loadgen_affinity: String,
    /// CPUs in `loadgen_affinity`: the cores the clients may use.
    pub loadgen_cpus: usize,
}

impl Machine {
    pub(super) fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let affinity = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("Cpus_allowed_list:")
                    .map(|x| x.trim().to_string())
            })
            .unwrap_or_default();
        Machine {
            loadgen_cpus: super::hog::parse_cpu_list(&affinity).map_or(0, |c| c.len()),
            cpus: cpu_count(),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|x| x.trim_start_matches([' ', '\t', ':']).to_string())
                .unwrap_or_default(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            loadgen_affinity: affinity,
        }
    }
}

/// One client's join, timed on the client (`Instant`s).
#[derive(Clone, Debug, Serialize)]
pub struct JoinRecord {
    pub client: usize,
    pub conversation: String,
    pub speaker: bool,
    /// The first member of its conversation: the join starts the worker.
    pub spawn: bool,
    pub error: Option<String>,
    /// Client-side: WebSocket handshake, peer connection, offer, local gathering.
    pub ws_connect_ms: f64,
    pub ws_open_to_offer_ms: f64,
    /// Offer frame sent → answer frame received: the server's share of the join.
    pub offer_to_answer_ms: f64,
    pub ws_open_to_answer_ms: f64,
    /// ICE connectivity checks done (DTLS not yet).
    pub ws_open_to_ice_connected_ms: Option<f64>,
    /// Peer connection `connected`: ICE and DTLS (our webrtc-rs client is the DTLS client,
    /// which costs ~200 ms, a crate quirk: see RECIPES "Answer as DTLS server").
    pub ws_open_to_connected_ms: Option<f64>,
    pub ws_open_to_first_packet_ms: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct JoinDists {
    pub count: usize,
    pub offer_to_answer: Dist,
    pub ws_open_to_offer: Dist,
    pub ws_open_to_answer: Dist,
    pub ws_open_to_ice_connected: Dist,
    pub ws_open_to_connected: Dist,
    pub ws_open_to_first_packet: Dist,
    /// Answered but never connected / never heard the speakers that were there.
    pub not_connected: usize,
    pub no_first_packet: usize,
}

impl JoinDists {
    fn of<'a>(
        recs: impl Iterator<Item = &'a JoinRecord>,
        expect_packet: impl Fn(&JoinRecord) -> bool,
    ) -> JoinDists {
        let recs: Vec<&JoinRecord> = recs.filter(|r| r.error.is_none()).collect();
        let get = |f: &dyn Fn(&JoinRecord) -> Option<f64>| {
            Dist::of(recs.iter().filter_map(|r| f(r)).collect())
        };
        JoinDists {
            count: recs.len(),
            offer_to_answer: get(&|r| Some(r.offer_to_answer_ms)),
            ws_open_to_offer: get(&|r| Some(r.ws_open_to_offer_ms)),
            ws_open_to_answer: get(&|r| Some(r.ws_open_to_answer_ms)),
            ws_open_to_ice_connected: get(&|r| r.ws_open_to_ice_connected_ms),
            ws_open_to_connected: get(&|r| r.ws_open_to_connected_ms),
            ws_open_to_first_packet: get(&|r| {
                r.ws_open_to_first_packet_ms.filter(|_| expect_packet(r))
            }),
            not_connected: recs
                .iter()
                .filter(|r| r.ws_open_to_connected_ms.is_none())
                .count(),
            no_first_packet: recs
                .iter()
                .filter(|r| expect_packet(r) && r.ws_open_to_first_packet_ms.is_none())
                .count(),
        }
    }

    fn print(&self, name: &str) {
        if self.count == 0 {
            return;
        }
        println!("  {name} joins: {}", self.count);
        println!(
            "    ws open → offer sent      {}",
            self.ws_open_to_offer.line()
        );
        println!(
            "    offer → answer (server)   {}",
            self.offer_to_answer.line()
        );
        println!(
            "    ws open → answer          {}",
            self.ws_open_to_answer.line()
        );
        println!(
            "    ws open → ICE connected   {}",
            self.ws_open_to_ice_connected.line()
        );
        println!(
            "    ws open → DTLS connected  {}",
            self.ws_open_to_connected.line()
        );
        println!(
            "    ws open → first packet    {}",
            self.ws_open_to_first_packet.line()
        );
        if self.not_connected + self.no_first_packet > 0 {
            println!(
                "    never connected: {}, connected but heard nothing: {}",
                self.not_connected, self.no_first_packet
            );
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct JoinReport {
    pub attempted: usize,
    pub answered: usize,
    pub failed: usize,
    /// Distinct failure messages, with counts.
    pub errors: Vec<(String, usize)>,
    pub spawn: JoinDists,
    pub warm: JoinDists,
}

#[derive(Debug, Default, Serialize)]
pub struct Loss {
    pub listeners: usize,
    /// Over all listeners: 1 − received/sent in the window, by the probe counters of each
    /// sender heard, over all of the listener's slots (sent: how far that sender's counter
    /// advanced). Sequence gaps and timestamps backwards count since each stream began.
    pub overall: f64,
    pub mean: f64,
    pub p50: f64,
    pub max: f64,
    pub listeners_over_0_1pct: usize,
    /// Listeners that expected audio (a speaker and a slot were there) and got none.
    pub starved: usize,
    pub seq_gaps: u64,
    pub ts_backwards: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Forwarding {
    pub window_s: f64,
    pub streams_expected: usize,
    pub packets_received: u64,
    pub packets_per_s: f64,
    /// 50 × expected streams.
    pub expected_per_s: f64,
    pub delivery: f64,
    /// One-way, loadgen sender → SFU → loadgen listener, in the window: bounds the latency
    /// the SFU adds from above (it includes both clients' webrtc stacks and loopback).
    pub latency: Dist,
    /// Inside the SFU only: the workers' own measurement (datagram read → sent), from
    /// `/metrics` before and after the window (the workers report every 2 s).
    pub sfu_delay: Option<SfuDelay>,
    pub loss: Loss,
}

/// Quantiles of a histogram are bucket bounds: "at most".
#[derive(Debug, Default, Serialize)]
pub struct SfuDelay {
    pub n: u64,
    pub mean_ms: f64,
    pub p50_le_ms: Option<f64>,
    pub p99_le_ms: Option<f64>,
    pub p999_le_ms: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct ServerReport {
    pub front_pid: u32,
    pub workers: usize,
    pub window_s: f64,
    pub front_cpu_s: f64,
    pub workers_cpu_s: f64,
    /// (front + workers CPU seconds) / window: cores busy.
    pub cores_busy: f64,
    /// (front + workers CPU µs) / packets received by listeners.
    pub cpu_us_per_packet: Option<f64>,
    pub front_rss_kib: u64,
    pub front_peak_rss_kib: u64,
    pub front_rss_before_kib: u64,
    pub workers_rss_kib: u64,
    /// Sum of each worker's own peak.
    pub workers_peak_rss_kib: u64,
    /// (front growth since before the first join + all workers) / connected peers.
    pub rss_per_peer_kib: Option<f64>,
    pub workers_pss_kib: u64,
    /// As `rss_per_peer_kib`, with the workers' PSS instead of their RSS.
    pub pss_per_peer_kib: Option<f64>,
    pub front_threads: u64,
    pub workers_threads: u64,
    /// Busy share of each CPU over the window (all processes, irq included).
    pub cpu_busy: Vec<f64>,
}

/// Everything one measurement window measured.
#[derive(Debug, Default, Serialize)]
pub struct WindowReport {
    pub forwarding: Forwarding,
    pub server: Option<ServerReport>,
    pub loadgen_cpu_s: f64,
    pub loadgen_cores_busy: f64,
    /// How late the speakers' send ticks ran: whether the clients kept up.
    pub send_ticks: TickLateness,
    pub drops: Drops,
}

/// The contention run: the report's own window was quiet; this one had the hogs.
#[derive(Debug, Serialize)]
pub struct Contention {
    pub hog: HogTarget,
    pub hog_cpus: Vec<usize>,
    pub hogs_per_cpu: usize,
    /// After starting the hogs, before the window.
    pub settle_s: f64,
    pub hogged: WindowReport,
}

#[derive(Debug, Default, Serialize)]
pub struct ProcDelta {
    pub rss_kib: i64,
    pub fds: i64,
    pub threads: i64,
}

#[derive(Debug, Default, Serialize)]
pub struct Snapshot {
    pub front: ProcSample,
    pub workers: Vec<ProcSample>,
    pub sessions: Option<f64>,
    pub peers: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct ChurnReport {
    pub cycles: usize,
    pub ok: usize,
    pub failed: usize,
    pub warmup_cycles: usize,
    pub elapsed_s: f64,
    pub rounds: usize,
    pub before: Snapshot,
    /// After each round of `cycles`, once settled.
    pub after_round: Vec<Snapshot>,
    pub after: Snapshot,
    pub front_delta: ProcDelta,
    /// Only when the same workers are there before and after (warm mode).
    pub workers_delta: Option<ProcDelta>,
    /// Seconds after the last cycle until `/metrics` showed the sessions back at their level before.
    pub settle_s: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub mode: String,
    pub command: Vec<String>,
    pub machine: Machine,
    pub clients: usize,
    pub conversations: usize,
    pub speakers: usize,
    pub slots: usize,
    pub joins: JoinReport,
    pub forwarding: Option<Forwarding>,
    pub server: Option<ServerReport>,
    pub loadgen_cpu_s: f64,
    pub loadgen_cores_busy: f64,
    /// Which client loadgen ran.
    pub client: ClientKind,
    /// Load mode: how late the speakers' send ticks ran in the window.
    pub send_ticks: Option<TickLateness>,
    /// Load mode: every drop counter over the window.
    pub drops: Option<Drops>,
    /// `--contention`: the same point measured again with CPU hogs.
    pub contention: Option<Contention>,
    pub churn: Option<ChurnReport>,
    pub front_log: String,
}

/// The joins of a run: counts, distinct errors, and the spawn and warm distributions.
pub(super) fn join_report(
    records: &[JoinRecord],
    expect_packet: impl Fn(&JoinRecord) -> bool,
) -> JoinReport {
    let mut errors: Vec<(String, usize)> = Vec::new();
    for e in records.iter().filter_map(|r| r.error.as_ref()) {
        match errors.iter_mut().find(|(m, _)| m == e) {
            Some((_, n)) => *n += 1,
            None => errors.push((e.clone(), 1)),
        }
    }
    JoinReport {
        attempted: records.len(),
        answered: records.iter().filter(|r| r.error.is_none()).count(),
        failed: records.iter().filter(|r| r.error.is_some()).count(),
        errors,
        spawn: JoinDists::of(records.iter().filter(|r| r.spawn), &expect_packet),
        warm: JoinDists::of(records.iter().filter(|r| !r.spawn), &expect_packet),
    }
}

/// Prints the human summary of a run (the JSON report carries the same numbers).
pub fn print_summary(r: &Report) {
    print_header(r);
    let j = &r.joins;
    j.spawn.print("spawn (first member: worker starts)");
    j.warm.print("warm (worker running)");
    if let Some(f) = &r.forwarding {
        print_forwarding(f);
    }
    if let Some(s) = &r.server {
        print_server(s);
    }
    if r.mode == "load" {
        print_loadgen_cpu(r);
    }
    if let Some(t) = &r.send_ticks {
        println!("  send ticks: {}", ticks_line(t));
    }
    if let Some(d) = &r.drops {
        print_drops(d);
    }
    if let Some(c) = &r.contention {
        print_contention(r, c);
    }
    if let Some(c) = &r.churn {
        print_churn(c);
    }
    if !r.front_log.is_empty() {
        println!("front log: {}", r.front_log);
    }
}

/// Prints the run's first lines: what ran where, and how the joins went.
fn print_header(r: &Report) {
    // Locked once so these lines come out together.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\n== loadgen {}: {} clients, {} conversations, {} speakers each, {} slots  ({} × {}, kernel {})",
        r.mode,
        r.clients,
        r.conversations,
        r.speakers,
        r.slots,
        r.machine.cpus,
        r.machine.cpu_model,
        r.machine.kernel
    );
    let j = &r.joins;
    let _ = writeln!(
        out,
        "joins: {} attempted, {} answered, {} failed",
        j.attempted, j.answered, j.failed
    );
    for (e, n) in j.errors.iter().take(5) {
        let _ = writeln!(out, "  {n} × {e}");
    }
}

/// Prints the forwarding block: rates, latency, the delay in the SFU and the loss.
fn print_forwarding(f: &Forwarding) {
    println!(
        "forwarding ({:.1} s window): {:.0} pkt/s received of {:.0} expected ({} streams), delivery {:.4}",
        f.window_s, f.packets_per_s, f.expected_per_s, f.streams_expected, f.delivery
    );
    println!(
        "  one-way latency (loadgen→SFU→loadgen)  {}",
        f.latency.line()
    );
    if let Some(d) = &f.sfu_delay {
        let le = |v: Option<f64>| v.map_or("> 50".to_string(), |v| format!("≤ {v}"));
        println!(
            "  in the SFU (worker: datagram read → sent)  mean {:.3}  p50 {}  p99 {}  p99.9 {} ms  (n={})",
            d.mean_ms,
            le(d.p50_le_ms),
            le(d.p99_le_ms),
            le(d.p999_le_ms),
            d.n
        );
    }
    println!(
        "  loss per listener: overall {:.4}%  mean {:.4}%  p50 {:.4}%  max {:.4}%  ({} listeners, {} over 0.1%, {} starved; seq gaps {}, ts backwards {})",
        100.0 * f.loss.overall,
        100.0 * f.loss.mean,
        100.0 * f.loss.p50,
        100.0 * f.loss.max,
        f.loss.listeners,
        f.loss.listeners_over_0_1pct,
        f.loss.starved,
        f.loss.seq_gaps,
        f.loss.ts_backwards
    );
}

/// Prints the server block: CPU, memory and threads of front and its workers.
fn print_server(s: &ServerReport) {
    println!(
        "server: front {:.2} s + {} workers {:.2} s CPU in {:.1} s = {:.3} cores; {} µs CPU per forwarded packet",
        s.front_cpu_s,
        s.workers,
        s.workers_cpu_s,
        s.window_s,
        s.cores_busy,
        s.cpu_us_per_packet
            .map_or("-".into(), |u| format!("{u:.2}"))
    );
    println!(
        "  RSS: front {} KiB (peak {}, before {}), workers {} KiB (peaks {}, PSS {}); {} KiB per peer (PSS {}); threads front {} workers {}",
        s.front_rss_kib,
        s.front_peak_rss_kib,
        s.front_rss_before_kib,
        s.workers_rss_kib,
        s.workers_peak_rss_kib,
        s.workers_pss_kib,
        s.rss_per_peer_kib.map_or("-".into(), |x| format!("{x:.0}")),
        s.pss_per_peer_kib.map_or("-".into(), |x| format!("{x:.0}")),
        s.front_threads,
        s.workers_threads
    );
    println!(
        "  CPU busy per core: {}",
        s.cpu_busy
            .iter()
            .enumerate()
            .map(|(i, b)| format!("cpu{i} {:.0}%", 100.0 * b))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Prints loadgen's own CPU, and per received packet when any were received.
fn print_loadgen_cpu(r: &Report) {
    println!(
        "loadgen ({} client): {:.2} s CPU = {:.3} cores{}",
        match r.client {
            ClientKind::Full => "full",
            ClientKind::Light => "light",
        },
        r.loadgen_cpu_s,
        r.loadgen_cores_busy,
        r.forwarding
            .as_ref()
            .filter(|f| f.packets_received > 0)
            .map_or(String::new(), |f| format!(
                "; {:.2} µs CPU per received packet",
                r.loadgen_cpu_s * 1e6 / f.packets_received as f64
            ))
    );
}

/// Prints the churn block: cycles, and each process's RSS, fds and threads before and after.
fn print_churn(c: &ChurnReport) {
    println!(
        "churn: {} cycles ({} ok, {} failed) in {:.1} s after {} warm-up cycles; settled in {}",
        c.cycles,
        c.ok,
        c.failed,
        c.elapsed_s,
        c.warmup_cycles,
        c.settle_s
            .map_or("(timed out)".into(), |s| format!("{s:.1} s"))
    );
    let p = |name: &str, b: &ProcSample, a: &ProcSample| {
        println!(
            "  {name}: RSS {} → {} KiB, fds {} → {}, threads {} → {}",
            b.rss_kib, a.rss_kib, b.fds, a.fds, b.threads, a.threads
        )
    };
    p("front", &c.before.front, &c.after.front);
    for (i, (b, a)) in c.before.workers.iter().zip(&c.after.workers).enumerate() {
        p(&format!("worker {i}"), b, a);
    }
    for (i, r) in c.after_round.iter().enumerate() {
        println!(
            "  after round {}: front RSS {} KiB fds {} threads {}; workers RSS {} KiB fds {} threads {}",
            i + 1,
            r.front.rss_kib,
            r.front.fds,
            r.front.threads,
            r.workers.iter().map(|w| w.rss_kib).sum::<u64>(),
            r.workers.iter().map(|w| w.fds).sum::<u64>(),
            r.workers.iter().map(|w| w.threads).sum::<u64>()
        );
    }
    println!(
        "  sessions {:?} → {:?}, peers {:?} → {:?}, workers {} → {}",
        c.before.sessions,
        c.after.sessions,
        c.before.peers,
        c.after.peers,
        c.before.workers.len(),
        c.after.workers.len()
    );
}

fn le_ms(v: Option<f64>) -> String {
    v.map_or("> 100".to_string(), |v| format!("≤ {v}"))
}

fn ticks_line(t: &TickLateness) -> String {
    format!(
        "{:.0}/s, late mean {:.3} p50 {} p99 {} p99.9 {} ms; {} over 5 ms, {} over 20 ms",
        t.ticks_per_s,
        t.mean_ms,
        le_ms(t.p50_le_ms),
        le_ms(t.p99_le_ms),
        le_ms(t.p999_le_ms),
        t.over_5ms,
        t.over_20ms
    )
}

fn print_drops(d: &Drops) {
    let metrics: Vec<String> = d
        .metrics
        .iter()
        .map(|m| format!("{} +{}", m.series, m.delta))
        .collect();
    println!(
        "  drops: kernel UDP at the workers' {} sockets +{} (total {}), at loadgen's {} sockets +{}; /metrics: {}",
        d.sfu_udp.sockets,
        d.sfu_udp.drops,
        d.sfu_udp.total,
        d.loadgen_udp.sockets,
        d.loadgen_udp.drops,
        if metrics.is_empty() {
            "(no drop series)".to_string()
        } else {
            metrics.join(", ")
        }
    );
}

fn print_contention(r: &Report, c: &Contention) {
    println!(
        "contention: quiet window above; then {} hog(s) per CPU on {:?} ({})",
        c.hogs_per_cpu,
        c.hog_cpus,
        match c.hog {
            HogTarget::Sfu => "the SFU's CPUs",
            HogTarget::Clients => "loadgen's CPUs",
            HogTarget::Both => "the SFU's and loadgen's CPUs",
        }
    );
    let cpus = r.machine.loadgen_cpus.max(1) as f64;
    let quiet = r.forwarding.as_ref().map(|f| {
        (
            f.delivery,
            f.loss.overall,
            r.loadgen_cores_busy,
            r.server.as_ref().map(|s| s.cores_busy),
            r.send_ticks.as_ref(),
        )
    });
    let h = &c.hogged;
    let row = |name: &str,
               (delivery, loss, lg, sfu, ticks): (
        f64,
        f64,
        f64,
        Option<f64>,
        Option<&TickLateness>,
    )| {
        println!(
            "  {name:6} delivery {delivery:.4}  loss {:.3}%  SFU {} cores  loadgen {lg:.3} cores ({:.0}% of its {cpus} CPU{})  send ticks p99 late {} ms, {:.0}/s",
            100.0 * loss,
            sfu.map_or("-".into(), |c| format!("{c:.3}")),
            100.0 * lg / cpus,
            if cpus > 1.0 { "s" } else { "" },
            le_ms(ticks.and_then(|t| t.p99_le_ms)),
            ticks.map_or(0.0, |t| t.ticks_per_s),
        );
    };
    if let Some(q) = quiet {
        row("quiet", q);
    }
    row(
        "hogged",
        (
            h.forwarding.delivery,
            h.forwarding.loss.overall,
            h.loadgen_cores_busy,
            h.server.as_ref().map(|s| s.cores_busy),
            Some(&h.send_ticks),
        ),
    );
    println!(
        "  hogged: {:.0} pkt/s of {:.0} expected; one-way latency {}",
        h.forwarding.packets_per_s,
        h.forwarding.expected_per_s,
        h.forwarding.latency.line()
    );
    if let Some(d) = &h.forwarding.sfu_delay {
        println!(
            "  hogged: in the SFU mean {:.3} p99 {} ms",
            d.mean_ms,
            d.p99_le_ms.map_or("> 50".to_string(), |v| format!("≤ {v}"))
        );
    }
    println!("  hogged send ticks: {}", ticks_line(&h.send_ticks));
    print_drops(&h.drops);
}
