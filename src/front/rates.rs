//! The one rule behind the rates front holds its callers to before a request costs anything
//! downstream: joins per client (each is a request to the permissions service), offers per
//! client (each is a peer connection in a worker), and new conversations per user (each is a
//! process). All are sliding windows of one minute over the times of the recent ones.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Whether one more event now would pass `per_minute` in the sliding minute of `recent`
/// (forgetting what is older); `Some(wait)` until the oldest leaves the window.
pub(super) fn over_rate(
    recent: &mut VecDeque<Instant>,
    per_minute: u32,
    now: Instant,
) -> Option<Duration> {
    let minute = Duration::from_secs(60);
    while recent
        .front()
        .is_some_and(|t| now.duration_since(*t) > minute)
    {
        recent.pop_front();
    }
    (recent.len() >= per_minute as usize).then(|| {
        recent
            .front()
            .map_or(minute, |t| minute.saturating_sub(now.duration_since(*t)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sliding_minute() {
        let t0 = Instant::now();
        let mut recent = VecDeque::new();
        for i in 0..3 {
            assert_eq!(over_rate(&mut recent, 3, t0 + Duration::from_secs(i)), None);
            recent.push_back(t0 + Duration::from_secs(i));
        }
        // The fourth within the minute waits for the first to leave it.
        let wait = over_rate(&mut recent, 3, t0 + Duration::from_secs(10));
        assert_eq!(wait, Some(Duration::from_secs(50)));
        assert_eq!(
            over_rate(&mut recent, 3, t0 + Duration::from_secs(61)),
            None
        );
        assert_eq!(recent.len(), 2);
    }
}
