//! The files under `systemd/`: the unit passes `systemd-analyze verify` without a word about
//! it, its hardening stays where the README says (`systemd-analyze security`), the sysusers
//! file creates the service user, and the example environment file is valid syntax.
//!
//! The real front, given a fake `NOTIFY_SOCKET` (a datagram socket this test binds), reports
//! `READY=1`, `WATCHDOG=1` pings and `STOPPING=1` there, and its workers inherit none of it.
//!
//! Needs `systemd-analyze` and `systemd-sysusers` (Debian `systemd`, which scripts/test
//! installs): skipped with a note when missing, except under CI, where that is a failure.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use beep_webrtc::tools::load::client::{Client, ClientOptions};
use common::{Front, Permissions};

const UNIT: &str = "beep-webrtc.service";
/// The README's exposure score (`systemd-analyze security --offline=yes`: 1.3), in tenths as
/// `--threshold` takes it; a change to the unit that makes it worse fails here, so the
/// README is updated along with it.
const EXPOSURE_AT_MOST_TENTHS: u32 = 13;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs a systemd tool; `None` (after a note) when it is not installed outside CI.
fn run(cmd: &mut Command) -> Option<Output> {
    match cmd.output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("CI").is_none() => {
            eprintln!(
                "NOTE: {:?} not installed (Debian `systemd`; scripts/test installs it): skipped",
                cmd.get_program()
            );
            None
        }
        Err(e) => panic!("{:?}: {e} (Debian package `systemd`)", cmd.get_program()),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The unit as installed, but starting the front binary of this build (verify checks that
/// the executable exists), in a directory of its own.
fn unit_copy() -> (tempfile::TempDir, PathBuf) {
    let unit = std::fs::read_to_string(repo("systemd").join(UNIT)).expect("read the unit");
    let exec: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(
        exec,
        ["ExecStart=/usr/bin/front"],
        "the package (and the manual steps) put front in /usr/bin"
    );
    let unit = unit.replace(
        "ExecStart=/usr/bin/front",
        &format!("ExecStart={}", env!("CARGO_BIN_EXE_front")),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(UNIT);
    std::fs::write(&path, unit).expect("write the unit copy");
    (dir, path)
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let (_dir, path) = unit_copy();
    let Some(out) = run(Command::new("systemd-analyze").arg("verify").arg(&path)) else {
        return;
    };
    let all = text(&out);
    // verify also loads the units ours names (network-online.target, ...): a complaint
    // about one of the host's own unit files is the host's, not ours; it is shown, not
    // failed on. Everything else is about our unit.
    let host_unit = |l: &str| {
        [
            "/lib/systemd/",
            "/usr/lib/systemd/",
            "/etc/systemd/",
            "/run/systemd/",
        ]
        .iter()
        .any(|d| l.starts_with(d))
            && !l.contains(UNIT)
    };
    let (host, ours): (Vec<&str>, Vec<&str>) = all
        .lines()
        .filter(|l| !l.trim().is_empty())
        .partition(|l| host_unit(l));
    for l in &host {
        eprintln!("NOTE: systemd-analyze verify, about a host unit: {l}");
    }
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify {}: {}\n{}",
        path.display(),
        out.status,
        ours.join("\n")
    );
}

#[test]
fn unit_keeps_its_hardening() {
    let (_dir, path) = unit_copy();
    let Some(out) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--threshold={EXPOSURE_AT_MOST_TENTHS}"))
        .arg(&path))
    else {
        return;
    };
    let all = text(&out);
    let score = all
        .lines()
        .find_map(|l| {
            l.split_once("Overall exposure level for ")?
                .1
                .split_once(": ")
        })
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no exposure level in\n{all}"));
    let tenths = |s: &str| -> u32 {
        let (i, f) = s.split_once('.').unwrap_or((s, "0"));
        i.parse::<u32>().expect("score") * 10 + f.parse::<u32>().expect("score")
    };
    assert!(
        out.status.success() && tenths(score) <= EXPOSURE_AT_MOST_TENTHS,
        "exposure {score} > {EXPOSURE_AT_MOST_TENTHS} tenths (README): {all}"
    );
    // The choices the unit explains must stay as they are.
    let unit = std::fs::read_to_string(&path).expect("unit");
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "KillMode=process",
        "RuntimeDirectoryPreserve=yes",
        "StateDirectory=beep-webrtc",
        "EnvironmentFile=-/etc/beep-webrtc/env",
        "User=beep-webrtc",
        "OOMPolicy=continue",
        "CapabilityBoundingSet=",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lost `{line}`");
    }
    assert!(unit.lines().any(|l| l.starts_with("WatchdogSec=")));
    assert!(unit.lines().any(|l| l.starts_with("LimitNOFILE=")));
}

