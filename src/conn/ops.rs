//! Lock phases the driver decides: a quorum without a future per reply.
//!
//! A lock phase (an acquire's `SET`s, a release's compare-and-deletes) sends one request to each
//! node and waits for a decision. On the general path every request gets a `ReplyFuture`, and
//! the caller's quorum collector polls them all, each poll taking its connection's lock, every
//! time the caller is woken. Here a phase is one *op*: an entry of a fixed table that the
//! connections of one group share. Each request's queue entry names the op and the node; the driver
//! classifies the reply where it decodes it, counts it, and wakes the caller once, when the
//! outcome is known: a quorum, a quorum made impossible, or (when asked) every node answered.
//! Replies that come after the decision are classified and dropped in place.
//!
//! ```text
//!             driver: a reply decides              caller: finish()
//!  free --open()--> open -----------------> decided -----------------> caller gone
//!                    |   caller: deadline, or dropped (abandon())          |
//!                    +-----------------------------------------------------+
//!  caller gone and no handed request of the op left to send --> free (generation + 1)
//! ```
//!
//! An op's id ([`OpId`]) is its entry's index and the entry's *generation*, which goes up each
//! time the entry is freed. The requests in a connection's queue name the op by id, so a reply
//! that comes after its op was freed (from a node that answered late, or a stopped node that
//! resumed) names an old generation and is dropped. An entry is therefore freed as soon as its
//! caller is done with it, whatever its nodes still owe: a stopped node holds no entry (it
//! held one per request in flight there, and two such nodes could hold the whole table).
//!
//! Lock order: a driver holds its connection's state lock and then takes this table's; a caller
//! never holds this table's lock while it takes a connection's, so the two cannot deadlock.
//! Nothing here allocates after [`OpTable::new`]: when every entry is in use, `open` says no
//! and the caller takes the general path.
//!
//! Handed requests (`OpTable::open_handing`): while the driver is busy, a phase's request is
//! written once into its entry and the driver copies it to every node (`driver::send_handed`).
//! An acquire's copies not sent by the time its caller gives it back are never sent; a
//! release's are (`HandedMeta::outlive_caller`), and its entry is freed once they are sent.
//! Once the driver is gone, nothing unsent is sent and those entries stay taken, which costs
//! nothing more: the table then opens no op.
//!
//! Late clean-ups: a failed acquire must delete its key wherever it may have set it: the nodes
//! that said yes, and those that had not answered when it was decided. On a contended key the
//! latter almost always answer no a moment later; a clean-up sent to them at once, as the
//! general path does, is a compare-and-delete script that costs the server about seven times
//! the `SET` (2.3 against 0.25 µs a call on redis-server 7.0.15), sent for nothing. So when its
//! caller finishes a failed acquire (`finish` with a clean-up), the entry stays: its request
//! becomes the clean-up, `linger` names the nodes that had not answered, and each one's late
//! reply decides: a yes puts the clean-up on the driver's list for that node (sent after the
//! reply, so after the `SET`); anything else sends nothing. A single key's `SET` stays as it is
//! and is made the clean-up by the first late yes (`Form::CleanupOfSet`): on a
//! contended key that yes is rare, and encoding the clean-up at every failed attempt cost
//! about 300 instructions each (callgrind, 2026-12-02). The entry is freed with the last
//! late reply. A node that stopped answering holds such an entry until it answers or its
//! connection is lost, so at most a quarter of the table is kept this way
//! (`Table::linger_cap`); past it the caller sends its clean-ups at once.
//!
//! Late resends: a release's entry is kept the same way, with its request (the release script
//! by `EVALSHA`, kept even when its caller sent its own copies), so that a node whose late
//! answer is `NOSCRIPT` (a flushed script cache) gets the release again, as `EVAL` with the
//! source the request carries (`HandedMeta::source`). Both are left to the driver only on a
//! group whose op node `i` is its connection `i` (`Redlock`'s `hand_over`).
//!
//! Deadlines: each op has one, and the group's driver keeps them all with a single timer
//! ([`OpTable::drive_deadlines`]), armed for the earliest deadline it knows of. An op past its
//! deadline without a verdict is marked expired and its caller woken. A caller therefore
//! registers no timer of its own: that was a timer-wheel insert and remove per lock phase, and
//! on an idle runtime a wake of the parked I/O driver each time. The timer is re-armed only
//! when an op comes with a deadline earlier than the armed one (rare: later ops mostly have
//! later deadlines) and when it fires (once per earliest deadline; the scan of the table then
//! costs about as much as one phase's timer did). When the driver goes (its runtime shut
//! down, or it panicked), every open op is expired and the table takes no more.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use smallvec::SmallVec;
use tokio::time::{Instant, Sleep};

use crate::error::{Error, ErrorKind};
use crate::resp::{encode_command_inline, Frame, LockReply, SetNxPxCommand};

/// The most nodes an op counts; a larger cluster takes the general path.
pub(crate) const MAX_OP_NODES: usize = 7;

const NIL: u32 = u32::MAX;

/// An op's id: its entry's index in the low [`INDEX_BITS`], the entry's generation above (see
/// the module docs). 53 bits of generation: an entry freed a million times a second reuses a
/// generation after 285 years, so a late reply can never be taken for a later op's.
pub(crate) type OpId = u64;

/// The bits of an [`OpId`] that hold the entry's index.
const INDEX_BITS: u32 = 11;

const _: () = assert!(MAX_OPS <= 1 << INDEX_BITS);

/// The entry of op `id`.
#[inline]
fn index_of(id: OpId) -> usize {
    (id & ((1 << INDEX_BITS) - 1)) as usize
}

/// The most ops one table holds, whatever the group's `max_in_flight`: 2,048 lock phases at once
/// (1.4 MiB with their handed requests), twice the default slots of a node (see
/// `Connection::start_group`); past it, phases take the general path rather than every group
/// holding memory for a million.
pub(crate) const MAX_OPS: usize = 2048;

/// The longest request an op hands to the driver (see [`OpTable::open_handing`]): a `SET`, or a
/// release's or an extension's script call, for keys up to about 80 bytes. A longer one is
/// sent by its caller.
pub(crate) const OP_REQUEST_MAX: usize = 320;

/// An op's request as its caller handed it to the driver: the same bytes for every node, and
/// what the connection checks before it takes them (`meta`, as for a caller's own send).
#[derive(Debug, Default)]
pub(crate) struct Handed {
    pub(crate) request: SmallVec<[u8; OP_REQUEST_MAX]>,
    pub(crate) meta: HandedMeta,
}

/// A request's writer for [`OpTable::open_handing`] and [`OpTable::finish`] when there is
/// none.
pub(crate) type Fill = fn(&mut Handed) -> bool;

/// What a connection checks before it takes a handed request, and how it counts it.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct HandedMeta {
    /// Commands in the request after the first, whose replies are dropped.
    pub(crate) discarded: u8,
    /// An acquire: refused while less than a quarter of the connection's slots is left.
    pub(crate) acquire: bool,
    /// The restart rule: refused on a node up for less than this.
    pub(crate) min_uptime: Option<Duration>,
    /// The round trips' clock when the caller handed it over.
    pub(crate) sent_us: u32,
    /// Sent to every node even after the caller gave the op back (a release: its key must be
    /// deleted on every node that may hold it, as when the caller sent its requests at once).
    /// Without it, what the driver has not sent by then is never sent (an acquire: a `SET`
    /// after its caller gave up could only leave a key behind, and overtake its clean-up).
    pub(crate) outlive_caller: bool,
    /// How the request goes out, or what it is to become.
    pub(crate) form: Form,
    /// The source of the script the request calls by `EVALSHA` (a release's), for that
    /// resend; empty when the request is kept for no resend. Carried with the request, not
    /// looked up on the connection, which may have no scripts registered
    /// (`Redlock::from_connections`). For [`Form::CleanupOfSet`], the release script's.
    pub(crate) source: &'static str,
}

/// The form a handed request goes out in. One field, not a flag each, keeps [`Handed`] at 368
/// bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// As it is written.
    #[default]
    AsIs,
    /// As `EVAL` with the script's source, not as the `EVALSHA` the request is: a release
    /// whose node answered `NOSCRIPT` after its caller went (see `Table::late`).
    WithSource,
    /// Not sent in this form: a failed acquire's kept request is still its `SET`, to be made
    /// the clean-up only when a late reply says the key was set: by `DELEX … IFEQ` when
    /// `source` is empty, else by `EVAL` with `source` (see *Late clean-ups* in the module
    /// docs).
    CleanupOfSet,
}

/// A single key's clean-up, as command arguments: `DELEX key IFEQ token` when `source` is
/// empty, else the release script by `EVAL` with `source`. One list for the size a caller
/// checks when it keeps its `SET` ([`Form::CleanupOfSet`]) and for what `Table::late` writes.
pub(crate) fn single_key_cleanup<'a>(
    source: &'a str,
    key: &'a [u8],
    token: &'a [u8],
) -> SmallVec<[&'a [u8]; 5]> {
    if source.is_empty() {
        SmallVec::from_slice(&[b"DELEX", key, b"IFEQ", token])
    } else {
        SmallVec::from_slice(&[b"EVAL", source.as_bytes(), b"1", key, token])
    }
}

/// How the driver reads a node's reply to an op's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// `SET key token NX PX ttl`: `OK` is a yes, a nil a no.
    SetNx,
    /// A script or `DELEX` that answers how many keys it changed: 1 or more is a yes, 0 a no.
    /// `NOSCRIPT` asks the caller to send the request again with the script's source, and so
    /// does an unknown command when `unknown_retries` (a `DELEX` the node turned out not to
    /// have). Once per node: a second such answer is a failure.
    Count {
        /// An `unknown command` error asks for the request again (see above).
        unknown_retries: bool,
    },
    /// A script that answers `1` where it did its work and another integer (`0`) where it did
    /// not: an extension (the key was not ours), a multi-key acquire (a key was taken).
    /// `NOSCRIPT` asks for the request again with the script's source, once per node. The same
    /// reading as `quorum::Vote::of_script_flag`.
    Flag,
}

impl Rule {
    /// [`classify`](Rule::classify) for a reply read in place: the same answer, without a
    /// frame to build and drop (see `Decoder::lock_reply`).
    fn classify_lock(self, reply: LockReply) -> Answer {
        match (self, reply) {
            (Rule::SetNx, LockReply::Ok) | (Rule::Count { .. } | Rule::Flag, LockReply::One) => {
                Answer::Yes
            }
            (Rule::SetNx, LockReply::Null) | (Rule::Count { .. } | Rule::Flag, LockReply::Zero) => {
                Answer::No
            }
            _ => Answer::Failed(Error::new(ErrorKind::UnexpectedReply)),
        }
    }

