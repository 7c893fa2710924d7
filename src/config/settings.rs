//! Every setting front reads, in one table: its name, its default, and for numbers the range
//! it accepts. [`super::Config::from_lookup`] takes defaults and ranges from here and from
//! nowhere else, and the tests below hold the README's configuration table and the example
//! environment file (`systemd/beep-webrtc.env`) to it, so the three cannot drift apart.

use crate::wire::ipc;

/// What a setting is when it is not set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DefaultValue {
    /// A whole number, accepted within `min..=max`.
    Number { default: u64, min: u64, max: u64 },
    /// A value as an operator would write it.
    Text(&'static str),
    /// Unset, or worked out at startup from something else (the README says from what).
    Derived,
}

/// One setting.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    pub name: &'static str,
    pub default: DefaultValue,
}

const fn number(name: &'static str, default: u64, min: u64, max: u64) -> Setting {
    Setting {
        name,
        default: DefaultValue::Number { default, min, max },
    }
}

const fn text(name: &'static str, default: &'static str) -> Setting {
    Setting {
        name,
        default: DefaultValue::Text(default),
    }
}

const fn derived(name: &'static str) -> Setting {
    Setting {
        name,
        default: DefaultValue::Derived,
    }
}

const SECOND: u64 = 1_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 86_400_000;

/// In the README's order.
pub const SETTINGS: &[Setting] = &[
    text("LISTEN", ":80"),
    text("NATS", "nats://localhost:4222"),
    text("PERMISSIONS_HOST", "http://permissions"),
    derived("PERMISSIONS_CA_FILE"),
    derived("TRUSTED_PROXIES"),
    derived("ALLOWED_ORIGINS"),
    derived("RTC_BIND_IP"),
    text("RTC_PORTS", "50000-59999"),
    derived("RTC_TCP_PORTS"),
    number(
        "RTC_RECV_BUFFER_BYTES",
        ipc::default_socket_buffer() as u64,
        0,
        1 << 30,
    ),
    number(
        "RTC_SEND_BUFFER_BYTES",
        ipc::default_socket_buffer() as u64,
        0,
        1 << 30,
    ),
    number("RTC_FANOUT_THREADS", 0, 0, 64),
    number("RED_DISTANCE", 1, 0, crate::media::red::MAX_DISTANCE as u64),
    derived("PUBLIC_IP"),
    number("MAX_SLOTS", 3, 1, 16),
    derived("RUNTIME_DIR"),
    derived("STATE_DIR"),
    text("BITES", "on"),
    text("BITE_SUBJECT", "bite"),
    text("STORE_SUBJECT", "store"),
    number("BITE_SILENCE_MS", 600, 20, 60 * SECOND),
    number("BITE_MAX_MS", 10 * SECOND, 100, 600 * SECOND),
    number("SPOOL_MAX_BYTES", 256 << 20, 1 << 16, 1 << 50),
    text("DEV_MODE", "off"),
    text("RUST_LOG", "info"),
    number("JOIN_TIMEOUT_MS", 30 * SECOND, 100, HOUR),
    number("WORKER_IDLE_MS", 30 * SECOND, 0, DAY),
    number("PERMISSIONS_TIMEOUT_MS", 2 * SECOND, 50, 60 * SECOND),
    number("MAX_SESSIONS_PER_USER", 8, 1, 10_000),
    number("MAX_FRAME_BYTES", 65_536, 1_024, 16 << 20),
    number("OFFERS_PER_MINUTE", 30, 1, 100_000),
    number("JOINS_PER_MINUTE", 30, 1, 100_000),
    // At most what `Offer::parse` takes in one offer (its hard cap, shared with workers).
    number(
        "MAX_CANDIDATES",
        32,
        1,
        crate::media::sdp::MAX_CANDIDATES as u64,
    ),
    number("ICE_PER_SECOND", 20, 1, 10_000),
    number("ICE_BURST", 40, 1, 100_000),
    number("HTTP_HEADER_TIMEOUT_MS", 10 * SECOND, 100, 600 * SECOND),
    number("MAX_CONNECTIONS", 10_000, 1, 1_000_000),
    number("WS_PING_MS", 20 * SECOND, 100, HOUR),
    number("WS_IDLE_MS", 60 * SECOND, 200, DAY),
    number("WS_SEND_QUEUE", 128, 1, 1_000_000),
    number("WS_SEND_TIMEOUT_MS", 10 * SECOND, 100, 600 * SECOND),
    number("MAX_WORKERS", 512, 1, 100_000),
    number("NEW_CONVERSATIONS_PER_MINUTE", 10, 1, 100_000),
    number("ICE_DISCONNECTED_MS", 5 * SECOND, 500, 600 * SECOND),
    number("ICE_FAILED_MS", 15 * SECOND, 500, HOUR),
    number(
        "MEMBER_PACKETS_PER_S",
        ipc::default_member_packets_per_s() as u64,
        0,
        1_000_000,
    ),
    number(
        "MEMBER_BYTES_PER_S",
        ipc::default_member_bytes_per_s() as u64,
        0,
        1 << 30,
    ),
    number(
        "WORKER_FIRST_CONNECT_MS",
        ipc::default_first_connect_ms(),
        0,
        DAY,
    ),
    derived("WORKER_BIN"),
    number("WORKER_HEARTBEAT_MS", 10 * SECOND, 3 * SECOND, 600 * SECOND),
    number("WORKER_ORPHAN_GRACE_MS", 60 * SECOND, SECOND, HOUR),
    number("DRAIN_TIMEOUT_MS", 5 * SECOND, 0, HOUR),
    text("CLUSTER", "off"),
    derived("NODE_ID"),
    text("CLUSTER_BUCKET", "beep-webrtc"),
    number("CLUSTER_NODE_TTL_MS", 6 * SECOND, SECOND, 600 * SECOND),
];

