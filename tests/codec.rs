//! The RESP codec on its own: golden bytes, split points, limits, properties, fixtures.

mod support {
    pub mod fixtures;
}

use bytes::{Bytes, BytesMut};
use dragonlock::resp::{
    encode_command, encode_delex_ifeq, encode_frame, encode_publish, DecodeErrorKind as K, Decoder,
    DecoderConfig, EvalShaCommand, Frame, ServerError, SetNxPxCommand,
};
use proptest::prelude::*;
use support::fixtures;

fn decode_all(input: &[u8]) -> Result<Vec<Frame>, dragonlock::resp::DecodeError> {
    let mut dec = Decoder::default();
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(f) = dec.decode(&mut buf)? {
        out.push(f);
    }
    assert!(buf.is_empty(), "bytes left over: {:?}", buf);
    Ok(out)
}

fn decode_one(input: &[u8]) -> Frame {
    let mut frames = decode_all(input).unwrap();
    assert_eq!(frames.len(), 1, "{:?}", String::from_utf8_lossy(input));
    frames.pop().unwrap()
}

fn err_kind(input: &[u8]) -> K {
    decode_with(DecoderConfig::default(), input)
}

fn decode_with(cfg: DecoderConfig, input: &[u8]) -> K {
    let mut dec = Decoder::new(cfg);
    let mut buf = BytesMut::from(input);
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!(
                "incomplete, expected an error: {:?}",
                String::from_utf8_lossy(input)
            ),
            Err(e) => return e.kind(),
        }
    }
}

