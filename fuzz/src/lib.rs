//! Differential checks: dragonlock's RESP codec against an independent, maintained one, the
//! `redis-protocol` crate (RESP2 and RESP3 decoders and encoders).
//!
//! The fuzz targets `diff_decode` and `diff_encode` call [`decode_agrees`] and
//! [`encode_agrees`]; `tests/diff_corpus.rs` replays the checked-in corpus through the same
//! functions on stable Rust (`cargo test` in `fuzz/`), so CI covers them without nightly. This
//! crate, not dragonlock, depends on `redis-protocol`: the library stays at its own five
//! dependencies.
//!
//! Two decoders are compared "modulo representation": each frame is turned into a [`Value`]
//! (maps and sets unordered and without duplicate keys, as `redis-protocol` holds them in
//! hash tables; attributes dropped; simple and blob errors both an error). Where the outcomes
//! differ, the difference must be one of the rows of the conformance table in `DESIGN.md`
//! ([`Row`]); [`explain`] names the row from the bytes and from dragonlock's typed error, and
//! anything it cannot name is a finding: the check panics, and the fuzzer saves the input.

use std::ops::ControlFlow;

use bytes::BytesMut;
use dragonlock::resp::{
    encode_command, encode_delex_ifeq, encode_frame, DecodeError, DecodeErrorKind as K, Decoder,
    DecoderConfig, EvalShaCommand, Frame, SetNxPxCommand,
};
use redis_protocol::resp3::types::Resp3Frame;
use redis_protocol::{resp2, resp3};

/// A decoded value with the two implementations' differences of representation taken out.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    /// `+`.
    Simple(Vec<u8>),
    /// `-` or `!`.
    Error(Vec<u8>),
    /// `:`.
    Integer(i64),
    /// `$`.
    Bulk(Vec<u8>),
    /// `_`, `$-1`, `*-1`.
    Null,
    /// `#`.
    Boolean(bool),
    /// `,`, as its bits, with every NaN the same.
    Double(u64),
    /// `(`.
    BigNumber(Vec<u8>),
    /// `=`: format and text.
    Verbatim([u8; 3], Vec<u8>),
    /// `*`.
    Array(Vec<Value>),
    /// `~`: sorted, duplicates removed (but NaN, which equals nothing).
    Set(Vec<Value>),
    /// `>`.
    Push(Vec<Value>),
    /// `%`: sorted, the first of duplicate keys kept (but NaN, which equals nothing).
    Map(Vec<(Value, Value)>),
}

fn double(d: f64) -> Value {
    Value::Double(if d.is_nan() {
        f64::NAN.to_bits()
    } else {
        d.to_bits()
    })
}

/// Whether `v` holds a NaN anywhere: such a key equals nothing in theirs' hash tables (their
/// equality is `f64`'s), so it is never a duplicate.
fn has_nan(v: &Value) -> bool {
    match v {
        Value::Double(bits) => f64::from_bits(*bits).is_nan(),
        Value::Array(x) | Value::Set(x) | Value::Push(x) => x.iter().any(has_nan),
        Value::Map(x) => x.iter().any(|(k, v)| has_nan(k) || has_nan(v)),
        _ => false,
    }
}

/// Sorts; with `dedup` (ours, a list) also drops repeated members, as theirs' hash set does.
/// Theirs' equality counts attributes: `tags` holds each member's (normalized) attributes.
fn set(mut v: Vec<Value>, dedup: bool, tags: &[Option<Value>]) -> Value {
    if dedup {
        let mut out: Vec<Value> = Vec::with_capacity(v.len());
        let mut seen: Vec<(Value, Option<Value>)> = Vec::with_capacity(v.len());
        for (i, x) in v.into_iter().enumerate() {
            let tag = tags.get(i).cloned().flatten();
            if has_nan(&x) || !seen.iter().any(|(y, t)| *y == x && *t == tag) {
                seen.push((x.clone(), tag));
                out.push(x);
            }
        }
        v = out;
    }
    v.sort();
    Value::Set(v)
}

/// The attributes of `f`, normalized, for the equality theirs uses in sets and map keys.
fn tag(f: &Frame) -> Option<Value> {
    match f {
        Frame::Attributed { attributes, .. } => Some(map(
            attributes
                .iter()
                .map(|(k, v)| (ours_value(k), ours_value(v)))
                .collect(),
            true,
            &[],
        )),
        _ => None,
    }
}

