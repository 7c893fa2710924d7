//! CPU hogs for the contention run (`--contention`): busy-loop processes pinned with
//! `taskset` to the SFU's CPUs, to loadgen's own CPUs, or both, started for the hogged window
//! and killed after it (by pid, also when the run fails: [`Hogs`] kills them on drop).
//!
//! Processes, not threads of loadgen: a hog thread's CPU would count as loadgen's own, and
//! loadgen's CPU share is one of the figures that say whether the clients kept up.

use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use clap::ValueEnum;
use serde::Serialize;

/// Where the hogs run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HogTarget {
    /// The CPUs of `--front-cpus` (front and its workers).
    Sfu,
    /// The CPUs loadgen itself may run on (the clients).
    Clients,
    /// Both sets.
    Both,
}

/// Running hog processes; killed when dropped.
pub(super) struct Hogs {
    children: Vec<Child>,
}

impl Hogs {
    /// `per_cpu` busy loops on every CPU of `cpus`.
    pub(super) fn start(cpus: &[usize], per_cpu: usize) -> anyhow::Result<Hogs> {
        let mut hogs = Hogs {
            children: Vec::new(),
        };
        for cpu in cpus {
            for _ in 0..per_cpu {
                let child = Command::new("taskset")
                    .arg("-c")
                    .arg(cpu.to_string())
                    .args(["sh", "-c", "while :; do :; done"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("spawning a CPU hog (taskset sh)")?;
                hogs.children.push(child);
            }
        }
        Ok(hogs)
    }

    #[cfg(test)]
    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The CPUs of `target`: `front_cpus` (a taskset list) for the SFU, this process's affinity
/// for the clients.
pub(super) fn target_cpus(
    target: HogTarget,
    front_cpus: Option<&str>,
) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    if matches!(target, HogTarget::Sfu | HogTarget::Both) {
        let Some(list) = front_cpus else {
            bail!("hogging the SFU needs --front-cpus");
        };
        cpus.extend(parse_cpu_list(list)?);
    }
    if matches!(target, HogTarget::Clients | HogTarget::Both) {
        let status = std::fs::read_to_string("/proc/self/status")?;
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .context("no Cpus_allowed_list in /proc/self/status")?;
        cpus.extend(parse_cpu_list(list.trim())?);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// A CPU list as taskset and `/proc` write them: `0`, `0-2,5`.
pub(super) fn parse_cpu_list(list: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("bad CPU list {list:?}");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (
                    a.trim().parse().with_context(bad)?,
                    b.trim().parse().with_context(bad)?,
                );
                if b < a || b - a > 4096 {
                    bail!("bad CPU list {list:?}");
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().with_context(bad)?),
        }
    }
    if cpus.is_empty() {
        bail!("empty CPU list {list:?}");
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }

    /// A hog is a real busy process on the CPU it was given, and gone once dropped.
    #[test]
    fn hogs_run_pinned_and_die_with_the_guard() {
        let hogs = Hogs::start(&[0], 1).expect("taskset is installed");
        let pid = hogs.pids()[0];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let allowed = loop {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let list = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_string();
            // taskset pins itself, then execs sh.
            if list == "0" || std::time::Instant::now() > deadline {
                break list;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(allowed, "0");
        drop(hogs);
        let gone = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit_once(')')
                .is_some_and(|x| x.1.trim_start().starts_with('Z'))
        });
        assert!(gone, "hog {pid} still running");
    }
}
