//! Hand-off on a contended key against real servers: waiters woken by the release, polling
//! when notifications cannot come, subscriptions released with the last waiter, and no waiter
//! starved. No test measures time: where a wake-up is what is tested, the retry delay is set
//! far beyond the test's own bound (60 s against 20 s), so that only a wake-up can succeed.

mod support;

use std::time::Duration;

use dragonlock::redlock::scripts::RELEASE_CHANNEL_PREFIX;
use dragonlock::resp::Frame;
use dragonlock::{Redlock, RedlockOptions};
use support::server::{cluster, Flavor, Server};

/// Far past every bound in these tests: a waiter that sleeps it out fails its test.
const NEVER: Duration = Duration::from_secs(60);
/// What each test waits for at most before it fails (a wedged test must stop by itself).
const BOUND: Duration = Duration::from_secs(20);

async fn redlock(servers: &[Server], options: RedlockOptions) -> Redlock {
    let urls: Vec<String> = servers.iter().map(Server::url).collect();
    support::redlock_over(&urls, options).await
}

fn channel(resource: &str) -> String {
    format!("{RELEASE_CHANNEL_PREFIX}{resource}")
}

/// `PUBSUB NUMSUB channel` on one server.
fn numsub(s: &Server, channel: &str) -> i64 {
    match s.cmd(&["PUBSUB", "NUMSUB", channel]) {
        Frame::Array(items) => items[1].as_integer().unwrap(),
        other => panic!("PUBSUB NUMSUB answered {other:?}"),
    }
}

async fn subscribed_everywhere(servers: &[Server], channel: &str, n: i64) -> bool {
    support::eventually(Duration::from_secs(5), || {
        servers.iter().all(|s| numsub(s, channel) == n)
    })
    .await
}

/// `SET` calls every server has seen (`INFO commandstats`): one per acquire attempt each.
fn sets_everywhere(servers: &[Server]) -> u64 {
    servers
        .iter()
        .map(|s| s.command_calls("set"))
        .min()
        .unwrap()
}

/// A waiter that only a wake-up can serve: one retry delay is past the test's bound.
fn waiting_options() -> RedlockOptions {
    RedlockOptions::default()
        .retry_count(5)
        .retry_delay(NEVER, Duration::ZERO)
}

