//! The sans-IO RESP2/RESP3 codec: [`Frame`], the incremental [`Decoder`] and the encoders.
//!
//! No sockets and no runtime here: bytes in, frames out, and commands written into a
//! [`BytesMut`](bytes::BytesMut). The connection layer drives it; tests, benches and fuzz targets
//! use it directly.
//!
//! Layout:
//! - `frame.rs`: [`Frame`] and [`ServerError`].
//! - `decode.rs`: [`Decoder`], resumable and bounded by [`DecoderConfig`].
//! - `encode.rs`: commands as arrays of bulk strings, the prepared lock commands, and a frame
//!   encoder for tests and fake servers.
//! - `error.rs`: [`DecodeError`].
//!
//! Streamed strings and aggregates (`$?`, `*?`, `~?`, `%?`) are refused with
//! [`DecodeErrorKind::Unsupported`]: no command a lock client sends is answered with one.
//!
//! # The grammar the decoder accepts
//!
//! Exactly this is accepted; everything else is a [`DecodeError`]. It is the RESP3
//! specification (redis-specifications `protocol/RESP3.md`, version 1.6) plus the two RESP2
//! nulls, with the number forms of hiredis's reader (`string2ll`: no `+`, no leading zero, no
//! `-0`), which is what Redis and Dragonfly write. `DESIGN.md` compares it, case by case, with
//! an independent implementation (the differential fuzz target).
//!
//! ```text
//! frame      = *attribute value
//! attribute  = "|" count CRLF 2count(frame)       ; dropped, or kept with `keep_attributes`
//! value      = simple / error / number / null / boolean / double / big-number
//!            / bulk / blob-error / verbatim / resp2-null / array / set / push / map
//! simple     = "+" *text CRLF                      ; text: any byte but CR and LF
//! error      = "-" *text CRLF
//! number     = ":" integer CRLF                    ; within i64
//! null       = "_" CRLF
//! boolean    = "#" ("t" / "f") CRLF
//! double     = "," ( ["-"] 1*DIGIT ["." 1*DIGIT] [("e" / "E") ["+" / "-"] 1*DIGIT]
//!                  / "inf" / "-inf" / "nan" / "-nan" ) CRLF
//! big-number = "(" integer CRLF                    ; any number of digits
//! bulk       = "$" count CRLF <count bytes> CRLF
//! blob-error = "!" count CRLF <count bytes> CRLF
//! verbatim   = "=" count CRLF 3<byte> ":" <count - 4 bytes> CRLF   ; count >= 4
//! resp2-null = "$-1" CRLF / "*-1" CRLF
//! array      = "*" count CRLF count(frame)        ; also `set` with "~", `push` with ">"
//! map        = "%" count CRLF 2count(frame)       ; count is in pairs
//! integer    = "0" / ["-"] %x31-39 *DIGIT          ; no "+", no leading zero, no "-0"
//! count      = "0" / %x31-39 *DIGIT                ; no sign at all
//! ```
//!
//! Decided where the specification is silent or loose, and why:
//! - **Numbers** follow hiredis, not the looser specification text: a number a server writes
//!   never has a `+` or a leading zero, and accepting two spellings of one value is how
//!   `*-01` once decoded as null in one pass and as an array in the other. A count too large
//!   for any type is not malformed; it is over the limit (`BulkTooLong`, `TooManyElements`).
//! - **`-1` is null only for `$` and `*`**, the RESP2 nulls; RESP3 has `_`. hiredis also takes
//!   `!-1`, `=-1`, `%-1`, `~-1` and `>-1`; no server writes them.
//! - **Doubles**: the specification's form, plus `-nan`, which Redis before 7.2 wrote through
//!   libc (the specification asks clients to cope). Not `+1`, `.5`, `1.`, `infinity` or `NaN`,
//!   which Rust's float parser would take. A value past `f64`'s range is infinite.
//! - **Big numbers** have the integer's form at any length (hiredis takes a `+`-less sign and
//!   any digits, and says it may forbid leading zeros).
//! - **Verbatim**: any three bytes of format, then `:` (hiredis checks the `:` too).
//! - **CR and LF**: a line ends at its first CR or LF, which must be a CR followed by a LF.
//!   A LF alone, or a CR alone anywhere in a line, is `InvalidLineEnding` (the specification:
//!   simple strings "cannot contain" either), raised as soon as the byte after the CR is
//!   there. In a bulk payload any byte goes, and the payload must be followed by CRLF.
//! - **Type bytes** are checked as soon as the byte arrives, before its line is complete:
//!   `x` alone is an error at once, not a wait for a LF.
//! - **Streamed** lengths (`$?`, `*?`, `~?`, `%?`, and `?` anywhere a count goes) are refused
//!   with `Unsupported`. A push inside an aggregate is accepted, as hiredis does, although the
//!   specification puts pushes at the top level only.

