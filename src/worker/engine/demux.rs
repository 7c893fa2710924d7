//! Which connection a datagram on the worker's one port is for (as webrtc-rs's `sfu` example
//! and LiveKit's UDP mux do it): a STUN request names its connection in its USERNAME
//! (`<our ufrag>:<client's ufrag>`), and once a connection has been reached that way from an
//! address, everything else from that address (DTLS, SRTP, SRTCP, STUN responses) is that
//! connection's.
//!
//! It is also the ICE agent's gatekeeper. `rtc`'s agent handles a role conflict before it
//! checks MESSAGE-INTEGRITY, so one forged Binding request claiming ICE-CONTROLLED would turn
//! the ICE-lite server into a controlling agent that sends checks to every candidate the
//! client listed (a reflector aimed at third parties). So here, before any connection sees
//! it, a STUN request must name one of our connections, carry a MESSAGE-INTEGRITY made with
//! that connection's password, and not claim the controlled role (the server is always the
//! controlled side: it is ICE-lite, the client a full agent). Only such a request teaches the
//! demultiplexer an address, so nobody can steer another member's traffic by forging one.
//!
//! A plain state machine: bytes and addresses in, a verdict out; no sockets, no clocks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use rtc::crypto::RTCCryptoProvider;
use rtc::stun::attributes::{ATTR_ICE_CONTROLLED, ATTR_USERNAME};
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::{CLASS_REQUEST, Message};

use super::PeerKey;
use super::port::Transport;
use crate::wire::stats::DropStats;

/// Most client addresses one connection is known by at once (a client checks a few pairs:
/// IPv4, IPv6, a VPN); past that the oldest is forgotten, so a member cannot grow the table.
const ADDRESSES_PER_CONNECTION: usize = 8;
/// STUN's magic cookie (RFC 5389 §6).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// Where a datagram came from: a UDP address and a TCP connection's address are different
/// remotes even when they are equal.
pub(super) type Remote = (Transport, SocketAddr);

/// What to do with one datagram.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Hand it to this connection.
    Deliver(PeerKey),
    /// Drop it; the reason's counter has been counted.
    Drop,
}

struct Route {
    ufrag: String,
    pwd: String,
    /// The addresses this connection was reached from, oldest first.
    addresses: Vec<Remote>,
}

pub(super) struct Demux {
    routes: HashMap<PeerKey, Route>,
    by_ufrag: HashMap<String, PeerKey>,
    by_address: HashMap<Remote, PeerKey>,
    crypto: Arc<dyn RTCCryptoProvider>,
}

impl Demux {
    pub(super) fn new() -> Demux {
        Demux {
            routes: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_address: HashMap::new(),
            // Built into rtc (ring), as its own agents use it: cannot fail with the crate's
            // default features, which `rtc` is built with.
            crypto: rtc::crypto::default_provider().expect("rtc's built-in crypto provider"),
        }
    }

    /// A new connection, known by its ICE credentials.
    pub(super) fn add(&mut self, key: PeerKey, ufrag: String, pwd: String) {
        self.by_ufrag.insert(ufrag.clone(), key);
        self.routes.insert(
            key,
            Route {
                ufrag,
                pwd,
                addresses: Vec::new(),
            },
        );
    }

    /// Forgets a connection and every address it was known by.
    pub(super) fn remove(&mut self, key: PeerKey) {
        if let Some(route) = self.routes.remove(&key) {
            self.by_ufrag.remove(&route.ufrag);
            for a in route.addresses {
                if self.by_address.get(&a) == Some(&key) {
                    self.by_address.remove(&a);
                }
            }
        }
    }

    /// Forgets one address (an ICE-TCP connection that ended): a new connection that comes
    /// from the same address later must authenticate again, like any other.
    pub(super) fn forget(&mut self, from: Remote) {
        if let Some(key) = self.by_address.remove(&from)
            && let Some(route) = self.routes.get_mut(&key)
        {
            route.addresses.retain(|a| *a != from);
        }
    }

