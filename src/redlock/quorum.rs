//! The quorum collector: races one reply per node against a deadline, deciding as soon as the
//! outcome is known. Inline storage for up to 7 nodes: nothing is allocated.
//!
//! Two ways to the same decision. [`run_op`] is the lock hot path's: the phase is an op of the
//! connection group's table (`conn/ops.rs`), the driver counts each reply where it reads it,
//! and the caller is woken once, at the decision. [`QuorumCollector`] is the general one: a
//! `ReplyFuture` per node, classified by the caller, for any number of nodes and any reply
//! (the fencing writes, the reseed), and for every phase of a manager whose connections are
//! not one group, or of more than 7 nodes, or that finds the table full (counted in
//! `LockStats::general_path`). The fencing read polls per-node `ReplyFuture`s of its own
//! (`fence.rs`), and is not counted there.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use smallvec::SmallVec;
use tokio::time::Instant;

use super::error::{NodeResult, NodeResults};
use crate::conn::{Answer, Connection, Handed, OpEvent, OpId, OpTable, ReplyFuture, Verdict};
use crate::error::{Error, ErrorKind};
use crate::resp::Frame;

/// How one reply counts.
pub(crate) enum Vote {
    Yes,
    No,
    Fail(Error),
    /// Send the node's request again in another form (NOSCRIPT → EVAL, unknown DELEX → script).
    Retry,
}

impl Vote {
    /// A script that answers `1` where it did its work and `0` where the key was not ours
    /// (extend, the fencing write): `NOSCRIPT` asks for the script's source once more.
    pub(crate) fn of_script_flag(f: &Frame) -> Vote {
        match f {
            Frame::Integer(1) => Vote::Yes,
            Frame::Integer(_) => Vote::No,
            Frame::Error(e) if e.has_code("NOSCRIPT") => Vote::Retry,
            Frame::Error(e) => Vote::Fail(Error::new(ErrorKind::Server(e.clone()))),
            _ => Vote::Fail(Error::new(ErrorKind::UnexpectedReply)),
        }
    }
}

/// How a collection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// A quorum said yes; the instant of the reply that completed it.
    Quorum(Instant),
    /// Too many nodes said no or failed for a quorum to be possible.
    Impossible,
    /// The deadline passed first.
    Deadline,
    /// Every node answered (only when collecting all replies).
    AllDone,
}

impl Decision {
    /// A quorum whose deciding reply still left `min_validity` before `valid_until`: a lock
    /// (or an extension) that may be handed out.
    #[inline]
    pub(crate) fn quorum_in_time(self, min_validity: Duration, valid_until: Instant) -> bool {
        matches!(self, Decision::Quorum(at) if at + min_validity <= valid_until)
    }
}

pub(crate) struct QuorumCollector<'a> {
    pending: SmallVec<[Option<ReplyFuture<'a>>; 7]>,
    retried: SmallVec<[bool; 7]>,
    pub results: NodeResults,
    quorum: usize,
    yes: usize,
    settled: usize,
}

