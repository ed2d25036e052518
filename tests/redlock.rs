//! Redlock against real 3- and 5-node setups started by the harness.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dragonlock::resp::Frame;
use dragonlock::{LockErrorKind, LockSignal, NodeResult, Redlock, RedlockOptions, ReleaseWait};
use support::server::{cluster, Server};

/// A release timeout for tests that count every node's release (`ReleaseWait::All`): the
/// default 500 ms cuts off a node that a loaded machine's scheduler held up, and the count
/// comes out one short.
const LATE_NODE: Duration = Duration::from_secs(30);

async fn redlock(servers: &[Server], options: RedlockOptions) -> Redlock {
    let urls: Vec<String> = servers.iter().map(Server::url).collect();
    support::redlock_over(&urls, options).await
}

fn keys_on(s: &Server) -> i64 {
    s.cmd(&["DBSIZE"]).as_integer().unwrap()
}

/// Waits (bounded) until no server holds a key; returns the counts left.
async fn wait_no_keys(servers: &[Server]) -> Vec<i64> {
    let counts = || -> Vec<i64> {
        servers
            .iter()
            .filter(|s| s.is_running())
            .map(keys_on)
            .collect()
    };
    support::eventually(Duration::from_secs(2), || counts().iter().all(|&c| c == 0)).await;
    counts()
}

/// `key` taken by a holder of its own, on every node (each node's `SET` done) before it
/// returns: the holder and its lock, kept for as long as the key must stay taken.
async fn held_everywhere(servers: &[Server], key: &str) -> (Redlock, dragonlock::Lock) {
    let holder = redlock(servers, RedlockOptions::default()).await;
    let held = holder
        .try_acquire(key, Duration::from_secs(60))
        .await
        .unwrap();
    for s in servers {
        assert!(eventually(|| s.cmd(&["EXISTS", key]).as_integer() == Some(1)).await);
    }
    (holder, held)
}

/// A manager over `servers` whose connections have `slots` slots each.
async fn with_slots(servers: &[Server], slots: usize, options: RedlockOptions) -> Redlock {
    let configs = servers
        .iter()
        .map(|s| {
            dragonlock::conn::ConnectionConfig::from_url(&s.url())
                .unwrap()
                .max_in_flight(slots)
        })
        .collect();
    support::redlock_over_configs(configs, options).await
}

