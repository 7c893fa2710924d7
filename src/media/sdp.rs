//! What the worker needs to know of a client's offer before it builds the answer: the audio
//! m-lines in order (mid, direction, Opus payload type) and the RFC 6464 extension id. The
//! webrtc crate parses the SDP for real; this reads the few facts the slot plan depends on,
//! and turns an offer that could never work into a clear `bad-sdp` early.
//!
//! It is also the first line of defence against hostile offers: front parses every offer
//! with [`Offer::parse`] before a worker sees it, so the caps here ([`MAX_MLINES`] m-lines,
//! [`MAX_CANDIDATES`] candidates, extmap ids 1–14) protect both processes. Parsing stops at
//! the first line over a cap, so a huge offer costs no more than a small one.

pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// Most m-lines an offer may have. A client offers its microphone and up to `MAX_SLOTS` (at
/// most 16) slots; each m-line costs a transceiver in the worker's peer connection.
pub const MAX_MLINES: usize = 16;

/// Most `a=candidate` lines an offer may carry (all m-lines together). A browser gathers a
/// handful per interface; every remote candidate is a pair the ICE agent keeps.
pub const MAX_CANDIDATES: usize = 32;

/// RFC 8285 one-byte header extension ids: 1–14 (0 is padding, 15 is reserved). The room
/// writes each listener's audio-level id into forwarded packets with the one-byte header.
pub const EXTMAP_IDS: std::ops::RangeInclusive<u8> = 1..=14;

/// Direction as the *client* offered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The client wants to receive on this m-line: it can be a slot.
    pub fn client_receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct AudioSection {
    pub index: usize,
    pub mid: String,
    pub direction: Direction,
    /// The Opus payload type the client offered on this m-line.
    pub opus_pt: u8,
    /// The payload type of RFC 2198 redundancy (`red/48000/2`) over that Opus
    /// (`a=fmtp:<red> <opus>/<opus>`), if the client offered it.
    pub red_pt: Option<u8>,
    /// The client asks for generic NACK (`a=rtcp-fb:<opus> nack`) on this m-line's Opus.
    pub nack: bool,
    /// Payload types seen with `a=rtcp-fb:… nack` (the Opus one is only known at the end).
    nack_pts: Vec<u8>,
    /// Payload types seen with `red/48000/2` or an fmtp, in either order: (type, is RED,
    /// fmtp). Which RED carries this section's Opus is only known at the section's end.
    red_offers: Vec<(u8, bool, Option<String>)>,
}

