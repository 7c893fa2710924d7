//! Configuration: read once at startup from the environment (and `.env`, which the environment
//! overrides). The names and defaults of SPEC §3 are a contract with operators and test
//! harnesses; everything else here is an addition documented in the README. A bad value stops
//! startup with one line naming the variable, because a half-configured SFU fails later in
//! ways that are much harder to read.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use crate::wire::ipc::{BiteConfig, MediaConfig};

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
    /// The worker executable; by default the `worker` binary beside the running `front`.
    pub worker_bin: PathBuf,
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
    /// Loads `.env` (if present; the real environment wins) and reads the configuration.
    pub fn load() -> Result<Config, ConfigError> {
        let _ = dotenvy::dotenv();
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get`, so tests can feed it without touching the
    /// process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let var = |name: &'static str| get(name).filter(|v| !v.trim().is_empty());
        let err = |var: &'static str, value: &str, reason: String| ConfigError {
            var,
            value: value.to_string(),
            reason,
        };
        let dev_mode = match var("DEV_MODE") {
            None => false,
            Some(v) => parse_bool(&v)
                .ok_or_else(|| err("DEV_MODE", &v, "expected 1/0, true/false, on/off".into()))?,
        };
        let listen_s = var("LISTEN").unwrap_or_else(|| ":80".into());
        let listen = parse_listen(&listen_s).map_err(|r| err("LISTEN", &listen_s, r))?;
        let nats = var("NATS").unwrap_or_else(|| "nats://localhost:4222".into());
        let perm_s = var("PERMISSIONS_HOST").unwrap_or_else(|| "http://permissions".into());
        let permissions = if perm_s == "allow-all" {
            if !dev_mode {
                return Err(err(
                    "PERMISSIONS_HOST",
                    &perm_s,
                    "allow-all is only accepted with DEV_MODE=1".into(),
                ));
            }
            Permissions::AllowAll
        } else if perm_s.starts_with("http://") || perm_s.starts_with("https://") {
            Permissions::Http(perm_s.trim_end_matches('/').to_string())
        } else {
            return Err(err(
                "PERMISSIONS_HOST",
                &perm_s,
                "expected an http(s):// URL".into(),
            ));
        };
        let ip = |name: &'static str| -> Result<Option<IpAddr>, ConfigError> {
            match var(name) {
                None => Ok(None),
                Some(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|e| err(name, &v, format!("not an IP address ({e})"))),
            }
        };
        let bind_ip = ip("RTC_BIND_IP")?;
        let public_ip = ip("PUBLIC_IP")?;
        let ports_s = var("RTC_PORTS").unwrap_or_else(|| "50000-59999".into());
        let ports = parse_port_range(&ports_s).map_err(|r| err("RTC_PORTS", &ports_s, r))?;
        let num =
            |name: &'static str, default: u64, min: u64, max: u64| -> Result<u64, ConfigError> {
                match var(name) {
                    None => Ok(default),
                    Some(v) => match v.trim().parse::<u64>() {
                        Ok(n) if (min..=max).contains(&n) => Ok(n),
                        _ => Err(err(
                            name,
                            &v,
                            format!("expected a whole number from {min} to {max}"),
                        )),
                    },
                }
            };
        let max_slots = num("MAX_SLOTS", 3, 1, 16)? as usize;
        let runtime_dir = runtime_dir(&get);
        let state_dir = match var("STATE_DIR") {
            Some(d) => PathBuf::from(d),
            None => match var("STATE_DIRECTORY") {
                // systemd's StateDirectory= may list several, separated by colons.
                Some(x) => PathBuf::from(x.split(':').next().unwrap_or(&x)),
                None => PathBuf::from("/var/lib/beep-webrtc"),
            },
        };
        let bites_on = match var("BITES") {
            None => true,
            Some(v) => parse_bool(&v)
                .ok_or_else(|| err("BITES", &v, "expected 1/0, true/false, on/off".into()))?,
        };
        let subject = |name: &'static str, default: &str| -> Result<String, ConfigError> {
            let v = var(name).unwrap_or_else(|| default.into());
            let valid = !v.is_empty()
                && v.split('.').all(|t| {
                    !t.is_empty() && t.bytes().all(|b| b > b' ' && b != b'*' && b != b'>')
                });
            if valid {
                Ok(v)
            } else {
                Err(err(
                    name,
                    &v,
                    "expected a NATS subject without wildcards".into(),
                ))
            }
        };
        let bites = if bites_on {
            Some(Bites {
                bite_subject: subject("BITE_SUBJECT", "bite")?,
                store_subject: subject("STORE_SUBJECT", "store")?,
                silence_ms: num("BITE_SILENCE_MS", 600, 20, 60_000)?,
                max_ms: num("BITE_MAX_MS", 10_000, 100, 600_000)?,
                spool_max_bytes: num("SPOOL_MAX_BYTES", 256 << 20, 1 << 16, 1 << 50)?,
            })
        } else {
            None
        };
        let worker_bin = match var("WORKER_BIN") {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("worker")))
                .unwrap_or_else(|| PathBuf::from("worker")),
        };
        Ok(Config {
            listen,
            nats,
            permissions,
            media: MediaConfig {
                bind_ip,
                ports: (*ports.start(), *ports.end()),
                public_ip,
                max_slots,
                ice_disconnected_ms: num("ICE_DISCONNECTED_MS", 5_000, 500, 600_000)?,
                ice_failed_ms: num("ICE_FAILED_MS", 15_000, 500, 3_600_000)?,
            },
            runtime_dir,
            state_dir,
            bites,
            dev_mode,
            join_timeout: Duration::from_millis(num("JOIN_TIMEOUT_MS", 30_000, 100, 3_600_000)?),
            worker_idle: Duration::from_millis(num("WORKER_IDLE_MS", 30_000, 0, 86_400_000)?),
            worker_orphan_grace: Duration::from_millis(num(
                "WORKER_ORPHAN_GRACE_MS",
                60_000,
                1_000,
                3_600_000,
            )?),
            worker_heartbeat: Duration::from_millis(num(
                "WORKER_HEARTBEAT_MS",
                10_000,
                3_000,
                600_000,
            )?),
            drain_timeout: Duration::from_millis(num("DRAIN_TIMEOUT_MS", 5_000, 0, 3_600_000)?),
            permissions_timeout: Duration::from_millis(num(
                "PERMISSIONS_TIMEOUT_MS",
                2_000,
                50,
                60_000,
            )?),
            max_sessions_per_user: num("MAX_SESSIONS_PER_USER", 8, 1, 10_000)? as usize,
            max_frame_bytes: num("MAX_FRAME_BYTES", 65_536, 1_024, 16 << 20)? as usize,
            offers_per_minute: num("OFFERS_PER_MINUTE", 30, 1, 100_000)? as u32,
            worker_bin,
        })
    }
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
    fn allow_all_needs_dev_mode() {
        assert!(load(&[("PERMISSIONS_HOST", "allow-all")]).is_err());
        let c = load(&[("PERMISSIONS_HOST", "allow-all"), ("DEV_MODE", "1")]).unwrap();
        assert_eq!(c.permissions, Permissions::AllowAll);
    }
}
