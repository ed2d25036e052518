//! The decoded value of one RESP2/RESP3 reply.

use bytes::Bytes;

/// One RESP value, as the decoder produces it and the encoder writes it.
///
/// Byte payloads are [`Bytes`] slices of the connection's read buffer (zero-copy). That is the
/// right trade for a lock client, which drops every reply as soon as it has looked at it. A caller
/// that keeps a small frame for long should call [`Frame::detach`]: a tiny slice otherwise pins the
/// whole read buffer and forces the next read to allocate a new one.
#[derive(Debug, Clone, PartialEq)]
// A word-sized tag puts every payload at an aligned offset. With the default byte tag, payloads
// start at offset 1 and each move of a `Frame` (out of `decode`, through `Result` and `Option`)
// is unaligned 16-byte loads over 8-byte stores: store-forwarding stalls that measured as half
// the cost of decoding `+OK` (50 -> 25 ns). 48 bytes instead of 40; the niches stay.
#[repr(u64)]
pub enum Frame {
    /// `+text`: a simple string.
    Simple(Bytes),
    /// `-CODE message` or `!len` blob error: an error reply from the server.
    Error(ServerError),
    /// `:n`: a signed 64-bit integer.
    Integer(i64),
    /// `$len`: a bulk string.
    Bulk(Bytes),
    /// `_`, `$-1` or `*-1`: the one null.
    Null,
    /// `#t` / `#f`.
    Boolean(bool),
    /// `,value`: a double, including `inf`, `-inf` and `nan`.
    Double(f64),
    /// `(digits`: a big number, kept as its decimal text.
    BigNumber(Bytes),
    /// `=len`: a verbatim string with its three-byte format (`txt`, `mkd`).
    Verbatim {
        /// The format, such as `txt`.
        format: [u8; 3],
        /// The text after `fmt:`.
        data: Bytes,
    },
    /// `*n`: an array.
    Array(Vec<Frame>),
    /// `~n`: a set.
    Set(Vec<Frame>),
    /// `%n`: a map, in the order the server sent it.
    Map(Vec<(Frame, Frame)>),
    /// `>n`: an out-of-band push (pub/sub, invalidation). Never a reply to a request.
    Push(Vec<Frame>),
    /// A value preceded by a `|n` attribute map, kept only when
    /// [`DecoderConfig::keep_attributes`](super::DecoderConfig::keep_attributes) is set.
    Attributed {
        /// The attribute map.
        attributes: Vec<(Frame, Frame)>,
        /// The value the attributes describe.
        value: Box<Frame>,
    },
}

impl Frame {
    /// True for `Frame::Push`, also behind attributes (kept with
    /// [`DecoderConfig::keep_attributes`](super::DecoderConfig::keep_attributes)): the connection
    /// routes pushes away from the reply queue, so an attributed push must not be taken for a
    /// reply.
    pub fn is_push(&self) -> bool {
        let mut frame = self;
        loop {
            match frame {
                Frame::Push(_) => return true,
                Frame::Attributed { value, .. } => frame = value,
                _ => return false,
            }
        }
    }

    /// True for the null reply (`_`, `$-1`, `*-1`).
    pub fn is_null(&self) -> bool {
        matches!(self, Frame::Null)
    }

    /// True for `+OK`.
    pub fn is_ok(&self) -> bool {
        matches!(self, Frame::Simple(s) if s.as_ref() == b"OK")
    }

