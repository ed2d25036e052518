//! The single-loop baseline (`src/cli/baseline.rs`) against fake nodes whose every answer is
//! known in advance: it must count each reply for the operation it belongs to, late votes and
//! cleanup answers included.

#[allow(dead_code)]
#[path = "../src/cli/baseline.rs"]
mod baseline;
mod support;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baseline::Baseline;
use dragonlock::LockErrorKind;
use support::fake::{Action, FakeServer, Handler};

struct Counting;

thread_local! {
    static ALLOCS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a
// const-initialised thread-local Cell, which needs no allocation to access.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        unsafe { std::alloc::System.realloc(ptr, layout, size) }
    }
}

/// Counts allocations per thread: each test runs its own current-thread runtime (or, with
/// worker threads, is not counted), so tests in parallel do not disturb each other.
#[global_allocator]
static GLOBAL: Counting = Counting;

/// FNV-1a of the key: its bits say how each node answers it.
fn bits(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key {
        h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
    }
    h ^ (h >> 29)
}

/// Node `j` says yes to the `SET` of `key` when bit `j` is set, and yes to its release when
/// bit `4 + j` is. Bit 3 makes node 2 trickle its `SET` answer one byte at a time: its replies
/// come split across reads, and late, after the other two decided.
fn set_yes(key: &[u8], j: usize) -> bool {
    bits(key) >> j & 1 == 1
}
fn release_yes(key: &[u8], j: usize) -> bool {
    bits(key) >> (4 + j) & 1 == 1
}

