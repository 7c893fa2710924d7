//! Every task front spawns, and the one stop they all honour.
//!
//! Front runs long-lived loops (the worker and admin sockets' accept loops, housekeeping,
//! spool replays, the HTTP server) and short ones per connection or request (an HTTP
//! connection, a worker's or `ctl`'s connection, a join's permission check, a spool's
//! replay). Each is spawned through [`Tasks`], which races it against one cancellation
//! token and keeps count of it, so at exit front stops them all at once and waits until they
//! have ended (bounded), instead of leaving them to be torn down with the runtime in whatever
//! state they were. Worker supervisors are not among them: they have their own ending
//! (`Shutdown`, then a kill), which shutdown awaits first.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A handle on front's tasks: cheap to clone, one shared stop.
#[derive(Clone, Default)]
pub struct Tasks {
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    /// Runs `task` until it ends or front stops, whichever comes first. After the stop a new
    /// task ends at once, without being polled.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                () = stop.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Stops every task and waits for them to end, at most `within`; returns how many had
    /// not ended by then (0 normally: a stopped task ends at its next await).
    pub async fn stop(&self, within: Duration) -> usize {
        self.stop.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(within, self.tracker.wait()).await;
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Loops that never end by themselves, and tasks in the middle of a wait, all end at the
    /// stop; one spawned after it never runs.
    #[tokio::test]
    async fn the_stop_ends_every_task_and_waits_for_them() {
        let tasks = Tasks::default();
        let ticks = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let ticks = ticks.clone();
            tasks.spawn(async move {
                loop {
                    ticks.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
        }
        tasks.spawn(std::future::pending());
        tasks.spawn(async {});
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(ticks.load(Ordering::Relaxed) >= 3, "the loops ran");
        assert_eq!(tasks.stop(Duration::from_secs(5)).await, 0);
        let after = ticks.load(Ordering::Relaxed);
        let ran = Arc::new(AtomicUsize::new(0));
        {
            let ran = ran.clone();
            tasks.spawn(async move {
                ran.fetch_add(1, Ordering::Relaxed);
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            ticks.load(Ordering::Relaxed),
            after,
            "no loop runs after the stop"
        );
        assert_eq!(
            ran.load(Ordering::Relaxed),
            0,
            "a task spawned after the stop never ran"
        );
        assert_eq!(tasks.stop(Duration::from_secs(5)).await, 0);
    }
}
