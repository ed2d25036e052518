//! Uncontended try_acquire + release against 5 local nodes, next to the baselines in the same
//! run: the single-loop client (`src/cli/baseline.rs`, the floor every hot-path ratio is
//! measured against) with one caller, and a plain-socket client whose one caller does its own
//! I/O, with the same compare-and-delete release.

mod common;

#[allow(dead_code)]
#[path = "../src/cli/baseline.rs"]
mod baseline;

use std::future::Future;
use std::time::{Duration, Instant};

use common::{baseline_round, cmd, BaselineNode};
use criterion::{criterion_group, criterion_main, Criterion};
use dragonlock::conn::{Connection, ConnectionConfig, ReplyFuture};
use dragonlock::resp::SetNxPxCommand;
use dragonlock::{Redlock, RedlockOptions};
use rand::seq::SliceRandom;

/// CPU time of this thread. The runtime is current-thread, so the client's tasks (its drivers
/// included) all run here: the difference over a segment is that client's own CPU.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct we pass and touches nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// p50 against p50 with drift taken out: the clients take turns cycle by cycle, in a new random
/// order every round.
///
/// Two baselines. The single-loop client is the floor the ratios are quoted against: the same
/// cycle as dragonlock (random token, validity deadline, release by `EVALSHA` or `DELEX` at the
/// quorum) driven by one task that owns the sockets. The plain-socket client's one caller
/// writes and reads its own sockets, with no task hop at all, so with one caller it can be
/// faster than the single loop; it stays as the one-caller floor. (The plain-`DEL` baseline
/// that was here is gone: a `DEL` release is unsafe for a lock, and what it measured, the
/// server's cost of the release script, is recorded in `DESIGN.md`.)
///
/// A sixth client, dragonlock with fencing tokens on (one more round trip per acquire), gives
/// the fenced cycle's cost as a ratio to the plain one.
///
/// A fifth client, the connection layer alone (`Connection::send` to every node, a quorum of
/// replies, the release by the same `EVALSHA`; no deadline timer, no Redlock bookkeeping), tells
/// the connection's share of dragonlock's cost from the lock layer's.
async fn interleaved(
    redlock: &Redlock,
    all_release: &Redlock,
    fenced: &Redlock,
    single: &mut baseline::Client,
    base: &mut [BaselineNode],
    bare: &[Connection],
) {
    const ROUNDS: usize = 5_000;
    let token = b"0123456789abcdef0123456789abcdef";
    let sha = dragonlock::conn::Script::new(dragonlock::redlock::scripts::RELEASE);
    let set_cad = vec![cmd(&[b"SET", b"bench:cad", token, b"NX", b"PX", b"30000"]); 5];
    let cad = vec![cmd(&[b"EVALSHA", sha.sha().as_bytes(), b"1", b"bench:cad", token]); 5];
    let set = SetNxPxCommand::new(30_000);
    let mut times: [Vec<Duration>; 6] = Default::default();
    let mut acquire: [Vec<Duration>; 6] = Default::default();
    let mut release: [Vec<Duration>; 6] = Default::default();
    let mut cpu = [Duration::ZERO; 6];
    let mut order = [0usize, 1, 2, 3, 4, 5];
    let mut rng = rand::rng();
    for i in 0..ROUNDS + 500 {
        // A new order every round. In a fixed order each client always follows the same other
        // one and meets its leftovers (late replies, readiness events): reversing the order
        // moved dragonlock's ratio over compare-and-delete from 1.14x to 1.09x, and the two
        // baselines' ratio from 1.04x to 1.11x.
        order.shuffle(&mut rng);
        for &k in &order {
            let (t0, c0) = (Instant::now(), thread_cpu());
            // The acquire phase ends where the release phase starts.
            let acquired = match k {
                0 => single_loop_cycle(single, b"bench:sl").await,
                1 => baseline_cycle(base, &set_cad, &cad).await,
                2 => dragonlock_cycle(redlock, "bench:dl").await,
                3 => dragonlock_cycle(all_release, "bench:dla").await,
                4 => {
                    bare_round(bare, |b| set.encode(b, b"bench:bare", token)).await;
                    let t = Instant::now();
                    bare_round(bare, |b| {
                        sha.evalsha().encode(b, &[b"bench:bare"], &[token]);
                    })
                    .await;
                    t
                }
                5 => dragonlock_cycle(fenced, "bench:fenced").await,
                _ => unreachable!("six clients"),
            };
            if i >= 500 {
                let end = Instant::now();
                times[k].push(end - t0);
                acquire[k].push(acquired - t0);
                release[k].push(end - acquired);
                cpu[k] += thread_cpu() - c0;
            }
        }
    }
    let per = |c: Duration| c / ROUNDS as u32;
    eprintln!(
        "client CPU per cycle: dragonlock {:?} (with ReleaseWait::All {:?}); single loop {:?}; \
         plain-socket compare-and-delete {:?}; connection layer alone {:?}",
        per(cpu[2]),
        per(cpu[3]),
        per(cpu[0]),
        per(cpu[1]),
        per(cpu[4])
    );
    for t in times.iter_mut().chain(&mut acquire).chain(&mut release) {
        t.sort_unstable();
    }
    let q = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    let [sl_t, cad_t, ours, ours_all, bare_t, fenced_t] = &times;
    let ratio = |a: &[Duration], b: &[Duration]| q(a, 0.5).as_secs_f64() / q(b, 0.5).as_secs_f64();
    eprintln!(
        "interleaved lock cycles ({ROUNDS} each), p50 / p99: dragonlock {:?} / {:?}; \
         dragonlock with ReleaseWait::All {:?} / {:?}; single loop {:?} / {:?}; \
         plain-socket compare-and-delete {:?} / {:?}",
        q(ours, 0.5),
        q(ours, 0.99),
        q(ours_all, 0.5),
        q(ours_all, 0.99),
        q(sl_t, 0.5),
        q(sl_t, 0.99),
        q(cad_t, 0.5),
        q(cad_t, 0.99),
    );
    eprintln!(
        "ratio p50: dragonlock vs single loop {:.3}x, vs plain-socket {:.3}x; \
         with ReleaseWait::All vs single loop {:.3}x, vs plain-socket {:.3}x; \
         single loop vs plain-socket {:.3}x",
        ratio(ours, sl_t),
        ratio(ours, cad_t),
        ratio(ours_all, sl_t),
        ratio(ours_all, cad_t),
        ratio(sl_t, cad_t),
    );
    eprintln!(
        "connection layer alone (quorum of 3 both ways, no timer): p50 {:?}, {:.3}x \
         the single loop; dragonlock over it {:.3}x",
        q(bare_t, 0.5),
        ratio(bare_t, sl_t),
        ratio(ours, bare_t),
    );
    eprintln!(
        "fenced (fencing tokens on): p50 {:?} / p99 {:?}, {:.3}x dragonlock's plain cycle, \
         {:.3}x the single loop; client CPU per cycle {:?}",
        q(fenced_t, 0.5),
        q(fenced_t, 0.99),
        ratio(fenced_t, ours),
        ratio(fenced_t, sl_t),
        per(cpu[5]),
    );
    // Where the gap is: each phase's p50 (the two phases' p50s need not add up to the cycle's).
    for (phase, v) in [("acquire", &acquire), ("release", &release)] {
        eprintln!(
            "{phase} phase p50: dragonlock {:?}, with ReleaseWait::All {:?}; single loop {:?}, \
             plain-socket compare-and-delete {:?}; connection layer alone {:?}",
            q(&v[2], 0.5),
            q(&v[3], 0.5),
            q(&v[0], 0.5),
            q(&v[1], 0.5),
            q(&v[4], 0.5),
        );
    }
}

