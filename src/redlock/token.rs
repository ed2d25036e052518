//! Lock tokens: an optional caller-chosen prefix, then 128 random bits as 32 hex characters,
//! kept inline so that making, copying and sending one never allocates.

use rand::Rng;

/// The longest [token prefix](super::RedlockOptions::token_prefix), in bytes. A prefix is for
/// telling holders apart while debugging (`host-7/pid-42/`), and 64 bytes fit a host name, a
/// process id and a task name. The bound keeps every token inline (this plus
/// [`TOKEN_RANDOM_LEN`] bytes), so a prefix costs no allocation per acquire, and it keeps the
/// value each node stores per lock small.
pub const MAX_TOKEN_PREFIX: usize = 64;

/// The random part of every token, in bytes: 128 bits as lowercase hex. A prefix is put in front
/// of it, never in place of any of it, so uniqueness does not depend on the prefix.
pub const TOKEN_RANDOM_LEN: usize = 32;

/// The most bytes a token can have.
const TOKEN_CAPACITY: usize = MAX_TOKEN_PREFIX + TOKEN_RANDOM_LEN;

/// A lock token, inline: the prefix, then the random part. `Copy`, like the plain array it
/// replaced, so a lock's cleanup and its renewals take copies without allocating.
#[derive(Clone, Copy)]
pub(crate) struct Token {
    len: u8,
    bytes: [u8; TOKEN_CAPACITY],
}

impl std::ops::Deref for Token {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self))
    }
}

impl Token {
    /// A token that is `text` exactly, when it has the shape of one this crate makes: at most
    /// [`MAX_TOKEN_PREFIX`] bytes, then [`TOKEN_RANDOM_LEN`] lowercase hex characters.
    pub(crate) fn parse(text: &str) -> Option<Token> {
        let b = text.as_bytes();
        if b.len() < TOKEN_RANDOM_LEN || b.len() > TOKEN_CAPACITY {
            return None;
        }
        let random = &b[b.len() - TOKEN_RANDOM_LEN..];
        if !random
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let mut token = Token {
            len: b.len() as u8,
            bytes: [0; TOKEN_CAPACITY],
        };
        token.bytes[..b.len()].copy_from_slice(b);
        Some(token)
    }
}

/// A new token without a prefix.
pub(crate) fn new_token() -> Token {
    new_token_with(b"")
}

/// A new token: `prefix`, then 128 random bits. A prefix longer than [`MAX_TOKEN_PREFIX`] is
/// refused when the options are accepted; the cut here only keeps the copy in bounds.
pub(crate) fn new_token_with(prefix: &[u8]) -> Token {
    let prefix = &prefix[..prefix.len().min(MAX_TOKEN_PREFIX)];
    let mut token = Token {
        len: (prefix.len() + TOKEN_RANDOM_LEN) as u8,
        bytes: [0; TOKEN_CAPACITY],
    };
    token.bytes[..prefix.len()].copy_from_slice(prefix);
    // ThreadRng: a CSPRNG seeded once per thread from OS entropy; no syscall per token.
    let bits: u128 = rand::rng().random();
    let random = &mut token.bytes[prefix.len()..prefix.len() + TOKEN_RANDOM_LEN];
    for (chunk, word) in random
        .chunks_exact_mut(8)
        .zip(bits.to_be_bytes().chunks_exact(4))
    {
        let word = u32::from_be_bytes(word.try_into().expect("4 bytes"));
        chunk.copy_from_slice(&hex8(word));
    }
    token
}

/// `word` as 8 lowercase hex characters, most significant first (`format!("{word:08x}")`),
/// eight at a time in one `u64`. A loop over the nibbles (`u128` shifts and a table lookup
/// each) took `new_token_with` to 220 instructions; this, to 163 (callgrind, 2026-12-01).
fn hex8(word: u32) -> [u8; 8] {
    // Spread the 8 nibbles into the 8 bytes, nibble i into byte i (counting from the least
    // significant).
    let mut x = u64::from(word);
    x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // 1 in each byte whose nibble is 10 or more (adding 6 carries into bit 4 exactly then).
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    // '0' + nibble, and `'a' - '0' - 10` (39) more for a letter.
    let ascii = x + 0x3030_3030_3030_3030 + letters * 39;
    // Byte 7 holds the most significant nibble: big-endian puts it first.
    ascii.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_the_prefix_then_32_hex_characters() {
        let t = new_token_with(b"host-7/pid-42/");
        assert_eq!(t.len(), 14 + TOKEN_RANDOM_LEN);
        assert!(t.starts_with(b"host-7/pid-42/"));
        assert!(t[14..].iter().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(new_token().len(), TOKEN_RANDOM_LEN);
        assert_ne!(&new_token()[..], &new_token()[..]);
    }

    #[test]
    fn hex8_is_the_formatted_word() {
        for word in [
            0,
            1,
            9,
            10,
            15,
            0x10,
            0x9a,
            0xdead_beef,
            0x0123_4567,
            0x89ab_cdef,
            u32::MAX,
        ] {
            assert_eq!(
                &hex8(word)[..],
                format!("{word:08x}").as_bytes(),
                "{word:#x}"
            );
        }
        let mut x = 0x2545_f491u32;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            assert_eq!(&hex8(x)[..], format!("{x:08x}").as_bytes());
        }
    }

    #[test]
    fn a_prefix_at_the_limit_fits_inline() {
        let prefix = [b'p'; MAX_TOKEN_PREFIX];
        let t = new_token_with(&prefix);
        assert_eq!(t.len(), TOKEN_CAPACITY);
        assert_eq!(&t[..MAX_TOKEN_PREFIX], &prefix[..]);
        assert_eq!(
            Token::parse(std::str::from_utf8(&t).unwrap()).map(|p| p.len()),
            Some(t.len())
        );
    }

    #[test]
    fn parse_takes_only_the_shape_this_crate_makes() {
        let made = new_token_with(b"a/");
        let text = std::str::from_utf8(&made).unwrap();
        assert_eq!(&Token::parse(text).unwrap()[..], text.as_bytes());
        // Too short, not hex at the end, upper-case hex, one byte past the capacity.
        assert!(Token::parse("0123456789abcdef").is_none());
        assert!(Token::parse(&format!("{}x", &text[..text.len() - 1])).is_none());
        assert!(Token::parse(&text.to_uppercase()).is_none());
        let long = format!("{}{}", "p".repeat(MAX_TOKEN_PREFIX + 1), &text[2..]);
        assert!(Token::parse(&long).is_none());
        assert!(Token::parse(&long[1..]).is_some());
    }
}
