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

/// [`encode_command`] into `dst`'s inline room: false, with `dst` left as it was, when the
/// command would not fit there (a caller that may not allocate keeps what it had).
pub(crate) fn encode_command_inline<const N: usize>(
    dst: &mut smallvec::SmallVec<[u8; N]>,
    args: &[&[u8]],
) -> bool {
    encode_command_inline_after(dst, b"", 0, args)
}

/// [`encode_command_inline`] of a command whose first `head_args` arguments are already
/// encoded, as bulk strings, in `head` (a script's `EVAL` and source, prepared once): `args`
/// follow them.
pub(crate) fn encode_command_inline_after<const N: usize>(
    dst: &mut smallvec::SmallVec<[u8; N]>,
    head: &[u8],
    head_args: usize,
    args: &[&[u8]],
) -> bool {
    let argc = head_args + args.len();
    let size = encoded_len(argc, args) + head.len();
    let at = dst.len();
    if dst.spilled() || at + size > N {
        return false;
    }
    // Written on the stack, one copy per piece, then copied in once: an `extend_from_slice`
    // per piece cost about three times as much (callgrind, 2026-12-02).
    let mut out = [0u8; N];
    let mut w = 0;
    let mut put = |bytes: &[u8]| {
        out[w..w + bytes.len()].copy_from_slice(bytes);
        w += bytes.len();
    };
    let mut n = itoa::Buffer::new();
    put(b"*");
    put(n.format(argc).as_bytes());
    put(b"\r\n");
    if !head.is_empty() {
        put(head);
    }
    for a in args {
        put(b"$");
        put(n.format(a.len()).as_bytes());
        put(b"\r\n");
        put(a);
        put(b"\r\n");
    }
    debug_assert_eq!(w, size);
    dst.extend_from_slice(&out[..size]);
    true
}

/// The length of `*argc` followed by `args` as bulk strings: a command's whole length when
/// `args` are all its arguments.
pub(crate) fn encoded_len(argc: usize, args: &[&[u8]]) -> usize {
    let len = |n: usize| 1 + digits(n as u64) + 2;
    len(argc)
        + args
            .iter()
            .map(|a| len(a.len()) + a.len() + 2)
            .sum::<usize>()
}

/// `SET key token NX PX ms`, the acquire command, prepared for one ttl.
///
/// Everything after the token (`NX`, `PX` and the formatted ttl) is written once, by
/// [`SetNxPxCommand::new`]. Each [`encode`](SetNxPxCommand::encode) then formats only the two
/// lengths and copies the key, the token and that prepared tail. An acquire prepares it once and
/// encodes it for every node.
#[derive(Clone, Copy)]
pub struct SetNxPxCommand {
    /// `\r\n$2\r\nNX\r\n$2\r\nPX\r\n$<d>\r\n<ttl>\r\n`, zero-padded to a fixed size so
    /// it is copied whole, with no length-dependent copy.
    tail: [u8; SET_TAIL_MAX],
    tail_len: u8,
    ttl_ms: u64,
}

/// The longest tail: 19 bytes before the ttl's length, 2 digits of it, CRLF, 20 digits, CRLF.
const SET_TAIL_MAX: usize = 48;

