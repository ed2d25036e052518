//! The driver task: one per connection group (a connection started alone is a group of one).
//! It owns the sockets, and each connection goes through these states on its own:
//!
//! ```text
//!  start --> connect + handshake --ok--> serve (I/O loop) --EOF / error--> fail in-flight --+
//!              ^      |                                                                     |
//!              |      +--error--> record error ------------------------------+              |
//!              |                                                             v              v
//!              +------------------------- backoff (full jitter, doubling) <-+--------------+
//!  closed (last handle dropped) ends the task from any state.
//! ```
//!
//! The I/O loop (`run_group`) advances both directions of every connection in every turn: it
//! hands everything callers queued to each socket in one write (`write_half`), with a copy of
//! each request of a lock phase handed to the task (`send_handed`), then reads each socket
//! until it is empty, or `READS_PER_TURN` times, and hands out the replies (`read_half`). It
//! never blocks on the write side while replies are waiting to be read, so both sides'
//! buffers can be full without deadlock.

use std::future::{poll_fn, Future};
use std::io;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rand::Rng;
use smallvec::SmallVec;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::handshake::{self, Stream};
use super::ops::{DeadlineTimer, Form, OpTable};
use super::script::write_with_source;
use super::slots::Owner;
use super::stats::{now_us, RTT_CLOCK_MASK};
use super::tls::{Connector, Session};
use super::{admit, reset_buffer, take_slots, Shared, State, Status};
use crate::error::{Error, ErrorKind};
use crate::resp::{Decoder, Frame};
use crate::trace::event;

/// Loop turns before the driver yields to other tasks, so a fire hose on one socket cannot starve
/// the runtime's other tasks.
const TURNS_BEFORE_YIELD: usize = 32;

/// Reads of one socket in one turn (each up to the read buffer, 16 KiB by default). A socket
/// still readable after them is read again at the next turn: a peer that sends faster than its
/// replies are decoded would otherwise keep the task in one node's read for as long as it
/// sends, and the other nodes, the ops' deadlines and (on a current-thread runtime) every
/// other task would wait.
const READS_PER_TURN: usize = 16;

/// Wakers gathered while the lock is held and woken after it is released; a fixed array so it
/// never allocates.
const WAKE_BATCH: usize = 32;

/// Starts the task of a connection started alone: a group of one, without lock phases.
pub(super) fn run(shared: Arc<Shared>) -> impl Future<Output = ()> + Send {
    run_group(vec![shared])
}

/// Drives several connections from one task. Every turn writes what callers queued on every
/// node first, then reads every node and hands out the replies; after a turn that woke several
/// callers the task yields, so that what they send next goes out in the next turn's writes.
/// A connection that is down reconnects on its own (its connect or backoff is polled in the
/// write half of each turn); the task ends when every connection is closed.
///
/// The task also keeps the deadlines of the group's lock phases, with one timer (see
/// `OpTable::drive_deadlines`); when it ends or is dropped, the phases still open expire.
pub(super) fn run_group(shared: Vec<Arc<Shared>>) -> impl Future<Output = ()> + Send {
    let ops = shared.first().and_then(|s| s.ops.clone());
    // Made here, not in the future's body: a task dropped before its first poll drops it too.
    let gone = DriverGone {
        ops: ops.clone(),
        connections: shared.clone(),
    };
    async move {
        let _gone = gone;
        group(shared, ops).await
    }
}

