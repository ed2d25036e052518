//! Fencing tokens that increase across N independent nodes.
//!
//! A fenced acquire is a normal acquire plus one round trip. Each node keeps, next to each lock
//! key, a counter key for the resource (the lock key with [`FENCE_SUFFIX`]), which only ever
//! rises and has no ttl: one small key per fenced resource stays on every node for good, so
//! fence long-lived resources, not one name per job.
//!
//! ```text
//!  1. read:  on every node, one script: SET lock token NX PX ttl (every key of a set, or none),
//!            and answer each key's counter, granted or not: live (with the number), missing,
//!            or stale (written by another server process). Nothing is created.
//!  2. pick:  per key: a SET quorum, and live counters from a quorum of nodes:
//!            token = max(those counters) + 1, at least the floor.
//!            No node anywhere has a counter, live or stale (all N answered "missing"): a new
//!            resource, token = floor. Otherwise: FenceUnavailable.
//!  3. write: on every node, one script: raise each live counter to its key's token; create a
//!            missing or stale one only where the lock key holds our token and the node's
//!            grant reached us in time. The write counts where, for every key, the lock key
//!            holds our token and the live counter is at least the token.
//!            A quorum of counting writes inside the validity: granted. Else released.
//! ```
//!
//! A multi-resource lock ([`acquire_many`](super::Redlock::acquire_many)) gets one token per
//! resource ([`Lock::fencing_token_of`](super::Lock::fencing_token_of)): each resource keeps its
//! own counter, whether it is taken alone or in any set, and each protected resource checks its
//! own token against its own highest. One token per set was the alternative (one number for
//! the caller, the largest of every member's counters plus one, written to every member); it
//! would make one resource's tokens jump with the grants of the others in its sets, for no
//! gain in safety, and a store that guards several resources would still need to know which of
//! them a write touches. The read answers an array for a set (one integer per key); a single
//! resource keeps its one-integer reply, which the decoder builds without allocating.
//!
//! # The guarantee
//!
//! If grant A of resource `r` (alone or in a set) ends (release, expiry or loss) before grant B
//! of `r`'s acquire begins, then `token_r(A) < token_r(B)`, for every pair of grants of one
//! resource, under Redlock's usual assumptions (clocks that drift by at most the drift factor)
//! and with the delayed-restart rule on: a restarted node does not vote for
//! [`restart_delay`](super::RedlockOptions::restart_delay), which must be at least **twice** the
//! longest ttl a fenced lock is taken or extended with (the plain lock needs one ttl; the second
//! covers an acquire still in flight when the restart happened). That holds whatever the
//! nodes' persistence, on nodes that tell their server process apart (see "Snapshots").
//!
//! Proof sketch, for one resource `r`. Call `W(A)` the quorum of nodes whose write counted for
//! A: on each, `r`'s lock key held A's random token and `r`'s live counter was at least
//! `token_r(A)` (for a set, the write counts only where that is so for every key, so `W(A)` is
//! such a quorum for each of its resources). Invariant: once A is granted, fewer than a quorum
//! of nodes hold a live counter for `r` below `token_r(A)` (nodes with no counter, or a stale
//! one, do not count). At A's grant it holds: every node in `W(A)` has a live counter of at least
//! `token_r(A)`, and the rest are fewer than a quorum. Live counters only rise, except that a
//! restart removes one or makes it stale, which cannot add a low live counter. The only step
//! that can add a live counter below `token_r(A)` is a write that creates (or replaces a stale)
//! counter with a smaller token X. Such a write comes from an acquire, of `r` alone or of a set
//! with `r`, whose SET of `r`'s lock key was granted on that node inside its own validity. If the
//! node is in `W(A)`, its counter stopped being live by a restart after A's write, and it granted
//! that SET only `restart_delay` after the restart: the acquire must have begun after A was
//! granted (its validity is shorter than `restart_delay` minus a ttl), so all its reads came
//! after A's grant, saw a quorum of live counters for `r`, and by the invariant one of them is at
//! least `token_r(A)`: X is larger. If the node is not in `W(A)`, it was already among the nodes
//! that may be low, which stay fewer than a quorum. So the invariant holds; and B, whose reads
//! all come after A ended, takes the maximum over a quorum of live counters for `r`, which
//! includes one of at least `token_r(A)`. Other resources' keys play no part: the argument is
//! the single-resource one, key by key.
//!
//! # Snapshots
//!
//! A node that restarts from an **older snapshot** (Redis's default `save` points, AOF with
//! `appendfsync everysec`, after a crash) brings its counters back lower instead of losing them:
//! a counter below `token_r(A)` on a node of `W(A)`, which the proof does not allow (found by
//! review with three real servers: token 6 after token 10). So each counter is tagged with the
//! identity of the server process that wrote it (`17@<run_id>`: Redis's `run_id`, new at every
//! start), the client passes each node's identity to every script, and a counter tagged by
//! another process is **stale**: the scripts treat it as missing (not used for the token,
//! replaced only by a write that may create one), and the proof's restart case covers it as it
//! covers a counter lost by a restart without persistence. Persistence then no longer matters
//! to the guarantee; the restart rule does, on every node, since even a counter kept whole
//! across a restart is set aside. Two more rules keep the tags honest:
//! - A stale counter is not "missing" for the new-resource rule: a resource whose every counter
//!   is stale (every node restored, or restarted with persistence) is refused with
//!   `FenceUnavailable` until reseeded, never restarted at the floor.
//!   [`Redlock::reseed_fence`](super::Redlock::reseed_fence) takes the stale values into
//!   account as lower bounds.
//! - A reply counts only if it came from the process the tag names: each node's connect count
//!   is read before its identity, and a node that reconnected before its reply was checked
//!   counts as failed (its SET may have run: it gets the background release). Without this, a
//!   request tagged with the old process's identity could reach the restarted process, which
//!   restored counters with that very tag, and read them as live.
//!
//! Untagged counters (written before tags existed, or on a node without an identity) are live
//! for everyone, as before; the first write on a node with an identity tags them.
//!
//! **Dragonfly** reports no `run_id`. The start time the connection derives from its uptime
//! (whole seconds, on the client's clock) is neither exact enough to tell two processes apart
//! in a script nor the same across clients, so Dragonfly nodes get no tag, and there a restored
//! snapshot can still make tokens go back. Fence on Dragonfly only with snapshots off
//! (`--dbfilename ''`, no `--snapshot_cron`); `dragonlock ping` warns that it cannot read
//! Dragonfly's persistence.
//!
//! # What breaks it
//!
//! A restart rule shorter than twice the ttl; clocks outside the drift bound (a node's wall
//! clock stepped forward also shortens the uptime the restart rule reads); a restored snapshot
//! on a node without an identity (Dragonfly), or older data loaded into a running process
//! (`DEBUG RELOAD` of a copied file, `RESTORE` of a dumped counter: the same `run_id`, an older
//! value), or a pre-tag counter restored from a snapshot taken before the upgrade; a failover to
//! a replica, or any other server answering at a node's address (it may have been up long
//! enough to vote at once; plain Redlock has the same hazard, and `dragonlock ping` warns about
//! replicas); and the loss
//! of the counters of every node that had one (every node wiped at once without persistence,
//! or a majority wiped while the others never had a counter for the resource): that looks
//! exactly like a resource nobody fenced before, and starts again at the floor. Set a floor
//! ([`RedlockOptions::fence_floor`](super::RedlockOptions::fence_floor)) or reseed
//! ([`Redlock::reseed_fence`](super::Redlock::reseed_fence)) from the protected store's highest
//! token after such a loss.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use smallvec::SmallVec;
use tokio::time::Instant;

