//! Fencing tokens that increase across N independent nodes.
//!
//! A fenced acquire is a normal acquire plus one round trip. Each node keeps, next to the lock
//! key, a counter key for the resource (the lock key with [`FENCE_SUFFIX`]), which only ever
//! rises and has no ttl: one small key per fenced resource stays on every node for good, so
//! fence long-lived resources, not one name per job.
//!
//! ```text
//!  1. read:  on every node, one script: SET lock token NX PX ttl, and answer the counter
//!            (granted or not; a missing counter is answered as missing, never created)
//!  2. pick:  SET quorum, and counters from a quorum of nodes that have one:
//!            token = max(those counters) + 1, at least the floor.
//!            No node anywhere has one (all N answered "missing"): a new resource, token = floor.
//!            Otherwise: FenceUnavailable (fewer than a quorum kept their counters).
//!  3. write: on every node, one script: raise the counter to the token; create a missing one
//!            only where the lock key holds our token. The write counts where it does.
//!            A quorum of counting writes inside the validity: granted. Else released.
//! ```
//!
//! # The guarantee
//!
//! If grant A ends (release, expiry or loss) before grant B's acquire begins, then
//! `token(A) < token(B)`, for every pair of grants of one resource, under Redlock's usual
//! assumptions (clocks that drift by at most the drift factor) and with the delayed-restart
//! rule on: a node restarted without persistence does not vote for
//! [`restart_delay`](super::RedlockOptions::restart_delay), which must be at least **twice** the
//! longest ttl a fenced lock is taken or extended with (the plain lock needs one ttl; the second
//! covers an acquire still in flight when the restart happened).
//!
//! Proof sketch. Call `W(A)` the quorum of nodes whose write counted for A. Invariant: once A is
//! granted, fewer than a quorum of nodes hold a counter below `token(A)` (nodes with no counter
//! do not count). At A's grant it holds: every node in `W(A)` has a counter of at least
//! `token(A)`, and the rest are fewer than a quorum. Counters only rise, except that a restart
//! removes one, which cannot add a low counter. The only step that can add a counter below
//! `token(A)` is a write that creates a missing counter with a smaller token X. Such a write
//! comes from an acquire whose SET was granted on that node inside its own validity. If the node
//! is in `W(A)`, its counter went missing by a restart after A's write, and it granted that SET
//! only `restart_delay` after the restart: the acquire must have begun after A was granted (its
//! validity is shorter than `restart_delay` minus a ttl), so all its reads came after A's grant,
//! saw a quorum of counters, and by the invariant one of them is at least `token(A)`: X is
//! larger. If the node is not in `W(A)`, it was already among the nodes that may be low, which
//! stay fewer than a quorum. So the invariant holds; and B, whose reads all come after A ended,
//! takes the maximum over a quorum of counters, which includes one of at least `token(A)`.
//!
//! What breaks it: a node that restarts from an **older snapshot** (Redis's default `save`
//! points, AOF with `appendfsync everysec`, Dragonfly snapshots, after a crash): its counter
//! comes back lower instead of missing, which the proof does not allow (found by review with
//! three real servers: token 6 after token 10). Fenced locks need nodes that either keep no data
//! across restarts or fsync every write (`appendfsync always`); `dragonlock ping` warns about
//! the others. Also: a restart rule shorter than twice the ttl; clocks outside the drift bound
//! (a node's wall clock stepped forward also shortens the uptime the restart rule reads);
//! and the loss of the counters of every node that had one (every node wiped at once, or a
//! majority wiped while the others never had a counter for the resource): that looks exactly
//! like a resource nobody fenced before, and starts again at the floor. Set a floor
//! ([`RedlockOptions::fence_floor`](super::RedlockOptions::fence_floor)) or reseed
//! ([`Redlock::reseed_fence`](super::Redlock::reseed_fence)) from the protected store's highest
//! token after such a loss.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

use smallvec::SmallVec;
use tokio::time::Instant;

use super::error::{LockError, LockErrorKind, NodeResult, NodeResults};
use super::quorum::{Decision, Vote};
use super::{Keys, Lock, Redlock};
use crate::conn::{ReplyFuture, ScriptCall};
use crate::error::{Error, ErrorKind};
use crate::resp::Frame;

