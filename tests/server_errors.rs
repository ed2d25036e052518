//! Server-side edge cases a lock client meets in production: nodes that refuse writes
//! (`LOADING`, `READONLY`, `OOM`, `NOAUTH`), a password changed under a live client, and a
//! script cache flushed or lost while locks are held.

mod support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use dragonlock::resp::ServerErrorKind;
use dragonlock::{NodeResult, RedlockOptions, ReleaseWait};
use support::fake::{Action, FakeServer};
use support::proxy::{Fault, Proxy};
use support::server::{cluster, Server};

async fn refusing_fake(reply: &'static [u8]) -> FakeServer {
    let handler: support::fake::Handler =
        Arc::new(move |args: &[Vec<u8>]| match args[0].as_slice() {
            b"PING" => Action::Reply(b"+PONG\r\n".to_vec()),
            _ => Action::Reply(reply.to_vec()),
        });
    FakeServer::start(false, handler).await
}

fn failed_kind(r: &NodeResult) -> Option<ServerErrorKind> {
    match r {
        NodeResult::Failed(e) => e.server_error().map(|s| s.kind()),
        _ => None,
    }
}

/// Each refusal is a typed per-node failure: two refusing nodes of five leave a quorum, three
/// make the lock unavailable, and the live nodes keep no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_nodes_are_typed_failures_counted_in_the_quorum() {
    let servers = cluster(3);
    let cases: [(&[u8], ServerErrorKind); 4] = [
        (
            b"-LOADING Redis is loading the dataset in memory\r\n",
            ServerErrorKind::Loading,
        ),
        (
            b"-READONLY You can't write against a read only replica.\r\n",
            ServerErrorKind::ReadOnly,
        ),
        (
            b"-OOM command not allowed when used memory > 'maxmemory'.\r\n",
            ServerErrorKind::OutOfMemory,
        ),
        (
            b"-NOAUTH Authentication required.\r\n",
            ServerErrorKind::Auth,
        ),
    ];
    for (reply, kind) in cases {
        let fakes = [
            refusing_fake(reply).await,
            refusing_fake(reply).await,
            refusing_fake(reply).await,
        ];
        // Three real nodes and two refusing ones: a quorum of three.
        let mut urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
        urls.extend(fakes[..2].iter().map(FakeServer::url));
        let redlock = support::redlock_over(&urls, RedlockOptions::default()).await;
        let lock = redlock
            .try_acquire("refused", Duration::from_secs(2))
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: {e:?}"));
        assert_eq!(lock.release().await.unwrap(), 3, "{kind:?}");

        // Two real nodes and three refusing ones: no quorum is possible.
        let mut urls: Vec<String> = servers[..2].iter().map(|s| s.url()).collect();
        urls.extend(fakes.iter().map(FakeServer::url));
        let redlock = support::redlock_over(&urls, RedlockOptions::default()).await;
        let err = redlock
            .try_acquire("refused", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(err.is_unavailable(), "{kind:?}: {err:?}");
        for r in &err.nodes()[2..] {
            assert_eq!(failed_kind(r), Some(kind), "{r:?}");
            if kind == ServerErrorKind::Auth {
                assert!(matches!(r, NodeResult::Failed(e) if e.is_auth()));
            }
        }
        // The verdict may come before the live nodes answer: they granted or were not awaited
        // (never "silent": no deadline passed).
        assert!(
            err.nodes()[..2]
                .iter()
                .all(|r| matches!(r, NodeResult::Granted | NodeResult::NotAwaited)),
            "{err:?}"
        );
        // Whatever the live nodes granted, the failed attempt released (bounded wait).
        let left = || -> Vec<i64> {
            servers[..2]
                .iter()
                .map(|s| s.cmd(&["EXISTS", "refused"]).as_integer().unwrap())
                .collect()
        };
        support::eventually(Duration::from_secs(2), || left() == [0, 0]).await;
        assert_eq!(left(), [0, 0], "{kind:?}: keys left behind");
    }
}

/// Sends raw commands on one plain connection and reads one reply for each.
fn raw_session(server: &Server, commands: &[&[&str]]) {
    let mut s = std::net::TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for c in commands {
        s.write_all(&support::server::encode(c)).unwrap();
        let mut buf = [0u8; 256];
        assert!(s.read(&mut buf).unwrap() > 0);
    }
}

/// A password set on a live node: our connection is dropped, its reconnect is refused, and the
/// node counts as an authentication failure (not as a vague "not connected") while the other
/// two still give a quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_changed_under_a_live_client_is_an_auth_failure_on_that_node() {
    let servers = cluster(3);
    // The first node is reached through the fault proxy, whose reset drops the live connection
    // on both servers (Dragonfly answers `CLIENT KILL TYPE normal SKIPME yes` with a syntax
    // error and closes nothing).
    let proxy = Proxy::to_port(servers[0].port).await;
    let urls = [proxy.url(), servers[1].url(), servers[2].url()];
    let redlock = support::redlock_over(&urls, RedlockOptions::default()).await;
    raw_session(&servers[0], &[&["CONFIG", "SET", "requirepass", "changed"]]);
    proxy.set(Fault::Reset);
    // The reset must have been carried out before the heal replaces it (bounded wait).
    let reset = support::eventually(Duration::from_secs(5), || {
        proxy
            .stats
            .resets
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    })
    .await;
    assert!(reset, "the proxy reset the live connection");
    proxy.heal();
    let node = &redlock.nodes()[0];
    support::eventually(Duration::from_secs(5), || {
        node.last_error().is_some_and(|e| e.is_auth()) && !node.is_connected()
    })
    .await;
    assert!(
        node.last_error().is_some_and(|e| e.is_auth()),
        "{:?}",
        node.last_error()
    );
    let ttl = Duration::from_secs(2);
    let lock = redlock.try_acquire("pw", ttl).await.unwrap();
    assert_eq!(lock.release().await.unwrap(), 2);

    // Take a second node away: now the auth failure is part of an unavailable verdict.
    let mut servers = servers;
    servers[1].kill9();
    let err = redlock.try_acquire("pw", ttl).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        matches!(&err.nodes()[0], NodeResult::Failed(e) if e.is_auth()),
        "{err:?}"
    );
}

