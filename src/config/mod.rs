//! Configuration: read once at startup from the environment (and `.env`, which the environment
//! overrides). The names and defaults of SPEC §3 are a contract with operators and test
//! harnesses; everything else here is an addition documented in the README. A bad value stops
//! startup with one line naming the variable, because a half-configured SFU fails later in
//! ways that are much harder to read.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use crate::wire::ipc::{BiteConfig, MediaConfig};

pub mod cluster;
mod lookup;
pub mod settings;
use lookup::{Lookup, err};

/// Where permission checks go.
#[derive(Clone, Debug, PartialEq)]
pub enum Permissions {
    /// `GET {base}/user/{userid}/conversation/{conversationid}`.
    Http(String),
    /// `PERMISSIONS_HOST=allow-all`: everyone may join everything (development mode only).
    AllowAll,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub nats: String,
    pub permissions: Permissions,
    pub media: MediaConfig,
    pub runtime_dir: PathBuf,
    /// Durable state: the bite spool lives under `STATE_DIR/spool/<conversation>`.
    pub state_dir: PathBuf,
    /// How bites are cut and published; `None` when `BITES=off`.
    pub bites: Option<Bites>,
    pub dev_mode: bool,
    /// How long an offer waits for its join, and a join for its offer.
    pub join_timeout: Duration,
    /// How long a conversation's worker lives on with nobody in it.
    pub worker_idle: Duration,
    /// How long a worker keeps its conversation going without a front (a restart, an
    /// upgrade) before it stops by itself.
    pub worker_orphan_grace: Duration,
    /// A worker silent this long is killed as hung.
    pub worker_heartbeat: Duration,
    /// On SIGTERM, how long front waits for conversations to end before it stops them.
    pub drain_timeout: Duration,
    pub permissions_timeout: Duration,
    pub max_sessions_per_user: usize,
    pub max_frame_bytes: usize,
    pub offers_per_minute: u32,
    pub joins_per_minute: u32,
    /// Most worker processes (conversations) at once; a new conversation beyond it is refused.
    pub max_workers: usize,
    /// Most new conversations (worker starts) one user may cause per minute.
    pub new_conversations_per_minute: u32,
    /// The worker executable; by default the `worker` binary beside the running `front`.
    pub worker_bin: PathBuf,
    // Hardening (README "Security"): who may send the claim, and the limits of one client.
    /// Peers whose `X-User-Claim` is believed.
    pub trusted_proxies: crate::wire::identity::TrustedProxies,
    /// `Origin`s accepted on `/connect` and `/join` (lower case); `None` = no check.
    pub allowed_origins: Option<Vec<String>>,
    /// `PERMISSIONS_CA_FILE`: where the certificates below come from.
    pub permissions_ca_file: Option<PathBuf>,
    /// CA certificates for an https:// permissions service (only these are trusted then);
    /// read from the file by [`Config::prepare`].
    pub permissions_ca: Vec<reqwest::Certificate>,
    /// ICE candidates one peer connection may bring (its offer's and trickled ones together).
    pub max_candidates: usize,
    /// `ice::` frames per second one socket may send, and the burst above that rate.
    pub ice_per_second: u32,
    pub ice_burst: u32,
    /// A request's headers must arrive within this.
    pub http_header_timeout: Duration,
    /// Open HTTP connections, WebSockets included.
    pub max_connections: usize,
    /// WebSocket ping interval; a socket that sends nothing (not even a pong) for
    /// `ws_idle` is closed.
    pub ws_ping: Duration,
    pub ws_idle: Duration,
    /// Frames queued for one socket; a client that lets more pile up is disconnected.
    pub ws_send_queue: usize,
    /// A frame that cannot be written to the socket within this disconnects the client.
    pub ws_send_timeout: Duration,
    /// Several hosts (`CLUSTER`); `None` on a single host.
    pub cluster: Option<cluster::ClusterConfig>,
}

/// Bite settings; each worker gets them, with its own spool directory, in `Init`.
#[derive(Clone, Debug)]
pub struct Bites {
    pub bite_subject: String,
    pub store_subject: String,
    pub silence_ms: u64,
    pub max_ms: u64,
    /// Per conversation spool.
    pub spool_max_bytes: u64,
}