/// Feeds `input` in pieces cut at `cuts`, decoding after each piece with `decode` and
/// `decode_each` in turn, so every split test holds both to the same frames.
fn decode_split(input: &[u8], cuts: &[usize]) -> Vec<Frame> {
    let mut dec = Decoder::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut last = 0;
    for (i, &cut) in cuts.iter().chain(std::iter::once(&input.len())).enumerate() {
        buf.extend_from_slice(&input[last..cut]);
        last = cut;
        if i % 2 == 0 {
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        } else {
            dec.decode_each(&mut buf, |f| {
                out.push(f);
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        }
    }
    assert!(buf.is_empty());
    out
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[test]
fn golden_every_type() {
    let cases: Vec<(&[u8], Frame)> = vec![
        (b"+OK\r\n", Frame::Simple(b("OK"))),
        (b"+hello world\r\n", Frame::Simple(b("hello world"))),
        (b":0\r\n", Frame::Integer(0)),
        (b":-42\r\n", Frame::Integer(-42)),
        (b":9223372036854775807\r\n", Frame::Integer(i64::MAX)),
        (b":-9223372036854775808\r\n", Frame::Integer(i64::MIN)),
        (b"$5\r\nhello\r\n", Frame::Bulk(b("hello"))),
        (b"$0\r\n\r\n", Frame::Bulk(b(""))),
        (b"$4\r\na\r\nb\r\n", Frame::Bulk(b("a\r\nb"))),
        (b"$-1\r\n", Frame::Null),
        (b"*-1\r\n", Frame::Null),
        (b"_\r\n", Frame::Null),
        (b"#t\r\n", Frame::Boolean(true)),
        (b"#f\r\n", Frame::Boolean(false)),
        (b",2.5\r\n", Frame::Double(2.5)),
        (b",1.5e3\r\n", Frame::Double(1500.0)),
        (b",-2E-2\r\n", Frame::Double(-0.02)),
        (b",inf\r\n", Frame::Double(f64::INFINITY)),
        (b",-inf\r\n", Frame::Double(f64::NEG_INFINITY)),
        (
            b"(3492890328409238509324850943850943825024385\r\n",
            Frame::BigNumber(b("3492890328409238509324850943850943825024385")),
        ),
        (b"(-1\r\n", Frame::BigNumber(b("-1"))),
        (
            b"=15\r\ntxt:Some string\r\n",
            Frame::Verbatim {
                format: *b"txt",
                data: b("Some string"),
            },
        ),
        (b"*0\r\n", Frame::Array(vec![])),
        (
            b"*2\r\n:1\r\n$1\r\na\r\n",
            Frame::Array(vec![Frame::Integer(1), Frame::Bulk(b("a"))]),
        ),
        (
            b"*2\r\n*1\r\n:1\r\n*0\r\n",
            Frame::Array(vec![
                Frame::Array(vec![Frame::Integer(1)]),
                Frame::Array(vec![]),
            ]),
        ),
        (
            b"~2\r\n+a\r\n+b\r\n",
            Frame::Set(vec![Frame::Simple(b("a")), Frame::Simple(b("b"))]),
        ),
        (
            b"%1\r\n+k\r\n:1\r\n",
            Frame::Map(vec![(Frame::Simple(b("k")), Frame::Integer(1))]),
        ),
        (b"%0\r\n", Frame::Map(vec![])),
        (
            b">2\r\n+message\r\n+x\r\n",
            Frame::Push(vec![Frame::Simple(b("message")), Frame::Simple(b("x"))]),
        ),
        // Attributes are dropped by default, at the top and inside aggregates.
        (b"|1\r\n+ttl\r\n:3\r\n:7\r\n", Frame::Integer(7)),
        (
            b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n",
            Frame::Array(vec![Frame::Integer(1), Frame::Integer(2)]),
        ),
        (b"|0\r\n:5\r\n", Frame::Integer(5)),
        // An attribute whose value is itself annotated: {a: <{b: c}> 9}, then the value 10.
        (
            b"|1\r\n+a\r\n|1\r\n+b\r\n+c\r\n:9\r\n:10\r\n",
            Frame::Integer(10),
        ),
    ];
    for (input, want) in cases {
        assert_eq!(
            decode_one(input),
            want,
            "{:?}",
            String::from_utf8_lossy(input)
        );
        // And the encoder writes what decodes to the same frame.
        let mut buf = BytesMut::new();
        encode_frame(&mut buf, &want);
        assert_eq!(decode_one(&buf), want);
    }
    match decode_one(b",nan\r\n") {
        Frame::Double(d) => assert!(d.is_nan()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn errors_are_split_into_code_and_message() {
    let Frame::Error(e) = decode_one(b"-NOSCRIPT No matching script. Please use EVAL.\r\n") else {
        panic!()
    };
    assert_eq!(e.code(), b"NOSCRIPT");
    assert_eq!(e.message(), b"No matching script. Please use EVAL.");
    let Frame::Error(e) = decode_one(b"!21\r\nSYNTAX invalid syntax\r\n") else {
        panic!()
    };
    assert_eq!(e.code(), b"SYNTAX");
    assert_eq!(e.message(), b"invalid syntax");
    let Frame::Error(e) = decode_one(b"-ERR\r\n") else {
        panic!()
    };
    assert_eq!(e.code(), b"ERR");
    assert_eq!(e.message(), b"");
    assert!(ServerError::from_line(b("ERR unknown command `X`")).is_unknown_command());
}

#[test]
fn attributes_are_kept_when_asked() {
    let mut dec = Decoder::new(DecoderConfig::default().keep_attributes(true));
    let mut buf =
        BytesMut::from(&b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*1\r\n:2\r\n"[..]);
    let f = dec.decode(&mut buf).unwrap().unwrap();
    let Frame::Attributed { attributes, value } = &f else {
        panic!("{f:?}")
    };
    assert_eq!(attributes.len(), 1);
    assert_eq!(**value, Frame::Array(vec![Frame::Integer(2)]));
    assert_eq!(
        f.without_attributes(),
        Frame::Array(vec![Frame::Integer(2)])
    );
}

/// Found by the `decode` fuzz target: the scan read `*-01` as the null array (its value is -1)
/// while the build compared the text with "-1" and built an array of `usize::MAX` elements.
/// Both passes then decided by value; since the grammar became strict, `-1` has one spelling
/// and `-01` is refused outright, in every position.
#[test]
fn regression_null_length_with_leading_zero_is_refused_not_misread() {
    assert_eq!(err_kind(b"*-01\r\n"), K::InvalidLength);
    assert_eq!(err_kind(b"$-01\r\n"), K::InvalidLength);
    assert_eq!(err_kind(b"*2\r\n*-01\r\n$-001\r\n"), K::InvalidLength);
    assert_eq!(err_kind(b"*2\r\n*-1\r\n$-001\r\n"), K::InvalidLength);
    assert_eq!(
        decode_one(b"*2\r\n*-1\r\n$-1\r\n"),
        Frame::Array(vec![Frame::Null, Frame::Null])
    );
    let crash = b"-ER\x01\x00\x00*1\r\n*-0\r\n*-01\r\n*\r\n$1\r\nkfb12zd\r\n\n";
    let mut dec = Decoder::default();
    let mut buf = BytesMut::from(&crash[..]);
    while let Ok(Some(_)) = dec.decode(&mut buf) {}
}

#[test]
fn malformed_input_gives_typed_errors() {
    assert_eq!(err_kind(b"$-2\r\n"), K::InvalidLength);
    assert_eq!(err_kind(b"*-2\r\n"), K::InvalidLength);
    assert_eq!(err_kind(b"%-1\r\n"), K::InvalidLength);
    assert_eq!(err_kind(b":9223372036854775808\r\n"), K::InvalidInteger);
    assert_eq!(err_kind(b":-9223372036854775809\r\n"), K::InvalidInteger);
    assert_eq!(err_kind(b":12a\r\n"), K::InvalidInteger);
    assert_eq!(err_kind(b":\r\n"), K::InvalidInteger);
    assert_eq!(err_kind(b":-\r\n"), K::InvalidInteger);
    assert_eq!(err_kind(b"?x\r\n"), K::InvalidTypeByte);
    assert_eq!(err_kind(b"\r\n"), K::InvalidTypeByte);
    assert_eq!(err_kind(b"+OK\n"), K::InvalidLineEnding);
    assert_eq!(err_kind(b"$3\r\nabcXY"), K::InvalidLineEnding);
    assert_eq!(err_kind(b"#x\r\n"), K::InvalidBoolean);
    assert_eq!(err_kind(b",abc\r\n"), K::InvalidDouble);
    assert_eq!(err_kind(b"_x\r\n"), K::InvalidValue);
    assert_eq!(err_kind(b"(12x\r\n"), K::InvalidValue);
    assert_eq!(err_kind(b"=2\r\nab\r\n"), K::InvalidVerbatim);
    assert_eq!(err_kind(b"$?\r\n;4\r\nHell\r\n;0\r\n"), K::Unsupported);
    assert_eq!(err_kind(b"*?\r\n:1\r\n.\r\n"), K::Unsupported);
    assert_eq!(err_kind(b"~?\r\n"), K::Unsupported);
    assert_eq!(err_kind(b"%?\r\n"), K::Unsupported);
    // The error names the byte and where it is.
    let mut dec = Decoder::default();
    let e = dec
        .decode(&mut BytesMut::from(&b":12a4\r\n"[..]))
        .unwrap_err();
    assert_eq!((e.offset(), e.byte()), (3, Some(b'a')));
}

/// Decodes `input` whole, byte by byte and at every single cut: all three must give `want`.
fn accepts(input: &[u8], want: Frame) {
    let shown = String::from_utf8_lossy(input).into_owned();
    assert_eq!(decode_one(input), want, "{shown:?}");
    let every: Vec<usize> = (1..input.len()).collect();
    assert_eq!(decode_split(input, &every), vec![want.clone()], "{shown:?}");
    for cut in 0..=input.len() {
        assert_eq!(decode_split(input, &[cut]), vec![want.clone()], "{shown:?}");
    }
}

/// `input` is refused with `kind`, fed whole and byte by byte (the same error either way).
fn rejects(input: &[u8], kind: K) {
    let shown = String::from_utf8_lossy(input).into_owned();
    assert_eq!(err_kind(input), kind, "{shown:?} whole");
    let mut dec = Decoder::default();
    let mut buf = BytesMut::new();
    for &byte in input {
        buf.extend_from_slice(&[byte]);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(e.kind(), kind, "{shown:?} byte by byte");
                    return;
                }
            }
        }
    }
    panic!("{shown:?} byte by byte: no error");
}

/// The bug: every number took a leading `+`, so `$+3` was the length 3, `:+1` the integer 1
/// and `*+1` an array. RESP has no `+` there, and hiredis's reader refuses it.
#[test]
fn a_leading_plus_in_a_length_is_rejected() {
    rejects(b"$+3\r\nabc\r\n", K::InvalidInteger);
    rejects(b":+1\r\n", K::InvalidInteger);
    rejects(b"*+1\r\n:1\r\n", K::InvalidInteger);
    for marker in [b'$', b'!', b'=', b'*', b'~', b'%', b'>', b'|'] {
        let mut input = vec![marker];
        input.extend_from_slice(b"+0\r\n");
        rejects(&input, K::InvalidInteger);
        input[1..3].copy_from_slice(b"+1");
        rejects(&input, K::InvalidInteger);
    }
    rejects(b"*1\r\n$+1\r\na\r\n", K::InvalidInteger);
    rejects(b"(+1\r\n", K::InvalidValue);
    rejects(b",+1\r\n", K::InvalidDouble);
    // The error names the `+` and where it is.
    let e = Decoder::default()
        .decode(&mut BytesMut::from(&b"*1\r\n$+1\r\na\r\n"[..]))
        .unwrap_err();
    assert_eq!((e.offset(), e.byte()), (5, Some(b'+')));
}

#[test]
fn numbers_take_only_the_grammars_form() {
    // `:` integer = "0" / ["-"] %x31-39 *DIGIT, within i64.
    accepts(b":0\r\n", Frame::Integer(0));
    accepts(b":7\r\n", Frame::Integer(7));
    accepts(b":-7\r\n", Frame::Integer(-7));
    accepts(b":1000\r\n", Frame::Integer(1000));
    accepts(b":9223372036854775807\r\n", Frame::Integer(i64::MAX));
    accepts(b":-9223372036854775808\r\n", Frame::Integer(i64::MIN));
    for bad in [
        &b":\r\n"[..],
        b":-\r\n",
        b":+\r\n",
        b":+0\r\n",
        b":-0\r\n",
        b":00\r\n",
        b":01\r\n",
        b":-01\r\n",
        b":1-\r\n",
        b":--1\r\n",
        b": 1\r\n",
        b":1 \r\n",
        b":1.0\r\n",
        b":1e3\r\n",
        b":0x10\r\n",
        b":9223372036854775808\r\n",
        b":-9223372036854775809\r\n",
        b":99999999999999999999999999\r\n",
    ] {
        rejects(bad, K::InvalidInteger);
    }
    // The zero-allocation fast path and the general path agree on every one of them (the
    // fast path sees the line whole; `rejects` also feeds it byte by byte, through the scan).
    let e = Decoder::default()
        .decode(&mut BytesMut::from(&b":-01\r\n"[..]))
        .unwrap_err();
    assert_eq!((e.offset(), e.byte()), (2, Some(b'0')));
}

#[test]
fn lengths_and_counts_take_only_the_grammars_form() {
    // count = "0" / %x31-39 *DIGIT; `-1` only as the RESP2 nulls `$-1` and `*-1`.
    accepts(b"$0\r\n\r\n", Frame::Bulk(b("")));
    accepts(b"$10\r\n0123456789\r\n", Frame::Bulk(b("0123456789")));
    accepts(b"$-1\r\n", Frame::Null);
    accepts(b"*-1\r\n", Frame::Null);
    accepts(b"*0\r\n", Frame::Array(vec![]));
    accepts(b"~0\r\n", Frame::Set(vec![]));
    accepts(b"%0\r\n", Frame::Map(vec![]));
    accepts(b">0\r\n", Frame::Push(vec![]));
    accepts(b"|0\r\n:1\r\n", Frame::Integer(1));
    accepts(b"!0\r\n\r\n", Frame::Error(ServerError::from_line(b(""))));
    accepts(
        b"=4\r\ntxt:\r\n",
        Frame::Verbatim {
            format: *b"txt",
            data: b(""),
        },
    );
    accepts(b"*1\r\n*-1\r\n", Frame::Array(vec![Frame::Null]));
    for marker in [b'$', b'!', b'=', b'*', b'~', b'%', b'>', b'|'] {
        let line = |text: &[u8]| {
            let mut v = vec![marker];
            v.extend_from_slice(text);
            v.extend_from_slice(b"\r\n");
            v
        };
        for bad in [&b""[..], b"00", b"01", b"007", b"1a", b" 1", b"1 ", b"0x1"] {
            rejects(&line(bad), K::InvalidInteger);
        }
        for negative in [&b"-0"[..], b"-01", b"-2", b"-", b"-a"] {
            rejects(&line(negative), K::InvalidLength);
        }
        if !matches!(marker, b'$' | b'*') {
            rejects(&line(b"-1"), K::InvalidLength);
        }
        rejects(&line(b"?"), K::Unsupported);
        // A count past u64 is well-formed and over every limit.
        let over = line(b"99999999999999999999999999");
        let want = if matches!(marker, b'$' | b'!' | b'=') {
            K::BulkTooLong
        } else {
            K::TooManyElements
        };
        rejects(&over, want);
    }
    let e = Decoder::default()
        .decode(&mut BytesMut::from(&b"$007\r\n"[..]))
        .unwrap_err();
    assert_eq!((e.offset(), e.byte()), (1, Some(b'0')));
}

#[test]
fn the_other_scalars_take_only_the_grammars_form() {
    // Doubles: ["-"] 1*DIGIT ["." 1*DIGIT] [("e"/"E") ["+"/"-"] 1*DIGIT], inf, -inf, nan, -nan.
    for (text, value) in [
        (&b"0"[..], 0.0),
        (b"-0", -0.0),
        (b"10", 10.0),
        (b"1.5", 1.5),
        (b"-1.5", -1.5),
        (b"007.25", 7.25),
        (b"1e3", 1000.0),
        (b"1E3", 1000.0),
        (b"1e+3", 1000.0),
        (b"2.5e-3", 0.0025),
        (b"1.0000000000000002e+20", 1.0000000000000002e20),
        (b"inf", f64::INFINITY),
        (b"-inf", f64::NEG_INFINITY),
        (b"1e999", f64::INFINITY),
    ] {
        let mut input = b",".to_vec();
        input.extend_from_slice(text);
        input.extend_from_slice(b"\r\n");
        accepts(&input, Frame::Double(value));
    }
    for nan in [&b",nan\r\n"[..], b",-nan\r\n"] {
        let Frame::Double(d) = decode_one(nan) else {
            panic!()
        };
        assert!(d.is_nan());
    }
    for bad in [
        &b",\r\n"[..],
        b",-\r\n",
        b",+1\r\n",
        b",.5\r\n",
        b",1.\r\n",
        b",-.5\r\n",
        b",1e\r\n",
        b",1e+\r\n",
        b",1.5.2\r\n",
        b", 1\r\n",
        b",1 \r\n",
        b",0x10\r\n",
        b",infinity\r\n",
        b",Inf\r\n",
        b",+inf\r\n",
        b",NaN\r\n",
        b",NAN\r\n",
        b",+nan\r\n",
        b",nan(1)\r\n",
    ] {
        rejects(bad, K::InvalidDouble);
    }
    // Big numbers: the integer's form, at any length.
    accepts(b"(0\r\n", Frame::BigNumber(b("0")));
    accepts(b"(-12\r\n", Frame::BigNumber(b("-12")));
    accepts(
        b"(-3492890328409238509324850943850943825024385\r\n",
        Frame::BigNumber(b("-3492890328409238509324850943850943825024385")),
    );
    for bad in [
        &b"(\r\n"[..],
        b"(-\r\n",
        b"(+1\r\n",
        b"(-0\r\n",
        b"(01\r\n",
        b"(-01\r\n",
        b"(1.5\r\n",
        b"(1e3\r\n",
        b"(12x\r\n",
    ] {
        rejects(bad, K::InvalidValue);
    }
    // Booleans: `t` and `f` only.
    accepts(b"#t\r\n", Frame::Boolean(true));
    accepts(b"#f\r\n", Frame::Boolean(false));
    for bad in [
        &b"#\r\n"[..],
        b"#T\r\n",
        b"#F\r\n",
        b"#tt\r\n",
        b"#1\r\n",
        b"#true\r\n",
    ] {
        rejects(bad, K::InvalidBoolean);
    }
    // Null: nothing after `_`.
    accepts(b"_\r\n", Frame::Null);
    for bad in [&b"_x\r\n"[..], b"_ \r\n", b"__\r\n"] {
        rejects(bad, K::InvalidValue);
    }
    // Verbatim: count >= 4, any three bytes of format, then `:`.
    accepts(
        b"=8\r\nmkd:# hi\r\n",
        Frame::Verbatim {
            format: *b"mkd",
            data: b("# hi"),
        },
    );
    accepts(
        b"=6\r\nx\r\n:\r\n\r\n",
        Frame::Verbatim {
            format: *b"x\r\n",
            data: b("\r\n"),
        },
    );
    for bad in [&b"=3\r\ntxt\r\n"[..], b"=0\r\n\r\n"] {
        rejects(bad, K::InvalidVerbatim);
    }
    for bad in [
        &b"=4\r\ntxt \r\n"[..],
        b"=15\r\ntxt;Some string\r\n",
        b"=5\r\nabcde\r\n",
    ] {
        rejects(bad, K::InvalidVerbatim);
    }
    let e = Decoder::default()
        .decode(&mut BytesMut::from(&b"*1\r\n=5\r\nabcde\r\n"[..]))
        .unwrap_err();
    assert_eq!((e.offset(), e.byte()), (11, Some(b'd')));
}

#[test]
fn cr_and_lf_alone() {
    // Simple strings and errors: any byte but CR and LF; the line ends at CRLF.
    accepts(b"+\r\n", Frame::Simple(b("")));
    accepts(
        b"+a\tb\x00\xff\r\n",
        Frame::Simple(Bytes::from_static(b"a\tb\x00\xff")),
    );
    accepts(b"-\r\n", Frame::Error(ServerError::from_line(b(""))));
    for bad in [
        &b"+a\rb\r\n"[..],
        b"+\r\r\n",
        b"-ERR a\rb\r\n",
        b"*1\r\n+\r\r\n",
        // Inside any line, not only a simple string's.
        b":1\r2\r\n",
        b"$1\r\r\n",
        b"*1\r\r\n",
        b",1\r5\r\n",
        b"#t\rf\r\n",
    ] {
        rejects(bad, K::InvalidLineEnding);
    }
    // At once: the byte after a CR decides, the rest of the line is not waited for.
    let e = Decoder::default()
        .decode(&mut BytesMut::from(&b"+a\rb"[..]))
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.offset(), e.byte()),
        (K::InvalidLineEnding, 2, Some(b'\r'))
    );
    // A LF not after a CR ends a line wrongly, wherever it is.
    for bad in [
        &b"+OK\n"[..],
        b"+\n",
        b":1\n",
        b"$1\nx\r\n",
        b"*1\r\n:1\n",
        b"+a\nb\r\n",
    ] {
        rejects(bad, K::InvalidLineEnding);
    }
    // LF or CR where a type byte belongs.
    rejects(b"\n", K::InvalidTypeByte);
    rejects(b"\r\n", K::InvalidTypeByte);
    rejects(b"\r", K::InvalidTypeByte);
    rejects(b"*1\r\n\r\n", K::InvalidTypeByte);
    // A bulk payload takes any byte; the two after it must be CRLF.
    accepts(
        b"$4\r\n\r\n\n\r\r\n",
        Frame::Bulk(Bytes::from_static(b"\r\n\n\r")),
    );
    for bad in [
        &b"$1\r\nxx\n"[..],
        b"$1\r\nx\n\n",
        b"$1\r\nx\r\r",
        b"!1\r\nx\nx",
    ] {
        rejects(bad, K::InvalidLineEnding);
    }
}

#[test]
fn a_type_byte_is_judged_as_soon_as_it_arrives() {
    // Not a wait for the end of a line that may never come.
    for input in [&b"x"[..], b"*2\r\n:1\r\nx", b"H", b";", b".", b"\x00"] {
        let mut dec = Decoder::default();
        let e = dec.decode(&mut BytesMut::from(input)).unwrap_err();
        assert_eq!(e.kind(), K::InvalidTypeByte, "{input:?}");
        assert_eq!(e.offset(), input.len() - 1);
    }
    // Streamed chunks (`;`) and their end (`.`) belong to streamed types, which are refused.
    rejects(b";4\r\nHell\r\n", K::InvalidTypeByte);
}

#[test]
fn hostile_declarations_fail_fast_without_allocating_for_them() {
    for input in [
        &b"*2147483647\r\n"[..],
        b"%4294967295\r\n",
        b"$9223372036854775807\r\n",
        b"~9223372036854775807\r\n",
        b">4294967296\r\n",
    ] {
        let kind = err_kind(input);
        assert!(
            matches!(kind, K::TooManyElements | K::BulkTooLong),
            "{kind:?}"
        );
    }
    let deep = b"*1\r\n".repeat(100_000);
    assert_eq!(err_kind(&deep), K::TooDeep);
}

/// `max_depth` is a public field, so a config can be written past the builder's cap. The
/// decoder lowers it to the ceiling itself: the build recurses once per level, and a depth the
/// scan allowed but the thread's stack could not hold would be a crash, not an error.
#[test]
fn a_depth_set_past_the_ceiling_through_the_field_is_held_to_the_ceiling() {
    let cfg = DecoderConfig {
        max_depth: 100_000,
        ..DecoderConfig::default()
    };
    let dec = Decoder::new(cfg);
    assert_eq!(dec.config().max_depth, dragonlock::resp::MAX_DEPTH_CEILING);
    let mut nest = b"*1\r\n".repeat(dragonlock::resp::MAX_DEPTH_CEILING + 1);
    nest.extend_from_slice(b":1\r\n");
    assert_eq!(decode_with(cfg, &nest), K::TooDeep);
}

#[test]
fn limits_hold_at_n_and_fail_at_n_plus_one() {
    // Depth.
    let cfg = DecoderConfig::default().max_depth(4);
    let nest = |d: usize| {
        let mut v = b"*1\r\n".repeat(d);
        v.extend_from_slice(b":1\r\n");
        v
    };
    let mut dec = Decoder::new(cfg);
    assert!(dec
        .decode(&mut BytesMut::from(&nest(4)[..]))
        .unwrap()
        .is_some());
    assert_eq!(decode_with(cfg, &nest(5)), K::TooDeep);
    // Attributes count towards depth too.
    assert_eq!(
        decode_with(cfg, b"*1\r\n*1\r\n*1\r\n*1\r\n|1\r\n:1\r\n:1\r\n:1\r\n"),
        K::TooDeep
    );

    // Elements per aggregate.
    let cfg = DecoderConfig::default().max_elements(3);
    let mut dec = Decoder::new(cfg);
    assert!(dec
        .decode(&mut BytesMut::from(&b"*3\r\n:1\r\n:2\r\n:3\r\n"[..]))
        .unwrap()
        .is_some());
    assert_eq!(decode_with(cfg, b"*4\r\n"), K::TooManyElements);
    assert!(dec
        .decode(&mut BytesMut::from(
            &b"%3\r\n:1\r\n:1\r\n:2\r\n:2\r\n:3\r\n:3\r\n"[..]
        ))
        .unwrap()
        .is_some());
    assert_eq!(decode_with(cfg, b"%4\r\n"), K::TooManyElements);

    // Bulk length.
    let cfg = DecoderConfig::default().max_bulk_len(5);
    let mut dec = Decoder::new(cfg);
    assert!(dec
        .decode(&mut BytesMut::from(&b"$5\r\nhello\r\n"[..]))
        .unwrap()
        .is_some());
    assert_eq!(decode_with(cfg, b"$6\r\n"), K::BulkTooLong);
    assert_eq!(decode_with(cfg, b"!6\r\n"), K::BulkTooLong);

    // Line length, whether the line is complete or still arriving.
    let cfg = DecoderConfig::default().max_line_len(8);
    let mut dec = Decoder::new(cfg);
    assert!(dec
        .decode(&mut BytesMut::from(&b"+12345678\r\n"[..]))
        .unwrap()
        .is_some());
    assert_eq!(decode_with(cfg, b"+123456789\r\n"), K::LineTooLong);
    assert_eq!(decode_with(cfg, b"+123456789012"), K::LineTooLong);

    // Whole frame.
    let cfg = DecoderConfig::default().max_frame_bytes(19);
    let mut dec = Decoder::new(cfg);
    assert!(dec
        .decode(&mut BytesMut::from(&b"*2\r\n$2\r\nab\r\n$1\r\nc\r\n"[..]))
        .unwrap()
        .is_some());
    assert_eq!(
        decode_with(cfg, b"*2\r\n$2\r\nab\r\n$2\r\ncd\r\n"),
        K::FrameTooLarge
    );
}

#[test]
fn every_fixture_decodes_the_same_at_every_split_and_byte_by_byte() {
    let captures = fixtures::captures();
    assert!(captures.len() > 40);
    for cap in &captures {
        let whole = decode_all(&cap.reply).unwrap();
        // One reply, after any pushes the server sent first (DEBUG PROTOCOL push).
        assert!(
            whole[..whole.len() - 1].iter().all(Frame::is_push),
            "{}/{}",
            cap.server,
            cap.step
        );
        assert!(!whole.last().unwrap().is_push());
        for cut in 0..=cap.reply.len() {
            assert_eq!(
                decode_split(&cap.reply, &[cut]),
                whole,
                "{}/{} cut at {cut}",
                cap.server,
                cap.step
            );
        }
        let every: Vec<usize> = (1..cap.reply.len()).collect();
        assert_eq!(
            decode_split(&cap.reply, &every),
            whole,
            "{}/{} byte by byte",
            cap.server,
            cap.step
        );
    }
}

#[test]
fn fixtures_pipelined_with_pushes_and_attributes_decode_in_order() {
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for (i, cap) in fixtures::captures().iter().enumerate() {
        if i % 3 == 0 {
            stream.extend_from_slice(b">2\r\n+invalidate\r\n*1\r\n$1\r\nk\r\n");
            expected.push(decode_one(b">2\r\n+invalidate\r\n*1\r\n$1\r\nk\r\n"));
        }
        if i % 4 == 0 {
            stream.extend_from_slice(b"|1\r\n+meta\r\n:1\r\n");
        }
        stream.extend_from_slice(&cap.reply);
        expected.extend(decode_all(&cap.reply).unwrap());
    }
    assert_eq!(decode_all(&stream).unwrap(), expected);
    let every: Vec<usize> = (1..stream.len()).step_by(7).collect();
    assert_eq!(decode_split(&stream, &every), expected);
}

#[test]
fn fixtures_decode_to_what_a_lock_client_expects() {
    use fixtures::reply;
    for server in ["redis", "dragonfly"] {
        assert!(decode_one(&reply(server, "set_nx_ok_resp3")).is_ok());
        assert!(decode_one(&reply(server, "set_nx_taken_resp3")).is_null());
        assert!(decode_one(&reply(server, "set_nx_taken_resp2")).is_null());
        assert_eq!(
            decode_one(&reply(server, "evalsha_release_ok_resp3")),
            Frame::Integer(1)
        );
        let Frame::Error(e) = decode_one(&reply(server, "evalsha_noscript_resp3")) else {
            panic!()
        };
        assert!(e.has_code("NOSCRIPT"));
        let hello = decode_one(&reply(server, "hello3"));
        assert_eq!(hello.map_get(b"proto"), Some(&Frame::Integer(3)));
        let hello2 = decode_one(&reply(server, "hello2"));
        assert_eq!(hello2.map_get(b"proto"), Some(&Frame::Integer(2)));
        let Frame::Error(e) = decode_one(&reply(server, "unknown_command")) else {
            panic!()
        };
        assert!(e.is_unknown_command());
    }
}

#[test]
fn byte_at_a_time_is_linear() {
    // A 1 MiB bulk fed one byte at a time: the scan must not restart from the frame's start.
    // (A quadratic decoder would do ~5e11 byte visits here and never finish the test.)
    let mut input = b"*2\r\n$1048576\r\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 1 << 20));
    input.extend_from_slice(b"\r\n+");
    input.extend(std::iter::repeat_n(b'y', 60_000));
    input.extend_from_slice(b"\r\n");
    let mut dec = Decoder::default();
    let mut buf = BytesMut::with_capacity(input.len());
    let mut got = None;
    for &byte in &input {
        buf.extend_from_slice(&[byte]);
        if let Some(f) = dec.decode(&mut buf).unwrap() {
            got = Some(f);
        }
    }
    let Some(Frame::Array(items)) = got else {
        panic!()
    };
    assert_eq!(items[0].as_bytes().unwrap().len(), 1 << 20);
    assert_eq!(items[1].as_bytes().unwrap().len(), 60_000);
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let text = "[a-zA-Z0-9 :]{0,12}".prop_map(|s| Bytes::from(s.into_bytes()));
    let bin = proptest::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from);
    let leaf = prop_oneof![
        text.clone().prop_map(Frame::Simple),
        "[A-Z]{1,8}( [a-z ]{0,10})?"
            .prop_map(|s| Frame::Error(ServerError::from_line(Bytes::from(s.into_bytes())))),
        any::<i64>().prop_map(Frame::Integer),
        bin.clone().prop_map(Frame::Bulk),
        Just(Frame::Null),
        any::<bool>().prop_map(Frame::Boolean),
        (-1e12f64..1e12).prop_map(Frame::Double),
        "-?[1-9][0-9]{0,40}".prop_map(|s| Frame::BigNumber(Bytes::from(s.into_bytes()))),
        bin.prop_map(|data| Frame::Verbatim {
            format: *b"txt",
            data
        }),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Frame::Array),
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Frame::Set),
            proptest::collection::vec((inner.clone(), inner.clone()), 0..4).prop_map(Frame::Map),
            proptest::collection::vec(inner, 1..4).prop_map(Frame::Push),
        ]
    })
}

