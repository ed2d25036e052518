//! Lock outcomes a caller can act on without parsing strings.

use std::fmt;
use std::sync::Arc;

use smallvec::SmallVec;

use super::Key;
use crate::error::Error;

/// What one node answered.
///
/// `#[non_exhaustive]`: a later version may tell more cases apart; match with a `_` arm.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum NodeResult {
    /// It said yes (`OK`, or a script's `1`).
    Granted,
    /// It said no: the key is held by another token (or, for release and extend, not ours).
    Refused,
    /// It failed: socket, protocol or server error (`LOADING`, `READONLY`, `OOM`, `NOAUTH` …).
    Failed(Error),
    /// No answer before the deadline (the lock's validity, the release timeout, or the acquire
    /// time budget): the node was waited for and stayed silent.
    NoReply,
    /// Not waited for: the outcome was decided (a quorum, or a quorum made impossible by the
    /// others' answers) before this node answered. Nothing is known to be wrong with it; its
    /// answer is read and dropped by the connection when it comes.
    NotAwaited,
}

impl NodeResult {
    /// A short description, for messages.
    fn describe(&self) -> &'static str {
        match self {
            NodeResult::Granted => "granted",
            NodeResult::Refused => "refused",
            NodeResult::Failed(_) => "failed",
            NodeResult::NoReply => "no reply",
            NodeResult::NotAwaited => "not awaited",
        }
    }
}

/// Per-node detail, in the order the nodes were configured. Inline for up to 7 nodes.
pub type NodeResults = SmallVec<[NodeResult; 7]>;

/// Why a lock operation did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockErrorKind {
    /// Held by someone else on enough nodes that a quorum was impossible.
    Busy,
    /// Mixed answers: neither busy nor unavailable alone, but no quorum.
    NoQuorum,
    /// Infrastructure errors, or silence until the deadline (an acquire's: the lock's
    /// validity; a release's: the release timeout), on enough nodes to make a quorum
    /// impossible.
    Unavailable,
    /// The quorum came too late: it was reached with less validity left than the minimum
    /// ([`min_validity`](crate::RedlockOptions::min_validity)), or, for a fenced acquire, the
    /// validity ran out while the token was written. It was released.
    Expired,
    /// `acquire` ran out of its total time budget
    /// ([`RedlockOptions::acquire_timeout`](crate::RedlockOptions::acquire_timeout)).
    /// [`last_attempt`](LockError::last_attempt) tells how the last attempt failed (`Busy`,
    /// `Unavailable` …) and [`nodes`](LockError::nodes) holds its per-node answers.
    Timeout,
    /// The lock was lost: its validity ran out, or an extension failed.
    Lost,
    /// [`Redlock::with_lock`](crate::Redlock::with_lock) renewed the lock for its whole
    /// `max_hold`, stopped renewing, and the lock's validity then ran out while the body was
    /// still running. The body was dropped. Not a failure of the nodes: the body took longer
    /// than the caller allowed.
    MaxHoldExceeded,
    /// A release was confirmed by fewer than a quorum of nodes because a quorum no longer held
    /// the key with this lock's token: it expired (or was taken over) before the release. Work
    /// done under the lock may have overlapped another holder's.
    NotHeld,
    /// The lock was extended as many times as allowed.
    ExtensionLimit,
    /// The request was invalid (ttl too small for the drift, empty resource list …).
    Invalid,
    /// Fencing: some nodes have a counter for the resource but fewer than a quorum (a majority
    /// restarted without persistence, or a node that did not answer may hold the only ones), so
    /// no token can be proven larger than every earlier one. The keys were released. Reseed the
    /// counter with [`Redlock::reseed_fence`](crate::Redlock::reseed_fence).
    FenceUnavailable,
    /// Fencing: the resource's counter reached
    /// [`MAX_FENCING_TOKEN`](crate::redlock::fence::MAX_FENCING_TOKEN).
    FenceOverflow,
}

