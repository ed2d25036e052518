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
    support::redlock_over(&urls(servers), RedlockOptions::default().fencing(true)).await
}

const TTL: Duration = Duration::from_secs(5);

/// `grants` fenced grants of `resource`, then nodes 0 and 1 of 3 restarted without persistence
/// (a majority loses its counters) and reconnected.
async fn lose_a_majority(servers: &mut [Server], r: &Redlock, resource: &str, grants: usize) {
    for _ in 0..grants {
        let lock = r.try_acquire(resource, TTL).await.unwrap();
        lock.release().await.unwrap();
    }
    servers[0].restart();
    servers[1].restart();
    for n in &r.nodes()[..2] {
        n.wait_connected(Duration::from_secs(5)).await.unwrap();
    }
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
    let mut tasks = Vec::new();
    for (w, r) in managers.into_iter().enumerate() {
        let grants = grants.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = 0;
            for _ in 0..2_000 {
                if got == 150 {
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
                got += 1;
                lock.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let grants = grants.lock().unwrap();
    assert!(grants.len() >= 150, "{} grants", grants.len());
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
    let err = r.try_acquire_many(&["a", "b"], TTL).await.unwrap_err();
    assert!(err.is_invalid(), "fencing covers single resources: {err:?}");
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
    for s in &servers {
        let c = s.cmd(&["GET", "s2:dragonlock-fence"]);
        assert_eq!(
            c.as_bytes(),
            Some(&b"10"[..]),
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
