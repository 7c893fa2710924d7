//! Audit tests on real Opus: libopus encodes what a client would send (syllables of a voice,
//! digital silence, quiet noise), each packet claims a level, the audit says what it credits.

use super::*;

const FRAME: usize = 960; // 20 ms at 48 kHz

/// A voice-like signal: a 150 Hz buzz with harmonics, in syllables of 200 ms (20 ms attack)
/// separated by 100 ms of room noise, peaks between -30 and -12 dBFS. Deterministic.
fn syllables(seconds: f64) -> Vec<i16> {
    let n = (seconds * 48_000.0) as usize;
    let mut rng = SmallRng::seed_from_u64(7);
    (0..n)
        .map(|i| {
            let t = i as f64 / 48_000.0;
            let syllable = (t / 0.3) as u64;
            let within = t - syllable as f64 * 0.3;
            let peak_db = -30.0 + (syllable * 7 % 19) as f64;
            let envelope = if within < 0.2 {
                10f64.powf(peak_db / 20.0) * (within / 0.02).min(1.0)
            } else {
                0.0
            };
            let voice: f64 = (1..6)
                .map(|h| (2.0 * std::f64::consts::PI * 150.0 * h as f64 * t).sin() / h as f64)
                .sum::<f64>()
                / 1.5;
            let noise = (rng.random::<f64>() - 0.5) * 0.0006;
            ((envelope * voice + noise) * 32767.0) as i16
        })
        .collect()
}

/// 20 ms frames encoded as a WebRTC client would (VoIP, 32 kbit/s, DTX off), each with the level
/// of the frame as an honest client measures it.
fn encode(pcm: &[i16]) -> Vec<(Vec<u8>, f32)> {
    encode_with(pcm, libopus::Application::Voip, 32_000)
}

fn encode_with(pcm: &[i16], app: libopus::Application, bits: i32) -> Vec<(Vec<u8>, f32)> {
    let mut enc = libopus::Encoder::new(48_000, libopus::Channels::Mono, app).expect("encoder");
    enc.set_bitrate(libopus::Bitrate::Bits(bits))
        .expect("bitrate");
    pcm.chunks_exact(FRAME)
        .map(|frame| {
            let packet = enc.encode_vec(frame, 1_500).expect("encode");
            (packet, level_db(frame))
        })
        .collect()
}

fn claim(db: f32) -> Loudness {
    loudness_of(db)
}

/// Runs `packets` (with the claims given) through a fresh audit at 50 packets/s.
fn audit(packets: &[(Vec<u8>, Loudness)], budget: &mut DecodeBudget) -> Vec<Checked> {
    audit_seeded(packets, budget, 1)
}

fn audit_seeded(
    packets: &[(Vec<u8>, Loudness)],
    budget: &mut DecodeBudget,
    seed: u64,
) -> Vec<Checked> {
    let mut audit = LevelAudit::new(seed);
    let t0 = Instant::now();
    packets
        .iter()
        .enumerate()
        .map(|(i, (p, c))| audit.check(*c, p, t0 + Duration::from_millis(20 * i as u64), budget))
        .collect()
}

#[test]
fn an_honest_voice_is_believed_and_costs_few_decodes() {
    // SILK at low rates, the usual WebRTC setting (hybrid), and CELT at a music rate.
    for (app, bits) in [
        (libopus::Application::Voip, 6_000),
        (libopus::Application::Voip, 10_000),
        (libopus::Application::Voip, 32_000),
        (libopus::Application::Audio, 96_000),
    ] {
        let packets: Vec<_> = encode_with(&syllables(30.0), app, bits)
            .into_iter()
            .map(|(p, db)| (p, claim(db)))
            .collect();
        // Different dice check different packets.
        let checked: Vec<Checked> = (1..=4)
            .flat_map(|seed| audit_seeded(&packets, &mut DecodeBudget::default(), seed))
            .collect();
        let packets: Vec<_> = packets.iter().cycle().take(checked.len()).collect();
        let lowered: Vec<_> = checked
            .iter()
            .zip(&packets)
            .enumerate()
            .filter(|(_, (c, (_, claimed)))| c.loudness != *claimed)
            .map(|(i, (c, (_, claimed)))| (i, claimed.db(), c.loudness.db()))
            .collect();
        let refused = checked.iter().filter(|c| c.refused).count();
        let decoded = checked.iter().filter(|c| c.decoded).count();
        let speech = packets
            .iter()
            .filter(|(_, c)| c.is_speech(SPEECH_THRESHOLD_DBOV))
            .count();
        println!(
            "{app:?} {bits} bit/s: {} packets, {speech} claim speech, decoded {decoded}, \
             refused {refused}; lowered (packet, claim, credit): {lowered:?}",
            packets.len()
        );
        assert!(speech > packets.len() / 2, "the test voice must talk");
        assert_eq!(refused, 0, "an honest claim was refused");
        // Early in a run a decoder that has not heard the last packets reads low, so an honest
        // claim may be credited a little less there: rarely, by little, and still as speech.
        assert!(lowered.len() * 200 < packets.len(), "too many lowered");
        assert!(
            lowered
                .iter()
                .all(|(_, claim, credit)| claim - credit <= 15.0 && *credit >= 67.0),
            "an honest claim was lowered by much"
        );
        // The pauses between syllables (100 ms) are shorter than a spurt gap, so after the
        // first run only the random ones: a small share of the packets.
        assert!(
            decoded * 10 < packets.len(),
            "{decoded} of {} decoded",
            packets.len()
        );
    }
}

