//! The native compare-and-delete path (`DELEX key IFEQ token`), against fakes that answer like
//! Dragonfly 1.40.1 or Redis 7.0.15 (exact handshake bytes from the fixtures) and keep real key
//! state, and beside a real server of either kind.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dragonlock::redlock::scripts::{RELEASE, RELEASE_CHANNEL_PREFIX, RELEASE_NOTIFY};
use dragonlock::resp::Frame;
use dragonlock::{NodeResult, Redlock, RedlockOptions, ReleaseWait};
use support::fake::{Action, FakeServer};
use support::proxy::{Direction, Fault, Proxy};
use support::server::Server;

struct Store {
    keys: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    /// `SET`s that set their key.
    sets: AtomicUsize,
    delex_calls: AtomicUsize,
    eval_calls: AtomicUsize,
    /// `PUBLISH`es on a lock's release channel, and how many found the lock's key already
    /// deleted (the notification must follow the delete).
    publish_calls: AtomicUsize,
    published_after_delete: AtomicUsize,
}

/// A fake with `SET NX PX`, `GET`, `DEL`, `DELEX … IFEQ`, `PEXPIRE`, `PTTL` and the release
/// script via `EVAL`, answering like Dragonfly. With `lying`, it claims `DELEX` at handshake but
/// answers it as unknown.
async fn fake(lying: bool) -> (FakeServer, Arc<Store>) {
    fake_of(true, lying).await
}

/// [`fake`], answering like Dragonfly (`dragonfly`) or like Redis 7.0.15: no `DELEX` at
/// handshake, and `unknown command` for it.
async fn fake_of(dragonfly: bool, lying: bool) -> (FakeServer, Arc<Store>) {
    let store = Arc::new(Store {
        keys: Mutex::new(HashMap::new()),
        sets: AtomicUsize::new(0),
        delex_calls: AtomicUsize::new(0),
        eval_calls: AtomicUsize::new(0),
        publish_calls: AtomicUsize::new(0),
        published_after_delete: AtomicUsize::new(0),
    });
    let s = store.clone();
    let handler: support::fake::Handler = Arc::new(move |args: &[Vec<u8>]| {
        let mut keys = s.keys.lock().unwrap();
        let name = String::from_utf8_lossy(&args[0]).to_uppercase();
        let reply: Vec<u8> = match name.as_str() {
            "SET" if keys.contains_key(&args[1]) => b"_\r\n".to_vec(),
            "SET" => {
                s.sets.fetch_add(1, Ordering::SeqCst);
                keys.insert(args[1].clone(), args[2].clone());
                b"+OK\r\n".to_vec()
            }
            "GET" => match keys.get(&args[1]) {
                Some(v) => [
                    format!("${}\r\n", v.len()).into_bytes(),
                    v.clone(),
                    b"\r\n".to_vec(),
                ]
                .concat(),
                None => b"_\r\n".to_vec(),
            },
            "DEL" => format!(":{}\r\n", u8::from(keys.remove(&args[1]).is_some())).into_bytes(),
            "DELEX" if lying || !dragonfly => b"-ERR unknown command `DELEX`\r\n".to_vec(),
            "DELEX" => {
                s.delex_calls.fetch_add(1, Ordering::SeqCst);
                assert_eq!(args[2], b"IFEQ");
                if keys.get(&args[1]) == Some(&args[3]) {
                    keys.remove(&args[1]);
                    b":1\r\n".to_vec()
                } else {
                    b":0\r\n".to_vec()
                }
            }
            "PEXPIRE" => format!(":{}\r\n", u8::from(keys.contains_key(&args[1]))).into_bytes(),
            "PTTL" => {
                if keys.contains_key(&args[1]) {
                    b":10000\r\n".to_vec()
                } else {
                    b":-2\r\n".to_vec()
                }
            }
            "PUBLISH" => {
                s.publish_calls.fetch_add(1, Ordering::SeqCst);
                let key = args[1]
                    .strip_prefix(RELEASE_CHANNEL_PREFIX.as_bytes())
                    .unwrap();
                if !keys.contains_key(key) {
                    s.published_after_delete.fetch_add(1, Ordering::SeqCst);
                }
                b":0\r\n".to_vec()
            }
            // The release script (with or without its notification, whose channel is the
            // second key), sent with its source after NOSCRIPT or an unknown DELEX.
            "EVAL"
                if args[1] == RELEASE.as_bytes()
                    || (args[1] == RELEASE_NOTIFY.as_bytes() && args[2] == b"2") =>
            {
                s.eval_calls.fetch_add(1, Ordering::SeqCst);
                let token = &args[args.len() - 1];
                if keys.get(&args[3]) == Some(token) {
                    keys.remove(&args[3]);
                    if args[2] == b"2" {
                        assert_eq!(
                            args[4],
                            [RELEASE_CHANNEL_PREFIX.as_bytes(), &args[3]].concat()
                        );
                        s.publish_calls.fetch_add(1, Ordering::SeqCst);
                        s.published_after_delete.fetch_add(1, Ordering::SeqCst);
                    }
                    b":1\r\n".to_vec()
                } else {
                    b":0\r\n".to_vec()
                }
            }
            "EVALSHA" => b"-NOSCRIPT No matching script. Please use EVAL.\r\n".to_vec(),
            _ => b"-ERR unknown command\r\n".to_vec(),
        };
        Action::Reply(reply)
    });
    (FakeServer::start(dragonfly, handler).await, store)
}

