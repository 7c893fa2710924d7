//! The core on scripted time: every rule of joins, offers, sessions and workers driven
//! without a process, a socket or a clock. Each test plays the shell: it feeds inputs at
//! chosen instants and reads the commands that come out.

use std::time::{Duration, Instant};

use super::{Command, Core, JoinError, Limits, OfferState, Tally};
use crate::front::conversation::{Control, CrashPolicy, Ending, Kill};
use crate::front::outbox::Out;
use crate::wire::identity::Identity;
use crate::wire::ids::{ConversationId, Generation, SessionId};
use crate::wire::ipc::{Adoption, CloseReason, ToFront, ToWorker};
use crate::wire::signal::{ErrorCode, Event, ReconnectReason, ServerFrame, SlotInfo};
use crate::wire::stats::WorkerStats;

mod cluster;

const JOIN_TIMEOUT: Duration = Duration::from_secs(2);
const IDLE: Duration = Duration::from_secs(5);

struct Rig {
    core: Core,
    t0: Instant,
}

impl Rig {
    fn new() -> Rig {
        let limits = Limits {
            join_timeout: JOIN_TIMEOUT,
            worker_idle: IDLE,
            max_sessions_per_user: 4,
            offers_per_minute: 20,
            joins_per_minute: 20,
            max_workers: 8,
            new_conversations_per_minute: 10,
        };
        Rig {
            core: Core::new(limits, CrashPolicy::default(), 1),
            t0: Instant::now(),
        }
    }

    /// `ms` milliseconds into the script.
    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn take(&mut self) -> Vec<Command> {
        self.core.take_commands()
    }

    /// `who` attached a socket at `ms`; returns its id.
    fn socket(&mut self, who: &Identity, ms: u64) -> u64 {
        let id = self.core.next_id();
        self.core.attach_socket(who, id, self.at(ms)).unwrap();
        id
    }

    /// `who` joins `conv` (its permission granted) and offers at `ms`; returns the worker
    /// and the session.
    fn join_and_offer(&mut self, who: &Identity, conv: &ConversationId, ms: u64) -> Command2 {
        self.core.join(who, conv, self.at(ms));
        let state = self.core.offer(who, "v=0".into(), self.at(ms)).unwrap();
        assert_eq!(state, OfferState::Dispatched);
        let cmds = self.take();
        let (generation, session) = offered(&cmds).expect("an offer went to a worker");
        Command2 {
            generation,
            session,
            cmds,
        }
    }

    /// The worker answers `session` at `ms`.
    fn answer(&mut self, conv: &ConversationId, d: &Command2, ms: u64) {
        let msg = ToFront::Answer {
            session: d.session,
            sdp: "answer".into(),
        };
        self.core
            .worker_message(conv, d.generation, msg, self.at(ms));
    }
}

/// What a dispatched offer left: its worker, its session and the commands.
struct Command2 {
    generation: Generation,
    session: SessionId,
    cmds: Vec<Command>,
}

fn client(name: &str) -> Identity {
    Identity {
        userid: format!("user-{name}"),
        clientid: name.into(),
    }
}

fn conv(name: &str) -> ConversationId {
    ConversationId::parse(name).unwrap()
}

/// The worker and session of the offer among `cmds`.
fn offered(cmds: &[Command]) -> Option<(Generation, SessionId)> {
    cmds.iter().find_map(|c| match c {
        Command::Worker(g, Control::Send(ToWorker::Offer { session, .. })) => Some((*g, *session)),
        _ => None,
    })
}

/// The spawn among `cmds`: its generation and backoff.
fn spawned(cmds: &[Command]) -> Option<(Generation, Duration)> {
    cmds.iter().find_map(|c| match c {
        Command::Spawn {
            generation, delay, ..
        } => Some((*generation, *delay)),
        _ => None,
    })
}

/// What went to socket `socket`.
fn to_socket(cmds: &[Command], socket: u64) -> Vec<&Out> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Socket(s, out) if *s == socket => Some(out),
            _ => None,
        })
        .collect()
}

