//! Load generator: many webrtc-rs clients ([`crate::loadtools::client`]) in one process, against a running
//! front or one it starts itself.
//!
//! *Load mode* puts N clients into M conversations (client `i` joins conversation `i % M`), the
//! first S members of each conversation speak (probe payloads at 50 packets/s, see
//! [`crate::loadtools::client::probe_payload`]), everyone offers K receive slots. Joins come in two phases:
//! the first member of every conversation (its join starts the conversation's worker: a *spawn*
//! join), then everyone else (the worker is up: a *warm* join), spread over the ramp-up time.
//! After a warm-up it measures a steady-state window: forwarded packets/s at the listeners,
//! one-way latency sender → SFU → listener, the delay inside the SFU (the workers' own
//! histogram, from `/metrics`), loss per listener, and the CPU seconds and memory of front and
//! every worker from `/proc`.
//!
//! *Churn mode* connects and closes clients many times (in one warm conversation with an anchor
//! speaker, or each in a new conversation) and compares front's and the workers' RSS, open fds
//! and threads before and after, once the server has let go of every closed session.
//!
//! Every wait has a deadline, and a front started here is stopped (SIGTERM, then SIGKILL of it
//! and its workers, by pid) whatever happens.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::Serialize;

use crate::front::procfs::{ProcSample, children_of, proc_sample};
use crate::loadtools::client::{Client, ClientOptions};
use crate::wire::stats::{DELAY_BUCKETS_US, DelayHistogram};

pub const USAGE: &str = "\
loadgen: many webrtc-rs clients against beep-webrtc; prints a summary and writes JSON.

Server (one of):
  --spawn-front             start front (and through it the workers) for this run
      --front-bin PATH      default: `front` beside this executable
      --worker-bin PATH     default: `worker` beside this executable
      --front-cpus LIST     run front (and so its workers) under `taskset -c LIST`
      --front-env K=V       extra environment for front (repeatable)
  --url ws://HOST:PORT      attach to a running front (path /connect is implied)
      --front-pid PID       its pid, to read its and its workers' CPU and memory from /proc

Load (default mode):
  --clients N               clients in all (default 10)
  --conversations M         conversations (default 1); client i joins conversation i % M
  --speakers S              speakers per conversation: its first S members (default 2)
  --slots K                 receive slots per client, the microphone m-line included (default 3)
  --ramp SECS               spread all joins over this long (default clients/20)
  --warmup SECS             after the last join, before measuring (default 2)
  --duration SECS           measurement window (default 10)
  --level DBOV              speakers' RFC 6464 level, 0 loudest (default 30)

Churn (instead of load):
  --churn CYCLES            connect → connected → first packet → close, CYCLES times
  --churn-concurrency C     cycles in flight at once (default 4)
  --churn-spawn             every cycle in a new conversation (worker spawn each time)
                            instead of one warm conversation with an anchor speaker
  --churn-rounds R          repeat the CYCLES R times, with a snapshot after each round (growth
                            in round 1 only is a high-water mark, growth in every round a leak)
  --settle SECS             after the cycles, wait at most this long for the server to drop
                            every closed session (default 60)

Output:
  --json PATH               write the report as JSON
  --prefix NAME             conversation/user name prefix (default lg<pid>)
  --keep-log                keep the spawned front's log and runtime directory (kept anyway
                            when the run fails)
  --quiet                   no progress line
";

#[derive(Clone, Debug)]
pub struct Options {
    pub url: Option<String>,
    pub front_pid: Option<u32>,
    pub spawn_front: bool,
    pub front_bin: Option<PathBuf>,
    pub worker_bin: Option<PathBuf>,
    pub front_cpus: Option<String>,
    pub front_env: Vec<(String, String)>,
    pub clients: usize,
    pub conversations: usize,
    pub speakers: usize,
    pub slots: usize,
    pub ramp: Option<f64>,
    pub warmup: f64,
    pub duration: f64,
    pub level_dbov: u8,
    pub churn: usize,
    pub churn_concurrency: usize,
    pub churn_spawn: bool,
    pub churn_rounds: usize,
    pub settle: f64,
    pub json: Option<PathBuf>,
    pub prefix: String,
    pub quiet: bool,
    pub keep_log: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            url: None,
            front_pid: None,
            spawn_front: false,
            front_bin: None,
            worker_bin: None,
            front_cpus: None,
            front_env: Vec::new(),
            clients: 10,
            conversations: 1,
            speakers: 2,
            slots: 3,
            ramp: None,
            warmup: 2.0,
            duration: 10.0,
            level_dbov: 30,
            churn: 0,
            churn_concurrency: 4,
            churn_spawn: false,
            churn_rounds: 1,
            settle: 60.0,
            json: None,
            prefix: format!("lg{}", std::process::id()),
            quiet: false,
            keep_log: false,
        }
    }
}