#[test]
fn silence_stamped_0_dbov_is_silence_from_its_first_packet() {
    // Real Opus of digital silence (3+ bytes a packet: DTX is off), every packet claiming 0 dBov.
    let packets: Vec<_> = encode(&vec![0; FRAME * 250])
        .into_iter()
        .map(|(p, _)| (p, claim(127.0)))
        .collect();
    assert!(packets.iter().all(|(p, _)| p.len() > 2));
    let checked = audit(&packets, &mut DecodeBudget::default());
    for (i, c) in checked.iter().enumerate() {
        assert!(
            !c.loudness.is_speech(SPEECH_THRESHOLD_DBOV),
            "packet {i} credited as speech: {c:?}"
        );
        assert!(c.decoded, "packet {i} not decoded");
    }
    assert!(checked.iter().filter(|c| c.refused).count() > 200);

    // Alternating 0 dBov and quiet claims does not end the checks where the liar wants.
    let alternating: Vec<_> = packets
        .iter()
        .enumerate()
        .map(|(i, (p, _))| (p.clone(), claim(if i % 2 == 0 { 127.0 } else { 10.0 })))
        .collect();
    let checked = audit(&alternating, &mut DecodeBudget::default());
    assert!(
        checked
            .iter()
            .all(|c| !c.loudness.is_speech(SPEECH_THRESHOLD_DBOV)),
        "an alternating liar was credited with speech"
    );
}

#[test]
fn quiet_noise_claimed_loud_is_credited_with_its_own_level() {
    // Noise at about -75 dBov, claimed at -10.
    let mut rng = SmallRng::seed_from_u64(3);
    let noise: Vec<i16> = (0..FRAME * 200)
        .map(|_| ((rng.random::<f64>() - 0.5) * 2.0 * 0.0003 * 32767.0) as i16)
        .collect();
    let packets = encode(&noise);
    let true_db = packets[100].1;
    let claimed: Vec<_> = packets
        .into_iter()
        .map(|(p, _)| (p, claim(117.0)))
        .collect();
    let checked = audit(&claimed, &mut DecodeBudget::default());
    // After the first run: distrusted, credited with what it sounds like (± the tolerance).
    for c in &checked[RUN as usize..] {
        assert!(
            c.loudness.db() <= true_db + STRIKE_TOLERANCE_DB,
            "{c:?} vs {true_db}"
        );
        assert!(
            !c.loudness.is_speech(SPEECH_THRESHOLD_DBOV),
            "{c:?} vs {true_db}"
        );
    }
}