/// Why an offer cannot be answered; the text is the `bad-sdp` message.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum SdpError {
    #[error("an SDP offer must start with v=0")]
    NotSdp,
    #[error("audio m-line {0} offers no Opus codec")]
    NoOpus(usize),
    #[error("the offer has no audio m-line")]
    NoAudio,
    #[error("the offer has more than {MAX_MLINES} m-lines")]
    TooManyMLines,
    #[error("the offer has more than {MAX_CANDIDATES} ICE candidates")]
    TooManyCandidates,
    #[error(
        "extmap id {0:?} is not allowed: header extension ids must be 1-14 (RFC 8285 one-byte ids)"
    )]
    BadExtmapId(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Offer {
    pub audio: Vec<AudioSection>,
    /// Negotiated id of the audio-level extension, if offered.
    pub audio_level_id: Option<u8>,
    /// `a=candidate` lines in the offer (at most [`MAX_CANDIDATES`]).
    pub candidates: usize,
}

impl Offer {
    /// Parses the facts we need; the error is the `bad-sdp` message.
    pub fn parse(sdp: &str) -> Result<Offer, SdpError> {
        if !sdp.trim_start().starts_with("v=0") {
            return Err(SdpError::NotSdp);
        }
        let mut audio = Vec::new();
        let mut audio_level_id = None;
        let mut candidates = 0usize;
        // Per m-line state; `None` kind means we are in the session part.
        let mut cur: Option<(bool, AudioSection, Option<u8>)> = None;
        let mut index = 0usize;
        let flush = |cur: &mut Option<(bool, AudioSection, Option<u8>)>,
                     audio: &mut Vec<AudioSection>|
         -> Result<(), SdpError> {
            if let Some((true, mut sec, opus)) = cur.take() {
                sec.opus_pt = opus.ok_or(SdpError::NoOpus(sec.index))?;
                let over_opus = |f: &str| {
                    let mut pts = f.split('/').map(|p| p.trim().parse::<u8>().ok());
                    pts.clone().count() >= 2 && pts.all(|p| p == Some(sec.opus_pt))
                };
                sec.red_pt = std::mem::take(&mut sec.red_offers)
                    .into_iter()
                    .find(|(_, red, f)| *red && f.as_deref().is_some_and(over_opus))
                    .map(|(pt, ..)| pt);
                sec.nack = std::mem::take(&mut sec.nack_pts).contains(&sec.opus_pt);
                if sec.mid.is_empty() {
                    sec.mid = sec.index.to_string();
                }
                audio.push(sec);
            }
            Ok(())
        };
        for line in sdp.lines().map(str::trim) {
            if line.starts_with("a=candidate:") {
                candidates += 1;
                if candidates > MAX_CANDIDATES {
                    return Err(SdpError::TooManyCandidates);
                }
                continue;
            }
            if let Some(m) = line.strip_prefix("m=") {
                if index == MAX_MLINES {
                    return Err(SdpError::TooManyMLines);
                }
                flush(&mut cur, &mut audio)?;
                let is_audio = m.starts_with("audio ");
                cur = Some((
                    is_audio,
                    AudioSection {
                        index,
                        mid: String::new(),
                        direction: Direction::SendRecv,
                        opus_pt: 0,
                        red_pt: None,
                        nack: false,
                        nack_pts: Vec::new(),
                        red_offers: Vec::new(),
                    },
                    None,
                ));
                index += 1;
                continue;
            }
            // Extension ids in the session part and the audio m-lines (the ones the answer can
            // accept) must fit the one-byte header.
            let ext = line.strip_prefix("a=extmap:");
            let audio_part = cur.as_ref().is_none_or(|(is_audio, ..)| *is_audio);
            if let Some(ext) = ext.filter(|_| audio_part) {
                check_extmap_id(ext)?;
            }
            if let Some((true, sec, opus)) = cur.as_mut() {
                audio_attribute(line, sec, opus, &mut audio_level_id);
            }
        }
        flush(&mut cur, &mut audio)?;
        if audio.is_empty() {
            return Err(SdpError::NoAudio);
        }
        Ok(Offer {
            audio,
            audio_level_id,
            candidates,
        })
    }

    /// `(red, opus)` payload types of the first m-line the client sends on that offers RED:
    /// what a speaker that sends RED would use (unpacked by [`super::red::RedDecoder`]).
    pub fn upstream_red(&self) -> Option<(u8, u8)> {
        self.audio
            .iter()
            .filter(|s| matches!(s.direction, Direction::SendRecv | Direction::SendOnly))
            .find_map(|s| Some((s.red_pt?, s.opus_pt)))
    }

    /// Whether any slot asks for NACK: the answer then offers it back, and the worker keeps
    /// each such slot's recent packets to resend.
    pub fn slots_nack(&self, max_slots: usize) -> bool {
        self.slot_sections(max_slots).iter().any(|s| s.nack)
    }

    /// Which audio sections become slots, in m-line order, at most `max_slots`.
    pub fn slot_sections(&self, max_slots: usize) -> Vec<&AudioSection> {
        self.audio
            .iter()
            .filter(|s| s.direction.client_receives())
            .take(max_slots)
            .collect()
    }
}

/// Makes a BUNDLE offer carry one set of ICE credentials. aiortc 1.4 gives every m-line its
/// own ufrag, pwd and candidates even when it offers BUNDLE, and keeps only the first
/// m-line's transport once BUNDLE is accepted; rtc 0.21 refuses such an offer outright
/// ("conflicting ice-ufrag"). Since only the first transport is ever used, the later bundled
/// m-lines get the first one's credentials and lose their candidates. Other offers pass
/// through unchanged.
pub fn unify_bundle_ice(sdp: &str) -> String {
    let mut bundled: Vec<&str> = Vec::new();
    let mut first_creds: Option<(String, String)> = None;
    // First pass: the BUNDLE group and the first bundled m-line's credentials.
    let mut mid = None;
    let mut ufrag = None;
    let mut pwd = None;
    let mut sections = Vec::new();
    for line in sdp.lines().map(str::trim) {
        if let Some(g) = line.strip_prefix("a=group:BUNDLE ") {
            bundled = g.split_whitespace().collect();
        } else if line.starts_with("m=") {
            sections.push((mid.take(), ufrag.take(), pwd.take()));
        } else if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.to_string());
        } else if let Some(u) = line.strip_prefix("a=ice-ufrag:") {
            ufrag = Some(u.to_string());
        } else if let Some(p) = line.strip_prefix("a=ice-pwd:") {
            pwd = Some(p.to_string());
        }
    }
    sections.push((mid, ufrag, pwd));
    for (m, u, p) in sections.iter().skip(1) {
        if let (Some(m), Some(u), Some(p)) = (m, u, p)
            && bundled.first() == Some(&m.as_str())
        {
            first_creds = Some((u.clone(), p.clone()));
        }
    }
    let Some((ufrag, pwd)) = first_creds else {
        return sdp.to_string();
    };
    let differs = sections.iter().skip(1).any(|(m, u, _)| {
        m.as_deref().is_some_and(|m| bundled.contains(&m))
            && u.as_deref().is_some_and(|u| u != ufrag)
    });
    if !differs {
        return sdp.to_string();
    }
    // Second pass: rewrite the later bundled sections.
    let mut out = String::with_capacity(sdp.len());
    let mut section: Vec<&str> = Vec::new();
    let flush = |section: &mut Vec<&str>, out: &mut String| {
        let mid = section.iter().find_map(|l| l.strip_prefix("a=mid:"));
        let rewrite = section.first().is_some_and(|l| l.starts_with("m="))
            && mid.is_some_and(|m| bundled.contains(&m) && bundled.first() != Some(&m));
        for l in section.drain(..) {
            if rewrite {
                if l.starts_with("a=candidate:") || l == "a=end-of-candidates" {
                    continue;
                }
                if l.starts_with("a=ice-ufrag:") {
                    out.push_str(&format!("a=ice-ufrag:{ufrag}\r\n"));
                    continue;
                }
                if l.starts_with("a=ice-pwd:") {
                    out.push_str(&format!("a=ice-pwd:{pwd}\r\n"));
                    continue;
                }
            }
            out.push_str(l);
            out.push_str("\r\n");
        }
    };
    for line in sdp.lines().map(str::trim_end) {
        if line.starts_with("m=") {
            flush(&mut section, &mut out);
        }
        if !line.is_empty() {
            section.push(line);
        }
    }
    flush(&mut section, &mut out);
    out
}

