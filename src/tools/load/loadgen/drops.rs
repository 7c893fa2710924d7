//! Every drop counter a window can see, read before and after it: the ones front's `/metrics`
//! exposes (any series whose name starts `beep_` and contains `drop`, by name and labels, so a
//! reason the worker gains later shows up without a change here), and the kernel's count of
//! datagrams dropped at the UDP sockets (the `drops` column of `/proc/PID/net/udp` and
//! `udp6`) of the workers and of loadgen itself: a full receive buffer on the SFU's side is
//! the SFU's loss, on loadgen's side the clients not keeping up.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

/// The drop series of a `/metrics` text: `name{labels}` → value.
pub(super) fn metric_drops(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            if !(name.starts_with("beep_") && name.contains("drop")) {
                return None;
            }
            Some((series.to_string(), value.trim().parse::<f64>().ok()?))
        })
        .collect()
}

/// One drop series over a window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DropCounter {
    /// `name{labels}` as `/metrics` has it.
    pub series: String,
    pub before: f64,
    pub after: f64,
    pub delta: f64,
}

/// The `/metrics` drop series over a window (a series new in `after` counts from 0).
pub(super) fn metric_deltas(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> Vec<DropCounter> {
    after
        .iter()
        .map(|(series, a)| {
            let b = before.get(series).copied().unwrap_or(0.0);
            DropCounter {
                series: series.clone(),
                before: b,
                after: *a,
                delta: a - b,
            }
        })
        .collect()
}

/// The UDP sockets of some processes at one moment: socket inode → kernel drop count.
#[derive(Clone, Debug, Default)]
pub(super) struct UdpSockets(HashMap<u64, u64>);

impl UdpSockets {
    /// The UDP sockets (v4 and v6) that `pids` hold open, with their drop counts.
    pub(super) fn of(pids: &[u32]) -> UdpSockets {
        let mut inodes = HashSet::new();
        for pid in pids {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if let Ok(target) = std::fs::read_link(fd.path())
                    && let Some(inode) = target
                        .to_str()
                        .and_then(|t| t.strip_prefix("socket:["))
                        .and_then(|t| t.strip_suffix(']'))
                        .and_then(|t| t.parse::<u64>().ok())
                {
                    inodes.insert(inode);
                }
            }
        }
        let mut out = HashMap::new();
        // The tables of the processes' own network namespace (all of ours share one; reading
        // each pid's copy would only read the same table again).
        let Some(pid) = pids.first() else {
            return UdpSockets(out);
        };
        for table in ["udp", "udp6"] {
            let text =
                std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
            for (inode, drops) in parse_udp_table(&text) {
                if inodes.contains(&inode) {
                    out.insert(inode, drops);
                }
            }
        }
        UdpSockets(out)
    }
}

/// `(inode, drops)` of every row of a `/proc/net/udp` table.
fn parse_udp_table(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            let inode = f.get(9)?.parse().ok()?;
            let drops = f.get(12)?.parse().ok()?;
            Some((inode, drops))
        })
        .collect()
}

/// Kernel drops at some processes' UDP sockets over a window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UdpDrops {
    /// Sockets open at the end of the window.
    pub sockets: usize,
    /// Datagrams the kernel dropped at them during the window (a socket new since the start
    /// counts from 0; one closed meanwhile is not counted).
    pub drops: u64,
    /// Their drop counts at the end, since each socket was opened.
    pub total: u64,
}

impl UdpDrops {
    pub(super) fn between(before: &UdpSockets, after: &UdpSockets) -> UdpDrops {
        UdpDrops {
            sockets: after.0.len(),
            drops: after
                .0
                .iter()
                .map(|(inode, d)| d.saturating_sub(before.0.get(inode).copied().unwrap_or(0)))
                .sum(),
            total: after.0.values().sum(),
        }
    }
}

/// Every drop counter over one window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Drops {
    /// Front's `/metrics` drop series (the workers' counts, by reason).
    pub metrics: Vec<DropCounter>,
    /// The workers' UDP sockets.
    pub sfu_udp: UdpDrops,
    /// Loadgen's own UDP sockets (the clients').
    pub loadgen_udp: UdpDrops,
}

impl Drops {
    /// Everything dropped in the window, on either side.
    pub fn total(&self) -> f64 {
        self.metrics.iter().map(|m| m.delta).sum::<f64>()
            + (self.sfu_udp.drops + self.loadgen_udp.drops) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_series_are_read_by_name_and_labels() {
        let text = "# HELP beep_packets_dropped Packets workers dropped on purpose, by reason.\n\
                    # TYPE beep_packets_dropped counter\n\
                    beep_packets_dropped_total{reason=\"member-rate\"} 15\n\
                    beep_packets_dropped_total{reason=\"unselected-address\"} 2\n\
                    beep_socket_drops_total 7\n\
                    beep_packets_forwarded_total 900\n\
                    other_dropped_total 1\n";
        let m = metric_drops(text);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(
            m[r#"beep_packets_dropped_total{reason="member-rate"}"#],
            15.0
        );
        assert_eq!(m["beep_socket_drops_total"], 7.0);
        let mut later = m.clone();
        later.insert("beep_socket_drops_total".into(), 10.0);
        later.insert(r#"beep_packets_dropped_total{reason="new"}"#.into(), 4.0);
        let d = metric_deltas(&m, &later);
        let delta = |s: &str| d.iter().find(|c| c.series == s).map(|c| c.delta);
        assert_eq!(delta("beep_socket_drops_total"), Some(3.0));
        assert_eq!(
            delta(r#"beep_packets_dropped_total{reason="new"}"#),
            Some(4.0)
        );
        assert_eq!(
            delta(r#"beep_packets_dropped_total{reason="member-rate"}"#),
            Some(0.0)
        );
    }

    #[test]
    fn udp_table_rows() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                    \x20 1: 0100007F:C350 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 123456 2 0000000000000000 42\n";
        assert_eq!(parse_udp_table(text), vec![(123456, 42)]);
    }

    /// A socket of this very process is found by its inode, and the kernel's drop count of a
    /// socket nobody reads rises once its receive buffer is full.
    #[test]
    fn a_full_socket_buffer_is_counted() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let me = [std::process::id()];
        let before = UdpSockets::of(&me);
        assert!(before.0.len() >= 2, "{before:?}");
        let payload = [0u8; 1200];
        for _ in 0..20_000 {
            let _ = tx.send_to(&payload, rx.local_addr().unwrap());
        }
        let after = UdpSockets::of(&me);
        let d = UdpDrops::between(&before, &after);
        assert!(d.drops > 0, "{d:?}");
    }
}
