//! One node: a persistent, pipelined, cancel-safe TCP connection.
//!
//! A [`Connection`] is a cheap handle (clone it freely) on one socket driven by one background
//! task, the *driver*. Callers encode their command straight into the shared write buffer and get
//! a [`ReplyFuture`] for the reply slot they were given; the driver writes whatever has
//! accumulated in one syscall, reads, decodes, and fills the slots in first-in first-out order.
//!
//! Layout:
//! - `mod.rs`: [`Connection`] and [`ReplyFuture`].
//! - `slots.rs`: the slot table, with the in-flight queue and the free list threaded through it.
//! - `driver.rs`: the driver task: I/O loop, failure handling, reconnect with backoff.
//! - `handshake.rs`: `HELLO`/`AUTH`/`SELECT`, server facts, script loading, in one round trip.
//! - `config.rs`: [`ConnectionConfig`] and URL parsing. `info.rs`: [`ServerInfo`].
//! - `script.rs`: [`Script`], with its SHA-1 computed locally.
//! - `subscriber.rs`: a pub/sub connection of its own, for release notifications.
//! - `stats.rs`: [`ConnectionStats`], the counters and the round-trip histogram behind it.
//! - `tls.rs`: `TlsConfig` and the rustls session the driver runs over the socket (the `tls`
//!   feature).
//!
//! Invariants (see `DESIGN.md`):
//! - A reply goes to the request at the head of the in-flight queue, nobody else. A request whose
//!   caller went away keeps its place; its reply is read and dropped. Pushes never take a place.
//! - On EOF, a socket error or a protocol error, every request in flight fails at once, and the
//!   driver alone reconnects (exponential backoff, full jitter).
//! - While the node is not connected, requests fail at once: a dead node costs nothing.
//! - Nothing is allocated per request, under any interleaving of requests and replies: the slot
//!   table (with the in-flight queue and the free list inside it), the write buffers and the
//!   read buffer have fixed capacities chosen when the connection starts (see
//!   [`ConnectionConfig`]'s memory table), and never grow. At either bound a request is
//!   refused with `Overloaded` before it is sent. Only a caller's oversized command or reply
//!   makes a buffer grow (the read buffer shrinks back).

mod config;
mod driver;
mod handshake;
mod info;
mod ops;
mod script;
mod slots;
mod stats;
mod subscriber;

pub(crate) use stats::now_us;
mod tls;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use config::{
    ConnectionConfig, Protocol, AUTH_FAILURE_BACKOFF, COMMAND_ROOM, DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_MAX, DEFAULT_CONNECT_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_READ_BUFFER, DEFAULT_WRITE_BUFFER, MAX_BUFFER, MAX_IN_FLIGHT_LIMIT, MIN_BUFFER,
};
pub use info::{RestartMarker, ServerInfo};
pub use script::{Script, ScriptCall};
pub use stats::{ConnectionState, ConnectionStats, ErrorCounts, RttHistogram, RTT_BUCKETS};
#[cfg(feature = "tls")]
pub use tls::{TlsConfig, TlsRoots};

use crate::error::{Error, ErrorKind};
use crate::resp::Frame;
pub(crate) use ops::{
    single_key_cleanup, Answer, Event as OpEvent, Fill, Form, Handed, HandedMeta, OpId, OpTable,
    Rule as OpRule, Verdict, MAX_OP_NODES,
};
use slots::SlotTable;
pub(crate) use subscriber::{PubSubCommand, PubSubEvent, PubSubSink, Subscriber};

/// A caller writes its request to the socket itself only while at most this many requests are
/// in flight. One covers the lock path's common case, a release sent while the acquire's `SET`
/// to a slower node is still out. Measured with 64 workers on 5 nodes: allowing any number cut
/// throughput from ~21,000 to ~7,700 cycles/s, because every caller paid its own `sendto`
/// instead of the driver coalescing a burst into one.
const DIRECT_WRITE_MAX_IN_FLIGHT: usize = 1;

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// The first connect has not finished yet.
    Starting,
    /// Connected and handshaken: requests are accepted.
    Connected,
    /// Down, reconnecting in the background: requests fail at once.
    Down,
}

struct State {
    status: Status,
    closed: bool,
    /// The driving task is gone (its runtime shut down): every request is refused with
    /// `TaskGone`, at once rather than at its deadline.
    task_gone: bool,
    /// Commands not yet handed to the driver, in queue order.
    write_buf: BytesMut,
    /// Every request's place, with the in-flight queue (oldest first) and the free list.
    slots: SlotTable,
    /// Set while the driver waits for work; whoever adds work takes it and wakes the driver.
    driver_waker: Option<Waker>,
    /// The driver holds bytes it took from `write_buf` and has not finished writing: nobody
    /// else may write to the socket until it has.
    driver_writing: bool,
    /// The socket, while connected: an idle connection's caller writes to it directly. Never
    /// set for a TLS connection, whose records only the driver may write (see `tls.rs`).
    socket: Option<Arc<TcpStream>>,
    info: Option<Arc<ServerInfo>>,
    last_error: Option<Error>,
    /// Connect attempts finished (either way), and successful connects.
    attempts: u64,
    connects: u64,
    pushes: u64,
    /// The server's reported uptime and when it was read (at each connect, with the status, so
    /// a check under this lock sees the server it would send to).
    uptime_at: Option<(Duration, Instant)>,
    /// Counted under this lock, where it is held anyway (see `stats.rs`).
    stats: stats::Counters,
}

