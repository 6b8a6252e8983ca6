use super::decode::parse_headers;
use super::*;

fn roundtrip(frames: &[Frame]) -> Vec<Frame> {
    let mut enc = Encoder::new().unwrap();
    let mut dec = Decoder::new();
    let mut wire = Vec::new();
    for f in frames {
        enc.encode(f, &mut wire).unwrap();
    }
    let mut out = Vec::new();
    let mut at = 0;
    while let Some((f, n)) = dec.decode(&wire[at..]).unwrap() {
        out.push(f);
        at += n;
    }
    assert_eq!(at, wire.len(), "every byte makes up a frame");
    out
}

fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_dictionary_is_spdy3s() {
    // SPDY/3 names its dictionary by this Adler-32.
    let (mut a, mut b) = (1u32, 0u32);
    for &x in DICTIONARY {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    assert_eq!((b << 16) | a, 0xe3c6a7c2);
    assert_eq!(DICTIONARY.len(), 1423);
}

#[test]
fn every_frame_survives_a_round_trip() {
    let frames = vec![
        Frame::SynStream {
            stream_id: 1,
            associated: 0,
            priority: 3,
            fin: false,
            unidirectional: false,
            headers: h(&[
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "0"),
            ]),
        },
        Frame::SynStream {
            stream_id: 3,
            associated: 0,
            priority: 0,
            fin: true,
            unidirectional: true,
            headers: h(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")]),
        },
        Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: vec![],
        },
        Frame::Headers {
            stream_id: 3,
            fin: true,
            headers: h(&[("x", "a\0b")]),
        },
        Frame::Data {
            stream_id: 3,
            fin: false,
            data: b"hello".to_vec(),
        },
        Frame::Data {
            stream_id: 3,
            fin: true,
            data: vec![],
        },
        Frame::RstStream {
            stream_id: 5,
            status: rst::CANCEL,
        },
        Frame::Settings {
            clear: false,
            entries: vec![(0, SETTINGS_INITIAL_WINDOW, 1 << 20), (1, 4, 100)],
        },
        Frame::Ping { id: 7 },
        Frame::GoAway {
            last_good: 3,
            status: goaway::OK,
        },
        Frame::WindowUpdate {
            stream_id: 0,
            delta: 32768,
        },
    ];
    assert_eq!(roundtrip(&frames), frames);
}

#[test]
fn header_blocks_share_one_compression_stream_per_direction() {
    // The second block refers back to the first: decoding it with a
    // fresh decoder fails, with the same decoder it succeeds.
    let a = Frame::SynReply {
        stream_id: 1,
        fin: false,
        headers: h(&[("streamtype", "data"), ("port", "80")]),
    };
    let b = Frame::SynReply {
        stream_id: 3,
        fin: false,
        headers: h(&[("streamtype", "data"), ("port", "80")]),
    };
    let mut enc = Encoder::new().unwrap();
    let (mut first, mut second) = (Vec::new(), Vec::new());
    enc.encode(&a, &mut first).unwrap();
    enc.encode(&b, &mut second).unwrap();
    assert!(second.len() < first.len(), "the second block is smaller");
    let mut dec = Decoder::new();
    assert_eq!(dec.decode(&first).unwrap().unwrap().0, a);
    assert_eq!(dec.decode(&second).unwrap().unwrap().0, b);
    assert!(Decoder::new().decode(&second).is_err());
}

/// A SYN_STREAM whose header block was compressed by C zlib with the
/// SPDY/3 dictionary, as Go's compress/zlib writes it.
#[test]
fn a_block_compressed_elsewhere_decodes() {
    // zlib.compressobj(9, zdict=DICTIONARY) over the block of
    // streamtype=data, port=80, requestid=0, then Z_SYNC_FLUSH.
    let block = [
        0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0x02, 0x25, 0x3a, 0x70, 0x3a, 0x2b, 0x29, 0x4a, 0x4d,
        0xcc, 0x45, 0x2a, 0x4a, 0x12, 0x21, 0xa5, 0x72, 0x11, 0x28, 0x05, 0x33, 0x59, 0x18, 0x00,
        0x49, 0xce, 0x22, 0x48, 0x1c, 0x66, 0x82, 0xd2, 0x36, 0xa3, 0x01, 0x00, 0x00, 0x00, 0xff,
        0xff,
    ];
    let mut wire = vec![0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00];
    wire.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    wire.extend_from_slice(&block);
    let len = (wire.len() - 8) as u32;
    wire[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
    let (f, n) = Decoder::new().decode(&wire).unwrap().unwrap();
    assert_eq!(n, wire.len());
    let Frame::SynStream { headers, .. } = f else {
        panic!("{f:?}")
    };
    assert_eq!(header(&headers, "streamtype"), Some("data"));
    assert_eq!(header(&headers, "port"), Some("80"));
    assert_eq!(header(&headers, "requestid"), Some("0"));
}

#[test]
fn partial_frames_wait_for_more_bytes() {
    let mut wire = Vec::new();
    Encoder::new()
        .unwrap()
        .encode(
            &Frame::Data {
                stream_id: 1,
                fin: false,
                data: vec![7; 100],
            },
            &mut wire,
        )
        .unwrap();
    let mut dec = Decoder::new();
    for cut in 0..wire.len() {
        assert_eq!(dec.decode(&wire[..cut]).unwrap(), None);
    }
    assert!(dec.decode(&wire).unwrap().is_some());
}

#[test]
fn malformed_frames_are_errors() {
    let mut dec = Decoder::new();
    // Version 2.
    assert_eq!(
        dec.decode(&[0x80, 0x02, 0, 1, 0, 0, 0, 0]),
        Err(FrameError::UnsupportedVersion(2))
    );
    // A control frame claiming 16 MiB.
    assert!(matches!(
        dec.decode(&[0x80, 0x03, 0, 6, 0, 0xff, 0xff, 0xff]),
        Err(FrameError::TooLong { .. })
    ));
    // PING with three bytes.
    assert_eq!(
        dec.decode(&[0x80, 0x03, 0, 6, 0, 0, 0, 3, 1, 2, 3]),
        Err(FrameError::Malformed("PING"))
    );
    // SETTINGS claiming more entries than it carries.
    assert_eq!(
        dec.decode(&[0x80, 0x03, 0, 4, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]),
        Err(FrameError::Malformed("SETTINGS"))
    );
    // A SYN_STREAM whose header block is not zlib.
    let mut bad = vec![0x80, 0x03, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    bad.extend_from_slice(&[1, 2, 3, 4]);
    assert!(matches!(
        Decoder::new().decode(&bad),
        Err(FrameError::HeaderBlock(_))
    ));
    // Garbage of every length never panics.
    let mut seed = 1u32;
    for len in 0..300 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (seed >> 16) as u8
            })
            .collect();
        let mut with_header = vec![0x80, 0x03, 0, (len % 10) as u8, 0, 0, 0, len as u8];
        with_header.extend_from_slice(&bytes);
        let _ = Decoder::new().decode(&bytes);
        let _ = Decoder::new().decode(&with_header);
    }
}

