//! The incremental RESP2/RESP3 decoder.
//!
//! Decoding is two passes over a frame, both linear:
//!
//! 1. **Scan** (resumable): walks the buffered bytes, validating each header and counting open
//!    aggregates on a small stack, until the frame is complete. Its position, the open
//!    aggregates and how far the current line was searched for CRLF are kept between calls, so a
//!    frame that arrives one byte at a time is scanned once in total, never rescanned.
//! 2. **Build**: once the scan says the frame is complete, it is split off the buffer and turned
//!    into a [`Frame`]. Nothing is allocated before the bytes it describes are there, so a peer
//!    that declares `*2147483647` gets an error, not a 16 GiB `Vec`.
//!
//! ```text
//!             +------------------- more bytes ------------------+
//!             v                                                 |
//!  [start] -> scan header line --(leaf)--> element done --(stack not empty)--+
//!             |   \--($len)--> skip payload --------^       |
//!             |   \--(*n %n ~n >n |n)--> push on stack      +--(stack empty)--> build -> Frame
//!             +--(no CRLF yet / payload short)--> Ok(None), state kept
//! ```
//!
//! The replies Redlock sees (`+OK`, `:n`, `_`, `$-1`, `-ERR …`) take a path that allocates
//! nothing: they are built without splitting the buffer, or (errors) as one zero-copy slice.
//!
//! What is accepted is the grammar in the [`resp`](super) module's docs, exactly.

use std::ops::ControlFlow;

use bytes::{Buf, Bytes, BytesMut};
use smallvec::SmallVec;

use super::error::{DecodeError, DecodeErrorKind as Kind};
use super::frame::{Frame, ServerError};
use super::DecoderConfig;

/// How many elements an aggregate pre-allocates at most, whatever count it declared. The bytes
/// are already buffered when we build, but a declared count is still the peer's word: growing
/// past this is amortised by `Vec`.
const MAX_PREALLOC: usize = 64;

/// One open aggregate during the scan.
#[derive(Debug, Clone, Copy)]
struct Open {
    /// Elements still to come (two per map or attribute entry).
    remaining: u64,
    /// An attribute map: when it closes it does not count as an element of its parent.
    attribute: bool,
}

/// The resumable decoder. One per connection.
///
/// The contract is that of `tokio_util::codec::Decoder`: call [`decode`](Decoder::decode) with
/// the connection's read buffer whenever bytes were added; it returns `Ok(None)` when the frame is
/// not complete yet, and consumes the frame's bytes from the buffer when it returns one. Between
/// calls, only append to the buffer. After an error the stream is out of sync: drop the
/// connection and call [`reset`](Decoder::reset) (or make a new decoder).
#[derive(Debug)]
pub struct Decoder {
    config: DecoderConfig,
    /// Bytes of the current frame already validated.
    scanned: usize,
    /// Where the search for the current line's LF resumes.
    line_searched: usize,
    /// End (exclusive, CRLF included) of the bulk payload being waited for.
    payload_end: Option<usize>,
    /// Where the `:` after a verbatim string's format must be, checked with its payload.
    payload_colon: Option<usize>,
    /// Open aggregates; bounded by `config.max_depth`, and given that capacity when the
    /// decoder is made, so a deep reply never grows it (inline up to 16 levels).
    stack: SmallVec<[Open; 16]>,
}

/// The longest line the fast paths read whole: `:-9223372036854775808\r\n`.
const LONGEST_LINE: usize = 23;

/// A lock command's reply, read in place by [`Decoder::lock_reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockReply {
    /// `+OK`.
    Ok,
    /// `_`, `$-1` or `*-1`.
    Null,
    /// `:0`.
    Zero,
    /// `:1`.
    One,
}

impl LockReply {
    /// The frame the decoder makes of the same bytes.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn frame(self) -> Frame {
        match self {
            LockReply::Ok => Frame::Simple(Bytes::from_static(b"OK")),
            LockReply::Null => Frame::Null,
            LockReply::Zero => Frame::Integer(0),
            LockReply::One => Frame::Integer(1),
        }
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DecoderConfig::default())
    }
}

