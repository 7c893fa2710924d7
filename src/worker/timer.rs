//! When an `rtc` connection's timer is next handled, for a driver that keeps every
//! connection's deadline in one ordered set of `(deadline, key)`: the worker's engine and the
//! light load client (`crate::tools::load::light`) both drive their connections this way.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// A connection whose timer is already due is handled at most this often: a deadline that
/// stays in the past must not spin the loop (webrtc#862).
pub const MIN_TIMEOUT_INTERVAL: Duration = Duration::from_millis(1);

/// Moves connection `key`'s entry in `timers` from `*deadline` to `polled` (what its
/// `poll_timeout` says now), and records it in `*deadline`. `last_timeout` is when its timer
/// was last handled.
pub fn rearm<K: Ord + Copy>(
    timers: &mut BTreeSet<(Instant, K)>,
    key: K,
    deadline: &mut Option<Instant>,
    last_timeout: Instant,
    polled: Option<Instant>,
    now: Instant,
) {
    let next = polled.map(|t| {
        // Already due, and handled less than a millisecond ago: wait out the millisecond.
        if t <= now && now.duration_since(last_timeout) < MIN_TIMEOUT_INTERVAL {
            last_timeout + MIN_TIMEOUT_INTERVAL
        } else {
            t
        }
    });
    if next == *deadline {
        return;
    }
    if let Some(old) = deadline.take() {
        timers.remove(&(old, key));
    }
    if let Some(t) = next {
        timers.insert((t, key));
        *deadline = Some(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_moves_and_a_past_one_waits_out_the_interval() {
        let t0 = Instant::now();
        let mut timers = BTreeSet::new();
        let mut deadline = None;
        let later = t0 + Duration::from_millis(50);
        rearm(&mut timers, 7u64, &mut deadline, t0, Some(later), t0);
        assert_eq!((deadline, timers.len()), (Some(later), 1));
        // Handled just now, and already due again: not before the interval has passed.
        rearm(&mut timers, 7, &mut deadline, t0, Some(t0), t0);
        assert_eq!(deadline, Some(t0 + MIN_TIMEOUT_INTERVAL));
        assert_eq!(
            timers.iter().collect::<Vec<_>>(),
            [&(t0 + MIN_TIMEOUT_INTERVAL, 7)]
        );
        rearm(&mut timers, 7, &mut deadline, t0, None, t0);
        assert_eq!((deadline, timers.len()), (None, 0));
    }
}