impl SetNxPxCommand {
    /// Prepares `SET … NX PX ttl_ms`.
    ///
    /// # Examples
    ///
    /// ```
    /// let set = dragonlock::resp::SetNxPxCommand::new(30000);
    /// let mut buf = bytes::BytesMut::new();
    /// set.encode(&mut buf, b"k", b"t");
    /// assert_eq!(&buf[..], &b"*6\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nt\r\n$2\r\nNX\r\n$2\r\nPX\r\n$5\r\n30000\r\n"[..]);
    /// ```
    pub fn new(ttl_ms: u64) -> SetNxPxCommand {
        const HEAD: &[u8; 19] = b"\r\n$2\r\nNX\r\n$2\r\nPX\r\n$";
        let mut tail = [0u8; SET_TAIL_MAX];
        tail[..19].copy_from_slice(HEAD);
        // The digits written in place, last first, into a fixed-size array: an acquire prepares
        // this once per attempt, and `itoa` with a copy of each piece took three times the
        // instructions (callgrind, 2026-11-30).
        let mut at = 19;
        let len = digits(ttl_ms);
        for n in [len as u64, ttl_ms] {
            let d = digits(n);
            let mut rest = n;
            for place in tail[at..at + d].iter_mut().rev() {
                *place = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            tail[at + d..at + d + 2].copy_from_slice(b"\r\n");
            at += d + 2;
        }
        SetNxPxCommand {
            tail,
            tail_len: at as u8,
            ttl_ms,
        }
    }

    /// The ttl this command was prepared for, in milliseconds.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    /// Writes `SET key token NX PX <ttl>` into a fixed buffer (a request encoded once and
    /// copied into each node's buffer); false, and nothing written, when it does not fit.
    pub(crate) fn encode_inline<const N: usize>(
        &self,
        dst: &mut smallvec::SmallVec<[u8; N]>,
        key: &[u8],
        token: &[u8],
    ) -> bool {
        write_prepared_into(dst, &self.with(key, token))
    }

    /// The key and the token of a request [`encode_inline`](SetNxPxCommand::encode_inline)
    /// wrote: `None` for anything else.
    pub(crate) fn key_and_token(request: &[u8]) -> Option<(&[u8], &[u8])> {
        // One bulk string at the start of `rest`: its bytes, and what follows it.
        fn bulk(rest: &[u8]) -> Option<(&[u8], &[u8])> {
            let rest = rest.strip_prefix(b"$")?;
            let end = rest.iter().position(|&b| b == b'\r')?;
            let len: usize = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
            let rest = rest[end..].strip_prefix(b"\r\n")?;
            let (bytes, rest) = (rest.get(..len)?, &rest[len..]);
            Some((bytes, rest.strip_prefix(b"\r\n")?))
        }
        let rest = request.strip_prefix(b"*6\r\n$3\r\nSET\r\n")?;
        let (key, rest) = bulk(rest)?;
        let (token, rest) = bulk(rest)?;
        rest.starts_with(b"$2\r\nNX\r\n").then_some((key, token))
    }

    /// Writes `SET key token NX PX <ttl>` into `dst`.
    #[inline]
    pub fn encode(&self, dst: &mut BytesMut, key: &[u8], token: &[u8]) {
        write_prepared(dst, &self.with(key, token));
    }

    #[inline(always)]
    fn with<'a>(&'a self, key: &'a [u8], token: &'a [u8]) -> SetNxPx<'a> {
        SetNxPx {
            key,
            token,
            tail: &self.tail,
            tail_len: self.tail_len as usize,
        }
    }
}

impl std::fmt::Debug for SetNxPxCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetNxPxCommand")
            .field("ttl_ms", &self.ttl_ms)
            .finish()
    }
}

struct SetNxPx<'a> {
    key: &'a [u8],
    token: &'a [u8],
    tail: &'a [u8; SET_TAIL_MAX],
    tail_len: usize,
}