/// What a spawned `acquire` got within the test's bound, `how` naming what should have got it
/// there: a wake-up, in the tests whose retry delay is past the bound.
async fn woken<T>(
    waiting: tokio::task::JoinHandle<Result<T, dragonlock::LockError>>,
    how: &str,
) -> T {
    tokio::time::timeout(BOUND, waiting)
        .await
        .unwrap_or_else(|_| panic!("{how}: the waiter got nothing within {BOUND:?}"))
        .unwrap()
        .unwrap_or_else(|e| panic!("{how}: the waiter failed: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_gets_the_lock_when_it_is_released_not_after_its_retry_delay() {
    let servers = cluster(5);
    let holder_side = redlock(&servers, RedlockOptions::default()).await;
    let waiter_side = redlock(&servers, waiting_options()).await;
    assert!(
        waiter_side.options().wake_on_release_value(),
        "on by default"
    );
    let ttl = Duration::from_secs(30);
    let held = holder_side.try_acquire("hot", ttl).await.unwrap();

    let waiter = waiter_side.clone();
    let waiting = tokio::spawn(async move { waiter.acquire("hot", ttl).await });
    assert!(subscribed_everywhere(&servers, &channel("hot"), 1).await);
    // Its first attempt, and the one the new subscription's confirmation starts (a release may
    // have come before it listened), have both failed: from here on it sleeps the 60 s.
    assert!(support::eventually(BOUND, || sets_everywhere(&servers) >= 3).await);

    held.release().await.unwrap();
    let lock = woken(waiting, "the release").await;
    assert!(lock.is_valid());
    // The last waiter left: the subscription went with it, on every node.
    assert!(subscribed_everywhere(&servers, &channel("hot"), 0).await);
    lock.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_woken_by_releases_of_every_kind_and_through_views() {
    let servers = cluster(3);
    let base = redlock(&servers, RedlockOptions::default().retry_count(0)).await;
    // A view waits; the manager it comes from never does. They share the subscriptions.
    let waiting = base
        .with_options(|o| o.retry_count(5).retry_delay(NEVER, Duration::ZERO))
        .unwrap();
    assert!(waiting.options().wake_on_release_value());
    let ttl = Duration::from_secs(30);

    // Released by dropping the guard (the background release), then by a multi-key release.
    let held = base.try_acquire("a", ttl).await.unwrap();
    let w = waiting.clone();
    let next = tokio::spawn(async move { w.acquire("a", ttl).await });
    assert!(subscribed_everywhere(&servers, &channel("a"), 1).await);
    // Every `SET` so far: the holder's, the waiter's first attempt, and the one the new
    // subscription's confirmation starts.
    assert!(support::eventually(BOUND, || sets_everywhere(&servers) >= 3).await);
    drop(held);
    let lock = tokio::time::timeout(BOUND, next).await.unwrap().unwrap();
    drop(lock.expect("woken by the guard's release"));

    // Wait for the guard's own release of "a" to be done before taking it with "b".
    assert!(
        support::eventually(BOUND, || servers
            .iter()
            .all(|s| s.cmd(&["EXISTS", "a"]).as_integer() == Some(0)))
        .await
    );
    let both = base.try_acquire_many(&["a", "b"], ttl).await.unwrap();
    let w = waiting.clone();
    let next = tokio::spawn(async move { w.acquire("b", ttl).await });
    assert!(subscribed_everywhere(&servers, &channel("b"), 1).await);
    // The woken attempt on "a" made 4 (the multi-key acquire is a script, not a `SET`); the
    // waiter on "b" adds its first attempt and the confirmation's.
    assert!(support::eventually(BOUND, || sets_everywhere(&servers) >= 6).await);
    both.release().await.unwrap();
    let lock = tokio::time::timeout(BOUND, next).await.unwrap().unwrap();
    lock.expect("woken by the multi-key release")
        .release()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_polls_when_its_notifications_are_lost() {
    if support::server::binary().1 == Flavor::Dragonfly {
        support::not_on_this_server(
            "a_waiter_polls_when_its_notifications_are_lost",
            "takes channel rights away with ACL SETUSER resetchannels, a Redis 7 behaviour",
        );
        return;
    }
    let servers = cluster(3);
    // The waiter logs in as its own user, so that its channel rights can be taken away
    // without touching the holder's (whose release publishes).
    for s in &servers {
        s.cmd(&[
            "ACL",
            "SETUSER",
            "waiter",
            "on",
            ">pw",
            "~*",
            "+@all",
            "allchannels",
        ]);
    }
    let holder_side = redlock(&servers, RedlockOptions::default()).await;
    let urls: Vec<String> = servers
        .iter()
        .map(|s| format!("redis://waiter:pw@{}", s.addr()))
        .collect();
    let options = RedlockOptions::default()
        .retry_count(1_000)
        .retry_delay(Duration::from_millis(100), Duration::ZERO);
    let waiter_side = support::redlock_over(&urls, options).await;
    let ttl = Duration::from_secs(30);
    let held = holder_side.try_acquire("cold", ttl).await.unwrap();
    let w = waiter_side.clone();
    let waiting = tokio::spawn(async move { w.acquire("cold", ttl).await });
    assert!(subscribed_everywhere(&servers, &channel("cold"), 1).await);

    // Redis closes the subscriber connections of a user who loses the channel, and refuses
    // their SUBSCRIBE when they come back: every notification from here on is lost.
    for s in &servers {
        s.cmd(&["ACL", "SETUSER", "waiter", "resetchannels"]);
    }
    assert!(subscribed_everywhere(&servers, &channel("cold"), 0).await);
    // Polling goes on meanwhile.
    let sets = sets_everywhere(&servers);
    assert!(support::eventually(BOUND, || sets_everywhere(&servers) >= sets + 2).await);
    assert!(!waiting.is_finished());

    held.release().await.unwrap();
    let lock = woken(waiting, "polling found the lock free").await;
    lock.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscriber_connection_comes_back_and_wakes_its_waiter() {
    if support::server::binary().1 == Flavor::Dragonfly {
        support::not_on_this_server(
            "a_killed_subscriber_connection_comes_back_and_wakes_its_waiter",
            "CLIENT KILL TYPE pubsub is Redis's",
        );
        return;
    }
    let servers = cluster(3);
    let holder_side = redlock(&servers, RedlockOptions::default()).await;
    let waiter_side = redlock(&servers, waiting_options()).await;
    let ttl = Duration::from_secs(30);
    let held = holder_side.try_acquire("k", ttl).await.unwrap();
    let w = waiter_side.clone();
    let waiting = tokio::spawn(async move { w.acquire("k", ttl).await });
    assert!(subscribed_everywhere(&servers, &channel("k"), 1).await);
    assert!(support::eventually(BOUND, || sets_everywhere(&servers) >= 3).await);

    for s in &servers {
        assert_eq!(
            s.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).as_integer(),
            Some(1)
        );
    }
    // Reconnected and subscribed again. Whether the confirmation also starts one more attempt
    // depends on the order of events, so it is not checked here: it does only when no node
    // listened in between (a release may then have been missed), and a node can come back
    // before the last one is killed. The handoff unit tests drive both orders by hand
    // (`a_lost_connection_*`).
    assert!(subscribed_everywhere(&servers, &channel("k"), 1).await);
    assert!(!waiting.is_finished());

    held.release().await.unwrap();
    let lock = woken(waiting, "the release").await;
    lock.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_acquires_leave_no_subscription_behind() {
    let servers = cluster(3);
    let r = redlock(&servers, waiting_options()).await;
    let ttl = Duration::from_secs(30);
    let held_x = r.try_acquire("x", ttl).await.unwrap();
    let held_y = r.try_acquire("y", ttl).await.unwrap();
    // Four waiters on each of two resources: one subscription per resource and node.
    let mut waiters = Vec::new();
    for resource in ["x", "y", "x", "y", "x", "y", "x", "y"] {
        let r = r.clone();
        waiters.push(tokio::spawn(async move { r.acquire(resource, ttl).await }));
    }
    assert!(subscribed_everywhere(&servers, &channel("x"), 1).await);
    assert!(subscribed_everywhere(&servers, &channel("y"), 1).await);

    // Three of each four go away (their futures dropped mid-wait): still subscribed for the
    // last one of each.
    let left = waiters.split_off(6);
    for w in &waiters {
        w.abort();
    }
    for w in waiters {
        assert!(w.await.unwrap_err().is_cancelled());
    }
    assert_eq!(left.len(), 2);
    assert!(subscribed_everywhere(&servers, &channel("x"), 1).await);
    assert!(subscribed_everywhere(&servers, &channel("y"), 1).await);
    // The last ones too: nothing left on any node, while the manager itself lives on.
    for w in &left {
        w.abort();
    }
    for w in left {
        assert!(w.await.unwrap_err().is_cancelled());
    }
    assert!(subscribed_everywhere(&servers, &channel("x"), 0).await);
    assert!(subscribed_everywhere(&servers, &channel("y"), 0).await);
    for s in &servers {
        match s.cmd(&["PUBSUB", "CHANNELS", &format!("{RELEASE_CHANNEL_PREFIX}*")]) {
            Frame::Array(channels) => assert!(channels.is_empty(), "{channels:?}"),
            other => panic!("PUBSUB CHANNELS answered {other:?}"),
        }
    }
    held_x.release().await.unwrap();
    held_y.release().await.unwrap();
}

/// 16 tasks of one manager take one lock 8 times each, with the default retry budget (10
/// retries, 50 ms plus up to 50 ms apart): every acquire succeeds, so no task was starved out
/// of its budget while the others took turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_contending_tasks_all_get_their_turns() {
    const TASKS: usize = 16;
    const TURNS: usize = 8;
    let servers = cluster(3);
    let r = redlock(&servers, RedlockOptions::default()).await;
    let ttl = Duration::from_secs(10);
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let mut grants = 0;
            for _ in 0..TURNS {
                let lock = r.acquire("shared", ttl).await?;
                // A little work under the lock, so that the others do queue up.
                tokio::task::yield_now().await;
                lock.release().await?;
                grants += 1;
            }
            Ok::<usize, dragonlock::LockError>(grants)
        }));
    }
    let all = tokio::time::timeout(Duration::from_secs(60), futures_join(tasks))
        .await
        .expect("the 128 turns end");
    for grants in all {
        assert_eq!(grants.expect("no acquire ran out of retries"), TURNS);
    }
    assert!(subscribed_everywhere(&servers, &channel("shared"), 0).await);
}