    /// The connection a datagram from `from` is for, if any; a drop is counted in `drops`.
    pub(super) fn route(&mut self, from: Remote, data: &[u8], drops: &mut DropStats) -> Verdict {
        if !is_stun(data) {
            return match self.by_address.get(&from) {
                Some(&key) => Verdict::Deliver(key),
                None => {
                    drops.unknown_address += 1;
                    Verdict::Drop
                }
            };
        }
        let mut msg = Message::new();
        if msg.unmarshal_binary(data).is_err() {
            drops.stun_unknown_username += 1;
            return Verdict::Drop;
        }
        if msg.typ.class != CLASS_REQUEST {
            // Responses (to the lite agent's one triggered check) and indications carry no
            // USERNAME: they belong to whoever we know at that address.
            return match self.by_address.get(&from) {
                Some(&key) => Verdict::Deliver(key),
                None => {
                    drops.unknown_address += 1;
                    Verdict::Drop
                }
            };
        }
        let Some(key) = msg.get(ATTR_USERNAME).ok().and_then(|u| {
            let u = String::from_utf8(u).ok()?;
            let ours = u.split(':').next()?.to_owned();
            self.by_ufrag.get(&ours).copied()
        }) else {
            drops.stun_unknown_username += 1;
            return Verdict::Drop;
        };
        let Some(route) = self.routes.get(&key) else {
            drops.stun_unknown_username += 1;
            return Verdict::Drop;
        };
        if MessageIntegrity::check(&mut msg, route.pwd.as_bytes(), self.crypto.crypto()).is_err() {
            drops.stun_unauthenticated += 1;
            return Verdict::Drop;
        }
        if msg.contains(ATTR_ICE_CONTROLLED) {
            drops.stun_role_conflict += 1;
            return Verdict::Drop;
        }
        self.learn(key, from);
        Verdict::Deliver(key)
    }

    /// `from` reached connection `key` with an authenticated request: it is that
    /// connection's from now on (a client that re-offered from the same address moves to its
    /// new connection).
    fn learn(&mut self, key: PeerKey, from: Remote) {
        if let Some(old) = self.by_address.insert(from, key)
            && old != key
            && let Some(r) = self.routes.get_mut(&old)
        {
            r.addresses.retain(|a| *a != from);
        }
        let Some(route) = self.routes.get_mut(&key) else {
            return;
        };
        if route.addresses.contains(&from) {
            return;
        }
        route.addresses.push(from);
        if route.addresses.len() > ADDRESSES_PER_CONNECTION {
            let oldest = route.addresses.remove(0);
            if self.by_address.get(&oldest) == Some(&key) {
                self.by_address.remove(&oldest);
            }
        }
    }

    /// How many addresses are known (for tests and the fuzz target's invariants).
    #[cfg(test)]
    pub(super) fn addresses(&self) -> usize {
        self.by_address.len()
    }
}

/// RFC 7983's first-byte rule (0–3 is STUN), and the magic cookie to be sure.
pub(super) fn is_stun(data: &[u8]) -> bool {
    data.len() >= 20 && data[0] < 4 && data[4..8] == MAGIC_COOKIE
}

#[cfg(test)]
mod tests {
    use rtc::stun::attributes::ATTR_ICE_CONTROLLING;
    use rtc::stun::message::{BINDING_REQUEST, BINDING_SUCCESS, Setter, TransactionId};
    use rtc::stun::textattrs::TextAttribute;

    use super::*;

    struct Raw(rtc::stun::attributes::AttrType, Vec<u8>);
    impl Setter for Raw {
        fn add_to(&self, m: &mut Message) -> rtc::shared::error::Result<()> {
            m.add(self.0, &self.1);
            Ok(())
        }
    }

