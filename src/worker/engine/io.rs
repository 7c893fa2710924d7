//! The engine's side of its ports: datagrams read from the UDP port (in batches, within a
//! turn's share) or from an ICE-TCP connection, routed by the demultiplexer to their
//! connection and handed to it, and what the connections queued sent out together.

use std::time::Instant;

use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use super::{
    CloseReason, DATAGRAM_TIME_SHARE, Engine, Input, PeerKey, Port, Received, TcpEvent, TcpPort,
    Transport, Verdict, closed_by_client, is_stun,
};

impl Engine {
    /// Reads and handles what is waiting at the port, up to `budget` datagrams and
    /// [`DATAGRAM_TIME_SHARE`]; what was read and not handled waits in `inbox` for the next
    /// turn (which then does not sleep). Returns whether a budget ran out (the engine is busy).
    pub(super) fn read_port(&mut self, budget: usize) -> bool {
        let start = Instant::now();
        let mut handled = 0;
        loop {
            while let Some(d) = self.inbox.pop() {
                self.on_datagram(d);
                handled += 1;
                if handled >= budget || start.elapsed() >= DATAGRAM_TIME_SHARE {
                    return true;
                }
            }
            let Some(port) = self.port.as_mut() else {
                return false;
            };
            if port.recv(&mut self.inbox, &mut self.drops) == 0 {
                return false;
            }
            // Popped from the back: in the order they arrived.
            self.inbox.reverse();
        }
    }

    /// One datagram from the port: to its connection, and what follows from it out.
    pub(super) fn on_datagram(&mut self, d: Received) {
        let verdict = self
            .demux
            .route((d.transport, d.from), &d.data, &mut self.drops);
        if let Some(tcp) = self.tcp.as_mut().filter(|_| d.transport == Transport::Tcp) {
            match verdict {
                Verdict::Deliver(_) => tcp.authenticated(d.from),
                Verdict::Drop => tcp.refused(d.from),
            }
        }
        if let Verdict::Deliver(key) = verdict {
            // It sends what the datagram led to.
            self.deliver(key, d);
        }
    }

    pub(super) fn on_tcp(&mut self, event: TcpEvent) {
        match event {
            TcpEvent::Frame(d) => self.on_datagram(d),
            TcpEvent::Closed(from) => {
                if let Some(tcp) = self.tcp.as_mut() {
                    tcp.close(from);
                }
                // Else a later connection from the same address would skip authentication.
                self.demux.forget((Transport::Tcp, from));
            }
        }
    }

    pub(super) fn deliver(&mut self, key: PeerKey, d: Received) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if peer.broken {
            return;
        }
        if peer.selected.is_some_and(|addr| addr != d.from) && !is_stun(&d.data) {
            self.drops.unselected_address += 1;
            return;
        }
        self.read_at = Some(d.at);
        self.guarded(key, |engine| engine.read_datagram(key, d));
        self.bury();
        // The copies this packet became have been queued: they leave now, together.
        self.send_copies();
        self.read_at = None;
    }

    /// Sends the outbox and takes the forwarding delay of the copies that were in it.
    pub(super) fn send_copies(&mut self) {
        self.send_out();
        let copies = std::mem::take(&mut self.copies_pending);
        if let Some(at) = self.read_at {
            self.forward_delay.record_n(at.elapsed(), copies);
        }
    }

    /// Sends what the connections queued, in as few system calls as the batch allows (and
    /// what goes over ICE-TCP to its connections).
    pub(super) fn send_out(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        if let Some(tcp) = self.tcp.as_mut() {
            for t in self.outbox.iter().filter(|t| t.transport == Transport::Tcp) {
                tcp.send(t.to, &t.data, &mut self.drops);
            }
        }
        self.outbox.retain(|t| t.transport == Transport::Udp);
        match self.port.as_mut() {
            Some(port) => port.send(&mut self.outbox, &mut self.drops),
            None => self.outbox.clear(),
        }
    }

    /// Hands a datagram to its connection and takes what follows from it.
    pub(super) fn read_datagram(&mut self, key: PeerKey, d: Received) {
        let (local, transport_protocol) = match (d.transport, &self.port, &self.tcp) {
            (Transport::Udp, Some(port), _) => (port.local, TransportProtocol::UDP),
            (Transport::Tcp, _, Some(tcp)) => (tcp.local, TransportProtocol::TCP),
            _ => return,
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        #[cfg(test)]
        if std::mem::take(&mut peer.panic_on_read) {
            panic!("injected by a test");
        }
        let msg = TaggedBytesMut {
            now: Instant::now(),
            transport: TransportContext {
                local_addr: local,
                peer_addr: d.from,
                ecn: None,
                transport_protocol,
            },
            message: d.data,
        };
        if let Err(e) = peer.pc.handle_read(msg) {
            tracing::trace!(session = %peer.session, "datagram refused: {e}");
        }
        if closed_by_client(&mut peer.pc) {
            // The W3C state machine keeps a connection whose DTLS was closed "connected" while
            // ICE still answers, which would keep forwarding to a client that has gone for the
            // ICE timeouts (20 s by default). Its close_notify is the client saying goodbye.
            let session = peer.session;
            self.end_session(session, Some(CloseReason::ByClient));
            return;
        }
        self.drive(key);
    }
}

/// What woke the engine's loop.
// `Front` carries an offer at most: moved once, not worth a box.
#[allow(clippy::large_enum_variant)]
pub(super) enum Wake {
    Front(Option<Input>),
    Port,
    Tcp(TcpEvent),
    Timer,
}

/// The next event of the ICE-TCP port: `None` for one handled inside it (an accepted
/// connection), and forever while there is no TCP port.
pub(super) async fn tcp_event(tcp: &mut Option<TcpPort>) -> Option<TcpEvent> {
    match tcp {
        Some(tcp) => tcp.next().await,
        None => std::future::pending().await,
    }
}

/// Waits until the port has a datagram; forever while there is no port yet.
pub(super) async fn port_readable(port: &Option<Port>) {
    match port {
        Some(port) => port.readable().await,
        None => std::future::pending().await,
    }
}