    /// The integer, when this is one.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Frame::Integer(n) => Some(*n),
            _ => None,
        }
    }

    /// The bytes of a simple string, bulk string, verbatim string or big number.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Frame::Simple(b) | Frame::Bulk(b) | Frame::BigNumber(b) => Some(b),
            Frame::Verbatim { data, .. } => Some(data),
            _ => None,
        }
    }

    /// The value without its attributes.
    pub fn without_attributes(self) -> Frame {
        match self {
            Frame::Attributed { value, .. } => value.without_attributes(),
            other => other,
        }
    }

    /// Copies every byte payload out of the shared read buffer, so that keeping this frame no
    /// longer pins that buffer. Costs one small allocation per payload.
    pub fn detach(self) -> Frame {
        fn copy(b: Bytes) -> Bytes {
            if b.is_empty() {
                Bytes::new()
            } else {
                Bytes::copy_from_slice(&b)
            }
        }
        fn pairs(v: Vec<(Frame, Frame)>) -> Vec<(Frame, Frame)> {
            v.into_iter()
                .map(|(k, v)| (k.detach(), v.detach()))
                .collect()
        }
        match self {
            Frame::Simple(b) => Frame::Simple(copy(b)),
            Frame::Bulk(b) => Frame::Bulk(copy(b)),
            Frame::BigNumber(b) => Frame::BigNumber(copy(b)),
            Frame::Error(e) => Frame::Error(ServerError::from_line(copy(e.line))),
            Frame::Verbatim { format, data } => Frame::Verbatim {
                format,
                data: copy(data),
            },
            Frame::Array(v) => Frame::Array(v.into_iter().map(Frame::detach).collect()),
            Frame::Set(v) => Frame::Set(v.into_iter().map(Frame::detach).collect()),
            Frame::Push(v) => Frame::Push(v.into_iter().map(Frame::detach).collect()),
            Frame::Map(v) => Frame::Map(pairs(v)),
            Frame::Attributed { attributes, value } => Frame::Attributed {
                attributes: pairs(attributes),
                value: Box::new(value.detach()),
            },
            other => other,
        }
    }

    /// Looks a key up in a map (or a RESP2 flat key/value array, as `HELLO 2` answers).
    pub fn map_get(&self, key: &[u8]) -> Option<&Frame> {
        match self {
            Frame::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| k.as_bytes() == Some(key))
                .map(|(_, v)| v),
            Frame::Array(items) => items
                .chunks_exact(2)
                .find(|kv| kv[0].as_bytes() == Some(key))
                .map(|kv| &kv[1]),
            _ => None,
        }
    }
}

/// An error reply: `-CODE message` (or a `!` blob error), split into code and message.
///
/// The line is kept whole and zero-copy; `code()` and `message()` are views into it. Match on the
/// code, never on the message: Redis and Dragonfly word their messages differently.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerError {
    line: Bytes,
}

impl ServerError {
    /// Wraps an error line (without the leading `-` and the trailing CRLF).
    pub fn from_line(line: Bytes) -> ServerError {
        ServerError { line }
    }

    /// The whole error text.
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    /// The first word, such as `ERR`, `NOSCRIPT`, `WRONGPASS`.
    pub fn code(&self) -> &[u8] {
        match memchr::memchr(b' ', &self.line) {
            Some(i) => &self.line[..i],
            None => &self.line,
        }
    }

    /// Everything after the code.
    pub fn message(&self) -> &[u8] {
        match memchr::memchr(b' ', &self.line) {
            Some(i) => &self.line[i + 1..],
            None => &[],
        }
    }

    /// True when the code is `code`.
    pub fn has_code(&self, code: &str) -> bool {
        self.code() == code.as_bytes()
    }

    /// What kind of failure the code names, for the codes a lock client must tell apart.
    pub fn kind(&self) -> ServerErrorKind {
        match self.code() {
            b"LOADING" => ServerErrorKind::Loading,
            b"READONLY" => ServerErrorKind::ReadOnly,
            b"OOM" => ServerErrorKind::OutOfMemory,
            b"NOAUTH" | b"WRONGPASS" | b"NOPERM" => ServerErrorKind::Auth,
            b"NOSCRIPT" => ServerErrorKind::NoScript,
            b"BUSY" => ServerErrorKind::Busy,
            b"MASTERDOWN" | b"TRYAGAIN" | b"CLUSTERDOWN" => ServerErrorKind::TryAgain,
            _ => ServerErrorKind::Other,
        }
    }

    /// True for an `unknown command` error, under either server's wording.
    pub fn is_unknown_command(&self) -> bool {
        self.has_code("ERR") && memchr::memmem::find(self.message(), b"unknown command").is_some()
    }
}

/// The server error codes a lock client acts on, from [`ServerError::kind`]. Every one of them
/// means "this node did not take the command": the quorum counts it as a failed node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerErrorKind {
    /// `LOADING`: the server is loading its dataset after a start.
    Loading,
    /// `READONLY`: the node is a replica (configured by mistake as a lock node).
    ReadOnly,
    /// `OOM`: over `maxmemory`, writes refused.
    OutOfMemory,
    /// `NOAUTH`, `WRONGPASS`, `NOPERM`: credentials missing, wrong, or not allowed the command.
    Auth,
    /// `NOSCRIPT`: the script cache does not have the SHA (the client resends with the source).
    NoScript,
    /// `BUSY`: a script is running too long.
    Busy,
    /// `MASTERDOWN`, `TRYAGAIN`, `CLUSTERDOWN`: transient unavailability.
    TryAgain,
    /// Any other code (`ERR`, `WRONGTYPE`, ...).
    Other,
}

impl std::fmt::Debug for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerError({:?})", String::from_utf8_lossy(&self.line))
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.line))
    }
}