fn reconnect(out: &Out) -> Option<ReconnectReason> {
    match out {
        Out::Frame(ServerFrame::Event(Event::Reconnect { reason })) => Some(*reason),
        _ => None,
    }
}

fn counted(cmds: &[Command], tally: Tally) -> usize {
    cmds.iter()
        .filter(|c| matches!(c, Command::Count(t) if *t == tally))
        .count()
}

#[test]
fn join_then_offer_spawns_a_worker_and_the_answer_reaches_the_socket() {
    let mut r = Rig::new();
    let (a, c) = (client("a"), conv("room"));
    let sock = r.socket(&a, 0);
    let d = r.join_and_offer(&a, &c, 10);
    // The spawn comes first: the shell must have the worker's channel before the offer.
    let spawn = d
        .cmds
        .iter()
        .position(|c| matches!(c, Command::Spawn { .. }));
    let offer = d
        .cmds
        .iter()
        .position(|c| matches!(c, Command::Worker(_, Control::Send(ToWorker::Offer { .. }))));
    assert!(spawn < offer, "{:?}", d.cmds);
    assert_eq!(spawned(&d.cmds), Some((d.generation, Duration::ZERO)));
    assert_eq!(counted(&d.cmds, Tally::Offer), 1);
    r.answer(&c, &d, 50);
    let cmds = r.take();
    assert!(matches!(
        to_socket(&cmds, sock)[..],
        [Out::Frame(ServerFrame::Answer { .. })]
    ));
    // A second client goes to the same worker.
    let b = client("b");
    let d2 = r.join_and_offer(&b, &c, 60);
    assert_eq!(d2.generation, d.generation);
    assert_eq!(spawned(&d2.cmds), None);
    assert_eq!(r.core.worker_rows(r.at(70))[0].members, 2);
}

#[test]
fn an_offer_before_the_join_waits_for_it_with_its_candidates() {
    let mut r = Rig::new();
    let (a, c) = (client("a"), conv("room"));
    r.socket(&a, 0);
    let state = r.core.offer(&a, "v=0".into(), r.at(0)).unwrap();
    assert_eq!(
        state,
        OfferState::WaitingForJoin {
            until: r.at(0) + JOIN_TIMEOUT
        }
    );
    r.core.ice(&a, Some("candidate:1".into()));
    r.core.ice(&a, None);
    assert!(r.take().is_empty(), "nothing goes anywhere before the join");
    r.core.join(&a, &c, r.at(500));
    let cmds = r.take();
    let (g, session) = offered(&cmds).expect("the join sent the waiting offer");
    let ice: Vec<_> = cmds
        .iter()
        .filter(|c| matches!(c, Command::Worker(w, Control::Send(ToWorker::Ice { session: s, .. })) if *w == g && *s == session))
        .collect();
    assert_eq!(ice.len(), 1, "the kept candidate follows its offer");
    // The join's check covered that offer; the next one is checked afresh.
    assert_eq!(r.core.admit_offer(&a, r.at(600)), Ok(Some(c)));
}

#[test]
fn an_offer_waiting_past_the_join_timeout_is_dropped() {
    let mut r = Rig::new();
    let (a, c) = (client("a"), conv("room"));
    r.socket(&a, 0);
    r.core.offer(&a, "v=0".into(), r.at(0)).unwrap();
    r.core.ice(&a, Some("candidate:1".into()));
    let timeout = JOIN_TIMEOUT.as_millis() as u64;
    assert!(!r.core.offer_expired(&a, r.at(timeout - 1)), "still within");
    // The deadline passes: the offer was still waiting, so the client gets join-timeout.
    assert!(r.core.offer_expired(&a, r.at(timeout)));
    assert!(!r.core.offer_expired(&a, r.at(timeout + 1)), "only once");
    r.core.join(&a, &c, r.at(timeout + 500));
    assert_eq!(offered(&r.take()), None, "a join after it sends nothing");
}

