//! Lua scripts, identified by the SHA-1 the server will give them.

use bytes::BytesMut;
use smallvec::SmallVec;

use crate::resp::{encode_command, encode_command_inline_after, EvalShaCommand, EVALSHA_HEAD};

/// How a script call goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptCall {
    /// `EVALSHA sha …`: the normal form, the script itself is not sent.
    BySha,
    /// `EVAL source …`: after `NOSCRIPT`, or where a lost script cache must not stop the call
    /// (background cleanup). It also puts the script back in the server's cache.
    WithSource,
}

/// A Lua script with its SHA-1 computed locally, so requests go out as `EVALSHA` from the first
/// one on. Every key the script touches must be passed in `KEYS` (Dragonfly rejects the others).
#[derive(Debug, Clone)]
pub struct Script {
    source: &'static str,
    sha: [u8; 40],
    evalsha: EvalShaCommand,
    /// `EVAL` and the source, as the first two bulk strings of a call with the source: a
    /// failed acquire's clean-up copies it whole rather than encoding it piece by piece (about
    /// 150 instructions less a clean-up, callgrind, 2026-12-02).
    eval_head: Box<[u8]>,
}

impl Script {
    /// Prepares `source`.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = dragonlock::conn::Script::new("return 1");
    /// assert_eq!(s.sha(), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    /// ```
    pub fn new(source: &'static str) -> Script {
        let hex = sha1_smol::Sha1::from(source).digest().to_string();
        let mut sha = [0u8; 40];
        sha.copy_from_slice(hex.as_bytes());
        let eval_head = format!("$4\r\nEVAL\r\n${}\r\n{source}\r\n", source.len());
        Script {
            source,
            evalsha: EvalShaCommand::new(&sha),
            sha,
            eval_head: eval_head.into_bytes().into_boxed_slice(),
        }
    }

    /// The Lua source.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// The hex SHA-1, as `SCRIPT LOAD` returns it.
    pub fn sha(&self) -> &str {
        std::str::from_utf8(&self.sha).expect("hex")
    }

    /// The prepared `EVALSHA` command.
    pub fn evalsha(&self) -> &EvalShaCommand {
        &self.evalsha
    }

    /// A call by `EVAL` with the source, as [`encode`](Script::encode) writes it, into `dst`'s
    /// inline room: false, with `dst` as it was, when it does not fit there (at most 15 keys
    /// and arguments).
    pub(crate) fn encode_with_source_inline<const N: usize, K: AsRef<[u8]>>(
        &self,
        dst: &mut SmallVec<[u8; N]>,
        keys: &[K],
        args: &[&[u8]],
    ) -> bool {
        let mut numkeys = itoa::Buffer::new();
        let mut parts: SmallVec<[&[u8]; 16]> = SmallVec::new();
        if keys.len() + args.len() + 1 > parts.inline_size() {
            return false;
        }
        parts.push(numkeys.format(keys.len()).as_bytes());
        parts.extend(keys.iter().map(|k| k.as_ref()));
        parts.extend_from_slice(args);
        encode_command_inline_after(dst, &self.eval_head, 2, &parts)
    }

    /// Writes a call of this script with `keys` and `args`, in the form `call` says.
    ///
    /// # Examples
    ///
    /// ```
    /// use dragonlock::conn::{Script, ScriptCall};
    /// let s = Script::new("return 1");
    /// let mut buf = bytes::BytesMut::new();
    /// s.encode(&mut buf, ScriptCall::WithSource, &[b"k"], &[b"v"]);
    /// assert!(buf.starts_with(b"*5\r\n$4\r\nEVAL\r\n$8\r\nreturn 1\r\n$1\r\n1\r\n"));
    /// ```
    pub fn encode<K: AsRef<[u8]>, A: AsRef<[u8]>>(
        &self,
        buf: &mut BytesMut,
        call: ScriptCall,
        keys: &[K],
        args: &[A],
    ) {
        match call {
            ScriptCall::BySha => self.evalsha.encode(buf, keys, args),
            ScriptCall::WithSource => {
                let mut numkeys = itoa::Buffer::new();
                let numkeys = numkeys.format(keys.len()).as_bytes();
                let mut parts: SmallVec<[&[u8]; 16]> = SmallVec::new();
                parts.extend([&b"EVAL"[..], self.source.as_bytes(), numkeys]);
                parts.extend(keys.iter().map(|k| k.as_ref()));
                parts.extend(args.iter().map(|a| a.as_ref()));
                encode_command(buf, &parts);
            }
        }
    }
}

/// Writes `request`, an `EVALSHA sha …` call, into `dst` as the same call by `EVAL` with
/// `source`, the script's source (for a node whose cache lost the script); false, and nothing
/// written, when it is not such a call.
#[cold]
#[inline(never)]
pub(crate) fn write_with_source(dst: &mut BytesMut, request: &[u8], source: &str) -> bool {
    // `*N\r\n`, `EVALSHA_HEAD`, the SHA-1, `\r\n`, and the rest, as `EvalShaCommand` writes it.
    let Some(end) = request.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let (count, rest) = request.split_at(end + 1);
    let Some(rest) = rest.strip_prefix(&EVALSHA_HEAD[..]) else {
        return false;
    };
    let Some(rest) = rest.get(40..).and_then(|r| r.strip_prefix(&b"\r\n"[..])) else {
        return false;
    };
    let source = source.as_bytes();
    let mut len = itoa::Buffer::new();
    dst.extend_from_slice(count);
    dst.extend_from_slice(b"$4\r\nEVAL\r\n$");
    dst.extend_from_slice(len.format(source.len()).as_bytes());
    dst.extend_from_slice(b"\r\n");
    dst.extend_from_slice(source);
    dst.extend_from_slice(b"\r\n");
    dst.extend_from_slice(rest);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_evalsha_call_is_rewritten_as_the_same_call_with_the_source() {
        let script = Script::new("return 1");
        let (keys, args) = (&[b"key"], &[&b"token"[..], b"30"]);
        let mut by_sha = BytesMut::new();
        script.encode(&mut by_sha, ScriptCall::BySha, keys, args);
        let mut want = BytesMut::new();
        script.encode(&mut want, ScriptCall::WithSource, keys, args);
        let mut got = BytesMut::new();
        assert!(write_with_source(&mut got, &by_sha, script.source()));
        assert_eq!(got, want);
        let mut inline = SmallVec::<[u8; 320]>::new();
        assert!(script.encode_with_source_inline(&mut inline, keys, args));
        assert_eq!(&inline[..], &want[..]);
        // Not an `EVALSHA`: nothing written.
        assert!(!write_with_source(&mut got, &want, script.source()));
        assert!(!write_with_source(
            &mut got,
            b"*1\r\n$4\r\nPING\r\n",
            script.source()
        ));
        assert!(!write_with_source(&mut got, &by_sha[..30], script.source()));
        assert_eq!(got, want);
    }
}
