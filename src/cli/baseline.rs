//! The single-loop baseline: the fastest like-for-like Redlock client we know how to write by
//! hand. `dragonlock bench --baseline` and `benches/redlock.rs` measure dragonlock against it,
//! in the same run, on the same servers; every hot-path ratio in `DESIGN.md` is a ratio to it.
//!
//! It does what dragonlock does, no less: `SET key token NX PX ttl` to every node, decided at
//! the quorum (`N/2+1`) or as soon as the quorum is impossible, with the validity deadline
//! (`start + ttl − (ttl × 0.01 + 2 ms)`) racing the replies; a failed acquire releases on every
//! node that might hold the key; the release is the command dragonlock sends to that server
//! (`DELEX key IFEQ token` where `COMMAND INFO DELEX` found it at connect, else `EVALSHA` of
//! [`RELEASE`], loaded with `SCRIPT LOAD` at connect; with `notify`, as dragonlock's with
//! `wake_on_release`, the `DELEX` with a `PUBLISH` behind it or the [`RELEASE_NOTIFY`] script),
//! decided at the quorum as
//! `ReleaseWait::Quorum` does, within dragonlock's release timeout. Tokens are 128 random bits
//! in hex. What it leaves out is what makes dragonlock a product: reconnects, cancel-safe
//! callers, typed errors (an error reply counts as a failed node, as dragonlock counts it, but
//! it panics on a lost script cache or a missing command, and when a connection drops), RESP3,
//! auth.
//!
//! # How it runs
//!
//! One task, the *loop*, owns one TCP socket per node (`TCP_NODELAY`). An operation in flight
//! is a [`Slot`] in a fixed slab inside it, not a task. A caller ([`Client`]) pushes its
//! operation, with its waker, on a submission queue and is woken **once**, when the operation
//! is decided. Each node keeps a ring of the slot ids it owes replies to: a node answers in
//! order, so its next reply belongs to the id at the ring's head.
//!
//! One turn of the loop ([`Loop::poll`]), repeated while any step made progress:
//!
//! | step | does | syscalls |
//! |---|---|---|
//! | take | swap the whole submission queue out (one lock), start each op in a free slot: its frame appended to every node's output buffer, its id to every node's ring | none |
//! | write | every node with bytes pending | one `write` per node |
//! | read | every node that owes replies and is readable | one `read` per node |
//! | classify | each complete line (`+OK`, `$-1`/`_`, `:n`, `-ERR …`) goes to the slot at the ring's head: a vote, a late vote (a failed acquire's late `+OK` appends its cleanup), or a cleanup's answer | none |
//! | decide | quorum, quorum impossible, or (timer) deadline: publish the outcome, wake the one caller; a failed acquire appends its cleanup releases where a node said yes | none |
//! | yield | if it woke a caller: reschedule itself behind them and return | none |
//!
//! The yield is what makes the writes coalesce when callers are tasks. Without it, the first
//! woken caller's submission woke the loop, which ran next (tokio runs a task woken by the
//! running one first) and wrote that one operation to every node, then the next caller's:
//! 1.8 `write`s per operation and 15–18 µs of client CPU per cycle at 64 callers. Yielding, the
//! loop runs after the callers it woke have submitted: about 60 operations per round of writes,
//! 0.09 `write`s per operation, 6.6–7.2 µs per cycle (2026-11-30, 5 local redis-server 7.0.15,
//! on a loaded machine; the CPU figure includes the bench's callers).
//!
//! A slot's life:
//!
//! ```text
//!  free ──take──▶ asked ──quorum / impossible / deadline──▶ decided ──last owed reply──▶ free
//!                          (votes counted)      (caller woken)   (late votes and cleanup
//!                                                                  answers dropped in place)
//! ```
//!
//! A slot is freed only when every node has answered everything it was sent for that slot
//! (but for a `PUBLISH` behind a release's `DELEX`, whose ring entry is a marker, not the slot),
//! so a slot id in a ring always names the operation the reply belongs to. Nothing is allocated
//! per operation: the slab, the rings, the queues and the buffers have capacities fixed at
//! connect. One timer serves every deadline: it is armed at the earliest deadline it knows of
//! and, when it fires, the slab is scanned for expired operations and it is re-armed.
//!
//! The submission queue is a `std::sync::Mutex<VecDeque>` with its capacity preallocated:
//! a caller holds it for one push, the loop for one swap per turn. Measured with callgrind at
//! 64 callers (2026-11-30): a whole submission (clock read, key copy, waker clone, lock, push,
//! unlock, the loop's wake) is ~330 instructions, of the ~7,000–9,000 the client spends per
//! cycle; the lock is two uncontended atomics of it. A lock-free queue could save those two
//! and would cost a page of `unsafe`.
//!
//! [`RELEASE`]: dragonlock::redlock::scripts::RELEASE

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use dragonlock::conn::{Script, ScriptCall};
use dragonlock::redlock::scripts::{RELEASE, RELEASE_CHANNEL_PREFIX, RELEASE_NOTIFY};
use dragonlock::redlock::{DEFAULT_MIN_VALIDITY, DEFAULT_RELEASE_TIMEOUT};
use dragonlock::resp::{
    encode_command, encode_delex_ifeq, encode_publish, Decoder, Frame, SetNxPxCommand,
};
use dragonlock::LockErrorKind;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Most nodes: a slot keeps its nodes' answers as bits of a `u32`.
pub const MAX_NODES: usize = 32;
/// Longest key. Keys travel inline in the submission and the slot, so nothing is allocated per
/// operation; the benches' keys are under 32 bytes.
pub const MAX_KEY: usize = 64;