#[test]
fn a_second_waiting_offer_gets_a_deadline_of_its_own() {
    let mut r = Rig::new();
    let (a, c) = (client("a"), conv("room"));
    r.core.offer(&a, "v=0".into(), r.at(0)).unwrap();
    r.core.offer(&a, "v=0".into(), r.at(1_500)).unwrap();
    let timeout = JOIN_TIMEOUT.as_millis() as u64;
    assert!(
        !r.core.offer_expired(&a, r.at(timeout)),
        "the first deadline"
    );
    r.core.join(&a, &c, r.at(timeout + 100));
    assert!(offered(&r.take()).is_some(), "the second offer went out");
    assert!(!r.core.offer_expired(&a, r.at(1_500 + timeout)));
}

#[test]
fn the_join_credit_covers_one_offer_within_the_join_timeout() {
    let mut r = Rig::new();
    let (a, b, c) = (client("a"), client("b"), conv("room"));
    r.core.join(&a, &c, r.at(0));
    r.core.join(&b, &c, r.at(0));
    assert_eq!(r.core.admit_offer(&a, r.at(1_000)), Ok(None));
    assert_eq!(r.core.admit_offer(&a, r.at(1_100)), Ok(Some(c.clone())));
    let late = JOIN_TIMEOUT.as_millis() as u64 + 1;
    assert_eq!(r.core.admit_offer(&b, r.at(late)), Ok(Some(c.clone())));
    // Without a socket or an offer, a join is forgotten once the join timeout has passed.
    let d = client("d");
    r.core.join(&d, &c, r.at(0));
    r.core.housekeeping(r.at(late));
    assert_eq!(r.core.admit_offer(&d, r.at(late)), Ok(None));
    assert!(!r.core.clients.contains_key(&d));
}

#[test]
fn a_crash_tells_the_clients_to_reconnect_and_the_next_worker_waits_out_a_backoff() {
    let mut r = Rig::new();
    let (a, b, c) = (client("a"), client("b"), conv("room"));
    let (sa, sb) = (r.socket(&a, 0), r.socket(&b, 0));
    let da = r.join_and_offer(&a, &c, 0);
    let db = r.join_and_offer(&b, &c, 0);
    r.answer(&c, &da, 100);
    r.answer(&c, &db, 100);
    r.take();
    let ending = Ending::Exited("worker exited: signal 9".into());
    r.core.worker_gone(&c, da.generation, &ending, r.at(1_000));
    let cmds = r.take();
    for s in [sa, sb] {
        let got: Vec<_> = to_socket(&cmds, s)
            .into_iter()
            .filter_map(reconnect)
            .collect();
        assert_eq!(got, vec![ReconnectReason::WorkerExited]);
    }
    assert_eq!(counted(&cmds, Tally::WorkerFailure), 1);
    assert!(!r.core.has_worker(&c));
    assert!(r.core.sessions.is_empty());
    // The re-offer starts a new worker after the first backoff.
    let d = r.join_and_offer(&a, &c, 1_100);
    assert_ne!(d.generation, da.generation);
    assert_eq!(
        spawned(&d.cmds),
        Some((d.generation, r.core.policy().backoff))
    );
    // A late report of the dead worker concerns nobody.
    r.answer(&c, &da, 1_200);
    assert!(to_socket(&r.take(), sa).is_empty());
}

