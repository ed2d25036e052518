//! Hostile and broken servers inside a Redlock. For each way a server can break the protocol:
//! the request gets a typed error, nothing panics, the memory the client uses stays bounded
//! whatever size the peer declares, the connection is re-established, and an acquire over five
//! nodes, one of them this server, still succeeds with the other four.
//!
//! One test, run alone in this binary, so the peak-memory figure is this test's own.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dragonlock::conn::ConnectionConfig;
use dragonlock::resp::{DecodeErrorKind, DecoderConfig};
use dragonlock::{Error, ErrorKind, RedlockOptions};
use support::fake::{Action, FakeServer};

/// Tracks bytes allocated and not yet freed, and the highest that figure reached.
struct PeakTracking;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the bookkeeping is two
// atomics, which never allocate. Sizes are only counted for calls that succeeded.
unsafe impl GlobalAlloc for PeakTracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: PeakTracking = PeakTracking;

/// The most this test may hold above its starting point in any case. The declarations below
/// ask for 512 MiB, 2 Gi elements and more: honouring any one of them would blow far past it.
const MEMORY_BOUND: usize = 16 << 20;

fn decode_error(e: &Error) -> Option<DecodeErrorKind> {
    match e.kind() {
        ErrorKind::Protocol(d) => Some(d.kind()),
        _ => None,
    }
}

type Check = fn(&Error) -> bool;

/// What a direct request to the hostile node gets.
#[derive(Clone, Copy)]
enum Expect {
    /// This typed error; the connection is then re-established.
    Error(Check),
    /// Its reply, and then the connection dies of the extra one (this typed error) and comes
    /// back.
    ReplyThenKilled(Check),
    /// Its reply, whole; the connection stays.
    Reply,
}