/// An `a=extmap:` line of the session part or an audio m-line: its id must fit the one-byte
/// header extension form the answer can accept.
fn check_extmap_id(ext: &str) -> Result<(), SdpError> {
    let id = ext.split_whitespace().next().unwrap_or("");
    let number = id.split('/').next().unwrap_or("");
    if number.parse::<u8>().is_ok_and(|n| EXTMAP_IDS.contains(&n)) {
        Ok(())
    } else {
        Err(SdpError::BadExtmapId(id.chars().take(16).collect()))
    }
}

/// What one attribute line of an audio m-line says: its mid, its Opus payload type (the
/// first `opus/48000`), the audio-level extension's id (the first offered), its direction.
fn audio_attribute(
    line: &str,
    sec: &mut AudioSection,
    opus: &mut Option<u8>,
    audio_level_id: &mut Option<u8>,
) {
    if let Some(mid) = line.strip_prefix("a=mid:") {
        sec.mid = mid.to_string();
    } else if let Some(rtpmap) = line.strip_prefix("a=rtpmap:") {
        let mut it = rtpmap.splitn(2, ' ');
        let pt = it.next().and_then(|p| p.parse::<u8>().ok());
        let codec = it.next().unwrap_or("");
        let codec = codec.to_ascii_lowercase();
        if opus.is_none() && codec.starts_with("opus/48000") {
            *opus = pt;
        }
        if let Some(pt) = pt.filter(|_| codec == "red/48000/2") {
            match sec.red_offers.iter_mut().find(|r| r.0 == pt) {
                Some(r) => r.1 = true,
                None => sec.red_offers.push((pt, true, None)),
            }
        }
    } else if let Some(fb) = line.strip_prefix("a=rtcp-fb:") {
        // Exactly `nack` (`nack pli` is a video keyframe request).
        if let Some((pt, "nack")) = fb.split_once(' ')
            && let Ok(pt) = pt.parse::<u8>()
            && !sec.nack_pts.contains(&pt)
        {
            sec.nack_pts.push(pt);
        }
    } else if let Some(fmtp) = line.strip_prefix("a=fmtp:") {
        let (pt, params) = fmtp.split_once(' ').unwrap_or((fmtp, ""));
        // Bounded like everything else an offer carries: one entry per payload type.
        if let Ok(pt) = pt.parse::<u8>()
            && sec.red_offers.len() < 128
        {
            let params = Some(params.trim().to_owned());
            match sec.red_offers.iter_mut().find(|r| r.0 == pt) {
                Some(r) => r.2 = params,
                None => sec.red_offers.push((pt, false, params)),
            }
        }
    } else if let Some(ext) = line.strip_prefix("a=extmap:") {
        let mut it = ext.split_whitespace();
        let id = it
            .next()
            .and_then(|i| i.split('/').next()?.parse::<u8>().ok());
        if it.next() == Some(AUDIO_LEVEL_URI) && audio_level_id.is_none() {
            *audio_level_id = id;
        }
    } else if let Some(direction) = match line {
        "a=sendrecv" => Some(Direction::SendRecv),
        "a=sendonly" => Some(Direction::SendOnly),
        "a=recvonly" => Some(Direction::RecvOnly),
        "a=inactive" => Some(Direction::Inactive),
        _ => None,
    } {
        sec.direction = direction;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_LIKE: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=mid:0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=sendrecv\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:v\r\na=sendrecv\r\na=rtpmap:96 VP8/90000\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=recvonly\r\na=rtpmap:96 opus/48000/2\r\n";

    /// RED counts only over the section's own Opus: Chromium's `63 111/111`; not a RED over
    /// another codec, nor one without its fmtp.
    #[test]
    fn finds_red_over_the_sections_opus() {
        let sdp = "v=0\r\ns=-\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\na=mid:0\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 63 109\r\na=mid:1\r\na=rtpmap:63 RED/48000/2\r\na=fmtp:63 0/0\r\n\
a=rtpmap:109 opus/48000/2\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 109 120\r\na=mid:2\r\na=rtpmap:109 opus/48000/2\r\na=rtpmap:120 red/48000/2\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 109 121\r\na=mid:3\r\na=rtpmap:109 opus/48000/2\r\na=fmtp:121 109/109/109\r\n\
a=rtpmap:121 red/48000/2\r\n";
        let o = Offer::parse(sdp).expect("parses");
        let red: Vec<_> = o.audio.iter().map(|s| s.red_pt).collect();
        assert_eq!(red, [Some(63), None, None, Some(121)]);
        let nack = sdp
            .replace("a=mid:1\r\n", "a=mid:1\r\na=rtcp-fb:109 nack\r\n")
            .replace("a=mid:2\r\n", "a=mid:2\r\na=rtcp-fb:109 nack pli\r\n")
            .replace("a=mid:0\r\n", "a=mid:0\r\na=rtcp-fb:63 nack\r\n");
        let o = Offer::parse(&nack).expect("parses");
        let nacks: Vec<bool> = o.audio.iter().map(|s| s.nack).collect();
        assert_eq!(
            nacks,
            [false, true, false, false],
            "only plain nack on the section's Opus"
        );
    }

    #[test]
    fn reads_audio_sections_in_order() {
        let o = Offer::parse(CHROME_LIKE).unwrap();
        assert_eq!(o.audio_level_id, Some(1));
        let mids: Vec<_> = o
            .audio
            .iter()
            .map(|s| (s.index, s.mid.as_str(), s.direction, s.opus_pt))
            .collect();
        assert_eq!(
            mids,
            vec![
                (0, "0", Direction::SendRecv, 111),
                (1, "1", Direction::RecvOnly, 111),
                (3, "2", Direction::RecvOnly, 96)
            ]
        );
        assert_eq!(o.slot_sections(2).len(), 2);
        assert_eq!(o.slot_sections(9).len(), 3);
    }

    #[test]
    fn rejects_what_cannot_work() {
        assert!(
            Offer::parse("hello")
                .unwrap_err()
                .to_string()
                .contains("v=0")
        );
        assert!(
            Offer::parse("v=0\r\nm=video 9 X 96\r\na=rtpmap:96 VP8/90000\r\n")
                .unwrap_err()
                .to_string()
                .contains("no audio")
        );
        assert!(
            Offer::parse("v=0\r\nm=audio 9 X 0\r\na=rtpmap:0 PCMU/8000\r\n")
                .unwrap_err()
                .to_string()
                .contains("Opus")
        );
    }

    #[test]
    fn bundle_with_per_mline_credentials_is_unified() {
        let aiortc = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
m=audio 4000 UDP/TLS/RTP/SAVPF 96\r\na=sendrecv\r\na=mid:0\r\na=rtpmap:96 opus/48000/2\r\n\
a=candidate:a 1 udp 1 127.0.0.1 4000 typ host\r\na=end-of-candidates\r\na=ice-ufrag:AAAA\r\na=ice-pwd:pa\r\n\
m=audio 4001 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\na=mid:1\r\na=rtpmap:96 opus/48000/2\r\n\
a=candidate:b 1 udp 1 127.0.0.1 4001 typ host\r\na=end-of-candidates\r\na=ice-ufrag:BBBB\r\na=ice-pwd:pb\r\n";
        let u = unify_bundle_ice(aiortc);
        assert_eq!(u.matches("a=ice-ufrag:AAAA").count(), 2, "{u}");
        assert_eq!(u.matches("a=ice-pwd:pa").count(), 2);
        assert!(!u.contains("BBBB") && !u.contains("4001 typ host"));
        assert!(u.contains("4000 typ host"));
        assert_eq!(Offer::parse(&u).unwrap().audio.len(), 2);
        // Already consistent offers are untouched.
        assert_eq!(unify_bundle_ice(&u), u);
        assert_eq!(unify_bundle_ice(CHROME_LIKE), CHROME_LIKE);
    }

    /// One Opus m-line, then `more` bare ones (the cheapest m-line a hostile client can send).
    fn with_mlines(more: usize) -> String {
        let mut sdp =
            String::from("v=0\r\nm=audio 9 X 111\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\n");
        for _ in 0..more {
            sdp.push_str("m=audio 0 X 111\r\na=rtpmap:111 opus/48000/2\r\n");
        }
        sdp
    }

    #[test]
    fn m_lines_are_capped() {
        assert_eq!(
            Offer::parse(&with_mlines(MAX_MLINES - 1)).map(|o| o.audio.len()),
            Ok(MAX_MLINES)
        );
        assert_eq!(
            Offer::parse(&with_mlines(MAX_MLINES)),
            Err(SdpError::TooManyMLines)
        );
        // Refused at the 17th m-line: 3 000 of them cost no more than 17.
        let huge = with_mlines(3_000);
        let t = std::time::Instant::now();
        assert_eq!(Offer::parse(&huge), Err(SdpError::TooManyMLines));
        assert!(t.elapsed() < std::time::Duration::from_millis(50));
        assert!(
            SdpError::TooManyMLines
                .to_string()
                .contains("more than 16 m-lines"),
            "{}",
            SdpError::TooManyMLines
        );
    }

    #[test]
    fn candidates_are_capped_across_m_lines() {
        let with_candidates = |n: usize| {
            let mut sdp = with_mlines(1);
            for i in 0..n {
                sdp.push_str(&format!(
                    "a=candidate:{i} 1 udp 2130706431 127.0.0.1 {} typ host\r\n",
                    4000 + i
                ));
            }
            sdp
        };
        assert_eq!(
            Offer::parse(&with_candidates(MAX_CANDIDATES)).map(|o| o.candidates),
            Ok(MAX_CANDIDATES)
        );
        assert_eq!(
            Offer::parse(&with_candidates(MAX_CANDIDATES + 1)),
            Err(SdpError::TooManyCandidates)
        );
    }

    #[test]
    fn extmap_ids_must_fit_the_one_byte_header() {
        let with_ext = |id: &str| {
            format!(
                "v=0\r\nm=audio 9 X 111\r\na=extmap:{id} {AUDIO_LEVEL_URI}\r\na=rtpmap:111 opus/48000/2\r\n"
            )
        };
        for ok in ["1", "14", "3/sendrecv"] {
            assert!(Offer::parse(&with_ext(ok)).is_ok(), "{ok}");
        }
        assert_eq!(
            Offer::parse(&with_ext("14")).unwrap().audio_level_id,
            Some(14)
        );
        for bad in ["0", "15", "16", "255", "256", "-1", "x", ""] {
            let e = Offer::parse(&with_ext(bad)).unwrap_err();
            assert!(matches!(e, SdpError::BadExtmapId(_)), "{bad}: {e}");
            assert!(e.to_string().contains("1-14"), "{e}");
        }
        // Session-level extmaps apply to the audio too.
        let session = format!("v=0\r\na=extmap:15 urn:x\r\n{}", &with_ext("1")[5..]);
        assert!(matches!(
            Offer::parse(&session),
            Err(SdpError::BadExtmapId(_))
        ));
        // A video m-line is answered inactive; its ids are not ours to police.
        let video = format!(
            "{}m=video 9 X 96\r\na=extmap:15 urn:x\r\na=rtpmap:96 VP8/90000\r\n",
            with_ext("1")
        );
        assert!(Offer::parse(&video).is_ok());
    }

    #[test]
    fn send_only_mic_is_not_a_slot() {
        let o = Offer::parse(
            "v=0\r\nm=audio 9 X 111\r\na=mid:a\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n",
        )
        .unwrap();
        assert!(o.slot_sections(3).is_empty());
        assert_eq!(o.audio_level_id, None);
    }
}