#[test]
fn a_crash_loop_makes_the_conversation_unavailable_for_the_cooldown() {
    let mut r = Rig::new();
    let (a, c) = (client("a"), conv("room"));
    let sock = r.socket(&a, 0);
    let ending = Ending::Exited("worker exited: signal 11".into());
    for k in 0..3u64 {
        let d = r.join_and_offer(&a, &c, k * 1_000);
        r.core
            .worker_gone(&c, d.generation, &ending, r.at(k * 1_000 + 500));
    }
    assert_eq!(counted(&r.take(), Tally::CrashLoop), 1);
    let e = r.core.admit_join(&a, &c, r.at(3_000)).unwrap_err();
    assert!(
        matches!(&e, JoinError::Unavailable(m) if m.contains("crashed 3 times")),
        "{e}"
    );
    // An offer gets `unavailable`, and no worker is spawned.
    r.core.offer(&a, "v=0".into(), r.at(3_000)).unwrap();
    let cmds = r.take();
    assert_eq!(spawned(&cmds), None);
    assert!(matches!(
        to_socket(&cmds, sock)[..],
        [Out::Fail(e)] if e.code == ErrorCode::Unavailable
    ));
    let by_state = r.core.workers_by_state(r.at(3_000));
    assert!(by_state.contains(&("unavailable", 1)), "{by_state:?}");
    // Other conversations see nothing; this one is back after the cooldown.
    assert!(r.core.admit_join(&a, &conv("other"), r.at(3_000)).is_ok());
    let back = 2_500 + r.core.policy().cooldown.as_millis() as u64 + 1;
    assert!(r.core.admit_join(&a, &c, r.at(back)).is_ok());
}

#[test]
fn a_restart_is_no_crash() {
    let mut r = Rig::new();
    let (a, c) = (client("a"), conv("room"));
    let sock = r.socket(&a, 0);
    let d = r.join_and_offer(&a, &c, 0);
    r.answer(&c, &d, 10);
    r.take();
    assert_eq!(r.core.restart(&c), Ok(None));
    assert!(matches!(
        &r.take()[..],
        [Command::Worker(g, Control::Kill(Kill::Restart, _))] if *g == d.generation
    ));
    let ending = Ending::Killed(Kill::Restart, "restart requested".into());
    r.core.worker_gone(&c, d.generation, &ending, r.at(20));
    let cmds = r.take();
    assert_eq!(counted(&cmds, Tally::WorkerFailure), 0);
    let got: Vec<_> = to_socket(&cmds, sock)
        .into_iter()
        .filter_map(reconnect)
        .collect();
    assert_eq!(got, vec![ReconnectReason::WorkerRestarted]);
    let d2 = r.join_and_offer(&a, &c, 30);
    assert_eq!(spawned(&d2.cmds), Some((d2.generation, Duration::ZERO)));
    assert_eq!(r.core.worker_rows(r.at(40))[0].restarts, 1);
}

#[test]
fn an_offer_unanswered_past_the_deadline_kills_the_worker() {
    let mut r = Rig::new();
    let (a, c) = (client("a"), conv("room"));
    let d = r.join_and_offer(&a, &c, 0);
    r.core.housekeeping(r.at(9_000));
    assert!(r.take().is_empty());
    r.core.housekeeping(r.at(10_001));
    assert!(matches!(
        &r.take()[..],
        [Command::Worker(g, Control::Kill(Kill::OfferTimeout, _))] if *g == d.generation
    ));
    r.core.housekeeping(r.at(10_500));
    assert!(r.take().is_empty(), "killed once");
}

#[test]
fn a_taken_back_worker_keeps_its_sessions_and_their_clients_their_slots() {
    let mut r = Rig::new();
    let (a, b, c) = (client("a"), client("b"), conv("room"));
    let g = Generation(7);
    let (sa, sb) = (SessionId(70), SessionId(71));
    let adoption = Adoption {
        sessions: vec![(sa, a.clone()), (sb, b.clone())],
        uptime_ms: 60_000,
        stats: WorkerStats::default(),
    };
    assert!(r.core.adopt(&c, g, 4242, adoption, r.at(0)));
    assert_eq!(r.core.adopted_of(&[g, Generation(8)]), 1);
    let row = &r.core.worker_rows(r.at(0))[0];
    assert_eq!(
        (row.pid, row.members, row.state.as_str()),
        (Some(4242), 2, "running")
    );
    // Its reports reach the clients, who need no new offer.
    let sock = r.socket(&a, 10);
    let slots = vec![SlotInfo {
        clientid: Some("b".into()),
        mid: "0".into(),
        slot: 0,
        userid: Some("user-b".into()),
    }];
    let event = Event::Slots {
        slots: slots.clone(),
    };
    let msg = ToFront::Event { session: sa, event };
    r.core.worker_message(&c, g, msg, r.at(20));
    assert_eq!(to_socket(&r.take(), sock).len(), 1);
    r.core.ice(&a, Some("candidate:1".into()));
    assert!(matches!(
        &r.take()[..],
        [Command::Worker(w, Control::Send(ToWorker::Ice { session, .. }))] if *w == g && *session == sa
    ));
    // A socket that comes back gets its current slots again.
    r.core.detach_socket(&a, sock, r.at(30));
    let again = r.socket(&a, 40);
    assert!(matches!(
        to_socket(&r.take(), again)[..],
        [Out::Frame(ServerFrame::Event(Event::Slots { .. }))]
    ));
    // A second worker for the same conversation is told to stop.
    let late = Adoption {
        sessions: vec![],
        uptime_ms: 0,
        stats: WorkerStats::default(),
    };
    assert!(!r.core.adopt(&c, Generation(9), 4343, late, r.at(50)));
    assert!(matches!(
        &r.take()[..],
        [Command::Worker(
            Generation(9),
            Control::Send(ToWorker::Shutdown)
        )]
    ));
}