impl Prepared for SetNxPx<'_> {
    const CALLER_BYTES: bool = false;

    #[inline(always)]
    fn pieces<P: Pieces>(&self, p: &mut P) {
        // Two bulks, written out rather than with `Pieces::bulk`: the `$` and CRLF around them
        // join the constant pieces, one copy fewer each.
        p.lit(b"*6\r\n$3\r\nSET\r\n$");
        p.num(self.key.len() as u64);
        p.lit(b"\r\n");
        p.bytes(self.key);
        p.lit(b"\r\n$");
        p.num(self.token.len() as u64);
        p.lit(b"\r\n");
        p.bytes(self.token);
        p.padded(self.tail, self.tail_len);
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

    /// The first `len` bytes of `s`. [`Write`] copies all `N` (a fixed-size copy, cheaper than
    /// one of a length known only at run time); the bytes past `len` land where the next
    /// pieces go, or in the reserved slack past the command, and are not part of it.
    fn padded<const N: usize>(&mut self, s: &[u8; N], len: usize);

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

/// Adds up the pieces' lengths, and how far past them a padded piece may write.
#[derive(Default)]
struct Count {
    len: usize,
    slack: usize,
}

impl Pieces for Count {
    #[inline(always)]
    fn lit<const N: usize>(&mut self, _: &[u8; N]) {
        self.len += N;
    }

    #[inline(always)]
    fn bytes(&mut self, s: &[u8]) {
        self.len += s.len();
    }

    #[inline(always)]
    fn num_of(&mut self, _: u64, count: usize) {
        self.len += count;
    }

    #[inline(always)]
    fn padded<const N: usize>(&mut self, _: &[u8; N], len: usize) {
        assert!(len <= N);
        self.len += len;
        self.slack = self.slack.max(N - len);
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
    /// Reserved bytes past the command, for padded pieces (checked in debug builds).
    slack: usize,
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
    fn padded<const N: usize>(&mut self, s: &[u8; N], len: usize) {
        debug_assert!(
            N <= self.left + self.slack,
            "a padded piece past the reserved slack"
        );
        let to = self.claim(len);
        // SAFETY: `to..to + len` is claimed, so at most `left` bytes of the command follow it,
        // and `write_prepared` reserved at least `N - len` bytes of slack after the command
        // (`Count::slack`): `to..to + N` is reserved space. `s` cannot overlap it (borrowed
        // shared). Bytes past `len` are overwritten by the next pieces or lie in the slack.
        unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), to, N) };
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

    /// One or two digits (every length in a lock command) without the loop.
    #[inline(always)]
    fn num(&mut self, n: u64) {
        match n {
            0..=9 => {
                let to = self.claim(1);
                // SAFETY: one byte claimed at `to`.
                unsafe { *to = b'0' + n as u8 };
            }
            10..=99 => {
                let to = self.claim(2);
                // SAFETY: two bytes claimed at `to`; `2 * n + 2 <= 200`.
                unsafe {
                    std::ptr::copy_nonoverlapping(DIGIT_PAIRS.as_ptr().add(2 * n as usize), to, 2)
                };
            }
            _ => self.num_of(n, digits(n)),
        }
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
/// instructions, 17 / 29 ns. Then with the ttl's tail prepared once (a padded piece) and one-
/// or two-digit numbers written without the digit loop: 159 instructions (`EVALSHA`, 229 to
/// 181), and 14–15 ns against 28 ns in criterion.
#[inline(always)]
fn write_prepared<C: Prepared>(dst: &mut BytesMut, command: &C) {
    let written = write_prepared_into(dst, command);
    debug_assert!(written, "a BytesMut always makes room");
}

/// Where a prepared command can be written: a connection's `BytesMut`, or a fixed buffer on the
/// stack (a request encoded once and copied into each node's buffer, see
/// [`EvalShaCommand::encode_inline`]).
pub(crate) trait Dst {
    /// Makes room for `n` more bytes past the end; false when there cannot be (a fixed buffer too
    /// small for the command), and then nothing is written.
    fn make_room(&mut self, n: usize) -> bool;
    /// The room past the end, at least the `n` bytes `make_room` made.
    fn spare(&mut self) -> &mut [std::mem::MaybeUninit<u8>];
    /// Counts `n` more bytes as written.
    ///
    /// # Safety
    ///
    /// The first `n` bytes of `spare()` must be initialised.
    unsafe fn add_len(&mut self, n: usize);
}

impl Dst for BytesMut {
    #[inline(always)]
    fn make_room(&mut self, n: usize) -> bool {
        self.reserve(n);
        true
    }
    #[inline(always)]
    fn spare(&mut self) -> &mut [std::mem::MaybeUninit<u8>] {
        self.spare_capacity_mut()
    }
    #[inline(always)]
    unsafe fn add_len(&mut self, n: usize) {
        // SAFETY: the caller initialised these bytes, which are inside the capacity.
        unsafe { self.set_len(self.len() + n) }
    }
}

/// A fixed buffer: its inline room only, never a heap allocation.
impl<const N: usize> Dst for smallvec::SmallVec<[u8; N]> {
    #[inline(always)]
    fn make_room(&mut self, n: usize) -> bool {
        !self.spilled() && N - self.len() >= n
    }
    #[inline(always)]
    fn spare(&mut self) -> &mut [std::mem::MaybeUninit<u8>] {
        let len = self.len();
        let cap = self.capacity();
        // SAFETY: `len..cap` is inside the allocation (inline or not), and viewing it as
        // `MaybeUninit` asks nothing of its contents.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.as_mut_ptr()
                    .add(len)
                    .cast::<std::mem::MaybeUninit<u8>>(),
                cap - len,
            )
        }
    }
    #[inline(always)]
    unsafe fn add_len(&mut self, n: usize) {
        // SAFETY: the caller initialised these bytes, which are inside the capacity.
        unsafe { self.set_len(self.len() + n) }
    }
}

