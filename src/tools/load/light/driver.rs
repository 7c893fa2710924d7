//! The one task that drives every light client's peer connection: it reads their sockets,
//! runs their timers, sends the speakers' probes and counts what arrives.
//!
//! The loop waits on three things only: a command (a new connection, a trickled candidate,
//! start/stop sending, close), a socket that became readable (a set of readiness futures, so a
//! wake-up costs work only for the sockets that have data), and the earliest deadline of all
//! connections' timers and send ticks (one sleep, re-armed, not one timer per connection).
//! After any input it takes from that connection everything it has to give, as the worker's
//! engine does: datagrams to send, events, received RTP; then re-arms its timer.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::FuturesUnordered;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtp;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::{Shared, lock};
use crate::tools::load::probe::probe_payload;
use crate::tools::load::ticks::SendTicks;
use crate::worker::timer::rearm;

/// One probe every 20 ms, as an Opus sender of 20 ms frames.
const PACKET_INTERVAL: Duration = Duration::from_millis(20);
/// RTP timestamp units per packet (48 kHz × 20 ms).
const SAMPLES_PER_PACKET: u32 = 960;
/// Datagrams read from one socket per wake-up before the others get their turn.
const READ_BATCH: usize = 32;

/// A connection handed to the driver after its answer was applied.
pub(crate) struct NewPeer {
    pub(crate) key: u64,
    pub(crate) pc: RTCPeerConnection,
    pub(crate) socket: UdpSocket,
    /// The address in our host candidate; the ICE agent knows the socket by it.
    pub(crate) local: SocketAddr,
    pub(crate) shared: Arc<Mutex<Shared>>,
    pub(crate) latency_samples: usize,
    pub(crate) mic: Option<Mic>,
}

/// A speaker's microphone stream: one SSRC, continuous sequence numbers and timestamps.
pub(crate) struct Mic {
    ssrc: u32,
    payload_type: u8,
    /// The audio-level extension id of our offer (the answer echoes it).
    level_id: Option<u8>,
    seq: u16,
    ts: u32,
    sending: Option<Sending>,
}

impl Mic {
    pub(crate) fn new(ssrc: u32, payload_type: u8, level_id: Option<u8>) -> Mic {
        Mic {
            ssrc,
            payload_type,
            level_id,
            seq: rand::random(),
            ts: rand::random(),
            sending: None,
        }
    }
}

struct Sending {
    tag: String,
    dbov: u8,
    counter: u32,
    /// When the next probe is due.
    due: Instant,
}

enum Command {
    Add(Box<NewPeer>),
    Candidate(u64, RTCIceCandidateInit),
    StartSending(u64, String, u8),
    StopSending(u64),
    Close(u64, oneshot::Sender<()>),
}

/// The handle of a running driver task: cheap to clone; the task ends (closing whatever
/// connections are left) when the last handle is dropped.
#[derive(Clone)]
pub struct LightDriver {
    tx: mpsc::UnboundedSender<Command>,
    keys: Arc<AtomicU64>,
}

impl LightDriver {
    /// Starts the driver task on the current tokio runtime. Send ticks' lateness goes to
    /// `ticks`, if given.
    pub fn spawn(ticks: Option<Arc<SendTicks>>) -> LightDriver {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(Driver::new(ticks).run(rx));
        LightDriver {
            tx,
            keys: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(crate) fn next_key(&self) -> u64 {
        self.keys.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn add(&self, peer: NewPeer) -> anyhow::Result<()> {
        self.tx
            .send(Command::Add(Box::new(peer)))
            .map_err(|_| anyhow::anyhow!("the light client driver has stopped"))
    }

    pub(crate) fn add_remote_candidate(&self, key: u64, init: RTCIceCandidateInit) {
        let _ = self.tx.send(Command::Candidate(key, init));
    }

    pub(crate) fn start_sending(&self, key: u64, tag: &str, dbov: u8) {
        let _ = self
            .tx
            .send(Command::StartSending(key, tag.to_string(), dbov));
    }

    pub(crate) fn stop_sending(&self, key: u64) {
        let _ = self.tx.send(Command::StopSending(key));
    }

    /// Closes the connection (its close_notify is sent) and waits for the driver to have
    /// done so, at most a second.
    pub(crate) async fn close(&self, key: u64) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Close(key, tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), rx).await;
        }
    }
}

struct Peer {
    pc: RTCPeerConnection,
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    latency_samples: usize,
    mic: Option<Mic>,
    /// The entry of this connection in the timer set, if any.
    deadline: Option<Instant>,
    last_timeout: Instant,
    /// Stops this socket's readiness future when the connection closes.
    reader: AbortHandle,
}

type Readable = Pin<Box<dyn Future<Output = Result<u64, futures_util::future::Aborted>> + Send>>;