#[test]
fn draining_takes_no_new_conversation_and_says_when_the_last_is_gone() {
    let mut r = Rig::new();
    let (a, c) = (client("a"), conv("room"));
    let d = r.join_and_offer(&a, &c, 0);
    r.answer(&c, &d, 10);
    assert_eq!(r.core.drain(), 1);
    assert!(!r.take().iter().any(|c| matches!(c, Command::Drained)));
    let e = r.core.admit_join(&a, &conv("new"), r.at(20)).unwrap_err();
    assert!(
        matches!(&e, JoinError::Unavailable(m) if m.contains("draining")),
        "{e}"
    );
    assert!(
        r.core.admit_join(&client("b"), &c, r.at(20)).is_ok(),
        "a running one goes on"
    );
    // Its last member leaves; once idle, the worker is told to stop, and drained is said
    // when it is gone.
    let closed = ToFront::Closed {
        session: d.session,
        reason: CloseReason::ByClient,
    };
    r.core.worker_message(&c, d.generation, closed, r.at(100));
    r.core.housekeeping(r.at(100 + IDLE.as_millis() as u64));
    let cmds = r.take();
    assert!(cmds.iter().any(
        |c| matches!(c, Command::Worker(g, Control::Send(ToWorker::Shutdown)) if *g == d.generation)
    ));
    assert!(cmds.iter().any(|c| matches!(c, Command::Drained)));
    r.core
        .worker_gone(&c, d.generation, &Ending::Exited("bye".into()), r.at(6_000));
    assert!(r.take().iter().any(|c| matches!(c, Command::Drained)));
}

#[test]
fn a_re_offer_replaces_the_session_and_reports_of_the_old_one_are_dropped() {
    let mut r = Rig::new();
    let (a, c) = (client("a"), conv("room"));
    let sock = r.socket(&a, 0);
    let first = r.join_and_offer(&a, &c, 0);
    r.core.offer(&a, "v=0".into(), r.at(10)).unwrap();
    let cmds = r.take();
    assert!(cmds.iter().any(|c| matches!(c, Command::Worker(_, Control::Send(ToWorker::Leave { session })) if *session == first.session)));
    let (_, second) = offered(&cmds).unwrap();
    assert_ne!(second, first.session);
    r.answer(&c, &first, 20);
    assert!(
        to_socket(&r.take(), sock).is_empty(),
        "the old session's answer"
    );
    assert!(r.core.current(first.session).is_none());
    assert!(r.core.current(second).is_some());
    assert_eq!(r.core.sessions.len(), 1, "one record per session");
}

#[test]
fn a_socket_that_closes_before_the_answer_ends_its_session() {
    let mut r = Rig::new();
    let (a, c) = (client("a"), conv("room"));
    let sock = r.socket(&a, 0);
    let d = r.join_and_offer(&a, &c, 0);
    r.core.detach_socket(&a, sock, r.at(10));
    assert!(matches!(
        &r.take()[..],
        [Command::Worker(_, Control::Send(ToWorker::Leave { session }))] if *session == d.session
    ));
    assert!(r.core.sessions.is_empty());
    assert_eq!(r.core.client_count(), 0);
}