/// In a node's ring of owed replies: a reply to drop (a `PUBLISH` behind a release's `DELEX`).
/// Never a slot id: there are fewer slots.
const DISCARD: u16 = u16::MAX;
/// Slots per caller. A decided operation keeps its slot until its late votes are in, so a
/// caller's release (and its next acquire) can start while the previous phase still owes
/// replies: two or three slots per caller in a steady run. When the slab is full, submissions
/// wait in the queue: a slower run, never a wrong match.
const SLOTS_PER_CALLER: usize = 4;
/// Bytes per read: room for thousands of one-line replies, more than a turn ever finds.
const READ_BUF: usize = 64 * 1024;
/// Output buffer capacity per slot: one frame (`SET` ~90 bytes) and one cleanup (`EVAL` with
/// the script's source, ~170 bytes) at most.
const OUT_PER_SLOT: usize = 320;

/// A lock token: 128 random bits as 32 hex characters, as dragonlock's.
pub type Token = [u8; 32];

// Outcomes, published in a caller's lane as `ticket << 32 | outcome`.
const GRANTED: u32 = 1;
const BUSY: u32 = 2;
const NO_QUORUM: u32 = 3;
const EXPIRED: u32 = 4;
const CLOSED: u32 = 5;
const UNAVAILABLE: u32 = 6;
/// A release's outcome: this plus the nodes that released.
const RELEASED: u32 = 0x100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Acquire,
    Release,
}

/// One operation as a caller hands it over.
struct Submit {
    kind: Kind,
    lane: usize,
    ticket: u32,
    /// When the caller started it: its deadline counts from here.
    start: Instant,
    key: [u8; MAX_KEY],
    key_len: u8,
    token: Token,
    waker: Option<Waker>,
}

/// An operation in flight, in the loop's slab.
struct Slot {
    op: Submit,
    deadline: Instant,
    /// Nodes whose reply to the operation itself has come (bit per node).
    answered: u32,
    /// Nodes that said yes: `+OK` to the `SET`, `:1` to the release.
    yes: u32,
    /// Nodes that said no (`$-1` or `_` to the `SET`).
    refused: u8,
    /// Nodes that answered the operation with an error reply (`-ERR …`, `-OOM …`).
    failed: u8,
    /// Replies still to come for this slot, over all nodes, cleanups included.
    owed: u16,
    decided: bool,
    /// A failed acquire: a late `+OK` gets a cleanup (as dragonlock's late clean-ups).
    clean_late: bool,
}

struct Queue {
    ops: VecDeque<Submit>,
    /// Set by the loop when it may park; taken (and woken) by the next submission.
    loop_waker: Option<Waker>,
    closed: bool,
}

/// Where one caller learns its outcomes.
///
/// The waker normally travels with the submission, so deciding an operation costs one atomic
/// and one wake. A future may be polled with a new waker, though (tokio's current-thread
/// `block_on` does it), and then only the newest may be relied on: the caller parks it in
/// `moved_to` and sets `moved`, and the loop wakes that one too from then on. Both sides use
/// `SeqCst` (outcome, then `moved`; `moved`, then outcome): either the loop sees `moved`, or
/// the caller's second look sees the outcome.
struct Lane {
    /// `ticket << 32 | outcome` of the caller's latest decided operation.
    outcome: AtomicU64,
    moved: AtomicBool,
    moved_to: Mutex<Option<Waker>>,
    /// The last ticket of the lane's caller that was dropped: a later caller on the lane
    /// (see [`Baseline::rewind`]) goes on from it, since `outcome` only grows.
    last_ticket: AtomicU32,
}

