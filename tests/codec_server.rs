//! The codec against a real server: raw commands over a plain socket, every reply type that
//! `DEBUG PROTOCOL` can produce, in RESP3 and RESP2.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use dragonlock::resp::{Decoder, Frame};
use support::server::{encode, Flavor, Server};

struct Raw {
    sock: TcpStream,
    buf: BytesMut,
    dec: Decoder,
}

impl Raw {
    fn new(server: &Server) -> Raw {
        let sock = TcpStream::connect(server.addr()).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Raw {
            sock,
            buf: BytesMut::new(),
            dec: Decoder::default(),
        }
    }

    /// Sends a command; returns every frame up to and including the first non-push one.
    fn call(&mut self, args: &[&str]) -> Vec<Frame> {
        self.sock.write_all(&encode(args)).unwrap();
        let mut frames = Vec::new();
        loop {
            match self.dec.decode(&mut self.buf).unwrap() {
                Some(f) => {
                    let push = f.is_push();
                    frames.push(f);
                    if !push {
                        return frames;
                    }
                }
                None => {
                    let mut chunk = [0u8; 4096];
                    let n = self.sock.read(&mut chunk).unwrap();
                    assert!(n > 0, "server closed");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }

    fn one(&mut self, args: &[&str]) -> Frame {
        let mut frames = self.call(args);
        assert_eq!(frames.len(), 1, "{args:?}: {frames:?}");
        frames.pop().unwrap()
    }
}

#[test]
fn every_debug_protocol_type_decodes_in_resp3_and_resp2() {
    if support::server::binary().1 == Flavor::Dragonfly {
        // DEBUG PROTOCOL exists on Redis only; the HELLO part still runs.
        support::not_on_this_server(
            "every_debug_protocol_type_decodes_in_resp3_and_resp2",
            "DEBUG PROTOCOL exists on Redis only; only the HELLO 3 part ran",
        );
        let server = Server::start();
        let mut raw = Raw::new(&server);
        assert_eq!(
            raw.one(&["HELLO", "3"]).map_get(b"proto"),
            Some(&Frame::Integer(3))
        );
        return;
    }
    let server = Server::start();
    let mut raw = Raw::new(&server);
    let hello = raw.one(&["HELLO", "3"]);
    assert!(matches!(hello, Frame::Map(_)), "{hello:?}");
    assert_eq!(hello.map_get(b"proto"), Some(&Frame::Integer(3)));

    let mut dp = |t: &str| raw.call(&["DEBUG", "PROTOCOL", t]);
    assert!(matches!(dp("string").as_slice(), [Frame::Bulk(_)]));
    assert!(matches!(dp("integer").as_slice(), [Frame::Integer(_)]));
    assert!(matches!(dp("double").as_slice(), [Frame::Double(_)]));
    assert!(
        matches!(dp("bignum").as_slice(), [Frame::BigNumber(b)] if b.iter().all(|c| c.is_ascii_digit() || *c == b'-'))
    );
    assert_eq!(dp("null"), vec![Frame::Null]);
    assert!(matches!(dp("array").as_slice(), [Frame::Array(v)] if !v.is_empty()));
    assert!(matches!(dp("set").as_slice(), [Frame::Set(v)] if !v.is_empty()));
    assert!(matches!(dp("map").as_slice(), [Frame::Map(v)] if !v.is_empty()));
    // The attribute is dropped: only the value it annotates is the reply.
    assert!(
        matches!(dp("attrib").as_slice(), [Frame::Bulk(_) | Frame::Simple(_)]),
        "{:?}",
        dp("attrib")
    );
    let push = dp("push");
    assert!(
        push.len() == 2 && push[0].is_push() && !push[1].is_push(),
        "{push:?}"
    );
    assert!(
        matches!(dp("verbatim").as_slice(), [Frame::Verbatim { format, .. }] if format == b"txt")
    );
    assert_eq!(dp("true"), vec![Frame::Boolean(true)]);
    assert_eq!(dp("false"), vec![Frame::Boolean(false)]);
    let err = raw.one(&["DEBUG", "PROTOCOL", "no-such-type"]);
    assert!(matches!(err, Frame::Error(_)), "{err:?}");

    // RESP2 on a fresh connection: the nulls come back as $-1 and *-1.
    let mut raw2 = Raw::new(&server);
    assert!(matches!(raw2.one(&["HELLO", "2"]), Frame::Array(_)));
    raw2.sock
        .write_all(&encode(&["DEBUG", "PROTOCOL", "null"]))
        .unwrap();
    let mut bytes = [0u8; 16];
    let n = raw2.sock.read(&mut bytes).unwrap();
    assert_eq!(&bytes[..n], b"$-1\r\n");
    assert_eq!(raw2.one(&["DEBUG", "PROTOCOL", "null"]), Frame::Null);
    // A timed-out BLPOP answers the RESP2 null array.
    raw2.sock
        .write_all(&encode(&["BLPOP", "nokey", "0.01"]))
        .unwrap();
    let n = raw2.sock.read(&mut bytes).unwrap();
    assert_eq!(&bytes[..n], b"*-1\r\n");
    assert_eq!(raw2.one(&["BLPOP", "nokey", "0.01"]), Frame::Null);
}