async fn futures_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_it_off_nothing_subscribes_and_releases_do_not_publish() {
    let servers = cluster(3);
    let r = redlock(
        &servers,
        RedlockOptions::default()
            .wake_on_release(false)
            .retry_count(2)
            .retry_delay(Duration::from_millis(20), Duration::ZERO),
    )
    .await;
    assert!(!r.options().wake_on_release_value());
    assert_eq!(
        r.options().wake_jitter_value(),
        dragonlock::redlock::DEFAULT_WAKE_JITTER
    );
    let ttl = Duration::from_secs(30);
    let held = r.try_acquire("quiet", ttl).await.unwrap();
    let err = r.acquire("quiet", ttl).await.unwrap_err();
    assert!(err.is_busy());
    for s in &servers {
        assert_eq!(numsub(s, &channel("quiet")), 0);
    }
    held.release().await.unwrap();
    let published = |s: &Server| s.command_calls("publish");
    for s in &servers {
        assert_eq!(published(s), 0);
    }
}

/// The retry count bounds the retry delays slept out, as it did before wake-ups: an attempt
/// that a wake-up starts (here the one the new subscription's confirmation starts) spends no
/// retry, and the waiter still gives up after its one delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_up_spends_no_retry_and_the_waiter_still_gives_up_after_its_delays() {
    let servers = cluster(3);
    let r = redlock(
        &servers,
        RedlockOptions::default()
            .retry_count(1)
            .retry_delay(Duration::from_secs(2), Duration::ZERO),
    )
    .await;
    let ttl = Duration::from_secs(30);
    let held = r.try_acquire("stuck", ttl).await.unwrap();
    let err = tokio::time::timeout(BOUND, r.acquire("stuck", ttl))
        .await
        .expect("gives up after one retry delay")
        .unwrap_err();
    assert!(err.is_busy(), "{err}");
    // The holder's SET, then the waiter's: its first attempt, the confirmation's, and the one
    // retry at the end of its delay.
    // (Eventually: the last node's `SET` may still be on its way when the quorum decided.)
    let four_each = || servers.iter().all(|s| s.command_calls("set") == 4);
    assert!(support::eventually(Duration::from_secs(5), four_each).await);
    assert!(subscribed_everywhere(&servers, &channel("stuck"), 0).await);
    held.release().await.unwrap();
}