struct Shared {
    queue: Mutex<Queue>,
    lanes: Box<[Lane]>,
    /// Callers made and not yet dropped (see [`Baseline::rewind`]).
    alive: AtomicUsize,
    /// `N/2+1` of the nodes.
    quorum: usize,
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes an outcome. `fetch_max`: an operation whose caller went away, decided late,
    /// never overwrites the caller's newer one (tickets only grow).
    fn publish(&self, op: &mut Submit, outcome: u32) {
        let lane = &self.lanes[op.lane];
        let v = (op.ticket as u64) << 32 | outcome as u64;
        lane.outcome.fetch_max(v, Ordering::SeqCst);
        if let Some(w) = op.waker.take() {
            w.wake();
        }
        if lane.moved.load(Ordering::SeqCst) {
            let moved = lane
                .moved_to
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(w) = moved {
                w.wake();
            }
        }
    }
}

/// The baseline client: the loop task and the handle callers are made from. Dropping it stops
/// the loop; operations still in flight then end their callers with a panic.
pub struct Baseline {
    shared: Arc<Shared>,
    callers: usize,
    next_lane: usize,
    release: &'static str,
}

/// One caller. It runs one operation at a time (`&mut self`); N callers are N tasks.
pub struct Client {
    shared: Arc<Shared>,
    lane: usize,
    ticket: u32,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.lanes[self.lane]
            .last_ticket
            .store(self.ticket, Ordering::SeqCst);
        self.shared.alive.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Node {
    sock: TcpStream,
    out: BytesMut,
    /// Bytes of `out` already written.
    written: usize,
    inbuf: Box<[u8]>,
    have: usize,
    /// Slot ids this node owes a reply to, oldest first.
    owed: VecDeque<u16>,
    delex: bool,
}

/// The loop: every socket and every operation in flight.
struct Loop {
    shared: Arc<Shared>,
    nodes: Vec<Node>,
    slots: Vec<Option<Slot>>,
    free: Vec<u16>,
    /// Submissions swapped out of the queue that found no free slot yet.
    taken: VecDeque<Submit>,
    total: usize,
    quorum: usize,
    set: SetNxPxCommand,
    script: Script,
    /// The release that tells waiters ([`RELEASE_NOTIFY`]), when releases publish.
    notify: Option<Script>,
    validity: Duration,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    /// A caller was woken this turn: yield so it can submit before the next write.
    woke: bool,
}

impl Baseline {
    /// Connects to `addrs` (the live nodes of `total`; the others count as failed in every
    /// vote), loads the release script and probes `DELEX` on each, and starts the loop, sized
    /// for `callers` callers. `force_script` releases with the script even where `DELEX` exists.
    /// `notify`: a release also publishes the token on the key's release channel, as
    /// dragonlock's does with `wake_on_release` (the notifying script, or a `PUBLISH` right
    /// behind the `DELEX`), so that both clients ask the servers for the same work.
    ///
    /// # Errors
    ///
    /// A node that cannot be reached or answers the setup unexpectedly.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or with no node, more than [`MAX_NODES`], or `ttl` not above
    /// the drift allowance.
    pub async fn connect(
        addrs: &[String],
        total: usize,
        ttl: Duration,
        force_script: bool,
        notify: bool,
        callers: usize,
    ) -> io::Result<Baseline> {
        assert!(!addrs.is_empty() && total <= MAX_NODES && addrs.len() <= total);
        let drift = ttl.mul_f64(dragonlock::redlock::DEFAULT_DRIFT_FACTOR)
            + dragonlock::redlock::DRIFT_FIXED;
        let validity = ttl.checked_sub(drift).expect("ttl above the drift");
        let script = Script::new(RELEASE);
        let notify_script = Script::new(RELEASE_NOTIFY);
        let callers = callers.max(1);
        let slots = (callers * SLOTS_PER_CALLER).min(DISCARD as usize);
        let mut nodes = Vec::new();
        for addr in addrs {
            let mut sock = TcpStream::connect(addr.as_str()).await?;
            sock.set_nodelay(true)?;
            let mut out = BytesMut::with_capacity(slots * OUT_PER_SLOT);
            encode_command(&mut out, &["COMMAND", "INFO", "DELEX"]);
            encode_command(&mut out, &["SCRIPT", "LOAD", RELEASE]);
            encode_command(&mut out, &["SCRIPT", "LOAD", RELEASE_NOTIFY]);
            sock.write_all(&out).await?;
            out.clear();
            let (mut decoder, mut buf, mut replies) = (Decoder::default(), BytesMut::new(), vec![]);
            while replies.len() < 3 {
                match decoder.decode(&mut buf).map_err(io::Error::other)? {
                    Some(frame) => replies.push(frame),
                    None if sock.read_buf(&mut buf).await? == 0 => {
                        return Err(io::Error::other(format!("{addr} closed at setup")))
                    }
                    None => {}
                }
            }
            // An entry for the command means it exists; a null entry (or an error) means not.
            let delex = matches!(&replies[0], Frame::Array(e) if matches!(e.first(), Some(Frame::Array(_))));
            for (reply, loaded) in replies[1..].iter().zip([&script, &notify_script]) {
                if reply.as_bytes() != Some(loaded.sha().as_bytes()) {
                    return Err(io::Error::other(format!(
                        "{addr}: SCRIPT LOAD answered {reply:?}"
                    )));
                }
            }
            nodes.push(Node {
                sock,
                out,
                written: 0,
                inbuf: vec![0; READ_BUF].into_boxed_slice(),
                have: 0,
                // Two entries per slot at most (a vote and a cleanup, or a release and its
                // `PUBLISH`), and one more: a release's slot is freed at its `DELEX` reply, so
                // its `PUBLISH`'s marker can still be at the head when the slot is reused.
                owed: VecDeque::with_capacity(2 * slots + 1),
                delex: delex && !force_script,
            });
        }
        let release = match nodes.iter().filter(|n| n.delex).count() {
            0 => "evalsha",
            n if n == nodes.len() => "delex",
            _ => "mixed",
        };
        let shared = Arc::new(Shared {
            quorum: total / 2 + 1,
            queue: Mutex::new(Queue {
                ops: VecDeque::with_capacity(callers),
                loop_waker: None,
                closed: false,
            }),
            lanes: (0..callers)
                .map(|_| Lane {
                    outcome: AtomicU64::new(0),
                    moved: AtomicBool::new(false),
                    moved_to: Mutex::new(None),
                    last_ticket: AtomicU32::new(0),
                })
                .collect(),
            alive: AtomicUsize::new(0),
        });
        let the_loop = Loop {
            shared: shared.clone(),
            nodes,
            slots: (0..slots).map(|_| None).collect(),
            free: (0..slots as u16).rev().collect(),
            taken: VecDeque::with_capacity(callers),
            total,
            quorum: shared.quorum,
            set: SetNxPxCommand::new(ttl.as_millis() as u64),
            script,
            notify: notify.then_some(notify_script),
            validity,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
            woke: false,
        };
        tokio::spawn(the_loop);
        Ok(Baseline {
            shared,
            callers,
            next_lane: 0,
            release,
        })
    }

