//! The worker's one UDP port: every peer connection of the conversation sends and receives on
//! it (the [`super::demux`] says which connection a datagram is for), so a host needs one port
//! per active conversation from `RTC_PORTS`, not one per client, and the engine has one socket
//! to wait on instead of a reader task per client.
//!
//! Datagrams come in by the batch (`recvmmsg`, up to [`RECV_BATCH`] per call) and go out by
//! the batch: what the engine queued while handling one input (a speaker's packet's copies to
//! all its listeners, say) leaves in one `sendmmsg`, each copy with its own destination.
//! The socket is non-blocking: a send the kernel will not take is dropped and counted, as UDP
//! would drop it, so a slow listener never holds up the others.
//!
//! Every datagram lost here is counted by reason ([`DropStats`]): the kernel's own drops for
//! a full receive buffer come with each batch (`SO_RXQ_OVFL`), sends refused for a full send
//! buffer or an error are counted as they happen. The buffer sizes are `RTC_RECV_BUFFER_BYTES`
//! and `RTC_SEND_BUFFER_BYTES`; past `net.core.rmem_max`/`wmem_max` the kernel grants them
//! only to a process with `CAP_NET_ADMIN` (`SO_RCVBUFFORCE`), else it caps them, and the
//! worker logs what it got.

use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use bytes::BytesMut;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, getsockopt, recvmmsg, sendmmsg,
    setsockopt, sockopt,
};
use rand::Rng;
use tokio::io::Interest;

use super::peer::NegotiationError;
use crate::wire::ipc::MediaConfig;
use crate::wire::signal::ErrorCode;
use crate::wire::stats::DropStats;

/// Most datagrams one `recvmmsg` takes.
pub(super) const RECV_BATCH: usize = 32;
/// Most datagrams one `sendmmsg` hands the kernel (Linux takes up to 1 024 per call); a
/// larger batch goes out in several calls.
const SEND_BATCH: usize = 512;
/// Largest datagram read; the rest of a longer one is cut (nothing legitimate is longer:
/// clients keep under the path MTU).
pub(super) const MAX_DATAGRAM: usize = 2048;

/// Which of the worker's two ports a datagram came in on or goes out of: the UDP port, or
/// (ICE-TCP, [`super::tcp`]) a TCP connection to the TCP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Transport {
    Udp,
    Tcp,
}

/// A datagram read from the port (or a frame from a TCP connection).
pub(super) struct Received {
    /// When it was read: forwarding delay is measured from here.
    pub at: Instant,
    pub from: SocketAddr,
    pub transport: Transport,
    pub data: BytesMut,
}

/// A datagram a connection wants sent.
pub(super) struct Transmit {
    pub to: SocketAddr,
    pub transport: Transport,
    pub data: BytesMut,
}

pub(super) struct Port {
    socket: tokio::net::UdpSocket,
    /// The address clients are told to send to (our one host candidate).
    pub local: SocketAddr,
    recv_headers: MultiHeaders<SockaddrStorage>,
    recv_buffers: Vec<Vec<u8>>,
    send_headers: MultiHeaders<SockaddrStorage>,
    /// The kernel's count of datagrams dropped for a full receive buffer, as last reported.
    kernel_drops: u32,
    /// `sendmmsg` calls made and datagrams they took: how well sends are batched.
    pub send_calls: u64,
    pub datagrams_sent: u64,
}

impl Port {
    /// Binds a free port of `RTC_PORTS` (random start, so concurrent workers rarely collide;
    /// a taken port is simply skipped), sized and set up for batched I/O. Must run inside a
    /// tokio runtime.
    pub(super) fn bind(media: &MediaConfig) -> Result<Port, NegotiationError> {
        let socket = bind_socket(media)?;
        let internal =
            |e: std::io::Error| NegotiationError::new(ErrorCode::Internal, format!("socket: {e}"));
        socket.set_nonblocking(true).map_err(internal)?;
        size_buffers(&socket, media);
        // Each batch then says how many datagrams the kernel dropped for want of room.
        if let Err(e) = setsockopt(&socket, sockopt::RxqOvfl, &1) {
            tracing::warn!("SO_RXQ_OVFL: {e}; the receive buffer's drops are not counted");
        }
        let port = socket.local_addr().map_err(internal)?.port();
        let local = SocketAddr::new(announced_ip(media), port);
        let socket = tokio::net::UdpSocket::from_std(socket).map_err(internal)?;
        tracing::info!(%local, "the conversation's UDP port");
        let cmsg = nix::cmsg_space!(u32);
        Ok(Port {
            socket,
            local,
            recv_headers: MultiHeaders::preallocate(RECV_BATCH, Some(cmsg)),
            recv_buffers: vec![vec![0u8; MAX_DATAGRAM]; RECV_BATCH],
            send_headers: MultiHeaders::preallocate(SEND_BATCH, None),
            kernel_drops: 0,
            send_calls: 0,
            datagrams_sent: 0,
        })
    }

