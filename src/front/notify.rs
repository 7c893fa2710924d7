//! systemd notifications for `Type=notify` (the `sd-notify` crate): `READY=1` once front
//! listens and has re-adopted its workers, `WATCHDOG=1` from the housekeeping loop,
//! `RELOADING=1` before it re-executes itself, `STOPPING=1` on SIGTERM.
//!
//! Every function is a no-op without `NOTIFY_SOCKET` (not started by systemd, or a unit
//! without `Type=notify`). A failed send is logged, never fatal: systemd itself acts on the
//! silence (start timeout, watchdog).
//!
//! Front keeps these variables in its own environment, so a re-executed front still has
//! them (same pid, so `NotifyAccess=main` and `WATCHDOG_PID` stay right), and strips them
//! from every worker's ([`CHILD_ENV_REMOVE`]): a worker must neither report for the service
//! nor believe it is one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

/// Variables systemd (or socket activation) hands to the service's main process alone; the
/// supervisor removes them from each worker's environment (`Command::env_remove`).
pub const CHILD_ENV_REMOVE: &[&str] = &[
    // The notify socket and the watchdog: only front reports for the unit.
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    // Socket activation: the fds are front's.
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    // This run of the unit (a worker re-adopted by a later front outlives it), the file
    // descriptor store, the manager's pid, and the service's memory-pressure hook.
    "INVOCATION_ID",
    "FDSTORE",
    "MANAGERPID",
    "MEMORY_PRESSURE_WATCH",
    "MEMORY_PRESSURE_WRITE",
];

/// `READY=1`: front listens and has re-adopted its workers (also after a re-exec: it ends
/// the reload `reloading` began).
pub fn ready() {
    send("READY=1", &[NotifyState::Ready]);
}

/// `RELOADING=1` with `MONOTONIC_USEC` (CLOCK_MONOTONIC now, which systemd ≥ 253 requires to
/// tell this reload from an older one), before front re-executes itself; the new process
/// sends [`ready`] when it has re-adopted the workers.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send("RELOADING=1", &[NotifyState::Reloading, now]),
        Err(e) => {
            tracing::warn!("systemd notify: no monotonic clock ({e}); RELOADING=1 without it");
            send("RELOADING=1", &[NotifyState::Reloading]);
        }
    }
}

/// `STOPPING=1`: front is draining after SIGTERM.
pub fn stopping() {
    send("STOPPING=1", &[NotifyState::Stopping]);
}

/// `WATCHDOG=1`: front is alive. Call it from the housekeeping loop after it took the state
/// lock, so a stuck lock stops the pings and systemd restarts front.
pub fn watchdog() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = sd_notify::notify(&[NotifyState::Watchdog]) {
        // Pings come every few seconds: say it once, not every time.
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!("systemd notify: WATCHDOG=1 not sent: {e} (not repeated)");
        }
    }
}

/// The watchdog timeout systemd enforces (`WatchdogSec=`, from `WATCHDOG_USEC`, when
/// `WATCHDOG_PID` is unset or this process), or `None` when there is no watchdog. Ping with
/// [`watchdog`] at least twice per this interval (systemd's advice), e.g. every third.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

fn send(what: &str, state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("systemd notify: {what} not sent: {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;
    use std::process::Command;

    use super::*;

    /// Set in the copy of this test binary that [`notifies_the_socket_it_is_given`] starts:
    /// the environment is the child's own from its first instruction, so no test here sets
    /// a variable in a running (multi-threaded) test process.
    const CHILD: &str = "BEEP_NOTIFY_TEST_CHILD";

    /// Runs `test` (this module's) alone in a fresh copy of the test binary with `env`.
    fn run_child(test: &str, env: &[(&str, &str)]) {
        let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
        cmd.args([
            &format!("front::notify::tests::{test}"),
            "--exact",
            "--test-threads=1",
        ]);
        for k in CHILD_ENV_REMOVE {
            cmd.env_remove(k);
        }
        cmd.env(CHILD, "1").envs(env.iter().copied());
        let out = cmd.output().expect("run the test binary");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child {test}: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn usec(state: NotifyState) -> i128 {
        match state {
            NotifyState::MonotonicUsec(u) => u,
            _ => unreachable!(),
        }
    }

    /// The child half: sends everything to the `NOTIFY_SOCKET` its parent bound.
    #[test]
    fn child_sends_every_state() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        assert_eq!(watchdog_interval(), Some(Duration::from_secs(30)));
        ready();
        watchdog();
        reloading();
        stopping();
    }

    /// The child half: no `NOTIFY_SOCKET`, a watchdog meant for another pid.
    #[test]
    fn child_without_systemd() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        assert_eq!(watchdog_interval(), None);
        ready();
        watchdog();
        reloading();
        stopping();
    }

    #[test]
    fn notifies_the_socket_it_is_given() {
        if std::env::var_os(CHILD).is_some() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket.set_nonblocking(true).expect("nonblocking");
        let t0 = usec(NotifyState::monotonic_usec_now().expect("clock"));
        let pid = std::process::id().to_string();
        // WATCHDOG_PID names the child only once it runs: leave it unset (allowed: then the
        // watchdog is for whoever reads WATCHDOG_USEC).
        run_child(
            "child_sends_every_state",
            &[
                ("NOTIFY_SOCKET", path.to_str().expect("utf-8 path")),
                ("WATCHDOG_USEC", "30000000"),
            ],
        );
        let t1 = usec(NotifyState::monotonic_usec_now().expect("clock"));
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0], "READY=1\n");
        assert_eq!(got[1], "WATCHDOG=1\n");
        let reload: Vec<&str> = got[2].lines().collect();
        assert_eq!(reload[0], "RELOADING=1", "{got:?}");
        let mono: i128 = reload[1]
            .strip_prefix("MONOTONIC_USEC=")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("MONOTONIC_USEC in {got:?}"));
        assert!((t0..=t1).contains(&mono), "{t0} ≤ {mono} ≤ {t1}");
        assert_eq!(got[3], "STOPPING=1\n");

        // Without NOTIFY_SOCKET nothing is sent and nothing fails; a watchdog addressed to
        // another process (here: this one) is not the child's.
        run_child(
            "child_without_systemd",
            &[("WATCHDOG_USEC", "30000000"), ("WATCHDOG_PID", &pid)],
        );
        assert!(socket.recv(&mut buf).is_err(), "sent without NOTIFY_SOCKET");
    }

    #[test]
    fn workers_lose_every_systemd_variable() {
        for k in [
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "INVOCATION_ID",
        ] {
            assert!(CHILD_ENV_REMOVE.contains(&k), "{k}");
        }
    }
}
