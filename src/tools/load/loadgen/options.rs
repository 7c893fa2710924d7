//! The command line of `loadgen` (clap derive): every flag, its default and its help text, and
//! the rules clap cannot say by itself ([`Options::validate`]). Also how the options become the
//! options of one client ([`Options::client`]).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{ArgGroup, CommandFactory, Parser};

use super::hog::HogTarget;
use super::member::ClientKind;
use crate::tools::load::client::ClientOptions;

const SERVER: &str = "Server (one of --spawn-front and --url)";
const LOAD: &str = "Load (default mode)";
const CHURN: &str = "Churn (instead of load)";
const CONTENTION: &str = "Contention (load mode, a second window with a CPU hog)";
const OUTPUT: &str = "Output";

/// What `--help` says before the options (`-h` says the same).
const ABOUT: &str = "\
loadgen: many webrtc-rs clients against beep-webrtc; prints a summary and writes JSON.

Load mode (the default) puts N clients into M conversations (client i joins conversation i % M);
the first S members of each conversation speak (probe payloads at 50 packets/s), everyone
offers K receive slots. The first member of every conversation joins first (its join starts the
conversation's worker), then everyone else, spread over the ramp-up time. After a warm-up it
measures a steady-state window: forwarded packets/s, one-way latency, the delay inside the SFU,
loss per listener, and the CPU and memory of front and every worker.

The clients are full webrtc-crate connections (--client full, the default) or light ones
(--client light): rtc sans-I/O connections all driven by one task, with no interceptors,
jitter buffer or decoding: they cost loadgen about 0.6x the full client's CPU per received
packet and keep their send ticks on time under load. Both signal, offer, send and count
alike; the report is the same.

Contention (--contention sfu|clients|both) measures the same load point twice, back to back:
a quiet window, then one with a busy-loop process pinned (taskset) to each CPU of the SFU
(--front-cpus) and/or of loadgen itself; it reports delivery, loss and drops for both, and
how late the clients' send ticks ran, which says whether the clients kept up.

Every window also reports the drop counters of front's /metrics (beep_*drop*, by name and
labels) and the kernel's drops (/proc/net/udp) of the workers' and loadgen's UDP sockets.

Churn mode (--churn) connects and closes clients many times and compares front's and the
workers' RSS, open fds and threads before and after, once the server has let go of every
closed session.";