/// The prepared encoders write numbers two digits at a time into uninitialised space and commit
/// what they wrote (the one `unsafe` block in the encoder): every digit count, at its edges, with
/// the buffer exactly full and with spare room, must come out as the generic encoder's bytes.
#[test]
fn prepared_encoders_write_every_digit_count_exactly() {
    let mut edges = vec![0u64, u64::MAX];
    let mut p = 1u64;
    while let Some(next) = p.checked_mul(10) {
        edges.extend([p - 1, p, p + 1]);
        p = next;
    }
    edges.extend([p - 1, p, p + 1]);
    for &ttl in &edges {
        for key_len in [0usize, 1, 9, 10, 99, 100, 101] {
            let key = vec![b'k'; key_len];
            for spare in [0usize, 1, 64] {
                let mut prepared = BytesMut::with_capacity(spare);
                SetNxPxCommand::new(ttl).encode(&mut prepared, &key, b"token");
                let mut generic = BytesMut::new();
                let ms = ttl.to_string();
                encode_command(
                    &mut generic,
                    &[&b"SET"[..], &key, b"token", b"NX", b"PX", ms.as_bytes()],
                );
                assert_eq!(prepared, generic, "ttl {ttl}, key of {key_len}");
            }
        }
    }
    let sha = [b'a'; 40];
    for n in [0usize, 1, 9, 10, 11, 99, 100, 101] {
        let keys: Vec<Vec<u8>> = (0..n).map(|i| i.to_string().into_bytes()).collect();
        let mut prepared = BytesMut::new();
        EvalShaCommand::new(&sha).encode(&mut prepared, &keys, &[b"t"]);
        let numkeys = n.to_string();
        let mut all: Vec<&[u8]> = vec![b"EVALSHA", &sha, numkeys.as_bytes()];
        all.extend(keys.iter().map(Vec::as_slice));
        all.push(b"t");
        let mut generic = BytesMut::new();
        encode_command(&mut generic, &all);
        assert_eq!(prepared, generic, "{n} keys");
    }
    for key_len in [0usize, 1, 9, 10, 99, 100, 101] {
        let key = vec![b'k'; key_len];
        for value_len in [0usize, 9, 10, 32, 100] {
            let value = vec![b'v'; value_len];
            for spare in [0usize, 1, 64] {
                let mut prepared = BytesMut::with_capacity(spare);
                encode_delex_ifeq(&mut prepared, &key, &value);
                let mut generic = BytesMut::new();
                encode_command(&mut generic, &[&b"DELEX"[..], &key, b"IFEQ", &value]);
                assert_eq!(prepared, generic, "key of {key_len}, value of {value_len}");
            }
        }
    }
    // The channel's two parts add up across a digit edge (9 + 1, 99 + 1) too.
    for prefix_len in [0usize, 1, 9, 20, 99] {
        let prefix = vec![b'p'; prefix_len];
        for channel_len in [0usize, 1, 10, 80, 101] {
            let channel = vec![b'c'; channel_len];
            for message_len in [0usize, 9, 10, 32, 100] {
                let message = vec![b'm'; message_len];
                let mut prepared = BytesMut::new();
                encode_publish(&mut prepared, &prefix, &channel, &message);
                let joined = [&prefix[..], &channel[..]].concat();
                let mut generic = BytesMut::new();
                encode_command(&mut generic, &[&b"PUBLISH"[..], &joined, &message]);
                assert_eq!(
                    prepared, generic,
                    "prefix {prefix_len}, channel {channel_len}, message {message_len}"
                );
            }
        }
    }
}