use super::error::{LockError, LockErrorKind, NodeResult, NodeResults};
use super::quorum::{Decision, Vote};
use super::{Key, Keys, Lock, Redlock};
use crate::conn::{Connection, ReplyFuture, RestartMarker, ScriptCall, ServerInfo};
use crate::error::{Error, ErrorKind};
use crate::resp::Frame;

/// Appended to a lock key to name its counter key. Long and specific so that no lock key a user
/// chooses is also some other resource's counter.
pub const FENCE_SUFFIX: &str = ":dragonlock-fence";

/// The largest token: Lua's numbers are doubles, exact up to 2^53, and the read scripts answer
/// the counter as a number. At a million grants a second that is 285 years of one resource.
pub const MAX_FENCING_TOKEN: u64 = (1 << 53) - 1;

/// The longest server identity a counter is tagged with (Redis's `run_id` has 40 characters).
/// A longer one, or one with other characters than letters and digits, is not used: the node is
/// treated as one without an identity.
pub const MAX_FENCE_TAG: usize = 64;

/// What the single-key read script answers, for a granted `SET`, when the counter is stale
/// (tagged by another server process); `-STALE_READ` for a refused one. 2^54: outside the
/// range of live counters (`0..=MAX_FENCING_TOKEN`, and `-(c + 1)`), and exact in a double.
const STALE_READ: i64 = 1 << 54;

// A counter is a canonical decimal between 1 and `MAX_FENCING_TOKEN` (no sign, no leading
// zero, no spaces), followed, on nodes that have an identity, by `@` and the identity of the
// server process that wrote it (`17@3f2a…`, Redis's `run_id`). Each script begins with the same
// `cnt` parser: anything else in the key (written by someone else, or by hand) is refused with
// an error reply before anything is set, rather than read as a number by one script and
// compared as a string by another (`"007"` is 7 to `tonumber` and smaller than `"8"` to the
// comparison). `cnt` answers the number (as text) and whether it is live: untagged, or tagged
// with the identity the client passed for this node. A counter tagged by another process came
// back from a snapshot or across a restart and may be older than the counter that process
// last had: it is stale, and counts as missing (see "Snapshots" in the module docs).
macro_rules! fence_lua_prelude {
    () => {
        concat!(
            "local function cnt(v, tag) ",
            "local c, t = string.match(v, '^([1-9][0-9]*)@(%w+)$') ",
            "if not c then c = string.match(v, '^([1-9][0-9]*)$') end ",
            "if not c or #c > 16 or tonumber(c) > 9007199254740991 then return nil end ",
            "return c, t == nil or t == tag end ",
        )
    };
}

// For the scripts that write counters: the canonical comparison, and the tagged value.
macro_rules! fence_lua_write_prelude {
    () => {
        concat!(
            "local function below(c, v) return #c < #v or (#c == #v and c < v) end ",
            "local function tagged(v, tag) if tag == '' then return v end return v .. '@' .. tag end ",
        )
    };
}

/// Step 1 on one node, for one key: `SET lock token NX PX ttl` (`KEYS[1]`, `ARGV[1..2]`), and
/// the counter (`KEYS[2]`) as seen with this node's identity `ARGV[3]`. One integer, so the
/// reply takes the decoder's allocation-free path: the counter `c` (0 when missing,
/// `STALE_READ` when stale) when the SET was granted, `-(c + 1)` (`-STALE_READ`) when it was
/// refused. A malformed counter is an error, and nothing is set.
pub const FENCE_ACQUIRE: &str = concat!(
    fence_lua_prelude!(),
    "local v = redis.call('get', KEYS[2]) local n = 0 local stale = false ",
    "if v then local c, live = cnt(v, ARGV[3]) ",
    "if not c then return redis.error_reply('FENCE malformed fencing counter') end ",
    "if live then n = tonumber(c) else stale = true end end ",
    "local granted = redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) ",
    "if stale then if granted then return 18014398509481984 end return -18014398509481984 end ",
    "if granted then return n end return -n - 1"
);

/// Step 1 on one node, for several keys: the lock keys `KEYS[1..n]`, then their counters
/// `KEYS[n+1..2n]`; `ARGV` as for [`FENCE_ACQUIRE`]. All lock keys are set, or none (as the
/// plain multi-key acquire). Answers `{granted (1 or 0), code_1, …, code_n}`, each code the
/// counter, 0 when missing, -1 when stale. A malformed counter is an error, and nothing is set.
pub const FENCE_ACQUIRE_MANY: &str = concat!(
    fence_lua_prelude!(),
    "local n = #KEYS / 2 local out = {0} ",
    "for i = 1, n do local v = redis.call('get', KEYS[n + i]) local code = 0 ",
    "if v then local c, live = cnt(v, ARGV[3]) ",
    "if not c then return redis.error_reply('FENCE malformed fencing counter') end ",
    "if live then code = tonumber(c) else code = -1 end end ",
    "out[i + 1] = code end ",
    "for i = 1, n do if redis.call('exists', KEYS[i]) == 1 then return out end end ",
    "for i = 1, n do redis.call('set', KEYS[i], ARGV[1], 'PX', ARGV[2]) end ",
    "out[1] = 1 return out"
);

