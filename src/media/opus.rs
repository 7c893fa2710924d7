//! Opus packet facts read from the packet itself (RFC 6716 §3), without decoding.
//!
//! The SFU never decodes audio, yet it has to know how long each received packet is: the bite
//! cutter measures bites in samples, and the Ogg writer must put exact granule positions on its
//! pages (RFC 7845 §4). Both come from the TOC byte (§3.1) and the frame-count byte (§3.2.5), so a
//! sender's packetisation (2.5 to 120 ms, one or many frames) is honoured instead of assuming
//! 20 ms. [`validate`] also checks the framing rules R1–R7 of §3.4, because a packet a decoder
//! would reject must not end up in a stored file.
//!
//! It also builds *gap fillers*: packets whose frames are all zero bytes long. §3.2.1 allows a
//! frame of length zero, and decoders treat it as a lost frame (libopus runs its concealment for
//! any frame of at most one byte), so a stretch the sender never sent (loss, DTX) can be kept at
//! its true length in a file at a cost of one or two bytes per packet.
//!
//! Everything here is a pure function of its input: no allocation beyond the return value, no
//! panics on any byte sequence.

/// The Opus clock: RTP timestamps and Ogg granule positions count samples at 48 kHz whatever
/// the encoded bandwidth (RFC 7587 §4.1, RFC 7845 §4).
pub const SAMPLE_RATE: u32 = 48_000;

/// The longest duration one packet may carry, 120 ms (RFC 6716 §3.2.5).
pub const MAX_PACKET_SAMPLES: u32 = 5_760;

/// The largest size of one frame in bytes (RFC 6716 §3.2.1, rule R2).
pub const MAX_FRAME_BYTES: usize = 1_275;

/// The shortest frame, 2.5 ms: every packet duration, and so every length a gap filler can
/// cover, is a multiple of it.
pub const FILLER_UNIT: u32 = 120;

/// Which codec layer a configuration uses (RFC 6716 §3.1, Table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Linear prediction, configurations 0–11 (10, 20, 40, 60 ms frames).
    Silk,
    /// SILK and CELT together, configurations 12–15 (10, 20 ms frames).
    Hybrid,
    /// MDCT, configurations 16–31 (2.5, 5, 10, 20 ms frames).
    Celt,
}

/// Why a packet is not a well-formed Opus packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidOpus {
    /// Zero bytes: not even a TOC byte (R1).
    Empty,
    /// A code 3 packet that ends before its frame-count byte (R6/R7).
    MissingFrameCount,
    /// A code 3 packet that announces zero frames (R5).
    NoFrames,
    /// More than 120 ms of audio in one packet (R5).
    TooLong,
    /// Frame lengths, padding or sizes that do not add up to the packet (R2–R4, R6, R7).
    BadFraming,
}

impl std::fmt::Display for InvalidOpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InvalidOpus::Empty => "empty Opus packet",
            InvalidOpus::MissingFrameCount => "code 3 Opus packet without frame count",
            InvalidOpus::NoFrames => "code 3 Opus packet with zero frames",
            InvalidOpus::TooLong => "Opus packet longer than 120 ms",
            InvalidOpus::BadFraming => "Opus packet framing does not add up",
        })
    }
}

impl std::error::Error for InvalidOpus {}

/// The configuration number (0–31): mode, bandwidth and frame size in one (§3.1).
pub fn config(toc: u8) -> u8 {
    toc >> 3
}

/// The codec layer of a TOC byte.
pub fn mode(toc: u8) -> Mode {
    match config(toc) {
        0..=11 => Mode::Silk,
        12..=15 => Mode::Hybrid,
        _ => Mode::Celt,
    }
}

/// Samples at 48 kHz of each frame of a packet with this TOC byte.
pub fn frame_samples(toc: u8) -> u32 {
    let c = config(toc);
    match mode(toc) {
        // 10, 20, 40, 60 ms
        Mode::Silk => [480, 960, 1_920, 2_880][usize::from(c & 3)],
        // 10, 20 ms
        Mode::Hybrid => [480, 960][usize::from(c & 1)],
        // 2.5, 5, 10, 20 ms
        Mode::Celt => [120, 240, 480, 960][usize::from(c & 3)],
    }
}

