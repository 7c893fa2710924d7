//! Real Opus for the bite tests, and the reference tools to judge the files made of it: `sox`
//! makes a tone, `opusenc` encodes it (its packets are what a client sends), `opusinfo` must
//! accept a bite and report its length, `opusdec` decodes it back to PCM, and a Goertzel filter
//! says which tone that PCM is.
//!
//! The tools are Debian's `opus-tools` and `sox`, which `scripts/test` installs; a test that
//! needs them fails with that hint when they are missing (it never passes without checking).

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;

/// Panics, naming the package, if one of the tools does not run.
pub fn require_tools() {
    for (tool, arg) in [
        ("sox", "--version"),
        ("opusenc", "-V"),
        ("opusinfo", "-V"),
        ("opusdec", "-V"),
    ] {
        if Command::new(tool).arg(arg).output().is_err() {
            panic!(
                "{tool} is not installed: apt-get install -y opus-tools sox (scripts/test does)"
            );
        }
    }
}

/// A fresh directory for a test's audio files, under cargo's per-target temp dir.
pub fn workdir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("bite_audio")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create work dir");
    d
}

/// Runs a command and returns its stdout and stderr; panics with both if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// How to encode a tone.
#[derive(Clone, Debug)]
pub struct Tone {
    pub hz: u32,
    pub seconds: f64,
    pub channels: u32,
    /// Extra `opusenc` options (e.g. `--speech --bitrate 10` for SILK, `--hard-cbr`).
    pub opusenc: Vec<String>,
    /// Amplitude, 0 to 1 (default 0.5: -9 dBov); 0 is digital silence.
    pub volume: f64,
}

impl Tone {
    pub fn new(hz: u32, seconds: f64) -> Tone {
        Tone {
            hz,
            seconds,
            channels: 1,
            opusenc: vec![],
            volume: 0.5,
        }
    }

    /// Digital silence, as a muted microphone sends it when DTX is off.
    pub fn silence(seconds: f64) -> Tone {
        Tone {
            volume: 0.0,
            ..Tone::new(440, seconds)
        }
    }
}

/// Encodes the tone with `sox` and `opusenc` (20 ms frames) in `dir` and returns its Opus
/// packets, without the two header packets.
pub fn encode_tone(dir: &Path, tone: &Tone) -> Vec<Bytes> {
    let name = format!("tone-{}hz-{}ch-{}", tone.hz, tone.channels, tone.volume);
    let wav = dir.join(format!("{name}.wav"));
    let opus = dir.join(format!("{name}.opus"));
    run(Command::new("sox")
        .args([
            "-n",
            "-r",
            "48000",
            "-c",
            &tone.channels.to_string(),
            "-b",
            "16",
        ])
        .arg(&wav)
        .args([
            "synth",
            &format!("{:.3}", tone.seconds),
            "sine",
            &tone.hz.to_string(),
            "vol",
            &tone.volume.to_string(),
        ]));
    run(Command::new("opusenc")
        .args(["--quiet", "--framesize", "20"])
        .args(&tone.opusenc)
        .arg(&wav)
        .arg(&opus));
    ogg_packets(&std::fs::read(&opus).expect("read opusenc output")).split_off(2)
}

/// Every packet of an Ogg file (headers included), in order.
pub fn ogg_packets(file: &[u8]) -> Vec<Bytes> {
    let mut r = ogg::PacketReader::new(std::io::Cursor::new(file));
    let mut packets = Vec::new();
    while let Some(p) = r.read_packet().expect("a well-formed Ogg file") {
        packets.push(Bytes::from(p.data));
    }
    packets
}

/// What `opusinfo` says about a file it accepted.
#[derive(Clone, Debug)]
pub struct OpusInfo {
    pub text: String,
    /// "Playback length", in milliseconds.
    pub playback_ms: f64,
    pub channels: u32,
    pub pre_skip: u32,
    /// `KEY=value` user comments.
    pub comments: Vec<(String, String)>,
}