#[test]
fn mutated_streams_of_frames_never_panic() {
    let mut enc = Encoder::new().unwrap();
    let mut valid = Vec::new();
    for f in [
        Frame::SynStream {
            stream_id: 1,
            associated: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: h(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")]),
        },
        Frame::SynStream {
            stream_id: 3,
            associated: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: h(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")]),
        },
        Frame::Data {
            stream_id: 3,
            fin: false,
            data: b"hello".to_vec(),
        },
        Frame::Settings {
            clear: false,
            entries: vec![(0, SETTINGS_INITIAL_WINDOW, 1000)],
        },
        Frame::WindowUpdate {
            stream_id: 3,
            delta: 9,
        },
        Frame::Ping { id: 1 },
    ] {
        enc.encode(&f, &mut valid).unwrap();
    }
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let mut bytes = valid.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % bytes.len() as u64) as usize;
            match next() % 3 {
                0 => bytes[at] ^= 1 << (next() % 8),
                1 => bytes[at] = next() as u8,
                _ => bytes.truncate(at.max(1)),
            }
        }
        let mut dec = Decoder::new();
        let mut at = 0;
        while let Ok(Some((_, n))) = dec.decode(&bytes[at..]) {
            at += n;
        }
    }
}

#[test]
fn header_blocks_that_lie_about_lengths_are_errors() {
    assert!(parse_headers(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err());
    assert!(parse_headers(&[0xff, 0xff, 0xff, 0xff]).is_err());
    assert!(parse_headers(&[0, 0]).is_err());
    assert_eq!(
        parse_headers(&[0, 0, 0, 1, 0, 0, 0, 1, b'A', 0, 0, 0, 1, b'b']).unwrap(),
        h(&[("a", "b")])
    );
}

#[test]
fn send_windows_are_kept_once_the_peer_keeps_them() {
    let mut w = SendWindows::default();
    w.open(1);
    // A peer that never spoke of windows gets all it asks for.
    assert_eq!(w.grant(1, 1 << 20), 1 << 20);
    assert!(!w.enforced());
    // Once it does, the stream's and the session's windows bind.
    w.update(1, 0).unwrap();
    assert!(w.enforced());
    assert_eq!(w.grant(1, 40_000), 40_000);
    assert_eq!(w.grant(1, 40_000), 65_536 - 40_000);
    assert_eq!(w.grant(1, 1), 0);
    w.update(1, 10_000).unwrap();
    // The session window is spent too.
    assert_eq!(w.grant(1, 10_000), 0);
    w.update(0, 5_000).unwrap();
    assert_eq!(w.grant(1, 10_000), 5_000);
    // Unknown streams get nothing; updates for them are ignored.
    assert_eq!(w.grant(9, 10), 0);
    assert_eq!(w.update(9, 10), Ok(()));
    // Overflow is the peer's error.
    assert_eq!(w.update(1, 0x7fff_ffff), Err(WindowOverflow(1)));
}

#[test]
fn a_new_initial_window_moves_open_streams() {
    let mut w = SendWindows::default();
    w.open(1);
    w.set_initial(1 << 20);
    w.update(0, 1 << 20).unwrap();
    assert_eq!(w.grant(1, 2 << 20), 1 << 20);
    w.open(3);
    w.set_initial(1000);
    // Stream 1 is now below zero; stream 3 has 1000.
    assert_eq!(w.grant(1, 10), 0);
    assert_eq!(w.grant(3, 5000), 1000);
}

#[test]
fn receive_windows_are_given_back_by_halves() {
    let mut r = RecvWindow::default();
    assert_eq!(r.consumed(20_000), None);
    assert_eq!(r.consumed(20_000), Some(40_000));
    assert_eq!(r.consumed(1), None);
    assert_eq!(r.consumed(1 << 20), Some((1 << 20) + 1));
}
