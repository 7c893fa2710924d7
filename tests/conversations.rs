//! End to end with real processes on loopback: front, spawned workers, the permissions
//! stand-in, and webrtc-rs clients exchanging RTP through the SFU.

mod common;

use std::time::Duration;

use beep_webrtc::client::{Client, ClientOptions};
use common::{Front, Permissions, eventually};

const T: Duration = Duration::from_secs(20);

async fn client(front: &Front, conv: &str, user: &str, slots: usize) -> Client {
    let mut o = ClientOptions::new(front.ws(&format!("?conversation={conv}")), user, &format!("{user}-phone"));
    o.slots = slots;
    let c = Client::connect(o).await.unwrap_or_else(|e| panic!("{user} could not connect: {e:#}"));
    c.wait_connected(T).await.unwrap_or_else(|e| panic!("{user}: {e:#}"));
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
    for (c, name, level) in [(&a1, "ann", 20), (&a2, "bob", 25), (&a3, "cid", 30), (&b1, "dan", 20)] {
        c.start_sending(name, level);
    }
    let heard_all = eventually(T, || {
        a1.heard_from("bob") > 50 && a1.heard_from("cid") > 50
            && a2.heard_from("ann") > 50 && a2.heard_from("cid") > 50
            && a3.heard_from("ann") > 50 && a3.heard_from("bob") > 50
    })
    .await;
    let report = |c: &Client| format!("{:?} events={:?}", c.streams(), c.events());
    assert!(heard_all, "members of A did not all hear each other:\nann {}\nbob {}\ncid {}", report(&a1), report(&a2), report(&a3));
    for (c, me) in [(&a1, "ann"), (&a2, "bob"), (&a3, "cid"), (&b1, "dan")] {
        assert_eq!(c.heard_from(me), 0, "{me} heard itself");
    }
    for other in ["ann", "bob", "cid"] {
        assert_eq!(b1.heard_from(other), 0, "dan in B heard {other} of A");
    }
    assert_eq!(front.workers().len(), 2, "one worker per active conversation");
    // Streams are continuous: no gaps made by the SFU, no timestamp going back.
    for c in [&a1, &a2, &a3] {
        for (_, s) in c.streams() {
            assert_eq!(s.ts_backwards, 0, "{s:?}");
            assert!(s.mid.is_some(), "every forwarded stream is named by a=ssrc in the answer: {s:?}");
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