/// Appended to a lock key to name its counter key. Long and specific so that no lock key a user
/// chooses is also some other resource's counter.
pub const FENCE_SUFFIX: &str = ":dragonlock-fence";

/// The largest token: Lua's numbers are doubles, exact up to 2^53, and the read script answers
/// the counter as a number. At a million grants a second that is 285 years of one resource.
pub const MAX_FENCING_TOKEN: u64 = (1 << 53) - 1;

// A counter is a canonical decimal between 1 and `MAX_FENCING_TOKEN`: no sign, no leading
// zero, no spaces. Each script begins with the same `bad` check: anything else in the key
// (written by someone else, or by hand) is refused with an error reply before anything is set,
// rather than read as a number by one script and compared as a string by another (`"007"` is 7
// to `tonumber` and smaller than `"8"` to the comparison).

/// Step 1 on one node: `SET lock token NX PX ttl`, and the counter. One integer, so the reply
/// takes the decoder's allocation-free path: the counter `c` (0 when missing) when the SET was
/// granted, `-(c + 1)` when it was refused. A malformed counter is an error, and nothing is set.
pub const FENCE_ACQUIRE: &str = concat!(
    "local function bad(c) return not string.match(c, '^[1-9][0-9]*$') or #c > 16 ",
    "or tonumber(c) > 9007199254740991 end ",
    "local c = redis.call('get', KEYS[2]) local n = 0 ",
    "if c then if bad(c) then return redis.error_reply('FENCE malformed fencing counter') end n = tonumber(c) end ",
    "if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return n end return -n - 1"
);

/// Step 3 on one node: raise the counter to `ARGV[2]` (compared as decimal strings of canonical
/// form, so no precision is lost). A missing counter is created only where the lock key holds
/// our token `ARGV[1]` and `ARGV[3]` is `1`: the node's SET grant reached us inside the validity
/// (a late grant must not create a counter; the proof needs it). Answers 1 where the lock key
/// holds our token and the counter is now at least the token: only those writes count.
pub const FENCE_WRITE: &str = concat!(
    "local function bad(c) return not string.match(c, '^[1-9][0-9]*$') or #c > 16 ",
    "or tonumber(c) > 9007199254740991 end ",
    "local mine = redis.call('get', KEYS[1]) == ARGV[1] ",
    "local c = redis.call('get', KEYS[2]) local v = ARGV[2] ",
    "if c then if bad(c) then return redis.error_reply('FENCE malformed fencing counter') end ",
    "if #c < #v or (#c == #v and c < v) then redis.call('set', KEYS[2], v) end ",
    "elseif mine and ARGV[3] == '1' then redis.call('set', KEYS[2], v) c = v end ",
    "if mine and c then return 1 end return 0"
);

/// The operator's reseed: raise the counter to `ARGV[1]`, creating it when missing (a malformed
/// one is replaced). Answers the counter as it is afterwards, so the client can raise every node
/// to the largest it saw.
pub const FENCE_RESEED: &str = concat!(
    "local function bad(c) return not string.match(c, '^[1-9][0-9]*$') or #c > 16 ",
    "or tonumber(c) > 9007199254740991 end ",
    "local c = redis.call('get', KEYS[1]) local v = ARGV[1] ",
    "if not c or bad(c) or #c < #v or (#c == #v and c < v) then redis.call('set', KEYS[1], v) c = v end ",
    "return tonumber(c)"
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
    /// decided at the SET quorum, with no write step.
    NaiveIncr,
    /// Steps 1 and 2 as above, but step 3 (the write) skipped.
    SkipWrite,
}

/// The naive protocol's step: `INCR` the counter where the SET was granted (-1 where refused).
const NAIVE_ACQUIRE: &str = "if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then \
return redis.call('incr', KEYS[2]) end return -1";

/// What one node said in step 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeRead {
    pub granted: bool,
    /// `None`: the node has no counter for the resource.
    pub counter: Option<u64>,
}

impl NodeRead {
    fn from_reply(n: i64) -> NodeRead {
        let (granted, c) = if n >= 0 {
            (true, n as u64)
        } else {
            (false, (-(n + 1)) as u64)
        };
        NodeRead {
            granted,
            counter: (c > 0).then_some(c),
        }
    }
}

