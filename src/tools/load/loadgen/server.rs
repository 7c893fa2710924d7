//! The front under test: started here for the run (and stopped here, whatever happens) or
//! attached to by URL, and what its `/metrics` say (gauges, the workers' forwarding delay).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::options::Options;
use super::sample::ServerSample;
use crate::front::procfs::children_of;
use crate::wire::stats::DelayHistogram;

/// The front under test: started here (and stopped here), or attached to.
pub(super) struct Server {
    pub(super) base: String,
    pub(super) front_pid: Option<u32>,
    child: Option<Child>,
    pub(super) runtime_dir: Option<PathBuf>,
    http: reqwest::Client,
}

impl Server {
    /// Attaches to the front at `o.url`, or starts one for the run and waits until it is
    /// healthy.
    pub(super) async fn start(o: &Options) -> anyhow::Result<Server> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        if let Some(url) = &o.url {
            return Ok(Server::attached(o, url, http));
        }
        let (front_bin, worker_bin) = binaries(o)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let runtime_dir =
            std::env::temp_dir().join(format!("beep-loadgen-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&runtime_dir)?;
        let log = std::fs::File::create(runtime_dir.join("front.log"))?;
        let env = front_env(o, port, &runtime_dir, &worker_bin);
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
        server.wait_healthy().await?;
        Ok(server)
    }

    /// The front at `url` (a `ws://…/connect` URL or its base), which someone else runs.
    fn attached(o: &Options, url: &str, http: reqwest::Client) -> Server {
        let base = url
            .trim_end_matches('/')
            .trim_end_matches("/connect")
            .replacen("ws://", "http://", 1)
            .replacen("wss://", "https://", 1);
        Server {
            base,
            front_pid: o.front_pid,
            child: None,
            runtime_dir: None,
            http,
        }
    }

    /// Waits up to 15 s for the started front's `/healthz` to answer with success.
    async fn wait_healthy(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(r) = self.http.get(self.url("/healthz")).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "front did not become healthy within 15 s (log: {})",
                    self.log_path()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(super) fn ws(&self, conversation: &str) -> String {
        ws_url(&self.base, conversation)
    }

    pub(super) fn log_path(&self) -> String {
        self.runtime_dir
            .as_ref()
            .map(|d| d.join("front.log").display().to_string())
            .unwrap_or_default()
    }

    pub(super) fn sample(&self) -> Option<ServerSample> {
        self.front_pid.map(ServerSample::take)
    }

    pub(super) async fn metrics_text(&self) -> Option<String> {
        let r = self.http.get(self.url("/metrics")).send().await.ok()?;
        r.text().await.ok()
    }

    /// The workers' forwarding-delay histogram from `/metrics` (cumulative there).
    pub(super) async fn forward_delay(&self) -> Option<DelayHistogram> {
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
    pub(super) async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics_text().await?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// SIGTERM, then (after 10 s) SIGKILL of front and whatever workers are left.
    pub(super) fn stop(&mut self) {
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

/// The front and worker binaries: as given, or beside loadgen's own executable; an error
/// if either is missing.
fn binaries(o: &Options) -> anyhow::Result<(PathBuf, PathBuf)> {
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
    Ok((front_bin, worker_bin))
}

/// The started front's whole environment: the run's settings, then `--front-env` on top
/// (each replacing a setting of the same name).
fn front_env(
    o: &Options,
    port: u16,
    runtime_dir: &std::path::Path,
    worker_bin: &std::path::Path,
) -> Vec<(String, String)> {
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
    env
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `/connect` URL of `conversation` on the front at `base` (`http://HOST:PORT`).
pub(super) fn ws_url(base: &str, conversation: &str) -> String {
    format!(
        "{}/connect?conversation={conversation}",
        base.replacen("http", "ws", 1)
    )
}