fn node(j: usize, cleanups: Arc<AtomicUsize>) -> Handler {
    Arc::new(move |args: &[Vec<u8>]| {
        let reply = |bytes: &[u8]| Action::Reply(bytes.to_vec());
        match args[0].as_slice() {
            b"SET" => {
                let key = &args[1];
                // Both RESP2 and RESP3 nulls.
                let bytes: &[u8] = match (set_yes(key, j), j) {
                    (true, _) => b"+OK\r\n",
                    (false, 1) => b"_\r\n",
                    (false, _) => b"$-1\r\n",
                };
                if j == 2 && bits(key) >> 3 & 1 == 1 {
                    Action::Trickle(bytes.to_vec(), Duration::from_millis(1))
                } else {
                    reply(bytes)
                }
            }
            b"EVALSHA" if release_yes(&args[3], j) => reply(b":1\r\n"),
            b"EVALSHA" => reply(b":0\r\n"),
            // The cleanup after a refused acquire, with the script's source.
            b"EVAL" => {
                cleanups.fetch_add(1, Ordering::SeqCst);
                reply(b":0\r\n")
            }
            _ => reply(b"-ERR unexpected\r\n"),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_counts_for_its_own_operation() {
    const CALLERS: usize = 6;
    const OPS: usize = 40;
    let cleanups = Arc::new(AtomicUsize::new(0));
    let mut fakes = Vec::new();
    for j in 0..3 {
        fakes.push(FakeServer::start(false, node(j, cleanups.clone())).await);
    }
    let addrs: Vec<String> = fakes
        .iter()
        .map(|f| format!("127.0.0.1:{}", f.port))
        .collect();
    let ttl = Duration::from_secs(30);
    let mut base = Baseline::connect(&addrs, 3, ttl, false, false, CALLERS)
        .await
        .unwrap();
    assert_eq!(base.release_command(), "evalsha");
    let mut callers = Vec::new();
    for c in 0..CALLERS {
        let mut client = base.client();
        callers.push(tokio::spawn(async move {
            // (granted, busy, released on a quorum, released short of one, yes votes of the
            // busy ones)
            let mut seen = [0usize; 5];
            for i in 0..OPS {
                let name = format!("c{c}:{i}");
                let key = name.as_bytes();
                let yes = (0..3).filter(|&j| set_yes(key, j)).count();
                match client.acquire(key).await {
                    Ok(token) => {
                        assert!(yes >= 2, "{name} granted on {yes} yes votes");
                        seen[0] += 1;
                        let released = client.release(key, &token).await;
                        let ones = (0..3).filter(|&j| release_yes(key, j)).count();
                        assert!(released <= ones, "{name}: {released} of {ones}");
                        assert_eq!(released >= 2, ones >= 2, "{name}: {released} of {ones}");
                        seen[if released >= 2 { 2 } else { 3 }] += 1;
                    }
                    Err(kind) => {
                        assert_eq!(kind, LockErrorKind::Busy, "{name}");
                        assert!(yes <= 1, "{name} refused on {yes} yes votes");
                        seen[1] += 1;
                        seen[4] += yes;
                    }
                }
            }
            seen
        }));
    }
    let mut seen = [0usize; 5];
    for c in callers {
        let s = tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("callers finish")
            .unwrap();
        for (t, s) in seen.iter_mut().zip(s) {
            *t += s;
        }
    }
    // Not vacuous: every kind of answer was met.
    assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
    // A refused acquire is decided at its second no, and releases exactly where a node said
    // yes, before the decision or after it (a late yes), and nowhere else.
    let (refused, yes) = (seen[1], seen[4]);
    assert!(
        support::eventually(Duration::from_secs(5), || cleanups.load(Ordering::SeqCst)
            == yes)
        .await,
        "{} cleanups for {refused} refused acquires with {yes} yes votes",
        cleanups.load(Ordering::SeqCst)
    );
}

/// Nodes that never answer: the validity deadline decides (`Expired`), and the key is
/// released on the node that said yes (the silent ones would get theirs after a late yes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_without_a_quorum_expires_at_its_validity() {
    let cleanups = Arc::new(AtomicUsize::new(0));
    let seen = cleanups.clone();
    let yes: Handler = Arc::new(move |args: &[Vec<u8>]| match args[0].as_slice() {
        b"SET" => Action::Reply(b"+OK\r\n".to_vec()),
        _ => {
            seen.fetch_add(1, Ordering::SeqCst);
            Action::Reply(b":1\r\n".to_vec())
        }
    });
    let silent: Handler = Arc::new(|_: &[Vec<u8>]| Action::Silent);
    let fakes = [
        FakeServer::start(false, yes).await,
        FakeServer::start(false, silent.clone()).await,
        FakeServer::start(false, silent).await,
    ];
    let addrs: Vec<String> = fakes
        .iter()
        .map(|f| format!("127.0.0.1:{}", f.port))
        .collect();
    let ttl = Duration::from_millis(100);
    let mut base = Baseline::connect(&addrs, 3, ttl, false, false, 1)
        .await
        .unwrap();
    let mut client = base.client();
    let r = tokio::time::timeout(Duration::from_secs(10), client.acquire(b"k"))
        .await
        .expect("decided at the deadline");
    assert_eq!(r, Err(LockErrorKind::Expired));
    assert!(
        support::eventually(Duration::from_secs(5), || cleanups.load(Ordering::SeqCst)
            == 1)
        .await
    );
}

/// A baseline for one caller on one fake node answering with `handler`; the node stops with
/// the returned server.
async fn on_one_node(handler: Handler, ttl: Duration) -> (FakeServer, Baseline) {
    let fake = FakeServer::start(false, handler).await;
    let addrs = [format!("127.0.0.1:{}", fake.port)];
    let base = Baseline::connect(&addrs, 1, ttl, false, false, 1)
        .await
        .unwrap();
    (fake, base)
}

/// A lane given to a new caller after `rewind` (the sides of `bench --compare client=…` take
/// turns) goes on from the tickets of its last caller: outcomes only grow on a lane, so a new
/// caller that started again from ticket 1 would never see its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewound_lane_goes_on_from_its_last_tickets() {
    let yes: Handler = Arc::new(|args: &[Vec<u8>]| match args[0].as_slice() {
        b"SET" => Action::Reply(b"+OK\r\n".to_vec()),
        _ => Action::Reply(b":1\r\n".to_vec()),
    });
    let (_fake, mut base) = on_one_node(yes, Duration::from_secs(5)).await;
    for round in 0..3 {
        let mut client = base.client();
        for i in 0..3 {
            let key = format!("r{round}:{i}");
            let token =
                tokio::time::timeout(Duration::from_secs(10), client.acquire(key.as_bytes()))
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: the acquire of {key} never decided"))
                    .unwrap();
            assert_eq!(client.release(key.as_bytes(), &token).await, 1);
        }
        drop(client);
        base.rewind();
    }
}

/// A caller dropped with an operation in flight: the lane's next caller goes on past that
/// operation's ticket, so its late outcome (a refusal that comes 1.5 s late, once the new
/// caller waits) is never taken for the new caller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_decided_after_its_caller_left_reaches_nobody() {
    let node: Handler = Arc::new(|args: &[Vec<u8>]| match (args[0].as_slice(), args.get(1)) {
        // A refusal, late: the replies behind it wait for it, as a real server's would.
        (b"SET", Some(key)) if key.as_slice() == b"slow" => {
            Action::Trickle(b"$-1\r\n".to_vec(), Duration::from_millis(300))
        }
        (b"SET", _) => Action::Reply(b"+OK\r\n".to_vec()),
        _ => Action::Reply(b":1\r\n".to_vec()),
    });
    let ttl = Duration::from_secs(3);
    let (_fake, mut base) = on_one_node(node, ttl).await;
    let mut client = base.client();
    {
        let mut slow = std::pin::pin!(client.acquire(b"slow"));
        let waker = std::task::Waker::noop();
        let poll = slow
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
        assert!(poll.is_pending(), "submitted, not decided");
    }
    drop(client);
    base.rewind();
    let mut client = base.client();
    let within = Duration::from_secs(10);
    let granted = tokio::time::timeout(within, client.acquire(b"fast1")).await;
    assert!(matches!(granted, Ok(Ok(_))), "{granted:?}");
    let granted = tokio::time::timeout(within, client.acquire(b"fast2")).await;
    assert!(matches!(granted, Ok(Ok(_))), "{granted:?}");
}

/// `rewind` while a caller is alive would hand its lane to a second one: refused.
#[tokio::test]
#[should_panic(expected = "callers still alive")]
async fn rewind_refuses_while_a_caller_is_alive() {
    let yes: Handler = Arc::new(|_: &[Vec<u8>]| Action::Reply(b"+OK\r\n".to_vec()));
    let (_fake, mut base) = on_one_node(yes, Duration::from_secs(5)).await;
    let _client = base.client();
    base.rewind();
}

/// Counts its wakes.
struct Flag(AtomicUsize);

impl std::task::Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A future may be polled with a new waker (the current-thread runtime's `block_on` does
/// it), and then the new one must be woken, not only the one handed over with the operation.
/// On a current-thread runtime the loop cannot run between the two polls, so both are pending.
#[tokio::test]
async fn the_newest_waker_is_woken() {
    let yes: Handler = Arc::new(|_: &[Vec<u8>]| Action::Reply(b"+OK\r\n".to_vec()));
    let (_fake, mut base) = on_one_node(yes, Duration::from_secs(5)).await;
    let mut client = base.client();
    let mut acquire = std::pin::pin!(client.acquire(b"k"));
    let (first, second) = (
        Arc::new(Flag(AtomicUsize::new(0))),
        Arc::new(Flag(AtomicUsize::new(0))),
    );
    for flag in [&first, &second] {
        let waker = std::task::Waker::from(flag.clone());
        let poll = acquire
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker));
        assert!(poll.is_pending());
    }
    assert!(
        support::eventually(Duration::from_secs(10), || second.0.load(Ordering::SeqCst)
            > 0)
        .await,
        "the second waker was not woken"
    );
    let waker = std::task::Waker::from(second.clone());
    let poll = acquire
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&waker));
    assert!(matches!(poll, std::task::Poll::Ready(Ok(_))), "{poll:?}");
}