/// Sorts; with `dedup` (ours, a list of pairs) also keeps one entry per key, as theirs' hash
/// map does. Which value theirs keeps for a repeated key is random (`Row::RepeatedMapKey`),
/// so the value of a repeated key is compared only if [`REPEATED`] is not set.
fn map(pairs: Vec<(Value, Value)>, dedup: bool, tags: &[Option<Value>]) -> Value {
    let mut out: Vec<(Value, Value)> = Vec::with_capacity(pairs.len());
    let mut out_tags: Vec<Option<Value>> = Vec::with_capacity(pairs.len());
    for (i, (k, v)) in pairs.into_iter().enumerate() {
        let tag = tags.get(i).cloned().flatten();
        let seen = out
            .iter()
            .zip(&out_tags)
            .position(|((seen, _), t)| *seen == k && *t == tag);
        if !dedup || has_nan(&k) {
            out.push((k, v));
            out_tags.push(tag);
        } else if let Some(at) = seen {
            REPEATED.with(|r| r.set(true));
            out[at].1 = Value::Null;
        } else {
            out.push((k, v));
            out_tags.push(tag);
        }
    }
    out.sort();
    Value::Map(out)
}

thread_local! {
    /// Set when ours decoded a map with a repeated key (see [`map`]).
    static REPEATED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Sets every map value in `v` to `Null`.
fn blank_map_values(v: &mut Value) {
    match v {
        Value::Map(m) => {
            m.iter_mut().for_each(|(_, x)| *x = Value::Null);
            m.sort();
        }
        Value::Array(x) | Value::Set(x) | Value::Push(x) => {
            x.iter_mut().for_each(blank_map_values);
        }
        _ => {}
    }
}

/// Sets the value of every key that ours saw repeated to `Null` in theirs too, given ours'.
fn blank_repeated(theirs: &mut Value, ours: &Value) {
    match (theirs, ours) {
        (Value::Map(t), Value::Map(o)) => {
            for (k, v) in t.iter_mut() {
                if let Some((_, ov)) = o.iter().find(|(ok, _)| ok == k) {
                    if *ov == Value::Null {
                        *v = Value::Null;
                    } else {
                        blank_repeated(v, ov);
                    }
                }
            }
            t.sort();
        }
        (Value::Array(t), Value::Array(o))
        | (Value::Set(t), Value::Set(o))
        | (Value::Push(t), Value::Push(o)) => {
            for (x, y) in t.iter_mut().zip(o) {
                blank_repeated(x, y);
            }
        }
        _ => {}
    }
}

/// dragonlock's frame as a [`Value`].
pub fn ours_value(f: &Frame) -> Value {
    match f {
        Frame::Simple(b) => Value::Simple(b.to_vec()),
        Frame::Error(e) => Value::Error(e.line().to_vec()),
        Frame::Integer(n) => Value::Integer(*n),
        Frame::Bulk(b) => Value::Bulk(b.to_vec()),
        Frame::Null => Value::Null,
        Frame::Boolean(b) => Value::Boolean(*b),
        Frame::Double(d) => double(*d),
        Frame::BigNumber(b) => Value::BigNumber(b.to_vec()),
        Frame::Verbatim { format, data } => Value::Verbatim(*format, data.to_vec()),
        Frame::Array(v) => Value::Array(v.iter().map(ours_value).collect()),
        Frame::Set(v) => set(
            v.iter().map(ours_value).collect(),
            true,
            &v.iter().map(tag).collect::<Vec<_>>(),
        ),
        Frame::Push(v) => Value::Push(v.iter().map(ours_value).collect()),
        Frame::Map(v) => map(
            v.iter()
                .map(|(k, x)| (ours_value(k), ours_value(x)))
                .collect(),
            true,
            &v.iter().map(|(k, _)| tag(k)).collect::<Vec<_>>(),
        ),
        Frame::Attributed { value, .. } => ours_value(value),
    }
}

/// A `redis-protocol` RESP3 frame as a [`Value`]; `Err` for the kinds dragonlock has no
/// counterpart for (a `HELLO` line, a stream chunk).
pub fn resp3_value(f: &resp3::types::OwnedFrame) -> Result<Value, Row> {
    use resp3::types::OwnedFrame as F;
    let all = |v: &[F]| v.iter().map(resp3_value).collect::<Result<Vec<_>, _>>();
    Ok(match f {
        F::BlobString { data, .. } => Value::Bulk(data.clone()),
        F::BlobError { data, .. } => Value::Error(data.clone()),
        F::SimpleString { data, .. } => Value::Simple(data.clone()),
        F::SimpleError { data, .. } => Value::Error(data.as_bytes().to_vec()),
        F::Boolean { data, .. } => Value::Boolean(*data),
        F::Null => Value::Null,
        F::Number { data, .. } => Value::Integer(*data),
        F::Double { data, .. } => double(*data),
        F::BigNumber { data, .. } => Value::BigNumber(data.clone()),
        F::VerbatimString { data, format, .. } => {
            let format = match format {
                resp3::types::VerbatimStringFormat::Text => *b"txt",
                resp3::types::VerbatimStringFormat::Markdown => *b"mkd",
            };
            Value::Verbatim(format, data.clone())
        }
        F::Array { data, .. } => Value::Array(all(data)?),
        F::Push { data, .. } => Value::Push(all(data)?),
        F::Set { data, .. } => set(
            data.iter().map(resp3_value).collect::<Result<_, _>>()?,
            false,
            &[],
        ),
        F::Map { data, .. } => {
            let mut pairs = Vec::with_capacity(data.len());
            for (k, v) in data {
                pairs.push((resp3_value(k)?, resp3_value(v)?));
            }
            map(pairs, false, &[])
        }
        F::Hello { .. } | F::ChunkedString(_) => return Err(Row::TheirExtraTypes),
    })
}

/// A `redis-protocol` RESP2 frame as a [`Value`].
pub fn resp2_value(f: &resp2::types::OwnedFrame) -> Value {
    use resp2::types::OwnedFrame as F;
    match f {
        F::SimpleString(b) => Value::Simple(b.clone()),
        F::Error(s) => Value::Error(s.as_bytes().to_vec()),
        F::Integer(n) => Value::Integer(*n),
        F::BulkString(b) => Value::Bulk(b.clone()),
        F::Array(v) => Value::Array(v.iter().map(resp2_value).collect()),
        F::Null => Value::Null,
    }
}

/// The rows of the conformance table in `DESIGN.md`: each way the two decoders are known to
/// differ, and why that is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    /// Ours refuses: over a configured limit (depth, elements, lengths). Theirs has none.
    OurLimit,
    /// Ours refuses streamed types; theirs streams them (and refuses them at the top level
    /// of a complete decode).
    Streamed,
    /// Ours refuses a `+` in a number or length (`$+3`, `:+1`); theirs uses Rust's integer
    /// parser, which takes it.
    LeadingPlus,
    /// Ours refuses a leading zero and `-0` (`:01`, `$-0`, `*-01`); theirs takes them.
    LeadingZero,
    /// Ours refuses doubles outside the specification's form (`.5`, `1.`, `+1`, `infinity`,
    /// `NaN`); theirs takes whatever Rust's float parser takes.
    DoubleForm,
    /// Ours refuses a big number that is not an integer's text, and `_` with content; theirs
    /// checks neither.
    UncheckedText,
    /// Ours refuses a CR or LF alone in a line, and a payload not followed by CRLF; theirs
    /// reads a line up to the first CRLF and skips any two bytes after a payload.
    LineEndings,
    /// Ours refuses a verbatim string without `:` after its format; theirs skips that byte.
    VerbatimColon,
    /// Ours refuses `;` (stream chunk), `.` (stream end) and `H` (an inline `HELLO`) as type
    /// bytes; theirs decodes them as frames of their own.
    TheirExtraTypes,
    /// Ours refuses from a header what theirs refuses only after more bytes (`=1`: a verbatim
    /// count under 4): with any bytes after it, theirs refuses too.
    OursEarlier,
    /// Theirs refuses a verbatim format other than `txt` and `mkd`; ours takes any three
    /// bytes (the specification names those two as examples, hiredis takes any).
    VerbatimFormat,
    /// Theirs refuses a map key or set member that is an aggregate (it hashes them).
    UnhashableKey,
    /// Theirs refuses an error line that is not UTF-8 (it keeps errors as `String`).
    NonUtf8Error,
    /// Theirs refuses attributes before a null or before another attribute map.
    AttributePlacement,
    /// Theirs (RESP3) reads `$-1` and `*-1` as streamed types, which a complete decode
    /// refuses: the RESP2 nulls are not RESP3. Ours takes them on either protocol.
    Resp2NullInResp3,
    /// Theirs keeps a random one of the values of a key repeated in a map (it builds the map
    /// by iterating a hash map keyed by byte ranges): such a map is compared on its keys only.
    RepeatedMapKey,
    /// Theirs (RESP2) refuses RESP3 types; ours has one decoder for both protocols (the
    /// server decides what it sends, after `HELLO`).
    Resp3TypeInResp2,
}

