//! Ogg Opus files (RFC 7845) made from a cut bite by remuxing its packets: no transcoding.
//!
//! A bite is published as a complete, self-contained Ogg Opus file (SPEC §5) so any player or
//! speech API can consume it directly. The received Opus packets are copied as they are; only
//! the container is new: an `OpusHead` page, an `OpusTags` page naming the conversation, user,
//! client and start, then audio pages of about one second each, the last one flagged EOS.
//!
//! Timing is exact to the sample. Each page's granule position is computed from the durations
//! in the packets' own TOC bytes (not an assumed 20 ms). Stretches the sender never sent or the
//! network lost (DTX, loss) are filled with gap fillers from [`super::opus`], packets of empty
//! frames that decoders conceal, so the audio keeps its timing and the file lasts exactly the
//! bite's duration.
//!
//! Pre-skip: a stream cut from the middle of a live call has no encoder delay to hide, yet a
//! decoder discards the first `pre-skip` samples it decodes (RFC 7845 §4.2). With the customary
//! 312 samples and no more than the bite's own packets, the first 6.5 ms of speech would be cut
//! and the file would play 312 samples shorter than the bite; 312 is also no multiple of the
//! 2.5 ms frame, so no filler can stand in for it. The file therefore starts with a primer of
//! exactly [`PRE_SKIP`] samples of fillers (10 ms, one byte) and announces that as its pre-skip:
//! the decoder discards the primer, the first real sample plays at time zero, and every page's
//! granule position is `PRE_SKIP` plus the bite samples completed on it.

use std::borrow::Cow;
use std::hash::BuildHasher;

use ogg::writing::{PacketWriteEndInfo, PacketWriter};

use super::bite::CutBite;
use super::opus;

/// Samples the decoder discards at the start: the length of the filler primer (10 ms).
pub const PRE_SKIP: u16 = 480;

/// The vendor string of `OpusTags`.
pub const VENDOR: &str = "beep-webrtc";

/// Audio per page before it is flushed: about a second, so a reader can seek and stream
/// without pages growing large. Pages also end at 255 segments, which the `ogg` crate handles.
const PAGE_SAMPLES: u64 = 48_000;

/// The longest file this writer makes, one hour: bites are seconds long, and a bound keeps a
/// malformed bite (absurd offsets) from turning into gigabytes of fillers.
pub const MAX_DURATION_SAMPLES: u64 = 48_000 * 3_600;

/// The comments written into `OpusTags`, identifying the bite to whoever finds the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BiteTags<'a> {
    /// `BEEP_CONVERSATION`: the conversation id.
    pub conversation: &'a str,
    /// `BEEP_USER`: the speaker's user id.
    pub user: &'a str,
    /// `BEEP_CLIENT`: the speaker's client id.
    pub client: &'a str,
    /// `BEEP_START`: Unix time in milliseconds of the first sample, as published.
    pub start_unix_ms: u64,
}

/// Why no file could be made.
#[derive(Debug)]
pub enum OggError {
    /// The bite has no valid Opus packet.
    Empty,
    /// Its duration or a packet offset exceeds [`MAX_DURATION_SAMPLES`], or a tag exceeds 4 GiB.
    TooLong,
    /// The Ogg writer failed (it writes to memory, so this is not expected).
    Io(std::io::Error),
}

impl std::fmt::Display for OggError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OggError::Empty => f.write_str("bite has no valid Opus packet"),
            OggError::TooLong => f.write_str("bite too long for an Ogg file"),
            OggError::Io(e) => write!(f, "ogg writer: {e}"),
        }
    }
}

impl std::error::Error for OggError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OggError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for OggError {
    fn from(e: std::io::Error) -> Self {
        OggError::Io(e)
    }
}

/// A random Ogg stream serial number (RFC 3533 asks for one per logical stream, so files
/// concatenated or muxed together stay distinguishable). Seeded by the standard library's
/// per-process random keys: no clock, no extra dependency.
pub fn random_serial() -> u32 {
    std::collections::hash_map::RandomState::new().hash_one(0u8) as u32
}

/// The identification header (RFC 7845 §5.1): version 1, `channels`, [`PRE_SKIP`], input rate
/// 48 kHz, gain 0, channel mapping family 0 (mono or stereo, no mapping table).
pub fn opus_head(channels: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(19);
    h.extend_from_slice(b"OpusHead");
    h.push(1);
    h.push(channels);
    h.extend_from_slice(&PRE_SKIP.to_le_bytes());
    h.extend_from_slice(&48_000u32.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes());
    h.push(0);
    h
}

/// The comment header (RFC 7845 §5.2): vendor [`VENDOR`] and the `BEEP_*` comments.
pub fn opus_tags(tags: &BiteTags<'_>) -> Result<Vec<u8>, OggError> {
    let comments = [
        format!("BEEP_CONVERSATION={}", tags.conversation),
        format!("BEEP_USER={}", tags.user),
        format!("BEEP_CLIENT={}", tags.client),
        format!("BEEP_START={}", tags.start_unix_ms),
    ];
    let len = |n: usize| {
        u32::try_from(n)
            .map(u32::to_le_bytes)
            .map_err(|_| OggError::TooLong)
    };
    let mut t = Vec::with_capacity(64 + comments.iter().map(String::len).sum::<usize>());
    t.extend_from_slice(b"OpusTags");
    t.extend_from_slice(&len(VENDOR.len())?);
    t.extend_from_slice(VENDOR.as_bytes());
    t.extend_from_slice(&len(comments.len())?);
    for c in &comments {
        t.extend_from_slice(&len(c.len())?);
        t.extend_from_slice(c.as_bytes());
    }
    Ok(t)
}

