//! A few seconds of `loadgen` against a front it starts itself (the debug binaries), with the
//! full and with the light client: packets must flow and the JSON report must parse. No timing assertions: the numbers are for
//! `docs/BENCHMARKS.md`, made with release builds on a quiet machine.

use std::process::Command;
use std::time::{Duration, Instant};

/// Runs loadgen with `args` (besides the front it starts and a JSON path) and returns the
/// parsed JSON report; fails the test if loadgen fails or takes over `limit`. Whatever
/// loadgen started (front, workers, hogs) it stops itself, also on failure; a hung loadgen
/// is killed here.
fn run_loadgen(args: &[&str], limit: Duration) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--spawn-front", "--front-bin", env!("CARGO_BIN_EXE_front")])
        .args(["--worker-bin", env!("CARGO_BIN_EXE_worker")])
        .args(args)
        .args(["--quiet", "--json"])
        .arg(&json)
        .spawn()
        .expect("spawn loadgen");
    // loadgen stops itself; this only guards against a hang.
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait loadgen") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loadgen did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "loadgen failed: {status}");
    let text = std::fs::read_to_string(&json).expect("JSON report written");
    serde_json::from_str(&text).expect("JSON report parses")
}

#[test]
fn loadgen_runs_and_reports() {
    let r = run_loadgen(
        &[
            "--clients",
            "4",
            "--conversations",
            "1",
            "--speakers",
            "2",
            "--slots",
            "2",
            "--ramp",
            "0.2",
            "--warmup",
            "1",
            "--duration",
            "2",
            "--prefix",
            "smoke",
        ],
        Duration::from_secs(60),
    );
    let text = r.to_string();
    assert_eq!(r["client"], "full", "{text}");
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

/// The light client (`--client light`): every listener hears every speaker it should, with
/// (next to) no loss, and the report has the same sections as the full client's, plus the
/// send ticks and the drop counters of the window.
#[test]
fn light_client_delivers_and_reports() {
    let r = run_loadgen(
        &[
            "--client",
            "light",
            "--clients",
            "6",
            "--conversations",
            "2",
            "--speakers",
            "2",
            "--slots",
            "3",
            "--ramp",
            "0.3",
            "--warmup",
            "1",
            "--duration",
            "3",
            "--prefix",
            "smokelight",
        ],
        Duration::from_secs(60),
    );
    let text = r.to_string();
    assert_eq!(r["client"], "light", "{text}");
    assert_eq!(r["joins"]["answered"], 6, "{text}");
    assert_eq!(r["joins"]["failed"], 0, "{text}");
    assert_eq!(r["joins"]["warm"]["not_connected"], 0, "{text}");
    let fwd = &r["forwarding"];
    // Per conversation of 3: the 2 speakers hear each other, the listener hears both.
    assert_eq!(fwd["streams_expected"], 8, "{text}");
    let loss = &fwd["loss"];
    assert_eq!(loss["listeners"], 6, "{text}");
    assert_eq!(loss["starved"], 0, "{text}");
    assert!(loss["overall"].as_f64().unwrap() < 0.01, "loss: {text}");
    assert_eq!(loss["seq_gaps"], 0, "{text}");
    assert_eq!(loss["ts_backwards"], 0, "{text}");
    assert!(fwd["delivery"].as_f64().unwrap() > 0.95, "delivery: {text}");
    assert!(fwd["latency"]["n"].as_u64() > Some(0), "{text}");
    assert_eq!(r["server"]["workers"], 2, "{text}");
    assert!(
        r["server"]["cpu_us_per_packet"].as_f64().is_some(),
        "{text}"
    );
    // 4 speakers at 50 packets/s.
    let ticks = r["send_ticks"]["ticks_per_s"].as_f64().unwrap();
    assert!(ticks > 150.0, "send ticks: {text}");
    // The workers' sockets were found (one per peer connection today, or one per worker).
    assert!(
        r["drops"]["sfu_udp"]["sockets"].as_u64() >= Some(2),
        "{text}"
    );
    assert!(
        r["drops"]["metrics"]
            .as_array()
            .is_some_and(|m| m.iter().any(|c| c["series"]
                .as_str()
                .is_some_and(|s| s.starts_with("beep_packets_dropped")))),
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
