//! What one connection has done: counters, a round-trip histogram, and the snapshot that
//! [`Connection::stats`](super::Connection::stats) returns.
//!
//! The counters are plain integers inside the connection's state, counted where that state's
//! lock is already held (`send`, the driver's dispatch, a failure), never with a lock of their
//! own: an increment there costs one `add`, less than a `Relaxed` atomic's `lock xadd`, and a
//! snapshot read under the same lock is consistent (requests sent, in flight and answered
//! agree). The one count made outside that lock, a caller's timeout, is on a failure path that
//! takes the lock anyway. Nothing here allocates; the snapshot does (the address, the server
//! facts are shared), and it is not on any request's path.

use std::sync::Arc;
use std::time::Duration;

use super::info::ServerInfo;
use crate::error::Error;

/// Buckets of a [`RttHistogram`]: bucket 0 holds round trips under 1 µs, bucket `k` (1..=31)
/// those from 2^(k−1) to 2^k µs. The 31 bits of microseconds a request's send time is kept in reach
/// about 36 minutes, so the last bucket is the last one needed.
pub const RTT_BUCKETS: usize = 32;

/// A request's entry in the in-flight queue keeps its send time in 31 bits of microseconds
/// (the width the abandoned flag left it when the time was kept in the slot). That clock wraps
/// every 2^31 µs (35.8 minutes): a reply later than that would be counted as a shorter round trip. No request
/// waits that long in practice (a node stalled for half an hour has long been given up on by
/// its callers), and the histogram is an estimate anyway.
pub(crate) const RTT_CLOCK_MASK: u32 = (1 << 31) - 1;

/// Now, in microseconds of the monotonic clock, in 31 bits (wrapping): the send time a slot
/// keeps, and the time a reply is read. Differences of two readings less than 35.8 minutes
/// apart are exact (`wrapping_sub`, masked).
///
/// Read with `clock_gettime(CLOCK_MONOTONIC)` directly, the clock `Instant` reads on unix:
/// the microseconds come out with a multiply and a shift, where `Instant` would need a
/// subtraction from an epoch (`Timespec::sub_timespec`, checked, out of line) and a `Duration`
/// conversion, about 45 instructions a reading more in callgrind (DESIGN.md "Stats").
#[inline]
pub(crate) fn now_us() -> u32 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the one timespec we pass it and nothing else.
        // CLOCK_MONOTONIC exists on every unix Rust supports (std's `Instant` reads it); if
        // the call failed anyway, `ts` stays zero and a round trip is mismeasured, nothing
        // worse.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        from_parts(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
    #[cfg(not(unix))]
    {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let d = EPOCH.get_or_init(std::time::Instant::now).elapsed();
        from_parts(d.as_secs(), d.subsec_nanos())
    }
}

/// Seconds and nanoseconds to the 31-bit microsecond clock.
#[inline]
fn from_parts(secs: u64, nanos: u32) -> u32 {
    (secs
        .wrapping_mul(1_000_000)
        .wrapping_add(u64::from(nanos / 1_000)) as u32)
        & RTT_CLOCK_MASK
}

/// A round-trip latency histogram: [`RTT_BUCKETS`] power-of-two buckets of microseconds, fixed
/// in size (nothing allocates to record), exact in count, and accurate to the bucket: a
/// quantile is known to within a factor of two, which is what a dashboard needs to tell a
/// 100 µs node from a 2 ms one. An HDR histogram would be exact to 1% at 2–3 KiB a node; this
/// is 256 bytes.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(conn: dragonlock::conn::Connection) {
/// let rtt = conn.stats().rtt;
/// if let (Some(p50), Some(p99)) = (rtt.p50(), rtt.p99()) {
///     println!("{} replies, p50 {p50:?}, p99 {p99:?}", rtt.count());
/// }
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RttHistogram {
    buckets: [u64; RTT_BUCKETS],
}

impl Default for RttHistogram {
    fn default() -> Self {
        RttHistogram {
            buckets: [0; RTT_BUCKETS],
        }
    }
}

impl std::fmt::Debug for RttHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RttHistogram")
            .field("count", &self.count())
            .field("p50", &self.p50())
            .field("p99", &self.p99())
            .finish()
    }
}

impl RttHistogram {
    /// The bucket a round trip of `us` microseconds falls in.
    #[inline]
    pub(crate) fn bucket_of(us: u32) -> usize {
        // 0 → 0, 1 → 1, 2..=3 → 2, 2^(k-1)..2^k → k.
        (32 - us.leading_zeros() as usize).min(RTT_BUCKETS - 1)
    }

