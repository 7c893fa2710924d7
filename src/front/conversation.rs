//! What front asks of a worker's supervisor ([`Control`], [`Kill`]), how a worker ended
//! ([`Ending`]), where a worker stands ([`WorkerState`]), and the crash policy that decides
//! when a conversation whose workers keep dying is given a rest. (The worker record itself is
//! the core's, [`super::core::table`].)

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::wire::ipc::ToWorker;

/// What front asks of a worker's supervisor.
// `Send` carries a `ToWorker`, whose `Init` holds the media settings: moved once per
// message into the supervisor's queue, not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Control {
    /// Pass this message to the worker.
    Send(ToWorker),
    /// Kill the worker now (SIGKILL), for this reason; it is then handled as gone.
    Kill(Kill, String),
}

/// Why front killed a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kill {
    /// No `Stats` for the heartbeat window.
    Heartbeat,
    /// An offer left unanswered past the deadline.
    OfferTimeout,
    /// It sent something that is not our protocol.
    Protocol,
    /// The operator asked (`ctl restart`).
    Restart,
    /// Told to stop, it did not within the grace period.
    Stuck,
}

/// How a worker ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// It went by itself (exited, or closed its channel), or never came up.
    Exited(String),
    /// Front killed it.
    Killed(Kill, String),
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Exited(why) | Ending::Killed(_, why) => f.write_str(why),
        }
    }
}

/// Where a worker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Spawned (or waiting out its backoff), not yet `Ready`.
    Starting,
    Running,
    /// Asked to stop (idle, drain, shutdown, `ctl restart`), not yet reaped.
    Stopping,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Running => "running",
            WorkerState::Stopping => "stopping",
        }
    }
}

/// When crashes make a conversation unavailable, and how long a replacement waits.
#[derive(Clone, Debug)]
pub struct CrashPolicy {
    /// Crashes are counted over this window.
    pub window: Duration,
    /// This many crashes in the window is a crash loop.
    pub loop_crashes: usize,
    /// How long a conversation in a crash loop is unavailable.
    pub cooldown: Duration,
    /// The first replacement after a crash waits this long, doubling per crash in the window.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for CrashPolicy {
    fn default() -> Self {
        CrashPolicy {
            window: Duration::from_secs(30),
            loop_crashes: 3,
            cooldown: Duration::from_secs(30),
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(4),
        }
    }
}

/// One conversation's crashes and restarts (kept while front runs, across its workers).
#[derive(Clone, Debug, Default)]
pub struct CrashHistory {
    crashes: VecDeque<Instant>,
    unavailable_until: Option<Instant>,
    /// Workers replaced after a crash or a `ctl restart`.
    pub restarts: u64,
}

impl CrashHistory {
    /// A worker of this conversation crashed at `now`. Returns true when that makes a crash
    /// loop (the conversation is now unavailable until the cool-down ends).
    pub fn crashed(&mut self, now: Instant, policy: &CrashPolicy) -> bool {
        self.forget_old(now, policy);
        self.crashes.push_back(now);
        self.restarts += 1;
        if self.crashes.len() >= policy.loop_crashes {
            self.unavailable_until = Some(now + policy.cooldown);
            self.crashes.clear();
            return true;
        }
        false
    }

    /// How long the conversation stays unavailable, if it is.
    pub fn unavailable_for(&self, now: Instant) -> Option<Duration> {
        self.unavailable_until
            .filter(|t| *t > now)
            .map(|t| t.duration_since(now))
    }

    /// How long a new worker waits before it starts: nothing without recent crashes, then
    /// `backoff` doubled per crash in the window.
    pub fn backoff(&mut self, now: Instant, policy: &CrashPolicy) -> Duration {
        self.forget_old(now, policy);
        match self.crashes.len() {
            0 => Duration::ZERO,
            n => policy
                .backoff
                .saturating_mul(1 << (n - 1).min(16))
                .min(policy.max_backoff),
        }
    }

    /// Nothing left to remember: the entry can go.
    pub fn is_idle(&mut self, now: Instant, policy: &CrashPolicy) -> bool {
        self.forget_old(now, policy);
        self.crashes.is_empty() && self.unavailable_for(now).is_none() && self.restarts == 0
    }

    fn forget_old(&mut self, now: Instant, policy: &CrashPolicy) {
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            self.crashes.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn three_crashes_in_the_window_make_a_crash_loop_for_the_cooldown() {
        let p = CrashPolicy::default();
        let mut h = CrashHistory::default();
        let t0 = Instant::now();
        assert_eq!(h.backoff(t0, &p), Duration::ZERO);
        assert!(!h.crashed(t0, &p));
        assert_eq!(h.backoff(t0, &p), ms(250));
        assert!(!h.crashed(t0 + ms(1_000), &p));
        assert_eq!(h.backoff(t0 + ms(1_000), &p), ms(500));
        assert_eq!(h.unavailable_for(t0 + ms(1_000)), None);
        assert!(h.crashed(t0 + ms(2_000), &p), "third crash within 30 s");
        assert_eq!(h.unavailable_for(t0 + ms(2_000)), Some(ms(30_000)));
        assert_eq!(h.unavailable_for(t0 + ms(31_999)), Some(ms(1)));
        assert_eq!(h.unavailable_for(t0 + ms(32_000)), None);
        assert_eq!(h.restarts, 3);
    }

    #[test]
    fn crashes_spread_out_never_make_a_loop_and_the_backoff_resets() {
        let p = CrashPolicy::default();
        let mut h = CrashHistory::default();
        let t0 = Instant::now();
        for k in 0..10u64 {
            assert!(!h.crashed(t0 + ms(k * 20_000), &p), "crash {k}");
        }
        assert!(h.backoff(t0 + ms(200_000), &p) <= ms(500));
        assert_eq!(h.backoff(t0 + ms(300_000), &p), Duration::ZERO);
        assert!(!h.is_idle(t0 + ms(300_000), &p), "restarts are remembered");
    }

    #[test]
    fn backoff_is_capped() {
        let p = CrashPolicy {
            loop_crashes: 100,
            ..CrashPolicy::default()
        };
        let mut h = CrashHistory::default();
        let t0 = Instant::now();
        for _ in 0..40 {
            h.crashed(t0, &p);
        }
        assert_eq!(h.backoff(t0, &p), p.max_backoff);
    }
}
