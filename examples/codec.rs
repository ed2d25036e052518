//! The sans-IO RESP codec driven by hand, for people embedding or fuzzing it: encode commands
//! into a buffer, decode replies from bytes however they arrive (whole, split, one byte at a
//! time, several in one read), and tell a server's error reply from a malformed stream. Then
//! the same codec over a plain blocking `std::net::TcpStream`: no tokio, no connection layer.
//!
//! ```sh
//! cargo run --example codec --features testing                      # 1 local server
//! cargo run --example codec --features testing -- redis://127.0.0.1:7001
//! ```

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::ControlFlow;
use std::time::Duration;

use bytes::BytesMut;
use dragonlock::conn::ConnectionConfig;
use dragonlock::resp::{
    encode_command, DecodeErrorKind, Decoder, DecoderConfig, Frame, ServerErrorKind, SetNxPxCommand,
};

/// The most bytes read from the server before giving up on the replies (bounds the loop).
const MAX_REPLY_BYTES: usize = 1 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    encoding();
    decoding();
    let nodes = common::Nodes::from_args_or_local(1)?;
    over_a_socket(&nodes.urls[0])?;
    Ok(())
}

/// Commands are arrays of bulk strings, written into a `BytesMut` the caller owns.
fn encoding() {
    let mut out = BytesMut::new();
    encode_command(&mut out, &["SET", "greeting", "hello"]);
    println!("encode_command: {}", escape(&out));
    assert_eq!(
        &out[..],
        b"*3\r\n$3\r\nSET\r\n$8\r\ngreeting\r\n$5\r\nhello\r\n"
    );

    // The lock's own command, prepared once per ttl and then encoded per node without
    // formatting the ttl again.
    out.clear();
    let set = SetNxPxCommand::new(30_000);
    set.encode(&mut out, b"invoice:17", b"3f2a9c");
    println!("SetNxPxCommand: {}", escape(&out));
    assert!(out.ends_with(b"$2\r\nNX\r\n$2\r\nPX\r\n$5\r\n30000\r\n"));
}

fn decoding() {
    let mut decoder = Decoder::new(DecoderConfig::default());

    // A whole reply.
    let mut buf = BytesMut::from(&b"+OK\r\n"[..]);
    let ok = decoder.decode(&mut buf).unwrap().unwrap();
    println!("+OK                 -> {ok:?}");
    assert!(ok.is_ok() && buf.is_empty());

    // A frame split across two reads: `Ok(None)` means "need more bytes"; the bytes stay in
    // the buffer, and the decoder keeps its place, so the first part is not scanned again.
    let mut buf = BytesMut::from(&b"*2\r\n$5\r\nhello\r\n:4"[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"2\r\n");
    let array = decoder.decode(&mut buf).unwrap().unwrap();
    println!("split array         -> {array:?}");
    match &array {
        Frame::Array(items) => {
            assert_eq!(items[0].as_bytes(), Some(&b"hello"[..]));
            assert_eq!(items[1].as_integer(), Some(42));
        }
        other => panic!("expected an array, got {other:?}"),
    }

    // One byte at a time: a RESP3 map.
    let input = b"%1\r\n+price\r\n,101.25\r\n";
    let mut buf = BytesMut::new();
    let mut waits = 0;
    let mut map = None;
    for &byte in input {
        buf.extend_from_slice(&[byte]);
        match decoder.decode(&mut buf).unwrap() {
            None => waits += 1,
            Some(frame) => map = Some(frame),
        }
    }
    let map = map.expect("the last byte completes the map");
    println!("map, byte by byte   -> {map:?} ({waits} times Ok(None))");
    assert_eq!(map.map_get(b"price"), Some(&Frame::Double(101.25)));

    // A server's error reply is a frame like any other; the stream is still in sync.
    let mut buf = BytesMut::from(&b"-NOSCRIPT No matching script.\r\n"[..]);
    match decoder.decode(&mut buf).unwrap().unwrap() {
        Frame::Error(e) => {
            println!(
                "error reply         -> code {}, kind {:?}",
                String::from_utf8_lossy(e.code()),
                e.kind()
            );
            assert_eq!(e.kind(), ServerErrorKind::NoScript);
        }
        other => panic!("expected an error reply, got {other:?}"),
    }

    // A malformed stream is a `DecodeError`: the connection must be closed after it.
    let mut buf = BytesMut::from(&b":+1\r\n"[..]);
    let err = decoder.decode(&mut buf).unwrap_err();
    println!(
        "malformed :+1       -> {:?} at offset {}",
        err.kind(),
        err.offset()
    );
    assert_eq!(err.kind(), DecodeErrorKind::InvalidInteger);
    // The stream is out of sync after an error: a connection closes here. To go on with the
    // same decoder, drop the bytes and the decoder's partial frame.
    buf.clear();
    decoder.reset();

    // Everything one read brought, in one call; an incomplete tail stays for the next read.
    let mut buf = BytesMut::from(&b"+OK\r\n:1\r\n$-1\r\n$3\r\nab"[..]);
    let mut frames = Vec::new();
    decoder
        .decode_each(&mut buf, |frame| {
            frames.push(frame);
            ControlFlow::Continue(())
        })
        .unwrap();
    println!("decode_each         -> {frames:?}, left {}", escape(&buf));
    assert_eq!(
        frames,
        [Frame::Simple("OK".into()), Frame::Integer(1), Frame::Null]
    );
    assert_eq!(&buf[..], b"$3\r\nab");
}

/// A pipeline of four commands in one write, the replies decoded as the reads bring them.
fn over_a_socket(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let addr = ConnectionConfig::from_url(url)?.addr();
    let mut socket = TcpStream::connect(&addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;

    let key = "dragonlock-example:codec";
    let mut out = BytesMut::new();
    SetNxPxCommand::new(10_000).encode(&mut out, key.as_bytes(), b"value");
    encode_command(&mut out, &["GET", key]);
    encode_command(&mut out, &["DEL", key]);
    encode_command(&mut out, &["NO-SUCH-COMMAND"]);
    socket.write_all(&out)?;

    let mut decoder = Decoder::default();
    let mut buf = BytesMut::with_capacity(4096);
    let mut replies = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut total = 0;
    while replies.len() < 4 {
        let n = socket.read(&mut chunk)?;
        if n == 0 || total + n > MAX_REPLY_BYTES {
            return Err(format!("{addr} closed or sent too much after {total} bytes").into());
        }
        total += n;
        buf.extend_from_slice(&chunk[..n]);
        decoder.decode_each(&mut buf, |frame| {
            replies.push(frame);
            ControlFlow::Continue(())
        })?;
    }
    println!("{addr}: {total} bytes of replies");
    for (command, reply) in ["SET NX PX", "GET", "DEL", "NO-SUCH-COMMAND"]
        .iter()
        .zip(&replies)
    {
        println!("  {command:<16} -> {reply:?}");
    }
    if matches!(&replies[0], Frame::Error(e) if e.kind() == ServerErrorKind::Auth) {
        return Ok(()); // a node with a password: this example sends no AUTH
    }
    assert!(replies[0].is_ok(), "SET NX on a fresh key");
    assert_eq!(replies[1].as_bytes(), Some(&b"value"[..]));
    assert_eq!(replies[2].as_integer(), Some(1));
    assert!(matches!(&replies[3], Frame::Error(e) if e.is_unknown_command()));
    Ok(())
}

/// Bytes as text, with CR and LF shown.
fn escape(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .replace('\r', "\\r")
        .replace('\n', "\\n")
}
