//! Test harness: the real `front` binary (which spawns real `worker` processes), a real HTTP
//! server on loopback standing in for the permissions service, and helpers to talk to them.
//! Everything started here is stopped by pid when its guard drops, and every wait has a
//! deadline, so a broken build fails fast instead of hanging CI.

#![allow(dead_code)]

pub mod nats;
pub mod netns;
pub mod opus;
pub mod signal;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;

/// The permissions stand-in. The conversation id decides the answer, so one server serves
/// every case: `deny*` → 403, `missing*` → 404, `broken*` → 500, `slow*` → answers after
/// 5 s, anything else → 200.
pub struct Permissions {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Permissions {
    pub async fn start() -> Permissions {
        async fn check(Path((_user, conv)): Path<(String, String)>) -> StatusCode {
            if conv.starts_with("deny") {
                StatusCode::FORBIDDEN
            } else if conv.starts_with("missing") {
                StatusCode::NOT_FOUND
            } else if conv.starts_with("broken") {
                StatusCode::INTERNAL_SERVER_ERROR
            } else if conv.starts_with("slow") {
                tokio::time::sleep(Duration::from_secs(5)).await;
                StatusCode::OK
            } else {
                StatusCode::OK
            }
        }
        let app = axum::Router::new().route("/user/{user}/conversation/{conv}", get(check));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind permissions stand-in");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Permissions { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Permissions {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `front`, killed (and its workers with it) when dropped.
pub struct Front {
    pub child: Child,
    /// The loopback address it listens on (127.0.0.1 unless started with [`Front::start_on`]).
    pub host: String,
    pub port: u16,
    pub runtime_dir: tempfile::TempDir,
    pub http: reqwest::Client,
    /// Its environment, to start it again the same way.
    env: Vec<(String, String)>,
}

fn spawn_front(env: &[(String, String)], dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_front"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        // Run where no `.env` can leak in: the test decides every setting.
        .current_dir(dir)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn front")
}

impl Front {
    /// Starts front with test defaults plus `extra` environment.
    pub async fn start(permissions: &str, extra: &[(&str, &str)]) -> Front {
        Self::start_on("127.0.0.1", permissions, extra).await
    }

    /// Starts front listening, and its workers binding, on `host` (a loopback address).
    pub async fn start_on(host: &str, permissions: &str, extra: &[(&str, &str)]) -> Front {
        let port = free_tcp_port();
        let runtime_dir = tempfile::tempdir().expect("tempdir");
        // front refuses a runtime directory others may enter (and never chmods one).
        std::fs::set_permissions(
            runtime_dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod 700 the runtime directory");
        let mut env: HashMap<&str, String> = HashMap::from([
            ("LISTEN", format!("{host}:{port}")),
            ("PERMISSIONS_HOST", permissions.to_string()),
            ("RTC_BIND_IP", host.into()),
            ("RUNTIME_DIR", runtime_dir.path().display().to_string()),
            (
                "STATE_DIR",
                runtime_dir.path().join("state").display().to_string(),
            ),
            ("WORKER_BIN", env!("CARGO_BIN_EXE_worker").into()),
            ("WORKER_IDLE_MS", "1500".into()),
            ("ICE_DISCONNECTED_MS", "1000".into()),
            ("ICE_FAILED_MS", "2000".into()),
            ("PERMISSIONS_TIMEOUT_MS", "1000".into()),
            ("NATS", "nats://127.0.0.1:4222".into()),
            ("DEV_MODE", "0".into()),
            (
                "RUST_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            ),
        ]);
        for (k, v) in extra {
            env.insert(k, v.to_string());
        }
        let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let child = spawn_front(&env, runtime_dir.path());
        let front = Front {
            child,
            host: host.into(),
            port,
            runtime_dir,
            http: reqwest::Client::new(),
            env,
        };
        front.wait_healthy().await;
        front
    }

    /// SIGKILLs front (its workers live on) and starts it again with the same settings.
    pub async fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_front(&self.env, self.runtime_dir.path());
        self.wait_healthy().await;
    }

    /// Sends a signal to front.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal);
    }

    /// Waits until front answers `/healthz` with 200 (15 s at most).
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(r) = self.http.get(self.url("/healthz")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "front did not become healthy within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs the `ctl` binary against this front; returns (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_ctl"))
            .arg("--runtime-dir")
            .arg(self.runtime_dir.path())
            .args(args)
            .current_dir(self.runtime_dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run ctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.host, self.port)
    }

