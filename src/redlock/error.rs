//! Lock outcomes a caller can act on without parsing strings.

use std::fmt;

use smallvec::SmallVec;

use crate::error::Error;

/// What one node answered.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeResult {
    /// It said yes (`OK`, or a script's `1`).
    Granted,
    /// It said no: the key is held by another token (or, for release and extend, not ours).
    Refused,
    /// It failed: socket, protocol or server error (`LOADING`, `READONLY`, `OOM`, `NOAUTH` …).
    Failed(Error),
    /// No answer before the deadline.
    NoReply,
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
    /// Infrastructure errors on enough nodes to make a quorum impossible.
    Unavailable,
    /// The quorum came too late: the lock's validity ran out (or fell below the minimum) while
    /// acquiring. It was released.
    Expired,
    /// `acquire` ran out of its total time budget before an attempt could finish.
    Cancelled,
    /// The lock was lost: its validity ran out, or an extension failed.
    Lost,
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

/// A lock operation's failure: the kind, and what each node answered.
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
///                 eprintln!("node {i}: {err}");
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
    nodes: NodeResults,
    reason: &'static str,
}

impl LockError {
    pub(crate) fn new(kind: LockErrorKind, nodes: NodeResults) -> LockError {
        LockError {
            kind,
            nodes,
            reason: "",
        }
    }

    pub(crate) fn invalid(reason: &'static str) -> LockError {
        LockError {
            kind: LockErrorKind::Invalid,
            nodes: NodeResults::new(),
            reason,
        }
    }

    pub(crate) fn with_kind(mut self, kind: LockErrorKind) -> LockError {
        self.kind = kind;
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> LockErrorKind {
        self.kind
    }

    /// What each node answered (empty when no node was asked).
    pub fn nodes(&self) -> &[NodeResult] {
        &self.nodes
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

    /// The acquire time budget ran out.
    pub fn is_cancelled(&self) -> bool {
        self.kind == LockErrorKind::Cancelled
    }

    /// The lock was lost.
    pub fn is_lost(&self) -> bool {
        self.kind == LockErrorKind::Lost
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
            .field("nodes", &self.nodes)
            .field("reason", &self.reason)
            .finish()
    }
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            LockErrorKind::Busy => "the resource is locked by someone else",
            LockErrorKind::NoQuorum => "no quorum of nodes agreed",
            LockErrorKind::Unavailable => "too many nodes are unavailable for a quorum",
            LockErrorKind::Expired => "the lock's validity ran out while acquiring",
            LockErrorKind::Cancelled => "the acquire time budget ran out",
            LockErrorKind::Lost => "the lock was lost",
            LockErrorKind::ExtensionLimit => "the lock reached its extension limit",
            LockErrorKind::Invalid => "invalid lock request",
            LockErrorKind::FenceUnavailable => {
                "fewer than a quorum of nodes kept the resource's fencing counter"
            }
            LockErrorKind::FenceOverflow => "the resource's fencing tokens are used up",
        };
        f.write_str(what)?;
        if !self.reason.is_empty() {
            write!(f, ": {}", self.reason)?;
        }
        let granted = self
            .nodes
            .iter()
            .filter(|n| matches!(n, NodeResult::Granted))
            .count();
        let refused = self
            .nodes
            .iter()
            .filter(|n| matches!(n, NodeResult::Refused))
            .count();
        let failed = self.nodes.len() - granted - refused;
        if !self.nodes.is_empty() {
            write!(
                f,
                " ({granted} granted, {refused} refused, {failed} failed or silent of {})",
                self.nodes.len()
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for LockError {}
