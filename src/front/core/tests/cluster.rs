//! The core of one node of several, on scripted time: offers wait for their placement, go to
//! the local worker or are relayed, their candidates and leaving follow the link, a lost
//! owner sends its relayed clients back to placement, and a worker that goes gives its claim
//! up.

use super::*;
use crate::front::core::Placement;
use crate::wire::ids::NodeId;
use crate::wire::relay::ToOwner;
use crate::wire::signal::SignalError;

fn node(name: &str) -> NodeId {
    NodeId::parse(name).unwrap()
}

fn clustered() -> Rig {
    let mut r = Rig::new();
    let limits = r.core.limits.clone();
    r.core = Core::new(limits, CrashPolicy::default(), 1).clustered();
    r
}

fn places(cmds: &[Command]) -> Vec<(&ConversationId, bool)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Place {
                conversation,
                claim_here,
            } => Some((conversation, *claim_here)),
            _ => None,
        })
        .collect()
}

fn relays(cmds: &[Command]) -> Vec<(&NodeId, u64, &ToOwner)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Relay {
                node, socket, msg, ..
            } => Some((node, *socket, msg)),
            _ => None,
        })
        .collect()
}

fn released(cmds: &[Command]) -> Vec<&ConversationId> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Release(c) => Some(c),
            _ => None,
        })
        .collect()
}

/// `who` joins and offers; the offer parks and one placement is asked for.
fn offer_parks(r: &mut Rig, who: &Identity, c: &ConversationId, ms: u64) -> Vec<Command> {
    r.core.join(who, c, r.at(ms));
    r.core.offer(who, "v=0".into(), r.at(ms)).unwrap();
    r.take()
}

#[test]
fn an_offer_waits_for_its_placement_then_is_served_here() {
    let mut r = clustered();
    let (a, b, c) = (client("a"), client("b"), conv("room"));
    let sa = r.socket(&a, 0);
    r.socket(&b, 0);
    let cmds = offer_parks(&mut r, &a, &c, 10);
    assert_eq!(places(&cmds), vec![(&c, false)]);
    assert!(offered(&cmds).is_none() && spawned(&cmds).is_none());
    // A candidate meanwhile is kept for the offer; a second member's offer joins the wait
    // without a second placement.
    r.core.ice(&a, Some("cand".into()));
    let cmds = offer_parks(&mut r, &b, &c, 20);
    assert!(places(&cmds).is_empty(), "{cmds:?}");
    r.core.placed(&c, Placement::Here, r.at(30));
    let cmds = r.take();
    assert_eq!(
        cmds.iter()
            .filter(|c| matches!(c, Command::Spawn { .. }))
            .count(),
        1
    );
    let offers = cmds
        .iter()
        .filter(|c| matches!(c, Command::Worker(_, Control::Send(ToWorker::Offer { .. }))))
        .count();
    assert_eq!(offers, 2);
    assert!(cmds.iter().any(|c| matches!(c, Command::Worker(_, Control::Send(ToWorker::Ice { candidate, .. })) if candidate == "cand")));
    // With the worker here, the next offer goes straight to it.
    let d = r.join_and_offer(&a, &c, 40);
    assert!(places(&d.cmds).is_empty());
    assert!(to_socket(&d.cmds, sa).is_empty());
}

