//! Fuzz and property targets for the SDP facts front and the worker read from an offer
//! (`Offer::parse`, src/media/sdp.rs) and the BUNDLE normalisation the worker applies before
//! rtc sees an offer (`unify_bundle_ice`): no panic on any text, a parsed offer is
//! consistent, and normalising is idempotent and changes none of the facts.
//!
//! Plain `cargo test` runs each target on a bounded number of random inputs (`ITERATIONS`);
//! `cargo bolero test <target>` runs it under libFuzzer (README, "How to fuzz").

#[path = "common/fuzz_budget.rs"]
mod fuzz_budget;

use beep_webrtc::media::sdp::{EXTMAP_IDS, MAX_CANDIDATES, MAX_MLINES, Offer, unify_bundle_ice};
use bolero::{TypeGenerator, check, produce};

/// Random inputs per target under `cargo test`.
const ITERATIONS: usize = 5_000;

/// Any text: parsed or refused, never a panic.
#[test]
fn fuzz_offer_parse() {
    check!()
        .with_iterations(fuzz_budget::iterations(ITERATIONS))
        .for_each(|bytes: &[u8]| {
            offer_properties(&String::from_utf8_lossy(bytes));
        });
}

/// Offers assembled from SDP-shaped lines (m-lines, mids, rtpmaps, extmaps, directions,
/// candidates, odd whitespace and garbage), so the random inputs get past `v=0`.
#[test]
fn fuzz_offer_parse_structured() {
    check!()
        .with_type::<GenSdp>()
        .with_iterations(fuzz_budget::iterations(ITERATIONS))
        .for_each(|g| {
            offer_properties(&g.render());
        });
}

/// `unify_bundle_ice` on any text never panics, is idempotent, and keeps the offer's facts.
#[test]
fn fuzz_bundle_normalisation() {
    check!()
        .with_iterations(fuzz_budget::iterations(ITERATIONS))
        .for_each(|bytes: &[u8]| {
            bundle_properties(&String::from_utf8_lossy(bytes));
        });
}

/// The same on offers with BUNDLE groups over shared and per-m-line credentials (aiortc's
/// shape, the reason the normalisation exists).
#[test]
fn fuzz_bundle_normalisation_structured() {
    check!()
        .with_type::<GenSdp>()
        .with_iterations(fuzz_budget::iterations(ITERATIONS))
        .for_each(|g| {
            bundle_properties(&g.render());
        });
}

fn offer_properties(sdp: &str) {
    let Ok(offer) = Offer::parse(sdp) else {
        return;
    };
    assert!(sdp.trim_start().starts_with("v=0"));
    assert!(!offer.audio.is_empty(), "an accepted offer has audio");
    // What front accepts is within the caps of issue 11 (point 7).
    assert!(
        offer.audio.iter().all(|a| a.index < MAX_MLINES),
        "{MAX_MLINES} m-lines at most"
    );
    assert!(offer.candidates <= MAX_CANDIDATES);
    assert!(
        offer
            .audio_level_id
            .is_none_or(|id| EXTMAP_IDS.contains(&id))
    );
    for w in offer.audio.windows(2) {
        assert!(w[0].index < w[1].index, "m-line order: {:?}", offer.audio);
    }
    for a in &offer.audio {
        assert!(!a.mid.is_empty(), "every audio m-line has a mid");
    }
    for k in 0..=offer.audio.len() + 1 {
        let slots = offer.slot_sections(k);
        assert!(slots.len() <= k);
        assert!(slots.iter().all(|s| s.direction.client_receives()));
    }
}

fn bundle_properties(sdp: &str) {
    let once = unify_bundle_ice(sdp);
    let twice = unify_bundle_ice(&once);
    assert_eq!(twice, once, "not idempotent on {sdp:?}");
    // Only ICE credentials and candidates may change: the facts the slot plan reads stay.
    if let Ok(before) = Offer::parse(sdp) {
        let after = Offer::parse(&once)
            .unwrap_or_else(|e| panic!("normalising broke the offer ({e}): {sdp:?} → {once:?}"));
        assert_eq!(after.audio, before.audio, "{sdp:?} → {once:?}");
        assert_eq!(
            after.audio_level_id, before.audio_level_id,
            "{sdp:?} → {once:?}"
        );
    }
}

#[derive(Debug, TypeGenerator)]
struct GenSdp {
    /// `a=group:BUNDLE` over these mids.
    bundle: Option<Vec<u8>>,
    /// More lines before the first m-line.
    #[generator(produce::<Vec<GenLine>>().with().len(0usize..=6))]
    session: Vec<GenLine>,
    #[generator(produce::<Vec<GenSection>>().with().len(0usize..=8))]
    sections: Vec<GenSection>,
    /// `\r\n` or `\n` line ends.
    crlf: bool,
    /// Blank or whitespace lines before `v=0`.
    lead: u8,
}

/// An m-line with, usually, what a real one has: a mid, ICE credentials (shared with the
/// other m-lines, or its own), Opus; then arbitrary lines.
#[derive(Debug, TypeGenerator)]
struct GenSection {
    kind: u8,
    mid: Option<u8>,
    creds: Option<(u8, u8)>,
    opus: Option<u8>,
    candidates: u8,
    #[generator(produce::<Vec<GenLine>>().with().len(0usize..=6))]
    lines: Vec<GenLine>,
}