/// Over RESP2 the subscriber connection's confirmations and messages are arrays, not pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp2_waiter_is_woken_too() {
    use dragonlock::conn::{ConnectionConfig, Protocol};
    let servers = cluster(3);
    let holder_side = redlock(&servers, RedlockOptions::default()).await;
    let configs = servers
        .iter()
        .map(|s| {
            ConnectionConfig::from_url(&s.url())
                .unwrap()
                .protocol(Protocol::Resp2)
        })
        .collect();
    let waiter_side = support::redlock_over_configs(configs, waiting_options()).await;
    assert_eq!(waiter_side.nodes()[0].server_info().unwrap().protocol, 2);
    let ttl = Duration::from_secs(30);
    let held = holder_side.try_acquire("r2", ttl).await.unwrap();
    let w = waiter_side.clone();
    let waiting = tokio::spawn(async move { w.acquire("r2", ttl).await });
    assert!(subscribed_everywhere(&servers, &channel("r2"), 1).await);
    assert!(support::eventually(BOUND, || sets_everywhere(&servers) >= 3).await);
    held.release().await.unwrap();
    let lock = woken(waiting, "the release (to a RESP2 waiter)").await;
    lock.release().await.unwrap();
    assert!(subscribed_everywhere(&servers, &channel("r2"), 0).await);
}