/// `EVALSHA`'s keys and arguments come through the caller's `AsRef`, which the encoder calls
/// once to count and once to write. One that answers differently the second time (longer or
/// shorter) must meet a panic, never a write past the reserved space or uninitialised bytes in
/// the buffer; the buffer keeps what it had.
#[test]
fn a_caller_bulk_that_changes_between_count_and_write_panics_cleanly() {
    use std::cell::Cell;
    struct Shifty {
        calls: Cell<usize>,
        first: Vec<u8>,
        then: Vec<u8>,
    }
    impl AsRef<[u8]> for Shifty {
        fn as_ref(&self) -> &[u8] {
            self.calls.set(self.calls.get() + 1);
            if self.calls.get() == 1 {
                &self.first
            } else {
                &self.then
            }
        }
    }
    for (first, then) in [(3, 300), (300, 3), (9, 10), (10, 9)] {
        let key = Shifty {
            calls: Cell::new(0),
            first: vec![b'k'; first],
            then: vec![b'K'; then],
        };
        let mut buf = BytesMut::from(&b"before"[..]);
        let cmd = EvalShaCommand::new(&[b'a'; 40]);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cmd.encode(&mut buf, &[&key], &[b"t"]);
        }));
        assert!(outcome.is_err(), "{first} then {then} bytes");
        assert_eq!(&buf[..], b"before");
    }
}