/// What one decoder made of a stream: its values, then how it stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The frames, in order.
    pub values: Vec<Value>,
    /// How the stream ended.
    pub end: End,
}

/// How a decoder stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// Bytes left that do not make a frame yet (or none).
    Incomplete,
    /// An error for the frame that starts at this offset of the stream.
    Error(usize),
}

/// Our limits for the comparison: the defaults, except that attributes are kept so that the
/// placements theirs refuses are visible.
fn our_config() -> DecoderConfig {
    DecoderConfig::default().keep_attributes(true)
}

/// Decodes `data` whole with dragonlock; also the error, for [`explain`].
fn ours_whole(data: &[u8]) -> (Outcome, Vec<Frame>, Option<DecodeError>) {
    let mut dec = Decoder::new(our_config());
    let mut buf = BytesMut::from(data);
    let mut frames = Vec::new();
    loop {
        let start = data.len() - buf.len();
        match dec.decode(&mut buf) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => {
                let values = frames.iter().map(ours_value).collect();
                return (
                    Outcome {
                        values,
                        end: End::Incomplete,
                    },
                    frames,
                    None,
                );
            }
            Err(e) => {
                let values = frames.iter().map(ours_value).collect();
                return (
                    Outcome {
                        values,
                        end: End::Error(start),
                    },
                    frames,
                    Some(e),
                );
            }
        }
    }
}