impl Options {
    /// Parses `args` (without the program name).
    pub fn parse(args: &[String]) -> anyhow::Result<Options> {
        let mut o = Options::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| anyhow!("{a} needs a value"))
            };
            fn num<T: std::str::FromStr>(a: &str, v: String) -> anyhow::Result<T> {
                v.parse()
                    .map_err(|_| anyhow!("{a}: {v:?} is not a valid number"))
            }
            match a.as_str() {
                "--spawn-front" => o.spawn_front = true,
                "--churn-spawn" => o.churn_spawn = true,
                "--quiet" => o.quiet = true,
                "--keep-log" => o.keep_log = true,
                "--url" => o.url = Some(val()?),
                "--front-pid" => o.front_pid = Some(num(a, val()?)?),
                "--front-bin" => o.front_bin = Some(val()?.into()),
                "--worker-bin" => o.worker_bin = Some(val()?.into()),
                "--front-cpus" => o.front_cpus = Some(val()?),
                "--front-env" => {
                    let v = val()?;
                    let (k, x) = v
                        .split_once('=')
                        .ok_or_else(|| anyhow!("--front-env expects K=V, got {v:?}"))?;
                    o.front_env.push((k.to_string(), x.to_string()));
                }
                "--clients" => o.clients = num(a, val()?)?,
                "--conversations" => o.conversations = num(a, val()?)?,
                "--speakers" => o.speakers = num(a, val()?)?,
                "--slots" => o.slots = num(a, val()?)?,
                "--ramp" => o.ramp = Some(num(a, val()?)?),
                "--warmup" => o.warmup = num(a, val()?)?,
                "--duration" => o.duration = num(a, val()?)?,
                "--level" => o.level_dbov = num(a, val()?)?,
                "--churn" => o.churn = num(a, val()?)?,
                "--churn-concurrency" => o.churn_concurrency = num(a, val()?)?,
                "--settle" => o.settle = num(a, val()?)?,
                "--churn-rounds" => o.churn_rounds = num(a, val()?)?,
                "--json" => o.json = Some(val()?.into()),
                "--prefix" => o.prefix = val()?,
                "-h" | "--help" => bail!("{USAGE}"),
                other => bail!("unknown argument {other:?}\n\n{USAGE}"),
            }
        }
        if o.spawn_front == o.url.is_some() {
            bail!("give exactly one of --spawn-front and --url\n\n{USAGE}");
        }
        if o.conversations == 0 || o.clients < o.conversations {
            bail!("need at least one client per conversation");
        }
        if o.churn == 0 && (o.duration <= 0.0 || o.duration > 3600.0) {
            bail!("--duration must be in (0, 3600] seconds");
        }
        if crate::wire::identity::check_conversation_id(&format!("{}-0", o.prefix)).is_err() {
            bail!("--prefix must be letters, digits, '-' or '_'");
        }
        o.churn_concurrency = o.churn_concurrency.max(1);
        o.churn_rounds = o.churn_rounds.max(1);
        Ok(o)
    }
}

// ------------------------------------------------------------------------------------ /proc

/// Front and its workers at one moment.
#[derive(Clone, Debug, Default)]
struct ServerSample {
    front: ProcSample,
    workers: HashMap<u32, ProcSample>,
}

impl ServerSample {
    fn take(front_pid: u32) -> ServerSample {
        ServerSample {
            front: proc_sample(front_pid).unwrap_or_default(),
            workers: children_of(front_pid)
                .into_iter()
                .filter_map(|p| proc_sample(p).map(|s| (p, s)))
                .collect(),
        }
    }
    fn workers_sum(&self, f: impl Fn(&ProcSample) -> u64) -> u64 {
        self.workers.values().map(f).sum()
    }
    /// CPU seconds of the workers since `earlier` (a worker new since then counts from 0).
    fn workers_cpu_since(&self, earlier: &ServerSample) -> f64 {
        self.workers
            .iter()
            .map(|(pid, s)| s.cpu_s - earlier.workers.get(pid).map_or(0.0, |e| e.cpu_s))
            .sum()
    }
}

