//! Fencing tokens against real nodes: strictly increasing per resource, through restarts of a
//! minority; refused, then reseeded, after a majority lost its counters.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dragonlock::{NodeResult, Redlock, RedlockOptions};
use support::server::{cluster, Server};

fn urls(servers: &[Server]) -> Vec<String> {
    servers.iter().map(|s| s.url()).collect()
}

async fn fenced(servers: &[Server]) -> Redlock {
    fenced_with(servers, RedlockOptions::default()).await
}

/// [`fenced`] with `options`.
async fn fenced_with(servers: &[Server], options: RedlockOptions) -> Redlock {
    support::redlock_over(&urls(servers), options.fencing(true)).await
}

const TTL: Duration = Duration::from_secs(5);

/// Returns once every request sent so far on `r`'s connections has run: lock phases return at
/// a quorum, and the last node's request may still be on its way. A `PING` answered on each
/// connection comes after it.
async fn settle(r: &Redlock) {
    for node in r.nodes() {
        node.command(&["PING"]).await.unwrap();
    }
}

/// The number in `resource`'s counter key on `server` (the part before the `@` and the
/// server's identity), `None` when there is no counter.
fn counter(server: &Server, resource: &str) -> Option<u64> {
    let v = server.cmd(&["GET", &format!("{resource}:dragonlock-fence")]);
    let v = std::str::from_utf8(v.as_bytes()?).unwrap().to_string();
    Some(v.split('@').next().unwrap().parse().unwrap())
}

/// `grants` fenced grants of `resource`, then nodes 0 and 1 of 3 restarted without persistence
/// (a majority loses its counters) and reconnected.
async fn lose_a_majority(servers: &mut [Server], r: &Redlock, resource: &str, grants: usize) {
    for _ in 0..grants {
        let lock = r.try_acquire(resource, TTL).await.unwrap();
        lock.release().await.unwrap();
    }
    let connects = connects(r);
    servers[0].restart();
    servers[1].restart();
    reconnected(r, &connects, &[0, 1]).await;
}

/// Each node's successful connects so far (see `reconnected`).
fn connects(r: &Redlock) -> Vec<u64> {
    r.nodes().iter().map(|n| n.stats().connects).collect()
}