impl Config {
    /// Front's socket for workers.
    pub fn worker_socket(&self) -> PathBuf {
        self.runtime_dir.join("front.sock")
    }

    /// Where the workers' pid files are.
    pub fn pid_dir(&self) -> PathBuf {
        self.runtime_dir.join("workers")
    }

    /// Front's admin socket, for `ctl`.
    pub fn admin_socket(&self) -> PathBuf {
        self.runtime_dir.join(crate::wire::admin::ADMIN_SOCKET)
    }

    /// Where the spools live: one directory per conversation under it.
    pub fn spool_root(&self) -> PathBuf {
        self.state_dir.join("spool")
    }

    /// What workers need to cut and publish bites; `spool_dir` is the root of the spools.
    pub fn bite_config(&self) -> Option<BiteConfig> {
        let b = self.bites.as_ref()?;
        Some(BiteConfig {
            nats: self.nats.clone(),
            bite_subject: b.bite_subject.clone(),
            store_subject: b.store_subject.clone(),
            spool_dir: self.spool_root(),
            spool_max_bytes: b.spool_max_bytes,
            silence_ms: b.silence_ms,
            max_ms: b.max_ms,
        })
    }
}

/// One configuration error, phrased for the operator: `NAME: what is wrong`.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}={value:?}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

