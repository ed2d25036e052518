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
    #[inline]
    pub fn encode(&self, dst: &mut BytesMut, key: &[u8], token: &[u8], ttl_ms: u64) {
        let ms_digits = digits(ttl_ms);
        write_prepared(
            dst,
            &SetNxPx {
                key,
                token,
                ttl_ms,
                ms_digits,
            },
        );
    }
}

struct SetNxPx<'a> {
    key: &'a [u8],
    token: &'a [u8],
    ttl_ms: u64,
    /// `digits(ttl_ms)`, counted once for both passes.
    ms_digits: usize,
}

impl Prepared for SetNxPx<'_> {
    const CALLER_BYTES: bool = false;

    #[inline(always)]
    fn pieces<P: Pieces>(&self, p: &mut P) {
        // Three bulks, written out rather than with `Pieces::bulk`: the `$` and CRLF around
        // them join the constant pieces, one copy fewer each.
        p.lit(b"*6\r\n$3\r\nSET\r\n$");
        p.num(self.key.len() as u64);
        p.lit(b"\r\n");
        p.bytes(self.key);
        p.lit(b"\r\n$");
        p.num(self.token.len() as u64);
        p.lit(b"\r\n");
        p.bytes(self.token);
        p.lit(b"\r\n$2\r\nNX\r\n$2\r\nPX\r\n$");
        p.num(self.ms_digits as u64);
        p.lit(b"\r\n");
        p.num_of(self.ttl_ms, self.ms_digits);
        p.lit(b"\r\n");
    }
}

/// Decimal digits in `n`.
///
/// One or two digits (the lengths in a lock command) by predicted branches; past that, from the
/// bit length (log10(2) is about 1233/4096) and one table comparison: a handful of instructions,
/// against about 30 for `ilog10`.
#[inline(always)]
fn digits(n: u64) -> usize {
    const POW10: [u64; 20] = {
        let mut t = [1u64; 20];
        let mut i = 1;
        while i < 20 {
            t[i] = t[i - 1] * 10;
            i += 1;
        }
        t
    };
    // Lengths in a lock command are one or two digits: predicted branches, no arithmetic.
    match n {
        0..=9 => return 1,
        10..=99 => return 2,
        _ => {}
    }
    let bits = 64 - n.leading_zeros() as usize; // 7..=64
    let guess = (bits * 1233) >> 12; // 2..=19: the digits of 2^bits, less one
    guess + 1 - usize::from(n < POW10[guess])
}

/// A prepared command: a fixed sequence of pieces (constant bytes, caller bytes, numbers).
///
/// `pieces` runs twice, once to count the bytes and once to write them into space reserved for
/// that count, and must give the same pieces both times. The implementations are in this module
/// and read only their own immutable fields; bytes they obtain through a caller's `AsRef`
/// (which could answer differently the second time) go through [`Pieces::caller_bulk`], whose
/// length is checked when it is written.
trait Prepared {
    /// Whether any piece comes through [`Pieces::caller_bulk`]: only then is the space left
    /// tracked and checked in release builds.
    const CALLER_BYTES: bool;

    fn pieces<P: Pieces>(&self, p: &mut P);
}

/// What a prepared command's pieces go to: [`Count`], then [`Write`].
trait Pieces {
    fn lit<const N: usize>(&mut self, s: &[u8; N]);
    fn bytes(&mut self, s: &[u8]);
    /// `n` in decimal in exactly `count` bytes, where the caller counted `count = digits(n)`
    /// (once, for both passes).
    fn num_of(&mut self, n: u64, count: usize);

    /// `n` in decimal: [`digits`]`(n)` bytes.
    #[inline(always)]
    fn num(&mut self, n: u64) {
        self.num_of(n, digits(n));
    }

    /// `$len\r\n<s>\r\n`.
    #[inline(always)]
    fn bulk(&mut self, s: &[u8]) {
        self.lit(b"$");
        self.num(s.len() as u64);
        self.lit(b"\r\n");
        self.bytes(s);
        self.lit(b"\r\n");
    }

    /// A bulk of bytes from a caller's `AsRef`: as `bulk`, with its length checked on writing.
    #[inline(always)]
    fn caller_bulk(&mut self, s: &[u8]) {
        self.bulk(s);
    }
}

/// Adds up the pieces' lengths.
struct Count(usize);

impl Pieces for Count {
    #[inline(always)]
    fn lit<const N: usize>(&mut self, _: &[u8; N]) {
        self.0 += N;
    }

    #[inline(always)]
    fn bytes(&mut self, s: &[u8]) {
        self.0 += s.len();
    }

    #[inline(always)]
    fn num_of(&mut self, _: u64, count: usize) {
        self.0 += count;
    }
}

/// Writes the pieces one after the other from `at`, into space [`Count`] measured and
/// [`write_prepared`] reserved. Pieces whose length the count fixed are not bounds-checked in
/// release builds (see `write_prepared` for why they fit); debug builds (the tests) check every
/// piece, and a caller's bulk is always checked.
struct Write {
    at: *mut u8,
    /// Bytes of the reserved space not yet written.
    left: usize,
}

impl Write {
    /// Claims the next `n` bytes, which the count guarantees are there.
    #[inline(always)]
    fn claim(&mut self, n: usize) -> *mut u8 {
        debug_assert!(n <= self.left, "a piece past the counted length");
        self.left = self.left.wrapping_sub(n);
        let start = self.at;
        // SAFETY: `start..start + n` is inside the reserved space (see `write_prepared`), so
        // the pointer stays in the same allocation.
        self.at = unsafe { start.add(n) };
        start
    }
}

/// Two ASCII digits for each of 0..100.
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