/// What `loadgen` is told to do. Values are taken as given: a value may start with `-`
/// (`--ramp -1`, `--front-env K=-v`), and an option given twice keeps the last value.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "loadgen",
    about = ABOUT,
    long_about = None,
    args_override_self = true,
    allow_negative_numbers = true,
    group(ArgGroup::new("server").required(true).args(["spawn_front", "url"])),
)]
pub struct Options {
    /// Start front (and through it the workers) for this run.
    #[arg(long, help_heading = SERVER)]
    pub spawn_front: bool,
    /// With --spawn-front: the front binary (default: `front` beside this executable).
    #[arg(long, value_name = "PATH", allow_hyphen_values = true, help_heading = SERVER)]
    pub front_bin: Option<PathBuf>,
    /// With --spawn-front: the worker binary (default: `worker` beside this executable).
    #[arg(long, value_name = "PATH", allow_hyphen_values = true, help_heading = SERVER)]
    pub worker_bin: Option<PathBuf>,
    /// With --spawn-front: run front (and so its workers) under `taskset -c LIST`.
    #[arg(long, value_name = "LIST", allow_hyphen_values = true, help_heading = SERVER)]
    pub front_cpus: Option<String>,
    /// With --spawn-front: extra environment for front (repeatable).
    #[arg(
        long,
        value_name = "K=V",
        value_parser = key_value,
        allow_hyphen_values = true,
        help_heading = SERVER
    )]
    pub front_env: Vec<(String, String)>,
    /// Attach to a running front (path /connect is implied).
    #[arg(
        long,
        value_name = "ws://HOST:PORT",
        allow_hyphen_values = true,
        help_heading = SERVER
    )]
    pub url: Option<String>,
    /// With --url: its pid, to read its and its workers' CPU and memory from /proc.
    #[arg(long, value_name = "PID", help_heading = SERVER)]
    pub front_pid: Option<u32>,

    /// Clients in all.
    #[arg(long, value_name = "N", default_value_t = 10, help_heading = LOAD)]
    pub clients: usize,
    /// Conversations; client i joins conversation i % M.
    #[arg(long, value_name = "M", default_value_t = 1, help_heading = LOAD)]
    pub conversations: usize,
    /// Speakers per conversation: its first S members.
    #[arg(long, value_name = "S", default_value_t = 2, help_heading = LOAD)]
    pub speakers: usize,
    /// Receive slots per client, the microphone m-line included.
    #[arg(long, value_name = "K", default_value_t = 3, help_heading = LOAD)]
    pub slots: usize,
    /// Spread all joins over this long (default: clients/20).
    #[arg(long, value_name = "SECS", help_heading = LOAD)]
    pub ramp: Option<f64>,
    /// After the last join, before measuring.
    #[arg(long, value_name = "SECS", default_value_t = 2.0, help_heading = LOAD)]
    pub warmup: f64,
    /// Measurement window, in (0, 3600].
    #[arg(long, value_name = "SECS", default_value_t = 10.0, help_heading = LOAD)]
    pub duration: f64,
    /// Speakers' RFC 6464 level, 0 loudest.
    #[arg(
        long = "level",
        value_name = "DBOV",
        default_value_t = 30,
        help_heading = LOAD
    )]
    pub level_dbov: u8,
    /// Which client: `full` (webrtc crate) or `light` (rtc sans-I/O, one task for all).
    #[arg(
        long,
        value_enum,
        value_name = "KIND",
        default_value_t = ClientKind::Full,
        help_heading = LOAD
    )]
    pub client: ClientKind,
    /// Offer Opus RED (as Chromium does), so every forwarded copy carries the packet before
    /// it: the cost of RED. Full client only.
    #[arg(long, help_heading = LOAD)]
    pub red: bool,

    /// After the quiet window, measure again with a CPU hog on the SFU's CPUs
    /// (--front-cpus), on loadgen's own CPUs, or both.
    #[arg(long, value_enum, value_name = "WHERE", help_heading = CONTENTION)]
    pub contention: Option<HogTarget>,
    /// Busy-loop processes per hogged CPU.
    #[arg(long, value_name = "N", default_value_t = 1, help_heading = CONTENTION)]
    pub hogs_per_cpu: usize,

    /// Connect → connected → first packet → close, CYCLES times (churn mode when above 0).
    #[arg(long, value_name = "CYCLES", default_value_t = 0, help_heading = CHURN)]
    pub churn: usize,
    /// Cycles in flight at once (at least 1).
    #[arg(long, value_name = "C", default_value_t = 4, help_heading = CHURN)]
    pub churn_concurrency: usize,
    /// Every cycle in a new conversation (worker spawn each time) instead of one warm
    /// conversation with an anchor speaker.
    #[arg(long, help_heading = CHURN)]
    pub churn_spawn: bool,
    /// Repeat the CYCLES R times, with a snapshot after each round (growth in round 1 only is
    /// a high-water mark, growth in every round a leak).
    #[arg(long, value_name = "R", default_value_t = 1, help_heading = CHURN)]
    pub churn_rounds: usize,
    /// After the cycles, wait at most this long for the server to drop every closed session.
    #[arg(long, value_name = "SECS", default_value_t = 60.0, help_heading = CHURN)]
    pub settle: f64,

    /// Write the report as JSON.
    #[arg(long, value_name = "PATH", allow_hyphen_values = true, help_heading = OUTPUT)]
    pub json: Option<PathBuf>,
    /// Conversation/user name prefix: letters, digits, '-' or '_' (default: `lg<pid>`).
    #[arg(
        long,
        value_name = "NAME",
        default_value_t = format!("lg{}", std::process::id()),
        hide_default_value = true,
        allow_hyphen_values = true,
        help_heading = OUTPUT
    )]
    pub prefix: String,
    /// Keep the spawned front's log and runtime directory (kept anyway when the run fails).
    #[arg(long, help_heading = OUTPUT)]
    pub keep_log: bool,
    /// No progress line.
    #[arg(long, help_heading = OUTPUT)]
    pub quiet: bool,
}

