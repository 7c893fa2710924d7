//! What "speaking" means, in one place: how loud a packet is, and whether it is speech.
//! Slot selection and bite cutting both decide from this, so a member who is on a slot is
//! a member whose words become bites, and the two never disagree.
//!
//! The loudness of a packet is the RFC 6464 audio level its sender measured, when the
//! extension was negotiated; otherwise it is inferred from the Opus payload size, because an
//! Opus encoder spends a handful of bytes on silence (DTX or comfort noise) and tens to
//! hundreds on speech.

/// How loud one packet is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loudness {
    /// RFC 6464 byte already split: `dbov` is the level in -dBov (0 loudest,
    /// 127 silence), `voice` the V flag.
    ///
    /// The V flag is not used: many senders leave it unset whatever is said,
    /// so the level alone decides.
    Level { dbov: u8, voice: bool },
    /// No extension negotiated: voice activity inferred from the stream.
    Inferred { voiced: bool },
}

/// Level, in -dBov, credited to an `Inferred { voiced: true }` packet: a
/// typical level for normal speech, so inferred and measured speakers compete
/// on roughly equal terms.
pub const INFERRED_VOICED_DBOV: u8 = 40;

/// A packet at or louder than this (`dbov <= threshold`) counts as speech by default:
/// normal speech sits around 20–40, room noise well below 60.
pub const SPEECH_THRESHOLD_DBOV: u8 = 60;

/// Below this many payload bytes an Opus packet is silence/DTX: used only when the client
/// did not negotiate the audio-level extension.
pub const VOICED_MIN_PAYLOAD: usize = 16;

/// At most this many payload bytes, an Opus packet carries no sound at all: a TOC byte
/// alone, or with one more byte, is what an encoder in DTX emits (WebRTC's own jitter buffer
/// treats packets this small as DTX). A level claimed for such a packet is contradicted by
/// it, and the packet counts as silence whatever its RFC 6464 byte says: otherwise a client
/// could win a slot with a stream of empty packets stamped 0 dBov. (Any real Opus frame of
/// speech is far larger: 15 bytes per 20 ms at the codec's lowest bitrate.)
pub const DTX_MAX_PAYLOAD: usize = 2;

const SILENCE_DBOV: u8 = 127;

impl Loudness {
    /// Silence, as the RFC 6464 floor.
    pub const SILENT: Loudness = Loudness::Level {
        dbov: SILENCE_DBOV,
        voice: false,
    };

    /// The loudness of one packet: its RFC 6464 byte if it carries one, else inferred from
    /// its payload size. A DTX-sized payload ([`DTX_MAX_PAYLOAD`]) is silence whatever level
    /// it claims.
    pub fn of_packet(level_byte: Option<u8>, payload_len: usize) -> Loudness {
        match level_byte {
            Some(_) if payload_len <= DTX_MAX_PAYLOAD => Loudness::SILENT,
            Some(b) => Loudness::Level {
                dbov: b & 0x7f,
                voice: b & 0x80 != 0,
            },
            None => Loudness::Inferred {
                voiced: payload_len >= VOICED_MIN_PAYLOAD,
            },
        }
    }

    /// The RFC 6464 byte of a measured level (V flag clear); `None` for an inferred one.
    pub fn level_byte(self) -> Option<u8> {
        match self {
            Loudness::Level { dbov, voice } => Some(dbov.min(SILENCE_DBOV) | u8::from(voice) << 7),
            Loudness::Inferred { .. } => None,
        }
    }

    /// Loudness in dB above the RFC 6464 floor; 0 is silence.
    pub fn db(self) -> f32 {
        let dbov = match self {
            Loudness::Level { dbov, .. } => dbov.min(SILENCE_DBOV),
            Loudness::Inferred { voiced: true } => INFERRED_VOICED_DBOV,
            Loudness::Inferred { voiced: false } => SILENCE_DBOV,
        };
        f32::from(SILENCE_DBOV - dbov)
    }

    /// An inferred voiced packet is speech whatever the threshold: the
    /// inference already made that call and there is no level to compare.
    pub fn is_speech(self, threshold_dbov: u8) -> bool {
        match self {
            Loudness::Level { dbov, .. } => dbov <= threshold_dbov,
            Loudness::Inferred { voiced } => voiced,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_byte_wins_over_inference() {
        assert_eq!(
            Loudness::of_packet(Some(0x80 | 30), 3),
            Loudness::Level {
                dbov: 30,
                voice: true
            }
        );
        assert!(Loudness::of_packet(Some(30), 3).is_speech(SPEECH_THRESHOLD_DBOV));
        assert!(!Loudness::of_packet(Some(90), 300).is_speech(SPEECH_THRESHOLD_DBOV));
        assert!(Loudness::of_packet(None, 80).is_speech(SPEECH_THRESHOLD_DBOV));
        assert!(!Loudness::of_packet(None, 3).is_speech(SPEECH_THRESHOLD_DBOV));
        assert_eq!(Loudness::of_packet(Some(127), 0).db(), 0.0);
    }

    #[test]
    fn a_loud_level_on_a_dtx_payload_is_silence() {
        for len in 0..=DTX_MAX_PAYLOAD {
            let l = Loudness::of_packet(Some(0x80), len);
            assert!(!l.is_speech(SPEECH_THRESHOLD_DBOV), "{len} bytes: {l:?}");
            assert_eq!(l.db(), 0.0, "{len} bytes");
        }
        // One byte more is a (small) frame: its level stands, loud or not.
        let l = Loudness::of_packet(Some(0x80), DTX_MAX_PAYLOAD + 1);
        assert!(l.is_speech(SPEECH_THRESHOLD_DBOV));
        assert_eq!(l.db(), 127.0);
        assert!(!Loudness::of_packet(Some(90), 300).is_speech(SPEECH_THRESHOLD_DBOV));
    }
}