impl LockErrorKind {
    fn describe(self) -> &'static str {
        match self {
            LockErrorKind::Busy => "the resource is locked by someone else",
            LockErrorKind::NoQuorum => "no quorum of nodes agreed",
            LockErrorKind::Unavailable => "too many nodes are unavailable for a quorum",
            LockErrorKind::Expired => "the lock's validity ran out while acquiring",
            LockErrorKind::Timeout => "the acquire time budget ran out",
            LockErrorKind::Lost => "the lock was lost",
            LockErrorKind::MaxHoldExceeded => {
                "the lock ran out after max_hold stopped its renewals, with the body still running"
            }
            LockErrorKind::NotHeld => {
                "the release found the lock no longer held on a quorum (it expired or was taken over)"
            }
            LockErrorKind::ExtensionLimit => "the lock reached its extension limit",
            LockErrorKind::Invalid => "invalid lock request",
            LockErrorKind::FenceUnavailable => {
                "fewer than a quorum of nodes kept the resource's fencing counter"
            }
            LockErrorKind::FenceOverflow => "the resource's fencing tokens are used up",
        }
    }
}

/// A lock operation's failure: the kind, what each node answered, and which resource it was
/// about.
///
/// The message names the resource and every node by address, with its answer. Building it
/// costs nothing on the hot path: the first key is kept inline (up to 64 bytes) and the
/// addresses are shared with the manager (a reference count, not a copy), so a busy answer
/// still allocates nothing; the text is only formatted when the error is displayed.
///
/// # Examples
///
/// ```no_run
/// use dragonlock::{LockErrorKind, NodeResult};
///
/// # async fn demo(redlock: dragonlock::Redlock) {
/// let Err(e) = redlock.try_acquire("job:7", std::time::Duration::from_secs(5)).await else {
///     return;
/// };
/// match e.kind() {
///     LockErrorKind::Busy => {} // try later
///     LockErrorKind::Unavailable => {
///         for (i, node) in e.nodes().iter().enumerate() {
///             if let NodeResult::Failed(err) = node {
///                 eprintln!("node {} ({i}): {err}", e.node_addr(i).unwrap_or("?"));
///             }
///         }
///     }
///     _ => eprintln!("{e}"),
/// }
/// # }
/// ```
#[derive(Clone, PartialEq)]
pub struct LockError {
    kind: LockErrorKind,
    /// For `Timeout`: how the last attempt failed.
    last_attempt: Option<LockErrorKind>,
    nodes: NodeResults,
    reason: &'static str,
    /// The first key (prefix included); empty when no resource was involved.
    resource: Key,
    /// How many more keys a multi-resource lock had (`u32` keeps the error within 400 bytes).
    more_resources: u32,
    /// An acquire attempt that the acquire budget's end cut before its answers decided it:
    /// its answers say nothing of the key (see `Redlock::acquire`'s retry loop).
    cut: bool,
    /// Every node's address, in configured order, shared with the manager.
    addrs: Option<Arc<[Box<str>]>>,
}

impl LockError {
    pub(crate) fn new(kind: LockErrorKind, nodes: NodeResults) -> LockError {
        LockError {
            kind,
            last_attempt: None,
            nodes,
            reason: "",
            resource: Key::new(),
            more_resources: 0,
            cut: false,
            addrs: None,
        }
    }

    pub(crate) fn invalid(reason: &'static str) -> LockError {
        LockError {
            reason,
            ..LockError::new(LockErrorKind::Invalid, NodeResults::new())
        }
    }

    pub(crate) fn with_kind(mut self, kind: LockErrorKind) -> LockError {
        self.kind = kind;
        self
    }

    /// Says why, in the message.
    pub(crate) fn because(mut self, reason: &'static str) -> LockError {
        self.reason = reason;
        self
    }

    /// Names the resource (the first of `keys`, its first `prefix` bytes, the manager's key
    /// prefix, left off) and the nodes' addresses, for the message. Copies the name (inline up
    /// to 64 bytes) and bumps a reference count: no allocation for names that fit.
    /// In place: an error built where it is returned is not moved through a by-value call (a
    /// busy answer's hot path).
    pub(crate) fn name(&mut self, keys: &[Key], prefix: usize, addrs: &Arc<[Box<str>]>) {
        if let Some(first) = keys.first() {
            self.resource.clear();
            self.resource
                .extend_from_slice(first.get(prefix..).unwrap_or(first));
        }
        self.more_resources = u32::try_from(keys.len().saturating_sub(1)).unwrap_or(u32::MAX);
        self.addrs = Some(addrs.clone());
    }

    /// Marks an attempt the acquire budget cut before its answers decided it.
    pub(crate) fn cut_short(mut self) -> LockError {
        self.mark_cut();
        self
    }

    /// [`cut_short`](LockError::cut_short) in place.
    pub(crate) fn mark_cut(&mut self) {
        self.cut = true;
    }

