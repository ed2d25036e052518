//! The driver task: one per connection. It owns the socket.
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
//! The I/O loop (`poll_serve`) advances both directions in every turn: it hands everything
//! callers queued to the socket in one write, then reads until the socket is empty. It never
//! blocks on the write side while replies are waiting to be read, so both sides' buffers can
//! be full without deadlock.

use std::future::{poll_fn, Future};
use std::io;
use std::ops::ControlFlow;
use std::pin::Pin;
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
use super::ops::{DeadlineTimer, OpTable};
use super::stats::{now_us, RTT_CLOCK_MASK};
use super::tls::{Connector, Session};
use super::{reset_buffer, Shared, State, Status};
use crate::error::{Error, ErrorKind};
use crate::resp::{Decoder, Frame};
use crate::trace::event;

/// Loop turns before the driver yields to other tasks, so a fire hose on one socket cannot starve
/// the runtime's other tasks.
const TURNS_BEFORE_YIELD: usize = 32;

/// Wakers gathered while the lock is held and woken after it is released; a fixed array so it
/// never allocates.
const WAKE_BATCH: usize = 32;

pub(super) async fn run(shared: Arc<Shared>) {
    let mut failures: u32 = 0;
    let mut connector = Connector::new();
    loop {
        if shared.lock().closed {
            return;
        }
        let attempt = tokio::select! {
            r = handshake::establish(&shared.config, &mut connector) => Some(r),
            _ = shared.shutdown.notified() => None,
        };
        // Wrong credentials or refused certificates do not fix themselves.
        let mut refused = false;
        match attempt {
            None => return,
            Some(Ok((stream, info))) => {
                failures = 0;
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
                let error = serve(&shared, stream).await;
                fail_in_flight(&shared, error);
            }
            Some(Err(error)) => {
                failures = failures.saturating_add(1);
                refused = error.is_refusal();
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
            }
        }
        let mut delay = backoff(
            shared.config.backoff_base,
            shared.config.backoff_max,
            failures,
        );
        if refused {
            delay = delay.max(super::AUTH_FAILURE_BACKOFF);
        }
        event!(DEBUG, node = %shared.config.addr(), failures, delay = ?delay, "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.shutdown.notified() => return,
        }
    }
}

/// Drives several connections from one task: every driver's future is polled on each wake.
/// A wake is for one socket or for a caller's request, and polling a driver with nothing to do
/// costs a lock and a readiness check, less than the task wakes it saves (one per node and
/// turn). A driver that ends (its connection closed) is not polled again; the task ends with the
/// last one.
///
/// The task also keeps the deadlines of the group's lock phases, with one timer (see
/// `OpTable::drive_deadlines`); when it ends or is dropped, the phases still open expire.
pub(super) fn run_group(shared: Vec<Arc<Shared>>) -> impl Future<Output = ()> + Send {
    let ops = shared.first().and_then(|s| s.ops.clone());
    // Made here, not in the future's body: a task dropped before its first poll drops it too.
    let gone = ops.clone().map(DriverGone);
    async move {
        let _gone = gone;
        group(shared, ops).await
    }
}

