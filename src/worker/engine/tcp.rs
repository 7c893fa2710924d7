//! ICE-TCP, the fallback for clients whose network blocks UDP: the worker also listens on one
//! TCP port (`RTC_TCP_PORTS`, the UDP port's number when it is free), every answer carries a
//! passive TCP host candidate after the UDP one (RFC 6544), and a client's TCP connection
//! carries the same datagrams as UDP would, each framed with a two-byte length (RFC 4571).
//!
//! A TCP connection is only a pipe: each frame goes through the same [`super::demux`] as a UDP
//! datagram (its source being the connection's address, marked TCP), so a connection must
//! open with an authenticated STUN request for one of the worker's connections or it reaches
//! nothing, and is closed. Each connection has a reader task (frames in, on one channel to the
//! engine) and a writer task (frames out, on a bounded channel: a listener whose TCP
//! connection does not drain loses whole frames, counted, never the framing).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::port::{Received, Transport};
use crate::wire::stats::DropStats;

/// Most TCP connections one worker holds; more are refused at accept.
const MAX_CONNECTIONS: usize = 256;
/// Frames waiting for one connection's writer; past that, frames for it are dropped.
const WRITE_QUEUE: usize = 256;
/// A connection that has not been authenticated (no STUN request of ours) this long after it
/// was accepted is closed.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// What the TCP side tells the engine.
pub(super) enum TcpEvent {
    /// A frame read from a connection (a datagram, in UDP terms).
    Frame(Received),
    /// A connection ended (read error, end of stream, or closed by us).
    Closed(SocketAddr),
}

struct Connection {
    writer: mpsc::Sender<BytesMut>,
    accepted: Instant,
    /// Some frame of it was routed to one of our connections.
    authenticated: bool,
    reader: tokio::task::JoinHandle<()>,
}

pub(super) struct TcpPort {
    listener: TcpListener,
    /// Our passive candidate's address (announced IP, the listener's port).
    pub local: SocketAddr,
    connections: HashMap<SocketAddr, Connection>,
    events_tx: mpsc::Sender<TcpEvent>,
    events: mpsc::Receiver<TcpEvent>,
}

impl TcpPort {
    /// Listens on `preferred` if it is free, else on a port of `range` (random start).
    pub(super) fn bind(
        ip: std::net::IpAddr,
        announced: std::net::IpAddr,
        preferred: u16,
        range: (u16, u16),
    ) -> std::io::Result<TcpPort> {
        let listener = bind_listener(ip, preferred, range)?;
        let local = SocketAddr::new(announced, listener.local_addr()?.port());
        let (events_tx, events) = mpsc::channel(1024);
        tracing::info!(%local, "the conversation's ICE-TCP port");
        Ok(TcpPort {
            listener,
            local,
            connections: HashMap::new(),
            events_tx,
            events,
        })
    }

    /// The next thing that happens on the TCP side: a new connection is set up here (and
    /// reported as nothing), a frame or a close is returned.
    pub(super) async fn next(&mut self) -> Option<TcpEvent> {
        tokio::select! {
            accepted = self.listener.accept() => {
                if let Ok((stream, from)) = accepted {
                    self.adopt(stream, from);
                }
                None
            }
            event = self.events.recv() => event,
        }
    }

    fn adopt(&mut self, stream: TcpStream, from: SocketAddr) {
        if self.connections.len() >= MAX_CONNECTIONS {
            tracing::debug!(%from, "ICE-TCP connection refused: {MAX_CONNECTIONS} already");
            return;
        }
        let _ = stream.set_nodelay(true);
        let (read_half, mut write_half) = stream.into_split();
        let (writer, mut frames) = mpsc::channel::<BytesMut>(WRITE_QUEUE);
        tokio::spawn(async move {
            while let Some(frame) = frames.recv().await {
                if write_half.write_all(&frame).await.is_err() {
                    return;
                }
            }
        });
        let reader = tokio::spawn(read_frames(read_half, from, self.events_tx.clone()));
        self.connections.insert(
            from,
            Connection {
                writer,
                accepted: Instant::now(),
                authenticated: false,
                reader,
            },
        );
    }

    /// A frame from `from` reached one of our connections.
    pub(super) fn authenticated(&mut self, from: SocketAddr) {
        if let Some(c) = self.connections.get_mut(&from) {
            c.authenticated = true;
        }
    }

    /// A frame from `from` reached none of our connections: a connection that never did is
    /// closed (whoever opened it has no credentials).
    pub(super) fn refused(&mut self, from: SocketAddr) {
        if self
            .connections
            .get(&from)
            .is_some_and(|c| !c.authenticated)
        {
            self.close(from);
        }
    }

    pub(super) fn close(&mut self, from: SocketAddr) {
        if let Some(c) = self.connections.remove(&from) {
            c.reader.abort();
            // Dropping the writer's channel ends the writer, which drops the socket.
        }
    }

    /// Closes the connections that were never authenticated within [`AUTH_TIMEOUT`].
    pub(super) fn expire(&mut self, now: Instant) {
        let stale: Vec<SocketAddr> = self
            .connections
            .iter()
            .filter(|(_, c)| !c.authenticated && now.duration_since(c.accepted) > AUTH_TIMEOUT)
            .map(|(a, _)| *a)
            .collect();
        for a in stale {
            self.close(a);
        }
    }

    /// Queues one datagram for the connection from `to`, framed.
    pub(super) fn send(&mut self, to: SocketAddr, data: &[u8], drops: &mut DropStats) {
        let Some(c) = self.connections.get(&to) else {
            drops.send_error += 1;
            return;
        };
        let Ok(len) = u16::try_from(data.len()) else {
            drops.send_error += 1;
            return;
        };
        let mut frame = BytesMut::with_capacity(2 + data.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(data);
        if c.writer.try_send(frame).is_err() {
            drops.socket_send_buffer += 1;
        }
    }
}

/// Reads RFC 4571 frames (a big-endian `u16` length, then that many bytes) and passes each to
/// the engine as a datagram from `from`.
async fn read_frames(
    mut stream: tokio::net::tcp::OwnedReadHalf,
    from: SocketAddr,
    to: mpsc::Sender<TcpEvent>,
) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        while buf.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
            if buf.len() < 2 + len {
                break;
            }
            buf.advance(2);
            let data = buf.split_to(len);
            let frame = Received {
                at: Instant::now(),
                from,
                transport: Transport::Tcp,
                data,
            };
            if to.send(TcpEvent::Frame(frame)).await.is_err() {
                return;
            }
        }
        buf.reserve(4096);
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = to.send(TcpEvent::Closed(from)).await;
}

fn bind_listener(
    ip: std::net::IpAddr,
    preferred: u16,
    (lo, hi): (u16, u16),
) -> std::io::Result<TcpListener> {
    use rand::Rng;
    let span = u32::from(hi - lo) + 1;
    let start = rand::rng().random_range(0..span);
    let candidates = std::iter::once(preferred)
        .filter(|p| (lo..=hi).contains(p))
        .chain((0..span.min(512)).map(|i| lo + ((start + i) % span) as u16));
    let mut last = None;
    for port in candidates {
        match std::net::TcpListener::bind((ip, port)) {
            Ok(l) => {
                l.set_nonblocking(true)?;
                return TcpListener::from_std(l);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no TCP port in RTC_TCP_PORTS")))
}