    fn classify(self, reply: Result<Frame, Error>) -> Answer {
        let frame = match reply {
            Ok(frame) => frame,
            Err(e) => return Answer::Failed(e),
        };
        // A lock reply's attributes (kept only when the decoder is asked to) say nothing of it.
        match (self, frame.without_attributes()) {
            (Rule::SetNx, f) if f.is_ok() => Answer::Yes,
            (Rule::SetNx, Frame::Null) => Answer::No,
            (Rule::Count { .. }, Frame::Integer(n)) => {
                if n >= 1 {
                    Answer::Yes
                } else {
                    Answer::No
                }
            }
            (Rule::Flag, Frame::Integer(1)) => Answer::Yes,
            (Rule::Flag, Frame::Integer(_)) => Answer::No,
            (Rule::Count { .. } | Rule::Flag, Frame::Error(e)) if e.has_code("NOSCRIPT") => {
                Answer::Retry
            }
            (Rule::Count { unknown_retries }, Frame::Error(e))
                if unknown_retries && e.is_unknown_command() =>
            {
                Answer::Retry
            }
            (_, Frame::Error(e)) => Answer::Failed(Error::new(ErrorKind::Server(e))),
            _ => Answer::Failed(Error::new(ErrorKind::UnexpectedReply)),
        }
    }
}

/// One node's answer in an op.
#[derive(Debug, Default)]
pub(crate) enum Answer {
    /// Not answered (yet).
    #[default]
    Pending,
    Yes,
    No,
    Failed(Error),
    /// Asks for the request again (see [`Rule::Count`]); the driver never leaves this in an
    /// entry, it becomes a resend or a failure.
    Retry,
}

/// One node's answer as an op keeps it: a failure's error is kept apart (`Op::errors`), so
/// counting a yes or a no writes one byte, not a 40-byte [`Answer`] (and drops none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Mark {
    #[default]
    Pending,
    Yes,
    No,
    Failed,
}

/// Each node's answer in an op its caller is finishing (see [`OpTable::finish`]).
pub(crate) struct Answers<'a> {
    marks: &'a [Mark],
    errors: &'a mut [Option<Error>],
}

impl Answers<'_> {
    /// How many nodes the op has.
    pub(crate) fn len(&self) -> usize {
        self.marks.len()
    }

    /// Node `node`'s answer, its error (if any) taken out.
    pub(crate) fn take(&mut self, node: usize) -> Answer {
        match self.marks[node] {
            Mark::Pending => Answer::Pending,
            Mark::Yes => Answer::Yes,
            Mark::No => Answer::No,
            Mark::Failed => Answer::Failed(
                self.errors[node]
                    .take()
                    .unwrap_or_else(|| Error::new(ErrorKind::UnexpectedReply)),
            ),
        }
    }
}

/// How an op was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A quorum said yes; when: a clock reading taken after the reply that completed it was
    /// read (one for the quorums decided under one hold of the table's lock, see
    /// `Table::quorum_at`).
    Quorum(Instant),
    /// Too many nodes said no or failed for a quorum to be possible.
    Impossible,
    /// Every node answered (an op opened with `all`).
    AllDone,
}

/// What a caller's poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    Decided(Verdict),
    /// Send the request to these nodes again (a bit per node), in the form that cannot meet
    /// the answer that asked for it (see [`Rule::Count`]); a send that fails must be reported
    /// with [`OpTable::failed`]. Handed out before the
    /// verdict, when there is one: a release still deletes its key on such a node.
    Resend(u8),
    /// The op's deadline passed without a verdict (or the group's driver went).
    Expired,
}

#[derive(Debug)]
struct Op {
    waker: Option<Waker>,
    /// Each node's answer; a failure's error is in `errors`.
    marks: [Mark; MAX_OP_NODES],
    /// The error of each node marked `Failed`.
    errors: [Option<Error>; MAX_OP_NODES],
    verdict: Option<Verdict>,
    rule: Rule,
    nodes: u8,
    quorum: u8,
    all: bool,
    yes: u8,
    settled: u8,
    /// Nodes sent again once (a bit each), and nodes to send again now.
    retried: u8,
    resend: u8,
    /// The caller still holds the op: until `finish` or `abandon`.
    caller: bool,
    /// When the caller stops waiting for a verdict.
    deadline: Instant,
    /// The driver found the deadline passed without a verdict.
    expired: bool,
    /// Nodes the driver still has to send the handed request to (a bit each); 0 for an op whose
    /// caller sends its own requests.
    unsent: u8,
    /// On the handed list or the driver's own (see [`OpTable::take_handed`]): at most once,
    /// so neither list can outgrow the table.
    queued: bool,
    /// Nodes that answered (a bit each), before the verdict or after it.
    answered: u8,
    /// A failed acquire whose caller is gone: the nodes (a bit each) whose late reply says
    /// whether the entry's request, the attempt's clean-up, goes to them (see *Late
    /// clean-ups* in the module docs).
    linger: u8,
    /// The next free entry, while free.
    next: u32,
    /// Between `open` and `free` (checked: an entry freed twice would loop the free list).
    taken: bool,
    /// This entry's generation: its op's id is `gen << INDEX_BITS | index`. Goes up at each
    /// `Table::free`.
    gen: u64,
}

impl Op {
    /// Whether `id` names the op in this entry and its caller still holds it.
    #[inline]
    fn is_callers(&self, id: OpId) -> bool {
        self.gen == id >> INDEX_BITS && self.caller
    }

    /// Node `node`'s request failed (not sent, or refused): `error` is its answer, kept even
    /// after the verdict (the node never got the request: it cannot hold the key, and its
    /// error explains its part in the outcome). True when it decided the op.
    fn fail(&mut self, node: usize, error: Error, quorum_at: &mut Option<Instant>) -> bool {
        if self.verdict.is_some() {
            self.keep(node, Answer::Failed(error));
            false
        } else {
            self.record(node, Answer::Failed(error), quorum_at)
        }
    }

    /// Keeps `answer` as node `node`'s, even after the verdict (it explains the node's part in
    /// the outcome); returns its mark.
    #[inline(always)]
    fn keep(&mut self, node: usize, answer: Answer) -> Mark {
        let mark = match answer {
            Answer::Yes => Mark::Yes,
            Answer::No => Mark::No,
            Answer::Failed(e) => {
                self.errors[node] = Some(e);
                Mark::Failed
            }
            Answer::Pending | Answer::Retry => unreachable!("not an answer"),
        };
        self.marks[node] = mark;
        self.answered |= 1 << node;
        mark
    }

    /// Counts one node's answer; true when it decided the op.
    /// `quorum_at`: the table's clock reading for quorums (see `Table::quorum_at`). Inlined,
    /// so that the reply's 40-byte `Answer` is never built in memory on the way to its mark.
    #[inline(always)]
    fn record(&mut self, node: usize, answer: Answer, quorum_at: &mut Option<Instant>) -> bool {
        if self.verdict.is_some() {
            return false;
        }
        if self.keep(node, answer) == Mark::Yes {
            self.yes += 1;
        }
        self.settled += 1;
        let n = self.nodes;
        self.verdict = if self.all {
            (self.settled == n).then_some(Verdict::AllDone)
        } else if self.yes >= self.quorum {
            Some(Verdict::Quorum(*quorum_at.get_or_insert_with(Instant::now)))
        } else if self.yes + (n - self.settled) < self.quorum {
            Some(Verdict::Impossible)
        } else {
            None
        };
        self.verdict.is_some()
    }
}

/// The group driver's record of its deadline timer (see [`OpTable::drive_deadlines`]).
#[derive(Debug, Default)]
pub(crate) struct DeadlineTimer {
    /// The deadline the timer is armed for.
    armed: Option<Instant>,
    /// Armed since its last poll: it must be polled to register.
    fresh: bool,
}

/// The ops of one connection group. See the module docs.
#[derive(Debug)]
pub(crate) struct OpTable {
    inner: Mutex<Table>,
    /// The driver must read `wake_at` and leave its waker: set at the start, when `open`
    /// lowers `wake_at`, and after an expiry.
    rearm: AtomicBool,
    /// How many connections share the table: an op's node `i` is the group's connection `i`
    /// only for a phase over all of them, in order (see [`OpTable::group_size`]).
    group: usize,
}

#[derive(Debug)]
pub(crate) struct Table {
    ops: Box<[Op]>,
    /// Each op's handed request, by id: apart from `ops`, which every reply reads.
    requests: Box<[Handed]>,
    /// Ops handed over since the driver last looked (see [`OpTable::take_handed`]).
    handed: Vec<u32>,
    /// The driver found nothing to do and waits: ops are not handed to it then (their callers
    /// send their own requests, and those wake it). Set and read under this lock, so a handed
    /// op is never left for a driver that will not look.
    driver_parked: bool,
    free: u32,
    /// The earliest deadline the driver's timer must fire for: lowered by `open`, computed
    /// afresh by `expire`. `None`: no open op needs the timer.
    wake_at: Option<Instant>,
    /// The group driver's waker, to re-arm its timer.
    driver: Option<Waker>,
    /// The driver is gone: every op was expired, and `open` says no.
    gone: bool,
    /// Entries kept for late clean-ups (`Op::linger` not 0): at most [`Table::linger_cap`].
    lingering: usize,
    /// When the first quorum decided under this hold of the lock was: read at that quorum, and
    /// forgotten when the lock is taken again (`OpTable::lock`). The driver counts replies
    /// only after reading them, so this one clock reading, taken after every reply counted
    /// under the hold had arrived, is a conservative time for each quorum the hold decides:
    /// one reading for a batch of replies, not one per quorum (two a lock cycle).
    quorum_at: Option<Instant>,
}

impl Table {
    /// Gives entry `index` back: the op in it is gone, and replies still to come for it name
    /// an old generation.
    fn free(&mut self, index: usize) {
        let op = &mut self.ops[index];
        debug_assert!(
            op.taken && !op.caller && op.unsent == 0 && op.linger == 0,
            "entry {index} freed twice, or while its caller, its unsent requests or its late \
             replies hold it"
        );
        op.taken = false;
        op.gen = (op.gen + 1) & (u64::MAX >> INDEX_BITS);
        op.waker = None;
        // No error outlives its op (one may hold a read buffer's bytes).
        if op.marks.contains(&Mark::Failed) {
            op.errors = Default::default();
        }
        op.marks = Default::default();
        op.verdict = None;
        op.next = self.free;
        self.free = index as u32;
    }

    /// The id of the op now in entry `index`.
    fn id_at(&self, index: usize) -> OpId {
        self.ops[index].gen << INDEX_BITS | index as u64
    }

    /// The driver read node `node`'s reply to op `id`: counts it, and returns the caller's
    /// waker when the caller must look (the op is decided, or a node must be sent again).
    pub(crate) fn answer(
        &mut self,
        id: OpId,
        node: u8,
        reply: Result<Frame, Error>,
    ) -> Option<Waker> {
        self.answer_with(id, node, |rule| rule.classify(reply))
    }

    /// The op in entry `index` (from the driver's list) and its handed request, when that is
    /// still to be sent to `node`.
    pub(crate) fn unsent_request(&self, index: u32, node: u8) -> Option<(OpId, &Handed)> {
        let index = index as usize;
        let op = &self.ops[index];
        (op.unsent & (1 << node) != 0).then(|| (self.id_at(index), &self.requests[index]))
    }