    /// Counts one round trip of `us` microseconds.
    #[inline]
    pub(crate) fn record(&mut self, us: u32) {
        self.buckets[Self::bucket_of(us)] += 1;
    }

    /// Round trips counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The count of each bucket: see [`bucket_range`](RttHistogram::bucket_range).
    pub fn buckets(&self) -> &[u64; RTT_BUCKETS] {
        &self.buckets
    }

    /// The round trips bucket `i` holds: from the first bound (inclusive) to the second
    /// (exclusive). Bucket 0 is under 1 µs; bucket `k` is 2^(k−1) to 2^k µs.
    ///
    /// # Panics
    ///
    /// When `i` is not below [`RTT_BUCKETS`].
    pub fn bucket_range(i: usize) -> (Duration, Duration) {
        assert!(i < RTT_BUCKETS, "bucket {i} of {RTT_BUCKETS}");
        if i == 0 {
            return (Duration::ZERO, Duration::from_micros(1));
        }
        (
            Duration::from_micros(1 << (i - 1)),
            Duration::from_micros(1 << i),
        )
    }

    /// An estimate of the `q` quantile (0.0 to 1.0): the bucket holding it is found exactly,
    /// and the value is interpolated linearly inside it, so the truth lies within that
    /// bucket's range (a factor of two). `None` before any round trip was counted.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // The rank of the wanted round trip, 1-based: the smallest with at least q of them at
        // or below it.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut below = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && below + n >= rank {
                let (lo, hi) = Self::bucket_range(i);
                let within = (rank - below) as f64 / n as f64;
                return Some(lo + (hi - lo).mul_f64(within));
            }
            below += n;
        }
        None
    }

    /// The median round trip, estimated (see [`quantile`](RttHistogram::quantile)).
    pub fn p50(&self) -> Option<Duration> {
        self.quantile(0.5)
    }

    /// The 99th percentile round trip, estimated (see [`quantile`](RttHistogram::quantile)).
    pub fn p99(&self) -> Option<Duration> {
        self.quantile(0.99)
    }
}

/// Failed requests by kind, and the protocol errors that broke the connection.
///
/// Every field but `protocol` counts requests: each request that ended that way once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorCounts {
    /// Requests in flight (sent, not answered) when the connection failed: each failed with
    /// the connection's error (or was dropped, when its caller had gone).
    pub connection_lost: u64,
    /// Requests whose caller stopped waiting at its deadline
    /// ([`ReplyFuture::deadline`](super::ReplyFuture::deadline),
    /// [`command_timeout`](super::Connection::command_timeout), and a Redlock operation's
    /// deadline for a node that stayed silent). The reply, if it comes, is read and dropped.
    pub timeouts: u64,
    /// Replies that were error replies (`-ERR …`, `NOSCRIPT`, `LOADING` …), including those to
    /// requests whose caller had gone.
    pub server_errors: u64,
    /// Requests refused with `Overloaded` before being sent: every slot in use, or the write
    /// buffer full.
    pub refused_overloaded: u64,
    /// Requests refused before being sent because the node was not connected (including those
    /// answered with the authentication error of a node that refuses our credentials).
    pub refused_not_connected: u64,
    /// Requests refused by the Redlock restart delay
    /// ([`send_if_up_for`](super::Connection::send_if_up_for)): the server had not been up
    /// long enough to vote.
    pub refused_restarted: u64,
    /// Protocol errors (a malformed or oversized frame, an unsolicited reply): each one broke
    /// the connection once.
    pub protocol: u64,
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// The first connect has not succeeded yet (it may have failed and be retrying).
    Connecting,
    /// Connected and handshaken: requests are accepted.
    Connected,
    /// Was connected, and is down now, reconnecting in the background: requests fail at once.
    Down,
    /// Closed by its owner (the last handle dropped).
    Closed,
}

/// The counters kept in the connection's state (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) sent: u64,
    pub(crate) restarts: u64,
    pub(crate) errors: ErrorCounts,
    pub(crate) rtt: RttHistogram,
}

impl super::State {
    /// At a connect, before `info` is replaced: counts a server restart when the server now
    /// reached is another process than the one before (its restart marker changed, as the
    /// Redlock duplicate check compares them). Returns whether it was.
    pub(super) fn note_server(&mut self, new: &ServerInfo) -> bool {
        let old = self.info.as_ref().and_then(|i| i.restart_marker.as_ref());
        let restarted = match (old, new.restart_marker.as_ref()) {
            (Some(old), Some(new)) => !old.same_process(new),
            _ => false,
        };
        self.stats.restarts += u64::from(restarted);
        restarted
    }
}