/// `--front-env K=V`.
fn key_value(v: &str) -> Result<(String, String), String> {
    let (k, x) = v
        .split_once('=')
        .ok_or_else(|| "expected K=V".to_string())?;
    Ok((k.to_string(), x.to_string()))
}

impl Options {
    /// The process's command line, parsed and validated. Prints the help and exits 0 after
    /// `--help`; prints what is wrong and exits 2 on a bad command line.
    pub fn from_command_line() -> Options {
        Options::try_from_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses `args` (the program name first) and [`validate`](Options::validate)s them.
    pub fn try_from_args<I, T>(args: I) -> Result<Options, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut o = Options::try_parse_from(args)?;
        o.validate()?;
        Ok(o)
    }

    /// The rules across options, which clap's attributes do not express; raises
    /// `--churn-concurrency` and `--churn-rounds` to at least 1.
    pub fn validate(&mut self) -> Result<(), clap::Error> {
        let invalid = |msg: &str| Err(Options::command().error(ErrorKind::ValueValidation, msg));
        if self.spawn_front == self.url.is_some() {
            return Err(Options::command().error(
                ErrorKind::MissingRequiredArgument,
                "give exactly one of --spawn-front and --url",
            ));
        }
        if self.conversations == 0 || self.clients < self.conversations {
            return invalid("need at least one client per conversation");
        }
        if self.churn == 0 && (self.duration <= 0.0 || self.duration > 3600.0) {
            return invalid("--duration must be in (0, 3600] seconds");
        }
        if crate::wire::ids::ConversationId::parse(&format!("{}-0", self.prefix)).is_err() {
            return invalid("--prefix must be letters, digits, '-' or '_'");
        }
        if self.red && self.client == ClientKind::Light {
            return invalid("--red needs the full client (--client full)");
        }
        if self.churn > 0 && self.client == ClientKind::Light {
            return invalid("--client light is for load mode; churn mode uses the full client");
        }
        if self.churn > 0 && self.contention.is_some() {
            return invalid("--contention is for load mode");
        }
        if matches!(self.contention, Some(HogTarget::Sfu | HogTarget::Both))
            && self.front_cpus.is_none()
        {
            return invalid("--contention sfu|both needs --spawn-front --front-cpus LIST");
        }
        self.hogs_per_cpu = self.hogs_per_cpu.max(1);
        self.churn_concurrency = self.churn_concurrency.max(1);
        self.churn_rounds = self.churn_rounds.max(1);
        Ok(())
    }