/// Decodes `data` one byte at a time with dragonlock (`decode_each`, as a connection reads).
fn ours_bytewise(data: &[u8]) -> Outcome {
    let mut dec = Decoder::new(our_config());
    let mut buf = BytesMut::new();
    let mut values = Vec::new();
    let mut consumed = 0;
    for &b in data {
        buf.extend_from_slice(&[b]);
        let before = buf.len();
        let mut took = Vec::new();
        let res = dec.decode_each(&mut buf, |f| {
            took.push(f);
            ControlFlow::Continue(())
        });
        values.extend(took.iter().map(ours_value));
        if let Err(_e) = res {
            // Frames handed out before the error were consumed; the error's frame starts at
            // what is left of the buffer.
            let start = consumed + (before - buf.len());
            return Outcome {
                values,
                end: End::Error(start),
            };
        }
        consumed += before - buf.len();
    }
    Outcome {
        values,
        end: End::Incomplete,
    }
}

/// One step of theirs: a frame (or the row that says why it cannot be compared) and its
/// length, `None` for more bytes, `Err` for an error.
type Step = Result<Option<(Result<Value, Row>, usize)>, ()>;
type Theirs = fn(&[u8]) -> Step;

fn theirs3(buf: &[u8]) -> Step {
    match resp3::decode::complete::decode(buf) {
        Ok(Some((f, n))) => Ok(Some((resp3_value(&f), n))),
        Ok(None) => Ok(None),
        Err(_) => Err(()),
    }
}

fn theirs2(buf: &[u8]) -> Step {
    match resp2::decode::decode(buf) {
        Ok(Some((f, n))) => Ok(Some((Ok(resp2_value(&f)), n))),
        Ok(None) => Ok(None),
        Err(_) => Err(()),
    }
}

/// Decodes `data` with theirs, fed whole. `Err(row)` when it made a frame we cannot compare.
fn theirs_whole(decode: Theirs, data: &[u8]) -> Result<Outcome, Row> {
    let mut pos = 0;
    let mut values = Vec::new();
    loop {
        match decode(&data[pos..]) {
            Ok(Some((v, n))) => {
                values.push(v?);
                pos += n;
            }
            Ok(None) => {
                return Ok(Outcome {
                    values,
                    end: End::Incomplete,
                })
            }
            Err(()) => {
                return Ok(Outcome {
                    values,
                    end: End::Error(pos),
                })
            }
        }
    }
}

/// Decodes `data` with theirs, one byte more at a time. Quadratic (theirs restarts each
/// frame from its first byte), so only for short inputs.
fn theirs_bytewise(decode: Theirs, data: &[u8]) -> Result<Outcome, Row> {
    let mut pos = 0;
    let mut values = Vec::new();
    for fed in 1..=data.len() {
        loop {
            match decode(&data[pos..fed]) {
                Ok(Some((v, n))) => {
                    values.push(v?);
                    pos += n;
                }
                Ok(None) => break,
                Err(()) => {
                    return Ok(Outcome {
                        values,
                        end: End::Error(pos),
                    })
                }
            }
        }
    }
    Ok(Outcome {
        values,
        end: End::Incomplete,
    })
}

/// Nesting in `data` counted the crude way (aggregate headers in a row), to keep inputs away
/// from theirs that would recurse deep enough to overflow the stack: theirs has no depth
/// limit, and a deep input is already `Row::OurLimit` for us.
fn crude_depth(data: &[u8]) -> usize {
    data.iter()
        .filter(|&&b| matches!(b, b'*' | b'%' | b'~' | b'>' | b'|'))
        .count()
}

