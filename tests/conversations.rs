//! End to end with real processes on loopback: front, spawned workers, the permissions
//! stand-in, and webrtc-rs clients exchanging RTP through the SFU.

mod common;

use std::time::Duration;

use beep_webrtc::tools::load::client::{Client, ClientOptions};
use common::{Front, Permissions, eventually};

const T: Duration = Duration::from_secs(20);

async fn client(front: &Front, conv: &str, user: &str, slots: usize) -> Client {
    let mut o = ClientOptions::new(
        front.ws(&format!("?conversation={conv}")),
        user,
        &format!("{user}-phone"),
    );
    o.slots = slots;
    let c = Client::connect(o)
        .await
        .unwrap_or_else(|e| panic!("{user} could not connect: {e:#}"));
    c.wait_connected(T)
        .await
        .unwrap_or_else(|e| panic!("{user}: {e:#}"));
    c
}

/// Three members in A, one in B: everyone in A hears the others and never itself, B hears
/// nothing from A, two workers run, and both exit after the idle time once everyone leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_are_separate_and_members_hear_each_other() {
    let perms = Permissions::start().await;
    let front = Front::start(&perms.url(), &[]).await;
    let a1 = client(&front, "roomA", "ann", 3).await;
    let a2 = client(&front, "roomA", "bob", 3).await;
    let a3 = client(&front, "roomA", "cid", 3).await;
    let b1 = client(&front, "roomB", "dan", 3).await;
    for (c, name, level) in [
        (&a1, "ann", 20),
        (&a2, "bob", 25),
        (&a3, "cid", 30),
        (&b1, "dan", 20),
    ] {
        c.start_sending(name, level);
    }
    let heard_all = eventually(T, || {
        a1.heard_from("bob") > 50
            && a1.heard_from("cid") > 50
            && a2.heard_from("ann") > 50
            && a2.heard_from("cid") > 50
            && a3.heard_from("ann") > 50
            && a3.heard_from("bob") > 50
    })
    .await;
    let report = |c: &Client| format!("{:?} events={:?}", c.streams(), c.events());
    assert!(
        heard_all,
        "members of A did not all hear each other:\nann {}\nbob {}\ncid {}",
        report(&a1),
        report(&a2),
        report(&a3)
    );
    for (c, me) in [(&a1, "ann"), (&a2, "bob"), (&a3, "cid"), (&b1, "dan")] {
        assert_eq!(c.heard_from(me), 0, "{me} heard itself");
    }
    for other in ["ann", "bob", "cid"] {
        assert_eq!(b1.heard_from(other), 0, "dan in B heard {other} of A");
    }
    assert_eq!(
        front.workers().len(),
        2,
        "one worker per active conversation"
    );
    // Streams are continuous: no gaps made by the SFU, no timestamp going back.
    for c in [&a1, &a2, &a3] {
        for (_, s) in c.streams() {
            assert_eq!(s.ts_backwards, 0, "{s:?}");
            assert!(
                s.mid.is_some(),
                "every forwarded stream is named by a=ssrc in the answer: {s:?}"
            );
        }
    }
    for c in [&a1, &a2, &a3, &b1] {
        c.close().await;
    }
    assert!(
        eventually(Duration::from_secs(15), || front.workers().is_empty()).await,
        "workers still running after everyone left: {:?}",
        front.workers()
    );
}

