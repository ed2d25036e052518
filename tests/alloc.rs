//! Exact allocation counts on the hot paths, with a counting global allocator. Counts are per
//! thread, and each test runs its runtime on its own thread (current_thread), so tests running
//! in parallel do not disturb each other. Fakes and fault proxies run on another runtime's
//! threads, so only the client's allocations are counted.
//!
//! Every count starts at the first request after the connect: there is no warm-up that lets
//! anything "grow to the load". The connections' structures have fixed capacities from the
//! start, so the count is exactly 0 under every interleaving, including the worst one: a node
//! that stalls until its slot table is full, then sends every held reply in one burst, then
//! answers late.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use bytes::BytesMut;
use dragonlock::conn::{Connection, ConnectionConfig, DEFAULT_MAX_IN_FLIGHT, MIN_BUFFER};
use dragonlock::conn::{TlsConfig, TlsRoots};
use dragonlock::resp::{encode_delex_ifeq, Decoder, EvalShaCommand, Frame, SetNxPxCommand};
use dragonlock::{Redlock, RedlockOptions, ReleaseWait};
use support::fake::{Action, FakeServer};
use support::proxy::{Direction, Fault, Proxy};
use support::server::{cluster, Server, ServerOptions, TlsServer};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a
// const-initialised thread-local Cell, which needs no allocation to access.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCS.with(|c| c.get())
}

#[test]
fn the_counter_counts() {
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 16]);
    assert_eq!(allocations() - before, 1);
    drop(v);
}