    /// A new caller.
    ///
    /// # Panics
    ///
    /// Past the `callers` given to [`connect`](Baseline::connect).
    pub fn client(&mut self) -> Client {
        assert!(self.next_lane < self.callers, "more callers than sized for");
        self.next_lane += 1;
        let lane = self.next_lane - 1;
        self.shared.alive.fetch_add(1, Ordering::SeqCst);
        Client {
            ticket: self.shared.lanes[lane].last_ticket.load(Ordering::SeqCst),
            shared: self.shared.clone(),
            lane,
        }
    }

    /// Makes every lane free for [`client`](Baseline::client) again, for another measurement
    /// with the same loop (the sides of `bench --compare client=…` take turns in slices). A
    /// new caller on a lane goes on from the tickets of the last (an operation the last one
    /// left in flight can never be mistaken for the new one's).
    ///
    /// # Panics
    ///
    /// While a caller made before is still alive.
    pub fn rewind(&mut self) {
        assert_eq!(
            self.shared.alive.load(Ordering::SeqCst),
            0,
            "rewind with callers still alive"
        );
        self.next_lane = 0;
    }

    /// The release command: `"delex"`, `"evalsha"`, or `"mixed"` when the nodes differ.
    pub fn release_command(&self) -> &'static str {
        self.release
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let waker = {
            let mut q = self.shared.queue();
            q.closed = true;
            q.loop_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Client {
    /// One acquire attempt: the token on a quorum inside the validity, else why not
    /// (`Busy`, `Unavailable`, `NoQuorum`, `Expired`).
    ///
    /// # Panics
    ///
    /// When the loop has stopped (it panicked on a dropped connection, a lost script cache or
    /// a missing command, or the [`Baseline`] was dropped), or for a key longer than
    /// [`MAX_KEY`].
    ///
    /// # Cancel safety
    ///
    /// None to speak of: a dropped acquire still runs, and if it is granted the key stays
    /// until its ttl.
    pub async fn acquire(&mut self, key: &[u8]) -> Result<Token, LockErrorKind> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bits: u128 = rand::rng().random();
        let mut token = [0u8; 32];
        for (i, t) in token.iter_mut().enumerate() {
            *t = HEX[((bits >> (4 * i)) & 0xf) as usize];
        }
        match self.submit(Kind::Acquire, key, token).await {
            GRANTED => Ok(token),
            BUSY => Err(LockErrorKind::Busy),
            NO_QUORUM => Err(LockErrorKind::NoQuorum),
            EXPIRED => Err(LockErrorKind::Expired),
            UNAVAILABLE => Err(LockErrorKind::Unavailable),
            other => panic!("baseline: the loop stopped (outcome {other})"),
        }
    }

    /// How many nodes make a quorum (`N/2+1`): a release that counts fewer failed.
    pub fn quorum(&self) -> usize {
        self.shared.quorum
    }

    /// Releases `key` if it still holds `token`; returns the nodes that had released when a
    /// quorum had (or when that became impossible, or at the release timeout).
    ///
    /// # Panics
    ///
    /// As [`acquire`](Client::acquire).
    pub async fn release(&mut self, key: &[u8], token: &Token) -> usize {
        match self.submit(Kind::Release, key, *token).await {
            n if n >= RELEASED => (n - RELEASED) as usize,
            other => panic!("baseline: the loop stopped (outcome {other})"),
        }
    }

    async fn submit(&mut self, kind: Kind, key: &[u8], token: Token) -> u32 {
        assert!(
            key.len() <= MAX_KEY,
            "baseline keys are at most {MAX_KEY} bytes"
        );
        self.ticket = self.ticket.checked_add(1).expect("ticket");
        let (ticket, lane) = (self.ticket, &self.shared.lanes[self.lane]);
        let mut submitted: Option<Waker> = None;
        poll_fn(|cx| {
            let decided = || {
                let v = lane.outcome.load(Ordering::SeqCst);
                ((v >> 32) as u32 == ticket).then_some(v as u32)
            };
            if let Some(w) = &mut submitted {
                if let Some(outcome) = decided() {
                    return Poll::Ready(outcome);
                }
                if !w.will_wake(cx.waker()) {
                    // Polled with a new waker: see `Lane`.
                    *w = cx.waker().clone();
                    *lane.moved_to.lock().unwrap_or_else(|e| e.into_inner()) = Some(w.clone());
                    lane.moved.store(true, Ordering::SeqCst);
                    if let Some(outcome) = decided() {
                        return Poll::Ready(outcome);
                    }
                }
                return Poll::Pending;
            }
            // The clock starts before the operation is handed over.
            let mut op = Submit {
                kind,
                lane: self.lane,
                ticket,
                start: Instant::now(),
                key: [0; MAX_KEY],
                key_len: key.len() as u8,
                token,
                waker: Some(cx.waker().clone()),
            };
            op.key[..key.len()].copy_from_slice(key);
            let mut q = self.shared.queue();
            if q.closed {
                return Poll::Ready(CLOSED);
            }
            q.ops.push_back(op);
            let wake = q.loop_waker.take();
            drop(q);
            if let Some(w) = wake {
                w.wake();
            }
            submitted = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// A reply, classified in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Ok,
    Null,
    Int(i64),
    /// An error reply (`-NOPERM`, `-OOM`, ...): the node answered and did not say yes, as
    /// dragonlock counts it; a refusal (busy) it is not.
    Error,
}

/// Classifies one line (without its CRLF). An error reply is a node answering no, as
/// dragonlock counts it (a failed node), except those that say the baseline itself is broken:
/// a script cache the server lost (`-NOSCRIPT`, after a restart or `SCRIPT FLUSH`) or a
/// command it does not have. Those, and any reply no lock command gets, panic: a baseline that
/// went on would blame its own fault on the servers, and it is a baseline, not a product.
fn classify(line: &[u8], node: usize) -> Reply {
    match line {
        b"+OK" => Reply::Ok,
        b"$-1" | b"_" => Reply::Null,
        [b'-', e @ ..] if e.starts_with(b"NOSCRIPT") || e.starts_with(b"ERR unknown command") => {
            panic!(
                "baseline: node {node} answered {:?}",
                String::from_utf8_lossy(line)
            )
        }
        [b'-', ..] => Reply::Error,
        [b':', n @ ..] => Reply::Int(
            std::str::from_utf8(n)
                .ok()
                .and_then(|n| n.parse().ok())
                .expect("integer reply"),
        ),
        _ => panic!(
            "baseline: node {node} answered {:?}",
            String::from_utf8_lossy(line)
        ),
    }
}

impl Future for Loop {
    type Output = ();

    /// Turns until a turn wakes a caller (then it yields) or makes no progress (every wake
    /// source is then registered: the queue's waker, each owing socket's read readiness, a
    /// blocked socket's write readiness, the timer).
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let Some(mut progress) = this.take(cx) else {
                return Poll::Ready(());
            };
            for k in 0..this.nodes.len() {
                progress |= this.write(k, cx);
            }
            for k in 0..this.nodes.len() {
                progress |= this.read(k, cx);
            }
            progress |= this.poll_timer(cx);
            // Let the callers just woken run (and submit) before the next turn writes.
            if std::mem::take(&mut this.woke) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }
}

impl Loop {
    /// Starts every submitted operation that finds a free slot. `None` once the baseline is
    /// dropped.
    fn take(&mut self, cx: &mut Context<'_>) -> Option<bool> {
        if self.taken.is_empty() {
            let mut q = self.shared.queue();
            if q.closed {
                return None;
            }
            std::mem::swap(&mut q.ops, &mut self.taken);
            if q.loop_waker.is_none() {
                q.loop_waker = Some(cx.waker().clone());
            }
        }
        let mut progress = false;
        while !self.free.is_empty() {
            let Some(op) = self.taken.pop_front() else {
                break;
            };
            self.start(op);
            progress = true;
        }
        Some(progress)
    }

    fn start(&mut self, op: Submit) {
        let id = self.free.pop().expect("a free slot");
        let key = &op.key[..op.key_len as usize];
        // The release channel, for a release that publishes (only then: the baseline does no
        // work dragonlock does not): the prefix, then the key.
        let mut buf = [0u8; RELEASE_CHANNEL_PREFIX.len() + MAX_KEY];
        let channel: &[u8] = if matches!(op.kind, Kind::Release) && self.notify.is_some() {
            let prefix = RELEASE_CHANNEL_PREFIX.len();
            buf[..prefix].copy_from_slice(RELEASE_CHANNEL_PREFIX.as_bytes());
            buf[prefix..prefix + key.len()].copy_from_slice(key);
            &buf[..prefix + key.len()]
        } else {
            &[]
        };
        for node in &mut self.nodes {
            match (op.kind, &self.notify) {
                (Kind::Acquire, _) => self.set.encode(&mut node.out, key, &op.token),
                (Kind::Release, None) if node.delex => {
                    encode_delex_ifeq(&mut node.out, key, &op.token)
                }
                (Kind::Release, Some(_)) if node.delex => {
                    encode_delex_ifeq(&mut node.out, key, &op.token);
                    let prefix = RELEASE_CHANNEL_PREFIX.as_bytes();
                    encode_publish(&mut node.out, prefix, key, &op.token);
                    // The `PUBLISH`'s reply comes right after the `DELEX`'s, and is dropped.
                    assert!(node.owed.len() + 2 <= node.owed.capacity(), "ring bound");
                    node.owed.push_back(id);
                    node.owed.push_back(DISCARD);
                    continue;
                }
                (Kind::Release, None) => {
                    self.script
                        .evalsha()
                        .encode(&mut node.out, &[key], &[op.token])
                }
                (Kind::Release, Some(notify)) => {
                    notify
                        .evalsha()
                        .encode(&mut node.out, &[key, channel], &[op.token])
                }
            }
            assert!(node.owed.len() < node.owed.capacity(), "ring bound");
            node.owed.push_back(id);
        }
        let deadline = op.start
            + match op.kind {
                Kind::Acquire => self.validity,
                Kind::Release => DEFAULT_RELEASE_TIMEOUT,
            };
        self.slots[id as usize] = Some(Slot {
            op,
            deadline,
            answered: 0,
            yes: 0,
            refused: 0,
            failed: 0,
            owed: self.nodes.len() as u16,
            decided: false,
            clean_late: false,
        });
        self.arm(deadline);
        // With fewer live nodes than the quorum, it is decided already.
        self.try_decide(id, Instant::now());
    }

    /// One `write` of everything pending, if the node has anything.
    fn write(&mut self, k: usize, cx: &mut Context<'_>) -> bool {
        let node = &mut self.nodes[k];
        while node.written < node.out.len() {
            match node.sock.try_write(&node.out[node.written..]) {
                Ok(n) => {
                    node.written += n;
                    if node.written == node.out.len() {
                        // Cleared, not advanced: the buffer keeps its start and capacity.
                        node.out.clear();
                        node.written = 0;
                    }
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match node.sock.poll_write_ready(cx) {
                        Poll::Pending => return false,
                        Poll::Ready(r) => r.expect("baseline: write readiness"),
                    }
                }
                Err(e) => panic!("baseline: write to node {k}: {e}"),
            }
        }
        false
    }

    /// One `read` if the node owes replies and is readable; every complete line is dispatched.
    fn read(&mut self, k: usize, cx: &mut Context<'_>) -> bool {
        let node = &mut self.nodes[k];
        if node.owed.is_empty() {
            return false;
        }
        loop {
            match node.sock.poll_read_ready(cx) {
                Poll::Pending => return false,
                Poll::Ready(r) => r.expect("baseline: read readiness"),
            }
            match node.sock.try_read(&mut node.inbuf[node.have..]) {
                Ok(0) => panic!("baseline: node {k} closed the connection"),
                Ok(n) => {
                    node.have += n;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("baseline: read from node {k}: {e}"),
            }
        }
        let now = Instant::now();
        // Out of the node while replies are dispatched (which may append cleanups to it);
        // taking a boxed slice leaves an empty one, which allocates nothing.
        let buf = std::mem::take(&mut self.nodes[k].inbuf);
        let have = self.nodes[k].have;
        let mut pos = 0;
        while let Some(nl) = memchr::memchr(b'\n', &buf[pos..have]) {
            let line = &buf[pos..pos + nl];
            let line = line.strip_suffix(b"\r").expect("CRLF");
            pos += nl + 1;
            let id = self.nodes[k]
                .owed
                .pop_front()
                .expect("a reply nobody asked for");
            if id == DISCARD {
                continue;
            }
            self.dispatch(id, k, classify(line, k), now);
        }
        let node = &mut self.nodes[k];
        node.inbuf = buf;
        node.inbuf.copy_within(pos..have, 0);
        node.have = have - pos;
        assert!(
            node.have < READ_BUF,
            "baseline: a reply line longer than the buffer"
        );
        true
    }

    /// Node `k`'s reply for slot `id`: a vote, a late vote, or the answer to a cleanup.
    fn dispatch(&mut self, id: u16, k: usize, reply: Reply, now: Instant) {
        let s = self.slots[id as usize].as_mut().expect("a live slot");
        s.owed -= 1;
        let bit = 1u32 << k;
        if s.answered & bit == 0 {
            // The reply to the operation itself (it comes before any cleanup on this node).
            s.answered |= bit;
            match (s.op.kind, reply) {
                (Kind::Acquire, Reply::Ok) | (Kind::Release, Reply::Int(1..)) => s.yes |= bit,
                (Kind::Acquire, Reply::Null) | (Kind::Release, Reply::Int(_)) => s.refused += 1,
                (_, Reply::Error) => s.failed += 1,
                (kind, r) => panic!("baseline: {r:?} to {kind:?} from node {k}"),
            }
            if !s.decided {
                self.try_decide(id, now);
            } else if s.clean_late && reply == Reply::Ok {
                // The late `SET` set the key after the attempt failed: its cleanup follows.
                self.cleanup(id, k);
            }
        } else {
            assert!(
                matches!(reply, Reply::Int(_) | Reply::Error),
                "a cleanup answered {reply:?}"
            );
        }
        self.free_if_done(id);
    }

    fn try_decide(&mut self, id: u16, now: Instant) {
        let s = self.slots[id as usize].as_ref().expect("a live slot");
        let yes = s.yes.count_ones() as usize;
        let unsettled = self.nodes.len() - s.answered.count_ones() as usize;
        let impossible = yes + unsettled < self.quorum;
        let outcome = match s.op.kind {
            Kind::Acquire if yes >= self.quorum && now + DEFAULT_MIN_VALIDITY <= s.deadline => {
                GRANTED
            }
            Kind::Acquire if yes >= self.quorum => EXPIRED,
            // As dragonlock's `classify_failure`: refusals first, then failures, nodes that
            // could not be connected to counting as failed.
            Kind::Acquire if impossible && s.refused as usize > self.total - self.quorum => BUSY,
            Kind::Acquire
                if impossible
                    && s.failed as usize + self.total - self.nodes.len()
                        > self.total - self.quorum =>
            {
                UNAVAILABLE
            }
            Kind::Acquire if impossible => NO_QUORUM,
            Kind::Release if yes >= self.quorum || impossible => RELEASED + yes as u32,
            _ => return,
        };
        self.decide(id, outcome);
    }

    /// Publishes the outcome and wakes the caller; a failed acquire releases where the key is:
    /// the nodes that said yes now, and each node that had not answered once its late reply
    /// says it set the key (`dispatch`; the cleanup then follows the `SET` on the same
    /// connection), as dragonlock's late clean-ups do. The cleanup never publishes;
    /// dragonlock's does after a quorum that came too late (`Expired`), which a bench run
    /// practically never meets.
    fn decide(&mut self, id: u16, outcome: u32) {
        let s = self.slots[id as usize].as_mut().expect("a live slot");
        s.decided = true;
        self.shared.publish(&mut s.op, outcome);
        self.woke = true;
        if s.op.kind == Kind::Acquire && outcome != GRANTED {
            s.clean_late = true;
            let yes = s.yes;
            for k in (0..self.nodes.len()).filter(|k| yes & (1 << k) != 0) {
                self.cleanup(id, k);
            }
        }
        self.free_if_done(id);
    }

    /// Appends slot `id`'s cleanup to node `k`'s output, after its `SET`.
    fn cleanup(&mut self, id: u16, k: usize) {
        let s = self.slots[id as usize].as_mut().expect("a live slot");
        let node = &mut self.nodes[k];
        let key = &s.op.key[..s.op.key_len as usize];
        if node.delex {
            encode_delex_ifeq(&mut node.out, key, &s.op.token);
        } else {
            // As dragonlock's cleanup: with the source, so a lost cache cannot stop it.
            let call = ScriptCall::WithSource;
            self.script
                .encode(&mut node.out, call, &[key], &[s.op.token]);
        }
        assert!(node.owed.len() < node.owed.capacity(), "ring bound");
        node.owed.push_back(id);
        s.owed += 1;
    }

    fn free_if_done(&mut self, id: u16) {
        let slot = &mut self.slots[id as usize];
        if slot.as_ref().is_some_and(|s| s.decided && s.owed == 0) {
            *slot = None;
            self.free.push(id);
        }
    }

    /// Arms the timer at `at` unless it already fires earlier. It may then fire early for
    /// an operation decided since; that costs one scan, never a late deadline.
    fn arm(&mut self, at: Instant) {
        if self.armed.is_none_or(|a| at < a) {
            self.timer.as_mut().reset(at);
            self.armed = Some(at);
        }
    }

    /// On the timer: every undecided operation past its deadline is decided (an acquire
    /// `Expired`, a release with the count so far), and the timer is re-armed at the next one.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        if self.armed.is_none() || self.timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.armed = None;
        let now = Instant::now();
        for id in 0..self.slots.len() as u16 {
            let Some(s) = self.slots[id as usize].as_ref().filter(|s| !s.decided) else {
                continue;
            };
            if s.deadline > now {
                let at = s.deadline;
                self.arm(at);
            } else if s.op.kind == Kind::Acquire {
                self.decide(id, EXPIRED);
            } else {
                let yes = s.yes.count_ones();
                self.decide(id, RELEASED + yes);
            }
        }
        true
    }
}

impl Drop for Loop {
    /// The loop ended (the baseline was dropped, or it panicked): every caller still waiting
    /// is told, so none waits forever.
    fn drop(&mut self) {
        let shared = self.shared.clone();
        let mut q = shared.queue();
        q.closed = true;
        for mut op in q.ops.drain(..).chain(self.taken.drain(..)) {
            shared.publish(&mut op, CLOSED);
        }
        for s in self.slots.iter_mut().flatten().filter(|s| !s.decided) {
            shared.publish(&mut s.op, CLOSED);
        }
    }
}