/// Number of frames in the packet: 1 for code 0, 2 for codes 1 and 2, the count byte M for
/// code 3. `None` for an empty packet, a code 3 packet without its count byte, or M = 0.
pub fn frame_count(payload: &[u8]) -> Option<u32> {
    let (&toc, rest) = payload.split_first()?;
    match toc & 3 {
        0 => Some(1),
        1 | 2 => Some(2),
        _ => {
            let m = u32::from(rest.first()? & 0x3f);
            (m != 0).then_some(m)
        }
    }
}

/// Duration of the whole packet in samples at 48 kHz: frame size × frame count.
///
/// `None` for an empty packet, a code 3 packet without its count byte, M = 0, or more than
/// 120 ms, i.e. whenever the TOC cannot describe a valid packet. This looks at the first two
/// bytes only; [`validate`] also checks that the frame lengths fit the packet.
pub fn packet_samples(payload: &[u8]) -> Option<u32> {
    let toc = *payload.first()?;
    let total = frame_samples(toc) * frame_count(payload)?;
    (total <= MAX_PACKET_SAMPLES).then_some(total)
}

/// Whether the packet is coded as stereo (the `s` bit of the TOC). An empty packet is not.
pub fn is_stereo(payload: &[u8]) -> bool {
    payload.first().is_some_and(|toc| toc & 0x04 != 0)
}

/// Reads one frame length (§3.2.1): one byte below 252, else two bytes. Returns the length and
/// how many bytes encoded it.
fn frame_length(bytes: &[u8]) -> Option<(usize, usize)> {
    let first = usize::from(*bytes.first()?);
    if first < 252 {
        Some((first, 1))
    } else {
        let second = usize::from(*bytes.get(1)?);
        Some((first + 4 * second, 2))
    }
}

/// Checks the whole packet against the framing rules R1–R7 of RFC 6716 §3.4 and returns its
/// duration in samples at 48 kHz.
///
/// A packet that passes decodes without `OPUS_INVALID_PACKET` from a conforming decoder; the
/// content of the frames is not inspected (that would take decoding).
pub fn validate(payload: &[u8]) -> Result<u32, InvalidOpus> {
    let (&toc, rest) = payload.split_first().ok_or(InvalidOpus::Empty)?;
    match toc & 3 {
        // One frame filling the rest of the packet.
        0 => {
            if rest.len() > MAX_FRAME_BYTES {
                return Err(InvalidOpus::BadFraming);
            }
        }
        // Two frames of equal size: the rest must split evenly (R3).
        1 => {
            if rest.len() % 2 != 0 || rest.len() / 2 > MAX_FRAME_BYTES {
                return Err(InvalidOpus::BadFraming);
            }
        }
        // Two frames, the first one's length coded explicitly (R4).
        2 => {
            let (first, used) = frame_length(rest).ok_or(InvalidOpus::BadFraming)?;
            let left = rest.len() - used;
            let second = left.checked_sub(first).ok_or(InvalidOpus::BadFraming)?;
            if second > MAX_FRAME_BYTES {
                return Err(InvalidOpus::BadFraming);
            }
        }
        // M frames, CBR or VBR, with optional padding (R5–R7).
        _ => {
            let (&count_byte, mut body) =
                rest.split_first().ok_or(InvalidOpus::MissingFrameCount)?;
            let m = usize::from(count_byte & 0x3f);
            if m == 0 {
                return Err(InvalidOpus::NoFrames);
            }
            if frame_samples(toc) as usize * m > MAX_PACKET_SAMPLES as usize {
                return Err(InvalidOpus::TooLong);
            }
            let vbr = count_byte & 0x80 != 0;
            if count_byte & 0x40 != 0 {
                // Padding length: each 255 means 254 bytes and another length byte follows.
                let mut padding = 0usize;
                loop {
                    let (&b, tail) = body.split_first().ok_or(InvalidOpus::BadFraming)?;
                    body = tail;
                    if b == 255 {
                        padding += 254;
                    } else {
                        padding += usize::from(b);
                        break;
                    }
                }
                let data_len = body
                    .len()
                    .checked_sub(padding)
                    .ok_or(InvalidOpus::BadFraming)?;
                body = body.get(..data_len).ok_or(InvalidOpus::BadFraming)?;
            }
            if vbr {
                let mut sum = 0usize;
                for _ in 1..m {
                    let (len, used) = frame_length(body).ok_or(InvalidOpus::BadFraming)?;
                    body = body.get(used..).ok_or(InvalidOpus::BadFraming)?;
                    sum += len;
                }
                let last = body.len().checked_sub(sum).ok_or(InvalidOpus::BadFraming)?;
                if last > MAX_FRAME_BYTES {
                    return Err(InvalidOpus::BadFraming);
                }
            } else if body.len() % m != 0 || body.len() / m > MAX_FRAME_BYTES {
                return Err(InvalidOpus::BadFraming);
            }
        }
    }
    packet_samples(payload).ok_or(InvalidOpus::TooLong)
}