/// [`write_prepared`] into any [`Dst`]; false, with nothing written, when it has no room.
#[inline(always)]
fn write_prepared_into<D: Dst, C: Prepared>(dst: &mut D, command: &C) -> bool {
    let mut count = Count::default();
    command.pieces(&mut count);
    let len = count.len;
    if !dst.make_room(len + count.slack) {
        return false;
    }
    let spare = dst.spare();
    assert!(spare.len() >= len + count.slack);
    let mut write = Write {
        at: spare.as_mut_ptr().cast::<u8>(),
        left: len,
        slack: count.slack,
    };
    // SAFETY (for the writes in `Write`): the spare capacity has at least `len + slack` bytes
    // (made room for and checked). `Count` and `Write` get the same pieces (`Prepared::pieces` is
    // deterministic, except for a caller's bulks, which `Write::caller_bulk` checks against what
    // is left) and agree on each one's length: `N` for `lit`, `s.len()` for `bytes`, `count` for
    // `num_of`, which writes exactly `count` bytes, `len` for `padded`. So every piece lands in
    // `spare[..len]`, and a padded piece's padding at most `slack` bytes past it.
    command.pieces(&mut write);
    // A caller's bulk that came out shorter than counted would leave bytes unwritten. (Without
    // caller bytes, `left` is 0 by the argument above, and the compiler drops the tracking.)
    if C::CALLER_BYTES || cfg!(debug_assertions) {
        assert_eq!(write.left, 0, "AsRef gave shorter bytes than when counted");
    }
    // SAFETY: the writes covered `spare[..len]`, contiguously from its start (each piece starts
    // where the last ended) for `len` bytes in all (`left` went from `len` to 0), so those
    // bytes are initialised.
    unsafe { dst.add_len(len) };
    true
}

/// Writes `DELEX key IFEQ value` into `dst`: the native compare-and-delete (Dragonfly 1.37 and
/// later, Redis 8.4, Valkey 9.2), the release on servers that have it. Prepared like
/// [`SetNxPxCommand`]: about a seventh of the generic encoder's time (`benches/codec.rs`).
///
/// # Examples
///
/// ```
/// let mut buf = bytes::BytesMut::new();
/// dragonlock::resp::encode_delex_ifeq(&mut buf, b"k", b"t");
/// assert_eq!(&buf[..], &b"*4\r\n$5\r\nDELEX\r\n$1\r\nk\r\n$4\r\nIFEQ\r\n$1\r\nt\r\n"[..]);
/// ```
#[inline]
pub fn encode_delex_ifeq(dst: &mut BytesMut, key: &[u8], value: &[u8]) {
    write_prepared(dst, &DelexIfEq { key, value });
}

struct DelexIfEq<'a> {
    key: &'a [u8],
    value: &'a [u8],
}

impl Prepared for DelexIfEq<'_> {
    const CALLER_BYTES: bool = false;

    #[inline(always)]
    fn pieces<P: Pieces>(&self, p: &mut P) {
        p.lit(b"*4\r\n$5\r\nDELEX\r\n$");
        p.num(self.key.len() as u64);
        p.lit(b"\r\n");
        p.bytes(self.key);
        p.lit(b"\r\n$4\r\nIFEQ\r\n$");
        p.num(self.value.len() as u64);
        p.lit(b"\r\n");
        p.bytes(self.value);
        p.lit(b"\r\n");
    }
}