impl Pieces for Write {
    #[inline(always)]
    fn lit<const N: usize>(&mut self, s: &[u8; N]) {
        let to = self.claim(N);
        // SAFETY: `to` has `N` writable bytes (claimed), and `s` is `N` readable bytes that
        // cannot overlap the buffer's spare capacity (it is borrowed shared).
        unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), to, N) };
    }

    #[inline(always)]
    fn bytes(&mut self, s: &[u8]) {
        let to = self.claim(s.len());
        // SAFETY: as in `lit`, for `s.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), to, s.len()) };
    }

    #[inline(always)]
    fn caller_bulk(&mut self, s: &[u8]) {
        // The count saw this bulk through an earlier `as_ref()` call: check that it still fits.
        assert!(
            1 + digits(s.len() as u64) + 2 + s.len() + 2 <= self.left,
            "AsRef gave longer bytes than when counted"
        );
        self.bulk(s);
    }

    /// Written from the last digit back, two at a time: always exactly `count` bytes (a wrong
    /// count would give wrong digits, never a write outside the claimed bytes).
    #[inline(always)]
    fn num_of(&mut self, mut n: u64, count: usize) {
        debug_assert_eq!(count, digits(n));
        let start = self.claim(count);
        let mut i = count;
        while i >= 2 {
            i -= 2;
            let pair = (n % 100) as usize * 2;
            n /= 100;
            // SAFETY: `i + 2 <= count` bytes claimed at `start`; `pair + 2 <= 200`.
            unsafe {
                std::ptr::copy_nonoverlapping(DIGIT_PAIRS.as_ptr().add(pair), start.add(i), 2)
            };
        }
        if i == 1 {
            // SAFETY: byte 0 of the `count` claimed.
            unsafe { *start = b'0' + (n % 10) as u8 };
        }
    }
}

/// Writes a prepared command into `dst`: counts its bytes, reserves them once, and writes the
/// pieces straight into the spare capacity, constant pieces as fixed-size copies the compiler
/// inlines and numbers two digits at a time.
///
/// Why unchecked writes: a `SET` with every input opaque, per call with its loop, measured with
/// callgrind and, for time, 15 interleaved rounds in one process (min / median): `put_slice`
/// per piece, 418 instructions; zeroed space grown once, then checked copies, 404; checked
/// writes into the spare capacity (`UninitSlice`), 335 instructions, 25 / 38 ns; this, 227
/// instructions, 17 / 29 ns.
#[inline(always)]
fn write_prepared<C: Prepared>(dst: &mut BytesMut, command: &C) {
    let mut count = Count(0);
    command.pieces(&mut count);
    let len = count.0;
    dst.reserve(len);
    let spare = dst.spare_capacity_mut();
    assert!(spare.len() >= len);
    let mut write = Write {
        at: spare.as_mut_ptr().cast::<u8>(),
        left: len,
    };
    // SAFETY (for the writes in `Write`): the spare capacity has at least `len` bytes (reserved
    // and checked). `Count` and `Write` get the same pieces (`Prepared::pieces` is deterministic,
    // except for a caller's bulks, which `Write::caller_bulk` checks against what is left) and
    // agree on each one's length: `N` for `lit`, `s.len()` for `bytes`, `count` for `num_of`,
    // which writes exactly `count` bytes. So every write lands in `spare[..len]`.
    command.pieces(&mut write);
    // A caller's bulk that came out shorter than counted would leave bytes unwritten. (Without
    // caller bytes, `left` is 0 by the argument above, and the compiler drops the tracking.)
    if C::CALLER_BYTES || cfg!(debug_assertions) {
        assert_eq!(write.left, 0, "AsRef gave shorter bytes than when counted");
    }
    // SAFETY: the writes covered `spare[..len]`, contiguously from its start (each piece starts
    // where the last ended) for `len` bytes in all (`left` went from `len` to 0), so those
    // bytes are initialised.
    unsafe { dst.set_len(dst.len() + len) };
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
        write_prepared(
            dst,
            &EvalSha {
                head: &self.head,
                keys,
                args,
            },
        );
    }
}

struct EvalSha<'a, K, A> {
    head: &'a [u8; 60],
    keys: &'a [K],
    args: &'a [A],
}

impl<K: AsRef<[u8]>, A: AsRef<[u8]>> Prepared for EvalSha<'_, K, A> {
    const CALLER_BYTES: bool = true;

    #[inline(always)]
    fn pieces<P: Pieces>(&self, p: &mut P) {
        p.lit(b"*");
        p.num(3 + self.keys.len() as u64 + self.args.len() as u64);
        p.lit(b"\r\n");
        p.lit(self.head);
        p.lit(b"$");
        p.num(digits(self.keys.len() as u64) as u64);
        p.lit(b"\r\n");
        p.num(self.keys.len() as u64);
        p.lit(b"\r\n");
        for key in self.keys {
            p.caller_bulk(key.as_ref());
        }
        for arg in self.args {
            p.caller_bulk(arg.as_ref());
        }
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

#[cfg(test)]
mod tests {
    use super::digits;

    #[test]
    fn digits_counts_decimal_digits_at_every_edge() {
        let mut edges = vec![0u64, 1, u64::MAX, u64::MAX - 1];
        for shift in 0..64 {
            let p = 1u64 << shift;
            edges.extend([p - 1, p, p.saturating_add(1)]);
        }
        let mut p = 1u64;
        while let Some(next) = p.checked_mul(10) {
            edges.extend([p - 1, p, p + 1]);
            p = next;
        }
        edges.extend([p - 1, p, p + 1]);
        for n in edges {
            assert_eq!(digits(n), n.to_string().len(), "{n}");
        }
    }
}