#[test]
fn a_lie_in_the_middle_of_a_spurt_is_found_and_paroled_after_honesty() {
    // One client's stream: 5 s of voice, 10 s of digital silence claimed at 0 dBov (no pause
    // in the claims: the spurt goes on), 15 s of voice claimed honestly.
    let mut pcm = syllables(5.0);
    pcm.extend(vec![0; FRAME * 500]);
    pcm.extend(syllables(15.0));
    let packets: Vec<(Vec<u8>, Loudness)> = encode(&pcm)
        .into_iter()
        .enumerate()
        .map(|(i, (p, db))| (p, claim(if (250..750).contains(&i) { 127.0 } else { db })))
        .collect();
    let checked = audit(&packets, &mut DecodeBudget::default());
    let lie = &checked[250..750];
    let found = lie
        .iter()
        .position(|c| !c.loudness.is_speech(SPEECH_THRESHOLD_DBOV))
        .expect("the lie is never found");
    println!("the lie was found at its packet {found}");
    assert!(found < 300, "found only after {found} packets");
    assert!(
        lie[found..]
            .iter()
            .all(|c| !c.loudness.is_speech(SPEECH_THRESHOLD_DBOV)),
        "a lie was credited after it was found"
    );
    // Honest again: believed while distrusted (every packet decoded), trusted after PAROLE.
    // (A refusal is known one packet late: the lie's last claim is refused at packet 750.)
    let after = &checked[751..];
    assert!(
        after.iter().all(|c| !c.refused),
        "an honest claim was refused"
    );
    let parole = (PAROLE.as_millis() / 20) as usize;
    assert!(after[..parole - 10].iter().all(|c| c.decoded));
    let decoded_late = after[parole + 10..].iter().filter(|c| c.decoded).count();
    assert!(
        decoded_late * 4 < after.len() - parole - 10,
        "still distrusted"
    );
}

#[test]
fn liars_cannot_spend_the_checks_of_honest_members() {
    let mut budget = DecodeBudget::new(200, 100);
    let t0 = Instant::now();
    let silence = encode(&vec![0; FRAME * 50]);
    let voice = encode(&syllables(1.0));
    let mut liars: Vec<LevelAudit> = (0..20).map(LevelAudit::new).collect();
    let mut honest = LevelAudit::new(99);
    let mut honest_credited = 0;
    for i in 0..50 {
        let now = t0 + Duration::from_millis(20 * i as u64);
        for liar in &mut liars {
            let c = liar.check(claim(127.0), &silence[i].0, now, &mut budget);
            assert!(!c.loudness.is_speech(SPEECH_THRESHOLD_DBOV), "{c:?}");
        }
        let (p, db) = &voice[i];
        let c = honest.check(claim(*db), p, now, &mut budget);
        if c.loudness == claim(*db) {
            honest_credited += 1;
        }
    }
    // 20 liars at 50 packets/s want 1 000 decodes a second from a budget of 200: their first
    // checks find them out, then they get silence, and the honest member's checks are still
    // paid for.
    assert!(liars.iter().all(LevelAudit::distrusted));
    assert!(!honest.distrusted());
    assert!(honest_credited >= 45, "{honest_credited} of 50");
}

#[test]
fn undecodable_or_odd_payloads_are_silence_and_never_panic() {
    let mut audit = LevelAudit::new(5);
    let mut budget = DecodeBudget::default();
    let t0 = Instant::now();
    let odd: [&[u8]; 5] = [
        &[],
        &[0xFF],
        &[0xFB, 0x00],
        &[0x03, 0xFF, 0xFF, 0xFF],
        &[0u8; 1500],
    ];
    for (i, p) in odd.iter().cycle().take(100).enumerate() {
        let c = audit.check(
            claim(127.0),
            p,
            t0 + Duration::from_millis(20 * i as u64),
            &mut budget,
        );
        assert!(!c.loudness.is_speech(SPEECH_THRESHOLD_DBOV), "{p:?}: {c:?}");
    }
    assert_eq!(level_db(&[]), 0.0);
    assert_eq!(level_db(&[0; 10]), 0.0);
    assert!((level_db(&[i16::MAX, i16::MIN]) - 127.0).abs() < 0.01);
}

/// For any packets, claims and timing: no panic, a credit is never louder than its claim, and a
/// claim of no speech is never decoded unless the member is distrusted.
#[test]
fn fuzz_never_louder_than_claimed() {
    let iterations = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1_000);
    let t0 = Instant::now();
    bolero::check!()
        .with_type::<Vec<(u8, u8, Vec<u8>)>>()
        .with_iterations(iterations)
        .for_each(|packets: &Vec<(u8, u8, Vec<u8>)>| {
            let mut audit = LevelAudit::new(packets.len() as u64);
            let mut budget = DecodeBudget::new(50, 20);
            let mut now = t0;
            for (dbov, gap_ms, payload) in packets {
                now += Duration::from_millis(u64::from(*gap_ms));
                let claim = Loudness::of_packet(Some(*dbov), payload.len());
                let was_distrusted = audit.distrusted();
                let c = audit.check(claim, payload, now, &mut budget);
                assert!(c.loudness.db() <= claim.db(), "{claim:?} credited {c:?}");
                if !claim.is_speech(SPEECH_THRESHOLD_DBOV) && !was_distrusted {
                    assert_eq!(c.loudness, claim);
                }
            }
        });
}
