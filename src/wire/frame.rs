//! Framing of the front ↔ worker channel: `u32` big-endian length of what follows, `u16`
//! big-endian protocol version, then the postcard-encoded message.
//!
//! The version is in every frame (not just a handshake) so a worker from another build is
//! refused at its first word. Anything read that does not decode, is too large, or has the
//! wrong version is a [`FrameError`]: front treats the worker as broken and kills it, it never
//! guesses.
//!
//! Writing is different: a message too large to encode ([`FrameError::TooLarge`] from
//! [`encode`] or [`write_frame`]) is never written at all, so the channel is intact and the
//! message is refused for the one session it belongs to (front answers that client
//! `too-large`; a worker turns it into a `Rejected` for that session). Only a failing socket
//! ends the channel. Signalling frames are capped well below [`MAX_FRAME`]
//! ([`MAX_SIGNAL_FRAME`], checked when the configuration is read), so this stays the rare
//! case of a message that grows on its way (JSON escaping of a trickled candidate).

use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::ipc::PROTOCOL_VERSION;

/// SDPs are a few KiB; a frame near this size is already a bug.
pub const MAX_FRAME: usize = 1 << 20;

/// The largest signalling frame (`MAX_FRAME_BYTES`) the configuration accepts: a quarter of
/// [`MAX_FRAME`]. What a client sends crosses to the worker inside one IPC frame with its
/// identity and session, and what comes back (the answer, `slots` events) repeats parts of
/// it, so the client's limit must stay well under the channel's.
pub const MAX_SIGNAL_FRAME: usize = MAX_FRAME / 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
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
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; 6];
    buf[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    let mut buf = postcard::to_extend(msg, buf)?;
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Decodes the body of one frame (what follows the length prefix).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let Some((version, message)) = body.split_first_chunk::<2>() else {
        return Err(FrameError::Decode(
            postcard::Error::DeserializeUnexpectedEnd,
        ));
    };
    let version = u16::from_be_bytes(*version);
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version(version));
    }
    Ok(postcard::from_bytes(message)?)
}

/// Writes one message. `Err(TooLarge)` means nothing was written (the message is encoded
/// before the first byte goes out): the channel can go on, without that message. Any other
/// error is the socket's.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    let frame = encode(msg)?;
    w.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame; `Err(Closed)` on a clean end of stream between frames. Not cancel-safe:
/// run it in a task of its own, never as a `select!` branch.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    decode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::identity::Identity;
    use crate::wire::ids::SessionId;
    use crate::wire::ipc::{CloseReason, MediaConfig, ToFront, ToWorker};
    use crate::wire::signal::ErrorCode;

    #[test]
    fn round_trip() {
        let msgs = vec![
            ToWorker::Init {
                media: MediaConfig {
                    bind_ip: None,
                    ports: (1, 2),
                    tcp_ports: None,
                    public_ip: None,
                    max_slots: 3,
                    ice_disconnected_ms: 1,
                    ice_failed_ms: 2,
                    member_packets_per_s: 3,
                    member_bytes_per_s: 4,
                    first_connect_ms: 5,
                    socket_recv_buffer: 6,
                    socket_send_buffer: 7,
                    fanout_threads: 2,
                    red_distance: 1,
                },
                bites: None,
                orphan_grace_ms: 60_000,
            },
            ToWorker::Offer {
                session: SessionId(7),
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
        // The error code and the close reason cross as enums, not strings parsed back.
        for m in [
            ToFront::Rejected {
                session: SessionId(1),
                code: ErrorCode::Unavailable,
                message: "no port".into(),
            },
            ToFront::Closed {
                session: SessionId(2),
                reason: CloseReason::ByClient,
            },
        ] {
            let f = encode(&m).unwrap();
            assert_eq!(decode::<ToFront>(&f[4..]).unwrap(), m);
        }
    }

    #[test]
    fn wrong_version_and_garbage_are_errors() {
        let mut f = encode(&ToFront::Ready { pid: 1 }).unwrap();
        f[5] = 99;
        assert!(matches!(
            decode::<ToFront>(&f[4..]),
            Err(FrameError::Version(_))
        ));
        assert!(decode::<ToFront>(&[0, PROTOCOL_VERSION as u8, 0xff, 0xff, 0xff]).is_err());
        assert!(decode::<ToFront>(&[]).is_err());
    }

    #[tokio::test]
    async fn a_message_too_large_is_refused_and_nothing_is_written() {
        let big = ToFront::Answer {
            session: SessionId(1),
            sdp: "x".repeat(MAX_FRAME),
        };
        assert!(matches!(encode(&big), Err(FrameError::TooLarge(n)) if n > MAX_FRAME));
        let mut out = Vec::new();
        assert!(matches!(
            write_frame(&mut out, &big).await,
            Err(FrameError::TooLarge(_))
        ));
        assert!(
            out.is_empty(),
            "nothing of a refused message reaches the channel"
        );
        // The channel goes on: the next message is whole and readable.
        write_frame(&mut out, &ToFront::Ready { pid: 9 })
            .await
            .unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            read_frame::<_, ToFront>(&mut out.as_slice(), &mut buf)
                .await
                .unwrap(),
            ToFront::Ready { pid: 9 }
        );
        // The largest frame just fits.
        let fits = ToWorker::Ice {
            session: SessionId(1),
            candidate: String::new(),
        };
        let overhead = encode(&fits).unwrap().len() - 4;
        // A string's length prefix grows with it (postcard varint: 3 bytes up to 2^21).
        let fits = ToWorker::Ice {
            session: SessionId(1),
            candidate: "c".repeat(MAX_FRAME - overhead - 2),
        };
        assert_eq!(encode(&fits).unwrap().len() - 4, MAX_FRAME);
        const { assert!(MAX_SIGNAL_FRAME * 4 <= MAX_FRAME) };
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
            Err(FrameError::TooLarge(_))
        ));
    }
}