/// Busy and idle jiffies of one CPU (`/proc/stat`); busy includes irq and softirq.
fn cpu_jiffies(cpu: usize) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let tag = format!("cpu{cpu} ");
    let l = s.lines().find(|l| l.starts_with(&tag))?;
    let f: Vec<u64> = l
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    (f.len() >= 8).then(|| (f[0] + f[1] + f[2] + f[5] + f[6] + f[7], f[3] + f[4]))
}

fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(
            std::fs::read_to_string("/proc/stat")
                .map(|s| {
                    s.lines()
                        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
                        .count()
                })
                .unwrap_or(1),
        )
}

// ------------------------------------------------------------------------------ statistics

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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------- server

/// The front under test: started here (and stopped here), or attached to.
struct Server {
    base: String,
    front_pid: Option<u32>,
    child: Option<Child>,
    runtime_dir: Option<PathBuf>,
    http: reqwest::Client,
}

impl Server {
    async fn start(o: &Options) -> anyhow::Result<Server> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        if let Some(url) = &o.url {
            let base = url
                .trim_end_matches('/')
                .trim_end_matches("/connect")
                .replacen("ws://", "http://", 1)
                .replacen("wss://", "https://", 1);
            return Ok(Server {
                base,
                front_pid: o.front_pid,
                child: None,
                runtime_dir: None,
                http,
            });
        }
        let beside = |name: &str| -> anyhow::Result<PathBuf> {
            let exe = std::env::current_exe()?;
            Ok(exe
                .parent()
                .context("executable has no directory")?
                .join(name))
        };
        let front_bin = match &o.front_bin {
            Some(p) => p.clone(),
            None => beside("front")?,
        };
        let worker_bin = match &o.worker_bin {
            Some(p) => p.clone(),
            None => beside("worker")?,
        };
        for b in [&front_bin, &worker_bin] {
            if !b.exists() {
                bail!("{} not found (cargo build --release --bins)", b.display());
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let runtime_dir =
            std::env::temp_dir().join(format!("beep-loadgen-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&runtime_dir)?;
        let log = std::fs::File::create(runtime_dir.join("front.log"))?;
        let mut env: Vec<(String, String)> = vec![
            ("LISTEN".into(), format!("127.0.0.1:{port}")),
            ("DEV_MODE".into(), "1".into()),
            ("PERMISSIONS_HOST".into(), "allow-all".into()),
            ("RTC_BIND_IP".into(), "127.0.0.1".into()),
            (
                "RUNTIME_DIR".into(),
                runtime_dir.join("run").display().to_string(),
            ),
            ("WORKER_BIN".into(), worker_bin.display().to_string()),
            ("NATS".into(), "nats://127.0.0.1:4222".into()),
            ("OFFERS_PER_MINUTE".into(), "100000".into()),
            ("RUST_LOG".into(), "warn".into()),
        ];
        for (k, v) in &o.front_env {
            env.retain(|(x, _)| x != k);
            env.push((k.clone(), v.clone()));
        }
        let mut cmd = match &o.front_cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(&front_bin);
                c
            }
            None => Command::new(&front_bin),
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            // No `.env` of a checkout can leak in: this run decides every setting.
            .current_dir(&runtime_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", front_bin.display()))?;
        let server = Server {
            base: format!("http://127.0.0.1:{port}"),
            front_pid: Some(child.id()),
            child: Some(child),
            runtime_dir: Some(runtime_dir),
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(r) = server.http.get(server.url("/healthz")).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "front did not become healthy within 15 s (log: {})",
                    server.log_path()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(server)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn ws(&self, conversation: &str) -> String {
        ws_url(&self.base, conversation)
    }

    fn log_path(&self) -> String {
        self.runtime_dir
            .as_ref()
            .map(|d| d.join("front.log").display().to_string())
            .unwrap_or_default()
    }

    fn sample(&self) -> Option<ServerSample> {
        self.front_pid.map(ServerSample::take)
    }

    async fn metrics_text(&self) -> Option<String> {
        let r = self.http.get(self.url("/metrics")).send().await.ok()?;
        r.text().await.ok()
    }

    /// The workers' forwarding-delay histogram from `/metrics` (cumulative there).
    async fn forward_delay(&self) -> Option<DelayHistogram> {
        let text = self.metrics_text().await?;
        let name = "beep_forward_delay_seconds";
        let mut cumulative = Vec::new();
        let mut sum_us = 0;
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix(&format!("{name}_bucket{{le=\"")) {
                cumulative.push(rest.split_once("} ")?.1.trim().parse::<u64>().ok()?);
            } else if let Some(v) = l.strip_prefix(&format!("{name}_sum ")) {
                sum_us = (v.trim().parse::<f64>().ok()? * 1e6) as u64;
            }
        }
        let counts = cumulative
            .iter()
            .scan(0, |prev, &c| {
                let d = c.saturating_sub(*prev);
                *prev = c;
                Some(d)
            })
            .collect();
        Some(DelayHistogram { counts, sum_us })
    }

    /// A gauge or counter from `/metrics`.
    async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics_text().await?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// SIGTERM, then (after 10 s) SIGKILL of front and whatever workers are left.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        let workers = children_of(pid);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        for w in workers {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(w as i32),
                nix::sys::signal::SIGKILL,
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ws_url(base: &str, conversation: &str) -> String {
    format!(
        "{}/connect?conversation={conversation}",
        base.replacen("http", "ws", 1)
    )
}

// ---------------------------------------------------------------------------------- report

#[derive(Debug, Default, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub loadgen_affinity: String,
}

impl Machine {
    fn read() -> Machine {
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
    /// Over all listeners: 1 − received/sent, by the probe counters of each sender heard.
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
    pub churn: Option<ChurnReport>,
    pub front_log: String,
}

// -------------------------------------------------------------------------------- the run

pub async fn run(o: Options) -> anyhow::Result<Report> {
    let mut server = Server::start(&o).await?;
    let mut report = Report {
        command: std::env::args().collect(),
        machine: Machine::read(),
        clients: o.clients,
        conversations: o.conversations,
        speakers: o.speakers,
        slots: o.slots,
        front_log: server.log_path(),
        ..Default::default()
    };
    let result = if o.churn > 0 {
        report.mode = "churn".into();
        churn(&o, &server, &mut report).await
    } else {
        report.mode = "load".into();
        load(&o, &server, &mut report).await
    };
    server.stop();
    if result.is_err() && !server.log_path().is_empty() {
        eprintln!("front log kept: {}", server.log_path());
    }
    result?;
    if let (false, Some(dir)) = (o.keep_log, &server.runtime_dir) {
        let _ = std::fs::remove_dir_all(dir);
        report.front_log.clear();
    }
    if let Some(path) = &o.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

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

fn client_options(o: &Options, url: String, user: String, samples: usize) -> ClientOptions {
    let mut co = ClientOptions::new(url, &user, "loadgen");
    co.slots = o.slots;
    co.latency_samples = samples;
    co
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
        Client::connect(client_options(&o, url, user, samples)),
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

async fn load(o: &Options, server: &Server, report: &mut Report) -> anyhow::Result<()> {
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

fn join_report(records: &[JoinRecord], expect_packet: impl Fn(&JoinRecord) -> bool) -> JoinReport {
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

// ----------------------------------------------------------------------------------- churn

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
    let co = client_options(o, url, format!("{}-c{k}", o.prefix), 100);
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

async fn churn(o: &Options, server: &Server, report: &mut Report) -> anyhow::Result<()> {
    let anchored = !o.churn_spawn;
    // Sessions the server had before we came (attach mode), plus our anchor.
    let initial = server.metric("beep_sessions").await.unwrap_or(0.0);
    let target = initial + if anchored { 1.0 } else { 0.0 };
    let anchor = if anchored {
        let url = server.ws(&format!("{}-churn", o.prefix));
        let co = client_options(o, url, format!("{}-anchor", o.prefix), 100);
        let a = tokio::time::timeout(Duration::from_secs(40), Client::connect(co))
            .await
            .map_err(|_| anyhow!("anchor: no answer within 40 s"))??;
        a.wait_connected(Duration::from_secs(20)).await?;
        a.start_sending("anchor", o.level_dbov);
        Some(a)
    } else {
        None
    };
    let warmup = (o.churn / 10).clamp(1, 50);
    let total = warmup + o.churn * o.churn_rounds;
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let records = Arc::new(Mutex::new(Vec::<Result<JoinRecord, String>>::new()));
    let o2 = Arc::new(o.clone());
    let before = Arc::new(Mutex::new(None::<Snapshot>));

    // Warm-up cycles first (allocator pools, lazily built state), then the measured ones.
    let run_cycles = |from: usize, to: usize| {
        next.store(from, Ordering::Relaxed);
        let mut tasks = Vec::new();
        for _ in 0..o.churn_concurrency {
            let (next, ok, failed, records, o) = (
                next.clone(),
                ok.clone(),
                failed.clone(),
                records.clone(),
                o2.clone(),
            );
            let base = server.base.clone();
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
    };
    let stop_printer = Arc::new(AtomicBool::new(false));
    let printer = {
        let (stop, next, failed, quiet) =
            (stop_printer.clone(), next.clone(), failed.clone(), o.quiet);
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
    };
    for t in run_cycles(0, warmup) {
        t.await?;
    }
    records.lock().unwrap().clear();
    ok.store(0, Ordering::Relaxed);
    failed.store(0, Ordering::Relaxed);
    // Closed sessions end when ICE gives up on them (ICE_DISCONNECTED_MS + ICE_FAILED_MS):
    // measure "before" once the warm-up ones are gone too.
    settle(o, server, Some(target)).await;
    *before.lock().unwrap() = Some(snapshot(server).await);
    let mut elapsed = 0.0;
    let mut settle_s = Some(0.0f64);
    let mut after_round = Vec::new();
    for round in 0..o.churn_rounds {
        let t0 = Instant::now();
        let from = warmup + round * o.churn;
        for t in run_cycles(from, from + o.churn) {
            t.await?;
        }
        elapsed += t0.elapsed().as_secs_f64();
        let (s, _) = settle(o, server, Some(target)).await;
        settle_s = settle_s.zip(s).map(|(a, b)| a.max(b));
        after_round.push(snapshot(server).await);
    }
    let after = after_round.pop().unwrap_or_default();
    stop_printer.store(true, Ordering::Relaxed);
    let _ = printer.await;
    let before = before.lock().unwrap().take().unwrap_or_default();
    let delta = |a: &ProcSample, b: &ProcSample| ProcDelta {
        rss_kib: a.rss_kib as i64 - b.rss_kib as i64,
        fds: a.fds as i64 - b.fds as i64,
        threads: a.threads as i64 - b.threads as i64,
    };
    let workers_delta = (anchored && before.workers.len() == after.workers.len()).then(|| {
        let sum =
            |s: &Snapshot, f: fn(&ProcSample) -> u64| s.workers.iter().map(f).sum::<u64>() as i64;
        ProcDelta {
            rss_kib: sum(&after, |w| w.rss_kib) - sum(&before, |w| w.rss_kib),
            fds: sum(&after, |w| w.fds) - sum(&before, |w| w.fds),
            threads: sum(&after, |w| w.threads) - sum(&before, |w| w.threads),
        }
    });
    let recs = std::mem::take(&mut *records.lock().unwrap_or_else(|p| p.into_inner()));
    let good: Vec<JoinRecord> = recs
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    let mut all = good.clone();
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
    report.joins = join_report(&all, |_| anchored);
    report.churn = Some(ChurnReport {
        cycles: o.churn * o.churn_rounds,
        ok: ok.load(Ordering::Relaxed) as usize,
        failed: failed.load(Ordering::Relaxed) as usize,
        warmup_cycles: warmup,
        elapsed_s: elapsed,
        front_delta: delta(&after.front, &before.front),
        workers_delta,
        rounds: o.churn_rounds,
        before,
        after_round,
        after,
        settle_s,
    });
    if let Some(a) = anchor {
        a.close().await;
    }
    Ok(())
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

// ---------------------------------------------------------------------------------- output

pub fn print_summary(r: &Report) {
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
    drop(out);
    j.spawn.print("spawn (first member: worker starts)");
    j.warm.print("warm (worker running)");
    if let Some(f) = &r.forwarding {
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
    if let Some(s) = &r.server {
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
    if r.mode == "load" {
        println!(
            "loadgen: {:.2} s CPU = {:.3} cores",
            r.loadgen_cpu_s, r.loadgen_cores_busy
        );
    }
    if let Some(c) = &r.churn {
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
    if !r.front_log.is_empty() {
        println!("front log: {}", r.front_log);
    }
}