/// Step 3 on one node, for one key or several: lock keys `KEYS[1..n]`, counters
/// `KEYS[n+1..2n]`, our token `ARGV[1]`, `ARGV[2]` `1` when the node's SET grant reached us
/// inside the validity, the node's identity `ARGV[3]`, and each key's fencing token
/// `ARGV[4..3+n]`. Raises each live counter to its token (compared as decimal strings of
/// canonical form, so no precision is lost). A missing or stale counter is (re)created only
/// where the lock key holds our token and `ARGV[2]` is `1` (a late grant must not create a
/// counter; the proof needs it). Answers 1 when, for every key, the lock key holds our token and
/// the counter is live and at least the token: only those writes count. Every counter is
/// parsed before anything is written, so a malformed one leaves the node untouched.
pub const FENCE_WRITE: &str = concat!(
    fence_lua_prelude!(),
    fence_lua_write_prelude!(),
    "local n = #KEYS / 2 local tag = ARGV[3] local cs, live = {}, {} ",
    "for i = 1, n do local v = redis.call('get', KEYS[n + i]) ",
    "if v then cs[i], live[i] = cnt(v, tag) ",
    "if not cs[i] then return redis.error_reply('FENCE malformed fencing counter') end end end ",
    "local all = 1 ",
    "for i = 1, n do local mine = redis.call('get', KEYS[i]) == ARGV[1] local t = ARGV[3 + i] ",
    "if live[i] then if below(cs[i], t) then redis.call('set', KEYS[n + i], tagged(t, tag)) end ",
    "elseif mine and ARGV[2] == '1' then redis.call('set', KEYS[n + i], tagged(t, tag)) live[i] = true end ",
    "if not (mine and live[i]) then all = 0 end end ",
    "return all"
);

/// The operator's reseed: raise the counter `KEYS[1]` to `ARGV[1]`, tagged with the node's
/// identity `ARGV[2]`, creating it when missing. A stale counter's value is kept when it is
/// higher (it is a lower bound of what was lost), under the new tag; a malformed one is
/// replaced. Answers the counter as it is afterwards, so the client can raise every node to the
/// largest it saw.
pub const FENCE_RESEED: &str = concat!(
    fence_lua_prelude!(),
    fence_lua_write_prelude!(),
    "local v = ARGV[1] local cur = redis.call('get', KEYS[1]) ",
    "if cur then local c = cnt(cur, ARGV[2]) if c and not below(c, v) then v = c end end ",
    "redis.call('set', KEYS[1], tagged(v, ARGV[2])) ",
    "return tonumber(v)"
);

/// Two fencing protocols that look right and are not, for the safety checker's negative
/// controls (set only through the `testing` feature). Never use them for anything else.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FenceProtocol {
    /// The protocol above.
    #[default]
    Proven,
    /// The token is the largest `INCR` of the fence counter on the nodes that granted the SET,
    /// decided at the SET quorum, with no write step. Single resources only.
    NaiveIncr,
    /// Steps 1 and 2 as above, but step 3 (the write) skipped.
    SkipWrite,
}

/// The naive protocol's step: `INCR` the counter where the SET was granted (-1 where refused).
const NAIVE_ACQUIRE: &str = "if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then \
return redis.call('incr', KEYS[2]) end return -1";

/// One counter, as a node's read script saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    /// No counter for the resource on the node.
    Missing,
    /// A counter written by another server process (restored from a snapshot, or kept across a
    /// restart): not used, since it may be older than the one that process last had. It still
    /// says the resource is not new.
    Stale,
    /// A counter this server process wrote (or an untagged one).
    Live(u64),
}

impl Counter {
    fn live(self) -> Option<u64> {
        match self {
            Counter::Live(c) => Some(c),
            _ => None,
        }
    }
}

/// What one node said in step 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeRead {
    pub granted: bool,
    /// One per key, in key order. Inline for one key.
    pub counters: SmallVec<[Counter; 1]>,
}

impl NodeRead {
    /// The single-key read script's integer.
    fn from_reply(n: i64) -> NodeRead {
        let (granted, counter) = match n {
            STALE_READ => (true, Counter::Stale),
            n if n == -STALE_READ => (false, Counter::Stale),
            0 => (true, Counter::Missing),
            -1 => (false, Counter::Missing),
            n if n > 0 => (true, Counter::Live(n as u64)),
            n => (false, Counter::Live((-(n + 1)) as u64)),
        };
        NodeRead {
            granted,
            counters: smallvec::smallvec![counter],
        }
    }

    /// The multi-key read script's array, for `keys` keys; `None` for any other shape.
    fn from_array(items: &[Frame], keys: usize) -> Option<NodeRead> {
        let (flag, codes) = items.split_first()?;
        if codes.len() != keys {
            return None;
        }
        let granted = match flag {
            Frame::Integer(1) => true,
            Frame::Integer(0) => false,
            _ => return None,
        };
        let counters = codes
            .iter()
            .map(|c| match c {
                Frame::Integer(0) => Some(Counter::Missing),
                Frame::Integer(-1) => Some(Counter::Stale),
                Frame::Integer(n) if *n > 0 => Some(Counter::Live(*n as u64)),
                _ => None,
            })
            .collect::<Option<SmallVec<[Counter; 1]>>>()?;
        Some(NodeRead { granted, counters })
    }
}

/// Why no token could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoToken {
    /// Some nodes have counters (live or stale), but fewer than a quorum have live ones.
    TooFewCounters,
    /// No node that answered has a counter, but not every node answered: a new resource, or
    /// one whose counters live only on the silent nodes.
    NotEveryNodeAnswered,
    /// The next token would pass [`MAX_FENCING_TOKEN`].
    Overflow,
}

