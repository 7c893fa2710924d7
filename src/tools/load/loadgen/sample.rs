//! What `/proc` says about the server under test and the machine, sampled during a run: front
//! and its workers at one moment ([`ServerSample`], from the per-process reading of
//! [`crate::front::procfs`]) and the busy time of each CPU.

use std::collections::HashMap;

use crate::front::procfs::{ProcSample, children_of, proc_sample};

/// Front and its workers at one moment.
#[derive(Clone, Debug, Default)]
pub(super) struct ServerSample {
    pub(super) front: ProcSample,
    pub(super) workers: HashMap<u32, ProcSample>,
}

impl ServerSample {
    pub(super) fn take(front_pid: u32) -> ServerSample {
        ServerSample {
            front: proc_sample(front_pid).unwrap_or_default(),
            workers: children_of(front_pid)
                .into_iter()
                .filter_map(|p| proc_sample(p).map(|s| (p, s)))
                .collect(),
        }
    }
    pub(super) fn workers_sum(&self, f: impl Fn(&ProcSample) -> u64) -> u64 {
        self.workers.values().map(f).sum()
    }
    /// CPU seconds of the workers since `earlier` (a worker new since then counts from 0).
    pub(super) fn workers_cpu_since(&self, earlier: &ServerSample) -> f64 {
        self.workers
            .iter()
            .map(|(pid, s)| s.cpu_s - earlier.workers.get(pid).map_or(0.0, |e| e.cpu_s))
            .sum()
    }
}

/// Busy and idle jiffies of one CPU (`/proc/stat`); busy includes irq and softirq.
pub(super) fn cpu_jiffies(cpu: usize) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let tag = format!("cpu{cpu} ");
    let l = s.lines().find(|l| l.starts_with(&tag))?;
    let f: Vec<u64> = l
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    (f.len() >= 8).then(|| (f[0] + f[1] + f[2] + f[5] + f[6] + f[7], f[3] + f[4]))
}

/// The machine's CPUs: the `cpuN` lines of `/proc/stat`, and at least as many as this
/// process may run on.
pub(super) fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(
            std::fs::read_to_string("/proc/stat")
                .map(|s| {
                    s.lines()
                        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
                        .count()
                })
                .unwrap_or(1),
        )
}
