//! Decoder errors: small, `Copy`, and precise about where the input went wrong.

use std::fmt;

/// What was wrong with the input. See [`DecodeError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The first byte of a value is not a RESP type marker. Raised as soon as that byte
    /// arrives.
    InvalidTypeByte,
    /// A line does not end in CRLF (a bare `\n`), a CR stands alone inside a line, or a bulk
    /// payload is not followed by CRLF.
    InvalidLineEnding,
    /// An integer or length off the grammar (see the `resp` module): a `+`, a leading zero,
    /// `-0`, no digits, a byte that is not a digit, or (integers) a value outside `i64`.
    InvalidInteger,
    /// A length or count with a `-` (other than the `-1` null of `$` and `*`).
    InvalidLength,
    /// A double that does not parse.
    InvalidDouble,
    /// A boolean other than `#t` or `#f`.
    InvalidBoolean,
    /// `_` with content, or a big number off the integer form.
    InvalidValue,
    /// A verbatim string shorter than its `fmt:` prefix, or without the `:`.
    InvalidVerbatim,
    /// A line longer than [`DecoderConfig::max_line_len`](super::DecoderConfig::max_line_len).
    LineTooLong,
    /// A bulk length over [`DecoderConfig::max_bulk_len`](super::DecoderConfig::max_bulk_len).
    BulkTooLong,
    /// An aggregate count over [`DecoderConfig::max_elements`](super::DecoderConfig::max_elements).
    TooManyElements,
    /// Nesting deeper than [`DecoderConfig::max_depth`](super::DecoderConfig::max_depth).
    TooDeep,
    /// A frame over [`DecoderConfig::max_frame_bytes`](super::DecoderConfig::max_frame_bytes).
    FrameTooLarge,
    /// A streamed string or aggregate (`$?`, `*?`, `~?`, `%?`): no Redlock reply is streamed, so
    /// they are refused rather than carried as untested code.
    Unsupported,
}

/// A protocol error: the kind, the offending byte (when there is one) and its offset from the
/// start of the frame. After an error the stream is out of sync: close the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError {
    kind: DecodeErrorKind,
    offset: usize,
    byte: Option<u8>,
}

impl DecodeError {
    pub(crate) fn new(kind: DecodeErrorKind, offset: usize, byte: Option<u8>) -> DecodeError {
        DecodeError { kind, offset, byte }
    }

    /// What was wrong.
    pub fn kind(&self) -> DecodeErrorKind {
        self.kind
    }

    /// Offset of the offending byte from the start of the frame being decoded.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The offending byte, when the error is about one byte.
    pub fn byte(&self) -> Option<u8> {
        self.byte
    }

    /// True for the errors that a configured limit raised (as opposed to malformed input).
    pub fn is_limit(&self) -> bool {
        matches!(
            self.kind,
            DecodeErrorKind::LineTooLong
                | DecodeErrorKind::BulkTooLong
                | DecodeErrorKind::TooManyElements
                | DecodeErrorKind::TooDeep
                | DecodeErrorKind::FrameTooLarge
        )
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RESP protocol error: {:?} at offset {}",
            self.kind, self.offset
        )?;
        if let Some(b) = self.byte {
            write!(f, " (byte {:?})", b as char)?;
        }
        Ok(())
    }
}

impl std::error::Error for DecodeError {}
