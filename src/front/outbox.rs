//! What front sends down one signalling socket, and the bounded queue it goes through.
//!
//! Every frame for a client (answers, events, errors) is queued without waiting, from under
//! front's state lock. The queue is bounded: when it is full the frame is dropped and the
//! socket's session loop is told to disconnect its client, which is not reading (a client
//! that reads keeps the queue near empty). So a client that stops reading costs a bounded
//! amount of memory.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::wire::signal::{Event, ServerFrame, SignalError};

/// What front sends down one signalling socket. Frames stay typed until the socket writes
/// them, which is where a seed-era client's answer becomes raw SDP.
#[derive(Debug)]
pub enum Out {
    Frame(ServerFrame),
    /// Send `error::` and close the socket.
    Fail(SignalError),
}

impl Out {
    /// An `event::` frame.
    pub fn event(event: Event) -> Out {
        Out::Frame(ServerFrame::Event(event))
    }
}

/// The sending half of one socket's outbound queue.
#[derive(Clone, Debug)]
pub struct SocketTx {
    tx: mpsc::Sender<Out>,
    overflow: Arc<Notify>,
}

impl SocketTx {
    /// A queue of `capacity` frames; the receiver, and what is notified on overflow.
    pub fn channel(capacity: usize) -> (SocketTx, mpsc::Receiver<Out>, Arc<Notify>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let overflow = Arc::new(Notify::new());
        (
            SocketTx {
                tx,
                overflow: overflow.clone(),
            },
            rx,
            overflow,
        )
    }

    /// Queues `out` without waiting; on a full queue the session is told to disconnect.
    pub fn send(&self, out: Out) -> Result<(), Out> {
        match self.tx.try_send(out) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(out)) => {
                self.overflow.notify_one();
                Err(out)
            }
            Err(TrySendError::Closed(out)) => Err(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn frame(text: &str) -> Out {
        Out::Frame(ServerFrame::Answer { sdp: text.into() })
    }

    #[tokio::test]
    async fn the_outbound_queue_is_bounded_and_overflow_is_told() {
        let (tx, mut rx, overflow) = SocketTx::channel(4);
        for i in 0..4 {
            assert!(tx.send(frame(&format!("{i}"))).is_ok());
        }
        // Full: dropped, and the session is told (a permit waits for it).
        assert!(tx.send(frame("5")).is_err());
        tokio::time::timeout(Duration::from_secs(1), overflow.notified())
            .await
            .expect("overflow notified");
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, 4, "never more than the capacity queued");
        // Drained: room again.
        assert!(tx.send(frame("6")).is_ok());
    }
}
