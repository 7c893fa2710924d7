//! What the engine asks of one `rtc` peer connection beyond its `poll_*` loop: whether the
//! client closed it, the pair ICE selected, and taking what it has queued to send.

use std::net::{IpAddr, SocketAddr};

use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::transport::{RTCDtlsTransport, RTCDtlsTransportState};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use rtc::sansio::Protocol;
use rtc::shared::TransportProtocol;

use super::{Peer, Transmit, Transport};

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