impl<'a> QuorumCollector<'a> {
    pub fn new(nodes: usize, quorum: usize) -> QuorumCollector<'a> {
        QuorumCollector {
            pending: SmallVec::with_capacity(nodes),
            retried: SmallVec::from_elem(false, nodes),
            // Until a node answers it was not awaited; at the deadline the silent ones become
            // `NoReply` (see `run`).
            results: SmallVec::from_elem(NodeResult::NotAwaited, nodes),
            quorum,
            yes: 0,
            settled: 0,
        }
    }

    /// Adds the next node's request (in node order). A request that could not be sent counts as
    /// a failure at once.
    pub fn push(&mut self, sent: Result<ReplyFuture<'a>, Error>) {
        let i = self.pending.len();
        match sent {
            Ok(f) => self.pending.push(Some(f)),
            Err(e) => {
                self.pending.push(None);
                self.results[i] = NodeResult::Failed(e);
                self.settled += 1;
            }
        }
    }

    /// Nodes that said yes.
    pub fn granted(&self) -> usize {
        self.yes
    }

    fn decide(&self, all: bool) -> Option<Decision> {
        let n = self.results.len();
        if all {
            return (self.settled == n).then_some(Decision::AllDone);
        }
        if self.yes >= self.quorum {
            return Some(Decision::Quorum(Instant::now()));
        }
        // Yes votes still possible: the ones given plus the ones not settled yet.
        if self.yes + (n - self.settled) < self.quorum {
            return Some(Decision::Impossible);
        }
        None
    }

    /// Polls every pending reply until the outcome is decided or `deadline` passes. With `all`,
    /// waits for every node (release) instead of stopping at a quorum.
    pub async fn run(
        &mut self,
        deadline: Instant,
        all: bool,
        classify: impl Fn(&Frame) -> Vote,
        mut resend: impl FnMut(usize) -> Result<ReplyFuture<'a>, Error>,
    ) -> Decision {
        let sleep = tokio::time::sleep_until(deadline);
        tokio::pin!(sleep);
        poll_fn(|cx| {
            // One unit of tokio's cooperative budget per decision (given back when this poll
            // decides nothing). A caller whose every request is refused at once (a full slot
            // table, nodes down) decides without waiting; in a retry loop it would then never
            // return `Pending`, and the tasks that could free the slots would not run. Out of
            // budget, it yields instead.
            let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
            if let Some(d) = self.decide(all) {
                coop.made_progress();
                return Poll::Ready(d);
            }
            for i in 0..self.pending.len() {
                let Some(fut) = self.pending[i].as_mut() else {
                    continue;
                };
                let Poll::Ready(reply) = Pin::new(fut).poll(cx) else {
                    continue;
                };
                self.pending[i] = None;
                // A lock reply's attributes (kept only when the decoder is asked to) say
                // nothing of it, here as on the op path (`conn::ops::Rule::classify`).
                let vote = match reply {
                    Ok(frame) => classify(&frame.without_attributes()),
                    Err(e) => Vote::Fail(e),
                };
                let vote = match vote {
                    Vote::Retry if !self.retried[i] => {
                        self.retried[i] = true;
                        match resend(i) {
                            Ok(mut f) => {
                                // Poll it once so it registers its waker.
                                match Pin::new(&mut f).poll(cx) {
                                    Poll::Pending => {
                                        self.pending[i] = Some(f);
                                        continue;
                                    }
                                    Poll::Ready(Ok(frame)) => {
                                        match classify(&frame.without_attributes()) {
                                            Vote::Retry => {
                                                Vote::Fail(Error::new(ErrorKind::UnexpectedReply))
                                            }
                                            v => v,
                                        }
                                    }
                                    Poll::Ready(Err(e)) => Vote::Fail(e),
                                }
                            }
                            Err(e) => Vote::Fail(e),
                        }
                    }
                    Vote::Retry => Vote::Fail(Error::new(ErrorKind::UnexpectedReply)),
                    v => v,
                };
                self.settled += 1;
                self.results[i] = match vote {
                    Vote::Yes => {
                        self.yes += 1;
                        NodeResult::Granted
                    }
                    Vote::No => NodeResult::Refused,
                    Vote::Fail(e) => NodeResult::Failed(e),
                    Vote::Retry => unreachable!(),
                };
                if let Some(d) = self.decide(all) {
                    coop.made_progress();
                    return Poll::Ready(d);
                }
            }
            if sleep.as_mut().poll(cx).is_ready() {
                coop.made_progress();
                // Waited for until the deadline and silent: `NoReply`. Nodes left unanswered
                // by an earlier decision stay `NotAwaited`.
                for (pending, result) in self.pending.iter().zip(self.results.iter_mut()) {
                    if let Some(fut) = pending {
                        fut.count_timeout();
                        *result = NodeResult::NoReply;
                    }
                }
                return Poll::Ready(Decision::Deadline);
            }
            Poll::Pending
        })
        .await
    }
}

/// Whether a node with this result might hold the key: it said yes, it has not answered, or its
/// request went out before its connection failed (it may have run).
pub(crate) fn might_hold(result: &NodeResult) -> bool {
    match result {
        NodeResult::Granted | NodeResult::NoReply | NodeResult::NotAwaited => true,
        NodeResult::Failed(e) => e.maybe_executed(),
        NodeResult::Refused => false,
    }
}

/// Gives the op back to its table if the phase is dropped before it finished (or its sender
/// panicked).
struct OpGuard<'a> {
    table: &'a OpTable,
    id: OpId,
    armed: bool,
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.table.abandon(self.id);
        }
    }
}