    /// Waits until a datagram can be read.
    pub(super) async fn readable(&self) {
        // An error here (never seen on UDP) is met again by the read that follows.
        let _ = self.socket.readable().await;
    }

    /// Reads what is waiting, up to [`RECV_BATCH`] datagrams, into `into`; returns how many
    /// (0 when nothing was waiting).
    pub(super) fn recv(&mut self, into: &mut Vec<Received>, drops: &mut DropStats) -> usize {
        let fd = self.socket.as_raw_fd();
        let (headers, buffers) = (&mut self.recv_headers, &mut self.recv_buffers);
        let mut kernel_drops = None;
        let read = self.socket.try_io(Interest::READABLE, || {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> = buffers
                .iter_mut()
                .map(|b| [IoSliceMut::new(&mut b[..])])
                .collect();
            let results = recvmmsg(fd, headers, slices.iter_mut(), MsgFlags::empty(), None)
                .map_err(std::io::Error::from)?;
            let at = Instant::now();
            let mut n = 0;
            for msg in results {
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::RxqOvfl(d) = c {
                            kernel_drops = Some(d);
                        }
                    }
                }
                let Some(from) = msg.address.as_ref().and_then(socket_addr) else {
                    continue;
                };
                let mut data = BytesMut::with_capacity(msg.bytes);
                for iov in msg.iovs() {
                    data.extend_from_slice(iov);
                }
                into.push(Received {
                    at,
                    from,
                    transport: Transport::Udp,
                    data,
                });
                n += 1;
            }
            Ok(n)
        });
        if let Some(d) = kernel_drops {
            // The socket's total since SO_RXQ_OVFL was set; it wraps at 2^32.
            drops.socket_receive_buffer += u64::from(d.wrapping_sub(self.kernel_drops));
            self.kernel_drops = d;
        }
        match read {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                // Not expected on an unconnected UDP socket (an ICMP error at most).
                tracing::debug!("port read: {e}");
                0
            }
        }
    }

    /// Sends `out` (and empties it), [`SEND_BATCH`] datagrams per system call. Every entry
    /// must be [`Transport::Udp`].
    pub(super) fn send(&mut self, out: &mut Vec<Transmit>, drops: &mut DropStats) {
        let counts = send_batch(
            self.raw_fd(),
            &mut self.send_headers,
            SEND_BATCH,
            out,
            drops,
        );
        self.count(counts);
    }

    /// The socket, for sends from the fan-out's threads ([`super::fanout`]): a UDP socket
    /// takes `sendmmsg` from several threads at once. Valid while the port is.
    pub(super) fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Adds sends made outside [`Port::send`] to its counters.
    pub(super) fn count(&mut self, counts: SendCounts) {
        self.send_calls += counts.calls;
        self.datagrams_sent += counts.datagrams;
    }
}

/// `sendmmsg` calls made and the datagrams they took.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SendCounts {
    pub calls: u64,
    pub datagrams: u64,
}

/// Sends `out` (and empties it) from a thread that has no headers of its own (the fan-out's
/// threads): headers for as many datagrams as `out` holds, [`SEND_BATCH`] at most per call.
pub(super) fn send_all(fd: RawFd, out: &mut Vec<Transmit>, drops: &mut DropStats) -> SendCounts {
    let batch = out.len().clamp(1, SEND_BATCH);
    send_batch(
        fd,
        &mut MultiHeaders::preallocate(batch, None),
        batch,
        out,
        drops,
    )
}