/// A packet whose frames are all empty: decoders conceal it as lost audio of its duration.
///
/// At most two bytes, so it is kept inline rather than allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filler {
    bytes: [u8; 2],
    len: u8,
    samples: u32,
}

impl Filler {
    /// The packet bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Its duration in samples at 48 kHz.
    pub fn samples(&self) -> u32 {
        self.samples
    }
}

/// Builds a filler of `frames` empty frames of configuration `config` (0–31).
///
/// One frame is a code 0 packet (the TOC byte alone: one frame of zero bytes). Two frames are a
/// code 1 packet, also the TOC byte alone: two equal frames of zero bytes satisfy R3. More are a
/// CBR code 3 packet with its count byte and no data: (N − 2 − P) = 0 is a multiple of M, which
/// R6 asks for, so every frame is zero bytes long. `None` if `config` > 31, `frames` is zero, or
/// the packet would exceed 120 ms.
pub fn filler(config: u8, stereo: bool, frames: u8) -> Option<Filler> {
    if config > 31 || frames == 0 {
        return None;
    }
    let toc = (config << 3) | if stereo { 0x04 } else { 0 };
    let samples = frame_samples(toc) * u32::from(frames);
    if samples > MAX_PACKET_SAMPLES {
        return None;
    }
    let (bytes, len) = match frames {
        1 => ([toc, 0], 1),
        2 => ([toc | 1, 0], 1),
        // CBR (v = 0), no padding (p = 0), M in the low six bits; M ≤ 48 here.
        m => ([toc | 3, m], 2),
    };
    Some(Filler {
        bytes,
        len,
        samples,
    })
}

/// The fillers that cover `samples` of missing audio, rounded down to a multiple of
/// [`FILLER_UNIT`] (2.5 ms), as an iterator so a long gap never allocates.
///
/// They use the mode, bandwidth and channel count of `template` (the TOC byte of a neighbouring
/// real packet), so a decoder sees no configuration change; whatever that mode cannot express
/// (SILK and Hybrid have no frames under 10 ms) is finished with CELT frames of a similar
/// bandwidth. Each filler packs up to 120 ms, so a gap of one second takes about nine packets.
pub fn gap_fillers(samples: u64, template: u8) -> GapFillers {
    let stereo = template & 0x04 != 0;
    let c = config(template);
    // Configurations to try, longest frame first; index 4 is always CELT so any remainder
    // that is a multiple of 2.5 ms can be finished.
    let (own, celt_base): ([Option<u8>; 4], u8) = match mode(template) {
        Mode::Silk => {
            let base = c & !3;
            // CELT has no medium band: use wideband, the nearest one above it.
            let celt = if base == 0 { 16 } else { 20 };
            (
                [Some(base + 3), Some(base + 2), Some(base + 1), Some(base)],
                celt,
            )
        }
        Mode::Hybrid => {
            let base = c & !1;
            let celt = if base == 12 { 24 } else { 28 };
            ([Some(base + 1), Some(base), None, None], celt)
        }
        Mode::Celt => (
            [None, None, None, None],
            // Same bandwidth as the template.
            c & !3,
        ),
    };
    GapFillers {
        left: samples - samples % u64::from(FILLER_UNIT),
        stereo,
        configs: [
            own[0],
            own[1],
            own[2],
            own[3],
            Some(celt_base + 3),
            Some(celt_base + 2),
            Some(celt_base + 1),
            Some(celt_base),
        ],
        next: 0,
    }
}

/// Iterator returned by [`gap_fillers`].
#[derive(Debug, Clone)]
pub struct GapFillers {
    left: u64,
    stereo: bool,
    configs: [Option<u8>; 8],
    next: usize,
}

impl GapFillers {
    /// Samples still to be covered.
    pub fn remaining(&self) -> u64 {
        self.left
    }
}

impl Iterator for GapFillers {
    type Item = Filler;