#[derive(Debug, TypeGenerator)]
struct GenLine {
    kind: GenLineKind,
    /// Whitespace around the line: mostly none.
    before: u8,
    after: u8,
}

#[derive(Debug, TypeGenerator)]
enum GenLineKind {
    Bundle(#[generator(produce::<Vec<u8>>().with().len(0usize..=5))] Vec<u8>),
    Mid(u8),
    Ufrag(u8),
    Pwd(u8),
    Candidate(u8),
    EndOfCandidates,
    Rtpmap(u8, u8),
    Extmap(u8, bool, u8),
    Direction(u8),
    Blank,
    Raw(#[generator(produce::<String>().with().len(0usize..=24))] String),
}

const MIDS: [&str; 6] = ["0", "1", "2", "audio", "a b", ""];
const CODECS: [&str; 6] = [
    "opus/48000/2",
    "OPUS/48000",
    "PCMU/8000",
    "opus/16000",
    "telephone-event/48000",
    "",
];
const DIRECTIONS: [&str; 5] = [
    "a=sendrecv",
    "a=sendonly",
    "a=recvonly",
    "a=inactive",
    "a=sendrecv ",
];
const SPACES: [&str; 5] = ["", " ", "\t", "\r", "  \u{a0}"];

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[usize::from(i) % list.len()]
}

impl GenLine {
    fn plain(kind: GenLineKind) -> String {
        GenLine {
            kind,
            before: 0,
            after: 0,
        }
        .render()
    }

    fn render(&self) -> String {
        let body = match &self.kind {
            GenLineKind::Bundle(mids) => format!(
                "a=group:BUNDLE {}",
                mids.iter()
                    .map(|m| pick(&MIDS, *m))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            GenLineKind::Mid(m) => format!("a=mid:{}", pick(&MIDS, *m)),
            GenLineKind::Ufrag(u) => format!("a=ice-ufrag:u{}", u % 4),
            GenLineKind::Pwd(p) => format!("a=ice-pwd:p{}", p % 4),
            GenLineKind::Candidate(c) => {
                format!(
                    "a=candidate:{c} 1 udp 2130706431 127.0.0.1 {} typ host",
                    5000 + u16::from(*c)
                )
            }
            GenLineKind::EndOfCandidates => "a=end-of-candidates".into(),
            GenLineKind::Rtpmap(pt, codec) => format!("a=rtpmap:{pt} {}", pick(&CODECS, *codec)),
            GenLineKind::Extmap(id, level, suffix) => format!(
                "a=extmap:{id}{} {}",
                if suffix % 3 == 0 { "/sendrecv" } else { "" },
                if *level {
                    beep_webrtc::media::sdp::AUDIO_LEVEL_URI
                } else {
                    "urn:ietf:params:rtp-hdrext:sdes:mid"
                }
            ),
            GenLineKind::Direction(d) => pick(&DIRECTIONS, *d).to_string(),
            GenLineKind::Blank => String::new(),
            GenLineKind::Raw(s) => s.clone(),
        };
        let space = |i: u8| if i < 224 { "" } else { pick(&SPACES, i) };
        format!("{}{body}{}", space(self.before), space(self.after))
    }
}

impl GenSdp {
    fn render(&self) -> String {
        let mut lines: Vec<String> = Vec::new();
        for _ in 0..self.lead % 3 {
            lines.push(pick(&SPACES, self.lead / 3).to_string());
        }
        lines.push("v=0".into());
        lines.push("o=- 1 1 IN IP4 127.0.0.1".into());
        lines.push("s=-".into());
        lines.push("t=0 0".into());
        if let Some(mids) = &self.bundle {
            lines.push(GenLine::plain(GenLineKind::Bundle(mids.clone())));
        }
        lines.extend(self.session.iter().map(GenLine::render));
        for s in &self.sections {
            let kind = match s.kind % 5 {
                0..=2 => "audio",
                3 => "video",
                _ => "application",
            };
            lines.push(format!("m={kind} 9 UDP/TLS/RTP/SAVPF 111 0"));
            if let Some(m) = s.mid {
                lines.push(GenLine::plain(GenLineKind::Mid(m)));
            }
            if let Some((u, p)) = s.creds {
                // Mostly the same credentials everywhere, as browsers do.
                let (u, p) = if u < 128 { (0, 0) } else { (u, p) };
                lines.push(GenLine::plain(GenLineKind::Ufrag(u)));
                lines.push(GenLine::plain(GenLineKind::Pwd(p)));
            }
            for c in 0..s.candidates % 4 {
                lines.push(GenLine::plain(GenLineKind::Candidate(c)));
            }
            if let Some(pt) = s.opus {
                lines.push(format!("a=rtpmap:{} opus/48000/2", 96 + pt % 32));
            }
            lines.extend(s.lines.iter().map(GenLine::render));
        }
        let end = if self.crlf { "\r\n" } else { "\n" };
        let mut out = lines.join(end);
        out.push_str(end);
        out
    }
}