/// Why no token could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoToken {
    /// Some nodes have counters, but fewer than a quorum.
    TooFewCounters,
    /// No node that answered has a counter, but not every node answered: a new resource, or
    /// one whose counters live only on the silent nodes.
    NotEveryNodeAnswered,
    /// The next token would pass [`MAX_FENCING_TOKEN`].
    Overflow,
}

/// Step 2: the token, from what the nodes answered (`None`: no answer from that node).
pub(crate) fn pick_token(
    reads: &[Option<NodeRead>],
    quorum: usize,
    floor: u64,
) -> Result<u64, NoToken> {
    let present = reads
        .iter()
        .filter_map(|r| r.and_then(|r| r.counter))
        .collect::<SmallVec<[u64; 7]>>();
    let base = if present.len() >= quorum {
        present.iter().copied().max().unwrap_or(0)
    } else if present.is_empty() && reads.iter().all(Option::is_some) {
        0 // a resource no node has a counter for
    } else if present.is_empty() {
        return Err(NoToken::NotEveryNodeAnswered);
    } else {
        return Err(NoToken::TooFewCounters);
    };
    let token = base.checked_add(1).ok_or(NoToken::Overflow)?.max(floor);
    if token > MAX_FENCING_TOKEN {
        return Err(NoToken::Overflow);
    }
    Ok(token)
}

/// The counter key of a lock key.
pub(crate) fn fence_key(lock_key: &[u8]) -> super::Key {
    let mut k = super::Key::from_slice(lock_key);
    k.extend_from_slice(FENCE_SUFFIX.as_bytes());
    k
}