/// The byte that starts the line holding offset `at` (the lines of a header hold no LF).
fn line_type(data: &[u8], at: usize) -> u8 {
    let start = data[..at.min(data.len())]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    data.get(start).copied().unwrap_or(0)
}

/// Why ours refused what theirs took (or still waits for): the row, from our typed error.
fn ours_refuses(data: &[u8], frame_start: usize, e: &DecodeError) -> Option<Row> {
    let at = frame_start + e.offset();
    let line_start = data[..at.min(data.len())]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let text = &data[(line_start + 1).min(data.len())..];
    Some(match e.kind() {
        _ if e.is_limit() => Row::OurLimit,
        K::Unsupported => Row::Streamed,
        K::InvalidInteger | K::InvalidLength | K::InvalidValue
            if e.byte() == Some(b'+') || text.starts_with(b"+") =>
        {
            Row::LeadingPlus
        }
        K::InvalidInteger | K::InvalidLength if e.byte() == Some(b'0') => Row::LeadingZero,
        K::InvalidLength if text.starts_with(b"-0") => Row::LeadingZero,
        K::InvalidValue if matches!(line_type(data, at), b'(' | b'_') => Row::UncheckedText,
        K::InvalidDouble => Row::DoubleForm,
        K::InvalidLineEnding => Row::LineEndings,
        K::InvalidVerbatim if e.byte().is_some() => Row::VerbatimColon,
        K::InvalidTypeByte if matches!(e.byte(), Some(b';' | b'.' | b'H')) => Row::TheirExtraTypes,
        _ => return None,
    })
}

fn walk(f: &Frame, check: &mut impl FnMut(&Frame) -> bool) -> bool {
    if check(f) {
        return true;
    }
    match f {
        Frame::Array(v) | Frame::Set(v) | Frame::Push(v) => v.iter().any(|x| walk(x, check)),
        Frame::Map(v) => v.iter().any(|(k, x)| walk(k, check) || walk(x, check)),
        Frame::Attributed { attributes, value } => {
            attributes
                .iter()
                .any(|(k, x)| walk(k, check) || walk(x, check))
                || walk(value, check)
        }
        _ => false,
    }
}

fn is_aggregate(f: &Frame) -> bool {
    matches!(
        f.clone().without_attributes(),
        Frame::Array(_) | Frame::Set(_) | Frame::Push(_) | Frame::Map(_)
    )
}

/// Why theirs refused what ours took (`frame`) or still waits for (`None`): the row, from
/// our frame where there is one, else from the bytes of the frame.
fn theirs_refuses(resp3: bool, bytes: &[u8], frame: Option<&Frame>) -> Option<Row> {
    let has_line = |head: &[u8]| {
        bytes.starts_with(head)
            || bytes
                .windows(head.len() + 1)
                .any(|w| w[0] == b'\n' && &w[1..] == head)
    };
    if resp3 && (has_line(b"$-1\r") || has_line(b"*-1\r")) {
        return Some(Row::Resp2NullInResp3);
    }
    let Some(frame) = frame else {
        // Still incomplete for us: theirs judged a part we have not.
        let resp3_byte = |b: u8| {
            matches!(
                b,
                b'_' | b'#' | b',' | b'(' | b'!' | b'=' | b'%' | b'~' | b'>' | b'|'
            )
        };
        if !resp3
            && (resp3_byte(bytes.first().copied().unwrap_or(0))
                || bytes.windows(2).any(|w| w[0] == b'\n' && resp3_byte(w[1])))
        {
            return Some(Row::Resp3TypeInResp2);
        }
        if has_line(b"=") {
            return Some(Row::VerbatimFormat);
        }
        // Theirs may have refused a finished part (an attribute's key, a map's) of a frame
        // still open for us, or the type byte after one (a second attribute): cut the bytes
        // where theirs first refuses, finish the frame for ours (the line just begun, then
        // integers), and judge what ours makes of it.
        let decode: Theirs = if resp3 { theirs3 } else { theirs2 };
        let cut = (1..=bytes.len())
            .find(|&i| {
                matches!(
                    theirs_whole(decode, &bytes[..i]),
                    Ok(Outcome {
                        end: End::Error(_),
                        ..
                    })
                )
            })
            .unwrap_or(bytes.len());
        // A short input can declare far more elements than it holds (`*70000` around a
        // second attribute): cap every count at the cut's length first, which no aggregate
        // the cut closes exceeds. Integers then close each open aggregate in turn, innermost
        // first, so the fill is at most one count per level of depth.
        let capped = cap_counts(&bytes[..cut], cut);
        for line_end in [&b""[..], b"\r\n", b"0\r\n"] {
            let mut finished = capped.clone();
            finished.extend_from_slice(line_end);
            for _ in 0..2 * cut * (dragonlock::resp::MAX_DEPTH + 1) + 1024 {
                finished.extend_from_slice(b":0\r\n");
            }
            let mut buf = BytesMut::from(&finished[..]);
            if let Ok(Some(f)) = Decoder::new(our_config()).decode(&mut buf) {
                return theirs_refuses(resp3, bytes, Some(&f));
            }
        }
        return None;
    };
    if !resp3
        && (has_line(b"_")
            || has_line(b"!")
            || walk(frame, &mut |f| {
                !matches!(
                    f,
                    Frame::Simple(_)
                        | Frame::Error(_)
                        | Frame::Integer(_)
                        | Frame::Bulk(_)
                        | Frame::Null
                        | Frame::Array(_)
                )
            }))
    {
        return Some(Row::Resp3TypeInResp2);
    }
    if walk(
        frame,
        &mut |f| matches!(f, Frame::Verbatim { format, .. } if format != b"txt" && format != b"mkd"),
    ) {
        return Some(Row::VerbatimFormat);
    }
    if walk(frame, &mut |f| match f {
        Frame::Map(v) => v.iter().any(|(k, _)| is_aggregate(k)),
        Frame::Set(v) => v.iter().any(is_aggregate),
        Frame::Attributed { attributes, .. } => attributes.iter().any(|(k, _)| is_aggregate(k)),
        _ => false,
    }) {
        return Some(Row::UnhashableKey);
    }
    if walk(
        frame,
        &mut |f| matches!(f, Frame::Error(e) if std::str::from_utf8(e.line()).is_err()),
    ) {
        return Some(Row::NonUtf8Error);
    }
    if walk(
        frame,
        &mut |f| matches!(f, Frame::Attributed { value, .. } if matches!(**value, Frame::Null | Frame::Attributed { .. })),
    ) {
        return Some(Row::AttributePlacement);
    }
    None
}