    pub fn ws(&self, query: &str) -> String {
        format!("ws://{}:{}/connect{query}", self.host, self.port)
    }

    pub async fn join(&self, user: &str, client: &str, conversation: &str) -> (u16, String) {
        let r = self
            .http
            .post(self.url(&format!("/join/{conversation}")))
            .header("X-User-Claim", claim(user, client))
            .send()
            .await
            .expect("POST /join");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// One sample of `/metrics`, named as printed (labels included), if front reports it.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Front is alive and answers `/healthz` with 200.
    pub async fn assert_serving(&self) {
        assert!(self.alive(), "front died");
        let r = self
            .http
            .get(self.url("/healthz"))
            .send()
            .await
            .expect("healthz");
        assert_eq!(r.status(), 200);
    }

    /// The worker processes this front supervises and that are still alive: its children,
    /// and the workers it took back from a front before it (their pid files).
    pub fn workers(&self) -> Vec<u32> {
        let mut pids = children_of(self.child.id());
        pids.extend(self.pid_files().into_iter().map(|(pid, _)| pid));
        pids.retain(|&pid| beep_webrtc::front::procfs::proc_sample(pid).is_some());
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// (pid, conversation) of every worker pid file front keeps in its runtime directory.
    pub fn pid_files(&self) -> Vec<(u32, String)> {
        let Ok(dir) = std::fs::read_dir(self.runtime_dir.path().join("workers")) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let text = std::fs::read_to_string(e.path()).ok()?;
                let mut lines = text.lines();
                let pid = lines.next()?.trim().parse().ok()?;
                Some((pid, lines.next()?.to_string()))
            })
            .collect()
    }

    /// The worker of `conversation`, if one runs.
    pub fn worker_of(&self, conversation: &str) -> Option<u32> {
        self.workers().into_iter().find(|&pid| {
            let args = beep_webrtc::front::procfs::cmdline(pid);
            args.windows(2)
                .any(|w| w[0] == "--conversation" && w[1] == conversation)
        })
    }

    /// Running (not exited, not a zombie).
    pub fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|x| x.1.trim_start().starts_with(|c| c != 'Z'))
            })
            .unwrap_or(false)
    }

    /// Waits for front to exit by itself; returns whether it did within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGTERM and wait; returns whether it exited within `within`.
    pub fn terminate(&mut self, within: Duration) -> bool {
        self.signal(nix::sys::signal::SIGTERM);
        self.wait_exit(within)
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        let workers = self.workers();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in workers {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::SIGKILL,
            );
        }
    }
}

/// A webrtc-rs client `user` (client id `app`) in `conversation`, its connection up (20 s).
pub async fn member(
    front: &Front,
    conversation: &str,
    user: &str,
) -> beep_webrtc::tools::load::client::Client {
    member_with(front, conversation, user, |_| {}).await
}

/// [`member`] with its client options changed by `configure` first (RED, NACK, ...).
pub async fn member_with(
    front: &Front,
    conversation: &str,
    user: &str,
    configure: impl FnOnce(&mut beep_webrtc::tools::load::client::ClientOptions),
) -> beep_webrtc::tools::load::client::Client {
    use beep_webrtc::tools::load::client::{Client, ClientOptions};
    let mut opts = ClientOptions::new(
        front.ws(&format!("?conversation={conversation}")),
        user,
        "app",
    );
    configure(&mut opts);
    let c = Client::connect(opts)
        .await
        .unwrap_or_else(|e| panic!("{user}: {e:#}"));
    c.wait_connected(Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{user}: {e:#}"));
    c
}

pub fn claim(user: &str, client: &str) -> String {
    serde_json::json!({"userid": user, "clientid": client}).to_string()
}

/// Live child processes of `pid` (from /proc): the same reading loadgen uses.
pub use beep_webrtc::front::procfs::children_of;

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Packets of `speaker` that `listener` never got, between the first and last it got.
pub fn lost(listener: &beep_webrtc::tools::load::client::Client, speaker: &str) -> u64 {
    listener
        .streams()
        .iter()
        .filter_map(|(_, s)| {
            let (lo, hi) = s.counters.get(speaker)?;
            let got = s.from.get(speaker).copied().unwrap_or(0);
            Some(u64::from(hi - lo + 1).saturating_sub(got))
        })
        .sum()
}