pub(crate) struct Shared {
    config: ConnectionConfig,
    state: Mutex<State>,
    /// Signalled on every status change.
    changed: Notify,
    /// Wakes the driver out of a connect or backoff when the connection is closed.
    shutdown: Notify,
    /// The server has `DELEX … IFEQ` (learned at each handshake); read without the lock on the
    /// release path.
    delex: AtomicBool,
    /// The lock phases of this connection's group (see `ops.rs`); `None` for a connection
    /// started alone.
    ops: Option<Arc<OpTable>>,
    /// Set while the task driving this connection (and the rest of its group) waits for work:
    /// no turn is running or scheduled. Only then does a caller write its request directly to
    /// an idle node (see `enqueue_n`); while the task runs or has yielded, requests wait for
    /// its next writes (a caller that finds the buffer full still sends it).
    /// A hint for batching, never for safety: the checks under the state lock make a direct
    /// write safe.
    task_parked: Arc<AtomicBool>,
    /// This connection's place in its group: the driver's node number for it.
    group_index: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent (every mutation is a few
        // plain assignments), so poisoning is ignored rather than spread.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Empties `buf` and gives it back exactly `capacity` bytes of room. After reads or a partial
/// write have consumed it from the front, its room is only what lies past the end until its
/// start is moved back; after an oversized command or frame it is larger than configured.
#[inline]
fn reset_buffer(buf: &mut BytesMut, capacity: usize) {
    buf.clear();
    if buf.capacity() != capacity {
        restore_capacity(buf, capacity);
    }
}

#[inline(never)]
fn restore_capacity(buf: &mut BytesMut, capacity: usize) {
    // With nothing kept, this only moves the start back to the allocation's: no copy and no
    // allocation. It fails only for a read buffer still shared with a frame a caller keeps.
    if !buf.try_reclaim(capacity) || buf.capacity() > capacity {
        *buf = BytesMut::with_capacity(capacity);
    }
}

/// Writes the write buffer straight to the socket; true when all of it went. Whatever did not go
/// (a full socket buffer, or an error the driver will meet and handle) stays for the driver.
fn write_now(st: &mut State, capacity: usize) -> bool {
    let Some(socket) = &st.socket else {
        return false;
    };
    match socket.try_write(&st.write_buf) {
        Ok(n) if n == st.write_buf.len() => {
            reset_buffer(&mut st.write_buf, capacity);
            true
        }
        Ok(n) => {
            bytes::Buf::advance(&mut st.write_buf, n);
            false
        }
        Err(_) => false,
    }
}

/// The checks before a request is written, under the connection's lock: the connection is
/// open and connected, up for `min_uptime` (the restart rule) and has places for `1 +
/// discarded` replies (see `slots.rs`), of which an acquire leaves a quarter free (see
/// `send_acquire`). A refusal is counted in the stats.
#[inline]
fn admit(
    shared: &Shared,
    st: &mut State,
    min_uptime: Option<Duration>,
    discarded: usize,
    acquire: bool,
) -> Result<(), Error> {
    if st.closed {
        return Err(Error::new(ErrorKind::Closed));
    }
    if st.task_gone {
        return Err(Error::new(ErrorKind::TaskGone));
    }
    if st.status != Status::Connected {
        st.stats.errors.refused_not_connected += 1;
        // A node that refuses our credentials says so, rather than just "not connected".
        return Err(match &st.last_error {
            Some(e) if e.is_refusal() => e.clone(),
            _ => Error::new(ErrorKind::NotConnected),
        });
    }
    if let Some(min) = min_uptime {
        if uptime_now(st).is_none_or(|up| up < min) {
            st.stats.errors.refused_restarted += 1;
            return Err(Error::new(ErrorKind::Restarted));
        }
    }
    let max_in_flight = shared.config.max_in_flight;
    let slot_room = if acquire { max_in_flight / 4 } else { 0 };
    if st.slots.used() + discarded + slot_room >= max_in_flight {
        st.stats.errors.refused_overloaded += 1;
        return Err(Error::new(ErrorKind::Overloaded));
    }
    Ok(())
}

/// Runs a caller's encoder on the write buffer. If it panics, what it wrote is cut off again
/// before the panic goes on (the connection's lock ignores poisoning, so the connection lives
/// on): bytes with no queue entry would be a request whose reply the next caller takes.
#[inline]
fn encode_or_undo(buf: &mut BytesMut, encode: impl FnOnce(&mut BytesMut)) {
    struct Undo<'a> {
        buf: &'a mut BytesMut,
        len: usize,
    }
    impl Drop for Undo<'_> {
        fn drop(&mut self) {
            self.buf.truncate(self.len);
        }
    }
    let len = buf.len();
    let undo = Undo { buf, len };
    encode(&mut *undo.buf);
    std::mem::forget(undo);
}

