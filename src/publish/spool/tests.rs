//! Spool tests: durability across a re-open, order, the cap, leftovers, locking.

use super::*;
use std::os::unix::process::CommandExt;

fn rec(start: u64, len: usize) -> BiteRecord {
    BiteRecord {
        key: "conv-1".into(),
        user: "alice".into(),
        client: "phone".into(),
        start,
        duration_ms: 1234,
        data: Bytes::from(vec![(start % 251) as u8; len]),
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn crc32_matches_the_standard_check_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

#[test]
fn record_round_trips_and_any_truncation_or_flip_is_detected() {
    let r = rec(42, 100);
    let enc = encode(&r).expect("encode");
    assert_eq!(decode(&enc), Ok(r));
    for cut in 0..enc.len() {
        assert!(decode(&enc[..cut]).is_err(), "truncated at {cut}");
    }
    for i in 0..enc.len() {
        let mut bad = enc.clone();
        bad[i] ^= 0x40;
        assert!(decode(&bad).is_err(), "bit flip at {i}");
    }
}

#[test]
fn put_survives_reopen_in_start_order() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("spool").join("conv-1");
    {
        let mut s = Spool::open(&dir, 1 << 20).expect("open");
        for start in [300, 100, 200] {
            s.put(&rec(start, 10)).expect("put");
        }
        assert_eq!(s.files(), 3);
        // Dropped without any shutdown step: as if the worker died here.
    }
    let mode = fs::metadata(&dir).expect("stat").mode() & 0o777;
    assert_eq!(mode, 0o700);
    let mut s = Spool::open(&dir, 1 << 20).expect("reopen");
    let pending = s.pending();
    let starts: Vec<u64> = pending.iter().map(|e| e.start).collect();
    assert_eq!(starts, [100, 200, 300]);
    assert_eq!(s.bytes(), pending.iter().map(|e| e.size).sum::<u64>());
    for e in &pending {
        assert_eq!(s.load(e).expect("load"), Some(rec(e.start, 10)));
    }
    // New puts continue the sequence rather than reuse a name.
    let e = s.put(&rec(100, 10)).expect("put same start");
    assert_eq!(e.seq, 3);
    for e in s.pending() {
        s.remove(&e).expect("remove");
    }
    assert_eq!((s.files(), s.bytes()), (0, 0));
    assert!(s.remove_if_empty().expect("rmdir"));
    assert!(!dir.exists());
}

#[test]
fn full_spool_refuses_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let one = encode(&rec(1, 1000)).expect("encode").len() as u64;
    let mut s = Spool::open(tmp.path(), 2 * one).expect("open");
    s.put(&rec(1, 1000)).expect("put 1");
    s.put(&rec(2, 1000)).expect("put 2");
    let before = names(tmp.path());
    match s.put(&rec(3, 1000)) {
        Err(SpoolError::Full { needed, used, max }) => {
            assert_eq!((needed, used, max), (one, 2 * one, 2 * one));
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(names(tmp.path()), before);
    assert_eq!(s.files(), 2);
    // Room again after an ack.
    let oldest = s.oldest().expect("oldest");
    s.remove(&oldest).expect("remove");
    s.put(&rec(3, 1000)).expect("put after remove");
}

#[test]
fn leftovers_and_corrupt_files_are_handled_without_blocking_the_rest() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    {
        let mut s = Spool::open(dir, 1 << 20).expect("open");
        for start in 1..=4 {
            s.put(&rec(start, 50)).expect("put");
        }
    }
    // A crash mid-put leaves a temp file.
    fs::write(
        dir.join(format!("{TEMP_PREFIX}{}", file_name(9, 9))),
        b"half",
    )
    .expect("temp");
    // A truncated file, a bit flip, a stray .bite name, a foreign file.
    let p2 = dir.join(file_name(2, 1));
    let full = fs::read(&p2).expect("read");
    fs::write(&p2, &full[..full.len() / 2]).expect("truncate");
    let p3 = dir.join(file_name(3, 2));
    let mut flipped = fs::read(&p3).expect("read");
    flipped[20] ^= 1;
    fs::write(&p3, flipped).expect("flip");
    fs::write(dir.join("garbage.bite"), b"x").expect("stray");
    fs::write(dir.join("README"), b"operator notes").expect("foreign");

    let mut s = Spool::open(dir, 1 << 20).expect("reopen");
    assert_eq!(s.files(), 4);
    let mut good = vec![];
    for e in s.pending() {
        if let Some(r) = s.load(&e).expect("load") {
            good.push(r.start);
            s.remove(&e).expect("remove");
        }
    }
    assert_eq!(good, [1, 4]);
    assert_eq!(s.files(), 0);
    assert_eq!(s.moved_aside(), 3);
    let corrupt = names(&dir.join(CORRUPT_DIR));
    assert_eq!(
        corrupt,
        [file_name(2, 1), file_name(3, 2), "garbage.bite".to_string()]
    );
    assert_eq!(names(dir), ["README".to_string(), CORRUPT_DIR.to_string()]);
    // Something is left for the operator: the directory stays.
    assert!(!s.remove_if_empty().expect("rmdir"));
}

#[test]
fn a_second_opener_is_locked_out_until_the_first_lets_go() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = Spool::open(tmp.path(), 1 << 20).expect("open");
    assert!(matches!(
        Spool::open(tmp.path(), 1 << 20),
        Err(SpoolError::Locked { .. })
    ));
    let t0 = Instant::now();
    assert!(matches!(
        Spool::open_wait(tmp.path(), 1 << 20, Duration::from_millis(100)),
        Err(SpoolError::Locked { .. })
    ));
    assert!(t0.elapsed() >= Duration::from_millis(100));
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        drop(first);
    });
    Spool::open_wait(tmp.path(), 1 << 20, Duration::from_secs(5)).expect("open after release");
    releaser.join().expect("thread");
}

