//! The SPDY codec against bytes other implementations made: frames kubectl (Go) sent, header
//! blocks compressed by Python's zlib (`zlib.compressobj(9, zdict=<SPDY/3 dictionary>)`, `Z_SYNC_FLUSH` after each
//! block, as Go's framer does), and our encoder's blocks, which Python's
//! `zlib.decompressobj(zdict=...)` read back to the same bytes when these fixtures were made.

use super::*;

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("fixture hex")
}

fn headers(pairs: &[(&str, &str)]) -> Headers {
    Headers(
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
    )
}

/// A SYN_STREAM around an already-compressed header block.
fn syn_stream_raw(stream: u32, compressed: &[u8]) -> Vec<u8> {
    let mut body = stream.to_be_bytes().to_vec();
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    body.extend_from_slice(compressed);
    let mut out = Vec::new();
    control(&mut out, SYN_STREAM, 0, &body).unwrap();
    out
}

fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>> {
    let mut d = Decoder::new();
    d.push(bytes);
    let mut frames = Vec::new();
    while let Some(f) = d.next()? {
        frames.push(f);
    }
    Ok(frames)
}

fn encode_all(frames: &[Frame]) -> Vec<u8> {
    let mut e = Encoder::new();
    let mut out = Vec::new();
    for f in frames {
        e.encode(f, &mut out).unwrap();
    }
    out
}

/// What kubectl sends for one forwarded connection, and more.
fn sample() -> Vec<Frame> {
    let forward = |stream, kind| Frame::SynStream {
        stream,
        associated: 0,
        priority: 0,
        fin: false,
        unidirectional: false,
        headers: headers(&[("streamtype", kind), ("port", "8080"), ("requestid", "0")]),
    };
    vec![
        forward(1, "error"),
        Frame::Data {
            stream: 1,
            fin: true,
            data: vec![],
        },
        forward(3, "data"),
        Frame::SynReply {
            stream: 3,
            fin: false,
            headers: Headers::default(),
        },
        Frame::Data {
            stream: 3,
            fin: false,
            data: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        },
        Frame::Headers {
            stream: 3,
            fin: true,
            headers: headers(&[("x", "a\0b")]),
        },
        Frame::RstStream {
            stream: 3,
            status: 5, // CANCEL
        },
        Frame::Settings {
            clear: true,
            settings: vec![Setting {
                flags: 1,
                id: 7,
                value: INITIAL_WINDOW,
            }],
        },
        Frame::Ping { id: 1 },
        Frame::WindowUpdate {
            stream: 0,
            delta: 32768,
        },
        Frame::GoAway {
            last_good: 3,
            status: 0, // OK
        },
    ]
}