/// Sends `out` (and empties it) on the UDP socket `fd`, `batch` datagrams per system call
/// (`headers` has room for that many). Every entry must be [`Transport::Udp`]. The socket is
/// non-blocking: what the kernel will not take is dropped and counted.
fn send_batch(
    fd: RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    batch: usize,
    out: &mut Vec<Transmit>,
    drops: &mut DropStats,
) -> SendCounts {
    let mut counts = SendCounts::default();
    let mut next = 0;
    while next < out.len() {
        let chunk = &out[next..out.len().min(next + batch)];
        let addrs: Vec<Option<SockaddrStorage>> = chunk
            .iter()
            .map(|t| Some(SockaddrStorage::from(t.to)))
            .collect();
        let slices: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|t| [IoSlice::new(&t.data)]).collect();
        let no_cmsgs: [nix::sys::socket::ControlMessage<'_>; 0] = [];
        counts.calls += 1;
        match sendmmsg(
            fd,
            headers,
            slices.iter(),
            &addrs,
            no_cmsgs,
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(results) => {
                let sent = results.count();
                if sent == 0 {
                    // Nothing taken and no error: count the rest as refused rather than spin.
                    drops.socket_send_buffer += (out.len() - next) as u64;
                    break;
                }
                next += sent;
                counts.datagrams += sent as u64;
            }
            Err(nix::errno::Errno::EAGAIN) => {
                // The send buffer is full: what is left of this batch is dropped.
                drops.socket_send_buffer += (out.len() - next) as u64;
                break;
            }
            Err(e) => {
                // The first datagram of the chunk failed (say, an address this socket cannot
                // reach); the others may not.
                tracing::trace!(to = %out[next].to, "send: {e}");
                drops.send_error += 1;
                next += 1;
            }
        }
    }
    out.clear();
    counts
}

fn socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
}

/// Sets the socket's buffer sizes, forcing them past the system's caps where the process may
/// (`CAP_NET_ADMIN`), and says so when the kernel granted less than asked.
fn size_buffers(socket: &std::net::UdpSocket, media: &MediaConfig) {
    size_buffer(
        socket,
        media.socket_recv_buffer,
        (sockopt::RcvBufForce, sockopt::RcvBuf),
        ("RTC_RECV_BUFFER_BYTES", "rmem_max"),
    );
    size_buffer(
        socket,
        media.socket_send_buffer,
        (sockopt::SndBufForce, sockopt::SndBuf),
        ("RTC_SEND_BUFFER_BYTES", "wmem_max"),
    );
}

/// One buffer: `forced` past the cap, else `normal` (capped); `names` are the setting and
/// the sysctl that caps it, for the warning.
fn size_buffer<F, N>(
    socket: &std::net::UdpSocket,
    want: u32,
    (forced, normal): (F, N),
    (setting, sysctl): (&str, &str),
) where
    F: nix::sys::socket::SetSockOpt<Val = usize>,
    N: nix::sys::socket::SetSockOpt<Val = usize> + nix::sys::socket::GetSockOpt<Val = usize> + Copy,
{
    let want = want as usize;
    if want == 0 {
        return;
    }
    if setsockopt(socket, forced, &want).is_err() {
        let _ = setsockopt(socket, normal, &want);
    }
    // Linux reports twice what it was asked (it keeps room for its own bookkeeping).
    if let Ok(got) = getsockopt(socket, normal)
        && got / 2 < want
    {
        tracing::warn!(
            "{setting}={want}, but the kernel granted {}: raise net.core.{sysctl} or give the \
             service CAP_NET_ADMIN",
            got / 2
        );
    }
}

/// A UDP socket on a free port of `RTC_PORTS`.
fn bind_socket(media: &MediaConfig) -> Result<std::net::UdpSocket, NegotiationError> {
    let ip = media.bind_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let (lo, hi) = media.ports;
    let span = (hi - lo) as u32 + 1;
    let start = rand::rng().random_range(0..span);
    // The last bind error is the one reported: "no free port" only when ports were in use,
    // never for EMFILE (out of descriptors) or an RTC_BIND_IP the host does not have.
    let mut last: Option<std::io::Error> = None;
    for port in (0..span.min(512)).map(|i| lo + ((start + i) % span) as u16) {
        match std::net::UdpSocket::bind((ip, port)) {
            Ok(s) => return Ok(s),
            Err(e) => {
                let fatal = matches!(
                    e.raw_os_error(),
                    Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::EADDRNOTAVAIL)
                );
                last = Some(e);
                if fatal {
                    break;
                }
            }
        }
    }
    let message = match last {
        Some(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            "no free UDP port in RTC_PORTS".to_string()
        }
        Some(e)
            if matches!(
                e.raw_os_error(),
                Some(nix::libc::EMFILE | nix::libc::ENFILE)
            ) =>
        {
            format!("cannot open a UDP socket: too many open files ({e}; see RLIMIT_NOFILE)")
        }
        Some(e) => format!("cannot bind a UDP socket on {ip} in RTC_PORTS: {e}"),
        None => "no UDP port in RTC_PORTS".to_string(),
    };
    tracing::error!("{message}");
    Err(NegotiationError::new(ErrorCode::Unavailable, message))
}

