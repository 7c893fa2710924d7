//! The Debian package (`scripts/package`, README "Install"), installed into a fresh root:
//! `dpkg --root=DIR --force-script-chrootless` unpacks it there and runs its real maintainer
//! scripts with `DPKG_ROOT=DIR` (the host's systemd-sysusers and deb-systemd-helper, told to
//! work on DIR), in a mount namespace with an empty /run so nothing reaches the host's
//! systemd. Checked: every file with its owner and mode, the conffile, the unit's
//! `ExecStart` binary, `systemd-analyze verify --root=DIR`, the user the scripts created, the
//! unit enabled, an upgrade that keeps a modified conffile and an administrator's disable,
//! and a purge. Then the same scripts as on a host where systemd runs (stand-ins for
//! systemctl and the rest on PATH): an upgrade reloads a running unit, never restarts it.
//!
//! The package: `$BEEP_DEB`, else the newest `beep-webrtc_*.deb` under target/debian/
//! (scripts/test builds one with `scripts/package --profile package-test` first). Needs root
//! and dpkg, systemd (systemd-analyze, systemd-sysusers), init-system-helpers and util-linux:
//! without them, or without a package, skipped with a note, except under CI, where that is a
//! failure.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PKG: &str = "beep-webrtc";
const UNIT: &str = "beep-webrtc.service";
const BINS: [&str; 4] = ["front", "worker", "ctl", "bites"];
/// Every file the package installs (directories aside).
const FILES: [&str; 9] = [
    "/usr/bin/front",
    "/usr/bin/worker",
    "/usr/bin/ctl",
    "/usr/bin/bites",
    "/usr/lib/systemd/system/beep-webrtc.service",
    "/usr/lib/sysusers.d/beep-webrtc.conf",
    "/etc/beep-webrtc/env",
    "/usr/share/doc/beep-webrtc/README.md",
    "/usr/share/doc/beep-webrtc/copyright",
];
/// A child that takes longer than this is killed (`timeout`), and the test fails.
const CHILD_SECS: u32 = 120;

/// `--root=` and the like: an option with a path.
fn opt(prefix: &str, path: &Path) -> OsString {
    let mut o = OsString::from(prefix);
    o.push(path);
    o
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Outside CI a missing prerequisite skips the test with a note; under CI it fails.
fn unavailable(why: &str) -> Option<PathBuf> {
    assert!(
        std::env::var_os("CI").is_none(),
        "{why} (scripts/test provides it)"
    );
    eprintln!("NOTE: {why}: skipped");
    None
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// The package to test, once everything the test needs is there.
fn package() -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        return unavailable(
            "tests/package.rs installs with dpkg and mounts in a namespace: needs root",
        );
    }
    for (tool, deb) in [
        ("dpkg", "dpkg"),
        ("dpkg-deb", "dpkg"),
        ("systemd-analyze", "systemd"),
        ("systemd-sysusers", "systemd"),
        ("systemctl", "systemd"),
        ("deb-systemd-helper", "init-system-helpers"),
        ("unshare", "util-linux"),
        ("timeout", "coreutils"),
    ] {
        if !on_path(tool) {
            return unavailable(&format!("{tool} not installed (Debian `{deb}`)"));
        }
    }
    if let Some(deb) = std::env::var_os("BEEP_DEB") {
        let deb = PathBuf::from(deb);
        assert!(deb.is_file(), "BEEP_DEB={} is no file", deb.display());
        return Some(deb);
    }
    // cargo-deb writes to <target dir>/debian (scripts/package: other profiles to a folder
    // of their own there); CARGO_TARGET_TMPDIR is <target dir>/tmp.
    let debian = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("debian");
    let mut found: Vec<PathBuf> = Vec::new();
    for dir in std::iter::once(debian.clone()).chain(
        std::fs::read_dir(&debian)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir()),
    ) {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("beep-webrtc_") && name.ends_with(".deb") {
                found.push(entry.path());
            }
        }
    }
    let newest = found
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    match newest {
        Some(deb) => Some(deb),
        None => unavailable(&format!(
            "no beep-webrtc_*.deb in {} (build one: scripts/package)",
            debian.display()
        )),
    }
}