#[test]
fn sysusers_creates_the_service_user() {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(root.path().join("etc")).expect("etc");
    let Some(out) = run(Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(repo("systemd/beep-webrtc.sysusers")))
    else {
        return;
    };
    assert!(out.status.success(), "systemd-sysusers: {}", text(&out));
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).expect("passwd");
    let user = passwd
        .lines()
        .find(|l| l.starts_with("beep-webrtc:"))
        .unwrap_or_else(|| panic!("no beep-webrtc in {passwd}"));
    let fields: Vec<&str> = user.split(':').collect();
    assert_eq!(fields[5], "/var/lib/beep-webrtc", "{user}");
    assert!(fields[6].ends_with("nologin"), "{user}");
    let group = std::fs::read_to_string(root.path().join("etc/group")).expect("group");
    assert!(group.lines().any(|l| l.starts_with("beep-webrtc:")));
}

/// EnvironmentFile= syntax: comments, blank lines and KEY=VALUE; every setting it names is
/// one front reads (its settings table; that every one is there, at its default, is the
/// table's own unit test).
#[test]
fn example_environment_file_is_valid() {
    let env = std::fs::read_to_string(repo("systemd/beep-webrtc.env")).expect("env file");
    let mut named = 0;
    for line in env.lines().map(str::trim) {
        let assignment = match line.strip_prefix('#') {
            // A commented-out default: `#KEY=value` (no space after '#').
            Some(rest) if rest.split('=').next().is_some_and(is_key) && rest.contains('=') => rest,
            Some(_) => continue,
            None if line.is_empty() => continue,
            None => line,
        };
        let (key, _) = assignment
            .split_once('=')
            .unwrap_or_else(|| panic!("not KEY=VALUE: {line}"));
        assert!(is_key(key), "bad variable name in {line}");
        assert!(
            beep_webrtc::config::settings::setting(key).is_some(),
            "{key} is not a setting front reads"
        );
        named += 1;
    }
    assert_eq!(
        named,
        beep_webrtc::config::settings::SETTINGS.len(),
        "the env file names each setting once"
    );
}

fn is_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Every datagram that arrives on `socket` within `within` (or until `until` holds).
fn datagrams(
    socket: &UnixDatagram,
    got: &mut Vec<String>,
    within: Duration,
    until: impl Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !until(got) {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        if let Ok(n) = socket.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_notifies_systemd_and_its_workers_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).expect("bind the fake notify socket");
    let perms = Permissions::start().await;
    let front = Front::start(
        &perms.url(),
        &[
            ("NOTIFY_SOCKET", path.to_str().expect("utf-8 path")),
            ("WATCHDOG_USEC", "2000000"),
        ],
    )
    .await;
    let mut got = Vec::new();
    let pings = |g: &[String]| g.iter().filter(|m| m.as_str() == "WATCHDOG=1\n").count();
    datagrams(&socket, &mut got, Duration::from_secs(10), |g| {
        g.iter().any(|m| m == "READY=1\n") && pings(g) >= 2
    });
    assert_eq!(
        got.iter().filter(|m| m.as_str() == "READY=1\n").count(),
        1,
        "{got:?}"
    );
    assert!(pings(&got) >= 2, "{got:?}");

    // A worker: started without any of systemd's variables.
    let c = Client::connect(ClientOptions::new(
        front.ws("?conversation=notified"),
        "u",
        "app",
    ))
    .await
    .expect("client");
    c.wait_connected(Duration::from_secs(20))
        .await
        .expect("connected");
    let worker = front.worker_of("notified").expect("a worker");
    let environ = std::fs::read(format!("/proc/{worker}/environ")).expect("worker environ");
    for var in String::from_utf8_lossy(&environ).split('\0') {
        let name = var.split('=').next().unwrap_or("");
        assert!(
            !beep_webrtc::front::notify::CHILD_ENV_REMOVE.contains(&name),
            "the worker inherited {var}"
        );
    }
    c.close().await;

    // SIGTERM: STOPPING=1 before front exits.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(front.child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .expect("SIGTERM");
    datagrams(&socket, &mut got, Duration::from_secs(15), |g| {
        g.iter().any(|m| m == "STOPPING=1\n")
    });
    assert!(got.iter().any(|m| m == "STOPPING=1\n"), "{got:?}");
    // Only front speaks, and only these: nothing else arrived.
    for m in &got {
        assert!(
            ["READY=1\n", "WATCHDOG=1\n", "STOPPING=1\n"].contains(&m.as_str()),
            "unexpected notification {m:?}"
        );
    }
}