/// Issue 20: every member is told who is in the conversation (itself included) and who is
/// talking, a speaker it does not hear on a slot included; a leave is told to those who stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_told_who_is_in_the_conversation_and_who_talks() {
    let perms = Permissions::start().await;
    let front = Front::start(&perms.url(), &[]).await;
    // lea has one slot: she hears one of the two speakers and is told of both.
    let lea = client(&front, "roomM", "lea", 1).await;
    let ann = client(&front, "roomM", "ann", 3).await;
    let bob = client(&front, "roomM", "bob", 3).await;
    let other = client(&front, "roomN", "dan", 3).await;
    ann.start_sending("ann", 20);
    bob.start_sending("bob", 35);
    let ids = |users: &[&str]| -> Vec<(String, String)> {
        users
            .iter()
            .map(|u| (u.to_string(), format!("{u}-phone")))
            .collect()
    };
    for c in [&lea, &ann, &bob] {
        assert!(
            eventually(T, || c.members() == Some(ids(&["ann", "bob", "lea"]))).await,
            "{:?}",
            c.members()
        );
    }
    assert_eq!(other.members(), Some(ids(&["dan"])));
    // Loudest first, levels in dBov to 3 dB (20 and 35 dBov: -21 and -36 rounded).
    let want = vec![("ann".to_string(), -21), ("bob".to_string(), -36)];
    for c in [&lea, &ann, &bob] {
        assert!(
            eventually(T, || c.speakers().as_ref() == Some(&want)).await,
            "{:?}",
            c.speakers()
        );
    }
    assert_eq!(lea.slot_users().len(), 1);
    assert!(
        other.speakers().is_none_or(|s| s.is_empty()),
        "{:?}",
        other.speakers()
    );
    // bob stops talking: after the hold he is no speaker; then he leaves.
    bob.stop_sending();
    let ann_only = vec![("ann".to_string(), -21)];
    assert!(
        eventually(T, || lea.speakers().as_ref() == Some(&ann_only)).await,
        "{:?}",
        lea.speakers()
    );
    bob.close().await;
    for c in [&lea, &ann] {
        assert!(
            eventually(T, || c.members() == Some(ids(&["ann", "lea"]))).await,
            "{:?}",
            c.members()
        );
    }
    for c in [&lea, &ann, &other] {
        c.close().await;
    }
}

/// Seed-era clients: one m-line, the offer as a bare SDP frame, joined by POST before or
/// after the offer. Each hears the loudest other speaker on its single slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_era_clients_hear_the_loudest_speaker() {
    let perms = Permissions::start().await;
    let front = Front::start(&perms.url(), &[]).await;
    let loud = client(&front, "seed", "loud", 1).await;
    loud.start_sending("loud", 10);
    let quiet = client(&front, "seed", "quiet", 1).await;
    quiet.start_sending("quiet", 45);

    let seed = |user: &str| {
        let mut o = ClientOptions::new(front.ws(""), user, "browser");
        o.legacy_raw_offer = true;
        o
    };
    // Joined before the offer.
    let (status, _) = front.join("early", "browser", "seed").await;
    assert_eq!(status, 200);
    let early = Client::connect(seed("early"))
        .await
        .expect("early seed client");
    // Offer first, join afterwards: the offer waits for the join.
    let late_task = tokio::spawn(Client::connect(seed("late")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = front.join("late", "browser", "seed").await;
    assert_eq!(status, 200);
    let late = late_task.await.expect("task").expect("late seed client");
    for c in [&early, &late] {
        c.wait_connected(T).await.expect("seed client connects");
        assert_eq!(
            c.answer_ssrcs.len(),
            1,
            "one slot, named by a=ssrc: {}",
            c.answer_sdp
        );
    }
    assert!(
        eventually(T, || early.heard_from("loud") > 50
            && late.heard_from("loud") > 50)
        .await,
        "seed clients did not hear the loud speaker: early {:?} late {:?}",
        early.streams(),
        late.streams()
    );
    assert_eq!(
        early.heard_from("quiet") + late.heard_from("quiet"),
        0,
        "the quieter speaker must not take the only slot"
    );
    // The quiet speaker, with its own slot, hears the loud one.
    assert!(quiet.heard_from("loud") > 50);
    // The seed-era members are in the conversation, but their sockets carry the answer and
    // nothing else: no slots, members or speakers events.
    let everyone = |c: &Client| {
        c.members().is_some_and(|m| {
            let users: Vec<&str> = m.iter().map(|(u, _)| u.as_str()).collect();
            users == ["early", "late", "loud", "quiet"]
        })
    };
    assert!(
        eventually(T, || everyone(&loud)).await,
        "{:?}",
        loud.members()
    );
    for c in [&early, &late] {
        assert!(c.events().is_empty(), "{:?}", c.events());
        assert_eq!((c.members(), c.speakers()), (None, None));
    }
    for c in [&loud, &quiet, &early, &late] {
        c.close().await;
    }
}

/// A client offering three slots hears two simultaneous speakers on two different slots,
/// and the `slots` events name them; when one stops talking its slot is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_slots_carry_two_simultaneous_speakers() {
    let perms = Permissions::start().await;
    let front = Front::start(&perms.url(), &[]).await;
    let listener = client(&front, "trio", "lis", 3).await;
    assert_eq!(
        listener.answer_ssrcs.len(),
        3,
        "three slots in the answer: {}",
        listener.answer_sdp
    );
    let s1 = client(&front, "trio", "sam", 1).await;
    let s2 = client(&front, "trio", "sue", 1).await;
    s1.start_sending("sam", 20);
    s2.start_sending("sue", 22);
    assert!(
        eventually(T, || listener.heard_from("sam") > 50
            && listener.heard_from("sue") > 50)
        .await,
        "listener streams {:?}",
        listener.streams()
    );
    let streams = listener.streams();
    let slot_of = |tag: &str| {
        let s: Vec<_> = streams
            .iter()
            .filter(|(_, s)| s.from.get(tag).copied().unwrap_or(0) > 0)
            .collect();
        assert_eq!(s.len(), 1, "{tag} is on exactly one slot: {streams:?}");
        s[0].0
    };
    assert_ne!(slot_of("sam"), slot_of("sue"), "two speakers, two slots");
    for (_, s) in &streams {
        assert_eq!(s.ts_backwards, 0);
        assert_eq!(s.from.len(), 1, "no switching with free slots: {s:?}");
    }
    let mut users = listener.slot_users();
    users.sort();
    assert_eq!(
        users,
        vec![None, Some("sam".to_string()), Some("sue".to_string())],
        "events {:?}",
        listener.events()
    );
    // Sue stops: after the hold time her slot is empty again.
    s2.stop_sending();
    assert!(
        eventually(T, || listener
            .slot_users()
            .iter()
            .filter(|u| u.is_some())
            .count()
            == 1)
        .await,
        "slot not freed: {:?}",
        listener.events()
    );
    assert!(listener.slot_users().contains(&Some("sam".to_string())));
    for c in [&listener, &s1, &s2] {
        c.close().await;
    }
}

