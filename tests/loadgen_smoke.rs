//! A few seconds of `loadgen` against a front it starts itself (the debug binaries): packets
//! must flow and the JSON report must parse. No timing assertions: the numbers are for
//! `docs/BENCHMARKS.md`, made with release builds on a quiet machine.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn loadgen_runs_and_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--spawn-front", "--front-bin", env!("CARGO_BIN_EXE_front")])
        .args(["--worker-bin", env!("CARGO_BIN_EXE_worker")])
        .args(["--clients", "4", "--conversations", "1", "--speakers", "2"])
        .args([
            "--slots",
            "2",
            "--ramp",
            "0.2",
            "--warmup",
            "1",
            "--duration",
            "2",
        ])
        .args(["--prefix", "smoke", "--quiet", "--json"])
        .arg(&json)
        .spawn()
        .expect("spawn loadgen");
    // loadgen stops itself; this only guards against a hang.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait loadgen") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loadgen did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "loadgen failed: {status}");
    let text = std::fs::read_to_string(&json).expect("JSON report written");
    let r: serde_json::Value = serde_json::from_str(&text).expect("JSON report parses");
    assert_eq!(r["joins"]["answered"], 4, "{text}");
    let fwd = &r["forwarding"];
    assert!(
        fwd["packets_received"].as_u64().unwrap_or(0) > 0,
        "no packets reached the listeners: {text}"
    );
    // Both speakers hear each other; both listeners hear both speakers.
    assert_eq!(fwd["streams_expected"], 6, "{text}");
    assert!(r["server"]["workers"].as_u64() == Some(1), "{text}");
    assert!(
        r["server"]["cpu_us_per_packet"].as_f64().is_some(),
        "{text}"
    );
    assert!(
        r["joins"]["warm"]["ws_open_to_connected"]["n"].as_u64() > Some(0),
        "{text}"
    );
}

/// `--help` is not an error and shows the options; an unknown flag is a usage error (exit 2).
#[test]
fn loadgen_help_and_bad_arguments() {
    let help = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("--help")
        .output()
        .expect("run loadgen --help");
    let text = String::from_utf8_lossy(&help.stdout);
    assert_eq!(help.status.code(), Some(0), "loadgen --help: {help:?}");
    assert!(text.contains("--spawn-front"), "{text}");

    let bad = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--spawn-front", "--bogus"])
        .output()
        .expect("run loadgen --bogus");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "loadgen --bogus: {bad:?}");
    assert!(err.contains("--bogus"), "{err}");
}
