//! What a manager's locks have done: outcome counters and the snapshot
//! [`Redlock::stats`](super::Redlock::stats) returns.
//!
//! One set of counters per manager, shared by its [views](super::Redlock::with_options).
//! Each is a `Relaxed` atomic, incremented once where an operation ends (an attempt decided,
//! a release answered): no lock is taken, and a lock cycle does two increments in all.

use std::sync::atomic::{AtomicU64, Ordering};

use super::error::LockErrorKind;
use crate::conn::ConnectionStats;

/// The manager's counters (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct LockCounters {
    granted: AtomicU64,
    busy: AtomicU64,
    no_quorum: AtomicU64,
    unavailable: AtomicU64,
    expired: AtomicU64,
    fence_unavailable: AtomicU64,
    timeouts: AtomicU64,
    cancelled: AtomicU64,
    extensions_ok: AtomicU64,
    extensions_failed: AtomicU64,
    lost: AtomicU64,
    releases_ok: AtomicU64,
    releases_not_held: AtomicU64,
    releases_failed: AtomicU64,
    released_on_drop: AtomicU64,
    general_path: AtomicU64,
    handed_over: AtomicU64,
}

/// Which counter an event goes to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Count {
    Granted,
    /// An attempt that failed with this kind.
    Failed(LockErrorKind),
    /// An `acquire` whose time budget ran out.
    Timeout,
    /// An attempt dropped before it was decided.
    Cancelled,
    ExtensionOk,
    ExtensionFailed,
    Lost,
    ReleaseOk,
    /// A release that failed with this kind.
    ReleaseFailed(LockErrorKind),
    /// A held lock dropped without a release: released in the background, unconfirmed.
    ReleasedOnDrop,
    /// A lock phase that took the general path (see `LockStats::general_path`).
    GeneralPath,
    /// A lock phase whose requests the group's task sent (see `LockStats::handed_over`).
    HandedOver,
}