struct Case {
    name: &'static str,
    reply: fn() -> Action,
    expect: Expect,
    /// The hostile node's decoder limits (the defaults, except where a case needs a limit it
    /// can exceed without sending 128 MiB).
    limits: DecoderConfig,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "garbage bytes",
            reply: || Action::Reply(b"?\x00\xff garbage\r\n".to_vec()),
            limits: DecoderConfig::default(),
            expect: Expect::Error(|e| decode_error(e) == Some(DecodeErrorKind::InvalidTypeByte)),
        },
        Case {
            name: "line over the limit",
            reply: || Action::Reply([b"+".as_slice(), &[b'x'; 70 << 10]].concat()),
            limits: DecoderConfig::default(),
            expect: Expect::Error(|e| decode_error(e) == Some(DecodeErrorKind::LineTooLong)),
        },
        Case {
            name: "bulk of 512 MiB declared, nothing behind it",
            reply: || Action::Reply(b"$536870912\r\n".to_vec()),
            limits: DecoderConfig::default(),
            expect: Expect::Error(|e| decode_error(e) == Some(DecodeErrorKind::BulkTooLong)),
        },
        Case {
            name: "aggregate over the element limit",
            reply: || Action::Reply(b"*1048577\r\n".to_vec()),
            limits: DecoderConfig::default(),
            expect: Expect::Error(|e| decode_error(e) == Some(DecodeErrorKind::TooManyElements)),
        },
        Case {
            name: "map of 2^32-1 entries declared",
            reply: || Action::Reply(b"%4294967295\r\n".to_vec()),
            limits: DecoderConfig::default(),
            expect: Expect::Error(|e| decode_error(e) == Some(DecodeErrorKind::TooManyElements)),
        },
        Case {
            name: "nesting one past the limit",
            reply: || {
                let mut r = b"*1\r\n".repeat(dragonlock::resp::MAX_DEPTH + 1);
                r.extend_from_slice(b":1\r\n");
                Action::Reply(r)
            },
            limits: DecoderConfig::default(),
            expect: Expect::Error(|e| decode_error(e) == Some(DecodeErrorKind::TooDeep)),
        },
        Case {
            name: "nesting 100,000 deep",
            reply: || Action::Reply(b"*1\r\n".repeat(100_000)),
            limits: DecoderConfig::default(),
            expect: Expect::Error(|e| decode_error(e) == Some(DecodeErrorKind::TooDeep)),
        },
        Case {
            name: "frame over the size limit (4 KiB here)",
            reply: || {
                let mut r = b"*3\r\n".to_vec();
                for _ in 0..3 {
                    r.extend_from_slice(b"$2048\r\n");
                    r.extend_from_slice(&[b'x'; 2048]);
                    r.extend_from_slice(b"\r\n");
                }
                Action::Reply(r)
            },
            limits: DecoderConfig::default().max_frame_bytes(4096),
            expect: Expect::Error(|e| decode_error(e) == Some(DecodeErrorKind::FrameTooLarge)),
        },
        Case {
            name: "integer overflow",
            reply: || Action::Reply(b":9223372036854775808\r\n".to_vec()),
            limits: DecoderConfig::default(),
            expect: Expect::Error(|e| decode_error(e) == Some(DecodeErrorKind::InvalidInteger)),
        },
        Case {
            name: "a reply to a request nobody sent",
            // One request, two replies: the first is taken, the second belongs to nobody.
            reply: || Action::Reply(b"+OK\r\n+OK\r\n".to_vec()),
            limits: DecoderConfig::default(),
            expect: Expect::ReplyThenKilled(|e| matches!(e.kind(), ErrorKind::UnsolicitedReply)),
        },
        Case {
            name: "connection closed mid-reply",
            reply: || Action::ReplyThenClose(b"$10\r\nabc".to_vec()),
            limits: DecoderConfig::default(),
            expect: Expect::Error(|e| e.is_unavailable()),
        },
        Case {
            name: "reply in 1-byte writes with delays",
            reply: || Action::Trickle(b"+OK\r\n".to_vec(), Duration::from_millis(20)),
            limits: DecoderConfig::default(),
            expect: Expect::Reply,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_servers_give_typed_errors_bounded_memory_and_lose_no_lock() {
    let servers = support::server::cluster(4);
    for case in cases() {
        let reply = case.reply;
        let handler: support::fake::Handler =
            Arc::new(move |args: &[Vec<u8>]| match args[0].as_slice() {
                b"SET" => reply(),
                b"PING" => Action::Reply(b"+PONG\r\n".to_vec()),
                _ => Action::Reply(b"-ERR unknown command\r\n".to_vec()),
            });
        let fake = FakeServer::start(false, handler).await;
        let mut configs: Vec<ConnectionConfig> = servers
            .iter()
            .map(|s| ConnectionConfig::from_url(&s.url()).unwrap())
            .collect();
        configs.push(
            ConnectionConfig::from_url(&fake.url())
                .unwrap()
                .decoder(case.limits),
        );
        let redlock = support::redlock_over_configs(configs, RedlockOptions::default()).await;
        let hostile = &redlock.nodes()[4];
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);

        // 1. A request straight to the hostile node: the typed error, or the whole reply.
        let direct = hostile
            .command_timeout(&["SET", "direct", "v"], Duration::from_secs(10))
            .await;
        match (case.expect, &direct) {
            (Expect::Error(check), Err(e)) => assert!(check(e), "{}: {e:?}", case.name),
            (Expect::Reply | Expect::ReplyThenKilled(_), Ok(f)) => {
                assert!(f.is_ok(), "{}: {f:?}", case.name)
            }
            _ => panic!("{}: {direct:?}", case.name),
        }

        // 2. The connection comes back by itself (bounded: 5 s), or had no reason to go.
        if let Expect::Reply = case.expect {
            assert_eq!(
                hostile.connects(),
                1,
                "{}: no reason to reconnect",
                case.name
            );
        } else {
            let reconnected = support::eventually(Duration::from_secs(5), || {
                hostile.connects() >= 2 && hostile.is_connected()
            })
            .await;
            assert!(
                reconnected,
                "{}: the connection was not re-established",
                case.name
            );
            if let Expect::ReplyThenKilled(check) = case.expect {
                let e = hostile.last_error().expect("the connection's error");
                assert!(check(&e), "{}: {e:?}", case.name);
            }
        }
        let pong = hostile.command(&["PING"]).await;
        assert!(pong.is_ok(), "{}: {pong:?}", case.name);

        // 3. A Redlock acquire over the five: granted by the four real ones.
        let lock = redlock
            .try_acquire(&format!("hostile:{}", case.name), Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", case.name));
        lock.release().await.unwrap();

        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        eprintln!(
            "{:<45} peak memory above start: {:>8} bytes",
            case.name, peak
        );
        assert!(
            peak < MEMORY_BOUND,
            "{}: {peak} bytes at peak, bound {MEMORY_BOUND}",
            case.name
        );
    }
}