struct Driver {
    peers: HashMap<u64, Peer>,
    /// Connection timers and send ticks, earliest first.
    timers: BTreeSet<(Instant, u64)>,
    ticks_due: BTreeSet<(Instant, u64)>,
    readable: FuturesUnordered<Readable>,
    /// Candidates that came before their connection (should not happen: the server
    /// trickles nothing and sends its candidates in the answer).
    early: HashMap<u64, Vec<RTCIceCandidateInit>>,
    buf: Vec<u8>,
    send_ticks: Option<Arc<SendTicks>>,
}

fn readable(
    key: u64,
    socket: Arc<UdpSocket>,
    reg: futures_util::future::AbortRegistration,
) -> Readable {
    Box::pin(Abortable::new(
        async move {
            // An error (never seen on UDP) ends up as a read that finds nothing.
            let _ = socket.readable().await;
            key
        },
        reg,
    ))
}

impl Driver {
    fn new(send_ticks: Option<Arc<SendTicks>>) -> Driver {
        Driver {
            peers: HashMap::new(),
            timers: BTreeSet::new(),
            ticks_due: BTreeSet::new(),
            readable: FuturesUnordered::new(),
            early: HashMap::new(),
            buf: vec![0; 2048],
            send_ticks,
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
        let sleep = tokio::time::sleep_until(far());
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        loop {
            let next = match (self.timers.first(), self.ticks_due.first()) {
                (Some(a), Some(b)) => Some(a.0.min(b.0)),
                (a, b) => a.or(b).map(|x| x.0),
            };
            if next != armed {
                armed = next;
                sleep
                    .as_mut()
                    .reset(next.map_or_else(far, tokio::time::Instant::from_std));
            }
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
                Some(ready) = self.readable.next(), if !self.readable.is_empty() => {
                    if let Ok(key) = ready {
                        self.read(key);
                    }
                }
                _ = &mut sleep, if armed.is_some() => {}
            }
            self.due(Instant::now());
        }
        let keys: Vec<u64> = self.peers.keys().copied().collect();
        for key in keys {
            self.close(key);
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Add(new) => self.add(*new),
            Command::Candidate(key, init) => match self.peers.get_mut(&key) {
                Some(peer) => {
                    let _ = peer.pc.add_remote_candidate(init);
                    self.drive(key);
                }
                None => self.early.entry(key).or_default().push(init),
            },
            Command::StartSending(key, tag, dbov) => {
                let now = Instant::now();
                if let Some(mic) = self.peers.get_mut(&key).and_then(|p| p.mic.as_mut()) {
                    if let Some(old) = mic.sending.take() {
                        self.ticks_due.remove(&(old.due, key));
                    }
                    mic.sending = Some(Sending {
                        tag,
                        dbov,
                        counter: 0,
                        due: now,
                    });
                    self.ticks_due.insert((now, key));
                }
            }
            Command::StopSending(key) => {
                if let Some(s) = self
                    .peers
                    .get_mut(&key)
                    .and_then(|p| p.mic.as_mut())
                    .and_then(|m| m.sending.take())
                {
                    self.ticks_due.remove(&(s.due, key));
                }
            }
            Command::Close(key, done) => {
                self.close(key);
                let _ = done.send(());
            }
        }
    }

    fn add(&mut self, new: NewPeer) {
        let key = new.key;
        let socket = Arc::new(new.socket);
        let (reader, reg) = AbortHandle::new_pair();
        self.readable.push(readable(key, socket.clone(), reg));
        let mut peer = Peer {
            pc: new.pc,
            socket,
            local: new.local,
            shared: new.shared,
            latency_samples: new.latency_samples,
            mic: new.mic,
            deadline: None,
            last_timeout: Instant::now(),
            reader,
        };
        for init in self.early.remove(&key).unwrap_or_default() {
            let _ = peer.pc.add_remote_candidate(init);
        }
        // Start the ICE checks now rather than at the first timer.
        let _ = peer.pc.handle_timeout(Instant::now());
        self.peers.insert(key, peer);
        self.drive(key);
    }

    fn close(&mut self, key: u64) {
        let Some(mut peer) = self.peers.remove(&key) else {
            return;
        };
        peer.reader.abort();
        if let Some(d) = peer.deadline.take() {
            self.timers.remove(&(d, key));
        }
        if let Some(s) = peer.mic.as_mut().and_then(|m| m.sending.take()) {
            self.ticks_due.remove(&(s.due, key));
        }
        let _ = peer.pc.close();
        flush(&mut peer);
    }