impl Decoder {
    /// A decoder with the given limits. A `max_depth` set past
    /// [`MAX_DEPTH_CEILING`](super::MAX_DEPTH_CEILING) through the public field is lowered to it
    /// here, since the build recurses once per level.
    pub fn new(mut config: DecoderConfig) -> Decoder {
        config.max_depth = config.max_depth.min(super::MAX_DEPTH_CEILING);
        Decoder {
            config,
            scanned: 0,
            line_searched: 0,
            payload_end: None,
            payload_colon: None,
            stack: SmallVec::with_capacity(config.max_depth),
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// Forgets any partly scanned frame (after an error, or when the buffer is discarded).
    pub fn reset(&mut self) {
        self.scanned = 0;
        self.line_searched = 0;
        self.payload_end = None;
        self.payload_colon = None;
        self.stack.clear();
    }

    /// Decodes one frame from the front of `src`.
    ///
    /// Returns `Ok(None)` when more bytes are needed; the bytes seen so far are remembered and not
    /// scanned again.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] when the input is malformed or breaks a configured limit. The error names
    /// the offending byte and its offset from the start of the frame.
    ///
    /// # Examples
    ///
    /// A reply that arrives in two reads:
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use dragonlock::resp::{Decoder, Frame};
    ///
    /// let mut decoder = Decoder::default();
    /// let mut buf = BytesMut::from(&b"$5\r\nhel"[..]);
    /// assert_eq!(decoder.decode(&mut buf), Ok(None)); // not complete: nothing consumed
    /// buf.extend_from_slice(b"lo\r\n+OK\r\n");
    /// let frame = decoder.decode(&mut buf).unwrap().unwrap();
    /// assert_eq!(frame.as_bytes(), Some(&b"hello"[..]));
    /// assert!(decoder.decode(&mut buf).unwrap().unwrap().is_ok());
    /// assert!(buf.is_empty());
    /// ```
    #[inline]
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        // Between frames, the replies a lock client meets on every request are recognised whole
        // from their first bytes, without the scan's state machine. Inlined into the caller, with
        // the general path out of line, so the hot case pays no large stack frame.
        if let Some((frame, len)) = self.fast_frame(src) {
            src.advance(len);
            return Ok(Some(frame));
        }
        self.decode_general(src)
    }

    /// Between frames only: the reply at the front of `src` when it is one of the five a lock
    /// command's reply is made of, read in place without building a [`Frame`], with its length.
    /// `None` for anything else, and in the middle of a frame; the caller consumes the bytes.
    /// Each answer is the frame [`decode`](Decoder::decode) makes of the same bytes
    /// ([`LockReply::frame`]): a connection reading a pipeline of lock replies uses it to
    /// classify them in place (see `conn/driver.rs`).
    #[inline]
    pub(crate) fn lock_reply(&mut self, src: &[u8]) -> Option<(LockReply, usize)> {
        if !self.fast_path_open() {
            return None;
        }
        let reply = match src.get(..3)? {
            b"+OK" if src.get(3..5)? == b"\r\n" => (LockReply::Ok, 5),
            b":1\r" if src.get(3)? == &b'\n' => (LockReply::One, 4),
            b":0\r" if src.get(3)? == &b'\n' => (LockReply::Zero, 4),
            b"_\r\n" => (LockReply::Null, 3),
            b"$-1" | b"*-1" if src.get(3..5)? == b"\r\n" => (LockReply::Null, 5),
            _ => return None,
        };
        // As `fast_frame`: a reply split across reads left how far its line was searched, which
        // must not carry over to the next frame (it would start that frame's line search past
        // its end, and merge or refuse frames).
        self.line_searched = 0;
        Some(reply)
    }

    /// Whether the fast paths (`fast_frame`, `lock_reply`) may read a line whole: between
    /// frames, and with limits no such line can break (a decoder configured below them reads
    /// these lines on the general path, where the limits are judged).
    #[inline(always)]
    fn fast_path_open(&self) -> bool {
        self.scanned == 0
            && self.stack.is_empty()
            && self.payload_end.is_none()
            && self.config.max_line_len >= LONGEST_LINE
            && self.config.max_frame_bytes >= LONGEST_LINE
    }

    /// The fast path's entry, shared by `decode` and `decode_each`: between frames only, a whole
    /// line `whole_line` recognises, with the line search reset for the next frame. The caller
    /// consumes the `len` bytes.
    #[inline(always)]
    fn fast_frame(&mut self, src: &[u8]) -> Option<(Frame, usize)> {
        if !self.fast_path_open() {
            return None;
        }
        let found = self.whole_line(src)?;
        self.line_searched = 0;
        Some(found)
    }

    /// Decodes every complete frame at the front of `src`, in order, and hands each to `sink`,
    /// which returns [`ControlFlow::Break`] to stop after the frame it was given. The frames'
    /// bytes are consumed from `src` once, at the end, rather than frame by frame: this is how a
    /// connection reads a pipeline of replies, and it saves the buffer bookkeeping of
    /// [`decode`](Decoder::decode) per frame (a third of the cost of decoding `+OK`).
    ///
    /// The frames and errors are exactly those of calling `decode` until it returns `Ok(None)`.
    ///
    /// # Errors
    ///
    /// As [`decode`](Decoder::decode), for the first malformed frame; the frames before it were
    /// handed to `sink` and consumed.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// let mut buf = bytes::BytesMut::from(&b"+OK\r\n:1\r\n$-1\r\n$3\r\nab"[..]);
    /// let mut frames = Vec::new();
    /// dragonlock::resp::Decoder::default()
    ///     .decode_each(&mut buf, |f| {
    ///         frames.push(f);
    ///         ControlFlow::Continue(())
    ///     })
    ///     .unwrap();
    /// assert_eq!(frames.len(), 3);
    /// assert_eq!(&buf[..], b"$3\r\nab"); // incomplete: left for the next read
    /// ```
    pub fn decode_each(
        &mut self,
        src: &mut BytesMut,
        mut sink: impl FnMut(Frame) -> ControlFlow<()>,
    ) -> Result<(), DecodeError> {
        // Bytes at the front of `src` that belong to frames already handed out.
        let mut done = 0;
        let result = loop {
            if let Some((frame, len)) = self.fast_frame(&src[done..]) {
                done += len;
                if sink(frame).is_break() {
                    break Ok(());
                }
                continue;
            }
            if done == src.len() {
                break Ok(()); // all of it handed out: nothing for the general path to look at
            }
            // The general path works from the front of the buffer (its offsets, and the
            // zero-copy split of a bulk payload): consume what was handed out first.
            src.advance(std::mem::take(&mut done));
            match self.decode_general(src) {
                Ok(Some(frame)) => {
                    if sink(frame).is_break() {
                        break Ok(());
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        src.advance(done);
        result
    }

    #[inline(never)]
    fn decode_general(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        let len = match self.scan(src) {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.reset();
                return Err(e);
            }
        };
        self.reset();
        if let Some(frame) = fast_build(&src[..len]) {
            src.advance(len);
            return Ok(Some(frame));
        }
        let bytes = src.split_to(len).freeze();
        let mut pos = 0;
        Ok(Some(self.build(&bytes, &mut pos)))
    }

    /// `+OK`, `:n`, `_`, `$-1` and `*-1` when the buffer starts with one, complete (within the
    /// limits: see `fast_path_open`); `None` sends everything else (and anything doubtful) down
    /// the general path, which gives the same frames and the errors.
    #[inline]
    fn whole_line(&self, src: &[u8]) -> Option<(Frame, usize)> {
        match *src.first()? {
            b'+' if src.starts_with(b"+OK\r\n") => {
                Some((Frame::Simple(Bytes::from_static(b"OK")), 5))
            }
            b':' => {
                // A plain loop: the line is a few bytes, shorter than a `memchr` call's setup.
                let head = &src[..src.len().min(LONGEST_LINE)];
                let cr = head.iter().position(|&b| b == b'\r')?;
                if head.get(cr + 1) != Some(&b'\n') {
                    return None;
                }
                Some((Frame::Integer(parse_i64(&head[1..cr])?), cr + 2))
            }
            b'_' if src.starts_with(b"_\r\n") => Some((Frame::Null, 3)),
            b'$' if src.starts_with(b"$-1\r\n") => Some((Frame::Null, 5)),
            b'*' if src.starts_with(b"*-1\r\n") => Some((Frame::Null, 5)),
            _ => None,
        }
    }

    /// Validates as much of the current frame as is buffered. `Some(len)` when it is complete.
    fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        let cfg = self.config;
        loop {
            if let Some(end) = self.payload_end {
                if buf.len() < end {
                    return Ok(None);
                }
                if let Some(colon) = self.payload_colon.take() {
                    if buf[colon] != b':' {
                        return Err(DecodeError::new(
                            Kind::InvalidVerbatim,
                            colon,
                            Some(buf[colon]),
                        ));
                    }
                }
                if &buf[end - 2..end] != b"\r\n" {
                    return Err(DecodeError::new(
                        Kind::InvalidLineEnding,
                        end - 2,
                        Some(buf[end - 2]),
                    ));
                }
                self.payload_end = None;
                self.scanned = end;
                if self.element_done() {
                    return Ok(Some(end));
                }
                continue;
            }

            let start = self.scanned;
            // The type byte is judged as soon as it is here, not when its line is complete.
            let Some(&marker) = buf.get(start) else {
                return Ok(None);
            };
            if !is_type_byte(marker) {
                return Err(DecodeError::new(Kind::InvalidTypeByte, start, Some(marker)));
            }
            // The line ends at the first CR or LF, which must be a CR with a LF after it. One
            // search finds both, so a CR alone is an error as soon as the byte after it is here.
            // Each length check below is the one a shorter feed of the same bytes would have
            // met first, so that the same bytes give the same error however they were split.
            let from = self.line_searched.max(start);
            let Some(end) = memchr::memchr2(b'\r', b'\n', &buf[from..]).map(|i| from + i) else {
                if buf.len() - start > cfg.max_line_len + 2 {
                    return Err(DecodeError::new(Kind::LineTooLong, start, None));
                }
                self.line_searched = buf.len();
                return Ok(None);
            };
            if buf[end] == b'\n' {
                if end - start > cfg.max_line_len + 2 {
                    return Err(DecodeError::new(Kind::LineTooLong, start, None));
                }
                return Err(DecodeError::new(Kind::InvalidLineEnding, end, Some(b'\n')));
            }
            // A CR; the line is `buf[start + 1..end]`.
            if end - start - 1 > cfg.max_line_len {
                return Err(DecodeError::new(Kind::LineTooLong, start, None));
            }
            let nl = match buf.get(end + 1) {
                Some(b'\n') => end + 1,
                Some(_) => {
                    return Err(DecodeError::new(Kind::InvalidLineEnding, end, Some(b'\r')));
                }
                None => {
                    self.line_searched = end;
                    return Ok(None);
                }
            };
            let line = &buf[start + 1..end];
            self.line_searched = 0;
            let next = nl + 1;
            let at = start + 1;
            match marker {
                b'+' | b'-' => {}
                b':' => {
                    parse_i64(line).ok_or_else(|| int_error(line, at))?;
                }
                b'_' => {
                    if !line.is_empty() {
                        return Err(DecodeError::new(Kind::InvalidValue, at, Some(line[0])));
                    }
                }
                b'#' => {
                    if line != b"t" && line != b"f" {
                        return Err(DecodeError::new(
                            Kind::InvalidBoolean,
                            at,
                            line.first().copied(),
                        ));
                    }
                }
                b',' => {
                    parse_double(line).ok_or(DecodeError::new(
                        Kind::InvalidDouble,
                        at,
                        line.first().copied(),
                    ))?;
                }
                b'(' => {
                    if let Some((i, byte)) = integer_text_error(line) {
                        return Err(DecodeError::new(Kind::InvalidValue, at + i, byte));
                    }
                }
                b'$' | b'!' | b'=' => {
                    if is_resp2_null(marker, line) {
                        // The RESP2 null bulk string.
                    } else {
                        let n = scan_count(line, at)?;
                        if n > cfg.max_bulk_len as u64 {
                            return Err(DecodeError::new(Kind::BulkTooLong, at, None));
                        }
                        let n = n as usize;
                        if marker == b'=' && n < 4 {
                            return Err(DecodeError::new(Kind::InvalidVerbatim, at, None));
                        }
                        // Saturating: with limits of `usize::MAX`, an end past memory is a
                        // frame that never completes, not an overflow.
                        let end = next.saturating_add(n).saturating_add(2);
                        if end > cfg.max_frame_bytes {
                            return Err(DecodeError::new(Kind::FrameTooLarge, at, None));
                        }
                        self.scanned = next;
                        self.payload_end = Some(end);
                        self.payload_colon = (marker == b'=').then_some(next + 3);
                        continue;
                    }
                }
                b'*' | b'~' | b'%' | b'>' | b'|' => {
                    let n = if is_resp2_null(marker, line) {
                        None // The RESP2 null array: a leaf.
                    } else {
                        Some(scan_count(line, at)?)
                    };
                    if let Some(n) = n {
                        if n > cfg.max_elements as u64 {
                            return Err(DecodeError::new(Kind::TooManyElements, at, None));
                        }
                        if self.stack.len() >= cfg.max_depth {
                            return Err(DecodeError::new(Kind::TooDeep, start, Some(marker)));
                        }
                        let per_entry = if matches!(marker, b'%' | b'|') { 2 } else { 1 };
                        let attribute = marker == b'|';
                        self.scanned = next;
                        if n == 0 {
                            if attribute || !self.element_done() {
                                continue;
                            }
                            return Ok(Some(next));
                        }
                        self.stack.push(Open {
                            remaining: n.saturating_mul(per_entry),
                            attribute,
                        });
                        continue;
                    }
                }
                // `is_type_byte` let only the bytes above through; kept rather than a panic.
                other => return Err(DecodeError::new(Kind::InvalidTypeByte, start, Some(other))),
            }
            // A one-line value is complete.
            if next > cfg.max_frame_bytes {
                return Err(DecodeError::new(Kind::FrameTooLarge, start, None));
            }
            self.scanned = next;
            if self.element_done() {
                return Ok(Some(next));
            }
        }
    }

    /// Records that one element finished. True when that finished the whole frame.
    fn element_done(&mut self) -> bool {
        while let Some(top) = self.stack.last_mut() {
            top.remaining -= 1;
            if top.remaining > 0 {
                return false;
            }
            let closed = self.stack.pop().expect("non-empty");
            if closed.attribute {
                // The attribute describes the value that follows; that value is the element.
                return false;
            }
        }
        true
    }

    /// Builds the frame at `*pos` in a buffer the scan proved complete and valid. Recursion is
    /// bounded by `max_depth`, which the scan enforced and whose ceiling is
    /// [`MAX_DEPTH_CEILING`](super::MAX_DEPTH_CEILING).
    fn build(&self, buf: &Bytes, pos: &mut usize) -> Frame {
        let start = *pos;
        let nl = start + memchr::memchr(b'\n', &buf[start..]).expect("scanned");
        let line = &buf[start + 1..nl - 1];
        let line_range = start + 1..nl - 1;
        *pos = nl + 1;
        let count = || parse_count(line).expect("scanned") as usize;
        match buf[start] {
            b'+' => Frame::Simple(buf.slice(line_range)),
            b'-' => Frame::Error(ServerError::from_line(buf.slice(line_range))),
            b':' => Frame::Integer(parse_i64(line).expect("scanned")),
            b'_' => Frame::Null,
            b'#' => Frame::Boolean(line == b"t"),
            b',' => Frame::Double(parse_double(line).expect("scanned")),
            b'(' => Frame::BigNumber(buf.slice(line_range)),
            // Null exactly as the scan decided it: the same function on the same line.
            m @ (b'$' | b'*') if is_resp2_null(m, line) => Frame::Null,
            m @ (b'$' | b'!' | b'=') => {
                let n = count();
                let body = buf.slice(*pos..*pos + n);
                *pos += n + 2;
                match m {
                    b'$' => Frame::Bulk(body),
                    b'!' => Frame::Error(ServerError::from_line(body)),
                    _ => Frame::Verbatim {
                        format: [body[0], body[1], body[2]],
                        data: body.slice(4..),
                    },
                }
            }
            m @ (b'*' | b'~' | b'>') => {
                let n = count();
                let mut items = Vec::with_capacity(n.min(MAX_PREALLOC));
                for _ in 0..n {
                    items.push(self.build(buf, pos));
                }
                match m {
                    b'*' => Frame::Array(items),
                    b'~' => Frame::Set(items),
                    _ => Frame::Push(items),
                }
            }
            b'%' => Frame::Map(self.build_pairs(buf, pos, count())),
            b'|' => {
                let attributes = self.build_pairs(buf, pos, count());
                let value = self.build(buf, pos);
                if self.config.keep_attributes {
                    Frame::Attributed {
                        attributes,
                        value: Box::new(value),
                    }
                } else {
                    value
                }
            }
            _ => unreachable!("the scan rejects unknown type bytes"),
        }
    }

    fn build_pairs(&self, buf: &Bytes, pos: &mut usize, n: usize) -> Vec<(Frame, Frame)> {
        let mut pairs = Vec::with_capacity(n.min(MAX_PREALLOC));
        for _ in 0..n {
            let k = self.build(buf, pos);
            let v = self.build(buf, pos);
            pairs.push((k, v));
        }
        pairs
    }
}

/// Builds the replies a lock client sees most without touching the allocator: values with no
/// payload, and `+OK`. `None` sends the frame down the general path.
fn fast_build(frame: &[u8]) -> Option<Frame> {
    let line = &frame[1..frame.len() - 2];
    match frame[0] {
        b':' => parse_i64(line).map(Frame::Integer),
        b'_' => Some(Frame::Null),
        m @ (b'$' | b'*') if is_resp2_null(m, line) => Some(Frame::Null),
        b'#' => Some(Frame::Boolean(line == b"t")),
        b',' => parse_double(line).map(Frame::Double),
        b'+' if line == b"OK" => Some(Frame::Simple(Bytes::from_static(b"OK"))),
        _ => None,
    }
}

/// The bytes that can begin a value: the RESP2 and RESP3 type markers.
#[inline]
fn is_type_byte(b: u8) -> bool {
    matches!(
        b,
        b'+' | b'-'
            | b':'
            | b'$'
            | b'*'
            | b'_'
            | b'#'
            | b','
            | b'('
            | b'!'
            | b'='
            | b'%'
            | b'~'
            | b'>'
            | b'|'
    )
}

/// `$-1` and `*-1`, the RESP2 nulls. The one spelling: the scan and the build both ask here.
#[inline]
fn is_resp2_null(marker: u8, line: &[u8]) -> bool {
    matches!(marker, b'$' | b'*') && line == b"-1"
}

/// A count line (`count` in the grammar), or the error for it: `?` is a streamed type
/// (`Unsupported`), a leading `-` a negative length (`InvalidLength`), anything else off the
/// grammar `InvalidInteger` at its first wrong byte.
fn scan_count(line: &[u8], at: usize) -> Result<u64, DecodeError> {
    if let Some(n) = parse_count(line) {
        return Ok(n);
    }
    Err(match line {
        [b'?'] => DecodeError::new(Kind::Unsupported, at, Some(b'?')),
        [b'-', ..] => DecodeError::new(Kind::InvalidLength, at, Some(b'-')),
        _ => {
            let (i, byte) = integer_text_error(line).unwrap_or((0, line.first().copied()));
            DecodeError::new(Kind::InvalidInteger, at + i, byte)
        }
    })
}

/// Where `line` leaves the `integer` form (`"0" / ["-"] %x31-39 *DIGIT`), at any length: the
/// offset and byte of the first wrong byte (no byte when the line ends too soon). `None` when
/// the text is an integer.
fn integer_text_error(line: &[u8]) -> Option<(usize, Option<u8>)> {
    let sign = usize::from(line.first() == Some(&b'-'));
    match line.get(sign) {
        None => return Some((line.len(), None)),
        // `0` alone; not `-0`, not `01`.
        Some(b'0') if sign == 1 || line.len() > 1 => return Some((sign, Some(b'0'))),
        _ => {}
    }
    line[sign..]
        .iter()
        .position(|b| !b.is_ascii_digit())
        .map(|i| (sign + i, Some(line[sign + i])))
}

fn int_error(line: &[u8], at: usize) -> DecodeError {
    match integer_text_error(line) {
        Some((i, byte)) => DecodeError::new(Kind::InvalidInteger, at + i, byte),
        // An integer's text, out of range.
        None => DecodeError::new(Kind::InvalidInteger, at, line.first().copied()),
    }
}

/// Parses the grammar's `integer` (`"0" / ["-"] %x31-39 *DIGIT`) into an `i64`, checked over
/// exactly `i64::MIN..=i64::MAX`.
#[inline]
pub(super) fn parse_i64(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    match digits {
        [b'1'..=b'9', ..] => {}
        [b'0'] if !negative => return Some(0),
        _ => return None,
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        value = value.checked_mul(10)?;
        // Accumulate towards the sign so that i64::MIN parses without overflow.
        value = if negative {
            value.checked_sub(d)?
        } else {
            value.checked_add(d)?
        };
    }
    Some(value)
}

/// Parses the grammar's `count` (`"0" / %x31-39 *DIGIT`). Saturates at `u64::MAX`: a count
/// that large is past every limit, and refused as such.
#[inline]
fn parse_count(s: &[u8]) -> Option<u64> {
    match s {
        [b'0'] => return Some(0),
        [b'1'..=b'9', ..] => {}
        _ => return None,
    }
    let mut value: u64 = 0;
    for &d in s {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.saturating_mul(10).saturating_add(u64::from(d - b'0'));
    }
    Some(value)
}

/// Parses the grammar's `double`: `["-"] 1*DIGIT ["." 1*DIGIT] [("e" / "E") ["+" / "-"]
/// 1*DIGIT]`, `inf`, `-inf`, `nan` and `-nan`. Checked here, then converted by Rust's parser,
/// which takes every form of the grammar and more (`+1`, `.5`, `infinity`), hence the check.
fn parse_double(s: &[u8]) -> Option<f64> {
    match s {
        b"inf" => return Some(f64::INFINITY),
        b"-inf" => return Some(f64::NEG_INFINITY),
        b"nan" | b"-nan" => return Some(f64::NAN),
        _ => {}
    }
    let digits = |i: &mut usize| {
        let from = *i;
        while s.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > from
    };
    let mut i = usize::from(s.first() == Some(&b'-'));
    if !digits(&mut i) {
        return None;
    }
    if s.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return None;
        }
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return None;
        }
    }
    if i != s.len() {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `lock_reply` says what `decode` says of the same bytes, or nothing.
    #[test]
    fn a_lock_reply_read_in_place_is_the_frame_decode_makes() {
        let exact: [&[u8]; 7] = [
            b"+OK\r\n",
            b"_\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b":0\r\n",
            b":1\r\n",
            b"+OK\r\n:1\r\n",
        ];
        let other: [&[u8]; 16] = [
            b"",
            b"+",
            b"+OK",
            b"+OK\r",
            b"+OKX\r\n",
            b"+ok\r\n",
            b":1",
            b":1\r",
            b":1\n",
            b":10\r\n",
            b":01\r\n",
            b":-1\r\n",
            b"_\r",
            b"$-1\r",
            b"$-10\r\n",
            b"-ERR x\r\n",
        ];
        for bytes in exact.iter().chain(&other) {
            let read = Decoder::default().lock_reply(bytes);
            assert_eq!(read.is_some(), exact.contains(bytes), "{bytes:?}");
            if let Some((reply, len)) = read {
                let mut buf = BytesMut::from(*bytes);
                let frame = Decoder::default().decode(&mut buf).unwrap().unwrap();
                assert_eq!(frame, reply.frame(), "{bytes:?}");
                assert_eq!(bytes.len() - buf.len(), len, "{bytes:?}");
            }
        }
    }

    #[test]
    fn a_lock_reply_is_not_read_in_the_middle_of_a_frame_or_under_a_small_line_limit() {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(&b"$3\r\nab"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(decoder.lock_reply(b"+OK\r\n"), None);
        buf.extend_from_slice(b"c\r\n");
        assert!(decoder.decode(&mut buf).unwrap().is_some());
        assert_eq!(decoder.lock_reply(b"+OK\r\n"), Some((LockReply::Ok, 5)));
        let mut small = Decoder::new(DecoderConfig::default().max_line_len(8));
        assert_eq!(small.lock_reply(b"+OK\r\n"), None);
    }

    /// A reply split across reads is searched in part by the general path; read in place once
    /// whole, it must leave nothing of that search to the frames after it (a review found that
    /// `+OK\r` then `\n$3\r\nfoo\r\n` was refused, and `+\r\n:1\r\n` read as one frame).
    #[test]
    fn a_lock_reply_completed_by_a_later_read_leaves_the_next_frame_whole() {
        for (first, rest, after) in [
            (&b"+OK\r"[..], &b"\n"[..], &b"$3\r\nfoo\r\n"[..]),
            (b":1\r", b"\n", b"*2\r\n:1\r\n:2\r\n"),
            (b"+O", b"K\r\n", b"+\r\n:1\r\n"),
            (b"$-", b"1\r\n", b"#t\r\n"),
        ] {
            let mut decoder = Decoder::default();
            let mut buf = BytesMut::from(first);
            assert_eq!(decoder.decode(&mut buf), Ok(None));
            buf.extend_from_slice(rest);
            let (_, len) = decoder.lock_reply(&buf).expect("a whole lock reply");
            buf.advance(len);
            buf.extend_from_slice(after);
            let mut whole = BytesMut::from(after);
            let mut fresh = Decoder::default();
            loop {
                let expected = fresh.decode(&mut whole).unwrap();
                assert_eq!(decoder.decode(&mut buf).unwrap(), expected, "{after:?}");
                if expected.is_none() {
                    break;
                }
            }
            assert!(buf.is_empty());
        }
    }
}