proptest! {
    #[test]
    fn encode_then_decode_at_random_splits_round_trips(
        frames in proptest::collection::vec(arb_frame(), 1..5),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut buf = BytesMut::new();
        for f in &frames {
            encode_frame(&mut buf, f);
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(buf.len() + 1)).collect();
        cuts.sort_unstable();
        prop_assert_eq!(decode_split(&buf, &cuts), frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut dec = Decoder::default();
        let mut buf = BytesMut::from(&input[..]);
        while let Ok(Some(_)) = dec.decode(&mut buf) {}
    }

    /// The prepared encoders compute their length up front; whatever the sizes, they must write
    /// exactly what the generic encoder writes, after whatever is already in the buffer.
    #[test]
    fn prepared_encoders_match_the_generic_encoder(
        before in proptest::collection::vec(any::<u8>(), 0..20),
        key in proptest::collection::vec(any::<u8>(), 0..300),
        token in proptest::collection::vec(any::<u8>(), 0..150),
        ttl in any::<u64>(),
        keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..12),
        args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..12),
    ) {
        let (mut prepared, mut generic) = (BytesMut::from(&before[..]), BytesMut::from(&before[..]));
        SetNxPxCommand::new(ttl).encode(&mut prepared, &key, &token);
        let ttl = ttl.to_string();
        encode_command(&mut generic, &[&b"SET"[..], &key, &token, b"NX", b"PX", ttl.as_bytes()]);
        prop_assert_eq!(&prepared, &generic);

        let sha = [b'f'; 40];
        EvalShaCommand::new(&sha).encode(&mut prepared, &keys, &args);
        let numkeys = keys.len().to_string();
        let mut all: Vec<&[u8]> = vec![b"EVALSHA", &sha, numkeys.as_bytes()];
        all.extend(keys.iter().map(Vec::as_slice));
        all.extend(args.iter().map(Vec::as_slice));
        encode_command(&mut generic, &all);
        prop_assert_eq!(&prepared, &generic);

        encode_delex_ifeq(&mut prepared, &key, &token);
        encode_command(&mut generic, &[&b"DELEX"[..], &key, b"IFEQ", &token]);
        prop_assert_eq!(prepared, generic);
    }
}
