//! Lua scripts, identified by the SHA-1 the server will give them.

use crate::resp::EvalShaCommand;

/// A Lua script with its SHA-1 computed locally, so requests go out as `EVALSHA` from the first
/// one on. Every key the script touches must be passed in `KEYS` (Dragonfly rejects the others).
#[derive(Debug, Clone)]
pub struct Script {
    source: &'static str,
    sha: [u8; 40],
    evalsha: EvalShaCommand,
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
        Script {
            source,
            evalsha: EvalShaCommand::new(&sha),
            sha,
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
}
