//! The checks the fuzz targets run, kept in the library so that `cargo test` replays the checked-in
//! corpus through exactly the same code (`tests/fuzz_corpus.rs`), without a nightly toolchain.

use std::ops::ControlFlow;

use bytes::{Buf, BytesMut};

use super::{
    encode_command, encode_delex_ifeq, encode_frame, Decoder, DecoderConfig, EvalShaCommand, Frame,
    SetNxPxCommand,
};

/// Small limits so the fuzzer reaches them quickly.
fn config() -> DecoderConfig {
    DecoderConfig::default()
        .max_depth(8)
        .max_elements(64)
        .max_bulk_len(256)
        .max_line_len(128)
        .max_frame_bytes(4096)
}

/// Decodes `data` whole; the decoder must not panic, and every frame must respect the limits.
/// Returns the frames, then the error if one ended the stream (as text).
pub fn decode_whole(data: &[u8]) -> (Vec<Frame>, Option<String>) {
    let mut dec = Decoder::new(config());
    let mut buf = BytesMut::from(data);
    let mut frames = Vec::new();
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(f)) => {
                check_limits(&f, 0);
                frames.push(f);
            }
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(format!("{:?}", e.kind()))),
        }
    }
}

fn check_limits(f: &Frame, depth: usize) {
    let cfg = config();
    assert!(depth <= cfg.max_depth, "depth over the limit");
    match f {
        Frame::Bulk(b) => assert!(b.len() <= cfg.max_bulk_len),
        Frame::Array(v) | Frame::Set(v) | Frame::Push(v) => {
            assert!(v.len() <= cfg.max_elements);
            v.iter().for_each(|x| check_limits(x, depth + 1));
        }
        Frame::Map(v) => {
            assert!(v.len() <= cfg.max_elements);
            v.iter().for_each(|(k, x)| {
                check_limits(k, depth + 1);
                check_limits(x, depth + 1);
            });
        }
        _ => {}
    }
}

/// The same bytes fed whole (with `decode`) and split at the points the first bytes choose (with
/// `decode_each`) must give the same frames and the same error.
pub fn split_agrees(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let cuts: Vec<usize> = data[..data.len().min(4)]
        .iter()
        .map(|&b| b as usize)
        .collect();
    let body = &data[cuts.len()..];
    let whole = decode_whole(body);
    let mut dec = Decoder::new(config());
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut err = None;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    points.sort_unstable();
    points.push(body.len());
    // The split feed goes through `decode_each` (what the connection uses), stopping after
    // every frame when the first byte is odd; the whole feed went through `decode`. With the
    // first byte's second bit set, lock replies are first read in place (`lock_reply`), as the
    // connection's driver reads them.
    let stop_each = cuts[0] % 2 == 1;
    let in_place = cuts[0] & 2 != 0;
    let mut last = 0;
    'feed: for p in points {
        buf.extend_from_slice(&body[last..p]);
        last = p;
        loop {
            if in_place {
                while let Some((reply, len)) = dec.lock_reply(&buf) {
                    frames.push(reply.frame());
                    buf.advance(len);
                }
            }
            let mut got = 0;
            let fed = dec.decode_each(&mut buf, |f| {
                frames.push(f);
                got += 1;
                if stop_each {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            if let Err(e) = fed {
                err = Some(format!("{:?}", e.kind()));
                break 'feed;
            }
            if got == 0 || !stop_each {
                break;
            }
        }
    }
    assert_eq!(
        frames.len(),
        whole.0.len(),
        "frame count differs when split"
    );
    for (a, b) in frames.iter().zip(&whole.0) {
        assert!(same(a, b), "frames differ when split");
    }
    assert_eq!(err, whole.1, "error differs when split");
}

/// Every frame decoded from `data` encodes and decodes back to itself, and the prepared
/// encoders (the codec's `unsafe` writer) give the generic encoder's bytes for inputs taken
/// from `data`.
pub fn roundtrip(data: &[u8]) {
    prepared_agree(data);
    for f in decode_whole(data).0 {
        let mut buf = BytesMut::new();
        encode_frame(&mut buf, &f);
        let (again, err) = decode_whole(&buf);
        assert!(err.is_none(), "re-encoded frame failed to decode");
        assert_eq!(again.len(), 1);
        assert!(same(&again[0], &f), "round trip changed the frame");
    }
}

/// `data` as a ttl (its first 8 bytes), a split point and a spare capacity (the next two), and a
/// key and token (the rest, split there).
fn prepared_agree(data: &[u8]) {
    let mut ttl = [0u8; 8];
    let head = data.len().min(8);
    ttl[..head].copy_from_slice(&data[..head]);
    let ttl = u64::from_le_bytes(ttl);
    let rest = data.get(8..).unwrap_or_default();
    let (split, spare, rest) = match rest {
        [a, b, rest @ ..] => (*a as usize, *b as usize, rest),
        _ => (0, 0, rest),
    };
    let (key, token) = rest.split_at(split.min(rest.len()));

    let mut prepared = BytesMut::with_capacity(spare);
    prepared.extend_from_slice(b"x");
    SetNxPxCommand::new(ttl).encode(&mut prepared, key, token);
    EvalShaCommand::new(&[b'f'; 40]).encode(&mut prepared, &[key], &[token, key]);
    encode_delex_ifeq(&mut prepared, key, token);
    let mut generic = BytesMut::from(&b"x"[..]);
    let ms = ttl.to_string();
    encode_command(
        &mut generic,
        &[&b"SET"[..], key, token, b"NX", b"PX", ms.as_bytes()],
    );
    encode_command(
        &mut generic,
        &[&b"EVALSHA"[..], &[b'f'; 40], b"1", key, token, key],
    );
    encode_command(&mut generic, &[&b"DELEX"[..], key, b"IFEQ", token]);
    assert_eq!(
        prepared, generic,
        "a prepared encoder differs from the generic one"
    );
}

/// Equality that treats NaN as equal to NaN.
fn same(a: &Frame, b: &Frame) -> bool {
    match (a, b) {
        (Frame::Double(x), Frame::Double(y)) => x == y || (x.is_nan() && y.is_nan()),
        (Frame::Array(x), Frame::Array(y))
        | (Frame::Set(x), Frame::Set(y))
        | (Frame::Push(x), Frame::Push(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Frame::Map(x), Frame::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k1, v1), (k2, v2))| same(k1, k2) && same(v1, v2))
        }
        _ => a == b,
    }
}