/// Why the two outcomes differ, as a row of the table; `None` when they agree.
///
/// # Panics
///
/// When they differ in a way no row explains: a finding.
pub fn explain(
    data: &[u8],
    resp3: bool,
    ours: &Outcome,
    ours_frames: &[Frame],
    our_err: Option<&DecodeError>,
    theirs: &Outcome,
) -> Option<Row> {
    let common = ours.values.len().min(theirs.values.len());
    for i in 0..common {
        assert_eq!(
            ours.values[i], theirs.values[i],
            "frame {i} differs (resp3: {resp3})"
        );
    }
    if ours == theirs {
        return None;
    }
    // The first frame they disagree on starts after the `common` frames both made.
    let start = frame_start(common, data);
    let ours_here = ours_frames.get(common);
    let row = match (
        ours_here,
        &ours.end,
        theirs.values.len() > common,
        &theirs.end,
    ) {
        // Ours refused this frame; theirs waits for more, and refuses given more.
        (None, End::Error(_), false, End::Incomplete)
            if theirs_refuses_later(resp3, &data[start..]) =>
        {
            Some(Row::OursEarlier)
        }
        // Ours refused this frame; theirs made it or waits for more.
        (None, End::Error(_), _, _) => ours_refuses(data, start, our_err.expect("error")),
        // Ours made it or waits; theirs refused it.
        (_, _, false, End::Error(_)) => theirs_refuses(resp3, &data[start..], ours_here),
        _ => None,
    };
    assert!(
        row.is_some(),
        "unexplained divergence (resp3: {resp3}) at byte {start}: ours {ours:?} {our_err:?}, theirs {theirs:?}"
    );
    row
}

/// `prefix` (a stream ours accepts so far) with each aggregate's declared count above `most`
/// lowered to `most`. Only headers are rewritten: payloads are skipped by their lengths.
fn cap_counts(prefix: &[u8], most: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len());
    let mut at = 0;
    while at < prefix.len() {
        let Some(eol) = prefix[at..].windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        let eol = at + eol;
        let (kind, text) = (prefix[at], &prefix[(at + 1).min(eol)..eol]);
        let count = std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse::<usize>().ok());
        out.push(kind);
        match (kind, count) {
            (b'*' | b'%' | b'~' | b'>' | b'|', Some(n)) if n > most => {
                out.extend_from_slice(most.to_string().as_bytes());
            }
            _ => out.extend_from_slice(text),
        }
        out.extend_from_slice(b"\r\n");
        at = eol + 2;
        if let (b'$' | b'!' | b'=', Some(len)) = (kind, count) {
            let end = prefix.len().min(at.saturating_add(len).saturating_add(2));
            out.extend_from_slice(&prefix[at..end]);
            at = end;
        }
    }
    out.extend_from_slice(&prefix[at..]);
    out
}