/// Nothing is allocated per lock cycle: eight callers on one current-thread runtime (the loop
/// and the callers all on this thread, whose allocations are counted), 2,000 cycles after a
/// warm-up, against real servers; with the plain release and with the one that publishes.
#[tokio::test]
async fn a_lock_cycle_allocates_nothing() {
    let servers = support::server::cluster(3);
    let addrs: Vec<String> = servers.iter().map(|s| s.addr()).collect();
    for notify in [false, true] {
        allocations_over_2000_cycles(&addrs, notify).await;
    }
}

async fn allocations_over_2000_cycles(addrs: &[String], notify: bool) {
    const CALLERS: usize = 8;
    let mut base = Baseline::connect(addrs, 3, Duration::from_secs(10), false, notify, CALLERS)
        .await
        .unwrap();
    let cycles = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = Vec::new();
    for c in 0..CALLERS {
        let (mut client, cycles, stop) = (base.client(), cycles.clone(), stop.clone());
        let key = format!("alloc:{c}").into_bytes();
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let token = client.acquire(&key).await.unwrap();
                assert!(client.release(&key, &token).await >= 2);
                cycles.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Waits (bounded in polls and time) until `n` cycles are done; yielding allocates nothing.
    let until = |n: usize| {
        let cycles = cycles.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while cycles.load(Ordering::SeqCst) < n {
                assert!(std::time::Instant::now() < deadline, "cycles stalled");
                tokio::task::yield_now().await;
            }
        }
    };
    until(500).await;
    let (before, from) = (ALLOCS.with(|c| c.get()), cycles.load(Ordering::SeqCst));
    until(from + 2_000).await;
    let allocated = ALLOCS.with(|c| c.get()) - before;
    stop.store(true, Ordering::SeqCst);
    for c in callers {
        c.await.unwrap();
    }
    assert_eq!(
        allocated, 0,
        "allocations over 2,000 lock cycles, notify {notify}"
    );
}