/// Queues a request just written (admitted by `admit`, under the same lock): its reply goes to
/// op `op`'s count when given, else to a slot for its caller's future, whose id is returned;
/// then `discarded` requests whose replies are dropped.
#[inline]
fn take_slots(
    st: &mut State,
    sent_us: u32,
    discarded: usize,
    op: Option<(OpId, u8)>,
) -> Option<u32> {
    let id = match op {
        Some((op, node)) => {
            st.slots.push_op(sent_us, op, node);
            None
        }
        None => Some(
            st.slots
                .take(sent_us)
                .expect("admitted under the same lock"),
        ),
    };
    for _ in 0..discarded {
        st.slots.push_dropped(sent_us);
    }
    st.stats.sent += 1 + discarded as u64;
    id
}

fn uptime_now(st: &State) -> Option<Duration> {
    st.uptime_at.map(|(up, at)| up + at.elapsed())
}

/// Spawns a driver outside tokio's cooperative budget. Out of budget, a readiness poll answers
/// `Pending` and the task's wake is deferred until its worker has nothing else to run, and on a
/// busy runtime that can be a long time: seen as drivers unpolled for 100 ms and more at 64
/// callers, and, once the slot tables filled, callers failing at once and never letting the
/// worker go idle (no lock granted again). The driver has its own fairness
/// (`TURNS_BEFORE_YIELD`, then it reschedules itself at the back of the run queue), and it
/// must never wait behind the callers it serves.
fn spawn_driver(driver: impl std::future::Future<Output = ()> + Send + 'static) {
    tokio::spawn(tokio::task::coop::unconstrained(driver));
}

/// Closes the connection when the last [`Connection`] clone goes.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let waker = {
            let mut st = self.shared.lock();
            st.closed = true;
            st.driver_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        self.shared.shutdown.notify_one();
    }
}