/// The single loop's cycle: acquire (it must be granted), then release at the quorum. Returns
/// when the release phase started.
async fn single_loop_cycle(client: &mut baseline::Client, key: &[u8]) -> Instant {
    let token = client.acquire(key).await.unwrap();
    let released_at = Instant::now();
    assert!(client.release(key, &token).await >= 3);
    released_at
}

/// The baseline's cycle: `acquire` to every node, a quorum of replies, then `release` the same
/// way. Returns when the release phase started.
async fn baseline_cycle(
    base: &mut [BaselineNode],
    acquire: &[Vec<u8>],
    release: &[Vec<u8>],
) -> Instant {
    baseline_round(base, acquire, 3).await;
    let released_at = Instant::now();
    baseline_round(base, release, 3).await;
    released_at
}

/// dragonlock's cycle: `try_acquire`, then `release`. Returns when the release phase started.
async fn dragonlock_cycle(redlock: &Redlock, resource: &str) -> Instant {
    let lock = redlock
        .try_acquire(resource, Duration::from_secs(30))
        .await
        .unwrap();
    let released_at = Instant::now();
    lock.release().await.unwrap();
    released_at
}

/// Sends one request to every connection at once and waits for 3 replies: the baseline's
/// round, through the connection layer.
async fn bare_round(conns: &[Connection], encode: impl Fn(&mut bytes::BytesMut)) {
    const QUORUM: usize = 3;
    let mut pending: [Option<ReplyFuture<'_>>; 5] = Default::default();
    for (p, c) in pending.iter_mut().zip(conns) {
        *p = Some(c.send(&encode).unwrap());
    }
    let mut got = 0;
    std::future::poll_fn(|cx| {
        for p in pending.iter_mut() {
            if let Some(f) = p {
                if let std::task::Poll::Ready(r) = std::pin::Pin::new(f).poll(cx) {
                    // `+OK` to the SET, `:1` to the release: a refusal or an error (NOSCRIPT)
                    // would make this a different cycle.
                    let frame = r.unwrap();
                    assert!(
                        frame.is_ok() || frame.as_integer() == Some(1),
                        "unexpected reply {frame:?}"
                    );
                    *p = None;
                    got += 1;
                }
            }
        }
        if got >= QUORUM {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

fn cycle(c: &mut Criterion) {
    let servers = common::server::cluster(5);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let configs: Vec<_> = servers
        .iter()
        .map(|s| ConnectionConfig::from_url(&s.url()).unwrap())
        .collect();
    // The default releases at a quorum; `All` waits for every node, as redsync and
    // node-redlock do.
    let all_release = rt
        .block_on(Redlock::from_configs(
            configs.clone(),
            RedlockOptions::default().release_wait(dragonlock::ReleaseWait::All),
        ))
        .unwrap();
    let fenced = rt
        .block_on(Redlock::from_configs(
            configs.clone(),
            RedlockOptions::default().fencing(true),
        ))
        .unwrap();
    let redlock = rt
        .block_on(Redlock::from_configs(configs, RedlockOptions::default()))
        .unwrap();
    let mut base: Vec<BaselineNode> = rt.block_on(async {
        let mut v = Vec::new();
        for s in &servers {
            v.push(BaselineNode::connect(&s.addr()).await);
        }
        v
    });
    let paths: Vec<&str> = redlock
        .nodes()
        .iter()
        .map(|n| if n.has_delex() { "DELEX" } else { "EVALSHA" })
        .collect();
    eprintln!("release path per node: {paths:?}");
    let bare: Vec<Connection> = rt.block_on(async {
        let mut v = Vec::new();
        for s in &servers {
            let config = ConnectionConfig::from_url(&s.url()).unwrap();
            v.push(Connection::connect(config).await.unwrap());
        }
        v
    });
    let addrs: Vec<String> = servers.iter().map(|s| s.addr()).collect();
    let ttl = Duration::from_secs(30);
    let mut single_loop = rt
        .block_on(baseline::Baseline::connect(&addrs, 5, ttl, false, true, 1))
        .unwrap();
    eprintln!(
        "single loop releases with {}",
        single_loop.release_command()
    );
    let mut single = single_loop.client();
    rt.block_on(interleaved(
        &redlock,
        &all_release,
        &fenced,
        &mut single,
        &mut base,
        &bare,
    ));

    let mut group = c.benchmark_group("lock cycle, 5 nodes");
    group.bench_function("single-loop baseline, one caller", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    single_loop_cycle(&mut single, b"bench:sl").await;
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("dragonlock try_acquire + release", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let lock = redlock
                        .try_acquire("bench:dl", Duration::from_secs(30))
                        .await
                        .unwrap();
                    lock.release().await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = cycle
}
criterion_main!(benches);