/// `PUBLISH <channel_prefix><channel> message`: the notification a release sends behind a
/// native `DELEX`, so that waiters on the lock wake up. The channel's name is written from its
/// two parts, so no buffer is needed to join them. Prepared like [`encode_delex_ifeq`].
///
/// # Examples
///
/// ```
/// let mut buf = bytes::BytesMut::new();
/// dragonlock::resp::encode_publish(&mut buf, b"p:", b"k", b"t");
/// assert_eq!(&buf[..], &b"*3\r\n$7\r\nPUBLISH\r\n$3\r\np:k\r\n$1\r\nt\r\n"[..]);
/// ```
#[inline]
pub fn encode_publish(dst: &mut BytesMut, channel_prefix: &[u8], channel: &[u8], message: &[u8]) {
    write_prepared(
        dst,
        &Publish {
            prefix: channel_prefix,
            channel,
            message,
        },
    );
}

struct Publish<'a> {
    prefix: &'a [u8],
    channel: &'a [u8],
    message: &'a [u8],
}

impl Prepared for Publish<'_> {
    const CALLER_BYTES: bool = false;

    #[inline(always)]
    fn pieces<P: Pieces>(&self, p: &mut P) {
        p.lit(b"*3\r\n$7\r\nPUBLISH\r\n$");
        p.num((self.prefix.len() + self.channel.len()) as u64);
        p.lit(b"\r\n");
        p.bytes(self.prefix);
        p.bytes(self.channel);
        p.lit(b"\r\n$");
        p.num(self.message.len() as u64);
        p.lit(b"\r\n");
        p.bytes(self.message);
        p.lit(b"\r\n");
    }
}

