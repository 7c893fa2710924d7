//! The datagram intake of the engine: one reader task per connection's UDP socket hands
//! what it reads to the engine's one queue. Each connection may have at most
//! [`PEER_BACKLOG`] datagrams in that queue; past that its reader stops reading and the
//! kernel's socket buffer holds (or drops) the rest, so a flood at one port cannot crowd the
//! other connections out of the queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::sync::Notify;
use tokio::sync::mpsc;

use super::PeerKey;

/// Datagrams waiting for the engine; a reader whose datagrams are not taken waits (and the
/// kernel's socket buffer holds the rest).
pub(super) const DATAGRAM_QUEUE: usize = 4096;
/// Most datagrams of one connection waiting in that queue. A client sends a few dozen a
/// second; only a flood (or a stalled engine) reaches this.
pub(super) const PEER_BACKLOG: usize = 64;
pub(super) const MAX_DATAGRAM: usize = 2048;

/// How many of one connection's datagrams wait in the engine's queue; its reader stops
/// reading at [`PEER_BACKLOG`] until the engine has taken some.
#[derive(Default)]
pub(super) struct Backlog {
    pub queued: AtomicUsize,
    taken: Notify,
}

impl Backlog {
    /// The engine took one of this connection's datagrams.
    pub(super) fn take_one(&self) {
        let before = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .unwrap_or(0);
        if before >= PEER_BACKLOG {
            // The reader may be waiting (or about to: the permit is kept for it).
            self.taken.notify_one();
        }
    }
}

/// One UDP datagram read from a connection's socket.
pub(super) struct Datagram {
    pub key: PeerKey,
    /// When the reader took it from the socket: forwarding delay is measured from here.
    pub at: Instant,
    pub from: SocketAddr,
    pub data: BytesMut,
}

/// Reads one connection's socket and passes each datagram to the engine, never more than
/// [`PEER_BACKLOG`] at a time: past that it waits for the engine, and what arrives meanwhile
/// stays in (or overflows) the kernel's socket buffer, at no cost to anyone else.
pub(super) async fn read_datagrams(
    socket: tokio::net::UdpSocket,
    key: PeerKey,
    backlog: Arc<Backlog>,
    to: mpsc::Sender<Datagram>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        while backlog.queued.load(Ordering::Acquire) >= PEER_BACKLOG {
            backlog.taken.notified().await;
        }
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                backlog.queued.fetch_add(1, Ordering::AcqRel);
                let d = Datagram {
                    key,
                    at: Instant::now(),
                    from,
                    data: BytesMut::from(&buf[..n]),
                };
                if to.send(d).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Not expected on an unconnected UDP socket; never spin on it.
                tracing::debug!("socket read: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