/// Waits (bounded) until the nodes `which` are connected again to their restarted servers:
/// right after a restart a connection may not have seen the old process end yet, and still say
/// it is connected (`before`: `connects` from before the restart).
async fn reconnected(r: &Redlock, before: &[u64], which: &[usize]) {
    let again = || {
        which.iter().all(|&i| {
            let n = &r.nodes()[i];
            n.is_connected() && n.stats().connects > before[i]
        })
    };
    assert!(
        support::eventually(Duration::from_secs(10), again).await,
        "nodes {which:?} did not reconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_grants_get_strictly_increasing_tokens_on_three_and_five_nodes() {
    for n in [3, 5] {
        let servers = cluster(n);
        let r = fenced(&servers).await;
        let mut last = 0;
        for _ in 0..1_000 {
            let lock = r.try_acquire("ledger", TTL).await.unwrap();
            let t = lock.fencing_token().expect("fencing is on");
            assert!(t > last, "{n} nodes: {t} after {last}");
            last = t;
            lock.release().await.unwrap();
        }
        // A new resource starts at 1, and counts on its own.
        let other = r.try_acquire("journal", TTL).await.unwrap();
        assert_eq!(other.fencing_token(), Some(1));
        assert_eq!(last, 1_000, "{n} nodes: one token per grant, none skipped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contended_grants_of_one_resource_get_increasing_tokens_in_grant_order() {
    let servers = cluster(3);
    // Four managers, as four processes would have.
    let mut managers = Vec::new();
    for _ in 0..4 {
        managers.push(fenced(&servers).await);
    }
    let grants = Arc::new(Mutex::new(Vec::new()));
    // Until 300 grants in all. How many attempts that takes depends on how the four loops
    // interleave (on a loaded machine, one run of 2,000 attempts each gave 29 grants), so the
    // bound on attempts is generous, and a time bound ends the loops either way.
    let end = std::time::Instant::now() + Duration::from_secs(30);
    let mut tasks = Vec::new();
    for (w, r) in managers.into_iter().enumerate() {
        let grants = grants.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..50_000 {
                if grants.lock().unwrap().len() >= 300 || std::time::Instant::now() > end {
                    break;
                }
                let Ok(lock) = r.try_acquire("hot", TTL).await else {
                    continue;
                };
                // Recorded while held: the order of the records is the order of the grants.
                grants
                    .lock()
                    .unwrap()
                    .push((w, lock.fencing_token().unwrap()));
                lock.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let grants = grants.lock().unwrap();
    // Enough grants for the order to say something; the loops aim for 300.
    assert!(grants.len() >= 50, "{} grants", grants.len());
    for pair in grants.windows(2) {
        assert!(pair[0].1 < pair[1].1, "{pair:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_minority_keeps_tokens_increasing() {
    let mut servers = cluster(3);
    let r = fenced(&servers).await;
    let before = r.try_acquire("ledger", TTL).await.unwrap();
    let t1 = before.fencing_token().unwrap();
    before.release().await.unwrap();
    servers[0].restart(); // its counter (and lock keys) are gone
    for n in &r.nodes()[..1] {
        n.wait_connected(Duration::from_secs(5)).await.unwrap();
    }
    let after = r.try_acquire("ledger", TTL).await.unwrap();
    assert!(after.fencing_token().unwrap() > t1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_that_lost_its_counters_is_refused_until_reseeded() {
    let mut servers = cluster(3);
    let r = fenced(&servers).await;
    lose_a_majority(&mut servers, &r, "ledger", 5).await;
    let err = r.try_acquire("ledger", TTL).await.unwrap_err();
    assert!(err.is_fence_unavailable(), "{err:?}");
    // The keys it set were released.
    let released = support::eventually(Duration::from_secs(2), || {
        servers
            .iter()
            .all(|s| s.cmd(&["EXISTS", "ledger"]).as_integer() == Some(0))
    })
    .await;
    assert!(released);
    // The operator reseeds from the store's highest token; tokens go on above it.
    assert_eq!(r.reseed_fence("ledger", 1_000).await.unwrap(), 3);
    let lock = r.try_acquire("ledger", TTL).await.unwrap();
    assert_eq!(lock.fencing_token(), Some(1_001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_resource_needs_every_node_to_say_it_has_no_counter() {
    let mut servers = cluster(3);
    let r = fenced(&servers).await;
    servers[2].kill9();
    let err = r.try_acquire("fresh", TTL).await.unwrap_err();
    assert!(err.is_fence_unavailable(), "{err:?}");
    assert!(matches!(err.nodes()[2], NodeResult::Failed(_)));
    // Seeded while a quorum is up, it works without the third node.
    r.reseed_fence("fresh", 1).await.unwrap();
    let lock = r.try_acquire("fresh", TTL).await.unwrap();
    assert_eq!(lock.fencing_token(), Some(2));
}

/// The same with the third node stopped rather than dead: its answer never comes, so the token
/// cannot be picked before the lock's validity runs out, and the error says that the counters
/// were missing (`FenceUnavailable`, naming the silent node), not that time ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_resource_with_a_silent_node_is_refused_as_fence_unavailable() {
    let mut servers = cluster(3);
    let r = fenced(&servers).await;
    servers[2].stop();
    let err = r
        .try_acquire("fresh", Duration::from_secs(1))
        .await
        .unwrap_err();
    servers[2].cont();
    assert!(err.is_fence_unavailable(), "{err:?}");
    assert_eq!(err.nodes()[2], NodeResult::NoReply);
    assert!(err.to_string().contains("silent"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_hands_the_token_to_the_body_and_plain_locks_have_none() {
    let servers = cluster(3);
    let r = fenced(&servers).await;
    let token = r
        .with_lock("report", TTL, None, |signal| async move {
            signal.fencing_token()
        })
        .await
        .unwrap();
    assert_eq!(token, Some(1));
    let plain = support::redlock_over(&urls(&servers), RedlockOptions::default()).await;
    let lock = plain.try_acquire("other", TTL).await.unwrap();
    assert_eq!(lock.fencing_token(), None);
}

/// Found by review: a reseed below a surviving counter handed out a token a paused holder
/// already had. The reseed now raises every node to the largest counter any node kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reseed_below_a_surviving_counter_still_passes_it() {
    let mut servers = cluster(3);
    let r = fenced(&servers).await;
    lose_a_majority(&mut servers, &r, "s2", 10).await;
    assert!(r
        .try_acquire("s2", TTL)
        .await
        .unwrap_err()
        .is_fence_unavailable());
    // The store saw only 7; node 2 still has 10.
    r.reseed_fence("s2", 8).await.unwrap();
    settle(&r).await;
    for s in &servers {
        assert_eq!(
            counter(s, "s2"),
            Some(10),
            "every node raised to the survivor's 10"
        );
    }
    let lock = r.try_acquire("s2", TTL).await.unwrap();
    assert_eq!(lock.fencing_token(), Some(11));
}

/// Found by review: a counter that is not a canonical number (`007`, `-5`, `abc`) was read one
/// way by one script and compared another way by the next. Now it is an error, and nothing is
/// left set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_counter_is_an_error_and_sets_nothing() {
    let servers = cluster(3);
    let r = fenced(&servers).await;
    for bad in ["007", "-5", "abc", "99999999999999999"] {
        for s in &servers {
            s.cmd(&["SET", "m:dragonlock-fence", bad]);
        }
        let err = r.try_acquire("m", TTL).await.unwrap_err();
        let failed = err
            .nodes()
            .iter()
            .filter(|n| matches!(n, NodeResult::Failed(e) if e.is_server()))
            .count();
        assert!(err.is_unavailable() && failed >= 2, "{bad}: {err:?}");
        for s in &servers {
            assert_eq!(s.cmd(&["EXISTS", "m"]).as_integer(), Some(0), "{bad}");
        }
    }
    // A reseed replaces the malformed counter.
    r.reseed_fence("m", 50).await.unwrap();
    assert_eq!(
        r.try_acquire("m", TTL).await.unwrap().fencing_token(),
        Some(51)
    );
    // A resource named like a counter key is refused, not left busy forever.
    let err = r.try_acquire("r1:dragonlock-fence", TTL).await.unwrap_err();
    assert!(err.is_invalid(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_resource_with_a_node_down_says_why() {
    let mut servers = cluster(3);
    let r = fenced(&servers).await;
    servers[2].kill9();
    let err = r.try_acquire("fresh", TTL).await.unwrap_err();
    assert!(err.is_fence_unavailable());
    assert!(
        err.to_string()
            .contains("a new resource needs every node to answer"),
        "{err}"
    );
}

/// A set with one new resource and a node down: the error names the new one, the resource to
/// reseed, not the set's first (found by a fresh user's review), and says no more resources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_whose_new_resource_has_no_token_names_that_resource() {
    let mut servers = cluster(3);
    let r = fenced(&servers).await;
    r.try_acquire("known", TTL)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    servers[2].kill9();
    let err = r
        .try_acquire_many(&["known", "new"], TTL)
        .await
        .unwrap_err();
    assert!(err.is_fence_unavailable(), "{err:?}");
    assert_eq!(err.resource(), Some("new"), "{err}");
    assert!(err.to_string().contains("\"new\""), "{err}");
    assert!(!err.to_string().contains("known"), "{err}");
}

/// The sets of the multi-resource tests: overlapping, in different orders and sizes, with one
/// resource also taken alone.
const SETS: [&[&str]; 5] = [
    &["acct:1", "acct:2"],
    &["acct:2", "acct:3"],
    &["acct:3", "acct:1", "acct:4"],
    &["acct:4"],
    &["acct:2"],
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_sets_get_strictly_increasing_tokens_per_resource_on_three_and_five_nodes() {
    for n in [3, 5] {
        let servers = cluster(n);
        let r = fenced(&servers).await;
        let mut last = std::collections::BTreeMap::<String, u64>::new();
        let mut grants = std::collections::BTreeMap::<String, u64>::new();
        for i in 0..600 {
            let set = SETS[i % SETS.len()];
            let lock = if set.len() == 1 && i % 2 == 0 {
                r.try_acquire(set[0], TTL).await.unwrap()
            } else {
                r.try_acquire_many(set, TTL).await.unwrap()
            };
            for &resource in set {
                let t = lock.fencing_token_of(resource).expect("fencing is on");
                let before = last.insert(resource.to_string(), t).unwrap_or(0);
                assert!(t > before, "{n} nodes, {resource}: {t} after {before}");
                *grants.entry(resource.to_string()).or_default() += 1;
            }
            lock.release().await.unwrap();
        }
        // Each resource counts its own grants, whatever sets they came in: one token each.
        assert_eq!(last, grants, "{n} nodes");
        // The counters are the resources' own, on every node.
        settle(&r).await;
        for s in &servers {
            for (resource, &t) in &last {
                assert_eq!(counter(s, resource), Some(t), "{n} nodes, {resource}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_has_one_token_per_resource_and_shares_counters_with_single_locks() {
    let servers = cluster(3);
    let r = fenced(&servers).await;
    for _ in 0..3 {
        r.try_acquire("b", TTL)
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    // Given unsorted, with a duplicate: the lock covers each resource once.
    let set = r
        .try_acquire_many(&["c", "b", "a", "b"], TTL)
        .await
        .unwrap();
    assert_eq!(set.fencing_token_of("a"), Some(1));
    assert_eq!(set.fencing_token_of("b"), Some(4));
    assert_eq!(set.fencing_token_of("c"), Some(1));
    assert_eq!(set.fencing_token_of("d"), None);
    // Several resources, several tokens: no single one to hand out.
    assert_eq!(set.fencing_token(), None);
    assert_eq!(set.fencing_tokens(), vec![("a", 1), ("b", 4), ("c", 1)]);
    set.release().await.unwrap();
    // A single-resource lock goes on from the set's token.
    let one = r.try_acquire("b", TTL).await.unwrap();
    assert_eq!(one.fencing_token(), Some(5));
    assert_eq!(one.fencing_token_of("b"), Some(5));
    assert_eq!(one.fencing_tokens(), vec![("b", 5)]);
    // A set that contains a held resource is refused whole, and takes no token.
    let err = r.try_acquire_many(&["a", "b"], TTL).await.unwrap_err();
    assert!(err.is_busy(), "{err:?}");
    one.release().await.unwrap();
    let again = r.try_acquire_many(&["a", "b"], TTL).await.unwrap();
    assert_eq!(again.fencing_tokens(), vec![("a", 2), ("b", 6)]);
    // With a key prefix, tokens are asked for by resource name; `fencing_tokens` names keys.
    let prefixed = r.with_options(|o| o.key_prefix("p:")).unwrap();
    let lock = prefixed.try_acquire_many(&["x", "y"], TTL).await.unwrap();
    assert_eq!(lock.fencing_token_of("x"), Some(1));
    assert_eq!(lock.fencing_tokens(), vec![("p:x", 1), ("p:y", 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contended_overlapping_sets_get_increasing_tokens_per_resource_in_grant_order() {
    let servers = cluster(3);
    let mut managers = Vec::new();
    for _ in 0..3 {
        managers.push(fenced(&servers).await);
    }
    // Per resource, the tokens in the order they were recorded, while held.
    let seen = Arc::new(Mutex::new(
        std::collections::BTreeMap::<String, Vec<u64>>::new(),
    ));
    let mut tasks = Vec::new();
    for (w, r) in managers.into_iter().enumerate() {
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            // Ends at a count of grants: how many contended attempts win depends on how the
            // loops interleave (as in the test above). Bounded in attempts and time.
            let end = std::time::Instant::now() + Duration::from_secs(30);
            let mut got = 0;
            for i in 0..50_000 {
                if got == 80 || std::time::Instant::now() > end {
                    break;
                }
                let set = SETS[(i + w) % SETS.len()];
                let Ok(lock) = r.try_acquire_many(set, TTL).await else {
                    continue;
                };
                {
                    let mut seen = seen.lock().unwrap();
                    for &resource in set {
                        let t = lock.fencing_token_of(resource).unwrap();
                        seen.entry(resource.to_string()).or_default().push(t);
                    }
                }
                got += 1;
                lock.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4, "{seen:?}");
    for (resource, tokens) in seen.iter() {
        assert!(tokens.len() >= 20, "{resource}: {} grants", tokens.len());
        for pair in tokens.windows(2) {
            assert!(pair[0] < pair[1], "{resource}: {pair:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_with_one_resource_that_lost_its_counters_is_refused_until_it_is_reseeded() {
    let mut servers = cluster(3);
    let r = fenced(&servers).await;
    lose_a_majority(&mut servers, &r, "lost", 4).await;
    // "lost" has a counter on node 2 only; "new" on none. The set is refused whole.
    let err = r.try_acquire_many(&["lost", "new"], TTL).await.unwrap_err();
    assert!(err.is_fence_unavailable(), "{err:?}");
    let released = support::eventually(Duration::from_secs(2), || {
        servers.iter().all(|s| {
            s.cmd(&["EXISTS", "lost"]).as_integer() == Some(0)
                && s.cmd(&["EXISTS", "new"]).as_integer() == Some(0)
        })
    })
    .await;
    assert!(released, "the refused set's keys were released");
    r.reseed_fence("lost", 100).await.unwrap();
    let set = r.try_acquire_many(&["lost", "new"], TTL).await.unwrap();
    assert_eq!(set.fencing_tokens(), vec![("lost", 101), ("new", 1)]);
}

/// The rollback hole, closed: a node that restarts from an older snapshot brings its counters
/// back lower instead of losing them. Each counter is tagged with the identity of the server
/// process that wrote it (Redis's `run_id`), so a restored counter is stale: a minority of them
/// is passed over, and a majority is refused, never answered with a token that goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_restored_from_an_older_snapshot_never_make_tokens_go_back() {
    if support::server::binary().1 != support::server::Flavor::Redis {
        // Dragonfly reports no `run_id`: its counters are untagged (see `redlock::fence`).
        support::not_on_this_server(
            "counters_restored_from_an_older_snapshot_never_make_tokens_go_back",
            "no run_id to tag counters with; Dragonfly nodes must not restore snapshots",
        );
        return;
    }
    let mut servers = cluster(3);
    let r = fenced(&servers).await;
    let grant = || async {
        let lock = r.try_acquire("ledger", TTL).await.unwrap();
        let t = lock.fencing_token().unwrap();
        lock.release().await.unwrap();
        t
    };
    for _ in 0..5 {
        grant().await;
    }
    // A snapshot of every node at token 5, kept aside; then five more grants. The last
    // release returned at a quorum: a node that had not run it yet would save the lock key
    // too, and once restored refuse the next SET (so take no write). Settle first.
    settle(&r).await;
    for s in &servers {
        assert!(s.cmd(&["SAVE"]).is_ok());
        std::fs::copy(s.dir().join("dump.rdb"), s.dir().join("early.rdb")).unwrap();
    }
    for _ in 0..5 {
        grant().await;
    }
    let restore = |s: &mut Server| {
        s.kill9();
        std::fs::copy(s.dir().join("early.rdb"), s.dir().join("dump.rdb")).unwrap();
        s.restart();
        assert_eq!(
            counter(s, "ledger"),
            Some(5),
            "the snapshot's older counter is back"
        );
    };

    // A minority restored: passed over.
    let before = connects(&r);
    restore(&mut servers[0]);
    reconnected(&r, &before, &[0]).await;
    // (Node 0's counter is replaced only when node 0 is among the nodes the write goes to:
    // those that had granted when the quorum was reached, which under load it may not be.)
    assert_eq!(grant().await, 11);

    // Every node restored: without the tags, every counter says 5 and the token would be 6.
    let before = connects(&r);
    for s in servers.iter_mut() {
        restore(s);
    }
    reconnected(&r, &before, &[0, 1, 2]).await;
    let err = match r.try_acquire("ledger", TTL).await {
        Ok(lock) => panic!("token {:?} after 11", lock.fencing_token()),
        Err(e) => e,
    };
    assert!(err.is_fence_unavailable(), "{err:?}");
    // Not mistaken for a new resource either. The operator's reseed brings it back above the
    // highest token ever handed out.
    assert_eq!(r.reseed_fence("ledger", 1_000).await.unwrap(), 3);
    assert_eq!(grant().await, 1_001);
}

/// With a key prefix, `fencing_tokens` names the prefixed keys (as `resources` does), and each
/// of them finds its token through `fencing_token_of`, as the resource names do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_fencing_tokens_names_finds_its_token() {
    let servers = cluster(3);
    let r = fenced(&servers)
        .await
        .with_options(|o| o.key_prefix("app:"))
        .unwrap();
    let set = r.try_acquire_many(&["zeta", "alpha"], TTL).await.unwrap();
    let tokens = set.fencing_tokens();
    assert_eq!(tokens.len(), 2);
    for (key, token) in &tokens {
        assert!(key.starts_with("app:"), "{key}");
        assert_eq!(set.fencing_token_of(key), Some(*token), "{key}");
        assert_eq!(
            set.fencing_token_of(key.strip_prefix("app:").unwrap()),
            Some(*token)
        );
    }
    set.release().await.unwrap();
}

/// Lock keys (counters left out) on `server`.
fn lock_keys(server: &Server) -> usize {
    let dragonlock::resp::Frame::Array(keys) = server.cmd(&["KEYS", "*"]) else {
        panic!("KEYS answers an array");
    };
    keys.iter()
        .filter(|k| !k.as_bytes().unwrap().ends_with(b":dragonlock-fence"))
        .count()
}

/// A fenced acquire dropped at any point leaves no lock key behind, in step 3 (the counter
/// write, awaited with the keys set on a quorum) as in step 1. Dropped at random points over
/// 400 acquires; before the step-3 guard, a few keys (60 s ttl) were left on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_acquires_dropped_at_random_points_leave_no_lock_keys() {
    let servers = cluster(3);
    let r = support::redlock_over(
        &urls(&servers),
        RedlockOptions::default().fencing(true).retry_count(0),
    )
    .await;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                let name = format!("drop-{t}-{i}");
                let acquire = r.try_acquire(&name, Duration::from_secs(60));
                let us = rand::random::<u64>() % 1500;
                let _ = tokio::time::timeout(Duration::from_micros(us), acquire).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let left = || servers.iter().map(lock_keys).collect::<Vec<_>>();
    support::eventually(Duration::from_secs(3), || left().iter().all(|&n| n == 0)).await;
    assert_eq!(
        left(),
        vec![0; 3],
        "lock keys left by dropped fenced acquires"
    );
}

/// `acquire` returns `FenceUnavailable` at once rather than retrying it: each fenced attempt
/// with a silent node waits out the lock's validity, so ten retries made one call take eleven
/// ttls, to find the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_does_not_retry_a_fence_it_cannot_prove() {
    let mut servers = cluster(3);
    let options = RedlockOptions::default()
        .retry_count(3)
        .retry_delay(Duration::from_millis(1), Duration::ZERO);
    let r = fenced_with(&servers, options).await;
    servers[2].stop();
    let err = r
        .acquire("fresh", Duration::from_millis(300))
        .await
        .unwrap_err();
    servers[2].cont();
    assert!(err.is_fence_unavailable(), "{err:?}");
    assert_eq!(r.stats().locks.fence_unavailable, 1, "one attempt");
}

/// With a time budget shorter than the validity, the same silent node cuts the attempt: the
/// acquire's `Timeout` says the last attempt lacked a fence (it said "no quorum", with a
/// quorum of `SET`s granted: found by a fresh user's review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_cut_by_a_silent_node_on_a_new_resource_reads_as_a_missing_fence() {
    let mut servers = cluster(3);
    let options = RedlockOptions::default().acquire_timeout(Duration::from_millis(300));
    let r = fenced_with(&servers, options).await;
    servers[2].stop();
    let err = r.acquire("fresh", TTL).await.unwrap_err();
    servers[2].cont();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(
        err.last_attempt(),
        Some(dragonlock::LockErrorKind::FenceUnavailable),
        "{err}"
    );
    assert_eq!(err.nodes()[2], NodeResult::NoReply);
    assert!(err.to_string().contains("silent"), "{err}");
}