/// The address clients are told to send to: `PUBLIC_IP` if set, else `RTC_BIND_IP`, else the
/// host's first non-loopback IPv4 address (or 127.0.0.1 on a host with none). A multi-homed
/// host that must announce a particular interface sets `RTC_BIND_IP`.
pub(super) fn announced_ip(media: &MediaConfig) -> IpAddr {
    if let Some(ip) = media
        .public_ip
        .or(media.bind_ip.filter(|ip| !ip.is_unspecified()))
    {
        return ip;
    }
    rtc::shared::ifaces::ifaces()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.addr.map(|a| a.ip()))
        .find(|ip| ip.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified() && !is_link_local(ip))
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn is_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.is_link_local())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(bind_ip: &str, ports: (u16, u16)) -> MediaConfig {
        MediaConfig::for_tests(bind_ip, ports)
    }

    /// A batch of datagrams to 300 different destinations leaves in one system call, and
    /// every one arrives where it was addressed.
    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_to_many_destinations_is_one_system_call() {
        let mut port = Port::bind(&media("127.0.0.1", (20_000, 29_999))).expect("a port");
        let listeners: Vec<std::net::UdpSocket> = (0..300)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("a listener"))
            .collect();
        let mut out: Vec<Transmit> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| Transmit {
                to: l.local_addr().expect("address"),
                transport: Transport::Udp,
                data: BytesMut::from(&(i as u32).to_be_bytes()[..]),
            })
            .collect();
        let mut drops = DropStats::default();
        port.send(&mut out, &mut drops);
        assert_eq!((port.send_calls, port.datagrams_sent), (1, 300));
        assert!(out.is_empty());
        assert_eq!(drops.total(), 0);
        for (i, l) in listeners.iter().enumerate() {
            l.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .expect("timeout");
            let mut buf = [0u8; 16];
            let (n, from) = l.recv_from(&mut buf).expect("its datagram");
            assert_eq!(&buf[..n], &(i as u32).to_be_bytes());
            assert_eq!(from.port(), port.local.port());
        }
    }

    /// A burst waiting at the port is read in batches of [`RECV_BATCH`], every datagram with
    /// its source.
    #[tokio::test(flavor = "current_thread")]
    async fn waiting_datagrams_are_read_in_batches() {
        let mut port = Port::bind(&media("127.0.0.1", (20_000, 29_999))).expect("a port");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("a sender");
        for i in 0..(RECV_BATCH as u32 + 5) {
            sender.send_to(&i.to_be_bytes(), port.local).expect("send");
        }
        let mut got = Vec::new();
        let mut drops = DropStats::default();
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        let mut reads = Vec::new();
        while got.len() < RECV_BATCH + 5 && Instant::now() < deadline {
            port.readable().await;
            reads.push(port.recv(&mut got, &mut drops));
        }
        assert_eq!(reads.first(), Some(&RECV_BATCH), "{reads:?}");
        assert_eq!(got.len(), RECV_BATCH + 5);
        for (i, d) in got.iter().enumerate() {
            assert_eq!(&d.data[..], &(i as u32).to_be_bytes());
            assert_eq!(d.from, sender.local_addr().expect("address"));
        }
    }

    /// "No free port" only when the ports are taken; any other bind failure says what it is
    /// (an `RTC_BIND_IP` the host lacks here; EMFILE goes the same way), so an operator is
    /// not sent to widen `RTC_PORTS` for nothing.
    #[test]
    fn a_failed_bind_says_why() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("a socket");
        let port = taken.local_addr().expect("its address").port();
        let e = bind_socket(&media("127.0.0.1", (port, port))).expect_err("port taken");
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert_eq!(e.message, "no free UDP port in RTC_PORTS");

        // 192.0.2.1 (TEST-NET-1) is on no interface of any host.
        let e = bind_socket(&media("192.0.2.1", (50_000, 50_009))).expect_err("not our address");
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(
            e.message.contains("192.0.2.1") && !e.message.contains("no free"),
            "{}",
            e.message
        );
    }
}