/// `SCRIPT FLUSH` on every node while single and multi-resource locks are held: extend and
/// release meet `NOSCRIPT`, resend with the source, and still work on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_while_locks_are_held() {
    let servers = cluster(3);
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    // Counting the nodes released: wait for every node, however late a loaded machine makes
    // one.
    let options = RedlockOptions::default()
        .force_script_release(true)
        .release_wait(ReleaseWait::All)
        .release_timeout(Duration::from_secs(30));
    let redlock = support::redlock_over(&urls, options).await;
    let ttl = Duration::from_secs(5);
    let mut one = redlock.try_acquire("flush-one", ttl).await.unwrap();
    let mut many = redlock
        .try_acquire_many(&["flush-a", "flush-b"], ttl)
        .await
        .unwrap();
    // The acquires returned at the quorum; the flush is meant to find every node holding the
    // keys, so wait for the last node's writes to land (a NOSCRIPT there would not be retried
    // once the acquire had returned, and the release below would count two).
    for s in &servers {
        let held = || {
            s.cmd(&["EXISTS", "flush-one", "flush-a", "flush-b"])
                .as_integer()
                == Some(3)
        };
        assert!(support::eventually(Duration::from_secs(2), held).await);
    }
    for s in &servers {
        s.cmd(&["SCRIPT", "FLUSH"]);
    }
    one.extend(ttl).await.unwrap();
    many.extend(ttl).await.unwrap();
    for s in &servers {
        s.cmd(&["SCRIPT", "FLUSH"]);
    }
    assert_eq!(one.release().await.unwrap(), 3);
    assert_eq!(many.release().await.unwrap(), 3);
    // And a fresh multi-resource acquire after another flush (its script goes by SHA first).
    for s in &servers {
        s.cmd(&["SCRIPT", "FLUSH"]);
    }
    let again = redlock
        .try_acquire_many(&["flush-a", "flush-b"], ttl)
        .await
        .unwrap();
    // Granted at the quorum: a node whose NOSCRIPT came after that was not asked again (the
    // acquire had already returned), so it may not hold the keys. At least the quorum released.
    assert!(again.release().await.unwrap() >= redlock.quorum());
}

/// A node restarts while a lock is held: it lost the key and its script cache. The reconnect
/// loads the scripts again (and a NOSCRIPT would be answered with the source); extend succeeds
/// on the two nodes that kept the key (the restarted one answers "not yours": the key is never
/// re-created there), and release counts two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_held_loses_that_node_only() {
    let mut servers = cluster(3);
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    let redlock = support::redlock_over(&urls, RedlockOptions::default()).await;
    let ttl = Duration::from_secs(5);
    let mut lock = redlock.try_acquire("restarted", ttl).await.unwrap();
    let before = redlock.nodes()[0].connects();
    servers[0].restart();
    let node = &redlock.nodes()[0];
    support::eventually(Duration::from_secs(5), || {
        node.connects() > before && node.is_connected()
    })
    .await;
    assert!(node.connects() > before, "reconnected to the new process");
    assert!(node.server_info().unwrap().scripts_loaded);
    // And if the new process's script cache is empty anyway (a load that raced a flush, a
    // proxy in between): NOSCRIPT, resent with the source.
    servers[0].cmd(&["SCRIPT", "FLUSH"]);
    lock.extend(ttl).await.unwrap();
    assert_eq!(
        servers[0].cmd(&["EXISTS", "restarted"]).as_integer(),
        Some(0)
    );
    assert_eq!(lock.release().await.unwrap(), 2);
}

/// Lock replies with RESP3 attributes in front (kept only when the decoder is asked to) count
/// as their values on the general path too (connections not started as a group): an
/// attributed `+OK` is a grant and an attributed `:1` a release, not an unexpected reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributed_lock_replies_count_as_their_values_on_the_general_path() {
    let handler: support::fake::Handler = Arc::new(|args: &[Vec<u8>]| match args[0].as_slice() {
        b"SET" => Action::Reply(b"|1\r\n+k\r\n+v\r\n+OK\r\n".to_vec()),
        b"EVALSHA" | b"EVAL" => Action::Reply(b"|1\r\n+k\r\n+v\r\n:1\r\n".to_vec()),
        b"PING" => Action::Reply(b"+PONG\r\n".to_vec()),
        _ => Action::Reply(b"-ERR unknown command\r\n".to_vec()),
    });
    let mut fakes = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let fake = FakeServer::start(false, handler.clone()).await;
        let config = dragonlock::conn::ConnectionConfig::from_url(&fake.url())
            .unwrap()
            .decoder(dragonlock::resp::DecoderConfig::default().keep_attributes(true));
        nodes.push(dragonlock::conn::Connection::connect(config).await.unwrap());
        fakes.push(fake);
    }
    let r = dragonlock::Redlock::from_connections(
        nodes,
        RedlockOptions::default()
            .retry_count(0)
            .wake_on_release(false)
            .force_script_release(true)
            .release_wait(ReleaseWait::All),
    )
    .unwrap();
    let lock = r
        .try_acquire("attributed", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(lock.release().await.unwrap(), 3);
    assert_eq!(
        r.stats().locks.general_path,
        2,
        "both phases on the general path"
    );
}