async fn group(shared: Vec<Arc<Shared>>, ops: Option<Arc<OpTable>>) {
    let mut drivers: Vec<Option<Pin<Box<dyn Future<Output = ()> + Send>>>> = shared
        .into_iter()
        .map(|s| Some(Box::pin(run(s)) as Pin<Box<dyn Future<Output = ()> + Send>>))
        .collect();
    // Armed only for an op's deadline; never polled before.
    let sleep = tokio::time::sleep_until(Instant::now());
    tokio::pin!(sleep);
    let mut timer = DeadlineTimer::default();
    poll_fn(|cx| {
        if let Some(ops) = &ops {
            ops.drive_deadlines(cx, sleep.as_mut(), &mut timer);
        }
        let mut running = false;
        for slot in drivers.iter_mut() {
            if let Some(driver) = slot {
                if driver.as_mut().poll(cx).is_ready() {
                    *slot = None;
                } else {
                    running = true;
                }
            }
        }
        if running {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await
}

/// Expires the group's open lock phases when its driver ends, returns or unwinds.
struct DriverGone(Arc<OpTable>);

impl Drop for DriverGone {
    fn drop(&mut self) {
        self.0.driver_gone();
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
        while let Some(id) = st.slots.pop_oldest() {
            let slot = st.slots.get_mut(id);
            if slot.abandoned() {
                st.slots.release(id);
            } else if let Some((op, node)) = slot.op() {
                st.slots.release(id);
                // `send_op` names an op only on a connection of a group, which has the table.
                if let Some(table) = shared.ops.as_deref() {
                    let table = ops.get_or_insert_with(|| table.lock());
                    if let Some(w) = table.answer(op, node, Err(error.clone())) {
                        wakers.push(w);
                    }
                }
            } else {
                slot.reply = Some(Err(error.clone()));
                if let Some(w) = slot.waker.take() {
                    wakers.push(w);
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

/// Runs the I/O loop until the connection fails or is closed; returns why it ended.
async fn serve(shared: &Shared, stream: Stream) -> Error {
    let tcp = Arc::new(stream.tcp);
    if stream.tls.is_none() {
        // Plain TCP: an idle connection's callers may write to the socket themselves.
        shared.lock().socket = Some(tcp.clone());
    }
    let mut io = Io {
        stream: tcp,
        tls: stream.tls,
        decoder: Decoder::new(shared.config.decoder),
        read_buf: BytesMut::with_capacity(shared.config.read_buffer),
        out: BytesMut::with_capacity(shared.config.write_buffer),
        written: 0,
    };
    poll_fn(|cx| poll_serve(shared, &mut io, cx)).await
}

fn poll_serve(shared: &Shared, io: &mut Io, cx: &mut Context<'_>) -> Poll<Error> {
    for _ in 0..TURNS_BEFORE_YIELD {
        let mut progressed = false;
        let mut woke = false;

        // Take what callers queued, or register to be woken when they queue something.
        if io.out.is_empty() {
            let mut st = shared.lock();
            if st.closed {
                return Poll::Ready(Error::new(ErrorKind::Closed));
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
        }

        // Write as much as the socket takes.
        if let Some(tls) = io.tls.as_deref_mut() {
            if io.written < io.out.len() || tls.wants_write() {
                match tls.poll_write(&io.stream, &io.out, &mut io.written, cx) {
                    Ok(p) => progressed |= p,
                    Err(e) => return Poll::Ready(e),
                }
            }
        }
        while io.tls.is_none() && io.written < io.out.len() {
            match io.stream.poll_write_ready(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Poll::Ready(e.into()),
                Poll::Ready(Ok(())) => {}
            }
            match io.stream.try_write(&io.out[io.written..]) {
                Ok(n) => {
                    io.written += n;
                    progressed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(e.into()),
            }
        }
        if io.written == io.out.len() && !io.out.is_empty() {
            // All written: empty, with its whole room, before callers fill it again. Its start
            // moved only if a caller's direct write was partial (see `reset_buffer`).
            io.written = 0;
            reset_buffer(&mut io.out, shared.config.write_buffer);
        }

        // Read everything available and hand out the replies.
        if let Some(tls) = io.tls.as_deref_mut() {
            loop {
                make_read_room(&mut io.read_buf, shared.config.read_buffer);
                let room = io.read_buf.capacity() - io.read_buf.len();
                match tls.poll_read(&io.stream, &mut io.read_buf, room, cx) {
                    Poll::Pending => break,
                    Poll::Ready(Ok(Some(n))) => {
                        progressed = true;
                        if n > 0 {
                            match dispatch(
                                shared,
                                &mut io.decoder,
                                &mut io.read_buf,
                                io.out.is_empty(),
                            ) {
                                Ok(w) => woke |= w,
                                Err(e) => return Poll::Ready(e),
                            }
                        }
                    }
                    Poll::Ready(Ok(None)) => return Poll::Ready(Error::new(ErrorKind::Eof)),
                    Poll::Ready(Err(e)) => return Poll::Ready(e),
                }
            }
        }
        while io.tls.is_none() {
            match io.stream.poll_read_ready(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Poll::Ready(e.into()),
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
                    progressed = true;
                    match dispatch(shared, &mut io.decoder, &mut io.read_buf, io.out.is_empty()) {
                        Ok(w) => woke |= w,
                        Err(e) => return Poll::Ready(e),
                    }
                }
                (Ok(()), 0) => return Poll::Ready(Error::new(ErrorKind::Eof)),
                (Err(e), 0) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (Err(e), 0) => return Poll::Ready(e.into()),
            }
        }

        if woke {
            // Callers were handed replies: let them run before writing again, so that the
            // requests they send next go out together, one write per node, rather than one by
            // one as each caller wakes the driver. The wake puts this task at the back of the
            // run queue, behind them; `dispatch` unregistered the driver's waker, so their
            // sends neither wake it again nor write on their own meanwhile.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if !progressed {
            return Poll::Pending;
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// Records the round trip of request `id`, whose reply was just read, on the clock reading
/// `dispatch` takes once (at its first reply): see `ConnectionStats::rtt`.
fn record_rtt(st: &mut State, id: u32, read_at: &mut Option<u32>) {
    let read_us = *read_at.get_or_insert_with(now_us);
    let sent_us = st.slots.get_mut(id).sent_us();
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
/// Returns whether any caller was woken.
/// `written`: the driver holds nothing half-written (what it took from the buffer is all out).
fn dispatch(
    shared: &Shared,
    decoder: &mut Decoder,
    buf: &mut BytesMut,
    written: bool,
) -> Result<bool, Error> {
    let mut woke = false;
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
                let Some((id, op)) = st.slots.oldest_frameless() else {
                    break;
                };
                let Some((reply, len)) = decoder.lock_reply(&buf[used..]) else {
                    break;
                };
                used += len;
                st.slots.pop_oldest();
                record_rtt(&mut st, id, &mut read_at);
                st.slots.release(id);
                // An abandoned slot's reply is dropped; an op's is counted in it.
                let waker = op.zip(table).and_then(|((op, node), t)| {
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
                    let Some(id) = st.slots.pop_oldest() else {
                        result = Err(Error::new(ErrorKind::UnsolicitedReply));
                        return ControlFlow::Break(());
                    };
                    record_rtt(&mut st, id, &mut read_at);
                    let st = &mut *st;
                    st.stats.errors.server_errors += u64::from(matches!(frame, Frame::Error(_)));
                    let slot = st.slots.get_mut(id);
                    let waker = if slot.abandoned() {
                        st.slots.release(id);
                        None
                    } else if let Some((op, node)) = slot.op() {
                        // A lock phase's reply: counted in its op, in place; its caller is woken
                        // only when this decides the op (see `ops.rs`).
                        st.slots.release(id);
                        // `send_op` names an op only on a connection of a group (see above).
                        table.and_then(|t| {
                            ops.get_or_insert_with(|| t.lock())
                                .answer(op, node, Ok(frame))
                        })
                    } else {
                        slot.reply = Some(Ok(frame));
                        slot.waker.take()
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
                // The driver yields after handing out replies (see `poll_serve`); until it
                // is back, callers' requests wait in the buffer for its next write. With
                // nothing of its own half-written, a caller that finds the buffer full may
                // send it meanwhile (see `enqueue_n`), rather than be refused.
                st.driver_waker = None;
                if written {
                    st.driver_writing = false;
                }
            }
        }
        let more = wakers.len() == WAKE_BATCH || (in_place_next && !buf.is_empty());
        woke |= !wakers.is_empty();
        wakers.into_iter().for_each(Waker::wake);
        result?;
        if !more {
            return Ok(woke);
        }
    }
}
