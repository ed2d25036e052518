//! Exact allocation counts on the hot paths, with a counting global allocator. Counts are per
//! thread, and each test runs its runtime on its own thread (current_thread), so tests running
//! in parallel do not disturb each other.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use bytes::BytesMut;
use dragonlock::conn::{Connection, ConnectionConfig};
use dragonlock::resp::{encode_delex_ifeq, Decoder, EvalShaCommand, Frame, SetNxPxCommand};
use dragonlock::{Redlock, RedlockOptions, ReleaseWait};
use support::fake::{Action, FakeServer};
use support::server::cluster;

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
        run(1_000).await;
        let before = allocations();
        run(10_000).await;
        assert_eq!(
            allocations() - before,
            0,
            "allocations over 10,000 requests"
        );
    });
}

/// Allocations made by `n` uncontended `try_acquire` + `release` cycles on `r` (whose releases
/// wait as `wait` says), after `warmup` cycles that let the slot tables and buffers grow to the
/// load.
async fn cycle_allocations(r: &Redlock, wait: ReleaseWait, warmup: usize, n: usize) -> u64 {
    let cycles = |count: usize| async move {
        for _ in 0..count {
            let lock = r
                .try_acquire("orders:42", Duration::from_secs(30))
                .await
                .unwrap();
            let released = lock.release().await.unwrap();
            match wait {
                ReleaseWait::All => assert_eq!(released, r.nodes().len()),
                ReleaseWait::Quorum => assert!(released >= r.quorum()),
            }
        }
    };
    cycles(warmup).await;
    let before = allocations();
    cycles(n).await;
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
            let options = RedlockOptions::default().release_wait(wait);
            let r = support::redlock_over(&urls, options).await;
            assert_eq!(
                cycle_allocations(&r, wait, 1_000, 10_000).await,
                0,
                "allocations over 10,000 acquire+release cycles, {wait:?}"
            );
        }
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
            .with_options(|o| o.token_prefix("host-7/pid-42/"))
            .unwrap();
        // Nothing per cycle (a token on the heap would be 10,000). Not held to exactly 0 for
        // the reason given in `a_busy_answer_allocates_nothing_on_five_nodes`: on a loaded
        // machine the connections' tables grow now and then (6 seen, debug, load average 13,
        // 2026-11-30), the same growth that makes the uncontended test above count 47 at such
        // moments. The exact zero of this path is that test's: the prefix only adds a copy.
        let made = cycle_allocations(&prefixed, ReleaseWait::Quorum, 1_000, 10_000).await;
        assert!(
            made < 100,
            "{made} allocations over 10,000 cycles through a view with a token prefix"
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
            cycle_allocations(&r, ReleaseWait::Quorum, 500, 5_000).await,
            0,
            "allocations over 5,000 native-release cycles"
        );
    });
    drop(fakes);
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
                }
            }
        };
        busy(1_000).await;
        let before = allocations();
        busy(10_000).await;
        // Nothing per answer (a message formatted or a key copied to the heap would be 10,000).
        // Not exactly 0: each busy answer leaves requests in flight that nobody awaits (the
        // nodes after the decision, and their cleanup releases), and on a loaded machine the
        // connections' tables grow to that load now and then: 0 in most release runs, up to
        // 46 seen (debug, load average 10 on 2 cores, 2026-11-30). That growth is the
        // connection layer's (ARCHITECTURE.md invariant 7); tighten to 0 once its tables have
        // a fixed capacity.
        let made = allocations() - before;
        assert!(made < 100, "{made} allocations over 10,000 busy answers");
    });
}
