//! Ogg Opus writer tests: pages, granules, CRC, gaps, read back with the ogg crate.

use super::super::bite::{BitePacket, EndReason};
use super::*;
use bytes::Bytes;
use std::io::Cursor;

const TAGS: BiteTags<'static> = BiteTags {
    conversation: "conv-1",
    user: "user-2",
    client: "client-3",
    start_unix_ms: 1_700_000_000_123,
};

/// An Opus packet of configuration `config`, code 0, `len` bytes in all.
fn pkt(config: u8, stereo: bool, len: usize) -> Bytes {
    let mut v = vec![(config << 3) | if stereo { 4 } else { 0 }];
    v.extend((1..len).map(|i| i as u8));
    Bytes::from(v)
}

fn bite(packets: Vec<(u64, Bytes)>, duration: u64) -> CutBite {
    CutBite {
        start_unix_ms: 1_700_000_000_123,
        duration,
        media_start: 0,
        packets: packets
            .into_iter()
            .map(|(offset, payload)| BitePacket {
                offset,
                samples: opus::packet_samples(&payload).unwrap_or(0),
                speech: true,
                payload,
            })
            .collect(),
        end: EndReason::Silence,
        continued: false,
    }
}

/// `count` contiguous packets of configuration `config`.
fn contiguous(config: u8, count: u64) -> CutBite {
    let n = u64::from(opus::frame_samples(config << 3));
    bite(
        (0..count)
            .map(|i| (i * n, pkt(config, false, 40)))
            .collect(),
        count * n,
    )
}

/// An Ogg page as found in the bytes.
struct Page {
    flags: u8,
    granule: u64,
    serial: u32,
    seq: u32,
    lacing: Vec<u8>,
    raw: Vec<u8>,
}

fn pages(mut b: &[u8]) -> Vec<Page> {
    let mut out = Vec::new();
    while !b.is_empty() {
        assert_eq!(&b[..4], b"OggS");
        assert_eq!(b[4], 0, "stream structure version");
        let n = usize::from(b[26]);
        let lacing = b[27..27 + n].to_vec();
        let len = 27 + n + lacing.iter().map(|&l| usize::from(l)).sum::<usize>();
        out.push(Page {
            flags: b[5],
            granule: u64::from_le_bytes(b[6..14].try_into().unwrap()),
            serial: u32::from_le_bytes(b[14..18].try_into().unwrap()),
            seq: u32::from_le_bytes(b[18..22].try_into().unwrap()),
            lacing,
            raw: b[..len].to_vec(),
        });
        b = &b[len..];
    }
    out
}