/// What an `EVALSHA` call's bytes hold after its `*N\r\n` and before the SHA-1.
pub(crate) const EVALSHA_HEAD: &[u8; 18] = b"$7\r\nEVALSHA\r\n$40\r\n";

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
        head[..18].copy_from_slice(EVALSHA_HEAD);
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

    /// [`encode`](EvalShaCommand::encode) into a fixed buffer: false, with nothing written, when
    /// the command does not fit in its inline room. A request that is the same for every node
    /// (a release's) is encoded once this way and copied into each node's buffer.
    pub(crate) fn encode_inline<const N: usize, K: AsRef<[u8]>, A: AsRef<[u8]>>(
        &self,
        dst: &mut smallvec::SmallVec<[u8; N]>,
        keys: &[K],
        args: &[A],
    ) -> bool {
        write_prepared_into(
            dst,
            &EvalSha {
                head: &self.head,
                keys,
                args,
            },
        )
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
    use bytes::BytesMut;

    use super::{digits, write_prepared, Pieces, Prepared};

    /// A padded piece in the middle of a command: its padding is written over by the pieces
    /// after it, and the slack reserved past the command still covers its fixed-size copy.
    struct PaddedInTheMiddle<'a> {
        pad: &'a [u8; 16],
        len: usize,
    }

    impl Prepared for PaddedInTheMiddle<'_> {
        const CALLER_BYTES: bool = false;

        fn pieces<P: Pieces>(&self, p: &mut P) {
            p.lit(b"<");
            p.padded(self.pad, self.len);
            p.num(7);
            p.lit(b">");
        }
    }

    #[test]
    fn a_padded_piece_anywhere_writes_only_its_length() {
        let pad = b"0123456789abcdef";
        for len in 0..=16 {
            for spare in [0usize, 1, 3, 64] {
                let mut buf = BytesMut::with_capacity(spare);
                buf.extend_from_slice(b"ab");
                write_prepared(&mut buf, &PaddedInTheMiddle { pad, len });
                let want = [&b"ab<"[..], &pad[..len], b"7>"].concat();
                assert_eq!(&buf[..], &want[..], "len {len}, spare {spare}");
            }
        }
    }

    #[test]
    fn a_command_is_written_inline_whole_or_not_at_all() {
        let args: [&[u8]; 4] = [b"DELEX", b"key", b"IFEQ", b"token"];
        let mut whole = BytesMut::new();
        crate::resp::encode_command(&mut whole, &args);
        let mut exact = smallvec::SmallVec::<[u8; 45]>::new();
        assert_eq!(whole.len(), 45);
        assert!(crate::resp::encode_command_inline(&mut exact, &args));
        assert_eq!(&exact[..], &whole[..]);
        assert!(!exact.spilled());
        let mut short = smallvec::SmallVec::<[u8; 44]>::new();
        assert!(!crate::resp::encode_command_inline(&mut short, &args));
        assert!(short.is_empty() && !short.spilled(), "left as it was");
        let mut full = smallvec::SmallVec::<[u8; 51]>::from_slice(b"xxxxxxx");
        assert!(
            !crate::resp::encode_command_inline(&mut full, &args),
            "room counts what is there"
        );
        assert_eq!(&full[..], b"xxxxxxx");
    }

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

    /// A request encoded once into a fixed buffer is the bytes `encode` writes into a
    /// connection's buffer, for every length around the buffer's edge; one that does not fit
    /// writes nothing and says so (the caller then encodes per node).
    #[test]
    fn encode_inline_matches_encode_and_refuses_what_does_not_fit() {
        let cmd = super::EvalShaCommand::new(&[b'f'; 40]);
        for key_len in 0..200 {
            let key = vec![b'k'; key_len];
            let mut expected = BytesMut::new();
            cmd.encode(&mut expected, &[&key[..]], &[&b"token"[..]]);
            let mut inline: smallvec::SmallVec<[u8; 160]> = smallvec::SmallVec::new();
            let fits = cmd.encode_inline(&mut inline, &[&key[..]], &[&b"token"[..]]);
            assert!(!inline.spilled());
            if fits {
                assert_eq!(&inline[..], &expected[..], "key of {key_len} bytes");
            } else {
                assert!(
                    inline.is_empty(),
                    "key of {key_len} bytes: something was written"
                );
                assert!(
                    expected.len() > 160 - 8,
                    "refused a {}-byte request",
                    expected.len()
                );
            }
        }
    }

    #[test]
    fn set_encode_inline_matches_encode_and_refuses_what_does_not_fit() {
        let set = super::SetNxPxCommand::new(30_000);
        for key_len in 0..200 {
            let key = vec![b'k'; key_len];
            let mut expected = BytesMut::new();
            set.encode(&mut expected, &key, b"token");
            let mut inline: smallvec::SmallVec<[u8; 160]> = smallvec::SmallVec::new();
            let fits = set.encode_inline(&mut inline, &key, b"token");
            assert!(!inline.spilled());
            if fits {
                assert_eq!(&inline[..], &expected[..], "key of {key_len} bytes");
            } else {
                assert!(inline.is_empty(), "key of {key_len} bytes: written");
                assert!(
                    expected.len() > 160 - 48,
                    "refused {} bytes",
                    expected.len()
                );
            }
        }
    }

    #[test]
    fn key_and_token_read_back_what_set_wrote_and_nothing_else() {
        let set = super::SetNxPxCommand::new(7);
        for key_len in [0, 1, 9, 10, 64, 99, 100] {
            let key: Vec<u8> = (0..key_len).map(|i| b'a' + (i % 26) as u8).collect();
            // A token holding the bytes a parser could trip on.
            let token = b"t\r\n$3\r\n*";
            let mut request: smallvec::SmallVec<[u8; 320]> = smallvec::SmallVec::new();
            assert!(set.encode_inline(&mut request, &key, token));
            assert_eq!(
                super::SetNxPxCommand::key_and_token(&request),
                Some((&key[..], &token[..]))
            );
            // Cut anywhere, it is not a `SET` any more.
            for cut in 0..request.len() - 20 {
                assert_eq!(super::SetNxPxCommand::key_and_token(&request[..cut]), None);
            }
        }
        for other in [
            &b""[..],
            b"*4\r\n$5\r\nDELEX\r\n$1\r\nk\r\n$4\r\nIFEQ\r\n$1\r\nt\r\n",
            b"*6\r\n$3\r\nSET\r\n$1\r\nk\r\n$9\r\nt\r\n",
            b"*6\r\n$3\r\nSET\r\n$x\r\nk\r\n",
        ] {
            assert_eq!(super::SetNxPxCommand::key_and_token(other), None);
        }
    }
}