#[test]
fn another_process_holding_the_lock_excludes_us_until_it_dies() {
    // util-linux flock(1) takes the same flock(2) lock on the directory from another process.
    let Ok(flock) = which_flock() else {
        eprintln!("flock(1) not installed; skipping the cross-process check");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    // --close: the lock stays with flock(1) itself, not with its child (our own spool opens the
    // directory O_CLOEXEC for the same reason: a child must not keep a dead worker's lock).
    // Its own process group, so the test can end both processes by that id.
    let mut holder = std::process::Command::new(flock)
        .args(["--exclusive", "--close"])
        .arg(tmp.path())
        .args(["sleep", "30"])
        .process_group(0)
        .spawn()
        .expect("spawn flock");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Spool::open(tmp.path(), 1 << 20) {
            Err(SpoolError::Locked { .. }) => break,
            Ok(s) => drop(s), // flock(1) has not taken it yet
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "flock(1) never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The holder dies (as a worker would): the kernel releases its lock.
    let group = format!("-{}", holder.id());
    let killed = std::process::Command::new("kill")
        .args(["-KILL", "--", &group])
        .status();
    if !killed.is_ok_and(|s| s.success()) {
        holder.kill().expect("kill");
    }
    holder.wait().expect("reap");
    Spool::open_wait(tmp.path(), 1 << 20, Duration::from_secs(5)).expect("open after death");
}

fn which_flock() -> Result<PathBuf, ()> {
    ["/usr/bin/flock", "/bin/flock"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or(())
}

#[test]
fn a_removed_directory_is_recreated_not_locked_stale() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("c");
    let s = Spool::open(&dir, 1 << 20).expect("open");
    assert!(s.remove_if_empty().expect("rmdir"));
    let mut s = Spool::open(&dir, 1 << 20).expect("reopen");
    s.put(&rec(1, 1)).expect("put");
    assert!(dir.join(file_name(1, 0)).exists());
}

#[test]
fn a_symlink_is_refused_and_an_open_directory_is_tightened() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let real = tmp.path().join("real");
    fs::create_dir(&real).expect("mkdir");
    fs::set_permissions(&real, Permissions::from_mode(0o755)).expect("chmod");
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    assert!(matches!(
        Spool::open(&link, 1 << 20),
        Err(SpoolError::NotADirectory { .. })
    ));
    Spool::open(&real, 1 << 20).expect("open real");
    assert_eq!(fs::metadata(&real).expect("stat").mode() & 0o777, 0o700);
}