    fn next(&mut self) -> Option<Filler> {
        while self.left > 0 {
            let config = *self.configs.get(self.next)?;
            let Some(config) = config else {
                self.next += 1;
                continue;
            };
            let frame = u64::from(frame_samples(config << 3));
            if self.left < frame {
                self.next += 1;
                continue;
            }
            let per_packet = u64::from(MAX_PACKET_SAMPLES) / frame;
            let frames = (self.left / frame).min(per_packet);
            // frames ≤ 48, so the conversion cannot fail; a failure would only end the run.
            let f = filler(config, self.stereo, u8::try_from(frames).ok()?)?;
            self.left -= u64::from(f.samples());
            return Some(f);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TOC byte for a configuration, stereo flag and frame-count code.
    fn toc(config: u8, stereo: bool, code: u8) -> u8 {
        (config << 3) | if stereo { 4 } else { 0 } | code
    }

    #[test]
    fn frame_sizes_of_every_configuration() {
        // RFC 6716 Table 2, in samples at 48 kHz.
        let expected: [u32; 32] = [
            480, 960, 1920, 2880, // SILK NB
            480, 960, 1920, 2880, // SILK MB
            480, 960, 1920, 2880, // SILK WB
            480, 960, // Hybrid SWB
            480, 960, // Hybrid FB
            120, 240, 480, 960, // CELT NB
            120, 240, 480, 960, // CELT WB
            120, 240, 480, 960, // CELT SWB
            120, 240, 480, 960, // CELT FB
        ];
        for (c, want) in expected.iter().enumerate() {
            let t = toc(c as u8, false, 0);
            assert_eq!(frame_samples(t), *want, "config {c}");
            assert_eq!(packet_samples(&[t, 0xaa]), Some(*want), "config {c}");
        }
    }

    #[test]
    fn single_frame_durations() {
        assert_eq!(packet_samples(&[toc(16, false, 0)]), Some(120)); // 2.5 ms
        assert_eq!(packet_samples(&[toc(17, false, 0)]), Some(240)); // 5 ms
        assert_eq!(packet_samples(&[toc(0, false, 0)]), Some(480)); // 10 ms
        assert_eq!(packet_samples(&[toc(1, false, 0)]), Some(960)); // 20 ms
        assert_eq!(packet_samples(&[toc(2, false, 0)]), Some(1920)); // 40 ms
        assert_eq!(packet_samples(&[toc(3, false, 0)]), Some(2880)); // 60 ms
    }

    #[test]
    fn multi_frame_durations() {
        // Code 1 and 2: two frames.
        assert_eq!(packet_samples(&[toc(1, false, 1), 1, 2]), Some(1920));
        assert_eq!(packet_samples(&[toc(31, true, 2), 1, 9]), Some(1920));
        // Code 3: M frames.
        assert_eq!(packet_samples(&[toc(1, false, 3), 3]), Some(2880));
        assert_eq!(packet_samples(&[toc(16, false, 3), 48]), Some(5760)); // 48 × 2.5 ms
        assert_eq!(packet_samples(&[toc(3, false, 3), 2]), Some(5760)); // 2 × 60 ms
        // The VBR and padding flags do not change the count.
        assert_eq!(packet_samples(&[toc(1, false, 3), 0xc0 | 6]), Some(5760));
        assert_eq!(frame_count(&[toc(1, false, 3), 0x80 | 5]), Some(5));
    }

    #[test]
    fn invalid_tocs() {
        assert_eq!(packet_samples(&[]), None);
        assert_eq!(frame_count(&[]), None);
        // Code 3 without its count byte.
        assert_eq!(packet_samples(&[toc(1, false, 3)]), None);
        // M = 0, also with flags set.
        assert_eq!(packet_samples(&[toc(1, false, 3), 0]), None);
        assert_eq!(packet_samples(&[toc(1, false, 3), 0xc0]), None);
        // More than 120 ms: 7 × 20 ms, 3 × 60 ms, 49 × 2.5 ms.
        assert_eq!(packet_samples(&[toc(1, false, 3), 7]), None);
        assert_eq!(packet_samples(&[toc(3, false, 3), 3]), None);
        assert_eq!(packet_samples(&[toc(16, false, 3), 49]), None);
        assert_eq!(
            validate(&[toc(16, false, 3), 49]),
            Err(InvalidOpus::TooLong)
        );
        assert_eq!(validate(&[]), Err(InvalidOpus::Empty));
        assert_eq!(
            validate(&[toc(1, false, 3)]),
            Err(InvalidOpus::MissingFrameCount)
        );
        assert_eq!(validate(&[toc(1, false, 3), 0]), Err(InvalidOpus::NoFrames));
    }

    #[test]
    fn stereo_bit() {
        assert!(!is_stereo(&[]));
        assert!(!is_stereo(&[toc(1, false, 0)]));
        assert!(is_stereo(&[toc(1, true, 0)]));
        assert!(is_stereo(&[toc(31, true, 3), 1]));
    }

    #[test]
    fn validate_accepts_well_formed_packets() {
        let data = vec![0x55u8; 100];
        let mut p = vec![toc(1, false, 0)];
        p.extend_from_slice(&data);
        assert_eq!(validate(&p), Ok(960));
        // Code 0 with the largest frame.
        let mut p = vec![toc(1, false, 0)];
        p.resize(1 + MAX_FRAME_BYTES, 0);
        assert_eq!(validate(&p), Ok(960));
        // Code 1: even remainder.
        assert_eq!(validate(&[toc(1, false, 1), 1, 2, 3, 4]), Ok(1920));
        // Code 2: first frame 2 bytes, second 1.
        assert_eq!(validate(&[toc(1, false, 2), 2, 9, 9, 9]), Ok(1920));
        // Code 2 with a two-byte length: 252 + 4 × 1 = 256.
        let mut p = vec![toc(1, false, 2), 252, 1];
        p.resize(3 + 256 + 10, 7);
        assert_eq!(validate(&p), Ok(1920));
        // Code 3 CBR: 3 frames of 2 bytes.
        assert_eq!(validate(&[toc(1, false, 3), 3, 1, 1, 2, 2, 3, 3]), Ok(2880));
        // Code 3 CBR with padding: 2 padding bytes after 2 frames of 1 byte.
        assert_eq!(
            validate(&[toc(1, false, 3), 0x40 | 2, 2, 1, 1, 0, 0]),
            Ok(1920)
        );
        // Code 3 with padding length 255 + 1 = 254 + 1 = 255 bytes of padding.
        let mut p = vec![toc(1, false, 3), 0x40 | 1, 255, 1, 0xaa];
        p.resize(p.len() + 255, 0);
        assert_eq!(validate(&p), Ok(960));
        // Code 3 VBR: frames of 1 and 3 bytes then the last of 2.
        assert_eq!(
            validate(&[toc(1, false, 3), 0x80 | 3, 1, 3, 9, 8, 8, 8, 7, 7]),
            Ok(2880)
        );
        // Code 3 VBR with padding.
        assert_eq!(
            validate(&[toc(1, false, 3), 0xc0 | 2, 1, 1, 5, 6, 0]),
            Ok(1920)
        );
    }

    #[test]
    fn validate_rejects_bad_framing() {
        let bad = InvalidOpus::BadFraming;
        // Code 0: implicit frame over 1275 bytes (R2).
        let mut p = vec![toc(1, false, 0)];
        p.resize(2 + MAX_FRAME_BYTES, 0);
        assert_eq!(validate(&p), Err(bad));
        // Code 1: odd remainder (R3).
        assert_eq!(validate(&[toc(1, false, 1), 1, 2, 3]), Err(bad));
        // Code 2: no length byte, truncated two-byte length, length past the end (R4).
        assert_eq!(validate(&[toc(1, false, 2)]), Err(bad));
        assert_eq!(validate(&[toc(1, false, 2), 253]), Err(bad));
        assert_eq!(validate(&[toc(1, false, 2), 5, 1, 2]), Err(bad));
        // Code 2: second frame over 1275 bytes.
        let mut p = vec![toc(1, false, 2), 0];
        p.resize(2 + MAX_FRAME_BYTES + 1, 0);
        assert_eq!(validate(&p), Err(bad));
        // Code 3 CBR: data not a multiple of M (R6).
        assert_eq!(validate(&[toc(1, false, 3), 2, 1, 2, 3]), Err(bad));
        // Code 3: padding longer than the packet, padding length missing.
        assert_eq!(validate(&[toc(1, false, 3), 0x40 | 1, 9, 0]), Err(bad));
        assert_eq!(validate(&[toc(1, false, 3), 0x40 | 1]), Err(bad));
        assert_eq!(validate(&[toc(1, false, 3), 0x40 | 1, 255]), Err(bad));
        // Code 3 VBR: missing lengths, lengths past the end (R7).
        assert_eq!(validate(&[toc(1, false, 3), 0x80 | 3, 1]), Err(bad));
        assert_eq!(validate(&[toc(1, false, 3), 0x80 | 2, 10, 1]), Err(bad));
        // Code 3 VBR: last frame over 1275 bytes.
        let mut p = vec![toc(1, false, 3), 0x80 | 2, 0];
        p.resize(3 + MAX_FRAME_BYTES + 1, 0);
        assert_eq!(validate(&p), Err(bad));
    }

    #[test]
    fn validate_never_panics_on_short_inputs() {
        // Every packet of up to two bytes, and a sample of three-byte ones.
        for a in 0..=255u8 {
            let _ = validate(&[a]);
            for b in 0..=255u8 {
                let _ = validate(&[a, b]);
                let _ = validate(&[a, b, a ^ b]);
                let _ = packet_samples(&[a, b]);
            }
        }
    }

    #[test]
    fn fillers_are_valid_packets_of_empty_frames() {
        for cfg in 0..32u8 {
            for stereo in [false, true] {
                let fs = frame_samples(cfg << 3);
                for frames in 1..=48u8 {
                    let Some(f) = filler(cfg, stereo, frames) else {
                        assert!(fs * u32::from(frames) > MAX_PACKET_SAMPLES);
                        continue;
                    };
                    let b = f.as_bytes();
                    assert_eq!(validate(b), Ok(fs * u32::from(frames)));
                    assert_eq!(f.samples(), fs * u32::from(frames));
                    assert_eq!(is_stereo(b), stereo);
                    assert_eq!(config(b[0]), cfg);
                    assert!(b.len() <= 2);
                }
            }
        }
        assert_eq!(filler(32, false, 1), None);
        assert_eq!(filler(1, false, 0), None);
        // The exact bytes: a TOC alone, code 1 TOC alone, code 3 TOC with count.
        assert_eq!(filler(1, false, 1).unwrap().as_bytes(), &[0x08]);
        assert_eq!(filler(1, false, 2).unwrap().as_bytes(), &[0x09]);
        assert_eq!(filler(1, true, 6).unwrap().as_bytes(), &[0x0f, 6]);
    }

    fn covered(samples: u64, template: u8) -> (u64, usize) {
        let mut total = 0;
        let mut count = 0;
        for f in gap_fillers(samples, template) {
            assert!(validate(f.as_bytes()).is_ok());
            assert_eq!(is_stereo(f.as_bytes()), is_stereo(&[template]));
            total += u64::from(f.samples());
            count += 1;
        }
        (total, count)
    }

    #[test]
    fn gap_fillers_cover_the_gap_to_the_unit() {
        for template in [
            toc(1, false, 0),
            toc(13, true, 0),
            toc(31, false, 0),
            toc(5, false, 1),
        ] {
            for samples in [
                0u64, 119, 120, 240, 360, 479, 480, 960, 1000, 2880, 5760, 48_000, 48_119,
            ] {
                let (total, _) = covered(samples, template);
                assert_eq!(
                    total,
                    samples - samples % 120,
                    "{samples} with {template:#x}"
                );
            }
        }
    }

    #[test]
    fn gap_fillers_keep_the_template_mode_and_are_few() {
        // A second after a SILK WB 20 ms packet: 60 ms frames, two per packet.
        let f: Vec<_> = gap_fillers(48_000, toc(9, false, 0)).collect();
        assert!(f.iter().all(|f| mode(f.as_bytes()[0]) == Mode::Silk));
        assert_eq!(f.len(), 9); // 8 × 120 ms + 1 × 40 ms
        // 130 ms after SILK: 120 ms of SILK, then 10 ms of SILK; 2.5 ms remainder in CELT.
        let f: Vec<_> = gap_fillers(6_240 + 120, toc(1, false, 0)).collect();
        let last = f.last().unwrap().as_bytes()[0];
        assert_eq!(mode(last), Mode::Celt);
        assert_eq!(covered(6_360, toc(1, false, 0)).0, 6_360);
        // A CELT FB template keeps its bandwidth.
        assert!(
            gap_fillers(1_000, toc(31, false, 0))
                .all(|f| (28..32).contains(&config(f.as_bytes()[0])))
        );
        // A very long gap is produced lazily and in 120 ms packets.
        let mut it = gap_fillers(u64::MAX, toc(31, false, 0));
        assert_eq!(it.next().map(|f| f.samples()), Some(5_760));
        assert!(it.remaining() > 0);
    }
}
