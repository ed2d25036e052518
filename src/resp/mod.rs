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

mod decode;
mod encode;
mod error;
mod frame;
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub mod fuzzing;

pub use decode::Decoder;
pub use encode::{encode_command, encode_delex_ifeq, encode_frame, EvalShaCommand, SetNxPxCommand};
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