#[test]
fn an_offer_placed_elsewhere_is_relayed_and_its_signalling_follows() {
    let mut r = clustered();
    let (a, c, owner) = (client("a"), conv("room"), node("b"));
    let sa = r.socket(&a, 0);
    r.core.join(&a, &c, r.at(5));
    r.core.ice(&a, Some("early".into()));
    r.core.offer(&a, "v=0".into(), r.at(10)).unwrap();
    r.take();
    r.core.placed(&c, Placement::Node(owner.clone()), r.at(20));
    let cmds = r.take();
    match &relays(&cmds)[..] {
        [
            (
                n,
                s,
                ToOwner::Offer {
                    conversation,
                    sdp,
                    candidates,
                },
            ),
        ] => {
            assert_eq!((*n, *s), (&owner, sa));
            assert_eq!((conversation, sdp.as_str()), (&c, "v=0"));
            assert_eq!(candidates, &vec!["early".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(counted(&cmds, Tally::RelayedOffer), 1);
    assert!(spawned(&cmds).is_none());
    // A relayed client has a socket-less life here too: it counts as active.
    assert_eq!(r.core.client_count(), 1);
    r.core.ice(&a, Some("late".into()));
    assert!(
        matches!(relays(&r.take())[..], [(_, _, ToOwner::Ice { candidate })] if candidate == "late")
    );
    // Re-offering tells the owner the old session is over, then parks for placement again.
    r.core.offer(&a, "v=0 again".into(), r.at(30)).unwrap();
    let cmds = r.take();
    assert!(
        matches!(relays(&cmds)[..], [(_, _, ToOwner::Leave)]),
        "{cmds:?}"
    );
    assert_eq!(places(&cmds).len(), 1);
    r.core.placed(&c, Placement::Node(owner.clone()), r.at(40));
    r.take();
    // The socket closes: the owner hears Detach (and keeps answered media), nothing more.
    r.core.detach_socket(&a, sa, r.at(50));
    let cmds = r.take();
    assert!(
        matches!(relays(&cmds)[..], [(_, s, ToOwner::Detach)] if s == sa),
        "{cmds:?}"
    );
    r.core.ice(&a, Some("after".into()));
    assert!(relays(&r.take()).is_empty());
}

#[test]
fn a_lost_owner_sends_its_relayed_clients_back_to_placement() {
    let mut r = clustered();
    let (a, b, c) = (client("a"), client("b"), conv("room"));
    let (owner, other) = (node("n1"), node("n2"));
    let sa = r.socket(&a, 0);
    let sb = r.socket(&b, 0);
    offer_parks(&mut r, &a, &c, 10);
    r.core.placed(&c, Placement::Node(owner.clone()), r.at(20));
    offer_parks(&mut r, &b, &conv("other"), 30);
    r.core
        .placed(&conv("other"), Placement::Node(other.clone()), r.at(40));
    r.take();
    r.core.node_lost(&owner);
    let cmds = r.take();
    assert_eq!(
        to_socket(&cmds, sa)
            .iter()
            .filter_map(|o| reconnect(o))
            .collect::<Vec<_>>(),
        vec![ReconnectReason::NodeLost]
    );
    assert!(
        to_socket(&cmds, sb).is_empty(),
        "another node's clients go on"
    );
    // Its next offer asks for a placement anew, and is served here this time.
    let cmds = offer_parks(&mut r, &a, &c, 50);
    assert!(
        relays(&cmds).is_empty(),
        "nothing goes to the dead node: {cmds:?}"
    );
    assert_eq!(places(&cmds).len(), 1);
    r.core.placed(&c, Placement::Here, r.at(60));
    assert!(offered(&r.take()).is_some());
}

#[test]
fn a_client_relayed_in_is_served_here_or_told_its_conversation_moved() {
    let mut r = clustered();
    let (a, c) = (client("a"), conv("room"));
    let sa = r.socket(&a, 0);
    r.core.mark_relayed_in(&a);
    let cmds = offer_parks(&mut r, &a, &c, 10);
    assert_eq!(
        places(&cmds),
        vec![(&c, true)],
        "a relayed client claims its conversation here"
    );
    r.core.placed(&c, Placement::Node(node("x")), r.at(20));
    let cmds = r.take();
    assert!(relays(&cmds).is_empty(), "never relayed on");
    match &to_socket(&cmds, sa)[..] {
        [Out::Fail(e)] => assert!(e.message.contains("moved to node x"), "{}", e.message),
        other => panic!("{other:?}"),
    }
}

#[test]
fn placement_failures_reach_the_client_and_workers_give_their_claim_up() {
    let mut r = clustered();
    let (a, c) = (client("a"), conv("room"));
    let sa = r.socket(&a, 0);
    offer_parks(&mut r, &a, &c, 10);
    let e = SignalError::new(ErrorCode::Unavailable, "NATS down");
    r.core.placed(&c, Placement::Failed(e.clone()), r.at(20));
    assert!(matches!(&to_socket(&r.take(), sa)[..], [Out::Fail(f)] if *f == e));
    // Served here, then idle: the worker is retired and the claim released.
    offer_parks(&mut r, &a, &c, 30);
    r.core.placed(&c, Placement::Here, r.at(40));
    let cmds = r.take();
    let (generation, session) = offered(&cmds).unwrap();
    r.core.worker_message(
        &c,
        generation,
        ToFront::Closed {
            session,
            reason: CloseReason::ByClient,
        },
        r.at(50),
    );
    r.core
        .housekeeping(r.at(50) + IDLE + Duration::from_millis(1));
    assert_eq!(released(&r.take()), vec![&c]);
    // A crash gives it up too (the members' next offers place it anew).
    offer_parks(&mut r, &a, &c, 10_000);
    r.core.placed(&c, Placement::Here, r.at(10_010));
    let (generation, _) = offered(&r.take()).unwrap();
    r.core.worker_gone(
        &c,
        generation,
        &Ending::Exited("signal 9".into()),
        r.at(10_020),
    );
    assert_eq!(released(&r.take()), vec![&c]);
}

#[test]
fn a_single_host_core_never_asks_for_placement() {
    let mut r = Rig::new();
    let (a, c) = (client("a"), conv("room"));
    r.socket(&a, 0);
    let d = r.join_and_offer(&a, &c, 10);
    assert!(places(&d.cmds).is_empty() && released(&d.cmds).is_empty());
    r.core.shutdown();
    assert!(released(&r.take()).is_empty());
}