    /// Reads what the socket has (a batch), hands it to the connection, takes what follows.
    fn read(&mut self, key: u64) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        for _ in 0..READ_BATCH {
            match peer.socket.try_recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    let msg = TaggedBytesMut {
                        now: Instant::now(),
                        transport: TransportContext {
                            local_addr: peer.local,
                            peer_addr: from,
                            ecn: None,
                            transport_protocol: TransportProtocol::UDP,
                        },
                        message: BytesMut::from(&self.buf[..n]),
                    };
                    let _ = peer.pc.handle_read(msg);
                }
                // WouldBlock (drained), or an ICMP error queued on the socket: either way
                // there is nothing more to read now.
                Err(_) => break,
            }
        }
        let (reader, reg) = AbortHandle::new_pair();
        peer.reader = reader;
        self.readable.push(readable(key, peer.socket.clone(), reg));
        self.drive(key);
    }

    /// Everything that is due: connection timers, then send ticks.
    fn due(&mut self, now: Instant) {
        while let Some(&(t, key)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.deadline = None;
                peer.last_timeout = now;
                let _ = peer.pc.handle_timeout(now);
                self.drive(key);
            }
        }
        while let Some(&(t, key)) = self.ticks_due.first() {
            if t > now {
                break;
            }
            self.ticks_due.pop_first();
            if let Some(ticks) = &self.send_ticks {
                ticks.record(now.saturating_duration_since(t));
            }
            let Some(peer) = self.peers.get_mut(&key) else {
                continue;
            };
            if let Some(next) = send_probe(peer, now) {
                self.ticks_due.insert((next, key));
            }
            self.drive(key);
        }
    }

    /// Takes what the connection has after an input: datagrams to send, events, received
    /// RTP (counted); re-arms its timer.
    fn drive(&mut self, key: u64) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        flush(peer);
        let mut failed = false;
        let mut ice_connected = false;
        while let Some(ev) = peer.pc.poll_event() {
            let mut s = lock(&peer.shared);
            match ev {
                RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                    RTCIceConnectionState::Connected,
                ) => {
                    s.ice_connected_at.get_or_insert(Instant::now());
                    ice_connected = true;
                }
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => match state {
                    RTCPeerConnectionState::Connected => {
                        s.connected_at.get_or_insert(Instant::now());
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        s.failed = true;
                        failed = true;
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        if ice_connected {
            // rtc starts the DTLS handshake (we are the client) when ICE selects the pair, but
            // leaves the first flight in the DTLS endpoint until the next `handle_timeout`:
            // the next ICE timer, ~200 ms on. Without this kick every join would wait for it
            // (the full client's "ClientHello ~190 ms late").
            let _ = peer.pc.handle_timeout(Instant::now());
            flush(peer);
        }
        let mut got = false;
        let mut shared = None;
        while let Some(TaggedRTCMessage { now, message }) = peer.pc.poll_read() {
            let RTCMessage::RtpPacket(_, pkt) = message else {
                continue;
            };
            // One lock for the whole batch.
            let s = shared.get_or_insert_with(|| lock(&peer.shared));
            s.packets += 1;
            s.first_packet_at.get_or_insert(now);
            s.streams.entry(pkt.header.ssrc).or_default().record(
                &pkt.header,
                &pkt.payload,
                now,
                peer.latency_samples,
            );
            got = true;
        }
        drop(shared);
        if got {
            // Receiving may have queued reports or acknowledgements.
            flush(peer);
        }
        if failed {
            self.close(key);
            return;
        }
        let polled = peer.pc.poll_timeout();
        rearm(
            &mut self.timers,
            key,
            &mut peer.deadline,
            peer.last_timeout,
            polled,
            Instant::now(),
        );
    }
}

/// Writes the speaker's next probe into its connection; returns when the one after is due
/// (none if it stopped sending). A tick that ran late is still sent (the send ticks record
/// how late), as the full client's interval bursts to catch up.
fn send_probe(peer: &mut Peer, now: Instant) -> Option<Instant> {
    let mic = peer.mic.as_mut()?;
    let s = mic.sending.as_mut()?;
    let mut header = rtp::header::Header {
        version: 2,
        payload_type: mic.payload_type,
        sequence_number: mic.seq,
        timestamp: mic.ts,
        ssrc: mic.ssrc,
        marker: s.counter == 0,
        ..Default::default()
    };
    if let Some(id) = mic.level_id {
        // RFC 6464: the voice bit and the level in −dBov.
        let _ = header.set_extension(id, Bytes::copy_from_slice(&[0x80 | (s.dbov & 0x7f)]));
    }
    let packet = rtp::Packet {
        header,
        payload: probe_payload(&s.tag, s.counter),
    };
    mic.seq = mic.seq.wrapping_add(1);
    mic.ts = mic.ts.wrapping_add(SAMPLES_PER_PACKET);
    s.counter = s.counter.wrapping_add(1);
    s.due += PACKET_INTERVAL;
    let due = s.due;
    // A packet before the connection is up is refused, as the full client's write is.
    let _ = peer.pc.handle_write(TaggedRTCMessage {
        now,
        message: RTCMessage::RtpPacket(String::new(), packet),
    });
    Some(due)
}

/// Sends every datagram the connection has queued. A full socket buffer drops the datagram,
/// as a real client's would.
fn flush(peer: &mut Peer) {
    while let Some(msg) = peer.pc.poll_write() {
        let _ = peer
            .socket
            .try_send_to(&msg.message, msg.transport.peer_addr);
    }
}
