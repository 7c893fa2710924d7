//! What `/proc` says about a process: CPU time, memory, threads and open files, and its
//! children. Front reports its workers with it (`ctl workers`); the load generator samples
//! front and the workers with the same reading.

use serde::Serialize;

/// Linux `USER_HZ`, the unit of utime/stime in `/proc/PID/stat` (100 on every mainstream arch).
const CLK_TCK: f64 = 100.0;

/// One process as `/proc` shows it.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcSample {
    /// utime + stime of all its threads, seconds.
    pub cpu_s: f64,
    pub rss_kib: u64,
    /// Proportional set size: pages shared with other processes (the executable's text, which
    /// every worker maps) count by their share. The fair measure when many workers run.
    pub pss_kib: u64,
    /// Peak RSS (VmHWM).
    pub hwm_kib: u64,
    pub threads: u64,
    pub fds: u64,
}

pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    if f.first() == Some(&"Z") {
        return None;
    }
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    let count = |dir: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{dir}"))
            .map(|d| d.count() as u64)
            .unwrap_or(0)
    };
    Some(ProcSample {
        // Fields after the command: state(0) ppid(1) ... utime(11) stime(12).
        cpu_s: (ticks(11) + ticks(12)) as f64 / CLK_TCK,
        rss_kib: kib("VmRSS:"),
        pss_kib: std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("Pss:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0),
        hwm_kib: kib("VmHWM:"),
        threads: count("task"),
        fds: count("fd"),
    })
}

/// Live (non-zombie) children of `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(after) = stat.rsplit_once(')').map(|x| x.1) else {
            continue;
        };
        let f: Vec<&str> = after.split_whitespace().collect();
        if f.first() != Some(&"Z") && f.get(1).and_then(|x| x.parse::<u32>().ok()) == Some(pid) {
            v.push(p);
        }
    }
    v.sort_unstable();
    v
}

/// Whether `pid` still runs. A process that has exited is reaped here if it is our child
/// (a worker spawned before front re-executed itself is still front's child, and nobody
/// else would wait for it); a zombie that is not ours counts as gone.
pub fn alive(pid: u32) -> bool {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    match waitpid(
        nix::unistd::Pid::from_raw(pid as i32),
        Some(WaitPidFlag::WNOHANG),
    ) {
        Ok(WaitStatus::StillAlive) => true,
        Ok(_) => false,
        // Not our child (front was restarted): ask /proc.
        Err(_) => proc_sample(pid).is_some(),
    }
}

/// The command line of `pid`, its arguments split.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}