/// A persistent, pipelined connection to one node. Clones share the socket.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), dragonlock::Error> {
/// use dragonlock::conn::{Connection, ConnectionConfig};
/// let conn = Connection::connect(ConnectionConfig::from_url("redis://127.0.0.1:6379")?).await?;
/// let pong = conn.command(&["PING"]).await?;
/// assert!(pong.as_bytes() == Some(b"PONG"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Connection {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.shared().config.addr())
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Connection {
    /// Starts the connection's driver and returns at once; the first connect runs in the
    /// background, and requests fail with `NotConnected` until it succeeds. Use
    /// [`ready`](Connection::ready) to wait for it. Must be called inside a tokio runtime.
    pub fn start(config: ConnectionConfig) -> Connection {
        let shared = Connection::new_shared(config, None, Arc::default());
        spawn_driver(driver::run(shared.clone()));
        Connection {
            handle: Arc::new(Handle { shared }),
        }
    }

    /// Starts several connections driven by **one** task, and returns at once, as
    /// [`start`](Connection::start) does for each.
    ///
    /// One task serves every socket of the group: it is woken once for replies that arrive on
    /// several sockets together, hands them all out in one turn, and then lets the woken
    /// callers run before it writes again, so that what they send next to every node goes out
    /// in one `write` per node. That is the shape of a Redlock's traffic (one request to every
    /// node per phase), and [`Redlock`](crate::Redlock) drives its nodes this way. Each
    /// connection still fails, reconnects and refuses on its own; only the task is shared.
    /// The group also shares a table of lock phases (see `ops.rs`): twice as many as the
    /// largest [`max_in_flight`](ConnectionConfig::max_in_flight) of its connections, at most
    /// 2,048, 736 bytes each with room for a request handed to the task (1.4 MiB at the
    /// default), allocated here once. The task also keeps those phases'
    /// deadlines, with one timer for all of them.
    ///
    /// Must be called inside a tokio runtime, and that runtime must keep running while the
    /// connections are used: its task reads every reply and keeps the deadlines. When the
    /// runtime shuts down, the phases still waiting end at once (as timed out) and later ones
    /// wait with timers of their own; a runtime kept alive but never driven again leaves them
    /// waiting.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use dragonlock::conn::{Connection, ConnectionConfig};
    ///
    /// # async fn demo() -> Result<(), dragonlock::Error> {
    /// let nodes = Connection::start_group(
    ///     (7001..=7003).map(|port| ConnectionConfig::new("127.0.0.1", port)),
    /// );
    /// for node in &nodes {
    ///     node.ready().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn start_group(configs: impl IntoIterator<Item = ConnectionConfig>) -> Vec<Connection> {
        let configs: Vec<ConnectionConfig> = configs.into_iter().collect();
        // Twice as many lock phases at once as the largest slot table has requests. A phase
        // holds its entry while its caller waits for it (and a release's handed requests wait
        // to be sent), not until every node answered: a node that answers nothing (stopped)
        // holds none (see `ops.rs`, op ids). Each phase in flight takes a place in every
        // node's slot table, so this covers the phases the connections can carry twice over.
        // Past it, phases take the general path.
        let capacity = 2 * configs.iter().map(|c| c.max_in_flight).max().unwrap_or(1);
        let ops = Arc::new(OpTable::new(capacity).in_group_of(configs.len()));
        let parked = Arc::new(AtomicBool::new(false));
        let shared: Vec<Arc<Shared>> = configs
            .into_iter()
            .enumerate()
            .map(|(i, c)| Connection::new_shared(c, Some((ops.clone(), i)), parked.clone()))
            .collect();
        if !shared.is_empty() {
            spawn_driver(driver::run_group(shared.clone()));
        }
        shared
            .into_iter()
            .map(|shared| Connection {
                handle: Arc::new(Handle { shared }),
            })
            .collect()
    }

    /// A connection's shared state; with `group`, its group's op table and its place there.
    fn new_shared(
        config: ConnectionConfig,
        group: Option<(Arc<OpTable>, usize)>,
        task_parked: Arc<AtomicBool>,
    ) -> Arc<Shared> {
        let (ops, group_index) = group.map_or((None, 0), |(ops, i)| (Some(ops), i));
        Arc::new(Shared {
            state: Mutex::new(State {
                status: Status::Starting,
                closed: false,
                task_gone: false,
                write_buf: BytesMut::with_capacity(config.write_buffer),
                slots: SlotTable::new(config.max_in_flight),
                driver_waker: None,
                driver_writing: false,
                socket: None,
                info: None,
                last_error: None,
                attempts: 0,
                connects: 0,
                pushes: 0,
                uptime_at: None,
                stats: stats::Counters::default(),
            }),
            config,
            changed: Notify::new(),
            shutdown: Notify::new(),
            delex: AtomicBool::new(false),
            ops,
            task_parked,
            group_index,
        })
    }

    /// Connects and handshakes, waiting for the first attempt.
    ///
    /// # Errors
    ///
    /// The first attempt's error: socket errors, [`ErrorKind::Auth`] for rejected credentials,
    /// [`ErrorKind::Tls`] (`is_tls()`) for a refused certificate, a failed TLS handshake or
    /// unreadable TLS files, [`ErrorKind::Timeout`] past the connect or handshake deadline.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future closes the connection being made.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use dragonlock::conn::{Connection, ConnectionConfig};
    ///
    /// # async fn demo() -> Result<(), dragonlock::Error> {
    /// let config = ConnectionConfig::from_url("redis://127.0.0.1:7001")?;
    /// let conn = Connection::connect(config).await?;
    /// assert!(conn.is_connected());
    /// # Ok(()) }
    /// ```
    pub async fn connect(config: ConnectionConfig) -> Result<Connection, Error> {
        let conn = Connection::start(config);
        conn.ready().await?;
        Ok(conn)
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Waits for the first connect attempt to finish, and returns its error if it failed (the
    /// driver keeps retrying in the background either way).
    ///
    /// # Errors
    ///
    /// The error of the first attempt, when it failed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only watches.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use dragonlock::conn::{Connection, ConnectionConfig};
    ///
    /// # async fn demo() -> Result<(), dragonlock::Error> {
    /// let conn = Connection::start(ConnectionConfig::new("127.0.0.1", 7001));
    /// if let Err(e) = conn.ready().await {
    ///     // Still retrying in the background; requests fail at once until it is up.
    ///     eprintln!("node down for now: {e}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn ready(&self) -> Result<(), Error> {
        loop {
            let notified = self.shared().changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.shared().lock();
                if st.status == Status::Connected {
                    return Ok(());
                }
                if st.attempts > 0 {
                    return Err(st
                        .last_error
                        .clone()
                        .unwrap_or(Error::new(ErrorKind::NotConnected)));
                }
            }
            notified.await;
        }
    }

    /// Waits until the connection is up, for at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when it is still down at the end, with the last connect error lost.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only watches.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use dragonlock::conn::{Connection, ConnectionConfig};
    ///
    /// # async fn demo() -> Result<(), dragonlock::Error> {
    /// let conn = Connection::start(ConnectionConfig::new("127.0.0.1", 7001));
    /// conn.wait_connected(Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), Error> {
        let wait = async {
            loop {
                let notified = self.shared().changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.is_connected() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::new(ErrorKind::Timeout))
    }

    /// The options this connection was made with.
    pub fn config(&self) -> &ConnectionConfig {
        &self.shared().config
    }

    /// True while connected and handshaken.
    pub fn is_connected(&self) -> bool {
        self.shared().lock().status == Status::Connected
    }

    /// What the server said about itself at the last handshake.
    pub fn server_info(&self) -> Option<Arc<ServerInfo>> {
        self.shared().lock().info.clone()
    }

    /// True when the last handshake found `DELEX key IFEQ value` on the server.
    pub fn has_delex(&self) -> bool {
        self.shared().delex.load(Ordering::Relaxed)
    }

    /// How long the server process behind the current connection has been running, at least:
    /// the uptime it reported at handshake less one second (the report is a difference of
    /// whole-second readings and can run up to a second ahead; zero when it did not say), plus
    /// the time since. `None` before the first connect. A restarted server lost the
    /// keys it did not persist; Redlock's restart delay uses this to keep it from voting too soon.
    pub fn server_uptime(&self) -> Option<Duration> {
        uptime_now(&self.shared().lock())
    }

    /// Stops using `DELEX` on this connection until the next handshake (the server answered it
    /// with `unknown command` after all).
    pub fn disable_delex(&self) {
        self.shared().delex.store(false, Ordering::Relaxed);
    }

    /// The last connection error, if any.
    pub fn last_error(&self) -> Option<Error> {
        self.shared().lock().last_error.clone()
    }

    /// How many times the connection was established (1 after the first connect).
    pub fn connects(&self) -> u64 {
        self.shared().lock().connects
    }

    /// Push frames received and routed away from the reply queue so far.
    pub fn pushes_received(&self) -> u64 {
        self.shared().lock().pushes
    }

    /// Requests in flight now: sent, and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.shared().lock().slots.queued()
    }

    /// Requests holding a slot now: in flight (a lock phase's included, which holds a place in
    /// the queue and no reply slot), or answered and not yet taken by their future. At
    /// [`max_in_flight`](ConnectionConfig::max_in_flight), `send` refuses with `Overloaded`.
    pub fn slots_in_use(&self) -> usize {
        self.shared().lock().slots.used()
    }

    /// A snapshot of this connection: its state, the server, connects and reconnects, requests
    /// sent and in flight, failures by kind, server restarts seen, and the round-trip
    /// histogram. See [`ConnectionStats`].
    ///
    /// It takes the connection's lock once, as `send` does, and allocates (the address); call
    /// it as often as a metrics scrape does, not per request.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use dragonlock::conn::ConnectionState;
    ///
    /// # async fn demo(conn: dragonlock::conn::Connection) {
    /// let s = conn.stats();
    /// if s.state != ConnectionState::Connected {
    ///     eprintln!("{} is {:?}: {:?}", s.addr, s.state, s.last_error);
    /// }
    /// println!("{} requests, {} timeouts, rtt p50 {:?}", s.requests_sent, s.errors.timeouts, s.rtt.p50());
    /// # }
    /// ```
    pub fn stats(&self) -> ConnectionStats {
        let shared = self.shared();
        let st = shared.lock();
        ConnectionStats {
            addr: shared.config.addr(),
            state: match st.status {
                _ if st.closed => ConnectionState::Closed,
                Status::Starting => ConnectionState::Connecting,
                Status::Connected => ConnectionState::Connected,
                Status::Down => ConnectionState::Down,
            },
            server: st.info.clone(),
            last_error: st.last_error.clone(),
            connect_attempts: st.attempts,
            connects: st.connects,
            reconnects: st.connects.saturating_sub(1),
            restarts_seen: st.stats.restarts,
            requests_sent: st.stats.sent,
            in_flight: st.slots.queued(),
            pushes_received: st.pushes,
            errors: st.stats.errors,
            rtt: st.stats.rtt.clone(),
        }
    }

    /// Queues one request: `encode` writes the command into the write buffer, and the returned
    /// future yields its reply. The command is on its way once this returns, whether or not the
    /// future is polled.
    ///
    /// `encode` must write exactly one complete command (one reply is expected per call).
    ///
    /// # Errors
    ///
    /// At once, without sending: `NotConnected` while the node is down (the authentication
    /// error instead, when the node is down because it refused our credentials, and the TLS
    /// error when a certificate or the TLS handshake was refused), `Overloaded`
    /// when every slot is in use ([`max_in_flight`](ConnectionConfig::max_in_flight) requests
    /// whose reply has not been taken) or the write buffer has less than
    /// [`COMMAND_ROOM`] left, `Closed` after the connection was closed.
    ///
    /// # Examples
    ///
    /// Two requests pipelined: both are on the wire before either reply is awaited.
    ///
    /// ```no_run
    /// use dragonlock::resp::{encode_command, Frame};
    ///
    /// # async fn demo(conn: dragonlock::conn::Connection) -> Result<(), dragonlock::Error> {
    /// let set = conn.send(|buf| encode_command(buf, &["SET", "k", "v", "NX", "PX", "5000"]))?;
    /// let ttl = conn.send(|buf| encode_command(buf, &["PTTL", "k"]))?;
    /// let (set, ttl) = (set.await?, ttl.await?);
    /// assert!(set.is_ok() || set.is_null()); // +OK, or nil when the key existed
    /// assert!(matches!(ttl, Frame::Integer(_)));
    /// # Ok(()) }
    /// ```
    pub fn send(&self, encode: impl FnOnce(&mut BytesMut)) -> Result<ReplyFuture<'_>, Error> {
        self.enqueue(None, stats::now_us(), encode)
    }

    /// [`send`](Connection::send), only when the server has been up for at least `min_uptime`
    /// (see [`server_uptime`](Connection::server_uptime)); else `Restarted`, not sent. Checked
    /// under the same lock as the send, so a reconnect in between cannot slip a freshly
    /// restarted server in.
    ///
    /// # Errors
    ///
    /// As `send`, and [`ErrorKind::Restarted`].
    pub fn send_if_up_for(
        &self,
        min_uptime: Duration,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<ReplyFuture<'_>, Error> {
        self.enqueue(Some(min_uptime), stats::now_us(), encode)
    }

    /// A lock acquire's request: as [`send`](Connection::send) (or `send_if_up_for` with
    /// `min_uptime`), but refused while less than a quarter of the slots or of the write buffer
    /// is left. The rest is kept for releases and extensions.
    ///
    /// A node that falls behind keeps receiving requests from acquires decided by the faster
    /// nodes (their futures are dropped, the requests still go), so its table fills. When it
    /// was full for everything, a winner's release could be refused there and the key stayed
    /// held on that node for its whole ttl (seen with 16 tasks racing for one key); with two
    /// such nodes of five, nobody could get the lock again until the ttl ran out. Refusing new
    /// acquires first sheds the load that can wait and keeps the requests that free locks.
    pub(crate) fn send_acquire(
        &self,
        min_uptime: Option<Duration>,
        sent_us: u32,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<ReplyFuture<'_>, Error> {
        self.enqueue_n(min_uptime, sent_us, 0, true, None, encode)
            .map(|id| self.reply_future(id))
    }

    /// The lock phases' table this connection shares with its group, if it was started in one
    /// (see `ops.rs`).
    pub(crate) fn op_table(&self) -> Option<&Arc<OpTable>> {
        self.shared().ops.as_ref()
    }

    /// This connection's place in its group (0 for a connection started alone).
    pub(crate) fn group_index(&self) -> usize {
        self.shared().group_index
    }

    /// Sends a request of op `op` (of [`op_table`](Connection::op_table)) as node `node`'s
    /// (`(op, node)`):
    /// its reply is counted in the op by the driver. `acquire` and `min_uptime` as for
    /// [`send_acquire`](Connection::send_acquire); `discarded` commands written after the first
    /// have their replies dropped, as [`send_then_discard`](Connection::send_then_discard)'s.
    pub(crate) fn send_op(
        &self,
        (op, node): (OpId, u8),
        acquire: bool,
        min_uptime: Option<Duration>,
        sent_us: u32,
        discarded: usize,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<(), Error> {
        debug_assert!(self.shared().ops.is_some(), "an op sent outside a group");
        self.enqueue_n(
            min_uptime,
            sent_us,
            discarded,
            acquire,
            Some((op, node)),
            encode,
        )
        .map(drop)
    }

    /// Counts `n` of this connection's requests as timed out: their caller's deadline came
    /// before their replies (an op's nodes that stayed silent).
    pub(crate) fn count_timeouts(&self, n: u64) {
        self.shared().lock().stats.errors.timeouts += n;
    }

    /// The future of a caller's request, queued by `enqueue_n` without an op.
    fn reply_future(&self, id: Option<u32>) -> ReplyFuture<'_> {
        ReplyFuture {
            shared: self.shared(),
            id: id.expect("a request without an op has a slot"),
            done: false,
        }
    }

    /// [`send`](Connection::send) for an `encode` that writes two commands: the future yields
    /// the first one's reply, and the second one's is read and dropped (a `PUBLISH` that rides
    /// behind a release). Both are queued under one lock, so they go out in the same write.
    pub(crate) fn send_then_discard(
        &self,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<ReplyFuture<'_>, Error> {
        self.enqueue_n(None, stats::now_us(), 1, false, None, encode)
            .map(|id| self.reply_future(id))
    }

    fn enqueue(
        &self,
        min_uptime: Option<Duration>,
        sent_us: u32,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<ReplyFuture<'_>, Error> {
        self.enqueue_n(min_uptime, sent_us, 0, false, None, encode)
            .map(|id| self.reply_future(id))
    }

    /// `enqueue` for `encode` writing `1 + discarded` commands; the replies past the first are
    /// dropped as they come, as an abandoned request's are. The first request's reply is
    /// counted in `op` when given (see `ops.rs`); otherwise its slot is returned.
    fn enqueue_n(
        &self,
        min_uptime: Option<Duration>,
        sent_us: u32,
        discarded: usize,
        acquire: bool,
        op: Option<(OpId, u8)>,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<Option<u32>, Error> {
        let shared = self.shared();
        let mut st = shared.lock();
        admit(shared, &mut st, min_uptime, discarded, acquire)?;
        // Both bounds are checked before anything is written, so a refused request leaves no
        // trace. The request is queued only after `encode` returned, and what a panicking
        // encoder wrote is cut off again (`encode_or_undo`): a queue entry without its request,
        // or a request without its entry, would hand the next reply to the wrong caller.
        // An acquire keeps a quarter of the buffer free (see `send_acquire`).
        let write_buffer = shared.config.write_buffer;
        let byte_room = if acquire { write_buffer / 4 } else { 0 };
        if !st.write_buf.is_empty()
            && st.write_buf.len() + COMMAND_ROOM + byte_room > write_buffer
            && !st.driver_writing
        {
            // Full of requests the driver has not taken yet: it yields after handing out
            // replies to several callers (see `driver::run_group`), and hundreds of callers
            // can queue behind it in one turn. Send what is there now rather than refuse. The
            // same argument as the direct write below makes it safe: the driver holds nothing
            // half-written.
            write_now(&mut st, write_buffer);
        }
        if !st.write_buf.is_empty() && st.write_buf.len() + COMMAND_ROOM + byte_room > write_buffer
        {
            st.stats.errors.refused_overloaded += 1;
            return Err(Error::new(ErrorKind::Overloaded));
        }
        // Write directly when the socket is free and the connection is not busy. Free: nothing
        // waits to be written, the driver holds nothing half-written (it writes only bytes it
        // took from `write_buf` under this lock, and says so in `driver_writing`), and its
        // waker is registered, so it is woken for the reply. Not busy: at most
        // DIRECT_WRITE_MAX_IN_FLIGHT requests in flight, and the task of the whole group parked
        // (a node's own waker stays registered through turns that handed it nothing, so it
        // alone says little; writing there while the task runs or has yielded broke up the
        // group's batches: 0.37 `sendto` per lock cycle at 64 callers against 0.17). Then
        // this caller writes its request itself and the driver is not woken: one task hop
        // less. Busier connections leave requests to pile up in the buffer for the driver to
        // write in one burst, which is worth more under load than the hop.
        let idle = st.slots.queued() <= DIRECT_WRITE_MAX_IN_FLIGHT
            && st.write_buf.is_empty()
            && !st.driver_writing
            && st.driver_waker.is_some()
            && shared.task_parked.load(Ordering::Relaxed);
        encode_or_undo(&mut st.write_buf, encode);
        let id = take_slots(&mut st, sent_us, discarded, op);
        if idle && write_now(&mut st, shared.config.write_buffer) {
            return Ok(id);
        }
        // Not while the driver is writing what it took before: it runs another turn once the
        // socket takes it, and takes this then. (It leaves its waker registered while the
        // socket is full, for a close to wake it; a send need not.)
        let driver = if st.driver_writing {
            None
        } else {
            st.driver_waker.take()
        };
        // Wake the driver after unlocking, so it does not run straight into the held lock.
        drop(st);
        if let Some(w) = driver {
            w.wake();
        }
        Ok(id)
    }

    /// Sends a command and waits for its reply. An error reply becomes `Err`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Server`] for an error reply; the errors of [`send`](Connection::send); and
    /// `ConnectionLost`, a protocol error or a socket error when the connection fails first.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in the sense that matters for a pipeline: the command may still run, but its
    /// reply is read and discarded, never handed to another request.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(conn: dragonlock::conn::Connection) -> Result<(), dragonlock::Error> {
    /// conn.command(&["SET", "greeting", "hello"]).await?;
    /// let reply = conn.command(&["GET", "greeting"]).await?;
    /// assert_eq!(reply.as_bytes(), Some(&b"hello"[..]));
    /// // An error reply is an `Err`, with its code typed.
    /// let err = conn.command(&["INCR", "greeting"]).await.unwrap_err();
    /// assert!(err.is_server());
    /// # Ok(()) }
    /// ```
    pub async fn command<A: AsRef<[u8]>>(&self, args: &[A]) -> Result<Frame, Error> {
        let reply = self
            .send(|buf| crate::resp::encode_command(buf, args))?
            .await?;
        into_result(reply)
    }

    /// [`command`](Connection::command) with a deadline.
    ///
    /// # Errors
    ///
    /// As `command`, plus [`ErrorKind::Timeout`] at the deadline.
    ///
    /// # Cancel safety
    ///
    /// As `command`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # async fn demo(conn: dragonlock::conn::Connection) {
    /// match conn.command_timeout(&["PING"], Duration::from_millis(50)).await {
    ///     Ok(pong) => println!("{pong:?}"),
    ///     Err(e) if e.is_timeout() => println!("slow node; its reply will be discarded"),
    ///     Err(e) => println!("{e}"),
    /// }
    /// # }
    /// ```
    pub async fn command_timeout<A: AsRef<[u8]>>(
        &self,
        args: &[A],
        timeout: Duration,
    ) -> Result<Frame, Error> {
        let reply = self.send(|buf| crate::resp::encode_command(buf, args))?;
        into_result(reply.deadline(Instant::now() + timeout).await?)
    }

    /// Runs `script` with `EVALSHA`; on `NOSCRIPT` (the server lost its script cache), runs it
    /// once with `EVAL`, which also caches it again.
    ///
    /// # Errors
    ///
    /// As [`command`](Connection::command).
    ///
    /// # Cancel safety
    ///
    /// As `command`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use dragonlock::conn::Script;
    ///
    /// # async fn demo(conn: dragonlock::conn::Connection) -> Result<(), dragonlock::Error> {
    /// let incr_by = Script::new("return redis.call('incrby', KEYS[1], ARGV[1])");
    /// let total = conn.eval(&incr_by, &["counter"], &["5"]).await?.as_integer();
    /// assert!(total.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn eval<K: AsRef<[u8]>, A: AsRef<[u8]>>(
        &self,
        script: &Script,
        keys: &[K],
        args: &[A],
    ) -> Result<Frame, Error> {
        let reply = self
            .send(|buf| script.encode(buf, ScriptCall::BySha, keys, args))?
            .await?;
        match reply {
            Frame::Error(e) if e.has_code("NOSCRIPT") => {
                let reply = self
                    .send(|buf| script.encode(buf, ScriptCall::WithSource, keys, args))?
                    .await?;
                into_result(reply)
            }
            other => into_result(other),
        }
    }
}

