//! Running a test in a network namespace of its own (root, as scripts/test runs): its
//! addresses, ports and packet filters touch nothing outside it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IN_NETNS: &str = "BEEP_TEST_IN_NETNS";

/// Runs `test` of this binary again inside a new network namespace with `lo` up; true when
/// this process is the one inside (and should run the scenario itself).
pub fn inside_namespace(test: &str) -> bool {
    if std::env::var_os(IN_NETNS).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new("unshare")
        .args([
            "--net",
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
        ])
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .stdin(Stdio::null())
        .spawn()
        .expect(
            "unshare (util-linux) and ip (iproute2); scripts/test installs them, and runs as root",
        );
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{test} in its namespace did not finish within 240 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "{test} failed inside its namespace: {status}"
    );
    false
}