    /// A Binding request as a client sends it: USERNAME, a role, MESSAGE-INTEGRITY with `pwd`.
    fn request(username: &str, pwd: &str, controlled: bool) -> Vec<u8> {
        let crypto = rtc::crypto::default_provider().expect("crypto");
        let mut m = Message::new();
        let role = if controlled {
            ATTR_ICE_CONTROLLED
        } else {
            ATTR_ICE_CONTROLLING
        };
        m.build(&[
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(TextAttribute::new(ATTR_USERNAME, username.to_owned())),
            Box::new(Raw(role, 7u64.to_be_bytes().to_vec())),
            Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                pwd.to_owned(),
                crypto.crypto(),
            )),
        ])
        .expect("a STUN request");
        m.raw
    }

    fn response() -> Vec<u8> {
        let mut m = Message::new();
        m.build(&[Box::new(BINDING_SUCCESS), Box::new(TransactionId::new())])
            .expect("a STUN response");
        m.raw
    }

    fn addr(port: u16) -> Remote {
        (Transport::Udp, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    const SRTP: &[u8] = &[0x80, 0x6f, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9];

    #[test]
    fn connections_are_told_apart_by_username_then_by_address() {
        let mut d = Demux::new();
        let mut drops = DropStats::default();
        d.add(PeerKey(1), "aaaa".into(), "pwd-one-0123456789abcdef".into());
        d.add(PeerKey(2), "bbbb".into(), "pwd-two-0123456789abcdef".into());
        // Media before any check: nobody is known at that address yet.
        assert_eq!(d.route(addr(1000), SRTP, &mut drops), Verdict::Drop);
        assert_eq!(drops.unknown_address, 1);

        let one = request("aaaa:x1", "pwd-one-0123456789abcdef", false);
        let two = request("bbbb:x2", "pwd-two-0123456789abcdef", false);
        assert_eq!(
            d.route(addr(1000), &one, &mut drops),
            Verdict::Deliver(PeerKey(1))
        );
        assert_eq!(
            d.route(addr(2000), &two, &mut drops),
            Verdict::Deliver(PeerKey(2))
        );
        assert_eq!(
            d.route(addr(1000), SRTP, &mut drops),
            Verdict::Deliver(PeerKey(1))
        );
        assert_eq!(
            d.route(addr(2000), SRTP, &mut drops),
            Verdict::Deliver(PeerKey(2))
        );
        assert_eq!(
            d.route(addr(2000), &response(), &mut drops),
            Verdict::Deliver(PeerKey(2))
        );
        assert_eq!(d.route(addr(3000), &response(), &mut drops), Verdict::Drop);

        // The same address over TCP is another remote.
        let tcp = (Transport::Tcp, addr(1000).1);
        assert_eq!(d.route(tcp, SRTP, &mut drops), Verdict::Drop);
        assert_eq!(d.route(tcp, &one, &mut drops), Verdict::Deliver(PeerKey(1)));
        assert_eq!(d.route(tcp, SRTP, &mut drops), Verdict::Deliver(PeerKey(1)));

        // A TCP connection that ended is forgotten: a new one from the same address (a
        // recycled port) reaches nothing until it authenticates, while UDP is unaffected.
        d.forget(tcp);
        assert_eq!(d.route(tcp, SRTP, &mut drops), Verdict::Drop);
        assert_eq!(
            d.route(addr(1000), SRTP, &mut drops),
            Verdict::Deliver(PeerKey(1))
        );
        assert_eq!(d.route(tcp, &one, &mut drops), Verdict::Deliver(PeerKey(1)));

        // A client that re-offers from the same address moves to its new connection.
        d.remove(PeerKey(1));
        assert_eq!(d.route(addr(1000), SRTP, &mut drops), Verdict::Drop);
        d.add(PeerKey(3), "cccc".into(), "pwd-three-0123456789abcd".into());
        let three = request("cccc:x1", "pwd-three-0123456789abcd", false);
        assert_eq!(
            d.route(addr(1000), &three, &mut drops),
            Verdict::Deliver(PeerKey(3))
        );
        assert_eq!(
            d.route(addr(1000), SRTP, &mut drops),
            Verdict::Deliver(PeerKey(3))
        );
        assert_eq!(drops.total(), 5);
    }

    #[test]
    fn forged_or_hostile_stun_reaches_no_connection_and_teaches_no_address() {
        let mut d = Demux::new();
        let mut drops = DropStats::default();
        d.add(PeerKey(1), "aaaa".into(), "pwd-one-0123456789abcdef".into());
        // Someone else's ufrag, no USERNAME at all, the right ufrag with a guessed password,
        // and a member's own valid credentials claiming the controlled role.
        let cases = [
            request("zzzz:x", "pwd-one-0123456789abcdef", false),
            {
                let mut m = Message::new();
                m.build(&[Box::new(BINDING_REQUEST), Box::new(TransactionId::new())])
                    .expect("request");
                m.raw
            },
            request("aaaa:x", "not-the-password-at-all!", false),
            request("aaaa:x", "pwd-one-0123456789abcdef", true),
        ];
        for c in &cases {
            assert_eq!(d.route(addr(6666), c, &mut drops), Verdict::Drop);
        }
        assert_eq!(
            (
                drops.stun_unknown_username,
                drops.stun_unauthenticated,
                drops.stun_role_conflict
            ),
            (2, 1, 1)
        );
        assert_eq!(d.addresses(), 0, "a refused request taught an address");
        assert_eq!(d.route(addr(6666), SRTP, &mut drops), Verdict::Drop);
    }

    #[test]
    fn a_connection_is_known_by_a_bounded_number_of_addresses() {
        let mut d = Demux::new();
        let mut drops = DropStats::default();
        d.add(PeerKey(1), "aaaa".into(), "pwd-one-0123456789abcdef".into());
        let req = request("aaaa:x", "pwd-one-0123456789abcdef", false);
        for port in 0..100 {
            assert_eq!(
                d.route(addr(10_000 + port), &req, &mut drops),
                Verdict::Deliver(PeerKey(1))
            );
        }
        assert_eq!(d.addresses(), ADDRESSES_PER_CONNECTION);
        // The newest are the ones kept.
        assert_eq!(
            d.route(addr(10_099), SRTP, &mut drops),
            Verdict::Deliver(PeerKey(1))
        );
        assert_eq!(d.route(addr(10_000), SRTP, &mut drops), Verdict::Drop);
        d.remove(PeerKey(1));
        assert_eq!(d.addresses(), 0);
    }
}