/// Runs `args` under `timeout`; the output whatever the exit status.
fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", &CHILD_SECS.to_string()]);
    cmd.args(args);
    let out = cmd.output().expect("run timeout");
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    assert_ne!(out.status.code(), Some(124), "timed out: {shown:?}");
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `args` and insists on success.
fn ok<S: AsRef<OsStr>>(args: &[S]) -> String {
    let out = run(args);
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    assert!(
        out.status.success(),
        "{shown:?}: {}\n{}",
        out.status,
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `args` in a private mount namespace whose /run is an empty tmpfs (so no script sees the
/// host's systemd); with `systemd_running`, /run/systemd/system exists there, which is how
/// maintainer scripts tell that systemd runs.
fn isolated<S: AsRef<OsStr>>(args: &[S], systemd_running: bool) -> Output {
    let setup = if systemd_running {
        "mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p /run/systemd/system && exec \"$@\""
    } else {
        "mount -t tmpfs -o mode=0755 tmpfs /run && exec \"$@\""
    };
    let mut all: Vec<&OsStr> = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        setup,
        "sh",
    ]
    .into_iter()
    .map(OsStr::new)
    .collect();
    all.extend(args.iter().map(AsRef::as_ref));
    run(&all)
}

/// An empty system for dpkg: its database, and /bin and /lib as Debian 12 has them (merged
/// /usr).
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in [
            "var/lib/dpkg/info",
            "var/lib/dpkg/updates",
            "var/lib/dpkg/triggers",
            "var/log",
            "etc",
            "usr/bin",
        ] {
            std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        for f in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
            std::fs::write(dir.path().join(f), "").expect("dpkg database");
        }
        std::os::unix::fs::symlink("usr/bin", dir.path().join("bin")).expect("/bin");
        std::fs::create_dir_all(dir.path().join("usr/lib")).expect("mkdir");
        std::os::unix::fs::symlink("usr/lib", dir.path().join("lib")).expect("/lib");
        Root { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }

    fn read(&self, p: &str) -> String {
        std::fs::read_to_string(self.path(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    /// dpkg on this root; its maintainer scripts run outside it with DPKG_ROOT set.
    /// `--force-depends`: libc6, libopus0 and systemd are the host's, not in the root's
    /// database.
    fn dpkg(&self, args: &[&OsStr]) -> String {
        let mut all: Vec<OsString> = vec![
            "dpkg".into(),
            opt("--root=", self.dir.path()),
            opt("--log=", &self.path("var/log/dpkg.log")),
            "--force-script-chrootless".into(),
            "--force-depends".into(),
        ];
        all.extend(args.iter().map(|a| a.to_os_string()));
        let out = isolated(&all, false);
        assert!(
            out.status.success(),
            "{all:?}: {}\n{}",
            out.status,
            text(&out)
        );
        text(&out)
    }

    fn install(&self, deb: &Path) -> String {
        self.dpkg(&[OsStr::new("--install"), deb.as_os_str()])
    }

    /// The package's paragraph of the root's dpkg status file.
    fn status(&self) -> String {
        self.read("var/lib/dpkg/status")
            .split("\n\n")
            .find(|p| p.lines().any(|l| l == format!("Package: {PKG}")))
            .unwrap_or_else(|| panic!("{PKG} not in the root's dpkg status"))
            .to_owned()
    }

    fn passwd_entry(&self) -> Option<String> {
        std::fs::read_to_string(self.path("etc/passwd"))
            .ok()?
            .lines()
            .find(|l| l.starts_with("beep-webrtc:"))
            .map(str::to_owned)
    }

    fn enabled(&self) -> bool {
        self.path("etc/systemd/system/multi-user.target.wants")
            .join(UNIT)
            .symlink_metadata()
            .is_ok()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn assert_file(root: &Root, path: &str, mode: u32) {
    let meta = std::fs::symlink_metadata(root.path(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(meta.file_type().is_file(), "{path} is not a regular file");
    assert_eq!(
        (meta.permissions().mode() & 0o7777, meta.uid(), meta.gid()),
        (mode, 0, 0),
        "{path}: mode {:o}, owner {}:{}",
        meta.permissions().mode() & 0o7777,
        meta.uid(),
        meta.gid()
    );
}

#[test]
fn installs_into_a_fresh_root() {
    let Some(deb) = package() else { return };
    let root = Root::new();
    root.install(&deb);

    let status = root.status();
    assert!(
        status.contains("\nStatus: install ok installed"),
        "{status}"
    );
    // The conffile is registered as one (and nothing else is).
    let conffiles: Vec<&str> = status
        .split_once("\nConffiles:\n")
        .map(|(_, rest)| rest.lines().take_while(|l| l.starts_with(' ')).collect())
        .unwrap_or_default();
    assert_eq!(conffiles.len(), 1, "{status}");
    assert!(
        conffiles[0].starts_with(" /etc/beep-webrtc/env "),
        "{status}"
    );

    // Exactly these files, as these owners and modes, with the repository's content.
    let listed = ok(&[
        OsStr::new("dpkg-query"),
        &opt("--admindir=", &root.path("var/lib/dpkg")),
        OsStr::new("--listfiles"),
        OsStr::new(PKG),
    ]);
    let mut files: Vec<&str> = listed.lines().filter(|f| !root.path(f).is_dir()).collect();
    files.sort_unstable();
    let mut expected = FILES.to_vec();
    expected.sort_unstable();
    assert_eq!(files, expected, "the package's files");
    for bin in BINS {
        assert_file(&root, &format!("/usr/bin/{bin}"), 0o755);
    }
    assert_file(&root, "/usr/lib/systemd/system/beep-webrtc.service", 0o644);
    assert_file(&root, "/usr/lib/sysusers.d/beep-webrtc.conf", 0o644);
    // It may hold NATS credentials: root only.
    assert_file(&root, "/etc/beep-webrtc/env", 0o600);
    let stale = "(a stale package? rebuild it: scripts/package)";
    for (installed, source) in [
        (
            "/usr/lib/systemd/system/beep-webrtc.service",
            "systemd/beep-webrtc.service",
        ),
        (
            "/usr/lib/sysusers.d/beep-webrtc.conf",
            "systemd/beep-webrtc.sysusers",
        ),
        ("/etc/beep-webrtc/env", "systemd/beep-webrtc.env"),
    ] {
        assert_eq!(
            root.read(installed),
            std::fs::read_to_string(repo(source)).expect("source"),
            "{installed} differs from {source} {stale}"
        );
    }

    // The unit starts the installed front, and front finds worker beside it.
    let unit = root.read("/usr/lib/systemd/system/beep-webrtc.service");
    let exec: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecStart="))
        .collect();
    assert_eq!(exec, ["/usr/bin/front"]);
    for bin in ["/usr/bin/front", "/usr/bin/worker"] {
        assert!(root.path(bin).is_file(), "{bin} missing");
    }

    // The installed build: no demo page (and no loadgen, which needs `loadtools`: the list
    // above), and it runs.
    let front = std::fs::read(root.path("/usr/bin/front")).expect("front");
    assert!(
        contains(&front, b"this build has no demo page"),
        "front was built with `demo`"
    );
    assert!(
        !contains(&front, b"<!doctype html>"),
        "front carries the demo page"
    );
    for bin in ["worker", "ctl", "bites"] {
        ok(&[
            root.path(&format!("/usr/bin/{bin}")).as_os_str(),
            OsStr::new("--help"),
        ]);
    }
    // front has no options: a bad setting makes it say so and exit 2 (in an empty
    // directory, with no .env).
    let out = run(&[
        OsStr::new("env"),
        &opt("--chdir=", root.dir.path()),
        OsStr::new("MAX_SLOTS=many"),
        root.path("/usr/bin/front").as_os_str(),
    ]);
    assert!(
        out.status.code() == Some(2) && text(&out).contains("MAX_SLOTS"),
        "front: {}\n{}",
        out.status,
        text(&out)
    );

    // Depends: what the binaries link (dpkg-shlibdeps), libopus0 among them.
    let depends = ok(&[
        OsStr::new("dpkg-deb"),
        OsStr::new("--field"),
        deb.as_os_str(),
        OsStr::new("Depends"),
    ]);
    for lib in ["libc6", "libopus0", "systemd"] {
        assert!(depends.contains(lib), "Depends: {depends}");
    }

    // What the maintainer scripts did: the user, and the unit enabled (not started: systemd
    // does not run in a root).
    let user = root
        .passwd_entry()
        .expect("postinst created no beep-webrtc user");
    let fields: Vec<&str> = user.split(':').collect();
    assert_eq!(fields[5], "/var/lib/beep-webrtc", "{user}");
    assert!(fields[6].ends_with("nologin"), "{user}");
    assert!(
        root.read("etc/group")
            .lines()
            .any(|l| l.starts_with("beep-webrtc:"))
    );
    assert!(root.enabled(), "postinst did not enable {UNIT}");
    let wants = std::fs::read_link(
        root.path("etc/systemd/system/multi-user.target.wants")
            .join(UNIT),
    )
    .expect("link");
    // (/lib/systemd/system/… on Debian 12, where /lib is /usr/lib.)
    assert!(
        wants.ends_with(format!("systemd/system/{UNIT}"))
            && root.path(&wants.to_string_lossy()).is_file(),
        "the unit is enabled as {}",
        wants.display()
    );

    // systemd-analyze verify on the root, as installed. A Debian system with this package has
    // systemd (its units: the targets ours names) and procps (/bin/kill, ExecReload=): the
    // host's stand in for them.
    ok(&[
        OsStr::new("cp"),
        OsStr::new("-a"),
        OsStr::new("/usr/lib/systemd/system/."),
        root.path("usr/lib/systemd/system").as_os_str(),
    ]);
    // The host's copies must not replace ours.
    assert_eq!(
        root.read("/usr/lib/systemd/system/beep-webrtc.service"),
        std::fs::read_to_string(repo("systemd/beep-webrtc.service")).expect("unit"),
        "the host has a beep-webrtc.service of its own"
    );
    std::fs::copy("/bin/kill", root.path("usr/bin/kill")).expect("kill");
    let out = run(&[
        OsStr::new("systemd-analyze"),
        OsStr::new("verify"),
        &opt("--root=", root.dir.path()),
        OsStr::new(UNIT),
    ]);
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify --root: {}\n{}",
        out.status,
        text(&out)
    );
}

#[test]
fn upgrade_keeps_settings_and_purge_cleans_up() {
    let Some(deb) = package() else { return };
    let root = Root::new();
    root.install(&deb);
    let user = root.passwd_entry().expect("user");

    // The administrator's settings, the spool the unit would have made, and `systemctl
    // disable`.
    let mut env = root.read("/etc/beep-webrtc/env");
    env.push_str("NATS=nats://nats.internal:4222\n");
    std::fs::write(root.path("/etc/beep-webrtc/env"), &env).expect("edit env");
    std::fs::create_dir_all(root.path("var/lib/beep-webrtc/spool")).expect("spool");
    std::fs::write(root.path("var/lib/beep-webrtc/spool/bite"), "ogg").expect("spool file");
    ok(&[
        OsStr::new("systemctl"),
        &opt("--root=", root.dir.path()),
        OsStr::new("disable"),
        OsStr::new(UNIT),
    ]);
    assert!(!root.enabled());

    // The next version: this package with a higher version number.
    let work = tempfile::tempdir().expect("tempdir");
    let tree = work.path().join("tree");
    ok(&[
        OsStr::new("dpkg-deb"),
        OsStr::new("--raw-extract"),
        deb.as_os_str(),
        tree.as_os_str(),
    ]);
    let control_path = tree.join("DEBIAN/control");
    let control = std::fs::read_to_string(&control_path).expect("control");
    let version = control
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .expect("Version")
        .to_owned();
    let next = format!("{version}+next1");
    std::fs::write(
        &control_path,
        control.replace(
            &format!("Version: {version}\n"),
            &format!("Version: {next}\n"),
        ),
    )
    .expect("control");
    let next_deb = work.path().join("next.deb");
    ok(&[
        OsStr::new("dpkg-deb"),
        OsStr::new("--root-owner-group"),
        OsStr::new("-Znone"),
        OsStr::new("--build"),
        tree.as_os_str(),
        next_deb.as_os_str(),
    ]);
    root.install(&next_deb);

    let status = root.status();
    assert!(status.contains(&format!("\nVersion: {next}\n")), "{status}");
    assert!(
        status.contains("\nStatus: install ok installed"),
        "{status}"
    );
    assert_eq!(
        root.read("/etc/beep-webrtc/env"),
        env,
        "the upgrade replaced the settings"
    );
    for leftover in ["env.dpkg-new", "env.dpkg-dist", "env.dpkg-old"] {
        assert!(
            !root.path("etc/beep-webrtc").join(leftover).exists(),
            "{leftover}"
        );
    }
    assert_file(&root, "/etc/beep-webrtc/env", 0o600);
    assert_eq!(
        root.passwd_entry().as_deref(),
        Some(user.as_str()),
        "the user changed"
    );
    assert!(
        !root.enabled(),
        "the upgrade enabled a unit the administrator had disabled"
    );
    assert!(root.path("var/lib/beep-webrtc/spool/bite").exists());

    // Purge: the files, the settings and the spool go; the user stays (Debian habit).
    root.dpkg(&[OsStr::new("--purge"), OsStr::new(PKG)]);
    for gone in FILES
        .iter()
        .chain(&["/etc/beep-webrtc", "/var/lib/beep-webrtc"])
    {
        assert!(!root.path(gone).exists(), "{gone} left after purge");
    }
    assert!(
        !root
            .read("var/lib/dpkg/status")
            .contains(&format!("Package: {PKG}\n"))
    );
    assert_eq!(root.passwd_entry().as_deref(), Some(user.as_str()));
}

/// The package's maintainer scripts and a directory of stand-ins for the systemd tools they
/// call, each of which logs its arguments.
struct Scripts {
    dir: tempfile::TempDir,
}

impl Scripts {
    fn extract(deb: &Path) -> Scripts {
        let dir = tempfile::tempdir().expect("tempdir");
        let control = dir.path().join("control");
        ok(&[
            OsStr::new("dpkg-deb"),
            OsStr::new("--control"),
            deb.as_os_str(),
            control.as_os_str(),
        ]);
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin");
        // `is-active` answers from $ACTIVE; deb-systemd-helper's `was-enabled` says yes (as
        // on a first install) and `debian-installed` no.
        let standin = r#"#!/bin/sh
echo "${0##*/} $*" >> "$LOG"
case " $* " in
*" is-active "*) exit "$ACTIVE" ;;
*" debian-installed "*) exit 1 ;;
esac
exit 0
"#;
        for tool in [
            "systemctl",
            "deb-systemd-invoke",
            "deb-systemd-helper",
            "systemd-sysusers",
        ] {
            let path = bin.join(tool);
            std::fs::write(&path, standin).expect("stand-in");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        Scripts { dir }
    }

    /// Runs one script (`postinst configure 0.1.0-1`, ...) as dpkg would on a host, with
    /// only the stand-ins on PATH; the calls it made.
    fn run(
        &self,
        script: &str,
        args: &[&str],
        systemd_running: bool,
        unit_active: bool,
    ) -> Vec<String> {
        let log = self.dir.path().join("log");
        let _ = std::fs::remove_file(&log);
        let path = self.dir.path().join("bin");
        let script_path = self.dir.path().join("control").join(script);
        let mut all: Vec<&OsStr> = vec![OsStr::new("env"), OsStr::new("-i")];
        let path_var = opt("PATH=", &path);
        let log_var = opt("LOG=", &log);
        all.push(&path_var);
        all.push(&log_var);
        all.push(OsStr::new(if unit_active {
            "ACTIVE=0"
        } else {
            "ACTIVE=3"
        }));
        all.push(OsStr::new("/bin/sh"));
        all.push(script_path.as_os_str());
        all.extend(args.iter().map(OsStr::new));
        let out = isolated(&all, systemd_running);
        assert!(
            out.status.success(),
            "{script} {args:?}: {}\n{}",
            out.status,
            text(&out)
        );
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// No call that starts, restarts or stops the unit.
fn assert_keeps_running(calls: &[String], what: &str) {
    for c in calls {
        let words: Vec<&str> = c.split_whitespace().collect();
        for action in [
            "start",
            "restart",
            "try-restart",
            "reload-or-restart",
            "stop",
            "--now",
        ] {
            assert!(!words.contains(&action), "{what}: `{c}` in {calls:?}");
        }
    }
}

#[test]
fn upgrade_reloads_a_running_service_and_never_restarts_it() {
    let Some(deb) = package() else { return };
    let s = Scripts::extract(&deb);
    let reload = "deb-systemd-invoke reload beep-webrtc.service".to_owned();
    let daemon_reload = "systemctl --system daemon-reload".to_owned();

    // The maintainer scripts are debian/'s, around the generated part.
    for script in ["postinst", "prerm", "postrm"] {
        let ours = std::fs::read_to_string(repo("debian").join(script)).expect("debian script");
        let (head, tail) = ours.split_once("#DEBHELPER#\n").expect("#DEBHELPER#");
        let packaged =
            std::fs::read_to_string(s.dir.path().join("control").join(script)).expect("script");
        assert!(
            packaged.starts_with(head) && packaged.ends_with(tail),
            "the package's {script} is not debian/{script} (a stale package? scripts/package)"
        );
    }

    // First install: the user, the unit enabled, systemd told; nothing started.
    let calls = s.run("postinst", &["configure"], true, false);
    assert!(
        calls.contains(&"systemd-sysusers beep-webrtc.conf".to_owned()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"deb-systemd-helper enable beep-webrtc.service".to_owned()),
        "{calls:?}"
    );
    assert!(calls.contains(&daemon_reload), "{calls:?}");
    assert_keeps_running(&calls, "first install");
    assert!(!calls.contains(&reload), "{calls:?}");

    // Upgrade of a running service: the old prerm leaves it running, the new postinst tells
    // systemd about the new unit, then reloads (front re-executes the new binary).
    let calls = s.run("prerm", &["upgrade", "0.1.0-2"], true, true);
    assert_keeps_running(&calls, "prerm upgrade");
    let calls = s.run("postinst", &["configure", "0.1.0-1"], true, true);
    assert_keeps_running(&calls, "upgrade");
    let at = |c: &String| calls.iter().position(|x| x == c);
    assert!(
        matches!((at(&daemon_reload), at(&reload)), (Some(d), Some(r)) if d < r),
        "no daemon-reload then reload: {calls:?}"
    );
    let calls = s.run("postrm", &["upgrade", "0.1.0-2"], true, true);
    assert_keeps_running(&calls, "postrm upgrade");

    // Upgrade of a stopped service: it stays stopped.
    let calls = s.run("postinst", &["configure", "0.1.0-1"], true, false);
    assert_keeps_running(&calls, "upgrade, stopped");
    assert!(!calls.contains(&reload), "{calls:?}");

    // Without systemd running (a container, a chroot): no systemctl at all.
    let calls = s.run("postinst", &["configure", "0.1.0-1"], false, true);
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("systemctl") || c.starts_with("deb-systemd-invoke")),
        "{calls:?}"
    );

    // Removal stops it.
    let calls = s.run("prerm", &["remove"], true, true);
    assert!(
        calls.contains(&"deb-systemd-invoke stop beep-webrtc.service".to_owned()),
        "{calls:?}"
    );
}