/// Whether theirs refuses `frame` once bytes follow it (integers, which no frame refuses in
/// themselves).
fn theirs_refuses_later(resp3: bool, frame: &[u8]) -> bool {
    let mut more = frame.to_vec();
    for _ in 0..=frame.len() {
        more.extend_from_slice(b":0\r\n");
    }
    let decode: Theirs = if resp3 { theirs3 } else { theirs2 };
    matches!(theirs_whole(decode, &more), Ok(Outcome { ref values, end: End::Error(_) }) if values.is_empty())
}

/// Where frame `i` of ours starts in `data`: re-encoding is not byte-exact, so decode again.
fn frame_start(i: usize, data: &[u8]) -> usize {
    let mut dec = Decoder::new(our_config());
    let mut buf = BytesMut::from(data);
    for _ in 0..i {
        let _ = dec.decode(&mut buf);
    }
    data.len() - buf.len()
}

/// The decoder check. The first byte picks the protocol theirs decodes with (even: RESP3,
/// odd: RESP2), the rest is the stream. Both decoders, whole and byte by byte, must agree or
/// differ only as a row of the table says. Returns the row, if any.
pub fn decode_agrees(input: &[u8]) -> Option<Row> {
    let (&mode, data) = input.split_first()?;
    let resp3 = mode % 2 == 0;
    REPEATED.with(|r| r.set(false));
    let (ours, frames, err) = ours_whole(data);
    assert_eq!(
        ours_bytewise(data),
        ours,
        "ours: whole and byte by byte differ"
    );
    let repeated = REPEATED.with(|r| r.get());
    // Theirs sees only what ours got through when ours hit a limit (theirs has none, and
    // recursing into a deep input overflows its stack), and nothing deeper than ours allows.
    let theirs_data = match (&ours.end, &err) {
        (End::Error(s), Some(e)) if e.is_limit() => &data[..*s],
        _ => data,
    };
    if crude_depth(theirs_data) > 2 * dragonlock::resp::MAX_DEPTH {
        return Some(Row::OurLimit);
    }
    let decode: Theirs = if resp3 { theirs3 } else { theirs2 };
    let mut theirs = match theirs_whole(decode, theirs_data) {
        Ok(o) => o,
        Err(row) => return Some(row),
    };
    if repeated {
        // Theirs' values for a repeated key are random: blank them as ours did.
        for (t, o) in theirs.values.iter_mut().zip(&ours.values) {
            blank_repeated(t, o);
        }
    }
    if theirs_data.len() <= 256 {
        if let Ok(mut bytewise) = theirs_bytewise(decode, theirs_data) {
            // On map keys only: theirs picks a random value for a key repeated in a map
            // (`Row::RepeatedMapKey`), and ours may not have reached the map to know.
            let mut whole = theirs.clone();
            bytewise.values.iter_mut().for_each(blank_map_values);
            whole.values.iter_mut().for_each(blank_map_values);
            assert_eq!(bytewise, whole, "theirs: whole and byte by byte differ");
        }
    }
    if theirs_data.len() < data.len() {
        // Ours stopped at a limit: compare the frames before it.
        let n = theirs.values.len().min(ours.values.len());
        assert_eq!(
            ours.values[..n],
            theirs.values[..n],
            "frames before our limit differ"
        );
        return Some(Row::OurLimit);
    }
    let row = explain(data, resp3, &ours, &frames, err.as_ref(), &theirs);
    row.or(repeated.then_some(Row::RepeatedMapKey))
}

/// Splits `data` into up to `max` byte strings, each length taken from the byte before it.
fn pieces(data: &[u8], max: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() < max {
        let Some((&len, tail)) = rest.split_first() else {
            break;
        };
        let n = (len as usize).min(tail.len());
        out.push(&tail[..n]);
        rest = &tail[n..];
    }
    out
}

/// Decodes one whole command with theirs (RESP2 and RESP3): the arguments as byte strings,
/// and all of `bytes` consumed.
fn theirs_command(bytes: &[u8]) -> Vec<Vec<u8>> {
    let (f2, n2) = resp2::decode::decode(bytes)
        .expect("resp2 decodes our command")
        .expect("complete");
    assert_eq!(n2, bytes.len(), "resp2: the command is all of the bytes");
    let (f3, n3) = resp3::decode::complete::decode(bytes)
        .expect("resp3 decodes our command")
        .expect("complete");
    assert_eq!(n3, bytes.len(), "resp3: the command is all of the bytes");
    let Value::Array(items) = resp2_value(&f2) else {
        panic!("not an array: {f2:?}")
    };
    assert_eq!(
        resp3_value(&f3).ok(),
        Some(Value::Array(items.clone())),
        "resp2 and resp3 differ"
    );
    items
        .into_iter()
        .map(|v| match v {
            Value::Bulk(b) => b,
            other => panic!("not a bulk string: {other:?}"),
        })
        .collect()
}