#[test]
fn an_offer_admitted_while_its_join_is_checked_uses_up_the_join_credit() {
    let mut r = Rig::new();
    let (a, c) = (client("a"), conv("room"));
    r.socket(&a, 0);
    // The offer passes admission before the join is done (nothing to check yet), and the
    // join completes before the offer reaches the core: it is dispatched at once.
    assert_eq!(r.core.admit_offer(&a, r.at(0)), Ok(None));
    r.core.join(&a, &c, r.at(1));
    let state = r.core.offer(&a, "v=0".into(), r.at(2)).unwrap();
    assert_eq!(state, OfferState::Dispatched);
    // So the next offer is checked, not waved through on the join's credit.
    assert_eq!(r.core.admit_offer(&a, r.at(3)), Ok(Some(c)));
}

#[test]
fn a_user_past_its_session_limit_gets_no_socket_and_a_second_socket_replaces_the_first() {
    let mut r = Rig::new();
    let user = |k: usize| Identity {
        userid: "u".into(),
        clientid: format!("c{k}"),
    };
    let first = r.socket(&user(0), 0);
    for k in 1..4 {
        r.socket(&user(k), 0);
    }
    let e = r.core.attach_socket(&user(4), 99, r.at(0)).unwrap_err();
    assert_eq!(e.code, ErrorCode::TooManySessions);
    // A reloaded tab: the same client's new socket replaces its first, which is told why.
    let again = r.socket(&user(0), 10);
    assert_ne!(again, first);
    assert!(matches!(
        to_socket(&r.take(), first)[..],
        [Out::Fail(e)] if e.code == ErrorCode::TooManySessions
    ));
}

#[test]
fn past_max_workers_only_running_conversations_take_joins() {
    let mut r = Rig::new();
    r.core.limits.max_workers = 2;
    r.join_and_offer(&client("a"), &conv("one"), 0);
    r.join_and_offer(&client("b"), &conv("two"), 0);
    let e = r
        .core
        .admit_join(&client("c"), &conv("three"), r.at(10))
        .unwrap_err();
    assert!(
        matches!(&e, JoinError::Unavailable(m) if m.contains("MAX_WORKERS=2")),
        "{e}"
    );
    assert!(
        r.core
            .admit_join(&client("c"), &conv("two"), r.at(10))
            .is_ok()
    );
}

#[test]
fn a_user_starting_conversations_too_fast_is_rate_limited_for_the_minute() {
    let mut r = Rig::new();
    r.core.limits.new_conversations_per_minute = 2;
    let a = client("a");
    r.join_and_offer(&a, &conv("one"), 0);
    r.join_and_offer(&a, &conv("two"), 1_000);
    let e = r
        .core
        .admit_join(&a, &conv("three"), r.at(2_000))
        .unwrap_err();
    let JoinError::RateLimited { retry_after, .. } = e else {
        panic!("{e}")
    };
    assert_eq!(retry_after, Duration::from_secs(58));
    assert!(
        r.core.admit_join(&a, &conv("one"), r.at(2_000)).is_ok(),
        "not a new one"
    );
    assert!(r.core.admit_join(&a, &conv("three"), r.at(61_000)).is_ok());
}