/// Runs one lock phase as op `id` of `table` (opened for `nodes.len()` nodes): `send(i, again)`
/// sends node `i`'s request as the op's (`again`: once more, in the form a `NOSCRIPT` or an
/// unknown `DELEX` asked for), and the driver decides. Waits for the verdict or the op's
/// deadline (given to `open`, kept by the group's driver), and returns the decision and the yes
/// votes: what [`QuorumCollector::run`] gives, without a future per node or a timer per phase.
///
/// Each node's result goes into `results` only when `wanted(decision, yes)` says the caller
/// will read them (a failure, for its error): a phase that succeeds builds and moves none.
/// Nodes silent at the deadline are counted in their connection's stats either way.
///
/// `cleanup`: an acquire's clean-up request, for the nodes it is still waiting for when it
/// fails (see `OpTable::finish`); the third value names the nodes it is left to (a bit each),
/// whose clean-up the caller does not send.
///
/// Cancel safe: dropped early, the op is given back to its table, which may reuse its entry at
/// once (the replies still due name the old op, and are dropped).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_op(
    table: &OpTable,
    id: OpId,
    handed: bool,
    nodes: &[Connection],
    mut send: impl FnMut(usize, bool) -> Result<(), Error>,
    results: &mut NodeResults,
    wanted: impl FnOnce(&Decision, usize) -> bool,
    cleanup: Option<impl FnOnce(&mut Handed) -> bool>,
) -> (Decision, usize, u8) {
    // `handed`: the driver sends the requests (see `OpTable::open_handing`), and the table
    // forgets those it has not sent when the op is given back.
    let mut guard = OpGuard {
        table,
        id,
        armed: true,
    };
    if !handed {
        for i in 0..nodes.len() {
            if let Err(e) = send(i, false) {
                table.failed(id, i, e);
            }
        }
    }
    poll_fn(|cx| {
        // One unit of the cooperative budget per decision, as in `QuorumCollector::run`.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            match table.poll(id, cx) {
                Poll::Ready(OpEvent::Decided(_) | OpEvent::Expired) => {
                    coop.made_progress();
                    return Poll::Ready(());
                }
                Poll::Ready(OpEvent::Resend(again)) => {
                    for i in (0..nodes.len()).filter(|i| again & (1 << i) != 0) {
                        if let Err(e) = send(i, true) {
                            table.failed(id, i, e);
                        }
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    // Still armed while `finish` reads the answers: a panic there gives the op back.
    let ((decision, yes, silent), lingering) = table.finish(
        id,
        |verdict, yes, answers| {
            let decision = match verdict {
                Some(Verdict::Quorum(at)) => Decision::Quorum(at),
                Some(Verdict::Impossible) => Decision::Impossible,
                Some(Verdict::AllDone) => Decision::AllDone,
                None => Decision::Deadline,
            };
            let build = wanted(&decision, yes);
            let mut silent = 0u8;
            if build || decision == Decision::Deadline {
                // Filled in node order, in place: no vector of placeholders to clone.
                for i in 0..answers.len() {
                    let result = match answers.take(i) {
                        Answer::Yes => NodeResult::Granted,
                        Answer::No => NodeResult::Refused,
                        Answer::Failed(e) => NodeResult::Failed(e),
                        // Decided before it answered (an answer after the verdict is kept, so
                        // this one had not come when the caller looked): not awaited. Else the
                        // deadline came first,
                        // and it was waited for in vain (the verdict, read under the table's lock,
                        // is the last word: a quorum completed just as the deadline passed still
                        // counts).
                        Answer::Pending | Answer::Retry => {
                            silent |= 1 << i;
                            NodeResult::NotAwaited
                        }
                    };
                    if build {
                        results.push(result);
                    }
                }
            }
            (decision, yes, silent)
        },
        cleanup,
    );
    guard.armed = false;
    if decision == Decision::Deadline {
        for (i, node) in nodes.iter().enumerate() {
            if silent & (1 << i) != 0 {
                if let Some(r) = results.get_mut(i) {
                    *r = NodeResult::NoReply;
                }
                node.count_timeouts(1);
            }
        }
    }
    (decision, yes, lingering)
}