/// The encoder check: what dragonlock encodes, theirs decodes to the same value.
/// - `encode_command`, `SetNxPxCommand`, `EvalShaCommand` and `encode_delex_ifeq` with
///   arguments cut from `input`: the same arguments, in RESP2 and RESP3;
/// - `encode_frame` of every frame ours decodes from `input`: the same value in RESP3 (unless
///   a row says theirs cannot hold it); and theirs encoding that value decodes, with ours, to
///   it again.
pub fn encode_agrees(input: &[u8]) {
    let args = pieces(input.get(1..).unwrap_or_default(), 12);
    let mut buf = BytesMut::new();
    encode_command(&mut buf, &args);
    if !args.is_empty() {
        assert_eq!(theirs_command(&buf), args, "encode_command");
    }
    let key = args.first().copied().unwrap_or_default();
    let token = args.get(1).copied().unwrap_or_default();
    let mut ttl = [0u8; 8];
    let head = input.len().min(8);
    ttl[..head].copy_from_slice(&input[..head]);
    let ttl = u64::from_le_bytes(ttl);
    buf.clear();
    SetNxPxCommand::new(ttl).encode(&mut buf, key, token);
    let ttl_text = ttl.to_string();
    let want: Vec<&[u8]> = vec![b"SET", key, token, b"NX", b"PX", ttl_text.as_bytes()];
    assert_eq!(theirs_command(&buf), want, "SetNxPxCommand");

    let nkeys = input
        .first()
        .map_or(0, |b| (*b as usize) % (args.len() + 1));
    let (keys, rest) = args.split_at(nkeys);
    let mut sha = [b'0'; 40];
    for (s, b) in sha.iter_mut().zip(input.iter().rev()) {
        *s = b"0123456789abcdef"[(*b % 16) as usize];
    }
    buf.clear();
    EvalShaCommand::new(&sha).encode(&mut buf, keys, rest);
    let nkeys_text = nkeys.to_string();
    let mut want: Vec<&[u8]> = vec![b"EVALSHA", &sha, nkeys_text.as_bytes()];
    want.extend_from_slice(keys);
    want.extend_from_slice(rest);
    assert_eq!(theirs_command(&buf), want, "EvalShaCommand");

    buf.clear();
    encode_delex_ifeq(&mut buf, key, token);
    let want: Vec<&[u8]> = vec![b"DELEX", key, b"IFEQ", token];
    assert_eq!(theirs_command(&buf), want, "encode_delex_ifeq");

    // Frames: ours encodes, theirs decodes; theirs encodes, ours decodes.
    let (_, frames, _) = ours_whole(input);
    for f in frames {
        REPEATED.with(|r| r.set(false));
        let want = ours_value(&f);
        // A key repeated in a map: theirs keeps a random value (`Row::RepeatedMapKey`).
        let blank = |mut v: Value| {
            if REPEATED.with(|r| r.get()) {
                blank_repeated(&mut v, &want);
            }
            v
        };
        buf.clear();
        encode_frame(&mut buf, &f);
        match resp3::decode::complete::decode(&buf) {
            Ok(Some((theirs, n))) => {
                assert_eq!(n, buf.len(), "encode_frame: theirs took part of it");
                assert_eq!(
                    resp3_value(&theirs).ok().map(blank),
                    Some(want.clone()),
                    "encode_frame"
                );
                let mut out = vec![0u8; theirs.encode_len(false)];
                let len = resp3::encode::complete::encode(&mut out, &theirs, false)
                    .expect("theirs encodes");
                let mut back = BytesMut::from(&out[..len]);
                let ours_again = Decoder::new(our_config())
                    .decode(&mut back)
                    .expect("ours decodes theirs")
                    .expect("complete");
                assert!(back.is_empty(), "theirs encoded more than one frame");
                assert_eq!(
                    blank(ours_value(&ours_again)),
                    want,
                    "theirs' encoding, decoded by ours"
                );
            }
            Ok(None) => panic!("encode_frame: theirs says incomplete: {buf:?}"),
            Err(e) => {
                let row = theirs_refuses(true, &buf, Some(&f));
                assert!(row.is_some(), "encode_frame: theirs refused {buf:?}: {e:?}");
            }
        }
    }
}
