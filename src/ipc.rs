//! The front ↔ worker channel: a small, versioned message set over one Unix stream socket per
//! worker (mediasoup's worker/channel split).
//!
//! Frame: `u32` big-endian length of what follows, `u16` big-endian protocol version, then the
//! postcard-encoded message. The version is in every frame (not just a handshake) so a worker
//! from another build is refused at its first word. Anything that does not decode, is too
//! large, or has the wrong version is an [`IpcError`]: front treats the worker as broken and
//! kills it, it never guesses.
//!
//! The socket lives in a directory only the service user can enter (0700), is itself 0600,
//! and front checks the peer credentials of the connection (same uid, and the pid of the
//! process it spawned) before it trusts a byte.

use std::path::Path;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::MediaConfig;
use crate::identity::Identity;

pub const PROTOCOL_VERSION: u16 = 2;
/// SDPs are a few KiB; a frame near this size is already a bug.
pub const MAX_FRAME: usize = 1 << 20;

/// Front's handle for one peer connection in a worker. A new offer from the same client gets
/// a new id, so a late message about the old connection can never be mistaken for the new.
pub type SessionId = u64;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// First message: which conversation this worker owns and how to run media.
    Init {
        conversation: String,
        media: MediaConfig,
    },
    /// Build a peer connection for this offer and answer it.
    Offer {
        session: SessionId,
        identity: Identity,
        sdp: String,
    },
    /// A trickled remote candidate, JSON `RTCIceCandidateInit`.
    Ice {
        session: SessionId,
        candidate: String,
    },
    /// The session left the conversation: close its peer connection.
    Leave { session: SessionId },
    /// Close everything and exit.
    Shutdown,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToFront {
    /// The worker is up; sent once, after `Init`.
    Ready {
        pid: u32,
    },
    Answer {
        session: SessionId,
        sdp: String,
    },
    /// A JSON event for the client (`slots`, `speakers`), passed through verbatim.
    Event {
        session: SessionId,
        json: String,
    },
    /// The offer could not be answered; `code` is an `error::` code.
    Rejected {
        session: SessionId,
        code: String,
        message: String,
    },
    /// The peer connection ended (closed, failed, or left); `reason` is
    /// [`CLOSED_BY_CLIENT`] when the client closed it itself.
    Closed {
        session: SessionId,
        reason: String,
    },
    /// Counters for metrics and `ctl`, sent every few seconds.
    Stats(WorkerStats),
}

/// The `Closed` reason when the client closed its peer connection (DTLS close_notify).
pub const CLOSED_BY_CLIENT: &str = "closed-by-client";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    pub peers: u32,
    pub packets_in: u64,
    pub packets_forwarded: u64,
    pub bytes_forwarded: u64,
    /// Since the worker started.
    pub forward_delay: crate::metrics::DelayHistogram,
}

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("channel closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("protocol version {0}, expected {PROTOCOL_VERSION}")]
    Version(u16),
    #[error("undecodable message: {0}")]
    Decode(#[from] postcard::Error),
}

/// Encodes one message as a complete frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, IpcError> {
    let mut buf = vec![0u8; 6];
    buf[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    let mut buf = postcard::to_extend(msg, buf)?;
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(IpcError::TooLarge(len));
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Decodes the body of one frame (what follows the length prefix).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, IpcError> {
    if body.len() < 2 {
        return Err(IpcError::Decode(postcard::Error::DeserializeUnexpectedEnd));
    }
    let version = u16::from_be_bytes([body[0], body[1]]);
    if version != PROTOCOL_VERSION {
        return Err(IpcError::Version(version));
    }
    Ok(postcard::from_bytes(&body[2..])?)
}

pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), IpcError> {
    let frame = encode(msg)?;
    w.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame; `Err(Closed)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<T, IpcError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(IpcError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(IpcError::TooLarge(len));
    }
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    decode(buf)
}

/// Creates `dir` (and parents) with mode 0700, or tightens it to 0700 if it exists.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Binds a listening socket at `path` with mode 0600 (replacing a stale one).
pub fn bind_private(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts a connection only from our own uid and, when given, from that pid.
pub fn check_peer(stream: &tokio::net::UnixStream, pid: Option<u32>) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("peer credentials: {e}"))?;
    let me = nix::unistd::getuid().as_raw();
    if cred.uid() != me {
        return Err(format!("peer uid {} is not ours ({me})", cred.uid()));
    }
    if let Some(pid) = pid {
        if cred.pid() != Some(pid as i32) {
            return Err(format!(
                "peer pid {:?} is not the spawned worker {pid}",
                cred.pid()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let msgs = vec![
            ToWorker::Init {
                conversation: "c".into(),
                media: MediaConfig {
                    bind_ip: None,
                    ports: (1, 2),
                    public_ip: None,
                    max_slots: 3,
                    ice_disconnected_ms: 1,
                    ice_failed_ms: 2,
                },
            },
            ToWorker::Offer {
                session: 7,
                identity: Identity {
                    userid: "u".into(),
                    clientid: "c".into(),
                },
                sdp: "v=0\r\n".into(),
            },
            ToWorker::Shutdown,
        ];
        for m in msgs {
            let f = encode(&m).unwrap();
            assert_eq!(
                u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
                f.len() - 4
            );
            assert_eq!(decode::<ToWorker>(&f[4..]).unwrap(), m);
        }
    }

    #[test]
    fn wrong_version_and_garbage_are_errors() {
        let mut f = encode(&ToFront::Ready { pid: 1 }).unwrap();
        f[5] = 99;
        assert!(matches!(
            decode::<ToFront>(&f[4..]),
            Err(IpcError::Version(_))
        ));
        assert!(decode::<ToFront>(&[0, 1, 0xff, 0xff, 0xff]).is_err());
        assert!(decode::<ToFront>(&[]).is_err());
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_reading_it() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let _ = a.write_all(&(u32::MAX).to_be_bytes()).await;
        });
        let mut buf = Vec::new();
        assert!(matches!(
            read_frame::<_, ToFront>(&mut b, &mut buf).await,
            Err(IpcError::TooLarge(_))
        ));
    }
}
