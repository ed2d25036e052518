//! Encoders. Commands go out as arrays of bulk strings, written straight into the connection's
//! write buffer: numbers are formatted on the stack (`itoa`), nothing is allocated per command.

use bytes::{BufMut, BytesMut};

use super::Frame;

fn put_len(dst: &mut BytesMut, marker: u8, n: usize) {
    let mut num = itoa::Buffer::new();
    dst.put_u8(marker);
    dst.put_slice(num.format(n).as_bytes());
    dst.put_slice(b"\r\n");
}

fn put_bulk(dst: &mut BytesMut, arg: &[u8]) {
    put_len(dst, b'$', arg.len());
    dst.put_slice(arg);
    dst.put_slice(b"\r\n");
}

/// Writes a command (`*N` of bulk strings) into `dst`.
///
/// # Examples
///
/// ```
/// let mut buf = bytes::BytesMut::new();
/// dragonlock::resp::encode_command(&mut buf, &[b"GET", b"key"]);
/// assert_eq!(&buf[..], b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n");
/// ```
pub fn encode_command<A: AsRef<[u8]>>(dst: &mut BytesMut, args: &[A]) {
    let size: usize = args.iter().map(|a| a.as_ref().len() + 16).sum();
    dst.reserve(size + 16);
    put_len(dst, b'*', args.len());
    for arg in args {
        put_bulk(dst, arg.as_ref());
    }
}

/// `SET key token NX PX ms`, the acquire command, with its constant parts written as fixed
/// pieces and the buffer grown once.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetNxPxCommand;

impl SetNxPxCommand {
    /// Writes `SET key token NX PX ttl_ms` into `dst`.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut buf = bytes::BytesMut::new();
    /// dragonlock::resp::SetNxPxCommand.encode(&mut buf, b"k", b"t", 30000);
    /// assert_eq!(&buf[..], &b"*6\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nt\r\n$2\r\nNX\r\n$2\r\nPX\r\n$5\r\n30000\r\n"[..]);
    /// ```
    pub fn encode(&self, dst: &mut BytesMut, key: &[u8], token: &[u8], ttl_ms: u64) {
        // itoa writes two digits per step: faster than `num` for the 4-6 digit ttl.
        let mut ms = itoa::Buffer::new();
        let ms = ms.format(ttl_ms).as_bytes();
        let len = b"*6\r\n$3\r\nSET\r\n".len()
            + bulk_len(key.len())
            + bulk_len(token.len())
            + b"$2\r\nNX\r\n$2\r\nPX\r\n".len()
            + bulk_len(ms.len());
        // Three bulks, written out rather than with `Writer::bulk`: the `$` and CRLF around
        // them join the constant pieces, one copy fewer each (400 against 418 instructions).
        write_prepared(dst, len, |w| {
            w.lit(b"*6\r\n$3\r\nSET\r\n$");
            w.num(key.len() as u64);
            w.lit(b"\r\n");
            w.bytes(key);
            w.lit(b"\r\n$");
            w.num(token.len() as u64);
            w.lit(b"\r\n");
            w.bytes(token);
            w.lit(b"\r\n$2\r\nNX\r\n$2\r\nPX\r\n$");
            w.num(ms.len() as u64);
            w.lit(b"\r\n");
            w.bytes(ms);
            w.lit(b"\r\n");
        });
    }
}

/// Bytes of a bulk string of `len` bytes: `$len\r\n…\r\n`.
#[inline]
fn bulk_len(len: usize) -> usize {
    1 + digits(len as u64) + 2 + len + 2
}

/// Decimal digits in `n`.
#[inline]
fn digits(n: u64) -> usize {
    // Lengths in a lock command are one or two digits: skip the general log for them.
    match n {
        0..=9 => 1,
        10..=99 => 2,
        _ => n.ilog10() as usize + 1,
    }
}

/// Writes a prepared command into space grown once: constant pieces are fixed-size copies the
/// compiler inlines, numbers are written digit by digit in place. `put_slice` per piece costs a
/// capacity check and, for pieces of unknown length, a `memmove` call each; a `SET` has a dozen.
///
/// The length given to [`write_prepared`] is checked, not trusted: writing past it panics on
/// the slice bounds, and whatever was not written is trimmed.
struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