/// Where `COMMAND INFO DELEX` finds the command (fakes that answer like Dragonfly), the release
/// is `DELEX key IFEQ token`, as dragonlock's; with `force_script`, the script. A release that
/// notifies (as dragonlock's with `wake_on_release`) sends the `PUBLISH` right behind the
/// `DELEX`, or the notifying script with the key's channel, and its reply to the `PUBLISH` is
/// not taken for the release's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_is_delex_where_the_server_has_it() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let handler: Handler = Arc::new(move |args: &[Vec<u8>]| {
        let name = String::from_utf8_lossy(&args[0]).into_owned();
        let reply: &[u8] = match name.as_str() {
            "SET" => b"+OK\r\n",
            "DELEX" if args[2] == b"IFEQ" => b":1\r\n",
            "EVALSHA" => b":1\r\n",
            // No subscriber: were this taken for a release's reply, the release would fail.
            "PUBLISH" => b":0\r\n",
            _ => b"-ERR unexpected\r\n",
        };
        let name = match name.as_str() {
            // Which script, and with which keys.
            "EVALSHA" => format!(
                "EVALSHA {} {}",
                &String::from_utf8_lossy(&args[1])[..8],
                String::from_utf8_lossy(&args[2..args.len() - 1].join(&b' '))
            ),
            "PUBLISH" => format!("PUBLISH {}", String::from_utf8_lossy(&args[1])),
            _ => name,
        };
        log.lock().unwrap().push(name);
        Action::Reply(reply.to_vec())
    });
    let mut fakes = Vec::new();
    for _ in 0..3 {
        fakes.push(FakeServer::start(true, handler.clone()).await);
    }
    let addrs: Vec<String> = fakes
        .iter()
        .map(|f| format!("127.0.0.1:{}", f.port))
        .collect();
    let sha = |source: &str| support::fake::sha1_hex(source.as_bytes())[..8].to_string();
    let plain = format!("EVALSHA {} 1 k", sha(dragonlock::redlock::scripts::RELEASE));
    let notifying = format!(
        "EVALSHA {} 2 k dragonlock:released:k",
        sha(dragonlock::redlock::scripts::RELEASE_NOTIFY)
    );
    let delex_publish = ["DELEX", "PUBLISH dragonlock:released:k"];
    let cases: [(bool, bool, &str, &[&str]); 4] = [
        (false, false, "delex", &["DELEX"]),
        (true, false, "evalsha", &[&plain]),
        (false, true, "delex", &delex_publish),
        (true, true, "evalsha", &[&notifying]),
    ];
    for (force_script, notify, release, sent) in cases {
        seen.lock().unwrap().clear();
        let ttl = Duration::from_secs(5);
        let mut base = Baseline::connect(&addrs, 3, ttl, force_script, notify, 1)
            .await
            .unwrap();
        assert_eq!(base.release_command(), release);
        let mut client = base.client();
        // Two cycles: the second one's votes are its own, not the first's `PUBLISH` replies.
        let cycles = async {
            for _ in 0..2 {
                let token = client.acquire(b"k").await.unwrap();
                assert!(client.release(b"k", &token).await >= 2);
            }
        };
        // A reply taken for the wrong operation stops the loop (it panics): fail, not hang.
        tokio::time::timeout(Duration::from_secs(10), cycles)
            .await
            .expect("two lock cycles");
        // Every node gets the releases; the third may still be on its way.
        let all_in = || seen.lock().unwrap().len() == 2 * 3 * (1 + sent.len());
        let arrived = support::eventually(Duration::from_secs(5), all_in).await;
        assert!(arrived, "{:?}", seen.lock().unwrap());
        let mut names = seen.lock().unwrap().clone();
        names.sort();
        let mut want: Vec<String> = sent
            .iter()
            .copied()
            .chain(["SET"])
            .flat_map(|s| [s; 6])
            .map(String::from)
            .collect();
        want.sort();
        assert_eq!(names, want, "force_script {force_script}, notify {notify}");
    }
}