    /// The options of one client of this run.
    pub(crate) fn client(
        &self,
        url: String,
        user: String,
        latency_samples: usize,
    ) -> ClientOptions {
        let mut co = ClientOptions::new(url, &user, "loadgen");
        co.slots = self.slots;
        co.latency_samples = latency_samples;
        co.red = self.red;
        co
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Options, clap::Error> {
        Options::try_from_args(std::iter::once("loadgen").chain(args.split_whitespace()))
    }

    #[test]
    fn command_is_consistent() {
        Options::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let o = parse("--spawn-front").unwrap();
        assert!(o.spawn_front && o.url.is_none() && o.front_pid.is_none());
        assert!(o.front_bin.is_none() && o.worker_bin.is_none() && o.front_cpus.is_none());
        assert!(o.front_env.is_empty());
        assert_eq!(
            (o.clients, o.conversations, o.speakers, o.slots),
            (10, 1, 2, 3)
        );
        assert_eq!(
            (o.ramp, o.warmup, o.duration, o.level_dbov),
            (None, 2.0, 10.0, 30)
        );
        assert_eq!(
            (o.churn, o.churn_concurrency, o.churn_rounds, o.settle),
            (0, 4, 1, 60.0)
        );
        assert!(!o.churn_spawn && !o.quiet && !o.keep_log && o.json.is_none());
        assert_eq!(o.client, ClientKind::Full);
        assert_eq!((o.contention, o.hogs_per_cpu), (None, 1));
        assert_eq!(o.prefix, format!("lg{}", std::process::id()));
    }

    #[test]
    fn values() {
        let o = parse(
            "--url ws://h:1/connect --front-pid 7 --clients 6 --conversations 2 --speakers 1 \
             --slots 4 --ramp -1 --warmup 0.5 --duration 3 --level 127 --churn 5 \
             --churn-concurrency 0 --churn-spawn --churn-rounds 0 --settle 9 --json r.json \
             --prefix p_1 --keep-log --quiet --front-env A=1 --front-env B=x=-y --clients 8",
        )
        .unwrap();
        assert_eq!(o.url.as_deref(), Some("ws://h:1/connect"));
        assert_eq!(o.front_pid, Some(7));
        assert_eq!(
            (o.clients, o.conversations, o.speakers, o.slots),
            (8, 2, 1, 4)
        );
        assert_eq!(
            (o.ramp, o.warmup, o.duration, o.level_dbov),
            (Some(-1.0), 0.5, 3.0, 127)
        );
        assert_eq!((o.churn, o.churn_concurrency, o.churn_rounds), (5, 1, 1));
        assert!(o.churn_spawn && o.keep_log && o.quiet);
        assert_eq!(o.settle, 9.0);
        assert_eq!(o.json, Some(PathBuf::from("r.json")));
        assert_eq!(o.prefix, "p_1");
        let env = [("A", "1"), ("B", "x=-y")].map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(o.front_env, env);
    }

    #[test]
    fn rejects() {
        let kind = |args: &str| parse(args).unwrap_err().kind();
        assert_eq!(kind("--help"), ErrorKind::DisplayHelp);
        assert_eq!(kind("--spawn-front --bogus"), ErrorKind::UnknownArgument);
        assert_eq!(kind(""), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            kind("--spawn-front --url ws://h:1"),
            ErrorKind::ArgumentConflict
        );
        for bad in [
            "--spawn-front --clients",
            "--spawn-front --clients x",
            "--spawn-front --level 256",
            "--spawn-front --front-env K",
            "--spawn-front --clients 1 --conversations 2",
            "--spawn-front --conversations 0",
            "--spawn-front --duration 0",
            "--spawn-front --duration 3601",
            "--spawn-front --prefix a.b",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
            assert_ne!(e.kind(), ErrorKind::DisplayHelp, "{bad}");
        }
        // The light client and the hogs are for load mode; hogging the SFU needs its CPUs.
        for bad in [
            "--spawn-front --churn 3 --client light",
            "--spawn-front --churn 3 --contention clients",
            "--spawn-front --contention sfu",
            "--spawn-front --contention both",
            "--spawn-front --client medium",
            "--spawn-front --contention cpu",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
        let o =
            parse("--spawn-front --client light --contention both --front-cpus 0 --hogs-per-cpu 0")
                .unwrap();
        assert_eq!(o.client, ClientKind::Light);
        assert_eq!((o.contention, o.hogs_per_cpu), (Some(HogTarget::Both), 1));
        assert!(parse("--spawn-front --contention clients").is_ok());
        // Churn mode has no measurement window.
        assert!(parse("--spawn-front --churn 3 --duration 0").is_ok());
    }
}