/// What the environment may hold that is not a setting of ours but feeds a default
/// (`RUNTIME_DIR`'s and `STATE_DIR`'s, as systemd and XDG set them).
pub const DEFAULT_INPUTS: &[&str] = &["XDG_RUNTIME_DIR", "STATE_DIRECTORY"];

/// The setting called `name`.
pub fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    use super::*;

    const README: &str = include_str!("../../README.md");
    const ENV_FILE: &str = include_str!("../../systemd/beep-webrtc.env");

    fn names() -> BTreeSet<&'static str> {
        SETTINGS.iter().map(|s| s.name).collect()
    }

    /// The default as the README and the env file write it, when there is one.
    fn written(d: DefaultValue) -> Option<String> {
        match d {
            DefaultValue::Number { default, .. } => Some(default.to_string()),
            DefaultValue::Text(t) => Some(t.to_string()),
            DefaultValue::Derived => None,
        }
    }

    #[test]
    fn the_table_is_what_front_reads() {
        // Everything unset: from_lookup looks at no directory, so the defaults read whole.
        let asked = RefCell::new(BTreeSet::new());
        let loaded = super::super::Config::from_lookup(|name| {
            asked.borrow_mut().insert(name.to_string());
            None
        });
        assert!(loaded.is_ok(), "{:?}", loaded.err());
        let mut asked: BTreeSet<String> = asked.into_inner();
        for input in DEFAULT_INPUTS {
            asked.remove(*input);
        }
        // RUST_LOG is read by the log setup (`telemetry`), before the configuration.
        asked.insert("RUST_LOG".into());
        let table: BTreeSet<String> = names().into_iter().map(String::from).collect();
        assert_eq!(asked, table, "read by from_lookup vs listed in SETTINGS");
        assert_eq!(table.len(), SETTINGS.len(), "a setting listed twice");
        for s in SETTINGS {
            if let DefaultValue::Number { default, min, max } = s.default {
                assert!(
                    (min..=max).contains(&default),
                    "{}: default out of range",
                    s.name
                );
            }
        }
    }

    #[test]
    fn the_readme_lists_every_setting_with_its_default() {
        let section = README
            .split("\n## Configuration")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("a Configuration section");
        let mut listed = BTreeSet::new();
        for row in section.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`');
            let cell = cells[2];
            let s = setting(name).unwrap_or_else(|| panic!("README lists {name}, SETTINGS not"));
            if let Some(want) = written(s.default) {
                // The first `code` of the cell, or the cell itself (`on`, `off`).
                let shown = cell.split('`').nth(1).unwrap_or(cell);
                assert_eq!(shown, want, "README's default of {name}");
            }
            listed.insert(s.name);
        }
        assert_eq!(listed, names(), "settings missing from the README");
    }

    #[test]
    fn the_env_file_lists_every_setting_at_its_default() {
        let mut listed = BTreeSet::new();
        for line in ENV_FILE.lines().filter_map(|l| l.strip_prefix('#')) {
            let Some((name, value)) = line.split_once('=') else {
                continue;
            };
            let Some(s) = setting(name) else {
                assert!(
                    !name.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                    "the env file lists {name}, SETTINGS not"
                );
                continue;
            };
            let want = written(s.default);
            match (want, s.default) {
                // Booleans are written as the values the parser takes (0/1).
                (_, DefaultValue::Text("on")) => assert_eq!(value, "1", "{name}"),
                (_, DefaultValue::Text("off")) => assert_eq!(value, "0", "{name}"),
                (Some(want), _) => assert_eq!(value, want, "the env file's default of {name}"),
                (None, _) => {}
            }
            listed.insert(s.name);
        }
        assert_eq!(listed, names(), "settings missing from the env file");
    }
}
