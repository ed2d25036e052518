//! The stats snapshots (`Connection::stats`, `Redlock::stats`) against real servers: each
//! counter is checked against a known sequence of operations and faults (kill -9, SIGSTOP, a
//! restart, keys deleted under a held lock), with exact counts wherever the sequence fixes
//! them.

mod support;

use std::time::Duration;

use dragonlock::conn::{Connection, ConnectionConfig, ConnectionState, RestartMarker};
use dragonlock::{LockErrorKind, Redlock, RedlockOptions};
use support::server::{cluster, Server};
use support::{eventually, not_on_this_server, redlock_over};

const WAIT: Duration = Duration::from_secs(5);

/// kill -9 a stopped server as it is: `Server::kill9` resumes a stopped one first, and it
/// could answer what it holds before it dies. Reaped by `kill9` afterwards.
fn kill_stopped(server: &mut Server) {
    dragonlock::local::signal(server.pid() as u32, libc::SIGKILL);
    server.kill9();
}

async fn connect(server: &Server, max_in_flight: usize) -> Connection {
    let conn = Connection::connect(
        ConnectionConfig::from_url(&server.url())
            .unwrap()
            .max_in_flight(max_in_flight)
            .backoff(Duration::from_millis(5), Duration::from_millis(100)),
    )
    .await
    .unwrap();
    conn.wait_connected(WAIT).await.unwrap();
    conn
}

