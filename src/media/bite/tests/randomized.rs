//! Thousands of random packet sequences (loss, DTX, duplicates, reordering, restarts, invalid
//! payloads): nothing panics and every bite keeps the invariants.

use super::*;

/// splitmix64: a small deterministic generator, so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// TOC bytes of several frame sizes and frame counts, with their durations.
fn random_payload(rng: &mut Rng) -> Bytes {
    let toc = match rng.below(10) {
        0 => 0x08,        // SILK NB 20 ms
        1 => 0x18,        // SILK NB 60 ms
        2 => 0xe0,        // CELT FB 2.5 ms
        3 => 0x60 | 0x04, // Hybrid SWB 10 ms, stereo
        4 => 0x7b,        // Hybrid FB 20 ms, code 3
        _ => 0xf8,        // CELT FB 20 ms
    };
    let mut v = vec![toc];
    if toc & 3 == 3 {
        v.push(1 + rng.below(3) as u8);
    }
    for _ in 0..rng.below(40) {
        v.push(rng.next() as u8);
    }
    if toc & 3 == 3 {
        // CBR code 3: the data must split evenly into the M frames.
        let m = usize::from(v[1] & 0x3f);
        let data = v.len() - 2;
        v.truncate(2 + data - data % m);
    }
    Bytes::from(v)
}

fn check_bites(bites: &[CutBite], max_samples: u64) {
    for b in bites {
        assert!(!b.packets.is_empty());
        let last = b.packets.last().unwrap();
        assert!(last.speech, "a bite ends with speech");
        assert_eq!(last.end(), b.duration);
        if !b.continued {
            assert!(b.packets[0].speech, "a fresh bite starts with speech");
            assert_eq!(b.packets[0].offset, 0);
        }
        for w in b.packets.windows(2) {
            assert!(w[0].offset < w[1].offset, "offsets strictly increase");
            assert!(w[0].end() <= w[1].offset, "packets do not overlap");
        }
        for p in &b.packets {
            assert_eq!(opus::validate(&p.payload), Ok(p.samples));
        }
        let longest = b
            .packets
            .iter()
            .map(|p| u64::from(p.samples))
            .max()
            .unwrap_or(0);
        assert!(
            b.duration <= max_samples.max(longest),
            "{} > {}",
            b.duration,
            max_samples
        );
    }
    for w in bites.windows(2) {
        assert!(
            w[0].media_start + w[0].duration <= w[1].media_start,
            "bites overlap in media time"
        );
        if w[1].continued {
            assert_eq!(w[0].end, EndReason::MaxLength);
            assert_eq!(w[1].media_start, w[0].media_start + w[0].duration);
            assert_eq!(w[1].start_unix_ms, w[0].start_unix_ms + w[0].duration_ms());
        }
    }
}

#[test]
fn randomized_streams_keep_the_invariants() {
    let mut rng = Rng(0x5eed);
    let t0 = Instant::now();
    let mut total_bites = 0;
    let mut continued = 0;
    let mut seen = [0u64; 5];
    for _run in 0..3000 {
        let config = CutterConfig {
            silence: Duration::from_millis(50 + rng.below(1000)),
            max_len: Duration::from_millis(100 + rng.below(3000)),
        };
        let max_samples = samples_in(config.max_len);
        let mut cutter = BiteCutter::new(config);
        let mut ssrc = rng.next() as u32;
        let mut seq = rng.next() as u16;
        let mut ts = rng.next() as u32;
        let mut ms = rng.below(1 << 40);
        let mut speech = false;
        let mut held: Option<AudioPacket> = None;
        let mut last: Option<AudioPacket> = None;
        let mut bites = Vec::new();
        for _ in 0..rng.below(300) {
            if rng.chance(10) {
                speech = !speech;
            }
            let payload = random_payload(&mut rng);
            let dur = opus::packet_samples(&payload).unwrap_or(960);
            let mut p = AudioPacket {
                ssrc,
                seq,
                timestamp: ts,
                payload,
                speech,
            };
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(dur);
            ms += u64::from(dur) / 48 + rng.below(5);
            match rng.below(100) {
                0..=4 => continue, // lost
                5..=7 => {
                    // DTX: a jump of 400 ms in media and arrival time.
                    ts = ts.wrapping_add(19_200);
                    ms += 400;
                    p.speech = false;
                }
                8..=9 => ms += rng.below(2000), // a stall
                10 => p.payload = Bytes::new(),
                11 => p.payload = Bytes::from_static(&[0x0b, 0]),
                12 => ssrc = rng.next() as u32,
                13 => ts = rng.next() as u32,
                14 => seq = rng.next() as u16,
                15 => {
                    p.seq = rng.next() as u16;
                    p.timestamp = rng.next() as u32;
                }
                // Reorder: hold this one back until after the next.
                16..=19 if held.is_none() => {
                    held = Some(p);
                    continue;
                }
                20..=22 => {
                    if let Some(d) = last.clone() {
                        let now = t0 + Duration::from_millis(ms);
                        cutter.handle_packet(d, now, ms);
                    }
                }
                23..=25 => cutter.tick(t0 + Duration::from_millis(ms + rng.below(1500))),
                // A timestamp that reaches back into the previous packet.
                26..=27 => p.timestamp = p.timestamp.wrapping_sub(1 + rng.below(900) as u32),
                _ => {}
            }
            let now = t0 + Duration::from_millis(ms);
            last = Some(p.clone());
            cutter.handle_packet(p, now, ms);
            if let Some(h) = held.take() {
                cutter.handle_packet(h, now, ms);
            }
            bites.extend(std::iter::from_fn(|| cutter.poll_bite()));
        }
        cutter.finish(t0 + Duration::from_millis(ms + 1));
        bites.extend(std::iter::from_fn(|| cutter.poll_bite()));
        assert!(!cutter.is_open());
        let st = cutter.stats();
        assert_eq!(st.bites, bites.len() as u64);
        check_bites(&bites, max_samples);
        total_bites += bites.len();
        continued += bites.iter().filter(|b| b.continued).count();
        seen[0] += st.invalid;
        seen[1] += st.duplicate;
        seen[2] += st.late;
        seen[3] += st.overlapping;
        seen[4] += st.restarts;
    }
    // The generator must reach every path for the checks to mean anything.
    assert!(total_bites > 3000, "{total_bites}");
    assert!(continued > 100, "{continued}");
    assert!(seen.iter().all(|&n| n > 100), "{seen:?}");
}