impl Redlock {
    /// One fenced attempt (steps 1 to 3), for a single key.
    pub(super) async fn attempt_fenced(
        &self,
        keys: Keys,
        ttl: std::time::Duration,
        cut: Option<Instant>,
    ) -> Result<Lock, LockError> {
        let token = super::token::new_token_with(self.inner.options.token_prefix.as_bytes());
        let nodes = &self.inner.nodes;
        let quorum = self.inner.quorum;
        let s = super::scripts::scripts();
        let lock_key = &keys.all()[0];
        let fence = fence_key(lock_key);
        let both = [&lock_key[..], &fence[..]];
        let mut ms = itoa::Buffer::new();
        let ms = ms.format(ttl.as_millis() as u64).as_bytes();
        let args = [&token[..], ms];

        let protocol = self.inner.options.fence_protocol;
        let naive = protocol == FenceProtocol::NaiveIncr;
        // Made only for the negative control: a Script computes its SHA-1 and allocates.
        let naive_script = naive.then(|| crate::conn::Script::new(NAIVE_ACQUIRE));
        let step1 = naive_script.as_ref().unwrap_or(&s.fence_acquire);
        let call = if naive {
            ScriptCall::WithSource
        } else {
            ScriptCall::BySha
        };
        let start = Instant::now();
        let valid_until = start + ttl - self.drift(ttl);
        let mut cleanup = super::CleanupOnDrop {
            redlock: self,
            keys: &keys,
            token: &token,
            armed: true,
        };

        // Step 1: every node, then wait for a SET quorum and a quorum of counters (or every
        // answer, or the deadline, or a SET quorum that became impossible).
        let mut pending: SmallVec<[Option<ReplyFuture<'_>>; 7]> = SmallVec::new();
        // Until a node answers it was not awaited; at the deadline the silent ones are NoReply.
        let mut results: NodeResults = SmallVec::from_elem(NodeResult::NotAwaited, nodes.len());
        let mut reads: SmallVec<[Option<NodeRead>; 7]> = SmallVec::from_elem(None, nodes.len());
        let mut retried: SmallVec<[bool; 7]> = SmallVec::from_elem(false, nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            let encode = |buf: &mut bytes::BytesMut| step1.encode(buf, call, &both, &args);
            let sent = match self.inner.options.restart_delay {
                None => node.send(encode),
                Some(delay) => node.send_if_up_for(delay, encode),
            };
            match sent {
                Ok(f) => pending.push(Some(f)),
                Err(e) => {
                    pending.push(None);
                    results[i] = NodeResult::Failed(e);
                }
            }
        }
        // The acquire budget's end cuts the attempt where it comes first.
        let cut = cut.filter(|&c| c < valid_until);
        let deadline = cut.unwrap_or(valid_until);
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
                match reply {
                    Ok(Frame::Integer(n)) => {
                        let read = NodeRead::from_reply(n);
                        results[i] = if read.granted {
                            NodeResult::Granted
                        } else {
                            NodeResult::Refused
                        };
                        reads[i] = Some(read);
                    }
                    Ok(Frame::Error(e)) if e.has_code("NOSCRIPT") && !retried[i] => {
                        retried[i] = true;
                        let resend = nodes[i].send(|buf| {
                            s.fence_acquire
                                .encode(buf, ScriptCall::WithSource, &both, &args)
                        });
                        match resend {
                            Ok(mut f) => {
                                if Pin::new(&mut f).poll(cx).is_pending() {
                                    pending[i] = Some(f);
                                    continue;
                                }
                                // Answered at once: only an error can be that fast.
                                results[i] =
                                    NodeResult::Failed(Error::new(ErrorKind::UnexpectedReply));
                            }
                            Err(e) => results[i] = NodeResult::Failed(e),
                        }
                    }
                    Ok(Frame::Error(e)) => {
                        results[i] = NodeResult::Failed(Error::new(ErrorKind::Server(e)))
                    }
                    Ok(_) => {
                        results[i] = NodeResult::Failed(Error::new(ErrorKind::UnexpectedReply))
                    }
                    Err(e) => results[i] = NodeResult::Failed(e),
                }
                let granted = reads.iter().flatten().filter(|r| r.granted).count();
                let counted = reads
                    .iter()
                    .flatten()
                    .filter(|r| r.counter.is_some())
                    .count();
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

        let might_hold = |i: usize| match &results[i] {
            NodeResult::Granted | NodeResult::NoReply | NodeResult::NotAwaited => true,
            NodeResult::Failed(e) => e.maybe_executed(),
            _ => false,
        };
        let refuse = |kind, results: NodeResults| {
            self.release_in_background(&keys, &token, false, might_hold);
            Err(self.lock_error(kind, results, &keys))
        };
        match decided {
            Decision::Quorum(_) => {}
            // Cut by the acquire budget: the verdict so far (the caller makes it `Timeout`).
            Decision::Deadline if cut.is_some() => {
                return refuse(self.classify_failure(&results, false), results.clone())
            }
            Decision::Deadline => return refuse(LockErrorKind::Expired, results.clone()),
            Decision::Impossible | Decision::AllDone => {
                let kind = self.classify_failure(&results, false);
                return refuse(kind, results.clone());
            }
        }
        let picked = if naive {
            let granted = reads.iter().flatten().filter(|r| r.granted);
            Ok(granted.filter_map(|r| r.counter).max().unwrap_or(1))
        } else {
            pick_token(&reads, quorum, self.inner.options.fence_floor)
        };
        let fencing_token = match picked {
            Ok(t) => t,
            Err(NoToken::TooFewCounters) => {
                let e = refuse(LockErrorKind::FenceUnavailable, results.clone());
                return e.map_err(|e| {
                    e.because("fewer than a quorum of nodes still have the counter (restarted without persistence?): reseed_fence")
                });
            }
            Err(NoToken::NotEveryNodeAnswered) => {
                let e = refuse(LockErrorKind::FenceUnavailable, results.clone());
                return e.map_err(|e| {
                    e.because("no node that answered has a counter: a new resource needs every node to answer, or a reseed_fence")
                });
            }
            Err(NoToken::Overflow) => return refuse(LockErrorKind::FenceOverflow, results.clone()),
        };

        if protocol != FenceProtocol::Proven {
            let lock = Lock::new(self.clone(), keys, token, ttl, valid_until);
            return Ok(lock.with_fence(fencing_token));
        }

        // Step 3: the raise-only write, counted where the lock key still holds our token.
        let mut t = itoa::Buffer::new();
        let t = t.format(fencing_token).as_bytes();
        // Only nodes whose grant reached us in time may get a new counter (see FENCE_WRITE).
        let args_for = |node: &crate::conn::Connection| -> [&[u8]; 3] {
            let i = nodes.iter().position(|n| std::ptr::eq(n, node));
            let in_time = i.is_some_and(|i| matches!(results[i], NodeResult::Granted));
            [&token[..], t, if in_time { b"1" } else { b"0" }]
        };
        let (decision, collector) = self
            .collect(
                deadline,
                false,
                |buf, node| {
                    let args = args_for(node);
                    s.fence_write.encode(buf, ScriptCall::BySha, &both, &args)
                },
                Vote::of_script_flag,
                |i| {
                    let args = args_for(&nodes[i]);
                    nodes[i].send(|buf| {
                        s.fence_write
                            .encode(buf, ScriptCall::WithSource, &both, &args)
                    })
                },
            )
            .await;
        match decision {
            Decision::Quorum(at) if at + self.inner.options.min_validity <= valid_until => Ok(
                Lock::new(self.clone(), keys, token, ttl, valid_until).with_fence(fencing_token),
            ),
            Decision::Deadline if cut.is_some() => {
                self.release_in_background(&keys, &token, false, |_| true);
                let kind = self.classify_failure(&collector.results, false);
                Err(self.lock_error(kind, collector.results.clone(), &keys))
            }
            Decision::Quorum(_) | Decision::Deadline => {
                self.release_in_background(&keys, &token, true, |_| true);
                let results = collector.results.clone();
                Err(self.lock_error(LockErrorKind::Expired, results, &keys))
            }
            Decision::Impossible | Decision::AllDone => {
                self.release_in_background(&keys, &token, false, |_| true);
                let kind = self.classify_failure(&collector.results, false);
                Err(self.lock_error(kind, collector.results.clone(), &keys))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(granted: bool, counter: Option<u64>) -> Option<NodeRead> {
        Some(NodeRead { granted, counter })
    }

    #[test]
    fn the_reply_integer_carries_the_vote_and_the_counter() {
        assert_eq!(
            NodeRead::from_reply(0),
            NodeRead {
                granted: true,
                counter: None
            }
        );
        assert_eq!(
            NodeRead::from_reply(7),
            NodeRead {
                granted: true,
                counter: Some(7)
            }
        );
        assert_eq!(
            NodeRead::from_reply(-1),
            NodeRead {
                granted: false,
                counter: None
            }
        );
        assert_eq!(
            NodeRead::from_reply(-8),
            NodeRead {
                granted: false,
                counter: Some(7)
            }
        );
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
        assert_eq!(pick_token(&reads, 3, 1), Ok(10));
        // A refused node's counter counts as much as a granted one's.
        let reads = [
            read(true, Some(4)),
            read(true, None),
            read(false, Some(12)),
            read(true, Some(3)),
            None,
        ];
        assert_eq!(pick_token(&reads, 3, 1), Ok(13));
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
        assert_eq!(pick_token(&reads, 3, 1), Err(NoToken::TooFewCounters));
        // Every node answered and none has a counter: a new resource.
        let reads = [read(true, None), read(true, None), read(false, None)];
        assert_eq!(pick_token(&reads, 2, 1), Ok(1));
        // No counters, but one node did not answer: it may hold the only counters left.
        let reads = [read(true, None), read(true, None), None];
        assert_eq!(pick_token(&reads, 2, 1), Err(NoToken::NotEveryNodeAnswered));
    }

    #[test]
    fn the_floor_is_a_minimum() {
        let reads = [read(true, None), read(true, None), read(true, None)];
        assert_eq!(pick_token(&reads, 2, 500), Ok(500));
        let reads = [
            read(true, Some(900)),
            read(true, Some(900)),
            read(true, None),
        ];
        assert_eq!(pick_token(&reads, 2, 500), Ok(901));
    }

    #[test]
    fn the_token_space_ends_with_an_error_not_a_wrap() {
        let top = Some(MAX_FENCING_TOKEN);
        let reads = [read(true, top), read(true, top), read(true, None)];
        assert_eq!(pick_token(&reads, 2, 1), Err(NoToken::Overflow));
        let reads = [read(true, Some(u64::MAX)), read(true, Some(u64::MAX)), None];
        assert_eq!(pick_token(&reads, 2, 1), Err(NoToken::Overflow));
        let reads = [
            read(true, Some(MAX_FENCING_TOKEN - 1)),
            read(true, Some(1)),
            None,
        ];
        assert_eq!(pick_token(&reads, 2, 1), Ok(MAX_FENCING_TOKEN));
    }
}