mod decode;
mod encode;
mod error;
mod frame;
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub mod fuzzing;

pub use decode::Decoder;
pub(crate) use decode::LockReply;
pub use encode::{
    encode_command, encode_delex_ifeq, encode_frame, encode_publish, EvalShaCommand, SetNxPxCommand,
};
pub(crate) use encode::{
    encode_command_inline, encode_command_inline_after, encoded_len, EVALSHA_HEAD,
};
pub use error::{DecodeError, DecodeErrorKind};
pub use frame::{Frame, ServerError, ServerErrorKind};

/// Default nesting limit. The deepest reply a Redis or Dragonfly command gives is about 7
/// (`COMMAND DOCS`, `XINFO STREAM FULL`); 32 leaves room and stops a `*1` chain after 32 lines.
pub const MAX_DEPTH: usize = 32;

/// Hard ceiling on any configured depth: building a frame recurses once per level, and 512
/// frames of recursion stay far inside the smallest thread stack tokio uses (2 MiB).
pub const MAX_DEPTH_CEILING: usize = 512;

/// Default elements per aggregate (entries, for maps). 1 Mi covers `SMEMBERS` of large sets; a
/// lock client's replies have at most a few dozen.
pub const MAX_ELEMENTS: usize = 1 << 20;

/// Default largest bulk string: 64 MiB. Redis allows 512 MiB, but a lock client never reads a
/// value that large, and buffering one would dwarf everything else the client holds.
pub const MAX_BULK_LEN: usize = 64 << 20;

/// Default longest header or simple line: 64 KiB, the size of Redis's own inline-command limit.
pub const MAX_LINE_LEN: usize = 64 << 10;

/// Default largest frame, all of its parts together: 128 MiB, so no reply buffers more than
/// twice the largest bulk.
pub const MAX_FRAME_BYTES: usize = 128 << 20;

/// The decoder's limits. Every count a peer declares is checked against these before anything is
/// reserved for it.
///
/// # Examples
///
/// A hostile server declares a 1 GiB string: it is refused from the header alone, before
/// anything is reserved for it.
///
/// ```
/// use bytes::BytesMut;
/// use dragonlock::resp::{DecodeErrorKind, Decoder, DecoderConfig};
///
/// let mut decoder = Decoder::new(DecoderConfig::default().max_bulk_len(1 << 20));
/// let mut buf = BytesMut::from(&b"$1073741824\r\n"[..]);
/// let err = decoder.decode(&mut buf).unwrap_err();
/// assert_eq!(err.kind(), DecodeErrorKind::BulkTooLong);
/// assert!(err.is_limit());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Deepest nesting of aggregates (attributes count). Capped at [`MAX_DEPTH_CEILING`].
    pub max_depth: usize,
    /// Most elements in one aggregate (entries, for maps and attributes).
    pub max_elements: usize,
    /// Longest bulk string, blob error or verbatim string.
    pub max_bulk_len: usize,
    /// Longest line (simple string, error, number, or a header).
    pub max_line_len: usize,
    /// Largest frame in bytes, headers and payloads together.
    pub max_frame_bytes: usize,
    /// Keep `|` attributes as [`Frame::Attributed`] instead of dropping them.
    pub keep_attributes: bool,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            max_depth: MAX_DEPTH,
            max_elements: MAX_ELEMENTS,
            max_bulk_len: MAX_BULK_LEN,
            max_line_len: MAX_LINE_LEN,
            max_frame_bytes: MAX_FRAME_BYTES,
            keep_attributes: false,
        }
    }
}

impl DecoderConfig {
    /// Sets the nesting limit (capped at [`MAX_DEPTH_CEILING`]).
    pub fn max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth.min(MAX_DEPTH_CEILING);
        self
    }

    /// Sets the per-aggregate element limit.
    pub fn max_elements(mut self, n: usize) -> Self {
        self.max_elements = n;
        self
    }

    /// Sets the bulk length limit.
    pub fn max_bulk_len(mut self, n: usize) -> Self {
        self.max_bulk_len = n;
        self
    }

    /// Sets the line length limit.
    pub fn max_line_len(mut self, n: usize) -> Self {
        self.max_line_len = n;
        self
    }

    /// Sets the frame size limit.
    pub fn max_frame_bytes(mut self, n: usize) -> Self {
        self.max_frame_bytes = n;
        self
    }

    /// Keeps attributes instead of dropping them.
    pub fn keep_attributes(mut self, keep: bool) -> Self {
        self.keep_attributes = keep;
        self
    }
}