/// Step 2 for the key at `key` (its position in the lock's keys): the token, from what the
/// nodes answered (`None`: no answer from that node).
pub(crate) fn pick_token(
    reads: &[Option<NodeRead>],
    key: usize,
    quorum: usize,
    floor: u64,
) -> Result<u64, NoToken> {
    let counters = || reads.iter().flatten().map(|r| r.counters[key]);
    let live = counters().filter_map(Counter::live).count();
    let base = if live >= quorum {
        counters().filter_map(Counter::live).max().unwrap_or(0)
    } else if live > 0 || counters().any(|c| c == Counter::Stale) {
        return Err(NoToken::TooFewCounters);
    } else if reads.iter().all(Option::is_some) {
        0 // a resource no node has a counter for
    } else {
        return Err(NoToken::NotEveryNodeAnswered);
    };
    let token = base.checked_add(1).ok_or(NoToken::Overflow)?.max(floor);
    if token > MAX_FENCING_TOKEN {
        return Err(NoToken::Overflow);
    }
    Ok(token)
}

/// The counter key of a lock key.
pub(crate) fn fence_key(lock_key: &[u8]) -> Key {
    let mut k = Key::from_slice(lock_key);
    k.extend_from_slice(FENCE_SUFFIX.as_bytes());
    k
}

/// The identity a node's counters are tagged with: Redis's `run_id`, new at every start of the
/// server process. Empty for a node without one (Dragonfly: its start time, derived from an
/// uptime in whole seconds and the client's clock, is not exact enough to tell two processes
/// apart in a script, nor equal across clients).
pub(crate) fn node_tag(info: Option<&ServerInfo>) -> &[u8] {
    match info.and_then(|i| i.restart_marker.as_ref()) {
        Some(RestartMarker::RunId(id))
            if !id.is_empty()
                && id.len() <= MAX_FENCE_TAG
                && id.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            id.as_bytes()
        }
        _ => b"",
    }
}

/// Each node's identity, with the connect count it belongs to: read before anything is sent.
/// A reply counts only if the node's connect count is still the same after it came, which
/// proves that the request went to the process the identity describes (the count and the
/// identity change together, under the connection's lock, at each handshake; a request is
/// sent only on a connection that is up).
pub(crate) struct NodeIdentities {
    seen: SmallVec<[(u64, Option<Arc<ServerInfo>>); 7]>,
}

impl NodeIdentities {
    pub(crate) fn read(nodes: &[Connection]) -> NodeIdentities {
        NodeIdentities {
            // The count first: an identity read after it belongs to that connect or a later one,
            // and a later one changes the count.
            seen: nodes
                .iter()
                .map(|n| (n.connects(), n.server_info()))
                .collect(),
        }
    }

    pub(crate) fn tag(&self, i: usize) -> &[u8] {
        node_tag(self.seen[i].1.as_deref())
    }

    /// True when node `i` has not reconnected since the identities were read.
    pub(crate) fn unchanged(&self, nodes: &[Connection], i: usize) -> bool {
        nodes[i].connects() == self.seen[i].0
    }
}

/// Marks as failed every node whose reply counted but came, as far as we can prove, from a
/// server process other than the one whose identity tagged the request.
fn drop_reconnected(results: &mut NodeResults, ids: &NodeIdentities, nodes: &[Connection]) {
    for (i, r) in results.iter_mut().enumerate() {
        if matches!(r, NodeResult::Granted | NodeResult::Refused) && !ids.unchanged(nodes, i) {
            *r = NodeResult::Failed(Error::new(ErrorKind::ConnectionLost));
        }
    }
}