/// An `acquire_many` waiter subscribes on every key of its set and is woken by the release of
/// the key that kept it waiting, single-key or multi-key, not by its retry delay (set past the
/// test's bound); its subscriptions go with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_waiter_is_woken_by_the_release_of_any_of_its_keys() {
    let servers = cluster(3);
    let holder_side = redlock(&servers, RedlockOptions::default()).await;
    let waiter_side = redlock(&servers, waiting_options()).await;
    let ttl = Duration::from_secs(120);
    let busy_attempts = |r: &Redlock| r.stats().locks.busy;

    // "b" is held alone; the set {a, b} waits.
    let held = holder_side.try_acquire("b", ttl).await.unwrap();
    let w = waiter_side.clone();
    let waiting = tokio::spawn(async move { w.acquire_many(&["a", "b"], ttl).await });
    for key in ["a", "b"] {
        assert!(
            subscribed_everywhere(&servers, &channel(key), 1).await,
            "{key}"
        );
    }
    // Its first attempt and the two the new subscriptions' first confirmations start (one
    // each) have failed (busy): from here on only a wake-up gets it the set before the bound.
    assert!(support::eventually(BOUND, || busy_attempts(&waiter_side) >= 3).await);
    held.release().await.unwrap();
    let set = woken(waiting, "the release of \"b\"").await;
    for key in ["a", "b"] {
        assert!(
            subscribed_everywhere(&servers, &channel(key), 0).await,
            "{key}"
        );
    }

    // Now the set is held; another set {b, c} waits, and the multi-key release wakes it.
    let before = busy_attempts(&waiter_side);
    let w = waiter_side.clone();
    let waiting = tokio::spawn(async move { w.acquire_many(&["b", "c"], ttl).await });
    assert!(subscribed_everywhere(&servers, &channel("b"), 1).await);
    assert!(subscribed_everywhere(&servers, &channel("c"), 1).await);
    assert!(support::eventually(BOUND, || busy_attempts(&waiter_side) >= before + 3).await);
    set.release().await.unwrap();
    let other = woken(waiting, "the multi-key release").await;
    other.release().await.unwrap();
}

/// A subscriber connection whose handshakes are refused (the node's password changed under a
/// live client) tries again at most once per `AUTH_FAILURE_BACKOFF`, as the lock connections
/// do, not at the pace of its backoff (5 ms here): counted by a proxy in front of that node,
/// bounded by the time that actually passed, so a slow machine cannot fail it. The other
/// nodes' subscribers still wake the waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscriber_waits_the_auth_failure_backoff_between_attempts() {
    use std::sync::atomic::Ordering;
    use support::proxy::Proxy;

    let servers = cluster(3);
    let proxy = Proxy::to_port(servers[0].port).await;
    let urls = [proxy.url(), servers[1].url(), servers[2].url()];
    let holder_side = support::redlock_over(&urls, RedlockOptions::default()).await;
    let waiter_side = support::redlock_over(&urls, waiting_options()).await;
    let ttl = Duration::from_secs(120);
    let held = holder_side.try_acquire("hot", ttl).await.unwrap();
    // The live lock connections stay; every new connection to node 0 is refused from here on.
    servers[0].cmd(&["CONFIG", "SET", "requirepass", "changed"]);
    let before = proxy.stats.accepted.load(Ordering::SeqCst);

    let started = std::time::Instant::now();
    let waiter = waiter_side.clone();
    let waiting = tokio::spawn(async move { waiter.acquire("hot", ttl).await });
    let ch = channel("hot");
    let others =
        support::eventually(BOUND, || servers[1..].iter().all(|s| numsub(s, &ch) == 1)).await;
    assert!(others, "the waiter subscribed on the two other nodes");
    let tried = support::eventually(BOUND, || {
        proxy.stats.accepted.load(Ordering::SeqCst) > before
    })
    .await;
    assert!(tried, "node 0's subscriber tried to connect");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let attempts = proxy.stats.accepted.load(Ordering::SeqCst) - before;
    let elapsed = started.elapsed();
    let allowed = 1
        + (elapsed.as_secs_f64() / dragonlock::conn::AUTH_FAILURE_BACKOFF.as_secs_f64()).ceil()
            as u64;
    assert!(
        (1..=allowed).contains(&attempts),
        "{attempts} refused attempts in {elapsed:?}, at most {allowed} allowed"
    );

    held.release().await.unwrap();
    let lock = woken(waiting, "the release").await;
    lock.release().await.unwrap();
}