    /// True for an attempt the acquire budget cut before its answers decided it.
    pub(crate) fn was_cut(&self) -> bool {
        self.cut
    }

    /// A cut attempt's error, read with the verdict of the last attempt that was decided
    /// (`kind`), since its own partial answers decide nothing; its answers stay.
    pub(crate) fn read_as(mut self, kind: LockErrorKind) -> LockError {
        self.kind = kind;
        self
    }

    /// This attempt's failure, turned into the acquire's `Timeout` (it keeps the kind as
    /// [`last_attempt`](LockError::last_attempt), and the per-node answers).
    pub(crate) fn timed_out(mut self) -> LockError {
        if self.kind != LockErrorKind::Timeout {
            self.last_attempt = Some(self.kind);
            self.kind = LockErrorKind::Timeout;
        }
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> LockErrorKind {
        self.kind
    }

    /// For [`LockErrorKind::Timeout`]: how the last *decided* attempt failed (`Busy`,
    /// `Unavailable`, `NoQuorum`, `Expired`), which is what the caller would most likely have
    /// got without a time budget. When the budget ended an attempt that was still waiting for
    /// answers, that attempt decided nothing (the client cannot tell a slow node from a dead
    /// one), so the verdict is the attempt's before it, which may be older;
    /// [`nodes`](LockError::nodes) are still the cut attempt's answers, with the nodes it did not
    /// hear from as `NoReply`. If no attempt was decided, it is the cut attempt's reading of the
    /// answers it had. `None` for other kinds.
    pub fn last_attempt(&self) -> Option<LockErrorKind> {
        self.last_attempt
    }

    /// What each node answered (empty when no node was asked). For a `Timeout`, the last
    /// attempt's answers (also when the budget cut it: see
    /// [`last_attempt`](LockError::last_attempt)).
    pub fn nodes(&self) -> &[NodeResult] {
        &self.nodes
    }

    /// The resource the operation was about, as it was given (without the manager's
    /// [key prefix](super::RedlockOptions::key_prefix), as [`Lock::resource`](super::Lock::resource));
    /// for a multi-resource lock, the first in sorted order. `None` for errors about no
    /// resource (`Invalid`).
    pub fn resource(&self) -> Option<&str> {
        if self.resource.is_empty() {
            None
        } else {
            std::str::from_utf8(&self.resource).ok()
        }
    }

    /// The address (`host:port`) of node `i`, as configured, when known.
    pub fn node_addr(&self, i: usize) -> Option<&str> {
        self.addrs.as_ref()?.get(i).map(|a| &**a)
    }

    /// Held by someone else.
    pub fn is_busy(&self) -> bool {
        self.kind == LockErrorKind::Busy
    }

    /// Mixed answers, no quorum.
    pub fn is_no_quorum(&self) -> bool {
        self.kind == LockErrorKind::NoQuorum
    }

    /// Too many nodes down or failing.
    pub fn is_unavailable(&self) -> bool {
        self.kind == LockErrorKind::Unavailable
    }

    /// Validity ran out while acquiring.
    pub fn is_expired(&self) -> bool {
        self.kind == LockErrorKind::Expired
    }

    /// The acquire time budget ran out (see [`last_attempt`](LockError::last_attempt)).
    pub fn is_timeout(&self) -> bool {
        self.kind == LockErrorKind::Timeout
    }

    /// The lock was lost.
    pub fn is_lost(&self) -> bool {
        self.kind == LockErrorKind::Lost
    }

    /// `with_lock`'s `max_hold` ran out with the body still running.
    pub fn is_max_hold_exceeded(&self) -> bool {
        self.kind == LockErrorKind::MaxHoldExceeded
    }

    /// A release found the lock no longer held on a quorum.
    pub fn is_not_held(&self) -> bool {
        self.kind == LockErrorKind::NotHeld
    }

    /// The extension limit was reached.
    pub fn is_extension_limit(&self) -> bool {
        self.kind == LockErrorKind::ExtensionLimit
    }

    /// Invalid arguments.
    pub fn is_invalid(&self) -> bool {
        self.kind == LockErrorKind::Invalid
    }

    /// No fencing token could be proven larger than every earlier one.
    pub fn is_fence_unavailable(&self) -> bool {
        self.kind == LockErrorKind::FenceUnavailable
    }
}

impl fmt::Debug for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockError")
            .field("kind", &self.kind)
            .field("last_attempt", &self.last_attempt)
            .field("resource", &self.resource())
            .field("nodes", &self.nodes)
            .field("reason", &self.reason)
            .finish()
    }
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.describe())?;
        if !self.reason.is_empty() {
            write!(f, ": {}", self.reason)?;
        }
        match self.last_attempt {
            Some(last) if self.cut => write!(
                f,
                "; the last decided attempt: {} (the budget cut the last one)",
                last.describe()
            )?,
            Some(last) => write!(f, "; the last attempt: {}", last.describe())?,
            None => {}
        }
        if let Some(resource) = self.resource() {
            write!(f, "; resource {resource:?}")?;
            if self.more_resources > 0 {
                write!(f, " and {} more", self.more_resources)?;
            }
        }
        if self.nodes.is_empty() {
            return Ok(());
        }
        let count = |want: fn(&NodeResult) -> bool| self.nodes.iter().filter(|n| want(n)).count();
        let granted = count(|n| matches!(n, NodeResult::Granted));
        let refused = count(|n| matches!(n, NodeResult::Refused));
        write!(f, " ({granted} granted, {refused} refused")?;
        for (what, n) in [
            ("failed", count(|n| matches!(n, NodeResult::Failed(_)))),
            ("silent", count(|n| matches!(n, NodeResult::NoReply))),
            (
                "not awaited",
                count(|n| matches!(n, NodeResult::NotAwaited)),
            ),
        ] {
            if n > 0 {
                write!(f, ", {n} {what}")?;
            }
        }
        write!(f, " of {}:", self.nodes.len())?;
        for (i, node) in self.nodes.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            match self.node_addr(i) {
                Some(addr) => write!(f, "{sep}{addr} {}", node.describe())?,
                None => write!(f, "{sep}node {i} {}", node.describe())?,
            }
            if let NodeResult::Failed(e) = node {
                write!(f, " ({e})")?;
            }
        }
        f.write_str(")")
    }
}