/// A snapshot of one connection: where it stands and what it has done since it started.
///
/// Taken under the connection's lock in one go, so its figures agree with each other. Counts
/// only grow; take two snapshots and subtract for a rate.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(conn: dragonlock::conn::Connection) {
/// let s = conn.stats();
/// println!(
///     "{} {:?}: {} sent, {} in flight, {} lost to disconnects, rtt p99 {:?}",
///     s.addr, s.state, s.requests_sent, s.in_flight, s.errors.connection_lost, s.rtt.p99()
/// );
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// The node's `host:port`, as configured.
    pub addr: String,
    /// Connected, down, …
    pub state: ConnectionState,
    /// What the server said at the last successful handshake (kept while down).
    pub server: Option<Arc<ServerInfo>>,
    /// Why the connection last failed or last failed to connect, if it ever did.
    pub last_error: Option<Error>,
    /// Connect attempts finished, successful or not.
    pub connect_attempts: u64,
    /// Successful connects (1 after the first).
    pub connects: u64,
    /// Successful connects after the first: how often the connection came back.
    pub reconnects: u64,
    /// Server restarts seen: reconnects that found another server process than before (its
    /// [`RestartMarker`](super::RestartMarker) changed). A restart while this client was
    /// disconnected counts as well; one between two connects of another client does not.
    pub restarts_seen: u64,
    /// Requests sent (accepted by `send`; refused ones are in `errors`).
    pub requests_sent: u64,
    /// Requests in flight now: sent, not answered yet.
    pub in_flight: usize,
    /// Push frames received (routed away from the replies).
    pub pushes_received: u64,
    /// Failures by kind.
    pub errors: ErrorCounts,
    /// Round trips: from the request being queued to its reply being read by the driver,
    /// for every reply read, including those whose caller had gone. Queueing in this client
    /// (a request waiting for the driver's next write) is included; the caller's own wake-up
    /// is not.
    pub rtt: RttHistogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_from_one_microsecond() {
        assert_eq!(RttHistogram::bucket_of(0), 0);
        assert_eq!(RttHistogram::bucket_of(1), 1);
        assert_eq!(RttHistogram::bucket_of(2), 2);
        assert_eq!(RttHistogram::bucket_of(3), 2);
        assert_eq!(RttHistogram::bucket_of(4), 3);
        assert_eq!(RttHistogram::bucket_of(1023), 10);
        assert_eq!(RttHistogram::bucket_of(1024), 11);
        assert_eq!(RttHistogram::bucket_of(RTT_CLOCK_MASK), 31);
        assert_eq!(RttHistogram::bucket_of(u32::MAX), 31);
        for us in [0u32, 1, 2, 3, 7, 8, 100, 1_000, 65_535, 1 << 30] {
            let (lo, hi) = RttHistogram::bucket_range(RttHistogram::bucket_of(us));
            let d = Duration::from_micros(us.into());
            assert!(lo <= d && d < hi, "{us} µs in [{lo:?}, {hi:?})");
        }
    }

    #[test]
    fn quantiles_fall_in_the_right_bucket() {
        let mut h = RttHistogram::default();
        assert_eq!((h.count(), h.p50(), h.p99()), (0, None, None));
        // 98 round trips of ~100 µs (bucket 64..128), 2 of ~5 ms (4096..8192).
        for _ in 0..98 {
            h.record(100);
        }
        h.record(5_000);
        h.record(5_000);
        assert_eq!(h.count(), 100);
        let p50 = h.p50().unwrap();
        assert!(p50 >= Duration::from_micros(64) && p50 <= Duration::from_micros(128));
        let p99 = h.p99().unwrap();
        assert!(p99 >= Duration::from_micros(4096) && p99 <= Duration::from_micros(8192));
        assert!(h.quantile(0.0).unwrap() >= Duration::from_micros(64));
        assert!(h.quantile(1.0).unwrap() <= Duration::from_micros(8192));
    }

    #[test]
    fn the_send_clock_wraps_within_its_31_bits() {
        assert_eq!(from_parts(0, 0), 0);
        assert_eq!(from_parts(1, 500_999), 1_000_500);
        // 2^31 µs is 2147 s and 483,648 µs: the clock wraps there.
        assert_eq!(from_parts(2_147, 483_648_000), 0);
        assert_eq!(from_parts(2_147, 483_655_000), 7);
        // A round trip across the wrap is still measured right.
        let sent = from_parts(2_147, 483_638_000);
        let read = from_parts(2_147, 483_678_000);
        assert_eq!(read.wrapping_sub(sent) & RTT_CLOCK_MASK, 40);
        // The real clock moves forward (by at least nothing).
        let (a, b) = (now_us(), now_us());
        assert!(b.wrapping_sub(a) & RTT_CLOCK_MASK < 1_000_000);
    }
}