#[test]
fn the_dictionary_is_spdy3s() {
    assert_eq!(DICTIONARY.len(), 1423);
    // The id Go's zlib (kubectl's header compressor) and Python's `zlib.adler32` give it.
    assert_eq!(DICTIONARY_ADLER32, 0xe3c6_a7c2);
    assert!(DICTIONARY.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
    assert!(DICTIONARY.ends_with(b"utf-,*,enq=0."));
}

#[test]
fn header_blocks_compressed_by_python_zlib_decode() {
    // One zlib stream across three blocks: the second and third refer back into the first
    // and into the dictionary ("content-type", "text/plain", "user-agent").
    let blocks = [
        "78f9e3c6a7c202253a48f95b044eea16061606409ab308125f99a074cc68004e892545a989b9d0c2863515141500000000ffff",
        "225333a8a44a04000000ffff",
        "82ea452fc5b810de07f2242b74213a7581a540497e727e8e2e22e30881ac8596247ad916c57a99f918595736bb34095808e6e89719ea191be9992868e464e69556e827e6a698996802000000ffff",
    ];
    let mut wire = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        wire.extend(syn_stream_raw(2 * i as u32 + 1, &unhex(b)));
    }
    let frames = decode_all(&wire).unwrap();
    let got: Vec<&Headers> = frames
        .iter()
        .map(|f| match f {
            Frame::SynStream { headers, .. } => headers,
            other => panic!("not a SYN_STREAM: {other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        [
            &headers(&[
                ("port", "8080"),
                ("requestid", "0"),
                ("streamtype", "error")
            ]),
            &headers(&[("port", "8080"), ("requestid", "0"), ("streamtype", "data")]),
            &headers(&[
                ("content-type", "text/plain"),
                ("x-stream-protocol-version", "portforward.k8s.io"),
                ("user-agent", "kubectl/v1.32.4 (linux/amd64)"),
            ]),
        ]
    );
    assert_eq!(got[1].get("StreamType"), Some("data"));
}

/// Each block ends with an empty stored block (a sync flush): Go's inflater, in kubectl, hands
/// out a stored block's bytes only when the next block begins, and without it read on into the
/// next frame and dropped the connection.
#[test]
fn frames_kubectl_sent_decode() {
    // Captured from kubectl 1.32 (Go's zlib at BestCompression, SPDY's dictionary) opening
    // the error stream, ending its half of it, and opening the data stream.
    let wire = unhex(concat!(
        "800300010000003e0000000100000000000078f9e3c6a7c202253a060606ce2248fc6482d22da30138e5",
        "9514a526e6420b17d65450d0430aea22709eb030b03000000000ffff",
        "0000000101000000",
        "800300010000001c00000003000000000000826a46550a2a8712b1a844b302000000ffff",
    ));
    let frames = decode_all(&wire).unwrap();
    let sorted = |f: &Frame| match f {
        Frame::SynStream { headers, .. } => {
            let mut h = headers.0.clone();
            h.sort();
            h
        }
        other => panic!("not a SYN_STREAM: {other:?}"),
    };
    let pairs =
        |kind: &str| headers(&[("port", "8080"), ("requestid", "0"), ("streamtype", kind)]).0;
    assert_eq!(sorted(&frames[0]), pairs("error"));
    assert_eq!(
        frames[1],
        Frame::Data {
            stream: 1,
            fin: true,
            data: vec![]
        }
    );
    assert_eq!(sorted(&frames[2]), pairs("data"));
    assert_eq!(frames.len(), 3);
}

#[test]
fn our_header_blocks_end_in_a_sync_flush_and_python_zlib_reads_them() {
    let mut e = Encoder::new();
    let mut first = Vec::new();
    e.encode(
        &Frame::SynReply {
            stream: 1,
            fin: false,
            headers: Headers::default(),
        },
        &mut first,
    )
    .unwrap();
    let mut second = Vec::new();
    e.encode(
        &Frame::SynReply {
            stream: 3,
            fin: false,
            headers: headers(&[("x-stream-protocol-version", "portforward.k8s.io")]),
        },
        &mut second,
    )
    .unwrap();
    // Frame header (8 bytes) and stream id (4), then the compressed block.
    assert_eq!(
        first[12..],
        unhex("7820e3c6a7c2000400fbff00000000000000ffff")
    );
    assert_eq!(
        second[12..],
        unhex(
            "003700c8ff0000000100000019782d73747265616d2d70726f746f636f6c2d76657273696f6e00000012706f7274666f72776172642e6b38732e696f000000ffff"
        )
    );
}

#[test]
fn frames_round_trip() {
    let frames = sample();
    assert_eq!(decode_all(&encode_all(&frames)).unwrap(), frames);
}

#[test]
fn frames_split_anywhere_decode_the_same() {
    // A websocket carries SPDY as a byte stream: kubectl's framer writes each field on its own,
    // so a frame arrives in many messages, and one message may end one frame and begin another.
    let frames = sample();
    let wire = encode_all(&frames);
    for size in [1, 2, 3, 5, 7, 13, 64] {
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(size) {
            d.push(chunk);
            while let Some(f) = d.next().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames, "in pieces of {size}");
    }
}

#[test]
fn oversized_frames_are_refused_before_their_body_arrives() {
    let mut d = Decoder::new();
    d.push(&[0, 0, 0, 1, 0x00, 0xff, 0xff, 0xff]);
    assert!(matches!(
        d.next(),
        Err(Error::TooLarge { kind: "data", .. })
    ));
    let mut d = Decoder::new();
    d.push(&[0x80, 3, 0, 1, 0x00, 0x10, 0, 0]);
    assert!(matches!(
        d.next(),
        Err(Error::TooLarge {
            kind: "SYN_STREAM",
            ..
        })
    ));
}

#[test]
fn a_header_block_inflating_past_the_limit_is_refused() {
    // Python: one pair whose value is 100 000 × "a", 139 bytes compressed.
    let big = unhex(
        "78f9e3c6a7c2ecd24111003008c030908a0b144cc7a48eb9e091dcd541e7a3fc75e4b905000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000acf5000000ffff",
    );
    assert_eq!(
        decode_all(&syn_stream_raw(1, &big)),
        Err(Error::HeadersTooLarge)
    );
}

#[test]
fn bad_frames_are_errors() {
    type Expect = fn(&Error) -> bool;
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("unknown type", vec![0x80, 3, 0, 5, 0, 0, 0, 0], |e| {
            *e == Error::UnknownType(5)
        }),
        ("SPDY/2", vec![0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1], |e| {
            *e == Error::Version(2)
        }),
        (
            "short RST_STREAM",
            vec![0x80, 3, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1],
            |e| matches!(e, Error::Malformed { .. }),
        ),
        (
            "SETTINGS counting more than it holds",
            vec![0x80, 3, 0, 4, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff],
            |e| matches!(e, Error::Malformed { .. }),
        ),
        (
            "short SYN_STREAM",
            vec![0x80, 3, 0, 1, 0, 0, 0, 4, 0, 0, 0, 1],
            |e| matches!(e, Error::Malformed { .. }),
        ),
        (
            "another dictionary",
            syn_stream_raw(1, &unhex("78bb000000010000")),
            |e| matches!(e, Error::Compression(_)),
        ),
        ("no zlib header", syn_stream_raw(1, &[0x78]), |e| {
            matches!(e, Error::Compression(_))
        }),
        (
            "not deflate",
            syn_stream_raw(1, &unhex("7820e3c6a7c2ffffffffffff")),
            |e| matches!(e, Error::Compression(_)),
        ),
        (
            "a block counting more pairs than it holds",
            syn_stream_raw(1, &unhex("7820e3c6a7c2000400fbff00000009")),
            |e| matches!(e, Error::Malformed { .. }),
        ),
        (
            "a truncated pair",
            syn_stream_raw(1, &unhex("7820e3c6a7c2000a00f5ff000000010000000978")),
            |e| matches!(e, Error::Malformed { .. }),
        ),
    ];
    for (what, bytes, expected) in cases {
        match decode_all(&bytes) {
            Err(e) if expected(&e) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn an_incomplete_frame_waits_for_more_bytes() {
    let wire = encode_all(&sample());
    let mut d = Decoder::new();
    d.push(&wire[..wire.len() - 1]);
    let mut n = 0;
    while d.next().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, sample().len() - 1);
    d.push(&wire[wire.len() - 1..]);
    assert!(d.next().unwrap().is_some());
}

#[test]
fn random_and_mangled_bytes_never_panic() {
    // A small deterministic generator: no dependency, same cases every run.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let valid = encode_all(&sample());
    for round in 0..3000 {
        let bytes: Vec<u8> = if round % 2 == 0 {
            let len = (next() % 200) as usize;
            (0..len).map(|_| next() as u8).collect()
        } else {
            let mut b = valid.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            b.truncate((next() as usize) % (b.len() + 1));
            b
        };
        let mut d = Decoder::new();
        d.push(&bytes);
        while let Ok(Some(_)) = d.next() {}
    }
}