    /// The handed request of the op in entry `index` went into `node`'s buffer: its reply
    /// counts as any other's. The entry of an op whose caller is gone is freed with its last
    /// request sent.
    pub(crate) fn handed_sent(&mut self, index: u32, node: u8) {
        self.ops[index as usize].unsent &= !(1 << node);
        self.free_if_settled(index as usize);
    }

    /// The handed request of the op in entry `index` could not be sent to `node`: `error` is
    /// that node's answer (as [`OpTable::failed`]). Returns the caller's waker when that
    /// decided the op.
    pub(crate) fn handed_failed(&mut self, index: u32, node: u8, error: Error) -> Option<Waker> {
        let op = &mut self.ops[index as usize];
        op.unsent &= !(1 << node);
        if !op.caller {
            // An op that outlived its caller: that node owes no late reply now (found by
            // review: a release's unsent copy refused there held the entry for good), and the
            // entry is freed with its last request settled.
            self.unlinger(index as usize, node);
            self.free_if_settled(index as usize);
            return None;
        }
        if op.fail(usize::from(node), error, &mut self.quorum_at) {
            op.waker.take()
        } else {
            None
        }
    }

    /// Frees entry `index` once its caller is gone, nothing is left to send and no late reply
    /// is awaited. Inlined: it runs for every handed request sent, and almost always finds the
    /// caller still there.
    #[inline(always)]
    fn free_if_settled(&mut self, index: usize) {
        let op = &self.ops[index];
        if !op.caller && op.unsent == 0 && op.linger == 0 {
            self.free(index);
        }
    }

    /// The most entries kept for late clean-ups: a quarter of the table, so that nodes that
    /// stopped answering (each failed acquire then waits for their replies) leave the other
    /// three quarters to the phases that run meanwhile. Past it, the caller sends its clean-ups
    /// at once, as on the general path.
    fn linger_cap(&self) -> usize {
        self.ops.len() / 4
    }

    /// The nodes of entry `index` that have not answered (a bit each), less those whose
    /// `NOSCRIPT` came already and asked for a resend its caller did not make.
    fn unanswered(&self, index: usize) -> u8 {
        let op = &self.ops[index];
        let all = ((1u16 << op.nodes) - 1) as u8;
        all & !op.answered & !op.resend
    }

    /// A failed acquire's caller is done with entry `index`: keeps the entry for the late
    /// replies of the nodes that had not answered, with the clean-up `fill` writes as its
    /// request, and returns those nodes (a bit each), for which the caller sends nothing. 0 when
    /// every node answered, the entries for this are all in use, or the request does not fit:
    /// the caller then sends its clean-ups itself.
    #[cold]
    fn linger(&mut self, index: usize, fill: impl FnOnce(&mut Handed) -> bool) -> u8 {
        if self.lingering >= self.linger_cap() {
            return 0;
        }
        // An acquire's unsent copies are dropped with its caller: those nodes owe nothing.
        let waiting = self.unanswered(index) & !self.ops[index].unsent;
        if waiting == 0 {
            return 0;
        }
        // `fill` writes the clean-up, or leaves the `SET` and marks it `Form::CleanupOfSet`.
        let entry = &mut self.requests[index];
        entry.meta.form = Form::AsIs;
        entry.meta.source = "";
        if !fill(entry) || entry.request.is_empty() || entry.request.spilled() {
            entry.request = SmallVec::new();
            entry.meta.form = Form::AsIs;
            return 0;
        }
        let meta = &mut entry.meta;
        meta.discarded = 0;
        meta.acquire = false;
        meta.min_uptime = None;
        meta.sent_us = 0;
        meta.outlive_caller = true;
        let op = &mut self.ops[index];
        op.unsent = 0;
        op.linger = waiting;
        self.lingering += 1;
        waiting
    }

    /// Entry `index`'s kept `SET` becomes its clean-up (see [`Form::CleanupOfSet`]); the
    /// request is left empty if it is not a `SET` or the clean-up does not fit (the size was
    /// checked when it was kept).
    #[cold]
    fn cleanup_of_set(&mut self, index: usize) {
        let entry = &mut self.requests[index];
        entry.meta.form = Form::AsIs;
        let set = entry.request.clone();
        entry.request.clear();
        let Some((key, token)) = SetNxPxCommand::key_and_token(&set) else {
            return;
        };
        // False leaves the request empty.
        let call = single_key_cleanup(entry.meta.source, key, token);
        encode_command_inline(&mut entry.request, &call);
    }

    /// A release's caller is done with entry `index` (its request, the release script by
    /// `EVALSHA`, is the same on every node and was kept in the entry, handed or not): keeps
    /// the entry for the nodes that still owe their reply, so that one answering `NOSCRIPT` (a
    /// flushed script cache) gets the release again, with the script's source (see
    /// [`late`](Table::late)).
    /// A `NOSCRIPT` that came between the verdict and now asked for a resend the caller did not
    /// make: that one goes at once. Nothing is copied or encoded here: a release at its quorum
    /// pays a look at its marks, and the entry is freed with the last late reply.
    fn linger_release(&mut self, index: usize) {
        let meta = &self.requests[index].meta;
        if !meta.outlive_caller || meta.source.is_empty() {
            // No request kept (a release by `DELEX`, or on a group out of order).
            return;
        }
        // A release's unsent copies still go (by `EVALSHA`, or as `EVAL` once one node asked):
        // those nodes owe a reply too.
        let waiting = self.unanswered(index);
        let op = &mut self.ops[index];
        let now = std::mem::take(&mut op.resend);
        if now != 0 {
            self.resend_with_source(index, now);
        }
        if waiting != 0 && self.lingering < self.linger_cap() {
            self.ops[index].linger = waiting;
            self.lingering += 1;
        }
    }

    /// Entry `index`'s release goes again to `nodes` (a bit each), as `EVAL` with the script's
    /// source.
    #[cold]
    fn resend_with_source(&mut self, index: usize, nodes: u8) {
        self.requests[index].meta.form = Form::WithSource;
        self.send_kept(index, nodes);
    }

    /// Entry `index`'s kept request (a clean-up, or a release to send again) goes to `nodes` (a
    /// bit each), from the driver's list (see `take_handed`), as a handed request.
    #[cold]
    fn send_kept(&mut self, index: usize, nodes: u8) {
        self.requests[index].meta.sent_us = super::now_us();
        let op = &mut self.ops[index];
        op.unsent |= nodes;
        if !op.queued {
            op.queued = true;
            self.handed.push(index as u32);
            // A parked driver looks at its list when woken (called from a late reply, the
            // driver is running, and the wake costs it one more look).
            if let Some(w) = &self.driver {
                w.wake_by_ref();
            }
        }
    }

    /// Node `node`'s late reply to an op whose entry waits for it:
    /// - a failed acquire's `SET` (or multi-key script): a yes set the key there after the
    ///   caller gave up, so the entry's clean-up goes to that node at the driver's next write
    ///   (after the reply, so after the `SET`). Any other answer set nothing: a nil or a 0,
    ///   `NOSCRIPT` (the script did not run), a server error, or the connection lost. The last
    ///   is the one case where the key may be left on that node until its ttl: the clean-up
    ///   could only go out on the next connection, and the node is being reconnected (a
    ///   request to it is refused meanwhile).
    /// - a handed release (decided, or dropped, before this node answered): `NOSCRIPT` (a
    ///   flushed script cache) deleted nothing, so the release goes again, with the script's
    ///   source, as its caller would have sent it. Without it the key stayed on that node for
    ///   its ttl (found by review: 38 of 50 keys left with a cache flushed before each
    ///   release).
    #[cold]
    fn late(&mut self, index: usize, node: u8, answer: Answer) {
        let bit = 1u8 << node;
        self.unlinger(index, node);
        let op = &mut self.ops[index];
        match (op.rule, answer) {
            (Rule::Count { .. }, Answer::Retry) => self.resend_with_source(index, bit),
            (Rule::SetNx | Rule::Flag, Answer::Yes) => {
                if self.requests[index].meta.form == Form::CleanupOfSet {
                    self.cleanup_of_set(index);
                }
                // Empty when it could not be made: nothing to send (an empty request would
                // wait for a reply that never comes).
                if !self.requests[index].request.is_empty() {
                    self.send_kept(index, bit);
                }
            }
            _ => {}
        }
        self.free_if_settled(index);
    }

    /// Node `node` of entry `index` owes no late reply any more: its bit leaves `linger`, and
    /// the entry leaves the count of those kept when it was the last.
    fn unlinger(&mut self, index: usize, node: u8) {
        let op = &mut self.ops[index];
        let bit = 1u8 << node;
        if op.linger & bit != 0 {
            op.linger &= !bit;
            if op.linger == 0 {
                self.lingering -= 1;
            }
        }
    }

    /// The caller is done with the op in entry `index`: requests the driver has not sent yet
    /// never will be (their nodes never saw the op); but those of an op that outlives its
    /// caller (`HandedMeta::outlive_caller`) are still sent. The entry is freed now, or, with
    /// requests still to send, once they are.
    #[inline]
    fn give_back(&mut self, index: usize) {
        let outlive = self.requests[index].meta.outlive_caller;
        let op = &mut self.ops[index];
        if !outlive {
            op.unsent = 0;
        }
        op.caller = false;
        op.waker = None;
        self.free_if_settled(index);
    }

    /// [`answer`](Table::answer) for a reply read in place. Inlined into the driver's read
    /// loop, which calls it for every lock reply.
    #[inline]
    pub(crate) fn answer_lock(&mut self, id: OpId, node: u8, reply: LockReply) -> Option<Waker> {
        self.answer_with(id, node, |rule| rule.classify_lock(reply))
    }

    #[inline(always)]
    fn answer_with(
        &mut self,
        id: OpId,
        node: u8,
        classify: impl FnOnce(Rule) -> Answer,
    ) -> Option<Waker> {
        let op = &mut self.ops[index_of(id)];
        let bit = 1u8 << node;
        // A reply to an op since freed (its entry may hold a later op), or to one whose caller
        // is gone (it still has handed requests to send): nobody waits for it. Unless it is
        // the late reply a failed acquire's clean-up or a release's resend waits for.
        if !op.is_callers(id) {
            if op.linger & bit != 0 && op.gen == id >> INDEX_BITS {
                let rule = op.rule;
                self.late(index_of(id), node, classify(rule));
            }
            return None;
        }
        let answer = match classify(op.rule) {
            // Even after the verdict: a release that met `NOSCRIPT` on a node still has a key
            // to delete there, and its caller (woken by the verdict, or about to be) sends it
            // again before it finishes. Its answer then is not awaited.
            Answer::Retry if op.retried & bit == 0 => {
                op.retried |= bit;
                op.resend |= bit;
                return op.waker.take();
            }
            Answer::Retry => Answer::Failed(Error::new(ErrorKind::UnexpectedReply)),
            answer => answer,
        };
        if op.verdict.is_some() {
            // Kept, not counted: the caller then knows that this node answered, and whether
            // it set the key there (a failed acquire's clean-up goes only where it may have).
            op.keep(usize::from(node), answer);
            return None;
        }
        if op.record(usize::from(node), answer, &mut self.quorum_at) {
            op.waker.take()
        } else {
            None
        }
    }
}