#[test]
fn what_the_worker_says_of_a_session_reaches_its_client_and_ends_it_when_it_should() {
    let mut r = Rig::new();
    let (a, c) = (client("a"), conv("room"));
    let sock = r.socket(&a, 0);
    // Rejected: the client hears why, the session is over, the worker's idle clock starts.
    let d = r.join_and_offer(&a, &c, 0);
    let msg = ToFront::Rejected {
        session: d.session,
        code: ErrorCode::BadSdp,
        message: "no audio".into(),
    };
    r.core.worker_message(&c, d.generation, msg, r.at(10));
    assert!(matches!(
        to_socket(&r.take(), sock)[..],
        [Out::Fail(e)] if e.code == ErrorCode::BadSdp
    ));
    assert!(r.core.sessions.is_empty());
    assert_eq!(r.core.workers[&c].empty_since, Some(r.at(10)));
    // Closed by a failure: told to reconnect; closed by the client itself: told nothing.
    for (reason, told) in [
        (
            CloseReason::Failed,
            Some(ReconnectReason::PeerConnectionFailed),
        ),
        (CloseReason::ByClient, None),
    ] {
        let d = r.join_and_offer(&a, &c, 20);
        r.answer(&c, &d, 30);
        r.take();
        let msg = ToFront::Closed {
            session: d.session,
            reason,
        };
        r.core.worker_message(&c, d.generation, msg, r.at(40));
        let got: Vec<_> = to_socket(&r.take(), sock)
            .into_iter()
            .filter_map(reconnect)
            .collect();
        assert_eq!(got, told.into_iter().collect::<Vec<_>>(), "{reason:?}");
        assert!(r.core.sessions.is_empty());
    }
}

#[test]
fn a_refused_offer_ends_its_session_and_a_refused_candidate_does_not() {
    let mut r = Rig::new();
    let (a, c) = (client("a"), conv("room"));
    let sock = r.socket(&a, 0);
    let d = r.join_and_offer(&a, &c, 0);
    let ice = ToWorker::Ice {
        session: d.session,
        candidate: "x".repeat(10),
    };
    r.core
        .worker_refused(&c, d.generation, &ice, 2 << 20, r.at(10));
    assert!(matches!(
        to_socket(&r.take(), sock)[..],
        [Out::Fail(e)] if e.code == ErrorCode::TooLarge
    ));
    assert!(r.core.current(d.session).is_some(), "the session goes on");
    let offer = ToWorker::Offer {
        session: d.session,
        identity: a.clone(),
        sdp: "v=0".into(),
    };
    r.core
        .worker_refused(&c, d.generation, &offer, 2 << 20, r.at(20));
    assert_eq!(to_socket(&r.take(), sock).len(), 1);
    assert!(
        r.core.current(d.session).is_none(),
        "the offer never reached the worker"
    );
}

#[test]
fn a_client_without_a_socket_is_forgotten_with_its_dead_worker() {
    let mut r = Rig::new();
    let (a, b, c) = (client("a"), client("b"), conv("room"));
    let sock = r.socket(&a, 0);
    let da = r.join_and_offer(&a, &c, 0);
    let db = r.join_and_offer(&b, &c, 0);
    r.answer(&c, &da, 10);
    r.answer(&c, &db, 10);
    // a's socket goes; its answered session (its media) goes on.
    r.core.detach_socket(&a, sock, r.at(20));
    assert!(r.core.current(da.session).is_some());
    r.core
        .worker_gone(&c, da.generation, &Ending::Exited("gone".into()), r.at(30));
    // Neither has a socket to be told to reconnect on: both are forgotten.
    for who in [&a, &b] {
        assert!(!r.core.clients.contains_key(who), "{who}");
    }
    assert_eq!(r.core.client_count(), 0);
}

/// The demo's broadcasts reach the sockets of clients in the call, not of one that joined and
/// has not offered yet (a seed-era client would take the event for its answer).
#[test]
fn broadcasts_reach_only_clients_that_have_offered() {
    let mut rig = Rig::new();
    let (a, b) = (client("a"), client("b"));
    let room = conv("room");
    let (sa, sb) = (rig.socket(&a, 0), rig.socket(&b, 0));
    rig.join_and_offer(&a, &room, 10);
    rig.core.join(&b, &room, rig.at(20));
    assert_eq!(rig.core.sockets_in(&room), vec![sa]);
    let state = rig.core.offer(&b, "v=0".into(), rig.at(30)).unwrap();
    assert_eq!(state, OfferState::Dispatched);
    let mut sockets = rig.core.sockets_in(&room);
    sockets.sort_unstable();
    assert_eq!(sockets, vec![sa, sb]);
}