impl Config {
    /// Loads `./.env` (if present; the real environment wins) and reads the configuration.
    /// Only the working directory's `.env` is read, never a parent's: dotenvy's `dotenv()`
    /// searches upwards, so a front started anywhere below a checkout would take the
    /// checkout's development settings (`DEV_MODE`, `allow-all`).
    pub fn load() -> Result<Config, ConfigError> {
        match dotenvy::from_path("./.env") {
            Ok(()) => {}
            Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ConfigError {
                    var: ".env",
                    value: "./.env".into(),
                    reason: e.to_string(),
                });
            }
        }
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get`, so tests can feed it without touching the
    /// process environment. It parses values and checks them against each other, and looks at
    /// nothing but `get` (and the running executable's path, the default of `WORKER_BIN`):
    /// what depends on the machine is [`Config::prepare`], which front runs.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let l = Lookup { get };
        let (listen, dev_mode) = listen_and_mode(&l)?;
        let permissions = permissions(&l, dev_mode)?;
        let media = media(&l)?;
        Ok(Config {
            listen,
            nats: l.text("NATS"),
            permissions,
            media,
            runtime_dir: runtime_dir(&l.get),
            state_dir: state_dir(&l),
            bites: bites(&l)?,
            dev_mode,
            join_timeout: l.millis("JOIN_TIMEOUT_MS")?,
            worker_idle: l.millis("WORKER_IDLE_MS")?,
            worker_orphan_grace: l.millis("WORKER_ORPHAN_GRACE_MS")?,
            worker_heartbeat: l.millis("WORKER_HEARTBEAT_MS")?,
            drain_timeout: l.millis("DRAIN_TIMEOUT_MS")?,
            permissions_timeout: l.millis("PERMISSIONS_TIMEOUT_MS")?,
            max_sessions_per_user: l.num("MAX_SESSIONS_PER_USER")? as usize,
            max_frame_bytes: max_frame_bytes(l.num("MAX_FRAME_BYTES")?)
                .map_err(|(v, r)| err("MAX_FRAME_BYTES", &v, r))?,
            offers_per_minute: l.num("OFFERS_PER_MINUTE")? as u32,
            joins_per_minute: l.num("JOINS_PER_MINUTE")? as u32,
            max_workers: l.num("MAX_WORKERS")? as usize,
            new_conversations_per_minute: l.num("NEW_CONVERSATIONS_PER_MINUTE")? as u32,
            worker_bin: worker_bin(&l),
            trusted_proxies: match l.var("TRUSTED_PROXIES") {
                None => Default::default(),
                Some(v) => crate::wire::identity::TrustedProxies::parse(&v)
                    .map_err(|r| err("TRUSTED_PROXIES", &v, r))?,
            },
            allowed_origins: match l.var("ALLOWED_ORIGINS") {
                None => None,
                Some(v) => Some(parse_origins(&v).map_err(|r| err("ALLOWED_ORIGINS", &v, r))?),
            },
            permissions_ca_file: l.var("PERMISSIONS_CA_FILE").map(PathBuf::from),
            permissions_ca: Vec::new(),
            max_candidates: l.num("MAX_CANDIDATES")? as usize,
            ice_per_second: l.num("ICE_PER_SECOND")? as u32,
            ice_burst: l.num("ICE_BURST")? as u32,
            http_header_timeout: l.millis("HTTP_HEADER_TIMEOUT_MS")?,
            max_connections: l.num("MAX_CONNECTIONS")? as usize,
            ws_ping: l.millis("WS_PING_MS")?,
            ws_idle: l.millis("WS_IDLE_MS")?,
            ws_send_queue: l.num("WS_SEND_QUEUE")? as usize,
            ws_send_timeout: l.millis("WS_SEND_TIMEOUT_MS")?,
            cluster: cluster::cluster(&l, cluster::hostname)?,
        })
    }

    /// What front checks on the machine before it uses the configuration: that its sockets'
    /// paths under `RUNTIME_DIR` fit a Unix socket address, and the `PERMISSIONS_CA_FILE`
    /// certificates, read here. Kept out of [`Config::from_lookup`] so that reading a
    /// configuration (tests, tools) never depends on the file system.
    pub fn prepare(mut self) -> Result<Config, ConfigError> {
        crate::wire::socket::check_socket_dir(&self.runtime_dir)
            .map_err(|r| err("RUNTIME_DIR", &self.runtime_dir.display().to_string(), r))?;
        if let Some(path) = &self.permissions_ca_file {
            self.permissions_ca = load_ca_file(path)
                .map_err(|r| err("PERMISSIONS_CA_FILE", &path.display().to_string(), r))?;
        }
        Ok(self)
    }
}

/// `LISTEN` and `DEV_MODE`, which go together: development mode opens identity by query
/// string and allow-all, so it is refused unless front listens on loopback only.
fn listen_and_mode<F: Fn(&str) -> Option<String>>(
    l: &Lookup<F>,
) -> Result<(SocketAddr, bool), ConfigError> {
    let dev_mode = l.flag("DEV_MODE")?;
    let listen_s = l.text("LISTEN");
    let listen = parse_listen(&listen_s).map_err(|r| err("LISTEN", &listen_s, r))?;
    if dev_mode && !listen.ip().is_loopback() {
        return Err(err(
            "DEV_MODE",
            "1",
            format!(
                "development mode is refused unless LISTEN is a loopback address (LISTEN={listen_s} listens on {}); set LISTEN=127.0.0.1:PORT or turn DEV_MODE off",
                listen.ip()
            ),
        ));
    }
    Ok((listen, dev_mode))
}

/// `PERMISSIONS_HOST`: an http(s) base URL, or `allow-all` in development mode.
fn permissions<F: Fn(&str) -> Option<String>>(
    l: &Lookup<F>,
    dev_mode: bool,
) -> Result<Permissions, ConfigError> {
    let perm_s = l.text("PERMISSIONS_HOST");
    if perm_s == "allow-all" {
        if !dev_mode {
            return Err(err(
                "PERMISSIONS_HOST",
                &perm_s,
                "allow-all is only accepted with DEV_MODE=1".into(),
            ));
        }
        Ok(Permissions::AllowAll)
    } else if perm_s.starts_with("http://") || perm_s.starts_with("https://") {
        Ok(Permissions::Http(perm_s.trim_end_matches('/').to_string()))
    } else {
        Err(err(
            "PERMISSIONS_HOST",
            &perm_s,
            "expected an http(s):// URL".into(),
        ))
    }
}

/// What the workers are told about media: addresses, ports, slots, ICE timers, caps.
fn media<F: Fn(&str) -> Option<String>>(l: &Lookup<F>) -> Result<MediaConfig, ConfigError> {
    let bind_ip = l.ip("RTC_BIND_IP")?;
    let public_ip = l.ip("PUBLIC_IP")?;
    let ports_s = l.text("RTC_PORTS");
    let ports = parse_port_range(&ports_s).map_err(|r| err("RTC_PORTS", &ports_s, r))?;
    // ICE-TCP: by default the same numbers as RTC_PORTS (a worker takes its UDP port's
    // number for TCP when it is free); `off` offers no TCP candidate.
    let tcp_ports = match l.var("RTC_TCP_PORTS") {
        Some(v) if matches!(v.trim(), "off" | "0" | "false" | "no") => None,
        Some(v) => {
            let r = parse_port_range(&v).map_err(|r| err("RTC_TCP_PORTS", &v, r))?;
            Some((*r.start(), *r.end()))
        }
        None => Some((*ports.start(), *ports.end())),
    };
    Ok(MediaConfig {
        bind_ip,
        ports: (*ports.start(), *ports.end()),
        tcp_ports,
        public_ip,
        max_slots: l.num("MAX_SLOTS")? as usize,
        ice_disconnected_ms: l.num("ICE_DISCONNECTED_MS")?,
        ice_failed_ms: l.num("ICE_FAILED_MS")?,
        member_packets_per_s: l.num("MEMBER_PACKETS_PER_S")? as u32,
        member_bytes_per_s: l.num("MEMBER_BYTES_PER_S")? as u32,
        first_connect_ms: l.num("WORKER_FIRST_CONNECT_MS")?,
        socket_recv_buffer: l.num("RTC_RECV_BUFFER_BYTES")? as u32,
        socket_send_buffer: l.num("RTC_SEND_BUFFER_BYTES")? as u32,
        fanout_threads: l.num("RTC_FANOUT_THREADS")? as u32,
        red_distance: l.num("RED_DISTANCE")? as u8,
    })
}

/// `STATE_DIR`, else systemd's `STATE_DIRECTORY`, else `/var/lib/beep-webrtc`.
fn state_dir<F: Fn(&str) -> Option<String>>(l: &Lookup<F>) -> PathBuf {
    match l.var("STATE_DIR") {
        Some(d) => PathBuf::from(d),
        None => match l.var("STATE_DIRECTORY") {
            // systemd's StateDirectory= may list several, separated by colons.
            Some(x) => PathBuf::from(x.split(':').next().unwrap_or(&x)),
            None => PathBuf::from("/var/lib/beep-webrtc"),
        },
    }
}

/// The bite settings, `None` when `BITES` is off (the others are then not read).
fn bites<F: Fn(&str) -> Option<String>>(l: &Lookup<F>) -> Result<Option<Bites>, ConfigError> {
    if !l.flag("BITES")? {
        return Ok(None);
    }
    Ok(Some(Bites {
        bite_subject: l.subject("BITE_SUBJECT")?,
        store_subject: l.subject("STORE_SUBJECT")?,
        silence_ms: l.num("BITE_SILENCE_MS")?,
        max_ms: l.num("BITE_MAX_MS")?,
        spool_max_bytes: l.num("SPOOL_MAX_BYTES")?,
    }))
}

/// `WORKER_BIN`, else the `worker` binary beside the running executable.
fn worker_bin<F: Fn(&str) -> Option<String>>(l: &Lookup<F>) -> PathBuf {
    match l.var("WORKER_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("worker")))
            .unwrap_or_else(|| PathBuf::from("worker")),
    }
}

/// `ALLOWED_ORIGINS`: comma-separated `scheme://host[:port]` (compared case-insensitively,
/// without a trailing slash), or `null` for the origin browsers send from opaque contexts.
pub fn parse_origins(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let o = item.trim_end_matches('/').to_ascii_lowercase();
        let rest = o
            .strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://"));
        let valid = o == "null"
            || rest.is_some_and(|r| {
                !r.is_empty() && !r.contains(['/', '?', '#', '@', ' ']) && !r.starts_with(':')
            });
        if !valid {
            return Err(format!(
                "{item:?} is not an origin: expected scheme://host[:port], e.g. https://app.example"
            ));
        }
        out.push(o);
    }
    if out.is_empty() {
        return Err("expected one or more origins, e.g. https://app.example".into());
    }
    Ok(out)
}

