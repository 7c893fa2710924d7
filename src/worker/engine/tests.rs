//! The engine without processes: in-process `rtc` clients offer to a real [`Engine`], their
//! datagrams are handed to it exactly as its port would hand them (so a test can also claim
//! any source address), and they read what the engine really sends from their own loopback
//! sockets. Nothing is mocked below the engine: the demultiplexer, ICE, DTLS, SRTP and the
//! room run.
//!
//! - the address filters ([`datagrams_from_an_address_no_check_came_from_are_dropped`]);
//! - panic containment ([`a_panic_in_one_connection_ends_that_session_and_the_room_goes_on`]);
//! - a flood from nowhere ([`a_flood_from_unknown_addresses_costs_the_members_nothing`]);
//! - the datagram path fed arbitrary bytes from arbitrary addresses under `bolero`
//!   ([`fuzz_datagrams`]; `cargo test` runs a bounded random sample, `cargo bolero test`
//!   runs it under libFuzzer, see the README).

mod rig;

use std::net::Ipv6Addr;

use bytes::BytesMut;
use rtc::stun::message::Message;

use super::*;
use rig::Rig;

#[test]
fn datagrams_from_an_address_no_check_came_from_are_dropped() {
    let mut rig = Rig::new();
    let mut a = rig.join();
    let key = rig.key(&a);
    // Before ICE has selected a pair there is nothing to filter by.
    assert_eq!(rig.engine.peers[&key].selected, None);
    rig.connect(&mut [&mut a]);
    assert_eq!(rig.engine.peers[&key].selected, Some(a.addr));

    // A packet `a` really sent (SRTP, valid), arriving from addresses no check came from: the
    // port does not know them, so no connection sees it (the `rtc` state machine would take
    // it: it passes anything once ICE is up).
    a.speak();
    let sent = a.outgoing();
    assert_eq!(sent.len(), 1, "one SRTP packet");
    let before = rig.packets_in();
    let elsewhere = [
        SocketAddr::new(a.addr.ip(), a.addr.port().wrapping_add(1)),
        SocketAddr::from(([127, 0, 0, 2], a.addr.port())),
        SocketAddr::from((Ipv6Addr::LOCALHOST, a.addr.port())),
    ];
    for other in elsewhere {
        rig.inject(other, sent[0].clone());
    }
    assert_eq!(
        rig.packets_in(),
        before,
        "a datagram from elsewhere reached the room"
    );
    assert_eq!(rig.engine.stats().dropped.unknown_address, 3);

    // One of `a`'s own checks, replayed from another address (as someone on the path could),
    // is authentic: that address now leads to `a`'s connection, but it is not the selected
    // pair, so media from it is still dropped.
    let check = a.first_check.clone().expect("a sent a check");
    rig.inject(elsewhere[0], check);
    rig.inject(elsewhere[0], sent[0].clone());
    assert_eq!(rig.packets_in(), before);
    assert_eq!(rig.engine.stats().dropped.unselected_address, 1);

    // The very same bytes from the selected address are `a`'s microphone.
    rig.inject(a.addr, sent[0].clone());
    assert_eq!(rig.packets_in(), before + 1);
    assert!(rig.engine.sessions.contains_key(&a.session));
}