/// Whether this server tells its processes apart by `run_id` (Redis). Dragonfly's marker is
/// its start time, to the second with 2 s of tolerance, so a restart within seconds of the
/// start is not told from the same process.
fn has_run_id(conn: &Connection) -> bool {
    matches!(
        conn.server_info().and_then(|i| i.restart_marker.clone()),
        Some(RestartMarker::RunId(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_counts_a_known_sequence_of_requests_and_faults() {
    let mut server = Server::start();
    let conn = connect(&server, 64).await;
    let s = conn.stats();
    assert_eq!(s.state, ConnectionState::Connected);
    assert_eq!(s.addr, server.addr());
    assert!(s.server.is_some());
    assert_eq!((s.connect_attempts, s.connects, s.reconnects), (1, 1, 0));
    assert_eq!((s.requests_sent, s.in_flight, s.rtt.count()), (0, 0, 0));
    assert_eq!(s.errors, Default::default());
    assert_eq!(s.restarts_seen, 0);

    // Ten answered requests and one error reply.
    for _ in 0..10 {
        conn.command(&["PING"]).await.unwrap();
    }
    conn.command(&["SET", "stats:s", "text"]).await.unwrap();
    assert!(conn
        .command(&["INCR", "stats:s"])
        .await
        .unwrap_err()
        .is_server());
    let s = conn.stats();
    assert_eq!((s.requests_sent, s.in_flight, s.rtt.count()), (12, 0, 12));
    assert_eq!(s.errors.server_errors, 1);
    let (p50, p99) = (s.rtt.p50().unwrap(), s.rtt.p99().unwrap());
    assert!(p50 <= p99);

    // A stalled server: one request times out and stays in flight.
    server.stop();
    let err = conn
        .command_timeout(&["PING"], Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    let s = conn.stats();
    assert_eq!((s.requests_sent, s.in_flight), (13, 1));
    assert_eq!(s.errors.timeouts, 1);

    // Killed: the request in flight is lost with the connection; a request while down is
    // refused before it is sent.
    kill_stopped(&mut server);
    assert!(
        eventually(WAIT, || conn.stats().state == ConnectionState::Down).await,
        "the connection did not notice the kill"
    );
    let err = conn.command(&["PING"]).await.unwrap_err();
    assert!(err.is_not_sent(), "{err}");
    let s = conn.stats();
    assert_eq!(s.errors.connection_lost, 1);
    assert_eq!(s.errors.refused_not_connected, 1);
    assert_eq!((s.requests_sent, s.in_flight), (13, 0));
    assert!(s.last_error.is_some());
    let attempts_down = s.connect_attempts;

    // Back on the same port, as a new process: one reconnect, one restart seen.
    server.restart();
    assert!(
        eventually(WAIT, || conn.stats().state == ConnectionState::Connected).await,
        "no reconnect within 5 s"
    );
    let s = conn.stats();
    assert_eq!((s.connects, s.reconnects), (2, 1));
    assert!(s.connect_attempts > attempts_down);
    if has_run_id(&conn) {
        assert_eq!(s.restarts_seen, 1);
    } else {
        not_on_this_server(
            "a_connection_counts_a_known_sequence_of_requests_and_faults",
            "restarts_seen: no run_id; a start time cannot tell a restart seconds later",
        );
    }
    // The timed-out request's reply never came: 12 round trips, as before.
    assert_eq!(s.rtt.count(), 12);
    conn.command(&["PING"]).await.unwrap();
    let s = conn.stats();
    assert_eq!((s.requests_sent, s.rtt.count()), (14, 13));
    // Nothing else failed on the way.
    assert_eq!(
        (
            s.errors.server_errors,
            s.errors.protocol,
            s.errors.refused_overloaded
        ),
        (1, 0, 0)
    );
}

/// A full slot table refuses, and the replies of requests whose callers went away are still
/// read and timed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_refusals_and_abandoned_replies_are_counted() {
    let mut server = Server::start();
    let conn = connect(&server, 2).await;
    server.stop();
    let ping = |buf: &mut bytes::BytesMut| dragonlock::resp::encode_command(buf, &["PING"]);
    let a = conn.send(ping).unwrap();
    let b = conn.send(ping).unwrap();
    let refused = conn.send(ping).unwrap_err();
    assert!(matches!(refused.kind(), dragonlock::ErrorKind::Overloaded));
    drop((a, b));
    let s = conn.stats();
    assert_eq!((s.requests_sent, s.in_flight), (2, 2));
    assert_eq!(s.errors.refused_overloaded, 1);
    server.cont();
    assert!(
        eventually(WAIT, || conn.stats().in_flight == 0).await,
        "the held replies did not come"
    );
    assert_eq!(conn.stats().rtt.count(), 2);
}

/// Lock outcomes by kind, over a known sequence: a grant, a busy answer from another manager,
/// an acquire whose budget runs out on the busy key, a lock whose keys vanish (the extension
/// fails, the lock is lost once, the release finds it not held), then a clean cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_outcomes_are_counted_by_kind() {
    let servers = cluster(3);
    let urls: Vec<String> = servers.iter().map(Server::url).collect();
    let a = redlock_over(&urls, RedlockOptions::default().retry_count(0)).await;
    let b = redlock_over(&urls, RedlockOptions::default()).await;
    let ttl = Duration::from_secs(10);

    let mut lock = a.try_acquire("stats:k", ttl).await.unwrap();
    let busy = b.try_acquire("stats:k", ttl).await.unwrap_err();
    assert!(busy.is_busy(), "{busy}");
    // Retries on the busy key until its budget runs out: every attempt busy, one timeout.
    let view = b
        .with_options(|o| {
            o.retry_count(1_000)
                .retry_delay(Duration::from_millis(5), Duration::ZERO)
                .acquire_timeout(Duration::from_millis(60))
        })
        .unwrap();
    let timed_out = view.acquire("stats:k", ttl).await.unwrap_err();
    assert_eq!(timed_out.kind(), LockErrorKind::Timeout);

    let bl = b.stats().locks;
    assert_eq!((bl.granted, bl.timeouts), (0, 1));
    // The acquire's last attempt may be cut by the budget before every node answered: its
    // verdict on the answers so far is then `NoQuorum` (one refusal is not yet "busy").
    assert!(bl.busy >= 1 && bl.no_quorum <= 1, "{bl:?}");
    assert!(
        bl.busy + bl.no_quorum >= 2,
        "one try_acquire and at least one attempt of the acquire: {bl:?}"
    );
    assert_eq!((bl.unavailable, bl.expired, bl.cancelled), (0, 0, 0));

    // The keys vanish under the held lock.
    for s in &servers {
        s.cmd(&["DEL", "stats:k"]);
    }
    let lost = lock.extend(ttl).await.unwrap_err();
    assert!(lost.is_lost(), "{lost}");
    // Asked again: still lost, counted once.
    assert!(lock.extend(ttl).await.unwrap_err().is_lost());
    let not_held = lock.release().await.unwrap_err();
    assert!(not_held.is_not_held(), "{not_held}");

    let lock = a.try_acquire("stats:k", ttl).await.unwrap();
    let mut lock2 = a.try_acquire("stats:other", ttl).await.unwrap();
    lock2.extend(ttl).await.unwrap();
    lock.release().await.unwrap();
    lock2.release().await.unwrap();

    // A guard dropped while held releases in the background: counted apart, so that every
    // granted lock that is no longer held shows in one of the release counters.
    drop(a.try_acquire("stats:dropped", ttl).await.unwrap());

    let al = a.stats().locks;
    assert_eq!(al.granted, 4);
    assert_eq!((al.extensions_ok, al.extensions_failed, al.lost), (1, 1, 1));
    assert_eq!(
        (al.releases_ok, al.releases_not_held, al.releases_failed),
        (2, 1, 0)
    );
    assert_eq!(al.released_on_drop, 1);
    assert_eq!((al.busy, al.timeouts), (0, 0));
    // Views share their manager's counters.
    let view_of_a = a.with_options(|o| o.retry_count(3)).unwrap();
    assert_eq!(view_of_a.stats().locks, al);
}

/// A killed node, seen through the manager: the requests it had in flight are lost with it,
/// locks go on over the others while it is refused, and its return is a reconnect (and, on
/// Redis, a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_counted_down_and_back() {
    let mut servers = cluster(3);
    let urls: Vec<String> = servers.iter().map(Server::url).collect();
    let redlock = redlock_over(&urls, RedlockOptions::default().retry_count(0)).await;
    let ttl = Duration::from_secs(10);
    // What the connect's own checks sent is not part of the sequence.
    let sent_before: Vec<u64> = redlock
        .stats()
        .nodes
        .iter()
        .map(|n| n.requests_sent)
        .collect();

    // Node 0 stalls: a cycle completes on the other two, and node 0 keeps both its `SET` and
    // its release in flight.
    servers[0].stop();
    let lock = redlock.try_acquire("stats:kill", ttl).await.unwrap();
    lock.release().await.unwrap();
    assert_eq!(redlock.stats().nodes[0].in_flight, 2);

    kill_stopped(&mut servers[0]);
    let down = |r: &Redlock| r.stats().nodes[0].state == ConnectionState::Down;
    assert!(eventually(WAIT, || down(&redlock)).await, "node 0 not down");
    let lock = redlock.try_acquire("stats:kill", ttl).await.unwrap();
    lock.release().await.unwrap();

    let n0 = &redlock.stats().nodes[0];
    assert_eq!(n0.errors.connection_lost, 2);
    assert_eq!(
        n0.errors.refused_not_connected, 2,
        "the second SET and release"
    );
    assert_eq!(n0.requests_sent - sent_before[0], 2);
    assert_eq!(n0.rtt.count(), sent_before[0], "no reply since the stall");
    for (i, n) in redlock.stats().nodes.iter().enumerate().skip(1) {
        assert_eq!(n.state, ConnectionState::Connected);
        assert_eq!(n.errors, Default::default(), "{n:?}");
        assert_eq!(n.requests_sent - sent_before[i], 4);
    }
    let locks = redlock.stats().locks;
    assert_eq!((locks.granted, locks.releases_ok), (2, 2));

    servers[0].restart();
    let up = |r: &Redlock| r.stats().nodes[0].state == ConnectionState::Connected;
    assert!(eventually(WAIT, || up(&redlock)).await, "node 0 not back");
    let n0 = &redlock.stats().nodes[0];
    assert_eq!((n0.connects, n0.reconnects), (2, 1));
    if has_run_id(&redlock.nodes()[0]) {
        assert_eq!(n0.restarts_seen, 1);
    } else {
        not_on_this_server(
            "a_killed_node_is_counted_down_and_back",
            "restarts_seen: no run_id; a start time cannot tell a restart seconds later",
        );
    }
}

/// A Redlock operation that gives up on a silent node counts a timeout for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_silent_until_the_release_timeout_counts_a_timeout() {
    let mut servers = cluster(3);
    let urls: Vec<String> = servers.iter().map(Server::url).collect();
    let redlock = redlock_over(
        &urls,
        RedlockOptions::default()
            .release_wait(dragonlock::ReleaseWait::All)
            // Long enough for the two running nodes on a loaded machine (100 ms was not
            // always), short enough to wait out for the stopped one.
            .release_timeout(Duration::from_secs(2)),
    )
    .await;
    let lock = redlock
        .try_acquire("stats:silent", Duration::from_secs(10))
        .await
        .unwrap();
    // The acquire returned at the quorum: let node 0's answer come before it stalls.
    let idle = || redlock.nodes().iter().all(|n| n.in_flight() == 0);
    assert!(eventually(WAIT, idle).await);
    servers[0].stop();
    // Waits for every node: node 0 stays silent until the release timeout.
    let released = lock.release().await;
    assert!(released.is_ok(), "{released:?}");
    let n0 = &redlock.stats().nodes[0];
    assert_eq!(n0.errors.timeouts, 1);
    assert_eq!(n0.in_flight, 1);
    servers[0].cont();
}