/// Reads `PERMISSIONS_CA_FILE`: the PEM certificates an https:// permissions service is
/// checked against (instead of the built-in public roots).
pub fn load_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

/// `MAX_FRAME_BYTES` must stay well under the front ↔ worker frame limit: a client's frame
/// crosses to the worker inside one IPC frame, and what comes back repeats parts of it.
fn max_frame_bytes(n: u64) -> Result<usize, (String, String)> {
    use crate::wire::frame::{MAX_FRAME, MAX_SIGNAL_FRAME};
    if n > MAX_SIGNAL_FRAME as u64 {
        return Err((
            n.to_string(),
            format!(
                "must stay well under the front-worker frame limit MAX_FRAME ({MAX_FRAME} bytes): at most {MAX_SIGNAL_FRAME}"
            ),
        ));
    }
    Ok(n as usize)
}

/// `RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/beep-webrtc`, else `/run/beep-webrtc` (shared with
/// `ctl`, which must find the same sockets).
pub fn runtime_dir(get: impl Fn(&str) -> Option<String>) -> PathBuf {
    let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());
    match var("RUNTIME_DIR") {
        Some(d) => PathBuf::from(d),
        None => match var("XDG_RUNTIME_DIR") {
            Some(x) => PathBuf::from(x).join("beep-webrtc"),
            None => PathBuf::from("/run/beep-webrtc"),
        },
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" => Some(true),
        "0" | "false" | "off" | "no" => Some(false),
        _ => None,
    }
}