fn into_result(frame: Frame) -> Result<Frame, Error> {
    match frame {
        Frame::Error(e) => Err(Error::new(ErrorKind::Server(e))),
        other => Ok(other),
    }
}

/// The reply to one request sent with [`Connection::send`].
///
/// # Cancel safety
///
/// Dropping it before the reply came leaves the request in place: the reply is read and thrown
/// away when it arrives, so no later request ever receives it.
#[must_use = "the reply is discarded unless the future is awaited"]
pub struct ReplyFuture<'a> {
    shared: &'a Shared,
    id: u32,
    done: bool,
}

impl std::fmt::Debug for ReplyFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyFuture")
            .field("slot", &self.id)
            .finish()
    }
}

impl ReplyFuture<'_> {
    /// Waits for the reply until `deadline`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] at the deadline (the reply, when it comes, is discarded).
    ///
    /// # Cancel safety
    ///
    /// As dropping the [`ReplyFuture`]: the request keeps its place, and its reply is read and
    /// thrown away when it comes, so no other caller ever gets it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    ///
    /// # async fn demo(conn: dragonlock::conn::Connection) -> Result<(), dragonlock::Error> {
    /// let reply = conn.send(|buf| dragonlock::resp::encode_command(buf, &["PING"]))?;
    /// let pong = reply.deadline(Instant::now() + Duration::from_millis(100)).await?;
    /// # let _ = pong; Ok(()) }
    /// ```
    pub async fn deadline(self, deadline: Instant) -> Result<Frame, Error> {
        let shared = self.shared;
        match tokio::time::timeout_at(deadline, self).await {
            Ok(r) => r,
            Err(_) => {
                shared.lock().stats.errors.timeouts += 1;
                Err(Error::new(ErrorKind::Timeout))
            }
        }
    }

    /// Counts this request as timed out (its caller's deadline passed before the reply came),
    /// for a caller that races replies against its own deadline (Redlock's quorum collector).
    pub(crate) fn count_timeout(&self) {
        self.shared.lock().stats.errors.timeouts += 1;
    }
}

impl Future for ReplyFuture<'_> {
    type Output = Result<Frame, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        assert!(!self.done, "ReplyFuture polled after completion");
        let mut st = self.shared.lock();
        let slot = st.slots.get_mut(self.id);
        if let Some(reply) = slot.reply.take() {
            st.slots.release(self.id);
            drop(st);
            self.done = true;
            return Poll::Ready(reply);
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for ReplyFuture<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.shared.lock();
        let slot = st.slots.get_mut(self.id);
        if slot.reply.is_some() {
            st.slots.release(self.id);
        } else {
            slot.abandon();
            slot.waker = None;
        }
    }
}
