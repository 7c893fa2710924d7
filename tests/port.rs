//! One UDP port per worker: every peer connection of a conversation shares its worker's one
//! socket (told apart by ICE username, then by address), and each conversation has a port
//! of its own. Real front, workers and webrtc-rs clients; the sockets are read from `/proc`,
//! as an operator would check them.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use beep_webrtc::tools::load::client::{Client, ClientOptions};
use common::{Front, Permissions, eventually, lost};

const T: Duration = Duration::from_secs(30);

/// A member with three receive slots, connected.
async fn member(front: &Front, conversation: &str, user: &str) -> Client {
    let mut o = ClientOptions::new(
        front.ws(&format!("?conversation={conversation}")),
        user,
        "app",
    );
    o.slots = 3;
    let c = Client::connect(o)
        .await
        .unwrap_or_else(|e| panic!("{user}: {e:#}"));
    c.wait_connected(T)
        .await
        .unwrap_or_else(|e| panic!("{user}: {e:#}"));
    c
}

/// The local ports of the UDP sockets process `pid` holds (`/proc/PID/fd` matched against
/// `/proc/net/udp` and `udp6`).
fn udp_ports_of(pid: u32) -> Vec<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && inodes.contains(cols[9]) {
                let port = cols[1].rsplit(':').next().unwrap_or("0");
                ports.push(u16::from_str_radix(port, 16).unwrap_or(0));
            }
        }
    }
    ports
}

/// 20 clients in one conversation, three of them speaking: the worker holds exactly one UDP
/// socket, everyone hears the three speakers (and never itself) with no loss; a second
/// conversation's worker has a port of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_of_twenty_shares_one_port_and_another_has_its_own() {
    let perms = Permissions::start().await;
    let front = Front::start(&perms.url(), &[]).await;
    let mut members = Vec::new();
    for i in 0..20 {
        members.push(member(&front, "big", &format!("m{i:02}")).await);
    }
    let speakers = ["m00", "m01", "m02"];
    for (i, tag) in speakers.iter().enumerate() {
        members[i].start_sending(tag, 20 + 5 * i as u8);
    }
    let everyone_hears = eventually(T, || {
        members.iter().enumerate().all(|(i, m)| {
            speakers
                .iter()
                .enumerate()
                .all(|(j, s)| i == j || m.heard_from(s) > 50)
        })
    })
    .await;
    assert!(
        everyone_hears,
        "not every member heard every other speaker: {:?}",
        members
            .iter()
            .map(|m| speakers.map(|s| m.heard_from(s)))
            .collect::<Vec<_>>()
    );
    for (i, s) in speakers.iter().enumerate() {
        assert_eq!(members[i].heard_from(s), 0, "{s} heard itself");
    }
    let lost_total: u64 = members
        .iter()
        .map(|m| speakers.iter().map(|s| lost(m, s)).sum::<u64>())
        .sum();
    assert_eq!(lost_total, 0, "packets lost on loopback");

    let big = front.worker_of("big").expect("big's worker");
    let big_ports = udp_ports_of(big);
    assert_eq!(
        big_ports.len(),
        1,
        "20 connections, one socket: {big_ports:?}"
    );

    let other = member(&front, "small", "solo").await;
    let small = front.worker_of("small").expect("small's worker");
    let small_ports = udp_ports_of(small);
    assert_eq!(small_ports.len(), 1, "{small_ports:?}");
    assert_ne!(big_ports, small_ports, "two conversations, two ports");
    println!("conversation big: 20 connections on UDP port {big_ports:?}; small: {small_ports:?}");

    other.close().await;
    for m in &members {
        m.close().await;
    }
}