/// Every connection shares the port: one local address in every answer, and each member
/// hears the others through it.
#[test]
fn every_connection_shares_the_one_port() {
    let mut rig = Rig::new();
    let (mut a, mut b, mut c) = (rig.join(), rig.join(), rig.join());
    rig.connect(&mut [&mut a, &mut b, &mut c]);
    let answers: Vec<&String> = rig
        .told
        .iter()
        .filter_map(|m| match m {
            ToFront::Answer { sdp, .. } => Some(sdp),
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 3);
    let port = rig.engine.port.as_ref().expect("a port").local.port();
    for sdp in &answers {
        assert!(sdp.contains(&format!(" {port} typ host")), "{sdp}");
    }
    let ufrags: std::collections::HashSet<&String> =
        [&a, &b, &c].iter().map(|c| &c.server_ice.0).collect();
    assert_eq!(ufrags.len(), 3, "each connection has its own credentials");
    rig.talk(0, 30, &mut [&mut a, &mut b, &mut c]);
    assert!(
        b.received > 10 && c.received > 10,
        "{} {}",
        b.received,
        c.received
    );
    assert_eq!(a.received, 0, "a speaker does not hear itself");
}

#[test]
fn a_panic_in_one_connection_ends_that_session_and_the_room_goes_on() {
    let mut rig = Rig::new();
    let (mut a, mut b, mut c) = (rig.join(), rig.join(), rig.join());
    rig.connect(&mut [&mut a, &mut b, &mut c]);
    rig.talk(0, 30, &mut [&mut a, &mut b, &mut c]);
    assert!(
        b.received > 10 && c.received > 10,
        "{} {}",
        b.received,
        c.received
    );

    // `c`'s next datagram makes its handling panic.
    let key_c = rig.key(&c);
    rig.engine
        .peers
        .get_mut(&key_c)
        .expect("c's peer")
        .panic_on_read = true;
    rig.inject(c.addr, BytesMut::from(&b"\x80\x6f anything"[..]));
    rig.take_told();

    // c's session, and only c's, is over; front was told why.
    assert!(!rig.engine.sessions.contains_key(&c.session));
    assert!(!rig.engine.peers.contains_key(&key_c));
    assert_eq!(rig.engine.panics, 1);
    let closed: Vec<_> = rig
        .told
        .iter()
        .filter_map(|m| match m {
            ToFront::Closed { session, reason } => Some((*session, *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(closed, vec![(c.session, CloseReason::Error)]);
    assert_eq!(rig.engine.room.member_count(), 2);

    // a and b talk on.
    let heard = b.received;
    rig.talk(0, 20, &mut [&mut a, &mut b]);
    assert!(b.received >= heard + 15, "{heard} → {}", b.received);
    // And a newcomer connects.
    let mut d = rig.join();
    rig.connect(&mut [&mut a, &mut b, &mut d]);
}

/// A speaker's packet becomes one copy per listener, and all the copies leave in one
/// `sendmmsg`.
#[test]
fn a_packets_copies_to_all_listeners_leave_in_one_system_call() {
    let mut rig = Rig::new();
    let mut clients = rig.room(5);
    clients[0].speak();
    let sent = clients[0].outgoing();
    assert_eq!(sent.len(), 1);
    let before = rig.sends();
    let from = clients[0].addr;
    rig.inject(from, sent[0].clone());
    let after = rig.sends();
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 4),
        "one system call for the 4 copies"
    );
}

/// In a big room one packet's copies are written and sent from several threads: every
/// listener gets its copy (decrypted by its own connection, so SRTP and the rewriting are
/// right), each thread sends what it wrote in one system call, and a listener whose
/// connection panics on whichever thread wrote to it loses its session alone.
#[test]
fn a_big_rooms_copies_leave_from_several_threads() {
    let listeners = super::fanout::PARALLEL_MIN + 11;
    let mut rig = Rig::with_fanout(3);
    let mut clients = rig.room(listeners + 1);
    let heard: Vec<usize> = clients.iter().map(|c| c.received).collect();
    let before = rig.sends();
    clients[0].speak();
    let sent = clients[0].outgoing();
    assert_eq!(sent.len(), 1);
    let from = clients[0].addr;
    rig.inject(from, sent[0].clone());
    let after = rig.sends();
    let (calls, copies) = (after.0 - before.0, after.1 - before.1);
    assert_eq!(copies, listeners as u64, "one copy per listener");
    assert!(
        (1..=3).contains(&calls),
        "one system call per thread that took a piece: {calls}"
    );
    assert!(
        rig.engine.fanout.has_threads(),
        "the copies left in parallel"
    );
    let now = Instant::now();
    for (c, heard) in clients[1..].iter_mut().zip(&heard[1..]) {
        c.receive(now);
        assert_eq!(c.received, heard + 1, "each listener decrypts its one copy");
    }

    // A listener's connection panics while a thread writes its copy: its session ends,
    // every other listener still gets the packet.
    let victim = clients.len() / 2;
    let key = rig.key(&clients[victim]);
    rig.engine
        .peers
        .get_mut(&key)
        .expect("the victim's peer")
        .panic_on_write = true;
    let heard: Vec<usize> = clients.iter().map(|c| c.received).collect();
    clients[0].speak();
    let sent = clients[0].outgoing();
    rig.inject(from, sent[0].clone());
    rig.take_told();
    assert!(!rig.engine.sessions.contains_key(&clients[victim].session));
    assert_eq!(rig.engine.panics, 1);
    assert!(rig.told.iter().any(|m| matches!(
        m,
        ToFront::Closed { session, reason: CloseReason::Error } if *session == clients[victim].session
    )));
    let now = Instant::now();
    for (i, c) in clients.iter_mut().enumerate().skip(1) {
        c.receive(now);
        if i != victim {
            assert_eq!(c.received, heard[i] + 1, "listener {i} still hears");
        }
    }
}

/// A flood from addresses no check came from is dropped at the port, one table lookup each,
/// and counted; the members talk on as if nothing happened.
#[test]
fn a_flood_from_unknown_addresses_costs_the_members_nothing() {
    let mut rig = Rig::new();
    let (mut a, mut b) = (rig.join(), rig.join());
    rig.connect(&mut [&mut a, &mut b]);
    // `a` speaks until it is on `b`'s slot.
    rig.talk(0, 30, &mut [&mut a, &mut b]);
    let heard = b.received;
    assert!(heard > 10, "{heard}");
    for round in 0..20u32 {
        for i in 0..500u32 {
            let from = SocketAddr::from(([127, 0, (i >> 8) as u8, i as u8], 40_000));
            let junk = if i % 2 == 0 {
                &[0x80u8; 100][..]
            } else {
                &[0x16u8; 100][..]
            };
            rig.inject(from, BytesMut::from(junk));
        }
        let _ = round;
        rig.talk(0, 1, &mut [&mut a, &mut b]);
    }
    assert!(b.received >= heard + 18, "{heard} → {}", b.received);
    assert_eq!(rig.engine.stats().dropped.unknown_address, 10_000);
}

/// One fuzz input: datagrams from the connected client's own address or from anywhere, or
/// the bytes inside an authentic STUN request to a member still at ICE.
type FuzzInput = Vec<(u8, u32, u16, Vec<u8>)>;

/// An address from fuzz input: never routable (loopback, or IPv6 documentation space),
/// since the engine may answer a datagram.
fn fuzz_addr(bits: u32, port: u16) -> SocketAddr {
    if bits & 1 == 0 {
        let [_, x, y, z] = bits.to_be_bytes();
        SocketAddr::from(([127, x, y, z], port))
    } else {
        let ip = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, (bits >> 16) as u16, bits as u16);
        SocketAddr::from((ip, port))
    }
}

/// The engine's datagram handling with arbitrary bytes from arbitrary addresses: nothing
/// panics (a contained panic counts as a failure here), and the connected member stays
/// connected unless the input came from its own address.
#[test]
fn fuzz_datagrams() {
    let mut rig = Rig::new();
    let mut a = rig.join();
    rig.connect(&mut [&mut a]);
    // A second member whose client never answers ICE: its datagrams meet the ICE agent
    // itself (no selected pair, so no filter).
    let fresh = rig.join();
    // The third kind of input really gets past the port to the fresh member's ICE agent.
    let (ufrag, pwd) = &fresh.server_ice;
    rig.inject(fuzz_addr(2, 9), authentic_check(ufrag, pwd, b"x"));
    assert_eq!(rig.engine.stats().dropped.total(), 0);
    let mut state = AssertUnwindSafe((rig, a, fresh.server_ice));
    // FUZZ_ITERATIONS as in tests/common/fuzz_budget.rs (bolero's own default: 1 000).
    let iterations = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1_000);
    bolero::check!()
        .with_type::<FuzzInput>()
        .with_iterations(iterations)
        .for_each(move |input: &FuzzInput| {
            let (rig, a, (ufrag, pwd)) = &mut *state;
            for (who, bits, port, bytes) in input {
                let from = fuzz_addr(*bits, *port);
                match who % 3 {
                    0 => rig.inject(a.addr, BytesMut::from(&bytes[..])),
                    1 => rig.inject(from, BytesMut::from(&bytes[..])),
                    _ => rig.inject(from, authentic_check(ufrag, pwd, bytes)),
                }
            }
            rig.step(&mut [a]);
            assert_eq!(rig.engine.panics, 0, "a peer's handling panicked");
            // Bytes from a's own address may legitimately end its session (a forged DTLS
            // alert, say); then a reconnects so the next input meets a live connection.
            if !rig.engine.sessions.contains_key(&a.session) {
                let mut again = rig.join();
                rig.connect(&mut [&mut again]);
                *a = again;
            }
        });
}

/// A Binding request that passes the port's checks for the connection with these
/// credentials, carrying `extra` as an attribute the ICE agent must skip.
fn authentic_check(ufrag: &str, pwd: &str, extra: &[u8]) -> BytesMut {
    use rtc::stun::attributes::{ATTR_ICE_CONTROLLING, ATTR_USERNAME, AttrType};
    use rtc::stun::integrity::MessageIntegrity;
    use rtc::stun::message::{BINDING_REQUEST, Setter, TransactionId};
    use rtc::stun::textattrs::TextAttribute;
    struct Raw(AttrType, Vec<u8>);
    impl Setter for Raw {
        fn add_to(&self, m: &mut Message) -> rtc::shared::error::Result<()> {
            m.add(self.0, &self.1);
            Ok(())
        }
    }
    let crypto = rtc::crypto::default_provider().expect("crypto");
    let mut m = Message::new();
    let built = m.build(&[
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(TextAttribute::new(ATTR_USERNAME, format!("{ufrag}:fuzz"))),
        Box::new(Raw(ATTR_ICE_CONTROLLING, 1u64.to_be_bytes().to_vec())),
        // A comprehension-optional attribute (0x8000 and up) of arbitrary content.
        Box::new(Raw(
            AttrType(0x8077),
            extra[..extra.len().min(512)].to_vec(),
        )),
        Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
            pwd.to_owned(),
            crypto.crypto(),
        )),
    ]);
    assert!(built.is_ok(), "a STUN request");
    BytesMut::from(&m.raw[..])
}