impl Redlock {
    /// One fenced attempt (steps 1 to 3), for one key or several; its outcome counted, and a
    /// failure traced, as [`attempt`](Redlock::attempt)'s.
    ///
    /// Its future is a branch of every `try_acquire`'s, which is as large as its largest
    /// branch and is copied whole at each `.await`, so it is kept small: an `async` block
    /// (an `async fn` holds its arguments twice: as arguments, and as the bindings its body
    /// moves them into), and steps 1 and 2 in a scope of their own, so that their state (each
    /// node's reply future, the reads and results, the timer) is not kept beside step 3's.
    /// Measured with `-Zprint-type-sizes`: this future 2,712 → 1,656 bytes, and with it (called
    /// directly, not through `attempt`) `try_acquire`'s 3,048 → 1,848, which is now the
    /// unfenced path's size.
    // Not an `async fn`: its future would hold the arguments twice (see above).
    #[allow(clippy::manual_async_fn)]
    pub(super) fn attempt_fenced(
        &self,
        keys: Keys,
        ttl: std::time::Duration,
        cut: Option<Instant>,
    ) -> impl std::future::Future<Output = Result<Lock, LockError>> + '_ {
        async move {
            let suffix = FENCE_SUFFIX.as_bytes();
            if keys.all().iter().any(|k| k.ends_with(suffix)) {
                return Err(LockError::invalid(
                    "a fenced resource's key may not end with the fencing counter's suffix",
                ));
            }
            // One labelled block, not an inner `async fn` (a layer would keep the arguments
            // once more): its value is the attempt's outcome, counted here.
            let outcome = 'attempt: {
                let protocol = self.inner.options.fence_protocol;
                let naive = protocol == FenceProtocol::NaiveIncr;
                let multi = keys.is_multi();
                if naive && multi {
                    break 'attempt Err(LockError::invalid(
                        "the naive negative control covers single resources",
                    ));
                }
                let token =
                    super::token::new_token_with(self.inner.options.token_prefix.as_bytes());
                let nodes = &self.inner.nodes;
                let quorum = self.inner.quorum;
                let s = super::scripts::scripts();
                let n_keys = keys.all().len();
                let fences: SmallVec<[Key; 1]> = keys.all().iter().map(|k| fence_key(k)).collect();
                // The lock keys, then their counters.
                let all_keys: SmallVec<[&[u8]; 2]> = keys
                    .all()
                    .iter()
                    .chain(fences.iter())
                    .map(|k| &k[..])
                    .collect();
                let ids = NodeIdentities::read(nodes);
                let start = Instant::now();
                let valid_until = Redlock::valid_until(start, ttl, self.drift(ttl));
                // The acquire budget's end cuts the attempt where it comes first.
                let cut = cut.filter(|&c| c < valid_until);
                let deadline = cut.unwrap_or(valid_until);

                // Steps 1 and 2 in a scope of their own (see above): the tokens, and which nodes'
                // grants came in time, are all that step 3 needs of them.
                let (tokens, in_time) = {
                    let mut ms = itoa::Buffer::new();
                    let ms = ms.format(ttl.as_millis() as u64).as_bytes();
                    // Made only for the negative control: a Script computes its SHA-1 and allocates.
                    let naive_script = naive.then(|| crate::conn::Script::new(NAIVE_ACQUIRE));
                    let step1 = match &naive_script {
                        Some(script) => script,
                        None if multi => &s.fence_acquire_many,
                        None => &s.fence_acquire,
                    };
                    let call = if naive {
                        ScriptCall::WithSource
                    } else {
                        ScriptCall::BySha
                    };
                    let mut cleanup = super::CleanupOnDrop {
                        redlock: self,
                        keys: &keys,
                        token: &token,
                        armed: true,
                    };

                    // Step 1: every node, then wait for a SET quorum and a quorum of live counters for
                    // every key (or every answer, or the deadline, or a SET quorum that became impossible).
                    let mut pending: SmallVec<[Option<ReplyFuture<'_>>; 7]> = SmallVec::new();
                    // Until a node answers it was not awaited; at the deadline the silent ones are NoReply.
                    let mut results: NodeResults =
                        SmallVec::from_elem(NodeResult::NotAwaited, nodes.len());
                    let mut reads: SmallVec<[Option<NodeRead>; 7]> =
                        SmallVec::from_elem(None, nodes.len());
                    let mut retried: SmallVec<[bool; 7]> = SmallVec::from_elem(false, nodes.len());
                    for (i, node) in nodes.iter().enumerate() {
                        let args = [&token[..], ms, ids.tag(i)];
                        let encode =
                            |buf: &mut bytes::BytesMut| step1.encode(buf, call, &all_keys, &args);
                        let sent = node.send_acquire(
                            self.inner.options.restart_delay,
                            crate::conn::now_us(),
                            encode,
                        );
                        match sent {
                            Ok(f) => pending.push(Some(f)),
                            Err(e) => {
                                pending.push(None);
                                results[i] = NodeResult::Failed(e);
                            }
                        }
                    }
                    let sleep = tokio::time::sleep_until(deadline);
                    tokio::pin!(sleep);
                    let decided = poll_fn(|cx| {
                        for i in 0..pending.len() {
                            let Some(fut) = pending[i].as_mut() else {
                                continue;
                            };
                            let Poll::Ready(reply) = Pin::new(fut).poll(cx) else {
                                continue;
                            };
                            pending[i] = None;
                            let read = match reply.map(Frame::without_attributes) {
                                Ok(Frame::Integer(n)) if !multi => Ok(NodeRead::from_reply(n)),
                                Ok(Frame::Array(items)) if multi => {
                                    NodeRead::from_array(&items, n_keys)
                                        .ok_or_else(|| Error::new(ErrorKind::UnexpectedReply))
                                }
                                Ok(Frame::Error(e)) if e.has_code("NOSCRIPT") && !retried[i] => {
                                    retried[i] = true;
                                    let args = [&token[..], ms, ids.tag(i)];
                                    let resend = nodes[i].send(|buf| {
                                        step1.encode(buf, ScriptCall::WithSource, &all_keys, &args)
                                    });
                                    match resend {
                                        Ok(mut f) => {
                                            if Pin::new(&mut f).poll(cx).is_pending() {
                                                pending[i] = Some(f);
                                                continue;
                                            }
                                            // Answered at once: only an error can be that fast.
                                            Err(Error::new(ErrorKind::UnexpectedReply))
                                        }
                                        Err(e) => Err(e),
                                    }
                                }
                                Ok(Frame::Error(e)) => Err(Error::new(ErrorKind::Server(e))),
                                Ok(_) => Err(Error::new(ErrorKind::UnexpectedReply)),
                                Err(e) => Err(e),
                            };
                            match read {
                                Ok(read) => {
                                    results[i] = if read.granted {
                                        NodeResult::Granted
                                    } else {
                                        NodeResult::Refused
                                    };
                                    reads[i] = Some(read);
                                }
                                Err(e) => results[i] = NodeResult::Failed(e),
                            }
                            let granted = reads.iter().flatten().filter(|r| r.granted).count();
                            // The key with the fewest live counters so far decides.
                            let counted = (0..n_keys)
                                .map(|k| {
                                    reads
                                        .iter()
                                        .flatten()
                                        .filter(|r| r.counters[k].live().is_some())
                                        .count()
                                })
                                .min()
                                .unwrap_or(0);
                            let open = pending.iter().filter(|p| p.is_some()).count();
                            if granted >= quorum && (naive || counted >= quorum || open == 0) {
                                return Poll::Ready(Decision::Quorum(Instant::now()));
                            }
                            if granted + open < quorum {
                                return Poll::Ready(Decision::Impossible);
                            }
                        }
                        if sleep.as_mut().poll(cx).is_ready() {
                            for (pending, result) in pending.iter().zip(results.iter_mut()) {
                                if pending.is_some() {
                                    *result = NodeResult::NoReply;
                                }
                            }
                            return Poll::Ready(Decision::Deadline);
                        }
                        Poll::Pending
                    })
                    .await;
                    drop(pending);
                    cleanup.armed = false;
                    drop(cleanup);

                    // A read that came from a process other than the one its tag named is not used.
                    drop_reconnected(&mut results, &ids, nodes);
                    for (read, result) in reads.iter_mut().zip(&results) {
                        if matches!(result, NodeResult::Failed(_)) {
                            *read = None;
                        }
                    }
                    let might_hold = |i: usize| match &results[i] {
                        NodeResult::Granted | NodeResult::NoReply | NodeResult::NotAwaited => true,
                        NodeResult::Failed(e) => e.maybe_executed(),
                        _ => false,
                    };
                    let refuse = |kind, results: NodeResults| {
                        self.release_in_background(&keys, &token, false, might_hold);
                        Err(self.lock_error(kind, results, &keys))
                    };
                    let granted = reads.iter().flatten().filter(|r| r.granted).count();
                    match decided {
                        Decision::Quorum(_) if granted >= quorum => {}
                        // A quorum until a node turned out to have reconnected in the middle.
                        Decision::Quorum(_) => {
                            let kind = self.classify_failure(&results, false);
                            break 'attempt refuse(kind, results.clone());
                        }
                        // Cut by the acquire budget with the `SET`s' quorum: what was missing
                        // is a silent node's counter (the caller makes it `Timeout`, whose last
                        // attempt this is; it said "no quorum", found by a fresh user's review).
                        Decision::Deadline if cut.is_some() && granted >= quorum => {
                            let e = refuse(LockErrorKind::FenceUnavailable, results.clone());
                            break 'attempt e.map_err(|e| {
                    e.cut_short().because("a node stayed silent until the acquire's time budget ran out, and no node that answered has a counter: a new resource needs every node to answer, or a reseed_fence")
                });
                        }
                        // Cut by the acquire budget: the verdict so far (the caller makes it `Timeout`,
                        // read with the last decided attempt's verdict).
                        Decision::Deadline if cut.is_some() => {
                            break 'attempt refuse(
                                self.classify_failure(&results, false),
                                results.clone(),
                            )
                            .map_err(LockError::cut_short)
                        }
                        // The `SET`s had their quorum, and the counters were what was missing:
                        // a new resource, with a node silent until the validity ran out (found
                        // by a user's review: reported as `Expired`, which blames the time).
                        Decision::Deadline if granted >= quorum => {
                            let e = refuse(LockErrorKind::FenceUnavailable, results.clone());
                            break 'attempt e.map_err(|e| {
                    e.because("a node stayed silent until the lock's validity ran out, and no node that answered has a counter: a new resource needs every node to answer, or a reseed_fence")
                });
                        }
                        // Silent nodes count as failed, as in an unfenced attempt.
                        Decision::Deadline => {
                            let kind = self.classify_failure(&results, true);
                            break 'attempt refuse(kind, results.clone());
                        }
                        Decision::Impossible | Decision::AllDone => {
                            let kind = self.classify_failure(&results, false);
                            break 'attempt refuse(kind, results.clone());
                        }
                    }
                    // The token of each key, or the first key that has none and why.
                    let picked: Result<SmallVec<[u64; 1]>, (usize, NoToken)> = if naive {
                        let granted = reads.iter().flatten().filter(|r| r.granted);
                        let max = granted.filter_map(|r| r.counters[0].live()).max();
                        Ok(smallvec::smallvec![max.unwrap_or(1)])
                    } else {
                        let floor = self.inner.options.fence_floor;
                        (0..n_keys)
                            .map(|k| pick_token(&reads, k, quorum, floor).map_err(|e| (k, e)))
                            .collect()
                    };
                    // A set's error names the resource without a token, the one to reseed
                    // (it named the set's first, found by a fresh user's review).
                    let about = |k: usize, mut e: LockError| {
                        self.name_error(&mut e, &keys.all()[k..=k]);
                        e
                    };
                    let tokens = match picked {
                        Ok(t) => t,
                        Err((k, NoToken::TooFewCounters)) => {
                            let e = refuse(LockErrorKind::FenceUnavailable, results.clone());
                            break 'attempt e.map_err(|e| {
                    about(k, e).because("fewer than a quorum of nodes have a live counter (restarted, or restored from a snapshot?): reseed_fence")
                });
                        }
                        Err((k, NoToken::NotEveryNodeAnswered)) => {
                            let e = refuse(LockErrorKind::FenceUnavailable, results.clone());
                            break 'attempt e.map_err(|e| {
                    about(k, e).because("no node that answered has a counter: a new resource needs every node to answer, or a reseed_fence")
                });
                        }
                        Err((k, NoToken::Overflow)) => {
                            let e = refuse(LockErrorKind::FenceOverflow, results.clone());
                            break 'attempt e.map_err(|e| about(k, e));
                        }
                    };

                    if protocol != FenceProtocol::Proven {
                        drop(all_keys);
                        let lock = Lock::new(self.clone(), keys, token, ttl, valid_until);
                        break 'attempt Ok(lock.with_fences(tokens));
                    }
                    // Only nodes whose grant reached us in time may get a new counter (see FENCE_WRITE).
                    let in_time: SmallVec<[bool; 7]> = results
                        .iter()
                        .map(|r| matches!(r, NodeResult::Granted))
                        .collect();
                    (tokens, in_time)
                };

                // Step 3: the raise-only write, counted where the lock keys still hold our token.
                let mut bufs: SmallVec<[itoa::Buffer; 1]> =
                    SmallVec::from_elem(itoa::Buffer::new(), n_keys);
                let formatted: SmallVec<[&[u8]; 1]> = bufs
                    .iter_mut()
                    .zip(&tokens)
                    .map(|(b, &t)| b.format(t).as_bytes())
                    .collect();
                let args_for = |i: usize| -> SmallVec<[&[u8]; 4]> {
                    let mut args: SmallVec<[&[u8]; 4]> = smallvec::smallvec![
                        &token[..],
                        if in_time[i] { &b"1"[..] } else { &b"0"[..] },
                        ids.tag(i)
                    ];
                    args.extend_from_slice(&formatted);
                    args
                };
                let index = |node: &Connection| nodes.iter().position(|n| std::ptr::eq(n, node));
                // The lock keys are set on a quorum while step 3 is awaited: dropped there, the
                // attempt releases them, as in step 1.
                let mut cleanup = super::CleanupOnDrop {
                    redlock: self,
                    keys: &keys,
                    token: &token,
                    armed: true,
                };
                let (decision, collector) = self
                    .collect(
                        deadline,
                        false,
                        |buf, node| {
                            let args = args_for(index(node).expect("one of this manager's nodes"));
                            s.fence_write
                                .encode(buf, ScriptCall::BySha, &all_keys, &args)
                        },
                        Vote::of_script_flag,
                        |i| {
                            let args = args_for(i);
                            nodes[i].send(|buf| {
                                s.fence_write
                                    .encode(buf, ScriptCall::WithSource, &all_keys, &args)
                            })
                        },
                    )
                    .await;
                cleanup.armed = false;
                drop(cleanup);
                let mut write_results = collector.results.clone();
                drop(collector);
                drop(all_keys);
                // A write that went to a process other than the one its tag named is not counted.
                drop_reconnected(&mut write_results, &ids, nodes);
                let counted = write_results
                    .iter()
                    .filter(|r| matches!(r, NodeResult::Granted))
                    .count();
                // The lock key was set on a quorum before the write step: a release after an expiry
                // also tells waiters (see `handoff`); the others publish nothing, as an acquire's
                // cleanup does not.
                let fail = |kind, results: NodeResults| {
                    let notify = kind == LockErrorKind::Expired;
                    self.release_in_background(&keys, &token, notify, |_| true);
                    Err(self.lock_error(kind, results, &keys))
                };
                match decision {
                    Decision::Quorum(_)
                        if counted >= quorum
                            && decision
                                .quorum_in_time(self.inner.options.min_validity, valid_until) =>
                    {
                        Ok(Lock::new(self.clone(), keys, token, ttl, valid_until)
                            .with_fences(tokens))
                    }
                    Decision::Quorum(_) if counted < quorum => {
                        let kind = self.classify_failure(&write_results, false);
                        fail(kind, write_results)
                    }
                    Decision::Deadline if cut.is_some() => {
                        let kind = self.classify_failure(&write_results, false);
                        fail(kind, write_results)
                    }
                    Decision::Quorum(_) | Decision::Deadline => {
                        fail(LockErrorKind::Expired, write_results)
                    }
                    Decision::Impossible | Decision::AllDone => {
                        let kind = self.classify_failure(&write_results, false);
                        fail(kind, write_results)
                    }
                }
            };
            self.counted(&outcome);
            outcome
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(granted: bool, counter: Option<u64>) -> Option<NodeRead> {
        let c = counter.map_or(Counter::Missing, Counter::Live);
        Some(NodeRead {
            granted,
            counters: smallvec::smallvec![c],
        })
    }

    fn stale(granted: bool) -> Option<NodeRead> {
        Some(NodeRead {
            granted,
            counters: smallvec::smallvec![Counter::Stale],
        })
    }

    /// A node's read of several keys.
    fn reads(granted: bool, counters: &[Counter]) -> Option<NodeRead> {
        Some(NodeRead {
            granted,
            counters: counters.iter().copied().collect(),
        })
    }

    fn pick(reads: &[Option<NodeRead>], quorum: usize, floor: u64) -> Result<u64, NoToken> {
        pick_token(reads, 0, quorum, floor)
    }

    #[test]
    fn the_reply_integer_carries_the_vote_and_the_counter() {
        let r = |n| {
            let r = NodeRead::from_reply(n);
            (r.granted, r.counters[0])
        };
        assert_eq!(r(0), (true, Counter::Missing));
        assert_eq!(r(7), (true, Counter::Live(7)));
        assert_eq!(r(-1), (false, Counter::Missing));
        assert_eq!(r(-8), (false, Counter::Live(7)));
        assert_eq!(r(STALE_READ), (true, Counter::Stale));
        assert_eq!(r(-STALE_READ), (false, Counter::Stale));
        let top = MAX_FENCING_TOKEN as i64;
        assert_eq!(r(top), (true, Counter::Live(MAX_FENCING_TOKEN)));
        assert_eq!(r(-top - 1), (false, Counter::Live(MAX_FENCING_TOKEN)));
        // 2^54 and its negation are exact doubles, and outside every live answer.
        assert_eq!(STALE_READ as f64 as i64, STALE_READ);
        assert!(STALE_READ > top && -STALE_READ < -top - 1);
    }

    #[test]
    fn the_reply_array_carries_the_vote_and_every_keys_counter() {
        let i = Frame::Integer;
        let r = NodeRead::from_array(&[i(1), i(4), i(0), i(-1)], 3).unwrap();
        assert!(r.granted);
        assert_eq!(
            &r.counters[..],
            &[Counter::Live(4), Counter::Missing, Counter::Stale]
        );
        let r = NodeRead::from_array(&[i(0), i(9), i(2)], 2).unwrap();
        assert!(!r.granted);
        assert_eq!(&r.counters[..], &[Counter::Live(9), Counter::Live(2)]);
        // Any other shape is not a read.
        assert_eq!(NodeRead::from_array(&[i(1), i(4)], 2), None);
        assert_eq!(NodeRead::from_array(&[i(2), i(4)], 1), None);
        assert_eq!(NodeRead::from_array(&[i(1), i(-2)], 1), None);
        assert_eq!(NodeRead::from_array(&[], 0), None);
    }

    #[test]
    fn the_token_is_one_more_than_the_largest_of_a_quorum_of_counters() {
        let reads = [
            read(true, Some(4)),
            read(true, Some(9)),
            read(false, Some(2)),
            None,
            None,
        ];
        assert_eq!(pick(&reads, 3, 1), Ok(10));
        // A refused node's counter counts as much as a granted one's.
        let reads = [
            read(true, Some(4)),
            read(true, None),
            read(false, Some(12)),
            read(true, Some(3)),
            None,
        ];
        assert_eq!(pick(&reads, 3, 1), Ok(13));
    }

    #[test]
    fn missing_counters_are_not_zero() {
        // Two of five kept their counters (a majority restarted): no token can be proven.
        let reads = [
            read(true, Some(40)),
            read(true, None),
            read(true, None),
            read(false, Some(41)),
            read(true, None),
        ];
        assert_eq!(pick(&reads, 3, 1), Err(NoToken::TooFewCounters));
        // Every node answered and none has a counter: a new resource.
        let reads = [read(true, None), read(true, None), read(false, None)];
        assert_eq!(pick(&reads, 2, 1), Ok(1));
        // No counters, but one node did not answer: it may hold the only counters left.
        let reads = [read(true, None), read(true, None), None];
        assert_eq!(pick(&reads, 2, 1), Err(NoToken::NotEveryNodeAnswered));
    }

    #[test]
    fn stale_counters_count_as_missing_but_the_resource_is_not_new() {
        // A node restored from an older snapshot: its counter (tagged by the process before)
        // is not used, and the other two still make a quorum.
        let reads = [stale(true), read(true, Some(10)), read(true, Some(9))];
        assert_eq!(pick(&reads, 2, 1), Ok(11));
        // Two of three restored: one live counter is not a quorum, whatever the stale say.
        let reads = [stale(true), stale(true), read(false, Some(10))];
        assert_eq!(pick(&reads, 2, 1), Err(NoToken::TooFewCounters));
        let reads = [stale(true), stale(true), None];
        assert_eq!(pick(&reads, 2, 1), Err(NoToken::TooFewCounters));
        // Every node restored (or restarted with persistence): not a new resource starting
        // again at the floor, but a refusal until reseeded.
        let reads = [stale(true), stale(true), stale(false)];
        assert_eq!(pick(&reads, 2, 1), Err(NoToken::TooFewCounters));
        let reads = [read(true, None), read(true, None), stale(false)];
        assert_eq!(pick(&reads, 2, 1), Err(NoToken::TooFewCounters));
    }

    #[test]
    fn each_resource_of_a_set_gets_its_own_token_from_its_own_counters() {
        use Counter::{Live, Missing, Stale};
        let r = [
            reads(true, &[Live(3), Live(70), Missing]),
            reads(true, &[Live(5), Stale, Missing]),
            reads(false, &[Live(4), Live(71), Missing]),
        ];
        assert_eq!(pick_token(&r, 0, 2, 1), Ok(6));
        assert_eq!(pick_token(&r, 1, 2, 1), Ok(72));
        assert_eq!(pick_token(&r, 2, 2, 1), Ok(1), "a new resource in the set");
        // One key without a quorum of live counters refuses it, whatever the others have.
        let r = [
            reads(true, &[Live(3), Stale]),
            reads(true, &[Live(5), Stale]),
            reads(true, &[Live(4), Live(9)]),
        ];
        assert_eq!(pick_token(&r, 0, 2, 1), Ok(6));
        assert_eq!(pick_token(&r, 1, 2, 1), Err(NoToken::TooFewCounters));
        // A node that did not answer is missing for every key.
        let r = [
            reads(true, &[Missing, Live(8)]),
            reads(true, &[Missing, Live(2)]),
            None,
        ];
        assert_eq!(pick_token(&r, 0, 2, 1), Err(NoToken::NotEveryNodeAnswered));
        assert_eq!(pick_token(&r, 1, 2, 1), Ok(9));
    }

    #[test]
    fn the_floor_is_a_minimum() {
        let reads = [read(true, None), read(true, None), read(true, None)];
        assert_eq!(pick(&reads, 2, 500), Ok(500));
        let reads = [
            read(true, Some(900)),
            read(true, Some(900)),
            read(true, None),
        ];
        assert_eq!(pick(&reads, 2, 500), Ok(901));
    }

    #[test]
    fn the_token_space_ends_with_an_error_not_a_wrap() {
        let top = Some(MAX_FENCING_TOKEN);
        let reads = [read(true, top), read(true, top), read(true, None)];
        assert_eq!(pick(&reads, 2, 1), Err(NoToken::Overflow));
        let reads = [read(true, Some(u64::MAX)), read(true, Some(u64::MAX)), None];
        assert_eq!(pick(&reads, 2, 1), Err(NoToken::Overflow));
        let reads = [
            read(true, Some(MAX_FENCING_TOKEN - 1)),
            read(true, Some(1)),
            None,
        ];
        assert_eq!(pick(&reads, 2, 1), Ok(MAX_FENCING_TOKEN));
    }

    /// A reply counts only from the process whose identity tagged the request: a node whose
    /// connect count moved since the identities were read is failed, whatever it answered.
    #[tokio::test]
    async fn a_reply_from_a_node_that_reconnected_does_not_count() {
        use crate::conn::ConnectionConfig;
        // Nothing listens on port 1: the connect counts stay at 0.
        let nodes: Vec<Connection> = (0..3)
            .map(|_| Connection::start(ConnectionConfig::new("127.0.0.1", 1)))
            .collect();
        let mut ids = NodeIdentities::read(&nodes);
        assert!((0..3).all(|i| ids.unchanged(&nodes, i)));
        // As if node 1 had been read at its previous connect.
        ids.seen[1].0 += 1;
        let mut results: NodeResults = smallvec::smallvec![
            NodeResult::Granted,
            NodeResult::Granted,
            NodeResult::Refused,
        ];
        drop_reconnected(&mut results, &ids, &nodes);
        assert!(matches!(results[0], NodeResult::Granted));
        assert!(
            matches!(&results[1], NodeResult::Failed(e) if e.maybe_executed()),
            "{:?}",
            results[1]
        );
        assert!(matches!(results[2], NodeResult::Refused));
    }

    #[test]
    fn a_node_is_tagged_only_with_an_exact_identity() {
        let info = |marker| ServerInfo {
            restart_marker: marker,
            ..ServerInfo::default()
        };
        let id = "3f2a9c0e1b7d4a5f6e8c9b0a1d2e3f4a5b6c7d8e".to_string();
        assert_eq!(
            node_tag(Some(&info(Some(RestartMarker::RunId(id.clone()))))),
            id.as_bytes()
        );
        // Dragonfly: a start time derived from a whole-second uptime is not an identity.
        assert_eq!(
            node_tag(Some(&info(Some(RestartMarker::StartedAt(1_796_001_289))))),
            b""
        );
        assert_eq!(node_tag(Some(&info(None))), b"");
        assert_eq!(node_tag(None), b"");
        // Nothing the scripts' `%w+` would not match, nothing that long.
        for odd in ["", "a@b", "a b", &"x".repeat(MAX_FENCE_TAG + 1)] {
            let marker = Some(RestartMarker::RunId(odd.to_string()));
            assert_eq!(node_tag(Some(&info(marker))), b"", "{odd:?}");
        }
    }
}