/// The Ogg CRC (RFC 3533 §6): polynomial 0x04c11db7, initial value 0, no reflection, no
/// final XOR, over the whole page with the CRC field zeroed.
fn ogg_crc(page: &[u8]) -> u32 {
    let mut crc = 0u32;
    for (i, &byte) in page.iter().enumerate() {
        let byte = if (22..26).contains(&i) { 0 } else { byte };
        crc ^= u32::from(byte) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Reads every packet back with the `ogg` crate, which checks each page's CRC.
fn read_back(file: &[u8]) -> Vec<ogg::Packet> {
    let mut r = ogg::PacketReader::new(Cursor::new(file.to_vec()));
    let mut out = Vec::new();
    while let Some(p) = r.read_packet().expect("valid Ogg with correct CRCs") {
        out.push(p);
    }
    out
}

/// Checks what must hold for every file: headers, flags, granules from the TOC bytes.
/// Returns the audio packets.
fn check_file(file: &[u8], bite: &CutBite) -> Vec<Vec<u8>> {
    let ps = pages(file);
    assert!(ps.len() >= 3);
    for (i, p) in ps.iter().enumerate() {
        assert_eq!(p.seq as usize, i);
        assert_eq!(p.serial, ps[0].serial);
        assert_eq!(p.flags & 0x02 != 0, i == 0, "BOS on the first page only");
        assert_eq!(
            p.flags & 0x04 != 0,
            i == ps.len() - 1,
            "EOS on the last page only"
        );
        assert!(p.lacing.len() <= 255);
        assert_eq!(
            ogg_crc(&p.raw),
            u32::from_le_bytes(p.raw[22..26].try_into().unwrap())
        );
    }
    // Headers on pages of their own, granule 0.
    assert_eq!(ps[0].granule, 0);
    assert_eq!(ps[1].granule, 0);
    let packets = read_back(file);
    assert_eq!(&packets[0].data[..8], b"OpusHead");
    assert!(packets[0].first_in_stream() && packets[0].last_in_page());
    assert_eq!(&packets[1].data[..8], b"OpusTags");
    assert!(packets[1].first_in_page() && packets[1].last_in_page());
    // Granule of each page = decoded samples through its last completed packet, counted
    // from each packet's TOC; the last one says pre-skip + duration.
    let mut total = 0u64;
    let mut prev_granule = 0;
    let audio = &packets[2..];
    for (i, p) in audio.iter().enumerate() {
        total += u64::from(opus::validate(&p.data).expect("every audio packet is valid"));
        if p.last_in_page() {
            let gp = p.absgp_page();
            assert!(gp >= prev_granule);
            prev_granule = gp;
            if i + 1 == audio.len() {
                assert!(p.last_in_stream());
                assert_eq!(gp, u64::from(PRE_SKIP) + bite.duration);
                // End trimming stays within the last packet.
                assert!(total - gp < u64::from(opus::validate(&p.data).unwrap()).max(1));
            } else {
                assert_eq!(gp, total);
            }
        }
    }
    audio.iter().map(|p| p.data.clone()).collect()
}

#[test]
fn head_and_tags() {
    let b = contiguous(1, 10);
    let file = write_bite(&b, &TAGS, 0x1234_5678).unwrap();
    let packets = read_back(&file);
    let head = &packets[0].data;
    assert_eq!(head.len(), 19);
    assert_eq!(&head[..8], b"OpusHead");
    assert_eq!(head[8], 1, "version");
    assert_eq!(head[9], 1, "mono");
    assert_eq!(u16::from_le_bytes([head[10], head[11]]), PRE_SKIP);
    assert_eq!(u32::from_le_bytes(head[12..16].try_into().unwrap()), 48_000);
    assert_eq!(&head[16..18], &[0, 0], "gain");
    assert_eq!(head[18], 0, "mapping family");
    assert_eq!(packets[0].stream_serial(), 0x1234_5678);
    let tags = &packets[1].data;
    let mut expected = b"OpusTags".to_vec();
    expected.extend_from_slice(&11u32.to_le_bytes());
    expected.extend_from_slice(b"beep-webrtc");
    expected.extend_from_slice(&4u32.to_le_bytes());
    for c in [
        "BEEP_CONVERSATION=conv-1",
        "BEEP_USER=user-2",
        "BEEP_CLIENT=client-3",
        "BEEP_START=1700000000123",
    ] {
        expected.extend_from_slice(&(c.len() as u32).to_le_bytes());
        expected.extend_from_slice(c.as_bytes());
    }
    assert_eq!(tags, &expected);
}

#[test]
fn channel_count_follows_the_stereo_bit() {
    let mono = contiguous(1, 3);
    let file = write_bite(&mono, &TAGS, 1).unwrap();
    assert_eq!(read_back(&file)[0].data[9], 1);
    let mixed = bite(
        vec![
            (0, pkt(1, false, 10)),
            (960, pkt(1, true, 10)),
            (1920, pkt(1, false, 10)),
        ],
        2880,
    );
    let file = write_bite(&mixed, &TAGS, 1).unwrap();
    assert_eq!(read_back(&file)[0].data[9], 2);
}

#[test]
fn crc_of_every_page_and_read_back() {
    let b = contiguous(1, 150);
    let file = write_bite(&b, &TAGS, 42).unwrap();
    let ps = pages(&file);
    // One page checked on its own against a CRC computed here, bit by bit.
    let p = &ps[2];
    assert_eq!(
        ogg_crc(&p.raw),
        u32::from_le_bytes(p.raw[22..26].try_into().unwrap())
    );
    // And a corrupted byte is caught by the reader.
    let mut bad = file.clone();
    let at = file.len() - 3;
    bad[at] ^= 0xff;
    let mut r = ogg::PacketReader::new(Cursor::new(bad));
    let mut failed = false;
    loop {
        match r.read_packet() {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed);
    let audio = check_file(&file, &b);
    // The bite's packets come back byte for byte after the primer.
    let primer = 1;
    assert_eq!(audio.len(), primer + 150);
    for (a, p) in audio[primer..].iter().zip(&b.packets) {
        assert_eq!(&a[..], &p.payload[..]);
    }
}

#[test]
fn granules_for_10_20_40_60_ms_packets() {
    // SILK NB 10, 20, 40, 60 ms, and CELT 2.5 and 5 ms.
    for config in [0u8, 1, 2, 3, 16, 17] {
        let n = u64::from(opus::frame_samples(config << 3));
        let count = 3 * 48_000 / n; // 3 s
        let b = contiguous(config, count);
        let file = write_bite(&b, &TAGS, 7).unwrap();
        let audio = check_file(&file, &b);
        let primer_samples: u64 = audio[..audio.len() - count as usize]
            .iter()
            .map(|p| u64::from(opus::packet_samples(p).unwrap()))
            .sum();
        assert_eq!(primer_samples, u64::from(PRE_SKIP), "config {config}");
        assert_eq!(
            pages(&file).last().unwrap().granule,
            u64::from(PRE_SKIP) + 144_000
        );
    }
}

#[test]
fn multi_frame_packets_are_timed_from_their_toc() {
    // Code 3 packets of 3 × 20 ms, then code 1 packets of 2 × 10 ms.
    let p60 = Bytes::from_static(&[0x0b, 3, 1, 2, 3]);
    let p20 = Bytes::from_static(&[0x01, 5, 5]);
    let b = bite(
        vec![
            (0, p60.clone()),
            (2880, p60),
            (5760, p20.clone()),
            (6720, p20),
        ],
        7680,
    );
    let file = write_bite(&b, &TAGS, 7).unwrap();
    check_file(&file, &b);
}

#[test]
fn pages_hold_about_a_second() {
    let b = contiguous(1, 500); // 10 s of 20 ms packets
    let file = write_bite(&b, &TAGS, 7).unwrap();
    let ps = pages(&file);
    // 2 header pages, then one page per second.
    assert_eq!(ps.len(), 2 + 10);
    let granules: Vec<u64> = ps[2..].iter().map(|p| p.granule).collect();
    for w in granules.windows(2) {
        assert!(w[1] - w[0] <= 48_000 + 960);
    }
    check_file(&file, &b);
}

#[test]
fn pages_never_exceed_255_segments() {
    // 1200 tiny 2.5 ms packets (one segment each): pages end at 255 segments, before a
    // second of audio.
    let b = bite(
        (0..1200).map(|i| (i * 120, pkt(16, false, 3))).collect(),
        1200 * 120,
    );
    let file = write_bite(&b, &TAGS, 7).unwrap();
    let ps = pages(&file);
    assert!(ps.iter().any(|p| p.lacing.len() == 255));
    check_file(&file, &b);
    // Large packets of 255, 600 and 1276 bytes span several segments, across pages.
    let sizes = [256usize, 601, 1276, 2, 255, 510];
    let b = bite(
        (0..300)
            .map(|i| (i * 960, pkt(1, false, sizes[i as usize % sizes.len()])))
            .collect(),
        300 * 960,
    );
    let file = write_bite(&b, &TAGS, 7).unwrap();
    let audio = check_file(&file, &b);
    for (a, p) in audio[1..].iter().zip(&b.packets) {
        assert_eq!(&a[..], &p.payload[..]);
    }
}

#[test]
fn gaps_are_filled_to_the_exact_duration() {
    // 10 packets, a 500 ms hole (DTX or loss), 10 packets; the bite starts with a 100 ms
    // hole as a continuation after a loss would.
    let mut packets = Vec::new();
    for i in 0..10u64 {
        packets.push((4_800 + i * 960, pkt(9, false, 30)));
    }
    for i in 0..10u64 {
        packets.push((4_800 + 9_600 + 24_000 + i * 960, pkt(9, false, 30)));
    }
    let duration = 4_800 + 9_600 + 24_000 + 9_600;
    let b = bite(packets, duration);
    let file = write_bite(&b, &TAGS, 7).unwrap();
    let audio = check_file(&file, &b);
    let total: u64 = audio
        .iter()
        .map(|p| u64::from(opus::packet_samples(p).unwrap()))
        .sum();
    assert_eq!(total, u64::from(PRE_SKIP) + duration);
    assert_eq!(
        pages(&file).last().unwrap().granule,
        u64::from(PRE_SKIP) + duration
    );
    // Fillers are the only packets of at most two bytes here.
    let fillers = audio.iter().filter(|p| p.len() <= 2).count();
    assert!((3..=8).contains(&fillers), "{fillers}");
}

#[test]
fn odd_gaps_and_durations_are_trimmed_exactly() {
    // Offsets that are no multiple of 2.5 ms, and a duration beyond the last packet.
    let b = bite(
        vec![
            (0, pkt(1, false, 9)),
            (1_000, pkt(1, false, 9)),
            (3_001, pkt(1, false, 9)),
        ],
        3_961 + 77,
    );
    let file = write_bite(&b, &TAGS, 7).unwrap();
    check_file(&file, &b);
    // Overlapping packets (not from the cutter) still make a valid file of the duration.
    let b = bite(vec![(0, pkt(1, false, 9)), (500, pkt(1, false, 9))], 1_460);
    let file = write_bite(&b, &TAGS, 7).unwrap();
    check_file(&file, &b);
}

#[test]
fn invalid_packets_become_gaps() {
    let b = bite(
        vec![
            (0, pkt(1, false, 9)),
            (960, Bytes::new()),
            (1920, Bytes::from_static(&[0x0b, 0])),
            (2880, pkt(1, false, 9)),
        ],
        3840,
    );
    let file = write_bite(&b, &TAGS, 7).unwrap();
    let audio = check_file(&file, &b);
    assert!(audio.iter().all(|p| opus::validate(p).is_ok()));
}

#[test]
fn unwritable_bites_are_errors_not_panics() {
    assert!(matches!(
        write_bite(&bite(vec![], 0), &TAGS, 1),
        Err(OggError::Empty)
    ));
    assert!(matches!(
        write_bite(&bite(vec![(0, Bytes::new())], 960), &TAGS, 1),
        Err(OggError::Empty)
    ));
    assert!(matches!(
        write_bite(
            &bite(vec![(u64::MAX - 10, pkt(1, false, 3))], 960),
            &TAGS,
            1
        ),
        Err(OggError::TooLong)
    ));
    assert!(matches!(
        write_bite(&bite(vec![(0, pkt(1, false, 3))], u64::MAX), &TAGS, 1),
        Err(OggError::TooLong)
    ));
}

#[test]
fn serials_are_random() {
    let a: Vec<u32> = (0..8).map(|_| random_serial()).collect();
    let mut b = a.clone();
    b.sort_unstable();
    b.dedup();
    assert_eq!(a.len(), b.len());
}

#[test]
fn randomized_bites_make_valid_files() {
    let mut seed = 0x0dd_ba11u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let configs = [0u8, 1, 3, 9, 13, 16, 17, 19, 31];
    for _ in 0..500 {
        let mut packets = Vec::new();
        let mut at = next() % 3_000;
        for _ in 0..1 + next() % 120 {
            let config = configs[(next() % configs.len() as u64) as usize];
            let p = pkt(config, next() % 4 == 0, 1 + (next() % 300) as usize);
            let n = u64::from(opus::packet_samples(&p).unwrap());
            packets.push((at, p));
            at += n;
            if next() % 5 == 0 {
                at += next() % 30_000;
            }
        }
        let duration = at + if next() % 3 == 0 { next() % 500 } else { 0 };
        let b = bite(packets, duration);
        let file = write_bite(&b, &TAGS, next() as u32).unwrap();
        check_file(&file, &b);
    }
}
