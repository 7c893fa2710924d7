//! What the engine asks of one `rtc` peer connection beyond its `poll_*` loop: whether the
//! client closed it, the pair ICE selected, taking what it has queued to send, and writing a
//! forwarded copy into it.

use std::net::{IpAddr, SocketAddr};

use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::transport::{RTCDtlsTransport, RTCDtlsTransportState};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use rtc::sansio::Protocol;
use rtc::shared::TransportProtocol;

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::rtp;

use super::guard::panic_text;
use super::{Peer, Transmit, Transport};
use crate::wire::stats::DropStats;

/// Whether the client closed the connection (its DTLS close_notify arrived).
pub(super) fn closed_by_client(pc: &mut RTCPeerConnection) -> bool {
    with_dtls(pc, |t| t.state()) == Some(RTCDtlsTransportState::Closed)
}

/// `f` of the connection's DTLS transport. Under BUNDLE every receiver and sender shares
/// the one transport; any will do (a listen-only client's connection has senders only).
fn with_dtls<R>(
    pc: &mut RTCPeerConnection,
    f: impl FnOnce(&RTCDtlsTransport<'_>) -> R,
) -> Option<R> {
    let transceivers = pc.get_transceivers().count();
    if let Some(t) = (0..transceivers).find(|&t| {
        pc.rtp_receiver(RTCRtpReceiverId::from(t))
            .is_some_and(|r| r.transport().is_some())
    }) {
        return pc
            .rtp_receiver(RTCRtpReceiverId::from(t))
            .and_then(|r| r.transport().map(|t| f(&t)));
    }
    let t = (0..transceivers).find(|&t| {
        pc.rtp_sender(RTCRtpSenderId::from(t))
            .is_some_and(|s| s.transport().is_some())
    })?;
    pc.rtp_sender(RTCRtpSenderId::from(t))
        .and_then(|s| s.transport().map(|t| f(&t)))
}

/// The client's address on the pair ICE selected, if it has selected one.
pub(super) fn selected_remote(pc: &mut RTCPeerConnection) -> Option<SocketAddr> {
    let remote = with_dtls(pc, |t| {
        t.ice_transport()
            .get_selected_candidate_pair()
            .map(|p| (p.remote().address.clone(), p.remote().port))
    })??;
    let ip: IpAddr = remote.0.trim_matches(['[', ']']).parse().ok()?;
    Some(SocketAddr::new(ip, remote.1))
}

/// Moves every datagram the connection has queued into the engine's outbox.
pub(super) fn flush(peer: &mut Peer, outbox: &mut Vec<Transmit>) {
    while let Some(msg) = peer.pc.poll_write() {
        let transport = if msg.transport.transport_protocol == TransportProtocol::TCP {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        outbox.push(Transmit {
            to: msg.transport.peer_addr,
            transport,
            data: msg.message,
        });
    }
}

/// Writes one forwarded copy into its listener's connection and queues what that makes to
/// send: `Ok(false)` if the connection refused it (counted), `Err` with what a panic said.
/// The listener's connection, not the speaker's: a panic here is the listener's.
pub(super) fn write_copy(
    peer: &mut Peer,
    packet: rtp::Packet,
    now: Instant,
    outbox: &mut Vec<Transmit>,
    drops: &mut DropStats,
) -> Result<bool, String> {
    let msg = TaggedRTCMessage {
        now,
        message: RTCMessage::RtpPacket(String::new(), packet),
    };
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        #[cfg(test)]
        if std::mem::take(&mut peer.panic_on_write) {
            panic!("injected by a test");
        }
        if peer.pc.handle_write(msg).is_err() {
            drops.connection_refused += 1;
            return false;
        }
        flush(peer, outbox);
        true
    }))
    .map_err(|panic| panic_text(&panic))
}