impl OpTable {
    /// A table of `capacity` ops: the only allocation it makes.
    pub(crate) fn new(capacity: usize) -> OpTable {
        let capacity = capacity.clamp(1, MAX_OPS);
        let epoch = Instant::now();
        let ops = (0..capacity)
            .map(|i| Op {
                waker: None,
                marks: Default::default(),
                errors: Default::default(),
                verdict: None,
                rule: Rule::SetNx,
                nodes: 0,
                quorum: 0,
                all: false,
                yes: 0,
                settled: 0,
                retried: 0,
                resend: 0,
                caller: false,
                deadline: epoch,
                expired: false,
                unsent: 0,
                queued: false,
                answered: 0,
                linger: 0,
                next: if i + 1 < capacity { i as u32 + 1 } else { NIL },
                taken: false,
                gen: 0,
            })
            .collect();
        OpTable {
            inner: Mutex::new(Table {
                ops,
                requests: (0..capacity).map(|_| Handed::default()).collect(),
                handed: Vec::with_capacity(capacity),
                driver_parked: true,
                free: 0,
                wake_at: None,
                driver: None,
                gone: false,
                lingering: 0,
                quorum_at: None,
            }),
            rearm: AtomicBool::new(true),
            group: 0,
        }
    }

    /// The table of a group of `connections` connections.
    pub(crate) fn in_group_of(mut self, connections: usize) -> OpTable {
        self.group = connections;
        self
    }

    /// How many connections share the table. The driver sends a handed request to the
    /// group's connection `i` as the op's node `i`, so only a phase whose nodes are the whole
    /// group, in its order, may hand its requests over.
    pub(crate) fn group_size(&self) -> usize {
        self.group
    }

    /// How many ops the table holds.
    pub(crate) fn capacity(&self) -> usize {
        self.lock().ops.len()
    }

    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, Table> {
        // Every mutation is a few plain assignments: a panic leaves the table consistent.
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.quorum_at = None;
        t
    }

    /// Opens an op for one request to each of `nodes` nodes: report a request that could not
    /// be sent with [`failed`](OpTable::failed). Its caller is woken with [`Event::Expired`]
    /// once `deadline` passed without a verdict. `None` when every
    /// entry is in use, for more than [`MAX_OP_NODES`] nodes, or when the group's driver is
    /// gone.
    pub(crate) fn open(
        &self,
        rule: Rule,
        nodes: usize,
        quorum: usize,
        all: bool,
        deadline: Instant,
    ) -> Option<OpId> {
        self.open_handing(rule, nodes, quorum, all, deadline, None::<(_, Fill)>)
            .map(|(id, _)| id)
    }

    /// [`open`](OpTable::open), and with `hand`, hands the op's requests to the driver when it
    /// is busy: `fill` writes the request into the op's entry (false: it does not fit), and
    /// the driver sends it to every node at its next write, one copy per node, with the checks
    /// a caller's send makes (see `driver::send_handed`). The second value says whether it was
    /// handed over; if not, the caller sends its own requests, as after `open`. A driver that
    /// waits for work is not handed anything: a caller's own send wakes it, or writes to the
    /// socket itself, which is what one caller at a time wants.
    pub(crate) fn open_handing<F: FnOnce(&mut Handed) -> bool>(
        &self,
        rule: Rule,
        nodes: usize,
        quorum: usize,
        all: bool,
        deadline: Instant,
        hand: Option<(HandedMeta, F)>,
    ) -> Option<(OpId, bool)> {
        if nodes == 0 || nodes > MAX_OP_NODES || quorum > nodes {
            return None;
        }
        let mut guard = self.lock();
        let t = &mut *guard;
        if t.free == NIL || t.gone {
            return None;
        }
        let index = t.free as usize;
        let id = t.id_at(index);
        let op = &mut t.ops[index];
        t.free = op.next;
        // A free entry has no waker, no verdict, nothing unsent and every answer `Pending` (see
        // `Table::free`): only the rest is set, not the 280 bytes of errors.
        debug_assert!(op.waker.is_none() && op.verdict.is_none() && op.unsent == 0);
        debug_assert!(op.marks.iter().all(|m| *m == Mark::Pending));
        debug_assert!(op.errors.iter().all(Option::is_none));
        op.rule = rule;
        op.nodes = nodes as u8;
        op.quorum = quorum as u8;
        op.all = all;
        op.yes = 0;
        op.settled = 0;
        op.retried = 0;
        op.answered = 0;
        op.resend = 0;
        op.caller = true;
        op.taken = true;
        op.deadline = deadline;
        op.expired = false;
        op.next = NIL;
        let mut handed = false;
        // A request not handed over is its caller's to send: nothing for the driver to keep.
        t.requests[index].meta.outlive_caller = false;
        // A request that outlives its caller (a release's) is kept in the entry even when the
        // caller sends its own: a node that answers `NOSCRIPT` after the caller went gets it
        // again (see `Table::linger_release`).
        if let Some((meta, fill)) = hand.filter(|(m, _)| !t.driver_parked || m.outlive_caller) {
            let entry = &mut t.requests[index];
            entry.request.clear();
            if fill(entry) && !entry.request.is_empty() && !entry.request.spilled() {
                entry.meta = meta;
                if !t.driver_parked {
                    op.unsent = ((1u16 << nodes) - 1) as u8;
                    // Still on the driver's list (an earlier op of this entry's): it looks there.
                    if !op.queued {
                        op.queued = true;
                        t.handed.push(index as u32);
                    }
                    handed = true;
                }
            }
        }
        // The driver's timer is armed for `wake_at`; only an earlier deadline re-arms it.
        let mut driver = None;
        if t.wake_at.is_none_or(|at| deadline < at) {
            t.wake_at = Some(deadline);
            self.rearm.store(true, Ordering::Release);
            driver = t.driver.clone();
        }
        drop(guard);
        if let Some(w) = driver {
            w.wake();
        }
        Some((id, handed))
    }

    /// The driver's turn begins: the ops handed over since its last look go onto its own list
    /// `pending` (which it keeps until each has been sent everywhere), and ops are handed to it
    /// again from now on.
    pub(crate) fn take_handed(&self, pending: &mut Vec<u32>) {
        let mut t = self.lock();
        t.driver_parked = false;
        pending.append(&mut t.handed);
    }

    /// The driver is about to wait for work: true when nothing was handed to it meanwhile, and
    /// then nothing is until its next turn (see `driver_parked`).
    pub(crate) fn park_driver(&self) -> bool {
        let mut t = self.lock();
        t.driver_parked = t.handed.is_empty();
        t.driver_parked
    }

    /// Keeps on `pending` the ops with nodes still to send to (a node whose buffer was full, or
    /// that was mid-write); the rest leave the driver's list.
    pub(crate) fn retain_pending(&self, pending: &mut Vec<u32>) {
        let mut t = self.lock();
        pending.retain(|&id| {
            let op = &mut t.ops[id as usize];
            op.queued = op.unsent != 0;
            op.queued
        });
    }

    /// A request of op `id` to `node` was not sent: `error` is that node's answer (see
    /// `Op::fail`).
    pub(crate) fn failed(&self, id: OpId, node: usize, error: Error) {
        let mut guard = self.lock();
        let t = &mut *guard;
        let op = &mut t.ops[index_of(id)];
        debug_assert!(op.is_callers(id), "op {id} is not its caller's");
        op.fail(node, error, &mut t.quorum_at);
    }