impl std::error::Error for LockError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn addrs() -> Arc<[Box<str>]> {
        ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
            .iter()
            .map(|a| Box::from(*a))
            .collect()
    }

    /// A busy answer names the resource and every node, and does not call the nodes that were
    /// never waited for failed or silent.
    #[test]
    fn a_busy_message_names_the_resource_and_each_node_and_keeps_not_awaited_apart() {
        let nodes: NodeResults = smallvec::smallvec![
            NodeResult::Refused,
            NodeResult::Refused,
            NodeResult::NotAwaited,
        ];
        let key: Key = Key::from_slice(b"orders:42");
        let mut e = LockError::new(LockErrorKind::Busy, nodes);
        e.name(&[key], 0, &addrs());
        let text = e.to_string();
        assert_eq!(
            text,
            "the resource is locked by someone else; resource \"orders:42\" (0 granted, 2 \
             refused, 1 not awaited of 3: 127.0.0.1:7001 refused, 127.0.0.1:7002 refused, \
             127.0.0.1:7003 not awaited)"
        );
        assert!(!text.contains("failed"), "{text}");
        assert!(!text.contains("silent"), "{text}");
        assert_eq!(e.resource(), Some("orders:42"));
        assert_eq!(e.node_addr(2), Some("127.0.0.1:7003"));
    }

    #[test]
    fn failures_and_silence_are_told_apart_with_the_cause() {
        let nodes: NodeResults = smallvec::smallvec![
            NodeResult::Granted,
            NodeResult::Failed(Error::new(ErrorKind::NotConnected)),
            NodeResult::NoReply,
        ];
        let keys = [Key::from_slice(b"a"), Key::from_slice(b"b")];
        let mut e = LockError::new(LockErrorKind::NoQuorum, nodes);
        e.name(&keys, 0, &addrs());
        let e = e.timed_out();
        assert!(e.is_timeout());
        assert_eq!(e.last_attempt(), Some(LockErrorKind::NoQuorum));
        assert_eq!(
            e.to_string(),
            "the acquire time budget ran out; the last attempt: no quorum of nodes agreed; \
             resource \"a\" and 1 more (1 granted, 0 refused, 1 failed, 1 silent of 3: \
             127.0.0.1:7001 granted, 127.0.0.1:7002 failed (not connected), 127.0.0.1:7003 \
             no reply)"
        );
    }
}