/// Grows `dst` by `len` once and lets `write` fill it.
#[inline(always)]
fn write_prepared(dst: &mut BytesMut, len: usize, write: impl FnOnce(&mut Writer<'_>)) {
    let start = dst.len();
    dst.resize(start + len, 0);
    let mut w = Writer {
        out: &mut dst[start..],
        at: 0,
    };
    write(&mut w);
    let written = w.at;
    debug_assert_eq!(written, len, "the length computed was exact");
    dst.truncate(start + written);
}

impl Writer<'_> {
    #[inline(always)]
    fn lit<const N: usize>(&mut self, s: &[u8; N]) {
        self.out[self.at..self.at + N].copy_from_slice(s);
        self.at += N;
    }

    #[inline(always)]
    fn bytes(&mut self, s: &[u8]) {
        self.out[self.at..self.at + s.len()].copy_from_slice(s);
        self.at += s.len();
    }

    /// `$len\r\n<s>\r\n`, [`bulk_len`] bytes.
    #[inline(always)]
    fn bulk(&mut self, s: &[u8]) {
        self.lit(b"$");
        self.num(s.len() as u64);
        self.lit(b"\r\n");
        self.bytes(s);
        self.lit(b"\r\n");
    }

    #[inline(always)]
    fn num(&mut self, mut n: u64) {
        let end = self.at + digits(n);
        let mut i = end;
        loop {
            i -= 1;
            self.out[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.at = end;
    }
}

/// `EVALSHA sha numkeys keys… args…` for one script, with the `EVALSHA` and SHA parts prepared
/// once.
#[derive(Debug, Clone)]
pub struct EvalShaCommand {
    /// `$7\r\nEVALSHA\r\n$40\r\n<sha>\r\n`.
    head: [u8; 60],
}

impl EvalShaCommand {
    /// Prepares the command for the script whose hex SHA-1 is `sha`.
    pub fn new(sha: &[u8; 40]) -> EvalShaCommand {
        let mut head = [0u8; 60];
        head[..18].copy_from_slice(b"$7\r\nEVALSHA\r\n$40\r\n");
        head[18..58].copy_from_slice(sha);
        head[58..].copy_from_slice(b"\r\n");
        EvalShaCommand { head }
    }

    /// Writes `EVALSHA sha len(keys) keys… args…` into `dst`.
    ///
    /// # Examples
    ///
    /// ```
    /// let cmd = dragonlock::resp::EvalShaCommand::new(&[b'a'; 40]);
    /// let mut buf = bytes::BytesMut::new();
    /// cmd.encode(&mut buf, &[b"k"], &[b"t"]);
    /// assert!(buf.starts_with(b"*5\r\n$7\r\nEVALSHA\r\n$40\r\naaaa"));
    /// assert!(buf.ends_with(b"$1\r\n1\r\n$1\r\nk\r\n$1\r\nt\r\n"));
    /// ```
    pub fn encode<K: AsRef<[u8]>, A: AsRef<[u8]>>(
        &self,
        dst: &mut BytesMut,
        keys: &[K],
        args: &[A],
    ) {
        let count = 3 + keys.len() + args.len();
        let mut numkeys = itoa::Buffer::new();
        let numkeys = numkeys.format(keys.len()).as_bytes();
        let len = 1
            + digits(count as u64)
            + 2
            + self.head.len()
            + bulk_len(numkeys.len())
            + keys
                .iter()
                .map(|k| bulk_len(k.as_ref().len()))
                .sum::<usize>()
            + args
                .iter()
                .map(|a| bulk_len(a.as_ref().len()))
                .sum::<usize>();
        write_prepared(dst, len, |w| {
            w.lit(b"*");
            w.num(count as u64);
            w.lit(b"\r\n");
            w.lit(&self.head);
            for part in std::iter::once(numkeys)
                .chain(keys.iter().map(AsRef::as_ref))
                .chain(args.iter().map(AsRef::as_ref))
            {
                w.bulk(part);
            }
        });
    }
}

/// Writes any frame in RESP3 form (RESP2 forms for null: `_`). For tests, fuzzing and the fake
/// servers in `tests/`; the client itself only sends commands.
pub fn encode_frame(dst: &mut BytesMut, frame: &Frame) {
    match frame {
        Frame::Simple(s) => {
            dst.put_u8(b'+');
            dst.put_slice(s);
            dst.put_slice(b"\r\n");
        }
        // An error with CR or LF in it (from a `!` blob error) cannot be a `-` line.
        Frame::Error(e) if e.line().iter().any(|&b| b == b'\r' || b == b'\n') => {
            put_len(dst, b'!', e.line().len());
            dst.put_slice(e.line());
            dst.put_slice(b"\r\n");
        }
        Frame::Error(e) => {
            dst.put_u8(b'-');
            dst.put_slice(e.line());
            dst.put_slice(b"\r\n");
        }
        Frame::Integer(n) => {
            let mut num = itoa::Buffer::new();
            dst.put_u8(b':');
            dst.put_slice(num.format(*n).as_bytes());
            dst.put_slice(b"\r\n");
        }
        Frame::Bulk(b) => put_bulk(dst, b),
        Frame::Null => dst.put_slice(b"_\r\n"),
        Frame::Boolean(b) => dst.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
        Frame::Double(d) => {
            dst.put_u8(b',');
            if d.is_nan() {
                dst.put_slice(b"nan");
            } else if d.is_infinite() {
                dst.put_slice(if *d > 0.0 { b"inf" } else { b"-inf" });
            } else {
                // `{:?}` prints the shortest text that parses back to the same value.
                dst.put_slice(format!("{d:?}").as_bytes());
            }
            dst.put_slice(b"\r\n");
        }
        Frame::BigNumber(b) => {
            dst.put_u8(b'(');
            dst.put_slice(b);
            dst.put_slice(b"\r\n");
        }
        Frame::Verbatim { format, data } => {
            put_len(dst, b'=', data.len() + 4);
            dst.put_slice(format);
            dst.put_u8(b':');
            dst.put_slice(data);
            dst.put_slice(b"\r\n");
        }
        Frame::Array(items) | Frame::Set(items) | Frame::Push(items) => {
            let marker = match frame {
                Frame::Array(_) => b'*',
                Frame::Set(_) => b'~',
                _ => b'>',
            };
            put_len(dst, marker, items.len());
            for item in items {
                encode_frame(dst, item);
            }
        }
        Frame::Map(pairs) => {
            put_len(dst, b'%', pairs.len());
            for (k, v) in pairs {
                encode_frame(dst, k);
                encode_frame(dst, v);
            }
        }
        Frame::Attributed { attributes, value } => {
            put_len(dst, b'|', attributes.len());
            for (k, v) in attributes {
                encode_frame(dst, k);
                encode_frame(dst, v);
            }
            encode_frame(dst, value);
        }
    }
}