    /// The caller's look: the verdict once there is one, nodes to send again, or `Pending`
    /// with the caller's waker registered.
    pub(crate) fn poll(&self, id: OpId, cx: &mut Context<'_>) -> Poll<Event> {
        let mut t = self.lock();
        let op = &mut t.ops[index_of(id)];
        debug_assert!(op.is_callers(id), "op {id} is not its caller's");
        // Resends first, even once decided (see `Table::answer`).
        if op.resend != 0 {
            return Poll::Ready(Event::Resend(std::mem::take(&mut op.resend)));
        }
        if let Some(v) = op.verdict {
            return Poll::Ready(Event::Decided(v));
        }
        if op.expired {
            return Poll::Ready(Event::Expired);
        }
        match &op.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => op.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The caller is done with op `id`: hands `read` the verdict (`None`: the deadline came
    /// first), the yes votes and each node's answer (in node order; `Pending` for those that
    /// did not answer before the verdict or the deadline; `read` may take them), and gives the
    /// entry back (see `Table::give_back`). The verdict read here, under the table's lock, is
    /// the last word.
    ///
    /// `cleanup`, for an acquire of a group's nodes (node `i` of the op is the group's
    /// connection `i`): when the acquire failed (no quorum, or the deadline came first), the
    /// entry stays for the replies still to come, and `cleanup` writes the request the driver
    /// then sends to each node whose late reply is a yes (see *Late clean-ups* in the module
    /// docs). The second value names those nodes (a bit each): their clean-up is no longer the
    /// caller's to send. 0 when the entry was given back at once. A release whose request was
    /// kept stays for its unanswered nodes without a `cleanup` (see `Table::linger_release`).
    pub(crate) fn finish<R>(
        &self,
        id: OpId,
        read: impl FnOnce(Option<Verdict>, usize, &mut Answers<'_>) -> R,
        cleanup: Option<impl FnOnce(&mut Handed) -> bool>,
    ) -> (R, u8) {
        let mut t = self.lock();
        let index = index_of(id);
        let op = &mut t.ops[index];
        debug_assert!(op.is_callers(id), "op {id} is not its caller's");
        let nodes = usize::from(op.nodes);
        let mut answers = Answers {
            marks: &op.marks[..nodes],
            errors: &mut op.errors[..nodes],
        };
        let verdict = op.verdict;
        let read = read(verdict, usize::from(op.yes), &mut answers);
        let release = matches!(op.rule, Rule::Count { .. });
        let lingering = match cleanup {
            _ if release => {
                t.linger_release(index);
                0
            }
            Some(fill) if matches!(verdict, None | Some(Verdict::Impossible)) => {
                t.linger(index, fill)
            }
            _ => 0,
        };
        t.give_back(index);
        (read, lingering)
    }

    /// The caller went away without [`finish`](OpTable::finish): the entry is given back (see
    /// `Table::give_back`).
    pub(crate) fn abandon(&self, id: OpId) {
        let mut t = self.lock();
        let index = index_of(id);
        let op = &t.ops[index];
        let its_callers = op.is_callers(id);
        debug_assert!(its_callers, "op {id} is not its caller's");
        // Never another op's entry, whatever a caller's bug (a release build keeps the check).
        if its_callers {
            t.give_back(index);
        }
    }

    /// The group driver's side of the deadlines, called on each of its polls: re-arms `sleep`
    /// when an op came with an earlier deadline, and when it fired, expires every op past its
    /// deadline without a verdict and re-arms it for the earliest deadline left. `sleep` is
    /// polled only when it was just armed or has fired (`Sleep::is_elapsed`, one atomic load),
    /// so a driver woken for its sockets pays nothing here.
    pub(crate) fn drive_deadlines(
        &self,
        cx: &mut Context<'_>,
        mut sleep: Pin<&mut Sleep>,
        timer: &mut DeadlineTimer,
    ) {
        loop {
            if self.rearm.swap(false, Ordering::AcqRel) {
                let at = {
                    let mut t = self.lock();
                    if !t.driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        t.driver = Some(cx.waker().clone());
                    }
                    t.wake_at
                };
                if at != timer.armed {
                    timer.armed = at;
                    if let Some(at) = at {
                        sleep.as_mut().reset(at);
                        timer.fresh = true;
                    }
                }
            }
            if timer.armed.is_none() || !(timer.fresh || sleep.is_elapsed()) {
                return;
            }
            timer.fresh = false;
            // Polled without the cooperative budget: a `Sleep` that runs out of budget returns
            // `Pending` without registering the waker, and nothing would poll it again.
            let mut unbudgeted = tokio::task::coop::unconstrained(sleep.as_mut());
            if Pin::new(&mut unbudgeted).poll(cx).is_pending() {
                return;
            }
            timer.armed = None;
            self.expire(Some(Instant::now()));
            // Read the new `wake_at` (the loop ends: every deadline left is after `now`).
            self.rearm.store(true, Ordering::Release);
        }
    }

    /// Marks every op past its deadline at `now` (every op, for `None`) without a verdict expired, wakes its caller,
    /// and sets `wake_at` to the earliest deadline left.
    fn expire(&self, now: Option<Instant>) {
        const BATCH: usize = 32;
        let mut at = 0;
        let mut next: Option<Instant> = None;
        self.lock().wake_at = None;
        loop {
            // Woken outside the lock, a batch at a time, so that callers woken do not run into
            // it; `open` meanwhile lowers `wake_at` as usual, and it is merged below.
            let mut wakers: [Option<Waker>; BATCH] = Default::default();
            let mut n = 0;
            let done = {
                let mut t = self.lock();
                while at < t.ops.len() && n < BATCH {
                    let op = &mut t.ops[at];
                    at += 1;
                    if !op.caller || op.verdict.is_some() || op.expired {
                        continue;
                    }
                    if now.is_none_or(|now| op.deadline <= now) {
                        op.expired = true;
                        wakers[n] = op.waker.take();
                        n += 1;
                    } else if next.is_none_or(|n| op.deadline < n) {
                        next = Some(op.deadline);
                    }
                }
                let done = at == t.ops.len();
                if done {
                    t.wake_at = [t.wake_at, next].into_iter().flatten().min();
                }
                done
            };
            for w in wakers.into_iter().flatten() {
                w.wake();
            }
            if done {
                return;
            }
        }
    }

    /// The group's driver is gone: every open op expires now, and no more are opened (their
    /// deadlines would have nobody to keep them).
    pub(crate) fn driver_gone(&self) {
        self.lock().gone = true;
        self.expire(None);
    }

    /// Entries in use (for tests).
    #[cfg(test)]
    fn used(&self) -> usize {
        let t = self.lock();
        let mut free = 0;
        let mut at = t.free;
        while at != NIL {
            free += 1;
            at = t.ops[at as usize].next;
        }
        t.ops.len() - free
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::ServerError;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn far() -> Instant {
        Instant::now() + std::time::Duration::from_secs(3600)
    }

    fn ok() -> Result<Frame, Error> {
        Ok(Frame::Simple(bytes::Bytes::from_static(b"OK")))
    }

    fn poll(t: &OpTable, id: OpId, w: &Arc<Count>) -> Poll<Event> {
        let waker = Waker::from(w.clone());
        t.poll(id, &mut Context::from_waker(&waker))
    }

    fn answers(t: &OpTable, id: OpId) -> (Option<Verdict>, usize, Vec<String>) {
        let mut seen = Vec::new();
        let ((v, yes), _) = t.finish(
            id,
            |v, yes, answers| {
                seen.extend((0..answers.len()).map(|i| format!("{:?}", answers.take(i))));
                (v, yes)
            },
            None::<Fill>,
        );
        (v, yes, seen)
    }

    /// Attributes (kept only when the decoder is asked to) do not change a lock reply's meaning.
    #[test]
    fn an_attributed_lock_reply_is_read_as_its_value() {
        let attributed = |value: Frame| {
            Ok(Frame::Attributed {
                attributes: vec![(Frame::Simple("k".into()), Frame::Simple("v".into()))],
                value: Box::new(value),
            })
        };
        let ok = Frame::Simple(bytes::Bytes::from_static(b"OK"));
        assert!(matches!(Rule::SetNx.classify(attributed(ok)), Answer::Yes));
        assert!(matches!(
            Rule::SetNx.classify(attributed(Frame::Null)),
            Answer::No
        ));
        assert!(matches!(
            Rule::Flag.classify(attributed(Frame::Integer(1))),
            Answer::Yes
        ));
        let count = Rule::Count {
            unknown_retries: false,
        };
        assert!(matches!(
            count.classify(attributed(Frame::Integer(0))),
            Answer::No
        ));
    }

    /// The entry of op `id`, as the driver's list names it.
    fn index(id: OpId) -> u32 {
        index_of(id) as u32
    }

    #[test]
    fn a_quorum_wakes_the_caller_once_and_a_late_reply_is_not_taken_for_the_next_op() {
        let t = OpTable::new(2);
        let w = Arc::new(Count::default());
        let id = t.open(Rule::SetNx, 5, 3, false, far()).unwrap();
        assert!(poll(&t, id, &w).is_pending());
        for node in 0..2 {
            assert!(t.lock().answer(id, node, ok()).is_none(), "not decided yet");
        }
        assert!(t.lock().answer(id, 2, Ok(Frame::Null)).is_none());
        let waker = t.lock().answer(id, 3, ok()).expect("the third yes decides");
        waker.wake();
        assert_eq!(w.0.load(Ordering::SeqCst), 1);
        let Poll::Ready(Event::Decided(Verdict::Quorum(_))) = poll(&t, id, &w) else {
            panic!("decided")
        };
        let (v, yes, seen) = answers(&t, id);
        assert!(matches!(v, Some(Verdict::Quorum(_))));
        assert_eq!(yes, 3);
        assert_eq!(seen, ["Yes", "Yes", "No", "Yes", "Pending"]);
        assert_eq!(
            t.used(),
            0,
            "freed at once, though node 4 still owes its reply"
        );
        // The entry holds a later op of one node, which one yes decides: node 4's late `OK`,
        // and one for node 0, name the old op and must not count for it.
        let next = t.open(Rule::SetNx, 1, 1, false, far()).unwrap();
        assert_eq!(index_of(next), index_of(id), "the same entry");
        assert_ne!(next, id, "another generation");
        assert!(t.lock().answer(id, 4, ok()).is_none());
        assert!(t.lock().answer(id, 0, ok()).is_none());
        assert!(
            poll(&t, next, &w).is_pending(),
            "not decided by a stale reply"
        );
        assert!(
            t.lock().answer(next, 0, ok()).is_some(),
            "its own reply decides it"
        );
    }

    #[test]
    fn refusals_make_a_quorum_impossible_before_every_node_answered() {
        let t = OpTable::new(1);
        let id = t.open(Rule::SetNx, 3, 2, false, far()).unwrap();
        let w = Arc::new(Count::default());
        assert!(poll(&t, id, &w).is_pending());
        assert!(t.lock().answer(id, 0, Ok(Frame::Null)).is_none());
        let e = Error::new(ErrorKind::Eof);
        assert!(t.lock().answer(id, 1, Err(e)).is_some());
        assert_eq!(
            poll(&t, id, &w),
            Poll::Ready(Event::Decided(Verdict::Impossible))
        );
        assert!(
            t.open(Rule::SetNx, 3, 2, false, far()).is_none(),
            "the only entry is in use"
        );
        let (_, yes, seen) = answers(&t, id);
        assert_eq!(
            (yes, seen[0].as_str(), seen[2].as_str()),
            (0, "No", "Pending")
        );
        assert!(seen[1].starts_with("Failed"));
        assert!(t.open(Rule::SetNx, 3, 2, false, far()).is_some(), "reused");
    }

    #[test]
    fn all_waits_for_every_node_and_noscript_asks_for_one_resend() {
        let t = OpTable::new(4);
        let rule = Rule::Count {
            unknown_retries: true,
        };
        let id = t.open(rule, 3, 2, true, far()).unwrap();
        let w = Arc::new(Count::default());
        assert!(poll(&t, id, &w).is_pending());
        assert!(t.lock().answer(id, 0, Ok(Frame::Integer(1))).is_none());
        assert!(
            t.lock().answer(id, 1, Ok(Frame::Integer(1))).is_none(),
            "all: not yet"
        );
        let noscript = || {
            Ok(Frame::Error(ServerError::from_line(
                bytes::Bytes::from_static(b"NOSCRIPT No matching script"),
            )))
        };
        assert!(
            t.lock().answer(id, 2, noscript()).is_some(),
            "woken to resend"
        );
        assert_eq!(poll(&t, id, &w), Poll::Ready(Event::Resend(0b100)));
        assert!(poll(&t, id, &w).is_pending());
        // The resend meets NOSCRIPT again: a failure, not a second resend.
        let waker = t.lock().answer(id, 2, noscript()).expect("decided");
        drop(waker);
        assert_eq!(
            poll(&t, id, &w),
            Poll::Ready(Event::Decided(Verdict::AllDone))
        );
        let (_, yes, seen) = answers(&t, id);
        assert_eq!(yes, 2);
        assert!(seen[2].contains("UnexpectedReply"), "{seen:?}");
        assert_eq!(t.used(), 0);
    }

    #[test]
    fn an_abandoned_op_is_reused_at_once_and_its_late_replies_are_dropped() {
        let t = OpTable::new(1);
        let id = t.open(Rule::SetNx, 2, 2, false, far()).unwrap();
        t.failed(id, 1, Error::new(ErrorKind::NotConnected));
        t.abandon(id);
        let again = t.open(Rule::SetNx, 1, 1, false, far()).unwrap();
        assert_eq!(index_of(again), index_of(id));
        assert!(t.lock().answer(id, 0, ok()).is_none(), "nobody to wake");
        let (v, yes, seen) = answers(&t, again);
        assert_eq!((v, yes, seen), (None, 0, vec!["Pending".to_string()]));
    }

    /// The review's case: a release decided by three nodes in the same driver turn in which a
    /// fourth answered `NOSCRIPT`. The resend is still handed out, before the verdict, so the
    /// key is deleted there too; a send that failed after the verdict keeps its error.
    #[test]
    fn a_resend_asked_for_in_the_deciding_turn_is_still_handed_out() {
        let t = OpTable::new(1);
        let rule = Rule::Count {
            unknown_retries: false,
        };
        let id = t.open(rule, 5, 3, false, far()).unwrap();
        let w = Arc::new(Count::default());
        assert!(poll(&t, id, &w).is_pending());
        let noscript = Ok(Frame::Error(ServerError::from_line(
            bytes::Bytes::from_static(b"NOSCRIPT No matching script"),
        )));
        assert!(t.lock().answer(id, 4, noscript).is_some());
        for node in 0..3 {
            t.lock().answer(id, node, Ok(Frame::Integer(1)));
        }
        assert_eq!(poll(&t, id, &w), Poll::Ready(Event::Resend(0b1_0000)));
        assert!(matches!(
            poll(&t, id, &w),
            Poll::Ready(Event::Decided(Verdict::Quorum(_)))
        ));
        t.failed(id, 3, Error::new(ErrorKind::NotConnected));
        let (_, yes, seen) = answers(&t, id);
        assert_eq!(yes, 3);
        assert!(seen[3].starts_with("Failed"), "{seen:?}");
        assert_eq!(seen[4], "Pending", "the resend is not awaited");
        assert_eq!(t.used(), 0, "freed, the resend's reply still due");
        assert!(t.lock().answer(id, 4, Ok(Frame::Integer(1))).is_none());
    }

    #[test]
    fn a_reply_read_in_place_gets_the_answer_its_frame_gets() {
        let rules = [
            Rule::SetNx,
            Rule::Count {
                unknown_retries: false,
            },
            Rule::Count {
                unknown_retries: true,
            },
            Rule::Flag,
        ];
        let replies = [
            LockReply::Ok,
            LockReply::Null,
            LockReply::Zero,
            LockReply::One,
        ];
        for rule in rules {
            for reply in replies {
                assert_eq!(
                    format!("{:?}", rule.classify_lock(reply)),
                    format!("{:?}", rule.classify(Ok(reply.frame()))),
                    "{rule:?} {reply:?}"
                );
            }
        }
    }

    /// A table of `capacity` whose driver has looked once (so ops are handed to it), with one op
    /// of `nodes` nodes handed over and taken onto the driver's list.
    fn one_handed(capacity: usize, nodes: usize) -> (OpTable, Vec<u32>, OpId) {
        let t = OpTable::new(capacity);
        let mut pending = Vec::with_capacity(capacity);
        t.take_handed(&mut pending);
        let (id, handed) = hand(&t, nodes).unwrap();
        assert!(handed);
        t.take_handed(&mut pending);
        (t, pending, id)
    }

    fn hand(t: &OpTable, nodes: usize) -> Option<(OpId, bool)> {
        let meta = HandedMeta::default();
        t.open_handing(
            Rule::SetNx,
            nodes,
            nodes / 2 + 1,
            false,
            far(),
            Some((meta, |h: &mut Handed| {
                h.request.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
                true
            })),
        )
    }

    #[test]
    fn a_parked_driver_is_handed_nothing_and_does_not_park_over_handed_ops() {
        let t = OpTable::new(4);
        // A new table's driver has not run: the caller sends its own requests.
        assert_eq!(hand(&t, 3).map(|(_, handed)| handed), Some(false));
        let mut pending = Vec::with_capacity(4);
        t.take_handed(&mut pending);
        let (id, handed) = hand(&t, 3).unwrap();
        assert!(handed);
        assert!(!t.park_driver(), "an op was handed since the driver looked");
        t.take_handed(&mut pending);
        assert_eq!(pending, [index(id)]);
        assert!(t.park_driver());
        assert_eq!(hand(&t, 3).map(|(_, handed)| handed), Some(false));
    }

    #[test]
    fn a_handed_op_is_sent_once_per_node_and_unsent_requests_are_dropped_with_it() {
        let (t, mut pending, id) = one_handed(1, 3);
        {
            let mut g = t.lock();
            assert_eq!(g.unsent_request(index(id), 0).map(|(op, _)| op), Some(id));
            g.handed_sent(index(id), 0);
            assert!(g.unsent_request(index(id), 0).is_none(), "sent once");
            assert!(g.unsent_request(index(id), 1).is_some());
        }
        t.retain_pending(&mut pending);
        assert_eq!(pending, [index(id)], "nodes 1 and 2 still to send to");
        // The caller goes before the driver sent to nodes 1 and 2: they never get it, and the
        // entry is free at once (node 0's reply, when it comes, names an old generation).
        t.abandon(id);
        assert!(t.lock().unsent_request(index(id), 1).is_none());
        assert_eq!(t.used(), 0);
        assert!(t.lock().answer(id, 0, ok()).is_none());
        t.retain_pending(&mut pending);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_handed_release_is_still_sent_everywhere_after_its_caller_went() {
        let t = OpTable::new(1);
        let mut pending = Vec::with_capacity(1);
        t.take_handed(&mut pending);
        let meta = HandedMeta {
            outlive_caller: true,
            ..HandedMeta::default()
        };
        let fill = |h: &mut Handed| {
            h.request.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
            true
        };
        let rule = Rule::Count {
            unknown_retries: true,
        };
        let (id, handed) = t
            .open_handing(rule, 3, 2, false, far(), Some((meta, fill)))
            .unwrap();
        assert!(handed);
        t.take_handed(&mut pending);
        t.lock().handed_sent(index(id), 0);
        // Dropped before the driver reached nodes 1 and 2: their requests still go, and the
        // entry (which holds the request) stays taken until they went.
        t.abandon(id);
        assert!(t.lock().unsent_request(index(id), 1).is_some());
        assert_eq!(t.used(), 1);
        t.retain_pending(&mut pending);
        assert_eq!(pending, [index(id)]);
        {
            let mut g = t.lock();
            g.handed_sent(index(id), 1);
            assert!(
                g.answer(id, 0, Ok(Frame::Integer(1))).is_none(),
                "nobody waits"
            );
            assert!(g
                .handed_failed(index(id), 2, Error::new(ErrorKind::NotConnected))
                .is_none());
        }
        assert_eq!(t.used(), 0, "freed with its last request settled");
        t.retain_pending(&mut pending);
        assert!(pending.is_empty());
    }

    const CLEANUP: &[u8] = b"*1\r\n$7\r\nCLEANUP\r\n";

    fn cleanup(h: &mut Handed) -> bool {
        h.request.clear();
        h.request.extend_from_slice(CLEANUP);
        true
    }

    #[test]
    fn a_kept_set_becomes_its_clean_up_at_the_first_late_yes_only() {
        let set = crate::resp::SetNxPxCommand::new(30_000);
        let release_source = "return redis.call('DEL', KEYS[1])";
        let encoded = |args: &[&[u8]]| {
            let mut buf = bytes::BytesMut::new();
            crate::resp::encode_command(&mut buf, args);
            buf.to_vec()
        };
        let delex = encoded(&[b"DELEX", b"key", b"IFEQ", b"tok"]);
        let eval = encoded(&[b"EVAL", release_source.as_bytes(), b"1", b"key", b"tok"]);
        for (source, want) in [("", delex), (release_source, eval)] {
            let t = OpTable::new(4);
            let mut pending = Vec::with_capacity(4);
            t.take_handed(&mut pending);
            let meta = HandedMeta {
                acquire: true,
                ..HandedMeta::default()
            };
            let fill = |h: &mut Handed| set.encode_inline(&mut h.request, b"key", b"tok");
            let (id, handed) = t
                .open_handing(Rule::SetNx, 5, 3, false, far(), Some((meta, fill)))
                .unwrap();
            assert!(handed);
            t.take_handed(&mut pending);
            for node in 0..5 {
                t.lock().handed_sent(index(id), node);
            }
            for node in 0..3 {
                t.lock().answer(id, node, Ok(Frame::Null));
            }
            // The caller keeps the `SET` and names the clean-up's form.
            let keep = |h: &mut Handed| {
                h.meta.source = source;
                h.meta.form = Form::CleanupOfSet;
                true
            };
            assert_eq!(t.finish(id, |_, _, _| (), Some(keep)).1, 0b11000);
            assert!(to_send(&t, id, 5).is_empty(), "nothing before a late yes");
            // Node 3 set the key: the `SET` becomes its clean-up.
            assert!(t.lock().answer(id, 3, ok()).is_none());
            let sent = |t: &OpTable, node| {
                let g = t.lock();
                let (op, h) = g.unsent_request(index(id), node).expect("a clean-up");
                assert_eq!(op, id);
                assert_eq!(h.meta.form, Form::AsIs, "made once");
                h.request.to_vec()
            };
            assert_eq!(sent(&t, 3), want, "source {source:?}");
            t.lock().handed_sent(index(id), 3);
            // Node 4 too: the same clean-up, not made again from what is no longer a `SET`.
            assert!(t.lock().answer(id, 4, ok()).is_none());
            assert_eq!(sent(&t, 4), want);
            t.lock().handed_sent(index(id), 4);
            assert_eq!(t.used(), 0);
        }
        // A late nil sets nothing: nothing is made or sent, and the entry goes with it.
        let t = OpTable::new(4);
        t.take_handed(&mut Vec::with_capacity(4));
        let (id, handed) = t
            .open_handing(
                Rule::SetNx,
                3,
                2,
                false,
                far(),
                Some((HandedMeta::default(), |h: &mut Handed| {
                    set.encode_inline(&mut h.request, b"key", b"tok")
                })),
            )
            .unwrap();
        assert!(handed);
        for node in 0..3 {
            t.lock().handed_sent(index(id), node);
        }
        t.lock().answer(id, 0, Ok(Frame::Null));
        t.lock().answer(id, 1, Ok(Frame::Null));
        let keep = |h: &mut Handed| {
            h.meta.form = Form::CleanupOfSet;
            true
        };
        assert_eq!(t.finish(id, |_, _, _| (), Some(keep)).1, 0b100);
        t.lock().answer(id, 2, Ok(Frame::Null));
        assert!(to_send(&t, id, 3).is_empty());
        assert_eq!(t.used(), 0);
        assert_eq!(t.lock().lingering, 0);
    }

    /// Finishes op `id` with a clean-up: the nodes left to the driver.
    fn finish_failed(t: &OpTable, id: OpId) -> u8 {
        t.finish(id, |_, _, _| (), Some(cleanup)).1
    }

    /// The nodes whose copy of entry `id`'s request the driver has to send.
    fn to_send(t: &OpTable, id: OpId, nodes: u8) -> Vec<u8> {
        let g = t.lock();
        (0..nodes)
            .filter(|&n| g.unsent_request(index(id), n).is_some())
            .collect()
    }

    #[test]
    fn a_failed_acquire_cleans_up_only_where_a_late_reply_set_the_key() {
        let t = OpTable::new(4);
        let mut pending = Vec::with_capacity(4);
        t.take_handed(&mut pending);
        let id = t.open(Rule::SetNx, 5, 3, false, far()).unwrap();
        for node in 0..3 {
            t.lock().answer(id, node, Ok(Frame::Null));
        }
        assert_eq!(
            finish_failed(&t, id),
            0b11000,
            "nodes 3 and 4 had not answered"
        );
        assert_eq!(t.used(), 1, "kept for their replies");
        assert!(to_send(&t, id, 5).is_empty());
        // Node 3 set the key after all: its clean-up goes to it, through the driver's list.
        assert!(t.lock().answer(id, 3, ok()).is_none(), "nobody to wake");
        assert_eq!(to_send(&t, id, 5), [3]);
        t.take_handed(&mut pending);
        assert_eq!(pending, [index(id)]);
        let (op, request) = {
            let g = t.lock();
            let (op, h) = g.unsent_request(index(id), 3).unwrap();
            (op, h.request.to_vec())
        };
        assert_eq!((op, &request[..]), (id, CLEANUP));
        t.lock().handed_sent(index(id), 3);
        // Node 4 did not: nothing goes to it, and the entry is free with the last reply.
        t.lock().answer(id, 4, Ok(Frame::Null));
        assert!(to_send(&t, id, 5).is_empty());
        assert_eq!(t.used(), 0);
        // The clean-up's own reply, and any after, name an old generation.
        assert!(t.lock().answer(id, 3, Ok(Frame::Integer(1))).is_none());
        assert_eq!(t.lock().lingering, 0);
    }

    #[test]
    fn a_failed_acquire_at_its_deadline_waits_for_every_silent_node() {
        let t = OpTable::new(4);
        let mut pending = Vec::with_capacity(4);
        t.take_handed(&mut pending);
        let id = t.open(Rule::SetNx, 3, 2, false, far()).unwrap();
        t.lock().answer(id, 0, ok());
        // No verdict (the caller's deadline came first): node 0's key is the caller's to
        // delete, nodes 1 and 2 are the driver's.
        assert_eq!(finish_failed(&t, id), 0b110);
        // A lost connection sets nothing the driver could still reach.
        t.lock().answer(id, 1, Err(Error::new(ErrorKind::Eof)));
        assert!(to_send(&t, id, 3).is_empty());
        t.lock().answer(id, 2, ok());
        assert_eq!(to_send(&t, id, 3), [2]);
        t.lock().handed_sent(index(id), 2);
        assert_eq!(t.used(), 0);
    }

    #[test]
    fn a_granted_or_fully_answered_acquire_keeps_no_entry() {
        let t = OpTable::new(4);
        let id = t.open(Rule::SetNx, 3, 2, false, far()).unwrap();
        t.lock().answer(id, 0, ok());
        t.lock().answer(id, 1, ok());
        assert_eq!(finish_failed(&t, id), 0, "granted: no clean-up at all");
        let id = t.open(Rule::SetNx, 3, 2, false, far()).unwrap();
        for node in 0..3 {
            t.lock().answer(id, node, Ok(Frame::Null));
        }
        assert_eq!(finish_failed(&t, id), 0, "every node answered");
        let id = t.open(Rule::SetNx, 3, 2, false, far()).unwrap();
        t.lock().answer(id, 0, Ok(Frame::Null));
        t.lock().answer(id, 1, Ok(Frame::Null));
        let too_long = |h: &mut Handed| {
            h.request.extend_from_slice(&[b'x'; OP_REQUEST_MAX + 1]);
            true
        };
        assert_eq!(
            t.finish(id, |_, _, _| (), Some(too_long)).1,
            0,
            "does not fit"
        );
        assert_eq!(t.used(), 0);
    }

    #[test]
    fn nodes_that_never_got_the_request_or_its_resend_are_not_waited_for() {
        // Handed, sent to node 0 only before the caller gave up: 1 and 2 never got the `SET`.
        let (t, _pending, id) = one_handed(4, 3);
        t.lock().handed_sent(index(id), 0);
        t.lock().answer(id, 0, Ok(Frame::Null));
        assert_eq!(finish_failed(&t, id), 0);
        assert_eq!(t.used(), 0);
        // A script's `NOSCRIPT` asked for a resend the caller never made.
        let t = OpTable::new(4);
        let id = t.open(Rule::Flag, 3, 2, false, far()).unwrap();
        t.lock().answer(id, 0, Ok(Frame::Integer(0)));
        t.lock().answer(id, 1, Ok(Frame::Integer(0)));
        let noscript = Ok(Frame::Error(ServerError::from_line(
            bytes::Bytes::from_static(b"NOSCRIPT No matching script"),
        )));
        t.lock().answer(id, 2, noscript);
        assert_eq!(finish_failed(&t, id), 0);
        assert_eq!(t.used(), 0);
    }

    /// Opens a release whose request is kept for a late `NOSCRIPT` (as `Lock::release` does) on
    /// `nodes` nodes with a quorum of `quorum`; whether it was handed to the driver.
    fn open_release(t: &OpTable, nodes: usize, quorum: usize) -> (OpId, bool) {
        let meta = HandedMeta {
            outlive_caller: true,
            source: "return 1",
            ..HandedMeta::default()
        };
        let fill = |h: &mut Handed| {
            h.request.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
            true
        };
        let rule = Rule::Count {
            unknown_retries: false,
        };
        t.open_handing(rule, nodes, quorum, false, far(), Some((meta, fill)))
            .unwrap()
    }

    /// [`open_release`], handed to the driver and sent everywhere.
    fn handed_release(t: &OpTable, nodes: usize, quorum: usize) -> OpId {
        let (id, handed) = open_release(t, nodes, quorum);
        assert!(handed);
        for node in 0..nodes as u8 {
            t.lock().handed_sent(index(id), node);
        }
        id
    }

    #[test]
    fn a_handed_release_goes_again_with_the_source_where_a_late_reply_is_noscript() {
        let noscript = || {
            Ok(Frame::Error(ServerError::from_line(
                bytes::Bytes::from_static(b"NOSCRIPT No matching script"),
            )))
        };
        let with_source =
            |t: &OpTable, id| t.lock().requests[index_of(id)].meta.form == Form::WithSource;
        let t = OpTable::new(4);
        let mut pending = Vec::with_capacity(4);
        t.take_handed(&mut pending);
        let id = handed_release(&t, 4, 3);
        for node in 0..3 {
            t.lock().answer(id, node, Ok(Frame::Integer(1)));
        }
        // Released on a quorum: the caller sends nothing more, and the entry stays for node 3.
        assert_eq!(t.finish(id, |_, _, _| (), None::<Fill>).1, 0);
        assert_eq!(t.used(), 1);
        assert!(!with_source(&t, id));
        // Its `NOSCRIPT` comes after the caller left: the release goes again, with the source.
        t.lock().answer(id, 3, noscript());
        assert_eq!(to_send(&t, id, 4), [3]);
        assert!(with_source(&t, id));
        t.lock().handed_sent(index(id), 3);
        assert_eq!(t.used(), 0);

        // A late `:1` deleted the key: nothing goes again.
        let id = handed_release(&t, 3, 2);
        t.lock().answer(id, 0, Ok(Frame::Integer(1)));
        t.lock().answer(id, 1, Ok(Frame::Integer(1)));
        t.finish(id, |_, _, _| (), None::<Fill>);
        t.lock().answer(id, 2, Ok(Frame::Integer(1)));
        assert!(to_send(&t, id, 3).is_empty());
        assert_eq!(t.used(), 0);

        // A `NOSCRIPT` between the verdict and the caller's finish asked for a resend the
        // caller did not make: it goes at once.
        let id = handed_release(&t, 3, 2);
        t.lock().answer(id, 0, Ok(Frame::Integer(1)));
        t.lock().answer(id, 1, Ok(Frame::Integer(1)));
        t.lock().answer(id, 2, noscript());
        t.finish(id, |_, _, _| (), None::<Fill>);
        assert_eq!(to_send(&t, id, 3), [2]);
        assert!(with_source(&t, id));
        t.lock().handed_sent(index(id), 2);
        assert_eq!(t.used(), 0);

        // Opened while the driver waited for work: its caller sends the requests, and the
        // entry keeps a copy for a late `NOSCRIPT` all the same.
        let parked = OpTable::new(4);
        let (id, handed) = open_release(&parked, 3, 2);
        assert!(!handed);
        assert!(to_send(&parked, id, 3).is_empty(), "the caller sends them");
        parked.lock().answer(id, 0, Ok(Frame::Integer(1)));
        parked.lock().answer(id, 1, Ok(Frame::Integer(1)));
        parked.finish(id, |_, _, _| (), None::<Fill>);
        parked.lock().answer(id, 2, noscript());
        assert_eq!(to_send(&parked, id, 3), [2]);
        parked.lock().handed_sent(index(id), 2);
        assert_eq!(parked.used(), 0);

        // A release its caller sent itself, with no request kept in its entry: not kept.
        let rule = Rule::Count {
            unknown_retries: true,
        };
        let id = t.open(rule, 3, 2, false, far()).unwrap();
        t.lock().answer(id, 0, Ok(Frame::Integer(1)));
        t.lock().answer(id, 1, Ok(Frame::Integer(1)));
        t.finish(id, |_, _, _| (), None::<Fill>);
        assert_eq!(t.used(), 0);
        assert_eq!(t.lock().lingering, 0);
    }

    /// A kept release whose copy to a node was never sent (refused there, after its caller
    /// went) owes no late reply from that node: the entry is freed, and leaves the count.
    #[test]
    fn a_kept_release_whose_unsent_copy_is_refused_is_freed() {
        let t = OpTable::new(4);
        let mut pending = Vec::with_capacity(4);
        t.take_handed(&mut pending);
        let (id, handed) = open_release(&t, 3, 2);
        assert!(handed);
        t.lock().handed_sent(index(id), 0);
        t.lock().handed_sent(index(id), 1);
        t.lock().answer(id, 0, Ok(Frame::Integer(1)));
        t.lock().answer(id, 1, Ok(Frame::Integer(1)));
        // Node 2's copy is still to send when the caller finishes: kept for it.
        t.finish(id, |_, _, _| (), None::<Fill>);
        assert_eq!(t.lock().lingering, 1);
        let e = Error::new(ErrorKind::Overloaded);
        assert!(t.lock().handed_failed(index(id), 2, e).is_none());
        assert_eq!(t.used(), 0);
        assert_eq!(t.lock().lingering, 0);
    }

    #[test]
    fn at_most_a_quarter_of_the_table_waits_for_late_replies() {
        let t = OpTable::new(8);
        let failed = || {
            let id = t.open(Rule::SetNx, 3, 2, false, far()).unwrap();
            t.lock().answer(id, 0, Ok(Frame::Null));
            t.lock().answer(id, 1, Ok(Frame::Null));
            (id, finish_failed(&t, id))
        };
        let (a, kept) = failed();
        assert_eq!(kept, 0b100);
        let (_, kept) = failed();
        assert_eq!(kept, 0b100);
        let (_, kept) = failed();
        assert_eq!(kept, 0, "two of eight kept: the caller cleans up");
        assert_eq!(t.used(), 2);
        // One answered: room again.
        t.lock().answer(a, 2, Ok(Frame::Null));
        assert_eq!(failed().1, 0b100);
    }

    #[test]
    fn an_entry_reused_while_on_the_drivers_list_is_listed_once() {
        let (t, mut pending, id) = one_handed(1, 1);
        // Given back unsent, and opened again before the driver's next look.
        t.abandon(id);
        let (again, handed) = hand(&t, 1).unwrap();
        assert_eq!((index(again), handed), (index(id), true));
        t.take_handed(&mut pending);
        assert_eq!(pending, [index(id)], "on the driver's list once");
        assert_eq!(
            t.lock().unsent_request(index(id), 0).map(|(op, _)| op),
            Some(again),
            "the new op's request"
        );
    }

    #[test]
    fn a_refused_handed_request_is_that_nodes_answer_and_can_decide() {
        let (t, _pending, id) = one_handed(1, 3);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        assert!(poll(&t, id, &count).is_pending());
        let mut g = t.lock();
        assert!(g
            .handed_failed(index(id), 0, Error::new(ErrorKind::NotConnected))
            .is_none());
        let w = g.handed_failed(index(id), 1, Error::new(ErrorKind::NotConnected));
        assert!(w.is_some(), "two of three refused: no quorum possible");
        assert!(
            g.unsent_request(index(id), 2).is_some(),
            "node 2 still gets its request"
        );
    }

    /// The memory figure in `Connection::start_group`'s docs: a group's table holds twice as
    /// many ops as its largest slot table has slots, each with room for a handed request: 1.4
    /// MiB at the default 1,024 slots. Each node's answer keeps its error, if any (40 bytes),
    /// for the lock error's per-node results.
    #[test]
    fn an_op_is_368_bytes_and_its_handed_request_368() {
        assert_eq!(std::mem::size_of::<Op>(), 368);
        assert_eq!(std::mem::size_of::<Handed>(), 368);
    }

    /// A driver that keeps the table's deadlines and does nothing else.
    fn spawn_deadline_driver(t: Arc<OpTable>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let sleep = tokio::time::sleep_until(Instant::now());
            tokio::pin!(sleep);
            let mut timer = DeadlineTimer::default();
            std::future::poll_fn(|cx| {
                t.drive_deadlines(cx, sleep.as_mut(), &mut timer);
                Poll::<()>::Pending
            })
            .await
        })
    }

    /// Op `id`'s next event; a failure, not a hang, when nothing comes (the paused clock jumps
    /// to the bound when nothing else is armed).
    async fn wait(t: &OpTable, id: OpId) -> Event {
        let event = std::future::poll_fn(|cx| t.poll(id, cx));
        tokio::time::timeout(std::time::Duration::from_secs(3600), event)
            .await
            .expect("no event for the op")
    }

    /// A quorum's time is read after the reply that completed it: the quorums decided under
    /// one hold of the table's lock share one reading, and a later hold reads the clock again.
    /// Reusing an earlier hold's reading would date a late grant early, and let it pass for
    /// one within its validity.
    #[tokio::test(start_paused = true)]
    // The clock is moved while the lock is held, to show the reading is the hold's.
    #[allow(clippy::await_holding_lock)]
    async fn a_quorum_time_is_read_once_a_lock_hold_and_never_reused_by_the_next() {
        use std::time::Duration;
        let t = OpTable::new(4);
        let [a, b, c] = [(); 3].map(|()| t.open(Rule::SetNx, 1, 1, false, far()).unwrap());
        let quorum_at = |id| match t.finish(id, |v, _, _| v, None::<Fill>).0 {
            Some(Verdict::Quorum(at)) => at,
            v => panic!("{v:?}"),
        };
        let start = Instant::now();
        let mut hold = t.lock();
        assert!(hold.answer(a, 0, ok()).is_none(), "nobody polled yet");
        tokio::time::advance(Duration::from_millis(5)).await;
        hold.answer(b, 0, ok());
        drop(hold);
        tokio::time::advance(Duration::from_millis(5)).await;
        t.lock().answer(c, 0, ok());
        assert_eq!(quorum_at(a), start);
        assert_eq!(quorum_at(b), start, "one reading for the hold");
        assert_eq!(
            quorum_at(c),
            start + Duration::from_millis(10),
            "a new hold reads the clock again"
        );
    }

    fn expired(t: &OpTable, id: OpId) -> bool {
        t.lock().ops[index_of(id)].expired
    }

    /// One timer for every op: an op nobody answers expires at its own deadline (the paused
    /// clock makes "at" exact), an op decided first is not expired, and an op that comes with
    /// a deadline earlier than the armed one re-arms the timer for it.
    #[tokio::test(start_paused = true)]
    async fn the_driver_expires_each_op_at_its_deadline() {
        use std::time::Duration;
        let t = Arc::new(OpTable::new(4));
        let driver = spawn_deadline_driver(t.clone());
        let start = Instant::now();
        let a = t.open(Rule::SetNx, 3, 2, false, start + Duration::from_millis(100));
        let b = t.open(Rule::SetNx, 3, 2, false, start + Duration::from_millis(300));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(wait(&t, a).await, Event::Expired);
        let at = Instant::now();
        assert!(at >= start + Duration::from_millis(100), "{:?}", at - start);
        assert!(at < start + Duration::from_millis(300), "{:?}", at - start);
        let (v, _) = t.finish(a, |v, _, _| v, None::<Fill>);
        assert_eq!(v, None, "the deadline came first");
        // B is decided before its deadline: never expired.
        t.lock().answer(b, 0, ok());
        t.lock().answer(b, 1, ok());
        // C's deadline is before the armed one (B's): the timer is re-armed for it.
        let c = t.open(Rule::SetNx, 3, 2, false, at + Duration::from_millis(10));
        let c = c.unwrap();
        assert_eq!(wait(&t, c).await, Event::Expired);
        let c_at = Instant::now();
        assert!(c_at >= at + Duration::from_millis(10), "{:?}", c_at - at);
        assert!(
            c_at < start + Duration::from_millis(300),
            "{:?}",
            c_at - start
        );
        tokio::time::sleep_until(start + Duration::from_millis(400)).await;
        assert!(!expired(&t, b), "decided before its deadline");
        assert!(matches!(
            wait(&t, b).await,
            Event::Decided(Verdict::Quorum(_))
        ));
        // An op whose deadline has already passed expires at once.
        let late = t.open(Rule::SetNx, 1, 1, false, start).unwrap();
        assert_eq!(wait(&t, late).await, Event::Expired);
        driver.abort();
    }

    /// More ops expire at once than one batch of wakers holds (the lock is let go between
    /// batches): every caller is woken, and the timer is left for the op still to come.
    #[test]
    fn every_op_past_its_deadline_expires_across_batches() {
        use std::time::Duration;
        let t = OpTable::new(64);
        let now = Instant::now();
        let w = Arc::new(Count::default());
        let due: Vec<OpId> = (0..40)
            .map(|_| t.open(Rule::SetNx, 1, 1, false, now).unwrap())
            .collect();
        let later = t.open(Rule::SetNx, 1, 1, false, now + Duration::from_secs(5));
        let later = later.unwrap();
        for &id in &due {
            assert!(poll(&t, id, &w).is_pending());
        }
        assert!(poll(&t, later, &w).is_pending());
        t.expire(Some(now));
        assert_eq!(w.0.load(Ordering::SeqCst), 40);
        assert!(due.iter().all(|&id| expired(&t, id)));
        assert!(!expired(&t, later));
        assert_eq!(t.lock().wake_at, Some(now + Duration::from_secs(5)));
    }

    /// The wiring of the above in a real group: the runtime's shutdown drops the driver task
    /// (here before it was ever polled), and the phase waiting on it ends.
    #[test]
    fn a_group_whose_runtime_shut_down_expires_its_open_phases() {
        use crate::conn::{Connection, ConnectionConfig};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Nothing listens on port 1; it does not matter, nothing is sent.
        let nodes =
            rt.block_on(async { Connection::start_group([ConnectionConfig::new("127.0.0.1", 1)]) });
        let table = nodes[0].op_table().unwrap().clone();
        let id = table.open(Rule::SetNx, 1, 1, false, far()).unwrap();
        let w = Arc::new(Count::default());
        assert!(poll(&table, id, &w).is_pending());
        drop(rt);
        assert_eq!(w.0.load(Ordering::SeqCst), 1, "woken by the shutdown");
        assert_eq!(poll(&table, id, &w), Poll::Ready(Event::Expired));
        assert!(table.open(Rule::SetNx, 1, 1, false, far()).is_none());
    }

    /// Without a driver, nothing would ever expire an op: when it goes, every open op expires
    /// and no more are opened (their callers take the general path, with a timer of their own).
    #[test]
    fn a_gone_driver_expires_every_op_and_opens_no_more() {
        let t = OpTable::new(4);
        let w = Arc::new(Count::default());
        let open = t.open(Rule::SetNx, 3, 2, false, far()).unwrap();
        let decided = t.open(Rule::SetNx, 1, 1, false, far()).unwrap();
        assert!(poll(&t, open, &w).is_pending());
        t.lock().answer(decided, 0, ok());
        t.driver_gone();
        assert_eq!(
            w.0.load(Ordering::SeqCst),
            1,
            "the waiting caller was woken"
        );
        assert!(!expired(&t, decided), "a decided op is left alone");
        assert_eq!(poll(&t, open, &w), Poll::Ready(Event::Expired));
        assert!(matches!(
            poll(&t, decided, &w),
            Poll::Ready(Event::Decided(Verdict::Quorum(_)))
        ));
        assert!(t.open(Rule::SetNx, 1, 1, false, far()).is_none());
    }

    #[test]
    fn count_replies_are_read_by_their_rule() {
        let plain = Rule::Count {
            unknown_retries: false,
        };
        let unknown = || {
            Ok(Frame::Error(ServerError::from_line(
                bytes::Bytes::from_static(b"ERR unknown command 'DELEX'"),
            )))
        };
        assert!(matches!(plain.classify(unknown()), Answer::Failed(_)));
        assert!(matches!(
            Rule::Count {
                unknown_retries: true
            }
            .classify(unknown()),
            Answer::Retry
        ));
        assert!(matches!(plain.classify(Ok(Frame::Integer(2))), Answer::Yes));
        assert!(matches!(plain.classify(Ok(Frame::Integer(0))), Answer::No));
        assert!(matches!(plain.classify(ok()), Answer::Failed(_)));
        assert!(matches!(
            Rule::SetNx.classify(Ok(Frame::Integer(1))),
            Answer::Failed(_)
        ));
    }

    /// An extension's flag: exactly 1 is a yes (as `Vote::of_script_flag` reads it), any other
    /// integer a no, `NOSCRIPT` a resend, an unknown command a failure.
    #[test]
    fn flag_replies_are_read_as_exactly_one() {
        let error = |line: &'static [u8]| {
            Ok(Frame::Error(ServerError::from_line(
                bytes::Bytes::from_static(line),
            )))
        };
        let flag = Rule::Flag;
        assert!(matches!(flag.classify(Ok(Frame::Integer(1))), Answer::Yes));
        assert!(matches!(flag.classify(Ok(Frame::Integer(2))), Answer::No));
        assert!(matches!(flag.classify(Ok(Frame::Integer(0))), Answer::No));
        assert!(matches!(
            flag.classify(error(b"NOSCRIPT No matching script.")),
            Answer::Retry
        ));
        assert!(matches!(
            flag.classify(error(b"ERR unknown command 'EVALSHA'")),
            Answer::Failed(_)
        ));
        assert!(matches!(flag.classify(ok()), Answer::Failed(_)));
    }
}
