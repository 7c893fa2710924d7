//! One member of a load run, whichever client it is: the full webrtc-crate client or the
//! light `rtc` one (`--client`). Load mode asks the same questions of both (timings, what
//! arrived, start/stop sending, close), so the report means the same for both.

use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde::Serialize;

use crate::tools::load::client::{Client, ClientOptions, StreamStats};
use crate::tools::load::light::{LightClient, LightDriver};

/// Which client loadgen runs (`--client`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    /// A webrtc-crate connection per client (driver task, interceptors, jitter buffer), as an
    /// application built on webrtc-rs has.
    #[default]
    Full,
    /// `rtc` sans-I/O connections, all driven by one task: no interceptors, no buffering, no
    /// decoding. Costs the load generator far less CPU per packet.
    Light,
}

/// A connected member of either kind.
pub(super) enum Member {
    Full(Client),
    Light(LightClient),
}

/// Client-side instants of a join.
pub(super) struct Timings {
    pub(super) started: Instant,
    pub(super) ws_open_at: Instant,
    pub(super) offer_sent_at: Instant,
    pub(super) answer_at: Instant,
}

impl Member {
    /// Connects a client of `kind` (a light one through `driver`).
    pub(super) async fn connect(
        kind: ClientKind,
        driver: Option<&LightDriver>,
        opts: ClientOptions,
    ) -> anyhow::Result<Member> {
        match (kind, driver) {
            (ClientKind::Light, Some(d)) => Ok(Member::Light(LightClient::connect(d, opts).await?)),
            (ClientKind::Light, None) => anyhow::bail!("a light client needs a driver"),
            (ClientKind::Full, _) => Ok(Member::Full(Client::connect(opts).await?)),
        }
    }

    pub(super) fn timings(&self) -> Timings {
        match self {
            Member::Full(c) => Timings {
                started: c.started,
                ws_open_at: c.ws_open_at,
                offer_sent_at: c.offer_sent_at,
                answer_at: c.answer_at,
            },
            Member::Light(c) => Timings {
                started: c.started,
                ws_open_at: c.ws_open_at,
                offer_sent_at: c.offer_sent_at,
                answer_at: c.answer_at,
            },
        }
    }

    pub(super) async fn wait_connected(&self, timeout: Duration) -> anyhow::Result<Duration> {
        match self {
            Member::Full(c) => c.wait_connected(timeout).await,
            Member::Light(c) => c.wait_connected(timeout).await,
        }
    }

    pub(super) fn connected_at(&self) -> Option<Instant> {
        match self {
            Member::Full(c) => c.connected_at(),
            Member::Light(c) => c.connected_at(),
        }
    }

    pub(super) fn ice_connected_at(&self) -> Option<Instant> {
        match self {
            Member::Full(c) => c.ice_connected_at(),
            Member::Light(c) => c.ice_connected_at(),
        }
    }

    pub(super) fn first_packet_at(&self) -> Option<Instant> {
        match self {
            Member::Full(c) => c.first_packet_at(),
            Member::Light(c) => c.first_packet_at(),
        }
    }

    pub(super) fn packets_received(&self) -> u64 {
        match self {
            Member::Full(c) => c.packets_received(),
            Member::Light(c) => c.packets_received(),
        }
    }

    pub(super) fn reset_latency(&self) {
        match self {
            Member::Full(c) => c.reset_latency(),
            Member::Light(c) => c.reset_latency(),
        }
    }

    pub(super) fn streams(&self) -> Vec<(u32, StreamStats)> {
        match self {
            Member::Full(c) => c.streams(),
            Member::Light(c) => c.streams(),
        }
    }

    pub(super) fn start_sending(&self, tag: &str, dbov: u8) {
        match self {
            Member::Full(c) => c.start_sending(tag, dbov),
            Member::Light(c) => c.start_sending(tag, dbov),
        }
    }

    pub(super) fn stop_sending(&self) {
        match self {
            Member::Full(c) => c.stop_sending(),
            Member::Light(c) => c.stop_sending(),
        }
    }

    pub(super) async fn close(&self) {
        match self {
            Member::Full(c) => c.close().await,
            Member::Light(c) => c.close().await,
        }
    }
}