/// These tests count the nodes each release reached, so releases wait for every node (however
/// late a loaded machine makes one).
async fn redlock(urls: Vec<String>, options: RedlockOptions) -> Redlock {
    let options = options
        .retry_count(0)
        .release_wait(ReleaseWait::All)
        .release_timeout(Duration::from_secs(30));
    support::redlock_over(&urls, options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_delex_release_natively_and_only_a_matching_token() {
    let mut fakes = Vec::new();
    for _ in 0..3 {
        fakes.push(fake(false).await);
    }
    let r = redlock(
        fakes.iter().map(|(f, _)| f.url()).collect(),
        RedlockOptions::default(),
    )
    .await;
    assert!(r.nodes().iter().all(|n| n.has_delex()));
    assert!(r.nodes()[0].server_info().unwrap().is_dragonfly());
    let lock = r
        .try_acquire("native", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(lock.release().await.unwrap(), 3);
    for (_, store) in &fakes {
        assert_eq!(store.delex_calls.load(Ordering::SeqCst), 1);
        assert_eq!(store.eval_calls.load(Ordering::SeqCst), 0);
        assert!(store.keys.lock().unwrap().is_empty());
    }
    // Each node got the waiters' notification right behind the DELEX (the connection reads
    // and drops its reply), after the key was gone.
    assert!(
        support::eventually(Duration::from_secs(5), || fakes.iter().all(|(_, s)| {
            s.publish_calls.load(Ordering::SeqCst) == 1
                && s.published_after_delete.load(Ordering::SeqCst) == 1
        }))
        .await
    );
    // Taken over on two nodes: the release deletes only where the token still matches.
    let lock = r
        .try_acquire("taken", Duration::from_secs(10))
        .await
        .unwrap();
    for (_, store) in &fakes[..2] {
        store
            .keys
            .lock()
            .unwrap()
            .insert(b"taken".to_vec(), b"someone-else".to_vec());
    }
    // A mismatch is not counted as released: one of three is no quorum, and the release
    // says that the lock was no longer held.
    let err = lock.release().await.unwrap_err();
    assert!(err.is_not_held(), "{err:?}");
    assert_eq!(
        &err.nodes()[..2],
        [NodeResult::Refused, NodeResult::Refused]
    );
    for (_, store) in &fakes[..2] {
        assert_eq!(
            store
                .keys
                .lock()
                .unwrap()
                .get(&b"taken"[..])
                .map(Vec::as_slice),
            Some(&b"someone-else"[..])
        );
    }
}

/// Old and new nodes in one cluster: each releases the way it can. The old node is a fake that
/// answers like Redis 7.0.15 (no `DELEX`: the script), the new one a fake that answers like
/// Dragonfly (`DELEX`), and the real server goes by what its own `COMMAND INFO DELEX` says
/// (Redis 7.0.15: the script; Dragonfly, or Redis 8.4 and later: `DELEX`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_cluster_releases_on_every_node() {
    let real = Server::start();
    // `*1 nil` where the command does not exist (fixtures: `command_info_delex_resp2`).
    let real_has_delex = match real.cmd(&["COMMAND", "INFO", "DELEX"]) {
        Frame::Array(info) => info.iter().any(|f| !f.is_null()),
        other => panic!("COMMAND INFO DELEX: {other:?}"),
    };
    let (old, old_store) = fake_of(false, false).await;
    let (new, new_store) = fake_of(true, false).await;
    let r = redlock(
        vec![real.url(), old.url(), new.url()],
        RedlockOptions::default(),
    )
    .await;
    assert_eq!(
        r.nodes().iter().map(|n| n.has_delex()).collect::<Vec<_>>(),
        vec![real_has_delex, false, true]
    );
    let lock = r
        .try_acquire("mixed", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(lock.release().await.unwrap(), 3);
    assert_eq!(new_store.delex_calls.load(Ordering::SeqCst), 1);
    assert_eq!(new_store.eval_calls.load(Ordering::SeqCst), 0);
    // The old node was never sent DELEX: the script by SHA, then by source after NOSCRIPT.
    assert_eq!(old_store.delex_calls.load(Ordering::SeqCst), 0);
    assert_eq!(old_store.eval_calls.load(Ordering::SeqCst), 1);
    for store in [&old_store, &new_store] {
        assert!(store.keys.lock().unwrap().is_empty());
    }
    assert_eq!(real.cmd(&["EXISTS", "mixed"]).as_integer(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_misreports_delex_falls_back_to_the_script_once() {
    let mut fakes = Vec::new();
    for _ in 0..3 {
        fakes.push(fake(true).await);
    }
    let r = redlock(
        fakes.iter().map(|(f, _)| f.url()).collect(),
        RedlockOptions::default(),
    )
    .await;
    let lock = r
        .try_acquire("liar", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(lock.release().await.unwrap(), 3);
    for (_, store) in &fakes {
        assert_eq!(store.eval_calls.load(Ordering::SeqCst), 1);
        assert!(store.keys.lock().unwrap().is_empty());
    }
    // Believed from now on: the next release goes straight to the script (here: NOSCRIPT, then EVAL).
    assert!(r.nodes().iter().all(|n| !n.has_delex()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_script_release_skips_delex() {
    let (fake1, store) = fake(false).await;
    let r = redlock(
        vec![fake1.url()],
        RedlockOptions::default().force_script_release(true),
    )
    .await;
    let lock = r
        .try_acquire("forced", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(lock.release().await.unwrap(), 1);
    assert_eq!(store.delex_calls.load(Ordering::SeqCst), 0);
    assert_eq!(store.eval_calls.load(Ordering::SeqCst), 1);
}

/// An acquire dropped after its first poll (its `SET`s sent, refused: the key is held) cleans
/// up in the background; on `DELEX` nodes that clean-up must not publish a release of a token
/// that held nothing, which would wake every manager's oldest waiter for a wasted attempt. It
/// releases by script there, which publishes only where it deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_acquire_publishes_no_release_it_did_not_make() {
    let mut fakes = Vec::new();
    for _ in 0..3 {
        fakes.push(fake(false).await);
    }
    let urls: Vec<String> = fakes.iter().map(|(f, _)| f.url()).collect();
    let holder = redlock(urls.clone(), RedlockOptions::default()).await;
    let held = holder
        .try_acquire("contended", Duration::from_secs(60))
        .await
        .unwrap();
    // The holder's acquire returned at a quorum: its third `SET` is settled first (FIFO), or
    // the dropped acquires could win that node and rightly publish their clean-up there.
    for node in holder.nodes() {
        node.command(&["GET", "settled"]).await.unwrap();
    }
    let r = redlock(urls, RedlockOptions::default()).await;
    for _ in 0..20 {
        let mut acquire = Box::pin(r.try_acquire("contended", Duration::from_secs(60)));
        std::future::poll_fn(|cx| {
            let _ = std::future::Future::poll(acquire.as_mut(), cx);
            std::task::Poll::Ready(())
        })
        .await;
        drop(acquire);
    }
    // Each node has run the clean-ups once it answers a later request (FIFO).
    for node in r.nodes() {
        node.command(&["GET", "settled"]).await.unwrap();
    }
    for (_, store) in &fakes {
        assert_eq!(store.publish_calls.load(Ordering::SeqCst), 0);
    }
    assert_eq!(
        held.release().await.unwrap(),
        3,
        "the holder's key was left alone"
    );
}

/// Busy attempts decided while node 2's replies are held: node 2 answers last, after nodes 0
/// and 1 refused, and its `SET` set the key there, so the late `OK` asks for a clean-up: a
/// `DELEX` on Dragonfly-like nodes, the release script by `EVAL` on Redis-like ones. Without it
/// the key stays on node 2 for its ttl. Nodes 0 and 1 refused: they get none.
///
/// An attempt whose `SET` was handed to the group's task keeps it and makes the clean-up from
/// it only at the late `OK` (`Form::CleanupOfSet`); one whose caller wrote its own requests
/// (the task was idle) encodes it at once. Both look alike from outside, and which one an
/// attempt takes depends on the task's timing, so a background loop of busy attempts on
/// another key keeps the task busy to make the first likely (seen: a clean-up that is never
/// made fails these tests in most runs); a unit test in `conn/ops.rs` covers it on its own.
/// Keys of `key_len` bytes or more: a long one's `EVAL` does not fit an entry where its `SET`
/// does, and its caller sends it at once, right behind the `SET`.
async fn late_oks_get_their_clean_ups(dragonfly: bool, key_len: usize) {
    let mut fakes = Vec::new();
    for _ in 0..3 {
        fakes.push(fake_of(dragonfly, false).await);
    }
    let proxy = Proxy::to_port(fakes[2].0.port).await;
    let urls = vec![fakes[0].0.url(), fakes[1].0.url(), proxy.url()];
    let r = redlock(urls, RedlockOptions::default()).await;
    // Held everywhere by someone else: the background attempts set nothing, clean nothing.
    for (_, store) in &fakes {
        let mut keys = store.keys.lock().unwrap();
        keys.insert(b"background".to_vec(), b"other".to_vec());
    }
    // 0: run, 1: pause, 2: stop. Paused between rounds, so that node 2 is not behind when
    // the next round begins (a node that owes replies may not be sent the next `SET` at all).
    let state = Arc::new(AtomicUsize::new(0));
    let background = {
        let (r, state) = (r.clone(), state.clone());
        tokio::spawn(async move {
            for _ in 0..100_000 {
                match state.load(Ordering::SeqCst) {
                    0 => drop(r.try_acquire("background", Duration::from_secs(60)).await),
                    1 => tokio::time::sleep(Duration::from_millis(1)).await,
                    _ => break,
                }
            }
        })
    };
    let node_2 = &fakes[2].1;
    let cleanups =
        |s: &Store| s.delex_calls.load(Ordering::SeqCst) + s.eval_calls.load(Ordering::SeqCst);
    // Until three rounds' `SET`s ran on node 2 (one that had not been written when the
    // attempt was decided is never sent: there is nothing to clean up then).
    for round in 0..20 {
        if node_2.sets.load(Ordering::SeqCst) >= 3 {
            break;
        }
        let key = format!("{round}{}", "k".repeat(key_len));
        for (_, store) in &fakes[..2] {
            let mut keys = store.keys.lock().unwrap();
            keys.insert(key.clone().into_bytes(), b"other".to_vec());
        }
        proxy.set(Fault::BlackHole(Direction::ToClient));
        let busy = r
            .try_acquire(&key, Duration::from_secs(60))
            .await
            .unwrap_err();
        state.store(1, Ordering::SeqCst);
        proxy.set(Fault::None);
        assert!(busy.is_busy(), "{busy:?}");
        // Every held reply read, a clean-up run for each key set, and the key gone.
        let settled = || {
            let on_2 = node_2.keys.lock().unwrap().contains_key(key.as_bytes());
            let cleaned = cleanups(node_2) == node_2.sets.load(Ordering::SeqCst);
            !on_2 && cleaned && r.nodes()[2].stats().in_flight == 0
        };
        let settled = support::eventually(Duration::from_secs(10), settled).await;
        assert!(settled, "round {round}: the key stayed on node 2");
        state.store(0, Ordering::SeqCst);
    }
    state.store(2, Ordering::SeqCst);
    background.await.unwrap();
    assert!(
        node_2.sets.load(Ordering::SeqCst) >= 1,
        "no SET reached node 2"
    );
    let by = if dragonfly {
        &node_2.delex_calls
    } else {
        &node_2.eval_calls
    };
    assert_eq!(by.load(Ordering::SeqCst), cleanups(node_2));
    for (_, store) in &fakes[..2] {
        assert_eq!(cleanups(store), 0);
        assert_eq!(store.sets.load(Ordering::SeqCst), 0);
    }
    assert_eq!(r.stats().locks.general_path, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_oks_get_delex_clean_ups_on_dragonfly_like_nodes() {
    late_oks_get_their_clean_ups(true, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_oks_get_script_clean_ups_on_redis_like_nodes() {
    late_oks_get_their_clean_ups(false, 1).await;
}

/// A 200-byte key: its `SET` fits an entry, its clean-up by `EVAL` with the source does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_ok_on_a_long_key_gets_its_clean_up_from_the_caller() {
    late_oks_get_their_clean_ups(false, 200).await;
}