/// True once `check` holds, polling for up to 2 s. For effects of requests already sent whose
/// answers were not awaited (an operation that returns at the quorum leaves the last nodes'
/// requests on their way).
async fn eventually(check: impl FnMut() -> bool) -> bool {
    support::eventually(Duration::from_secs(2), check).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_extend_release_with_prefix_and_validity() {
    let servers = cluster(3);
    // Releases wait for every node here, so the keys are gone everywhere when they return.
    let options = RedlockOptions::default()
        .key_prefix("app:")
        .release_wait(ReleaseWait::All)
        .release_timeout(LATE_NODE);
    let r = redlock(&servers, options).await;
    assert_eq!(r.quorum(), 2);
    let ttl = Duration::from_secs(10);
    let mut lock = r.try_acquire("res", ttl).await.unwrap();
    // The name as given, which the other calls take; the key on the servers has the prefix.
    assert_eq!(lock.resource(), "res");
    assert_eq!(lock.key(), "app:res");
    assert_eq!(lock.keys(), ["app:res"]);
    assert_eq!(lock.resources(), ["res"]);
    assert_eq!(r.holder(lock.resource()).await.held_by(lock.token()), 3);
    assert_eq!(lock.token().len(), 32);
    assert!(lock.is_valid());
    // validity = ttl - elapsed - (ttl * 0.01 + 2 ms): at most 9.898 s from now.
    assert!(lock.remaining() <= Duration::from_millis(9_898));
    for s in &servers {
        // The acquire returned at the quorum: the last node's SET is sent but may still be on
        // its way.
        eventually(|| s.cmd(&["EXISTS", "app:res"]).as_integer() == Some(1)).await;
        assert_eq!(
            s.cmd(&["GET", "app:res"]).as_bytes(),
            Some(lock.token().as_bytes())
        );
        let pttl = s.cmd(&["PTTL", "app:res"]).as_integer().unwrap();
        // The server's expiry is never earlier than our local validity.
        assert!(
            pttl as u128 >= lock.remaining().as_millis(),
            "pttl {pttl} vs remaining {:?}",
            lock.remaining()
        );
    }
    let other = r.try_acquire("res", ttl).await.unwrap_err();
    assert!(other.is_busy(), "{other:?}");
    assert_ne!(other.nodes()[0], NodeResult::Granted);

    lock.extend(Duration::from_secs(30)).await.unwrap();
    assert!(lock.remaining() > Duration::from_secs(20));
    for s in &servers {
        // Extended at the quorum; the last node's extension may still be on its way.
        assert!(eventually(|| s.cmd(&["PTTL", "app:res"]).as_integer().unwrap() > 20_000).await);
    }
    let token = lock.token().to_string();
    assert_eq!(lock.release().await.unwrap(), 3);
    for s in &servers {
        assert_eq!(s.cmd(&["EXISTS", "app:res"]), Frame::Integer(0));
    }
    let again = r.try_acquire("res", ttl).await.unwrap();
    assert_ne!(again.token(), token, "tokens differ per acquisition");
    let mut again = again;
    assert_eq!(again.release_ref().await.unwrap(), 3);
    assert_eq!(
        again.release_ref().await.unwrap(),
        0,
        "release is idempotent"
    );
}

/// A release is encoded once and copied to each node when it fits a fixed buffer, and encoded
/// per node when it does not: both sizes release on every node, with and without the waiters'
/// notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_and_long_keys_release_on_every_node() {
    let servers = cluster(3);
    for wake in [true, false] {
        let options = RedlockOptions::default()
            .release_wait(ReleaseWait::All)
            .release_timeout(LATE_NODE)
            .wake_on_release(wake);
        let r = redlock(&servers, options).await;
        for len in [1, 40, 80, 120, 400] {
            let resource = "r".repeat(len);
            let lock = r
                .try_acquire(&resource, Duration::from_secs(30))
                .await
                .unwrap();
            assert_eq!(
                lock.release().await.unwrap(),
                3,
                "{len}-byte key, wake {wake}"
            );
            for s in &servers {
                assert_eq!(keys_on(s), 0, "{len}-byte key, wake {wake}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_lock_is_released_and_a_forgotten_one_is_not() {
    let servers = cluster(3);
    let r = redlock(&servers, RedlockOptions::default()).await;
    drop(
        r.try_acquire("dropped", Duration::from_secs(30))
            .await
            .unwrap(),
    );
    assert_eq!(wait_no_keys(&servers).await, vec![0, 0, 0]);
    r.try_acquire("forgotten", Duration::from_secs(30))
        .await
        .unwrap()
        .forget();
    // The acquire returned at a quorum; the third `SET` may still be on its way. A `PING`
    // answered on each connection comes after it (one FIFO per connection).
    settle(&r).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let keys: Vec<i64> = servers.iter().map(keys_on).collect();
    assert_eq!(keys, vec![1, 1, 1], "the forgotten key stays everywhere");
}

/// Returns once every request sent so far on `r`'s connections has run (see
/// `a_dropped_lock_is_released_and_a_forgotten_one_is_not`).
async fn settle(r: &Redlock) {
    for node in r.nodes() {
        node.command(&["PING"]).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_never_overlaps_and_everyone_gets_a_turn() {
    let servers = cluster(3);
    let r = redlock(
        &servers,
        RedlockOptions::default()
            .retry_count(1000)
            .retry_delay(Duration::from_millis(1), Duration::from_millis(3)),
    )
    .await;
    let in_section = Arc::new(AtomicBool::new(false));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let r = r.clone();
        let in_section = in_section.clone();
        let overlaps = overlaps.clone();
        tasks.push(tokio::spawn(async move {
            let mut held = 0;
            for _ in 0..5 {
                let lock = r
                    .acquire("contended", Duration::from_secs(5))
                    .await
                    .unwrap();
                if in_section.swap(true, Ordering::SeqCst) {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
                in_section.store(false, Ordering::SeqCst);
                assert!(lock.is_valid());
                lock.release().await.unwrap();
                held += 1;
            }
            held
        }));
    }
    for t in tasks {
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .unwrap()
                .unwrap(),
            5
        );
    }
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_stopped_minority_does_not_stop_the_lock() {
    let mut servers = cluster(5);
    let r = redlock(&servers, RedlockOptions::default().retry_count(0)).await;
    let ttl = Duration::from_secs(10);
    // One killed, one stopped: the stopped one never answers while we hold the lock.
    servers[0].kill9();
    servers[1].stop();
    let lock = r.try_acquire("minority", ttl).await.unwrap();
    assert!(lock.is_valid());
    drop(lock);
    // Two stopped (1 and 2), with node 0 back: wait for its reconnect so three can answer.
    servers[0].restart();
    r.nodes()[0]
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    servers[2].stop();
    let lock = r.try_acquire("minority2", ttl).await.unwrap();
    // It completed although two nodes have not answered (they are stopped).
    assert!(lock.is_valid());
    lock.release().await.unwrap();
    servers[1].cont();
    servers[2].cont();
}

/// `ReleaseWait::All` waits for every node, so with two nodes stopped (and a release timeout
/// of an hour) it does not return; `ReleaseWait::Quorum` returns with the three that answered.
/// Either way the release went to every node: once the stopped ones resume, no key is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_waits_for_every_node_or_for_a_quorum() {
    let mut servers = cluster(5);
    let ttl = Duration::from_secs(60);
    let hour = Duration::from_secs(3600);
    for wait in [ReleaseWait::All, ReleaseWait::Quorum] {
        let r = redlock(
            &servers,
            RedlockOptions::default()
                .release_timeout(hour)
                .release_wait(wait),
        )
        .await;
        let lock = r.try_acquire("rw", ttl).await.unwrap();
        // Every node holds the key before two of them stop.
        for s in &servers {
            assert!(eventually(|| s.cmd(&["EXISTS", "rw"]).as_integer() == Some(1)).await);
        }
        servers[3].stop();
        servers[4].stop();
        let release = tokio::spawn(async move { lock.release().await });
        // The stopped nodes cannot answer while stopped: this wait can only end one way.
        tokio::time::sleep(Duration::from_millis(300)).await;
        match wait {
            ReleaseWait::All => assert!(!release.is_finished(), "waited for every node"),
            _ => {
                let released = tokio::time::timeout(Duration::from_secs(10), release)
                    .await
                    .expect("returned at the quorum")
                    .unwrap()
                    .unwrap();
                assert_eq!(released, 3);
            }
        }
        servers[3].cont();
        servers[4].cont();
        assert_eq!(wait_no_keys(&servers).await, vec![0; 5], "{wait:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_majority_fails_fast_as_unavailable_and_leaves_no_key() {
    let mut servers = cluster(5);
    let r = redlock(&servers, RedlockOptions::default().retry_count(0)).await;
    for s in &mut servers[..3] {
        s.kill9();
    }
    // Let the connections notice.
    for n in &r.nodes()[..3] {
        support::eventually(Duration::from_secs(1), || !n.is_connected()).await;
    }
    let err = r
        .try_acquire("majority-down", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert_eq!(
        err.nodes()
            .iter()
            .filter(|n| matches!(n, NodeResult::Failed(_)))
            .count(),
        3
    );
    assert_eq!(wait_no_keys(&servers).await, vec![0, 0]);
}

/// A majority stopped (SIGSTOP): no quorum can come before the validity runs out, and the
/// silent nodes count as unavailable, as in a release (it was `Expired`, which says a quorum
/// came too late, and `is_unavailable` never fired for a frozen majority: found by a fresh
/// user's review). The `SET`s they run when resumed are released behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_silent_until_the_validity_ran_out_is_unavailable_and_cleaned_up() {
    let mut servers = cluster(5);
    let r = redlock(&servers, RedlockOptions::default().retry_count(0)).await;
    for s in &mut servers[..3] {
        s.stop();
    }
    let err = r
        .try_acquire("late", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    let silent = err.nodes().iter().filter(|n| **n == NodeResult::NoReply);
    assert_eq!(silent.count(), 3, "{err:?}");
    for s in &mut servers[..3] {
        s.cont();
    }
    // The late SETs ran, then the releases queued behind them on the same connections.
    assert_eq!(wait_no_keys(&servers).await, vec![0; 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_acquires_at_random_points_leaves_no_orphans() {
    let servers = cluster(5);
    let r = redlock(&servers, RedlockOptions::default().retry_count(0)).await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                let name = format!("drop-{t}-{i}");
                let fut = r.try_acquire(&name, Duration::from_secs(60));
                let us = rand::random::<u64>() % 300;
                let _ = tokio::time::timeout(Duration::from_micros(us), fut).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(wait_no_keys(&servers).await, vec![0; 5]);
}

/// An extension to a shorter ttl shortens the keys on every node it reaches, even when its
/// future is dropped before it decides: the lock must not go on claiming its old validity
/// (another client could take the keys once they expire), nor its signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_extension_to_a_shorter_ttl_shortens_the_local_validity() {
    let servers = cluster(3);
    let r = redlock(&servers, RedlockOptions::default()).await;
    let mut lock = r
        .try_acquire("shortened", Duration::from_secs(30))
        .await
        .unwrap();
    let signal = lock.signal();
    // A waiter already asleep until the old validity is woken to read the new one.
    let waiter = {
        let signal = lock.signal();
        tokio::spawn(async move { signal.lost().await })
    };
    // Time for it to go to sleep (if it has not, it reads the new validity: no harm).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let short = Duration::from_millis(300);
    {
        let mut extend = Box::pin(lock.extend(short));
        std::future::poll_fn(|cx| {
            let _ = std::future::Future::poll(extend.as_mut(), cx);
            std::task::Poll::Ready(())
        })
        .await;
    }
    assert!(lock.remaining() <= short, "{:?} left", lock.remaining());
    assert!(signal.valid_until() <= tokio::time::Instant::now() + short);
    // And the signal fires when that shorter validity ends, for the waiter asleep since
    // before it too.
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the signal fires at the shortened validity")
        .unwrap();
    assert!(!lock.is_valid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_never_resurrects_or_steals() {
    let servers = cluster(3);
    let r = redlock(&servers, RedlockOptions::default()).await;
    // Long enough to be taken on a loaded machine; then every node's key has run out (waited
    // for, bounded, after every `SET` ran: a late one sets its key late).
    let mut lock = r
        .try_acquire("short", Duration::from_millis(500))
        .await
        .unwrap();
    settle(&r).await;
    let gone = || {
        servers
            .iter()
            .all(|s| s.cmd(&["EXISTS", "short"]) == Frame::Integer(0))
    };
    assert!(support::eventually(Duration::from_secs(10), gone).await);
    let err = lock.extend(Duration::from_secs(10)).await.unwrap_err();
    assert!(err.is_lost(), "{err:?}");
    for s in &servers {
        assert_eq!(
            s.cmd(&["EXISTS", "short"]),
            Frame::Integer(0),
            "not re-created"
        );
    }
    // Taken over by someone else on every node: the original holder cannot extend.
    let mut mine = r
        .try_acquire("taken", Duration::from_secs(10))
        .await
        .unwrap();
    for s in &servers {
        s.cmd(&["SET", "taken", "someone-else"]);
    }
    let err = mine.extend(Duration::from_secs(10)).await.unwrap_err();
    assert!(err.is_lost(), "{err:?}");
    assert!(!mine.is_valid());
    // And cannot release someone else's key; the release says the lock was not held.
    let err = mine.release().await.unwrap_err();
    assert!(err.is_not_held(), "{err:?}");
    for s in &servers {
        assert_eq!(
            s.cmd(&["GET", "taken"]).as_bytes(),
            Some(&b"someone-else"[..])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_limit_is_enforced() {
    let servers = cluster(3);
    let r = redlock(&servers, RedlockOptions::default().max_extensions(2)).await;
    let mut lock = r
        .try_acquire("limited", Duration::from_secs(5))
        .await
        .unwrap();
    lock.extend(Duration::from_secs(5)).await.unwrap();
    lock.extend(Duration::from_secs(5)).await.unwrap();
    let err = lock.extend(Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(err.kind(), dragonlock::LockErrorKind::ExtensionLimit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_resource_locks_are_all_or_none() {
    let servers = cluster(3);
    let options = RedlockOptions::default()
        .retry_count(0)
        .release_wait(ReleaseWait::All)
        .release_timeout(LATE_NODE);
    let r = redlock(&servers, options).await;
    let a = r
        .try_acquire_many(&["a", "b", "c"], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(a.resources(), vec!["a", "b", "c"]);
    let err = r
        .try_acquire_many(&["c", "d"], Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(err.is_busy(), "{err:?}");
    for s in &servers {
        assert_eq!(
            s.cmd(&["EXISTS", "d"]),
            Frame::Integer(0),
            "none of the second set was taken"
        );
    }
    let mut a = a;
    a.extend(Duration::from_secs(20)).await.unwrap();
    for s in &servers {
        assert!(eventually(|| s.cmd(&["PTTL", "b"]).as_integer().unwrap() > 10_000).await);
    }
    assert_eq!(a.release().await.unwrap(), 3);
    assert_eq!(wait_no_keys(&servers).await, vec![0; 3]);
    let b = r
        .try_acquire_many(&["c", "d"], Duration::from_secs(10))
        .await
        .unwrap();
    b.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_multi_locks_from_two_clients_never_both_win() {
    let servers = cluster(3);
    let r1 = redlock(&servers, RedlockOptions::default().retry_count(0)).await;
    let r2 = redlock(&servers, RedlockOptions::default().retry_count(0)).await;
    for i in 0..200 {
        let first = [format!("x{i}"), format!("shared{i}")];
        let second = [format!("shared{i}"), format!("y{i}")];
        let (x, y) = tokio::join!(
            r1.try_acquire_many(&first, Duration::from_secs(10)),
            r2.try_acquire_many(&second, Duration::from_secs(10)),
        );
        assert!(!(x.is_ok() && y.is_ok()), "round {i}: both won");
    }
}

/// The renewals a lock's `signal` shows (its validity moving) until there were `renewals` and
/// at least `after` passed; bounded by 500 looks 20 ms apart.
async fn renewals_seen(signal: &LockSignal, renewals: usize, after: Duration) -> usize {
    let start = std::time::Instant::now();
    let mut seen = signal.valid_until();
    let mut count = 0;
    for _ in 0..500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if signal.valid_until() != seen {
            seen = signal.valid_until();
            count += 1;
        }
        if count >= renewals && start.elapsed() >= after {
            break;
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_renews_and_reports_loss() {
    let mut servers = cluster(3);
    let r = redlock(&servers, RedlockOptions::default().retry_count(0)).await;
    // Renewed past its ttl: the body outlives the ttl, seeing two renewals, and the lock still
    // holds. The ttl leaves a renewal (due every third of it) over a second of scheduling
    // stalls: 300 ms, which left 200, lost the lock under two busy loops.
    let ttl = Duration::from_millis(1500);
    let out = r
        .with_lock("renewed", ttl, None, |signal| async move {
            let renewals = renewals_seen(&signal, 2, ttl).await;
            assert!(!signal.is_lost());
            renewals
        })
        .await
        .unwrap();
    assert!(out >= 2, "renewed {out} times");
    assert_eq!(wait_no_keys(&servers).await, vec![0; 3]);
    // Busy at the start is the acquire's error, not a loss.
    let held = r
        .try_acquire("busy", Duration::from_secs(10))
        .await
        .unwrap();
    let err = r
        .with_lock("busy", Duration::from_secs(1), None, |_| async {})
        .await
        .unwrap_err();
    assert!(err.is_busy(), "{err:?}");
    drop(held);
    // A majority stopped mid-way: renewal fails, the body is told and dropped. Stopped once
    // the body runs (the lock is held then), not after a fixed sleep, which a loaded machine
    // can outlast before the acquire is decided.
    let fired = Arc::new(AtomicBool::new(false));
    let seen = fired.clone();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let work = r.with_lock(
        "lost",
        Duration::from_millis(1000),
        None,
        |signal| async move {
            tokio::spawn(async move {
                signal.lost().await;
                seen.store(true, Ordering::SeqCst);
            });
            let _ = started_tx.send(());
            tokio::time::sleep(Duration::from_secs(30)).await;
        },
    );
    let stopper = async {
        // Dropped unsent if the acquire failed: `work`'s error then says why.
        if started_rx.await.is_ok() {
            servers[0].stop();
            servers[1].stop();
        }
    };
    let (result, ()) = tokio::join!(work, stopper);
    assert!(result.unwrap_err().is_lost());
    assert!(
        support::eventually(Duration::from_secs(1), || fired.load(Ordering::SeqCst)).await,
        "the signal fired"
    );
    servers[0].cont();
    servers[1].cont();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_refused() {
    let servers = cluster(1);
    let r = redlock(&servers, RedlockOptions::default()).await;
    assert_eq!(r.quorum(), 1);
    assert!(r
        .try_acquire("x", Duration::from_millis(2))
        .await
        .unwrap_err()
        .is_invalid());
    // 3.9 ms goes out as `PX 3`, which the drift allowance (2.04 ms) and the minimum validity
    // (1 ms) leave nothing of: refused as such, not tried and reported `Expired`.
    assert!(r
        .try_acquire("x", Duration::from_micros(3_900))
        .await
        .unwrap_err()
        .is_invalid());
    assert!(r
        .try_acquire_many::<&str>(&[], Duration::from_secs(1))
        .await
        .unwrap_err()
        .is_invalid());
}

/// The public types a caller moves across tasks and threads, and the size of the error a busy
/// answer returns (per-node detail is inline; see `redlock/mod.rs`).
#[test]
fn public_types_are_send_and_sync_and_errors_stay_small() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<dragonlock::Error>();
    send_sync::<dragonlock::LockError>();
    send_sync::<dragonlock::Lock>();
    send_sync::<dragonlock::LockSignal>();
    send_sync::<dragonlock::resp::DecodeError>();
    assert!(std::mem::size_of::<dragonlock::resp::DecodeError>() <= 24);
    assert!(std::mem::size_of::<dragonlock::Error>() <= 48);
    assert!(std::mem::size_of::<dragonlock::LockError>() <= 400);
}

/// Clients connected to `s`, not counting the one asking.
fn clients_on(s: &Server) -> i64 {
    let info = s.cmd(&["INFO", "clients"]);
    let text = String::from_utf8_lossy(info.as_bytes().unwrap()).into_owned();
    let n: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .expect("INFO clients has connected_clients")
        .trim()
        .parse()
        .unwrap();
    n - 1
}

/// Dropping a `Redlock`, or its construction while it still waits for a node, closes its
/// connections: no driver task is left holding a socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_redlock_or_its_construction_closes_its_connections() {
    let servers = cluster(1);
    let s = &servers[0];
    assert_eq!(clients_on(s), 0);

    let r = redlock(&servers, RedlockOptions::default()).await;
    let lock = r.try_acquire("res", Duration::from_secs(10)).await.unwrap();
    lock.release().await.unwrap();
    assert_eq!(clients_on(s), 1);
    drop(r);
    assert!(
        eventually(|| clients_on(s) == 0).await,
        "a dropped Redlock left {} connections open",
        clients_on(s)
    );

    // A second node accepts and never answers, so the construction waits for its handshake.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("redis://{}", silent.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let long = Duration::from_secs(60);
    let configs = [s.url(), silent_url]
        .iter()
        .map(|u| {
            dragonlock::conn::ConnectionConfig::from_url(u)
                .unwrap()
                .handshake_timeout(long)
        })
        .collect();
    let mut building = Box::pin(Redlock::from_configs(
        configs,
        RedlockOptions::default().connect_timeout(long),
    ));
    let real_node_up = tokio::select! {
        _ = &mut building => panic!("the construction did not wait for the silent node"),
        up = eventually(|| clients_on(s) == 1) => up,
    };
    assert!(real_node_up, "the real node never saw the connection");
    drop(building);
    assert!(
        eventually(|| clients_on(s) == 0).await,
        "a dropped construction left {} connections open",
        clients_on(s)
    );
    holder.abort();
}

/// Many locks renewed at once by one manager travel on its one connection per node: the
/// renewals share each node's pipeline instead of opening sockets of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_renewed_locks_share_one_connection_per_node() {
    const LOCKS: usize = 40;
    let servers = cluster(3);
    let r = redlock(&servers, RedlockOptions::default().retry_count(0)).await;
    let renewed_twice = Arc::new(AtomicUsize::new(0));
    let bodies = (0..LOCKS).map(|i| {
        let (r, renewed_twice) = (r.clone(), renewed_twice.clone());
        tokio::spawn(async move {
            r.with_lock(
                &format!("renewed:{i}"),
                // Long enough that a loaded machine's scheduling stalls (hundreds of ms, seen
                // with a 600 ms ttl at load 8-9) do not lose a lock: this test counts
                // connections, not how tight renewals can be.
                Duration::from_secs(3),
                None,
                |signal| async move {
                    // A renewal is due every second.
                    if renewals_seen(&signal, 2, Duration::ZERO).await >= 2 {
                        renewed_twice.fetch_add(1, Ordering::SeqCst);
                    }
                    // Keep renewing while the test counts connections.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                },
            )
            .await
        })
    });
    let bodies: Vec<_> = bodies.collect();
    let all_renewed = || renewed_twice.load(Ordering::SeqCst) == LOCKS;
    assert!(
        support::eventually(Duration::from_secs(10), all_renewed).await,
        "only {} of {LOCKS} locks were renewed twice",
        renewed_twice.load(Ordering::SeqCst)
    );
    for s in &servers {
        assert_eq!(clients_on(s), 1, "renewals opened connections of their own");
    }
    for body in bodies {
        body.await.unwrap().unwrap();
    }
    assert_eq!(wait_no_keys(&servers).await, vec![0; 3]);
}

/// A `Lock`'s signal, for tasks that work under it without owning it: it follows a successful
/// extension, fires when an extension fails, and fires at a release or a drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locks_signal_follows_extend_and_fires_on_loss_or_release() {
    let servers = cluster(3);
    let r = redlock(&servers, RedlockOptions::default()).await;

    let mut lock = r
        .try_acquire("watched", Duration::from_secs(10))
        .await
        .unwrap();
    let signal = lock.signal();
    assert!(!signal.is_lost());
    assert_eq!(signal.valid_until(), lock.valid_until());
    lock.extend(Duration::from_secs(20)).await.unwrap();
    assert_eq!(
        signal.valid_until(),
        lock.valid_until(),
        "follows the extension"
    );
    // A watcher in another task hears of the loss as soon as the extension fails.
    let watcher = tokio::spawn({
        let signal = signal.clone();
        async move { signal.lost().await }
    });
    for s in &servers {
        s.cmd(&["SET", "watched", "someone-else"]);
    }
    assert!(lock
        .extend(Duration::from_secs(20))
        .await
        .unwrap_err()
        .is_lost());
    assert!(signal.is_lost());
    tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the watcher was woken")
        .unwrap();

    // Released: the signal fires, and one asked for afterwards is fired already.
    let mut lock = r
        .try_acquire("released", Duration::from_secs(10))
        .await
        .unwrap();
    let signal = lock.signal();
    lock.release_ref().await.unwrap();
    assert!(signal.is_lost());
    assert!(lock.signal().is_lost());
    // Dropped (released in the background): the signal fires too.
    let lock = r
        .try_acquire("dropped", Duration::from_secs(10))
        .await
        .unwrap();
    let signal = lock.signal();
    drop(lock);
    assert!(signal.is_lost());
    // Forgotten: still held until its validity runs out, and so is the signal.
    let lock = r
        .try_acquire("forgotten", Duration::from_secs(10))
        .await
        .unwrap();
    let signal = lock.signal();
    lock.forget();
    assert!(!signal.is_lost());
}

/// `with_lock` keeps polling its body while a renewal waits on stalled nodes: the renewal runs
/// beside the body, never instead of it. Three of five nodes are stopped once the body runs,
/// so the renewal can reach only two and cannot finish before the lock's validity runs out.
/// The test waits until the live nodes have seen the renewal, then pings the body: an answer
/// can only come from a body polled while that renewal is in flight (a body that is not
/// polled answers nothing, and is dropped when the renewal fails at the validity's end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_polls_the_body_while_a_renewal_is_stalled() {
    let mut servers = cluster(5);
    let r = redlock(&servers, RedlockOptions::default().retry_count(0)).await;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (ping_tx, mut ping_rx) = tokio::sync::mpsc::channel::<u32>(1);
    let (pong_tx, mut pong_rx) = tokio::sync::mpsc::channel::<u32>(1);
    // ttl 6 s: the renewal is due after 2 s and cannot finish before the validity ends (~6 s).
    let work = tokio::spawn({
        let r = r.clone();
        async move {
            r.with_lock(
                "stalled-renewal",
                Duration::from_secs(6),
                None,
                |_signal| async move {
                    let _ = started_tx.send(());
                    // Ends when the test hangs up.
                    while let Some(n) = ping_rx.recv().await {
                        if pong_tx.send(n).await.is_err() {
                            break;
                        }
                    }
                },
            )
            .await
        }
    });
    started_rx.await.unwrap();
    for s in &mut servers[..3] {
        s.stop();
    }
    let evalsha = |s: &Server| s.command_calls("evalsha");
    let before: Vec<u64> = servers[3..].iter().map(evalsha).collect();
    let renewal_sent = || {
        servers[3..]
            .iter()
            .zip(&before)
            .all(|(s, b)| evalsha(s) > *b)
    };
    assert!(
        support::eventually(Duration::from_secs(10), renewal_sent).await,
        "the renewal never reached the live nodes"
    );
    ping_tx.send(7).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(30), pong_rx.recv())
        .await
        .expect("bounded wait");
    assert_eq!(
        pong,
        Some(7),
        "the body answered while the renewal was in flight"
    );
    drop(ping_tx);
    for s in &mut servers[..3] {
        s.cont();
    }
    // The body ended while the lock was held; the release behind the stalled nodes is bounded.
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .expect("with_lock returns")
        .unwrap()
        .unwrap();
}

/// Past `max_hold` the renewals stop; the body still running when the lock then runs out is
/// dropped, and the error says why with its own kind, not as a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_reports_max_hold_with_its_own_kind() {
    let servers = cluster(3);
    let r = redlock(&servers, RedlockOptions::default().retry_count(0)).await;
    let err = r
        .with_lock(
            "held-too-long",
            // Renewals every half second until max_hold: a second of slack for a loaded
            // machine's stalls, which 300 ms (renewed every 100) did not leave.
            Duration::from_millis(1500),
            Some(Duration::from_millis(1500)),
            |_signal| async {
                // Longer than max_hold plus a ttl: only the lock's end stops it.
                tokio::time::sleep(Duration::from_secs(60)).await;
            },
        )
        .await
        .unwrap_err();
    assert!(err.is_max_hold_exceeded(), "{err:?}");
    assert!(!err.is_lost(), "{err:?}");
    assert_eq!(err.resource(), Some("held-too-long"));
    assert!(err.to_string().contains("max_hold"), "{err}");
}

/// A body woken after the lock's validity ended is not run again: with its thread blocked past
/// the validity (by another task on a current-thread runtime), the body's wake and the expiry
/// come due together, and the body must not be polled first (that would run its next step
/// without the lock and report `Ok`). The blocker sleeps in wall time, so the order holds on a
/// loaded machine too.
#[test]
fn with_lock_never_runs_its_body_past_the_validity() {
    let servers = cluster(3);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = redlock(&servers, RedlockOptions::default().retry_count(0)).await;
        let ttl = Duration::from_millis(300);
        let wrote = Arc::new(AtomicBool::new(false));
        let written = wrote.clone();
        let err = r
            .with_lock("starved", ttl, None, |_signal| async move {
                let (tx, rx) = tokio::sync::oneshot::channel();
                // Holds the only thread past the validity, then wakes the body.
                tokio::spawn(async move {
                    std::thread::sleep(ttl + Duration::from_millis(200));
                    let _ = tx.send(());
                });
                let _ = rx.await;
                // The protected write: must not happen once the lock has run out.
                written.store(true, Ordering::SeqCst);
            })
            .await
            .unwrap_err();
        assert!(err.is_lost(), "{err:?}");
        assert!(
            !wrote.load(Ordering::SeqCst),
            "the body ran past the validity"
        );
    });
}

/// A body that blocks inside one poll past the validity (synchronous work) cannot be stopped
/// mid-way, nor can the lock be renewed meanwhile; what it returns is not reported as done under
/// the lock: `Lost`, and its result dropped. The block is four ttls long, so the validity has
/// ended however late the thread runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_reports_a_body_that_finished_after_the_validity_as_lost() {
    let servers = cluster(3);
    let r = redlock(&servers, RedlockOptions::default().retry_count(0)).await;
    // Long enough that a loaded machine still takes the lock before it runs out.
    let ttl = Duration::from_millis(500);
    let err = r
        .with_lock("blocking", ttl, None, |_signal| async move {
            std::thread::sleep(4 * ttl);
            "committed"
        })
        .await
        .unwrap_err();
    assert!(err.is_lost(), "{err:?}");
    assert_eq!(r.stats().locks.lost, 1);
}

/// A manager made on a runtime that then shut down (a `static` shared by `#[tokio::test]`s,
/// each with its own runtime, ends up so): its connections' task is gone, and every call says
/// so at once, from each node, rather than waiting out the lock's validity and reporting
/// every node silent.
#[test]
fn a_manager_whose_runtime_shut_down_says_so_at_once() {
    let servers = cluster(3);
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = first.block_on(support::redlock_over(&urls, RedlockOptions::default()));
    drop(first);
    let second = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async move {
        // A validity no test run waits out: only the refusal can end this in time.
        let err = r
            .try_acquire("r", Duration::from_secs(600))
            .await
            .unwrap_err();
        let gone = |n: &NodeResult| {
            matches!(n, NodeResult::Failed(e) if *e.kind() == dragonlock::ErrorKind::TaskGone)
        };
        assert!(err.nodes().iter().all(gone), "{err:?}");
        assert!(err.to_string().contains("task is gone"), "{err}");
        drop(r);
    });
}

/// A lock released after it expired: the release is an error that says the lock was no longer
/// held (the critical section outlived it), with each node's answer, not `Ok(0)`. A second
/// `release_ref` releases nothing and says so with `Ok(0)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_an_expired_lock_is_an_error_not_a_count() {
    let servers = cluster(3);
    let r = redlock(
        &servers,
        RedlockOptions::default()
            .release_wait(ReleaseWait::All)
            .release_timeout(LATE_NODE),
    )
    .await;
    let mut lock = r
        .try_acquire("outlived", Duration::from_millis(200))
        .await
        .unwrap();
    let gone = || {
        servers
            .iter()
            .all(|s| s.cmd(&["EXISTS", "outlived"]).as_integer() == Some(0))
    };
    assert!(eventually(gone).await, "the keys never expired");
    let err = lock.release_ref().await.unwrap_err();
    assert!(err.is_not_held(), "{err:?}");
    assert!(
        err.nodes().iter().all(|n| *n == NodeResult::Refused),
        "{err:?}"
    );
    assert_eq!(err.resource(), Some("outlived"));
    assert_eq!(lock.release_ref().await.unwrap(), 0, "nothing left to do");
}

/// `acquire` with a time budget shorter than its retry delay: the sleep is shortened so one
/// more attempt fits, and running out of time is one kind, `Timeout`, that carries the last
/// attempt's verdict and answers. Attempts are counted on the servers (`SET` calls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_uses_its_whole_budget_and_reports_a_timeout() {
    let servers = cluster(3);
    // Every node has the holder's key (and its SET counted) before counting starts.
    let _held = held_everywhere(&servers, "budget").await;
    let sets = |s: &Server| s.command_calls("set");
    let before: Vec<u64> = servers.iter().map(sets).collect();
    // The budget is short of the retry delay, and long enough that the first attempt is
    // decided inside it on a loaded machine (30 ms was not always).
    let options = RedlockOptions::default()
        .retry_count(10)
        .retry_delay(Duration::from_secs(2), Duration::ZERO)
        .acquire_timeout(Duration::from_millis(500));
    let r = redlock(&servers, options).await;
    let err = r
        .acquire("budget", Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(err.last_attempt().is_some(), "{err:?}");
    assert_eq!(err.nodes().len(), 3, "{err:?}");
    assert_eq!(err.resource(), Some("budget"));
    // Two attempts at least, each sending its SET to every node (the last SETs may still be
    // on their way when the acquire returns: bounded wait).
    let two_attempts = || servers.iter().zip(&before).all(|(s, b)| sets(s) - b >= 2);
    assert!(
        eventually(two_attempts).await,
        "SET calls per node: {:?}",
        servers
            .iter()
            .zip(&before)
            .map(|(s, b)| sets(s) - b)
            .collect::<Vec<_>>()
    );
}

/// An attempt the acquire budget cuts before its answers decide it decided nothing: `Timeout`
/// carries the last decided attempt's verdict, and the cut attempt's answers. Here the key is
/// held on all three nodes; once an attempt was refused, two nodes go silent (their replies
/// held by the proxy), so the attempt after it waits for them until the budget cuts it, with
/// one refusal and two nodes unheard. Read as a verdict, that was "no quorum" (`dragonlock run
/// --wait` exited 69, not 75, on a loaded CI, where the last attempt was merely slow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_that_cuts_an_attempt_reports_the_last_decided_attempt() {
    let (servers, proxies) = support::proxy::proxied_cluster(3).await;
    let _held = held_everywhere(&servers, "cut").await;
    let urls: Vec<String> = proxies.iter().map(|p| p.url()).collect();
    let options = RedlockOptions::default()
        .retry_count(1000)
        .retry_delay(Duration::from_millis(20), Duration::ZERO)
        .acquire_timeout(Duration::from_millis(800));
    let r = support::redlock_over(&urls, options).await;
    let acquire = tokio::spawn({
        let r = r.clone();
        async move { r.acquire("cut", Duration::from_secs(10)).await }
    });
    // Bounded: the first attempt is answered in a round trip.
    assert!(eventually(|| r.stats().locks.busy >= 1).await);
    for p in &proxies[1..] {
        p.set(support::proxy::Fault::BlackHole(
            support::proxy::Direction::ToClient,
        ));
    }
    let err = acquire.await.unwrap().unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.last_attempt(), Some(LockErrorKind::Busy), "{err:?}");
    // The cut attempt's answers: node 0 refused, the two held ones unheard.
    assert_eq!(err.nodes()[0], NodeResult::Refused, "{err:?}");
    assert!(
        err.nodes()[1..].iter().all(|n| *n == NodeResult::NoReply),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("the last decided attempt: the resource is locked by someone else"),
        "{err}"
    );
    for p in &proxies {
        p.heal();
    }
}

/// A busy answer on five healthy nodes blames none of them: the nodes the collector decided
/// without are `NotAwaited`, not failed or silent; the message names the resource and every
/// node's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_answer_names_the_resource_and_nodes_and_blames_no_healthy_node() {
    let servers = cluster(5);
    let r = redlock(&servers, RedlockOptions::default().retry_count(0)).await;
    let _held = r
        .try_acquire("contended", Duration::from_secs(60))
        .await
        .unwrap();
    for s in &servers {
        assert!(eventually(|| s.cmd(&["EXISTS", "contended"]).as_integer() == Some(1)).await);
    }
    // Bounded: a handful of tries, until one is decided before some node answered (the usual
    // case: it stops at three refusals of five).
    let mut saw_not_awaited = false;
    for _ in 0..20 {
        let err = r
            .try_acquire("contended", Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(err.is_busy(), "{err:?}");
        assert!(
            err.nodes()
                .iter()
                .all(|n| matches!(n, NodeResult::Refused | NodeResult::NotAwaited)),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(!text.contains("failed"), "{text}");
        assert!(!text.contains("silent"), "{text}");
        assert!(text.contains("\"contended\""), "{text}");
        for s in &servers {
            assert!(text.contains(&s.addr()), "{text}");
        }
        if err.nodes().contains(&NodeResult::NotAwaited) {
            assert!(text.contains("not awaited"), "{text}");
            saw_not_awaited = true;
            break;
        }
    }
    assert!(
        saw_not_awaited,
        "every busy answer waited for all five nodes"
    );
}

/// No node, or one server listed twice, is a configuration error: spelled differently (found
/// before connecting), or behind a second address (found at the handshake by its `run_id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_listed_twice_is_a_configuration_error() {
    let servers = cluster(2);
    let err = Redlock::from_configs(Vec::new(), RedlockOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_config(), "{err:?}");
    let p = servers[0].port;
    for twice in [
        format!("redis://127.0.0.1:{p}"),
        format!("localhost:{p}"),
        format!("redis://LOCALHOST:{p}/2"),
    ] {
        let urls = [servers[0].addr(), servers[1].url(), twice.clone()];
        let err = Redlock::connect(&urls).await.unwrap_err();
        assert!(err.is_duplicate_node(), "{twice}: {err:?}");
        assert!(
            matches!(
                err.kind(),
                dragonlock::ErrorKind::DuplicateNode {
                    first: 0,
                    second: 2,
                    ..
                }
            ),
            "{err:?}"
        );
    }
    // Nothing listening: only the addresses can tell, before any handshake.
    let down = support::server::free_port();
    let urls = [
        format!("127.0.0.1:{down}"),
        format!("redis://localhost:{down}"),
    ];
    let options = RedlockOptions::default().connect_timeout(Duration::from_millis(200));
    let err = Redlock::connect_with(&urls, options).await.unwrap_err();
    assert!(err.is_duplicate_node(), "{err:?}");
    // The same server behind a proxy: another address, the same process.
    let proxy = support::proxy::Proxy::to_port(p).await;
    let urls = [servers[0].url(), servers[1].url(), proxy.url()];
    let err = Redlock::connect(&urls).await.unwrap_err();
    assert!(err.is_duplicate_node(), "{err:?}");
    assert!(err.to_string().contains("run_id"), "{err}");
    // Distinct servers are fine.
    let urls = [servers[0].url(), servers[1].url()];
    let r = Redlock::connect(&urls).await.unwrap();
    r.wait_for_quorum(Duration::from_secs(10)).await.unwrap();
}

/// `connect` returns with a minority of nodes up (the rest are retried in the background);
/// `wait_for_quorum` waits for enough of them, and says so with a typed error when they do not
/// come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_quorum_waits_for_enough_nodes_or_says_how_many_came() {
    let mut servers = cluster(3);
    servers[1].kill9();
    servers[2].kill9();
    let configs = servers
        .iter()
        .map(|s| {
            dragonlock::conn::ConnectionConfig::from_url(&s.url())
                .unwrap()
                .backoff(Duration::from_millis(5), Duration::from_millis(100))
        })
        .collect();
    let options = RedlockOptions::default().connect_timeout(Duration::from_secs(2));
    let r = Redlock::from_configs(configs, options).await.unwrap();
    let err = r
        .wait_for_quorum(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert_eq!(
        err.kind(),
        &dragonlock::ErrorKind::QuorumNotConnected {
            connected: 1,
            quorum: 2
        }
    );
    servers[1].restart();
    r.wait_for_quorum(Duration::from_secs(10)).await.unwrap();
    r.try_acquire("quorum-up", Duration::from_secs(10))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// A stopped server keeps its connection open: with two of three stopped, a quorum is
/// connected but cannot answer, and `wait_for_quorum` says so rather than reporting ready.
/// With one stopped, the other two answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_quorum_needs_a_quorum_that_answers_not_one_connected() {
    let mut servers = cluster(3);
    let r = redlock(&servers, RedlockOptions::default()).await;
    servers[1].stop();
    servers[2].stop();
    let err = r
        .wait_for_quorum(Duration::from_millis(300))
        .await
        .unwrap_err();
    // Node 0 answers (unless a loaded machine holds its reply past the wait: fewer still).
    assert!(
        matches!(
            err.kind(),
            dragonlock::ErrorKind::QuorumNotAnswering {
                answering: 0 | 1,
                quorum: 2
            }
        ),
        "{err:?}"
    );
    assert!(err.is_unavailable());
    servers[1].cont();
    r.wait_for_quorum(Duration::from_secs(10)).await.unwrap();
    servers[2].cont();
}

/// Credentials every node refuses cannot be waited out: `wait_for_quorum` returns the refusal
/// as soon as too few nodes are left to make a quorum, not a count of connected nodes at the end
/// of its timeout. With one node refusing, two still make a quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_quorum_reports_refused_credentials_at_once() {
    let servers: Vec<Server> = (0..3)
        .map(|_| {
            Server::start_with(support::server::ServerOptions {
                requirepass: Some("right".into()),
                ..Default::default()
            })
        })
        .collect();
    let with = |pass: &str, s: &Server| format!("redis://:{pass}@127.0.0.1:{}", s.port);
    let wrong: Vec<String> = servers.iter().map(|s| with("wrong", s)).collect();
    let r = Redlock::connect(&wrong).await.unwrap();
    // Long enough that only the refusal can end it in time.
    let err = r
        .wait_for_quorum(Duration::from_secs(600))
        .await
        .unwrap_err();
    assert!(err.is_auth(), "{err:?}");

    let mixed = [
        with("wrong", &servers[0]),
        with("right", &servers[1]),
        with("right", &servers[2]),
    ];
    let r = Redlock::connect(&mixed).await.unwrap();
    r.wait_for_quorum(Duration::from_secs(10)).await.unwrap();
}

/// Sixteen tasks racing for one key, each releasing what it got: when they are done and every
/// request has run, no node holds the key. A grant or a split vote whose cleanup went missing
/// would leave it held for its whole ttl, and every later acquire busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contenders_leave_no_key_behind() {
    const TASKS: usize = 16;
    const ATTEMPTS: usize = 200;
    let servers = cluster(5);
    let r = redlock(
        &servers,
        RedlockOptions::default()
            .retry_count(0)
            .release_timeout(Duration::from_secs(30)),
    )
    .await;
    let granted = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (r, granted) = (r.clone(), granted.clone());
            tokio::spawn(async move {
                for _ in 0..ATTEMPTS {
                    match r.try_acquire("contended", Duration::from_secs(30)).await {
                        Ok(lock) => {
                            granted.fetch_add(1, Ordering::SeqCst);
                            lock.release().await.unwrap();
                        }
                        Err(e) => assert!(e.is_busy() || e.is_no_quorum(), "{e}"),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(granted.load(Ordering::SeqCst) > 0);
    // Background releases of split votes are sent before the attempt returns; a PING answered
    // on each connection comes after them.
    for node in r.nodes() {
        node.command(&["PING"]).await.unwrap();
    }
    for (i, s) in servers.iter().enumerate() {
        let held = s.cmd(&["GET", "contended"]);
        assert!(
            held.is_null(),
            "node {i} still holds the key: {:?}",
            String::from_utf8_lossy(held.as_bytes().unwrap_or_default())
        );
    }
}

/// 256 callers whose requests reach the group's task in one round fill a node's 32 KiB write
/// buffer past what an acquire may use; a caller that finds it full while the task holds nothing
/// half-written sends it itself, rather than be refused. The task used to keep its "writing" mark
/// on the nodes whose replies woke nobody in a turn, and there such acquires were refused as
/// `Overloaded`: 15-20% of `dragonlock bench`'s cycles at 256 callers failed as unavailable.
/// One thread, so that the task is never caught half-way through a write by a caller running
/// beside it: there a full buffer is refused by design, and a test on two threads could see it
/// whenever the machine stalled the task's thread mid-write.
#[tokio::test]
async fn a_round_of_256_callers_is_not_refused_for_a_full_write_buffer() {
    let servers = cluster(5);
    // Slots to spare, so that only the write buffer can refuse.
    let redlock = with_slots(&servers, 4096, RedlockOptions::default()).await;
    let failed = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..256)
        .map(|w| {
            let (redlock, failed) = (redlock.clone(), failed.clone());
            tokio::spawn(async move {
                let key = format!("round:{w}");
                for _ in 0..40 {
                    // A node far behind (256 callers keep at most 512 in flight on one that
                    // keeps up) is let catch up: its refusals are not the ones looked for.
                    support::keep_up(&redlock, 1024).await;
                    match redlock.try_acquire(&key, Duration::from_secs(10)).await {
                        Ok(lock) => {
                            if lock.release().await.is_err() {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let refused: u64 = redlock
        .stats()
        .nodes
        .iter()
        .map(|n| n.errors.refused_overloaded)
        .sum();
    assert_eq!((refused, failed.load(Ordering::Relaxed)), (0, 0));
}

/// A release whose future is dropped after its first poll still deletes its key on every
/// node (its documented cancel safety), also when the group's task was busy and was handed
/// the release's requests instead of the caller sending them. Sixteen callers keep the task
/// busy, and every tenth of their releases is polled once and dropped; on this one-thread
/// runtime nothing else runs during that poll, so a rise of `handed_over` then is that
/// release's. Bounded: until 3 such releases, or 300 cycles per caller.
#[tokio::test]
async fn a_release_dropped_after_its_first_poll_deletes_its_key_everywhere_when_handed_over() {
    use std::future::Future;
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let servers = cluster(5);
    // Releases are handed over only when they go by script: so also on a server with DELEX.
    let r = redlock(
        &servers,
        RedlockOptions::default().force_script_release(true),
    )
    .await;
    let dropped = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let callers: Vec<_> = (0..16)
        .map(|w| {
            let (r, dropped) = (r.clone(), dropped.clone());
            tokio::spawn(async move {
                for i in 0..300 {
                    if dropped.lock().unwrap().len() >= 3 {
                        return;
                    }
                    let key = format!("dropped:{w}:{i}");
                    let lock = r.try_acquire(&key, Duration::from_secs(60)).await.unwrap();
                    if i % 10 != 0 {
                        lock.release().await.unwrap();
                        continue;
                    }
                    let before = r.stats().locks.handed_over;
                    {
                        let mut release = std::pin::pin!(lock.release());
                        let waker = std::task::Waker::from(Arc::new(Noop));
                        let mut cx = std::task::Context::from_waker(&waker);
                        assert!(release.as_mut().poll(&mut cx).is_pending());
                    }
                    if r.stats().locks.handed_over > before {
                        dropped.lock().unwrap().push(key);
                    }
                }
            })
        })
        .collect();
    for c in callers {
        c.await.unwrap();
    }
    let dropped = dropped.lock().unwrap().clone();
    assert!(
        !dropped.is_empty(),
        "no dropped release was handed over: the test did not take its path"
    );
    for key in &dropped {
        for s in &servers {
            let gone = eventually(|| s.cmd(&["EXISTS", key]).as_integer() == Some(0)).await;
            assert!(
                gone,
                "{key} left on {} after its release was dropped",
                s.addr()
            );
        }
    }
}

/// An extension's request is the same on every node: with sixteen holders extending at once,
/// the group's task is busy and is handed them (only extensions run in the window counted). A
/// seventeenth holds two long keys, whose extension is too long to hand over: its caller sends
/// it, as before.
#[tokio::test]
async fn extensions_are_handed_to_the_groups_task_when_it_is_busy() {
    let servers = cluster(3);
    let r = redlock(&servers, RedlockOptions::default()).await;
    let ttl = Duration::from_secs(30);
    let mut locks = Vec::new();
    for w in 0..16 {
        locks.push(r.try_acquire(&format!("extended:{w}"), ttl).await.unwrap());
    }
    let long = ["a", "b"].map(|k| format!("extended:{}:{k}", "x".repeat(200)));
    locks.push(r.try_acquire_many(&long, ttl).await.unwrap());
    let before = r.stats().locks;
    let holders: Vec<_> = locks
        .into_iter()
        .map(|mut lock| {
            tokio::spawn(async move {
                for _ in 0..200 {
                    lock.extend(ttl).await.unwrap();
                }
                lock
            })
        })
        .collect();
    let mut locks = Vec::new();
    for h in holders {
        locks.push(h.await.unwrap());
    }
    let after = r.stats().locks;
    assert_eq!(after.extensions_ok - before.extensions_ok, 17 * 200);
    assert_eq!(after.general_path, 0, "{after:?}");
    assert!(
        after.handed_over > before.handed_over,
        "no extension was handed over: {after:?}"
    );
    for lock in locks {
        lock.release().await.unwrap();
    }
}

/// A manager whose nodes have 128 slots each: a stopped node fills them long before its
/// socket buffers fill. One slot a release (no `PUBLISH` behind a `DELEX`), on every server.
async fn with_few_slots(servers: &[Server]) -> Redlock {
    with_slots(
        servers,
        128,
        RedlockOptions::default().wake_on_release(false),
    )
    .await
}

/// Sixteen lock cycles at a time on keys of their own, until node `node` (stopped) refused a
/// request for want of slots and each caller ran 125 more cycles (bounded by 60 s and 200,000
/// cycles). Returns whether it refused, and its requests in flight then.
async fn cycle_until_full(r: &Redlock, node: usize) -> (bool, usize) {
    let end = std::time::Instant::now() + Duration::from_secs(60);
    let (cycles, full) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let callers: Vec<_> = (0..16)
        .map(|w| {
            let (r, cycles, full) = (r.clone(), cycles.clone(), full.clone());
            tokio::spawn(async move {
                // Keys of their own per phase: a running node that fell behind may refuse a
                // release and keep the key it set until its ttl.
                let key = format!("stopped:{node}:{w}");
                let mut after_full = 0;
                while after_full < 125 && std::time::Instant::now() < end {
                    if cycles.fetch_add(1, Ordering::Relaxed) > 200_000 {
                        return;
                    }
                    let lock = r.try_acquire(&key, Duration::from_secs(30)).await.unwrap();
                    lock.release().await.unwrap();
                    if full.load(Ordering::Relaxed) {
                        after_full += 1;
                    } else if r.nodes()[node].stats().errors.refused_overloaded > 0 {
                        full.store(true, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for c in callers {
        c.await.unwrap();
    }
    (full.load(Ordering::Relaxed), r.nodes()[node].in_flight())
}

/// A node that stays connected but answers nothing (SIGSTOP) fills its slots and refuses the
/// rest; the phases the other nodes decide still go through the op table, none down the general
/// path. An entry used to be held until every node answered its phase: sized as one slot table
/// (default slots), 3,490 of 4,770 phases went there within half a second.
#[tokio::test]
async fn a_stopped_node_leaves_the_op_table_room() {
    let mut servers = cluster(3);
    let r = with_few_slots(&servers).await;
    servers[2].stop();
    let (full, in_flight) = cycle_until_full(&r, 2).await;
    servers[2].cont();
    assert!(full, "the stopped node never refused");
    // Acquires stop at three quarters of the slots; releases may take the rest.
    assert!(
        in_flight >= 96,
        "{in_flight} requests in flight on the stopped node"
    );
    let stats = r.stats().locks;
    assert_eq!(stats.general_path, 0, "phases left the op table: {stats:?}");
}

/// Two of five nodes stopped one after the other, each until its slots were full. With entries
/// held until every node answered, the two held the whole table between them (twice 128
/// entries, 128 slots a node) and the phases after went down the general path; an entry is now
/// freed when its caller is done, and the late replies it was owed are dropped by generation.
#[tokio::test]
async fn two_stopped_nodes_hold_no_op_entries() {
    let mut servers = cluster(5);
    let r = with_few_slots(&servers).await;
    let mut in_flight = Vec::new();
    for node in [3, 4] {
        servers[node].stop();
        let (full, n) = cycle_until_full(&r, node).await;
        assert!(full, "stopped node {node} never refused");
        in_flight.push(n);
        // With one node stopped, a quorum (3 of 5) needs only three of the four running ones,
        // so one whose server the scheduler starves falls behind: under two busy loops, one had
        // all 128 slots in flight when the phase ended, and drained 20 ms later. The next phase
        // needs all three running nodes, and acquires it found full would wait out their
        // validity for the stopped one: the backlog is let drain first.
        let running = |i: &usize| *i < 3 || (*i == 4 && node == 3);
        let caught_up = support::eventually(Duration::from_secs(10), || {
            (0..5)
                .filter(running)
                .all(|i| r.nodes()[i].in_flight() == 0)
        })
        .await;
        assert!(caught_up, "a running node kept requests in flight");
    }
    for node in [3, 4] {
        servers[node].cont();
    }
    assert!(
        in_flight.iter().all(|&n| n >= 96),
        "requests in flight on the stopped nodes: {in_flight:?}"
    );
    // Resumed, the two answer every request they held: hundreds of replies to ops freed long
    // ago, whose entries hold other ops now. They are dropped, and the cycles after (all five
    // nodes voting) still lock and release through the table.
    let drained = support::eventually(Duration::from_secs(10), || {
        [3, 4].iter().all(|&n| r.nodes()[n].in_flight() == 0)
    })
    .await;
    assert!(drained, "the resumed nodes' replies were not all read");
    let callers: Vec<_> = (0..16)
        .map(|w| {
            let r = r.clone();
            tokio::spawn(async move {
                let key = format!("resumed:{w}");
                for _ in 0..50 {
                    let lock = r.try_acquire(&key, Duration::from_secs(30)).await.unwrap();
                    assert!(lock.release().await.unwrap() >= 3);
                }
            })
        })
        .collect();
    for c in callers {
        c.await.unwrap();
    }
    let stats = r.stats().locks;
    assert_eq!(stats.general_path, 0, "phases left the op table: {stats:?}");
}