impl LockCounters {
    #[inline]
    pub(crate) fn count(&self, what: Count) {
        let counter = match what {
            Count::Granted => &self.granted,
            Count::Failed(LockErrorKind::Busy) => &self.busy,
            Count::Failed(LockErrorKind::Unavailable) => &self.unavailable,
            Count::Failed(LockErrorKind::Expired) => &self.expired,
            Count::Failed(LockErrorKind::FenceUnavailable) => &self.fence_unavailable,
            // `NoQuorum`, and what no attempt of a valid request ends with today (a fence
            // overflow): neither busy nor unavailable.
            Count::Failed(_) => &self.no_quorum,
            Count::Timeout => &self.timeouts,
            Count::Cancelled => &self.cancelled,
            Count::ExtensionOk => &self.extensions_ok,
            Count::ExtensionFailed => &self.extensions_failed,
            Count::Lost => &self.lost,
            Count::ReleaseOk => &self.releases_ok,
            Count::ReleaseFailed(LockErrorKind::NotHeld) => &self.releases_not_held,
            Count::ReleaseFailed(_) => &self.releases_failed,
            Count::ReleasedOnDrop => &self.released_on_drop,
            Count::GeneralPath => &self.general_path,
            Count::HandedOver => &self.handed_over,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LockStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LockStats {
            granted: get(&self.granted),
            busy: get(&self.busy),
            no_quorum: get(&self.no_quorum),
            unavailable: get(&self.unavailable),
            expired: get(&self.expired),
            fence_unavailable: get(&self.fence_unavailable),
            timeouts: get(&self.timeouts),
            cancelled: get(&self.cancelled),
            extensions_ok: get(&self.extensions_ok),
            extensions_failed: get(&self.extensions_failed),
            lost: get(&self.lost),
            releases_ok: get(&self.releases_ok),
            releases_not_held: get(&self.releases_not_held),
            releases_failed: get(&self.releases_failed),
            released_on_drop: get(&self.released_on_drop),
            general_path: get(&self.general_path),
            handed_over: get(&self.handed_over),
        }
    }
}

/// Lock outcomes of one manager (and its views) since it was made.
///
/// Acquires are counted per *attempt*: an [`acquire`](super::Redlock::acquire) that retried
/// three times on a busy key and then got it counts 3 `busy` and 1 `granted`. An acquire whose
/// time budget ran out counts once in `timeouts` besides its attempts; its last attempt, if the
/// budget cut it short, counts by its verdict on the answers it had (often `no_quorum`: a
/// refusal or two is not yet "busy"). Invalid requests (a ttl
/// too small, an empty resource list) are not counted: nothing was sent.
///
/// The counters are read one by one without a common lock, so a snapshot taken while locks
/// are being taken may be a few operations apart between fields.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(redlock: dragonlock::Redlock) {
/// let l = redlock.stats().locks;
/// let attempts = l.granted + l.busy + l.no_quorum + l.unavailable + l.expired;
/// println!("{} of {attempts} attempts granted, {} locks lost", l.granted, l.lost);
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockStats {
    /// Attempts that took the lock.
    pub granted: u64,
    /// Attempts refused because someone else held the lock on too many nodes
    /// ([`LockErrorKind::Busy`]).
    pub busy: u64,
    /// Attempts with mixed answers and no quorum ([`LockErrorKind::NoQuorum`]).
    pub no_quorum: u64,
    /// Attempts that failed because too many nodes were down, failing, or silent until the
    /// lock's validity ran out ([`LockErrorKind::Unavailable`]).
    pub unavailable: u64,
    /// Attempts whose quorum came too late for the lock's validity
    /// ([`LockErrorKind::Expired`]).
    pub expired: u64,
    /// Fenced attempts that found no quorum of fencing counters
    /// ([`LockErrorKind::FenceUnavailable`]).
    pub fence_unavailable: u64,
    /// Acquires whose time budget ran out ([`LockErrorKind::Timeout`]).
    pub timeouts: u64,
    /// Attempts dropped by their caller before they were decided (their keys were released in
    /// the background).
    pub cancelled: u64,
    /// Extensions that a quorum confirmed in time.
    pub extensions_ok: u64,
    /// Extensions that were sent and not confirmed by a quorum in time: each one lost its
    /// lock.
    pub extensions_failed: u64,
    /// Locks found lost while held: a failed extension, an extension asked for after the
    /// validity had run out, or a [`with_lock`](super::Redlock::with_lock) whose validity ran
    /// out while renewals were due. Each lock counts once.
    pub lost: u64,
    /// Releases confirmed by at least a quorum.
    pub releases_ok: u64,
    /// Releases that found the lock no longer held on a quorum ([`LockErrorKind::NotHeld`]):
    /// the work under it may have outlived it.
    pub releases_not_held: u64,
    /// Releases that could not be confirmed for other reasons (nodes down or silent).
    pub releases_failed: u64,
    /// Held locks dropped without a release (the guard's release in the background, whose
    /// answers nobody waits for). With the three release counters above, this accounts for
    /// every granted lock that is no longer held by its caller.
    pub released_on_drop: u64,
    /// Lock phases (an attempt's requests, a release's, an extension's, a fencing counter's)
    /// that took the general path, a future per node, rather than the connection group's op
    /// table, where the group's task decides them: every phase of a manager made
    /// [`from_connections`](super::Redlock::from_connections) or of more than 7 nodes, the
    /// fenced acquire's write (one a fenced attempt: its read of the counters, a future per
    /// node as well, is not counted), and any phase that found the table full (twice as many phases as the largest
    /// `max_in_flight` of the nodes, at most 2,048). An entry is held while its caller waits
    /// for the phase, not until every node answered, so nodes that answer nothing hold none. A
    /// count that keeps rising means more phases at once than the table holds (raise
    /// `max_in_flight`, up to 1,024).
    pub general_path: u64,
    /// Lock phases whose request was handed to the group's task, to be copied to every node,
    /// rather than sent by their caller node by node: single-key acquires, releases (by
    /// script) and extensions that found the task busy. Counted when handed over. Diagnostic only: which way
    /// a phase goes changes nothing it decides.
    pub handed_over: u64,
}

/// A snapshot of a manager: each node's connection and the lock outcomes.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(redlock: dragonlock::Redlock) {
/// let stats = redlock.stats();
/// for node in &stats.nodes {
///     println!("{} {:?} rtt p99 {:?}", node.addr, node.state, node.rtt.p99());
/// }
/// println!("granted {}, busy {}", stats.locks.granted, stats.locks.busy);
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedlockStats {
    /// Each node's connection, in the order the nodes were given.
    pub nodes: Vec<ConnectionStats>,
    /// What this manager's locks did.
    pub locks: LockStats,
}