impl OpusInfo {
    pub fn comment(&self, key: &str) -> Option<&str> {
        self.comments
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Runs `opusinfo` on `path`; panics if it fails or warns.
pub fn opusinfo(path: &Path) -> OpusInfo {
    let text = run(Command::new("opusinfo").arg(path));
    let lower = text.to_lowercase();
    assert!(
        !lower.contains("warning") && !lower.contains("error"),
        "opusinfo complains about {}:\n{text}",
        path.display()
    );
    let field = |name: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name:?} in opusinfo output:\n{text}"))
            .to_string()
    };
    // "Playback length: 0m:01.000s" (also "1h:02m:03.456s" for long files).
    let length = field("Playback length:");
    let mut playback_ms = 0.0;
    for part in length.trim_end_matches('s').split(':') {
        let (num, unit) = part.split_at(part.len() - usize::from(part.ends_with(['h', 'm'])));
        let v: f64 = num
            .parse()
            .unwrap_or_else(|_| panic!("bad playback length {length:?}"));
        playback_ms += match unit {
            "h" => v * 3_600_000.0,
            "m" => v * 60_000.0,
            _ => v * 1000.0,
        };
    }
    let channels = field("Channels:").parse().expect("channels");
    let pre_skip = field("Pre-skip:").parse().expect("pre-skip");
    let comments = text
        .lines()
        .filter(|l| l.starts_with('\t'))
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(k, _)| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    OpusInfo {
        text,
        playback_ms,
        channels,
        pre_skip,
        comments,
    }
}

/// Decodes `path` with `opusdec` at 48 kHz and returns (channels, interleaved samples).
pub fn opusdec(path: &Path) -> (u16, Vec<i16>) {
    let wav = path.with_extension("decoded.wav");
    run(Command::new("opusdec")
        .args(["--quiet", "--rate", "48000", "--force-wav"])
        .arg(path)
        .arg(&wav));
    wav_samples(&std::fs::read(&wav).expect("read decoded wav"))
}

/// The channel count and interleaved 16-bit samples of a WAV file.
pub fn wav_samples(wav: &[u8]) -> (u16, Vec<i16>) {
    let mut at = 12;
    let mut channels = 0;
    while at + 8 <= wav.len() {
        let id = &wav[at..at + 4];
        let len = u32::from_le_bytes(wav[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        if id == b"fmt " {
            channels = u16::from_le_bytes([wav[at + 10], wav[at + 11]]);
            assert_eq!(
                u16::from_le_bytes([wav[at + 22], wav[at + 23]]),
                16,
                "bits per sample"
            );
        }
        if id == b"data" {
            let end = (at + 8 + len).min(wav.len());
            let samples = wav[at + 8..end]
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            return (channels, samples);
        }
        at += 8 + len + len % 2;
    }
    panic!("no data chunk in the WAV file");
}

/// The first channel of interleaved samples.
pub fn first_channel(channels: u16, samples: Vec<i16>) -> Vec<i16> {
    samples
        .into_iter()
        .step_by(usize::from(channels.max(1)))
        .collect()
}

/// The middle of a signal: `s.len() / 2` samples from a quarter in, cut to whole multiples of
/// 2400 samples (50 ms: whole periods of every multiple of 20 Hz, so those bins are centred).
fn middle(s: &[i16]) -> &[i16] {
    let n = (s.len() / 2) / 2400 * 2400;
    assert!(n > 0, "too little audio to analyse: {} samples", s.len());
    &s[s.len() / 4..s.len() / 4 + n]
}

/// Goertzel power of `x` at `hz` (48 kHz), normalised so that a pure tone at `hz` gives about
/// its energy.
fn goertzel(x: &[i16], hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / 48_000.0;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s0 = f64::from(v) + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    2.0 * (s1 * s1 + s2 * s2 - c * s1 * s2) / x.len() as f64
}

/// Share of the signal's power at `hz`, over the middle of the signal: about 1 for a clean
/// tone at `hz`, about 0 for silence, noise or another tone.
pub fn tone_share(s: &[i16], hz: u32) -> f64 {
    let x = middle(s);
    let energy: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    goertzel(x, f64::from(hz)) / energy.max(1.0)
}

/// The strongest frequency between 100 Hz and 4 kHz, in 20 Hz steps.
pub fn dominant_hz(s: &[i16]) -> u32 {
    let x = middle(s);
    (5..=200)
        .map(|k| k * 20)
        .max_by(|&a, &b| goertzel(x, f64::from(a)).total_cmp(&goertzel(x, f64::from(b))))
        .expect("candidates")
}
