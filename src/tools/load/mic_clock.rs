//! The test client's microphone numbering: one SSRC, continuous sequence numbers, and a
//! timestamp that runs on with the wall clock through pauses.

use std::time::Instant;

use crate::media::red::RedEncoder;

/// The microphone stream's RTP numbering, shared by `Client::start_sending` and
/// `Client::speak` so that the one SSRC carries one continuous stream.
pub(super) struct MicClock {
    /// Sequence number of the next packet.
    seq: u16,
    /// Timestamp of the first packet ever sent.
    first_ts: u32,
    /// The last packet sent: its timestamp, its duration in samples, when it was sent.
    last: Option<(u32, u32, Instant)>,
    /// RED over the stream, when the client offered it and the SFU answered it (scripts only).
    pub(super) red: Option<RedEncoder>,
}

impl MicClock {
    pub(super) fn new(red: Option<RedEncoder>) -> MicClock {
        MicClock {
            seq: rand::random(),
            first_ts: rand::random(),
            last: None,
            red,
        }
    }

    /// The timestamp of a packet sent now that opens a talkspurt: after a pause, the last
    /// packet's timestamp plus the wall-clock time since it (at least its own duration), as
    /// the clock of a sender that muted itself runs on.
    pub(super) fn talkspurt_ts(&self) -> u32 {
        match self.last {
            None => self.first_ts,
            Some((ts, samples, at)) => {
                let elapsed = at.elapsed().as_micros() * 48 / 1000;
                let advance = u32::try_from(elapsed).unwrap_or(u32::MAX).max(samples);
                ts.wrapping_add(advance)
            }
        }
    }

    /// Takes a sequence number for a packet with timestamp `ts` and `samples` sent now.
    pub(super) fn sent(&mut self, ts: u32, samples: u32) -> u16 {
        let seq = self.seq;
        self.seq = seq.wrapping_add(1);
        self.last = Some((ts, samples, Instant::now()));
        seq
    }
}