/// Joining another conversation leaves the previous one: the client is told to reconnect,
/// the old room stops carrying it, and the old worker exits once empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_elsewhere_leaves_the_previous_conversation() {
    let perms = Permissions::start().await;
    let front = Front::start(&perms.url(), &[]).await;
    let mover = client(&front, "first", "mover", 1).await;
    let stayer = client(&front, "first", "stayer", 1).await;
    mover.start_sending("mover", 20);
    assert!(eventually(T, || stayer.heard_from("mover") > 20).await);
    let (status, _) = front.join("mover", "mover-phone", "second").await;
    assert_eq!(status, 200);
    assert!(
        eventually(T, || mover.events().iter().any(|e| e["type"]
            == "reconnect"
            && e["reason"] == "conversation-changed"))
        .await,
        "no reconnect event: {:?}",
        mover.events()
    );
    // The stayer's slot no longer carries the mover.
    assert!(
        eventually(T, || stayer.slot_users() == vec![None]).await,
        "{:?}",
        stayer.events()
    );
    let before = stayer.heard_from("mover");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stayer.heard_from("mover"),
        before,
        "media of a member who left still forwarded"
    );
    stayer.close().await;
    mover.close().await;
    assert!(eventually(Duration::from_secs(15), || front.workers().is_empty()).await);
}

/// A join is remembered across a dropped socket, and the longest valid conversation id
/// (128 characters) gets a worker like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_survives_a_reconnect_and_long_ids_work() {
    let perms = Permissions::start().await;
    let front = Front::start(&perms.url(), &[]).await;
    let long = "x".repeat(128);
    let (status, body) = front.join("re", "app", &long).await;
    assert_eq!(status, 200, "{body}");
    // A socket that opens and drops before offering does not lose the join.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        front.ws(""),
    )
    .expect("request");
    req.headers_mut().insert(
        "X-User-Claim",
        common::claim("re", "app").parse().expect("header"),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("first socket");
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = Client::connect(ClientOptions::new(front.ws(""), "re", "app"))
        .await
        .expect("answered after the reconnect");
    c.wait_connected(T).await.expect("connected");
    let peer = client(&front, &long, "other", 1).await;
    peer.start_sending("other", 20);
    assert!(
        eventually(T, || c.heard_from("other") > 20).await,
        "{:?}",
        c.streams()
    );
    c.close().await;
    peer.close().await;
}