async fn group(shared: Vec<Arc<Shared>>, ops: Option<Arc<OpTable>>) {
    let Some(parked) = shared.first().map(|s| s.task_parked.clone()) else {
        return;
    };
    let mut nodes: Vec<Node> = shared.into_iter().map(Node::new).collect();
    // Armed only for an op's deadline; never polled before.
    let sleep = tokio::time::sleep_until(Instant::now());
    tokio::pin!(sleep);
    let mut timer = DeadlineTimer::default();
    // The ops whose requests callers handed over (see `OpTable::open_handing`) until each node
    // has taken its copy; never longer than the table, so it never grows.
    let mut handed: Vec<u32> = Vec::with_capacity(ops.as_ref().map_or(0, |o| o.capacity()));
    poll_fn(|cx| {
        parked.store(false, Ordering::Relaxed);
        if let Some(ops) = &ops {
            ops.drive_deadlines(cx, sleep.as_mut(), &mut timer);
        }
        for _ in 0..TURNS_BEFORE_YIELD {
            let mut turn = Turn::default();
            if let Some(ops) = &ops {
                ops.take_handed(&mut handed);
            }
            let table = ops.as_deref().filter(|_| !handed.is_empty());
            for (i, node) in nodes.iter_mut().enumerate() {
                let handed = table.map(|t| Handover {
                    table: t,
                    ops: &handed,
                    node: i as u8,
                });
                node.write(cx, &mut turn, handed);
            }
            if let Some(table) = table {
                table.retain_pending(&mut handed);
            }
            for node in nodes.iter_mut() {
                node.read(cx, &mut turn);
            }
            if !turn.running {
                return Poll::Ready(());
            }
            // One woken caller has nobody to share a write with: the task goes on, parks at the
            // next turn that finds nothing to do, and the caller writes its next requests
            // itself (see `enqueue_n`), one task hop less. Yielding there too, one caller's
            // requests waited for the task's next poll: 1.12-1.24x the single loop's cycle
            // p50 at one caller, against 0.81-0.98x without it (four interleaved runs each).
            if turn.woke > 1 {
                // Callers were handed replies: let them run before writing again, so that the
                // requests they send next go out together, one write per node, rather than one
                // by one as each caller wakes the task. The wake puts this task at the back of
                // the run queue, behind them; `task_parked` is false, so their sends do not
                // write on their own meanwhile. `dispatch` unregistered the waker of each node
                // it handed out replies of; a node whose replies woke nobody keeps its waker,
                // and a send there wakes a task already scheduled (one atomic operation).
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if !turn.progressed {
                // Ops handed over meanwhile: another turn sends them.
                if ops.as_ref().is_some_and(|o| !o.park_driver()) {
                    continue;
                }
                // Every wake source is registered: the sockets' readiness, each node's waker
                // for callers' requests, a connect's or a backoff's timer.
                parked.store(true, Ordering::Relaxed);
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// The ops handed to the driver this turn, for node `node` of the group (which is node `node`
/// of each op: see `Redlock`'s check that its nodes are the group's, in order).
#[derive(Clone, Copy)]
struct Handover<'a> {
    table: &'a OpTable,
    ops: &'a [u32],
    node: u8,
}

/// What one turn of the group's loop did.
#[derive(Default)]
struct Turn {
    /// Some connection is not closed yet.
    running: bool,
    /// Bytes went out or came in, or a connection changed state.
    progressed: bool,
    /// Callers handed a reply (or their phase's decision).
    woke: usize,
}

/// One connection of a group, as its task sees it.
struct Node {
    shared: Arc<Shared>,
    state: NodeState,
}

/// A connect in progress (see `connect`): a handshaken stream, or `None` once the connection is
/// closed. Boxed: made once per connect, never per request.
type Connecting = Pin<Box<dyn Future<Output = Option<(Stream, Connector)>> + Send>>;

// The I/O state is inline, not boxed: it is the variant every turn reads, and the nodes live in
// the task's one `Vec` on the heap, so the other variants' unused room costs nothing per turn.
#[allow(clippy::large_enum_variant)]
enum NodeState {
    /// Connecting, or waiting out a backoff first.
    Connecting(Connecting),
    /// Connected: the I/O loop's state, and the TLS connector kept for the next connect.
    Serving(Io, Connector),
    Closed,
}

impl Node {
    fn new(shared: Arc<Shared>) -> Node {
        let state =
            NodeState::Connecting(Box::pin(connect(shared.clone(), Connector::new(), None)));
        Node { shared, state }
    }

    /// The write half of a turn: finishes a connect, or takes what callers queued (and the
    /// requests of ops handed to the driver) and writes it. A node that cannot take the handed
    /// requests now refuses them as a caller's send would (not connected, closed).
    fn write(&mut self, cx: &mut Context<'_>, turn: &mut Turn, handed: Option<Handover<'_>>) {
        if let NodeState::Connecting(connect) = &mut self.state {
            match connect.as_mut().poll(cx) {
                Poll::Pending => {
                    turn.running = true;
                    self.refuse_handed(handed, turn);
                    return;
                }
                Poll::Ready(None) => {
                    self.state = NodeState::Closed;
                    self.refuse_handed(handed, turn);
                    return;
                }
                Poll::Ready(Some((stream, connector))) => {
                    let io = Io::new(&self.shared, stream);
                    self.state = NodeState::Serving(io, connector);
                    turn.progressed = true;
                }
            }
        }
        let NodeState::Serving(io, _) = &mut self.state else {
            self.refuse_handed(handed, turn);
            return;
        };
        turn.running = true;
        match write_half(&self.shared, io, cx, handed, &mut turn.woke) {
            Ok(progressed) => turn.progressed |= progressed,
            Err(error) => self.fail(error, turn),
        }
    }

    /// A node that is not serving refuses the handed requests, as a caller's send would (not
    /// connected, closed): those answers may decide ops now.
    fn refuse_handed(&self, handed: Option<Handover<'_>>, turn: &mut Turn) {
        if let Some(h) = handed {
            let wakers = send_handed(&self.shared, &mut self.shared.lock(), h, Room::None);
            wake_refused(Some(wakers), &mut turn.woke);
        }
    }

    /// The read half of a turn: reads what the socket has (up to `READS_PER_TURN` reads) and
    /// hands out the replies.
    fn read(&mut self, cx: &mut Context<'_>, turn: &mut Turn) {
        let NodeState::Serving(io, _) = &mut self.state else {
            return;
        };
        match read_half(&self.shared, io, cx) {
            Ok((progressed, woke)) => {
                turn.progressed |= progressed;
                turn.woke += woke;
            }
            Err(error) => self.fail(error, turn),
        }
    }

    /// The connection failed or was closed: fails what is in flight and starts reconnecting
    /// after a backoff (or ends, if it was closed).
    fn fail(&mut self, error: Error, turn: &mut Turn) {
        fail_in_flight(&self.shared, error);
        let connector = match std::mem::replace(&mut self.state, NodeState::Closed) {
            NodeState::Serving(_, connector) => connector,
            _ => Connector::new(),
        };
        let config = &self.shared.config;
        let delay = backoff(config.backoff_base, config.backoff_max, 0);
        self.state = NodeState::Connecting(Box::pin(connect(
            self.shared.clone(),
            connector,
            Some(delay),
        )));
        // Another turn polls the new connect, which registers its wake.
        turn.progressed = true;
    }
}

/// Connects and handshakes, after `delay` if given, retrying with backoff until it succeeds;
/// `None` once the connection is closed.
async fn connect(
    shared: Arc<Shared>,
    mut connector: Connector,
    mut delay: Option<Duration>,
) -> Option<(Stream, Connector)> {
    let mut failures: u32 = 0;
    loop {
        if let Some(delay) = delay.take() {
            event!(DEBUG, node = %shared.config.addr(), failures, delay = ?delay, "reconnecting");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shared.shutdown.notified() => return None,
            }
        }
        if shared.lock().closed {
            return None;
        }
        let attempt = tokio::select! {
            r = handshake::establish(&shared.config, &mut connector) => r,
            _ = shared.shutdown.notified() => return None,
        };
        match attempt {
            Ok((stream, info)) => {
                shared
                    .delex
                    .store(info.has_delex, std::sync::atomic::Ordering::Relaxed);
                let info = Arc::new(info);
                #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
                let (connects, restarted) = {
                    let mut st = shared.lock();
                    st.status = Status::Connected;
                    st.uptime_at = Some((credited_uptime(info.uptime), Instant::now()));
                    let restarted = st.note_server(&info);
                    st.info = Some(info.clone());
                    st.attempts += 1;
                    st.connects += 1;
                    (st.connects, restarted)
                };
                shared.changed.notify_waiters();
                event!(INFO, node = %shared.config.addr(), connects, server = %info.server,
                    version = %info.version, "node up");
                if restarted {
                    event!(WARN, node = %shared.config.addr(), marker = ?info.restart_marker,
                        "server restart detected: another server process than before");
                }
                return Some((stream, connector));
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                // Wrong credentials or refused certificates do not fix themselves.
                let refused = error.is_refusal();
                let was = {
                    let mut st = shared.lock();
                    let was = st.status;
                    st.status = Status::Down;
                    st.last_error = Some(error.clone());
                    st.attempts += 1;
                    was
                };
                shared.changed.notify_waiters();
                if was == Status::Down {
                    event!(DEBUG, node = %shared.config.addr(), failures, reason = %error,
                        "reconnect attempt failed");
                } else {
                    event!(WARN, node = %shared.config.addr(), reason = %error,
                        "node down: connect failed");
                }
                delay = Some(reconnect_delay(&shared.config, failures, refused));
            }
        }
    }
}

/// Expires the group's open lock phases when its driver ends, returns or unwinds.
/// Dropped with the group's task, however it ends (every connection closed, its runtime shut
/// down, a panic): its lock phases expire, and its connections refuse every request with
/// `TaskGone` and fail those in flight, so that callers learn it at once, not at their
/// deadlines (a manager made on a runtime that was then dropped, as a `static` shared between
/// `#[tokio::test]`s is, used to wait out each lock's validity and report every node silent).
struct DriverGone {
    ops: Option<Arc<OpTable>>,
    connections: Vec<Arc<Shared>>,
}

impl Drop for DriverGone {
    fn drop(&mut self) {
        for shared in &self.connections {
            let closed = {
                let mut st = shared.lock();
                st.task_gone = true;
                st.closed
            };
            // Closed by their owner (the usual end of the task): nothing to tell.
            if !closed {
                fail_in_flight(shared, Error::new(ErrorKind::TaskGone));
            }
        }
        if let Some(ops) = &self.ops {
            ops.driver_gone();
        }
    }
}

/// The wait before the next connect after `failures` failed ones in a row: the config's
/// backoff, and at least [`AUTH_FAILURE_BACKOFF`](super::AUTH_FAILURE_BACKOFF) after a refusal
/// (credentials, a TLS certificate), which trying again at once would only repeat. The lock
/// connections' and the subscriber connections' rule.
pub(super) fn reconnect_delay(
    config: &super::ConnectionConfig,
    failures: u32,
    refused: bool,
) -> Duration {
    let delay = backoff(config.backoff_base, config.backoff_max, failures);
    if refused {
        delay.max(super::AUTH_FAILURE_BACKOFF)
    } else {
        delay
    }
}

/// Full jitter: a uniform delay below `min(max, base * 2^failures)`.
fn backoff(base: Duration, max: Duration, failures: u32) -> Duration {
    let bound = base.saturating_mul(1u32 << failures.min(16)).min(max);
    let nanos = bound.as_nanos().min(u64::MAX as u128) as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

/// The uptime the restart delay may count on, from what the handshake just read. The server's
/// `uptime_in_seconds` is the difference of two whole-second wall-clock readings (now and the
/// start, each rounded down), so it can exceed the true uptime by almost a second: a process
/// up for 1 ms reports 1 when a second boundary fell in between. One second is taken off.
/// Without a reading the server counts as just started. Both err towards not voting.
fn credited_uptime(reported: Option<Duration>) -> Duration {
    reported
        .unwrap_or_default()
        .saturating_sub(Duration::from_secs(1))
}

/// Marks the node down and fails every request in flight with `error` at once.
fn fail_in_flight(shared: &Shared, error: Error) {
    let mut wakers: SmallVec<[Waker; WAKE_BATCH]> = SmallVec::new();
    #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
    let in_flight = {
        let mut st = shared.lock();
        let in_flight = st.slots.queued();
        st.stats.errors.connection_lost += in_flight as u64;
        st.stats.errors.protocol += u64::from(error.is_protocol());
        st.status = Status::Down;
        st.socket = None;
        reset_buffer(&mut st.write_buf, shared.config.write_buffer);
        st.driver_waker = None;
        st.driver_writing = false;
        // Taken once, at the first request of an op (lock order: state, then ops).
        let mut ops = None;
        while let Some(popped) = st.slots.pop_oldest() {
            match popped.owner {
                Owner::Dropped => {}
                Owner::Op(op, node) => {
                    // `send_op` names an op only on a connection of a group, which has the
                    // table.
                    if let Some(table) = shared.ops.as_deref() {
                        let table = ops.get_or_insert_with(|| table.lock());
                        if let Some(w) = table.answer(op, node, Err(error.clone())) {
                            wakers.push(w);
                        }
                    }
                }
                Owner::Slot(id) => {
                    let slot = st.slots.get_mut(id);
                    slot.reply = Some(Err(error.clone()));
                    if let Some(w) = slot.waker.take() {
                        wakers.push(w);
                    }
                }
            }
        }
        st.last_error = Some(error.clone());
        in_flight
    };
    shared.changed.notify_waiters();
    wakers.into_iter().for_each(Waker::wake);
    if matches!(error.kind(), ErrorKind::Closed) {
        event!(DEBUG, node = %shared.config.addr(), in_flight, "connection closed by its owner");
    } else {
        event!(WARN, node = %shared.config.addr(), reason = %error, in_flight, "node down");
    }
}

struct Io {
    stream: Arc<TcpStream>,
    /// The TLS session, for a TLS connection: the driver alone encrypts and decrypts.
    tls: Option<Box<Session>>,
    decoder: Decoder,
    read_buf: BytesMut,
    /// The bytes being written; swapped with the shared write buffer when empty.
    out: BytesMut,
    /// How much of `out` is written: a cursor rather than `advance`, so the buffer's start never
    /// moves and clearing it gives back its whole room, with nothing to reclaim.
    written: usize,
}

impl Io {
    fn new(shared: &Shared, stream: Stream) -> Io {
        let tcp = Arc::new(stream.tcp);
        if stream.tls.is_none() {
            // Plain TCP: an idle connection's callers may write to the socket themselves.
            shared.lock().socket = Some(tcp.clone());
        }
        Io {
            stream: tcp,
            tls: stream.tls,
            decoder: Decoder::new(shared.config.decoder),
            read_buf: BytesMut::with_capacity(shared.config.read_buffer),
            out: BytesMut::with_capacity(shared.config.write_buffer),
            written: 0,
        }
    }
}

/// Takes what callers queued (or registers to be woken when they queue something) and writes
/// as much as the socket takes. Returns whether bytes went out.
fn write_half(
    shared: &Shared,
    io: &mut Io,
    cx: &mut Context<'_>,
    handed: Option<Handover<'_>>,
    woke: &mut usize,
) -> Result<bool, Error> {
    let mut progressed = false;
    // Take what callers queued, or register to be woken when they queue something.
    if io.out.is_empty() {
        let mut st = shared.lock();
        // Behind what callers queued themselves; a refused one is that node's answer, and its
        // caller is woken once the lock is released.
        let refused = handed.map(|h| send_handed(shared, &mut st, h, Room::Flushed));
        if st.closed {
            drop(st);
            wake_refused(refused, woke);
            return Err(Error::new(ErrorKind::Closed));
        }
        // Whatever it took before is written: callers may write directly again.
        st.driver_writing = false;
        if st.write_buf.is_empty() {
            match &st.driver_waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.driver_waker = Some(cx.waker().clone()),
            }
        } else {
            std::mem::swap(&mut io.out, &mut st.write_buf);
            st.driver_writing = true;
        }
        drop(st);
        wake_refused(refused, woke);
    } else if let Some(h) = handed {
        // Still writing what it took before (the socket was full): the handed requests queue
        // in the buffer behind it, as callers' own sends do, and are refused when it is full.
        // Waiting instead held a stalled node's releases, and their ops' entries, until the
        // node came back.
        let refused = send_handed(shared, &mut shared.lock(), h, Room::Queued);
        wake_refused(Some(refused), woke);
    }

    // Write as much as the socket takes.
    if let Some(tls) = io.tls.as_deref_mut() {
        if io.written < io.out.len() || tls.wants_write() {
            match tls.poll_write(&io.stream, &io.out, &mut io.written, cx) {
                Ok(p) => progressed |= p,
                Err(e) => return Err(e),
            }
        }
    }
    while io.tls.is_none() && io.written < io.out.len() {
        match io.stream.poll_write_ready(cx) {
            Poll::Pending => break,
            Poll::Ready(Err(e)) => return Err(e.into()),
            Poll::Ready(Ok(())) => {}
        }
        match io.stream.try_write(&io.out[io.written..]) {
            Ok(n) => {
                io.written += n;
                progressed = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    }
    if io.written == io.out.len() && !io.out.is_empty() {
        // All written: empty, with its whole room, before callers fill it again. Its start
        // moved only if a caller's direct write was partial (see `reset_buffer`).
        io.written = 0;
        reset_buffer(&mut io.out, shared.config.write_buffer);
        // Nothing of the driver's is half-written now: until its next turn takes the buffer,
        // a caller that finds it full may send it (see `enqueue_n`) rather than be refused.
        // Left set until the next turn, it stayed set through the task's yield on the nodes
        // whose replies woke nobody, and a group of 256 callers, all sending in one round, had
        // 15-20% of its acquires refused as `Overloaded` there.
        shared.lock().driver_writing = false;
    } else if io.written < io.out.len() {
        // The socket is full: the task waits for it to take more, and a peer that reads
        // nothing (a stopped node) may never make room, while the kernel keeps answering its
        // zero-window probes. A close must not wait with it: it is seen here, and the task's
        // waker is left where closing the connection (`Handle::drop`) wakes it.
        let mut st = shared.lock();
        if st.closed {
            return Err(Error::new(ErrorKind::Closed));
        }
        match &st.driver_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.driver_waker = Some(cx.waker().clone()),
        }
    }
    Ok(progressed)
}

/// Wakes the callers whose ops a refusal decided, once the connection's lock is released.
fn wake_refused(refused: Option<SmallVec<[Waker; WAKE_BATCH]>>, woke: &mut usize) {
    if let Some(mut wakers) = refused {
        *woke += wakers.len();
        // Drained in place: `into_iter` would move the whole inline array first.
        wakers.drain(..).for_each(Waker::wake);
    }
}

/// What a node's buffer can take of the handed requests (see `send_handed`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Room {
    /// The buffer is written right after: a request that does not fit waits for the next turn.
    Flushed,
    /// The node is still writing what it took before: a request that does not fit is refused
    /// (`Overloaded`), as a caller's send to a full buffer is.
    Queued,
    /// The node is not serving: only refusals are taken (its checks refuse every request).
    None,
}

/// What a handed request sent with its script's source may need beyond its own length.
const SOURCE_ROOM: usize = 512;

/// Puts the requests of the ops handed to the driver into node `h.node`'s buffer (`st`, its
/// locked state), in the order they were handed over, each after the checks a caller's own
/// send makes (`admit`); a refused one is that node's answer in its op. A request that does
/// not fit the buffer (an acquire leaves a quarter of it, as a caller's does) is refused, or,
/// with the buffer about to be written (`Room::Flushed`), stops this node's list until the next
/// turn, so requests to one node keep their order. Returns the callers to wake (a refusal
/// decided their op), to be woken once the connection's lock is released.
fn send_handed(
    shared: &Shared,
    st: &mut State,
    h: Handover<'_>,
    room_kind: Room,
) -> SmallVec<[Waker; WAKE_BATCH]> {
    let mut wakers: SmallVec<[Waker; WAKE_BATCH]> = SmallVec::new();
    // Lock order: the connection's state, then the table (as in `dispatch`).
    let mut t = h.table.lock();
    let room = shared.config.write_buffer;
    for &index in h.ops {
        let Some((id, handed)) = t.unsent_request(index, h.node) else {
            continue;
        };
        let meta = handed.meta;
        // With the source: room for the script's source in place of its SHA-1 (short scripts).
        let with_source = meta.form == Form::WithSource;
        let len = handed.request.len() + usize::from(with_source) * SOURCE_ROOM;
        let discarded = usize::from(meta.discarded);
        let refusal = match admit(shared, st, meta.min_uptime, discarded, meta.acquire) {
            Err(e) => Some(e),
            Ok(()) => {
                // An empty buffer takes any request (the bound is the buffer's room, which it
                // is reset to after each write, so this allocates nothing).
                let reserve = if meta.acquire { room / 4 } else { 0 };
                let fits = st.write_buf.is_empty() || st.write_buf.len() + len + reserve <= room;
                match room_kind {
                    Room::Flushed | Room::Queued if fits => None,
                    // An acquire short of its reserve waits without holding up the requests
                    // behind it (only requests with the same token need their order, and an
                    // acquire's release is opened only after the acquire is given back).
                    Room::Flushed if meta.acquire => continue,
                    Room::Flushed | Room::None => break,
                    Room::Queued => {
                        st.stats.errors.refused_overloaded += 1;
                        Some(Error::new(ErrorKind::Overloaded))
                    }
                }
            }
        };
        let Some(e) = refusal else {
            if !with_source {
                st.write_buf.extend_from_slice(&handed.request);
            } else if !write_with_source(&mut st.write_buf, &handed.request, meta.source) {
                // Not a script call (never the case for a kept release): that node's copy
                // cannot go, as if refused.
                let e = Error::new(ErrorKind::UnexpectedReply);
                if let Some(w) = t.handed_failed(index, h.node, e) {
                    wakers.push(w);
                }
                continue;
            }
            take_slots(st, meta.sent_us, discarded, Some((id, h.node)));
            t.handed_sent(index, h.node);
            continue;
        };
        if let Some(w) = t.handed_failed(index, h.node, e) {
            wakers.push(w);
            if wakers.len() == WAKE_BATCH {
                // The rest at the next turn.
                break;
            }
        }
    }
    wakers
}

/// Reads everything the socket has and hands out the replies. Returns whether bytes came in,
/// and how many callers were woken.
fn read_half(shared: &Shared, io: &mut Io, cx: &mut Context<'_>) -> Result<(bool, usize), Error> {
    let mut progressed = false;
    let mut woke = 0;
    // Read what is available, up to `READS_PER_TURN` reads, and hand out the replies.
    let mut reads = 0;
    if let Some(tls) = io.tls.as_deref_mut() {
        while reads < READS_PER_TURN {
            reads += 1;
            make_read_room(&mut io.read_buf, shared.config.read_buffer);
            let room = io.read_buf.capacity() - io.read_buf.len();
            match tls.poll_read(&io.stream, &mut io.read_buf, room, cx) {
                Poll::Pending => break,
                Poll::Ready(Ok(Some(n))) => {
                    progressed = true;
                    if n > 0 {
                        match dispatch(shared, &mut io.decoder, &mut io.read_buf) {
                            Ok(w) => woke += w,
                            Err(e) => return Err(e),
                        }
                    }
                }
                Poll::Ready(Ok(None)) => return Err(Error::new(ErrorKind::Eof)),
                Poll::Ready(Err(e)) => return Err(e),
            }
        }
    }
    while io.tls.is_none() && reads < READS_PER_TURN {
        match io.stream.poll_read_ready(cx) {
            Poll::Pending => break,
            Poll::Ready(Err(e)) => return Err(e.into()),
            Poll::Ready(Ok(())) => {}
        }
        make_read_room(&mut io.read_buf, shared.config.read_buffer);
        let spare = io.read_buf.capacity() - io.read_buf.len();
        let mut n = 0;
        let read = io.stream.try_io(Interest::READABLE, || {
            n = io.stream.try_read_buf(&mut io.read_buf)?;
            if n > 0 && n < spare {
                // A short read took everything there was: clear the readiness now rather
                // than pay a second read that can only answer EAGAIN. Bytes that arrive
                // later raise a new readiness event, which tokio does not clear.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match (read, n) {
            (_, 1..) => {
                // Only reads that brought bytes count: one that found none cleared the
                // readiness, and the next poll registers for it.
                reads += 1;
                progressed = true;
                match dispatch(shared, &mut io.decoder, &mut io.read_buf) {
                    Ok(w) => woke += w,
                    Err(e) => return Err(e),
                }
            }
            (Ok(()), 0) => return Err(Error::new(ErrorKind::Eof)),
            (Err(e), 0) if e.kind() == io::ErrorKind::WouldBlock => continue,
            (Err(e), 0) => return Err(e.into()),
        }
    }
    Ok((progressed, woke))
}

/// Records the round trip of a request sent at `sent_us`, whose reply was just read, on the
/// clock reading `dispatch` takes once (at its first reply): see `ConnectionStats::rtt`.
fn record_rtt(st: &mut State, sent_us: u32, read_at: &mut Option<u32>) {
    let read_us = *read_at.get_or_insert_with(now_us);
    st.stats
        .rtt
        .record(read_us.wrapping_sub(sent_us) & RTT_CLOCK_MASK);
}

/// Makes room in the read buffer for the next read, without allocating in any burst of small
/// replies.
///
/// Reads append past what the buffer holds, and `dispatch` consumes the complete frames from the
/// front, so between reads it keeps at most the start of one frame. Once less than half of
/// `capacity` is left past the end, those kept bytes move to the front (`try_reclaim`: a copy of
/// part of one frame, never an allocation), so a burst larger than the buffer is read in
/// several reads into the same memory. Only a frame too large to move cheaply (over a quarter of
/// the buffer) or pinned by a caller's zero-copy frame makes it allocate, and the buffer goes
/// back to `capacity` once it is empty again.
#[inline]
fn make_read_room(buf: &mut BytesMut, capacity: usize) {
    let room = buf.capacity() - buf.len();
    // The common case: a few replies were read and consumed since the last move.
    if room >= capacity / 2 && room <= capacity {
        return;
    }
    more_read_room(buf, capacity);
}

#[inline(never)]
fn more_read_room(buf: &mut BytesMut, capacity: usize) {
    let half = capacity / 2;
    if buf.is_empty() {
        reset_buffer(buf, capacity);
    } else if buf.capacity() - buf.len() < half && !buf.try_reclaim(half) {
        buf.reserve(half);
    }
}

/// Decodes every complete frame in `buf` and gives each reply to the oldest request in flight.
/// Returns how many callers were woken.
fn dispatch(shared: &Shared, decoder: &mut Decoder, buf: &mut BytesMut) -> Result<usize, Error> {
    let mut woke = 0;
    // One clock reading for every reply this call hands out (they came in the same read, or
    // reads microseconds apart), taken at the first: see `ConnectionStats::rtt`.
    let mut read_at: Option<u32> = None;
    loop {
        let mut wakers: SmallVec<[Waker; WAKE_BATCH]> = SmallVec::new();
        let mut result = Ok(());
        // The general path stopped at a frame after which an op's reply is due: back to the
        // in-place reads.
        let mut in_place_next = false;
        {
            let mut st = shared.lock();
            // Taken once, at the first reply of an op (lock order: state, then ops).
            let mut ops = None;
            let table = shared.ops.as_deref();
            // In place first: a lock phase's replies (`+OK`, a nil, `:1`, `:0`) are classified
            // from their bytes and counted in their op, without a frame built and dropped, as
            // long as the oldest request is an op's (or abandoned) and the bytes are one of
            // those. Anything else takes the decoder's general path below. Both hand each reply
            // to the oldest request, in order.
            let mut used = 0;
            while wakers.len() < WAKE_BATCH {
                let Some(oldest) = st.slots.oldest_frameless() else {
                    break;
                };
                let Some((reply, len)) = decoder.lock_reply(&buf[used..]) else {
                    break;
                };
                used += len;
                st.slots.pop_frameless(oldest);
                record_rtt(&mut st, oldest.sent_us, &mut read_at);
                // A reply nobody waits for is dropped; an op's is counted in it.
                let waker = oldest.op.zip(table).and_then(|((op, node), t)| {
                    ops.get_or_insert_with(|| t.lock())
                        .answer_lock(op, node, reply)
                });
                if let Some(w) = waker {
                    wakers.push(w);
                }
            }
            buf.advance(used);
            let decoded = if wakers.len() == WAKE_BATCH || buf.is_empty() {
                Ok(())
            } else {
                decoder.decode_each(buf, |frame| {
                    if frame.is_push() {
                        st.pushes += 1;
                        return ControlFlow::Continue(());
                    }
                    let Some(popped) = st.slots.pop_oldest() else {
                        result = Err(Error::new(ErrorKind::UnsolicitedReply));
                        return ControlFlow::Break(());
                    };
                    record_rtt(&mut st, popped.sent_us, &mut read_at);
                    let st = &mut *st;
                    st.stats.errors.server_errors += u64::from(matches!(frame, Frame::Error(_)));
                    let waker = match popped.owner {
                        Owner::Dropped => None,
                        // A lock phase's reply: counted in its op, in place; its caller is woken
                        // only when this decides the op (see `ops.rs`). `send_op` names an op
                        // only on a connection of a group (see above).
                        Owner::Op(op, node) => table.and_then(|t| {
                            ops.get_or_insert_with(|| t.lock())
                                .answer(op, node, Ok(frame))
                        }),
                        Owner::Slot(id) => {
                            let slot = st.slots.get_mut(id);
                            slot.reply = Some(Ok(frame));
                            slot.waker.take()
                        }
                    };
                    if let Some(w) = waker {
                        wakers.push(w);
                        if wakers.len() == WAKE_BATCH {
                            // Wake these before handing out more, without the locks held.
                            return ControlFlow::Break(());
                        }
                    }
                    if st.slots.oldest_frameless().is_some() {
                        in_place_next = true;
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                })
            };
            if let Err(e) = decoded {
                result = Err(e.into());
            }
            if !wakers.is_empty() {
                // The driver yields after handing out replies to several callers (see
                // `run_group`); until it is back, callers' requests wait in the buffer for its
                // next write.
                st.driver_waker = None;
            }
        }
        let more = wakers.len() == WAKE_BATCH || (in_place_next && !buf.is_empty());
        woke += wakers.len();
        // Drained in place: `into_iter` would move the whole inline array (512 bytes) first.
        wakers.drain(..).for_each(Waker::wake);
        result?;
        if !more {
            return Ok(woke);
        }
    }
}