/// `:8080` (Go style: all interfaces), `127.0.0.1:8080`, `[::1]:8080`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| "expected :PORT or HOST:PORT".to_string())?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    s.parse()
        .map_err(|_| "expected :PORT or IP:PORT".to_string())
}

/// `50000-59999`: an inclusive range of UDP ports.
pub fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = s
        .trim()
        .split_once('-')
        .ok_or("expected LOW-HIGH, e.g. 50000-59999")?;
    let lo: u16 = a.trim().parse().map_err(|_| "LOW is not a port number")?;
    let hi: u16 = b.trim().parse().map_err(|_| "HIGH is not a port number")?;
    if lo == 0 || lo > hi {
        return Err("expected 1 <= LOW <= HIGH".into());
    }
    Ok(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = load(&[]).expect("defaults are valid");
        assert_eq!(c.listen, "0.0.0.0:80".parse::<SocketAddr>().unwrap());
        assert_eq!(c.nats, "nats://localhost:4222");
        assert_eq!(
            c.permissions,
            Permissions::Http("http://permissions".into())
        );
        assert_eq!(c.media.ports, (50000, 59999));
        assert_eq!(c.media.max_slots, 3);
        assert_eq!(c.media.bind_ip, None);
        assert!(!c.dev_mode);
    }

    #[test]
    fn go_style_listen_means_all_interfaces() {
        assert_eq!(
            parse_listen(":8080").unwrap(),
            "0.0.0.0:8080".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            parse_listen("127.0.0.1:9").unwrap(),
            "127.0.0.1:9".parse::<SocketAddr>().unwrap()
        );
        assert!(parse_listen("localhost").is_err());
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("LISTEN", "nope"),
            ("RTC_PORTS", "9-1"),
            ("RTC_BIND_IP", "x.y"),
            ("MAX_SLOTS", "0"),
            ("PERMISSIONS_HOST", "ftp://x"),
            ("DEV_MODE", "maybe"),
        ] {
            let e = load(&[(k, v)]).expect_err(k);
            assert_eq!(e.var, k);
            assert!(e.to_string().contains(k), "{e}");
        }
    }

    #[test]
    fn max_frame_bytes_stays_well_under_the_ipc_frame_limit() {
        use crate::wire::frame::{MAX_FRAME, MAX_SIGNAL_FRAME};
        assert_eq!(load(&[]).unwrap().max_frame_bytes, 65_536);
        let ok = MAX_SIGNAL_FRAME.to_string();
        assert_eq!(
            load(&[("MAX_FRAME_BYTES", &ok)]).unwrap().max_frame_bytes,
            MAX_SIGNAL_FRAME
        );
        for too_close in [MAX_SIGNAL_FRAME + 1, MAX_FRAME - 64, MAX_FRAME, 16 << 20] {
            let e = load(&[("MAX_FRAME_BYTES", &too_close.to_string())]).expect_err("refused");
            assert_eq!(e.var, "MAX_FRAME_BYTES");
            let line = e.to_string();
            assert!(
                line.contains("MAX_FRAME_BYTES") && line.contains("MAX_FRAME ("),
                "{line}"
            );
        }
    }

    #[test]
    fn worker_limits() {
        let c = load(&[]).unwrap();
        assert_eq!((c.max_workers, c.new_conversations_per_minute), (512, 10));
        let c = load(&[("MAX_WORKERS", "2"), ("NEW_CONVERSATIONS_PER_MINUTE", "3")]).unwrap();
        assert_eq!((c.max_workers, c.new_conversations_per_minute), (2, 3));
        for k in ["MAX_WORKERS", "NEW_CONVERSATIONS_PER_MINUTE"] {
            assert_eq!(load(&[(k, "0")]).expect_err(k).var, k);
        }
    }

    #[test]
    fn allow_all_needs_dev_mode() {
        assert!(load(&[("PERMISSIONS_HOST", "allow-all")]).is_err());
        let c = load(&[
            ("PERMISSIONS_HOST", "allow-all"),
            ("DEV_MODE", "1"),
            ("LISTEN", "127.0.0.1:8080"),
        ])
        .unwrap();
        assert_eq!(c.permissions, Permissions::AllowAll);
    }

    #[test]
    fn dev_mode_needs_a_loopback_listen() {
        for listen in [":8080", "0.0.0.0:8080", "[::]:8080", "10.1.2.3:80"] {
            let e = load(&[("DEV_MODE", "1"), ("LISTEN", listen)]).expect_err(listen);
            assert_eq!(e.var, "DEV_MODE");
            assert!(e.to_string().contains("LISTEN"), "{e}");
        }
        for listen in ["127.0.0.1:8080", "[::1]:8080", "127.0.0.2:1"] {
            assert!(
                load(&[("DEV_MODE", "1"), ("LISTEN", listen)]).is_ok(),
                "{listen}"
            );
        }
    }

    #[test]
    fn security_settings() {
        let c = load(&[]).unwrap();
        assert_eq!(c.trusted_proxies, Default::default());
        assert_eq!(c.allowed_origins, None);
        assert_eq!(c.max_candidates, 32);
        let c = load(&[
            ("TRUSTED_PROXIES", "10.0.0.0/8"),
            (
                "ALLOWED_ORIGINS",
                "https://app.example, HTTP://Local.Test:8080/",
            ),
        ])
        .unwrap();
        assert!(!c.trusted_proxies.trusts("127.0.0.1".parse().unwrap()));
        assert_eq!(
            c.allowed_origins.unwrap(),
            ["https://app.example", "http://local.test:8080"]
        );
        for (k, v) in [
            ("TRUSTED_PROXIES", "nope"),
            ("ALLOWED_ORIGINS", "app.example"),
            ("PERMISSIONS_CA_FILE", "/nonexistent/ca.pem"),
            ("RUNTIME_DIR", &format!("/tmp/{}", "x".repeat(120))),
        ] {
            let e = load(&[(k, v)]).and_then(Config::prepare).expect_err(k);
            assert_eq!(e.var, k, "{e}");
        }
    }

    #[test]
    fn reading_the_configuration_touches_no_file() {
        let c = load(&[
            ("PERMISSIONS_CA_FILE", "/nonexistent/ca.pem"),
            ("RUNTIME_DIR", &format!("/tmp/{}", "x".repeat(120))),
        ])
        .expect("read without looking at the file system");
        assert_eq!(
            c.permissions_ca_file.as_deref(),
            Some(std::path::Path::new("/nonexistent/ca.pem"))
        );
        assert!(c.permissions_ca.is_empty());
        assert!(load(&[]).and_then(Config::prepare).is_ok());
    }
}