/// One audio packet as it goes into the file.
struct Planned<'a> {
    data: Cow<'a, [u8]>,
    samples: u64,
    /// Decoded samples through the end of this packet, primer included.
    granule: u64,
}

/// Appends the fillers covering `samples` after `template`, advancing `pos`.
fn push_fillers(out: &mut Vec<Planned<'_>>, pos: &mut u64, samples: u64, template: u8) {
    for f in opus::gap_fillers(samples, template) {
        *pos += u64::from(f.samples());
        out.push(Planned {
            data: Cow::Owned(f.as_bytes().to_vec()),
            samples: u64::from(f.samples()),
            granule: *pos,
        });
    }
}

/// Lays out the audio packets: primer, bite packets, fillers in the gaps, and the granule
/// position after each one.
fn plan(bite: &CutBite) -> Result<Vec<Planned<'_>>, OggError> {
    if bite.duration > MAX_DURATION_SAMPLES {
        return Err(OggError::TooLong);
    }
    let pre_skip = u64::from(PRE_SKIP);
    let first_toc = bite
        .packets
        .iter()
        .find(|p| opus::packet_samples(&p.payload).is_some())
        .and_then(|p| p.payload.first().copied())
        .ok_or(OggError::Empty)?;
    let mut out: Vec<Planned<'_>> = Vec::with_capacity(bite.packets.len() + 4);
    let mut pos = 0u64;
    push_fillers(&mut out, &mut pos, pre_skip, first_toc);
    let mut template = first_toc;
    for p in &bite.packets {
        // A packet without a valid TOC cannot be timed; its stretch becomes a gap to fill.
        let (Some(n), Some(&toc)) = (opus::packet_samples(&p.payload), p.payload.first()) else {
            continue;
        };
        if p.offset > MAX_DURATION_SAMPLES {
            return Err(OggError::TooLong);
        }
        // `written` never exceeds the previous packet's end, so it is at most this offset for
        // any bite from the cutter; an overlapping packet is written where it falls.
        let written = pos.saturating_sub(pre_skip);
        if p.offset > written {
            // Rounded down to 2.5 ms: the audio lands at most 119 samples early.
            push_fillers(&mut out, &mut pos, p.offset - written, template);
        }
        pos += u64::from(n);
        out.push(Planned {
            data: Cow::Borrowed(&p.payload[..]),
            samples: u64::from(n),
            granule: pos,
        });
        template = toc;
    }
    let written = pos.saturating_sub(pre_skip);
    if written < bite.duration {
        // Fill to the end, rounded up to 2.5 ms; end trimming below removes the excess.
        let gap = bite.duration - written;
        let unit = u64::from(opus::FILLER_UNIT);
        push_fillers(&mut out, &mut pos, gap.div_ceil(unit) * unit, template);
    }
    let written = pos.saturating_sub(pre_skip);
    let last = out.last_mut().ok_or(OggError::Empty)?;
    // End trimming (RFC 7845 §4.5): the last granule says where playback stops, and may cut
    // into the last packet only.
    let kept = bite
        .duration
        .max(written.saturating_sub(last.samples))
        .min(written);
    last.granule = pre_skip + kept;
    Ok(out)
}

/// Writes `bite` as an Ogg Opus file with logical stream `serial` (see [`random_serial`]).
pub fn write_bite(bite: &CutBite, tags: &BiteTags<'_>, serial: u32) -> Result<Vec<u8>, OggError> {
    let audio = plan(bite)?;
    let stereo = bite
        .packets
        .iter()
        .any(|p| opus::packet_samples(&p.payload).is_some() && opus::is_stereo(&p.payload));
    let head = opus_head(if stereo { 2 } else { 1 });
    let tags = opus_tags(tags)?;
    let bytes: usize = audio.iter().map(|p| p.data.len() + 1).sum();
    let mut w = PacketWriter::new(Vec::with_capacity(bytes + bytes / 16 + 512));
    // Each header on a page of its own, granule 0 (RFC 7845 §3); the first page gets BOS.
    w.write_packet(head, serial, PacketWriteEndInfo::EndPage, 0)?;
    w.write_packet(tags, serial, PacketWriteEndInfo::EndPage, 0)?;
    let last = audio.len().saturating_sub(1);
    let mut on_page = 0u64;
    for (i, p) in audio.into_iter().enumerate() {
        on_page += p.samples;
        let end = if i == last {
            PacketWriteEndInfo::EndStream
        } else if on_page >= PAGE_SAMPLES {
            on_page = 0;
            PacketWriteEndInfo::EndPage
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        w.write_packet(p.data, serial, end, p.granule)?;
    }
    Ok(w.into_inner())
}

#[cfg(test)]
mod tests;