#[test]
fn decoding_lock_replies_and_encoding_lock_commands_allocate_nothing() {
    let mut dec = Decoder::default();
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::with_capacity(4096);
    let evalsha = EvalShaCommand::new(&[b'a'; 40]);
    let replies: [&[u8]; 6] = [
        b"+OK\r\n",
        b":1\r\n",
        b"_\r\n",
        b"$-1\r\n",
        b"-NOSCRIPT No matching script.\r\n",
        b"*-1\r\n",
    ];
    let mut run = |rounds: usize| {
        for _ in 0..rounds {
            for r in replies {
                buf.extend_from_slice(r);
                let f = dec.decode(&mut buf).unwrap().unwrap();
                assert!(!matches!(f, Frame::Array(_)));
            }
            // And as the connection reads them: all at once, with `decode_each`.
            for r in replies {
                buf.extend_from_slice(r);
            }
            let mut n = 0;
            dec.decode_each(&mut buf, |f| {
                assert!(!matches!(f, Frame::Array(_)));
                n += 1;
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
            assert_eq!(n, replies.len());
            SetNxPxCommand::new(30_000).encode(
                &mut out,
                b"lock:orders:42",
                b"0123456789abcdef0123456789abcdef",
            );
            evalsha.encode(
                &mut out,
                &[b"lock:orders:42"],
                &[b"0123456789abcdef0123456789abcdef"],
            );
            encode_delex_ifeq(
                &mut out,
                b"lock:orders:42",
                b"0123456789abcdef0123456789abcdef",
            );
            out.clear();
        }
    };
    run(100);
    let before = allocations();
    run(10_000);
    assert_eq!(allocations() - before, 0);
}

#[test]
fn connection_requests_allocate_nothing_in_steady_state() {
    let servers = cluster(1);
    current_thread().block_on(async {
        let conn = Connection::connect(ConnectionConfig::from_url(&servers[0].url()).unwrap())
            .await
            .unwrap();
        let run = |n: usize| {
            let conn = &conn;
            async move {
                for _ in 0..n {
                    let reply = conn
                        .send(|b| {
                            SetNxPxCommand::new(30_000).encode(
                                b,
                                b"k",
                                b"0123456789abcdef0123456789abcdef",
                            )
                        })
                        .unwrap()
                        .await
                        .unwrap();
                    assert!(reply.is_ok() || reply.is_null());
                }
            }
        };
        let before = allocations();
        run(10_000).await;
        assert_eq!(
            allocations() - before,
            0,
            "allocations over 10,000 requests"
        );
    });
}

/// `n` uncontended `try_acquire` + `release` cycles on `r`. With `exact`, each release must
/// count what its mode promises (every node for `All`, at least the quorum for `Quorum`);
/// without, only that it returned (a stalled node is not counted, and a short release timeout
/// may give up on a live one).
async fn cycles(r: &Redlock, wait: ReleaseWait, n: usize, exact: bool) {
    for _ in 0..n {
        let lock = r
            .try_acquire("orders:42", Duration::from_secs(30))
            .await
            .unwrap();
        let released = lock.release().await;
        if !exact {
            // A 5 ms release timeout on a loaded machine can see fewer than a quorum answer,
            // which a release reports as an error; only that it returned is asserted here.
            if let Ok(n) = released {
                assert!(n <= r.nodes().len());
            }
            continue;
        }
        let released = released.unwrap();
        match wait {
            ReleaseWait::All => assert_eq!(released, r.nodes().len()),
            ReleaseWait::Quorum => assert!(released >= r.quorum()),
        }
    }
}

/// The one allocation a lock makes outside the connections, once per thread: the first token
/// drawn on a thread creates that thread's CSPRNG (`rand::rng()`, reference-counted, 352
/// bytes). Made here, before counting, so that what is counted is the cycles' own.
fn seed_thread_rng() {
    let _ = rand::random::<u64>();
}

/// Waits (bounded: 10 s) until no request is in flight on any node of `r`. A release that
/// returned at the quorum leaves requests in flight; before the next phase locks the same key
/// through another `Redlock` (other connections, so no ordering), they must have run, or the
/// nodes still holding the old key vote no and the next release finds nothing of its own there.
async fn drained(r: &Redlock) {
    let done = support::eventually(Duration::from_secs(10), || {
        r.nodes().iter().all(|n| n.in_flight() == 0)
    })
    .await;
    assert!(done, "requests still in flight after 10 s");
}

/// Allocations made by `n` cycles on `r`, counted from the first one.
async fn cycle_allocations(r: &Redlock, wait: ReleaseWait, n: usize) -> u64 {
    seed_thread_rng();
    let before = allocations();
    cycles(r, wait, n, true).await;
    allocations() - before
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn uncontended_acquire_and_release_allocate_nothing_on_five_nodes() {
    let servers = cluster(5);
    current_thread().block_on(async {
        let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
        // Quorum (the default) leaves late replies for the connections to read and drop; All
        // waits for them. Both must allocate nothing.
        for wait in [ReleaseWait::Quorum, ReleaseWait::All] {
            // A release that finds fewer than a quorum answering in time is an error; what is
            // counted here is allocations, so the timeout is far beyond any stall of a loaded
            // machine (500 ms, the default, was seen passing with every node silent).
            let options = RedlockOptions::default()
                .release_wait(wait)
                .release_timeout(Duration::from_secs(30));
            let r = support::redlock_over(&urls, options).await;
            assert_eq!(
                cycle_allocations(&r, wait, 10_000).await,
                0,
                "allocations over 10,000 acquire+release cycles, {wait:?}"
            );
            drained(&r).await;
        }
    });
}

/// Waits by yielding (nothing allocated), bounded by 120 s, until `n` reaches `count`.
async fn until_all(n: &std::sync::atomic::AtomicUsize, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while n.load(std::sync::atomic::Ordering::SeqCst) < count {
        assert!(std::time::Instant::now() < deadline, "callers stalled");
        tokio::task::yield_now().await;
    }
}

/// Sixteen callers at once on one thread: the group's task yields after handing out several
/// callers' replies, so they find it busy and hand their phases' requests to it
/// (`LockStats::handed_over`), which sends one copy to each node. That path allocates nothing
/// either: 2,000 cycles per caller (acquire, extend, release) are counted after a warm-up of
/// 200.
#[test]
fn phases_handed_to_the_groups_task_allocate_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    const CALLERS: usize = 16;
    let servers = cluster(5);
    current_thread().block_on(async {
        let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
        let r = support::redlock_over(&urls, RedlockOptions::default()).await;
        seed_thread_rng();
        // Each caller: its warm-up, then it waits for the gate, then the counted cycles.
        let (gate, warm, done) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let mut callers = Vec::new();
        for c in 0..CALLERS {
            let (r, gate, warm, done) = (r.clone(), gate.clone(), warm.clone(), done.clone());
            let key = format!("handed:{c}");
            callers.push(tokio::spawn(async move {
                let cycle = || async {
                    let mut lock = r.try_acquire(&key, Duration::from_secs(30)).await.unwrap();
                    lock.extend(Duration::from_secs(30)).await.unwrap();
                    assert!(lock.release().await.unwrap() >= r.quorum());
                };
                for _ in 0..200 {
                    cycle().await;
                }
                warm.fetch_add(1, Ordering::SeqCst);
                while !gate.load(Ordering::SeqCst) {
                    tokio::task::yield_now().await;
                }
                for _ in 0..2_000 {
                    cycle().await;
                }
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        until_all(&warm, CALLERS).await;
        let handed = r.stats().locks.handed_over;
        let before = allocations();
        gate.store(true, Ordering::SeqCst);
        until_all(&done, CALLERS).await;
        let made = allocations() - before;
        for c in callers {
            c.await.unwrap();
        }
        assert!(
            r.stats().locks.handed_over > handed,
            "no phase was handed over: the test did not take the path it is about"
        );
        assert_eq!(made, 0, "allocations over 16 x 2,000 cycles");
    });
}

/// Extensions, of one key and of several, allocate nothing: after a warm-up (the first
/// extension of each shape), 5,000 more of each are counted exactly.
#[test]
fn extensions_allocate_nothing_on_five_nodes() {
    let servers = cluster(5);
    current_thread().block_on(async {
        let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
        let r = support::redlock_over(&urls, RedlockOptions::default()).await;
        let ttl = Duration::from_secs(30);
        let mut one = r.try_acquire("orders:42", ttl).await.unwrap();
        let mut two = r.try_acquire_many(&["a", "b"], ttl).await.unwrap();
        one.extend(ttl).await.unwrap();
        two.extend(ttl).await.unwrap();
        let before = allocations();
        for _ in 0..5_000 {
            one.extend(ttl).await.unwrap();
            two.extend(ttl).await.unwrap();
        }
        assert_eq!(
            allocations() - before,
            0,
            "allocations over 10,000 extensions"
        );
        // On the op path (the general one allocates nothing either).
        assert_eq!(r.stats().locks.general_path, 0);
        one.release().await.unwrap();
        two.release().await.unwrap();
        drained(&r).await;
    });
}

/// A view ([`Redlock::with_options`]) costs one allocation when made and nothing per call; a
/// token prefix costs nothing per acquire (the token stays inline).
#[test]
fn a_view_costs_one_allocation_and_a_token_prefix_nothing_per_cycle() {
    let servers = cluster(5);
    current_thread().block_on(async {
        let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
        let r = support::redlock_over(&urls, RedlockOptions::default()).await;
        let before = allocations();
        let view = r.with_options(|o| o.retry_count(0)).unwrap();
        assert_eq!(allocations() - before, 1, "making a view");
        drop(view);
        let prefixed = r
            .with_options(|o| {
                o.token_prefix("host-7/pid-42/")
                    .release_timeout(Duration::from_secs(30))
            })
            .unwrap();
        // Nothing per cycle: the token stays inline with its prefix, and the connections'
        // tables have a fixed capacity.
        let made = cycle_allocations(&prefixed, ReleaseWait::Quorum, 10_000).await;
        assert_eq!(
            made, 0,
            "allocations over 10,000 cycles through a view with a token prefix"
        );
    });
}

/// The native release path (`DELEX`), against fakes that answer like Dragonfly. The fakes run on
/// their own runtime's threads, so only the client's allocations are counted here.
#[test]
fn the_native_delex_path_allocates_nothing() {
    let fake_rt = tokio::runtime::Runtime::new().unwrap();
    let handler: support::fake::Handler =
        std::sync::Arc::new(|args: &[Vec<u8>]| match args[0].as_slice() {
            b"SET" => Action::Reply(b"+OK\r\n".to_vec()),
            b"DELEX" => Action::Reply(b":1\r\n".to_vec()),
            // The release's notification, with nobody subscribed (as a real server answers).
            b"PUBLISH" => Action::Reply(b":0\r\n".to_vec()),
            _ => Action::Reply(b"-ERR unknown command\r\n".to_vec()),
        });
    let fakes: Vec<FakeServer> = (0..5)
        .map(|_| fake_rt.block_on(FakeServer::start(true, handler.clone())))
        .collect();
    current_thread().block_on(async {
        let urls: Vec<String> = fakes.iter().map(|f| f.url()).collect();
        let r = support::redlock_over(&urls, RedlockOptions::default()).await;
        assert!(r.nodes().iter().all(|n| n.has_delex()));
        assert_eq!(
            cycle_allocations(&r, ReleaseWait::Quorum, 5_000).await,
            0,
            "allocations over 5,000 native-release cycles"
        );
    });
    drop(fakes);
}

/// Lets the nodes catch up when one falls behind. Each busy answer is decided at the third
/// refusal and leaves two requests in flight (the `SET`s not awaited and their releases) on the
/// slowest nodes. A node descheduled for a while under load falls behind by hundreds, and past
/// three quarters of its slot table it refuses acquires (`Overloaded`, by design: see
/// `Connection::send_acquire`), so the answer is `NoQuorum`, not `Busy` (seen once in 17 runs
/// under two busy loops). A caller retrying this fast on one thread gets that answer too; the
/// test is about busy answers, so it keeps every node's backlog small instead. Waits by
/// yielding (no timer, nothing allocated), bounded by 10 s.
async fn keep_up(r: &Redlock) {
    support::keep_up(r, 64).await;
}

/// A busy answer on a contended lock (a hot path for callers that retry) allocates nothing,
/// although its error names the resource and every node's address: the key is kept inline and
/// the addresses are shared with the manager. Its cleanup (releases queued to the nodes that
/// were not awaited) allocates nothing either.
#[test]
fn a_busy_answer_allocates_nothing_on_five_nodes() {
    let servers = cluster(5);
    current_thread().block_on(async {
        let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
        let r = support::redlock_over(&urls, RedlockOptions::default().retry_count(0)).await;
        let _held = r
            .try_acquire("orders:42", Duration::from_secs(60))
            .await
            .unwrap();
        let busy = |count: usize| {
            let r = &r;
            async move {
                for _ in 0..count {
                    let err = r
                        .try_acquire("orders:42", Duration::from_secs(30))
                        .await
                        .unwrap_err();
                    assert!(err.is_busy(), "{err:?}");
                    assert_eq!(err.resource(), Some("orders:42"));
                    keep_up(r).await;
                }
            }
        };
        busy(1_000).await;
        // `keep_up` yields; the runtime's list of yielded tasks is made at the first yield.
        tokio::task::yield_now().await;
        let before = allocations();
        busy(10_000).await;
        // Nothing per answer, and nothing for the requests each busy answer leaves in flight:
        // the connections' tables have a fixed capacity.
        let made = allocations() - before;
        assert_eq!(made, 0, "allocations over 10,000 busy answers");
    });
}

/// The worst interleaving, forced on purpose on the first of five nodes (which is behind a
/// fault proxy; the others are reached directly) and counted from the first cycle:
///
/// 1. *Stalled*: its replies are held (black hole towards the client). Every cycle leaves its
///    `SET` and its release in flight there, so after 512 cycles all of its slots are in use
///    and it refuses with `Overloaded`; the locks are still granted by the other four.
/// 2. *The burst*: healed, it sends all 1,024 held replies at once, more than its read buffer
///    (made the smallest allowed, 4 KiB, for this) holds.
/// 3. *Slow*: every reply is held 1–4 ms, so late replies arrive between, and in the middle of,
///    later cycles.
///
/// With `All`, releases wait for every node, so the release timeout is cut to 5 ms to let the
/// stalled node's releases stay in flight as the quorum's do.
async fn worst_interleaving_allocations(
    direct: &[String],
    proxy: &Proxy,
    wait: ReleaseWait,
    native: bool,
) -> u64 {
    let mut configs = vec![ConnectionConfig::from_url(&proxy.url())
        .unwrap()
        .read_buffer(MIN_BUFFER)];
    configs.extend(
        direct
            .iter()
            .map(|u| ConnectionConfig::from_url(u).unwrap()),
    );
    let mut options = RedlockOptions::default().release_wait(wait);
    if wait == ReleaseWait::All {
        options = options.release_timeout(Duration::from_millis(5));
    }
    let r = support::redlock_over_configs(configs, options).await;
    if native {
        assert!(r.nodes().iter().all(|n| n.has_delex()));
    }
    let slow = &r.nodes()[0];
    seed_thread_rng();
    let mut counted = 0;
    let mut count = |since: u64| counted += allocations() - since;

    // 1. Stalled, past the point where every slot is in use.
    proxy.set(Fault::BlackHole(Direction::ToClient));
    let before = allocations();
    cycles(&r, wait, DEFAULT_MAX_IN_FLIGHT / 2 + 200, false).await;
    count(before);
    assert_eq!(
        slow.slots_in_use(),
        DEFAULT_MAX_IN_FLIGHT,
        "the stalled node is full"
    );
    assert_eq!(slow.in_flight(), DEFAULT_MAX_IN_FLIGHT);
    assert!(slow.send(|_| {}).unwrap_err().kind() == &dragonlock::ErrorKind::Overloaded);

    // 2. The burst (the proxy is told outside the counted window: its channel is not ours).
    proxy.set(Fault::None);
    let before = allocations();
    let read = support::eventually(Duration::from_secs(10), || slow.in_flight() == 0).await;
    count(before);
    assert!(read, "the held replies were read");
    assert_eq!(
        slow.connects(),
        1,
        "the burst was read, not a reason to reconnect"
    );

    // 3. Slow: late replies interleaved with new requests.
    proxy.set(Fault::Delay {
        fixed: Duration::from_millis(1),
        jitter: Duration::from_millis(3),
    });
    let before = allocations();
    cycles(&r, wait, 1_500, false).await;
    count(before);
    proxy.set(Fault::None);
    assert_eq!(slow.connects(), 1);
    drained(&r).await;
    counted
}

#[test]
fn a_stalled_then_slow_node_leaves_requests_in_flight_and_nothing_is_allocated() {
    let proxy_rt = tokio::runtime::Runtime::new().unwrap();
    let servers = cluster(5);
    let proxy = proxy_rt.block_on(Proxy::to_port(servers[0].port));
    let direct: Vec<String> = servers[1..].iter().map(|s| s.url()).collect();
    current_thread().block_on(async {
        for wait in [ReleaseWait::Quorum, ReleaseWait::All] {
            assert_eq!(
                worst_interleaving_allocations(&direct, &proxy, wait, false).await,
                0,
                "allocations over the worst interleaving, {wait:?}"
            );
        }
    });
    drop(proxy);
}

/// The same worst interleaving on the native release path (`DELEX`), against fakes that answer
/// like Dragonfly.
#[test]
fn a_stalled_then_slow_node_allocates_nothing_on_the_native_delex_path() {
    let fake_rt = tokio::runtime::Runtime::new().unwrap();
    let handler: support::fake::Handler =
        std::sync::Arc::new(|args: &[Vec<u8>]| match args[0].as_slice() {
            b"SET" => Action::Reply(b"+OK\r\n".to_vec()),
            b"DELEX" => Action::Reply(b":1\r\n".to_vec()),
            // The release's notification, with nobody subscribed (as a real server answers).
            b"PUBLISH" => Action::Reply(b":0\r\n".to_vec()),
            _ => Action::Reply(b"-ERR unknown command\r\n".to_vec()),
        });
    let fakes: Vec<FakeServer> = (0..5)
        .map(|_| fake_rt.block_on(FakeServer::start(true, handler.clone())))
        .collect();
    let proxy = fake_rt.block_on(Proxy::to_port(fakes[0].port));
    let direct: Vec<String> = fakes[1..].iter().map(|f| f.url()).collect();
    current_thread().block_on(async {
        assert_eq!(
            worst_interleaving_allocations(&direct, &proxy, ReleaseWait::Quorum, true).await,
            0,
            "allocations over the worst interleaving, native release"
        );
    });
    drop(proxy);
    drop(fakes);
}

/// The decoder's stack has the capacity of the configured depth from the start: scanning a reply
/// nested to that depth (here incomplete, so nothing is built) allocates nothing.
#[test]
fn scanning_a_reply_nested_to_the_depth_limit_allocates_nothing() {
    let mut dec = Decoder::default();
    let mut deep = BytesMut::from(&b"*1\r\n".repeat(dragonlock::resp::MAX_DEPTH)[..]);
    let before = allocations();
    assert!(dec.decode(&mut deep).unwrap().is_none());
    assert_eq!(allocations() - before, 0);
}

/// The fenced cycle (one more round trip, a second script per node) allocates nothing either:
/// its replies are single integers, which the decoder builds without allocating.
#[test]
fn the_fenced_cycle_allocates_nothing_on_five_nodes() {
    let servers = cluster(5);
    current_thread().block_on(async {
        let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
        let r = support::redlock_over(&urls, RedlockOptions::default().fencing(true)).await;
        let cycles = |count: usize| {
            let r = &r;
            async move {
                let mut last = 0;
                for _ in 0..count {
                    let lock = r
                        .try_acquire("ledger", Duration::from_secs(30))
                        .await
                        .unwrap();
                    let token = lock.fencing_token().unwrap();
                    assert!(token > last);
                    last = token;
                    lock.release().await.unwrap();
                }
            }
        };
        // One cycle seeds the thread's random-number generator (a one-time allocation).
        cycles(1).await;
        let before = allocations();
        cycles(5_000).await;
        assert_eq!(
            allocations() - before,
            0,
            "allocations over 5,000 fenced cycles"
        );
    });
}

/// The lock cycle over TLS, counted after a warm-up (the TLS 1.3 session tickets the server
/// sends after the handshake are taken in by then). rustls's buffered session allocates a
/// buffer per record it encrypts and per record it decrypts (`DESIGN.md`, "TLS"): one record
/// each way per node and phase, so about 20 per cycle on five nodes, never growing with the
/// load. The bound pins that: one more allocation per record would exceed it.
#[test]
fn the_lock_cycle_over_tls_allocates_per_record_and_nothing_more() {
    let pki = support::pki::Pki::new();
    let pair = pki.pair("server");
    let servers: Vec<Server> = (0..5)
        .map(|_| {
            Server::start_with(ServerOptions {
                tls: Some(TlsServer {
                    cert: pair.cert.clone(),
                    key: pair.key.clone(),
                    ca: pki.ca(),
                    auth_clients: false,
                }),
                ..ServerOptions::default()
            })
        })
        .collect();
    current_thread().block_on(async {
        let configs = servers
            .iter()
            .map(|s| {
                ConnectionConfig::from_url(&s.tls_url())
                    .unwrap()
                    .tls(TlsConfig::new().roots(TlsRoots::None).ca_file(pki.ca()))
            })
            .collect();
        let wait = ReleaseWait::All;
        let options = RedlockOptions::default()
            .release_wait(wait)
            .release_timeout(Duration::from_secs(30));
        let r = support::redlock_over_configs(configs, options).await;
        cycles(&r, wait, 100, true).await;
        const N: u64 = 2_000;
        let per_cycle = cycle_allocations(&r, wait, N as usize).await as f64 / N as f64;
        eprintln!("TLS lock cycle: {per_cycle:.2} allocations per cycle on 5 nodes");
        assert!(per_cycle <= 20.5, "{per_cycle} allocations per cycle");
    });
}
