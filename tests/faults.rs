//! Network faults through the TCP fault proxy, against real servers: what a connection and a
//! Redlock do when a node is slow, black-holed, reset, cut mid-frame or trickling.
//!
//! Outcomes are asserted, never durations: a fault's delay is only ever used as a lower bound
//! that a much shorter deadline must run into.

mod support;

use std::time::Duration;

use dragonlock::conn::{Connection, ConnectionConfig};
use dragonlock::{NodeResult, RedlockOptions, ReleaseWait};
use support::proxy::{Direction, Fault, Proxy};
use support::server::Server;

async fn conn_via(proxy: &Proxy) -> Connection {
    let conn = Connection::connect(
        ConnectionConfig::from_url(&proxy.url())
            .unwrap()
            .backoff(Duration::from_millis(5), Duration::from_millis(100)),
    )
    .await
    .unwrap();
    conn.wait_connected(Duration::from_secs(5)).await.unwrap();
    conn
}

async fn echo(
    conn: &Connection,
    what: &str,
    timeout: Duration,
) -> Result<String, dragonlock::Error> {
    let f = conn.command_timeout(&["ECHO", what], timeout).await?;
    Ok(String::from_utf8_lossy(f.as_bytes().unwrap_or_default()).into_owned())
}

/// Retries `echo` until the connection works again (bounded: 5 s).
async fn echo_when_healed(conn: &Connection, what: &str) -> String {
    for _ in 0..250 {
        if let Ok(r) = echo(conn, what, Duration::from_secs(2)).await {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the connection did not recover within 5 s");
}

/// A request that times out inside a fault must never have its late reply handed to the next
/// request: each fault that holds a reply back is healed with the stale reply still on its way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_replies_arrive_late_and_go_to_nobody() {
    let server = Server::start();
    let proxy = Proxy::to_port(server.port).await;
    let conn = conn_via(&proxy).await;
    let faults = [
        Fault::Delay {
            fixed: Duration::from_millis(300),
            jitter: Duration::from_millis(50),
        },
        Fault::BlackHole(Direction::Both),
        Fault::BlackHole(Direction::ToServer),
        Fault::BlackHole(Direction::ToClient),
        Fault::StallMidFrame,
    ];
    for (i, fault) in faults.into_iter().enumerate() {
        proxy.set(fault);
        let stale = format!("stale-{i}");
        let err = echo(&conn, &stale, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{fault:?}: {err:?}");
        proxy.heal();
        let fresh = format!("fresh-{i}");
        assert_eq!(echo_when_healed(&conn, &fresh).await, fresh, "{fault:?}");
    }
    // The stale replies were read and dropped on the same connection: no reconnect was needed.
    assert_eq!(conn.connects(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_reply_arrives_whole() {
    let server = Server::start();
    let proxy = Proxy::to_port(server.port).await;
    let conn = conn_via(&proxy).await;
    proxy.set(Fault::Trickle(Duration::from_millis(1)));
    let long = "x".repeat(200);
    assert_eq!(
        echo(&conn, &long, Duration::from_secs(10)).await.unwrap(),
        long
    );
    proxy.heal();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_fails_what_is_in_flight_and_the_connection_comes_back() {
    let server = Server::start();
    let proxy = Proxy::to_port(server.port).await;
    let conn = conn_via(&proxy).await;
    // Hold the reply so the request is in flight when the reset comes.
    proxy.set(Fault::BlackHole(Direction::ToClient));
    let pending = conn
        .send(|b| dragonlock::resp::encode_command(b, &["ECHO", "lost"]))
        .unwrap();
    proxy.set(Fault::Reset);
    let err = pending.await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    // While resetting, every reconnect is reset too.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!conn.is_connected() || echo(&conn, "x", Duration::from_secs(1)).await.is_err());
    proxy.heal();
    assert_eq!(echo_when_healed(&conn, "back").await, "back");
    assert!(conn.connects() >= 2);
    assert!(
        proxy
            .stats
            .resets
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

/// Five nodes behind proxies: two black-holed nodes do not stop an acquire (it completes while
/// they have not answered); three do, the acquire fails without a quorum, and once healed no
/// key is left behind after the ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_minority_and_majority() {
    let (servers, proxies) = support::proxy::proxied_cluster(5).await;
    let urls: Vec<String> = proxies.iter().map(Proxy::url).collect();
    let redlock = support::redlock_over(&urls, RedlockOptions::default()).await;
    let ttl = Duration::from_millis(800);

    for p in &proxies[..2] {
        p.set(Fault::BlackHole(Direction::Both));
    }
    let lock = redlock.try_acquire("bh", ttl).await.unwrap();
    assert!(lock.is_valid());
    lock.release().await.unwrap();

    proxies[2].set(Fault::BlackHole(Direction::Both));
    let err = redlock.try_acquire("bh2", ttl).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    let silent = err
        .nodes()
        .iter()
        .filter(|r| matches!(r, NodeResult::NoReply))
        .count();
    assert!(silent >= 3, "{err:?}");
    for p in &proxies {
        p.heal();
    }
    // The held SETs land late and the cleanup deletes them after; whatever slips through ends
    // at the ttl. Bounded wait: the ttl plus 5 s.
    let left = || -> Vec<i64> {
        servers
            .iter()
            .map(|s| s.cmd(&["EXISTS", "bh2"]).as_integer().unwrap())
            .collect()
    };
    support::eventually(ttl + Duration::from_secs(5), || left() == [0; 5]).await;
    assert_eq!(left(), [0; 5], "keys left behind");
    // And the lock works again.
    redlock
        .acquire("bh2", ttl)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// Reset connections on two of five nodes: the acquire still wins on the other three, and the
/// reset nodes come back for the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_minority_then_heal() {
    let (_servers, proxies) = support::proxy::proxied_cluster(5).await;
    let urls: Vec<String> = proxies.iter().map(Proxy::url).collect();
    // Counting the nodes released: wait for every node (however late a loaded machine makes
    // one: the reset ones fail at once).
    let options = RedlockOptions::default()
        .release_wait(ReleaseWait::All)
        .release_timeout(Duration::from_secs(30));
    let redlock = support::redlock_over(&urls, options).await;
    proxies[0].set(Fault::Reset);
    proxies[1].set(Fault::Reset);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let lock = redlock
        .try_acquire("rs", Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(
        lock.release().await.unwrap(),
        3,
        "released on the three live nodes"
    );
    proxies[0].heal();
    proxies[1].heal();
    for n in redlock.nodes() {
        n.wait_connected(Duration::from_secs(5)).await.unwrap();
    }
    let lock = redlock
        .try_acquire("rs", Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(lock.release().await.unwrap(), 5);
}
